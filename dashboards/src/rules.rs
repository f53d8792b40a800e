//! Prometheus/vmalert rule files ([`load_rules`]) and promtool unit-test files
//! ([`load_rule_tests`]), read into plain structs for the checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

/// Why a rule or test file could not be read.
#[derive(Debug, Error)]
pub enum RulesError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{path}: invalid YAML: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: serde_norway::Error,
    },
    /// A required field is missing or has the wrong type.
    #[error("{path}: {field}: {problem}")]
    Field {
        /// The file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `groups[0].rules[3].expr`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// One recording or alerting rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule file.
    pub file: PathBuf,
    /// The group name.
    pub group: String,
    /// `record:` name, for a recording rule.
    pub record: Option<String>,
    /// `alert:` name, for an alerting rule.
    pub alert: Option<String>,
    /// The expression.
    pub expr: String,
    /// `for:` (alerts), if set.
    pub for_: Option<String>,
    /// `labels:`.
    pub labels: BTreeMap<String, String>,
    /// `annotations:`.
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    /// `record` or `alert`, whichever is set.
    pub fn name(&self) -> &str {
        self.record
            .as_deref()
            .or(self.alert.as_deref())
            .unwrap_or("")
    }
}

fn read_yaml(path: &Path) -> Result<Value, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.to_owned(),
        source,
    })?;
    let yaml: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|source| RulesError::Yaml {
            path: path.to_owned(),
            source,
        })?;
    serde_json::to_value(yaml).map_err(|e| RulesError::Field {
        path: path.to_owned(),
        field: "(document)".to_owned(),
        problem: e.to_string(),
    })
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every rule of the rule file `path`, in file order.
pub fn load_rules(path: &Path) -> Result<Vec<Rule>, RulesError> {
    let doc = read_yaml(path)?;
    let field = |field: String, problem: &str| RulesError::Field {
        path: path.to_owned(),
        field,
        problem: problem.to_owned(),
    };
    let groups = doc
        .get("groups")
        .and_then(Value::as_array)
        .ok_or_else(|| field("groups".to_owned(), "missing or not a list"))?;
    let mut rules = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let name = group
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| field(format!("groups[{g}].name"), "missing"))?;
        let list = group
            .get("rules")
            .and_then(Value::as_array)
            .ok_or_else(|| field(format!("groups[{g}].rules"), "missing or not a list"))?;
        for (r, rule) in list.iter().enumerate() {
            let text = |key: &str| rule.get(key).and_then(Value::as_str).map(str::to_owned);
            let expr = match rule.get("expr") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(field(format!("groups[{g}].rules[{r}].expr"), "missing")),
            };
            rules.push(Rule {
                file: path.to_owned(),
                group: name.to_owned(),
                record: text("record"),
                alert: text("alert"),
                expr,
                for_: text("for"),
                labels: string_map(rule.get("labels")),
                annotations: string_map(rule.get("annotations")),
            });
        }
    }
    Ok(rules)
}

/// One `alert_rule_test` case of a promtool test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertCase {
    /// The test file.
    pub file: PathBuf,
    /// The test group's `name` (or its index).
    pub group: String,
    /// The alert name.
    pub alertname: String,
    /// `eval_time`.
    pub eval_time: String,
    /// How many alerts are expected to fire (0: the case asserts it stays quiet).
    pub expected: usize,
}

/// The `rule_files` and `alert_rule_test` cases of the promtool test file `path`.
pub fn load_rule_tests(path: &Path) -> Result<(Vec<String>, Vec<AlertCase>), RulesError> {
    let doc = read_yaml(path)?;
    let rule_files = doc
        .get("rule_files")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut cases = Vec::new();
    for (t, test) in doc
        .get("tests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let group = test
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("tests[{t}]"), str::to_owned);
        for case in test
            .get("alert_rule_test")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            cases.push(AlertCase {
                file: path.to_owned(),
                group: group.clone(),
                alertname: case
                    .get("alertname")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                eval_time: case
                    .get("eval_time")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                expected: case
                    .get("exp_alerts")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            });
        }
    }
    Ok((rule_files, cases))
}
