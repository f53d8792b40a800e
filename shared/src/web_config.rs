//! The `--web.config.file` of the Prometheus exporter toolkit: TLS (`tls_server_config`) and
//! basic authentication with bcrypt hashes (`basic_auth_users`).
//!
//! Existing files written for the Go exporters load unchanged; [`WebConfig::load`] names the
//! file, line and field of any error.
//!
//! Fail closed: what a truncated or half-written file looks like is an error, never "no TLS, no
//! authentication". A file without a YAML document (zero bytes, only blanks or comments), a
//! `basic_auth_users` key without users, a `tls_server_config` without a server certificate and
//! a password that is not a whole bcrypt hash are refused, at start as on reload. Plain HTTP
//! without authentication is said explicitly, with a file holding `{}` (or without
//! `--web.config.file`).
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/pki/server.crt
//!   key_file: /etc/pki/server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: /etc/pki/ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

/// Why a web configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file could not be read.
    #[error("web config {path}: {source}")]
    Read {
        /// The web config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or has an unknown or mistyped field (the message has its line).
    #[error("web config {path}: {message}")]
    Parse {
        /// The web config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file holds no YAML document (zero bytes, only blanks or comments): a truncated file,
    /// refused so that it never turns TLS and authentication off.
    #[error(
        "web config {path}: the file is empty (no YAML document); an empty file would turn TLS and basic authentication off, so it is refused: write `{{}}` for plain HTTP without authentication"
    )]
    Empty {
        /// The web config file.
        path: PathBuf,
    },
    /// A field has a value that cannot be honoured.
    #[error("web config {path}: field {field}: {message}")]
    Invalid {
        /// The web config file.
        path: PathBuf,
        /// The offending field, e.g. `tls_server_config.min_version`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The parsed file, as the exporter toolkit defines it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfigFile {
    /// TLS settings; plain HTTP when absent or without certificates.
    #[serde(default)]
    pub tls_server_config: Option<TlsServerConfig>,
    /// HTTP server settings (accepted for compatibility).
    #[serde(default)]
    pub http_server_config: Option<HttpServerConfig>,
    /// User name to bcrypt hash.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
}

/// `tls_server_config` of the exporter toolkit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// PEM server certificate (chain) file.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Inline PEM certificate (instead of `cert_file`).
    #[serde(default)]
    pub cert: Option<String>,
    /// Inline PEM key (instead of `key_file`).
    #[serde(default)]
    pub key: Option<String>,
    /// `NoClientCert` (default), `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`.
    #[serde(default)]
    pub client_auth_type: Option<String>,
    /// PEM CA bundle that client certificates must chain to.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Lowest TLS version: `TLS12` or `TLS13` (`TLS10`/`TLS11` are refused as insecure).
    #[serde(default)]
    pub min_version: Option<String>,
    /// Highest TLS version.
    #[serde(default)]
    pub max_version: Option<String>,
    /// Go cipher suite names; rustls only offers secure suites, so these are accepted and
    /// ignored.
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
    /// Accepted and ignored, as for `cipher_suites`.
    #[serde(default)]
    pub curve_preferences: Option<Vec<String>>,
    /// Accepted and ignored.
    #[serde(default)]
    pub prefer_server_cipher_suites: Option<bool>,
    /// Subject alternative names a client certificate must carry (not supported: refused).
    #[serde(default)]
    pub client_allowed_sans: Option<Vec<String>>,
}

/// `http_server_config` of the exporter toolkit.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// HTTP/2 switch (we serve HTTP/1.1, which every scraper speaks).
    #[serde(default)]
    pub http2: Option<bool>,
    /// Extra response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A loaded web configuration, ready to serve.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// TLS server settings, when TLS is on.
    pub tls: Option<Arc<ServerConfig>>,
    /// Basic authentication, when users are configured.
    pub basic_auth: Option<BasicAuth>,
    /// Headers added to every response.
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl WebConfig {
    /// Reads and validates `path`; certificate and key files are read now, so a broken file is
    /// reported at start-up (or reload), not at the first connection.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |e: crate::yaml::YamlError| WebConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        };
        // A first look at the document's shape: what a truncation leaves behind (nothing, or a
        // section key without its content) must not read as "no TLS, no authentication".
        let document: serde_norway::Value = if has_yaml_content(&text) {
            crate::yaml::from_str(&text).map_err(parse_error)?
        } else {
            serde_norway::Value::Null
        };
        if document.is_null() {
            return Err(WebConfigError::Empty {
                path: path.to_owned(),
            });
        }
        for (key, what) in [
            ("basic_auth_users", "lists no user"),
            ("tls_server_config", "has no settings"),
        ] {
            let empty = document.get(key).is_some_and(|v| {
                v.is_null() || v.as_mapping().is_some_and(serde_norway::Mapping::is_empty)
            });
            if empty {
                return Err(WebConfigError::Invalid {
                    path: path.to_owned(),
                    field: key,
                    message: format!(
                        "{what} (a truncated file?); remove the key to turn it off on purpose"
                    ),
                });
            }
        }
        // Parsed again as the typed file, for errors with their line and column.
        let file: WebConfigFile = crate::yaml::from_str(&text).map_err(parse_error)?;
        Self::from_file(path, file)
    }

    /// Whether TLS or basic authentication is on: what a reload must not drop by accident.
    pub fn is_protected(&self) -> bool {
        self.tls.is_some() || self.basic_auth.is_some()
    }

    fn from_file(path: &Path, file: WebConfigFile) -> Result<WebConfig, WebConfigError> {
        let invalid = |field: &'static str, message: String| WebConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        // Relative file names are relative to the web config file, as in the toolkit.
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let tls = match file.tls_server_config {
            Some(t)
                if t.cert_file.is_some()
                    || t.key_file.is_some()
                    || t.cert.is_some()
                    || t.key.is_some() =>
            {
                Some(Arc::new(build_tls(&t, &resolve, &invalid)?))
            }
            Some(t) if t.client_ca_file.is_some() || t.client_auth_type.is_some() => {
                return Err(invalid(
                    "tls_server_config.cert_file",
                    "client authentication is configured but no server certificate is".into(),
                ));
            }
            Some(_) => {
                return Err(invalid(
                    "tls_server_config.cert_file",
                    "no server certificate (cert_file and key_file, or cert and key); remove tls_server_config to serve plain HTTP".into(),
                ));
            }
            None => None,
        };

        let mut users = HashMap::new();
        for (user, hash) in file.basic_auth_users {
            // The hash is never quoted: it may be a clear-text password pasted by mistake.
            if !is_bcrypt_hash(&hash) {
                return Err(invalid(
                    "basic_auth_users",
                    format!(
                        "the password of user {user:?} is not a whole bcrypt hash ($2y$, a cost from 04 to 31, $ and 53 characters; e.g. from `htpasswd -nbBC 10 {user} PASSWORD`)"
                    ),
                ));
            }
            users.insert(user, hash);
        }
        let basic_auth = (!users.is_empty()).then(|| BasicAuth::new(users));

        let mut headers = Vec::new();
        for (k, v) in file
            .http_server_config
            .map(|h| h.headers)
            .unwrap_or_default()
        {
            let name = axum::http::HeaderName::try_from(k.as_str())
                .map_err(|e| invalid("http_server_config.headers", format!("{k:?}: {e}")))?;
            let value = axum::http::HeaderValue::try_from(v.as_str())
                .map_err(|e| invalid("http_server_config.headers", format!("{k:?}: {e}")))?;
            headers.push((name, value));
        }
        Ok(WebConfig {
            tls,
            basic_auth,
            headers,
        })
    }
}

/// Whether `text` holds anything but blanks and comments.
fn has_yaml_content(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    })
}

/// `$2a$`, `$2b$`, `$2x$` or `$2y$`, a two-digit cost from 04 to 31, `$`, then 22 characters of
/// salt and 31 of hash in bcrypt's base64 alphabet: what `htpasswd -B` and Go's bcrypt write.
/// Anything shorter is a truncated hash that no password would match.
fn is_bcrypt_hash(hash: &str) -> bool {
    let b = hash.as_bytes();
    let alphabet = |c: &u8| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/';
    b.len() == 60
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && b[6] == b'$'
        && hash[4..6]
            .parse::<u32>()
            .is_ok_and(|c| (4..=31).contains(&c))
        && b[7..].iter().all(alphabet)
}

fn build_tls(
    t: &TlsServerConfig,
    resolve: &dyn Fn(&Path) -> PathBuf,
    invalid: &dyn Fn(&'static str, String) -> WebConfigError,
) -> Result<ServerConfig, WebConfigError> {
    if t.client_allowed_sans
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(invalid(
            "tls_server_config.client_allowed_sans",
            "not supported; restrict clients with client_ca_file".into(),
        ));
    }
    let cert_pem = match (&t.cert, &t.cert_file) {
        (Some(inline), None) => inline.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(resolve(f)).map_err(|e| {
            invalid(
                "tls_server_config.cert_file",
                format!("{}: {e}", f.display()),
            )
        })?,
        (Some(_), Some(_)) => {
            return Err(invalid(
                "tls_server_config.cert",
                "set cert or cert_file, not both".into(),
            ));
        }
        (None, None) => return Err(invalid("tls_server_config.cert_file", "missing".into())),
    };
    let key_pem = match (&t.key, &t.key_file) {
        (Some(inline), None) => inline.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(resolve(f)).map_err(|e| {
            invalid(
                "tls_server_config.key_file",
                format!("{}: {e}", f.display()),
            )
        })?,
        (Some(_), Some(_)) => {
            return Err(invalid(
                "tls_server_config.key",
                "set key or key_file, not both".into(),
            ));
        }
        (None, None) => return Err(invalid("tls_server_config.key_file", "missing".into())),
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("tls_server_config.cert_file", e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(
            "tls_server_config.cert_file",
            "no PEM certificate found".into(),
        ));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| invalid("tls_server_config.key_file", e.to_string()))?
        .ok_or_else(|| {
            invalid(
                "tls_server_config.key_file",
                "no PEM private key found".into(),
            )
        })?;

    let version = |field: &'static str, v: &Option<String>| -> Result<Option<u8>, WebConfigError> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some("TLS12") => Ok(Some(12)),
            Some("TLS13") => Ok(Some(13)),
            Some(other @ ("TLS10" | "TLS11")) => Err(invalid(
                field,
                format!("{other} is insecure and not supported; use TLS12 or TLS13"),
            )),
            Some(other) => Err(invalid(field, format!("unknown TLS version {other:?}"))),
        }
    };
    let min = version("tls_server_config.min_version", &t.min_version)?.unwrap_or(12);
    let max = version("tls_server_config.max_version", &t.max_version)?.unwrap_or(13);
    if min > max {
        return Err(invalid(
            "tls_server_config.min_version",
            "greater than max_version".into(),
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| invalid("tls_server_config.min_version", e.to_string()))?;

    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth_type {
        "" | "NoClientCert" => {
            if t.client_ca_file.is_some() {
                return Err(invalid(
                    "tls_server_config.client_auth_type",
                    "client_ca_file is set but client_auth_type is NoClientCert".into(),
                ));
            }
            builder.with_no_client_auth()
        }
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let ca_file = t.client_ca_file.as_ref().ok_or_else(|| {
                invalid(
                    "tls_server_config.client_ca_file",
                    format!("required by {auth_type}"),
                )
            })?;
            let ca_pem = std::fs::read(resolve(ca_file)).map_err(|e| {
                invalid(
                    "tls_server_config.client_ca_file",
                    format!("{}: {e}", ca_file.display()),
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
                let cert =
                    cert.map_err(|e| invalid("tls_server_config.client_ca_file", e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid("tls_server_config.client_ca_file", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth_type == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid("tls_server_config.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        other @ ("RequestClientCert" | "RequireAnyClientCert") => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!("{other} accepts unverified certificates and is not supported"),
            ));
        }
        other => {
            return Err(invalid(
                "tls_server_config.client_auth_type",
                format!("unknown client auth type {other:?}"),
            ));
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("tls_server_config.key_file", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Basic authentication against bcrypt hashes.
///
/// bcrypt is slow by design; a scraper sends the same credentials every few seconds, so
/// verified credentials are remembered under a keyed hash (never in clear text) and checked
/// again only when they change.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    users: Arc<HashMap<String, String>>,
    verified: Arc<Mutex<HashMap<u64, bool>>>,
    hasher: RandomState,
}

impl BasicAuth {
    const CACHE_LIMIT: usize = 1024;

    /// Users mapped to their bcrypt hashes.
    pub fn new(users: HashMap<String, String>) -> BasicAuth {
        BasicAuth {
            users: Arc::new(users),
            verified: Arc::default(),
            hasher: RandomState::new(),
        }
    }

    /// Whether an `Authorization` header value grants access.
    pub fn check_header(&self, authorization: Option<&str>) -> bool {
        let Some(encoded) = authorization.and_then(|h| {
            h.strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
        }) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        self.check(user, password)
    }

    /// Whether `user` with `password` is granted access.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            // Spend the same time as for a known user, so user names cannot be probed.
            if let Some(any) = self.users.values().next() {
                let _ = bcrypt::verify(password, any);
            }
            return false;
        };
        let key = self.hasher.hash_one((user, password));
        if let Some(&ok) = self.verified.lock().expect("auth cache lock").get(&key) {
            return ok;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        let mut cache = self.verified.lock().expect("auth cache lock");
        if cache.len() >= Self::CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "web.yml",
            "basic_auth_users:\n  a: $2y$10$x\nbogus: 1\n",
        );
        let e = WebConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("web.yml") && e.contains("bogus") && e.contains("line 3"),
            "{e}"
        );

        let p = write(dir.path(), "w2.yml", "basic_auth_users:\n  a: plaintext\n");
        let e = WebConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("basic_auth_users") && !e.contains("plaintext"),
            "{e}"
        );

        let p = write(
            dir.path(),
            "w3.yml",
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
        );
        let e = WebConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("cert_file") && e.contains("missing.crt"), "{e}");

        let e = WebConfig::load(&dir.path().join("nope.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.yml"), "{e}");
    }

    #[test]
    fn what_a_truncation_leaves_is_refused_and_plain_http_is_said_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("", "is empty"),
            ("\n  \n", "is empty"),
            ("# basic_auth_users:\n#   prom: x\n", "is empty"),
            ("---\n", "is empty"),
            (
                "basic_auth_users:\n",
                "field basic_auth_users: lists no user",
            ),
            (
                "basic_auth_users: {}\n",
                "field basic_auth_users: lists no user",
            ),
            (
                "tls_server_config:\n",
                "field tls_server_config: has no settings",
            ),
            (
                "tls_server_config:\n  min_version: TLS12\n",
                "field tls_server_config.cert_file: no server certificate",
            ),
            (
                "basic_auth_users:\n  prom: $2y$10$abcdefghijklmnopqrstuv\n",
                "field basic_auth_users: the password of user \"prom\" is not a whole bcrypt hash",
            ),
        ] {
            let p = write(dir.path(), "web.yml", text);
            let e = WebConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains("web.yml") && e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("abcdefghijklmnopqrstuv"), "hash quoted: {e}");
        }
        // `{}` is the explicit "no TLS, no authentication".
        let p = write(dir.path(), "web.yml", "{}\n");
        let c = WebConfig::load(&p).unwrap();
        assert!(!c.is_protected());
        let p = write(
            dir.path(),
            "web.yml",
            "http_server_config:\n  headers:\n    X-A: b\n",
        );
        assert!(!WebConfig::load(&p).unwrap().is_protected());
    }

    #[test]
    fn bcrypt_hashes_are_checked_whole() {
        let good = bcrypt::hash("pw", 4).unwrap();
        assert!(is_bcrypt_hash(&good), "{good}");
        assert!(is_bcrypt_hash(&good.replacen("$2b$", "$2y$", 1)));
        for bad in [
            &good[..59],
            &format!("{good}x"),
            &good.replacen("$04$", "$03$", 1),
            &good.replacen("$04$", "$32$", 1),
            &good.replacen("$2b$", "$3b$", 1),
            &good.replacen("$2b$", "$2c$", 1),
            &format!("{}-{}", &good[..30], &good[31..]),
            "plaintext",
            "",
        ] {
            assert!(!is_bcrypt_hash(bad), "{bad} accepted");
        }
    }

    #[test]
    fn basic_auth_checks_bcrypt() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(HashMap::from([("prom".to_owned(), hash)]));
        assert!(auth.check("prom", "s3cret"));
        assert!(auth.check("prom", "s3cret"), "cached answer");
        assert!(!auth.check("prom", "wrong"));
        assert!(!auth.check("nobody", "s3cret"));
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("prom:s3cret")
        );
        assert!(auth.check_header(Some(&header)));
        assert!(!auth.check_header(Some("Bearer x")));
        assert!(!auth.check_header(None));
    }
}
