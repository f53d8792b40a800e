//! Hostile input for the framer and every parser: arbitrary bytes, shaped like each format
//! (timestamps, quotes, tabs, carriage returns, invalid UTF-8) or not at all, and random
//! `log_line_prefix`es.
//!
//! - framing does not depend on how the bytes arrive: the same bytes fed at once and in
//!   random chunks give the same records (never split or merged by a chunk boundary), and
//!   everything is consumed;
//! - memory stays bounded: a record is never longer than the size limit and the framer never
//!   holds more than two records' worth of bytes, however long a line is;
//! - no parser panics, and what it ships is consistent (flags, cut messages, valid JSON);
//! - csv fields written as PostgreSQL writes them split back into the same fields.
//!
//! The round trips of well-formed records of each format are in `parsers.rs`. The case count
//! is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use std::path::Path;
use std::sync::Arc;

use log_pipeline::format::Format;
use log_pipeline::parse::prefix::LinePrefix;
use log_pipeline::parse::{
    Framer, Parser, RawRecord, TRUNCATION_MARKER, parse_csv_fields, write_csv_field,
};
use log_pipeline::record::Origin;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// `cases` cases unless `PROPTEST_CASES` says otherwise; failures are kept in the crate's
/// `proptest-regressions/` (cargo runs the tests in the crate's directory).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            "proptest-regressions/",
            "fuzz_parsers",
            ".txt"
        )))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

const FORMATS: [Format; 7] = [
    Format::PostgresCsv,
    Format::PostgresJson,
    Format::PostgresStderr,
    Format::Patroni,
    Format::Pgbouncer,
    Format::Pgbackrest,
    Format::Plain,
];

/// Pieces of every format: record starts, separators, quotes, continuation markers, bytes
/// that are not UTF-8, multi-byte characters.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..12),
        2 => "[a-z ,\"{}:\\[\\]]{0,12}".prop_map(String::into_bytes),
        2 => prop::sample::select(vec![
            "\n", "\r\n", "\"", "\"\"", ",", "\t", "    ", "\\", "é", "🐘",
            "2026-11-25 21:41:54.123 UTC,",
            "2026-11-25 21:41:54,033 ERROR: ",
            "2026-11-25 21:41:54.123 UTC [42] LOG ",
            "2026-11-25 21:41:54.123 P00   INFO: ",
            "2026-11-25 21:41:54.123 UTC [7] mon@db LOG:  ",
            "{\"timestamp\":\"2026-11-25 21:41:54.123 UTC\",\"message\":\"",
            "-------------------PROCESS START-------------------\n",
            "Traceback (most recent call last):\n",
            "password=secret postgres://u:pw@h/d ",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (any::<u8>(), 1usize..3000).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(piece(), 0..40).prop_map(|p| p.concat())
}

/// A `log_line_prefix`: escapes PostgreSQL knows and does not, with literal text between.
fn line_prefix() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "%m", "%t", "%n", "%p", "%c", "%l", "%u", "%d", "%a", "%h", "%r", "%e", "%i", "%v",
                "%x", "%q", "%%", "%b", "%Q", "%s", "%-10u", "%10p", "%", "%z",
            ])
            .prop_map(str::to_owned),
            "[ \\[\\]@:=,-]{0,3}",
        ],
        0..8,
    )
    .prop_map(|p| p.concat())
}

fn origin() -> Arc<Origin> {
    Arc::new(Origin {
        job: "fuzz".into(),
        ins: "pg-1".into(),
        ip: "10.0.0.1".into(),
        cls: "pg".into(),
    })
}

fn stderr_prefix() -> Option<Arc<LinePrefix>> {
    Some(Arc::new(LinePrefix::compile("%m [%p] %q%u@%d ").unwrap()))
}

/// Feeds `data` at `cuts` (each checked against the memory bound), then finishes the file.
fn frame(
    format: Format,
    prefix: Option<Arc<LinePrefix>>,
    max: usize,
    data: &[u8],
    cuts: &[usize],
) -> Result<(Vec<RawRecord>, u64), TestCaseError> {
    let mut framer = Framer::new(format, 0, max).with_prefix(prefix);
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    let mut last = 0;
    for c in cuts {
        framer.feed(&data[last..c], &mut out);
        last = c;
        // A line and a record at most, each capped at `max` (plus the newline joining them).
        prop_assert!(
            framer.buffered() <= 2 * max + 1,
            "{} bytes buffered with max {max}",
            framer.buffered()
        );
        prop_assert!(framer.committed() <= framer.position());
    }
    prop_assert_eq!(framer.position(), data.len() as u64);
    framer.finish(&mut out);
    prop_assert_eq!(framer.buffered(), 0);
    Ok((out, framer.committed()))
}

proptest! {
    #![proptest_config(config(64))]

    /// Any bytes, in any chunks, give the records they give at once; each within the limit,
    /// their ends increasing, and the whole file consumed.
    #[test]
    fn framing_does_not_depend_on_chunks(
        data in data(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in prop_oneof![1usize..64, 64usize..4096],
    ) {
        for format in FORMATS {
            let prefix = (format == Format::PostgresStderr).then(stderr_prefix).flatten();
            let (whole, end) = frame(format, prefix.clone(), max, &data, &[])?;
            let (chunked, chunked_end) = frame(format, prefix, max, &data, &cuts)?;
            prop_assert_eq!(&whole, &chunked, "{:?}", format);
            prop_assert_eq!(end, data.len() as u64, "{:?}: all consumed", format);
            prop_assert_eq!(chunked_end, end);
            let mut last = 0;
            for r in &whole {
                prop_assert!(r.bytes.len() <= max, "{:?}: {} > {max}", format, r.bytes.len());
                prop_assert!(r.end > last || (r.end == last && r.end == data.len() as u64), "{:?}: ends {} after {last}", format, r.end);
                last = r.end;
            }
        }
    }

    /// One huge line (no newline for megabytes, then more records): cut at the limit, the
    /// framer's memory bounded while it streams in, and the records after it intact.
    #[test]
    fn a_huge_line_is_cut_not_buffered(
        fill in any::<u8>(),
        len in 100_000usize..2_000_000,
        max in 1usize..10_000,
        chunk in 1usize..70_000,
    ) {
        let fill = if fill == b'\n' { b'x' } else { fill };
        let mut data = vec![fill; len];
        data.extend_from_slice(b"\n2026-11-25 21:41:54,033 INFO: after\n");
        for format in [Format::Plain, Format::PostgresCsv, Format::Patroni] {
            let cuts: Vec<usize> = (chunk..data.len()).step_by(chunk).collect();
            let (records, end) = frame(format, None, max, &data, &cuts)?;
            prop_assert_eq!(end, data.len() as u64);
            prop_assert!(records.iter().all(|r| r.bytes.len() <= max));
            prop_assert!(records[0].truncated, "{:?}", format);
        }
    }

    /// Every parser takes any record: no panic, flags consistent with what it ships, the
    /// message cut at its limit, and the JSON it ships valid with the same message.
    #[test]
    fn every_parser_takes_any_record(
        bytes in data(),
        truncated in any::<bool>(),
        max_len in prop_oneof![Just(usize::MAX), 0usize..100],
        prefix in line_prefix(),
    ) {
        let raw = RawRecord { bytes: bytes.clone(), end: bytes.len() as u64, truncated };
        let compiled = LinePrefix::compile(&prefix).ok().map(Arc::new);
        for format in FORMATS {
            let parser = Parser::new(format, origin(), max_len, Path::new("/pg/log/x.log"))
                .with_prefix(compiled.clone());
            let (record, flags) = parser.parse(&raw);
            prop_assert_eq!(flags.parse_error, record.parse_error.is_some(), "{:?}", format);
            prop_assert_eq!(flags.truncated, truncated);
            prop_assert_eq!(flags.invalid_utf8, std::str::from_utf8(&bytes).is_err());
            let message = if truncated {
                record.message.strip_suffix(TRUNCATION_MARKER)
            } else {
                Some(record.message.as_str())
            };
            let Some(message) = message else {
                return Err(TestCaseError::fail(format!("{format:?}: no truncation marker")));
            };
            prop_assert!(message.chars().count() <= max_len, "{:?}", format);
            let json: serde_json::Value = serde_json::from_str(&record.to_json())
                .map_err(|e| TestCaseError::fail(format!("{format:?}: {e}")))?;
            prop_assert_eq!(json["message"].as_str(), Some(record.message.as_str()));
            prop_assert_eq!(json["level"].as_str(), Some(record.level_str()));
        }
    }

    /// `log_line_prefix` compiles or is refused, never a panic; a compiled one matches any
    /// line or not, never a panic.
    #[test]
    fn any_line_prefix_compiles_or_is_refused(prefix in "\\PC{0,20}|[%a-z \\[\\]@-]{0,20}", line in "\\PC{0,80}") {
        if let Ok(p) = LinePrefix::compile(&prefix) {
            let _ = p.is_event_start(&line);
            let _ = p.match_line(&line);
        }
    }

    /// Fields written as PostgreSQL's csvlog writes them (quoted when needed, `""` inside,
    /// empty unquoted for NULL) split back into the same fields.
    #[test]
    fn csv_fields_round_trip(fields in prop::collection::vec(prop::option::of("\\PC{0,20}|[\",\n\r ]{0,6}"), 1..30)) {
        let mut line = String::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            write_csv_field(&mut line, f.as_deref());
        }
        let got: Vec<String> = parse_csv_fields(&line).into_iter().map(|c| c.into_owned()).collect();
        let want: Vec<String> = fields.iter().map(|f| f.clone().unwrap_or_default()).collect();
        prop_assert_eq!(got, want, "{:?}", line);
    }

    /// Any text splits into fields without a panic, and the fields are no longer than it.
    #[test]
    fn any_text_splits_into_csv_fields(s in "\\PC{0,200}|[a\",\n]{0,50}") {
        let fields = parse_csv_fields(&s);
        prop_assert!(!fields.is_empty());
        prop_assert!(fields.iter().map(|f| f.len()).sum::<usize>() <= s.len());
    }
}
