//! `sinks`: VictoriaLogs, Loki or a JSON-lines file, with their batching, retries, buffers and
//! dead letters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::buffer::{self, DiskBufferConfig, RawBuffer};
use super::http::{self, Compression, Http, HttpOptions, RawAuth, Tls};
use super::source::Source;
use super::units::{ByteSize, HumanDuration, check_duration, parse_size};
use super::{ConfigError, Writable, invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawSinkKind {
    Victorialogs,
    Loki,
    File,
}

/// VictoriaLogs ingestion API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VlApi {
    /// `/insert/jsonline`.
    #[default]
    Jsonline,
    /// `/insert/loki/api/v1/push` (protobuf + snappy or JSON).
    Loki,
}

/// Loki request encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LokiEncoding {
    /// `logproto.PushRequest`, snappy block-compressed.
    #[default]
    Protobuf,
    /// `{"streams":[...]}`.
    Json,
}

/// When a sink sends a batch: whichever limit is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Uncompressed bytes.
    pub max_bytes: u64,
    /// Records.
    pub max_events: usize,
    /// Age of the oldest record in the batch.
    pub timeout: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_bytes: 1_000_000,
            max_events: 10_000,
            timeout: Duration::from_secs(1),
        }
    }
}

/// The largest `batch.max_bytes`: 10 MB, the default of Vector's HTTP sink (the largest of
/// its sinks' defaults). A batch is held in memory until it is sent.
pub const BATCH_MAX_BYTES_CAP: u64 = 10_000_000;

/// The largest `batch.max_events`: 100,000, the default of Vector's Loki sink.
pub const BATCH_MAX_EVENTS_CAP: u64 = 100_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatch {
    #[serde(default, deserialize_with = "max_bytes")]
    max_bytes: Option<ByteSize>,
    #[serde(default, deserialize_with = "max_events")]
    max_events: Option<u64>,
    timeout: Option<HumanDuration>,
}

/// `batch.max_bytes` (a number of bytes or a size such as `2MiB`), refused while the YAML is
/// read (so that the error has its line) unless between 1 and [`BATCH_MAX_BYTES_CAP`].
fn max_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    d.deserialize_any(Limit {
        cap: BATCH_MAX_BYTES_CAP,
        why: "10 MB, Vector's HTTP sink default",
        sizes: true,
    })
    .map(|n| Some(ByteSize(n)))
}

/// `batch.max_events`, refused unless between 1 and [`BATCH_MAX_EVENTS_CAP`].
fn max_events<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(Limit {
        cap: BATCH_MAX_EVENTS_CAP,
        why: "Vector's Loki sink default",
        sizes: false,
    })
    .map(Some)
}

/// Reads a count (or, with `sizes`, a size) between 1 and `cap`; the error is raised inside
/// the YAML reader, which then names the field and its line.
struct Limit {
    cap: u64,
    why: &'static str,
    sizes: bool,
}

impl Limit {
    fn check<E: serde::de::Error>(&self, n: u64) -> Result<u64, E> {
        if (1..=self.cap).contains(&n) {
            Ok(n)
        } else {
            Err(E::custom(format!(
                "must be between 1 and {} ({}; a batch is held in memory until sent), not {n}",
                self.cap, self.why
            )))
        }
    }
}

impl serde::de::Visitor<'_> for Limit {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sizes {
            write!(f, "a size such as 1MiB, at most {}", self.cap)
        } else {
            write!(f, "a count, at most {}", self.cap)
        }
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u64, E> {
        self.check(n)
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u64, E> {
        self.check(u64::try_from(n).unwrap_or(0))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u64, E> {
        match parse_size(s) {
            Some(n) if self.sizes => self.check(n),
            _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
        }
    }
}

/// Retry policy on 429, 5xx and connection errors: exponential backoff, each wait drawn from
/// the upper half of its step, forever (at-least-once), until shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// First backoff.
    pub initial_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    initial_backoff: Option<HumanDuration>,
    max_backoff: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    #[serde(rename = "type")]
    kind: RawSinkKind,
    endpoint: Option<String>,
    path: Option<PathBuf>,
    api: Option<VlApi>,
    encoding: Option<LokiEncoding>,
    compression: Option<Compression>,
    labels: Option<Vec<String>>,
    stream_fields: Option<Vec<String>>,
    tenant_id: Option<String>,
    account_id: Option<u32>,
    project_id: Option<u32>,
    auth: Option<RawAuth>,
    tls: Option<Tls>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    batch: RawBatch,
    #[serde(default)]
    retry: RawRetry,
    request_timeout: Option<HumanDuration>,
    #[serde(default)]
    buffer: RawBuffer,
    inputs: Option<Vec<String>>,
    dead_letter_path: Option<PathBuf>,
}

/// What kind of sink, with its specific settings.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// VictoriaLogs.
    VictoriaLogs {
        /// Which ingestion API.
        api: VlApi,
        /// `VL-Stream-Fields` (jsonline), or the Loki labels (loki API), which VictoriaLogs takes
        /// as the stream fields.
        stream_fields: Vec<String>,
        /// Loki-API encoding (only with `api: loki`).
        encoding: LokiEncoding,
    },
    /// Grafana Loki.
    Loki {
        /// Request encoding.
        encoding: LokiEncoding,
        /// Record fields sent as stream labels.
        labels: Vec<String>,
    },
    /// JSON lines appended to a local file (for debugging).
    File {
        /// The output file.
        path: PathBuf,
    },
}

/// A validated sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Sink {
    /// Its name (the key under `sinks`).
    pub name: String,
    /// Indices into [`Config::sources`] of the sources it receives.
    pub inputs: Vec<usize>,
    /// What it is.
    pub kind: SinkKind,
    /// HTTP settings (`None` for the file sink).
    pub http: Option<Http>,
    /// Batching.
    pub batch: BatchLimits,
    /// Retries.
    pub retry: Retry,
    /// Chunks (one read of a file, at most 128 KiB of input) buffered in front of it.
    pub buffer_chunks: usize,
    /// The disk buffer behind those chunks, if any (`buffer.type: disk`).
    pub disk_buffer: Option<DiskBufferConfig>,
    /// Where records rejected with a 400 go.
    pub dead_letter_path: PathBuf,
}

/// Fields of the output schema that a sink may use as labels or stream fields.
const RECORD_FIELDS: [&str; 17] = [
    "job",
    "ins",
    "ip",
    "cls",
    "level",
    "lv",
    "code",
    "user",
    "db",
    "app",
    "query",
    "duration",
    "pid",
    "backend_type",
    "topic",
    "parse_error",
    "message",
];

fn check_field_list(field: &str, list: &[String]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(invalid(field, "must name at least one field"));
    }
    for f in list {
        if !RECORD_FIELDS.contains(&f.as_str()) || f == "message" {
            return Err(invalid(
                field,
                format!(
                    "{f:?} is not a record field usable here (one of job, ins, ip, cls, level, lv, code, user, db, app, backend_type, topic)"
                ),
            ));
        }
    }
    Ok(())
}

/// Validates sink `name`, which receives some of `sources`.
pub(super) fn validate(
    name: &str,
    s: &RawSink,
    sources: &[Source],
    dead_letter_dir: &Path,
    checkpoint_dir: &Path,
) -> Result<Sink, ConfigError> {
    let f = |k: &str| format!("sinks.{name}.{k}");
    if !agent_kit::exposition::is_valid_label_name(name) {
        return Err(invalid(
            format!("sinks.{name}"),
            "a sink name is letters, digits and '_'",
        ));
    }
    check_options_fit_kind(&f, s)?;
    let (buffer_chunks, disk_buffer) = buffer::validate(name, &s.buffer, checkpoint_dir)?;
    if s.dead_letter_path
        .as_ref()
        .is_some_and(|p| !p.is_absolute())
    {
        return Err(invalid(f("dead_letter_path"), "must be an absolute path"));
    }
    let inputs = validate_inputs(&f, s.inputs.as_deref(), sources)?;
    let batch = validate_batch(&f, &s.batch)?;
    let retry = validate_retry(&f, &s.retry)?;
    let kind = validate_kind(&f, s)?;
    let http = if s.kind == RawSinkKind::File {
        None
    } else {
        let protobuf = match &kind {
            SinkKind::Loki { encoding, .. } => *encoding == LokiEncoding::Protobuf,
            SinkKind::VictoriaLogs { api, encoding, .. } => {
                *api == VlApi::Loki && *encoding == LokiEncoding::Protobuf
            }
            SinkKind::File { .. } => false,
        };
        let options = HttpOptions {
            endpoint: s.endpoint.as_deref(),
            compression: s.compression,
            headers: &s.headers,
            tenant_id: s.tenant_id.as_deref(),
            account_id: s.account_id,
            project_id: s.project_id,
            auth: s.auth.as_ref(),
            tls: s.tls.as_ref(),
            request_timeout: s.request_timeout,
            protobuf,
        };
        Some(http::validate(&f, &options)?)
    };
    Ok(Sink {
        name: name.to_owned(),
        inputs,
        kind,
        http,
        batch,
        retry,
        buffer_chunks,
        disk_buffer,
        dead_letter_path: s
            .dead_letter_path
            .clone()
            .unwrap_or_else(|| dead_letter_dir.join(format!("{name}.jsonl"))),
    })
}

/// Refuses options that the sink's type does not take.
fn check_options_fit_kind(f: &dyn Fn(&str) -> String, s: &RawSink) -> Result<(), ConfigError> {
    let only = |present: bool, key: &str, kinds: &str| -> Result<(), ConfigError> {
        if present {
            Err(invalid(f(key), format!("only for sinks of type {kinds}")))
        } else {
            Ok(())
        }
    };
    let is_vl = s.kind == RawSinkKind::Victorialogs;
    let is_loki = s.kind == RawSinkKind::Loki;
    let is_file = s.kind == RawSinkKind::File;
    only(!is_file && s.path.is_some(), "path", "file")?;
    only(!is_vl && s.api.is_some(), "api", "victorialogs")?;
    only(
        !is_vl && s.stream_fields.is_some(),
        "stream_fields",
        "victorialogs",
    )?;
    only(
        !is_vl && s.account_id.is_some(),
        "account_id",
        "victorialogs",
    )?;
    only(
        !is_vl && s.project_id.is_some(),
        "project_id",
        "victorialogs",
    )?;
    only(!is_loki && s.labels.is_some(), "labels", "loki")?;
    only(!is_loki && s.tenant_id.is_some(), "tenant_id", "loki")?;
    only(
        is_file && s.endpoint.is_some(),
        "endpoint",
        "victorialogs, loki",
    )?;
    only(is_file && s.auth.is_some(), "auth", "victorialogs, loki")?;
    only(is_file && s.tls.is_some(), "tls", "victorialogs, loki")?;
    only(
        is_file && !s.headers.is_empty(),
        "headers",
        "victorialogs, loki",
    )?;
    only(
        is_file && s.compression.is_some(),
        "compression",
        "victorialogs, loki",
    )?;
    only(
        is_file && s.request_timeout.is_some(),
        "request_timeout",
        "victorialogs, loki",
    )?;
    Ok(())
}

/// The sources a sink receives (by index into `sources`): all of them unless `inputs` says.
fn validate_inputs(
    f: &dyn Fn(&str) -> String,
    inputs: Option<&[String]>,
    sources: &[Source],
) -> Result<Vec<usize>, ConfigError> {
    Ok(match inputs {
        None => (0..sources.len()).collect(),
        Some([]) => {
            return Err(invalid(f("inputs"), "must name at least one source"));
        }
        Some(list) => {
            let mut v = Vec::new();
            for i in list {
                let idx = sources
                    .iter()
                    .position(|s| &s.name == i)
                    .ok_or_else(|| invalid(f("inputs"), format!("no source named {i:?}")))?;
                if !v.contains(&idx) {
                    v.push(idx);
                }
            }
            v
        }
    })
}

fn validate_batch(f: &dyn Fn(&str) -> String, raw: &RawBatch) -> Result<BatchLimits, ConfigError> {
    let defaults = BatchLimits::default();
    let ms = Duration::from_millis;
    let batch = BatchLimits {
        max_bytes: raw.max_bytes.map_or(defaults.max_bytes, |b| b.0),
        max_events: raw
            .max_events
            .map_or(defaults.max_events, |n| n.try_into().unwrap_or(usize::MAX)),
        timeout: check_duration(
            &f("batch.timeout"),
            raw.timeout.map_or(defaults.timeout, |d| d.0),
            ms(10),
            "every read would go out as its own request",
        )?,
    };
    Ok(batch)
}

fn validate_retry(f: &dyn Fn(&str) -> String, raw: &RawRetry) -> Result<Retry, ConfigError> {
    let ms = Duration::from_millis;
    let rd = Retry::default();
    let retry = Retry {
        initial_backoff: check_duration(
            &f("retry.initial_backoff"),
            raw.initial_backoff.map_or(rd.initial_backoff, |d| d.0),
            ms(10),
            "a failing destination would be hammered",
        )?,
        max_backoff: check_duration(
            &f("retry.max_backoff"),
            raw.max_backoff.map_or(rd.max_backoff, |d| d.0),
            ms(10),
            "a failing destination would be hammered",
        )?,
    };
    if retry.max_backoff < retry.initial_backoff {
        return Err(invalid(
            f("retry.max_backoff"),
            "must be at least initial_backoff",
        ));
    }
    Ok(retry)
}

/// What the sink is: its type with the settings of that type.
fn validate_kind(f: &dyn Fn(&str) -> String, s: &RawSink) -> Result<SinkKind, ConfigError> {
    Ok(match s.kind {
        RawSinkKind::File => SinkKind::File {
            path: match &s.path {
                None => return Err(invalid(f("path"), "is required")),
                Some(p) if !p.is_absolute() => {
                    return Err(invalid(f("path"), "must be an absolute path"));
                }
                Some(p) => p.clone(),
            },
        },
        RawSinkKind::Victorialogs => {
            let stream_fields = s
                .stream_fields
                .clone()
                .unwrap_or_else(|| vec!["job".into(), "ins".into(), "ip".into()]);
            check_field_list(&f("stream_fields"), &stream_fields)?;
            let api = s.api.unwrap_or_default();
            if api == VlApi::Jsonline && s.encoding.is_some() {
                return Err(invalid(f("encoding"), "only with api: loki"));
            }
            SinkKind::VictoriaLogs {
                api,
                stream_fields,
                encoding: s.encoding.unwrap_or_default(),
            }
        }
        RawSinkKind::Loki => {
            let labels = s
                .labels
                .clone()
                .unwrap_or_else(|| vec!["job".into(), "ins".into(), "ip".into(), "cls".into()]);
            check_field_list(&f("labels"), &labels)?;
            if labels.len() > 15 {
                return Err(invalid(f("labels"), "Loki accepts at most 15 labels"));
            }
            SinkKind::Loki {
                encoding: s.encoding.unwrap_or_default(),
                labels,
            }
        }
    })
}

/// What sink `sink` (validated from `s`) writes to: its dead letters, its output file, its
/// disk buffer.
pub(super) fn writables(s: &RawSink, sink: &Sink) -> Vec<Writable> {
    let mut writable = Vec::new();
    let f = |k: &str| format!("sinks.{}.{k}", sink.name);
    let dead_letters = if s.dead_letter_path.is_some() {
        f("dead_letter_path")
    } else {
        "dead_letter_dir".to_owned()
    };
    let mut add = |field: String, file: &Path, is_dir: bool| {
        let (dir, file) = if is_dir {
            (file.to_owned(), None)
        } else {
            let dir = file.parent().unwrap_or(Path::new("/")).to_owned();
            (dir, Some(file.to_owned()))
        };
        writable.push(Writable { field, dir, file });
    };
    add(dead_letters, &sink.dead_letter_path, false);
    if let SinkKind::File { path } = &sink.kind {
        add(f("path"), path, false);
    }
    if let Some(d) = &sink.disk_buffer {
        add(f("buffer.path"), &d.path, true);
    }
    writable
}
