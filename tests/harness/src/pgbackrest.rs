//! pgBackRest with a local repository, for a primary started by the harness.
//!
//! Two steps, because the primary's `archive_command` must name the configuration before the
//! server starts, while the configuration needs the server's final port:
//!
//! 1. [`PgBackRest::prepare`] creates the directory (`repo/`, `log/`, `spool/`, `lock/`) and
//!    decides the config path; pass [`PgBackRest::archive_command`] to
//!    [`PostgresBuilder::archive_command`](crate::postgres::PostgresBuilder::archive_command).
//! 2. [`PgBackRest::create_stanza`] writes `pgbackrest.conf` for the running primary
//!    (`start-fast=y`) and runs `stanza-create` and `check`.
//!
//! Every `pgbackrest` command runs as the service user. The directory is removed on `Drop` (or
//! by the reaper).
//!
//! # Several PostgreSQL instances on this host (a Patroni cluster)
//!
//! [`PgBackRest::prepare_in`] puts the repository into a directory someone else owns (the
//! [`PatroniCluster`](crate::patroni::PatroniCluster)'s), [`PgBackRest::write_config`] lists
//! every member as `pg1-…`, `pg2-…` (path, port, socket directory, user) and
//! [`PgBackRest::archive_command_for_members`] is the one `archive_command` they all share.
//! Measured with pgBackRest 2.45, all members local:
//!
//! - `backup` and `check` connect to every `pgN`, pick the one that is not in recovery and back
//!   it up (a member that is down only gives `WARN: unable to check pgN`), so the
//!   configuration need not be rewritten after a switchover or failover;
//! - `archive-push %p` resolves the relative `%p` against `pg1-path` and refuses to run
//!   anywhere else (`ERROR: [032]: PostgreSQL working directory '…/pg2/data' is not the same
//!   as option pg1-path '…/pg1/data'`), so the shared `archive_command` passes
//!   `--pg1-path="$PWD"`: the archiver runs in its own data directory, and each member pushes
//!   as its own `pg1`, as with Pigsty's one-host-per-member `pgbackrest.conf`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, Result, bail};

use crate::postgres::{Postgres, SUPERUSER};
use crate::privileges::{ServiceDir, make_service_dir, service_command, write_service_file};
use crate::util::run;
use crate::versions::require_binary;

/// Where Debian's `pgbackrest` package installs the binary.
pub const PGBACKREST_BIN: &str = "/usr/bin/pgbackrest";

/// The stanza name used by [`Cluster`](crate::cluster::Cluster) and
/// [`PatroniCluster`](crate::patroni::PatroniCluster).
pub const DEFAULT_STANZA: &str = "main";

/// The kind of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupType {
    /// `--type=full`.
    Full,
    /// `--type=diff` (needs a full backup first).
    Diff,
    /// `--type=incr` (needs a prior backup).
    Incr,
}

impl BackupType {
    /// The value of `--type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Diff => "diff",
            Self::Incr => "incr",
        }
    }
}

/// One local PostgreSQL instance as a stanza lists it: `pgN-path`, `pgN-port`,
/// `pgN-socket-path` (and `pgN-user` = [`SUPERUSER`], trusted on the socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgHost {
    /// PGDATA.
    pub data_dir: PathBuf,
    /// The port (names the socket file).
    pub port: u16,
    /// The unix socket directory pgBackRest connects through.
    pub socket_dir: PathBuf,
}

impl PgHost {
    /// The instance `server` of the harness.
    pub fn of(server: &Postgres) -> Self {
        Self {
            data_dir: server.data_dir().to_owned(),
            port: server.port(),
            socket_dir: server.socket_dir().to_owned(),
        }
    }
}

/// A pgBackRest stanza with its own local repository.
#[derive(Debug)]
pub struct PgBackRest {
    stanza: String,
    config: PathBuf,
    binary: PathBuf,
    /// Serializes commands that take the stanza's lock (backups) within this process.
    lock: Mutex<()>,
    root: PathBuf,
    /// `None` when the directory belongs to someone else ([`PgBackRest::prepare_in`]).
    _dir: Option<ServiceDir>,
}

impl PgBackRest {
    /// Creates the repository, log, spool and lock directories for `stanza` in a temporary
    /// directory of its own, removed on `Drop`.
    pub fn prepare(stanza: &str) -> Result<Self> {
        let dir = ServiceDir::new("pgsuite-pgbackrest-", true)?;
        let root = dir.path().to_owned();
        Self::prepare_at(stanza, root, Some(dir))
    }

    /// Like [`PgBackRest::prepare`], in `root` (created, owned by the service user), which the
    /// caller removes: a Patroni cluster keeps its repository in its own directory.
    pub fn prepare_in(stanza: &str, root: &Path) -> Result<Self> {
        make_service_dir(root)?;
        Self::prepare_at(stanza, root.to_owned(), None)
    }

    fn prepare_at(stanza: &str, root: PathBuf, dir: Option<ServiceDir>) -> Result<Self> {
        let binary = require_binary(Path::new(PGBACKREST_BIN), "pgbackrest")?;
        for sub in ["repo", "log", "spool", "lock"] {
            make_service_dir(&root.join(sub))?;
        }
        Ok(Self {
            stanza: stanza.to_owned(),
            config: root.join("pgbackrest.conf"),
            binary,
            lock: Mutex::new(()),
            root,
            _dir: dir,
        })
    }

    /// The `archive_command` that pushes WAL into this repository.
    pub fn archive_command(&self) -> String {
        format!(
            "{} --config={} --stanza={} archive-push %p",
            self.binary.display(),
            self.config.display(),
            self.stanza
        )
    }

    /// The `archive_command` for every member of a cluster whose instances all run on this
    /// host ([`PgBackRest::write_config`] with several hosts): [`PgBackRest::archive_command`]
    /// with `--pg1-path="$PWD"`, since PostgreSQL runs it in the archiving member's data
    /// directory and pgBackRest resolves `%p` against `pg1-path` (see the module
    /// documentation).
    pub fn archive_command_for_members(&self) -> String {
        format!(
            "{} --config={} --stanza={} --pg1-path=\"$PWD\" archive-push %p",
            self.binary.display(),
            self.config.display(),
            self.stanza
        )
    }

    /// Writes the configuration: the repository settings (`repo1-retention-full=4`,
    /// `start-fast=y`, console log level `warn`) and a stanza listing `hosts` as `pg1`, `pg2`, …
    /// Needs no running server.
    pub fn write_config(&self, hosts: &[PgHost]) -> Result<()> {
        if hosts.is_empty() {
            bail!("a pgBackRest stanza needs at least one PostgreSQL instance");
        }
        let root = &self.root;
        let mut conf = format!(
            "[global]\n\
             repo1-path={repo}\n\
             repo1-retention-full=4\n\
             log-path={log}\n\
             spool-path={spool}\n\
             lock-path={lock}\n\
             log-level-console=warn\n\
             log-level-file=info\n\
             start-fast=y\n\
             \n\
             [{stanza}]\n",
            repo = root.join("repo").display(),
            log = root.join("log").display(),
            spool = root.join("spool").display(),
            lock = root.join("lock").display(),
            stanza = self.stanza,
        );
        for (i, host) in hosts.iter().enumerate() {
            let n = i + 1;
            conf.push_str(&format!(
                "pg{n}-path={data}\n\
                 pg{n}-port={port}\n\
                 pg{n}-socket-path={socket}\n\
                 pg{n}-user={SUPERUSER}\n",
                data = host.data_dir.display(),
                port = host.port,
                socket = host.socket_dir.display(),
            ));
        }
        write_service_file(&self.config, conf, 0o640)
    }

    /// Writes the configuration for `primary` and runs `stanza-create` and `check` (the latter
    /// proves WAL archiving works).
    pub fn create_stanza(&self, primary: &Postgres) -> Result<()> {
        self.write_config(&[PgHost::of(primary)])?;
        self.stanza_create_and_check()
    }

    /// `stanza-create`, then `check` (which switches WAL on the primary and waits until that
    /// segment is archived): for a configuration already written with
    /// [`PgBackRest::write_config`].
    pub fn stanza_create_and_check(&self) -> Result<()> {
        self.run_checked(&["stanza-create"])?;
        self.run_checked(&["check"])?;
        Ok(())
    }

    /// Takes a backup of the given type (waits for it to finish).
    pub fn backup(&self, kind: BackupType) -> Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.run_checked(&["backup", &format!("--type={}", kind.as_str())])
            .map(drop)
    }

    /// `pgbackrest info --output=json`, parsed.
    pub fn info_json(&self) -> Result<serde_json::Value> {
        let out = self.run_checked(&["--output=json", "info"])?;
        serde_json::from_str(&out)
            .with_context(|| format!("pgbackrest info printed invalid JSON: {out}"))
    }

    /// Runs `pgbackrest --config=… --stanza=… <args>` as the service user and returns stdout;
    /// a failure includes stderr and the tail of pgBackRest's log.
    pub fn run_checked(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command()?;
        cmd.args(args);
        run(
            &mut cmd,
            &format!("pgbackrest {} (stanza {})", args.join(" "), self.stanza),
        )
    }

    /// A `pgbackrest --config=… --stanza=…` command running as the service user; add the
    /// arguments (e.g. to test error exit codes).
    pub fn command(&self) -> Result<Command> {
        if !self.config.exists() {
            bail!(
                "{} does not exist yet: call PgBackRest::create_stanza first",
                self.config.display()
            );
        }
        let mut cmd = service_command(&self.binary, &self.root)?;
        cmd.arg(format!("--config={}", self.config.display()))
            .arg(format!("--stanza={}", self.stanza));
        Ok(cmd)
    }

    /// The stanza name.
    pub fn stanza(&self) -> &str {
        &self.stanza
    }

    /// The configuration file (`--config`).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The repository directory (`repo1-path`).
    pub fn repo_path(&self) -> PathBuf {
        self.root.join("repo")
    }

    /// pgBackRest's log directory (`log-path`).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("log")
    }

    /// The directory holding the configuration, the repository and the logs.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The `pgbackrest` binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }
}
