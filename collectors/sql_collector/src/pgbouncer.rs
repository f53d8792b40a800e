//! Pgbouncer's admin console: its version handshake (`SHOW VERSION`, answered as a row by
//! 1.12 and later, as a NOTICE before) and the facts a plan needs.

use std::time::Duration;

use crate::connection::{DbConnection, QueryError};
use crate::planner::Facts;

/// Parses `major.minor.patch` anywhere in `text` into `major*10000 + minor*100 + patch`
/// (`PgBouncer 1.18.0` → 11800).
pub fn parse_version(text: &str) -> Option<u32> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|word| {
            let mut parts = word.split('.');
            let major: u32 = parts.next()?.parse().ok()?;
            let minor: u32 = parts.next()?.parse().ok()?;
            let patch: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
            Some(major * 10_000 + minor * 100 + patch)
        })
        .next()
}

/// Facts of a Pgbouncer: its version, database `pgbouncer`, never in recovery.
///
/// The version comes from `SHOW VERSION`'s row (1.12 and later) or, when no row comes back,
/// from the NOTICE that answered it (before 1.12). Without either the pre-check fails: with
/// an unknown version every branch of every collector would be planned at once.
pub(crate) async fn facts(conn: &DbConnection, timeout: Duration) -> Result<Facts, String> {
    // A notice left over from an earlier statement must not pass for the answer.
    let _ = conn.take_notice();
    let result = conn
        .query("SHOW VERSION", Some(timeout))
        .await
        .map_err(|e| match e {
            QueryError::Timeout(d) => format!("SHOW VERSION timed out after {d:?}"),
            QueryError::Db(msg) => msg,
        })?;
    let notice = conn.take_notice();
    let text = match result.rows.first().and_then(|row| row.first()) {
        Some(value) => value.to_label(),
        None => notice.unwrap_or_default(),
    };
    let version = parse_version(&text).ok_or_else(|| {
        if text.is_empty() {
            "SHOW VERSION answered with neither a row nor a NOTICE".to_owned()
        } else {
            format!("SHOW VERSION answered {text:?}, which holds no version number")
        }
    })?;
    Ok(Facts {
        version,
        dbname: "pgbouncer".into(),
        ..Facts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("PgBouncer 1.18.0"), Some(11800));
        assert_eq!(parse_version("PgBouncer 1.24.1"), Some(12401));
        assert_eq!(parse_version("pgbouncer version 1.8"), Some(10800));
        assert_eq!(parse_version("no version"), None);
    }
}
