//! 413 Payload Too Large: the sink splits the batch in halves (recursively) and a single
//! record still too large goes to the dead-letter file; `batch.max_bytes` holds before
//! sending, so a destination whose limit matches it never answers 413.

mod receiver;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log_pipeline::config::Config;
use log_pipeline::pipeline::Pipeline;
use log_pipeline::stats::Stats;
use receiver::Receiver;

fn config(dir: &Path, file: &Path, url: &str, batch: &str) -> Config {
    let yaml = format!(
        "checkpoint_dir: {ckpt}
message_max_length: 200000
fields: {{ins: pg-test-1, ip: 127.0.0.1, cls: pg-test}}
sources:
  app:
    include: ['{file}']
    format: plain
sinks:
  vl:
    type: victorialogs
    endpoint: {url}
    batch: {batch}
    retry: {{initial_backoff: 100ms, max_backoff: 300ms}}
",
        ckpt = dir.join("ckpt").display(),
        file = file.display(),
    );
    Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn counts(rx: &Receiver) -> BTreeMap<u64, usize> {
    rx.seq_counts(|_| true)
}

async fn wait_checkpoint(dir: &Path, file: &Path, offset: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(dir.join("ckpt/app.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let at = v["files"].as_array().and_then(|a| {
            a.iter()
                .find(|e| e["path"].as_str() == file.to_str())
                .and_then(|e| e["offset"].as_u64())
        });
        if at == Some(offset) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint at {at:?}, not {offset}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_and_a_lone_huge_record_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let rx = Receiver::start().await;
    // Like VictoriaLogs' or Loki's request limit, only much smaller.
    rx.set_max_body(Some(32 * 1024));
    let cfg = config(
        dir.path(),
        &file,
        &rx.url(),
        "{timeout: 200ms, max_events: 5000, max_bytes: 8MiB}",
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    let mut data = String::new();
    for n in 0..4000 {
        if n == 1234 {
            data.push_str(&format!("seq={n} huge {}\n", "x".repeat(100_000)));
        } else {
            data.push_str(&format!(
                "seq={n} an ordinary line of about a hundred bytes, padded\n"
            ));
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    wait_checkpoint(dir.path(), &file, data.len() as u64).await;
    p.stop(Duration::from_secs(5)).await;

    let got = counts(&rx);
    assert!(got.values().all(|c| *c == 1), "duplicates");
    let expected: Vec<u64> = (0..4000).filter(|n| *n != 1234).collect();
    let keys: Vec<u64> = got.keys().copied().collect();
    assert!(
        keys == expected,
        "{} records; has 1234: {}",
        keys.len(),
        got.contains_key(&1234)
    );
    let dl = std::fs::read_to_string(dir.path().join("ckpt/dead_letter/vl.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = dl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 413);
    assert!(
        lines[0]["record"]["message"]
            .as_str()
            .unwrap()
            .starts_with("seq=1234 huge xxx")
    );
    let sink = stats.sink("vl");
    assert_eq!(sink.events_failed.load(Ordering::Relaxed), 1);
    assert_eq!(sink.events_sent.load(Ordering::Relaxed), 3999);
    assert!(sink.batches_split.load(Ordering::Relaxed) >= 5);
    assert!(rx.too_large() >= 5, "413s: {}", rx.too_large());
    assert!(
        stats
            .render()
            .contains("log_shipper_sink_events_failed_total{sink=\"vl\"} 1\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_max_bytes_holds_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let rx = Receiver::start().await;
    rx.set_max_body(Some(16 * 1024));
    let cfg = config(
        dir.path(),
        &file,
        &rx.url(),
        "{timeout: 200ms, max_events: 5000, max_bytes: 16KiB}",
    );
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    // Quotes double in JSON: the encoded lines are larger than the batcher's estimate, so
    // some bodies only fit once split.
    let mut data = String::new();
    for n in 0..3000 {
        data.push_str(&format!("seq={n} {}\n", "\"".repeat(150)));
    }
    std::fs::write(&file, &data).unwrap();
    wait_checkpoint(dir.path(), &file, data.len() as u64).await;
    p.stop(Duration::from_secs(5)).await;
    let got = counts(&rx);
    assert_eq!(got.len(), 3000);
    assert!(got.values().all(|c| *c == 1), "duplicates");
    assert_eq!(rx.too_large(), 0, "a body over batch.max_bytes was sent");
    assert!(stats.sink("vl").batches_split.load(Ordering::Relaxed) > 0);
    assert_eq!(stats.sink("vl").events_failed.load(Ordering::Relaxed), 0);
}
