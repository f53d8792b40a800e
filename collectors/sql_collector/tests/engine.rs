//! The collector engine against the harness's real PostgreSQL 15 primary and replica, with
//! collector sets written for each test: cache coalescing, server-side timeouts, fatal
//! collectors, planning by version and tags, predicates, auto-discovery and reloads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sql_collector::config::{self, LoadMode};
use sql_collector::conninfo::ConnInfo;
use sql_collector::exporter::{Exporter, ExporterSettings, Health};
use test_harness::shared_cluster;

/// Builds an exporter for `url` running the collectors in `yaml`.
fn exporter(
    url: &str,
    yaml: &str,
    tweak: impl FnOnce(&mut ExporterSettings),
) -> (Arc<Exporter>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("collectors.yml"), yaml).unwrap();
    let set = config::load(dir.path(), LoadMode::Strict).unwrap();
    let mut settings = ExporterSettings::default();
    settings.engine.connect_timeout = Duration::from_secs(5);
    settings.auto_discovery = false;
    tweak(&mut settings);
    let info = ConnInfo::parse(url).unwrap();
    (Exporter::new(settings, set, info), dir)
}

/// The value of the first sample whose line starts with `prefix` (name plus labels).
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with([' ', '{', ',', '}']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn has_family(body: &str, name: &str) -> bool {
    body.contains(&format!("# TYPE {name} "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_coalesce_into_one_execution_per_collector() {
    let cluster = shared_cluster();
    // An alias survives pg_stat_statements' normalisation (constants do not).
    let marker = format!("coalesce_{}", std::process::id());
    let yaml = format!(
        "t_coalesce:\n  name: t_coalesce\n  query: \"SELECT pg_sleep(0.3) IS NULL AS slept, 'm'::text AS marker, 1 AS {marker}\"\n  ttl: 60\n  timeout: 5\n  metrics:\n    - slept: {{ usage: DISCARD }}\n    - marker: {{ usage: LABEL }}\n    - {marker}: {{ usage: GAUGE, rename: v, description: one }}\n"
    );
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), &yaml, |_| {});
    let scrapes: Vec<_> = (0..50)
        .map(|_| {
            let exp = exp.clone();
            tokio::spawn(async move { exp.scrape(None).await })
        })
        .collect();
    for s in scrapes {
        let body = s.await.unwrap();
        assert_eq!(
            sample(&body, "t_coalesce_v{marker=\"m\""),
            Some(1.0),
            "{body}"
        );
    }
    let body = exp.scrape(None).await;
    assert_eq!(
        sample(
            &body,
            "pg_exporter_query_scrape_total_count{datname=\"postgres\",query=\"t_coalesce\""
        ),
        Some(51.0)
    );
    assert_eq!(
        sample(
            &body,
            "pg_exporter_query_scrape_hit_count{datname=\"postgres\",query=\"t_coalesce\""
        ),
        Some(50.0),
        "all but one invocation served from the cache"
    );
    // The server agrees: the statement ran once.
    let calls: i64 = cluster
        .primary()
        .query_scalar(
            "postgres",
            &format!("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%{marker}%' AND query NOT LIKE '%pg_stat_statements%'"),
        )
        .unwrap();
    assert_eq!(calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_query_is_cancelled_on_the_server_and_the_connection_survives() {
    let cluster = shared_cluster();
    let tag = format!("sleeper_{}", std::process::id());
    let yaml = format!(
        "t_sleep:\n  name: t_sleep\n  query: \"SELECT 1 AS v, '{tag}' AS tag FROM pg_sleep(30)\"\n  timeout: 0.5\n  priority: 1\n  metrics:\n    - v: {{ usage: GAUGE }}\n    - tag: {{ usage: LABEL }}\nt_fast:\n  name: t_fast\n  query: \"SELECT 7 AS v\"\n  priority: 2\n  timeout: 5\n  metrics:\n    - v: {{ usage: GAUGE }}\n"
    );
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), &yaml, |_| {});
    let started = Instant::now();
    let body = exp.scrape(None).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "scrape waited for the sleeper"
    );
    assert_eq!(
        sample(&body, "t_fast_v"),
        Some(7.0),
        "the other collector still reports: {body}"
    );
    assert!(!body.contains("t_sleep_v{"), "{body}");
    assert_eq!(sample(&body, "pg_up"), Some(1.0));
    assert_eq!(
        sample(
            &body,
            "pg_exporter_query_scrape_error_count{datname=\"postgres\",query=\"t_sleep\""
        ),
        Some(1.0)
    );
    // Within a second the server no longer runs it.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let running: i64 = cluster
            .primary()
            .query_scalar(
                "postgres",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{tag}%' AND pid <> pg_backend_pid()"),
            )
            .unwrap();
        if running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out query still runs on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same connection serves the next scrape.
    let body = exp.scrape(None).await;
    assert_eq!(sample(&body, "t_fast_v"), Some(7.0));
    assert_eq!(sample(&body, "pg_up"), Some(1.0));
}

#[tokio::test]
async fn failing_fatal_collector_marks_the_server_down() {
    let cluster = shared_cluster();
    let yaml = "t_fatal:\n  name: t_fatal\n  query: \"SELECT 1/0 AS v\"\n  fatal: true\n  metrics:\n    - v: { usage: GAUGE }\nt_other:\n  name: t_other\n  query: \"SELECT 1 AS v\"\n  metrics:\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |s| {
        s.engine.connect_timeout = Duration::from_secs(5);
    });
    let body = exp.scrape(None).await;
    assert_eq!(sample(&body, "pg_up"), Some(0.0), "{body}");
    assert!(
        !has_family(&body, "t_other_v"),
        "no output after a fatal failure: {body}"
    );
    assert_eq!(exp.health(), Health::Down);
}

#[tokio::test]
async fn version_gates_and_tags_select_branches_on_primary_and_replica() {
    let cluster = shared_cluster();
    let v: u32 = cluster.primary().server_version_num().unwrap();
    let yaml = format!(
        r#"
v_in:     {{ name: t_v_in,     query: "SELECT 1 AS v", min_version: {v}, max_version: {next}, metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
v_low:    {{ name: t_v_low,    query: "SELECT 1 AS v", max_version: {v}, metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
v_high:   {{ name: t_v_high,   query: "SELECT 1 AS v", min_version: {next}, metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_prim:   {{ name: t_primary,  query: "SELECT 1 AS v", tags: [primary], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_master: {{ name: t_master,   query: "SELECT 1 AS v", tags: [master], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_repl:   {{ name: t_replica,  query: "SELECT 1 AS v", tags: [replica], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_stdby:  {{ name: t_standby,  query: "SELECT 1 AS v", tags: [standby], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_ext:    {{ name: t_ext,      query: "SELECT 1 AS v", tags: ["extension:pg_stat_statements"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_noext:  {{ name: t_noext,    query: "SELECT 1 AS v", tags: ["extension:no_such_ext"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_schema: {{ name: t_schema,   query: "SELECT 1 AS v", tags: ["schema:pg_catalog"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_nosch:  {{ name: t_noschema, query: "SELECT 1 AS v", tags: ["schema:no_such_schema"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_db:     {{ name: t_dbname,   query: "SELECT 1 AS v", tags: ["dbname:postgres"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_nodb:   {{ name: t_nodbname, query: "SELECT 1 AS v", tags: ["dbname:other"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_user:   {{ name: t_username, query: "SELECT 1 AS v", tags: ["username:postgres"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_custom: {{ name: t_custom,   query: "SELECT 1 AS v", tags: [mytag], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_notc:   {{ name: t_not_custom, query: "SELECT 1 AS v", tags: ["not:mytag"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_notx:   {{ name: t_not_other, query: "SELECT 1 AS v", tags: ["not:othertag"], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_clus:   {{ name: t_cluster,  query: "SELECT 1 AS v", tags: [cluster], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_skip:   {{ name: t_skip,     query: "SELECT 1 AS v", skip: true, metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
t_bouncer: {{ name: t_bouncer, query: "SHOW LISTS", tags: [pgbouncer], metrics: [ {{ v: {{ usage: GAUGE }} }} ] }}
"#,
        next = v + 1
    );
    let expectations_primary = [
        ("t_v_in_v", true),
        ("t_v_low_v", false),
        ("t_v_high_v", false),
        ("t_primary_v", true),
        ("t_master_v", true),
        ("t_replica_v", false),
        ("t_standby_v", false),
        ("t_ext_v", true),
        ("t_noext_v", false),
        ("t_schema_v", true),
        ("t_noschema_v", false),
        ("t_dbname_v", true),
        ("t_nodbname_v", false),
        ("t_username_v", true),
        ("t_custom_v", true),
        ("t_not_custom_v", false),
        ("t_not_other_v", true),
        ("t_cluster_v", true),
        ("t_skip_v", false),
        ("t_bouncer_v", false),
    ];
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), &yaml, |s| {
        s.engine.tags = vec!["mytag".into()];
    });
    let body = exp.scrape(None).await;
    for (family, want) in expectations_primary {
        assert_eq!(has_family(&body, family), want, "primary: {family}");
    }
    // The replica flips the role tags; the extension created on the primary replicated.
    let (exp, _dir) = exporter(&cluster.replica().url("postgres"), &yaml, |s| {
        s.engine.tags = vec!["mytag".into()];
    });
    let body = exp.scrape(None).await;
    assert_eq!(sample(&body, "pg_in_recovery"), Some(1.0));
    for (family, want) in [
        ("t_primary_v", false),
        ("t_master_v", false),
        ("t_replica_v", true),
        ("t_standby_v", true),
        ("t_v_in_v", true),
    ] {
        assert_eq!(has_family(&body, family), want, "replica: {family}");
    }
    assert_eq!(exp.health(), Health::Replica);
}

#[tokio::test]
async fn predicates_skip_and_unskip_the_main_query() {
    let cluster = shared_cluster();
    let table = format!("predicate_switch_{}", std::process::id());
    cluster
        .primary()
        .execute("postgres", &format!("DROP TABLE IF EXISTS {table}"))
        .unwrap();
    let yaml = format!(
        "t_pred:\n  name: t_pred\n  query: \"SELECT 3 AS v\"\n  predicate_queries:\n    - name: table exists\n      predicate_query: \"SELECT to_regclass('{table}') IS NOT NULL\"\n  metrics:\n    - v: {{ usage: GAUGE }}\nt_badpred:\n  name: t_badpred\n  query: \"SELECT 4 AS v\"\n  predicate_queries:\n    - name: not a boolean\n      predicate_query: \"SELECT 1\"\n  metrics:\n    - v: {{ usage: GAUGE }}\n"
    );
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), &yaml, |_| {});
    let body = exp.scrape(None).await;
    assert!(
        !has_family(&body, "t_pred_v"),
        "skipped while the table is missing"
    );
    assert_eq!(
        sample(
            &body,
            "pg_exporter_query_scrape_predicate_skip_count{datname=\"postgres\",query=\"t_pred\""
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "pg_exporter_query_scrape_error_count{datname=\"postgres\",query=\"t_badpred\""
        ),
        Some(1.0),
        "a non-boolean predicate is an error"
    );
    cluster
        .primary()
        .execute("postgres", &format!("CREATE TABLE {table} ()"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = exp.scrape(None).await;
    assert_eq!(
        sample(&body, "t_pred_v"),
        Some(3.0),
        "un-skipped once the table exists"
    );
    cluster
        .primary()
        .execute("postgres", &format!("DROP TABLE {table}"))
        .unwrap();
}

#[tokio::test]
async fn databases_created_later_are_discovered_and_dropped_ones_forgotten() {
    let cluster = shared_cluster();
    let db = format!("disc_{}", std::process::id());
    let yaml = "t_db:\n  name: t_db\n  query: \"SELECT current_database() AS datname, 1 AS v\"\n  metrics:\n    - datname: { usage: LABEL }\n    - v: { usage: GAUGE }\nt_cl:\n  name: t_cl\n  tags: [cluster]\n  query: \"SELECT 1 AS v\"\n  metrics:\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |s| {
        s.auto_discovery = true;
    });
    let body = exp.scrape(None).await;
    assert_eq!(sample(&body, "t_db_v{datname=\"db1\""), Some(1.0), "{body}");
    assert_eq!(sample(&body, "t_db_v{datname=\"postgres\""), Some(1.0));
    assert_eq!(
        body.matches("\nt_cl_v ").count(),
        1,
        "cluster collectors run once: {body}"
    );

    cluster
        .primary()
        .execute("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = exp.scrape(None).await;
    assert_eq!(
        sample(&body, &format!("t_db_v{{datname=\"{db}\"")),
        Some(1.0),
        "{body}"
    );
    assert!(exp.discovered().contains(&db));

    // Dropping needs no connection to it: let the exporter forget it first by force.
    cluster
        .primary()
        .execute("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = exp.scrape(None).await;
    assert!(!body.contains(&format!("datname=\"{db}\"")), "{body}");
    assert!(!exp.discovered().contains(&db));
}

#[tokio::test]
async fn a_reload_with_a_broken_file_keeps_the_running_config() {
    let cluster = shared_cluster();
    let (exp, dir) = exporter(
        &cluster.primary().url("postgres"),
        "t_a:\n  name: t_a\n  query: \"SELECT 1 AS v\"\n  metrics:\n    - v: { usage: GAUGE }\n",
        |_| {},
    );
    assert!(has_family(&exp.scrape(None).await, "t_a_v"));
    std::fs::write(
        dir.path().join("zz-broken.yml"),
        "t_b:\n  name: t_b\n  query: \"\"\n  metrics: []\n",
    )
    .unwrap();
    let err = config::load(dir.path(), LoadMode::Strict)
        .unwrap_err()
        .to_string();
    assert!(err.contains("zz-broken.yml"), "{err}");
    exp.reload_failed();
    let body = exp.scrape(None).await;
    assert!(has_family(&body, "t_a_v"), "old config still serves");
    assert_eq!(
        sample(&body, "pg_exporter_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "pg_exporter_config_reload_failure_count"),
        Some(1.0)
    );

    std::fs::write(
        dir.path().join("zz-broken.yml"),
        "t_b:\n  name: t_b\n  query: \"SELECT 2 AS v\"\n  metrics:\n    - v: { usage: GAUGE }\n",
    )
    .unwrap();
    exp.reload(config::load(dir.path(), LoadMode::Strict).unwrap());
    let body = exp.scrape(None).await;
    assert_eq!(sample(&body, "t_b_v"), Some(2.0));
    assert_eq!(
        sample(&body, "pg_exporter_config_last_reload_successful"),
        Some(1.0)
    );
}

#[tokio::test]
async fn values_convert_as_upstream_and_duplicates_are_dropped() {
    let cluster = shared_cluster();
    let yaml = r#"
t_types:
  name: t_types
  query: |
    SELECT 'a'::text AS lbl, true AS b, '2001-02-03 04:05:06+00'::timestamptz AS ts, NULL::int AS n, NULL::int AS nd,
           1500::bigint AS ms, 12.5::numeric AS num, '42'::text AS txt, 'x'::text AS bad, 1e6::float8 AS flbl
    UNION ALL
    SELECT 'a', false, now(), 1, 1, 1, 1, '1', '1', 1e6
  metrics:
    - lbl:  { usage: LABEL }
    - b:    { usage: GAUGE }
    - ts:   { usage: GAUGE, scale: 1000 }
    - n:    { usage: GAUGE }
    - nd:   { usage: GAUGE, default: 3, scale: 2 }
    - ms:   { usage: COUNTER, scale: 1e-3 }
    - num:  { usage: GAUGE }
    - txt:  { usage: GAUGE }
    - bad:  { usage: GAUGE }
    - flbl: { usage: LABEL }
"#;
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |_| {});
    let body = exp.scrape(None).await;
    let l = "{lbl=\"a\",flbl=\"1e+06\"}";
    assert_eq!(sample(&body, &format!("t_types_b{l}")), Some(1.0), "{body}");
    assert_eq!(
        sample(&body, &format!("t_types_ts{l}")),
        Some(981_173_106.0),
        "timestamps unscaled"
    );
    assert!(
        body.contains(&format!("t_types_n{l} NaN")),
        "NULL without default is NaN"
    );
    assert_eq!(sample(&body, &format!("t_types_nd{l}")), Some(6.0));
    assert_eq!(sample(&body, &format!("t_types_ms{l}")), Some(1.5));
    assert_eq!(sample(&body, &format!("t_types_num{l}")), Some(12.5));
    assert_eq!(sample(&body, &format!("t_types_txt{l}")), Some(42.0));
    assert!(body.contains(&format!("t_types_bad{l} NaN")));
    assert!(body.contains("# TYPE t_types_ms counter"));
    // The second row repeats the label set: dropped and counted as an error, not a 500.
    assert_eq!(body.matches("\nt_types_b{").count(), 1);
    assert_eq!(
        sample(
            &body,
            "pg_exporter_query_scrape_error_count{datname=\"postgres\",query=\"t_types\""
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_fatal_failure_keeps_health_down_until_a_scrape_succeeds() {
    use tower::ServiceExt as _;
    let cluster = shared_cluster();
    let yaml = "t_fatal:\n  name: t_fatal\n  query: \"SELECT 1/0 AS v\"\n  fatal: true\n  metrics:\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |_| {});
    let _ = exp.scrape(None).await;
    exp.probe().await;
    assert_eq!(
        exp.health(),
        Health::Down,
        "the probe alone must not revive it"
    );
    let state = Arc::new(sql_collector::app::AppState::new(
        "pg_exporter",
        exp.clone(),
        None,
        false,
    ));
    let app = sql_collector::app::router(state, "/metrics");
    for (path, status) in [
        ("/health", 503),
        ("/primary", 503),
        ("/replica", 503),
        ("/up", 503),
    ] {
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    let req = axum::http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        sample(std::str::from_utf8(&body).unwrap(), "pg_up"),
        Some(0.0)
    );
}

/// `/metrics` is written as it is sent, in chunks, plain or gzipped, never whole: a family of
/// 20,000 series arrives in several pieces and reads back exactly, in order, both ways.
#[tokio::test]
async fn metrics_stream_in_chunks_plain_and_gzipped() {
    use futures_util::StreamExt as _;
    use std::io::Read as _;
    use tower::ServiceExt as _;
    let cluster = shared_cluster();
    let yaml = "t_many:\n  name: t_many\n  query: \"SELECT 'series \\\"' || g AS n, g * 0.5 AS v FROM generate_series(1, 20000) g\"\n  metrics:\n    - n: { usage: LABEL }\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |s| {
        s.engine.disable_cache = true;
    });
    let want: String = (1..=20000)
        .map(|g| format!("t_many_v{{n=\"series \\\"{g}\"}} {}\n", f64::from(g) * 0.5))
        .collect();
    let state = Arc::new(sql_collector::app::AppState::new(
        "pg_exporter",
        exp.clone(),
        None,
        false,
    ));
    let app = sql_collector::app::router(state, "/metrics");
    for gzip in [false, true] {
        let mut req = axum::http::Request::get("/metrics");
        if gzip {
            req = req.header("accept-encoding", "gzip");
        }
        let resp = app
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            resp.headers().get("content-encoding").is_some(),
            gzip,
            "{resp:?}"
        );
        let pieces: Vec<_> = resp.into_body().into_data_stream().collect().await;
        let sizes: Vec<usize> = pieces.iter().map(|p| p.as_ref().unwrap().len()).collect();
        assert!(pieces.len() >= 3, "{sizes:?}");
        let bytes: Vec<u8> = pieces
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect();
        let mut text = String::new();
        if gzip {
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut text)
                .unwrap();
        } else {
            text = String::from_utf8(bytes).unwrap();
        }
        let family: String = text
            .lines()
            .filter(|l| l.starts_with("t_many_v{"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(family == want, "gzip {gzip}: the family differs");
        assert!(
            text.contains("\n# TYPE pg_up gauge\npg_up 1\n"),
            "gzip {gzip}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_answers_before_the_scrapers_deadline_and_counts_the_cut() {
    let cluster = shared_cluster();
    let yaml = "t_slow:\n  name: t_slow\n  query: \"SELECT 5 AS v FROM pg_sleep(2)\"\n  ttl: 60\n  timeout: 10\n  priority: 1\n  metrics:\n    - v: { usage: GAUGE }\nt_quick:\n  name: t_quick\n  query: \"SELECT 6 AS v\"\n  priority: 2\n  timeout: 5\n  metrics:\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |_| {});
    let _ = exp.scrape(None).await; // connect and plan outside the measured scrape
    exp.reload(config::load(_dir.path(), LoadMode::Strict).unwrap()); // empty the cache
    let started = Instant::now();
    let body = exp
        .scrape(Some(Instant::now() + Duration::from_millis(700)))
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert!(!body.contains("\nt_slow_v "), "{body}");
    // Collectors of one server run in priority order on its connection: the quick one queued
    // behind the slow one is cut too.
    assert_eq!(
        sample(&body, "pg_exporter_scrape_cutoff_count"),
        Some(2.0),
        "{body}"
    );
    // The execution went on in the background: a later scrape gets it from the cache at once.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let started = Instant::now();
    let body = exp
        .scrape(Some(Instant::now() + Duration::from_millis(700)))
        .await;
    assert!(started.elapsed() < Duration::from_millis(700));
    assert_eq!(sample(&body, "t_slow_v"), Some(5.0), "{body}");
    assert_eq!(sample(&body, "t_quick_v"), Some(6.0));
}

#[tokio::test]
async fn installing_or_dropping_an_extension_replans() {
    let cluster = shared_cluster();
    let db = format!("ext_{}", std::process::id());
    cluster
        .primary()
        .execute("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    let yaml = "t_trgm:\n  name: t_trgm\n  tags: [\"extension:pg_trgm\"]\n  query: \"SELECT 1 AS v\"\n  metrics:\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url(&db), yaml, |_| {});
    assert!(!has_family(&exp.scrape(None).await, "t_trgm_v"));
    cluster
        .primary()
        .execute(&db, "CREATE EXTENSION pg_trgm")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        has_family(&exp.scrape(None).await, "t_trgm_v"),
        "planned once installed"
    );
    cluster
        .primary()
        .execute(&db, "DROP EXTENSION pg_trgm")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !has_family(&exp.scrape(None).await, "t_trgm_v"),
        "unplanned once dropped"
    );
    drop(exp);
    cluster
        .primary()
        .execute("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
}

#[tokio::test]
async fn disable_cache_executes_every_time() {
    let cluster = shared_cluster();
    let yaml = "t_cached:\n  name: t_cached\n  query: \"SELECT 1 AS v\"\n  ttl: 60\n  metrics:\n    - v: { usage: GAUGE }\n";
    let stat = "pg_exporter_query_scrape_hit_count{datname=\"postgres\",query=\"t_cached\"";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |_| {});
    let _ = exp.scrape(None).await;
    assert_eq!(
        sample(&exp.scrape(None).await, stat),
        Some(1.0),
        "cached by default"
    );
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |s| {
        s.engine.disable_cache = true;
    });
    let _ = exp.scrape(None).await;
    assert_eq!(
        sample(&exp.scrape(None).await, stat),
        Some(0.0),
        "--disable-cache ignores the TTL"
    );
}

#[tokio::test]
async fn include_and_exclude_lists_shape_discovery() {
    let cluster = shared_cluster();
    let yaml = "t_db:\n  name: t_db\n  query: \"SELECT current_database() AS datname, 1 AS v\"\n  metrics:\n    - datname: { usage: LABEL }\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |s| {
        s.auto_discovery = true;
        s.include_databases = vec!["db2".into()];
    });
    let _ = exp.scrape(None).await;
    assert_eq!(exp.discovered(), vec!["db2".to_owned()]);
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |s| {
        s.auto_discovery = true;
        s.exclude_databases.push("db1".into());
    });
    let body = exp.scrape(None).await;
    assert!(exp.discovered().contains(&"db2".to_owned()));
    assert!(!exp.discovered().contains(&"db1".to_owned()));
    assert!(!body.contains("datname=\"db1\""));
}

#[tokio::test]
async fn an_empty_result_is_no_error() {
    let cluster = shared_cluster();
    let yaml = "t_empty:\n  name: t_empty\n  query: \"SELECT 'x' AS datname, 1 AS v WHERE false\"\n  predicate_queries:\n    - name: no rows\n      predicate_query: \"SELECT true WHERE false\"\n  metrics:\n    - datname: { usage: LABEL }\n    - v: { usage: GAUGE }\nt_empty2:\n  name: t_empty2\n  query: \"SELECT 'x' AS datname, 1 AS v WHERE false\"\n  metrics:\n    - datname: { usage: LABEL }\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(&cluster.primary().url("postgres"), yaml, |_| {});
    let body = exp.scrape(None).await;
    for q in ["t_empty", "t_empty2"] {
        assert_eq!(
            sample(
                &body,
                &format!(
                    "pg_exporter_query_scrape_error_count{{datname=\"postgres\",query=\"{q}\""
                )
            ),
            Some(0.0),
            "{q}: {body}"
        );
    }
    assert_eq!(
        sample(
            &body,
            "pg_exporter_query_scrape_predicate_skip_count{datname=\"postgres\",query=\"t_empty\""
        ),
        Some(1.0)
    );
}
