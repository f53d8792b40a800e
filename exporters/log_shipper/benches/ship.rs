//! Throughput, CPU, memory, latency and idle cost of `log_shipper` shipping PostgreSQL 15
//! csvlog to a local receiver, per sink. Prints a table with the targets beside it.
//!
//! Run with `cargo bench -p log_shipper --bench ship` (needs `scripts/setup`; not run in CI).
//! `LOG_SHIPPER_BENCH_MIB` sets the input size (at least this many MiB, default 256),
//! `LOG_SHIPPER_BENCH_SINKS=loki,vl,loki_gzip,vl_gzip` picks sinks, `LOG_SHIPPER_BIN` another
//! binary to measure (e.g. `target/release/log_shipper` from `cargo build --release`).
//!
//! - Input: real csvlog recorded once from the harness's PostgreSQL 15 under pgbench (simple
//!   and prepared protocol, a connection per transaction), plus a psql script with errors in
//!   multi-line statements, notices and `ALTER ROLE … PASSWORD`, every statement logged with
//!   its duration; cached under Cargo's bench temporary directory and replicated to the input
//!   size on tmpfs.
//! - The shipper is the real binary, pinned with `taskset -c 0`; this process (receiver,
//!   writer) runs on core 1. The receiver decodes with its own code, not the shipper's types:
//!   Loki protobuf by hand from the wire format after snappy, Loki JSON, VictoriaLogs JSON
//!   lines (gzip when sent so), and parses every JSON line.
//! - Throughput: records that arrived, over the wall time from starting the shipper until the
//!   next-to-last request arrived; MiB/s counts the input bytes in proportion to those records.
//!   The last request is left out because it carries the partial batch left when the input
//!   ran out, which waits `batch.timeout` (1 s) for more lines by design, as Vector's and
//!   Promtail's batches do; that wait is printed as "tail wait". CPU is the shipper's
//!   utime + stime from /proc over the whole run; peak RSS its VmHWM.
//! - Latency: afterwards a writer appends timestamped csvlog lines to a new file at a steady
//!   rate; the receiver takes receipt time − write time of each (default batching: 1 s age).
//! - Idle: the shipper's CPU over 10 s without writes, as a share of one core.

use std::borrow::Cow;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use test_harness::bench::{cpu_seconds, peak_rss_mib};
use test_harness::{PgVersion, PostgresBuilder, free_port};

const TARGET_MIB_S: f64 = 100.0;
const TARGET_RSS_MIB: f64 = 50.0;
const TARGET_LATENCY_S: f64 = 1.0;
/// Lines per second written in the latency phase, and for how long.
const LIVE_RATE: u64 = 2_000;
const LIVE_SECS: u64 = 10;
const IDLE_SECS: u64 = 10;

#[derive(Clone, Copy)]
enum SinkKind {
    LokiProto,
    LokiJsonGzip,
    VlJsonline,
    VlJsonlineGzip,
}

impl SinkKind {
    fn label(self) -> &'static str {
        match self {
            SinkKind::LokiProto => "Loki protobuf+snappy",
            SinkKind::VlJsonline => "VictoriaLogs jsonline",
            SinkKind::LokiJsonGzip => "Loki JSON+gzip",
            SinkKind::VlJsonlineGzip => "VictoriaLogs jsonline+gzip",
        }
    }

    fn key(self) -> &'static str {
        match self {
            SinkKind::LokiProto => "loki",
            SinkKind::VlJsonline => "vl",
            SinkKind::LokiJsonGzip => "loki_gzip",
            SinkKind::VlJsonlineGzip => "vl_gzip",
        }
    }

    fn yaml(self, url: &str) -> String {
        match self {
            SinkKind::LokiProto => format!("type: loki\n    endpoint: {url}"),
            SinkKind::LokiJsonGzip => {
                format!(
                    "type: loki\n    endpoint: {url}\n    encoding: json\n    compression: gzip"
                )
            }
            SinkKind::VlJsonline => format!("type: victorialogs\n    endpoint: {url}"),
            SinkKind::VlJsonlineGzip => {
                format!("type: victorialogs\n    endpoint: {url}\n    compression: gzip")
            }
        }
    }
}

struct Row {
    sink: &'static str,
    mib_s: f64,
    lines_s: f64,
    cpu_s_per_gib: f64,
    mib_per_cpu_s: f64,
    peak_rss: f64,
    p50_ms: f64,
    p99_ms: f64,
    idle_pct: f64,
    /// How long the last, partial batch waited for its age limit after the one before.
    tail_wait_ms: f64,
    /// Share of its core each side used during the throughput phase: which one limits it.
    shipper_busy_pct: f64,
    receiver_busy_pct: f64,
}

fn main() {
    let input_mib: u64 = std::env::var("LOG_SHIPPER_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let bin = std::env::var("LOG_SHIPPER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_log_shipper").to_owned());
    let corpus = corpus();
    let sample = std::fs::read(&corpus).expect("corpus");
    let sample_records = count_csv_records(&sample);
    // Everything from here on (receiver, writer) stays off the shipper's core.
    pin_self_to_core(1);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let pid = SHIPPER_PID.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        default_hook(info);
    }));

    let work = tempfile::Builder::new()
        .prefix("log_shipper_bench")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let input = data.join("postgresql-bench.csv");
    let reps = (input_mib * 1024 * 1024).div_ceil(sample.len() as u64);
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for _ in 0..reps {
            f.write_all(&sample).unwrap();
        }
        f.flush().unwrap();
    }
    let input_bytes = sample.len() as u64 * reps;
    let expected = sample_records * reps;
    eprintln!(
        "bench: input {:.0} MiB, {expected} records ({} copies of {} recorded from PostgreSQL 15); shipper {bin}",
        input_bytes as f64 / 1048576.0,
        reps,
        corpus.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    // LOG_SHIPPER_BENCH_SINKS=loki,vl,loki_gzip,vl_gzip picks some (all by default).
    let wanted = std::env::var("LOG_SHIPPER_BENCH_SINKS").unwrap_or_default();
    for kind in [
        SinkKind::LokiProto,
        SinkKind::VlJsonline,
        SinkKind::LokiJsonGzip,
        SinkKind::VlJsonlineGzip,
    ] {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w == kind.key()) {
            continue;
        }
        // Each sink starts from scratch: no live file, fresh checkpoints.
        let _ = std::fs::remove_file(data.join("postgresql-live.csv"));
        let row = rt.block_on(run_sink(
            kind,
            &bin,
            work.path(),
            &data,
            input_bytes,
            expected,
        ));
        rows.push(row);
    }
    print_table(&rows, input_bytes, expected);
}

fn print_table(rows: &[Row], input_bytes: u64, records: u64) {
    println!();
    println!(
        "log_shipper: {:.0} MiB of PostgreSQL 15 csvlog ({records} records), shipper on core 0, receiver on core 1",
        input_bytes as f64 / 1048576.0
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "(load average at the end: {}; other work on the two cores lowers MiB/s and lines/s more than CPU s/GiB)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!(
        "| sink | MiB/s | lines/s | CPU s/GiB | MiB/CPU-s | peak RSS MiB | latency p50 / p99 | idle CPU | core busy: shipper / receiver | tail wait |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} / {:.0} ms | {:.2} % | {:.0} % / {:.0} % | {:.0} ms |",
            r.sink,
            r.mib_s,
            r.lines_s,
            r.cpu_s_per_gib,
            r.mib_per_cpu_s,
            r.peak_rss,
            r.p50_ms,
            r.p99_ms,
            r.idle_pct,
            r.shipper_busy_pct,
            r.receiver_busy_pct,
            r.tail_wait_ms
        );
    }
    println!(
        "| target (uncompressed sinks) | ≥ {TARGET_MIB_S:.0} | | | | ≤ {TARGET_RSS_MIB:.0} | < {:.0} ms median | ≈ 0 | | |",
        TARGET_LATENCY_S * 1000.0
    );
}

/// Sets the CPU affinity of every thread of this process (threads started later inherit it).
fn pin_self_to_core(core: u32) {
    let ok = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset (util-linux) is needed to pin the processes");
}

/// Records in csvlog bytes: newlines outside double quotes, blank lines skipped.
fn count_csv_records(b: &[u8]) -> u64 {
    let (mut n, mut quoted, mut blank) = (0, false, true);
    for &c in b {
        match c {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => {
                if !blank {
                    n += 1;
                }
                blank = true;
                continue;
            }
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            blank = false;
        }
    }
    n + u64::from(!blank)
}

/// Real PostgreSQL 15 csvlog, recorded once and cached.
fn corpus() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("log_shipper_bench");
    let path = dir.join("pg15-pgbench.csv");
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("bench: recording csvlog from PostgreSQL 15 under pgbench (once) ...");
    let pg = PostgresBuilder::new(PgVersion::V15)
        .name("logbench")
        .setting("log_min_duration_statement", "0")
        .setting("log_connections", "on")
        .setting("log_disconnections", "on")
        .setting("log_checkpoints", "on")
        .setting("log_lock_waits", "on")
        .setting("log_autovacuum_min_duration", "0")
        .setting("log_timezone", "'UTC'")
        .setting("log_destination", "'csvlog'")
        .setting("log_rotation_size", "0")
        .with_databases(&[("bench", 0)])
        .start()
        .expect("PostgreSQL 15 starts");
    let pgbench = |args: &[&str]| {
        let out = pg
            .pgbench_command("bench")
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pgbench(&["-i", "-s", "2", "-q"]);
    pgbench(&["-c", "4", "-j", "2", "-T", "12", "-n"]);
    pgbench(&["-c", "4", "-j", "2", "-T", "6", "-n", "-M", "prepared"]);
    pgbench(&["-c", "2", "-j", "2", "-T", "4", "-n", "-C", "-S"]);
    // Errors with multi-line statements, notices with details, role passwords.
    let mut script = String::from(
        "CREATE ROLE bench_app LOGIN;\nCREATE TABLE IF NOT EXISTS accounts_audit (id int primary key, note text);\n",
    );
    for i in 0..4000 {
        match i % 8 {
            0 => script.push_str(&format!(
                "SELECT aid,\n       abalance\n  FROM missing_table_{i}\n WHERE aid = {i}\n ORDER BY 1;\n"
            )),
            1 => script.push_str(&format!(
                "INSERT INTO accounts_audit (id, note)\nVALUES ({}, 'dup \"quoted\" note');\n",
                i % 50
            )),
            2 => script.push_str(&format!(
                "ALTER ROLE bench_app PASSWORD 'Secret-{i}-pw';\n"
            )),
            3 => script.push_str(&format!(
                "DO $$\nBEGIN\n  RAISE NOTICE 'batch % done', {i}\n    USING DETAIL = 'rows: {i}', HINT = 'nothing to do';\nEND\n$$;\n"
            )),
            4 => script.push_str(&format!("SELECT {i} / 0 AS boom;\n")),
            5 => script.push_str(&format!(
                "UPDATE pgbench_accounts\n   SET abalance = abalance + 1\n WHERE aid = {}\nRETURNING aid;\n",
                i + 1
            )),
            6 => script.push_str("SELECT pg_sleep(0.001);\n"),
            _ => script.push_str(&format!("SELECT count(*) FROM pgbench_branches WHERE bid = {};\n", i % 3)),
        }
    }
    let mut psql = pg
        .client_command("psql", "bench")
        .unwrap()
        .args(["-X", "-q", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    psql.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    psql.wait().unwrap();
    pg.execute("postgres", "CHECKPOINT").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut files: Vec<PathBuf> = std::fs::read_dir(pg.log_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        all.extend(std::fs::read(f).unwrap());
    }
    drop(pg);
    let tmp = dir.join("pg15-pgbench.csv.tmp");
    std::fs::write(&tmp, &all).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eprintln!(
        "bench: recorded {:.1} MiB, {} records",
        all.len() as f64 / 1048576.0,
        count_csv_records(&all)
    );
    path
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    records: AtomicU64,
    /// Receipt time (ns since the epoch) and records of every request, in arrival order.
    requests: Mutex<Vec<(u64, u64)>>,
    latencies_ms: Mutex<Vec<f64>>,
    errors: Mutex<Vec<String>>,
}

/// A JSON line as the log store reads it; unknown fields are parsed and skipped.
#[derive(serde::Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(borrow)]
    level: Cow<'a, str>,
    #[serde(rename = "_time", borrow, default)]
    time: Option<Cow<'a, str>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

impl Seen {
    fn line(&self, line: &[u8], need_time: bool, at_ns: u64) -> Result<(), String> {
        let l: Line<'_> =
            serde_json::from_slice(line).map_err(|e| format!("bad JSON line: {e}"))?;
        if need_time && l.time.is_none() {
            return Err("no _time".into());
        }
        if l.level.is_empty() {
            return Err("no level".into());
        }
        if let Some(i) = l.message.find("sent_ns=") {
            let digits: String = l.message[i + 8..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(sent) = digits.parse::<u64>() {
                self.latencies_ms
                    .lock()
                    .unwrap()
                    .push(at_ns.saturating_sub(sent) as f64 / 1e6);
            }
        }
        Ok(())
    }

    fn fail(&self, e: String) -> (StatusCode, String) {
        self.errors.lock().unwrap().push(e.clone());
        (StatusCode::BAD_REQUEST, e)
    }

    fn done(&self, n: u64, at_ns: u64) {
        let mut requests = self.requests.lock().unwrap();
        requests.push((at_ns, n));
        self.records.fetch_add(n, Ordering::SeqCst);
    }
}

fn gunzip_if(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, String> {
    match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(body.to_vec()),
        Some("gzip") => {
            let mut out = Vec::with_capacity(body.len() * 4);
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("bad gzip: {e}"))?;
            Ok(out)
        }
        Some(other) => Err(format!("unsupported Content-Encoding {other}")),
    }
}

async fn jsonline(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let at = now_ns();
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    if h("VL-Msg-Field") != "message" || h("VL-Time-Field") != "_time" {
        return seen.fail("missing VL-Msg-Field/VL-Time-Field".into());
    }
    let body = match gunzip_if(&headers, &body) {
        Ok(b) => b,
        Err(e) => return seen.fail(e),
    };
    let mut n = 0;
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Err(e) = seen.line(line, true, at) {
            return seen.fail(e);
        }
        n += 1;
    }
    seen.done(n, at);
    (StatusCode::OK, String::new())
}

async fn loki(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let at = now_ns();
    let json =
        headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/json");
    let result = if json {
        gunzip_if(&headers, &body).and_then(|b| loki_json(&seen, &b, at))
    } else {
        snap::raw::Decoder::new()
            .decompress_vec(&body)
            .map_err(|e| format!("bad snappy: {e}"))
            .and_then(|b| loki_proto(&seen, &b, at))
    };
    match result {
        Ok(n) => {
            seen.done(n, at);
            (StatusCode::NO_CONTENT, String::new())
        }
        Err(e) => seen.fail(e),
    }
}

#[derive(serde::Deserialize)]
struct LokiPush<'a> {
    #[serde(borrow)]
    streams: Vec<LokiStream<'a>>,
}

#[derive(serde::Deserialize)]
struct LokiStream<'a> {
    #[serde(borrow)]
    stream: std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow)]
    values: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

fn loki_json(seen: &Seen, body: &[u8], at: u64) -> Result<u64, String> {
    let push: LokiPush<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut n = 0;
    for s in push.streams {
        if s.stream.is_empty() {
            return Err("stream without labels".into());
        }
        for (ts, line) in s.values {
            ts.parse::<i64>().map_err(|_| "bad timestamp")?;
            seen.line(line.as_bytes(), false, at)?;
            n += 1;
        }
    }
    Ok(n)
}

/// A protobuf field's value: a LEN payload, or a varint.
type WireValue<'a> = Result<&'a [u8], u64>;

/// Protobuf wire format: (field number, value) pairs.
fn wire_fields(mut b: &[u8]) -> Result<Vec<(u64, WireValue<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&c, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= u64::from(c & 0x7f) << shift;
            if c & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match key & 7 {
            0 => out.push((key >> 3, Err(varint(&mut b)?))),
            2 => {
                let len = varint(&mut b)? as usize;
                if len > b.len() {
                    return Err("truncated LEN".into());
                }
                let (payload, rest) = b.split_at(len);
                b = rest;
                out.push((key >> 3, Ok(payload)));
            }
            wt => return Err(format!("unexpected wire type {wt}")),
        }
    }
    Ok(out)
}

fn loki_proto(seen: &Seen, body: &[u8], at: u64) -> Result<u64, String> {
    let mut n = 0;
    for (field, stream) in wire_fields(body)? {
        let (1, Ok(stream)) = (field, stream) else {
            return Err("PushRequest: unexpected field".into());
        };
        let mut labels = false;
        for (field, v) in wire_fields(stream)? {
            match (field, v) {
                (1, Ok(l)) => {
                    let l = std::str::from_utf8(l).map_err(|e| e.to_string())?;
                    labels = l.starts_with('{') && l.ends_with('}') && l.contains("job=\"");
                }
                (2, Ok(entry)) => {
                    let (mut ts, mut line) = (false, None);
                    for (field, v) in wire_fields(entry)? {
                        match (field, v) {
                            (1, Ok(t)) => ts = !wire_fields(t)?.is_empty(),
                            (2, Ok(l)) => line = Some(l),
                            _ => {}
                        }
                    }
                    let line = line.ok_or("entry without line")?;
                    std::str::from_utf8(line).map_err(|e| format!("line not UTF-8: {e}"))?;
                    if !ts {
                        return Err("entry without timestamp".into());
                    }
                    seen.line(line, false, at)?;
                    n += 1;
                }
                _ => {}
            }
        }
        if !labels {
            return Err("stream without labels".into());
        }
    }
    Ok(n)
}

/// The running shipper's PID, for the panic hook: benches build with `panic = "abort"`, so
/// no destructor stops it when an assertion fails.
static SHIPPER_PID: AtomicU64 = AtomicU64::new(0);

/// The shipper process, pinned to core 0; killed on drop (and by the panic hook).
struct Shipper(Child);

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_sink(
    kind: SinkKind,
    bin: &str,
    work: &Path,
    data: &Path,
    input_bytes: u64,
    expected: u64,
) -> Row {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/insert/jsonline", post(jsonline))
        .route("/loki/api/v1/push", post(loki))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let name = kind.label().replace([' ', '+'], "_");
    let run_dir = work.join(&name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let config = run_dir.join("log_shipper.yml");
    std::fs::write(
        &config,
        format!(
            "checkpoint_dir: {dir}/checkpoints\ndead_letter_dir: {dir}/dead_letter\nfields: {{ins: pg-bench-1, ip: 127.0.0.1, cls: pg-bench}}\nsources:\n  postgres:\n    include: ['{data}/*.csv']\n    format: postgres_csv\n    read_from: beginning\nsinks:\n  out:\n    {sink}\n",
            dir = run_dir.display(),
            data = data.display(),
            sink = kind.yaml(&url),
        ),
    )
    .unwrap();
    let log = run_dir.join("log_shipper.log");
    eprintln!("bench: {} ...", kind.label());
    let receiver_cpu_before = cpu_seconds(std::process::id());
    let start_ns = now_ns();
    let child = Command::new("taskset")
        .args(["-c", "0", bin])
        .arg(format!("--config={}", config.display()))
        .arg(format!(
            "--web.listen-address=127.0.0.1:{}",
            free_port().unwrap()
        ))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("taskset starts log_shipper");
    let shipper = Shipper(child);
    let pid = shipper.0.id();
    SHIPPER_PID.store(u64::from(pid), Ordering::SeqCst);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // Throughput.
    let mut last_progress = (0, Instant::now());
    loop {
        let n = seen.records.load(Ordering::SeqCst);
        if n >= expected {
            break;
        }
        let errors = seen.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "receiver rejected: {errors:?}");
        if n != last_progress.0 {
            last_progress = (n, Instant::now());
        }
        assert!(
            last_progress.1.elapsed() < Duration::from_secs(60),
            "no progress at {n} of {expected} records:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (wall, streamed, tail_wait) = {
        let requests = seen.requests.lock().unwrap();
        let [.., (before_last, _), (last, last_n)] = requests[..] else {
            panic!("the input arrived in fewer than two requests: raise LOG_SHIPPER_BENCH_MIB")
        };
        (
            Duration::from_nanos(before_last - start_ns).as_secs_f64(),
            expected - last_n,
            Duration::from_nanos(last - before_last).as_secs_f64(),
        )
    };
    let cpu = cpu_seconds(pid);
    let receiver_cpu = cpu_seconds(std::process::id()) - receiver_cpu_before;
    let peak = peak_rss_mib(pid);
    assert_eq!(
        seen.records.load(Ordering::SeqCst),
        expected,
        "records received"
    );

    // Latency: a steady writer on a new file.
    let live = data.join("postgresql-live.csv");
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&live)
            .unwrap();
        let per_tick = LIVE_RATE / 100;
        let t0 = Instant::now();
        let mut seq = 0u64;
        for tick in 0..LIVE_SECS * 100 {
            let due = t0 + Duration::from_millis(tick * 10);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let mut buf = String::new();
            for _ in 0..per_tick {
                seq += 1;
                let ts = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S%.3f UTC");
                buf.push_str(&format!(
                    "{ts},\"postgres\",\"bench\",4242,\"127.0.0.1:50000\",6632a.1092,{seq},\"SELECT\",2026-01-01 00:00:00 UTC,3/{seq},0,LOG,00000,\"duration: 0.042 ms  statement: SELECT {seq} /* sent_ns={} */\",,,,,,,,,\"pgbench\",\"client backend\",,0\n",
                    now_ns()
                ));
            }
            f.write_all(buf.as_bytes()).unwrap();
        }
        seq
    });
    let written = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.records.load(Ordering::SeqCst) < expected + written {
        assert!(
            Instant::now() < deadline,
            "live records missing:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = std::mem::take(&mut *seen.latencies_ms.lock().unwrap());
    assert_eq!(lat.len() as u64, written, "latency samples");
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];

    // Idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let idle = cpu_seconds(pid) - before;
    let peak = peak.max(peak_rss_mib(pid));

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    drop(shipper);
    SHIPPER_PID.store(0, Ordering::SeqCst);
    server.abort();
    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "receiver rejected: {errors:?}");
    let mib = input_bytes as f64 / 1048576.0;
    let streamed_mib = mib * streamed as f64 / expected as f64;
    Row {
        sink: kind.label(),
        mib_s: streamed_mib / wall,
        lines_s: streamed as f64 / wall,
        cpu_s_per_gib: cpu / (mib / 1024.0),
        mib_per_cpu_s: mib / cpu,
        peak_rss: peak,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        idle_pct: idle / IDLE_SECS as f64 * 100.0,
        tail_wait_ms: tail_wait * 1000.0,
        shipper_busy_pct: cpu / wall * 100.0,
        receiver_busy_pct: receiver_cpu / wall * 100.0,
    }
}
