// Longer than 800 lines: a server's pre-check, plan, cache and connection lifetime decide
// together when a connection to a discovered database may exist; apart they would hide that.
//! One monitored database connection ("server"): its pre-check (facts), its plan, its TTL
//! cache of collector outcomes and its scrape.
//!
//! A scrape of a [`Server`] gathers facts, re-plans when they changed, runs the fatal
//! collectors first and then the others, each through the cache: concurrent scrapes coalesce
//! into one execution per collector and a scrape waits only for expired entries.
//!
//! The main server keeps its connection (and the health probe's) open. An auto-discovered
//! database is connected only while a scrape needs it, within the exporter's budget of
//! connections to discovered databases, and closed as soon as the last execution on it ends:
//! no session of ours is left for a DBA's `DROP DATABASE` to wait for. When every collector
//! of a discovered database is still cached, its scrape does not connect at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use moka::Expiry;
use moka::future::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::collector::{CollectError, FamilyOutput, Outcome, PredicateCache, execute};
use crate::config::{CollectorConfig, CollectorSet};
use crate::connection::{DbConnection, Protocol, QueryError};
use crate::conninfo::{ConnInfo, ConnInfoError};
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
    /// The latest execution's outcome without its samples (the cache keeps those for the
    /// TTL), for sample counts, errors, durations and the remaining TTL.
    pub last: Mutex<Option<Arc<Outcome>>>,
}

/// The plan in force on a server.
#[derive(Debug, Default)]
pub struct Plan {
    /// Distinguishes plans of every server of the process (they share one cache), so cache
    /// entries of an old plan are never served.
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

/// One collector's outcome in a scrape.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The planned collector (its statistics count what the exporter drops later).
    pub planned: Arc<PlannedCollector>,
    /// Its outcome, executed or cached.
    pub outcome: Arc<Outcome>,
}

/// What one scrape of a server produced.
#[derive(Debug, Default)]
pub struct ServerScrape {
    /// Pre-check and fatal collectors succeeded.
    pub up: bool,
    /// Outcomes in plan order (only for collectors that finished before the deadline).
    pub outcomes: Vec<Collected>,
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

/// The TTL cache of collector outcomes, keyed by plan generation and collector, shared by
/// the servers of an exporter (a cache of its own per discovered database would cost tens of
/// kilobytes each, and hundreds of databases are common). Cheap to clone.
#[derive(Clone)]
pub struct OutcomeCache(Cache<(u64, usize), (Arc<Outcome>, Duration)>);

impl OutcomeCache {
    /// An empty cache.
    pub fn new() -> OutcomeCache {
        OutcomeCache(
            Cache::builder()
                .max_capacity(100_000)
                .expire_after(TtlExpiry)
                .support_invalidation_closures()
                .build(),
        )
    }

    /// Forgets the entries of the plan `generation`.
    fn forget(&self, generation: u64) {
        // Only fails without `support_invalidation_closures`, set above.
        let _ = self
            .0
            .invalidate_entries_if(move |(g, _), _| *g == generation);
    }
}

impl Default for OutcomeCache {
    fn default() -> Self {
        OutcomeCache::new()
    }
}

impl std::fmt::Debug for OutcomeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeCache")
            .field("entries", &self.0.entry_count())
            .finish()
    }
}

/// The last plan generation given out, across all servers.
static PLAN_GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// How long a connection to a discovered database is handed to new borrowers after it was
/// opened. Overlapping scrapes would otherwise pass it on from one to the next and never let
/// it close, and a DBA's `DROP DATABASE` gives up after 5 s of waiting for it.
const SHARE_WITHIN: Duration = Duration::from_secs(1);

/// After a connect to a discovered database timed out, no new connect is tried for this long
/// at first, doubling with each timeout in a row up to [`MAX_BACKOFF`]: the session that
/// timed out may still be queued on the server behind a DBA's lock, and one more per scrape
/// would pile up to `max_connections`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest pause between connects to a discovered database whose connects time out.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// An open connection and, to a discovered database, its place in the exporter's budget
/// (given back when the connection is dropped).
#[derive(Debug)]
struct Held {
    conn: DbConnection,
    opened: Instant,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Where a server finds its open connection: kept (main server and probe), or shared by the
/// scrapes in flight and closed when the last one drops it (discovered databases; handed to
/// a new borrower only within [`SHARE_WITHIN`] of its opening).
#[derive(Debug, Default)]
struct Slot {
    kept: Option<Arc<Held>>,
    shared: Weak<Held>,
}

impl Slot {
    fn live(&self) -> Option<Arc<Held>> {
        self.kept
            .clone()
            .or_else(|| {
                self.shared
                    .upgrade()
                    .filter(|held| held.opened.elapsed() < SHARE_WITHIN)
            })
            .filter(|held| !held.conn.is_closed())
    }
}

/// When connects to a discovered database may be tried again after timeouts.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    pause: Duration,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// Every connection of the budget for discovered databases stayed in use until the
    /// scrape's deadline.
    #[error(
        "no connection of the budget for discovered databases became free before the scrape's deadline"
    )]
    Budget,
    /// An earlier connect timed out and the pause after it has not passed.
    #[error("not connecting for {0:?} more: an earlier connect timed out")]
    Backoff(Duration),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnInfoError),
}

impl OpenError {
    /// The database no longer exists (dropped or renamed since it was discovered).
    fn database_gone(&self) -> bool {
        matches!(self, OpenError::Connect(e) if e.db_error().is_some_and(|db| {
            db.code() == &tokio_postgres::error::SqlState::UNDEFINED_DATABASE
        }))
    }
}

/// One database connection target: the main one, or one per auto-discovered database.
pub struct Server {
    info: ConnInfo,
    kind: ServerKind,
    forked: bool,
    settings: Arc<EngineSettings>,
    collectors: RwLock<Arc<CollectorSet>>,
    needs_plan: AtomicBool,
    /// Bounds the connections open at once to discovered databases (`None`: main server).
    budget: Option<Arc<Semaphore>>,
    connection: tokio::sync::Mutex<Slot>,
    /// Set after a connect to a discovered database timed out.
    backoff: Mutex<Option<Backoff>>,
    /// The health probe's own connection: a slow collector query must not delay it.
    probe_connection: tokio::sync::Mutex<Slot>,
    /// The last pre-check's result and when it ended: one pre-check runs at a time, and the
    /// scrapes that began before it ended take its result instead of asking again.
    facts: tokio::sync::Mutex<Option<(Instant, Result<Facts, String>)>>,
    last_facts: RwLock<Option<Facts>>,
    last_planned_facts: RwLock<Option<Facts>>,
    plan: RwLock<Arc<Plan>>,
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

impl Server {
    /// The main server for `info`, whose connections stay open; its outcomes go to `cache`.
    pub fn new(
        info: ConnInfo,
        kind: ServerKind,
        settings: Arc<EngineSettings>,
        collectors: Arc<CollectorSet>,
        cache: OutcomeCache,
    ) -> Arc<Server> {
        Self::build(info, kind, None, settings, collectors, cache)
    }

    /// An auto-discovered database: connected only while a scrape needs it, with a permit
    /// of `budget` for as long as the connection is open.
    pub fn discovered(
        info: ConnInfo,
        kind: ServerKind,
        budget: Arc<Semaphore>,
        settings: Arc<EngineSettings>,
        collectors: Arc<CollectorSet>,
        cache: OutcomeCache,
    ) -> Arc<Server> {
        Self::build(info, kind, Some(budget), settings, collectors, cache)
    }

    fn build(
        info: ConnInfo,
        kind: ServerKind,
        budget: Option<Arc<Semaphore>>,
        settings: Arc<EngineSettings>,
        collectors: Arc<CollectorSet>,
        cache: OutcomeCache,
    ) -> Arc<Server> {
        Arc::new(Server {
            info,
            kind,
            forked: budget.is_some(),
            settings,
            collectors: RwLock::new(collectors),
            needs_plan: AtomicBool::new(true),
            budget,
            connection: tokio::sync::Mutex::default(),
            backoff: Mutex::new(None),
            probe_connection: tokio::sync::Mutex::default(),
            facts: tokio::sync::Mutex::new(None),
            last_facts: RwLock::new(None),
            last_planned_facts: RwLock::new(None),
            plan: RwLock::new(Arc::default()),
            cache,
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

    /// Forgets the cached outcomes (the exporter no longer scrapes this server).
    pub fn forget(&self) {
        self.cache.forget(self.plan().generation);
    }

    /// Swaps in a new collector set (reload); the next scrape re-plans.
    pub fn set_collectors(&self, collectors: Arc<CollectorSet>) {
        *self.collectors.write().expect("collectors lock") = collectors;
        self.needs_plan.store(true, Ordering::SeqCst);
    }

    /// Returns the open scrape connection, connecting first when there is none or it broke.
    /// A discovered database waits for a permit of the budget until `deadline`.
    async fn connection(&self, deadline: Option<Instant>) -> Result<Arc<Held>, OpenError> {
        self.open(&self.connection, deadline).await
    }

    /// Probes liveness and role on the probe connection: `SELECT pg_is_in_recovery()`, or
    /// `SHOW VERSION` on Pgbouncer (which answers with no rows on some versions: still up).
    pub async fn probe(&self) -> Probe {
        let conn = match self.open(&self.probe_connection, None).await {
            Ok(c) => c,
            Err(e) => {
                let starting = matches!(&e, OpenError::Connect(e) if e.db_error().is_some_and(|db| {
                    db.code() == &tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW
                }));
                return if starting {
                    Probe::Starting
                } else {
                    Probe::Down(e.to_string())
                };
            }
        };
        let sql = match self.kind {
            ServerKind::Postgres => "SELECT pg_is_in_recovery()",
            ServerKind::Pgbouncer => "SHOW VERSION",
        };
        match conn
            .conn
            .query(sql, Some(self.settings.connect_timeout))
            .await
        {
            Ok(result) => Probe::Up {
                in_recovery: matches!(
                    result.rows.first().and_then(|r| r.first()),
                    Some(crate::value::Value::Bool(true))
                ),
            },
            Err(e) => {
                self.probe_connection.lock().await.kept.take();
                Probe::Down(e.to_string())
            }
        }
    }

    /// The open connection of `slot`, else a new one: kept in the slot for the main server,
    /// shared until its last user drops it for a discovered database, which first waits
    /// (until `deadline`) for a permit of the budget. Connecting is bounded by the connect
    /// timeout and `deadline`: a database being dropped makes new sessions wait for the
    /// `DROP` to end, so after a connect timed out a discovered database is not connected to
    /// again before its [`Backoff`] has passed.
    async fn open(
        &self,
        slot: &tokio::sync::Mutex<Slot>,
        deadline: Option<Instant>,
    ) -> Result<Arc<Held>, OpenError> {
        let mut slot = slot.lock().await;
        if let Some(held) = slot.live() {
            return Ok(held);
        }
        *slot = Slot::default();
        let paused = *self.backoff.lock().expect("backoff lock");
        if let Some(left) = paused.and_then(|b| b.until.checked_duration_since(Instant::now())) {
            return Err(OpenError::Backoff(left));
        }
        let permit = match &self.budget {
            None => None,
            Some(budget) => {
                let acquire = budget.clone().acquire_owned();
                let permit = match deadline {
                    None => acquire.await,
                    Some(d) => tokio::time::timeout_at(d.into(), acquire)
                        .await
                        .map_err(|_| OpenError::Budget)?,
                };
                Some(permit.expect("the budget semaphore is never closed"))
            }
        };
        let protocol = match self.kind {
            ServerKind::Postgres => Protocol::Extended,
            ServerKind::Pgbouncer => Protocol::Simple,
        };
        let timeout = match deadline {
            Some(d) => self
                .settings
                .connect_timeout
                .min(d.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1)),
            None => self.settings.connect_timeout,
        };
        let conn = match self.info.connect_db(protocol, timeout).await {
            Ok(conn) => conn,
            Err(e) => {
                if self.forked && matches!(e, ConnInfoError::Timeout(_)) {
                    let mut backoff = self.backoff.lock().expect("backoff lock");
                    let pause = backoff.map_or(FIRST_BACKOFF, |b| (b.pause * 2).min(MAX_BACKOFF));
                    *backoff = Some(Backoff {
                        until: Instant::now() + pause,
                        pause,
                    });
                    warn!(url = %self.info.masked(), ?pause, "Connect timed out; not connecting again for a while.");
                }
                return Err(e.into());
            }
        };
        self.backoff.lock().expect("backoff lock").take();
        if self.kind == ServerKind::Postgres {
            // Best effort, as upstream: the name only helps DBAs spot the exporter. Sent
            // without waiting for its answer (which is discarded): it goes out ahead of the
            // next query, one round trip less for every connection to a discovered database.
            let _ = conn
                .client()
                .batch_execute("SET application_name = 'pg_exporter'")
                .now_or_never();
        }
        let held = Arc::new(Held {
            conn,
            opened: Instant::now(),
            _permit: permit,
        });
        if self.forked {
            slot.shared = Arc::downgrade(&held);
        } else {
            slot.kept = Some(held.clone());
        }
        debug!(url = %self.info.masked(), "Connected.");
        Ok(held)
    }

    /// Gathers facts on `conn`, or takes the result of the pre-check a concurrent scrape ran
    /// and ended after `since` (so concurrent scrapes ask once, share a failure too, and
    /// every scrape sees databases created or dropped before it started). The pre-check's
    /// timeout counts from when it is sent, not while it waits behind another scrape's
    /// statement on the connection.
    async fn refresh_facts(&self, conn: &Held, since: Instant) -> Result<Facts, String> {
        let mut cached = self.facts.lock().await;
        if let Some((at, result)) = cached.as_ref()
            && *at >= since
        {
            return result.clone();
        }
        let timeout = self.settings.connect_timeout;
        let result = match self.kind {
            ServerKind::Pgbouncer => crate::pgbouncer::facts(&conn.conn, timeout).await,
            ServerKind::Postgres => postgres_facts(&conn.conn, self.forked, timeout).await,
        };
        *cached = Some((Instant::now(), result.clone()));
        match &result {
            Ok(facts) => *self.last_facts.write().expect("facts lock") = Some(facts.clone()),
            // A broken connection is replaced at the next attempt.
            Err(_) => drop(self.connection.lock().await.kept.take()),
        }
        result
    }

    /// The plan of a discovered database when its scrape needs no connection: planned for
    /// the instance's current version and role, and every collector's outcome cached.
    fn plan_served_from_cache(&self, instance: Option<&Facts>) -> Option<Arc<Plan>> {
        if !self.forked || self.settings.disable_cache || self.needs_plan.load(Ordering::SeqCst) {
            return None;
        }
        let instance = instance?;
        let same_role = self
            .last_planned_facts
            .read()
            .expect("plan facts lock")
            .as_ref()
            .is_some_and(|f| {
                f.version == instance.version && f.in_recovery == instance.in_recovery
            });
        let plan = self.plan();
        let cached = plan.generation > 0
            && (0..plan.collectors.len())
                .all(|idx| self.cache.0.contains_key(&(plan.generation, idx)));
        (same_role && cached).then_some(plan)
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
        let generation = PLAN_GENERATIONS.fetch_add(1, Ordering::SeqCst) + 1;
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
        let old = std::mem::replace(
            &mut *self.plan.write().expect("plan lock"),
            Arc::new(new_plan),
        );
        *self.last_planned_facts.write().expect("plan facts lock") = Some(facts.clone());
        self.cache.forget(old.generation);
        self.predicates.clear();
    }

    /// Scrapes this server: pre-check, plan, fatal collectors, then the others. Stops waiting
    /// at `deadline` and reports what was left out. `instance` is the main server's facts of
    /// this scrape (for a discovered database: when its version and role are those it was
    /// planned for and every outcome is cached, it is not connected to).
    pub async fn scrape(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        instance: Option<&Facts>,
    ) -> ServerScrape {
        let started = Instant::now();
        let result = self.scrape_inner(started, deadline, instance).await;
        let micros = started.elapsed().as_micros() as u64;
        self.stats.scrapes.fetch_add(1, Ordering::Relaxed);
        self.stats.total_micros.fetch_add(micros, Ordering::Relaxed);
        self.stats.last_micros.store(micros, Ordering::Relaxed);
        if !result.up {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn scrape_inner(
        self: &Arc<Self>,
        started: Instant,
        deadline: Option<Instant>,
        instance: Option<&Facts>,
    ) -> ServerScrape {
        if let Some(plan) = self.plan_served_from_cache(instance) {
            return self.run_plan(&plan, None, deadline).await;
        }
        let conn = match self.connection(deadline).await {
            Ok(conn) => conn,
            Err(OpenError::Budget) => {
                // Whatever is cached is served; the rest is left out.
                return self.run_plan(&self.plan(), None, deadline).await;
            }
            Err(e @ OpenError::Backoff(_)) => {
                debug!(url = %self.info.masked(), error = %e, "Not scraped.");
                return ServerScrape::default();
            }
            Err(e) if self.forked && e.database_gone() => {
                info!(url = %self.info.masked(), "Database gone before its scrape.");
                return ServerScrape::default();
            }
            Err(e) => {
                warn!(url = %self.info.masked(), error = %e, "Pre-check failed; server is down.");
                return ServerScrape::default();
            }
        };
        let facts = match self.refresh_facts(&conn, started).await {
            Ok(f) => f,
            Err(e) => {
                warn!(url = %self.info.masked(), error = %e, "Pre-check failed; server is down.");
                return ServerScrape::default();
            }
        };
        self.ensure_plan(&facts);
        let plan = self.plan();
        self.run_plan(&plan, Some(conn), deadline).await
    }

    /// Runs `plan`'s collectors through the cache, fatal ones first, on `conn`. Without it,
    /// an execution connects (to a discovered database all cached when the scrape began);
    /// when the `deadline` has passed already (no connection of the budget came free), only
    /// cached outcomes are served.
    ///
    /// One task runs the plan, so that a scrape giving up at its deadline does not cancel
    /// the executions: their results still land in the cache for the next scrape. What has
    /// not completed at the deadline is served from the cache, else counted as cut off.
    async fn run_plan(
        self: &Arc<Self>,
        plan: &Arc<Plan>,
        conn: Option<Arc<Held>>,
        deadline: Option<Instant>,
    ) -> ServerScrape {
        let order: Vec<usize> = plan
            .collectors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.config.fatal)
            .chain(
                plan.collectors
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !c.config.fatal),
            )
            .map(|(idx, _)| idx)
            .collect();
        let cached_only = conn.is_none() && deadline.is_some_and(|d| d <= Instant::now());
        let progress: Arc<Mutex<ServerScrape>> = Arc::new(Mutex::new(ServerScrape {
            up: true,
            ..ServerScrape::default()
        }));
        if !cached_only {
            let task = {
                let (server, plan, order, progress) =
                    (self.clone(), plan.clone(), order.clone(), progress.clone());
                tokio::spawn(async move {
                    for idx in order {
                        let planned = &plan.collectors[idx];
                        let outcome = server.run(&plan, idx, conn.as_ref()).await;
                        let mut progress = progress.lock().expect("progress lock");
                        if planned.config.fatal && outcome.error.is_some() {
                            warn!(
                                url = %server.info.masked(),
                                collector = %planned.config.branch,
                                error = %outcome.error.as_ref().map(ToString::to_string).unwrap_or_default(),
                                "Fatal collector failed; server is down for this scrape."
                            );
                            progress.fatal_failed = true;
                            return;
                        }
                        progress.outcomes.push(Collected {
                            planned: planned.clone(),
                            outcome,
                        });
                    }
                })
            };
            match deadline {
                None => task.await.expect("plan task panicked"),
                Some(d) => {
                    let _ = tokio::time::timeout_at(d.into(), task).await;
                }
            }
        }
        let mut scrape = std::mem::take(&mut *progress.lock().expect("progress lock"));
        if scrape.fatal_failed {
            return ServerScrape {
                fatal_failed: true,
                ..ServerScrape::default()
            };
        }
        scrape.up = true;
        for &idx in &order[scrape.outcomes.len()..] {
            let planned = &plan.collectors[idx];
            match self.cache.0.get(&(plan.generation, idx)).await {
                Some((outcome, _)) => {
                    planned.stats.total.fetch_add(1, Ordering::Relaxed);
                    count(&planned.stats, &outcome, false);
                    scrape.outcomes.push(Collected {
                        planned: planned.clone(),
                        outcome,
                    });
                }
                None => scrape.cut_off += 1,
            }
        }
        scrape
    }

    /// One invocation of a planned collector through the cache, executed on `conn` or else
    /// a connection of its own.
    async fn run(
        self: &Arc<Self>,
        plan: &Plan,
        idx: usize,
        conn: Option<&Arc<Held>>,
    ) -> Arc<Outcome> {
        let planned = &plan.collectors[idx];
        planned.stats.total.fetch_add(1, Ordering::Relaxed);
        let key = (plan.generation, idx);
        let ttl = if self.settings.disable_cache {
            Duration::ZERO
        } else {
            planned.config.ttl
        };
        let executed = AtomicBool::new(false);
        let exec = async {
            executed.store(true, Ordering::Relaxed);
            let started = Instant::now();
            let conn = match conn {
                Some(held) => Ok(held.clone()),
                None => self.connection(None).await,
            };
            let mut outcome = match conn {
                Ok(held) => {
                    execute(
                        &planned.config,
                        &held.conn,
                        &self.settings.const_labels,
                        &self.predicates,
                    )
                    .await
                }
                Err(e) => {
                    Outcome::failed(started, CollectError::Query(format!("cannot connect: {e}")))
                }
            };
            if let Some(e) = &outcome.error {
                warn!(collector = %planned.config.branch, url = %self.info.masked(), error = %e, "Collector failed.");
            }
            for family in &mut outcome.families {
                family.values.shrink_to_fit();
            }
            *planned.last.lock().expect("outcome lock") = Some(Arc::new(summary(&outcome)));
            // Cheap to clone: served to every scrape until it expires.
            (Arc::new(outcome), ttl)
        };
        let (outcome, _) = if self.settings.disable_cache {
            exec.await
        } else {
            self.cache.0.get_with(key, exec).await
        };
        count(&planned.stats, &outcome, executed.load(Ordering::Relaxed));
        outcome
    }
}

/// Counts one invocation's `outcome` in `stats` (an error, else a cache hit unless
/// `executed`).
fn count(stats: &CollectorStats, outcome: &Outcome, executed: bool) {
    if outcome.has_errors() {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    } else if !executed {
        stats.hits.fetch_add(1, Ordering::Relaxed);
    }
    if outcome.predicate_skipped {
        stats.predicate_skips.fetch_add(1, Ordering::Relaxed);
    }
}

/// `outcome` without its samples.
fn summary(outcome: &Outcome) -> Outcome {
    Outcome {
        families: outcome
            .families
            .iter()
            .map(|f| FamilyOutput {
                name: f.name.clone(),
                help: f.help.clone(),
                kind: f.kind,
                labels: Arc::default(),
                values: Vec::new(),
                samples: f.samples,
            })
            .collect(),
        error: outcome.error.clone(),
        ..*outcome
    }
}

/// The facts query of a PostgreSQL server, in one round trip. The main server's also lists
/// the databases, for discovery (one catalog query per scrape, whatever their number); a
/// discovered database's does not.
async fn postgres_facts(
    conn: &DbConnection,
    discovered: bool,
    timeout: Duration,
) -> Result<Facts, String> {
    /// The query, with the expressions of the `databases` and `busy` columns.
    macro_rules! facts_sql {
        ($databases:literal, $busy:literal) => {
            concat!(
                "SELECT current_setting('server_version_num')::int AS version, ",
                "pg_is_in_recovery() AS in_recovery, current_database()::text AS dbname, ",
                "current_user::text AS username, ",
                $databases,
                " AS databases, ",
                $busy,
                " AS busy, ",
                "array_to_string(ARRAY(SELECT nspname FROM pg_namespace ORDER BY 1), chr(1)) AS schemas, ",
                "array_to_string(ARRAY(SELECT extname FROM pg_extension ORDER BY 1), chr(1)) AS extensions"
            )
        };
    }
    let sql = if discovered {
        facts_sql!("''", "''")
    } else {
        // A new session takes RowExclusiveLock on its database's pg_database object while it
        // starts, and waits in InitPostgres behind any of the modes listed (DROP and RENAME
        // take AccessExclusiveLock): past the connect timeout such a session stays queued on
        // the server until the DBA's statement ends.
        facts_sql!(
            "array_to_string(ARRAY(SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1), chr(1))",
            "array_to_string(ARRAY(SELECT d.datname FROM pg_database d WHERE d.datallowconn AND NOT d.datistemplate \
             AND EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'object' AND l.classid = 'pg_database'::regclass \
             AND l.objid = d.oid AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')) \
             ORDER BY 1), chr(1))"
        )
    };
    let result = conn.query(sql, Some(timeout)).await.map_err(|e| match e {
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
        busy_databases: list(5),
        schemas: list(6).into_iter().collect(),
        extensions: list(7).into_iter().collect(),
    })
}
