//! A minimal HTTP/1.1 server for the admin port: one request per connection, `Connection:
//! close`, bounded in every dimension. The admin API is five GET/POST endpoints scraped every
//! few seconds, so a hand-written reader over httparse (already a dependency of the data
//! plane) is enough and keeps hyper and its stack out of the binary.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head accepted (431 beyond).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body read (and discarded) — POST /reload takes none (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;
/// The whole request must arrive within this (408 beyond): a stalled client cannot hold a
/// connection slot.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEADERS: usize = 32;

/// A parsed request: what the router needs and nothing more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Raw query string (after `?`), not decoded.
    pub query: String,
    /// The headers the admin port's guards read (last value wins).
    pub host: Option<String>,
    pub authorization: Option<String>,
    pub origin: Option<String>,
    pub sec_fetch_site: Option<String>,
    pub content_type: Option<String>,
}

/// A response; always sent with `Content-Length` and `Connection: close`.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub allow: Option<&'static str>,
    /// `WWW-Authenticate: Bearer` on 401.
    pub challenge: bool,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            allow: None,
            challenge: false,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            allow: None,
            challenge: false,
        }
    }

    /// A JSON `{"error": ...}` body, the shape every admin error has.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }

    fn head(&self, body_len: usize) -> String {
        let mut h = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            body_len,
        );
        if let Some(allow) = self.allow {
            h.push_str("Allow: ");
            h.push_str(allow);
            h.push_str("\r\n");
        }
        if self.challenge {
            h.push_str("WWW-Authenticate: Bearer realm=\"ringway-admin\"\r\n");
        }
        h.push_str("\r\n");
        h
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Reads one request within `deadline` ([`READ_TIMEOUT`], or less when the port is busy);
/// `Err` is the response to send instead.
pub async fn read_request(stream: &mut TcpStream, deadline: Duration) -> Result<Request, Response> {
    match tokio::time::timeout(deadline, read_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(Response::error(408, "request not received in time")),
    }
}

async fn read_inner(stream: &mut TcpStream) -> Result<Request, Response> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(Response::error(431, "request head too large"));
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|_| Response::error(400, "read failed"))?;
        if n == 0 {
            return Err(Response::error(
                400,
                "connection closed before a complete request",
            ));
        }
        filled += n;
        let (req, head_len, body_len) = match parse(&buf[..filled])? {
            Some(x) => x,
            None => continue,
        };
        // Read and drop the body so closing the socket doesn't reset the response away.
        let mut left = body_len.saturating_sub(filled - head_len);
        let mut sink = [0u8; 4096];
        while left > 0 {
            let n = stream
                .read(&mut sink[..left.min(4096)])
                .await
                .map_err(|_| Response::error(400, "read failed"))?;
            if n == 0 {
                return Err(Response::error(400, "body shorter than Content-Length"));
            }
            left -= n;
        }
        return Ok(req);
    }
}

/// Parses a head: `Ok(None)` while incomplete, else the request, head length and body length.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize, usize)>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Response::error(431, "too many headers"))
        }
        Err(e) => return Err(Response::error(400, format!("malformed request: {e}"))),
    };
    let mut body_len = 0usize;
    let mut request = Request::default();
    for h in req.headers.iter() {
        let value = || Some(String::from_utf8_lossy(h.value).trim().to_string());
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            request.host = value();
        } else if name.eq_ignore_ascii_case("authorization") {
            request.authorization = value();
        } else if name.eq_ignore_ascii_case("origin") {
            request.origin = value();
        } else if name.eq_ignore_ascii_case("sec-fetch-site") {
            request.sec_fetch_site = value();
        } else if name.eq_ignore_ascii_case("content-type") {
            request.content_type = value();
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::error(
                400,
                "chunked request bodies are not accepted",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| Response::error(400, "bad Content-Length"))?;
            if n > MAX_BODY {
                return Err(Response::error(413, "request body too large"));
            }
            body_len = n;
        }
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    request.method = req.method.unwrap_or("").to_string();
    request.path = path.to_string();
    request.query = query.to_string();
    Ok(Some((request, head_len, body_len)))
}

/// Writes `resp` (without its body for HEAD), then closes politely: shut down our side and
/// read briefly until the client closes, so unread bytes can't turn our FIN into a RST that
/// would destroy the response in flight.
pub async fn write_response(stream: &mut TcpStream, resp: &Response, head_only: bool) {
    let head = resp.head(resp.body.len());
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        for _ in 0..64 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The value of query parameter `name`, percent-decoded (`+` stays `+`: keys are opaque
/// bytes, and a literal `+` in a device id must not turn into a space).
pub fn query_param(query: &str, name: &str) -> Option<Result<Vec<u8>, String>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v).ok_or_else(|| format!("`{name}`: bad percent-encoding")))
}

pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}
