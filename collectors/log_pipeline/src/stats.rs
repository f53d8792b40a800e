//! The shipper's own metrics, in the Prometheus text format (names are ours; counters end in
//! `_total`). They survive config reloads.
//!
//! Metrics derived from PostgreSQL logs (sources of format `postgres_csv`, `postgres_json`,
//! `postgres_stderr`; every parsed record, before the level filter):
//!
//! - `log_shipper_postgres_events_total{source, severity, sqlstate_class}`: `severity` is
//!   PostgreSQL's own word (`LOG`, `ERROR`, `FATAL`, ...), `sqlstate_class` the first two
//!   characters of the SQLSTATE (`23`, `40`, `00`, ...; jsonlog omits 00000, so a jsonlog
//!   record without `state_code` is `00`), `unknown` when the record has no code (e.g. a
//!   `log_line_prefix` without `%e`) or an invalid one;
//! - `log_shipper_postgres_statement_duration_seconds{source, db}`: a histogram of the
//!   `duration: X ms` values (`log_min_duration_statement`), `db` `unknown` when not logged.
//!
//! The label values come from the logs, so each family keeps at most
//! [`PG_LABEL_SETS_MAX`] label sets: further ones are counted under `_other_`
//! (`severity="_other_", sqlstate_class="_other_"`, or `db="_other_"`), logged once, and
//! counted in `log_shipper_postgres_label_sets_folded_total{metric}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_kit::exposition::{MetricType, TextEncoder};
use agent_kit::sync::lock;

use tokio::sync::mpsc::{Sender, WeakSender};

use crate::checkpoint::CheckpointHealth;
use crate::chunk::Chunk;
use crate::format::Format;
use crate::record::Record;

/// Upper bounds of the batch latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Upper bounds of the statement duration histogram, seconds: from 1 ms to a minute, for
/// the values `log_min_duration_statement` logs.
pub const STATEMENT_DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Label sets kept per log-derived metric family; further ones fold into `_other_`.
pub const PG_LABEL_SETS_MAX: usize = 1000;

/// The label value that label sets over [`PG_LABEL_SETS_MAX`] fold into.
pub const OTHER: &str = "_other_";

/// The label value of a missing or invalid SQLSTATE class or database.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Default)]
struct DurationHistogram {
    /// Counts per bucket (not cumulative), the last one for `+Inf`.
    buckets: [u64; STATEMENT_DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// Counters derived from PostgreSQL log records.
#[derive(Debug, Default)]
struct PgLogMetrics {
    /// source → severity → SQLSTATE class → records.
    events: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    event_sets: usize,
    events_folded: u64,
    /// source → db → durations.
    durations: BTreeMap<String, BTreeMap<String, DurationHistogram>>,
    duration_sets: usize,
    durations_folded: u64,
}

/// PostgreSQL's severity words (`DEBUG1`..`DEBUG5` included); anything else is a hostile or
/// broken log and goes to `_other_`.
fn pg_severity(lv: &str) -> &str {
    const WORDS: [&str; 13] = [
        "LOG", "ERROR", "FATAL", "PANIC", "WARNING", "NOTICE", "INFO", "DEBUG", "DEBUG1", "DEBUG2",
        "DEBUG3", "DEBUG4", "DEBUG5",
    ];
    if lv.is_empty() {
        UNKNOWN
    } else if WORDS.contains(&lv) {
        lv
    } else {
        OTHER
    }
}

/// The first two characters of a SQLSTATE, `unknown` when there is none or it is not one.
fn sqlstate_class(code: &str) -> &str {
    let b = code.as_bytes();
    if b.len() == 5
        && b.iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        &code[..2]
    } else {
        UNKNOWN
    }
}

fn entry<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    // Looked up by reference first: the key is only allocated for a new label value.
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("just inserted")
}

impl PgLogMetrics {
    /// Counts one record; returns false when it was folded into `_other_`.
    fn count_event(&mut self, source: &str, severity: &str, class: &str) -> bool {
        let by_severity = entry(&mut self.events, source);
        let known = by_severity
            .get(severity)
            .is_some_and(|c| c.contains_key(class));
        let fits = known || self.event_sets < PG_LABEL_SETS_MAX;
        let (severity, class) = if fits {
            (severity, class)
        } else {
            (OTHER, OTHER)
        };
        let by_class = entry(by_severity, severity);
        match by_class.get_mut(class) {
            Some(n) => *n += 1,
            None => {
                by_class.insert(class.to_owned(), 1);
                self.event_sets += 1;
            }
        }
        if !fits {
            self.events_folded += 1;
        }
        fits
    }

    /// Observes one duration; returns false when it was folded into `db="_other_"`.
    fn observe_duration(&mut self, source: &str, db: &str, seconds: f64) -> bool {
        let by_db = entry(&mut self.durations, source);
        let fits = by_db.contains_key(db) || self.duration_sets < PG_LABEL_SETS_MAX;
        let db = if fits { db } else { OTHER };
        if !by_db.contains_key(db) {
            self.duration_sets += 1;
        }
        let h = entry(by_db, db);
        let i = STATEMENT_DURATION_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(STATEMENT_DURATION_BUCKETS.len());
        h.buckets[i] += 1;
        h.sum += seconds;
        h.count += 1;
        if !fits {
            self.durations_folded += 1;
        }
        fits
    }
}

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
    postgres: Mutex<PgLogMetrics>,
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
            postgres: Mutex::default(),
        }
    }
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

    /// Counts a parsed record of source `source` in the metrics derived from PostgreSQL logs
    /// (only for the PostgreSQL formats, and records that parsed as PostgreSQL's).
    pub fn observe_log_record(&self, source: &str, format: Format, record: &Record) {
        if !matches!(
            format,
            Format::PostgresCsv | Format::PostgresJson | Format::PostgresStderr
        ) {
            return;
        }
        let Some(pg) = record.pg.as_deref() else {
            return;
        };
        // jsonlog leaves `state_code` out when it is 00000 (csvlog and %e print it).
        let class = if pg.code.is_empty() && format == Format::PostgresJson {
            "00"
        } else {
            sqlstate_class(&pg.code)
        };
        let mut m = lock(&self.postgres);
        if !m.count_event(source, pg_severity(&pg.lv), class) && m.events_folded == 1 {
            tracing::warn!(
                source,
                limit = PG_LABEL_SETS_MAX,
                "Too many severity and SQLSTATE class pairs in the logs; further ones are counted as _other_."
            );
        }
        if let Some(ms) = pg.duration.filter(|d| d.is_finite() && *d >= 0.0) {
            let db = if pg.db.is_empty() { UNKNOWN } else { &pg.db };
            if !m.observe_duration(source, db, ms / 1000.0) && m.durations_folded == 1 {
                tracing::warn!(
                    source,
                    limit = PG_LABEL_SETS_MAX,
                    "Too many databases in the statement durations; further ones are counted as db=\"_other_\"."
                );
            }
        }
    }

    fn encode_postgres(&self, enc: &mut TextEncoder<'_>) {
        let m = lock(&self.postgres);
        {
            let mut fam = enc.family(
                "log_shipper_postgres_events_total",
                "PostgreSQL log records by severity and SQLSTATE class (before the level filter).",
                MetricType::Counter,
            );
            for (source, by_severity) in &m.events {
                for (severity, by_class) in by_severity {
                    for (class, n) in by_class {
                        fam.sample(
                            &[
                                ("source", source.as_str()),
                                ("severity", severity.as_str()),
                                ("sqlstate_class", class.as_str()),
                            ],
                            *n as f64,
                        );
                    }
                }
            }
        }
        {
            let mut fam = enc.family(
                "log_shipper_postgres_statement_duration_seconds",
                "Statement durations logged by PostgreSQL (duration: X ms, log_min_duration_statement).",
                MetricType::Histogram,
            );
            for (source, by_db) in &m.durations {
                for (db, h) in by_db {
                    let labels = [("source", source.as_str()), ("db", db.as_str())];
                    let mut cumulative = 0u64;
                    for (i, b) in STATEMENT_DURATION_BUCKETS.iter().enumerate() {
                        cumulative += h.buckets[i];
                        let le = b.to_string();
                        fam.sample_with_suffix(
                            "_bucket",
                            &[labels[0], labels[1], ("le", le.as_str())],
                            cumulative as f64,
                        );
                    }
                    cumulative += h.buckets[STATEMENT_DURATION_BUCKETS.len()];
                    fam.sample_with_suffix(
                        "_bucket",
                        &[labels[0], labels[1], ("le", "+Inf")],
                        cumulative as f64,
                    );
                    fam.sample_with_suffix("_sum", &labels, h.sum);
                    fam.sample_with_suffix("_count", &labels, h.count as f64);
                }
            }
        }
        let mut fam = enc.family(
            "log_shipper_postgres_label_sets_folded_total",
            "Log-derived samples counted under _other_ because their family reached its label set limit.",
            MetricType::Counter,
        );
        fam.sample(&[("metric", "events")], m.events_folded as f64);
        fam.sample(
            &[("metric", "statement_duration")],
            m.durations_folded as f64,
        );
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
            "log_shipper_source_lost_bytes_total",
            "Bytes lost because a file disappeared before it was read and acknowledged completely (at least).",
            MetricType::Counter,
            &|c| ld(&c.lost_bytes),
        );
        source_family(
            enc,
            "log_shipper_source_glob_files",
            "Files the include globs reached at the last expansion (at most max_files).",
            MetricType::Gauge,
            &|c| ld(&c.glob_files),
        );
        source_family(
            enc,
            "log_shipper_source_glob_directories",
            "Directories the include globs listed at the last expansion (at most max_directories).",
            MetricType::Gauge,
            &|c| ld(&c.glob_directories),
        );
        source_family(
            enc,
            "log_shipper_source_glob_limit_hits_total",
            "Glob expansions cut short at max_files or max_directories: the files past the limit are not read.",
            MetricType::Counter,
            &|c| ld(&c.glob_limit_hits),
        );
        source_family(
            enc,
            "log_shipper_checkpoint_age_seconds",
            "Seconds since the checkpoint last covered everything read.",
            MetricType::Gauge,
            &|c| ld(&c.checkpoint.age_ms) / 1000.0,
        );
        source_family(
            enc,
            "log_shipper_checkpoint_errors_total",
            "Checkpoint writes that failed.",
            MetricType::Counter,
            &|c| ld(&c.checkpoint.errors),
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
            &|c| c.buffer_chunks() as f64,
        );
        sink_family(
            enc,
            "log_shipper_buffer_capacity_chunks",
            "Capacity of the buffer in front of the sink; reading pauses when it is full.",
            MetricType::Gauge,
            &|c| ld(&c.buffer_capacity),
        );
        sink_family(
            enc,
            "log_shipper_buffer_dropped_events_total",
            "Records dropped because the disk buffer was full (when_full: drop_newest).",
            MetricType::Counter,
            &|c| ld(&c.buffer_dropped_events),
        );
        sink_family(
            enc,
            "log_shipper_sink_batches_split_total",
            "Batches split in halves after a 413 Payload Too Large or for batch.max_bytes.",
            MetricType::Counter,
            &|c| ld(&c.batches_split),
        );
        let disk_family = |enc: &mut TextEncoder<'_>,
                           name: &str,
                           help: &str,
                           kind,
                           get: &dyn Fn(&SinkCounters) -> f64| {
            let mut fam = enc.family(name, help, kind);
            for (sink, c) in sinks
                .iter()
                .filter(|(_, c)| c.disk_buffer_max_bytes.load(Ordering::Relaxed) > 0)
            {
                fam.sample(&[("sink", sink.as_str())], get(c));
            }
        };
        disk_family(
            enc,
            "log_shipper_disk_buffer_bytes",
            "Bytes the sink's disk buffer takes on disk.",
            MetricType::Gauge,
            &|c| ld(&c.disk_buffer_bytes),
        );
        disk_family(
            enc,
            "log_shipper_disk_buffer_max_bytes",
            "The sink's disk buffer max_size.",
            MetricType::Gauge,
            &|c| ld(&c.disk_buffer_max_bytes),
        );
        disk_family(
            enc,
            "log_shipper_disk_buffer_corrupt_frames_total",
            "Corrupt or torn frames found in the disk buffer (after a crash) and skipped.",
            MetricType::Counter,
            &|c| ld(&c.disk_buffer_corrupt_frames),
        );
        disk_family(
            enc,
            "log_shipper_disk_buffer_corrupt_bytes_total",
            "Bytes of the disk buffer skipped with corrupt or torn frames.",
            MetricType::Counter,
            &|c| ld(&c.disk_buffer_corrupt_bytes),
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
        source_family(
            enc,
            "log_shipper_journald_restarts_total",
            "journalctl restarts after it exited or could not start (journald sources).",
            MetricType::Counter,
            &|c| ld(&c.journal_restarts),
        );
        self.encode_postgres(enc);
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

    fn pg_record(lv: &str, code: &str, db: &str, duration_ms: Option<f64>) -> Record {
        Record {
            time: jiff::Timestamp::UNIX_EPOCH,
            origin: Arc::new(crate::record::Origin {
                job: "postgres".into(),
                ins: String::new(),
                ip: String::new(),
                cls: String::new(),
            }),
            level: crate::record::Level::from_word(lv),
            message: String::new(),
            pg: Some(Box::new(crate::record::PgFields {
                lv: lv.into(),
                code: code.into(),
                db: db.into(),
                duration: duration_ms,
                ..crate::record::PgFields::default()
            })),
            topic: None,
            extra: Vec::new(),
            parse_error: None,
        }
    }

    #[test]
    fn postgres_events_and_durations() {
        let s = Stats::default();
        let csv = Format::PostgresCsv;
        s.observe_log_record("pg", csv, &pg_record("ERROR", "23505", "app", None));
        s.observe_log_record("pg", csv, &pg_record("ERROR", "23505", "app", None));
        s.observe_log_record("pg", csv, &pg_record("ERROR", "22012", "app", None));
        s.observe_log_record("pg", csv, &pg_record("LOG", "00000", "app", Some(0.5)));
        s.observe_log_record("pg", csv, &pg_record("LOG", "00000", "app", Some(1.0)));
        s.observe_log_record("pg", csv, &pg_record("LOG", "00000", "app", Some(1500.0)));
        s.observe_log_record("pg", csv, &pg_record("LOG", "00000", "", Some(70_000.0)));
        s.observe_log_record("pg", csv, &pg_record("FATAL", "", "", None));
        s.observe_log_record("pg", csv, &pg_record("SHOUT", "2350", "", None));
        s.observe_log_record("js", Format::PostgresJson, &pg_record("LOG", "", "", None));
        // Not a PostgreSQL format, or not parsed as PostgreSQL's: not counted.
        s.observe_log_record(
            "pat",
            Format::Patroni,
            &pg_record("ERROR", "23505", "", None),
        );
        let mut plain = pg_record("ERROR", "23505", "", None);
        plain.pg = None;
        s.observe_log_record("pg", csv, &plain);
        let text = s.render();
        for line in [
            "log_shipper_postgres_events_total{source=\"pg\",severity=\"ERROR\",sqlstate_class=\"23\"} 2\n",
            "log_shipper_postgres_events_total{source=\"pg\",severity=\"ERROR\",sqlstate_class=\"22\"} 1\n",
            "log_shipper_postgres_events_total{source=\"pg\",severity=\"LOG\",sqlstate_class=\"00\"} 4\n",
            "log_shipper_postgres_events_total{source=\"pg\",severity=\"FATAL\",sqlstate_class=\"unknown\"} 1\n",
            "log_shipper_postgres_events_total{source=\"pg\",severity=\"_other_\",sqlstate_class=\"unknown\"} 1\n",
            "log_shipper_postgres_statement_duration_seconds_bucket{source=\"pg\",db=\"app\",le=\"0.001\"} 2\n",
            "log_shipper_postgres_statement_duration_seconds_bucket{source=\"pg\",db=\"app\",le=\"1\"} 2\n",
            "log_shipper_postgres_statement_duration_seconds_bucket{source=\"pg\",db=\"app\",le=\"2.5\"} 3\n",
            "log_shipper_postgres_statement_duration_seconds_bucket{source=\"pg\",db=\"app\",le=\"+Inf\"} 3\n",
            "log_shipper_postgres_statement_duration_seconds_sum{source=\"pg\",db=\"app\"} 1.5015\n",
            "log_shipper_postgres_statement_duration_seconds_count{source=\"pg\",db=\"app\"} 3\n",
            "log_shipper_postgres_statement_duration_seconds_bucket{source=\"pg\",db=\"unknown\",le=\"60\"} 0\n",
            "log_shipper_postgres_statement_duration_seconds_bucket{source=\"pg\",db=\"unknown\",le=\"+Inf\"} 1\n",
            "log_shipper_postgres_label_sets_folded_total{metric=\"events\"} 0\n",
            "log_shipper_postgres_events_total{source=\"js\",severity=\"LOG\",sqlstate_class=\"00\"} 1\n",
            "# TYPE log_shipper_postgres_statement_duration_seconds histogram\n",
            "# TYPE log_shipper_postgres_events_total counter\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("source=\"pat\""));
    }

    #[test]
    fn hostile_label_values_are_folded() {
        let s = Stats::default();
        let csv = Format::PostgresJson;
        for i in 0..PG_LABEL_SETS_MAX + 500 {
            s.observe_log_record(
                "pg",
                csv,
                &pg_record("LOG", "00000", &format!("db{i}"), Some(1.0)),
            );
        }
        for i in 0..36 * 36 {
            let c = |n: usize| {
                char::from_digit((n % 36) as u32, 36)
                    .unwrap()
                    .to_ascii_uppercase()
            };
            let code = format!("{}{}000", c(i / 36), c(i));
            s.observe_log_record("pg", csv, &pg_record("ERROR", &code, "x", None));
        }
        let text = s.render();
        let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        // 1000 databases plus _other_ and "x"-free: durations only came with db{i}.
        assert_eq!(
            count("log_shipper_postgres_statement_duration_seconds_count{"),
            PG_LABEL_SETS_MAX + 1
        );
        assert!(text.contains(
            "log_shipper_postgres_statement_duration_seconds_count{source=\"pg\",db=\"_other_\"} 500\n"
        ));
        assert!(text.contains(
            "log_shipper_postgres_label_sets_folded_total{metric=\"statement_duration\"} 500\n"
        ));
        // LOG/00 plus 999 ERROR classes, then _other_.
        assert_eq!(
            count("log_shipper_postgres_events_total{"),
            PG_LABEL_SETS_MAX + 1
        );
        let folded = 36 * 36 - (PG_LABEL_SETS_MAX - 1);
        assert!(text.contains(&format!(
            "log_shipper_postgres_events_total{{source=\"pg\",severity=\"_other_\",sqlstate_class=\"_other_\"}} {folded}\n"
        )));
        assert!(text.contains(&format!(
            "log_shipper_postgres_label_sets_folded_total{{metric=\"events\"}} {folded}\n"
        )));
    }
}
