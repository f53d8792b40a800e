//! The disk buffer against the test receiver: an outage longer than the files' rotation
//! loses nothing with it (and loses whole files without it), a restart replays the buffer
//! exactly, a torn trailing frame is skipped and counted, `drop_newest` counts exactly what
//! the receiver lacks, and bad settings are refused with the field named.

mod receiver;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log_pipeline::config::Config;
use log_pipeline::pipeline::Pipeline;
use log_pipeline::stats::Stats;
use receiver::{Received, Receiver};

fn config(dir: &Path, file_glob: &str, url: &str, buffer: &str) -> Config {
    let yaml = format!(
        "checkpoint_dir: {ckpt}
fields: {{ins: pg-test-1, ip: 127.0.0.1, cls: pg-test}}
sources:
  app:
    include: ['{file_glob}']
    format: plain
    rescan_interval: 200ms
    rotate_wait: 1s
sinks:
  vl:
    type: victorialogs
    endpoint: {url}
    batch: {{timeout: 100ms, max_events: 2000}}
    retry: {{initial_backoff: 100ms, max_backoff: 300ms}}
    buffer: {buffer}
",
        ckpt = dir.join("ckpt").display(),
    );
    Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn line(n: u64) -> String {
    format!("seq={n} some padding to make the line about a hundred bytes long, like a real log\n")
}

fn append(path: &Path, range: std::ops::Range<u64>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let buf: String = range.map(line).collect();
    f.write_all(buf.as_bytes()).unwrap();
}

fn counts(rx: &Receiver) -> BTreeMap<u64, usize> {
    rx.seq_counts(|_| true)
}

fn assert_exactly_once(rx: &Receiver, n: u64) {
    let c = counts(rx);
    let missing: Vec<u64> = (0..n).filter(|i| !c.contains_key(i)).take(10).collect();
    let dups: Vec<(&u64, &usize)> = c.iter().filter(|(_, v)| **v > 1).take(10).collect();
    assert!(missing.is_empty(), "missing {missing:?}");
    assert!(dups.is_empty(), "duplicates {dups:?}");
    assert_eq!(c.len() as u64, n, "unexpected extra records");
}

async fn wait_distinct(rx: &Receiver, n: u64, secs: u64) {
    rx.wait_for(secs, &format!("{n} distinct records"), |rs| {
        let mut seen = std::collections::HashSet::new();
        for r in rs {
            seen.insert(r.seq());
        }
        seen.len() as u64 >= n
    })
    .await;
}

/// Waits until `pred` holds, or panics after `secs`.
async fn wait_until(secs: u64, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn checkpoint_offset(dir: &Path, file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("ckpt/app.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["files"]
        .as_array()?
        .iter()
        .find(|e| e["path"].as_str() == file.to_str())
        .and_then(|e| e["offset"].as_u64())
}

fn metric(stats: &Stats, name_and_labels: &str) -> Option<f64> {
    stats.render().lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("ckpt/buffer/vl"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Lines per log file, files in all.
const PER_FILE: u64 = 20_000;
const FILES: u64 = 5;

/// The receiver is down while a writer fills `app.log` and rotates it away `FILES - 1`
/// times the way logrotate with `rotate 1` does (rename to `app.log.1`, which deletes the
/// previous `app.log.1`). Returns the sequence numbers received once the receiver is back.
async fn outage_longer_than_rotation(buffer: &str) -> (BTreeMap<u64, usize>, Arc<Stats>) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("app.log");
    let mut rx = Receiver::start().await;
    rx.stop().await;
    let cfg = config(dir.path(), &file.display().to_string(), &rx.url(), buffer);
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    for k in 0..FILES {
        append(&file, k * PER_FILE..(k + 1) * PER_FILE);
        // The tailer is told at once (notify); give it time to open the file.
        tokio::time::sleep(Duration::from_millis(700)).await;
        if k + 1 < FILES {
            std::fs::rename(&file, logs.join("app.log.1")).unwrap();
        }
    }
    let read = || stats.source("app").records.load(Ordering::Relaxed);
    // With a disk buffer everything is read during the outage; without, reading pauses.
    let deadline = Instant::now() + Duration::from_secs(20);
    while read() < FILES * PER_FILE && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if buffer.contains("disk") {
        assert_eq!(read(), FILES * PER_FILE, "the tailer kept reading");
        // Everything is acknowledged (on disk): the checkpoint is at the end of the file.
        let size = std::fs::metadata(&file).unwrap().len();
        wait_until(10, "the checkpoint at the end", || {
            checkpoint_offset(dir.path(), &file) == Some(size)
        })
        .await;
        let on_disk = metric(&stats, "log_shipper_disk_buffer_bytes{sink=\"vl\"}").unwrap();
        assert!(on_disk > (FILES * PER_FILE * 100) as f64, "{on_disk}");
        assert_eq!(
            metric(&stats, "log_shipper_disk_buffer_max_bytes{sink=\"vl\"}"),
            Some(64.0 * 1024.0 * 1024.0)
        );
    } else {
        assert!(read() < PER_FILE, "reading paused: {}", read());
    }
    rx.restart().await;
    // Everything the shipper can still deliver: the current file's last line.
    let last = (FILES * PER_FILE) - 1;
    rx.wait_for(60, "the last line", |rs| rs.iter().any(|r| r.seq() == last))
        .await;
    let size = std::fs::metadata(&file).unwrap().len();
    wait_until(30, "the checkpoint at the end", || {
        checkpoint_offset(dir.path(), &file) == Some(size)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop(Duration::from_secs(5)).await;
    (counts(&rx), stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_rotation_loses_nothing_with_a_disk_buffer() {
    let (got, stats) = outage_longer_than_rotation("{type: disk, max_size: 64MiB}").await;
    let missing: Vec<u64> = (0..FILES * PER_FILE)
        .filter(|n| !got.contains_key(n))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "missing {missing:?}");
    let dups = got.values().filter(|c| **c > 1).count();
    assert_eq!(dups, 0, "duplicates");
    assert_eq!(got.len() as u64, FILES * PER_FILE);
    let sink = stats.sink("vl");
    assert_eq!(sink.buffer_dropped_events.load(Ordering::Relaxed), 0);
    assert_eq!(sink.events_sent.load(Ordering::Relaxed), FILES * PER_FILE);
    assert_eq!(stats.source("app").lost_bytes.load(Ordering::Relaxed), 0);

    // The same outage with the memory buffer alone: reading pauses, and the files rotated
    // away and deleted meanwhile are never seen at all — lost, and no tailer can know it.
    let (got, stats) = outage_longer_than_rotation("{max_chunks: 2}").await;
    let lost: Vec<u64> = (0..FILES * PER_FILE)
        .filter(|n| !got.contains_key(n))
        .collect();
    // The first file was open (its descriptor keeps it readable) and the last one is still
    // there; every file in between is gone.
    assert!(
        lost == (PER_FILE..(FILES - 1) * PER_FILE).collect::<Vec<_>>(),
        "lost {} lines, from {:?} to {:?}",
        lost.len(),
        lost.first(),
        lost.last()
    );
    assert_eq!(stats.source("app").lost_bytes.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_the_disk_buffer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    let cfg = config(
        dir.path(),
        &file.display().to_string(),
        &rx.url(),
        "{type: disk, max_size: 2MiB, when_full: block}",
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 0..1000);
    wait_distinct(&rx, 1000, 30).await;
    rx.stop().await;
    // 5000 lines (~850 KB of frames) into a 2 MiB buffer: all fit, all acknowledged.
    append(&file, 1000..6000);
    let size = std::fs::metadata(&file).unwrap().len();
    wait_until(20, "the checkpoint at the end", || {
        checkpoint_offset(dir.path(), &file) == Some(size)
    })
    .await;
    p.stop(Duration::from_secs(1)).await;
    assert!(
        metric(&stats, "log_shipper_disk_buffer_bytes{sink=\"vl\"}").unwrap() > 500_000.0,
        "{}",
        stats.render()
    );

    // Written while stopped: read after the buffer's records.
    append(&file, 6000..7000);
    rx.restart().await;
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, 7000, 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop(Duration::from_secs(5)).await;
    assert_exactly_once(&rx, 7000);
    // Order: the buffer first, then the file.
    let order: Vec<u64> = rx.records().iter().map(Received::seq).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(
        stats
            .sink("vl")
            .disk_buffer_corrupt_frames
            .load(Ordering::Relaxed),
        0
    );
    // Delivered segments are deleted: what is left is at most the one being written.
    assert!(
        segments(dir.path()).len() <= 2,
        "{:?}",
        segments(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_trailing_frame_is_detected_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    rx.stop().await;
    let cfg = config(
        dir.path(),
        &file.display().to_string(),
        &rx.url(),
        "{type: disk, max_size: 8MiB}",
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 0..3000);
    let size = std::fs::metadata(&file).unwrap().len();
    wait_until(20, "the checkpoint at the end", || {
        checkpoint_offset(dir.path(), &file) == Some(size)
    })
    .await;
    p.stop(Duration::from_secs(1)).await;

    // A crash in the middle of a write: the last segment ends with half a frame (a header
    // announcing 300 bytes, 40 of them there).
    let last = segments(dir.path())
        .into_iter()
        .rfind(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut torn = 300u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 44]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    rx.restart().await;
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 3000..3500);
    wait_distinct(&rx, 3500, 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop(Duration::from_secs(5)).await;
    assert_exactly_once(&rx, 3500);
    let sink = stats.sink("vl");
    assert_eq!(sink.disk_buffer_corrupt_frames.load(Ordering::Relaxed), 1);
    assert_eq!(sink.disk_buffer_corrupt_bytes.load(Ordering::Relaxed), 48);
    assert_eq!(
        metric(
            &stats,
            "log_shipper_disk_buffer_corrupt_frames_total{sink=\"vl\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_counts_exactly_what_the_receiver_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    rx.stop().await;
    let cfg = config(
        dir.path(),
        &file.display().to_string(),
        &rx.url(),
        "{type: disk, max_size: 64KiB, when_full: drop_newest}",
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    let total = 3000;
    append(&file, 0..total);
    // Dropped records are acknowledged: reading goes on to the end.
    let size = std::fs::metadata(&file).unwrap().len();
    wait_until(20, "the checkpoint at the end", || {
        checkpoint_offset(dir.path(), &file) == Some(size)
    })
    .await;
    let dropped = stats
        .sink("vl")
        .buffer_dropped_events
        .load(Ordering::Relaxed);
    assert!(dropped > total / 2, "dropped {dropped}");
    assert!(
        metric(&stats, "log_shipper_disk_buffer_bytes{sink=\"vl\"}").unwrap() <= 65536.0,
        "{}",
        stats.render()
    );
    rx.restart().await;
    wait_distinct(&rx, total - dropped, 30).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    p.stop(Duration::from_secs(5)).await;
    let got = counts(&rx);
    assert!(got.values().all(|c| *c == 1), "duplicates");
    // The oldest records were kept, the newest dropped, and every drop is counted.
    let kept = total - dropped;
    let keys: Vec<u64> = got.keys().copied().collect();
    assert!(
        keys == (0..kept).collect::<Vec<_>>(),
        "kept {kept}, received {} from {:?} to {:?}",
        keys.len(),
        keys.first(),
        keys.last()
    );
    assert_eq!(
        metric(
            &stats,
            "log_shipper_buffer_dropped_events_total{sink=\"vl\"}"
        ),
        Some(dropped as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_buffer_settings_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::parse(&format!(
        "checkpoint_dir: {}\nsources: {{app: {{include: [/x], format: plain}}}}\nsinks: {{vl: {{type: file, path: /tmp/x, buffer: {{type: disk}}}}}}\n",
        dir.path().display()
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "sinks.vl.buffer.max_size: is required with type: disk"
    );
    // A path that cannot be a directory fails at start, naming the sink and the field.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let rx = Receiver::start().await;
    let cfg = config(
        dir.path(),
        "/nonexistent/*.log",
        &rx.url(),
        &format!(
            "{{type: disk, max_size: 1MiB, path: {}}}",
            not_a_dir.display()
        ),
    );
    let e = Pipeline::start(&cfg, &Arc::new(Stats::default())).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "sinks.vl.buffer.path: {} is not a directory",
            not_a_dir.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_gone_before_its_records_were_acknowledged_is_counted_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    rx.stop().await;
    // Memory buffer only: read records wait in memory while the receiver is down.
    let cfg = config(
        dir.path(),
        &file.display().to_string(),
        &rx.url(),
        "{max_chunks: 2}",
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 0..1000);
    wait_until(10, "the records read", || {
        stats.source("app").records.load(Ordering::Relaxed) == 1000
    })
    .await;
    p.stop(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(dir.path().join("ckpt/app.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &v["files"][0];
    let unacknowledged = entry["read"].as_u64().unwrap() - entry["offset"].as_u64().unwrap();
    assert_eq!(unacknowledged, std::fs::metadata(&file).unwrap().len());

    // Deleted while the shipper was down: what was read but not delivered is gone.
    std::fs::remove_file(&file).unwrap();
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_until(10, "the loss counted", || {
        stats.source("app").lost_bytes.load(Ordering::Relaxed) > 0
    })
    .await;
    p.stop(Duration::from_millis(500)).await;
    assert_eq!(
        metric(
            &stats,
            "log_shipper_source_lost_bytes_total{source=\"app\"}"
        ),
        Some(unacknowledged as f64)
    );
}
