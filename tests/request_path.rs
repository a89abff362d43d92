//! Regression tests of issue 10, part 1: an upgrade's body is forwarded per its framing (no
//! request smuggling through a declined upgrade), request and response bodies have timeouts,
//! and `Expect: 100-continue` / 1xx follow the client's HTTP version. Real binary, raw sockets,
//! both io backends. (Part 2, the request-path rules and counting: `request_path_rules.rs`.)

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A WebSocket upgrade head (Host `a`) with `extra` header lines (each ending in CRLF).
fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Declines every upgrade with a keep-alive `200` + Content-Length *before* reading the
/// declared body (the backend); answers other requests with `echo_reply`.
async fn declining_backend() -> Backend {
    scripted_backend(Arc::new(|m: &Message, _| {
        if m.has("upgrade") {
            Reply::Before(
                b"HTTP/1.1 200 OK\r\nX-Declined: yes\r\nContent-Length: 2\r\n\r\nno".to_vec(),
            )
        } else {
            Reply::After(echo_reply)
        }
    }))
    .await
}

fn briefs(reqs: &[Message]) -> Vec<String> {
    reqs.iter().map(Message::brief).collect()
}

/// Waits (bounded) until `be` recorded `n` requests, then a little longer so that an extra
/// (smuggled) request would show; returns them.
async fn requests_settled(be: &Backend, n: usize) -> Vec<Message> {
    for _ in 0..100 {
        if be.requests().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    be.requests()
}

/// The repro: the upgrade's 42-byte body is the start of a fake request whose header
/// value hides `GET /internal/secret`. The backend must get exactly those 42 bytes as the
/// upgrade's body; the leftover is the client's next request, answered by the gateway (400:
/// it has no Host), never by the backend.
async fn upgrade_body_not_smuggled(io: &'static str) {
    let be = declining_backend().await;
    let gw = Gateway::start_config(
        io,
        &routed_config("", &[("/socket.io/", "sio", &[be.addr])]),
    );
    let body = b"GET /socket.io/?x HTTP/1.1\r\nHost: a\r\nX-A: ";
    assert_eq!(body.len(), 42);
    let mut bytes = upgrade("/socket.io/ws-200cl", "Content-Length: 42\r\n");
    bytes.extend(
        b"GET /socket.io/?x HTTP/1.1\r\nHost: a\r\nX-A: GET /internal/secret HTTP/1.1\r\n\r\n",
    );
    let mut c = Conn::connect(gw.addr).await;
    c.send(&bytes).await;
    let r = c.final_response(false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"no"[..]),
        "{}",
        r.brief()
    );
    let r = c.final_response(false).await;
    assert!(
        matches!(r.status, 400 | 404) && !r.has("x-path"),
        "the leftover `GET /internal/secret` (no Host) must get the gateway's 400/404: {}",
        r.brief()
    );
    let reqs = requests_settled(&be, 1).await;
    assert!(
        reqs.iter()
            .all(|m| !m.raw_head.windows(8).any(|w| w == b"internal")),
        "the backend saw /internal/secret: {:?}",
        briefs(&reqs)
    );
    assert_eq!(
        reqs.len(),
        1,
        "exactly the upgrade request: {:?}",
        briefs(&reqs)
    );
    assert_eq!(reqs[0].path, "/socket.io/ws-200cl");
    assert_eq!(reqs[0].body, body, "the upgrade's body, byte for byte");
}

/// The same with a 33-byte body, so that the leftover carries a Host: it is routed on its own
/// (no route for /internal/ → 404), and the backend never sees it.
async fn upgrade_body_leftover_routed_alone(io: &'static str) {
    let be = declining_backend().await;
    let gw = Gateway::start_config(
        io,
        &routed_config("", &[("/socket.io/", "sio", &[be.addr])]),
    );
    let body = b"GET /socket.io/?x HTTP/1.1\r\nX-A: ";
    let mut bytes = upgrade(
        "/socket.io/ws",
        &format!("Content-Length: {}\r\n", body.len()),
    );
    bytes.extend(
        b"GET /socket.io/?x HTTP/1.1\r\nX-A: GET /internal/secret HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let mut c = Conn::connect(gw.addr).await;
    c.send(&bytes).await;
    let r = c.final_response(false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"no"[..]),
        "{}",
        r.brief()
    );
    let r = c.final_response(false).await;
    assert_eq!(
        r.status,
        404,
        "GET /internal/secret has no route: {}",
        r.brief()
    );
    let reqs = requests_settled(&be, 1).await;
    assert_eq!(
        reqs.len(),
        1,
        "exactly the upgrade request: {:?}",
        briefs(&reqs)
    );
    assert_eq!(reqs[0].body, body);
}

/// A chunked upgrade body, declined: the backend gets the decoded body, and the next request
/// on the connection is an ordinary request to the backend.
async fn upgrade_chunked_body_declined(io: &'static str) {
    let be = declining_backend().await;
    let gw = Gateway::start_config(
        io,
        &routed_config("", &[("/socket.io/", "sio", &[be.addr])]),
    );
    let mut bytes = upgrade("/socket.io/ws-chunked", "Transfer-Encoding: chunked\r\n");
    bytes.extend(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    bytes.extend(b"GET /socket.io/next HTTP/1.1\r\nHost: a\r\nX-Seq: 2\r\n\r\n");
    let mut c = Conn::connect(gw.addr).await;
    c.send(&bytes).await;
    let r = c.final_response(false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"no"[..]),
        "{}",
        r.brief()
    );
    let r = c.final_response(false).await;
    assert_eq!(
        (r.status, r.header("x-seq"), r.header("x-path")),
        (200, Some("2"), Some("/socket.io/next")),
        "{}",
        r.brief()
    );
    let reqs = requests_settled(&be, 2).await;
    let seen: Vec<(&str, &[u8])> = reqs
        .iter()
        .map(|m| (m.path.as_str(), m.body.as_slice()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("/socket.io/ws-chunked", &b"hello world"[..]),
            ("/socket.io/next", &b""[..])
        ]
    );
}

/// An upgrade with a body that the backend accepts (it reads the body, then answers 101): the
/// body reaches it first, then the tunnel's bytes, in order (the client sent them together).
async fn upgrade_body_accepted(io: &'static str) {
    let be = scripted_backend(Arc::new(|_: &Message, _| Reply::Tunnel)).await;
    // The tunnel carries raw bytes (the scripted backend echoes them as they are), not
    // WebSocket frames: a blind pipe, or the gateway would refuse them with Close 1002.
    let gw = Gateway::start_config(
        io,
        &blind_tunnels(&routed_config("", &[("/socket.io/", "sio", &[be.addr])])),
    );
    let mut bytes = upgrade("/socket.io/ws-101", "Content-Length: 5\r\n");
    bytes.extend(b"helloTUNNEL");
    let mut c = Conn::connect(gw.addr).await;
    c.send(&bytes).await;
    let r = c.response(false).await.expect("the 101");
    assert_eq!(r.status, 101, "{}", r.brief());
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some(ws_accept(WS_KEY).as_str())
    );
    assert_eq!(
        c.read_exact(6).await.expect("tunnel echo"),
        b"TUNNEL",
        "the tunnel's first bytes"
    );
    c.send(b"more").await;
    assert_eq!(c.read_exact(4).await.expect("tunnel echo"), b"more");
    let reqs = be.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].body, b"hello",
        "the upgrade's body, before the tunnel"
    );
}

/// A raw backend that answers nothing by itself: `answer` is written after the request head
/// (and the body, when `read_body`), then it reads until EOF and sets the returned flag.
async fn stalling_backend(answer: &'static [u8], read_body: bool) -> (Backend, Arc<AtomicBool>) {
    let eof = Arc::new(AtomicBool::new(false));
    let flag = eof.clone();
    let be = raw_backend(move |s, _| {
        let flag = flag.clone();
        async move {
            let mut c = Conn::new(s);
            let Ok(mut req) = c.request_head().await else {
                return;
            };
            if read_body && c.request_body(&mut req).await.is_err() {
                return;
            }
            if c.s.write_all(answer).await.is_err() {
                return;
            }
            let mut tmp = [0u8; 4096];
            // bounded: the test's own waits are shorter
            let _ = tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    match c.s.read(&mut tmp).await {
                        Ok(0) | Err(_) => {
                            flag.store(true, Ordering::SeqCst);
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
    })
    .await;
    (be, eof)
}

async fn assert_flag(flag: &AtomicBool, what: &str) {
    within(what, async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// `timeouts.client_body`: a request body that stops coming gets 408 and a close, and the
/// backend connection is closed too. Content-Length and chunked.
async fn client_body_timeout(io: &'static str) {
    for (what, req) in [
        (
            "Content-Length: 10, one byte",
            &b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nx"[..],
        ),
        (
            "chunked, half a chunk",
            &b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"[..],
        ),
    ] {
        let (be, eof) = stalling_backend(b"", false).await;
        let top = "[timeouts]\nclient_body = \"1s\"";
        let gw = Gateway::start_config(io, &routed_config(top, &[("/", "main", &[be.addr])]));
        let mut c = Conn::connect(gw.addr).await;
        c.send(req).await;
        let r = c
            .response(false)
            .await
            .unwrap_or_else(|e| panic!("{what}: no 408: {e:?}"));
        assert_eq!(r.status, 408, "{what}: {}", r.brief());
        assert!(c.closed().await, "{what}: client connection not closed");
        assert_flag(&eof, &format!("{what}: the backend connection closed")).await;
    }
}

/// `timeouts.backend_read`: a response body that stops coming closes the client connection
/// (which read part of the body, then EOF) and the backend connection. Both framings.
async fn backend_read_timeout(io: &'static str) {
    for (what, answer) in [
        (
            "Content-Length: 100, 10 bytes",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"[..],
        ),
        (
            "chunked, one chunk",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"[..],
        ),
    ] {
        let (be, eof) = stalling_backend(answer, true).await;
        let top = "[timeouts]\nbackend_read = \"1s\"";
        let gw = Gateway::start_config(io, &routed_config(top, &[("/", "main", &[be.addr])]));
        let mut c = Conn::connect(gw.addr).await;
        c.send(&get("/stall")).await;
        match c.response(false).await {
            Err(ReadErr::Broken(e)) if !e.contains("timed out") => {}
            other => panic!("{what}: want a truncated body then EOF, got {other:?}"),
        }
        assert_flag(&eof, &format!("{what}: the backend connection closed")).await;
    }
}

/// `Expect: 100-continue` from an HTTP/1.1 client: the gateway answers `100 Continue` itself
/// (the backend never sends one), the body then flows, and the backend sees no `Expect`.
async fn expect_continue(io: &'static str) {
    let be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(echo_reply))).await;
    let gw = Gateway::start_config(io, &routed_config("", &[("/", "main", &[be.addr])]));
    let mut c = Conn::connect(gw.addr).await;
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    let r = c.response(false).await.expect("100 Continue");
    assert_eq!(
        (r.version.as_str(), r.status),
        ("HTTP/1.1", 100),
        "{}",
        r.brief()
    );
    c.send(b"hello").await;
    let r = c.final_response(false).await;
    assert_eq!(r.status, 200, "{}", r.brief());
    assert_eq!(r.body_str(), "POST /e len=5\nhello");
    let req = &be.requests()[0];
    assert!(!req.has("expect"), "the backend got Expect: {req:?}");
    assert_eq!(req.body, b"hello");
    // the connection goes on
    c.send(&get("/after")).await;
    assert_eq!(
        c.final_response(false).await.header("x-path"),
        Some("/after")
    );
}

/// A backend that sends `103 Early Hints` before its `200`: an HTTP/1.1 client gets both, an
/// HTTP/1.0 client only the `200` (and never a `100 Continue` for its Expect either).
async fn interim_by_version(io: &'static str) {
    fn hints(m: &Message) -> Vec<u8> {
        let mut out = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec();
        out.extend(echo_reply(m));
        out
    }
    let be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(hints))).await;
    let gw = Gateway::start_config(io, &routed_config("", &[("/", "main", &[be.addr])]));

    let mut c = Conn::connect(gw.addr).await;
    c.send(&get("/h11")).await;
    let r = c.response(false).await.expect("103");
    assert_eq!(r.status, 103, "HTTP/1.1 client: {}", r.brief());
    assert_eq!(r.header("link"), Some("</s.css>; rel=preload"));
    let r = c.response(false).await.expect("200");
    assert_eq!(
        (r.status, r.header("x-path")),
        (200, Some("/h11")),
        "{}",
        r.brief()
    );

    for (what, req) in [
        ("GET", &b"GET /h10 HTTP/1.0\r\nHost: t\r\n\r\n"[..]),
        (
            "POST with Expect",
            &b"POST /h10 HTTP/1.0\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"[..],
        ),
    ] {
        let mut c = Conn::connect(gw.addr).await;
        c.send(req).await;
        let r = c
            .response(false)
            .await
            .unwrap_or_else(|e| panic!("HTTP/1.0 {what}: {e:?}"));
        assert_eq!(r.status, 200, "HTTP/1.0 {what} got a 1xx or no answer: {}", r.brief());
        assert_eq!(r.header("x-path"), Some("/h10"));
    }
}

/// A chunked response to an HTTP/1.0 client, which cannot read chunked framing (RFC 9112
/// §7.1): the client gets the payload alone, no `Transfer-Encoding`, and the close ends the
/// body. An HTTP/1.1 client still gets the chunks as the backend sent them.
async fn chunked_to_http10_is_dechunked(io: &'static str) {
    fn chunked(_: &Message) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunky\r\n\r\n\
          5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n"
            .to_vec()
    }
    let be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(chunked))).await;
    let gw = Gateway::start_config(io, &routed_config("", &[("/", "main", &[be.addr])]));

    let mut c = Conn::connect(gw.addr).await;
    c.send(b"GET /old HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let raw = within("the HTTP/1.0 response and close", c.read_to_end())
        .await
        .expect("the response, then a clean close");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !lower.contains("transfer-encoding"),
        "chunked framing to HTTP/1.0: {head}"
    );
    assert!(
        lower.contains("connection: close"),
        "the close must end the body: {head}"
    );
    assert!(lower.contains("x-kind: chunky"), "{head}");
    assert_eq!(body, "helloabcdefghijklmnopqrstuvwxyz", "payload only");

    let r = roundtrip(gw.addr, &get("/new")).await;
    assert_eq!(r.status, 200, "{}", r.brief());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body_str(), "helloabcdefghijklmnopqrstuvwxyz");
}

both_io!(
    chunked_to_http10_is_dechunked,
    upgrade_body_not_smuggled,
    upgrade_body_leftover_routed_alone,
    upgrade_chunked_body_declined,
    upgrade_body_accepted,
    client_body_timeout,
    backend_read_timeout,
    expect_continue,
    interim_by_version,
);
