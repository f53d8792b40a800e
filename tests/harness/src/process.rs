//! Long-running child processes (Pgbouncer, VictoriaMetrics, exporters under test) that are
//! stopped on `Drop` and, should this process die first, killed by the [reaper].

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::reaper::{self, CleanupHandle};
use crate::util::{describe, sh_quote, tail_file};

/// A child process with its output appended to a log file. Dropping it stops it (SIGTERM, then
/// SIGKILL after 10 s) and deregisters its reaper entry.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    pid: u32,
    log: PathBuf,
    child: Mutex<Child>,
    // Declared last: deregistered only after `Drop::drop` stopped the process.
    _cleanup: CleanupHandle,
}

impl ManagedChild {
    /// Spawns `cmd` (stdin from /dev/null, stdout and stderr appended to `log`), and registers
    /// with the reaper a `kill` of its PID guarded by a check that the PID still runs the same
    /// program. `name` is used in messages.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("{name}: cannot open log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("{name}: cannot dup log file"))?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        // Start the reaper before spawning so that a failure there leaves nothing running.
        reaper::reaper_pid()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("{name}: cannot start `{}`", describe(cmd)))?;
        let pid = child.id();
        let cleanup = reaper::register(name, &kill_command(pid, &program));
        let cleanup = match cleanup {
            Ok(c) => c,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Self {
            name: name.to_owned(),
            pid,
            log: log.to_owned(),
            child: Mutex::new(child),
            _cleanup: cleanup,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log, lines)
    }

    /// The exit status if the process has exited (it is reaped then), else `None`.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        child.try_wait().ok().flatten()
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal` (a name such as `HUP` or `TERM`) to the process, if it still runs.
    pub fn signal(&self, signal: &str) -> Result<()> {
        if !self.is_running() {
            bail!(
                "{}: cannot send SIG{signal}, the process (pid {}) has exited",
                self.name,
                self.pid
            );
        }
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid.to_string()])
            .status()
            .with_context(|| format!("{}: cannot run kill", self.name))?;
        if !status.success() {
            bail!(
                "{}: kill -s {signal} {} failed ({status})",
                self.name,
                self.pid
            );
        }
        Ok(())
    }

    /// Sends SIGKILL (if the process still runs) and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit, then SIGKILLs it.
    pub fn stop(&self, grace: Duration) {
        if self.signal("TERM").is_err() {
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// One line of `sh` that stops `pid` if it still runs `program` (SIGTERM, up to 5 s, SIGKILL).
fn kill_command(pid: u32, program: &str) -> String {
    let same = format!(
        "tr '\\0' ' ' </proc/{pid}/cmdline 2>/dev/null | grep -qF -- {}",
        sh_quote(program)
    );
    let alive = format!(
        "kill -0 {pid} 2>/dev/null && ! grep -q '^State:.*Z' /proc/{pid}/status 2>/dev/null"
    );
    format!(
        "if {same}; then kill -TERM {pid}; i=0; while [ $i -lt 50 ] && {alive}; do sleep 0.1; \
         i=$((i+1)); done; if {same} && {alive}; then kill -KILL {pid}; fi; fi"
    )
}
