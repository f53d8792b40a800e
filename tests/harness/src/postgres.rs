//! PostgreSQL servers: a primary of any supported major version, and streaming replicas of a
//! PostgreSQL 15 primary.
//!
//! Each server lives in its own temporary directory (owned by the service user, see
//! [`privileges`](crate::privileges)):
//!
//! ```text
//! <dir>/data        PGDATA (initdb, or pg_basebackup -R for a replica)
//! <dir>/run         unix_socket_directories
//! <dir>/log         log_directory of the logging collector (csvlog + jsonlog on 15+)
//! <dir>/tls         ca.crt, server.crt, server.key (ssl = on)
//! <dir>/pg_ctl.log  the postmaster's stderr before the logging collector takes over
//! ```
//!
//! The harness's settings go to `<data>/pgsuite.conf`, included from `postgresql.conf`; see
//! [`PostgresBuilder`] for what they are. Roles: the superuser [`SUPERUSER`] (trust on the
//! socket and on 127.0.0.1), [`PASSWORD_USER`] (member of `pg_monitor`, scram-sha-256 over TCP)
//! and [`REPLICATION_USER`] (scram-sha-256, also for replication). `pg_stat_statements` is
//! preloaded and created in the `postgres` database. The server is stopped (`pg_ctl stop -m
//! fast`) and its directory removed on `Drop`, or by the reaper if the process dies.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::ports::{LOCALHOST, free_port};
use crate::privileges::{
    ServiceDir, make_service_dir, service_command, service_user, write_service_file,
};
use crate::reaper::{self, CleanupHandle};
use crate::tls::{TlsFiles, write_tls_files};
use crate::util::{log_tails, poll, run, sh_quote, sh_quote_path, tail_str};
use crate::versions::{PgVersion, client_tool};

/// The superuser role (trust authentication on the socket and on 127.0.0.1).
pub const SUPERUSER: &str = "postgres";
/// A login role that must authenticate with a password (scram-sha-256) over TCP; member of
/// `pg_monitor`, as a monitoring agent's user would be.
pub const PASSWORD_USER: &str = "exporter_pw";
/// The password of [`PASSWORD_USER`].
pub const PASSWORD_USER_PASSWORD: &str = "exporter-pw-secret";
/// The replication role replicas connect as (scram-sha-256).
pub const REPLICATION_USER: &str = "replicator";
/// The password of [`REPLICATION_USER`]; it appears in the replicas' `primary_conninfo`.
pub const REPLICATION_PASSWORD: &str = "replicator-secret";

const START_ATTEMPTS: usize = 5;
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// How to start a PostgreSQL primary.
#[derive(Debug, Clone)]
pub struct PostgresBuilder {
    version: PgVersion,
    name: String,
    databases: Vec<(String, usize)>,
    archive_command: Option<String>,
    settings: Vec<(String, String)>,
}

impl PostgresBuilder {
    /// A primary of `version` with the harness's default settings:
    /// `listen_addresses = '127.0.0.1'`, a free port, `shared_preload_libraries =
    /// 'pg_stat_statements'`, `logging_collector = on`, `log_destination = 'csvlog,jsonlog'`
    /// (`'csvlog'` before 15), `wal_level = logical`, `max_wal_senders = 10`,
    /// `max_replication_slots = 10`, `hot_standby = on`, `track_io_timing = on`,
    /// `track_functions = all`, `ssl = on`, `password_encryption = 'scram-sha-256'`,
    /// `fsync = off` (tests do not need durability), `shared_buffers = '32MB'`.
    pub fn new(version: PgVersion) -> Self {
        Self {
            version,
            name: "primary".to_owned(),
            databases: Vec::new(),
            archive_command: None,
            settings: Vec::new(),
        }
    }

    /// A name for messages and the temporary directory (default `primary`).
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Extra databases to create, each with `n` tables `t1 … tn` (1000 rows each, a primary
    /// key, analyzed).
    pub fn with_databases(mut self, databases: &[(&str, usize)]) -> Self {
        self.databases
            .extend(databases.iter().map(|(db, n)| ((*db).to_owned(), *n)));
        self
    }

    /// Turns WAL archiving on (`archive_mode = on`) with this `archive_command`.
    pub fn archive_command(mut self, command: &str) -> Self {
        self.archive_command = Some(command.to_owned());
        self
    }

    /// Adds a `postgresql.conf` line `name = value`; `value` is written verbatim, so quote
    /// strings yourself (`.setting("work_mem", "'8MB'")`). Later settings win.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs initdb, starts the server on a free port (retrying on a port clash), creates the
    /// roles, `pg_stat_statements` and the extra databases.
    pub fn start(&self) -> Result<Postgres> {
        let v = self.version;
        let what = format!("{v} {}", self.name);
        let pg = Postgres::prepare(v, &self.name, None)
            .with_context(|| format!("cannot prepare {what}"))?;
        let mut settings = Vec::new();
        if let Some(cmd) = &self.archive_command {
            settings.push(("archive_mode".to_owned(), "on".to_owned()));
            settings.push(("archive_command".to_owned(), conf_str(cmd)));
        }
        settings.extend(self.settings.iter().cloned());
        let pg = pg
            .initdb_and_start(settings)
            .with_context(|| format!("cannot start {what}"))?;
        pg.setup_roles_and_databases(&self.databases)
            .with_context(|| format!("cannot set up roles and databases of {what}"))?;
        Ok(pg)
    }
}

/// A running PostgreSQL server (primary or replica). Stopped and removed on `Drop`.
#[derive(Debug)]
pub struct Postgres {
    name: String,
    version: PgVersion,
    port: AtomicU16,
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_dir: PathBuf,
    pg_ctl_log: PathBuf,
    tls: TlsFiles,
    primary_port: Option<u16>,
    extra_settings: Mutex<Vec<(String, String)>>,
    // Dropped in this order after `Drop::drop` stopped the server: deregister the stop
    // command, then remove the directory (which deregisters its own `rm -rf`).
    _cleanup: CleanupHandle,
    dir: ServiceDir,
}

impl Postgres {
    /// Creates the directory layout and registers the reaper's stop command.
    fn prepare(version: PgVersion, name: &str, primary_port: Option<u16>) -> Result<Self> {
        let bin_dir = version.bin_dir()?;
        client_tool("psql")?;
        let dir = ServiceDir::new(&format!("pgsuite-pg{}-{name}-", version.major()), true)?;
        let root = dir.path();
        // sockaddr_un.sun_path holds 107 bytes; the socket is <run>/.s.PGSQL.<port>.
        let socket_len = root.join("run/.s.PGSQL.65535.lock").as_os_str().len();
        if socket_len > 107 {
            bail!(
                "the unix socket path under {} would be {socket_len} bytes, over the 107-byte \
                 limit: set PGSUITE_TMPDIR (or TMPDIR) to a shorter directory",
                root.display()
            );
        }
        for sub in ["run", "log", "tls"] {
            make_service_dir(&root.join(sub))?;
        }
        let tls = write_tls_files(&root.join("tls"))?;
        let data_dir = root.join("data");
        let pg_ctl = bin_dir.join("pg_ctl");
        let cleanup = reaper::register(
            &format!("{version} {name} in {}", root.display()),
            &format!(
                "if [ -f {pid} ]; then {as_user}{pg_ctl} stop -D {data} -m immediate -w -t 30 \
                 >/dev/null 2>&1; fi",
                pid = sh_quote_path(&data_dir.join("postmaster.pid")),
                as_user = runuser_prefix()?,
                pg_ctl = sh_quote_path(&pg_ctl),
                data = sh_quote_path(&data_dir),
            ),
        )?;
        Ok(Self {
            name: name.to_owned(),
            version,
            port: AtomicU16::new(0),
            socket_dir: root.join("run"),
            log_dir: root.join("log"),
            pg_ctl_log: root.join("pg_ctl.log"),
            data_dir,
            bin_dir,
            tls,
            primary_port,
            extra_settings: Mutex::new(Vec::new()),
            _cleanup: cleanup,
            dir,
        })
    }

    fn initdb_and_start(self, settings: Vec<(String, String)>) -> Result<Self> {
        let mut cmd = self.service_tool("initdb")?;
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ]);
        run(&mut cmd, &format!("initdb of {}", self.describe()))?;
        self.write_hba()?;
        let conf = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| {
                f.write_all(b"\n# Added by the test harness.\ninclude 'pgsuite.conf'\n")
            })
            .with_context(|| format!("cannot append to {}", conf.display()))?;
        *self
            .extra_settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = settings;
        self.start_on_free_port()?;
        Ok(self)
    }

    fn write_hba(&self) -> Result<()> {
        let hba = format!(
            "# Written by the test harness.\n\
             # TYPE  DATABASE     USER        ADDRESS        METHOD\n\
             local   all          all                        trust\n\
             local   replication  all                        trust\n\
             host    all          {PASSWORD_USER} 127.0.0.1/32   scram-sha-256\n\
             host    all          {REPLICATION_USER}  127.0.0.1/32   scram-sha-256\n\
             host    replication  {REPLICATION_USER}  127.0.0.1/32   scram-sha-256\n\
             host    all          all         127.0.0.1/32   trust\n\
             host    replication  all         127.0.0.1/32   trust\n"
        );
        write_service_file(&self.data_dir.join("pg_hba.conf"), hba, 0o600)
    }

    fn render_conf(&self, port: u16) -> String {
        let v = self.version;
        let mut lines: Vec<(String, String)> = vec![
            ("port".into(), port.to_string()),
            ("listen_addresses".into(), conf_str(LOCALHOST)),
            (
                "unix_socket_directories".into(),
                conf_path(&self.socket_dir),
            ),
            (
                "shared_preload_libraries".into(),
                conf_str("pg_stat_statements"),
            ),
            ("logging_collector".into(), "on".into()),
            (
                "log_destination".into(),
                conf_str(if v.has_jsonlog() {
                    "csvlog,jsonlog"
                } else {
                    "csvlog"
                }),
            ),
            ("log_directory".into(), conf_path(&self.log_dir)),
            ("wal_level".into(), "logical".into()),
            ("max_wal_senders".into(), "10".into()),
            ("max_replication_slots".into(), "10".into()),
            ("hot_standby".into(), "on".into()),
            ("wal_keep_size".into(), conf_str("128MB")),
            ("wal_retrieve_retry_interval".into(), conf_str("500ms")),
            ("track_io_timing".into(), "on".into()),
            ("track_functions".into(), conf_str("all")),
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), conf_path(&self.tls.server_cert)),
            ("ssl_key_file".into(), conf_path(&self.tls.server_key)),
            ("password_encryption".into(), conf_str("scram-sha-256")),
            ("fsync".into(), "off".into()),
            ("shared_buffers".into(), conf_str("32MB")),
            ("max_connections".into(), "100".into()),
        ];
        lines.extend(
            self.extra_settings
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        let mut out = String::from("# Written by the test harness; rewritten at every start.\n");
        for (k, v) in lines {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out
    }

    /// Picks a free port, writes `pgsuite.conf` and starts; retries on a port clash.
    fn start_on_free_port(&self) -> Result<()> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match self.start_on(port) {
                Ok(()) => return Ok(()),
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no start attempt made")))
            .context(format!("{START_ATTEMPTS} attempts, every port was taken"))
    }

    fn start_on(&self, port: u16) -> Result<()> {
        self.port.store(port, Ordering::Relaxed);
        write_service_file(
            &self.data_dir.join("pgsuite.conf"),
            self.render_conf(port),
            0o600,
        )?;
        self.pg_ctl_start()
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut cmd = self.service_tool("pg_ctl")?;
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.pg_ctl_log)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS])
            .stdin(Stdio::null());
        run(&mut cmd, &format!("start of {}", self.describe()))
            .map(drop)
            .map_err(|e| anyhow!("{e:#}{}", self.log_tails()))
    }

    /// The tails of `pg_ctl.log` and of the newest server log file, for error messages.
    pub fn log_tails(&self) -> String {
        let mut paths = vec![self.pg_ctl_log.clone()];
        if let Some(newest) = newest_file(&self.log_dir, |n| n.ends_with(".csv")) {
            paths.push(newest);
        }
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        log_tails(&refs, 25)
    }

    fn setup_roles_and_databases(&self, databases: &[(String, usize)]) -> Result<()> {
        self.execute(
            "postgres",
            &format!(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n\
                 CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD {pw};\n\
                 GRANT pg_monitor TO {PASSWORD_USER};\n\
                 CREATE ROLE {REPLICATION_USER} LOGIN REPLICATION PASSWORD {rpw};\n",
                pw = sql_str(PASSWORD_USER_PASSWORD),
                rpw = sql_str(REPLICATION_PASSWORD),
            ),
        )?;
        for (db, tables) in databases {
            self.create_database(db, *tables)?;
        }
        Ok(())
    }

    /// Creates database `db` with `tables` tables `t1 … tn` (1000 rows each, analyzed).
    pub fn create_database(&self, db: &str, tables: usize) -> Result<()> {
        self.execute("postgres", &format!("CREATE DATABASE {};", sql_ident(db)))?;
        let mut script = String::new();
        for i in 1..=tables {
            script.push_str(&format!(
                "CREATE TABLE t{i} (id integer PRIMARY KEY, payload text NOT NULL);\n\
                 INSERT INTO t{i} SELECT g, md5(g::text) FROM generate_series(1, 1000) g;\n"
            ));
        }
        script.push_str("ANALYZE;\n");
        self.execute(db, &script)
    }

    /// Starts a streaming replica of this server with `pg_basebackup -R` as
    /// [`REPLICATION_USER`] (password in `primary_conninfo`), on its own port and socket
    /// directory. Only for PostgreSQL 15: the npm builds have no `pg_basebackup`, and Debian's
    /// only copies its own major version. Wait for streaming with [`Postgres::wait_streaming`].
    pub fn start_replica(&self) -> Result<Self> {
        static REPLICAS: AtomicU32 = AtomicU32::new(1);
        if self.version != PgVersion::V15 {
            bail!(
                "replicas are only supported for PostgreSQL 15 (Debian's pg_basebackup cannot \
                 copy a {} server), asked for a replica of {}",
                self.version,
                self.describe()
            );
        }
        let name = format!("replica{}", REPLICAS.fetch_add(1, Ordering::Relaxed));
        let replica = Self::prepare(self.version, &name, Some(self.port()))?;
        let conninfo = format!(
            "host={LOCALHOST} port={} user={REPLICATION_USER} password={REPLICATION_PASSWORD} \
             application_name={name}",
            self.port()
        );
        let mut cmd = replica.service_command(client_tool("pg_basebackup")?)?;
        cmd.arg("-D")
            .arg(&replica.data_dir)
            .args(["-d", &conninfo, "-R", "-X", "stream", "-c", "fast", "-N"]);
        run(
            &mut cmd,
            &format!(
                "pg_basebackup of {} from {}",
                replica.describe(),
                self.describe()
            ),
        )?;
        replica
            .start_on_free_port()
            .with_context(|| format!("cannot start {}", replica.describe()))?;
        Ok(replica)
    }

    /// Waits until this replica streams from its primary: its `pg_stat_wal_receiver` says
    /// `streaming` and the primary's `pg_stat_replication` has its row in state `streaming`.
    pub fn wait_streaming(&self, timeout: Duration) -> Result<()> {
        let Some(primary_port) = self.primary_port else {
            bail!("{} is not a replica", self.describe());
        };
        poll(
            &format!("{} to stream from port {primary_port}", self.describe()),
            timeout,
            Duration::from_millis(100),
            || {
                let receiver = self.query(
                    "postgres",
                    "SELECT coalesce(max(status), '') FROM pg_stat_wal_receiver",
                )?;
                let on_primary = self.query_port(
                    primary_port,
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_stat_replication WHERE application_name = {} \
                         AND state = 'streaming'",
                        sql_str(&self.name)
                    ),
                )?;
                Ok((receiver == "streaming" && on_primary == "1").then_some(()))
            },
        )
    }

    /// Promotes this replica (`pg_ctl promote -w`) and waits until it accepts writes.
    pub fn promote(&self) -> Result<()> {
        let mut cmd = self.service_tool("pg_ctl")?;
        cmd.arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS]);
        run(&mut cmd, &format!("promotion of {}", self.describe()))?;
        poll(
            &format!("{} to leave recovery", self.describe()),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || Ok((self.query("postgres", "SELECT pg_is_in_recovery()")? == "f").then_some(())),
        )
    }

    /// Stops the server (`pg_ctl stop -m fast`); the directory stays, [`Postgres::start`]
    /// brings it back on the same port.
    pub fn stop(&self) -> Result<()> {
        let mut cmd = self.service_tool("pg_ctl")?;
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            "fast",
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
        ]);
        run(&mut cmd, &format!("stop of {}", self.describe())).map(drop)
    }

    /// Starts a server stopped by [`Postgres::stop`] again, on the same port.
    pub fn start(&self) -> Result<()> {
        self.pg_ctl_start()
    }

    /// Stops and starts the server (same port), e.g. after changing a restart-only setting.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// Reloads the configuration (`SELECT pg_reload_conf()`).
    pub fn reload(&self) -> Result<()> {
        self.query("postgres", "SELECT pg_reload_conf()").map(drop)
    }

    /// A name for messages, e.g. `PostgreSQL 15 primary on port 40123`.
    pub fn describe(&self) -> String {
        format!("{} {} on port {}", self.version, self.name, self.port())
    }

    /// The name given at creation (`primary`, `replica1`, …); for a replica it is also its
    /// `application_name` in the primary's `pg_stat_replication`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The major version.
    pub fn version(&self) -> PgVersion {
        self.version
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// The host to connect to over TCP (`127.0.0.1`).
    pub fn host(&self) -> &'static str {
        LOCALHOST
    }

    /// For a replica, the port of the primary it was copied from.
    pub fn primary_port(&self) -> Option<u16> {
        self.primary_port
    }

    /// The server's temporary directory (see the module documentation for its layout).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PGDATA.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The logging collector's directory (`*.csv`, and `*.json` on 15+).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The directory of this version's `initdb`, `pg_ctl` and `postgres`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's TLS files (CA certificate for clients' `sslrootcert`).
    pub fn tls(&self) -> &TlsFiles {
        &self.tls
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>` (superuser, trust).
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{SUPERUSER}@{LOCALHOST}:{}/{db}", self.port())
    }

    /// The URL of [`PASSWORD_USER`] with its password (scram-sha-256).
    pub fn password_url(&self, db: &str) -> String {
        format!(
            "postgresql://{PASSWORD_USER}:{PASSWORD_USER_PASSWORD}@{LOCALHOST}:{}/{db}",
            self.port()
        )
    }

    /// The superuser URL with `sslmode` (`require`, `verify-ca`, `verify-full`, …) and
    /// `sslrootcert` set to the test CA.
    pub fn ssl_url(&self, db: &str, sslmode: &str) -> String {
        format!(
            "{}?sslmode={sslmode}&sslrootcert={}",
            self.url(db),
            self.tls.ca_cert.display()
        )
    }

    /// Key/value connection string of the superuser over TCP.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={LOCALHOST} port={} user={SUPERUSER} dbname={db}",
            self.port()
        )
    }

    /// Key/value connection string of the superuser over the unix socket.
    pub fn socket_conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname={db}",
            self.socket_dir.display(),
            self.port()
        )
    }

    /// The postmaster's PID (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Result<u32> {
        let path = self.data_dir.join("postmaster.pid");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (is the server running?)", path.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no PID on the first line of {}", path.display()))
    }

    /// `SHOW server_version_num` (e.g. 150010).
    pub fn server_version_num(&self) -> Result<u32> {
        self.query_scalar("postgres", "SHOW server_version_num")
    }

    /// True while the server is in recovery (a replica not yet promoted).
    pub fn is_in_recovery(&self) -> Result<bool> {
        Ok(self.query("postgres", "SELECT pg_is_in_recovery()")? == "t")
    }

    /// A Debian PostgreSQL 15 client tool (`psql`, `pgbench`, …) with `PGHOST`, `PGPORT`,
    /// `PGUSER` (superuser), `PGDATABASE` and `PGSSLMODE=disable` set for this server over TCP.
    pub fn client_command(&self, tool: &str, db: &str) -> Result<Command> {
        let mut cmd = Command::new(client_tool(tool)?);
        cmd.env("PGHOST", LOCALHOST)
            .env("PGPORT", self.port().to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", db)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "pgsuite-harness")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        Ok(cmd)
    }

    /// `psql` for this server, database `db`, superuser, `-X -v ON_ERROR_STOP=1`.
    pub fn psql_command(&self, db: &str) -> Result<Command> {
        let mut cmd = self.client_command("psql", db)?;
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        Ok(cmd)
    }

    /// `pgbench` for this server and database `db` as the superuser; add the arguments.
    pub fn pgbench_command(&self, db: &str) -> Result<Command> {
        self.client_command("pgbench", db)
    }

    /// Runs one SQL statement as the superuser and returns its unaligned, tuples-only output
    /// (fields separated by `|`, rows by newlines), trimmed.
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        self.query_port(self.port(), db, sql)
    }

    fn query_port(&self, port: u16, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.psql_command(db)?;
        cmd.env("PGPORT", port.to_string())
            .args(["-A", "-t", "-c", sql]);
        let out = run(
            &mut cmd,
            &format!("query on {} port {port} db {db}", self.describe()),
        )?;
        Ok(out.trim().to_owned())
    }

    /// Runs one SQL statement returning one value and parses it.
    pub fn query_scalar<T: FromStr>(&self, db: &str, sql: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let out = self.query(db, sql)?;
        out.parse::<T>()
            .map_err(|e| anyhow!("cannot parse {out:?} returned by `{sql}`: {e}"))
    }

    /// Runs an SQL script (several statements, each in its own transaction unless the script
    /// says otherwise) as the superuser.
    pub fn execute(&self, db: &str, script: &str) -> Result<()> {
        let mut cmd = self.psql_command(db)?;
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("SQL script on {} db {db}", self.describe());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{what}: cannot run psql"))?;
        let mut stdin = child.stdin.take().context("psql has no stdin")?;
        stdin
            .write_all(script.as_bytes())
            .with_context(|| format!("{what}: cannot write the script to psql"))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .with_context(|| format!("{what}: psql failed"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}):\n{}\n--- script ---\n{}",
                out.status,
                tail_str(&String::from_utf8_lossy(&out.stderr), 20),
                tail_str(script, 20)
            );
        }
        Ok(())
    }

    fn service_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut cmd = service_command(program, self.dir.path())?;
        cmd.env("LC_ALL", "C.UTF-8")
            .env_remove("PGDATA")
            .env_remove("PGPORT");
        Ok(cmd)
    }

    fn service_tool(&self, tool: &str) -> Result<Command> {
        self.service_command(self.bin_dir.join(tool))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.data_dir.join("postmaster.pid").exists() {
            return;
        }
        if self.stop().is_err()
            && let Ok(mut cmd) = self.service_tool("pg_ctl")
        {
            cmd.arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w"]);
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// `runuser -u postgres -- ` when commands must switch user, else nothing.
fn runuser_prefix() -> Result<String> {
    let user = service_user()?;
    Ok(if user.switch_user {
        format!("/usr/sbin/runuser -u {} -- ", sh_quote(&user.name))
    } else {
        String::new()
    })
}

/// The most recently modified file in `dir` whose name satisfies `filter`.
fn newest_file(dir: &Path, filter: impl Fn(&str) -> bool) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| filter(&e.file_name().to_string_lossy()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// A `postgresql.conf` string literal.
pub fn conf_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn conf_path(p: &Path) -> String {
    conf_str(&p.to_string_lossy())
}

/// An SQL string literal.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An SQL identifier, quoted.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
