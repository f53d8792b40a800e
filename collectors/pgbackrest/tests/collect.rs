//! The collector against a fake `pgbackrest` (a shell script whose behaviour a test switches
//! between runs): good output, every bad-input case (missing binary, non-zero exit, a hang
//! with a forked child, garbage and truncated JSON, unknown fields and codes, a stanza with an
//! unparseable part), last good values kept with their age, the extra `--set` and `repo-ls`
//! calls, include/exclude lists, and running as another user.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pgbackrest_collector::collector::Collector;
use pgbackrest_collector::command::{RunAs, Runner};
use pgbackrest_collector::settings::Settings;

const FAKE: &str = r#"#!/bin/sh
# A fake pgbackrest: what it does is read from files next to it.
DIR="$(dirname "$0")"
echo "$*" >> "$DIR/calls"
case " $* " in
  *" version "*) cat "$DIR/version" 2>/dev/null || echo "pgBackRest 2.45"; exit 0 ;;
  *" repo-ls "*) cat "$DIR/repo-ls.json" 2>/dev/null || echo '{}'; exit 0 ;;
  *" --set "*) cat "$DIR/set.json"; exit 0 ;;
esac
case "$(cat "$DIR/mode")" in
  ok) cat "$DIR/info.json" ;;
  fail) echo "ERROR: [055]: unable to open missing file '/etc/pgbackrest/missing.conf' for read" >&2; exit 55 ;;
  hang) sleep 1000 & echo $! > "$DIR/child.pid"; wait ;;
  hang-ignoring-term) trap '' TERM; sleep 1000 & echo $! > "$DIR/child.pid"; wait ;;
  garbage) echo 'this is not json {' ;;
  truncated) head -c 700 "$DIR/info.json" ;;
  object) echo '{"name":"demo"}' ;;
esac
"#;

/// A directory with the fake pgbackrest and its behaviour files.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("pgbackrest");
        std::fs::write(&bin, FAKE).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fake = Fake { dir };
        fake.set_mode("ok");
        fake
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("pgbackrest")
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    fn set_file(&self, name: &str, contents: &[u8]) {
        std::fs::write(self.dir.path().join(name), contents).unwrap();
    }

    fn info(&self, fixture_name: &str) {
        self.set_file("info.json", &fixture(fixture_name));
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default()
    }

    fn settings(&self) -> Settings {
        Settings {
            binary: self.bin(),
            timeout: Duration::from_secs(10),
            wal_age: false,
            ..Settings::default()
        }
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The value of the one series `name{...}` containing all `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?}: {} series", found.len());
    found.first().copied()
}

fn count(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .count()
}

const ALL: (&str, &str) = ("stanza", "all-stanzas");

#[tokio::test]
async fn good_run_then_failures_keep_the_last_values_with_their_age() {
    let fake = Fake::new();
    fake.info("info-2.45-full-incr.json");
    let c = Collector::new(fake.settings());
    c.collect_once().await;
    let t0 = SystemTime::now();
    let text = c.render(t0);
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[ALL]),
        Some(1.0)
    );
    assert_eq!(count(&text, "pgbackrest_backup_info"), 2);
    let since0 = value(
        &text,
        "pgbackrest_backup_since_last_completion_seconds",
        &[("backup_type", "full")],
    )
    .unwrap();
    let success0 = value(
        &text,
        "pgbackrest_exporter_last_success_timestamp_seconds",
        &[ALL],
    )
    .unwrap();
    assert_eq!(
        fake.calls().lines().collect::<Vec<_>>(),
        ["version --output num", "info --output json"]
    );

    for mode in ["fail", "garbage", "truncated", "object"] {
        fake.set_mode(mode);
        c.collect_once().await;
        let state = c.state();
        let cause = state.invocations[0].last_error.clone().unwrap();
        match mode {
            "fail" => assert!(
                cause.contains("exit code 55") && cause.contains("unable to open missing file"),
                "{cause}"
            ),
            "object" => assert!(cause.contains("not an array"), "{cause}"),
            _ => assert!(cause.contains("invalid JSON"), "{cause}"),
        }
        // Two seconds later: still served, status 0, the age visible and growing.
        let later = SystemTime::now() + Duration::from_secs(2);
        let text = c.render(later);
        assert_eq!(
            value(&text, "pgbackrest_exporter_status", &[ALL]),
            Some(0.0),
            "{mode}"
        );
        assert_eq!(count(&text, "pgbackrest_backup_info"), 2, "{mode}");
        assert_eq!(
            value(
                &text,
                "pgbackrest_exporter_last_success_timestamp_seconds",
                &[ALL]
            ),
            Some(success0),
            "{mode}"
        );
        assert!(value(&text, "pgbackrest_exporter_data_age_seconds", &[ALL]).unwrap() >= 2.0);
        let since = value(
            &text,
            "pgbackrest_backup_since_last_completion_seconds",
            &[("backup_type", "full")],
        )
        .unwrap();
        assert!(since >= since0 + 2.0, "{mode}: {since} after {since0}");
    }

    // Recovery: status 1, fresh data.
    fake.set_mode("ok");
    fake.info("info-2.45-full-incr-diff.json");
    c.collect_once().await;
    let text = c.render(SystemTime::now());
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[ALL]),
        Some(1.0)
    );
    assert_eq!(count(&text, "pgbackrest_backup_info"), 3);
    assert!(value(&text, "pgbackrest_exporter_data_age_seconds", &[ALL]).unwrap() < 2.0);
    assert_eq!(
        value(&text, "pgbackrest_exporter_collections_total", &[]),
        Some(6.0)
    );
}

#[tokio::test]
async fn missing_binary() {
    let fake = Fake::new();
    let settings = Settings {
        binary: fake.dir.path().join("no-such-pgbackrest"),
        ..fake.settings()
    };
    let c = Collector::new(settings);
    c.collect_once().await;
    let text = c.render(SystemTime::now());
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[ALL]),
        Some(0.0)
    );
    assert_eq!(value(&text, "pgbackrest_version_info", &[]), Some(0.0));
    assert_eq!(count(&text, "pgbackrest_stanza_status"), 0);
    let cause = c.state().invocations[0].last_error.clone().unwrap();
    assert!(cause.contains("not found"), "{cause}");
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not count).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

async fn hang_case(mode: &str, timeout: Duration, max: Duration) {
    let fake = Fake::new();
    fake.set_mode(mode);
    let settings = Settings {
        timeout,
        ..fake.settings()
    };
    let c = Collector::new(settings);
    let started = Instant::now();
    c.collect_once().await;
    let took = started.elapsed();
    assert!(
        took >= timeout && took < max,
        "{mode}: collection took {took:?}"
    );
    let pid: u32 = std::fs::read_to_string(fake.dir.path().join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The forked child was in the killed process group.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "{mode}: the forked `sleep` ({pid}) survived");
    let text = c.render(SystemTime::now());
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[ALL]),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "pgbackrest_exporter_timeouts_total", &[]),
        Some(1.0)
    );
    let cause = c.state().invocations[0].last_error.clone().unwrap();
    assert!(cause.contains("did not finish within 1s"), "{cause}");
}

#[tokio::test]
async fn a_hung_pgbackrest_is_killed_with_its_process_group() {
    hang_case("hang", Duration::from_secs(1), Duration::from_secs(4)).await;
}

#[tokio::test]
async fn a_hung_pgbackrest_ignoring_sigterm_gets_sigkill() {
    // SIGTERM is ignored by the script and its child: SIGKILL after the 2 s grace.
    hang_case(
        "hang-ignoring-term",
        Duration::from_secs(1),
        Duration::from_secs(6),
    )
    .await;
}

#[tokio::test]
async fn unknown_fields_and_codes_from_newer_versions() {
    let fake = Fake::new();
    fake.set_file(
        "info.json",
        br#"[{"name":"demo","cipher":"none","new-top-level":{"a":[1,2]},
              "status":{"code":7,"message":"something new","lock":{"backup":{"held":true,"size":1000,"size-cplt":250,"repo":[{"key":1,"size":1000,"size-cplt":250}]},"restore":{"held":false},"other":{"held":true}}},
              "repo":[{"cipher":"none","key":1,"status":{"code":42,"message":"new repo code"},"kind":"posix"}],
              "db":[{"id":1,"repo-key":1,"system-id":7712213868974602271,"version":"18","new":true}],
              "archive":[{"database":{"id":1,"repo-key":1},"id":"18-1","max":"000000010000000000000002","min":"000000010000000000000001","new":null}],
              "backup":[{"label":"20300101-000000F","type":"full","timestamp":{"start":1893456000,"stop":1893456010},
                         "info":{"size":100,"delta":100,"repository":{"size":10,"delta":10,"new-size":5}},
                         "database":{"id":1,"repo-key":1},"backrest":{"format":6,"version":"2.60"},
                         "lsn":{"start":"0/2000028","stop":"0/2000100"},"archive":{"start":"000000010000000000000002","stop":"000000010000000000000002"},
                         "error":false,"prior":null,"reference":null,"new-field":{"x":1}}]}]"#,
    );
    fake.set_file("version", b"2060000\n");
    let c = Collector::new(fake.settings());
    c.collect_once().await;
    let text = c.render(SystemTime::now());
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[ALL]),
        Some(1.0)
    );
    assert_eq!(value(&text, "pgbackrest_stanza_status", &[]), Some(7.0));
    assert_eq!(value(&text, "pgbackrest_repo_status", &[]), Some(42.0));
    assert_eq!(
        value(&text, "pgbackrest_stanza_backup_lock_status", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "pgbackrest_stanza_backup_total_bytes", &[]),
        Some(1000.0)
    );
    assert_eq!(
        value(&text, "pgbackrest_stanza_backup_complete_bytes", &[]),
        Some(250.0)
    );
    assert_eq!(
        value(&text, "pgbackrest_version_info", &[]),
        Some(2_060_000.0)
    );
    assert!(text.contains("backrest_ver=\"2.60\""));
    assert!(text.contains("pg_version=\"18\""));
}

#[tokio::test]
async fn a_stanza_with_an_unparseable_part_does_not_hide_the_others() {
    let fake = Fake::new();
    let demo = String::from_utf8(fixture("info-2.45-full-incr.json")).unwrap();
    let demo = demo.trim().trim_start_matches('[').trim_end_matches(']');
    let body = format!(
        r#"[{{"name":"bad","status":{{"code":"not a number"}},"repo":[{{"key":1,"status":{{"code":0}}}}],
             "backup":[{{"label":"x","type":"full","info":{{"size":-1}}}}]}},
            {demo},
            "junk"]"#
    );
    fake.set_file("info.json", body.as_bytes());
    let c = Collector::new(fake.settings());
    c.collect_once().await;
    let text = c.render(SystemTime::now());
    // The good stanza is complete.
    assert_eq!(
        value(&text, "pgbackrest_stanza_status", &[("stanza", "demo")]),
        Some(0.0)
    );
    assert_eq!(count(&text, "pgbackrest_backup_info"), 2);
    assert_eq!(
        count(&text, "pgbackrest_backup_since_last_completion_seconds"),
        3
    );
    // The bad stanza keeps what parsed.
    assert_eq!(
        value(&text, "pgbackrest_repo_status", &[("stanza", "bad")]),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "pgbackrest_stanza_status", &[("stanza", "bad")]),
        None
    );
    // The run is flagged, with every bad part named.
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[ALL]),
        Some(0.0)
    );
    let cause = c.state().invocations[0].last_error.clone().unwrap();
    assert!(cause.contains("stanza \"bad\" status"), "{cause}");
    assert!(cause.contains("stanza \"bad\" backup[0]"), "{cause}");
    assert!(cause.contains("element [2]"), "{cause}");
}

#[tokio::test]
async fn include_exclude_and_arguments() {
    let fake = Fake::new();
    fake.info("info-2.45-full-incr.json");
    let settings = Settings {
        config: "/etc/pgbackrest/pgbackrest.conf".into(),
        backup_type: "full".into(),
        stanza_include: vec!["demo".into(), "ghost".into()],
        stanza_exclude: vec!["ghost".into()],
        ..fake.settings()
    };
    let c = Collector::new(settings);
    c.collect_once().await;
    let text = c.render(SystemTime::now());
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[("stanza", "demo")]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "pgbackrest_exporter_status", &[("stanza", "ghost")]),
        Some(0.0)
    );
    assert_eq!(
        fake.calls().lines().collect::<Vec<_>>(),
        [
            "version --output num",
            "info --output json --config /etc/pgbackrest/pgbackrest.conf --stanza demo --type full"
        ]
    );

    // Without an include list, excluded stanzas are fetched and dropped.
    let fake = Fake::new();
    fake.info("info-2.45-all-stanzas.json");
    let settings = Settings {
        stanza_exclude: vec!["broken".into(), "empty".into()],
        ..fake.settings()
    };
    let c = Collector::new(settings);
    c.collect_once().await;
    let text = c.render(SystemTime::now());
    assert_eq!(
        value(
            &text,
            "pgbackrest_exporter_status",
            &[("stanza", "all-stanzas-except-excluded")]
        ),
        Some(1.0)
    );
    assert_eq!(count(&text, "pgbackrest_stanza_status"), 2);
    assert_eq!(
        value(&text, "pgbackrest_stanza_status", &[("stanza", "broken")]),
        None
    );
}

#[tokio::test]
async fn database_counts_by_set_and_wal_age_by_repo_ls() {
    let fake = Fake::new();
    fake.info("info-2.45-full-incr.json");
    fake.set_file("set.json", &fixture("info-2.45-set-incr.json"));
    fake.set_file(
        "repo-ls.json",
        br#"{"000000010000000000000009-0123456789abcdef0123456789abcdef01234567.gz":{"type":"file","size":1000,"time":1795639800}}"#,
    );
    let settings = Settings {
        database_count: true,
        database_count_latest: true,
        database_parallel_processes: 2,
        wal_age: true,
        ..fake.settings()
    };
    let c = Collector::new(settings);
    c.collect_once().await;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_640_000);
    let text = c.render(now);
    assert_eq!(count(&text, "pgbackrest_backup_databases"), 2);
    assert_eq!(
        value(
            &text,
            "pgbackrest_backup_databases",
            &[("backup_type", "full")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "pgbackrest_backup_last_databases",
            &[("backup_type", "incr")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "pgbackrest_wal_last_archived_timestamp_seconds",
            &[("repo_key", "1"), ("stanza", "demo")]
        ),
        Some(1_795_639_800.0)
    );
    assert_eq!(
        value(&text, "pgbackrest_wal_since_last_archived_seconds", &[]),
        Some(200.0)
    );
    let calls = fake.calls();
    assert_eq!(calls.matches("--set").count(), 2, "{calls}");
    assert!(
        calls.contains("info --output json --stanza demo --set 20261125-204938F\n"),
        "{calls}"
    );
    assert!(
        calls.contains("repo-ls --output json --repo=1 --filter=^000000010000000000000009 archive/demo/15-1/0000000100000000\n"),
        "{calls}"
    );
}

#[tokio::test]
async fn backup_limit_reduces_set_calls_too() {
    let fake = Fake::new();
    fake.info("info-2.45-page-checksum-error.json");
    fake.set_file(
        "set.json",
        &fixture("info-2.45-set-page-checksum-error.json"),
    );
    let settings = Settings {
        database_count: true,
        backup_limit: 1,
        ..fake.settings()
    };
    let c = Collector::new(settings);
    c.collect_once().await;
    let text = c.render(SystemTime::now());
    assert_eq!(count(&text, "pgbackrest_backup_info"), 2);
    assert_eq!(count(&text, "pgbackrest_backup_databases"), 2);
    assert_eq!(fake.calls().matches("--set").count(), 2);
}

#[tokio::test]
async fn the_loop_collects_at_start_and_on_trigger_not_per_scrape() {
    let fake = Fake::new();
    fake.info("info-2.45-full-incr.json");
    let settings = Settings {
        interval: Duration::from_secs(3600),
        ..fake.settings()
    };
    let c = Collector::new(settings);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(c.clone().run(async {
        let _ = stop_rx.await;
    }));
    let wait_for = |n: u64| {
        let c = c.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.state().collections_total < n {
                assert!(Instant::now() < deadline, "no collection {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(1).await;
    for _ in 0..5 {
        let _ = c.render(SystemTime::now());
    }
    assert_eq!(
        fake.calls().matches("info").count(),
        1,
        "scrapes never run pgbackrest"
    );
    c.trigger();
    wait_for(2).await;
    assert_eq!(fake.calls().matches("info").count(), 2);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_during_a_hang_kills_the_group() {
    let fake = Fake::new();
    fake.set_mode("hang");
    let settings = Settings {
        timeout: Duration::from_secs(600),
        ..fake.settings()
    };
    let c = Collector::new(settings);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(c.clone().run(async {
        let _ = stop_rx.await;
    }));
    let pid_file = fake.dir.path().join("child.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "the forked child survived shutdown");
}

#[tokio::test]
async fn runs_as_the_repository_owner_when_root() {
    let root = nix::unistd::geteuid().is_root();
    match RunAs::lookup("postgres") {
        Ok(Some(user)) => {
            assert!(root);
            let runner = Runner::new(
                "/usr/bin/id".into(),
                Some(user.clone()),
                Duration::from_secs(10),
            );
            let out = runner.run(&["-u".to_owned()]).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                user.uid.to_string()
            );
            let out = runner.run(&["-G".to_owned()]).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                user.gid.to_string(),
                "no supplementary groups of root are kept"
            );
            let env = Runner::new(
                "/usr/bin/env".into(),
                Some(user.clone()),
                Duration::from_secs(10),
            );
            let out = String::from_utf8(env.run(&[]).await.unwrap().stdout).unwrap();
            assert!(
                out.contains(&format!("HOME={}\n", user.home.display())),
                "{out}"
            );
            assert!(out.contains("USER=postgres\n"), "{out}");
        }
        Ok(None) => {} // we are postgres
        Err(e) => assert!(!root || e.to_string().contains("no such user"), "{e}"),
    }
    // The current user is never switched.
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap();
    assert_eq!(RunAs::lookup(&me.name).unwrap(), None);
    assert!(RunAs::lookup("no-such-user-xyz").is_err());
}

#[tokio::test]
async fn failures_of_a_run_are_reported_by_the_runner() {
    let runner = Runner::new("/bin/sh".into(), None, Duration::from_secs(5));
    let err = runner
        .run(&["-c".into(), "echo oops >&2; exit 3".into()])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`/bin/sh -c echo oops >&2; exit 3` failed (exit code 3): oops"
    );
    let err = runner
        .run(&["-c".into(), "kill -9 $$".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("killed by signal 9"), "{err}");
    // A child that exits but leaves a descendant holding its stdout: the timeout still ends it.
    let short = Runner::new("/bin/sh".into(), None, Duration::from_secs(1));
    let started = Instant::now();
    let err = short
        .run(&["-c".into(), "sleep 1000 & echo partial".into()])
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let ok = runner
        .run(&["-c".into(), "printf 'out'; echo warn >&2".into()])
        .await
        .unwrap();
    assert_eq!(ok.stdout, b"out");
    assert_eq!(ok.stderr, "warn");
}
