//! Measuring an exporter process for the suite's benchmarks: start it, scrape it repeatedly,
//! and read its CPU time and peak RSS from `/proc` (the exporter process only).
//!
//! ```no_run
//! let figures = test_harness::bench::measure_exporter(
//!     std::path::Path::new("/tmp"), "ours", "target/release/pg_exporter",
//!     &["--web.listen-address=127.0.0.1:9630".into()], &[], 30,
//! );
//! println!("{} series, median {:.2} ms", figures.series, figures.median_ms);
//! ```

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ManagedChild;

/// What one measured run of an exporter gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExporterFigures {
    /// Samples in one scrape.
    pub series: usize,
    /// The first scrape after the exporter listened, milliseconds.
    pub first_ms: f64,
    /// Median scrape wall time, milliseconds.
    pub median_ms: f64,
    /// 90th percentile scrape wall time, milliseconds.
    pub p90_ms: f64,
    /// User + system CPU seconds per scrape.
    pub cpu_per_scrape: f64,
    /// Peak resident set size (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

impl ExporterFigures {
    /// CPU seconds per 1,000 series.
    pub fn cpu_per_k_series(&self) -> f64 {
        self.cpu_per_scrape / self.series.max(1) as f64 * 1000.0
    }
}

/// Starts `bin` with `args` (which must contain `--web.listen-address=127.0.0.1:PORT`) and
/// `env`, waits until it answers, scrapes `/metrics` once, then `scrapes` more times, and
/// stops it. Panics with the exporter's log tail when it does not come up.
pub fn measure_exporter(
    dir: &Path,
    name: &str,
    bin: &str,
    args: &[String],
    env: &[(&str, String)],
    scrapes: usize,
) -> ExporterFigures {
    let port: u16 = args
        .iter()
        .find_map(|a| a.strip_prefix("--web.listen-address=127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .expect("--web.listen-address=127.0.0.1:PORT in args");
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("PG_EXPORTER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = ManagedChild::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))
        .expect("exporter starts");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Any answer on the landing page means it listens; it does not scrape.
    while crate::http::get(&format!("http://127.0.0.1:{port}/"), &[]).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not listen: {}",
            child.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let scrape = || crate::http::get(&url, &[]).expect("scrape").body;
    let t = Instant::now();
    let first = scrape();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let series = first
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();

    let cpu_before = cpu_seconds(child.pid());
    let mut times = Vec::with_capacity(scrapes);
    for _ in 0..scrapes.max(1) {
        let t = Instant::now();
        let _ = scrape();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = (cpu_seconds(child.pid()) - cpu_before) / times.len() as f64;
    let peak = peak_rss_mib(child.pid());
    child.stop(Duration::from_secs(5));
    times.sort_by(f64::total_cmp);
    ExporterFigures {
        series,
        first_ms,
        median_ms: times[times.len() / 2],
        p90_ms: times[times.len() * 9 / 10],
        cpu_per_scrape: cpu,
        peak_rss_mib: peak,
    }
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat` counts USER_HZ = 100 ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / 100.0
}

/// Peak resident set size of a process, MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Current resident set size of a process (VmRSS), MiB; NaN when it is gone.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// TCP connections a process holds to `port` on the local host: its socket descriptors whose
/// remote port (in `/proc/<pid>/net/tcp` and `tcp6`) is `port`.
pub fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let remote_port = fields
                        .get(2)
                        .and_then(|r| r.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    // State 01 is ESTABLISHED.
                    remote_port == Some(port)
                        && fields.get(3) == Some(&"01")
                        && fields.get(9).is_some_and(|i| inodes.contains(*i))
                })
                .map(|_| ())
                .collect::<Vec<_>>()
        })
        .count()
}

/// An agent binary for a benchmark: `$<env>` if set, else `target/release/<name>` of this
/// workspace. Exits the benchmark with status 2 and the build command when it is missing.
pub fn release_binary(name: &str, env: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env).map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/release")
                .join(name)
        },
        std::path::PathBuf::from,
    );
    if !path.is_file() {
        eprintln!(
            "bench: {} missing: build it with `cargo build --release -p {name}` (or set {env})",
            path.display()
        );
        std::process::exit(2);
    }
    path
}
