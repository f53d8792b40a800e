//! A throw-away certificate authority and a server certificate for PostgreSQL's `ssl = on`.
//!
//! One CA and one server certificate (SAN `127.0.0.1` and `localhost`, signed by the CA) are
//! generated per process with `rcgen` and copied into each server's directory, so clients can
//! test `sslmode=require`, `verify-ca` (with the CA file as root certificate) and `verify-full`
//! (host `127.0.0.1` or `localhost`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::privileges::write_service_file;

/// PEM texts of the generated CA and server certificate.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (give it to clients as root certificate).
    pub ca_cert_pem: String,
    /// The server certificate, signed by the CA, SAN 127.0.0.1 and localhost.
    pub server_cert_pem: String,
    /// The server's private key.
    pub server_key_pem: String,
}

/// Paths of one server's copies of the certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate (PEM), for `sslrootcert`.
    pub ca_cert: PathBuf,
    /// Server certificate (PEM), PostgreSQL's `ssl_cert_file`.
    pub server_cert: PathBuf,
    /// Server private key (PEM, mode 0600), PostgreSQL's `ssl_key_file`.
    pub server_key: PathBuf,
}

/// The CA and server certificate of this process (generated on first use).
pub fn test_pki() -> Result<&'static TestPki> {
    static PKI: OnceLock<Result<TestPki, String>> = OnceLock::new();
    PKI.get_or_init(|| generate().map_err(|e| format!("cannot generate test certificates: {e}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn generate() -> Result<TestPki, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pgsuite test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    Ok(TestPki {
        ca_cert_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// Writes `ca.crt`, `server.crt` and `server.key` into `dir` (owned by the service user; the key
/// mode 0600 as PostgreSQL requires).
pub fn write_tls_files(dir: &Path) -> Result<TlsFiles> {
    let pki = test_pki()?;
    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    write_service_file(&files.ca_cert, &pki.ca_cert_pem, 0o644)?;
    write_service_file(&files.server_cert, &pki.server_cert_pem, 0o644)?;
    write_service_file(&files.server_key, &pki.server_key_pem, 0o600)?;
    Ok(files)
}
