//! One real execution of a collector: its predicate queries, its query under the collector's
//! timeout (cancelled on the server when it expires), and the conversion of the rows into
//! rendered samples, published whole or not at all.
//!
//! [`execute`] returns an [`Outcome`]; the TTL cache in [`crate::server`] keeps it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_kit::exposition::{MetricType, write_sample};
use tracing::warn;

use crate::config::{CollectorConfig, Column, Usage};
use crate::connection::{DbConnection, QueryError, ResultSet};
use crate::value::{NotANumber, Value};

/// Why an execution failed. The message names the collector's failing part.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectError {
    /// The query (or a predicate query) failed on the server or the connection broke.
    #[error("query failed: {0}")]
    Query(String),
    /// The collector's timeout expired; the statement was cancelled on the server.
    #[error("timed out after {0:?} and was cancelled")]
    Timeout(Duration),
    /// A predicate query did not return a single boolean column in at most one row.
    #[error("predicate query {name}: {reason}")]
    Predicate {
        /// The predicate's name.
        name: String,
        /// What was wrong with its result.
        reason: String,
    },
    /// A LABEL or HISTOGRAM column is missing from the result.
    #[error("column {0:?} is missing from the result")]
    MissingColumn(String),
    /// A histogram observation was NaN or infinite.
    #[error("histogram column {0:?} has a non-finite observation")]
    NonFiniteObservation(String),
}

impl From<QueryError> for CollectError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Timeout(d) => CollectError::Timeout(d),
            other => CollectError::Query(other.to_string()),
        }
    }
}

/// The samples of one metric family produced by one collector, already rendered in the text
/// format (without the `# HELP`/`# TYPE` header, which the scrape writes once per family).
#[derive(Debug, Clone)]
pub struct FamilyOutput {
    /// Full metric name.
    pub name: Arc<str>,
    /// HELP text.
    pub help: Arc<str>,
    /// TYPE.
    pub kind: MetricType,
    /// Rendered sample lines.
    pub lines: String,
    /// Number of samples in `lines`.
    pub samples: usize,
}

/// The result of one real execution, kept in the TTL cache until it expires.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Rendered families; empty on error or when a predicate skipped the query.
    pub families: Vec<FamilyOutput>,
    /// The error, if the execution failed (an empty result is published then).
    pub error: Option<CollectError>,
    /// Whether a predicate query skipped the main query.
    pub predicate_skipped: bool,
    /// Rows dropped because their label set repeated an earlier row's.
    pub duplicate_rows: usize,
    /// GAUGE and COUNTER values emitted as NaN because they were no number (text such as
    /// `hello` or `1e400`, or a type without a numeric value).
    pub not_a_number: usize,
    /// When the execution started.
    pub started: Instant,
    /// How long it took.
    pub duration: Duration,
}

impl Outcome {
    /// Samples in the result.
    pub fn sample_count(&self) -> usize {
        self.families.iter().map(|f| f.samples).sum()
    }

    /// Whether this result counts as an error of the collector: it failed, dropped rows with
    /// a duplicate label set, or emitted values that were no number.
    pub fn has_errors(&self) -> bool {
        self.error.is_some() || self.duplicate_rows > 0 || self.not_a_number > 0
    }

    /// The outcome of an execution that failed with `error` before producing anything.
    pub(crate) fn failed(started: Instant, error: CollectError) -> Outcome {
        Outcome {
            families: Vec::new(),
            error: Some(error),
            predicate_skipped: false,
            duplicate_rows: 0,
            not_a_number: 0,
            started,
            duration: started.elapsed(),
        }
    }
}

/// Runs `collector` on `conn`: predicates first (each possibly cached in `predicate_cache`),
/// then the query, all within the collector's timeout.
pub async fn execute(
    collector: &CollectorConfig,
    conn: &DbConnection,
    const_labels: &[(String, String)],
    predicate_cache: &PredicateCache,
) -> Outcome {
    let started = Instant::now();
    let deadline = collector.timeout.map(|t| started + t);
    for predicate in &collector.predicate_queries {
        let passed = match predicate_cache.get(&collector.branch, &predicate.name) {
            Some(passed) => passed,
            None => {
                let result = match conn.query(&predicate.query, deadline).await {
                    Ok(r) => r,
                    Err(e) => return Outcome::failed(started, e.into()),
                };
                let passed = match predicate_outcome(&predicate.name, &result) {
                    Ok(p) => p,
                    Err(e) => return Outcome::failed(started, e),
                };
                if !predicate.ttl.is_zero() {
                    predicate_cache.put(&collector.branch, &predicate.name, passed, predicate.ttl);
                }
                passed
            }
        };
        if !passed {
            return Outcome {
                families: Vec::new(),
                error: None,
                predicate_skipped: true,
                duplicate_rows: 0,
                not_a_number: 0,
                started,
                duration: started.elapsed(),
            };
        }
    }
    let result = match conn.query(&collector.query, deadline).await {
        Ok(r) => r,
        Err(e) => return Outcome::failed(started, e.into()),
    };
    match render(collector, &result, const_labels) {
        Ok(Rendered {
            families,
            duplicate_rows,
            not_a_number,
        }) => Outcome {
            families,
            error: None,
            predicate_skipped: false,
            duplicate_rows,
            not_a_number,
            started,
            duration: started.elapsed(),
        },
        Err(e) => Outcome::failed(started, e),
    }
}

/// A predicate passes on one row with a true boolean; false, NULL or no row skip; anything
/// else is an error.
fn predicate_outcome(name: &str, result: &ResultSet) -> Result<bool, CollectError> {
    let bad = |reason: String| CollectError::Predicate {
        name: name.to_owned(),
        reason,
    };
    // The extended protocol only describes columns along with rows: no row means skip.
    if result.rows.is_empty() {
        return Ok(false);
    }
    if result.columns.len() != 1 {
        return Err(bad(format!(
            "returned {} columns, expected 1",
            result.columns.len()
        )));
    }
    match result.rows.as_slice() {
        [] => Ok(false),
        [row] => match &row[0] {
            Value::Bool(b) => Ok(*b),
            Value::Null => Ok(false),
            other => Err(bad(format!("returned {other:?}, expected a boolean"))),
        },
        rows => Err(bad(format!(
            "returned {} rows, expected at most 1",
            rows.len()
        ))),
    }
}

/// Outcomes of predicate queries that have their own TTL.
#[derive(Debug, Default)]
pub struct PredicateCache {
    entries: std::sync::Mutex<BTreeMap<(String, String), (bool, Instant)>>,
}

impl PredicateCache {
    fn get(&self, branch: &str, predicate: &str) -> Option<bool> {
        let entries = self.entries.lock().expect("predicate cache lock");
        entries
            .get(&(branch.to_owned(), predicate.to_owned()))
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(passed, _)| *passed)
    }

    fn put(&self, branch: &str, predicate: &str, passed: bool, ttl: Duration) {
        self.entries.lock().expect("predicate cache lock").insert(
            (branch.to_owned(), predicate.to_owned()),
            (passed, Instant::now() + ttl),
        );
    }

    /// Forgets every cached outcome (after a re-plan or reload).
    pub fn clear(&self) {
        self.entries.lock().expect("predicate cache lock").clear();
    }
}

/// The families of one result, with what was wrong in its rows.
#[derive(Debug, Default)]
struct Rendered {
    families: Vec<FamilyOutput>,
    duplicate_rows: usize,
    not_a_number: usize,
}

/// `(collector branch, column)` pairs whose values were no number, so that each is logged
/// once, not at every scrape (bounded by the columns ever configured).
static NOT_A_NUMBER_LOGGED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Logs, once per collector and column, that a value was no number and became NaN.
fn log_not_a_number(collector: &CollectorConfig, column: &Column, problem: &NotANumber) {
    let first = NOT_A_NUMBER_LOGGED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((collector.branch.clone(), column.column.clone()));
    if first {
        warn!(
            collector = %collector.branch,
            source = %collector.source,
            column = %column.column,
            usage = %column.usage,
            problem = %problem,
            "A value column holds a value that is no number: emitted as NaN and counted as an \
             error of the collector in exporter_query_scrape_error_count (logged once per \
             collector and column)."
        );
    }
}

/// Converts rows to rendered families. Rows whose label set repeats an earlier row's are
/// dropped and counted, so one bad row never fails the scrape; values that are no number are
/// NaN, counted.
fn render(
    collector: &CollectorConfig,
    result: &ResultSet,
    const_labels: &[(String, String)],
) -> Result<Rendered, CollectError> {
    // Column names arrive with the rows: an empty result has nothing to check or render.
    if result.rows.is_empty() {
        return Ok(Rendered::default());
    }
    let find = |c: &Column| result.columns.iter().position(|name| *name == c.column);
    let mut label_names: Vec<&str> = Vec::new();
    let mut label_idx = Vec::new();
    for c in collector.columns.iter().filter(|c| c.usage == Usage::Label) {
        let idx = find(c).ok_or_else(|| CollectError::MissingColumn(c.column.clone()))?;
        label_names.push(c.output_name());
        label_idx.push(idx);
    }

    struct Family<'a> {
        column: &'a Column,
        idx: usize,
        out: FamilyOutput,
    }
    let mut families: Vec<Family<'_>> = Vec::new();
    let mut histograms: Vec<(&Column, usize)> = Vec::new();
    for c in &collector.columns {
        let kind = match c.usage {
            Usage::Gauge => MetricType::Gauge,
            Usage::Counter => MetricType::Counter,
            Usage::Histogram => {
                let idx = find(c).ok_or_else(|| CollectError::MissingColumn(c.column.clone()))?;
                histograms.push((c, idx));
                continue;
            }
            Usage::Label | Usage::Discard => continue,
        };
        let Some(idx) = find(c) else {
            warn!(collector = %collector.branch, column = %c.column, "Value column missing from the result; skipped.");
            continue;
        };
        families.push(Family {
            column: c,
            idx,
            out: FamilyOutput {
                name: collector.metric_name(c).into(),
                help: c.description.as_str().into(),
                kind,
                lines: String::new(),
                samples: 0,
            },
        });
    }

    let mut seen: HashSet<Vec<String>> = HashSet::with_capacity(result.rows.len());
    let mut duplicates = 0;
    let mut not_a_number = 0;
    // Histogram observations grouped by label tuple, in first-seen order.
    let mut observations: Vec<BTreeMap<Vec<String>, Vec<f64>>> =
        vec![BTreeMap::new(); histograms.len()];
    for row in &result.rows {
        let labels: Vec<String> = label_idx.iter().map(|&i| row[i].to_label()).collect();
        if !histograms.is_empty() {
            for (h, (column, idx)) in histograms.iter().enumerate() {
                let v = &row[*idx];
                if matches!(v, Value::Null) && column.default.is_none() {
                    continue;
                }
                let obs = v
                    .to_metric(column.scale, column.default)
                    .unwrap_or(f64::NAN);
                if !obs.is_finite() {
                    return Err(CollectError::NonFiniteObservation(column.column.clone()));
                }
                observations[h].entry(labels.clone()).or_default().push(obs);
            }
        }
        if families.is_empty() {
            continue;
        }
        if !seen.insert(labels.clone()) {
            duplicates += 1;
            continue;
        }
        for fam in &mut families {
            let value = row[fam.idx]
                .to_metric(fam.column.scale, fam.column.default)
                .unwrap_or_else(|problem| {
                    not_a_number += 1;
                    log_not_a_number(collector, fam.column, &problem);
                    f64::NAN
                });
            let pairs = label_names
                .iter()
                .copied()
                .zip(labels.iter().map(String::as_str))
                .chain(const_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            write_sample(&mut fam.out.lines, &fam.out.name, "", pairs, value);
            fam.out.samples += 1;
        }
    }
    if duplicates > 0 {
        warn!(collector = %collector.branch, rows = duplicates, "Rows with a duplicate label set dropped.");
    }
    let mut out: Vec<FamilyOutput> = families.into_iter().map(|f| f.out).collect();
    for ((column, _), groups) in histograms.iter().zip(observations) {
        out.extend(render_histogram(
            collector,
            column,
            &label_names,
            groups,
            const_labels,
        ));
    }
    Ok(Rendered {
        families: out,
        duplicate_rows: duplicates,
        not_a_number,
    })
}

/// A snapshot histogram as upstream emits it: three gauge families `_bucket` (cumulative,
/// `le` last), `_count` and `_sum`.
fn render_histogram(
    collector: &CollectorConfig,
    column: &Column,
    label_names: &[&str],
    groups: BTreeMap<Vec<String>, Vec<f64>>,
    const_labels: &[(String, String)],
) -> [FamilyOutput; 3] {
    let base = collector.metric_name(column);
    let family = |suffix: &str, what: &str| FamilyOutput {
        name: format!("{base}{suffix}").into(),
        help: format!("{} ({what})", column.description).into(),
        kind: MetricType::Gauge,
        lines: String::new(),
        samples: 0,
    };
    let mut bucket = family("_bucket", "cumulative bucket");
    let mut count = family("_count", "observation count");
    let mut sum = family("_sum", "observation sum");
    let bounds: Vec<String> = column
        .buckets
        .iter()
        .map(|b| crate::value::go_format_float(*b))
        .chain(std::iter::once("+Inf".to_owned()))
        .collect();
    for (labels, values) in groups {
        let base_pairs = || {
            label_names
                .iter()
                .copied()
                .zip(labels.iter().map(String::as_str))
        };
        let consts = || const_labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (i, le) in bounds.iter().enumerate() {
            let cumulative = match column.buckets.get(i) {
                Some(bound) => values.iter().filter(|v| **v <= *bound).count(),
                None => values.len(),
            };
            let pairs = base_pairs()
                .chain(std::iter::once(("le", le.as_str())))
                .chain(consts());
            write_sample(
                &mut bucket.lines,
                &bucket.name,
                "",
                pairs,
                cumulative as f64,
            );
            bucket.samples += 1;
        }
        write_sample(
            &mut count.lines,
            &count.name,
            "",
            base_pairs().chain(consts()),
            values.len() as f64,
        );
        count.samples += 1;
        write_sample(
            &mut sum.lines,
            &sum.name,
            "",
            base_pairs().chain(consts()),
            values.iter().sum(),
        );
        sum.samples += 1;
    }
    [bucket, count, sum]
}
