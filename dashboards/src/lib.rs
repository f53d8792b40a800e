//! Checks for the suite's Grafana dashboards (`dashboards/grafana/*.json`) and
//! Prometheus/vmalert rules (`dashboards/rules/*.yml`): the library behind the tests in
//! `dashboards/tests/`. See `dashboards/README.md` for what is checked and why.
//!
//! - [`grafana`]: dashboard files, the queries they run, Grafana variable substitution;
//! - [`rules`]: rule files and promtool unit-test files;
//! - [`promql`]: the metric names an expression selects, and comparison inversion;
//! - [`promtool`]: `promtool check rules` / `test rules`, and loose-expression syntax checks;
//! - [`references`]: every referenced metric is recorded, emitted or allow-listed.

use std::path::PathBuf;

pub mod grafana;
pub mod promql;
pub mod promtool;
pub mod references;
pub mod rules;

/// The `dashboards/` directory of the source tree.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `dashboards/grafana`: the dashboard JSON files.
pub fn dashboards_dir() -> PathBuf {
    root().join("grafana")
}

/// `dashboards/rules`: the rule files (`*.yml`); their unit tests are in `rules/tests`.
pub fn rules_dir() -> PathBuf {
    root().join("rules")
}

/// The rule files, sorted.
pub fn rule_files() -> Vec<PathBuf> {
    yml_files(&rules_dir())
}

/// The promtool unit-test files, sorted.
pub fn rule_test_files() -> Vec<PathBuf> {
    yml_files(&rules_dir().join("tests"))
}

fn yml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
