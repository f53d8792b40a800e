//! Many databases on one instance: our pg_exporter and Debian's prometheus-postgres-exporter
//! (0.11) with auto-discovery, against one PostgreSQL 15 holding 10, 50, 100 and 200
//! databases of 10 tables each. Prints one table per size.
//!
//! Run with `cargo bench -p pg_exporter --bench databases` (needs `scripts/setup`). Not run in
//! CI. `BENCH_SIZES` (default `10,50,100,200`), `BENCH_ROUNDS` (default 3) and
//! `BENCH_SCRAPES` (default 20) change the run; each figure is given as the range over the
//! rounds, the ratio from the medians.
//!
//! What each collects: ours runs its built-in collector set on the main database and, on
//! every discovered database, every collector without the `cluster` tag (per-table,
//! per-index, per-function metrics and the database's own), with `--disable-cache` so that
//! every query runs at every scrape; the peer runs its default queries (instance-level
//! metrics: pg_stat_database, pg_locks, pg_stat_bgwriter, pg_settings, …) on each database.
//!
//! Measured per exporter: series per scrape; scrape wall time p50 and p99; exporter CPU per
//! 1,000 series (its own process, from `/proc`); peak RSS (VmHWM); its TCP connections to
//! PostgreSQL at peak (sampled every 10 ms while scraping) and at rest (1.5 s after the last
//! scrape); PostgreSQL's CPU per scrape (the postmaster, its backends, and those that exited:
//! autovacuum is off, so this is the backends serving the exporter).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use test_harness::bench::{
    BenchedExporter, cpu_seconds, peak_rss_mib, quantile, series_count, tcp_connections_to,
    tree_cpu_seconds,
};
use test_harness::{PgVersion, Postgres, PostgresBuilder, free_port};

const PEER: &str = "/usr/bin/prometheus-postgres-exporter";
const TABLES: usize = 10;

/// One run of one exporter.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    series: usize,
    p50_ms: f64,
    p99_ms: f64,
    cpu_per_k_series: f64,
    peak_rss_mib: f64,
    conns_peak: usize,
    conns_rest: usize,
    pg_cpu_per_scrape: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10,50,100,200".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let scrapes: usize = env_or("BENCH_SCRAPES", 20);
    let largest = sizes.iter().copied().max().unwrap_or(10);

    eprintln!("bench: starting PostgreSQL 15 ...");
    let pg = PostgresBuilder::new(PgVersion::V15)
        .name("bench-databases")
        .setting("max_connections", &(largest + 50).to_string())
        .setting("autovacuum", "off")
        .start()
        .expect("PostgreSQL starts");
    // One database of 10 tables, copied for every tenant (a template: neither exporter
    // discovers it).
    pg.create_database("bench_template", TABLES).unwrap();
    pg.execute(
        "postgres",
        "ALTER DATABASE bench_template IS_TEMPLATE true;",
    )
    .unwrap();
    let postmaster = pg.postmaster_pid().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let have_peer = Path::new(PEER).exists();
    if !have_peer {
        eprintln!(
            "bench: {PEER} missing (apt-get install prometheus-postgres-exporter); no peer column"
        );
    }
    let mut created = 0;
    for &size in &sizes {
        eprintln!("bench: {size} databases x {TABLES} tables ...");
        let mut script = String::new();
        while created < size {
            created += 1;
            script.push_str(&format!(
                "CREATE DATABASE tenant_{created:03} TEMPLATE bench_template STRATEGY FILE_COPY;\n"
            ));
        }
        if !script.is_empty() {
            pg.execute("postgres", &script).unwrap();
        }
        let mut ours = Vec::new();
        let mut peer = Vec::new();
        for round in 1..=rounds {
            eprintln!("bench: {size} databases, round {round}/{rounds}");
            ours.push(run_ours(&pg, postmaster, dir.path(), scrapes));
            if have_peer {
                peer.push(run_peer(&pg, postmaster, dir.path(), scrapes));
            }
        }
        print_table(size, rounds, scrapes, &ours, &peer);
    }
}

fn run_ours(pg: &Postgres, postmaster: u32, dir: &Path, scrapes: usize) -> Run {
    let port = free_port().unwrap();
    let args = vec![
        format!("--url={}", pg.url("postgres")),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--auto-discovery".into(),
        "--disable-cache".into(),
        "--connect-timeout=2000".into(),
        "--exclude-database=template0,template1".into(),
        "--log.level=warn".into(),
    ];
    let exporter =
        BenchedExporter::start(dir, "ours", env!("CARGO_BIN_EXE_pg_exporter"), &args, &[]);
    measure(pg, postmaster, exporter, scrapes)
}

fn run_peer(pg: &Postgres, postmaster: u32, dir: &Path, scrapes: usize) -> Run {
    let port = free_port().unwrap();
    let args = vec![
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--auto-discover-databases".into(),
        "--exclude-databases=template0,template1".into(),
        "--log.level=warn".into(),
    ];
    let dsn = format!("{}?sslmode=disable", pg.url("postgres"));
    let exporter = BenchedExporter::start(dir, "peer", PEER, &args, &[("DATA_SOURCE_NAME", dsn)]);
    measure(pg, postmaster, exporter, scrapes)
}

/// A first scrape (connections, discovery, plans), then `scrapes` measured ones.
fn measure(pg: &Postgres, postmaster: u32, exporter: BenchedExporter, scrapes: usize) -> Run {
    let pid = exporter.pid();
    let pg_port = pg.port();
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(tcp_connections_to(pid, pg_port), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let (first, _) = exporter.scrape();
    let series = series_count(&first);
    let cpu_before = cpu_seconds(pid);
    let pg_before = tree_cpu_seconds(postmaster);
    let times: Vec<f64> = (0..scrapes.max(1)).map(|_| exporter.scrape().1).collect();
    let cpu = (cpu_seconds(pid) - cpu_before) / times.len() as f64;
    let pg_cpu = (tree_cpu_seconds(postmaster) - pg_before) / times.len() as f64;
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let conns_rest = tcp_connections_to(pid, pg_port);
    let peak_rss = peak_rss_mib(pid);
    exporter.stop();
    Run {
        series,
        p50_ms: quantile(&times, 0.5),
        p99_ms: quantile(&times, 0.99),
        cpu_per_k_series: cpu / series.max(1) as f64 * 1000.0,
        peak_rss_mib: peak_rss,
        conns_peak: peak.load(Ordering::SeqCst),
        conns_rest,
        pg_cpu_per_scrape: pg_cpu,
    }
}

fn print_table(size: usize, rounds: usize, scrapes: usize, ours: &[Run], peer: &[Run]) {
    println!(
        "\n{size} databases x {TABLES} tables, PostgreSQL 15; ours --disable-cache; {rounds} rounds of {scrapes} scrapes (ranges over the rounds)\n"
    );
    println!(
        "| {:<34} | {:>17} | {:>17} | {:>9} | {:<14} |",
        "figure", "ours", "postgres_exporter", "ours/peer", "target"
    );
    println!(
        "|{:-<36}|{:-<19}|{:-<19}|{:-<11}|{:-<16}|",
        "", "", "", "", ""
    );
    type Get = fn(&Run) -> f64;
    let rows: [(&str, Get, usize, &str); 8] = [
        ("series per scrape", |r| r.series as f64, 0, ""),
        ("scrape p50 (ms)", |r| r.p50_ms, 1, "<= 1x"),
        ("scrape p99 (ms)", |r| r.p99_ms, 1, ""),
        (
            "exporter CPU s per 1,000 series",
            |r| r.cpu_per_k_series,
            4,
            "<= 0.25x",
        ),
        ("peak RSS (MiB)", |r| r.peak_rss_mib, 1, "<= 0.5x"),
        ("connections at peak", |r| r.conns_peak as f64, 0, ""),
        (
            "connections at rest",
            |r| r.conns_rest as f64,
            0,
            "ours <= 2",
        ),
        (
            "PostgreSQL CPU s per scrape",
            |r| r.pg_cpu_per_scrape,
            3,
            "",
        ),
    ];
    for (label, get, decimals, target) in rows {
        let range = |runs: &[Run]| -> (String, f64) {
            if runs.is_empty() {
                return ("-".into(), f64::NAN);
            }
            let values: Vec<f64> = runs.iter().map(get).collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let text = if (hi - lo).abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
                format!("{lo:.decimals$}")
            } else {
                format!("{lo:.decimals$}-{hi:.decimals$}")
            };
            (text, quantile(&values, 0.5))
        };
        let (a, a_mid) = range(ours);
        let (b, b_mid) = range(peer);
        let ratio = if b_mid.is_finite() && b_mid > 0.0 {
            format!("{:.2}", a_mid / b_mid)
        } else {
            "-".into()
        };
        println!("| {label:<34} | {a:>17} | {b:>17} | {ratio:>9} | {target:<14} |");
    }
}
