//! The log_shipper binary as users run it: its /metrics, kill -9 mid-stream and a restart
//! (nothing lost, duplicates only from the unacknowledged tail and counted), an outage that
//! fills the buffer (its gauge and the files' lag follow), a full disk buffer's drops counted
//! and logged, SIGHUP reloads that keep the position and survive a storm of signals, and a
//! real PostgreSQL 15 writing csvlog, jsonlog and stderr shipped to VictoriaLogs JSON lines,
//! Loki protobuf and Loki JSON.

#[path = "../../../collectors/log_pipeline/tests/receiver/mod.rs"]
mod receiver;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use receiver::{Received, Receiver};
use test_harness::agent::sample;
use test_harness::{Agent, PgVersion, PostgresBuilder};
use tokio::task::block_in_place;

// The harness's `Agent` API blocks: these tests call it through `block_in_place`, so the
// runtime keeps serving the in-process receiver meanwhile.

/// Starts log_shipper with `config`, its output appended to `log`, killed on drop; ready once
/// `/metrics` answers 200.
fn start(config: &Path, log: &Path) -> Agent {
    block_in_place(|| {
        Agent::builder("log_shipper", env!("CARGO_BIN_EXE_log_shipper"))
            .arg(format!("--config={}", config.display()))
            .arg("--log.level=debug")
            .log_file(log)
            .kill_on_drop()
            .start()
    })
}

fn scrape(shipper: &Agent) -> Option<String> {
    block_in_place(|| shipper.scrape())
}

fn metric(shipper: &Agent, series: &str) -> Option<f64> {
    block_in_place(|| shipper.metric(series))
}

/// SIGTERM; fails unless it exits within 20 s.
fn stop(shipper: Agent) {
    block_in_place(|| shipper.stop(Duration::from_secs(20)));
}

#[test]
fn the_shipped_pigsty_config_is_valid() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/log-shipper/log_shipper.yml");
    // In a temporary directory, not /var/lib.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("/var/lib/log_shipper", &state.display().to_string());
    let copy = dir.path().join("log_shipper.yml");
    std::fs::write(&copy, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", copy.display()))
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 source(s), 1 sink(s)"), "{stdout}");
    // --dry-run creates nothing; it says what a start creates.
    assert!(!state.exists(), "--dry-run created {}", state.display());
    assert!(
        stdout.contains(&format!(
            "a start creates {}",
            state.join("dead_letter").display()
        )),
        "{stdout}"
    );

    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        "sources: {pg: {include: [/x], format: csv}}\nsinks: {}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", bad.path().display()))
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sources.pg.format"));
}

fn counts(rx: &Receiver) -> BTreeMap<u64, usize> {
    rx.seq_counts(|_| true)
}

async fn wait_distinct(rx: &Receiver, n: u64, secs: u64, shipper_log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = counts(rx);
        if (0..n).all(|i| c.contains_key(&i)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} records, have {}; shipper log tail:\n{}",
            c.len(),
            tail(shipper_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
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

fn line(n: u64) -> String {
    format!("seq={n} a line of a plain log file, padded to look real\n")
}

fn plain_config(dir: &Path, file: &Path, url: &str, ins: &str, max_events: usize) -> String {
    format!(
        "checkpoint_dir: {ckpt}\nsources:\n  app:\n    include: ['{file}']\n    format: plain\n    fields: {{ins: {ins}}}\n    rescan_interval: 200ms\nsinks:\n  vl:\n    type: victorialogs\n    endpoint: {url}\n    batch: {{max_events: {max_events}, timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 1s}}\n",
        ckpt = dir.join("ckpt").display(),
        file = file.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_repeats_only_the_unacknowledged_tail() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let rx = Receiver::start().await;
    let config = dir.path().join("log_shipper.yml");
    let max_events = 500;
    std::fs::write(
        &config,
        plain_config(dir.path(), &file, &rx.url(), "pg-test-1", max_events),
    )
    .unwrap();
    let log = dir.path().join("shipper.log");
    let shipper = start(&config, &log);

    // A writer appends continuously while the shipper is killed and restarted.
    let total = 60_000u64;
    let f2 = file.clone();
    let writer = std::thread::spawn(move || {
        let mut n = 0;
        while n < total {
            append(&f2, n..(n + 1000).min(total));
            n += 1000;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    rx.wait_for(60, "some records", |rs| rs.len() > 5000).await;
    shipper.kill9();
    let received_at_kill = rx.records().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shipper = start(&config, &log);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    wait_distinct(&rx, total, 120, &log).await;

    let c = counts(&rx);
    let dups: usize = c.values().map(|v| v - 1).sum();
    eprintln!("received {received_at_kill} before kill -9; {dups} duplicates after the restart");
    // Only the batch in flight at the kill: a batch is sent once the checkpoint covers the
    // previous one.
    assert!(dups <= max_events, "{dups} duplicates");
    assert_eq!(c.len() as u64, total);
    // The restarted shipper counted what it re-read, every duplicate included.
    let dup_bytes: usize = c.iter().map(|(n, k)| (k - 1) * line(*n).len()).sum();
    let replayed = metric(
        &shipper,
        "log_shipper_source_replayed_bytes_total{source=\"app\"}",
    )
    .unwrap();
    eprintln!("{dup_bytes} bytes of duplicates, {replayed} bytes counted as replayed");
    assert!(
        replayed >= dup_bytes as f64,
        "{dup_bytes} bytes of duplicates but only {replayed} counted as replayed"
    );
    // Everything is acknowledged: the checkpoint is current.
    let age = metric(
        &shipper,
        "log_shipper_checkpoint_age_seconds{source=\"app\"}",
    )
    .unwrap();
    assert!(
        age < 5.0,
        "checkpoint {age} s old with everything delivered"
    );
    let metrics = scrape(&shipper).unwrap();
    for family in [
        "log_shipper_file_read_bytes_total{source=\"app\",file=",
        "log_shipper_file_lag_bytes{source=\"app\"",
        "log_shipper_sink_events_sent_total{sink=\"vl\"}",
        "log_shipper_sink_batch_latency_seconds_bucket{sink=\"vl\",le=\"0.1\"}",
        "log_shipper_checkpoint_age_seconds{source=\"app\"}",
        "log_shipper_buffer_capacity_chunks{sink=\"vl\"} 16",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(family), "{family} missing from\n{metrics}");
    }
    stop(shipper);
}

/// Polls the shipper's metric `sample` until `ok` holds for its value.
async fn wait_metric(shipper: &Agent, sample: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = metric(shipper, sample);
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {sample} is {v:?}; shipper log tail:\n{}",
            tail(shipper.log_path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fills_the_buffer_and_the_lag_keeps_growing_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    let config = dir.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        plain_config(dir.path(), &file, &rx.url(), "pg-test-1", 500)
            + "    buffer: {max_chunks: 2}\n",
    )
    .unwrap();
    let log = dir.path().join("shipper.log");
    let shipper = start(&config, &log);
    let buffered = "log_shipper_buffer_chunks{sink=\"vl\"}";
    let lag = format!(
        "log_shipper_file_lag_bytes{{source=\"app\",file=\"{}\"}}",
        file.display()
    );

    // A line far over the default message length: `message` is cut at 8192 characters.
    append(&file, 0..1000);
    let long = format!("seq=1000 {}\n", "x".repeat(20_000));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(long.as_bytes())
        .unwrap();
    wait_distinct(&rx, 1001, 30, &log).await;
    let cut = rx.records().into_iter().find(|r| r.seq() == 1000).unwrap();
    assert_eq!(cut.message().chars().count(), 8192);
    assert!(long.starts_with(cut.message()));

    // The destination goes away while the writer goes on: the buffer in front of the sink
    // fills, reading pauses, and the file's lag grows with what is written meanwhile.
    rx.stop().await;
    append(&file, 1001..101_001);
    wait_metric(&shipper, buffered, "buffer full", |v| v == 2.0).await;
    let before = wait_metric(&shipper, &lag, "reading paused", |v| v > 0.0).await;
    let more: u64 = (101_001..121_001).map(|n| line(n).len() as u64).sum();
    append(&file, 101_001..121_001);
    wait_metric(&shipper, &lag, "lag grows during the outage", |v| {
        v >= before + more as f64
    })
    .await;
    assert_eq!(metric(&shipper, buffered), Some(2.0));

    // Back: everything arrives, exactly once, and the gauges return to zero.
    rx.restart().await;
    wait_distinct(&rx, 121_001, 120, &log).await;
    let c = counts(&rx);
    let dups: Vec<_> = c.iter().filter(|(_, k)| **k > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    wait_metric(&shipper, buffered, "buffer drained", |v| v == 0.0).await;
    wait_metric(&shipper, &lag, "file read to its end", |v| v == 0.0).await;
    stop(shipper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_without_losing_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let rx = Receiver::start().await;
    let config = dir.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        plain_config(dir.path(), &file, &rx.url(), "before", 100),
    )
    .unwrap();
    let log = dir.path().join("shipper.log");
    let shipper = start(&config, &log);
    append(&file, 0..300);
    wait_distinct(&rx, 300, 30, &log).await;

    // An invalid config is rejected; the running one stays.
    std::fs::write(&config, "sources: {}\n").unwrap();
    shipper.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&shipper, "log_shipper_config_reload_failures_total ") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "reload failure not counted:\n{}",
            shipper.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    append(&file, 300..400);
    wait_distinct(&rx, 400, 30, &log).await;

    // A valid one replaces it and continues from the checkpoint.
    std::fs::write(
        &config,
        plain_config(dir.path(), &file, &rx.url(), "after", 100),
    )
    .unwrap();
    shipper.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &shipper,
        "log_shipper_config_reloads_total{result=\"success\"} ",
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "reload not done:\n{}",
            shipper.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    append(&file, 400..600);
    wait_distinct(&rx, 600, 30, &log).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(shipper);

    let c = counts(&rx);
    assert_eq!(c.len(), 600);
    assert!(c.values().all(|v| *v == 1), "duplicates across reloads");
    for r in rx.records() {
        let want = if r.seq() < 400 { "before" } else { "after" };
        assert_eq!(r.fields["ins"], want, "{:?}", r.fields);
    }
}

/// p13: a storm of SIGHUPs (200 in a burst, faster than a reload) is one more reload, and
/// reloads go on working after it.
#[test]
fn a_sighup_storm_is_coalesced_and_reloads_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.log"), "one\n").unwrap();
    std::fs::write(d.join("b.other"), "two\n").unwrap();
    let out = d.join("out.jsonl");
    let config = d.join("log_shipper.yml");
    let write_config = |include: &str| {
        let text = format!(
            "checkpoint_dir: {}\nsources: {{app: {{include: ['{}/{include}'], format: plain, rescan_interval: 200ms}}}}\nsinks: {{f: {{type: file, path: '{}'}}}}\n",
            d.join("ckpt").display(),
            d.display(),
            out.display()
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config("*.log");
    let shipper = Agent::builder("log_shipper", env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", config.display()))
        .log_file(&d.join("shipper.log"))
        .kill_on_drop()
        .start();
    let shipped = |what: &str| {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(what)
    };
    shipper.wait_for("a.log shipped", || shipped("\"one\""));

    for _ in 0..200 {
        shipper.signal("HUP");
    }
    let reloads = || shipper.metric("log_shipper_config_reloads_total{result=\"success\"} ");
    // The storm settles: no reload for a second.
    let mut last = reloads();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = reloads();
        if now == last {
            break;
        }
        last = now;
    }
    let storm = last.unwrap_or(0.0);
    assert!(
        (1.0..=20.0).contains(&storm),
        "200 SIGHUPs made {storm} reloads, not a few"
    );

    write_config("*.other");
    shipper.signal("HUP");
    shipper.wait_for("the config changed after the storm is applied", || {
        shipped("\"two\"")
    });
    assert_eq!(reloads(), Some(storm + 1.0));
    assert!(shipper.is_running());
    shipper.stop(Duration::from_secs(20));
}

/// A PostgreSQL 15 (named `name`, with `settings` added) writing csvlog, jsonlog and stderr in
/// UTC, and a log_shipper tailing the three (sources pg_csv, pg_json — with `json_extra` added to
/// its config — and pg_stderr; `ins` csv, json, stderr) to a receiver's VictoriaLogs API, and to
/// its Loki API too when `loki` (protobuf, and JSON with gzip).
async fn pg15_shipped(
    name: &'static str,
    settings: &'static [(&'static str, &'static str)],
    json_extra: &str,
    loki: bool,
) -> (
    std::sync::Arc<test_harness::Postgres>,
    Receiver,
    Agent,
    tempfile::TempDir,
) {
    let pg = tokio::task::spawn_blocking(move || {
        let mut b = PostgresBuilder::new(PgVersion::V15)
            .name(name)
            .setting("log_timezone", "'UTC'")
            .setting("log_destination", "'csvlog,jsonlog,stderr'")
            .setting("log_line_prefix", "'%m [%p] %e %q%u@%d/%a '");
        for (k, v) in settings {
            b = b.setting(k, v);
        }
        b.start()
    })
    .await
    .unwrap()
    .expect("PostgreSQL 15");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = pg.log_dir().display().to_string();
    let loki_sink = if loki {
        format!(
            "  loki:\n    type: loki\n    endpoint: {url}\n    batch: {{timeout: 100ms}}\n  loki_json:\n    type: loki\n    endpoint: {url}\n    encoding: json\n    compression: gzip\n    batch: {{timeout: 100ms}}\n",
            url = rx.url()
        )
    } else {
        String::new()
    };
    let config = dir.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        format!(
            "checkpoint_dir: {ckpt}\nfields: {{ip: 127.0.0.1, cls: pg-test}}\nsources:\n  pg_csv:\n    include: ['{log_dir}/*.csv']\n    format: postgres_csv\n    fields: {{ins: csv}}\n    rescan_interval: 200ms\n  pg_json:\n    include: ['{log_dir}/*.json']\n    format: postgres_json\n    fields: {{ins: json}}\n{json_extra}    rescan_interval: 200ms\n  pg_stderr:\n    include: ['{log_dir}/*.log']\n    format: postgres_stderr\n    log_line_prefix: '%m [%p] %e %q%u@%d/%a '\n    fields: {{ins: stderr}}\n    rescan_interval: 200ms\nsinks:\n  vl:\n    type: victorialogs\n    endpoint: {url}\n    batch: {{timeout: 100ms}}\n{loki_sink}",
            ckpt = dir.path().join("ckpt").display(),
            url = rx.url(),
        ),
    )
    .unwrap();
    let shipper = start(&config, &dir.path().join("shipper.log"));
    (std::sync::Arc::new(pg), rx, shipper, dir)
}

/// The receiver's names of the APIs `pg15_shipped` sends to with `loki`.
const APIS: [&str; 3] = ["jsonline", "loki_proto", "loki_json"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres15_csvlog_and_jsonlog_end_to_end() {
    let (pg, rx, shipper, _dir) = pg15_shipped(
        "logship",
        &[
            ("log_statement", "'ddl'"),
            ("log_min_duration_statement", "0"),
            ("log_filename", "'postgresql-%a-%H%M%S.log'"),
        ],
        "",
        true,
    )
    .await;
    let p2 = pg.clone();
    tokio::task::spawn_blocking(move || {
        // An error with a multi-line statement.
        let _ = p2.execute(
            "postgres",
            "SELECT *\n  FROM nope_table_e2e\n WHERE x = 1;\n",
        );
        // A password in a DDL statement (log_statement = ddl).
        p2.execute(
            "postgres",
            "CREATE ROLE e2e_user LOGIN PASSWORD 'TopSecret123';\n",
        )
        .unwrap();
        // Rotation: new csv and json files; an error after it.
        p2.execute(
            "postgres",
            "SELECT pg_sleep(1.1); SELECT pg_rotate_logfile();\n",
        )
        .unwrap();
        let _ = p2.execute("postgres", "SELECT 1/0 AS after_rotation;\n");
    })
    .await
    .unwrap();

    let has = |rs: &[Received], api: &str, ins: &str, pred: &dyn Fn(&Received) -> bool| {
        rs.iter()
            .any(|r| r.api == api && r.fields["ins"] == ins && pred(r))
    };
    for api in APIS {
        for ins in ["csv", "json", "stderr"] {
            rx.wait_for(
                60,
                &format!("{api}/{ins}: the error after rotation"),
                |rs| has(rs, api, ins, &|r| r.fields["code"] == "22012"),
            )
            .await;
        }
    }
    stop(shipper);

    let records = rx.records();
    for api in APIS {
        for ins in ["csv", "json", "stderr"] {
            let err = records
                .iter()
                .find(|r| r.api == api && r.fields["ins"] == ins && r.fields["code"] == "42P01")
                .unwrap_or_else(|| panic!("{api}/{ins}: no 42P01 record"));
            let f = &err.fields;
            assert_eq!(f["job"], "postgres");
            assert_eq!(f["level"], "err");
            assert_eq!(f["lv"], "ERROR");
            assert_eq!(f["user"], "postgres");
            assert_eq!(f["db"], "postgres");
            if ins != "stderr" {
                assert_eq!(f["backend_type"], "client backend");
            }
            assert_eq!(f["app"], "pgsuite-harness");
            assert!(f["pid"].as_str().unwrap().parse::<u32>().is_ok());
            // stderr carries the cursor position in the message text; csvlog and jsonlog in a
            // field, which follows the statement.
            let want = if ins == "stderr" {
                "relation \"nope_table_e2e\" does not exist at character 17, SELECT *\n  FROM nope_table_e2e\n WHERE x = 1;"
            } else {
                "relation \"nope_table_e2e\" does not exist, SELECT *\n  FROM nope_table_e2e\n WHERE x = 1;, 17"
            };
            assert_eq!(err.message(), want, "{api}/{ins}");
            if api == "jsonline" {
                assert!(f["_time"].as_str().unwrap().ends_with('Z'));
            } else {
                assert_eq!(err.labels.get("ins").map(String::as_str), Some(ins));
                assert_eq!(err.labels.get("job").map(String::as_str), Some("postgres"));
            }
            let ddl = records
                .iter()
                .find(|r| {
                    r.api == api
                        && r.fields["ins"] == ins
                        && r.message().contains("CREATE ROLE e2e_user")
                })
                .unwrap_or_else(|| panic!("{api}/{ins}: no DDL record"));
            assert!(
                ddl.message().contains("PASSWORD 'xxxxx'"),
                "{}",
                ddl.message()
            );
            assert!(
                records
                    .iter()
                    .filter(|r| r.api == api && r.fields["ins"] == ins)
                    .any(|r| r.fields["duration"].as_f64().is_some_and(|d| d >= 0.0)),
                "{api}/{ins}: no duration"
            );
        }
    }
    for r in &records {
        assert!(
            !r.fields.to_string().contains("TopSecret123"),
            "password shipped: {:?}",
            r.fields
        );
    }
    // Every record exactly once per sink and source: csvlog and jsonlog carry the same events.
    for api in APIS {
        let mut seen = std::collections::HashSet::new();
        for r in records.iter().filter(|r| r.api == api) {
            assert!(
                seen.insert((
                    r.fields["ins"].to_string(),
                    r.fields["_time"].to_string(),
                    r.fields["pid"].to_string(),
                    r.message().to_owned(),
                    r.time_ns
                )),
                "duplicate {:?}",
                r.fields
            );
        }
    }
    let csv_count = records
        .iter()
        .filter(|r| r.api == "jsonline" && r.fields["ins"] == "csv")
        .count();
    let json_count = records
        .iter()
        .filter(|r| r.api == "jsonline" && r.fields["ins"] == "json")
        .count();
    assert_eq!(
        csv_count, json_count,
        "csvlog and jsonlog should carry the same events"
    );
}

/// The metrics derived from PostgreSQL logs, from a real PostgreSQL 15: errors with known
/// SQLSTATEs and a FATAL counted by severity and class, and statements slowed with pg_sleep
/// (logged through log_min_duration_statement = 0 for one role in one database) in the
/// duration histogram of their database, for csvlog, jsonlog and stderr, before the level
/// filter (the jsonlog source ships only warnings and worse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres15_log_derived_metrics() {
    let (pg, rx, shipper, _dir) =
        pg15_shipped("logmetrics", &[], "    min_level: warning\n", false).await;
    let p2 = pg.clone();
    tokio::task::spawn_blocking(move || {
        p2.execute(
            "postgres",
            "CREATE DATABASE metrics_db;\n\
             ALTER ROLE postgres IN DATABASE metrics_db SET log_min_duration_statement = 0;\n\
             CREATE TABLE uniq_e2e (id int PRIMARY KEY);\n\
             INSERT INTO uniq_e2e VALUES (1);\n",
        )
        .unwrap();
        // unique_violation (23505) three times, division_by_zero (22012) twice.
        for _ in 0..3 {
            assert!(
                p2.execute("postgres", "INSERT INTO uniq_e2e VALUES (1);\n")
                    .is_err()
            );
        }
        for _ in 0..2 {
            assert!(p2.execute("postgres", "SELECT 1/0;\n").is_err());
        }
        // invalid_catalog_name (3D000), a FATAL at connection.
        assert!(p2.execute("no_such_db_e2e", "SELECT 1;\n").is_err());
        // Slow statements, logged with their duration in metrics_db only.
        p2.execute(
            "metrics_db",
            "SELECT pg_sleep(0.15);\nSELECT pg_sleep(0.3);\nSELECT pg_sleep(1.1);\n",
        )
        .unwrap();
    })
    .await
    .unwrap();

    let sources = ["pg_csv", "pg_json", "pg_stderr"];
    let expected: Vec<(String, f64)> = sources
        .iter()
        .flat_map(|s| {
            let ev = |sev: &str, class: &str, n: f64| {
                (
                    format!("log_shipper_postgres_events_total{{source=\"{s}\",severity=\"{sev}\",sqlstate_class=\"{class}\"}}"),
                    n,
                )
            };
            let h = |suffix: &str, le: Option<&str>, n: f64| {
                let le = le.map(|l| format!(",le=\"{l}\"")).unwrap_or_default();
                (
                    format!("log_shipper_postgres_statement_duration_seconds{suffix}{{source=\"{s}\",db=\"metrics_db\"{le}}}"),
                    n,
                )
            };
            [
                ev("ERROR", "23", 3.0),
                ev("ERROR", "22", 2.0),
                ev("FATAL", "3D", 1.0),
                h("_bucket", Some("0.1"), 0.0),
                h("_bucket", Some("0.25"), 1.0),
                h("_bucket", Some("0.5"), 2.0),
                h("_bucket", Some("1"), 2.0),
                h("_bucket", Some("2.5"), 3.0),
                h("_bucket", Some("60"), 3.0),
                h("_bucket", Some("+Inf"), 3.0),
                h("_count", None, 3.0),
            ]
        })
        .collect();
    let value = sample;
    // Wait until every source has counted the last slow statement, then compare exactly.
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let body = scrape(&shipper).unwrap_or_default();
        if expected
            .iter()
            .all(|(s, n)| value(&body, s).is_some_and(|v| v >= *n))
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached the expected values:\n{body}\n--- shipper ---\n{}",
            shipper.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A moment more: nothing is counted twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body2 = scrape(&shipper).unwrap();
    for (sample, n) in &expected {
        assert_eq!(value(&body, sample), Some(*n), "{sample}\n{body}");
        assert_eq!(value(&body2, sample), Some(*n), "{sample}\n{body2}");
    }
    for s in sources {
        let sum = value(
            &body2,
            &format!("log_shipper_postgres_statement_duration_seconds_sum{{source=\"{s}\",db=\"metrics_db\"}}"),
        )
        .unwrap();
        assert!((1.55..2.5).contains(&sum), "{s}: sum {sum}");
        assert!(body2.contains(&format!(
            "log_shipper_postgres_events_total{{source=\"{s}\",severity=\"LOG\",sqlstate_class=\"00\"}}"
        )), "{s}: no LOG/00\n{body2}");
    }
    assert!(body2.contains("# TYPE log_shipper_postgres_statement_duration_seconds histogram\n"));
    assert!(body2.contains("# TYPE log_shipper_postgres_events_total counter\n"));
    assert!(body2.contains("log_shipper_postgres_label_sets_folded_total{metric=\"events\"} 0\n"));
    // The level filter dropped jsonlog's LOG records (the durations among them) after they
    // were counted; the errors were shipped.
    rx.wait_for(30, "jsonlog's 23505 records", |rs| {
        rs.iter()
            .filter(|r| r.fields["ins"] == "json" && r.fields["code"] == "23505")
            .count()
            == 3
    })
    .await;
    stop(shipper);
    let json: Vec<Received> = rx
        .records()
        .into_iter()
        .filter(|r| r.fields["ins"] == "json")
        .collect();
    assert!(json.iter().all(|r| r.fields["lv"] != "LOG"), "LOG shipped");
    assert!(json.iter().all(|r| r.fields["duration"].is_null()));
    let durations: Vec<f64> = rx
        .records()
        .iter()
        .filter(|r| r.fields["ins"] == "csv" && r.fields["db"] == "metrics_db")
        .filter_map(|r| r.fields["duration"].as_f64())
        .collect();
    assert_eq!(durations.len(), 3, "{durations:?}");
}

/// Appends journal entries `range` (MESSAGE `seq=<n> ...`, unit pgbouncer.service) to the
/// journal file `file`, through systemd-journal-remote reading the export format.
fn write_journal(file: &Path, range: std::ops::Range<u64>) {
    let remote = [
        "/lib/systemd/systemd-journal-remote",
        "/usr/lib/systemd/systemd-journal-remote",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-journal-remote (Debian package systemd-journal-remote; scripts/setup)");
    let mut export = Vec::new();
    for n in range.clone() {
        export.extend_from_slice(
            format!(
                "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=6c0d1b7e5f0a4c7e9f3e2d1c0b0a0908\nMESSAGE=seq={n} stats: 0 xacts/s, 0 queries/s\nPRIORITY=6\nSYSLOG_IDENTIFIER=pgbouncer\n_SYSTEMD_UNIT=pgbouncer.service\n_PID=4242\n\n",
                1_700_000_000_000_000 + n * 1000,
                1_000_000 + n
            )
            .as_bytes(),
        );
    }
    let mut child = Command::new(remote)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&export).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains(&format!("writing {} entries", range.end - range.start)),
        "systemd-journal-remote: {stderr}"
    );
}

/// Whether process `pid` runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// The journald source through kill -9 of the shipper while entries are being written: the
/// restarted shipper resumes after the acknowledged cursor (nothing lost, duplicates only
/// from the batch in flight), and the orphaned journalctl ends at its next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_kill_9_mid_stream_resumes_from_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let file = journal.join("system.journal");
    write_journal(&file, 0..500);
    let wrapper = dir.path().join("journalctl.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ >> {}\nexec journalctl \"$@\"\n",
            dir.path().join("pids").display()
        ),
    )
    .unwrap();
    assert!(
        Command::new("chmod")
            .arg("+x")
            .arg(&wrapper)
            .status()
            .unwrap()
            .success()
    );
    let pids = || -> Vec<u32> {
        std::fs::read_to_string(dir.path().join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let rx = Receiver::start().await;
    let max_events = 200;
    let config = dir.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        format!(
            "checkpoint_dir: {ckpt}\nfields: {{ins: node-1}}\nsources:\n  syslog:\n    type: journald\n    directory: {journal}\n    units: [pgbouncer]\n    journalctl: {wrapper}\nsinks:\n  vl:\n    type: victorialogs\n    endpoint: {url}\n    batch: {{max_events: {max_events}, timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 1s}}\n",
            ckpt = dir.path().join("ckpt").display(),
            journal = journal.display(),
            wrapper = wrapper.display(),
            url = rx.url(),
        ),
    )
    .unwrap();
    let log = dir.path().join("shipper.log");
    let shipper = start(&config, &log);

    let total = 20_000u64;
    let f2 = file.clone();
    let writer = std::thread::spawn(move || {
        let mut n = 500;
        while n < total {
            write_journal(&f2, n..(n + 500).min(total));
            n += 500;
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    rx.wait_for(60, "some records", |rs| rs.len() > 3000).await;
    shipper.kill9();
    let received_at_kill = rx.records().len();
    let orphan = pids()[0];
    let shipper = start(&config, &log);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    wait_distinct(&rx, total, 120, &log).await;

    let c = counts(&rx);
    let dups: usize = c.values().map(|v| v - 1).sum();
    eprintln!(
        "journald: received {received_at_kill} before kill -9; {dups} duplicates after the restart"
    );
    assert!(dups <= max_events, "{dups} duplicates");
    assert_eq!(c.len() as u64, total);
    let r = &rx.records()[0];
    assert_eq!(r.fields["job"], "syslog");
    assert_eq!(r.fields["app"], "pgbouncer");
    assert_eq!(r.fields["unit"], "pgbouncer");
    // The journalctl of the killed shipper got a broken pipe at its next entry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(orphan) {
        assert!(
            Instant::now() < deadline,
            "the orphaned journalctl {orphan} still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = *pids().last().unwrap();
    assert!(running(live));
    stop(shipper);
    assert!(!running(live), "journalctl {live} outlived the shipper");
}

// The log_shipper binary with a disk buffer, killed with SIGKILL twice: once with records
// only in the buffer (the receiver down, the checkpoint already past them), once mid-stream.
// Nothing is lost; duplicates come only from the batch in flight and the last group written
// to the buffer before its checkpoint.

fn checkpoint_offset(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("ckpt/app.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["files"][0]["offset"].as_u64()
}

/// Waits until source `app`'s checkpoint is at the end of `file`.
async fn wait_checkpoint_at_end(shipper: &Agent, dir: &Path, file: &Path) {
    let size = std::fs::metadata(file).unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint_offset(dir) != Some(size) {
        assert!(Instant::now() < deadline, "{}", shipper.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_disk_buffer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    rx.stop().await;
    let max_events = 500;
    let config = dir.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        format!(
            "checkpoint_dir: {ckpt}\nsources:\n  app:\n    include: ['{file}']\n    format: plain\n    rescan_interval: 200ms\nsinks:\n  vl:\n    type: victorialogs\n    endpoint: {url}\n    batch: {{max_events: {max_events}, timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 500ms}}\n    buffer: {{type: disk, max_size: 64MiB, max_chunks: 2}}\n",
            ckpt = dir.path().join("ckpt").display(),
            file = file.display(),
            url = rx.url(),
        ),
    )
    .unwrap();
    let log = dir.path().join("shipper.log");

    // 1. The receiver is down: the records go to the disk buffer and the checkpoint moves
    //    past them; then SIGKILL.
    let shipper = start(&config, &log);
    append(&file, 0..20_000);
    wait_checkpoint_at_end(&shipper, dir.path(), &file).await;
    let buffered = metric(&shipper, "log_shipper_disk_buffer_bytes{sink=\"vl\"}").unwrap();
    assert!(buffered > 2_000_000.0, "{buffered}");
    assert_eq!(
        metric(&shipper, "log_shipper_disk_buffer_max_bytes{sink=\"vl\"}"),
        Some(64.0 * 1024.0 * 1024.0)
    );
    shipper.kill9();

    // 2. The receiver is back; a writer appends continuously; SIGKILL mid-stream.
    rx.restart().await;
    let shipper = start(&config, &log);
    let total = 60_000u64;
    let f2 = file.clone();
    let writer = std::thread::spawn(move || {
        let mut n = 20_000;
        while n < total {
            append(&f2, n..(n + 1000).min(total));
            n += 1000;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    rx.wait_for(60, "the buffered records and some more", |rs| {
        rs.len() > 25_000
    })
    .await;
    shipper.kill9();
    let at_kill = rx.records().len();
    let shipper = start(&config, &log);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    rx.wait_for(120, "every record", |rs| {
        let mut seen = std::collections::HashSet::new();
        for r in rs {
            seen.insert(r.seq());
        }
        seen.len() as u64 >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let c = counts(&rx);
    assert_eq!(c.len() as u64, total, "missing records");
    let dups: usize = c.values().map(|v| v - 1).sum();
    // The reader's batch in flight, plus the last group written to the buffer before its
    // checkpoint was on disk (at most max_chunks + 1 chunks of 128 KiB, ~1300 lines each).
    let bound = max_events + 3 * (128 * 1024 / 100);
    eprintln!("received {at_kill} before the 2nd SIGKILL; {dups} duplicates (bound {bound})");
    assert!(dups <= bound, "{dups} duplicates");
    let metrics = scrape(&shipper).unwrap();
    for family in [
        "log_shipper_disk_buffer_bytes{sink=\"vl\"}",
        "log_shipper_buffer_dropped_events_total{sink=\"vl\"} 0",
        "log_shipper_disk_buffer_corrupt_frames_total{sink=\"vl\"}",
    ] {
        assert!(metrics.contains(family), "{family} missing from\n{metrics}");
    }

    // SIGHUP: the old pipeline closes its disk buffer before the new one opens it.
    shipper.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(
        &shipper,
        "log_shipper_config_reloads_total{result=\"success\"}",
    ) != Some(1.0)
    {
        assert!(Instant::now() < deadline, "no reload:\n{}", shipper.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    append(&file, total..total + 1000);
    rx.wait_for(60, "the records after the reload", |rs| {
        rs.iter().any(|r| r.seq() == total + 999)
    })
    .await;
    assert!(!shipper.logs().contains("in use"), "{}", shipper.logs());
}

/// A disk buffer that fills with `when_full: drop_newest` loses records, and says so: every
/// dropped record is in the counter and in the warnings, none silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_buffer_counts_and_logs_every_record_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let mut rx = Receiver::start().await;
    rx.stop().await;
    let config = dir.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        plain_config(dir.path(), &file, &rx.url(), "pg-test-1", 500)
            + "    buffer: {type: disk, max_size: 64KiB, when_full: drop_newest}\n",
    )
    .unwrap();
    let log = dir.path().join("shipper.log");
    let shipper = start(&config, &log);
    let total = 5000;
    append(&file, 0..total);
    // Dropped records count as acknowledged: reading goes on to the end of the file.
    wait_checkpoint_at_end(&shipper, dir.path(), &file).await;
    let dropped = metric(
        &shipper,
        "log_shipper_buffer_dropped_events_total{sink=\"vl\"}",
    )
    .unwrap();
    assert!(dropped > (total / 2) as f64, "dropped {dropped}");
    // The drops still unlogged (warnings come at most every 10 s) are logged at the stop.
    stop(shipper);
    let logged: f64 = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("Disk buffer full"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("dropped="))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum();
    assert_eq!(logged, dropped, "records dropped but not logged");
}

/// Without `--web.listen-address`, /metrics is on :9598, as Vector's internal metrics exporter
/// was in Pigsty.
#[test]
fn listens_on_9598_by_default() {
    if test_harness::ports::is_listening(9598) {
        eprintln!("port 9598 is taken here (a sandbox?); default port not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("log_shipper.yml");
    std::fs::write(
        &config,
        plain_config(
            dir.path(),
            &dir.path().join("app.log"),
            "http://127.0.0.1:9",
            "pg-test-1",
            100,
        ),
    )
    .unwrap();
    let shipper = Agent::builder("log_shipper", env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", config.display()))
        .default_port(9598)
        .kill_on_drop()
        .start();
    // The answer came from this process, not from something that took the port meanwhile.
    assert!(shipper.is_running(), "exited: {}", shipper.logs());
    let body = shipper.metrics();
    assert!(body.contains("log_shipper_uptime_seconds"), "{body}");
}
