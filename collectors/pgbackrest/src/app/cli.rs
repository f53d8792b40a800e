//! The flags of woblerr/pgbackrest_exporter v0.23 (kingpin spellings: `--[no-]flag`,
//! `--flag=true|false`, repeatable lists), plus ours.

use std::time::Duration;

use crate::command::RunAs;
use crate::settings::Settings;
use agent_kit::cli::{LogArgs, WebArgs};
use anyhow::Context as _;
use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, Parser};
use tracing::{info, warn};

/// Prometheus exporter for pgBackRest.
#[derive(Debug, Parser)]
#[command(name = "pgbackrest_exporter", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub(crate) web: WebArgs,

    /// Collecting metrics interval in seconds.
    #[arg(
        long = "collect.interval",
        value_name = "SECONDS",
        default_value_t = 600,
        allow_negative_numbers = true,
        value_parser = whole_seconds
    )]
    pub(crate) collect_interval: i64,

    /// Seconds each pgbackrest run may take before it is killed with its process group (ours).
    #[arg(
        long = "collect.timeout",
        value_name = "SECONDS",
        default_value_t = 120,
        value_parser = at_least_one::<u64>
    )]
    pub(crate) collect_timeout: u64,

    /// Full path to pgBackRest configuration file.
    #[arg(long = "backrest.config", value_name = "FILE", default_value = "")]
    pub(crate) config: String,

    /// Full path to additional pgBackRest configuration files.
    #[arg(
        long = "backrest.config-include-path",
        value_name = "PATH",
        default_value = ""
    )]
    pub(crate) config_include_path: String,

    /// Specific stanza for collecting metrics. Can be specified several times.
    #[arg(long = "backrest.stanza-include", value_name = "STANZA", value_parser = stanza_name)]
    pub(crate) stanza_include: Vec<String>,

    /// Specific stanza to exclude from collecting metrics. Can be specified several times.
    #[arg(long = "backrest.stanza-exclude", value_name = "STANZA", value_parser = stanza_name)]
    pub(crate) stanza_exclude: Vec<String>,

    /// Specific backup type for collecting metrics. One of: [full, incr, diff].
    #[arg(long = "backrest.backup-type", value_name = "TYPE", default_value = "",
          hide_default_value = true, value_parser = backup_types())]
    pub(crate) backup_type: String,

    /// Exposing the number of databases in backups.
    #[arg(long = "backrest.database-count", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub(crate) database_count: bool,

    /// Number of parallel processes for collecting information about databases.
    #[arg(
        long = "backrest.database-parallel-processes",
        value_name = "N",
        default_value_t = 1,
        value_parser = at_least_one::<usize>
    )]
    pub(crate) database_parallel_processes: usize,

    /// Exposing the number of databases in the latest backups.
    #[arg(long = "backrest.database-count-latest", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub(crate) database_count_latest: bool,

    /// Exposing the number of references to another backups (backup reference list).
    #[arg(long = "backrest.reference-count", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub(crate) reference_count: bool,

    /// Exposing additional labels for WAL metrics.
    #[arg(long = "backrest.verbose-wal", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true")]
    pub(crate) verbose_wal: bool,

    /// Collect metrics from pgbackrest info (false: only version and exporter metrics).
    #[arg(long = "collector.pgbackrest", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true")]
    pub(crate) collector_pgbackrest: bool,

    /// The pgbackrest program (ours).
    #[arg(
        long = "backrest.binary",
        value_name = "PATH",
        default_value = "pgbackrest"
    )]
    pub(crate) binary: String,

    /// Run pgbackrest as this OS user, the repository's owner (ours; needs root, e.g.
    /// `postgres`). Without it pgbackrest runs as the exporter's user.
    #[arg(long = "backrest.user", value_name = "USER")]
    pub(crate) user: Option<String>,

    /// Per-backup series only for the newest N backups of each stanza and repository; 0 = all
    /// (ours).
    #[arg(long = "backrest.backup-limit", value_name = "N", default_value_t = 0)]
    pub(crate) backup_limit: usize,

    /// Age of the newest archived WAL segment per repository, from `pgbackrest repo-ls` (ours).
    #[arg(long = "backrest.wal-age", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "true", default_missing_value = "true")]
    pub(crate) wal_age: bool,

    #[command(flatten)]
    pub(crate) log: LogArgs,
}

/// `--backrest.backup-type`: pgBackRest's `--type` values for `info`; empty (the default) for
/// every type.
fn backup_types() -> clap::builder::PossibleValuesParser {
    use clap::builder::PossibleValue;
    clap::builder::PossibleValuesParser::new([
        PossibleValue::new("full"),
        PossibleValue::new("incr"),
        PossibleValue::new("diff"),
        PossibleValue::new("").hide(true),
    ])
}

/// A whole number of seconds (negative allowed: below 1 means 1, with a warning, as upstream
/// accepts it).
fn whole_seconds(value: &str) -> Result<i64, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number of seconds (e.g. 600)"))
}

/// A whole number of at least 1.
fn at_least_one<T>(value: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    match value.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!("{value:?} is not a whole number of at least 1")),
    }
}

/// A stanza name pgBackRest can have made: not starting with `-` (it would read as an option),
/// without `/` (stanza names are directory and lock file names) and without blanks or control
/// characters. Empty is upstream's default ("all stanzas").
fn stanza_name(value: &str) -> Result<String, String> {
    if value.starts_with('-') {
        return Err(format!("stanza name {value:?} starts with '-'"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "stanza name {value:?} contains {c:?}; pgBackRest stanza names are directory names without '/', blanks or control characters"
        ));
    }
    Ok(value.to_owned())
}

/// Boolean flags that kingpin also accepts as `--no-<flag>`.
const NEGATABLE: [&str; 7] = [
    "backrest.database-count",
    "backrest.database-count-latest",
    "backrest.reference-count",
    "backrest.verbose-wal",
    "collector.pgbackrest",
    "backrest.wal-age",
    "web.systemd-socket",
];

/// Rewrites kingpin's `--no-flag` into `--flag=false`; `--web.systemd-socket` (a plain switch
/// here) also takes kingpin's `=true|false` and `--no-` forms.
fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .filter_map(|a| {
            let a = match a.strip_prefix("--no-") {
                Some(flag) if NEGATABLE.contains(&flag) => format!("--{flag}=false"),
                _ => a,
            };
            match a.as_str() {
                "--web.systemd-socket=false" => None,
                "--web.systemd-socket=true" => Some("--web.systemd-socket".to_owned()),
                _ => Some(a),
            }
        })
        .collect()
}

impl Cli {
    /// Parses the process arguments.
    pub(crate) fn parse_from_env() -> Result<Cli, clap::Error> {
        Cli::parse_args(std::env::args())
    }

    /// Parses `args` (program name first).
    pub(crate) fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Cli, clap::Error> {
        // `--web.endpoint` was the metrics-path flag until v0.20.
        let command = Cli::command().mut_arg("telemetry_path", |a| a.alias("web.endpoint"));
        let matches = command.try_get_matches_from(normalize_args(args))?;
        Cli::from_arg_matches(&matches)
    }

    /// The collector settings; looks up `--backrest.user` and checks that the files named by
    /// `--backrest.config` and `--backrest.config-include-path` exist (pgBackRest would fail
    /// every collection otherwise).
    pub(crate) fn settings(&self) -> anyhow::Result<Settings> {
        let run_as = match &self.user {
            Some(name) if !name.is_empty() => RunAs::lookup(name).context("--backrest.user")?,
            _ => None,
        };
        for (flag, path, want_dir) in [
            ("--backrest.config", &self.config, false),
            (
                "--backrest.config-include-path",
                &self.config_include_path,
                true,
            ),
        ] {
            if path.is_empty() {
                continue;
            }
            let meta = std::fs::metadata(path).with_context(|| format!("{flag} {path}"))?;
            if meta.is_dir() != want_dir {
                anyhow::bail!(
                    "{flag} {path}: not a {}",
                    if want_dir { "directory" } else { "file" }
                );
            }
        }
        let interval = if self.collect_interval < 1 {
            warn!(
                interval = self.collect_interval,
                "--collect.interval below 1 second; using 1 second."
            );
            1
        } else {
            self.collect_interval.unsigned_abs()
        };
        Ok(Settings {
            binary: self.binary.clone().into(),
            run_as,
            timeout: Duration::from_secs(self.collect_timeout),
            interval: Duration::from_secs(interval),
            collect_info: self.collector_pgbackrest,
            config: self.config.clone(),
            config_include_path: self.config_include_path.clone(),
            stanza_include: self.stanza_include.clone(),
            stanza_exclude: self.stanza_exclude.clone(),
            backup_type: self.backup_type.clone(),
            database_count: self.database_count,
            database_parallel_processes: self.database_parallel_processes,
            database_count_latest: self.database_count_latest,
            reference_count: self.reference_count,
            verbose_wal: self.verbose_wal,
            backup_limit: self.backup_limit,
            wal_age: self.wal_age,
            time_zone: jiff_system_zone(),
        })
    }
}

/// The local zone (`TZ`, else `/etc/localtime`), as Go's `time.Local`.
fn jiff_system_zone() -> crate::settings::TimeZone {
    crate::settings::TimeZone::system()
}

/// Logs the configuration as upstream does at start-up.
pub(crate) fn log_settings(s: &Settings) {
    if !s.config.is_empty() {
        info!(file = %s.config, "Custom pgBackRest configuration file.");
    }
    if !s.config_include_path.is_empty() {
        info!(path = %s.config_include_path, "Custom path to additional pgBackRest configuration files.");
    }
    for stanza in s.stanza_include.iter().filter(|s| !s.is_empty()) {
        info!(stanza = %stanza, "Collecting metrics for specific stanza.");
    }
    for stanza in s.stanza_exclude.iter().filter(|s| !s.is_empty()) {
        info!(stanza = %stanza, "Exclude collecting metrics for specific stanza.");
    }
    if !s.backup_type.is_empty() {
        info!(r#type = %s.backup_type, "Collecting metrics for specific backup type.");
    }
    if s.reference_count {
        info!("Exposing the number of references to another backups (backup reference list).");
    }
    if s.database_count {
        info!(
            database_parallel_processes = s.database_parallel_processes,
            "Exposing the number of databases in backups."
        );
    }
    if s.database_count_latest {
        info!("Exposing the number of databases in the latest backups.");
    }
    if s.verbose_wal {
        info!("Enabling additional labels for WAL metrics.");
    }
    if s.backup_limit > 0 {
        info!(
            limit = s.backup_limit,
            "Per-backup series limited to the newest backups of each stanza and repository."
        );
    }
    match &s.run_as {
        Some(user) => info!(
            user = %user.name,
            uid = user.uid,
            "Running pgbackrest as the repository owner."
        ),
        None => info!("Running pgbackrest as the exporter's user."),
    }
    info!(
        binary = %s.binary.display(),
        interval_seconds = s.interval.as_secs(),
        timeout_seconds = s.timeout.as_secs(),
        "Collection settings."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["pgbackrest_exporter".to_owned()];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        Cli::parse_args(v).unwrap()
    }

    #[test]
    fn defaults_are_upstreams() {
        let cli = parse(&[]);
        assert_eq!(cli.web.telemetry_path, "/metrics");
        assert_eq!(cli.web.listen_addresses_or(":9854")[0].port(), 9854);
        assert_eq!(cli.collect_interval, 600);
        assert_eq!(cli.config, "");
        assert!(cli.stanza_include.is_empty() && cli.stanza_exclude.is_empty());
        assert!(!cli.database_count && !cli.database_count_latest);
        assert!(!cli.reference_count && !cli.verbose_wal);
        assert!(cli.collector_pgbackrest);
        assert_eq!(cli.database_parallel_processes, 1);
        assert_eq!(cli.log.level, "info");
        let s = cli.settings().unwrap();
        assert_eq!(s.interval, Duration::from_secs(600));
        assert_eq!(s.invocations(), [""]);
        assert!(s.run_as.is_none());
    }

    #[test]
    fn every_upstream_flag_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (conf, conf_d) = (
            dir.path().join("pgbackrest.conf"),
            dir.path().join("conf.d"),
        );
        std::fs::write(&conf, "[global]\n").unwrap();
        std::fs::create_dir(&conf_d).unwrap();
        let (conf, conf_d) = (conf.display().to_string(), conf_d.display().to_string());
        let cli = parse(&[
            "--web.listen-address=127.0.0.1:1",
            "--web.listen-address",
            ":2",
            "--web.telemetry-path=/m",
            "--web.config.file=/tmp/web.yml",
            "--web.systemd-socket",
            "--collect.interval=120",
            &format!("--backrest.config={conf}"),
            &format!("--backrest.config-include-path={conf_d}"),
            "--backrest.stanza-include=a",
            "--backrest.stanza-include",
            "b",
            "--backrest.stanza-exclude=b",
            "--backrest.backup-type=full",
            "--backrest.database-count",
            "--backrest.database-parallel-processes=4",
            "--backrest.database-count-latest=true",
            "--backrest.reference-count",
            "--backrest.verbose-wal",
            "--no-collector.pgbackrest",
            "--log.level=debug",
            "--log.format=json",
        ]);
        assert_eq!(cli.web.listen_addresses.len(), 2);
        assert_eq!(cli.web.telemetry_path, "/m");
        assert!(cli.web.systemd_socket);
        assert_eq!(cli.collect_interval, 120);
        assert_eq!(cli.stanza_include, ["a", "b"]);
        assert_eq!(cli.stanza_exclude, ["b"]);
        assert_eq!(cli.backup_type, "full");
        assert!(cli.database_count && cli.database_count_latest);
        assert!(cli.reference_count && cli.verbose_wal);
        assert!(!cli.collector_pgbackrest);
        assert_eq!(cli.database_parallel_processes, 4);
        let s = cli.settings().unwrap();
        assert_eq!(
            s.info_args("a", None).join(" "),
            format!(
                "info --output json --config {conf} --config-include-path {conf_d} --stanza a --type full"
            )
        );
    }

    #[test]
    fn kingpin_boolean_forms_and_old_endpoint_flag() {
        let cli = parse(&[
            "--no-backrest.database-count",
            "--backrest.verbose-wal=false",
            "--collector.pgbackrest=true",
            "--no-web.systemd-socket",
            "--web.endpoint=/old",
            "--no-backrest.wal-age",
        ]);
        assert!(!cli.database_count && !cli.verbose_wal && cli.collector_pgbackrest);
        assert!(!cli.web.systemd_socket);
        assert!(!cli.wal_age);
        assert_eq!(cli.web.telemetry_path, "/old");
        assert!(parse(&["--web.systemd-socket=true"]).web.systemd_socket);
        assert!(!parse(&["--web.systemd-socket=false"]).web.systemd_socket);
        assert!(
            Cli::parse_args(["x".to_owned(), "--backrest.bogus".to_owned()]).is_err(),
            "unknown flags are rejected"
        );
    }

    fn parse_error(args: &[&str]) -> String {
        let mut v = vec!["pgbackrest_exporter".to_owned()];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        Cli::parse_args(v).unwrap_err().to_string()
    }

    #[test]
    fn enumerations_and_formats_are_refused_at_start_with_what_is_allowed() {
        for t in ["full", "incr", "diff", ""] {
            let arg = format!("--backrest.backup-type={t}");
            assert_eq!(parse(&[&arg]).backup_type, t);
        }
        let e = parse_error(&["--backrest.backup-type=weird"]);
        assert!(
            e.contains("weird") && e.contains("full") && e.contains("incr") && e.contains("diff"),
            "{e}"
        );
        for (args, want) in [
            (&["--backrest.backup-type=FULL"][..], "FULL"),
            (&["--collect.interval=10s"], "not a whole number of seconds"),
            (&["--collect.timeout=0"], "at least 1"),
            (&["--collect.timeout=-5"], "at least 1"),
            (&["--backrest.database-parallel-processes=0"], "at least 1"),
            (&["--backrest.backup-limit=-1"], "backup-limit"),
            (&["--backrest.stanza-include=a/b"], "'/'"),
            (&["--backrest.stanza-include=a b"], "' '"),
            (&["--backrest.stanza-exclude=-x"], "starts with '-'"),
            (&["--backrest.verbose-wal=maybe"], "maybe"),
            (&["--log.level=trace"], "debug"),
        ] {
            let e = parse_error(args);
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let cli = parse(&[
            "--backrest.stanza-include=",
            "--backrest.stanza-include=demo-1_x.y",
        ]);
        assert_eq!(cli.stanza_include, ["", "demo-1_x.y"]);
        assert_eq!(parse(&["--collect.interval=-3"]).collect_interval, -3);
    }

    #[test]
    fn config_paths_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pgbackrest.conf");
        std::fs::write(&conf, "[global]\n").unwrap();
        let (conf, dir) = (conf.display().to_string(), dir.path().display().to_string());
        let ok = parse(&[
            &format!("--backrest.config={conf}"),
            &format!("--backrest.config-include-path={dir}"),
        ]);
        assert!(ok.settings().is_ok());
        for (args, want) in [
            (
                vec![format!("--backrest.config={dir}/missing.conf")],
                "--backrest.config",
            ),
            (vec![format!("--backrest.config={dir}")], "not a file"),
            (
                vec![format!("--backrest.config-include-path={conf}")],
                "not a directory",
            ),
            (
                vec![format!("--backrest.config-include-path={dir}/conf.d")],
                "--backrest.config-include-path",
            ),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let e = format!("{:#}", parse(&args).settings().unwrap_err());
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn our_flags() {
        let cli = parse(&[
            "--collect.timeout=5",
            "--backrest.binary=/opt/pgbackrest",
            "--backrest.backup-limit=3",
            "--collect.interval=0",
        ]);
        let s = cli.settings().unwrap();
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.binary, std::path::Path::new("/opt/pgbackrest"));
        assert_eq!(s.backup_limit, 3);
        assert_eq!(s.interval, Duration::from_secs(1));
        let bad = parse(&["--backrest.user=no-such-user-here"]);
        assert!(bad.settings().is_err());
    }
}
