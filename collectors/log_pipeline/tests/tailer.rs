//! The file tailer end to end through a file sink, off the happy path: a file that leaves the
//! globs and comes back, a file name that is not UTF-8, a tree deeper than `PATH_MAX`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log_pipeline::config::Config;
use log_pipeline::pipeline::Pipeline;
use log_pipeline::stats::Stats;

const GRACE: Duration = Duration::from_secs(5);

/// A pipeline config: source `app` (plain, fast rescans, `rotate_wait: 1s`, `extra` settings)
/// including `include`, shipping to the file `<dir>/out.jsonl`.
fn config(dir: &Path, include: &str, extra: &str) -> Config {
    let yaml = format!(
        "checkpoint_dir: {ckpt}\nsources:\n  app:\n    include: ['{include}']\n    format: plain\n    rescan_interval: 100ms\n    rotate_wait: 1s\n{extra}sinks:\n  out:\n    type: file\n    path: {out}\n    batch: {{timeout: 50ms}}\n",
        ckpt = dir.join("ckpt").display(),
        out = dir.join("out.jsonl").display(),
    );
    Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The messages shipped so far, in order.
fn shipped(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["message"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn write(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` messages are shipped, then a little longer (several rescans) for any
/// duplicate to show, and asserts they are `want`, each once, in any order.
async fn assert_shipped_once(dir: &Path, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while shipped(dir).len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want:?}, shipped {:?}",
            shipped(dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = shipped(dir);
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(got, want);
}

/// A file renamed out of the globs is drained and closed; renamed back, it is read on from
/// where it ended, not again from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_leaves_the_globs_and_comes_back_is_read_on_from_where_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("a.log");
    let away = logs.join("a.log.old");
    write(&app, "line 1\nline 2\nline 3\n");
    let stats = Arc::new(Stats::default());
    let cfg = config(dir.path(), &format!("{}/*.log", logs.display()), "");
    let p = Pipeline::start(&cfg, &stats).unwrap();
    assert_shipped_once(dir.path(), &["line 1", "line 2", "line 3"]).await;
    std::fs::rename(&app, &away).unwrap();
    let name = app.display().to_string();
    wait_for("a.log drained and closed", 10, || {
        stats.file("app", &name).is_none()
    })
    .await;
    std::fs::rename(&away, &app).unwrap();
    write(&app, "line 4\n");
    assert_shipped_once(dir.path(), &["line 1", "line 2", "line 3", "line 4"]).await;
    p.stop(GRACE).await;
}

/// A file cut by `max_files` (a new file sorts before it) is drained and closed; back within
/// the limit, it is read on from where it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_back_within_max_files_is_read_on_from_where_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (a, b, c) = (logs.join("a.log"), logs.join("b.log"), logs.join("c.log"));
    write(&b, "b 1\nb 2\n");
    write(&c, "c 1\nc 2\n");
    let stats = Arc::new(Stats::default());
    let cfg = config(
        dir.path(),
        &format!("{}/*.log", logs.display()),
        "    max_files: 2\n",
    );
    let p = Pipeline::start(&cfg, &stats).unwrap();
    assert_shipped_once(dir.path(), &["b 1", "b 2", "c 1", "c 2"]).await;
    write(&a, "a 1\n");
    let name = c.display().to_string();
    wait_for("c.log cut by max_files, drained and closed", 10, || {
        stats.file("app", &name).is_none()
    })
    .await;
    wait_for("a.log read", 10, || shipped(dir.path()).len() == 5).await;
    std::fs::remove_file(&a).unwrap();
    write(&c, "c 3\n");
    assert_shipped_once(dir.path(), &["a 1", "b 1", "b 2", "c 1", "c 2", "c 3"]).await;
    p.stop(GRACE).await;
}

/// One file whose name is not UTF-8 among others: every file's position is checkpointed
/// (that one's too), and a restart reads on from there, repeating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_that_is_not_utf8_keeps_every_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let good = logs.join("good.log");
    let bad = logs.join(OsStr::from_bytes(b"bad\xff.log"));
    write(&good, "good 1\n");
    write(&bad, "bad 1\n");
    let stats = Arc::new(Stats::default());
    let cfg = config(dir.path(), &format!("{}/*.log", logs.display()), "");
    let p = Pipeline::start(&cfg, &stats).unwrap();
    assert_shipped_once(dir.path(), &["good 1", "bad 1"]).await;
    let ckpt = log_pipeline::checkpoint::path_for(&dir.path().join("ckpt"), "app");
    let positions = || -> Vec<(PathBuf, u64)> {
        let mut v: Vec<(PathBuf, u64)> = log_pipeline::checkpoint::load(&ckpt)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.path, e.offset))
            .collect();
        v.sort();
        v
    };
    wait_for("both files checkpointed", 10, || {
        positions() == [(bad.clone(), 6), (good.clone(), 7)]
    })
    .await;
    p.stop(GRACE).await;
    assert_eq!(
        stats
            .source("app")
            .checkpoint
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    write(&good, "good 2\n");
    write(&bad, "bad 2\n");
    let p = Pipeline::start(&cfg, &stats).unwrap();
    assert_shipped_once(dir.path(), &["good 1", "bad 1", "good 2", "bad 2"]).await;
    p.stop(GRACE).await;
}

/// A tree deeper than `PATH_MAX` under the globs: the files above are read, and what cannot be
/// reached is counted (by kind), not silently skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_past_path_max_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    write(&logs.join("top.log"), "top 1\n");
    let name = "d".repeat(250);
    let made = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "cd '{}' && for i in $(seq 20); do mkdir {name} && cd {name} || exit 1; done && echo deep > deep.log",
            logs.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let stats = Arc::new(Stats::default());
    let cfg = config(dir.path(), &format!("{}/**/*.log", logs.display()), "");
    let p = Pipeline::start(&cfg, &stats).unwrap();
    assert_shipped_once(dir.path(), &["top 1"]).await;
    let metric = |kind: &str| -> f64 {
        let prefix =
            format!("log_shipper_source_path_errors_total{{source=\"app\",kind=\"{kind}\"}} ");
        stats
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(metric("name_too_long") >= 1.0, "{}", stats.render());
    assert_eq!(metric("permission"), 0.0);
    p.stop(GRACE).await;
}
