//! TLS for PostgreSQL connections with rustls, following libpq's `sslmode` rules.
//!
//! | `sslmode`     | server certificate checked                                        |
//! |---------------|-------------------------------------------------------------------|
//! | `disable`     | no TLS                                                            |
//! | `allow`, `prefer`, `require` | not checked, unless a root certificate file exists (`sslrootcert`, or `~/.postgresql/root.crt`): then as `verify-ca` |
//! | `verify-ca`   | chain up to `sslrootcert`, any host name                          |
//! | `verify-full` | chain up to `sslrootcert`, and the host name by libpq's rules     |
//!
//! As with libpq (OpenSSL), a server certificate that is itself in the root certificate file is
//! trusted as it is: the self-signed certificate PostgreSQL's documentation makes with
//! `openssl req -x509`, which carries `CA:TRUE` and which webpki alone refuses as a server
//! certificate (`CaUsedAsEndEntity`). Its validity period and extended key usage are checked
//! still (not a CRL, which cannot be about a trust anchor). `verify-full` matches the host
//! against the subjectAltName DNS names (wildcards `*.`) and IP addresses, and against the
//! Common Name when the certificate has no subjectAltName of the host's kind, as libpq does.
//! An untrusted certificate is explained in words: not signed by a CA of the root file
//! (unknown issuer), expired on a date, not yet valid, not for that host name (with the names
//! it has), revoked.
//!
//! `sslrootcert=system` uses the system's trusted roots and requires `verify-full`, as in
//! libpq 16+. Client certificates come from `sslcert`/`sslkey` (default
//! `~/.postgresql/postgresql.crt` and `.key` when they exist); CRLs from `sslcrl` (default
//! `~/.postgresql/root.crl`) and `sslcrldir`.

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

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::hash::HashAlgorithm;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::ConnInfoError;
use super::certificate::ServerCertificate;

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
    pub(super) crl: Option<PathBuf>,
    pub(super) crl_dir: Option<PathBuf>,
    pub(super) client_cert: Option<(PathBuf, PathBuf)>,
    pub(super) sni: bool,
    /// Allowed TLS 1.2 (rustls has nothing older) and TLS 1.3.
    pub(super) tls12: bool,
    pub(super) tls13: bool,
}

impl TlsSettings {
    /// Builds the rustls client configuration.
    pub(super) fn client_config(&self) -> Result<ClientConfig, ConnInfoError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
        if self.tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if self.tls12 {
            versions.push(&rustls::version::TLS12);
        }
        let verifier = self.verifier(&provider)?;
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .map_err(|e| ConnInfoError::Tls(format!("cannot select TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_cert {
            Some((cert, key)) => {
                let chain = read_certificates(cert, "client certificate file")?;
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
        Ok(config)
    }

    fn verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ServerCertVerifier>, ConnInfoError> {
        if self.verify == Verify::Nothing {
            return Ok(Arc::new(NoVerification {
                algorithms: provider.signature_verification_algorithms,
            }));
        }
        let roots = match &self.root_cert {
            Some(path) => read_certificates(path, "root certificate file")?,
            None => system_roots()?,
        };
        let roots_source = self.root_cert.as_ref().map_or_else(
            || "the system's CA bundle".to_owned(),
            |p| format!("root certificate file \"{}\"", p.display()),
        );
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(roots.iter().cloned());
        if added == 0 {
            return Err(ConnInfoError::Tls(format!(
                "no usable CA certificate in {roots_source}"
            )));
        }
        let mut crls = Vec::new();
        if let Some(path) = &self.crl {
            crls.extend(read_crls(path)?);
        }
        if let Some(dir) = &self.crl_dir {
            crls.extend(read_crl_dir(dir)?);
        }
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(provider))
                .with_crls(crls)
                .build()
                .map_err(|e| {
                    ConnInfoError::Tls(format!("cannot build the certificate verifier: {e}"))
                })?;
        Ok(Arc::new(LibpqVerifier {
            webpki,
            roots,
            roots_source,
            check_name: self.verify == Verify::Full,
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

fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConnInfoError> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnInfoError::File {
            what,
            path: path.to_owned(),
            reason: format!("{e}"),
        })?;
    if certs.is_empty() {
        return Err(ConnInfoError::File {
            what,
            path: path.to_owned(),
            reason: "contains no PEM certificate".to_owned(),
        });
    }
    Ok(certs)
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

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ConnInfoError> {
    const WHAT: &str = "certificate revocation list file";
    let pem = read_file(path, WHAT)?;
    CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnInfoError::File {
            what: WHAT,
            path: path.to_owned(),
            reason: format!("{e}"),
        })
}

fn read_crl_dir(dir: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ConnInfoError> {
    const WHAT: &str = "certificate revocation list directory";
    let entries = fs::read_dir(dir).map_err(|e| ConnInfoError::File {
        what: WHAT,
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let mut crls = Vec::new();
    for entry in entries.flatten() {
        if entry.path().is_file() {
            crls.extend(read_crls(&entry.path())?);
        }
    }
    Ok(crls)
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first that exists of the usual places.
fn system_roots() -> Result<Vec<CertificateDer<'static>>, ConnInfoError> {
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if path.is_file() {
            return read_certificates(&path, "system CA bundle");
        }
    }
    Err(ConnInfoError::Tls(format!(
        "sslrootcert=system: no system CA bundle found (set SSL_CERT_FILE or install one of {})",
        SYSTEM_CA_BUNDLES.join(", ")
    )))
}

/// `require` without a root certificate: any certificate, but the handshake's signatures are
/// still verified with the certificate's key (so the peer holds its key).
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca` and `verify-full` as libpq does them (see the module documentation): webpki
/// checks the chain (and revocation), or the certificate is itself a root certificate; the
/// name is checked by libpq's rules for `verify-full` only.
#[derive(Debug)]
struct LibpqVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The root certificates.
    roots: Vec<CertificateDer<'static>>,
    /// Where the roots come from, for messages (`root certificate file "…"`).
    roots_source: String,
    check_name: bool,
}

impl LibpqVerifier {
    /// Why a CA certificate (which webpki never accepts as server certificate) that is not
    /// itself a root certificate is not trusted.
    fn ca_not_in_roots(&self, cert: &ServerCertificate) -> String {
        if cert.is_self_issued() {
            self.self_signed_not_in_roots(cert)
        } else if self.roots.iter().any(|root| {
            ServerCertificate::parse(root).is_ok_and(|root| cert.is_named_issuer(&root))
        }) {
            format!(
                "the server certificate {} is a CA certificate (basicConstraints CA:TRUE) \
                 signed by \"{}\", which is accepted as server certificate only when it is \
                 itself in the {}: reissue it without CA:TRUE, or add it there",
                cert.describe(),
                cert.issuer,
                self.roots_source
            )
        } else {
            self.unknown_issuer(cert)
        }
    }

    fn self_signed_not_in_roots(&self, cert: &ServerCertificate) -> String {
        format!(
            "the server certificate {} is self-signed and is not one of the certificates of the \
             {} (unknown issuer)",
            cert.describe(),
            self.roots_source
        )
    }

    fn unknown_issuer(&self, cert: &ServerCertificate) -> String {
        format!(
            "the server certificate {} is not signed by a CA of the {} (unknown issuer \"{}\")",
            cert.describe(),
            self.roots_source,
            cert.issuer
        )
    }

    /// webpki's verdict on `cert`, in words.
    fn explain(&self, cert: &ServerCertificate, error: &rustls::Error, now: UnixTime) -> String {
        let what = cert.describe();
        let rustls::Error::InvalidCertificate(error) = error else {
            return format!("the server certificate {what} is not trusted: {error}");
        };
        match error {
            CertificateError::UnknownIssuer if cert.is_self_issued() => {
                self.self_signed_not_in_roots(cert)
            }
            CertificateError::UnknownIssuer => self.unknown_issuer(cert),
            CertificateError::Expired | CertificateError::NotValidYet => {
                cert.explain_dates(now, None)
            }
            CertificateError::ExpiredContext { not_after, .. } => {
                cert.explain_dates(now, Some(*not_after))
            }
            CertificateError::NotValidYetContext { not_before, .. } => {
                cert.explain_dates(now, Some(*not_before))
            }
            CertificateError::Revoked => format!(
                "the server certificate {what}, or a certificate of its chain, is revoked by a \
                 certificate revocation list of sslcrl/sslcrldir"
            ),
            CertificateError::UnknownRevocationStatus => format!(
                "the revocation status of the server certificate {what} is unknown: no \
                 certificate revocation list of sslcrl/sslcrldir is from its issuer \"{}\"",
                cert.issuer
            ),
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                "a certificate revocation list of sslcrl/sslcrldir is past its next update"
                    .to_owned()
            }
            CertificateError::BadSignature => format!(
                "the signature of the server certificate {what} does not verify with the key \
                 of its issuer \"{}\"",
                cert.issuer
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!("the server certificate {what} is not for TLS servers (extended key usage)")
            }
            other => format!("the server certificate {what} is not trusted: {other}"),
        }
    }
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ServerCertificate::parse(end_entity)
            .map_err(|e| untrusted(format!("the server certificate {e}")))?;
        if self
            .roots
            .iter()
            .any(|root| root.as_ref() == end_entity.as_ref())
        {
            // Trusted as it is, as OpenSSL trusts a certificate of its store.
            cert.check_validity(now).map_err(untrusted)?;
            cert.check_server_purpose().map_err(untrusted)?;
        } else if cert.is_ca {
            return Err(untrusted(self.ca_not_in_roots(&cert)));
        } else {
            // webpki checks the name last: a name error means the chain is good, and the name
            // is libpq's to judge below.
            match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_)
                | Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(untrusted(self.explain(&cert, &e, now))),
            }
        }
        if self.check_name {
            cert.check_name(server_name).map_err(untrusted)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Why the server certificate is not trusted, in words; carried through rustls as
/// `CertificateError::Other` and shown as it is by [`TlsHandshake`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Untrusted(String);

fn untrusted(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Untrusted(message),
    ))))
}

/// A handshake error, with an [`Untrusted`] certificate shown in its words (rustls would
/// print `invalid peer certificate: Other(OtherError(…))`).
fn readable_handshake_error(error: io::Error) -> io::Error {
    let words = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<Untrusted>()
            }
            _ => None,
        })
        .map(|u| format!("server certificate not trusted: {u}"));
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
}

/// The TLS connector for [`tokio_postgres`], built by
/// [`ConnInfo::cancel_tls`](super::ConnInfo::cancel_tls) with the connection's TLS settings:
/// pass it to [`tokio_postgres::CancelToken::cancel_query`].
///
/// Unlike `tokio_postgres_rustls::MakeRustlsConnect` it accepts connections without a TLS
/// host name (unix sockets, which never use TLS) and reports whether TLS was attempted.
#[derive(Clone)]
pub struct TlsConnector {
    inner: Option<MakeRustlsConnect>,
    progress: Arc<Progress>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl TlsConnector {
    /// A connector that uses `config`, or never does TLS when `None` (`sslmode=disable`).
    pub(super) fn new(config: Option<ClientConfig>) -> Self {
        Self {
            inner: config.map(MakeRustlsConnect::new),
            progress: Arc::default(),
        }
    }

    /// The same settings with fresh progress flags, for one connection attempt.
    pub(super) fn fresh(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            progress: Arc::default(),
        }
    }

    /// Whether a TLS handshake was started through this connector.
    pub(super) fn attempted(&self) -> bool {
        self.progress.attempted.load(Ordering::Relaxed)
    }

    /// Whether a TLS handshake completed through this connector.
    pub(super) fn established(&self) -> bool {
        self.progress.established.load(Ordering::Relaxed)
    }
}

impl MakeTlsConnect<Socket> for TlsConnector {
    type Stream = PgTlsStream;
    type TlsConnect = TlsHandshake;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsHandshake, io::Error> {
        let inner = match &mut self.inner {
            None => Err("TLS is disabled (sslmode=disable)".to_owned()),
            Some(_) if domain.is_empty() => Err("no host name for the TLS handshake".to_owned()),
            Some(make) => MakeTlsConnect::<Socket>::make_tls_connect(make, domain)
                .map_err(|e| format!("invalid TLS server name \"{domain}\": {e}")),
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
    let (0x30, certificate, _) = der_tlv(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der_tlv(certificate)? else {
        return None;
    };
    let (0x30, algorithm, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// One DER tag-length-value: `(tag, content, rest)`.
fn der_tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = der
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |l, b| l << 8 | usize::from(*b));
        (len, 2 + n)
    };
    let content = der.get(header..header.checked_add(len)?)?;
    Some((tag, content, &der[header + len..]))
}

#[cfg(test)]
mod tests {
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
            .client_config()
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
            .client_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("contains no PEM certificate"), "{err}");
    }

    #[test]
    fn no_verification_builds_without_files() {
        let config = settings(Verify::Nothing, None).client_config().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
        let mut s = settings(Verify::Nothing, None);
        s.tls12 = false;
        s.sni = false;
        assert!(!s.client_config().unwrap().enable_sni);
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
        assert_eq!(der_tlv(&[0x30, 0x82, 0x01]), None, "truncated length");
    }

    /// A verifier for `verify-full` (or `verify-ca`) trusting `root_pem`.
    fn libpq_verifier(root_pem: &str, check_name: bool) -> LibpqVerifier {
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap();
        let mut store = RootCertStore::empty();
        store.add(root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        LibpqVerifier {
            webpki: WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .unwrap(),
            roots: vec![root],
            roots_source: "root certificate file \"root.crt\"".to_owned(),
            check_name,
        }
    }

    fn verdict(verifier: &LibpqVerifier, pem: &str, host: &str, year: u64) -> Result<(), String> {
        let cert = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let now =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs((year - 1970) * 31_556_952));
        let name = ServerName::try_from(host.to_owned()).unwrap();
        verifier
            .verify_server_cert(&cert, &[], &name, &[], now)
            .map(|_| ())
            .map_err(|e| {
                let io = readable_handshake_error(io::Error::new(io::ErrorKind::InvalidData, e));
                io.to_string()
            })
    }

    #[test]
    fn a_self_signed_ca_certificate_in_the_roots_is_trusted_as_itself() {
        // Both test certificates are self-signed with CA:TRUE, valid 2026-11-25 to 2126-11-01.
        let ca = libpq_verifier(ECDSA_SHA256_CERT, false);
        assert_eq!(verdict(&ca, ECDSA_SHA256_CERT, "any.example", 2027), Ok(()));
        let err = verdict(&ca, ECDSA_SHA256_CERT, "any.example", 2025).unwrap_err();
        assert!(
            err.starts_with(
                "server certificate not trusted: the server certificate \"CN=unrelated test CA\" \
                 is not valid before 2026-11-25T23:14:21Z"
            ),
            "{err}"
        );
        let err = verdict(&ca, ECDSA_SHA256_CERT, "any.example", 2127).unwrap_err();
        assert!(err.contains("expired on 2126-11-01T23:14:21Z"), "{err}");
        // Another self-signed certificate is no trust anchor.
        let err = verdict(&ca, RSA_SHA384_CERT, "any.example", 2027).unwrap_err();
        assert_eq!(
            err,
            "server certificate not trusted: the server certificate \"CN=rsa384\" is \
             self-signed and is not one of the certificates of the root certificate file \
             \"root.crt\" (unknown issuer)"
        );
        // verify-full: the Common Name (no subjectAltName) against the host.
        let full = libpq_verifier(RSA_SHA384_CERT, true);
        assert_eq!(verdict(&full, RSA_SHA384_CERT, "RSA384", 2027), Ok(()));
        let err = verdict(&full, RSA_SHA384_CERT, "db.example", 2027).unwrap_err();
        assert!(
            err.ends_with("does not match host name \"db.example\": it is for CN=rsa384"),
            "{err}"
        );
        let err = verdict(&full, RSA_SHA384_CERT, "127.0.0.1", 2027).unwrap_err();
        assert!(err.contains("host name \"127.0.0.1\""), "{err}");
    }

    #[test]
    fn connector_without_tls_or_name_fails_lazily() {
        let mut none = TlsConnector::new(None);
        assert!(none.make_tls_connect("h").is_ok());
        let mut some = TlsConnector::new(Some(
            settings(Verify::Nothing, None).client_config().unwrap(),
        ));
        assert!(some.make_tls_connect("").is_ok());
        assert!(some.make_tls_connect("127.0.0.1").is_ok());
        assert!(some.make_tls_connect("::1").is_ok());
        assert!(!some.attempted() && !some.established());
    }
}
