//! The little DER that PKCS#11 attributes need, for the node and any front end: EC points
//! (`CKA_EC_POINT`), `SubjectPublicKeyInfo` (`CKA_PUBLIC_KEY_INFO`), RSA PKCS#8 for key import,
//! and reading the fields PKCS#11 repeats out of an X.509 certificate. Definite lengths of up
//! to 4 bytes only; anything else reads as `None`.

use zeroize::Zeroizing;

/// An uncompressed point from a `CKA_EC_POINT` value: the DER OCTET STRING the spec
/// defines, or the raw 65 bytes many applications send.
pub fn ec_point(v: &[u8]) -> Option<[u8; 65]> {
    let raw = match v {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        _ if v.len() == 65 => v,
        _ => return None,
    };
    if raw[0] != 0x04 {
        return None;
    }
    raw.try_into().ok()
}

/// `CKA_EC_POINT` as PKCS#11 defines it: the point as a DER OCTET STRING.
pub fn ec_point_der(point: &[u8; 65]) -> Vec<u8> {
    tlv(0x04, point)
}

/// The bytes without leading zeros.
pub fn strip(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    &v[start..]
}

/// Bit length of a big-endian unsigned integer without leading zeros.
pub fn bit_len(n: &[u8]) -> u32 {
    match n.first() {
        None => 0,
        Some(&top) => {
            let bytes = u32::try_from(n.len()).unwrap_or(u32::MAX / 8);
            bytes * 8 - top.leading_zeros()
        }
    }
}

fn header_len(len: usize) -> usize {
    match len {
        0..=0x7f => 2,
        0x80..=0xff => 3,
        0x100..=0xffff => 4,
        _ => 5,
    }
}

fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xffff => {
            out.push(0x82);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x83);
            out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        }
    }
}

/// A tag-length-value.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(content.len()) + content.len());
    push_header(&mut out, tag, content.len());
    out.extend_from_slice(content);
    out
}

/// Length of an unsigned INTEGER's content (a zero byte in front of a set top bit).
fn uint_len(v: &[u8]) -> usize {
    let v = strip(v);
    match v.first() {
        None => 1,
        Some(&b) if b & 0x80 != 0 => v.len() + 1,
        Some(_) => v.len(),
    }
}

fn push_uint(out: &mut Vec<u8>, v: &[u8]) {
    let v = strip(v);
    push_header(out, 0x02, uint_len(v));
    if v.first().is_none_or(|&b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(v);
}

const EC_PUBLIC_KEY_ALG: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// `SubjectPublicKeyInfo` of an EC or SM2 key (RFC 5480; SM2 per GB/T 35276 uses
/// id-ecPublicKey with the SM2 curve); `curve_oid` is the curve's OID as DER (`CKA_EC_PARAMS`).
pub fn spki_ec(curve_oid: &[u8], point: &[u8; 65]) -> Vec<u8> {
    let mut algid = EC_PUBLIC_KEY_ALG.to_vec();
    algid.extend_from_slice(curve_oid);
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    let mut content = tlv(0x30, &algid);
    content.extend(tlv(0x03, &bits));
    tlv(0x30, &content)
}

/// `SubjectPublicKeyInfo` of an RSA key (RFC 8017 A.1.1, RFC 3279).
pub fn spki_rsa(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut ints = Vec::new();
    push_uint(&mut ints, n);
    push_uint(&mut ints, e);
    let mut bits = vec![0u8];
    bits.extend(tlv(0x30, &ints));
    let mut content = RSA_ALG_ID.to_vec();
    content.extend(tlv(0x03, &bits));
    tlv(0x30, &content)
}

/// PKCS#8 `PrivateKeyInfo` (RFC 5208) holding an `RSAPrivateKey` (RFC 8017 A.1.2) from
/// `[n, e, d, p, q, dp, dq, qinv]`, written into one buffer of the exact size so that no
/// copy of the key is left in freed memory.
pub fn pkcs8_rsa(parts: &[&[u8]; 8]) -> Zeroizing<Vec<u8>> {
    let ints: usize = 3 + parts
        .iter()
        .map(|p| header_len(uint_len(p)) + uint_len(p))
        .sum::<usize>();
    let rsa_key = header_len(ints) + ints;
    let octets = header_len(rsa_key) + rsa_key;
    let content = 3 + RSA_ALG_ID.len() + octets;
    let mut out = Zeroizing::new(Vec::with_capacity(header_len(content) + content));
    push_header(&mut out, 0x30, content);
    out.extend_from_slice(&[0x02, 0x01, 0x00]);
    out.extend_from_slice(RSA_ALG_ID);
    push_header(&mut out, 0x04, rsa_key);
    push_header(&mut out, 0x30, ints);
    out.extend_from_slice(&[0x02, 0x01, 0x00]);
    for p in parts {
        push_uint(&mut out, p);
    }
    out
}

/// One DER element read off the front of some input: `(tag, content, whole element, rest)`.
pub type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Reads one DER element (definite lengths of up to 4 bytes).
pub fn read(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}

/// The fields of an X.509 certificate that PKCS#11 repeats as attributes (whole DER
/// elements).
pub struct X509Fields<'a> {
    /// `serialNumber` (the INTEGER element).
    pub serial: &'a [u8],
    /// `issuer` (the Name SEQUENCE).
    pub issuer: &'a [u8],
    /// `subject` (the Name SEQUENCE).
    pub subject: &'a [u8],
    /// `subjectPublicKeyInfo` (the SEQUENCE).
    pub spki: &'a [u8],
}

/// Reads `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... } ... }`
/// (RFC 5280 §4.1).
pub fn x509_fields(cert: &[u8]) -> Option<X509Fields<'_>> {
    let (0x30, cert_content, _, []) = read(cert)? else {
        return None;
    };
    let (0x30, tbs, _, _) = read(cert_content)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, _, after) = read(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    let (0x02, _, serial, rest) = read(rest)? else {
        return None;
    };
    let (0x30, _, _, rest) = read(rest)? else {
        return None;
    };
    let (0x30, _, issuer, rest) = read(rest)? else {
        return None;
    };
    let (0x30, _, _, rest) = read(rest)? else {
        return None;
    };
    let (0x30, _, subject, rest) = read(rest)? else {
        return None;
    };
    let (0x30, _, spki, _) = read(rest)? else {
        return None;
    };
    Some(X509Fields {
        serial,
        issuer,
        subject,
        spki,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_tags_and_reads() {
        assert_eq!(strip(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(bit_len(&[0x01, 0x00]), 9);
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, whole, rest) = read(&[0x30, 0x81, 0x02, 9, 9, 7]).expect("read");
        assert_eq!(
            (tag, content, whole.len(), rest),
            (0x30, &[9u8, 9][..], 5, &[7u8][..])
        );
        assert!(read(&[0x30, 0x05, 1]).is_none());
        assert!(read(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
    }

    #[test]
    fn ec_points_raw_or_as_octet_string() {
        let mut point = [7u8; 65];
        point[0] = 0x04;
        assert_eq!(ec_point(&point), Some(point));
        assert_eq!(ec_point(&ec_point_der(&point)), Some(point));
        assert_eq!(ec_point(&point[1..]), None);
        let mut compressed = point;
        compressed[0] = 2;
        assert_eq!(ec_point(&compressed), None);
    }
}
