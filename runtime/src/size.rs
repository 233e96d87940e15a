//! Byte sizes as users write them: `512`, `64K`, `200M`, `4G` (binary units, as docker's
//! `--memory`), with an optional `B`/`iB` suffix; and durations as docker writes them.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {0:?}: expected a number with an optional K, M, G or T suffix, for example 200M")]
pub struct SizeError(pub String);

pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| SizeError(input.to_string()))?;
    let unit = unit.to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(SizeError(input.to_string())),
    };
    n.checked_mul(1 << shift).ok_or_else(|| SizeError(input.to_string()))
}

/// A duration as docker writes them: numbers with units, `300ms`, `30s`, `1m30s`, `1.5h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if s.is_empty() {
        return Err("an empty duration".to_string());
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let value: f64 =
            rest[..digits].parse().map_err(|_| format!("{s:?}: expected a duration such as 30s or 1m30s"))?;
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u))
            .ok_or_else(|| format!("{s:?}: a duration needs its unit (ms, s, m, h)"))?;
        rest = &rest[unit.len()..];
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            _ => value * 3600.0,
        };
        total += std::time::Duration::from_secs_f64(seconds);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("200m"), Ok(200 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        for bad in ["", "K", "1X", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
