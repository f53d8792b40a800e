//! The shipper's own metrics, in the Prometheus text format (names are ours; counters end in
//! `_total`). They survive config reloads. The sources and sinks update the
//! counters of `counters`; `postgres` counts what the PostgreSQL logs say:
//!
//! Metrics derived from PostgreSQL logs: events by severity and SQLSTATE class, statement
//! durations by database (see `postgres.rs`), each family bounded in label sets.

mod counters;
mod postgres;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agent_kit::exposition::{MetricType, TextEncoder};
use agent_kit::sync::lock;

use crate::expand::PathError;
use crate::format::Format;
use crate::record::Record;
use postgres::PgLogMetrics;

pub use counters::{FileStats, LATENCY_BUCKETS, SinkCounters, SourceCounters};
pub use postgres::{OTHER, PG_LABEL_SETS_MAX, STATEMENT_DURATION_BUCKETS, UNKNOWN};

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
        lock(&self.postgres).observe(source, format, record);
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

        let per_file = |get: fn(&FileStats) -> u64| {
            files.iter().map(move |((source, path), f)| {
                (
                    [("source", source.as_str()), ("file", path.as_str())],
                    get(f) as f64,
                )
            })
        };
        let per_source = |get: fn(&SourceCounters) -> f64| {
            sources
                .iter()
                .map(move |(source, c)| ([("source", source.as_str())], get(c)))
        };
        let per_sink = |get: fn(&SinkCounters) -> f64| {
            sinks
                .iter()
                .map(move |(sink, c)| ([("sink", sink.as_str())], get(c)))
        };
        // The disk buffer's families show only the sinks that have one.
        let per_disk_buffer = |get: fn(&SinkCounters) -> f64| {
            sinks
                .iter()
                .filter(|(_, c)| c.disk_buffer_max_bytes.load(Ordering::Relaxed) > 0)
                .map(move |(sink, c)| ([("sink", sink.as_str())], get(c)))
        };
        use MetricType::{Counter, Gauge};
        family(
            enc,
            "log_shipper_file_read_bytes_total",
            "Bytes read from the file.",
            Counter,
            per_file(|f| f.bytes),
        );
        family(
            enc,
            "log_shipper_file_read_lines_total",
            "Records read from the file.",
            Counter,
            per_file(|f| f.records),
        );
        family(
            enc,
            "log_shipper_file_size_bytes",
            "Size of the file at the last look.",
            Gauge,
            per_file(|f| f.size),
        );
        family(
            enc,
            "log_shipper_file_lag_bytes",
            "Bytes of the file not read yet.",
            Gauge,
            per_file(|f| f.size.saturating_sub(f.position)),
        );
        family(
            enc,
            "log_shipper_source_records_total",
            "Records shipped by the source (after the level filter).",
            Counter,
            per_source(|c| ld(&c.records)),
        );
        family(
            enc,
            "log_shipper_source_filtered_records_total",
            "Records dropped by the level filter.",
            Counter,
            per_source(|c| ld(&c.filtered)),
        );
        family(
            enc,
            "log_shipper_source_parse_errors_total",
            "Records no parser understood, shipped as plain text with parse_error.",
            Counter,
            per_source(|c| ld(&c.parse_errors)),
        );
        family(
            enc,
            "log_shipper_source_invalid_utf8_records_total",
            "Records whose invalid UTF-8 was replaced.",
            Counter,
            per_source(|c| ld(&c.invalid_utf8)),
        );
        family(
            enc,
            "log_shipper_source_truncated_records_total",
            "Records over the size limit, truncated with a marker.",
            Counter,
            per_source(|c| ld(&c.truncated)),
        );
        family(
            enc,
            "log_shipper_source_cut_messages_total",
            "Messages cut at message_max_length.",
            Counter,
            per_source(|c| ld(&c.message_cut)),
        );
        family(
            enc,
            "log_shipper_source_file_truncations_total",
            "Truncations of a file detected (in place or copytruncate).",
            Counter,
            per_source(|c| ld(&c.truncations)),
        );
        family(
            enc,
            "log_shipper_source_files_opened_total",
            "Files opened for reading.",
            Counter,
            per_source(|c| ld(&c.files_opened)),
        );
        family(
            enc,
            "log_shipper_source_replayed_bytes_total",
            "Bytes read again after a restart (read but not acknowledged before): possible duplicates.",
            Counter,
            per_source(|c| ld(&c.replayed_bytes)),
        );
        family(
            enc,
            "log_shipper_source_lost_bytes_total",
            "Bytes lost because a file disappeared before it was read and acknowledged completely (at least).",
            Counter,
            per_source(|c| ld(&c.lost_bytes)),
        );
        family(
            enc,
            "log_shipper_source_glob_files",
            "Files the include globs reached at the last expansion (at most max_files).",
            Gauge,
            per_source(|c| ld(&c.glob_files)),
        );
        family(
            enc,
            "log_shipper_source_glob_directories",
            "Directories the include globs listed at the last expansion (at most max_directories).",
            Gauge,
            per_source(|c| ld(&c.glob_directories)),
        );
        family(
            enc,
            "log_shipper_source_glob_limit_hits_total",
            "Glob expansions cut short at max_files or max_directories: the files past the limit are not read.",
            Counter,
            per_source(|c| ld(&c.glob_limit_hits)),
        );
        family(
            enc,
            "log_shipper_source_path_errors_total",
            "Directories and files the include globs reach that could not be listed, reached or opened (each time), by kind: permission, name_too_long (longer than PATH_MAX), other.",
            Counter,
            sources.iter().flat_map(|(source, c)| {
                PathError::ALL.into_iter().map(move |k| {
                    (
                        [("source", source.as_str()), ("kind", k.label())],
                        ld(&c.path_errors[k.index()]),
                    )
                })
            }),
        );
        family(
            enc,
            "log_shipper_checkpoint_age_seconds",
            "Seconds since the checkpoint last covered everything read.",
            Gauge,
            per_source(|c| ld(&c.checkpoint.age_ms) / 1000.0),
        );
        family(
            enc,
            "log_shipper_checkpoint_errors_total",
            "Checkpoint writes that failed.",
            Counter,
            per_source(|c| ld(&c.checkpoint.errors)),
        );
        family(
            enc,
            "log_shipper_sink_events_sent_total",
            "Records acknowledged by the destination.",
            Counter,
            per_sink(|c| ld(&c.events_sent)),
        );
        family(
            enc,
            "log_shipper_sink_events_failed_total",
            "Records rejected by the destination (400) and written to the dead-letter file.",
            Counter,
            per_sink(|c| ld(&c.events_failed)),
        );
        family(
            enc,
            "log_shipper_sink_requests_retried_total",
            "Requests retried after 429, 5xx or a connection error.",
            Counter,
            per_sink(|c| ld(&c.requests_retried)),
        );
        family(
            enc,
            "log_shipper_buffer_chunks",
            "Chunks waiting in the bounded buffer in front of the sink.",
            Gauge,
            per_sink(|c| c.buffer_chunks() as f64),
        );
        family(
            enc,
            "log_shipper_buffer_capacity_chunks",
            "Capacity of the buffer in front of the sink; reading pauses when it is full.",
            Gauge,
            per_sink(|c| ld(&c.buffer_capacity)),
        );
        family(
            enc,
            "log_shipper_buffer_dropped_events_total",
            "Records dropped because the disk buffer was full (when_full: drop_newest).",
            Counter,
            per_sink(|c| ld(&c.buffer_dropped_events)),
        );
        family(
            enc,
            "log_shipper_sink_batches_split_total",
            "Batches split in halves after a 413 Payload Too Large or for batch.max_bytes.",
            Counter,
            per_sink(|c| ld(&c.batches_split)),
        );
        family(
            enc,
            "log_shipper_disk_buffer_bytes",
            "Bytes the sink's disk buffer takes on disk.",
            Gauge,
            per_disk_buffer(|c| ld(&c.disk_buffer_bytes)),
        );
        family(
            enc,
            "log_shipper_disk_buffer_max_bytes",
            "The sink's disk buffer max_size.",
            Gauge,
            per_disk_buffer(|c| ld(&c.disk_buffer_max_bytes)),
        );
        family(
            enc,
            "log_shipper_disk_buffer_corrupt_frames_total",
            "Corrupt or torn frames found in the disk buffer (after a crash) and skipped.",
            Counter,
            per_disk_buffer(|c| ld(&c.disk_buffer_corrupt_frames)),
        );
        family(
            enc,
            "log_shipper_disk_buffer_corrupt_bytes_total",
            "Bytes of the disk buffer skipped with corrupt or torn frames.",
            Counter,
            per_disk_buffer(|c| ld(&c.disk_buffer_corrupt_bytes)),
        );
        let mut latency = enc.family(
            "log_shipper_sink_batch_latency_seconds",
            "Time from a batch's first record entering the sink to its acknowledgement.",
            MetricType::Histogram,
        );
        for (sink, c) in &sinks {
            let counts: [u64; LATENCY_BUCKETS.len() + 1] =
                std::array::from_fn(|i| c.latency_buckets[i].load(Ordering::Relaxed));
            latency.histogram(
                &[("sink", sink.as_str())],
                &LATENCY_BUCKETS,
                &counts,
                c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            );
        }
        family(
            enc,
            "log_shipper_journald_restarts_total",
            "journalctl restarts after it exited or could not start (journald sources).",
            Counter,
            per_source(|c| ld(&c.journal_restarts)),
        );
        lock(&self.postgres).encode(enc);
        family(
            enc,
            "log_shipper_config_reloads_total",
            "Config reloads by result.",
            Counter,
            [([("result", "success")], ld(&self.reloads_ok))],
        );
        family(
            enc,
            "log_shipper_config_reload_failures_total",
            "Config reloads rejected (the running config stays).",
            Counter,
            [([], ld(&self.reloads_failed))],
        );
        family(
            enc,
            "log_shipper_uptime_seconds",
            "Seconds since the shipper started.",
            Gauge,
            [([], self.started.elapsed().as_secs_f64())],
        );
    }

    /// The metrics as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut enc = TextEncoder::new(&mut out);
        self.encode(&mut enc);
        out
    }
}

/// Writes a family with a sample per `(labels, value)` of `samples`: the one way the
/// shipper's families are written (histograms through
/// [`FamilyWriter::histogram`](agent_kit::exposition::FamilyWriter::histogram)).
fn family<'l, const N: usize>(
    enc: &mut TextEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = ([(&'l str, &'l str); N], f64)>,
) {
    let mut fam = enc.family(name, help, kind);
    for (labels, value) in samples {
        fam.sample(&labels, value);
    }
}

fn ld(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
