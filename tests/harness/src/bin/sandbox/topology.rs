//! What the sandbox runs: the plain primary + replica pair or a Patroni cluster, and the
//! PostgreSQL instances the agents attach to.

use std::path::PathBuf;

use test_harness::{Cluster, PatroniCluster, PgBackRest, Pgbouncer};

/// One PostgreSQL instance of the sandbox, as the agents see it.
#[derive(Debug)]
pub(crate) struct Instance {
    /// `ins` label (and log field).
    pub(crate) ins: String,
    /// pg_exporter's VictoriaMetrics job.
    pub(crate) exporter_job: String,
    /// pg_exporter's connection URL.
    pub(crate) exporter_url: String,
    /// Its csvlog files.
    pub(crate) csvlog: PathBuf,
    /// Patroni's log file and REST address (`host:port`), for a Patroni member.
    pub(crate) patroni: Option<(PathBuf, String)>,
}

/// What the sandbox runs: the plain primary + replica pair or a Patroni cluster, and the
/// Pgbouncer and pgBackRest attached to it.
pub(crate) enum Topology {
    Plain(Cluster),
    Patroni(PatroniCluster),
}

impl Topology {
    pub(crate) fn pgbouncer(&self) -> &Pgbouncer {
        match self {
            Topology::Plain(c) => c.pgbouncer(),
            Topology::Patroni(c) => c.pgbouncer(),
        }
    }

    pub(crate) fn pgbackrest(&self) -> &PgBackRest {
        match self {
            Topology::Plain(c) => c.pgbackrest(),
            Topology::Patroni(c) => c.pgbackrest(),
        }
    }

    /// `cls` label: the Patroni scope (so Patroni's `scope` and our `cls` match), else
    /// `pg-sandbox`.
    pub(crate) fn cls(&self) -> String {
        match self {
            Topology::Plain(_) => "pg-sandbox".to_owned(),
            Topology::Patroni(c) => c.scope().to_owned(),
        }
    }

    pub(crate) fn instances(&self) -> Vec<Instance> {
        let cls = self.cls();
        match self {
            Topology::Plain(c) => vec![
                Instance {
                    ins: format!("{cls}-1"),
                    exporter_job: "pg_exporter_primary".into(),
                    exporter_url: c.primary().url("postgres"),
                    csvlog: c.primary().log_dir().join("*.csv"),
                    patroni: None,
                },
                // As the password user, so the sandbox also shows that no password leaks.
                Instance {
                    ins: format!("{cls}-2"),
                    exporter_job: "pg_exporter_replica".into(),
                    exporter_url: c.replica().password_url("postgres"),
                    csvlog: c.replica().log_dir().join("*.csv"),
                    patroni: None,
                },
            ],
            Topology::Patroni(c) => c
                .members()
                .iter()
                .enumerate()
                .map(|(i, m)| Instance {
                    ins: format!("{cls}-{}", i + 1),
                    exporter_job: format!("pg_exporter_{}", m.name()),
                    // Pigsty's exporter reaches its local server over the unix socket.
                    exporter_url: m.socket_url("postgres"),
                    csvlog: m.pg_log_dir().join("*.csv"),
                    patroni: Some((
                        m.patroni_log_path(),
                        format!("{}:{}", m.host(), m.rest_port()),
                    )),
                })
                .collect(),
        }
    }
}
