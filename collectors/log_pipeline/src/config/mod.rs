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
//! `buffer.max_chunks` over 4096, `batch.max_bytes` over 10 MB and `batch.max_events` over
//! 100,000 (the largest of Vector's defaults: [`BATCH_MAX_BYTES_CAP`],
//! [`BATCH_MAX_EVENTS_CAP`]). Every directory the shipper writes to is listed in
//! [`Config::writable`], checked by [`crate::pipeline::Pipeline::check`].
//!
//! Each part's options are validated in a module of their own: `source` (files and the
//! journal), `sink` (types, batching, retries, inputs), `http` (endpoint, headers, auth, TLS),
//! `buffer` (memory and disk buffers) and `units` (durations and sizes); their types are all
//! exported here.
//!
//! A source of `type: journald` reads the systemd journal through `journalctl` (see
//! [`crate::source::journald`]): `units: [pgbouncer.service]` and `identifiers: [...]` select entries
//! (either matches), `directory:` or `files:` name other journal files, `journalctl:` the
//! program; `read_from`, `fields` (job defaults to `syslog`), `min_level` and
//! `message_max_length` apply as to file sources.
//!
//! A sink may put a size-bounded disk buffer behind its memory buffer (Vector's vocabulary):
//! `buffer: {type: disk, max_size: 256MiB, when_full: block | drop_newest, path: /dir}`.

mod buffer;
mod http;
mod sink;
mod source;
mod units;
mod writable;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use sink::RawSink;
use source::RawSource;

pub use buffer::{DISK_BUFFER_MIN_SIZE, DiskBufferConfig, MAX_CHUNKS_MAX, WhenFull};
pub use http::{Auth, Compression, Http, Tls};
pub use sink::{
    BATCH_MAX_BYTES_CAP, BATCH_MAX_EVENTS_CAP, BatchLimits, LokiEncoding, Retry, Sink, SinkKind,
    VlApi,
};
pub use source::{
    DEFAULT_MAX_DIRECTORIES, DEFAULT_MAX_FILES, JournaldSource, MAX_DIRECTORIES_MAX, MAX_FILES_MAX,
    ReadFrom, Source, StaticFields,
};
pub use units::{ByteSize, DURATION_MAX, HumanDuration, parse_duration, parse_size};
pub use writable::{Writable, open_append};

/// Default cut of the `message` field, in characters (Pigsty's value).
pub const DEFAULT_MESSAGE_MAX_LENGTH: usize = 8192;
/// Default limit of one raw record, in bytes.
pub const DEFAULT_RECORD_MAX_BYTES: u64 = 1024 * 1024;
/// PostgreSQL's default `log_line_prefix` (since PG 10).
pub const DEFAULT_LOG_LINE_PREFIX: &str = "%m [%p] ";
/// Default checkpoint directory.
pub const DEFAULT_CHECKPOINT_DIR: &str = "/var/lib/log_shipper";
/// The largest `record_max_bytes` (a record is held whole in memory).
pub const RECORD_MAX_BYTES_MAX: u64 = 1 << 30;

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
    /// The YAML does not parse or does not match the schema (the message names the field,
    /// and the line and column).
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
    /// at start ([`crate::pipeline::Pipeline::check`]) and by `--dry-run`
    /// ([`crate::pipeline::Pipeline::plan`]).
    pub writable: Vec<Writable>,
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
        // As the collector and web configs: nesting bounded, errors placed at a line and column.
        let raw: RawConfig =
            agent_kit::yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        raw.validate()
    }
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
            sources.push(source::validate(
                name,
                s,
                &self.fields,
                message_max_length,
                record_max_bytes,
            )?);
        }
        let mut sinks = Vec::new();
        for (name, s) in &self.sinks {
            sinks.push(sink::validate(
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
            writable.extend(sink::writables(&self.sinks[&sink.name], sink));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::Level;

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
        // Batch limits are held in memory: capped as Vector's largest defaults, refused with
        // the line (p21: 2^64-1 of each made a 2.5 GB batch).
        for (limits, message) in [
            (
                "{max_events: 0}",
                "sinks.v.batch.max_events: must be between 1 and 100000 (Vector's Loki sink default; a batch is held in memory until sent), not 0 at line 6 column",
            ),
            (
                "{max_events: 18446744073709551615}",
                "sinks.v.batch.max_events: must be between 1 and 100000 (Vector's Loki sink default; a batch is held in memory until sent), not 18446744073709551615 at line 6 column",
            ),
            (
                "{max_bytes: 0}",
                "sinks.v.batch.max_bytes: must be between 1 and 10000000 (10 MB, Vector's HTTP sink default; a batch is held in memory until sent), not 0 at line 6 column",
            ),
            (
                "{max_bytes: 18446744073709551615}",
                "sinks.v.batch.max_bytes: must be between 1 and 10000000 (10 MB, Vector's HTTP sink default; a batch is held in memory until sent), not 18446744073709551615 at line 6 column",
            ),
            (
                "{max_bytes: 1GiB}",
                "sinks.v.batch.max_bytes: must be between 1 and 10000000 (10 MB, Vector's HTTP sink default; a batch is held in memory until sent), not 1073741824 at line 6 column",
            ),
        ] {
            let yaml = format!(
                "{src}sinks:\n  v:\n    type: file\n    path: /tmp/x\n    batch: {limits}\n"
            );
            let e = err(&yaml);
            assert!(e.starts_with(message), "{yaml}\n{e}");
        }
        let c = Config::parse(&sink("batch: {max_bytes: 10MB, max_events: 100000}")).unwrap();
        assert_eq!(
            (c.sinks[0].batch.max_bytes, c.sinks[0].batch.max_events),
            (10_000_000, 100_000)
        );
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
}
