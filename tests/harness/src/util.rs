//! Small helpers shared by the service modules: running commands with useful errors, reading the
//! tail of log files, shell quoting for reaper commands and polling with a deadline.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` to completion and returns its standard output; on a spawn failure or a non-zero
/// exit the error names `what`, the command line, the exit status and the output tails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let line = describe(cmd);
    let output = cmd
        .output()
        .with_context(|| format!("{what}: cannot run `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{what}: `{line}` failed ({})\n--- stderr (tail) ---\n{}\n--- stdout (tail) ---\n{}",
            output.status,
            tail_str(&stderr, 30),
            tail_str(&stdout, 15),
        );
    }
    Ok(stdout)
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// The last `lines` lines of `text`.
pub(crate) fn tail_str(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// The last `lines` lines of the file at `path`, or a note saying why it could not be read.
pub(crate) fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_str(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A block with the tails of several log files, each under a header naming it.
pub(crate) fn log_tails(paths: &[&Path], lines: usize) -> String {
    let mut out = String::new();
    for path in paths {
        let _ = write!(
            out,
            "\n--- {} (last {lines} lines) ---\n{}",
            path.display(),
            tail_file(path, lines)
        );
    }
    out
}

/// Quotes `s` for POSIX `sh` (single quotes, with embedded single quotes escaped).
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes a path for POSIX `sh`.
pub(crate) fn sh_quote_path(p: &Path) -> String {
    sh_quote(&p.to_string_lossy())
}

/// Calls `check` every `interval` until it returns `Ok(Some(value))` or `timeout` passes; the
/// last error (or "still not ready") is reported together with `what`.
pub(crate) fn poll<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last result: {last}");
        }
        thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote("/tmp/x y"), "'/tmp/x y'");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_str("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_str("a", 5), "a");
    }
}
