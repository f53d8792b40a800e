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
