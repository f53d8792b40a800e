//! VictoriaMetrics single-node (`/usr/bin/victoria-metrics`, Debian package `victoria-metrics`)
//! scraping given targets, for end-to-end checks of what the exporters expose.
//!
//! It runs as the current user (no database user needed) with its own storage directory, a free
//! port on 127.0.0.1 and a generated `-promscrape.config` (JSON, which is valid YAML) scraping
//! every target at a short interval (1 s by default). Queries see fresh samples at once
//! (`-search.latencyOffset=0s`, `-search.disableCache`, and a `/internal/force_flush` before
//! each query). Stopped on `Drop` or by the reaper.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::http;
use crate::ports::{LOCALHOST, free_port};
use crate::privileges::ServiceDir;
use crate::process::ManagedChild;
use crate::util::{poll, tail_file};
use crate::versions::require_binary;

/// Where Debian's `victoria-metrics` package installs the binary.
pub const VICTORIA_METRICS_BIN: &str = "/usr/bin/victoria-metrics";
/// The job name of VictoriaMetrics scraping its own `/metrics`.
pub const SELF_JOB: &str = "victoria-metrics";

const START_ATTEMPTS: usize = 5;

/// One scrape target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// `job_name` (also the `job` label).
    pub job: String,
    /// `host:port`.
    pub address: String,
    /// `metrics_path` (default `/metrics`).
    pub metrics_path: String,
    /// `http` (default) or `https`.
    pub scheme: String,
    /// For `https`: skip certificate verification.
    pub insecure_skip_verify: bool,
    /// For `https`: CA file to verify the target with.
    pub ca_file: Option<PathBuf>,
    /// Basic-auth user name and password.
    pub basic_auth: Option<(String, String)>,
}

impl ScrapeTarget {
    /// A plain-HTTP target `address` (`host:port`) scraped at `/metrics` under job `job`.
    pub fn new(job: &str, address: &str) -> Self {
        Self {
            job: job.to_owned(),
            address: address.to_owned(),
            metrics_path: "/metrics".to_owned(),
            scheme: "http".to_owned(),
            insecure_skip_verify: false,
            ca_file: None,
            basic_auth: None,
        }
    }

    /// A target on 127.0.0.1 at `port`.
    pub fn local(job: &str, port: u16) -> Self {
        Self::new(job, &format!("{LOCALHOST}:{port}"))
    }

    /// Sets the metrics path.
    pub fn path(mut self, path: &str) -> Self {
        path.clone_into(&mut self.metrics_path);
        self
    }

    /// Scrapes over HTTPS, verifying with `ca_file` or, when `None`, not verifying at all.
    pub fn https(mut self, ca_file: Option<&Path>) -> Self {
        "https".clone_into(&mut self.scheme);
        self.ca_file = ca_file.map(Path::to_owned);
        self.insecure_skip_verify = ca_file.is_none();
        self
    }

    /// Sends basic-auth credentials.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// The URL this target is scraped at.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.address, self.metrics_path)
    }

    fn to_scrape_config(&self) -> Value {
        let mut cfg = json!({
            "job_name": self.job,
            "metrics_path": self.metrics_path,
            "scheme": self.scheme,
            "static_configs": [{ "targets": [self.address] }],
        });
        if self.scheme == "https" {
            let mut tls = json!({ "insecure_skip_verify": self.insecure_skip_verify });
            if let Some(ca) = &self.ca_file {
                tls["ca_file"] = json!(ca);
            }
            cfg["tls_config"] = tls;
        }
        if let Some((user, password)) = &self.basic_auth {
            cfg["basic_auth"] = json!({ "username": user, "password": password });
        }
        cfg
    }
}

/// How to start VictoriaMetrics.
#[derive(Debug, Clone)]
pub struct VictoriaMetricsBuilder {
    targets: Vec<ScrapeTarget>,
    scrape_self: bool,
    interval: Duration,
}

impl Default for VictoriaMetricsBuilder {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            scrape_self: true,
            interval: Duration::from_secs(1),
        }
    }
}

impl VictoriaMetricsBuilder {
    /// Adds a target.
    pub fn target(mut self, target: ScrapeTarget) -> Self {
        self.targets.push(target);
        self
    }

    /// Adds targets.
    pub fn targets(mut self, targets: &[ScrapeTarget]) -> Self {
        self.targets.extend_from_slice(targets);
        self
    }

    /// Whether VictoriaMetrics scrapes its own `/metrics` as job [`SELF_JOB`] (default yes).
    pub fn scrape_self(mut self, yes: bool) -> Self {
        self.scrape_self = yes;
        self
    }

    /// The scrape interval (default 1 s; the scrape timeout equals it).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Starts VictoriaMetrics on a free port (retrying on a port clash) and waits for `/health`.
    pub fn start(self) -> Result<VictoriaMetrics> {
        let binary = require_binary(Path::new(VICTORIA_METRICS_BIN), "victoria-metrics")?;
        let dir = ServiceDir::new("pgsuite-victoria-metrics-", false)?;
        let vm = VictoriaMetrics {
            port: 0,
            binary,
            config: dir.path().join("scrape.json"),
            log: dir.path().join("victoria-metrics.log"),
            interval: self.interval,
            scrape_self: self.scrape_self,
            targets: Mutex::new(self.targets),
            child: None,
            dir,
        };
        vm.start_on_free_port()
    }
}

/// A running VictoriaMetrics.
#[derive(Debug)]
pub struct VictoriaMetrics {
    port: u16,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    interval: Duration,
    scrape_self: bool,
    targets: Mutex<Vec<ScrapeTarget>>,
    child: Option<ManagedChild>,
    dir: ServiceDir,
}

impl VictoriaMetrics {
    /// A builder (scrapes itself, 1 s interval, no other target yet).
    pub fn builder() -> VictoriaMetricsBuilder {
        VictoriaMetricsBuilder::default()
    }

    /// Starts VictoriaMetrics scraping itself and `targets` every second.
    pub fn start(targets: &[ScrapeTarget]) -> Result<Self> {
        Self::builder().targets(targets).start()
    }

    fn start_on_free_port(mut self) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            self.write_config()?;
            match self.spawn() {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(self);
                }
                Err(e) if format!("{e:#}").contains("address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no attempt made")))
            .context("cannot start VictoriaMetrics: every port tried was taken")
    }

    fn write_config(&self) -> Result<()> {
        let mut jobs: Vec<Value> = Vec::new();
        if self.scrape_self {
            jobs.push(self.self_target().to_scrape_config());
        }
        let targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.extend(targets.iter().map(ScrapeTarget::to_scrape_config));
        let secs = format!("{}ms", self.interval.as_millis().max(100));
        let config = json!({
            "global": { "scrape_interval": secs, "scrape_timeout": secs },
            "scrape_configs": jobs,
        });
        let text = serde_json::to_string_pretty(&config).context("cannot render scrape config")?;
        std::fs::write(&self.config, text)
            .with_context(|| format!("cannot write {}", self.config.display()))
    }

    fn spawn(&self) -> Result<ManagedChild> {
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(self.dir.path())
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr={LOCALHOST}:{}", self.port))
            .arg(format!("-promscrape.config={}", self.config.display()))
            .args([
                "-retentionPeriod=1d",
                "-search.latencyOffset=0s",
                "-search.disableCache",
            ])
            .arg("-memory.allowedPercent=10");
        spawn_until_healthy(
            "VictoriaMetrics",
            &mut cmd,
            &self.log,
            &format!("{}/health", self.url()),
        )
    }

    /// Replaces the scrape targets (besides itself) and makes VictoriaMetrics reload its
    /// scrape configuration (SIGHUP).
    pub fn set_targets(&self, targets: &[ScrapeTarget]) -> Result<()> {
        *self.targets.lock().unwrap_or_else(PoisonError::into_inner) = targets.to_vec();
        self.write_config()?;
        self.child
            .as_ref()
            .context("VictoriaMetrics is not running")?
            .signal("HUP")
    }

    /// The current scrape targets (besides itself).
    pub fn targets(&self) -> Vec<ScrapeTarget> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The target for VictoriaMetrics' own `/metrics` (job [`SELF_JOB`]).
    pub fn self_target(&self) -> ScrapeTarget {
        ScrapeTarget::local(SELF_JOB, self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{LOCALHOST}:{}", self.port)
    }

    /// Its Prometheus remote-write endpoint, `http://127.0.0.1:<port>/api/v1/write`.
    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    /// The web UI, `http://127.0.0.1:<port>/vmui`.
    pub fn vmui_url(&self) -> String {
        format!("{}/vmui", self.url())
    }

    /// The generated scrape configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// VictoriaMetrics' log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Makes freshly scraped samples searchable at once (`GET /internal/force_flush`); without
    /// it VictoriaMetrics shows new series only after several seconds.
    pub fn flush(&self) -> Result<()> {
        let response = http::get(&format!("{}/internal/force_flush", self.url()), &[])?;
        if response.status != 200 {
            bail!(
                "/internal/force_flush answered HTTP {}: {}",
                response.status,
                response.body
            );
        }
        Ok(())
    }

    /// [`VictoriaMetrics::flush`], then `GET /api/v1/query?query=<promql>`: the whole JSON
    /// response. Fails unless the response says `"status": "success"`.
    pub fn query(&self, promql: &str) -> Result<Value> {
        self.flush()?;
        let url = format!("{}/api/v1/query", self.url());
        let response = http::get(&url, &[("query", promql)])?;
        let value: Value = serde_json::from_str(&response.body).with_context(|| {
            format!(
                "query {promql:?}: HTTP {} with a non-JSON body: {}",
                response.status, response.body
            )
        })?;
        if value["status"] != "success" {
            bail!(
                "query {promql:?} failed (HTTP {}): {value}",
                response.status
            );
        }
        Ok(value)
    }

    /// The `data.result` array of [`VictoriaMetrics::query`] (instant vector samples, each
    /// `{"metric": {...}, "value": [<time>, "<value>"]}`).
    pub fn query_result(&self, promql: &str) -> Result<Vec<Value>> {
        let value = self.query(promql)?;
        match &value["data"]["result"] {
            Value::Array(items) => Ok(items.clone()),
            other => bail!("query {promql:?}: data.result is not an array: {other}"),
        }
    }

    /// Polls `promql` every 200 ms until `predicate` accepts its `data.result` array, and
    /// returns that array; on timeout the error shows the last result and the scrape targets'
    /// health.
    pub fn wait_for(
        &self,
        promql: &str,
        predicate: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        poll(
            &format!("VictoriaMetrics query {promql:?}"),
            timeout,
            Duration::from_millis(200),
            || {
                let result = self.query_result(promql)?;
                if predicate(&result) {
                    Ok(Some(result))
                } else {
                    bail!("result {}", Value::Array(result))
                }
            },
        )
        .map_err(|e| anyhow!("{e:#}\n--- scrape targets ---\n{}", self.targets_summary()))
    }

    /// Waits until `up{job="<job>"}` is 1 for every target of the job (and there is one).
    pub fn wait_for_up(&self, job: &str, timeout: Duration) -> Result<()> {
        self.wait_for(
            &format!(
                "up{{job={}}}",
                serde_json::to_string(job).unwrap_or_default()
            ),
            |r| !r.is_empty() && r.iter().all(|s| sample_value(s) == Some(1.0)),
            timeout,
        )
        .map(drop)
    }

    /// `GET /api/v1/targets`, parsed.
    pub fn targets_json(&self) -> Result<Value> {
        let response = http::get(&format!("{}/api/v1/targets", self.url()), &[])?;
        serde_json::from_str(&response.body).context("/api/v1/targets returned invalid JSON")
    }

    /// One line per active target: job, URL, health and last error.
    pub fn targets_summary(&self) -> String {
        let Ok(json) = self.targets_json() else {
            return format!("<cannot read targets>\n{}", tail_file(&self.log, 10));
        };
        let Some(active) = json["data"]["activeTargets"].as_array() else {
            return json.to_string();
        };
        active
            .iter()
            .map(|t| {
                format!(
                    "{} {} health={} lastError={}",
                    t["labels"]["job"].as_str().unwrap_or("?"),
                    t["scrapeUrl"].as_str().unwrap_or("?"),
                    t["health"].as_str().unwrap_or("?"),
                    t["lastError"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Spawns `cmd` (a VictoriaMetrics component) and waits up to 20 s until `health` answers 200;
/// fails with the log's tail if the process exits first (e.g. "address already in use").
pub(crate) fn spawn_until_healthy(
    name: &str,
    cmd: &mut Command,
    log: &Path,
    health: &str,
) -> Result<ManagedChild> {
    let child = ManagedChild::spawn(name, cmd, log)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.exit_status() {
            bail!(
                "{name} exited during start ({status}):\n{}",
                child.log_tail(20)
            );
        }
        if http::get(health, &[]).is_ok_and(|r| r.status == 200) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} did not answer {health} within 20 s:\n{}",
                child.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The numeric value of one instant-vector sample (`value[1]`), if it parses.
pub fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}
