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

use agent_kit::exposition::{MetricType, TextEncoder};

use super::family;
use crate::format::Format;
use crate::record::Record;

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
}

/// Counters derived from PostgreSQL log records.
#[derive(Debug, Default)]
pub(super) struct PgLogMetrics {
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
    /// Counts `record` of `source` (see [`Stats::observe_log_record`](super::Stats::observe_log_record)).
    pub(super) fn observe(&mut self, source: &str, format: Format, record: &Record) {
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
        if !self.count_event(source, pg_severity(&pg.lv), class) && self.events_folded == 1 {
            tracing::warn!(
                source,
                limit = PG_LABEL_SETS_MAX,
                "Too many severity and SQLSTATE class pairs in the logs; further ones are counted as _other_."
            );
        }
        if let Some(ms) = pg.duration.filter(|d| d.is_finite() && *d >= 0.0) {
            let db = if pg.db.is_empty() { UNKNOWN } else { &pg.db };
            if !self.observe_duration(source, db, ms / 1000.0) && self.durations_folded == 1 {
                tracing::warn!(
                    source,
                    limit = PG_LABEL_SETS_MAX,
                    "Too many databases in the statement durations; further ones are counted as db=\"_other_\"."
                );
            }
        }
    }

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
        if !fits {
            self.durations_folded += 1;
        }
        fits
    }

    /// Writes the log-derived families.
    pub(super) fn encode(&self, enc: &mut TextEncoder<'_>) {
        family(
            enc,
            "log_shipper_postgres_events_total",
            "PostgreSQL log records by severity and SQLSTATE class (before the level filter).",
            MetricType::Counter,
            self.events.iter().flat_map(|(source, by_severity)| {
                by_severity.iter().flat_map(move |(severity, by_class)| {
                    by_class.iter().map(move |(class, n)| {
                        (
                            [
                                ("source", source.as_str()),
                                ("severity", severity.as_str()),
                                ("sqlstate_class", class.as_str()),
                            ],
                            *n as f64,
                        )
                    })
                })
            }),
        );
        let mut durations = enc.family(
            "log_shipper_postgres_statement_duration_seconds",
            "Statement durations logged by PostgreSQL (duration: X ms, log_min_duration_statement).",
            MetricType::Histogram,
        );
        for (source, by_db) in &self.durations {
            for (db, h) in by_db {
                durations.histogram(
                    &[("source", source.as_str()), ("db", db.as_str())],
                    &STATEMENT_DURATION_BUCKETS,
                    &h.buckets,
                    h.sum,
                );
            }
        }
        family(
            enc,
            "log_shipper_postgres_label_sets_folded_total",
            "Log-derived samples counted under _other_ because their family reached its label set limit.",
            MetricType::Counter,
            [
                ([("metric", "events")], self.events_folded as f64),
                (
                    [("metric", "statement_duration")],
                    self.durations_folded as f64,
                ),
            ],
        );
    }
}
