//! Values as the docker CLI writes and reads them: Go durations (`1m30s`) and short IDs.

/// Docker's task ID width in `ps` unless `--no-trunc`.
const ID_WIDTH: usize = 12;

/// A Go duration as the docker CLI takes it (`1h30m`, `10s`, `500ms`, `1.5s`, `0s`), in
/// nanoseconds. A bare `0` is zero; any other number needs a unit.
pub(crate) fn go_duration(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid duration {text:?}: {why}");
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = text;
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit (ns, us, ms, s, m, h)"))?;
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| bad("want a number and a unit, as in 10s or 1m30s"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(bad(&format!(
                    "unknown unit {other:?} (ns, us, ms, s, m, h)"
                )));
            }
        };
        total += value * scale;
        rest = tail;
    }
    if total >= u64::MAX as f64 / 2.0 {
        return Err(bad("too long"));
    }
    Ok(total.round() as u64)
}

/// An ID as Docker shows it by default: its first 12 characters.
pub(crate) fn truncate_id(id: &str) -> String {
    id.chars().take(ID_WIDTH).collect()
}
