//! A PostgreSQL primary with, on request, a streaming replica, Pgbouncer, pgBackRest and extra
//! databases, started together; and [`shared_cluster`], one such cluster per test binary.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::pgbackrest::{DEFAULT_STANZA, PgBackRest};
use crate::pgbouncer::Pgbouncer;
use crate::postgres::{Postgres, PostgresBuilder};
use crate::versions::PgVersion;

/// How long [`ClusterBuilder::start`] waits for the replica to stream.
pub const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start. Only the primary is started unless asked otherwise.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    version: PgVersion,
    replica: bool,
    pgbouncer: bool,
    pgbackrest: bool,
    databases: Vec<(String, usize)>,
    settings: Vec<(String, String)>,
}

impl ClusterBuilder {
    /// A cluster of the given PostgreSQL version (replicas need [`PgVersion::V15`]).
    pub fn new(version: PgVersion) -> Self {
        Self {
            version,
            replica: false,
            pgbouncer: false,
            pgbackrest: false,
            databases: Vec::new(),
            settings: Vec::new(),
        }
    }

    /// Also start a streaming replica and wait until it streams.
    pub fn replica(mut self) -> Self {
        self.replica = true;
        self
    }

    /// Also start Pgbouncer in front of the primary.
    pub fn pgbouncer(mut self) -> Self {
        self.pgbouncer = true;
        self
    }

    /// Also archive WAL to a pgBackRest stanza ([`DEFAULT_STANZA`]), created and checked.
    pub fn pgbackrest(mut self) -> Self {
        self.pgbackrest = true;
        self
    }

    /// Extra databases with `n` tables each (see [`PostgresBuilder::with_databases`]).
    pub fn with_databases(mut self, databases: &[(&str, usize)]) -> Self {
        self.databases
            .extend(databases.iter().map(|(db, n)| ((*db).to_owned(), *n)));
        self
    }

    /// A `postgresql.conf` setting for the primary (see [`PostgresBuilder::setting`]).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts everything asked for; on error whatever was started is stopped again.
    pub fn start(&self) -> Result<Cluster> {
        let pgbackrest = if self.pgbackrest {
            Some(PgBackRest::prepare(DEFAULT_STANZA)?)
        } else {
            None
        };
        let mut builder = PostgresBuilder::new(self.version);
        let dbs: Vec<(&str, usize)> = self
            .databases
            .iter()
            .map(|(d, n)| (d.as_str(), *n))
            .collect();
        builder = builder.with_databases(&dbs);
        for (k, v) in &self.settings {
            builder = builder.setting(k, v);
        }
        if let Some(b) = &pgbackrest {
            builder = builder.archive_command(&b.archive_command());
        }
        let primary = builder.start()?;
        if let Some(b) = &pgbackrest {
            b.create_stanza(&primary)
                .context("cannot set up pgBackRest")?;
        }
        let replica = if self.replica {
            let replica = primary.start_replica()?;
            replica.wait_streaming(STREAMING_TIMEOUT)?;
            Some(replica)
        } else {
            None
        };
        let pgbouncer = if self.pgbouncer {
            Some(Pgbouncer::start(&primary)?)
        } else {
            None
        };
        Ok(Cluster {
            pgbouncer,
            replica,
            primary,
            pgbackrest,
        })
    }
}

/// Services started together. Dropping it stops Pgbouncer, the replica, the primary, then
/// removes the pgBackRest repository (field order).
#[derive(Debug)]
pub struct Cluster {
    pgbouncer: Option<Pgbouncer>,
    replica: Option<Postgres>,
    primary: Postgres,
    pgbackrest: Option<PgBackRest>,
}

impl Cluster {
    /// A builder.
    pub fn builder(version: PgVersion) -> ClusterBuilder {
        ClusterBuilder::new(version)
    }

    /// The primary.
    pub fn primary(&self) -> &Postgres {
        &self.primary
    }

    /// The replica; panics if the cluster was built without [`ClusterBuilder::replica`].
    pub fn replica(&self) -> &Postgres {
        self.replica
            .as_ref()
            .expect("this cluster has no replica: use ClusterBuilder::replica()")
    }

    /// Pgbouncer; panics if the cluster was built without [`ClusterBuilder::pgbouncer`].
    pub fn pgbouncer(&self) -> &Pgbouncer {
        self.pgbouncer
            .as_ref()
            .expect("this cluster has no Pgbouncer: use ClusterBuilder::pgbouncer()")
    }

    /// pgBackRest; panics if the cluster was built without [`ClusterBuilder::pgbackrest`].
    pub fn pgbackrest(&self) -> &PgBackRest {
        self.pgbackrest
            .as_ref()
            .expect("this cluster has no pgBackRest: use ClusterBuilder::pgbackrest()")
    }

    /// The replica, if any.
    pub fn try_replica(&self) -> Option<&Postgres> {
        self.replica.as_ref()
    }

    /// Pgbouncer, if any.
    pub fn try_pgbouncer(&self) -> Option<&Pgbouncer> {
        self.pgbouncer.as_ref()
    }

    /// pgBackRest, if any.
    pub fn try_pgbackrest(&self) -> Option<&PgBackRest> {
        self.pgbackrest.as_ref()
    }
}

/// The extra databases of [`shared_cluster`]: `db1` and `db2`, 3 tables each.
pub const SHARED_DATABASES: &[(&str, usize)] = &[("db1", 3), ("db2", 3)];

/// The builder [`shared_cluster`] uses: PostgreSQL 15 primary, streaming replica, Pgbouncer,
/// pgBackRest (stanza created, no backup yet) and [`SHARED_DATABASES`].
pub fn shared_cluster_builder() -> ClusterBuilder {
    ClusterBuilder::new(PgVersion::V15)
        .replica()
        .pgbouncer()
        .pgbackrest()
        .with_databases(SHARED_DATABASES)
}

/// One cluster per test binary, started on first use (see [`shared_cluster_builder`]) and
/// never dropped: the reaper stops it when the test process exits. Tests sharing it must not
/// change it destructively (promote the replica, stop servers): start an own [`Cluster`] for
/// that. Panics, with the reason, if it cannot be started (every later call panics the same way).
pub fn shared_cluster() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| {
        shared_cluster_builder()
            .start()
            .map_err(|e| format!("{e:?}"))
    }) {
        Ok(cluster) => cluster,
        Err(e) => panic!("the shared test cluster could not be started: {e}"),
    }
}
