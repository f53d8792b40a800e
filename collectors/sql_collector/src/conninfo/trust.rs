//! Whether a server certificate is trusted, decided as OpenSSL 3's `X509_verify_cert` decides
//! it for libpq (`SSL_VERIFY_PEER`, purpose "SSL server", no partial chains, and with `sslcrl`
//! or `sslcrldir` `X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`):
//!
//! 1. The chain is built from the server certificate up, looking for each issuer among the
//!    root certificates first, then among the certificates the server sent, until a
//!    self-signed root certificate. A self-signed server certificate is trusted only when an
//!    identical copy is a root certificate; a root certificate that is not self-signed is no
//!    trust anchor (so neither is a server certificate or an intermediate alone in the root
//!    file).
//! 2. Extensions: a critical one OpenSSL does not know refuses the certificate; every
//!    intermediate must be a CA (basicConstraints CA:TRUE, keyCertSign if it has a key usage),
//!    the root may also be a self-signed version 1 certificate or have keyCertSign without
//!    basicConstraints; the server certificate's extended key usage (if any) includes
//!    serverAuth and its key usage (if any) one of digitalSignature, keyEncipherment,
//!    keyAgreement; a CA's extended key usage (if any) includes serverAuth; path lengths hold.
//! 3. With CRLs, every certificate of the chain, the root's included, needs a CRL from its
//!    issuer (the root's own for the root), valid now, signed by the issuer (cRLSign if it has
//!    a key usage), not revoking it. A CRL whose authority key identifier names another
//!    certificate (key identifier, issuer or serial number) is left out; a delta CRL counts as
//!    a complete one (no `X509_V_FLAG_USE_DELTAS`); an entry with reason removeFromCRL
//!    revokes nothing. `sslcrldir` is searched by OpenSSL's name hash (`openssl rehash`).
//! 4. Signatures (each certificate by its issuer; not the root's own, except that a server
//!    certificate trusted as itself must verify with its own key) and validity periods, the
//!    root's included.
//!
//! Where OpenSSL checks something we do not (name constraints, RFC 3779 delegations, CRL
//! distribution point scopes, signature algorithms our crypto provider lacks), the chain is
//! refused with [`Refusal::unsupported`] set: libpq might accept it.

use std::fmt;
use std::path::PathBuf;

use rustls::crypto::WebPkiSupportedAlgorithms;
use x509_cert::ext::pkix::KeyUsages;

use super::certificate::{CaKind, Cert, Name, Validity, date};
use super::crl::Crl;
use super::signature::{SignatureError, verify_signed};

/// OpenSSL's default maximum chain depth (100 certificates below the root).
const MAX_CHAIN: usize = 101;

/// Why a server certificate is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// In words, starting with the certificate at fault.
    pub(super) message: String,
    /// Whether libpq might accept it: we refuse what we cannot check as it does.
    pub(super) unsupported: bool,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A refusal libpq would make too.
pub(super) fn refused(message: String) -> Refusal {
    Refusal {
        message,
        unsupported: false,
    }
}

/// A refusal of what we cannot check as libpq does (it might accept).
pub(super) fn unsupported(message: &str) -> Refusal {
    Refusal {
        message: format!(
            "{message} (this client refuses what it cannot check as libpq does, which might \
             accept it)"
        ),
        unsupported: true,
    }
}

/// The CRLs libpq's OpenSSL store would hold (those of the root certificate file and of
/// `sslcrl`) and those it would find in `sslcrldir` by name hash.
#[derive(Debug, Clone, Default)]
pub(super) struct Crls {
    pub(super) listed: Vec<Crl>,
    /// CRLs of files named `<hash>.r<n>` (n from 0 without a gap), with the hash.
    pub(super) hashed: Vec<(u32, Crl)>,
    /// Where they come from, for messages: `sslcrl "…"`, `sslcrldir "…"`.
    pub(super) source: String,
}

impl Crls {
    /// The CRLs whose issuer is `issuer`, delta CRLs included: without
    /// `X509_V_FLAG_EXTENDED_CRL_SUPPORT`, OpenSSL's `get_crl_score` scores them as complete
    /// CRLs.
    fn of<'a>(&'a self, issuer: &'a Name) -> impl Iterator<Item = &'a Crl> + 'a {
        let hash = issuer.hash();
        self.listed
            .iter()
            .chain(
                self.hashed
                    .iter()
                    .filter(move |(h, _)| *h == hash)
                    .map(|(_, crl)| crl),
            )
            .filter(move |crl| crl.issuer == *issuer)
    }
}

/// The root certificates, CRLs and algorithms a server certificate is checked with.
#[derive(Clone)]
pub(super) struct Trust {
    roots: Vec<Cert>,
    /// Where the roots come from, for messages: `root certificate file "…"`, `system's CA
    /// bundle` (always after "the").
    source: String,
    /// `None`: no revocation checks.
    crls: Option<Crls>,
    algorithms: WebPkiSupportedAlgorithms,
    /// Why root certificates we could not parse (OpenSSL might) were left out.
    unreadable: Vec<String>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("source", &self.source)
            .field("roots", &self.roots.len())
            .field(
                "crls",
                &self.crls.as_ref().map(|c| c.listed.len() + c.hashed.len()),
            )
            .field("unreadable", &self.unreadable.len())
            .finish_non_exhaustive()
    }
}

/// A certificate of the chain, and whether it is one of the root certificates.
#[derive(Debug, Clone, Copy)]
struct Link<'a> {
    cert: &'a Cert,
    root: bool,
}

impl Trust {
    pub(super) fn new(
        roots: Vec<Cert>,
        source: String,
        crls: Option<Crls>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots,
            source,
            crls,
            algorithms,
            unreadable: Vec::new(),
        }
    }

    /// Notes root certificates left out because they could not be parsed: a chain without
    /// trust anchor is then refused as something libpq might accept.
    pub(super) fn with_unreadable(mut self, unreadable: Vec<String>) -> Self {
        self.unreadable = unreadable;
        self
    }

    /// Whether `leaf`, sent with `intermediates`, is trusted at `now` (Unix seconds).
    pub(super) fn verify(
        &self,
        leaf: &Cert,
        intermediates: &[Cert],
        now: u64,
    ) -> Result<(), Refusal> {
        let chain = self.build(leaf, intermediates, now)?;
        self.check_extensions(&chain)?;
        self.check_revocation(&chain, now)?;
        self.check_signatures_and_dates(&chain, now)
    }

    /// The chain from `leaf` to a trusted self-signed root (OpenSSL's `build_chain` with
    /// `X509_V_FLAG_TRUSTED_FIRST`).
    fn build<'a>(
        &'a self,
        leaf: &'a Cert,
        intermediates: &'a [Cert],
        now: u64,
    ) -> Result<Vec<Link<'a>>, Refusal> {
        let mut chain = vec![Link {
            cert: leaf,
            root: false,
        }];
        let mut unused: Vec<&Cert> = intermediates.iter().collect();
        loop {
            if chain.len() > MAX_CHAIN {
                return Err(refused(format!(
                    "the chain of the server certificate {} is longer than {MAX_CHAIN} \
                     certificates",
                    leaf.describe()
                )));
            }
            let top = chain[chain.len() - 1];
            let self_signed = top.cert.is_self_signed();
            let in_chain = |c: &Cert| chain.iter().any(|l| l.root && l.cert.der == c.der);
            if let Some(issuer) = pick_issuer(&self.roots, top.cert, in_chain, now) {
                if self_signed {
                    // Trusted as itself, only as an exact copy of a root certificate.
                    if issuer.der == top.cert.der {
                        let last = chain.len() - 1;
                        chain[last].root = true;
                        return Ok(chain);
                    }
                    return Err(self.no_trust_anchor(&chain));
                }
                chain.push(Link {
                    cert: issuer,
                    root: true,
                });
                if issuer.is_self_signed() {
                    return Ok(chain);
                }
                continue;
            }
            if self_signed || top.root {
                return Err(self.no_trust_anchor(&chain));
            }
            let in_chain = |c: &Cert| chain.iter().any(|l| l.cert.der == c.der);
            let Some(issuer) = pick_issuer(unused.iter().copied(), top.cert, in_chain, now) else {
                return Err(self.no_trust_anchor(&chain));
            };
            unused.retain(|c| !std::ptr::eq(*c, issuer));
            chain.push(Link {
                cert: issuer,
                root: false,
            });
        }
    }

    /// Why the chain built so far ends without a trusted self-signed root.
    fn no_trust_anchor(&self, chain: &[Link<'_>]) -> Refusal {
        let refusal = self.why_no_trust_anchor(chain);
        match self.unreadable.first() {
            None => refusal,
            Some(first) => unsupported(&format!(
                "{}; {} certificate(s) of the {} could not be read here, one of which might be \
                 the issuer (first: {first})",
                refusal.message,
                self.unreadable.len(),
                self.source
            )),
        }
    }

    fn why_no_trust_anchor(&self, chain: &[Link<'_>]) -> Refusal {
        let (leaf, top) = (chain[0].cert, chain[chain.len() - 1]);
        let source = &self.source;
        if top.root {
            return refused(format!(
                "{}, the issuer of {}, is not self-signed, and its issuer {} is not in the \
                 {source}: libpq needs the chain up to a self-signed root certificate there",
                self.role(chain, chain.len() - 1),
                self.role(chain, chain.len() - 2),
                top.cert.issuer
            ));
        }
        if top.cert.is_self_signed() {
            return refused(if chain.len() == 1 {
                format!(
                    "the server certificate {} is self-signed and is not one of the \
                     certificates of the {source} (unknown issuer)",
                    leaf.describe()
                )
            } else {
                format!(
                    "the server certificate {} came with the self-signed certificate {}, which \
                     is not one of the certificates of the {source} (unknown issuer)",
                    leaf.describe(),
                    top.cert.describe()
                )
            });
        }
        let mut message = if chain.len() == 1 {
            format!(
                "the server certificate {} is not signed by a CA of the {source} (unknown \
                 issuer {})",
                leaf.describe(),
                top.cert.issuer
            )
        } else {
            format!(
                "the server certificate {}, through the intermediate certificate {} the \
                 server sent, is not signed by a CA of the {source} (unknown issuer {})",
                leaf.describe(),
                top.cert.describe(),
                top.cert.issuer
            )
        };
        if self.roots.iter().any(|r| r.der == leaf.der) {
            message.push_str(
                "; it is itself in that file, but libpq trusts a certificate as itself only \
                 when it is self-signed",
            );
        }
        refused(message)
    }

    /// "the server certificate …", "the intermediate certificate … the server sent", "the
    /// certificate … of the root certificate file …".
    fn role(&self, chain: &[Link<'_>], i: usize) -> String {
        let link = chain[i];
        if i == 0 {
            format!("the server certificate {}", link.cert.describe())
        } else if link.root {
            format!(
                "the certificate {} of the {}",
                link.cert.describe(),
                self.source
            )
        } else {
            format!(
                "the intermediate certificate {} the server sent",
                link.cert.describe()
            )
        }
    }

    /// OpenSSL's `check_chain_extensions` and `check_name_constraints`.
    fn check_extensions(&self, chain: &[Link<'_>]) -> Result<(), Refusal> {
        let n = chain.len();
        // Certificates below the current one that are not self-issued intermediates.
        let mut path = 0usize;
        for (i, link) in chain.iter().enumerate() {
            let cert = link.cert;
            let role = self.role(chain, i);
            if let Some(oid) = cert.unknown_critical.first() {
                return Err(refused(format!(
                    "{role} has a critical extension {oid} that libpq (OpenSSL) does not know"
                )));
            }
            if cert.proxy {
                return Err(refused(format!(
                    "{role} is a proxy certificate, which libpq does not allow"
                )));
            }
            if i > 0 {
                let kind = cert.ca_kind();
                let acceptable = if i + 1 < n {
                    kind == CaKind::Yes
                } else {
                    kind != CaKind::No
                };
                if !acceptable {
                    return Err(refused(format!(
                        "{role}, which signed {}, is not a CA certificate ({})",
                        chain[i - 1].cert.describe(),
                        cert.why_not_ca()
                    )));
                }
            }
            if let Err(why) = cert.check_server_purpose(i > 0) {
                return Err(refused(if i == 0 {
                    format!("{role} is not for TLS servers: {why}")
                } else {
                    format!("{role} may not sign TLS server certificates: {why}")
                }));
            }
            if i > 1
                && let Some(max) = cert.path_len()
                && path > usize::from(max)
            {
                return Err(refused(format!(
                    "{role} allows {max} intermediate certificate(s) below it, the chain has \
                     {path} (basicConstraints pathlen)"
                )));
            }
            if i > 0 && !cert.is_self_issued() {
                path += 1;
            }
        }
        for (i, link) in chain.iter().enumerate() {
            let role = self.role(chain, i);
            if i > 0 && link.cert.name_constraints {
                return Err(unsupported(&format!(
                    "{role} has name constraints, which this client does not check"
                )));
            }
            if link.cert.rfc3779 {
                return Err(unsupported(&format!(
                    "{role} has RFC 3779 IP address or AS number delegations, which this client \
                     does not check"
                )));
            }
        }
        Ok(())
    }

    /// OpenSSL's `check_revocation` with `X509_V_FLAG_CRL_CHECK_ALL`.
    fn check_revocation(&self, chain: &[Link<'_>], now: u64) -> Result<(), Refusal> {
        let Some(crls) = &self.crls else {
            return Ok(());
        };
        let n = chain.len();
        for i in 0..n {
            let cert = chain[i].cert;
            let role = self.role(chain, i);
            // The best CRL as OpenSSL's `get_crl_sk` scores them (no unknown critical
            // extension, in scope, valid now, signed by the certificate's issuer rather than
            // by a certificate higher up the chain); the latest among equals, the first if
            // equally late. A CRL whose authority key identifier names no certificate of the
            // chain is left out (`crl_akid_check`).
            let mut best: Option<(&Crl, usize, _)> = None;
            let mut other_akid: Option<&Crl> = None;
            for crl in crls.of(&cert.issuer) {
                let Some(at) = crl_issuer(chain, i, crl) else {
                    other_akid.get_or_insert(crl);
                    continue;
                };
                let score = (
                    crl.unknown_critical.is_empty(),
                    !crl.scoped,
                    crl.validity(now) == Validity::Valid,
                    at == (i + 1).min(n - 1),
                );
                if best.is_none_or(|(b, _, best_score)| {
                    score > best_score || (score == best_score && crl.this_update > b.this_update)
                }) {
                    best = Some((crl, at, score));
                }
            }
            let Some((crl, issuer_at, _)) = best else {
                let mut message = format!(
                    "no certificate revocation list of {} is from {}, the issuer of {role}: \
                     with sslcrl or sslcrldir, libpq needs one for every certificate of the \
                     chain, the root certificate's included",
                    crls.source, cert.issuer
                );
                if let Some(crl) = other_akid {
                    message.push_str(&format!(
                        "; \"{}\" is from that name, but its authority key identifier names \
                         another certificate than {} (key identifier, issuer or serial number), \
                         so libpq does not use it",
                        crl.file.display(),
                        self.role(chain, (i + 1).min(n - 1))
                    ));
                }
                return Err(refused(message));
            };
            let issuer = chain[issuer_at].cert;
            let issuer_role = self.role(chain, issuer_at);
            let kind = if crl.delta {
                "delta certificate revocation list"
            } else {
                "certificate revocation list"
            };
            let what = format!("the {kind} \"{}\" of {}", crl.file.display(), crl.issuer);
            // OpenSSL's `check_crl` skips this for a delta CRL.
            if !crl.delta && issuer.key_usage_lacks(KeyUsages::CRLSign) {
                return Err(refused(format!(
                    "{issuer_role} may not sign certificate revocation lists: its key usage \
                     lacks cRLSign"
                )));
            }
            if crl.scoped {
                return Err(unsupported(&format!(
                    "{what} has an issuing distribution point or indirect entries, which this \
                     client does not check"
                )));
            }
            match crl.validity(now) {
                Validity::Valid => {}
                Validity::NotYet(t) => {
                    return Err(refused(format!(
                        "{what} is not valid before {} (now {})",
                        date(t),
                        date(now)
                    )));
                }
                Validity::Expired(t) => {
                    return Err(refused(format!(
                        "{what} is out of date: its next update was due on {} (now {})",
                        date(t),
                        date(now)
                    )));
                }
            }
            match verify_signed(&self.algorithms, &issuer.spki, &crl.signed) {
                Ok(()) => {}
                Err(SignatureError::Invalid) => {
                    return Err(refused(format!(
                        "the signature of {what} does not verify with the key of {issuer_role}"
                    )));
                }
                Err(SignatureError::Unsupported(how)) => {
                    return Err(unsupported(&format!(
                        "the signature of {what} uses {how}, which this client cannot verify"
                    )));
                }
            }
            if let Some(oid) = crl.unknown_critical.first() {
                return Err(refused(format!(
                    "{what} has a critical extension {oid} that libpq (OpenSSL) does not know"
                )));
            }
            if let Some(when) = crl.revocation_of(cert) {
                let delta = if crl.delta {
                    " (libpq reads a delta CRL as a complete one)"
                } else {
                    ""
                };
                return Err(refused(format!(
                    "{role} is revoked (since {}) by {what} issued {}{delta}",
                    date(when),
                    date(crl.this_update)
                )));
            }
        }
        Ok(())
    }

    /// OpenSSL's `internal_verify`: from the root down, each certificate's signature by its
    /// issuer, then its validity period.
    fn check_signatures_and_dates(&self, chain: &[Link<'_>], now: u64) -> Result<(), Refusal> {
        let n = chain.len();
        for i in (0..n).rev() {
            let cert = chain[i].cert;
            let role = self.role(chain, i);
            if i + 1 < n {
                let issuer = chain[i + 1].cert;
                let issuer_role = self.role(chain, i + 1);
                if issuer.key_usage_lacks(KeyUsages::KeyCertSign) {
                    return Err(refused(format!(
                        "{issuer_role} may not sign certificates: its key usage lacks \
                         keyCertSign"
                    )));
                }
                match verify_signed(&self.algorithms, &issuer.spki, &cert.signed) {
                    Ok(()) => {}
                    Err(SignatureError::Invalid) => {
                        return Err(refused(format!(
                            "the signature of {role} does not verify with the key of \
                             {issuer_role}"
                        )));
                    }
                    Err(SignatureError::Unsupported(how)) => {
                        return Err(unsupported(&format!(
                            "the signature of {role} by {issuer_role} uses {how}, which this \
                             client cannot verify"
                        )));
                    }
                }
            } else if n == 1 {
                // The server certificate, trusted as itself: self-signed in truth.
                match verify_signed(&self.algorithms, &cert.spki, &cert.signed) {
                    Ok(()) => {}
                    Err(SignatureError::Invalid) => {
                        return Err(unsupported(&format!(
                            "{role} is in the {} and names itself as issuer, but its signature \
                             does not verify with its own key, and a certificate is trusted \
                             as itself only when self-signed",
                            self.source
                        )));
                    }
                    Err(SignatureError::Unsupported(how)) => {
                        return Err(unsupported(&format!(
                            "{role} is in the {}, but its self-signature uses {how}, which \
                             this client cannot verify",
                            self.source
                        )));
                    }
                }
            }
            if let Some(why) = cert.validity(now).explain(now) {
                return Err(refused(format!("{role} {why}")));
            }
        }
        Ok(())
    }
}

/// The issuer of `cert` among `candidates`, as OpenSSL picks it: the first likely issuer
/// (name, key identifier, key type) valid now, else the one expiring last; `excluded` are
/// passed over.
fn pick_issuer<'a>(
    candidates: impl IntoIterator<Item = &'a Cert>,
    cert: &Cert,
    excluded: impl Fn(&Cert) -> bool,
    now: u64,
) -> Option<&'a Cert> {
    let mut fallback: Option<&Cert> = None;
    for candidate in candidates {
        if !cert.is_likely_issued_by(candidate) || excluded(candidate) {
            continue;
        }
        if candidate.validity(now) == Validity::Valid {
            return Some(candidate);
        }
        if fallback.is_none_or(|f| candidate.not_after > f.not_after) {
            fallback = Some(candidate);
        }
    }
    fallback
}

/// OpenSSL's `crl_akid_check` without extended CRL support: which certificate of `chain`
/// signed `crl`, the CRL about `chain[i]`: its issuer (the root itself for the root) if the
/// CRL's authority key identifier (if any) names it, else the first certificate higher up the
/// chain with the CRL's issuer as subject that it names; `None`: OpenSSL leaves the CRL out.
fn crl_issuer(chain: &[Link<'_>], i: usize, crl: &Crl) -> Option<usize> {
    let first = (i + 1).min(chain.len() - 1);
    if crl.names_issuer(chain[first].cert) {
        return Some(first);
    }
    (first + 1..chain.len())
        .find(|&at| chain[at].cert.subject == crl.issuer && crl.names_issuer(chain[at].cert))
}

/// Where CRL files came from, for [`Crls::source`].
pub(super) fn crl_source(file: Option<&PathBuf>, dir: Option<&PathBuf>) -> String {
    let mut parts = Vec::new();
    if let Some(file) = file {
        parts.push(format!("sslcrl \"{}\"", file.display()));
    }
    if let Some(dir) = dir {
        parts.push(format!("sslcrldir \"{}\"", dir.display()));
    }
    if parts.is_empty() {
        "the root certificate file".to_owned()
    } else {
        parts.join(" or ")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
        DistinguishedName, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyIdMethod,
        KeyPair, KeyUsagePurpose, NameConstraints, RevokedCertParams, SerialNumber, date_time_ymd,
    };
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    use super::*;

    /// Made by `openssl req -x509` (v3, CA:TRUE, EC P-256, 2026-12-08 to 2126-11-14): "CN=v1
    /// test CA", and signed by it with `openssl x509 -req` (version 1) "CN=db.example".
    pub(in super::super) const V1_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASegAwIBAgIUEhLfYTy8pylp6Edr3FfYmiqkQsQwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKdjEgdGVzdCBDQTAgFw0yNjEyMDgwMjE3MTBaGA8yMTI2MTEx
NDAyMTcxMFowFTETMBEGA1UEAwwKdjEgdGVzdCBDQTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABC1Yr1OIS7zZXB6EXDGK92vletO1YB++hEsQ9cow0+KQQLNn3tnJ
TOFLxWoV/16NDEkBSzi3WSn/qVEr82E9VjujUzBRMB0GA1UdDgQWBBRgE3xjIvBw
uijMK9ZCNgnbaz//djAfBgNVHSMEGDAWgBRgE3xjIvBwuijMK9ZCNgnbaz//djAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIGfb+Hdbck9kMpYeCl9P
t4B39LETe4ceQKoi17b/nOarAiAv9GU9QR4EPtWhndfmhmKkI8pJoiPpvxSa3Y2k
RmFFQQ==
-----END CERTIFICATE-----
";
    pub(in super::super) const V1_LEAF: &str = "-----BEGIN CERTIFICATE-----
MIIBJzCBzQIULc/w5Pb4uiX533VyDQg3IZdCb/MwCgYIKoZIzj0EAwIwFTETMBEG
A1UEAwwKdjEgdGVzdCBDQTAgFw0yNjEyMDgwMjE3MTBaGA8yMTI2MTExNDAyMTcx
MFowFTETMBEGA1UEAwwKZGIuZXhhbXBsZTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABKi9bp2gjGdcYOiip1LPJSdjSZlaR/jeuTH7O/GoY996Trmn/pCkTWc8kFsD
Ho+NvX5yGefGeiMtL2AKuN3txxkwCgYIKoZIzj0EAwIDSQAwRgIhAN8UBl8DAwJm
rIlVO8jO5/VSyoI9VTb4tLdypbeFLbQSAiEAt3cClHdi5N7ObR0fYyROm6F0XJMK
GHjP3Oy8ekHo7SU=
-----END CERTIFICATE-----
";
    /// The key of [`V1_LEAF`] (PKCS #8).
    pub(in super::super) const V1_LEAF_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQglLkO7AFMSJ5lvDJ5
dfZVpvRDF+lPyrPDn4Y8mya6buuhRANCAASovW6doIxnXGDooqdSzyUnY0mZWkf4
3rkx+zvxqGPfek65p/6QpE1nPJBbAx6Pjb1+chnnxnojLS9gCrjd7ccZ
-----END PRIVATE KEY-----
";
    /// Version 1 and self-signed (`openssl x509 -req -signkey`): "CN=v1 root", and "CN=db.example"
    /// (version 1) signed by it.
    const V1_ROOT: &str = "-----BEGIN CERTIFICATE-----
MIIBIDCBxwIUZvALIYx8LBJVF4vKqG3x+HvpDXUwCgYIKoZIzj0EAwIwEjEQMA4G
A1UEAwwHdjEgcm9vdDAgFw0yNjEyMDgwMjE3MTBaGA8yMTI2MTExNDAyMTcxMFow
EjEQMA4GA1UEAwwHdjEgcm9vdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOQZ
g25aiVD5kpF22y9nNy5V/wsTkDXkreZxfXa1hpmO0AuDAiKRb+AR4F0vBf5I4ARh
dOcDlxdJXGJyu1OpFHIwCgYIKoZIzj0EAwIDSAAwRQIgJuDeEE/W9pL54MlJX4Oy
kvRFZTKhgK8quSDpM3tgD4ECIQCa9WrOS84JN9xTTNiB1kPO3oRGgSmGWoVBB56A
qP2H6w==
-----END CERTIFICATE-----
";
    const V1_BY_ROOT: &str = "-----BEGIN CERTIFICATE-----
MIIBIjCBygIUXI+2t/RwyaThojLcfIebYCkgtvcwCgYIKoZIzj0EAwIwEjEQMA4G
A1UEAwwHdjEgcm9vdDAgFw0yNjEyMDgwMjE3MTBaGA8yMTI2MTExNDAyMTcxMFow
FTETMBEGA1UEAwwKZGIuZXhhbXBsZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BHOFKC/m1fUXC+DWXcF6gS9JGM64ioD9DrbWZ0tIey3TgLlqjiLjFQ6smMWttJ8e
Otdc/EWttQDkZvcYmj+wb+wwCgYIKoZIzj0EAwIDRwAwRAIgPunhlUwOXCxD08Oc
ax/46Wfpjfo62auMRWJG7Krjb/QCIF5/ULlCV+4qSDAQd5tOnrXdQlZm2xxwxO4B
ytzs9wKJ
-----END CERTIFICATE-----
";

    /// 2030-01-01, inside every test certificate's validity.
    const NOW: u64 = 1_893_456_000;

    pub(in super::super) fn pem_cert(pem: &str) -> Cert {
        Cert::parse(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap()
    }

    /// A certificate made by rcgen, and its key.
    pub(in super::super) struct Made {
        pub(in super::super) cert: rcgen::Certificate,
        pub(in super::super) key: KeyPair,
    }

    impl Made {
        pub(in super::super) fn parsed(&self) -> Cert {
            Cert::parse(self.cert.der()).unwrap()
        }
    }

    /// A certificate for `cn`, signed by `issuer` (else self-signed), changed by `edit`
    /// (default: no extension but the key identifiers, valid from 1975 to 4096).
    pub(in super::super) fn make(
        cn: &str,
        issuer: Option<&Made>,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Made {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = issuer.is_some();
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = match issuer {
            Some(issuer) => params.signed_by(&key, &issuer.cert, &issuer.key),
            None => params.self_signed(&key),
        }
        .unwrap();
        Made { cert, key }
    }

    pub(in super::super) fn ca(params: &mut CertificateParams) {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }

    fn trust(roots: &[Cert], crls: Option<Vec<Crl>>) -> Trust {
        Trust::new(
            roots.to_vec(),
            "root certificate file \"root.crt\"".to_owned(),
            crls.map(|listed| Crls {
                listed,
                hashed: Vec::new(),
                source: "sslcrl \"root.crl\"".to_owned(),
            }),
            rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verdict(trust: &Trust, leaf: &Cert, intermediates: &[Cert]) -> Result<(), String> {
        trust.verify(leaf, intermediates, NOW).map_err(|r| {
            format!(
                "{}{}",
                if r.unsupported { "[unsupported] " } else { "" },
                r.message
            )
        })
    }

    fn assert_refused(result: Result<(), String>, words: &[&str]) {
        let message = result.expect_err("refused");
        for w in words {
            assert!(message.contains(w), "{message:?} lacks {w:?}");
        }
    }

    /// A CRL by `issuer` revoking `serials`, valid from 2020 to `until`.
    fn crl(issuer: &Made, serials: &[&[u8]], until: i32) -> Crl {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(until, 1, 1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let der = params.signed_by(&issuer.cert, &issuer.key).unwrap();
        Crl::parse(der.der(), "root.crl".into()).unwrap()
    }

    #[test]
    fn a_self_signed_certificate_is_trusted_as_itself_only_when_in_the_roots() {
        // As `openssl req -x509` makes it: CA:TRUE, no key usage.
        let docs = make("localhost", None, ca);
        let other = make("localhost", None, ca);
        assert_eq!(
            verdict(&trust(&[docs.parsed()], None), &docs.parsed(), &[]),
            Ok(())
        );
        assert_eq!(
            verdict(&trust(&[other.parsed()], None), &docs.parsed(), &[]),
            Err(
                "the server certificate \"CN=localhost\" is self-signed and is not one of the \
                 certificates of the root certificate file \"root.crt\" (unknown issuer)"
                    .to_owned()
            )
        );
        // CA:FALSE or no basicConstraints: OpenSSL takes it as its own trust anchor too.
        let edits: [fn(&mut CertificateParams); 2] = [|p| p.is_ca = IsCa::ExplicitNoCa, |_| {}];
        for edit in edits {
            let selfie = make("db", None, edit);
            assert_eq!(
                verdict(&trust(&[selfie.parsed()], None), &selfie.parsed(), &[]),
                Ok(())
            );
        }
    }

    #[test]
    fn a_root_that_is_not_a_ca_signs_nothing() {
        // D1: self-signed with CA:FALSE, in the root file, signing the server certificate.
        let root = make("CA:FALSE root", None, |p| p.is_ca = IsCa::ExplicitNoCa);
        let leaf = make("localhost", Some(&root), |_| {});
        assert_refused(
            verdict(&trust(&[root.parsed()], None), &leaf.parsed(), &[]),
            &[
                "the certificate \"CN=CA:FALSE root\" of the root certificate file \"root.crt\", \
                 which signed \"CN=localhost\", is not a CA certificate (basicConstraints \
                 CA:FALSE)",
            ],
        );
        // Nor does a root without basicConstraints or keyCertSign, nor one whose key usage
        // lacks keyCertSign.
        let bare = make("bare root", None, |_| {});
        let leaf = make("localhost", Some(&bare), |_| {});
        assert_refused(
            verdict(&trust(&[bare.parsed()], None), &leaf.parsed(), &[]),
            &["is not a CA certificate (it has no basicConstraints CA:TRUE)"],
        );
        let no_sign = make("no-sign root", None, |p| {
            ca(p);
            p.key_usages = vec![KeyUsagePurpose::CrlSign];
        });
        let leaf = make("localhost", Some(&no_sign), |_| {});
        assert_refused(
            verdict(&trust(&[no_sign.parsed()], None), &leaf.parsed(), &[]),
            &["is not a CA certificate (its key usage lacks keyCertSign)"],
        );
        // keyCertSign without basicConstraints is tolerated for a root.
        let ku_only = make("ku root", None, |p| {
            // keyUsage keyCertSign (rcgen writes none without basicConstraints).
            let usage = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 2, 4]);
            p.custom_extensions = vec![usage];
        });
        let leaf = make("localhost", Some(&ku_only), |_| {});
        assert_eq!(
            verdict(&trust(&[ku_only.parsed()], None), &leaf.parsed(), &[]),
            Ok(())
        );
    }

    #[test]
    fn an_expired_root_trusts_nothing() {
        // D2.
        let root = make("expired CA", None, |p| {
            ca(p);
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2020, 2, 1);
        });
        let leaf = make("localhost", Some(&root), |_| {});
        assert_refused(
            verdict(&trust(&[root.parsed()], None), &leaf.parsed(), &[]),
            &[
                "the certificate \"CN=expired CA\" of the root certificate file \"root.crt\" \
               expired on 2020-02-01T00:00:00Z (now 2030-01-01T00:00:00Z)",
            ],
        );
        let future = make("localhost", None, |p| {
            ca(p);
            p.not_before = date_time_ymd(2090, 1, 1);
        });
        assert_refused(
            verdict(&trust(&[future.parsed()], None), &future.parsed(), &[]),
            &["the server certificate \"CN=localhost\" is not valid before 2090-01-01T00:00:00Z"],
        );
    }

    #[test]
    fn with_crls_every_certificate_needs_its_issuers() {
        let serial = [0x0a_u8, 0x0b];
        let docs = make("localhost", None, |p| {
            ca(p);
            p.serial_number = Some(SerialNumber::from_slice(&serial));
        });
        let roots = [docs.parsed()];
        // D3: revoked by its own CRL.
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![crl(&docs, &[&serial], 2090)])),
                &docs.parsed(),
                &[],
            ),
            &["the server certificate \"CN=localhost\" is revoked (since \
               2021-01-01T00:00:00Z) by the certificate revocation list \"root.crl\" of \
               \"CN=localhost\""],
        );
        assert_eq!(
            verdict(
                &trust(&roots, Some(vec![crl(&docs, &[b"\x01"], 2090)])),
                &docs.parsed(),
                &[]
            ),
            Ok(())
        );
        // A CRL of another CA only: none for this certificate.
        let other = make("other CA", None, ca);
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![crl(&other, &[], 2090)])),
                &docs.parsed(),
                &[],
            ),
            &[
                "no certificate revocation list of sslcrl \"root.crl\" is from \"CN=localhost\", \
               the issuer of the server certificate \"CN=localhost\"",
            ],
        );
        // Out of date, or signed by another key of the same name.
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![crl(&docs, &[], 2025)])),
                &docs.parsed(),
                &[],
            ),
            &["is out of date: its next update was due on 2025-01-01T00:00:00Z"],
        );
        let impostor = make("localhost", None, ca);
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![crl(&impostor, &[], 2090)])),
                &docs.parsed(),
                &[],
            ),
            &[
                "no certificate revocation list",
                "its authority key identifier names another certificate than the server \
                 certificate \"CN=localhost\"",
            ],
        );
        // A CA and its server certificate: the CA's CRL covers both.
        let ca_cert = make("CA", None, ca);
        let leaf_serial = [0x42_u8];
        let leaf = make("localhost", Some(&ca_cert), |p| {
            p.serial_number = Some(SerialNumber::from_slice(&leaf_serial));
        });
        let roots = [ca_cert.parsed()];
        assert_eq!(
            verdict(
                &trust(&roots, Some(vec![crl(&ca_cert, &[], 2090)])),
                &leaf.parsed(),
                &[]
            ),
            Ok(())
        );
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![crl(&ca_cert, &[&leaf_serial], 2090)])),
                &leaf.parsed(),
                &[],
            ),
            &["the server certificate \"CN=localhost\" is revoked"],
        );
        // The newest of two CRLs of the same CA counts.
        let mut older = crl(&ca_cert, &[], 2090);
        older.this_update -= 1;
        assert_refused(
            verdict(
                &trust(
                    &roots,
                    Some(vec![older, crl(&ca_cert, &[&leaf_serial], 2090)]),
                ),
                &leaf.parsed(),
                &[],
            ),
            &["is revoked"],
        );
    }

    #[test]
    fn delta_crls_and_removed_entries_as_openssl_reads_them() {
        let ca_cert = make("CA", None, ca);
        let serial = [0x42_u8];
        let leaf = make("localhost", Some(&ca_cert), |p| {
            p.serial_number = Some(SerialNumber::from_slice(&serial));
        });
        let roots = [ca_cert.parsed()];
        // A delta CRL counts as a complete one: the newest decides.
        let mut base = crl(&ca_cert, &[], 2090);
        base.this_update -= 1;
        let mut delta = crl(&ca_cert, &[&serial], 2090);
        delta.delta = true;
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![base.clone(), delta.clone()])),
                &leaf.parsed(),
                &[],
            ),
            &[
                "is revoked",
                "by the delta certificate revocation list \"root.crl\"",
                "libpq reads a delta CRL as a complete one",
            ],
        );
        base.this_update += 2;
        assert_eq!(
            verdict(&trust(&roots, Some(vec![delta, base])), &leaf.parsed(), &[]),
            Ok(())
        );
        // An entry with reason removeFromCRL revokes nothing; other reasons do.
        let with_reason = |reason| {
            let der = CertificateRevocationListParams {
                this_update: date_time_ymd(2020, 1, 1),
                next_update: date_time_ymd(2090, 1, 1),
                crl_number: SerialNumber::from_slice(&[3]),
                issuing_distribution_point: None,
                revoked_certs: vec![RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: date_time_ymd(2021, 1, 1),
                    reason_code: Some(reason),
                    invalidity_date: None,
                }],
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&ca_cert.cert, &ca_cert.key)
            .unwrap();
            Crl::parse(der.der(), "root.crl".into()).unwrap()
        };
        let removed = with_reason(rcgen::RevocationReason::RemoveFromCrl);
        assert_eq!(
            verdict(&trust(&roots, Some(vec![removed])), &leaf.parsed(), &[]),
            Ok(())
        );
        let compromised = with_reason(rcgen::RevocationReason::KeyCompromise);
        assert_refused(
            verdict(&trust(&roots, Some(vec![compromised])), &leaf.parsed(), &[]),
            &["is revoked"],
        );
    }

    #[test]
    fn a_crl_is_signed_by_the_certificate_its_authority_key_identifier_names() {
        // A key rollover: "CN=X" signed by the root "CN=X" with another key, the server
        // certificate by it; every certificate names its issuer's key.
        let root = make("X", None, ca);
        let inter = make("X", Some(&root), ca);
        let serial = [0x42_u8];
        let leaf = make("localhost", Some(&inter), |p| {
            p.serial_number = Some(SerialNumber::from_slice(&serial));
        });
        let roots = [root.parsed()];
        let intermediates = [inter.parsed()];
        // The root's CRL also covers the server certificate (higher up the chain, same name:
        // OpenSSL's CRL_SCORE_SAME_PATH), checked with the root's key.
        assert_eq!(
            verdict(
                &trust(&roots, Some(vec![crl(&root, &[], 2090)])),
                &leaf.parsed(),
                &intermediates
            ),
            Ok(())
        );
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![crl(&root, &[&serial], 2090)])),
                &leaf.parsed(),
                &intermediates,
            ),
            &["the server certificate \"CN=localhost\" is revoked"],
        );
        // The intermediate's own CRL ranks first for the server certificate, even older; it is
        // left out for the intermediate, whose issuer is the root.
        let mut by_inter = crl(&inter, &[], 2090);
        by_inter.this_update -= 1;
        assert_eq!(
            verdict(
                &trust(
                    &roots,
                    Some(vec![by_inter.clone(), crl(&root, &[&serial], 2090)])
                ),
                &leaf.parsed(),
                &intermediates
            ),
            Ok(())
        );
        assert_refused(
            verdict(
                &trust(&roots, Some(vec![by_inter])),
                &leaf.parsed(),
                &intermediates,
            ),
            &[
                "no certificate revocation list",
                "the issuer of the intermediate certificate \"CN=X\"",
                "its authority key identifier names another certificate than the certificate \
                 \"CN=X\" of the root certificate file",
            ],
        );
    }

    #[test]
    fn crls_libpq_would_not_use_as_they_are() {
        let ca_cert = make("CA", None, ca);
        let leaf = make("localhost", Some(&ca_cert), |_| {});
        let roots = [ca_cert.parsed()];
        // Not yet valid.
        let mut early = crl(&ca_cert, &[], 2090);
        early.this_update = NOW + 1;
        assert_refused(
            verdict(&trust(&roots, Some(vec![early])), &leaf.parsed(), &[]),
            &["the certificate revocation list \"root.crl\" of \"CN=CA\" is not valid before"],
        );
        // An issuing distribution point: a scope we do not check.
        let scoped = rcgen::CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from_slice(&[2]),
            issuing_distribution_point: Some(rcgen::CrlIssuingDistributionPoint {
                distribution_point: rcgen::CrlDistributionPoint {
                    uris: vec!["http://crl.example/ca.crl".to_owned()],
                },
                scope: Some(rcgen::CrlScope::UserCertsOnly),
            }),
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca_cert.cert, &ca_cert.key)
        .unwrap();
        let scoped = Crl::parse(scoped.der(), "root.crl".into()).unwrap();
        let refusal = trust(&roots, Some(vec![scoped]))
            .verify(&leaf.parsed(), &[], NOW)
            .unwrap_err();
        assert!(refusal.unsupported, "{refusal}");
        assert!(
            refusal
                .message
                .contains("has an issuing distribution point"),
            "{refusal}"
        );
        // A CA whose key usage does not allow CRLs.
        let no_crl_sign = make("CA without cRLSign", None, |p| {
            ca(p);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        });
        let leaf = make("localhost", Some(&no_crl_sign), |_| {});
        // (rcgen signs CRLs only for issuers with cRLSign: a twin with it and the same key.)
        let mut twin = CertificateParams::new(Vec::<String>::new()).unwrap();
        twin.distinguished_name = no_crl_sign.cert.params().distinguished_name.clone();
        twin.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let twin = Made {
            cert: twin.self_signed(&no_crl_sign.key).unwrap(),
            key: KeyPair::from_pem(&no_crl_sign.key.serialize_pem()).unwrap(),
        };
        let by_it = crl(&twin, &[], 2090);
        assert_refused(
            verdict(
                &trust(&[no_crl_sign.parsed()], Some(vec![by_it])),
                &leaf.parsed(),
                &[],
            ),
            &[
                "the certificate \"CN=CA without cRLSign\" of the root certificate file \
               \"root.crt\" may not sign certificate revocation lists: its key usage lacks \
               cRLSign",
            ],
        );
        // A path length that holds.
        let one = make("one-level CA", None, |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        });
        let inter = make("intermediate", Some(&one), ca);
        let leaf = make("localhost", Some(&inter), |_| {});
        assert_eq!(
            verdict(
                &trust(&[one.parsed()], None),
                &leaf.parsed(),
                &[inter.parsed()]
            ),
            Ok(())
        );
    }

    #[test]
    fn key_usages_of_a_tls_server() {
        let ca_cert = make("CA", None, ca);
        let roots = [ca_cert.parsed()];
        // D4: keyCertSign only, or anyExtendedKeyUsage only: not for TLS servers.
        let cert_sign = make("localhost", Some(&ca_cert), |p| {
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        });
        assert_refused(
            verdict(&trust(&roots, None), &cert_sign.parsed(), &[]),
            &[
                "the server certificate \"CN=localhost\" is not for TLS servers: its key usage \
               (keyCertSign) has none of digitalSignature, keyEncipherment, keyAgreement",
            ],
        );
        let any = make("localhost", Some(&ca_cert), |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any];
        });
        assert_refused(
            verdict(&trust(&roots, None), &any.parsed(), &[]),
            &["is not for TLS servers: its extended key usage lacks serverAuth"],
        );
        for usages in [
            vec![KeyUsagePurpose::DigitalSignature],
            vec![KeyUsagePurpose::KeyEncipherment],
            vec![KeyUsagePurpose::KeyAgreement],
        ] {
            let fine = make("localhost", Some(&ca_cert), |p| {
                p.key_usages = usages;
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            });
            assert_eq!(verdict(&trust(&roots, None), &fine.parsed(), &[]), Ok(()));
        }
        // A self-signed certificate with keyCertSign and cRLSign only, trusted as itself.
        let self_ku = make("localhost", None, |p| {
            ca(p);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        });
        assert_refused(
            verdict(&trust(&[self_ku.parsed()], None), &self_ku.parsed(), &[]),
            &["is not for TLS servers: its key usage (keyCertSign, cRLSign)"],
        );
        // A CA for client certificates only.
        let client_ca = make("client CA", None, |p| {
            ca(p);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        let leaf = make("localhost", Some(&client_ca), |_| {});
        assert_refused(
            verdict(&trust(&[client_ca.parsed()], None), &leaf.parsed(), &[]),
            &[
                "\"CN=client CA\" of the root certificate file \"root.crt\" may not sign TLS \
               server certificates: its extended key usage lacks serverAuth",
            ],
        );
    }

    #[test]
    fn version_1_certificates_as_openssl_x509_req_makes_them() {
        // D5: a v1 server certificate signed by a v3 CA, and a v1 self-signed root.
        let v1_leaf = pem_cert(V1_LEAF);
        assert_eq!(v1_leaf.version, 1);
        assert_eq!(
            verdict(&trust(&[pem_cert(V1_CA)], None), &v1_leaf, &[]),
            Ok(())
        );
        assert_eq!(
            verdict(
                &trust(&[pem_cert(V1_ROOT)], None),
                &pem_cert(V1_BY_ROOT),
                &[]
            ),
            Ok(())
        );
        assert_refused(
            verdict(&trust(&[pem_cert(V1_ROOT)], None), &v1_leaf, &[]),
            &["unknown issuer \"CN=v1 test CA\""],
        );
        // Alone in the root file, it is no trust anchor (not self-signed).
        assert_refused(
            verdict(&trust(std::slice::from_ref(&v1_leaf), None), &v1_leaf, &[]),
            &[
                "unknown issuer \"CN=v1 test CA\"); it is itself in that file, but libpq trusts \
               a certificate as itself only when it is self-signed",
            ],
        );
        // Dates are checked: valid from 2026-12-08.
        assert_refused(
            trust(&[pem_cert(V1_CA)], None)
                .verify(&v1_leaf, &[], 1_700_000_000)
                .map_err(|r| r.message),
            &[
                "the certificate \"CN=v1 test CA\" of the root certificate file \"root.crt\" is \
               not valid before 2026-12-08T02:17:10Z",
            ],
        );
    }

    #[test]
    fn critical_extensions_and_intermediates_in_words() {
        // D6.
        let ca_cert = make("CA", None, ca);
        let roots = [ca_cert.parsed()];
        let critical = |p: &mut CertificateParams| {
            let mut ext = CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![0x05, 0x00]);
            ext.set_criticality(true);
            p.custom_extensions = vec![ext];
        };
        let unknown = make("localhost", Some(&ca_cert), critical);
        assert_refused(
            verdict(&trust(&roots, None), &unknown.parsed(), &[]),
            &[
                "the server certificate \"CN=localhost\" has a critical extension 1.2.3.4 that \
               libpq (OpenSSL) does not know",
            ],
        );
        let self_unknown = make("localhost", None, |p| {
            ca(p);
            critical(p);
        });
        assert_refused(
            verdict(
                &trust(&[self_unknown.parsed()], None),
                &self_unknown.parsed(),
                &[],
            ),
            &["critical extension 1.2.3.4"],
        );
        // Intermediates the server sends: a CA, and one that is not.
        let inter = make("intermediate", Some(&ca_cert), ca);
        let leaf = make("localhost", Some(&inter), |_| {});
        assert_eq!(
            verdict(&trust(&roots, None), &leaf.parsed(), &[inter.parsed()]),
            Ok(())
        );
        assert_refused(
            verdict(&trust(&roots, None), &leaf.parsed(), &[]),
            &["unknown issuer \"CN=intermediate\""],
        );
        let not_ca = make("not a CA", Some(&ca_cert), |p| p.is_ca = IsCa::ExplicitNoCa);
        let leaf = make("localhost", Some(&not_ca), |_| {});
        assert_refused(
            verdict(&trust(&roots, None), &leaf.parsed(), &[not_ca.parsed()]),
            &[
                "the intermediate certificate \"CN=not a CA\" the server sent, which signed \
               \"CN=localhost\", is not a CA certificate (basicConstraints CA:FALSE)",
            ],
        );
        // An intermediate alone in the root file is no trust anchor.
        let leaf = make("localhost", Some(&inter), |_| {});
        assert_refused(
            verdict(&trust(&[inter.parsed()], None), &leaf.parsed(), &[]),
            &[
                "the certificate \"CN=intermediate\" of the root certificate file \"root.crt\", \
               the issuer of the server certificate \"CN=localhost\", is not self-signed, and \
               its issuer \"CN=CA\" is not in the root certificate file \"root.crt\"",
            ],
        );
        // Path length: a root allowing no intermediate.
        let strict = make("strict CA", None, |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        });
        let inter = make("intermediate", Some(&strict), ca);
        let leaf = make("localhost", Some(&inter), |_| {});
        assert_refused(
            verdict(
                &trust(&[strict.parsed()], None),
                &leaf.parsed(),
                &[inter.parsed()],
            ),
            &["allows 0 intermediate certificate(s) below it, the chain has 1"],
        );
    }

    #[test]
    fn what_we_cannot_check_is_refused_as_such() {
        // Name constraints on a CA: OpenSSL checks them, we do not.
        let constrained = make("constrained CA", None, |p| {
            ca(p);
            p.name_constraints = Some(NameConstraints {
                permitted_subtrees: vec![GeneralSubtree::DnsName("example.com".into())],
                excluded_subtrees: Vec::new(),
            });
        });
        let leaf = make("localhost", Some(&constrained), |_| {});
        let refusal = trust(&[constrained.parsed()], None)
            .verify(&leaf.parsed(), &[], NOW)
            .unwrap_err();
        assert!(refusal.unsupported, "{refusal}");
        assert!(
            refusal.message.contains("has name constraints"),
            "{refusal}"
        );
        // A certificate naming itself as issuer, signed by another key: OpenSSL trusts it as
        // itself when it is in the root file; we want its signature to be its own.
        let ca_cert = make("localhost", None, ca);
        let fake = make("localhost", Some(&ca_cert), |p| {
            p.use_authority_key_identifier_extension = false;
        });
        let refusal = trust(&[fake.parsed()], None)
            .verify(&fake.parsed(), &[], NOW)
            .unwrap_err();
        assert!(refusal.unsupported, "{refusal}");
        assert!(
            refusal
                .message
                .contains("its signature does not verify with its own key"),
            "{refusal}"
        );
        // A signature algorithm the provider lacks (ecdsa-with-SHA512 on P-256, written over
        // ecdsa-with-SHA256, same length).
        let ca_cert = make("CA", None, ca);
        let leaf = make("localhost", Some(&ca_cert), |_| {});
        let sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let mut der = leaf.cert.der().to_vec();
        let mut at = 0;
        while let Some(i) = der[at..].windows(sha256.len()).position(|w| w == sha256) {
            der[at + i + sha256.len() - 1] = 0x04;
            at += i + sha256.len();
        }
        let refusal = trust(&[ca_cert.parsed()], None)
            .verify(&Cert::parse(&der).unwrap(), &[], NOW)
            .unwrap_err();
        assert!(refusal.unsupported, "{refusal}");
        assert!(
            refusal.message.contains(
                "the signature of the server certificate \"CN=localhost\" by the certificate \
                 \"CN=CA\" of the root certificate file \"root.crt\" uses the signature \
                 algorithm ecdsa-with-SHA512 with an EC key on P-256, which this client cannot \
                 verify"
            ),
            "{refusal}"
        );
    }

    #[test]
    fn the_system_bundle_is_named_once() {
        // D9.
        let docs = make("localhost", None, ca);
        let system = Trust::new(
            vec![make("some CA", None, ca).parsed()],
            "system's CA bundle".to_owned(),
            None,
            rustls::crypto::ring::default_provider().signature_verification_algorithms,
        );
        assert_refused(
            verdict(&system, &docs.parsed(), &[]),
            &["is not one of the certificates of the system's CA bundle (unknown issuer)"],
        );
    }
}
