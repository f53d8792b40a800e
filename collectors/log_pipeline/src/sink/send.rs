//! Sending: each batch delivered (after the previous one's checkpoint), then its records'
//! offsets acknowledged.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::ack::{Unpersisted, ack, wait_checkpoints};
use super::batch::OutgoingBatch;
use super::delivery::Delivery;
use super::retry::Aborted;
use crate::checkpoint::SourceProgress;

/// Batches → destination, then acknowledgements.
#[derive(Debug)]
pub(super) struct Sender {
    index: usize,
    rx: mpsc::Receiver<OutgoingBatch>,
    progress: Vec<Option<Arc<SourceProgress>>>,
    delivery: Delivery,
    /// Sources with acknowledgements not yet on disk, with the last acknowledgement number.
    unpersisted: Unpersisted,
}

impl Sender {
    /// Sends the batches of `rx` as sink `index`, acknowledging to `progress`.
    pub(super) fn new(
        index: usize,
        rx: mpsc::Receiver<OutgoingBatch>,
        progress: Vec<Option<Arc<SourceProgress>>>,
        delivery: Delivery,
    ) -> Sender {
        Sender {
            index,
            rx,
            progress,
            delivery,
            unpersisted: Vec::new(),
        }
    }

    /// Runs until its input closes or it is told to abort.
    pub(super) async fn run(mut self) {
        let mut abort = self.delivery.abort.clone();
        loop {
            let batch = tokio::select! {
                biased;
                r = abort.wait_for(|a| *a) => match r {
                    Ok(_) | Err(_) => return,
                },
                batch = self.rx.recv() => match batch {
                    Some(batch) => batch,
                    None => return,
                },
            };
            if self.send(batch).await.is_err() {
                return;
            }
        }
    }

    async fn send(&mut self, mut batch: OutgoingBatch) -> Result<(), Aborted> {
        if let Some(encoded) = batch.encoded.take() {
            // At most the batch in flight is sent again after a crash.
            let chunks = batch.items.iter().map(|i| &*i.chunk);
            wait_checkpoints(&self.progress, &mut self.unpersisted, chunks).await;
            self.delivery
                .deliver(&batch.records(), Some(encoded))
                .await?;
            if let Some(t) = batch.started {
                self.delivery.counters.observe_latency(t.elapsed());
            }
        }
        for item in &batch.items {
            let offset = if item.end == item.chunk.records.len() {
                item.chunk.end
            } else {
                item.chunk.records[item.end - 1].0
            };
            ack(
                self.index,
                &self.progress,
                &mut self.unpersisted,
                item.chunk.source,
                item.chunk.stream,
                offset,
            );
        }
        Ok(())
    }
}
