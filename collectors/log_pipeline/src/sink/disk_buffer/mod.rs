//! The storage of a sink's disk buffer: a write-ahead log of records in segment files.
//!
//! - A frame ([`frame`]) holds one encoded [`Record`], with its length and a checksum. A frame
//!   is written, fsynced, and only then visible to the reader and acknowledged to the
//!   checkpoints.
//! - Segment files `<seq:020>.seg` grow to about an eighth of `max_size` (at most 128 MiB);
//!   a segment is deleted once the reader's persisted position is past it.
//! - The reader's position (segment, offset after the last delivered frame) is written
//!   atomically to `reader.pos` after each delivered batch: after a crash, at most the batch
//!   in flight is delivered again.
//! - A writer always starts a new segment, so everything from an earlier run is read up to
//!   its file end: a torn or corrupt frame there (a crash between write and fsync, a bad disk)
//!   is detected by its length or checksum, counted, logged and skipped. Those records were
//!   never acknowledged, so the tailer reads them again from the files.
//! - `lock` is held (flock) while the buffer is open: one process, one pipeline at a time.

mod frame;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::DiskBufferConfig;
use crate::record::Record;
use crate::stats::SinkCounters;
use frame::{HEADER, MIN_PAYLOAD, RecordDecoder, crc32};

pub(super) use frame::push_frame;

/// The largest segment.
const SEGMENT_MAX: u64 = 128 * 1024 * 1024;
/// The smallest segment.
const SEGMENT_MIN: u64 = 16 * 1024;
/// How much the reader reads ahead.
const READ_AHEAD: usize = 1024 * 1024;
const POS_FILE: &str = "reader.pos";

// ---------------------------------------------------------------------------------------
// Shared state

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// Bytes written and fsynced (the reader never reads past them).
    len: u64,
}

#[derive(Debug)]
struct State {
    /// Every segment file, oldest first; the last is the one being written.
    segments: VecDeque<Segment>,
    /// Bytes of all segment files.
    bytes: u64,
    /// The writer has ended: once read to the end, nothing more comes.
    writer_done: bool,
}

impl State {
    fn active(&self) -> Option<u64> {
        self.segments.back().map(|s| s.seq)
    }
}

/// What the writer and the reader of one buffer share.
#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    max_size: u64,
    segment_max: u64,
    state: Mutex<State>,
    /// Bumped when frames become readable or a segment is sealed.
    committed: watch::Sender<u64>,
    /// Bumped when segments are deleted.
    freed: watch::Sender<u64>,
    counters: Arc<SinkCounters>,
    /// Held (flock) while the buffer is open.
    _lock: File,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        agent_kit::sync::lock(&self.state)
    }

    /// Watches commits (new frames, sealed segments).
    pub(crate) fn subscribe_committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Watches deletions (free space).
    pub(crate) fn subscribe_freed(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }

    /// Whether the writer has ended.
    pub(crate) fn writer_done(&self) -> bool {
        self.lock().writer_done
    }

    fn publish_bytes(&self, bytes: u64) {
        self.counters
            .disk_buffer_bytes
            .store(bytes, Ordering::Relaxed);
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads `reader.pos`: `None` when absent or unreadable (then everything is read again).
fn load_position(dir: &Path) -> Option<(u64, u64)> {
    let path = dir.join(POS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "Cannot read the disk buffer position; reading the whole buffer again (duplicates possible).");
            return None;
        }
    };
    if bytes.len() != 20 || crc32(&[&bytes[..16]]).to_le_bytes() != bytes[16..20] {
        warn!(path = %path.display(), "Corrupt disk buffer position; reading the whole buffer again (duplicates possible).");
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    let seq = u64::from_le_bytes(a);
    a.copy_from_slice(&bytes[8..16]);
    Some((seq, u64::from_le_bytes(a)))
}

fn store_position(dir: &Path, seq: u64, offset: u64) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(20);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&offset.to_le_bytes());
    let crc = crc32(&[&body]);
    body.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{POS_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(POS_FILE))?;
    sync_dir(dir)
}

fn take_lock(dir: &Path) -> std::io::Result<File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // A pipeline being replaced (reload) may still be closing it: wait a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::other(
                    "in use by another log_shipper (lock held)",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Opens (or creates) the buffer in `config.path`: returns its writer and its reader.
pub(crate) fn open(
    config: &DiskBufferConfig,
    sink: &str,
    counters: Arc<SinkCounters>,
) -> std::io::Result<(BufferWriter, BufferReader)> {
    let dir = config.path.clone();
    std::fs::create_dir_all(&dir)?;
    let lock = take_lock(&dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.metadata()?.len()));
    }
    found.sort_unstable();
    let position = load_position(&dir);
    let mut segments = VecDeque::new();
    for (seq, len) in found {
        if position.is_some_and(|(p, _)| seq < p) {
            // Read and delivered before the last stop, but not deleted yet.
            std::fs::remove_file(segment_path(&dir, seq))?;
        } else {
            segments.push_back(Segment { seq, len });
        }
    }
    let (pos_seq, pos_offset) = position.unwrap_or((0, 0));
    let (read_seq, read_offset) = match segments.front() {
        Some(s) if s.seq == pos_seq => (s.seq, pos_offset.min(s.len)),
        Some(s) => (s.seq, 0),
        None => (pos_seq, 0),
    };
    let backlog: u64 = segments.iter().map(|s| s.len).sum::<u64>() - read_offset;
    // Always a fresh segment: whatever an earlier run left is read to its file end.
    let write_seq = segments
        .back()
        .map_or(pos_seq, |s| s.seq)
        .max(pos_seq)
        .saturating_add(1);
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .read(true)
        .open(segment_path(&dir, write_seq))?;
    sync_dir(&dir)?;
    segments.push_back(Segment {
        seq: write_seq,
        len: 0,
    });
    let bytes = segments.iter().map(|s| s.len).sum();
    let segment_max = (config.max_size / 8).clamp(SEGMENT_MIN, SEGMENT_MAX);
    counters
        .disk_buffer_max_bytes
        .store(config.max_size, Ordering::Relaxed);
    counters.disk_buffer_bytes.store(bytes, Ordering::Relaxed);
    if backlog > 0 {
        info!(sink, path = %dir.display(), bytes = backlog, "Disk buffer holds records from the last run; delivering them first.");
    }
    let shared = Arc::new(Shared {
        dir,
        max_size: config.max_size,
        segment_max,
        state: Mutex::new(State {
            segments,
            bytes,
            writer_done: false,
        }),
        committed: watch::Sender::new(0),
        freed: watch::Sender::new(0),
        counters,
        _lock: lock,
    });
    Ok((
        BufferWriter {
            shared: shared.clone(),
            file,
            seq: write_seq,
            len: 0,
        },
        BufferReader {
            shared,
            sink: sink.to_owned(),
            seq: read_seq,
            offset: read_offset,
            file: None,
            buf: Vec::new(),
            buf_off: 0,
            decoder: RecordDecoder::default(),
            carry: None,
            consumed: (read_seq, read_offset),
            persisted: position,
        },
    ))
}

// ---------------------------------------------------------------------------------------
// Writer

/// Appends frames to the active segment.
#[derive(Debug)]
pub(crate) struct BufferWriter {
    shared: Arc<Shared>,
    file: File,
    seq: u64,
    /// Bytes written and fsynced to the active segment.
    len: u64,
}

impl BufferWriter {
    /// What the writer and the reader share.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether `extra` more bytes fit besides `pending` not written yet. An empty buffer
    /// takes any frame, so one record larger than `max_size` cannot stall the sink forever.
    pub(crate) fn fits(&self, pending: u64, extra: u64) -> bool {
        let used = self.shared.lock().bytes + pending;
        used == 0 || used + extra <= self.shared.max_size
    }

    /// Writes `frames` (whole frames), fsyncs, and makes them visible to the reader. On an
    /// error nothing of them counts (a retry writes them at the same place).
    pub(crate) fn append(&mut self, frames: &[u8]) -> std::io::Result<()> {
        let mut start = 0;
        let mut pos = 0;
        while pos < frames.len() {
            let len = u32::from_le_bytes([
                frames[pos],
                frames[pos + 1],
                frames[pos + 2],
                frames[pos + 3],
            ]);
            let flen = HEADER + len as usize;
            let written = self.len + (pos - start) as u64;
            if written > 0 && written + flen as u64 > self.shared.segment_max {
                self.write_run(&frames[start..pos])?;
                self.roll()?;
                start = pos;
            }
            pos += flen;
        }
        self.write_run(&frames[start..])
    }

    fn write_run(&mut self, run: &[u8]) -> std::io::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(run, self.len)?;
        self.file.sync_data()?;
        self.len += run.len() as u64;
        let bytes = {
            let mut st = self.shared.lock();
            if let Some(seg) = st.segments.iter_mut().rev().find(|s| s.seq == self.seq) {
                seg.len = self.len;
            }
            st.bytes += run.len() as u64;
            st.bytes
        };
        self.shared.publish_bytes(bytes);
        self.shared.committed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Whether the segment being written holds anything.
    pub(crate) fn segment_in_use(&self) -> bool {
        self.len > 0
    }

    /// Starts a new segment (if the current one holds anything), so that the current one
    /// can be deleted once read.
    pub(crate) fn seal(&mut self) -> std::io::Result<()> {
        if self.len > 0 {
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> std::io::Result<()> {
        let seq = self.seq + 1;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .open(segment_path(&self.shared.dir, seq))?;
        sync_dir(&self.shared.dir)?;
        self.file = file;
        self.seq = seq;
        self.len = 0;
        self.shared
            .lock()
            .segments
            .push_back(Segment { seq, len: 0 });
        self.shared.committed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Nothing more will be written.
    pub(crate) fn finish(&self) {
        self.shared.lock().writer_done = true;
        self.shared.committed.send_modify(|n| *n += 1);
    }
}

// ---------------------------------------------------------------------------------------
// Reader

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The batch is full.
    Full,
    /// Everything committed so far has been read.
    Drained,
}

/// Reads frames in order and keeps the delivered position.
#[derive(Debug)]
pub(crate) struct BufferReader {
    shared: Arc<Shared>,
    sink: String,
    /// Next frame to read.
    seq: u64,
    offset: u64,
    file: Option<File>,
    /// Bytes of the current segment from `buf_off`.
    buf: Vec<u8>,
    buf_off: u64,
    decoder: RecordDecoder,
    /// A record read that did not fit the batch, with the position before it.
    carry: Option<(Record, (u64, u64))>,
    /// Position after the last record handed out.
    consumed: (u64, u64),
    /// Position last written to `reader.pos`.
    persisted: Option<(u64, u64)>,
}

enum Frame {
    Record(Record, u64),
    /// Skip to this offset.
    Corrupt(u64, String),
    /// Nothing (more) in this segment.
    End,
}

impl BufferReader {
    /// What the writer and the reader share.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reads records into `out` (with their estimated size added to `bytes`) until
    /// `max_events` or `max_bytes` is reached or nothing more is committed.
    pub(crate) fn read(
        &mut self,
        out: &mut Vec<Record>,
        bytes: &mut u64,
        max_events: usize,
        max_bytes: u64,
    ) -> std::io::Result<ReadEnd> {
        let fits = |out: &Vec<Record>, bytes: u64, r: &Record| {
            out.is_empty()
                || (out.len() < max_events && bytes + r.estimated_size() as u64 <= max_bytes)
        };
        if let Some((r, before)) = self.carry.take() {
            if !fits(out, *bytes, &r) {
                self.carry = Some((r, before));
                return Ok(ReadEnd::Full);
            }
            *bytes += r.estimated_size() as u64;
            out.push(r);
        }
        loop {
            if out.len() >= max_events {
                self.consumed = (self.seq, self.offset);
                return Ok(ReadEnd::Full);
            }
            let first = self.shared.lock().segments.front().map(|s| s.seq);
            if let Some(first) = first
                && first > self.seq
            {
                // Only after a lost segment file; start at the oldest one left.
                self.goto(first);
            }
            let (limit, sealed, next) = {
                let st = self.shared.lock();
                let seg = st.segments.iter().find(|s| s.seq == self.seq).copied();
                let next = st.segments.iter().find(|s| s.seq > self.seq).map(|s| s.seq);
                match seg {
                    Some(s) => (s.len, st.active() != Some(s.seq), next),
                    None => (0, true, next),
                }
            };
            let frame = if self.offset >= limit {
                Frame::End
            } else {
                self.next_frame(limit)?
            };
            match frame {
                Frame::Record(r, end) => {
                    let before = (self.seq, self.offset);
                    self.offset = end;
                    if !fits(out, *bytes, &r) {
                        self.carry = Some((r, before));
                        self.consumed = before;
                        return Ok(ReadEnd::Full);
                    }
                    *bytes += r.estimated_size() as u64;
                    out.push(r);
                }
                Frame::Corrupt(to, why) => {
                    let skipped = to.saturating_sub(self.offset);
                    self.shared
                        .counters
                        .disk_buffer_corrupt_frames
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .counters
                        .disk_buffer_corrupt_bytes
                        .fetch_add(skipped, Ordering::Relaxed);
                    warn!(sink = %self.sink, segment = %segment_path(&self.shared.dir, self.seq).display(), offset = self.offset, skipped_bytes = skipped, reason = %why, "Corrupt or torn frame in the disk buffer skipped (its records were not acknowledged and are read again from the files).");
                    self.offset = to;
                }
                Frame::End => match (sealed, next) {
                    (true, Some(n)) => self.goto(n),
                    _ => {
                        self.consumed = (self.seq, self.offset);
                        return Ok(ReadEnd::Drained);
                    }
                },
            }
        }
    }

    fn goto(&mut self, seq: u64) {
        self.seq = seq;
        self.offset = 0;
        self.file = None;
        self.buf.clear();
        self.buf_off = 0;
    }

    /// Makes sure `buf` holds the current segment's bytes `[from, to)` (`to <= limit`).
    fn ensure(&mut self, from: u64, to: u64, limit: u64) -> std::io::Result<()> {
        let have_end = self.buf_off + self.buf.len() as u64;
        if from >= self.buf_off && to <= have_end {
            return Ok(());
        }
        let file = match &self.file {
            Some(f) => f,
            None => {
                let f = File::open(segment_path(&self.shared.dir, self.seq))?;
                self.file.insert(f)
            }
        };
        let end = limit.min(from + READ_AHEAD as u64).max(to);
        self.buf.resize((end - from) as usize, 0);
        self.buf_off = from;
        file.read_exact_at(&mut self.buf, from)
    }

    fn next_frame(&mut self, limit: u64) -> std::io::Result<Frame> {
        let at = self.offset;
        if at + HEADER as u64 > limit {
            return Ok(Frame::Corrupt(limit, "partial frame header".into()));
        }
        match self.ensure(at, at + HEADER as u64, limit) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(Frame::Corrupt(
                    limit,
                    "segment shorter than expected".into(),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Frame::Corrupt(limit, "segment file missing".into()));
            }
            Err(e) => return Err(e),
        }
        let i = (at - self.buf_off) as usize;
        let h = &self.buf[i..i + HEADER];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let end = at + HEADER as u64 + u64::from(len);
        if len < MIN_PAYLOAD || end > limit {
            return Ok(Frame::Corrupt(
                limit,
                format!("frame length {len} impossible here"),
            ));
        }
        match self.ensure(at, end, limit) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(Frame::Corrupt(
                    limit,
                    "segment shorter than expected".into(),
                ));
            }
            Err(e) => return Err(e),
        }
        let i = (at - self.buf_off) as usize;
        let payload = &self.buf[i + HEADER..i + HEADER + len as usize];
        if crc32(&[&len.to_le_bytes(), payload]) != crc {
            return Ok(Frame::Corrupt(end, "checksum mismatch".into()));
        }
        match self.decoder.decode(payload) {
            Ok(r) => Ok(Frame::Record(r, end)),
            Err(e) => Ok(Frame::Corrupt(end, e)),
        }
    }

    /// Whether the position moved past whole segments since it was last persisted (they can
    /// be freed).
    pub(crate) fn needs_commit(&self) -> bool {
        self.persisted.is_none_or(|(s, _)| s < self.consumed.0)
    }

    /// Persists the position after the records handed out so far and deletes the segments
    /// before it.
    pub(crate) fn commit(&mut self) -> std::io::Result<()> {
        let (seq, offset) = self.consumed;
        if self.persisted != Some((seq, offset)) {
            store_position(&self.shared.dir, seq, offset)?;
            self.persisted = Some((seq, offset));
        }
        let doomed: Vec<Segment> = {
            let st = self.shared.lock();
            st.segments
                .iter()
                .filter(|s| s.seq < seq)
                .copied()
                .collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        let mut freed = 0;
        for s in &doomed {
            match std::fs::remove_file(segment_path(&self.shared.dir, s.seq)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(sink = %self.sink, error = %e, "Cannot delete a read disk buffer segment.");
                    break;
                }
            }
            freed += 1;
        }
        let bytes = {
            let mut st = self.shared.lock();
            for s in &doomed[..freed] {
                if let Some(i) = st.segments.iter().position(|x| x.seq == s.seq) {
                    st.segments.remove(i);
                    st.bytes -= s.len;
                }
            }
            st.bytes
        };
        self.shared.publish_bytes(bytes);
        self.shared.freed.send_modify(|n| *n += 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WhenFull;
    use crate::record::{Level, Origin, PgFields};

    fn record(i: u64, extra: bool) -> Record {
        Record {
            time: jiff::Timestamp::new(1_700_000_000 + i as i64, 123_000_000).unwrap(),
            origin: Arc::new(Origin {
                job: "postgres".into(),
                ins: "pg-test-1".into(),
                ip: "10.0.0.1".into(),
                cls: String::new(),
            }),
            level: Some(Level::Warning),
            message: format!("seq={i} message with \"quotes\"\nand a second line"),
            pg: extra.then(|| {
                Box::new(PgFields {
                    lv: "WARNING".into(),
                    code: "01000".into(),
                    user: "dbuser".into(),
                    db: "app".into(),
                    app: "psql".into(),
                    query: "-42".into(),
                    duration: Some(12.5),
                    pid: "4242".into(),
                    backend_type: "client backend".into(),
                })
            }),
            topic: extra.then(|| "main".into()),
            extra: if extra {
                vec![("pid", "7".into()), ("unit", "pgbouncer".into())]
            } else {
                Vec::new()
            },
            parse_error: extra.then(|| "no parser".into()),
        }
    }

    fn config(dir: &Path, max_size: u64) -> DiskBufferConfig {
        DiskBufferConfig {
            path: dir.to_owned(),
            max_size,
            when_full: WhenFull::Block,
        }
    }

    fn read_all(r: &mut BufferReader) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while r.read(&mut out, &mut bytes, usize::MAX, u64::MAX).unwrap() == ReadEnd::Full {}
        out
    }

    #[test]
    fn records_round_trip() {
        let mut d = RecordDecoder::default();
        for extra in [false, true] {
            let r = record(7, extra);
            let mut buf = Vec::new();
            push_frame(&mut buf, &r);
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(buf.len(), HEADER + len);
            let back = d.decode(&buf[HEADER..]).unwrap();
            assert_eq!(back, r);
        }
        let a = d.decode(&{
            let mut b = Vec::new();
            push_frame(&mut b, &record(1, false));
            b.split_off(HEADER)
        });
        let b = d.decode(&{
            let mut b = Vec::new();
            push_frame(&mut b, &record(2, false));
            b.split_off(HEADER)
        });
        assert!(Arc::ptr_eq(&a.unwrap().origin, &b.unwrap().origin));
    }

    #[test]
    fn frames_survive_a_restart_and_segments_are_freed() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(SinkCounters::default());
        // 64 KiB: segments of 16 KiB.
        let (mut w, mut r) = open(&config(dir.path(), 64 * 1024), "t", counters.clone()).unwrap();
        let mut frames = Vec::new();
        for i in 0..300 {
            push_frame(&mut frames, &record(i, i % 3 == 0));
        }
        w.append(&frames).unwrap();
        let segs = |dir: &Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
                .count()
        };
        assert!(segs(dir.path()) > 2, "rolled over");
        assert_eq!(
            counters.disk_buffer_bytes.load(Ordering::Relaxed),
            frames.len() as u64
        );
        // Read half, deliver, commit; then "crash".
        let mut out = Vec::new();
        let mut bytes = 0;
        assert_eq!(
            r.read(&mut out, &mut bytes, 150, u64::MAX).unwrap(),
            ReadEnd::Full
        );
        assert_eq!(out.len(), 150);
        r.commit().unwrap();
        assert!(counters.disk_buffer_bytes.load(Ordering::Relaxed) < frames.len() as u64);
        // Read more without committing: replayed after the restart.
        let mut more = Vec::new();
        r.read(&mut more, &mut bytes, 20, u64::MAX).unwrap();
        drop((w, r));
        let (w, mut r) = open(&config(dir.path(), 64 * 1024), "t", counters.clone()).unwrap();
        let rest = read_all(&mut r);
        let seqs: Vec<String> = rest
            .iter()
            .map(|x| x.message.split(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(rest.len(), 150, "{seqs:?}");
        assert_eq!(rest[0], record(150, true));
        r.commit().unwrap();
        drop((w, r));
        // Everything read: only the empty segments of the two runs are left, then one.
        let (_w, mut r) = open(&config(dir.path(), 64 * 1024), "t", counters.clone()).unwrap();
        assert!(read_all(&mut r).is_empty());
        r.commit().unwrap();
        assert_eq!(segs(dir.path()), 1);
        assert_eq!(
            counters.disk_buffer_corrupt_frames.load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn torn_and_corrupt_frames_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(SinkCounters::default());
        let cfg = config(dir.path(), 1 << 20);
        // Run 1: ten frames; then a bit flip in the 3rd frame's payload and a torn 11th frame.
        let (mut w, r) = open(&cfg, "t", counters.clone()).unwrap();
        let mut frames = Vec::new();
        for i in 0..10 {
            push_frame(&mut frames, &record(i, false));
        }
        w.append(&frames).unwrap();
        let seg = segment_path(dir.path(), w.seq);
        drop((w, r));
        let frame_len = frames.len() / 10;
        let mut data = std::fs::read(&seg).unwrap();
        data[2 * frame_len + HEADER + 20] ^= 0x40;
        let mut torn = Vec::new();
        push_frame(&mut torn, &record(10, false));
        data.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&seg, &data).unwrap();
        // Run 2: one frame, then a zero-filled tail (a crash on some file systems).
        let (mut w, r) = open(&cfg, "t", counters.clone()).unwrap();
        let mut more = Vec::new();
        push_frame(&mut more, &record(11, false));
        w.append(&more).unwrap();
        let seg2 = segment_path(dir.path(), w.seq);
        drop((w, r));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&seg2)
            .unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        // Run 3 reads both.
        let (_w, mut r) = open(&cfg, "t", counters.clone()).unwrap();
        let got: Vec<u64> = read_all(&mut r)
            .iter()
            .map(|x| x.time.as_second() as u64 - 1_700_000_000)
            .collect();
        assert_eq!(got, vec![0, 1, 3, 4, 5, 6, 7, 8, 9, 11]);
        assert_eq!(
            counters.disk_buffer_corrupt_frames.load(Ordering::Relaxed),
            3
        );
        assert_eq!(
            counters.disk_buffer_corrupt_bytes.load(Ordering::Relaxed),
            (frame_len + torn.len() / 2 + 4096) as u64
        );
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(SinkCounters::default());
        let _first = open(&config(dir.path(), 1 << 20), "t", counters.clone()).unwrap();
        let e = open(&config(dir.path(), 1 << 20), "t", counters).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn fits_counts_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(SinkCounters::default());
        let (mut w, _r) = open(&config(dir.path(), 64 * 1024), "t", counters).unwrap();
        assert!(w.fits(0, 1 << 30), "an empty buffer takes any frame");
        assert!(!w.fits(1, 64 * 1024));
        let mut frames = Vec::new();
        push_frame(&mut frames, &record(1, false));
        w.append(&frames).unwrap();
        assert!(w.fits(0, 64 * 1024 - frames.len() as u64));
        assert!(!w.fits(0, 64 * 1024 - frames.len() as u64 + 1));
    }
}
