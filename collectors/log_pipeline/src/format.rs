//! The formats of a source's files: what the config names and the parsers interpret.

use serde::Deserialize;

/// The format of a source's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// PostgreSQL csvlog (PG 12-18; 23 to 26 columns).
    PostgresCsv,
    /// PostgreSQL jsonlog (PG 15+).
    PostgresJson,
    /// PostgreSQL stderr, with the server's `log_line_prefix`.
    PostgresStderr,
    /// Patroni's Python logging format.
    Patroni,
    /// Pgbouncer's log file.
    Pgbouncer,
    /// pgBackRest's log files.
    Pgbackrest,
    /// One record per line, shipped as is.
    Plain,
}

impl Format {
    /// The `job` this format ships as unless the config says otherwise.
    pub fn default_job(self) -> &'static str {
        match self {
            Format::PostgresCsv | Format::PostgresJson | Format::PostgresStderr => "postgres",
            Format::Patroni => "patroni",
            Format::Pgbouncer => "pgbouncer",
            Format::Pgbackrest => "pgbackrest",
            Format::Plain => "syslog",
        }
    }
}
