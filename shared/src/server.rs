//! The HTTP server every agent runs: listeners from `--web.listen-address` (or systemd
//! sockets), TLS and basic auth from `--web.config.file`, a landing page listing the
//! endpoints, and graceful shutdown.
//!
//! ```no_run
//! # async fn run(web: agent_kit::cli::WebArgs) -> anyhow::Result<()> {
//! use agent_kit::server::{HttpServer, Lifecycle};
//! let lifecycle = Lifecycle::new();
//! lifecycle.listen_for_signals()?;
//! let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { "up 1\n" }));
//! HttpServer::new("PG Exporter", &web, ":9630")
//!     .endpoint("/metrics", "Prometheus metrics")
//!     .bind()
//!     .await?
//!     .serve(app, &lifecycle)
//!     .await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;
use tracing::{debug, error, info, warn};

use crate::cli::{ListenAddress, WebArgs};
use crate::exposition::{MetricType, TextEncoder};
use crate::web_config::{WebConfig, WebConfigError};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Reload requests as one subscriber sees them: the requests made since it last asked are one
/// reload, so a storm of SIGHUPs while it reloads is one more reload, and nothing is lost or
/// ends its loop however slow it is.
#[derive(Debug)]
pub struct Reloads(watch::Receiver<u64>);

/// The [`Lifecycle`] is gone: no reload request can come any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the lifecycle is gone")]
pub struct LifecycleGone;

impl Reloads {
    /// Waits for a reload request made since the last call (or since subscribing); all those
    /// made meanwhile count as one.
    pub async fn recv(&mut self) -> Result<(), LifecycleGone> {
        self.0.changed().await.map_err(|_| LifecycleGone)?;
        self.0.mark_unchanged();
        Ok(())
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address as given.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--web.systemd-socket` was given but systemd passed no sockets.
    #[error("--web.systemd-socket: {0}")]
    SystemdSocket(String),
    /// The web config file is invalid.
    #[error(transparent)]
    WebConfig(#[from] WebConfigError),
}

/// Shutdown and reload signalling for one process.
///
/// SIGTERM and SIGINT trigger shutdown; SIGHUP fires the reload hook that binaries subscribe
/// to with [`Lifecycle::subscribe_reload`].
#[derive(Debug, Clone)]
pub struct Lifecycle {
    shutdown: watch::Sender<bool>,
    /// Reload requests so far: a subscriber sees that it changed, not each request, so any
    /// number of requests while it reloads is one more reload, never a lag that ends its loop.
    reload: watch::Sender<u64>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A lifecycle with no signal handlers installed yet.
    pub fn new() -> Lifecycle {
        Lifecycle {
            shutdown: watch::Sender::new(false),
            reload: watch::Sender::new(0),
        }
    }

    /// Installs handlers for SIGTERM, SIGINT (shutdown) and SIGHUP (reload).
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { info!(signal = "SIGTERM", "Shutting down."); this.shutdown(); }
                    _ = int.recv() => { info!(signal = "SIGINT", "Shutting down."); this.shutdown(); }
                    _ = hup.recv() => { info!(signal = "SIGHUP", "Reload requested."); this.reload(); }
                }
            }
        });
        Ok(())
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Fires the reload hook.
    pub fn reload(&self) {
        // Kept without subscribers too: nothing to reload then.
        self.reload.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of the reload requests made after this call, coalesced: see [`Reloads`].
    pub fn subscribe_reload(&self) -> Reloads {
        Reloads(self.reload.subscribe())
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when shutdown starts.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        // An error means the sender is gone, which only happens at exit.
        let _ = rx.wait_for(|down| *down).await;
    }
}

/// Describes the server before it binds: its name, listen addresses and endpoints.
#[derive(Debug, Clone)]
pub struct HttpServer {
    name: String,
    addresses: Vec<ListenAddress>,
    systemd_socket: bool,
    web_config_file: Option<PathBuf>,
    endpoints: Vec<(String, String)>,
}

impl HttpServer {
    /// A server named `name` (shown on the landing page) listening where `web` says, or on
    /// `default_address` (e.g. `:9630`).
    pub fn new(name: &str, web: &WebArgs, default_address: &str) -> HttpServer {
        HttpServer {
            name: name.to_owned(),
            addresses: web.listen_addresses_or(default_address),
            systemd_socket: web.systemd_socket,
            web_config_file: web.config_file.clone(),
            endpoints: Vec::new(),
        }
    }

    /// Adds an endpoint to the landing page.
    pub fn endpoint(mut self, path: &str, description: &str) -> HttpServer {
        self.endpoints
            .push((path.to_owned(), description.to_owned()));
        self
    }

    /// Loads the web config and binds every listener, so that errors surface before serving.
    pub async fn bind(self) -> Result<BoundServer, ServeError> {
        let web_config = match &self.web_config_file {
            Some(path) => WebConfig::load(path)?,
            None => WebConfig::default(),
        };
        let mut listeners = Vec::new();
        if self.systemd_socket {
            let mut fds = listenfd::ListenFd::from_env();
            for i in 0..fds.len() {
                if let Ok(Some(l)) = fds.take_tcp_listener(i) {
                    l.set_nonblocking(true)
                        .map_err(|e| ServeError::SystemdSocket(e.to_string()))?;
                    listeners.push(
                        TcpListener::from_std(l)
                            .map_err(|e| ServeError::SystemdSocket(e.to_string()))?,
                    );
                }
            }
            if listeners.is_empty() {
                return Err(ServeError::SystemdSocket(
                    "no TCP sockets passed by systemd".into(),
                ));
            }
        } else {
            for address in &self.addresses {
                listeners.push(bind_one(address).await?);
            }
        }
        for l in &listeners {
            if let Ok(addr) = l.local_addr() {
                info!(address = %addr, tls = web_config.tls.is_some(), "Listening.");
            }
        }
        Ok(BoundServer {
            server: self,
            listeners,
            web_config: Arc::new(RwLock::new(web_config)),
        })
    }
}

async fn bind_one(address: &ListenAddress) -> Result<TcpListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        address: address.to_string(),
        source,
    };
    let candidates = address.resolve().await.map_err(bind_err)?;
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address");
    for candidate in candidates {
        match TcpListener::bind(candidate).await {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(bind_err(last))
}

/// A server with its listeners bound; [`BoundServer::serve`] runs it.
#[derive(Debug)]
pub struct BoundServer {
    server: HttpServer,
    listeners: Vec<TcpListener>,
    web_config: Arc<RwLock<WebConfig>>,
}

impl BoundServer {
    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves `app` (plus the landing page and basic auth) until `lifecycle` shuts down, then
    /// lets open requests finish for a few seconds. Reload requests re-read the web config,
    /// failing closed: a missing, empty or invalid file keeps the running one, TLS and basic
    /// authentication included, and counts in `web_config_reload_failures_total`.
    pub async fn serve(self, app: Router, lifecycle: &Lifecycle) -> Result<(), ServeError> {
        let BoundServer {
            server,
            listeners,
            web_config,
        } = self;
        let landing = Arc::new(landing_page(&server.name, &server.endpoints));
        let app = app
            .fallback(move || {
                let landing = landing.clone();
                async move { Html(landing.as_str().to_owned()) }
            })
            .layer(middleware::from_fn_with_state(
                web_config.clone(),
                web_config_layer,
            ));

        if let Some(path) = server.web_config_file.clone() {
            let mut reloads = lifecycle.subscribe_reload();
            let web_config = web_config.clone();
            tokio::spawn(async move {
                while reloads.recv().await.is_ok() {
                    reload_web_config(&path, &web_config);
                }
            });
        }

        let graceful = Arc::new(GracefulShutdown::new());
        let mut accept_loops = tokio::task::JoinSet::new();
        for listener in listeners {
            let app = app.clone();
            let web_config = web_config.clone();
            let graceful = graceful.clone();
            let lifecycle = lifecycle.clone();
            accept_loops.spawn(async move {
                loop {
                    let (stream, peer) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(e) => {
                                // Out of file descriptors and the like: back off, keep serving.
                                warn!(error = %e, "Accept failed.");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                        _ = lifecycle.shutdown_requested() => break,
                    };
                    let tls = web_config.read().expect("web config lock").tls.clone();
                    let transport = Transport { tls: tls.is_some() };
                    let service = TowerToHyperService::new(app.clone().map_request(
                        move |mut request: Request<hyper::body::Incoming>| {
                            request.extensions_mut().insert(transport);
                            request
                        },
                    ));
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let http = {
                            let mut b = hyper::server::conn::http1::Builder::new();
                            b.timer(TokioTimer::new())
                                .header_read_timeout(HEADER_READ_TIMEOUT);
                            b
                        };
                        let result =
                            match tls {
                                Some(tls) => {
                                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                                    match tokio::time::timeout(
                                        TLS_HANDSHAKE_TIMEOUT,
                                        acceptor.accept(stream),
                                    )
                                    .await
                                    {
                                        Ok(Ok(stream)) => {
                                            watcher
                                                .watch(http.serve_connection(
                                                    TokioIo::new(stream),
                                                    service,
                                                ))
                                                .await
                                        }
                                        Ok(Err(e)) => {
                                            debug!(%peer, error = %e, "TLS handshake failed.");
                                            return;
                                        }
                                        Err(_) => {
                                            debug!(%peer, "TLS handshake timed out.");
                                            return;
                                        }
                                    }
                                }
                                None => {
                                    watcher
                                        .watch(http.serve_connection(TokioIo::new(stream), service))
                                        .await
                                }
                            };
                        if let Err(e) = result {
                            debug!(%peer, error = %e, "Connection ended with an error.");
                        }
                    });
                }
            });
        }
        while accept_loops.join_next().await.is_some() {}
        // The accept loops held the only other references.
        if let Ok(graceful) = Arc::try_unwrap(graceful)
            && tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
                .await
                .is_err()
        {
            warn!("Open connections did not finish in time; closing them.");
        }
        Ok(())
    }
}

/// Web-config reloads refused since start.
static RELOAD_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Whether the last web-config reload was refused.
static LAST_RELOAD_FAILED: AtomicBool = AtomicBool::new(false);

/// Re-reads `path` on a reload request, failing closed: a file that does not load (missing,
/// empty, invalid YAML, a bad bcrypt hash, an unreadable certificate; see [`WebConfig::load`])
/// keeps the running config, TLS and authentication included, and is logged with the file and
/// the reason and counted in `web_config_reload_failures_total`. A file that loads replaces the
/// running config, even one that turns TLS or authentication off: a valid file saying so is the
/// operator's decision (a restart would read it the same way), logged as a warning.
fn reload_web_config(path: &Path, running: &RwLock<WebConfig>) {
    match WebConfig::load(path) {
        Ok(new) => {
            let mut config = running.write().expect("web config lock");
            let turned_off: Vec<&str> = [
                (config.tls.is_some() && new.tls.is_none(), "TLS"),
                (
                    config.basic_auth.is_some() && new.basic_auth.is_none(),
                    "basic authentication",
                ),
            ]
            .into_iter()
            .filter_map(|(off, what)| off.then_some(what))
            .collect();
            let (tls, basic_auth) = (new.tls.is_some(), new.basic_auth.is_some());
            *config = new;
            drop(config);
            LAST_RELOAD_FAILED.store(false, Ordering::Relaxed);
            if turned_off.is_empty() {
                info!(file = %path.display(), tls, basic_auth, "Web config reloaded.");
            } else {
                warn!(
                    file = %path.display(),
                    turned_off = %turned_off.join(" and "),
                    "Web config reloaded: the file turns {} off.",
                    turned_off.join(" and ")
                );
            }
        }
        Err(e) => {
            RELOAD_FAILURES.fetch_add(1, Ordering::Relaxed);
            LAST_RELOAD_FAILED.store(true, Ordering::Relaxed);
            let config = running.read().expect("web config lock");
            error!(
                file = %path.display(),
                error = %e,
                tls = config.tls.is_some(),
                basic_auth = config.basic_auth.is_some(),
                "Web config reload refused; the running web config stays."
            );
        }
    }
}

/// Writes the reload health of `--web.config.file`, the same in every agent (it is the
/// serving kit's, like the flag): `web_config_last_reload_successful` (0 while the file on
/// disk is refused) and `web_config_reload_failures_total`. Called by
/// [`process_metrics::encode`](crate::process_metrics::encode), which every agent's metrics
/// endpoint runs.
pub fn encode_web_config_metrics(enc: &mut TextEncoder<'_>) {
    let none: &[(&str, &str)] = &[];
    enc.family(
        "web_config_last_reload_successful",
        "Whether the last reload of --web.config.file was applied (0: refused, the running web config stays).",
        MetricType::Gauge,
    )
    .sample(
        none,
        if LAST_RELOAD_FAILED.load(Ordering::Relaxed) {
            0.0
        } else {
            1.0
        },
    );
    enc.family(
        "web_config_reload_failures_total",
        "Reloads of --web.config.file refused (missing, empty or invalid file); the running web config stayed.",
        MetricType::Counter,
    )
    .sample(none, RELOAD_FAILURES.load(Ordering::Relaxed) as f64);
}

/// How the connection a request came on was made, for [`web_config_layer`].
#[derive(Debug, Clone, Copy)]
struct Transport {
    tls: bool,
}

/// Applies basic auth and the configured response headers to every request. A request on a
/// plain-HTTP connection kept alive from before a reload turned TLS on is refused and its
/// connection closed, so the client comes back over TLS.
async fn web_config_layer(
    State(web_config): State<Arc<RwLock<WebConfig>>>,
    request: Request,
    next: Next,
) -> Response {
    let (auth, headers, tls_required) = {
        let config = web_config.read().expect("web config lock");
        (
            config.basic_auth.clone(),
            config.headers.clone(),
            config.tls.is_some(),
        )
    };
    let plain = request
        .extensions()
        .get::<Transport>()
        .is_some_and(|t| !t.tls);
    if tls_required && plain {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONNECTION, HeaderValue::from_static("close"))],
            "Client sent an HTTP request to an HTTPS server.\n",
        )
            .into_response();
    }
    if let Some(auth) = auth {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // bcrypt is CPU-heavy: keep it off the I/O threads.
        let granted =
            tokio::task::spawn_blocking(move || auth.check_header(authorization.as_deref()))
                .await
                .unwrap_or(false);
        if !granted {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"))],
                "Unauthorized\n",
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}

fn landing_page(name: &str, endpoints: &[(String, String)]) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    for (path, description) in endpoints {
        rows.push_str(&format!(
            "<li><a href=\"{p}\">{p}</a> {d}</li>\n",
            p = escape(path),
            d = escape(description)
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html><head><title>{n}</title></head>\n<body>\n<h1>{n}</h1>\n<p>Version {v}</p>\n<ul>\n{rows}</ul>\n</body></html>\n",
        n = escape(name),
        v = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_storm_of_reload_requests_is_one_reload_and_later_ones_still_come() {
        let lifecycle = Lifecycle::new();
        let mut reloads = lifecycle.subscribe_reload();
        for _ in 0..200 {
            lifecycle.reload();
        }
        assert_eq!(reloads.recv().await, Ok(()));
        let pending = tokio::time::timeout(Duration::from_millis(50), reloads.recv()).await;
        assert!(pending.is_err(), "the storm made more than one reload");
        lifecycle.reload();
        assert_eq!(reloads.recv().await, Ok(()));
        drop(lifecycle);
        assert_eq!(reloads.recv().await, Err(LifecycleGone));
    }
}
