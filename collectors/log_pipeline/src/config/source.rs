//! `sources`: files found by globs, or the systemd journal (`type: journald`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{HumanDuration, check_duration};
use super::{ConfigError, DEFAULT_LOG_LINE_PREFIX, invalid};
use crate::format::Format;
use crate::parse::prefix::LinePrefix;
use crate::record::{Level, Origin};

/// Default `max_files` of a file source: each file read holds a descriptor and its metrics.
pub const DEFAULT_MAX_FILES: usize = 1000;
/// Default `max_directories` of a file source.
pub const DEFAULT_MAX_DIRECTORIES: usize = 1000;
/// The largest `max_files`: each file read holds a descriptor.
pub const MAX_FILES_MAX: usize = 10_000;
/// The largest `max_directories`.
pub const MAX_DIRECTORIES_MAX: usize = 100_000;
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
    pub(super) fn or(&self, defaults: &StaticFields) -> StaticFields {
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
pub(super) enum RawSourceKind {
    #[default]
    File,
    Journald,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
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

impl Source {
    /// The static fields of every record it reads.
    pub fn origin(&self) -> Origin {
        Origin {
            job: self.job.clone(),
            ins: self.ins.clone(),
            ip: self.ip.clone(),
            cls: self.cls.clone(),
        }
    }
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

/// Validates source `name`: a file source, or a journald one.
pub(super) fn validate(
    name: &str,
    s: &RawSource,
    defaults: &StaticFields,
    message_max_length: usize,
    record_max_bytes: u64,
) -> Result<Source, ConfigError> {
    if !agent_kit::exposition::is_valid_label_name(name) {
        return Err(invalid(
            format!("sources.{name}"),
            "a source name is letters, digits and '_'",
        ));
    }
    if s.kind == RawSourceKind::Journald {
        validate_journald(name, s, defaults, message_max_length, record_max_bytes)
    } else {
        validate_files(name, s, defaults, message_max_length, record_max_bytes)
    }
}

/// Validates a file source.
fn validate_files(
    name: &str,
    s: &RawSource,
    defaults: &StaticFields,
    message_max_length: usize,
    record_max_bytes: u64,
) -> Result<Source, ConfigError> {
    let f = |k: &str| format!("sources.{name}.{k}");
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
        check_include(&f("include"), p)?;
    }
    for p in &s.exclude {
        check_glob(&f("exclude"), p)?;
    }
    let fields = s.fields.or(defaults);
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
    let limit = |key: &str, v: Option<usize>, default: usize, max: usize| match v.unwrap_or(default)
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
    Ok(Source {
        name: name.to_owned(),
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
    })
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

/// Refuses an include pattern that can never match a file: `/`, one ending with `/`, one
/// naming an existing directory, one below a regular file. One whose directory does not exist
/// yet is fine (a log directory created later).
fn check_include(field: &str, pattern: &str) -> Result<(), ConfigError> {
    let refuse = |why: String| {
        Err(invalid(
            field,
            format!("{pattern:?} never matches a file: {why}"),
        ))
    };
    let trimmed = pattern.trim_end_matches('/');
    if trimmed.is_empty() {
        return refuse("it names the root directory; end it with a file name or a pattern for one, e.g. \"/var/log/postgresql/*.log\"".to_owned());
    }
    if trimmed.len() != pattern.len() {
        return refuse(format!(
            "it ends with '/', so only directories match; e.g. \"{trimmed}/*.log\""
        ));
    }
    let wildcard = |c: &str| c.contains(['*', '?', '[']);
    // The literal directories before the first wildcard: each must be a directory, if it
    // exists.
    let mut path = PathBuf::from("/");
    for c in pattern.split('/').filter(|c| !c.is_empty()) {
        if path.exists() && !path.is_dir() {
            return refuse(format!("{} is a file, not a directory", path.display()));
        }
        if wildcard(c) {
            return Ok(());
        }
        path.push(c);
    }
    if path.is_dir() {
        return refuse(format!(
            "it is a directory; to read the files in it write \"{trimmed}/*.log\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn include_error(pattern: &str) -> Option<String> {
        let yaml = format!(
            "checkpoint_dir: /var/lib/ls\nsources: {{app: {{include: ['{pattern}'], format: plain}}}}\nsinks: {{f: {{type: file, path: /tmp/out.jsonl}}}}\n"
        );
        Config::parse(&yaml).err().map(|e| e.to_string())
    }

    /// An include that can never match a file is refused, naming the field and saying why;
    /// one whose directory does not exist yet is accepted.
    #[test]
    fn an_include_that_can_never_match_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        for (pattern, says) in [
            ("/".to_owned(), "root directory"),
            ("//".to_owned(), "root directory"),
            (format!("{root}/logs"), "it is a directory"),
            (format!("{root}/logs/"), "ends with '/'"),
            (format!("{root}/logs/*.log/"), "ends with '/'"),
            (format!("{root}/file/*.log"), "is a file, not a directory"),
            (
                format!("{root}/file/sub/x.log"),
                "is a file, not a directory",
            ),
        ] {
            let e = include_error(&pattern).unwrap_or_else(|| panic!("{pattern} accepted"));
            assert!(e.starts_with("sources.app.include: "), "{e}");
            assert!(
                e.contains("never matches a file") && e.contains(says),
                "{e}"
            );
        }
        for pattern in [
            format!("{root}/logs/*.log"),
            format!("{root}/logs/app.log"),
            format!("{root}/not-yet/*.log"),
            format!("{root}/not-yet/sub/app.log"),
            format!("{root}/*/x.log"),
        ] {
            assert_eq!(include_error(&pattern), None, "{pattern}");
        }
    }
}
