//! Checkpoints: per source, the position in each file up to which every subscribed sink has
//! acknowledged the records, written atomically (temp file, fsync, rename, fsync of the
//! directory) to `<checkpoint_dir>/<source>.json`.
//!
//! A file is identified by its [`FileId`] (device, inode, head hash), so a reused inode is a
//! new file and a truncated file is recognised. Ended files (rotated away and drained,
//! truncated) are kept as `dead` entries for a while: a copy of them (logrotate
//! `copytruncate`) is then read from where the original stopped.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::identity::{FileId, StreamId};

/// How long an ended file's entry is kept once fully acknowledged.
pub const DEAD_TTL: Duration = Duration::from_secs(600);

/// One file's position in a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// The file.
    #[serde(flatten)]
    pub id: FileId,
    /// Byte offset after the last record every sink acknowledged.
    pub offset: u64,
    /// Byte offset after the last record read (offset..read may be re-sent after a crash).
    #[serde(default)]
    pub read: u64,
    /// Last known path: a string when it is UTF-8 (as checkpoints always held), else its bytes
    /// (see [`path_bytes`]).
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// The file has ended (rotated away and drained, or truncated).
    #[serde(default)]
    pub dead: bool,
}

/// A path in a checkpoint: a JSON string when it is UTF-8, else the array of its bytes, so
/// that a file name in another encoding (`bad\xff.log`) is kept exactly and does not stop
/// the checkpoints of the whole source. Checkpoints written before hold strings only.
pub mod path_bytes {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize as _, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Text(String),
        Bytes(Vec<u8>),
    }

    /// Writes `path` as a string, or as its bytes when it is not UTF-8.
    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => text.serialize(s),
            None => path.as_os_str().as_bytes().serialize(s),
        }
    }

    /// Reads a path written by [`serialize`] (or by an older version: a string).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Text(text) => PathBuf::from(text),
            Stored::Bytes(bytes) => PathBuf::from(OsString::from_vec(bytes)),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    files: Vec<FilePosition>,
}

/// Why a checkpoint file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The content is not a checkpoint.
    #[error("checkpoint {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The checkpoint file of source `name`.
pub fn path_for(dir: &Path, source: &str) -> PathBuf {
    dir.join(format!("{source}.json"))
}

/// Loads a checkpoint file; `Ok(None)` when there is none (the very first start).
pub fn load(path: &Path) -> Result<Option<Vec<FilePosition>>, CheckpointError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let file: CheckpointFile =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if file.version != 1 {
        return Err(CheckpointError::Corrupt {
            path: path.to_owned(),
            message: format!("unknown version {}", file.version),
        });
    }
    Ok(Some(file.files))
}

/// Writes `entries` atomically: a temp file beside it, fsync, rename, fsync of the directory.
pub fn store(path: &Path, entries: &[FilePosition]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let body = serde_json::to_vec(&CheckpointFile {
        version: 1,
        files: entries.to_vec(),
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    write_atomic(path, &body)
}

/// Writes `body` to `path` atomically: a temp file beside it (`.json.tmp`), fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(body).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[derive(Debug)]
struct StreamProgress {
    id: FileId,
    path: PathBuf,
    /// Per subscribed sink, the offset after its last acknowledged record.
    acked: Vec<u64>,
    /// Offset after the last record handed to the sinks.
    sent: u64,
    dead_since: Option<Instant>,
}

impl StreamProgress {
    fn offset(&self) -> u64 {
        self.acked.iter().copied().min().unwrap_or(self.sent)
    }
}

/// What the tailer, the sinks and the checkpointer of one source share.
#[derive(Debug)]
pub struct SourceProgress {
    /// Global indices of the sinks subscribed to the source.
    sinks: Vec<usize>,
    streams: Mutex<HashMap<StreamId, StreamProgress>>,
    changed: Notify,
    /// Counts acknowledgements.
    acks: AtomicU64,
    /// Counts chunks handed to the sinks.
    sends: AtomicU64,
    /// What the last checkpoint written covers.
    persisted: watch::Sender<Covered>,
}

/// What a checkpoint covers: acknowledgements and chunks handed to the sinks, by count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Covered {
    /// Acknowledgements, up to this one: its offsets.
    pub acks: u64,
    /// Chunks handed to the sinks, up to this one: its `read` offsets, so that what a
    /// restart reads again counts every record a sink may have received before.
    pub sends: u64,
}

impl SourceProgress {
    /// Progress for a source whose records go to `sinks`.
    pub fn new(sinks: Vec<usize>) -> SourceProgress {
        SourceProgress {
            sinks,
            streams: Mutex::default(),
            changed: Notify::new(),
            acks: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            persisted: watch::Sender::new(Covered::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, StreamProgress>> {
        agent_kit::sync::lock(&self.streams)
    }

    /// Starts tracking a stream read from `start`.
    pub fn register(&self, stream: StreamId, id: FileId, path: &Path, start: u64) {
        self.lock().insert(
            stream,
            StreamProgress {
                id,
                path: path.to_owned(),
                acked: vec![start; self.sinks.len()],
                sent: start,
                dead_since: None,
            },
        );
        self.changed.notify_one();
    }

    /// Tracks a live file of the last checkpoint that the tailer has not found yet: written
    /// back as it was (offset and read) until the tailer finds it, under the same `stream`,
    /// or concludes it is gone, so that a stop before then loses no position.
    pub fn register_known(&self, stream: StreamId, entry: &FilePosition) {
        self.insert_position(stream, entry, entry.read.max(entry.offset), None);
    }

    /// Tracks an ended file known from the last checkpoint (kept for copy detection).
    pub fn register_dead(&self, stream: StreamId, entry: &FilePosition) {
        self.insert_position(stream, entry, entry.offset, Some(Instant::now()));
    }

    fn insert_position(
        &self,
        stream: StreamId,
        e: &FilePosition,
        sent: u64,
        dead: Option<Instant>,
    ) {
        self.lock().insert(
            stream,
            StreamProgress {
                id: e.id,
                path: e.path.clone(),
                acked: vec![e.offset; self.sinks.len()],
                sent,
                dead_since: dead,
            },
        );
    }

    /// The file's identity or path changed (head grew, rename).
    pub fn update(&self, stream: StreamId, id: FileId, path: &Path) {
        if let Some(e) = self.lock().get_mut(&stream) {
            e.id = id;
            if e.path != path {
                path.clone_into(&mut e.path);
            }
        }
    }

    /// Records up to `offset` are handed to the sinks; returns the hand-off's number, for
    /// [`wait_persisted`](Self::wait_persisted).
    pub fn sent(&self, stream: StreamId, offset: u64) -> u64 {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(&stream) {
            e.sent = e.sent.max(offset);
            if self.sinks.is_empty() {
                self.changed.notify_one();
            }
        }
        // Under the lock, so that a snapshot's count and its `read` offsets agree.
        self.sends.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Sink `sink` (global index) acknowledged records up to `offset`. Returns the
    /// acknowledgement's number, to wait for with [`wait_persisted`](Self::wait_persisted).
    pub fn ack(&self, sink: usize, stream: StreamId, offset: u64) -> u64 {
        let Some(slot) = self.sinks.iter().position(|s| *s == sink) else {
            return 0;
        };
        let n = {
            let mut map = self.lock();
            if let Some(e) = map.get_mut(&stream) {
                e.acked[slot] = e.acked[slot].max(offset);
            }
            self.acks.fetch_add(1, Ordering::SeqCst) + 1
        };
        self.changed.notify_one();
        n
    }

    /// Waits (at most `timeout`) until a checkpoint covering `want` is on disk, so that a
    /// crash re-sends at most the batch in flight, and counts what it re-sends.
    pub async fn wait_persisted(&self, want: Covered, timeout: Duration) {
        let mut rx = self.persisted.subscribe();
        if rx.borrow().sends < want.sends {
            // Hand-offs alone do not wake the checkpointer.
            self.changed.notify_one();
        }
        let covers = |p: &Covered| p.acks >= want.acks && p.sends >= want.sends;
        let _ = tokio::time::timeout(timeout, rx.wait_for(covers)).await;
    }

    /// The stream ended; its entry stays (dead) until acknowledged and expired.
    pub fn end(&self, stream: StreamId) {
        if let Some(e) = self.lock().get_mut(&stream) {
            e.dead_since = Some(Instant::now());
        }
        self.changed.notify_one();
    }

    /// The acknowledged offset of a stream.
    pub fn acked_offset(&self, stream: StreamId) -> Option<u64> {
        self.lock().get(&stream).map(StreamProgress::offset)
    }

    /// The entries to write, dropping dead ones that are fully acknowledged and expired.
    /// Also returns whether everything read is acknowledged, and what the entries cover.
    pub fn snapshot(&self) -> (Vec<FilePosition>, bool, Covered) {
        let mut map = self.lock();
        let covered = Covered {
            acks: self.acks.load(Ordering::SeqCst),
            sends: self.sends.load(Ordering::SeqCst),
        };
        map.retain(|_, e| match e.dead_since {
            Some(t) => e.offset() < e.sent || t.elapsed() < DEAD_TTL,
            None => true,
        });
        let mut caught_up = true;
        let mut entries: Vec<FilePosition> = map
            .values()
            .map(|e| {
                let offset = e.offset();
                caught_up &= offset >= e.sent;
                FilePosition {
                    id: e.id,
                    offset,
                    read: e.sent,
                    path: e.path.clone(),
                    dead: e.dead_since.is_some(),
                }
            })
            .collect();
        entries.sort_by(|a, b| (&a.path, a.dead, a.id.ino).cmp(&(&b.path, b.dead, b.id.ino)));
        (entries, caught_up, covered)
    }

    /// Resolves when something changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// How a source's checkpoint keeps up, for its metrics.
#[derive(Debug, Default)]
pub struct CheckpointHealth {
    /// Milliseconds since the checkpoint last covered everything read.
    pub age_ms: AtomicU64,
    /// Checkpoint writes that failed.
    pub errors: AtomicU64,
}

/// What a source's checkpoint file holds, written by [`run_checkpointer`]: the positions of
/// its files ([`FilesCheckpoint`]), or the journal cursor of a journald source.
pub trait CheckpointWriter: Send + std::fmt::Debug {
    /// Writes the checkpoint for `positions` (the snapshot of `progress` just taken) unless
    /// the file on disk holds it already.
    fn write(
        &mut self,
        progress: &SourceProgress,
        positions: Vec<FilePosition>,
    ) -> Result<(), CheckpointError>;
}

/// The checkpoint of a file source: the positions of its files, `<checkpoint_dir>/<source>.json`.
#[derive(Debug)]
pub struct FilesCheckpoint {
    path: PathBuf,
    last: Option<Vec<FilePosition>>,
}

impl FilesCheckpoint {
    /// The checkpoint written to `path` (see [`path_for`]).
    pub fn new(path: PathBuf) -> FilesCheckpoint {
        FilesCheckpoint { path, last: None }
    }
}

impl CheckpointWriter for FilesCheckpoint {
    fn write(
        &mut self,
        _progress: &SourceProgress,
        positions: Vec<FilePosition>,
    ) -> Result<(), CheckpointError> {
        if self.last.as_ref() == Some(&positions) {
            return Ok(());
        }
        store(&self.path, &positions)?;
        debug!(path = %self.path.display(), files = positions.len(), "Checkpoint written.");
        self.last = Some(positions);
        Ok(())
    }
}

/// Writes the checkpoint of one source with `writer` whenever acknowledgements move it, at
/// most every second, and once more when `stop` turns true; the one loop of every source,
/// files and journals alike.
pub async fn run_checkpointer(
    progress: Arc<SourceProgress>,
    mut writer: Box<dyn CheckpointWriter>,
    health: Arc<CheckpointHealth>,
    mut stop: watch::Receiver<bool>,
) {
    let mut caught_up_at = Instant::now();
    loop {
        let stopping = *stop.borrow();
        let (positions, caught_up, covered) = progress.snapshot();
        if caught_up {
            caught_up_at = Instant::now();
        }
        health
            .age_ms
            .store(caught_up_at.elapsed().as_millis() as u64, Ordering::Relaxed);
        match writer.write(&progress, positions) {
            Ok(()) => {
                progress.persisted.send_replace(covered);
            }
            Err(e) => {
                health.errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "Cannot write the checkpoint; retrying.");
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = progress.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::head_hash;

    fn id(ino: u64) -> FileId {
        FileId {
            dev: 1,
            ino,
            head_len: 3,
            head_hash: head_hash(b"abc"),
        }
    }

    #[test]
    fn store_and_load_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), "pg");
        assert!(load(&path).unwrap().is_none());
        let entries = vec![FilePosition {
            id: id(7),
            offset: 42,
            read: 50,
            path: "/x/y.csv".into(),
            dead: false,
        }];
        store(&path, &entries).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), entries);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(load(&path), Err(CheckpointError::Corrupt { .. })));
    }

    /// A file name that is not UTF-8 is stored as its bytes and read back exactly, beside the
    /// other files' positions; a checkpoint of an older version (paths as strings) still loads.
    #[test]
    fn a_path_that_is_not_utf8_is_stored_as_bytes_and_old_checkpoints_still_load() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), "pg");
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/x/bad\xff.log"));
        let entry = |id, path: PathBuf| FilePosition {
            id,
            offset: 4,
            read: 4,
            path,
            dead: false,
        };
        let entries = vec![entry(id(7), odd), entry(id(8), "/x/good.log".into())];
        store(&path, &entries).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), entries);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""path":"/x/good.log""#), "{text}");

        let old = r#"{"version":1,"files":[{"dev":1,"ino":9,"head_len":3,"head_hash":1,"offset":5,"path":"/x/old.log"}]}"#;
        std::fs::write(&path, old).unwrap();
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(loaded[0].path, PathBuf::from("/x/old.log"));
        assert_eq!(
            (loaded[0].offset, loaded[0].read, loaded[0].dead),
            (5, 0, false)
        );
    }

    /// A sink about to send records handed off after the last checkpoint waits for one whose
    /// `read` covers them: what a crash then re-sends is all counted as read again.
    #[tokio::test]
    async fn a_send_waits_for_a_checkpoint_whose_read_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), "pg");
        let p = Arc::new(SourceProgress::new(vec![0]));
        p.register(1, id(7), Path::new("/a"), 0);
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run_checkpointer(
            p.clone(),
            Box::new(FilesCheckpoint::new(path.clone())),
            Arc::new(CheckpointHealth::default()),
            stop,
        ));
        let sent = p.sent(1, 100);
        let acks = p.ack(0, 1, 100);
        p.wait_persisted(Covered { acks, sends: sent }, Duration::from_secs(5))
            .await;
        assert_eq!(load(&path).unwrap().unwrap()[0].read, 100);
        // Handed off, not acknowledged: only the wait's nudge writes the checkpoint (the
        // checkpointer otherwise looks again in a second).
        let sent = p.sent(1, 250);
        let start = Instant::now();
        p.wait_persisted(Covered { acks, sends: sent }, Duration::from_secs(5))
            .await;
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        let e = &load(&path).unwrap().unwrap()[0];
        assert_eq!((e.offset, e.read), (100, 250));
        stop_tx.send_replace(true);
        task.await.unwrap();
    }

    #[test]
    fn offset_is_the_minimum_over_sinks() {
        let p = SourceProgress::new(vec![0, 2]);
        p.register(1, id(7), Path::new("/a"), 10);
        p.sent(1, 100);
        p.ack(0, 1, 100);
        assert_eq!(p.acked_offset(1), Some(10));
        p.ack(2, 1, 60);
        assert_eq!(p.acked_offset(1), Some(60));
        let (entries, caught_up, _) = p.snapshot();
        assert!(!caught_up);
        assert_eq!(entries[0].offset, 60);
        assert_eq!(entries[0].read, 100);
        p.ack(2, 1, 100);
        p.end(1);
        let (entries, caught_up, _) = p.snapshot();
        assert!(caught_up && entries[0].dead);
        assert!(id(7).head_matches(b"abcdef"));
        assert!(!id(7).head_matches(b"abd"));
        assert!(!id(7).head_matches(b"ab"));
    }
}
