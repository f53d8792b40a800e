//! A long run of `log_shipper` under everything a database host does to it, checked for loss
//! and for growth. Prints a row per minute and a verdict; exits non-zero when a check fails.
//!
//! Run with `cargo bench -p log_shipper --bench soak` (not run in CI; 30 minutes by default).
//! `LOG_SHIPPER_SOAK_MINUTES` sets the length, `LOG_SHIPPER_SOAK_RATE` the csvlog lines per
//! second (default 500), `LOG_SHIPPER_BIN` another binary to run.
//!
//! - The release binary ships a PostgreSQL-15-style csvlog (`postgresql.csv`, one multi-line
//!   message in every 50) written at a steady rate, to a VictoriaLogs JSON-lines receiver in this
//!   process that decodes every line on its own and records each message's sequence number in a
//!   bitmap (the independent count).
//! - Every 30 s (from 0:15) the log rotates, in turn by rename (the writer keeps writing a few lines to the
//!   renamed file before it reopens), by `copytruncate` and by truncation in place (done once
//!   the shipper has read the file, as PostgreSQL truncates a file hours after writing it).
//!   Rotated files are deleted 3 minutes after their rotation.
//! - The receiver goes down (connection refused) for 20 s every 3 minutes, from 2:05 on, so
//!   that the minute marks, where the table is sampled, fall at least 35 s after an outage.
//! - `SIGHUP` every 5 minutes (from 4:40).
//! - Each minute: the shipper's RSS and open descriptors from `/proc` (how many are log files,
//!   and how many are deleted files still held), then its file lag from its own `/metrics`, the
//!   records written and delivered (distinct and duplicates).
//! - At the end, after the writer stops: every record written arrived; from minute 5 on, RSS
//!   grows by no more than 5 % over its minute-5 value, and so do the descriptors other than
//!   the log files (5 % or one descriptor: a count of about 15 cannot move by less than 5 %);
//!   the log files held open never outnumber those in the directory, and no deleted file is
//!   held. (The log files held follow the rotated files present, 3 to 6 here, by design: a
//!   renamed file is kept open for the writes that still reach it.)

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use test_harness::bench::{cpu_seconds, open_fds, rss_mib};
use test_harness::free_port;

const ROTATE_EVERY: Duration = Duration::from_secs(30);
const FLAP_EVERY: Duration = Duration::from_secs(180);
/// The first outage, at 2:05: every outage ends 35 s before a minute mark, and memory freed by
/// the drain has been given back by then (jemalloc's decay takes about 10 s).
const FLAP_FIRST: Duration = Duration::from_secs(125);
const FLAP_DOWN: Duration = Duration::from_secs(20);
const HUP_EVERY: Duration = Duration::from_secs(300);
/// The first rotation and the first SIGHUP: 15 s after and 20 s before a minute mark, so that
/// no sample of the table falls on one.
const ROTATE_FIRST: Duration = Duration::from_secs(15);
const HUP_FIRST: Duration = Duration::from_secs(280);
const DELETE_ROTATED_AFTER: Duration = Duration::from_secs(180);
/// Growth allowed after minute 5, relative to minute 5.
const FLAT: f64 = 0.05;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let minutes = env_u64("LOG_SHIPPER_SOAK_MINUTES", 30);
    let rate = env_u64("LOG_SHIPPER_SOAK_RATE", 500);
    let bin = std::env::var("LOG_SHIPPER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_log_shipper").to_owned());
    let work = tempfile::Builder::new()
        .prefix("log_shipper_soak")
        .tempdir()
        .unwrap();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Seen::default());
    let mut receiver = rt.block_on(Receiver::start(seen.clone()));

    let metrics_port = free_port().unwrap();
    let config = work.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        format!(
            "checkpoint_dir: {dir}/checkpoints\ndead_letter_dir: {dir}/dead_letter\n\
             fields: {{ins: pg-soak-1, ip: 127.0.0.1, cls: pg-soak}}\n\
             sources:\n  postgres:\n    include: ['{logs}/postgresql.csv*']\n    \
             format: postgres_csv\n    read_from: beginning\n    rescan_interval: 1s\n\
             sinks:\n  vl:\n    type: victorialogs\n    endpoint: {url}\n    \
             batch: {{timeout: 1s}}\n    retry: {{initial_backoff: 200ms, max_backoff: 5s}}\n",
            dir = work.path().display(),
            logs = logs.display(),
            url = receiver.url(),
        ),
    )
    .unwrap();
    let shipper_log = work.path().join("log_shipper.log");
    let shipper = Shipper(
        Command::new(&bin)
            .arg(format!("--config={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{metrics_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&shipper_log).unwrap())
            .spawn()
            .expect("log_shipper starts"),
    );
    let pid = shipper.0.id();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    eprintln!(
        "soak: {minutes} min, {rate} lines/s, rotation every {}s (rename, copytruncate, in place), \
         receiver down {}s every {}s, SIGHUP every {}s; shipper {bin} (pid {pid}), work dir {}",
        ROTATE_EVERY.as_secs(),
        FLAP_DOWN.as_secs(),
        FLAP_EVERY.as_secs(),
        HUP_EVERY.as_secs(),
        work.path().display()
    );

    let writer = Writer::start(logs.clone(), rate, metrics_url.clone());
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut next_flap = start + FLAP_FIRST;
    let mut next_hup = start + HUP_FIRST;
    let mut up_again: Option<Instant> = None;
    let mut rows: Vec<Minute> = Vec::new();
    let mut flaps = 0;
    let mut hups = 0;
    println!(
        "\n| minute | RSS MiB | open fds | log files open / present | deleted files held | lag bytes | written | delivered | duplicates | CPU s | events |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut events: Vec<String> = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        if let Some(at) = up_again
            && now >= at
        {
            rt.block_on(receiver.restart());
            up_again = None;
            events.push("receiver up".into());
        }
        if now >= next_flap {
            rt.block_on(receiver.stop());
            up_again = Some(now + FLAP_DOWN);
            next_flap += FLAP_EVERY;
            flaps += 1;
            events.push("receiver down".into());
        }
        if now >= next_hup {
            let _ = Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status();
            next_hup += HUP_EVERY;
            hups += 1;
            events.push("SIGHUP".into());
        }
        let minute = rows.len() as u64 + 1;
        if now >= start + Duration::from_secs(minute * 60) {
            let row = Minute::sample(minute, pid, &metrics_url, &writer, &seen, &events);
            row.print();
            rows.push(row);
            events.clear();
            assert!(
                shipper_is_running(pid),
                "the shipper exited; its log ends with:\n{}",
                tail(&shipper_log)
            );
        }
    }
    if up_again.is_some() {
        rt.block_on(receiver.restart());
    }
    let written = writer.stop();
    eprintln!("soak: writer stopped after {written} records; waiting for the rest to arrive …");
    let deadline = Instant::now() + Duration::from_secs(180);
    while seen.distinct() < written && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = Minute::sample(
        rows.len() as u64 + 1,
        pid,
        &metrics_url,
        &writer,
        &seen,
        &["end".to_owned()],
    );
    last.print();
    drop(shipper);

    let missing = seen.missing(written);
    let checks = verdict(&rows, written, &missing, &seen);
    println!(
        "\nsoak: {written} records written, {} delivered ({} duplicates), {flaps} receiver outages, \
         {hups} SIGHUPs, {} rotations",
        seen.distinct(),
        seen.duplicates.load(Ordering::Relaxed),
        writer.rotations.load(Ordering::Relaxed),
    );
    let mut failed = false;
    for (ok, what) in checks {
        println!("  {} {what}", if ok { "PASS" } else { "FAIL" });
        failed |= !ok;
    }
    if failed {
        eprintln!("shipper log tail:\n{}", tail(&shipper_log));
        std::process::exit(1);
    }
}

/// The checks of the run: nothing lost, RSS and descriptors flat from minute 5 on.
fn verdict(rows: &[Minute], written: u64, missing: &[u64], seen: &Seen) -> Vec<(bool, String)> {
    let mut checks = vec![(
        missing.is_empty() && seen.distinct() == written,
        format!(
            "every record written arrived ({} of {written}; first missing: {:?})",
            seen.distinct(),
            &missing[..missing.len().min(10)]
        ),
    )];
    let Some(base) = rows.get(4) else {
        checks.push((
            false,
            "RSS and descriptors flat: the run is shorter than 5 minutes".into(),
        ));
        return checks;
    };
    let later = &rows[5..];
    let rss_growth = later
        .iter()
        .map(|r| (r.rss_mib - base.rss_mib) / base.rss_mib)
        .fold(f64::MIN, f64::max);
    let rss_low = later.iter().map(|r| r.rss_mib).fold(f64::MAX, f64::min);
    let other = |r: &Minute| r.fds - r.log_files;
    let fds_growth = later
        .iter()
        .map(|r| other(r) as i64 - other(base) as i64)
        .max()
        .unwrap_or(0);
    let held = rows.iter().map(|r| r.deleted_held).max().unwrap_or(0);
    let too_many = rows
        .iter()
        .filter(|r| r.log_files > r.files_present)
        .count();
    checks.push((
        held == 0,
        format!("no deleted log file held open (at most {held} in a minute)"),
    ));
    checks.push((
        too_many == 0,
        format!("log files held open never outnumber the files present ({too_many} minutes where they did)"),
    ));
    checks.push((
        rss_growth <= FLAT,
        format!(
            "RSS after minute 5 at most {:.0} % above minute 5's {:.1} MiB (largest growth {:+.1} %, lowest {rss_low:.1} MiB)",
            FLAT * 100.0,
            base.rss_mib,
            rss_growth * 100.0
        ),
    ));
    checks.push((
        fds_growth as f64 <= (other(base) as f64 * FLAT).max(1.0),
        format!(
            "descriptors other than log files after minute 5 at most {:.0} % (or one) above minute 5's {} (largest growth {fds_growth:+})",
            FLAT * 100.0,
            other(base)
        ),
    ));
    checks
}

/// One row of the table.
#[derive(Debug)]
struct Minute {
    minute: u64,
    rss_mib: f64,
    fds: usize,
    log_files: usize,
    files_present: usize,
    deleted_held: usize,
    lag: f64,
    written: u64,
    delivered: u64,
    duplicates: u64,
    cpu: f64,
    events: String,
}

impl Minute {
    fn sample(
        minute: u64,
        pid: u32,
        metrics_url: &str,
        writer: &Writer,
        seen: &Seen,
        events: &[String],
    ) -> Minute {
        // /proc first: the scrape of /metrics below opens a descriptor of its own.
        let (rss_mib, fds) = (rss_mib(pid), open_fds(pid));
        let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .collect();
        Minute {
            minute,
            rss_mib,
            fds,
            log_files: targets
                .iter()
                .filter(|t| t.contains("/logs/postgresql.csv"))
                .count(),
            deleted_held: targets.iter().filter(|t| t.ends_with(" (deleted)")).count(),
            files_present: std::fs::read_dir(&writer.logs).map_or(0, |d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("postgresql.csv")
                    })
                    .count()
            }),
            lag: metric_sum(metrics_url, "log_shipper_file_lag_bytes").unwrap_or(f64::NAN),
            written: writer.written.load(Ordering::Relaxed),
            delivered: seen.distinct(),
            duplicates: seen.duplicates.load(Ordering::Relaxed),
            cpu: cpu_seconds(pid),
            events: events.join(", "),
        }
    }

    fn print(&self) {
        println!(
            "| {} | {:.1} | {} | {} / {} | {} | {:.0} | {} | {} | {} | {:.1} | {} |",
            self.minute,
            self.rss_mib,
            self.fds,
            self.log_files,
            self.files_present,
            self.deleted_held,
            self.lag,
            self.written,
            self.delivered,
            self.duplicates,
            self.cpu,
            self.events
        );
    }
}

/// The sum of every sample of `name` on the shipper's `/metrics`.
fn metric_sum(url: &str, name: &str) -> Option<f64> {
    let body = test_harness::http::get(url, &[]).ok()?.body;
    Some(
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Whether the shipper has looked at `file` at its current size and read all of it.
fn has_read_all(url: &str, file: &Path) -> bool {
    let Ok(size) = std::fs::metadata(file).map(|m| m.len()) else {
        return false;
    };
    let Ok(response) = test_harness::http::get(url, &[]) else {
        return false;
    };
    let label = format!("file=\"{}\"", file.display());
    let value = |name: &str| {
        response.body.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !rest.starts_with('{') || !rest.contains(&label) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
    };
    value("log_shipper_file_size_bytes") == Some(size as f64)
        && value("log_shipper_file_lag_bytes") == Some(0.0)
}

fn shipper_is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The shipper; killed on drop (benches abort on panic, so the panic path kills it too).
struct Shipper(Child);

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The csvlog writer: a thread appending at a steady rate and rotating every
/// [`ROTATE_EVERY`].
struct Writer {
    logs: PathBuf,
    written: Arc<AtomicU64>,
    rotations: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One csvlog record with sequence number `n` (PostgreSQL 15's 26 columns).
fn csv_line(n: u64) -> String {
    let message = if n.is_multiple_of(50) {
        format!(
            "soak seq={n} ERROR: syntax error at or near \"\"FROM\"\"\nLINE 1: SELECT * FROM\n        ^"
        )
    } else {
        format!(
            "soak seq={n} duration: 0.{:03} ms  statement: SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
            n % 1000
        )
    };
    format!(
        "2026-12-08 10:00:00.{:03} UTC,\"app\",\"appdb\",4242,\"127.0.0.1:50000\",656e1f2a.1092,{n},\"SELECT\",2026-12-08 09:00:00 UTC,3/17,0,LOG,00000,\"{message}\",,,,,,,,,\"pgbench\",\"client backend\",,0\n",
        n % 1000
    )
}

impl Writer {
    fn start(logs: PathBuf, rate: u64, metrics_url: String) -> Writer {
        let written = Arc::new(AtomicU64::new(0));
        let rotations = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, r, s) = (written.clone(), rotations.clone(), stop.clone());
        let dir = logs.clone();
        let thread = std::thread::spawn(move || write_loop(&dir, rate, &metrics_url, &w, &r, &s));
        Writer {
            logs,
            written,
            rotations,
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Stops writing; the number of records written.
    fn stop(&self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap().take() {
            t.join().unwrap();
        }
        self.written.load(Ordering::SeqCst)
    }
}

fn write_loop(
    logs: &Path,
    rate: u64,
    metrics_url: &str,
    written: &AtomicU64,
    rotations: &AtomicU64,
    stop: &AtomicBool,
) {
    let live = logs.join("postgresql.csv");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&live)
            .unwrap()
    };
    let mut file = open();
    let start = Instant::now();
    let mut next_rotation = start + ROTATE_FIRST;
    let mut rotated: Vec<(Instant, PathBuf)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut buf = String::new();
        while n < due {
            buf.push_str(&csv_line(n));
            n += 1;
        }
        file.write_all(buf.as_bytes()).unwrap();
        written.store(n, Ordering::SeqCst);
        if Instant::now() >= next_rotation {
            let k = rotations.fetch_add(1, Ordering::SeqCst) + 1;
            let target = logs.join(format!("postgresql.csv.{k}"));
            match k % 3 {
                1 => {
                    std::fs::rename(&live, &target).unwrap();
                    // Not reopened yet: a few more lines go to the renamed file.
                    let late: String = (n..n + 20).map(csv_line).collect();
                    n += 20;
                    file.write_all(late.as_bytes()).unwrap();
                    written.store(n, Ordering::SeqCst);
                    file = open();
                    rotated.push((Instant::now(), target));
                }
                2 => {
                    std::fs::copy(&live, &target).unwrap();
                    file.set_len(0).unwrap();
                    rotated.push((Instant::now(), target));
                }
                _ => {
                    // In place: only once the shipper has read everything, as PostgreSQL
                    // truncates a file hours after it last wrote to it. Its lag alone is not
                    // enough: it counts from the size at the shipper's last look, 0 until the
                    // shipper sees the last write (truncating then lost that write's records).
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !has_read_all(metrics_url, &live) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    file.set_len(0).unwrap();
                }
            }
            next_rotation += ROTATE_EVERY;
            rotated.retain(|(at, path)| {
                let keep = at.elapsed() < DELETE_ROTATED_AFTER;
                if !keep {
                    let _ = std::fs::remove_file(path);
                }
                keep
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the receiver saw: a bitmap of sequence numbers.
#[derive(Debug, Default)]
struct Seen {
    bits: Mutex<Vec<u64>>,
    distinct: AtomicU64,
    duplicates: AtomicU64,
}

impl Seen {
    fn record(&self, seq: u64) {
        let mut bits = self.bits.lock().unwrap();
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) == 0 {
            bits[word] |= 1 << bit;
            self.distinct.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::SeqCst)
    }

    fn missing(&self, written: u64) -> Vec<u64> {
        let bits = self.bits.lock().unwrap();
        (0..written)
            .filter(|&s| {
                bits.get((s / 64) as usize)
                    .is_none_or(|w| w & (1 << (s % 64)) == 0)
            })
            .collect()
    }
}

/// Decodes VictoriaLogs JSON lines with serde_json and records every `soak seq=N` message.
async fn jsonline(State(seen): State<Arc<Seen>>, body: Bytes) -> StatusCode {
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            return StatusCode::BAD_REQUEST;
        };
        let Some(seq) = value["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("soak seq="))
            .and_then(|m| m.split([' ', '\n']).next())
            .and_then(|n| n.parse().ok())
        else {
            return StatusCode::BAD_REQUEST;
        };
        seen.record(seq);
    }
    StatusCode::OK
}

/// The receiver: stops (connections refused) and restarts on the same port.
struct Receiver {
    seen: Arc<Seen>,
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    async fn start(seen: Arc<Seen>) -> Receiver {
        let mut r = Receiver {
            seen,
            addr: "127.0.0.1:0".parse().unwrap(),
            shutdown: None,
            task: None,
        };
        r.serve().await;
        r
    }

    async fn serve(&mut self) {
        let mut attempt = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    eprintln!("soak: rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {}: {e}", self.addr),
            }
        };
        self.addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/insert/jsonline", post(jsonline))
            .with_state(self.seen.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.shutdown = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        }));
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restart(&mut self) {
        self.serve().await;
    }
}
