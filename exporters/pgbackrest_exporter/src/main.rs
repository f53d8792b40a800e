//! pgbackrest_exporter: pgBackRest backup, archive and repository metrics on :9854, a drop-in
//! replacement for woblerr/pgbackrest_exporter v0.23 (same flags, metric names and labels).
//!
//! It runs `pgbackrest info --output json` in the background, once at start and then every
//! `--collect.interval` seconds, never per scrape; each run is killed with its process group
//! after `--collect.timeout` seconds. SIGHUP re-reads `--web.config.file` and starts a
//! collection at once. Flags of our own: `--collect.timeout`, `--backrest.binary`,
//! `--backrest.user`, `--backrest.backup-limit`, `--[no-]backrest.wal-age`.
//!
//! pgBackRest must run as the repository's owner (usually `postgres`): run the exporter as that
//! user (Pigsty's and upstream's systemd units do), or, when it runs as root, pass
//! `--backrest.user=postgres` and it runs only pgbackrest as that user.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use agent_kit::server::{Lifecycle, Server};
use pgbackrest_collector::collector::Collector;
use tracing::info;

fn main() -> ExitCode {
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

    let bound = Server::new("pgBackRest exporter", &cli.web, ":9854")
        .endpoint(&cli.web.telemetry_path, "Metrics")
        .bind()
        .await?;
    let served = bound
        .serve(
            pgbackrest_collector::http::router(Arc::clone(&collector), &cli.web.telemetry_path),
            &lifecycle,
        )
        .await;
    lifecycle.shutdown();
    let _ = collection.await;
    served?;
    info!("Stopped.");
    Ok(())
}
