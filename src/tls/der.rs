//! Just enough DER to read two things out of a leaf certificate: when it expires
//! (`tbsCertificate.validity.notAfter`, for the expiry metric and the "expired" check) and the
//! DNS names it covers (`subjectAltName` dNSName entries, for choosing it by SNI). Sans-I/O,
//! no allocation but the names, and every malformed input is `None`, never a panic (the
//! certificate is operator input).

/// One TLV: tag, contents, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const OID: u8 = 0x06;
/// `id-ce-subjectAltName` (2.5.29.17).
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// The fields of `TBSCertificate` this module reads.
struct Tbs<'a> {
    validity: &'a [u8],
    extensions: Option<&'a [u8]>,
}

fn tbs(cert: &[u8]) -> Option<Tbs<'_>> {
    let (SEQUENCE, cert, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // [0] version
        rest = tlv(rest)?.2; // serialNumber
    } else {
        rest = r; // no version: that was serialNumber
    }
    rest = tlv(rest)?.2; // signature
    rest = tlv(rest)?.2; // issuer
    let (SEQUENCE, validity, r) = tlv(rest)? else {
        return None;
    };
    rest = tlv(r)?.2; // subject
    rest = tlv(rest)?.2; // subjectPublicKeyInfo
    let mut extensions = None;
    while !rest.is_empty() {
        let (tag, body, r) = tlv(rest)?;
        if tag == 0xa3 {
            let (SEQUENCE, exts, _) = tlv(body)? else {
                return None;
            };
            extensions = Some(exts);
        }
        rest = r;
    }
    Some(Tbs {
        validity,
        extensions,
    })
}

/// `notAfter` as Unix seconds.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let t = tbs(cert)?;
    let (_, _, r) = tlv(t.validity)?; // notBefore
    let (tag, time, _) = tlv(r)?;
    parse_time(tag, time)
}

/// The subjectAltName dNSName entries, lower-cased (empty when there is no SAN extension).
pub fn dns_names(cert: &[u8]) -> Option<Vec<String>> {
    let t = tbs(cert)?;
    let mut names = Vec::new();
    let mut exts = t.extensions.unwrap_or(&[]);
    while !exts.is_empty() {
        let (SEQUENCE, ext, r) = tlv(exts)? else {
            return None;
        };
        exts = r;
        let (OID, oid, mut body) = tlv(ext)? else {
            return None;
        };
        if oid != SAN_OID {
            continue;
        }
        if let Some((BOOLEAN, _, r)) = tlv(body) {
            body = r; // critical
        }
        let (OCTET_STRING, value, _) = tlv(body)? else {
            return None;
        };
        let (SEQUENCE, mut general, _) = tlv(value)? else {
            return None;
        };
        while !general.is_empty() {
            let (tag, name, r) = tlv(general)?;
            general = r;
            if tag == 0x82 {
                // [2] dNSName, IA5String
                let s = std::str::from_utf8(name).ok()?;
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Some(names)
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i64;
    }
    Some(v)
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` (the forms RFC 5280 allows).
fn parse_time(tag: u8, t: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, t.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&t[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &t[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&t[..4])?, &t[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let (h, m, s) = (
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(UTC_TIME, b"491231235959Z"), Some(2524607999));
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"20500101000000Z"),
            Some(2524608000)
        );
        assert_eq!(parse_time(UTC_TIME, b"700101000000+"), None);
        assert_eq!(parse_time(UTC_TIME, b"701301000000Z"), None);
        assert_eq!(parse_time(UTC_TIME, b"7001"), None);
        assert_eq!(parse_time(GENERALIZED_TIME, b"2050010100000xZ"), None);
    }

    #[test]
    fn garbage_is_none_never_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x80",
            b"\x30\x03\x30\x01\x00",
            b"\x30\x02\x30\x00",
        ] {
            assert_eq!(not_after(input), None);
            assert_eq!(dns_names(input), None);
        }
        // Every prefix of a real certificate: no panic (the full one is tested in tls::certs).
        let mut x = vec![0x30, 0x82, 0x01, 0x00];
        x.extend(std::iter::repeat_n(0x30, 256));
        for n in 0..x.len() {
            let _ = not_after(&x[..n]);
            let _ = dns_names(&x[..n]);
        }
    }
}
