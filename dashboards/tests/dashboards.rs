//! The dashboards under `dashboards/grafana/` as Grafana would provision them from files: one
//! uid per file, fixed datasource uids and no `__inputs`, every PromQL query accepted by
//! promtool, every LogsQL query using only fields log_shipper ships, and provisioning files
//! that match. (Which metrics the queries reference is checked against live exporters in
//! `live_references.rs`.)

use std::collections::BTreeSet;

use dashboards::grafana::{
    self, Language, PROMETHEUS_TYPE, PROMETHEUS_UID, Query, VLOGS_TYPE, VLOGS_UID, panels,
};
use dashboards::{dashboards_dir, promtool, root};
use serde_json::Value;

/// The schemaVersion every dashboard is pinned to (Grafana 10.4 / 11 migrate it forward).
const SCHEMA_VERSION: u64 = 39;

/// The dashboards the suite promises (issue 8; pgsql-patroni: issue 10).
const EXPECTED: &[&str] = &[
    "pgsql-database",
    "pgsql-exporter",
    "pgsql-instance",
    "pgsql-logs",
    "pgsql-overview",
    "pgsql-patroni",
    "pgsql-pgbackrest",
    "pgsql-pgbouncer",
    "pgsql-query",
    "pgsql-replication",
    "pgsql-tables",
];

/// Fields of the records log_shipper sends (collectors/log_pipeline/README.md, "Output
/// schema"), plus VictoriaLogs' own.
const LOG_FIELDS: &[&str] = &[
    "_time",
    "_msg",
    "_stream",
    "job",
    "ins",
    "ip",
    "cls",
    "level",
    "message",
    "lv",
    "code",
    "user",
    "db",
    "app",
    "query",
    "duration",
    "pid",
    "backend_type",
    "topic",
    "parse_error",
];

fn all_queries() -> Vec<Query> {
    grafana::load_dashboards(&dashboards_dir())
        .unwrap()
        .iter()
        .flat_map(grafana::queries)
        .collect()
}

#[test]
fn dashboards_provision_from_files() {
    let boards = grafana::load_dashboards(&dashboards_dir()).unwrap();
    let stems: Vec<&str> = boards.iter().map(|d| d.stem.as_str()).collect();
    assert_eq!(stems, EXPECTED);
    for d in &boards {
        let name = &d.stem;
        let j = &d.json;
        assert_eq!(j["uid"], name.as_str(), "{name}: uid must be the file name");
        assert!(j["id"].is_null(), "{name}: id must be null");
        assert_eq!(j["schemaVersion"], SCHEMA_VERSION, "{name}: schemaVersion");
        assert!(
            j["title"].as_str().is_some_and(|t| t.starts_with("PGSQL ")),
            "{name}: title"
        );
        let tags: Vec<&str> = j["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(tags[..2], ["Pigsty", "PGSQL"], "{name}: tags");
        assert!(
            j.get("__inputs").is_none() && j.get("__requires").is_none(),
            "{name}: __inputs"
        );
        let text = std::fs::read_to_string(&d.path).unwrap();
        assert!(
            !text.contains("${DS_"),
            "{name}: ${{DS_...}} only resolves on UI import"
        );

        let mut ids = BTreeSet::new();
        for panel in panels(j) {
            let title = panel["title"].as_str().unwrap_or("");
            let id = panel["id"].as_u64().unwrap();
            assert!(ids.insert(id), "{name}: duplicate panel id {id}");
            assert!(!title.is_empty(), "{name}: panel {id} has no title");
            let pos = &panel["gridPos"];
            let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
            assert!(
                x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
                "{name}: {title}: gridPos"
            );
            if panel["type"] == "row" {
                continue;
            }
            let ds = &panel["datasource"];
            let (uid, kind) = (ds["uid"].as_str().unwrap(), ds["type"].as_str().unwrap());
            assert!(
                (uid, kind) == (PROMETHEUS_UID, PROMETHEUS_TYPE)
                    || (uid, kind) == (VLOGS_UID, VLOGS_TYPE),
                "{name}: {title}: datasource {ds}"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {title}: no targets");
            for t in targets {
                assert_eq!(&t["datasource"], ds, "{name}: {title}: target datasource");
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{name}: {title}: empty expr"
                );
            }
        }
        assert!(ids.len() >= 5, "{name}: too few panels");
    }
}

#[test]
fn every_query_runs_on_a_provisioned_datasource() {
    let queries = all_queries();
    assert!(queries.len() > 200, "{}", queries.len());
    for q in &queries {
        assert_ne!(
            q.language,
            Language::Other,
            "{}: {}: datasource {:?}",
            q.dashboard,
            q.location,
            q.datasource_uid
        );
        if q.location.starts_with("variable") {
            assert_eq!(
                q.language,
                Language::PromQl,
                "{}: {}",
                q.dashboard,
                q.location
            );
        }
    }
}

#[test]
fn every_promql_query_parses_with_promtool() {
    let queries: Vec<Query> = all_queries()
        .into_iter()
        .filter(|q| q.language == Language::PromQl)
        .collect();
    let exprs: Vec<String> = queries
        .iter()
        .map(|q| grafana::substitute_variables(&q.expr))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let broken = promtool::check_expressions(dir.path(), &exprs).unwrap();
    let report: Vec<String> = broken
        .iter()
        .map(|(i, why)| {
            format!(
                "{}: {}: {}\n{why}",
                queries[*i].dashboard, queries[*i].location, queries[*i].expr
            )
        })
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn a_broken_expression_is_reported_by_the_syntax_check() {
    let dir = tempfile::tempdir().unwrap();
    let exprs = [
        "sum(rate(pg_db_xact_commit[1m])".to_owned(),
        "pg_up".to_owned(),
        "rate(pg_up[$__rate_interval])".to_owned(),
    ];
    let broken = promtool::check_expressions(dir.path(), &exprs).unwrap();
    let indexes: Vec<usize> = broken.iter().map(|(i, _)| *i).collect();
    // Unsubstituted Grafana variables are no PromQL either.
    assert_eq!(indexes, [0, 2], "{broken:?}");
    assert!(
        broken[0].1.contains("unclosed left parenthesis"),
        "{}",
        broken[0].1
    );
}

/// The field names a LogsQL query refers to: stream selector labels and `field:` filters.
fn logsql_fields(query: &str) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let mut rest = query;
    // Stream selectors: {a="x", b=~"y"}.
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').map_or(rest.len(), |e| start + e);
        for matcher in rest[start + 1..end].split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            fields.insert(name);
        }
        rest = &rest[(end + 1).min(rest.len())..];
    }
    // Field filters: name:value, name:=value, name:~re, name:>n, name:in(...); and `by (f)`.
    let chars: Vec<char> = query.chars().collect();
    let mut in_string = false;
    for (i, c) in chars.iter().enumerate() {
        if *c == '"' {
            in_string = !in_string;
        }
        if *c == ':' && !in_string {
            let name: String = chars[..i]
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if !name.is_empty() {
                fields.insert(name);
            }
        }
    }
    if let Some(by) = query.split("stats by (").nth(1) {
        for f in by.split(')').next().unwrap_or("").split(',') {
            fields.insert(f.trim().to_owned());
        }
    }
    fields
}

#[test]
fn logsql_queries_use_only_shipped_fields() {
    let queries: Vec<Query> = all_queries()
        .into_iter()
        .filter(|q| q.language == Language::LogsQl)
        .collect();
    assert!(queries.len() >= 8, "{}", queries.len());
    for q in &queries {
        let fields = logsql_fields(&q.expr);
        assert!(
            fields.contains("job"),
            "{}: {}: select a job stream",
            q.dashboard,
            q.location
        );
        for f in &fields {
            assert!(
                LOG_FIELDS.contains(&f.as_str()),
                "{}: {}: field {f:?} is not shipped by log_shipper: {}",
                q.dashboard,
                q.location,
                q.expr
            );
        }
    }
    // The check can fail.
    assert!(logsql_fields(r#"{job="postgres"} severity:ERROR"#).contains("severity"));
    assert!(logsql_fields(r#"{job="postgres", host="a"}"#).contains("host"));
}

#[test]
fn provisioning_matches_the_dashboards() {
    let read = |rel: &str| -> Value {
        let text = std::fs::read_to_string(root().join(rel)).unwrap();
        let yaml: serde_norway::Value = serde_norway::from_str(&text).unwrap();
        serde_json::to_value(yaml).unwrap()
    };
    let ds = read("provisioning/datasources/pgsuite.yml");
    assert_eq!(ds["apiVersion"], 1);
    let list = ds["datasources"].as_array().unwrap();
    let pairs: BTreeSet<(&str, &str)> = list
        .iter()
        .map(|d| (d["uid"].as_str().unwrap(), d["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        BTreeSet::from([(PROMETHEUS_UID, PROMETHEUS_TYPE), (VLOGS_UID, VLOGS_TYPE)])
    );
    for d in list {
        let url = d["url"].as_str().unwrap();
        assert!(url.starts_with("http://"), "{url}");
    }

    let boards = read("provisioning/dashboards/pgsuite.yml");
    assert_eq!(boards["apiVersion"], 1);
    let provider = &boards["providers"][0];
    assert_eq!(provider["type"], "file");
    // The Debian package installs dashboards/<rel> as /usr/share/pgsuite-dashboards/<rel>.
    assert_eq!(
        provider["options"]["path"],
        "/usr/share/pgsuite-dashboards/grafana"
    );
}

/// The queries of `pgsql-patroni` that do not select the chosen cluster: Patroni's series
/// (`patroni_*`, `patroni:*`) by `scope="$cls"`, our exporters' by `cls="$cls"`, logs by
/// `cls:="$cls"`. Without it a panel would mix every cluster's members.
fn unscoped_patroni_queries(queries: &[Query]) -> Vec<String> {
    let mut problems = Vec::new();
    for q in queries.iter().filter(|q| q.dashboard == "pgsql-patroni") {
        if q.location.starts_with("variable") {
            continue;
        }
        let wanted: Vec<&str> = match q.language {
            Language::LogsQl => vec![r#"cls:="$cls""#],
            _ => {
                let names =
                    dashboards::promql::metric_names(&grafana::substitute_variables(&q.expr))
                        .unwrap();
                let mut w = Vec::new();
                if names.iter().any(|n| n.starts_with("patroni")) {
                    w.push(r#"scope="$cls""#);
                }
                if names.iter().any(|n| !n.starts_with("patroni")) {
                    w.push(r#"cls="$cls""#);
                }
                w
            }
        };
        for w in wanted {
            if !q.expr.contains(w) {
                problems.push(format!("{}: {} lacks {w}", q.location, q.expr));
            }
        }
    }
    problems
}

#[test]
fn the_patroni_dashboard_selects_one_cluster() {
    let queries = all_queries();
    let problems = unscoped_patroni_queries(&queries);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let n = queries
        .iter()
        .filter(|q| q.dashboard == "pgsql-patroni")
        .count();
    assert!(n >= 25, "{n} queries");
    // The check can fail: a Patroni query without its scope filter is reported.
    let mut mutated = queries.clone();
    let q = mutated
        .iter_mut()
        .find(|q| q.dashboard == "pgsql-patroni" && q.expr.starts_with("patroni:cls:leaders"))
        .unwrap();
    q.expr = "patroni:cls:leaders".to_owned();
    assert_eq!(unscoped_patroni_queries(&mutated).len(), 1);
}
