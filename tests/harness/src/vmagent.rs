//! VictoriaMetrics' `vmagent` (`/usr/bin/vmagent`, shipped by Debian's `victoria-metrics`
//! package) scraping targets listed in `file_sd` files, as Pigsty writes them, and
//! remote-writing every sample to a [`VictoriaMetrics`](crate::VictoriaMetrics).
//!
//! Pigsty writes one file per instance under `targets/<job>/`, each a YAML list of groups with
//! the identity labels `{cls, ins, ip}` and the instance's agent addresses; the scrape config
//! names the job and the glob of its files. Here every group is written that way, and the
//! scrape config (JSON, which is valid YAML) has one `file_sd_configs` job per job name.
//!
//! ```no_run
//! use test_harness::vmagent::{FileSdGroup, VmAgent};
//! use test_harness::VictoriaMetrics;
//!
//! let vm = VictoriaMetrics::start(&[]).unwrap();
//! let group = FileSdGroup::new("pgsql", "pg-test-1")
//!     .label("cls", "pg-test")
//!     .label("ip", "127.0.0.1")
//!     .target("127.0.0.1:9630");
//! let agent = VmAgent::start(&vm.remote_write_url(), &[group]).unwrap();
//! vm.wait_for_up("pgsql", std::time::Duration::from_secs(30)).unwrap();
//! # drop(agent);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::ports::{LOCALHOST, free_port};
use crate::privileges::ServiceDir;
use crate::process::ManagedChild;
use crate::versions::require_binary;
use crate::victoria_metrics::{ScrapeTarget, spawn_until_healthy};

/// Where Debian's `victoria-metrics` package installs vmagent.
pub const VMAGENT_BIN: &str = "/usr/bin/vmagent";
/// The job name under which a VictoriaMetrics scrapes vmagent's own `/metrics`.
pub const VMAGENT_JOB: &str = "vmagent";

const START_ATTEMPTS: usize = 5;

/// One `file_sd` group: the targets of one instance under one job, with its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSdGroup {
    /// The scrape job (`pgsql`, `node`, …): the directory `targets/<job>/` it is written to.
    pub job: String,
    /// The file name without `.yml` (Pigsty uses the instance name).
    pub name: String,
    /// The group's labels (Pigsty: `cls`, `ins`, `ip`); `ins` is set to `name`.
    pub labels: BTreeMap<String, String>,
    /// `host:port` of each target.
    pub targets: Vec<String>,
}

impl FileSdGroup {
    /// A group of job `job` for instance `ins` (its file name and `ins` label), no target yet.
    pub fn new(job: &str, ins: &str) -> Self {
        Self {
            job: job.to_owned(),
            name: ins.to_owned(),
            labels: BTreeMap::from([("ins".to_owned(), ins.to_owned())]),
            targets: Vec::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Adds a target `host:port`.
    pub fn target(mut self, address: &str) -> Self {
        self.targets.push(address.to_owned());
        self
    }

    /// The file's text, as Pigsty writes it: a comment naming the instance, then one group.
    fn to_file(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {}", json!(v)))
            .collect();
        let targets: Vec<String> = self.targets.iter().map(|t| json!(t).to_string()).collect();
        format!(
            "# {}\n- labels: {{ {} }}\n  targets: [ {} ]\n",
            self.name,
            labels.join(", "),
            targets.join(", ")
        )
    }
}

/// A running vmagent.
#[derive(Debug)]
pub struct VmAgent {
    port: u16,
    targets_dir: PathBuf,
    child: ManagedChild,
    _dir: ServiceDir,
}

impl VmAgent {
    /// Writes `groups` as `file_sd` files, starts vmagent on a free port scraping them every
    /// second and remote-writing to `remote_write_url`, and waits for its `/health`.
    pub fn start(remote_write_url: &str, groups: &[FileSdGroup]) -> Result<Self> {
        let binary = require_binary(Path::new(VMAGENT_BIN), "victoria-metrics")?;
        let dir = ServiceDir::new("pgsuite-vmagent-", false)?;
        let targets_dir = dir.path().join("targets");
        let mut jobs: Vec<&str> = groups.iter().map(|g| g.job.as_str()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        for group in groups {
            let job_dir = targets_dir.join(&group.job);
            std::fs::create_dir_all(&job_dir)
                .with_context(|| format!("cannot create {}", job_dir.display()))?;
            let file = job_dir.join(format!("{}.yml", group.name));
            std::fs::write(&file, group.to_file())
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        let scrape_configs: Vec<Value> = jobs
            .iter()
            .map(|job| {
                json!({
                    "job_name": job,
                    "file_sd_configs": [{
                        "files": [targets_dir.join(job).join("*.yml")],
                    }],
                })
            })
            .collect();
        let config = dir.path().join("vmagent.json");
        let text = serde_json::to_string_pretty(&json!({
            "global": { "scrape_interval": "1s", "scrape_timeout": "1s" },
            "scrape_configs": scrape_configs,
        }))
        .context("cannot render vmagent's scrape config")?;
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;

        let log = dir.path().join("vmagent.log");
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let mut cmd = Command::new(&binary);
            cmd.current_dir(dir.path())
                .arg(format!("-httpListenAddr={LOCALHOST}:{port}"))
                .arg(format!("-promscrape.config={}", config.display()))
                .arg("-promscrape.fileSDCheckInterval=1s")
                .arg(format!("-remoteWrite.url={remote_write_url}"))
                .arg(format!(
                    "-remoteWrite.tmpDataPath={}",
                    dir.path().join("remotewrite-data").display()
                ))
                .arg("-remoteWrite.flushInterval=200ms")
                .arg("-memory.allowedPercent=5");
            let health = format!("http://{LOCALHOST}:{port}/health");
            match spawn_until_healthy("vmagent", &mut cmd, &log, &health) {
                Ok(child) => {
                    return Ok(Self {
                        port,
                        targets_dir,
                        child,
                        _dir: dir,
                    });
                }
                Err(e) if format!("{e:#}").contains("address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context("cannot start vmagent: every port tried was taken")
    }

    /// vmagent's own `/metrics`, as a target for VictoriaMetrics (job [`VMAGENT_JOB`]).
    pub fn self_target(&self) -> ScrapeTarget {
        ScrapeTarget::local(VMAGENT_JOB, self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{LOCALHOST}:{}", self.port)
    }

    /// The directory holding `<job>/<instance>.yml`.
    pub fn targets_dir(&self) -> &Path {
        &self.targets_dir
    }

    /// vmagent's log file.
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_written_as_pigsty_writes_it() {
        let group = FileSdGroup::new("pgsql", "pg-test-1")
            .label("cls", "pg-test")
            .label("ip", "127.0.0.1")
            .target("127.0.0.1:9630")
            .target("127.0.0.1:9631");
        assert_eq!(
            group.to_file(),
            "# pg-test-1\n\
             - labels: { cls: \"pg-test\", ins: \"pg-test-1\", ip: \"127.0.0.1\" }\n  \
             targets: [ \"127.0.0.1:9630\", \"127.0.0.1:9631\" ]\n"
        );
    }
}
