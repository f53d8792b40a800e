//! Integration tests of `sql_collector::config`: parsing, validation messages, directory
//! merging, config path search, explain and merged YAML.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sql_collector::config::{
    CollectorConfig, ConfigError, LoadMode, Usage, fingerprint, from_embedded, load, parse_str,
    resolve_config_path_from,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config_fixtures")
        .join(name)
}

fn branches(set: &sql_collector::config::CollectorSet) -> Vec<(&str, i64)> {
    set.collectors
        .iter()
        .map(|c| (c.branch.as_str(), c.priority))
        .collect()
}

/// A collector without its origin, for comparing re-parsed output.
fn without_origin(c: &CollectorConfig) -> CollectorConfig {
    CollectorConfig {
        source: String::new(),
        line: 0,
        ..c.clone()
    }
}

#[test]
fn parses_every_key() {
    let set = load(&fixture("full.yml"), LoadMode::Strict).unwrap();
    assert!(set.skipped_files.is_empty());
    assert_eq!(set.source, fixture("full.yml"));
    // Single-file mode keeps priorities as written (0 stays 0).
    assert_eq!(branches(&set), [("pg_lat", 0), ("pg_db_10", 42)]);

    let c = set.get("pg_db_10").unwrap();
    assert_eq!(c.name, "pg_db");
    assert_eq!(c.desc, "PostgreSQL database statistics\n(second line)\n");
    assert!(c.query.starts_with("SELECT datname, xact_commit"));
    assert_eq!(c.ttl, Duration::from_secs(10));
    assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(c.priority, 42);
    assert_eq!(c.min_version, 90600, "leading zero is decimal, not octal");
    assert_eq!(c.max_version, 120000);
    assert!(c.fatal);
    assert!(!c.skip);
    assert_eq!(
        c.tags,
        ["cluster", "primary", "extension:pg_stat_statements"]
    );
    assert!(c.has_tag("primary") && !c.has_tag("replica"));
    assert_eq!(c.source, "full.yml");
    assert_eq!(c.line, 2);

    assert_eq!(c.predicate_queries.len(), 2);
    assert_eq!(c.predicate_queries[0].name, "has_stats");
    assert_eq!(c.predicate_queries[0].query, "SELECT true");
    assert_eq!(c.predicate_queries[0].ttl, Duration::from_secs(30));
    assert_eq!(c.predicate_queries[1].name, "");
    assert_eq!(c.predicate_queries[1].ttl, Duration::ZERO);

    let cols: Vec<_> = c
        .columns
        .iter()
        .map(|c| (c.key.as_str(), c.column.as_str(), c.usage, c.output_name()))
        .collect();
    assert_eq!(
        cols,
        [
            ("datname", "datname", Usage::Label, "db"),
            ("xact_commit", "xact_commit", Usage::Counter, "xact_commit"),
            (
                "blks_read",
                "blks_read_total",
                Usage::Gauge,
                "blks_read_total"
            ),
            (
                "blk_read_time",
                "blk_read_time",
                Usage::Gauge,
                "read_seconds"
            ),
            ("stats_reset", "stats_reset", Usage::Discard, "stats_reset"),
        ]
    );
    assert_eq!(c.columns[0].description, "Name of the database");
    assert_eq!(c.columns[0].rename.as_deref(), Some("db"));
    // scale/default as numbers and as strings
    assert_eq!(
        (c.columns[2].scale, c.columns[2].default),
        (Some(1e-3), Some(0.0))
    );
    assert_eq!(
        (c.columns[3].scale, c.columns[3].default),
        (Some(1e-6), Some(-1.0))
    );
    assert_eq!((c.columns[1].scale, c.columns[1].default), (None, None));
    assert_eq!(c.label_names(), ["db"]);
    assert_eq!(c.metric_name(&c.columns[1]), "pg_db_xact_commit");
    assert_eq!(c.metric_name(&c.columns[3]), "pg_db_read_seconds");

    let h = set.get("pg_lat").unwrap();
    assert_eq!(h.name, "pg_lat", "name defaults to the branch key");
    assert_eq!(h.timeout, None, "negative timeout disables it");
    assert_eq!(h.columns[1].usage, Usage::Histogram);
    assert_eq!(h.columns[1].buckets, [0.001, 0.01, 0.1, 1.0, 10.0]);
    assert!(h.has_histogram());
    assert_eq!(h.line, 44);
}

#[test]
fn leading_zero_versions_are_decimal() {
    for (written, want) in [
        ("090600", 90600),
        ("0100000", 100000),
        ("'090600'", 90600),
        ("10800", 10800),
    ] {
        let text = format!(
            "b:\n  query: SELECT 1\n  min_version: {written}\n  max_version: {written}\n  metrics:\n    - v: {{usage: GAUGE}}\n"
        );
        let c = &parse_str(&text, "v.yml").unwrap()[0];
        assert_eq!((c.min_version, c.max_version), (want, want), "{written}");
    }
}

#[test]
fn usage_is_case_insensitive() {
    for (written, want) in [
        ("gauge", Usage::Gauge),
        ("Counter", Usage::Counter),
        ("LABEL", Usage::Label),
        ("discard", Usage::Discard),
        ("histogram", Usage::Histogram),
    ] {
        let extra = if want == Usage::Histogram {
            ", bucket: [1]"
        } else {
            ""
        };
        let text = format!(
            "b:\n  query: SELECT 1\n  metrics:\n    - x: {{usage: {written}{extra}}}\n    - v: {{usage: GAUGE}}\n"
        );
        let c = &parse_str(&text, "v.yml").unwrap()[0];
        assert_eq!(c.columns[0].usage, want, "{written}");
    }
}

#[test]
fn timeout_and_name_defaults() {
    let t = |extra: &str| {
        let text = format!("b:\n  query: SELECT 1\n{extra}  metrics:\n    - v: {{usage: GAUGE}}\n");
        parse_str(&text, "v.yml").unwrap().remove(0)
    };
    assert_eq!(t("").timeout, Some(Duration::from_millis(100)));
    assert_eq!(
        t("  timeout: 0\n").timeout,
        Some(Duration::from_millis(100))
    );
    assert_eq!(t("  timeout: -1\n").timeout, None);
    assert_eq!(
        t("  timeout: 0.25\n").timeout,
        Some(Duration::from_millis(250))
    );
    assert_eq!(t("").name, "b");
    assert_eq!(t("  name: ns\n").name, "ns");
    assert_eq!(t("  ttl: 0.5\n").ttl, Duration::from_millis(500));
}

/// One branch with the pieces a test replaces: `@extra` (branch keys) and `@metrics`.
const TEMPLATE: &str = "\
# leading comment
pg_x:
  query: SELECT 1
@extra  metrics:
@metrics";

const PLAIN_METRICS: &str =
    "    - datname:\n        usage: LABEL\n    - v:\n        usage: GAUGE\n";

fn validation_error(extra: &str, metrics: &str) -> String {
    let text = TEMPLATE
        .replace("@extra", extra)
        .replace("@metrics", metrics);
    match parse_str(&text, "0110-pg.yml") {
        Ok(c) => panic!("accepted:\n{text}\n{c:?}"),
        Err(e) => {
            assert!(
                matches!(e, ConfigError::Invalid { .. }),
                "not a validation error: {e:?}"
            );
            e.to_string()
        }
    }
}

#[test]
fn branch_level_validation_errors() {
    let p = "0110-pg.yml";
    let cases: &[(&str, &str, String)] = &[
        (
            "  ttl: -1\n",
            PLAIN_METRICS,
            format!("{p}:4: branch pg_x: ttl: must be a non-negative number of seconds, got -1"),
        ),
        (
            "  ttll: 10\n",
            PLAIN_METRICS,
            format!(
                "{p}:4: branch pg_x: ttll: unknown key \"ttll\" in a branch (expected one of: name, desc, query, ttl, timeout, priority, min_version, max_version, fatal, skip, tags, predicate_queries, metrics)"
            ),
        ),
        (
            "  tags: primary\n",
            PLAIN_METRICS,
            format!("{p}:4: branch pg_x: tags: expected a list of strings, found a string"),
        ),
        (
            "  min_version: -1\n",
            PLAIN_METRICS,
            format!(
                "{p}:4: branch pg_x: min_version: expected a non-negative integer version, found -1"
            ),
        ),
        (
            "  max_version: 9.6\n",
            PLAIN_METRICS,
            format!(
                "{p}:4: branch pg_x: max_version: expected a non-negative integer version, found 9.6"
            ),
        ),
        (
            "  predicate_queries:\n    - name: p\n      predicate_query: ' '\n",
            PLAIN_METRICS,
            format!(
                "{p}:6: branch pg_x: predicate_queries[0].predicate_query: predicate_query is missing or blank"
            ),
        ),
        (
            "  predicate_queries:\n    - predicate_query: SELECT true\n    - name: p\n",
            PLAIN_METRICS,
            format!(
                "{p}:6: branch pg_x: predicate_queries[1].predicate_query: predicate_query is missing or blank"
            ),
        ),
        (
            "  predicate_queries:\n    - predicate_query: SELECT true\n      ttl: -5\n",
            PLAIN_METRICS,
            format!(
                "{p}:6: branch pg_x: predicate_queries[0].ttl: must be a non-negative number of seconds, got -5"
            ),
        ),
        (
            "  predicate_queries:\n    - predicate_query: SELECT true\n      ttll: 5\n",
            PLAIN_METRICS,
            format!(
                "{p}:6: branch pg_x: predicate_queries[0].ttll: unknown key \"ttll\" in a predicate query (expected one of: name, predicate_query, ttl)"
            ),
        ),
        (
            "",
            "    []\n",
            format!(
                "{p}:4: branch pg_x: metrics: metrics is empty (expected a non-empty list of single-key maps `- <column>: {{usage: ...}}`)"
            ),
        ),
    ];
    for (extra, metrics, want) in cases {
        assert_eq!(&validation_error(extra, metrics), want);
    }
}

#[test]
fn whole_branch_errors() {
    let err = |text: &str| parse_str(text, "f.yml").unwrap_err().to_string();
    assert_eq!(
        err("# c\npg_a:\n  query: SELECT 1\n  metrics:\n    - v: {usage: GAUGE}\npg_null:\n"),
        "f.yml:6: branch pg_null: branch is null (expected a mapping with at least `query` and `metrics`)"
    );
    assert_eq!(
        err("pg_s: SELECT 1\n"),
        "f.yml:1: branch pg_s: expected a mapping with at least `query` and `metrics`, found a string"
    );
    assert_eq!(
        err("pg_q:\n  metrics:\n    - v: {usage: GAUGE}\n"),
        "f.yml:1: branch pg_q: query: query is missing or blank (expected the SQL to run)"
    );
    assert_eq!(
        err("pg_q:\n  desc: x\n  query: \"\"\n  metrics:\n    - v: {usage: GAUGE}\n"),
        "f.yml:3: branch pg_q: query: query is missing or blank (expected the SQL to run)"
    );
    assert_eq!(
        err("pg_m:\n  query: SELECT 1\n"),
        "f.yml:1: branch pg_m: metrics: metrics is missing (expected a non-empty list of single-key maps `- <column>: {usage: ...}`)"
    );
    assert_eq!(
        err("pg_m:\n  query: SELECT 1\n  metrics: {v: {usage: GAUGE}}\n"),
        "f.yml:3: branch pg_m: metrics: expected a non-empty list of single-key maps `- <column>: {usage: ...}`, found a mapping"
    );
}

#[test]
fn column_validation_errors() {
    let p = "0110-pg.yml:";
    let b = "branch pg_x:";
    let cases: &[(&str, String)] = &[
        (
            "    - datname: {usage: LABEL}\n    - xact_commit:\n        usage: GAGE\n",
            format!(
                "{p}7: {b} metrics[1].xact_commit.usage: unknown usage \"GAGE\" (expected DISCARD, LABEL, GAUGE, COUNTER or HISTOGRAM)"
            ),
        ),
        (
            "    - v: {usage: GAGE}\n",
            format!(
                "{p}5: {b} metrics[0].v.usage: unknown usage \"GAGE\" (expected DISCARD, LABEL, GAUGE, COUNTER or HISTOGRAM)"
            ),
        ),
        (
            "    - v:\n        usage: ''\n",
            format!(
                "{p}6: {b} metrics[0].v.usage: usage is missing or empty (expected DISCARD, LABEL, GAUGE, COUNTER or HISTOGRAM)"
            ),
        ),
        (
            "    - v:\n        description: no usage\n",
            format!(
                "{p}5: {b} metrics[0].v.usage: usage is missing or empty (expected DISCARD, LABEL, GAUGE, COUNTER or HISTOGRAM)"
            ),
        ),
        (
            "    - v:\n        usgae: GAUGE\n",
            format!(
                "{p}6: {b} metrics[0].v.usgae: unknown key \"usgae\" in a column (expected one of: name, usage, rename, description, scale, default, bucket)"
            ),
        ),
        (
            "    - v:\n",
            format!(
                "{p}5: {b} metrics[0].v: column definition is null (expected a mapping with at least `usage`)"
            ),
        ),
        (
            "    - v: {usage: GAUGE}\n    - {}\n",
            format!(
                "{p}6: {b} metrics[1]: each metrics entry must have exactly one key (the column name), found 0"
            ),
        ),
        (
            "    - a: {usage: GAUGE}\n      b: {usage: GAUGE}\n",
            format!(
                "{p}5: {b} metrics[0]: each metrics entry must have exactly one key (the column name), found 2: a, b"
            ),
        ),
        (
            "    - v\n",
            format!(
                "{p}5: {b} metrics[0]: each metrics entry must be a single-key map `<column>: {{usage: ...}}`, found a string"
            ),
        ),
        (
            "    - v:\n        usage: GAUGE\n        scale: abc\n",
            format!("{p}7: {b} metrics[0].v.scale: cannot parse \"abc\" as a number"),
        ),
        (
            "    - v:\n        usage: GAUGE\n        default: '1,5'\n",
            format!("{p}7: {b} metrics[0].v.default: cannot parse \"1,5\" as a number"),
        ),
        (
            "    - v:\n        usage: GAUGE\n        scale: [1]\n",
            format!("{p}7: {b} metrics[0].v.scale: expected a number, found a list"),
        ),
        (
            "    - v: {usage: GAUGE}\n    - w: {usage: COUNTER}\n    - v: {usage: GAUGE, rename: v2}\n",
            format!(
                "{p}7: {b} metrics[2].v: duplicate column \"v\" (already defined at metrics[0].v)"
            ),
        ),
        (
            "    - v: {usage: GAUGE}\n    - w: {usage: COUNTER, name: v}\n",
            format!(
                "{p}6: {b} metrics[1].w: duplicate column \"v\" (already defined at metrics[0].v)"
            ),
        ),
        (
            "    - datname: {usage: LABEL}\n    - v: {usage: DISCARD}\n",
            format!(
                "{p}4: {b} metrics: no GAUGE, COUNTER or HISTOGRAM column: the collector would produce no metric"
            ),
        ),
        (
            "    - datname:\n        usage: LABEL\n        rename: data-base\n    - v: {usage: GAUGE}\n",
            format!(
                "{p}7: {b} metrics[0].datname.rename: invalid label name \"data-base\" (must match [a-zA-Z_][a-zA-Z0-9_]*)"
            ),
        ),
        (
            "    - 1st: {usage: LABEL}\n    - v: {usage: GAUGE}\n",
            format!(
                "{p}5: {b} metrics[0].1st: invalid label name \"1st\" (must match [a-zA-Z_][a-zA-Z0-9_]*)"
            ),
        ),
        (
            "    - __name: {usage: LABEL}\n    - v: {usage: GAUGE}\n",
            format!(
                "{p}5: {b} metrics[0].__name: invalid label name \"__name\": names starting with `__` are reserved"
            ),
        ),
        (
            "    - datname: {usage: LABEL}\n    - db:\n        usage: LABEL\n        rename: datname\n    - v: {usage: GAUGE}\n",
            format!(
                "{p}8: {b} metrics[1].db.rename: duplicate label name \"datname\" (also used by metrics[0].datname)"
            ),
        ),
        (
            "    - v:\n        usage: GAUGE\n        rename: 'bad.name'\n",
            format!(
                "{p}7: {b} metrics[0].v.rename: invalid metric name \"pg_x_bad.name\" (must match [a-zA-Z_:][a-zA-Z0-9_:]*)"
            ),
        ),
        (
            "    - v: {usage: GAUGE}\n    - w: {usage: COUNTER, rename: v}\n",
            format!(
                "{p}6: {b} metrics[1].w.rename: metric name \"pg_x_v\" of COUNTER metrics[1].w collides with GAUGE metrics[0].v"
            ),
        ),
        (
            "    - lat: {usage: HISTOGRAM}\n",
            format!(
                "{p}5: {b} metrics[0].lat.bucket: HISTOGRAM column requires `bucket`: a non-empty list of finite, strictly increasing upper bounds"
            ),
        ),
        (
            "    - lat:\n        usage: HISTOGRAM\n        bucket: []\n",
            format!("{p}7: {b} metrics[0].lat.bucket: bucket list is empty"),
        ),
        (
            "    - lat:\n        usage: HISTOGRAM\n        bucket: [1, .inf]\n",
            format!(
                "{p}7: {b} metrics[0].lat.bucket[1]: bucket bound inf is not finite (+Inf is implicit)"
            ),
        ),
        (
            "    - lat:\n        usage: HISTOGRAM\n        bucket: [1, .nan]\n",
            format!(
                "{p}7: {b} metrics[0].lat.bucket[1]: bucket bound NaN is not finite (+Inf is implicit)"
            ),
        ),
        (
            "    - lat:\n        usage: HISTOGRAM\n        bucket:\n          - 1\n          - 5\n          - 5\n",
            format!(
                "{p}10: {b} metrics[0].lat.bucket[2]: bucket bounds must be strictly increasing, 5 follows 5"
            ),
        ),
        (
            "    - v:\n        usage: GAUGE\n        bucket: [1]\n",
            format!(
                "{p}7: {b} metrics[0].v.bucket: `bucket` is only valid for HISTOGRAM columns, not GAUGE"
            ),
        ),
        (
            "    - le: {usage: LABEL}\n    - lat: {usage: HISTOGRAM, bucket: [1]}\n",
            format!(
                "{p}5: {b} metrics[0].le: label `le` is reserved for the bucket bound of the HISTOGRAM column in this branch"
            ),
        ),
        (
            "    - lat: {usage: HISTOGRAM, bucket: [1]}\n    - lat_count: {usage: GAUGE}\n",
            format!(
                "{p}6: {b} metrics[1].lat_count: metric name \"pg_x_lat_count\" of GAUGE metrics[1].lat_count collides with the _count series of HISTOGRAM metrics[0].lat"
            ),
        ),
        (
            "    - s: {usage: COUNTER, rename: lat_sum}\n    - lat: {usage: HISTOGRAM, bucket: [1]}\n",
            format!(
                "{p}6: {b} metrics[1].lat: metric name \"pg_x_lat_sum\" of the _sum series of HISTOGRAM metrics[1].lat collides with COUNTER metrics[0].s"
            ),
        ),
    ];
    for (metrics, want) in cases {
        assert_eq!(&validation_error("", metrics), want, "metrics:\n{metrics}");
    }
}

#[test]
fn invalid_namespace_is_a_metric_name_error() {
    let text = "pg_x:\n  name: pg-x\n  query: SELECT 1\n  metrics:\n    - v: {usage: GAUGE}\n";
    assert_eq!(
        parse_str(text, "n.yml").unwrap_err().to_string(),
        "n.yml:5: branch pg_x: metrics[0].v: invalid metric name \"pg-x_v\" (must match [a-zA-Z_:][a-zA-Z0-9_:]*)"
    );
    // Labels and discarded columns are not metric names.
    let ok = "pg_x:\n  query: SELECT 1\n  metrics:\n    - bad-col: {usage: DISCARD}\n    - v: {usage: GAUGE}\n";
    assert!(parse_str(ok, "n.yml").is_ok());
}

#[test]
fn errors_expose_their_parts() {
    let e = parse_str(
        "pg_x:\n  query: SELECT 1\n  metrics:\n    - v: {usage: GAGE}\n",
        "a.yml",
    )
    .unwrap_err();
    assert_eq!(e.file(), Some("a.yml"));
    assert_eq!(e.line(), Some(4));
    assert_eq!(e.branch(), Some("pg_x"));
    assert_eq!(e.field(), Some("metrics[0].v.usage"));
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let e = parse_str("pg_a:\n  query: 'unterminated\n", "s.yml").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().starts_with("s.yml:"), "{e}");
    assert!(e.line().is_some(), "{e}");
    let e = parse_str(
        "pg_a:\n  query: SELECT 1\n  query: SELECT 2\n  metrics:\n    - v: {usage: GAUGE}\n",
        "d.yml",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "d.yml:3:3: YAML syntax error: pg_a: duplicate entry with key \"query\""
    );
}

#[test]
fn directory_merge_order_replacement_and_priorities() {
    let set = load(&fixture("dir_merge"), LoadMode::Strict).unwrap();
    // Files: 0000-doc.yml (comment only, ordinal 1), 0100-pg.yml (2), 0200-pg.yaml (3);
    // README.md, *.bak, the subdirectory and the directory named *.yml are ignored.
    assert_eq!(
        branches(&set),
        [("pg_b", 5), ("pg_a", 102), ("pg_shared", 103)]
    );
    let shared = set.get("pg_shared").unwrap();
    assert_eq!(shared.desc, "second definition");
    assert_eq!(shared.source, "0200-pg.yaml");
    assert_eq!(shared.line, 7);
    assert_eq!(shared.columns[0].usage, Usage::Counter);
    assert_eq!(set.get("pg_a").unwrap().source, "0100-pg.yml");
    assert!(set.skipped_files.is_empty());
    // Lenient gives the same result on a valid directory.
    let lenient = load(&fixture("dir_merge"), LoadMode::Lenient).unwrap();
    assert_eq!(branches(&lenient), branches(&set));
}

#[test]
fn embedded_sets_merge_like_a_directory() {
    let files: Vec<(String, String)> = ["0000-doc.yml", "0100-pg.yml", "0200-pg.yaml"]
        .iter()
        .map(|n| {
            let text = fs::read_to_string(fixture("dir_merge").join(n)).unwrap();
            ((*n).to_owned(), text)
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let set = from_embedded(&refs).unwrap();
    assert_eq!(
        branches(&set),
        [("pg_b", 5), ("pg_a", 102), ("pg_shared", 103)]
    );
    let err = from_embedded(&[("x.yml", "pg_x:\n  query: SELECT 1\n  metrics: []\n")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("x.yml:3: branch pg_x: metrics:"),
        "{err}"
    );
}

#[test]
fn lenient_skips_and_records_bad_files_strict_fails() {
    let dir = fixture("dir_lenient");
    let set = load(&dir, LoadMode::Lenient).unwrap();
    assert_eq!(branches(&set), [("pg_good", 101), ("pg_good_too", 102)]);
    assert_eq!(set.skipped_files.len(), 1);
    let want = "0200-bad.yml:5: branch pg_bad: metrics[0].v.usage: unknown usage \"GAGE\" (expected DISCARD, LABEL, GAUGE, COUNTER or HISTOGRAM)";
    assert_eq!(set.skipped_files[0].to_string(), want);

    let err = load(&dir, LoadMode::Strict).unwrap_err();
    assert_eq!(err.to_string(), want);
    assert_eq!(err.file(), Some("0200-bad.yml"));
}

#[test]
fn directory_without_any_valid_branch() {
    let dir = fixture("dir_all_bad");
    let err = load(&dir, LoadMode::Lenient).unwrap_err();
    let ConfigError::NoValidBranch { path, skipped } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(path, &dir);
    assert_eq!(skipped.len(), 2);
    let text = err.to_string();
    assert!(
        text.contains("no collector branch could be loaded, 2 config file(s) invalid"),
        "{text}"
    );
    assert!(
        text.contains("0100-bad.yml:3: branch pg_bad: ttll: unknown key \"ttll\""),
        "{text}"
    );
    assert!(text.contains("0200-syntax.yml:"), "{text}");

    let err = load(&dir, LoadMode::Strict).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("0100-bad.yml:3: branch pg_bad: ttll: unknown key"),
        "{err}"
    );
}

#[test]
fn fingerprint_follows_the_config_files_content_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = "a:\n  query: SELECT 1 AS v\n  metrics:\n    - v: {usage: GAUGE}\n";
    fs::write(dir.join("0100-a.yml"), a).unwrap();
    let file = fingerprint(&dir.join("0100-a.yml"));
    let whole = fingerprint(dir);
    // Other files, a rewrite with the same bytes, a subdirectory: unchanged.
    fs::write(dir.join("exporter.log"), "lines\n").unwrap();
    fs::write(dir.join("0100-a.yml"), a).unwrap();
    fs::create_dir(dir.join("sub.yml")).unwrap();
    assert_eq!(fingerprint(dir), whole);
    assert_eq!(fingerprint(&dir.join("0100-a.yml")), file);
    // A config file's content, a new config file, a rename, a removal: changed.
    fs::write(dir.join("0100-a.yml"), a.replace('1', "2")).unwrap();
    let edited = fingerprint(dir);
    assert_ne!(edited, whole);
    assert_ne!(fingerprint(&dir.join("0100-a.yml")), file);
    fs::write(dir.join("0200-b.yaml"), "# b\n").unwrap();
    let added = fingerprint(dir);
    assert_ne!(added, edited);
    fs::rename(dir.join("0200-b.yaml"), dir.join("0300-b.yaml")).unwrap();
    assert_ne!(fingerprint(dir), added);
    fs::remove_file(dir.join("0100-a.yml")).unwrap();
    assert_ne!(fingerprint(&dir.join("0100-a.yml")), file);
    assert_eq!(
        fingerprint(&dir.join("0100-a.yml")),
        fingerprint(&dir.join("missing.yml")),
        "a missing file is a state of its own"
    );
}

#[test]
fn empty_config_error_names_the_path() {
    let err = ConfigError::Empty {
        path: PathBuf::from("/etc/pg_exporter"),
        directory: true,
    };
    assert_eq!(err.path(), Some(Path::new("/etc/pg_exporter")));
    assert!(
        err.to_string().starts_with(
            "/etc/pg_exporter: no *.yml or *.yaml file in this directory defines a collector; \
             refusing to run with no collector (pass --allow-empty-config"
        ),
        "{err}"
    );
}

#[test]
fn empty_and_missing_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let set = load(tmp.path(), LoadMode::Lenient).unwrap();
    assert!(set.is_empty() && set.skipped_files.is_empty());
    assert!(load(tmp.path(), LoadMode::Strict).unwrap().is_empty());

    // Only comment-only files: nothing failed, so no error either.
    fs::write(tmp.path().join("0000-doc.yml"), "# doc\n").unwrap();
    assert!(load(tmp.path(), LoadMode::Lenient).unwrap().is_empty());

    let missing = tmp.path().join("nope.yml");
    let err = load(&missing, LoadMode::Lenient).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    assert_eq!(err.path(), Some(missing.as_path()));
    assert!(
        err.to_string().starts_with(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn single_invalid_file_fails_in_both_modes() {
    let file = fixture("dir_lenient/0200-bad.yml");
    for mode in [LoadMode::Lenient, LoadMode::Strict] {
        let err = load(&file, mode).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("0200-bad.yml:5: branch pg_bad:"),
            "{err}"
        );
    }
}

#[test]
fn config_path_search_order() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("pg_exporter.yml");
    let etc_file = tmp.path().join("etc_pg_exporter.yml");
    let etc_dir = tmp.path().join("etc_pg_exporter");
    let candidates = [local.as_path(), etc_file.as_path(), etc_dir.as_path()];
    let flag = Path::new("/from/flag.yml");
    let env = std::ffi::OsStr::new("/from/env.yml");

    // Nothing exists and nothing is given: the caller falls back to the embedded set.
    assert_eq!(resolve_config_path_from(None, None, &candidates), None);
    // Flag and env are taken as given, flag first, even if they do not exist.
    assert_eq!(
        resolve_config_path_from(Some(flag), Some(env), &candidates),
        Some(flag.to_path_buf())
    );
    assert_eq!(
        resolve_config_path_from(None, Some(env), &candidates),
        Some(PathBuf::from("/from/env.yml"))
    );
    // Then the first existing candidate.
    fs::create_dir(&etc_dir).unwrap();
    assert_eq!(
        resolve_config_path_from(None, None, &candidates),
        Some(etc_dir.clone())
    );
    fs::write(&etc_file, "").unwrap();
    assert_eq!(
        resolve_config_path_from(None, None, &candidates),
        Some(etc_file.clone())
    );
    fs::write(&local, "").unwrap();
    assert_eq!(
        resolve_config_path_from(None, None, &candidates),
        Some(local.clone())
    );
    // An empty env value counts as unset.
    assert_eq!(
        resolve_config_path_from(None, Some(std::ffi::OsStr::new("")), &candidates),
        Some(local)
    );
}

#[test]
fn explain_contains_the_key_pieces() {
    let set = load(&fixture("full.yml"), LoadMode::Strict).unwrap();
    let text = set.get("pg_db_10").unwrap().explain();
    for piece in [
        "# SYNOPSIS\n#       pg_db.pg_db_10_*\n",
        "# DESCRIPTION\n#       PostgreSQL database statistics\n#       (second line)\n",
        "#       Tags       [cluster, primary, extension:pg_stat_statements]\n",
        "#       TTL        10\n",
        "#       Priority   42\n",
        "#       Timeout    1.5s\n",
        "#       Fatal      true\n",
        "#       Version    90600 ~ 120000\n",
        "#       Source     full.yml\n",
        "# METRICS\n#       datname -> db (LABEL)\n#           Name of the database\n",
        "#       xact_commit (COUNTER)\n#           Transactions committed\n",
        "#       stats_reset (DISCARD)\n#           N/A\n",
        "pg_db_10:\n  name: pg_db\n",
        "min_version: 90600\n",
    ] {
        assert!(text.contains(piece), "missing {piece:?} in:\n{text}");
    }
    let h = set.get("pg_lat").unwrap().explain();
    for piece in [
        "#       pg_lat_*\n",
        "#       Timeout    none\n",
        "#       Version    lower ~ higher\n",
        "# DESCRIPTION\n#       N/A\n",
        "#       Tags       []\n",
        "#       lat (HISTOGRAM)\n#           Query latency\n#           buckets [0.001, 0.01, 0.1, 1, 10]\n",
        "pg_lat:\n",
    ] {
        assert!(h.contains(piece), "missing {piece:?} in:\n{h}");
    }
    let all = set.explain();
    assert!(all.find("pg_lat_*").unwrap() < all.find("pg_db.pg_db_10_*").unwrap());
}

#[test]
fn merged_yaml_round_trips() {
    for path in [
        fixture("full.yml"),
        fixture("dir_merge"),
        fixture("dir_lenient"),
    ] {
        let set = load(&path, LoadMode::Lenient).unwrap();
        let yaml = set.merged_yaml();
        let reparsed = parse_str(&yaml, "merged.yml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let want: Vec<_> = set.collectors.iter().map(|c| without_origin(c)).collect();
        let got: Vec<_> = reparsed.iter().map(without_origin).collect();
        assert_eq!(got, want, "{yaml}");
        // Branch lines point into the merged text.
        for c in &reparsed {
            assert!(
                yaml.lines()
                    .nth(c.line - 1)
                    .unwrap()
                    .starts_with(&format!("{}:", c.branch))
            );
        }
    }
}

/// The inotify watches this process holds (the `inotify wd:` lines of the fdinfo of its
/// inotify descriptors), and its threads running notify's event loop.
fn inotify_use() -> (usize, usize) {
    let mut watches = 0;
    for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if fs::read_link(fd.path()).is_ok_and(|l| l == Path::new("anon_inode:inotify")) {
            let info = fs::read_to_string(Path::new("/proc/self/fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            watches += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    let threads = fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("notify-rs"))
        })
        .count();
    (watches, threads)
}

/// The only test of this binary that watches files, so the process's watches are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_watch_follows_fifty_swaps_without_leaking_watches() {
    use std::os::unix::fs::symlink;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let release = |n: usize| base.join(format!("releases/{n}"));
    fs::create_dir_all(release(0)).unwrap();
    fs::write(release(0).join("pg.yml"), "0").unwrap();
    symlink("releases/0", base.join("current")).unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    // The config file is reached through the swapped link, a directory on its way.
    let task = sql_collector::config::watch::watch(
        base.join("current/pg.yml"),
        Duration::from_millis(20),
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    )
    .unwrap();
    let (watches_at_start, threads) = inotify_use();
    assert_eq!(
        (watches_at_start, threads),
        (2, 1),
        "the link's directory and the file's"
    );

    let called_since = |seen: usize, what: &str| {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) == seen {
            assert!(std::time::Instant::now() < until, "no call after {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for n in 1..=50 {
        let seen = calls.load(Ordering::SeqCst);
        fs::create_dir(release(n)).unwrap();
        fs::write(release(n).join("pg.yml"), n.to_string()).unwrap();
        symlink(format!("releases/{n}"), base.join("current.tmp")).unwrap();
        fs::rename(base.join("current.tmp"), base.join("current")).unwrap();
        fs::remove_dir_all(release(n - 1)).unwrap();
        called_since(seen, &format!("swap {n}"));
        // Wait for the burst to be over, so the next swap is a burst of its own.
        std::thread::sleep(Duration::from_millis(40));
    }
    // The watches followed: an edit under the 50th release is seen, and the process holds
    // as many watches and threads as at the start.
    std::thread::sleep(Duration::from_millis(100));
    let seen = calls.load(Ordering::SeqCst);
    fs::write(release(50).join("pg.yml"), "edited").unwrap();
    called_since(seen, "an edit under the last release");
    assert_eq!(inotify_use(), (watches_at_start, 1));

    // Other files, and reading the config, are no change.
    std::thread::sleep(Duration::from_millis(100));
    let seen = calls.load(Ordering::SeqCst);
    fs::write(release(50).join("notes.txt"), "x").unwrap();
    fs::write(base.join("exporter.log"), "x").unwrap();
    let _ = fs::read(base.join("current/pg.yml")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(calls.load(Ordering::SeqCst), seen);

    // Stopping the task ends the watcher's thread.
    task.abort();
    let _ = task.await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while inotify_use() != (0, 0) {
        assert!(std::time::Instant::now() < until, "{:?}", inotify_use());
        std::thread::sleep(Duration::from_millis(10));
    }
}
