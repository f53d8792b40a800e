//! What each agent costs per node, and what a fleet of such nodes sends to VictoriaMetrics.
//! Prints two tables: the agents measured here, and the arithmetic for 100 instances.
//!
//! ```text
//! cargo build --release -p pg_exporter -p pgbouncer_exporter -p pgbackrest_exporter -p log_shipper
//! cargo bench -p test-harness --bench sizing
//! ```
//!
//! `PGSUITE_SIZING_INTERVAL` (seconds, default 10) and `PGSUITE_SIZING_SCRAPES` (default 12)
//! set the scrape interval and count; the binaries are `target/release/<name>` unless
//! `PGSUITE_<NAME>_BIN` says otherwise. Not run in CI.
//!
//! - A PostgreSQL 15 primary with a typical set of databases (three application databases of
//!   50 tables, each table with a primary key and 1,000 rows), Pgbouncer in front, a pgBackRest
//!   repository with a full backup, and log_shipper tailing the instance's csvlog.
//! - Every agent is scraped at the interval, all at once, as one scraper would, with
//!   `Accept-Encoding: gzip`: series per scrape, compressed and plain bytes, CPU per scrape
//!   (utime + stime from `/proc` over the scrapes, divided by their number), RSS (VmRSS at the
//!   end) and the median scrape time. pg_exporter runs with auto-discovery and its default
//!   collector set and cache TTLs; at a 10 s interval most TTLs expire between scrapes, so the
//!   figure is close to a cold scrape.
//! - Then a fourth database is added empty and given 50 tables, to price one database and one
//!   table in pg_exporter's series.
//! - The fleet table multiplies the per-instance series by 100 and divides by the interval
//!   (10 s and 60 s) to give active series and samples/s, beside VictoriaMetrics' published
//!   single-node capacity (its docs' "Capacity planning": 1.5+ million samples/s and 50+
//!   million active series on one node; the cluster version is recommended above about a
//!   million samples/s) with the 50 % headroom its docs advise.

use std::time::{Duration, Instant};

use test_harness::bench::{cpu_seconds, release_binary, rss_mib};
use test_harness::{Agent, BackupType, ClusterBuilder, PgVersion};

/// VictoriaMetrics single node, from its docs' capacity planning section.
const VM_SAMPLES_PER_S: f64 = 1.5e6;
const VM_ACTIVE_SERIES: f64 = 50e6;
/// The docs' advice: keep 50 % of CPU and RAM spare.
const HEADROOM: f64 = 0.5;
/// Above this ingestion rate the docs recommend the cluster version.
const VM_CLUSTER_ABOVE: f64 = 1e6;
const FLEET: f64 = 100.0;

#[derive(Debug, Default, Clone)]
struct Figures {
    series: usize,
    plain_bytes: usize,
    gzip_bytes: usize,
    cpu_ms_per_scrape: f64,
    rss_mib: f64,
    median_ms: f64,
}

/// One scrape with `Accept-Encoding: gzip`: (series, plain bytes, compressed bytes, ms).
fn scrape(url: &str) -> (usize, usize, usize, f64) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build(),
    );
    let t = Instant::now();
    let mut response = agent
        .get(url)
        .header("Accept-Encoding", "gzip")
        .call()
        .expect("scrape");
    let gzipped = response
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let raw = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .expect("body");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let plain = if gzipped {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
            .expect("gzip body");
        out
    } else {
        raw.clone()
    };
    let text = String::from_utf8_lossy(&plain);
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    (series, plain.len(), raw.len(), ms)
}

/// Scrapes every agent `count` times at `interval`, all at each tick.
fn measure(agents: &[(&str, &Agent)], interval: Duration, count: usize) -> Vec<Figures> {
    // A first scrape warms connections and plans; it is not counted.
    for (_, a) in agents {
        scrape(&a.url("/metrics"));
    }
    let cpu_before: Vec<f64> = agents.iter().map(|(_, a)| cpu_seconds(a.pid())).collect();
    let mut runs: Vec<Vec<(usize, usize, usize, f64)>> = vec![Vec::new(); agents.len()];
    for i in 0..count {
        let tick = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = agents
                .iter()
                .map(|(_, a)| s.spawn(move || scrape(&a.url("/metrics"))))
                .collect();
            for (run, h) in runs.iter_mut().zip(handles) {
                run.push(h.join().unwrap());
            }
        });
        eprint!("\rsizing: scrape {}/{count}", i + 1);
        std::thread::sleep(interval.saturating_sub(tick.elapsed()));
    }
    eprintln!();
    agents
        .iter()
        .zip(runs)
        .zip(cpu_before)
        .map(|(((_, a), run), before)| {
            let mut ms: Vec<f64> = run.iter().map(|r| r.3).collect();
            ms.sort_by(f64::total_cmp);
            let last = run.last().copied().unwrap_or_default();
            Figures {
                series: last.0,
                plain_bytes: last.1,
                gzip_bytes: last.2,
                cpu_ms_per_scrape: (cpu_seconds(a.pid()) - before) / run.len() as f64 * 1e3,
                rss_mib: rss_mib(a.pid()),
                median_ms: ms[ms.len() / 2],
            }
        })
        .collect()
}

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let interval = Duration::from_secs(env("PGSUITE_SIZING_INTERVAL", 10));
    let count = env("PGSUITE_SIZING_SCRAPES", 12) as usize;
    let bins = [
        release_binary("pg_exporter", "PGSUITE_PG_EXPORTER_BIN"),
        release_binary("pgbouncer_exporter", "PGSUITE_PGBOUNCER_EXPORTER_BIN"),
        release_binary("pgbackrest_exporter", "PGSUITE_PGBACKREST_EXPORTER_BIN"),
        release_binary("log_shipper", "PGSUITE_LOG_SHIPPER_BIN"),
    ];
    eprintln!("sizing: starting PostgreSQL 15 (3 databases x 50 tables), Pgbouncer, pgBackRest …");
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .pgbouncer()
        .pgbackrest()
        .with_databases(&[("app1", 50), ("app2", 50), ("app3", 50)])
        .start()
        .expect("cluster");
    cluster
        .pgbackrest()
        .backup(BackupType::Full)
        .expect("backup");
    let pg = cluster.primary();

    let pg_exporter = Agent::builder("pg_exporter", &bins[0])
        .arg(format!("--url={}", pg.url("postgres")))
        .arg("--connect-timeout=1000")
        .env_remove("PG_EXPORTER_CONFIG")
        .start();
    let pgbouncer_exporter = Agent::builder("pgbouncer_exporter", &bins[1])
        .arg(format!("--url={}", cluster.pgbouncer().admin_url()))
        .env_remove("PG_EXPORTER_CONFIG")
        .start();
    let mut backrest = Agent::builder("pgbackrest_exporter", &bins[2]).arg(format!(
        "--backrest.config={}",
        cluster.pgbackrest().config_path().display()
    ));
    if let Ok(user) = test_harness::privileges::service_user()
        && user.switch_user
    {
        backrest = backrest.arg(format!("--backrest.user={}", user.name));
    }
    let pgbackrest_exporter = backrest.start();
    let shipper_builder = Agent::builder("log_shipper", &bins[3]);
    let config = shipper_builder.dir().join("log_shipper.yml");
    let out = shipper_builder.dir().join("shipped.jsonl");
    std::fs::write(
        &config,
        format!(
            "checkpoint_dir: {}\nsources:\n  postgres:\n    include: ['{}/*.csv']\n    \
             format: postgres_csv\nsinks:\n  file:\n    type: file\n    path: {}\n",
            shipper_builder.dir().join("checkpoints").display(),
            pg.log_dir().display(),
            out.display()
        ),
    )
    .unwrap();
    let log_shipper = shipper_builder
        .arg(format!("--config={}", config.display()))
        .start();

    let agents = [
        ("pg_exporter", &pg_exporter),
        ("pgbouncer_exporter", &pgbouncer_exporter),
        ("pgbackrest_exporter", &pgbackrest_exporter),
        ("log_shipper", &log_shipper),
    ];
    eprintln!(
        "sizing: {count} scrapes of every agent every {}s …",
        interval.as_secs()
    );
    let figures = measure(&agents, interval, count);

    // The price of one more database, and of 50 more tables in it.
    let base = figures[0].series;
    pg.create_database("sizing_extra", 0).expect("database");
    std::thread::sleep(Duration::from_secs(2));
    let with_db = scrape(&pg_exporter.url("/metrics")).0;
    let mut script = String::new();
    for i in 1..=50 {
        script.push_str(&format!(
            "CREATE TABLE x{i} (id integer PRIMARY KEY, payload text NOT NULL);\n\
             INSERT INTO x{i} SELECT g, md5(g::text) FROM generate_series(1, 1000) g;\n"
        ));
    }
    script.push_str("ANALYZE;\n");
    pg.execute("sizing_extra", &script).expect("tables");
    std::thread::sleep(interval);
    let with_tables = scrape(&pg_exporter.url("/metrics")).0;
    let per_db = with_db.saturating_sub(base);
    let per_table = with_tables.saturating_sub(with_db) as f64 / 50.0;

    println!(
        "\nPer agent, one PostgreSQL 15 instance with 3 databases x 50 tables, scraped every {}s ({count} scrapes, release binaries)\n",
        interval.as_secs()
    );
    println!(
        "| agent | series | bytes per scrape (plain) | bytes per scrape (gzip) | CPU ms per scrape | RSS MiB | scrape p50 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for ((name, _), f) in agents.iter().zip(&figures) {
        println!(
            "| {name} | {} | {} | {} | {:.2} | {:.1} | {:.1} |",
            f.series, f.plain_bytes, f.gzip_bytes, f.cpu_ms_per_scrape, f.rss_mib, f.median_ms
        );
    }
    let per_instance: usize = figures.iter().map(|f| f.series).sum();
    let gzip_per_instance: usize = figures.iter().map(|f| f.gzip_bytes).sum();
    let cpu_per_instance: f64 = figures.iter().map(|f| f.cpu_ms_per_scrape).sum();
    println!(
        "| **per instance** | **{per_instance}** | {} | **{gzip_per_instance}** | **{cpu_per_instance:.2}** | {:.1} | |",
        figures.iter().map(|f| f.plain_bytes).sum::<usize>(),
        figures.iter().map(|f| f.rss_mib).sum::<f64>()
    );
    println!(
        "\npg_exporter: one more (empty) database adds {per_db} series; each table adds {per_table:.1} series."
    );

    println!(
        "\nFleet of {FLEET:.0} such instances (each: pg_exporter, pgbouncer_exporter, pgbackrest_exporter, log_shipper)\n"
    );
    println!(
        "| scrape interval | active series | samples/s | scrape traffic (gzip) | agent CPU per node | VictoriaMetrics single node, 50 % headroom |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    for secs in [10.0f64, 60.0] {
        let series = per_instance as f64 * FLEET;
        let samples = series / secs;
        let traffic = gzip_per_instance as f64 * FLEET / secs;
        let cpu_share = cpu_per_instance / 1e3 / secs * 100.0;
        let per_node = (VM_SAMPLES_PER_S * HEADROOM * secs / per_instance as f64)
            .min(VM_ACTIVE_SERIES * HEADROOM / per_instance as f64);
        let topology = if samples > VM_CLUSTER_ABOVE {
            "cluster version (over a million samples/s)"
        } else {
            "one single node (vmagent in front of several sites)"
        };
        println!(
            "| {secs:.0} s | {series:.0} | {samples:.0} | {:.1} KiB/s | {cpu_share:.2} % of a core | {topology}; one node holds ≈ {per_node:.0} instances |",
            traffic / 1024.0
        );
    }
}
