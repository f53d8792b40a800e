//! Delivering records to the destination: one request per batch, retried with backoff while
//! the destination may take it later, split in halves on 413 (or when the body is over
//! `batch.max_bytes`), and what is refused for good written to the dead-letter file.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, warn};

use super::client::{Output, SendError};
use super::dead_letter;
use super::encode::{Encoded, Encoder};
use super::retry::{Aborted, Backoff, sleep_or_abort};
use crate::config::Sink;
use crate::record::Record;
use crate::stats::SinkCounters;

/// Encodes and sends batches: retries, 413 splitting, dead letters.
#[derive(Debug)]
pub(super) struct Delivery {
    /// The sink's config.
    pub(super) config: Sink,
    output: Output,
    /// Its encoder.
    pub(super) encoder: Encoder,
    /// Its metrics.
    pub(super) counters: Arc<SinkCounters>,
    /// Turns true when the sink must give up at once.
    pub(super) abort: watch::Receiver<bool>,
}

impl Delivery {
    /// Delivers with `output`, encoding with `encoder`.
    pub(super) fn new(
        config: Sink,
        output: Output,
        encoder: Encoder,
        counters: Arc<SinkCounters>,
        abort: watch::Receiver<bool>,
    ) -> Delivery {
        Delivery {
            config,
            output,
            encoder,
            counters,
            abort,
        }
    }

    async fn sleep_or_abort(&mut self, d: Duration) -> Result<(), Aborted> {
        sleep_or_abort(&mut self.abort, d).await
    }

    /// Delivers `records`: every one is either acknowledged by the destination or written
    /// to the dead-letter file when this returns `Ok`.
    /// `encoded` is all of `records`, already encoded.
    pub(super) async fn deliver(
        &mut self,
        records: &[&Record],
        mut encoded: Option<Encoded>,
    ) -> Result<(), Aborted> {
        // Parts still to send, the next one last.
        let mut todo = vec![(0, records.len())];
        let mut logged_split = false;
        while let Some((start, end)) = todo.pop() {
            let part = &records[start..end];
            let body = match encoded.take() {
                Some(body) => body,
                None => self.encoder.encode(part),
            };
            let split = |todo: &mut Vec<(usize, usize)>| {
                let mid = start + (end - start) / 2;
                todo.push((mid, end));
                todo.push((start, mid));
            };
            if part.len() > 1 && body.body.len() as u64 > self.config.batch.max_bytes {
                self.counters.batches_split.fetch_add(1, Ordering::Relaxed);
                split(&mut todo);
                continue;
            }
            let count = part.len() as u64;
            match self.send(&body).await? {
                None => {
                    self.counters
                        .events_sent
                        .fetch_add(count, Ordering::Relaxed);
                }
                Some((413, message)) if part.len() > 1 => {
                    self.counters.batches_split.fetch_add(1, Ordering::Relaxed);
                    // Once per batch: the halves may be split again.
                    if !logged_split {
                        warn!(sink = %self.config.name, events = count, bytes = body.body.len(), error = %message, "Batch too large for the destination; splitting it in halves.");
                        logged_split = true;
                    }
                    split(&mut todo);
                }
                Some((status, message)) => {
                    if status == 413 {
                        error!(sink = %self.config.name, bytes = body.body.len(), error = %message, "A single record is too large for the destination; writing it to the dead-letter file.");
                    } else {
                        error!(sink = %self.config.name, status, error = %message, events = count, "Batch rejected; writing it to the dead-letter file.");
                    }
                    dead_letter::write(&self.config, &mut self.abort, part, status, &message)
                        .await?;
                    self.counters
                        .events_failed
                        .fetch_add(count, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Sends one body, retrying what can be retried; `Some((status, message))` when the
    /// destination refused it for good.
    async fn send(&mut self, body: &Encoded) -> Result<Option<(u16, String)>, Aborted> {
        let mut backoff = Backoff::new(self.config.retry);
        loop {
            match self.output.send(body).await {
                Ok(()) => return Ok(None),
                Err(SendError::Reject { status, message }) => return Ok(Some((status, message))),
                Err(SendError::Retry(message)) => {
                    self.counters
                        .requests_retried
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next_wait();
                    warn!(sink = %self.config.name, error = %message, retry_in_ms = wait.as_millis() as u64, "Delivery failed; retrying.");
                    self.sleep_or_abort(wait).await?;
                }
            }
        }
    }
}
