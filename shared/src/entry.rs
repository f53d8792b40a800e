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

/// The environment variable that makes an agent write its documentation instead of running:
/// set to a directory, the agent writes there its man page (`<name>.1`) and its bash, zsh and
/// fish completions (`<name>.bash`, `_<name>`, `<name>.fish`), then exits. `scripts/package`
/// uses it, so the packaged man pages and completions come from the very CLI definitions the
/// binaries parse with.
pub const GENERATE_DOCS_ENV: &str = "AGENT_KIT_GENERATE_DOCS";

/// Writes the man page and completions of `command` when [`GENERATE_DOCS_ENV`] is set and
/// returns the exit code to end with; `None` (run the agent) when it is unset. Called first thing
/// in `main`, before the flags are parsed.
pub fn generate_docs_if_requested(command: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let dir = std::env::var_os(GENERATE_DOCS_ENV)?;
    let mut command = command();
    // Man pages and completions are written for the installed binary's name.
    let name = command.get_name().to_owned();
    command = command.bin_name(&name);
    match write_docs(command, &name, std::path::Path::new(&dir)) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!(
                "{GENERATE_DOCS_ENV}: cannot write the documentation of {name} into {}: {e}",
                std::path::Path::new(&dir).display()
            );
            Some(ExitCode::from(1))
        }
    }
}

fn write_docs(
    mut command: clap::Command,
    name: &str,
    dir: &std::path::Path,
) -> std::io::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let mut man = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut man)?;
    std::fs::write(dir.join(format!("{name}.1")), man)?;
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command, name, &mut out);
        std::fs::write(dir.join(file), out)?;
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn writes_the_man_page_and_completions_of_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let command = clap::Command::new("demo_agent")
            .version("1.2.3")
            .about("A demo agent.")
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .env("DEMO_AGENT_CONFIG")
                    .help("The config file."),
            );
        super::write_docs(command.bin_name("demo_agent"), "demo_agent", dir.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let man = read("demo_agent.1");
        assert!(man.contains(".TH demo_agent 1"), "{man}");
        assert!(man.contains(r"\-\-config"), "{man}");
        assert!(man.contains("DEMO_AGENT_CONFIG"), "{man}");
        assert!(read("demo_agent.bash").contains("complete -F _demo_agent"));
        assert!(read("_demo_agent").starts_with("#compdef demo_agent"));
        assert!(read("demo_agent.fish").contains("complete -c demo_agent"));
    }
}
