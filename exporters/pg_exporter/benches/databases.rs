//! Many databases on one instance: our pg_exporter and Debian's prometheus-postgres-exporter
//! (0.11) with auto-discovery, against one PostgreSQL 15 holding 10, 50, 100 and 200
//! databases of 10 tables each. Prints one table per size.
//!
//! Run with `cargo bench -p pg_exporter --bench databases` (needs `scripts/setup`). Not run in
//! CI. `BENCH_SIZES` (default `10,50,100,200`), `BENCH_ROUNDS` (default 3) and
//! `BENCH_SCRAPES` (default 20) change the run; each figure is given as the range over the
//! rounds, the ratio from the medians. `PG_EXPORTER_BIN` measures another build of ours,
//! `BENCH_PEER=0` leaves the peer out, and `PG_EXPORTER_BASELINE=<binary>` adds, in the same
//! rounds, another build of ours (an earlier commit, e.g. 897f67c which kept a connection to
//! every discovered database) and a table comparing the two.
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
//! autovacuum is off, so this is the backends serving the exporter). Then ours once more with
//! its TTL cache (the built-in collectors' TTLs), for the p50 of scrapes the cache serves.
//!
//! First it prints what a new connection costs PostgreSQL here (`pgbench -C` against one
//! tenant database: per connection, `SELECT 1` only), since ours connects to each discovered
//! database at each scrape and closes the connection after.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use test_harness::bench::{
    BenchedExporter, connections_to, cpu_seconds, peak_rss_mib, quantile, series_count,
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
    /// Ours with its TTL cache: the p50 of scrapes it serves.
    warm_p50_ms: f64,
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
    let ours_bin = std::env::var("PG_EXPORTER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pg_exporter").into());
    let baseline = std::env::var("PG_EXPORTER_BASELINE").ok();
    let want_peer = std::env::var("BENCH_PEER").map_or(true, |v| v != "0");
    let have_peer = want_peer && Path::new(PEER).exists();
    if want_peer && !have_peer {
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
            // CREATE DATABASE … FILE_COPY checkpoints: done before PostgreSQL's CPU is counted.
            script.push_str("CHECKPOINT;\n");
            pg.execute("postgres", &script).unwrap();
            std::thread::sleep(Duration::from_secs(2));
        }
        if created == sizes[0] {
            print_connection_cost(&pg, postmaster, dir.path());
        }
        let mut ours = Vec::new();
        let mut peer = Vec::new();
        let mut base_runs = Vec::new();
        for round in 1..=rounds {
            eprintln!("bench: {size} databases, round {round}/{rounds}");
            let mut run = run_ours(&pg, postmaster, dir.path(), &ours_bin, scrapes, false);
            run.warm_p50_ms =
                run_ours(&pg, postmaster, dir.path(), &ours_bin, scrapes, true).p50_ms;
            ours.push(run);
            if have_peer {
                peer.push(run_peer(&pg, postmaster, dir.path(), scrapes));
            }
            if let Some(base) = &baseline {
                let mut run = run_ours(&pg, postmaster, dir.path(), base, scrapes, false);
                run.warm_p50_ms = run_ours(&pg, postmaster, dir.path(), base, scrapes, true).p50_ms;
                base_runs.push(run);
            }
        }
        print_table(
            &format!(
                "{size} databases x {TABLES} tables, PostgreSQL 15; ours --disable-cache (and once \
                 cached); {rounds} rounds of {scrapes} scrapes (ranges over the rounds)"
            ),
            ("ours", "postgres_exporter"),
            (&ours, &peer),
            false,
        );
        if let Some(base) = &baseline {
            print_table(
                &format!("{size} databases: this build vs the baseline build ({base})"),
                ("this build", "baseline"),
                (&ours, &base_runs),
                true,
            );
        }
    }
}

/// Ours, every query at every scrape, or with its TTL cache when `cached`.
fn run_ours(
    pg: &Postgres,
    postmaster: u32,
    dir: &Path,
    bin: &str,
    scrapes: usize,
    cached: bool,
) -> Run {
    let port = free_port().unwrap();
    let mut args = vec![
        format!("--url={}", pg.url("postgres")),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--auto-discovery".into(),
        "--connect-timeout=2000".into(),
        "--exclude-database=template0,template1".into(),
        "--log.level=warn".into(),
    ];
    if !cached {
        args.push("--disable-cache".into());
    }
    let exporter = BenchedExporter::start(dir, "ours", bin, &args, &[]);
    measure(pg, postmaster, exporter, scrapes)
}

/// What a new connection costs PostgreSQL: `pgbench -C` (a connection per transaction) and
/// without, `SELECT 1` each, on one tenant database.
fn print_connection_cost(pg: &Postgres, postmaster: u32, dir: &Path) {
    const N: usize = 200;
    let script = dir.join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let per = |reconnect: bool| -> (f64, f64) {
        let mut cmd = pg.pgbench_command("tenant_001").unwrap();
        cmd.args(["-n", "-t", &N.to_string(), "-f"]).arg(&script);
        if reconnect {
            cmd.arg("-C");
        }
        let before = tree_cpu_seconds(postmaster);
        let t = std::time::Instant::now();
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wall = t.elapsed().as_secs_f64() / N as f64 * 1e3;
        (
            wall,
            (tree_cpu_seconds(postmaster) - before) / N as f64 * 1e3,
        )
    };
    let (wall_c, cpu_c) = per(true);
    let (wall, cpu) = per(false);
    println!(
        "\nA new connection here: {:.2} ms wall and {:.2} ms of PostgreSQL CPU more than a query on an open one (pgbench -C, {N} x SELECT 1: {wall_c:.2} ms and {cpu_c:.2} ms each; without -C: {wall:.2} ms and {cpu:.2} ms)",
        wall_c - wall,
        cpu_c - cpu
    );
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
                peak.fetch_max(connections_to(pid, pg_port), Ordering::SeqCst);
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
    let conns_rest = connections_to(pid, pg_port);
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
        ..Run::default()
    }
}

/// One row of a table: label, figure, decimals, target.
type Row = (&'static str, fn(&Run) -> f64, usize, &'static str);

const ROWS: [Row; 9] = [
    ("series per scrape", |r| r.series as f64, 0, ""),
    ("scrape p50 (ms)", |r| r.p50_ms, 1, "<= 1x"),
    ("scrape p50, ours cached (ms)", |r| r.warm_p50_ms, 1, ""),
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

/// Prints `rows` for runs `a` and `b` side by side (ranges over the rounds) with the ratio
/// of their medians; `b` empty prints `-`, and `cached_b` says whether the cached p50 exists
/// for `b`.
fn print_table(title: &str, names: (&str, &str), runs: (&[Run], &[Run]), cached_b: bool) {
    println!("\n{title}\n");
    println!(
        "| {:<31} | {:>17} | {:>17} | {:>9} | {:<9} |",
        "figure", names.0, names.1, "ratio", "target"
    );
    println!(
        "|{:-<33}|{:-<19}|{:-<19}|{:-<11}|{:-<11}|",
        "", "", "", "", ""
    );
    for (label, get, decimals, target) in ROWS {
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
        let (a, a_mid) = range(runs.0);
        let (b, b_mid) = if label.contains("cached") && !cached_b {
            ("no cache".into(), f64::NAN)
        } else {
            range(runs.1)
        };
        let ratio = if b_mid.is_finite() && b_mid > 0.0 {
            format!("{:.2}", a_mid / b_mid)
        } else {
            "-".into()
        };
        println!("| {label:<31} | {a:>17} | {b:>17} | {ratio:>9} | {target:<9} |");
    }
}
