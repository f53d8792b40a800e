//! SIGHUP: re-reads the config and replaces the running pipeline with a valid one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Mutex;
use tracing::{error, info};

use super::STOP_GRACE;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::stats::Stats;

/// Re-reads the config; a valid one replaces the running pipeline (positions carry over
/// through the checkpoints), an invalid one is logged and ignored.
pub(super) async fn reload(
    path: &Path,
    pipeline: &Mutex<Option<Pipeline>>,
    current: &Mutex<Config>,
    stats: &Arc<Stats>,
) {
    // Checked before the running pipeline stops: a config that cannot start leaves it be.
    let new = match super::load(path)
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
