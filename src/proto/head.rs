//! Request heads: parse zero-copy with httparse, then check them strictly.
//!
//! httparse does the tokenising (and already refuses spaces before a colon,
//! obs-fold continuation lines and control bytes in values). This file adds
//! the rules that decide how a request is *framed and routed*, because that is
//! where a gateway in front of other HTTP parsers gets smuggled through: two
//! Content-Lengths, Content-Length beside Transfer-Encoding, a coding the
//! backend reads differently, a second Host. Anything ambiguous is refused
//! with 400 rather than guessed at; a gateway that guesses differently from
//! its backend is the vulnerability.

use super::path::check_escapes;
use super::{eq_ic, has_forbidden_byte, list_items, parse_decimal, Reject};

/// Bounds on a request head that the parser enforces itself.
///
/// The byte size of the head is bounded by the caller's buffer (it answers 431
/// when the buffer fills without a complete head); the header count is bounded
/// here because httparse needs a slot per header.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Most headers accepted; more → 431. Also capped by the length of the
    /// `headers` slice passed to [`parse_request`].
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits { max_headers: 100 }
    }
}

/// How the request body is delimited (RFC 9112 §6.3 for requests: there is
/// no read-until-close for a request, so no header means no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Neither Content-Length nor Transfer-Encoding.
    None,
    /// Exactly this many bytes follow the head (may be 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`; use [`super::ChunkedScanner`] to find the end.
    Chunked,
}

/// What the client asks to switch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade (no `Upgrade` header, or `Connection` does not name it).
    None,
    /// `Upgrade: websocket` with `Connection: upgrade`; validate with
    /// [`super::check_upgrade`].
    WebSocket,
    /// Some other protocol (`h2c`, …); the gateway does not support it.
    Other,
}

/// A complete, validated request head. Everything borrows from the read
/// buffer (`'b`) and the caller's header array (`'h`); nothing is copied.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    /// Method token as sent (case-sensitive per RFC 9110 §9.1).
    pub method: &'b str,
    /// The request-target exactly as sent (origin-, absolute- or asterisk-form).
    pub target: &'b str,
    /// The origin-form path (`/p?q`) to send on, as received; for an
    /// absolute-form target `http://h/p` this is `/p`, for `*` it is `*`.
    /// Its escapes are well-formed (checked here); routing matches on its
    /// normalised form ([`super::path::normalize`]).
    pub path: &'b str,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1; nothing else gets this far.
    pub minor_version: u8,
    /// All headers, in order.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head including the final empty line; the body (or the
    /// next request) starts at `buf[head_len..]`.
    pub head_len: usize,
    /// Authority to route on: from an absolute-form target if there is one
    /// (RFC 9112 §3.2.2: it wins over Host), otherwise the Host header.
    /// `None` only for an HTTP/1.0 request without Host.
    pub host: Option<&'b str>,
    /// How the body is framed.
    pub body: BodyKind,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// Whether (and to what) the client asks to upgrade.
    pub upgrade: Upgrade,
}

impl<'h, 'b> Request<'h, 'b> {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        header(self.headers, name)
    }

    /// How many headers are named `name` (ASCII case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|h| eq_ic(h.name.as_bytes(), name.as_bytes()))
            .count()
    }
}

/// The first header named `name` (ASCII case-insensitive) in `headers`.
pub fn header<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| eq_ic(h.name.as_bytes(), name.as_bytes()))
        .map(|h| h.value)
}

/// Parses and validates a request head at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Err`: answer `status` and close. The
/// caller answers 431 itself when its buffer is full and this still says
/// `Ok(None)`; this function answers 431 when the head has more headers than
/// `limits.max_headers` (or than `headers` has slots).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    limits: &HeadLimits,
) -> Result<Option<Request<'h, 'b>>, Reject> {
    let max = limits.max_headers.min(headers.len());
    let mut raw = httparse::Request::new(&mut headers[..max]);
    let head_len = match raw.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_error(e, buf)),
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = raw;
    let headers: &'h [httparse::Header<'b>] = headers;
    // Complete guarantees all three are set; defaults only avoid a panic path.
    let method = method.unwrap_or("");
    let target = path.unwrap_or("");
    let minor_version = version.unwrap_or(0);
    if minor_version > 1 {
        return Err(Reject::new(505, "unsupported HTTP version"));
    }
    if method == "CONNECT" {
        return Err(Reject::new(405, "CONNECT is not supported"));
    }

    let (path, authority) = split_target(method, target)?;
    // Routing normalises the path (`proto::path`); one it could not read is refused here.
    check_escapes(path)?;
    let s = scan_headers(headers)?;

    if s.host_count > 1 {
        return Err(Reject::bad_request("more than one Host header"));
    }
    if s.host_count == 0 && minor_version == 1 {
        // RFC 9112 §3.2: even with an absolute-form target.
        return Err(Reject::bad_request("HTTP/1.1 request without Host"));
    }
    let header_host = match s.host_count {
        1 => Some(valid_host(s.host).ok_or(Reject::bad_request("invalid Host header"))?),
        _ => None,
    };
    let host = authority.or(header_host);

    let body = match (s.content_length, s.te_seen) {
        (Some(_), true) => {
            return Err(Reject::bad_request(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (_, true) if minor_version == 0 => {
            return Err(Reject::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        (_, true) if s.chunked_count != 1 => {
            return Err(Reject::bad_request("chunked must appear exactly once"))
        }
        (_, true) => BodyKind::Chunked,
        (Some(n), false) => BodyKind::Length(n),
        (None, false) => BodyKind::None,
    };

    let keep_alive = if minor_version == 1 {
        !s.conn_close
    } else {
        s.conn_keep_alive && !s.conn_close
    };
    let upgrade = match (s.upgrade_header, s.conn_upgrade, s.upgrade_websocket) {
        (true, true, true) => Upgrade::WebSocket,
        (true, true, false) => Upgrade::Other,
        _ => Upgrade::None,
    };

    Ok(Some(Request {
        method,
        target,
        path,
        minor_version,
        headers,
        head_len,
        host,
        body,
        keep_alive,
        upgrade,
    }))
}

/// Everything the checks need, gathered in one pass over the headers.
#[derive(Default)]
struct HeaderScan<'b> {
    host_count: usize,
    host: &'b [u8],
    content_length: Option<u64>,
    te_seen: bool,
    chunked_count: usize,
    conn_close: bool,
    conn_keep_alive: bool,
    conn_upgrade: bool,
    upgrade_header: bool,
    upgrade_websocket: bool,
}

fn scan_headers<'b>(headers: &[httparse::Header<'b>]) -> Result<HeaderScan<'b>, Reject> {
    let mut s = HeaderScan::default();
    for h in headers {
        if has_forbidden_byte(h.value) {
            return Err(Reject::bad_request("NUL, CR or LF in a header value"));
        }
        let name = h.name.as_bytes();
        // Dispatch on length first: most headers match none of these.
        match name.len() {
            4 if eq_ic(name, b"host") => {
                s.host_count += 1;
                s.host = h.value;
            }
            14 if eq_ic(name, b"content-length") => {
                for item in list_items(h.value) {
                    let n =
                        parse_decimal(item).ok_or(Reject::bad_request("invalid Content-Length"))?;
                    if s.content_length.is_some_and(|prev| prev != n) {
                        return Err(Reject::bad_request("conflicting Content-Length values"));
                    }
                    s.content_length = Some(n);
                }
            }
            17 if eq_ic(name, b"transfer-encoding") => {
                s.te_seen = true;
                for item in list_items(h.value) {
                    // Only `chunked`, and only once: a gateway that passes
                    // `gzip, chunked` or `xchunked` on lets the backend decide
                    // where the body ends differently from us.
                    if !eq_ic(item, b"chunked") {
                        return Err(Reject::bad_request("unsupported Transfer-Encoding"));
                    }
                    s.chunked_count += 1;
                }
            }
            10 if eq_ic(name, b"connection") => {
                for t in list_items(h.value) {
                    s.conn_close |= eq_ic(t, b"close");
                    s.conn_keep_alive |= eq_ic(t, b"keep-alive");
                    s.conn_upgrade |= eq_ic(t, b"upgrade");
                }
            }
            7 if eq_ic(name, b"upgrade") => {
                s.upgrade_header = true;
                for t in list_items(h.value) {
                    // `protocol-name ["/" protocol-version]`, RFC 9110 §7.8.
                    let proto = t.split(|&b| b == b'/').next().unwrap_or(t);
                    s.upgrade_websocket |= eq_ic(proto, b"websocket");
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Splits the request-target into the path to send on and, for absolute-form,
/// the authority. Authority-form is CONNECT's and was refused already.
fn split_target<'b>(method: &str, target: &'b str) -> Result<(&'b str, Option<&'b str>), Reject> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((target, None))
        } else {
            Err(Reject::bad_request(
                "asterisk-form target is only for OPTIONS",
            ))
        };
    }
    let b = target.as_bytes();
    let rest_at = if b.len() >= 7 && eq_ic(&b[..7], b"http://") {
        7
    } else if b.len() >= 8 && eq_ic(&b[..8], b"https://") {
        8
    } else {
        return Err(Reject::bad_request("invalid request-target"));
    };
    let rest = &target[rest_at..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = valid_host(authority.as_bytes())
        .ok_or(Reject::bad_request("invalid authority in request-target"))?;
    let path = match path.as_bytes().first() {
        None => "/",
        Some(b'/') => path,
        // `http://h?q` has an empty path we would have to invent a `/` for,
        // which cannot be borrowed from the buffer; nobody sends it.
        Some(_) => return Err(Reject::bad_request("absolute-form target without a path")),
    };
    Ok((path, Some(authority)))
}

/// A Host value we are willing to route on: non-empty, only reg-name / IP
/// literal / port characters. Refuses userinfo (`@`), paths, spaces and
/// non-ASCII, which is how hosts are spoofed past routing rules.
fn valid_host(v: &[u8]) -> Option<&str> {
    let ok = !v.is_empty()
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']' | b'~')
        });
    if ok {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// Maps an httparse error to a status, telling an unsupported HTTP version
/// (505, including the HTTP/2 preface and the version-less HTTP/0.9 form)
/// from a malformed request (400).
fn map_error(e: httparse::Error, buf: &[u8]) -> Reject {
    match e {
        httparse::Error::TooManyHeaders => Reject::new(431, "too many headers"),
        httparse::Error::Version
            if request_line_version(buf).is_some_and(|v| v.starts_with(b"HTTP/")) =>
        {
            Reject::new(505, "unsupported HTTP version")
        }
        httparse::Error::Token if is_http09_line(buf) => Reject::new(505, "HTTP/0.9 request"),
        httparse::Error::HeaderName => Reject::bad_request("invalid header line"),
        httparse::Error::HeaderValue => Reject::bad_request("invalid byte in header value"),
        httparse::Error::NewLine => Reject::bad_request("invalid line ending"),
        _ => Reject::bad_request("malformed request line"),
    }
}

/// The first line (after any leading empty lines), without its line ending.
fn request_line(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = &line[..end];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The third space-separated token of the request line, if any.
fn request_line_version(buf: &[u8]) -> Option<&[u8]> {
    request_line(buf).splitn(3, |&b| b == b' ').nth(2)
}

/// `GET /path` with a line ending and no version: HTTP/0.9's simple request.
fn is_http09_line(buf: &[u8]) -> bool {
    let line = request_line(buf);
    let complete = buf.len() > line.len() && buf.contains(&b'\n');
    let mut parts = line.split(|&b| b == b' ');
    complete
        && matches!((parts.next(), parts.next(), parts.next()),
            (Some(m), Some(t), None) if !m.is_empty() && t.first() == Some(&b'/'))
}
