//! What the package test (`tests/packages.rs`) needs to run the installed agents exactly as
//! their systemd units do: the `/etc/default/<agent>` files read with systemd's
//! `EnvironmentFile=` rules, and `$VAR` in `ExecStart=` split at whitespace.
//!
//! The packages themselves are built by `scripts/package` from the files in this directory; see
//! `README.md`.

use std::fmt;

/// A line of an environment file that systemd would not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for EnvFileError {}

/// Parses an `EnvironmentFile=` as systemd does (`KEY=VALUE` per line; blank lines and lines
/// starting with `#` or `;` ignored; a value wholly in single or double quotes loses them,
/// backslash escapes apply inside double quotes; an unquoted value loses trailing whitespace).
/// Later assignments of a key win, as they do for systemd.
pub fn parse_environment_file(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let err = |reason| EnvFileError {
            line: index + 1,
            reason,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(err("no `=`"));
        };
        let key = key.trim();
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err("invalid variable name"));
        }
        let value = unquote(value.trim_start()).map_err(err)?;
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_owned(), value));
    }
    Ok(vars)
}

fn unquote(value: &str) -> Result<String, &'static str> {
    let mut chars = value.chars();
    match chars.next() {
        Some(q @ ('\'' | '"')) => {
            let mut out = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote"),
                    Some(c) if c == q => break,
                    Some('\\') if q == '"' => match chars.next() {
                        Some(c) => out.push(c),
                        None => return Err("unterminated quote"),
                    },
                    Some(c) => out.push(c),
                }
            }
            if !chars.as_str().trim().is_empty() {
                return Err("text after the closing quote");
            }
            Ok(out)
        }
        _ => Ok(value.trim_end().to_owned()),
    }
}

/// The arguments an unbraced `$VAR` in `ExecStart=` expands to: the value split at whitespace.
pub fn split_exec_words(value: &str) -> Vec<String> {
    value.split_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_upstreams_pg_exporter_defaults() {
        let text = "# comment\n; also\n\nPG_EXPORTER_URL='postgres://:5432/postgres?sslmode=disable'\n\
                    PG_EXPORTER_LABEL=\"\"\nPG_EXPORTER_CONNECT_TIMEOUT=100  \n\
                    PG_EXPORTER_OPTS='--log.level=info --web.listen-address=:9630'\n\
                    ESCAPED=\"a \\\"b\\\"\"\nPG_EXPORTER_CONNECT_TIMEOUT=200\n";
        let vars = parse_environment_file(text).unwrap();
        assert_eq!(
            vars,
            [
                (
                    "PG_EXPORTER_URL".to_owned(),
                    "postgres://:5432/postgres?sslmode=disable".to_owned()
                ),
                ("PG_EXPORTER_LABEL".to_owned(), String::new()),
                (
                    "PG_EXPORTER_OPTS".to_owned(),
                    "--log.level=info --web.listen-address=:9630".to_owned()
                ),
                ("ESCAPED".to_owned(), "a \"b\"".to_owned()),
                ("PG_EXPORTER_CONNECT_TIMEOUT".to_owned(), "200".to_owned()),
            ]
        );
        assert_eq!(
            split_exec_words(&vars[2].1),
            ["--log.level=info", "--web.listen-address=:9630"]
        );
        assert!(split_exec_words("  ").is_empty());
    }

    #[test]
    fn names_the_bad_line() {
        assert_eq!(
            parse_environment_file("A=1\nno equals sign\n").unwrap_err(),
            EnvFileError {
                line: 2,
                reason: "no `=`"
            }
        );
        assert_eq!(
            parse_environment_file("A='open\n").unwrap_err().reason,
            "unterminated quote"
        );
        assert_eq!(
            parse_environment_file("1A=x\n").unwrap_err().reason,
            "invalid variable name"
        );
        assert_eq!(
            parse_environment_file("A='x' y\n").unwrap_err().reason,
            "text after the closing quote"
        );
    }
}
