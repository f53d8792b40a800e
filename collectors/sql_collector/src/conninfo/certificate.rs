//! What a server certificate says, as libpq (OpenSSL) reads it: its names for `verify-full`,
//! its validity period, and the words a DBA needs when it is not trusted.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rustls::pki_types::{ServerName, UnixTime};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::oid::AssociatedOid as _;
use x509_cert::der::{DateTime, Decode as _, Encode as _, Tag, Tagged as _};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};

/// `commonName` (2.5.4.3).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// `id-kp-serverAuth` (1.3.6.1.5.5.7.3.1).
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// `anyExtendedKeyUsage` (2.5.29.37.0).
const ANY_EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");

/// A name the certificate is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CertName {
    /// A subjectAltName dNSName (maybe `*.` wildcard).
    Dns(String),
    /// A subjectAltName iPAddress (4 or 16 bytes).
    Ip(Vec<u8>),
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Dns(name) => write!(f, "DNS:{name}"),
            CertName::Ip(bytes) => match ip_from_bytes(bytes) {
                Some(ip) => write!(f, "IP:{ip}"),
                None => write!(f, "IP:<{} bytes>", bytes.len()),
            },
        }
    }
}

/// The parts of a server certificate that verification and its messages need.
#[derive(Debug, Clone)]
pub(super) struct ServerCertificate {
    /// Subject, RFC 4514 (`CN=db1,O=Example`).
    pub(super) subject: String,
    /// Issuer, RFC 4514.
    pub(super) issuer: String,
    /// DER of the subject and issuer names, to compare them exactly.
    subject_der: Vec<u8>,
    issuer_der: Vec<u8>,
    /// The first commonName of the subject, as libpq uses it.
    common_name: Option<String>,
    names: Vec<CertName>,
    not_before: u64,
    not_after: u64,
    /// basicConstraints CA:TRUE.
    pub(super) is_ca: bool,
    /// The extended key usages, when the extension is present.
    extended_key_usage: Option<Vec<ObjectIdentifier>>,
}

impl ServerCertificate {
    /// Parses a DER certificate.
    pub(super) fn parse(der: &[u8]) -> Result<Self, String> {
        let cert = Certificate::from_der(der).map_err(|e| format!("cannot be parsed: {e}"))?;
        let tbs = &cert.tbs_certificate;
        let common_name = tbs
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .find(|atv| atv.oid == COMMON_NAME)
            .and_then(|atv| match atv.value.tag() {
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
                    std::str::from_utf8(atv.value.value())
                        .ok()
                        .map(str::to_owned)
                }
                _ => None,
            });
        let mut names = Vec::new();
        let mut is_ca = false;
        let mut extended_key_usage = None;
        for ext in tbs.extensions.iter().flatten() {
            let value = ext.extn_value.as_bytes();
            let bad = |what: &str, e: x509_cert::der::Error| format!("has a malformed {what}: {e}");
            if ext.extn_id == SubjectAltName::OID {
                let san = SubjectAltName::from_der(value).map_err(|e| bad("subjectAltName", e))?;
                for name in san.0 {
                    match name {
                        GeneralName::DnsName(dns) => names.push(CertName::Dns(dns.to_string())),
                        GeneralName::IpAddress(ip) => {
                            names.push(CertName::Ip(ip.as_bytes().to_vec()));
                        }
                        _ => {}
                    }
                }
            } else if ext.extn_id == BasicConstraints::OID {
                is_ca = BasicConstraints::from_der(value)
                    .map_err(|e| bad("basicConstraints", e))?
                    .ca;
            } else if ext.extn_id == ExtendedKeyUsage::OID {
                let eku =
                    ExtendedKeyUsage::from_der(value).map_err(|e| bad("extendedKeyUsage", e))?;
                extended_key_usage = Some(eku.0);
            }
        }
        let der_of = |name: &x509_cert::name::Name| name.to_der().unwrap_or_default();
        Ok(ServerCertificate {
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            subject_der: der_of(&tbs.subject),
            issuer_der: der_of(&tbs.issuer),
            common_name,
            names,
            not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
            not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
            is_ca,
            extended_key_usage,
        })
    }

    /// Whether it names itself as its issuer.
    pub(super) fn is_self_issued(&self) -> bool {
        self.subject_der == self.issuer_der
    }

    /// Whether `issuer`'s subject is this certificate's issuer.
    pub(super) fn is_named_issuer(&self, issuer: &ServerCertificate) -> bool {
        self.issuer_der == issuer.subject_der
    }

    /// `"CN=db1"`, for messages.
    pub(super) fn describe(&self) -> String {
        format!("\"{}\"", self.subject)
    }

    /// The validity period at `now`, as OpenSSL checks it.
    pub(super) fn check_validity(&self, now: UnixTime) -> Result<(), String> {
        let now = now.as_secs();
        if now < self.not_before {
            return Err(format!(
                "the server certificate {} is not valid before {} (now {})",
                self.describe(),
                date(self.not_before),
                date(now)
            ));
        }
        if now > self.not_after {
            return Err(format!(
                "the server certificate {} expired on {} (now {})",
                self.describe(),
                date(self.not_after),
                date(now)
            ));
        }
        Ok(())
    }

    /// The expired or not-yet-valid message for a certificate of the chain: this one if its
    /// own dates are at fault, else one the server sent with it (`bound` from rustls).
    pub(super) fn explain_dates(&self, now: UnixTime, bound: Option<UnixTime>) -> String {
        match self.check_validity(now) {
            Err(message) => message,
            Ok(()) => format!(
                "an intermediate certificate the server sent with {} is outside its validity \
                 period{} (now {})",
                self.describe(),
                bound.map_or_else(String::new, |b| format!(" ({})", date(b.as_secs()))),
                date(now.as_secs())
            ),
        }
    }

    /// The purpose check OpenSSL applies to a server certificate: an extended key usage, if
    /// present, allows TLS servers.
    pub(super) fn check_server_purpose(&self) -> Result<(), String> {
        match &self.extended_key_usage {
            Some(usages)
                if !usages
                    .iter()
                    .any(|u| *u == SERVER_AUTH || *u == ANY_EXTENDED_KEY_USAGE) =>
            {
                Err(format!(
                    "the server certificate {} is not for TLS servers (its extended key usage \
                     lacks serverAuth)",
                    self.describe()
                ))
            }
            _ => Ok(()),
        }
    }

    /// libpq's host name check for `verify-full`: the subjectAltName dNSNames (against the
    /// host as written, wildcards `*.` allowed) and iPAddresses (against an IP host); the
    /// commonName only when there is no subjectAltName of the host's kind.
    pub(super) fn check_name(&self, server_name: &ServerName<'_>) -> Result<(), String> {
        let (host, ip) = match server_name {
            ServerName::DnsName(name) => (name.as_ref().to_owned(), None),
            ServerName::IpAddress(ip) => {
                let ip = IpAddr::from(*ip);
                (ip.to_string(), Some(ip))
            }
            other => (format!("{other:?}"), None),
        };
        let mut has_dns = false;
        let mut has_ip = false;
        for name in &self.names {
            let matched = match name {
                CertName::Dns(pattern) => {
                    has_dns = true;
                    name_matches(pattern, &host)
                }
                CertName::Ip(bytes) => {
                    has_ip = true;
                    ip.is_some_and(|ip| ip_from_bytes(bytes) == Some(ip))
                }
            };
            if matched {
                return Ok(());
            }
        }
        let use_common_name = if ip.is_some() { !has_ip } else { !has_dns };
        if use_common_name
            && let Some(cn) = &self.common_name
            && name_matches(cn, &host)
        {
            return Ok(());
        }
        let mut listed: Vec<String> = self.names.iter().map(ToString::to_string).collect();
        if let Some(cn) = &self.common_name {
            listed.push(if use_common_name {
                format!("CN={cn}")
            } else {
                format!("CN={cn} (not used: the certificate has subjectAltNames)")
            });
        }
        Err(format!(
            "the server certificate {} does not match host name \"{host}\": it is for {}",
            self.describe(),
            if listed.is_empty() {
                "no name at all".to_owned()
            } else {
                listed.join(", ")
            }
        ))
    }
}

/// libpq's comparison of a certificate name with the host: equal ignoring ASCII case, or a
/// leading `*.` wildcard standing for exactly one label.
fn name_matches(pattern: &str, host: &str) -> bool {
    if pattern.contains('\0') {
        return false;
    }
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    if !suffix.starts_with('.') || suffix.len() < 2 || host.len() < suffix.len() + 1 {
        return false;
    }
    let at = host.len() - suffix.len();
    host.is_char_boundary(at) && {
        let (label, rest) = host.split_at(at);
        rest.eq_ignore_ascii_case(suffix) && !label.contains('.')
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// Unix seconds as `2025-01-31T12:00:00Z`.
fn date(secs: u64) -> String {
    DateTime::from_unix_duration(Duration::from_secs(secs))
        .map_or_else(|_| format!("{secs} (Unix time)"), |d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_name_rules() {
        assert!(name_matches("db.example.com", "DB.Example.com"));
        assert!(name_matches("*.example.com", "db.example.com"));
        assert!(!name_matches("*.example.com", "a.db.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("*example.com", "dbexample.com"));
        assert!(!name_matches("db*.example.com", "db1.example.com"));
        assert!(!name_matches("*.", "a."));
        assert!(!name_matches("db\0.evil", "db"));
        assert!(
            !name_matches("*.example.com", "aéexample.com"),
            "no panic inside a character"
        );
    }

    #[test]
    fn dates_are_readable() {
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        assert_eq!(date(1_580_515_200), "2020-02-01T00:00:00Z");
    }
}
