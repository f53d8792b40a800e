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

mod cursor;
mod entry;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_kit::sync::lock;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::Sender;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::checkpoint::SourceProgress;
use crate::chunk::Chunk;
use crate::config::{JournaldSource, ReadFrom};
use crate::identity::{FileId, StreamId, next_stream_id};
use crate::parse::{ParseFlags, TRUNCATION_MARKER, cut_chars};
use crate::record::{Level, Origin, Record};
use crate::source::{SourceSetup, admit};
use crate::stats::SourceCounters;
use cursor::Cursors;

pub use cursor::{CursorCheckpoint, Start, checkpoint_path, load, store};
pub use entry::{JournalEntry, parse_entry};

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

/// Starts the reader of journald source `setup` (its `journald` settings are set), from
/// `start` (see [`load`]), and returns with its handle the checkpoint writer of its cursor
/// file in `checkpoint_dir`. Must be called inside a tokio runtime.
pub fn spawn(
    setup: SourceSetup,
    checkpoint_dir: &Path,
    start: Start,
) -> (JournaldHandle, CursorCheckpoint) {
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
    let path = checkpoint_path(checkpoint_dir, &setup.source.name);
    let (stop, stop_rx) = watch::channel(false);
    let origin = Arc::new(setup.source.origin());
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
    let reader = tokio::spawn(reader.run(start));
    (
        JournaldHandle {
            stop,
            reader: Some(reader),
        },
        CursorCheckpoint::new(path, stream, cursors),
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

    /// Takes one line of journalctl's output (`overflow`: cut at the line limit) into
    /// `pending`: parsed, its cursor recorded, counted and filtered as every source does.
    fn consume(&mut self, line: &[u8], overflow: bool, pending: &mut Pending) {
        let mut entry = parse_entry(line, &self.origin, self.message_max_length);
        self.seq += 1;
        let seq = self.seq;
        pending.end = seq;
        if overflow {
            entry.record.message.push_str(TRUNCATION_MARKER);
        }
        if let Some(cursor) = entry.cursor.take() {
            lock(&self.cursors).insert(seq, cursor.clone());
            self.last_cursor = Some(cursor);
        }
        pending.since.get_or_insert_with(tokio::time::Instant::now);
        let flags = ParseFlags {
            invalid_utf8: entry.invalid_utf8,
            truncated: overflow,
            parse_error: entry.parse_error,
            message_cut: entry.message_cut,
        };
        if admit(&self.counters, self.min_level, &entry.record, flags) {
            pending.bytes += entry.record.estimated_size();
            pending.records.push((seq, entry.record));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
