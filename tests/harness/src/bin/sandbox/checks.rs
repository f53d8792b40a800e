//! What the sandbox waits for before it reports ready: every target up, series through
//! vmagent, logs shipped.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use test_harness::VictoriaMetrics;
use test_harness::vmagent::{FileSdGroup, VMAGENT_JOB};

use crate::agents::Endpoints;

/// How long to wait for VictoriaMetrics to see every target up.
pub(crate) const UP_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits until VictoriaMetrics holds, written by vmagent, `up == 1` for every target of
/// `group` under its job and `ins` label.
pub(crate) fn wait_for_group_up(vm: &VictoriaMetrics, group: &FileSdGroup) -> Result<()> {
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
pub(crate) fn check_series_through_vmagent(
    vm: &VictoriaMetrics,
    endpoints: &Endpoints<'_>,
) -> Result<()> {
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
pub(crate) fn wait_for_shipped_logs(endpoints: &Endpoints<'_>) -> Result<()> {
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
