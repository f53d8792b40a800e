//! The exporter under test and reading its output, shared by this crate's integration tests.

use std::time::Duration;

use test_harness::Agent;

/// Starts the exporter on a free port with `args` and waits (at most `wait`) until `/metrics`
/// answers 200; [`Agent::wait_for`] waits as long. Stopped with SIGTERM on drop.
pub(crate) fn start(args: &[String], wait: Duration) -> Agent {
    Agent::builder(
        "pgbackrest_exporter",
        env!("CARGO_BIN_EXE_pgbackrest_exporter"),
    )
    .args(args)
    .env("TZ", "UTC")
    .timeout(wait)
    .poll_interval(Duration::from_millis(50))
    .start()
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
