//! A minimal blocking HTTP client for loopback services (VictoriaMetrics' API, exporters'
//! `/metrics`, `/reload`). It works from plain threads and from inside a tokio runtime alike.

use std::time::Duration;

use anyhow::{Context as _, Result};

/// The status code and body of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Body as text (lossy UTF-8).
    pub body: String,
}

fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build();
    ureq::Agent::new_with_config(config)
}

/// `GET url` with the given query parameters; any status is returned, only transport errors
/// fail.
pub fn get(url: &str, query: &[(&str, &str)]) -> Result<HttpResponse> {
    let mut request = agent().get(url);
    for (k, v) in query {
        request = request.query(*k, *v);
    }
    let response = request
        .call()
        .with_context(|| format!("GET {url} failed"))?;
    read(response, "GET", url)
}

/// A request with `method` (`GET`, `POST`, `DELETE`, …) and an empty body to `url`; any status
/// is returned, only transport errors fail.
pub fn request(method: &str, url: &str) -> Result<HttpResponse> {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(())
        .with_context(|| format!("invalid request {method} {url}"))?;
    let response = agent()
        .run(request)
        .with_context(|| format!("{method} {url} failed"))?;
    read(response, method, url)
}

fn read(
    mut response: ureq::http::Response<ureq::Body>,
    method: &str,
    url: &str,
) -> Result<HttpResponse> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .with_context(|| format!("cannot read the body of {method} {url}"))?;
    Ok(HttpResponse { status, body })
}
