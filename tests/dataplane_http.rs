//! Plain HTTP/1.1 through the real gateway against hand-written backends: framing
//! (Content-Length, chunked with trailers, close-delimited, HEAD/204/304), keep-alive, pipelining,
//! `Expect: 100-continue`, forwarding headers, hop-by-hop removal, backend connection reuse.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::sync::Arc;

use gateway::*;

async fn get_post_keepalive(io: &'static str) {
    let be = tagged_backend("b").await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    let big = pseudo_bytes(7, 300_000);
    for i in 0..5 {
        c.send(format!("GET /g{i} HTTP/1.1\r\nHost: example.test\r\n\r\n").as_bytes())
            .await;
        let r = c.final_response(false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("b GET /g{i} conn=0\n"));
        assert!(!r.connection_has("close"), "{r:?}");
        // POST with Content-Length (a large one on the last round)
        let body: Vec<u8> = if i == 4 {
            big.clone()
        } else {
            format!("body-{i}").into_bytes()
        };
        let mut req = format!(
            "POST /p{i} HTTP/1.1\r\nHost: example.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend(&body);
        c.send(&req).await;
        let r = c.final_response(false).await;
        assert_eq!(r.status, 200);
        let mut want = format!("b POST /p{i} conn=0\n").into_bytes();
        want.extend(&body);
        assert!(r.body == want, "POST {i} echo differs");
    }
    assert_eq!(be.accepts(), 1, "the backend connection was not reused");
    let reqs = be.requests();
    assert_eq!(reqs.len(), 10);
    for r in &reqs {
        assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"), "{r:?}");
        assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));
        assert_eq!(r.header("x-forwarded-proto"), Some("http"));
        assert_eq!(r.header("x-forwarded-host"), Some("example.test"));
        assert_eq!(r.header("host"), Some("example.test"));
    }
}

/// X-Forwarded-For appends to the client's chain; hop-by-hop headers are dropped both ways.
async fn forwarding_and_hop_by_hop(io: &'static str) {
    let be = http_backend(Arc::new(|_: &Message, _| {
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop-Resp\r\nX-Hop-Resp: secret\r\nKeep-Alive: timeout=99\r\nX-End: kept\r\nContent-Length: 2\r\n\r\nok"
            .to_vec()
    }))
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    c.send(
        b"GET /hop HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop-Req\r\nX-Hop-Req: secret\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
          Trailer: X-T\r\nX-Forwarded-For: 198.51.100.9\r\nX-End: kept\r\n\r\n",
    )
    .await;
    let r = c.final_response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    for h in ["x-hop-resp", "keep-alive"] {
        assert!(!r.has(h), "response leaked hop-by-hop {h}: {r:?}");
    }
    assert!(!r.connection_has("x-hop-resp"), "{r:?}");
    assert_eq!(r.header("x-end"), Some("kept"));
    let req = &be.requests()[0];
    for h in [
        "x-hop-req",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(!req.has(h), "backend got hop-by-hop {h}: {req:?}");
    }
    assert!(
        !req.connection_has("x-hop-req"),
        "client's Connection leaked: {req:?}"
    );
    assert_eq!(req.header("x-end"), Some("kept"));
    let xff = req.all("x-forwarded-for").join(", ");
    assert_eq!(xff.replace(' ', ""), "198.51.100.9,127.0.0.1", "{req:?}");
    // the connection is still good
    c.send(&get("/again")).await;
    assert_eq!(c.final_response(false).await.status, 200);
}

/// Chunked request bodies (with trailers) reach the backend intact; chunked responses with
/// trailers reach the client intact.
async fn chunked_both_ways(io: &'static str) {
    let be = http_backend(Arc::new(|req: &Message, _| {
        let mut out =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n".to_vec();
        for part in req.body.chunks(1000) {
            out.extend(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            out.extend(part);
            out.extend(b"\r\n");
        }
        out.extend(format!("0\r\nX-Sum: {:016x}\r\n\r\n", fnv(&req.body)).as_bytes());
        out
    }))
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    for (i, n) in [0usize, 1, 4096, 100_000].into_iter().enumerate() {
        let body = pseudo_bytes(i as u64 + 3, n);
        let mut req =
            b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in body.chunks(777) {
            req.extend(format!("{:X}\r\n", part.len()).as_bytes());
            req.extend(part);
            req.extend(b"\r\n");
        }
        req.extend(b"0\r\nX-Client-Trailer: yes\r\n\r\n");
        c.send(&req).await;
        let r = c.final_response(false).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.framing, "chunked", "{r:?}");
        assert!(r.body == body, "chunked echo of {n} B differs");
        assert_eq!(
            r.trailers,
            vec![("X-Sum".to_string(), format!("{:016x}", fnv(&body)))],
            "response trailers"
        );
        let seen = be.requests().pop().unwrap();
        assert!(seen.body == body, "backend got a different body ({n} B)");
        assert_eq!(
            seen.trailers,
            vec![("X-Client-Trailer".to_string(), "yes".to_string())],
            "request trailers"
        );
    }
    assert_eq!(be.accepts(), 1);
}

/// HEAD, 204 and 304 carry no body even with Content-Length; the next response on the same
/// connection is read correctly (which it wouldn't be if the gateway waited for a body).
async fn no_body_responses(io: &'static str) {
    let be = http_backend(Arc::new(|req: &Message, _| match req.path.as_str() {
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Kind: head\r\n\r\n".to_vec(),
        "/204" => b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n".to_vec(),
        "/304" => {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"x\"\r\n\r\n".to_vec()
        }
        "/head-chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter".to_vec(),
    }))
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    for (req, head, status) in [
        ("HEAD /head", true, 200),
        ("GET /204", false, 204),
        ("GET /304", false, 304),
        ("HEAD /head-chunked", true, 200),
    ] {
        c.send(format!("{req} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await;
        let r = c.final_response(head).await;
        assert_eq!(r.status, status, "{req}: {r:?}");
        assert!(r.body.is_empty());
        if req == "HEAD /head" {
            assert_eq!(
                r.header("content-length"),
                Some("1234"),
                "HEAD keeps its Content-Length"
            );
        }
        c.send(&get("/next")).await;
        let r = c.final_response(false).await;
        assert_eq!(r.body, b"after", "response after {req} misframed: {r:?}");
    }
    assert!(c.buf.is_empty(), "extra bytes: {:?}", c.buf);
    assert_eq!(be.accepts(), 1);
}

/// A close-delimited response is relayed whole and ends with the client connection closed.
async fn close_delimited(io: &'static str) {
    let payload = pseudo_bytes(11, 200_000);
    let p = payload.clone();
    let be = raw_backend(move |s, _| {
        let p = p.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut c = Conn::new(s);
            let Ok(_req) = c.request(false).await else {
                return;
            };
            c.s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                .await
                .unwrap();
            c.s.write_all(&p).await.unwrap();
            // close ends the body
        }
    })
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    c.send(&get("/until-close")).await;
    let r = c.final_response(false).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body == payload,
        "close-delimited body differs ({} vs {} B)",
        r.body.len(),
        payload.len()
    );
    // HTTP/1.0 backend without length: same thing
    let r2 = roundtrip(gw.addr, &get("/again")).await;
    assert_eq!(r2.body.len(), payload.len());
}

/// Pipelined requests in one write: responses complete and in order.
async fn pipelined(io: &'static str) {
    let be = tagged_backend("b").await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    let mut all = Vec::new();
    for i in 0..8 {
        if i % 3 == 1 {
            all.extend(
                format!("POST /r{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nx{i}y")
                    .as_bytes(),
            );
        } else {
            all.extend(format!("GET /r{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
    }
    all.extend(b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    c.send(&all).await;
    for i in 0..8 {
        let r = c.final_response(false).await;
        if i % 3 == 1 {
            assert_eq!(r.body_str(), format!("b POST /r{i} conn=0\nx{i}y"));
        } else {
            assert_eq!(r.body_str(), format!("b GET /r{i} conn=0\n"));
        }
    }
    let r = c.final_response(false).await;
    assert_eq!(r.body_str(), "b GET /last conn=0\n");
    assert!(r.connection_has("close"), "{r:?}");
    assert!(c.closed().await, "Connection: close not honoured");
}

/// `Expect: 100-continue`: the backend's 100 reaches the client before it sends the body.
async fn expect_continue(io: &'static str) {
    let be = tagged_backend("b").await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let r = c.response(false).await.expect("interim");
    assert_eq!(r.status, 100, "{r:?}");
    c.send(b"hello world").await;
    let r = c.final_response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "b POST /upload conn=0\nhello world");
    // and the connection keeps going
    c.send(&get("/after")).await;
    assert_eq!(
        c.final_response(false).await.body_str(),
        "b GET /after conn=0\n"
    );
}

/// `Expect: 100-continue` is the gateway's to answer: the backend never sees it (so it never
/// holds its answer for a 1xx), and a backend that answers early, without reading the body,
/// still gets its answer relayed.
async fn expect_answered_by_gateway(io: &'static str) {
    let (saw, seen) = std::sync::mpsc::channel::<bool>();
    let saw = std::sync::Mutex::new(Some(saw));
    let saw = Arc::new(saw);
    let be = raw_backend(move |s, _| {
        let saw = saw.lock().unwrap().take();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut c = Conn::new(s);
            let Ok(head) = c.head().await else { return };
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if let Some(saw) = saw {
                let _ = saw.send(head.contains("expect:"));
            }
            let _ =
                c.s.write_all(
                    b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnope",
                )
                .await;
        }
    })
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    c.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let r = c.response(false).await.expect("interim");
    assert_eq!(r.status, 100, "the gateway answers the expectation: {r:?}");
    c.send(b"hello").await;
    let r = c.final_response(false).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body, b"nope");
    assert_eq!(seen.recv().ok(), Some(false), "Expect reached the backend");
}

/// The backend connection is reused for the next request of the same client connection, and a
/// new client connection works after the backend closes a kept connection.
async fn backend_reuse(io: &'static str) {
    let be = http_backend(Arc::new(|req: &Message, n| {
        let body = format!("conn={n} {}", req.path);
        if req.path == "/close" {
            format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        .into_bytes()
    }))
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    for i in 0..5 {
        c.send(&get(&format!("/k{i}"))).await;
        assert_eq!(
            c.final_response(false).await.body_str(),
            format!("conn=0 /k{i}")
        );
    }
    assert_eq!(be.accepts(), 1);
    // backend closes its side: the client connection goes on with a new backend connection
    c.send(&get("/close")).await;
    let r = c.final_response(false).await;
    assert_eq!(r.body_str(), "conn=0 /close");
    assert!(
        !r.connection_has("close"),
        "backend's close leaked to the client: {r:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for i in 0..3 {
        c.send(&get(&format!("/n{i}"))).await;
        assert_eq!(
            c.final_response(false).await.body_str(),
            format!("conn=1 /n{i}")
        );
    }
    assert_eq!(be.accepts(), 2);
}

/// HTTP/1.0 without keep-alive: one response, then close.
async fn http10(io: &'static str) {
    let be = tagged_backend("b").await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    c.send(b"GET /old HTTP/1.0\r\nHost: t\r\n\r\n").await;
    let r = c.final_response(false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "b GET /old conn=0\n");
    assert!(c.closed().await, "HTTP/1.0 without keep-alive must close");
}

/// Routes by host and path prefix (first match wins, default route), and 404 without a match.
async fn routing(io: &'static str) {
    let api = tagged_backend("api").await;
    let ws = tagged_backend("ws").await;
    let web = tagged_backend("web").await;
    let toml = format!(
        r#"admin = ""
[[listener]]
name = "main"
bind = "127.0.0.1:0"
mode = "http"

[[route]]
host = "app.example.com"
path_prefix = "/api/"
upstream = "api"

[[route]]
host = "app.example.com"
path_prefix = "/ws/"
upstream = "ws"

[[route]]
host = "*.example.com"
upstream = "web"

[[upstream]]
name = "api"
backends = [{{ name = "api-0", address = "{}" }}]

[[upstream]]
name = "ws"
backends = [{{ name = "ws-0", address = "{}" }}]

[[upstream]]
name = "web"
backends = [{{ name = "web-0", address = "{}" }}]
"#,
        api.addr, ws.addr, web.addr
    );
    let gw = Gateway::start_config(io, &toml);
    for (host, path, want) in [
        ("app.example.com", "/api/users", Some("api")),
        ("APP.example.com:8080", "/api/x", Some("api")),
        ("app.example.com", "/ws/chat", Some("ws")),
        ("app.example.com", "/", Some("web")),
        ("other.example.com", "/api/users", Some("web")),
        ("example.org", "/api/users", None),
    ] {
        let r = roundtrip(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .await;
        match want {
            Some(tag) => {
                assert_eq!(r.status, 200, "{host}{path}: {r:?}");
                assert_eq!(r.header("x-backend"), Some(tag), "{host}{path}");
            }
            None => {
                assert_eq!(r.status, 404, "{host}{path}: {r:?}");
                assert!(r.connection_has("close"));
            }
        }
    }
}

both_io!(
    get_post_keepalive,
    forwarding_and_hop_by_hop,
    chunked_both_ways,
    no_body_responses,
    close_delimited,
    pipelined,
    expect_continue,
    expect_answered_by_gateway,
    backend_reuse,
    http10,
    routing,
);
