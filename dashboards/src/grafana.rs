//! Grafana dashboards as files: loading them ([`load_dashboards`]), the queries they run
//! ([`queries`]) and Grafana's template syntax replaced by values PromQL accepts
//! ([`substitute_variables`]).

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

/// The fixed uid of the Prometheus-type datasource (VictoriaMetrics), as Pigsty provisions it.
pub const PROMETHEUS_UID: &str = "ds-prometheus";
/// The fixed uid of the VictoriaLogs datasource, as Pigsty provisions it.
pub const VLOGS_UID: &str = "ds-vlogs";
/// The plugin type of [`PROMETHEUS_UID`].
pub const PROMETHEUS_TYPE: &str = "prometheus";
/// The plugin type of [`VLOGS_UID`].
pub const VLOGS_TYPE: &str = "victoriametrics-logs-datasource";

/// Why a dashboard could not be read.
#[derive(Debug, Error)]
pub enum DashboardError {
    /// The directory or file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: serde_json::Error,
    },
}

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// The file.
    pub path: PathBuf,
    /// The file name without `.json`.
    pub stem: String,
    /// The parsed model.
    pub json: Value,
}

/// Every `*.json` under `dir` (recursively, sorted by path).
pub fn load_dashboards(dir: &Path) -> Result<Vec<Dashboard>, DashboardError> {
    let mut files = Vec::new();
    collect_json(dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|source| DashboardError::Read {
                path: path.clone(),
                source,
            })?;
            let json = serde_json::from_str(&text).map_err(|source| DashboardError::Json {
                path: path.clone(),
                source,
            })?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Dashboard { path, stem, json })
        })
        .collect()
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DashboardError> {
    let read = |e| DashboardError::Read {
        path: dir.to_owned(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.is_dir() {
            collect_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// The query language of a [`Query`], from its datasource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// PromQL (datasource [`PROMETHEUS_UID`]).
    PromQl,
    /// LogsQL (datasource [`VLOGS_UID`]).
    LogsQl,
    /// Any other datasource: the tests reject it.
    Other,
}

/// One query a dashboard runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Dashboard file stem.
    pub dashboard: String,
    /// Where: `panel "<title>" target <refId>` or `variable <name>`.
    pub location: String,
    /// The datasource uid the query runs on (`""` when none is set).
    pub datasource_uid: String,
    /// Its language.
    pub language: Language,
    /// The query as written (Grafana variables not substituted; for a variable of the form
    /// `label_values(expr, label)` or `query_result(expr)`, the inner `expr`).
    pub expr: String,
}

fn language(uid: &str) -> Language {
    match uid {
        PROMETHEUS_UID => Language::PromQl,
        VLOGS_UID => Language::LogsQl,
        _ => Language::Other,
    }
}

fn datasource_uid(v: &Value) -> Option<String> {
    match v {
        Value::Object(o) => o.get("uid").and_then(Value::as_str).map(str::to_owned),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Every panel of `dashboard`, rows' collapsed children included, depth first.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for panel in list.and_then(Value::as_array).into_iter().flatten() {
            out.push(panel);
            walk(panel.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

/// Every query of `dashboard`: panel targets (`expr`) and query variables.
pub fn queries(dashboard: &Dashboard) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(&dashboard.json) {
        let title = panel.get("title").and_then(Value::as_str).unwrap_or("");
        let panel_ds = panel.get("datasource").and_then(datasource_uid);
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(expr) = target.get("expr").and_then(Value::as_str) else {
                continue;
            };
            let uid = target
                .get("datasource")
                .and_then(datasource_uid)
                .or_else(|| panel_ds.clone())
                .unwrap_or_default();
            let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
            out.push(Query {
                dashboard: dashboard.stem.clone(),
                location: format!("panel {title:?} target {ref_id}"),
                language: language(&uid),
                datasource_uid: uid,
                expr: expr.to_owned(),
            });
        }
    }
    for var in dashboard
        .json
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if var.get("type").and_then(Value::as_str) != Some("query") {
            continue;
        }
        let name = var.get("name").and_then(Value::as_str).unwrap_or("?");
        let uid = var
            .get("datasource")
            .and_then(datasource_uid)
            .unwrap_or_default();
        let raw = match var.get("query") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            _ => String::new(),
        };
        let lang = language(&uid);
        let expr = if lang == Language::PromQl {
            variable_expr(&raw)
        } else {
            Some(raw)
        };
        if let Some(expr) = expr {
            out.push(Query {
                dashboard: dashboard.stem.clone(),
                location: format!("variable {name}"),
                datasource_uid: uid,
                language: lang,
                expr,
            });
        }
    }
    out
}

/// The PromQL inside a Prometheus variable query: `label_values(expr, label)` and
/// `query_result(expr)` give `expr`; `label_values(label)`, `label_names()` and
/// `metrics(re)` select no metric and give `None`; anything else is PromQL itself.
pub fn variable_expr(query: &str) -> Option<String> {
    let q = query.trim();
    let inner = |prefix: &str| {
        q.strip_prefix(prefix)
            .and_then(|r| r.trim_start().strip_prefix('('))
            .and_then(|r| r.trim_end().strip_suffix(')'))
    };
    if let Some(args) = inner("label_values") {
        // The last top-level comma separates the label; without one there is no metric.
        let mut depth = 0i32;
        let mut in_str = false;
        let mut split = None;
        for (i, c) in args.char_indices() {
            match c {
                '"' => in_str = !in_str,
                '(' | '{' | '[' if !in_str => depth += 1,
                ')' | '}' | ']' if !in_str => depth -= 1,
                ',' if !in_str && depth == 0 => split = Some(i),
                _ => {}
            }
        }
        return split.map(|i| args[..i].trim().to_owned());
    }
    if let Some(expr) = inner("query_result") {
        return Some(expr.trim().to_owned());
    }
    if q.starts_with("label_names") || q.starts_with("metrics(") || q.is_empty() {
        return None;
    }
    Some(q.to_owned())
}

/// `expr` with Grafana's template syntax replaced so that promtool can parse it: interval
/// variables (`$__rate_interval`, `$__interval`, `$__range`, ...) become durations or numbers,
/// user variables (`$ins`, `${ins}`, `${ins:regex}`, `[[ins]]`) the placeholder `x`.
pub fn substitute_variables(expr: &str) -> String {
    const BUILTIN: &[(&str, &str)] = &[
        ("__rate_interval_ms", "60000"),
        ("__rate_interval", "5m"),
        ("__interval_ms", "60000"),
        ("__interval", "1m"),
        ("__range_ms", "3600000"),
        ("__range_s", "3600"),
        ("__range", "1h"),
    ];
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("[[")
            && let Some(end) = after.find("]]")
        {
            out.push('x');
            rest = &after[end + 2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix("${")
            && let Some(end) = after.find('}')
        {
            let name = after[..end].split(':').next().unwrap_or("");
            out.push_str(
                BUILTIN
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or("x", |(_, v)| v),
            );
            rest = &after[end + 1..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('$') {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len > 0 {
                let name = &after[..len];
                match BUILTIN.iter().find(|(n, _)| name.starts_with(n)) {
                    Some((n, v)) => {
                        out.push_str(v);
                        rest = &after[n.len()..];
                    }
                    None => {
                        out.push('x');
                        rest = &after[len..];
                    }
                }
                continue;
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_substituted() {
        assert_eq!(
            substitute_variables(r#"rate(a{ins="$ins",db=~"${datname:regex}"}[$__rate_interval])"#),
            r#"rate(a{ins="x",db=~"x"}[5m])"#
        );
        assert_eq!(
            substitute_variables("a[$__interval] + [[cls]] + $__range_s"),
            "a[1m] + x + 3600"
        );
        assert_eq!(substitute_variables("a[5m] $"), "a[5m] $");
    }

    #[test]
    fn variable_queries() {
        assert_eq!(
            variable_expr(r#"label_values(pg_up{cls="$cls"}, ins)"#).as_deref(),
            Some(r#"pg_up{cls="$cls"}"#)
        );
        assert_eq!(
            variable_expr(r#"label_values(sum by (a, b) (x{c="1,2"}), b)"#).as_deref(),
            Some(r#"sum by (a, b) (x{c="1,2"})"#)
        );
        assert_eq!(variable_expr("label_values(cls)"), None);
        assert_eq!(
            variable_expr("query_result(topk(5, pg_up))").as_deref(),
            Some("topk(5, pg_up)")
        );
    }
}
