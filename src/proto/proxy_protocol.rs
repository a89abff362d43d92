//! PROXY protocol v1 (text) and v2 (binary), as specified by HAProxy
//! (`doc/proxy-protocol.txt`).
//!
//! Parsing is for listeners behind a load balancer that prepends the
//! client's address; writing is for `tcp` mode, so devices' addresses reach
//! the backends. A listener configured for PROXY refuses connections that
//! do not start with a valid header (400 here, which the caller turns into a
//! plain close): accepting a missing header would let any client that
//! reaches the port directly claim any source address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Reject;

/// v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header including CRLF (spec §2.1).
pub const V1_MAX: usize = 107;
/// Largest v2 address+TLV section we accept. The format allows 64 KiB; real
/// load balancers send a few hundred bytes of TLVs at most, and the caller's
/// read buffer must hold the whole header.
pub const V2_MAX_LEN: usize = 2048;

/// The addresses a PROXY header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client; `None` for v1 `UNKNOWN`, v2 `LOCAL`, or an
    /// unsupported family (UDP, unix): use the socket's own peer address then.
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` when `source` is.
    pub dest: Option<SocketAddr>,
}

const NONE: ProxyHeader = ProxyHeader {
    source: None,
    dest: None,
};
const BAD: Reject = Reject::bad_request("invalid PROXY protocol header");

/// Parses a v1 or v2 header at the start of `buf`. `Ok(Some((h, n)))`: the
/// stream proper starts at `buf[n..]`. `Ok(None)`: `buf` is a prefix of a
/// possible header, read more.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, Reject> {
    const V1: &[u8] = b"PROXY ";
    let n = buf.len().min(12);
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < 12 { Ok(None) } else { parse_v2(buf) };
    }
    let n = buf.len().min(V1.len());
    if buf[..n] == V1[..n] {
        return if n < V1.len() {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(Reject::bad_request("missing PROXY protocol header"))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, Reject> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(BAD)
        } else {
            Ok(None)
        };
    };
    let line = window[..lf].strip_suffix(b"\r").ok_or(BAD)?;
    let line = std::str::from_utf8(line).map_err(|_| BAD)?;
    let rest = line.strip_prefix("PROXY ").ok_or(BAD)?;
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        // The spec says receivers ignore whatever follows UNKNOWN.
        return Ok(Some((NONE, lf + 1)));
    }
    let mut f = rest.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sp), Some(dp), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(BAD);
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(src.parse::<Ipv4Addr>().map_err(|_| BAD)?),
            IpAddr::V4(dst.parse::<Ipv4Addr>().map_err(|_| BAD)?),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| BAD)?),
            IpAddr::V6(dst.parse::<Ipv6Addr>().map_err(|_| BAD)?),
        ),
        _ => return Err(BAD),
    };
    let header = ProxyHeader {
        source: Some(SocketAddr::new(src, port(sp)?)),
        dest: Some(SocketAddr::new(dst, port(dp)?)),
    };
    Ok(Some((header, lf + 1)))
}

/// A v1 port: 1–5 digits, ≤ 65535. `str::parse::<u16>` would accept `+80`.
fn port(s: &str) -> Result<u16, Reject> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    s.parse().map_err(|_| BAD)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, Reject> {
    let [_, _, _, _, _, _, _, _, _, _, _, _, ver_cmd, fam, l0, l1, ..] = *buf else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(Reject::bad_request("unsupported PROXY protocol version"));
    }
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    if len > V2_MAX_LEN {
        return Err(Reject::bad_request("PROXY v2 header too long"));
    }
    // Refuse a bad command or family now rather than after waiting for the
    // whole address block.
    if ver_cmd & 0x0f > 1 {
        return Err(Reject::bad_request("invalid PROXY v2 command"));
    }
    if !matches!(fam, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
        return Err(Reject::bad_request("invalid PROXY v2 address family"));
    }
    let total = 16 + len;
    let Some(body) = buf.get(16..total) else {
        return Ok(None);
    };
    let header = if ver_cmd & 0x0f == 0 {
        // LOCAL: a health check from the balancer itself; addresses ignored.
        NONE
    } else {
        match fam {
            0x11 if len >= 12 => {
                let ip = |o: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        body[o],
                        body[o + 1],
                        body[o + 2],
                        body[o + 3],
                    ))
                };
                let p = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                ProxyHeader {
                    source: Some(SocketAddr::new(ip(0), p(8))),
                    dest: Some(SocketAddr::new(ip(4), p(10))),
                }
            }
            0x21 if len >= 36 => {
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&body[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(a))
                };
                let p = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                ProxyHeader {
                    source: Some(SocketAddr::new(ip(0), p(32))),
                    dest: Some(SocketAddr::new(ip(16), p(34))),
                }
            }
            0x11 | 0x21 => return Err(Reject::bad_request("PROXY v2 address block too short")),
            // UNSPEC, UDP, unix (checked above): defined but not for us; the
            // spec says to use the real connection endpoints.
            _ => NONE,
        }
    };
    // Anything after the addresses is TLVs, which we skip unread.
    Ok(Some((header, total)))
}

/// Appends a v1 header. Mixed families (v4 source, v6 destination) cannot be
/// expressed and are written as `PROXY UNKNOWN`, which makes the backend use
/// the connection's own addresses.
pub fn write_v1(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    use std::io::Write;
    let proto = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => {
            out.extend_from_slice(b"PROXY UNKNOWN\r\n");
            return;
        }
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    );
}

/// Appends a v2 PROXY-command header over STREAM, without TLVs. Mixed
/// families are written as TCP6 with the IPv4 side as an IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`), so the backend still learns the client's
/// address, which is the point of sending the header.
pub fn write_v2(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

/// Appends a v2 LOCAL header (no addresses), e.g. for health checks.
pub fn write_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trip() {
        for (s, d) in [
            ("1.2.3.4:5678", "10.0.0.1:443"),
            ("[2001:db8::1]:1", "[::1]:65535"),
        ] {
            let mut out = Vec::new();
            write_v1(sa(s), sa(d), &mut out);
            out.extend_from_slice(b"payload");
            let (h, n) = parse(&out).unwrap().unwrap();
            assert_eq!(
                h,
                ProxyHeader {
                    source: Some(sa(s)),
                    dest: Some(sa(d))
                }
            );
            assert_eq!(&out[n..], b"payload");
        }
        let mut out = Vec::new();
        write_v1(sa("1.2.3.4:1"), sa("[::1]:2"), &mut out);
        assert_eq!(out, b"PROXY UNKNOWN\r\n");
        assert_eq!(parse(&out).unwrap().unwrap(), (NONE, out.len()));
    }

    #[test]
    fn v2_round_trip() {
        for (s, d, want_s, want_d) in [
            (
                "1.2.3.4:5678",
                "10.0.0.1:443",
                "1.2.3.4:5678",
                "10.0.0.1:443",
            ),
            ("[2001:db8::1]:1", "[::1]:2", "[2001:db8::1]:1", "[::1]:2"),
            ("1.2.3.4:9", "[::1]:2", "[::ffff:1.2.3.4]:9", "[::1]:2"),
        ] {
            let mut out = Vec::new();
            write_v2(sa(s), sa(d), &mut out);
            out.extend_from_slice(b"\x00rest");
            let (h, n) = parse(&out).unwrap().unwrap();
            assert_eq!(
                h,
                ProxyHeader {
                    source: Some(sa(want_s)),
                    dest: Some(sa(want_d))
                }
            );
            assert_eq!(&out[n..], b"\x00rest");
        }
        let mut out = Vec::new();
        write_v2_local(&mut out);
        assert_eq!(parse(&out).unwrap().unwrap(), (NONE, 16));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut out = Vec::new();
        write_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &mut out);
        out[15] += 7; // length 12 → 19
        out.extend_from_slice(&[0x04, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        out.extend_from_slice(b"GET");
        let (h, n) = parse(&out).unwrap().unwrap();
        assert_eq!(h.source, Some(sa("1.2.3.4:1")));
        assert_eq!(&out[n..], b"GET");
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let mut v1 = Vec::new();
        write_v1(sa("1.2.3.4:5678"), sa("10.0.0.1:443"), &mut v1);
        let mut v2 = Vec::new();
        write_v2(sa("[2001:db8::1]:1"), sa("[::1]:2"), &mut v2);
        for full in [v1, v2] {
            for cut in 0..full.len() {
                assert_eq!(parse(&full[..cut]), Ok(None), "cut {cut}");
            }
        }
    }

    #[test]
    fn garbage_is_400() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
            b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c", // version 1 in v2
            b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c", // command 2
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd", // short v4 block
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", // too long
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x41\x00\x00", // bad family
        ] {
            assert_eq!(
                parse(bad).map_err(|e| e.status),
                Err(400),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX + 1, b'1');
        assert!(parse(&long).is_err());
    }
}
