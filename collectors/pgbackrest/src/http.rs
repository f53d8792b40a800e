//! The HTTP routes: the metrics at `--web.telemetry-path` (the serving kit adds the landing
//! page, TLS and basic auth).

use std::sync::Arc;
use std::time::SystemTime;

use agent_kit::exposition::metrics_response;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;

use crate::collector::Collector;

/// The router serving `collector`'s metrics at `telemetry_path`.
pub fn router(collector: Arc<Collector>, telemetry_path: &str) -> Router {
    Router::new()
        .route(telemetry_path, get(metrics))
        .with_state(collector)
}

async fn metrics(State(collector): State<Arc<Collector>>, headers: HeaderMap) -> Response {
    let body = collector.render(SystemTime::now());
    metrics_response(body, &headers)
}
