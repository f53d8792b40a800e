//! Structured logging to stderr in the formats of the Go exporters: `logfmt` (default) or
//! `json`, filtered by `--log.level`.
//!
//! Call [`init`] once at start-up with the parsed [`LogArgs`]. Events name their subject in
//! fields (`collector`, `file`, `url` masked with [`crate::redact::mask_password`]).

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogArgs;

/// Installs the global subscriber. Returns an error if one is already installed.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    let level = match args.level.as_str() {
        "debug" => LevelFilter::DEBUG,
        "warn" => LevelFilter::WARN,
        "error" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    };
    let registry = tracing_subscriber::registry().with(filter(level));
    if args.format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
    } else {
        registry
            .with(
                tracing_logfmt::builder()
                    .with_span_name(false)
                    .with_span_path(false)
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
    }
    Ok(())
}

/// What is logged at `level`. The file watcher's (`notify`) warning that a watch it removes is
/// gone already comes each time a watched directory is deleted with its subdirectories, which
/// is normal (log directories rotate and vanish): shown at debug level only.
fn filter(level: LevelFilter) -> Targets {
    let notify = if level == LevelFilter::DEBUG {
        LevelFilter::DEBUG
    } else {
        LevelFilter::ERROR
    };
    Targets::new()
        .with_default(level)
        .with_target("notify::inotify", notify)
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn the_watchers_routine_warnings_show_at_debug_level_only() {
        let info = filter(LevelFilter::INFO);
        assert!(!info.would_enable("notify::inotify", &Level::WARN));
        assert!(info.would_enable("notify::inotify", &Level::ERROR));
        assert!(info.would_enable("log_pipeline::source", &Level::WARN));
        assert!(info.would_enable("log_pipeline::source", &Level::INFO));
        assert!(!info.would_enable("log_pipeline::source", &Level::DEBUG));
        let debug = filter(LevelFilter::DEBUG);
        assert!(debug.would_enable("notify::inotify", &Level::WARN));
        assert!(debug.would_enable("log_pipeline::source", &Level::DEBUG));
        assert!(!filter(LevelFilter::ERROR).would_enable("x", &Level::WARN));
    }
}
