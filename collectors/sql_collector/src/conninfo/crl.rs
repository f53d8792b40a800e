//! What a certificate revocation list says, read as OpenSSL (libpq) reads it: version 1 lists
//! without a version field, serial numbers of any length, the extensions its CRL selection
//! uses, and the entries that revoke (not those that remove a revocation).

use std::path::PathBuf;

use x509_cert::Version;
use x509_cert::certificate::Raw;
use x509_cert::der::asn1::BitString;
use x509_cert::der::{Decode as _, Encode as _};
use x509_cert::ext::Extensions;
use x509_cert::name::Name as X509Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;

use super::certificate::{AuthorityKeyId, Cert, Name, Validity};
use super::der::der_element;
use super::signature::Signed;

/// CRL extensions: the issuing distribution point, the authority key identifier and the
/// delta CRL indicator are the critical ones OpenSSL handles; an entry's certificate issuer
/// (indirect CRLs) and reason code.
const ISSUING_DISTRIBUTION_POINT: &str = "2.5.29.28";
const AUTHORITY_KEY_ID: &str = "2.5.29.35";
const DELTA_CRL_INDICATOR: &str = "2.5.29.27";
const CERTIFICATE_ISSUER: &str = "2.5.29.29";
const REASON_CODE: &str = "2.5.29.21";
/// The reason code `removeFromCRL` (ENUMERATED 8): the entry revokes nothing.
const REMOVE_FROM_CRL: u8 = 8;

/// A parsed certificate revocation list.
#[derive(Debug, Clone)]
pub(super) struct Crl {
    /// The file it was read from.
    pub(super) file: PathBuf,
    pub(super) signed: Signed,
    pub(super) issuer: Name,
    pub(super) this_update: u64,
    pub(super) next_update: Option<u64>,
    /// Its entries, in order.
    revoked: Vec<Revoked>,
    authority_key_id: Option<AuthorityKeyId>,
    /// A delta CRL (deltaCRLIndicator), which libpq (OpenSSL without
    /// `X509_V_FLAG_USE_DELTAS`) reads as a complete CRL.
    pub(super) delta: bool,
    /// An issuing distribution point or indirect entries: scopes we do not check.
    pub(super) scoped: bool,
    /// Critical extensions (of the list or of an entry) OpenSSL does not know.
    pub(super) unknown_critical: Vec<String>,
}

/// `CertificateList` (RFC 5280 5.1) as OpenSSL reads it: x509-cert's `CertificateList`, but
/// with the version optional (a version 1 CRL, as `openssl ca -gencrl` makes it without a
/// CRL number, has none) and serial numbers of any length.
#[derive(der::Sequence)]
struct CertificateList {
    tbs_cert_list: TbsCertList,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// `TBSCertList`, read as [`CertificateList`] says.
#[derive(der::Sequence)]
struct TbsCertList {
    version: Option<Version>,
    signature: AlgorithmIdentifierOwned,
    issuer: X509Name,
    this_update: Time,
    next_update: Option<Time>,
    revoked_certificates: Option<Vec<RevokedCert>>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    crl_extensions: Option<Extensions>,
}

/// An entry of `revokedCertificates`.
#[derive(der::Sequence)]
struct RevokedCert {
    serial_number: SerialNumber<Raw>,
    revocation_date: Time,
    crl_entry_extensions: Option<Extensions>,
}

/// An entry of a CRL.
#[derive(Debug, Clone)]
struct Revoked {
    /// The serial number (DER content).
    serial: Vec<u8>,
    /// The revocation time (Unix seconds).
    when: u64,
    /// Reason code removeFromCRL: listed, not revoked.
    removed: bool,
}

impl Crl {
    /// Parses a DER CRL read from `file`.
    pub(super) fn parse(der: &[u8], file: PathBuf) -> Result<Self, String> {
        let crl = CertificateList::from_der(der).map_err(|e| format!("cannot be parsed: {e}"))?;
        let tbs = &crl.tbs_cert_list;
        let inner = tbs.signature.to_der().unwrap_or_default();
        let signed = Signed::split(der, &inner).ok_or("cannot be parsed: not DER")?;
        let mut parsed = Crl {
            file,
            signed,
            issuer: Name::new(&tbs.issuer)?,
            this_update: tbs.this_update.to_unix_duration().as_secs(),
            next_update: tbs.next_update.map(|t| t.to_unix_duration().as_secs()),
            revoked: Vec::new(),
            authority_key_id: None,
            delta: false,
            scoped: false,
            unknown_critical: Vec::new(),
        };
        for ext in tbs.crl_extensions.iter().flatten() {
            let id = ext.extn_id.to_string();
            match id.as_str() {
                ISSUING_DISTRIBUTION_POINT => parsed.scoped = true,
                DELTA_CRL_INDICATOR => parsed.delta = true,
                AUTHORITY_KEY_ID => {
                    parsed.authority_key_id =
                        Some(AuthorityKeyId::parse(ext.extn_value.as_bytes())?);
                }
                _ if ext.critical => parsed.unknown_critical.push(id),
                _ => {}
            }
        }
        for entry in tbs.revoked_certificates.iter().flatten() {
            let mut removed = false;
            for ext in entry.crl_entry_extensions.iter().flatten() {
                let id = ext.extn_id.to_string();
                if id == CERTIFICATE_ISSUER {
                    parsed.scoped = true;
                } else if id == REASON_CODE {
                    // ENUMERATED, as OpenSSL reads it: any value, removeFromCRL is 8.
                    let reason = der_element(ext.extn_value.as_bytes())
                        .filter(|e| e.tag == 0x0A && e.rest.is_empty() && !e.content.is_empty())
                        .ok_or("has a malformed reasonCode in an entry")?;
                    removed = reason.content == [REMOVE_FROM_CRL];
                } else if ext.critical {
                    parsed.unknown_critical.push(id);
                }
            }
            parsed.revoked.push(Revoked {
                serial: entry.serial_number.as_bytes().to_vec(),
                when: entry.revocation_date.to_unix_duration().as_secs(),
                removed,
            });
        }
        Ok(parsed)
    }

    /// Whether the CRL may be `issuer`'s as OpenSSL's `crl_akid_check` decides: its
    /// authority key identifier, if any, names `issuer` (`X509_check_akid`).
    pub(super) fn names_issuer(&self, issuer: &Cert) -> bool {
        self.authority_key_id
            .as_ref()
            .is_none_or(|akid| akid.names(issuer))
    }

    /// Whether its validity holds at `now` (`thisUpdate` passed, `nextUpdate` not).
    pub(super) fn validity(&self, now: u64) -> Validity {
        match self.next_update {
            _ if now < self.this_update => Validity::NotYet(self.this_update),
            Some(next) if now >= next => Validity::Expired(next),
            _ => Validity::Valid,
        }
    }

    /// When it revoked `cert` (by serial number), if it did: as OpenSSL's `cert_crl`, the
    /// first entry of that serial number decides, and one with reason removeFromCRL does not
    /// revoke.
    pub(super) fn revocation_of(&self, cert: &Cert) -> Option<u64> {
        self.revoked
            .iter()
            .find(|entry| entry.serial == cert.serial)
            .filter(|entry| !entry.removed)
            .map(|entry| entry.when)
    }
}
