//! The rule files under `dashboards/rules/`: promtool accepts them (lint included), their unit
//! tests pass, every alert has a firing and a quiet unit test plus a summary and a runbook
//! description, and flipping any alert's comparison makes the unit tests fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dashboards::rules::{Rule, load_rule_tests, load_rules};
use dashboards::{promql, promtool, rule_files, rule_test_files, rules_dir};

fn all_rules() -> Vec<Rule> {
    let files = rule_files();
    assert!(files.len() >= 5, "rule files missing: {files:?}");
    files.iter().flat_map(|f| load_rules(f).unwrap()).collect()
}

fn paths(files: &[PathBuf]) -> Vec<&Path> {
    files.iter().map(PathBuf::as_path).collect()
}

#[test]
fn promtool_check_rules_accepts_every_file_with_lint() {
    let files = rule_files();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut args = vec!["check", "rules", "--lint=all", "--lint-fatal"];
    args.extend(names.iter().map(String::as_str));
    let outcome = promtool::run(&args).unwrap();
    assert!(
        outcome.success,
        "promtool check rules failed:\n{}",
        outcome.output
    );
    assert_eq!(
        outcome.output.matches("SUCCESS").count(),
        files.len(),
        "{}",
        outcome.output
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let tests = rule_test_files();
    assert_eq!(
        tests.len(),
        rule_files().len(),
        "one test file per rule file"
    );
    let outcome = promtool::test_rules(&paths(&tests)).unwrap();
    assert!(
        outcome.success,
        "promtool test rules failed:\n{}",
        outcome.output
    );
}

#[test]
fn a_wrong_expectation_fails_promtool() {
    // The unit tests can fail: a copy expecting PostgresDown one minute too early does.
    let dir = copy_rules();
    let test = dir.path().join("tests/pgsql_test.yml");
    let text = std::fs::read_to_string(&test).unwrap();
    let mutated = text.replacen(
        "      - eval_time: 4m\n        alertname: PostgresDown",
        "      - eval_time: 2m\n        alertname: PostgresDown",
        1,
    );
    assert_ne!(text, mutated);
    std::fs::write(&test, mutated).unwrap();
    let outcome = promtool::test_rules(&[&test]).unwrap();
    assert!(!outcome.success, "{}", outcome.output);
    assert!(
        outcome.output.contains("alertname: PostgresDown, time: 2m"),
        "{}",
        outcome.output
    );
}

#[test]
fn rules_follow_the_conventions() {
    let rules = all_rules();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let origin = format!("{} {}", rule.file.display(), rule.name());
        assert!(
            rule.record.is_some() != rule.alert.is_some(),
            "{origin}: exactly one of record/alert"
        );
        assert!(
            names.insert(rule.name().to_owned()),
            "{origin}: duplicate name"
        );
        if let Some(record) = &rule.record {
            // <namespace>:<level>:<metric>_<modifier>, or Pigsty's `<agent>_agent_up`.
            assert!(
                record.matches(':').count() == 2 || record.ends_with("_agent_up"),
                "{origin}: recording rule names are <namespace>:<level>:<name>"
            );
        }
        if rule.alert.is_some() {
            for label in ["level", "severity", "category"] {
                assert!(rule.labels.contains_key(label), "{origin}: label {label}");
            }
            let level = rule.labels["level"].as_str();
            let severity = rule.labels["severity"].as_str();
            assert!(
                matches!(
                    (level, severity),
                    ("0", "CRIT") | ("1", "WARN") | ("2", "INFO")
                ),
                "{origin}: level {level} does not match severity {severity}"
            );
            let summary = rule.annotations.get("summary").map_or("", String::as_str);
            assert!(
                summary.starts_with(&format!("{severity} {}", rule.name())),
                "{origin}: summary must start with `{severity} {}`: {summary:?}",
                rule.name()
            );
            let description = rule
                .annotations
                .get("description")
                .map_or("", String::as_str);
            assert!(
                description.split_whitespace().count() >= 20,
                "{origin}: description must be a runbook (what it means, what to check)"
            );
        }
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let alerts: BTreeSet<String> = all_rules().into_iter().filter_map(|r| r.alert).collect();
    // Pigsty's rules have 16 alerts; ours add backups and logs.
    assert!(alerts.len() >= 25, "{alerts:?}");
    let mut firing: BTreeMap<String, usize> = BTreeMap::new();
    let mut quiet: BTreeMap<String, usize> = BTreeMap::new();
    let rule_file_names: BTreeSet<String> = rule_files()
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut covered_files = BTreeSet::new();
    for test in rule_test_files() {
        let (files, cases) = load_rule_tests(&test).unwrap();
        for f in files {
            covered_files.insert(f.trim_start_matches("../").to_owned());
        }
        for case in cases {
            assert!(
                alerts.contains(&case.alertname),
                "{}: test of unknown alert {}",
                test.display(),
                case.alertname
            );
            let counter = if case.expected > 0 {
                &mut firing
            } else {
                &mut quiet
            };
            *counter.entry(case.alertname).or_default() += 1;
        }
    }
    assert_eq!(covered_files, rule_file_names, "every rule file is tested");
    let no_firing: Vec<_> = alerts.iter().filter(|a| !firing.contains_key(*a)).collect();
    let no_quiet: Vec<_> = alerts.iter().filter(|a| !quiet.contains_key(*a)).collect();
    assert!(
        no_firing.is_empty(),
        "alerts without a firing test: {no_firing:?}"
    );
    assert!(
        no_quiet.is_empty(),
        "alerts without a quiet test: {no_quiet:?}"
    );
}

/// The rules directory copied into a temporary directory (rule files and tests).
fn copy_rules() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    for f in rule_files().iter().chain(rule_test_files().iter()) {
        let rel = f.strip_prefix(rules_dir()).unwrap();
        std::fs::copy(f, dir.path().join(rel)).unwrap();
    }
    dir
}

#[test]
fn inverting_any_alert_comparison_fails_the_unit_tests() {
    let alerts: Vec<Rule> = all_rules()
        .into_iter()
        .filter(|r| r.alert.is_some())
        .collect();
    // Each alert in its own mutated copy of the rules; promtool runs in parallel, two at a time
    // per core is plenty for these small files.
    let results: Vec<(String, Result<String, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = alerts
            .chunks(alerts.len().div_ceil(4))
            .map(|chunk| scope.spawn(move || chunk.iter().map(mutate_and_test).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut survivors = Vec::new();
    for (alert, result) in &results {
        match result {
            Ok(output) => assert!(
                output.contains(&format!("alertname: {alert},")),
                "{alert}: the failure does not name the alert:\n{output}"
            ),
            Err(why) => survivors.push(format!("{alert}: {why}")),
        }
    }
    assert!(
        survivors.is_empty(),
        "mutations the unit tests did not catch:\n{}",
        survivors.join("\n")
    );
    assert_eq!(results.len(), alerts.len());
}

/// Inverts the first comparison of `rule`'s expression in a copy of the rules and runs the
/// unit tests there: `Ok(promtool output)` when they fail as they must.
fn mutate_and_test(rule: &Rule) -> (String, Result<String, String>) {
    let alert = rule.name().to_owned();
    let Some(inverted) = promql::invert_first_comparison(&rule.expr) else {
        return (alert, Err("no comparison to invert".to_owned()));
    };
    let dir = copy_rules();
    let file = dir.path().join(rule.file.file_name().unwrap());
    let text = std::fs::read_to_string(&file).unwrap();
    let needle = format!("expr: {}\n", rule.expr.trim_end());
    if text.matches(&needle).count() != 1 {
        return (
            alert,
            Err(format!("expression not found once as `{needle}`")),
        );
    }
    std::fs::write(&file, text.replace(&needle, &format!("expr: {inverted}\n"))).unwrap();
    // Only the test files of that rule file: promtool 2.42 cannot select test groups.
    let rule_file = format!("../{}", rule.file.file_name().unwrap().to_string_lossy());
    let tests: Vec<PathBuf> = std::fs::read_dir(dir.path().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|t| load_rule_tests(t).unwrap().0.contains(&rule_file))
        .collect();
    assert!(!tests.is_empty(), "no unit test file loads {rule_file}");
    let outcome = promtool::test_rules(&paths(&tests)).unwrap();
    let result = if outcome.success {
        Err(format!("`{inverted}` still passes"))
    } else {
        Ok(outcome.output)
    };
    (alert, result)
}
