//! Pgbouncer's admin console: its version handshake (`SHOW VERSION`, answered as a row by
//! 1.12 and later, as a NOTICE before) and the facts a plan needs.

use std::time::Instant;

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
pub(crate) async fn facts(conn: &DbConnection, deadline: Option<Instant>) -> Result<Facts, String> {
    let result = conn
        .query("SHOW VERSION", deadline)
        .await
        .map_err(|e| match e {
            QueryError::Timeout(d) => format!("SHOW VERSION timed out after {d:?}"),
            QueryError::Db(msg) => msg,
        })?;
    let version = result
        .rows
        .first()
        .and_then(|row| row.first())
        .and_then(|v| parse_version(&v.to_label()))
        .unwrap_or(0);
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
