//! Reading a source's files: a turn over every stream reads what each grew by (at most
//! [`READ_CHUNK`]), checks its head, frames and parses the records, and hands them to the
//! sinks, waiting while their buffers are full.

use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use super::{DeadFile, LAG_REFRESH, MAX_ENDED, READ_CHUNK, StreamTurn, Tailer};
use crate::chunk::Chunk;
use crate::identity::{FileId, StreamId, head_hash, next_stream_id, read_head};
use crate::parse::{Framer, RawRecord};
use crate::source::admit;

impl Tailer {
    /// One turn over every stream; returns whether any data was read.
    pub(super) fn read_all(&mut self) -> bool {
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
                    // Where it ended, should it come back into the globs (renamed back, or
                    // within max_files again): read on from there, not from 0.
                    self.remember_ended(DeadFile {
                        fid: s.fid,
                        offset: s.framer.committed(),
                    });
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

    /// One turn of stream `i`: its head checked when the file changed, what it grew by read
    /// and framed, records held back by the multi-line timeout or by a rotation completed, and
    /// the records handed on.
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
        self.streams[i].mtime = mtime;
        let mut raws = Vec::new();
        let read = match self.read_more(i, size, now, &mut raws) {
            Ok(read) => read,
            Err(turn) => return turn,
        };
        let drained = read == 0 && self.complete_idle(i, now, &mut raws);
        self.hand_off(i, &raws, read, size);
        if drained {
            StreamTurn::Drop
        } else if read > 0 {
            StreamTurn::Data
        } else {
            StreamTurn::Idle
        }
    }

    /// Reads what stream `i` grew by (up to `size`, at most [`READ_CHUNK`]) and frames it into
    /// `raws`; returns the bytes read, or how the turn ends when the read failed or the head
    /// changed under it.
    fn read_more(
        &mut self,
        i: usize,
        size: u64,
        now: Instant,
        raws: &mut Vec<RawRecord>,
    ) -> Result<usize, StreamTurn> {
        let s = &mut self.streams[i];
        let pos = s.framer.position();
        if size <= pos {
            return Ok(0);
        }
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
                    return Err(StreamTurn::Data);
                }
                s.framer.feed(buf, raws);
                s.last_data = now;
                Ok(n)
            }
            Err(e) => {
                warn!(path = %s.path.display(), error = %e, "Read failed.");
                Err(StreamTurn::Idle)
            }
        }
    }

    /// On a turn without new data: a multi-line record that waited `multiline_timeout` is
    /// complete, and a file gone from the globs and idle for `rotate_wait` is finished.
    /// Returns whether the stream is done.
    fn complete_idle(&mut self, i: usize, now: Instant, raws: &mut Vec<RawRecord>) -> bool {
        let s = &mut self.streams[i];
        if s.framer.has_pending() && now >= s.last_data + self.source.multiline_timeout {
            s.framer.flush_pending(raws);
        }
        if s.gone_since.is_some() && now >= s.last_data + self.source.rotate_wait {
            s.framer.finish(raws);
            return true;
        }
        false
    }

    /// Updates the figures of stream `i`'s file (`read` bytes read, `size` long) and hands
    /// `raws` to the sinks, or only the offset the stream moved to.
    fn hand_off(&mut self, i: usize, raws: &[RawRecord], read: usize, size: u64) {
        let s = &self.streams[i];
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
            let chunk = self.make_chunk(i, stream_id, raws, committed);
            self.streams[i].last_sent_end = committed;
            self.send(chunk);
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
        let ended = DeadFile {
            fid: s.fid,
            offset: committed,
        };
        self.remember_ended(ended);
        let s = &mut self.streams[i];
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

    /// Keeps where an ended file stopped (the latest last), for its copies and its return;
    /// the oldest of more than [`MAX_ENDED`] are forgotten.
    pub(super) fn remember_ended(&mut self, d: DeadFile) {
        self.dead.push(d);
        if self.dead.len() > MAX_ENDED {
            self.dead.remove(0);
        }
    }

    /// The chunk of stream `i` for `raws`, up to offset `end`: each record parsed, seen by the
    /// log-derived metrics, and kept unless the level filter drops it (see [`admit`]).
    fn make_chunk(&self, i: usize, stream: StreamId, raws: &[RawRecord], end: u64) -> Chunk {
        let s = &self.streams[i];
        let mut records = Vec::with_capacity(raws.len());
        for raw in raws {
            let (record, flags) = s.parser.parse(raw);
            self.stats
                .observe_log_record(&self.source.name, self.source.format, &record);
            if admit(&self.counters, self.source.min_level, &record, flags) {
                records.push((raw.end, record));
            }
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

    /// Numbers `chunk` as handed off and gives it to every subscribed sink, waiting while a
    /// buffer is full (refreshing the files' lag meanwhile).
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
