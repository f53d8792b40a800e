//! Running `pgbackrest`: in its own process group, optionally as another OS user, with a
//! timeout after which the whole group (pgBackRest and everything it spawned) is killed.
//!
//! pgBackRest must run as the repository's owner: run as root it would leave root-owned log
//! and lock files behind that break the owner's next `archive-push` or `backup`. Under systemd
//! the unit's `User=` does that; when the exporter itself runs as root, [`RunAs`] switches the
//! child to the owner (uid, gid, no supplementary groups, `HOME`/`USER`/`LOGNAME`).
//!
//! What pgBackRest prints on standard error reaches the logs only through
//! [`mask_secrets`]: its errors quote config lines and option values, passwords included.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agent_kit::redact::mask_secrets;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;
use tracing::debug;

/// Most bytes read from pgBackRest's standard output (`info` of thousands of backups is a few
/// MiB).
pub const STDOUT_LIMIT: u64 = 256 << 20;
/// Most bytes of standard error kept.
pub const STDERR_LIMIT: u64 = 64 << 10;
/// How long a timed-out group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long the output pipes may stay open after the group was killed (a descendant that left
/// the group could hold them).
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Why a `pgbackrest` run gave no usable output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The binary does not exist.
    #[error("pgbackrest binary {binary} not found")]
    NotFound {
        /// The binary.
        binary: PathBuf,
    },
    /// The binary could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran longer than the timeout and was killed with its process group.
    #[error("`{command}` did not finish within {}s; killed it and its process group", timeout.as_secs_f64())]
    TimedOut {
        /// The command line.
        command: String,
        /// The timeout.
        timeout: Duration,
    },
    /// It exited unsuccessfully.
    #[error("`{command}` failed ({status}){}", stderr_suffix(stderr))]
    Failed {
        /// The command line.
        command: String,
        /// Exit code or signal.
        status: String,
        /// Its standard error, trimmed, secrets masked ([`mask_secrets`]).
        stderr: String,
    },
    /// Its output could not be read, or exceeded [`STDOUT_LIMIT`].
    #[error("`{command}`: {message}")]
    Output {
        /// The command line.
        command: String,
        /// What went wrong.
        message: String,
    },
    /// The `--backrest.user` account is unusable.
    #[error("user {user:?}: {message}")]
    User {
        /// The user name.
        user: String,
        /// What went wrong.
        message: String,
    },
}

impl CommandError {
    /// Whether the run was killed for taking too long.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CommandError::TimedOut { .. })
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// The OS user pgBackRest runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (exported as `HOME`).
    pub home: PathBuf,
}

impl RunAs {
    /// Looks `name` up in the user database. Switching needs root; for the current user it is a
    /// no-op, for anyone else without root it is an error.
    pub fn lookup(name: &str) -> Result<Option<RunAs>, CommandError> {
        let err = |message: String| CommandError::User {
            user: name.to_owned(),
            message,
        };
        let user = User::from_name(name)
            .map_err(|e| err(format!("cannot look up: {e}")))?
            .ok_or_else(|| err("no such user".to_owned()))?;
        let me = nix::unistd::geteuid();
        if user.uid == me {
            return Ok(None);
        }
        if !me.is_root() {
            return Err(err(format!(
                "running pgbackrest as another user needs root (this process runs as uid {me})"
            )));
        }
        Ok(Some(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }))
    }
}

/// What a successful run printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error (pgBackRest prints warnings there), trimmed, secrets masked
    /// ([`mask_secrets`]).
    pub stderr: String,
}

/// Runs `pgbackrest` with a timeout.
#[derive(Debug)]
pub struct Runner {
    binary: PathBuf,
    run_as: Option<RunAs>,
    timeout: Duration,
    timeouts: AtomicU64,
}

impl Runner {
    /// A runner for `binary` (a bare name is searched in `PATH`), as `run_as` if given.
    pub fn new(binary: PathBuf, run_as: Option<RunAs>, timeout: Duration) -> Runner {
        Runner {
            binary,
            run_as,
            timeout,
            timeouts: AtomicU64::new(0),
        }
    }

    /// The per-run timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many runs were killed for taking too long.
    pub fn timeouts_total(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// The user pgBackRest runs as, if switched.
    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    /// Runs `pgbackrest <args>` and returns its output if it exits with status 0 within the
    /// timeout.
    pub async fn run(&self, args: &[String]) -> Result<Output, CommandError> {
        let command = describe(&self.binary, args);
        debug!(command = %command, "Running pgBackRest.");
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name)
                // The exporter's working directory may be closed to that user.
                .current_dir("/");
        }
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound && !binary_exists(&self.binary) {
                CommandError::NotFound {
                    binary: self.binary.clone(),
                }
            } else {
                CommandError::Spawn {
                    binary: self.binary.clone(),
                    source,
                }
            }
        })?;
        let mut group = GroupGuard {
            pgid: child.id().and_then(|id| i32::try_from(id).ok()),
        };
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_limited(s, STDOUT_LIMIT)));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_limited(s, STDERR_LIMIT)));
        let mut readers = Readers { stdout, stderr };

        let finished = tokio::time::timeout(self.timeout, async {
            let status = child.wait().await;
            let (out, err) = readers.collect().await;
            (status, out, err)
        })
        .await;
        let Ok((status, stdout, stderr)) = finished else {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            group.terminate(&mut child).await;
            readers.abandon().await;
            return Err(CommandError::TimedOut {
                command,
                timeout: self.timeout,
            });
        };
        // Finished in time: nothing is left to kill.
        group.pgid = None;
        let status = status.map_err(|e| CommandError::Output {
            command: command.clone(),
            message: format!("cannot wait for it: {e}"),
        })?;
        let stdout = stdout.map_err(|message| CommandError::Output {
            command: command.clone(),
            message,
        })?;
        // pgBackRest quotes option values and config lines in its errors, secrets included.
        let stderr =
            mask_secrets(String::from_utf8_lossy(&stderr.unwrap_or_default()).trim()).into_owned();
        if !status.success() {
            return Err(CommandError::Failed {
                command,
                status: describe_status(status),
                stderr,
            });
        }
        if stdout.len() as u64 > STDOUT_LIMIT {
            return Err(CommandError::Output {
                command,
                message: format!("standard output exceeds {STDOUT_LIMIT} bytes"),
            });
        }
        Ok(Output { stdout, stderr })
    }
}

/// The command line, for messages (secrets masked).
fn describe(binary: &Path, args: &[String]) -> String {
    let mut s = binary.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    mask_secrets(&s).into_owned()
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Whether `binary` exists (a bare name: somewhere in `PATH`).
fn binary_exists(binary: &Path) -> bool {
    if binary.components().count() > 1 {
        return binary.exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path).any(|dir| dir.join(binary).exists())
}

async fn read_limited(pipe: impl AsyncRead + Unpin, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // One byte more than the limit tells "exceeded" from "exactly the limit".
    let mut limited = pipe.take(limit + 1);
    limited.read_to_end(&mut buf).await?;
    // Drain the rest so the child does not block on a full pipe.
    let mut pipe = limited.into_inner();
    let mut sink = [0u8; 8192];
    while pipe.read(&mut sink).await? > 0 {}
    Ok(buf)
}

type Reader = tokio::task::JoinHandle<std::io::Result<Vec<u8>>>;

/// The tasks reading stdout and stderr.
struct Readers {
    stdout: Option<Reader>,
    stderr: Option<Reader>,
}

impl Readers {
    /// Waits for both pipes to close.
    async fn collect(&mut self) -> (Result<Vec<u8>, String>, Option<Vec<u8>>) {
        let out = match self.stdout.as_mut() {
            Some(h) => match h.await {
                Ok(Ok(b)) => Ok(b),
                Ok(Err(e)) => Err(format!("cannot read standard output: {e}")),
                Err(e) => Err(format!("reader task failed: {e}")),
            },
            None => Ok(Vec::new()),
        };
        self.stdout = None;
        let err = match self.stderr.as_mut() {
            Some(h) => h.await.ok().and_then(Result::ok),
            None => None,
        };
        self.stderr = None;
        (out, err)
    }

    /// Gives the pipes a moment to close after a kill, then stops reading.
    async fn abandon(&mut self) {
        let _ = tokio::time::timeout(PIPE_GRACE, self.collect()).await;
        self.abort();
    }

    fn abort(&mut self) {
        for h in [self.stdout.take(), self.stderr.take()]
            .into_iter()
            .flatten()
        {
            h.abort();
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The child's process group, killed (SIGKILL) on drop unless disarmed: a run cancelled by
/// shutdown leaves nothing behind.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    /// SIGTERM to the group (pgBackRest then removes its locks), SIGKILL after a grace period.
    async fn terminate(&mut self, child: &mut tokio::process::Child) {
        let Some(pgid) = self.pgid else { return };
        signal_group(pgid, Signal::SIGTERM);
        let exited = tokio::time::timeout(TERM_GRACE, child.wait()).await.is_ok();
        // Descendants may outlive the leader; the group id stays reserved while any remains.
        signal_group(pgid, Signal::SIGKILL);
        if !exited {
            let _ = child.wait().await;
        }
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

fn signal_group(pgid: i32, signal: Signal) {
    if pgid <= 1 {
        return;
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => debug!(pgid, %signal, error = %e, "Cannot signal the pgBackRest process group."),
    }
}
