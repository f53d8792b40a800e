//! Where a sink's requests go: the HTTP client (TLS, auth, headers, the request URL) or the
//! output file, one attempt at a time, and which answers are worth another attempt.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_kit::redact::{Secrets, mask_endpoint, mask_secrets};

use super::SinkError;
use super::encode::{Encoded, Encoder};
use crate::config::{Auth, Sink, SinkKind, open_append};

/// How one delivery attempt went wrong.
#[derive(Debug)]
pub(super) enum SendError {
    /// Try again later.
    Retry(String),
    /// The destination refused the batch for good.
    Reject {
        /// HTTP status.
        status: u16,
        /// Response body (shortened).
        message: String,
    },
}

/// Where records go.
#[derive(Debug)]
pub(super) enum Output {
    Http {
        client: reqwest::Client,
        url: url::Url,
        headers: Vec<(String, String)>,
        auth: Option<Auth>,
        /// Scrubbed from every message.
        secrets: Secrets,
    },
    File {
        path: PathBuf,
    },
}

impl Output {
    /// Sends `body` once.
    pub(super) async fn send(&self, body: &Encoded) -> Result<(), SendError> {
        match self {
            Output::Http {
                client,
                url,
                headers,
                auth,
                secrets,
            } => {
                let mut req = client
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, body.content_type)
                    .body(body.body.clone());
                if let Some(enc) = body.content_encoding {
                    req = req.header(reqwest::header::CONTENT_ENCODING, enc);
                }
                for (k, v) in headers.iter().chain(body.headers.iter()) {
                    req = req.header(k.as_str(), v.as_str());
                }
                req = match auth {
                    Some(Auth::Basic { username, password }) => {
                        req.basic_auth(username, Some(password))
                    }
                    Some(Auth::Bearer(t)) => req.bearer_auth(t),
                    None => req,
                };
                let resp = req.send().await.map_err(|e| {
                    SendError::Retry(secrets.scrub(&format!(
                        "request to {} failed: {}",
                        mask_endpoint(url),
                        error_chain(&e.without_url())
                    )))
                })?;
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    return Ok(());
                }
                if resp.status().is_redirection() {
                    // Not followed: a 302/303 would turn the POST into a GET and the records
                    // would count as sent; a 307/308 would take the body and the credentials
                    // to wherever it points. Kept and retried until the endpoint is fixed.
                    let location = resp
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let shown = match url.join(&location) {
                        Ok(to) => mask_endpoint(&to),
                        Err(_) => mask_secrets(&location).into_owned(),
                    };
                    return Err(SendError::Retry(secrets.scrub(&format!(
                        "HTTP {status}: redirect to {shown} not followed; set the endpoint to where the destination is"
                    ))));
                }
                let mut text = resp.text().await.unwrap_or_default();
                crate::parse::cut_chars(&mut text, 512);
                // A proxy may echo the request, credentials included.
                let message = secrets.scrub(&format!("HTTP {status}: {}", text.trim()));
                if matches!(status, 401 | 403 | 404 | 408 | 429) || (status >= 500 && status != 501)
                {
                    Err(SendError::Retry(message))
                } else {
                    Err(SendError::Reject { status, message })
                }
            }
            Output::File { path } => {
                let p = path.clone();
                let body = body.body.clone();
                tokio::task::spawn_blocking(move || append_synced(&p, &body))
                    .await
                    .map_err(|e| SendError::Retry(e.to_string()))?
                    .map_err(|e| SendError::Retry(format!("{}: {e}", path.display())))
            }
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own message is only the outer one).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The URL of a request: `api` (`/loki/api/v1/push`, maybe with a query) joined to the
/// endpoint's path (a prefix such as `/vl/`), the endpoint's query first.
fn request_url(endpoint: &url::Url, api: &str) -> url::Url {
    let (path, query) = api.split_once('?').unwrap_or((api, ""));
    let mut url = endpoint.clone();
    url.set_path(&format!("{}{path}", endpoint.path().trim_end_matches('/')));
    let query = [endpoint.query().unwrap_or(""), query]
        .into_iter()
        .filter(|q| !q.is_empty())
        .collect::<Vec<_>>()
        .join("&");
    url.set_query((!query.is_empty()).then_some(query.as_str()));
    url
}

/// Appends `bytes` to `path` (creating it and its directory) and fsyncs; refuses anything but
/// a regular file, without blocking.
pub(super) fn append_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = open_append(path, true)?;
    f.write_all(bytes)?;
    f.sync_data()
}

/// What sink `config` sends with: its output (the HTTP client, TLS files read, or the file)
/// and its encoder.
pub(super) fn build(config: &Sink) -> Result<(Output, Encoder), SinkError> {
    let setup_err = |message: String| SinkError::Setup {
        sink: config.name.clone(),
        message,
    };
    let encoder = Encoder::for_sink(config);
    let Some(http) = &config.http else {
        let SinkKind::File { path } = &config.kind else {
            return Err(setup_err("an HTTP sink without HTTP settings".into()));
        };
        return Ok((Output::File { path: path.clone() }, encoder));
    };
    let mut builder = reqwest::Client::builder()
        .timeout(http.request_timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        // A redirect is a failed send (see `Output::send`), and no URL goes in a Referer.
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .user_agent(concat!("log_shipper/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &http.tls.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| setup_err(format!("tls.ca_file {}: {e}", ca.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| setup_err(format!("tls.ca_file {}: {e}", ca.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&http.tls.cert_file, &http.tls.key_file) {
        let mut pem = std::fs::read(cert)
            .map_err(|e| setup_err(format!("tls.cert_file {}: {e}", cert.display())))?;
        pem.extend(
            std::fs::read(key)
                .map_err(|e| setup_err(format!("tls.key_file {}: {e}", key.display())))?,
        );
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| setup_err(format!("tls client certificate: {e}")))?;
        builder = builder.identity(identity);
    }
    if http.tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let client = builder
        .build()
        .map_err(|e| setup_err(format!("HTTP client: {e}")))?;
    Ok((
        Output::Http {
            client,
            url: request_url(&http.endpoint, encoder.path()),
            headers: http.headers.clone(),
            auth: http.auth.clone(),
            secrets: http.secrets.clone(),
        },
        encoder,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_join_the_path_and_keep_the_query() {
        let join = |endpoint: &str, api: &str| {
            request_url(&url::Url::parse(endpoint).unwrap(), api).to_string()
        };
        let loki = "/loki/api/v1/push";
        let vl_loki = "/insert/loki/api/v1/push?_msg_field=message";
        for (endpoint, api, want) in [
            ("http://h:3100", loki, "http://h:3100/loki/api/v1/push"),
            ("http://h:3100/", loki, "http://h:3100/loki/api/v1/push"),
            (
                "http://h:3100/?tenant=x",
                loki,
                "http://h:3100/loki/api/v1/push?tenant=x",
            ),
            (
                "https://h/prefix/?tenant=x&token=t",
                "/insert/jsonline",
                "https://h/prefix/insert/jsonline?tenant=x&token=t",
            ),
            (
                "http://h:9428/vl?tenant=x",
                vl_loki,
                "http://h:9428/vl/insert/loki/api/v1/push?tenant=x&_msg_field=message",
            ),
            (
                "http://h:9428",
                vl_loki,
                "http://h:9428/insert/loki/api/v1/push?_msg_field=message",
            ),
        ] {
            assert_eq!(join(endpoint, api), want, "{endpoint} + {api}");
        }
    }
}
