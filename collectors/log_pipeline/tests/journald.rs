//! The journald source against journal files the tests make: `systemd-journal-remote`
//! converts export-format input (written here, with a non-UTF-8 and a multi-line MESSAGE)
//! into `.journal` files, and the source reads them through `journalctl --directory=`.
//! Every record arrives exactly once with Pigsty's syslog fields, through a journalctl
//! killed under it and a restart of the pipeline, and `read_from: end` starts at the end.

mod receiver;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log_pipeline::config::Config;
use log_pipeline::pipeline::Pipeline;
use log_pipeline::stats::Stats;
use receiver::{Received, Receiver};

const GRACE: Duration = Duration::from_secs(5);
const BOOT_ID: &str = "6c0d1b7e5f0a4c7e9f3e2d1c0b0a0908";
/// The boot of entries numbered from 10000 on.
const LATER_BOOT_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// 2023-11-14T22:13:20Z in microseconds.
const T0: u64 = 1_700_000_000_000_000;

fn journal_remote() -> PathBuf {
    ["/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("systemd-journal-remote is needed (Debian package systemd-journal-remote; scripts/setup installs it)")
}

/// What entry `n` holds.
fn unit_of(n: u64) -> &'static str {
    match n % 3 {
        0 => "pgbouncer.service",
        1 => "pg_exporter.service",
        _ => "cron.service",
    }
}

fn priority_of(n: u64) -> u64 {
    n % 8
}

fn message_of(n: u64) -> Vec<u8> {
    match n % 50 {
        7 => format!("seq={n} bad bytes \u{1}")
            .into_bytes()
            .into_iter()
            .chain([0xff, 0xfe, b'!'])
            .collect(),
        8 => format!("seq={n} first line\nsecond line\n\tthird, tabbed").into_bytes(),
        _ => format!("seq={n} stats: 0 xacts/s, 0 queries/s, in 0 B/s, out 0 B/s").into_bytes(),
    }
}

fn expected_message(n: u64) -> String {
    String::from_utf8_lossy(&message_of(n)).into_owned()
}

/// One entry in the journal export format: `KEY=value` lines, and the binary form (name,
/// little-endian length, bytes) for MESSAGE, so that any byte is allowed, newlines included.
/// (systemd-journal-remote refuses the `__` fields in the binary form.)
fn export_entry(n: u64) -> Vec<u8> {
    let mut fields: Vec<(&str, Vec<u8>)> = vec![
        (
            "__REALTIME_TIMESTAMP",
            (T0 + n * 1000).to_string().into_bytes(),
        ),
        (
            "__MONOTONIC_TIMESTAMP",
            (1_000_000 + n).to_string().into_bytes(),
        ),
        (
            "_BOOT_ID",
            if n >= 10_000 { LATER_BOOT_ID } else { BOOT_ID }
                .as_bytes()
                .to_vec(),
        ),
        ("MESSAGE", message_of(n)),
        ("PRIORITY", priority_of(n).to_string().into_bytes()),
        ("_SYSTEMD_UNIT", unit_of(n).as_bytes().to_vec()),
        ("_PID", (1000 + n % 5).to_string().into_bytes()),
        ("_COMM", b"comm".to_vec()),
    ];
    // Half the entries have a SYSLOG_IDENTIFIER; the others fall back to _COMM.
    if n.is_multiple_of(2) {
        fields.push((
            "SYSLOG_IDENTIFIER",
            unit_of(n).trim_end_matches(".service").as_bytes().to_vec(),
        ));
    }
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        if k == "MESSAGE" {
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(&v);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Appends entries `range` to the journal file `file` (created if needed).
fn write_journal(file: &Path, range: std::ops::Range<u64>) {
    let range_len = range.end - range.start;
    let mut child = Command::new(journal_remote())
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for n in range {
            stdin.write_all(&export_entry(n)).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("writing {range_len} entries")),
        "systemd-journal-remote did not take every entry: {stderr}"
    );
    assert!(
        out.status.success(),
        "systemd-journal-remote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `journalctl` that notes its pid before it becomes the real one.
fn journalctl_wrapper(dir: &Path) -> PathBuf {
    let path = dir.join("journalctl.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho $$ >> {}\nexec journalctl \"$@\"\n",
            dir.join("pids").display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether process `pid` still exists (a zombie counts: it was not reaped).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn config(dir: &Path, sources: &str, url: &str) -> Config {
    let yaml = format!(
        "checkpoint_dir: {}\nfields: {{ins: node-1, ip: 127.0.0.1, cls: nodes}}\nsources:\n{sources}\nsinks:\n  vl:\n    type: victorialogs\n    endpoint: {url}\n    batch: {{timeout: 100ms, max_events: 70}}\n    retry: {{initial_backoff: 100ms, max_backoff: 500ms}}\n  loki:\n    type: loki\n    endpoint: {url}\n    batch: {{timeout: 100ms}}\n",
        dir.join("ckpt").display()
    );
    Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn counts(rx: &Receiver, api: &str, ins: &str) -> BTreeMap<u64, usize> {
    rx.seq_counts(|r| r.api == api && r.fields["ins"] == ins)
}

async fn wait_count(rx: &Receiver, api: &'static str, ins: &'static str, n: usize) {
    rx.wait_for(
        60,
        &format!("{n} distinct records of {ins} via {api}"),
        move |rs| {
            let mut seen = std::collections::HashSet::new();
            for r in rs.iter().filter(|r| r.api == api && r.fields["ins"] == ins) {
                seen.insert(r.seq());
            }
            seen.len() >= n
        },
    )
    .await;
}

fn assert_exactly(rx: &Receiver, api: &str, ins: &str, expected: &[u64]) {
    let c = counts(rx, api, ins);
    let missing: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|n| !c.contains_key(n))
        .take(10)
        .collect();
    let dups: Vec<_> = c.iter().filter(|(_, v)| **v > 1).take(10).collect();
    let extra: Vec<_> = c
        .keys()
        .filter(|n| !expected.contains(n))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "{api}/{ins}: missing {missing:?}");
    assert!(dups.is_empty(), "{api}/{ins}: duplicates {dups:?}");
    assert!(extra.is_empty(), "{api}/{ins}: unexpected {extra:?}");
}

/// Entries of the two subscribed units (pgbouncer, pg_exporter) among `range`.
fn subscribed(range: std::ops::Range<u64>) -> Vec<u64> {
    range.filter(|n| unit_of(*n) != "cron.service").collect()
}

fn cursor_in_file(dir: &Path, source: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(dir.join("ckpt").join(format!("{source}.journal.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["cursor"].as_str().map(str::to_owned)
}

/// The cursor journalctl gives the last entry of the subscribed units.
fn last_cursor(journal_dir: &Path) -> String {
    let out = Command::new("journalctl")
        .arg(format!("--directory={}", journal_dir.display()))
        .args([
            "--output=json",
            "--lines=1",
            "--no-pager",
            "_SYSTEMD_UNIT=pgbouncer.service",
            "_SYSTEMD_UNIT=pg_exporter.service",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["__CURSOR"].as_str().unwrap().to_owned()
}

fn check_fields(r: &Received) {
    let n = r.seq();
    let f = &r.fields;
    assert_eq!(r.message(), expected_message(n), "message of {n}");
    assert_eq!(f["job"], "syslog");
    assert_eq!(f["ins"], "node-1");
    assert_eq!(f["ip"], "127.0.0.1");
    assert_eq!(f["cls"], "nodes");
    let level = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ][priority_of(n) as usize];
    assert_eq!(f["level"], level, "level of {n}");
    assert_eq!(f["p"], priority_of(n).to_string());
    let unit = unit_of(n).trim_end_matches(".service");
    assert_eq!(f["unit"], unit);
    assert_eq!(f["app"], if n.is_multiple_of(2) { unit } else { "comm" });
    assert_eq!(f["pid"], (1000 + n % 5).to_string());
    let t = jiff::Timestamp::from_microsecond((T0 + n * 1000) as i64).unwrap();
    assert_eq!(f["_time"], format!("{t:.3}"), "_time of {n}");
}

async fn wait_cursor(dir: &Path, source: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cursor_in_file(dir, source).as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "cursor file of {source} never reached {want}: {:?}",
        cursor_in_file(dir, source)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_entries_arrive_exactly_once_across_journalctl_and_pipeline_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let x = journal.join("x.journal");
    write_journal(&x, 0..300);
    let wrapper = journalctl_wrapper(dir.path());
    let rx = Receiver::start().await;
    let source = format!(
        "  syslog:\n    type: journald\n    directory: {}\n    units: [pgbouncer, pg_exporter.service]\n    journalctl: {}\n",
        journal.display(),
        wrapper.display()
    );
    let cfg = config(dir.path(), &source, &rx.url());
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();

    // 1. Everything already in the journal, of the subscribed units only.
    wait_count(&rx, "jsonline", "node-1", subscribed(0..300).len()).await;
    // 2. Entries appended while journalctl follows.
    write_journal(&x, 300..400);
    wait_count(&rx, "jsonline", "node-1", subscribed(0..400).len()).await;
    wait_cursor(dir.path(), "syslog", &last_cursor(&journal)).await;

    // 3. journalctl killed under the source: restarted after the last entry read.
    let first = pids(dir.path());
    assert_eq!(first.len(), 1, "one journalctl: {first:?}");
    assert!(
        Command::new("kill")
            .arg("-9")
            .arg(first[0].to_string())
            .status()
            .unwrap()
            .success()
    );
    write_journal(&x, 400..500);
    wait_count(&rx, "jsonline", "node-1", subscribed(0..500).len()).await;
    wait_cursor(dir.path(), "syslog", &last_cursor(&journal)).await;
    assert!(
        pids(dir.path()).len() >= 2,
        "journalctl was not started again"
    );
    let text = stats.render();
    assert!(
        text.contains("log_shipper_journald_restarts_total{source=\"syslog\"} 1\n"),
        "one restart expected:\n{text}"
    );
    p.stop(GRACE).await;
    // No journalctl left behind, not even a zombie.
    for pid in pids(dir.path()) {
        assert!(!alive(pid), "journalctl {pid} outlived the pipeline");
    }
    assert_eq!(
        cursor_in_file(dir.path(), "syslog").unwrap(),
        last_cursor(&journal)
    );

    // 4. Entries written while the shipper is down, in the same file and in a new one: a new
    //    pipeline resumes after the cursor, with no repeat and no gap.
    write_journal(&x, 500..550);
    write_journal(&journal.join("y.journal"), 550..600);
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_count(&rx, "jsonline", "node-1", subscribed(0..600).len()).await;
    wait_count(&rx, "loki_proto", "node-1", subscribed(0..600).len()).await;
    wait_cursor(dir.path(), "syslog", &last_cursor(&journal)).await;
    p.stop(GRACE).await;
    for pid in pids(dir.path()) {
        assert!(!alive(pid), "journalctl {pid} outlived the pipeline");
    }

    let expected = subscribed(0..600);
    assert_exactly(&rx, "jsonline", "node-1", &expected);
    assert_exactly(&rx, "loki_proto", "node-1", &expected);
    let jsonl = rx.records_of("jsonline");
    for r in &jsonl {
        check_fields(r);
    }
    // The odd ones are among them, intact.
    let by_seq: BTreeMap<u64, &Received> = jsonl.iter().map(|r| (r.seq(), r)).collect();
    assert_eq!(
        by_seq[&57].message(),
        "seq=57 bad bytes \u{1}\u{fffd}\u{fffd}!"
    );
    assert_eq!(
        by_seq[&58].message(),
        "seq=58 first line\nsecond line\n\tthird, tabbed"
    );
    let text = stats.render();
    let bad = (0..600)
        .filter(|n| n % 50 == 7 && unit_of(*n) != "cron.service")
        .count();
    assert!(
        text.contains(&format!(
            "log_shipper_source_invalid_utf8_records_total{{source=\"syslog\"}} {bad}\n"
        )),
        "{text}"
    );
    // Loki labels: the static fields.
    let loki = rx.records_of("loki_proto");
    assert_eq!(
        loki[0].labels.get("job").map(String::as_str),
        Some("syslog")
    );
    assert_eq!(
        loki[0].labels.get("ins").map(String::as_str),
        Some("node-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_end_and_the_level_filter() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let x = journal.join("x.journal");
    write_journal(&x, 0..100);
    let rx = Receiver::start().await;
    let sources = format!(
        "  tail:\n    type: journald\n    directory: {d}\n    units: [pgbouncer, pg_exporter]\n    read_from: end\n  warn:\n    type: journald\n    directory: {d}\n    identifiers: [pgbouncer]\n    min_level: warning\n    fields: {{ins: warn-only, job: pgbouncer}}\n",
        d = journal.display()
    );
    let cfg = config(dir.path(), &sources, &rx.url());
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    // The level-filtered source reads the journal from its beginning: entries with a
    // SYSLOG_IDENTIFIER of pgbouncer (even and pgbouncer.service) and PRIORITY <= 4.
    let warn = |range: std::ops::Range<u64>| -> Vec<u64> {
        range
            .filter(|n| {
                n.is_multiple_of(2) && unit_of(*n) == "pgbouncer.service" && priority_of(*n) <= 4
            })
            .collect()
    };
    wait_count(&rx, "jsonline", "warn-only", warn(0..100).len()).await;
    // read_from: end wrote the journal's end as its cursor at once.
    wait_cursor(dir.path(), "tail", &last_cursor(&journal)).await;
    p.stop(GRACE).await;
    assert!(
        counts(&rx, "jsonline", "node-1").is_empty(),
        "read_from: end shipped old entries"
    );

    // Written while stopped: the next start reads them (the end was recorded at first start).
    write_journal(&x, 100..130);
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_count(&rx, "jsonline", "node-1", subscribed(100..130).len()).await;
    write_journal(&x, 130..160);
    wait_count(&rx, "jsonline", "node-1", subscribed(100..160).len()).await;
    wait_count(&rx, "jsonline", "warn-only", warn(0..160).len()).await;
    p.stop(GRACE).await;

    assert_exactly(&rx, "jsonline", "node-1", &subscribed(100..160));
    assert_exactly(&rx, "jsonline", "warn-only", &warn(0..160));
    for r in rx.records_of("jsonline") {
        if r.fields["ins"] == "warn-only" {
            assert_eq!(r.fields["job"], "pgbouncer");
            assert_eq!(r.fields["app"], "pgbouncer");
        }
    }
    let filtered = (0..160u64)
        .filter(|n| {
            n.is_multiple_of(2) && unit_of(*n) == "pgbouncer.service" && priority_of(*n) > 4
        })
        .count();
    assert!(
        stats.render().contains(&format!(
            "log_shipper_source_filtered_records_total{{source=\"warn\"}} {filtered}\n"
        )),
        "{}",
        stats.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_an_earlier_boot_are_not_skipped_after_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let x = journal.join("x.journal");
    write_journal(&x, 0..10);
    let rx = Receiver::start().await;
    let source = format!(
        "  syslog:\n    type: journald\n    directory: {}\n",
        journal.display()
    );
    let cfg = config(dir.path(), &source, &rx.url());
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_count(&rx, "jsonline", "node-1", 10).await;
    p.stop(GRACE).await;
    // The shipper is down; the boot goes on, then the node reboots (a new boot ID).
    write_journal(&x, 10..20);
    write_journal(&x, 10_000..10_010);
    let p = Pipeline::start(&cfg, &stats).unwrap();
    wait_count(&rx, "jsonline", "node-1", 30).await;
    p.stop(GRACE).await;
    let expected: Vec<u64> = (0..20).chain(10_000..10_010).collect();
    assert_exactly(&rx, "jsonline", "node-1", &expected);
}
