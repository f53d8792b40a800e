//! The whole pipeline against the test receiver: exactly once in normal operation (per API and
//! per endpoint, with the compression asked for), nothing lost across receiver outages,
//! rotations under load, truncations, reused inodes and restarts, excluded files never read,
//! dead letters on 400, huge records and invalid UTF-8 counted, backpressure with a bounded
//! buffer.

mod receiver;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log_pipeline::config::Config;
use log_pipeline::pipeline::Pipeline;
use log_pipeline::stats::Stats;
use receiver::{Received, Receiver};

const GRACE: Duration = Duration::from_secs(5);

fn config(dir: &Path, sources: &str, sinks: &str) -> Config {
    let yaml = format!(
        "checkpoint_dir: {}\nfields: {{ins: pg-test-1, ip: 127.0.0.1, cls: pg-test}}\nsources:\n{sources}\nsinks:\n{sinks}\n",
        dir.join("ckpt").display()
    );
    Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn plain_source(name: &str, include: &str) -> String {
    format!(
        "  {name}:\n    include: ['{include}']\n    format: plain\n    rescan_interval: 200ms\n    rotate_wait: 1s\n"
    )
}

fn vl_sink(name: &str, url: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    type: victorialogs\n    endpoint: {url}\n    batch: {{timeout: 100ms, max_events: 2000}}\n    retry: {{initial_backoff: 100ms, max_backoff: 500ms}}\n{extra}"
    )
}

/// Appends lines `seq=<n> <padding>` for `range` to `path`.
fn append(path: &Path, range: std::ops::Range<u64>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = String::new();
    for n in range {
        buf.push_str(&format!("seq={n} some padding to make the line about a hundred bytes long, like a real log line\n"));
    }
    f.write_all(buf.as_bytes()).unwrap();
}

/// Counts per sequence number of the records received through `api`.
fn counts(rx: &Receiver, api: &str) -> BTreeMap<u64, usize> {
    rx.seq_counts(|r| r.api == api)
}

fn assert_exactly_once(rx: &Receiver, api: &str, n: u64) {
    assert_exactly_once_where(rx, api, n, |r| r.api == api);
}

/// Asserts that the records `keep` accepts are `seq=0..n`, each once.
fn assert_exactly_once_where(rx: &Receiver, what: &str, n: u64, keep: impl Fn(&Received) -> bool) {
    let c = rx.seq_counts(keep);
    let missing: Vec<u64> = (0..n).filter(|i| !c.contains_key(i)).take(10).collect();
    let dups: Vec<(&u64, &usize)> = c.iter().filter(|(_, v)| **v > 1).take(10).collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?}");
    assert!(dups.is_empty(), "{what}: duplicates {dups:?}");
    assert_eq!(c.len() as u64, n, "{what}: unexpected extra records");
}

async fn wait_distinct(rx: &Receiver, api: &str, n: u64, secs: u64) {
    wait_distinct_where(rx, &format!("via {api}"), n, secs, |r| r.api == api).await;
}

/// Waits until `n` distinct sequence numbers arrived among the records `keep` accepts.
async fn wait_distinct_where(
    rx: &Receiver,
    what: &str,
    n: u64,
    secs: u64,
    keep: impl Fn(&Received) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let seen: std::collections::BTreeSet<u64> = rx
            .records()
            .iter()
            .filter(|r| keep(r))
            .map(Received::seq)
            .collect();
        if seen.len() as u64 >= n {
            return;
        }
        if std::time::Instant::now() > deadline {
            // Which ranges are missing tells a lost file from a slow reader.
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for i in (0..n).filter(|i| !seen.contains(i)) {
                match ranges.last_mut() {
                    Some((_, end)) if *end + 1 == i => *end = i,
                    _ => ranges.push((i, i)),
                }
            }
            panic!(
                "timed out after {secs} s waiting for {n} distinct records {what}: have {}, missing {} in ranges {:?}",
                seen.len(),
                n - seen.len() as u64,
                &ranges[..ranges.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The entries of `source`'s checkpoint file (none while there is no file).
fn checkpoint_entries(dir: &Path, source: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("ckpt").join(format!("{source}.json")))
        .unwrap_or_default();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match v["files"].take() {
        serde_json::Value::Array(a) => a,
        _ => Vec::new(),
    }
}

fn checkpoint_offsets(dir: &Path, source: &str) -> Vec<(PathBuf, u64, bool)> {
    checkpoint_entries(dir, source)
        .iter()
        .map(|e| {
            (
                PathBuf::from(e["path"].as_str().unwrap()),
                e["offset"].as_u64().unwrap(),
                e["dead"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

async fn wait_checkpoint(dir: &Path, source: &str, path: &Path, offset: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if checkpoint_offsets(dir, source)
            .iter()
            .any(|(p, o, _)| p == path && *o == offset)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "checkpoint of {} never reached {offset}: {:?}",
        path.display(),
        checkpoint_offsets(dir, source)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_gets_every_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("app.log");
    append(&file, 0..1500);
    let rx = Receiver::start().await;
    let url = rx.url();
    let sinks = [
        vl_sink("vl", &url, "    compression: gzip\n"),
        format!("  loki_proto:\n    type: loki\n    endpoint: {url}\n    batch: {{timeout: 100ms, max_events: 700}}\n"),
        format!("  loki_json:\n    type: loki\n    endpoint: {url}\n    encoding: json\n    compression: gzip\n    batch: {{timeout: 100ms}}\n"),
        format!("  vl_loki:\n    type: victorialogs\n    api: loki\n    endpoint: {url}\n    encoding: json\n    batch: {{timeout: 100ms}}\n"),
        format!("  vl_loki_proto:\n    type: victorialogs\n    api: loki\n    endpoint: {url}\n    batch: {{timeout: 100ms, max_events: 700}}\n"),
        format!("  debug:\n    type: file\n    path: {}\n    batch: {{timeout: 100ms}}\n", dir.path().join("out.jsonl").display()),
    ]
    .concat();
    // Loki and VictoriaLogs' Loki endpoint share the encodings: the request path tells the
    // sinks apart. VictoriaLogs takes the message from `_msg` unless `_msg_field` names
    // another field, so without the argument every record would be stored with no message.
    let vl_loki_path = "/insert/loki/api/v1/push?_msg_field=message";
    let streams = [
        ("vl", "jsonline", "/insert/jsonline"),
        ("loki_proto", "loki_proto", "/loki/api/v1/push"),
        ("loki_json", "loki_json", "/loki/api/v1/push"),
        ("vl_loki", "loki_json", vl_loki_path),
        ("vl_loki_proto", "loki_proto", vl_loki_path),
    ];
    let cfg = config(
        dir.path(),
        &plain_source("app", &format!("{}/*.log", logs.display())),
        &sinks,
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 1500..3000);
    for (sink, api, path) in streams {
        wait_distinct_where(&rx, &format!("for {sink}"), 3000, 60, |r| {
            r.api == api && r.path_and_query == path
        })
        .await;
    }
    wait_checkpoint(
        dir.path(),
        "app",
        &file,
        std::fs::metadata(&file).unwrap().len(),
    )
    .await;
    p.stop(GRACE).await;

    for (sink, api, path) in streams {
        assert_exactly_once_where(&rx, sink, 3000, |r| {
            r.api == api && r.path_and_query == path
        });
    }
    assert_eq!(rx.records().len(), 3000 * streams.len());
    let requests = rx.requests();
    for req in &requests {
        assert!(matches!(req.status, 200 | 204), "{req:?}");
        match req.path.as_str() {
            "/insert/loki/api/v1/push" => {
                assert_eq!(req.query_args(), vec![("_msg_field", "message")], "{req:?}");
            }
            "/insert/jsonline" | "/loki/api/v1/push" => assert_eq!(req.query, "", "{req:?}"),
            other => panic!("request to {other}"),
        }
        if req.content_type() == Some("application/x-protobuf") {
            // Snappy is implied: VictoriaLogs would read any other encoding named here.
            assert_eq!(req.content_encoding(), None, "{req:?}");
        }
    }
    for content_type in ["application/json", "application/x-protobuf"] {
        assert!(
            requests
                .iter()
                .any(|r| r.path == "/insert/loki/api/v1/push"
                    && r.content_type() == Some(content_type)),
            "no {content_type} request to VictoriaLogs' Loki endpoint"
        );
    }
    let vl_loki = rx
        .records()
        .into_iter()
        .find(|r| r.api == "loki_proto" && r.path_and_query == vl_loki_path)
        .unwrap();
    // VictoriaLogs' stream fields are the Loki labels: the sink's `stream_fields`.
    assert_eq!(
        vl_loki
            .labels
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["ins", "ip", "job"]
    );
    assert_eq!(vl_loki.fields["cls"], "pg-test");
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(out.lines().count(), 3000);

    let vl = &rx.records_of("jsonline")[0];
    assert_eq!(vl.labels.get("job").map(String::as_str), Some("syslog"));
    assert_eq!(vl.labels.get("ins").map(String::as_str), Some("pg-test-1"));
    assert_eq!(vl.fields["level"], "info");
    assert_eq!(vl.fields["cls"], "pg-test");
    let lp = rx
        .records_of("loki_proto")
        .into_iter()
        .find(|r| r.path_and_query == "/loki/api/v1/push")
        .unwrap();
    assert_eq!(
        lp.labels.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["cls", "ins", "ip", "job"]
    );
    assert!(lp.time_ns > 0);
    let sent = stats.sink("vl").events_sent.load(Ordering::Relaxed);
    assert_eq!(sent, 3000);
    let metrics = stats.render();
    assert!(
        metrics.contains("log_shipper_sink_events_sent_total{sink=\"loki_proto\"} 3000"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_path_and_a_query_gets_the_api_path_joined_and_the_query_kept() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let file = logs.join("app.log");
    append(&file, 0..100);
    // The receiver's routes, also under a path prefix (a reverse proxy's).
    let rx = Receiver::detached();
    let app = rx.app().merge(rx.app_at("/proxy/logs"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let sink = |name: &str, kind: &str, endpoint: &str| {
        format!(
            "  {name}:\n    type: {kind}\n    endpoint: '{url}{endpoint}'\n    batch: {{timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 500ms}}\n"
        )
    };
    let sinks = [
        sink("vl", "victorialogs", "/?tenant=x"),
        sink("loki", "loki", "/?tenant=x&x=1"),
        format!(
            "{}    api: loki\n",
            sink("vl_loki", "victorialogs", "/proxy/logs/?tenant=y")
        ),
        sink("loki_prefix", "loki", "/proxy/logs?tenant=z"),
    ]
    .concat();
    let streams = [
        ("vl", "jsonline", "/insert/jsonline?tenant=x"),
        ("loki", "loki_proto", "/loki/api/v1/push?tenant=x&x=1"),
        (
            "vl_loki",
            "loki_proto",
            "/proxy/logs/insert/loki/api/v1/push?tenant=y&_msg_field=message",
        ),
        (
            "loki_prefix",
            "loki_proto",
            "/proxy/logs/loki/api/v1/push?tenant=z",
        ),
    ];
    let cfg = config(
        dir.path(),
        &plain_source("app", &format!("{}/*.log", logs.display())),
        &sinks,
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    for (sink, api, path) in streams {
        wait_distinct_where(&rx, &format!("for {sink} at {path}"), 100, 20, |r| {
            r.api == api && r.path_and_query == path
        })
        .await;
    }
    p.stop(GRACE).await;
    server.abort();
    for (sink, api, path) in streams {
        assert_exactly_once_where(&rx, sink, 100, |r| r.api == api && r.path_and_query == path);
    }
    for req in rx.requests() {
        assert!(matches!(req.status, 200 | 204), "{req:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_receiver_is_down_or_failing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &vl_sink("vl", &rx.url(), ""),
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 0..500);
    wait_distinct(&rx, "jsonline", 500, 30).await;

    // Down: connections refused.
    rx.stop().await;
    append(&file, 500..1000);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stats.sink("vl").requests_retried.load(Ordering::Relaxed) > 0);
    let before = checkpoint_offsets(dir.path(), "app");
    rx.restart().await;
    wait_distinct(&rx, "jsonline", 1000, 30).await;
    assert!(
        before.iter().all(|(_, o, _)| *o <= 500 * 100),
        "checkpoint moved during the outage: {before:?}"
    );

    // Failing: 503 and 429 are retried.
    rx.set_status(Some(503));
    append(&file, 1000..1500);
    tokio::time::sleep(Duration::from_secs(1)).await;
    rx.set_status(Some(429));
    tokio::time::sleep(Duration::from_secs(1)).await;
    rx.set_status(None);
    wait_distinct(&rx, "jsonline", 1500, 30).await;
    p.stop(GRACE).await;
    assert_exactly_once(&rx, "jsonline", 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_receiver_is_down_for_30_s() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    // The first attempt after the receiver is back comes at most max_backoff later: 2 s
    // keeps the test (like a real recovery) short, where the default 30 s could add 30 s.
    let sink = vl_sink("vl", &rx.url(), "").replace("max_backoff: 500ms", "max_backoff: 2s");
    assert!(sink.contains("max_backoff: 2s"), "{sink}");
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &sink,
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 0..500);
    wait_distinct(&rx, "jsonline", 500, 30).await;
    let delivered = std::fs::metadata(&file).unwrap().len();
    wait_checkpoint(dir.path(), "app", &file, delivered).await;

    rx.stop().await;
    let requests_before = rx.requests().len();
    let retried_before = stats.sink("vl").requests_retried.load(Ordering::Relaxed);
    let down = Instant::now();
    let mut n = 500;
    while down.elapsed() < Duration::from_secs(30) {
        append(&file, n..n + 50);
        n += 50;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rx.requests().len(),
        requests_before,
        "the receiver answered while it was meant to be down"
    );
    // Backoffs double from 100 ms up to 2 s (jittered to 1–2 s): about 23 attempts in 30 s.
    // Far fewer means the sink gave up or stalled during the outage.
    let retried = stats.sink("vl").requests_retried.load(Ordering::Relaxed) - retried_before;
    assert!(retried >= 10, "only {retried} retries in 30 s down");
    let during = checkpoint_offsets(dir.path(), "app");
    assert!(
        during.iter().all(|(_, o, _)| *o <= delivered),
        "checkpoint moved during the outage: {during:?}"
    );

    rx.restart().await;
    let back = Instant::now();
    wait_distinct(&rx, "jsonline", n, 60).await;
    let recovered = back.elapsed();
    wait_checkpoint(
        dir.path(),
        "app",
        &file,
        std::fs::metadata(&file).unwrap().len(),
    )
    .await;
    p.stop(GRACE).await;
    eprintln!("30 s down: {n} records, {retried} retries, all in {recovered:?} after");
    assert_exactly_once(&rx, "jsonline", n);
    // One capped backoff plus the backlog; a backoff that kept growing would show here.
    assert!(
        recovered < Duration::from_secs(15),
        "{n} records took {recovered:?} to arrive after the receiver came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_resumes_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    append(&file, 0..100);
    let rx = Receiver::start().await;
    // read_from: end: the 100 lines present at the very first start are skipped.
    let src = format!(
        "{}    read_from: end\n",
        plain_source("app", &file.display().to_string())
    );
    let cfg = config(dir.path(), &src, &vl_sink("vl", &rx.url(), ""));
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    append(&file, 100..300);
    wait_distinct(&rx, "jsonline", 200, 30).await;
    p.stop(GRACE).await;

    append(&file, 300..600);
    let other = dir.path().join("appeared_while_stopped.log");
    let cfg2 = config(
        dir.path(),
        &format!(
            "{}    read_from: end\n",
            plain_source("app", &format!("{}/*.log", dir.path().display()))
        ),
        &vl_sink("vl", &rx.url(), ""),
    );
    append(&other, 1000..1010);
    let p = Pipeline::start(&cfg2, &stats).unwrap();
    // read_from: end only applies at the very first start: the new file is read whole.
    rx.wait_for(30, "all records", |rs| rs.len() >= 510).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop(GRACE).await;
    let c = counts(&rx, "jsonline");
    assert!(!c.contains_key(&0) && !c.contains_key(&99));
    assert_eq!(c.len(), 510);
    assert!(
        c.values().all(|v| *v == 1),
        "duplicates after a graceful restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_batches_go_to_the_dead_letter_file_and_odd_records_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let rx = Receiver::start().await;
    rx.reject_containing("POISON");
    let src = format!(
        "  app:\n    include: ['{}']\n    format: plain\n",
        file.display()
    );
    let cfg = Config::parse(&format!(
        "checkpoint_dir: {}\nrecord_max_bytes: 64KiB\nmessage_max_length: 100000\nsources:\n{src}sinks:\n{}",
        dir.path().join("ckpt").display(),
        vl_sink("vl", &rx.url(), "    batch: {max_events: 1, timeout: 50ms}\n").replace("    batch: {timeout: 100ms, max_events: 2000}\n", "")
    ))
    .unwrap();
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    let mut data = Vec::new();
    data.extend_from_slice(b"seq=0 normal\n");
    data.extend_from_slice(b"seq=1 huge ");
    data.extend(std::iter::repeat_n(b'x', 3 << 20));
    data.extend_from_slice(b"\nseq=2 invalid \xff\xfe utf-8\n");
    data.extend_from_slice(b"seq=3 POISON pill\n");
    data.extend_from_slice(b"seq=4 after the poison\n");
    std::fs::write(&file, &data).unwrap();
    wait_distinct(&rx, "jsonline", 4, 30).await;
    wait_checkpoint(dir.path(), "app", &file, data.len() as u64).await;
    p.stop(GRACE).await;

    let c = counts(&rx, "jsonline");
    assert_eq!(c.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 4]);
    let recs = rx.records();
    let huge = recs.iter().find(|r| r.seq() == 1).unwrap();
    assert!(
        huge.message()
            .ends_with("[truncated: record over the size limit]")
    );
    assert!(huge.message().len() < 70 * 1024);
    let bad = recs.iter().find(|r| r.seq() == 2).unwrap();
    assert_eq!(bad.message(), "seq=2 invalid \u{fffd}\u{fffd} utf-8");
    let dl = std::fs::read_to_string(dir.path().join("ckpt/dead_letter/vl.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = dl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 400);
    assert_eq!(lines[0]["record"]["message"], "seq=3 POISON pill");
    let src = stats.source("app");
    assert_eq!(src.truncated.load(Ordering::Relaxed), 1);
    assert_eq!(src.invalid_utf8.load(Ordering::Relaxed), 1);
    assert_eq!(stats.sink("vl").events_failed.load(Ordering::Relaxed), 1);
    assert_eq!(rx.rejected(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_pauses_reading() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    rx.stop().await;
    append(&file, 0..100_000);
    let size = std::fs::metadata(&file).unwrap().len();
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &vl_sink("vl", &rx.url(), "    buffer: {max_chunks: 2}\n"),
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let f = stats
        .file("app", &file.display().to_string())
        .expect("file stats");
    // One batch in flight, two chunks buffered, one chunk blocked in the tailer.
    assert!(
        f.position < size / 2,
        "read {} of {size} bytes while the sink is down",
        f.position
    );
    assert!(
        stats
            .render()
            .contains("log_shipper_buffer_capacity_chunks{sink=\"vl\"} 2")
    );
    rx.restart().await;
    wait_distinct(&rx, "jsonline", 100_000, 120).await;
    p.stop(GRACE).await;
    assert_exactly_once(&rx, "jsonline", 100_000);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rotation {
    /// logrotate `create`: rename, keep writing to the old file a moment, then reopen.
    Rename,
    /// logrotate `copytruncate`, with the copy in the globs.
    CopyTruncate,
    /// PostgreSQL's `log_truncate_on_rotation`: the same file truncated in place, once its
    /// content was shipped.
    TruncateInPlace,
}

/// What a writer did.
#[derive(Debug)]
struct Written {
    bytes: u64,
    /// From the first write to the last, without the waits before in-place truncations.
    writing: Duration,
    /// Those waits.
    waited: Duration,
}

impl Written {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.writing.as_secs_f64()
    }
}

/// A writer appending numbered lines at `mib_per_s` to `dir/app.log`, rotating every `every`
/// lines, `total` lines in all.
fn writer(
    dir: &Path,
    kind: Rotation,
    total: u64,
    every: u64,
    mib_per_s: f64,
    received: &receiver::ReceiverHandle,
) -> Written {
    let path = dir.join("app.log");
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    };
    let line = |n: u64| {
        let head = format!("seq={n} ");
        format!("{head}{}\n", "p".repeat(90 - head.len()))
    };
    let mut f = open(&path);
    let bytes_per_s = mib_per_s * 1024.0 * 1024.0;
    let start = Instant::now();
    let mut waited = Duration::ZERO;
    let mut written = 0u64;
    let mut last_write = start;
    let mut rotations = 0;
    let mut n = 0;
    while n < total {
        // Paced on the bytes actually written (lines vary in length), and everything due by
        // now goes in one write: a writer that was descheduled catches up instead of lagging.
        let due = ((start.elapsed() - waited).as_secs_f64() * bytes_per_s) as u64;
        let mut buf = String::new();
        let mut rotate_after = false;
        loop {
            buf.push_str(&line(n));
            n += 1;
            if n % every == 0 {
                rotate_after = true;
                break;
            }
            if n == total || written + buf.len() as u64 >= due {
                break;
            }
        }
        f.write_all(buf.as_bytes()).unwrap();
        written += buf.len() as u64;
        if rotate_after && n < total {
            rotations += 1;
            match kind {
                Rotation::Rename => {
                    std::fs::rename(&path, dir.join(format!("app.log.{rotations}"))).unwrap();
                    // The writer has not reopened yet: a few lines still go to the old file.
                    let mut late = String::new();
                    for _ in 0..50 {
                        late.push_str(&format!("seq={n} late line written to the rotated file\n"));
                        n += 1;
                    }
                    f.write_all(late.as_bytes()).unwrap();
                    written += late.len() as u64;
                    f = open(&path);
                }
                Rotation::CopyTruncate => {
                    std::fs::copy(&path, dir.join(format!("app.log.{rotations}"))).unwrap();
                    f.set_len(0).unwrap();
                }
                Rotation::TruncateInPlace => {
                    // Lines not read before the truncation are gone for any reader. PostgreSQL
                    // truncates only when it rotates (hours apart), long after the reader
                    // caught up; here rotations come every fraction of a second, so wait for
                    // the reader as time would. That wait is not writing: it is left out of
                    // the pacing and of the measured rate.
                    let wait = Instant::now();
                    let deadline = wait + Duration::from_secs(60);
                    while (received.count() as u64) < n && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    waited += wait.elapsed();
                    f.set_len(0).unwrap();
                }
            }
        }
        last_write = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
    }
    Written {
        bytes: written,
        writing: last_write - start - waited,
        waited,
    }
}

async fn rotation_case(kind: Rotation) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let rx = Receiver::start().await;
    let include = match kind {
        Rotation::CopyTruncate => format!("{}/app.log*", logs.display()),
        _ => format!("{}/app.log", logs.display()),
    };
    let cfg = config(
        dir.path(),
        &plain_source("app", &include),
        &vl_sink(
            "vl",
            &rx.url(),
            "    batch: {timeout: 100ms, max_events: 5000, max_bytes: 4MiB}\n",
        )
        .replace("    batch: {timeout: 100ms, max_events: 2000}\n", ""),
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    let total = 150_000;
    let handle = rx.handle();
    let logs2 = logs.clone();
    // Aimed well above the 5 MiB/s the case is about: a writer descheduled for a moment on a
    // loaded machine catches up, and still averages more than 5 when it ends.
    let w = std::thread::spawn(move || writer(&logs2, kind, total, 25_000, 8.0, &handle));
    let written = tokio::task::spawn_blocking(move || w.join().unwrap())
        .await
        .unwrap();
    eprintln!(
        "{kind:?}: {total} lines, {} bytes in {:?} of writing: {:.2} MiB/s ({:?} waiting for the reader)",
        written.bytes,
        written.writing,
        written.mib_per_s(),
        written.waited,
    );
    assert!(
        written.mib_per_s() >= 5.0,
        "{kind:?}: the writer reached only {:.2} MiB/s ({written:?}); the case needs 5",
        written.mib_per_s()
    );
    wait_distinct(&rx, "jsonline", total, 120).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop(GRACE).await;
    assert_exactly_once(&rx, "jsonline", total);
    if kind != Rotation::Rename {
        assert!(
            stats.source("app").truncations.load(Ordering::Relaxed) >= 5,
            "{kind:?}: truncations not seen"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_under_load_loses_and_repeats_nothing() {
    rotation_case(Rotation::Rename).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_under_load_loses_and_repeats_nothing() {
    rotation_case(Rotation::CopyTruncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_in_place_under_load_loses_and_repeats_nothing() {
    rotation_case(Rotation::TruncateInPlace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_while_stopped_drains_the_renamed_file_and_reads_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let rx = Receiver::start().await;
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &vl_sink("vl", &rx.url(), ""),
    );
    let stats = Arc::new(Stats::default());
    append(&file, 0..100);
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 100, 30).await;
    p.stop(GRACE).await;

    // While stopped: more lines, a rename rotation, late lines to the renamed file, a new file,
    // and an unrelated file reusing nothing.
    append(&file, 100..200);
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    append(&rotated, 200..250);
    append(&file, 250..300);

    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 300, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.stop(GRACE).await;
    assert_exactly_once(&rx, "jsonline", 300);
}

/// Creates `dest` holding `content` with inode number `ino` (freed just before), by creating
/// files next to it until the filesystem hands that number out again.
fn create_with_inode(ino: u64, dest: &Path, content: &[u8]) {
    let dir = dest.parent().unwrap();
    // Misses are kept until the end: removing one would free its number, and the next file
    // would most likely get that one rather than `ino`.
    let mut misses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut k = 0;
    while Instant::now() < deadline {
        k += 1;
        // Tests running beside this one create files too: one of them may take the number
        // first, a checkpoint's temporary file for instance, which frees it again at the next
        // checkpoint. So after the first thousand misses, keep trying for a while, slowly.
        if k > 1000 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let candidate = dir.join(format!("candidate-{k}"));
        let mut f = std::fs::File::create_new(&candidate).unwrap();
        if f.metadata().unwrap().ino() == ino {
            f.write_all(content).unwrap();
            drop(f);
            std::fs::rename(&candidate, dest).unwrap();
            for m in misses {
                std::fs::remove_file(m).unwrap();
            }
            return;
        }
        misses.push(candidate);
    }
    panic!(
        "{} never reused inode {ino} in {k} new files over 20 s: this test needs a filesystem \
         that reuses freed inode numbers (ext4 and xfs do, tmpfs does not); set TMPDIR to one",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_inode_is_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let rx = Receiver::start().await;
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &vl_sink("vl", &rx.url(), ""),
    );
    let stats = Arc::new(Stats::default());
    append(&file, 0..100);
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 100, 30).await;
    p.stop(GRACE).await;

    let old = std::fs::metadata(&file).unwrap();
    let entries = checkpoint_entries(dir.path(), "app");
    let entry = entries
        .iter()
        .find(|e| e["path"] == file.display().to_string())
        .unwrap_or_else(|| panic!("no checkpoint entry for app.log: {entries:?}"));
    assert_eq!(
        (&entry["dev"], &entry["ino"], &entry["offset"]),
        (&old.dev().into(), &old.ino().into(), &old.len().into()),
        "{entry}"
    );

    // A new file with other content under the same name and, as the checkpoint has it, the
    // same device and inode, longer than the old offset: resuming it there (as if it were
    // the old file) would skip its first lines.
    let mut data = String::new();
    for n in 100..400 {
        data.push_str(&format!(
            "seq={n} different content in a new file with the same name\n"
        ));
    }
    assert!(data.len() as u64 > old.len());
    // The number is free from here: the next file created takes it, ours or another test's.
    std::fs::remove_file(&file).unwrap();
    create_with_inode(old.ino(), &file, data.as_bytes());
    let new = std::fs::metadata(&file).unwrap();
    assert_eq!((new.dev(), new.ino()), (old.dev(), old.ino()));

    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 400, 30).await;
    wait_checkpoint(dir.path(), "app", &file, data.len() as u64).await;
    p.stop(GRACE).await;
    assert_exactly_once(&rx, "jsonline", 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_files_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    let skip = logs.join("app-skip.log");
    let late = logs.join("late.log");
    let late_skip = logs.join("late-skip.log");
    append(&app, 0..200);
    append(&skip, 10_000..10_200);
    let rx = Receiver::start().await;
    let src = format!(
        "{}    exclude: ['{}/*-skip.log']\n",
        plain_source("app", &format!("{}/*.log", logs.display())),
        logs.display()
    );
    let cfg = config(dir.path(), &src, &vl_sink("vl", &rx.url(), ""));
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 200, 30).await;

    append(&skip, 10_200..10_300);
    // An excluded file that appears later, before an included one: by the time the included
    // one is shipped, whatever discovered it (notify or a rescan) saw the excluded one too.
    append(&late_skip, 20_000..20_100);
    append(&app, 200..300);
    append(&late, 300..400);
    wait_distinct(&rx, "jsonline", 400, 30).await;
    // Nothing left to wait for: a few rescans (200 ms) more only give a wrongly included file
    // its chance to show up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Not even opened (per-file stats go when the pipeline stops: checked before).
    assert_eq!(
        stats.source("app").files_opened.load(Ordering::Relaxed),
        2,
        "app.log and late.log only"
    );
    assert!(stats.file("app", &late.display().to_string()).is_some());
    for f in [&skip, &late_skip] {
        assert!(
            stats.file("app", &f.display().to_string()).is_none(),
            "{} was opened",
            f.display()
        );
    }
    p.stop(GRACE).await;

    let shipped: Vec<u64> = counts(&rx, "jsonline")
        .into_keys()
        .filter(|s| *s >= 10_000)
        .take(10)
        .collect();
    assert!(shipped.is_empty(), "excluded lines shipped: {shipped:?}");
    assert_exactly_once(&rx, "jsonline", 400);
    let ckpt = checkpoint_offsets(dir.path(), "app");
    assert!(ckpt.iter().any(|(p, _, _)| *p == late), "{ckpt:?}");
    assert!(
        ckpt.iter().all(|(p, _, _)| *p != skip && *p != late_skip),
        "{ckpt:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_keeps_every_position_through_a_long_first_expansion_and_a_stop_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    append(&app, 0..100);
    let end = std::fs::metadata(&app).unwrap().len();
    let rx = Receiver::start().await;
    let sink = vl_sink("vl", &rx.url(), "");
    let first = config(
        dir.path(),
        &plain_source("app", &format!("{}/*.log", logs.display())),
        &sink,
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&first, &stats).unwrap();
    wait_checkpoint(dir.path(), "app", &app, end).await;
    p.stop(GRACE).await;

    // The same source also globs a tree of 5000 directories: its first expansion takes a
    // while, and app.log is opened only after it.
    let shm = Path::new("/dev/shm");
    let tree = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    for a in 0..50 {
        for b in 0..100 {
            std::fs::create_dir_all(tree.path().join(format!("{a}/{b}"))).unwrap();
        }
    }
    let src = format!(
        "  app:\n    include: ['{}/*.log', '{}/**/*.none']\n    format: plain\n    max_directories: 100000\n",
        logs.display(),
        tree.path().display()
    );
    let second = config(dir.path(), &src, &sink);
    let positions = || {
        checkpoint_offsets(dir.path(), "app")
            .into_iter()
            .filter(|(p, _, dead)| *p == app && !dead)
            .map(|(_, o, _)| o)
            .collect::<Vec<_>>()
    };
    let p = Pipeline::start(&second, &stats).unwrap();
    // The checkpoint written at start (and every one after) still holds app.log's position.
    let watch_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < watch_until {
        assert_eq!(positions(), [end], "app.log's position was dropped");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Stopped, most likely in the middle of the expansion: the last checkpoint too.
    p.stop(GRACE).await;
    assert_eq!(positions(), [end], "app.log's position was dropped");
    assert_exactly_once(&rx, "jsonline", 100);
}

/// The files whose per-file series `/metrics` shows for `source`.
fn file_series(stats: &Stats, source: &str) -> Vec<String> {
    let prefix = format!("log_shipper_file_read_bytes_total{{source=\"{source}\",file=\"");
    stats
        .render()
        .lines()
        .filter_map(|l| Some(l.strip_prefix(&prefix)?.split('"').next()?.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reached_by_several_paths_is_read_once_under_one_name() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    let app = real.join("app.log");
    append(&app, 0..100);
    // Four more paths to the same file: a symlinked directory, a symlink that sorts first, a
    // hard link.
    std::os::unix::fs::symlink(&real, dir.path().join("via-link")).unwrap();
    std::os::unix::fs::symlink("app.log", real.join("0-current.log")).unwrap();
    std::os::unix::fs::symlink("app.log", real.join("current.log")).unwrap();
    std::fs::hard_link(&app, real.join("hard.log")).unwrap();
    let rx = Receiver::start().await;
    let src = plain_source("app", &format!("{}/*/*.log", dir.path().display()));
    let cfg = config(dir.path(), &src, &vl_sink("vl", &rx.url(), ""));
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 100, 30).await;
    // Several rescans (200 ms) of the same five paths, then more lines.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    append(&app, 100..200);
    wait_distinct(&rx, "jsonline", 200, 30).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // One stream, one series, under the file's own name and not a link's (per-file stats go
    // when the pipeline stops: checked before).
    assert_eq!(stats.source("app").files_opened.load(Ordering::Relaxed), 1);
    assert_eq!(file_series(&stats, "app"), [app.display().to_string()]);
    p.stop(GRACE).await;
    assert_exactly_once(&rx, "jsonline", 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_sockets_and_devices_in_the_globs_are_never_opened() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let fifo = logs.join("fifo.log");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink(&fifo, logs.join("fifo-link.log")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(logs.join("sock.log")).unwrap();
    std::os::unix::fs::symlink("/dev/null", logs.join("null.log")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", logs.join("zero.log")).unwrap();
    let app = logs.join("app.log");
    append(&app, 0..100);
    let rx = Receiver::start().await;
    let src = plain_source("app", &format!("{}/*.log", logs.display()));
    let cfg = config(dir.path(), &src, &vl_sink("vl", &rx.url(), ""));
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 100, 30).await;
    append(&app, 100..200);
    wait_distinct(&rx, "jsonline", 200, 30).await;
    assert_eq!(stats.source("app").files_opened.load(Ordering::Relaxed), 1);
    // Nobody holds the FIFO open for reading: a writer that does not wait finds no reader.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    assert_eq!(
        writer.map(drop).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENXIO)),
        "no reader"
    );
    let t = Instant::now();
    p.stop(GRACE).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_exactly_once(&rx, "jsonline", 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compression_sends_gzip_and_none_sends_no_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    append(&file, 0..2000);
    // One receiver per sink: a request's Content-Encoding is then known to be that sink's.
    let cases = [
        ("vl_gzip", "jsonline", "victorialogs", "compression: gzip"),
        ("vl_plain", "jsonline", "victorialogs", ""),
        (
            "loki_gzip",
            "loki_json",
            "loki",
            "encoding: json, compression: gzip",
        ),
        ("loki_plain", "loki_json", "loki", "encoding: json"),
        (
            "vl_loki_gzip",
            "loki_json",
            "victorialogs",
            "api: loki, encoding: json, compression: gzip",
        ),
        (
            "vl_loki_plain",
            "loki_json",
            "victorialogs",
            "api: loki, encoding: json",
        ),
    ];
    let mut receivers = Vec::new();
    let mut sinks = String::new();
    for (name, _, kind, settings) in cases {
        let rx = Receiver::start().await;
        sinks.push_str(&format!(
            "  {name}: {{type: {kind}, endpoint: '{}', batch: {{timeout: 100ms, max_events: 250}}{}{settings}}}\n",
            rx.url(),
            if settings.is_empty() { "" } else { ", " },
        ));
        receivers.push(rx);
    }
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &sinks,
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    append(&file, 2000..4000);
    for ((_, api, _, _), rx) in cases.iter().zip(&receivers) {
        wait_distinct(rx, api, 4000, 60).await;
    }
    wait_checkpoint(
        dir.path(),
        "app",
        &file,
        std::fs::metadata(&file).unwrap().len(),
    )
    .await;
    p.stop(GRACE).await;

    for ((name, api, _, settings), rx) in cases.iter().zip(&receivers) {
        assert_exactly_once(rx, api, 4000);
        let expected = settings.contains("gzip").then_some("gzip");
        let requests = rx.requests();
        // max_events 250: at least 16 requests, all of them checked.
        assert!(requests.len() >= 16, "{name}: {requests:?}");
        assert_eq!(requests.iter().map(|r| r.records).sum::<usize>(), 4000);
        for req in &requests {
            assert_eq!(req.content_encoding(), expected, "{name}: {req:?}");
            assert!(matches!(req.status, 200 | 204), "{name}: {req:?}");
        }
    }
}

/// The gzip test relies on the receiver refusing a body that is not what its
/// Content-Encoding says (a sink that labelled plain JSON as gzip would otherwise pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_refuses_a_body_its_content_encoding_misnames() {
    let rx = Receiver::start().await;
    let client = reqwest::Client::new();
    let line = b"{\"_time\":\"2024-05-01T10:00:00Z\",\"message\":\"seq=1 x\"}\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(line).unwrap();
    let gzipped = gz.finish().unwrap();
    let loki =
        br#"{"streams":[{"stream":{"job":"x"},"values":[["1","{\"message\":\"seq=2 y\"}"]]}]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(loki).unwrap();
    let loki_gzipped = gz.finish().unwrap();
    let post = |path: &str, content_type: &str, encoding: Option<&str>, body: Vec<u8>| {
        let mut req = client
            .post(format!("{}{path}", rx.url()))
            .header("content-type", content_type)
            .header("VL-Msg-Field", "message")
            .header("VL-Time-Field", "_time")
            .body(body);
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let jl = "/insert/jsonline";
    let ct = "application/stream+json";
    assert_eq!(post(jl, ct, Some("gzip"), line.to_vec()).await, 400);
    assert_eq!(post(jl, ct, None, gzipped.clone()).await, 400);
    assert_eq!(post(jl, ct, Some("gzip"), gzipped).await, 200);
    let push = "/loki/api/v1/push";
    let json = "application/json";
    assert_eq!(post(push, json, Some("gzip"), loki.to_vec()).await, 400);
    assert_eq!(post(push, json, None, loki_gzipped.clone()).await, 400);
    assert_eq!(post(push, json, Some("gzip"), loki_gzipped).await, 204);
    let seqs: Vec<u64> = rx.records().iter().map(Received::seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    let encodings: Vec<Option<String>> = rx
        .requests()
        .iter()
        .map(|r| r.content_encoding().map(str::to_owned))
        .collect();
    assert_eq!(
        encodings,
        [
            Some("gzip"),
            None,
            Some("gzip"),
            Some("gzip"),
            None,
            Some("gzip")
        ]
        .map(|e| e.map(str::to_owned))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_auth_headers_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    append(&file, 0..10);
    let rx = Receiver::start().await;
    let url = rx.url();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let sinks = format!(
        "{}  loki:\n    type: loki\n    endpoint: {url}\n    tenant_id: pigsty\n    auth: {{username: u, password: 'p w'}}\n    headers: {{X-Extra: yes}}\n    batch: {{timeout: 100ms}}\n",
        vl_sink(
            "vl",
            &url,
            &format!(
                "    account_id: 3\n    project_id: 4\n    stream_fields: [job, ins]\n    auth: {{bearer_token_file: {}}}\n",
                token_file.display()
            ),
        )
    );
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &sinks,
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 10, 30).await;
    wait_distinct(&rx, "loki_proto", 10, 30).await;
    p.stop(GRACE).await;

    let vl = &rx.headers_of("/insert/jsonline")[0];
    assert_eq!(vl["AccountID"], "3");
    assert_eq!(vl["ProjectID"], "4");
    assert_eq!(vl["VL-Stream-Fields"], "job,ins");
    assert_eq!(vl["VL-Msg-Field"], "message");
    assert_eq!(vl["VL-Time-Field"], "_time");
    assert_eq!(vl["authorization"], "Bearer s3cret-token");
    let loki = &rx.headers_of("/loki/api/v1/push")[0];
    assert_eq!(loki["X-Scope-OrgID"], "pigsty");
    assert_eq!(loki["X-Extra"], "yes");
    assert_eq!(loki["content-type"], "application/x-protobuf");
    // base64("u:p w")
    assert_eq!(loki["authorization"], "Basic dTpwIHc=");
    assert_eq!(
        rx.records_of("jsonline")[0]
            .labels
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["ins", "job"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_filter_and_multiline_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("postgresql-Mon.csv");
    let patroni = dir.path().join("patroni.log");
    let rx = Receiver::start().await;
    let sources = format!(
        "  pg:\n    include: ['{}']\n    format: postgres_csv\n    min_level: warning\n  patroni:\n    include: ['{}']\n    format: patroni\n    multiline_timeout: 300ms\n",
        csv.display(),
        patroni.display()
    );
    let cfg = config(dir.path(), &sources, &vl_sink("vl", &rx.url(), ""));
    let stats = Arc::new(Stats::default());
    let row = |sev: &str, msg: &str| {
        format!(
            "2024-05-01 10:00:00.123 UTC,\"postgres\",\"app\",42,,6632a.1,1,,2024-05-01 09:59:00 UTC,3/7,0,{sev},00000,\"{msg}\",,,,,,,,,\"psql\",\"client backend\",,0\n"
        )
    };
    let mut data = String::new();
    for i in 0..50 {
        data.push_str(&row("LOG", &format!("chatty {i}")));
    }
    data.push_str(&row("ERROR", "boom"));
    data.push_str(&row("WARNING", "careful"));
    for i in 0..50 {
        data.push_str(&row("DEBUG1", &format!("noise {i}")));
    }
    std::fs::write(&csv, &data).unwrap();
    let traceback = "2026-11-25 21:41:54,033 ERROR: get_postgresql_status\nTraceback (most recent call last):\n  File \"api.py\", line 744, in query\npatroni.exceptions.PostgresConnectionException: 'connection problems'\n";
    std::fs::write(&patroni, traceback).unwrap();
    let p = Pipeline::start(&cfg, &stats).unwrap();
    rx.wait_for(30, "the error, the warning and the traceback", |rs| {
        rs.len() >= 3
    })
    .await;
    // The checkpoint moves over filtered records too.
    wait_checkpoint(dir.path(), "pg", &csv, data.len() as u64).await;
    wait_checkpoint(dir.path(), "patroni", &patroni, traceback.len() as u64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.stop(GRACE).await;
    let recs = rx.records();
    assert_eq!(recs.len(), 3, "{recs:?}");
    let msgs: Vec<&str> = recs.iter().map(Received::message).collect();
    assert!(msgs.contains(&"boom") && msgs.contains(&"careful"));
    let tb = recs.iter().find(|r| r.fields["job"] == "patroni").unwrap();
    assert!(
        tb.message()
            .ends_with("PostgresConnectionException: 'connection problems'")
    );
    assert_eq!(tb.fields["topic"], "main");
    assert_eq!(tb.fields["level"], "err");
    assert_eq!(stats.source("pg").filtered.load(Ordering::Relaxed), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sinks_verify_the_server_and_present_a_client_certificate() {
    use agent_kit::cli::WebArgs;
    use agent_kit::server::{HttpServer, Lifecycle};
    use clap::Parser as _;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        web: WebArgs,
    }

    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["log_shipper".into()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let ca_file = w("ca.pem", &ca.pem());
    let cert = w("server.pem", &server.pem());
    let key = w("server.key", &server_key.serialize_pem());
    let client_cert = w("client.pem", &client.pem());
    let client_key = w("client.key", &client_key.serialize_pem());
    // The receiver (our agents' HTTPS server) takes only clients with a certificate of the CA.
    let web_config = w(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            cert.display(),
            key.display(),
            ca_file.display()
        ),
    );
    let flags = Flags::try_parse_from([
        "test".to_owned(),
        "--web.listen-address=127.0.0.1:0".to_owned(),
        format!("--web.config.file={}", web_config.display()),
    ])
    .unwrap();
    let rx = Receiver::detached();
    let bound = HttpServer::new("receiver", &flags.web, ":0")
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addrs()[0];
    let lifecycle = Lifecycle::new();
    let app = rx.app();
    let l2 = lifecycle.clone();
    let server_task = tokio::spawn(async move { bound.serve(app, &l2).await });

    let file = dir.path().join("app.log");
    append(&file, 0..20);
    let url = format!("https://127.0.0.1:{}", addr.port());
    let client_tls = format!(
        "cert_file: {}, key_file: {}",
        client_cert.display(),
        client_key.display()
    );
    let trusted = vl_sink(
        "vl",
        &url,
        &format!(
            "    tls: {{ca_file: {}, {client_tls}}}\n",
            ca_file.display()
        ),
    );
    // Loki JSON, so that the receiver tells its records from the first sink's.
    let insecure = format!(
        "  insecure:\n    type: loki\n    endpoint: {url}\n    encoding: json\n    batch: {{timeout: 100ms}}\n    tls: {{insecure_skip_verify: true, {client_tls}}}\n"
    );
    let fast_retry = |sink: String| {
        sink.replace(
            "    retry: {initial_backoff: 100ms, max_backoff: 500ms}\n",
            "    retry: {initial_backoff: 100ms, max_backoff: 200ms}\n",
        )
    };
    let untrusted = fast_retry(vl_sink(
        "other",
        &url,
        &format!("    tls: {{{client_tls}}}\n"),
    ));
    let anonymous = fast_retry(vl_sink(
        "anonymous",
        &url,
        &format!("    tls: {{ca_file: {}}}\n", ca_file.display()),
    ));
    let cfg = config(
        dir.path(),
        &plain_source("app", &file.display().to_string()),
        &format!("{trusted}{insecure}{untrusted}{anonymous}"),
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_distinct(&rx, "jsonline", 20, 30).await;
    wait_distinct(&rx, "loki_json", 20, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Without the CA the server is not trusted; without a client certificate the server
    // refuses the handshake: both sinks retry, and the checkpoint stays put.
    for sink in ["other", "anonymous"] {
        assert!(
            stats.sink(sink).requests_retried.load(Ordering::Relaxed) > 0,
            "{sink}"
        );
        assert_eq!(
            stats.sink(sink).events_sent.load(Ordering::Relaxed),
            0,
            "{sink}"
        );
    }
    assert!(
        checkpoint_offsets(dir.path(), "app")
            .iter()
            .all(|(_, o, _)| *o == 0)
    );
    p.stop(Duration::from_millis(500)).await;
    lifecycle.shutdown();
    let _ = server_task.await;
    assert_exactly_once(&rx, "jsonline", 20);
    assert_exactly_once(&rx, "loki_json", 20);
}

/// A source that waits for file events only (`rescan_interval: 1h`) and one that rescans
/// every 200 ms, fed through a hard link in a directory nobody watches: inotify reports a write
/// to the watched directory's entry only when it goes through that entry, so the first source
/// must not see those lines until something it watches changes, and the second must see them
/// by its rescan alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_events_wake_the_reader_and_the_rescan_catches_what_they_miss() {
    let dir = tempfile::tempdir().unwrap();
    let (watched, elsewhere) = (dir.path().join("watched"), dir.path().join("elsewhere"));
    let (events_dir, rescan_dir) = (watched.join("events"), watched.join("rescan"));
    for d in [&events_dir, &rescan_dir, &elsewhere] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (events_file, rescan_file) = (events_dir.join("app.log"), rescan_dir.join("app.log"));
    append(&events_file, 0..100);
    append(&rescan_file, 0..100);
    let (events_link, rescan_link) = (elsewhere.join("events.log"), elsewhere.join("rescan.log"));
    std::fs::hard_link(&events_file, &events_link).unwrap();
    std::fs::hard_link(&rescan_file, &rescan_link).unwrap();

    let source = |name: &str, dir: &Path, rescan: &str| {
        format!(
            "  {name}:\n    include: ['{}/*.log']\n    format: plain\n    fields: {{ins: {name}}}\n    rescan_interval: {rescan}\n",
            dir.display()
        )
    };
    let rx = Receiver::start().await;
    let cfg = config(
        dir.path(),
        &(source("events", &events_dir, "1h") + &source("rescan", &rescan_dir, "200ms")),
        &vl_sink("vl", &rx.url(), ""),
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    let of = |ins: &'static str| move |r: &Received| r.fields["ins"] == ins;
    wait_distinct_where(&rx, "from events", 100, 30, of("events")).await;
    wait_distinct_where(&rx, "from rescan", 100, 30, of("rescan")).await;

    // Through the links: the rescanning source finds the lines, the other sees no event.
    append(&events_link, 100..200);
    append(&rescan_link, 100..200);
    wait_distinct_where(&rx, "from rescan through the link", 200, 10, of("rescan")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rx.seq_counts(of("events")).len(),
        100,
        "a source waiting for events read lines no event announced"
    );
    // A write through the watched entry, and a new file: the events wake it at once (its
    // rescan is an hour away), and it reads everything the file holds.
    append(&events_file, 200..300);
    append(&events_dir.join("new.log"), 1000..1100);
    wait_distinct_where(&rx, "from events after an event", 400, 10, of("events")).await;
    p.stop(GRACE).await;
    assert_exactly_once_where(&rx, "rescan", 200, of("rescan"));
    let c = rx.seq_counts(of("events"));
    assert!(c.values().all(|k| *k == 1), "duplicates: {c:?}");
    assert_eq!(c.len(), 400);
}
