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
use std::time::{Instant, SystemTime};

use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};
use tracing::{error, info, warn};

use crate::command::Runner;
use crate::info::{self, Info, Stanza};
use crate::settings::Settings;
use crate::state::{
    CollectedStanza, LastBackups, State, WalArchived, databases_in, limited_backups, pg_version,
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ls_newest_file() {
        let out = br#"{"000000010000000000000022-abc.gz":{"type":"file","size":10,"time":1795640035},"000000010000000000000022.partial":{"type":"file","size":1,"time":1795640030},".":{"type":"path"}}"#;
        assert_eq!(newest_file_time(out), Some(1_795_640_035));
        assert_eq!(newest_file_time(b"{}"), None);
        assert_eq!(newest_file_time(b"junk"), None);
    }
}
