//! log_shipper on a real Patroni cluster (Patroni 3.0, etcd 3.4, PostgreSQL 15, two members)
//! through a switchover, a hard failover (kill -9 of the leader's Patroni and postmaster), the
//! old leader's rejoin (crash recovery, pg_rewind when needed) and a kill -9 of a replica's
//! postmaster while its Patroni keeps answering REST calls (which provokes Patroni's
//! `ERROR: get_postgresql_status` tracebacks, gotcha 7 of `patroni_lab.md`).
//!
//! One log_shipper tails both members' `patroni.log` (format `patroni`) and csvlog files
//! (`postgres_csv`) and ships to a receiver's VictoriaLogs JSON-lines API and Loki protobuf API.
//! Meanwhile a writer logs numbered markers (`RAISE LOG`) on the leader, or on whichever member
//! answers while the leader is gone, every ~25 ms. At the end both members are stopped, so the
//! files are final, and the test frames them itself (csv by quotes, Patroni by its
//! `YYYY-MM-DD HH:MM:SS,mmm LEVEL: ` head, an implementation independent of the shipper's) and
//! asserts, per API:
//!
//! - every record of every file arrived exactly once: each marker line once (none missing, no
//!   gap in the numbers), the csv record count per member, and every Patroni entry as the
//!   same (member, time, level, message), continuation lines included;
//! - Patroni's multi-line entries arrived whole: a `primary: history=` with its TAB-separated
//!   timeline lines, full `pg_controldata:` dumps, chained `get_postgresql_status` tracebacks
//!   (and pg_rewind's stderr when pg_rewind ran), and no record starts with a continuation
//!   line;
//! - the schema: `job` patroni / postgres, `level` normalised, `topic` main, the static fields,
//!   Loki labels and VictoriaLogs stream fields;
//! - the shipper's /metrics: no parse error, nothing lost, dropped, failed, truncated or
//!   replayed, and its record counters equal what arrived.

#[path = "../../../collectors/log_pipeline/tests/receiver/mod.rs"]
mod receiver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use receiver::{Received, Receiver};
use test_harness::agent::sample;
use test_harness::{Agent, PatroniCluster, PatroniClusterBuilder, PatroniMember};

const MARKER: &str = "patroni_ha_marker";
const APIS: [&str; 2] = ["jsonline", "loki_proto"];

/// Starts log_shipper with `config`, its output appended to `log`; ready once `/metrics`
/// answers 200 (stopped on drop, reaped by the harness if the test dies).
fn start_shipper(config: &Path, log: &Path) -> Agent {
    Agent::builder("log_shipper", env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", config.display()))
        .arg("--log.level=debug")
        .log_file(log)
        .start()
}

/// Every sample of `name`: (labels, value).
fn samples<'b>(body: &'b str, name: &str) -> Vec<(&'b str, f64)> {
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, v) = rest.split_once("} ")?;
            Some((labels, v.trim().parse().ok()?))
        })
        .collect()
}

/// The `ins` of member `pgN`.
fn ins(m: &PatroniMember) -> String {
    format!("pg-test-{}", m.name().trim_start_matches("pg"))
}

fn config(dir: &Path, cluster: &PatroniCluster, url: &str) -> String {
    let mut sources = String::new();
    for m in cluster.members() {
        let name = m.name();
        sources.push_str(&format!(
            "  patroni_{name}:\n    include: ['{patroni}']\n    format: patroni\n    fields: {{ins: {ins}}}\n    rescan_interval: 200ms\n  postgres_{name}:\n    include: ['{pglog}/*.csv']\n    format: postgres_csv\n    fields: {{ins: {ins}}}\n    rescan_interval: 200ms\n",
            patroni = m.patroni_log_path().display(),
            pglog = m.pg_log_dir().display(),
            ins = ins(m),
        ));
    }
    format!(
        "checkpoint_dir: {ckpt}\ndead_letter_dir: {dead}\nfields: {{ip: 127.0.0.1, cls: pg-test}}\nsources:\n{sources}sinks:\n  vl:\n    type: victorialogs\n    endpoint: {url}\n    batch: {{timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 1s}}\n  loki:\n    type: loki\n    endpoint: {url}\n    batch: {{timeout: 100ms}}\n    retry: {{initial_backoff: 100ms, max_backoff: 1s}}\n",
        ckpt = dir.join("ckpt").display(),
        dead = dir.join("dead").display(),
    )
}

/// One attempt of the marker writer: marker `n`, attempt number `a` (unique per log line).
#[derive(Debug, Clone)]
struct Attempt {
    n: u64,
    a: u64,
    member: usize,
    ok: bool,
    at: Instant,
}

/// Logs markers `0..` until `stop` (and the last one succeeded): each on the member believed to
/// lead; a failed attempt is retried with the same `n` on the other member, and a marker
/// landing on a replica sends the next one to the other member.
fn write_markers(cluster: &PatroniCluster, stop: &AtomicBool) -> Vec<Attempt> {
    let members = cluster.members();
    let mut target = members
        .iter()
        .position(PatroniMember::is_primary)
        .unwrap_or(0);
    let (mut n, mut a) = (0u64, 0u64);
    let mut hold = 0u32;
    let mut attempts = Vec::new();
    let mut last_ok = Instant::now();
    loop {
        let sql = format!(
            "DO $$BEGIN RAISE LOG '{MARKER} n=% a=%', {n}, {a}; END$$; SELECT pg_is_in_recovery()"
        );
        let result = members[target].query("postgres", &sql);
        let ok = result.is_ok();
        attempts.push(Attempt {
            n,
            a,
            member: target,
            ok,
            at: Instant::now(),
        });
        a += 1;
        match result {
            Ok(in_recovery) => {
                n += 1;
                last_ok = Instant::now();
                if in_recovery == "t" && hold == 0 {
                    target = (target + 1) % members.len();
                }
                hold = hold.saturating_sub(1);
                if stop.load(Ordering::SeqCst) {
                    return attempts;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => {
                assert!(
                    last_ok.elapsed() < Duration::from_secs(40),
                    "no marker could be written for 40 s: {e:#}"
                );
                target = (target + 1) % members.len();
                hold = 20;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Sets the flag when dropped (also while unwinding), so the writer ends.
#[derive(Debug)]
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `(n, a)` of a marker message `patroni_ha_marker n=<n> a=<a>...`.
fn marker(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix(MARKER)?.strip_prefix(" n=")?;
    let (n, rest) = rest.split_once(" a=")?;
    let a: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((n.parse().ok()?, a.parse().ok()?))
}

/// csvlog text as records of fields (a newline outside quotes ends a record).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            '\n' if !quoted => {
                fields.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut fields));
            }
            c => field.push(c),
        }
    }
    assert!(
        field.is_empty() && fields.is_empty(),
        "unterminated csv record"
    );
    records
}

/// `YYYY-MM-DD HH:MM:SS,mmm LEVEL: ` → (Unix ms in local time, level word, message offset).
fn patroni_head(line: &str) -> Option<(i64, &str, usize)> {
    let b = line.as_bytes();
    let shape = b"dddd-dd-dd dd:dd:dd,ddd ";
    if b.len() < shape.len()
        || !shape.iter().zip(b).all(|(s, c)| match s {
            b'd' => c.is_ascii_digit(),
            s => s == c,
        })
    {
        return None;
    }
    let rest = &line[shape.len()..];
    let colon = rest.find(':')?;
    let level = &rest[..colon];
    if level.is_empty() || !level.bytes().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let civil: jiff::civil::DateTime = line[..23].replacen(',', ".", 1).parse().ok()?;
    let ms = TimeZone::system()
        .to_timestamp(civil)
        .ok()?
        .as_millisecond();
    let mut msg = shape.len() + colon + 1;
    if b.get(msg) == Some(&b' ') {
        msg += 1;
    }
    Some((ms, level, msg))
}

/// A Patroni entry as shipped: (ins, time in ms, level, message).
type Entry = (String, i64, String, String);

fn level_of(word: &str) -> &'static str {
    match word {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARNING" => "warning",
        "ERROR" => "err",
        "CRITICAL" => "crit",
        _ => "unknown",
    }
}

/// The entries of a Patroni log file: a head line and the lines up to the next head.
fn patroni_entries(ins: &str, text: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut current: Option<(i64, String, String)> = None;
    for line in text.lines() {
        if let Some((ms, level, msg)) = patroni_head(line) {
            if let Some((t, l, m)) = current.take() {
                out.push((ins.to_owned(), t, l, m.trim_end().to_owned()));
            }
            current = Some((ms, level_of(level).to_owned(), line[msg..].to_owned()));
        } else {
            let (_, _, m) = current
                .as_mut()
                .unwrap_or_else(|| panic!("{ins}: patroni.log starts with {line:?}"));
            m.push('\n');
            m.push_str(line);
        }
    }
    if let Some((t, l, m)) = current {
        out.push((ins.to_owned(), t, l, m.trim_end().to_owned()));
    }
    out
}

/// What the files hold once everything is stopped.
#[derive(Debug, Default)]
struct Expected {
    patroni: BTreeMap<Entry, usize>,
    patroni_count: BTreeMap<String, usize>,
    /// csv records per ins.
    csv_count: BTreeMap<String, usize>,
    /// (ins, a) -> n of every marker line in the csv files.
    markers: BTreeMap<(String, u64), u64>,
}

fn read_files(cluster: &PatroniCluster) -> Expected {
    let mut e = Expected::default();
    for m in cluster.members() {
        let ins = ins(m);
        let text = std::fs::read_to_string(m.patroni_log_path()).unwrap();
        let entries = patroni_entries(&ins, &text);
        e.patroni_count.insert(ins.clone(), entries.len());
        for entry in entries {
            *e.patroni.entry(entry).or_default() += 1;
        }
        let mut csv: Vec<PathBuf> = std::fs::read_dir(m.pg_log_dir())
            .unwrap()
            .map(|d| d.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        csv.sort();
        for path in csv {
            let text = std::fs::read_to_string(&path).unwrap();
            for rec in csv_records(&text) {
                assert!(
                    (23..=26).contains(&rec.len()),
                    "{}: {rec:?}",
                    path.display()
                );
                *e.csv_count.entry(ins.clone()).or_default() += 1;
                if let Some((n, a)) = marker(&rec[13]) {
                    assert_eq!(rec[11], "LOG", "{rec:?}");
                    assert!(
                        e.markers.insert((ins.clone(), a), n).is_none(),
                        "marker a={a} twice in {ins}'s csvlog"
                    );
                }
            }
        }
    }
    e
}

/// Size of every file the shipper reads.
fn file_sizes(cluster: &PatroniCluster) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for m in cluster.members() {
        let mut paths = vec![m.patroni_log_path()];
        paths.extend(
            std::fs::read_dir(m.pg_log_dir())
                .unwrap()
                .map(|d| d.unwrap().path()),
        );
        for p in paths {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            out.push((p, len));
        }
    }
    out.sort();
    out
}

fn field<'r>(r: &'r Received, k: &str) -> &'r str {
    r.fields[k].as_str().unwrap_or("")
}

/// Whether a Patroni message begins like a line that only ever continues an entry.
fn starts_like_continuation(m: &str) -> bool {
    let first = m.lines().next().unwrap_or("");
    let digits = first.bytes().take_while(u8::is_ascii_digit).count();
    m.is_empty()
        || m.starts_with('\t')
        || m.starts_with("  ")
        || m.starts_with("Traceback")
        || m.starts_with("During handling")
        || m.starts_with("psycopg2.")
        || m.starts_with("patroni.exceptions.")
        || m.starts_with("pg_rewind: ")
        || (digits > 0 && first.as_bytes().get(digits) == Some(&b'\t'))
}

fn count_tracebacks(member: &PatroniMember) -> usize {
    std::fs::read_to_string(member.patroni_log_path())
        .unwrap_or_default()
        .matches("ERROR: get_postgresql_status\nTraceback")
        .count()
}

#[test]
fn patroni_and_postgres_logs_of_both_members_ship_through_switchover_and_hard_failover() {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cluster = PatroniClusterBuilder::new().members(2).start().unwrap();
    let (pg1, pg2) = (
        cluster.member("pg1").unwrap(),
        cluster.member("pg2").unwrap(),
    );
    println!("cluster up after {:?}", started.elapsed());
    let rx = rt.block_on(Receiver::start());
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("log_shipper.yml");
    std::fs::write(&config_path, config(dir.path(), &cluster, &rx.url())).unwrap();
    let shipper = start_shipper(&config_path, &dir.path().join("shipper.log"));
    let shipper_log = || shipper.log_tail(40);

    let stop = AtomicBool::new(false);
    let mut phases: Vec<(&str, Instant)> = Vec::new();
    let attempts = std::thread::scope(|s| {
        let writer = s.spawn(|| write_markers(&cluster, &stop));
        let _stop = StopOnDrop(&stop);
        // The shipper delivers pg1's markers before anything happens.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !rx
            .records()
            .iter()
            .any(|r| field(r, "ins") == "pg-test-1" && marker(r.message()).is_some())
        {
            assert!(
                Instant::now() < deadline,
                "no marker shipped:\n{}",
                shipper_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        phases.push(("switchover pg1 -> pg2", Instant::now()));
        let change = cluster.switchover(pg2).unwrap();
        println!(
            "switchover: pg2 /primary after {:?}, writable after {:?}",
            change.primary_after, change.writable_after
        );
        cluster
            .wait_streaming(pg1, Duration::from_secs(60))
            .unwrap();

        phases.push(("hard failover of pg2", Instant::now()));
        let change = cluster.hard_failover().unwrap();
        assert_eq!(change.new.name(), "pg1");
        println!(
            "hard failover: pg1 /primary after {:?}, writable after {:?}",
            change.primary_after, change.writable_after
        );

        phases.push(("rejoin of pg2", Instant::now()));
        let took = cluster.rejoin(pg2).unwrap();
        println!("rejoin of pg2: streaming after {took:?}");

        // Gotcha 7: while a member's postmaster is down and its Patroni has not noticed yet,
        // every REST health check logs a chained `get_postgresql_status` traceback.
        phases.push(("kill -9 of pg2's postmaster", Instant::now()));
        let before = count_tracebacks(pg2);
        let postmaster = pg2.postmaster_pid().unwrap();
        assert!(
            Command::new("kill")
                .args(["-9", &postmaster.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut polls = 0;
        while count_tracebacks(pg2) == before {
            assert!(
                Instant::now() < deadline,
                "no get_postgresql_status traceback after {polls} REST calls:\n{}",
                pg2.log_tails()
            );
            let _ = pg2.rest_status("/health");
            polls += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "provoked {} traceback(s) with {polls} GET /health on pg2 ({before} before the kill)",
            count_tracebacks(pg2) - before
        );
        cluster
            .wait_streaming(pg2, Duration::from_secs(60))
            .unwrap();
        phases.push(("end", Instant::now()));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap()
    });
    println!("role changes done after {:?}", started.elapsed());

    // Stop both members at once, so the files are final; wait until no file grows.
    std::thread::scope(|s| {
        for m in cluster.members() {
            s.spawn(|| m.stop());
        }
    });
    let mut sizes = file_sizes(&cluster);
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stable_since.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "the log files keep growing");
        std::thread::sleep(Duration::from_millis(250));
        let now = file_sizes(&cluster);
        if now != sizes {
            sizes = now;
            stable_since = Instant::now();
        }
    }
    let expected = read_files(&cluster);

    // --- What the writer did.
    let ok: Vec<&Attempt> = attempts.iter().filter(|a| a.ok).collect();
    let markers = ok.len() as u64;
    assert!(markers > 100, "only {markers} markers written");
    assert!(ok.iter().enumerate().all(|(i, a)| a.n == i as u64));
    let max_gap = ok
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();
    let per_member = |m: usize| ok.iter().filter(|a| a.member == m).count();
    println!(
        "markers: {markers} written ({} on pg1, {} on pg2), {} failed attempts, longest pause \
         between two markers {max_gap:?}",
        per_member(0),
        per_member(1),
        attempts.len() - ok.len()
    );
    for w in phases.windows(2) {
        let n = ok
            .iter()
            .filter(|a| a.at >= w[0].1 && a.at < w[1].1)
            .count();
        println!(
            "  {}: {n} markers in {:?}",
            w[0].0,
            w[1].1.duration_since(w[0].1)
        );
    }
    assert!(max_gap < Duration::from_secs(15), "{max_gap:?}");
    assert!(per_member(0) > 0 && per_member(1) > 0);
    // Every acknowledged marker is in its member's csvlog (a failed attempt may be too).
    for a in &ok {
        let ins = ins(&cluster.members()[a.member]);
        assert_eq!(
            expected.markers.get(&(ins.clone(), a.a)),
            Some(&a.n),
            "acknowledged marker n={} a={} missing from {ins}'s csvlog",
            a.n,
            a.a
        );
    }
    let logged_twice = expected.markers.len() - markers as usize;
    println!(
        "csvlog: {:?} records, {} marker lines ({logged_twice} logged by attempts reported as \
         failed); patroni.log: {:?} entries",
        expected.csv_count,
        expected.markers.len(),
        expected.patroni_count
    );

    // --- Everything arrives, through both APIs.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rs = rx.records();
        let done = APIS.iter().all(|api| {
            let count = |job: &str, ins: &str| {
                rs.iter()
                    .filter(|r| r.api == *api && field(r, "job") == job && field(r, "ins") == ins)
                    .count()
            };
            expected
                .patroni_count
                .iter()
                .all(|(ins, n)| count("patroni", ins) >= *n)
                && expected
                    .csv_count
                    .iter()
                    .all(|(ins, n)| count("postgres", ins) >= *n)
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything arrived: {} records; shipper:\n{}",
            rs.len(),
            shipper_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A moment more, so that a late duplicate would be seen.
    std::thread::sleep(Duration::from_millis(1000));
    let records = rx.records();

    let mut received_per_api = BTreeMap::new();
    for api in APIS {
        let rs: Vec<&Received> = records.iter().filter(|r| r.api == api).collect();
        received_per_api.insert(api, rs.len());
        assert!(
            rs.iter().all(|r| r.fields.get("parse_error").is_none()),
            "{api}: parse errors: {:?}",
            rs.iter()
                .filter(|r| r.fields.get("parse_error").is_some())
                .take(3)
                .collect::<Vec<_>>()
        );
        for r in &rs {
            assert_eq!(field(r, "ip"), "127.0.0.1", "{r:?}");
            assert_eq!(field(r, "cls"), "pg-test", "{r:?}");
            let (want_labels, ins) = match api {
                "loki_proto" => (&["cls", "ins", "ip", "job"][..], field(r, "ins")),
                _ => (&["ins", "ip", "job"][..], field(r, "ins")),
            };
            assert!(ins == "pg-test-1" || ins == "pg-test-2", "{r:?}");
            assert_eq!(
                r.labels.keys().map(String::as_str).collect::<Vec<_>>(),
                want_labels,
                "{api}"
            );
        }

        // Markers: each line exactly once, on the member it was logged on; no gap.
        let mut got: BTreeMap<(String, u64), (u64, usize)> = BTreeMap::new();
        for r in rs.iter().filter(|r| field(r, "job") == "postgres") {
            if let Some((n, a)) = marker(r.message()) {
                assert_eq!(field(r, "level"), "info", "{r:?}");
                assert_eq!(field(r, "lv"), "LOG", "{r:?}");
                assert_eq!(field(r, "backend_type"), "client backend", "{r:?}");
                assert!(r.fields.get("topic").is_none(), "{r:?}");
                got.entry((field(r, "ins").to_owned(), a))
                    .or_insert((n, 0))
                    .1 += 1;
            }
        }
        let dups: Vec<_> = got.iter().filter(|(_, (_, c))| *c > 1).collect();
        assert!(dups.is_empty(), "{api}: markers received twice: {dups:?}");
        let missing: Vec<_> = expected
            .markers
            .keys()
            .filter(|k| !got.contains_key(*k))
            .collect();
        assert!(missing.is_empty(), "{api}: markers missing: {missing:?}");
        let extra: Vec<_> = got
            .keys()
            .filter(|k| !expected.markers.contains_key(*k))
            .collect();
        assert!(
            extra.is_empty(),
            "{api}: markers not in any file: {extra:?}"
        );
        let numbers: std::collections::BTreeSet<u64> = got.values().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            (0..markers).collect(),
            "{api}: gap in the marker numbers"
        );
        for (ins, n) in &expected.csv_count {
            let c = rs
                .iter()
                .filter(|r| field(r, "job") == "postgres" && field(r, "ins") == ins)
                .count();
            assert_eq!(c, *n, "{api}: csvlog records of {ins}");
        }

        // Patroni: every entry exactly once, whole.
        let patroni: Vec<&&Received> = rs.iter().filter(|r| field(r, "job") == "patroni").collect();
        let mut got: BTreeMap<Entry, usize> = BTreeMap::new();
        for r in &patroni {
            assert_eq!(field(r, "topic"), "main", "{r:?}");
            assert!(
                !starts_like_continuation(r.message()),
                "{api}: a continuation line shipped as its own record: {r:?}"
            );
            let entry = (
                field(r, "ins").to_owned(),
                (r.time_ns / 1_000_000) as i64,
                field(r, "level").to_owned(),
                r.message().to_owned(),
            );
            *got.entry(entry).or_default() += 1;
        }
        let missing: Vec<_> = expected
            .patroni
            .iter()
            .filter(|(k, n)| got.get(*k) != Some(n))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, n)| expected.patroni.get(*k) != Some(n))
            .take(5)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{api}: Patroni entries differ from the files;\nexpected (file count) but not \
             received so: {missing:#?}\nreceived (count) but not in the files so: {extra:#?}"
        );

        // The multi-line kinds, each as one record.
        let find = |pred: &dyn Fn(&str) -> bool| -> Vec<&Received> {
            patroni
                .iter()
                .map(|r| **r)
                .filter(|r| pred(r.message()))
                .collect()
        };
        let history = find(&|m| {
            m.starts_with("primary: history=")
                && m.lines().count() >= 2
                && m.lines().skip(1).all(|l| {
                    let d = l.bytes().take_while(u8::is_ascii_digit).count();
                    l == "..." || (d > 0 && l[d..].starts_with('\t') && l.contains('/'))
                })
        });
        assert!(
            !history.is_empty(),
            "{api}: no multi-line `primary: history=` record; history records: {:#?}",
            find(&|m| m.contains("history="))
        );
        let controldata = find(&|m| {
            m.starts_with("pg_controldata:\n  pg_control version number: ")
                && m.contains("\n  Database cluster state: ")
                && m.contains("\n  Latest checkpoint's TimeLineID: ")
                && m.contains("\n  Mock authentication nonce: ")
        });
        assert!(
            !controldata.is_empty(),
            "{api}: no whole pg_controldata dump; candidates: {:#?}",
            find(&|m| m.contains("pg_controldata"))
        );
        assert!(controldata.iter().all(|r| r.message().lines().count() > 40));
        let tracebacks = find(&|m| {
            m.starts_with("get_postgresql_status\nTraceback (most recent call last):\n  File ")
                && m.contains("\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n")
                && m.ends_with("PostgresConnectionException: 'connection problems'")
        });
        assert!(
            !tracebacks.is_empty(),
            "{api}: no whole get_postgresql_status traceback; candidates: {:#?}",
            find(&|m| m.starts_with("get_postgresql_status"))
        );
        assert!(tracebacks.iter().all(|r| field(r, "level") == "err"));
        assert!(tracebacks.iter().any(|r| field(r, "ins") == "pg-test-2"));
        let rewinds = find(&|m| m.starts_with("pg_rewind exit code="));
        let rewind_stderr = find(&|m| m.starts_with(" stderr=pg_rewind: "));
        if !rewinds.is_empty() {
            assert!(
                rewind_stderr.iter().any(|r| r
                    .message()
                    .lines()
                    .filter(|l| l.starts_with("pg_rewind: "))
                    .count()
                    >= 2),
                "{api}: pg_rewind ran but its stderr did not arrive whole: {rewind_stderr:#?}"
            );
        }
        if api == APIS[0] {
            println!(
                "multi-line Patroni records: {} `primary: history=` ({} lines max), {} \
                 pg_controldata dumps, {} get_postgresql_status tracebacks ({} lines max), \
                 pg_rewind ran {} time(s) ({} multi-line stderr records)",
                history.len(),
                history
                    .iter()
                    .map(|r| r.message().lines().count())
                    .max()
                    .unwrap_or(0),
                controldata.len(),
                tracebacks.len(),
                tracebacks
                    .iter()
                    .map(|r| r.message().lines().count())
                    .max()
                    .unwrap_or(0),
                rewinds.len(),
                rewind_stderr.len(),
            );
            let mut levels: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &patroni {
                *levels.entry(field(r, "level")).or_default() += 1;
            }
            println!("Patroni records by level: {levels:?}");
            for r in history.iter().chain(&rewind_stderr).take(4) {
                println!("  {}: {:?}", field(r, "ins"), r.message());
            }
            assert!(levels.contains_key("info") && levels.contains_key("warning"));
        }
    }
    println!("received per API: {received_per_api:?}");

    // --- The shipper's own account: nothing lost, and its counters match what arrived.
    let body = shipper.scrape().expect("/metrics");
    for family in [
        "log_shipper_source_parse_errors_total",
        "log_shipper_source_lost_bytes_total",
        "log_shipper_source_replayed_bytes_total",
        "log_shipper_source_truncated_records_total",
        "log_shipper_source_invalid_utf8_records_total",
        "log_shipper_source_filtered_records_total",
        "log_shipper_checkpoint_errors_total",
        "log_shipper_sink_events_failed_total",
        "log_shipper_buffer_dropped_events_total",
        "log_shipper_file_lag_bytes",
    ] {
        let s = samples(&body, family);
        assert!(!s.is_empty(), "{family} missing:\n{body}");
        assert!(s.iter().all(|(_, v)| *v == 0.0), "{family}: {s:?}");
    }
    for m in cluster.members() {
        let ins = ins(m);
        for (source, job) in [
            (format!("patroni_{}", m.name()), "patroni"),
            (format!("postgres_{}", m.name()), "postgres"),
        ] {
            let received = records
                .iter()
                .filter(|r| r.api == "jsonline" && field(r, "job") == job && field(r, "ins") == ins)
                .count();
            assert_eq!(
                sample(
                    &body,
                    &format!("log_shipper_source_records_total{{source=\"{source}\"}}")
                ),
                Some(received as f64),
                "{source}"
            );
        }
    }
    for (sink, api) in [("vl", "jsonline"), ("loki", "loki_proto")] {
        assert_eq!(
            sample(
                &body,
                &format!("log_shipper_sink_events_sent_total{{sink=\"{sink}\"}}")
            ),
            Some(received_per_api[api] as f64),
            "{sink}"
        );
    }
    println!("whole test: {:?}", started.elapsed());
}
