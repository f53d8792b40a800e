//! File tailing for one source, on its own thread.
//!
//! - Discovery: the include globs are expanded (and excludes applied; see [`crate::expand`]:
//!   loops listed once, one path per file, `max_files` and `max_directories`, only regular
//!   files, cancelled by a stop) at start, whenever notify reports a change in a watched
//!   directory (the directories of the last expansion), and every `rescan_interval` as a
//!   fallback; open files are checked at every wake-up.
//! - Identity: device + inode + a hash of the first bytes ([`FileId`]): a reused inode is a new
//!   file; a file whose head changed or that shrank was truncated and is read again from 0.
//! - Where a file starts: its checkpoint (if device, inode and head match); the offset where a
//!   file with the same head ended (a copy made by `copytruncate`); the end for files present
//!   at the very first start with `read_from: end`; otherwise the beginning.
//! - Rotation: a file that left the globs keeps being read through its open descriptor until it
//!   has been at EOF for `rotate_wait`; at start, a checkpointed file found under another name
//!   in the same directory is drained too. A file that comes back into the globs after that
//!   (renamed back, within `max_files` again) is read on from where it ended.
//! - Unusable paths: a directory or file the globs reach that cannot be listed, reached or
//!   opened (permission denied, longer than `PATH_MAX`) is warned about once per path and
//!   counted each time by kind (`log_shipper_source_path_errors_total`); a path that vanished
//!   is no error.
//! - Backpressure: records go to the sinks through bounded channels; when a sink's buffer is
//!   full, this thread blocks and reading pauses.
//!
//! This module holds the thread and its loop; `discover` finds the files and decides where
//! each starts, `read` reads them, frames and parses their records and hands them on.

mod discover;
mod read;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tracing::debug;

use crate::checkpoint::{FilePosition, SourceProgress};
use crate::chunk::Chunk;
use crate::config::Source;
use crate::expand::{Globs, Limit};
use crate::identity::{FileId, StreamId, next_stream_id};
use crate::parse::prefix::LinePrefix;
use crate::parse::{Framer, Parser};
use crate::record::Origin;
use crate::source::SourceSetup;
use crate::stats::{SourceCounters, Stats};

/// An expansion listing at most this many directories and finding at most this many files is
/// cheap: file events may trigger it at once, however long it took on a loaded host.
const CHEAP_SCAN_DIRECTORIES: u64 = 100;
const CHEAP_SCAN_FILES: u64 = 1000;

/// Bytes read from one file per turn, so that one busy file does not starve the others.
pub const READ_CHUNK: usize = 128 * 1024;
/// How long a copy of a live file waits for the original to be truncated.
const COPY_WAIT: Duration = Duration::from_secs(30);
/// How long a new file shorter than its identifying head waits before it is opened (it may be
/// a copy in progress).
const SETTLE: Duration = Duration::from_millis(500);
/// Unusable paths (unreadable, past `PATH_MAX`) warned about one by one, at most.
const MAX_WARNED: usize = 1000;
/// Ended files remembered (where each stopped), for their copies and their return.
const MAX_ENDED: usize = 1000;
/// How often the files' sizes (their lag) are refreshed while reading waits on a full buffer.
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// A running tailer; [`TailerHandle::request_stop`] ends it.
#[derive(Debug)]
pub struct TailerHandle {
    stop: Arc<AtomicBool>,
    wake: SyncSender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TailerHandle {
    /// Asks the tailer to stop (it finishes its current turn).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    /// Waits for the thread (call after [`request_stop`](Self::request_stop)).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the tailer thread of file source `setup`, resuming from its last `checkpoint`
/// (`None`: the very first start). Call it inside a Tokio runtime (with its timer): the thread
/// waits on the sinks' channels through it.
pub fn spawn(
    setup: SourceSetup,
    checkpoint: Option<Vec<FilePosition>>,
) -> std::io::Result<TailerHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let (wake_tx, wake_rx) = sync_channel(1);
    let name = format!("tail-{}", setup.source.name);
    let mut tailer = Tailer::new(setup, checkpoint, stop.clone(), wake_tx.clone(), wake_rx);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || tailer.run())?;
    Ok(TailerHandle {
        stop,
        wake: wake_tx,
        thread: Some(thread),
    })
}

#[derive(Debug)]
struct Stream {
    id: StreamId,
    file: File,
    path: PathBuf,
    fid: FileId,
    framer: Framer,
    parser: Parser,
    /// When the file stopped matching the globs.
    gone_since: Option<Instant>,
    last_data: Instant,
    size: u64,
    /// Offset of the last chunk handed to the sinks.
    last_sent_end: u64,
    /// The head changed under a read: check it before the next one.
    suspect: bool,
    /// Modification time at the last turn.
    mtime: Option<std::time::SystemTime>,
}

#[derive(Debug)]
struct DeadFile {
    fid: FileId,
    offset: u64,
}

#[derive(Debug)]
struct PendingCopy {
    file: File,
    path: PathBuf,
    fid: FileId,
    original: StreamId,
    since: Instant,
}

struct Tailer {
    index: usize,
    source: Source,
    origin: Arc<Origin>,
    prefix: Option<Arc<LinePrefix>>,
    progress: Arc<SourceProgress>,
    outputs: Vec<Sender<Arc<Chunk>>>,
    /// The pipeline's runtime: waiting on a full buffer times out to refresh the lag.
    runtime: tokio::runtime::Handle,
    stats: Arc<Stats>,
    counters: Arc<SourceCounters>,
    streams: Vec<Stream>,
    /// Checkpoint entries of live files not found yet.
    known: Vec<(StreamId, FilePosition)>,
    /// Ended files (drained, truncated; also from the checkpoint), the latest last.
    dead: Vec<DeadFile>,
    /// Streams that ended (truncated or dropped) → their committed offset.
    ended: HashMap<StreamId, u64>,
    pending_copies: Vec<PendingCopy>,
    /// New files not opened yet (short head), by device and inode: when first seen.
    young: HashMap<(u64, u64), Instant>,
    first_start: bool,
    scanned_once: bool,
    stop: Arc<AtomicBool>,
    wake_tx: SyncSender<()>,
    wake_rx: Receiver<()>,
    rescan: Arc<AtomicBool>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// The include and exclude patterns, compiled.
    globs: Globs,
    /// Unusable paths warned about (once each, until read).
    warned: HashSet<PathBuf>,
    /// The limit the last expansion reached (warned about once until it clears).
    glob_limit: Option<Limit>,
    /// No expansion before this (see [`Tailer::run`]).
    scan_gap_until: Instant,
    closed: bool,
    /// The read buffer, reused.
    read_buf: Vec<u8>,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("source", &self.source.name)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl Tailer {
    /// A tailer for `setup`: the files of its last `checkpoint` registered with its progress
    /// at once, so that the first checkpoint written keeps them.
    fn new(
        setup: SourceSetup,
        checkpoint: Option<Vec<FilePosition>>,
        stop: Arc<AtomicBool>,
        wake_tx: SyncSender<()>,
        wake_rx: Receiver<()>,
    ) -> Tailer {
        let counters = setup.stats.source(&setup.source.name);
        let origin = Arc::new(setup.source.origin());
        let first_start = checkpoint.is_none();
        let mut known = Vec::new();
        let mut dead = Vec::new();
        for e in checkpoint.unwrap_or_default() {
            if e.dead {
                setup.progress.register_dead(next_stream_id(), &e);
                dead.push(DeadFile {
                    fid: e.id,
                    offset: e.offset,
                });
            } else {
                // Kept in the checkpoints as it was until the file is found (or found
                // gone): a stop in the middle of the first expansion keeps its position.
                let id = next_stream_id();
                setup.progress.register_known(id, &e);
                known.push((id, e));
            }
        }
        let prefix = setup
            .source
            .log_line_prefix
            .as_deref()
            .and_then(|p| LinePrefix::compile(p).ok())
            .map(Arc::new);
        let globs = Globs::new(&setup.source.include, &setup.source.exclude);
        Tailer {
            prefix,
            index: setup.index,
            source: setup.source,
            origin,
            progress: setup.progress,
            outputs: setup.outputs,
            runtime: tokio::runtime::Handle::current(),
            stats: setup.stats,
            counters,
            streams: Vec::new(),
            known,
            dead,
            ended: HashMap::new(),
            pending_copies: Vec::new(),
            young: HashMap::new(),
            first_start,
            scanned_once: false,
            stop,
            wake_tx,
            wake_rx,
            rescan: Arc::new(AtomicBool::new(true)),
            watcher: None,
            watched: HashSet::new(),
            globs,
            warned: HashSet::new(),
            glob_limit: None,
            scan_gap_until: Instant::now(),
            closed: false,
            read_buf: Vec::new(),
        }
    }

    /// The thread's loop: globs expanded when due (file events, rescans), a turn over every
    /// file, then a wait for the next event or deadline, until told to stop.
    fn run(&mut self) {
        self.start_watcher();
        let mut next_rescan = Instant::now();
        while !self.stop.load(Ordering::SeqCst) && !self.closed {
            let now = Instant::now();
            // A costly expansion (a huge tree) waits nine times its duration before the
            // next one, however many file events come: at most a tenth of a core. A cheap one
            // (a log directory) never waits: on a loaded host its wall time grows, and a file
            // created and renamed away meanwhile would never be read.
            let may_scan = now >= self.scan_gap_until;
            if may_scan && (now >= next_rescan || self.rescan.swap(false, Ordering::SeqCst)) {
                let started = Instant::now();
                let Some(dirs) = self.discover() else {
                    break;
                };
                self.watch_dirs(dirs);
                let c = &self.counters;
                let costly = c.glob_directories.load(Ordering::Relaxed) > CHEAP_SCAN_DIRECTORIES
                    || c.glob_files.load(Ordering::Relaxed) > CHEAP_SCAN_FILES;
                self.scan_gap_until = if costly {
                    Instant::now() + started.elapsed() * 9
                } else {
                    Instant::now()
                };
                let wait = if self.young.is_empty() && self.pending_copies.is_empty() {
                    self.source.rescan_interval
                } else {
                    self.source.rescan_interval.min(Duration::from_millis(100))
                };
                next_rescan = (Instant::now() + wait).max(self.scan_gap_until);
            }
            let busy = self.read_all();
            if busy {
                continue;
            }
            let timeout = self
                .next_deadline()
                .map_or(self.source.rescan_interval, |d| {
                    d.saturating_duration_since(Instant::now())
                })
                .min(next_rescan.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1));
            match self.wake_rx.recv_timeout(timeout) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for s in &self.streams {
            self.stats
                .file_closed(&self.source.name, &s.path.to_string_lossy());
        }
        debug!(source = %self.source.name, "Tailer stopped.");
    }

    /// The earliest multi-line timeout or rotate-wait expiry.
    fn next_deadline(&self) -> Option<Instant> {
        self.streams
            .iter()
            .filter_map(|s| {
                if s.framer.has_pending() {
                    Some(s.last_data + self.source.multiline_timeout)
                } else if s.gone_since.is_some() {
                    Some(s.last_data + self.source.rotate_wait)
                } else {
                    None
                }
            })
            .min()
    }
}

/// How one stream's turn went.
enum StreamTurn {
    Data,
    Idle,
    Drop,
}
