//! Which OS user the services run as, and directories/files they can use.
//!
//! PostgreSQL refuses to run as root, and Pgbouncer and pgBackRest are not meant to. When this
//! process runs as root (as CI does), those services run as the `postgres` OS user (created by
//! Debian's `postgresql-common`): their commands get `uid`/`gid` set (so the PID we hold is the
//! service's own, not a `runuser` wrapper), and every directory they touch is owned by
//! `postgres` with mode 0700. When not root, everything runs as the current user.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail};
use tempfile::TempDir;

/// The OS user the database services run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUser {
    /// User name (`postgres` when this process is root).
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// Home directory, exported as `HOME` to the service's commands.
    pub home: PathBuf,
    /// True when commands must switch to this user (this process is root).
    pub switch_user: bool,
}

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The user PostgreSQL, Pgbouncer and pgBackRest run as (looked up once).
pub fn service_user() -> Result<&'static ServiceUser> {
    static USER: OnceLock<Result<ServiceUser, String>> = OnceLock::new();
    USER.get_or_init(|| lookup_service_user().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn lookup_service_user() -> Result<ServiceUser> {
    let me = fs::metadata("/proc/self").context("cannot stat /proc/self to find our uid")?;
    let passwd = fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    let entries = passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7).then(|| {
            (
                f[0].to_owned(),
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
                PathBuf::from(f[5]),
            )
        })
    });
    if me.uid() == 0 {
        for (name, uid, gid, home) in entries {
            if name == "postgres" {
                let (Some(uid), Some(gid)) = (uid, gid) else {
                    bail!("malformed /etc/passwd entry for postgres");
                };
                return Ok(ServiceUser {
                    name,
                    uid,
                    gid,
                    home,
                    switch_user: true,
                });
            }
        }
        bail!(
            "running as root, but the OS user `postgres` does not exist: install the Debian \
             package postgresql-15 (it creates the user) or run scripts/setup"
        );
    }
    let name = entries
        .into_iter()
        .find(|(_, uid, _, _)| *uid == Some(me.uid()))
        .map(|(name, ..)| name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| me.uid().to_string());
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    Ok(ServiceUser {
        name,
        uid: me.uid(),
        gid: me.gid(),
        home,
        switch_user: false,
    })
}

/// A [`Command`] for `program` that runs as the service user, in `cwd` (which that user must be
/// able to enter), with `HOME`, `USER` and `LOGNAME` set accordingly.
pub fn service_command(program: impl AsRef<OsStr>, cwd: &Path) -> Result<Command> {
    let user = service_user()?;
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd);
    if user.switch_user {
        cmd.uid(user.uid)
            .gid(user.gid)
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    Ok(cmd)
}

/// Gives `path` to the service user (no-op when not root).
pub fn chown_to_service_user(path: &Path) -> Result<()> {
    let user = service_user()?;
    if user.switch_user {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .with_context(|| format!("cannot chown {} to {}", path.display(), user.name))?;
    }
    Ok(())
}

/// Creates directory `path` (and missing parents), owned by the service user, mode 0700.
pub fn make_service_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod 0700 {}", path.display()))?;
    chown_to_service_user(path)
}

/// Writes `contents` to `path` with permission bits `mode`, owned by the service user.
pub fn write_service_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {mode:o} {}", path.display()))?;
    chown_to_service_user(path)
}

/// A fresh temporary directory owned by the service user (mode 0700), under
/// [`temp_base`]. It is removed when the returned [`TempDir`] is dropped.
pub fn service_tempdir(prefix: &str) -> Result<TempDir> {
    let base = temp_base()?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))?;
    make_service_dir(dir.path())?;
    Ok(dir)
}

/// Where temporary directories go: `$PGSUITE_TMPDIR`, else the system temp dir, else `/tmp` when
/// the service user cannot traverse the former (e.g. a `TMPDIR` under `/root`).
pub fn temp_base() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PGSUITE_TMPDIR") {
        let dir = PathBuf::from(dir);
        check_traversable(&dir).context("PGSUITE_TMPDIR is not usable")?;
        return Ok(dir);
    }
    let dir = std::env::temp_dir();
    if check_traversable(&dir).is_ok() {
        Ok(dir)
    } else {
        Ok(PathBuf::from("/tmp"))
    }
}

/// Fails when the service user cannot traverse `dir` and each of its parents.
fn check_traversable(dir: &Path) -> Result<()> {
    let user = service_user()?;
    let mut current = Some(dir);
    while let Some(p) = current {
        let meta = fs::metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
        if user.switch_user {
            let mode = meta.mode();
            let ok = if meta.uid() == user.uid {
                mode & 0o100 != 0
            } else if meta.gid() == user.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                bail!(
                    "the service user {} cannot traverse {} (mode {:o})",
                    user.name,
                    p.display(),
                    mode & 0o7777
                );
            }
        }
        current = p.parent();
    }
    Ok(())
}

/// A temporary directory that is removed on `Drop` and, should this process die first, by the
/// [reaper](crate::reaper) (`rm -rf`).
#[derive(Debug)]
pub struct ServiceDir {
    dir: TempDir,
    // Declared after `dir`: deregistered only once the directory is gone.
    _cleanup: crate::reaper::CleanupHandle,
}

impl ServiceDir {
    /// A new directory named `<prefix>XXXXXX` under [`temp_base`]; owned by the service user
    /// (mode 0700) when `for_service_user`, else by the current user.
    pub fn new(prefix: &str, for_service_user: bool) -> Result<Self> {
        let dir = if for_service_user {
            service_tempdir(prefix)?
        } else {
            let base = temp_base()?;
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(&base)
                .with_context(|| {
                    format!("cannot create a temporary directory in {}", base.display())
                })?
        };
        let cleanup = crate::reaper::register(
            &format!("temporary directory {}", dir.path().display()),
            &format!("rm -rf -- {}", crate::util::sh_quote_path(dir.path())),
        )?;
        Ok(Self {
            dir,
            _cleanup: cleanup,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
