//! HAProxy (Debian `haproxy` 2.6) routing PostgreSQL connections by HTTP health checks, as
//! Pigsty puts it in front of a Patroni cluster: one TCP listener per service (read-write,
//! read-only, …), each server checked on an HTTP port of its own (an exporter's `/primary` or
//! `/replica`, or Patroni's REST API).
//!
//! ```no_run
//! use test_harness::haproxy::{Haproxy, HaproxyListener};
//!
//! let rw = HaproxyListener::new("primary", "/primary")
//!     .server("pg1", 5432, 9630)
//!     .server("pg2", 5433, 9631);
//! let haproxy = Haproxy::start(&[rw]).unwrap();
//! println!("read-write service on 127.0.0.1:{}", haproxy.port("primary").unwrap());
//! ```
//!
//! Every server line is `server <name> 127.0.0.1:<port> check port <check port> inter 500ms
//! fall 2 rise 1 on-marked-down shutdown-sessions` under `option httpchk GET <path>` and
//! `http-check expect status 200`, so a server is taken out after two failed checks (about
//! 1 s) and put back after one good one. A `stats` listener serves the CSV status page
//! ([`Haproxy::server_status`]). HAProxy runs in the foreground (`-db`) as the current user,
//! a child of this process, stopped on `Drop` or by the [reaper](crate::reaper); its
//! configuration and log live in a temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::http;
use crate::ports::{LOCALHOST, free_port, is_listening, retry_on_port_race};
use crate::privileges::ServiceDir;
use crate::process::ManagedChild;
use crate::util::tail_file;
use crate::versions::require_binary;

/// Where Debian's `haproxy` package installs the binary.
pub const HAPROXY_BIN: &str = "/usr/sbin/haproxy";

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One backend server: where clients are sent and which port the health check asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyServer {
    /// Server name in the configuration and on the status page.
    pub name: String,
    /// The port on 127.0.0.1 connections are forwarded to.
    pub port: u16,
    /// The port on 127.0.0.1 the HTTP health check goes to.
    pub check_port: u16,
}

/// A TCP listener (a "service") with its servers and the health check choosing among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyListener {
    /// Listener name (`[a-z0-9_-]`), also used to look its port up.
    pub name: String,
    /// The path the HTTP health check GETs; a server is up while it answers 200.
    pub check_path: String,
    /// The servers.
    pub servers: Vec<HaproxyServer>,
}

impl HaproxyListener {
    /// A listener called `name` whose servers are checked with `GET <check_path>`.
    pub fn new(name: &str, check_path: &str) -> Self {
        Self {
            name: name.to_owned(),
            check_path: check_path.to_owned(),
            servers: Vec::new(),
        }
    }

    /// Adds a server: connections go to `127.0.0.1:port`, checks to `127.0.0.1:check_port`.
    pub fn server(mut self, name: &str, port: u16, check_port: u16) -> Self {
        self.servers.push(HaproxyServer {
            name: name.to_owned(),
            port,
            check_port,
        });
        self
    }
}

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    ports: BTreeMap<String, u16>,
    stats_port: u16,
    config: PathBuf,
    log: PathBuf,
    // Declared before `dir`: the process stops before its directory is removed.
    child: Mutex<Option<ManagedChild>>,
    dir: ServiceDir,
}

impl Haproxy {
    /// Writes the configuration for `listeners` on free ports and starts HAProxy (retrying on
    /// a port clash); returns once every listener and the stats page accept connections.
    pub fn start(listeners: &[HaproxyListener]) -> Result<Self> {
        let binary = require_binary(Path::new(HAPROXY_BIN), "haproxy")?;
        for l in listeners {
            if l.name.is_empty()
                || !l
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!("HAProxy listener name {:?} must be [A-Za-z0-9_-]+", l.name);
            }
            if l.name == "stats" {
                bail!("HAProxy listener name `stats` is reserved for the status page");
            }
        }
        let dir = ServiceDir::new("pgsuite-haproxy-", false)?;
        let config = dir.path().join("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let (child, ports, stats_port) =
            retry_on_port_race("HAProxy", START_ATTEMPTS, "Address already in use", || {
                let mut ports = BTreeMap::new();
                for l in listeners {
                    ports.insert(l.name.clone(), free_port()?);
                }
                let stats_port = free_port()?;
                std::fs::write(&config, render(listeners, &ports, stats_port))
                    .with_context(|| format!("cannot write {}", config.display()))?;
                let child = spawn(&binary, &config, &log, &ports, stats_port)?;
                Ok((child, ports, stats_port))
            })?;
        Ok(Self {
            ports,
            stats_port,
            config,
            log,
            child: Mutex::new(Some(child)),
            dir,
        })
    }

    /// The port on 127.0.0.1 of the listener called `name`.
    pub fn port(&self, name: &str) -> Result<u16> {
        self.ports
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("HAProxy has no listener {name}"))
    }

    /// `http://127.0.0.1:<port>/stats`: the status page (append `;csv` for CSV).
    pub fn stats_url(&self) -> String {
        format!("http://{LOCALHOST}:{}/stats", self.stats_port)
    }

    /// The status of every server of listener `name` from the CSV status page: server name
    /// and `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/1` (going up), `no check`, …
    pub fn server_status(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let resp = http::get(&format!("{};csv", self.stats_url()), &[])?;
        if resp.status != 200 {
            bail!(
                "HAProxy's status page answered {}: {}",
                resp.status,
                resp.body
            );
        }
        let mut lines = resp.body.lines();
        let header: Vec<&str> = lines
            .next()
            .context("HAProxy's CSV status page is empty")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |field: &str| {
            header
                .iter()
                .position(|h| *h == field)
                .with_context(|| format!("no `{field}` column in HAProxy's CSV: {header:?}"))
        };
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        let mut out = BTreeMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.get(px) == Some(&name)
                && let (Some(server), Some(state)) = (f.get(sv), f.get(status))
                && *server != "FRONTEND"
                && *server != "BACKEND"
            {
                out.insert((*server).to_owned(), (*state).to_owned());
            }
        }
        Ok(out)
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// HAProxy's output (alerts, warnings and health-check state changes).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of [`Haproxy::log_path`].
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log, lines)
    }

    /// The PID of the running HAProxy, `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(ManagedChild::pid)
    }

    /// The temporary directory with the configuration and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops HAProxy (SIGTERM). Idempotent.
    pub fn stop(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(child);
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn render(listeners: &[HaproxyListener], ports: &BTreeMap<String, u16>, stats: u16) -> String {
    let mut out = String::from(
        "# Written by the test harness (tests/harness/src/haproxy.rs).\n\
         global\n\
         \x20   maxconn 256\n\
         \x20   log stderr format short local0 info\n\
         \n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   log global\n\
         \x20   option log-health-checks\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 30m\n\
         \x20   timeout server 30m\n\
         \x20   timeout check 2s\n",
    );
    for l in listeners {
        out.push_str(&format!(
            "\nlisten {name}\n\
             \x20   bind {LOCALHOST}:{port}\n\
             \x20   option httpchk GET {path}\n\
             \x20   http-check expect status 200\n\
             \x20   default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
            name = l.name,
            port = ports[&l.name],
            path = l.check_path,
        ));
        for s in &l.servers {
            out.push_str(&format!(
                "    server {} {LOCALHOST}:{} check port {}\n",
                s.name, s.port, s.check_port
            ));
        }
    }
    out.push_str(&format!(
        "\nlisten stats\n\
         \x20   mode http\n\
         \x20   bind {LOCALHOST}:{stats}\n\
         \x20   stats enable\n\
         \x20   stats uri /stats\n"
    ));
    out
}

fn spawn(
    binary: &Path,
    config: &Path,
    log: &Path,
    ports: &BTreeMap<String, u16>,
    stats_port: u16,
) -> Result<ManagedChild> {
    let mut cmd = Command::new(binary);
    cmd.arg("-db").arg("-f").arg(config);
    let child = ManagedChild::spawn("haproxy", &mut cmd, log)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.exit_status() {
            bail!(
                "HAProxy exited during start ({status}):\n{}",
                tail_file(log, 20)
            );
        }
        if ports.values().all(|p| is_listening(*p)) && is_listening(stats_port) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            bail!(
                "HAProxy did not listen on {ports:?} and {stats_port} within \
                 {START_TIMEOUT:?}:\n{}",
                tail_file(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
