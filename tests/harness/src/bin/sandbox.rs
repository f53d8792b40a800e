//! The sandbox: a PostgreSQL 15 primary + streaming replica, Pgbouncer, pgBackRest (with one
//! full backup), the suite's agents attached to them, and VictoriaMetrics scraping every agent
//! and itself, all on 127.0.0.1. It prints the URLs to open, waits until VictoriaMetrics sees
//! `up == 1` for every target, then runs until Ctrl-C / SIGTERM and removes everything.
//!
//! ```text
//! cargo run -p test-harness --bin sandbox            # run until Ctrl-C
//! cargo run -p test-harness --bin sandbox -- --check # start, verify every target is up, stop
//! cargo run -p test-harness --bin sandbox -- --vlogs-url=http://127.0.0.1:9428
//! cargo run -p test-harness --bin sandbox -- --loki-url=http://127.0.0.1:3100
//! ```
//!
//! log_shipper ships both instances' csvlog, Pgbouncer's and pgBackRest's logs to a JSON-lines
//! file in the agents' directory, or to the VictoriaLogs or Loki given on the command line.
//!
//! Agents are listed in [`ATTACHED_AGENTS`]; a missing binary is skipped with a note.

use std::path::{Path, PathBuf};
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

/// Where the sandbox's log_shipper sends the cluster's logs.
#[derive(Debug, Clone, PartialEq)]
enum LogDestination {
    /// A JSON-lines file in the agents' directory (the default).
    File,
    /// A VictoriaLogs base URL (`--vlogs-url`).
    VictoriaLogs(String),
    /// A Loki base URL (`--loki-url`).
    Loki(String),
}

/// The sandbox's flags.
#[derive(Debug)]
struct Options {
    /// Start, check every target is up, stop.
    check_only: bool,
    logs: LogDestination,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            check_only: false,
            logs: LogDestination::File,
        };
        for arg in args {
            if arg == "--check" {
                options.check_only = true;
            } else if let Some(url) = arg.strip_prefix("--vlogs-url=") {
                options.logs = LogDestination::VictoriaLogs(url.to_owned());
            } else if let Some(url) = arg.strip_prefix("--loki-url=") {
                options.logs = LogDestination::Loki(url.to_owned());
            } else {
                anyhow::bail!(
                    "unknown argument {arg:?}; usage: sandbox [--check] [--vlogs-url=URL | --loki-url=URL]"
                );
            }
        }
        Ok(options)
    }
}

/// What an attached agent can be pointed at.
#[derive(Debug)]
struct Endpoints<'a> {
    cluster: &'a Cluster,
    /// Where agents' logs, configs and state go.
    agents_dir: &'a Path,
    logs: &'a LogDestination,
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

    /// Writes log_shipper's config: the primary's and the replica's csvlog, Pgbouncer's log and
    /// pgBackRest's logs, as a Pigsty node would ship them, to the chosen destination.
    fn log_shipper_config(&self) -> Result<PathBuf> {
        let primary = self.cluster.primary();
        let replica = self.cluster.replica();
        let sink = match self.logs {
            LogDestination::File => format!(
                "type: file\n    path: {}",
                yaml_path(&self.shipped_logs_path())
            ),
            LogDestination::VictoriaLogs(url) => {
                format!(
                    "type: victorialogs\n    endpoint: {url}\n    stream_fields: [job, ins, ip]"
                )
            }
            LogDestination::Loki(url) => {
                format!("type: loki\n    endpoint: {url}\n    labels: [job, ins, ip, cls]")
            }
        };
        let source = |name: &str, ins: &str, include: String, format: &str, job: &str| {
            format!(
                "  {name}:\n    include: [{include}]\n    format: {format}\n    \
                 read_from: beginning\n    fields: {{job: {job}, ins: {ins}}}\n"
            )
        };
        let mut config = format!(
            "checkpoint_dir: {}\nfields:\n  cls: pg-sandbox\n  ip: 127.0.0.1\nsources:\n",
            yaml_path(&self.agents_dir.join("log_shipper-state"))
        );
        config += &source(
            "postgres_primary",
            "pg-sandbox-1",
            yaml_path(&primary.log_dir().join("*.csv")),
            "postgres_csv",
            "postgres",
        );
        config += &source(
            "postgres_replica",
            "pg-sandbox-2",
            yaml_path(&replica.log_dir().join("*.csv")),
            "postgres_csv",
            "postgres",
        );
        config += &source(
            "pgbouncer",
            "pg-sandbox-1",
            yaml_path(self.cluster.pgbouncer().log_path()),
            "pgbouncer",
            "pgbouncer",
        );
        config += &source(
            "pgbackrest",
            "pg-sandbox-1",
            yaml_path(&self.cluster.pgbackrest().log_path().join("*.log")),
            "pgbackrest",
            "pgbackrest",
        );
        config += &format!("sinks:\n  sandbox:\n    {sink}\n");
        let path = self.agents_dir.join("log_shipper.yml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The file sink's output when no URL is given.
    fn shipped_logs_path(&self) -> PathBuf {
        self.agents_dir.join("shipped-logs.jsonl")
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
    /// Command-line arguments, from the cluster's endpoints and the port to listen on; may write
    /// files (e.g. a config) into the agents' directory.
    args: fn(&Endpoints<'_>, u16) -> Result<Vec<String>>,
    /// Path of the metrics endpoint.
    metrics_path: &'static str,
}

/// The agents to attach. Add an entry per exporter as they are written, e.g.:
///
/// ```text
/// AttachedAgent {
///     name: "pg_exporter",
///     env_var: "PGSUITE_PG_EXPORTER_BIN",
///     args: |e, port| Ok(vec![
///         format!("--url={}", e.primary_url()),
///         format!("--web.listen-address=127.0.0.1:{port}"),
///     ]),
///     metrics_path: "/metrics",
/// },
/// ```
const ATTACHED_AGENTS: &[AttachedAgent] = &[
    AttachedAgent {
        name: "pg_exporter_primary",
        binary: "pg_exporter",
        env_var: "PGSUITE_PG_EXPORTER_BIN",
        args: |e, port| {
            Ok(vec![
                format!("--url={}", e.primary_url()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--connect-timeout=1000".into(),
                "--label=cls=pg-sandbox,ins=pg-sandbox-1".into(),
            ])
        },
        metrics_path: "/metrics",
    },
    AttachedAgent {
        name: "pg_exporter_replica",
        binary: "pg_exporter",
        env_var: "PGSUITE_PG_EXPORTER_BIN",
        args: |e, port| {
            Ok(vec![
                format!("--url={}", e.replica_url()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--connect-timeout=1000".into(),
                "--label=cls=pg-sandbox,ins=pg-sandbox-2".into(),
            ])
        },
        metrics_path: "/metrics",
    },
    AttachedAgent {
        name: "pgbouncer_exporter",
        binary: "pgbouncer_exporter",
        env_var: "PGSUITE_PGBOUNCER_EXPORTER_BIN",
        args: |e, port| {
            Ok(vec![
                format!("--url={}", e.pgbouncer_url()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--connect-timeout=1000".into(),
                "--label=cls=pg-sandbox,ins=pg-sandbox-1".into(),
            ])
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
            Ok(args)
        },
        metrics_path: "/metrics",
    },
    AttachedAgent {
        name: "log_shipper",
        binary: "log_shipper",
        env_var: "PGSUITE_LOG_SHIPPER_BIN",
        args: |e, port| {
            Ok(vec![
                format!("--config={}", e.log_shipper_config()?.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ])
        },
        metrics_path: "/metrics",
    },
];

/// A path as a double-quoted YAML scalar.
fn yaml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A started agent and its scrape target.
#[derive(Debug)]
struct RunningAgent {
    process: ManagedChild,
    target: ScrapeTarget,
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sandbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (tx, rx) = mpsc::channel();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.send(());
    }) {
        eprintln!("sandbox: cannot install the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let code = match run(&options, &rx) {
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

fn run(options: &Options, stop: &mpsc::Receiver<()>) -> Result<()> {
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
    let endpoints = Endpoints {
        cluster: &cluster,
        agents_dir: logs.path(),
        logs: &options.logs,
    };
    let agents = start_agents(&endpoints, &logs)?;
    let targets: Vec<ScrapeTarget> = agents.iter().map(|a| a.target.clone()).collect();
    let vm = VictoriaMetrics::start(&targets)?;

    print_urls(&endpoints, &vm, &agents);

    let mut jobs = vec![SELF_JOB.to_owned()];
    jobs.extend(agents.iter().map(|a| a.target.job.clone()));
    for job in &jobs {
        vm.wait_for_up(job, UP_TIMEOUT).with_context(|| {
            let log = agents
                .iter()
                .find(|a| &a.target.job == job)
                .map(|a| format!("; its log ends with:\n{}", a.process.log_tail(20)))
                .unwrap_or_default();
            format!("VictoriaMetrics does not see job {job} up{log}")
        })?;
    }
    if options.logs == LogDestination::File && agents.iter().any(|a| a.target.job == "log_shipper")
    {
        wait_for_shipped_logs(&endpoints.shipped_logs_path())?;
    }
    println!(
        "\nVictoriaMetrics sees up == 1 for every target: {}",
        jobs.join(", ")
    );

    if options.check_only {
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

/// Waits until log_shipper's file sink holds PostgreSQL records of both instances.
fn wait_for_shipped_logs(path: &Path) -> Result<()> {
    let wanted = ["pg-sandbox-1", "pg-sandbox-2"];
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        let seen: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|ins| {
                shipped.lines().any(|line| {
                    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|r| {
                        r["job"] == "postgres" && r["ins"] == *ins && r["message"].is_string()
                    })
                })
            })
            .collect();
        if seen.len() == wanted.len() {
            println!(
                "log_shipper shipped PostgreSQL logs of {} to {}",
                seen.join(" and "),
                path.display()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "log_shipper did not ship PostgreSQL logs of every instance to {} (seen: {seen:?})",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
        cmd.args((agent.args)(endpoints, port)?);
        let log = logs.path().join(format!("{}.log", agent.name));
        let process = ManagedChild::spawn(agent.name, &mut cmd, &log)?;
        let target = ScrapeTarget::local(agent.name, port).path(agent.metrics_path);
        running.push(RunningAgent { process, target });
    }
    Ok(running)
}

fn print_urls(endpoints: &Endpoints<'_>, vm: &VictoriaMetrics, agents: &[RunningAgent]) {
    let cluster = endpoints.cluster;
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
    row(
        "agent logs and configs",
        &endpoints.agents_dir.display().to_string(),
    );
    if agents.iter().any(|a| a.target.job == "log_shipper") {
        let shipped = match endpoints.logs {
            LogDestination::File => endpoints.shipped_logs_path().display().to_string(),
            LogDestination::VictoriaLogs(url) => format!("VictoriaLogs at {url}"),
            LogDestination::Loki(url) => format!("Loki at {url}"),
        };
        row("shipped logs", &shipped);
    }
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
    println!("\nDashboards and rules (Grafana is not installed here):");
    row(
        "Grafana dashboards",
        "dashboards/grafana/*.json (uid = file name)",
    );
    row(
        "Grafana provisioning",
        "dashboards/provisioning/{datasources,dashboards}/pgsuite.yml",
    );
    row(
        "datasource ds-prometheus",
        &format!(
            "{} (its url in dashboards/provisioning/datasources/pgsuite.yml)",
            vm.url()
        ),
    );
    row(
        "alert and recording rules",
        "dashboards/rules/*.yml (promtool test rules dashboards/rules/tests/*.yml)",
    );
}
