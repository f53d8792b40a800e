//! Sinks: each batches the chunks of its bounded input channel (by events, bytes and age) and
//! encodes a batch at once, while a sender delivers the previous one with retries and then
//! acknowledges the offsets of the records it delivered so the checkpoints can move. A batch
//! goes out once the previous one's checkpoint is on disk, so a crash re-sends at most the
//! batch in flight; when the checkpoint cannot be written (a full disk), it goes out after
//! `CHECKPOINT_WAIT` (5 s) anyway: delivery goes on, one batch per wait, and a crash then re-sends
//! what was delivered since the last checkpoint written.
//!
//! Delivery: 2xx acknowledges; 429, 408, 401, 403, 404, 5xx (but 501) and connection errors are
//! retried forever with exponential backoff and jitter (data stays on disk meanwhile, and
//! reading pauses once the buffer is full); 413 splits the batch in halves, each sent on its
//! own (a single record still too large is rejected); 400 and other 4xx reject the batch: its
//! records go to the dead-letter file (JSON lines), are counted, and the checkpoint moves past
//! them. An encoded body over `batch.max_bytes` is split the same way before it is sent.
//!
//! With a disk buffer (`buffer.type: disk`), a writer appends the records to the buffer's
//! segment files, fsyncs, and then acknowledges them (the checkpoint moves, reading goes on
//! through an outage); a reader delivers from the buffer as above and persists its position
//! after each batch. When the buffer is full, `when_full: block` pauses reading and
//! `drop_newest` drops the records, counted and logged.
//!
//! Layout, in the order a record goes: `batch` (the batcher) → `send` (the sender) →
//! `delivery` (retries, 413 splits) → `client` (HTTP or file) and `dead_letter`; `ack`
//! (acknowledgements, waiting for checkpoints) and `retry` (backoff, abort) below them; with a
//! disk buffer, `disk` (its writer and reader) over `disk_buffer` (segment files, frames);
//! `encode` writes the bodies.

mod ack;
mod batch;
mod client;
mod dead_letter;
mod delivery;
mod disk;
mod disk_buffer;
mod encode;
mod retry;
mod send;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::{self, Receiver};
use tokio::sync::watch;

use crate::checkpoint::SourceProgress;
use crate::chunk::Chunk;
use crate::config::Sink;
use crate::stats::{SinkCounters, Stats};
use batch::Batcher;
use delivery::Delivery;
use disk::{DiskReader, DiskWriter};
use disk_buffer::{BufferReader, BufferWriter};
use send::Sender;

pub use encode::{Encoded, Encoder, label_string};

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The HTTP client could not be built (TLS files, ...).
    #[error("sink {sink}: {message}")]
    Setup {
        /// The sink.
        sink: String,
        /// What failed.
        message: String,
    },
}

/// Builds what sink `config` sends with (its HTTP client, TLS files read), and drops it:
/// what a start would refuse.
pub fn check(config: &Sink) -> Result<(), SinkError> {
    client::build(config).map(drop)
}

/// Everything a sink task needs.
#[derive(Debug)]
pub struct SinkSetup {
    /// Global index of the sink.
    pub index: usize,
    /// Its config.
    pub config: Sink,
    /// Its bounded input.
    pub rx: Receiver<Arc<Chunk>>,
    /// Progress of every source, by source index (`None` for sources it does not receive).
    pub progress: Vec<Option<Arc<SourceProgress>>>,
    /// Metrics.
    pub stats: Arc<Stats>,
    /// Turns true when the sink must give up at once (pending data is re-read after restart).
    pub abort: watch::Receiver<bool>,
}

/// A sink task.
#[derive(Debug)]
pub struct SinkTask {
    index: usize,
    rx: Receiver<Arc<Chunk>>,
    progress: Vec<Option<Arc<SourceProgress>>>,
    counters: Arc<SinkCounters>,
    delivery: Delivery,
    disk: Option<(BufferWriter, BufferReader)>,
}

impl SinkTask {
    /// Builds a sink (its HTTP client, TLS files, its disk buffer).
    pub fn new(setup: SinkSetup) -> Result<SinkTask, SinkError> {
        let (output, encoder) = client::build(&setup.config)?;
        let counters = setup.stats.sink(&setup.config.name);
        counters
            .buffer_capacity
            .store(setup.rx.max_capacity() as u64, Ordering::Relaxed);
        let disk = match &setup.config.disk_buffer {
            Some(cfg) => Some(
                disk_buffer::open(cfg, &setup.config.name, counters.clone()).map_err(|e| {
                    SinkError::Setup {
                        sink: setup.config.name.clone(),
                        message: format!("buffer.path {}: {e}", cfg.path.display()),
                    }
                })?,
            ),
            None => {
                counters.disk_buffer_max_bytes.store(0, Ordering::Relaxed);
                counters.disk_buffer_bytes.store(0, Ordering::Relaxed);
                None
            }
        };
        Ok(SinkTask {
            index: setup.index,
            rx: setup.rx,
            progress: setup.progress,
            counters: counters.clone(),
            delivery: Delivery::new(setup.config, output, encoder, counters, setup.abort),
            disk,
        })
    }

    /// Runs until its input closes (after a final flush) or it is told to abort.
    pub async fn run(mut self) {
        if let Some((writer, reader)) = self.disk.take() {
            return self.run_disk(writer, reader).await;
        }
        let (tx, rx) = mpsc::channel(1);
        let batcher = Batcher::new(
            self.rx,
            tx,
            self.delivery.encoder.clone(),
            self.delivery.config.batch,
            self.delivery.abort.clone(),
        );
        let sender = Sender::new(self.index, rx, self.progress, self.delivery);
        // Its own task, so that sending proceeds while the batcher encodes.
        let sender = tokio::spawn(sender.run());
        batcher.run().await;
        let _ = sender.await;
    }

    /// With a disk buffer: a writer (input → disk, then acknowledgements) and a reader
    /// (disk → destination) run side by side.
    async fn run_disk(self, writer: BufferWriter, reader: BufferReader) {
        let w = DiskWriter::new(
            self.index,
            self.rx,
            self.progress,
            self.counters,
            &self.delivery,
            writer,
        );
        let r = DiskReader::new(self.delivery, reader);
        tokio::join!(w.run(), r.run());
    }
}
