//! The shipper's own metrics, in the Prometheus text format (names are ours; counters end in
//! `_total`). They survive config reloads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agent_kit::exposition::{MetricType, TextEncoder};

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
    /// Seconds since the checkpoint last covered everything read (x1000).
    pub checkpoint_age_ms: AtomicU64,
    /// Checkpoint write failures.
    pub checkpoint_errors: AtomicU64,
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
    /// Chunks waiting in the buffer in front of the sink.
    pub buffer_chunks: AtomicU64,
    /// Capacity of that buffer.
    pub buffer_capacity: AtomicU64,
}

impl SinkCounters {
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

/// Every metric of the shipper.
#[derive(Debug)]
pub struct Stats {
    files: Mutex<BTreeMap<(String, String), FileStats>>,
    sources: Mutex<BTreeMap<String, Arc<SourceCounters>>>,
    sinks: Mutex<BTreeMap<String, Arc<SinkCounters>>>,
    /// Successful config reloads.
    pub reloads_ok: AtomicU64,
    /// Rejected config reloads.
    pub reloads_failed: AtomicU64,
    started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            files: Mutex::default(),
            sources: Mutex::default(),
            sinks: Mutex::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stats {
    /// The counters of source `name` (created on first use).
    pub fn source(&self, name: &str) -> Arc<SourceCounters> {
        lock(&self.sources)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The counters of sink `name` (created on first use).
    pub fn sink(&self, name: &str) -> Arc<SinkCounters> {
        lock(&self.sinks)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Updates the figures of one file.
    pub fn file_read(
        &self,
        source: &str,
        path: &str,
        bytes: u64,
        records: u64,
        size: u64,
        position: u64,
    ) {
        let mut files = lock(&self.files);
        let f = files
            .entry((source.to_owned(), path.to_owned()))
            .or_default();
        f.bytes += bytes;
        f.records += records;
        f.size = size;
        f.position = position;
    }

    /// Forgets a file that is no longer read.
    pub fn file_closed(&self, source: &str, path: &str) {
        lock(&self.files).remove(&(source.to_owned(), path.to_owned()));
    }

    /// The figures of one file, if it is being read.
    pub fn file(&self, source: &str, path: &str) -> Option<FileStats> {
        lock(&self.files)
            .get(&(source.to_owned(), path.to_owned()))
            .cloned()
    }

    /// Writes every metric.
    pub fn encode(&self, enc: &mut TextEncoder<'_>) {
        let files = lock(&self.files).clone();
        let sources: Vec<_> = lock(&self.sources)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sinks: Vec<_> = lock(&self.sinks)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        let file_family = |enc: &mut TextEncoder<'_>,
                           name: &str,
                           help: &str,
                           kind,
                           get: &dyn Fn(&FileStats) -> u64| {
            let mut fam = enc.family(name, help, kind);
            for ((source, path), f) in &files {
                fam.sample(
                    &[("source", source.as_str()), ("file", path.as_str())],
                    get(f) as f64,
                );
            }
        };
        file_family(
            enc,
            "log_shipper_file_read_bytes_total",
            "Bytes read from the file.",
            MetricType::Counter,
            &|f| f.bytes,
        );
        file_family(
            enc,
            "log_shipper_file_read_lines_total",
            "Records read from the file.",
            MetricType::Counter,
            &|f| f.records,
        );
        file_family(
            enc,
            "log_shipper_file_size_bytes",
            "Size of the file at the last look.",
            MetricType::Gauge,
            &|f| f.size,
        );
        file_family(
            enc,
            "log_shipper_file_lag_bytes",
            "Bytes of the file not read yet.",
            MetricType::Gauge,
            &|f| f.size.saturating_sub(f.position),
        );

        let source_family = |enc: &mut TextEncoder<'_>,
                             name: &str,
                             help: &str,
                             kind,
                             get: &dyn Fn(&SourceCounters) -> f64| {
            let mut fam = enc.family(name, help, kind);
            for (source, c) in &sources {
                fam.sample(&[("source", source.as_str())], get(c));
            }
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        source_family(
            enc,
            "log_shipper_source_records_total",
            "Records shipped by the source (after the level filter).",
            MetricType::Counter,
            &|c| ld(&c.records),
        );
        source_family(
            enc,
            "log_shipper_source_filtered_records_total",
            "Records dropped by the level filter.",
            MetricType::Counter,
            &|c| ld(&c.filtered),
        );
        source_family(
            enc,
            "log_shipper_source_parse_errors_total",
            "Records no parser understood, shipped as plain text with parse_error.",
            MetricType::Counter,
            &|c| ld(&c.parse_errors),
        );
        source_family(
            enc,
            "log_shipper_source_invalid_utf8_records_total",
            "Records whose invalid UTF-8 was replaced.",
            MetricType::Counter,
            &|c| ld(&c.invalid_utf8),
        );
        source_family(
            enc,
            "log_shipper_source_truncated_records_total",
            "Records over the size limit, truncated with a marker.",
            MetricType::Counter,
            &|c| ld(&c.truncated),
        );
        source_family(
            enc,
            "log_shipper_source_cut_messages_total",
            "Messages cut at message_max_length.",
            MetricType::Counter,
            &|c| ld(&c.message_cut),
        );
        source_family(
            enc,
            "log_shipper_source_file_truncations_total",
            "Truncations of a file detected (in place or copytruncate).",
            MetricType::Counter,
            &|c| ld(&c.truncations),
        );
        source_family(
            enc,
            "log_shipper_source_files_opened_total",
            "Files opened for reading.",
            MetricType::Counter,
            &|c| ld(&c.files_opened),
        );
        source_family(
            enc,
            "log_shipper_source_replayed_bytes_total",
            "Bytes read again after a restart (read but not acknowledged before): possible duplicates.",
            MetricType::Counter,
            &|c| ld(&c.replayed_bytes),
        );
        source_family(
            enc,
            "log_shipper_checkpoint_age_seconds",
            "Seconds since the checkpoint last covered everything read.",
            MetricType::Gauge,
            &|c| ld(&c.checkpoint_age_ms) / 1000.0,
        );
        source_family(
            enc,
            "log_shipper_checkpoint_errors_total",
            "Checkpoint writes that failed.",
            MetricType::Counter,
            &|c| ld(&c.checkpoint_errors),
        );

        let sink_family = |enc: &mut TextEncoder<'_>,
                           name: &str,
                           help: &str,
                           kind,
                           get: &dyn Fn(&SinkCounters) -> f64| {
            let mut fam = enc.family(name, help, kind);
            for (sink, c) in &sinks {
                fam.sample(&[("sink", sink.as_str())], get(c));
            }
        };
        sink_family(
            enc,
            "log_shipper_sink_events_sent_total",
            "Records acknowledged by the destination.",
            MetricType::Counter,
            &|c| ld(&c.events_sent),
        );
        sink_family(
            enc,
            "log_shipper_sink_events_failed_total",
            "Records rejected by the destination (400) and written to the dead-letter file.",
            MetricType::Counter,
            &|c| ld(&c.events_failed),
        );
        sink_family(
            enc,
            "log_shipper_sink_requests_retried_total",
            "Requests retried after 429, 5xx or a connection error.",
            MetricType::Counter,
            &|c| ld(&c.requests_retried),
        );
        sink_family(
            enc,
            "log_shipper_buffer_chunks",
            "Chunks waiting in the bounded buffer in front of the sink.",
            MetricType::Gauge,
            &|c| ld(&c.buffer_chunks),
        );
        sink_family(
            enc,
            "log_shipper_buffer_capacity_chunks",
            "Capacity of the buffer in front of the sink; reading pauses when it is full.",
            MetricType::Gauge,
            &|c| ld(&c.buffer_capacity),
        );
        {
            let mut fam = enc.family(
                "log_shipper_sink_batch_latency_seconds",
                "Time from a batch's first record entering the sink to its acknowledgement.",
                MetricType::Histogram,
            );
            for (sink, c) in &sinks {
                let mut cumulative = 0u64;
                for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                    cumulative += c.latency_buckets[i].load(Ordering::Relaxed);
                    let le = b.to_string();
                    fam.sample_with_suffix(
                        "_bucket",
                        &[("sink", sink.as_str()), ("le", le.as_str())],
                        cumulative as f64,
                    );
                }
                cumulative += c.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
                fam.sample_with_suffix(
                    "_bucket",
                    &[("sink", sink.as_str()), ("le", "+Inf")],
                    cumulative as f64,
                );
                fam.sample_with_suffix(
                    "_sum",
                    &[("sink", sink.as_str())],
                    c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
                );
                fam.sample_with_suffix("_count", &[("sink", sink.as_str())], cumulative as f64);
            }
        }
        enc.family(
            "log_shipper_config_reloads_total",
            "Config reloads by result.",
            MetricType::Counter,
        )
        .sample(&[("result", "success")], ld(&self.reloads_ok));
        enc.family(
            "log_shipper_config_reload_failures_total",
            "Config reloads rejected (the running config stays).",
            MetricType::Counter,
        )
        .sample::<&str, &str>(&[], ld(&self.reloads_failed));
        enc.family(
            "log_shipper_uptime_seconds",
            "Seconds since the shipper started.",
            MetricType::Gauge,
        )
        .sample::<&str, &str>(&[], self.started.elapsed().as_secs_f64());
    }

    /// The metrics as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut enc = TextEncoder::new(&mut out);
        self.encode(&mut enc);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families() {
        let s = Stats::default();
        s.file_read("pg", "/x.csv", 100, 2, 150, 100);
        s.sink("vl").observe_latency(Duration::from_millis(20));
        s.source("pg").records.fetch_add(2, Ordering::Relaxed);
        let text = s.render();
        assert!(text.contains("log_shipper_file_lag_bytes{source=\"pg\",file=\"/x.csv\"} 50\n"));
        assert!(text.contains(
            "log_shipper_sink_batch_latency_seconds_bucket{sink=\"vl\",le=\"0.025\"} 1\n"
        ));
        assert!(text.contains(
            "log_shipper_sink_batch_latency_seconds_bucket{sink=\"vl\",le=\"0.01\"} 0\n"
        ));
        assert!(text.contains("log_shipper_source_records_total{source=\"pg\"} 2\n"));
    }
}
