//! pgbouncer_exporter in front of a real Patroni cluster (Patroni 3.0, etcd 3.4, PostgreSQL 15)
//! through a switchover and a hard failover (kill -9 of the leader's Patroni and postmaster).
//!
//! Pgbouncer's databases point at HAProxy's `primary` service, whose servers are checked on
//! Patroni's REST `/primary` (see `PatroniClusterBuilder::pgbouncer`), so Pgbouncer's target
//! moves to the new leader without touching Pgbouncer. During each role change the test
//! scrapes the exporter every 300 ms and writes through Pgbouncer every 100 ms, and asserts:
//!
//! - every scrape answers HTTP 200 with `pgbouncer_up 1`, and `/up` answers 200 (Pgbouncer
//!   itself never goes away, so neither may its exporter's view of it);
//! - writes through Pgbouncer resume on the new leader (`inet_server_port()` is the new
//!   leader's port, the row is there), and once they did, none goes anywhere else;
//! - the exporter's `pgbouncer_stat_total_xact_count{datname="postgres"}` counts the writes
//!   that went through after the change, and `pgbouncer_database_*` names HAProxy's port as
//!   the target;
//! - dropping the cluster leaves no process (Pgbouncer and HAProxy included) and no directory.
//!
//! It prints the write outage seen by Pgbouncer's clients and when HAProxy switched.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use test_harness::agent::sample;
use test_harness::patroni::PRIMARY_SERVICE;
use test_harness::{Agent, PatroniCluster, PatroniClusterBuilder, PatroniMember};

const SCRAPE_POLL: Duration = Duration::from_millis(300);
const WRITE_POLL: Duration = Duration::from_millis(100);
/// How long writes must keep landing on the new leader before a role change counts as done.
const SETTLE: Duration = Duration::from_secs(2);
/// The collectors' TTL is 10 s; counters may lag the writes by that much.
const COUNTER_WAIT: Duration = Duration::from_secs(30);

/// Starts pgbouncer_exporter for `url` with its built-in collectors (as Pigsty runs it).
fn start(url: &str) -> Agent {
    Agent::builder(
        "pgbouncer_exporter",
        env!("CARGO_BIN_EXE_pgbouncer_exporter"),
    )
    .in_own_dir()
    .arg(format!("--url={url}"))
    .args(["--connect-timeout=3000", "--log.level=info"])
    .env_remove("PGURL")
    .env_remove("PG_EXPORTER_URL")
    .env_remove("PG_EXPORTER_CONFIG")
    .ready_when_ok("/version")
    .start()
}

fn xact_count(exporter: &Agent) -> f64 {
    sample(
        &exporter.metrics(),
        "pgbouncer_stat_total_xact_count{datname=\"postgres\"}",
    )
    .unwrap_or(0.0)
}

/// One write through Pgbouncer: the port of the server that took it.
fn write(cluster: &PatroniCluster, v: u32) -> Result<u16, String> {
    let out = cluster
        .query_port(
            cluster.pgbouncer().port(),
            "postgres",
            &format!("INSERT INTO ha_marks (v) VALUES ({v}) RETURNING inet_server_port()"),
        )
        .map_err(|e| format!("{e:#}"))?;
    out.parse()
        .map_err(|_| format!("INSERT … RETURNING printed {out:?}"))
}

/// What the scraper, the writer and the HAProxy poller saw during one role change; times are
/// from the action.
#[derive(Debug, Default)]
struct Report {
    scrapes: u32,
    violations: Vec<String>,
    /// (time the write returned, value written, outcome).
    writes: Vec<(Duration, u32, Result<u16, String>)>,
    /// The longest write: (started, took).
    slowest: Option<(Duration, Duration)>,
    /// When HAProxy's primary service first had the new leader, and only it, up.
    haproxy_switched: Option<Duration>,
}

impl Report {
    /// The first successful write on `port`.
    fn first_on(&self, port: u16) -> Option<(Duration, u32)> {
        self.writes
            .iter()
            .find(|(_, _, r)| r.as_ref().ok() == Some(&port))
            .map(|(t, v, _)| (*t, *v))
    }

    /// The last successful write on `port`.
    fn last_on(&self, port: u16) -> Option<Duration> {
        self.writes
            .iter()
            .rev()
            .find(|(_, _, r)| r.as_ref().ok() == Some(&port))
            .map(|(t, ..)| *t)
    }

    fn failures(&self) -> Vec<&(Duration, u32, Result<u16, String>)> {
        self.writes.iter().filter(|(.., r)| r.is_err()).collect()
    }
}

/// Runs `action` while scraping the exporter and writing through Pgbouncer, until a write has
/// landed on `new`'s port and `SETTLE` more passed (or `timeout`).
fn watch<T>(
    cluster: &PatroniCluster,
    exporter: &Agent,
    new: &PatroniMember,
    next_value: &AtomicU32,
    timeout: Duration,
    action: impl FnOnce() -> T,
) -> (T, Report) {
    let report = Mutex::new(Report::default());
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let next = Instant::now() + SCRAPE_POLL;
                let metrics = exporter.get("/metrics");
                let up = exporter.get("/up");
                let at = t0.elapsed();
                let mut r = report.lock().unwrap();
                r.scrapes += 1;
                match metrics {
                    Ok((200, body)) => {
                        let v = sample(&body, "pgbouncer_up");
                        if v != Some(1.0) {
                            r.violations.push(format!("pgbouncer_up {v:?} at {at:?}"));
                        }
                    }
                    other => r
                        .violations
                        .push(format!("/metrics answered {other:?} at {at:?}")),
                }
                if !matches!(up, Ok((200, _))) {
                    r.violations.push(format!("/up answered {up:?} at {at:?}"));
                }
                drop(r);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let next = Instant::now() + WRITE_POLL;
                let v = next_value.fetch_add(1, Ordering::SeqCst);
                let began = t0.elapsed();
                let outcome = write(cluster, v);
                let at = t0.elapsed();
                let mut r = report.lock().unwrap();
                r.writes.push((at, v, outcome));
                if r.slowest.is_none_or(|(_, took)| at - began > took) {
                    r.slowest = Some((began, at - began));
                }
                drop(r);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        s.spawn(|| {
            let haproxy = cluster.haproxy();
            while !stop.load(Ordering::SeqCst) {
                let only_new = haproxy.server_status(PRIMARY_SERVICE).is_ok_and(|st| {
                    st.iter()
                        .all(|(server, state)| (server == new.name()) == (state == "UP"))
                });
                let at = t0.elapsed();
                let mut r = report.lock().unwrap();
                if only_new && r.haproxy_switched.is_none() {
                    r.haproxy_switched = Some(at);
                }
                drop(r);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let result = action();
        let deadline = t0 + timeout;
        loop {
            let settled = report
                .lock()
                .unwrap()
                .first_on(new.port())
                .is_some_and(|(t, _)| t0.elapsed() >= t + SETTLE);
            if settled || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        result
    });
    (result, report.into_inner().unwrap())
}

/// The checks and the printout shared by both role changes.
fn check_and_print(
    what: &str,
    report: &Report,
    exporter: &Agent,
    old: &PatroniMember,
    new: &PatroniMember,
    primary_after: Duration,
    writable_after: Duration,
) {
    let ms = |d: Duration| format!("{} ms", d.as_millis());
    let failures = report.failures();
    println!("--- {what}: {} -> {} ---", old.name(), new.name());
    println!(
        "Patroni: {} /primary after {}, writable after {}",
        new.name(),
        ms(primary_after),
        ms(writable_after)
    );
    println!(
        "scrapes: {} (every {} ms), all 200 with pgbouncer_up 1: {}",
        report.scrapes,
        SCRAPE_POLL.as_millis(),
        report.violations.is_empty()
    );
    let last_old = report.last_on(old.port());
    let first_new = report.first_on(new.port());
    println!(
        "writes through Pgbouncer: {} (every {} ms), {} failed; last on {} at {}, first on {} at \
         {}, client-visible write outage {}",
        report.writes.len(),
        WRITE_POLL.as_millis(),
        failures.len(),
        old.name(),
        last_old.map_or("never".into(), ms),
        new.name(),
        first_new.map_or("never".into(), |(t, _)| ms(t)),
        match (last_old, first_new) {
            (Some(a), Some((b, _))) => ms(b.saturating_sub(a)),
            (None, Some((b, _))) => format!("≤ {}", ms(b)),
            _ => "n/a".into(),
        }
    );
    if let Some((began, took)) = report.slowest {
        println!(
            "slowest write: began at {}, took {} (Pgbouncer holds its clients while it cannot \
             log in to a server)",
            ms(began),
            ms(took)
        );
    }
    println!(
        "HAProxy's primary service had only {} up after {}",
        new.name(),
        report
            .haproxy_switched
            .map_or("never (while watched)".into(), ms)
    );
    for (at, v, r) in failures.iter().take(6) {
        // psql's own message, not the command line quoted before it.
        let err = r.as_ref().err().map_or("", String::as_str);
        let msg = err
            .lines()
            .find(|l| l.contains("ERROR:") || l.contains("FATAL:") || l.contains("psql: error"))
            .unwrap_or("?");
        println!("  write {v} failed at {}: {}", ms(*at), msg.trim());
    }

    assert!(
        report.violations.is_empty(),
        "{what}: the exporter did not keep reporting: {:#?}\nexporter log:\n{}",
        report.violations,
        exporter.log_tail(40)
    );
    assert!(
        report.scrapes >= 3,
        "{what}: only {} scrapes",
        report.scrapes
    );
    let (t_new, v_new) = first_new.unwrap_or_else(|| {
        panic!(
            "{what}: no write through Pgbouncer reached {} ({} writes, last failures: {:?})",
            new.name(),
            report.writes.len(),
            failures.iter().rev().take(3).collect::<Vec<_>>()
        )
    });
    // Once writes reach the new leader, they all do.
    let strays: Vec<_> = report
        .writes
        .iter()
        .filter(|(t, _, r)| *t > t_new && r.as_ref().is_ok_and(|p| *p != new.port()))
        .collect();
    assert!(
        strays.is_empty(),
        "{what}: writes elsewhere after {t_new:?}: {strays:?}"
    );
    // The write is on the new primary itself.
    assert_eq!(
        new.query(
            "postgres",
            &format!("SELECT count(*) FROM ha_marks WHERE v = {v_new}")
        )
        .unwrap(),
        "1",
        "{what}: write {v_new} is on {}",
        new.name()
    );
    assert_eq!(
        new.query("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
}

#[test]
fn pgbouncer_exporter_keeps_reporting_while_pgbouncer_follows_the_leader() {
    let started = Instant::now();
    let cluster = PatroniClusterBuilder::new()
        .members(2)
        .pgbouncer()
        .start()
        .unwrap();
    let pg1 = cluster.member("pg1").unwrap();
    let pg2 = cluster.member("pg2").unwrap();
    let bouncer = cluster.pgbouncer();
    let haproxy_port = cluster.haproxy().port(PRIMARY_SERVICE).unwrap();
    println!(
        "bring-up with HAProxy and Pgbouncer: {:?}",
        started.elapsed()
    );
    let exporter = start(&bouncer.admin_url());

    // Steady state: Pgbouncer sends writes to pg1 through HAProxy; the exporter sees it up,
    // with HAProxy's primary service as the target of the `postgres` entry.
    pg1.execute("postgres", "CREATE TABLE ha_marks (v int PRIMARY KEY)")
        .unwrap();
    let next_value = AtomicU32::new(1);
    assert_eq!(
        write(&cluster, next_value.fetch_add(1, Ordering::SeqCst)),
        Ok(pg1.port())
    );
    let body = exporter.metrics();
    assert_eq!(sample(&body, "pgbouncer_up"), Some(1.0), "{body}");
    let target = format!(
        "datname=\"postgres\",host=\"127.0.0.1\",port=\"{haproxy_port}\",real_datname=\"postgres\""
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("pgbouncer_database_pool_size{") && l.contains(&target)),
        "the postgres entry points at HAProxy's primary service ({target})\n{body}"
    );
    exporter.wait_until(
        "pgbouncer_stat_total_xact_count ≥ 1",
        COUNTER_WAIT,
        || xact_count(&exporter) >= 1.0,
    );

    // Switchover pg1 -> pg2.
    let xacts_before = xact_count(&exporter);
    let (change, report) = watch(
        &cluster,
        &exporter,
        pg2,
        &next_value,
        Duration::from_secs(60),
        || cluster.switchover(pg2).unwrap(),
    );
    cluster
        .wait_routed(PRIMARY_SERVICE, pg2, Duration::from_secs(10))
        .unwrap();
    check_and_print(
        "switchover",
        &report,
        &exporter,
        pg1,
        pg2,
        change.primary_after,
        change.writable_after,
    );
    let landed = report
        .writes
        .iter()
        .filter(|(.., r)| r.as_ref().is_ok_and(|p| *p == pg2.port()))
        .count() as f64;
    exporter.wait_until(
        &format!("the exporter to count the {landed} writes on pg2"),
        COUNTER_WAIT,
        || xact_count(&exporter) >= xacts_before + landed,
    );
    cluster
        .wait_streaming(pg1, Duration::from_secs(60))
        .unwrap();

    // Hard failover: pg2 (the leader now) is lost; pg1 takes over when the lock expires.
    let xacts_before = xact_count(&exporter);
    let (change, report) = watch(
        &cluster,
        &exporter,
        pg1,
        &next_value,
        cluster.timing().failover_timeout(),
        || cluster.hard_failover().unwrap(),
    );
    assert_eq!(change.new.name(), "pg1");
    cluster
        .wait_routed(PRIMARY_SERVICE, pg1, Duration::from_secs(10))
        .unwrap();
    check_and_print(
        "hard failover",
        &report,
        &exporter,
        pg2,
        pg1,
        change.primary_after,
        change.writable_after,
    );
    let landed = report
        .writes
        .iter()
        .filter(|(.., r)| r.as_ref().is_ok_and(|p| *p == pg1.port()))
        .count() as f64;
    exporter.wait_until(
        &format!("the exporter to count the {landed} writes on pg1"),
        COUNTER_WAIT,
        || xact_count(&exporter) >= xacts_before + landed,
    );

    // Every write that succeeded is on the surviving leader (pg1 has pg2's through streaming).
    let total = next_value.load(Ordering::SeqCst);
    let stored: u32 = pg1
        .query("postgres", "SELECT count(*) FROM ha_marks")
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "writes attempted: {}, rows on pg1: {stored}; exporter counted {} transactions",
        total - 1,
        xact_count(&exporter)
    );
    assert!(stored >= 1 && stored < total, "{stored} rows of {total}");
    assert!(exporter.is_running());
    let log = exporter.log_tail(200);
    assert!(!log.contains("level=error"), "exporter log:\n{log}");

    // Teardown: Pgbouncer, HAProxy, Patroni, PostgreSQL and etcd are gone with their files.
    let footprint = cluster.footprint();
    let running = footprint.processes();
    for name in ["pgbouncer", "haproxy", "/usr/bin/patroni"] {
        assert!(
            running.iter().any(|(_, c)| c.contains(name)),
            "{name} in {running:?}"
        );
    }
    drop(exporter);
    drop(cluster);
    assert_eq!(footprint.processes(), Vec::<(u32, String)>::new());
    assert_eq!(footprint.leftover_dirs(), Vec::<PathBuf>::new());
    println!("whole test: {:?}", started.elapsed());
}
