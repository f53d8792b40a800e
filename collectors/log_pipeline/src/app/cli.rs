//! log_shipper's flags.

use std::path::PathBuf;

use agent_kit::cli::{LogArgs, WebArgs};
use clap::Parser;

/// log_shipper's flags.
#[derive(Debug, Parser)]
#[command(
    name = "log_shipper",
    version,
    about = "Ships PostgreSQL, Patroni, Pgbouncer and pgBackRest logs to VictoriaLogs and Loki, at-least-once."
)]
pub struct Cli {
    /// The YAML config file.
    #[arg(short = 'c', long, env = "LOG_SHIPPER_CONFIG")]
    pub config: PathBuf,

    /// Validate the config, check that every directory it names can be created and written
    /// (creating nothing: the directories a start would create are listed) and its TLS files
    /// read, print a summary (endpoints with credentials masked) and exit.
    #[arg(long)]
    pub dry_run: bool,

    /// The metrics server's flags.
    #[command(flatten)]
    pub web: WebArgs,

    /// The logging flags.
    #[command(flatten)]
    pub log: LogArgs,
}
