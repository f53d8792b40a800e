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

mod disk_buffer;
mod encode;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, Receiver};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::checkpoint::{Covered, SourceProgress};
use crate::chunk::Chunk;
use crate::config::{Auth, Sink, SinkKind, WhenFull};
use crate::record::{Record, write_json_string};
use crate::secrets::{Secrets, mask_url};
use crate::stats::{SinkCounters, Stats};
use disk_buffer::{BufferReader, BufferWriter, ReadEnd};

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

/// How one delivery attempt went wrong.
#[derive(Debug)]
pub enum SendError {
    /// Try again later.
    Retry(String),
    /// The destination refused the batch for good.
    Reject {
        /// HTTP status.
        status: u16,
        /// Response body (shortened).
        message: String,
    },
}

/// Where records go.
#[derive(Debug)]
enum Output {
    Http {
        client: reqwest::Client,
        url: url::Url,
        headers: Vec<(String, String)>,
        auth: Option<Auth>,
        /// Scrubbed from every message.
        secrets: Secrets,
    },
    File {
        path: PathBuf,
    },
}

impl Output {
    async fn send(&self, body: &Encoded) -> Result<(), SendError> {
        match self {
            Output::Http {
                client,
                url,
                headers,
                auth,
                secrets,
            } => {
                let mut req = client
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, body.content_type)
                    .body(body.body.clone());
                if let Some(enc) = body.content_encoding {
                    req = req.header(reqwest::header::CONTENT_ENCODING, enc);
                }
                for (k, v) in headers.iter().chain(body.headers.iter()) {
                    req = req.header(k.as_str(), v.as_str());
                }
                req = match auth {
                    Some(Auth::Basic { username, password }) => {
                        req.basic_auth(username, Some(password))
                    }
                    Some(Auth::Bearer(t)) => req.bearer_auth(t),
                    None => req,
                };
                let resp = req.send().await.map_err(|e| {
                    SendError::Retry(secrets.scrub(&format!(
                        "request to {} failed: {}",
                        mask_url(url),
                        error_chain(&e.without_url())
                    )))
                })?;
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Ok(());
                }
                let mut text = resp.text().await.unwrap_or_default();
                crate::parse::cut_chars(&mut text, 512);
                // A proxy may echo the request, credentials included.
                let message = secrets.scrub(&format!("HTTP {status}: {}", text.trim()));
                if matches!(status, 401 | 403 | 404 | 408 | 429) || (status >= 500 && status != 501)
                {
                    Err(SendError::Retry(message))
                } else {
                    Err(SendError::Reject { status, message })
                }
            }
            Output::File { path } => {
                let p = path.clone();
                let body = body.body.clone();
                tokio::task::spawn_blocking(move || append_synced(&p, &body))
                    .await
                    .map_err(|e| SendError::Retry(e.to_string()))?
                    .map_err(|e| SendError::Retry(format!("{}: {e}", path.display())))
            }
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own message is only the outer one).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The URL of a request: `api` (`/loki/api/v1/push`, maybe with a query) joined to the
/// endpoint's path (a prefix such as `/vl/`), the endpoint's query first.
fn request_url(endpoint: &url::Url, api: &str) -> url::Url {
    let (path, query) = api.split_once('?').unwrap_or((api, ""));
    let mut url = endpoint.clone();
    url.set_path(&format!("{}{path}", endpoint.path().trim_end_matches('/')));
    let query = [endpoint.query().unwrap_or(""), query]
        .into_iter()
        .filter(|q| !q.is_empty())
        .collect::<Vec<_>>()
        .join("&");
    url.set_query((!query.is_empty()).then_some(query.as_str()));
    url
}

/// Appends `bytes` to `path` (creating it and its directory) and fsyncs.
fn append_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// Builds what sink `config` sends with (its HTTP client, TLS files read), and drops it:
/// what a start would refuse.
pub fn check(config: &Sink) -> Result<(), SinkError> {
    build_output(config).map(drop)
}

fn build_output(config: &Sink) -> Result<(Output, Encoder), SinkError> {
    let setup_err = |message: String| SinkError::Setup {
        sink: config.name.clone(),
        message,
    };
    let encoder = Encoder::for_sink(config);
    let Some(http) = &config.http else {
        let SinkKind::File { path } = &config.kind else {
            return Err(setup_err("an HTTP sink without HTTP settings".into()));
        };
        return Ok((Output::File { path: path.clone() }, encoder));
    };
    let mut builder = reqwest::Client::builder()
        .timeout(http.request_timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("log_shipper/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &http.tls.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| setup_err(format!("tls.ca_file {}: {e}", ca.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| setup_err(format!("tls.ca_file {}: {e}", ca.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&http.tls.cert_file, &http.tls.key_file) {
        let mut pem = std::fs::read(cert)
            .map_err(|e| setup_err(format!("tls.cert_file {}: {e}", cert.display())))?;
        pem.extend(
            std::fs::read(key)
                .map_err(|e| setup_err(format!("tls.key_file {}: {e}", key.display())))?,
        );
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| setup_err(format!("tls client certificate: {e}")))?;
        builder = builder.identity(identity);
    }
    if http.tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let client = builder
        .build()
        .map_err(|e| setup_err(format!("HTTP client: {e}")))?;
    Ok((
        Output::Http {
            client,
            url: request_url(&http.endpoint, encoder.path()),
            headers: http.headers.clone(),
            auth: http.auth.clone(),
            secrets: http.secrets.clone(),
        },
        encoder,
    ))
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

#[derive(Debug)]
struct BatchItem {
    chunk: Arc<Chunk>,
    start: usize,
    end: usize,
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

/// The longest a batch waits for the checkpoint of the previous one.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);
/// At most this many chunks go to the disk buffer with one fsync.
const DISK_GROUP_CHUNKS: usize = 64;
/// How often drops of a full disk buffer are logged at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The task ended because it was told to abort.
#[derive(Debug)]
struct Aborted;

/// Per source, what its checkpoint must cover before the next send.
type Unpersisted = Vec<(usize, Covered)>;

fn want(unpersisted: &mut Unpersisted, source: usize, raise: impl FnOnce(&mut Covered)) {
    match unpersisted.iter_mut().find(|(s, _)| *s == source) {
        Some((_, c)) => raise(c),
        None => {
            let mut c = Covered::default();
            raise(&mut c);
            unpersisted.push((source, c));
        }
    }
}

/// Acknowledges `offset` of `stream` for sink `index`, remembering the acknowledgement to
/// wait for its checkpoint.
fn ack(
    index: usize,
    progress: &[Option<Arc<SourceProgress>>],
    unpersisted: &mut Unpersisted,
    source: usize,
    stream: u64,
    offset: u64,
) {
    if let Some(Some(p)) = progress.get(source) {
        let n = p.ack(index, stream, offset);
        want(unpersisted, source, |c| {
            c.acks = c.acks.max(n);
        });
    }
}

/// Waits until the checkpoints cover the acknowledgements so far, so that a crash re-sends
/// no more than what is about to go out, and the hand-off of the `chunks` about to go out,
/// so that a restart counts all of it as read again.
async fn wait_checkpoints<'c>(
    progress: &[Option<Arc<SourceProgress>>],
    unpersisted: &mut Unpersisted,
    chunks: impl Iterator<Item = &'c Chunk>,
) {
    for chunk in chunks {
        want(unpersisted, chunk.source, |c| {
            c.sends = c.sends.max(chunk.sent);
        });
    }
    for (source, covered) in std::mem::take(unpersisted) {
        if let Some(Some(p)) = progress.get(source) {
            p.wait_persisted(covered, CHECKPOINT_WAIT).await;
        }
    }
}

/// A batch on its way from the batcher to the sender. Batches (and chunks without records,
/// which only move offsets) go through in input order, so acknowledgements never overtake
/// a batch still in flight.
#[derive(Debug)]
struct Batch {
    items: Vec<BatchItem>,
    started: Option<Instant>,
    /// The whole batch encoded by the batcher while the previous one was in flight; `None`
    /// when the batch has no records.
    encoded: Option<Encoded>,
}

impl Batch {
    fn records(&self) -> Vec<&Record> {
        self.items
            .iter()
            .flat_map(|i| i.chunk.records[i.start..i.end].iter().map(|(_, r)| r))
            .collect()
    }
}

/// Input chunks → batches by events, bytes and age, each encoded at once, handed to the
/// [`Sender`] through a channel of one: one batch is sent while the next is encoded and a
/// third fills, so parsing and encoding overlap the destination's answer.
#[derive(Debug)]
struct Batcher {
    rx: Receiver<Arc<Chunk>>,
    tx: mpsc::Sender<Batch>,
    encoder: Encoder,
    batch: crate::config::BatchLimits,
    abort: watch::Receiver<bool>,
    items: Vec<BatchItem>,
    events: usize,
    bytes: u64,
    started: Option<Instant>,
}

impl Batcher {
    /// Runs until its input closes (after a final flush) or it is told to abort.
    async fn run(mut self) {
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
        let mut batch = Batch {
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

/// Batches → destination, then acknowledgements.
#[derive(Debug)]
struct Sender {
    index: usize,
    rx: mpsc::Receiver<Batch>,
    progress: Vec<Option<Arc<SourceProgress>>>,
    delivery: Delivery,
    /// Sources with acknowledgements not yet on disk, with the last acknowledgement number.
    unpersisted: Unpersisted,
}

impl Sender {
    async fn run(mut self) {
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

    async fn send(&mut self, mut batch: Batch) -> Result<(), Aborted> {
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

impl SinkTask {
    /// Builds a sink (its HTTP client, TLS files, its disk buffer).
    pub fn new(setup: SinkSetup) -> Result<SinkTask, SinkError> {
        let (output, encoder) = build_output(&setup.config)?;
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
            delivery: Delivery {
                config: setup.config,
                output,
                encoder,
                counters,
                abort: setup.abort,
            },
            disk,
        })
    }

    /// Runs until its input closes (after a final flush) or it is told to abort.
    pub async fn run(mut self) {
        if let Some((writer, reader)) = self.disk.take() {
            return self.run_disk(writer, reader).await;
        }
        let (tx, rx) = mpsc::channel(1);
        let batcher = Batcher {
            rx: self.rx,
            tx,
            encoder: self.delivery.encoder.clone(),
            batch: self.delivery.config.batch,
            abort: self.delivery.abort.clone(),
            items: Vec::new(),
            events: 0,
            bytes: 0,
            started: None,
        };
        let sender = Sender {
            index: self.index,
            rx,
            progress: self.progress,
            delivery: self.delivery,
            unpersisted: Vec::new(),
        };
        // Its own task, so that sending proceeds while the batcher encodes.
        let sender = tokio::spawn(sender.run());
        batcher.run().await;
        let _ = sender.await;
    }

    /// With a disk buffer: a writer (input → disk, then acknowledgements) and a reader
    /// (disk → destination) run side by side.
    async fn run_disk(self, writer: BufferWriter, reader: BufferReader) {
        let when_full = self
            .delivery
            .config
            .disk_buffer
            .as_ref()
            .map_or(WhenFull::Block, |d| d.when_full);
        let w = DiskWriter {
            name: self.delivery.config.name.clone(),
            index: self.index,
            rx: self.rx,
            progress: self.progress,
            unpersisted: Vec::new(),
            counters: self.counters,
            abort: self.delivery.abort.clone(),
            writer: Some(writer),
            when_full,
            dropped_unlogged: 0,
            last_drop_log: None,
            retry: self.delivery.config.retry,
        };
        let r = DiskReader {
            delivery: self.delivery,
            reader: Some(reader),
        };
        tokio::join!(w.run(), r.run());
    }
}

/// Encodes and sends batches: retries, 413 splitting, dead letters.
#[derive(Debug)]
struct Delivery {
    config: Sink,
    output: Output,
    encoder: Encoder,
    counters: Arc<SinkCounters>,
    abort: watch::Receiver<bool>,
}

impl Delivery {
    async fn sleep_or_abort(&mut self, d: Duration) -> Result<(), Aborted> {
        sleep_or_abort(&mut self.abort, d).await
    }

    /// Delivers `records`: every one is either acknowledged by the destination or written
    /// to the dead-letter file when this returns `Ok`.
    /// `encoded` is all of `records`, already encoded.
    async fn deliver(
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
                    self.dead_letter(part, status, &message).await?;
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

    async fn dead_letter(
        &mut self,
        records: &[&Record],
        status: u16,
        message: &str,
    ) -> Result<(), Aborted> {
        let mut out = String::new();
        for r in records {
            out.push_str("{\"sink\":");
            write_json_string(&mut out, &self.config.name);
            out.push_str(&format!(",\"status\":{status},\"error\":"));
            write_json_string(&mut out, message);
            out.push_str(",\"record\":");
            r.write_json(&mut out, true);
            out.push_str("}\n");
        }
        let bytes = out.into_bytes();
        let mut backoff = Backoff::new(self.config.retry);
        loop {
            let path = self.config.dead_letter_path.clone();
            let body = bytes.clone();
            match tokio::task::spawn_blocking(move || append_synced(&path, &body)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    error!(sink = %self.config.name, path = %self.config.dead_letter_path.display(), error = %e, "Cannot write the dead-letter file; retrying.");
                }
                Err(e) => error!(error = %e, "Dead-letter writer failed."),
            }
            self.sleep_or_abort(backoff.next_wait()).await?;
        }
    }
}

/// Waits between retries: exponential from `initial_backoff` up to `max_backoff`, each wait
/// drawn from the upper half of its step so that shippers that failed together (a log store
/// restart) do not all come back in the same instant.
#[derive(Debug)]
struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    fn new(retry: crate::config::Retry) -> Backoff {
        Backoff {
            step: retry.initial_backoff,
            max: retry.max_backoff,
        }
    }

    fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + Duration::from_nanos(fastrand::u64(0..(half.as_nanos() as u64).max(1)))
    }
}

async fn sleep_or_abort(abort: &mut watch::Receiver<bool>, d: Duration) -> Result<(), Aborted> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        r = abort.wait_for(|a| *a) => match r {
            Ok(_) | Err(_) => Err(Aborted),
        },
    }
}

/// Input chunks → disk buffer, then acknowledgements.
#[derive(Debug)]
struct DiskWriter {
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
    retry: crate::config::Retry,
}

impl DiskWriter {
    async fn run(mut self) {
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
struct DiskReader {
    delivery: Delivery,
    /// `None` only while a blocking call holds it.
    reader: Option<BufferReader>,
}

impl DiskReader {
    async fn run(mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_join_the_path_and_keep_the_query() {
        let join = |endpoint: &str, api: &str| {
            request_url(&url::Url::parse(endpoint).unwrap(), api).to_string()
        };
        let loki = "/loki/api/v1/push";
        let vl_loki = "/insert/loki/api/v1/push?_msg_field=message";
        for (endpoint, api, want) in [
            ("http://h:3100", loki, "http://h:3100/loki/api/v1/push"),
            ("http://h:3100/", loki, "http://h:3100/loki/api/v1/push"),
            (
                "http://h:3100/?tenant=x",
                loki,
                "http://h:3100/loki/api/v1/push?tenant=x",
            ),
            (
                "https://h/prefix/?tenant=x&token=t",
                "/insert/jsonline",
                "https://h/prefix/insert/jsonline?tenant=x&token=t",
            ),
            (
                "http://h:9428/vl?tenant=x",
                vl_loki,
                "http://h:9428/vl/insert/loki/api/v1/push?tenant=x&_msg_field=message",
            ),
            (
                "http://h:9428",
                vl_loki,
                "http://h:9428/insert/loki/api/v1/push?_msg_field=message",
            ),
        ] {
            assert_eq!(join(endpoint, api), want, "{endpoint} + {api}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(crate::config::Retry {
            initial_backoff: ms(100),
            max_backoff: ms(1000),
        });
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        let waits: Vec<Duration> = steps.iter().map(|_| b.next_wait()).collect();
        for (wait, step) in waits.iter().zip(steps) {
            assert!(
                *wait >= ms(step) / 2 && *wait < ms(step),
                "{wait:?} outside [{step}/2, {step}) ms"
            );
        }
        // Jitter: many retries at the cap do not all wait the same.
        let capped: std::collections::HashSet<Duration> = (0..20).map(|_| b.next_wait()).collect();
        assert!(capped.len() > 10, "{capped:?}");
    }
}
