//! Connecting: hosts, passwords, TLS attempts per `sslmode`, `target_session_attrs`.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::config::{
    ChannelBinding, LoadBalanceHosts, SslMode as PgSslMode, SslNegotiation,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, CancelToken, Client, Config};

use crate::connection::{Canceller, DbConnection, LastNotice, Protocol};

use super::tls::{TlsConnector, TlsSettings, Verify};
use super::{ConnInfo, ConnInfoError, SslMode, parse_int, parse_port, pgpass};

/// libpq's default port.
const DEFAULT_PORT: u16 = 5432;

/// Where libpq builds put the default unix socket: Debian and PGDG (`/var/run/postgresql`,
/// `/run/postgresql`) and upstream (`/tmp`). With no host, the first of these holding the
/// port's socket is used (else the first); a socket in one of them is host `localhost` for the
/// password file.
const DEFAULT_SOCKET_DIRS: [&str; 3] = ["/var/run/postgresql", "/run/postgresql", "/tmp"];

/// libpq's minimum `connect_timeout`: 1 second is raised to 2.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The spawned connection of a client returned by [`ConnInfo::connect`]: it runs until the
/// client is dropped or the server goes away. Dropping this handle does not stop it.
#[derive(Debug)]
pub struct ConnectionTask {
    handle: JoinHandle<Result<(), tokio_postgres::Error>>,
    target: String,
    tls: bool,
    cancel_tls: TlsConnector,
    notice: LastNotice,
}

impl ConnectionTask {
    /// The server connected to, as libpq names it (`at "127.0.0.1", port 5432` or
    /// `on socket "/tmp/.s.PGSQL.5432"`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the connection uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls
    }

    /// A TLS connector for `client.cancel_token().cancel_query(…)`, with the connection's
    /// TLS settings.
    pub fn cancel_tls(&self) -> TlsConnector {
        self.cancel_tls.fresh()
    }

    /// The last NOTICE the server sent on this connection (the task keeps the latest one).
    pub fn last_notice(&self) -> LastNotice {
        self.notice.clone()
    }

    /// Whether the connection has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Closes the connection now (the client's requests then fail).
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// Waits for the connection to end; the error that ended it, if any.
    pub async fn wait(self) -> Result<(), tokio_postgres::Error> {
        match self.handle.await {
            Ok(result) => result,
            // Aborted or panicked: the connection is gone either way.
            Err(_) => Ok(()),
        }
    }
}

/// One host to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) endpoint: Endpoint,
    pub(super) port: u16,
    /// The host as the password file matches it.
    pub(super) pgpass_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// A unix socket directory.
    Unix(PathBuf),
    /// A TCP host name (also the TLS server name), and the address to use instead of
    /// resolving it (`hostaddr`). Without `host`, `host` is `hostaddr`'s address and not
    /// `named`: `verify-full` then has no host name to check, as in libpq.
    Tcp {
        host: String,
        addr: Option<IpAddr>,
        named: bool,
    },
}

impl Target {
    /// As libpq names a server in its messages.
    pub(super) fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(dir) => {
                format!("on socket \"{}/.s.PGSQL.{}\"", dir.display(), self.port)
            }
            Endpoint::Tcp {
                host,
                addr: Some(addr),
                ..
            } if *host != addr.to_string() => {
                format!("at \"{host}\" ({addr}), port {}", self.port)
            }
            Endpoint::Tcp { host, .. } => format!("at \"{host}\", port {}", self.port),
        }
    }
}

/// How the TLS part of one attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Plain,
    TlsPreferred,
    TlsRequired,
}

/// `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

/// Everything resolved once per [`ConnInfo::connect`].
#[derive(Debug)]
struct Plan {
    user: String,
    dbname: String,
    password: Option<String>,
    passfile: PathBuf,
    mode: SslMode,
    connect_timeout: Option<Duration>,
    attrs: SessionAttrs,
    tls: TlsConnector,
    base: Config,
}

impl ConnInfo {
    /// Connects to the first host that accepts (in order, or shuffled with
    /// `load_balance_hosts=random`), spawns the connection on the tokio runtime and returns
    /// the client with the spawned connection's handle.
    ///
    /// - The password is the `password` keyword (or `PGPASSWORD` after
    ///   [`with_env_defaults`](Self::with_env_defaults)), else the password file's
    ///   (`passfile`, `PGPASSFILE`, else `~/.pgpass`; libpq's matching rules; ignored with a
    ///   warning when the group or others may read it).
    /// - The user defaults to the OS user name, the database to the user name, the host to
    ///   the default unix socket directory, the port to 5432.
    /// - A `host` starting with `/` is a unix socket directory; sockets never use TLS.
    /// - TLS follows [`SslMode`]; `connect_timeout` bounds each host's attempt (minimum 2 s,
    ///   as libpq), and `timeout` (unless zero) the whole call.
    pub async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<(Client, ConnectionTask), ConnInfoError> {
        let connect = self.connect_inner();
        if timeout.is_zero() {
            return connect.await;
        }
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or(Err(ConnInfoError::Timeout(timeout)))
    }

    /// [`connect`](Self::connect), wrapped for the collectors: a [`DbConnection`] speaking
    /// `protocol`, whose canceller sends cancel requests with this connection's TLS settings
    /// (each bounded by `timeout` too; a failed cancel is logged at debug level).
    pub async fn connect_db(
        &self,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<DbConnection, ConnInfoError> {
        let (client, task) = self.connect(timeout).await?;
        let notice = task.last_notice();
        let tls = task.cancel_tls();
        let target = task.target().to_owned();
        let canceller: Canceller = Arc::new(move |token: CancelToken| {
            let (tls, target) = (tls.fresh(), target.clone());
            Box::pin(async move {
                let cancel = token.cancel_query(tls);
                let result = if timeout.is_zero() {
                    cancel.await.map_err(|e| error_chain(&e))
                } else {
                    match tokio::time::timeout(timeout, cancel).await {
                        Ok(result) => result.map_err(|e| error_chain(&e)),
                        Err(_) => Err(format!("timeout expired after {timeout:?}")),
                    }
                };
                if let Err(e) = result {
                    tracing::debug!("cancel request to server {target} failed: {e}");
                }
            })
        });
        Ok(DbConnection::new(client, protocol, canceller).with_notices(notice))
    }

    async fn connect_inner(&self) -> Result<(Client, ConnectionTask), ConnInfoError> {
        self.validate()?;
        let plan = self.plan()?;
        let mut targets = self.targets()?;
        if self.get("load_balance_hosts") == Some("random") {
            shuffle(&mut targets);
        }
        let passes: &[SessionAttrs] = match plan.attrs {
            SessionAttrs::PreferStandby => &[SessionAttrs::Standby, SessionAttrs::Any],
            attrs => &[attrs][..],
        };
        let passes: Vec<SessionAttrs> = passes.to_vec();
        let mut errors = Vec::new();
        for attrs in passes {
            for target in &targets {
                match self.connect_target(&plan, target, attrs).await {
                    Ok(connected) => return Ok(connected),
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        Err(if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConnInfoError::AllFailed(errors)
        })
    }

    /// Tries one host: one or two attempts depending on `sslmode`.
    async fn connect_target(
        &self,
        plan: &Plan,
        target: &Target,
        attrs: SessionAttrs,
    ) -> Result<(Client, ConnectionTask), Vec<ConnInfoError>> {
        let steps: &[Step] = match (&target.endpoint, plan.mode) {
            (Endpoint::Unix(_), _) | (_, SslMode::Disable) => &[Step::Plain],
            (_, SslMode::Allow) => &[Step::Plain, Step::TlsRequired],
            (_, SslMode::Prefer) => &[Step::TlsPreferred, Step::Plain],
            _ => &[Step::TlsRequired],
        };
        let (password, from_file) = self.password_for(plan, target);
        let mut errors = Vec::new();
        for (i, &step) in steps.iter().enumerate() {
            let tls = match &target.endpoint {
                Endpoint::Tcp { named: false, .. } => plan.tls.fresh().without_host_name(),
                _ => plan.tls.fresh(),
            };
            let describe = |reason: String, error: Option<tokio_postgres::Error>| {
                let mut target = target.describe();
                if steps.len() > 1 {
                    target.push_str(if step == Step::Plain {
                        " (without TLS)"
                    } else {
                        " (with TLS)"
                    });
                }
                ConnInfoError::Connect {
                    target,
                    reason,
                    error,
                }
            };
            match self
                .attempt(plan, target, step, password.as_deref(), &tls, attrs)
                .await
            {
                Ok(connected) => return Ok(connected),
                Err(Failure::Driver(e)) => {
                    // libpq's retries: `prefer` again without TLS after any failure with TLS,
                    // `allow` again with TLS when the server refused the plain connection. Not
                    // after refusing a certificate libpq might have accepted: that would go
                    // without TLS where libpq goes with it.
                    let retry = match step {
                        Step::TlsPreferred => tls.attempted() && !tls.unsupported(),
                        Step::Plain => e.as_db_error().is_some(),
                        Step::TlsRequired => false,
                    };
                    let mut reason = error_chain(&e);
                    if step == Step::TlsPreferred && tls.unsupported() {
                        reason.push_str("; not retried without TLS (sslmode=prefer)");
                    }
                    if let Some(file) = &from_file
                        && e.code() == Some(&SqlState::INVALID_PASSWORD)
                    {
                        reason.push_str(&format!(
                            " (password retrieved from file \"{}\")",
                            file.display()
                        ));
                    }
                    errors.push(describe(reason, Some(e)));
                    if !retry || i + 1 == steps.len() {
                        break;
                    }
                }
                Err(Failure::Other(reason)) => {
                    errors.push(describe(reason, None));
                    break;
                }
            }
        }
        Err(errors)
    }

    async fn attempt(
        &self,
        plan: &Plan,
        target: &Target,
        step: Step,
        password: Option<&str>,
        tls: &TlsConnector,
        attrs: SessionAttrs,
    ) -> Result<(Client, ConnectionTask), Failure> {
        let mut config = plan.base.clone();
        match &target.endpoint {
            Endpoint::Unix(dir) => {
                config.host_path(dir);
            }
            Endpoint::Tcp { host, addr, .. } => {
                config.host(host);
                if let Some(addr) = addr {
                    config.hostaddr(*addr);
                }
            }
        }
        config.port(target.port).ssl_mode(match step {
            Step::Plain => PgSslMode::Disable,
            Step::TlsPreferred => PgSslMode::Prefer,
            Step::TlsRequired => PgSslMode::Require,
        });
        if let Some(password) = password {
            config.password(password);
        }
        let connect = config.connect(tls.clone());
        let (client, connection) = match plan.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect)
                .await
                .map_err(|_| Failure::Other(format!("timeout expired after {limit:?}")))?,
            None => connect.await,
        }
        .map_err(Failure::Driver)?;
        let describe = target.describe();
        let logged = describe.clone();
        let notice = LastNotice::default();
        let kept = notice.clone();
        let handle = tokio::spawn(async move {
            // Driven message by message (as its `Future` does) to keep NOTICEs: Pgbouncer
            // before 1.12 answers `SHOW VERSION` with one.
            let mut connection = connection;
            let result = loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notice(n))) => {
                        tracing::debug!("server {logged}: {}: {}", n.severity(), n.message());
                        kept.set(n.message().to_owned());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                }
            };
            if let Err(e) = &result {
                tracing::debug!("connection to server {logged} ended: {e}");
            }
            result
        });
        let task = ConnectionTask {
            handle,
            target: describe,
            tls: tls.established(),
            cancel_tls: tls.fresh(),
            notice,
        };
        if let Err(e) = check_session_attrs(&client, attrs).await {
            task.abort();
            return Err(e);
        }
        Ok((client, task))
    }

    /// The password for `target` and, when it came from the password file, the file.
    fn password_for(&self, plan: &Plan, target: &Target) -> (Option<String>, Option<PathBuf>) {
        if let Some(password) = &plan.password {
            return (Some(password.clone()), None);
        }
        let query = pgpass::Query {
            host: &target.pgpass_host,
            port: &target.port.to_string(),
            dbname: &plan.dbname,
            user: &plan.user,
        };
        match pgpass::lookup(&plan.passfile, query) {
            Some(password) => (Some(password), Some(plan.passfile.clone())),
            None => (None, None),
        }
    }

    fn plan(&self) -> Result<Plan, ConnInfoError> {
        let user = match self.user() {
            Some(user) => user.to_owned(),
            None => os_user_name().ok_or_else(|| {
                ConnInfoError::Config(
                    "cannot determine the local user name: set user= (or PGUSER)".to_owned(),
                )
            })?,
        };
        let dbname = self.dbname().unwrap_or(&user).to_owned();
        let password = self
            .values
            .get("password")
            .filter(|p| !p.is_empty())
            .cloned();
        let passfile = match self.get("passfile").filter(|p| !p.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => self.home_dir().unwrap_or_default().join(".pgpass"),
        };
        let connect_timeout = self
            .int("connect_timeout")?
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t.unsigned_abs()).max(MIN_CONNECT_TIMEOUT));
        let attrs = match self.get("target_session_attrs").unwrap_or("") {
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            _ => SessionAttrs::Any,
        };

        let mut base = Config::new();
        base.user(&user).dbname(&dbname);
        if let Some(options) = self.get("options").filter(|o| !o.is_empty()) {
            base.options(options);
        }
        if let Some(name) = self
            .get("application_name")
            .filter(|n| !n.is_empty())
            .or_else(|| {
                self.get("fallback_application_name")
                    .filter(|n| !n.is_empty())
            })
        {
            base.application_name(name);
        }
        if let Some(limit) = connect_timeout {
            base.connect_timeout(limit);
        }
        if let Some(on) = self.int("keepalives")? {
            base.keepalives(on != 0);
        }
        if let Some(secs) = self.int("keepalives_idle")?.filter(|s| *s > 0) {
            base.keepalives_idle(Duration::from_secs(secs.unsigned_abs()));
        }
        if let Some(secs) = self.int("keepalives_interval")?.filter(|s| *s > 0) {
            base.keepalives_interval(Duration::from_secs(secs.unsigned_abs()));
        }
        if let Some(count) = self.int("keepalives_count")?.filter(|c| *c > 0) {
            base.keepalives_retries(u32::try_from(count).unwrap_or(u32::MAX));
        }
        if let Some(ms) = self.int("tcp_user_timeout")?.filter(|m| *m > 0) {
            base.tcp_user_timeout(Duration::from_millis(ms.unsigned_abs()));
        }
        base.channel_binding(match self.get("channel_binding") {
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            _ => ChannelBinding::Prefer,
        });
        if self.get("sslnegotiation") == Some("direct") {
            base.ssl_negotiation(SslNegotiation::Direct);
        }
        if self.get("load_balance_hosts") == Some("random") {
            base.load_balance_hosts(LoadBalanceHosts::Random);
        }

        let mode = self.sslmode()?;
        Ok(Plan {
            user,
            dbname,
            password,
            passfile,
            mode,
            connect_timeout,
            attrs,
            tls: self.tls_connector()?,
            base,
        })
    }

    fn int(&self, name: &'static str) -> Result<Option<i64>, ConnInfoError> {
        match self.get(name) {
            Some(value) => parse_int(name, value),
            None => Ok(None),
        }
    }

    /// The hosts to try, in order, from `host`, `hostaddr` and `port` (libpq's rules for
    /// comma-separated lists).
    pub(super) fn targets(&self) -> Result<Vec<Target>, ConnInfoError> {
        let list = |name| -> Vec<&str> {
            match self.get(name) {
                Some(v) if !v.is_empty() => v.split(',').collect(),
                _ => Vec::new(),
            }
        };
        let (hosts, addrs, ports) = (list("host"), list("hostaddr"), list("port"));
        let n = if addrs.is_empty() {
            hosts.len().max(1)
        } else {
            if !hosts.is_empty() && hosts.len() != addrs.len() {
                return Err(ConnInfoError::Config(format!(
                    "could not match {} host names to {} hostaddr values",
                    hosts.len(),
                    addrs.len()
                )));
            }
            addrs.len()
        };
        if ports.len() > 1 && ports.len() != n {
            return Err(ConnInfoError::Config(format!(
                "could not match {} port numbers to {n} hosts",
                ports.len()
            )));
        }
        (0..n)
            .map(|i| {
                let host = hosts.get(i).copied().unwrap_or("");
                let port = match ports.get(i).or(ports.first()).copied().unwrap_or("") {
                    "" => DEFAULT_PORT,
                    p => parse_port(p)?,
                };
                let addr = match addrs.get(i).copied().unwrap_or("") {
                    "" => None,
                    a => Some(a.parse::<IpAddr>().map_err(|_| {
                        super::invalid("hostaddr", a, "a numeric IPv4 or IPv6 address")
                    })?),
                };
                Ok(target(host, addr, port))
            })
            .collect()
    }

    /// The TLS connector for the effective `sslmode` (none for `disable`).
    pub(super) fn tls_connector(&self) -> Result<TlsConnector, ConnInfoError> {
        let settings = self.tls_settings()?;
        Ok(TlsConnector::new(settings.map(|s| s.client()).transpose()?))
    }

    /// libpq's TLS file rules for the effective `sslmode`, or `None` for `disable`.
    pub(super) fn tls_settings(&self) -> Result<Option<TlsSettings>, ConnInfoError> {
        let mode = self.sslmode()?;
        if mode == SslMode::Disable {
            return Ok(None);
        }
        let home_file = |name: &str| self.home_dir().map(|h| h.join(".postgresql").join(name));
        let set = |name| self.get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let system = self.get("sslrootcert") == Some("system");
        let root_cert = if system {
            None
        } else {
            set("sslrootcert").or_else(|| home_file("root.crt"))
        };
        let root_exists = system || root_cert.as_deref().is_some_and(Path::exists);
        let verify = match mode {
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            _ if root_exists => Verify::Chain,
            _ => Verify::Nothing,
        };
        if verify != Verify::Nothing && !root_exists {
            return Err(match root_cert {
                Some(path) => ConnInfoError::File {
                    what: "root certificate file",
                    path,
                    reason: format!(
                        "does not exist; either provide the file, use the system's trusted \
                         roots with sslrootcert=system, or change sslmode (now \"{mode}\") to \
                         disable server certificate verification"
                    ),
                },
                None => ConnInfoError::Config(format!(
                    "sslmode={mode} needs a root certificate file: set sslrootcert (no home \
                     directory for ~/.postgresql/root.crt)"
                )),
            });
        }
        let existing = |p: Option<PathBuf>| p.filter(|p| p.exists());
        // As libpq: sslcrl and sslcrldir as set; ~/.postgresql/root.crl when neither is.
        let crl_dir = set("sslcrldir");
        let crl = match set("sslcrl") {
            Some(file) => Some((file, true)),
            None if crl_dir.is_none() => home_file("root.crl").map(|file| (file, false)),
            None => None,
        };
        let client_cert = if self.get("sslcertmode") == Some("disable") {
            None
        } else {
            match existing(set("sslcert").or_else(|| home_file("postgresql.crt"))) {
                None => None,
                Some(cert) => {
                    let key = set("sslkey")
                        .or_else(|| home_file("postgresql.key"))
                        .unwrap_or_else(|| cert.with_extension("key"));
                    if !key.exists() {
                        return Err(ConnInfoError::File {
                            what: "private key file",
                            path: key,
                            reason: format!(
                                "does not exist, but certificate \"{}\" is present",
                                cert.display()
                            ),
                        });
                    }
                    Some((cert, key))
                }
            }
        };
        let min = self.tls_version("ssl_min_protocol_version")?.unwrap_or(2);
        let max = self.tls_version("ssl_max_protocol_version")?.unwrap_or(3);
        if max < 2 {
            return Err(ConnInfoError::Config(
                "ssl_max_protocol_version is below TLSv1.2, the oldest version available"
                    .to_owned(),
            ));
        }
        let sni = self
            .get("sslsni")
            .filter(|v| !v.is_empty())
            .is_none_or(|v| v.starts_with('1'));
        Ok(Some(TlsSettings {
            verify,
            root_cert,
            crl: crl.filter(|_| verify != Verify::Nothing),
            crl_dir: crl_dir.filter(|_| verify != Verify::Nothing),
            client_cert,
            sni,
            tls12: min <= 2,
            tls13: max >= 3,
        }))
    }

    /// `HOME` from [`with_env_from`](Self::with_env_from), else the process's, else the
    /// password database's.
    fn home_dir(&self) -> Option<PathBuf> {
        self.home
            .clone()
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| passwd_entry().map(|(_, home)| PathBuf::from(home)))
    }
}

/// `error` and its sources, `: `-separated (tokio-postgres's `Display` shows only the kind
/// of error, e.g. "db error", and keeps the server's message in the source).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    Driver(tokio_postgres::Error),
    Other(String),
}

fn target(host: &str, addr: Option<IpAddr>, port: u16) -> Target {
    let is_socket = host.starts_with('/');
    if let Some(addr) = addr {
        let name = if host.is_empty() || is_socket {
            addr.to_string()
        } else {
            host.to_owned()
        };
        let pgpass_host = if host.is_empty() {
            addr.to_string()
        } else {
            host.to_owned()
        };
        return Target {
            endpoint: Endpoint::Tcp {
                host: name,
                addr: Some(addr),
                named: !host.is_empty() && !is_socket,
            },
            port,
            pgpass_host,
        };
    }
    if host.is_empty() {
        return Target {
            endpoint: Endpoint::Unix(default_socket_dir(port)),
            port,
            pgpass_host: "localhost".to_owned(),
        };
    }
    if is_socket {
        let trimmed = if host.len() > 1 {
            host.trim_end_matches('/')
        } else {
            host
        };
        let pgpass_host = if DEFAULT_SOCKET_DIRS.contains(&trimmed) {
            "localhost"
        } else {
            host
        };
        return Target {
            endpoint: Endpoint::Unix(PathBuf::from(host)),
            port,
            pgpass_host: pgpass_host.to_owned(),
        };
    }
    Target {
        endpoint: Endpoint::Tcp {
            host: host.to_owned(),
            addr: None,
            named: true,
        },
        port,
        pgpass_host: host.to_owned(),
    }
}

/// The default socket directory for `port`: the first of [`DEFAULT_SOCKET_DIRS`] holding
/// the socket, else the first.
fn default_socket_dir(port: u16) -> PathBuf {
    DEFAULT_SOCKET_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join(format!(".s.PGSQL.{port}")).exists())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIRS[0]))
}

/// Checks `target_session_attrs` as libpq does, on a fresh connection.
async fn check_session_attrs(client: &Client, attrs: SessionAttrs) -> Result<(), Failure> {
    let (sql, want, refusal) = match attrs {
        SessionAttrs::Any | SessionAttrs::PreferStandby => return Ok(()),
        SessionAttrs::ReadWrite => ("SHOW transaction_read_only", "off", "session is read-only"),
        SessionAttrs::ReadOnly => (
            "SHOW transaction_read_only",
            "on",
            "session is not read-only",
        ),
        SessionAttrs::Primary => (
            "SELECT pg_catalog.pg_is_in_recovery()",
            "f",
            "server is in hot standby mode",
        ),
        SessionAttrs::Standby => (
            "SELECT pg_catalog.pg_is_in_recovery()",
            "t",
            "server is not in hot standby mode",
        ),
    };
    let messages = client.simple_query(sql).await.map_err(Failure::Driver)?;
    let value = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    if value.as_deref() == Some(want) {
        Ok(())
    } else {
        Err(Failure::Other(refusal.to_owned()))
    }
}

/// Shuffles `items` (Fisher–Yates with the standard library's random hash keys).
fn shuffle<T>(items: &mut [T]) {
    let state = RandomState::new();
    for i in (1..items.len()).rev() {
        let mut hasher = state.build_hasher();
        hasher.write_usize(i);
        let j = (hasher.finish() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The OS user name, as libpq's default `user`: the password database's name of the
/// effective user ID, else `USER` or `LOGNAME` (users only known to NSS, e.g. LDAP).
pub(super) fn os_user_name() -> Option<String> {
    passwd_entry()
        .map(|(name, _)| name)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
}

/// The effective user ID (Linux: `/proc/self/status`).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `(name, home)` of the effective user in `/etc/passwd`.
fn passwd_entry() -> Option<(String, String)> {
    let uid = effective_uid()?.to_string();
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2] == uid)
            .then(|| (fields[0].to_owned(), fields[5].to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(s: &str) -> Result<Vec<Target>, ConnInfoError> {
        ConnInfo::parse_unchecked(s).unwrap().targets()
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target {
            endpoint: Endpoint::Tcp {
                host: host.to_owned(),
                addr: None,
                named: true,
            },
            port,
            pgpass_host: host.to_owned(),
        }
    }

    #[test]
    fn host_and_port_lists() {
        assert_eq!(targets("host=h port=1").unwrap(), vec![tcp("h", 1)]);
        assert_eq!(
            targets("host=a,b port=7").unwrap(),
            vec![tcp("a", 7), tcp("b", 7)]
        );
        assert_eq!(
            targets("host=a,b port=7,").unwrap(),
            vec![tcp("a", 7), tcp("b", 5432)]
        );
        assert_eq!(
            targets("postgresql://h1:5432,[::1]:5433/db").unwrap(),
            vec![tcp("h1", 5432), tcp("::1", 5433)]
        );
        let err = targets("host=a,b,c port=1,2").unwrap_err().to_string();
        assert_eq!(err, "could not match 2 port numbers to 3 hosts");
        let err = targets("host=a,b hostaddr=127.0.0.1")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "could not match 2 host names to 1 hostaddr values");
        assert!(
            targets("port=0").is_err()
                && targets("port=x").is_err()
                && targets("port=70000").is_err()
        );
    }

    #[test]
    fn sockets_and_hostaddr() {
        let t = targets("host=/var/run/postgresql/ port=6432").unwrap();
        assert_eq!(t[0].endpoint, Endpoint::Unix("/var/run/postgresql/".into()));
        assert_eq!(t[0].pgpass_host, "localhost");
        assert_eq!(
            t[0].describe(),
            "on socket \"/var/run/postgresql//.s.PGSQL.6432\""
        );
        let t = targets("host=/srv/pg").unwrap();
        assert_eq!(t[0].pgpass_host, "/srv/pg");
        let t = targets("port=6543").unwrap();
        assert!(
            matches!(&t[0].endpoint, Endpoint::Unix(dir) if DEFAULT_SOCKET_DIRS.iter().any(|d| dir == Path::new(d)))
        );
        assert_eq!(t[0].pgpass_host, "localhost");
        let t = targets("hostaddr=10.0.0.1 port=1").unwrap();
        assert_eq!(
            t[0].endpoint,
            Endpoint::Tcp {
                host: "10.0.0.1".into(),
                addr: Some("10.0.0.1".parse().unwrap()),
                named: false,
            }
        );
        assert_eq!(t[0].pgpass_host, "10.0.0.1");
        assert_eq!(t[0].describe(), "at \"10.0.0.1\", port 1");
        let t = targets("host=db.example hostaddr=10.0.0.1").unwrap();
        assert_eq!(t[0].describe(), "at \"db.example\" (10.0.0.1), port 5432");
        assert_eq!(t[0].pgpass_host, "db.example");
        assert!(targets("hostaddr=db.example").is_err());
    }

    #[test]
    fn shuffle_keeps_items() {
        let mut v: Vec<u32> = (0..20).collect();
        shuffle(&mut v);
        v.sort_unstable();
        assert_eq!(v, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn os_user_is_known() {
        assert!(os_user_name().is_some_and(|u| !u.is_empty()));
    }
}
