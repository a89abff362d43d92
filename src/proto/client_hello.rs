//! The TLS ClientHello, read without terminating TLS: enough to route a connection by its SNI
//! (and see its ALPN offer) and then tunnel the untouched bytes to the backend (RFC 8446 §4.1.2,
//! RFC 6066 §3, RFC 7301).
//!
//! Outcomes, as the verdict pattern of this module says:
//! - `Ok(None)`: the ClientHello is not whole yet (split across reads, or across TLS records:
//!   both are reassembled); read more, bounded by [`MAX_HELLO`] and the caller's timeout.
//! - `Ok(Some(hello))`: `hello.sni` is the lower-cased server name, or `None` when the client
//!   sent none (route to the listener's default).
//! - `Err(Reject)`: not TLS, not a ClientHello, garbled, or larger than [`MAX_HELLO`]; the caller
//!   closes the connection (there is no TLS alert to send without a TLS stack).
//!
//! Nothing is allocated: handshake bytes spread over several records are gathered in a stack
//! buffer, and the name is copied into a fixed array.

use super::Reject;

/// The largest ClientHello handshake message accepted. Real ones are 200 B – 2 KiB (post-quantum
/// key shares included); one TLS record holds at most 16 KiB.
pub const MAX_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// A DNS host name from SNI: at most 253 bytes, lower-cased, letters, digits, `-`, `.`, `_`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HostName {
    bytes: [u8; 253],
    len: u8,
}

impl HostName {
    pub fn as_str(&self) -> &str {
        // Only ASCII was copied in (checked in `host_name`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello {
    pub sni: Option<HostName>,
    /// The client offers `h2` / `http/1.1` in ALPN.
    pub alpn_h2: bool,
    pub alpn_http11: bool,
    /// Bytes of the records that carried the ClientHello (what was parsed; the tunnel sends
    /// everything read, untouched, whatever this says).
    pub len: usize,
}

fn garbled(why: &'static str) -> Reject {
    Reject::bad_request(why)
}

/// Parses the ClientHello at the start of `buf` (the first bytes a client sent).
pub fn parse_client_hello(buf: &[u8]) -> Result<Option<ClientHello>, Reject> {
    let mut msg = [0u8; MAX_HELLO];
    let mut have = 0usize;
    let mut at = 0usize;
    let mut want: Option<usize> = None; // the handshake message length once known
    loop {
        if let Some(n) = want {
            if have >= n {
                return hello(&msg[..n], at).map(Some);
            }
        }
        let Some(rec) = buf.get(at..at + RECORD_HEADER) else {
            return first_byte_check(buf).map(|()| None);
        };
        if rec[0] != HANDSHAKE {
            return Err(garbled("not a TLS handshake record"));
        }
        if rec[1] != 3 {
            return Err(garbled("not a TLS record version"));
        }
        let len = u16::from_be_bytes([rec[3], rec[4]]) as usize;
        if len == 0 || len > MAX_HELLO {
            return Err(garbled("bad TLS record length"));
        }
        let Some(body) = buf.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            return Ok(None);
        };
        if have + len > MAX_HELLO {
            return Err(Reject::new(431, "ClientHello too large"));
        }
        msg[have..have + len].copy_from_slice(body);
        have += len;
        at += RECORD_HEADER + len;
        if want.is_none() && have >= 4 {
            if msg[0] != CLIENT_HELLO {
                return Err(garbled("first handshake message is not a ClientHello"));
            }
            let n = 4 + u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if n > MAX_HELLO {
                return Err(Reject::new(431, "ClientHello too large"));
            }
            want = Some(n);
        }
    }
}

/// Fewer than 5 bytes: say early when it cannot be TLS at all (plain HTTP sent to a TLS port).
fn first_byte_check(buf: &[u8]) -> Result<(), Reject> {
    match buf.first() {
        Some(&b) if b != HANDSHAKE => Err(garbled("not a TLS handshake record")),
        _ => Ok(()),
    }
}

/// A cursor over the handshake message; every read is bounds-checked.
struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        if n > self.b.len() {
            return Err(garbled("truncated ClientHello"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<usize, Reject> {
        Ok(self.take(1)?[0] as usize)
    }
    fn u16(&mut self) -> Result<usize, Reject> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    /// A vector with a 1- or 2-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], Reject> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], Reject> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn hello(msg: &[u8], len: usize) -> Result<ClientHello, Reject> {
    let mut c = Cur { b: &msg[4..] };
    c.take(2 + 32)?; // legacy_version, random
    c.vec8()?; // legacy_session_id
    let suites = c.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(garbled("bad cipher suites"));
    }
    c.vec8()?; // legacy_compression_methods
    let mut out = ClientHello {
        sni: None,
        alpn_h2: false,
        alpn_http11: false,
        len,
    };
    if c.b.is_empty() {
        return Ok(out); // no extensions at all (old clients): no SNI
    }
    let mut exts = Cur { b: c.vec16()? };
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.b.is_empty() {
        let ty = exts.u16()? as u16;
        let data = exts.vec16()?;
        match ty {
            EXT_SERVER_NAME if seen_sni => return Err(garbled("two server_name extensions")),
            EXT_SERVER_NAME => {
                seen_sni = true;
                out.sni = server_name(data)?;
            }
            EXT_ALPN if seen_alpn => return Err(garbled("two ALPN extensions")),
            EXT_ALPN => {
                seen_alpn = true;
                let mut list = Cur {
                    b: Cur { b: data }.vec16()?,
                };
                while !list.b.is_empty() {
                    match list.vec8()? {
                        b"h2" => out.alpn_h2 = true,
                        b"http/1.1" => out.alpn_http11 = true,
                        [] => return Err(garbled("empty ALPN protocol name")),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The host_name entry of a server_name extension (RFC 6066 §3: at most one of each type).
fn server_name(data: &[u8]) -> Result<Option<HostName>, Reject> {
    let mut list = Cur {
        b: Cur { b: data }.vec16()?,
    };
    let mut name = None;
    while !list.b.is_empty() {
        let ty = list.u8()?;
        let value = list.vec16()?;
        if ty == 0 {
            if name.is_some() {
                return Err(garbled("two SNI host names"));
            }
            name = Some(host_name(value)?);
        }
    }
    Ok(name)
}

fn host_name(v: &[u8]) -> Result<HostName, Reject> {
    let v = v.strip_suffix(b".").unwrap_or(v);
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if v.is_empty() || v.len() > 253 || !v.iter().all(|&b| ok(b)) {
        return Err(garbled("bad SNI host name"));
    }
    let mut bytes = [0u8; 253];
    for (d, s) in bytes.iter_mut().zip(v) {
        *d = s.to_ascii_lowercase();
    }
    Ok(HostName {
        bytes,
        len: v.len() as u8,
    })
}

#[cfg(test)]
#[path = "client_hello_tests.rs"]
mod tests;
