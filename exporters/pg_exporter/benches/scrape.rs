//! Side-by-side benchmark: our pg_exporter and Debian's prometheus-postgres-exporter (0.11)
//! against one PostgreSQL 15 with 5 databases × 50 tables, in one run. Prints a table.
//!
//! Run with `cargo bench -p pg_exporter --bench scrape` (needs `scripts/setup`). Not run in CI.
//!
//! Measured per exporter: series per scrape; scrape wall time cold (every query executed:
//! ours with `--disable-cache`) and warm (ours serving its TTL cache) as medians; CPU seconds
//! per scrape and per 1,000 series (from /proc, the exporter process only); peak RSS (VmHWM).

use std::path::Path;

use test_harness::bench::{ExporterFigures, measure_exporter};
use test_harness::{PgVersion, PostgresBuilder, free_port};

const SCRAPES: usize = 30;
const PEER: &str = "/usr/bin/prometheus-postgres-exporter";

struct Figures {
    series: usize,
    first_ms: f64,
    cold_ms: f64,
    warm_ms: Option<f64>,
    cpu_per_scrape: f64,
    peak_rss_mib: f64,
}

impl Figures {
    /// Cold figures (every query executed) and, where there is a cache, the warm run's.
    fn new(cold: ExporterFigures, warm: Option<ExporterFigures>) -> Figures {
        Figures {
            series: cold.series,
            first_ms: cold.first_ms,
            cold_ms: cold.median_ms,
            warm_ms: warm.map(|w| w.median_ms),
            cpu_per_scrape: cold.cpu_per_scrape,
            peak_rss_mib: warm.map_or(cold.peak_rss_mib, |w| w.peak_rss_mib.max(cold.peak_rss_mib)),
        }
    }
}

fn main() {
    let dbs: Vec<(String, usize)> = (1..=5).map(|i| (format!("bench{i}"), 50)).collect();
    let dbs_ref: Vec<(&str, usize)> = dbs.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    eprintln!("bench: starting PostgreSQL 15 with 5 databases x 50 tables ...");
    let pg = PostgresBuilder::new(PgVersion::V15)
        .name("bench")
        .with_databases(&dbs_ref)
        .start()
        .expect("PostgreSQL starts");
    // Some traffic so that statistics views have rows.
    let status = pg
        .pgbench_command("bench1")
        .unwrap()
        .args(["-i", "-s", "1", "-q"])
        .output()
        .unwrap();
    assert!(status.status.success(), "pgbench -i");

    let dir = tempfile::tempdir().unwrap();
    let url = pg.url("postgres");
    let ours_bin = env!("CARGO_BIN_EXE_pg_exporter");
    let ours_args = |port: u16, extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            format!("--url={url}"),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--connect-timeout=2000".into(),
            "--exclude-database=template0,template1".into(),
            "--log.level=warn".into(),
        ];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };

    let cold = measure_exporter(
        dir.path(),
        "ours-cold",
        ours_bin,
        &ours_args(free_port().unwrap(), &["--disable-cache"]),
        &[],
        SCRAPES,
    );
    let warm = measure_exporter(
        dir.path(),
        "ours-warm",
        ours_bin,
        &ours_args(free_port().unwrap(), &[]),
        &[],
        SCRAPES,
    );
    let ours = Figures::new(cold, Some(warm));

    let peer = if Path::new(PEER).exists() {
        let port = free_port().unwrap();
        let run = measure_exporter(
            dir.path(),
            "postgres_exporter",
            PEER,
            &[
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--auto-discover-databases".into(),
                "--exclude-databases=template0,template1".into(),
                "--log.level=warn".into(),
            ],
            &[("DATA_SOURCE_NAME", format!("{url}?sslmode=disable"))],
            SCRAPES,
        );
        Some(Figures::new(run, None))
    } else {
        eprintln!(
            "bench: {PEER} missing (apt-get install prometheus-postgres-exporter); no peer column"
        );
        None
    };

    print_table(&ours, peer.as_ref());
}

fn print_table(ours: &Figures, peer: Option<&Figures>) {
    let per_k = |f: &Figures| f.cpu_per_scrape / f.series.max(1) as f64 * 1000.0;
    let row = |label: &str, a: String, b: Option<String>, ratio: Option<f64>| {
        println!(
            "| {label:<34} | {a:>14} | {:>22} | {:>8} |",
            b.unwrap_or_else(|| "-".into()),
            ratio.map_or("-".into(), |r| format!("{r:.2}"))
        );
    };
    println!(
        "\npg_exporter vs prometheus-postgres-exporter 0.11, PostgreSQL 15, 5 databases x 50 tables, {SCRAPES} scrapes each\n"
    );
    println!(
        "| {:<34} | {:>14} | {:>22} | {:>8} |",
        "figure", "ours", "postgres_exporter 0.11", "ours/peer"
    );
    println!("|{:-<36}|{:-<16}|{:-<24}|{:-<10}|", "", "", "", "");
    row(
        "series per scrape",
        ours.series.to_string(),
        peer.map(|p| p.series.to_string()),
        peer.map(|p| ours.series as f64 / p.series as f64),
    );
    row(
        "first scrape after start (ms)",
        format!("{:.1}", ours.first_ms),
        peer.map(|p| format!("{:.1}", p.first_ms)),
        peer.map(|p| ours.first_ms / p.first_ms),
    );
    row(
        "cold scrape, median (ms)",
        format!("{:.2}", ours.cold_ms),
        peer.map(|p| format!("{:.2}", p.cold_ms)),
        peer.map(|p| ours.cold_ms / p.cold_ms),
    );
    row(
        "warm (cached) scrape, median (ms)",
        ours.warm_ms.map_or("-".into(), |w| format!("{w:.2}")),
        peer.map(|_| "no cache".into()),
        None,
    );
    row(
        "CPU seconds per cold scrape",
        format!("{:.4}", ours.cpu_per_scrape),
        peer.map(|p| format!("{:.4}", p.cpu_per_scrape)),
        peer.map(|p| ours.cpu_per_scrape / p.cpu_per_scrape),
    );
    row(
        "CPU seconds per 1,000 series",
        format!("{:.4}", per_k(ours)),
        peer.map(|p| format!("{:.4}", per_k(p))),
        peer.map(|p| per_k(ours) / per_k(p)),
    );
    row(
        "peak RSS (MiB)",
        format!("{:.1}", ours.peak_rss_mib),
        peer.map(|p| format!("{:.1}", p.peak_rss_mib)),
        peer.map(|p| ours.peak_rss_mib / p.peak_rss_mib),
    );
    println!(
        "\nTargets: peak RSS <= 20 MiB; cached scrape < 5 ms; cold CPU per series <= 0.5x the peer's."
    );
}
