//! One member of a Patroni cluster: its configuration, its Patroni process and the
//! PostgreSQL that Patroni runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use super::commands::{kill, newest_file, patroni_env, psql, rest_request, runuser_prefix};
use super::footprint::pid_alive;
use super::{
    NAMESPACE, PATRONI_BIN, PatroniClusterBuilder, REST_TIMEOUT, REWIND_PASSWORD, REWIND_USER,
    STOP_GRACE, SUPERUSER_PASSWORD,
};
use crate::etcd::Etcd;
use crate::pgbackrest::PgHost;
use crate::ports::{LOCALHOST, free_port};
use crate::postgres::{PASSWORD_USER, PASSWORD_USER_PASSWORD};
use crate::postgres::{REPLICATION_PASSWORD, REPLICATION_USER, SUPERUSER};
use crate::privileges::{make_service_dir, service_command, write_service_file};
use crate::process::ManagedChild;
use crate::reaper::{self, CleanupHandle};
use crate::util::{log_tails, poll, sh_quote_path};
use crate::versions::DEBIAN_PG15_BIN;

/// One member: a Patroni process and the PostgreSQL it runs.
#[derive(Debug)]
pub struct PatroniMember {
    pub(super) name: String,
    pub(super) rest_port: u16,
    pub(super) pg_port: u16,
    pub(super) dir: PathBuf,
    pub(super) config: PathBuf,
    pub(super) child: Mutex<Option<ManagedChild>>,
    // Deregistered only after `Drop::drop` stopped Patroni and PostgreSQL.
    _pg_cleanup: CleanupHandle,
}

impl PatroniMember {
    pub(super) fn prepare(
        name: &str,
        root: &Path,
        scope: &str,
        etcd: &Etcd,
        builder: &PatroniClusterBuilder,
    ) -> Result<Self> {
        let dir = root.join(name);
        make_service_dir(&dir)?;
        for sub in ["run", "log", "pglog"] {
            make_service_dir(&dir.join(sub))?;
        }
        // sockaddr_un.sun_path holds 107 bytes; the socket is <run>/.s.PGSQL.<port>.
        let socket_len = dir.join("run/.s.PGSQL.65535.lock").as_os_str().len();
        if socket_len > 107 {
            bail!(
                "the unix socket path under {} would be {socket_len} bytes, over the 107-byte \
                 limit: set PGSUITE_TMPDIR (or TMPDIR) to a shorter directory",
                dir.display()
            );
        }
        let (rest_port, pg_port) = (free_port()?, free_port()?);
        let config = dir.join("patroni.yml");
        let pg_cleanup = reaper::register(
            &format!("PostgreSQL of Patroni member {name} of {scope}"),
            &format!(
                "if [ -f {pid} ]; then {as_user}{pg_ctl} stop -D {data} -m immediate -w -t 30 \
                 >/dev/null 2>&1; fi",
                pid = sh_quote_path(&dir.join("data/postmaster.pid")),
                as_user = runuser_prefix()?,
                pg_ctl = sh_quote_path(&Path::new(DEBIAN_PG15_BIN).join("pg_ctl")),
                data = sh_quote_path(&dir.join("data")),
            ),
        )?;
        let member = Self {
            name: name.to_owned(),
            rest_port,
            pg_port,
            dir,
            config,
            child: Mutex::new(None),
            _pg_cleanup: pg_cleanup,
        };
        write_service_file(
            &member.config,
            member.render_config(scope, etcd, builder),
            0o600,
        )?;
        Ok(member)
    }

    pub(super) fn render_config(
        &self,
        scope: &str,
        etcd: &Etcd,
        b: &PatroniClusterBuilder,
    ) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let p = |path: &Path| q(&path.to_string_lossy());
        let t = b.timing;
        let mut cluster_params: Vec<(String, String)> = [
            ("wal_level", "replica"),
            ("hot_standby", "on"),
            ("max_connections", "100"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("wal_log_hints", "on"),
            ("wal_keep_size", "128MB"),
            ("shared_buffers", "32MB"),
            // Tests do not need durability; a kill -9 of a process keeps the OS page cache.
            ("fsync", "off"),
            ("track_io_timing", "on"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        cluster_params.extend(b.parameters.iter().cloned());
        let mut dcs_params = String::new();
        for (k, v) in &cluster_params {
            dcs_params.push_str(&format!("        {k}: {}\n", q(v)));
        }
        let rest = format!("{LOCALHOST}:{}", self.rest_port);
        let pg = format!("{LOCALHOST}:{}", self.pg_port);
        format!(
            "# Written by the test harness (tests/harness/src/patroni/member.rs).\n\
             scope: {scope}\n\
             namespace: {NAMESPACE}\n\
             name: {name}\n\
             log:\n\
             \x20 level: INFO\n\
             \x20 dir: {log_dir}\n\
             \x20 file_num: 4\n\
             \x20 file_size: 10485760\n\
             restapi:\n\
             \x20 listen: {rest}\n\
             \x20 connect_address: {rest}\n\
             etcd3:\n\
             \x20 host: {etcd}\n\
             bootstrap:\n\
             \x20 dcs:\n\
             \x20   ttl: {ttl}\n\
             \x20   loop_wait: {loop_wait}\n\
             \x20   retry_timeout: {retry}\n\
             \x20   maximum_lag_on_failover: 1048576\n\
             \x20   postgresql:\n\
             \x20     use_pg_rewind: true\n\
             \x20     use_slots: true\n\
             \x20     parameters:\n\
             {dcs_params}\
             \x20 initdb:\n\
             \x20   - encoding: UTF8\n\
             \x20   - locale: C.UTF-8\n\
             \x20   - data-checksums\n\
             postgresql:\n\
             \x20 listen: {pg}\n\
             \x20 connect_address: {pg}\n\
             \x20 data_dir: {data}\n\
             \x20 bin_dir: {bin}\n\
             \x20 pgpass: {pgpass}\n\
             \x20 use_unix_socket: true\n\
             \x20 authentication:\n\
             \x20   superuser: {{username: {SUPERUSER}, password: {su_pw}}}\n\
             \x20   replication: {{username: {REPLICATION_USER}, password: {repl_pw}}}\n\
             \x20   rewind: {{username: {REWIND_USER}, password: {rewind_pw}}}\n\
             \x20 pg_hba:\n\
             \x20   - local all all trust\n\
             \x20   - local replication all trust\n\
             \x20   - host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256\n\
             \x20   - host all all 127.0.0.1/32 scram-sha-256\n\
             \x20 parameters:\n\
             \x20   unix_socket_directories: {socket}\n\
             \x20   logging_collector: 'on'\n\
             \x20   log_destination: 'csvlog'\n\
             \x20   log_directory: {pglog}\n\
             \x20   wal_retrieve_retry_interval: '500ms'\n",
            name = self.name,
            log_dir = p(&self.patroni_log_dir()),
            etcd = etcd.endpoint(),
            ttl = t.ttl,
            loop_wait = t.loop_wait,
            retry = t.retry_timeout,
            data = p(&self.data_dir()),
            bin = q(DEBIAN_PG15_BIN),
            pgpass = p(&self.pgpass_path()),
            su_pw = q(SUPERUSER_PASSWORD),
            repl_pw = q(REPLICATION_PASSWORD),
            rewind_pw = q(REWIND_PASSWORD),
            socket = p(&self.socket_dir()),
            pglog = p(&self.pg_log_dir()),
        )
    }

    /// Starts this member's Patroni (it must not be running). Does not wait.
    pub fn start(&self) -> Result<()> {
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.as_ref().is_some_and(ManagedChild::is_running) {
            bail!("the Patroni of {} is already running", self.name);
        }
        let mut cmd = service_command(PATRONI_BIN, &self.dir)?;
        patroni_env(&mut cmd);
        cmd.arg(&self.config);
        *guard = Some(ManagedChild::spawn(
            &format!("patroni {}", self.name),
            &mut cmd,
            &self.stdout_log_path(),
        )?);
        Ok(())
    }

    /// Stops this member gracefully: SIGTERM to Patroni, which stops PostgreSQL (fast mode)
    /// and releases the leader lock if it holds it; waits up to 30 s, then kills.
    pub fn stop(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(child) = child {
            child.stop(STOP_GRACE);
        }
    }

    /// `kill -9` of Patroni and then of the postmaster, as a lost node; waits until both are
    /// gone. Returns their PIDs.
    pub fn kill_hard(&self) -> Result<(u32, u32)> {
        let postmaster = self.postmaster_pid()?;
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .with_context(|| format!("the Patroni of {} is not running", self.name))?;
        let patroni = child.pid();
        child.signal("KILL")?;
        kill("KILL", postmaster)?;
        poll(
            &format!(
                "Patroni {patroni} and postmaster {postmaster} of {} to die",
                self.name
            ),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok((!child.is_running() && !pid_alive(postmaster)).then_some(())),
        )?;
        Ok((patroni, postmaster))
    }

    pub(super) fn signal_patroni(&self, signal: &str) {
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = guard.as_ref() {
            let _ = child.signal(signal);
        }
    }

    /// Fails (with the log tails) when Patroni is not running.
    pub(super) fn check_alive(&self) -> Result<()> {
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref().map(ManagedChild::exit_status) {
            Some(None) => Ok(()),
            Some(Some(status)) => Err(anyhow!(
                "the Patroni of {} exited ({status}){}",
                self.name,
                self.log_tails()
            )),
            None => Err(anyhow!("the Patroni of {} is not started", self.name)),
        }
    }

    /// True while this member's Patroni process runs.
    pub fn is_running(&self) -> bool {
        self.check_alive().is_ok()
    }

    /// The member name (`pg1`, `pg2`, …); also its `application_name` on the leader.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID of Patroni, `None` when stopped.
    pub fn patroni_pid(&self) -> Option<u32> {
        let guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .filter(|c| c.is_running())
            .map(ManagedChild::pid)
    }

    /// The postmaster's PID from `postmaster.pid`, if that process runs.
    pub fn postmaster_pid(&self) -> Result<u32> {
        let path = self.data_dir().join("postmaster.pid");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (is PostgreSQL running?)", path.display()))?;
        let pid: u32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no PID on the first line of {}", path.display()))?;
        if !pid_alive(pid) {
            bail!("the postmaster of {} (pid {pid}) is not running", self.name);
        }
        Ok(pid)
    }

    /// The status code of `GET <path>` on this member's REST API, `None` when it does not
    /// answer (Patroni down).
    pub fn rest_status(&self, path: &str) -> Option<u16> {
        rest_request("GET", self.rest_port, path, None, REST_TIMEOUT)
            .ok()
            .map(|(s, _)| s)
    }

    /// `GET <path>` on this member's REST API: status and body.
    pub fn rest_get(&self, path: &str) -> Result<(u16, String)> {
        rest_request("GET", self.rest_port, path, None, REST_TIMEOUT)
    }

    /// True when Patroni's `/primary` answers 200: it holds the leader lock. Patroni 3.0
    /// answers 200 from the moment it takes the lock, before its PostgreSQL has finished
    /// promotion, and keeps answering 200 while that PostgreSQL is down but the lock held.
    pub fn is_primary(&self) -> bool {
        self.rest_status("/primary") == Some(200)
    }

    /// True when Patroni's `/replica` answers 200 (a running replica).
    pub fn is_replica(&self) -> bool {
        self.rest_status("/replica") == Some(200)
    }

    /// `GET /patroni` as JSON (`role`, `state`, `timeline`, `xlog`, `replication`, …).
    pub fn status(&self) -> Result<serde_json::Value> {
        let (code, body) = self.rest_get("/patroni")?;
        if code != 200 && code != 503 {
            bail!("GET /patroni on {} answered {code}: {body}", self.name);
        }
        serde_json::from_str(&body).with_context(|| format!("GET /patroni returned {body:?}"))
    }

    /// Runs one SQL statement as the superuser over the unix socket and returns psql's
    /// unaligned, tuples-only output, trimmed.
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        psql(
            &self.socket_dir().to_string_lossy(),
            self.pg_port,
            None,
            db,
            sql,
        )
        .with_context(|| format!("query on Patroni member {}", self.name))
    }

    /// Runs an SQL script (statements separated by `;`) as the superuser over the socket.
    pub fn execute(&self, db: &str, script: &str) -> Result<()> {
        self.query(db, script).map(drop)
    }

    /// `http://127.0.0.1:<port>`: Patroni's REST API.
    pub fn rest_url(&self) -> String {
        format!("http://{LOCALHOST}:{}", self.rest_port)
    }

    /// The REST API port on 127.0.0.1.
    pub fn rest_port(&self) -> u16 {
        self.rest_port
    }

    /// PostgreSQL's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.pg_port
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        LOCALHOST
    }

    /// `postgresql://postgres:<password>@127.0.0.1:<port>/<db>`: the superuser over TCP
    /// (scram-sha-256).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@{LOCALHOST}:{}/{db}",
            self.pg_port
        )
    }

    /// `postgresql://postgres@/<db>?host=<socket dir>&port=<port>`: the superuser over this
    /// member's unix socket (trust), as Pigsty points its exporter at the local server.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@/{db}?host={}&port={}",
            self.socket_dir().display(),
            self.pg_port
        )
    }

    /// The URL of [`PASSWORD_USER`] (member of `pg_monitor`) with its password, over TCP.
    pub fn password_url(&self, db: &str) -> String {
        format!(
            "postgresql://{PASSWORD_USER}:{PASSWORD_USER_PASSWORD}@{LOCALHOST}:{}/{db}",
            self.pg_port
        )
    }

    /// The member's directory (see the module documentation for its layout).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This member as a pgBackRest stanza lists it.
    pub fn pg_host(&self) -> PgHost {
        PgHost {
            data_dir: self.data_dir(),
            port: self.pg_port,
            socket_dir: self.socket_dir(),
        }
    }

    /// Patroni's configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// PGDATA.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// PostgreSQL's unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Patroni's password file (`postgresql.pgpass`).
    pub fn pgpass_path(&self) -> PathBuf {
        self.dir.join("pgpass")
    }

    /// The directory Patroni writes `patroni.log` (and its rotations `patroni.log.N`) to.
    pub fn patroni_log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Patroni's current log file.
    pub fn patroni_log_path(&self) -> PathBuf {
        self.patroni_log_dir().join("patroni.log")
    }

    /// PostgreSQL's log directory (logging collector, `postgresql-<timestamp>.csv`).
    pub fn pg_log_dir(&self) -> PathBuf {
        self.dir.join("pglog")
    }

    /// Patroni's stdout and stderr (appended across restarts).
    pub fn stdout_log_path(&self) -> PathBuf {
        self.dir.join("patroni.stdout")
    }

    /// The tails of Patroni's log, its stdout and the newest PostgreSQL log, for messages.
    pub fn log_tails(&self) -> String {
        let mut paths = vec![self.patroni_log_path(), self.stdout_log_path()];
        if let Some(csv) = newest_file(&self.pg_log_dir()) {
            paths.push(csv);
        }
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        log_tails(&refs, 25)
    }
}

impl Drop for PatroniMember {
    fn drop(&mut self) {
        self.stop();
        // A postmaster whose Patroni was killed (or did not stop it in time) is stopped here.
        if self.postmaster_pid().is_ok()
            && let Ok(mut cmd) =
                service_command(Path::new(DEBIAN_PG15_BIN).join("pg_ctl"), &self.dir)
        {
            cmd.arg("stop")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
    }
}
