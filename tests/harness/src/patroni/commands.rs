//! The commands and requests the harness sends a Patroni cluster: psql, Patroni's REST API,
//! kill, and the environment they run in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::ports::LOCALHOST;
use crate::postgres::SUPERUSER;
use crate::privileges::service_user;
use crate::util::{run, sh_quote};
use crate::versions::client_tool;

pub(super) fn kill(signal: &str, pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -s {signal} {pid} failed ({status})");
    }
    Ok(())
}

/// Keeps the environment from reconfiguring Patroni or PostgreSQL behind the harness's back
/// (`PATRONI_*` variables override the YAML; `PG*` ones redirect libpq; a Python on `PATH`
/// other than the system one must not be told where to find modules).
pub(super) fn patroni_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PATRONI_") || key.starts_with("PG") || key.starts_with("PYTHON") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("LC_ALL", "C.UTF-8");
}

/// `runuser -u postgres -- ` when commands must switch user, else nothing.
pub(super) fn runuser_prefix() -> Result<String> {
    let user = service_user()?;
    Ok(if user.switch_user {
        format!("/usr/sbin/runuser -u {} -- ", sh_quote(&user.name))
    } else {
        String::new()
    })
}

pub(super) fn newest_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// psql as the superuser on `host` (a socket directory or an address) and `port`.
pub(super) fn psql(
    host: &str,
    port: u16,
    password: Option<&str>,
    db: &str,
    sql: &str,
) -> Result<String> {
    let mut cmd = Command::new(client_tool("psql")?);
    cmd.env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", SUPERUSER)
        .env("PGDATABASE", db)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGAPPNAME", "pgsuite-harness")
        .env("PGPASSFILE", "/dev/null")
        .env_remove("PGSERVICE")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    match password {
        Some(pw) => cmd.env("PGPASSWORD", pw),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let out = run(&mut cmd, &format!("psql on {host}:{port} db {db}"))?;
    Ok(out.trim().to_owned())
}

/// One request to a Patroni REST API on 127.0.0.1 (HTTP/1.0 answers, closed connections).
pub(super) fn rest_request(
    method: &str,
    port: u16,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let url = format!("http://{LOCALHOST}:{port}{path}");
    let response = match (method, json) {
        ("POST", Some(body)) => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body),
        ("GET", None) => agent.get(&url).call(),
        _ => bail!("unsupported REST request {method} {path}"),
    };
    let mut response = response.with_context(|| format!("{method} {url} failed"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("cannot read the body of {method} {url}"))?;
    Ok((status, body))
}
