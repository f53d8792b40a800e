//! Parsing one file's text into validated [`CollectorConfig`]s.
//!
//! The text is read into a generic YAML value first (syntax errors carry their position),
//! then walked by hand so that every error can name its field path, and so that numbers are
//! read the way upstream's yaml.v3 reads them (leading-zero versions are decimal).

use std::collections::HashMap;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::locate::{Locator, Seg, render};
use super::{CollectorConfig, Column, ConfigError, DEFAULT_TIMEOUT, PredicateQuery, Usage};

/// Keys allowed in a branch.
const BRANCH_KEYS: &[&str] = &[
    "name",
    "desc",
    "query",
    "ttl",
    "timeout",
    "priority",
    "min_version",
    "max_version",
    "fatal",
    "skip",
    "tags",
    "predicate_queries",
    "metrics",
];

/// Keys allowed in a column definition.
const COLUMN_KEYS: &[&str] = &[
    "name",
    "usage",
    "rename",
    "description",
    "scale",
    "default",
    "bucket",
];

/// Keys allowed in a predicate query.
const PREDICATE_KEYS: &[&str] = &["name", "predicate_query", "ttl"];

const USAGE_LIST: &str = "DISCARD, LABEL, GAUGE, COUNTER or HISTOGRAM";

/// Parses and validates one file's branches, in file order.
///
/// `source` is the file name used in errors and stored in [`CollectorConfig::source`].
/// Empty and comment-only texts yield no branch. Priorities are left as written (0 if absent).
pub fn parse_str(text: &str, source: &str) -> Result<Vec<CollectorConfig>, ConfigError> {
    agent_kit::yaml::check_flow_depth(text).map_err(|e| ConfigError::Syntax {
        file: source.to_owned(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    let locator = Locator::new(text);
    let mut doc: Value =
        serde_norway::from_str(text).map_err(|e| syntax_error(source, text, &e, &locator))?;
    doc.apply_merge().map_err(|e| ConfigError::Document {
        file: source.to_owned(),
        line: 0,
        message: format!("invalid merge key (<<): {e}"),
    })?;
    let map = match untag(&doc) {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(map) => map,
        other => {
            return Err(ConfigError::Document {
                file: source.to_owned(),
                line: locator.first_content_line(),
                message: format!(
                    "expected a mapping of branch names to collector definitions, found {}",
                    kind(other)
                ),
            });
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let branch = match scalar_text(key) {
            Some(b) if !b.trim().is_empty() => b,
            _ => {
                return Err(ConfigError::Document {
                    file: source.to_owned(),
                    line: 0,
                    message: format!(
                        "branch keys must be non-empty strings, found {}",
                        describe(key)
                    ),
                });
            }
        };
        let ctx = Ctx {
            file: source,
            branch: &branch,
            locator: &locator,
        };
        out.push(ctx.branch(value)?);
    }
    Ok(out)
}

fn syntax_error(
    file: &str,
    text: &str,
    e: &serde_norway::Error,
    locator: &Locator<'_>,
) -> ConfigError {
    let agent_kit::yaml::YamlError {
        mut line,
        mut column,
        message,
    } = agent_kit::yaml::locate(text, e);
    // The parser reports a duplicate key at the start of its mapping: point at the repeat.
    // The message may be prefixed with the mapping's path (`pg_a: duplicate entry ...`).
    const DUPLICATE: &str = "duplicate entry with key \"";
    if let Some(key) = message
        .find(DUPLICATE)
        .and_then(|i| message[i + DUPLICATE.len()..].strip_suffix('"'))
        .filter(|k| !k.contains('\\'))
        && let Some((l, c)) = locator.duplicate_key(line, column, key)
    {
        (line, column) = (l, c);
    }
    ConfigError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// Strips YAML tags (`!!str x`).
fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        v => v,
    }
}

fn kind(v: &Value) -> &'static str {
    match untag(v) {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `kind`, with the value for scalars.
fn describe(v: &Value) -> String {
    match untag(v) {
        Value::String(s) => format!("the string {s:?}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("the boolean {b}"),
        other => kind(other).to_owned(),
    }
}

/// The text of a scalar, as yaml.v3 would decode it into a Go string.
fn scalar_text(v: &Value) -> Option<String> {
    match untag(v) {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn expected_keys(keys: &[&str]) -> String {
    keys.join(", ")
}

/// Error context of one branch.
struct Ctx<'a> {
    file: &'a str,
    branch: &'a str,
    locator: &'a Locator<'a>,
}

/// A column as parsed, before the cross-column checks.
struct ParsedColumn {
    col: Column,
    index: usize,
}

impl Ctx<'_> {
    fn err(&self, path: &[Seg<'_>], message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: self.locator.locate(self.branch, path),
            branch: self.branch.to_owned(),
            field: render(path),
            message: message.into(),
        }
    }

    /// Iterates a mapping's entries as (string key, value), rejecting unknown keys.
    fn entries<'v>(
        &self,
        path: &[Seg<'_>],
        map: &'v Mapping,
        allowed: &[&str],
        what: &str,
    ) -> Result<Vec<(String, &'v Value)>, ConfigError> {
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Some(key) = scalar_text(k) else {
                return Err(self.err(
                    path,
                    format!("{what} keys must be strings, found {}", kind(k)),
                ));
            };
            if !allowed.contains(&key.as_str()) {
                // Upstream (yaml.v3) silently ignores unknown keys; a typo such as `ttll` or
                // `usgae` would then quietly change behaviour, so we reject them instead.
                let mut p = path.to_vec();
                p.push(Seg::Key(&key));
                return Err(self.err(
                    &p,
                    format!(
                        "unknown key {key:?} in {what} (expected one of: {})",
                        expected_keys(allowed)
                    ),
                ));
            }
            out.push((key, v));
        }
        Ok(out)
    }

    fn branch(&self, value: &Value) -> Result<CollectorConfig, ConfigError> {
        let map = match untag(value) {
            Value::Mapping(m) => m,
            Value::Null => {
                return Err(self.err(
                    &[],
                    "branch is null (expected a mapping with at least `query` and `metrics`)",
                ));
            }
            other => {
                return Err(self.err(
                    &[],
                    format!(
                        "expected a mapping with at least `query` and `metrics`, found {}",
                        kind(other)
                    ),
                ));
            }
        };
        let mut c = CollectorConfig {
            branch: self.branch.to_owned(),
            name: String::new(),
            desc: String::new(),
            query: String::new(),
            ttl: Duration::ZERO,
            timeout: Some(DEFAULT_TIMEOUT),
            priority: 0,
            min_version: 0,
            max_version: 0,
            fatal: false,
            skip: false,
            tags: Vec::new(),
            predicate_queries: Vec::new(),
            columns: Vec::new(),
            source: self.file.to_owned(),
            line: self.locator.branch_line(self.branch),
        };
        let mut metrics = None;
        for (key, v) in self.entries(&[], map, BRANCH_KEYS, "a branch")? {
            let path = [Seg::Key(&key)];
            match key.as_str() {
                "name" => c.name = self.string(&path, v)?,
                "desc" => c.desc = self.string(&path, v)?,
                "query" => c.query = self.string(&path, v)?,
                "ttl" => c.ttl = self.ttl(&path, v)?,
                "timeout" => c.timeout = self.timeout(&path, v)?,
                "priority" => c.priority = self.integer(&path, v)?,
                "min_version" => c.min_version = self.version(&path, v)?,
                "max_version" => c.max_version = self.version(&path, v)?,
                "fatal" => c.fatal = self.boolean(&path, v)?,
                "skip" => c.skip = self.boolean(&path, v)?,
                "tags" => c.tags = self.string_list(&path, v)?,
                "predicate_queries" => c.predicate_queries = self.predicates(v)?,
                "metrics" => metrics = Some(v),
                _ => unreachable!("key checked against BRANCH_KEYS"),
            }
        }
        if c.name.is_empty() {
            c.name = self.branch.to_owned();
        }
        if c.query.trim().is_empty() {
            return Err(self.err(
                &[Seg::Key("query")],
                "query is missing or blank (expected the SQL to run)",
            ));
        }
        if c.min_version != 0 && c.max_version != 0 && c.min_version >= c.max_version {
            tracing::warn!(
                file = self.file,
                branch = self.branch,
                min_version = c.min_version,
                max_version = c.max_version,
                "empty version range [min_version, max_version): the collector never runs"
            );
        }
        let columns = self.columns(metrics)?;
        self.check_columns(&c.name, &columns)?;
        c.columns = columns.into_iter().map(|p| p.col).collect();
        Ok(c)
    }

    fn string(&self, path: &[Seg<'_>], v: &Value) -> Result<String, ConfigError> {
        match untag(v) {
            Value::Null => Ok(String::new()),
            other => scalar_text(other)
                .ok_or_else(|| self.err(path, format!("expected a string, found {}", kind(other)))),
        }
    }

    /// An optional float written as a number or a numeric string.
    fn float(&self, path: &[Seg<'_>], v: &Value) -> Result<Option<f64>, ConfigError> {
        match untag(v) {
            Value::Null => Ok(None),
            Value::Number(n) => Ok(n.as_f64()),
            Value::String(s) => parse_float(s)
                .map(Some)
                .ok_or_else(|| self.err(path, format!("cannot parse {s:?} as a number"))),
            other => Err(self.err(path, format!("expected a number, found {}", kind(other)))),
        }
    }

    fn ttl(&self, path: &[Seg<'_>], v: &Value) -> Result<Duration, ConfigError> {
        let secs = self.float(path, v)?.unwrap_or(0.0);
        if secs.is_nan() || secs < 0.0 {
            return Err(self.err(
                path,
                format!("must be a non-negative number of seconds, got {secs}"),
            ));
        }
        Duration::try_from_secs_f64(secs)
            .map_err(|_| self.err(path, format!("{secs} seconds is out of range")))
    }

    fn timeout(&self, path: &[Seg<'_>], v: &Value) -> Result<Option<Duration>, ConfigError> {
        let secs = self.float(path, v)?.unwrap_or(0.0);
        if secs.is_nan() {
            return Err(self.err(path, "must be a number of seconds, got NaN"));
        }
        if secs < 0.0 {
            return Ok(None);
        }
        if secs == 0.0 {
            return Ok(Some(DEFAULT_TIMEOUT));
        }
        Duration::try_from_secs_f64(secs)
            .map(Some)
            .map_err(|_| self.err(path, format!("{secs} seconds is out of range")))
    }

    fn integer(&self, path: &[Seg<'_>], v: &Value) -> Result<i64, ConfigError> {
        match untag(v) {
            Value::Null => Ok(0),
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| self.err(path, format!("expected an integer, found {n}"))),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| self.err(path, format!("cannot parse {s:?} as an integer"))),
            other => Err(self.err(path, format!("expected an integer, found {}", kind(other)))),
        }
    }

    /// A version number; digits with leading zeros (`090600`) are decimal, as in yaml.v3.
    fn version(&self, path: &[Seg<'_>], v: &Value) -> Result<u32, ConfigError> {
        let n = match untag(v) {
            Value::Null => return Ok(0),
            Value::Number(n) => n.as_u64().ok_or_else(|| {
                self.err(
                    path,
                    format!("expected a non-negative integer version, found {n}"),
                )
            })?,
            // serde_norway follows YAML 1.2 and reads `090600` as a string.
            Value::String(s) => parse_decimal(s).ok_or_else(|| {
                self.err(path, format!("cannot parse {s:?} as an integer version"))
            })?,
            other => {
                return Err(self.err(
                    path,
                    format!("expected an integer version, found {}", kind(other)),
                ));
            }
        };
        u32::try_from(n).map_err(|_| self.err(path, format!("version {n} is out of range")))
    }

    fn boolean(&self, path: &[Seg<'_>], v: &Value) -> Result<bool, ConfigError> {
        match untag(v) {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            // yaml.v3 still decodes the YAML 1.1 spellings into a bool field.
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "on" => Ok(true),
                "false" | "no" | "n" | "off" => Ok(false),
                _ => Err(self.err(path, format!("expected a boolean, found {s:?}"))),
            },
            other => Err(self.err(path, format!("expected a boolean, found {}", kind(other)))),
        }
    }

    fn string_list(&self, path: &[Seg<'_>], v: &Value) -> Result<Vec<String>, ConfigError> {
        match untag(v) {
            Value::Null => Ok(Vec::new()),
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let mut p = path.to_vec();
                    p.push(Seg::Index(i));
                    scalar_text(item).ok_or_else(|| {
                        self.err(&p, format!("expected a string, found {}", kind(item)))
                    })
                })
                .collect(),
            other => Err(self.err(
                path,
                format!("expected a list of strings, found {}", kind(other)),
            )),
        }
    }

    fn predicates(&self, v: &Value) -> Result<Vec<PredicateQuery>, ConfigError> {
        let base = Seg::Key("predicate_queries");
        let items = match untag(v) {
            Value::Null => return Ok(Vec::new()),
            Value::Sequence(items) => items,
            other => {
                return Err(self.err(
                    &[base],
                    format!(
                        "expected a list of predicate queries, found {}",
                        kind(other)
                    ),
                ));
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = [base, Seg::Index(i)];
            let Value::Mapping(map) = untag(item) else {
                return Err(self.err(
                    &path,
                    format!(
                        "expected a mapping with `predicate_query` (and optional `name`, `ttl`), found {}",
                        kind(item)
                    ),
                ));
            };
            let mut p = PredicateQuery {
                name: String::new(),
                query: String::new(),
                ttl: Duration::ZERO,
            };
            for (key, v) in self.entries(&path, map, PREDICATE_KEYS, "a predicate query")? {
                let fp = [base, Seg::Index(i), Seg::Key(&key)];
                match key.as_str() {
                    "name" => p.name = self.string(&fp, v)?,
                    "predicate_query" => p.query = self.string(&fp, v)?,
                    "ttl" => p.ttl = self.ttl(&fp, v)?,
                    _ => unreachable!("key checked against PREDICATE_KEYS"),
                }
            }
            if p.query.trim().is_empty() {
                return Err(self.err(
                    &[base, Seg::Index(i), Seg::Key("predicate_query")],
                    "predicate_query is missing or blank",
                ));
            }
            out.push(p);
        }
        Ok(out)
    }

    fn columns(&self, metrics: Option<&Value>) -> Result<Vec<ParsedColumn>, ConfigError> {
        let base = Seg::Key("metrics");
        const SHAPE: &str =
            "expected a non-empty list of single-key maps `- <column>: {usage: ...}`";
        let items = match metrics.map(untag) {
            None | Some(Value::Null) => {
                return Err(self.err(&[base], format!("metrics is missing ({SHAPE})")));
            }
            Some(Value::Sequence(items)) if items.is_empty() => {
                return Err(self.err(&[base], format!("metrics is empty ({SHAPE})")));
            }
            Some(Value::Sequence(items)) => items,
            Some(other) => {
                return Err(self.err(&[base], format!("{SHAPE}, found {}", kind(other))));
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let path = [base, Seg::Index(index)];
            let map = match untag(item) {
                Value::Mapping(m) if m.len() == 1 => m,
                Value::Mapping(m) => {
                    let keys: Vec<_> = m.keys().filter_map(scalar_text).collect();
                    return Err(self.err(
                        &path,
                        format!(
                            "each metrics entry must have exactly one key (the column name), found {}{}",
                            m.len(),
                            if keys.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", keys.join(", "))
                            }
                        ),
                    ));
                }
                other => {
                    return Err(self.err(
                        &path,
                        format!(
                            "each metrics entry must be a single-key map `<column>: {{usage: ...}}`, found {}",
                            kind(other)
                        ),
                    ));
                }
            };
            let (k, v) = map.iter().next().expect("one entry");
            let key = match scalar_text(k) {
                Some(key) if !key.is_empty() => key,
                _ => {
                    return Err(self.err(
                        &path,
                        format!(
                            "column name must be a non-empty string, found {}",
                            describe(k)
                        ),
                    ));
                }
            };
            let col = self.column(index, &key, v)?;
            out.push(ParsedColumn { col, index });
        }
        Ok(out)
    }

    fn column(&self, index: usize, key: &str, v: &Value) -> Result<Column, ConfigError> {
        let cpath = [Seg::Key("metrics"), Seg::Index(index), Seg::Key(key)];
        let map = match untag(v) {
            Value::Mapping(m) => m,
            Value::Null => {
                return Err(self.err(
                    &cpath,
                    "column definition is null (expected a mapping with at least `usage`)",
                ));
            }
            other => {
                return Err(self.err(
                    &cpath,
                    format!(
                        "expected a column definition mapping with at least `usage`, found {}",
                        kind(other)
                    ),
                ));
            }
        };
        let mut col = Column {
            key: key.to_owned(),
            column: key.to_owned(),
            usage: Usage::Discard,
            rename: None,
            description: String::new(),
            scale: None,
            default: None,
            buckets: Vec::new(),
        };
        let mut usage = None;
        let mut bucket = None;
        for (field, v) in self.entries(&cpath, map, COLUMN_KEYS, "a column")? {
            let path = [cpath[0], cpath[1], cpath[2], Seg::Key(&field)];
            match field.as_str() {
                "name" => {
                    let name = self.string(&path, v)?;
                    if !name.is_empty() {
                        col.column = name;
                    }
                }
                "usage" => usage = Some(self.string(&path, v)?),
                "rename" => col.rename = Some(self.string(&path, v)?).filter(|r| !r.is_empty()),
                "description" => col.description = self.string(&path, v)?,
                "scale" => {
                    col.scale = self.float(&path, v)?;
                    if col.scale.is_some_and(|s| !s.is_finite()) {
                        return Err(self.err(&path, "scale must be a finite number"));
                    }
                }
                "default" => col.default = self.float(&path, v)?,
                "bucket" => bucket = Some(self.buckets(&path, v)?),
                _ => unreachable!("key checked against COLUMN_KEYS"),
            }
        }
        let upath = [cpath[0], cpath[1], cpath[2], Seg::Key("usage")];
        col.usage = match usage.as_deref() {
            None | Some("") => {
                return Err(self.err(
                    &upath,
                    format!("usage is missing or empty (expected {USAGE_LIST})"),
                ));
            }
            Some(u) => Usage::parse(u).ok_or_else(|| {
                self.err(
                    &upath,
                    format!("unknown usage {u:?} (expected {USAGE_LIST})"),
                )
            })?,
        };
        let bpath = [cpath[0], cpath[1], cpath[2], Seg::Key("bucket")];
        match (col.usage, bucket) {
            (Usage::Histogram, Some(b)) => col.buckets = b,
            (Usage::Histogram, None) => {
                return Err(self.err(
                    &bpath,
                    "HISTOGRAM column requires `bucket`: a non-empty list of finite, strictly increasing upper bounds",
                ));
            }
            (_, Some(_)) => {
                return Err(self.err(
                    &bpath,
                    format!(
                        "`bucket` is only valid for HISTOGRAM columns, not {}",
                        col.usage
                    ),
                ));
            }
            (_, None) => {}
        }
        Ok(col)
    }

    fn buckets(&self, path: &[Seg<'_>], v: &Value) -> Result<Vec<f64>, ConfigError> {
        let items = match untag(v) {
            Value::Sequence(items) if !items.is_empty() => items,
            Value::Sequence(_) | Value::Null => {
                return Err(self.err(path, "bucket list is empty"));
            }
            other => {
                return Err(self.err(
                    path,
                    format!(
                        "expected a list of bucket upper bounds, found {}",
                        kind(other)
                    ),
                ));
            }
        };
        let mut out: Vec<f64> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut p = path.to_vec();
            p.push(Seg::Index(i));
            let b = self
                .float(&p, item)?
                .ok_or_else(|| self.err(&p, "bucket bound is null"))?;
            if !b.is_finite() {
                return Err(self.err(
                    &p,
                    format!("bucket bound {b} is not finite (+Inf is implicit)"),
                ));
            }
            if let Some(prev) = out.last().copied().filter(|prev| b <= *prev) {
                return Err(self.err(
                    &p,
                    format!("bucket bounds must be strictly increasing, {b} follows {prev}"),
                ));
            }
            out.push(b);
        }
        Ok(out)
    }

    /// Cross-column checks: duplicates, label and metric names, histogram families.
    fn check_columns(&self, name: &str, columns: &[ParsedColumn]) -> Result<(), ConfigError> {
        let at = |p: &ParsedColumn| format!("metrics[{}].{}", p.index, p.col.key);

        let mut seen: HashMap<&str, &ParsedColumn> = HashMap::new();
        for p in columns {
            if let Some(first) = seen.insert(&p.col.column, p) {
                return Err(self.err(
                    &[
                        Seg::Key("metrics"),
                        Seg::Index(p.index),
                        Seg::Key(&p.col.key),
                    ],
                    format!(
                        "duplicate column {:?} (already defined at {})",
                        p.col.column,
                        at(first)
                    ),
                ));
            }
        }

        if !columns.iter().any(|p| p.col.usage.is_value()) {
            return Err(self.err(
                &[Seg::Key("metrics")],
                "no GAUGE, COUNTER or HISTOGRAM column: the collector would produce no metric",
            ));
        }

        let has_histogram = columns.iter().any(|p| p.col.usage == Usage::Histogram);
        let mut labels: HashMap<&str, &ParsedColumn> = HashMap::new();
        for p in columns.iter().filter(|p| p.col.usage == Usage::Label) {
            let label = p.col.output_name();
            // Prometheus' rule, as upstream pg_exporter applies it (client_golang refuses a
            // label name that does not match or starts with `__`): agent-kit's, with the
            // reserved prefix named on its own.
            if !agent_kit::exposition::is_valid_label_name(label) {
                let message = if label.starts_with("__") {
                    format!("invalid label name {label:?}: names starting with `__` are reserved")
                } else {
                    format!("invalid label name {label:?} (must match [a-zA-Z_][a-zA-Z0-9_]*)")
                };
                return Err(self.err(&col_path(p), message));
            }
            if has_histogram && label == "le" {
                return Err(self.err(
                    &col_path(p),
                    "label `le` is reserved for the bucket bound of the HISTOGRAM column in this branch",
                ));
            }
            if let Some(first) = labels.insert(label, p) {
                return Err(self.err(
                    &col_path(p),
                    format!(
                        "duplicate label name {label:?} (also used by {})",
                        at(first)
                    ),
                ));
            }
        }

        // Every metric family name the branch emits, with its origin for error messages.
        let mut families: HashMap<String, String> = HashMap::new();
        for p in columns.iter().filter(|p| p.col.usage.is_value()) {
            let metric = format!("{name}_{}", p.col.output_name());
            if !is_metric_name(&metric) {
                return Err(self.err(
                    &col_path(p),
                    format!("invalid metric name {metric:?} (must match [a-zA-Z_:][a-zA-Z0-9_:]*)"),
                ));
            }
            let emitted: Vec<(String, String)> = if p.col.usage == Usage::Histogram {
                ["bucket", "count", "sum"]
                    .iter()
                    .map(|s| {
                        (
                            format!("{metric}_{s}"),
                            format!("the _{s} series of HISTOGRAM {}", at(p)),
                        )
                    })
                    .collect()
            } else {
                vec![(metric.clone(), format!("{} {}", p.col.usage, at(p)))]
            };
            for (family, origin) in emitted {
                if let Some(other) = families.get(&family) {
                    return Err(self.err(
                        &col_path(p),
                        format!("metric name {family:?} of {origin} collides with {other}"),
                    ));
                }
                families.insert(family, origin);
            }
        }
        Ok(())
    }
}

/// Path of a column, or of its `rename` when the output name comes from it.
fn col_path(p: &ParsedColumn) -> Vec<Seg<'_>> {
    let mut v = vec![
        Seg::Key("metrics"),
        Seg::Index(p.index),
        Seg::Key(&p.col.key),
    ];
    if p.col.rename.is_some() {
        v.push(Seg::Key("rename"));
    }
    v
}

/// Parses a float written as text (`1e-6`, ` 0.5 `, `NaN`, `+Inf`, `.inf`).
fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ => t.parse().ok(),
    }
}

/// Parses decimal digits (leading zeros allowed), ignoring surrounding blanks and a `+`.
fn parse_decimal(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> CollectorConfig {
        let mut v = parse_str(text, "t.yml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn err(text: &str) -> String {
        parse_str(text, "t.yml").unwrap_err().to_string()
    }

    const MINIMAL: &str = "b:\n  query: SELECT 1\n  metrics:\n    - v: {usage: GAUGE}\n";

    #[test]
    fn minimal_branch_gets_defaults() {
        let c = one(MINIMAL);
        assert_eq!(c.branch, "b");
        assert_eq!(c.name, "b");
        assert_eq!(c.desc, "");
        assert_eq!(c.ttl, Duration::ZERO);
        assert_eq!(c.timeout, Some(Duration::from_millis(100)));
        assert_eq!(c.priority, 0);
        assert_eq!((c.min_version, c.max_version), (0, 0));
        assert!(!c.fatal && !c.skip);
        assert!(c.tags.is_empty() && c.predicate_queries.is_empty());
        assert_eq!(c.columns.len(), 1);
        assert_eq!(c.source, "t.yml");
        assert_eq!(c.line, 1);
    }

    #[test]
    fn empty_and_comment_only_texts_have_no_branch() {
        assert!(parse_str("", "e.yml").unwrap().is_empty());
        assert!(
            parse_str("# only a comment\n\n# another\n", "e.yml")
                .unwrap()
                .is_empty()
        );
        assert!(parse_str("---\n", "e.yml").unwrap().is_empty());
    }

    #[test]
    fn numbers_are_read_like_yaml_v3() {
        for (text, want) in [
            ("090600", 90600),
            ("010000", 10000),
            ("0", 0),
            ("'090600'", 90600),
            ("170000", 170000),
            ("\"+100\"", 100),
        ] {
            let c = one(&format!(
                "{MINIMAL}  min_version: {text}\n  max_version: {text}\n"
            ));
            assert_eq!((c.min_version, c.max_version), (want, want), "{text}");
        }
        assert_eq!(parse_float("1e-6"), Some(1e-6));
        assert_eq!(parse_float(" 0.5 "), Some(0.5));
        assert!(parse_float(".nan").is_some_and(f64::is_nan));
        assert_eq!(parse_float("x"), None);
        assert_eq!(parse_decimal("0090"), Some(90));
        assert_eq!(parse_decimal("-1"), None);
        assert_eq!(parse_decimal(""), None);
    }

    #[test]
    fn priorities_and_booleans() {
        let c = one(&format!(
            "{MINIMAL}  priority: -5\n  fatal: yes\n  skip: 'off'\n"
        ));
        assert_eq!(c.priority, -5);
        assert!(c.fatal);
        assert!(!c.skip);
        let c = one(&format!("{MINIMAL}  priority: '-7'\n"));
        assert_eq!(c.priority, -7);
        assert!(err(&format!("{MINIMAL}  fatal: maybe\n")).contains("fatal: expected a boolean"));
        assert!(
            err(&format!("{MINIMAL}  priority: 1.5\n")).contains("priority: expected an integer")
        );
    }

    #[test]
    fn timeouts() {
        let t = |v: &str| one(&format!("{MINIMAL}  timeout: {v}\n")).timeout;
        assert_eq!(t("0"), Some(Duration::from_millis(100)));
        assert_eq!(t("~"), Some(Duration::from_millis(100)));
        assert_eq!(t("-1"), None);
        assert_eq!(t("-0.5"), None);
        assert_eq!(t("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(t("1"), Some(Duration::from_secs(1)));
        assert!(err(&format!("{MINIMAL}  timeout: .nan\n")).contains("timeout: must be"));
        assert!(err(&format!("{MINIMAL}  timeout: .inf\n")).contains("out of range"));
    }

    #[test]
    fn yaml_tags_and_merge_keys_are_understood() {
        let c = one(
            "b:\n  <<: {ttl: 5, query: SELECT 1}\n  desc: !!str 12\n  metrics:\n    - v: {usage: gauge}\n",
        );
        assert_eq!(c.ttl, Duration::from_secs(5));
        assert_eq!(c.query, "SELECT 1");
        assert_eq!(c.desc, "12");
    }

    #[test]
    fn name_checks() {
        assert!(is_metric_name("a:b_c"));
        assert!(!is_metric_name("a-b"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse_str("a:\n  b: [1\n", "s.yml").unwrap_err();
        let ConfigError::Syntax { line, column, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(*line >= 2 && *column > 0, "{e}");
        assert!(e.to_string().starts_with("s.yml:"), "{e}");
        let e = parse_str("a: 1\na: 2\n", "d.yml").unwrap_err();
        assert!(e.to_string().contains("duplicate entry"), "{e}");
        assert_eq!(e.line(), Some(2), "{e}");
    }

    #[test]
    fn top_level_must_be_a_mapping() {
        assert_eq!(
            err("# doc\n- a\n- b\n"),
            "t.yml:2: expected a mapping of branch names to collector definitions, found a list"
        );
        assert!(err("~: {}\n").contains("branch keys must be non-empty strings"));
    }
}
