//! Structured logging to stderr in the formats of the Go exporters: `logfmt` (default) or
//! `json`, filtered by `--log.level`.
//!
//! Call [`init`] once at start-up with the parsed [`LogArgs`]. Events name their subject in
//! fields (`collector`, `file`, `url` masked with [`crate::redact::mask_password`]).

use tracing::level_filters::LevelFilter;
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
    let registry = tracing_subscriber::registry().with(level);
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
