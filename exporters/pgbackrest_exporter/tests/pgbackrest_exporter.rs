//! The pgbackrest_exporter binary as users run it.
//!
//! - Against a fake `pgbackrest` (a shell script switched between behaviours): every bad input
//!   keeps it serving, sets `pgbackrest_exporter_status` to 0, logs one line naming the cause
//!   and keeps the last good values with their age; scrapes stay fast while pgbackrest hangs.
//! - Against the harness (PostgreSQL 15 + pgBackRest, as `postgres`): real full, diff and incr
//!   backups show up within one collection, ages grow without new backups, and WAL archiving
//!   and a new backup still work after the exporter ran (it runs pgbackrest as the
//!   repository's owner: `--backrest.user=postgres` when the tests run as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use test_harness::privileges::service_user;
use test_harness::{BackupType, ClusterBuilder, PgVersion};

mod support;
use test_harness::Agent;
use test_harness::agent::value;

const FAKE: &str = r#"#!/bin/sh
DIR="$(dirname "$0")"
echo "$*" >> "$DIR/calls"
case " $* " in
  *" version "*) echo "pgBackRest 2.45"; exit 0 ;;
esac
case "$(cat "$DIR/mode")" in
  ok) cat "$DIR/info.json" ;;
  fail) echo "ERROR: [055]: unable to open missing file '/etc/pgbackrest/missing.conf' for read" >&2; exit 55 ;;
  hang) sleep 1000 & wait ;;
  garbage) echo 'garbage {' ;;
esac
"#;

/// Every wait of these tests (a collection, the listener) is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

fn collections(exp: &Agent) -> f64 {
    exp.scrape()
        .and_then(|t| value(&t, "pgbackrest_exporter_collections_total", &[]))
        .unwrap_or(0.0)
}

/// Sends SIGHUP (collect now) and waits for that collection to finish.
fn collect_now(exp: &Agent) {
    let before = collections(exp);
    exp.signal("HUP");
    exp.wait_for("a triggered collection", || collections(exp) > before);
}

fn count(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .count()
}

fn fake_pgbackrest(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("pgbackrest");
    std::fs::write(&bin, FAKE).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../collectors/pgbackrest/tests/fixtures/info-2.45-full-incr.json"),
        dir.join("info.json"),
    )
    .unwrap();
    std::fs::write(dir.join("mode"), "ok").unwrap();
    bin
}

fn failure_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("pgBackRest collection failed"))
        .collect()
}

#[test]
fn bad_inputs_keep_it_serving_with_one_log_line_each() {
    let fake = tempfile::tempdir().unwrap();
    let bin = fake_pgbackrest(fake.path());
    let mode = |m: &str| std::fs::write(fake.path().join("mode"), m).unwrap();
    let exp = support::start(
        &[
            format!("--backrest.binary={}", bin.display()),
            "--collect.interval=3600".into(),
            "--collect.timeout=1".into(),
            "--no-backrest.wal-age".into(),
        ],
        WAIT,
    );
    exp.wait_for("the collection at start", || collections(&exp) >= 1.0);
    let t = exp.metrics();
    let all = [("stanza", "all-stanzas")];
    assert_eq!(value(&t, "pgbackrest_exporter_status", &all), Some(1.0));
    assert_eq!(count(&t, "pgbackrest_backup_info"), 2);
    assert!(
        t.contains("start_time=\"2026-11-25 20:49:38\""),
        "TZ=UTC labels"
    );
    assert!(t.contains("# TYPE process_cpu_seconds_total counter"));
    let success = value(
        &t,
        "pgbackrest_exporter_last_success_timestamp_seconds",
        &all,
    )
    .unwrap();

    // Non-zero exit, twice: status 0, values kept, one log line naming the cause.
    mode("fail");
    collect_now(&exp);
    collect_now(&exp);
    let t = exp.metrics();
    assert_eq!(value(&t, "pgbackrest_exporter_status", &all), Some(0.0));
    assert_eq!(
        count(&t, "pgbackrest_backup_info"),
        2,
        "last good values are kept"
    );
    assert_eq!(
        value(
            &t,
            "pgbackrest_exporter_last_success_timestamp_seconds",
            &all
        ),
        Some(success)
    );
    let log = exp.logs();
    let lines = failure_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("level=error"), "{}", lines[0]);
    assert!(
        lines[0].contains("exit code 55") && lines[0].contains("unable to open missing file"),
        "{}",
        lines[0]
    );

    // A hang: scrapes answer at once meanwhile; the run is killed after 1 s.
    mode("hang");
    let before = collections(&exp);
    exp.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let t = exp.metrics();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a scrape waited for pgbackrest"
    );
    assert_eq!(count(&t, "pgbackrest_backup_info"), 2);
    exp.wait_for("the hung collection to end", || collections(&exp) > before);
    let t = exp.metrics();
    assert_eq!(
        value(&t, "pgbackrest_exporter_timeouts_total", &[]),
        Some(1.0)
    );
    assert_eq!(value(&t, "pgbackrest_exporter_status", &all), Some(0.0));

    // Garbage.
    mode("garbage");
    collect_now(&exp);
    let t = exp.metrics();
    assert_eq!(value(&t, "pgbackrest_exporter_status", &all), Some(0.0));
    assert_eq!(count(&t, "pgbackrest_backup_info"), 2);
    let log = exp.logs();
    let lines = failure_lines(&log);
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines[1].contains("did not finish within 1s"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("invalid JSON"), "{}", lines[2]);
    assert!(value(&t, "pgbackrest_exporter_data_age_seconds", &all).unwrap() > 1.0);

    // Recovery.
    mode("ok");
    collect_now(&exp);
    let t = exp.metrics();
    assert_eq!(value(&t, "pgbackrest_exporter_status", &all), Some(1.0));
    assert!(exp.logs().contains("pgBackRest collection recovered"));
    assert!(exp.is_running());
}

#[test]
fn missing_pgbackrest() {
    let exp = support::start(
        &[
            "--backrest.binary=/nonexistent/pgbackrest".into(),
            "--backrest.stanza-include=demo".into(),
        ],
        WAIT,
    );
    exp.wait_for("the collection at start", || collections(&exp) >= 1.0);
    let t = exp.metrics();
    assert_eq!(
        value(&t, "pgbackrest_exporter_status", &[("stanza", "demo")]),
        Some(0.0)
    );
    assert_eq!(value(&t, "pgbackrest_version_info", &[]), Some(0.0));
    let log = exp.logs();
    let lines = failure_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("stanza=demo") && lines[0].contains("/nonexistent/pgbackrest not found"),
        "{log}"
    );
}

/// pgBackRest quotes config lines and option values in its errors; the real pgbackrest is run
/// with configs whose mistakes put a password on its standard error, and neither the log nor
/// `/metrics` may show it (the log keeps the rest of the message).
#[test]
fn secrets_pgbackrest_prints_never_reach_the_log() {
    const SECRET: &str = "S3cretPw-7";
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let configs = [
        (
            "missing-equals.conf",
            format!(
                "[global]\nrepo1-path={}\nrepo1-cipher-pass {SECRET}\n",
                repo.display()
            ),
            "missing '=' in key/value at line 3: repo1-cipher-pass xxxxx",
        ),
        (
            "outside-section.conf",
            format!(
                "repo1-cipher-pass={SECRET}\n[global]\nrepo1-path={}\n",
                repo.display()
            ),
            "key/value found outside of section at line 1: repo1-cipher-pass=xxxxx",
        ),
        (
            "url-in-option.conf",
            format!(
                "[global]\nrepo1-path={}\nio-timeout=postgresql://backup:{SECRET}@127.0.0.1:5432/postgres\n",
                repo.display()
            ),
            "postgresql://backup:xxxxx@127.0.0.1:5432/postgres",
        ),
    ];
    for (name, text, masked) in configs {
        let config = dir.path().join(name);
        std::fs::write(&config, text).unwrap();
        let exp = support::start(
            &[
                format!("--backrest.config={}", config.display()),
                "--collect.interval=3600".into(),
                "--no-backrest.wal-age".into(),
            ],
            WAIT,
        );
        exp.wait_for("the collection at start", || collections(&exp) >= 1.0);
        let metrics = exp.metrics();
        let log = exp.logs();
        assert!(!log.contains(SECRET), "{name}: secret in the log:\n{log}");
        assert!(!metrics.contains(SECRET), "{name}: secret in /metrics");
        assert_eq!(failure_lines(&log).len(), 1, "{name}:\n{log}");
        assert!(
            log.replace("\\'", "'").contains(masked),
            "{name}: the masked message is missing:\n{log}"
        );
    }
}

#[test]
fn bad_flags_exit_1_and_help_exits_0() {
    let bin = env!("CARGO_BIN_EXE_pgbackrest_exporter");
    let out = Command::new(bin).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--web.config.file",
        "--web.systemd-socket",
        "--collect.interval",
        "--backrest.config",
        "--backrest.config-include-path",
        "--backrest.stanza-include",
        "--backrest.stanza-exclude",
        "--backrest.backup-type",
        "--backrest.database-count",
        "--backrest.database-parallel-processes",
        "--backrest.database-count-latest",
        "--backrest.reference-count",
        "--backrest.verbose-wal",
        "--collector.pgbackrest",
        "--log.level",
        "--log.format",
        "--version",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = Command::new(bin)
        .args(["--backrest.user=no-such-user-xyz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));

    // Enumerations and formats are refused at start, naming what is allowed (it started and
    // failed every collection before).
    for (arg, want) in [
        (
            "--backrest.backup-type=weird",
            "[possible values: full, incr, diff]",
        ),
        ("--backrest.stanza-include=a/b", "stanza name"),
        ("--collect.timeout=0", "at least 1"),
        (
            "--backrest.config=/nonexistent/pgbackrest.conf",
            "No such file",
        ),
    ] {
        let out = Command::new(bin)
            .args([arg, "--web.listen-address=127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{arg}: {stderr}");
        assert!(stderr.contains(want), "{arg}: {stderr}");
    }
}

/// Files under `dir` not owned by the repository's owner (pgbackrest run as root would leave
/// some, breaking the owner's next archive-push or backup).
fn foreign_files(dir: &Path, uid: u32) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.uid() != uid {
                out.push(path.clone());
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

#[test]
fn real_backups_are_reflected_within_one_collection() {
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .pgbackrest()
        .start()
        .unwrap();
    let br = cluster.pgbackrest();
    br.backup(BackupType::Full).unwrap();
    let user = service_user().unwrap();
    let mut args = vec![
        format!("--backrest.config={}", br.config_path().display()),
        "--collect.interval=3600".into(),
        "--collect.timeout=60".into(),
        "--backrest.reference-count".into(),
        "--backrest.database-count-latest".into(),
    ];
    if user.switch_user {
        args.push(format!("--backrest.user={}", user.name));
    }
    let exp = support::start(&args, WAIT);
    exp.wait_for("the collection at start", || collections(&exp) >= 1.0);
    let stanza = br.stanza();
    let s = [("stanza", stanza)];
    let t = exp.metrics();
    assert_eq!(
        value(
            &t,
            "pgbackrest_exporter_status",
            &[("stanza", "all-stanzas")]
        ),
        Some(1.0),
        "{}",
        exp.logs()
    );
    assert_eq!(value(&t, "pgbackrest_stanza_status", &s), Some(0.0));
    assert_eq!(value(&t, "pgbackrest_repo_status", &s), Some(0.0));
    assert_eq!(value(&t, "pgbackrest_wal_archive_status", &s), Some(1.0));
    assert_eq!(count(&t, "pgbackrest_backup_info"), 1);
    assert!(t.contains("backup_type=\"full\""));
    assert!(value(&t, "pgbackrest_backup_size_bytes", &s).unwrap() > 1e6);
    assert!(
        value(
            &t,
            "pgbackrest_backup_last_databases",
            &[("backup_type", "full")]
        )
        .unwrap()
            >= 1.0
    );
    let wal_age = value(&t, "pgbackrest_wal_since_last_archived_seconds", &s).unwrap();
    assert!((0.0..600.0).contains(&wal_age), "{wal_age}");
    let since_full = |t: &str| {
        value(
            t,
            "pgbackrest_backup_since_last_completion_seconds",
            &[("backup_type", "full")],
        )
        .unwrap()
    };
    let age0 = since_full(&t);

    // Left without new backups, the age grows: between scrapes, and across a collection.
    std::thread::sleep(Duration::from_millis(2100));
    let age1 = since_full(&exp.metrics());
    assert!(age1 >= age0 + 2.0, "{age0} -> {age1}");
    collect_now(&exp);
    let age2 = since_full(&exp.metrics());
    assert!(age2 >= age1, "{age1} -> {age2}");

    // A diff, then an incr: each visible after one collection.
    br.backup(BackupType::Diff).unwrap();
    collect_now(&exp);
    let t = exp.metrics();
    assert_eq!(count(&t, "pgbackrest_backup_info"), 2);
    let diff_line = t
        .lines()
        .find(|l| l.starts_with("pgbackrest_backup_info{") && l.contains("backup_type=\"diff\""))
        .expect("diff backup_info");
    assert!(diff_line.contains("prior=\""), "{diff_line}");
    let since_diff = value(
        &t,
        "pgbackrest_backup_since_last_completion_seconds",
        &[("backup_type", "diff")],
    )
    .unwrap();
    assert!(since_diff < since_full(&t), "the diff slot holds the diff");
    assert_eq!(
        value(
            &t,
            "pgbackrest_backup_last_references",
            &[("backup_type", "diff"), ("ref_backup", "full")]
        ),
        Some(1.0)
    );

    br.backup(BackupType::Incr).unwrap();
    collect_now(&exp);
    let t = exp.metrics();
    assert_eq!(count(&t, "pgbackrest_backup_info"), 3);
    assert!(t.contains("backup_type=\"incr\""));
    let incr_refs = |r: &str| {
        value(
            &t,
            "pgbackrest_backup_last_references",
            &[("backup_type", "incr"), ("ref_backup", r)],
        )
    };
    assert_eq!(incr_refs("full"), Some(1.0));
    assert_eq!(incr_refs("diff"), Some(1.0));
    assert_eq!(count(&t, "pgbackrest_backup_references"), 9);
    // The same backups as pgBackRest itself reports.
    let info = br.info_json().unwrap();
    assert_eq!(info[0]["backup"].as_array().unwrap().len(), 3);

    // pgbackrest ran as the repository's owner: nothing foreign left behind, and archiving
    // (`check` switches and archives a WAL segment) and a new backup still work.
    let dir = br.config_path().parent().unwrap();
    let foreign = foreign_files(dir, user.uid);
    assert!(
        foreign.is_empty(),
        "files not owned by {}: {foreign:?}",
        user.name
    );
    br.run_checked(&["check"]).unwrap();
    br.backup(BackupType::Incr).unwrap();
    collect_now(&exp);
    let t = exp.metrics();
    assert_eq!(count(&t, "pgbackrest_backup_info"), 4);
    assert_eq!(
        value(
            &t,
            "pgbackrest_exporter_status",
            &[("stanza", "all-stanzas")]
        ),
        Some(1.0)
    );
    assert!(failure_lines(&exp.logs()).is_empty(), "{}", exp.logs());
    // Shown with --nocapture.
    println!("{t}\n--- log ---\n{}", exp.logs());
}
