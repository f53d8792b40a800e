//! The YAML config of `log_shipper`, validated into [`Config`].
//!
//! ```yaml
//! checkpoint_dir: /var/lib/log_shipper      # positions acknowledged by every sink
//! message_max_length: 8192                  # `message` is cut at this many characters
//! record_max_bytes: 1MiB                    # a raw record over this is truncated, with a marker
//! fields: {ins: pg-test-1, ip: 10.10.10.11, cls: pg-test}   # defaults for every source
//! sources:
//!   postgres:
//!     include: [/pg/log/postgres/*.csv]
//!     format: postgres_csv                  # postgres_json, postgres_stderr (with
//!                                           # log_line_prefix), patroni, pgbouncer, pgbackrest, plain
//!     read_from: beginning                  # or end, for files present at the very first start
//!     min_level: info                       # drop records less severe than this
//!     max_files: 1000                       # files the globs may reach (at most 10000)
//!     max_directories: 1000                 # directories they may list (at most 100000)
//! sinks:
//!   vlogs:
//!     type: victorialogs                    # or loki, file
//!     endpoint: http://10.10.10.10:9428     # a path prefix and a query are kept
//! ```
//!
//! Every error names the field it is about (`sources.postgres.include: ...`). Values that
//! cannot work are refused: durations under what they need (`request_timeout` under 1s,
//! `rotate_wait` under 1s, `multiline_timeout`, `rescan_interval`, `batch.timeout` and the
//! backoffs under 10ms) or over a day, zero sizes and counts, `record_max_bytes` over 1GiB,
//! `buffer.max_chunks` over 4096. Every directory the shipper writes to is listed in
//! [`Config::writable`], checked by [`crate::pipeline::Pipeline::check`].
//!
//! A source of `type: journald` reads the systemd journal through `journalctl` (see
//! [`crate::journald`]): `units: [pgbouncer.service]` and `identifiers: [...]` select entries
//! (either matches), `directory:` or `files:` name other journal files, `journalctl:` the
//! program; `read_from`, `fields` (job defaults to `syslog`), `min_level` and
//! `message_max_length` apply as to file sources.
//!
//! A sink may put a size-bounded disk buffer behind its memory buffer (Vector's vocabulary):
//! `buffer: {type: disk, max_size: 256MiB, when_full: block | drop_newest, path: /dir}`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::format::Format;
use crate::parse::prefix::LinePrefix;
use crate::record::Level;
use crate::secrets::{Secrets, is_secret_key, mask_url};

/// Default cut of the `message` field, in characters (Pigsty's value).
pub const DEFAULT_MESSAGE_MAX_LENGTH: usize = 8192;
/// Default limit of one raw record, in bytes.
pub const DEFAULT_RECORD_MAX_BYTES: u64 = 1024 * 1024;
/// PostgreSQL's default `log_line_prefix` (since PG 10).
pub const DEFAULT_LOG_LINE_PREFIX: &str = "%m [%p] ";
/// Default checkpoint directory.
pub const DEFAULT_CHECKPOINT_DIR: &str = "/var/lib/log_shipper";
/// Default `max_files` of a file source: each file read holds a descriptor and its metrics.
pub const DEFAULT_MAX_FILES: usize = 1000;
/// Default `max_directories` of a file source.
pub const DEFAULT_MAX_DIRECTORIES: usize = 1000;
/// The largest `max_files`: each file read holds a descriptor.
pub const MAX_FILES_MAX: usize = 10_000;
/// The largest `max_directories`.
pub const MAX_DIRECTORIES_MAX: usize = 100_000;
/// The largest `record_max_bytes` (a record is held whole in memory).
pub const RECORD_MAX_BYTES_MAX: u64 = 1 << 30;
/// The largest `buffer.max_chunks` (each holds up to 128 KiB of input in memory).
pub const MAX_CHUNKS_MAX: usize = 4096;

/// A config error, naming the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (the message names the field).
    #[error("{0}")]
    Syntax(String),
    /// A field has an invalid value.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `sources.postgres.include`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An option that a later version implements.
    #[error("{field}: not supported yet ({what})")]
    Unsupported {
        /// Dotted path of the field.
        field: String,
        /// What is not supported.
        what: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A duration written as `500ms`, `2s`, `5m`, `1h` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Duration::try_from_secs_f64(n)
                .map(HumanDuration)
                .map_err(|_| serde::de::Error::custom(format!("invalid duration {n}"))),
            Raw::Text(s) => parse_duration(&s)
                .map(HumanDuration)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?}"))),
        }
    }
}

/// Splits `1.5 MiB` into its number and its unit (trimmed, possibly empty).
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses `500ms`, `2s`, `1.5s`, `5m`, `1h`, `1d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = number_and_unit(s)?;
    let factor = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "us" | "µs" => 0.000_001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * factor).ok()
}

/// The longest duration any option takes: a longer one is a typo (and would overflow the
/// timers).
pub const DURATION_MAX: Duration = Duration::from_secs(86_400);

/// `d` written back as the config would (`500ms`, `2s`, `1h`).
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 0 {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

/// Refuses a duration that cannot work: under `min` (`why` says what goes wrong then) or
/// over [`DURATION_MAX`].
fn check_duration(
    field: &str,
    d: Duration,
    min: Duration,
    why: &str,
) -> Result<Duration, ConfigError> {
    if d < min {
        return Err(invalid(
            field,
            format!(
                "{} cannot work: must be at least {} ({why})",
                show_duration(d),
                show_duration(min)
            ),
        ));
    }
    if d > DURATION_MAX {
        return Err(invalid(
            field,
            format!("must be at most {}", show_duration(DURATION_MAX)),
        ));
    }
    Ok(d)
}

/// A size written as `1MiB`, `512KiB`, `10MB`, `1GiB` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s)
                .map(ByteSize)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid size {s:?}"))),
        }
    }
}

/// Parses `1MiB`, `512KiB`, `10MB`, `1GiB`, `100B` or a bare number of bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(s)?;
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = n * factor;
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

/// Where to start reading a file present at the very first start (no checkpoint yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// From its first byte.
    #[default]
    Beginning,
    /// From its current end.
    End,
}

/// The static fields added to every record of a source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFields {
    /// `job` (defaults to the format's: postgres, patroni, pgbouncer, pgbackrest, syslog).
    pub job: Option<String>,
    /// `ins`: the instance, e.g. `pg-test-1`.
    pub ins: Option<String>,
    /// `ip`: the node's address.
    pub ip: Option<String>,
    /// `cls`: the cluster, e.g. `pg-test`.
    pub cls: Option<String>,
}

impl StaticFields {
    fn or(&self, defaults: &StaticFields) -> StaticFields {
        StaticFields {
            job: self.job.clone().or_else(|| defaults.job.clone()),
            ins: self.ins.clone().or_else(|| defaults.ins.clone()),
            ip: self.ip.clone().or_else(|| defaults.ip.clone()),
            cls: self.cls.clone().or_else(|| defaults.cls.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawSourceKind {
    #[default]
    File,
    Journald,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(rename = "type", default)]
    kind: RawSourceKind,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    format: Option<Format>,
    #[serde(default)]
    read_from: ReadFrom,
    #[serde(default)]
    fields: StaticFields,
    min_level: Option<Level>,
    log_line_prefix: Option<String>,
    multiline_timeout: Option<HumanDuration>,
    message_max_length: Option<usize>,
    rescan_interval: Option<HumanDuration>,
    rotate_wait: Option<HumanDuration>,
    max_files: Option<usize>,
    max_directories: Option<usize>,
    units: Option<Vec<String>>,
    identifiers: Option<Vec<String>>,
    directory: Option<PathBuf>,
    files: Option<Vec<PathBuf>>,
    journalctl: Option<PathBuf>,
}

/// The settings of a journald source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaldSource {
    /// `_SYSTEMD_UNIT` values to read (a name without a dot gets `.service`); empty: all.
    pub units: Vec<String>,
    /// `SYSLOG_IDENTIFIER` values to read (in addition to the units); empty: all.
    pub identifiers: Vec<String>,
    /// `journalctl --directory=`.
    pub directory: Option<PathBuf>,
    /// `journalctl --file=` (globs allowed).
    pub files: Vec<PathBuf>,
    /// The `journalctl` program.
    pub journalctl: PathBuf,
}

/// Validates a journald source (`type: journald`).
fn validate_journald(
    name: &str,
    s: &RawSource,
    defaults: &StaticFields,
    message_max_length: usize,
    record_max_bytes: u64,
) -> Result<Source, ConfigError> {
    let f = |k: &str| format!("sources.{name}.{k}");
    for (present, key) in [
        (s.format.is_some(), "format"),
        (!s.include.is_empty(), "include"),
        (!s.exclude.is_empty(), "exclude"),
        (s.log_line_prefix.is_some(), "log_line_prefix"),
        (s.multiline_timeout.is_some(), "multiline_timeout"),
        (s.rescan_interval.is_some(), "rescan_interval"),
        (s.rotate_wait.is_some(), "rotate_wait"),
        (s.max_files.is_some(), "max_files"),
        (s.max_directories.is_some(), "max_directories"),
    ] {
        if present {
            return Err(invalid(f(key), "only for file sources, not type journald"));
        }
    }
    let names = |key: &str, list: &Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for v in list.iter().flatten() {
            if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '=' || c == '/') {
                return Err(invalid(f(key), format!("{v:?} is not a valid name")));
            }
            out.push(v.clone());
        }
        Ok(out)
    };
    let units = names("units", &s.units)?
        .into_iter()
        // As systemd and Vector do: a unit name without a type is a service.
        .map(|u| {
            if u.contains('.') {
                u
            } else {
                format!("{u}.service")
            }
        })
        .collect();
    let identifiers = names("identifiers", &s.identifiers)?;
    if s.directory.is_some() && s.files.is_some() {
        return Err(invalid(
            f("files"),
            "directory or files, not both (journalctl accepts one)",
        ));
    }
    if let Some(d) = &s.directory
        && !d.is_absolute()
    {
        return Err(invalid(f("directory"), "must be an absolute path"));
    }
    let files = s.files.clone().unwrap_or_default();
    if s.files.is_some() && files.is_empty() {
        return Err(invalid(f("files"), "must name at least one journal file"));
    }
    if let Some(p) = files.iter().find(|p| !p.is_absolute()) {
        return Err(invalid(
            f("files"),
            format!("{:?} must be an absolute path", p.display()),
        ));
    }
    let journalctl = s
        .journalctl
        .clone()
        .unwrap_or_else(|| PathBuf::from("journalctl"));
    if journalctl.as_os_str().is_empty() {
        return Err(invalid(f("journalctl"), "must not be empty"));
    }
    let fields = s.fields.or(defaults);
    let message_max_length = s.message_max_length.unwrap_or(message_max_length);
    if message_max_length == 0 {
        return Err(invalid(f("message_max_length"), "must be positive"));
    }
    Ok(Source {
        name: name.to_owned(),
        include: Vec::new(),
        exclude: Vec::new(),
        format: Format::Plain,
        read_from: s.read_from,
        job: fields.job.unwrap_or_else(|| "syslog".to_owned()),
        ins: fields.ins.unwrap_or_default(),
        ip: fields.ip.unwrap_or_default(),
        cls: fields.cls.unwrap_or_default(),
        min_level: s.min_level,
        multiline_timeout: Duration::from_secs(1),
        message_max_length,
        record_max_bytes,
        rescan_interval: Duration::from_secs(1),
        rotate_wait: Duration::from_secs(10),
        max_files: DEFAULT_MAX_FILES,
        max_directories: DEFAULT_MAX_DIRECTORIES,
        log_line_prefix: None,
        journald: Some(JournaldSource {
            units,
            identifiers,
            directory: s.directory.clone(),
            files,
            journalctl,
        }),
    })
}

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

/// HTTP body compression for JSON bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// `Content-Encoding: gzip`.
    Gzip,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    bearer_token: Option<String>,
    bearer_token_file: Option<PathBuf>,
}

/// How a sink authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &agent_kit::redact::MASK)
                .finish(),
            Auth::Bearer(_) => f
                .debug_tuple("Bearer")
                .field(&agent_kit::redact::MASK)
                .finish(),
        }
    }
}

/// TLS settings of an HTTP sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the CA certificates to trust (in addition to the system's).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM client key (with `cert_file`).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// When a sink sends a batch: whichever limit is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Uncompressed bytes.
    pub max_bytes: u64,
    /// Records.
    pub max_events: usize,
    /// Age of the oldest record in the batch.
    pub timeout: Duration,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_bytes: 1_000_000,
            max_events: 10_000,
            timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_bytes: Option<ByteSize>,
    max_events: Option<usize>,
    timeout: Option<HumanDuration>,
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
struct RawRetry {
    initial_backoff: Option<HumanDuration>,
    max_backoff: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawBufferKind {
    #[default]
    Memory,
    Disk,
}

/// What a sink does with new records when its disk buffer is full (Vector's `when_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Reading pauses until the sink frees space (backpressure; the files are the buffer).
    #[default]
    Block,
    /// The records are dropped, counted and logged; reading goes on.
    DropNewest,
}

/// The smallest disk buffer accepted.
pub const DISK_BUFFER_MIN_SIZE: u64 = 64 * 1024;

/// An optional, size-bounded disk buffer in front of a sink: records count as acknowledged
/// by the sink once they are on disk (fsynced), so reading goes on through an outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBufferConfig {
    /// Its directory (default `<checkpoint_dir>/buffer/<sink>`).
    pub path: PathBuf,
    /// Disk space the buffer may use, in bytes.
    pub max_size: u64,
    /// What happens when it is full.
    pub when_full: WhenFull,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    #[serde(rename = "type", default)]
    kind: RawBufferKind,
    max_chunks: Option<usize>,
    max_size: Option<ByteSize>,
    when_full: Option<WhenFull>,
    path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    checkpoint_dir: Option<PathBuf>,
    dead_letter_dir: Option<PathBuf>,
    message_max_length: Option<usize>,
    record_max_bytes: Option<ByteSize>,
    #[serde(default)]
    fields: StaticFields,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    sinks: BTreeMap<String, RawSink>,
}

/// A validated source: files, or the journal when [`Source::journald`] is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Its name (the key under `sources`), also the checkpoint file's name.
    pub name: String,
    /// Glob patterns of the files to tail.
    pub include: Vec<String>,
    /// Glob patterns of files to leave out.
    pub exclude: Vec<String>,
    /// The format of the files.
    pub format: Format,
    /// Where to start in files present at the very first start.
    pub read_from: ReadFrom,
    /// `job` of every record.
    pub job: String,
    /// `ins`, `ip`, `cls` (empty: not shipped).
    pub ins: String,
    /// The node's address.
    pub ip: String,
    /// The cluster.
    pub cls: String,
    /// Records less severe than this are dropped.
    pub min_level: Option<Level>,
    /// How long an incomplete multi-line record may wait for its next line.
    pub multiline_timeout: Duration,
    /// `message` is cut at this many characters.
    pub message_max_length: usize,
    /// A raw record over this many bytes is truncated.
    pub record_max_bytes: u64,
    /// How often the globs are re-expanded and files re-checked (fallback to notify).
    pub rescan_interval: Duration,
    /// How long a file that left the globs is still read after its last growth.
    pub rotate_wait: Duration,
    /// Files the include globs may reach; those past it are not read (warned, counted).
    pub max_files: usize,
    /// Directories the include globs may list; those past it are not listed.
    pub max_directories: usize,
    /// `log_line_prefix` (format `postgres_stderr` only).
    pub log_line_prefix: Option<String>,
    /// Set for a journald source (`type: journald`); the file settings are then unused.
    pub journald: Option<JournaldSource>,
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

/// HTTP settings of the VictoriaLogs and Loki sinks.
#[derive(Clone, PartialEq)]
pub struct Http {
    /// Base URL (`http://host:9428`, maybe with a path prefix and a query): the API path is
    /// joined to its path, its query kept. May hold credentials: show it with
    /// [`mask_url`](crate::secrets::mask_url).
    pub endpoint: url::Url,
    /// The secret values of the endpoint, auth and headers, scrubbed from every message.
    pub secrets: Secrets,
    /// JSON body compression.
    pub compression: Compression,
    /// Extra headers, tenant headers included.
    pub headers: Vec<(String, String)>,
    /// Authentication.
    pub auth: Option<Auth>,
    /// TLS.
    pub tls: Tls,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_key(k) {
                    agent_kit::redact::MASK
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("Http")
            .field("endpoint", &mask_url(&self.endpoint))
            .field("compression", &self.compression)
            .field("headers", &headers)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
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
    pub batch: Batch,
    /// Retries.
    pub retry: Retry,
    /// Chunks (one read of a file, at most 128 KiB of input) buffered in front of it.
    pub buffer_chunks: usize,
    /// The disk buffer behind those chunks, if any (`buffer.type: disk`).
    pub disk_buffer: Option<DiskBufferConfig>,
    /// Where records rejected with a 400 go.
    pub dead_letter_path: PathBuf,
}

/// A validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// The sources, sorted by name.
    pub sources: Vec<Source>,
    /// The sinks, sorted by name.
    pub sinks: Vec<Sink>,
    /// Every directory (and file) the shipper writes to, with the option naming it: checked
    /// at start and by `--dry-run` ([`crate::pipeline::Pipeline::check`]).
    pub writable: Vec<Writable>,
}

/// A directory the shipper writes to, and the file in it it appends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writable {
    /// The option that names it: `checkpoint_dir`, `dead_letter_dir`,
    /// `sinks.<name>.dead_letter_path`, `sinks.<name>.path`, `sinks.<name>.buffer.path`.
    pub field: String,
    /// The directory (created when missing).
    pub dir: PathBuf,
    /// The file appended to, if any.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates a config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_norway::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        raw.validate()
    }
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
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

fn check_glob(field: &str, pattern: &str) -> Result<(), ConfigError> {
    if !pattern.starts_with('/') {
        return Err(invalid(
            field,
            format!("{pattern:?} must be an absolute path"),
        ));
    }
    glob::Pattern::new(pattern)
        .map(drop)
        .map_err(|e| invalid(field, format!("{pattern:?}: {e}")))
}

fn read_secret(field: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let checkpoint_dir = self
            .checkpoint_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CHECKPOINT_DIR));
        if !checkpoint_dir.is_absolute() {
            return Err(invalid("checkpoint_dir", "must be an absolute path"));
        }
        if self
            .dead_letter_dir
            .as_ref()
            .is_some_and(|d| !d.is_absolute())
        {
            return Err(invalid("dead_letter_dir", "must be an absolute path"));
        }
        let dead_letter_dir = self
            .dead_letter_dir
            .clone()
            .unwrap_or_else(|| checkpoint_dir.join("dead_letter"));
        let message_max_length = self
            .message_max_length
            .unwrap_or(DEFAULT_MESSAGE_MAX_LENGTH);
        if message_max_length == 0 {
            return Err(invalid("message_max_length", "must be positive"));
        }
        let record_max_bytes = self
            .record_max_bytes
            .map_or(DEFAULT_RECORD_MAX_BYTES, |b| b.0);
        if record_max_bytes < 1024 {
            return Err(invalid("record_max_bytes", "must be at least 1KiB"));
        }
        if record_max_bytes > RECORD_MAX_BYTES_MAX {
            return Err(invalid(
                "record_max_bytes",
                "must be at most 1GiB (a record is held whole in memory)",
            ));
        }
        if self.sources.is_empty() {
            return Err(invalid("sources", "at least one source is required"));
        }
        if self.sinks.is_empty() {
            return Err(invalid("sinks", "at least one sink is required"));
        }

        let mut sources = Vec::new();
        for (name, s) in &self.sources {
            let f = |k: &str| format!("sources.{name}.{k}");
            if !is_label_name(name) {
                return Err(invalid(
                    format!("sources.{name}"),
                    "a source name is letters, digits and '_'",
                ));
            }
            if s.kind == RawSourceKind::Journald {
                sources.push(validate_journald(
                    name,
                    s,
                    &self.fields,
                    message_max_length,
                    record_max_bytes,
                )?);
                continue;
            }
            for (present, key) in [
                (s.units.is_some(), "units"),
                (s.identifiers.is_some(), "identifiers"),
                (s.directory.is_some(), "directory"),
                (s.files.is_some(), "files"),
                (s.journalctl.is_some(), "journalctl"),
            ] {
                if present {
                    return Err(invalid(f(key), "only for sources of type journald"));
                }
            }
            let format = s
                .format
                .ok_or_else(|| invalid(f("format"), "is required"))?;
            let log_line_prefix = match (format, &s.log_line_prefix) {
                (Format::PostgresStderr, p) => {
                    let p = p
                        .clone()
                        .unwrap_or_else(|| DEFAULT_LOG_LINE_PREFIX.to_owned());
                    LinePrefix::compile(&p).map_err(|e| invalid(f("log_line_prefix"), e))?;
                    Some(p)
                }
                (_, Some(_)) => {
                    return Err(invalid(
                        f("log_line_prefix"),
                        "only for format postgres_stderr",
                    ));
                }
                (_, None) => None,
            };
            if s.include.is_empty() {
                return Err(invalid(
                    f("include"),
                    "at least one glob pattern is required",
                ));
            }
            for p in &s.include {
                check_glob(&f("include"), p)?;
            }
            for p in &s.exclude {
                check_glob(&f("exclude"), p)?;
            }
            let fields = s.fields.or(&self.fields);
            let message_max_length = s.message_max_length.unwrap_or(message_max_length);
            if message_max_length == 0 {
                return Err(invalid(f("message_max_length"), "must be positive"));
            }
            let ms = Duration::from_millis;
            let multiline_timeout = check_duration(
                &f("multiline_timeout"),
                s.multiline_timeout.map_or(Duration::from_secs(1), |d| d.0),
                ms(10),
                "a record written in several writes would be cut in pieces",
            )?;
            let rescan_interval = check_duration(
                &f("rescan_interval"),
                s.rescan_interval.map_or(Duration::from_secs(1), |d| d.0),
                ms(10),
                "the globs would be expanded without pause",
            )?;
            let rotate_wait = check_duration(
                &f("rotate_wait"),
                s.rotate_wait.map_or(Duration::from_secs(10), |d| d.0),
                ms(1000),
                "what the writer adds to a file just renamed would be lost",
            )?;
            let limit = |key: &str, v: Option<usize>, default: usize, max: usize| match v
                .unwrap_or(default)
            {
                0 => Err(invalid(f(key), "must be positive")),
                n if n > max => Err(invalid(f(key), format!("must be at most {max}"))),
                n => Ok(n),
            };
            let max_files = limit("max_files", s.max_files, DEFAULT_MAX_FILES, MAX_FILES_MAX)?;
            let max_directories = limit(
                "max_directories",
                s.max_directories,
                DEFAULT_MAX_DIRECTORIES,
                MAX_DIRECTORIES_MAX,
            )?;
            sources.push(Source {
                name: name.clone(),
                include: s.include.clone(),
                exclude: s.exclude.clone(),
                format,
                read_from: s.read_from,
                job: fields
                    .job
                    .unwrap_or_else(|| format.default_job().to_owned()),
                ins: fields.ins.unwrap_or_default(),
                ip: fields.ip.unwrap_or_default(),
                cls: fields.cls.unwrap_or_default(),
                min_level: s.min_level,
                multiline_timeout,
                message_max_length,
                record_max_bytes,
                rescan_interval,
                rotate_wait,
                max_files,
                max_directories,
                log_line_prefix,
                journald: None,
            });
        }

        let mut sinks = Vec::new();
        for (name, s) in &self.sinks {
            sinks.push(validate_sink(
                name,
                s,
                &sources,
                &dead_letter_dir,
                &checkpoint_dir,
            )?);
        }
        check_disk_buffer_paths(&sinks)?;
        let mut writable = vec![Writable {
            field: "checkpoint_dir".to_owned(),
            dir: checkpoint_dir.clone(),
            file: None,
        }];
        for sink in &sinks {
            let raw = &self.sinks[&sink.name];
            let f = |k: &str| format!("sinks.{}.{k}", sink.name);
            let dead_letters = if raw.dead_letter_path.is_some() {
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
        }
        Ok(Config {
            checkpoint_dir,
            sources,
            sinks,
            writable,
        })
    }
}

/// Two sinks sharing a disk buffer directory would read each other's records.
fn check_disk_buffer_paths(sinks: &[Sink]) -> Result<(), ConfigError> {
    for (i, a) in sinks.iter().enumerate() {
        let Some(da) = &a.disk_buffer else { continue };
        if let Some(b) = sinks[..i]
            .iter()
            .find(|b| b.disk_buffer.as_ref().is_some_and(|db| db.path == da.path))
        {
            return Err(invalid(
                format!("sinks.{}.buffer.path", a.name),
                format!(
                    "{} is already the disk buffer of sink {}",
                    da.path.display(),
                    b.name
                ),
            ));
        }
    }
    Ok(())
}

fn validate_buffer(
    name: &str,
    b: &RawBuffer,
    checkpoint_dir: &Path,
) -> Result<(usize, Option<DiskBufferConfig>), ConfigError> {
    let f = |k: &str| format!("sinks.{name}.buffer.{k}");
    let buffer_chunks = b.max_chunks.unwrap_or(16);
    if buffer_chunks == 0 {
        return Err(invalid(f("max_chunks"), "must be positive"));
    }
    if buffer_chunks > MAX_CHUNKS_MAX {
        return Err(invalid(
            f("max_chunks"),
            format!(
                "must be at most {MAX_CHUNKS_MAX} (each chunk holds up to 128KiB of input in memory)"
            ),
        ));
    }
    if b.kind == RawBufferKind::Memory {
        for (present, key) in [
            (b.max_size.is_some(), "max_size"),
            (b.when_full.is_some(), "when_full"),
            (b.path.is_some(), "path"),
        ] {
            if present {
                return Err(invalid(
                    f(key),
                    "only with type: disk (a memory buffer always blocks when full)",
                ));
            }
        }
        return Ok((buffer_chunks, None));
    }
    let max_size = b
        .max_size
        .ok_or_else(|| invalid(f("max_size"), "is required with type: disk"))?
        .0;
    if max_size < DISK_BUFFER_MIN_SIZE {
        return Err(invalid(
            f("max_size"),
            format!("must be at least 64KiB ({DISK_BUFFER_MIN_SIZE} bytes)"),
        ));
    }
    let path = match &b.path {
        Some(p) if !p.is_absolute() => {
            return Err(invalid(f("path"), "must be an absolute path"));
        }
        Some(p) => p.clone(),
        None => checkpoint_dir.join("buffer").join(name),
    };
    if path == checkpoint_dir {
        return Err(invalid(f("path"), "must not be the checkpoint_dir itself"));
    }
    Ok((
        buffer_chunks,
        Some(DiskBufferConfig {
            path,
            max_size,
            when_full: b.when_full.unwrap_or_default(),
        }),
    ))
}

fn validate_sink(
    name: &str,
    s: &RawSink,
    sources: &[Source],
    dead_letter_dir: &Path,
    checkpoint_dir: &Path,
) -> Result<Sink, ConfigError> {
    let f = |k: &str| format!("sinks.{name}.{k}");
    if !is_label_name(name) {
        return Err(invalid(
            format!("sinks.{name}"),
            "a sink name is letters, digits and '_'",
        ));
    }
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

    let (buffer_chunks, disk_buffer) = validate_buffer(name, &s.buffer, checkpoint_dir)?;
    if s.dead_letter_path
        .as_ref()
        .is_some_and(|p| !p.is_absolute())
    {
        return Err(invalid(f("dead_letter_path"), "must be an absolute path"));
    }

    let inputs = match &s.inputs {
        None => (0..sources.len()).collect(),
        Some(list) if list.is_empty() => {
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
    };

    let defaults = Batch::default();
    let ms = Duration::from_millis;
    let batch = Batch {
        max_bytes: s.batch.max_bytes.map_or(defaults.max_bytes, |b| b.0),
        max_events: s.batch.max_events.unwrap_or(defaults.max_events),
        timeout: check_duration(
            &f("batch.timeout"),
            s.batch.timeout.map_or(defaults.timeout, |d| d.0),
            ms(10),
            "every read would go out as its own request",
        )?,
    };
    if batch.max_bytes == 0 {
        return Err(invalid(f("batch.max_bytes"), "must be positive"));
    }
    if batch.max_events == 0 {
        return Err(invalid(f("batch.max_events"), "must be positive"));
    }
    let rd = Retry::default();
    let retry = Retry {
        initial_backoff: check_duration(
            &f("retry.initial_backoff"),
            s.retry.initial_backoff.map_or(rd.initial_backoff, |d| d.0),
            ms(10),
            "a failing destination would be hammered",
        )?,
        max_backoff: check_duration(
            &f("retry.max_backoff"),
            s.retry.max_backoff.map_or(rd.max_backoff, |d| d.0),
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

    let kind = match s.kind {
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
    };

    let http = if is_file {
        None
    } else {
        let endpoint = s
            .endpoint
            .clone()
            .ok_or_else(|| invalid(f("endpoint"), "is required"))?;
        let url = url::Url::parse(&endpoint).map_err(|e| invalid(f("endpoint"), format!("{e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(f("endpoint"), "must be an http:// or https:// URL"));
        }
        if url.fragment().is_some() {
            return Err(invalid(
                f("endpoint"),
                "must not have a #fragment (it is never sent)",
            ));
        }
        let userinfo = !url.username().is_empty() || url.password().is_some();
        if userinfo && s.auth.is_some() {
            return Err(invalid(
                f("auth"),
                "the endpoint has a user:password@ already: one or the other",
            ));
        }
        let protobuf = match &kind {
            SinkKind::Loki { encoding, .. } => *encoding == LokiEncoding::Protobuf,
            SinkKind::VictoriaLogs { api, encoding, .. } => {
                *api == VlApi::Loki && *encoding == LokiEncoding::Protobuf
            }
            SinkKind::File { .. } => false,
        };
        if protobuf && s.compression == Some(Compression::Gzip) {
            return Err(invalid(
                f("compression"),
                "protobuf bodies are always snappy-compressed; gzip is for JSON",
            ));
        }
        let mut headers = Vec::new();
        for (k, v) in &s.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return Err(invalid(f("headers"), format!("invalid header {k:?}")));
            }
            headers.push((k.clone(), v.clone()));
        }
        if let Some(t) = &s.tenant_id {
            headers.push(("X-Scope-OrgID".into(), t.clone()));
        }
        if s.account_id.is_some() || s.project_id.is_some() {
            headers.push(("AccountID".into(), s.account_id.unwrap_or(0).to_string()));
            headers.push(("ProjectID".into(), s.project_id.unwrap_or(0).to_string()));
        }
        let auth = match &s.auth {
            None => None,
            Some(a) => Some(validate_auth(&f("auth"), a)?),
        };
        let tls = s.tls.clone().unwrap_or_default();
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(invalid(f("tls"), "cert_file and key_file go together"));
        }
        let mut secrets = Secrets::of_url(&url);
        match &auth {
            Some(Auth::Basic { password, .. }) => secrets.add(password),
            Some(Auth::Bearer(token)) => secrets.add(token),
            None => {}
        }
        for (k, v) in &headers {
            if is_secret_key(k) {
                secrets.add(v);
            }
        }
        Some(Http {
            endpoint: url,
            secrets,
            compression: s.compression.unwrap_or_default(),
            headers,
            auth,
            tls,
            request_timeout: check_duration(
                &f("request_timeout"),
                s.request_timeout.map_or(Duration::from_secs(30), |d| d.0),
                Duration::from_secs(1),
                "requests the store accepts would time out and be sent again, forever",
            )?,
        })
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

fn validate_auth(field: &str, a: &RawAuth) -> Result<Auth, ConfigError> {
    let basic = a.username.is_some() || a.password.is_some() || a.password_file.is_some();
    let bearer = a.bearer_token.is_some() || a.bearer_token_file.is_some();
    match (basic, bearer) {
        (true, true) => Err(invalid(
            field,
            "either basic auth or a bearer token, not both",
        )),
        (false, false) => Err(invalid(field, "needs username/password or bearer_token")),
        (true, false) => {
            let username = a
                .username
                .clone()
                .ok_or_else(|| invalid(format!("{field}.username"), "is required"))?;
            let password = match (&a.password, &a.password_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(field, "password or password_file, not both"));
                }
                (Some(p), None) => p.clone(),
                (None, Some(path)) => read_secret(&format!("{field}.password_file"), path)?,
                (None, None) => String::new(),
            };
            Ok(Auth::Basic { username, password })
        }
        (false, true) => match (&a.bearer_token, &a.bearer_token_file) {
            (Some(_), Some(_)) => Err(invalid(
                field,
                "bearer_token or bearer_token_file, not both",
            )),
            (Some(t), None) => Ok(Auth::Bearer(t.clone())),
            (None, Some(path)) => Ok(Auth::Bearer(read_secret(
                &format!("{field}.bearer_token_file"),
                path,
            )?)),
            (None, None) => unreachable!("bearer is set"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
checkpoint_dir: /var/lib/ls
fields: {ins: pg-test-1, ip: 10.10.10.11, cls: pg-test}
sources:
  postgres:
    include: [/pg/log/postgres/*.csv]
    format: postgres_csv
    min_level: info
  patroni:
    include: [/pg/log/patroni/patroni.log]
    format: patroni
    read_from: end
    fields: {ins: other}
sinks:
  vlogs:
    type: victorialogs
    endpoint: http://10.10.10.10:9428/
    account_id: 0
    project_id: 0
    compression: gzip
    batch: {max_bytes: 2MiB, max_events: 500, timeout: 250ms}
  loki:
    type: loki
    endpoint: https://loki:3100
    tenant_id: pigsty
    inputs: [patroni]
    auth: {username: u, password: p}
  debug:
    type: file
    path: /tmp/out.jsonl
"#;

    #[test]
    fn each_format_ships_as_its_job_unless_told_otherwise() {
        let formats = [
            ("postgres_csv", "postgres"),
            ("postgres_json", "postgres"),
            ("postgres_stderr", "postgres"),
            ("patroni", "patroni"),
            ("pgbouncer", "pgbouncer"),
            ("pgbackrest", "pgbackrest"),
            ("plain", "syslog"),
        ];
        let mut yaml = String::from("sources:\n");
        for (format, _) in formats {
            yaml.push_str(&format!(
                "  {format}:\n    include: ['/log/{format}']\n    format: {format}\n"
            ));
        }
        yaml.push_str(
            "  told:\n    include: ['/log/x']\n    format: pgbouncer\n    fields: {job: pooler}\n",
        );
        yaml.push_str("sinks:\n  out:\n    type: file\n    path: /tmp/out.jsonl\n");
        let c = Config::parse(&yaml).unwrap();
        for (format, job) in formats {
            let s = c.sources.iter().find(|s| s.name == format).unwrap();
            assert_eq!(s.job, job, "{format}");
        }
        assert_eq!(
            c.sources.iter().find(|s| s.name == "told").unwrap().job,
            "pooler"
        );
    }

    #[test]
    fn a_full_config_validates() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.sources.len(), 2);
        let pg = &c.sources[1];
        assert_eq!(pg.name, "postgres");
        assert_eq!(pg.job, "postgres");
        assert_eq!(pg.ins, "pg-test-1");
        assert_eq!(pg.min_level, Some(Level::Info));
        let pat = &c.sources[0];
        assert_eq!(pat.ins, "other");
        assert_eq!(pat.cls, "pg-test");
        assert_eq!(pat.read_from, ReadFrom::End);
        let vl = c.sinks.iter().find(|s| s.name == "vlogs").unwrap();
        assert_eq!(vl.inputs, vec![0, 1]);
        assert_eq!(vl.batch.max_bytes, 2 * 1024 * 1024);
        assert_eq!(vl.batch.timeout, Duration::from_millis(250));
        let http = vl.http.as_ref().unwrap();
        assert_eq!(http.endpoint.as_str(), "http://10.10.10.10:9428/");
        assert!(http.headers.contains(&("AccountID".into(), "0".into())));
        let loki = c.sinks.iter().find(|s| s.name == "loki").unwrap();
        assert_eq!(loki.inputs, vec![0]);
        assert!(
            loki.http
                .as_ref()
                .unwrap()
                .headers
                .contains(&("X-Scope-OrgID".into(), "pigsty".into()))
        );
        assert_eq!(
            loki.dead_letter_path,
            PathBuf::from("/var/lib/ls/dead_letter/loki.jsonl")
        );
        assert!(!format!("{:?}", loki.http).contains("\"p\""));
    }

    fn err(yaml: &str) -> String {
        Config::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let base = "sinks: {f: {type: file, path: /tmp/x}}\n";
        assert!(
            err(&format!(
                "{base}sources: {{pg: {{include: [/x], format: csv}}}}"
            ))
            .contains("sources.pg.format"),
        );
        assert_eq!(
            err(&format!("{base}sources: {{pg: {{format: plain}}}}")),
            "sources.pg.include: at least one glob pattern is required"
        );
        assert_eq!(
            err(&format!(
                "{base}sources: {{pg: {{include: [rel/*.log], format: plain}}}}"
            )),
            "sources.pg.include: \"rel/*.log\" must be an absolute path"
        );
        assert!(
            err(&format!(
                "{base}sources: {{pg: {{include: [/x], format: plain, colour: red}}}}"
            ))
            .contains("unknown field `colour`")
        );
        assert_eq!(
            err(&format!(
                "{base}sources: {{pg: {{type: journald, include: [/x], format: plain}}}}"
            )),
            "sources.pg.format: only for file sources, not type journald"
        );
        assert_eq!(
            err(&format!(
                "{base}sources: {{pg: {{include: [/x], format: plain, units: [a]}}}}"
            )),
            "sources.pg.units: only for sources of type journald"
        );
        assert_eq!(
            err(&format!(
                "{base}sources: {{j: {{type: journald, units: ['a b']}}}}"
            )),
            "sources.j.units: \"a b\" is not a valid name"
        );
        assert_eq!(
            err(&format!(
                "{base}sources: {{j: {{type: journald, directory: rel}}}}"
            )),
            "sources.j.directory: must be an absolute path"
        );
        assert_eq!(
            err(&format!(
                "{base}sources: {{j: {{type: journald, directory: /d, files: [/f]}}}}"
            )),
            "sources.j.files: directory or files, not both (journalctl accepts one)"
        );
        let c = Config::parse(&format!(
            "{base}sources: {{j: {{type: journald, units: [pgbouncer, pg_exporter.service], read_from: end, min_level: warning, fields: {{ins: n1}}}}}}"
        ))
        .unwrap();
        let j = &c.sources[0];
        assert_eq!((j.job.as_str(), j.ins.as_str()), ("syslog", "n1"));
        assert_eq!(j.read_from, ReadFrom::End);
        assert_eq!(j.min_level, Some(Level::Warning));
        let jd = j.journald.as_ref().unwrap();
        assert_eq!(jd.units, ["pgbouncer.service", "pg_exporter.service"]);
        assert_eq!(jd.journalctl, PathBuf::from("journalctl"));
        assert_eq!(
            err(&format!(
                "{base}sources: {{pg: {{include: [/x], format: postgres_stderr, log_line_prefix: '%m %Z'}}}}"
            )),
            "sources.pg.log_line_prefix: unknown escape %Z"
        );
        assert_eq!(
            err(&format!(
                "{base}sources: {{pg: {{include: [/x], format: plain, log_line_prefix: '%m'}}}}"
            )),
            "sources.pg.log_line_prefix: only for format postgres_stderr"
        );
        let c = Config::parse(&format!(
            "{base}sources: {{pg: {{include: [/x], format: postgres_stderr}}}}"
        ))
        .unwrap();
        assert_eq!(c.sources[0].log_line_prefix.as_deref(), Some("%m [%p] "));
        let src = "sources: {pg: {include: [/x], format: plain}}\n";
        assert_eq!(
            err(&format!("{src}sinks: {{v: {{type: victorialogs}}}}")),
            "sinks.v.endpoint: is required"
        );
        assert_eq!(
            err(&format!(
                "{src}sinks: {{v: {{type: victorialogs, endpoint: 'http://x', labels: [job]}}}}"
            )),
            "sinks.v.labels: only for sinks of type loki"
        );
        assert_eq!(
            err(&format!(
                "{src}sinks: {{v: {{type: loki, endpoint: 'http://x', inputs: [nope]}}}}"
            )),
            "sinks.v.inputs: no source named \"nope\""
        );
        assert_eq!(
            err(&format!(
                "{src}sinks: {{v: {{type: loki, endpoint: 'http://x', buffer: {{type: disk}}}}}}"
            )),
            "sinks.v.buffer.max_size: is required with type: disk"
        );
        assert_eq!(
            err(&format!(
                "{src}sinks: {{v: {{type: loki, endpoint: 'http://x', compression: gzip}}}}"
            )),
            "sinks.v.compression: protobuf bodies are always snappy-compressed; gzip is for JSON"
        );
        assert_eq!(
            err(&format!(
                "{src}sinks: {{v: {{type: loki, endpoint: 'http://x', labels: [pid2]}}}}"
            )),
            "sinks.v.labels: \"pid2\" is not a record field usable here (one of job, ins, ip, cls, level, lv, code, user, db, app, backend_type, topic)"
        );
        assert_eq!(
            err(&format!(
                "{src}sinks: {{v: {{type: loki, endpoint: 'http://x', auth: {{bearer_token: t, username: u}}}}}}"
            )),
            "sinks.v.auth: either basic auth or a bearer token, not both"
        );
        assert!(
            err(&format!(
                "{src}sinks: {{v: {{type: loki, endpoint: 'http://x', batch: {{timeout: soon}}}}}}"
            ))
            .contains("invalid duration")
        );
    }

    #[test]
    fn disk_buffer_options() {
        let src = "checkpoint_dir: /var/lib/ls\nsources: {pg: {include: [/x], format: plain}}\n";
        let sink = |buffer: &str| {
            format!("{src}sinks: {{v: {{type: loki, endpoint: 'http://x', buffer: {buffer}}}}}")
        };
        let c = Config::parse(&sink("{type: disk, max_size: 256MiB}")).unwrap();
        let d = c.sinks[0].disk_buffer.clone().unwrap();
        assert_eq!(d.max_size, 256 << 20);
        assert_eq!(d.when_full, WhenFull::Block);
        assert_eq!(d.path, PathBuf::from("/var/lib/ls/buffer/v"));
        assert_eq!(c.sinks[0].buffer_chunks, 16);
        let c = Config::parse(&sink(
            "{type: disk, max_size: 1000000, when_full: drop_newest, path: /data/buf, max_chunks: 4}",
        ))
        .unwrap();
        let d = c.sinks[0].disk_buffer.clone().unwrap();
        assert_eq!(
            (d.max_size, d.when_full, d.path),
            (1_000_000, WhenFull::DropNewest, PathBuf::from("/data/buf"))
        );
        assert_eq!(c.sinks[0].buffer_chunks, 4);
        assert!(
            Config::parse(&sink("{max_chunks: 3}")).unwrap().sinks[0]
                .disk_buffer
                .is_none()
        );
        for (buffer, message) in [
            (
                "{type: disk, max_size: 1KiB}",
                "sinks.v.buffer.max_size: must be at least 64KiB (65536 bytes)",
            ),
            (
                "{type: disk, max_size: 1MiB, path: rel/dir}",
                "sinks.v.buffer.path: must be an absolute path",
            ),
            (
                "{type: disk, max_size: 1MiB, path: /var/lib/ls}",
                "sinks.v.buffer.path: must not be the checkpoint_dir itself",
            ),
            (
                "{max_size: 1MiB}",
                "sinks.v.buffer.max_size: only with type: disk (a memory buffer always blocks when full)",
            ),
            (
                "{when_full: drop_newest}",
                "sinks.v.buffer.when_full: only with type: disk (a memory buffer always blocks when full)",
            ),
            (
                "{type: disk, max_size: 1MiB, max_chunks: 0}",
                "sinks.v.buffer.max_chunks: must be positive",
            ),
        ] {
            assert_eq!(err(&sink(buffer)), message, "{buffer}");
        }
        for (buffer, needle) in [
            ("{type: disk, max_size: 1MiB, when_full: wait}", "when_full"),
            ("{type: disk, max_size: lots}", "invalid size"),
            ("{type: tape, max_size: 1MiB}", "unknown variant `tape`"),
            (
                "{type: disk, max_size: 1MiB, colour: red}",
                "unknown field `colour`",
            ),
        ] {
            let e = err(&sink(buffer));
            assert!(e.contains(needle) && e.contains("sinks"), "{buffer}: {e}");
        }
        let two = format!(
            "{src}sinks:\n  a: {{type: file, path: /tmp/a, buffer: {{type: disk, max_size: 1MiB, path: /b}}}}\n  b: {{type: file, path: /tmp/b, buffer: {{type: disk, max_size: 1MiB, path: /b}}}}\n"
        );
        assert_eq!(
            err(&two),
            "sinks.b.buffer.path: /b is already the disk buffer of sink a"
        );
    }

    #[test]
    fn durations_and_sizes_that_cannot_work_are_refused() {
        let src = "sources: {pg: {include: [/x], format: plain}}\n";
        let sink = |extra: &str| {
            format!("{src}sinks: {{v: {{type: loki, endpoint: 'http://x', {extra}}}}}")
        };
        let source = |extra: &str| {
            format!(
                "sources: {{pg: {{include: [/x], format: plain, {extra}}}}}\nsinks: {{f: {{type: file, path: /tmp/x}}}}\n"
            )
        };
        for (yaml, message) in [
            (
                sink("request_timeout: 0s"),
                "sinks.v.request_timeout: 0s cannot work: must be at least 1s (requests the store accepts would time out and be sent again, forever)",
            ),
            (
                sink("request_timeout: 200ms"),
                "sinks.v.request_timeout: 200ms cannot work: must be at least 1s (requests the store accepts would time out and be sent again, forever)",
            ),
            (
                sink("request_timeout: 2d"),
                "sinks.v.request_timeout: must be at most 24h",
            ),
            (
                sink("batch: {timeout: 0}"),
                "sinks.v.batch.timeout: 0s cannot work: must be at least 10ms (every read would go out as its own request)",
            ),
            (
                sink("retry: {initial_backoff: 0s}"),
                "sinks.v.retry.initial_backoff: 0s cannot work: must be at least 10ms (a failing destination would be hammered)",
            ),
            (
                sink("retry: {initial_backoff: 2s, max_backoff: 1s}"),
                "sinks.v.retry.max_backoff: must be at least initial_backoff",
            ),
            (
                sink("buffer: {max_chunks: 100000}"),
                "sinks.v.buffer.max_chunks: must be at most 4096 (each chunk holds up to 128KiB of input in memory)",
            ),
            (
                sink("batch: {max_events: 0}"),
                "sinks.v.batch.max_events: must be positive",
            ),
            (
                sink("batch: {max_bytes: 0}"),
                "sinks.v.batch.max_bytes: must be positive",
            ),
            (
                source("multiline_timeout: 0s"),
                "sources.pg.multiline_timeout: 0s cannot work: must be at least 10ms (a record written in several writes would be cut in pieces)",
            ),
            (
                source("rescan_interval: 1ms"),
                "sources.pg.rescan_interval: 1ms cannot work: must be at least 10ms (the globs would be expanded without pause)",
            ),
            (
                source("rotate_wait: 0s"),
                "sources.pg.rotate_wait: 0s cannot work: must be at least 1s (what the writer adds to a file just renamed would be lost)",
            ),
            (
                source("rotate_wait: 100000h"),
                "sources.pg.rotate_wait: must be at most 24h",
            ),
            (
                source("max_files: 0"),
                "sources.pg.max_files: must be positive",
            ),
            (
                source("max_files: 20000"),
                "sources.pg.max_files: must be at most 10000",
            ),
            (
                source("max_directories: 0"),
                "sources.pg.max_directories: must be positive",
            ),
            (
                source("message_max_length: 0"),
                "sources.pg.message_max_length: must be positive",
            ),
            (
                format!("record_max_bytes: 2GiB\n{}", source("min_level: info")),
                "record_max_bytes: must be at most 1GiB (a record is held whole in memory)",
            ),
            (
                format!("{src}sinks: {{j: {{type: file, path: /tmp/x}}}}\n")
                    .replace("format: plain", "type: journald, max_files: 3")
                    .replace("include: [/x], ", ""),
                "sources.pg.max_files: only for file sources, not type journald",
            ),
        ] {
            assert_eq!(err(&yaml), message, "{yaml}");
        }
        // Numbers too large for a duration are refused, not a panic.
        for yaml in [
            sink("request_timeout: 1e300"),
            sink("request_timeout: 1e300s"),
        ] {
            assert!(err(&yaml).contains("invalid duration"), "{yaml}");
        }
        let c = Config::parse(&source("max_files: 10, max_directories: 20")).unwrap();
        assert_eq!(
            (c.sources[0].max_files, c.sources[0].max_directories),
            (10, 20)
        );
        let c = Config::parse(&source("rotate_wait: 1s")).unwrap();
        assert_eq!(
            (c.sources[0].max_files, c.sources[0].max_directories),
            (DEFAULT_MAX_FILES, DEFAULT_MAX_DIRECTORIES)
        );
    }

    #[test]
    fn endpoints_keep_their_query_and_never_show_their_credentials() {
        let src = "sources: {pg: {include: [/x], format: plain}}\n";
        let sink = |extra: &str| format!("{src}sinks: {{v: {{type: loki, {extra}}}}}");
        let c = Config::parse(&sink(
            "endpoint: 'http://u:S3CRET-pw@h:3100/p/?tenant=x&token=S3CRET-tk', headers: {X-Api-Key: S3CRET-hd, X-Other: shown}",
        ))
        .unwrap();
        let http = c.sinks[0].http.as_ref().unwrap();
        assert_eq!(http.endpoint.query(), Some("tenant=x&token=S3CRET-tk"));
        let debug = format!("{c:?}");
        assert!(!debug.contains("S3CRET"), "{debug}");
        assert!(
            debug.contains("http://u:xxxxx@h:3100/p/?tenant=x&token=xxxxx"),
            "{debug}"
        );
        assert!(debug.contains("shown"), "{debug}");
        assert_eq!(
            http.secrets.scrub("S3CRET-pw S3CRET-tk S3CRET-hd"),
            "xxxxx xxxxx xxxxx"
        );
        let c = Config::parse(&sink(
            "endpoint: 'http://h', auth: {bearer_token: S3CRET-bearer}",
        ))
        .unwrap();
        assert_eq!(
            c.sinks[0]
                .http
                .as_ref()
                .unwrap()
                .secrets
                .scrub("S3CRET-bearer"),
            "xxxxx"
        );
        assert_eq!(
            err(&sink("endpoint: 'http://h/#frag'")),
            "sinks.v.endpoint: must not have a #fragment (it is never sent)"
        );
        assert_eq!(
            err(&sink(
                "endpoint: 'http://u:p@h/', auth: {username: u, password: p}"
            )),
            "sinks.v.auth: the endpoint has a user:password@ already: one or the other"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("lots"), None);
    }
}
