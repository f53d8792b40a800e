//! The pg_exporter binary as users run it, against real PostgreSQL servers from the harness:
//! health endpoints and their status codes across a promotion, a PostgreSQL outage, reloads
//! by `/reload`, SIGHUP and file changes, `--dry-run`, and no password anywhere it could leak.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use test_harness::agent::value;
use test_harness::{Agent, ClusterBuilder, PASSWORD_USER_PASSWORD, PgVersion, shared_cluster};

const COLLECTORS: &str = "t_basic:\n  name: t_basic\n  query: \"SELECT 1 AS v\"\n  metrics:\n    - v: { usage: GAUGE, description: one }\n";

/// Starts pg_exporter for `url` with `collectors` as the only file of its config directory
/// (`conf` in its own directory) and `extra` arguments; ready once `/up` answers, whatever its
/// status.
fn start(url: &str, collectors: &str, extra: &[&str]) -> Agent {
    start_configured(url, extra, |dir| {
        let conf = config_dir(dir);
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("0100-test.yml"), collectors).unwrap();
        conf
    })
}

/// Starts pg_exporter for `url` with `extra` arguments and the config path that `setup`
/// lays out in the agent's directory (given) and returns; ready once `/up` answers.
fn start_configured(url: &str, extra: &[&str], setup: impl FnOnce(&Path) -> PathBuf) -> Agent {
    let b = Agent::builder("pg_exporter", env!("CARGO_BIN_EXE_pg_exporter"));
    let config = setup(b.dir());
    b.arg(format!("--url={url}"))
        .arg(format!("--config={}", config.display()))
        .args([
            "--connect-timeout=3000",
            "--log.level=debug",
            "--no-auto-discovery",
        ])
        .args(extra)
        .env_remove("PGURL")
        .env_remove("PG_EXPORTER_URL")
        .ready_when_answers("/up")
        .kill_on_drop()
        .start()
}

fn config_dir(agent_dir: &Path) -> PathBuf {
    agent_dir.join("conf")
}

/// The first sample of metric `name`, with any labels, if `/metrics` answers.
fn metric(exp: &Agent, name: &str) -> Option<f64> {
    value(&exp.scrape()?, name, &[])
}

#[test]
fn role_endpoints_follow_a_promotion() {
    let cluster = ClusterBuilder::new(PgVersion::V15)
        .replica()
        .start()
        .unwrap();
    let replica = start(&cluster.replica().url("postgres"), COLLECTORS, &[]);
    replica.wait_for("/replica 200", || {
        replica.get("/replica").map(|r| r.0) == Ok(200)
    });
    assert_eq!(replica.get("/replica").unwrap(), (200, "replica".into()));
    assert_eq!(replica.get("/primary").unwrap(), (404, "replica".into()));
    for alias in ["/standby", "/slave", "/read-only", "/ro"] {
        assert_eq!(replica.get(alias).unwrap().0, 200, "{alias}");
    }
    for alias in ["/leader", "/master", "/read-write", "/rw"] {
        assert_eq!(replica.get(alias).unwrap().0, 404, "{alias}");
    }
    assert_eq!(metric(&replica, "pg_in_recovery"), Some(1.0));

    cluster.replica().promote().unwrap();
    let promoted = Instant::now();
    replica.wait_for("/primary 200 after promotion", || {
        replica.get("/primary").map(|r| r.0) == Ok(200)
    });
    println!(
        "role endpoint flipped {:?} after promotion",
        promoted.elapsed()
    );
    assert!(
        promoted.elapsed() < Duration::from_secs(5),
        "the 1 s probe should flip it quickly"
    );
    assert_eq!(replica.get("/replica").unwrap(), (404, "primary".into()));
    assert_eq!(metric(&replica, "pg_in_recovery"), Some(0.0));
    assert_eq!(metric(&replica, "pg_up"), Some(1.0));
}

#[test]
fn survives_a_postgres_outage_and_recovers_by_itself() {
    let pg = test_harness::PostgresBuilder::new(PgVersion::V15)
        .name("outage")
        .start()
        .unwrap();
    let exp = start(&pg.url("postgres"), COLLECTORS, &[]);
    exp.wait_for("pg_up 1", || metric(&exp, "pg_up") == Some(1.0));
    assert_eq!(exp.get("/health").unwrap(), (200, "primary".into()));

    pg.stop().unwrap();
    exp.wait_for("pg_up 0 while PostgreSQL is down", || {
        metric(&exp, "pg_up") == Some(0.0)
    });
    assert_eq!(exp.get("/health").unwrap(), (503, "down".into()));
    assert_eq!(exp.get("/primary").unwrap().0, 503);
    assert_eq!(exp.get("/replica").unwrap().0, 503);
    assert_eq!(
        metric(&exp, "pg_exporter_up"),
        Some(1.0),
        "the exporter itself stays up"
    );

    pg.start().unwrap();
    exp.wait_for("pg_up 1 after PostgreSQL is back", || {
        metric(&exp, "pg_up") == Some(1.0)
    });
    assert_eq!(metric(&exp, "t_basic_v"), Some(1.0));
    assert_eq!(exp.get("/health").unwrap(), (200, "primary".into()));
}

#[test]
fn password_never_appears_in_logs_stat_explain_or_metrics() {
    let cluster = shared_cluster();
    let url = cluster.primary().password_url("postgres");
    assert!(url.contains(PASSWORD_USER_PASSWORD));
    let exp = start(&url, COLLECTORS, &["--label=cls=pg-test"]);
    exp.wait_for("pg_up 1 with the password user", || {
        metric(&exp, "pg_up") == Some(1.0)
    });
    let mut seen = String::new();
    for path in [
        "/metrics", "/stat", "/explain", "/", "/version", "/up", "/reload",
    ] {
        let (_, body) = exp.get(path).unwrap();
        seen.push_str(&body);
    }
    assert!(seen.contains("t_basic"), "the pages were served: {seen}");
    exp.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let logs = exp.logs();
    assert!(logs.contains("xxxxx"), "the URL is logged masked: {logs}");
    assert!(
        !logs.contains(PASSWORD_USER_PASSWORD),
        "password in logs:\n{logs}"
    );
    assert!(!seen.contains(PASSWORD_USER_PASSWORD), "password in a page");
}

#[test]
fn reloads_keep_the_running_config_when_the_new_one_is_broken() {
    let cluster = shared_cluster();
    let exp = start(&cluster.primary().url("postgres"), COLLECTORS, &[]);
    exp.wait_for("the first collector", || {
        metric(&exp, "t_basic_v") == Some(1.0)
    });
    let conf = config_dir(exp.dir());

    // A broken file: /reload answers 500 naming it, the old config keeps serving.
    write(
        &conf,
        "0200-broken.yml",
        "t_broken:\n  query: SELECT 1\n  metrics:\n    - v: { usage: GAGE }\n",
    );
    let (status, body) = exp.request("POST", "/reload").unwrap();
    assert_eq!(status, 500);
    assert!(
        body.contains("0200-broken.yml") && body.contains("GAGE"),
        "{body}"
    );
    assert_eq!(metric(&exp, "t_basic_v"), Some(1.0));
    assert_eq!(
        metric(&exp, "pg_exporter_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(exp.request("DELETE", "/reload").unwrap().0, 405);

    // Fixing the file reloads by itself (file watch).
    write(
        &conf,
        "0200-broken.yml",
        "t_fixed:\n  query: SELECT 2 AS v\n  metrics:\n    - v: { usage: GAUGE }\n",
    );
    exp.wait_for("reload on file change", || {
        metric(&exp, "t_fixed_v") == Some(2.0)
    });
    assert_eq!(
        metric(&exp, "pg_exporter_config_last_reload_successful"),
        Some(1.0)
    );

    // SIGHUP reloads too.
    write(
        &conf,
        "0300-more.yml",
        "t_more:\n  query: SELECT 3 AS v\n  metrics:\n    - v: { usage: GAUGE }\n",
    );
    exp.signal("HUP");
    exp.wait_for("reload on SIGHUP", || metric(&exp, "t_more_v") == Some(3.0));

    // Another kind of file in the config directory is no config file: no reload.
    std::thread::sleep(Duration::from_secs(1));
    let before = reloads(&exp);
    for n in 0..30 {
        std::fs::write(conf.join("README.txt"), format!("note {n}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(reloads(&exp), before, "{}", exp.log_tail(30));
}

#[test]
fn dry_run_prints_the_set_and_fails_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "0100-good.yml", COLLECTORS);
    let out = Command::new(env!("CARGO_BIN_EXE_pg_exporter"))
        .args(["--dry-run", &format!("--config={}", dir.path().display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("t_basic"));

    write(
        dir.path(),
        "0200-bad.yml",
        "t_bad:\n  query: \"\"\n  metrics: []\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pg_exporter"))
        .args(["--dry-run", &format!("--config={}", dir.path().display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0200-bad.yml"));
}

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, as editors do, so the watcher never reads half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn a_bad_file_at_start_up_is_skipped_loudly() {
    let cluster = shared_cluster();
    let bad = "t_bad:\n  query: SELECT 1 AS v\n  metrics:\n    - v: { usage: GAUGE, rename: \"bad name\" }\n";
    let exp = start(&cluster.primary().url("postgres"), COLLECTORS, &[]);
    drop(exp);
    // Same start, with a second, invalid file next to the good one.
    let b = Agent::builder("pg_exporter", env!("CARGO_BIN_EXE_pg_exporter"));
    let conf = config_dir(b.dir());
    std::fs::create_dir(&conf).unwrap();
    write(&conf, "0100-good.yml", COLLECTORS);
    write(&conf, "0200-bad.yml", bad);
    let spawned = Instant::now();
    let exp = b
        .arg(format!("--url={}", cluster.primary().url("postgres")))
        .arg(format!("--config={}", conf.display()))
        .args(["--connect-timeout=3000", "--no-auto-discovery"])
        .ready_when_answers("/up")
        .kill_on_drop()
        .start();
    // 30 s from the spawn, the time waiting for `/up` included.
    exp.wait_until(
        "the good file's collector",
        Duration::from_secs(30).saturating_sub(spawned.elapsed()),
        || metric(&exp, "t_basic_v") == Some(1.0),
    );
    assert_eq!(metric(&exp, "pg_exporter_config_bad_files"), Some(1.0));
    let logs = exp.logs();
    assert!(
        logs.contains("0200-bad.yml:4"),
        "the log names file and line: {logs}"
    );
}

#[test]
fn url_comes_from_pgurl_or_a_url_file_when_no_flag_is_given() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "0100-test.yml", COLLECTORS);
    let url_file = dir.path().join("url");
    std::fs::write(
        &url_file,
        format!("{}\n", cluster.primary().url("postgres")),
    )
    .unwrap();
    let explain = |envs: &[(&str, String)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg_exporter"));
        cmd.args([
            "--explain",
            "--connect-timeout=3000",
            &format!("--config={}", dir.path().display()),
        ])
        .env_remove("PG_EXPORTER_URL")
        .env_remove("PGURL")
        .env_remove("PG_EXPORTER_URL_FILE");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // --explain prints the planned collectors only when it reached the server.
    assert!(explain(&[("PGURL", cluster.primary().url("postgres"))]).contains("t_basic"));
    assert!(
        explain(&[("PG_EXPORTER_URL_FILE", url_file.display().to_string())]).contains("t_basic")
    );
    assert!(explain(&[("PG_EXPORTER_URL", cluster.primary().url("postgres"))]).contains("t_basic"));
    // PG_EXPORTER_URL wins over PGURL.
    let wrong = "postgres://postgres@127.0.0.1:1/postgres".to_owned();
    assert!(
        explain(&[
            ("PG_EXPORTER_URL", cluster.primary().url("postgres")),
            ("PGURL", wrong.clone())
        ])
        .contains("t_basic")
    );
    assert!(!explain(&[("PGURL", wrong)]).contains("t_basic"));
}

/// How many times the agent installed a new config (its "Config reloaded." log lines).
fn reloads(exp: &Agent) -> usize {
    exp.logs().matches("Config reloaded.").count()
}

/// Starts pg_exporter on [`COLLECTORS`] as `conf/pg_exporter.yml` with its log in the same
/// directory, as `-c dir/pg_exporter.yml 2>dir/exporter.log` does; ready once it scraped
/// `t_basic_v 1`.
fn start_with_log_next_to_the_config(url: &str) -> Agent {
    let b = Agent::builder("pg_exporter", env!("CARGO_BIN_EXE_pg_exporter"));
    let conf = config_dir(b.dir());
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("pg_exporter.yml"), COLLECTORS).unwrap();
    let exp = b
        .arg(format!("--url={url}"))
        .arg(format!(
            "--config={}",
            conf.join("pg_exporter.yml").display()
        ))
        .args([
            "--connect-timeout=3000",
            "--log.level=debug",
            "--no-auto-discovery",
        ])
        .env_remove("PGURL")
        .env_remove("PG_EXPORTER_URL")
        .log_file(&conf.join("exporter.log"))
        .ready_when_answers("/up")
        .kill_on_drop()
        .start();
    exp.wait_for("the first collector", || {
        metric(&exp, "t_basic_v") == Some(1.0)
    });
    exp
}

#[test]
fn the_config_watcher_reloads_only_when_a_config_file_changes_content() {
    let cluster = shared_cluster();
    let exp = start_with_log_next_to_the_config(&cluster.primary().url("postgres"));
    let conf = config_dir(exp.dir());

    // The exporter's own log (scrapes, debug lines), another file written for 3 s, and the
    // config file rewritten with the same content: no reload.
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        std::fs::write(conf.join("notes.txt"), format!("line {n}\n")).unwrap();
        if n % 10 == 0 {
            write(&conf, "pg_exporter.yml", COLLECTORS);
            let _ = metric(&exp, "t_basic_v");
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        reloads(&exp),
        0,
        "no config content changed:\n{}",
        exp.log_tail(30)
    );

    // `touch`, and `sed -i` that changes nothing (it still renames a new file over it): no
    // reload.
    let file = conf.join("pg_exporter.yml");
    assert_no_reload(&exp, 1, "touch", || {
        assert!(Command::new("touch").arg(&file).status().unwrap().success());
    });
    assert_no_reload(&exp, 1, "sed -i without a change", || {
        let sed = Command::new("sed")
            .args(["-i", "s/no such text/other text/"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(sed.success());
    });
    assert_eq!(reloads(&exp), 0, "{}", exp.log_tail(30));

    // An edit of the config file: exactly one reload.
    write(
        &conf,
        "pg_exporter.yml",
        &COLLECTORS.replace("SELECT 1", "SELECT 2"),
    );
    exp.wait_for("reload on the edit", || {
        metric(&exp, "t_basic_v") == Some(2.0)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reloads(&exp), 1, "{}", exp.log_tail(30));
    assert_eq!(
        metric(&exp, "pg_exporter_config_reload_failure_count"),
        Some(0.0)
    );

    // Vim's way: the file renamed to a backup, the new text written under the old name.
    std::fs::rename(&file, conf.join("pg_exporter.yml~")).unwrap();
    std::fs::write(&file, collectors_with(3, "one")).unwrap();
    wait_for_value(&exp, 3, "a vim-style write");

    // Ten edits within 200 ms: one reload (more only if the machine stalls the edits past
    // the 300 ms the watcher lets a burst settle), with the last text.
    std::thread::sleep(Duration::from_secs(1));
    let before = reloads(&exp);
    for v in 10..20 {
        write(&conf, "pg_exporter.yml", &collectors_with(v, "one"));
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_value(&exp, 19, "the last of ten edits");
    std::thread::sleep(Duration::from_secs(1));
    let burst = reloads(&exp) - before;
    assert!((1..=3).contains(&burst), "{burst} reloads for ten edits");
}

/// [`COLLECTORS`] returning `v` and described as `help`.
fn collectors_with(v: u32, help: &str) -> String {
    COLLECTORS
        .replace("SELECT 1", &format!("SELECT {v}"))
        .replace("description: one", &format!("description: {help}"))
}

/// Waits at most 10 s for `t_basic_v` to be `v`.
fn wait_for_value(exp: &Agent, v: u32, what: &str) {
    exp.wait_until(what, Duration::from_secs(10), || {
        metric(exp, "t_basic_v") == Some(f64::from(v))
    });
}

/// No reload for 1.5 s after `change` (once earlier events settled), and `t_basic_v` still
/// `v`.
fn assert_no_reload(exp: &Agent, v: u32, what: &str, change: impl FnOnce()) {
    std::thread::sleep(Duration::from_secs(1));
    let before = reloads(exp);
    change();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reloads(exp), before, "{what}:\n{}", exp.log_tail(30));
    assert_eq!(metric(exp, "t_basic_v"), Some(f64::from(v)), "{what}");
}

/// Replaces (or creates) the symlink `link` by one to `target` atomically, as
/// `ln -s target link.tmp && mv -T link.tmp link` does.
fn relink(target: &Path, link: &Path) {
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// The inotify watches the process `pid` holds (the `inotify wd:` lines of the fdinfo of its
/// inotify descriptors), and its threads running notify's event loop.
fn inotify_use(pid: u32) -> (usize, usize) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let mut watches = 0;
    for fd in std::fs::read_dir(proc.join("fd")).unwrap().flatten() {
        if std::fs::read_link(fd.path()).is_ok_and(|l| l == Path::new("anon_inode:inotify")) {
            let info = std::fs::read_to_string(proc.join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            watches += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    let threads = std::fs::read_dir(proc.join("task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("notify-rs"))
        })
        .count();
    (watches, threads)
}

#[test]
fn the_config_watcher_follows_a_file_linked_from_another_directory() {
    let cluster = shared_cluster();
    let exp = start_configured(&cluster.primary().url("postgres"), &[], |dir| {
        for d in ["link", "real", "other"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("real/pg.yml"), COLLECTORS).unwrap();
        std::os::unix::fs::symlink(dir.join("real/pg.yml"), dir.join("link/pg.yml")).unwrap();
        dir.join("link/pg.yml")
    });
    wait_for_value(&exp, 1, "the first collector");
    let dir = exp.dir();

    // The target edited with `sed -i` (a new file renamed over it): the HELP text follows.
    let sed = Command::new("sed")
        .args(["-i", "s/description: one/description: uno/"])
        .arg(dir.join("real/pg.yml"))
        .status()
        .unwrap();
    assert!(sed.success());
    exp.wait_until(
        "the HELP text of the edited target",
        Duration::from_secs(10),
        || {
            exp.scrape()
                .is_some_and(|body| body.contains("# HELP t_basic_v uno"))
        },
    );
    // The target written in place.
    std::fs::write(dir.join("real/pg.yml"), collectors_with(2, "one")).unwrap();
    wait_for_value(&exp, 2, "the target written in place");

    // The link now leads to a file of a third directory: followed, and so are its edits.
    std::fs::write(dir.join("other/pg.yml"), collectors_with(3, "one")).unwrap();
    relink(&dir.join("other/pg.yml"), &dir.join("link/pg.yml"));
    wait_for_value(&exp, 3, "the link changed");
    write(&dir.join("other"), "pg.yml", &collectors_with(4, "one"));
    wait_for_value(&exp, 4, "an edit of the new target");

    // The old target is no config any more.
    assert_no_reload(&exp, 4, "an edit of the former target", || {
        std::fs::write(dir.join("real/pg.yml"), collectors_with(5, "one")).unwrap();
    });
    let (watches, threads) = inotify_use(exp.pid());
    assert!(
        watches <= 2 && threads == 1,
        "{watches} watches, {threads} threads"
    );
}

#[test]
fn the_config_watcher_watches_a_replaced_config_directory_anew() {
    let cluster = shared_cluster();
    let exp = start(&cluster.primary().url("postgres"), COLLECTORS, &[]);
    wait_for_value(&exp, 1, "the first collector");
    let conf = config_dir(exp.dir());
    for round in 0..3 {
        let v = 10 * (round + 1);
        // `rm -rf conf; mkdir conf; write a.yml`: one reload...
        std::fs::remove_dir_all(&conf).unwrap();
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("a.yml"), collectors_with(v, "one")).unwrap();
        wait_for_value(&exp, v, "the replaced directory");
        // ... and the edits in the new directory are seen too.
        std::fs::write(conf.join("a.yml"), collectors_with(v + 1, "one")).unwrap();
        wait_for_value(&exp, v + 1, "an edit in the new directory");
        write(&conf, "b.yml", &collectors_with(v + 2, "one"));
        wait_for_value(&exp, v + 2, "a new file in the new directory");
    }
    let (watches, threads) = inotify_use(exp.pid());
    assert!(
        watches <= 2 && threads == 1,
        "{watches} watches, {threads} threads"
    );
}

#[test]
fn the_config_watcher_follows_a_config_directory_swapped_through_a_symlink() {
    let cluster = shared_cluster();
    let exp = start_configured(&cluster.primary().url("postgres"), &[], |dir| {
        let release = dir.join("releases/1");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("pg_exporter.yml"), COLLECTORS).unwrap();
        std::os::unix::fs::symlink("releases/1", dir.join("current")).unwrap();
        dir.join("current")
    });
    wait_for_value(&exp, 1, "the first collector");
    let dir = exp.dir();
    for n in 2..=4 {
        // A new release, swapped in as Capistrano and Kubernetes do.
        let release = dir.join(format!("releases/{n}"));
        std::fs::create_dir(&release).unwrap();
        std::fs::write(
            release.join("pg_exporter.yml"),
            collectors_with(10 * n, "one"),
        )
        .unwrap();
        relink(Path::new(&format!("releases/{n}")), &dir.join("current"));
        wait_for_value(&exp, 10 * n, "the swapped directory");
        write(
            &release,
            "pg_exporter.yml",
            &collectors_with(10 * n + 1, "one"),
        );
        wait_for_value(&exp, 10 * n + 1, "an edit under the new target");
    }
    assert_no_reload(&exp, 41, "an edit of a release swapped out", || {
        write(
            &dir.join("releases/3"),
            "pg_exporter.yml",
            &collectors_with(99, "one"),
        );
    });
    let (watches, threads) = inotify_use(exp.pid());
    assert!(
        watches <= 3 && threads == 1,
        "{watches} watches, {threads} threads"
    );
}

#[test]
fn the_config_watcher_follows_a_kubernetes_config_map() {
    // The kubelet's layout: the file links through `..data`, a link to the current
    // timestamped directory, swapped by renaming `..data_tmp` over it.
    let cluster = shared_cluster();
    let exp = start_configured(&cluster.primary().url("postgres"), &[], |dir| {
        let conf = config_dir(dir);
        std::fs::create_dir_all(conf.join("..2024_01_01_00_00_00.1")).unwrap();
        std::fs::write(
            conf.join("..2024_01_01_00_00_00.1/pg_exporter.yml"),
            COLLECTORS,
        )
        .unwrap();
        std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", conf.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pg_exporter.yml", conf.join("pg_exporter.yml")).unwrap();
        conf.join("pg_exporter.yml")
    });
    wait_for_value(&exp, 1, "the first collector");
    let conf = config_dir(exp.dir());
    for n in 2..=3 {
        let stamp = format!("..2024_01_0{n}_00_00_00.1");
        std::fs::create_dir(conf.join(&stamp)).unwrap();
        std::fs::write(
            conf.join(&stamp).join("pg_exporter.yml"),
            collectors_with(n, "one"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&stamp, conf.join("..data_tmp")).unwrap();
        std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).unwrap();
        let old = format!("..2024_01_0{}_00_00_00.1", n - 1);
        std::fs::remove_dir_all(conf.join(old)).unwrap();
        wait_for_value(&exp, n, "the swapped config map");
    }
    // An update that leaves the file as it was: no reload.
    assert_no_reload(&exp, 3, "a config map update without change", || {
        std::fs::create_dir(conf.join("..2024_01_04_00_00_00.1")).unwrap();
        std::fs::write(
            conf.join("..2024_01_04_00_00_00.1/pg_exporter.yml"),
            collectors_with(3, "one"),
        )
        .unwrap();
        relink(Path::new("..2024_01_04_00_00_00.1"), &conf.join("..data"));
    });
    assert_eq!(reloads(&exp), 2, "{}", exp.log_tail(30));
}

#[test]
fn an_empty_config_is_refused_at_start_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let empty_file = dir.path().join("empty.yml");
    std::fs::write(&empty_file, "").unwrap();
    let comments = dir.path().join("comments.yml");
    std::fs::write(&comments, "# nothing yet\n").unwrap();
    let empty_dir = dir.path().join("conf.d");
    std::fs::create_dir(&empty_dir).unwrap();
    std::fs::write(empty_dir.join("README.txt"), "collectors go here\n").unwrap();

    for (path, says) in [
        (&empty_file, "the file defines no collector"),
        (&comments, "the file defines no collector"),
        (
            &empty_dir,
            "no *.yml or *.yaml file in this directory defines a collector",
        ),
    ] {
        let config = format!("--config={}", path.display());
        // At start: a clear error naming the path, and exit status 2.
        let (status, stderr) = run_briefly(&[&config]);
        assert_eq!(status, Some(2), "{}: {stderr}", path.display());
        assert!(
            stderr.contains(&path.display().to_string())
                && stderr.contains(says)
                && stderr.contains("--allow-empty-config"),
            "{stderr}"
        );
        // --dry-run refuses it too, unless asked for, by flag or environment.
        let (ok, stderr) = dry_run(&[&config], &[]);
        assert!(!ok && stderr.contains(says), "{stderr}");
        let (ok, stderr) = dry_run(&[&config, "--allow-empty-config"], &[]);
        assert!(ok, "{stderr}");
        let (ok, stderr) = dry_run(&[&config], &[("PG_EXPORTER_ALLOW_EMPTY_CONFIG", "true")]);
        assert!(ok, "{stderr}");
    }

    // Allowed: it runs, says so, and serves its own metrics.
    let exp = Agent::builder("pg_exporter", env!("CARGO_BIN_EXE_pg_exporter"))
        .arg(format!("--config={}", empty_dir.display()))
        .args([
            "--url=postgres://postgres@127.0.0.1:1/postgres",
            "--allow-empty-config",
        ])
        .env_remove("PGURL")
        .env_remove("PG_EXPORTER_URL")
        .ready_when_answers("/up")
        .kill_on_drop()
        .start();
    assert_eq!(metric(&exp, "pg_exporter_up"), Some(1.0));
    assert!(
        exp.logs().contains("defines no collector"),
        "{}",
        exp.log_tail(20)
    );
}

#[test]
fn a_reload_to_an_empty_config_keeps_the_running_one() {
    let cluster = shared_cluster();
    let exp = start_with_log_next_to_the_config(&cluster.primary().url("postgres"));
    let conf = config_dir(exp.dir());
    let file = conf.join("pg_exporter.yml");

    // Truncated by mistake: the watcher's reload is rejected and counted.
    std::fs::write(&file, "").unwrap();
    exp.wait_for("the rejected reload", || {
        metric(&exp, "pg_exporter_config_reload_failure_count") == Some(1.0)
    });
    assert_eq!(
        metric(&exp, "pg_exporter_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(
        metric(&exp, "t_basic_v"),
        Some(1.0),
        "the running config stays"
    );
    let (status, body) = exp.request("POST", "/reload").unwrap();
    assert_eq!(status, 500);
    assert!(
        body.contains(&file.display().to_string()) && body.contains("defines no collector"),
        "{body}"
    );
    assert_eq!(metric(&exp, "t_basic_v"), Some(1.0));
    assert_eq!(reloads(&exp), 0);
}

#[test]
fn a_password_in_the_url_flag_is_warned_about_without_showing_it() {
    let secret = "s3cret-in-ps";
    let url = format!("postgres://someone:{secret}@127.0.0.1:1/postgres");
    let explain = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg_exporter"));
        cmd.arg("--explain")
            .args(args)
            .env_remove("PG_EXPORTER_URL")
            .env_remove("PGURL")
            .env_remove("PG_EXPORTER_URL_FILE");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "0100-test.yml", COLLECTORS);
    let config = format!("--config={}", dir.path().display());

    // The warning's line, and whether it names exactly `secrets`.
    let warned = |logs: &str, secrets: &str| {
        logs.lines()
            .find(|l| l.contains("secret given in --url is visible"))
            .is_some_and(|l| {
                l.split_whitespace()
                    .any(|field| field == format!("secrets={secrets}"))
            })
    };
    let logs = explain(&[&config, &format!("--url={url}")], &[]);
    assert!(
        warned(&logs, "password")
            && logs.contains("PG_EXPORTER_URL_FILE")
            && logs.contains("~/.pgpass"),
        "{logs}"
    );
    assert_eq!(logs.matches("secret given in --url").count(), 1, "{logs}");
    assert!(!logs.contains(secret), "{logs}");

    // Any secret keyword, in either form, is warned about by name, never shown.
    for (url, names) in [
        (
            format!("host=127.0.0.1 port=1 sslpassword={secret} sslmode=disable"),
            "sslpassword",
        ),
        (
            format!("postgres://someone:{secret}@127.0.0.1:1/postgres?sslpassword={secret}"),
            "password,sslpassword",
        ),
    ] {
        let logs = explain(&[&config, &format!("--url={url}")], &[]);
        assert!(warned(&logs, names), "{names}: {logs}");
        assert!(!logs.contains(secret), "{logs}");
    }

    // From the environment (not in ps), or without a password: no warning.
    for (args, envs) in [
        (
            vec![config.clone()],
            vec![("PG_EXPORTER_URL", url.as_str())],
        ),
        (
            vec![
                config.clone(),
                "--url=postgres://someone@127.0.0.1:1/postgres".to_owned(),
            ],
            vec![],
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let logs = explain(&args, &envs);
        assert!(logs.contains("Target."), "{logs}");
        assert!(!logs.contains("given in --url"), "{logs}");
        assert!(!logs.contains(secret), "{logs}");
    }

    // --help says where the password belongs.
    let out = Command::new(env!("CARGO_BIN_EXE_pg_exporter"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["PG_EXPORTER_URL_FILE", "~/.pgpass", "--allow-empty-config"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

/// `pg_exporter --dry-run` with `args` and `envs`: whether it succeeded, and its stderr.
fn dry_run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pg_exporter"))
        .arg("--dry-run")
        .args(args)
        .env_remove("PG_EXPORTER_ALLOW_EMPTY_CONFIG")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs pg_exporter with `args` on a free loopback port for at most 10 s: its exit status
/// (`None` if it was still running and got killed) and its stderr.
fn run_briefly(args: &[&str]) -> (Option<i32>, String) {
    let port = test_harness::free_port().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pg_exporter"))
        .args(args)
        .args([
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--url=postgres://postgres@127.0.0.1:1/postgres".to_owned(),
        ])
        .env_remove("PGURL")
        .env_remove("PG_EXPORTER_URL")
        .env_remove("PG_EXPORTER_ALLOW_EMPTY_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > until {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn text_in_a_value_column_is_nan_logged_once_and_counted_as_an_error() {
    let cluster = shared_cluster();
    let collectors = "t_text:\n  name: t_text\n  query: \"SELECT 'hello'::text AS word, '1e400'::text AS huge, 1e400::numeric AS huge_numeric, '12.5'::text AS fine, 'Infinity'::text AS inf, '0x1p4'::text AS hex, '1_000.5'::text AS grouped, ' 0x1p4 '::text AS padded\"\n  metrics:\n    - word: { usage: GAUGE, description: text }\n    - huge: { usage: COUNTER, description: beyond f64 }\n    - huge_numeric: { usage: GAUGE, description: beyond f64 }\n    - fine: { usage: GAUGE, description: a number as text }\n    - inf: { usage: GAUGE, description: an infinity spelled out }\n    - hex: { usage: GAUGE, description: a hexadecimal float }\n    - grouped: { usage: GAUGE, description: digits grouped by underscores }\n    - padded: { usage: GAUGE, description: blanks around a number }\n";
    let exp = start(&cluster.primary().url("postgres"), collectors, &[]);
    exp.wait_for("the collector", || {
        metric(&exp, "t_text_fine") == Some(12.5)
    });
    for _ in 0..3 {
        exp.scrape().unwrap();
    }
    let body = exp.scrape().unwrap();
    // Upstream's value: NaN (Go's ParseFloat refuses `hello`, out of range `1e400`, and
    // blanks around a number).
    for family in [
        "t_text_word",
        "t_text_huge",
        "t_text_huge_numeric",
        "t_text_padded",
    ] {
        assert!(
            value(&body, family, &[]).is_some_and(f64::is_nan),
            "{family}:\n{body}"
        );
    }
    assert_eq!(value(&body, "t_text_inf", &[]), Some(f64::INFINITY));
    // What Go's ParseFloat reads besides plain decimals.
    assert_eq!(value(&body, "t_text_hex", &[]), Some(16.0));
    assert_eq!(value(&body, "t_text_grouped", &[]), Some(1000.5));
    // Counted at every scrape in the collector's error count...
    let errors = value(
        &body,
        "pg_exporter_query_scrape_error_count",
        &[("datname", "postgres"), ("query", "t_text")],
    )
    .unwrap();
    assert!(errors >= 5.0, "{errors}\n{body}");
    // ... and logged once per column, whatever the number of scrapes.
    let logs = exp.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("holds a value that is no number"))
        .collect();
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    for (column, shown) in [
        ("word", "\\\"hello\\\""),
        ("huge", "\\\"1e400\\\""),
        ("huge_numeric", "0.0001e404"),
        ("padded", "\\\" 0x1p4 \\\""),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("column={column} ")) && w.contains(shown)),
            "{column}: {warnings:#?}"
        );
    }
}
