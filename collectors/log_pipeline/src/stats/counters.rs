//! The counters the sources and sinks update as they go, and a file's figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_kit::sync::lock;
use tokio::sync::mpsc::{Sender, WeakSender};

use crate::checkpoint::CheckpointHealth;
use crate::chunk::Chunk;

/// Upper bounds of the batch latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Counters of one file being read.
#[derive(Debug, Clone, Default)]
pub struct FileStats {
    /// Bytes read.
    pub bytes: u64,
    /// Records read.
    pub records: u64,
    /// File size at the last look.
    pub size: u64,
    /// Read position.
    pub position: u64,
}

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Records shipped (after the level filter).
    pub records: AtomicU64,
    /// Records dropped by the level filter.
    pub filtered: AtomicU64,
    /// Records shipped as plain text with `parse_error`.
    pub parse_errors: AtomicU64,
    /// Records with invalid UTF-8 replaced.
    pub invalid_utf8: AtomicU64,
    /// Records over the size limit, truncated.
    pub truncated: AtomicU64,
    /// Messages cut at `message_max_length`.
    pub message_cut: AtomicU64,
    /// Files whose truncation (in place or copytruncate) was detected.
    pub truncations: AtomicU64,
    /// Files opened.
    pub files_opened: AtomicU64,
    /// Bytes re-read after a restart that had been read but not acknowledged before.
    pub replayed_bytes: AtomicU64,
    /// How the source's checkpoint keeps up.
    pub checkpoint: Arc<CheckpointHealth>,
    /// journalctl (re)starts after it exited or could not start (journald sources).
    pub journal_restarts: AtomicU64,
    /// Bytes known lost because a file disappeared before it was read and acknowledged
    /// completely (at least these many).
    pub lost_bytes: AtomicU64,
    /// Files the include globs reached at the last expansion (at most `max_files`).
    pub glob_files: AtomicU64,
    /// Directories listed at the last expansion (at most `max_directories`).
    pub glob_directories: AtomicU64,
    /// Expansions cut short at `max_files` or `max_directories`.
    pub glob_limit_hits: AtomicU64,
    /// Directories and files the globs reach that could not be listed, reached or opened,
    /// each time, by [`PathError::index`](crate::expand::PathError::index).
    pub path_errors: [AtomicU64; 3],
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Records acknowledged by the destination.
    pub events_sent: AtomicU64,
    /// Records rejected (400) and written to the dead-letter file.
    pub events_failed: AtomicU64,
    /// Requests retried (429, 5xx, connection errors).
    pub requests_retried: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Latency histogram of delivered batches (counts per bucket, not cumulative).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies, microseconds.
    pub latency_sum_us: AtomicU64,
    /// The buffer in front of the sink (or its disk buffer's writer), measured when scraped:
    /// what reads it waits (on the destination, or the disk) exactly while it fills, so a
    /// figure it sampled would be stale then. Replaced by each pipeline a reload builds.
    buffer: Mutex<Option<WeakSender<Arc<Chunk>>>>,
    /// Capacity of that buffer.
    pub buffer_capacity: AtomicU64,
    /// Records dropped because the disk buffer was full (`when_full: drop_newest`).
    pub buffer_dropped_events: AtomicU64,
    /// Bytes the disk buffer's segment files take.
    pub disk_buffer_bytes: AtomicU64,
    /// The disk buffer's `max_size` (0: no disk buffer).
    pub disk_buffer_max_bytes: AtomicU64,
    /// Corrupt or torn frames found in the disk buffer and skipped.
    pub disk_buffer_corrupt_frames: AtomicU64,
    /// Bytes skipped with them.
    pub disk_buffer_corrupt_bytes: AtomicU64,
    /// Batches split in halves (413 Payload Too Large, or over `batch.max_bytes`).
    pub batches_split: AtomicU64,
}

impl SinkCounters {
    /// Measures `tx`'s channel from now on.
    pub fn watch_buffer(&self, tx: &Sender<Arc<Chunk>>) {
        *lock(&self.buffer) = Some(tx.downgrade());
    }

    /// Chunks waiting in the buffer in front of the sink (0 once its sources are gone).
    pub fn buffer_chunks(&self) -> u64 {
        lock(&self.buffer)
            .as_ref()
            .and_then(WeakSender::upgrade)
            .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64)
    }

    /// Records one delivered batch's latency (from its first record's arrival to the ack).
    pub fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}
