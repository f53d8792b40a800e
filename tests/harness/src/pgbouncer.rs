//! Pgbouncer in front of a PostgreSQL server started by the harness.
//!
//! Configuration: `listen_addr = 127.0.0.1`, a free port, `unix_socket_dir` in its temporary
//! directory, `auth_type = trust` with an `auth_file` listing [`ADMIN_USER`], [`STATS_USER`] and
//! the password role (with its password, so Pgbouncer can log in to PostgreSQL for it),
//! `admin_users = postgres`, `stats_users = stats`, `pool_mode = transaction`,
//! `ignore_startup_parameters = extra_float_digits`. Databases: `postgres` (the server's
//! `postgres` database), [`SINGLE_POOL_DB`] (the same database with `pool_size=1`, so a test can
//! make clients wait) and a `*` fallback to the server for every other database name.
//!
//! Pgbouncer runs in the foreground as a child of this process (as the service user), so its PID
//! is known; it is stopped on `Drop` (SIGTERM) or by the reaper.
//!
//! [`Pgbouncer::start`] points every database entry at one PostgreSQL server;
//! [`Pgbouncer::start_with`] at any address ([`PgbouncerTarget`]), such as the read-write
//! service of HAProxy in front of a Patroni cluster
//! ([`PatroniClusterBuilder::pgbouncer`](crate::patroni::PatroniClusterBuilder::pgbouncer)).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::ports::{LOCALHOST, free_port, is_listening};
use crate::postgres::{PASSWORD_USER, PASSWORD_USER_PASSWORD, Postgres, SUPERUSER};
use crate::privileges::{ServiceDir, make_service_dir, service_command, write_service_file};
use crate::process::ManagedChild;
use crate::versions::require_binary;

/// Where Debian's `pgbouncer` package installs the binary.
pub const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";
/// Pgbouncer's admin user (`admin_users`).
pub const ADMIN_USER: &str = SUPERUSER;
/// Pgbouncer's stats-only user (`stats_users`).
pub const STATS_USER: &str = "stats";
/// A database entry with `pool_size=1` pointing at the server's `postgres` database.
pub const SINGLE_POOL_DB: &str = "single";

const START_ATTEMPTS: usize = 5;

/// Where Pgbouncer opens its server connections, and the superuser's password it logs in with
/// there (written to the `auth_file`; clients still authenticate with `trust`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbouncerTarget {
    /// Host name or address of the server (or proxy).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The password of [`SUPERUSER`] on the server, when it asks for one (scram-sha-256);
    /// `None` writes an empty password (the harness's plain servers trust 127.0.0.1).
    pub superuser_password: Option<String>,
}

impl PgbouncerTarget {
    /// `host:port` without a superuser password.
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_owned(),
            port,
            superuser_password: None,
        }
    }

    /// The password Pgbouncer logs in to the server with as [`SUPERUSER`].
    pub fn superuser_password(mut self, password: &str) -> Self {
        self.superuser_password = Some(password.to_owned());
        self
    }
}

/// A running Pgbouncer.
#[derive(Debug)]
pub struct Pgbouncer {
    port: Mutex<u16>,
    ini: PathBuf,
    log: PathBuf,
    binary: PathBuf,
    target: PgbouncerTarget,
    socket_dir: PathBuf,
    child: Mutex<Option<ManagedChild>>,
    dir: ServiceDir,
}

impl Pgbouncer {
    /// Starts Pgbouncer in front of `server` on a free port (retrying on a port clash).
    pub fn start(server: &Postgres) -> Result<Self> {
        Self::start_with(&PgbouncerTarget::new(LOCALHOST, server.port()))
    }

    /// Starts Pgbouncer with every database entry pointing at `target`, on a free port
    /// (retrying on a port clash). Pgbouncer starts without the target being reachable; it
    /// connects on a client's first query.
    pub fn start_with(target: &PgbouncerTarget) -> Result<Self> {
        let binary = require_binary(Path::new(PGBOUNCER_BIN), "pgbouncer")?;
        let dir = ServiceDir::new("pgsuite-pgbouncer-", true)?;
        let socket_dir = dir.path().join("run");
        make_service_dir(&socket_dir)?;
        let su_pw = target.superuser_password.as_deref().unwrap_or("");
        write_service_file(
            &dir.path().join("userlist.txt"),
            format!(
                "\"{ADMIN_USER}\" \"{su_pw}\"\n\"{STATS_USER}\" \"\"\n\
                 \"{PASSWORD_USER}\" \"{PASSWORD_USER_PASSWORD}\"\n"
            ),
            0o600,
        )?;
        let bouncer = Self {
            port: Mutex::new(0),
            ini: dir.path().join("pgbouncer.ini"),
            log: dir.path().join("pgbouncer.log"),
            binary,
            target: target.clone(),
            socket_dir,
            child: Mutex::new(None),
            dir,
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            *bouncer.port_guard() = port;
            match bouncer.spawn() {
                Ok(()) => return Ok(bouncer),
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no attempt made")))
            .context("cannot start Pgbouncer: every port tried was taken")
    }

    fn port_guard(&self) -> MutexGuard<'_, u16> {
        self.port.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn render_ini(&self, port: u16) -> String {
        let server = format!("host={} port={}", self.target.host, self.target.port);
        format!(
            "; Written by the test harness.\n\
             [databases]\n\
             postgres = {server} dbname=postgres\n\
             {SINGLE_POOL_DB} = {server} dbname=postgres pool_size=1\n\
             * = {server}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = {LOCALHOST}\n\
             listen_port = {port}\n\
             unix_socket_dir = {socket}\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             admin_users = {ADMIN_USER}\n\
             stats_users = {STATS_USER}\n\
             pool_mode = transaction\n\
             default_pool_size = 5\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\n\
             pidfile = {pid}\n\
             server_login_retry = 1\n",
            socket = self.socket_dir.display(),
            auth = self.dir.path().join("userlist.txt").display(),
            log = self.log.display(),
            pid = self.dir.path().join("pgbouncer.pid").display(),
        )
    }

    /// Writes the ini for the current port, starts the process and waits until it listens.
    fn spawn(&self) -> Result<()> {
        let port = *self.port_guard();
        write_service_file(&self.ini, self.render_ini(port), 0o600)?;
        let mut cmd = service_command(&self.binary, self.dir.path())?;
        cmd.arg(&self.ini);
        let stdout_log = self.dir.path().join("pgbouncer.stdout");
        let child = ManagedChild::spawn("pgbouncer", &mut cmd, &stdout_log)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.exit_status() {
                bail!(
                    "Pgbouncer exited during start ({status}) on port {port}:\n{}\n{}",
                    crate::util::tail_file(&self.log, 20),
                    child.log_tail(20)
                );
            }
            if is_listening(port) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "Pgbouncer did not listen on port {port} within 15 s:\n{}",
                    crate::util::tail_file(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// Stops Pgbouncer (SIGTERM) and starts it again on the same port with the same ini.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline && format!("{e:#}").contains("in use") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.context("cannot restart Pgbouncer")),
            }
        }
    }

    /// Stops Pgbouncer (SIGTERM); [`Pgbouncer::restart`] starts it again.
    pub fn stop(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(child);
    }

    /// Makes Pgbouncer reload its configuration (SIGHUP).
    pub fn reload(&self) -> Result<()> {
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .context("Pgbouncer is stopped")?
            .signal("HUP")
    }

    /// The PID of the running Pgbouncer.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(ManagedChild::pid)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        *self.port_guard()
    }

    /// `postgresql://postgres@127.0.0.1:<port>/pgbouncer`: the admin console as admin user.
    pub fn admin_url(&self) -> String {
        format!(
            "postgresql://{ADMIN_USER}@{LOCALHOST}:{}/pgbouncer",
            self.port()
        )
    }

    /// `postgresql://stats@127.0.0.1:<port>/pgbouncer`: the admin console as stats-only user.
    pub fn stats_url(&self) -> String {
        format!(
            "postgresql://{STATS_USER}@{LOCALHOST}:{}/pgbouncer",
            self.port()
        )
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`: a pooled connection as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{SUPERUSER}@{LOCALHOST}:{}/{db}", self.port())
    }

    /// The ini file.
    pub fn ini_path(&self) -> &Path {
        &self.ini
    }

    /// Pgbouncer's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Where the database entries point.
    pub fn target(&self) -> &PgbouncerTarget {
        &self.target
    }

    /// The unix socket directory (`unix_socket_dir`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        self.stop();
    }
}
