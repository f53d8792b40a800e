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
    exporter_of("postgres", yaml, databases, tweak)
}

/// [`exporter`] with `main` as the main server's database.
fn exporter_of(
    main: &str,
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
    let info = ConnInfo::parse(&format!("{}?sslmode=disable", server().url(main))).unwrap();
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

/// Sessions waiting for a lock on `db`'s pg_database object: new sessions queued in their
/// start-up behind a DBA's `DROP` or `RENAME`.
async fn queued_on(client: &tokio_postgres::Client, db: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.objid \
             WHERE l.locktype = 'object' AND l.classid = 'pg_database'::regclass \
             AND NOT l.granted AND d.datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// A DBA's session renaming `db` in a transaction left open: it holds the database's lock
/// until `ROLLBACK`.
async fn hold_rename(db: &str) -> tokio_postgres::Client {
    let holder = connect_dba().await;
    let sql = format!("BEGIN; ALTER DATABASE {db} RENAME TO {db}_x");
    run(&holder, &sql).await.0.unwrap();
    holder
}

/// Recreates `db` empty.
async fn recreate(client: &tokio_postgres::Client, db: &str) {
    let _ = run(client, &format!("DROP DATABASE IF EXISTS {db}")).await;
    run(client, &format!("CREATE DATABASE {db}"))
        .await
        .0
        .unwrap();
}

/// Reviewer 3 B1: while a DBA's `ALTER DATABASE … RENAME` holds the database's lock in an
/// open transaction, scrapes leave it alone: no session of ours queues on the server behind
/// the lock (before: one more at every scrape, each past its connect timeout, until
/// `max_connections`). Once the lock is gone the database is scraped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_a_dba_holds_is_left_alone_and_nothing_queues_on_it() {
    let db = "held_a";
    let dba = connect_dba().await;
    recreate(&dba, db).await;
    // Generous for a loaded machine: nothing should connect to the held database at all.
    let (exp, _dir) = exporter(PER_DB, &[db], |s| {
        s.engine.disable_cache = true;
        s.engine.connect_timeout = Duration::from_millis(500);
    });
    assert!(exp.scrape(None).await.contains(&series(db)));
    let holder = hold_rename(db).await;
    let mut peak = 0;
    for _ in 0..10 {
        let body = exp.scrape(None).await;
        assert!(body.contains("\npg_up 1\n"), "{body}");
        assert!(!body.contains(&series(db)), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(queued_on(&dba, db).await);
    }
    run(&holder, "ROLLBACK").await.0.unwrap();
    assert_eq!(peak, 0, "sessions of ours queued behind the DBA's lock");
    assert!(exp.scrape(None).await.contains(&series(db)));
    let _ = run(&dba, &format!("DROP DATABASE {db}")).await;
}

/// Reviewer 3 B1: a discovered database whose connect timed out (a lock taken after the main
/// server's catalog query said it was free) is not connected to again at every scrape: at
/// most one session of ours queues behind the lock per pause (1 s, doubling): two in 1.5 s
/// (before: one per scrape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_that_time_out_pause_before_the_next() {
    use sql_collector::planner::ServerKind;
    use sql_collector::server::{EngineSettings, OutcomeCache, Server};
    let db = "held_b";
    let dba = connect_dba().await;
    recreate(&dba, db).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("collectors.yml"), PER_DB).unwrap();
    let set = Arc::new(config::load(dir.path(), LoadMode::Strict).unwrap());
    let info = ConnInfo::parse(&format!("{}?sslmode=disable", server().url(db))).unwrap();
    let settings = Arc::new(EngineSettings {
        connect_timeout: Duration::from_millis(300),
        disable_cache: true,
        const_labels: Vec::new(),
        tags: Vec::new(),
    });
    let fork = Server::discovered(
        info,
        ServerKind::Postgres,
        Arc::new(tokio::sync::Semaphore::new(4)),
        settings,
        set,
        OutcomeCache::new(),
    );
    assert!(fork.scrape(None, None).await.up);
    let holder = hold_rename(db).await;
    let started = Instant::now();
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(!fork.scrape(None, None).await.up);
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued = queued_on(&dba, db).await;
    run(&holder, "ROLLBACK").await.0.unwrap();
    assert!(
        (1..=2).contains(&queued),
        "{queued} sessions queued behind the lock after {scrapes} scrapes in 1.5 s"
    );
    let _ = run(&dba, &format!("DROP DATABASE {db}")).await;
}

/// Reviewer 3 B2: with eight scrapers overlapping (every 0.1 s, a query of 0.2 s per
/// database), a discovered database's connection is not passed from scrape to scrape
/// forever: every `DROP DATABASE` succeeds on the first try (before: "being accessed by
/// other users" after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_succeeds_under_eight_overlapping_scrapers() {
    let db = "busy_a";
    let dba = connect_dba().await;
    let _ = run(&dba, &format!("DROP DATABASE IF EXISTS {db}")).await;
    let yaml = "t_db:\n  name: t_db\n  timeout: 5\n  query: \"SELECT current_database() AS datname, 1 AS v FROM pg_sleep(0.2)\"\n  metrics:\n    - datname: { usage: LABEL }\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(yaml, &[db], |s| s.engine.disable_cache = true);
    let mut scrapers: Vec<_> = (0..8)
        .map(|_| scraper(exp.clone(), Duration::from_millis(100)))
        .collect();
    let rx = &mut scrapers[0];
    for cycle in 0..6 {
        run(&dba, &format!("CREATE DATABASE {db}")).await.0.unwrap();
        next_scrape(rx, Instant::now(), &format!("{db} is scraped"), |b| {
            b.contains(&series(db))
        })
        .await;
        let (result, took) = run(&dba, &format!("DROP DATABASE {db}")).await;
        assert!(
            result.is_ok(),
            "cycle {cycle}: DROP after {took:?}: {result:?}"
        );
    }
}

/// Reviewer 3 B3: two overlapping scrapes of a main server whose collector takes 0.3 s: the
/// second's pre-check waits for the connection instead of timing out behind the first's
/// query, and cancels nobody's query (before: the second was down and the first lost its
/// collector to the cancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_scrapes_of_a_slow_main_server_both_succeed() {
    let yaml = "t_slow:\n  name: t_slow\n  timeout: 5\n  query: \"SELECT 1 AS v FROM pg_sleep(0.3)\"\n  metrics:\n    - v: { usage: GAUGE }\n";
    let (exp, _dir) = exporter(yaml, &[], |s| {
        s.auto_discovery = false;
        s.engine.disable_cache = true;
    });
    for _ in 0..3 {
        let first = tokio::spawn({
            let exp = exp.clone();
            async move { exp.scrape(None).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = exp.scrape(None).await;
        let first = first.await.unwrap();
        for (which, body) in [("first", &first), ("second", &second)] {
            assert!(body.contains("\npg_up 1\n"), "{which}: {body}");
            assert!(body.contains("\nt_slow_v 1\n"), "{which}: {body}");
        }
    }
}

/// Reviewer 3 B4: when the main server's pre-check fails, the discovered databases are not
/// scraped (which exist is unknown): none of their series is served with `pg_up 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_main_pre_check_serves_no_discovered_series() {
    let (main, db) = ("gone_main", "gone_x");
    let dba = connect_dba().await;
    let _ = run(
        &dba,
        &format!("ALTER DATABASE {main} ALLOW_CONNECTIONS true"),
    )
    .await;
    recreate(&dba, main).await;
    recreate(&dba, db).await;
    let (exp, _dir) = exporter_of(main, PER_DB, &[db], |s| {
        s.engine.disable_cache = true;
        s.engine.connect_timeout = Duration::from_secs(1);
    });
    let body = exp.scrape(None).await;
    assert!(body.contains(&series(db)), "{body}");
    run(
        &dba,
        &format!(
            "ALTER DATABASE {main} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{main}'"
        ),
    )
    .await
    .0
    .unwrap();
    let body = exp.scrape(None).await;
    assert!(body.contains("\npg_up 0\n"), "{body}");
    assert!(!body.contains(&series(db)), "{body}");
    let _ = run(
        &dba,
        &format!("ALTER DATABASE {main} ALLOW_CONNECTIONS true"),
    )
    .await;
    for d in [main, db] {
        let _ = run(&dba, &format!("DROP DATABASE {d}")).await;
    }
}
