//! The program `log_shipper`: its flags ([`cli`]), its route, and the wiring of the pipeline,
//! the HTTP server and the signals. The binary is only
//! `fn main() -> ExitCode { log_pipeline::app::main() }`.
//!
//! SIGHUP re-reads the config (`reload`): an invalid one, or one that cannot start (a
//! directory it names cannot be written), is rejected and the running pipeline stays; a valid
//! one replaces it after the old one delivered what it holds, resuming from the checkpoints,
//! so no position is lost. SIGTERM/SIGINT stop gracefully, within the stop grace.

pub mod cli;
mod reload;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_kit::exposition::{TextEncoder, metrics_response};
use agent_kit::redact::mask_endpoint;
use agent_kit::server::{HttpServer, Lifecycle};
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use tokio::sync::Mutex;
use tracing::info;

use crate::config::{Config, ConfigError, SinkKind};
use crate::pipeline::Pipeline;
use crate::stats::Stats;
use cli::Cli;

/// How long a stopping pipeline may take to deliver what it holds.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs log_shipper with the process's arguments until SIGTERM/SIGINT.
pub fn main() -> ExitCode {
    if let Some(code) =
        agent_kit::entry::generate_docs_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    agent_kit::entry::run(Cli::try_parse(), |c| &c.log, 1, run)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load(&cli.config)?;
    if cli.dry_run {
        dry_run(&cli, &config)?;
        return Ok(ExitCode::SUCCESS);
    }
    cli.web
        .validate_telemetry_path(&[])
        .map_err(anyhow::Error::msg)?;
    let stats = Arc::new(Stats::default());
    let lifecycle = Lifecycle::new();
    lifecycle.listen_for_signals()?;

    let pipeline = Arc::new(Mutex::new(Some(Pipeline::start(&config, &stats)?)));
    let current = Arc::new(Mutex::new(config));

    let mut reloads = lifecycle.subscribe_reload();
    let (p, c, s, path) = (
        pipeline.clone(),
        current.clone(),
        stats.clone(),
        cli.config.clone(),
    );
    tokio::spawn(async move {
        while reloads.recv().await.is_ok() {
            reload::reload(&path, &p, &c, &s).await;
        }
    });

    let server = HttpServer::new("Log Shipper", &cli.web, ":9598")
        .endpoint(&cli.web.telemetry_path, "Prometheus metrics");
    let bound = server.bind().await?;
    bound
        .serve(router(stats, &cli.web.telemetry_path), &lifecycle)
        .await?;
    if let Some(p) = pipeline.lock().await.take() {
        p.stop(STOP_GRACE).await;
    }
    info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Reads and validates the config file; an error names the file (then the field, and the line
/// when the YAML reader placed it).
fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| match e {
        // It names the file already.
        e @ ConfigError::Read { .. } => e.into(),
        e => anyhow::anyhow!("{}: {e}", path.display()),
    })
}

/// `--dry-run`: what a start would refuse (directories that cannot be created or written, TLS
/// files that cannot be read), without creating anything, then a summary with the endpoints'
/// credentials masked and the directories a start creates (owned by the user it runs as).
fn dry_run(cli: &Cli, config: &Config) -> anyhow::Result<()> {
    let missing = Pipeline::plan(config)?;
    println!(
        "{}: {} source(s), {} sink(s), checkpoints in {}",
        cli.config.display(),
        config.sources.len(),
        config.sinks.len(),
        config.checkpoint_dir.display()
    );
    for sink in &config.sinks {
        let target = match (&sink.http, &sink.kind) {
            (Some(http), _) => mask_endpoint(&http.endpoint),
            (None, SinkKind::File { path }) => path.display().to_string(),
            (None, _) => String::new(),
        };
        println!("sink {}: {target}", sink.name);
    }
    let mut shown = std::collections::BTreeSet::new();
    for (field, dir) in &missing {
        if shown.insert(dir) {
            println!("a start creates {} ({field})", dir.display());
        }
    }
    Ok(())
}

/// The route: the shipper's own metrics and the process's at `telemetry_path` (the serving kit
/// adds the landing page, TLS and basic auth).
pub fn router(stats: Arc<Stats>, telemetry_path: &str) -> Router {
    Router::new()
        .route(telemetry_path, get(metrics))
        .with_state(stats)
}

async fn metrics(State(stats): State<Arc<Stats>>, headers: HeaderMap) -> Response {
    let mut body = stats.render();
    agent_kit::process_metrics::encode(&mut TextEncoder::new(&mut body));
    metrics_response(body, &headers)
}
