//! Parsers against real Patroni logs, and property tests: PostgreSQL csvlog and jsonlog
//! records generated from random field values, written as PostgreSQL writes them, cut into
//! random chunks, framed and parsed, must give back every field; so must journald entries
//! built from random fields.

use std::path::Path;
use std::sync::Arc;

use log_pipeline::format::Format;
use log_pipeline::parse::prefix::LinePrefix;
use log_pipeline::parse::{Framer, Parser, write_csv_field};
use log_pipeline::record::{Level, Origin, Record};
use proptest::prelude::*;

fn origin(job: &str) -> Arc<Origin> {
    Arc::new(Origin {
        job: job.into(),
        ins: "pg-test-1".into(),
        ip: "10.10.10.11".into(),
        cls: "pg-test".into(),
    })
}

/// Frames `data` cut at `cuts`, flushes, and parses every record.
fn frame_and_parse(format: Format, data: &[u8], cuts: &[usize], path: &str) -> Vec<(u64, Record)> {
    frame_and_parse_with(format, None, data, cuts, path)
}

fn frame_and_parse_with(
    format: Format,
    prefix: Option<&str>,
    data: &[u8],
    cuts: &[usize],
    path: &str,
) -> Vec<(u64, Record)> {
    let prefix = prefix.map(|p| Arc::new(LinePrefix::compile(p).unwrap()));
    let mut framer = Framer::new(format, 0, 1 << 20).with_prefix(prefix.clone());
    let parser = Parser::new(format, origin("x"), usize::MAX, Path::new(path)).with_prefix(prefix);
    let mut raws = Vec::new();
    let mut last = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts {
        framer.feed(&data[last..c], &mut raws);
        last = c;
    }
    framer.feed(&data[last..], &mut raws);
    framer.flush_pending(&mut raws);
    raws.iter()
        .map(|r| {
            let (rec, flags) = parser.parse(r);
            assert!(
                !flags.parse_error,
                "parse error in {:?}: {:?}",
                String::from_utf8_lossy(&r.bytes),
                rec.parse_error
            );
            (r.end, rec)
        })
        .collect()
}

#[test]
fn patroni_fixtures_parse_into_whole_entries() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/patroni");
    let mut total = 0;
    for (file, entries) in [
        ("patroni-3.0-failover-node-loss.log", 13),
        ("patroni-3.0-postmaster-kill.log", 16),
        ("patroni-3.0-switchover-candidate.log", 11),
        ("patroni-3.0-switchover.log", 26),
    ] {
        let data = std::fs::read(dir.join(file)).unwrap();
        for cuts in [vec![], vec![1, 100, 101, 2000, 5000]] {
            let records =
                frame_and_parse(Format::Patroni, &data, &cuts, "/pg/log/patroni/patroni.log");
            assert_eq!(records.len(), entries, "{file}");
            assert_eq!(
                records.last().unwrap().0,
                data.len() as u64,
                "{file}: everything consumed"
            );
            for (_, r) in &records {
                assert_eq!(r.topic.as_deref(), Some("main"));
                assert!(
                    r.time_rfc3339().starts_with("2026-11-25T21:4"),
                    "{}",
                    r.time_rfc3339()
                );
            }
            total += records.len();
            if file == "patroni-3.0-postmaster-kill.log" {
                let tb = &records[0].1;
                assert_eq!(tb.level, Some(Level::Err));
                assert!(
                    tb.message
                        .starts_with("get_postgresql_status\nTraceback (most recent call last):")
                );
                assert!(
                    tb.message
                        .ends_with("PostgresConnectionException: 'connection problems'")
                );
                assert!(
                    tb.message
                        .contains("\n\nDuring handling of the above exception")
                );
                let dump = records
                    .iter()
                    .find(|(_, r)| r.message.starts_with("pg_controldata:"))
                    .unwrap();
                assert!(
                    dump.1
                        .message
                        .contains("\n  Catalog version number: 202209061")
                );
                assert!(records.iter().any(|(_, r)| r.level == Some(Level::Warning)
                    && r.message == "Postgresql is not running."));
            }
            if file == "patroni-3.0-switchover.log" {
                let h = records
                    .iter()
                    .find(|(_, r)| r.message.starts_with("primary: history="))
                    .unwrap();
                assert_eq!(h.1.message.lines().count(), 4);
            }
        }
    }
    assert_eq!(total, 2 * (13 + 16 + 11 + 26));
}

#[derive(Debug, Clone)]
struct PgEvent {
    millis: i64,
    user: Option<String>,
    db: Option<String>,
    pid: u32,
    severity: &'static str,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    context: Option<String>,
    statement: Option<String>,
    app: Option<String>,
    backend_type: String,
    query_id: i64,
}

/// Text without "password" or "://" (the redaction is tested on its own).
fn text() -> impl Strategy<Value = String> {
    "[a-km-z0-9 ,;\"'\n\t()é€🐘]{0,60}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[a-km-z0-9 ,;\"'\n\t()é€🐘]{1,60}")
}

fn event() -> impl Strategy<Value = PgEvent> {
    (
        (
            0i64..4_102_444_800_000,
            opt_text(),
            opt_text(),
            1u32..4_000_000,
        ),
        prop::sample::select(vec![
            "LOG", "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "INFO", "DEBUG1",
        ]),
        (
            "[0-9A-Z]{5}",
            text(),
            opt_text(),
            opt_text(),
            opt_text(),
            opt_text(),
            opt_text(),
        ),
        ("[a-z ]{1,20}", any::<i64>()),
    )
        .prop_map(
            |(
                (millis, user, db, pid),
                severity,
                (code, message, detail, hint, context, statement, app),
                (backend_type, query_id),
            )| PgEvent {
                millis,
                user,
                db,
                pid,
                severity,
                code,
                message,
                detail,
                hint,
                context,
                statement,
                app,
                backend_type,
                query_id,
            },
        )
}

fn pg_time(millis: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(millis).unwrap();
    ts.strftime("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

fn to_csv(e: &PgEvent) -> String {
    let mut s = pg_time(e.millis);
    s.push(',');
    write_csv_field(&mut s, e.user.as_deref());
    s.push(',');
    write_csv_field(&mut s, e.db.as_deref());
    s.push_str(&format!(
        ",{},\"127.0.0.1:5432\",6632a.1,1,\"idle\",2024-01-01 00:00:00 UTC,3/1,0,{},{},",
        e.pid, e.severity, e.code
    ));
    write_csv_field(&mut s, Some(&e.message));
    s.push(',');
    write_csv_field(&mut s, e.detail.as_deref());
    s.push(',');
    write_csv_field(&mut s, e.hint.as_deref());
    s.push_str(",,,");
    write_csv_field(&mut s, e.context.as_deref());
    s.push(',');
    write_csv_field(&mut s, e.statement.as_deref());
    s.push_str(",,,");
    write_csv_field(&mut s, e.app.as_deref());
    s.push(',');
    write_csv_field(&mut s, Some(&e.backend_type));
    s.push_str(&format!(",,{}\n", e.query_id));
    s
}

fn to_json(e: &PgEvent) -> String {
    let mut m = serde_json::Map::new();
    m.insert("timestamp".into(), pg_time(e.millis).into());
    if let Some(u) = &e.user {
        m.insert("user".into(), u.clone().into());
    }
    if let Some(d) = &e.db {
        m.insert("dbname".into(), d.clone().into());
    }
    m.insert("pid".into(), e.pid.into());
    m.insert("error_severity".into(), e.severity.into());
    m.insert("state_code".into(), e.code.clone().into());
    m.insert("message".into(), e.message.clone().into());
    for (k, v) in [
        ("detail", &e.detail),
        ("hint", &e.hint),
        ("context", &e.context),
        ("statement", &e.statement),
        ("application_name", &e.app),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.clone().into());
        }
    }
    m.insert("backend_type".into(), e.backend_type.clone().into());
    m.insert("query_id".into(), e.query_id.into());
    let mut s = serde_json::Value::Object(m).to_string();
    s.push('\n');
    s
}

fn check(e: &PgEvent, r: &Record) -> Result<(), TestCaseError> {
    let pg = r.pg.as_ref().unwrap();
    prop_assert_eq!(r.time.as_millisecond(), e.millis);
    prop_assert_eq!(&pg.user, e.user.as_deref().unwrap_or(""));
    prop_assert_eq!(&pg.db, e.db.as_deref().unwrap_or(""));
    prop_assert_eq!(&pg.pid, &e.pid.to_string());
    prop_assert_eq!(&pg.lv, e.severity);
    prop_assert_eq!(r.level, Level::from_word(e.severity));
    prop_assert_eq!(&pg.code, &e.code);
    prop_assert_eq!(&pg.app, e.app.as_deref().unwrap_or(""));
    prop_assert_eq!(&pg.backend_type, &e.backend_type);
    let want_query = if e.query_id == 0 {
        String::new()
    } else {
        e.query_id.to_string()
    };
    prop_assert_eq!(&pg.query, &want_query);
    let parts: Vec<&str> = [
        Some(e.message.as_str()),
        e.detail.as_deref(),
        e.hint.as_deref(),
        e.context.as_deref(),
        e.statement.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect();
    prop_assert_eq!(&r.message, &parts.join(", "));
    // The JSON we ship is valid and carries the same values.
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    prop_assert_eq!(v["message"].as_str().unwrap(), r.message.as_str());
    Ok(())
}

const STDERR_PREFIX: &str = "%m [%p] %q%u@%d ";

/// An event as PostgreSQL writes it to stderr: one line per part, continuation lines after a
/// TAB. Users and databases are simple names so the `%u@%d` split is unambiguous.
fn to_stderr(e: &PgEvent, user: &str, db: &str) -> String {
    let pre = format!("{} [{}] {user}@{db} ", pg_time(e.millis), e.pid);
    let tabify = |s: &str| s.replace('\n', "\n\t");
    let mut out = format!("{pre}{}:  {}\n", e.severity, tabify(&e.message));
    for (label, v) in [
        ("DETAIL", &e.detail),
        ("HINT", &e.hint),
        ("CONTEXT", &e.context),
        ("STATEMENT", &e.statement),
    ] {
        if let Some(v) = v {
            out.push_str(&format!("{pre}{label}:  {}\n", tabify(v)));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn stderr_round_trips(events in prop::collection::vec((event(), "[a-z_]{1,10}", "[a-z_]{1,10}"), 1..8), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let data: String = events.iter().map(|(e, u, d)| to_stderr(e, u, d)).collect();
        let records = frame_and_parse_with(Format::PostgresStderr, Some(STDERR_PREFIX), data.as_bytes(), &cuts, "/pg/log/postgresql.log");
        prop_assert_eq!(records.len(), events.len());
        for ((e, u, d), (_, r)) in events.iter().zip(&records) {
            let pg = r.pg.as_ref().unwrap();
            prop_assert_eq!(r.time.as_millisecond(), e.millis);
            prop_assert_eq!(&pg.user, u);
            prop_assert_eq!(&pg.db, d);
            prop_assert_eq!(&pg.pid, &e.pid.to_string());
            prop_assert_eq!(&pg.lv, e.severity);
            let parts: Vec<&str> = [Some(e.message.as_str()), e.detail.as_deref(), e.hint.as_deref(), e.context.as_deref(), e.statement.as_deref()]
                .into_iter()
                .flatten()
                .map(str::trim_end)
                .filter(|s| !s.is_empty())
                .collect();
            prop_assert_eq!(&r.message, &parts.join(", "));
        }
        prop_assert_eq!(records.last().unwrap().0, data.len() as u64);
    }

    #[test]
    fn pgbackrest_round_trips(entries in prop::collection::vec((0i64..4_102_444_800_000, 0u32..100, prop::sample::select(vec!["INFO", "WARN", "ERROR", "DETAIL", "DEBUG"]), "[a-z0-9 =:/-]{0,40}", prop::collection::vec("[a-z0-9 ]{1,20}", 0..3)), 1..10)) {
        // pgBackRest writes local time; the test runs with the machine's zone, as the parser.
        let tz = jiff::tz::TimeZone::system();
        let mut data = String::from("-------------------PROCESS START-------------------\n");
        for (millis, p, level, msg, cont) in &entries {
            let local = jiff::Timestamp::from_millisecond(*millis).unwrap().to_zoned_datetime(tz.clone());
            data.push_str(&format!("{} P{p:02}{:>7}: {msg}\n", local.strftime("%Y-%m-%d %H:%M:%S%.3f"), level));
            for c in cont {
                data.push_str(&format!("    {c}\n"));
            }
        }
        let records = frame_and_parse(Format::Pgbackrest, data.as_bytes(), &[], "/pg/log/pgbackrest/pg-meta-backup.log");
        prop_assert_eq!(records.len(), entries.len() + 1);
        prop_assert_eq!(records[0].1.message.as_str(), "-------------------PROCESS START-------------------");
        for ((millis, _, level, msg, cont), (_, r)) in entries.iter().zip(&records[1..]) {
            // Ambiguous local times (a DST fold) may resolve to the other instant.
            if !tz.to_ambiguous_timestamp(jiff::Timestamp::from_millisecond(*millis).unwrap().to_zoned_datetime(tz.clone()).datetime()).is_ambiguous() {
                prop_assert_eq!(r.time.as_millisecond(), *millis);
            }
            prop_assert_eq!(r.topic.as_deref(), Some("pg-meta-backup"));
            let want_level = if *level == "DETAIL" { Some(Level::Info) } else { Level::from_word(level) };
            prop_assert_eq!(r.level, want_level);
            let mut want = msg.trim_start().to_owned();
            for c in cont {
                want.push_str(&format!("\n    {c}"));
            }
            prop_assert_eq!(r.message.as_str(), want.trim_end());
        }
    }

    #[test]
    fn pgbouncer_round_trips(lines in prop::collection::vec((0i64..4_102_444_800_000, 1u32..100_000, prop::sample::select(vec!["LOG", "ERROR", "WARNING", "FATAL", "DEBUG", "NOISE"]), "[a-z0-9 =:/]{1,40}", prop::collection::vec("[a-z0-9 ]{1,20}", 0..3)), 1..10)) {
        let mut data = String::new();
        for (millis, pid, level, msg, cont) in &lines {
            data.push_str(&format!("{} [{pid}] {level} {msg}", pg_time(*millis)));
            for c in cont {
                data.push_str(&format!("\n\t{c}"));
            }
            data.push('\n');
        }
        let records = frame_and_parse(Format::Pgbouncer, data.as_bytes(), &[], "/pg/log/pgbouncer/pgbouncer.log");
        prop_assert_eq!(records.len(), lines.len());
        for ((millis, pid, level, msg, cont), (_, r)) in lines.iter().zip(&records) {
            prop_assert_eq!(r.time.as_millisecond(), *millis);
            let pid = pid.to_string();
            prop_assert_eq!(r.field("pid"), Some(pid.as_str()));
            prop_assert_eq!(r.level, Level::from_word(level));
            let mut want = msg.clone();
            for c in cont {
                want.push_str(&format!("\n\t{c}"));
            }
            prop_assert_eq!(r.message.as_str(), want.trim_end());
        }
    }

    #[test]
    fn csvlog_round_trips(events in prop::collection::vec(event(), 1..8), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let data: String = events.iter().map(to_csv).collect();
        let records = frame_and_parse(Format::PostgresCsv, data.as_bytes(), &cuts, "/pg/log/postgresql-Mon.csv");
        prop_assert_eq!(records.len(), events.len());
        for (e, (_, r)) in events.iter().zip(&records) {
            check(e, r)?;
        }
        prop_assert_eq!(records.last().unwrap().0, data.len() as u64);
    }

    #[test]
    fn jsonlog_round_trips(events in prop::collection::vec(event(), 1..8), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let data: String = events.iter().map(to_json).collect();
        let records = frame_and_parse(Format::PostgresJson, data.as_bytes(), &cuts, "/pg/log/postgresql-Mon.json");
        prop_assert_eq!(records.len(), events.len());
        for (e, (_, r)) in events.iter().zip(&records) {
            check(e, r)?;
        }
    }

    #[test]
    fn framing_never_loses_or_splits_plain_lines(lines in prop::collection::vec("[^\n]{0,50}", 1..20), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let data: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut framer = Framer::new(Format::Plain, 0, 1 << 20);
        let mut raws = Vec::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut last = 0;
        for c in cuts {
            framer.feed(&data.as_bytes()[last..c], &mut raws);
            last = c;
        }
        framer.feed(&data.as_bytes()[last..], &mut raws);
        let want: Vec<&str> = lines.iter().map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.bytes().all(|b| b.is_ascii_whitespace())).collect();
        let got: Vec<String> = raws.iter().map(|r| String::from_utf8(r.bytes.clone()).unwrap()).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(framer.committed(), data.len() as u64);
    }

    #[test]
    fn patroni_records_keep_their_continuation_lines(entries in prop::collection::vec(("[A-Z]{4,8}", "[a-z][a-z ]{0,29}", prop::collection::vec("[a-z ^~]{0,30}", 0..4)), 1..10)) {
        let mut data = String::new();
        for (i, (level, msg, cont)) in entries.iter().enumerate() {
            data.push_str(&format!("2026-11-25 21:41:{:02},{:03} {level}: {msg}\n", i % 60, i));
            for c in cont {
                data.push_str(&format!("  {c}\n"));
            }
        }
        let records = frame_and_parse(Format::Patroni, data.as_bytes(), &[], "/p/patroni.log");
        prop_assert_eq!(records.len(), entries.len());
        for ((_, msg, cont), (_, r)) in entries.iter().zip(&records) {
            let mut want = msg.clone();
            for c in cont {
                want.push_str(&format!("\n  {c}"));
            }
            prop_assert_eq!(r.message.as_str(), want.trim_end());
        }
    }
}

/// Syslog's words for the priorities 0 to 7, as `level` ships them; anything else is `info`
/// (Pigsty: `to_syslog_level(to_int(.PRIORITY) ?? 6) ?? "info"`).
const SYSLOG_LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// `journalctl --output=json` lines built from random fields, with `MESSAGE` as a string or
    /// as the byte array journalctl writes for values that are not UTF-8, give those fields back.
    #[test]
    fn journal_entries_give_back_their_fields(
        msg in "\\PC{0,200}",
        as_bytes in any::<bool>(),
        bad_byte in proptest::option::of(0x80u8..=0xff),
        priority in proptest::option::of(0u8..10),
        pid in 1u32..4_000_000,
        ident in proptest::option::of("[a-z_-]{1,12}"),
        unit in "[a-z-]{1,12}",
        micros in 0i64..4_102_444_800_000_000,
        cursor in "s=[0-9a-f]{32};i=[0-9a-f]{1,6}",
        max in 1usize..300,
    ) {
        use log_pipeline::source::journald::parse_entry;
        let bad_byte = bad_byte.filter(|_| as_bytes);
        let message = if as_bytes {
            let mut bytes = msg.clone().into_bytes();
            bytes.extend(bad_byte);
            serde_json::json!(bytes)
        } else {
            serde_json::json!(msg)
        };
        let mut entry = serde_json::json!({
            "MESSAGE": message,
            "_PID": pid.to_string(),
            "_COMM": "comm",
            "_SYSTEMD_UNIT": format!("{unit}.service"),
            "__REALTIME_TIMESTAMP": micros.to_string(),
            "__CURSOR": cursor,
        });
        if let Some(p) = priority {
            entry["PRIORITY"] = serde_json::json!(p.to_string());
        }
        if let Some(i) = &ident {
            entry["SYSLOG_IDENTIFIER"] = serde_json::json!(i);
        }
        let e = parse_entry(format!("{entry}\n").as_bytes(), &origin("syslog"), max);

        let text = if bad_byte.is_some() { format!("{msg}\u{fffd}") } else { msg.clone() };
        let redacted = agent_kit::redact::mask_passwords(&text).into_owned();
        let want: String = redacted.chars().take(max).collect();
        prop_assert!(!e.parse_error);
        prop_assert_eq!(&e.record.message, &want);
        prop_assert_eq!(e.message_cut, redacted.chars().count() > max);
        prop_assert_eq!(e.invalid_utf8, bad_byte.is_some());
        let level = priority.and_then(|p| SYSLOG_LEVELS.get(usize::from(p))).unwrap_or(&"info");
        prop_assert_eq!(e.record.level.map(Level::as_str), Some(*level));
        prop_assert_eq!(e.record.time.as_microsecond(), micros);
        prop_assert_eq!(e.cursor.as_deref(), Some(cursor.as_str()));
        let extra = |k: &str| e.record.extra.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        prop_assert_eq!(extra("app"), Some(ident.unwrap_or_else(|| "comm".into())));
        prop_assert_eq!(extra("unit"), Some(unit));
        prop_assert_eq!(extra("pid"), Some(pid.to_string()));
    }

    /// Any line at all: never a panic; what is not a journal entry ships as text, flagged.
    #[test]
    fn any_journal_line_ships(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let max = 100;
        let e = log_pipeline::source::journald::parse_entry(&line, &origin("syslog"), max);
        prop_assert_eq!(e.parse_error, e.record.parse_error.is_some());
        if e.parse_error {
            // The line itself, as text.
            prop_assert!(e.cursor.is_none());
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = String::from_utf8_lossy(body);
            let redacted = agent_kit::redact::mask_passwords(text.trim_end()).into_owned();
            let want: String = redacted.chars().take(max).collect();
            prop_assert_eq!(&e.record.message, &want);
            prop_assert_eq!(e.message_cut, redacted.chars().count() > max);
            prop_assert_eq!(e.invalid_utf8, std::str::from_utf8(body).is_err());
        }
    }
}
