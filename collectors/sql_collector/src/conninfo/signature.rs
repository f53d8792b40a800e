//! Signatures, verified with the algorithms of rustls's crypto provider (ring): a
//! certificate's or a CRL's with its issuer's key, and the server's handshake signature with
//! its certificate's key, whatever the certificate's version.
//!
//! The provider verifies RSA (PKCS #1 and PSS, keys of 2048 to 8192 bits) with SHA-256/384/512,
//! ECDSA on P-256 and P-384, and Ed25519. Anything else (SHA-1, MD5, RSA keys under 2048 bits,
//! P-521, Ed448, DSA) is [`SignatureError::Unsupported`]: libpq (OpenSSL at its default
//! security level 2) refuses most of it too, but not all, so such a refusal says so.

use rustls::SignatureScheme;
use rustls::crypto::WebPkiSupportedAlgorithms;
use x509_cert::der::asn1::ObjectIdentifier;

use super::der::{der_element, spki_of};

/// Signed data as sent: the bytes signed, the signature algorithm (the content of its
/// `AlgorithmIdentifier`) and the signature.
#[derive(Debug, Clone)]
pub(super) struct Signed {
    pub(super) data: Vec<u8>,
    pub(super) algorithm: Vec<u8>,
    pub(super) signature: Vec<u8>,
    /// Whether the algorithm inside the signed data is the outer one (OpenSSL refuses a
    /// signature otherwise).
    pub(super) algorithms_agree: bool,
}

impl Signed {
    /// Splits `SEQUENCE { data, AlgorithmIdentifier, BIT STRING }`.
    pub(super) fn split(der: &[u8], inner_algorithm: &[u8]) -> Option<Self> {
        let outer = der_element(der).filter(|e| e.tag == 0x30)?;
        let data = der_element(outer.content)?;
        let algorithm = der_element(data.rest).filter(|e| e.tag == 0x30)?;
        let bits = der_element(algorithm.rest).filter(|e| e.tag == 0x03)?;
        let (&0, signature) = bits.content.split_first()? else {
            return None;
        };
        Some(Signed {
            data: data.whole.to_vec(),
            algorithm: algorithm.content.to_vec(),
            signature: signature.to_vec(),
            algorithms_agree: algorithm.whole == inner_algorithm,
        })
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SignatureError {
    /// The signature does not verify with the key.
    Invalid,
    /// We cannot verify this algorithm or key (said in words): libpq might.
    Unsupported(String),
}

/// Verifies `signed` with the key `issuer_spki` (a DER `SubjectPublicKeyInfo`), as OpenSSL's
/// `X509_verify`: the signature algorithm inside the signed data must be the outer one.
pub(super) fn verify_signed(
    algorithms: &WebPkiSupportedAlgorithms,
    issuer_spki: &[u8],
    signed: &Signed,
) -> Result<(), SignatureError> {
    if !signed.algorithms_agree {
        return Err(SignatureError::Invalid);
    }
    let (key_algorithm, key) = spki_parts(issuer_spki)
        .ok_or_else(|| SignatureError::Unsupported("a public key that cannot be read".into()))?;
    let mut known = false;
    for algorithm in algorithms.all {
        if algorithm.signature_alg_id().as_ref() != signed.algorithm.as_slice()
            || algorithm.public_key_alg_id().as_ref() != key_algorithm
        {
            continue;
        }
        known = true;
        if algorithm
            .verify_signature(key, &signed.data, &signed.signature)
            .is_ok()
        {
            return Ok(());
        }
    }
    match weak_key(issuer_spki) {
        Some(weak) => Err(SignatureError::Unsupported(weak)),
        None if known => Err(SignatureError::Invalid),
        None => Err(SignatureError::Unsupported(format!(
            "the signature algorithm {} with {}",
            algorithm_name(&signed.algorithm),
            key_name(issuer_spki)
        ))),
    }
}

/// Why the handshake signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HandshakeError {
    /// The server used a scheme we did not offer (or one TLS 1.3 forbids).
    Unadvertised,
    Signature(SignatureError),
}

/// Verifies the server's handshake signature `signature` of `message` under `scheme` with the
/// key of the DER certificate `cert`: for TLS 1.2 with any algorithm the provider maps the
/// scheme to, for TLS 1.3 with the first only (as rustls does).
pub(super) fn verify_handshake(
    algorithms: &WebPkiSupportedAlgorithms,
    cert: &[u8],
    message: &[u8],
    scheme: SignatureScheme,
    signature: &[u8],
    tls13: bool,
) -> Result<(), HandshakeError> {
    use SignatureScheme::{ECDSA_SHA1_Legacy, RSA_PKCS1_SHA1, RSA_PKCS1_SHA256};
    use SignatureScheme::{RSA_PKCS1_SHA384, RSA_PKCS1_SHA512};
    let forbidden_in_tls13 = matches!(
        scheme,
        RSA_PKCS1_SHA1 | ECDSA_SHA1_Legacy | RSA_PKCS1_SHA256 | RSA_PKCS1_SHA384 | RSA_PKCS1_SHA512
    );
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, algs)| *algs)
        .filter(|_| !(tls13 && forbidden_in_tls13))
        .ok_or(HandshakeError::Unadvertised)?;
    let candidates = if tls13 {
        &candidates[..candidates.len().min(1)]
    } else {
        candidates
    };
    let unsupported = |what: String| HandshakeError::Signature(SignatureError::Unsupported(what));
    let spki = spki_of(cert).ok_or_else(|| unsupported("a certificate without a key".into()))?;
    let (key_algorithm, key) =
        spki_parts(spki).ok_or_else(|| unsupported("a public key that cannot be read".into()))?;
    let mut known = false;
    for algorithm in candidates {
        if algorithm.public_key_alg_id().as_ref() != key_algorithm {
            continue;
        }
        known = true;
        if algorithm.verify_signature(key, message, signature).is_ok() {
            return Ok(());
        }
    }
    if let Some(weak) = weak_key(spki) {
        return Err(unsupported(weak));
    }
    let any_use = algorithms
        .all
        .iter()
        .any(|a| a.public_key_alg_id().as_ref() == key_algorithm);
    if known || any_use {
        Err(HandshakeError::Signature(SignatureError::Invalid))
    } else {
        Err(unsupported(format!("{} ({scheme:?})", key_name(spki))))
    }
}

/// Whether a key of `spki` can make signatures of `signature_algorithm` (OpenSSL's
/// `check_sig_alg_match`, by key family); `true` when either is not known here.
pub(super) fn key_fits_algorithm(spki: &[u8], signature_algorithm: &[u8]) -> bool {
    let key = spki_parts(spki).and_then(|(algorithm, _)| oid_of(algorithm));
    let key = key.as_ref().and_then(|oid| family(oid, true));
    let signature = oid_of(signature_algorithm);
    let signature = signature.as_ref().and_then(|oid| family(oid, false));
    match (key, signature) {
        (Some(key), Some(signature)) => key == signature,
        _ => true,
    }
}

/// The content of the `AlgorithmIdentifier` and the key bits of a DER
/// `SubjectPublicKeyInfo`.
fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let outer = der_element(spki).filter(|e| e.tag == 0x30)?;
    let algorithm = der_element(outer.content).filter(|e| e.tag == 0x30)?;
    let bits = der_element(algorithm.rest).filter(|e| e.tag == 0x03)?;
    let (&0, key) = bits.content.split_first()? else {
        return None;
    };
    Some((algorithm.content, key))
}

/// The OID at the start of an `AlgorithmIdentifier`'s content.
fn oid_of(algorithm: &[u8]) -> Option<ObjectIdentifier> {
    let oid = der_element(algorithm).filter(|e| e.tag == 0x06)?;
    ObjectIdentifier::from_bytes(oid.content).ok()
}

/// The second OID of an `AlgorithmIdentifier`'s content (an EC key's curve).
fn parameter_oid(algorithm: &[u8]) -> Option<ObjectIdentifier> {
    let first = der_element(algorithm)?;
    oid_of(first.rest)
}

/// Key families: "RSA", "EC", "Ed25519", "Ed448", "DSA".
fn family(oid: &ObjectIdentifier, key: bool) -> Option<&'static str> {
    let oid = oid.to_string();
    let rsa = if key {
        matches!(
            oid.as_str(),
            "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10"
        )
    } else {
        matches!(
            oid.as_str(),
            "1.2.840.113549.1.1.2"
                | "1.2.840.113549.1.1.4"
                | "1.2.840.113549.1.1.5"
                | "1.2.840.113549.1.1.10"
                | "1.2.840.113549.1.1.11"
                | "1.2.840.113549.1.1.12"
                | "1.2.840.113549.1.1.13"
                | "1.2.840.113549.1.1.14"
        )
    };
    if rsa {
        return Some("RSA");
    }
    match oid.as_str() {
        "1.2.840.10045.2.1" if key => Some("EC"),
        o if !key && o.starts_with("1.2.840.10045.4.") => Some("EC"),
        "1.3.101.112" => Some("Ed25519"),
        "1.3.101.113" => Some("Ed448"),
        "1.2.840.10040.4.1" if key => Some("DSA"),
        o if !key && (o == "1.2.840.10040.4.3" || o.starts_with("2.16.840.1.101.3.4.3.")) => {
            Some("DSA")
        }
        _ => None,
    }
}

/// A signature algorithm by name (`sha256WithRSAEncryption`), else its OID.
fn algorithm_name(algorithm: &[u8]) -> String {
    let Some(oid) = oid_of(algorithm) else {
        return "(unreadable)".to_owned();
    };
    let name = match oid.to_string().as_str() {
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "RSASSA-PSS",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.14" => "sha224WithRSAEncryption",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.10045.4.3.1" => "ecdsa-with-SHA224",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        other => return other.to_owned(),
    };
    name.to_owned()
}

/// A key by kind and size: "an RSA key of 2048 bits", "an EC key on P-256".
fn key_name(spki: &[u8]) -> String {
    let Some((algorithm, key)) = spki_parts(spki) else {
        return "an unreadable key".to_owned();
    };
    let Some(oid) = oid_of(algorithm) else {
        return "an unreadable key".to_owned();
    };
    match family(&oid, true) {
        Some("RSA") => match rsa_bits(key) {
            Some(bits) => format!("an RSA key of {bits} bits"),
            None => "an RSA key".to_owned(),
        },
        Some("EC") => {
            let curve = parameter_oid(algorithm).map(|c| c.to_string());
            let curve = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "P-256".to_owned(),
                Some("1.3.132.0.34") => "P-384".to_owned(),
                Some("1.3.132.0.35") => "P-521".to_owned(),
                Some(other) => other.to_owned(),
                None => "explicit parameters".to_owned(),
            };
            format!("an EC key on {curve}")
        }
        Some(family) => format!("an {family} key"),
        None => format!("a key of type {oid}"),
    }
}

/// The size of an RSA key (`RSAPublicKey`'s modulus), in bits.
fn rsa_bits(key: &[u8]) -> Option<usize> {
    let sequence = der_element(key).filter(|e| e.tag == 0x30)?;
    let modulus = der_element(sequence.content).filter(|e| e.tag == 0x02)?;
    let digits = modulus.content;
    let start = digits.iter().position(|b| *b != 0)?;
    Some((digits.len() - start) * 8 - digits[start].leading_zeros() as usize)
}

/// An RSA key under 2048 bits, in words: the provider cannot use it (and libpq refuses it at
/// OpenSSL's default security level 2).
fn weak_key(spki: &[u8]) -> Option<String> {
    let (algorithm, key) = spki_parts(spki)?;
    let oid = oid_of(algorithm)?;
    let bits = rsa_bits(key).filter(|_| family(&oid, true) == Some("RSA"))?;
    (bits < 2048).then(|| format!("an RSA key of {bits} bits (2048 at least)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_algorithms_are_named() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let spki = key.public_key_der();
        assert_eq!(key_name(&spki), "an EC key on P-384");
        assert_eq!(weak_key(&spki), None);
        // ecdsa-with-SHA384: fits an EC key, not an RSA one.
        let ecdsa_sha384 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        assert_eq!(algorithm_name(&ecdsa_sha384), "ecdsa-with-SHA384");
        assert!(key_fits_algorithm(&spki, &ecdsa_sha384));
        let sha256_rsa = [
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
        ];
        assert!(!key_fits_algorithm(&spki, &sha256_rsa));
        let dsa_sha256 = [
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02,
        ];
        assert_eq!(algorithm_name(&dsa_sha256), "2.16.840.1.101.3.4.3.2");
        assert!(!key_fits_algorithm(&spki, &dsa_sha256));
        assert_eq!(
            rsa_bits(&[0x30, 0x06, 0x02, 0x02, 0x00, 0x81, 0x02, 0x00]),
            Some(8)
        );
    }
}
