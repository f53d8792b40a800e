//! The `main` every agent shares: flags parsed with clap (exit 1 on bad flags, 0 after
//! `--help`/`--version`, as kingpin does), logging initialised from `--log.*`, the agent run on
//! a small tokio runtime (two workers: agents sit beside the database and must stay light),
//! and its error logged and turned into an exit code.
//!
//! ```no_run
//! # #[derive(Debug, clap::Parser)] struct Cli { #[command(flatten)] log: agent_kit::cli::LogArgs }
//! use clap::Parser as _;
//! fn main() -> std::process::ExitCode {
//!     agent_kit::entry::run(Cli::try_parse(), |c| &c.log, 1, |cli| async move {
//!         // serve until shutdown …
//!         Ok(std::process::ExitCode::SUCCESS)
//!     })
//! }
//! ```

use std::future::Future;
use std::process::ExitCode;

use tracing::error;

use crate::cli::LogArgs;

/// Runs an agent; see the module documentation. `failure_code` is the exit code when `agent`
/// returns an error.
pub fn run<C, F, Fut>(
    parsed: Result<C, clap::Error>,
    log: impl Fn(&C) -> &LogArgs,
    failure_code: u8,
    agent: F,
) -> ExitCode
where
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(e) = crate::logging::init(log(&cli)) {
        eprintln!("cannot initialise logging: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "Cannot start the runtime.");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(agent(cli)) {
        Ok(code) => code,
        Err(e) => {
            error!(error = format!("{e:#}"), "Exiting.");
            ExitCode::from(failure_code)
        }
    }
}
