//! One real execution of a collector: its predicate queries, its query under the collector's
//! timeout (cancelled on the server when it expires), and the conversion of the rows into
//! samples (a label set per row, a value per family and row), published whole or not at all.
//!
//! [`execute`] returns an [`Outcome`]; the TTL cache in [`crate::server`] keeps it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_kit::exposition::{MetricType, write_labels, write_sample_with_labels};
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

/// The label sets of one result's samples, each rendered once as a sample line holds it
/// between its braces (`k="v",…`, constant labels last; empty without labels) and shared by
/// the families of the result: a row's labels are written once, not once per value column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSets {
    text: String,
    ends: Vec<usize>,
}

impl LabelSets {
    /// Number of label sets.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The label set at `index`, as written between a sample's braces.
    pub fn get(&self, index: usize) -> &str {
        let start = index.checked_sub(1).map_or(0, |i| self.ends[i]);
        &self.text[start..self.ends[index]]
    }

    /// Appends a label set.
    fn push<'l>(&mut self, labels: impl IntoIterator<Item = (&'l str, &'l str)>) {
        write_labels(&mut self.text, labels);
        self.ends.push(self.text.len());
    }

    /// Keeps the label sets whose index `keep` allows.
    fn retain(&mut self, keep: &[bool]) {
        let mut kept = LabelSets::default();
        for (i, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
            kept.text.push_str(self.get(i));
            kept.ends.push(kept.text.len());
        }
        *self = kept;
    }

    fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// The samples of one metric family produced by one collector: a value per label set,
/// rendered into the text format when the scrape writes them (without the `# HELP`/`# TYPE`
/// header, which the scrape writes once per family).
#[derive(Debug, Clone)]
pub struct FamilyOutput {
    /// Full metric name.
    pub name: Arc<str>,
    /// HELP text.
    pub help: Arc<str>,
    /// TYPE.
    pub kind: MetricType,
    /// The label sets of the samples, shared with the other families of the result.
    pub labels: Arc<LabelSets>,
    /// One value per label set (empty in the summary kept after the execution).
    pub values: Vec<f64>,
    /// Number of samples.
    pub samples: usize,
}

impl FamilyOutput {
    /// Appends the sample at `index` as a line of the text format.
    pub fn write_sample(&self, index: usize, out: &mut String) {
        write_sample_with_labels(out, &self.name, self.labels.get(index), self.values[index]);
    }
}

/// The result of one real execution, kept in the TTL cache until it expires.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its families; empty on error or when a predicate skipped the query.
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
/// then the query, each within the collector's timeout (counted from when it is sent).
pub async fn execute(
    collector: &CollectorConfig,
    conn: &DbConnection,
    const_labels: &[(String, String)],
    predicate_cache: &PredicateCache,
) -> Outcome {
    let started = Instant::now();
    for predicate in &collector.predicate_queries {
        let passed = match predicate_cache.get(&collector.branch, &predicate.name) {
            Some(passed) => passed,
            None => {
                let result = match conn.query(&predicate.query, collector.timeout).await {
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
    let result = match conn.query(&collector.query, collector.timeout).await {
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

/// Converts rows to families. Rows whose label set repeats an earlier row's are dropped and
/// counted, so one bad row never fails the scrape; values that are no number are NaN,
/// counted.
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
        name: Arc<str>,
        help: Arc<str>,
        kind: MetricType,
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
            name: collector.metric_name(c).into(),
            help: c.description.as_str().into(),
            kind,
        });
    }
    // Histogram observations grouped by label tuple, in the tuples' order.
    let mut observations: Vec<BTreeMap<Vec<String>, Vec<f64>>> =
        vec![BTreeMap::new(); histograms.len()];
    for row in &result.rows {
        if histograms.is_empty() {
            break;
        }
        let labels: Vec<String> = label_idx.iter().map(|&i| row[i].to_label()).collect();
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

    let mut out: Vec<FamilyOutput> = Vec::with_capacity(families.len() + 3 * histograms.len());
    let mut duplicates = 0;
    let mut not_a_number = 0;
    if !families.is_empty() {
        // Every row's label set, rendered once for all the families.
        let mut sets = LabelSets::default();
        for row in &result.rows {
            let values: Vec<Cow<'_, str>> = label_idx.iter().map(|&i| row[i].label()).collect();
            sets.push(
                label_names
                    .iter()
                    .copied()
                    .zip(values.iter().map(|v| &**v))
                    .chain(const_labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            );
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity(sets.len());
        let keep: Vec<bool> = (0..sets.len()).map(|i| seen.insert(sets.get(i))).collect();
        drop(seen);
        duplicates = keep.iter().filter(|k| !**k).count();
        if duplicates > 0 {
            warn!(collector = %collector.branch, rows = duplicates, "Rows with a duplicate label set dropped.");
            sets.retain(&keep);
        }
        sets.shrink_to_fit();
        let sets = Arc::new(sets);
        for fam in families {
            let mut values = Vec::with_capacity(sets.len());
            for (row, _) in result.rows.iter().zip(&keep).filter(|(_, k)| **k) {
                values.push(
                    row[fam.idx]
                        .to_metric(fam.column.scale, fam.column.default)
                        .unwrap_or_else(|problem| {
                            not_a_number += 1;
                            log_not_a_number(collector, fam.column, &problem);
                            f64::NAN
                        }),
                );
            }
            out.push(FamilyOutput {
                name: fam.name,
                help: fam.help,
                kind: fam.kind,
                labels: sets.clone(),
                samples: values.len(),
                values,
            });
        }
    }
    for ((column, _), groups) in histograms.iter().zip(observations) {
        out.extend(render_histogram(
            collector,
            column,
            &label_names,
            &groups,
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
/// `le` last before the constant labels), `_count` and `_sum`.
fn render_histogram(
    collector: &CollectorConfig,
    column: &Column,
    label_names: &[&str],
    groups: &BTreeMap<Vec<String>, Vec<f64>>,
    const_labels: &[(String, String)],
) -> [FamilyOutput; 3] {
    let bounds: Vec<String> = column
        .buckets
        .iter()
        .map(|b| crate::value::go_format_float(*b))
        .chain(std::iter::once("+Inf".to_owned()))
        .collect();
    let consts = || const_labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut bucket_sets = LabelSets::default();
    let mut buckets = Vec::with_capacity(groups.len() * bounds.len());
    let mut sets = LabelSets::default();
    let (mut counts, mut sums) = (Vec::new(), Vec::new());
    for (labels, values) in groups {
        let base = || {
            label_names
                .iter()
                .copied()
                .zip(labels.iter().map(String::as_str))
        };
        for (i, le) in bounds.iter().enumerate() {
            let cumulative = match column.buckets.get(i) {
                Some(bound) => values.iter().filter(|v| **v <= *bound).count(),
                None => values.len(),
            };
            bucket_sets.push(
                base()
                    .chain(std::iter::once(("le", le.as_str())))
                    .chain(consts()),
            );
            buckets.push(cumulative as f64);
        }
        sets.push(base().chain(consts()));
        counts.push(values.len() as f64);
        sums.push(values.iter().sum());
    }
    let base = collector.metric_name(column);
    let (bucket_sets, sets) = (Arc::new(bucket_sets), Arc::new(sets));
    let family =
        |suffix: &str, what: &str, labels: &Arc<LabelSets>, values: Vec<f64>| FamilyOutput {
            name: format!("{base}{suffix}").into(),
            help: format!("{} ({what})", column.description).into(),
            kind: MetricType::Gauge,
            labels: labels.clone(),
            samples: values.len(),
            values,
        };
    [
        family("_bucket", "cumulative bucket", &bucket_sets, buckets),
        family("_count", "observation count", &sets, counts),
        family("_sum", "observation sum", &sets, sums),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The family's samples as lines of the text format.
    fn lines(family: &FamilyOutput) -> String {
        let mut out = String::new();
        for i in 0..family.values.len() {
            family.write_sample(i, &mut out);
        }
        out
    }

    /// A collector with text, integer, float, boolean and NULL labels, scaled and defaulted
    /// values, a value that is no number, a duplicate label set and a histogram, rendered with a
    /// constant label, as the text format writes it (headers left to the scrape).
    #[test]
    fn rows_render_as_upstream() {
        let yaml = r#"
t:
  name: t
  query: SELECT 1
  metrics:
    - name:  { usage: LABEL, description: n }
    - id:    { usage: LABEL, description: i }
    - f:     { usage: LABEL, rename: ratio, description: f }
    - flag:  { usage: LABEL, description: b }
    - gone:  { usage: DISCARD, description: d }
    - v:     { usage: GAUGE, scale: 1e-3, description: "value in s" }
    - c:     { usage: COUNTER, default: 7, description: "a counter" }
    - h:     { usage: HISTOGRAM, bucket: [1, 2.5], description: "observations" }
"#;
        let config = &crate::config::parse_str(yaml, "t.yml").unwrap()[0];
        let text = |s: &str| Value::Text(s.to_owned());
        let result = ResultSet {
            columns: ["name", "id", "f", "flag", "gone", "v", "c", "h"]
                .map(str::to_owned)
                .to_vec(),
            rows: vec![
                vec![
                    text("a\"b\\c\nd"),
                    Value::Int(1),
                    Value::Float(0.5),
                    Value::Bool(true),
                    Value::Null,
                    Value::Int(1500),
                    Value::Int(3),
                    Value::Float(0.5),
                ],
                vec![
                    text("x"),
                    Value::Int(-2),
                    Value::Float(1e21),
                    Value::Bool(false),
                    Value::Null,
                    text("hello"),
                    Value::Null,
                    Value::Float(2.0),
                ],
                vec![
                    text("a\"b\\c\nd"),
                    Value::Int(1),
                    Value::Float(0.5),
                    Value::Bool(true),
                    Value::Null,
                    Value::Int(9),
                    Value::Int(9),
                    Value::Float(3.0),
                ],
                vec![
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Float(f64::INFINITY),
                    Value::Float(1.25e-7),
                    Value::Null,
                ],
                vec![
                    text("0"),
                    Value::Int(0),
                    Value::Float(-0.0),
                    Value::Bool(false),
                    Value::Null,
                    Value::Float(0.1),
                    Value::Int(0),
                    Value::Int(1),
                ],
            ],
        };
        let consts = vec![("cls".to_owned(), "pg-\"test\"".to_owned())];
        let rendered = render(config, &result, &consts).unwrap();
        let mut out = String::new();
        for family in &rendered.families {
            out.push_str(&format!(
                "# {} {:?} {} {}\n",
                family.name,
                &*family.help,
                family.kind.as_str(),
                family.samples
            ));
            out.push_str(&lines(family));
        }
        // As rendered before label sets were shared by the families (commit d14206e).
        let want = r#"# t_v "value in s" gauge 4
t_v{name="a\"b\\c\nd",id="1",ratio="0.5",flag="true",cls="pg-\"test\""} 1.5
t_v{name="x",id="-2",ratio="1e+21",flag="false",cls="pg-\"test\""} NaN
t_v{name="",id="",ratio="",flag="",cls="pg-\"test\""} +Inf
t_v{name="0",id="0",ratio="-0",flag="false",cls="pg-\"test\""} 0.0001
# t_c "a counter" counter 4
t_c{name="a\"b\\c\nd",id="1",ratio="0.5",flag="true",cls="pg-\"test\""} 3
t_c{name="x",id="-2",ratio="1e+21",flag="false",cls="pg-\"test\""} 7
t_c{name="",id="",ratio="",flag="",cls="pg-\"test\""} 1.25e-7
t_c{name="0",id="0",ratio="-0",flag="false",cls="pg-\"test\""} 0
# t_h_bucket "observations (cumulative bucket)" gauge 9
t_h_bucket{name="0",id="0",ratio="-0",flag="false",le="1",cls="pg-\"test\""} 1
t_h_bucket{name="0",id="0",ratio="-0",flag="false",le="2.5",cls="pg-\"test\""} 1
t_h_bucket{name="0",id="0",ratio="-0",flag="false",le="+Inf",cls="pg-\"test\""} 1
t_h_bucket{name="a\"b\\c\nd",id="1",ratio="0.5",flag="true",le="1",cls="pg-\"test\""} 1
t_h_bucket{name="a\"b\\c\nd",id="1",ratio="0.5",flag="true",le="2.5",cls="pg-\"test\""} 1
t_h_bucket{name="a\"b\\c\nd",id="1",ratio="0.5",flag="true",le="+Inf",cls="pg-\"test\""} 2
t_h_bucket{name="x",id="-2",ratio="1e+21",flag="false",le="1",cls="pg-\"test\""} 0
t_h_bucket{name="x",id="-2",ratio="1e+21",flag="false",le="2.5",cls="pg-\"test\""} 1
t_h_bucket{name="x",id="-2",ratio="1e+21",flag="false",le="+Inf",cls="pg-\"test\""} 1
# t_h_count "observations (observation count)" gauge 3
t_h_count{name="0",id="0",ratio="-0",flag="false",cls="pg-\"test\""} 1
t_h_count{name="a\"b\\c\nd",id="1",ratio="0.5",flag="true",cls="pg-\"test\""} 2
t_h_count{name="x",id="-2",ratio="1e+21",flag="false",cls="pg-\"test\""} 1
# t_h_sum "observations (observation sum)" gauge 3
t_h_sum{name="0",id="0",ratio="-0",flag="false",cls="pg-\"test\""} 1
t_h_sum{name="a\"b\\c\nd",id="1",ratio="0.5",flag="true",cls="pg-\"test\""} 3.5
t_h_sum{name="x",id="-2",ratio="1e+21",flag="false",cls="pg-\"test\""} 2
"#;
        assert_eq!(out, want);
        assert_eq!((rendered.duplicate_rows, rendered.not_a_number), (1, 1));
        // The value families share one set of labels.
        assert!(Arc::ptr_eq(
            &rendered.families[0].labels,
            &rendered.families[1].labels
        ));

        // Without labels: no braces.
        let yaml = "u:\n  name: u\n  query: SELECT 1\n  metrics:\n    - x: { usage: GAUGE, description: x }\n";
        let config = &crate::config::parse_str(yaml, "u.yml").unwrap()[0];
        let result = ResultSet {
            columns: vec!["x".to_owned()],
            rows: vec![vec![Value::Int(2)]],
        };
        let rendered = render(config, &result, &[]).unwrap();
        assert_eq!(lines(&rendered.families[0]), "u_x 2\n");
    }
}
