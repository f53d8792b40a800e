//! The HTTP settings of the VictoriaLogs and Loki sinks: endpoint, headers, authentication,
//! TLS, body compression, request timeout, and the secrets among them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_kit::redact::{Names, Secrets, is_secret_name, mask_endpoint};
use serde::Deserialize;

use super::units::{HumanDuration, check_duration};
use super::{ConfigError, invalid};

/// HTTP body compression for JSON bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// `Content-Encoding: gzip`.
    Gzip,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    bearer_token: Option<String>,
    bearer_token_file: Option<PathBuf>,
}

/// How a sink authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &agent_kit::redact::MASK)
                .finish(),
            Auth::Bearer(_) => f
                .debug_tuple("Bearer")
                .field(&agent_kit::redact::MASK)
                .finish(),
        }
    }
}

/// TLS settings of an HTTP sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the CA certificates to trust (in addition to the system's).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM client key (with `cert_file`).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// HTTP settings of the VictoriaLogs and Loki sinks.
#[derive(Clone, PartialEq)]
pub struct Http {
    /// Base URL (`http://host:9428`, maybe with a path prefix and a query): the API path is
    /// joined to its path, its query kept. May hold credentials: show it with
    /// [`mask_endpoint`].
    pub endpoint: url::Url,
    /// The secret values of the endpoint, auth and headers, scrubbed from every message.
    pub secrets: Secrets,
    /// JSON body compression.
    pub compression: Compression,
    /// Extra headers, tenant headers included.
    pub headers: Vec<(String, String)>,
    /// Authentication.
    pub auth: Option<Auth>,
    /// TLS.
    pub tls: Tls,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_name(k, Names::Http) {
                    agent_kit::redact::MASK
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("Http")
            .field("endpoint", &mask_endpoint(&self.endpoint))
            .field("compression", &self.compression)
            .field("headers", &headers)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// The HTTP options of one sink as written, for [`validate`].
#[derive(Debug)]
pub(super) struct HttpOptions<'a> {
    pub(super) endpoint: Option<&'a str>,
    pub(super) compression: Option<Compression>,
    pub(super) headers: &'a BTreeMap<String, String>,
    pub(super) tenant_id: Option<&'a str>,
    pub(super) account_id: Option<u32>,
    pub(super) project_id: Option<u32>,
    pub(super) auth: Option<&'a RawAuth>,
    pub(super) tls: Option<&'a Tls>,
    pub(super) request_timeout: Option<HumanDuration>,
    /// The body is protobuf (always snappy-compressed).
    pub(super) protobuf: bool,
}

/// Validates the HTTP options of a sink; `f` names a field of the sink.
pub(super) fn validate(
    f: &dyn Fn(&str) -> String,
    s: &HttpOptions<'_>,
) -> Result<Http, ConfigError> {
    let endpoint = s
        .endpoint
        .ok_or_else(|| invalid(f("endpoint"), "is required"))?;
    let url = url::Url::parse(endpoint).map_err(|e| invalid(f("endpoint"), format!("{e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(f("endpoint"), "must be an http:// or https:// URL"));
    }
    if url.fragment().is_some() {
        return Err(invalid(
            f("endpoint"),
            "must not have a #fragment (it is never sent)",
        ));
    }
    let userinfo = !url.username().is_empty() || url.password().is_some();
    if userinfo && s.auth.is_some() {
        return Err(invalid(
            f("auth"),
            "the endpoint has a user:password@ already: one or the other",
        ));
    }
    if s.protobuf && s.compression == Some(Compression::Gzip) {
        return Err(invalid(
            f("compression"),
            "protobuf bodies are always snappy-compressed; gzip is for JSON",
        ));
    }
    let mut headers = Vec::new();
    for (k, v) in s.headers {
        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(v).is_err()
        {
            return Err(invalid(f("headers"), format!("invalid header {k:?}")));
        }
        headers.push((k.clone(), v.clone()));
    }
    if let Some(t) = s.tenant_id {
        headers.push(("X-Scope-OrgID".into(), t.to_owned()));
    }
    if s.account_id.is_some() || s.project_id.is_some() {
        headers.push(("AccountID".into(), s.account_id.unwrap_or(0).to_string()));
        headers.push(("ProjectID".into(), s.project_id.unwrap_or(0).to_string()));
    }
    let auth = match s.auth {
        None => None,
        Some(a) => Some(validate_auth(&f("auth"), a)?),
    };
    let tls = s.tls.cloned().unwrap_or_default();
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(invalid(f("tls"), "cert_file and key_file go together"));
    }
    let mut secrets = Secrets::of_url(&url);
    match &auth {
        Some(Auth::Basic { username, password }) => secrets.add_basic(username, password),
        Some(Auth::Bearer(token)) => secrets.add(token),
        None => {}
    }
    for (k, v) in &headers {
        secrets.add_header(k, v);
    }
    Ok(Http {
        endpoint: url,
        secrets,
        compression: s.compression.unwrap_or_default(),
        headers,
        auth,
        tls,
        request_timeout: check_duration(
            &f("request_timeout"),
            s.request_timeout.map_or(Duration::from_secs(30), |d| d.0),
            Duration::from_secs(1),
            "requests the store accepts would time out and be sent again, forever",
        )?,
    })
}

fn validate_auth(field: &str, a: &RawAuth) -> Result<Auth, ConfigError> {
    let basic = a.username.is_some() || a.password.is_some() || a.password_file.is_some();
    let bearer = a.bearer_token.is_some() || a.bearer_token_file.is_some();
    match (basic, bearer) {
        (true, true) => Err(invalid(
            field,
            "either basic auth or a bearer token, not both",
        )),
        (false, false) => Err(invalid(field, "needs username/password or bearer_token")),
        (true, false) => {
            let username = a
                .username
                .clone()
                .ok_or_else(|| invalid(format!("{field}.username"), "is required"))?;
            let password = match (&a.password, &a.password_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(field, "password or password_file, not both"));
                }
                (Some(p), None) => p.clone(),
                (None, Some(path)) => read_secret(&format!("{field}.password_file"), path)?,
                (None, None) => String::new(),
            };
            Ok(Auth::Basic { username, password })
        }
        (false, true) => match (&a.bearer_token, &a.bearer_token_file) {
            (Some(_), Some(_)) => Err(invalid(
                field,
                "bearer_token or bearer_token_file, not both",
            )),
            (Some(t), None) => Ok(Auth::Bearer(t.clone())),
            (None, Some(path)) => Ok(Auth::Bearer(read_secret(
                &format!("{field}.bearer_token_file"),
                path,
            )?)),
            (None, None) => unreachable!("bearer is set"),
        },
    }
}

fn read_secret(field: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
}
