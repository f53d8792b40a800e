//! The sandbox: PostgreSQL 15 (a primary + streaming replica, or with `--patroni` a two-member
//! Patroni cluster on etcd behind HAProxy), Pgbouncer, pgBackRest (with one full backup), the
//! suite's agents attached to them, and VictoriaMetrics scraping every agent, itself and (with
//! `--patroni`) Patroni's own `/metrics`, all on 127.0.0.1. It prints the URLs to open, waits
//! until VictoriaMetrics sees `up == 1` for every target, then runs until Ctrl-C / SIGTERM and
//! removes everything.
//!
//! With `--vmagent`, VictoriaMetrics' vmagent scrapes the agents instead, from `file_sd` files
//! written as Pigsty writes them (job `pgsql`: per instance the labels `{cls, ins, ip}` and its
//! pg_exporter, Pgbouncer, pgBackRest and Patroni targets; job `node`: log_shipper), and
//! remote-writes to VictoriaMetrics, which scrapes only itself and vmagent. The agents then get
//! no `--label`: their identity comes from the target files, as in Pigsty.
//!
//! ```text
//! cargo run -p test-harness --bin sandbox            # run until Ctrl-C
//! cargo run -p test-harness --bin sandbox -- --check # start, verify every target is up, stop
//! cargo run -p test-harness --bin sandbox -- --patroni
//! cargo run -p test-harness --bin sandbox -- --vmagent --check
//! cargo run -p test-harness --bin sandbox -- --vlogs-url=http://127.0.0.1:9428
//! cargo run -p test-harness --bin sandbox -- --loki-url=http://127.0.0.1:3100
//! ```
//!
//! log_shipper ships every instance's csvlog (and Patroni's log), Pgbouncer's and pgBackRest's
//! logs to a JSON-lines file in the agents' directory, or to the VictoriaLogs or Loki given on
//! the command line. A missing agent binary is skipped with a note.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use test_harness::privileges::ServiceDir;
use test_harness::victoria_metrics::SELF_JOB;
use test_harness::vmagent::{FileSdGroup, VMAGENT_JOB, VmAgent};
use test_harness::{
    BackupType, Cluster, ClusterBuilder, ManagedChild, PatroniCluster, PatroniClusterBuilder,
    PgBackRest, PgVersion, Pgbouncer, ScrapeTarget, VictoriaMetrics, free_port,
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
    /// A Patroni cluster instead of the plain pair.
    patroni: bool,
    /// vmagent scrapes the agents from file_sd targets and remote-writes to VictoriaMetrics.
    vmagent: bool,
    logs: LogDestination,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            check_only: false,
            patroni: false,
            vmagent: false,
            logs: LogDestination::File,
        };
        for arg in args {
            if arg == "--check" {
                options.check_only = true;
            } else if arg == "--patroni" {
                options.patroni = true;
            } else if arg == "--vmagent" {
                options.vmagent = true;
            } else if let Some(url) = arg.strip_prefix("--vlogs-url=") {
                options.logs = LogDestination::VictoriaLogs(url.to_owned());
            } else if let Some(url) = arg.strip_prefix("--loki-url=") {
                options.logs = LogDestination::Loki(url.to_owned());
            } else {
                anyhow::bail!(
                    "unknown argument {arg:?}; usage: sandbox [--check] [--patroni] [--vmagent] [--vlogs-url=URL | --loki-url=URL]"
                );
            }
        }
        Ok(options)
    }
}

/// One PostgreSQL instance of the sandbox, as the agents see it.
#[derive(Debug)]
struct Instance {
    /// `ins` label (and log field).
    ins: String,
    /// pg_exporter's VictoriaMetrics job.
    exporter_job: String,
    /// pg_exporter's connection URL.
    exporter_url: String,
    /// Its csvlog files.
    csvlog: PathBuf,
    /// Patroni's log file and REST address (`host:port`), for a Patroni member.
    patroni: Option<(PathBuf, String)>,
}

/// What the sandbox runs: the plain primary + replica pair or a Patroni cluster, and the
/// Pgbouncer and pgBackRest attached to it.
enum Topology {
    Plain(Cluster),
    Patroni(PatroniCluster),
}

impl Topology {
    fn pgbouncer(&self) -> &Pgbouncer {
        match self {
            Topology::Plain(c) => c.pgbouncer(),
            Topology::Patroni(c) => c.pgbouncer(),
        }
    }

    fn pgbackrest(&self) -> &PgBackRest {
        match self {
            Topology::Plain(c) => c.pgbackrest(),
            Topology::Patroni(c) => c.pgbackrest(),
        }
    }

    /// `cls` label: the Patroni scope (so Patroni's `scope` and our `cls` match), else
    /// `pg-sandbox`.
    fn cls(&self) -> String {
        match self {
            Topology::Plain(_) => "pg-sandbox".to_owned(),
            Topology::Patroni(c) => c.scope().to_owned(),
        }
    }

    fn instances(&self) -> Vec<Instance> {
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

/// What an attached agent can be pointed at.
struct Endpoints<'a> {
    topology: &'a Topology,
    instances: Vec<Instance>,
    /// Where agents' logs, configs and state go.
    agents_dir: &'a Path,
    logs: &'a LogDestination,
    /// Identity labels come from vmagent's target files, not from `--label`.
    vmagent: bool,
}

impl Endpoints<'_> {
    /// Pgbouncer's admin console over its unix socket, as the stats-only user (Pigsty's usual
    /// form: `postgres://user@:6432/pgbouncer?host=<socket dir>`).
    fn pgbouncer_url(&self) -> String {
        let bouncer = self.topology.pgbouncer();
        format!(
            "postgres://{}@:{}/pgbouncer?host={}",
            test_harness::pgbouncer::STATS_USER,
            bouncer.port(),
            bouncer.socket_dir().display()
        )
    }

    /// `--label` of an agent attached to instance `ins`: none when vmagent's target files
    /// carry the labels (an agent's own `ins` would then be renamed `exported_ins`).
    fn label(&self, ins: &str) -> Option<String> {
        (!self.vmagent).then(|| format!("--label=cls={},ins={ins}", self.topology.cls()))
    }

    /// The `file_sd` groups vmagent scrapes, as Pigsty writes them: job `pgsql` per instance
    /// (labels `{cls, ins, ip}`; its pg_exporter and Patroni, and on the first instance
    /// Pgbouncer's and pgBackRest's exporters), job `node` for log_shipper.
    fn file_sd_groups(&self, agents: &[RunningAgent]) -> Vec<FileSdGroup> {
        let cls = self.topology.cls();
        let node = format!("{cls}-node");
        let mut groups: Vec<FileSdGroup> = Vec::new();
        let mut add = |job: &str, ins: &str, address: &str| {
            if let Some(group) = groups.iter_mut().find(|g| g.job == job && g.name == ins) {
                group.targets.push(address.to_owned());
            } else {
                groups.push(
                    FileSdGroup::new(job, ins)
                        .label("cls", &cls)
                        .label("ip", "127.0.0.1")
                        .target(address),
                );
            }
        };
        for agent in agents {
            match &agent.ins {
                Some(ins) => add("pgsql", ins, &agent.target.address),
                None => add("node", &node, &agent.target.address),
            }
        }
        for instance in &self.instances {
            if let Some((_, rest)) = &instance.patroni {
                add("pgsql", &instance.ins, rest);
            }
        }
        groups
    }

    /// Writes log_shipper's config: every instance's csvlog (and Patroni's log), Pgbouncer's log
    /// and pgBackRest's logs, as a Pigsty node would ship them, to the chosen destination.
    fn log_shipper_config(&self) -> Result<PathBuf> {
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
        let source = |name: &str, ins: &str, include: &Path, format: &str, job: &str| {
            format!(
                "  {name}:\n    include: [{}]\n    format: {format}\n    \
                 read_from: beginning\n    fields: {{job: {job}, ins: {ins}}}\n",
                yaml_path(include)
            )
        };
        let mut config = format!(
            "checkpoint_dir: {}\nfields:\n  cls: {}\n  ip: 127.0.0.1\nsources:\n",
            yaml_path(&self.agents_dir.join("log_shipper-state")),
            self.topology.cls()
        );
        for (i, instance) in self.instances.iter().enumerate() {
            let n = i + 1;
            config += &source(
                &format!("postgres_{n}"),
                &instance.ins,
                &instance.csvlog,
                "postgres_csv",
                "postgres",
            );
            if let Some((log, _)) = &instance.patroni {
                config += &source(
                    &format!("patroni_{n}"),
                    &instance.ins,
                    log,
                    "patroni",
                    "patroni",
                );
            }
        }
        let first = &self.instances[0].ins;
        config += &source(
            "pgbouncer",
            first,
            self.topology.pgbouncer().log_path(),
            "pgbouncer",
            "pgbouncer",
        );
        config += &source(
            "pgbackrest",
            first,
            &self.topology.pgbackrest().log_path().join("*.log"),
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

    /// pgbackrest_exporter's arguments for the sandbox's pgBackRest repository: its config and,
    /// when the sandbox runs as root, `--backrest.user` so that pgbackrest runs as the
    /// repository's owner (`postgres`).
    fn pgbackrest_args(&self) -> Vec<String> {
        let mut args = vec![format!(
            "--backrest.config={}",
            self.topology.pgbackrest().config_path().display()
        )];
        if let Ok(user) = test_harness::privileges::service_user()
            && user.switch_user
        {
            args.push(format!("--backrest.user={}", user.name));
        }
        args
    }

    /// Every agent to attach, with its arguments: a pg_exporter per instance, then the others.
    fn agents(&self, ports: &mut impl FnMut() -> Result<u16>) -> Result<Vec<AttachedAgent>> {
        let mut agents = Vec::new();
        for instance in &self.instances {
            let port = ports()?;
            agents.push(AttachedAgent {
                job: instance.exporter_job.clone(),
                binary: "pg_exporter",
                env_var: "PGSUITE_PG_EXPORTER_BIN",
                port,
                ins: Some(instance.ins.clone()),
                args: [
                    format!("--url={}", instance.exporter_url),
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    "--connect-timeout=1000".into(),
                ]
                .into_iter()
                .chain(self.label(&instance.ins))
                .collect(),
            });
        }
        let first = &self.instances[0].ins;
        let port = ports()?;
        agents.push(AttachedAgent {
            job: "pgbouncer_exporter".into(),
            binary: "pgbouncer_exporter",
            env_var: "PGSUITE_PGBOUNCER_EXPORTER_BIN",
            port,
            ins: Some(first.clone()),
            args: [
                format!("--url={}", self.pgbouncer_url()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--connect-timeout=1000".into(),
            ]
            .into_iter()
            .chain(self.label(first))
            .collect(),
        });
        let port = ports()?;
        let mut args = self.pgbackrest_args();
        args.extend([
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--collect.interval=60".into(),
        ]);
        agents.push(AttachedAgent {
            job: "pgbackrest_exporter".into(),
            binary: "pgbackrest_exporter",
            env_var: "PGSUITE_PGBACKREST_EXPORTER_BIN",
            port,
            ins: Some(first.clone()),
            args,
        });
        let port = ports()?;
        agents.push(AttachedAgent {
            job: "log_shipper".into(),
            binary: "log_shipper",
            env_var: "PGSUITE_LOG_SHIPPER_BIN",
            port,
            ins: None,
            args: vec![
                format!("--config={}", self.log_shipper_config()?.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ],
        });
        Ok(agents)
    }

    /// Patroni's own `/metrics` of every member, scraped beside the agents.
    fn patroni_targets(&self) -> Vec<ScrapeTarget> {
        self.instances
            .iter()
            .filter_map(|i| {
                let (_, rest) = i.patroni.as_ref()?;
                let name = i.exporter_job.trim_start_matches("pg_exporter_");
                Some(ScrapeTarget::new(&format!("patroni_{name}"), rest))
            })
            .collect()
    }
}

/// An agent of the suite started by the sandbox and scraped by VictoriaMetrics (`/metrics`).
#[derive(Debug)]
struct AttachedAgent {
    /// VictoriaMetrics job name (also names the log file).
    job: String,
    /// Binary name, found next to the sandbox binary, i.e. `target/<profile>/<binary>`.
    binary: &'static str,
    /// Environment variable that overrides the binary path.
    env_var: &'static str,
    /// Port it listens on.
    port: u16,
    /// The instance it is attached to (its `pgsql` target group), or none for a node agent.
    ins: Option<String>,
    args: Vec<String>,
}

/// A path as a double-quoted YAML scalar.
fn yaml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A started agent and its scrape target.
#[derive(Debug)]
struct RunningAgent {
    process: ManagedChild,
    target: ScrapeTarget,
    ins: Option<String>,
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
    let topology = if options.patroni {
        eprintln!(
            "sandbox: starting etcd, a two-member Patroni 3 cluster (PostgreSQL 15), HAProxy, \
             Pgbouncer, pgBackRest …"
        );
        Topology::Patroni(
            PatroniClusterBuilder::new()
                .members(2)
                .pgbackrest()
                .pgbouncer()
                .start()?,
        )
    } else {
        eprintln!("sandbox: starting PostgreSQL 15 primary + replica, Pgbouncer, pgBackRest …");
        Topology::Plain(
            ClusterBuilder::new(PgVersion::V15)
                .replica()
                .pgbouncer()
                .pgbackrest()
                .with_databases(&[("db1", 3), ("db2", 3)])
                .start()?,
        )
    };
    eprintln!("sandbox: taking a full pgBackRest backup …");
    topology.pgbackrest().backup(BackupType::Full)?;

    let logs = ServiceDir::new("pgsuite-sandbox-agents-", false)?;
    let endpoints = Endpoints {
        instances: topology.instances(),
        topology: &topology,
        agents_dir: logs.path(),
        logs: &options.logs,
        vmagent: options.vmagent,
    };
    let agents = start_agents(&endpoints, &logs)?;
    let (vm, vmagent, groups) = if options.vmagent {
        let vm = VictoriaMetrics::start(&[])?;
        let groups = endpoints.file_sd_groups(&agents);
        let vmagent = VmAgent::start(&vm.remote_write_url(), &groups)?;
        vm.set_targets(&[vmagent.self_target()])?;
        (vm, Some(vmagent), groups)
    } else {
        let mut targets: Vec<ScrapeTarget> = agents.iter().map(|a| a.target.clone()).collect();
        targets.extend(endpoints.patroni_targets());
        (VictoriaMetrics::start(&targets)?, None, Vec::new())
    };

    print_urls(&endpoints, &vm, vmagent.as_ref(), &agents);

    let mut jobs = vec![SELF_JOB.to_owned()];
    jobs.extend(vm.targets().iter().map(|t| t.job.clone()));
    let log_tail = |address: &str| {
        agents
            .iter()
            .find(|a| a.target.address == address)
            .map(|a| format!("; its log ends with:\n{}", a.process.log_tail(20)))
            .unwrap_or_default()
    };
    for job in &jobs {
        vm.wait_for_up(job, UP_TIMEOUT).with_context(|| {
            let address = vm
                .targets()
                .iter()
                .find(|t| &t.job == job)
                .map(|t| t.address.clone());
            format!(
                "VictoriaMetrics does not see job {job} up{}",
                address.map(|a| log_tail(&a)).unwrap_or_default()
            )
        })?;
    }
    for group in &groups {
        wait_for_group_up(&vm, group).with_context(|| {
            let logs: String = group.targets.iter().map(|a| log_tail(a)).collect();
            format!(
                "vmagent's samples of job {} instance {} did not reach VictoriaMetrics{logs}",
                group.job, group.name
            )
        })?;
        jobs.push(format!("{} ({})", group.job, group.name));
    }
    if !groups.is_empty() {
        check_series_through_vmagent(&vm, &endpoints)?;
    }
    if options.logs == LogDestination::File && agents.iter().any(|a| a.target.job == "log_shipper")
    {
        wait_for_shipped_logs(&endpoints)?;
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
    // Explicit order: agents first, then the scrapers, then the databases.
    drop(agents);
    drop(vmagent);
    drop(vm);
    drop(endpoints);
    drop(topology);
    drop(logs);
    Ok(())
}

/// Waits until VictoriaMetrics holds, written by vmagent, `up == 1` for every target of
/// `group` under its job and `ins` label.
fn wait_for_group_up(vm: &VictoriaMetrics, group: &FileSdGroup) -> Result<()> {
    let query = format!(
        "up{{job={},ins={}}}",
        serde_json::to_string(&group.job)?,
        serde_json::to_string(&group.name)?
    );
    vm.wait_for(
        &query,
        |r| {
            r.len() == group.targets.len()
                && r.iter().all(|s| test_harness::sample_value(s) == Some(1.0))
        },
        UP_TIMEOUT,
    )
    .map(drop)
}

/// The agents' own series arrived through vmagent with Pigsty's identity labels (`job="pgsql"`
/// and the `cls`/`ins`/`ip` of the target files), while VictoriaMetrics itself scrapes only
/// itself and vmagent.
fn check_series_through_vmagent(vm: &VictoriaMetrics, endpoints: &Endpoints<'_>) -> Result<()> {
    let own: Vec<String> = vm.targets().iter().map(|t| t.job.clone()).collect();
    anyhow::ensure!(
        own == [VMAGENT_JOB],
        "VictoriaMetrics should scrape only itself and vmagent, not {own:?}"
    );
    let cls = endpoints.topology.cls();
    let first = &endpoints.instances[0].ins;
    let mut wanted: Vec<(&str, &str)> = endpoints
        .instances
        .iter()
        .map(|i| ("pg_up", i.ins.as_str()))
        .collect();
    wanted.push(("pgbouncer_up", first));
    wanted.push(("pgbackrest_exporter_status", first));
    for (metric, ins) in wanted {
        let query = format!(
            "{metric}{{job=\"pgsql\",cls={},ins={},ip=\"127.0.0.1\"}}",
            serde_json::to_string(&cls)?,
            serde_json::to_string(ins)?
        );
        vm.wait_for(
            &query,
            |r| !r.is_empty() && r.iter().all(|s| test_harness::sample_value(s) == Some(1.0)),
            UP_TIMEOUT,
        )
        .with_context(|| format!("{query} did not arrive through vmagent"))?;
        println!("vmagent → VictoriaMetrics: {query} == 1");
    }
    Ok(())
}

/// Waits until log_shipper's file sink holds PostgreSQL records of every instance (and, on
/// Patroni, Patroni's records too).
fn wait_for_shipped_logs(endpoints: &Endpoints<'_>) -> Result<()> {
    let path = endpoints.shipped_logs_path();
    let mut wanted: Vec<(&str, &str)> = endpoints
        .instances
        .iter()
        .map(|i| ("postgres", i.ins.as_str()))
        .collect();
    wanted.extend(
        endpoints
            .instances
            .iter()
            .filter(|i| i.patroni.is_some())
            .map(|i| ("patroni", i.ins.as_str())),
    );
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        let records: Vec<serde_json::Value> = shipped
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(job, ins)| {
                !records
                    .iter()
                    .any(|r| r["job"] == *job && r["ins"] == *ins && r["message"].is_string())
            })
            .map(|(job, ins)| format!("{job} of {ins}"))
            .collect();
        if missing.is_empty() {
            let list = |job: &str| {
                wanted
                    .iter()
                    .filter(|(j, _)| *j == job)
                    .map(|(_, ins)| *ins)
                    .collect::<Vec<_>>()
                    .join(" and ")
            };
            println!(
                "log_shipper shipped PostgreSQL logs of {} to {}",
                list("postgres"),
                path.display()
            );
            if endpoints.instances.iter().any(|i| i.patroni.is_some()) {
                println!("log_shipper shipped Patroni logs of {}", list("patroni"));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "log_shipper did not ship every log to {} (missing: {missing:?})",
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
    for agent in endpoints.agents(&mut free_port)? {
        let binary = std::env::var_os(agent.env_var)
            .map_or_else(|| own_dir.join(agent.binary), PathBuf::from);
        if !binary.is_file() {
            println!(
                "sandbox: skipping {}: {} not found (build it, or set {})",
                agent.job,
                binary.display(),
                agent.env_var
            );
            continue;
        }
        let mut cmd = Command::new(&binary);
        cmd.args(&agent.args);
        let log = logs.path().join(format!("{}.log", agent.job));
        let process = ManagedChild::spawn(&agent.job, &mut cmd, &log)?;
        let target = ScrapeTarget::local(&agent.job, agent.port);
        running.push(RunningAgent {
            process,
            target,
            ins: agent.ins,
        });
    }
    Ok(running)
}

fn print_urls(
    endpoints: &Endpoints<'_>,
    vm: &VictoriaMetrics,
    vmagent: Option<&VmAgent>,
    agents: &[RunningAgent],
) {
    let topology = endpoints.topology;
    let bouncer = topology.pgbouncer();
    let backrest = topology.pgbackrest();
    let row = |k: &str, v: &str| println!("  {k:<26} {v}");

    println!("\nPostgreSQL monitoring sandbox\n");
    println!("Open:");
    row("VictoriaMetrics UI", &vm.vmui_url());
    row("VictoriaMetrics targets", &format!("{}/targets", vm.url()));
    row("victoria-metrics /metrics", &vm.self_target().url());
    if let Some(vmagent) = vmagent {
        row("vmagent targets", &format!("{}/targets", vmagent.url()));
        row(
            "vmagent file_sd targets",
            &format!("{}/{{pgsql,node}}/*.yml", vmagent.targets_dir().display()),
        );
        row("vmagent log", &vmagent.log_path().display().to_string());
    }
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
    for target in endpoints.patroni_targets() {
        row(&format!("{} /metrics", target.job), &target.url());
    }
    println!("\nConnect:");
    let psql_url;
    match topology {
        Topology::Plain(cluster) => {
            let primary = cluster.primary();
            let replica = cluster.replica();
            psql_url = primary.url("postgres");
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
            row("extra databases", "db1, db2 (tables t1..t3)");
        }
        Topology::Patroni(cluster) => {
            psql_url = bouncer.url("postgres");
            for (member, instance) in cluster.members().iter().zip(&endpoints.instances) {
                row(
                    &format!("{} ({})", member.name(), instance.ins),
                    &member.url("postgres"),
                );
                row(
                    &format!("{} Patroni REST", member.name()),
                    &member.rest_url(),
                );
            }
            let haproxy = cluster.haproxy();
            for service in [
                test_harness::patroni::PRIMARY_SERVICE,
                test_harness::patroni::REPLICA_SERVICE,
            ] {
                if let Ok(port) = haproxy.port(service) {
                    row(
                        &format!("HAProxy {service} service"),
                        &format!("127.0.0.1:{port} (by Patroni's /{service})"),
                    );
                }
            }
            row("HAProxy stats", &haproxy.stats_url());
            row("etcd", &cluster.etcd().client_url());
        }
    }
    row("pgbouncer (pooled)", &bouncer.url("postgres"));
    row("pgbouncer admin console", &bouncer.admin_url());
    row("pgbouncer stats console", &bouncer.stats_url());
    println!("\nFiles:");
    match topology {
        Topology::Plain(cluster) => {
            for (name, pg) in [
                ("primary", cluster.primary()),
                ("replica", cluster.replica()),
            ] {
                row(
                    &format!("{name} data / logs"),
                    &format!("{} / {}", pg.data_dir().display(), pg.log_dir().display()),
                );
            }
        }
        Topology::Patroni(cluster) => {
            for member in cluster.members() {
                row(
                    &format!("{} data / logs", member.name()),
                    &format!(
                        "{} / {}",
                        member.data_dir().display(),
                        member.pg_log_dir().display()
                    ),
                );
                row(
                    &format!("{} Patroni config / log", member.name()),
                    &format!(
                        "{} / {}",
                        member.config_path().display(),
                        member.patroni_log_path().display()
                    ),
                );
            }
        }
    }
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
    if let Topology::Patroni(cluster) = topology
        && let Some(member) = cluster.members().first()
    {
        row(
            "patronictl",
            &format!(
                "{as_postgres}patronictl -c {} list",
                member.config_path().display()
            ),
        );
    }
    row(
        "psql",
        &format!("/usr/lib/postgresql/15/bin/psql '{psql_url}'"),
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
