//! A single-node etcd 3.4 (Debian `etcd-server`) on loopback: the DCS of the
//! [Patroni cluster](crate::patroni).
//!
//! etcd runs as the current user (it does not care about root) in the foreground as a child of
//! this process, with its data in a temporary directory and its client and peer listeners on
//! free ports of 127.0.0.1. It is stopped (SIGTERM) and its directory removed on `Drop`, or by
//! the [reaper](crate::reaper) if this process dies first. Only the v3 API is served (the etcd
//! 3.4 default), which is what Patroni's `etcd3:` module speaks.
//!
//! etcd preallocates a 62 MB WAL file, so each instance takes about 70 MB of disk while it runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::http;
use crate::ports::{LOCALHOST, free_port, retry_on_port_race};
use crate::privileges::ServiceDir;
use crate::process::ManagedChild;
use crate::util::{run, tail_file};
use crate::versions::require_binary;

/// Where Debian's `etcd-server` package installs the server.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// Where Debian's `etcd-client` package installs the v3 command-line client.
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// The member name of the single node.
pub const MEMBER_NAME: &str = "pgsuite-etcd";

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running single-node etcd.
#[derive(Debug)]
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    // Declared before `dir`: the process stops before its directory is removed.
    child: Mutex<Option<ManagedChild>>,
    dir: ServiceDir,
}

impl Etcd {
    /// Starts etcd on two free ports (retrying on a port clash) and waits until its `/health`
    /// answers `{"health":"true"}`.
    pub fn start() -> Result<Self> {
        let binary = require_binary(Path::new(ETCD_BIN), "etcd-server")?;
        let dir = ServiceDir::new("pgsuite-etcd-", false)?;
        let log = dir.path().join("etcd.log");
        let data_dir = dir.path().join("data");
        let child = retry_on_port_race("etcd", START_ATTEMPTS, "address already in use", || {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            // A failed attempt may have initialised the data directory for other ports.
            let _ = std::fs::remove_dir_all(&data_dir);
            Ok((
                spawn(&binary, &data_dir, &log, client_port, peer_port)?,
                client_port,
                peer_port,
            ))
        })?;
        let (child, client_port, peer_port) = child;
        Ok(Self {
            client_port,
            peer_port,
            data_dir,
            log,
            child: Mutex::new(Some(child)),
            dir,
        })
    }

    /// `127.0.0.1:<client port>`, as Patroni's `etcd3: {host: …}` wants it.
    pub fn endpoint(&self) -> String {
        format!("{LOCALHOST}:{}", self.client_port)
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://{LOCALHOST}:{}", self.client_port)
    }

    /// The client port on 127.0.0.1.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer port on 127.0.0.1.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory holding the data directory and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcd's own log (its stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The PID of the running etcd, `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(ManagedChild::pid)
    }

    /// True when `/health` answers 200 with `"health":"true"`.
    pub fn is_healthy(&self) -> bool {
        is_healthy(self.client_port)
    }

    /// `etcdctl` (API 3) with `--endpoints` set to this node; add the arguments.
    pub fn etcdctl_command(&self) -> Result<Command> {
        let mut cmd = Command::new(require_binary(Path::new(ETCDCTL_BIN), "etcd-client")?);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url()));
        Ok(cmd)
    }

    /// The keys under `prefix` (`etcdctl get --prefix --keys-only`), one per element.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut cmd = self.etcdctl_command()?;
        cmd.args(["get", "--prefix", "--keys-only", prefix]);
        let out = run(&mut cmd, "etcdctl get")?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The value of `key`, `None` when absent.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let mut cmd = self.etcdctl_command()?;
        cmd.args(["get", "--print-value-only", key]);
        let out = run(&mut cmd, "etcdctl get")?;
        let value = out.strip_suffix('\n').unwrap_or(&out);
        Ok((!out.is_empty()).then(|| value.to_owned()))
    }

    /// Stops etcd (SIGTERM, SIGKILL after 10 s). Idempotent.
    pub fn stop(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(child);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_healthy(port: u16) -> bool {
    http::get(&format!("http://{LOCALHOST}:{port}/health"), &[])
        .is_ok_and(|r| r.status == 200 && r.body.contains("\"true\""))
}

fn spawn(
    binary: &Path,
    data_dir: &Path,
    log: &Path,
    client_port: u16,
    peer_port: u16,
) -> Result<ManagedChild> {
    let client = format!("http://{LOCALHOST}:{client_port}");
    let peer = format!("http://{LOCALHOST}:{peer_port}");
    let mut cmd = Command::new(binary);
    cmd.arg("--name")
        .arg(MEMBER_NAME)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("{MEMBER_NAME}={peer}")])
        .args(["--initial-cluster-state", "new"])
        // The default would keep 100000 entries in memory before snapshotting; tests write few.
        .args(["--snapshot-count", "10000"])
        .current_dir(data_dir.parent().unwrap_or(Path::new("/")))
        // etcd reads ETCD_* variables as flags; none from our environment must leak in.
        .env_remove("ETCD_NAME")
        .env_remove("ETCD_DATA_DIR");
    let child = ManagedChild::spawn("etcd", &mut cmd, log)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.exit_status() {
            bail!(
                "etcd exited during start ({status}), client port {client_port}, peer port \
                 {peer_port}:\n{}",
                tail_file(log, 20)
            );
        }
        if is_healthy(client_port) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            bail!(
                "etcd was not healthy on port {client_port} within {START_TIMEOUT:?}:\n{}",
                tail_file(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
