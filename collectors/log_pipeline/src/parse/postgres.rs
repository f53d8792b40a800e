//! PostgreSQL csvlog (PG 12-18: 23 to 26 columns) and jsonlog (PG 15+).

use std::borrow::Cow;
use std::sync::Arc;

use agent_kit::redact::mask_passwords;
use serde::Deserialize;

use super::csv::{Span, Splitter};
use super::prefix::LinePrefix;
use super::time::parse_pg_timestamp;
use crate::record::{Level, Origin, PgFields, Record};

/// The parts of a PostgreSQL log event, whichever file format it came from.
#[derive(Debug, Default)]
struct Event<'a> {
    time: &'a str,
    user: &'a str,
    db: &'a str,
    pid: Cow<'a, str>,
    severity: &'a str,
    code: &'a str,
    message: &'a str,
    detail: &'a str,
    hint: &'a str,
    internal_query: &'a str,
    internal_position: Cow<'a, str>,
    context: &'a str,
    statement: &'a str,
    cursor_position: Cow<'a, str>,
    location: Cow<'a, str>,
    app: &'a str,
    backend_type: &'a str,
    query_id: Cow<'a, str>,
}

impl Event<'_> {
    fn into_record(self, origin: &Arc<Origin>) -> Result<Record, String> {
        let time = parse_pg_timestamp(self.time)
            .ok_or_else(|| format!("invalid timestamp {:?}", self.time))?;
        // Pigsty's message: the non-empty parts, comma-joined, in this order.
        let parts = [
            self.message,
            self.detail,
            self.hint,
            self.internal_query,
            &self.internal_position,
            self.context,
            self.statement,
            &self.cursor_position,
            &self.location,
        ];
        let mut message = String::with_capacity(parts.iter().map(|p| p.len() + 2).sum());
        for p in parts.iter().filter(|p| !p.is_empty()) {
            if !message.is_empty() {
                message.push_str(", ");
            }
            message.push_str(p);
        }
        // One allocation when there is nothing to mask (the common case).
        let masked = match mask_passwords(&message) {
            Cow::Owned(m) => Some(m),
            Cow::Borrowed(_) => None,
        };
        let message = masked.unwrap_or(message);
        // `duration: X ms`: a number never holds a space, so the first space must be the
        // one of " ms" (the same result as splitting at the first " ms").
        let duration = self.message.strip_prefix("duration: ").and_then(|rest| {
            let space = rest.find(' ')?;
            rest[space..]
                .starts_with(" ms")
                .then(|| rest[..space].parse::<f64>().ok())?
        });
        Ok(Record {
            time,
            origin: origin.clone(),
            level: Level::from_word(self.severity),
            message,
            pg: Some(Box::new(PgFields {
                lv: self.severity.to_owned(),
                code: self.code.to_owned(),
                user: self.user.to_owned(),
                db: self.db.to_owned(),
                app: self.app.to_owned(),
                query: if self.query_id == "0" {
                    String::new()
                } else {
                    self.query_id.into_owned()
                },
                duration,
                pid: self.pid.into_owned(),
                backend_type: self.backend_type.to_owned(),
            })),
            topic: None,
            extra: Vec::new(),
            parse_error: None,
        })
    }
}

/// Minimum csvlog columns (PG 12 and older); PG13 adds backend_type, PG14 leader_pid and
/// query_id.
const MIN_COLUMNS: usize = 23;

/// Columns read from a csvlog record (`query_id` is the 26th).
const USED_COLUMNS: usize = 26;

/// Parses one csvlog record.
pub(super) fn parse_csv(text: &str, origin: &Arc<Origin>) -> Result<Record, String> {
    // The used columns' positions on the stack, the others only counted: no allocation
    // unless a field holds doubled quotes.
    let mut spans = [Span::default(); USED_COLUMNS];
    let mut columns = 0;
    let mut split = Splitter::new(text);
    while let Some(span) = split.next_span() {
        if let Some(slot) = spans.get_mut(columns) {
            *slot = span;
        }
        columns += 1;
    }
    if columns < MIN_COLUMNS {
        return Err(format!(
            "csvlog record with {columns} columns, expected 23 to 26"
        ));
    }
    // Only the columns shipped are materialised (borrowed unless they hold `""`).
    let col = |i: usize| {
        if i < columns {
            spans[i].get(text)
        } else {
            Cow::Borrowed("")
        }
    };
    let (time, user, db, severity, code) = (col(0), col(1), col(2), col(11), col(12));
    let (message, detail, hint, internal_query) = (col(13), col(14), col(15), col(16));
    let (context, statement, app, backend_type) = (col(18), col(19), col(22), col(23));
    Event {
        time: &time,
        user: &user,
        db: &db,
        pid: col(3),
        severity: &severity,
        code: &code,
        message: &message,
        detail: &detail,
        hint: &hint,
        internal_query: &internal_query,
        internal_position: col(17),
        context: &context,
        statement: &statement,
        cursor_position: col(20),
        location: col(21),
        app: &app,
        backend_type: &backend_type,
        query_id: col(25),
    }
    .into_record(origin)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JsonLog {
    timestamp: String,
    user: String,
    dbname: String,
    pid: Option<i64>,
    error_severity: String,
    state_code: String,
    message: String,
    detail: String,
    hint: String,
    internal_query: String,
    internal_position: Option<i64>,
    context: String,
    statement: String,
    cursor_position: Option<i64>,
    func_name: String,
    file_name: String,
    file_line_num: Option<i64>,
    application_name: String,
    backend_type: String,
    query_id: Option<i64>,
}

fn num(n: Option<i64>) -> String {
    n.map(|v| v.to_string()).unwrap_or_default()
}

/// Parses one jsonlog line.
pub(super) fn parse_json(text: &str, origin: &Arc<Origin>) -> Result<Record, String> {
    let j: JsonLog =
        serde_json::from_str(text.trim()).map_err(|e| format!("invalid jsonlog line: {e}"))?;
    if j.timestamp.is_empty() {
        return Err("jsonlog line without timestamp".to_owned());
    }
    let location = match (j.func_name.is_empty(), j.file_name.is_empty()) {
        (true, true) => String::new(),
        _ => format!("{}, {}:{}", j.func_name, j.file_name, num(j.file_line_num)),
    };
    Event {
        time: &j.timestamp,
        user: &j.user,
        db: &j.dbname,
        pid: Cow::Owned(num(j.pid)),
        severity: &j.error_severity,
        code: &j.state_code,
        message: &j.message,
        detail: &j.detail,
        hint: &j.hint,
        internal_query: &j.internal_query,
        internal_position: Cow::Owned(num(j.internal_position)),
        context: &j.context,
        statement: &j.statement,
        cursor_position: Cow::Owned(num(j.cursor_position)),
        location: Cow::Owned(location),
        app: &j.application_name,
        backend_type: &j.backend_type,
        query_id: Cow::Owned(num(j.query_id)),
    }
    .into_record(origin)
}

/// Parses one stderr event: the first line (prefix, severity, message), its TAB continuation
/// lines, and the DETAIL/HINT/CONTEXT/STATEMENT/QUERY/LOCATION lines that follow it.
pub(super) fn parse_stderr(
    text: &str,
    prefix: &LinePrefix,
    origin: &Arc<Origin>,
) -> Result<Record, String> {
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    let (caps, severity, at) = prefix
        .match_line(first)
        .ok_or_else(|| "line does not match log_line_prefix".to_owned())?;
    // message, detail, hint, context, statement, internal query, location
    let mut parts: [String; 7] = Default::default();
    let mut cur = 0;
    parts[0].push_str(&first[at..]);
    for line in lines {
        if let Some(rest) = line.strip_prefix('\t') {
            parts[cur].push('\n');
            parts[cur].push_str(rest);
            continue;
        }
        let label = prefix.match_line(line).and_then(|(_, label, at)| {
            let slot = match label {
                "DETAIL" => 1,
                "HINT" => 2,
                "CONTEXT" => 3,
                "STATEMENT" => 4,
                "QUERY" => 5,
                "LOCATION" => 6,
                _ => return None,
            };
            Some((slot, at))
        });
        match label {
            Some((slot, at)) => {
                cur = slot;
                if !parts[cur].is_empty() {
                    parts[cur].push('\n');
                }
                parts[cur].push_str(&line[at..]);
            }
            None => {
                parts[cur].push('\n');
                parts[cur].push_str(line);
            }
        }
    }
    let cap = |c: char| caps.iter().find(|(k, _)| *k == c).map_or("", |(_, v)| *v);
    let time = if !cap('m').is_empty() {
        cap('m').to_owned()
    } else if !cap('t').is_empty() {
        cap('t').to_owned()
    } else {
        let ts = cap('n')
            .parse::<f64>()
            .ok()
            .and_then(|secs| jiff::Timestamp::from_millisecond((secs * 1000.0) as i64).ok())
            .unwrap_or_else(jiff::Timestamp::now);
        ts.strftime("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
    };
    let [
        message,
        detail,
        hint,
        context,
        statement,
        internal_query,
        location,
    ] = &parts;
    let [message, detail, hint, context, statement, internal_query] =
        [message, detail, hint, context, statement, internal_query].map(|s| s.trim_end());
    Event {
        time: &time,
        user: cap('u'),
        db: cap('d'),
        pid: Cow::Borrowed(cap('p')),
        severity,
        code: cap('e'),
        message,
        detail,
        hint,
        internal_query,
        internal_position: Cow::Borrowed(""),
        context,
        statement,
        cursor_position: Cow::Borrowed(""),
        location: Cow::Borrowed(location.trim_end()),
        app: cap('a'),
        backend_type: cap('b'),
        query_id: Cow::Borrowed(cap('Q')),
    }
    .into_record(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Arc<Origin> {
        Arc::new(Origin {
            job: "postgres".into(),
            ins: "pg-test-1".into(),
            ip: "10.10.10.11".into(),
            cls: "pg-test".into(),
        })
    }

    #[test]
    fn csv_pg15_error_with_multiline_statement() {
        let line = "2024-05-01 10:00:00.123 UTC,\"postgres\",\"app\",4242,\"127.0.0.1:5000\",6632a,3,\"SELECT\",2024-05-01 09:59:00 UTC,3/7,0,ERROR,42P01,\"relation \"\"nope\"\" does not exist\",,,,,,\"SELECT *\n  FROM nope\",15,,\"psql\",\"client backend\",,0";
        let r = parse_csv(line, &origin()).unwrap();
        assert_eq!(
            r.to_json(),
            r#"{"_time":"2024-05-01T10:00:00.123Z","job":"postgres","ins":"pg-test-1","ip":"10.10.10.11","cls":"pg-test","level":"err","message":"relation \"nope\" does not exist, SELECT *\n  FROM nope, 15","lv":"ERROR","code":"42P01","user":"postgres","db":"app","app":"psql","pid":"4242","backend_type":"client backend"}"#
        );
    }

    #[test]
    fn csv_columns_per_version() {
        // PG12: 23 columns, PG13: 24, PG14-18: 26.
        let base = "2024-05-01 10:00:00.123 UTC,,,77,,6632a,1,,2024-05-01 09:59:00 UTC,,0,LOG,00000,\"duration: 123.456 ms  statement: select 1\",,,,,,,,,\"\"";
        let r12 = parse_csv(base, &origin()).unwrap();
        let pg = r12.pg.as_ref().unwrap();
        assert_eq!(pg.duration, Some(123.456));
        assert_eq!(r12.level, Some(Level::Info));
        let r13 = parse_csv(&format!("{base},\"checkpointer\""), &origin()).unwrap();
        assert_eq!(r13.pg.unwrap().backend_type, "checkpointer");
        let r14 = parse_csv(&format!("{base},\"client backend\",,-42"), &origin()).unwrap();
        assert_eq!(r14.pg.unwrap().query, "-42");
        let err = parse_csv("a,b,c", &origin()).unwrap_err();
        assert!(err.contains("3 columns"));
    }

    #[test]
    fn json_pg15() {
        let line = r#"{"timestamp":"2024-05-01 10:00:00.123 UTC","user":"postgres","dbname":"app","pid":4242,"remote_host":"127.0.0.1","remote_port":5000,"session_id":"6632a","line_num":3,"ps":"ALTER ROLE","session_start":"2024-05-01 09:59:00 UTC","vxid":"3/7","txid":0,"error_severity":"LOG","message":"statement: ALTER ROLE x PASSWORD 'hunter2'","application_name":"psql","backend_type":"client backend","query_id":0}"#;
        let r = parse_json(line, &origin()).unwrap();
        assert_eq!(r.message, "statement: ALTER ROLE x PASSWORD 'xxxxx'");
        let pg = r.pg.unwrap();
        assert_eq!(pg.pid, "4242");
        assert_eq!(pg.query, "");
        assert_eq!(pg.lv, "LOG");
        assert!(parse_json("{\"x\":1}", &origin()).is_err());
        assert!(parse_json("not json", &origin()).is_err());
    }

    #[test]
    fn stderr_event_with_its_secondary_lines() {
        let p = LinePrefix::compile("%m [%p] %q%u@%d ").unwrap();
        let text = "2024-05-01 10:00:00.123 UTC [4242] postgres@app ERROR:  relation \"nope\" does not exist at character 15\n2024-05-01 10:00:00.123 UTC [4242] postgres@app STATEMENT:  SELECT *\n\t  FROM nope\n\t  WHERE x = 1";
        let r = parse_stderr(text, &p, &origin()).unwrap();
        assert_eq!(
            r.message,
            "relation \"nope\" does not exist at character 15, SELECT *\n  FROM nope\n  WHERE x = 1"
        );
        assert_eq!(r.level, Some(Level::Err));
        let pg = r.pg.unwrap();
        assert_eq!(
            (pg.user.as_str(), pg.db.as_str(), pg.pid.as_str()),
            ("postgres", "app", "4242")
        );
        let r = parse_stderr(
            "2024-05-01 10:00:00.5 UTC [7] LOG:  duration: 12.5 ms  statement: select 1",
            &p,
            &origin(),
        )
        .unwrap();
        assert_eq!(r.pg.unwrap().duration, Some(12.5));
        assert!(parse_stderr("garbage", &p, &origin()).is_err());
    }
}
