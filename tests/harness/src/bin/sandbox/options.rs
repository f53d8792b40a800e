//! The sandbox's flags.

use anyhow::Result;

/// Where the sandbox's log_shipper sends the cluster's logs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LogDestination {
    /// A JSON-lines file in the agents' directory (the default).
    File,
    /// A VictoriaLogs base URL (`--vlogs-url`).
    VictoriaLogs(String),
    /// A Loki base URL (`--loki-url`).
    Loki(String),
}

/// The sandbox's flags.
#[derive(Debug)]
pub(crate) struct Options {
    /// Start, check every target is up, stop.
    pub(crate) check_only: bool,
    /// A Patroni cluster instead of the plain pair.
    pub(crate) patroni: bool,
    /// vmagent scrapes the agents from file_sd targets and remote-writes to VictoriaMetrics.
    pub(crate) vmagent: bool,
    pub(crate) logs: LogDestination,
}

impl Options {
    pub(crate) fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
        let mut options = Options {
            check_only: false,
            patroni: false,
            vmagent: false,
            logs: LogDestination::File,
        };
        for arg in args {
            if arg == "--check" {
                options.check_only = true;
            } else if arg == "--patroni" {
                options.patroni = true;
            } else if arg == "--vmagent" {
                options.vmagent = true;
            } else if let Some(url) = arg.strip_prefix("--vlogs-url=") {
                options.logs = LogDestination::VictoriaLogs(url.to_owned());
            } else if let Some(url) = arg.strip_prefix("--loki-url=") {
                options.logs = LogDestination::Loki(url.to_owned());
            } else {
                anyhow::bail!(
                    "unknown argument {arg:?}; usage: sandbox [--check] [--patroni] [--vmagent] [--vlogs-url=URL | --loki-url=URL]"
                );
            }
        }
        Ok(options)
    }
}
