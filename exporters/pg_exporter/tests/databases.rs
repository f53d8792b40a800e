//! pg_exporter with auto-discovery on an instance of its own (PostgreSQL 15, four tenant
//! databases): the connection budget for discovered databases (`--discovery-connections`,
//! `PG_EXPORTER_DISCOVERY_CONNECTIONS`), the connections held at rest, and a collector that
//! repeats its series on every database, logged once.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use test_harness::{Agent, PgVersion, Postgres, PostgresBuilder};

const TENANTS: [(&str, usize); 4] = [
    ("tenant_1", 1),
    ("tenant_2", 1),
    ("tenant_3", 1),
    ("tenant_4", 1),
];

/// Seconds each tenant's slow collector sleeps.
const SLEEP: f64 = 0.4;

fn server() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        PostgresBuilder::new(PgVersion::V15)
            .name("databases")
            .with_databases(&TENANTS)
            .start()
            .expect("PostgreSQL starts")
    })
}

/// Our sessions (application_name `pg_exporter`) on tenant databases, and on any database.
fn sessions(pg: &Postgres) -> (u32, u32) {
    let out = pg
        .query(
            "postgres",
            "SELECT count(*) FILTER (WHERE datname LIKE 'tenant%'), count(*) \
             FROM pg_stat_activity WHERE application_name = 'pg_exporter'",
        )
        .unwrap();
    let (tenants, all) = out.split_once('|').unwrap();
    (tenants.parse().unwrap(), all.parse().unwrap())
}

#[test]
fn the_budget_bounds_connections_none_stay_and_repeated_series_are_logged_once() {
    let pg = server();
    let collectors = format!(
        "probe_ok:\n  name: probe_ok\n  query: \"SELECT 'a' AS lbl, 1 AS v\"\n  metrics:\n    - lbl: {{ usage: LABEL }}\n    - v: {{ usage: GAUGE }}\n\
         t_slow:\n  name: t_slow\n  timeout: 5\n  query: \"SELECT current_database() AS datname, 1 AS v FROM pg_sleep({SLEEP}) WHERE current_database() LIKE 'tenant%'\"\n  metrics:\n    - datname: {{ usage: LABEL }}\n    - v: {{ usage: GAUGE }}\n"
    );
    let b = Agent::builder("pg_exporter", env!("CARGO_BIN_EXE_pg_exporter"));
    // A directory of its own: the log file next to it would be a change of the config.
    let conf = b.dir().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("collectors.yml"), collectors).unwrap();
    let exp = b
        .arg(format!("--url={}", pg.url("postgres")))
        .arg(format!("--config={}", conf.display()))
        .args([
            "--auto-discovery",
            "--disable-cache",
            "--connect-timeout=3000",
            "--log.level=info",
        ])
        .env("PG_EXPORTER_DISCOVERY_CONNECTIONS", "2")
        .env_remove("PGURL")
        .env_remove("PG_EXPORTER_URL")
        .ready_when_ok("/up")
        .kill_on_drop()
        .start();

    // Our sessions on tenant databases, sampled while the scrapes run.
    let peak = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(sessions(server()).0, Ordering::SeqCst);
            }
        })
    };
    for scrape in 1..=3 {
        let t = Instant::now();
        let body = exp.metrics();
        let took = t.elapsed().as_secs_f64();
        for (db, _) in TENANTS {
            assert!(
                body.contains(&format!("t_slow_v{{datname=\"{db}\"}} 1")),
                "{db}: {body}"
            );
        }
        // Four tenants, two at a time: two rounds of the query.
        assert!(
            (2.0 * SLEEP..2.0 * SLEEP + 1.5).contains(&took),
            "scrape {scrape}: {took:.2} s for 4 × {SLEEP} s within a budget of 2"
        );
        assert_eq!(
            body.matches("\nprobe_ok_v{lbl=\"a\"} 1\n").count(),
            1,
            "scrape {scrape}: one copy of a series repeated by every database: {body}"
        );
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&peak),
        "{peak} sessions on tenant databases at once, budget 2"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sessions(pg),
        (0, 2),
        "at rest: none on discovered databases, the main and the probe's connection"
    );
    let logs = exp.logs();
    assert_eq!(
        logs.matches("same series on several databases").count(),
        1,
        "logged once over three scrapes: {logs}"
    );
}

#[test]
fn a_budget_of_zero_is_refused() {
    for (args, env) in [
        (&["--discovery-connections=0", "--dry-run"][..], None),
        (&["--dry-run"][..], Some("0")),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg_exporter"));
        cmd.args(args)
            .env_remove("PG_EXPORTER_DISCOVERY_CONNECTIONS");
        if let Some(v) = env {
            cmd.env("PG_EXPORTER_DISCOVERY_CONNECTIONS", v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("invalid value '0' for '--discovery-connections"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}
