//! The exporter under test and reading its output, shared by this crate's integration tests.

use std::process::Command;
use std::time::{Duration, Instant};

use test_harness::{ManagedChild, free_port};

/// A running pgbackrest_exporter (stopped with SIGTERM on drop) and where its log goes.
pub(crate) struct Exporter {
    pub(crate) process: ManagedChild,
    port: u16,
    /// How long [`wait_for`](Self::wait_for) waits.
    wait: Duration,
    _dir: tempfile::TempDir,
}

impl Exporter {
    /// Starts it on a free port with `args` and waits (at most `wait`) until it answers.
    pub(crate) fn start(args: &[String], wait: Duration) -> Exporter {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgbackrest_exporter"));
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .env("TZ", "UTC");
        let log = dir.path().join("exporter.log");
        let process = ManagedChild::spawn("pgbackrest_exporter", &mut cmd, &log).unwrap();
        let exporter = Exporter {
            process,
            port,
            wait,
            _dir: dir,
        };
        exporter.wait_for("the exporter to listen", || exporter.scrape().is_some());
        exporter
    }

    /// `/metrics`, if it answers 200.
    pub(crate) fn scrape(&self) -> Option<String> {
        let r = test_harness::http::get(&format!("http://127.0.0.1:{}/metrics", self.port), &[])
            .ok()?;
        (r.status == 200).then_some(r.body)
    }

    pub(crate) fn metrics(&self) -> String {
        self.scrape().expect("/metrics answers 200")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// Polls `cond` every 50 ms until it holds; fails with the log after the start's `wait`.
    pub(crate) fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + self.wait;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The samples of metric `name` (exactly that name, with or without labels).
pub(crate) fn series<'t>(text: &'t str, name: &'t str) -> impl Iterator<Item = &'t str> {
    text.lines()
        .filter(move |l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
}

/// The value of the one series `name{...}` containing all `labels`.
pub(crate) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = series(text, name)
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
