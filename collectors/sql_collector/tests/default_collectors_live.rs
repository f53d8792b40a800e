//! The built-in collector set (`config/*.yml`, as `sql_collector::default_config::load()`
//! embeds it) against real PostgreSQL 13, 14, 15, 16, 17 and 18 primaries and a PostgreSQL 15
//! streaming replica, under induced activity.
//!
//! For every server the exporter is built as the binary builds it (built-in set, auto-discovery
//! on, default exclusions) and scraped twice. Then:
//! - every collector planned on the main database ran, without error, without dropping rows
//!   with a duplicate label set, and within its timeout (its last [`Outcome`]);
//! - every collector of every auto-discovered database did the same (the exporter's own
//!   `pg_exporter_query_scrape_error_count` and `_duration` self-metrics, which cover them);
//! - every metric family defined by the planned collectors has at least one sample in the
//!   scrape output, unless it is on the reviewed allowlist below.
//!
//! The activity, on each primary: `pgbench` (init and a short run as a non-bootstrap role, so
//! that `pg_query` sees statements), a physical and a logical replication slot, a publication
//! in database `app` and a subscription to it in database `sub` (the slot created beforehand,
//! `create_slot = false`), an open transaction that holds a row lock and sits idle, an UPDATE
//! waiting for that row lock, a CREATE INDEX CONCURRENTLY waiting for that transaction, a
//! VACUUM slowed down by cost-based delay, a VACUUM FULL slowed down by an expression index on
//! a sleeping function, a base backup throttled to 32 kB/s (the replication command
//! `BASE_BACKUP` through `psql`, so that it works on every version: Debian's PostgreSQL 15
//! `pg_basebackup` refuses newer servers), a temporary file, a function call
//! (`track_functions = all`), a sequence and a partitioned table with a default partition. On
//! the replica: select-only `pgbench`, a function call, an idle open transaction, a physical
//! slot and a base backup.
//!
//! One test per version, each with its own servers. Setups run in parallel, scrapes take
//! turns ([`SCRAPE_GATE`]): many collectors have upstream's 100 ms default timeout, which a
//! concurrent `initdb` or `pgbench` on a 2-core machine can exceed.
//!
//! `cargo test -p sql-collector --test default_collectors_live -- --nocapture` prints each
//! server's `server_version_num` and a summary; set `DEFAULT_COLLECTORS_DUMP=<dir>` to keep
//! the scrape outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use sql_collector::collector::Outcome;
use sql_collector::config::{CollectorConfig, CollectorSet, Usage};
use sql_collector::conninfo::ConnInfo;
use sql_collector::exporter::{Exporter, ExporterSettings};
use sql_collector::server::EngineSettings;
use test_harness::{ClusterBuilder, PgVersion, Postgres};
use tokio_postgres::Client;

/// Metric families (or whole collectors) allowed to have no sample on any server, with why.
/// Keep it short: an entry hides a collector that could silently stop working.
///
/// Empty: the activity gives every family planned on 13 to 18 a sample, progress views and
/// `pg_backup` included (`BASE_BACKUP` runs on every version and on the replica, where its
/// WAL sender also gives `pg_repl` a row). Collectors that are not planned are not checked:
/// the `skip: true` ones, those for PostgreSQL 19 (`pg_lock_stat`, `pg_vacuum_score`,
/// `pg_recovery_state`) and those needing an extension that is not installed.
const NO_SAMPLES_EXPECTED: &[(&str, &str)] = &[];

/// Allowed to have no sample on the replica only, with why. Empty, as above.
const NO_SAMPLES_EXPECTED_ON_REPLICA: &[(&str, &str)] = &[];

/// Collectors that emit every family any of their branches defines on every version, NaN where
/// the version lacks what a family reports, so that a dashboard sees the same series
/// everywhere: upstream's one `pg_setting` branch reads the newer settings with
/// `current_setting(…, true)`. With the setting's first version, where its value is a number.
const SAME_FAMILIES_ON_EVERY_VERSION: &[(&str, &[(&str, u32)])] = &[(
    "pg_setting",
    &[
        ("pg_setting_shared_memory_size", 150000),
        ("pg_setting_hugepage_count", 150000),
        ("pg_setting_hugepage_status", 170000),
        ("pg_setting_io_method", 180000),
    ],
)];

/// Databases the activity creates that auto-discovery must find (the others are `postgres`,
/// which is the main connection's, the templates, and `maint`, which is closed to new
/// connections on purpose: see [`Activity::start_on_primary`]).
const DISCOVERED: &[&str] = &["app", "sub"];

/// Setups hold it shared, scrapes exclusively.
static SCRAPE_GATE: RwLock<()> = RwLock::new(());

/// When set to a directory, each server's second scrape output is written there as
/// `<role>.prom` (e.g. `PostgreSQL_15_replica.prom`), to look at what the collectors report.
const DUMP_ENV: &str = "DEFAULT_COLLECTORS_DUMP";

/// How long setup steps may take to show their effect (subscription sync, progress rows).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn postgres_13() {
    run_version(PgVersion::V13, false);
}

#[test]
fn postgres_14() {
    run_version(PgVersion::V14, false);
}

#[test]
fn postgres_15_primary_and_replica() {
    run_version(PgVersion::V15, true);
}

#[test]
fn postgres_16() {
    run_version(PgVersion::V16, false);
}

#[test]
fn postgres_17() {
    run_version(PgVersion::V17, false);
}

#[test]
fn postgres_18() {
    run_version(PgVersion::V18, false);
}

/// Starts the servers, prepares them, induces the activity, scrapes and checks.
fn run_version(version: PgVersion, with_replica: bool) {
    let started = Instant::now();
    let cluster = {
        let _shared = SCRAPE_GATE.read().unwrap_or_else(PoisonError::into_inner);
        let mut builder = ClusterBuilder::new(version);
        if with_replica {
            builder = builder.replica();
        }
        let cluster = builder
            .start()
            .unwrap_or_else(|e| panic!("cannot start {version}: {e:?}"));
        prepare_primary(cluster.primary());
        if let Some(replica) = cluster.try_replica() {
            prepare_replica(cluster.primary(), replica);
        }
        cluster
    };
    let setup_done = started.elapsed();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let exclusive = SCRAPE_GATE.write().unwrap_or_else(PoisonError::into_inner);
    let waited = started.elapsed();
    let problems = runtime.block_on(async {
        let mut problems = Vec::new();
        let primary_activity = Activity::start_on_primary(cluster.primary()).await;
        let replica_activity = match cluster.try_replica() {
            Some(replica) => Some(Activity::start_on_replica(replica).await),
            None => None,
        };
        problems.extend(
            verify(
                &format!("{version} primary"),
                &cluster.primary().url("postgres"),
                NO_SAMPLES_EXPECTED,
            )
            .await,
        );
        if let Some(replica) = cluster.try_replica() {
            let allowed: Vec<(&str, &str)> = NO_SAMPLES_EXPECTED
                .iter()
                .chain(NO_SAMPLES_EXPECTED_ON_REPLICA)
                .copied()
                .collect();
            problems.extend(
                verify(
                    &format!("{version} replica"),
                    &replica.url("postgres"),
                    &allowed,
                )
                .await,
            );
        }
        drop(replica_activity);
        drop(primary_activity);
        problems
    });
    drop(exclusive);
    println!(
        "{version}: setup {:.1}s, waited for the scrape turn {:.1}s, total {:.1}s",
        setup_done.as_secs_f64(),
        (waited - setup_done).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "{version}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Setup (blocking, through the harness's psql and pgbench)
// ---------------------------------------------------------------------------------------------

/// Roles, databases, pgbench, objects, slots, publication and subscription on the primary.
fn prepare_primary(pg: &Postgres) {
    let port = pg.port();
    exec(
        pg,
        "postgres",
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n\
         CREATE ROLE app LOGIN;\n\
         CREATE DATABASE app OWNER app;\n\
         CREATE DATABASE sub;\n\
         CREATE DATABASE maint;\n",
    );
    // pgbench as `app`: pg_query leaves out the bootstrap superuser's statements.
    run_command(
        pg.pgbench_command("app")
            .expect("pgbench")
            .env("PGUSER", "app")
            .args(["-i", "-s", "1", "-q"]),
        "pgbench -i",
    );
    run_command(
        pg.pgbench_command("app")
            .expect("pgbench")
            .env("PGUSER", "app")
            .args(["-c", "2", "-j", "2", "-t", "150"]),
        "pgbench",
    );
    exec(
        pg,
        "app",
        "CREATE TABLE lock_t (id int PRIMARY KEY, v int NOT NULL);\n\
         INSERT INTO lock_t VALUES (1, 0), (2, 0);\n\
         CREATE TABLE cic_t (id int);\n\
         -- Never vacuumed (no autovacuum, empty visibility map): VACUUM reads every page.\n\
         CREATE TABLE vac_t WITH (autovacuum_enabled = false) AS\n\
           SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 100000) g;\n\
         CREATE INDEX vac_t_id ON vac_t (id);\n\
         DELETE FROM vac_t WHERE id % 2 = 0;\n\
         CREATE TABLE repl_t (id int PRIMARY KEY, v text);\n\
         INSERT INTO repl_t SELECT g, 'v' || g FROM generate_series(1, 100) g;\n\
         CREATE PUBLICATION pub FOR TABLE repl_t;\n\
         SELECT pg_create_logical_replication_slot('sub_slot', 'pgoutput');\n\
         SELECT pg_create_physical_replication_slot('phys_slot', true);\n\
         CREATE SEQUENCE seq_a;\n\
         SELECT nextval('seq_a');\n\
         CREATE FUNCTION add_one(int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN $1 + 1; END $$;\n\
         SELECT add_one(1);\n\
         CREATE TABLE parted (id int) PARTITION BY RANGE (id);\n\
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);\n\
         CREATE TABLE parted_default PARTITION OF parted DEFAULT;\n\
         INSERT INTO parted SELECT g FROM generate_series(1, 300) g;\n\
         ANALYZE;\n\
         -- A sort bigger than work_mem spills to a temporary file.\n\
         SET work_mem = '64kB';\n\
         SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s;\n",
    );
    exec(
        pg,
        "maint",
        "CREATE FUNCTION slow_key(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$\n\
         BEGIN\n\
           IF current_setting('pgsuite.slow', true) = 'on' THEN PERFORM pg_sleep(0.05); END IF;\n\
           RETURN $1;\n\
         END $$;\n\
         CREATE TABLE clu_t AS SELECT g AS id FROM generate_series(1, 2000) g;\n\
         CREATE INDEX clu_t_key ON clu_t (slow_key(id));\n",
    );
    exec(
        pg,
        "sub",
        &format!(
            "CREATE TABLE repl_t (id int PRIMARY KEY, v text);\n\
             CREATE SUBSCRIPTION sub\n\
               CONNECTION 'host=127.0.0.1 port={port} user=postgres dbname=app sslmode=disable'\n\
               PUBLICATION pub WITH (create_slot = false, slot_name = 'sub_slot');\n"
        ),
    );
    wait_for(pg, "sub", "the subscription to sync and stream", || {
        "SELECT (SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r') = 0 \
           AND (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL AND relid IS NULL) = 1"
            .to_owned()
    });
}

/// Waits for the replica to replay the primary's setup, then gives it its own statements,
/// function calls and a physical slot.
fn prepare_replica(primary: &Postgres, replica: &Postgres) {
    let lsn = primary
        .query("postgres", "SELECT pg_current_wal_lsn()")
        .expect("primary LSN");
    wait_for(
        replica,
        "postgres",
        "the replica to replay the setup",
        || format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
    );
    run_command(
        replica
            .pgbench_command("app")
            .expect("pgbench")
            .env("PGUSER", "app")
            .args(["-S", "-n", "-c", "1", "-t", "50"]),
        "pgbench -S on the replica",
    );
    exec(
        replica,
        "app",
        "SELECT add_one(1);\n\
         SELECT last_value FROM seq_a;\n",
    );
    exec(
        replica,
        "postgres",
        "SELECT pg_create_physical_replication_slot('replica_slot', true);\n",
    );
}

fn exec(pg: &Postgres, db: &str, script: &str) {
    pg.execute(db, script)
        .unwrap_or_else(|e| panic!("setup on {} db {db}: {e:?}", pg.describe()));
}

fn run_command(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls the boolean `sql()` until true.
fn wait_for(pg: &Postgres, db: &str, what: &str, sql: impl Fn() -> String) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match pg.query(db, &sql()) {
            Ok(v) if v == "t" => return,
            Ok(_) => {}
            Err(e) => panic!("waiting for {what} on {}: {e:?}", pg.describe()),
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} on {}",
            pg.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Background activity (sessions that stay open or busy during the scrapes)
// ---------------------------------------------------------------------------------------------

/// Sessions kept open or busy while the exporter scrapes; stopped when dropped (the servers
/// end the statements still running when the cluster stops).
struct Activity {
    _idle: Vec<Client>,
    busy: Vec<tokio::task::JoinHandle<()>>,
    base_backup: Child,
}

impl Activity {
    /// Idle transaction holding a row lock, a waiter on it, CREATE INDEX CONCURRENTLY waiting
    /// for that transaction, a slow VACUUM, a slow VACUUM FULL and a throttled base backup.
    async fn start_on_primary(pg: &Postgres) -> Activity {
        let holder = connect(pg, "app").await;
        holder
            .batch_execute(
                "BEGIN; UPDATE lock_t SET v = v + 1 WHERE id = 1; INSERT INTO cic_t VALUES (1)",
            )
            .await
            .expect("open transaction");
        let mut busy = Vec::new();
        busy.push(run_busy(
            connect(pg, "app").await,
            "UPDATE lock_t SET v = v + 1 WHERE id = 1",
        ));
        busy.push(run_busy(
            connect(pg, "app").await,
            "CREATE INDEX CONCURRENTLY cic_idx ON cic_t (id)",
        ));
        let vacuum = connect(pg, "app").await;
        vacuum
            .batch_execute("SET vacuum_cost_delay = 100; SET vacuum_cost_limit = 1")
            .await
            .expect("vacuum settings");
        busy.push(run_busy(vacuum, "VACUUM vac_t"));
        // VACUUM FULL holds an ACCESS EXCLUSIVE lock for its whole run, which makes any
        // collector reading that table's size wait (and time out), as it would in production.
        // So it runs in `maint`, closed to new connections: auto-discovery leaves it alone.
        let full = connect(pg, "maint").await;
        full.batch_execute("SET pgsuite.slow = 'on'")
            .await
            .expect("slow_key setting");
        busy.push(run_busy(full, "VACUUM FULL clu_t"));
        let control = connect(pg, "postgres").await;
        control
            .batch_execute("ALTER DATABASE maint ALLOW_CONNECTIONS false")
            .await
            .expect("close maint");
        let base_backup = start_base_backup(pg);
        let activity = Activity {
            _idle: vec![holder, control],
            busy,
            base_backup,
        };
        activity
            .wait_visible(
                pg,
                "SELECT (SELECT count(*) FROM pg_stat_progress_vacuum WHERE datname = 'app') > 0 \
                   AND (SELECT count(*) FROM pg_stat_progress_create_index) > 0 \
                   AND (SELECT count(*) FROM pg_stat_progress_cluster) > 0 \
                   AND (SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'streaming database files') > 0 \
                   AND (SELECT count(*) FROM pg_locks WHERE NOT granted) >= 2",
            )
            .await;
        activity
    }

    /// An idle open transaction and a throttled base backup on the replica.
    async fn start_on_replica(pg: &Postgres) -> Activity {
        let holder = connect(pg, "app").await;
        holder
            .batch_execute("BEGIN; SELECT count(*) FROM lock_t")
            .await
            .expect("open transaction on the replica");
        let activity = Activity {
            _idle: vec![holder],
            busy: Vec::new(),
            base_backup: start_base_backup(pg),
        };
        activity
            .wait_visible(
                pg,
                "SELECT (SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'streaming database files') > 0",
            )
            .await;
        activity
    }

    /// Waits until `sql` (boolean) holds; fails early, saying why, if a busy statement ended.
    async fn wait_visible(&self, pg: &Postgres, sql: &str) {
        let control = connect(pg, "postgres").await;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let row = control.query_one(sql, &[]).await.expect("activity check");
            if row.get::<_, bool>(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the activity did not become visible on {} within {SETTLE_TIMEOUT:?}: {sql}",
                pg.describe()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        for task in &self.busy {
            task.abort();
        }
        let _ = self.base_backup.kill();
        let _ = self.base_backup.wait();
    }
}

async fn connect(pg: &Postgres, db: &str) -> Client {
    let conninfo = format!(
        "host={} port={} user=postgres dbname={db} sslmode=disable application_name=pgsuite_activity",
        pg.host(),
        pg.port()
    );
    let (client, _connection) = ConnInfo::parse(&conninfo)
        .expect("activity conninfo")
        .connect(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {} db {db}: {e}", pg.describe()));
    client
}

/// Runs a long statement in the background; reports it if it ends (it should not before the
/// activity is dropped).
fn run_busy(client: Client, sql: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match client.batch_execute(sql).await {
            Ok(()) => eprintln!("background statement ended early: {sql}"),
            Err(e) => eprintln!("background statement failed: {sql}: {e}"),
        }
    })
}

/// `BASE_BACKUP` at 32 kB/s through psql's replication connection, output discarded; it
/// streams for many minutes and is killed when the activity ends.
fn start_base_backup(pg: &Postgres) -> Child {
    let command = if pg.version() >= PgVersion::V15 {
        "BASE_BACKUP (LABEL 'pgsuite', PROGRESS, CHECKPOINT 'fast', MAX_RATE 32)"
    } else {
        "BASE_BACKUP LABEL 'pgsuite' PROGRESS FAST MAX_RATE 32"
    };
    pg.client_command("psql", "postgres")
        .expect("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &format!(
                "host={} port={} user=postgres replication=true sslmode=disable",
                pg.host(),
                pg.port()
            ),
            "-c",
            command,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start psql for BASE_BACKUP")
}

// ---------------------------------------------------------------------------------------------
// Scrape and checks
// ---------------------------------------------------------------------------------------------

/// Builds the exporter as the binary does, scrapes twice and returns the problems found.
async fn verify(role: &str, url: &str, allowed: &[(&str, &str)]) -> Vec<String> {
    let collectors = sql_collector::default_config::load().expect("the built-in collector set");
    let defaults = ExporterSettings::default();
    let settings = ExporterSettings {
        auto_discovery: true,
        engine: EngineSettings {
            connect_timeout: Duration::from_secs(5),
            ..defaults.engine
        },
        ..defaults
    };
    let info = ConnInfo::parse(url).expect("server URL");
    let exporter = Exporter::new(settings, collectors, info);

    let first = Instant::now();
    let body1 = exporter.scrape(None).await;
    let first = first.elapsed();
    let second = Instant::now();
    let body2 = exporter.scrape(None).await;
    let second = second.elapsed();

    if let Some(dir) = std::env::var_os(DUMP_ENV) {
        let file = std::path::Path::new(&dir).join(format!("{}.prom", role.replace(' ', "_")));
        std::fs::write(&file, &body2)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    }

    let mut problems = Vec::new();
    let Some(facts) = exporter.main_server().facts() else {
        return vec![format!("{role}: the pre-check never succeeded")];
    };
    println!("{role}: server_version_num {}", facts.version);

    // The harness's replica streams with a password in primary_conninfo: pg_meta shows the
    // connection string, masked, and no password ever reaches the exposition.
    for secret in [
        test_harness::REPLICATION_PASSWORD,
        test_harness::PASSWORD_USER_PASSWORD,
    ] {
        if body1.contains(secret) || body2.contains(secret) {
            problems.push(format!("{role}: a password reached /metrics"));
        }
    }
    if facts.in_recovery
        && !body2
            .lines()
            .any(|l| l.starts_with("pg_meta_info{") && l.contains("password=xxxxx"))
    {
        problems.push(format!(
            "{role}: pg_meta_info lacks the masked primary_conninfo"
        ));
    }

    let discovered = exporter.discovered();
    for db in DISCOVERED {
        if !discovered.iter().any(|d| d == db) {
            problems.push(format!(
                "{role}: database {db} was not auto-discovered (found {discovered:?})"
            ));
        }
    }

    let plan = exporter.main_server().plan();
    let outcomes: Vec<(&CollectorConfig, Option<Outcome>)> = plan
        .collectors
        .iter()
        .map(|p| {
            let last = p
                .last
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_deref()
                .cloned();
            (&*p.config, last)
        })
        .collect();
    let observed: Vec<(&CollectorConfig, Option<&Outcome>)> =
        outcomes.iter().map(|(c, o)| (*c, o.as_ref())).collect();
    problems.extend(check_outcomes(role, &observed));

    let mut datnames = vec![facts.dbname.clone()];
    datnames.extend(discovered.iter().cloned());
    problems.extend(check_self_metrics(
        role,
        &body2,
        &datnames,
        &exporter.collectors(),
    ));

    problems.extend(check_same_families(
        role,
        &body2,
        facts.version,
        &exporter.collectors(),
    ));

    let defined = defined_families(plan.collectors.iter().map(|p| &*p.config));
    let mut present = present_families(&body1);
    present.extend(present_families(&body2));
    problems.extend(check_families(role, &defined, &present, allowed));
    let allowed_and_empty: Vec<&str> = allowed
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            defined
                .iter()
                .any(|(f, c)| (f == name || c == name) && !present.contains(f))
        })
        .collect();

    println!(
        "{role}: {} collectors planned on the main database, databases discovered {discovered:?}, \
         {} of {} families with samples (allowlisted and empty: {allowed_and_empty:?}), \
         scrapes {:.2}s and {:.2}s",
        plan.collectors.len(),
        defined.keys().filter(|f| present.contains(*f)).count(),
        defined.len(),
        first.as_secs_f64(),
        second.as_secs_f64(),
    );
    problems
}

/// Problems of the main database's planned collectors: never ran, failed, dropped rows with a
/// duplicate label set, or took longer than their timeout.
fn check_outcomes(role: &str, observed: &[(&CollectorConfig, Option<&Outcome>)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (config, outcome) in observed {
        let what = format!("{role}: collector {} ({})", config.branch, config.source);
        let Some(outcome) = outcome else {
            problems.push(format!("{what} never ran"));
            continue;
        };
        if let Some(error) = &outcome.error {
            problems.push(format!("{what} failed: {error}"));
        }
        if outcome.duplicate_rows > 0 {
            problems.push(format!(
                "{what} dropped {} row(s) with a duplicate label set",
                outcome.duplicate_rows
            ));
        }
        if outcome.not_a_number > 0 {
            problems.push(format!(
                "{what} emitted {} value(s) that were no number as NaN",
                outcome.not_a_number
            ));
        }
        if let Some(timeout) = config.timeout
            && outcome.duration > timeout
        {
            problems.push(format!(
                "{what} took {:?}, over its timeout {timeout:?}",
                outcome.duration
            ));
        }
    }
    problems
}

/// Problems the exporter's self-metrics show for every scraped database (main and
/// discovered): scrape errors, collector errors, collectors slower than their timeout, and
/// databases with no collector statistics at all (never planned or scraped).
fn check_self_metrics(
    role: &str,
    body: &str,
    datnames: &[String],
    set: &CollectorSet,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut timeouts: BTreeMap<&str, Option<Duration>> = BTreeMap::new();
    for c in &set.collectors {
        let entry = timeouts.entry(c.name.as_str()).or_insert(c.timeout);
        *entry = match (*entry, c.timeout) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (name, labels, value) in body.lines().filter_map(parse_sample) {
        let label = |k: &str| labels.get(k).map_or("", String::as_str);
        match name {
            "pg_up" if value != 1.0 => problems.push(format!("{role}: pg_up is {value}")),
            "pg_exporter_server_scrape_error_count" if value != 0.0 => problems.push(format!(
                "{role}: database {} had {value} failed scrape(s)",
                label("datname")
            )),
            "pg_exporter_query_scrape_total_count" => {
                seen.insert(label("datname").to_owned());
            }
            "pg_exporter_query_scrape_error_count" if value != 0.0 => problems.push(format!(
                "{role}: database {}: collector {} failed {value} time(s)",
                label("datname"),
                label("query")
            )),
            "pg_exporter_query_scrape_duration" => {
                if let Some(Some(timeout)) = timeouts.get(label("query"))
                    && value > timeout.as_secs_f64()
                {
                    problems.push(format!(
                        "{role}: database {}: collector {} took {value}s, over its timeout {timeout:?}",
                        label("datname"),
                        label("query")
                    ));
                }
            }
            _ => {}
        }
    }
    for db in datnames {
        if !seen.contains(db) {
            problems.push(format!(
                "{role}: database {db} has no collector statistics (nothing planned or scraped)"
            ));
        }
    }
    problems
}

/// Problems of the [`SAME_FAMILIES_ON_EVERY_VERSION`] collectors: a family one of their
/// branches defines (on any version) without a sample, or a listed family that is NaN from its
/// first version on (or a number before).
fn check_same_families(role: &str, body: &str, version: u32, set: &CollectorSet) -> Vec<String> {
    let mut problems = Vec::new();
    for (collector, since) in SAME_FAMILIES_ON_EVERY_VERSION {
        let branches = set.collectors.iter().filter(|c| c.name == *collector);
        for family in defined_families(branches.map(|c| &**c)).keys() {
            let values: Vec<f64> = body
                .lines()
                .filter_map(parse_sample)
                .filter(|(name, _, _)| name == family)
                .map(|(_, _, v)| v)
                .collect();
            if values.is_empty() {
                problems.push(format!(
                    "{role}: family {family} (collector {collector}) is missing; it must be on \
                     every version, NaN where the version lacks it"
                ));
            }
            if let Some((_, first)) = since.iter().find(|(f, _)| f == family) {
                let want_number = version >= *first;
                if values.iter().any(|v| v.is_nan() == want_number) {
                    problems.push(format!(
                        "{role}: family {family} is {values:?}; expected {} on {version}",
                        if want_number { "a number" } else { "NaN" }
                    ));
                }
            }
        }
    }
    problems
}

/// Every metric family the collectors define, with the collector name defining it.
fn defined_families<'a>(
    collectors: impl Iterator<Item = &'a CollectorConfig>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for c in collectors {
        for column in c.value_columns() {
            let base = c.metric_name(column);
            if column.usage == Usage::Histogram {
                for suffix in ["_bucket", "_count", "_sum"] {
                    out.insert(format!("{base}{suffix}"), c.name.clone());
                }
            } else {
                out.insert(base, c.name.clone());
            }
        }
    }
    out
}

/// Families with at least one sample in a scrape output (the exporter writes a family's
/// header only when it has samples).
fn present_families(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Defined families without samples that the allowlist does not name (by family or collector).
fn check_families(
    role: &str,
    defined: &BTreeMap<String, String>,
    present: &BTreeSet<String>,
    allowed: &[(&str, &str)],
) -> Vec<String> {
    defined
        .iter()
        .filter(|(family, _)| !present.contains(*family))
        .filter(|(family, collector)| {
            !allowed
                .iter()
                .any(|(name, _)| name == family || name == collector)
        })
        .map(|(family, collector)| {
            format!("{role}: family {family} (collector {collector}) has no sample")
        })
        .collect()
}

/// `name{k="v",...} value` → (name, labels, value); `None` for comments and blank lines.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, BTreeMap::new(), value));
    };
    let mut labels = BTreeMap::new();
    for pair in rest.strip_suffix('}')?.split("\",") {
        let (k, v) = pair.split_once("=\"")?;
        labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
    }
    Some((name, labels, value))
}

// ---------------------------------------------------------------------------------------------
// The checks themselves can fail
// ---------------------------------------------------------------------------------------------

#[test]
fn checks_report_failures() {
    use sql_collector::collector::CollectError;

    let yaml = "a:\n  name: a\n  query: SELECT 1 AS x\n  metrics:\n    - x: { usage: GAUGE, description: x }\n\
                b:\n  name: b\n  query: SELECT 1 AS y\n  timeout: 0.5\n  metrics:\n    - y: { usage: GAUGE, description: y }\n\
                c:\n  name: c\n  query: SELECT 1 AS z\n  metrics:\n    - z: { usage: HISTOGRAM, bucket: [1], description: z }\n";
    let configs = sql_collector::config::parse_str(yaml, "fabricated.yml").unwrap();
    let (a, b, c) = (&configs[0], &configs[1], &configs[2]);
    let ok = Outcome {
        families: Vec::new(),
        error: None,
        predicate_skipped: false,
        duplicate_rows: 0,
        not_a_number: 0,
        started: Instant::now(),
        duration: Duration::from_millis(5),
    };
    assert!(check_outcomes("t", &[(a, Some(&ok)), (b, Some(&ok)), (c, Some(&ok))]).is_empty());

    let failed = Outcome {
        error: Some(CollectError::Query("relation \"x\" does not exist".into())),
        ..ok.clone()
    };
    let slow = Outcome {
        duration: Duration::from_secs(1),
        ..ok.clone()
    };
    let duplicates = Outcome {
        duplicate_rows: 2,
        ..ok.clone()
    };
    let not_numbers = Outcome {
        not_a_number: 1,
        ..ok.clone()
    };
    let problems = check_outcomes(
        "t",
        &[
            (a, Some(&failed)),
            (b, Some(&slow)),
            (c, Some(&duplicates)),
            (a, Some(&not_numbers)),
        ],
    );
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[0].contains("does not exist"), "{problems:?}");
    assert!(problems[1].contains("over its timeout"), "{problems:?}");
    assert!(problems[2].contains("duplicate"), "{problems:?}");
    assert!(problems[3].contains("no number"), "{problems:?}");
    assert_eq!(check_outcomes("t", &[(a, None)]).len(), 1);

    let defined = defined_families(configs.iter());
    assert_eq!(
        defined.keys().collect::<Vec<_>>(),
        ["a_x", "b_y", "c_z_bucket", "c_z_count", "c_z_sum"]
    );
    let body = "# HELP a_x x\n# TYPE a_x gauge\na_x 1\n";
    let present = present_families(body);
    assert_eq!(check_families("t", &defined, &present, &[]).len(), 4);
    assert_eq!(
        check_families("t", &defined, &present, &[("b_y", "why"), ("c", "why")]).len(),
        0
    );

    let set = CollectorSet::from_collectors("fabricated", configs.clone());
    let dbs = ["postgres".to_owned(), "app".to_owned()];
    let good = "pg_up 1\n\
        pg_exporter_query_scrape_total_count{datname=\"postgres\",query=\"a\"} 2\n\
        pg_exporter_query_scrape_total_count{datname=\"app\",query=\"a\"} 2\n\
        pg_exporter_query_scrape_error_count{datname=\"app\",query=\"a\"} 0\n\
        pg_exporter_query_scrape_duration{datname=\"app\",query=\"b\"} 0.2\n";
    assert!(check_self_metrics("t", good, &dbs, &set).is_empty());
    let bad = "pg_up 0\n\
        pg_exporter_query_scrape_total_count{datname=\"postgres\",query=\"a\"} 2\n\
        pg_exporter_query_scrape_error_count{datname=\"postgres\",query=\"a\"} 1\n\
        pg_exporter_query_scrape_duration{datname=\"postgres\",query=\"b\"} 0.7\n\
        pg_exporter_server_scrape_error_count{datname=\"postgres\"} 1\n";
    let problems = check_self_metrics("t", bad, &dbs, &set);
    assert_eq!(problems.len(), 5, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("app has no collector statistics"))
    );
}
