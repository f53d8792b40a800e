//! The collector YAML config of pg_exporter: model, validation, loading and merging.
//!
//! A config is a YAML mapping whose top-level keys are *branches*; each branch defines one
//! collector (a SQL query plus how to turn its result columns into metrics):
//!
//! ```yaml
//! pg_db_10:                      # branch key, unique across the loaded config
//!   name: pg_db                  # metric namespace, defaults to the branch key
//!   desc: per-database stats
//!   query: SELECT datname, xact_commit FROM pg_stat_database
//!   ttl: 10                      # float seconds, 0 = no caching
//!   timeout: 1                   # float seconds, 0/absent = 100 ms, negative = none
//!   min_version: 100000          # inclusive, 0 = unbounded
//!   max_version: 120000          # exclusive, 0 = unbounded
//!   tags: [cluster]
//!   metrics:
//!     - datname:     { usage: LABEL, description: database name }
//!     - xact_commit: { usage: COUNTER, description: committed transactions }
//! ```
//!
//! A config path is a single file or a directory of `*.yml`/`*.yaml` files merged in lexical
//! file-name order ([`load`]); the built-in default set is merged the same way from embedded
//! texts ([`from_embedded`]). Every error names the file, the line, the branch and the field
//! (`0110-pg.yml:42: branch pg_db_10: metrics[3].xact_commit.usage: unknown usage "GAGE" ...`);
//! list indices in field paths are 0-based.
//!
//! Differences from upstream (yaml.v3) worth knowing:
//! * unknown keys in a branch, a column or a predicate query are **rejected** with the key
//!   name (upstream silently ignores them, so a typo like `ttll` would go unnoticed);
//! * numbers may also be written as strings (`scale: "1e-6"`, `min_version: "090600"`) and
//!   booleans as `yes`/`no`/`on`/`off`; versions with leading zeros are always decimal;
//! * `bucket` on a non-HISTOGRAM column and a non-finite `scale` are errors.

mod explain;
mod load;
mod locate;
mod parse;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use load::{
    CONFIG_ENV, DEFAULT_CONFIG_CANDIDATES, EMBEDDED_SOURCE, fingerprint, from_embedded,
    is_config_file_name, load, resolve_config_path, resolve_config_path_from,
};
pub use parse::parse_str;

/// The timeout a branch gets when its YAML `timeout` is absent or 0.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// One branch (top-level key) of a collector config.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorConfig {
    /// The top-level key, unique across the loaded config.
    pub branch: String,
    /// Metric namespace (prefix of every metric name); defaults to the branch key.
    pub name: String,
    /// Free text shown in explain output.
    pub desc: String,
    /// The SQL (or PgBouncer `SHOW` command), executed as-is.
    pub query: String,
    /// Result cache lifetime; zero means no caching.
    pub ttl: Duration,
    /// Limit for predicate queries plus main query together; `None` means no limit.
    /// YAML `0`/absent becomes [`DEFAULT_TIMEOUT`], a negative value becomes `None`.
    pub timeout: Option<Duration>,
    /// Execution order (ascending). A YAML `0` is assigned `100 + ordinal of the loaded file`
    /// in directory mode and stays 0 in single-file mode.
    pub priority: i64,
    /// Inclusive lower bound on the server version number; 0 means unbounded.
    pub min_version: u32,
    /// Exclusive upper bound on the server version number; 0 means unbounded.
    pub max_version: u32,
    /// A failure of this collector fails the whole scrape.
    pub fatal: bool,
    /// Never install this collector.
    pub skip: bool,
    /// Planning constraints (`cluster`, `primary`, `extension:<x>`, `not:<t>`, ...).
    pub tags: Vec<String>,
    /// Queries that must all return true before the main query runs.
    pub predicate_queries: Vec<PredicateQuery>,
    /// Result column definitions, in YAML order.
    pub columns: Vec<Column>,
    /// File name the branch came from (for explain output and errors).
    pub source: String,
    /// 1-based line of the branch key in that file (0 if unknown).
    pub line: usize,
}

/// A query returning a single boolean that gates the main query of a branch.
#[derive(Debug, Clone, PartialEq)]
pub struct PredicateQuery {
    /// Name used in logs and metrics (may be empty).
    pub name: String,
    /// The SQL (YAML key `predicate_query`).
    pub query: String,
    /// How long the outcome is cached; zero means not cached.
    pub ttl: Duration,
}

/// One result column definition (an entry of `metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The map key of the entry in `metrics`.
    pub key: String,
    /// The result column to read: the `name` override, or the key.
    pub column: String,
    /// How the column is used.
    pub usage: Usage,
    /// Alternative output name: the label name for LABEL, the metric suffix for value columns.
    pub rename: Option<String>,
    /// HELP text of the metric.
    pub description: String,
    /// Factor every value is multiplied by.
    pub scale: Option<f64>,
    /// Value used when the SQL value is NULL (then multiplied by `scale`).
    pub default: Option<f64>,
    /// Histogram bucket upper bounds (finite, strictly increasing); HISTOGRAM only.
    pub buckets: Vec<f64>,
}

/// How a result column is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// Ignored.
    Discard,
    /// A label on every metric of the branch.
    Label,
    /// A gauge metric.
    Gauge,
    /// A counter metric.
    Counter,
    /// A snapshot histogram (`_bucket`, `_count`, `_sum` gauge families).
    Histogram,
}

impl Usage {
    /// Every usage, in the order they are listed in error messages.
    pub const ALL: [Usage; 5] = [
        Usage::Discard,
        Usage::Label,
        Usage::Gauge,
        Usage::Counter,
        Usage::Histogram,
    ];

    /// The upper-case YAML spelling (`GAUGE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Discard => "DISCARD",
            Usage::Label => "LABEL",
            Usage::Gauge => "GAUGE",
            Usage::Counter => "COUNTER",
            Usage::Histogram => "HISTOGRAM",
        }
    }

    /// Parses a YAML usage, case-insensitively; `None` if unknown.
    pub fn parse(text: &str) -> Option<Usage> {
        Usage::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(text))
    }

    /// True for the usages that produce samples (GAUGE, COUNTER, HISTOGRAM).
    pub fn is_value(self) -> bool {
        matches!(self, Usage::Gauge | Usage::Counter | Usage::Histogram)
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Column {
    /// The output name: the label name (LABEL) or the metric suffix (value columns).
    ///
    /// It is `rename` if set, else the result column name (`name` override, else the key),
    /// as upstream does.
    pub fn output_name(&self) -> &str {
        self.rename.as_deref().unwrap_or(&self.column)
    }
}

impl CollectorConfig {
    /// The LABEL columns' output names, in YAML order (a histogram's `le` is not included).
    pub fn label_names(&self) -> Vec<&str> {
        self.label_columns().map(Column::output_name).collect()
    }

    /// The LABEL columns, in YAML order.
    pub fn label_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.usage == Usage::Label)
    }

    /// The GAUGE, COUNTER and HISTOGRAM columns, in YAML order.
    pub fn value_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.usage.is_value())
    }

    /// The full metric name of a column: `<name>_<output_name>` (a histogram's base name).
    pub fn metric_name(&self, column: &Column) -> String {
        format!("{}_{}", self.name, column.output_name())
    }

    /// True if the branch carries exactly this tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// True if the branch contains a HISTOGRAM column.
    pub fn has_histogram(&self) -> bool {
        self.columns.iter().any(|c| c.usage == Usage::Histogram)
    }

    /// Human-readable description (SYNOPSIS, DESCRIPTION, OPTIONS, METRICS) followed by the
    /// branch re-serialized as YAML, as printed by `/explain`, `--explain` and `--dry-run`.
    pub fn explain(&self) -> String {
        explain::explain(self)
    }

    /// The branch re-serialized as a one-key YAML document (`<branch>: {...}`).
    pub fn to_yaml(&self) -> String {
        explain::branch_yaml(self)
    }
}

/// A loaded, merged config.
#[derive(Debug)]
pub struct CollectorSet {
    /// The collectors, sorted by `(priority, branch)`.
    pub collectors: Vec<Arc<CollectorConfig>>,
    /// Directory mode at start-up ([`LoadMode::Lenient`]): files skipped because invalid.
    pub skipped_files: Vec<ConfigError>,
    /// The file or directory loaded ([`EMBEDDED_SOURCE`] for the built-in set).
    pub source: PathBuf,
}

impl CollectorSet {
    /// Builds a set from already validated collectors, sorting them by `(priority, branch)`.
    pub fn from_collectors(source: impl Into<PathBuf>, collectors: Vec<CollectorConfig>) -> Self {
        let mut collectors: Vec<_> = collectors.into_iter().map(Arc::new).collect();
        collectors.sort_by(|a, b| (a.priority, &a.branch).cmp(&(b.priority, &b.branch)));
        CollectorSet {
            collectors,
            skipped_files: Vec::new(),
            source: source.into(),
        }
    }

    /// Number of collectors.
    pub fn len(&self) -> usize {
        self.collectors.len()
    }

    /// True if the set holds no collector.
    pub fn is_empty(&self) -> bool {
        self.collectors.is_empty()
    }

    /// The collector of a branch key.
    pub fn get(&self, branch: &str) -> Option<&Arc<CollectorConfig>> {
        self.collectors.iter().find(|c| c.branch == branch)
    }

    /// The merged set re-serialized as one YAML document (for `--dry-run` printing); parsing
    /// it back with [`parse_str`] yields the same collectors (apart from `source`/`line`).
    pub fn merged_yaml(&self) -> String {
        explain::merged_yaml(self)
    }

    /// Every collector's [`CollectorConfig::explain`] text, in set order (for `--dry-run`).
    pub fn explain(&self) -> String {
        self.collectors
            .iter()
            .map(|c| c.explain())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// How [`load`] treats invalid files in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Start-up, as upstream: an invalid file in a directory is skipped with a warning and
    /// recorded in [`CollectorSet::skipped_files`]; the load fails only if files failed and
    /// no branch at all could be loaded.
    Lenient,
    /// Reload and dry-run: any invalid file fails the whole load.
    Strict,
}

/// A config loading or validation error; the message names file, line, branch and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML (or has duplicate keys).
    #[error("{}YAML syntax error: {message}", location(file, *line, *column))]
    Syntax {
        /// File name.
        file: String,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The document as a whole is malformed (not a mapping of branches, bad branch key).
    #[error("{}{message}", location(file, *line, 0))]
    Document {
        /// File name.
        file: String,
        /// 1-based line (0 if unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A branch fails validation.
    #[error("{}branch {branch}: {}{message}", location(file, *line, 0), field_prefix(field))]
    Invalid {
        /// File name.
        file: String,
        /// 1-based line of the offending field, else of the branch key (0 if unknown).
        line: usize,
        /// Branch key.
        branch: String,
        /// Path of the field within the branch, e.g. `metrics[3].xact_commit.usage`
        /// (0-based indices); empty when the branch as a whole is at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The config defines no collector (an empty or comment-only file, or a directory without
    /// a collector branch in any `*.yml`/`*.yaml` file) and that was not allowed.
    #[error(
        "{}: {}; refusing to run with no collector (pass --allow-empty-config, or set \
         PG_EXPORTER_ALLOW_EMPTY_CONFIG=true, to serve only the exporter's own metrics)",
        path.display(),
        if *directory { "no *.yml or *.yaml file in this directory defines a collector" }
        else { "the file defines no collector" }
    )]
    Empty {
        /// The file or directory.
        path: PathBuf,
        /// Whether `path` is a directory.
        directory: bool,
    },
    /// Lenient directory load: every file that defines something failed, nothing was loaded.
    #[error(
        "{}: no collector branch could be loaded, {} config file(s) invalid: {}",
        path.display(),
        skipped.len(),
        join_errors(skipped)
    )]
    NoValidBranch {
        /// The directory.
        path: PathBuf,
        /// The errors of the skipped files.
        skipped: Vec<ConfigError>,
    },
}

impl ConfigError {
    /// The file (name) the error is about, if any.
    pub fn file(&self) -> Option<&str> {
        match self {
            ConfigError::Syntax { file, .. }
            | ConfigError::Document { file, .. }
            | ConfigError::Invalid { file, .. } => Some(file),
            ConfigError::Io { .. }
            | ConfigError::NoValidBranch { .. }
            | ConfigError::Empty { .. } => None,
        }
    }

    /// The 1-based line the error is about, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. }
            | ConfigError::Document { line, .. }
            | ConfigError::Invalid { line, .. } => Some(*line).filter(|l| *l > 0),
            ConfigError::Io { .. }
            | ConfigError::NoValidBranch { .. }
            | ConfigError::Empty { .. } => None,
        }
    }

    /// The branch the error is about, if any.
    pub fn branch(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { branch, .. } => Some(branch),
            _ => None,
        }
    }

    /// The field path the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } if !field.is_empty() => Some(field),
            _ => None,
        }
    }

    /// The path of an I/O error, of a directory without any valid branch, or of an empty
    /// config.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigError::Io { path, .. }
            | ConfigError::NoValidBranch { path, .. }
            | ConfigError::Empty { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// `file:line:column: `, omitting unknown (0) parts.
fn location(file: &str, line: usize, column: usize) -> String {
    match (line, column) {
        (0, _) => format!("{file}: "),
        (l, 0) => format!("{file}:{l}: "),
        (l, c) => format!("{file}:{l}:{c}: "),
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

fn join_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(key: &str, usage: Usage, rename: Option<&str>) -> Column {
        Column {
            key: key.to_owned(),
            column: key.to_owned(),
            usage,
            rename: rename.map(str::to_owned),
            description: String::new(),
            scale: None,
            default: None,
            buckets: Vec::new(),
        }
    }

    #[test]
    fn usage_parse_is_case_insensitive() {
        assert_eq!(Usage::parse("gauge"), Some(Usage::Gauge));
        assert_eq!(Usage::parse("Counter"), Some(Usage::Counter));
        assert_eq!(Usage::parse("HISTOGRAM"), Some(Usage::Histogram));
        assert_eq!(Usage::parse("label"), Some(Usage::Label));
        assert_eq!(Usage::parse("discard"), Some(Usage::Discard));
        assert_eq!(Usage::parse("GAGE"), None);
        assert_eq!(Usage::parse(""), None);
        assert_eq!(Usage::Counter.to_string(), "COUNTER");
    }

    #[test]
    fn output_name_prefers_rename_then_column() {
        let mut c = column("k", Usage::Gauge, None);
        assert_eq!(c.output_name(), "k");
        c.column = "col".to_owned();
        assert_eq!(c.output_name(), "col");
        c.rename = Some("r".to_owned());
        assert_eq!(c.output_name(), "r");
    }

    #[test]
    fn error_display_omits_unknown_parts() {
        let e = ConfigError::Invalid {
            file: "a.yml".to_owned(),
            line: 0,
            branch: "b".to_owned(),
            field: String::new(),
            message: "m".to_owned(),
        };
        assert_eq!(e.to_string(), "a.yml: branch b: m");
        assert_eq!(e.line(), None);
        assert_eq!(e.field(), None);
        let e = ConfigError::Syntax {
            file: "a.yml".to_owned(),
            line: 3,
            column: 7,
            message: "bad".to_owned(),
        };
        assert_eq!(e.to_string(), "a.yml:3:7: YAML syntax error: bad");
    }

    #[test]
    fn set_is_sorted_by_priority_then_branch() {
        let base = CollectorConfig {
            branch: String::new(),
            name: "n".to_owned(),
            desc: String::new(),
            query: "SELECT 1".to_owned(),
            ttl: Duration::ZERO,
            timeout: Some(DEFAULT_TIMEOUT),
            priority: 0,
            min_version: 0,
            max_version: 0,
            fatal: false,
            skip: false,
            tags: vec!["cluster".to_owned()],
            predicate_queries: Vec::new(),
            columns: vec![
                column("a", Usage::Label, Some("x")),
                column("v", Usage::Gauge, None),
            ],
            source: String::new(),
            line: 0,
        };
        let mk = |branch: &str, priority| CollectorConfig {
            branch: branch.to_owned(),
            priority,
            ..base.clone()
        };
        let set = CollectorSet::from_collectors(
            "x",
            vec![mk("c", 1), mk("b", 2), mk("a", 2), mk("z", 0)],
        );
        let order: Vec<_> = set.collectors.iter().map(|c| c.branch.as_str()).collect();
        assert_eq!(order, ["z", "c", "a", "b"]);
        assert_eq!(set.len(), 4);
        assert!(set.get("a").is_some());
        let c = set.get("c").unwrap();
        assert_eq!(c.label_names(), ["x"]);
        assert_eq!(c.metric_name(&c.columns[1]), "n_v");
        assert!(c.has_tag("cluster"));
        assert!(!c.has_tag("primary"));
        assert!(!c.has_histogram());
    }
}
