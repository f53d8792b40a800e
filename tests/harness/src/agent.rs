//! One of our agent binaries (pg_exporter, pgbouncer_exporter, pgbackrest_exporter,
//! log_shipper) running under test: started on a free loopback port with its own temporary
//! directory and log file, waited for until it answers HTTP, then queried, signalled, stopped
//! or killed; it never outlives the test (see [`Agent`]'s `Drop` and the [reaper]).
//!
//! The API is blocking, like the rest of the harness. From a multi-threaded tokio test, wrap
//! the calls that wait (start, scrapes, `stop`) in `tokio::task::block_in_place` so the
//! runtime keeps serving its other tasks meanwhile.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use test_harness::Agent;
//! use test_harness::agent::value;
//!
//! # let url = "postgres://postgres@127.0.0.1:5432/postgres";
//! // Adds `--web.listen-address=127.0.0.1:<free port>` and waits until `/metrics` answers 200.
//! let exporter = Agent::builder("pg_exporter", "target/debug/pg_exporter")
//!     .arg(format!("--url={url}"))
//!     .env_remove("PGURL")
//!     .ready_when_ok("/version")
//!     .start();
//! exporter.wait_for("pg_up 1", || exporter.metric("pg_up") == Some(1.0));
//! assert_eq!(exporter.get("/primary"), Ok((200, "primary".to_owned())));
//! assert_eq!(value(&exporter.metrics(), "pg_in_recovery", &[]), Some(0.0));
//! exporter.signal("HUP");
//! assert!(exporter.logs().contains("reload"));
//! exporter.stop(Duration::from_secs(20));
//! ```
//!
//! [reaper]: crate::reaper

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::ManagedChild;
use crate::{free_port, http};

/// How many log lines a failure message shows.
const LOG_TAIL: usize = 40;

/// Where the agent listens and whether it is told so.
#[derive(Debug, Clone, Copy)]
enum Listen {
    /// `--web.listen-address=127.0.0.1:<free port>` is added.
    FreePort,
    /// The binary listens on this port by itself (its default); no argument is added.
    Default(u16),
}

/// Configures an [`Agent`]; [`start`](Self::start) runs it.
#[derive(Debug)]
pub struct AgentBuilder {
    name: String,
    cmd: Command,
    dir: tempfile::TempDir,
    listen: Listen,
    log: Option<PathBuf>,
    in_own_dir: bool,
    ready_path: String,
    ready_any_status: bool,
    timeout: Duration,
    poll: Duration,
    kill_on_drop: bool,
}

impl AgentBuilder {
    /// The agent's temporary directory (already created, removed when the agent or this
    /// builder is dropped): write its config files here before [`start`](Self::start).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Removes an inherited environment variable (such as `PGURL`).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.cmd.env_remove(key);
        self
    }

    /// Runs the binary in the agent's temporary directory ([`Agent::dir`]) instead of the
    /// test's working directory, so it finds no stray file there.
    pub fn in_own_dir(mut self) -> Self {
        self.in_own_dir = true;
        self
    }

    /// Does not add `--web.listen-address`: the binary listens on `port` by itself (its
    /// default port).
    pub fn default_port(mut self, port: u16) -> Self {
        self.listen = Listen::Default(port);
        self
    }

    /// Appends stdout and stderr to `path` (kept across restarts with the same path) instead
    /// of `<name>.log` in the agent's temporary directory.
    pub fn log_file(mut self, path: &Path) -> Self {
        self.log = Some(path.to_owned());
        self
    }

    /// Ready once `GET path` answers 200 (the default is `/metrics`).
    pub fn ready_when_ok(mut self, path: &str) -> Self {
        path.clone_into(&mut self.ready_path);
        self.ready_any_status = false;
        self
    }

    /// Ready once `GET path` answers at all, whatever its status (for health endpoints that
    /// answer 503 while the monitored service is down).
    pub fn ready_when_answers(mut self, path: &str) -> Self {
        path.clone_into(&mut self.ready_path);
        self.ready_any_status = true;
        self
    }

    /// How long the start and [`Agent::wait_for`] wait (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often the start and the waits poll (default 100 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll = interval;
        self
    }

    /// Dropping the agent SIGKILLs it at once, instead of SIGTERM with up to 10 s to exit.
    pub fn kill_on_drop(mut self) -> Self {
        self.kill_on_drop = true;
        self
    }

    /// Starts the binary and waits until it is ready; panics (with the log's tail) if it
    /// exits or is not ready within the timeout.
    pub fn start(mut self) -> Agent {
        let dir = self.dir;
        let port = match self.listen {
            Listen::FreePort => {
                let port = free_port().expect("a free port");
                self.cmd
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"));
                port
            }
            Listen::Default(port) => port,
        };
        if self.in_own_dir {
            self.cmd.current_dir(dir.path());
        }
        let log = self
            .log
            .unwrap_or_else(|| dir.path().join(format!("{}.log", self.name)));
        let child = ManagedChild::spawn(&self.name, &mut self.cmd, &log)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let agent = Agent {
            name: self.name,
            port,
            timeout: self.timeout,
            poll: self.poll,
            kill_on_drop: self.kill_on_drop,
            child,
            dir,
        };
        let path = self.ready_path;
        let any = self.ready_any_status;
        let deadline = Instant::now() + agent.timeout;
        loop {
            match agent.get(&path) {
                Ok((status, _)) if any || status == 200 => return agent,
                _ => {}
            }
            if let Some(status) = agent.child.exit_status() {
                panic!(
                    "{}: exited ({status}) before GET {path} answered; log:\n{}",
                    agent.name,
                    agent.log_tail(LOG_TAIL)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: GET {path} did not answer{} within {:?}; log:\n{}",
                agent.name,
                if any { "" } else { " 200" },
                agent.timeout,
                agent.log_tail(LOG_TAIL)
            );
            thread::sleep(agent.poll);
        }
    }
}

/// A running agent binary, with its temporary directory and log file.
///
/// Dropping it stops it (SIGTERM, SIGKILL after 10 s, or SIGKILL at once with
/// [`AgentBuilder::kill_on_drop`]) and reaps it, then removes its directory; the harness's
/// [reaper](crate::reaper) kills it if the test process dies first.
#[derive(Debug)]
pub struct Agent {
    name: String,
    port: u16,
    timeout: Duration,
    poll: Duration,
    kill_on_drop: bool,
    // Before `dir`: the process stops before its directory is removed.
    child: ManagedChild,
    dir: tempfile::TempDir,
}

impl Agent {
    /// A builder for `program` (such as `env!("CARGO_BIN_EXE_pg_exporter")`); `name` is used
    /// in messages and for the default log file.
    pub fn builder(name: &str, program: impl AsRef<OsStr>) -> AgentBuilder {
        AgentBuilder {
            name: name.to_owned(),
            cmd: Command::new(program),
            dir: tempfile::tempdir().expect("a temporary directory for the agent"),
            listen: Listen::FreePort,
            log: None,
            in_own_dir: false,
            ready_path: "/metrics".to_owned(),
            ready_any_status: false,
            timeout: Duration::from_secs(30),
            poll: Duration::from_millis(100),
            kill_on_drop: false,
        }
    }

    /// The name given to [`builder`](Self::builder).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Its temporary directory, removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// The whole log file (empty if it cannot be read).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// `GET path`: the status and body, whatever the status; `Err` only when it does not
    /// answer.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.request("GET", path)
    }

    /// A request with `method` and an empty body, like [`get`](Self::get).
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        http::request(method, &self.url(path))
            .map(|r| (r.status, r.body))
            .map_err(|e| format!("{e:#}"))
    }

    /// `/metrics` if it answers 200.
    pub fn scrape(&self) -> Option<String> {
        match self.get("/metrics") {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// `/metrics`; panics unless it answers 200.
    pub fn metrics(&self) -> String {
        match self.get("/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("{}: /metrics answered {status}: {body}", self.name),
            Err(e) => panic!("{}: /metrics did not answer: {e}", self.name),
        }
    }

    /// The value of the sample `series` (see [`sample`]) in `/metrics`, if that answers 200.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.scrape()?, series)
    }

    /// Polls `cond` until it holds, for at most the builder's timeout (default 30 s); then
    /// panics with `what` and the log's tail.
    pub fn wait_for(&self, what: &str, cond: impl FnMut() -> bool) {
        self.wait_until(what, self.timeout, cond);
    }

    /// Polls `cond` until it holds, for at most `timeout`; then panics with `what` and the
    /// log's tail.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.name,
                self.log_tail(LOG_TAIL)
            );
            thread::sleep(self.poll);
        }
    }

    /// Sends `signal` (a name such as `HUP` or `TERM`); panics if it cannot be sent (the
    /// process exited).
    pub fn signal(&self, signal: &str) {
        self.child
            .signal(signal)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Sends SIGTERM and waits for the process to exit; panics (with the log's tail) if it
    /// still runs after `timeout` (it is killed on drop then).
    pub fn stop(self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running {timeout:?} after SIGTERM; log:\n{}",
                self.name,
                self.log_tail(LOG_TAIL)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&self) {
        self.child.kill();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.kill_on_drop {
            self.child.kill();
        }
        // Otherwise `ManagedChild`'s drop stops it: SIGTERM, SIGKILL after 10 s.
    }
}

/// The value of the first sample written exactly as `series` (the metric name with its label
/// set, as the exporter writes it, or the bare name of a sample without labels), followed by
/// a space and a number. Trailing whitespace in `series` is ignored.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    let series = series.trim_end();
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Every sample of metric `name`, with or without labels: its label text (between the
/// braces, empty without labels) and value.
pub fn samples<'b>(body: &'b str, name: &str) -> Vec<(&'b str, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, v) = if let Some(r) = rest.strip_prefix('{') {
                r.split_once("} ")?
            } else {
                ("", rest.strip_prefix(' ')?)
            };
            Some((labels, v.trim().parse().ok()?))
        })
        .collect()
}

/// The value of the one sample of metric `name` whose labels include every `key="value"` of
/// `labels`; panics when several match, as a test reading "the" value would then read any.
pub fn value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = samples(body, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .collect();
    assert!(
        found.len() <= 1,
        "{name}{labels:?}: {} samples",
        found.len()
    );
    found.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP up_total x\nup_total 3\nup 1\nq{a=\"x\",b=\"y\"} 2\nq{a=\"z\"} 5\n";

    #[test]
    fn samples_are_found_by_series_and_by_labels() {
        assert_eq!(sample(BODY, "up"), Some(1.0));
        assert_eq!(sample(BODY, "up "), Some(1.0));
        assert_eq!(sample(BODY, "q{a=\"z\"}"), Some(5.0));
        assert_eq!(sample(BODY, "q"), None);
        assert_eq!(value(BODY, "q", &[("b", "y")]), Some(2.0));
        assert_eq!(value(BODY, "q", &[("a", "z")]), Some(5.0));
        assert_eq!(value(BODY, "up", &[]), Some(1.0));
        assert_eq!(samples(BODY, "q").len(), 2);
    }

    #[test]
    #[should_panic(expected = "q[]: 2 samples")]
    fn a_value_that_several_samples_match_is_refused() {
        value(BODY, "q", &[]);
    }
}
