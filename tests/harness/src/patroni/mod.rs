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
//! holds every member; etcd has its own (see [`Etcd`](crate::etcd::Etcd)):
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
//! [`SUPERUSER_PASSWORD`], [`REPLICATION_USER`](crate::postgres::REPLICATION_USER) and `rewind_user` created by Patroni, and
//! [`PASSWORD_USER`](crate::postgres::PASSWORD_USER) (member of `pg_monitor`) created by the harness. `pg_hba`: trust on the
//! socket, scram-sha-256 over TCP from 127.0.0.1.
//!
//! # Processes
//!
//! Patroni is spawned directly as the service user (`postgres` when this process is root), so
//! the PID held is Patroni's own; PostgreSQL is Patroni's child. Dropping the cluster sends
//! SIGTERM to every Patroni at once (each stops its PostgreSQL, fast mode), waits, then stops
//! etcd and removes the directories. If this process dies first the [reaper](crate::reaper)
//! does the same: each Patroni is terminated (killed after 5 s), then `pg_ctl stop -m immediate`
//! runs on any PostgreSQL left, then etcd is stopped and the directories removed.
//! [`Footprint`] finds whatever of a cluster still runs, for tests of exactly that.
//!
//! # pgBackRest and Pgbouncer
//!
//! [`PatroniClusterBuilder::pgbackrest`] archives WAL from whichever member leads into one
//! repository under `<dir>/pgbackrest` (stanza [`DEFAULT_STANZA`](crate::pgbackrest::DEFAULT_STANZA)):
//! `archive_mode = on` and the `archive_command` are DCS parameters, so every member runs with
//! them, and the stanza lists every member (`pg1-…`, `pg2-…`); pgBackRest itself finds the
//! primary among them for `backup` and `check`, so nothing is rewritten after a switchover or a
//! failover (see [`pgbackrest`](crate::pgbackrest) for what was measured).
//!
//! [`PatroniClusterBuilder::pgbouncer`] puts [HAProxy](crate::haproxy) in front of the members,
//! with Pigsty's `primary` and `replica` services checked on Patroni's REST API, and one
//! Pgbouncer whose databases all point at the `primary` service ([`PRIMARY_SERVICE`]).

//!
//! # Code
//!
//! This module holds the settings ([`PatroniClusterBuilder`], [`PatroniTiming`]); `cluster`
//! starts and drives a cluster (role changes, HAProxy and Pgbouncer in front), `member` one
//! member (its configuration, its Patroni process, its PostgreSQL), `footprint` finds what of a
//! cluster still runs, and `commands` holds the psql, REST, kill and environment helpers.

mod cluster;
mod commands;
mod footprint;
mod member;

use std::time::Duration;

pub use cluster::{PatroniCluster, RoleChange};
pub use footprint::Footprint;
pub use member::PatroniMember;

/// Where Debian's `patroni` package installs the daemon (`#!/usr/bin/python3`).
pub const PATRONI_BIN: &str = "/usr/bin/patroni";
/// Where Debian's `patroni` package installs the command-line client.
pub const PATRONICTL_BIN: &str = "/usr/bin/patronictl";
/// The password of the superuser [`SUPERUSER`](crate::postgres::SUPERUSER) (needed over TCP; the socket trusts).
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
}
