//! A running Patroni cluster: started member by member, driven through switchovers, hard
//! failovers and rejoins, with HAProxy and Pgbouncer in front when asked.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use super::commands::{patroni_env, psql, rest_request};
use super::footprint::Footprint;
use super::member::PatroniMember;
use super::{
    PATRONI_BIN, PATRONICTL_BIN, POLL, PRIMARY_SERVICE, PatroniClusterBuilder, PatroniTiming,
    REPLICA_SERVICE, ROUTE_TIMEOUT, START_TIMEOUT, SUPERUSER_PASSWORD,
};
use crate::etcd::Etcd;
use crate::haproxy::{Haproxy, HaproxyListener};
use crate::pgbackrest::{DEFAULT_STANZA, PgBackRest, PgHost};
use crate::pgbouncer::{Pgbouncer, PgbouncerTarget};
use crate::ports::LOCALHOST;
use crate::postgres::{PASSWORD_USER, PASSWORD_USER_PASSWORD, sql_str};
use crate::privileges::{ServiceDir, service_command};
use crate::util::{poll, run};
use crate::versions::{DEBIAN_PG15_BIN, client_tool, require_binary};

impl PatroniClusterBuilder {
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
