//! Hostile input for the collector YAML loader: arbitrary bytes, random YAML documents shaped
//! like collector configs, the built-in config files mutated line by line, alias bombs and
//! deep nesting. Never a panic; memory and time bounded; every error names the file, and a
//! line when the text has one to point at.
//!
//! The case count is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sql_collector::config::{ConfigError, parse_str};

/// `cases` cases unless `PROPTEST_CASES` says otherwise; failures are kept in the crate's
/// `proptest-regressions/` (cargo runs the tests in the crate's directory).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/config_fuzz.txt",
        ))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

const FILE: &str = "fuzz.yml";

/// The built-in collector files.
fn builtin() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&path).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// An error must say which file; a syntax error and a branch's error also which line.
fn check_error(e: &ConfigError, text: &str) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(shown.starts_with(FILE), "no file name: {}", shown);
    prop_assert_eq!(e.file(), Some(FILE));
    match e {
        ConfigError::Syntax { line, .. } => {
            prop_assert!(*line > 0, "syntax error without a line: {}", shown);
            prop_assert!(
                *line <= text.lines().count() + 1,
                "line past the end: {}",
                shown
            );
        }
        ConfigError::Invalid {
            line,
            branch,
            field,
            ..
        } => {
            prop_assert!(shown.contains(&format!("branch {branch}")), "{}", shown);
            if !field.is_empty() {
                prop_assert!(shown.contains(field.as_str()), "{}", shown);
            }
            // A branch key written at the start of a line is always found.
            let plain_key = text.lines().any(|l| {
                l.strip_prefix(branch.as_str())
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            });
            if plain_key {
                prop_assert!(*line > 0, "branch error without a line: {}", shown);
            }
            prop_assert!(
                *line <= text.lines().count(),
                "line past the end: {}",
                shown
            );
        }
        ConfigError::Document { .. } => {}
        ConfigError::Io { .. } | ConfigError::NoValidBranch { .. } | ConfigError::Empty { .. } => {
            return Err(TestCaseError::fail(format!("not a parse error: {shown}")));
        }
    }
    Ok(())
}

fn parse_and_check(text: &str) -> Result<(), TestCaseError> {
    match parse_str(text, FILE) {
        Ok(collectors) => {
            // What loads can be printed back and loads again the same.
            for c in &collectors {
                let again = parse_str(&c.to_yaml(), FILE)
                    .map_err(|e| TestCaseError::fail(format!("{} re-parsed: {e}", c.branch)))?;
                prop_assert_eq!(again.len(), 1);
                prop_assert_eq!(&again[0].columns, &c.columns);
                prop_assert_eq!(&again[0].query, &c.query);
                let _ = c.explain();
            }
            Ok(())
        }
        Err(e) => check_error(&e, text),
    }
}

/// Scalars YAML reads in many ways.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "~",
            "null",
            "true",
            "no",
            "on",
            "0",
            "-1",
            "1e400",
            "-.inf",
            ".nan",
            "090600",
            "0x1F",
            "0o17",
            "1_000",
            "\"\"",
            "''",
            "GAUGE",
            "gauge",
            "LABEL",
            "HISTOGRAM",
            "COUNTER",
            "DISCARD",
            "SELECT 1",
            "[]",
            "{}",
            "[1, 2]",
            "{usage: GAUGE}",
            "*a",
            "&a x",
            "!!str 1",
            "!!binary aGk=",
            "|\n  x",
            ">-\n  y",
            "'it''s'",
            "\"\\t\\u00e9\"",
            "18446744073709551616",
            "4294967296",
            "1.5",
            "-0.0",
        ])
        .prop_map(str::to_owned),
        "[a-z0-9 _.:-]{0,10}",
        "\\PC{0,10}",
    ]
}

/// A random document shaped like a collector config, keys known and unknown.
fn document() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "name",
            "desc",
            "query",
            "ttl",
            "timeout",
            "priority",
            "min_version",
            "max_version",
            "fatal",
            "skip",
            "tags",
            "predicate_queries",
            "metrics",
            "usage",
            "rename",
            "description",
            "scale",
            "default",
            "bucket",
            "predicate_query",
            "ttll",
            "<<",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    let leaf = scalar();
    let value = leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| { format!("[{}]", items.join(", ")) }),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(|pairs| {
                let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    });
    prop::collection::vec(("[a-z_]{1,8}", value), 0..4).prop_map(|branches| {
        branches
            .iter()
            .map(|(b, v)| format!("{b}: {v}\n"))
            .collect::<String>()
    })
}

/// One edit of a line-based text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    Indent(prop::sample::Index, i8),
    /// Replace what follows the line's first `: ` with a scalar.
    Value(prop::sample::Index, String),
    Insert(prop::sample::Index, String),
    Bytes(prop::sample::Index, Vec<u8>),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    use prop::sample::Index;
    prop_oneof![
        any::<Index>().prop_map(Edit::Delete),
        any::<Index>().prop_map(Edit::Duplicate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<Index>(), -4i8..5).prop_map(|(a, d)| Edit::Indent(a, d)),
        (any::<Index>(), scalar()).prop_map(|(a, v)| Edit::Value(a, v)),
        (any::<Index>(), document()).prop_map(|(a, d)| Edit::Insert(a, d)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(a, b)| Edit::Bytes(a, b)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match e {
            Edit::Delete(i) => {
                lines.remove(i.index(n));
            }
            Edit::Duplicate(i) => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            Edit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            Edit::Indent(i, d) => {
                let l = &mut lines[i.index(n)];
                if *d > 0 {
                    l.insert_str(0, &" ".repeat(*d as usize));
                } else {
                    let strip = l.len() - l.trim_start_matches(' ').len();
                    l.drain(..strip.min(d.unsigned_abs() as usize));
                }
            }
            Edit::Value(i, v) => {
                let l = &mut lines[i.index(n)];
                if let Some(p) = l.find(": ") {
                    l.truncate(p + 2);
                    l.push_str(v);
                }
            }
            Edit::Insert(i, d) => lines.insert(i.index(n), d.clone()),
            Edit::Bytes(i, b) => {
                let l = &mut lines[i.index(n)];
                let at = (0..=l.len())
                    .rev()
                    .find(|&k| l.is_char_boundary(k) && k <= b.len() * 3)
                    .unwrap_or(0);
                l.insert_str(at, &String::from_utf8_lossy(b));
            }
            Edit::Truncate(i) => lines.truncate(i.index(n)),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

proptest! {
    #![proptest_config(config(64))]

    /// Any bytes (read as the loader reads a file: UTF-8, here lossily).
    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        parse_and_check(&String::from_utf8_lossy(&bytes))?;
    }

    /// Random documents shaped like collector configs.
    #[test]
    fn any_document(doc in document()) {
        parse_and_check(&doc)?;
    }

    /// The built-in files, edited: lines deleted, repeated, swapped, re-indented, values
    /// replaced, documents and bytes inserted, the text cut.
    #[test]
    fn mutated_builtin_files(file in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let files = builtin();
        let (_, text) = &files[file.index(files.len())];
        parse_and_check(&apply(text, &edits))?;
    }
}

/// Peak resident memory of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Parses `text` (expected to be refused), within `limit` seconds and 256 MiB more memory.
fn refused_within_bounds(what: &str, text: &str) -> String {
    let before = peak_rss_kib();
    let start = Instant::now();
    let result = parse_str(text, FILE);
    let took = start.elapsed();
    let grew = peak_rss_kib().saturating_sub(before);
    assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    assert!(grew < 256 * 1024, "{what}: peak memory grew by {grew} KiB");
    let e = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
    let shown = e.to_string();
    assert!(shown.starts_with(FILE), "{what}: {shown}");
    shown
}

/// The "billion laughs": each level repeats the previous one ten times, 10^9 strings at the
/// last; and the same as a branch's `metrics`, `tags` and merge keys.
#[test]
fn alias_bombs_are_refused_within_bounds() {
    let mut bomb = String::from(
        "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let shown = refused_within_bounds("billion laughs", &bomb);
    assert!(
        shown.contains("repetition limit") || shown.contains("recursion"),
        "{shown}"
    );

    let mut in_branch = bomb.replace("a0: &a0", "x:\n  query: SELECT 1\n  tags: &a0");
    in_branch = in_branch
        .replace("\na", "\n  z")
        .replace("  z9: &a9", "  metrics: &a9");
    refused_within_bounds("bomb inside a branch", &in_branch);

    // Merge keys: each level merges the previous ten times.
    let mut merge = String::from("m0: &m0 {query: SELECT 1, k0: v}\n");
    for i in 1..12 {
        merge.push_str(&format!(
            "m{i}: &m{i} {{<<: [{}], k{i}: v}}\n",
            vec![format!("*m{}", i - 1); 10].join(", ")
        ));
    }
    refused_within_bounds("merge-key bomb", &merge);
}

/// Nesting deeper than any config: refused with an error, not a stack overflow.
#[test]
fn deep_nesting_is_refused() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let depth = 100_000;
        let text = format!("x: {}1{}\n", open.repeat(depth), close.repeat(depth));
        let shown = refused_within_bounds("deep nesting", &text);
        assert!(shown.contains("nested deeper than"), "{shown}");
    }
    let mut block = String::from("x:\n");
    for d in 0..5_000 {
        block.push_str(&" ".repeat(d + 1));
        block.push_str("- \n");
    }
    refused_within_bounds("deep block nesting", &block);
}

/// A second YAML document (a `---` moved or pasted in) was an error without a line.
#[test]
fn a_second_document_is_pointed_at() {
    for (text, line) in [
        ("a:\n  query: SELECT 1\n---\nb: 2\n", 3),
        ("--- # first\na: 1\n...\n--- \nb: 2\n", 4),
        ("a: 1\n...\nb: 2\n", 3),
        // Found by mutated_builtin_files: an indented first line, then a branch at column 0.
        ("  name: pg_size\n# comment\npg_size:\n  desc: x\n", 3),
        ("#==\n===#\n# c\npg_primary_only:\n  query: x\n", 4),
        ("# c\n---\n---\n", 3),
    ] {
        let e = parse_str(text, FILE).unwrap_err();
        assert_eq!(e.line(), Some(line), "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("{FILE}:{line}")), "{e}");
    }
}

/// A control character was reported at line 1, column 1 wherever it was (the parser gives
/// its byte position in the message instead).
#[test]
fn a_control_character_is_pointed_at() {
    for (text, line, column) in [
        ("a:\n  query: \u{1}x\n", 2, 10),
        ("\u{e}", 1, 1),
        ("# é\nb:\n  desc: \"x\u{7}\"\n", 3, 11),
    ] {
        let e = parse_str(text, FILE).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{FILE}:{line}:{column}: ")),
            "{text:?}: {e}"
        );
    }
}
