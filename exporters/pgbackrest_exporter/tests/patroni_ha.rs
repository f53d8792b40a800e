//! pgbackrest_exporter on a real Patroni cluster (Patroni 3.0, etcd 3.4, PostgreSQL 15) whose
//! members archive WAL into one pgBackRest repository, through a switchover and a hard failover
//! (kill -9 of the leader's Patroni and postmaster).
//!
//! The cluster comes from `PatroniClusterBuilder::pgbackrest`: one `archive_command` for every
//! member (a DCS parameter) and a stanza listing every member, so neither PostgreSQL nor
//! pgBackRest is reconfigured on a role change. The exporter collects every 2 s, as the
//! repository's owner. After each role change the test writes and switches WAL on the new
//! leader and asserts:
//!
//! - the new leader archives (`pg_stat_archiver.last_archived_wal` reaches the switched
//!   segment, which is on the new timeline) and its `archive_command` has not failed since
//!   the change;
//! - the exporter shows it: `pgbackrest_wal_archive_status` stays 1 and its `wal_max` label
//!   (`--backrest.verbose-wal`) reaches that segment on the new timeline, and
//!   `pgbackrest_wal_last_archived_timestamp_seconds` is not older than the role change;
//! - a backup taken then (`pgbackrest backup`, which finds the leader among the stanza's
//!   members itself) is of the new leader — its WAL starts on the new timeline — and shows up
//!   in the exporter's `pgbackrest_backup_info` with that `wal_start`;
//! - every collection succeeds (`pgbackrest_exporter_status 1`), also while the lost member
//!   is down.
//!
//! It prints the seconds from each role change to the segment being archived, to the exporter
//! showing it, and to the backup showing up.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use test_harness::privileges::service_user;
use test_harness::{BackupType, PatroniClusterBuilder, PatroniMember};

mod support;
use test_harness::Agent;
use test_harness::agent::{samples, value};

const COLLECT_INTERVAL_S: u64 = 2;
const ARCHIVE_WAIT: Duration = Duration::from_secs(60);
const EXPORTER_WAIT: Duration = Duration::from_secs(30);

/// Scrapes every 100 ms until `cond` holds for a scrape, and returns that scrape.
fn wait_metrics(exporter: &Agent, what: &str, mut cond: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + EXPORTER_WAIT;
    loop {
        let text = exporter.metrics();
        if cond(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {EXPORTER_WAIT:?} waiting for {what}; last scrape:\n{}\nlog:\n{}",
            text.lines()
                .filter(|l| l.starts_with("pgbackrest_wal") || l.contains("status"))
                .collect::<Vec<_>>()
                .join("\n"),
            exporter.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of label `key` in a sample's `labels`.
fn label<'l>(labels: &'l str, key: &str) -> Option<&'l str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// `wal_max` of `pgbackrest_wal_archive_status` (with `--backrest.verbose-wal`), if archiving
/// reported a range.
fn wal_max(text: &str) -> Option<String> {
    let (labels, _) = *samples(text, "pgbackrest_wal_archive_status").first()?;
    label(labels, "wal_max")
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}

/// The labels of every `pgbackrest_backup_info` sample.
fn backups(text: &str) -> Vec<&str> {
    samples(text, "pgbackrest_backup_info")
        .into_iter()
        .map(|(labels, _)| labels)
        .collect()
}

fn epoch_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Writes on `leader`, switches WAL there and waits until PostgreSQL reports that segment
/// archived, with no failed `archive_command` since `epoch0`; returns the segment.
fn switch_and_archive(leader: &PatroniMember, value: u32, epoch0: f64) -> String {
    leader
        .execute(
            "postgres",
            &format!(
                "CREATE TABLE IF NOT EXISTS ha_marks (v int); INSERT INTO ha_marks VALUES ({value})"
            ),
        )
        .unwrap();
    let segment = leader
        .query("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .unwrap();
    let deadline = Instant::now() + ARCHIVE_WAIT;
    loop {
        let archiver = leader
            .query(
                "postgres",
                "SELECT coalesce(last_archived_wal, ''), failed_count, \
                 coalesce(last_failed_wal, ''), \
                 coalesce(extract(epoch FROM last_failed_time), 0) FROM pg_stat_archiver",
            )
            .unwrap();
        let fields: Vec<&str> = archiver.split('|').collect();
        let last = fields[0];
        if last.len() == 24 && last >= segment.as_str() {
            let failed_at: f64 = fields[3].parse().unwrap();
            assert!(
                failed_at < epoch0,
                "{}: archive_command failed after the role change: {archiver}{}",
                leader.name(),
                leader.log_tails()
            );
            return segment;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {segment} not archived within {ARCHIVE_WAIT:?}; pg_stat_archiver: {archiver}{}",
            leader.name(),
            leader.log_tails()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One role change to check: what it was, the new leader, the archive max before, and when it
/// started (monotonic and Unix time).
struct Change<'a> {
    what: &'a str,
    new: &'a PatroniMember,
    before_max: &'a str,
    t0: Instant,
    epoch0: f64,
}

/// After `change`: archiving resumes from the new leader, the exporter shows it, a backup of
/// kind `kind` is taken from it and shows up; `n_backups` backups are expected afterwards.
/// Returns the archive max the exporter showed.
fn archiving_and_backup_follow(
    change: &Change<'_>,
    exporter: &Agent,
    cluster: &test_harness::PatroniCluster,
    kind: BackupType,
    n_backups: usize,
) -> String {
    let Change {
        what,
        new,
        before_max,
        t0,
        epoch0,
    } = *change;
    let stanza = [("stanza", "main")];
    let segment = switch_and_archive(new, n_backups as u32, epoch0);
    let archived_after = t0.elapsed();
    let timeline = &segment[..8];
    assert!(
        timeline > &before_max[..8],
        "{what}: {segment} is on a new timeline (archive max before: {before_max})"
    );

    // The exporter's next collection shows it.
    let text = wait_metrics(exporter, &format!("wal_max ≥ {segment}"), |t| {
        wal_max(t).is_some_and(|m| m >= segment)
    });
    let shown_after = t0.elapsed();
    let max = wal_max(&text).unwrap();
    assert_eq!(
        &max[..8],
        timeline,
        "{what}: archive max {max} on the new timeline"
    );
    assert_eq!(
        value(&text, "pgbackrest_wal_archive_status", &stanza),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "pgbackrest_exporter_status",
            &[("stanza", "all-stanzas")]
        ),
        Some(1.0),
        "{}",
        exporter.logs()
    );
    let archived_ts = value(
        &text,
        "pgbackrest_wal_last_archived_timestamp_seconds",
        &stanza,
    )
    .unwrap();
    assert!(
        archived_ts >= epoch0.floor() - 1.0,
        "{what}: newest archived segment written at {archived_ts}, the role change was at {epoch0}"
    );

    // A backup now is a backup of the new leader.
    let backup_started = Instant::now();
    let br = cluster.pgbackrest();
    br.backup(kind).unwrap();
    let backup_took = backup_started.elapsed();
    let text = wait_metrics(exporter, &format!("{n_backups} backups"), |t| {
        backups(t).len() == n_backups
    });
    let backup_shown_after = t0.elapsed();
    let newest = backups(&text)
        .into_iter()
        .filter(|l| label(l, "backup_type") == Some(kind.as_str()))
        .max_by_key(|l| label(l, "backup_name").unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("{what}: no {} backup in\n{text}", kind.as_str()));
    let wal_start = label(newest, "wal_start").unwrap();
    assert_eq!(
        &wal_start[..8],
        timeline,
        "{what}: the backup's WAL starts on the new leader's timeline: {newest}"
    );
    assert!(wal_start >= segment.as_str(), "{newest}");
    let info = br.info_json().unwrap();
    let last = info[0]["backup"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["label"], label(newest, "backup_name").unwrap());
    assert_eq!(last["archive"]["start"], wal_start);
    assert_eq!(
        new.query("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "f"
    );

    println!("--- {what}: new leader {} ---", new.name());
    println!(
        "archiving: {segment} archived by {} {:.2} s after the role change; exporter showed \
         wal_max {max} after {:.2} s (collection every {COLLECT_INTERVAL_S} s)",
        new.name(),
        archived_after.as_secs_f64(),
        shown_after.as_secs_f64(),
    );
    println!(
        "backup: {} backup {} (wal_start {wal_start}) took {:.2} s; in the exporter {:.2} s \
         after the role change",
        kind.as_str(),
        label(newest, "backup_name").unwrap(),
        backup_took.as_secs_f64(),
        backup_shown_after.as_secs_f64(),
    );
    max
}

#[test]
fn archiving_and_backups_follow_the_leader_in_pgbackrest_exporter() {
    let started = Instant::now();
    let cluster = PatroniClusterBuilder::new()
        .members(2)
        .pgbackrest()
        .start()
        .unwrap();
    let pg1 = cluster.member("pg1").unwrap();
    let pg2 = cluster.member("pg2").unwrap();
    let br = cluster.pgbackrest();
    println!("bring-up with the stanza created: {:?}", started.elapsed());
    // The same archive_command on every member, from the DCS.
    for m in [pg1, pg2] {
        let cmd = m.query("postgres", "SHOW archive_command").unwrap();
        assert!(
            cmd.contains("archive-push") && cmd.contains(&br.config_path().display().to_string()),
            "{}: {cmd}",
            m.name()
        );
        assert_eq!(m.query("postgres", "SHOW archive_mode").unwrap(), "on");
    }

    let user = service_user().unwrap();
    let mut args = vec![
        format!("--backrest.config={}", br.config_path().display()),
        format!("--collect.interval={COLLECT_INTERVAL_S}"),
        "--collect.timeout=30".into(),
        "--backrest.verbose-wal".into(),
    ];
    if user.switch_user {
        args.push(format!("--backrest.user={}", user.name));
    }
    let exporter = support::start(&args, EXPORTER_WAIT);

    // Steady state: the stanza's `check` archived a segment of timeline 1; no backup yet.
    let text = wait_metrics(&exporter, "a wal_max on timeline 1", |t| {
        wal_max(t).is_some_and(|m| m.starts_with("00000001"))
    });
    assert_eq!(
        value(&text, "pgbackrest_stanza_status", &[("stanza", "main")]),
        Some(2.0),
        "no valid backups yet"
    );
    assert!(backups(&text).is_empty());
    let max0 = wal_max(&text).unwrap();

    // Switchover pg1 -> pg2, then a full backup of pg2.
    let (t0, epoch0) = (Instant::now(), epoch_s());
    let switch = cluster.switchover(pg2).unwrap();
    println!(
        "switchover: pg2 /primary after {:?}, writable after {:?}",
        switch.primary_after, switch.writable_after
    );
    let change = Change {
        what: "switchover",
        new: pg2,
        before_max: &max0,
        t0,
        epoch0,
    };
    let max1 = archiving_and_backup_follow(&change, &exporter, &cluster, BackupType::Full, 1);
    assert_eq!(
        value(
            &exporter.metrics(),
            "pgbackrest_stanza_status",
            &[("stanza", "main")]
        ),
        Some(0.0)
    );
    cluster
        .wait_streaming(pg1, Duration::from_secs(60))
        .unwrap();

    // Hard failover: pg2 is lost; pg1 takes over. An incremental backup on top of pg2's full.
    let (t0, epoch0) = (Instant::now(), epoch_s());
    let failover = cluster.hard_failover().unwrap();
    assert_eq!(failover.new.name(), "pg1");
    println!(
        "hard failover: pg1 /primary after {:?}, writable after {:?}",
        failover.primary_after, failover.writable_after
    );
    let change = Change {
        what: "hard failover",
        new: pg1,
        before_max: &max1,
        t0,
        epoch0,
    };
    archiving_and_backup_follow(&change, &exporter, &cluster, BackupType::Incr, 2);
    let text = exporter.metrics();
    let incr = backups(&text)
        .into_iter()
        .find(|l| label(l, "backup_type") == Some("incr"))
        .unwrap();
    let full = backups(&text)
        .into_iter()
        .find(|l| label(l, "backup_type") == Some("full"))
        .unwrap();
    assert_eq!(label(incr, "prior"), label(full, "backup_name"), "{incr}");

    let log = exporter.logs();
    assert!(
        !log.contains("pgBackRest collection failed"),
        "every collection succeeded:\n{log}"
    );
    assert!(exporter.is_running());

    // Teardown: the repository goes with the cluster's directory.
    let footprint = cluster.footprint();
    assert!(br.repo_path().starts_with(&footprint.dirs[0]));
    drop(exporter);
    drop(cluster);
    assert_eq!(footprint.processes(), Vec::<(u32, String)>::new());
    assert_eq!(footprint.leftover_dirs(), Vec::<std::path::PathBuf>::new());
    println!("whole test: {:?}", started.elapsed());
}
