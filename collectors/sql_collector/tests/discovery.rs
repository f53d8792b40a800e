//! Auto-discovered databases against a real PostgreSQL 15 of this test binary: a DBA's
//! `DROP DATABASE`, `ALTER DATABASE … RENAME` and `CREATE DATABASE … TEMPLATE` succeed on the
//! first try while the exporter scrapes, the connections it holds to discovered databases
//! (none at rest, at most the budget while scraping), collection in parallel within the
//! budget, and series that repeat across databases.
//!
//! Each test discovers only its own databases (`include_databases`), so they run side by side.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sql_collector::config::{self, LoadMode};
use sql_collector::conninfo::ConnInfo;
use sql_collector::exporter::{Exporter, ExporterSettings};
use test_harness::{PgVersion, Postgres, PostgresBuilder};
use tokio::sync::watch;

fn server() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        PostgresBuilder::new(PgVersion::V15)
            .name("discovery")
            .start()
            .expect("PostgreSQL starts")
    })
}

/// An exporter of `server()` with auto-discovery of `databases` only, running `yaml`.
fn exporter(
    yaml: &str,
    databases: &[&str],
    tweak: impl FnOnce(&mut ExporterSettings),
) -> (Arc<Exporter>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("collectors.yml"), yaml).unwrap();
    let set = config::load(dir.path(), LoadMode::Strict).unwrap();
    let mut settings = ExporterSettings {
        auto_discovery: true,
        include_databases: databases.iter().map(|d| (*d).to_owned()).collect(),
        ..ExporterSettings::default()
    };
    tweak(&mut settings);
    let info = ConnInfo::parse(&format!("{}?sslmode=disable", server().url("postgres"))).unwrap();
    (Exporter::new(settings, set, info), dir)
}

/// A superuser session for the DBA's statements.
async fn connect_dba() -> tokio_postgres::Client {
    let info = ConnInfo::parse(&format!("{}?sslmode=disable", server().url("postgres"))).unwrap();
    info.connect(Duration::from_secs(5)).await.unwrap().0
}

/// Runs `sql` once; the error text when PostgreSQL refuses it, and how long it took.
async fn run(client: &tokio_postgres::Client, sql: &str) -> (Result<(), String>, Duration) {
    let t = Instant::now();
    let result = client.batch_execute(sql).await.map_err(|e| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
    });
    (result, t.elapsed())
}

/// Connections of ours (application_name `pg_exporter`) to any of `databases`.
async fn held(client: &tokio_postgres::Client, databases: &[&str]) -> i64 {
    let dbs: Vec<String> = databases.iter().map(|d| (*d).to_owned()).collect();
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_exporter' \
             AND datname = ANY($1)",
            &[&dbs],
        )
        .await
        .unwrap()
        .get(0)
}

/// A scraper calling `exporter.scrape` every `interval`; each body is published with the
/// instant its scrape started.
fn scraper(exporter: Arc<Exporter>, interval: Duration) -> watch::Receiver<(Instant, String)> {
    let (tx, rx) = watch::channel((Instant::now(), String::new()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let started = Instant::now();
            let body = exporter.scrape(None).await;
            if tx.send((started, body)).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first body of a scrape that started after `after` and satisfies `cond`, within 10 s.
async fn next_scrape(
    rx: &mut watch::Receiver<(Instant, String)>,
    after: Instant,
    what: &str,
    cond: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(remaining, rx.changed()).await.is_ok(),
            "no scrape after 10 s where {what}: {}",
            rx.borrow().1
        );
        let (started, body) = rx.borrow_and_update().clone();
        if started > after && cond(&body) {
            return body;
        }
    }
}

const PER_DB: &str = "t_db:\n  name: t_db\n  query: \"SELECT current_database() AS datname, 1 AS v\"\n  metrics:\n    - datname: { usage: LABEL }\n    - v: { usage: GAUGE }\n";

fn series(db: &str) -> String {
    format!("t_db_v{{datname=\"{db}\"}} 1")
}

/// Issue 15: with a scraper running, every DBA statement that needs a discovered database to
/// itself succeeds on the first try, and a dropped or renamed database's series are gone from
/// the next scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_rename_and_template_succeed_first_time_while_scraping() {
    const CYCLES: usize = 20;
    let (a, b, c) = ("dba_a", "dba_b", "dba_c");
    let (exp, _dir) = exporter(PER_DB, &[a, b, c], |_| {});
    let dba = connect_dba().await;
    for db in [a, b, c] {
        let _ = run(&dba, &format!("DROP DATABASE IF EXISTS {db}")).await;
    }
    // Faster than the 1 s of the issue: more connections opened and closed around the DBA.
    let mut rx = scraper(exp.clone(), Duration::from_millis(150));
    let mut slowest = Duration::ZERO;
    let mut must = async |sql: String| {
        let (result, took) = run(&dba, &sql).await;
        assert!(result.is_ok(), "{sql}: {}", result.unwrap_err());
        slowest = slowest.max(took);
        Instant::now()
    };
    for cycle in 0..CYCLES {
        must(format!("CREATE DATABASE {a}")).await;
        next_scrape(&mut rx, Instant::now(), &format!("{a} is scraped"), |b| {
            b.contains(&series(a))
        })
        .await;
        // Every third cycle also copies and renames the discovered database.
        let (last, also) = if cycle % 3 == 1 {
            must(format!("CREATE DATABASE {b} TEMPLATE {a}")).await;
            next_scrape(
                &mut rx,
                Instant::now(),
                &format!("{b} is scraped"),
                |body| body.contains(&series(b)),
            )
            .await;
            let renamed = must(format!("ALTER DATABASE {a} RENAME TO {c}")).await;
            next_scrape(
                &mut rx,
                renamed,
                &format!("{a} is gone, {c} is scraped"),
                |body| !body.contains(&series(a)) && body.contains(&series(c)),
            )
            .await;
            (c, Some(b))
        } else {
            (a, None)
        };
        for db in std::iter::once(last).chain(also) {
            let dropped = must(format!("DROP DATABASE {db}")).await;
            let body = next_scrape(&mut rx, dropped, &format!("{db} is dropped"), |_| true).await;
            assert!(
                !body.contains(&format!("datname=\"{db}\"")),
                "cycle {cycle}: {db}'s series outlive its DROP: {body}"
            );
        }
    }
    println!("{CYCLES} cycles; slowest DBA statement {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a DBA statement waited {slowest:?} for other sessions"
    );
}

/// Issue 18: discovered databases are collected in parallel with at most the budget of
/// connections open at once, and none is left open once the scrape is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_databases_use_the_budget_in_parallel_and_hold_nothing_at_rest() {
    const SLEEP: f64 = 0.4;
    let dbs: Vec<String> = (1..=8).map(|i| format!("budget_{i}")).collect();
    let names: Vec<&str> = dbs.iter().map(String::as_str).collect();
    let dba = connect_dba().await;
    for db in &names {
        let _ = run(&dba, &format!("DROP DATABASE IF EXISTS {db}")).await;
        let (r, _) = run(&dba, &format!("CREATE DATABASE {db}")).await;
        r.unwrap();
    }
    let yaml = format!(
        "t_slow:\n  name: t_slow\n  timeout: 5\n  query: \"SELECT current_database() AS datname, 1 AS v FROM pg_sleep({SLEEP})\"\n  metrics:\n    - datname: {{ usage: LABEL }}\n    - v: {{ usage: GAUGE }}\n"
    );
    let (exp, _dir) = exporter(&yaml, &names, |s| s.engine.disable_cache = true);
    let peak = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (names, peak) = (dbs.clone(), peak.clone());
        tokio::spawn(async move {
            let dba = connect_dba().await;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            loop {
                peak.fetch_max(held(&dba, &names).await, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t = Instant::now();
    let body = exp.scrape(None).await;
    let took = t.elapsed();
    for db in &names {
        assert!(
            body.contains(&format!("t_slow_v{{datname=\"{db}\"}} 1")),
            "{db}: {body}"
        );
    }
    // Eight databases, four at a time: two rounds of the query, not eight.
    let budget = 4.0;
    let rounds = (names.len() as f64 / budget).ceil();
    assert!(
        took.as_secs_f64() >= rounds * SLEEP && took.as_secs_f64() < rounds * SLEEP + 1.5,
        "8 databases, budget 4, {SLEEP} s each: {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher.abort();
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&peak),
        "{peak} connections to discovered databases at once, budget 4"
    );
    let at_rest = held(&dba, &names).await;
    assert_eq!(at_rest, 0, "connections left open to discovered databases");
    for db in &names {
        let _ = run(&dba, &format!("DROP DATABASE {db}")).await;
    }
}

/// Issue 15: a collector without the `cluster` tag or a `datname` label runs on every
/// discovered database and would emit the same series once per database: the first is kept,
/// the copies dropped and counted as errors of the collector on the databases that repeat it.
#[tokio::test]
async fn the_same_series_from_several_databases_is_kept_once_and_counted() {
    let dbs = ["dup_1", "dup_2", "dup_3"];
    let dba = connect_dba().await;
    for db in dbs {
        let _ = run(&dba, &format!("DROP DATABASE IF EXISTS {db}")).await;
        run(&dba, &format!("CREATE DATABASE {db}")).await.0.unwrap();
    }
    let yaml = format!(
        "probe_ok:\n  name: probe_ok\n  query: \"SELECT 'a' AS lbl, 1 AS v\"\n  metrics:\n    - lbl: {{ usage: LABEL }}\n    - v: {{ usage: GAUGE }}\n{PER_DB}"
    );
    let (exp, _dir) = exporter(&yaml, &dbs, |_| {});
    for scrape in 1..=2 {
        let body = exp.scrape(None).await;
        assert_eq!(
            body.matches("\nprobe_ok_v{lbl=\"a\"} 1\n").count(),
            1,
            "one copy of the series: {body}"
        );
        for db in std::iter::once("postgres").chain(dbs) {
            assert!(
                body.contains(&series(db)),
                "per-database series kept: {body}"
            );
            let errors = |query: &str| {
                test_harness::agent::value(
                    &body,
                    "pg_exporter_query_scrape_error_count",
                    &[("datname", db), ("query", query)],
                )
            };
            let expected = if db == "postgres" {
                0.0
            } else {
                f64::from(scrape)
            };
            assert_eq!(errors("probe_ok"), Some(expected), "{db}: {body}");
            assert_eq!(errors("t_db"), Some(0.0), "{db}: {body}");
        }
    }
    for db in dbs {
        let _ = run(&dba, &format!("DROP DATABASE {db}")).await;
    }
}
