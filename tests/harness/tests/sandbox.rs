//! The sandbox as a user runs it: it comes up, VictoriaMetrics sees `up == 1` for every
//! attached target, log_shipper ships both instances' PostgreSQL logs, and Ctrl-C (SIGINT) leaves no process and no temporary directory behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn sandbox_comes_up_and_ctrl_c_leaves_nothing_behind() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
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
            break;
        }
    }
    let text = output.join("\n");
    // Every attached agent that was built is among the targets VictoriaMetrics saw up.
    let up_line = output.last().unwrap();
    for agent in [
        "pg_exporter_primary",
        "pg_exporter_replica",
        "pgbouncer_exporter",
        "pgbackrest_exporter",
        "log_shipper",
    ] {
        if text.contains(&format!("{agent} /metrics")) {
            assert!(up_line.contains(agent), "{agent} not up: {up_line}");
        }
    }
    // log_shipper ships both instances' PostgreSQL logs to its file sink.
    if text.contains("log_shipper /metrics") {
        assert!(
            text.contains("log_shipper shipped PostgreSQL logs of pg-sandbox-1 and pg-sandbox-2"),
            "log_shipper shipped nothing:\n{text}"
        );
    }
    // Temporary directories and ports the sandbox announced.
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "sandbox exit status {exit:?}");

    for d in &dirs {
        assert!(!std::path::Path::new(d).exists(), "{d} left behind");
    }
    // No process still refers to any of those directories (postmasters, Pgbouncer, agents).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers = processes_mentioning(&dirs);
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
