//! Running promtool (Debian's `prometheus` package, 2.42; `scripts/setup` installs it):
//! `check rules` for syntax, `test rules` for the unit tests, and a syntax check of loose
//! expressions through a generated rule file ([`check_expressions`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Where Debian installs promtool.
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// A promtool run that could not be made or did not succeed.
#[derive(Debug, Error)]
pub enum PromtoolError {
    /// promtool could not be started.
    #[error(
        "cannot run {PROMTOOL} (install the Debian package `prometheus`, or run scripts/setup): {0}"
    )]
    Spawn(std::io::Error),
    /// A temporary file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a promtool run printed and whether it exited with 0.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code 0.
    pub success: bool,
    /// stdout and stderr, concatenated.
    pub output: String,
}

/// Runs `promtool <args>`.
pub fn run(args: &[&str]) -> Result<Outcome, PromtoolError> {
    let out = Command::new(PROMTOOL)
        .args(args)
        .output()
        .map_err(PromtoolError::Spawn)?;
    Ok(Outcome {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// `promtool check rules <files>`.
pub fn check_rules(files: &[&Path]) -> Result<Outcome, PromtoolError> {
    let mut args = vec!["check", "rules"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    run(&args)
}

/// `promtool test rules <files>`.
pub fn test_rules(files: &[&Path]) -> Result<Outcome, PromtoolError> {
    let mut args = vec!["test", "rules"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    run(&args)
}

/// Checks that each of `exprs` parses as PromQL, by writing them as recording rules into a
/// rule file in `dir` and running `promtool check rules` on it; when that fails, each
/// expression is checked alone. Returns `(index, promtool's message)` per broken expression.
pub fn check_expressions(
    dir: &Path,
    exprs: &[String],
) -> Result<Vec<(usize, String)>, PromtoolError> {
    let write = |path: &Path, exprs: &[(usize, &String)]| -> Result<(), PromtoolError> {
        let mut text = String::from("groups:\n  - name: expression_check\n    rules:\n");
        for (i, expr) in exprs {
            // JSON strings are valid YAML scalars: no quoting rules to get wrong.
            let quoted = serde_json::to_string(expr).unwrap_or_default();
            text.push_str(&format!(
                "      - record: expression_check_{i}\n        expr: {quoted}\n"
            ));
        }
        std::fs::write(path, text).map_err(|source| PromtoolError::Write {
            path: path.to_owned(),
            source,
        })
    };
    let all: Vec<(usize, &String)> = exprs.iter().enumerate().collect();
    let file = dir.join("expressions.yml");
    write(&file, &all)?;
    if check_rules(&[&file])?.success {
        return Ok(Vec::new());
    }
    let mut broken = Vec::new();
    for (i, expr) in all {
        let one = dir.join(format!("expression_{i}.yml"));
        write(&one, &[(i, expr)])?;
        let outcome = check_rules(&[&one])?;
        if !outcome.success {
            broken.push((i, outcome.output));
        }
    }
    Ok(broken)
}
