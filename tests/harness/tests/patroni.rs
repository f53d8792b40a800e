//! The Patroni fixture: a two-member Patroni 3.0 cluster on etcd 3.4 comes up streaming, goes
//! through a switchover, a hard failover (kill -9 of the leader's Patroni and postmaster) and a
//! rejoin with pg_rewind, and leaves nothing behind — neither when dropped nor when the test
//! process aborts.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_harness::patroni::{Footprint, NAMESPACE};
use test_harness::privileges::service_user;
use test_harness::{PatroniCluster, PatroniClusterBuilder, PatroniMember};

const PROBE_VAR: &str = "PGSUITE_PATRONI_PROBE";
const STREAMING: Duration = Duration::from_secs(60);

fn role_of(cluster: &PatroniCluster, member: &str) -> String {
    let list = cluster.list().unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["Member"] == member)
        .unwrap_or_else(|| panic!("{member} not in patronictl list: {list}"))["Role"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The timeline as the member's Patroni reports it (`GET /patroni`).
fn timeline(member: &PatroniMember) -> u64 {
    let status = member.status().unwrap();
    status["timeline"]
        .as_u64()
        .unwrap_or_else(|| panic!("no timeline in {status}"))
}

/// Data written on `leader` shows up on `replica`.
fn assert_replicates(leader: &PatroniMember, replica: &PatroniMember, value: u32) {
    leader
        .execute(
            "postgres",
            &format!(
                "CREATE TABLE IF NOT EXISTS marks (v int); INSERT INTO marks VALUES ({value});"
            ),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = replica.query(
            "postgres",
            &format!("SELECT count(*) FROM marks WHERE v = {value}"),
        );
        if seen.as_deref().ok() == Some("1") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{value} written on {} never reached {}: {seen:?}",
            leader.name(),
            replica.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn patroni_cluster_switches_over_fails_over_rejoins_and_leaves_nothing() {
    let started = Instant::now();
    let cluster = PatroniClusterBuilder::new().members(2).start().unwrap();
    println!("bring-up: {:?}", started.elapsed());
    let pg1 = cluster.member("pg1").unwrap();
    let pg2 = cluster.member("pg2").unwrap();

    // Bring-up: pg1 bootstrapped and leads, pg2 streams; both REST APIs and patronictl agree.
    assert_eq!(cluster.leader().unwrap().name(), "pg1");
    assert_eq!(cluster.replica().unwrap().name(), "pg2");
    assert_eq!(pg1.rest_status("/replica"), Some(503));
    assert_eq!(pg2.rest_status("/primary"), Some(503));
    assert_eq!(
        pg1.query("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(
        pg2.query("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    assert_eq!(role_of(&cluster, "pg1"), "Leader");
    assert_eq!(role_of(&cluster, "pg2"), "Replica");
    assert_eq!(
        pg1.query("postgres", "SHOW cluster_name").unwrap(),
        cluster.scope()
    );
    let keys = cluster.etcd().keys(NAMESPACE).unwrap();
    let leader_key = format!("{NAMESPACE}{}/leader", cluster.scope());
    assert!(keys.contains(&leader_key), "etcd keys: {keys:?}");
    assert_eq!(
        cluster.etcd().get(&leader_key).unwrap().as_deref(),
        Some("pg1")
    );
    assert_replicates(pg1, pg2, 1);
    // Each member has its own socket directory, and the roles exist.
    assert_ne!(pg1.socket_dir(), pg2.socket_dir());
    assert!(
        pg1.socket_dir()
            .join(format!(".s.PGSQL.{}", pg1.port()))
            .exists()
    );
    assert_eq!(
        cluster
            .query_port(
                pg2.port(),
                "postgres",
                "SELECT pg_has_role('exporter_pw', 'pg_monitor', 'member')"
            )
            .unwrap(),
        "t",
        "TCP with the superuser password, and the monitoring role replicated"
    );
    // Logs: Patroni's own file, PostgreSQL's csvlog, per member.
    for m in [pg1, pg2] {
        let log = std::fs::read_to_string(m.patroni_log_path()).unwrap();
        assert!(log.contains(" INFO: "), "{}: {log}", m.name());
        let csv: Vec<PathBuf> = std::fs::read_dir(m.pg_log_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        assert!(!csv.is_empty(), "no csvlog in {}", m.pg_log_dir().display());
    }
    assert!(
        std::fs::read_to_string(pg1.patroni_log_path())
            .unwrap()
            .contains("promoted self to leader by acquiring session lock")
            || std::fs::read_to_string(pg1.patroni_log_path())
                .unwrap()
                .contains("initialized a new cluster"),
        "pg1's log tells it bootstrapped"
    );

    // Switchover pg1 -> pg2.
    let switch = cluster.switchover(pg2).unwrap();
    println!(
        "switchover: pg2 /primary after {:?}, writable after {:?}",
        switch.primary_after, switch.writable_after
    );
    assert_eq!((switch.old.name(), switch.new.name()), ("pg1", "pg2"));
    assert!(
        switch.writable_after < Duration::from_secs(20),
        "{switch:?}"
    );
    cluster.wait_streaming(pg1, STREAMING).unwrap();
    assert_eq!(cluster.leader().unwrap().name(), "pg2");
    assert_eq!(
        pg2.query("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(
        pg1.query("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    assert_eq!(timeline(pg2), 2);
    assert_replicates(pg2, pg1, 2);
    let log1 = std::fs::read_to_string(pg1.patroni_log_path()).unwrap();
    assert!(log1.contains("received switchover request"), "{log1}");

    // Hard failover: pg2's Patroni and postmaster die; pg1 takes over after the lock expires.
    let (patroni_pid, postmaster_pid) = (pg2.patroni_pid().unwrap(), pg2.postmaster_pid().unwrap());
    let failover = cluster.hard_failover().unwrap();
    println!(
        "hard failover: {} /primary after {:?}, writable after {:?}",
        failover.new.name(),
        failover.primary_after,
        failover.writable_after
    );
    assert_eq!(failover.old.name(), "pg2");
    assert_eq!(failover.new.name(), "pg1");
    assert!(
        failover.writable_after < cluster.timing().failover_timeout(),
        "{failover:?}"
    );
    for pid in [patroni_pid, postmaster_pid] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .contains("zombie"),
            "pid {pid} of pg2 still runs"
        );
    }
    assert!(!pg2.is_running());
    assert_eq!(pg2.rest_status("/health"), None, "pg2's REST API is gone");
    assert_eq!(
        pg1.query("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(timeline(pg1), 3);

    // Rejoin: pg2 comes back as a replica of pg1 (pg_rewind of the diverged timeline).
    pg1.execute("postgres", "INSERT INTO marks VALUES (3)")
        .unwrap();
    let took = cluster.rejoin(pg2).unwrap();
    println!("rejoin of pg2: streaming after {took:?}");
    assert_eq!(cluster.leader().unwrap().name(), "pg1");
    assert_eq!(role_of(&cluster, "pg2"), "Replica");
    assert_replicates(pg1, pg2, 4);
    // The killed leader had WAL the new one never got (at least its crash recovery's
    // checkpoint), so Patroni rewound it.
    let log2 = std::fs::read_to_string(pg2.patroni_log_path()).unwrap();
    assert!(
        log2.contains("running pg_rewind from pg1") && log2.contains("pg_rewind exit code=0"),
        "pg2 was rewound: {log2}"
    );
    assert_eq!(
        pg2.query("postgres", "SELECT count(*) FROM marks WHERE v = 3")
            .unwrap(),
        "1"
    );

    // Teardown: every process and directory of the lab is gone.
    let footprint = cluster.footprint();
    let running = footprint.processes();
    assert!(
        running.iter().any(|(_, c)| c.contains("/usr/bin/patroni"))
            && running.iter().any(|(_, c)| c.contains("etcd"))
            && running.iter().any(|(_, c)| c.starts_with("postgres: ")),
        "the footprint finds the running lab: {running:?}"
    );
    let stopping = Instant::now();
    drop(cluster);
    println!("teardown: {:?}", stopping.elapsed());
    assert_eq!(footprint.processes(), Vec::<(u32, String)>::new());
    assert_eq!(footprint.leftover_dirs(), Vec::<PathBuf>::new());
    // The same seen by pgrep: no process of the service user names the lab.
    for pattern in [
        footprint.dirs[0].display().to_string(),
        format!("postgres: {}: ", footprint.scope),
    ] {
        let out = Command::new("pgrep")
            .args(["-a", "-u", &service_user().unwrap().name, "-f", &pattern])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "pgrep -f {pattern}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    println!("whole test: {:?}", started.elapsed());
}

/// The child side of [`an_aborted_test_process_leaves_no_patroni_cluster_behind`]: starts a
/// cluster, prints its footprint and aborts. Does nothing in a normal run.
#[test]
fn patroni_probe_child() {
    if std::env::var_os(PROBE_VAR).is_none() {
        return;
    }
    let cluster = PatroniClusterBuilder::new().members(2).start().unwrap();
    let f = cluster.footprint();
    println!(
        "PROBE scope={} dirs={}",
        f.scope,
        f.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join("|")
    );
    std::process::abort();
}

#[test]
fn an_aborted_test_process_leaves_no_patroni_cluster_behind() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "patroni_probe_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_VAR, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("PROBE ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(180)) else {
        let _ = child.kill();
        panic!("the probe child printed no PROBE line ({:?})", child.wait());
    };
    let status = child.wait().unwrap();
    assert!(!status.success(), "the probe child aborted: {status}");
    let (scope, dirs) = line.split_once(" dirs=").unwrap();
    let footprint = Footprint {
        scope: scope.trim_start_matches("scope=").to_owned(),
        dirs: dirs.split('|').map(PathBuf::from).collect(),
    };
    assert!(footprint.dirs.len() == 2 && footprint.scope.starts_with("pgsuite-"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !footprint.is_gone() {
        assert!(
            Instant::now() < deadline,
            "left behind after the abort: processes {:?}, directories {:?}",
            footprint.processes(),
            footprint.leftover_dirs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
