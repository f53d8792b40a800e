//! The request bodies decoded by independent decoders give back every field of every record:
//! VictoriaLogs JSON lines and the file sink's lines through `serde_json`; Loki protobuf
//! through snappy and `prost` with the message definitions of Loki's `push.proto` written here
//! (not the sender's); Loki JSON through `serde_json`; gzip through `flate2`. Records are
//! random: any text in every field (quotes, backslashes, control characters, emoji), any
//! time jiff can hold (before 1970 too), durations that are not finite.
//!
//! The case count is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;

use jiff::Timestamp;
use log_pipeline::config::LokiEncoding;
use log_pipeline::record::{Level, Origin, PgFields, Record};
use log_pipeline::sink::Encoder;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value};

/// `cases` cases unless `PROPTEST_CASES` says otherwise; failures are kept in the crate's
/// `proptest-regressions/` (cargo runs the tests in the crate's directory).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            "proptest-regressions/",
            "fuzz_encoders",
            ".txt"
        )))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// `logproto.PushRequest` and its parts, from Loki's `pkg/push/push.proto` and
/// `google/protobuf/timestamp.proto`.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub(crate) streams: Vec<Stream>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Stream {
        #[prost(string, tag = "1")]
        pub(crate) labels: String,
        #[prost(message, repeated, tag = "2")]
        pub(crate) entries: Vec<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Entry {
        #[prost(message, optional, tag = "1")]
        pub(crate) timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub(crate) line: String,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub(crate) struct Timestamp {
        #[prost(int64, tag = "1")]
        pub(crate) seconds: i64,
        #[prost(int32, tag = "2")]
        pub(crate) nanos: i32,
    }
}

/// Any text, weighted towards what needs escaping.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}",
        "[\"\\\\\n\r\t\u{0}\u{1}\u{1f}\u{7f}\u{2028}a é🐘{}=,]{0,12}",
        Just(String::new()),
    ]
}

fn time() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        // 1970-2100, the common case.
        (0i64..4_102_444_800, 0i32..1_000_000_000),
        // Anything jiff holds: years -9999 to 9999.
        (
            Timestamp::MIN.as_second() + 1..Timestamp::MAX.as_second(),
            0i32..1_000_000_000
        ),
    ]
    .prop_map(|(s, n)| {
        // A negative instant's fraction counts backwards in jiff.
        let n = if s < 0 { -n } else { n };
        Timestamp::new(s, n).unwrap()
    })
}

fn level() -> impl Strategy<Value = Option<Level>> {
    prop::option::of(prop::sample::select(vec![
        Level::Emerg,
        Level::Alert,
        Level::Crit,
        Level::Err,
        Level::Warning,
        Level::Notice,
        Level::Info,
        Level::Debug,
    ]))
}

fn pg() -> impl Strategy<Value = Option<Box<PgFields>>> {
    prop::option::of(
        (
            (text(), text(), text(), text(), text()),
            (
                text(),
                prop::option::of(prop_oneof![
                    any::<f64>(),
                    Just(f64::NAN),
                    Just(f64::INFINITY),
                    0.0f64..1e7
                ]),
                text(),
                text(),
            ),
        )
            .prop_map(
                |((lv, code, user, db, app), (query, duration, pid, backend_type))| {
                    Box::new(PgFields {
                        lv,
                        code,
                        user,
                        db,
                        app,
                        query,
                        duration,
                        pid,
                        backend_type,
                    })
                },
            ),
    )
}

fn record(origins: Vec<Arc<Origin>>) -> impl Strategy<Value = Record> {
    (
        time(),
        prop::sample::select(origins),
        level(),
        text(),
        pg(),
        prop::option::of(text()),
        prop::collection::btree_map(
            prop::sample::select(vec!["db", "user", "pid", "host", "unit", "app"]),
            text(),
            0..3,
        ),
        prop::option::of(text()),
    )
        .prop_map(
            |(time, origin, level, message, pg, topic, extra, parse_error)| {
                // Extra fields are what formats without PostgreSQL fields add.
                let extra = if pg.is_some() {
                    Vec::new()
                } else {
                    extra.into_iter().collect()
                };
                Record {
                    time,
                    origin,
                    level,
                    message,
                    pg,
                    topic,
                    extra,
                    parse_error,
                }
            },
        )
}

fn batch() -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec((text(), text(), text(), text()), 1..4).prop_flat_map(|o| {
        let origins: Vec<Arc<Origin>> = o
            .into_iter()
            .map(|(job, ins, ip, cls)| Arc::new(Origin { job, ins, ip, cls }))
            .collect();
        prop::collection::vec(record(origins), 1..12)
    })
}

/// The record's fields as the documented schema names them (`_time` aside): the static
/// fields, `level` and `message` always, every other field when not empty, `duration` as a
/// number (`null` when not finite), `parse_error` when set.
fn expected_fields(r: &Record) -> Map<String, Value> {
    let mut m = Map::new();
    let opt = |m: &mut Map<String, Value>, k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    opt(&mut m, "job", &r.origin.job);
    opt(&mut m, "ins", &r.origin.ins);
    opt(&mut m, "ip", &r.origin.ip);
    opt(&mut m, "cls", &r.origin.cls);
    m.insert(
        "level".into(),
        r.level.map_or("unknown", Level::as_str).into(),
    );
    m.insert("message".into(), r.message.clone().into());
    if let Some(pg) = &r.pg {
        for (k, v) in [
            ("lv", &pg.lv),
            ("code", &pg.code),
            ("user", &pg.user),
            ("db", &pg.db),
            ("app", &pg.app),
            ("query", &pg.query),
            ("pid", &pg.pid),
            ("backend_type", &pg.backend_type),
        ] {
            opt(&mut m, k, v);
        }
        if let Some(d) = pg.duration {
            m.insert(
                "duration".into(),
                serde_json::Number::from_f64(d).map_or(Value::Null, Value::Number),
            );
        }
    }
    if let Some(t) = &r.topic {
        opt(&mut m, "topic", t);
    }
    for (k, v) in &r.extra {
        opt(&mut m, k, v);
    }
    if let Some(e) = &r.parse_error {
        m.insert("parse_error".into(), e.clone().into());
    }
    m
}

/// Compares decoded fields with the expected ones; numbers within a rounding step (the
/// decoder need not parse floats exactly).
fn same_fields(got: &Map<String, Value>, want: &Map<String, Value>) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in want {
        let g = &got[k];
        match (g.as_f64(), w.as_f64()) {
            (Some(g), Some(w)) => {
                prop_assert!((g - w).abs() <= w.abs() * 1e-15, "{k}: {g} != {w}");
            }
            _ => prop_assert_eq!(g, w, "{}", k),
        }
    }
    Ok(())
}

/// `_time` as written: the instant floored to the millisecond.
fn floor_millis(t: Timestamp) -> i128 {
    t.as_nanosecond().div_euclid(1_000_000) * 1_000_000
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The labels a record's stream must carry: those of `names` its JSON has as strings.
fn expected_labels(r: &Record, names: &[String]) -> BTreeMap<String, String> {
    let fields = expected_fields(r);
    names
        .iter()
        .filter_map(|n| {
            fields
                .get(n)
                .and_then(Value::as_str)
                .map(|v| (n.clone(), v.to_owned()))
        })
        .collect()
}

/// Reads a Loki label string `{k="v", ...}` as PromQL's lexer reads it (values are Go
/// string literals).
fn parse_label_string(s: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("not braced: {s:?}"))?;
    let mut out = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let name: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_'))
                .collect();
        if chars.next() != Some('=') || chars.next() != Some('"') || name.is_empty() {
            return Err(format!("bad label at {name:?} in {s:?}"));
        }
        let mut value = String::new();
        loop {
            match chars
                .next()
                .ok_or_else(|| format!("unterminated value in {s:?}"))?
            {
                '"' => break,
                '\n' => return Err(format!("raw newline in {s:?}")),
                '\\' => value.push(match chars.next().ok_or("dangling escape")? {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'v' => '\u{b}',
                    '\\' => '\\',
                    '"' => '"',
                    c => return Err(format!("unknown escape \\{c} in {s:?}")),
                }),
                c => value.push(c),
            }
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("label {name} twice in {s:?}"));
        }
    }
}

/// A decoded stream: its labels, and its entries' times (ns) and lines.
type Stream = (BTreeMap<String, String>, Vec<(i128, String)>);

/// Checks the decoded streams: each one's label set is unique, and its entries are exactly
/// the records with that label set, in batch order, each with its time and fields.
fn check_streams(
    records: &[Record],
    labels: &[String],
    streams: Vec<Stream>,
) -> Result<(), TestCaseError> {
    let mut seen = BTreeMap::new();
    let mut total = 0;
    for (set, entries) in streams {
        prop_assert!(!seen.contains_key(&set), "stream {:?} twice", set);
        let want: Vec<&Record> = records
            .iter()
            .filter(|r| expected_labels(r, labels) == set)
            .collect();
        prop_assert_eq!(entries.len(), want.len(), "stream {:?}", set);
        for ((ns, line), r) in entries.iter().zip(&want) {
            prop_assert_eq!(*ns, r.time.as_nanosecond());
            let v: Value = serde_json::from_str(line)
                .map_err(|e| TestCaseError::fail(format!("line {line:?}: {e}")))?;
            let obj = v
                .as_object()
                .ok_or_else(|| TestCaseError::fail("line is not an object"))?;
            prop_assert!(
                !obj.contains_key("_time"),
                "Loki carries the time in the entry"
            );
            same_fields(obj, &expected_fields(r))?;
        }
        total += entries.len();
        seen.insert(set, ());
    }
    prop_assert_eq!(total, records.len());
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    /// VictoriaLogs JSON lines (plain and gzip) and the file sink: one JSON object per line,
    /// per record, in order, with `_time` and every field.
    #[test]
    fn json_lines_give_back_every_field(records in batch(), gzip in any::<bool>(), file in any::<bool>()) {
        let stream_fields = vec!["job".to_owned(), "ins".to_owned()];
        let encoder = if file {
            Encoder::File
        } else {
            Encoder::Jsonline { stream_fields: stream_fields.clone(), gzip }
        };
        let refs: Vec<&Record> = records.iter().collect();
        let encoded = encoder.encode(&refs);
        let body = if encoded.content_encoding == Some("gzip") { gunzip(&encoded.body) } else { encoded.body.clone() };
        prop_assert_eq!(encoded.content_encoding == Some("gzip"), gzip && !file);
        let text = String::from_utf8(body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        prop_assert_eq!(lines.len(), records.len());
        for (line, r) in lines.iter().zip(&records) {
            let v: Value = serde_json::from_str(line).map_err(|e| TestCaseError::fail(format!("{line:?}: {e}")))?;
            let mut obj = v.as_object().cloned().ok_or_else(|| TestCaseError::fail("not an object"))?;
            let time = obj.remove("_time").and_then(|t| t.as_str().map(str::to_owned)).ok_or_else(|| TestCaseError::fail("no _time"))?;
            let parsed: Timestamp = time.parse().map_err(|e| TestCaseError::fail(format!("_time {time:?}: {e}")))?;
            prop_assert_eq!(parsed.as_nanosecond(), floor_millis(r.time), "{}", time);
            same_fields(&obj, &expected_fields(r))?;
        }
        if !file {
            let header = |k: &str| encoded.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(header("VL-Stream-Fields"), Some("job,ins"));
            prop_assert_eq!(header("VL-Msg-Field"), Some("message"));
            prop_assert_eq!(header("VL-Time-Field"), Some("_time"));
        }
    }

    /// Loki protobuf: snappy, then `PushRequest` decoded with the definitions above; every
    /// entry's timestamp is a valid `google.protobuf.Timestamp` (nanos in 0..1e9) of the
    /// record's instant.
    #[test]
    fn loki_protobuf_gives_back_every_field(records in batch(), labels in prop::sample::subsequence(vec!["job", "ins", "level", "lv", "db", "topic", "message"], 0..5)) {
        let labels: Vec<String> = labels.into_iter().map(str::to_owned).collect();
        let encoder = Encoder::Loki { labels: labels.clone(), encoding: LokiEncoding::Protobuf, gzip: false, path: String::new() };
        let refs: Vec<&Record> = records.iter().collect();
        let encoded = encoder.encode(&refs);
        prop_assert_eq!(encoded.content_type, "application/x-protobuf");
        let raw = snap::raw::Decoder::new().decompress_vec(&encoded.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let request = <proto::PushRequest as prost::Message>::decode(raw.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut streams = Vec::new();
        for s in request.streams {
            let set = parse_label_string(&s.labels).map_err(TestCaseError::fail)?;
            let mut entries = Vec::new();
            for e in s.entries {
                let t = e.timestamp.unwrap_or_default();
                prop_assert!((0..1_000_000_000).contains(&t.nanos), "nanos {} out of range (seconds {})", t.nanos, t.seconds);
                entries.push((i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos), e.line));
            }
            streams.push((set, entries));
        }
        check_streams(&records, &labels, streams)?;
    }

    /// Loki JSON (plain and gzip): `{"streams":[{"stream":{...},"values":[["<ns>","<line>"]]}]}`.
    #[test]
    fn loki_json_gives_back_every_field(records in batch(), gzip in any::<bool>(), labels in prop::sample::subsequence(vec!["job", "ins", "level", "lv", "db", "topic", "message"], 0..5)) {
        let labels: Vec<String> = labels.into_iter().map(str::to_owned).collect();
        let encoder = Encoder::Loki { labels: labels.clone(), encoding: LokiEncoding::Json, gzip, path: String::new() };
        let refs: Vec<&Record> = records.iter().collect();
        let encoded = encoder.encode(&refs);
        let body = if gzip { gunzip(&encoded.body) } else { encoded.body.clone() };
        let v: Value = serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut streams = Vec::new();
        for s in v["streams"].as_array().ok_or_else(|| TestCaseError::fail("no streams"))? {
            let set: BTreeMap<String, String> = s["stream"].as_object().ok_or_else(|| TestCaseError::fail("no stream"))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("<not a string>").to_owned()))
                .collect();
            let mut entries = Vec::new();
            for pair in s["values"].as_array().ok_or_else(|| TestCaseError::fail("no values"))? {
                let ns: i128 = pair[0].as_str().and_then(|t| t.parse().ok()).ok_or_else(|| TestCaseError::fail(format!("bad time {pair}")))?;
                let line = pair[1].as_str().ok_or_else(|| TestCaseError::fail("line not a string"))?;
                entries.push((ns, line.to_owned()));
            }
            streams.push((set, entries));
        }
        check_streams(&records, &labels, streams)?;
    }
}

/// A record before 1970 with a fraction of a second went out with negative `nanos`, which a
/// `google.protobuf.Timestamp` may not have (Loki refuses the whole batch).
#[test]
fn loki_protobuf_times_before_1970_have_positive_nanos() {
    let origin = Arc::new(Origin {
        job: "j".into(),
        ins: String::new(),
        ip: String::new(),
        cls: String::new(),
    });
    for t in [
        "1969-12-28T21:41:35.943885099Z",
        "1969-12-31T23:59:59.5Z",
        "1900-01-01T00:00:00Z",
    ] {
        let time: Timestamp = t.parse().unwrap();
        let r = Record {
            time,
            origin: origin.clone(),
            level: None,
            message: "m".into(),
            pg: None,
            topic: None,
            extra: Vec::new(),
            parse_error: None,
        };
        let encoder = Encoder::Loki {
            labels: vec!["job".into()],
            encoding: LokiEncoding::Protobuf,
            gzip: false,
            path: String::new(),
        };
        let body = encoder.encode(&[&r]).body;
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let request = <proto::PushRequest as prost::Message>::decode(raw.as_slice()).unwrap();
        let ts = request.streams[0].entries[0].timestamp.unwrap_or_default();
        assert!((0..1_000_000_000).contains(&ts.nanos), "{t}: {ts:?}");
        assert_eq!(
            i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos),
            time.as_nanosecond(),
            "{t}"
        );
    }
}
