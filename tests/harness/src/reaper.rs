//! The reaper: cleans up services even when the test process dies without running destructors.
//!
//! Statics are never dropped, `pg_ctl` detaches the postmaster, and a panic with `panic = abort`,
//! a `SIGKILL` or `std::process::exit` skip every `Drop`. So the first service started by a
//! process also starts one small `sh` process (the reaper) in its own process group, ignoring
//! SIGINT/SIGTERM/SIGHUP, whose standard input is a pipe. This process keeps the write end open
//! for its whole life (it is close-on-exec, so no service inherits it) and writes one line per
//! cleanup command: `add <id> <shell command>` when a service starts and `del <id>` when the
//! service was stopped normally. When this process exits for any reason the kernel closes the
//! pipe, the reaper reads end-of-file and runs the commands still registered, newest first
//! (e.g. `pg_ctl stop -m immediate`, `kill` of a Pgbouncer, `rm -rf` of a temporary directory).
//!
//! Set `PGSUITE_REAPER_LOG=/some/file` to have the reaper log what it runs.

use std::io::Write as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use anyhow::{Context as _, Result, anyhow, bail};

/// The reaper's `sh` program. Registered commands are kept as numbered files in a private
/// directory so that they survive until end-of-file and can be run in reverse order.
const SCRIPT: &str = r#"
trap '' INT TERM HUP PIPE
if [ -n "${PGSUITE_REAPER_LOG:-}" ]; then exec >>"$PGSUITE_REAPER_LOG" 2>&1; fi
d=$(mktemp -d "${TMPDIR:-/tmp}/pgsuite-reaper.XXXXXX") || exit 1
while IFS= read -r line; do
    case $line in
        "add "*) rest=${line#add }; id=${rest%% *}; printf '%s\n' "${rest#* }" >"$d/$id" ;;
        "del "*) rm -f "$d/${line#del }" ;;
    esac
done
for f in $(ls -r "$d"); do
    echo "pgsuite-reaper: running $(cat "$d/$f")"
    sh "$d/$f" </dev/null
done
rm -rf "$d"
"#;

#[derive(Debug)]
struct Reaper {
    stdin: Mutex<ChildStdin>,
    /// Kept so the reaper is never waited for or dropped (the pipe stays open until exit).
    child: Child,
    next_id: AtomicU64,
}

static REAPER: OnceLock<Result<Reaper, String>> = OnceLock::new();

fn reaper() -> Result<&'static Reaper> {
    REAPER
        .get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn start() -> Result<Reaper> {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("pgsuite-reaper")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C or a signal sent to our group does not reach it.
        .process_group(0)
        .spawn()
        .context("cannot start the reaper process (/bin/sh)")?;
    let stdin = child.stdin.take().context("the reaper has no stdin pipe")?;
    Ok(Reaper {
        stdin: Mutex::new(stdin),
        child,
        next_id: AtomicU64::new(1),
    })
}

/// The PID of this process's reaper (starting it if needed).
pub fn reaper_pid() -> Result<u32> {
    Ok(reaper()?.child.id())
}

fn send(line: &str) -> Result<()> {
    let r = reaper()?;
    let mut stdin = r.stdin.lock().unwrap_or_else(PoisonError::into_inner);
    stdin
        .write_all(line.as_bytes())
        .and_then(|()| stdin.flush())
        .context("cannot write to the reaper's pipe (did the reaper die?)")
}

/// Registers `shell_command` (one line of POSIX `sh`) to be run by the reaper when this process
/// exits, unless the returned handle is dropped first. `description` is only for messages.
pub fn register(description: &str, shell_command: &str) -> Result<CleanupHandle> {
    if shell_command.contains('\n') || shell_command.contains('\r') {
        bail!("reaper command for {description} must be a single line: {shell_command:?}");
    }
    let id = reaper()?.next_id.fetch_add(1, Ordering::Relaxed);
    send(&format!("add {id:012} {shell_command}\n"))
        .with_context(|| format!("cannot register the cleanup of {description}"))?;
    Ok(CleanupHandle {
        id,
        description: description.to_owned(),
    })
}

/// A cleanup command registered with the reaper. Dropping it deregisters the command (the
/// service it protects must already be stopped by then); keep it alive as long as the service.
#[derive(Debug)]
pub struct CleanupHandle {
    id: u64,
    description: String,
}

impl CleanupHandle {
    /// What this cleanup is for.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl Drop for CleanupHandle {
    fn drop(&mut self) {
        // Ignoring a failure is right: if the reaper is gone there is nothing to deregister.
        let _ = send(&format!("del {:012}\n", self.id));
    }
}
