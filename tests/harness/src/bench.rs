//! Measuring an exporter process for the suite's benchmarks: start it, scrape it repeatedly,
//! and read its CPU time and peak RSS from `/proc` (the exporter process only); also the
//! connections it holds to a port and the CPU of a process tree (a postmaster and its
//! backends).
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

/// An exporter process started for a benchmark: listening on the loopback port named by its
/// `--web.listen-address=127.0.0.1:PORT` argument, stopped on [`stop`](Self::stop) or drop.
#[derive(Debug)]
pub struct BenchedExporter {
    child: ManagedChild,
    name: String,
    port: u16,
}

impl BenchedExporter {
    /// Starts `bin` with `args` (which must contain `--web.listen-address=127.0.0.1:PORT`)
    /// and `env`, logging to `dir/<name>.log`, and waits until it answers on `/` (which does
    /// not scrape). Panics with the exporter's log tail when it does not come up in 30 s.
    pub fn start(
        dir: &Path,
        name: &str,
        bin: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> BenchedExporter {
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::http::get(&format!("http://127.0.0.1:{port}/"), &[]).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} did not listen: {}",
                child.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        BenchedExporter {
            child,
            name: name.to_owned(),
            port,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// One scrape of `/metrics`: the body and its wall time in milliseconds. Panics when it
    /// does not answer.
    pub fn scrape(&self) -> (String, f64) {
        let t = Instant::now();
        let body = crate::http::get(&format!("http://127.0.0.1:{}/metrics", self.port), &[])
            .unwrap_or_else(|e| panic!("{}: scrape failed: {e:#}", self.name))
            .body;
        (body, t.elapsed().as_secs_f64() * 1e3)
    }

    /// Stops it (SIGTERM, SIGKILL after 5 s).
    pub fn stop(self) {
        self.child.stop(Duration::from_secs(5));
    }
}

/// Samples in a text exposition body.
pub fn series_count(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

/// The value at quantile `q` (0 to 1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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
    let exporter = BenchedExporter::start(dir, name, bin, args, env);
    let (first, first_ms) = exporter.scrape();
    let series = series_count(&first);

    let cpu_before = cpu_seconds(exporter.pid());
    let mut times = Vec::with_capacity(scrapes);
    for _ in 0..scrapes.max(1) {
        times.push(exporter.scrape().1);
    }
    let cpu = (cpu_seconds(exporter.pid()) - cpu_before) / times.len() as f64;
    let peak = peak_rss_mib(exporter.pid());
    exporter.stop();
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

/// CPU seconds of process `root`, its live children and the children it has reaped (the
/// postmaster and its backends, also those that came and went).
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields = |stat: &str| -> Vec<String> {
        stat.rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let ticks =
        |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let own = fields(&stat(&root.to_string()));
    // utime, stime, cutime, cstime (fields 14–17 of proc(5), counted after the name).
    let mut total = ticks(&own, 11) + ticks(&own, 12) + ticks(&own, 13) + ticks(&own, 14);
    let root = root.to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_string_lossy();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let f = fields(&stat(&pid));
        if f.get(1) == Some(&root) {
            total += ticks(&f, 11) + ticks(&f, 12);
        }
    }
    total / 100.0
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
