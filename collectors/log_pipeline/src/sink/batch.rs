//! Batching: the chunks of a sink's input grouped by events, bytes and age, each batch encoded
//! at once and handed on in input order.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{self, Receiver};
use tokio::sync::watch;

use super::encode::{Encoded, Encoder};
use super::retry::Aborted;
use crate::chunk::Chunk;
use crate::config::BatchLimits;
use crate::record::Record;

/// Some records of one chunk in a batch.
#[derive(Debug)]
pub(super) struct BatchItem {
    /// The chunk.
    pub(super) chunk: Arc<Chunk>,
    /// Its records `start..end` are in the batch.
    pub(super) start: usize,
    /// See `start`.
    pub(super) end: usize,
}

/// A batch on its way from the batcher to the sender. Batches (and chunks without records,
/// which only move offsets) go through in input order, so acknowledgements never overtake
/// a batch still in flight.
#[derive(Debug)]
pub(super) struct OutgoingBatch {
    pub(super) items: Vec<BatchItem>,
    /// When its first record arrived.
    pub(super) started: Option<Instant>,
    /// The whole batch encoded by the batcher while the previous one was in flight; `None`
    /// when the batch has no records.
    pub(super) encoded: Option<Encoded>,
}

impl OutgoingBatch {
    /// Its records, in order.
    pub(super) fn records(&self) -> Vec<&Record> {
        self.items
            .iter()
            .flat_map(|i| i.chunk.records[i.start..i.end].iter().map(|(_, r)| r))
            .collect()
    }
}

/// Input chunks → batches by events, bytes and age, each encoded at once, handed to the
/// [`Sender`](super::send::Sender) through a channel of one: one batch is sent while the next is encoded and a
/// third fills, so parsing and encoding overlap the destination's answer.
#[derive(Debug)]
pub(super) struct Batcher {
    rx: Receiver<Arc<Chunk>>,
    tx: mpsc::Sender<OutgoingBatch>,
    encoder: Encoder,
    batch: BatchLimits,
    abort: watch::Receiver<bool>,
    items: Vec<BatchItem>,
    events: usize,
    bytes: u64,
    started: Option<Instant>,
}

impl Batcher {
    /// Batches `rx` into `tx` within `batch`'s limits.
    pub(super) fn new(
        rx: Receiver<Arc<Chunk>>,
        tx: mpsc::Sender<OutgoingBatch>,
        encoder: Encoder,
        batch: BatchLimits,
        abort: watch::Receiver<bool>,
    ) -> Batcher {
        Batcher {
            rx,
            tx,
            encoder,
            batch,
            abort,
            items: Vec::new(),
            events: 0,
            bytes: 0,
            started: None,
        }
    }

    /// Runs until its input closes (after a final flush) or it is told to abort.
    pub(super) async fn run(mut self) {
        let timeout = self.batch.timeout;
        let mut abort = self.abort.clone();
        loop {
            let deadline = self
                .started
                .map(|t| tokio::time::Instant::from_std(t + timeout));
            let step = tokio::select! {
                biased;
                r = abort.changed() => {
                    if r.is_err() || *abort.borrow() {
                        return;
                    }
                    Ok(())
                }
                item = self.rx.recv() => match item {
                    Some(chunk) => self.add(chunk).await,
                    None => {
                        let _ = self.flush().await;
                        return;
                    }
                },
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    self.flush().await
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn add(&mut self, chunk: Arc<Chunk>) -> Result<(), Aborted> {
        if chunk.records.is_empty() {
            let idle = self.items.is_empty();
            self.items.push(BatchItem {
                chunk,
                start: 0,
                end: 0,
            });
            // Nothing waits in this batch: pass the offset on now rather than at the next
            // batch (an idle source's checkpoint would otherwise lag behind).
            return if idle { self.flush().await } else { Ok(()) };
        }
        let batch = self.batch;
        let n = chunk.records.len();
        let mut start = 0;
        while start < n {
            let mut end = start;
            let mut full = false;
            while end < n {
                let size = self.encoder.batch_size(&chunk.records[end].1);
                // batch.max_bytes holds before sending: a record that would pass it starts
                // the next batch (a lone record over it goes alone).
                if self.events >= batch.max_events
                    || (self.events > 0 && self.bytes + size > batch.max_bytes)
                {
                    full = true;
                    break;
                }
                self.bytes += size;
                self.events += 1;
                end += 1;
            }
            if end > start {
                self.started.get_or_insert_with(Instant::now);
                self.items.push(BatchItem {
                    chunk: chunk.clone(),
                    start,
                    end,
                });
            }
            if full || self.events >= batch.max_events || self.bytes >= batch.max_bytes {
                self.flush().await?;
            }
            start = end;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Aborted> {
        if self.items.is_empty() {
            self.started = None;
            return Ok(());
        }
        let mut batch = OutgoingBatch {
            items: std::mem::take(&mut self.items),
            started: self.started.take(),
            encoded: None,
        };
        if self.events > 0 {
            batch.encoded = Some(self.encoder.encode(&batch.records()));
        }
        self.events = 0;
        self.bytes = 0;
        tokio::select! {
            biased;
            r = self.abort.wait_for(|a| *a) => match r {
                Ok(_) | Err(_) => Err(Aborted),
            },
            r = self.tx.send(batch) => r.map_err(|_| Aborted),
        }
    }
}
