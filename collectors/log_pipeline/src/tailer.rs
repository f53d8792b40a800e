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
//!   in the same directory is drained too.
//! - Backpressure: records go to the sinks through bounded channels; when a sink's buffer is
//!   full, this thread blocks and reading pauses.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tracing::{debug, info, warn};

use crate::checkpoint::{Entry, FileId, HEAD_MAX, SourceProgress, StreamId, head_hash};
use crate::config::{ReadFrom, Source};
use crate::expand::{Expansion, Found, Globs, Limit, Limits, open_regular};
use crate::parse::prefix::LinePrefix;
use crate::parse::{Framer, Parser, RawRecord};
use crate::record::{Origin, Record};
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
/// How often the files' sizes (their lag) are refreshed while reading waits on a full buffer.
const LAG_REFRESH: Duration = Duration::from_secs(1);

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

fn next_stream_id() -> StreamId {
    NEXT_STREAM.fetch_add(1, Ordering::Relaxed)
}

/// Records read from one file in one turn, with the offset the checkpoint may move to once
/// they are delivered (also when the level filter dropped them all).
#[derive(Debug)]
pub struct Chunk {
    /// Index of the source in the config.
    pub source: usize,
    /// The stream (one file, one generation).
    pub stream: StreamId,
    /// Records with the file offset after each.
    pub records: Vec<(u64, Record)>,
    /// Offset after the last record consumed (shipped or filtered).
    pub end: u64,
    /// The hand-off's number ([`SourceProgress::sent`]).
    pub sent: u64,
}

/// A running tailer; [`TailerHandle::stop`] ends it.
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

/// Everything a tailer needs.
#[derive(Debug)]
pub struct TailerSetup {
    /// Index of the source in the config.
    pub index: usize,
    /// The source.
    pub source: Source,
    /// Shared with the sinks and the checkpointer.
    pub progress: Arc<SourceProgress>,
    /// One bounded channel per subscribed sink.
    pub outputs: Vec<Sender<Arc<Chunk>>>,
    /// Metrics.
    pub stats: Arc<Stats>,
    /// The last checkpoint (`None`: the very first start).
    pub checkpoint: Option<Vec<Entry>>,
}

/// Starts the tailer thread. Call it inside a Tokio runtime (with its timer): the thread
/// waits on the sinks' channels through it.
pub fn spawn(setup: TailerSetup) -> std::io::Result<TailerHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let (wake_tx, wake_rx) = sync_channel(1);
    let name = format!("tail-{}", setup.source.name);
    let mut tailer = Tailer::new(setup, stop.clone(), wake_tx.clone(), wake_rx);
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
    known: Vec<(StreamId, Entry)>,
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

fn read_head(file: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut n = 0;
    while n < HEAD_MAX {
        let r = file.read_at(&mut buf[n..], n as u64)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    Ok(buf)
}

fn file_id(meta: &std::fs::Metadata, head: &[u8]) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        head_len: head.len() as u32,
        head_hash: head_hash(head),
    }
}

impl Tailer {
    fn new(
        setup: TailerSetup,
        stop: Arc<AtomicBool>,
        wake_tx: SyncSender<()>,
        wake_rx: Receiver<()>,
    ) -> Tailer {
        let counters = setup.stats.source(&setup.source.name);
        let origin = Arc::new(Origin {
            job: setup.source.job.clone(),
            ins: setup.source.ins.clone(),
            ip: setup.source.ip.clone(),
            cls: setup.source.cls.clone(),
        });
        let first_start = setup.checkpoint.is_none();
        let mut known = Vec::new();
        let mut dead = Vec::new();
        for e in setup.checkpoint.unwrap_or_default() {
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
            glob_limit: None,
            scan_gap_until: Instant::now(),
            closed: false,
            read_buf: Vec::new(),
        }
    }

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

    fn start_watcher(&mut self) {
        let wake = self.wake_tx.clone();
        let rescan = self.rescan.clone();
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(e) = &event
                && (e.kind.is_create()
                    || e.kind.is_remove()
                    || matches!(
                        e.kind,
                        notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                    ))
            {
                rescan.store(true, Ordering::SeqCst);
            }
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                warn!(source = %self.source.name, error = %e, "No file notifications; polling only.");
            }
        }
    }

    /// Watches exactly the directories of the last expansion (each one non-recursively:
    /// loops and huge trees cost no more than the expansion itself).
    fn watch_dirs(&mut self, dirs: Vec<PathBuf>) {
        use notify::Watcher as _;
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let wanted: HashSet<PathBuf> = dirs.into_iter().collect();
        for gone in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        self.watched.retain(|d| wanted.contains(d));
        for dir in wanted {
            // A literal file's directory may not exist yet: the rescans cover it.
            if self.watched.contains(&dir) || !dir.is_dir() {
                continue;
            }
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => debug!(dir = %dir.display(), error = %e, "Cannot watch directory."),
            }
        }
    }

    /// Expands the globs within the source's limits, and reports the limits reached.
    /// `None` when the tailer was told to stop meanwhile.
    fn expand(&mut self) -> Option<Expansion> {
        let limits = Limits {
            max_files: self.source.max_files,
            max_directories: self.source.max_directories,
        };
        let e = self.globs.expand(limits, &self.stop);
        if e.cancelled {
            return None;
        }
        let c = &self.counters;
        let before = (
            c.glob_files.load(Ordering::Relaxed),
            c.glob_directories.load(Ordering::Relaxed),
        );
        if before != (e.files.len() as u64, e.dirs_listed as u64) {
            debug!(source = %self.source.name, files = e.files.len(), directories = e.dirs_listed, repeats = e.repeats, "Globs expanded.");
        }
        c.glob_files.store(e.files.len() as u64, Ordering::Relaxed);
        c.glob_directories
            .store(e.dirs_listed as u64, Ordering::Relaxed);
        if let Some(limit) = e.limit {
            c.glob_limit_hits.fetch_add(1, Ordering::Relaxed);
            if self.glob_limit != Some(limit) {
                let value = match limit {
                    Limit::Files => self.source.max_files,
                    Limit::Directories => self.source.max_directories,
                };
                let option = limit.option();
                warn!(source = %self.source.name, limit = option, value, files = e.files.len(), directories = e.dirs_listed, "The include globs reach more than {option}: what is past it is not read. Narrow the globs or raise sources.{}.{option}.", self.source.name);
            }
        } else if self.glob_limit.is_some() {
            info!(source = %self.source.name, files = e.files.len(), directories = e.dirs_listed, "The include globs are within their limits again.");
        }
        self.glob_limit = e.limit;
        Some(e)
    }

    /// Expands the globs and opens the new files; returns the directories to watch, or
    /// `None` when told to stop meanwhile.
    fn discover(&mut self) -> Option<Vec<PathBuf>> {
        let expansion = self.expand()?;
        let mut present = HashSet::new();
        for Found { path, meta } in expansion.files {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let key = (meta.dev(), meta.ino());
            present.insert(key);
            if let Some(s) = self
                .streams
                .iter_mut()
                .find(|s| (s.fid.dev, s.fid.ino) == key)
            {
                s.gone_since = None;
                if s.path != path {
                    info!(source = %self.source.name, from = %s.path.display(), to = %path.display(), "File renamed.");
                    self.stats
                        .file_closed(&self.source.name, &s.path.to_string_lossy());
                    s.path.clone_from(&path);
                    self.progress.update(s.id, s.fid, &path);
                }
                continue;
            }
            if self
                .pending_copies
                .iter()
                .any(|c| (c.fid.dev, c.fid.ino) == key)
            {
                continue;
            }
            self.open_new(&path);
        }
        self.young.retain(|k, _| present.contains(k));
        let now = Instant::now();
        for s in &mut self.streams {
            if s.gone_since.is_none() && !present.contains(&(s.fid.dev, s.fid.ino)) {
                debug!(source = %self.source.name, path = %s.path.display(), "File left the globs; draining it.");
                s.gone_since = Some(now);
            }
        }
        if !self.scanned_once {
            self.scanned_once = true;
            self.find_renamed_known_files();
        }
        self.resolve_pending_copies();
        Some(expansion.dirs)
    }

    /// Opens a newly seen file and decides where to start reading it.
    fn open_new(&mut self, path: &Path) {
        let (file, meta) = match open_regular(path) {
            Ok(f) => f,
            Err(e) => {
                debug!(path = %path.display(), error = %e, "Cannot open file.");
                return;
            }
        };
        let Ok(head) = read_head(&file) else {
            return;
        };
        let fid = file_id(&meta, &head);
        let size = meta.len();
        // 1. Its own checkpoint.
        if let Some(i) = self
            .known
            .iter()
            .position(|(_, e)| (e.id.dev, e.id.ino) == (fid.dev, fid.ino))
        {
            let (id, e) = self.known.swap_remove(i);
            if e.id.head_matches(&head) && e.offset <= size {
                if e.read > e.offset {
                    self.counters
                        .replayed_bytes
                        .fetch_add(e.read.min(size) - e.offset, Ordering::Relaxed);
                }
                self.add_stream(id, file, path, fid, size, e.offset, "checkpoint");
            } else {
                self.count_lost(&e, "its inode now holds other content");
                self.add_stream(id, file, path, fid, size, 0, "inode reused or truncated");
            }
            return;
        }
        // A file just created may still be written by `cp` (copytruncate): decide once its
        // head is complete, or once it has been seen for a moment.
        let key = (fid.dev, fid.ino);
        let first_seen = *self.young.entry(key).or_insert_with(Instant::now);
        let settled = !self.scanned_once || first_seen.elapsed() >= SETTLE;
        let full = head.len() == HEAD_MAX;
        // 2. A copy of a live file (copytruncate in progress): wait for the original's end.
        if let Some(orig) = self
            .streams
            .iter()
            .find(|s| s.fid.same_head(&fid) && (full || settled))
        {
            debug!(path = %path.display(), original = %orig.path.display(), "Copy of a live file; waiting for the original to be truncated.");
            self.young.remove(&key);
            self.pending_copies.push(PendingCopy {
                file,
                path: path.to_owned(),
                fid,
                original: orig.id,
                since: Instant::now(),
            });
            return;
        }
        // 3. A copy of an ended file: continue where it ended, once the copy got there.
        if let Some(i) = self
            .dead
            .iter()
            .position(|d| d.fid.same_head(&fid) && (full || settled))
        {
            if size < self.dead[i].offset && first_seen.elapsed() < COPY_WAIT {
                return;
            }
            let d = self.dead.swap_remove(i);
            self.young.remove(&key);
            self.add_stream(
                next_stream_id(),
                file,
                path,
                fid,
                size,
                d.offset.min(size),
                "copy of an ended file",
            );
            return;
        }
        if !full && !settled {
            return;
        }
        self.young.remove(&key);
        // 4. read_from: end applies to files present at the very first start.
        if self.first_start && !self.scanned_once && self.source.read_from == ReadFrom::End {
            self.add_stream(
                next_stream_id(),
                file,
                path,
                fid,
                size,
                size,
                "read_from end",
            );
            return;
        }
        self.add_stream(next_stream_id(), file, path, fid, size, 0, "new file");
    }

    /// Starts reading `file` at `start` as stream `id` (a new one, or a checkpointed file's,
    /// registered when the tailer started).
    #[allow(clippy::too_many_arguments)]
    fn add_stream(
        &mut self,
        id: StreamId,
        file: File,
        path: &Path,
        fid: FileId,
        size: u64,
        start: u64,
        why: &str,
    ) {
        info!(source = %self.source.name, path = %path.display(), offset = start, reason = why, "Reading file.");
        self.progress.register(id, fid, path, start);
        self.counters.files_opened.fetch_add(1, Ordering::Relaxed);
        self.streams.push(Stream {
            id,
            file,
            path: path.to_owned(),
            fid,
            framer: Framer::new(
                self.source.format,
                start,
                self.source.record_max_bytes as usize,
            )
            .with_prefix(self.prefix.clone()),
            parser: Parser::new(
                self.source.format,
                self.origin.clone(),
                self.source.message_max_length,
                path,
            )
            .with_prefix(self.prefix.clone()),
            gone_since: None,
            last_data: Instant::now(),
            size,
            last_sent_end: start,
            suspect: false,
            mtime: None,
        });
    }

    /// Checkpointed files that no glob finds any more may have been renamed while we were
    /// down (rotation): look for their inode in their directory and drain them.
    fn find_renamed_known_files(&mut self) {
        let mut known = std::mem::take(&mut self.known).into_iter();
        while let Some((id, e)) = known.next() {
            let stop = &self.stop;
            let found = e.path.parent().and_then(|dir| {
                std::fs::read_dir(dir)
                    .ok()?
                    .flatten()
                    .take_while(|_| !stop.load(Ordering::Relaxed))
                    .find_map(|d| {
                        let meta = d.metadata().ok()?;
                        (meta.is_file() && meta.dev() == e.id.dev && meta.ino() == e.id.ino)
                            .then(|| d.path())
                    })
            });
            if self.stop.load(Ordering::Relaxed) {
                // Nothing concluded: their checkpoint entries stay as they were.
                self.known.push((id, e));
                self.known.extend(known);
                return;
            }
            let opened = found.and_then(|p| {
                let (file, meta) = open_regular(&p).ok()?;
                let head = read_head(&file).ok()?;
                (e.id.head_matches(&head) && e.offset <= meta.len())
                    .then(|| (p, file, file_id(&meta, &head), meta.len()))
            });
            match opened {
                Some((p, file, fid, size)) => {
                    self.add_stream(id, file, &p, fid, size, e.offset, "renamed while stopped");
                    if let Some(s) = self.streams.last_mut() {
                        s.gone_since = Some(Instant::now());
                    }
                }
                None => {
                    self.count_lost(&e, "it no longer exists");
                    self.progress.register_dead(
                        id,
                        &Entry {
                            dead: true,
                            ..e.clone()
                        },
                    );
                    self.dead.push(DeadFile {
                        fid: e.id,
                        offset: e.offset,
                    });
                }
            }
        }
    }

    /// A checkpointed file is gone: what was read but never acknowledged is lost (and
    /// whatever it held past that, which cannot be known).
    fn count_lost(&self, e: &Entry, why: &str) {
        let lost = e.read.saturating_sub(e.offset);
        if lost > 0 {
            self.counters.lost_bytes.fetch_add(lost, Ordering::Relaxed);
            warn!(source = %self.source.name, path = %e.path.display(), lost_bytes = lost, reason = why, "File gone before it was read and acknowledged completely; data lost.");
        }
    }

    fn resolve_pending_copies(&mut self) {
        if self.ended.len() > 1000 {
            let wanted: HashSet<StreamId> =
                self.pending_copies.iter().map(|c| c.original).collect();
            self.ended.retain(|id, _| wanted.contains(id));
        }
        let pending = std::mem::take(&mut self.pending_copies);
        for c in pending {
            let live = self.streams.iter().any(|s| s.id == c.original);
            let size = c.file.metadata().map(|m| m.len()).unwrap_or(0);
            if let Some(end) = self.ended.get(&c.original).copied() {
                self.add_stream(
                    next_stream_id(),
                    c.file,
                    &c.path,
                    c.fid,
                    size,
                    end.min(size),
                    "copy of a truncated file",
                );
            } else if !live {
                self.add_stream(
                    next_stream_id(),
                    c.file,
                    &c.path,
                    c.fid,
                    size,
                    0,
                    "copy whose original is gone",
                );
            } else if c.since.elapsed() > COPY_WAIT {
                // The original was not truncated: a plain copy; only new appends are new.
                self.add_stream(
                    next_stream_id(),
                    c.file,
                    &c.path,
                    c.fid,
                    size,
                    size,
                    "copy of a live file",
                );
            } else {
                self.pending_copies.push(c);
            }
        }
    }

    /// One turn over every stream; returns whether any data was read.
    fn read_all(&mut self) -> bool {
        let mut busy = false;
        let mut i = 0;
        while i < self.streams.len() {
            if self.closed {
                return false;
            }
            match self.read_stream(i) {
                StreamTurn::Data => {
                    busy = true;
                    i += 1;
                }
                StreamTurn::Idle => i += 1,
                StreamTurn::Drop => {
                    let s = self.streams.swap_remove(i);
                    info!(source = %self.source.name, path = %s.path.display(), "File drained and closed.");
                    self.ended.insert(s.id, s.framer.committed());
                    self.progress.end(s.id);
                    self.stats
                        .file_closed(&self.source.name, &s.path.to_string_lossy());
                }
            }
        }
        if !self.pending_copies.is_empty() {
            self.resolve_pending_copies();
        }
        busy
    }

    fn read_stream(&mut self, i: usize) -> StreamTurn {
        let now = Instant::now();
        let (size, mtime) = match self.streams[i].file.metadata() {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => return StreamTurn::Drop,
        };
        let s = &mut self.streams[i];
        s.size = size;
        let pos = s.framer.position();
        // A file truncated and refilled to exactly the length already read between two turns
        // (equal-length lines, a busy host) keeps its size: its new modification time sends
        // it to the head check as well.
        let rewritten = size == pos && mtime != s.mtime;
        if (size != pos || s.suspect || rewritten) && !self.check_head(i, size) {
            return StreamTurn::Data;
        }
        let s = &mut self.streams[i];
        s.mtime = mtime;
        let mut raws = Vec::new();
        let mut read = 0usize;
        if size > pos {
            let want = ((size - pos) as usize).min(READ_CHUNK);
            // One buffer for every read: a fresh 128 KiB allocation is an mmap, page faults
            // and an munmap each time.
            let buf = &mut self.read_buf;
            buf.resize(want, 0);
            match s.file.read_at(buf, pos) {
                Ok(n) => {
                    buf.truncate(n);
                    // A truncation (and new writes) between the head check and the read
                    // would hand us bytes of the new content at the old offset: check the
                    // head again, and drop the read if it changed.
                    let head_ok = read_head(&s.file).is_ok_and(|h| s.fid.head_matches(&h));
                    if !head_ok {
                        s.suspect = true;
                        return StreamTurn::Data;
                    }
                    read = n;
                    s.framer.feed(buf, &mut raws);
                    s.last_data = now;
                }
                Err(e) => {
                    warn!(path = %s.path.display(), error = %e, "Read failed.");
                    return StreamTurn::Idle;
                }
            }
        }
        let mut drop = false;
        if read == 0 {
            if s.framer.has_pending() && now >= s.last_data + self.source.multiline_timeout {
                s.framer.flush_pending(&mut raws);
            }
            if s.gone_since.is_some() && now >= s.last_data + self.source.rotate_wait {
                s.framer.finish(&mut raws);
                drop = true;
            }
        }
        let stream_id = s.id;
        let committed = s.framer.committed();
        let need_send = !raws.is_empty() || committed > s.last_sent_end;
        let path = s.path.to_string_lossy().into_owned();
        let position = s.framer.position();
        let records = raws.len() as u64;
        // Before the send, which blocks while the buffer is full: the lag shows the file's
        // growth seen now rather than waiting for the sink to take the chunk.
        if read > 0 || records > 0 {
            self.stats.file_read(
                &self.source.name,
                &path,
                read as u64,
                records,
                size,
                position,
            );
        }
        if need_send {
            let chunk = self.make_chunk(i, stream_id, &raws, committed);
            self.streams[i].last_sent_end = committed;
            self.send(chunk);
        }
        if drop {
            StreamTurn::Drop
        } else if read > 0 {
            StreamTurn::Data
        } else {
            StreamTurn::Idle
        }
    }

    /// Verifies the head of stream `i`; on a truncation or rewrite, ends the stream and starts
    /// a new one at 0 for the same file. Returns whether the stream is unchanged.
    fn check_head(&mut self, i: usize, size: u64) -> bool {
        let s = &mut self.streams[i];
        s.suspect = false;
        let truncated = size < s.framer.position();
        let Ok(head) = read_head(&s.file) else {
            return true;
        };
        if !truncated && s.fid.head_matches(&head) {
            if head.len() > s.fid.head_len as usize {
                s.fid.head_len = head.len() as u32;
                s.fid.head_hash = head_hash(&head);
                self.progress.update(s.id, s.fid, &s.path);
            }
            return true;
        }
        // Truncated (in place, or copytruncate): the old generation ends here.
        info!(source = %self.source.name, path = %s.path.display(), at = s.framer.position(), "File truncated; reading it again from the start.");
        self.counters.truncations.fetch_add(1, Ordering::Relaxed);
        let old_id = s.id;
        let committed = s.framer.committed();
        self.ended.insert(old_id, committed);
        self.dead.push(DeadFile {
            fid: s.fid,
            offset: committed,
        });
        if self.dead.len() > 1000 {
            self.dead.remove(0);
        }
        self.progress.end(old_id);
        let new_id = next_stream_id();
        let meta_fid = FileId {
            dev: s.fid.dev,
            ino: s.fid.ino,
            head_len: head.len() as u32,
            head_hash: head_hash(&head),
        };
        s.id = new_id;
        s.fid = meta_fid;
        s.framer = Framer::new(self.source.format, 0, self.source.record_max_bytes as usize)
            .with_prefix(self.prefix.clone());
        s.last_sent_end = 0;
        self.progress.register(new_id, meta_fid, &s.path, 0);
        self.resolve_pending_copies();
        false
    }

    fn make_chunk(&self, i: usize, stream: StreamId, raws: &[RawRecord], end: u64) -> Chunk {
        let s = &self.streams[i];
        let mut records = Vec::with_capacity(raws.len());
        for raw in raws {
            let (record, flags) = s.parser.parse(raw);
            let c = &self.counters;
            if flags.invalid_utf8 {
                c.invalid_utf8.fetch_add(1, Ordering::Relaxed);
            }
            if flags.truncated {
                c.truncated.fetch_add(1, Ordering::Relaxed);
            }
            if flags.parse_error {
                c.parse_errors.fetch_add(1, Ordering::Relaxed);
            }
            if flags.message_cut {
                c.message_cut.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .observe_log_record(&self.source.name, self.source.format, &record);
            if let (Some(min), Some(level)) = (self.source.min_level, record.level)
                && level > min
            {
                c.filtered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            c.records.fetch_add(1, Ordering::Relaxed);
            records.push((raw.end, record));
        }
        Chunk {
            source: self.index,
            stream,
            records,
            end,
            // Numbered when handed off.
            sent: 0,
        }
    }

    fn send(&mut self, chunk: Chunk) {
        let mut chunk = chunk;
        chunk.sent = self.progress.sent(chunk.stream, chunk.end);
        let chunk = Arc::new(chunk);
        for out in &self.outputs {
            // One reservation for all the waiting: it keeps this source's place in the queue
            // of senders waiting for room.
            let mut reserve = std::pin::pin!(out.reserve());
            loop {
                // The timer is made inside the runtime's context.
                let wait = async { tokio::time::timeout(LAG_REFRESH, reserve.as_mut()).await };
                match self.runtime.block_on(wait) {
                    Ok(Ok(permit)) => {
                        permit.send(chunk.clone());
                        break;
                    }
                    Ok(Err(_)) => {
                        // The sinks are gone: the pipeline is stopping.
                        self.closed = true;
                        return;
                    }
                    // A sink that cannot deliver (an outage) keeps reading paused for as
                    // long as it lasts, and that is when the files' lag matters.
                    Err(_) => self.refresh_lag(),
                }
            }
        }
    }

    /// Updates the size of every open file, so that its lag keeps growing while reading
    /// waits.
    fn refresh_lag(&self) {
        for s in &self.streams {
            if let Ok(m) = s.file.metadata() {
                let path = s.path.to_string_lossy();
                self.stats
                    .file_read(&self.source.name, &path, 0, 0, m.len(), s.framer.position());
            }
        }
    }
}

enum StreamTurn {
    Data,
    Idle,
    Drop,
}
