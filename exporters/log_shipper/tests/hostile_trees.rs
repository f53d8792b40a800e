//! log_shipper under directory trees built to hurt it: symlink loops, an exponential fan of
//! links, a 100k-file tree, at start and after a SIGHUP. Memory stays bounded, the real file
//! is shipped once, the limits are warned about and counted, and SIGTERM ends the process
//! within its stop grace, also in the middle of a huge expansion.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use test_harness::Agent;
use test_harness::agent::value;

/// log_shipper's stop grace (`STOP_GRACE` in main.rs).
const STOP_GRACE: Duration = Duration::from_secs(5);

fn start(config: &Path) -> Agent {
    Agent::builder("log_shipper", env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", config.display()))
        .kill_on_drop()
        .start()
}

/// SIGTERM; fails unless the process exits within the stop grace. Returns how long it took.
fn stop_within_grace(shipper: Agent) -> Duration {
    let t = Instant::now();
    shipper.stop(STOP_GRACE);
    t.elapsed()
}

/// A field of `/proc/<pid>/status`, in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of the process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn config(dir: &Path, include: &str, extra: &str) -> String {
    format!(
        "checkpoint_dir: {ckpt}\nsources:\n  app:\n    include: ['{include}']\n    format: plain\n    rescan_interval: 200ms\n{extra}sinks:\n  f:\n    type: file\n    path: {out}\n    batch: {{timeout: 100ms}}\n",
        ckpt = dir.join("ckpt").display(),
        out = dir.join("out.jsonl").display(),
    )
}

/// The messages written to the file sink.
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

/// The tree: `in/a.log` and two loops, `in/s1 -> .` and `in/s2 -> .`; plus a fan
/// `in/fan/d0 -> {a, b} -> d1 -> {a, b} -> ... d39`: 2^40 paths through 40 directories.
fn hostile_tree(dir: &Path) -> PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.log"), "hello\n").unwrap();
    symlink(".", input.join("s1")).unwrap();
    symlink(".", input.join("s2")).unwrap();
    let fan = input.join("fan");
    for i in 0..40 {
        std::fs::create_dir_all(fan.join(format!("d{i}"))).unwrap();
        if i > 0 {
            for link in ["a", "b"] {
                symlink(
                    fan.join(format!("d{i}")),
                    fan.join(format!("d{}/{link}", i - 1)),
                )
                .unwrap();
            }
        }
    }
    input
}

/// What the metrics say of the source `app`.
fn glob_metrics(shipper: &Agent) -> (f64, f64, f64) {
    let m = shipper.metrics();
    let v = |name: &str| value(&m, name, &[("source", "app")]).unwrap_or(-1.0);
    (
        v("log_shipper_source_glob_files"),
        v("log_shipper_source_glob_directories"),
        v("log_shipper_source_glob_limit_hits_total"),
    )
}

#[test]
fn symlink_loops_cost_one_listing_and_the_file_ships_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = hostile_tree(dir.path());
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        config(dir.path(), &format!("{}/**/*.log", input.display()), ""),
    )
    .unwrap();
    let shipper = start(&cfg);
    let pid = shipper.pid();
    let cpu_at_start = cpu_seconds(pid);
    shipper.wait_until("a.log shipped", Duration::from_secs(10), || {
        !shipped(dir.path()).is_empty()
    });
    // Ten more expansions (every 200 ms) of the same tree.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(shipped(dir.path()), ["hello"]);
    let (files, dirs, hits) = glob_metrics(&shipper);
    // in, fan and d0..d39: each listed once, however many paths lead to it.
    assert_eq!((files, dirs, hits), (1.0, 42.0, 0.0));
    let cpu = cpu_seconds(pid) - cpu_at_start;
    let hwm = status_kib(pid, "VmHWM");
    eprintln!("{cpu:.2} s of CPU over 2 s of expansions; peak RSS {hwm} KiB");
    assert!(cpu < 1.0, "{cpu} s of CPU");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB");
    let took = stop_within_grace(shipper);
    eprintln!("stopped {took:?} after SIGTERM");
}

#[test]
fn a_reload_into_a_looping_glob_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let input = hostile_tree(dir.path());
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        config(dir.path(), &format!("{}/*.none", input.display()), ""),
    )
    .unwrap();
    let shipper = start(&cfg);
    std::fs::write(
        &cfg,
        config(dir.path(), &format!("{}/**/*.log", input.display()), ""),
    )
    .unwrap();
    shipper.signal("HUP");
    shipper.wait_until("a.log shipped", Duration::from_secs(10), || {
        !shipped(dir.path()).is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(shipped(dir.path()), ["hello"]);
    let m = shipper.metrics();
    assert_eq!(
        value(
            &m,
            "log_shipper_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    let hwm = status_kib(shipper.pid(), "VmHWM");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB");
    stop_within_grace(shipper);
}

/// `tree/d000..d099/f0000..f0999.log`, empty, on tmpfs when there is one (fast to make).
fn tree_100k() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let t = Instant::now();
    for d in 0..100 {
        let sub = dir.path().join(format!("tree/d{d:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..1000 {
            std::fs::File::create(sub.join(format!("f{f:04}.log"))).unwrap();
        }
    }
    eprintln!("100k files made in {:?}", t.elapsed());
    dir
}

#[test]
fn a_100k_file_tree_is_cut_at_max_files_and_sigterm_ends_a_huge_expansion() {
    let dir = tree_100k();
    let tree = dir.path().join("tree");
    let cfg = dir.path().join("c.yml");
    let include = format!("{}/**/*.log", tree.display());

    // Defaults: 1000 files read, the rest left out with one warning and a counter.
    std::fs::write(&cfg, config(dir.path(), &include, "")).unwrap();
    let shipper = start(&cfg);
    let pid = shipper.pid();
    shipper.wait_until("the limit counted", Duration::from_secs(20), || {
        glob_metrics(&shipper).2 >= 1.0
    });
    let cpu_at = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds(pid) - cpu_at;
    let (files, dirs, hits) = glob_metrics(&shipper);
    assert_eq!(files, 1000.0);
    assert!(dirs <= 3.0, "{dirs} directories listed for 1000 files");
    assert!(hits >= 2.0, "every expansion counts: {hits}");
    let m = shipper.metrics();
    assert_eq!(
        value(
            &m,
            "log_shipper_source_files_opened_total",
            &[("source", "app")]
        ),
        Some(1000.0)
    );
    let logs = shipper.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("level=warn") && l.contains("limit=max_files"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "warned once, not at every expansion:\n{logs}"
    );
    assert!(warnings[0].contains("value=1000"), "{}", warnings[0]);
    let hwm = status_kib(pid, "VmHWM");
    eprintln!("1000 of 100k files: {cpu:.2} s of CPU over 2 s; peak RSS {hwm} KiB");
    assert!(cpu < 1.0, "{cpu} s of CPU");
    assert!(hwm < 96 * 1024, "peak RSS {hwm} KiB");
    stop_within_grace(shipper);

    // Raised limits and the fan of links: SIGTERM arrives while the globs are expanded and
    // the files opened.
    std::fs::remove_dir_all(dir.path().join("ckpt")).unwrap();
    hostile_tree(&tree);
    std::fs::write(
        &cfg,
        config(
            dir.path(),
            &include,
            "    max_files: 10000\n    max_directories: 100000\n",
        ),
    )
    .unwrap();
    let log = dir.path().join("second.log");
    let shipper = Agent::builder("log_shipper", env!("CARGO_BIN_EXE_log_shipper"))
        .arg(format!("--config={}", cfg.display()))
        .log_file(&log)
        .kill_on_drop()
        .start();
    let took = stop_within_grace(shipper);
    let opened = std::fs::read_to_string(&log)
        .unwrap()
        .matches("Reading file.")
        .count();
    eprintln!("stopped {took:?} after SIGTERM, {opened} of 10000 files opened by then");
}
