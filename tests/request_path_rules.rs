//! Regression tests of issue 10, part 2: one Content-Length reaches the backend, routes match
//! the normalised path while the target is forwarded as received, rejections are read (not
//! reset), and each error is counted once in /metrics. Real binary, both io backends.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::sync::Arc;
use std::time::Duration;

use gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `Content-Length: 3, 3` and two `Content-Length: 3` lines: the backend gets exactly one
/// `Content-Length: 3` and the 3 bytes. Differing values: 400, and no backend connection.
async fn duplicate_content_length(io: &'static str) {
    let be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(echo_reply))).await;
    let gw = Gateway::start_config(io, &routed_config("", &[("/", "main", &[be.addr])]));
    for cl in [
        "Content-Length: 3, 4\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n",
    ] {
        let req = format!("POST /d HTTP/1.1\r\nHost: t\r\n{cl}\r\nabcd");
        let r = roundtrip(gw.addr, req.as_bytes()).await;
        assert_eq!(r.status, 400, "{cl:?}: {}", r.brief());
    }
    assert_eq!(
        be.accepts(),
        0,
        "a differing Content-Length reached a backend"
    );
    for cl in [
        "Content-Length: 3, 3\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\n",
    ] {
        let req = format!("POST /d HTTP/1.1\r\nHost: t\r\n{cl}\r\nabc");
        let r = roundtrip(gw.addr, req.as_bytes()).await;
        let seen = be.requests().pop().expect("a request at the backend");
        assert_eq!(
            seen.all("content-length"),
            vec!["3"],
            "{cl:?}: the backend must get exactly one Content-Length: 3; head {:?}",
            String::from_utf8_lossy(&seen.raw_head)
        );
        assert_eq!(seen.body, b"abc", "{cl:?}");
        assert_eq!(
            (r.status, r.body_str()),
            (200, "POST /d len=3\nabc".into()),
            "{cl:?}"
        );
    }
}

/// Routes match the normalised path (dot segments removed, unreserved %-escapes decoded);
/// the target is forwarded as received; bad %-encoding is 400.
async fn routes_match_normalised_path(io: &'static str) {
    let c_be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(echo_reply))).await;
    let x_be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(echo_reply))).await;
    let only_c = Gateway::start_config(io, &routed_config("", &[("/c/", "c", &[c_be.addr])]));
    let c_and_x = Gateway::start_config(
        io,
        &routed_config("", &[("/c/", "c", &[c_be.addr]), ("/x", "x", &[x_be.addr])]),
    );
    let dotted = ["/c/../x", "/c/%2e%2e/x", "/c/%2E%2E/x", "/c/./../x"];
    for target in dotted {
        let r = roundtrip(only_c.addr, &get(target)).await;
        assert_eq!(
            r.status,
            404,
            "{target} is /x, which has no route: {}",
            r.brief()
        );
        let r = roundtrip(c_and_x.addr, &get(target)).await;
        assert_eq!(r.status, 200, "{target}: {}", r.brief());
        let seen = x_be.requests().pop().expect("a request at X");
        assert_eq!(seen.path, target, "forwarded as received");
    }
    assert_eq!(x_be.requests().len(), dotted.len());
    let r = roundtrip(only_c.addr, &get("/c/%41bc")).await;
    assert_eq!(
        (r.status, r.header("x-path")),
        (200, Some("/c/%41bc")),
        "/c/%41bc is /c/Abc, served by C as received: {}",
        r.brief()
    );
    for target in ["/c/%zz", "/c/%4", "/c/%"] {
        let r = roundtrip(only_c.addr, &get(target)).await;
        assert_eq!(
            r.status,
            400,
            "bad percent-encoding {target}: {}",
            r.brief()
        );
    }
    let at_c: Vec<String> = c_be.requests().into_iter().map(|m| m.path).collect();
    assert_eq!(at_c, vec!["/c/%41bc"], "C served only /c/%41bc");
}

/// Sends `head`, then keeps writing `more` (bounded: 32 × 512 B, 10 ms apart) while reading;
/// returns what was read before EOF or an error, and the error if one came before any
/// complete response head.
async fn read_while_sending(
    addr: std::net::SocketAddr,
    head: Vec<u8>,
) -> (Vec<u8>, Option<String>) {
    let s = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(&head).await.is_err() {
            return;
        }
        let pad = format!("X-Pad: {}\r\n", "p".repeat(502));
        for _ in 0..32 {
            if wr.write_all(pad.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // keep the write side open until the reader is done
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let mut got = Vec::new();
    let mut err = None;
    let mut tmp = [0u8; 4096];
    within("the rejection", async {
        loop {
            match rd.read(&mut tmp).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(e) => {
                    if !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        err = Some(e.to_string());
                    }
                    break;
                }
            }
        }
    })
    .await;
    writer.abort();
    (got, err)
}

/// A 17 KB URI and a malformed head, each followed by more request bytes: the client reads
/// its 431 / 400 instead of a reset.
async fn rejections_are_read(io: &'static str) {
    let be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(echo_reply))).await;
    let gw = Gateway::start_config(io, &routed_config("", &[("/", "main", &[be.addr])]));
    let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n", "u".repeat(17 * 1024)).into_bytes();
    let bad = b"GET /\x01bad HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n".to_vec();
    for (what, head, status) in [("17 KB URI", long, 431), ("malformed head", bad, 400)] {
        let (got, err) = read_while_sending(gw.addr, head).await;
        assert_eq!(
            err, None,
            "{what}: the read failed before the status arrived"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: want {status}, read {text:?}"
        );
    }
    assert_eq!(be.accepts(), 0);
}

/// 100 KB of `x` after a `200`, so a few answers fill a slow reader's window.
fn big_reply(_: &Message) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 102400\r\n\r\n".to_vec();
    out.resize(out.len() + 102_400, b'x');
    out
}

/// A pipelining client with a small receive window that reads late: its bad third request's
/// status (a malformed head; a 17 KB URI) is still queued behind the earlier answers when the
/// gateway gives up on the connection, and the client sends more bytes after that. Closing
/// with those unread resets the connection and drops the queued answers; the client must read
/// all of them, the status last.
async fn rejection_behind_slow_reads(io: &'static str) {
    let be = scripted_backend(Arc::new(|_: &Message, _| Reply::After(big_reply))).await;
    let gw = Gateway::start_config(io, &routed_config("", &[("/", "main", &[be.addr])]));
    let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(17 * 1024));
    for (what, bad, status) in [
        (
            "malformed head",
            "GET /\x01bad HTTP/1.1\r\nHost: t\r\n\r\n".to_string(),
            400,
        ),
        ("17 KB URI", long, 431),
    ] {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let s = within("connect", sock.connect(gw.addr)).await.unwrap();
        let mut c = Conn::new(s);
        let mut reqs = Vec::new();
        for _ in 0..2 {
            reqs.extend(get("/big"));
        }
        reqs.extend(bad.as_bytes());
        c.send(&reqs).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // more bytes around the time the gateway gives up, well within a bounded drain (1 s)
        c.send(format!("X-Pad: {}\r\n", "p".repeat(4000)).as_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..2 {
            let r = c
                .response(false)
                .await
                .unwrap_or_else(|e| panic!("{what}: answer {i}: {e:?}"));
            assert_eq!(
                (r.status, r.body.len()),
                (200, 102_400),
                "{what}: answer {i}"
            );
        }
        let r = c
            .response(false)
            .await
            .unwrap_or_else(|e| panic!("{what}: no {status} after the answers: {e:?}"));
        assert_eq!(r.status, status, "{what}: {}", r.brief());
    }
}

const ERRORS: &str = "ringway_errors_total";

/// Scrapes until `f(metrics)` reaches `want` (bounded), then once more after a pause, so a
/// second count of the same error would show; returns the last value.
async fn settled(gw: &Gateway, want: f64, f: impl Fn(&Metrics) -> f64) -> f64 {
    for _ in 0..50 {
        if f(&gw.metrics().await) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    f(&gw.metrics().await)
}

fn admin_top() -> &'static str {
    "admin = \"127.0.0.1:0\""
}

/// A backend reset mid-response, and one before any response byte: one `backend_reset` each,
/// and no other error counted.
async fn backend_reset_counted_once(io: &'static str) {
    for (what, answer) in [
        (
            "mid-response",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"[..],
        ),
        ("before the response", &b""[..]),
    ] {
        let be = raw_backend(move |s, _| async move {
            let mut c = Conn::new(s);
            if c.request(false).await.is_err() {
                return;
            }
            let _ = c.s.write_all(answer).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            set_rst_on_close(&c.s);
        })
        .await;
        let gw = Gateway::start_config(
            io,
            &routed_config(admin_top(), &[("/", "main", &[be.addr])]),
        );
        let before = gw.metrics().await;
        let mut c = Conn::connect(gw.addr).await;
        c.send(&get("/reset")).await;
        let r = c.response(false).await;
        if answer.is_empty() {
            assert_eq!(r.expect("a 502").status, 502, "{what}");
        } else {
            assert!(
                r.is_err(),
                "{what}: a truncated response, got {:?}",
                r.map(|m| m.brief())
            );
        }
        let reset = [("kind", "backend_reset")];
        let want = before.sum(ERRORS, &reset) + 1.0;
        let got = settled(&gw, want, |m| m.sum(ERRORS, &reset)).await;
        assert_eq!(
            got,
            want,
            "{what}: backend_reset counted {} times",
            got - want + 1.0
        );
        let all = gw.metrics().await.sum(ERRORS, &[]);
        assert_eq!(
            all,
            before.sum(ERRORS, &[]) + 1.0,
            "{what}: other errors counted too:\n{}",
            gw.metrics().await.text
        );
    }
}

/// No backend up (the only one is down by its health check): 503, `no_backend` counted once.
async fn no_backend_counted_once(io: &'static str) {
    let dead = closed_port();
    let cfg = format!(
        "{}\n\n[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\n\
         upstream = \"main\"\n\n[[upstream]]\nname = \"main\"\n\
         backends = [{{ name = \"b0\", address = \"{dead}\" }}]\n\n[upstream.health]\n\
         check = \"tcp\"\nstart = \"down\"\ninterval = \"1h\"\n",
        admin_top()
    );
    let gw = Gateway::start_config(io, &cfg);
    // the health state reaches the workers' tables asynchronously: wait until it says down
    let mut before = gw.metrics().await;
    for _ in 0..100 {
        if before.text.contains("ringway_backend_up{")
            && before.sum("ringway_backend_up", &[]) == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        before = gw.metrics().await;
    }
    let r = roundtrip(gw.addr, &get("/none")).await;
    assert_eq!(r.status, 503, "{}", r.brief());
    let nb = [("kind", "no_backend")];
    let want = before.sum(ERRORS, &nb) + 1.0;
    let got = settled(&gw, want, |m| m.sum(ERRORS, &nb)).await;
    assert_eq!(got, want, "no_backend counted {} times", got - want + 1.0);
    let m = gw.metrics().await;
    assert_eq!(
        m.sum(ERRORS, &[]),
        before.sum(ERRORS, &[]) + 1.0,
        "{}",
        m.text
    );
}

/// A `101` to a request that asked for no upgrade: 502, counted as a bad response, not as a
/// failed upgrade.
async fn unasked_101_is_bad_response(io: &'static str) {
    let be = raw_backend(|s, _| async move {
        let mut c = Conn::new(s);
        if c.request(false).await.is_ok() {
            let _ = c
                .s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let gw = Gateway::start_config(
        io,
        &routed_config(admin_top(), &[("/", "main", &[be.addr])]),
    );
    let before = gw.metrics().await;
    let r = roundtrip(gw.addr, &get("/plain")).await;
    assert_eq!(r.status, 502, "{}", r.brief());
    let bad = [("kind", "bad_response")];
    let want = before.sum(ERRORS, &bad) + 1.0;
    let got = settled(&gw, want, |m| m.sum(ERRORS, &bad)).await;
    assert_eq!(got, want, "bad_response counted {} times", got - want + 1.0);
    let m = gw.metrics().await;
    let failed = [("result", "failed")];
    assert_eq!(
        m.sum("ringway_upgrades_total", &failed),
        before.sum("ringway_upgrades_total", &failed),
        "counted as a failed upgrade:\n{}",
        m.text
    );
    assert_eq!(
        m.sum(ERRORS, &[]),
        before.sum(ERRORS, &[]) + 1.0,
        "{}",
        m.text
    );
}

both_io!(
    duplicate_content_length,
    routes_match_normalised_path,
    rejections_are_read,
    rejection_behind_slow_reads,
    backend_reset_counted_once,
    no_backend_counted_once,
    unasked_101_is_bad_response,
);
