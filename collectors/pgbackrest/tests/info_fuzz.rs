//! Hostile `pgbackrest info --output=json` output: arbitrary bytes, the fixtures cut and
//! with bytes changed, their JSON values replaced by random ones (huge and negative numbers,
//! wrong types, deep nesting), and nesting deeper than any parser stack. Parsing never
//! panics and either fails with a clear error or keeps what it understood and names the rest;
//! what it keeps renders into metrics (every setting on) without a panic, in valid text
//! format.
//!
//! The case count is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use pgbackrest_collector::info::{InfoError, parse};
use pgbackrest_collector::metrics::render_pgbackrest;
use pgbackrest_collector::settings::Settings;
use pgbackrest_collector::state::{State, collected};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;

/// `cases` cases unless `PROPTEST_CASES` says otherwise; failures are kept in the crate's
/// `proptest-regressions/` (cargo runs the tests in the crate's directory).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/info_fuzz.txt",
        ))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Parses `bytes`; the outcome must be an error with a message, or data that renders.
fn parse_and_render(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse(bytes) {
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(
                shown.starts_with("invalid JSON from pgbackrest info")
                    || shown.starts_with("pgbackrest info printed JSON"),
                "{}",
                shown
            );
            if let InfoError::Json(j) = &e {
                prop_assert!(j.line() > 0, "no line: {}", shown);
            }
        }
        Ok(info) => {
            for p in &info.problems {
                prop_assert!(!p.to_string().is_empty());
            }
            let problems = (!info.problems.is_empty())
                .then(|| format!("{} parts left out", info.problems.len()));
            let settings = Settings {
                database_count: true,
                database_count_latest: true,
                reference_count: true,
                verbose_wal: true,
                ..Settings::default()
            };
            let mut state = State::new(&settings);
            let label = state.invocations[0].label.clone();
            state.record_info(
                &label,
                collected(info),
                problems,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            );
            let text = render_pgbackrest(&state, &settings, SystemTime::now());
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let value = line.rsplit(' ').next().unwrap_or("");
                prop_assert!(
                    value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                    "bad sample {:?}",
                    line
                );
            }
        }
    }
    Ok(())
}

/// JSON values of every kind, numbers at and past every integer limit.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "1e400",
            "-1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "9223372036854775807",
            "-0",
            "0.5",
            "1e-400",
        ])
        .prop_map(|n| serde_json::from_str(n).unwrap_or(Value::Null)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z-]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the `n`-th node (pre-order) of `v` with `with`; returns how many nodes it saw.
fn replace_nth(v: &mut Value, n: &mut usize, with: &Value) -> bool {
    if *n == 0 {
        *v = with.clone();
        return true;
    }
    *n -= 1;
    match v {
        Value::Array(items) => items.iter_mut().any(|i| replace_nth(i, n, with)),
        Value::Object(map) => map.values_mut().any(|i| replace_nth(i, n, with)),
        _ => false,
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Any bytes at all.
    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        parse_and_render(&bytes)?;
    }

    /// A fixture cut anywhere, with bytes overwritten.
    #[test]
    fn damaged_fixtures(file in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
        let files = fixtures();
        let mut bytes = files[file.index(files.len())].clone();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        parse_and_render(&bytes)?;
    }

    /// A fixture whose values are replaced, one to four at a time, by random JSON.
    #[test]
    fn fixtures_with_random_values(file in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<prop::sample::Index>(), json_value()), 1..5)) {
        let files = fixtures();
        let mut doc: Value = serde_json::from_slice(&files[file.index(files.len())]).unwrap();
        for (at, with) in edits {
            let mut n = at.index(count_nodes(&doc));
            replace_nth(&mut doc, &mut n, &with);
        }
        parse_and_render(doc.to_string().as_bytes())?;
    }
}

/// Nesting deeper than any stack: refused with serde_json's recursion limit, not a crash.
#[test]
fn deep_nesting_is_an_error() {
    for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
        let depth = 1_000_000;
        let text = format!(
            "[{{\"name\":\"s\",\"backup\":{}1{}}}]",
            open.repeat(depth),
            close.repeat(depth)
        );
        let e = parse(text.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("recursion limit exceeded"), "{e}");
    }
}
