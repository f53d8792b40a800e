//! Background collection: `pgbackrest version` and `pgbackrest info --output json` (plus the
//! optional `--set` and `repo-ls` calls) once at start and then every `--collect.interval`
//! seconds after the previous run finished, never per scrape. Scrapes render the stored
//! [`State`].
//!
//! A failed run (pgbackrest missing, non-zero exit, timeout, output that is not a JSON array)
//! sets `pgbackrest_exporter_status` to 0, logs one line naming the cause and keeps the last
//! good data, whose age stays visible (`pgbackrest_exporter_data_age_seconds`,
//! `pgbackrest_exporter_last_success_timestamp_seconds`). Parts of the output that do not parse
//! are left out (and also set the status to 0); everything else is served fresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};
use tracing::{error, info, warn};

use crate::command::{RunAs, Runner};

use crate::info::{self, Backup, Info, Stanza};
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

    fn exclude_given(&self) -> bool {
        !self.stanza_exclude.concat().is_empty()
    }

    fn excluded(&self, stanza: &str) -> bool {
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
    fn config_args(&self) -> Vec<String> {
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

/// The newest archived WAL segment of one repository, as `repo-ls` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalArchived {
    /// `repo-key` of the archive.
    pub repo_key: i64,
    /// `database.id` of the archive (the newest in that repository).
    pub database_id: i64,
    /// PostgreSQL version of that database.
    pub pg_version: String,
    /// Modification time of the segment file, Unix seconds.
    pub timestamp: i64,
}

/// A stanza with what the extra calls found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectedStanza {
    /// The parsed `info` of the stanza.
    pub stanza: Stanza,
    /// `--backrest.database-count`: databases per backup label (0 where `--set` failed).
    pub databases: HashMap<String, u64>,
    /// `--backrest.database-count-latest`: databases per label of the "last" backups.
    pub last_databases: HashMap<String, u64>,
    /// Newest archived WAL per repository.
    pub wal_archived: Vec<WalArchived>,
}

/// The data of one invocation's last successful `info` call.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationData {
    /// When the `info` call finished.
    pub collected_at: SystemTime,
    /// The stanzas, excluded ones removed.
    pub stanzas: Vec<CollectedStanza>,
}

/// One entry of the include list (or the single all-stanzas call).
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationState {
    /// The `stanza` label of `pgbackrest_exporter_status`.
    pub label: String,
    /// `pgbackrest_exporter_status` of the last run; `None` before the first.
    pub status: Option<bool>,
    /// The end of the last run with status 1.
    pub last_success: Option<SystemTime>,
    /// The data served: from the last run whose output parsed.
    pub data: Option<InvocationData>,
    /// Why the last run failed, if it did.
    pub last_error: Option<String>,
}

/// Everything a scrape renders.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// `pgbackrest_version_info` (0 when `version --output num` gives no number, as upstream).
    pub version_info: Option<u64>,
    /// Per invocation, in include-list order.
    pub invocations: Vec<InvocationState>,
    /// Completed collection runs.
    pub collections_total: u64,
    /// Duration of the last collection run.
    pub last_duration: Option<Duration>,
    /// pgbackrest runs killed after the timeout.
    pub timeouts_total: u64,
}

impl State {
    /// The state before the first run.
    pub fn new(settings: &Settings) -> State {
        let invocations = if settings.collect_info {
            settings
                .invocations()
                .iter()
                .map(|inv| InvocationState {
                    label: settings.status_label(inv),
                    status: None,
                    last_success: None,
                    data: None,
                    last_error: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        State {
            version_info: None,
            invocations,
            collections_total: 0,
            last_duration: None,
            timeouts_total: 0,
        }
    }

    /// Records a parsed `info` output for the invocation labelled `label` (used by the
    /// collector, and by tests to render fixtures).
    /// `problems` names the parts left out (status 0), `None` for a clean run.
    pub fn record_info(
        &mut self,
        label: &str,
        stanzas: Vec<CollectedStanza>,
        problems: Option<String>,
        at: SystemTime,
    ) {
        let inv = self.invocation_mut(label);
        inv.status = Some(problems.is_none());
        if problems.is_none() {
            inv.last_success = Some(at);
        }
        inv.last_error = problems;
        inv.data = Some(InvocationData {
            collected_at: at,
            stanzas,
        });
    }

    /// Records a failed run: status 0, the last good data kept.
    pub fn record_failure(&mut self, label: &str, cause: String) {
        let inv = self.invocation_mut(label);
        inv.status = Some(false);
        inv.last_error = Some(cause);
    }

    fn invocation_mut(&mut self, label: &str) -> &mut InvocationState {
        if let Some(i) = self.invocations.iter().position(|i| i.label == label) {
            return &mut self.invocations[i];
        }
        self.invocations.push(InvocationState {
            label: label.to_owned(),
            status: None,
            last_success: None,
            data: None,
            last_error: None,
        });
        self.invocations.last_mut().expect("just pushed")
    }
}

/// The three "last backup" slots of a stanza: full; full or diff; any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastBackups<'a> {
    /// Newest full backup.
    pub full: Option<&'a Backup>,
    /// Newest full or differential backup.
    pub diff: Option<&'a Backup>,
    /// Newest backup of any type.
    pub incr: Option<&'a Backup>,
}

impl<'a> LastBackups<'a> {
    /// Upstream's rule: walking the backups, a full updates all three slots if it stopped
    /// later, a diff the diff and incr slots, an incr the incr slot.
    pub fn of(backups: &'a [Backup]) -> LastBackups<'a> {
        let mut last = LastBackups::default();
        let newer = |slot: &Option<&Backup>, b: &Backup| {
            slot.is_none_or(|s| b.timestamp.stop > s.timestamp.stop)
        };
        for b in backups {
            let (full, diff, incr) = match b.kind.as_str() {
                "full" => (true, true, true),
                "diff" => (false, true, true),
                "incr" => (false, false, true),
                _ => (false, false, false),
            };
            if full && newer(&last.full, b) {
                last.full = Some(b);
            }
            if diff && newer(&last.diff, b) {
                last.diff = Some(b);
            }
            if incr && newer(&last.incr, b) {
                last.incr = Some(b);
            }
        }
        last
    }

    /// `(backup_type, backup)` for the three slots, if a full backup exists (upstream emits the
    /// `*_last_*` metrics only then).
    pub fn slots(&self) -> Option<[(&'static str, &'a Backup); 3]> {
        let full = self.full?;
        Some([
            ("full", full),
            ("diff", self.diff.unwrap_or(full)),
            ("incr", self.incr.unwrap_or(full)),
        ])
    }
}

/// The backups that get per-backup series: all, or the newest `limit` per repository.
pub fn limited_backups(backups: &[Backup], limit: usize) -> Vec<&Backup> {
    if limit == 0 {
        return backups.iter().collect();
    }
    let mut keep = vec![false; backups.len()];
    let mut by_repo: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, b) in backups.iter().enumerate() {
        by_repo.entry(b.database.repo_key).or_default().push(i);
    }
    for list in by_repo.values_mut() {
        list.sort_by(|&a, &b| {
            let (a, b) = (&backups[a], &backups[b]);
            (b.timestamp.stop, &b.label).cmp(&(a.timestamp.stop, &a.label))
        });
        for &i in list.iter().take(limit) {
            keep[i] = true;
        }
    }
    // Output order stays pgBackRest's.
    backups
        .iter()
        .zip(keep)
        .filter_map(|(b, k)| k.then_some(b))
        .collect()
}

/// Runs collections and holds their [`State`].
#[derive(Debug)]
pub struct Collector {
    settings: Settings,
    runner: Arc<Runner>,
    state: RwLock<State>,
    trigger: Notify,
    /// Serializes runs (the loop and [`Collector::collect_once`] callers).
    running: tokio::sync::Mutex<()>,
    /// Failure causes already logged, to log a persisting failure once per change.
    last_logged: Mutex<HashMap<String, String>>,
}

impl Collector {
    /// A collector; nothing runs until [`Collector::run`] or [`Collector::collect_once`].
    pub fn new(settings: Settings) -> Arc<Collector> {
        let runner = Arc::new(Runner::new(
            settings.binary.clone(),
            settings.run_as.clone(),
            settings.timeout,
        ));
        Arc::new(Collector {
            state: RwLock::new(State::new(&settings)),
            settings,
            runner,
            trigger: Notify::new(),
            running: tokio::sync::Mutex::new(()),
            last_logged: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A copy of the current state.
    pub fn state(&self) -> State {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Renders the metrics as of `now` (ages are computed here, at scrape time).
    pub fn render(&self, now: SystemTime) -> String {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        crate::metrics::render(&state, &self.settings, now)
    }

    /// Asks the loop to collect now (e.g. on SIGHUP).
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    /// Collects once at start and then every interval (or when triggered), until `shutdown`
    /// resolves; a run in progress is abandoned then and its process group killed.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = self.collect_once() => {}
                () = &mut shutdown => return,
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.interval) => {}
                () = self.trigger.notified() => {
                    info!("Collection triggered.");
                }
                () = &mut shutdown => return,
            }
        }
    }

    /// One collection run.
    pub async fn collect_once(&self) {
        let _running = self.running.lock().await;
        let started = Instant::now();
        let version = self.version().await;
        self.with_state(|s| s.version_info = Some(version));
        if self.settings.collect_info {
            for invocation in self.settings.invocations() {
                self.collect_invocation(&invocation).await;
            }
        }
        let timeouts = self.runner.timeouts_total();
        self.with_state(|s| {
            s.collections_total += 1;
            s.last_duration = Some(started.elapsed());
            s.timeouts_total = timeouts;
        });
    }

    fn with_state(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// `pgbackrest version --output num`: the number, or 0 (also for the text that
    /// pgBackRest < 2.55 prints), as upstream.
    async fn version(&self) -> u64 {
        let args = ["version", "--output", "num"].map(str::to_owned);
        match self.runner.run(&args).await {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            Err(e) => {
                self.log_aux_failure("version", &e.to_string());
                0
            }
        }
    }

    async fn collect_invocation(&self, invocation: &str) {
        let label = self.settings.status_label(invocation);
        if !invocation.is_empty() && self.settings.excluded(invocation) {
            warn!(
                stanza = invocation,
                "Stanza is specified in include and exclude lists; not collected."
            );
            self.with_state(|s| {
                s.record_failure(&label, "stanza is in the exclude list".into());
                if let Some(i) = s.invocations.iter_mut().find(|i| i.label == label) {
                    i.data = None;
                }
            });
            return;
        }
        let args = self.settings.info_args(invocation, None);
        let result = match self.runner.run(&args).await {
            Ok(out) => {
                if !out.stderr.is_empty() {
                    warn!(stanza = %label, stderr = %out.stderr, "pgBackRest message.");
                }
                info::parse(&out.stdout).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let info = match result {
            Ok(info) => info,
            Err(cause) => {
                self.log_failure(&label, &format!("{cause}; serving the last good values"));
                self.with_state(|s| s.record_failure(&label, cause));
                return;
            }
        };
        let Info { stanzas, problems } = info;
        let problems = if problems.is_empty() {
            self.log_recovery(&label);
            None
        } else {
            let joined: Vec<String> = problems.iter().map(ToString::to_string).collect();
            let cause = format!(
                "parts of the pgbackrest info output could not be parsed and are left out: {}",
                joined.join("; ")
            );
            self.log_failure(&label, &cause);
            Some(cause)
        };
        let mut collected = Vec::new();
        for stanza in stanzas {
            if self.settings.excluded(&stanza.name) {
                continue;
            }
            collected.push(self.extras(stanza).await);
        }
        let at = SystemTime::now();
        self.with_state(|s| s.record_info(&label, collected, problems, at));
    }

    /// The `--set` and `repo-ls` calls for one stanza.
    async fn extras(&self, stanza: Stanza) -> CollectedStanza {
        let mut collected = CollectedStanza::default();
        if self.settings.database_count {
            let labels: Vec<String> = limited_backups(&stanza.backups, self.settings.backup_limit)
                .iter()
                .map(|b| b.label.clone())
                .collect();
            collected.databases = self.database_counts(&stanza.name, labels).await;
        }
        if self.settings.database_count_latest
            && let Some(slots) = LastBackups::of(&stanza.backups).slots()
        {
            let mut labels: Vec<String> = slots.iter().map(|(_, b)| b.label.clone()).collect();
            labels.dedup();
            for label in labels {
                let n = match collected.databases.get(&label) {
                    Some(n) => *n,
                    None => self.database_count(&stanza.name, &label).await,
                };
                collected.last_databases.insert(label, n);
            }
        }
        if self.settings.wal_age {
            collected.wal_archived = self.wal_archived(&stanza).await;
        }
        collected.stanza = stanza;
        collected
    }

    async fn database_counts(&self, stanza: &str, labels: Vec<String>) -> HashMap<String, u64> {
        let permits = Arc::new(Semaphore::new(
            self.settings.database_parallel_processes.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for label in labels {
            let permits = permits.clone();
            let runner = self.runner.clone();
            let args = self.settings.info_args(stanza, Some(&label));
            let stanza = stanza.to_owned();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let n = count_databases(&runner, &args, &stanza, &label).await;
                (label, n)
            });
        }
        let mut counts = HashMap::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok((label, n)) = done {
                counts.insert(label, n);
            }
        }
        counts
    }

    async fn database_count(&self, stanza: &str, label: &str) -> u64 {
        let args = self.settings.info_args(stanza, Some(label));
        count_databases(&self.runner, &args, stanza, label).await
    }

    /// For each repository, the modification time of the newest segment of the newest archive.
    async fn wal_archived(&self, stanza: &Stanza) -> Vec<WalArchived> {
        let mut newest: BTreeMap<i64, &info::Archive> = BTreeMap::new();
        for a in &stanza.archives {
            if a.max.as_deref().is_none_or(str::is_empty) {
                continue;
            }
            let slot = newest.entry(a.database.repo_key).or_insert(a);
            if a.database.id > slot.database.id {
                *slot = a;
            }
        }
        let mut out = Vec::new();
        for (repo_key, archive) in newest {
            let Some(max) = archive.max.as_deref() else {
                continue;
            };
            if max.len() < 16
                || !max.bytes().all(|c| c.is_ascii_hexdigit())
                || archive.id.contains('/')
            {
                continue;
            }
            let mut args: Vec<String> = ["repo-ls", "--output", "json"].map(str::to_owned).into();
            args.extend(self.settings.config_args());
            if stanza.repos.is_some() && repo_key > 0 {
                args.push(format!("--repo={repo_key}"));
            }
            args.push(format!("--filter=^{max}"));
            args.push(format!(
                "archive/{}/{}/{}",
                stanza.name,
                archive.id,
                &max[..16]
            ));
            match self.runner.run(&args).await {
                Ok(listing) => match newest_file_time(&listing.stdout) {
                    Some(timestamp) => out.push(WalArchived {
                        repo_key,
                        database_id: archive.database.id,
                        pg_version: pg_version(stanza, archive.database.id, repo_key),
                        timestamp,
                    }),
                    None => warn!(
                        stanza = %stanza.name,
                        repo_key,
                        segment = max,
                        "repo-ls did not list the newest archived WAL segment."
                    ),
                },
                Err(e) => {
                    self.log_aux_failure(
                        &format!("repo-ls {}/{repo_key}", stanza.name),
                        &e.to_string(),
                    );
                }
            }
        }
        out
    }

    /// Logs a failure once per distinct cause and subject (a persisting failure is not
    /// repeated every interval; a change of cause is logged).
    fn log_failure(&self, subject: &str, cause: &str) {
        if self.first_report(subject, cause) {
            error!(
                stanza = subject,
                error = cause,
                "pgBackRest collection failed."
            );
        }
    }

    /// The same for the auxiliary calls (`version`, `repo-ls`): a warning, since the
    /// collection itself does not depend on them.
    fn log_aux_failure(&self, subject: &str, cause: &str) {
        if self.first_report(subject, cause) {
            warn!(
                call = subject,
                error = cause,
                "Auxiliary pgbackrest call failed."
            );
        }
    }

    /// Whether `cause` is new for `subject` (and remembers it).
    fn first_report(&self, subject: &str, cause: &str) -> bool {
        let mut logged = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.get(subject).map(String::as_str) == Some(cause) {
            tracing::debug!(subject, error = cause, "Still failing.");
            return false;
        }
        logged.insert(subject.to_owned(), cause.to_owned());
        true
    }

    fn log_recovery(&self, subject: &str) {
        let mut logged = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.remove(subject).is_some() {
            info!(stanza = subject, "pgBackRest collection recovered.");
        }
    }
}

/// `pg_version` label: the `db[]` entry with that id and repo key, else empty.
pub fn pg_version(stanza: &Stanza, id: i64, repo_key: i64) -> String {
    stanza
        .dbs
        .iter()
        .find(|d| d.id == id && d.repo_key == repo_key)
        .map(|d| d.version.clone())
        .unwrap_or_default()
}

/// The length of `database-ref` of the backup in an `info --set` output, 0 when absent (as
/// upstream).
pub fn databases_in(info: &Info) -> u64 {
    info.stanzas
        .first()
        .and_then(|s| s.backups.first())
        .and_then(|b| b.database_ref.as_ref())
        .map_or(0, |d| d.len() as u64)
}

/// `info --set <label>`: [`databases_in`] its output, 0 when unavailable (as upstream).
async fn count_databases(runner: &Runner, args: &[String], stanza: &str, label: &str) -> u64 {
    match runner.run(args).await {
        Ok(out) => match info::parse(&out.stdout) {
            Ok(info) => databases_in(&info),
            Err(e) => {
                warn!(stanza, backup = label, error = %e, "Cannot parse pgbackrest info --set.");
                0
            }
        },
        Err(e) => {
            warn!(stanza, backup = label, error = %e, "pgbackrest info --set failed.");
            0
        }
    }
}

/// The newest `time` of the files in `repo-ls --output json`.
fn newest_file_time(stdout: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct Entry {
        #[serde(rename = "type", default)]
        kind: String,
        time: Option<i64>,
    }
    let entries: BTreeMap<String, Entry> = serde_json::from_slice(stdout).ok()?;
    entries
        .into_values()
        .filter(|e| e.kind == "file")
        .filter_map(|e| e.time)
        .max()
}

/// For tests and callers that render without running anything: wraps parsed stanzas.
pub fn collected(info: Info) -> Vec<CollectedStanza> {
    info.stanzas
        .into_iter()
        .map(|stanza| CollectedStanza {
            stanza,
            ..CollectedStanza::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(label: &str, kind: &str, stop: i64, repo: i64) -> Backup {
        let mut b = Backup {
            label: label.into(),
            kind: kind.into(),
            ..Backup::default()
        };
        b.timestamp.stop = stop;
        b.database.repo_key = repo;
        b
    }

    #[test]
    fn last_backup_rule_of_upstream() {
        let list = [
            backup("F1", "full", 10, 1),
            backup("I1", "incr", 20, 1),
            backup("D1", "diff", 30, 1),
        ];
        let last = LastBackups::of(&list);
        let slots = last.slots().unwrap();
        assert_eq!(
            slots.map(|(t, b)| (t, b.label.as_str())),
            [("full", "F1"), ("diff", "D1"), ("incr", "D1")]
        );
        // Only a full: all three are the full.
        let only = [backup("F1", "full", 10, 1)];
        let slots = LastBackups::of(&only).slots().unwrap();
        assert!(slots.iter().all(|(_, b)| b.label == "F1"));
        // No full: no slots.
        assert!(
            LastBackups::of(&[backup("I", "incr", 1, 1)])
                .slots()
                .is_none()
        );
    }

    #[test]
    fn backup_limit_keeps_the_newest_per_repository() {
        let list = [
            backup("a", "full", 1, 1),
            backup("b", "incr", 2, 1),
            backup("c", "full", 3, 2),
            backup("d", "incr", 4, 1),
            backup("e", "incr", 5, 2),
        ];
        let kept: Vec<&str> = limited_backups(&list, 2)
            .iter()
            .map(|b| b.label.as_str())
            .collect();
        assert_eq!(kept, ["b", "c", "d", "e"]);
        assert_eq!(limited_backups(&list, 0).len(), 5);
    }

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

    #[test]
    fn repo_ls_newest_file() {
        let out = br#"{"000000010000000000000022-abc.gz":{"type":"file","size":10,"time":1795640035},"000000010000000000000022.partial":{"type":"file","size":1,"time":1795640030},".":{"type":"path"}}"#;
        assert_eq!(newest_file_time(out), Some(1_795_640_035));
        assert_eq!(newest_file_time(b"{}"), None);
        assert_eq!(newest_file_time(b"junk"), None);
    }
}
