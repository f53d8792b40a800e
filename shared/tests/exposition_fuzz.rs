//! The text exposition writer against an independent parser: Prometheus' own (`promtool
//! check metrics`, the Go `expfmt` text parser that Prometheus and the Pushgateway use).
//! Families with random names, HELP texts, types and samples whose label values hold quotes,
//! backslashes, newlines, control characters and text decoded lossily from invalid UTF-8 (as
//! values read from PostgreSQL are) must always parse. Their values and label values are
//! then read back by a reader of the text format written here from the format's
//! specification, and must equal what was written.
//!
//! The case count is short for CI; `PROPTEST_CASES` raises it (`scripts/fuzz`).

use std::io::Write as _;
use std::process::{Command, Stdio};

use agent_kit::exposition::{MetricType, TextEncoder, is_valid_label_name};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// `cases` cases unless `PROPTEST_CASES` says otherwise; failures are kept in the crate's
/// `proptest-regressions/` (cargo runs the tests in the crate's directory).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/exposition_fuzz.txt",
        ))),
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

const PROMTOOL: &str = "/usr/bin/promtool";

/// `promtool check metrics` on `body`: `Err` with its output when it cannot parse it (exit
/// status 1); lint findings (status 3) are style, not syntax.
fn promtool_parses(body: &str) -> Result<(), String> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PROMTOOL} (Debian package prometheus, scripts/setup): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() == Some(1) || text.contains("error while linting") {
        return Err(text);
    }
    Ok(())
}

/// Label pairs of one sample, in order.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

/// Label values: any text, text with what must be escaped, and bytes that are not UTF-8
/// decoded lossily.
fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,16}",
        "[\"\\\\\n\r\t\u{0}\u{7f}\u{2028}{}=, a🐘]{0,10}",
        prop::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-4,
            9.999e-5,
            1e15,
            999_999_999_999_999.0,
            1e308,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]),
        (-1_000_000i64..1_000_000).prop_map(|i| i as f64),
    ]
}

fn family() -> impl Strategy<Value = Family> {
    let label_names = prop::collection::btree_set(
        "[a-zA-Z_][a-zA-Z0-9_]{0,8}".prop_filter("valid", |n| is_valid_label_name(n)),
        0..4,
    );
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}",
        prop_oneof!["\\PC{0,30}", "[\\\\\n\"\t a]{0,10}"],
        prop::sample::select(vec![
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Untyped,
        ]),
        label_names,
    )
        .prop_flat_map(|(name, help, kind, names)| {
            let names: Vec<String> = names.into_iter().collect();
            let n = names.len();
            prop::collection::vec((prop::collection::vec(label_value(), n..=n), value()), 1..4)
                .prop_map(move |samples| Family {
                    name: name.clone(),
                    help: help.clone(),
                    kind,
                    samples: samples
                        .into_iter()
                        .map(|(values, v)| (names.iter().cloned().zip(values).collect(), v))
                        .collect(),
                })
        })
}

/// Families with distinct names.
fn families() -> impl Strategy<Value = Vec<Family>> {
    prop::collection::vec(family(), 1..5).prop_map(|mut fams| {
        for (i, f) in fams.iter_mut().enumerate() {
            f.name = format!("{}_{i}", f.name);
        }
        fams
    })
}

/// One sample line read back: name, label pairs, value text. Follows the text format's
/// grammar: `name{label="value",...} value`, values escaping `\\`, `\"` and `\n`.
fn read_sample(line: &str) -> Result<(String, Labels, String), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut label = String::new();
        loop {
            let (_, c) = chars.next().ok_or("unterminated labels")?;
            match c {
                '}' => break,
                ',' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("no opening quote".into());
                    }
                    let mut v = String::new();
                    loop {
                        match chars.next().ok_or("unterminated value")?.1 {
                            '"' => break,
                            '\\' => v.push(match chars.next().ok_or("dangling escape")?.1 {
                                'n' => '\n',
                                '\\' => '\\',
                                '"' => '"',
                                c => return Err(format!("bad escape \\{c}")),
                            }),
                            '\n' => return Err("raw newline".into()),
                            c => v.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut label), v));
                }
                c => label.push(c),
            }
        }
        let consumed = chars.next().map_or(r.len(), |(i, _)| i);
        rest = &r[consumed..];
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    Ok((name, labels, value.to_owned()))
}

/// A HELP text read back: `\\` and `\n` are its only escapes.
fn read_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '\\' => match chars.next().ok_or("dangling escape")? {
                'n' => '\n',
                '\\' => '\\',
                c => return Err(format!("bad escape \\{c}")),
            },
            c => c,
        });
    }
    Ok(out)
}

/// The value as Prometheus' parser reads it (Go's `ParseFloat`, with `+Inf`/`-Inf`/`NaN`).
fn read_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Prometheus parses whatever we write, and every label value and value reads back.
    #[test]
    fn exposition_parses_and_round_trips(fams in families()) {
        let mut body = String::new();
        let mut enc = TextEncoder::new(&mut body);
        for f in &fams {
            let mut w = enc.family(&f.name, &f.help, f.kind);
            for (labels, v) in &f.samples {
                w.sample(labels, *v);
            }
        }
        promtool_parses(&body).map_err(|e| TestCaseError::fail(format!("promtool: {e}\n--- body ---\n{body}")))?;
        for f in &fams {
            let prefix = format!("# HELP {} ", f.name);
            let line = body.lines().find(|l| l.starts_with(&prefix)).ok_or_else(|| TestCaseError::fail("no HELP"))?;
            prop_assert_eq!(read_help(&line[prefix.len()..]).map_err(TestCaseError::fail)?, f.help.clone());
        }
        let samples: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
        let want: Vec<(&Family, &(Labels, f64))> = fams.iter().flat_map(|f| f.samples.iter().map(move |s| (f, s))).collect();
        prop_assert_eq!(samples.len(), want.len(), "one line per sample");
        for (line, (f, (labels, v))) in samples.iter().zip(want) {
            let (name, got_labels, got_value) = read_sample(line).map_err(|e| TestCaseError::fail(format!("{line:?}: {e}")))?;
            prop_assert_eq!(&name, &f.name);
            prop_assert_eq!(&got_labels, labels);
            let got = read_value(&got_value).ok_or_else(|| TestCaseError::fail(format!("value {got_value:?}")))?;
            prop_assert!(got == *v || (got.is_nan() && v.is_nan()) , "{} read as {}", v, got);
        }
    }
}
