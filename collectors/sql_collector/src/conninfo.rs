//! PostgreSQL connection strings and connections, as libpq users write them.
//!
//! tokio-postgres's own `Config` parser lacks much of libpq (`sslmode=verify-ca|verify-full`,
//! `sslrootcert`, the `PG*` environment variables, `~/.pgpass`, …). [`ConnInfo`] parses both
//! libpq syntaxes and connects with libpq's rules:
//!
//! - URLs: `postgres://user:pass@host:5432/db?sslmode=disable`, `postgresql://` too, with
//!   percent-decoding, several hosts (`h1:5432,h2:5433`), IPv6 (`[::1]`), an empty host meaning
//!   the default unix socket, and any keyword as a query parameter, e.g. Pigsty's
//!   `postgres://dbuser_monitor@:5432/postgres?host=/var/run/postgresql&sslmode=disable`;
//! - `key=value` strings: `host=/tmp port=5432 user=x dbname='my db'`, with quotes and
//!   backslash escapes.
//!
//! Unknown keywords are errors naming the keyword (as in libpq). Keywords libpq knows but that
//! have no effect here (`client_encoding`, `gsslib`, `krbsrvname`, `sslcompression`, …) are
//! accepted and ignored; a few whose silent omission would weaken security (`requirepeer`,
//! `require_auth`, `service`, `gssencmode=require`, …) are refused when set.
//!
//! [`ConnInfo::with_env_defaults`] fills unset keywords from `PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT`, `PGAPPNAME`,
//! `PGPASSFILE`, `PGTARGETSESSIONATTRS`, … like libpq. [`ConnInfo::connect`] then resolves the
//! password (explicit, else the password file), the default user (the OS user), database
//! (the user name) and socket directory, TLS per `sslmode` (see [`SslMode`]), and connects.
//!
//! Nothing here ever prints a password: [`ConnInfo`]'s `Debug` and `Display`,
//! [`ConnInfo::masked`] and every [`ConnInfoError`] mask or omit it.
//!
//! Unlike the Go pg_exporter, this module does not add `sslmode=disable` to a URL without
//! `sslmode` (libpq's default `prefer` applies); the binary decides, see
//! [`ConnInfo::has_sslmode`].

mod certificate;
mod connect;
mod crl;
mod der;
mod keywords;
mod parse;
mod pgpass;
mod signature;
mod tls;
mod trust;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use agent_kit::redact::{MASK, mask_password};

pub use connect::ConnectionTask;
pub use tls::{PgTlsStream, TlsConnector, TlsHandshake};

use keywords::{KEYWORDS, Support};
use parse::Form;

/// A parsed libpq connection string: the keywords it sets (and, after
/// [`with_env_defaults`](Self::with_env_defaults), those the environment sets), plus the text
/// as written, for display.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The connection string as written (trimmed), with the database name rewritten by
    /// [`with_dbname`](Self::with_dbname). Only ever shown through `mask_password`.
    raw: String,
    form: Form,
    /// Keyword → value, for the keywords that are set (possibly to an empty string, which
    /// libpq mostly treats as "use the default" but which stops the environment default).
    values: BTreeMap<&'static str, String>,
    /// `HOME` as seen by [`with_env_from`](Self::with_env_from), for `~/.pgpass` and
    /// `~/.postgresql/`; the process's `HOME` when `None`.
    home: Option<PathBuf>,
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Plain first; TLS only if the server rejects the plain connection.
    Allow,
    /// TLS if the server offers it, else plain; also plain again if the TLS attempt fails
    /// (handshake or authentication), as libpq does, except after refusing a server
    /// certificate for a reason libpq might not have (something we cannot check as it does):
    /// never plain where libpq would use TLS. The certificate is checked as for
    /// [`SslMode::Require`]. The default.
    Prefer,
    /// TLS, without checking the server certificate, unless a root certificate file exists
    /// (`sslrootcert`, or `~/.postgresql/root.crt`): then as [`SslMode::VerifyCa`].
    Require,
    /// TLS, the server certificate chain checked against `sslrootcert`, any host name.
    VerifyCa,
    /// TLS, the chain checked and the host as written (name or IP address) matched against the
    /// certificate's subject alternative names, or its Common Name when it has none of the
    /// host's kind; `hostaddr` without `host` leaves no name to match and is refused.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(invalid(
                    "sslmode",
                    s,
                    "disable, allow, prefer, require, verify-ca or verify-full",
                ));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection string is invalid or a connection failed. No message ever contains a
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnInfoError {
    /// A malformed `postgres://` URL.
    #[error("invalid connection URL: {0}")]
    Url(String),
    /// A malformed `key=value` string.
    #[error("invalid connection string: {0}")]
    Syntax(String),
    /// A keyword libpq does not know.
    #[error("{}", if *.in_url {
        format!("invalid URL query parameter \"{keyword}\"")
    } else {
        format!("invalid connection option \"{keyword}\"")
    })]
    UnknownKeyword {
        /// The keyword as written.
        keyword: String,
        /// Whether it was a URL query parameter.
        in_url: bool,
    },
    /// A keyword with a value it cannot take.
    #[error("invalid value \"{value}\" for connection option \"{keyword}\" (expected {expected})")]
    InvalidValue {
        /// The keyword.
        keyword: &'static str,
        /// The value (never that of a secret keyword).
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// A libpq keyword (or value) this implementation cannot honour.
    #[error("connection option \"{keyword}\" is not supported: {reason}")]
    Unsupported {
        /// The keyword.
        keyword: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Keywords that do not fit together (host/port counts, `sslmode` with `sslnegotiation`…).
    #[error("{0}")]
    Config(String),
    /// A file named by (or defaulted for) a keyword is missing or unusable.
    #[error("{what} \"{}\" {reason}", .path.display())]
    File {
        /// What the file is for (`root certificate file`, …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration cannot be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Connecting to one server failed.
    #[error("connection to server {target} failed: {reason}")]
    Connect {
        /// The server, as libpq names it: `at "host" (addr), port 5432` or
        /// `on socket "/dir/.s.PGSQL.5432"`.
        target: String,
        /// What happened (the server's message for authentication errors).
        reason: String,
        /// The driver's error, if any (see [`ConnInfoError::db_error`]).
        error: Option<tokio_postgres::Error>,
    },
    /// Every host (or attempt) failed; one error per attempt, in order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllFailed(Vec<ConnInfoError>),
    /// The overall connect timeout expired.
    #[error("timeout expired after {0:?} while connecting")]
    Timeout(Duration),
}

impl ConnInfoError {
    /// The server's error (e.g. authentication failed, database does not exist) of the last
    /// failed attempt, if the server sent one.
    pub fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            Self::Connect { error, .. } => {
                error.as_ref().and_then(tokio_postgres::Error::as_db_error)
            }
            Self::AllFailed(errors) => errors.iter().rev().find_map(Self::db_error),
            _ => None,
        }
    }
}

fn invalid(keyword: &'static str, value: &str, expected: &str) -> ConnInfoError {
    ConnInfoError::InvalidValue {
        keyword,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

impl ConnInfo {
    /// Parses a libpq connection URL or `key=value` string (surrounding white space ignored,
    /// but for an escaped one ending the last value)
    /// and validates the values. An empty string is valid: everything defaults.
    pub fn parse(s: &str) -> Result<Self, ConnInfoError> {
        let raw = parse::trim(s);
        Self::parse_unchecked(raw)
            .and_then(|info| info.validate().map(|()| info))
            .map_err(|e| {
                if parse::url_may_hide_password(raw) {
                    ConnInfoError::Url(
                        "details hidden: an '@' after the host part suggests a password with an \
                         unencoded '/' or '?'; percent-encode '/', '?' and '@' in the user name \
                         and password (%2F, %3F, %40)"
                            .to_owned(),
                    )
                } else {
                    e
                }
            })
    }

    fn parse_unchecked(raw: &str) -> Result<Self, ConnInfoError> {
        let parsed = parse::parse(raw)?;
        let mut values = BTreeMap::new();
        for entry in parsed.entries {
            values.insert(entry.keyword.name, entry.value);
        }
        Ok(Self {
            raw: raw.to_owned(),
            form: parsed.form,
            values,
            home: None,
        })
    }

    /// Fills the keywords that are not set from the process environment (`PGHOST`, `PGPORT`,
    /// `PGUSER`, `PGPASSWORD`, …), like libpq. A keyword set in the string, even to an empty
    /// value, keeps its value. Invalid environment values are reported by
    /// [`validate`](Self::validate) and [`connect`](Self::connect).
    pub fn with_env_defaults(self) -> Self {
        self.with_env_from(|name| std::env::var(name).ok())
    }

    /// [`with_env_defaults`](Self::with_env_defaults) reading variables through `env`
    /// (also `HOME`, for `~/.pgpass` and `~/.postgresql/`).
    pub fn with_env_from(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        for keyword in KEYWORDS {
            if let Some(var) = keyword.env
                && !self.values.contains_key(keyword.name)
                && let Some(value) = env(var)
            {
                self.values.insert(keyword.name, value);
            }
        }
        if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
            self.home = Some(PathBuf::from(home));
        }
        self
    }

    /// Checks every value (also those from the environment) as [`connect`](Self::connect)
    /// would, without touching files or the network.
    pub fn validate(&self) -> Result<(), ConnInfoError> {
        for (&name, value) in &self.values {
            self.validate_value(name, value)?;
        }
        let mode = self.sslmode()?;
        if self.get("sslnegotiation") == Some("direct")
            && !matches!(
                mode,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            )
        {
            return Err(ConnInfoError::Config(format!(
                "weak sslmode \"{mode}\" may not be used with sslnegotiation=direct (use \
                 \"require\", \"verify-ca\", or \"verify-full\")"
            )));
        }
        if self.get("sslrootcert") == Some("system") && mode != SslMode::VerifyFull {
            return Err(ConnInfoError::Config(format!(
                "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \
                 \"verify-full\")"
            )));
        }
        let (min, max) = (
            self.tls_version("ssl_min_protocol_version")?,
            self.tls_version("ssl_max_protocol_version")?,
        );
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            return Err(ConnInfoError::Config(
                "invalid SSL protocol version range: ssl_min_protocol_version is above \
                 ssl_max_protocol_version"
                    .to_owned(),
            ));
        }
        self.targets().map(drop)
    }

    fn validate_value(&self, name: &'static str, value: &str) -> Result<(), ConnInfoError> {
        let one_of = |allowed: &[&str]| {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(invalid(name, value, &allowed.join(", ")))
            }
        };
        let keyword = keywords::lookup(name).unwrap_or_else(|| unreachable!("{name} is a keyword"));
        if keyword.support == Support::Refused && !value.is_empty() {
            let reason = match name {
                "service" => {
                    "connection service files (pg_service.conf) are not read; write the \
                              service's parameters into the connection string"
                }
                "requirepeer" => "the server process's user is not checked",
                "require_auth" => "the authentication method is not restricted",
                _ => "this authentication method is not available",
            };
            return Err(ConnInfoError::Unsupported {
                keyword: name,
                reason: reason.to_owned(),
            });
        }
        match name {
            "port" => {
                for port in value.split(',').filter(|p| !p.is_empty()) {
                    parse_port(port)?;
                }
                Ok(())
            }
            "hostaddr" => {
                for addr in value.split(',').filter(|a| !a.is_empty()) {
                    addr.parse::<IpAddr>()
                        .map_err(|_| invalid(name, addr, "a numeric IPv4 or IPv6 address"))?;
                }
                Ok(())
            }
            "connect_timeout"
            | "keepalives"
            | "keepalives_idle"
            | "keepalives_interval"
            | "keepalives_count"
            | "tcp_user_timeout" => parse_int(name, value).map(drop),
            "sslmode" => value.parse::<SslMode>().map(drop),
            "sslnegotiation" => one_of(&["postgres", "direct"]),
            "channel_binding" => one_of(&["disable", "prefer", "require"]),
            "gssencmode" if value == "require" => Err(ConnInfoError::Unsupported {
                keyword: name,
                reason: "GSSAPI encryption is not available; use sslmode instead".to_owned(),
            }),
            "gssencmode" => one_of(&["disable", "prefer", "require"]),
            "sslcertmode" if value == "require" => Err(ConnInfoError::Unsupported {
                keyword: name,
                reason: "whether the server asks for a client certificate is not checked"
                    .to_owned(),
            }),
            "sslcertmode" => one_of(&["disable", "allow", "require"]),
            "target_session_attrs" => one_of(&[
                "any",
                "read-write",
                "read-only",
                "primary",
                "standby",
                "prefer-standby",
            ]),
            "load_balance_hosts" => one_of(&["disable", "random"]),
            "replication" => match value.to_ascii_lowercase().as_str() {
                "" | "0" | "false" | "off" | "no" | "f" | "n" => Ok(()),
                "1" | "true" | "on" | "yes" | "t" | "y" | "database" => {
                    Err(ConnInfoError::Unsupported {
                        keyword: name,
                        reason: "replication connections are not available".to_owned(),
                    })
                }
                _ => Err(invalid(name, value, "a boolean or \"database\"")),
            },
            "ssl_min_protocol_version" | "ssl_max_protocol_version" => {
                self.tls_version(name).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// The value of `ssl_min_protocol_version`/`ssl_max_protocol_version` as a minor version
    /// (`TLSv1` = 0 … `TLSv1.3` = 3), `None` when unset or empty.
    fn tls_version(&self, name: &'static str) -> Result<Option<u8>, ConnInfoError> {
        let Some(value) = self.get(name).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let versions = ["tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3"];
        let lower = value.to_ascii_lowercase();
        versions
            .iter()
            .position(|v| *v == lower)
            .map(|p| Some(p as u8))
            .ok_or_else(|| invalid(name, value, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"))
    }

    /// The value of `keyword` as set in the string or by the environment; `None` when unset,
    /// and always `None` for secret keywords (`password`, `sslpassword`, …): see
    /// [`has_password`](Self::has_password).
    pub fn get(&self, keyword: &str) -> Option<&str> {
        if keywords::is_secret(keyword) {
            return None;
        }
        self.values.get(keyword).map(String::as_str)
    }

    /// The database name if set (and not empty); [`connect`](Self::connect) defaults it to
    /// the user name.
    pub fn dbname(&self) -> Option<&str> {
        self.get("dbname").filter(|v| !v.is_empty())
    }

    /// The user name if set (and not empty); [`connect`](Self::connect) defaults it to the OS
    /// user name.
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|v| !v.is_empty())
    }

    /// The `host` value (possibly a comma-separated list, or a socket directory) if set.
    pub fn host(&self) -> Option<&str> {
        self.get("host").filter(|v| !v.is_empty())
    }

    /// The `port` value (possibly a comma-separated list) if set.
    pub fn port(&self) -> Option<&str> {
        self.get("port").filter(|v| !v.is_empty())
    }

    /// Whether a non-empty password is set (in the string or, after
    /// [`with_env_defaults`](Self::with_env_defaults), by `PGPASSWORD`). The password file is
    /// only read by [`connect`](Self::connect).
    pub fn has_password(&self) -> bool {
        self.values.get("password").is_some_and(|p| !p.is_empty())
    }

    /// The secret keywords (`password`, `sslpassword`, …) that have a non-empty value, by
    /// name only: to warn about them without showing them.
    pub fn secrets_given(&self) -> Vec<&'static str> {
        self.values
            .iter()
            .filter(|(k, v)| keywords::is_secret(k) && !v.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Whether `sslmode` is set (in the string or by the environment).
    pub fn has_sslmode(&self) -> bool {
        self.values.get("sslmode").is_some_and(|m| !m.is_empty())
    }

    /// The effective `sslmode`: as set, else `verify-full` with `sslrootcert=system` (as
    /// libpq 16+), else `prefer`. An error only for an invalid value from the environment.
    pub fn sslmode(&self) -> Result<SslMode, ConnInfoError> {
        match self.values.get("sslmode").filter(|m| !m.is_empty()) {
            Some(mode) => mode.parse(),
            None if self.get("sslrootcert") == Some("system") => Ok(SslMode::VerifyFull),
            None => Ok(SslMode::Prefer),
        }
    }

    /// The same connection to database `db`: the URL path (and any `dbname` query parameter),
    /// or the `dbname=` of a `key=value` string (appended if absent), is replaced, so the
    /// [masked](Self::masked) form shows the new database.
    pub fn with_dbname(&self, db: &str) -> Self {
        let mut info = self.clone();
        // `raw` parsed before, so it parses again.
        if let Ok(raw) = parse::rewrite_dbname(&self.raw, db) {
            info.raw = raw;
        }
        info.values.insert("dbname", db.to_owned());
        info
    }

    /// Whether this connects to Pgbouncer's admin console: the database name is exactly
    /// `pgbouncer` (or, with no database name, the user name is).
    pub fn is_pgbouncer(&self) -> bool {
        self.dbname().or(self.user()) == Some("pgbouncer")
    }

    /// Whether the string was written as a `postgres://` URL (else `key=value`).
    pub fn is_url(&self) -> bool {
        self.form == Form::Url
    }

    /// The connection string as written (with [`with_dbname`](Self::with_dbname)'s database),
    /// passwords replaced by `xxxxx`: safe for logs and labels. Values taken from the
    /// environment are not shown. The secrets are found by this module's own parser, not
    /// guessed from the text.
    pub fn masked(&self) -> String {
        // `raw` parsed before, so it parses again; the fallback is only a safety net.
        parse::mask_secrets(&self.raw, MASK).unwrap_or_else(|_| mask_password(&self.raw))
    }

    /// A TLS connector with this connection's TLS settings, for
    /// `client.cancel_token().cancel_query(info.cancel_tls()?)` (the cancel request goes to
    /// the same server with the same `sslmode`, so it needs the same certificates). The
    /// [`ConnectionTask`] returned by [`connect`](Self::connect) has one ready too.
    pub fn cancel_tls(&self) -> Result<TlsConnector, ConnInfoError> {
        self.tls_connector()
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ConnInfo {
    /// The [masked](ConnInfo::masked) connection string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: BTreeMap<&str, &str> = self
            .values
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    if keywords::is_secret(k) {
                        MASK
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("ConnInfo")
            .field("conn", &self.masked())
            .field("values", &values)
            .field("home", &self.home)
            .finish()
    }
}

/// A port number (1–65535).
fn parse_port(port: &str) -> Result<u16, ConnInfoError> {
    port.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid("port", port, "a port number from 1 to 65535"))
}

/// An integer keyword (libpq's `parse_int_param`: surrounding white space allowed).
fn parse_int(name: &'static str, value: &str) -> Result<Option<i64>, ConnInfoError> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<i64>()
        .map(Some)
        .map_err(|_| invalid(name, value, "an integer"))
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
