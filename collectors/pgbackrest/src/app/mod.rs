//! The program `pgbackrest_exporter`: its flags ([`cli`]), its routes and the wiring of the
//! collection loop, the HTTP server and the signals. The binary is only
//! `fn main() -> ExitCode { pgbackrest_collector::app::main() }`.
//!
//! It runs `pgbackrest info --output json` in the background, once at start and then every
//! `--collect.interval` seconds, never per scrape; each run is killed with its process group
//! after `--collect.timeout` seconds. SIGHUP re-reads `--web.config.file` and starts a
//! collection at once.

pub mod cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use agent_kit::exposition::metrics_response;
use agent_kit::server::{HttpServer, Lifecycle};
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use tracing::info;

use crate::collector::Collector;

/// Runs pgbackrest_exporter with the process's arguments until SIGTERM/SIGINT.
pub fn main() -> ExitCode {
    if let Some(code) =
        agent_kit::entry::generate_docs_if_requested(<cli::Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    agent_kit::entry::run(
        cli::Cli::parse_from_env(),
        |cli| &cli.log,
        1,
        |cli| async move { run(cli).await.map(|()| ExitCode::SUCCESS) },
    )
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    info!(
        name = "pgbackrest_exporter",
        version = env!("CARGO_PKG_VERSION"),
        "Starting exporter."
    );
    cli.web
        .validate_telemetry_path(&[])
        .map_err(anyhow::Error::msg)?;
    let settings = cli.settings()?;
    cli::log_settings(&settings);

    let lifecycle = Lifecycle::new();
    lifecycle.listen_for_signals()?;
    let collector = Collector::new(settings);

    // SIGHUP: collect now (the serving kit re-reads the web config on the same signal).
    let mut reloads = lifecycle.subscribe_reload();
    let c = collector.clone();
    tokio::spawn(async move {
        while reloads.recv().await.is_ok() {
            c.trigger();
        }
    });
    let stop = lifecycle.clone();
    let collection = tokio::spawn(
        collector
            .clone()
            .run(async move { stop.shutdown_requested().await }),
    );

    let bound = HttpServer::new("pgBackRest exporter", &cli.web, ":9854")
        .endpoint(&cli.web.telemetry_path, "Metrics")
        .bind()
        .await?;
    let served = bound
        .serve(
            router(Arc::clone(&collector), &cli.web.telemetry_path),
            &lifecycle,
        )
        .await;
    lifecycle.shutdown();
    let _ = collection.await;
    served?;
    info!("Stopped.");
    Ok(())
}

/// The routes: `collector`'s metrics at `telemetry_path` (the serving kit adds the landing
/// page, TLS and basic auth).
pub fn router(collector: Arc<Collector>, telemetry_path: &str) -> Router {
    Router::new()
        .route(telemetry_path, get(metrics))
        .with_state(collector)
}

async fn metrics(State(collector): State<Arc<Collector>>, headers: HeaderMap) -> Response {
    let body = collector.render(SystemTime::now());
    metrics_response(body, &headers)
}
