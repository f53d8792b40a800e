//! Durations (`500ms`, `2s`, `5m`, `1h`) and sizes (`1MiB`, `512KiB`) as the config writes
//! them, and the bounds a duration must keep to work.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// A duration written as `500ms`, `2s`, `5m`, `1h` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Duration::try_from_secs_f64(n)
                .map(HumanDuration)
                .map_err(|_| serde::de::Error::custom(format!("invalid duration {n}"))),
            Raw::Text(s) => parse_duration(&s)
                .map(HumanDuration)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?}"))),
        }
    }
}

/// Splits `1.5 MiB` into its number and its unit (trimmed, possibly empty).
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses `500ms`, `2s`, `1.5s`, `5m`, `1h`, `1d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = number_and_unit(s)?;
    let factor = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "us" | "µs" => 0.000_001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * factor).ok()
}

/// The longest duration any option takes: a longer one is a typo (and would overflow the
/// timers).
pub const DURATION_MAX: Duration = Duration::from_secs(86_400);

/// `d` written back as the config would (`500ms`, `2s`, `1h`).
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 0 {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

/// Refuses a duration that cannot work: under `min` (`why` says what goes wrong then) or
/// over [`DURATION_MAX`].
pub(super) fn check_duration(
    field: &str,
    d: Duration,
    min: Duration,
    why: &str,
) -> Result<Duration, ConfigError> {
    if d < min {
        return Err(invalid(
            field,
            format!(
                "{} cannot work: must be at least {} ({why})",
                show_duration(d),
                show_duration(min)
            ),
        ));
    }
    if d > DURATION_MAX {
        return Err(invalid(
            field,
            format!("must be at most {}", show_duration(DURATION_MAX)),
        ));
    }
    Ok(d)
}

/// A size written as `1MiB`, `512KiB`, `10MB`, `1GiB` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s)
                .map(ByteSize)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid size {s:?}"))),
        }
    }
}

/// Parses `1MiB`, `512KiB`, `10MB`, `1GiB`, `100B` or a bare number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(s)?;
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = n * factor;
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("lots"), None);
    }
}
