//! One monitored database connection ("server"): its pre-check (facts), its plan, its TTL
//! cache of collector outcomes and its scrape.
//!
//! A scrape of a [`Server`] gathers facts, re-plans when they changed, runs the fatal
//! collectors first and then the others, each through the cache: concurrent scrapes coalesce
//! into one execution per collector and a scrape waits only for expired entries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use tracing::{debug, info, warn};

use crate::collector::{Outcome, PredicateCache, execute};
use crate::config::{CollectorConfig, CollectorSet};
use crate::connection::{DbConnection, Protocol, QueryError};
use crate::conninfo::ConnInfo;
use crate::planner::{Facts, PlanTarget, ServerKind, plan};

/// Settings shared by every server of one exporter.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Bounds connecting and each pre-check step.
    pub connect_timeout: Duration,
    /// Ignore every TTL (`--disable-cache`).
    pub disable_cache: bool,
    /// Constant labels added to every collector sample (`--label`).
    pub const_labels: Vec<(String, String)>,
    /// The exporter's tags (`--tag`).
    pub tags: Vec<String>,
}

/// Counters of one planned collector, as the `pg_exporter_query_*` self-metrics show them.
#[derive(Debug, Default)]
pub struct CollectorStats {
    /// Invocations, cache hits included.
    pub total: AtomicU64,
    /// Invocations served from the cache without error.
    pub hits: AtomicU64,
    /// Invocations ending with an error (cached errors count again).
    pub errors: AtomicU64,
    /// Invocations skipped by a predicate query.
    pub predicate_skips: AtomicU64,
}

/// A collector planned on a server, with its statistics.
#[derive(Debug)]
pub struct PlannedCollector {
    /// Its definition.
    pub config: Arc<CollectorConfig>,
    /// Its counters since the last plan.
    pub stats: CollectorStats,
    /// The latest outcome seen, for metric counts, durations and the remaining TTL.
    pub last: Mutex<Option<Arc<Outcome>>>,
}

/// The plan in force on a server.
#[derive(Debug, Default)]
pub struct Plan {
    /// Distinguishes plans, so cache entries of an old plan are never served.
    pub generation: u64,
    /// The planned collectors in execution order.
    pub collectors: Vec<Arc<PlannedCollector>>,
}

/// Per-server scrape counters (`pg_exporter_server_scrape_*`).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Scrapes of this server.
    pub scrapes: AtomicU64,
    /// Scrapes whose pre-check or a fatal collector failed.
    pub errors: AtomicU64,
    /// Cumulative scrape time, microseconds.
    pub total_micros: AtomicU64,
    /// Last scrape time, microseconds.
    pub last_micros: AtomicU64,
}

/// What one scrape of a server produced.
#[derive(Debug, Default)]
pub struct ServerScrape {
    /// Pre-check and fatal collectors succeeded.
    pub up: bool,
    /// Outcomes in plan order (only for collectors that finished before the deadline).
    pub outcomes: Vec<Arc<Outcome>>,
    /// Collectors left out because the scrape deadline passed first.
    pub cut_off: usize,
    /// The pre-check passed but a fatal collector failed.
    pub fatal_failed: bool,
}

/// The result of a health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The server answered.
    Up {
        /// `pg_is_in_recovery()`; always false for Pgbouncer.
        in_recovery: bool,
    },
    /// The server refuses connections while starting up (SQLSTATE 57P03).
    Starting,
    /// Unreachable or failing, with the reason.
    Down(String),
}

/// Cache entries live for the collector's TTL, counted from the start of the execution, as
/// upstream measures it.
struct TtlExpiry;

impl Expiry<(u64, usize), (Arc<Outcome>, Duration)> for TtlExpiry {
    fn expire_after_create(
        &self,
        _key: &(u64, usize),
        value: &(Arc<Outcome>, Duration),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let (outcome, ttl) = value;
        Some(ttl.saturating_sub(outcome.started.elapsed()))
    }
}

type OutcomeCache = Cache<(u64, usize), (Arc<Outcome>, Duration)>;

/// One database connection target: the main one, or one per auto-discovered database.
pub struct Server {
    info: ConnInfo,
    kind: ServerKind,
    forked: bool,
    settings: Arc<EngineSettings>,
    collectors: RwLock<Arc<CollectorSet>>,
    needs_plan: AtomicBool,
    connection: tokio::sync::Mutex<Option<Arc<DbConnection>>>,
    /// The health probe's own connection: a slow collector query must not delay it.
    probe_connection: tokio::sync::Mutex<Option<Arc<DbConnection>>>,
    facts: tokio::sync::Mutex<Option<(Instant, Facts)>>,
    last_facts: RwLock<Option<Facts>>,
    last_planned_facts: RwLock<Option<Facts>>,
    plan: RwLock<Arc<Plan>>,
    plan_generation: AtomicU64,
    cache: OutcomeCache,
    predicates: Arc<PredicateCache>,
    /// Scrape counters of this server.
    pub stats: ServerStats,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.info.masked())
            .field("kind", &self.kind)
            .field("forked", &self.forked)
            .finish_non_exhaustive()
    }
}

/// How long gathered facts are reused by concurrent scrapes.
const FACTS_REUSE: Duration = Duration::from_millis(250);

impl Server {
    /// A server for `info`; `forked` marks auto-discovered databases.
    pub fn new(
        info: ConnInfo,
        kind: ServerKind,
        forked: bool,
        settings: Arc<EngineSettings>,
        collectors: Arc<CollectorSet>,
    ) -> Arc<Server> {
        Arc::new(Server {
            info,
            kind,
            forked,
            settings,
            collectors: RwLock::new(collectors),
            needs_plan: AtomicBool::new(true),
            connection: tokio::sync::Mutex::new(None),
            probe_connection: tokio::sync::Mutex::new(None),
            facts: tokio::sync::Mutex::new(None),
            last_facts: RwLock::new(None),
            last_planned_facts: RwLock::new(None),
            plan: RwLock::new(Arc::default()),
            plan_generation: AtomicU64::new(0),
            cache: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TtlExpiry)
                .build(),
            predicates: Arc::default(),
            stats: ServerStats::default(),
        })
    }

    /// The database this server is connected to (from the URL, or the user's default).
    pub fn dbname(&self) -> String {
        self.last_facts
            .read()
            .expect("facts lock")
            .as_ref()
            .map(|f| f.dbname.clone())
            .or_else(|| self.info.dbname().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The facts of the last successful pre-check.
    pub fn facts(&self) -> Option<Facts> {
        self.last_facts.read().expect("facts lock").clone()
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Plan> {
        self.plan.read().expect("plan lock").clone()
    }

    /// Swaps in a new collector set (reload); the next scrape re-plans.
    pub fn set_collectors(&self, collectors: Arc<CollectorSet>) {
        *self.collectors.write().expect("collectors lock") = collectors;
        self.needs_plan.store(true, Ordering::SeqCst);
    }

    /// Drops the connection (e.g. when the exporter forgets a dropped database).
    pub async fn close(&self) {
        self.connection.lock().await.take();
    }

    /// Returns the open scrape connection, connecting first when there is none or it broke.
    async fn connection(&self) -> Result<Arc<DbConnection>, String> {
        self.open(&self.connection).await.map_err(|e| e.to_string())
    }

    /// Probes liveness and role on the probe connection: `SELECT pg_is_in_recovery()`, or
    /// `SHOW VERSION` on Pgbouncer (which answers with no rows on some versions: still up).
    pub async fn probe(&self) -> Probe {
        let conn = match self.open(&self.probe_connection).await {
            Ok(c) => c,
            Err(e) => {
                let starting = e.db_error().is_some_and(|db| {
                    db.code() == &tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                });
                return if starting {
                    Probe::Starting
                } else {
                    Probe::Down(e.to_string())
                };
            }
        };
        let deadline = Some(Instant::now() + self.settings.connect_timeout);
        let sql = match self.kind {
            ServerKind::Postgres => "SELECT pg_is_in_recovery()",
            ServerKind::Pgbouncer => "SHOW VERSION",
        };
        match conn.query(sql, deadline).await {
            Ok(result) => Probe::Up {
                in_recovery: matches!(
                    result.rows.first().and_then(|r| r.first()),
                    Some(crate::value::Value::Bool(true))
                ),
            },
            Err(e) => {
                self.probe_connection.lock().await.take();
                Probe::Down(e.to_string())
            }
        }
    }

    async fn open(
        &self,
        slot: &tokio::sync::Mutex<Option<Arc<DbConnection>>>,
    ) -> Result<Arc<DbConnection>, crate::conninfo::ConnInfoError> {
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        slot.take();
        let protocol = match self.kind {
            ServerKind::Postgres => Protocol::Extended,
            ServerKind::Pgbouncer => Protocol::Simple,
        };
        let conn = self
            .info
            .connect_db(protocol, self.settings.connect_timeout)
            .await?;
        if self.kind == ServerKind::Postgres {
            // Best effort, as upstream: the name only helps DBAs spot the exporter.
            let set = conn
                .client()
                .batch_execute("SET application_name = 'pg_exporter'");
            if let Ok(Err(e)) = tokio::time::timeout(self.settings.connect_timeout, set).await {
                debug!(error = %crate::connection::db_error_text(&e), "Cannot set application_name.");
            }
        }
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        debug!(url = %self.info.masked(), "Connected.");
        Ok(conn)
    }

    /// Gathers facts (reusing very recent ones, so concurrent scrapes ask once).
    pub async fn refresh_facts(&self) -> Result<Facts, String> {
        let mut cached = self.facts.lock().await;
        if let Some((at, facts)) = cached.as_ref()
            && at.elapsed() < FACTS_REUSE
        {
            return Ok(facts.clone());
        }
        let result = self.gather_facts().await;
        match &result {
            Ok(facts) => {
                *cached = Some((Instant::now(), facts.clone()));
                *self.last_facts.write().expect("facts lock") = Some(facts.clone());
            }
            Err(_) => {
                cached.take();
                // A broken connection is replaced at the next attempt.
                self.connection.lock().await.take();
            }
        }
        result
    }

    async fn gather_facts(&self) -> Result<Facts, String> {
        let conn = self.connection().await?;
        let deadline = Some(Instant::now() + self.settings.connect_timeout);
        match self.kind {
            ServerKind::Pgbouncer => crate::pgbouncer::facts(&conn, deadline).await,
            ServerKind::Postgres => postgres_facts(&conn, deadline).await,
        }
    }

    /// Re-plans if the facts or the config changed since the last plan.
    fn ensure_plan(&self, facts: &Facts) {
        let current_key_changed = {
            let last = self.last_planned_facts.read().expect("plan facts lock");
            last.as_ref()
                .is_none_or(|l| l.plan_key() != facts.plan_key())
        };
        if !current_key_changed && !self.needs_plan.swap(false, Ordering::SeqCst) {
            return;
        }
        self.needs_plan.store(false, Ordering::SeqCst);
        let collectors = self.collectors.read().expect("collectors lock").clone();
        let planned = plan(
            &collectors.collectors,
            PlanTarget {
                kind: self.kind,
                forked: self.forked,
                facts,
                exporter_tags: &self.settings.tags,
            },
        );
        let generation = self.plan_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let new_plan = Plan {
            generation,
            collectors: planned
                .into_iter()
                .map(|config| {
                    Arc::new(PlannedCollector {
                        config,
                        stats: CollectorStats::default(),
                        last: Mutex::new(None),
                    })
                })
                .collect(),
        };
        info!(
            url = %self.info.masked(),
            version = facts.version,
            in_recovery = facts.in_recovery,
            collectors = new_plan.collectors.len(),
            "Planned collectors."
        );
        *self.plan.write().expect("plan lock") = Arc::new(new_plan);
        *self.last_planned_facts.write().expect("plan facts lock") = Some(facts.clone());
        self.cache.invalidate_all();
        self.predicates.clear();
    }

    /// Scrapes this server: pre-check, plan, fatal collectors, then the others. Stops waiting
    /// at `deadline` and reports what was left out.
    pub async fn scrape(self: &Arc<Self>, deadline: Option<Instant>) -> ServerScrape {
        let started = Instant::now();
        let result = self.scrape_inner(deadline).await;
        let micros = started.elapsed().as_micros() as u64;
        self.stats.scrapes.fetch_add(1, Ordering::Relaxed);
        self.stats.total_micros.fetch_add(micros, Ordering::Relaxed);
        self.stats.last_micros.store(micros, Ordering::Relaxed);
        if !result.up {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn scrape_inner(self: &Arc<Self>, deadline: Option<Instant>) -> ServerScrape {
        let facts = match self.refresh_facts().await {
            Ok(f) => f,
            Err(e) => {
                warn!(url = %self.info.masked(), error = %e, "Pre-check failed; server is down.");
                return ServerScrape::default();
            }
        };
        self.ensure_plan(&facts);
        let plan = self.plan();
        let Ok(conn) = self.connection().await else {
            return ServerScrape::default();
        };
        let mut scrape = ServerScrape {
            up: true,
            ..ServerScrape::default()
        };
        let fatal_first = plan
            .collectors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.config.fatal)
            .chain(
                plan.collectors
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !c.config.fatal),
            );
        for (idx, planned) in fatal_first {
            match self.run(&plan, idx, planned, &conn, deadline).await {
                Some(outcome) => {
                    if planned.config.fatal && outcome.error.is_some() {
                        warn!(
                            url = %self.info.masked(),
                            collector = %planned.config.branch,
                            error = %outcome.error.as_ref().map(ToString::to_string).unwrap_or_default(),
                            "Fatal collector failed; server is down for this scrape."
                        );
                        return ServerScrape {
                            fatal_failed: true,
                            ..ServerScrape::default()
                        };
                    }
                    scrape.outcomes.push(outcome);
                }
                None => scrape.cut_off += 1,
            }
        }
        scrape
    }

    /// One invocation of a planned collector through the cache. `None` when the deadline
    /// passed before a result was available.
    async fn run(
        self: &Arc<Self>,
        plan: &Plan,
        idx: usize,
        planned: &Arc<PlannedCollector>,
        conn: &Arc<DbConnection>,
        deadline: Option<Instant>,
    ) -> Option<Arc<Outcome>> {
        planned.stats.total.fetch_add(1, Ordering::Relaxed);
        let executed = Arc::new(AtomicBool::new(false));
        let key = (plan.generation, idx);
        let ttl = if self.settings.disable_cache {
            Duration::ZERO
        } else {
            planned.config.ttl
        };
        let exec = {
            let server = self.clone();
            let conn = conn.clone();
            let config = planned.config.clone();
            let executed = executed.clone();
            async move {
                // Spawned so that a scrape giving up at its deadline does not cancel the
                // execution: its result still lands in the cache for the next scrape.
                let handle = tokio::spawn(async move {
                    executed.store(true, Ordering::Relaxed);
                    let outcome = execute(
                        &config,
                        &conn,
                        &server.settings.const_labels,
                        &server.predicates,
                    )
                    .await;
                    if let Some(e) = &outcome.error {
                        warn!(collector = %config.branch, url = %server.info.masked(), error = %e, "Collector failed.");
                    }
                    // Cheap to clone: served to every scrape until it expires.
                    let entry = (Arc::new(outcome), ttl);
                    if !ttl.is_zero() {
                        server.cache.insert(key, entry.clone()).await;
                    }
                    entry
                });
                handle.await.expect("collector execution task panicked")
            }
        };
        let lookup = async {
            if self.settings.disable_cache {
                exec.await
            } else {
                self.cache.get_with(key, exec).await
            }
        };
        let entry = match deadline {
            None => lookup.await,
            Some(d) => match tokio::time::timeout_at(d.into(), lookup).await {
                Ok(entry) => entry,
                Err(_) => self.cache.get(&key).await?,
            },
        };
        let outcome = entry.0;
        let stats = &planned.stats;
        if outcome.has_errors() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        } else if !executed.load(Ordering::Relaxed) {
            stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.predicate_skipped {
            stats.predicate_skips.fetch_add(1, Ordering::Relaxed);
        }
        *planned.last.lock().expect("outcome lock") = Some(outcome.clone());
        Some(outcome)
    }
}

/// The facts query of a PostgreSQL server, in one round trip.
async fn postgres_facts(conn: &DbConnection, deadline: Option<Instant>) -> Result<Facts, String> {
    const FACTS_SQL: &str = "SELECT current_setting('server_version_num')::int AS version, \
        pg_is_in_recovery() AS in_recovery, current_database()::text AS dbname, current_user::text AS username, \
        array_to_string(ARRAY(SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1), chr(1)) AS databases, \
        array_to_string(ARRAY(SELECT nspname FROM pg_namespace ORDER BY 1), chr(1)) AS schemas, \
        array_to_string(ARRAY(SELECT extname FROM pg_extension ORDER BY 1), chr(1)) AS extensions";
    let result = conn.query(FACTS_SQL, deadline).await.map_err(|e| match e {
        QueryError::Timeout(d) => format!("pre-check timed out after {d:?}"),
        QueryError::Db(msg) => msg,
    })?;
    let row = result.rows.first().ok_or("pre-check returned no row")?;
    let text = |i: usize| {
        row.get(i)
            .map(crate::value::Value::to_label)
            .unwrap_or_default()
    };
    let list = |i: usize| -> Vec<String> {
        // chr(1) cannot appear in a sane identifier; commas can.
        text(i)
            .split('\u{1}')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(Facts {
        version: text(0).parse().unwrap_or(0),
        in_recovery: matches!(row.get(1), Some(crate::value::Value::Bool(true))),
        dbname: text(2),
        user: text(3),
        databases: list(4),
        schemas: list(5).into_iter().collect(),
        extensions: list(6).into_iter().collect(),
    })
}
