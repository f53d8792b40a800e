//! Reading and writing DER by hand where a parser would refuse what OpenSSL reads: one element
//! at a time, a header for some content, and a certificate's key found by position.

/// One DER element at the start of some bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Element<'a> {
    pub(super) tag: u8,
    /// The element, header included.
    pub(super) whole: &'a [u8],
    pub(super) content: &'a [u8],
    /// What follows it.
    pub(super) rest: &'a [u8],
}

/// The DER element at the start of `der` (definite lengths up to 4 bytes).
pub(super) fn der_element(der: &[u8]) -> Option<Element<'_>> {
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
    let end = header.checked_add(len)?;
    Some(Element {
        tag,
        whole: der.get(..end)?,
        content: der.get(header..end)?,
        rest: &der[end..],
    })
}

/// The `SubjectPublicKeyInfo` of a DER certificate, found by position (so it works for
/// certificates this module would not parse, as when nothing is verified).
pub(super) fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    let certificate = der_element(cert).filter(|e| e.tag == 0x30)?;
    let tbs = der_element(certificate.content).filter(|e| e.tag == 0x30)?;
    let mut field = der_element(tbs.content)?;
    if field.tag == 0xa0 {
        field = der_element(field.rest)?;
    }
    // serial, signature, issuer, validity, subject, then the key.
    for _ in 0..5 {
        field = der_element(field.rest)?;
    }
    (field.tag == 0x30).then_some(field.whole)
}

/// A DER header for `len` bytes of content.
pub(super) fn der_header(tag: u8, len: usize) -> Vec<u8> {
    let mut header = vec![tag];
    if len < 0x80 {
        header.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        header.push(0x80 | bytes.len() as u8);
        header.extend(bytes);
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_is_found_by_position() {
        assert_eq!(spki_of(&[]), None);
        assert_eq!(spki_of(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(
            der_element(&[0x30, 0x82, 0x01]).map(|e| e.tag),
            None,
            "truncated length"
        );
        assert_eq!(der_header(0x31, 0x80), vec![0x31, 0x81, 0x80]);
        assert_eq!(der_header(0x31, 0x1234), vec![0x31, 0x82, 0x12, 0x34]);
    }
}
