//! Sinks: each runs as a task that batches the chunks of its bounded input channel (by
//! events, bytes and age), delivers a batch with retries, then acknowledges the offsets of the
//! records it delivered so the checkpoints can move.
//!
//! Delivery: 2xx acknowledges; 429, 408, 401, 403, 404, 5xx (but 501) and connection errors are
//! retried forever with exponential backoff and jitter (data stays on disk meanwhile, and
//! reading pauses once the buffer is full); 400 and other 4xx reject the batch: its records go
//! to the dead-letter file (JSON lines), are counted, and the checkpoint moves past them.

mod encode;
pub mod loki_proto;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use tokio::sync::watch;
use tracing::{error, warn};

use crate::checkpoint::SourceProgress;
use crate::config::{Auth, Sink, SinkKind};
use crate::record::{Record, write_json_string};
use crate::stats::{SinkCounters, Stats};
use crate::tailer::Chunk;

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
        url: String,
        headers: Vec<(String, String)>,
        auth: Option<Auth>,
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
            } => {
                let mut req = client
                    .post(url)
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
                let resp = req
                    .send()
                    .await
                    .map_err(|e| SendError::Retry(format!("request failed: {e}")))?;
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Ok(());
                }
                let mut text = resp.text().await.unwrap_or_default();
                crate::parse::cut_chars(&mut text, 512);
                let message = format!("HTTP {status}: {}", text.trim());
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
            url: format!("{}{}", http.endpoint, encoder.path()),
            headers: http.headers.clone(),
            auth: http.auth.clone(),
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
    config: Sink,
    rx: Receiver<Arc<Chunk>>,
    progress: Vec<Option<Arc<SourceProgress>>>,
    counters: Arc<SinkCounters>,
    abort: watch::Receiver<bool>,
    output: Output,
    encoder: Encoder,
    items: Vec<BatchItem>,
    events: usize,
    bytes: u64,
    started: Option<Instant>,
    rng: u64,
    /// Sources with acknowledgements not yet on disk, with the last acknowledgement number.
    unpersisted: Vec<(usize, u64)>,
}

/// The longest a batch waits for the checkpoint of the previous one.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);

/// The task ended because it was told to abort.
#[derive(Debug)]
struct Aborted;

impl SinkTask {
    /// Builds a sink (its HTTP client, TLS files).
    pub fn new(setup: SinkSetup) -> Result<SinkTask, SinkError> {
        let (output, encoder) = build_output(&setup.config)?;
        let counters = setup.stats.sink(&setup.config.name);
        counters
            .buffer_capacity
            .store(setup.rx.max_capacity() as u64, Ordering::Relaxed);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            ^ (setup.index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Ok(SinkTask {
            index: setup.index,
            config: setup.config,
            rx: setup.rx,
            progress: setup.progress,
            counters,
            abort: setup.abort,
            output,
            encoder,
            items: Vec::new(),
            events: 0,
            bytes: 0,
            started: None,
            rng: seed | 1,
            unpersisted: Vec::new(),
        })
    }

    /// Runs until its input closes (after a final flush) or it is told to abort.
    pub async fn run(mut self) {
        loop {
            self.counters
                .buffer_chunks
                .store(self.rx.len() as u64, Ordering::Relaxed);
            let deadline = self
                .started
                .map(|t| tokio::time::Instant::from_std(t + self.config.batch.timeout));
            let step = tokio::select! {
                biased;
                r = self.abort.changed() => {
                    if r.is_err() || *self.abort.borrow() {
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
            if self.items.is_empty() {
                self.ack(chunk.source, chunk.stream, chunk.end);
            } else {
                self.items.push(BatchItem {
                    chunk,
                    start: 0,
                    end: 0,
                });
            }
            return Ok(());
        }
        let n = chunk.records.len();
        let mut start = 0;
        while start < n {
            let mut end = start;
            while end < n
                && self.events < self.config.batch.max_events
                && self.bytes < self.config.batch.max_bytes
            {
                self.bytes += chunk.records[end].1.estimated_size() as u64;
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
            if self.events >= self.config.batch.max_events
                || self.bytes >= self.config.batch.max_bytes
            {
                self.flush().await?;
            }
            start = end;
        }
        Ok(())
    }

    fn ack(&mut self, source: usize, stream: u64, offset: u64) {
        if let Some(Some(p)) = self.progress.get(source) {
            let n = p.ack(self.index, stream, offset);
            match self.unpersisted.iter_mut().find(|(s, _)| *s == source) {
                Some(entry) => entry.1 = entry.1.max(n),
                None => self.unpersisted.push((source, n)),
            }
        }
    }

    /// Waits until the checkpoints cover the batches acknowledged so far, so that a crash
    /// re-sends no more than the batch about to go out.
    async fn wait_checkpoints(&mut self) {
        for (source, n) in std::mem::take(&mut self.unpersisted) {
            if let Some(Some(p)) = self.progress.get(source) {
                p.wait_persisted(n, CHECKPOINT_WAIT).await;
            }
        }
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64: enough randomness to spread retries.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64).max(1))
    }

    async fn flush(&mut self) -> Result<(), Aborted> {
        if self.items.is_empty() {
            self.started = None;
            return Ok(());
        }
        let records: Vec<&Record> = self
            .items
            .iter()
            .flat_map(|i| i.chunk.records[i.start..i.end].iter().map(|(_, r)| r))
            .collect();
        let count = records.len() as u64;
        if count > 0 {
            let body = self.encoder.encode(&records);
            drop(records);
            self.wait_checkpoints().await;
            let mut backoff = self.config.retry.initial_backoff;
            loop {
                match self.output.send(&body).await {
                    Ok(()) => {
                        self.counters
                            .events_sent
                            .fetch_add(count, Ordering::Relaxed);
                        break;
                    }
                    Err(SendError::Reject { status, message }) => {
                        error!(sink = %self.config.name, status, error = %message, events = count, "Batch rejected; writing it to the dead-letter file.");
                        self.dead_letter(status, &message).await?;
                        self.counters
                            .events_failed
                            .fetch_add(count, Ordering::Relaxed);
                        break;
                    }
                    Err(SendError::Retry(message)) => {
                        self.counters
                            .requests_retried
                            .fetch_add(1, Ordering::Relaxed);
                        let wait = self.jitter(backoff);
                        warn!(sink = %self.config.name, error = %message, retry_in_ms = wait.as_millis() as u64, "Delivery failed; retrying.");
                        self.sleep_or_abort(wait).await?;
                        backoff = (backoff * 2).min(self.config.retry.max_backoff);
                    }
                }
            }
            if let Some(t) = self.started {
                self.counters.observe_latency(t.elapsed());
            }
        }
        let items = std::mem::take(&mut self.items);
        for item in &items {
            let offset = if item.end == item.chunk.records.len() {
                item.chunk.end
            } else {
                item.chunk.records[item.end - 1].0
            };
            self.ack(item.chunk.source, item.chunk.stream, offset);
        }
        self.events = 0;
        self.bytes = 0;
        self.started = None;
        Ok(())
    }

    async fn sleep_or_abort(&mut self, d: Duration) -> Result<(), Aborted> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            r = self.abort.wait_for(|a| *a) => match r {
                Ok(_) | Err(_) => Err(Aborted),
            },
        }
    }

    async fn dead_letter(&mut self, status: u16, message: &str) -> Result<(), Aborted> {
        let mut out = String::new();
        for item in &self.items {
            for (_, r) in &item.chunk.records[item.start..item.end] {
                out.push_str("{\"sink\":");
                write_json_string(&mut out, &self.config.name);
                out.push_str(&format!(",\"status\":{status},\"error\":"));
                write_json_string(&mut out, message);
                out.push_str(",\"record\":");
                r.write_json(&mut out, true);
                out.push_str("}\n");
            }
        }
        let bytes = out.into_bytes();
        let mut backoff = self.config.retry.initial_backoff;
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
            let wait = self.jitter(backoff);
            self.sleep_or_abort(wait).await?;
            backoff = (backoff * 2).min(self.config.retry.max_backoff);
        }
    }
}
