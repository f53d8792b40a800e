//! A real Patroni HA cluster: Patroni 3.0 (Debian `patroni`) members running PostgreSQL 15,
//! with a single-node [etcd](crate::etcd) 3.4 as DCS, all on loopback and free ports.
//!
//! ```no_run
//! use std::time::Duration;
//! use test_harness::PatroniClusterBuilder;
//!
//! let cluster = PatroniClusterBuilder::new().members(2).start().unwrap();
//! let (leader, replica) = (cluster.leader().unwrap(), cluster.replica().unwrap());
//! cluster.switchover(replica).unwrap();       // planned: leader is now `replica`
//! cluster.wait_streaming(leader, Duration::from_secs(60)).unwrap();
//! let failover = cluster.hard_failover().unwrap(); // kill -9 of Patroni and postmaster
//! cluster.rejoin(failover.old).unwrap();     // Patroni again, pg_rewind, streaming
//! ```
//!
//! # Layout
//!
//! One temporary directory (owned by the service user, see [`privileges`](crate::privileges))
//! holds every member; etcd has its own (see [`Etcd`]):
//!
//! ```text
//! <dir>/pg1/patroni.yml     Patroni's configuration (mode 0600: passwords inside)
//! <dir>/pg1/data            PGDATA (initdb on the first leader, pg_basebackup on the others)
//! <dir>/pg1/run             unix_socket_directories (each member its own)
//! <dir>/pg1/pgpass          Patroni's password file for replication and pg_rewind
//! <dir>/pg1/log/patroni.log Patroni's own log (`log.dir`, rotated by Patroni at 10 MB)
//! <dir>/pg1/pglog/*.csv     PostgreSQL's log (logging_collector, csvlog)
//! <dir>/pg1/patroni.stdout  Patroni's stdout/stderr (PostgreSQL's output before the collector)
//! ```
//!
//! # Settings
//!
//! Scope `pgsuite-<pid>-<n>` (unique, so a member's processes can be told apart by
//! `cluster_name` in their titles), namespace `/pgsuite/`, DCS timing ttl 10 / loop_wait 2 /
//! retry_timeout 3 ([`PatroniTiming`]): a switchover takes about 2.5 s, a hard failover about
//! ttl. `use_pg_rewind` and `use_slots` are on. Roles: the superuser `postgres` with
//! [`SUPERUSER_PASSWORD`], [`REPLICATION_USER`] and `rewind_user` created by Patroni, and
//! [`PASSWORD_USER`] (member of `pg_monitor`) created by the harness. `pg_hba`: trust on the
//! socket, scram-sha-256 over TCP from 127.0.0.1.
//!
//! # Processes
//!
//! Patroni is spawned directly as the service user (`postgres` when this process is root), so
//! the PID held is Patroni's own; PostgreSQL is Patroni's child. Dropping the cluster sends
//! SIGTERM to every Patroni at once (each stops its PostgreSQL, fast mode), waits, then stops
//! etcd and removes the directories. If this process dies first the [reaper]
//! does the same: each Patroni is terminated (killed after 5 s), then `pg_ctl stop -m immediate`
//! runs on any PostgreSQL left, then etcd is stopped and the directories removed.
//! [`Footprint`] finds whatever of a cluster still runs, for tests of exactly that.
//!
//! # pgBackRest and Pgbouncer
//!
//! [`PatroniClusterBuilder::pgbackrest`] archives WAL from whichever member leads into one
//! repository under `<dir>/pgbackrest` (stanza [`DEFAULT_STANZA`]):
//! `archive_mode = on` and the `archive_command` are DCS parameters, so every member runs with
//! them, and the stanza lists every member (`pg1-…`, `pg2-…`); pgBackRest itself finds the
//! primary among them for `backup` and `check`, so nothing is rewritten after a switchover or a
//! failover (see [`pgbackrest`](crate::pgbackrest) for what was measured).
//!
//! [`PatroniClusterBuilder::pgbouncer`] puts [HAProxy](crate::haproxy) in front of the members,
//! with Pigsty's `primary` and `replica` services checked on Patroni's REST API, and one
//! Pgbouncer whose databases all point at the `primary` service ([`PRIMARY_SERVICE`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::etcd::Etcd;
use crate::haproxy::{Haproxy, HaproxyListener};
use crate::pgbackrest::{DEFAULT_STANZA, PgBackRest, PgHost};
use crate::pgbouncer::{Pgbouncer, PgbouncerTarget};
use crate::ports::{LOCALHOST, free_port};
use crate::postgres::{
    PASSWORD_USER, PASSWORD_USER_PASSWORD, REPLICATION_PASSWORD, REPLICATION_USER, SUPERUSER,
    sql_str,
};
use crate::privileges::{
    ServiceDir, make_service_dir, service_command, service_user, write_service_file,
};
use crate::process::ManagedChild;
use crate::reaper::{self, CleanupHandle};
use crate::util::{log_tails, poll, run, sh_quote, sh_quote_path};
use crate::versions::{DEBIAN_PG15_BIN, client_tool, require_binary};

/// Where Debian's `patroni` package installs the daemon (`#!/usr/bin/python3`).
pub const PATRONI_BIN: &str = "/usr/bin/patroni";
/// Where Debian's `patroni` package installs the command-line client.
pub const PATRONICTL_BIN: &str = "/usr/bin/patronictl";
/// The password of the superuser [`SUPERUSER`] (needed over TCP; the socket trusts).
pub const SUPERUSER_PASSWORD: &str = "patroni-super-pw";
/// The role Patroni uses for `pg_rewind`.
pub const REWIND_USER: &str = "rewind_user";
/// The password of [`REWIND_USER`].
pub const REWIND_PASSWORD: &str = "patroni-rewind-pw";
/// The DCS namespace (etcd key prefix) of every harness cluster.
pub const NAMESPACE: &str = "/pgsuite/";

/// How long the first member may take to become leader, and the others to stream.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a member's Patroni may take to stop after SIGTERM (it stops PostgreSQL first).
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Timeout of one request to Patroni's REST API (not `POST /switchover`, which waits).
const REST_TIMEOUT: Duration = Duration::from_secs(3);
/// How often waits poll.
const POLL: Duration = Duration::from_millis(100);
/// The HAProxy listener ([`PatroniCluster::haproxy`]) that sends clients to the leader: its
/// servers are checked with `GET /primary` on Patroni's REST API, as Pigsty's `primary`
/// service does. [`PatroniCluster::pgbouncer`] points at it.
pub const PRIMARY_SERVICE: &str = "primary";
/// The HAProxy listener that sends clients to the replicas (`GET /replica` on Patroni's REST
/// API), as Pigsty's `replica` service does, without falling back to the leader.
pub const REPLICA_SERVICE: &str = "replica";
/// How long a started cluster's HAProxy may take to route [`PRIMARY_SERVICE`] to the leader.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Patroni's DCS timing (`bootstrap.dcs`): the leader lock's `ttl`, the HA loop's `loop_wait`
/// and `retry_timeout`, in seconds. Patroni's rule of thumb is
/// `loop_wait + 2 * retry_timeout <= ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatroniTiming {
    /// Leader lock lifetime; a hard failover takes about this long.
    pub ttl: u32,
    /// Seconds between HA loops.
    pub loop_wait: u32,
    /// How long DCS and PostgreSQL operations are retried before giving up.
    pub retry_timeout: u32,
}

impl PatroniTiming {
    /// ttl 10 / loop_wait 2 / retry_timeout 3: measured stable on a loaded 2-core machine
    /// (`/work/shared/reference/patroni_lab.md`), failover ≈ 10 s.
    pub const FAST: PatroniTiming = PatroniTiming {
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 3,
    };
    /// ttl 20 / loop_wait 2 / retry_timeout 5: more slack for a very busy machine, failover
    /// ≈ 20 s.
    pub const RELAXED: PatroniTiming = PatroniTiming {
        ttl: 20,
        loop_wait: 2,
        retry_timeout: 5,
    };

    /// A generous bound for a hard failover: three lease lifetimes plus 20 s.
    pub fn failover_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl) * 3 + 20)
    }
}

impl Default for PatroniTiming {
    fn default() -> Self {
        Self::FAST
    }
}

/// What to start: [`PatroniClusterBuilder::start`].
#[derive(Debug, Clone)]
pub struct PatroniClusterBuilder {
    members: usize,
    timing: PatroniTiming,
    parameters: Vec<(String, String)>,
    pgbackrest: bool,
    pgbouncer: bool,
}

impl Default for PatroniClusterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PatroniClusterBuilder {
    /// Two members, [`PatroniTiming::FAST`].
    pub fn new() -> Self {
        Self {
            members: 2,
            timing: PatroniTiming::default(),
            parameters: Vec::new(),
            pgbackrest: false,
            pgbouncer: false,
        }
    }

    /// The number of members (at least 1): `pg1` bootstraps and leads, the others replicate.
    pub fn members(mut self, n: usize) -> Self {
        self.members = n;
        self
    }

    /// Patroni's DCS timing.
    pub fn timing(mut self, timing: PatroniTiming) -> Self {
        self.timing = timing;
        self
    }

    /// A PostgreSQL parameter for every member (`bootstrap.dcs.postgresql.parameters`);
    /// `value` is a YAML scalar written in single quotes. Later settings win.
    pub fn parameter(mut self, name: &str, value: &str) -> Self {
        self.parameters.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Also archive WAL with pgBackRest, from whichever member leads, into a repository in the
    /// cluster's directory ([`PatroniCluster::pgbackrest`]):
    ///
    /// - `archive_mode = on` and `archive_command` =
    ///   [`PgBackRest::archive_command_for_members`], set as DCS parameters
    ///   (`bootstrap.dcs.postgresql.parameters`) so every member has them; only the leader
    ///   archives (`archive_mode = on`, not `always`);
    /// - the stanza [`DEFAULT_STANZA`] lists every member as `pgN-path`/`pgN-port`/
    ///   `pgN-socket-path` (pg1 first), so `pgbackrest backup` finds the leader itself, on any
    ///   member after any role change;
    /// - the stanza is created (`stanza-create`, then `check`, which proves archiving) on the
    ///   first leader once every replica streams. No backup is taken. Until then the first
    ///   leader's `archive-push` calls fail (no stanza yet) and PostgreSQL retries them; they
    ///   stay counted in its `pg_stat_archiver.failed_count`.
    ///
    /// Every `pgbackrest` command runs as the service user (`postgres` under root).
    pub fn pgbackrest(mut self) -> Self {
        self.pgbackrest = true;
        self
    }

    /// Also start HAProxy and Pgbouncer ([`PatroniCluster::haproxy`],
    /// [`PatroniCluster::pgbouncer`]), so clients of Pgbouncer always reach the leader.
    ///
    /// HAProxy has Pigsty's two services, [`PRIMARY_SERVICE`] and [`REPLICA_SERVICE`], one
    /// server per member checked on Patroni's REST API (`GET /primary`, `GET /replica`, every
    /// 500 ms, down after two failures, `on-marked-down shutdown-sessions`). Every database
    /// entry of Pgbouncer points at the `primary` service (with the superuser's password for
    /// scram-sha-256), so Pgbouncer's target follows the leader with no reconfiguration and no
    /// `RELOAD`: when the old leader is marked down HAProxy closes Pgbouncer's server
    /// connections to it, and Pgbouncer's next server login lands on the new leader. This is
    /// Pigsty's routing — HAProxy choosing by Patroni's `/primary` — with one Pgbouncer for the
    /// cluster in front of it instead of one per node behind it; the alternative, rewriting
    /// `[databases]` and `RELOAD` from a Patroni `on_role_change` callback, is not what a
    /// Pigsty deployment does. [`start`](PatroniClusterBuilder::start)
    /// returns once HAProxy routes the `primary` service to the first leader and a query
    /// through Pgbouncer reached it.
    pub fn pgbouncer(mut self) -> Self {
        self.pgbouncer = true;
        self
    }

    /// Starts etcd, then `pg1` (initdb, leader), creates [`PASSWORD_USER`], then the other
    /// members (pg_basebackup), and waits until every replica streams; then, if asked, creates
    /// the pgBackRest stanza and starts HAProxy and Pgbouncer. On error whatever was started
    /// is stopped again.
    pub fn start(&self) -> Result<PatroniCluster> {
        static CLUSTERS: AtomicU32 = AtomicU32::new(1);
        if self.members == 0 {
            bail!("a Patroni cluster needs at least one member");
        }
        require_binary(Path::new(PATRONI_BIN), "patroni")?;
        require_binary(
            &Path::new(DEBIAN_PG15_BIN).join("postgres"),
            "postgresql-15",
        )?;
        client_tool("psql")?;
        let scope = format!(
            "pgsuite-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = ServiceDir::new("pgsuite-patroni-", true)?;
        let mut builder = self.clone();
        let pgbackrest = if self.pgbackrest {
            let b = PgBackRest::prepare_in(DEFAULT_STANZA, &dir.path().join("pgbackrest"))?;
            // First, so that parameters the caller set win.
            let mut parameters = vec![
                ("archive_mode".to_owned(), "on".to_owned()),
                (
                    "archive_command".to_owned(),
                    b.archive_command_for_members(),
                ),
            ];
            parameters.append(&mut builder.parameters);
            builder.parameters = parameters;
            Some(b)
        } else {
            None
        };
        let etcd = Etcd::start().context("cannot start etcd for the Patroni cluster")?;
        let mut members = Vec::with_capacity(self.members);
        for i in 1..=self.members {
            members.push(PatroniMember::prepare(
                &format!("pg{i}"),
                dir.path(),
                &scope,
                &etcd,
                &builder,
            )?);
        }
        if let Some(b) = &pgbackrest {
            let hosts: Vec<PgHost> = members.iter().map(PatroniMember::pg_host).collect();
            b.write_config(&hosts)?;
        }
        let mut cluster = PatroniCluster {
            scope,
            timing: self.timing,
            pgbouncer: None,
            haproxy: None,
            members,
            etcd,
            pgbackrest,
            dir,
        };
        cluster
            .bring_up()
            .with_context(|| format!("cannot bring up Patroni cluster {}", cluster.scope))?;
        if let Some(b) = &cluster.pgbackrest {
            b.stanza_create_and_check().with_context(|| {
                format!(
                    "cannot create the pgBackRest stanza of Patroni cluster {}{}",
                    cluster.scope,
                    cluster.members[0].log_tails()
                )
            })?;
        }
        if self.pgbouncer {
            cluster
                .start_pgbouncer()
                .with_context(|| format!("cannot put Pgbouncer in front of {}", cluster.scope))?;
        }
        Ok(cluster)
    }
}

/// A running Patroni cluster. Dropping it stops Pgbouncer and HAProxy, every member, then
/// etcd, then removes the directories (the pgBackRest repository with them).
#[derive(Debug)]
pub struct PatroniCluster {
    scope: String,
    timing: PatroniTiming,
    // Field order is drop order: Pgbouncer, HAProxy, members (after `Drop::drop` signalled
    // them all), etcd, pgBackRest (nothing of its own to remove), dir.
    pgbouncer: Option<Pgbouncer>,
    haproxy: Option<Haproxy>,
    members: Vec<PatroniMember>,
    etcd: Etcd,
    pgbackrest: Option<PgBackRest>,
    dir: ServiceDir,
}

/// The outcome of [`PatroniCluster::switchover`] and [`PatroniCluster::hard_failover`].
///
/// Patroni's REST `/primary` answers 200 as soon as the member holds the leader lock, which is
/// before its PostgreSQL has left recovery; both moments are recorded.
#[derive(Debug, Clone, Copy)]
pub struct RoleChange<'a> {
    /// The leader before (after a hard failover it stays down until
    /// [`PatroniCluster::rejoin`]).
    pub old: &'a PatroniMember,
    /// The leader after.
    pub new: &'a PatroniMember,
    /// From the request (or the kill) to the harness seeing the new leader's REST `/primary`
    /// answer 200. A switchover's `POST /switchover` only returns once Patroni saw the new
    /// leader in the DCS, so this is at least that request's duration; poll concurrently for
    /// a finer figure.
    pub primary_after: Duration,
    /// From the request (or the kill) to the new leader's `pg_is_in_recovery()` being false.
    pub writable_after: Duration,
}

impl PatroniCluster {
    fn bring_up(&self) -> Result<()> {
        let first = &self.members[0];
        first.start()?;
        poll(
            &format!("{} to become leader", first.name),
            START_TIMEOUT,
            POLL,
            || {
                first.check_alive()?;
                Ok(first.is_primary().then_some(()))
            },
        )?;
        // Created once on the leader; it replicates to the members started below.
        first.execute(
            "postgres",
            &format!(
                "CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD {pw}; GRANT pg_monitor TO {PASSWORD_USER};",
                pw = sql_str(PASSWORD_USER_PASSWORD)
            ),
        )?;
        for m in &self.members[1..] {
            m.start()?;
        }
        for m in &self.members[1..] {
            self.wait_streaming(m, START_TIMEOUT)?;
        }
        Ok(())
    }

    /// HAProxy's two services on Patroni's REST checks, then Pgbouncer on the `primary` one;
    /// waits until the leader is routed and a query through Pgbouncer reached it.
    fn start_pgbouncer(&mut self) -> Result<()> {
        let mut primary = HaproxyListener::new(PRIMARY_SERVICE, "/primary");
        let mut replica = HaproxyListener::new(REPLICA_SERVICE, "/replica");
        for m in &self.members {
            primary = primary.server(&m.name, m.pg_port, m.rest_port);
            replica = replica.server(&m.name, m.pg_port, m.rest_port);
        }
        let haproxy = Haproxy::start(&[primary, replica])?;
        let target = PgbouncerTarget::new(LOCALHOST, haproxy.port(PRIMARY_SERVICE)?)
            .superuser_password(SUPERUSER_PASSWORD);
        self.haproxy = Some(haproxy);
        self.pgbouncer = Some(Pgbouncer::start_with(&target)?);
        let leader = self.leader()?;
        self.wait_routed(PRIMARY_SERVICE, leader, ROUTE_TIMEOUT)?;
        let port = self.pgbouncer().port();
        poll(
            &format!("a query through Pgbouncer to reach {}", leader.name),
            ROUTE_TIMEOUT,
            POLL,
            || {
                let served = self.query_port(port, "postgres", "SELECT inet_server_port()")?;
                Ok((served == leader.pg_port.to_string()).then_some(()))
            },
        )
        .map_err(|e| {
            anyhow!(
                "{e:#}\n--- Pgbouncer's log ---\n{}\n--- HAProxy's log ---\n{}",
                crate::util::tail_file(self.pgbouncer().log_path(), 20),
                self.haproxy().log_tail(20)
            )
        })
    }

    /// Waits until HAProxy's `service` ([`PRIMARY_SERVICE`] or [`REPLICA_SERVICE`]) has
    /// `member` up and every other member down, as its status page shows; returns how long
    /// that took. Needs [`PatroniClusterBuilder::pgbouncer`].
    pub fn wait_routed(
        &self,
        service: &str,
        member: &PatroniMember,
        timeout: Duration,
    ) -> Result<Duration> {
        let haproxy = self.haproxy.as_ref().context(
            "this Patroni cluster has no HAProxy: use PatroniClusterBuilder::pgbouncer()",
        )?;
        let started = Instant::now();
        poll(
            &format!(
                "HAProxy's {service} service to route to {} only",
                member.name
            ),
            timeout,
            Duration::from_millis(50),
            || {
                let status = haproxy.server_status(service)?;
                let only = status.iter().all(|(server, state)| {
                    (server == &member.name) == (state == "UP" || state.starts_with("UP "))
                });
                Ok((only && status.contains_key(&member.name)).then_some(()))
            },
        )
        .map_err(|e| anyhow!("{e:#}\n--- HAProxy's log ---\n{}", haproxy.log_tail(20)))?;
        Ok(started.elapsed())
    }

    /// pgBackRest; panics if the cluster was built without
    /// [`PatroniClusterBuilder::pgbackrest`].
    pub fn pgbackrest(&self) -> &PgBackRest {
        self.pgbackrest.as_ref().expect(
            "this Patroni cluster has no pgBackRest: use PatroniClusterBuilder::pgbackrest()",
        )
    }

    /// Pgbouncer (in front of HAProxy's [`PRIMARY_SERVICE`]); panics if the cluster was built
    /// without [`PatroniClusterBuilder::pgbouncer`].
    pub fn pgbouncer(&self) -> &Pgbouncer {
        self.pgbouncer
            .as_ref()
            .expect("this Patroni cluster has no Pgbouncer: use PatroniClusterBuilder::pgbouncer()")
    }

    /// HAProxy with [`PRIMARY_SERVICE`] and [`REPLICA_SERVICE`]; panics if the cluster was
    /// built without [`PatroniClusterBuilder::pgbouncer`].
    pub fn haproxy(&self) -> &Haproxy {
        self.haproxy
            .as_ref()
            .expect("this Patroni cluster has no HAProxy: use PatroniClusterBuilder::pgbouncer()")
    }

    /// pgBackRest, if any.
    pub fn try_pgbackrest(&self) -> Option<&PgBackRest> {
        self.pgbackrest.as_ref()
    }

    /// Pgbouncer, if any.
    pub fn try_pgbouncer(&self) -> Option<&Pgbouncer> {
        self.pgbouncer.as_ref()
    }

    /// HAProxy, if any.
    pub fn try_haproxy(&self) -> Option<&Haproxy> {
        self.haproxy.as_ref()
    }

    /// The scope (cluster name in the DCS, PostgreSQL's `cluster_name`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The DCS timing in force.
    pub fn timing(&self) -> PatroniTiming {
        self.timing
    }

    /// Every member, `pg1` first.
    pub fn members(&self) -> &[PatroniMember] {
        &self.members
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Result<&PatroniMember> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| anyhow!("no member {name} in Patroni cluster {}", self.scope))
    }

    /// The members other than `member`.
    pub fn others<'a>(
        &'a self,
        member: &'a PatroniMember,
    ) -> impl Iterator<Item = &'a PatroniMember> {
        self.members.iter().filter(move |m| m.name != member.name)
    }

    /// The etcd the members use.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The directory holding every member's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The leader now: the one member whose REST `/primary` answers 200, i.e. that holds the
    /// leader lock (its PostgreSQL may still be leaving recovery). An error when none or
    /// several do (in the middle of a switchover or failover; see
    /// [`PatroniCluster::wait_leader`]).
    pub fn leader(&self) -> Result<&PatroniMember> {
        let leaders: Vec<&PatroniMember> = self.members.iter().filter(|m| m.is_primary()).collect();
        match leaders.as_slice() {
            [one] => Ok(one),
            [] => bail!("no member of {} answers 200 on /primary", self.scope),
            many => bail!(
                "several members of {} answer 200 on /primary: {:?}",
                self.scope,
                many.iter().map(|m| m.name()).collect::<Vec<_>>()
            ),
        }
    }

    /// A replica now: the first member whose REST `/replica` answers 200.
    pub fn replica(&self) -> Result<&PatroniMember> {
        self.members
            .iter()
            .find(|m| m.is_replica())
            .ok_or_else(|| anyhow!("no member of {} answers 200 on /replica", self.scope))
    }

    /// Waits up to `timeout` until exactly one member answers 200 on `/primary`.
    pub fn wait_leader(&self, timeout: Duration) -> Result<&PatroniMember> {
        poll(
            &format!("a leader in {}", self.scope),
            timeout,
            POLL,
            || Ok(self.leader().ok()),
        )
    }

    /// Waits until `member` answers 200 on `/replica` and streams from the leader: its
    /// `pg_stat_wal_receiver` says `streaming` and the leader's `pg_stat_replication` has its
    /// row (`application_name` = member name) in state `streaming`.
    pub fn wait_streaming(&self, member: &PatroniMember, timeout: Duration) -> Result<()> {
        poll(
            &format!("{} to stream in {}", member.name, self.scope),
            timeout,
            POLL,
            || {
                member.check_alive()?;
                if !member.is_replica() {
                    return Ok(None);
                }
                let Ok(leader) = self.leader() else {
                    return Ok(None);
                };
                let receiver = member.query(
                    "postgres",
                    "SELECT coalesce(max(status), '') FROM pg_stat_wal_receiver",
                )?;
                let sender = leader.query(
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_stat_replication WHERE application_name = {} \
                         AND state = 'streaming'",
                        sql_str(&member.name)
                    ),
                )?;
                Ok((receiver == "streaming" && sender == "1").then_some(()))
            },
        )
        .map_err(|e| anyhow!("{e:#}{}", member.log_tails()))
    }

    /// A planned switchover to `candidate` through the leader's REST API (`POST /switchover`,
    /// as `patronictl switchover --leader A --candidate B --force` does). Returns once Patroni
    /// reported success and `candidate` answers 200 on `/primary` and accepts writes; the old
    /// leader restarts as a replica afterwards (wait for it with
    /// [`PatroniCluster::wait_streaming`]).
    pub fn switchover<'a>(&'a self, candidate: &'a PatroniMember) -> Result<RoleChange<'a>> {
        let old = self.leader()?;
        if old.name == candidate.name {
            bail!("{} is already the leader of {}", candidate.name, self.scope);
        }
        let started = Instant::now();
        let body = format!(
            "{{\"leader\": \"{}\", \"candidate\": \"{}\"}}",
            old.name, candidate.name
        );
        let (status, text) = rest_request(
            "POST",
            old.rest_port,
            "/switchover",
            Some(&body),
            Duration::from_secs(60),
        )?;
        if status != 200 {
            bail!(
                "switchover {} -> {} refused by Patroni: {status} {text}{}",
                old.name,
                candidate.name,
                old.log_tails()
            );
        }
        self.wait_role_change(old, started, Duration::from_secs(30), |m| {
            m.name == candidate.name
        })
    }

    /// A hard failover: `kill -9` of the leader's Patroni and of its postmaster (as if the
    /// node were lost), then waits until another member answers 200 on `/primary` (about
    /// `ttl` seconds: the leader lock must expire) and accepts writes. The killed member
    /// stays down until [`PatroniCluster::rejoin`].
    pub fn hard_failover(&self) -> Result<RoleChange<'_>> {
        let old = self.leader()?;
        let started = Instant::now();
        old.kill_hard()?;
        self.wait_role_change(old, started, self.timing.failover_timeout(), |m| {
            m.name != old.name
        })
    }

    fn wait_role_change<'a>(
        &'a self,
        old: &'a PatroniMember,
        started: Instant,
        timeout: Duration,
        eligible: impl Fn(&PatroniMember) -> bool,
    ) -> Result<RoleChange<'a>> {
        let new = poll(
            &format!("a new leader of {} after {}", self.scope, old.name),
            timeout,
            Duration::from_millis(50),
            || Ok(self.members.iter().find(|m| eligible(m) && m.is_primary())),
        )?;
        let primary_after = started.elapsed();
        poll(
            &format!("{} to leave recovery", new.name),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || Ok((new.query("postgres", "SELECT pg_is_in_recovery()")? == "f").then_some(())),
        )
        .map_err(|e| anyhow!("{e:#}{}", new.log_tails()))?;
        Ok(RoleChange {
            old,
            new,
            primary_after,
            writable_after: started.elapsed(),
        })
    }

    /// Starts the Patroni of a stopped or killed `member` again and waits until it streams
    /// from the leader (Patroni runs crash recovery and `pg_rewind` as needed). Returns the
    /// time that took.
    pub fn rejoin(&self, member: &PatroniMember) -> Result<Duration> {
        let started = Instant::now();
        member.start()?;
        self.wait_streaming(member, START_TIMEOUT)?;
        Ok(started.elapsed())
    }

    /// Runs `patronictl -c <pg1's config> <args>` as the service user and returns its
    /// standard output.
    pub fn patronictl(&self, args: &[&str]) -> Result<String> {
        let bin = require_binary(Path::new(PATRONICTL_BIN), "patroni")?;
        let first = &self.members[0];
        let mut cmd = service_command(bin, &first.dir)?;
        patroni_env(&mut cmd);
        cmd.arg("-c").arg(&first.config).args(args);
        run(&mut cmd, "patronictl")
    }

    /// `patronictl list -f json`: one object per member (`Member`, `Role`, `State`, `TL`, …).
    pub fn list(&self) -> Result<serde_json::Value> {
        let out = self.patronictl(&["list", "-f", "json", &self.scope])?;
        serde_json::from_str(&out).with_context(|| format!("patronictl list printed {out:?}"))
    }

    /// Runs one SQL statement as the superuser (with [`SUPERUSER_PASSWORD`]) on whatever
    /// answers on `127.0.0.1:port` — a member, or a proxy in front of the cluster such as
    /// HAProxy or Pgbouncer — and returns psql's unaligned, tuples-only output, trimmed.
    pub fn query_port(&self, port: u16, db: &str, sql: &str) -> Result<String> {
        psql(LOCALHOST, port, Some(SUPERUSER_PASSWORD), db, sql)
    }

    /// What to look for to tell whether anything of this cluster is left (see [`Footprint`]).
    pub fn footprint(&self) -> Footprint {
        let mut dirs = vec![self.dir.path().to_owned(), self.etcd.dir().to_owned()];
        // Pgbouncer's and HAProxy's command lines name their configuration files there.
        if let Some(dir) = self.pgbouncer.as_ref().and_then(|b| b.ini_path().parent()) {
            dirs.push(dir.to_owned());
        }
        if let Some(h) = &self.haproxy {
            dirs.push(h.dir().to_owned());
        }
        Footprint {
            dirs,
            scope: self.scope.clone(),
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // All at once, so no replica outlives its leader long enough to take over, and the
        // members' shutdowns overlap. Each member's own drop then waits for its process.
        for m in &self.members {
            m.signal_patroni("TERM");
        }
    }
}

/// One member: a Patroni process and the PostgreSQL it runs.
#[derive(Debug)]
pub struct PatroniMember {
    name: String,
    rest_port: u16,
    pg_port: u16,
    dir: PathBuf,
    config: PathBuf,
    child: Mutex<Option<ManagedChild>>,
    // Deregistered only after `Drop::drop` stopped Patroni and PostgreSQL.
    _pg_cleanup: CleanupHandle,
}

impl PatroniMember {
    fn prepare(
        name: &str,
        root: &Path,
        scope: &str,
        etcd: &Etcd,
        builder: &PatroniClusterBuilder,
    ) -> Result<Self> {
        let dir = root.join(name);
        make_service_dir(&dir)?;
        for sub in ["run", "log", "pglog"] {
            make_service_dir(&dir.join(sub))?;
        }
        // sockaddr_un.sun_path holds 107 bytes; the socket is <run>/.s.PGSQL.<port>.
        let socket_len = dir.join("run/.s.PGSQL.65535.lock").as_os_str().len();
        if socket_len > 107 {
            bail!(
                "the unix socket path under {} would be {socket_len} bytes, over the 107-byte \
                 limit: set PGSUITE_TMPDIR (or TMPDIR) to a shorter directory",
                dir.display()
            );
        }
        let (rest_port, pg_port) = (free_port()?, free_port()?);
        let config = dir.join("patroni.yml");
        let pg_cleanup = reaper::register(
            &format!("PostgreSQL of Patroni member {name} of {scope}"),
            &format!(
                "if [ -f {pid} ]; then {as_user}{pg_ctl} stop -D {data} -m immediate -w -t 30 \
                 >/dev/null 2>&1; fi",
                pid = sh_quote_path(&dir.join("data/postmaster.pid")),
                as_user = runuser_prefix()?,
                pg_ctl = sh_quote_path(&Path::new(DEBIAN_PG15_BIN).join("pg_ctl")),
                data = sh_quote_path(&dir.join("data")),
            ),
        )?;
        let member = Self {
            name: name.to_owned(),
            rest_port,
            pg_port,
            dir,
            config,
            child: Mutex::new(None),
            _pg_cleanup: pg_cleanup,
        };
        write_service_file(
            &member.config,
            member.render_config(scope, etcd, builder),
            0o600,
        )?;
        Ok(member)
    }

    fn render_config(&self, scope: &str, etcd: &Etcd, b: &PatroniClusterBuilder) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let p = |path: &Path| q(&path.to_string_lossy());
        let t = b.timing;
        let mut cluster_params: Vec<(String, String)> = [
            ("wal_level", "replica"),
            ("hot_standby", "on"),
            ("max_connections", "100"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("wal_log_hints", "on"),
            ("wal_keep_size", "128MB"),
            ("shared_buffers", "32MB"),
            // Tests do not need durability; a kill -9 of a process keeps the OS page cache.
            ("fsync", "off"),
            ("track_io_timing", "on"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        cluster_params.extend(b.parameters.iter().cloned());
        let mut dcs_params = String::new();
        for (k, v) in &cluster_params {
            dcs_params.push_str(&format!("        {k}: {}\n", q(v)));
        }
        let rest = format!("{LOCALHOST}:{}", self.rest_port);
        let pg = format!("{LOCALHOST}:{}", self.pg_port);
        format!(
            "# Written by the test harness (tests/harness/src/patroni.rs).\n\
             scope: {scope}\n\
             namespace: {NAMESPACE}\n\
             name: {name}\n\
             log:\n\
             \x20 level: INFO\n\
             \x20 dir: {log_dir}\n\
             \x20 file_num: 4\n\
             \x20 file_size: 10485760\n\
             restapi:\n\
             \x20 listen: {rest}\n\
             \x20 connect_address: {rest}\n\
             etcd3:\n\
             \x20 host: {etcd}\n\
             bootstrap:\n\
             \x20 dcs:\n\
             \x20   ttl: {ttl}\n\
             \x20   loop_wait: {loop_wait}\n\
             \x20   retry_timeout: {retry}\n\
             \x20   maximum_lag_on_failover: 1048576\n\
             \x20   postgresql:\n\
             \x20     use_pg_rewind: true\n\
             \x20     use_slots: true\n\
             \x20     parameters:\n\
             {dcs_params}\
             \x20 initdb:\n\
             \x20   - encoding: UTF8\n\
             \x20   - locale: C.UTF-8\n\
             \x20   - data-checksums\n\
             postgresql:\n\
             \x20 listen: {pg}\n\
             \x20 connect_address: {pg}\n\
             \x20 data_dir: {data}\n\
             \x20 bin_dir: {bin}\n\
             \x20 pgpass: {pgpass}\n\
             \x20 use_unix_socket: true\n\
             \x20 authentication:\n\
             \x20   superuser: {{username: {SUPERUSER}, password: {su_pw}}}\n\
             \x20   replication: {{username: {REPLICATION_USER}, password: {repl_pw}}}\n\
             \x20   rewind: {{username: {REWIND_USER}, password: {rewind_pw}}}\n\
             \x20 pg_hba:\n\
             \x20   - local all all trust\n\
             \x20   - local replication all trust\n\
             \x20   - host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256\n\
             \x20   - host all all 127.0.0.1/32 scram-sha-256\n\
             \x20 parameters:\n\
             \x20   unix_socket_directories: {socket}\n\
             \x20   logging_collector: 'on'\n\
             \x20   log_destination: 'csvlog'\n\
             \x20   log_directory: {pglog}\n\
             \x20   wal_retrieve_retry_interval: '500ms'\n",
            name = self.name,
            log_dir = p(&self.patroni_log_dir()),
            etcd = etcd.endpoint(),
            ttl = t.ttl,
            loop_wait = t.loop_wait,
            retry = t.retry_timeout,
            data = p(&self.data_dir()),
            bin = q(DEBIAN_PG15_BIN),
            pgpass = p(&self.pgpass_path()),
            su_pw = q(SUPERUSER_PASSWORD),
            repl_pw = q(REPLICATION_PASSWORD),
            rewind_pw = q(REWIND_PASSWORD),
            socket = p(&self.socket_dir()),
            pglog = p(&self.pg_log_dir()),
        )
    }

    /// Starts this member's Patroni (it must not be running). Does not wait.
    pub fn start(&self) -> Result<()> {
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.as_ref().is_some_and(ManagedChild::is_running) {
            bail!("the Patroni of {} is already running", self.name);
        }
        let mut cmd = service_command(PATRONI_BIN, &self.dir)?;
        patroni_env(&mut cmd);
        cmd.arg(&self.config);
        *guard = Some(ManagedChild::spawn(
            &format!("patroni {}", self.name),
            &mut cmd,
            &self.stdout_log_path(),
        )?);
        Ok(())
    }

    /// Stops this member gracefully: SIGTERM to Patroni, which stops PostgreSQL (fast mode)
    /// and releases the leader lock if it holds it; waits up to 30 s, then kills.
    pub fn stop(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(child) = child {
            child.stop(STOP_GRACE);
        }
    }

    /// `kill -9` of Patroni and then of the postmaster, as a lost node; waits until both are
    /// gone. Returns their PIDs.
    pub fn kill_hard(&self) -> Result<(u32, u32)> {
        let postmaster = self.postmaster_pid()?;
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .with_context(|| format!("the Patroni of {} is not running", self.name))?;
        let patroni = child.pid();
        child.signal("KILL")?;
        kill("KILL", postmaster)?;
        poll(
            &format!(
                "Patroni {patroni} and postmaster {postmaster} of {} to die",
                self.name
            ),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok((!child.is_running() && !pid_alive(postmaster)).then_some(())),
        )?;
        Ok((patroni, postmaster))
    }

    fn signal_patroni(&self, signal: &str) {
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = guard.as_ref() {
            let _ = child.signal(signal);
        }
    }

    /// Fails (with the log tails) when Patroni is not running.
    fn check_alive(&self) -> Result<()> {
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref().map(ManagedChild::exit_status) {
            Some(None) => Ok(()),
            Some(Some(status)) => Err(anyhow!(
                "the Patroni of {} exited ({status}){}",
                self.name,
                self.log_tails()
            )),
            None => Err(anyhow!("the Patroni of {} is not started", self.name)),
        }
    }

    /// True while this member's Patroni process runs.
    pub fn is_running(&self) -> bool {
        self.check_alive().is_ok()
    }

    /// The member name (`pg1`, `pg2`, …); also its `application_name` on the leader.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID of Patroni, `None` when stopped.
    pub fn patroni_pid(&self) -> Option<u32> {
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .filter(|c| c.is_running())
            .map(ManagedChild::pid)
    }

    /// The postmaster's PID from `postmaster.pid`, if that process runs.
    pub fn postmaster_pid(&self) -> Result<u32> {
        let path = self.data_dir().join("postmaster.pid");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (is PostgreSQL running?)", path.display()))?;
        let pid: u32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no PID on the first line of {}", path.display()))?;
        if !pid_alive(pid) {
            bail!("the postmaster of {} (pid {pid}) is not running", self.name);
        }
        Ok(pid)
    }

    /// The status code of `GET <path>` on this member's REST API, `None` when it does not
    /// answer (Patroni down).
    pub fn rest_status(&self, path: &str) -> Option<u16> {
        rest_request("GET", self.rest_port, path, None, REST_TIMEOUT)
            .ok()
            .map(|(s, _)| s)
    }

    /// `GET <path>` on this member's REST API: status and body.
    pub fn rest_get(&self, path: &str) -> Result<(u16, String)> {
        rest_request("GET", self.rest_port, path, None, REST_TIMEOUT)
    }

    /// True when Patroni's `/primary` answers 200: it holds the leader lock. Patroni 3.0
    /// answers 200 from the moment it takes the lock, before its PostgreSQL has finished
    /// promotion, and keeps answering 200 while that PostgreSQL is down but the lock held.
    pub fn is_primary(&self) -> bool {
        self.rest_status("/primary") == Some(200)
    }

    /// True when Patroni's `/replica` answers 200 (a running replica).
    pub fn is_replica(&self) -> bool {
        self.rest_status("/replica") == Some(200)
    }

    /// `GET /patroni` as JSON (`role`, `state`, `timeline`, `xlog`, `replication`, …).
    pub fn status(&self) -> Result<serde_json::Value> {
        let (code, body) = self.rest_get("/patroni")?;
        if code != 200 && code != 503 {
            bail!("GET /patroni on {} answered {code}: {body}", self.name);
        }
        serde_json::from_str(&body).with_context(|| format!("GET /patroni returned {body:?}"))
    }

    /// Runs one SQL statement as the superuser over the unix socket and returns psql's
    /// unaligned, tuples-only output, trimmed.
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        psql(
            &self.socket_dir().to_string_lossy(),
            self.pg_port,
            None,
            db,
            sql,
        )
        .with_context(|| format!("query on Patroni member {}", self.name))
    }

    /// Runs an SQL script (statements separated by `;`) as the superuser over the socket.
    pub fn execute(&self, db: &str, script: &str) -> Result<()> {
        self.query(db, script).map(drop)
    }

    /// `http://127.0.0.1:<port>`: Patroni's REST API.
    pub fn rest_url(&self) -> String {
        format!("http://{LOCALHOST}:{}", self.rest_port)
    }

    /// The REST API port on 127.0.0.1.
    pub fn rest_port(&self) -> u16 {
        self.rest_port
    }

    /// PostgreSQL's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.pg_port
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        LOCALHOST
    }

    /// `postgresql://postgres:<password>@127.0.0.1:<port>/<db>`: the superuser over TCP
    /// (scram-sha-256).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@{LOCALHOST}:{}/{db}",
            self.pg_port
        )
    }

    /// `postgresql://postgres@/<db>?host=<socket dir>&port=<port>`: the superuser over this
    /// member's unix socket (trust), as Pigsty points its exporter at the local server.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@/{db}?host={}&port={}",
            self.socket_dir().display(),
            self.pg_port
        )
    }

    /// The URL of [`PASSWORD_USER`] (member of `pg_monitor`) with its password, over TCP.
    pub fn password_url(&self, db: &str) -> String {
        format!(
            "postgresql://{PASSWORD_USER}:{PASSWORD_USER_PASSWORD}@{LOCALHOST}:{}/{db}",
            self.pg_port
        )
    }

    /// The member's directory (see the module documentation for its layout).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This member as a pgBackRest stanza lists it.
    pub fn pg_host(&self) -> PgHost {
        PgHost {
            data_dir: self.data_dir(),
            port: self.pg_port,
            socket_dir: self.socket_dir(),
        }
    }

    /// Patroni's configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// PostgreSQL's unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Patroni's password file (`postgresql.pgpass`).
    pub fn pgpass_path(&self) -> PathBuf {
        self.dir.join("pgpass")
    }

    /// The directory Patroni writes `patroni.log` (and its rotations `patroni.log.N`) to.
    pub fn patroni_log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Patroni's current log file.
    pub fn patroni_log_path(&self) -> PathBuf {
        self.patroni_log_dir().join("patroni.log")
    }

    /// PostgreSQL's log directory (logging collector, `postgresql-<timestamp>.csv`).
    pub fn pg_log_dir(&self) -> PathBuf {
        self.dir.join("pglog")
    }

    /// Patroni's stdout and stderr (appended across restarts).
    pub fn stdout_log_path(&self) -> PathBuf {
        self.dir.join("patroni.stdout")
    }

    /// The tails of Patroni's log, its stdout and the newest PostgreSQL log, for messages.
    pub fn log_tails(&self) -> String {
        let mut paths = vec![self.patroni_log_path(), self.stdout_log_path()];
        if let Some(csv) = newest_file(&self.pg_log_dir()) {
            paths.push(csv);
        }
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        log_tails(&refs, 25)
    }
}

impl Drop for PatroniMember {
    fn drop(&mut self) {
        self.stop();
        // A postmaster whose Patroni was killed (or did not stop it in time) is stopped here.
        if self.postmaster_pid().is_ok()
            && let Ok(mut cmd) =
                service_command(Path::new(DEBIAN_PG15_BIN).join("pg_ctl"), &self.dir)
        {
            cmd.arg("stop")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
    }
}

/// What identifies the processes and files of one [`PatroniCluster`]: its directories (in
/// the command lines of Patroni, the postmasters and etcd) and its scope (PostgreSQL's
/// `cluster_name`, in every backend's process title `postgres: <scope>: …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// The cluster's directory and etcd's.
    pub dirs: Vec<PathBuf>,
    /// The scope.
    pub scope: String,
}

impl Footprint {
    /// Live processes (not zombies) belonging to the cluster: PID and command line.
    pub fn processes(&self) -> Vec<(u32, String)> {
        let title = format!("postgres: {}: ", self.scope);
        let mut found = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || !pid_alive(pid) {
                continue;
            }
            let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let ours = cmdline.starts_with(&title)
                || self
                    .dirs
                    .iter()
                    .any(|d| cmdline.contains(d.to_string_lossy().as_ref()));
            if ours {
                found.push((pid, cmdline.trim_end().to_owned()));
            }
        }
        found
    }

    /// The directories that still exist.
    pub fn leftover_dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().filter(|d| d.exists()).cloned().collect()
    }

    /// True when no process runs and no directory is left.
    pub fn is_gone(&self) -> bool {
        self.processes().is_empty() && self.leftover_dirs().is_empty()
    }
}

/// True while `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

fn kill(signal: &str, pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -s {signal} {pid} failed ({status})");
    }
    Ok(())
}

/// Keeps the environment from reconfiguring Patroni or PostgreSQL behind the harness's back
/// (`PATRONI_*` variables override the YAML; `PG*` ones redirect libpq; a Python on `PATH`
/// other than the system one must not be told where to find modules).
fn patroni_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PATRONI_") || key.starts_with("PG") || key.starts_with("PYTHON") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("LC_ALL", "C.UTF-8");
}

/// `runuser -u postgres -- ` when commands must switch user, else nothing.
fn runuser_prefix() -> Result<String> {
    let user = service_user()?;
    Ok(if user.switch_user {
        format!("/usr/sbin/runuser -u {} -- ", sh_quote(&user.name))
    } else {
        String::new()
    })
}

fn newest_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// psql as the superuser on `host` (a socket directory or an address) and `port`.
fn psql(host: &str, port: u16, password: Option<&str>, db: &str, sql: &str) -> Result<String> {
    let mut cmd = Command::new(client_tool("psql")?);
    cmd.env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", SUPERUSER)
        .env("PGDATABASE", db)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGAPPNAME", "pgsuite-harness")
        .env("PGPASSFILE", "/dev/null")
        .env_remove("PGSERVICE")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    match password {
        Some(pw) => cmd.env("PGPASSWORD", pw),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let out = run(&mut cmd, &format!("psql on {host}:{port} db {db}"))?;
    Ok(out.trim().to_owned())
}

/// One request to a Patroni REST API on 127.0.0.1 (HTTP/1.0 answers, closed connections).
fn rest_request(
    method: &str,
    port: u16,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let url = format!("http://{LOCALHOST}:{port}{path}");
    let response = match (method, json) {
        ("POST", Some(body)) => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body),
        ("GET", None) => agent.get(&url).call(),
        _ => bail!("unsupported REST request {method} {path}"),
    };
    let mut response = response.with_context(|| format!("{method} {url} failed"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("cannot read the body of {method} {url}"))?;
    Ok((status, body))
}
