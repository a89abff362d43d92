//! Request-head rules, head forwarding, and a randomized no-panic sweep over
//! every parser. Per-file tests live next to their code; these are the ones
//! that need several modules or that are too long to sit beside the parser.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const LIMITS: HeadLimits = HeadLimits { max_headers: 64 };

fn with_req<T>(head: &str, f: impl FnOnce(&Request<'_, '_>) -> T) -> T {
    let mut h = [httparse::EMPTY_HEADER; 64];
    match parse_request(head.as_bytes(), &mut h, &LIMITS) {
        Ok(Some(req)) => f(&req),
        other => panic!("{head:?} not accepted: {other:?}"),
    }
}

fn status(head: &str) -> u16 {
    let mut h = [httparse::EMPTY_HEADER; 64];
    match parse_request(head.as_bytes(), &mut h, &LIMITS) {
        Err(e) => e.status,
        Ok(o) => panic!("{head:?} accepted: {o:?}"),
    }
}

/// `GET / HTTP/1.1` with Host and the given extra header lines.
fn get(extra: &str) -> String {
    format!("GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n")
}

// ---- request heads ---------------------------------------------------------

#[test]
fn parses_a_plain_request() {
    let head = get("Accept: */*\r\nX-Thing: a b\r\n");
    with_req(&head, |r| {
        assert_eq!(
            (r.method, r.path, r.target, r.minor_version),
            ("GET", "/p?q=1", "/p?q=1", 1)
        );
        assert_eq!(r.host, Some("example.com"));
        assert_eq!(r.head_len, head.len());
        assert_eq!(r.headers.len(), 3);
        assert_eq!(r.body, BodyKind::None);
        assert!(r.keep_alive);
        assert_eq!(r.upgrade, Upgrade::None);
        assert_eq!(r.header("x-THING"), Some(&b"a b"[..]));
        assert_eq!(r.header("missing"), None);
        assert_eq!(r.header_count("host"), 1);
    });
}

#[test]
fn every_prefix_is_incomplete() {
    let head = get("Content-Length: 3\r\n");
    for cut in 0..head.len() {
        let mut h = [httparse::EMPTY_HEADER; 8];
        assert_eq!(
            parse_request(&head.as_bytes()[..cut], &mut h, &LIMITS)
                .unwrap()
                .map(|r| r.head_len),
            None
        );
    }
}

#[test]
fn smuggling_shapes_are_400() {
    for extra in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: \r\n",
        "Content-Length: 99999999999999999999\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked;q=1\r\n",
        "Transfer-Encoding: \r\n",
        "Transfer-Encoding: identity\r\n",
    ] {
        assert_eq!(status(&get(extra)), 400, "{extra:?}");
    }
    assert_eq!(
        status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        400
    );
}

#[test]
fn valid_framing() {
    with_req(
        &get("Content-Length: 5, 5\r\nContent-Length: 005\r\n"),
        |r| assert_eq!(r.body, BodyKind::Length(5)),
    );
    with_req(&get("Content-Length: 0\r\n"), |r| {
        assert_eq!(r.body, BodyKind::Length(0))
    });
    with_req(&get("Transfer-Encoding: Chunked\r\n"), |r| {
        assert_eq!(r.body, BodyKind::Chunked)
    });
    with_req(&get("Transfer-Encoding:  chunked \r\n"), |r| {
        assert_eq!(r.body, BodyKind::Chunked)
    });
}

#[test]
fn host_rules() {
    assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: \r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
    with_req("GET / HTTP/1.0\r\n\r\n", |r| assert_eq!(r.host, None));
    with_req("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", |r| {
        assert_eq!(r.host, Some("[::1]:8080"))
    });
}

#[test]
fn request_target_forms() {
    let abs = "GET http://Api.Example:8080/v1?x=1 HTTP/1.1\r\nHost: other\r\n\r\n";
    with_req(abs, |r| {
        assert_eq!((r.host, r.path), (Some("Api.Example:8080"), "/v1?x=1"));
    });
    with_req("GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n", |r| {
        assert_eq!((r.host, r.path), (Some("h"), "/"))
    });
    with_req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", |r| {
        assert_eq!(r.path, "*")
    });
    for bad in [
        "GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET ftp://h/p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://u@h/p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h/ HTTP/1.1\r\n\r\n",
        "GET example.com:443 HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert_eq!(status(bad), 400, "{bad:?}");
    }
    assert_eq!(
        status("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
        405
    );
}

/// Routing normalises the path, so a path it could not read is refused before routing; the
/// query is not checked, and what is accepted is kept exactly as sent.
#[test]
fn malformed_path_escapes_are_400() {
    for target in [
        "/c/%zz",
        "/c/%4",
        "/c/%",
        "/%G0/x?y",
        "http://h/a%2",
        "/a%%41",
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(status(&head), 400, "{target:?}");
    }
    for target in ["/c/%41/../x", "/c/%2e%2E/x", "/q?x=%zz&y=%", "/a%2fb"] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        with_req(&head, |r| assert_eq!((r.target, r.path), (target, target)));
    }
}

#[test]
fn versions() {
    assert_eq!(status("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
    assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
    assert_eq!(status("PRI * HTTP/2.0\r\n"), 505);
    assert_eq!(status("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), 505);
    assert_eq!(status("GET / HTTP/0.9\r\n\r\n"), 505);
    assert_eq!(status("GET /\r\n"), 505);
    assert_eq!(status("GET /index.html\r\n\r\n"), 505);
    assert_eq!(status("GET / FOO/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(status("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
}

#[test]
fn too_many_headers_is_431() {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..64 {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    assert_eq!(status(&head), 431);
    // The limit applies even with a larger header array.
    let mut h = [httparse::EMPTY_HEADER; 64];
    let small = HeadLimits { max_headers: 2 };
    let head = get("A: 1\r\nB: 2\r\n");
    let r = parse_request(head.as_bytes(), &mut h, &small);
    assert_eq!(r.unwrap_err().status, 431);
}

#[test]
fn malformed_header_lines_are_400() {
    for extra in [
        "X-Folded: a\r\n b\r\n",
        "X-Bad : a\r\n",
        "X-Nul: a\0b\r\n",
        "X-Cr: a\rb\r\n",
        "X Space: a\r\n",
        ": novalue\r\n",
    ] {
        assert_eq!(status(&get(extra)), 400, "{extra:?}");
    }
}

#[test]
fn keep_alive_rules() {
    with_req(&get(""), |r| assert!(r.keep_alive));
    with_req(&get("Connection: close\r\n"), |r| assert!(!r.keep_alive));
    with_req(&get("Connection: keep-alive, Close\r\n"), |r| {
        assert!(!r.keep_alive)
    });
    with_req("GET / HTTP/1.0\r\n\r\n", |r| assert!(!r.keep_alive));
    with_req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", |r| {
        assert!(r.keep_alive)
    });
}

#[test]
fn upgrade_detection() {
    let ws = |extra: &str| with_req(&get(extra), |r| r.upgrade);
    assert_eq!(
        ws("Upgrade: websocket\r\nConnection: Upgrade\r\n"),
        Upgrade::WebSocket
    );
    assert_eq!(
        ws("Upgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\n"),
        Upgrade::WebSocket
    );
    assert_eq!(ws("Upgrade: websocket\r\n"), Upgrade::None);
    assert_eq!(ws("Connection: upgrade\r\n"), Upgrade::None);
    assert_eq!(
        ws("Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"),
        Upgrade::Other
    );
}

// ---- forwarding ------------------------------------------------------------

fn opts() -> ForwardOpts<'static> {
    ForwardOpts {
        client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        https: false,
        forward_for: true,
        real_ip: true,
        forward_proto: true,
        forward_host: true,
        upgrade: false,
        strip_cookie: Some("rw"),
        extra_header: None,
    }
}

fn forward(head: &str, o: &ForwardOpts<'_>) -> String {
    let mut out = Vec::new();
    with_req(head, |r| write_request_head(r, &mut out, o));
    // What we send must itself be a valid request.
    let mut h = [httparse::EMPTY_HEADER; 64];
    assert!(parse_request(&out, &mut h, &LIMITS).unwrap().is_some());
    String::from_utf8(out).unwrap()
}

#[test]
fn forward_strips_hop_by_hop() {
    let head = get(
        "Connection: close, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X\r\n\
         Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Bar: 2\r\nCookie: a=1; rw=b1; c=3\r\n\
         X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n",
    );
    let out = forward(&head, &opts());
    assert_eq!(
        out,
        "GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Bar: 2\r\nCookie: a=1; c=3\r\n\
         X-Forwarded-For: 10.0.0.9\r\nX-Real-IP: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: example.com\r\nConnection: keep-alive\r\n\r\n"
    );
}

#[test]
fn forward_never_drops_framing_named_by_connection() {
    let out = forward(
        &get("Connection: Content-Length, Host\r\nContent-Length: 3\r\n"),
        &opts(),
    );
    assert!(out.contains("\r\nContent-Length: 3\r\n"), "{out}");
    assert!(out.contains("\r\nHost: example.com\r\n"), "{out}");
}

/// Equal duplicate Content-Lengths (RFC 9110 §8.6) reach the backend as exactly one header,
/// where the first one stood, in canonical form; differing ones never get this far.
#[test]
fn forward_sends_exactly_one_content_length() {
    for extra in [
        "Content-Length: 3, 3\r\nX-After: 1\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\nX-After: 1\r\n",
        "content-length: 3\r\nX-After: 1\r\nCONTENT-LENGTH: 3,3\r\n",
        "Content-Length: 003\r\nX-After: 1\r\n",
        "Content-Length:  3 , 3 \r\nContent-Length: 3\r\nX-After: 1\r\n",
    ] {
        let out = forward(&get(extra), &opts());
        assert_eq!(
            out.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{extra:?} -> {out}"
        );
        assert!(
            out.starts_with(
                "GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nX-After: 1\r\n"
            ),
            "{extra:?} -> {out}"
        );
    }
    // No body, no Content-Length invented; a zero length is kept.
    assert!(!forward(&get(""), &opts()).contains("Content-Length"));
    assert!(
        forward(&get("Content-Length: 0, 0\r\n"), &opts()).contains("\r\nContent-Length: 0\r\n")
    );
    // Chunked framing is untouched.
    let out = forward(&get("Transfer-Encoding: chunked\r\n"), &opts());
    assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n") && !out.contains("Content-Length"));
    // Differing values stay a 400.
    for extra in [
        "Content-Length: 3, 4\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n",
        "Content-Length: 3, 3\r\nContent-Length: 30\r\n",
    ] {
        assert_eq!(status(&get(extra)), 400, "{extra:?}");
    }
}

#[test]
fn forward_appends_to_xff() {
    let head = get("X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-For: 3.3.3.3\r\n");
    let out = forward(&head, &opts());
    assert!(
        out.contains("\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("X-Forwarded-For").count(), 1);
    let off = ForwardOpts {
        forward_for: false,
        real_ip: false,
        forward_proto: false,
        forward_host: false,
        ..opts()
    };
    let out = forward(
        &get("X-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 6.6.6.6\r\n"),
        &off,
    );
    assert!(
        out.contains("\r\nX-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 6.6.6.6\r\n"),
        "{out}"
    );
    assert!(!out.contains("10.0.0.9"));
    let v6 = ForwardOpts {
        client_ip: "2001:db8::7".parse().unwrap(),
        https: true,
        ..opts()
    };
    let out = forward(&get(""), &v6);
    assert!(out.contains(
        "X-Forwarded-For: 2001:db8::7\r\nX-Real-IP: 2001:db8::7\r\nX-Forwarded-Proto: https\r\n"
    ));
}

#[test]
fn forward_cookie_stripping() {
    let out = forward(&get("Cookie: rw=b1\r\nCookie: sid=9\r\n"), &opts());
    assert!(!out.contains("rw="), "{out}");
    assert!(out.contains("\r\nCookie: sid=9\r\n"));
    assert_eq!(out.matches("Cookie").count(), 1);
    let keep = ForwardOpts {
        strip_cookie: None,
        ..opts()
    };
    assert!(forward(&get("Cookie: rw=b1\r\n"), &keep).contains("\r\nCookie: rw=b1\r\n"));
}

#[test]
fn forward_upgrade_absolute_form_and_extra() {
    let head = "GET http://h:81/ws HTTP/1.1\r\nHost: h:81\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let o = ForwardOpts {
        upgrade: true,
        extra_header: Some(("X-Request-Id", b"abc")),
        ..opts()
    };
    let out = forward(head, &o);
    assert!(
        out.starts_with("GET /ws HTTP/1.1\r\nHost: h:81\r\nSec-WebSocket-Key:"),
        "{out}"
    );
    assert!(
        out.ends_with("X-Request-Id: abc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("pgrade: ").count(), 1, "{out}");
    // The client's own copies of the extra header are replaced by ours (any case, any count).
    let o = ForwardOpts {
        extra_header: Some(("X-Request-Id", b"ours")),
        ..opts()
    };
    let out = forward(
        "GET / HTTP/1.1\r\nHost: h\r\nx-request-id: theirs\r\nX-Request-ID: again\r\n\r\n",
        &o,
    );
    assert_eq!(
        out.to_ascii_lowercase().matches("x-request-id").count(),
        1,
        "{out}"
    );
    assert!(out.contains("X-Request-Id: ours\r\n"), "{out}");
    let out = forward("GET / HTTP/1.0\r\nHost: h\r\n\r\n", &opts());
    assert!(out.starts_with("GET / HTTP/1.1\r\nHost: h\r\n"));
    let mut out = Vec::new();
    with_req("GET / HTTP/1.0\r\n\r\n", |r| {
        write_request_head(r, &mut out, &opts())
    });
    assert!(out.starts_with(b"GET / HTTP/1.1\r\nHost: \r\n"));
}

fn forward_resp(buf: &[u8], o: &RespForwardOpts<'_>) -> String {
    let mut h = [httparse::EMPTY_HEADER; 32];
    let resp = parse_response(buf, &mut h, false).unwrap().unwrap();
    let mut out = Vec::new();
    write_response_head(&resp, &mut out, o);
    let mut h2 = [httparse::EMPTY_HEADER; 32];
    assert!(parse_response(&out, &mut h2, false).unwrap().is_some());
    String::from_utf8(out).unwrap()
}

#[test]
fn response_forwarding() {
    let buf =
        b"HTTP/1.1 200 Fine Thanks\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 5\r\n\
                Content-Length: 2\r\nX-Bar: 2\r\n\r\nok";
    let out = forward_resp(
        buf,
        &RespForwardOpts {
            set_cookie: Some(b"rw=k; Path=/"),
            close: false,
            dechunk: false,
        },
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\nX-Bar: 2\r\nSet-Cookie: rw=k; Path=/\r\n\
         Connection: keep-alive\r\n\r\n"
    );
    let out = forward_resp(
        b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
        &RespForwardOpts {
            close: true,
            dechunk: false,
            ..Default::default()
        },
    );
    assert_eq!(
        out,
        "HTTP/1.1 404 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    // Close-delimited bodies force close; CL beside TE is dropped.
    assert!(
        forward_resp(b"HTTP/1.0 200 OK\r\n\r\n", &RespForwardOpts::default())
            .ends_with("Connection: close\r\n\r\n")
    );
    let out = forward_resp(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
        &RespForwardOpts::default(),
    );
    assert!(!out.contains("Content-Length"), "{out}");
    assert!(out.contains("Transfer-Encoding: chunked\r\n"));
}

#[test]
fn switching_protocols_forwarding() {
    let buf = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let out = forward_resp(
        buf,
        &RespForwardOpts {
            set_cookie: None,
            close: true,
            dechunk: false,
        },
    );
    assert_eq!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nConnection: Upgrade\r\n\r\n"
    );
}

// ---- randomized no-panic sweep ---------------------------------------------

/// xorshift64*: deterministic, dependency-free, good enough to mutate bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b"\r\n:;, \t\0=/?*-+0123456789abcdefxHTTP";

/// A random edit of `seed`, or (1 time in 8) pure random bytes.
fn mutate(rng: &mut Rng, seed: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if rng.below(8) == 0 {
        let n = rng.below(300);
        out.extend((0..n).map(|_| rng.next() as u8));
        return;
    }
    out.extend_from_slice(seed);
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if at < out.len() => out[at] = rng.next() as u8,
            1 if at < out.len() => out[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 if at < out.len() => {
                out.remove(at);
            }
            4 => out.truncate(at),
            _ => {
                let end = (at + rng.below(16)).min(out.len());
                let dup = out[at..end].to_vec();
                out.splice(at..at, dup);
            }
        }
    }
}

/// Feeds `data` in random pieces; returns the same kind of verdict as a
/// single feed would: Err, or (consumed-before-done, done).
fn feed_split(rng: &mut Rng, data: &[u8]) -> Result<(usize, bool), Reject> {
    let mut sc = ChunkedScanner::new();
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + 1 + rng.below(9)).min(data.len());
        let s = sc.feed(&data[pos..end])?;
        if s.done {
            return Ok((pos + s.consumed, true));
        }
        pos = end;
    }
    Ok((data.len(), sc.is_done()))
}

#[test]
fn randomized_inputs_never_panic() {
    let requests: &[&[u8]] = &[
        b"GET /chat?sid=1 HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: rw=1; a=2\r\n\r\n",
        b"POST http://h/p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        b"PUT /x HTTP/1.0\r\nContent-Length: 5, 5\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\nhello",
        b"POST /c/%41/../b?x=%zz HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\nhi",
        b"OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    ];
    let responses: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, X-A\r\n\r\nhello",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        b"HTTP/1.0 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    ];
    let chunked: &[&[u8]] = &[
        b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT",
        b"0\r\n\r\n",
        b"A \t;x\r\n0123456789\r\n0;a\r\nA: b\r\nC: d\r\n\r\n",
    ];
    let mut proxies: Vec<Vec<u8>> = Vec::new();
    let (s4, d4) = ("1.2.3.4:5".parse().unwrap(), "6.7.8.9:10".parse().unwrap());
    let (s6, d6) = (
        "[2001:db8::1]:5".parse().unwrap(),
        "[::1]:10".parse().unwrap(),
    );
    for (s, d) in [(s4, d4), (s6, d6), (s4, d6)] {
        let mut v = Vec::new();
        proxy_protocol::write_v1(s, d, &mut v);
        proxies.push(v);
        let mut v = Vec::new();
        proxy_protocol::write_v2(s, d, &mut v);
        proxies.push(v);
    }

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let (mut ok_req, mut ok_resp, mut done_chunked) = (0, 0, 0);
    for _ in 0..80_000 {
        let pick = rng.below(requests.len());
        mutate(&mut rng, requests[pick], &mut buf);
        let mut h = [httparse::EMPTY_HEADER; 16];
        if let Ok(Some(req)) = parse_request(&buf, &mut h, &LIMITS) {
            ok_req += 1;
            assert!(req.head_len <= buf.len());
            if req.upgrade == Upgrade::WebSocket {
                let _ = check_upgrade(&req);
            }
            let _ = cookie::find_cookie(req.headers, "rw");
            let _ = cookie::query_param(req.path, "sid");
            // Forwarding an accepted request must give an accepted request.
            if req.host.is_some() {
                out.clear();
                write_request_head(&req, &mut out, &opts());
                let mut h2 = [httparse::EMPTY_HEADER; 32];
                let again = parse_request(&out, &mut h2, &LIMITS);
                let Ok(Some(again)) = again else {
                    panic!("{:?} -> {:?}", String::from_utf8_lossy(&buf), again);
                };
                // ... that the backend frames and routes exactly as we did, with one
                // Content-Length at most.
                assert_eq!(
                    (again.method, again.path, again.host, again.body),
                    (req.method, req.path, req.host, req.body),
                    "{:?}",
                    String::from_utf8_lossy(&buf)
                );
                assert!(again.header_count("content-length") <= 1);
            }
        }
    }
    for _ in 0..50_000 {
        let pick = rng.below(responses.len());
        mutate(&mut rng, responses[pick], &mut buf);
        let mut h = [httparse::EMPTY_HEADER; 16];
        if let Ok(Some(resp)) = parse_response(&buf, &mut h, pick == 0) {
            ok_resp += 1;
            assert!(resp.head_len <= buf.len());
            out.clear();
            write_response_head(&resp, &mut out, &RespForwardOpts::default());
            let mut h2 = [httparse::EMPTY_HEADER; 32];
            assert!(matches!(parse_response(&out, &mut h2, false), Ok(Some(_))));
        }
    }
    for _ in 0..50_000 {
        let pick = rng.below(chunked.len());
        mutate(&mut rng, chunked[pick], &mut buf);
        let whole = ChunkedScanner::new()
            .feed(&buf)
            .map(|s| (s.consumed, s.done));
        let split = feed_split(&mut rng, &buf);
        assert_eq!(
            whole.is_ok(),
            split.is_ok(),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
        if let (Ok(w), Ok(s)) = (whole, split) {
            assert_eq!(w, s, "{:?}", String::from_utf8_lossy(&buf));
            done_chunked += usize::from(w.1);
        }
    }
    for _ in 0..20_000 {
        let pick = rng.below(proxies.len());
        mutate(&mut rng, &proxies[pick], &mut buf);
        if let Ok(Some((_, n))) = proxy_protocol::parse(&buf) {
            assert!(n <= buf.len());
        }
    }
    // The sweep must exercise the accepting paths too, not only rejects.
    assert!(
        ok_req > 5_000 && ok_resp > 5_000 && done_chunked > 5_000,
        "{ok_req} {ok_resp} {done_chunked}"
    );
}

#[test]
fn chunked_random_splits_of_valid_bodies() {
    let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let mut rng = Rng(7);
    for _ in 0..2_000 {
        assert_eq!(feed_split(&mut rng, body), Ok((body.len() - 4, true)));
    }
}
