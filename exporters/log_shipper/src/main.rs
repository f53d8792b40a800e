//! log_shipper: tails PostgreSQL, Patroni, Pgbouncer and pgBackRest logs and ships them to
//! VictoriaLogs, Loki or a file, at-least-once, with its own metrics on :9598.
//!
//! ```text
//! log_shipper --config /etc/log_shipper.yml [--web.listen-address :9598] [--dry-run]
//! ```
//!
//! SIGHUP re-reads the config: an invalid one, or one that cannot start (a directory it names
//! cannot be written), is rejected and the running pipeline stays; a valid one replaces it
//! after the old one delivered what it holds, resuming from the checkpoints, so no position
//! is lost. SIGTERM/SIGINT stop gracefully, within the stop grace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_kit::cli::{LogArgs, WebArgs};
use agent_kit::exposition::{TextEncoder, metrics_response};
use agent_kit::redact::mask_endpoint;
use agent_kit::server::{Lifecycle, Server};
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use log_pipeline::config::{Config, SinkKind};
use log_pipeline::pipeline::Pipeline;
use log_pipeline::stats::Stats;
use tokio::sync::Mutex;
use tracing::{error, info};

/// jemalloc: parsing allocates a handful of small strings per record on the tailer thread,
/// freed on a sink's thread once delivered; glibc's malloc spent about a third of the parsing
/// time on them. mimalloc was as fast but tripled the peak RSS (see the README's Benchmarks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long a stopping pipeline may take to deliver what it holds.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// log_shipper's flags.
#[derive(Debug, Parser)]
#[command(
    name = "log_shipper",
    version,
    about = "Ships PostgreSQL, Patroni, Pgbouncer and pgBackRest logs to VictoriaLogs and Loki, at-least-once."
)]
struct Cli {
    /// The YAML config file.
    #[arg(short = 'c', long, env = "LOG_SHIPPER_CONFIG")]
    config: PathBuf,

    /// Validate the config, check that every directory it names can be created and written
    /// and its TLS files read, print a summary (endpoints with credentials masked) and exit.
    #[arg(long)]
    dry_run: bool,

    #[command(flatten)]
    web: WebArgs,

    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    if let Some(code) =
        agent_kit::entry::generate_docs_if_requested(<Cli as clap::CommandFactory>::command)
    {
        return code;
    }
    agent_kit::entry::run(Cli::try_parse(), |c| &c.log, 1, run)
}

#[derive(Debug)]
struct AppState {
    stats: Arc<Stats>,
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut body = state.stats.render();
    agent_kit::process_metrics::encode(&mut TextEncoder::new(&mut body));
    metrics_response(body, &headers)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    if cli.dry_run {
        // What a start would refuse: directories that cannot be created or written, TLS
        // files that cannot be read.
        Pipeline::check(&config)?;
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
            reload(&path, &p, &c, &s).await;
        }
    });

    let server = Server::new("Log Shipper", &cli.web, ":9598")
        .endpoint(&cli.web.telemetry_path, "Prometheus metrics");
    let bound = server.bind().await?;
    let app = Router::new()
        .route(&cli.web.telemetry_path, get(metrics))
        .with_state(Arc::new(AppState {
            stats: stats.clone(),
        }));
    bound.serve(app, &lifecycle).await?;
    if let Some(p) = pipeline.lock().await.take() {
        p.stop(STOP_GRACE).await;
    }
    info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Re-reads the config; a valid one replaces the running pipeline (positions carry over
/// through the checkpoints), an invalid one is logged and ignored.
async fn reload(
    path: &std::path::Path,
    pipeline: &Mutex<Option<Pipeline>>,
    current: &Mutex<Config>,
    stats: &Arc<Stats>,
) {
    // Checked before the running pipeline stops: a config that cannot start leaves it be.
    let new = match Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|c| Pipeline::check(&c).map(|()| c).map_err(anyhow::Error::from))
    {
        Ok(c) => c,
        Err(e) => {
            stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, "Reload rejected; the running config stays.");
            return;
        }
    };
    let mut running = pipeline.lock().await;
    if let Some(old) = running.take() {
        old.stop(STOP_GRACE).await;
    }
    let mut cur = current.lock().await;
    match Pipeline::start(&new, stats) {
        Ok(p) => {
            *running = Some(p);
            *cur = new;
            stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info!("Config reloaded.");
        }
        Err(e) => {
            stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, "New config cannot start; restarting the previous one.");
            match Pipeline::start(&cur, stats) {
                Ok(p) => *running = Some(p),
                Err(e) => error!(error = %e, "The previous config cannot start either."),
            }
        }
    }
}
