//! Real services on loopback for the suite's integration tests and the sandbox.
//!
//! Starts PostgreSQL (15 from Debian; 13, 14, 16, 17, 18 from the npm builds `scripts/setup`
//! unpacks), a streaming replica, Pgbouncer, pgBackRest and VictoriaMetrics on 127.0.0.1, on
//! free ports, in temporary directories. The API is blocking; call it from plain `#[test]`s or
//! before/inside tokio tests. Every service stops on `Drop`; if the test process dies first
//! (abort, `SIGKILL`, `exit` with a static still alive) the [`reaper`] stops it and removes its
//! directory. When run as root, PostgreSQL, Pgbouncer and pgBackRest run as the `postgres` OS
//! user ([`privileges`]).
//!
//! ```no_run
//! use test_harness::{ClusterBuilder, PgVersion, shared_cluster};
//!
//! // One cluster for the whole test binary: primary + replica + Pgbouncer + pgBackRest.
//! let cluster = shared_cluster();
//! assert_eq!(cluster.primary().query("db1", "SELECT count(*) FROM t1").unwrap(), "1000");
//!
//! // Or an own one, stopped when dropped.
//! let own = ClusterBuilder::new(PgVersion::V17).start().unwrap();
//! println!("{}", own.primary().url("postgres"));
//! ```
//!
//! Our own agent binaries under test run as an [`Agent`]: on a free port, with a temporary
//! directory and log file, waited for until they answer HTTP, killed and reaped on drop.
//!
//! Missing binaries are reported with the Debian package to install, or "run scripts/setup".

pub mod agent;
pub mod bench;
pub mod cluster;
pub mod etcd;
pub mod haproxy;
pub mod http;
pub mod patroni;
pub mod pgbackrest;
pub mod pgbouncer;
pub mod ports;
pub mod postgres;
pub mod privileges;
pub mod process;
pub mod reaper;
pub mod tls;
mod util;
pub mod versions;
pub mod victoria_metrics;
pub mod vmagent;

pub use agent::{Agent, AgentBuilder};
pub use cluster::{Cluster, ClusterBuilder, shared_cluster};
pub use etcd::Etcd;
pub use haproxy::{Haproxy, HaproxyListener};
pub use patroni::{PatroniCluster, PatroniClusterBuilder, PatroniMember, PatroniTiming};
pub use pgbackrest::{BackupType, PgBackRest, PgHost};
pub use pgbouncer::{Pgbouncer, PgbouncerTarget};
pub use ports::free_port;
pub use postgres::{
    PASSWORD_USER, PASSWORD_USER_PASSWORD, Postgres, PostgresBuilder, REPLICATION_PASSWORD,
    REPLICATION_USER, SUPERUSER,
};
pub use process::ManagedChild;
pub use tls::TlsFiles;
pub use versions::PgVersion;
pub use victoria_metrics::{ScrapeTarget, VictoriaMetrics, sample_value};
