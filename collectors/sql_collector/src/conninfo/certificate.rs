//! What a certificate and a certificate revocation list say, read as OpenSSL (libpq) reads
//! them: names compared in OpenSSL's canonical form, the extensions its verification uses,
//! the signed bytes as they were sent, and libpq's host name rules for `verify-full`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use x509_cert::Version;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::der::asn1::{Any, BitString, ObjectIdentifier};
use x509_cert::der::oid::AssociatedOid as _;
use x509_cert::der::{DateTime, Decode as _, Encode as _, Tag, Tagged as _};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::name::Name as X509Name;

use super::der::der_header;
use super::signature::{Signed, key_fits_algorithm};

/// `commonName` (2.5.4.3).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// `id-kp-serverAuth` (1.3.6.1.5.5.7.3.1).
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// Netscape and Microsoft Server Gated Cryptography, which OpenSSL takes for serverAuth.
const NETSCAPE_SGC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113730.4.1");
const MICROSOFT_SGC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.10.3.3");
/// Netscape certificate type, and its bits for an SSL server and an SSL CA.
const NETSCAPE_CERT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.113730.1.1");
const NS_SSL_SERVER: u8 = 0x40;
const NS_SSL_CA: u8 = 0x04;
const NS_ANY_CA: u8 = 0x07;
/// `proxyCertInfo`, refused by OpenSSL unless proxy certificates are allowed (never in libpq).
const PROXY_CERT_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.14");
/// `nameConstraints`, and RFC 3779's IP address and AS number delegations: OpenSSL checks
/// them and we do not, so a chain that has them is refused.
const NAME_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.30");
const IP_ADDR_BLOCKS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.7");
const AS_IDENTIFIERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.8");

/// The extensions OpenSSL 3 handles (`X509_supported_extension`): any other one marked
/// critical makes it refuse the certificate.
const SUPPORTED_CRITICAL: [&str; 15] = [
    "2.16.840.1.113730.1.1", // Netscape certificate type
    "2.5.29.15",             // keyUsage
    "2.5.29.17",             // subjectAltName
    "2.5.29.19",             // basicConstraints
    "2.5.29.32",             // certificatePolicies
    "2.5.29.31",             // cRLDistributionPoints
    "2.5.29.37",             // extendedKeyUsage
    "1.3.6.1.5.5.7.1.7",     // IP address delegation (RFC 3779)
    "1.3.6.1.5.5.7.1.8",     // AS identifiers (RFC 3779)
    "1.3.6.1.5.5.7.48.1.5",  // OCSP no check
    "2.5.29.36",             // policyConstraints
    "1.3.6.1.5.5.7.1.14",    // proxyCertInfo
    "2.5.29.30",             // nameConstraints
    "2.5.29.33",             // policyMappings
    "2.5.29.54",             // inhibitAnyPolicy
];

/// A name the certificate is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CertName {
    /// A subjectAltName dNSName (maybe `*.` wildcard).
    Dns(String),
    /// A subjectAltName iPAddress (4 or 16 bytes; others are refused by libpq).
    Ip(Vec<u8>),
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Dns(name) => write!(f, "DNS:{}", name.escape_default()),
            CertName::Ip(bytes) => match ip_from_bytes(bytes) {
                Some(ip) => write!(f, "IP:{ip}"),
                None => write!(f, "IP:<{} bytes>", bytes.len()),
            },
        }
    }
}

/// A distinguished name: as written (RFC 4514) for messages, and in OpenSSL's canonical form
/// (`x509_name_canon`: strings as UTF-8, spaces trimmed and collapsed, ASCII lower case) to
/// compare, as `X509_NAME_cmp` does, and to hash, as `X509_NAME_hash` does for `sslcrldir`.
#[derive(Debug, Clone)]
pub(super) struct Name {
    pub(super) text: String,
    canonical: Vec<u8>,
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.text)
    }
}

impl Name {
    pub(super) fn new(name: &X509Name) -> Result<Self, String> {
        Ok(Name {
            text: name.to_string(),
            canonical: canonical_name(name)?,
        })
    }

    /// OpenSSL's `X509_NAME_hash`: the first four bytes of the SHA-1 of the canonical form,
    /// little-endian; `openssl rehash` names a CRL file `<hash as %08x>.r<n>`.
    pub(super) fn hash(&self) -> u32 {
        let sha1 = digest(&SHA1_FOR_LEGACY_USE_ONLY, &self.canonical);
        let b = sha1.as_ref();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// `AuthorityKeyIdentifier`: which key, or which issuer and serial, signed the certificate
/// or the CRL.
#[derive(Debug, Clone, Default)]
pub(super) struct AuthorityKeyId {
    key_id: Option<Vec<u8>>,
    issuer: Option<Name>,
    serial: Option<Vec<u8>>,
}

impl AuthorityKeyId {
    /// Reads the extension's value; OpenSSL looks at the first directoryName only.
    pub(super) fn parse(value: &[u8]) -> Result<Self, String> {
        let akid = AuthorityKeyIdentifier::from_der(value)
            .map_err(|e| format!("has a malformed authorityKeyIdentifier: {e}"))?;
        let issuer = akid
            .authority_cert_issuer
            .iter()
            .flatten()
            .find_map(|n| match n {
                GeneralName::DirectoryName(name) => Some(name),
                _ => None,
            })
            .map(Name::new)
            .transpose()?;
        Ok(AuthorityKeyId {
            key_id: akid.key_identifier.map(|k| k.as_bytes().to_vec()),
            issuer,
            serial: akid
                .authority_cert_serial_number
                .map(|s| s.as_bytes().to_vec()),
        })
    }

    /// OpenSSL's `X509_check_akid`: whatever it names of `issuer` (its key identifier, when
    /// both have one; its serial number; its issuer's name) is `issuer`'s.
    pub(super) fn names(&self, issuer: &Cert) -> bool {
        if let (Some(key_id), Some(skid)) = (&self.key_id, &issuer.subject_key_id)
            && key_id != skid
        {
            return false;
        }
        if self.serial.as_ref().is_some_and(|s| *s != issuer.serial) {
            return false;
        }
        !self.issuer.as_ref().is_some_and(|n| *n != issuer.issuer)
    }
}

/// OpenSSL's answer to "may this certificate be a CA?" (`X509_check_ca`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CaKind {
    /// No: basicConstraints CA:FALSE, a key usage without keyCertSign, or nothing that says
    /// it is a CA.
    No,
    /// basicConstraints CA:TRUE (and keyCertSign if there is a key usage).
    Yes,
    /// Only tolerated as the root of a chain: a self-signed version 1 certificate, a key
    /// usage with keyCertSign but no basicConstraints, or a Netscape CA type.
    Tolerated { netscape_only: bool },
}

/// A parsed X.509 certificate, with what verification and its messages need.
#[derive(Debug, Clone)]
pub(super) struct Cert {
    /// The certificate as it came (DER), to compare certificates exactly.
    pub(super) der: Vec<u8>,
    pub(super) signed: Signed,
    /// The `SubjectPublicKeyInfo` (DER).
    pub(super) spki: Vec<u8>,
    /// 1, 2 or 3.
    pub(super) version: u8,
    /// The serial number's DER content, compared as bytes (DER integers are minimal).
    pub(super) serial: Vec<u8>,
    pub(super) subject: Name,
    pub(super) issuer: Name,
    /// The first commonName of the subject, as libpq uses it.
    common_name: Option<String>,
    names: Vec<CertName>,
    pub(super) not_before: u64,
    pub(super) not_after: u64,
    /// basicConstraints: CA or not, and its path length.
    basic_constraints: Option<(bool, Option<u8>)>,
    /// keyUsage bits (x509-cert's `KeyUsages`).
    key_usage: Option<u16>,
    extended_key_usage: Option<Vec<ObjectIdentifier>>,
    ns_cert_type: Option<u8>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<AuthorityKeyId>,
    /// Critical extensions OpenSSL does not know (dotted OIDs).
    pub(super) unknown_critical: Vec<String>,
    pub(super) proxy: bool,
    pub(super) name_constraints: bool,
    /// RFC 3779 delegations (IP addresses or AS numbers).
    pub(super) rfc3779: bool,
}

impl Cert {
    /// Parses a DER certificate.
    pub(super) fn parse(der: &[u8]) -> Result<Self, String> {
        // The `Raw` profile: serial numbers of any length, as OpenSSL reads them (RFC 5280
        // allows 20 bytes).
        let cert =
            CertificateInner::<Raw>::from_der(der).map_err(|e| format!("cannot be parsed: {e}"))?;
        let tbs = &cert.tbs_certificate;
        let inner = tbs.signature.to_der().unwrap_or_default();
        let signed = Signed::split(der, &inner).ok_or("cannot be parsed: not DER")?;
        let spki = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| format!("has a malformed public key: {e}"))?;
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
        let mut parsed = Cert {
            der: der.to_vec(),
            signed,
            spki,
            version: match tbs.version {
                Version::V1 => 1,
                Version::V2 => 2,
                Version::V3 => 3,
            },
            serial: tbs.serial_number.as_bytes().to_vec(),
            subject: Name::new(&tbs.subject)
                .map_err(|e| format!("has a malformed subject: {e}"))?,
            issuer: Name::new(&tbs.issuer).map_err(|e| format!("has a malformed issuer: {e}"))?,
            common_name,
            names: Vec::new(),
            not_before: tbs.validity.not_before.to_unix_duration().as_secs(),
            not_after: tbs.validity.not_after.to_unix_duration().as_secs(),
            basic_constraints: None,
            key_usage: None,
            extended_key_usage: None,
            ns_cert_type: None,
            subject_key_id: None,
            authority_key_id: None,
            unknown_critical: Vec::new(),
            proxy: false,
            name_constraints: false,
            rfc3779: false,
        };
        let extensions = tbs.extensions.as_deref().unwrap_or_default();
        for (i, ext) in extensions.iter().enumerate() {
            if extensions[..i].iter().any(|e| e.extn_id == ext.extn_id) {
                return Err(format!("has the extension {} twice", ext.extn_id));
            }
            parsed.read_extension(ext)?;
        }
        Ok(parsed)
    }

    fn read_extension(&mut self, ext: &Extension) -> Result<(), String> {
        let value = ext.extn_value.as_bytes();
        let bad = |what: &str, e: x509_cert::der::Error| format!("has a malformed {what}: {e}");
        let id = ext.extn_id;
        if id == SubjectAltName::OID {
            let san = SubjectAltName::from_der(value).map_err(|e| bad("subjectAltName", e))?;
            for name in san.0 {
                match name {
                    GeneralName::DnsName(dns) => self.names.push(CertName::Dns(dns.to_string())),
                    GeneralName::IpAddress(ip) => {
                        self.names.push(CertName::Ip(ip.as_bytes().to_vec()));
                    }
                    _ => {}
                }
            }
        } else if id == BasicConstraints::OID {
            let bc = BasicConstraints::from_der(value).map_err(|e| bad("basicConstraints", e))?;
            if !bc.ca && bc.path_len_constraint.is_some() {
                return Err(
                    "has a malformed basicConstraints: a path length without CA:TRUE".into(),
                );
            }
            self.basic_constraints = Some((bc.ca, bc.path_len_constraint));
        } else if id == KeyUsage::OID {
            let usage = KeyUsage::from_der(value).map_err(|e| bad("keyUsage", e))?;
            self.key_usage = Some(usage.0.bits());
        } else if id == ExtendedKeyUsage::OID {
            let eku = ExtendedKeyUsage::from_der(value).map_err(|e| bad("extendedKeyUsage", e))?;
            self.extended_key_usage = Some(eku.0);
        } else if id == NETSCAPE_CERT_TYPE {
            let bits =
                BitString::from_der(value).map_err(|e| bad("Netscape certificate type", e))?;
            self.ns_cert_type = Some(bits.raw_bytes().first().copied().unwrap_or(0));
        } else if id == SubjectKeyIdentifier::OID {
            let skid = SubjectKeyIdentifier::from_der(value)
                .map_err(|e| bad("subjectKeyIdentifier", e))?;
            self.subject_key_id = Some(skid.0.as_bytes().to_vec());
        } else if id == AuthorityKeyIdentifier::OID {
            self.authority_key_id = Some(AuthorityKeyId::parse(value)?);
        } else if id == PROXY_CERT_INFO {
            self.proxy = true;
        } else if id == NAME_CONSTRAINTS {
            self.name_constraints = true;
        } else if id == IP_ADDR_BLOCKS || id == AS_IDENTIFIERS {
            self.rfc3779 = true;
        }
        if ext.critical && !SUPPORTED_CRITICAL.contains(&id.to_string().as_str()) {
            self.unknown_critical.push(id.to_string());
        }
        Ok(())
    }

    /// `"CN=db1"`, for messages.
    pub(super) fn describe(&self) -> String {
        self.subject.to_string()
    }

    /// Whether it names itself as its issuer ("self-issued").
    pub(super) fn is_self_issued(&self) -> bool {
        self.subject == self.issuer
    }

    /// OpenSSL's "self-signed" (`EXFLAG_SS`), which decides where a chain ends: self-issued,
    /// with an authority key identifier (if any) naming itself, and a signature algorithm
    /// for its own key type. The signature itself is not verified (neither does OpenSSL).
    pub(super) fn is_self_signed(&self) -> bool {
        self.is_likely_issued_by(self)
    }

    /// OpenSSL's `x509_likely_issued(issuer, self)`: `issuer`'s subject is this certificate's
    /// issuer, the authority key identifier (if any) matches `issuer`, and `issuer`'s key
    /// type can make this certificate's signature algorithm.
    pub(super) fn is_likely_issued_by(&self, issuer: &Cert) -> bool {
        if issuer.subject != self.issuer {
            return false;
        }
        if self
            .authority_key_id
            .as_ref()
            .is_some_and(|akid| !akid.names(issuer))
        {
            return false;
        }
        key_fits_algorithm(&issuer.spki, &self.signed.algorithm)
    }

    /// Whether the validity period holds at `now` (OpenSSL: not before `notBefore`, before
    /// `notAfter`).
    pub(super) fn validity(&self, now: u64) -> Validity {
        if now < self.not_before {
            Validity::NotYet(self.not_before)
        } else if now >= self.not_after {
            Validity::Expired(self.not_after)
        } else {
            Validity::Valid
        }
    }

    /// OpenSSL's `X509_check_ca`.
    pub(super) fn ca_kind(&self) -> CaKind {
        if self.key_usage_lacks(KeyUsages::KeyCertSign) {
            return CaKind::No;
        }
        match self.basic_constraints {
            Some((true, _)) => CaKind::Yes,
            Some((false, _)) => CaKind::No,
            None if self.version == 1 && self.is_self_signed() => CaKind::Tolerated {
                netscape_only: false,
            },
            None if self.key_usage.is_some() => CaKind::Tolerated {
                netscape_only: false,
            },
            None if self.ns_cert_type.is_some_and(|t| t & NS_ANY_CA != 0) => CaKind::Tolerated {
                netscape_only: true,
            },
            None => CaKind::No,
        }
    }

    /// Why OpenSSL says this is no CA certificate, in words.
    pub(super) fn why_not_ca(&self) -> &'static str {
        if self.key_usage_lacks(KeyUsages::KeyCertSign) {
            "its key usage lacks keyCertSign"
        } else if self.basic_constraints.is_some() {
            "basicConstraints CA:FALSE"
        } else if self.version == 1 {
            "a version 1 certificate is a CA only as a self-signed root"
        } else {
            "it has no basicConstraints CA:TRUE"
        }
    }

    /// basicConstraints' path length, if any.
    pub(super) fn path_len(&self) -> Option<u8> {
        self.basic_constraints.and_then(|(_, len)| len)
    }

    /// OpenSSL's purpose check for a TLS server (`check_purpose_ssl_server`): the server
    /// certificate's (extended) key usages, or a CA's right to sign one.
    pub(super) fn check_server_purpose(&self, as_ca: bool) -> Result<(), String> {
        if let Some(usages) = &self.extended_key_usage
            && !usages
                .iter()
                .any(|u| *u == SERVER_AUTH || *u == NETSCAPE_SGC || *u == MICROSOFT_SGC)
        {
            return Err("its extended key usage lacks serverAuth".to_owned());
        }
        if as_ca {
            return match self.ca_kind() {
                CaKind::No => Err(format!(
                    "it is not a CA certificate ({})",
                    self.why_not_ca()
                )),
                CaKind::Tolerated {
                    netscape_only: true,
                } if self.ns_cert_type.is_some_and(|t| t & NS_SSL_CA == 0) => {
                    Err("its Netscape certificate type lacks SSL CA".to_owned())
                }
                _ => Ok(()),
            };
        }
        if self.ns_cert_type.is_some_and(|t| t & NS_SSL_SERVER == 0) {
            return Err("its Netscape certificate type lacks SSL server".to_owned());
        }
        let tls = usage_bits(KeyUsages::DigitalSignature)
            | usage_bits(KeyUsages::KeyEncipherment)
            | usage_bits(KeyUsages::KeyAgreement);
        if let Some(bits) = self.key_usage
            && bits & tls == 0
        {
            return Err(format!(
                "its key usage ({}) has none of digitalSignature, keyEncipherment, keyAgreement",
                key_usage_names(bits)
            ));
        }
        Ok(())
    }

    /// Whether the key usage, if present, lacks `usage`.
    pub(super) fn key_usage_lacks(&self, usage: KeyUsages) -> bool {
        self.key_usage
            .is_some_and(|bits| bits & usage_bits(usage) == 0)
    }

    /// libpq's host name check for `verify-full`, against the host as written in the
    /// connection string: the subjectAltName dNSNames (equal ignoring ASCII case, or a `*.`
    /// wildcard for one label) and iPAddresses (for an IP host), in order; the commonName only
    /// when there is no subjectAltName of the host's kind. A name with a NUL or an address of
    /// another length than 4 or 16 bytes ends the check with a refusal, as in libpq.
    pub(super) fn check_host(&self, host: &str) -> Result<(), String> {
        if host.is_empty() {
            return Err("a host name is needed to verify the server certificate".to_owned());
        }
        let ip = host.parse::<IpAddr>().ok();
        let mut use_common_name = true;
        for name in &self.names {
            let matched = match name {
                CertName::Dns(pattern) => {
                    use_common_name &= ip.is_some();
                    if pattern.contains('\0') {
                        return Err(format!(
                            "the server certificate {} has a name with an embedded NUL",
                            self.describe()
                        ));
                    }
                    name_matches(pattern, host)
                }
                CertName::Ip(bytes) => {
                    use_common_name &= ip.is_none();
                    let Some(address) = ip_from_bytes(bytes) else {
                        return Err(format!(
                            "the server certificate {} has an IP address of {} bytes",
                            self.describe(),
                            bytes.len()
                        ));
                    };
                    ip == Some(address)
                }
            };
            if matched {
                return Ok(());
            }
        }
        if use_common_name && let Some(cn) = &self.common_name {
            if cn.contains('\0') {
                return Err(format!(
                    "the server certificate {} has a name with an embedded NUL",
                    self.describe()
                ));
            }
            if name_matches(cn, host) {
                return Ok(());
            }
        }
        let mut listed: Vec<String> = self.names.iter().map(ToString::to_string).collect();
        if let Some(cn) = &self.common_name {
            listed.push(if use_common_name {
                format!("CN={}", cn.escape_default())
            } else {
                format!(
                    "CN={} (not used: the certificate has subjectAltNames)",
                    cn.escape_default()
                )
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

/// A certificate's validity at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Validity {
    Valid,
    /// Not valid before this time.
    NotYet(u64),
    /// Expired at this time.
    Expired(u64),
}

impl Validity {
    /// "is not valid before …" or "expired on …", with the time now.
    pub(super) fn explain(self, now: u64) -> Option<String> {
        match self {
            Validity::Valid => None,
            Validity::NotYet(t) => Some(format!(
                "is not valid before {} (now {})",
                date(t),
                date(now)
            )),
            Validity::Expired(t) => Some(format!("expired on {} (now {})", date(t), date(now))),
        }
    }
}

/// OpenSSL's canonical encoding of a name: each RDN as a DER `SET OF` its attributes, string
/// values as canonical UTF8Strings, concatenated without the outer `SEQUENCE`.
fn canonical_name(name: &X509Name) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for rdn in &name.0 {
        let mut set = Vec::new();
        for atv in rdn.0.iter() {
            let value = match canonical_string(&atv.value)? {
                Some(text) => {
                    Any::new(Tag::Utf8String, text.into_bytes()).map_err(|e| e.to_string())?
                }
                None => atv.value.clone(),
            };
            let encoded = AttributeTypeAndValue {
                oid: atv.oid,
                value,
            }
            .to_der()
            .map_err(|e| e.to_string())?;
            set.push(encoded);
        }
        set.sort();
        let content: Vec<u8> = set.concat();
        out.extend(der_header(0x31, content.len()));
        out.extend(content);
    }
    Ok(out)
}

/// A string value in OpenSSL's canonical form (`asn1_string_canon`), or `None` for a value
/// that is not one of the string types it canonicalises.
fn canonical_string(value: &Any) -> Result<Option<String>, String> {
    let bytes = value.value();
    let text: String = match value.tag() {
        Tag::Utf8String => std::str::from_utf8(bytes)
            .map_err(|_| "a UTF8String that is not UTF-8".to_owned())?
            .to_owned(),
        Tag::PrintableString | Tag::Ia5String | Tag::VisibleString | Tag::TeletexString => {
            bytes.iter().map(|b| char::from(*b)).collect()
        }
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return Err("a BMPString of odd length".to_owned());
            }
            bytes
                .chunks(2)
                .map(|c| char::from_u32(u32::from(u16::from_be_bytes([c[0], c[1]]))))
                .collect::<Option<String>>()
                .ok_or("a BMPString with an invalid character")?
        }
        _ => return Ok(None),
    };
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let bytes = text.as_bytes();
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |e| e + 1);
    let mut out = Vec::with_capacity(end - start);
    let mut in_space = false;
    for b in &bytes[start..end] {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b.to_ascii_lowercase());
            in_space = false;
        }
    }
    // Only ASCII bytes were changed, so this is still UTF-8.
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| "a string that is not UTF-8".to_owned())
}

/// The bits of one key usage, as [`Cert`] keeps them.
fn usage_bits(usage: KeyUsages) -> u16 {
    KeyUsage(usage.into()).0.bits()
}

/// The names of the key usage bits that are set.
fn key_usage_names(bits: u16) -> String {
    const NAMES: [&str; 9] = [
        "digitalSignature",
        "nonRepudiation",
        "keyEncipherment",
        "dataEncipherment",
        "keyAgreement",
        "keyCertSign",
        "cRLSign",
        "encipherOnly",
        "decipherOnly",
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "empty".to_owned()
    } else {
        set.join(", ")
    }
}

/// libpq's comparison of a certificate name with the host: equal ignoring ASCII case, or a
/// leading `*.` wildcard standing for exactly one label. A trailing dot is a character like
/// any other.
fn name_matches(pattern: &str, host: &str) -> bool {
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
pub(super) fn date(secs: u64) -> String {
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
        // Trailing dots are compared as written (libpq's pg_strcasecmp).
        assert!(!name_matches("*.example.com", "a.example.com."));
        assert!(!name_matches("localhost", "localhost."));
        assert!(name_matches("localhost.", "localhost."));
        assert!(name_matches("*.example.com.", "a.example.com."));
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

    fn name(s: &str) -> Name {
        Name::new(&s.parse::<X509Name>().unwrap()).unwrap()
    }

    #[test]
    fn names_compare_and_hash_as_openssl() {
        // `openssl x509 -noout -subject_hash` of certificates with these subjects (`-subj
        // "/CN=local host/O=ex co"` for the last).
        let hash = |n: &str| format!("{:08x}", name(n).hash());
        assert_eq!(hash("CN=localhost"), "ce275665");
        assert_eq!(hash("CN=pgsuite openssl test CA"), "8b6f9ad6");
        assert_eq!(hash("O=ex co,CN=local host"), "9e7515b0");
        assert_eq!(
            name("O=Ex\\  Co,CN=\\  Local   HOST\\ "),
            name("O=ex co,CN=local host")
        );
        assert_ne!(name("CN=a,O=b"), name("CN=a"));
    }
}
