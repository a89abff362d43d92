//! Sans-I/O protocol layer: bytes in, a verdict out.
//!
//! Nothing in this module reads a socket, awaits or allocates while parsing
//! (and, like everything outside `sys/`, it is plain safe Rust). That is what lets the same code run on the io_uring data
//! plane, on the epoll fallback, under criterion (`benches/proto.rs`) and under
//! cargo-fuzz (`fuzz/`, which includes this directory by `#[path]`), and it is
//! why the only dependencies are `httparse`, `base64` and `sha1_smol`.
//!
//! # The verdict pattern
//!
//! Every parser takes the bytes read so far and answers one of three things:
//!
//! * `Ok(Some(x))` — a complete item; `x` says how many bytes it used
//!   (`head_len`, `Scan::consumed`, the `usize` of a PROXY header), and bytes
//!   after that belong to whatever comes next (a body, the next request, the
//!   tunnelled stream).
//! * `Ok(None)` — not enough bytes yet. The caller reads more into the same
//!   buffer and calls again; it also owns the size limit (it answers 431 when
//!   the head buffer is full and still incomplete), because only it knows how
//!   big its buffer is.
//! * `Err(Reject)` — the input is bad. [`Reject::status`] is the status to
//!   answer with ([`status::error_response`] has the canned bytes) and
//!   [`Reject::reason`] a short phrase for logs and metrics. No backend
//!   connection should be opened for a rejected head.
//!
//! Parsers never panic on any input; `tests.rs` feeds them a few hundred
//! thousand random and mutated inputs with a fixed seed, and `fuzz/` does the
//! same open-ended.
//!
//! Writers (`forward`, `proxy_protocol::write_*`, `cookie::write_set_cookie`)
//! append to a caller-owned `Vec<u8>` that is reused across requests, so after
//! warm-up they do not allocate either.

pub mod chunked;
pub mod client_hello;
pub mod cookie;
pub mod forward;
pub mod head;
pub mod path;
pub mod proxy_protocol;
pub mod response;
pub mod status;
pub mod websocket;
pub mod ws_frame;

#[cfg(test)]
mod tests;

pub use chunked::{ChunkedScanner, Scan, Span};
pub use cookie::{find_cookie, query_param, write_set_cookie, CookieAttrs};
pub use forward::{write_request_head, write_response_head, ForwardOpts, RespForwardOpts};
pub use head::{parse_request, BodyKind, HeadLimits, Request, Upgrade};
pub use path::normalize as normalize_path;
pub use proxy_protocol::ProxyHeader;
pub use response::{parse_response, RespBody, Response};
pub use status::{error_response, write_error_response};
pub use websocket::{accept_key, check_accept, check_upgrade, WsHandshake};

/// Why a message was refused, and what to answer.
///
/// A plain `Copy` value rather than an error enum with payloads: it is built
/// on the hot path for every bad request and must cost nothing, and the two
/// things anyone does with it are "send this status" and "log this phrase".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status to answer the client with (for backend responses: 502).
    pub status: u16,
    /// Short plain-text phrase naming the problem, e.g.
    /// `"both Content-Length and Transfer-Encoding"`.
    pub reason: &'static str,
}

impl Reject {
    /// A reject with an explicit status.
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Reject { status, reason }
    }

    /// 400 Bad Request: a malformed or ambiguous message from the client.
    pub const fn bad_request(reason: &'static str) -> Self {
        Reject::new(400, reason)
    }

    /// 502 Bad Gateway: a malformed message from the backend.
    pub const fn bad_gateway(reason: &'static str) -> Self {
        Reject::new(502, reason)
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for Reject {}

/// ASCII case-insensitive comparison of a header name or token.
#[inline]
pub(crate) fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Trims optional whitespace (SP / HTAB, RFC 9110 §5.6.3) on both sides.
#[inline]
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Iterates the elements of a comma-separated list value (RFC 9110 §5.6.1),
/// trimmed, including empty ones (callers decide whether those are errors).
#[inline]
pub(crate) fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

/// Strict unsigned decimal: 1..=19 digits, nothing else (so no `+`, `-`,
/// spaces or hex), and no overflow.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// True if a header value carries a byte that must never reach a backend
/// (NUL, CR, LF). httparse already refuses these; this is the belt to its
/// braces, because a value that splits into two lines is a smuggling vector.
#[inline]
pub(crate) fn has_forbidden_byte(v: &[u8]) -> bool {
    v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
}
