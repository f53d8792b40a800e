//! Lint of the built-in collector set (`collectors/sql_collector/config/*.yml`) and the
//! generated collector reference `docs/collectors.md`.
//!
//! Checked on the whole set, as compiled into the binaries ([`default_config::FILES`]):
//! - every file loads strictly and no branch key is defined twice (the directory merge would
//!   let a later file replace an earlier branch silently);
//! - every collector has a `desc` and every non-DISCARD column a `description`;
//! - metric and label names are valid Prometheus names;
//! - per collector `name`: the `[min_version, max_version)` ranges of its branches do not
//!   overlap unless the two branches exclude each other (`primary`/`replica` tags, or one is
//!   a Pgbouncer branch), they leave no gap between the lowest bound and the highest, a metric
//!   keeps one type (gauge, counter, histogram) across branches, and no metric name is
//!   produced by two different collectors;
//! - every metric name is listed in `docs/collectors.md`, and that file is exactly what
//!   [`render_docs`] generates from the set.
//!
//! After changing a collector file, regenerate the reference with
//! `UPDATE_DOCS=1 cargo test -p sql-collector --test default_config_lint`.
//! The checks are plain functions over texts and [`CollectorConfig`]s; the `rejects_*` tests
//! feed them small synthetic configs to show each one fails on a violation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use agent_kit::exposition::{is_valid_label_name, is_valid_metric_name};
use sql_collector::config::{CollectorConfig, Usage, parse_str};
use sql_collector::default_config;

/// Environment variable that makes [`docs_are_up_to_date`] rewrite the reference first.
const UPDATE_ENV: &str = "UPDATE_DOCS";

/// How to regenerate the reference, for failure messages.
const REGENERATE: &str =
    "regenerate it with: UPDATE_DOCS=1 cargo test -p sql-collector --test default_config_lint";

fn docs_path() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("crate is two levels below the workspace");
    root.join("docs/collectors.md")
}

/// Every branch of the built-in files, parsed file by file (so none is lost to the merge).
fn all_branches(files: &[(&str, &str)]) -> Vec<CollectorConfig> {
    files
        .iter()
        .flat_map(|(name, text)| {
            parse_str(text, name).unwrap_or_else(|e| panic!("built-in file {name} is invalid: {e}"))
        })
        .collect()
}

fn fail_on(violations: &[String], what: &str) {
    assert!(
        violations.is_empty(),
        "{} {what} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Branch keys defined more than once across (or within) the given `(file name, text)` files.
/// A file that does not parse is reported as well.
fn duplicate_branches(files: &[(&str, &str)]) -> Vec<String> {
    let mut seen: HashMap<String, (String, usize)> = HashMap::new();
    let mut out = Vec::new();
    for (file, text) in files {
        let branches = match parse_str(text, file) {
            Ok(b) => b,
            Err(e) => {
                out.push(format!("{file}: does not load: {e}"));
                continue;
            }
        };
        for c in branches {
            if let Some((f, line)) = seen.get(&c.branch) {
                out.push(format!(
                    "{}:{}: branch key {:?} already defined at {f}:{line} (a later file silently replaces it)",
                    c.source, c.line, c.branch
                ));
            } else {
                seen.insert(c.branch.clone(), (c.source.clone(), c.line));
            }
        }
    }
    out
}

fn at(c: &CollectorConfig) -> String {
    format!("{}:{}: branch {}", c.source, c.line, c.branch)
}

/// Missing `desc`/`description` texts and invalid metric or label names.
fn text_and_name_problems(collectors: &[CollectorConfig]) -> Vec<String> {
    let mut out = Vec::new();
    for c in collectors {
        if c.desc.trim().is_empty() {
            out.push(format!("{}: empty desc", at(c)));
        }
        for col in &c.columns {
            if col.usage != Usage::Discard && col.description.trim().is_empty() {
                out.push(format!("{}: column {} has no description", at(c), col.key));
            }
            match col.usage {
                Usage::Label => {
                    let label = col.output_name();
                    if !is_valid_label_name(label) {
                        out.push(format!("{}: invalid label name {label:?}", at(c)));
                    }
                }
                Usage::Discard => {}
                Usage::Gauge | Usage::Counter | Usage::Histogram => {
                    let metric = c.metric_name(col);
                    if !is_valid_metric_name(&metric) {
                        out.push(format!("{}: invalid metric name {metric:?}", at(c)));
                    }
                }
            }
        }
    }
    out
}

/// The version range of a branch; 0 bounds are open.
fn range(c: &CollectorConfig) -> (u64, u64) {
    let hi = if c.max_version == 0 {
        u64::MAX
    } else {
        u64::from(c.max_version)
    };
    (u64::from(c.min_version), hi)
}

fn has_any(c: &CollectorConfig, tags: &[&str]) -> bool {
    tags.iter().any(|t| c.has_tag(t))
}

/// True if the two branches can never be planned on the same server.
fn exclusive(a: &CollectorConfig, b: &CollectorConfig) -> bool {
    const PRIMARY: &[&str] = &["primary", "master", "leader"];
    const REPLICA: &[&str] = &["replica", "standby", "slave"];
    (has_any(a, PRIMARY) && has_any(b, REPLICA))
        || (has_any(a, REPLICA) && has_any(b, PRIMARY))
        || (a.has_tag("pgbouncer") != b.has_tag("pgbouncer"))
}

fn by_name(collectors: &[CollectorConfig]) -> BTreeMap<&str, Vec<&CollectorConfig>> {
    let mut map: BTreeMap<&str, Vec<&CollectorConfig>> = BTreeMap::new();
    for c in collectors {
        map.entry(c.name.as_str()).or_default().push(c);
    }
    map
}

fn kind(u: Usage) -> &'static str {
    match u {
        Usage::Gauge => "gauge",
        Usage::Counter => "counter",
        Usage::Histogram => "histogram",
        Usage::Label | Usage::Discard => "none",
    }
}

/// Per collector name: overlapping version ranges of non-exclusive branches, gaps between the
/// ranges, metrics changing type, and metric names shared with another collector.
fn branch_problems(collectors: &[CollectorConfig]) -> Vec<String> {
    let mut out = Vec::new();
    let groups = by_name(collectors);
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    for (name, branches) in &groups {
        for (i, a) in branches.iter().enumerate() {
            for b in &branches[i + 1..] {
                let ((alo, ahi), (blo, bhi)) = (range(a), range(b));
                if alo.max(blo) < ahi.min(bhi) && !exclusive(a, b) {
                    out.push(format!(
                        "collector {name}: version ranges of {} {} and {} {} overlap",
                        at(a),
                        show_range(a),
                        at(b),
                        show_range(b)
                    ));
                }
            }
        }
        let mut ranges: Vec<(u64, u64, &str)> = branches
            .iter()
            .map(|c| {
                let (lo, hi) = range(c);
                (lo, hi, c.branch.as_str())
            })
            .collect();
        ranges.sort_unstable();
        let mut reach = ranges[0].1;
        for &(lo, hi, branch) in &ranges[1..] {
            if lo > reach {
                out.push(format!(
                    "collector {name}: no branch covers versions [{reach}, {lo}) before branch {branch}"
                ));
            }
            reach = reach.max(hi);
        }
        let mut types: BTreeMap<String, (Usage, &str)> = BTreeMap::new();
        for c in branches {
            for col in c.value_columns() {
                let metric = c.metric_name(col);
                match types.get(&metric) {
                    Some((u, first)) if *u != col.usage => out.push(format!(
                        "collector {name}: metric {metric} is a {} in branch {first} but a {} in {}",
                        kind(*u),
                        kind(col.usage),
                        at(c)
                    )),
                    Some(_) => {}
                    None => {
                        types.insert(metric, (col.usage, c.branch.as_str()));
                    }
                }
            }
        }
        for metric in types.into_keys() {
            match owner.get(&metric) {
                Some(other) => out.push(format!(
                    "metric {metric} is produced by two collectors: {other} and {name}"
                )),
                None => {
                    owner.insert(metric, name);
                }
            }
        }
    }
    out
}

/// Metric names of the collectors that the reference text does not list (as `` `name` `` in
/// the first cell of a table row).
fn undocumented(collectors: &[CollectorConfig], docs: &str) -> Vec<String> {
    let listed: BTreeSet<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let mut out = BTreeSet::new();
    for c in collectors {
        for col in c.value_columns() {
            let metric = c.metric_name(col);
            if !listed.contains(metric.as_str()) {
                out.insert(format!(
                    "metric {metric} ({}) is not documented in docs/collectors.md",
                    at(c)
                ));
            }
        }
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Reference generation
// ---------------------------------------------------------------------------------------------

/// `130000` → `13`, `90600` → `9.6`, Pgbouncer `12401` → `1.24.1`.
fn show_version(v: u64, pgbouncer: bool) -> String {
    let (major, minor, patch) = (v / 10000, v / 100 % 100, v % 100);
    if pgbouncer || v < 100_000 {
        if patch == 0 {
            format!("{major}.{minor}")
        } else {
            format!("{major}.{minor}.{patch}")
        }
    } else if v.is_multiple_of(10000) {
        major.to_string()
    } else {
        v.to_string()
    }
}

fn show_bounds(lo: u64, hi: u64, pgbouncer: bool) -> String {
    let lo = if lo == 0 {
        "−∞".to_owned()
    } else {
        show_version(lo, pgbouncer)
    };
    let hi = if hi == u64::MAX {
        "∞".to_owned()
    } else {
        show_version(hi, pgbouncer)
    };
    format!("[{lo}, {hi})")
}

fn show_range(c: &CollectorConfig) -> String {
    let (lo, hi) = range(c);
    show_bounds(lo, hi, c.has_tag("pgbouncer"))
}

/// Union of the ranges of `branches`, adjacent or overlapping ranges merged.
fn show_union(branches: &[&CollectorConfig]) -> String {
    let mut ranges: Vec<(u64, u64)> = branches.iter().map(|c| range(c)).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let pgbouncer = branches.iter().any(|c| c.has_tag("pgbouncer"));
    merged
        .iter()
        .map(|&(lo, hi)| show_bounds(lo, hi, pgbouncer))
        .collect::<Vec<_>>()
        .join(" ∪ ")
}

/// Distinct values in first-seen order, joined with ` / `.
fn distinct(values: impl IntoIterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out.join(" / ")
}

fn secs(d: std::time::Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn show_tags(c: &CollectorConfig) -> String {
    if c.tags.is_empty() {
        "per-database".to_owned()
    } else {
        c.tags.join(", ")
    }
}

fn show_flags(c: &CollectorConfig) -> String {
    let mut flags = Vec::new();
    if c.fatal {
        flags.push("fatal");
    }
    if c.skip {
        flags.push("skip");
    }
    if !c.predicate_queries.is_empty() {
        flags.push("predicate");
    }
    flags.join(", ")
}

/// Markdown cell text: `|` escaped, HTML-like and emphasis characters neutralized.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.trim().chars() {
        match ch {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '*' => out.push_str("\\*"),
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The reference document of `collectors` (the merged built-in set).
fn render_docs(collectors: &[CollectorConfig]) -> String {
    let groups = by_name(collectors);
    // Collectors in config order (lowest priority, i.e. file order, first).
    let mut names: Vec<(i64, &str)> = groups
        .iter()
        .map(|(name, bs)| (bs.iter().map(|c| c.priority).min().unwrap_or(0), *name))
        .collect();
    names.sort_unstable();
    let metric_count: usize = groups
        .values()
        .map(|bs| {
            bs.iter()
                .flat_map(|c| c.value_columns().map(|col| c.metric_name(col)))
                .collect::<BTreeSet<_>>()
                .len()
        })
        .sum();

    let mut md = String::new();
    md.push_str("# Built-in collectors\n\n");
    md.push_str(
        "<!-- Generated from collectors/sql_collector/config/*.yml by \
         collectors/sql_collector/tests/default_config_lint.rs: do not edit. -->\n\n",
    );
    let _ = writeln!(
        md,
        "The collectors compiled into `pg_exporter` (used when no config file is found): \
         {} collectors in {} branches, {metric_count} metric names. A metric's full name is \
         `<collector>_<column>`; every metric of a collector carries the collector's labels.\n",
        groups.len(),
        collectors.len()
    );
    md.push_str(
        "Versions are `server_version_num` ranges `[min, max)` by major version (Pgbouncer: \
         its version); TTL and timeout in seconds. Tags: `cluster` runs once per instance, \
         per-database collectors (no tag) also on every discovered database; `primary` / \
         `replica` restrict to the role; `extension:x` / `schema:x` need that object. \
         `skip` collectors are disabled by default.\n\n",
    );
    let _ = writeln!(
        md,
        "Regenerate after changing a collector file: `UPDATE_DOCS=1 cargo test -p sql-collector --test default_config_lint`.\n"
    );

    md.push_str("## Collectors\n\n");
    md.push_str(
        "| Collector | Branches: versions | TTL | Timeout | Tags | Flags | File | Description |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for (_, name) in &names {
        let mut bs = groups[name].clone();
        bs.sort_by_key(|c| std::cmp::Reverse(range(c)));
        let branches = bs
            .iter()
            .map(|c| format!("{} {}", c.branch, show_range(c)))
            .collect::<Vec<_>>()
            .join("<br>");
        let timeouts = distinct(
            bs.iter()
                .map(|c| c.timeout.map_or_else(|| "none".to_owned(), secs)),
        );
        let _ = writeln!(
            md,
            "| `{name}` | {branches} | {} | {timeouts} | {} | {} | {} | {} |",
            distinct(bs.iter().map(|c| secs(c.ttl))),
            distinct(bs.iter().map(|c| show_tags(c))),
            distinct(bs.iter().map(|c| show_flags(c))),
            distinct(bs.iter().map(|c| c.source.clone())),
            cell(&bs[0].desc),
        );
    }

    md.push_str("\n## Metrics\n\n");
    md.push_str("| Metric | Collector | Type | Labels | Versions | TTL | Tags | Description |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for (_, name) in &names {
        let mut bs = groups[name].clone();
        // Newest branches first: their column order and wording win.
        bs.sort_by_key(|c| std::cmp::Reverse(range(c)));
        let mut order: Vec<String> = Vec::new();
        let mut found: HashMap<String, Vec<&CollectorConfig>> = HashMap::new();
        let mut first: HashMap<String, (Usage, String)> = HashMap::new();
        for c in &bs {
            for col in c.value_columns() {
                let metric = c.metric_name(col);
                if !found.contains_key(&metric) {
                    order.push(metric.clone());
                    first.insert(metric.clone(), (col.usage, col.description.clone()));
                }
                found.entry(metric).or_default().push(c);
            }
        }
        for metric in order {
            let with = &found[&metric];
            let (usage, description) = &first[&metric];
            let labels = distinct(with.iter().map(|c| {
                let l = c.label_names();
                if l.is_empty() {
                    "–".to_owned()
                } else {
                    l.join(", ")
                }
            }));
            let _ = writeln!(
                md,
                "| `{metric}` | `{name}` | {} | {} | {} | {} | {} | {} |",
                kind(*usage),
                labels,
                show_union(with),
                distinct(with.iter().map(|c| secs(c.ttl))),
                distinct(with.iter().map(|c| show_tags(c))),
                cell(description),
            );
        }
    }
    md
}

// ---------------------------------------------------------------------------------------------
// Tests on the built-in set
// ---------------------------------------------------------------------------------------------

#[test]
fn built_in_set_loads_and_branch_keys_are_unique() {
    let set = default_config::load().expect("the built-in set loads strictly");
    fail_on(&duplicate_branches(default_config::FILES), "branch key");
    let defined = all_branches(default_config::FILES).len();
    assert_eq!(
        set.collectors.len(),
        defined,
        "the merged set lost branches to duplicate keys"
    );
}

#[test]
fn descriptions_and_names() {
    fail_on(
        &text_and_name_problems(&all_branches(default_config::FILES)),
        "description/name",
    );
}

#[test]
fn versions_types_and_metric_owners() {
    fail_on(
        &branch_problems(&all_branches(default_config::FILES)),
        "version/type",
    );
}

#[test]
fn docs_are_up_to_date() {
    let set = default_config::load().expect("the built-in set loads strictly");
    let collectors: Vec<CollectorConfig> = set.collectors.iter().map(|c| (**c).clone()).collect();
    let expected = render_docs(&collectors);
    let path = docs_path();
    if std::env::var_os(UPDATE_ENV).is_some_and(|v| !v.is_empty()) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; {REGENERATE}", path.display()));
    fail_on(&undocumented(&collectors, &committed), "documentation");
    if committed != expected {
        let line = committed
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(expected.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is not what the built-in collector files generate (first difference at line {line}); {REGENERATE}",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The checks fail on violations (synthetic configs)
// ---------------------------------------------------------------------------------------------

fn branch(key: &str, name: &str, versions: (u32, u32), tags: &str, metrics: &str) -> String {
    format!(
        "{key}:\n  name: {name}\n  desc: test collector\n  query: SELECT 1\n  min_version: {}\n  max_version: {}\n  tags: [{tags}]\n  metrics:\n{metrics}",
        versions.0, versions.1
    )
}

const GAUGE_V: &str = "    - v: { usage: GAUGE, description: a value }\n";
const COUNTER_V: &str = "    - v: { usage: COUNTER, description: a value }\n";

fn parse(text: &str) -> Vec<CollectorConfig> {
    parse_str(text, "test.yml").expect("synthetic config parses")
}

#[test]
fn rejects_duplicate_branch_keys_across_files() {
    let a = branch("x_13", "x", (130000, 0), "cluster", GAUGE_V);
    let b = branch("x_13", "x", (130000, 0), "cluster", COUNTER_V);
    let problems = duplicate_branches(&[("0100-a.yml", &a), ("0200-b.yml", &b)]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("0200-b.yml") && problems[0].contains("0100-a.yml"));
    assert!(duplicate_branches(&[("0100-a.yml", &a)]).is_empty());
    // A broken file is reported, not skipped.
    assert_eq!(duplicate_branches(&[("0300-c.yml", "x: [")]).len(), 1);
}

#[test]
fn rejects_missing_descriptions() {
    let ok = parse(&branch("x", "x", (0, 0), "cluster", GAUGE_V));
    assert!(text_and_name_problems(&ok).is_empty());
    let text = "x:\n  query: SELECT 1\n  metrics:\n    - l: { usage: LABEL }\n    - d: { usage: DISCARD }\n    - v: { usage: GAUGE, description: '  ' }\n";
    let problems = text_and_name_problems(&parse(text));
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("empty desc"));
    assert!(problems[1].contains("column l"));
    assert!(problems[2].contains("column v"));
}

#[test]
fn rejects_invalid_names() {
    let text = "x:\n  desc: d\n  query: SELECT 1\n  metrics:\n    - l: { usage: LABEL, description: a label }\n    - v: { usage: GAUGE, description: a value }\n";
    let mut c = parse(text).remove(0);
    c.name = "bad-name".to_owned();
    c.columns[0].rename = Some("__reserved".to_owned());
    let problems = text_and_name_problems(&[c]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("invalid label name \"__reserved\""));
    assert!(problems[1].contains("invalid metric name \"bad-name_v\""));
}

#[test]
fn rejects_overlapping_versions_unless_exclusive() {
    let overlap = format!(
        "{}\n{}",
        branch("x_13", "x", (130000, 160000), "cluster", GAUGE_V),
        branch("x_15", "x", (150000, 0), "cluster", GAUGE_V)
    );
    let problems = branch_problems(&parse(&overlap));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("overlap"));
    // Open bounds overlap everything.
    let open = format!(
        "{}\n{}",
        branch("x_a", "x", (0, 0), "cluster", GAUGE_V),
        branch("x_b", "x", (170000, 0), "cluster", GAUGE_V)
    );
    assert_eq!(branch_problems(&parse(&open)).len(), 1);
    // Same range, but one branch per role: fine; adjacent ranges: fine.
    let roles = format!(
        "{}\n{}\n{}",
        branch("x_p", "x", (130000, 0), "cluster, primary", GAUGE_V),
        branch("x_r", "x", (130000, 0), "cluster, replica", GAUGE_V),
        branch("y_13", "y", (130000, 170000), "cluster", GAUGE_V),
    ) + &branch("y_17", "y", (170000, 0), "cluster", GAUGE_V);
    assert!(branch_problems(&parse(&roles)).is_empty());
}

#[test]
fn rejects_version_gaps() {
    let gap = format!(
        "{}\n{}",
        branch("x_13", "x", (130000, 150000), "cluster", GAUGE_V),
        branch("x_16", "x", (160000, 0), "cluster", GAUGE_V)
    );
    let problems = branch_problems(&parse(&gap));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("[150000, 160000)"));
}

#[test]
fn rejects_type_changes_and_shared_metric_names() {
    let changed = format!(
        "{}\n{}",
        branch("x_13", "x", (130000, 170000), "cluster", GAUGE_V),
        branch("x_17", "x", (170000, 0), "cluster", COUNTER_V)
    );
    let problems = branch_problems(&parse(&changed));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("metric x_v is a gauge in branch x_13 but a counter"));
    // `a` + `b_v` and `a_b` + `v` both produce a_b_v.
    let shared = format!(
        "{}\n{}",
        branch(
            "a",
            "a",
            (0, 0),
            "cluster",
            "    - b_v: { usage: GAUGE, description: d }\n"
        ),
        branch("a_b", "a_b", (0, 0), "cluster", GAUGE_V)
    );
    let problems = branch_problems(&parse(&shared));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("a_b_v is produced by two collectors"));
}

#[test]
fn rejects_undocumented_metrics() {
    let collectors = parse(&branch("x", "x", (0, 0), "cluster", GAUGE_V));
    let docs = render_docs(&collectors);
    assert!(docs.contains("| `x_v` | `x` | gauge |"), "{docs}");
    assert!(undocumented(&collectors, &docs).is_empty());
    let problems = undocumented(&collectors, "# Built-in collectors\n\n| `x_w` | `x` |\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("x_v"));
}

#[test]
fn version_display() {
    assert_eq!(show_version(130000, false), "13");
    assert_eq!(show_version(90600, false), "9.6");
    assert_eq!(show_version(130002, false), "130002");
    assert_eq!(show_version(12401, true), "1.24.1");
    assert_eq!(show_version(11600, true), "1.16");
    let c = parse(&format!(
        "{}\n{}\n{}",
        branch("x_13", "x", (130000, 150000), "cluster", GAUGE_V),
        branch("x_15", "x", (150000, 170000), "cluster", GAUGE_V),
        branch("x_18", "x", (180000, 0), "cluster", GAUGE_V)
    ));
    let refs: Vec<&CollectorConfig> = c.iter().collect();
    assert_eq!(show_union(&refs), "[13, 17) ∪ [18, ∞)");
}
