//! The reaper cleans up after a test process that dies without running destructors.
//!
//! Each test re-runs this test binary as a child (filtered to `reaper_probe_child`, with
//! `PGSUITE_REAPER_PROBE=<mode>`), which starts PostgreSQL and Pgbouncer, prints their PIDs and
//! directories, and then dies: `abort()`, `SIGKILL` from the parent, or `exit(0)` with the
//! services leaked. Afterwards every one of those processes must be gone and every directory
//! removed.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_harness::{PgVersion, Pgbouncer, PostgresBuilder, reaper};

const MODE_VAR: &str = "PGSUITE_REAPER_PROBE";

/// The child side. Without `PGSUITE_REAPER_PROBE` (a normal run) it does nothing.
#[test]
fn reaper_probe_child() {
    let Ok(mode) = std::env::var(MODE_VAR) else {
        return;
    };
    let pg = PostgresBuilder::new(PgVersion::V15)
        .name("probe")
        .start()
        .unwrap();
    let bouncer = Pgbouncer::start(&pg).unwrap();
    println!(
        "PROBE pids={},{},{} dirs={}|{}",
        pg.postmaster_pid().unwrap(),
        bouncer.pid().unwrap(),
        reaper::reaper_pid().unwrap(),
        pg.dir().display(),
        bouncer.ini_path().parent().unwrap().display(),
    );
    match mode.as_str() {
        "abort" => std::process::abort(),
        "exit" => {
            // As with a static: nothing is dropped.
            std::mem::forget(bouncer);
            std::mem::forget(pg);
            std::process::exit(0);
        }
        "sigkill" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        other => panic!("unknown {MODE_VAR} mode {other}"),
    }
}

struct Probe {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

fn run_probe(mode: &str) -> Probe {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "reaper_probe_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_VAR, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            // libtest prints `test reaper_probe_child ... ` on the same line first.
            if let Some((_, rest)) = line.split_once("PROBE ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(90)) else {
        let _ = child.kill();
        let status = child.wait();
        panic!("the probe child ({mode}) printed no PROBE line ({status:?})");
    };
    if mode == "sigkill" {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success() || mode == "exit",
        "{mode}: child status {status}"
    );

    let (pids, dirs) = line.split_once(" dirs=").unwrap();
    let pids = pids
        .trim_start_matches("pids=")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    let dirs = dirs.split('|').map(PathBuf::from).collect();
    Probe { pids, dirs }
}

fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

fn assert_cleaned_up(mode: &str, probe: &Probe) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: Vec<u32> = probe
            .pids
            .iter()
            .copied()
            .filter(|p| is_alive(*p))
            .collect();
        let left: Vec<&Path> = probe
            .dirs
            .iter()
            .map(PathBuf::as_path)
            .filter(|d| d.exists())
            .collect();
        if alive.is_empty() && left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: still alive {alive:?}, still present {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reaper_cleans_up_after_abort() {
    let probe = run_probe("abort");
    assert_cleaned_up("abort", &probe);
}

#[test]
fn reaper_cleans_up_after_sigkill() {
    let probe = run_probe("sigkill");
    assert_cleaned_up("sigkill", &probe);
}

#[test]
fn reaper_cleans_up_after_exit_with_leaked_services() {
    let probe = run_probe("exit");
    assert_cleaned_up("exit", &probe);
}
