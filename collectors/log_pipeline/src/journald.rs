//! The journald source: the systemd journal read through `journalctl --output=json --follow`,
//! shipped with the fields Pigsty's Vector `syslog_logs` transform produced.
//!
//! - Command: `journalctl --output=json --follow --all --merge --no-pager --no-tail`
//!   (`--merge`: every boot, not only the latest one), plus
//!   `--directory=`/`--file=` when configured, `--after-cursor=<cursor>` to resume, and the
//!   matches `_SYSTEMD_UNIT=<unit>` (units) `+` `SYSLOG_IDENTIFIER=<id>` (identifiers).
//! - Record (as Pigsty's `roles/node_monitor/templates/node.yaml`): `_time` from
//!   `_SOURCE_REALTIME_TIMESTAMP`, else `__REALTIME_TIMESTAMP` (what Vector's journald source
//!   uses as the event timestamp); `message` from `MESSAGE` (a byte array in the JSON when it
//!   is not UTF-8: decoded lossily and counted); `app` = `SYSLOG_IDENTIFIER`, else `_COMM`,
//!   else `unknown`; `unit` = `_SYSTEMD_UNIT` with `.service` removed; `pid` = `_PID`;
//!   `level` = the syslog word of `PRIORITY` (`info` when absent or invalid); `p` = `PRIORITY`
//!   as logged; `job` (default `syslog`), `ins`, `ip`, `cls` from the config.
//! - Cursor: the journal is one stream whose offsets are record sequence numbers (1 for the
//!   first record read by this pipeline); sinks acknowledge sequence numbers through the
//!   source's [`SourceProgress`], and the cursor of the highest sequence number every sink
//!   acknowledged is written atomically to `<checkpoint_dir>/<source>.journal.json`. A
//!   restart, even after `kill -9`, resumes after that record: only the unacknowledged tail
//!   is sent again.
//! - First start (no cursor file): `read_from: beginning` reads the whole journal (of the
//!   matching units); `read_from: end` takes the cursor of the journal's last entry at that
//!   moment and writes it at once, so entries written while the shipper is down later are not
//!   skipped.
//! - journalctl exiting is logged and it is started again after the last record read, with
//!   exponential backoff (0.5 s to 30 s); it is killed and reaped when the pipeline stops.
//!   If the shipper itself is killed with SIGKILL, journalctl ends at its next write
//!   (broken pipe).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::Sender;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::checkpoint::{self, CheckpointError, CheckpointWriter, FilePosition, SourceProgress};
use crate::chunk::Chunk;
use crate::config::{JournaldSource, ReadFrom, Source};
use crate::identity::{FileId, StreamId, next_stream_id};
use crate::parse::{TRUNCATION_MARKER, cut_chars, redact};
use crate::record::{Level, Origin, Record};
use crate::stats::{SourceCounters, Stats};

/// Records per chunk at most.
const CHUNK_RECORDS: usize = 512;
/// Message bytes per chunk at most.
const CHUNK_BYTES: usize = 128 * 1024;
/// How long a started chunk waits for more records.
const CHUNK_DELAY: Duration = Duration::from_millis(50);
/// First and longest wait before journalctl is started again.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A journalctl that ran this long before exiting is restarted after the shortest backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// The cursor file of journald source `name`.
pub fn checkpoint_path(dir: &Path, source: &str) -> PathBuf {
    dir.join(format!("{source}.journal.json"))
}

#[derive(Debug, Serialize, Deserialize)]
struct CursorFile {
    version: u32,
    /// `None`: started, nothing acknowledged yet, and the journal is read from its beginning.
    cursor: Option<String>,
}

/// Where a journald source starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No cursor file: the very first start (`read_from` applies).
    First,
    /// After this cursor (`None`: from the beginning).
    After(Option<String>),
}

/// Loads the cursor file; a corrupt one is logged and the journal is read from its beginning
/// (nothing is lost; what was shipped before is shipped again).
pub fn load(path: &Path) -> Result<Start, CheckpointError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Start::First),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    match serde_json::from_str::<CursorFile>(&text) {
        Ok(f) if f.version == 1 => Ok(Start::After(f.cursor)),
        Ok(f) => {
            warn!(path = %path.display(), version = f.version, "Unknown journal cursor file version ignored; reading the journal from its beginning.");
            Ok(Start::After(None))
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "Corrupt journal cursor file ignored; reading the journal from its beginning.");
            Ok(Start::After(None))
        }
    }
}

/// Writes the cursor file atomically.
pub fn store(path: &Path, cursor: Option<&str>) -> Result<(), CheckpointError> {
    let body = serde_json::to_vec(&CursorFile {
        version: 1,
        cursor: cursor.map(str::to_owned),
    })
    .map_err(|e| CheckpointError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    checkpoint::write_atomic(path, &body)
}

/// Cursors by record sequence number, from the oldest not yet acknowledged by every sink.
type Cursors = Arc<Mutex<BTreeMap<u64, String>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything a journald source needs.
#[derive(Debug)]
pub struct JournaldSetup {
    /// Index of the source in the config.
    pub index: usize,
    /// The source (its `journald` settings are set).
    pub source: Source,
    /// Shared with the sinks.
    pub progress: Arc<SourceProgress>,
    /// One bounded channel per subscribed sink.
    pub outputs: Vec<Sender<Arc<Chunk>>>,
    /// Metrics.
    pub stats: Arc<Stats>,
    /// Where the cursor file goes (`checkpoint_dir`).
    pub checkpoint_dir: PathBuf,
    /// Where it starts, from [`load`].
    pub start: Start,
}

/// A running journald source.
#[derive(Debug)]
pub struct JournaldHandle {
    stop: watch::Sender<bool>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl JournaldHandle {
    /// Asks the reader to stop: journalctl is killed, records not handed to the sinks yet are
    /// left for the next start.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the reader has ended.
    pub fn is_finished(&self) -> bool {
        self.reader
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Waits for the reader (after [`request_stop`](Self::request_stop)).
    pub async fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.await;
        }
    }
}

impl Drop for JournaldHandle {
    fn drop(&mut self) {
        // A handle dropped without a stop (a pipeline that failed to start) still ends its
        // journalctl.
        self.stop.send_replace(true);
    }
}

/// Starts the reader of a journald source, and returns with its handle the checkpoint writer
/// of its cursor file. Must be called inside a tokio runtime.
pub fn spawn(setup: JournaldSetup) -> (JournaldHandle, CursorCheckpoint) {
    let settings = setup
        .source
        .journald
        .clone()
        .unwrap_or_else(|| JournaldSource {
            units: Vec::new(),
            identifiers: Vec::new(),
            directory: None,
            files: Vec::new(),
            journalctl: PathBuf::from("journalctl"),
        });
    let stream = next_stream_id();
    let journal_id = FileId {
        dev: 0,
        ino: 0,
        head_len: 0,
        head_hash: 0,
    };
    setup
        .progress
        .register(stream, journal_id, Path::new("journal"), 0);
    let cursors: Cursors = Arc::default();
    let counters = setup.stats.source(&setup.source.name);
    let path = checkpoint_path(&setup.checkpoint_dir, &setup.source.name);
    let (stop, stop_rx) = watch::channel(false);
    let origin = Arc::new(Origin {
        job: setup.source.job.clone(),
        ins: setup.source.ins.clone(),
        ip: setup.source.ip.clone(),
        cls: setup.source.cls.clone(),
    });
    let reader = Reader {
        index: setup.index,
        name: setup.source.name.clone(),
        min_level: setup.source.min_level,
        message_max_length: setup.source.message_max_length,
        line_max: (setup.source.record_max_bytes as usize)
            .saturating_mul(5)
            .saturating_add(64 * 1024),
        read_from: setup.source.read_from,
        settings,
        origin,
        stream,
        seq: 0,
        last_cursor: None,
        progress: setup.progress.clone(),
        outputs: setup.outputs,
        counters,
        cursors: cursors.clone(),
        stop: stop_rx,
        cursor_path: path.clone(),
    };
    let reader = tokio::spawn(reader.run(setup.start));
    (
        JournaldHandle {
            stop,
            reader: Some(reader),
        },
        CursorCheckpoint {
            path,
            stream,
            cursors,
            written: None,
        },
    )
}

/// The arguments of `journalctl` (without the program).
pub fn journalctl_args(j: &JournaldSource, after: Option<&str>, follow: bool) -> Vec<String> {
    let mut args = vec![
        "--output=json".to_owned(),
        "--all".to_owned(),
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
        // Without it, `--follow` shows only the latest boot (journalctl 252): entries of an
        // earlier boot not shipped yet would be skipped after a reboot.
        "--merge".to_owned(),
    ];
    if follow {
        args.push("--follow".to_owned());
        args.push("--no-tail".to_owned());
        if let Some(c) = after {
            args.push(format!("--after-cursor={c}"));
        }
    } else {
        args.push("--lines=1".to_owned());
    }
    if let Some(d) = &j.directory {
        args.push(format!("--directory={}", d.display()));
    }
    for f in &j.files {
        args.push(format!("--file={}", f.display()));
    }
    for u in &j.units {
        args.push(format!("_SYSTEMD_UNIT={u}"));
    }
    if !j.units.is_empty() && !j.identifiers.is_empty() {
        args.push("+".to_owned());
    }
    for i in &j.identifiers {
        args.push(format!("SYSLOG_IDENTIFIER={i}"));
    }
    args
}

/// One journal entry (a line of `journalctl --output=json`) as a record, with its cursor.
#[derive(Debug)]
pub struct Entry {
    /// The record.
    pub record: Record,
    /// `__CURSOR`.
    pub cursor: Option<String>,
    /// `MESSAGE` was not UTF-8.
    pub invalid_utf8: bool,
    /// `message` was cut at `message_max_length`.
    pub message_cut: bool,
    /// The line was not a journal entry.
    pub parse_error: bool,
}

/// A field's text: strings as they are, byte arrays (non-UTF-8 or binary values) decoded
/// lossily, the first value of a field present several times. The flag says whether bytes
/// were replaced.
fn field_text(v: &Value) -> Option<(Cow<'_, str>, bool)> {
    match v {
        Value::String(s) => Some((Cow::Borrowed(s.as_str()), false)),
        Value::Number(n) => Some((Cow::Owned(n.to_string()), false)),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|i| i.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            let bytes = bytes?;
            match String::from_utf8(bytes) {
                Ok(s) => Some((Cow::Owned(s), false)),
                Err(e) => Some((
                    Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    true,
                )),
            }
        }
        Value::Array(items) => items.first().and_then(field_text),
        _ => None,
    }
}

fn priority_level(p: Option<&str>) -> Level {
    match p.map(str::trim).and_then(|p| p.parse::<i64>().ok()) {
        Some(0) => Level::Emerg,
        Some(1) => Level::Alert,
        Some(2) => Level::Crit,
        Some(3) => Level::Err,
        Some(4) => Level::Warning,
        Some(5) => Level::Notice,
        Some(7) => Level::Debug,
        // Pigsty: to_syslog_level(to_int(.PRIORITY) ?? 6) ?? "info".
        _ => Level::Info,
    }
}

fn micros(v: Option<&Value>) -> Option<Timestamp> {
    let (t, _) = field_text(v?)?;
    let us: i64 = t.trim().parse().ok()?;
    Timestamp::from_microsecond(us).ok()
}

/// Parses one line of `journalctl --output=json`. Never fails: a line that is not a journal
/// entry ships as plain text with `parse_error`.
pub fn parse_entry(line: &[u8], origin: &Arc<Origin>, message_max_length: usize) -> Entry {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let map = match serde_json::from_slice::<serde_json::Map<String, Value>>(line) {
        Ok(m) => m,
        Err(e) => {
            let text = String::from_utf8_lossy(line);
            let invalid_utf8 = matches!(text, Cow::Owned(_));
            let mut message = redact::redact(text.trim_end()).into_owned();
            let message_cut = cut_chars(&mut message, message_max_length);
            return Entry {
                record: Record {
                    time: Timestamp::now(),
                    origin: origin.clone(),
                    level: None,
                    message,
                    pg: None,
                    topic: None,
                    extra: Vec::new(),
                    parse_error: Some(format!("not a journal entry: {e}")),
                },
                cursor: None,
                invalid_utf8,
                message_cut,
                parse_error: true,
            };
        }
    };
    let text = |k: &str| map.get(k).and_then(field_text).map(|(t, _)| t);
    let (message, invalid_utf8) = map
        .get("MESSAGE")
        .and_then(field_text)
        .map_or((Cow::Borrowed(""), false), |(t, bad)| (t, bad));
    let mut message = redact::redact(&message).into_owned();
    let message_cut = cut_chars(&mut message, message_max_length);
    let time = micros(map.get("_SOURCE_REALTIME_TIMESTAMP"))
        .or_else(|| micros(map.get("__REALTIME_TIMESTAMP")))
        .unwrap_or_else(Timestamp::now);
    let priority = text("PRIORITY");
    let app = text("SYSLOG_IDENTIFIER")
        .or_else(|| text("_COMM"))
        .map_or_else(|| "unknown".to_owned(), Cow::into_owned);
    let unit = text("_SYSTEMD_UNIT")
        .map(|u| u.replace(".service", ""))
        .unwrap_or_default();
    let pid = text("_PID").map(Cow::into_owned).unwrap_or_default();
    let mut extra = vec![("app", app), ("unit", unit), ("pid", pid)];
    if let Some(p) = &priority {
        extra.push(("p", p.clone().into_owned()));
    }
    Entry {
        record: Record {
            time,
            origin: origin.clone(),
            level: Some(priority_level(priority.as_deref())),
            message,
            pg: None,
            topic: None,
            extra,
            parse_error: None,
        },
        cursor: text("__CURSOR").map(Cow::into_owned),
        invalid_utf8,
        message_cut,
        parse_error: false,
    }
}

/// How following one journalctl process ended.
enum Ended {
    /// The pipeline is stopping.
    Stop,
    /// The sinks are gone.
    SinksGone,
    /// journalctl closed its output.
    Exited,
}

struct Reader {
    index: usize,
    name: String,
    min_level: Option<Level>,
    message_max_length: usize,
    line_max: usize,
    read_from: ReadFrom,
    settings: JournaldSource,
    origin: Arc<Origin>,
    stream: StreamId,
    /// Sequence number of the last record read.
    seq: u64,
    /// Cursor of the last entry read: where a restarted journalctl continues.
    last_cursor: Option<String>,
    progress: Arc<SourceProgress>,
    outputs: Vec<Sender<Arc<Chunk>>>,
    counters: Arc<SourceCounters>,
    cursors: Cursors,
    stop: watch::Receiver<bool>,
    cursor_path: PathBuf,
}

/// Records read but not handed to the sinks yet.
#[derive(Default)]
struct Pending {
    records: Vec<(u64, Record)>,
    bytes: usize,
    /// Sequence number of the last record consumed (shipped or filtered).
    end: u64,
    since: Option<tokio::time::Instant>,
}

impl Reader {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(mut self, start: Start) {
        let after = match start {
            Start::After(c) => c,
            Start::First => self.first_start().await,
        };
        if let Some(c) = &after {
            lock(&self.cursors).insert(0, c.clone());
        }
        self.last_cursor = after;
        let mut backoff = BACKOFF_MIN;
        while !self.stopping() {
            let started = Instant::now();
            let args = journalctl_args(&self.settings, self.last_cursor.as_deref(), true);
            match self.spawn_journalctl(&args) {
                Ok(mut child) => {
                    info!(source = %self.name, after_cursor = self.last_cursor.is_some(), "journalctl started.");
                    let ended = self.follow(&mut child).await;
                    let _ = child.kill().await;
                    match ended {
                        Ended::Stop | Ended::SinksGone => break,
                        Ended::Exited => {
                            let status = child.wait().await.ok();
                            warn!(source = %self.name, status = ?status, "journalctl exited; starting it again.");
                        }
                    }
                }
                Err(e) => {
                    warn!(source = %self.name, program = %self.settings.journalctl.display(), error = %e, "Cannot start journalctl; retrying.");
                }
            }
            self.counters
                .journal_restarts
                .fetch_add(1, Ordering::Relaxed);
            if started.elapsed() >= HEALTHY_RUN {
                backoff = BACKOFF_MIN;
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        debug!(source = %self.name, "journald reader stopped.");
    }

    fn spawn_journalctl(&self, args: &[String]) -> std::io::Result<Child> {
        Command::new(&self.settings.journalctl)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    }

    /// `read_from` at the very first start: `end` takes the cursor of the last entry now
    /// and writes it at once. `None`: from the beginning.
    async fn first_start(&mut self) -> Option<String> {
        let cursor = match self.read_from {
            ReadFrom::Beginning => None,
            ReadFrom::End => {
                let args = journalctl_args(&self.settings, None, false);
                let mut cmd = Command::new(&self.settings.journalctl);
                cmd.args(&args).stdin(Stdio::null()).kill_on_drop(true);
                match cmd.output().await {
                    Ok(out) => {
                        let last = out
                            .stdout
                            .split(|b| *b == b'\n')
                            .rfind(|l| !l.is_empty())
                            .map(|l| parse_entry(l, &self.origin, 1).cursor);
                        if !out.status.success() {
                            warn!(source = %self.name, status = ?out.status, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "journalctl could not find the journal's end; reading from its beginning.");
                        }
                        last.flatten()
                    }
                    Err(e) => {
                        warn!(source = %self.name, error = %e, "Cannot run journalctl to find the journal's end; reading from its beginning.");
                        None
                    }
                }
            }
        };
        // Written at once: entries logged before the next start are read then.
        if let Err(e) = store(&self.cursor_path, cursor.as_deref()) {
            warn!(source = %self.name, error = %e, "Cannot write the journal cursor file.");
        }
        info!(source = %self.name, read_from = ?self.read_from, "First start of the journald source.");
        cursor
    }

    async fn follow(&mut self, child: &mut Child) -> Ended {
        let Some(stdout) = child.stdout.take() else {
            return Ended::Exited;
        };
        if let Some(stderr) = child.stderr.take() {
            let name = self.name.clone();
            tokio::spawn(log_stderr(name, stderr));
        }
        let mut out = BufReader::with_capacity(64 * 1024, stdout);
        let mut line = Vec::new();
        let mut overflow = false;
        let mut pending = Pending::default();
        let mut stop = self.stop.clone();
        loop {
            let deadline = pending.since.map(|t| t + CHUNK_DELAY);
            let got = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Ended::Stop,
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => None,
                r = read_line(&mut out, &mut line, &mut overflow, self.line_max) => Some(r),
            };
            match got {
                None => {
                    if !self.send(&mut pending).await {
                        return Ended::SinksGone;
                    }
                }
                Some(Ok(true)) => {
                    self.consume(&line, overflow, &mut pending);
                    line.clear();
                    overflow = false;
                    if (pending.records.len() >= CHUNK_RECORDS || pending.bytes >= CHUNK_BYTES)
                        && !self.send(&mut pending).await
                    {
                        return Ended::SinksGone;
                    }
                }
                Some(Ok(false)) | Some(Err(_)) => {
                    if let Some(Err(e)) = got {
                        warn!(source = %self.name, error = %e, "Reading journalctl's output failed.");
                    }
                    // A partial last line is not a complete entry: it is read again after the
                    // restart (journalctl continues after the last complete one).
                    if !self.send(&mut pending).await {
                        return Ended::SinksGone;
                    }
                    return Ended::Exited;
                }
            }
        }
    }

    fn consume(&mut self, line: &[u8], overflow: bool, pending: &mut Pending) {
        let mut entry = parse_entry(line, &self.origin, self.message_max_length);
        self.seq += 1;
        let seq = self.seq;
        pending.end = seq;
        let c = &self.counters;
        if overflow {
            c.truncated.fetch_add(1, Ordering::Relaxed);
            entry.record.message.push_str(TRUNCATION_MARKER);
        }
        if entry.invalid_utf8 {
            c.invalid_utf8.fetch_add(1, Ordering::Relaxed);
        }
        if entry.parse_error {
            c.parse_errors.fetch_add(1, Ordering::Relaxed);
        }
        if entry.message_cut {
            c.message_cut.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(cursor) = entry.cursor.take() {
            lock(&self.cursors).insert(seq, cursor.clone());
            self.last_cursor = Some(cursor);
        }
        pending.since.get_or_insert_with(tokio::time::Instant::now);
        if let (Some(min), Some(level)) = (self.min_level, entry.record.level)
            && level > min
        {
            c.filtered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        c.records.fetch_add(1, Ordering::Relaxed);
        pending.bytes += entry.record.estimated_size();
        pending.records.push((seq, entry.record));
    }

    /// Hands the pending records to every subscribed sink (waiting while a buffer is full).
    /// Returns false when the sinks are gone.
    async fn send(&mut self, pending: &mut Pending) -> bool {
        pending.since = None;
        pending.bytes = 0;
        if pending.end == 0 {
            return true;
        }
        let end = pending.end;
        let chunk = Arc::new(Chunk {
            source: self.index,
            stream: self.stream,
            records: std::mem::take(&mut pending.records),
            end,
            sent: self.progress.sent(self.stream, end),
        });
        pending.end = 0;
        for out in &self.outputs {
            if out.send(chunk.clone()).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Reads one line into `line` (at most `max` bytes kept; `overflow` set when more were
/// dropped). Cancel-safe: bytes consumed are already in `line`, so calling it again
/// continues the same line. `Ok(false)`: end of output (a partial line stays in `line`).
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    overflow: &mut bool,
    max: usize,
) -> std::io::Result<bool> {
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(false);
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = max.saturating_sub(line.len());
        if take > room {
            line.extend_from_slice(&buf[..room]);
            *overflow = true;
        } else {
            line.extend_from_slice(&buf[..take]);
        }
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

async fn log_stderr(source: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    let mut n = 0u32;
    while let Ok(Some(mut l)) = lines.next_line().await {
        n += 1;
        // A flood of errors is not copied into our log line by line.
        if n <= 20 {
            cut_chars(&mut l, 512);
            warn!(source = %source, message = %l, "journalctl says");
        }
    }
}

/// The checkpoint of a journald source: the cursor of the last record every sink
/// acknowledged, in its cursor file, written by the source's [`checkpoint::run_checkpointer`]
/// as file positions are.
#[derive(Debug)]
pub struct CursorCheckpoint {
    path: PathBuf,
    stream: StreamId,
    cursors: Cursors,
    written: Option<String>,
}

impl CheckpointWriter for CursorCheckpoint {
    fn write(
        &mut self,
        progress: &SourceProgress,
        _positions: Vec<FilePosition>,
    ) -> Result<(), CheckpointError> {
        let acked = progress.acked_offset(self.stream).unwrap_or(0);
        let cursor = {
            let mut map = lock(&self.cursors);
            match map
                .range(..=acked)
                .next_back()
                .map(|(k, c)| (*k, c.clone()))
            {
                Some((k, c)) => {
                    // Older cursors are never needed again.
                    *map = map.split_off(&k);
                    Some(c)
                }
                None => None,
            }
        };
        match cursor {
            Some(c) if self.written.as_ref() != Some(&c) => {
                store(&self.path, Some(&c))?;
                debug!(path = %self.path.display(), sequence = acked, "Journal cursor written.");
                self.written = Some(c);
                Ok(())
            }
            // Nothing new acknowledged (or nothing with a cursor): the file on disk covers it.
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Arc<Origin> {
        Arc::new(Origin {
            job: "syslog".into(),
            ins: "node-1".into(),
            ip: "127.0.0.1".into(),
            cls: "nodes".into(),
        })
    }

    fn extra<'a>(r: &'a Record, k: &str) -> Option<&'a str> {
        r.extra
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn an_entry_becomes_pigstys_syslog_record() {
        let line = br#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"3","SYSLOG_IDENTIFIER":"pgbouncer","_COMM":"pgbouncer","_SYSTEMD_UNIT":"pgbouncer.service","_PID":"42","MESSAGE":"line 1\nline 2"}"#;
        let e = parse_entry(line, &origin(), 8192);
        assert_eq!(e.cursor.as_deref(), Some("s=1;i=2"));
        assert!(!e.invalid_utf8 && !e.parse_error && !e.message_cut);
        assert_eq!(
            e.record.to_json(),
            r#"{"_time":"2023-11-14T22:13:20.123Z","job":"syslog","ins":"node-1","ip":"127.0.0.1","cls":"nodes","level":"err","message":"line 1\nline 2","app":"pgbouncer","unit":"pgbouncer","pid":"42","p":"3"}"#
        );
    }

    #[test]
    fn byte_arrays_fallbacks_and_priorities() {
        let line = br#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1700000000000000","_SOURCE_REALTIME_TIMESTAMP":"1600000000000000","_COMM":"x","MESSAGE":[98,97,100,32,255,33]}"#;
        let e = parse_entry(line, &origin(), 8192);
        assert!(e.invalid_utf8);
        assert_eq!(e.record.message, "bad \u{fffd}!");
        assert_eq!(extra(&e.record, "app"), Some("x"));
        assert_eq!(e.record.field("unit"), None);
        assert_eq!(e.record.level, Some(Level::Info));
        assert_eq!(e.record.field("p"), None);
        assert_eq!(e.record.time_rfc3339(), "2020-09-13T12:26:40.000Z");

        let line =
            br#"{"MESSAGE":[104,105],"PRIORITY":"nope","_SYSTEMD_UNIT":"a.service.d.service"}"#;
        let e = parse_entry(line, &origin(), 8192);
        assert!(!e.invalid_utf8);
        assert_eq!(e.record.message, "hi");
        assert_eq!(extra(&e.record, "app"), Some("unknown"));
        assert_eq!(e.record.field("unit"), Some("a.d"));
        assert_eq!(e.record.level, Some(Level::Info));
        assert_eq!(e.cursor, None);
        for (p, l) in [
            ("0", Level::Emerg),
            ("1", Level::Alert),
            ("2", Level::Crit),
            ("4", Level::Warning),
            ("5", Level::Notice),
            ("6", Level::Info),
            ("7", Level::Debug),
            ("8", Level::Info),
        ] {
            assert_eq!(priority_level(Some(p)), l);
        }

        // A field present twice: its first value.
        let line = br#"{"MESSAGE":["one","two"]}"#;
        assert_eq!(parse_entry(line, &origin(), 8192).record.message, "one");
        let e = parse_entry(b"not json\n", &origin(), 8192);
        assert!(e.parse_error && e.record.parse_error.is_some());
        assert_eq!(e.record.message, "not json");
        let e = parse_entry(br#"{"MESSAGE":"abcdef"}"#, &origin(), 3);
        assert!(e.message_cut);
        assert_eq!(e.record.message, "abc");
    }

    #[test]
    fn arguments() {
        let j = JournaldSource {
            units: vec!["pgbouncer.service".into(), "pg_exporter.service".into()],
            identifiers: vec!["patroni".into()],
            directory: Some("/var/log/journal".into()),
            files: Vec::new(),
            journalctl: "journalctl".into(),
        };
        assert_eq!(
            journalctl_args(&j, Some("s=1"), true).join(" "),
            "--output=json --all --no-pager --quiet --merge --follow --no-tail --after-cursor=s=1 \
             --directory=/var/log/journal _SYSTEMD_UNIT=pgbouncer.service \
             _SYSTEMD_UNIT=pg_exporter.service + SYSLOG_IDENTIFIER=patroni"
        );
        assert_eq!(
            journalctl_args(&j, None, false)[..6].join(" "),
            "--output=json --all --no-pager --quiet --merge --lines=1"
        );
    }

    #[test]
    fn cursor_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path(), "syslog");
        assert_eq!(load(&path).unwrap(), Start::First);
        store(&path, None).unwrap();
        assert_eq!(load(&path).unwrap(), Start::After(None));
        store(&path, Some("s=abc;i=5")).unwrap();
        assert_eq!(load(&path).unwrap(), Start::After(Some("s=abc;i=5".into())));
        std::fs::write(&path, "{").unwrap();
        assert_eq!(load(&path).unwrap(), Start::After(None));
    }

    #[tokio::test]
    async fn lines_are_bounded_and_resumable() {
        let data: &[u8] = b"short\nlong line here\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let (mut line, mut over) = (Vec::new(), false);
        assert!(read_line(&mut r, &mut line, &mut over, 8).await.unwrap());
        assert_eq!((line.as_slice(), over), (&b"short\n"[..], false));
        line.clear();
        assert!(read_line(&mut r, &mut line, &mut over, 8).await.unwrap());
        assert_eq!((line.as_slice(), over), (&b"long lin"[..], true));
        line.clear();
        over = false;
        assert!(!read_line(&mut r, &mut line, &mut over, 8).await.unwrap());
        assert_eq!(line, b"last");
    }
}
