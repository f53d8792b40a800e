//! Timestamps of the log formats: `YYYY-MM-DD HH:MM:SS[.fff|,fff]` followed by an optional
//! zone (`UTC`, an IANA name or abbreviation jiff knows, `+0800`, `+08`, `+08:00`).

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

/// Parses the civil date-time at the start of `s`: `YYYY-MM-DD HH:MM:SS` with an optional
/// `.fff` or `,fff` fraction. Returns it and the number of bytes used.
pub fn parse_civil(s: &str) -> Option<(DateTime, usize)> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i32> {
        let mut v = 0i32;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i32::from(c - b'0');
        }
        Some(v)
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b' ' && b[10] != b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(0..4)?;
    let month = digits(5..7)?;
    let day = digits(8..10)?;
    let hour = digits(11..13)?;
    let minute = digits(14..16)?;
    let second = digits(17..19)?;
    let mut used = 19;
    let mut nanos = 0i32;
    if b.len() > 20 && (b[19] == b'.' || b[19] == b',') && b[20].is_ascii_digit() {
        let mut n = 0;
        used = 20;
        while used < b.len() && b[used].is_ascii_digit() {
            if n < 9 {
                nanos = nanos * 10 + i32::from(b[used] - b'0');
                n += 1;
            }
            used += 1;
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }
    let dt = DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
        i8::try_from(hour).ok()?,
        i8::try_from(minute).ok()?,
        i8::try_from(second.min(59)).ok()?,
        nanos,
    )
    .ok()?;
    Some((dt, used))
}

/// A zone token: `UTC`/`GMT`/`Z`, a numeric offset, or a name jiff resolves.
pub fn parse_zone(tok: &str) -> Option<TimeZone> {
    let t = tok.trim();
    if t.eq_ignore_ascii_case("UTC") || t.eq_ignore_ascii_case("GMT") || t == "Z" {
        return Some(TimeZone::UTC);
    }
    if let Some(sign) = t.chars().next().filter(|c| *c == '+' || *c == '-') {
        let digits: String = t[1..].chars().filter(|c| *c != ':').collect();
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let (h, m) = match digits.len() {
            1 | 2 => (digits.parse::<i32>().ok()?, 0),
            4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
            _ => return None,
        };
        let secs = (h * 3600 + m * 60) * if sign == '-' { -1 } else { 1 };
        return Offset::from_seconds(secs).ok().map(TimeZone::fixed);
    }
    TimeZone::get(t).ok()
}

/// Interprets `dt` in `tz`.
pub fn in_zone(dt: DateTime, tz: TimeZone) -> Option<Timestamp> {
    dt.to_zoned_datetime(tz).ok().map(|z| z.timestamp())
}

/// Parses PostgreSQL's `2024-01-01 12:00:00.123 UTC` (csvlog, jsonlog). An unknown zone
/// abbreviation is read as UTC.
pub fn parse_pg_timestamp(s: &str) -> Option<Timestamp> {
    let (dt, used) = parse_civil(s)?;
    let rest = s[used..].trim();
    let tz = if rest.is_empty() {
        TimeZone::UTC
    } else {
        parse_zone(rest).unwrap_or(TimeZone::UTC)
    };
    in_zone(dt, tz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_timestamps() {
        let t = parse_pg_timestamp("2024-01-01 12:00:00.123 UTC").unwrap();
        assert_eq!(format!("{t:.3}"), "2024-01-01T12:00:00.123Z");
        let t = parse_pg_timestamp("2024-01-01 12:00:00.123 +08").unwrap();
        assert_eq!(format!("{t:.3}"), "2024-01-01T04:00:00.123Z");
        let t = parse_pg_timestamp("2024-07-01 12:00:00 Europe/Berlin").unwrap();
        assert_eq!(format!("{t:.3}"), "2024-07-01T10:00:00.000Z");
        assert!(parse_pg_timestamp("2024-13-01 12:00:00 UTC").is_none());
        assert!(parse_pg_timestamp("yesterday").is_none());
        let (dt, used) = parse_civil("2026-11-25 21:41:54,033 ERROR").unwrap();
        assert_eq!(used, 23);
        assert_eq!(dt.subsec_nanosecond(), 33_000_000);
        let tz = parse_zone("-0130").unwrap();
        let t = in_zone(dt, tz).unwrap();
        assert_eq!(format!("{t:.3}"), "2026-11-25T23:11:54.033Z");
    }
}
