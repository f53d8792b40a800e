//! Benchmark of pgbouncer_exporter against the harness's Pgbouncer 1.18 in front of
//! PostgreSQL 15, with 7 pools that have seen `pgbench` traffic. Prints a table.
//!
//! Run with `cargo bench -p pgbouncer_exporter --bench scrape` (needs `scripts/setup`). Not
//! run in CI.
//!
//! Measured: series per scrape; scrape wall time cold (every collector executed:
//! `--disable-cache`) and warm (served from the 10 s TTL cache) as medians; CPU seconds per
//! cold scrape and per 1,000 series (from /proc, the exporter process only); peak RSS (VmHWM).
//!
//! There is no peer column: Debian's python `prometheus-pgbouncer-exporter` (1.7) fails at
//! start against Pgbouncer 1.18, and the Go pg_exporter is not packaged for Debian.

use std::path::Path;
use std::process::Stdio;

use test_harness::bench::{ExporterFigures, measure_exporter};
use test_harness::{ClusterBuilder, PgVersion, free_port};

const SCRAPES: usize = 200;
const PEER: &str = "/usr/bin/prometheus-pgbouncer-exporter";
const DATABASES: [&str; 5] = ["bench1", "bench2", "bench3", "bench4", "bench5"];

fn main() {
    eprintln!("bench: starting PostgreSQL 15 and Pgbouncer 1.18 ...");
    let dbs: Vec<(&str, usize)> = DATABASES.iter().map(|d| (*d, 1)).collect();
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .with_databases(&dbs)
        .pgbouncer()
        .start()
        .expect("cluster starts");
    let bouncer = cluster.pgbouncer();
    // Traffic through Pgbouncer on every database, so each has a pool and statistics.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let script = script.display().to_string();
    let runs: Vec<_> = DATABASES
        .iter()
        .chain(&["postgres", test_harness::pgbouncer::SINGLE_POOL_DB])
        .map(|db| {
            cluster
                .primary()
                .pgbench_command(db)
                .unwrap()
                .env("PGPORT", bouncer.port().to_string())
                .args(["-n", "-c", "2", "-T", "2", "-f", script.as_str()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut run in runs {
        assert!(run.wait().unwrap().success(), "pgbench through Pgbouncer");
    }

    let url = bouncer.admin_url();
    let bin = env!("CARGO_BIN_EXE_pgbouncer_exporter");
    let args = |port: u16, extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            format!("--url={url}"),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--connect-timeout=2000".into(),
            "--log.level=warn".into(),
        ];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let cold = measure_exporter(
        dir.path(),
        "cold",
        bin,
        &args(free_port().unwrap(), &["--disable-cache"]),
        &[],
        SCRAPES,
    );
    let warm = measure_exporter(
        dir.path(),
        "warm",
        bin,
        &args(free_port().unwrap(), &[]),
        &[],
        SCRAPES,
    );
    print_table(&cold, &warm);
}

fn print_table(cold: &ExporterFigures, warm: &ExporterFigures) {
    let per_k = ExporterFigures::cpu_per_k_series;
    println!(
        "\npgbouncer_exporter, Pgbouncer 1.18 with 7 pools after pgbench traffic, {SCRAPES} scrapes per run\n"
    );
    println!(
        "| {:<34} | {:>15} | {:>15} |",
        "figure", "cold (no cache)", "warm (TTL 10s)"
    );
    println!("|{:-<36}|{:-<17}|{:-<17}|", "", "", "");
    let row = |label: &str, a: String, b: String| println!("| {label:<34} | {a:>15} | {b:>15} |");
    row(
        "series per scrape",
        cold.series.to_string(),
        warm.series.to_string(),
    );
    row(
        "first scrape after start (ms)",
        format!("{:.2}", cold.first_ms),
        format!("{:.2}", warm.first_ms),
    );
    row(
        "scrape, median (ms)",
        format!("{:.2}", cold.median_ms),
        format!("{:.2}", warm.median_ms),
    );
    row(
        "scrape, 90th percentile (ms)",
        format!("{:.2}", cold.p90_ms),
        format!("{:.2}", warm.p90_ms),
    );
    row(
        "CPU seconds per scrape",
        format!("{:.5}", cold.cpu_per_scrape),
        format!("{:.5}", warm.cpu_per_scrape),
    );
    row(
        "CPU seconds per 1,000 series",
        format!("{:.5}", per_k(cold)),
        format!("{:.5}", per_k(warm)),
    );
    row(
        "peak RSS (MiB)",
        format!("{:.1}", cold.peak_rss_mib),
        format!("{:.1}", warm.peak_rss_mib),
    );
    let installed = if Path::new(PEER).exists() {
        "installed here, not run"
    } else {
        "not installed here"
    };
    println!(
        "\nNo peer column: Debian's python prometheus-pgbouncer-exporter 1.7 ({PEER}, {installed}) \
         fails at start against Pgbouncer 1.18, and the Go pg_exporter is not packaged for Debian; \
         the figures above are absolute."
    );
}
