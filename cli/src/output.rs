//! Output conventions shared by the commands.

/// `--format` values. Docker takes Go templates; Shoal offers the one everyone scripts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// One JSON document (`inspect`, `info`) or one JSON object per line (`ls`, `ps`).
    Json,
}

/// Bytes in binary units with four significant digits, as Docker prints sizes ("23.47GiB").
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let integer_digits = if value < 1.0 {
        1
    } else {
        value.log10().floor() as usize + 1
    };
    let decimals = 4_usize.saturating_sub(integer_digits);
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(1024 * 1024), "1MiB");
        assert_eq!(human_bytes(25_198_723_072), "23.47GiB");
        assert_eq!(human_bytes(100 * 1024 * 1024 * 1024), "100GiB");
    }
}
