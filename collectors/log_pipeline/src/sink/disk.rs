//! A sink with a disk buffer: a writer appends its input to the buffer and acknowledges it
//! once fsynced (reading goes on through an outage), a reader delivers from the buffer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::ack::{Unpersisted, ack, wait_checkpoints};
use super::delivery::Delivery;
use super::disk_buffer::{self, BufferReader, BufferWriter, ReadEnd};
use super::retry::{Aborted, Backoff, sleep_or_abort};
use crate::checkpoint::SourceProgress;
use crate::chunk::Chunk;
use crate::config::{Retry, WhenFull};
use crate::record::Record;
use crate::stats::SinkCounters;

/// At most this many chunks go to the disk buffer with one fsync.
const DISK_GROUP_CHUNKS: usize = 64;
/// How often drops of a full disk buffer are logged at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Input chunks → disk buffer, then acknowledgements.
#[derive(Debug)]
pub(super) struct DiskWriter {
    name: String,
    index: usize,
    rx: Receiver<Arc<Chunk>>,
    progress: Vec<Option<Arc<SourceProgress>>>,
    unpersisted: Unpersisted,
    counters: Arc<SinkCounters>,
    abort: watch::Receiver<bool>,
    /// `None` only while a blocking call holds it.
    writer: Option<BufferWriter>,
    when_full: WhenFull,
    dropped_unlogged: u64,
    last_drop_log: Option<Instant>,
    retry: Retry,
}

impl DiskWriter {
    /// Writes `rx` to `writer` as sink `index`, acknowledging to `progress`, with the
    /// settings and abort of `delivery`.
    pub(super) fn new(
        index: usize,
        rx: Receiver<Arc<Chunk>>,
        progress: Vec<Option<Arc<SourceProgress>>>,
        counters: Arc<SinkCounters>,
        delivery: &Delivery,
        writer: BufferWriter,
    ) -> DiskWriter {
        let config = &delivery.config;
        DiskWriter {
            name: config.name.clone(),
            index,
            rx,
            progress,
            unpersisted: Vec::new(),
            counters,
            abort: delivery.abort.clone(),
            writer: Some(writer),
            when_full: config
                .disk_buffer
                .as_ref()
                .map_or(WhenFull::Block, |d| d.when_full),
            dropped_unlogged: 0,
            last_drop_log: None,
            retry: config.retry,
        }
    }

    /// Runs until its input closes or it is told to abort.
    pub(super) async fn run(mut self) {
        loop {
            let first = tokio::select! {
                biased;
                _ = self.abort.wait_for(|a| *a) => None,
                c = self.rx.recv() => Some(c),
            };
            let Some(first) = first else {
                // Drops are never silent, even when the stop is cut short.
                self.log_drops(true);
                return;
            };
            let Some(first) = first else {
                break;
            };
            let mut group = vec![first];
            while group.len() < DISK_GROUP_CHUNKS {
                match self.rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            // A crash re-reads (and so duplicates) at most one group.
            let chunks = group.iter().map(|c| &**c);
            wait_checkpoints(&self.progress, &mut self.unpersisted, chunks).await;
            if self.write_group(&group).await.is_err() {
                self.log_drops(true);
                return;
            }
        }
        self.log_drops(true);
        if let Some(w) = &self.writer {
            w.finish();
        }
    }

    /// Runs `f` on the writer on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut BufferWriter) -> T + Send + 'static,
    ) -> Result<T, Aborted> {
        let Some(mut w) = self.writer.take() else {
            return Err(Aborted);
        };
        match tokio::task::spawn_blocking(move || {
            let r = f(&mut w);
            (w, r)
        })
        .await
        {
            Ok((w, r)) => {
                self.writer = Some(w);
                Ok(r)
            }
            Err(e) => {
                error!(sink = %self.name, error = %e, "Disk buffer writer failed.");
                Err(Aborted)
            }
        }
    }

    fn fits(&self, pending: usize, extra: usize) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|w| w.fits(pending as u64, extra as u64))
    }

    async fn write_group(&mut self, group: &[Arc<Chunk>]) -> Result<(), Aborted> {
        let mut frames = Vec::new();
        let mut frame = Vec::new();
        let mut acks: Vec<(usize, u64, u64)> = Vec::new();
        for chunk in group {
            for (i, (_, record)) in chunk.records.iter().enumerate() {
                frame.clear();
                disk_buffer::push_frame(&mut frame, record);
                if !self.fits(frames.len(), frame.len()) {
                    match self.when_full {
                        WhenFull::DropNewest => {
                            self.counters
                                .buffer_dropped_events
                                .fetch_add(1, Ordering::Relaxed);
                            self.dropped_unlogged += 1;
                            self.log_drops(false);
                            // Let the reader free what it has read of the current segment.
                            self.seal().await?;
                            continue;
                        }
                        WhenFull::Block => {
                            if i > 0 {
                                acks.push((chunk.source, chunk.stream, chunk.records[i - 1].0));
                            }
                            self.persist(&mut frames, &mut acks).await?;
                            self.wait_for_space(frame.len()).await?;
                        }
                    }
                }
                frames.extend_from_slice(&frame);
            }
            acks.push((chunk.source, chunk.stream, chunk.end));
        }
        self.persist(&mut frames, &mut acks).await
    }

    /// Writes `frames` durably (retrying I/O errors such as a full disk), then acknowledges.
    async fn persist(
        &mut self,
        frames: &mut Vec<u8>,
        acks: &mut Vec<(usize, u64, u64)>,
    ) -> Result<(), Aborted> {
        if !frames.is_empty() {
            let mut backoff = Backoff::new(self.retry);
            loop {
                let data = std::mem::take(frames);
                let (data, r) = self
                    .blocking(move |w| {
                        let r = w.append(&data);
                        (data, r)
                    })
                    .await?;
                *frames = data;
                match r {
                    Ok(()) => break,
                    Err(e) => {
                        error!(sink = %self.name, error = %e, "Cannot write to the disk buffer; retrying (reading pauses).");
                        sleep_or_abort(&mut self.abort, backoff.next_wait()).await?;
                    }
                }
            }
            frames.clear();
        }
        for (source, stream, offset) in acks.drain(..) {
            ack(
                self.index,
                &self.progress,
                &mut self.unpersisted,
                source,
                stream,
                offset,
            );
        }
        Ok(())
    }

    async fn seal(&mut self) -> Result<(), Aborted> {
        if !self
            .writer
            .as_ref()
            .is_some_and(BufferWriter::segment_in_use)
        {
            return Ok(());
        }
        if let Err(e) = self.blocking(BufferWriter::seal).await? {
            warn!(sink = %self.name, error = %e, "Cannot start a new disk buffer segment.");
        }
        Ok(())
    }

    /// `when_full: block`: waits until a frame of `len` bytes fits.
    async fn wait_for_space(&mut self, len: usize) -> Result<(), Aborted> {
        let Some(mut freed) = self.writer.as_ref().map(|w| w.shared().subscribe_freed()) else {
            return Err(Aborted);
        };
        let mut logged = false;
        loop {
            freed.borrow_and_update();
            if self.fits(0, len) {
                if logged {
                    info!(sink = %self.name, "Disk buffer has room again; reading resumes.");
                }
                return Ok(());
            }
            self.seal().await?;
            if !logged {
                warn!(sink = %self.name, "Disk buffer full; reading pauses until the sink delivers (when_full: block).");
                logged = true;
            }
            tokio::select! {
                biased;
                r = self.abort.wait_for(|a| *a) => match r {
                    Ok(_) | Err(_) => return Err(Aborted),
                },
                r = freed.changed() => if r.is_err() { return Err(Aborted) },
            }
        }
    }

    /// Logs drops at most every [`DROP_LOG_EVERY`] (and what is left at the end).
    fn log_drops(&mut self, last: bool) {
        if self.dropped_unlogged == 0 {
            return;
        }
        if last
            || self
                .last_drop_log
                .is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY)
        {
            warn!(sink = %self.name, dropped = self.dropped_unlogged, total = self.counters.buffer_dropped_events.load(Ordering::Relaxed), "Disk buffer full; newest records dropped (when_full: drop_newest).");
            self.dropped_unlogged = 0;
            self.last_drop_log = Some(Instant::now());
        }
    }
}

/// Disk buffer → destination.
#[derive(Debug)]
pub(super) struct DiskReader {
    delivery: Delivery,
    /// `None` only while a blocking call holds it.
    reader: Option<BufferReader>,
}

impl DiskReader {
    /// Delivers what `reader` reads with `delivery`.
    pub(super) fn new(delivery: Delivery, reader: BufferReader) -> DiskReader {
        DiskReader {
            delivery,
            reader: Some(reader),
        }
    }

    /// Runs until the buffer is drained after the writer finished, or it is told to abort.
    pub(super) async fn run(mut self) {
        let Some(shared) = self.reader.as_ref().map(|r| r.shared().clone()) else {
            return;
        };
        let mut committed = shared.subscribe_committed();
        let mut abort = self.delivery.abort.clone();
        let batch_cfg = self.delivery.config.batch;
        let mut batch: Vec<Record> = Vec::new();
        let mut bytes = 0u64;
        let mut started: Option<Instant> = None;
        let mut backoff = Backoff::new(self.delivery.config.retry);
        loop {
            committed.borrow_and_update();
            // Checked before reading: a writer done by then has committed everything.
            let writer_done = shared.writer_done();
            let Some(mut reader) = self.reader.take() else {
                return;
            };
            let (reader, batch_back, bytes_back, end) = match tokio::task::spawn_blocking(
                move || {
                    let end = reader.read(
                        &mut batch,
                        &mut bytes,
                        batch_cfg.max_events,
                        batch_cfg.max_bytes,
                    );
                    (reader, batch, bytes, end)
                },
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    error!(sink = %self.delivery.config.name, error = %e, "Disk buffer reader failed.");
                    return;
                }
            };
            self.reader = Some(reader);
            batch = batch_back;
            bytes = bytes_back;
            let end = match end {
                Ok(end) => {
                    backoff = Backoff::new(self.delivery.config.retry);
                    end
                }
                Err(e) => {
                    error!(sink = %self.delivery.config.name, error = %e, "Cannot read the disk buffer; retrying.");
                    if sleep_or_abort(&mut abort, backoff.next_wait())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            if !batch.is_empty() {
                started.get_or_insert_with(Instant::now);
            }
            let drained = end == ReadEnd::Drained;
            let due = started.is_some_and(|t| t.elapsed() >= batch_cfg.timeout);
            if !batch.is_empty() && (!drained || due || writer_done) {
                let records: Vec<&Record> = batch.iter().collect();
                if self.delivery.deliver(&records, None).await.is_err() {
                    return;
                }
                drop(records);
                if let Some(t) = started.take() {
                    self.delivery.counters.observe_latency(t.elapsed());
                }
                batch.clear();
                bytes = 0;
                if self.commit().await.is_err() {
                    return;
                }
                continue;
            }
            if batch.is_empty()
                && self.reader.as_ref().is_some_and(BufferReader::needs_commit)
                && self.commit().await.is_err()
            {
                return;
            }
            if drained && batch.is_empty() && writer_done {
                return;
            }
            let deadline = started.map(|t| tokio::time::Instant::from_std(t + batch_cfg.timeout));
            tokio::select! {
                biased;
                r = abort.wait_for(|a| *a) => match r {
                    Ok(_) | Err(_) => return,
                },
                r = committed.changed() => if r.is_err() { return },
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {}
            }
        }
    }

    /// Persists the read position (a failure only means more is delivered again after a
    /// restart) and frees the segments read.
    async fn commit(&mut self) -> Result<(), Aborted> {
        let Some(mut reader) = self.reader.take() else {
            return Err(Aborted);
        };
        match tokio::task::spawn_blocking(move || {
            let r = reader.commit();
            (reader, r)
        })
        .await
        {
            Ok((reader, r)) => {
                self.reader = Some(reader);
                if let Err(e) = r {
                    warn!(sink = %self.delivery.config.name, error = %e, "Cannot persist the disk buffer position.");
                }
                Ok(())
            }
            Err(e) => {
                error!(sink = %self.delivery.config.name, error = %e, "Disk buffer reader failed.");
                Err(Aborted)
            }
        }
    }
}
