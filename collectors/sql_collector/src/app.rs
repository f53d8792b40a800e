//! The command-line program shared by pg_exporter and pgbouncer_exporter: the Go
//! pg_exporter's flags and environment variables, its HTTP endpoints and status codes, and its
//! reload triggers (SIGHUP, SIGUSR1, `/reload`, and a change of the config files).
//!
//! Each binary is `fn main() -> ExitCode { sql_collector::app::main(&Flavor { .. }) }`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_kit::cli::{LogArgs, WebArgs};
use agent_kit::exposition::metrics_response_stream;
use agent_kit::redact::mask_password;
use agent_kit::server::{HttpServer, Lifecycle};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use tracing::{error, info, warn};

use crate::config::{self, CollectorSet, LoadMode};
use crate::conninfo::ConnInfo;
use crate::exporter::{Exporter, ExporterSettings, Health};
use crate::server::EngineSettings;

/// What differs between the binaries built on this program.
#[derive(Debug, Clone, Copy)]
pub struct Flavor {
    /// Binary name, for logs and the landing page.
    pub name: &'static str,
    /// Landing-page title.
    pub title: &'static str,
    /// Default `--web.listen-address`.
    pub default_listen: &'static str,
    /// Default URL when none is given.
    pub default_url: &'static str,
    /// Whether auto-discovery is on by default.
    pub auto_discovery: bool,
    /// Config paths tried in order when neither `--config` nor PG_EXPORTER_CONFIG is set.
    pub config_candidates: &'static [&'static str],
}

/// pg_exporter's flags, spelled as upstream (kingpin) spells them.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "PostgreSQL and Pgbouncer metrics from YAML-defined SQL collectors."
)]
pub struct Cli {
    /// PostgreSQL URL or libpq key=value string (also PG_EXPORTER_URL, PGURL, or a file named
    /// by PG_EXPORTER_URL_FILE). A database named `pgbouncer` selects Pgbouncer mode. A
    /// password (or sslpassword) given here is visible to every local user in `ps`: put the
    /// URL in PG_EXPORTER_URL or in the PG_EXPORTER_URL_FILE file, or the password in
    /// ~/.pgpass.
    #[arg(short = 'u', long, env = "PG_EXPORTER_URL", hide_env_values = true)]
    pub url: Option<String>,

    /// Whether `url` came from the command line (where `ps` shows it), not the environment.
    #[arg(skip)]
    pub url_on_command_line: bool,

    /// Config file or directory (default: ./pg_exporter.yml, /etc/pg_exporter.yml,
    /// /etc/pg_exporter, else the built-in set).
    #[arg(short = 'c', long, env = "PG_EXPORTER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Constant labels added to every metric: `k=v,k=v`.
    #[arg(short = 'l', long, env = "PG_EXPORTER_LABEL", default_value = "")]
    pub label: String,

    /// Server tags for planning, comma-separated.
    #[arg(short = 't', long, env = "PG_EXPORTER_TAG", default_value = "")]
    pub tag: String,

    /// Ignore every collector TTL.
    #[arg(short = 'C', long, env = "PG_EXPORTER_DISABLE_CACHE", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub disable_cache: bool,

    /// Do not emit the exporter's own metrics.
    #[arg(short = 'm', long, env = "PG_EXPORTER_DISABLE_INTRO", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub disable_intro: bool,

    /// Discover and scrape every database of the instance.
    #[arg(short = 'a', long, env = "PG_EXPORTER_AUTO_DISCOVERY", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub auto_discovery: Option<bool>,

    /// Databases never discovered, comma-separated.
    #[arg(
        short = 'x',
        long,
        env = "PG_EXPORTER_EXCLUDE_DATABASE",
        default_value = "template0,template1,postgres"
    )]
    pub exclude_database: String,

    /// When set, only these databases are discovered, comma-separated.
    #[arg(
        short = 'i',
        long,
        env = "PG_EXPORTER_INCLUDE_DATABASE",
        default_value = ""
    )]
    pub include_database: String,

    /// Connections open at once, at most, to auto-discovered databases; they are collected in
    /// parallel within it, and each connection closes when its scrape ends.
    #[arg(
        long,
        env = "PG_EXPORTER_DISCOVERY_CONNECTIONS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub discovery_connections: u16,

    /// Prefix of the built-in metrics (default `pg`, or `pgbouncer` in Pgbouncer mode).
    #[arg(short = 'n', long, env = "PG_EXPORTER_NAMESPACE", default_value = "")]
    pub namespace: String,

    /// Exit with status 2 when the target cannot be reached at start-up.
    #[arg(short = 'f', long, env = "PG_EXPORTER_FAIL_FAST", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub fail_fast: bool,

    /// Milliseconds allowed for connecting and for each pre-check step.
    #[arg(
        short = 'T',
        long,
        env = "PG_EXPORTER_CONNECT_TIMEOUT",
        default_value_t = 100
    )]
    pub connect_timeout: i64,

    /// Load the config, print the merged set and every branch's explanation, and exit.
    #[arg(short = 'D', long)]
    pub dry_run: bool,

    /// Connect, plan, print the planned collectors, and exit.
    #[arg(short = 'E', long)]
    pub explain: bool,

    /// Run with a config that defines no collector (an empty file, or a directory without
    /// collectors), serving only the exporter's own metrics; refused otherwise, at start,
    /// by --dry-run and on reload.
    #[arg(long, env = "PG_EXPORTER_ALLOW_EMPTY_CONFIG", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub allow_empty_config: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub web: WebArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
}

/// Boolean flags that kingpin also accepts as `--no-<flag>`.
const NEGATABLE: [&str; 5] = [
    "disable-cache",
    "disable-intro",
    "auto-discovery",
    "fail-fast",
    "allow-empty-config",
];

/// Rewrites kingpin's `--no-flag` into `--flag=false`.
fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| match a.strip_prefix("--no-") {
            Some(flag) if NEGATABLE.contains(&flag) => format!("--{flag}=false"),
            _ => a,
        })
        .collect()
}

impl Cli {
    /// Parses `args` (program name first) with `flavor`'s defaults.
    pub fn parse_for(
        flavor: &Flavor,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Cli, clap::Error> {
        let matches = Cli::command_for(flavor).try_get_matches_from(normalize_args(args))?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.url_on_command_line =
            matches.value_source("url") == Some(clap::parser::ValueSource::CommandLine);
        Ok(cli)
    }

    /// The command line of `flavor`'s binary: its name, and upstream's `-P` short flag.
    pub fn command_for(flavor: &Flavor) -> clap::Command {
        Cli::command()
            .name(flavor.name)
            .mut_arg("telemetry_path", |a| {
                a.short('P').env("PG_EXPORTER_TELEMETRY_PATH")
            })
    }

    /// The URL by upstream's precedence: flag, PG_EXPORTER_URL, PGURL, PG_EXPORTER_URL_FILE,
    /// the default; `sslmode=disable` added when it names no sslmode and PGSSLMODE is unset.
    pub fn resolve_url(&self, flavor: &Flavor) -> anyhow::Result<String> {
        let url = match (
            &self.url,
            std::env::var("PGURL"),
            std::env::var("PG_EXPORTER_URL_FILE"),
        ) {
            (Some(u), _, _) if !u.is_empty() => u.clone(),
            (_, Ok(u), _) if !u.is_empty() => u,
            (_, _, Ok(file)) if !file.is_empty() => std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("PG_EXPORTER_URL_FILE {file}: {e}"))?
                .trim()
                .to_owned(),
            _ => flavor.default_url.to_owned(),
        };
        if url.contains("sslmode") || std::env::var_os("PGSSLMODE").is_some() {
            return Ok(url);
        }
        Ok(if url.contains("://") {
            if url.contains('?') {
                format!("{url}&sslmode=disable")
            } else {
                format!("{url}?sslmode=disable")
            }
        } else {
            format!("{url} sslmode=disable")
        })
    }

    fn list(s: &str) -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `--label` pairs; malformed ones are skipped with a warning, as upstream does.
    fn const_labels(&self) -> Vec<(String, String)> {
        Self::list(&self.label)
            .into_iter()
            .filter_map(|pair| match pair.split_once('=') {
                Some((k, v)) if agent_kit::exposition::is_valid_label_name(k.trim()) => {
                    Some((k.trim().to_owned(), v.trim().to_owned()))
                }
                _ => {
                    warn!(label = %pair, "Malformed --label pair skipped.");
                    None
                }
            })
            .collect()
    }
}

/// Loads the collector set: `path` if given (lenient at start-up, strict otherwise), else the
/// built-in default. A `path` defining no collector is an error unless `allow_empty`.
pub fn load_collectors(
    path: Option<&PathBuf>,
    mode: LoadMode,
    allow_empty: bool,
) -> Result<CollectorSet, config::ConfigError> {
    let Some(path) = path else {
        return crate::default_config::load();
    };
    let set = config::load(path, mode)?;
    if set.is_empty() && !allow_empty {
        return Err(config::ConfigError::Empty {
            path: path.clone(),
            directory: path.is_dir(),
        });
    }
    Ok(set)
}

/// Runs the program; returns the process exit code (1 bad flags/paths, 2 construction
/// failures, as upstream).
pub fn main(flavor: &Flavor) -> ExitCode {
    if let Some(code) = agent_kit::entry::generate_docs_if_requested(|| Cli::command_for(flavor)) {
        return code;
    }
    agent_kit::entry::run(
        Cli::parse_for(flavor, std::env::args()),
        |cli| &cli.log,
        2,
        |cli| run(flavor, cli),
    )
}

async fn run(flavor: &Flavor, cli: Cli) -> anyhow::Result<ExitCode> {
    let env = std::env::var_os(config::CONFIG_ENV);
    let candidates: Vec<&Path> = flavor.config_candidates.iter().map(Path::new).collect();
    let config_path =
        config::resolve_config_path_from(cli.config.as_deref(), env.as_deref(), &candidates);
    if let Some(p) = &config_path {
        info!(path = %p.display(), "Using config.");
    } else {
        info!("No config file found; using the built-in collector set.");
    }

    if cli.dry_run {
        return Ok(
            match load_collectors(
                config_path.as_ref(),
                LoadMode::Strict,
                cli.allow_empty_config,
            ) {
                Ok(set) => {
                    println!("{}", set.merged_yaml());
                    println!("{}", set.explain());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    error!(error = %e, "Config is invalid.");
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            },
        );
    }

    let collectors = load_collectors(
        config_path.as_ref(),
        LoadMode::Lenient,
        cli.allow_empty_config,
    )?;
    for bad in &collectors.skipped_files {
        error!(error = %bad, "Config file skipped because it is invalid.");
    }
    if collectors.is_empty() {
        warn!(
            path = %collectors.source.display(),
            "The config defines no collector; serving only the exporter's own metrics (--allow-empty-config)."
        );
    }

    let url = cli.resolve_url(flavor)?;
    let info = ConnInfo::parse(&url)
        .map_err(|e| anyhow::anyhow!("invalid URL {}: {e}", mask_password(&url)))?;
    let secrets = info.secrets_given();
    if cli.url_on_command_line && !secrets.is_empty() {
        warn!(
            secrets = %secrets.join(","),
            "A secret given in --url is visible to every local user (ps, /proc/<pid>/cmdline): \
             pass the URL in PG_EXPORTER_URL or in a file named by PG_EXPORTER_URL_FILE, or keep \
             the password in ~/.pgpass (or PGPASSFILE)."
        );
    }
    let info = info.with_env_defaults();
    info!(url = %info.masked(), "Target.");

    let pgbouncer = info.is_pgbouncer();
    let namespace = if !cli.namespace.is_empty() {
        cli.namespace.clone()
    } else if pgbouncer {
        "pgbouncer".to_owned()
    } else {
        "pg".to_owned()
    };
    let const_labels = cli.const_labels();
    if !cli.disable_intro
        && let Some((k, _)) = const_labels
            .iter()
            .find(|(k, _)| k == "datname" || k == "query")
    {
        anyhow::bail!("--label {k} clashes with the label of the exporter's own metrics");
    }
    let connect_timeout = Duration::from_millis(if cli.connect_timeout <= 0 {
        100
    } else {
        cli.connect_timeout as u64
    });
    let settings = ExporterSettings {
        namespace,
        engine: EngineSettings {
            connect_timeout,
            disable_cache: cli.disable_cache,
            const_labels,
            tags: Cli::list(&cli.tag),
        },
        disable_intro: cli.disable_intro,
        auto_discovery: cli.auto_discovery.unwrap_or(flavor.auto_discovery),
        exclude_databases: Cli::list(&cli.exclude_database),
        include_databases: Cli::list(&cli.include_database),
        discovery_connections: usize::from(cli.discovery_connections),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let exporter = Exporter::new(settings, collectors, info);

    if cli.explain {
        exporter.probe().await;
        let _ = exporter.scrape(None).await;
        println!("{}", exporter.explain());
        return Ok(ExitCode::SUCCESS);
    }
    exporter.probe().await;
    if cli.fail_fast && !exporter.health().is_up() {
        anyhow::bail!("--fail-fast: the target is not reachable at start-up");
    }

    let reserved = ROUTES
        .iter()
        .flat_map(|(paths, _)| paths.iter().copied())
        .collect::<Vec<_>>();
    cli.web
        .validate_telemetry_path(&reserved)
        .map_err(anyhow::Error::msg)?;

    let lifecycle = Lifecycle::new();
    lifecycle.listen_for_signals()?;
    let state = Arc::new(AppState::new(
        flavor.name,
        exporter.clone(),
        config_path.clone(),
        cli.allow_empty_config,
    ));
    spawn_reload_triggers(&state, &lifecycle)?;
    tokio::spawn(exporter.clone().probe_forever());

    let mut server = HttpServer::new(flavor.title, &cli.web, flavor.default_listen)
        .endpoint(&cli.web.telemetry_path, "Prometheus metrics");
    for (paths, description) in ROUTES {
        server = server.endpoint(paths[0], description);
    }
    let bound = server.bind().await?;
    bound
        .serve(router(state, &cli.web.telemetry_path), &lifecycle)
        .await?;
    info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Shared by the HTTP handlers and the reload triggers.
#[derive(Debug)]
pub struct AppState {
    /// The binary's name, for `/version`.
    pub name: &'static str,
    /// The exporter.
    pub exporter: Arc<Exporter>,
    /// The config file or directory, `None` for the built-in set.
    pub config_path: Option<PathBuf>,
    /// Whether a config without collectors is accepted (`--allow-empty-config`).
    pub allow_empty_config: bool,
    /// [`config::fingerprint`] of the config files when they were last loaded.
    loaded: std::sync::Mutex<Option<u64>>,
}

impl AppState {
    /// The state of a program whose config, from `config_path`, was just loaded.
    pub fn new(
        name: &'static str,
        exporter: Arc<Exporter>,
        config_path: Option<PathBuf>,
        allow_empty_config: bool,
    ) -> Self {
        let loaded = config_path.as_deref().map(config::fingerprint);
        AppState {
            name,
            exporter,
            config_path,
            allow_empty_config,
            loaded: std::sync::Mutex::new(loaded),
        }
    }

    /// Reloads the config strictly: any invalid file, or a config without collectors unless
    /// allowed, keeps the running config.
    pub fn reload(&self) -> Result<usize, String> {
        if let Some(path) = &self.config_path {
            *self.loaded.lock().expect("fingerprint lock") = Some(config::fingerprint(path));
        }
        self.load_and_install()
    }

    /// Reloads only if the config files' content changed since they were last loaded;
    /// `None` when unchanged.
    fn reload_if_changed(&self) -> Option<Result<usize, String>> {
        let path = self.config_path.as_deref()?;
        let now = config::fingerprint(path);
        {
            let mut loaded = self.loaded.lock().expect("fingerprint lock");
            if *loaded == Some(now) {
                return None;
            }
            *loaded = Some(now);
        }
        info!(path = %path.display(), "Config files changed; reloading.");
        Some(self.load_and_install())
    }

    fn load_and_install(&self) -> Result<usize, String> {
        match load_collectors(
            self.config_path.as_ref(),
            LoadMode::Strict,
            self.allow_empty_config,
        ) {
            Ok(set) => {
                let n = set.collectors.len();
                self.exporter.reload(set);
                Ok(n)
            }
            Err(e) => {
                error!(error = %e, "Reload rejected; the running config stays.");
                self.exporter.reload_failed();
                Err(e.to_string())
            }
        }
    }
}

/// SIGHUP and SIGUSR1 reload, as does a change of the config files' content (debounced),
/// wherever symlinks and swapped directories lead the config path.
fn spawn_reload_triggers(state: &Arc<AppState>, lifecycle: &Lifecycle) -> anyhow::Result<()> {
    let mut hup = lifecycle.subscribe_reload();
    let s = state.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_ok() {
            let _ = s.reload();
        }
    });
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let s = state.clone();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            info!(signal = "SIGUSR1", "Reload requested.");
            let _ = s.reload();
        }
    });
    if let Some(path) = state.config_path.clone() {
        let s = state.clone();
        config::watch::watch(path, CONFIG_SETTLE, move || {
            let _ = s.reload_if_changed();
        })?;
    }
    Ok(())
}

/// How long the config watcher lets a burst of file events settle before reading the files.
const CONFIG_SETTLE: Duration = Duration::from_millis(300);

/// The built-in endpoints and their aliases, as upstream serves them.
pub const ROUTES: [(&[&str], &str); 7] = [
    (
        &["/up", "/read", "/health", "/liveness", "/readiness"],
        "200 if the server is up, else 503",
    ),
    (
        &["/primary", "/leader", "/master", "/read-write", "/rw"],
        "200 primary, 404 replica, 503 down",
    ),
    (
        &["/replica", "/standby", "/slave", "/read-only", "/ro"],
        "200 replica, 404 primary, 503 down",
    ),
    (&["/reload"], "reload the config (GET or POST)"),
    (&["/explain"], "planned collectors"),
    (&["/stat"], "per-collector statistics"),
    (&["/version"], "version"),
];

/// The HTTP routes (without the landing page and auth, which the serving kit adds).
pub fn router(state: Arc<AppState>, telemetry_path: &str) -> Router {
    let mut router = Router::new().route(telemetry_path, get(metrics));
    for path in ROUTES[0].0 {
        router = router.route(path, any(health_up));
    }
    for path in ROUTES[1].0 {
        router = router.route(path, any(health_primary));
    }
    for path in ROUTES[2].0 {
        router = router.route(path, any(health_replica));
    }
    router
        .route("/reload", any(reload))
        .route("/explain", any(explain))
        .route("/stat", any(stat))
        .route("/version", any(version))
        .with_state(state)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// The scraper's timeout, less a margin so the answer arrives before it gives up.
fn scrape_deadline(headers: &HeaderMap) -> Option<Instant> {
    let secs: f64 = headers
        .get("x-prometheus-scrape-timeout-seconds")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !secs.is_finite() || secs <= 0.0 {
        return None;
    }
    let margin = (secs * 0.1).min(0.5);
    Some(Instant::now() + Duration::from_secs_f64((secs - margin).max(0.05)))
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let exposition = state
        .exporter
        .scrape_exposition(scrape_deadline(&headers))
        .await;
    metrics_response_stream(exposition, &headers)
}

async fn health_up(State(state): State<Arc<AppState>>) -> Response {
    let h = state.exporter.health();
    text(
        if h.is_up() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        h.word(),
    )
}

fn role_status(state: &AppState, want: Health) -> Response {
    // Pgbouncer is never in recovery, so it reports "primary" when up, as upstream.
    let h = state.exporter.health();
    let status = match h {
        _ if !h.is_up() => StatusCode::SERVICE_UNAVAILABLE,
        h if h == want => StatusCode::OK,
        _ => StatusCode::NOT_FOUND,
    };
    text(status, h.word())
}

async fn health_primary(State(state): State<Arc<AppState>>) -> Response {
    role_status(&state, Health::Primary)
}

async fn health_replica(State(state): State<Arc<AppState>>) -> Response {
    role_status(&state, Health::Replica)
}

async fn reload(State(state): State<Arc<AppState>>, method: Method) -> Response {
    if method != Method::GET && method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, POST")],
            "method not allowed\n",
        )
            .into_response();
    }
    match state.reload() {
        Ok(_) => text(StatusCode::OK, "server reloaded\n"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("fail to reload: {e}\n"),
        ),
    }
}

async fn explain(State(state): State<Arc<AppState>>) -> Response {
    let body = state.exporter.explain();
    if body.is_empty() {
        text(StatusCode::SERVICE_UNAVAILABLE, "exporter unavailable\n")
    } else {
        text(StatusCode::OK, body)
    }
}

async fn stat(State(state): State<Arc<AppState>>) -> Response {
    text(StatusCode::OK, state.exporter.stat_table())
}

async fn version(State(state): State<Arc<AppState>>) -> Response {
    text(
        StatusCode::OK,
        format!(
            "{}, version {} (rust, {} {})\n",
            state.name,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG: Flavor = Flavor {
        name: "pg_exporter",
        title: "PG Exporter",
        default_listen: ":9630",
        default_url: "postgresql:///?sslmode=disable",
        auto_discovery: true,
        config_candidates: &[],
    };

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["pg_exporter".to_owned()];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        Cli::parse_for(&PG, v).unwrap()
    }

    #[test]
    fn kingpin_style_booleans() {
        assert!(parse(&["--disable-cache"]).disable_cache);
        assert!(!parse(&["--disable-cache=false"]).disable_cache);
        assert_eq!(parse(&["--no-auto-discovery"]).auto_discovery, Some(false));
        assert_eq!(parse(&["-a"]).auto_discovery, Some(true));
        assert_eq!(parse(&[]).auto_discovery, None);
        assert!(parse(&["-f"]).fail_fast);
    }

    #[test]
    fn short_flags_and_lists() {
        let cli = parse(&[
            "-u",
            "postgres://u:p@h/db",
            "-t",
            "a, b,",
            "-l",
            "cls=pg-test,bad,ins=x",
            "-P",
            "/m",
        ]);
        assert_eq!(cli.url.as_deref(), Some("postgres://u:p@h/db"));
        assert_eq!(Cli::list(&cli.tag), vec!["a", "b"]);
        assert_eq!(
            cli.const_labels(),
            vec![
                ("cls".to_owned(), "pg-test".to_owned()),
                ("ins".to_owned(), "x".to_owned())
            ]
        );
        assert_eq!(cli.web.telemetry_path, "/m");
        assert_eq!(cli.connect_timeout, 100);
    }

    #[test]
    fn sslmode_disable_is_added_like_upstream() {
        let cli = parse(&["--url", "postgres://h/db"]);
        if std::env::var_os("PGSSLMODE").is_none() && std::env::var_os("PGURL").is_none() {
            assert_eq!(
                cli.resolve_url(&PG).unwrap(),
                "postgres://h/db?sslmode=disable"
            );
            let cli = parse(&["--url", "host=/tmp dbname=x"]);
            assert_eq!(
                cli.resolve_url(&PG).unwrap(),
                "host=/tmp dbname=x sslmode=disable"
            );
            let cli = parse(&["--url", "postgres://h/db?sslmode=require"]);
            assert_eq!(
                cli.resolve_url(&PG).unwrap(),
                "postgres://h/db?sslmode=require"
            );
        }
    }

    #[test]
    fn url_source_is_recorded() {
        assert!(parse(&["--url", "postgres://u:p@h/db"]).url_on_command_line);
        assert!(!parse(&[]).url_on_command_line);
        assert!(parse(&["--allow-empty-config"]).allow_empty_config);
        assert!(!parse(&["--no-allow-empty-config"]).allow_empty_config);
    }

    #[test]
    fn scrape_timeout_header_leaves_a_margin() {
        let mut h = HeaderMap::new();
        assert!(scrape_deadline(&h).is_none());
        h.insert("x-prometheus-scrape-timeout-seconds", "10".parse().unwrap());
        let d = scrape_deadline(&h).unwrap().duration_since(Instant::now());
        assert!(
            d > Duration::from_millis(9400) && d <= Duration::from_millis(9500),
            "{d:?}"
        );
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            "junk".parse().unwrap(),
        );
        assert!(scrape_deadline(&h).is_none());
    }
}
