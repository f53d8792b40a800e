//! Line-oriented formats: Patroni (Python logging), Pgbouncer, pgBackRest.

use std::sync::Arc;

use agent_kit::redact::mask_passwords;
use jiff::tz::TimeZone;

use super::time::{in_zone, parse_civil, parse_zone};
use crate::format::Format;
use crate::record::{Level, Origin, Record};

/// Whether `line` starts a new record of `format` (otherwise it continues the previous one).
pub(super) fn is_record_start(format: Format, line: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(&line[..line.len().min(64)])
        .or_else(|e| std::str::from_utf8(&line[..e.valid_up_to()]))
    else {
        return false;
    };
    match format {
        Format::Patroni => patroni_head(s).is_some(),
        Format::Pgbouncer => parse_civil(s).is_some(),
        Format::Pgbackrest => {
            s.starts_with("-------------------PROCESS") || pgbackrest_head(s).is_some()
        }
        _ => true,
    }
}

/// `YYYY-MM-DD HH:MM:SS[,mmm][ +zzzz] LEVEL: ` → (timestamp, level word, message offset).
fn patroni_head(s: &str) -> Option<(jiff::Timestamp, &str, usize)> {
    let (dt, mut i) = parse_civil(s)?;
    let b = s.as_bytes();
    let mut tz = TimeZone::system();
    // Optional numeric offset (Pigsty's dateformat '%Y-%m-%d %H:%M:%S %z').
    if b.len() > i + 6 && b[i] == b' ' && (b[i + 1] == b'+' || b[i + 1] == b'-') {
        tz = parse_zone(&s[i + 1..i + 6])?;
        i += 6;
    }
    if b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    let level_end = i + s[i..].find(':')?;
    let level = &s[i..level_end];
    if level.is_empty() || !level.bytes().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut msg = level_end + 1;
    if b.get(msg) == Some(&b' ') {
        msg += 1;
    }
    Some((in_zone(dt, tz)?, level, msg))
}

/// Parses one Patroni record (a line plus its continuation lines).
pub(super) fn parse_patroni(text: &str, origin: &Arc<Origin>) -> Result<Record, String> {
    let (time, level, msg) =
        patroni_head(text).ok_or_else(|| "not a Patroni log line".to_owned())?;
    Ok(Record {
        time,
        origin: origin.clone(),
        level: Some(Level::from_word(level).unwrap_or(Level::Info)),
        message: mask_passwords(text[msg..].trim_end()).into_owned(),
        pg: None,
        topic: None,
        extra: Vec::new(),
        parse_error: None,
    })
}

/// `YYYY-MM-DD HH:MM:SS.mmm P00   INFO: msg` → (civil time, level, message offset).
fn pgbackrest_head(s: &str) -> Option<(jiff::civil::DateTime, &str, usize)> {
    let (dt, i) = parse_civil(s)?;
    let rest = s[i..].strip_prefix(" P")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let after = &rest[digits..];
    let trimmed = after.trim_start();
    let level_len = trimmed.find(':')?;
    let level = &trimmed[..level_len];
    if level.is_empty() || !level.bytes().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let msg_start = s.len() - trimmed.len() + level_len + 1;
    let msg_start = msg_start + s[msg_start..].len() - s[msg_start..].trim_start_matches(' ').len();
    Some((dt, level, msg_start))
}

/// Parses one pgBackRest record.
pub(super) fn parse_pgbackrest(text: &str, origin: &Arc<Origin>) -> Result<Record, String> {
    if text.starts_with("-------------------PROCESS") {
        return Ok(Record {
            time: jiff::Timestamp::now(),
            origin: origin.clone(),
            level: Some(Level::Info),
            message: text.trim_end().to_owned(),
            pg: None,
            topic: None,
            extra: Vec::new(),
            parse_error: None,
        });
    }
    let (dt, level, msg) =
        pgbackrest_head(text).ok_or_else(|| "not a pgBackRest log line".to_owned())?;
    Ok(Record {
        time: in_zone(dt, TimeZone::system()).ok_or("invalid local time")?,
        origin: origin.clone(),
        level: Level::from_word(level).or(match level {
            "DETAIL" => Some(Level::Info),
            _ => None,
        }),
        message: mask_passwords(text[msg..].trim_end()).into_owned(),
        pg: None,
        topic: None,
        extra: Vec::new(),
        parse_error: None,
    })
}

/// Parses one Pgbouncer record:
/// `2025-03-08 04:42:29.454 UTC [1] LOG C-0x…: db/user@addr:port message`, or the old
/// libusual form `2012-05-30 14:45:41.487 12345 LOG message`.
pub(super) fn parse_pgbouncer(text: &str, origin: &Arc<Origin>) -> Result<Record, String> {
    let bad = || "not a Pgbouncer log line".to_owned();
    let (dt, i) = parse_civil(text).ok_or_else(bad)?;
    let mut rest = text[i..].trim_start();
    let mut tz = TimeZone::system();
    let pid;
    // Zone, then "[pid]"; or a bare pid.
    let tok_end = rest.find(' ').ok_or_else(bad)?;
    let tok = &rest[..tok_end];
    if let Some(p) = tok.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        pid = p.to_owned();
        rest = rest[tok_end..].trim_start();
    } else if tok.bytes().all(|c| c.is_ascii_digit()) {
        pid = tok.to_owned();
        rest = rest[tok_end..].trim_start();
    } else {
        tz = parse_zone(tok).unwrap_or(TimeZone::UTC);
        rest = rest[tok_end..].trim_start();
        let pid_end = rest.find(' ').ok_or_else(bad)?;
        let p = rest[..pid_end]
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(bad)?;
        pid = p.to_owned();
        rest = rest[pid_end..].trim_start();
    }
    let level_end = rest.find(' ').unwrap_or(rest.len());
    let level_word = &rest[..level_end];
    let level = Level::from_word(level_word).ok_or_else(bad)?;
    let message = rest[level_end..]
        .strip_prefix(' ')
        .unwrap_or(&rest[level_end..]);
    let mut extra = vec![("pid", pid)];
    // "C-0x55d…: db/user@addr:port " socket prefix.
    if (message.starts_with("C-0x") || message.starts_with("S-0x"))
        && let Some((_, after)) = message.split_once(": ")
        && let Some((db, user_at)) = after.split_once('/')
        && let Some((user, _)) = user_at.split_once('@')
        && !db.contains(' ')
        && !user.contains(' ')
    {
        extra.push(("db", db.to_owned()));
        extra.push(("user", user.to_owned()));
    }
    Ok(Record {
        time: in_zone(dt, tz).ok_or_else(bad)?,
        origin: origin.clone(),
        level: Some(level),
        message: mask_passwords(message.trim_end()).into_owned(),
        pg: None,
        topic: None,
        extra,
        parse_error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(job: &str) -> Arc<Origin> {
        Arc::new(Origin {
            job: job.into(),
            ins: "pg-test-1".into(),
            ip: "10.10.10.11".into(),
            cls: "pg-test".into(),
        })
    }

    #[test]
    fn patroni_pigsty_dateformat() {
        let r = parse_patroni(
            "2024-01-01 12:00:00 +0100 INFO: no action. I am (pg-test-1), the leader with the lock",
            &origin("patroni"),
        )
        .unwrap();
        assert_eq!(r.time_rfc3339(), "2024-01-01T11:00:00.000Z");
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(
            r.message,
            "no action. I am (pg-test-1), the leader with the lock"
        );
        assert!(is_record_start(
            Format::Patroni,
            b"2024-01-01 12:00:00 +0100 INFO: x"
        ));
        assert!(!is_record_start(
            Format::Patroni,
            b"Traceback (most recent call last):"
        ));
        assert!(!is_record_start(
            Format::Patroni,
            b"1\t0/4000000\tno recovery target specified"
        ));
    }

    #[test]
    fn pgbouncer_lines() {
        let r = parse_pgbouncer("2025-03-08 04:42:29.454 UTC [1] LOG C-0xffffa58263e0: demo_db/db_user@192.168.0.4:57390 login attempt: db=demo_db user=db_user tls=no replication=no", &origin("pgbouncer")).unwrap();
        assert_eq!(r.time_rfc3339(), "2025-03-08T04:42:29.454Z");
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.field("pid"), Some("1"));
        assert_eq!(r.field("db"), Some("demo_db"));
        assert_eq!(r.field("user"), Some("db_user"));
        assert!(r.message.starts_with("C-0xffffa58263e0: demo_db/db_user@"));
        let r = parse_pgbouncer(
            "2021-04-08 15:08:48.719 UTC [1] WARNING stats: 0 xacts/s\n\tsecond line",
            &origin("pgbouncer"),
        )
        .unwrap();
        assert_eq!(r.level, Some(Level::Warning));
        assert_eq!(r.message, "stats: 0 xacts/s\n\tsecond line");
        let old = parse_pgbouncer(
            "2012-05-30 14:45:41.487 12345 ERROR boom",
            &origin("pgbouncer"),
        )
        .unwrap();
        assert_eq!(old.level, Some(Level::Err));
        assert_eq!(old.field("pid"), Some("12345"));
        assert!(parse_pgbouncer("hello", &origin("pgbouncer")).is_err());
    }

    #[test]
    fn pgbackrest_lines() {
        let r = parse_pgbackrest(
            "2024-01-01 12:00:00.123 P00   INFO: backup command begin 2.45: --stanza=pg-test",
            &origin("pgbackrest"),
        )
        .unwrap();
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.message, "backup command begin 2.45: --stanza=pg-test");
        let w = parse_pgbackrest(
            "2024-01-01 12:00:00.123 P01   WARN: x",
            &origin("pgbackrest"),
        )
        .unwrap();
        assert_eq!(w.level, Some(Level::Warning));
        assert!(is_record_start(
            Format::Pgbackrest,
            b"-------------------PROCESS START-------------------"
        ));
        assert!(!is_record_start(Format::Pgbackrest, b"    continuation"));
    }
}
