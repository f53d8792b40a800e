//! The sandbox as a user runs it, plain, with `--patroni` and with `--vmagent`: it comes up, VictoriaMetrics sees
//! `up == 1` for every attached target, log_shipper ships every instance's logs, and Ctrl-C
//! (SIGINT) or the end of `--check` leaves no process and no temporary directory behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Reads the sandbox's stdout until every target is up; returns the lines so far.
fn read_until_up(child: &mut Child) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!(
                    "sandbox not up in time; output so far:\n{}",
                    output.join("\n")
                )
            });
        let done = line.contains("VictoriaMetrics sees up == 1 for every target");
        output.push(line);
        if done {
            return output;
        }
    }
}

/// Every agent the sandbox announced is among the targets VictoriaMetrics saw up.
fn assert_agents_up(output: &[String], agents: &[&str]) {
    let text = output.join("\n");
    let up_line = output.last().unwrap();
    for agent in agents {
        if text.contains(&format!("{agent} /metrics")) {
            assert!(up_line.contains(agent), "{agent} not up: {up_line}");
        }
    }
}

/// The temporary directories the sandbox announced (`/tmp/pgsuite-…`).
fn announced_dirs(text: &str) -> Vec<String> {
    let dirs: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.starts_with("/tmp/pgsuite-"))
        .map(|w| {
            let rest = &w["/tmp/".len()..];
            format!("/tmp/{}", rest.split('/').next().unwrap())
        })
        .collect();
    assert!(
        !dirs.is_empty(),
        "no temporary directories announced:\n{text}"
    );
    dirs
}

/// Waits for the sandbox to exit successfully, then checks that none of `dirs` and no process
/// mentioning them is left.
fn assert_stops_cleanly(child: &mut Child, dirs: &[String], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sandbox did not stop in time");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "sandbox exit status {exit:?}");
    for d in dirs {
        assert!(!std::path::Path::new(d).exists(), "{d} left behind");
    }
    // No process still refers to any of those directories (postmasters, Pgbouncer, agents).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers = processes_mentioning(dirs);
        if leftovers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind: {leftovers:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sandbox_comes_up_and_ctrl_c_leaves_nothing_behind() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = read_until_up(&mut child);
    let text = output.join("\n");
    assert_agents_up(
        &output,
        &[
            "pg_exporter_primary",
            "pg_exporter_replica",
            "pgbouncer_exporter",
            "pgbackrest_exporter",
            "log_shipper",
        ],
    );
    // log_shipper ships both instances' PostgreSQL logs to its file sink.
    if text.contains("log_shipper /metrics") {
        assert!(
            text.contains("log_shipper shipped PostgreSQL logs of pg-sandbox-1 and pg-sandbox-2"),
            "log_shipper shipped nothing:\n{text}"
        );
    }
    let dirs = announced_dirs(&text);
    for d in &dirs {
        assert!(
            std::path::Path::new(d).exists(),
            "{d} should exist while running"
        );
    }

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_stops_cleanly(&mut child, &dirs, Duration::from_secs(60));
}

/// `--patroni --check`: the Patroni cluster comes up with a pg_exporter per member, Pgbouncer
/// (through HAProxy) and pgBackRest agents, log_shipper shipping PostgreSQL's and Patroni's
/// logs, and VictoriaMetrics scraping Patroni's own `/metrics` too; then everything stops.
#[test]
fn sandbox_runs_a_patroni_cluster_with_every_agent() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .args(["--patroni", "--check"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = read_until_up(&mut child);
    let text = output.join("\n");
    let up_line = output.last().unwrap();
    // Patroni's own endpoints are scraped whatever agents were built.
    for job in ["patroni_pg1", "patroni_pg2"] {
        assert!(up_line.contains(job), "{job} not up: {up_line}");
    }
    assert_agents_up(
        &output,
        &[
            "pg_exporter_pg1",
            "pg_exporter_pg2",
            "pgbouncer_exporter",
            "pgbackrest_exporter",
            "log_shipper",
        ],
    );
    if text.contains("log_shipper /metrics") {
        assert!(
            text.contains("log_shipper shipped Patroni logs of"),
            "log_shipper shipped no Patroni log:\n{text}"
        );
    }
    assert!(text.contains("HAProxy primary service"), "{text}");
    let dirs = announced_dirs(&text);
    assert_stops_cleanly(&mut child, &dirs, Duration::from_secs(90));
}

/// Live (non-zombie) processes whose command line mentions one of `dirs`.
fn processes_mentioning(dirs: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(path.join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && dirs.iter().any(|d| cmdline.contains(d.as_str())) {
            found.push(cmdline);
        }
    }
    found
}

/// `--vmagent --check`: vmagent scrapes every agent from Pigsty-style `file_sd` files and
/// remote-writes to VictoriaMetrics, where the agents' series arrive with the files' identity
/// labels (`job="pgsql"`, `cls`, `ins`, `ip`); then everything stops.
#[test]
fn sandbox_with_vmagent_delivers_through_remote_write() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .args(["--vmagent", "--check"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = read_until_up(&mut child);
    let text = output.join("\n");
    let up_line = output.last().unwrap();
    for job in [
        "vmagent",
        "pgsql (pg-sandbox-1)",
        "pgsql (pg-sandbox-2)",
        "node (pg-sandbox-node)",
    ] {
        assert!(up_line.contains(job), "{job} not up: {up_line}");
    }
    for ins in ["pg-sandbox-1", "pg-sandbox-2"] {
        let line = format!(
            "vmagent → VictoriaMetrics: pg_up{{job=\"pgsql\",cls=\"pg-sandbox\",ins=\"{ins}\",ip=\"127.0.0.1\"}} == 1"
        );
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("vmagent file_sd targets"), "{text}");
    let dirs = announced_dirs(&text);
    assert_stops_cleanly(&mut child, &dirs, Duration::from_secs(60));
}
