//! How the API's values read on the wire, for those who print or parse them outside serde.

/// A serde enum's wire name (`"drain"`, `"tcp"`, `"stop-first"`); empty for values that do not
/// serialize as a string.
pub fn wire_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Docker's timestamps (`1700000000`, `1700000000.5`, `1700000000.123456789`: seconds since the
/// epoch with up to nine digits of fraction) as nanoseconds since the epoch; `None` for
/// anything else.
pub fn unix_nanos(text: &str) -> Option<i128> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if seconds.is_empty() || !digits(seconds) || fraction.len() > 9 || !digits(fraction) {
        return None;
    }
    let nanos: i128 = format!("{fraction:0<9}").parse().ok()?;
    Some(seconds.parse::<i128>().ok()? * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_read_as_nanoseconds_and_others_do_not() {
        assert_eq!(unix_nanos("2"), Some(2_000_000_000));
        assert_eq!(unix_nanos("2.5"), Some(2_500_000_000));
        assert_eq!(unix_nanos("2.000000001"), Some(2_000_000_001));
        for bad in ["", ".5", "-1", "2.1234567890", "yesterday", "2e9"] {
            assert_eq!(unix_nanos(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn enums_read_by_their_wire_names() {
        assert_eq!(wire_name(&crate::swarm::Availability::Drain), "drain");
        assert_eq!(wire_name(&3_u8), "");
    }
}
