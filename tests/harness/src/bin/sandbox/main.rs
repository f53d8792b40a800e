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

//!
//! Code: `options` (the flags), `topology` (the plain pair or the Patroni cluster, and its
//! instances), `agents` (what each agent is pointed at, its flags and config, starting them),
//! `checks` (waiting for targets, series and shipped logs); this file runs it all and prints
//! the URLs.

mod agents;
mod checks;
mod options;
mod topology;

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use test_harness::privileges::ServiceDir;
use test_harness::victoria_metrics::SELF_JOB;
use test_harness::vmagent::VmAgent;
use test_harness::{
    BackupType, ClusterBuilder, PatroniClusterBuilder, PgVersion, ScrapeTarget, VictoriaMetrics,
};

use agents::{Endpoints, RunningAgent, start_agents};
use checks::{UP_TIMEOUT, check_series_through_vmagent, wait_for_group_up, wait_for_shipped_logs};
use options::{LogDestination, Options};
use topology::Topology;

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
