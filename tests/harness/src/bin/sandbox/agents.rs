//! The suite's agents as the sandbox attaches them: what each is pointed at, its flags and
//! log_shipper's config, and starting them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use test_harness::privileges::ServiceDir;
use test_harness::vmagent::FileSdGroup;
use test_harness::{ManagedChild, ScrapeTarget, free_port};

use crate::options::LogDestination;
use crate::topology::{Instance, Topology};

/// What an attached agent can be pointed at.
pub(crate) struct Endpoints<'a> {
    pub(crate) topology: &'a Topology,
    pub(crate) instances: Vec<Instance>,
    /// Where agents' logs, configs and state go.
    pub(crate) agents_dir: &'a Path,
    pub(crate) logs: &'a LogDestination,
    /// Identity labels come from vmagent's target files, not from `--label`.
    pub(crate) vmagent: bool,
}

impl Endpoints<'_> {
    /// Pgbouncer's admin console over its unix socket, as the stats-only user (Pigsty's usual
    /// form: `postgres://user@:6432/pgbouncer?host=<socket dir>`).
    pub(crate) fn pgbouncer_url(&self) -> String {
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
    pub(crate) fn label(&self, ins: &str) -> Option<String> {
        (!self.vmagent).then(|| format!("--label=cls={},ins={ins}", self.topology.cls()))
    }

    /// The `file_sd` groups vmagent scrapes, as Pigsty writes them: job `pgsql` per instance
    /// (labels `{cls, ins, ip}`; its pg_exporter and Patroni, and on the first instance
    /// Pgbouncer's and pgBackRest's exporters), job `node` for log_shipper.
    pub(crate) fn file_sd_groups(&self, agents: &[RunningAgent]) -> Vec<FileSdGroup> {
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
    pub(crate) fn log_shipper_config(&self) -> Result<PathBuf> {
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
    pub(crate) fn shipped_logs_path(&self) -> PathBuf {
        self.agents_dir.join("shipped-logs.jsonl")
    }

    /// pgbackrest_exporter's arguments for the sandbox's pgBackRest repository: its config and,
    /// when the sandbox runs as root, `--backrest.user` so that pgbackrest runs as the
    /// repository's owner (`postgres`).
    pub(crate) fn pgbackrest_args(&self) -> Vec<String> {
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
    pub(crate) fn agents(
        &self,
        ports: &mut impl FnMut() -> Result<u16>,
    ) -> Result<Vec<AttachedAgent>> {
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
    pub(crate) fn patroni_targets(&self) -> Vec<ScrapeTarget> {
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
pub(crate) struct AttachedAgent {
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
pub(crate) struct RunningAgent {
    pub(crate) process: ManagedChild,
    pub(crate) target: ScrapeTarget,
    pub(crate) ins: Option<String>,
}

/// Starts every agent whose binary is found.
pub(crate) fn start_agents(
    endpoints: &Endpoints<'_>,
    logs: &ServiceDir,
) -> Result<Vec<RunningAgent>> {
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
