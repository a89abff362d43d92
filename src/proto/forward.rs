//! Writing the heads we send on: requests to the backend, responses to the client.
//!
//! The body is never touched (it is forwarded verbatim), so only the head is
//! rewritten: hop-by-hop headers belong to one connection and are dropped
//! (RFC 9110 §7.6.1), the forwarding headers the backend relies on are set
//! by us rather than trusted from the client, our own `Connection`
//! header says what *this* hop does, and the request's framing is restated as
//! the one value we framed it by (equal duplicate Content-Lengths collapse
//! into one header).
//!
//! Output goes into a caller-owned `Vec<u8>` that is reused for every
//! request; the functions only append (`extend_from_slice`, `write!` of
//! integers and IP addresses, which format without allocating), so after the
//! buffer has grown once there is no allocation per request.

use std::io::Write;
use std::net::IpAddr;

use super::cookie::write_cookie_without;
use super::head::{BodyKind, Request};
use super::response::{RespBody, Response};
use super::{eq_ic, list_items};

/// How to rewrite a request head for the backend. One per listener/route;
/// `client_ip` and `https` change per connection.
#[derive(Debug, Clone, Copy)]
pub struct ForwardOpts<'a> {
    /// The client's address, for X-Forwarded-For / X-Real-IP.
    pub client_ip: IpAddr,
    /// The client connection was TLS (terminated in front of us), for X-Forwarded-Proto.
    pub https: bool,
    /// Append the client IP to X-Forwarded-For (combining all incoming XFF values).
    pub forward_for: bool,
    /// Set X-Real-IP (any incoming one is dropped).
    pub real_ip: bool,
    /// Set X-Forwarded-Proto (any incoming one is dropped).
    pub forward_proto: bool,
    /// Set X-Forwarded-Host to the client's Host (any incoming one is dropped).
    pub forward_host: bool,
    /// This is a validated WebSocket upgrade: send `Connection: Upgrade` and
    /// `Upgrade: websocket` instead of `Connection: keep-alive`.
    pub upgrade: bool,
    /// Remove this cookie (our route cookie) from Cookie headers; a Cookie
    /// header left empty is dropped.
    pub strip_cookie: Option<&'a str>,
    /// One extra header to add (e.g. a request id); the caller guarantees a
    /// token name and a value without CR/LF. Any header of that name the
    /// client sent is dropped, so the backend sees exactly ours.
    pub extra_header: Option<(&'a str, &'a [u8])>,
}

/// How to rewrite a response head for the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct RespForwardOpts<'a> {
    /// A Set-Cookie value to add (see [`super::write_set_cookie`]).
    pub set_cookie: Option<&'a [u8]>,
    /// Close the client connection after this response. Forced on for a
    /// close-delimited body; ignored for a 101.
    pub close: bool,
    /// The body is relayed de-chunked (to an HTTP/1.0 client): `Transfer-Encoding` is
    /// dropped, and the close ends the body.
    pub dechunk: bool,
}

/// Headers that are always hop-by-hop (RFC 9110 §7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive` still seen in the wild).
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-connection",
        b"upgrade",
    ];
    HOP.iter().any(|h| eq_ic(name, h))
}

/// True if a `Connection` header names `name`, so it is hop-by-hop too.
/// Framing and routing headers are never dropped this way: a client that
/// sends `Connection: Content-Length` must not make the backend see a
/// different body length than we do.
fn named_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    const PROTECTED: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];
    !PROTECTED.iter().any(|p| eq_ic(name, p))
        && headers
            .iter()
            .filter(|h| eq_ic(h.name.as_bytes(), b"connection"))
            .any(|h| list_items(h.value).any(|t| eq_ic(t, name)))
}

/// `Expect: 100-continue` is answered by the gateway itself (it sends the 100 when it starts
/// reading the body), so the backend never holds a response for a 1xx the client will not
/// wait for. Other expectations pass through.
fn is_expect_continue(name: &[u8], value: &[u8]) -> bool {
    eq_ic(name, b"expect") && eq_ic(value, b"100-continue")
}

fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the request head to send to the backend (request line, headers,
/// final empty line). Always `HTTP/1.1` and origin-form; at most one
/// `Content-Length`, with the single value the parser accepted; `Host` is written
/// first from [`Request::host`] (empty if the 1.0 client sent none), so an
/// absolute-form target's authority reaches the backend as Host
/// (RFC 9112 §3.2.2).
pub fn write_request_head(req: &Request<'_, '_>, out: &mut Vec<u8>, opts: &ForwardOpts<'_>) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // An HTTP/1.0 request may lack Host; HTTP/1.1 requires the field, empty
    // when there is no authority (RFC 9112 §3.2).
    put(out, b"Host", req.host.unwrap_or("").as_bytes());
    let has_connection = req.header("connection").is_some();
    let mut length_written = false;
    for h in req.headers {
        let name = h.name.as_bytes();
        if eq_ic(name, b"content-length") {
            // The parser accepted only equal values (`3, 3`, or several `3` lines:
            // RFC 9110 §8.6 lets a recipient replace them with one), so the backend gets
            // exactly one, in canonical form, where the first one stood. Passing the list
            // on would leave the backend to choose between rejecting it and reading it its
            // own way.
            if let (BodyKind::Length(n), false) = (req.body, length_written) {
                length_written = true;
                // Writing into a Vec cannot fail.
                let _ = write!(out, "Content-Length: {n}\r\n");
            }
            continue;
        }
        let drop = eq_ic(name, b"host")
            || is_hop_by_hop(name)
            || (has_connection && named_by_connection(req.headers, name))
            || (opts.forward_for && eq_ic(name, b"x-forwarded-for"))
            || (opts.real_ip && eq_ic(name, b"x-real-ip"))
            || (opts.forward_proto && eq_ic(name, b"x-forwarded-proto"))
            || (opts.forward_host && eq_ic(name, b"x-forwarded-host"))
            || is_expect_continue(name, h.value)
            || opts
                .extra_header
                .is_some_and(|(n, _)| eq_ic(name, n.as_bytes()));
        if drop {
            continue;
        }
        match opts.strip_cookie {
            Some(cookie) if eq_ic(name, b"cookie") => {
                let mark = out.len();
                out.extend_from_slice(b"Cookie: ");
                if write_cookie_without(out, h.value, cookie) {
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.truncate(mark);
                }
            }
            _ => put(out, name, h.value),
        }
    }
    if opts.forward_for {
        out.extend_from_slice(b"X-Forwarded-For: ");
        for h in req
            .headers
            .iter()
            .filter(|h| eq_ic(h.name.as_bytes(), b"x-forwarded-for"))
        {
            for ip in list_items(h.value).filter(|v| !v.is_empty()) {
                out.extend_from_slice(ip);
                out.extend_from_slice(b", ");
            }
        }
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}\r\n", opts.client_ip);
    }
    if opts.real_ip {
        let _ = write!(out, "X-Real-IP: {}\r\n", opts.client_ip);
    }
    if opts.forward_proto {
        put(
            out,
            b"X-Forwarded-Proto",
            if opts.https { b"https" } else { b"http" },
        );
    }
    if opts.forward_host {
        if let Some(host) = req.host {
            put(out, b"X-Forwarded-Host", host.as_bytes());
        }
    }
    if let Some((name, value)) = opts.extra_header {
        put(out, name.as_bytes(), value);
    }
    if opts.upgrade {
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    } else {
        out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
    }
}

/// Appends the response head to send to the client. The status line is
/// `HTTP/1.1 <code> <reason as received>`; framing headers pass through
/// unchanged except that Content-Length is dropped when it came with
/// Transfer-Encoding (RFC 9112 §6.3 item 3 requires that of intermediaries).
/// For a 101 the `Upgrade` header is kept and `Connection: Upgrade` written.
pub fn write_response_head(resp: &Response<'_, '_>, out: &mut Vec<u8>, opts: &RespForwardOpts<'_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let c = resp.code.min(999);
    out.extend_from_slice(&[
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let switching = resp.code == 101;
    let has_connection = resp.header("connection").is_some();
    for h in resp.headers {
        let name = h.name.as_bytes();
        let keep_upgrade = switching && eq_ic(name, b"upgrade");
        let drop = !keep_upgrade
            && (is_hop_by_hop(name) || (has_connection && named_by_connection(resp.headers, name)))
            || (resp.length_conflict && eq_ic(name, b"content-length"))
            || (opts.dechunk && eq_ic(name, b"transfer-encoding"));
        if !drop {
            put(out, name, h.value);
        }
    }
    if let Some(cookie) = opts.set_cookie {
        put(out, b"Set-Cookie", cookie);
    }
    let connection: &[u8] = if switching {
        b"Upgrade"
    } else if opts.close || opts.dechunk || resp.body == RespBody::UntilClose {
        b"close"
    } else {
        b"keep-alive"
    };
    put(out, b"Connection", connection);
    out.extend_from_slice(b"\r\n");
}
