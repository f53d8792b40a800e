//! The sandbox: a PostgreSQL 15 primary + streaming replica, Pgbouncer, pgBackRest (with one
//! full backup), the suite's agents attached to them, and VictoriaMetrics scraping every agent
//! and itself, all on 127.0.0.1. It prints the URLs to open, waits until VictoriaMetrics sees
//! `up == 1` for every target, then runs until Ctrl-C / SIGTERM and removes everything.
//!
//! ```text
//! cargo run -p test-harness --bin sandbox            # run until Ctrl-C
//! cargo run -p test-harness --bin sandbox -- --check # start, verify every target is up, stop
//! ```
//!
//! Agents are listed in [`ATTACHED_AGENTS`]; a missing binary is skipped with a note.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use test_harness::privileges::ServiceDir;
use test_harness::victoria_metrics::SELF_JOB;
use test_harness::{
    BackupType, Cluster, ClusterBuilder, ManagedChild, PgVersion, ScrapeTarget, VictoriaMetrics,
    free_port,
};

/// How long to wait for VictoriaMetrics to see every target up.
const UP_TIMEOUT: Duration = Duration::from_secs(90);

/// What an attached agent can be pointed at.
#[derive(Debug)]
struct Endpoints<'a> {
    cluster: &'a Cluster,
}

impl Endpoints<'_> {
    /// Superuser URL of the primary's `postgres` database.
    fn primary_url(&self) -> String {
        self.cluster.primary().url("postgres")
    }

    /// URL of the replica's `postgres` database, as the password user (so the sandbox also
    /// shows that no password leaks).
    fn replica_url(&self) -> String {
        self.cluster.replica().password_url("postgres")
    }

    /// pgbackrest_exporter's arguments for the sandbox's pgBackRest repository: its config and,
    /// when the sandbox runs as root, `--backrest.user` so that pgbackrest runs as the
    /// repository's owner (`postgres`).
    /// Pgbouncer's admin console over its unix socket, as the stats-only user (Pigsty's usual
    /// form: `postgres://user@:6432/pgbouncer?host=<socket dir>`).
    fn pgbouncer_url(&self) -> String {
        let bouncer = self.cluster.pgbouncer();
        format!(
            "postgres://{}@:{}/pgbouncer?host={}",
            test_harness::pgbouncer::STATS_USER,
            bouncer.port(),
            bouncer.socket_dir().display()
        )
    }

    fn pgbackrest_args(&self) -> Vec<String> {
        let mut args = vec![format!(
            "--backrest.config={}",
            self.cluster.pgbackrest().config_path().display()
        )];
        if let Ok(user) = test_harness::privileges::service_user()
            && user.switch_user
        {
            args.push(format!("--backrest.user={}", user.name));
        }
        args
    }
}

/// An agent of the suite started by the sandbox and scraped by VictoriaMetrics.
#[derive(Debug)]
struct AttachedAgent {
    /// VictoriaMetrics job name (also names the log file).
    name: &'static str,
    /// Binary name, found next to the sandbox binary, i.e. `target/<profile>/<binary>`.
    binary: &'static str,
    /// Environment variable that overrides the binary path.
    env_var: &'static str,
    /// Command-line arguments, from the cluster's endpoints and the port to listen on.
    args: fn(&Endpoints<'_>, u16) -> Vec<String>,
    /// Path of the metrics endpoint.
    metrics_path: &'static str,
}

/// The agents to attach. Add an entry per exporter as they are written, e.g.:
///
/// ```text
/// AttachedAgent {
///     name: "pg_exporter",
///     env_var: "PGSUITE_PG_EXPORTER_BIN",
///     args: |e, port| vec![
///         format!("--url={}", e.primary_url()),
///         format!("--web.listen-address=127.0.0.1:{port}"),
///     ],
///     metrics_path: "/metrics",
/// },
/// ```
const ATTACHED_AGENTS: &[AttachedAgent] = &[
    AttachedAgent {
        name: "pg_exporter_primary",
        binary: "pg_exporter",
        env_var: "PGSUITE_PG_EXPORTER_BIN",
        args: |e, port| {
            vec![
                format!("--url={}", e.primary_url()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--connect-timeout=1000".into(),
                "--label=cls=pg-sandbox,ins=pg-sandbox-1".into(),
            ]
        },
        metrics_path: "/metrics",
    },
    AttachedAgent {
        name: "pg_exporter_replica",
        binary: "pg_exporter",
        env_var: "PGSUITE_PG_EXPORTER_BIN",
        args: |e, port| {
            vec![
                format!("--url={}", e.replica_url()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--connect-timeout=1000".into(),
                "--label=cls=pg-sandbox,ins=pg-sandbox-2".into(),
            ]
        },
        metrics_path: "/metrics",
    },
    AttachedAgent {
        name: "pgbouncer_exporter",
        binary: "pgbouncer_exporter",
        env_var: "PGSUITE_PGBOUNCER_EXPORTER_BIN",
        args: |e, port| {
            vec![
                format!("--url={}", e.pgbouncer_url()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--connect-timeout=1000".into(),
                "--label=cls=pg-sandbox,ins=pg-sandbox-1".into(),
            ]
        },
        metrics_path: "/metrics",
    },
    AttachedAgent {
        name: "pgbackrest_exporter",
        binary: "pgbackrest_exporter",
        env_var: "PGSUITE_PGBACKREST_EXPORTER_BIN",
        args: |e, port| {
            let mut args = e.pgbackrest_args();
            args.extend([
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--collect.interval=60".into(),
            ]);
            args
        },
        metrics_path: "/metrics",
    },
];

/// A started agent and its scrape target.
#[derive(Debug)]
struct RunningAgent {
    process: ManagedChild,
    target: ScrapeTarget,
}

fn main() -> ExitCode {
    let check_only = std::env::args().skip(1).any(|a| a == "--check");
    let (tx, rx) = mpsc::channel();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.send(());
    }) {
        eprintln!("sandbox: cannot install the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let code = match run(check_only, &rx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox: {e:?}");
            ExitCode::FAILURE
        }
    };
    eprintln!(
        "sandbox: stopped everything ({:.1?} after start)",
        started.elapsed()
    );
    code
}

fn run(check_only: bool, stop: &mpsc::Receiver<()>) -> Result<()> {
    eprintln!("sandbox: starting PostgreSQL 15 primary + replica, Pgbouncer, pgBackRest …");
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .replica()
        .pgbouncer()
        .pgbackrest()
        .with_databases(&[("db1", 3), ("db2", 3)])
        .start()?;
    eprintln!("sandbox: taking a full pgBackRest backup …");
    cluster.pgbackrest().backup(BackupType::Full)?;

    let logs = ServiceDir::new("pgsuite-sandbox-agents-", false)?;
    let endpoints = Endpoints { cluster: &cluster };
    let agents = start_agents(&endpoints, &logs)?;
    let targets: Vec<ScrapeTarget> = agents.iter().map(|a| a.target.clone()).collect();
    let vm = VictoriaMetrics::start(&targets)?;

    print_urls(&cluster, &vm, &agents, &logs);

    let mut jobs = vec![SELF_JOB.to_owned()];
    jobs.extend(agents.iter().map(|a| a.target.job.clone()));
    for job in &jobs {
        vm.wait_for_up(job, UP_TIMEOUT)
            .with_context(|| format!("VictoriaMetrics does not see job {job} up"))?;
    }
    println!(
        "\nVictoriaMetrics sees up == 1 for every target: {}",
        jobs.join(", ")
    );

    if check_only {
        println!("--check: stopping.");
    } else {
        println!(
            "Running. Stop with Ctrl-C or `kill -TERM {}`; everything started is then removed.",
            std::process::id()
        );
        let _ = stop.recv();
        println!("\nStopping …");
    }
    // Explicit order: agents first, then the scraper, then the databases.
    drop(agents);
    drop(vm);
    drop(cluster);
    drop(logs);
    Ok(())
}

fn start_agents(endpoints: &Endpoints<'_>, logs: &ServiceDir) -> Result<Vec<RunningAgent>> {
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let mut running = Vec::new();
    for agent in ATTACHED_AGENTS {
        let binary = std::env::var_os(agent.env_var)
            .map_or_else(|| own_dir.join(agent.binary), PathBuf::from);
        if !binary.is_file() {
            println!(
                "sandbox: skipping {}: {} not found (build it, or set {})",
                agent.name,
                binary.display(),
                agent.env_var
            );
            continue;
        }
        let port = free_port()?;
        let mut cmd = Command::new(&binary);
        cmd.args((agent.args)(endpoints, port));
        let log = logs.path().join(format!("{}.log", agent.name));
        let process = ManagedChild::spawn(agent.name, &mut cmd, &log)?;
        let target = ScrapeTarget::local(agent.name, port).path(agent.metrics_path);
        running.push(RunningAgent { process, target });
    }
    Ok(running)
}

fn print_urls(cluster: &Cluster, vm: &VictoriaMetrics, agents: &[RunningAgent], logs: &ServiceDir) {
    let primary = cluster.primary();
    let replica = cluster.replica();
    let bouncer = cluster.pgbouncer();
    let backrest = cluster.pgbackrest();
    let row = |k: &str, v: &str| println!("  {k:<26} {v}");

    println!("\nPostgreSQL monitoring sandbox\n");
    println!("Open:");
    row("VictoriaMetrics UI", &vm.vmui_url());
    row("VictoriaMetrics targets", &format!("{}/targets", vm.url()));
    row("victoria-metrics /metrics", &vm.self_target().url());
    for agent in agents {
        row(
            &format!("{} /metrics", agent.target.job),
            &agent.target.url(),
        );
        row(
            &format!("{} log", agent.target.job),
            &agent.process.log_path().display().to_string(),
        );
    }
    println!("\nConnect:");
    row("primary (superuser)", &primary.url("postgres"));
    row(
        "primary (scram password)",
        &primary.password_url("postgres"),
    );
    row(
        "primary (TLS verify-full)",
        &primary.ssl_url("postgres", "verify-full"),
    );
    row("replica", &replica.url("postgres"));
    row("pgbouncer (pooled)", &bouncer.url("postgres"));
    row("pgbouncer admin console", &bouncer.admin_url());
    row("pgbouncer stats console", &bouncer.stats_url());
    row("extra databases", "db1, db2 (tables t1..t3)");
    println!("\nFiles:");
    row(
        "primary data / logs",
        &format!(
            "{} / {}",
            primary.data_dir().display(),
            primary.log_dir().display()
        ),
    );
    row(
        "replica data / logs",
        &format!(
            "{} / {}",
            replica.data_dir().display(),
            replica.log_dir().display()
        ),
    );
    row(
        "pgbouncer ini / log",
        &format!(
            "{} / {}",
            bouncer.ini_path().display(),
            bouncer.log_path().display()
        ),
    );
    row("agent logs", &logs.path().display().to_string());
    let as_postgres = if test_harness::privileges::is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    row(
        "pgBackRest",
        &format!(
            "{as_postgres}pgbackrest --config={} --stanza={} info",
            backrest.config_path().display(),
            backrest.stanza()
        ),
    );
    row(
        "psql",
        &format!(
            "/usr/lib/postgresql/15/bin/psql '{}'",
            primary.url("postgres")
        ),
    );
}
