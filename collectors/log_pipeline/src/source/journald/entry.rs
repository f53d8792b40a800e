//! One line of `journalctl --output=json` as a record with the fields Pigsty's Vector
//! `syslog_logs` transform produced, and the entry's cursor.

use std::borrow::Cow;
use std::sync::Arc;

use agent_kit::redact::mask_passwords;
use jiff::Timestamp;
use serde_json::Value;

use crate::parse::cut_chars;
use crate::record::{Level, Origin, Record};

/// One journal entry (a line of `journalctl --output=json`) as a record, with its cursor.
#[derive(Debug)]
pub struct JournalEntry {
    /// The record.
    pub record: Record,
    /// `__CURSOR`.
    pub cursor: Option<String>,
    /// `MESSAGE` was not UTF-8.
    pub invalid_utf8: bool,
    /// `message` was cut at `message_max_length`.
    pub message_cut: bool,
    /// The line was not a journal entry.
    pub parse_error: bool,
}

/// A field's text: strings as they are, byte arrays (non-UTF-8 or binary values) decoded
/// lossily, the first value of a field present several times. The flag says whether bytes
/// were replaced.
fn field_text(v: &Value) -> Option<(Cow<'_, str>, bool)> {
    match v {
        Value::String(s) => Some((Cow::Borrowed(s.as_str()), false)),
        Value::Number(n) => Some((Cow::Owned(n.to_string()), false)),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|i| i.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            let bytes = bytes?;
            match String::from_utf8(bytes) {
                Ok(s) => Some((Cow::Owned(s), false)),
                Err(e) => Some((
                    Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    true,
                )),
            }
        }
        Value::Array(items) => items.first().and_then(field_text),
        _ => None,
    }
}

fn priority_level(p: Option<&str>) -> Level {
    match p.map(str::trim).and_then(|p| p.parse::<i64>().ok()) {
        Some(0) => Level::Emerg,
        Some(1) => Level::Alert,
        Some(2) => Level::Crit,
        Some(3) => Level::Err,
        Some(4) => Level::Warning,
        Some(5) => Level::Notice,
        Some(7) => Level::Debug,
        // Pigsty: to_syslog_level(to_int(.PRIORITY) ?? 6) ?? "info".
        _ => Level::Info,
    }
}

fn micros(v: Option<&Value>) -> Option<Timestamp> {
    let (t, _) = field_text(v?)?;
    let us: i64 = t.trim().parse().ok()?;
    Timestamp::from_microsecond(us).ok()
}

/// Parses one line of `journalctl --output=json`. Never fails: a line that is not a journal
/// entry ships as plain text with `parse_error`.
pub fn parse_entry(line: &[u8], origin: &Arc<Origin>, message_max_length: usize) -> JournalEntry {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let map = match serde_json::from_slice::<serde_json::Map<String, Value>>(line) {
        Ok(m) => m,
        Err(e) => {
            let text = String::from_utf8_lossy(line);
            let invalid_utf8 = matches!(text, Cow::Owned(_));
            let mut message = mask_passwords(text.trim_end()).into_owned();
            let message_cut = cut_chars(&mut message, message_max_length);
            return JournalEntry {
                record: Record {
                    time: Timestamp::now(),
                    origin: origin.clone(),
                    level: None,
                    message,
                    pg: None,
                    topic: None,
                    extra: Vec::new(),
                    parse_error: Some(format!("not a journal entry: {e}")),
                },
                cursor: None,
                invalid_utf8,
                message_cut,
                parse_error: true,
            };
        }
    };
    let text = |k: &str| map.get(k).and_then(field_text).map(|(t, _)| t);
    let (message, invalid_utf8) = map
        .get("MESSAGE")
        .and_then(field_text)
        .map_or((Cow::Borrowed(""), false), |(t, bad)| (t, bad));
    let mut message = mask_passwords(&message).into_owned();
    let message_cut = cut_chars(&mut message, message_max_length);
    let time = micros(map.get("_SOURCE_REALTIME_TIMESTAMP"))
        .or_else(|| micros(map.get("__REALTIME_TIMESTAMP")))
        .unwrap_or_else(Timestamp::now);
    let priority = text("PRIORITY");
    let app = text("SYSLOG_IDENTIFIER")
        .or_else(|| text("_COMM"))
        .map_or_else(|| "unknown".to_owned(), Cow::into_owned);
    let unit = text("_SYSTEMD_UNIT")
        .map(|u| u.replace(".service", ""))
        .unwrap_or_default();
    let pid = text("_PID").map(Cow::into_owned).unwrap_or_default();
    let mut extra = vec![("app", app), ("unit", unit), ("pid", pid)];
    if let Some(p) = &priority {
        extra.push(("p", p.clone().into_owned()));
    }
    JournalEntry {
        record: Record {
            time,
            origin: origin.clone(),
            level: Some(priority_level(priority.as_deref())),
            message,
            pg: None,
            topic: None,
            extra,
            parse_error: None,
        },
        cursor: text("__CURSOR").map(Cow::into_owned),
        invalid_utf8,
        message_cut,
        parse_error: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Arc<Origin> {
        Arc::new(Origin {
            job: "syslog".into(),
            ins: "node-1".into(),
            ip: "127.0.0.1".into(),
            cls: "nodes".into(),
        })
    }

    fn extra<'a>(r: &'a Record, k: &str) -> Option<&'a str> {
        r.extra
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn an_entry_becomes_pigstys_syslog_record() {
        let line = br#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"3","SYSLOG_IDENTIFIER":"pgbouncer","_COMM":"pgbouncer","_SYSTEMD_UNIT":"pgbouncer.service","_PID":"42","MESSAGE":"line 1\nline 2"}"#;
        let e = parse_entry(line, &origin(), 8192);
        assert_eq!(e.cursor.as_deref(), Some("s=1;i=2"));
        assert!(!e.invalid_utf8 && !e.parse_error && !e.message_cut);
        assert_eq!(
            e.record.to_json(),
            r#"{"_time":"2023-11-14T22:13:20.123Z","job":"syslog","ins":"node-1","ip":"127.0.0.1","cls":"nodes","level":"err","message":"line 1\nline 2","app":"pgbouncer","unit":"pgbouncer","pid":"42","p":"3"}"#
        );
    }

    #[test]
    fn byte_arrays_fallbacks_and_priorities() {
        let line = br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1700000000000000","_SOURCE_REALTIME_TIMESTAMP":"1600000000000000","_COMM":"x","MESSAGE":[98,97,100,32,255,33]}"#;
        let e = parse_entry(line, &origin(), 8192);
        assert!(e.invalid_utf8);
        assert_eq!(e.record.message, "bad \u{fffd}!");
        assert_eq!(extra(&e.record, "app"), Some("x"));
        assert_eq!(e.record.field("unit"), None);
        assert_eq!(e.record.level, Some(Level::Info));
        assert_eq!(e.record.field("p"), None);
        assert_eq!(e.record.time_rfc3339(), "2020-09-13T12:26:40.000Z");

        let line =
            br#"{"MESSAGE":[104,105],"PRIORITY":"nope","_SYSTEMD_UNIT":"a.service.d.service"}"#;
        let e = parse_entry(line, &origin(), 8192);
        assert!(!e.invalid_utf8);
        assert_eq!(e.record.message, "hi");
        assert_eq!(extra(&e.record, "app"), Some("unknown"));
        assert_eq!(e.record.field("unit"), Some("a.d"));
        assert_eq!(e.record.level, Some(Level::Info));
        assert_eq!(e.cursor, None);
        for (p, l) in [
            ("0", Level::Emerg),
            ("1", Level::Alert),
            ("2", Level::Crit),
            ("4", Level::Warning),
            ("5", Level::Notice),
            ("6", Level::Info),
            ("7", Level::Debug),
            ("8", Level::Info),
        ] {
            assert_eq!(priority_level(Some(p)), l);
        }

        // A field present twice: its first value.
        let line = br#"{"MESSAGE":["one","two"]}"#;
        assert_eq!(parse_entry(line, &origin(), 8192).record.message, "one");
        let e = parse_entry(b"not json\n", &origin(), 8192);
        assert!(e.parse_error && e.record.parse_error.is_some());
        assert_eq!(e.record.message, "not json");
        let e = parse_entry(br#"{"MESSAGE":"abcdef"}"#, &origin(), 3);
        assert!(e.message_cut);
        assert_eq!(e.record.message, "abc");
    }
}
