//! The pgbouncer_exporter binary as Pigsty runs it, with its built-in collectors, against the
//! harness's real Pgbouncer 1.18: self-metrics under the `pgbouncer_` prefix, the four
//! collectors, health endpoints, the stats-only user on a unix-socket URL, recovery after a
//! Pgbouncer restart, and the default port 9631.

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use test_harness::agent::sample;
use test_harness::pgbouncer::STATS_USER;
use test_harness::{Agent, AgentBuilder, Cluster, ClusterBuilder, PgVersion};

/// One Pgbouncer in front of PostgreSQL 15 for this binary's tests, which take turns (one
/// restarts Pgbouncer). Never dropped: the harness's reaper stops it at exit.
fn cluster() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let cluster = CLUSTER.get_or_init(|| {
        ClusterBuilder::new(PgVersion::V15)
            .pgbouncer()
            .start()
            .expect("PostgreSQL 15 and Pgbouncer start")
    });
    (cluster, turn)
}

/// Starts a stopped Pgbouncer again when dropped, so a failed test leaves it running for
/// the next.
struct KeepRunning<'a>(&'a test_harness::Pgbouncer);

impl Drop for KeepRunning<'_> {
    fn drop(&mut self) {
        if self.0.pid().is_none() {
            let _ = self.0.restart();
        }
    }
}

/// pgbouncer_exporter for `url` with the built-in collectors, run in its own directory and
/// killed on drop; ready once `/version` answers.
fn exporter(url: &str, extra: &[&str]) -> AgentBuilder {
    Agent::builder(
        "pgbouncer_exporter",
        env!("CARGO_BIN_EXE_pgbouncer_exporter"),
    )
    .in_own_dir()
    .arg(format!("--url={url}"))
    .args(["--connect-timeout=3000", "--log.level=debug"])
    .args(extra)
    .env_remove("PGURL")
    .env_remove("PG_EXPORTER_URL")
    .env_remove("PG_EXPORTER_CONFIG")
    .ready_when_answers("/version")
    .kill_on_drop()
}

const COLLECTORS: [&str; 4] = [
    "pgbouncer_list",
    "pgbouncer_database",
    "pgbouncer_stat",
    "pgbouncer_pool",
];

fn assert_collectors_ran(body: &str) {
    for query in COLLECTORS {
        let labels = format!("{{datname=\"pgbouncer\",query=\"{query}\"}}");
        assert_eq!(
            sample(
                body,
                &format!("pgbouncer_exporter_query_scrape_error_count{labels}")
            ),
            Some(0.0),
            "{query} failed\n{body}"
        );
        let samples = sample(
            body,
            &format!("pgbouncer_exporter_query_scrape_metric_count{labels}"),
        );
        assert!(samples.is_some_and(|n| n > 0.0), "{query}: {samples:?}");
        assert_eq!(
            sample(body, &format!("pgbouncer_exporter_query_cache_ttl{labels}"))
                .map(|t| t <= 10.0 && t > 0.0),
            Some(true),
            "{query}: TTL 10 s\n{body}"
        );
    }
}

#[test]
fn pgbouncer_metrics_self_metrics_and_endpoints() {
    let (cluster, _turn) = cluster();
    let bouncer = cluster.pgbouncer();
    let exporter = exporter(&bouncer.admin_url(), &[]).start();
    let body = exporter.metrics();
    for (series, value) in [
        ("pgbouncer_up", 1.0),
        ("pgbouncer_version", 11800.0),
        ("pgbouncer_in_recovery", 0.0),
        ("pgbouncer_exporter_up", 1.0),
        ("pgbouncer_exporter_scrape_total_count", 1.0),
        ("pgbouncer_exporter_scrape_error_count", 0.0),
        (
            "pgbouncer_exporter_server_scrape_total_count{datname=\"pgbouncer\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&body, series), Some(value), "{series}\n{body}");
    }
    for family in [
        "pgbouncer_exporter_build_info",
        "pgbouncer_exporter_uptime",
        "pgbouncer_exporter_scrape_duration",
        "pgbouncer_exporter_last_scrape_time",
        "pgbouncer_exporter_server_scrape_duration",
        "pgbouncer_exporter_query_scrape_duration",
        "pgbouncer_exporter_query_scrape_hit_count",
        "pgbouncer_list_items",
        "pgbouncer_database_pool_size",
        "pgbouncer_stat_total_query_time",
        "pgbouncer_stat_avg_wait_time",
        "pgbouncer_pool_maxwait_us",
    ] {
        assert!(
            body.contains(&format!("\n# TYPE {family} ")),
            "{family}\n{body}"
        );
    }
    assert_collectors_ran(&body);
    // Nothing of PostgreSQL mode: no pg_ prefix, no discovery.
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("pg_") || l.starts_with("# TYPE pg_")),
        "{body}"
    );
    assert_eq!(
        sample(&body, "pgbouncer_list_items{list=\"databases\"}"),
        Some(3.0),
        "postgres, single and the pseudo database pgbouncer\n{body}"
    );

    // The TTL cache serves the second scrape.
    let body = exporter.metrics();
    assert_eq!(
        sample(
            &body,
            "pgbouncer_exporter_query_scrape_hit_count{datname=\"pgbouncer\",query=\"pgbouncer_pool\"}"
        ),
        Some(1.0),
        "{body}"
    );

    // Pgbouncer is always "primary" when up.
    exporter.wait_for("/up to answer 200", || {
        exporter.get("/up").map(|r| r.0) == Ok(200)
    });
    assert_eq!(exporter.get("/up").unwrap(), (200, "primary".into()));
    assert_eq!(exporter.get("/primary").unwrap(), (200, "primary".into()));
    assert_eq!(exporter.get("/replica").unwrap().0, 404);
    let (status, explain) = exporter.get("/explain").unwrap();
    assert_eq!(status, 200);
    for branch in [
        "pgbouncer_list",
        "pgbouncer_database_116",
        "pgbouncer_stat_108",
        "pgbouncer_pool_118",
    ] {
        assert!(explain.contains(branch), "{branch}\n{explain}");
    }
    assert!(!explain.contains("pgbouncer_pool_124"), "{explain}");
    let (status, stat) = exporter.get("/stat").unwrap();
    assert_eq!(status, 200);
    assert!(stat.contains("pgbouncer_pool"), "{stat}");
    let logs = exporter.logs();
    assert!(!logs.contains("Collector failed"), "{logs}");
    let pgbouncer_log = std::fs::read_to_string(bouncer.log_path()).unwrap_or_default();
    assert!(
        !pgbouncer_log.contains("unsupported startup parameter")
            && !pgbouncer_log.contains("invalid command"),
        "{pgbouncer_log}"
    );
}

#[test]
fn stats_user_on_a_unix_socket_and_recovery_after_a_restart() {
    let (cluster, _turn) = cluster();
    let bouncer = cluster.pgbouncer();
    // Pigsty's URL form: no host in the authority, the socket directory as `host`.
    let url = format!(
        "postgres://{STATS_USER}@:{}/pgbouncer?host={}",
        bouncer.port(),
        bouncer.socket_dir().display()
    );
    let exporter = exporter(&url, &["--disable-cache"]).start();
    let body = exporter.metrics();
    assert_eq!(sample(&body, "pgbouncer_up"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "pgbouncer_version"), Some(11800.0));
    assert_collectors_ran(&body);
    exporter.wait_for("/up to answer 200", || {
        exporter.get("/up").map(|r| r.0) == Ok(200)
    });

    let _keep = KeepRunning(bouncer);
    bouncer.stop();
    // Past the window in which concurrent scrapes share the pre-check's facts.
    std::thread::sleep(Duration::from_millis(300));
    let body = exporter.metrics();
    assert_eq!(sample(&body, "pgbouncer_up"), Some(0.0), "{body}");
    assert!(!body.contains("pgbouncer_pool_"), "{body}");
    exporter.wait_for("/up to answer 503 while Pgbouncer is down", || {
        exporter.get("/up").map(|r| r.0) == Ok(503)
    });

    bouncer.restart().expect("Pgbouncer restarts");
    exporter.wait_for("pgbouncer_up 1 after the restart", || {
        sample(&exporter.metrics(), "pgbouncer_up") == Some(1.0)
    });
    exporter.wait_for("/up to answer 200 after the restart", || {
        exporter.get("/up").map(|r| r.0) == Ok(200)
    });
    let body = exporter.metrics();
    assert_collectors_ran(&body);
    assert!(
        sample(&body, "pgbouncer_exporter_scrape_error_count").is_some_and(|n| n >= 1.0),
        "{body}"
    );
}

#[test]
fn listens_on_9631_by_default() {
    if test_harness::ports::is_listening(9631) {
        eprintln!("port 9631 is taken here (a sandbox?); default port not checked");
        return;
    }
    let (cluster, _turn) = cluster();
    let exporter = exporter(&cluster.pgbouncer().admin_url(), &[])
        .default_port(9631)
        .start();
    // The answer came from this process, not from something that took the port meanwhile.
    assert!(exporter.is_running(), "exited: {}", exporter.logs());
    let body = exporter.metrics();
    assert_eq!(sample(&body, "pgbouncer_up"), Some(1.0), "{body}");
    let (status, version) = exporter.get("/version").unwrap();
    assert_eq!(status, 200, "{version}");
}
