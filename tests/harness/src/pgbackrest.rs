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

/// The stanza name used by [`Cluster`](crate::cluster::Cluster).
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

/// A pgBackRest stanza with its own local repository.
#[derive(Debug)]
pub struct PgBackRest {
    stanza: String,
    config: PathBuf,
    binary: PathBuf,
    /// Serializes commands that take the stanza's lock (backups) within this process.
    lock: Mutex<()>,
    dir: ServiceDir,
}

impl PgBackRest {
    /// Creates the repository, log, spool and lock directories for `stanza`.
    pub fn prepare(stanza: &str) -> Result<Self> {
        let binary = require_binary(Path::new(PGBACKREST_BIN), "pgbackrest")?;
        let dir = ServiceDir::new("pgsuite-pgbackrest-", true)?;
        for sub in ["repo", "log", "spool", "lock"] {
            make_service_dir(&dir.path().join(sub))?;
        }
        Ok(Self {
            stanza: stanza.to_owned(),
            config: dir.path().join("pgbackrest.conf"),
            binary,
            lock: Mutex::new(()),
            dir,
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

    /// Writes the configuration for `primary` and runs `stanza-create` and `check` (the latter
    /// proves WAL archiving works).
    pub fn create_stanza(&self, primary: &Postgres) -> Result<()> {
        let root = self.dir.path();
        let conf = format!(
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
             [{stanza}]\n\
             pg1-path={data}\n\
             pg1-port={port}\n\
             pg1-socket-path={socket}\n\
             pg1-user={SUPERUSER}\n",
            repo = root.join("repo").display(),
            log = root.join("log").display(),
            spool = root.join("spool").display(),
            lock = root.join("lock").display(),
            stanza = self.stanza,
            data = primary.data_dir().display(),
            port = primary.port(),
            socket = primary.socket_dir().display(),
        );
        write_service_file(&self.config, conf, 0o640)?;
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
        let mut cmd = service_command(&self.binary, self.dir.path())?;
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
        self.dir.path().join("repo")
    }

    /// pgBackRest's log directory (`log-path`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The `pgbackrest` binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }
}
