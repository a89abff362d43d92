//! Backend response heads: parse, and decide how the body is delimited.
//!
//! A backend is trusted more than a client but not blindly: a response whose
//! framing we cannot determine is answered to the client as 502 rather than
//! relayed, because relaying a misframed response desynchronises every later
//! exchange on that client connection.
//!
//! # Interim responses
//!
//! A `1xx` other than 101 (typically `100 Continue`) parses as a complete
//! [`Response`] with `body: RespBody::None`. The caller relays its
//! `head_len` bytes to the client (HTTP/1.1 clients only; RFC 9110 §15.2 says
//! not to send 1xx to a 1.0 client) and then calls [`parse_response`] again on
//! the bytes after it: the final response follows on the same connection.
//! A 101 is final: after its head the connection carries the upgraded
//! protocol, so the caller checks [`Response::ws_accept`] and starts the tunnel.

use super::{eq_ic, has_forbidden_byte, list_items, parse_decimal, Reject};

/// How the response body is delimited, per RFC 9112 §6.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespBody {
    /// No body: a response to HEAD, any 1xx, 204 and 304.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked; find the end with [`super::ChunkedScanner`].
    Chunked,
    /// The body runs until the backend closes; the client connection must be
    /// closed after it too (there is no other way to tell the client where
    /// it ends).
    UntilClose,
}

/// A complete backend response head, borrowing from the read buffer.
#[derive(Debug)]
pub struct Response<'h, 'b> {
    /// Status code, 100..=599.
    pub code: u16,
    /// Reason phrase as sent (may be empty); relayed unchanged.
    pub reason: &'b str,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    /// All headers, in order.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head including the final empty line.
    pub head_len: usize,
    /// How the body is delimited.
    pub body: RespBody,
    /// Whether the backend connection may be reused after this response.
    /// False when the backend says close, for a 1.0 response without
    /// keep-alive, for a close-delimited body, and after a CL+TE conflict.
    pub keep_alive: bool,
    /// For a 101: the `Upgrade` header value (e.g. `websocket`).
    pub upgrade: Option<&'b [u8]>,
    /// For a 101: the `Sec-WebSocket-Accept` value, to compare with
    /// [`super::check_accept`].
    pub ws_accept: Option<&'b [u8]>,
    /// Both Content-Length and Transfer-Encoding were present. Transfer-Encoding
    /// wins (RFC 9112 §6.3 item 3) and the Content-Length header must not be
    /// forwarded; [`super::write_response_head`] drops it when this is set.
    pub length_conflict: bool,
}

impl<'h, 'b> Response<'h, 'b> {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        super::head::header(self.headers, name)
    }

    /// True for 100..=199 except 101: relay it and parse the next head.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.code) && self.code != 101
    }
}

/// Parses a backend response head at the start of `buf`.
///
/// `req_method_is_head` must be true when the request was HEAD: such a
/// response carries framing headers but no body. Malformed input → 502.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    req_method_is_head: bool,
) -> Result<Option<Response<'h, 'b>>, Reject> {
    let mut raw = httparse::Response::new(headers);
    let head_len = match raw.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::bad_gateway("too many headers in backend response"))
        }
        Err(_) => return Err(Reject::bad_gateway("malformed backend response head")),
    };
    let httparse::Response {
        version,
        code,
        reason,
        headers,
    } = raw;
    let headers: &'h [httparse::Header<'b>] = headers;
    let minor_version = version.unwrap_or(0);
    let code = code.unwrap_or(0);
    let reason = reason.unwrap_or("");
    if !(100..=599).contains(&code) || minor_version > 1 {
        return Err(Reject::bad_gateway("invalid backend status line"));
    }

    let mut content_length: Option<u64> = None;
    let mut te_seen = false;
    let mut te_last_chunked = false;
    let (mut close, mut ka) = (false, false);
    let (mut upgrade, mut ws_accept) = (None, None);
    for h in headers {
        if has_forbidden_byte(h.value) {
            return Err(Reject::bad_gateway("NUL, CR or LF in a backend header"));
        }
        let name = h.name.as_bytes();
        match name.len() {
            14 if eq_ic(name, b"content-length") => {
                for item in list_items(h.value) {
                    let n = parse_decimal(item)
                        .ok_or(Reject::bad_gateway("invalid Content-Length from backend"))?;
                    if content_length.is_some_and(|p| p != n) {
                        return Err(Reject::bad_gateway(
                            "conflicting Content-Length from backend",
                        ));
                    }
                    content_length = Some(n);
                }
            }
            17 if eq_ic(name, b"transfer-encoding") => {
                te_seen = true;
                // Only the final coding matters for framing (RFC 9112 §6.3).
                if let Some(last) = list_items(h.value).filter(|t| !t.is_empty()).last() {
                    te_last_chunked = eq_ic(last, b"chunked");
                }
            }
            10 if eq_ic(name, b"connection") => {
                for t in list_items(h.value) {
                    close |= eq_ic(t, b"close");
                    ka |= eq_ic(t, b"keep-alive");
                }
            }
            7 if eq_ic(name, b"upgrade") => upgrade = upgrade.or(Some(h.value)),
            20 if eq_ic(name, b"sec-websocket-accept") => {
                if ws_accept.is_some() {
                    return Err(Reject::bad_gateway("two Sec-WebSocket-Accept headers"));
                }
                ws_accept = Some(h.value);
            }
            _ => {}
        }
    }
    if te_seen && minor_version == 0 {
        // RFC 9112 §6.1: treat as faulty framing.
        return Err(Reject::bad_gateway(
            "Transfer-Encoding in an HTTP/1.0 response",
        ));
    }

    let length_conflict = te_seen && content_length.is_some();
    let no_body = req_method_is_head || (100..200).contains(&code) || code == 204 || code == 304;
    let body = match (no_body, te_seen, content_length) {
        (true, _, _) => RespBody::None,
        (false, true, _) if te_last_chunked => RespBody::Chunked,
        (false, true, _) => RespBody::UntilClose,
        (false, false, Some(n)) => RespBody::Length(n),
        (false, false, None) => RespBody::UntilClose,
    };
    let keep_alive = (if minor_version == 1 {
        !close
    } else {
        ka && !close
    }) && body != RespBody::UntilClose
        && !length_conflict;
    let (upgrade, ws_accept) = if code == 101 {
        (upgrade, ws_accept)
    } else {
        (None, None)
    };

    Ok(Some(Response {
        code,
        reason,
        minor_version,
        headers,
        head_len,
        body,
        keep_alive,
        upgrade,
        ws_accept,
        length_conflict,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8], head: bool) -> Result<Option<(u16, RespBody, bool, usize)>, Reject> {
        let mut h = [httparse::EMPTY_HEADER; 16];
        parse_response(buf, &mut h, head)
            .map(|o| o.map(|r| (r.code, r.body, r.keep_alive, r.head_len)))
    }

    fn body(buf: &[u8]) -> RespBody {
        parse(buf, false).unwrap().unwrap().1
    }

    #[test]
    fn framing_per_rfc9112_6_3() {
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            RespBody::Length(5)
        );
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            RespBody::Chunked
        );
        assert_eq!(
            body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            RespBody::UntilClose
        );
        assert_eq!(body(b"HTTP/1.1 200 OK\r\n\r\n"), RespBody::UntilClose);
        assert_eq!(
            body(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            RespBody::None
        );
        assert_eq!(
            body(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
            RespBody::None
        );
        assert_eq!(body(b"HTTP/1.1 100 Continue\r\n\r\n"), RespBody::None);
        let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(head.1, RespBody::None);
    }

    #[test]
    fn cl_and_te_is_chunked_and_closes() {
        let mut h = [httparse::EMPTY_HEADER; 8];
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            &mut h,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, RespBody::Chunked);
        assert!(r.length_conflict);
        assert!(!r.keep_alive);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false)
                .unwrap()
                .unwrap()
                .2
        );
        assert!(
            !parse(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .unwrap()
            .unwrap()
            .2
        );
        assert!(
            !parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
                .unwrap()
                .unwrap()
                .2
        );
        assert!(
            parse(
                b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .unwrap()
            .unwrap()
            .2
        );
        // Close-delimited body can never be kept alive.
        assert!(!parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap().2);
    }

    #[test]
    fn malformed_is_502() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 600 High\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad, false).unwrap_err().status,
                502,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn incomplete_is_none() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false), Ok(None));
        assert_eq!(parse(b"", false), Ok(None));
    }

    #[test]
    fn interim_then_final() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut h = [httparse::EMPTY_HEADER; 8];
        let r = parse_response(buf, &mut h, false).unwrap().unwrap();
        assert!(r.is_interim());
        let rest = &buf[r.head_len..];
        let mut h2 = [httparse::EMPTY_HEADER; 8];
        let f = parse_response(rest, &mut h2, false).unwrap().unwrap();
        assert_eq!((f.code, f.body), (200, RespBody::Length(2)));
        assert_eq!(&rest[f.head_len..], b"ok");
    }

    #[test]
    fn switching_protocols_exposes_upgrade_and_accept() {
        let buf =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 8];
        let r = parse_response(buf, &mut h, false).unwrap().unwrap();
        assert_eq!(r.code, 101);
        assert!(!r.is_interim());
        assert_eq!(r.body, RespBody::None);
        assert_eq!(r.upgrade, Some(&b"websocket"[..]));
        assert_eq!(r.ws_accept, Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..]));
        assert_eq!(r.head_len, buf.len());
    }
}
