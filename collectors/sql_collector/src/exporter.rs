// Longer than 800 lines: one scrape end to end (main server, discovered databases, budget,
// self-metrics) and the reload and health state it reads, kept together so the order is visible.
//! The exporter: the main server and the auto-discovered databases, the whole scrape with its
//! self-metrics, the health state from a background probe, and config reloads.
//!
//! ```no_run
//! # async fn run(set: sql_collector::config::CollectorSet, info: sql_collector::conninfo::ConnInfo) {
//! use sql_collector::exporter::{Exporter, ExporterSettings};
//! let exporter = Exporter::new(ExporterSettings::default(), set, info);
//! tokio::spawn(exporter.clone().probe_forever());
//! let body = exporter.scrape(None).await; // the /metrics text
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use agent_kit::exposition::{MetricType, TextEncoder, write_header};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::collector::{FamilyOutput, LabelSets};
use crate::config::CollectorSet;
use crate::conninfo::ConnInfo;
use crate::planner::ServerKind;
use crate::server::{EngineSettings, OutcomeCache, Probe, Server, ServerScrape};

/// How often the server's liveness and role are probed for `/up`, `/primary`, `/replica`.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Everything the exporter's flags decide.
#[derive(Debug, Clone)]
pub struct ExporterSettings {
    /// Prefix of the built-in metrics (`pg`, `pgbouncer`, or `--namespace`).
    pub namespace: String,
    /// Engine settings shared by every server.
    pub engine: EngineSettings,
    /// Suppress every built-in metric (`--disable-intro`).
    pub disable_intro: bool,
    /// Discover and scrape the other databases (`--auto-discovery`).
    pub auto_discovery: bool,
    /// Databases never discovered.
    pub exclude_databases: Vec<String>,
    /// When non-empty, only these databases are discovered.
    pub include_databases: Vec<String>,
    /// Connections open at once to discovered databases, at most (`--discovery-connections`;
    /// at least 1). Discovered databases are collected in parallel within it.
    pub discovery_connections: usize,
    /// Version string for build info.
    pub version: String,
}

impl Default for ExporterSettings {
    fn default() -> Self {
        ExporterSettings {
            namespace: "pg".into(),
            engine: EngineSettings {
                connect_timeout: Duration::from_millis(100),
                disable_cache: false,
                const_labels: Vec::new(),
                tags: Vec::new(),
            },
            disable_intro: false,
            auto_discovery: true,
            exclude_databases: vec!["template0".into(), "template1".into(), "postgres".into()],
            include_databases: Vec::new(),
            discovery_connections: 4,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// The health of the main server, as the health endpoints report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet.
    Unknown,
    /// Up and not in recovery.
    Primary,
    /// Up and in recovery.
    Replica,
    /// Accepting no connections yet (SQLSTATE 57P03).
    Starting,
    /// Unreachable or failing.
    Down,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Primary,
            2 => Health::Replica,
            3 => Health::Starting,
            4 => Health::Down,
            _ => Health::Unknown,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Health::Unknown => 0,
            Health::Primary => 1,
            Health::Replica => 2,
            Health::Starting => 3,
            Health::Down => 4,
        }
    }

    /// The status word of the health endpoints.
    pub fn word(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Primary => "primary",
            Health::Replica => "replica",
            Health::Starting => "starting",
            Health::Down => "down",
        }
    }

    /// Whether the server is up.
    pub fn is_up(self) -> bool {
        matches!(self, Health::Primary | Health::Replica)
    }
}

/// Counters of config loading, beyond upstream: bad files skipped and failed reloads.
#[derive(Debug, Default)]
struct ConfigStats {
    bad_files: AtomicU64,
    reload_failures: AtomicU64,
    last_reload_ok: AtomicBool,
    last_reload_time: AtomicI64,
}

/// The exporter of one instance.
pub struct Exporter {
    settings: ExporterSettings,
    kind: ServerKind,
    info: ConnInfo,
    engine: Arc<EngineSettings>,
    collectors: RwLock<Arc<CollectorSet>>,
    main: Arc<Server>,
    forks: Mutex<BTreeMap<String, Arc<Server>>>,
    /// The budget of connections to discovered databases.
    budget: Arc<Semaphore>,
    /// The outcomes of every server's collectors.
    cache: OutcomeCache,
    /// Collectors already reported for repeating their series across databases (each is
    /// logged once, until the next reload).
    repeats_logged: Mutex<HashSet<Arc<str>>>,
    health: AtomicU8,
    version: AtomicU32,
    in_recovery: AtomicBool,
    /// The pre-check passed but a fatal collector failed at the last scrape.
    fatal_failed: AtomicBool,
    started: Instant,
    scrapes: AtomicU64,
    scrape_errors: AtomicU64,
    cut_offs: AtomicU64,
    last_scrape_time: Mutex<f64>,
    last_scrape_duration: Mutex<f64>,
    config_stats: ConfigStats,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("url", &self.info.masked())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter for `info` running `collectors`. Nothing connects until the first scrape
    /// or probe: a target that is down does not block start-up.
    pub fn new(
        settings: ExporterSettings,
        collectors: CollectorSet,
        info: ConnInfo,
    ) -> Arc<Exporter> {
        let kind = if info.is_pgbouncer() {
            ServerKind::Pgbouncer
        } else {
            ServerKind::Postgres
        };
        let engine = Arc::new(settings.engine.clone());
        let bad_files = collectors.skipped_files.len() as u64;
        let collectors = Arc::new(collectors);
        let cache = OutcomeCache::new();
        let main = Server::new(
            info.clone(),
            kind,
            engine.clone(),
            collectors.clone(),
            cache.clone(),
        );
        let budget = Arc::new(Semaphore::new(settings.discovery_connections.max(1)));
        let exporter = Exporter {
            settings,
            kind,
            info,
            engine,
            collectors: RwLock::new(collectors),
            main,
            forks: Mutex::default(),
            budget,
            cache,
            repeats_logged: Mutex::default(),
            health: AtomicU8::new(Health::Unknown.as_u8()),
            version: AtomicU32::new(0),
            in_recovery: AtomicBool::new(false),
            fatal_failed: AtomicBool::new(false),
            started: Instant::now(),
            scrapes: AtomicU64::new(0),
            scrape_errors: AtomicU64::new(0),
            cut_offs: AtomicU64::new(0),
            last_scrape_time: Mutex::new(0.0),
            last_scrape_duration: Mutex::new(0.0),
            config_stats: ConfigStats::default(),
        };
        exporter
            .config_stats
            .bad_files
            .store(bad_files, Ordering::Relaxed);
        exporter
            .config_stats
            .last_reload_ok
            .store(true, Ordering::Relaxed);
        exporter
            .config_stats
            .last_reload_time
            .store(unix_now() as i64, Ordering::Relaxed);
        Arc::new(exporter)
    }

    /// The server kind (PostgreSQL, or Pgbouncer when the URL's database is `pgbouncer`).
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The main server.
    pub fn main_server(&self) -> &Arc<Server> {
        &self.main
    }

    /// The health state from the last probe or scrape.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::SeqCst))
    }

    fn set_health(&self, health: Health) {
        let old = Health::from_u8(self.health.swap(health.as_u8(), Ordering::SeqCst));
        if old != health {
            info!(from = old.word(), to = health.word(), url = %self.info.masked(), "Health changed.");
        }
    }

    /// Probes the main server once: `SELECT pg_is_in_recovery()` (Pgbouncer: `SHOW VERSION`)
    /// on a connection of its own. A server whose fatal collector failed at the last scrape
    /// stays down until a scrape succeeds.
    pub async fn probe(&self) {
        let health = match self.main.probe().await {
            Probe::Up { .. } if self.fatal_failed.load(Ordering::SeqCst) => Health::Down,
            Probe::Up { in_recovery } => {
                self.in_recovery.store(in_recovery, Ordering::Relaxed);
                if in_recovery {
                    Health::Replica
                } else {
                    Health::Primary
                }
            }
            Probe::Starting => Health::Starting,
            Probe::Down(reason) => {
                tracing::debug!(url = %self.info.masked(), %reason, "Probe failed.");
                Health::Down
            }
        };
        self.set_health(health);
    }

    /// Probes every [`PROBE_INTERVAL`], forever; spawn it once.
    pub async fn probe_forever(self: Arc<Self>) {
        // Health checkers (HAProxy, Patroni-aware routers) read the role endpoints: a role flip
        // must show within a second of Patroni's own REST API, so the probe runs twice a second.
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.probe().await;
        }
    }

    /// Installs a new collector set on every server; they re-plan at their next scrape.
    pub fn reload(&self, collectors: CollectorSet) {
        let bad = collectors.skipped_files.len() as u64;
        let collectors = Arc::new(collectors);
        *self.collectors.write().expect("collectors lock") = collectors.clone();
        self.main.set_collectors(collectors.clone());
        for fork in self.forks.lock().expect("forks lock").values() {
            fork.set_collectors(collectors.clone());
        }
        self.repeats_logged.lock().expect("repeats lock").clear();
        self.config_stats.bad_files.store(bad, Ordering::Relaxed);
        self.config_stats
            .last_reload_ok
            .store(true, Ordering::Relaxed);
        self.config_stats
            .last_reload_time
            .store(unix_now() as i64, Ordering::Relaxed);
        info!(collectors = self.collector_count(), "Config reloaded.");
    }

    /// Records a reload that was rejected (the running config stays).
    pub fn reload_failed(&self) {
        self.config_stats
            .reload_failures
            .fetch_add(1, Ordering::Relaxed);
        self.config_stats
            .last_reload_ok
            .store(false, Ordering::Relaxed);
    }

    /// Number of collector branches loaded.
    pub fn collector_count(&self) -> usize {
        self.collectors
            .read()
            .expect("collectors lock")
            .collectors
            .len()
    }

    /// The loaded collector set.
    pub fn collectors(&self) -> Arc<CollectorSet> {
        self.collectors.read().expect("collectors lock").clone()
    }

    /// Names of the databases currently scraped through auto-discovery.
    pub fn discovered(&self) -> Vec<String> {
        self.forks
            .lock()
            .expect("forks lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Adds servers for new databases and drops those of vanished ones (a dropped one's
    /// connection, if a scrape still runs on it, closes when that scrape ends).
    fn discover(&self, databases: &[String], main_db: &str) {
        if !self.settings.auto_discovery || self.kind == ServerKind::Pgbouncer {
            return;
        }
        let wanted: Vec<&String> = databases
            .iter()
            .filter(|db| db.as_str() != main_db)
            .filter(|db| !self.settings.exclude_databases.contains(db))
            .filter(|db| {
                self.settings.include_databases.is_empty()
                    || self.settings.include_databases.contains(db)
            })
            .collect();
        let mut forks = self.forks.lock().expect("forks lock");
        let gone: Vec<String> = forks
            .keys()
            .filter(|db| !wanted.contains(db))
            .cloned()
            .collect();
        for db in gone {
            if let Some(server) = forks.remove(&db) {
                server.forget();
            }
            info!(database = %db, "Database gone; no longer scraped.");
        }
        for db in wanted {
            if !forks.contains_key(db) {
                info!(database = %db, "Database discovered.");
                let collectors = self.collectors.read().expect("collectors lock").clone();
                forks.insert(
                    db.clone(),
                    Server::discovered(
                        self.info.with_dbname(db),
                        self.kind,
                        self.budget.clone(),
                        self.engine.clone(),
                        collectors,
                        self.cache.clone(),
                    ),
                );
            }
        }
    }

    /// One whole scrape as text, as [`Exporter::scrape_exposition`] writes it.
    pub async fn scrape(&self, deadline: Option<Instant>) -> String {
        let mut families = self.collect(deadline).await;
        let mut out = String::new();
        families.write(&mut out, usize::MAX);
        let Families {
            up,
            servers,
            scrapes,
            ..
        } = families;
        // The outcomes not cached are freed before the self-metrics are written.
        drop(scrapes);
        if !self.settings.disable_intro {
            self.render_self_metrics(&mut out, up, &servers);
        }
        out
    }

    /// One whole scrape: the main server, then the discovered databases in parallel within
    /// the connection budget. Stops waiting at `deadline` (from the scraper's timeout
    /// header). The text (every collector family, then the self-metrics) is written as the
    /// returned [`Exposition`] is read, chunk by chunk, never whole.
    pub async fn scrape_exposition(self: &Arc<Self>, deadline: Option<Instant>) -> Exposition {
        Exposition {
            exporter: self.clone(),
            families: Some(self.collect(deadline).await),
        }
    }

    /// Scrapes every server and groups their families.
    async fn collect(&self, deadline: Option<Instant>) -> Families {
        let started = Instant::now();
        let main = self.main.scrape(deadline, None).await;
        self.fatal_failed.store(main.fatal_failed, Ordering::SeqCst);
        let instance = self.main.facts().filter(|_| main.up);
        match &instance {
            Some(facts) => {
                self.version.store(facts.version, Ordering::Relaxed);
                self.in_recovery.store(facts.in_recovery, Ordering::Relaxed);
                self.set_health(if facts.in_recovery {
                    Health::Replica
                } else {
                    Health::Primary
                });
                self.discover(&facts.databases, &facts.dbname);
            }
            None => self.set_health(Health::Down),
        }
        // Without the main server's pre-check, which databases exist and which a DBA's
        // statement holds is unknown: none is scraped. A database being dropped or renamed
        // is left alone until the statement ends.
        let forks: Vec<Arc<Server>> = match &instance {
            None => Vec::new(),
            Some(facts) => self
                .forks
                .lock()
                .expect("forks lock")
                .iter()
                .filter(|(db, _)| !facts.busy_databases.contains(db))
                .map(|(_, server)| server.clone())
                .collect(),
        };
        // Each waits for a connection of the budget only when it has something to execute.
        let fork_scrapes: Vec<ServerScrape> = futures_util::future::join_all(
            forks
                .iter()
                .map(|server| server.scrape(deadline, instance.as_ref())),
        )
        .await;

        self.scrapes.fetch_add(1, Ordering::Relaxed);
        if !main.up {
            self.scrape_errors.fetch_add(1, Ordering::Relaxed);
        }
        let cut_off = main.cut_off + fork_scrapes.iter().map(|s| s.cut_off).sum::<usize>();
        if cut_off > 0 {
            self.cut_offs.fetch_add(cut_off as u64, Ordering::Relaxed);
            warn!(
                collectors = cut_off,
                "Scrape deadline reached; results left out."
            );
        }

        let up = main.up;
        let mut servers = vec![self.main.clone()];
        servers.extend(forks);
        let scrapes: Vec<ServerScrape> = std::iter::once(main).chain(fork_scrapes).collect();
        let groups = self.group_families(&servers, &scrapes);
        *self.last_scrape_duration.lock().expect("lock") = started.elapsed().as_secs_f64();
        *self.last_scrape_time.lock().expect("lock") = unix_now();
        Families {
            servers,
            scrapes,
            groups,
            next: (0, 0, 0),
            up,
        }
    }

    fn render_self_metrics(&self, body: &mut String, up: bool, servers: &[Arc<Server>]) {
        let ns = &self.settings.namespace;
        let consts = &self.engine.const_labels;
        let mut enc = TextEncoder::with_const_labels(body, consts);
        let none: &[(&str, &str)] = &[];
        let gauge = MetricType::Gauge;
        let simple = |enc: &mut TextEncoder<'_>, name: &str, help: &str, kind, v: f64| {
            enc.family(&format!("{ns}_{name}"), help, kind)
                .sample(none, v);
        };
        simple(
            &mut enc,
            "up",
            "last scrape was able to connect to the server: 1 for yes, 0 for no",
            gauge,
            f64::from(u8::from(up)),
        );
        simple(
            &mut enc,
            "version",
            "server version number",
            gauge,
            f64::from(self.version.load(Ordering::Relaxed)),
        );
        let in_recovery =
            self.kind == ServerKind::Postgres && self.in_recovery.load(Ordering::Relaxed);
        simple(
            &mut enc,
            "in_recovery",
            "server is in recovery mode? 1 for yes 0 for no",
            gauge,
            f64::from(u8::from(in_recovery)),
        );
        enc.family(&format!("{ns}_exporter_build_info"), "A metric with a constant '1' value labeled with version, revision, branch, goversion, builddate, goos, and goarch from which pg_exporter was built.", gauge)
            .sample(
                &[
                    ("version", self.settings.version.as_str()),
                    ("revision", option_env!("GIT_REVISION").unwrap_or("unknown")),
                    ("branch", "main"),
                    ("builddate", option_env!("BUILD_DATE").unwrap_or("unknown")),
                    ("goversion", concat!("rust", env!("CARGO_PKG_RUST_VERSION"))),
                    ("goos", std::env::consts::OS),
                    ("goarch", agent_kit::process_metrics::goarch()),
                ],
                1.0,
            );
        simple(
            &mut enc,
            "exporter_up",
            "always be 1 if your could retrieve metrics",
            gauge,
            1.0,
        );
        simple(
            &mut enc,
            "exporter_uptime",
            "seconds since exporter primary server inited",
            gauge,
            self.started.elapsed().as_secs_f64(),
        );
        simple(
            &mut enc,
            "exporter_last_scrape_time",
            "seconds exporter spending on scrapping",
            gauge,
            *self.last_scrape_time.lock().expect("lock"),
        );
        simple(
            &mut enc,
            "exporter_scrape_duration",
            "seconds exporter spending on scrapping",
            gauge,
            *self.last_scrape_duration.lock().expect("lock"),
        );
        simple(
            &mut enc,
            "exporter_scrape_total_count",
            "times exporter was scraped for metrics",
            MetricType::Counter,
            self.scrapes.load(Ordering::Relaxed) as f64,
        );
        simple(
            &mut enc,
            "exporter_scrape_error_count",
            "times exporter was scraped for metrics and failed",
            MetricType::Counter,
            self.scrape_errors.load(Ordering::Relaxed) as f64,
        );
        // Beyond upstream: cut-off collectors and config health.
        simple(
            &mut enc,
            "exporter_scrape_cutoff_count",
            "collector results left out because the scraper's timeout (X-Prometheus-Scrape-Timeout-Seconds) came first",
            MetricType::Counter,
            self.cut_offs.load(Ordering::Relaxed) as f64,
        );
        simple(
            &mut enc,
            "exporter_config_bad_files",
            "config files skipped because they are invalid",
            gauge,
            self.config_stats.bad_files.load(Ordering::Relaxed) as f64,
        );
        simple(
            &mut enc,
            "exporter_config_reload_failure_count",
            "config reloads rejected because the new config is invalid",
            MetricType::Counter,
            self.config_stats.reload_failures.load(Ordering::Relaxed) as f64,
        );
        simple(
            &mut enc,
            "exporter_config_last_reload_successful",
            "1 if the last config (re)load succeeded",
            gauge,
            f64::from(u8::from(
                self.config_stats.last_reload_ok.load(Ordering::Relaxed),
            )),
        );
        simple(
            &mut enc,
            "exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config (re)load",
            gauge,
            self.config_stats.last_reload_time.load(Ordering::Relaxed) as f64,
        );

        type Getter = fn(&Server) -> f64;
        let server_families: [(&str, &str, Getter); 4] = [
            (
                "exporter_server_scrape_duration",
                "seconds exporter server spending on scrapping last scrape",
                |s| s.stats.last_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
            (
                "exporter_server_scrape_total_seconds",
                "seconds exporter server spending on scrapping",
                |s| s.stats.total_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
            (
                "exporter_server_scrape_total_count",
                "times exporter server was scraped for metrics",
                |s| s.stats.scrapes.load(Ordering::Relaxed) as f64,
            ),
            (
                "exporter_server_scrape_error_count",
                "times exporter server was scraped for metrics and failed",
                |s| s.stats.errors.load(Ordering::Relaxed) as f64,
            ),
        ];
        let dbnames: Vec<String> = servers.iter().map(|s| s.dbname()).collect();
        for (name, help, get) in server_families {
            let mut fam = enc.family(&format!("{ns}_{name}"), help, gauge);
            for (server, db) in servers.iter().zip(&dbnames) {
                fam.sample(&[("datname", db.as_str())], get(server));
            }
        }

        // Per-query statistics, keyed by (datname, collector name) as upstream.
        let mut rows: BTreeMap<(String, String), [f64; 7]> = BTreeMap::new();
        for (server, db) in servers.iter().zip(&dbnames) {
            for planned in &server.plan().collectors {
                let row = rows
                    .entry((db.clone(), planned.config.name.clone()))
                    .or_insert([0.0; 7]);
                let s = &planned.stats;
                let last = planned.last.lock().expect("outcome lock").clone();
                let ttl_left = last.as_ref().map_or(0.0, |o| {
                    (planned.config.ttl.as_secs_f64() - o.started.elapsed().as_secs_f64()).max(0.0)
                });
                row[0] = row[0].max(ttl_left);
                row[1] += s.total.load(Ordering::Relaxed) as f64;
                row[2] += s.hits.load(Ordering::Relaxed) as f64;
                row[3] += s.errors.load(Ordering::Relaxed) as f64;
                row[4] += s.predicate_skips.load(Ordering::Relaxed) as f64;
                row[5] += last.as_ref().map_or(0.0, |o| o.sample_count() as f64);
                row[6] = row[6].max(last.as_ref().map_or(0.0, |o| o.duration.as_secs_f64()));
            }
        }
        let query_families = [
            ("exporter_query_cache_ttl", "times to live of query cache"),
            (
                "exporter_query_scrape_total_count",
                "times exporter server was scraped for metrics",
            ),
            (
                "exporter_query_scrape_hit_count",
                "numbers been scrapped from cache",
            ),
            (
                "exporter_query_scrape_error_count",
                "times the query failed",
            ),
            (
                "exporter_query_scrape_predicate_skip_count",
                "times the query was skipped due to a predicate returning false",
            ),
            (
                "exporter_query_scrape_metric_count",
                "numbers of metrics been scrapped from this query",
            ),
            (
                "exporter_query_scrape_duration",
                "seconds query spending on scrapping",
            ),
        ];
        for (i, (name, help)) in query_families.iter().enumerate() {
            let mut fam = enc.family(&format!("{ns}_{name}"), help, gauge);
            for ((db, query), values) in &rows {
                fam.sample(
                    &[("datname", db.as_str()), ("query", query.as_str())],
                    values[i],
                );
            }
        }
        agent_kit::process_metrics::encode(&mut enc);
    }

    /// Groups the collector families of `scrapes` (one per server of `servers`) by name, in
    /// first-seen order, for the [`Exposition`] to write each once with the samples of all
    /// servers under it. A series another server already gave (a collector without the
    /// `cluster` tag or a `datname` label runs on every database) is left out, as rows with a
    /// repeated label set are within one collector: counted as an error of the collector on
    /// the database that repeats it, and logged once per collector.
    fn group_families(&self, servers: &[Arc<Server>], scrapes: &[ServerScrape]) -> Vec<Group> {
        let mut order: Vec<&str> = Vec::new();
        let mut groups: HashMap<&str, Group> = HashMap::new();
        for (server, scrape) in scrapes.iter().enumerate() {
            for (outcome, collected) in scrape.outcomes.iter().enumerate() {
                for (family, output) in collected.outcome.families.iter().enumerate() {
                    if output.samples == 0 {
                        continue;
                    }
                    let group = groups.entry(&output.name).or_insert_with(|| {
                        order.push(&output.name);
                        Group::default()
                    });
                    if group.parts.last().is_none_or(|p| p.server != server) {
                        group.servers += 1;
                    }
                    group.parts.push(Part {
                        server,
                        outcome,
                        family,
                        skip: None,
                    });
                }
            }
        }
        let output = |part: &Part| -> &FamilyOutput {
            &scrapes[part.server].outcomes[part.outcome].outcome.families[part.family]
        };
        // (repeating server, its outcome, server that gave the series first)
        let mut repeats: Vec<(usize, usize, usize)> = Vec::new();
        // The families of one collector share their label sets: the series they leave out
        // are the same, found once. (Each part's server and label sets, each part's skips.)
        type Skips = Vec<Option<Arc<[bool]>>>;
        let mut last: Option<(Vec<(usize, *const LabelSets)>, Skips)> = None;
        let mut ordered = Vec::with_capacity(order.len());
        for name in order {
            let mut group = groups.remove(name).expect("grouped above");
            if group.servers < 2 {
                ordered.push(group);
                continue;
            }
            let key: Vec<(usize, *const LabelSets)> = group
                .parts
                .iter()
                .map(|p| (p.server, Arc::as_ptr(&output(p).labels)))
                .collect();
            if let Some((last_key, skips)) = &last
                && *last_key == key
            {
                for (part, skip) in group.parts.iter_mut().zip(skips) {
                    part.skip.clone_from(skip);
                }
                ordered.push(group);
                continue;
            }
            // Series (its label set) to the server that gave it first.
            let samples = group.parts.iter().map(|p| output(p).samples).sum();
            let mut first: HashMap<&str, usize> = HashMap::with_capacity(samples);
            let mut skips = Vec::with_capacity(group.parts.len());
            for part in &group.parts {
                let family = output(part);
                let mut repeated_from = None;
                let mut skip: Option<Vec<bool>> = None;
                for i in 0..family.samples {
                    match first.entry(family.labels.get(i)) {
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(part.server);
                        }
                        std::collections::hash_map::Entry::Occupied(e) => {
                            if *e.get() != part.server {
                                repeated_from.get_or_insert(*e.get());
                            }
                            skip.get_or_insert_with(|| vec![false; family.samples])[i] = true;
                        }
                    }
                }
                if let Some(from) = repeated_from
                    && !repeats
                        .iter()
                        .any(|(s, o, _)| *s == part.server && *o == part.outcome)
                {
                    repeats.push((part.server, part.outcome, from));
                }
                skips.push(skip.map(Arc::from));
            }
            for (part, skip) in group.parts.iter_mut().zip(&skips) {
                part.skip.clone_from(skip);
            }
            last = Some((key, skips));
            ordered.push(group);
        }
        for (server, outcome, from) in repeats {
            let collected = &scrapes[server].outcomes[outcome];
            let outcome = &collected.outcome;
            // An invocation counts one error, whatever went wrong.
            if outcome.error.is_none() && outcome.duplicate_rows == 0 {
                collected
                    .planned
                    .stats
                    .errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            let config = &collected.planned.config;
            let first_time = self
                .repeats_logged
                .lock()
                .expect("repeats lock")
                .insert(config.branch.as_str().into());
            if first_time {
                warn!(
                    collector = %config.branch,
                    database = %servers[server].dbname(),
                    first = %servers[from].dbname(),
                    "Collector gives the same series on several databases; only the first \
                     copy is kept. Tag it `cluster` to run it once, or give it a `datname` label."
                );
            }
        }
        ordered
    }

    /// The `/explain` text: every planned collector of the main server.
    pub fn explain(&self) -> String {
        let plan = self.main.plan();
        plan.collectors
            .iter()
            .map(|c| c.config.explain())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `/stat` table: one row per planned collector of the main server.
    pub fn stat_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<40} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12}",
            "name", "total", "hit", "error", "skip", "metric", "ttl/s", "duration/ms"
        );
        for planned in &self.main.plan().collectors {
            let s = &planned.stats;
            let last = planned.last.lock().expect("outcome lock").clone();
            let _ = writeln!(
                out,
                "{:<40} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.1} {:>12.3}",
                planned.config.name,
                s.total.load(Ordering::Relaxed),
                s.hits.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
                s.predicate_skips.load(Ordering::Relaxed),
                last.as_ref().map_or(0, |o| o.sample_count()),
                planned.config.ttl.as_secs_f64(),
                last.as_ref()
                    .map_or(0.0, |o| o.duration.as_secs_f64() * 1e3),
            );
        }
        out
    }
}

/// The collector families of one name across the servers of a scrape.
#[derive(Debug, Default)]
struct Group {
    parts: Vec<Part>,
    /// Servers giving samples of it.
    servers: usize,
}

/// One server's samples of a family.
#[derive(Debug)]
struct Part {
    /// Index of the server in the scrape.
    server: usize,
    /// Index of the outcome in the server's scrape.
    outcome: usize,
    /// Index of the family in the outcome.
    family: usize,
    /// Samples left out: series another part gave first.
    skip: Option<Arc<[bool]>>,
}

/// The collector families of one scrape, grouped by name, and how far they are written.
struct Families {
    servers: Vec<Arc<Server>>,
    scrapes: Vec<ServerScrape>,
    groups: Vec<Group>,
    /// The next sample to write: its group, part and index.
    next: (usize, usize, usize),
    /// The main server's pre-check and fatal collectors succeeded.
    up: bool,
}

impl Families {
    /// Writes samples from the position `next` on into `out` until it reaches `limit` bytes
    /// or every family is written (`# HELP`, `# TYPE`, then the samples of every server);
    /// moves `next` past them. Returns whether every family is written.
    fn write(&mut self, out: &mut String, limit: usize) -> bool {
        let (mut group, mut part, mut sample) = self.next;
        while let Some(g) = self.groups.get(group) {
            while let Some(p) = g.parts.get(part) {
                let family = &self.scrapes[p.server].outcomes[p.outcome].outcome.families[p.family];
                if part == 0 && sample == 0 {
                    write_header(out, &family.name, &family.help, family.kind);
                }
                while sample < family.samples {
                    if !p.skip.as_ref().is_some_and(|skip| skip[sample]) {
                        family.write_sample(sample, out);
                    }
                    sample += 1;
                    if out.len() >= limit {
                        self.next = (group, part, sample);
                        return false;
                    }
                }
                (part, sample) = (part + 1, 0);
            }
            (group, part, sample) = (group + 1, 0, 0);
        }
        self.next = (group, part, sample);
        true
    }
}

/// The text of one scrape, written chunk by chunk as it is read: every collector family once
/// (`# HELP`, `# TYPE`, then the samples of every server), then the self-metrics. Each chunk
/// but the last is [`Exposition::CHUNK`] bytes and a line at most; the outcomes are let go
/// before the self-metrics are written. Collect it into a `String` for the whole text.
pub struct Exposition {
    exporter: Arc<Exporter>,
    /// `None` once everything is written.
    families: Option<Families>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("families", &self.families.as_ref().map(|f| f.groups.len()))
            .field("next", &self.families.as_ref().map(|f| f.next))
            .finish_non_exhaustive()
    }
}

impl Exposition {
    /// The size a chunk reaches before it is handed on.
    pub const CHUNK: usize = 64 * 1024;
}

impl Iterator for Exposition {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let families = self.families.as_mut()?;
        let mut out = String::with_capacity(Self::CHUNK + 1024);
        if !families.write(&mut out, Self::CHUNK) {
            return Some(out);
        }
        // The outcomes not cached are freed before the self-metrics are written.
        let Families { up, servers, .. } = self.families.take()?;
        if !self.exporter.settings.disable_intro {
            self.exporter.render_self_metrics(&mut out, up, &servers);
        }
        Some(out)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
