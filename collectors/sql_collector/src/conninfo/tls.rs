//! TLS for PostgreSQL connections with rustls, following libpq's `sslmode` rules and
//! checking the server certificate as libpq (OpenSSL 3) does.
//!
//! | `sslmode`     | server certificate checked                                        |
//! |---------------|-------------------------------------------------------------------|
//! | `disable`     | no TLS                                                            |
//! | `allow`, `prefer`, `require` | not checked, unless a root certificate file exists (`sslrootcert`, or `~/.postgresql/root.crt`): then as `verify-ca` |
//! | `verify-ca`   | chain up to a root certificate of `sslrootcert`, any host name    |
//! | `verify-full` | the chain, and the host name by libpq's rules                     |
//!
//! The chain is judged by [`super::trust`], which follows OpenSSL's rules: a self-signed
//! server certificate (as PostgreSQL's documentation makes it with `openssl req -x509`) is
//! trusted when it is itself in the root certificate file; a root certificate that is not
//! self-signed, or not a CA, or expired, trusts nothing; version 1 certificates (made by
//! `openssl x509 -req`) are verified like the others; key usages, critical extensions, path
//! lengths and, with `sslcrl`/`sslcrldir`, the CRLs of every certificate of the chain are
//! checked. Signatures are verified with rustls's crypto provider (ring), the server's
//! handshake signature too, whatever its certificate, even when nothing else is checked.
//!
//! `verify-full` matches the host as written in the connection string (a trailing dot
//! included) against the subjectAltName DNS names (wildcards `*.`) and IP addresses, and
//! against the Common Name when the certificate has no subjectAltName of the host's kind, as
//! libpq does; with `hostaddr` but no `host` there is no name to match, and it is refused.
//! A certificate that is not trusted is explained in words (unknown issuer, not a CA,
//! expired on a date, revoked, not for that host name with the names it has, …).
//!
//! Where we cannot check a certificate as libpq would (name constraints, CRL scopes,
//! algorithms ring lacks such as SHA-1 or P-521), it is refused, and `sslmode=prefer` does
//! not then fall back to a connection without TLS, as it does after a failure libpq would
//! have too ([`TlsConnector::unsupported`]).
//!
//! `sslrootcert=system` uses the system's trusted roots (without CRLs, as libpq) and requires
//! `verify-full`, as in libpq 16+. Client certificates come from `sslcert`/`sslkey` (default
//! `~/.postgresql/postgresql.crt` and `.key` when they exist); CRLs from `sslcrl`, `sslcrldir`
//! (files named by `openssl rehash`) and the root certificate file, or, when neither keyword
//! is set, `~/.postgresql/root.crl` if it exists.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::crypto::hash::HashAlgorithm;
use rustls::pki_types::pem::{PemObject as _, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::ConnInfoError;
use super::certificate::Cert;
use super::crl::Crl;
use super::der::der_element;
use super::signature::{HandshakeError, SignatureError, verify_handshake};
use super::trust::{Crls, Refusal, Trust, crl_source, refused, unsupported};

/// Common places of the system's CA bundle, for `sslrootcert=system` (after `SSL_CERT_FILE`).
const SYSTEM_CA_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

/// How the server certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    /// Not at all (the handshake signatures still are).
    Nothing,
    /// The chain up to the root certificates, not the name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// Everything needed to build the rustls configuration, resolved from the connection keywords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    pub(super) verify: Verify,
    /// PEM root certificates, or `None` for the system's roots (`sslrootcert=system`).
    pub(super) root_cert: Option<PathBuf>,
    /// `sslcrl` (or the default `~/.postgresql/root.crl`), and whether it was set explicitly.
    pub(super) crl: Option<(PathBuf, bool)>,
    pub(super) crl_dir: Option<PathBuf>,
    pub(super) client_cert: Option<(PathBuf, PathBuf)>,
    pub(super) sni: bool,
    /// Allowed TLS 1.2 (rustls has nothing older) and TLS 1.3.
    pub(super) tls12: bool,
    pub(super) tls13: bool,
}

/// How the server certificate of a connection is checked.
#[derive(Debug)]
struct Check {
    trust: Trust,
    /// `verify-full`.
    host_name: bool,
}

/// A TLS client built from [`TlsSettings`]: rustls's configuration and the certificate check,
/// which each handshake gets with its own host name (see [`TlsConnector`]).
#[derive(Clone)]
pub(super) struct TlsClient {
    config: Arc<ClientConfig>,
    check: Option<Arc<Check>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The rustls configuration for one handshake with `host` (`None`: only `hostaddr` was
    /// given), reporting to `progress`.
    fn config_for(&self, host: Option<String>, progress: Arc<Progress>) -> ClientConfig {
        let mut config = (*self.config).clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(LibpqVerifier {
                check: self.check.clone(),
                host,
                algorithms: self.algorithms,
                progress,
            }));
        config
    }
}

impl TlsSettings {
    /// Builds the TLS client: reads the root certificates, CRLs and client certificate.
    pub(super) fn client(&self) -> Result<TlsClient, ConnInfoError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
        if self.tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if self.tls12 {
            versions.push(&rustls::version::TLS12);
        }
        let check = self.check(algorithms)?.map(Arc::new);
        let verifier = Arc::new(LibpqVerifier {
            check: check.clone(),
            host: None,
            algorithms,
            progress: Arc::default(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| ConnInfoError::Tls(format!("cannot select TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_cert {
            Some((cert, key)) => {
                let chain = read_pem(cert, "client certificate file")?.certificates;
                if chain.is_empty() {
                    return Err(ConnInfoError::File {
                        what: "client certificate file",
                        path: cert.clone(),
                        reason: "contains no PEM certificate".to_owned(),
                    });
                }
                let key = read_private_key(key)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ConnInfoError::Tls(format!(
                        "cannot use client certificate \"{}\" with key \"{}\": {e}",
                        cert.display(),
                        key_path_display(&self.client_cert)
                    ))
                })?
            }
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = self.sni;
        // Like libpq 17+, which servers need for `sslnegotiation=direct`.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(TlsClient {
            config: Arc::new(config),
            check,
            algorithms,
        })
    }

    /// The root certificates and CRLs to check the server certificate with, if it is checked.
    fn check(&self, algorithms: WebPkiSupportedAlgorithms) -> Result<Option<Check>, ConnInfoError> {
        if self.verify == Verify::Nothing {
            return Ok(None);
        }
        let (pem, source) = match &self.root_cert {
            Some(path) => (
                read_pem(path, "root certificate file")?,
                format!("root certificate file \"{}\"", path.display()),
            ),
            None => (system_roots()?, "system's CA bundle".to_owned()),
        };
        if pem.certificates.is_empty() {
            return Err(match &self.root_cert {
                Some(path) => ConnInfoError::File {
                    what: "root certificate file",
                    path: path.clone(),
                    reason: "contains no PEM certificate".to_owned(),
                },
                None => ConnInfoError::Tls(format!("no PEM certificate in the {source}")),
            });
        }
        let mut roots = Vec::new();
        let mut unreadable = Vec::new();
        for (i, der) in pem.certificates.iter().enumerate() {
            match Cert::parse(der) {
                Ok(cert) => roots.push(cert),
                Err(e) => unreadable.push(format!("certificate {} {e}", i + 1)),
            }
        }
        if roots.is_empty() {
            return Err(ConnInfoError::Tls(format!(
                "no usable CA certificate in the {source}"
            )));
        }
        // libpq loads no CRL with sslrootcert=system.
        let crls = match &self.root_cert {
            Some(path) => self.crls(path, &pem.crls)?,
            None => None,
        };
        Ok(Some(Check {
            trust: Trust::new(roots, source, crls, algorithms).with_unreadable(unreadable),
            host_name: self.verify == Verify::Full,
        }))
    }

    /// The CRLs, when revocation is checked: as libpq, when `sslcrldir` is set or the CRL file
    /// (`sslcrl`, else `~/.postgresql/root.crl` when neither is set) holds a certificate or a
    /// CRL. An `sslcrl` or `sslcrldir` set but missing, unreadable or without a CRL is an error
    /// here (libpq then checks nothing, or refuses every server).
    fn crls(&self, root_file: &Path, root_crls: &[Vec<u8>]) -> Result<Option<Crls>, ConnInfoError> {
        const FILE: &str = "certificate revocation list file";
        if self.crl.is_none() && self.crl_dir.is_none() {
            return Ok(None);
        }
        let mut listed = Vec::new();
        if let Some((path, explicit)) = &self.crl {
            let text = if *explicit {
                read_file(path, FILE)?
            } else {
                match fs::read(path) {
                    Ok(text) => text,
                    Err(_) => return Ok(None),
                }
            };
            let pem = parse_pem(&text, path, FILE)?;
            if pem.crls.is_empty() {
                if *explicit {
                    return Err(ConnInfoError::File {
                        what: FILE,
                        path: path.clone(),
                        reason: "contains no PEM certificate revocation list".to_owned(),
                    });
                }
                if pem.certificates.is_empty() {
                    return Ok(None);
                }
            }
            listed.extend(parse_crls(&pem.crls, path, FILE)?);
        }
        listed.extend(parse_crls(root_crls, root_file, "root certificate file")?);
        let hashed = match &self.crl_dir {
            Some(dir) => read_crl_dir(dir)?,
            None => Vec::new(),
        };
        Ok(Some(Crls {
            listed,
            hashed,
            source: crl_source(self.crl.as_ref().map(|(p, _)| p), self.crl_dir.as_ref()),
        }))
    }
}

fn key_path_display(cert: &Option<(PathBuf, PathBuf)>) -> String {
    cert.as_ref()
        .map(|(_, k)| k.display().to_string())
        .unwrap_or_default()
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ConnInfoError> {
    fs::read(path).map_err(|e| ConnInfoError::File {
        what,
        path: path.to_owned(),
        reason: if e.kind() == io::ErrorKind::NotFound {
            "does not exist".to_owned()
        } else {
            e.to_string()
        },
    })
}

/// The certificates and CRLs (DER) of a PEM file.
#[derive(Debug, Default)]
struct Pem {
    certificates: Vec<CertificateDer<'static>>,
    crls: Vec<Vec<u8>>,
}

fn read_pem(path: &Path, what: &'static str) -> Result<Pem, ConnInfoError> {
    parse_pem(&read_file(path, what)?, path, what)
}

fn parse_pem(text: &[u8], path: &Path, what: &'static str) -> Result<Pem, ConnInfoError> {
    let mut pem = Pem::default();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
        let (kind, der) = section.map_err(|e| ConnInfoError::File {
            what,
            path: path.to_owned(),
            reason: format!("{e}"),
        })?;
        match kind {
            SectionKind::Certificate => pem.certificates.push(CertificateDer::from(der)),
            SectionKind::Crl => pem.crls.push(der),
            _ => {}
        }
    }
    Ok(pem)
}

fn parse_crls(
    ders: &[Vec<u8>],
    path: &Path,
    what: &'static str,
) -> Result<Vec<Crl>, ConnInfoError> {
    ders.iter()
        .map(|der| {
            Crl::parse(der, path.to_owned()).map_err(|e| ConnInfoError::File {
                what,
                path: path.to_owned(),
                reason: format!("has a certificate revocation list that {e}"),
            })
        })
        .collect()
}

/// The CRLs of `sslcrldir` as OpenSSL's hashed directory lookup finds them: files named
/// `<issuer name hash>.r<n>` (`openssl rehash`), n counting from 0 until a file is missing.
fn read_crl_dir(dir: &Path) -> Result<Vec<(u32, Crl)>, ConnInfoError> {
    const WHAT: &str = "certificate revocation list directory";
    let entries = fs::read_dir(dir).map_err(|e| ConnInfoError::File {
        what: WHAT,
        path: dir.to_owned(),
        reason: if e.kind() == io::ErrorKind::NotFound {
            "does not exist".to_owned()
        } else {
            e.to_string()
        },
    })?;
    let mut names: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((hash, n)) = name.to_str().and_then(|n| n.split_once(".r")) else {
            continue;
        };
        let lower_hex =
            hash.len() == 8 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if let (true, Ok(hash), Ok(n)) = (lower_hex, u32::from_str_radix(hash, 16), n.parse()) {
            names.entry(hash).or_default().push(n);
        }
    }
    let mut crls = Vec::new();
    for (hash, numbers) in names {
        for n in 0.. {
            if !numbers.contains(&n) {
                break;
            }
            let path = dir.join(format!("{hash:08x}.r{n}"));
            let pem = read_pem(&path, "certificate revocation list file")?;
            for crl in parse_crls(&pem.crls, &path, "certificate revocation list file")? {
                crls.push((hash, crl));
            }
        }
    }
    Ok(crls)
}

/// The client key, refused like libpq when others may read it: a key owned by the user must be
/// u=rw (0600) or less, one owned by root u=rw,g=r (0640) or less.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConnInfoError> {
    const WHAT: &str = "private key file";
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        let too_open = if meta.uid() == 0 {
            mode & 0o037 != 0
        } else {
            mode & 0o077 != 0
        };
        if too_open {
            return Err(ConnInfoError::File {
                what: WHAT,
                path: path.to_owned(),
                reason: "has group or world access; file must have permissions u=rw (0600) or \
                         less if owned by the current user, or permissions u=rw,g=r (0640) or \
                         less if owned by root"
                    .to_owned(),
            });
        }
    }
    let pem = read_file(path, WHAT)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ConnInfoError::File {
        what: WHAT,
        path: path.to_owned(),
        reason: format!("{e} (encrypted keys are not supported)"),
    })
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first that exists of the usual places.
fn system_roots() -> Result<Pem, ConnInfoError> {
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if path.is_file() {
            return read_pem(&path, "system CA bundle");
        }
    }
    Err(ConnInfoError::Tls(format!(
        "sslrootcert=system: no system CA bundle found (set SSL_CERT_FILE or install one of {})",
        SYSTEM_CA_BUNDLES.join(", ")
    )))
}

/// The server certificate check of one handshake, as libpq does it (see the module
/// documentation): the chain by [`Trust`] unless nothing is checked, the host name for
/// `verify-full`, the handshake signature always.
#[derive(Debug)]
struct LibpqVerifier {
    check: Option<Arc<Check>>,
    /// The host as written in the connection string (`None`: only `hostaddr`).
    host: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
    progress: Arc<Progress>,
}

impl LibpqVerifier {
    /// A refusal as a rustls error, noting whether libpq might have accepted.
    fn refuse(&self, prefix: &str, refusal: &Refusal) -> rustls::Error {
        if refusal.unsupported {
            self.progress.unsupported.store(true, Ordering::Relaxed);
        }
        words(format!("{prefix}: {refusal}"))
    }

    fn handshake_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        scheme: SignatureScheme,
        signature: &[u8],
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        const PREFIX: &str = "server handshake signature not accepted";
        let result = verify_handshake(
            &self.algorithms,
            cert.as_ref(),
            message,
            scheme,
            signature,
            tls13,
        );
        let subject = Cert::parse(cert.as_ref())
            .map_or_else(|_| String::new(), |c| format!(" {}", c.describe()));
        match result {
            Ok(()) => Ok(HandshakeSignatureValid::assertion()),
            Err(HandshakeError::Unadvertised) => Err(words(format!(
                "{PREFIX}: the server signed with {scheme:?}, which this client did not offer"
            ))),
            Err(HandshakeError::Signature(SignatureError::Invalid)) => Err(self.refuse(
                PREFIX,
                &refused(format!(
                    "it does not verify with the key of the server certificate{subject}: the \
                     server does not hold that certificate's private key"
                )),
            )),
            Err(HandshakeError::Signature(SignatureError::Unsupported(how))) => Err(self.refuse(
                PREFIX,
                &unsupported(&format!(
                    "the server certificate{subject} has {how}, which this client cannot \
                     verify signatures with"
                )),
            )),
        }
    }
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        const PREFIX: &str = "server certificate not trusted";
        let Some(check) = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        let leaf = Cert::parse(end_entity.as_ref()).map_err(|e| {
            self.refuse(PREFIX, &unsupported(&format!("the server certificate {e}")))
        })?;
        let others = intermediates
            .iter()
            .enumerate()
            .map(|(i, der)| {
                Cert::parse(der).map_err(|e| {
                    self.refuse(
                        PREFIX,
                        &unsupported(&format!("certificate {} the server sent {e}", i + 2)),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        check
            .trust
            .verify(&leaf, &others, now.as_secs())
            .map_err(|r| self.refuse(PREFIX, &r))?;
        if check.host_name {
            let result = match &self.host {
                Some(host) => leaf.check_host(host),
                None => Err("sslmode=verify-full needs a host name to match the server \
                             certificate against: set host (hostaddr only says where to \
                             connect)"
                    .to_owned()),
            };
            result.map_err(|m| self.refuse(PREFIX, &refused(m)))?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.handshake_signature(message, cert, dss.scheme, dss.signature(), false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.handshake_signature(message, cert, dss.scheme, dss.signature(), true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a handshake was refused, in words; carried through rustls as
/// `CertificateError::Other` and shown as it is by [`TlsHandshake`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Words(String);

fn words(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Words(message),
    ))))
}

/// A handshake error, with [`Words`] shown as they are (rustls would print `invalid peer
/// certificate: Other(OtherError(…))`).
fn readable_handshake_error(error: io::Error) -> io::Error {
    let words = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<Words>()
            }
            _ => None,
        })
        .map(|w| w.0.clone());
    match words {
        Some(words) => io::Error::new(error.kind(), words),
        None => error,
    }
}

type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
type RustlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

/// What happened to TLS during one connection attempt.
#[derive(Debug, Default)]
struct Progress {
    attempted: AtomicBool,
    established: AtomicBool,
    /// The server certificate was refused for a reason libpq might not have.
    unsupported: AtomicBool,
}

/// The TLS connector for [`tokio_postgres`], built by
/// [`ConnInfo::cancel_tls`](super::ConnInfo::cancel_tls) with the connection's TLS settings:
/// pass it to [`tokio_postgres::CancelToken::cancel_query`].
///
/// Unlike `tokio_postgres_rustls::MakeRustlsConnect` it accepts connections without a TLS
/// host name (unix sockets, which never use TLS), checks the server certificate against the
/// host as written (rustls drops a trailing dot) and reports whether TLS was attempted.
#[derive(Clone)]
pub struct TlsConnector {
    client: Option<TlsClient>,
    progress: Arc<Progress>,
    /// Only `hostaddr` was given: no host name for `verify-full`.
    no_host_name: bool,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("enabled", &self.client.is_some())
            .finish()
    }
}

impl TlsConnector {
    /// A connector that uses `client`, or never does TLS when `None` (`sslmode=disable`).
    pub(super) fn new(client: Option<TlsClient>) -> Self {
        Self {
            client,
            progress: Arc::default(),
            no_host_name: false,
        }
    }

    /// The same settings with fresh progress flags, for one connection attempt.
    pub(super) fn fresh(&self) -> Self {
        Self {
            client: self.client.clone(),
            progress: Arc::default(),
            no_host_name: self.no_host_name,
        }
    }

    /// For a server given by `hostaddr` only: the TLS server name is its address, but there is
    /// no host name to check the certificate against (libpq refuses `verify-full` then).
    pub(super) fn without_host_name(mut self) -> Self {
        self.no_host_name = true;
        self
    }

    /// Whether a TLS handshake was started through this connector.
    pub(super) fn attempted(&self) -> bool {
        self.progress.attempted.load(Ordering::Relaxed)
    }

    /// Whether a TLS handshake completed through this connector.
    pub(super) fn established(&self) -> bool {
        self.progress.established.load(Ordering::Relaxed)
    }

    /// Whether the server certificate was refused for a reason libpq might not have (so
    /// `prefer` must not fall back to a connection without TLS).
    pub(super) fn unsupported(&self) -> bool {
        self.progress.unsupported.load(Ordering::Relaxed)
    }
}

impl MakeTlsConnect<Socket> for TlsConnector {
    type Stream = PgTlsStream;
    type TlsConnect = TlsHandshake;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsHandshake, io::Error> {
        let inner = match &self.client {
            None => Err("TLS is disabled (sslmode=disable)".to_owned()),
            Some(_) if domain.is_empty() => Err("no host name for the TLS handshake".to_owned()),
            Some(client) => {
                let host = (!self.no_host_name).then(|| domain.to_owned());
                let config = client.config_for(host, Arc::clone(&self.progress));
                MakeTlsConnect::<Socket>::make_tls_connect(
                    &mut MakeRustlsConnect::new(config),
                    domain,
                )
                .map_err(|e| format!("invalid TLS server name \"{domain}\": {e}"))
            }
        };
        Ok(TlsHandshake {
            inner,
            progress: Arc::clone(&self.progress),
        })
    }
}

/// One TLS handshake prepared by [`TlsConnector`] (an implementation detail of
/// [`tokio_postgres::tls::TlsConnect`]).
pub struct TlsHandshake {
    inner: Result<RustlsConnect, String>,
    progress: Arc<Progress>,
}

impl fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsHandshake")
            .field("ready", &self.inner.is_ok())
            .finish()
    }
}

impl TlsConnect<Socket> for TlsHandshake {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let progress = self.progress;
        progress.attempted.store(true, Ordering::Relaxed);
        match self.inner {
            Ok(connect) => Box::pin(async move {
                let mut inner = connect
                    .connect(stream)
                    .await
                    .map_err(readable_handshake_error)?;
                progress.established.store(true, Ordering::Relaxed);
                let end_point = {
                    let tls = Pin::new(&mut inner).project_stream();
                    let (_, session) = tls.get_ref();
                    session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| tls_server_end_point(c))
                };
                Ok(PgTlsStream { inner, end_point })
            }),
            Err(message) => {
                Box::pin(async move { Err(io::Error::new(io::ErrorKind::InvalidInput, message)) })
            }
        }
    }
}

/// A TLS stream to the server, with the `tls-server-end-point` channel binding data that
/// SCRAM-SHA-256-PLUS needs (an implementation detail of [`tokio_postgres::tls::TlsStream`]).
///
/// tokio-postgres-rustls 0.13 never provides channel binding (it decodes the certificate as
/// a bare `TBSCertificate`, which always fails), so it is computed here.
pub struct PgTlsStream {
    inner: RustlsStream,
    end_point: Option<Vec<u8>>,
}

impl fmt::Debug for PgTlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTlsStream")
            .field("channel_binding", &self.end_point.is_some())
            .finish()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.end_point {
            Some(hash) => ChannelBinding::tls_server_end_point(hash.clone()),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature's hash function
/// (MD5 and SHA-1 upgraded to SHA-256). `None` for algorithms PostgreSQL cannot bind either
/// (RSA-PSS, Ed25519) and for SHA-512 (no SHA-512 in rustls's hash providers).
fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    const RSA: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: [u8; 7] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_algorithm_oid(cert)?;
    let algorithm = match oid {
        [rsa @ .., 4 | 5 | 11] if rsa == RSA => HashAlgorithm::SHA256,
        [rsa @ .., 12] if rsa == RSA => HashAlgorithm::SHA384,
        [ecdsa @ .., 2] if ecdsa == ECDSA_SHA2 => HashAlgorithm::SHA256,
        [ecdsa @ .., 3] if ecdsa == ECDSA_SHA2 => HashAlgorithm::SHA384,
        o if o == ECDSA_SHA1 => HashAlgorithm::SHA256,
        _ => return None,
    };
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .filter_map(|suite| suite.tls13())
        .map(|suite| suite.common.hash_provider)
        .find(|hash| hash.algorithm() == algorithm)
        .map(|hash| hash.hash(cert).as_ref().to_vec())
}

/// The DER bytes of the `signatureAlgorithm` OID of an X.509 certificate.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let certificate = der_element(cert).filter(|e| e.tag == 0x30)?;
    let tbs = der_element(certificate.content).filter(|e| e.tag == 0x30)?;
    let algorithm = der_element(tbs.rest).filter(|e| e.tag == 0x30)?;
    let oid = der_element(algorithm.content).filter(|e| e.tag == 0x06)?;
    Some(oid.content)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, SanType};

    use super::super::trust::tests::{Made, V1_CA, V1_LEAF, V1_LEAF_KEY, ca, make, pem_cert};
    use super::*;

    fn settings(verify: Verify, root: Option<PathBuf>) -> TlsSettings {
        TlsSettings {
            verify,
            root_cert: root,
            crl: None,
            crl_dir: None,
            client_cert: None,
            sni: true,
            tls12: true,
            tls13: true,
        }
    }

    #[test]
    fn missing_root_certificate_names_the_file() {
        let err = settings(Verify::Full, Some("/nonexistent/root.crt".into()))
            .client()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root certificate file \"/nonexistent/root.crt\" does not exist"),
            "{err}"
        );
    }

    #[test]
    fn root_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.crt");
        fs::write(&path, "not a certificate\n").unwrap();
        let err = settings(Verify::Chain, Some(path))
            .client()
            .unwrap_err()
            .to_string();
        assert!(err.contains("contains no PEM certificate"), "{err}");
    }

    #[test]
    fn no_verification_builds_without_files() {
        let client = settings(Verify::Nothing, None).client().unwrap();
        assert_eq!(client.config.alpn_protocols, vec![b"postgresql".to_vec()]);
        let mut s = settings(Verify::Nothing, None);
        s.tls12 = false;
        s.sni = false;
        assert!(!s.client().unwrap().config.enable_sni);
    }

    #[test]
    fn private_key_permissions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        fs::write(&key, "x").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private_key(&key).unwrap_err().to_string();
        assert!(err.contains("has group or world access"), "{err}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_private_key(&key).unwrap_err().to_string();
        assert!(err.contains("private key file"), "{err}");
    }

    /// Self-signed, ECDSA P-256 with SHA-256.
    const ECDSA_SHA256_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUN14qdk7DDUcsDw+V0c7hangEPvcwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdW5yZWxhdGVkIHRlc3QgQ0EwIBcNMjYxMTI1MjMxNDIxWhgP
MjEyNjExMDEyMzE0MjFaMBwxGjAYBgNVBAMMEXVucmVsYXRlZCB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEo5Aw0Gdj0oCjBnBfhoiOkGqs92bQkLOG
ObetZiBsyTPHu3LzSQ5GrSJ+oC1mLBfzgwMK+m5DSsA4bCuxDC1I8KNjMGEwHQYD
VR0OBBYEFEo2GrCrs5JRtv2HjI5GjkOuQRJ+MB8GA1UdIwQYMBaAFEo2GrCrs5JR
tv2HjI5GjkOuQRJ+MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoG
CCqGSM49BAMCA0gAMEUCIQD5T5yt9MnubUtET1T5NmGU+0hy9vZOB/qPkWz40w9A
XQIgQznIKvi6Obf+paR4fWB3QNex65oFyeZJodlNkMbalLU=
-----END CERTIFICATE-----
";

    /// Self-signed, RSA with SHA-384.
    const RSA_SHA384_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDBTCCAe2gAwIBAgIUV3XQZxmyGaSMBpyWiD10XD/C1/UwDQYJKoZIhvcNAQEM
BQAwETEPMA0GA1UEAwwGcnNhMzg0MCAXDTI2MTEyNTIzMTkyMVoYDzIxMjYxMTAx
MjMxOTIxWjARMQ8wDQYDVQQDDAZyc2EzODQwggEiMA0GCSqGSIb3DQEBAQUAA4IB
DwAwggEKAoIBAQDmI/upbAhpdBXHAZntAdHenfcdikMCmqgmA2ER4wBxUWQ+EcxC
+uQEikmU7ypjucgiHfST+MPzFj7Ni7sWGlPVWgq8H46XOw9Fgf5UVht7t635y8tJ
9nphU87pIR3M01pZ2/yc/c3yaA+4vykugUIgS5QZEA+JCuFJXZ8w3EdLI4vE8VfR
tc/qSWprRsz0XP4PDyOeJfHJnXtufKoIORBfwLGtu/KYeKJ2MOlQCqnupL+8OVBe
px/iJ1GFvIqNvRTyIzdlj7BDwORX3oa+OEoWiefmB3OUbTrVaryHD5LL4/DQyZGN
FdIPpxLvFJmhpyVy5P1l28hz4D4hbz2AUi/RAgMBAAGjUzBRMB0GA1UdDgQWBBQZ
JC7br520QkqhHrr1869wI76IszAfBgNVHSMEGDAWgBQZJC7br520QkqhHrr1869w
I76IszAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBDAUAA4IBAQA6WEfhddG0
nDN/Ekt/UKklpkFzXsY7pkfOb0b/JLljXyo2PozpWMAQpN1k4kGJAZ/bLPKQCEmw
41WsMY4njgcJHzm7AYYD92bzlt0JLjcXsyy6A/H0VJSlh9bwvkBWHXKO1bqffdie
CLKSH1/iKYRhfHCbv1ZN8TK6b6zzFoCpEDOLcSIkVKF0qnWo7ib06cCmVWNFmmn8
Ue65QidzfNeDME9/Ltqd4QOAyuAC4S/f2gxarEawD6LiQV11Y9AZ/zb99sOIFQN1
4Ci+DakcgZdImeVddmvDc5gEMoplkKGwnvXffYL3uuha/M2ZFAGKNZvpO0RUjB7I
03ah9IctcxeW
-----END CERTIFICATE-----
";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn channel_binding_hashes_match_openssl() {
        // `openssl x509 -outform der | sha256sum` (resp. sha384sum).
        let cases = [
            (
                ECDSA_SHA256_CERT,
                "abfcfd166448d0df09485cec54044dd7fddbd860478a00226e7286ddfc490068",
            ),
            (
                RSA_SHA384_CERT,
                "000ea39849b93a6a571c8ccf07d08bd113c623be709eef95dd041ae2aa4fba30aa7890a858f8e40322503af4c5a726ee",
            ),
        ];
        for (pem, want) in cases {
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(
                tls_server_end_point(&der).map(|h| hex(&h)).as_deref(),
                Some(want)
            );
        }
        assert_eq!(tls_server_end_point(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(tls_server_end_point(&[]), None);
    }

    /// 2030-01-01, inside every test certificate's validity.
    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_893_456_000))
    }

    /// A verifier of one handshake with `host`, checking with `roots` (`Full`: the name too).
    fn verifier(roots: &[Cert], verify: Verify, host: Option<&str>) -> LibpqVerifier {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        LibpqVerifier {
            check: Some(Arc::new(Check {
                trust: Trust::new(
                    roots.to_vec(),
                    "root certificate file \"root.crt\"".to_owned(),
                    None,
                    algorithms,
                ),
                host_name: verify == Verify::Full,
            })),
            host: host.map(str::to_owned),
            algorithms,
            progress: Arc::default(),
        }
    }

    /// The verdict on `leaf` as a connection error shows it.
    fn verdict(verifier: &LibpqVerifier, leaf: &[u8]) -> Result<(), String> {
        let name = ServerName::try_from("ignored.example").unwrap();
        verifier
            .verify_server_cert(&CertificateDer::from(leaf.to_vec()), &[], &name, &[], now())
            .map(|_| ())
            .map_err(|e| {
                readable_handshake_error(io::Error::new(io::ErrorKind::InvalidData, e)).to_string()
            })
    }

    fn with_names(ca_cert: &Made, names: &[&str]) -> Made {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        make("localhost", Some(ca_cert), |p: &mut CertificateParams| {
            p.subject_alt_names = names
                .iter()
                .map(|n| SanType::DnsName(n.clone().try_into().unwrap()))
                .collect();
        })
    }

    #[test]
    fn the_host_name_is_matched_as_written() {
        // D8: rustls drops a trailing dot from the server name; libpq compares the host as
        // written.
        let ca_cert = make("CA", None, ca);
        let roots = [ca_cert.parsed()];
        let wild = with_names(&ca_cert, &["*.example.com"]);
        let full = |host| verifier(&roots, Verify::Full, Some(host));
        assert_eq!(verdict(&full("a.example.com"), wild.cert.der()), Ok(()));
        assert_eq!(
            verdict(&full("a.example.com."), wild.cert.der()),
            Err(
                "server certificate not trusted: the server certificate \"CN=localhost\" does \
                 not match host name \"a.example.com.\": it is for DNS:*.example.com, \
                 CN=localhost (not used: the certificate has subjectAltNames)"
                    .to_owned()
            )
        );
        let dotted = with_names(&ca_cert, &["localhost."]);
        assert_eq!(verdict(&full("localhost."), dotted.cert.der()), Ok(()));
        let plain = with_names(&ca_cert, &["localhost"]);
        assert!(verdict(&full("localhost."), plain.cert.der()).is_err());
        assert_eq!(verdict(&full("LOCALHOST"), plain.cert.der()), Ok(()));
        // verify-ca does not look at the name.
        let chain = verifier(&roots, Verify::Chain, Some("elsewhere.example"));
        assert_eq!(verdict(&chain, plain.cert.der()), Ok(()));
        // Only hostaddr: no name to match for verify-full.
        let no_name = verifier(&roots, Verify::Full, None);
        let err = verdict(&no_name, plain.cert.der()).unwrap_err();
        assert!(err.contains("needs a host name"), "{err}");
        assert_eq!(
            verdict(&verifier(&roots, Verify::Chain, None), plain.cert.der()),
            Ok(())
        );
    }

    #[test]
    fn refusals_are_in_words_and_say_when_libpq_might_differ() {
        let ca_cert = make("CA", None, ca);
        let other = make("other CA", None, ca);
        let leaf = with_names(&ca_cert, &["localhost"]);
        let v = verifier(&[other.parsed()], Verify::Full, Some("localhost"));
        let err = verdict(&v, leaf.cert.der()).unwrap_err();
        assert!(
            err.starts_with(
                "server certificate not trusted: the server certificate \
                             \"CN=localhost\" is not signed by a CA of the root certificate \
                             file \"root.crt\" (unknown issuer \"CN=CA\")"
            ),
            "{err}"
        );
        assert!(!v.progress.unsupported.load(Ordering::Relaxed));
        // Garbage is refused as something we cannot read.
        let err = verdict(&v, b"\x30\x03\x02\x01\x00").unwrap_err();
        assert!(
            err.contains("the server certificate cannot be parsed"),
            "{err}"
        );
        assert!(v.progress.unsupported.load(Ordering::Relaxed));
        // The self-signed CA certificate with keyUsage keyCertSign and cRLSign that an earlier
        // version trusted as itself: OpenSSL refuses it as a server certificate (D4).
        let ecdsa = pem_cert(ECDSA_SHA256_CERT);
        let err = verdict(
            &verifier(std::slice::from_ref(&ecdsa), Verify::Chain, None),
            &ecdsa.der,
        )
        .unwrap_err();
        assert!(
            err.ends_with(
                "the server certificate \"CN=unrelated test CA\" is not for TLS servers: its \
                 key usage (keyCertSign, cRLSign) has none of digitalSignature, \
                 keyEncipherment, keyAgreement"
            ),
            "{err}"
        );
        // Version 1 server certificates are verified (D5).
        let v1 = verifier(&[pem_cert(V1_CA)], Verify::Full, Some("db.example"));
        assert_eq!(verdict(&v1, &pem_cert(V1_LEAF).der), Ok(()));
    }

    #[test]
    fn handshake_signatures_are_verified_with_any_certificate() {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        // A version 1 certificate's key (webpki cannot parse the certificate).
        let rng = ring::rand::SystemRandom::new();
        let key = PrivateKeyDer::from_pem_slice(V1_LEAF_KEY.as_bytes()).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.secret_der(), &rng)
            .unwrap();
        let message = b"TLS 1.3, server CertificateVerify";
        let signature = key.sign(&rng, message).unwrap();
        let cert = CertificateDer::from(pem_cert(V1_LEAF).der);
        let scheme = SignatureScheme::ECDSA_NISTP256_SHA256;
        let nothing = LibpqVerifier {
            check: None,
            host: None,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            progress: Arc::default(),
        };
        let verify = |message: &[u8], scheme, signature: &[u8], tls13| {
            nothing.handshake_signature(message, &cert, scheme, signature, tls13)
        };
        assert!(verify(message, scheme, signature.as_ref(), true).is_ok());
        assert!(verify(message, scheme, signature.as_ref(), false).is_ok());
        let err = verify(b"another message", scheme, signature.as_ref(), true).unwrap_err();
        let err = readable_handshake_error(io::Error::new(io::ErrorKind::InvalidData, err));
        assert_eq!(
            err.to_string(),
            "server handshake signature not accepted: it does not verify with the key of the \
             server certificate \"CN=db.example\": the server does not hold that \
             certificate's private key"
        );
        // RSA PKCS #1 is not for TLS 1.3.
        let pkcs1 = SignatureScheme::RSA_PKCS1_SHA256;
        assert!(verify(message, pkcs1, signature.as_ref(), true).is_err());
    }

    #[test]
    fn crls_are_found_as_libpq_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let ca_cert = make("CA", None, ca);
        let leaf = with_names(&ca_cert, &["localhost"]);
        fs::write(path("root.crt"), ca_cert.cert.pem()).unwrap();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2090, 1, 1),
            crl_number: rcgen::SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca_cert.cert, &ca_cert.key)
        .unwrap()
        .pem()
        .unwrap();
        let hash = ca_cert.parsed().subject.hash();
        fs::create_dir(path("hashed")).unwrap();
        fs::write(path("hashed").join(format!("{hash:08x}.r0")), &crl).unwrap();
        fs::create_dir(path("unhashed")).unwrap();
        fs::write(path("unhashed").join("ca.crl"), &crl).unwrap();
        fs::write(path("root.crl"), &crl).unwrap();
        fs::write(path("empty.crl"), "").unwrap();
        let check = |crl: Option<(&str, bool)>, crl_dir: Option<&str>| {
            let mut s = settings(Verify::Chain, Some(path("root.crt")));
            s.crl = crl.map(|(f, explicit)| (path(f), explicit));
            s.crl_dir = crl_dir.map(path);
            s.check(rustls::crypto::ring::default_provider().signature_verification_algorithms)
                .map(|c| {
                    c.unwrap()
                        .trust
                        .verify(&leaf.parsed(), &[], 1_893_456_000)
                        .map_err(|r| r.message)
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(check(None, None), Ok(Ok(())));
        assert_eq!(check(Some(("root.crl", true)), None), Ok(Ok(())));
        assert_eq!(check(None, Some("hashed")), Ok(Ok(())));
        let no_crl = check(None, Some("unhashed")).unwrap().unwrap_err();
        assert!(
            no_crl.starts_with("no certificate revocation list of sslcrldir"),
            "{no_crl}"
        );
        // The default ~/.postgresql/root.crl only when it exists (and holds something).
        assert_eq!(check(Some(("absent.crl", false)), None), Ok(Ok(())));
        assert_eq!(check(Some(("empty.crl", false)), None), Ok(Ok(())));
        // sslcrl or sslcrldir set but missing or empty: an error naming it.
        let err = check(Some(("absent.crl", true)), None).unwrap_err();
        assert!(err.contains("absent.crl\" does not exist"), "{err}");
        let err = check(Some(("empty.crl", true)), None).unwrap_err();
        assert!(
            err.contains("contains no PEM certificate revocation list"),
            "{err}"
        );
        let err = check(None, Some("no-such-dir")).unwrap_err();
        assert!(err.contains("no-such-dir\" does not exist"), "{err}");
    }

    #[test]
    fn roots_we_cannot_read_make_a_refusal_uncertain() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.crt");
        let ca_cert = make("CA", None, ca);
        let other = make("other CA", None, ca);
        // A certificate x509-cert cannot parse (OpenSSL might) beside another CA.
        let garbage = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        fs::write(&root, format!("{garbage}{}", other.cert.pem())).unwrap();
        let check = settings(Verify::Chain, Some(root))
            .check(rustls::crypto::ring::default_provider().signature_verification_algorithms)
            .unwrap()
            .unwrap();
        let leaf = with_names(&ca_cert, &["localhost"]);
        let refusal = check
            .trust
            .verify(&leaf.parsed(), &[], 1_893_456_000)
            .unwrap_err();
        assert!(refusal.unsupported, "{refusal}");
        assert!(
            refusal.message.contains(
                "(unknown issuer \"CN=CA\"); 1 certificate(s) of the root certificate file"
            ) && refusal.message.contains(
                "could not be read here, one of which might be the \
                                           issuer (first: certificate 1 cannot be parsed"
            ),
            "{refusal}"
        );
    }

    #[test]
    fn connector_without_tls_or_name_fails_lazily() {
        let mut none = TlsConnector::new(None);
        assert!(none.make_tls_connect("h").is_ok());
        let mut some = TlsConnector::new(Some(settings(Verify::Nothing, None).client().unwrap()));
        assert!(some.make_tls_connect("").is_ok());
        assert!(some.make_tls_connect("127.0.0.1").is_ok());
        assert!(some.make_tls_connect("::1").is_ok());
        assert!(some.make_tls_connect("localhost.").is_ok());
        assert!(!some.attempted() && !some.established() && !some.unsupported());
    }
}
