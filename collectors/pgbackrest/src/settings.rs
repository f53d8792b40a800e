//! What to collect and how: [`Settings`], from the flags of pgbackrest_exporter v0.23 plus ours,
//! and the pgbackrest command lines they make.

use std::time::Duration;

use crate::command::RunAs;

/// The time zone of the `start_time`/`stop_time` labels.
pub use jiff::tz::TimeZone;

/// The stanza label of `pgbackrest_exporter_status` when all stanzas are fetched.
pub const ALL_STANZAS: &str = "all-stanzas";
/// The same when an exclude list is given.
pub const ALL_STANZAS_EXCEPT_EXCLUDED: &str = "all-stanzas-except-excluded";

/// What to collect and how; the flags of pgbackrest_exporter v0.23 plus ours.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--backrest.binary` (ours): the pgbackrest program.
    pub binary: std::path::PathBuf,
    /// `--backrest.user` (ours): run pgbackrest as this user (needs root).
    pub run_as: Option<RunAs>,
    /// `--collect.timeout` (ours): per pgbackrest run.
    pub timeout: Duration,
    /// `--collect.interval`: pause between the end of a run and the next.
    pub interval: Duration,
    /// `--[no-]collector.pgbackrest`: run `pgbackrest info` at all.
    pub collect_info: bool,
    /// `--backrest.config` (`--config`), empty for pgBackRest's default.
    pub config: String,
    /// `--backrest.config-include-path` (`--config-include-path`).
    pub config_include_path: String,
    /// `--backrest.stanza-include`; empty or `[""]` = all stanzas in one call.
    pub stanza_include: Vec<String>,
    /// `--backrest.stanza-exclude`.
    pub stanza_exclude: Vec<String>,
    /// `--backrest.backup-type` (`--type`).
    pub backup_type: String,
    /// `--backrest.database-count`: `info --set` per backup for `pgbackrest_backup_databases`.
    pub database_count: bool,
    /// `--backrest.database-parallel-processes`.
    pub database_parallel_processes: usize,
    /// `--backrest.database-count-latest`: `pgbackrest_backup_last_databases`.
    pub database_count_latest: bool,
    /// `--backrest.reference-count`: `pgbackrest_backup_references`.
    pub reference_count: bool,
    /// `--backrest.verbose-wal`: WAL min/max as labels.
    pub verbose_wal: bool,
    /// `--backrest.backup-limit` (ours): per-backup series only for the newest N backups of each
    /// stanza and repository (0 = all, as upstream).
    pub backup_limit: usize,
    /// `--[no-]backrest.wal-age` (ours): `repo-ls` the newest archived WAL segment for its age.
    pub wal_age: bool,
    /// Zone of the `start_time`/`stop_time` labels (the local zone, as upstream).
    pub time_zone: TimeZone,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            binary: "pgbackrest".into(),
            run_as: None,
            timeout: Duration::from_secs(120),
            interval: Duration::from_secs(600),
            collect_info: true,
            config: String::new(),
            config_include_path: String::new(),
            stanza_include: Vec::new(),
            stanza_exclude: Vec::new(),
            backup_type: String::new(),
            database_count: false,
            database_parallel_processes: 1,
            database_count_latest: false,
            reference_count: false,
            verbose_wal: false,
            backup_limit: 0,
            wal_age: true,
            time_zone: TimeZone::UTC,
        }
    }
}

impl Settings {
    /// One `info` call per entry: the include list, or one call for all stanzas.
    pub fn invocations(&self) -> Vec<String> {
        if self.stanza_include.concat().is_empty() {
            vec![String::new()]
        } else {
            self.stanza_include.clone()
        }
    }

    pub(crate) fn exclude_given(&self) -> bool {
        !self.stanza_exclude.concat().is_empty()
    }

    /// Whether `stanza` is in the exclude list.
    pub fn excluded(&self, stanza: &str) -> bool {
        self.exclude_given() && self.stanza_exclude.iter().any(|s| s == stanza)
    }

    /// The `stanza` label of `pgbackrest_exporter_status` for an invocation.
    pub fn status_label(&self, invocation: &str) -> String {
        match (invocation.is_empty(), self.exclude_given()) {
            (false, _) => invocation.to_owned(),
            (true, true) => ALL_STANZAS_EXCEPT_EXCLUDED.to_owned(),
            (true, false) => ALL_STANZAS.to_owned(),
        }
    }

    /// `--config C --config-include-path P`, as given.
    pub fn config_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if !self.config.is_empty() {
            args.extend(["--config".to_owned(), self.config.clone()]);
        }
        if !self.config_include_path.is_empty() {
            args.extend([
                "--config-include-path".to_owned(),
                self.config_include_path.clone(),
            ]);
        }
        args
    }

    /// `info --output json [config] [--stanza S] [--type T] [--set L]`, in upstream's order.
    pub fn info_args(&self, stanza: &str, set: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> = ["info", "--output", "json"].map(str::to_owned).into();
        args.extend(self.config_args());
        if !stanza.is_empty() {
            args.extend(["--stanza".to_owned(), stanza.to_owned()]);
        }
        match set {
            // Upstream passes no --type with --set.
            Some(label) => args.extend(["--set".to_owned(), label.to_owned()]),
            None if !self.backup_type.is_empty() => {
                args.extend(["--type".to_owned(), self.backup_type.clone()]);
            }
            None => {}
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_in_upstream_order() {
        let s = Settings {
            config: "/c.conf".into(),
            config_include_path: "/c.d".into(),
            backup_type: "full".into(),
            ..Settings::default()
        };
        assert_eq!(
            s.info_args("demo", None).join(" "),
            "info --output json --config /c.conf --config-include-path /c.d --stanza demo --type full"
        );
        assert_eq!(
            s.info_args("demo", Some("L")).join(" "),
            "info --output json --config /c.conf --config-include-path /c.d --stanza demo --set L"
        );
        assert_eq!(
            Settings::default().info_args("", None).join(" "),
            "info --output json"
        );
    }

    #[test]
    fn status_labels() {
        let mut s = Settings::default();
        assert_eq!(s.invocations(), [""]);
        assert_eq!(s.status_label(""), ALL_STANZAS);
        s.stanza_exclude = vec!["x".into()];
        assert_eq!(s.status_label(""), ALL_STANZAS_EXCEPT_EXCLUDED);
        s.stanza_include = vec!["a".into(), "b".into()];
        assert_eq!(s.invocations(), ["a", "b"]);
        assert_eq!(s.status_label("a"), "a");
        assert!(s.excluded("x") && !s.excluded("a"));
    }
}
