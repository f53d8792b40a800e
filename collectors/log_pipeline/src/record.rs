//! The output schema: the fields Pigsty's log dashboards query, exactly.
//!
//! Every record has `_time` (RFC 3339, UTC), `job`, `ins`, `ip`, `cls`, `level` (a syslog
//! word) and `message`; PostgreSQL records add `lv`, `code`, `user`, `db`, `app`, `query`,
//! `duration`, `pid` and `backend_type`; pgBackRest and Patroni records add `topic`; a record
//! no parser understood carries `parse_error`. Empty fields are left out.

use std::fmt::Write as _;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Deserialize;

/// Syslog severities, most severe first; the `level` field is one of these words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// System is unusable (PostgreSQL PANIC).
    Emerg,
    /// Action must be taken immediately.
    Alert,
    /// Critical (PostgreSQL FATAL, Python CRITICAL).
    Crit,
    /// Error.
    #[serde(alias = "error")]
    Err,
    /// Warning.
    #[serde(alias = "warn")]
    Warning,
    /// Normal but significant.
    Notice,
    /// Informational (PostgreSQL LOG and INFO).
    Info,
    /// Debug.
    Debug,
}

impl Level {
    /// The syslog word.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Emerg => "emerg",
            Level::Alert => "alert",
            Level::Crit => "crit",
            Level::Err => "err",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// Maps a severity word of any of our sources (PostgreSQL, Python logging, Pgbouncer,
    /// pgBackRest, syslog) to its syslog level; `None` for an unknown word.
    pub fn from_word(word: &str) -> Option<Level> {
        let w = word.trim();
        let eq = |s: &str| w.eq_ignore_ascii_case(s);
        Some(if eq("PANIC") || eq("EMERG") || eq("EMERGENCY") {
            Level::Emerg
        } else if eq("ALERT") {
            Level::Alert
        } else if eq("FATAL") || eq("CRITICAL") || eq("CRIT") {
            Level::Crit
        } else if eq("ERROR") || eq("ERR") {
            Level::Err
        } else if eq("WARNING") || eq("WARN") {
            Level::Warning
        } else if eq("NOTICE") {
            Level::Notice
        } else if eq("LOG") || eq("INFO") || eq("STATEMENT") || eq("DETAIL") || eq("HINT") {
            Level::Info
        } else if eq("DEBUG")
            || eq("NOISE")
            || eq("TRACE")
            || (w.len() == 6
                && w[..5].eq_ignore_ascii_case("DEBUG")
                && w.as_bytes()[5].is_ascii_digit())
        {
            Level::Debug
        } else {
            return None;
        })
    }
}

/// The static fields of a source, shared by all its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `job`.
    pub job: String,
    /// `ins`.
    pub ins: String,
    /// `ip`.
    pub ip: String,
    /// `cls`.
    pub cls: String,
}

/// The PostgreSQL-specific fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgFields {
    /// PostgreSQL's own severity (`LOG`, `ERROR`, ...).
    pub lv: String,
    /// SQLSTATE.
    pub code: String,
    /// User name.
    pub user: String,
    /// Database name.
    pub db: String,
    /// application_name.
    pub app: String,
    /// Query id (`compute_query_id`), empty when 0 or absent.
    pub query: String,
    /// Milliseconds, from `duration: X ms`.
    pub duration: Option<f64>,
    /// Backend PID.
    pub pid: String,
    /// Backend type (PG13+).
    pub backend_type: String,
}

/// One shipped record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `_time`.
    pub time: Timestamp,
    /// `job`, `ins`, `ip`, `cls`.
    pub origin: Arc<Origin>,
    /// `level`; `None` ships as `unknown`.
    pub level: Option<Level>,
    /// `message`.
    pub message: String,
    /// PostgreSQL fields.
    pub pg: Option<Box<PgFields>>,
    /// `topic` (pgBackRest, Patroni).
    pub topic: Option<String>,
    /// Extra fields some formats add (e.g. Pgbouncer's `pid`, `db`, `user`).
    pub extra: Vec<(&'static str, String)>,
    /// `parse_error`: why the record was shipped as plain text.
    pub parse_error: Option<String>,
}

impl Record {
    /// The `level` word.
    pub fn level_str(&self) -> &'static str {
        self.level.map_or("unknown", Level::as_str)
    }

    /// `_time` as RFC 3339 in UTC with milliseconds, e.g. `2024-01-01T12:00:00.123Z`.
    pub fn time_rfc3339(&self) -> String {
        let mut s = String::with_capacity(24);
        write_rfc3339_millis(&mut s, self.time);
        s
    }

    /// The value of a field by name, for labels and stream fields (`None` when absent).
    pub fn field(&self, name: &str) -> Option<&str> {
        fn non_empty(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        let pg = self.pg.as_deref();
        match name {
            "job" => non_empty(&self.origin.job),
            "ins" => non_empty(&self.origin.ins),
            "ip" => non_empty(&self.origin.ip),
            "cls" => non_empty(&self.origin.cls),
            "level" => Some(self.level_str()),
            "message" => Some(&self.message),
            "lv" => pg.and_then(|p| non_empty(&p.lv)),
            "code" => pg.and_then(|p| non_empty(&p.code)),
            "user" => pg
                .and_then(|p| non_empty(&p.user))
                .or_else(|| self.extra_field("user")),
            "db" => pg
                .and_then(|p| non_empty(&p.db))
                .or_else(|| self.extra_field("db")),
            "app" => pg.and_then(|p| non_empty(&p.app)),
            "query" => pg.and_then(|p| non_empty(&p.query)),
            "pid" => pg
                .and_then(|p| non_empty(&p.pid))
                .or_else(|| self.extra_field("pid")),
            "backend_type" => pg.and_then(|p| non_empty(&p.backend_type)),
            "topic" => self.topic.as_deref().and_then(non_empty),
            "parse_error" => self.parse_error.as_deref(),
            _ => self.extra_field(name),
        }
    }

    fn extra_field(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Appends the record as one JSON object (no newline). With `with_time` false, `_time`
    /// is left out (Loki carries it as the entry timestamp).
    pub fn write_json(&self, out: &mut String, with_time: bool) {
        // Room for the whole object up front, so that the many small appends below do not
        // each grow the buffer.
        out.reserve(self.message.len() + 384);
        let mut w = JsonObject::new(out);
        if with_time {
            w.key("_time");
            w.out.push('"');
            write_rfc3339_millis(w.out, self.time);
            w.out.push('"');
        }
        self.for_each_field(|key, value| match value {
            FieldValue::Text(v) => w.str(key, v),
            FieldValue::Opt(v) => w.opt(key, v),
            FieldValue::Num(v) => w.num(key, v),
        });
        w.end();
    }

    /// The record as a JSON object string.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(self.message.len() + 256);
        self.write_json(&mut s, true);
        s
    }

    /// A rough size of the encoded record, for batching.
    pub fn estimated_size(&self) -> usize {
        self.message.len() + 160
    }

    /// The size of [`write_json`](Self::write_json)'s output with `_time`, escaping aside.
    pub fn json_size(&self) -> usize {
        // Braces, newline and `"_time":"2026-01-01T00:00:00.000Z"`.
        let mut n = 40;
        self.for_each_field(|key, value| {
            n += match value {
                // `,"key":"value"`.
                FieldValue::Text(v) | FieldValue::Opt(v) if !v.is_empty() => {
                    key.len() + v.len() + 6
                }
                FieldValue::Text(_) | FieldValue::Opt(_) => 0,
                FieldValue::Num(_) => 24,
            };
        });
        n
    }

    /// The fields after `_time`, in the order [`write_json`](Self::write_json) writes them:
    /// one list for the JSON and its size.
    fn for_each_field<'r>(&'r self, mut f: impl FnMut(&'r str, FieldValue<'r>)) {
        use FieldValue::{Num, Opt, Text};
        f("job", Opt(&self.origin.job));
        f("ins", Opt(&self.origin.ins));
        f("ip", Opt(&self.origin.ip));
        f("cls", Opt(&self.origin.cls));
        f("level", Text(self.level_str()));
        f("message", Text(&self.message));
        if let Some(pg) = &self.pg {
            f("lv", Opt(&pg.lv));
            f("code", Opt(&pg.code));
            f("user", Opt(&pg.user));
            f("db", Opt(&pg.db));
            f("app", Opt(&pg.app));
            f("query", Opt(&pg.query));
            if let Some(d) = pg.duration {
                f("duration", Num(d));
            }
            f("pid", Opt(&pg.pid));
            f("backend_type", Opt(&pg.backend_type));
        }
        if let Some(t) = &self.topic {
            f("topic", Opt(t));
        }
        for (k, v) in &self.extra {
            f(k, Opt(v));
        }
        if let Some(e) = &self.parse_error {
            f("parse_error", Text(e));
        }
    }
}

/// A field's value for [`Record::for_each_field`].
#[derive(Clone, Copy)]
enum FieldValue<'a> {
    /// Written even when empty.
    Text(&'a str),
    /// Left out when empty.
    Opt(&'a str),
    Num(f64),
}

struct JsonObject<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        JsonObject { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        // Field names are identifiers: no escaping to look for.
        if k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            self.out.push('"');
            self.out.push_str(k);
            self.out.push_str("\":");
        } else {
            write_json_string(self.out, k);
            self.out.push(':');
        }
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        write_json_string(self.out, v);
    }

    fn opt(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.str(k, v);
        }
    }

    fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if v.is_finite() {
            let _ = write!(self.out, "{v}");
        } else {
            self.out.push_str("null");
        }
    }

    fn end(self) {
        self.out.push('}');
    }
}

/// Appends `t` as RFC 3339 in UTC with milliseconds (`2024-01-01T12:00:00.123Z`), exactly as
/// jiff's `{:.3}` writes it. Every shipped record carries one, so the common case (years
/// 1970–9999) is formatted by hand instead of through jiff's general formatter.
pub fn write_rfc3339_millis(out: &mut String, t: Timestamp) {
    let secs = t.as_second();
    // 253402300800 is 10000-01-01T00:00:00Z.
    if !(0..253_402_300_800).contains(&secs) {
        let _ = write!(out, "{t:.3}");
        return;
    }
    let days = secs / 86_400;
    let sod = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let millis = i64::from(t.subsec_nanosecond()) / 1_000_000;
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for k in (at..at + width).rev() {
            buf[k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, sod / 3600);
    put(14, 2, sod / 60 % 60);
    put(17, 2, sod % 60);
    put(20, 3, millis);
    // Only ASCII digits and separators were written.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// How each byte is escaped in a JSON string: 0 = as is, `u` = `\u00XX`, else `\` + it.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t
};

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let b = s.as_bytes();
    let mut start = 0;
    // Runs without escapes are found by a table-driven scan and copied in one piece.
    while let Some(k) = b[start..].iter().position(|&c| ESCAPE[usize::from(c)] != 0) {
        let i = start + k;
        let c = b[i];
        // Escaped bytes are ASCII, so `start..i` lies on character boundaries.
        out.push_str(&s[start..i]);
        out.push('\\');
        match ESCAPE[usize::from(c)] {
            b'u' => {
                out.push_str("u00");
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
            e => out.push(char::from(e)),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        for (w, l) in [
            ("PANIC", Level::Emerg),
            ("FATAL", Level::Crit),
            ("ERROR", Level::Err),
            ("WARNING", Level::Warning),
            ("NOTICE", Level::Notice),
            ("LOG", Level::Info),
            ("INFO", Level::Info),
            ("DEBUG1", Level::Debug),
            ("DEBUG5", Level::Debug),
            ("CRITICAL", Level::Crit),
            ("warn", Level::Warning),
            ("NOISE", Level::Debug),
        ] {
            assert_eq!(Level::from_word(w), Some(l), "{w}");
        }
        assert_eq!(Level::from_word("SHOUT"), None);
        assert!(Level::Err < Level::Info);
    }

    #[test]
    fn json_escapes_and_omits_empty_fields() {
        let r = Record {
            time: "2024-01-01T12:00:00.5Z".parse().unwrap(),
            origin: Arc::new(Origin {
                job: "postgres".into(),
                ins: "pg-1".into(),
                ip: String::new(),
                cls: "pg".into(),
            }),
            level: Some(Level::Err),
            message: "a \"q\"\n\tb\u{1}".into(),
            pg: Some(Box::new(PgFields {
                lv: "ERROR".into(),
                duration: Some(1.5),
                ..PgFields::default()
            })),
            topic: None,
            extra: Vec::new(),
            parse_error: None,
        };
        let j = r.to_json();
        assert_eq!(
            j,
            r#"{"_time":"2024-01-01T12:00:00.500Z","job":"postgres","ins":"pg-1","cls":"pg","level":"err","message":"a \"q\"\n\tb\u0001","lv":"ERROR","duration":1.5}"#
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["message"], "a \"q\"\n\tb\u{1}");
        assert_eq!(r.field("ip"), None);
        assert_eq!(r.field("level"), Some("err"));
    }

    #[test]
    fn json_size_follows_the_json_without_escapes() {
        let r = Record {
            time: "2024-01-01T12:00:00.5Z".parse().unwrap(),
            origin: Arc::new(Origin {
                job: "postgres".into(),
                ins: "pg-test-1".into(),
                ip: "10.10.10.10".into(),
                cls: "pg-test".into(),
            }),
            level: Some(Level::Info),
            message: "duration: 0.042 ms  statement: SELECT abalance FROM pgbench_accounts".into(),
            pg: Some(Box::new(PgFields {
                lv: "LOG".into(),
                code: "00000".into(),
                user: "postgres".into(),
                db: "bench".into(),
                app: "pgbench".into(),
                query: "-4342302381744342201".into(),
                duration: Some(0.042),
                pid: "4242".into(),
                backend_type: "client backend".into(),
            })),
            topic: None,
            extra: vec![("host", "127.0.0.1".into())],
            parse_error: None,
        };
        // Within a few bytes of the real line (with its newline), and not below it: batches
        // sized by it stay under batch.max_bytes once encoded.
        let real = r.to_json().len() + 1;
        let size = r.json_size();
        assert!(
            size >= real && size <= real + 24,
            "json_size {size}, JSON {real}"
        );
        // The rough estimate is far below: sized by it, a jsonline batch would be split.
        assert!(r.estimated_size() < real - 100);
    }

    #[test]
    fn json_strings_match_serde_json() {
        let mut samples: Vec<String> = vec![
            String::new(),
            "plain ascii text longer than one word".into(),
            "\"\\\u{0}\u{1f}\u{7f}é中\n\r\t\u{8}\u{c}".into(),
            "exactly8".into(),
            "seven\n!".into(),
        ];
        // Every control/special byte at every position of a 17-byte string.
        for c in ['"', '\\', '\n', '\u{1}', '\u{1f}', 'ÿ', ' '] {
            for at in 0..17 {
                let mut s: String = "ABCDEFGHIJKLMNOPQ".into();
                s.replace_range(at..=at, &c.to_string());
                samples.push(s);
            }
        }
        for s in samples {
            let mut out = String::new();
            write_json_string(&mut out, &s);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s);
            assert!(!out.bytes().any(|b| b < 0x20), "{out:?}");
            // serde_json writes \b and \f where we write \u0008 and \u000c; else the same.
            let want = serde_json::to_string(&s)
                .unwrap()
                .replace("\\b", "\\u0008")
                .replace("\\f", "\\u000c");
            assert_eq!(out, want, "{s:?}");
        }
    }

    #[test]
    fn rfc3339_matches_jiff() {
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        let check = |secs: i64, nanos: i32| {
            let t = Timestamp::new(secs, nanos).unwrap();
            let mut out = String::new();
            write_rfc3339_millis(&mut out, t);
            assert_eq!(out, format!("{t:.3}"), "{secs} {nanos}");
        };
        for secs in [
            0,
            1,
            59,
            86_399,
            86_400,
            951_782_400,
            1_709_164_800,
            253_402_207_200,
        ] {
            for nanos in [0, 999_999, 1_000_000, 123_456_789, 999_999_999] {
                check(secs, nanos);
            }
        }
        check(-1, -500_000_000);
        check(-377_705_023_201, 0);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(
                x.rem_euclid(253_402_207_200),
                (x >> 3).rem_euclid(1_000_000_000) as i32,
            );
        }
    }
}
