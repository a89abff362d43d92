//! TLS termination end to end: the real binary, real TLS clients (rustls via tokio-rustls,
//! tokio-tungstenite over it, curl, openssl s_client), certificates from a CA made in the test.
//! Every test runs on io_uring and epoll.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/tls.rs"]
mod tlsc;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use gateway::*;
use tlsc::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message as Ws;

both_io!(
    https_requests_keepalive_resumption_and_curl,
    sni_picks_the_certificate,
    versions_and_openssl,
    wss_and_tls_tcp_tunnels,
    bad_input_is_answered_counted_and_leaks_nothing,
    rotation_keeps_open_connections,
    proxy_header_before_tls_and_secure_cookies,
    tls_tunnel_key_update_idle_and_resets,
    reload_with_bad_certificates_keeps_the_old,
);

/// Polls `/metrics` (bounded) until `name{labels}` satisfies `ok`; the TLS lines if it never does.
/// Counters move when a connection ends, which can be just after the client saw its end.
async fn metric_until(gw: &Gateway, name: &str, labels: &[(&str, &str)], ok: impl Fn(f64) -> bool) {
    let mut last = String::new();
    for _ in 0..40 {
        let m = gw.metrics().await;
        let v = m.sum(name, labels);
        if ok(v) {
            return;
        }
        last = m
            .text
            .lines()
            .filter(|l| l.contains("tls") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        last = format!("{name}{labels:?} = {v}\n{last}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("metric never matched: {last}");
}

fn echo_http() -> Responder {
    Arc::new(|m: &Message, _| echo_reply(m))
}

/// One http listener `web` terminating TLS with `certs` (TOML certificate entries), routed to
/// `backend`; admin on.
fn http_tls_config(certs: &str, extra_tls: &str, top: &str, backend: SocketAddr) -> String {
    format!(
        "admin = \"127.0.0.1:0\"\n{top}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\n\
         [listener.tls]\n{extra_tls}\n{certs}\n\
         [[upstream]]\nname = \"app\"\nbackends = [{{ name = \"b0\", address = \"{backend}\" }}]\n"
    )
}

fn cert_entry(dir: &std::path::Path) -> String {
    format!(
        "[[listener.tls.certificate]]\ndir = \"{}\"\n",
        dir.display()
    )
}

async fn tls_get(c: &mut TlsClient, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: chat.test\r\n\r\n");
    within("write", c.write_all(req.as_bytes())).await.unwrap();
    // Read one response: head, then Content-Length bytes.
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let n = within("read response", c.read(&mut tmp)).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn https_requests_keepalive_resumption_and_curl(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("https");
    let leaf = ca.leaf(&["chat.test"]);
    write_pair(&dir.path("chat"), &leaf);
    std::fs::write(dir.path("ca.pem"), &ca.pem).unwrap();
    let backend = http_backend(echo_http()).await;
    let gw = Gateway::start_config(
        io,
        &http_tls_config(&cert_entry(&dir.path("chat")), "", "", backend.addr),
    );

    // Two requests on one TLS connection (keep-alive), ALPN http/1.1 negotiated.
    let client = ca.client_resuming(&["http/1.1"]);
    let mut c = within("handshake", connect(gw.addr, client.clone(), "chat.test"))
        .await
        .expect("handshake");
    assert_eq!(served(&c), leaf.der);
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r1 = tls_get(&mut c, "/one").await;
    let r2 = tls_get(&mut c, "/two").await;
    assert!(
        r1.starts_with("HTTP/1.1 200") && r1.contains("GET /one"),
        "{r1}"
    );
    assert!(
        r2.starts_with("HTTP/1.1 200") && r2.contains("GET /two"),
        "{r2}"
    );
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(
            r.header("x-forwarded-proto"),
            Some("https"),
            "{}",
            r.brief()
        );
    }
    drop(c);

    // The same client config resumes the session (the ticket came with the first session).
    let mut c = within("resume", connect(gw.addr, client, "chat.test"))
        .await
        .expect("handshake");
    assert_eq!(
        c.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "second handshake resumes"
    );
    assert!(tls_get(&mut c, "/three").await.starts_with("HTTP/1.1 200"));
    drop(c);

    // curl, verifying against the test CA.
    let port = gw.addr.port();
    let (ok, out) = run(
        "curl",
        vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            dir.path("ca.pem").display().to_string(),
            "--resolve".into(),
            format!("chat.test:{port}:127.0.0.1"),
            "-H".into(),
            "X-Seq: curl".into(),
            format!("https://chat.test:{port}/curl"),
        ],
    )
    .await;
    assert!(ok, "curl failed: {out}");
    assert!(out.contains("GET /curl"), "{out}");

    let m = gw.metrics().await;
    assert!(
        m.sum("ringway_tls_handshakes_total", &[("result", "ok")]) >= 3.0,
        "{}",
        m.text
    );
    assert!(
        m.sum("ringway_tls_resumed_sessions_total", &[]) >= 1.0,
        "{}",
        m.text
    );
    assert!(
        m.sum(
            "ringway_tls_handshake_ciphers_total",
            &[("version", "TLSv1.3")]
        ) >= 3.0,
        "{}",
        m.text
    );
    assert!(
        m.sum(
            "ringway_tls_certificate_expiry_seconds",
            &[("listener", "web"), ("name", "chat.test")]
        ) > 1.7e9,
        "{}",
        m.text
    );
}

async fn sni_picks_the_certificate(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("sni");
    let default = ca.leaf(&["default.test", "127.0.0.1"]);
    let chat = ca.leaf(&["chat.example.test"]);
    let wild = ca.leaf(&["*.example.test"]);
    write_pair(&dir.path("default"), &default);
    write_pair(&dir.path("chat"), &chat);
    write_pair(&dir.path("wild"), &wild);
    let backend = http_backend(echo_http()).await;
    let certs = [
        cert_entry(&dir.path("default")),
        cert_entry(&dir.path("chat")),
        // the explicit form, for the same layout
        format!(
            "[[listener.tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path("wild/tls.crt").display(),
            dir.path("wild/tls.key").display()
        ),
    ]
    .concat();
    let lenient = Gateway::start_config(io, &http_tls_config(&certs, "", "", backend.addr));
    let strict = Gateway::start_config(
        io,
        &http_tls_config(&certs, "refuse_unknown_sni = true", "", backend.addr),
    );
    let client = ca.client(&[]);
    for (sni, want) in [
        ("chat.example.test", &chat),
        ("api.example.test", &wild),
        ("127.0.0.1", &default), // no SNI
        ("default.test", &default),
    ] {
        for gw in [&lenient, &strict] {
            let c = within("handshake", connect(gw.addr, client.clone(), sni))
                .await
                .unwrap_or_else(|e| panic!("{sni}: {e}"));
            assert!(served(&c) == want.der, "{sni} got the wrong certificate");
        }
    }
    // An unknown name: the default certificate (which the client then rejects: wrong name),
    // or, with refuse_unknown_sni, no certificate at all.
    let insecure_name = "unknown.test";
    let e = within(
        "handshake",
        connect(lenient.addr, client.clone(), insecure_name),
    )
    .await
    .expect_err("the default certificate does not cover unknown.test");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let e = within(
        "handshake",
        connect(strict.addr, client.clone(), insecure_name),
    )
    .await
    .expect_err("refused");
    assert!(
        !e.to_string().to_lowercase().contains("notvalidforname"),
        "{e}"
    );
    metric_until(
        &strict,
        "ringway_tls_handshakes_total",
        &[("result", "unknown_sni")],
        |v| v == 1.0,
    )
    .await;
    metric_until(
        &lenient,
        "ringway_tls_handshakes_total",
        &[("result", "alert_received")],
        |v| v == 1.0,
    )
    .await;

    // openssl s_client with SNI sees the chat certificate.
    let (_, out) = run(
        "openssl",
        vec![
            "s_client".into(),
            "-connect".into(),
            lenient.addr.to_string(),
            "-servername".into(),
            "chat.example.test".into(),
        ],
    )
    .await;
    assert!(
        out.contains("CN = chat.example.test") || out.contains("CN=chat.example.test"),
        "{out}"
    );
    let (_, out) = run(
        "openssl",
        vec![
            "s_client".into(),
            "-connect".into(),
            strict.addr.to_string(),
            "-servername".into(),
            "nobody.test".into(),
        ],
    )
    .await;
    assert!(
        !out.contains("BEGIN CERTIFICATE"),
        "refused: no certificate sent\n{out}"
    );
}

async fn versions_and_openssl(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("versions");
    write_pair(&dir.path("chat"), &ca.leaf(&["chat.test"]));
    std::fs::write(dir.path("ca.pem"), &ca.pem).unwrap();
    let backend = http_backend(echo_http()).await;
    let any = Gateway::start_config(
        io,
        &http_tls_config(&cert_entry(&dir.path("chat")), "", "", backend.addr),
    );
    let only13 = Gateway::start_config(
        io,
        &http_tls_config(
            &cert_entry(&dir.path("chat")),
            "min_version = \"1.3\"",
            "",
            backend.addr,
        ),
    );
    let tls12 = ca.client_versions(&[], &[&rustls::version::TLS12]);
    let mut c = within(
        "1.2 handshake",
        connect(any.addr, tls12.clone(), "chat.test"),
    )
    .await
    .expect("TLS 1.2 is on by default");
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(tls_get(&mut c, "/12").await.starts_with("HTTP/1.1 200"));
    assert!(
        within("1.2 to 1.3-only", connect(only13.addr, tls12, "chat.test"))
            .await
            .is_err()
    );

    // openssl s_client, TLS 1.2 only: a request and its answer go through.
    let (_, out) = run(
        "sh",
        vec![
            "-c".into(),
            format!(
                "printf 'GET /s_client HTTP/1.1\\r\\nHost: chat.test\\r\\nConnection: close\\r\\n\\r\\n' | \
                 timeout 10 openssl s_client -quiet -tls1_2 -connect {} -servername chat.test -CAfile {} -verify_return_error",
                any.addr,
                dir.path("ca.pem").display()
            ),
        ],
    )
    .await;
    assert!(
        out.contains("HTTP/1.1 200") && out.contains("GET /s_client"),
        "{out}"
    );
    let (_, out) = run(
        "sh",
        vec![
            "-c".into(),
            format!(
                "timeout 10 openssl s_client -tls1_2 -connect {} -servername chat.test </dev/null",
                only13.addr
            ),
        ],
    )
    .await;
    assert!(!out.contains("BEGIN CERTIFICATE"), "{out}");
    // A client that offers ALPN, none of it http/1.1: refused, counted.
    assert!(within(
        "h2 only",
        connect(any.addr, ca.client(&["h2"]), "chat.test")
    )
    .await
    .is_err());
    metric_until(
        &any,
        "ringway_tls_handshakes_total",
        &[("result", "no_alpn")],
        |v| v == 1.0,
    )
    .await;
    metric_until(
        &only13,
        "ringway_tls_handshakes_total",
        &[("result", "incompatible")],
        |v| v == 2.0,
    )
    .await;
    metric_until(
        &any,
        "ringway_tls_handshake_ciphers_total",
        &[("version", "TLSv1.2")],
        |v| v == 2.0,
    )
    .await;
}

async fn wss_and_tls_tcp_tunnels(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("wss");
    write_pair(&dir.path("chat"), &ca.leaf(&["chat.test"]));
    let ws_backend = ws_echo_backend().await;
    let echo = raw_backend(|mut s, _| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await;
    let cfg = format!(
        "admin = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"ws\"\n\
         [listener.tls]\n{cert}\n\
         [[listener]]\nname = \"devices\"\nbind = \"127.0.0.2:0\"\nmode = \"tcp\"\nupstream = \"echo\"\n\
         [listener.tls]\nalpn = [\"mqtt\"]\n{cert}\n\
         [[upstream]]\nname = \"ws\"\nbackends = [{{ name = \"w0\", address = \"{}\" }}]\n\
         [[upstream]]\nname = \"echo\"\nbackends = [{{ name = \"e0\", address = \"{}\" }}]\n",
        ws_backend.addr,
        echo.addr,
        cert = cert_entry(&dir.path("chat")),
    );
    let gw = Gateway::start_config(io, &cfg);

    // wss:// with tokio-tungstenite over rustls.
    let tls = within(
        "handshake",
        connect(gw.addrs[0], ca.client(&["http/1.1"]), "chat.test"),
    )
    .await
    .unwrap();
    let (mut ws, resp) = within(
        "ws upgrade",
        tokio_tungstenite::client_async("wss://chat.test/socket", tls),
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status(), 101);
    for i in 0..50 {
        let text = format!("message {i} {}", "x".repeat(i * 97));
        within("ws send", ws.send(Ws::text(text.clone())))
            .await
            .unwrap();
        let got = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(got, Ws::text(text));
    }
    let big = pseudo_bytes(7, 300_000);
    within("ws send big", ws.send(Ws::binary(big.clone())))
        .await
        .unwrap();
    let got = within("ws echo big", ws.next()).await.unwrap().unwrap();
    assert_eq!(got.into_data().as_ref(), &big[..]);
    within("ws close", ws.close(None)).await.unwrap();
    let reqs = ws_backend.requests();
    assert_eq!(reqs[0].header("x-forwarded-proto"), Some("https"));

    // tcp mode over TLS: ALPN as configured, bytes both ways, half-close both ways.
    let mut c = within(
        "handshake",
        connect(gw.addrs[1], ca.client(&["mqtt"]), "chat.test"),
    )
    .await
    .unwrap();
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"mqtt"[..]));
    let data = pseudo_bytes(11, 1 << 20);
    let (mut r, mut w) = tokio::io::split(c);
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap(); // close_notify + FIN → the backend sees EOF
            w
        })
    };
    let mut got = Vec::new();
    within("echo until EOF", r.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(
        fnv(&got),
        fnv(&data),
        "{} bytes back of {}",
        got.len(),
        data.len()
    );
    let w = writer.await.unwrap();
    c = r.unsplit(w);
    drop(c);
    let m = gw.metrics().await;
    assert!(
        m.sum(
            "ringway_bytes_total",
            &[("upstream", "echo"), ("direction", "to_backend")]
        ) >= (1 << 20) as f64,
        "{}",
        m.text
    );
}

async fn bad_input_is_answered_counted_and_leaks_nothing(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("bad");
    write_pair(&dir.path("chat"), &ca.leaf(&["chat.test"]));
    let backend = http_backend(echo_http()).await;
    let gw = Gateway::start_config(
        io,
        &http_tls_config(
            &cert_entry(&dir.path("chat")),
            "",
            "[timeouts]\ntls_handshake = \"1s\"\n",
            backend.addr,
        ),
    );
    // Warm up (the first handshake may allocate lazily), then take the baseline.
    let mut c = within("handshake", connect(gw.addr, ca.client(&[]), "chat.test"))
        .await
        .unwrap();
    assert!(tls_get(&mut c, "/warm").await.starts_with("HTTP/1.1 200"));
    drop(c);
    let base = stable_fds(&gw).await;

    for round in 0..3 {
        let mut stalled = Conn::connect(gw.addr).await;
        stalled.send(b"\x16\x03\x01").await;
        let mut silent = Conn::connect(gw.addr).await;

        // Plain HTTP to the TLS port: a plaintext 400, then the close.
        let mut p = Conn::connect(gw.addr).await;
        p.send(b"GET / HTTP/1.1\r\nHost: chat.test\r\n\r\n").await;
        let got = p.read_to_end().await.unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400"), "round {round}: {text}");

        // Garbage: a TLS alert record (0x15), then the close.
        let mut g = Conn::connect(gw.addr).await;
        g.send(b"\x16\x03\x01\x00\x05hello-not-a-client-hello")
            .await;
        let got = g.read_to_end().await.unwrap();
        assert_eq!(
            got.first(),
            Some(&0x15),
            "round {round}: an alert, got {got:?}"
        );

        // Binary garbage that is not even a handshake record.
        let mut g = Conn::connect(gw.addr).await;
        g.send(&[0x80, 0x01, 0x02, 0x03, 0xff, 0xfe]).await;
        let got = g.read_to_end().await.unwrap();
        assert!(got.is_empty() || got[0] == 0x15, "round {round}: {got:?}");

        // A client that starts and stalls, and one that sends nothing: both closed by
        // timeouts.tls_handshake (opened above, so their timers ran meanwhile).
        assert!(
            stalled.closed().await,
            "round {round}: stalled handshake closed"
        );
        assert!(silent.closed().await, "round {round}: silent client closed");
    }
    for (result, n) in [("plain_http", 3.0), ("bad_record", 6.0), ("timeout", 6.0)] {
        metric_until(
            &gw,
            "ringway_tls_handshakes_total",
            &[("result", result)],
            |v| v == n,
        )
        .await;
    }
    assert_eq!(backend.accepts(), 1, "no bad client reached a backend");
    let after = gw.settle_fds(base).await;
    assert!(after <= base, "fds: {after} after, {base} before");
    // Still serving.
    let mut c = within("handshake", connect(gw.addr, ca.client(&[]), "chat.test"))
        .await
        .unwrap();
    assert!(tls_get(&mut c, "/after").await.starts_with("HTTP/1.1 200"));
}

async fn rotation_keeps_open_connections(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("rotate");
    let old = ca.leaf(&["chat.test"]);
    let mut secret = Secret::new(dir.path("secret"), &old);
    let ws_backend = ws_echo_backend().await;
    let gw = Gateway::start_config(
        io,
        &http_tls_config(&cert_entry(&secret.dir), "", "", ws_backend.addr),
    );
    let client = ca.client(&[]);
    let tls = within("handshake", connect(gw.addr, client.clone(), "chat.test"))
        .await
        .unwrap();
    assert_eq!(served(&tls), old.der);
    let (mut ws, _) = within(
        "upgrade",
        tokio_tungstenite::client_async("wss://chat.test/", tls),
    )
    .await
    .unwrap();
    within("send", ws.send(Ws::text("before"))).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Ws::text("before")
    );

    // The kubelet swaps ..data: new handshakes get the new certificate (files are polled).
    let new = ca.leaf(&["chat.test"]);
    secret.rotate(&new);
    let mut seen_new = false;
    for _ in 0..60 {
        let c = within("handshake", connect(gw.addr, client.clone(), "chat.test"))
            .await
            .unwrap();
        if served(&c) == new.der {
            seen_new = true;
            break;
        }
        assert_eq!(served(&c), old.der);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        seen_new,
        "the rotated certificate is served within 15 s\n{}",
        gw.log()
    );
    // The open connection kept its session.
    within("send", ws.send(Ws::text("after"))).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Ws::text("after")
    );

    // A bad rotation (a key that is not the certificate's) keeps the current certificate.
    let other = ca.leaf(&["chat.test"]);
    secret.rotate_pems(&other.cert_pem, &new.key_pem);
    let mut failed = 0.0;
    for _ in 0..60 {
        failed = gw.metrics().await.sum(
            "ringway_tls_certificate_reloads_total",
            &[("result", "failed")],
        );
        if failed >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        failed,
        1.0,
        "the bad rotation is counted once\n{}",
        gw.log()
    );
    gw.log_until("does not belong to").await;
    let c = within("handshake", connect(gw.addr, client.clone(), "chat.test"))
        .await
        .unwrap();
    assert_eq!(served(&c), new.der, "the last good certificate stays");
    within("send", ws.send(Ws::text("still"))).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Ws::text("still")
    );
    let m = gw.metrics().await;
    assert_eq!(
        m.sum("ringway_tls_certificate_reloads_total", &[("result", "ok")]),
        1.0,
        "{}",
        m.text
    );
}

async fn proxy_header_before_tls_and_secure_cookies(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("proxy");
    write_pair(&dir.path("chat"), &ca.leaf(&["chat.test"]));
    let backend = http_backend(echo_http()).await;
    let cfg = format!(
        "admin = \"\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\nproxy_protocol = true\n\
         [listener.tls]\n{}\n\
         [[upstream]]\nname = \"app\"\nbalance = \"cookie\"\nbackends = [{{ name = \"b0\", address = \"{}\" }}]\n\
         [upstream.cookie]\nsecret = \"test-secret\"\n",
        cert_entry(&dir.path("chat")),
        backend.addr
    );
    let gw = Gateway::start_config(io, &cfg);
    // The PROXY header from an L4 balancer comes first, in clear; TLS follows on the same bytes.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n")
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("chat.test").unwrap();
    let mut c = within(
        "handshake after PROXY",
        tokio_rustls::TlsConnector::from(ca.client(&[])).connect(name, tcp),
    )
    .await
    .unwrap();
    let r = tls_get(&mut c, "/p").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let set_cookie = r
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie: {r}"));
    assert!(
        set_cookie.contains("Secure"),
        "a TLS listener's route cookie is Secure: {set_cookie}"
    );
    let req = &backend.requests()[0];
    assert_eq!(
        req.header("x-forwarded-for"),
        Some("203.0.113.7"),
        "{}",
        req.brief()
    );
    assert_eq!(
        req.header("x-forwarded-proto"),
        Some("https"),
        "{}",
        req.brief()
    );
}

async fn tls_tunnel_key_update_idle_and_resets(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("tunnel");
    write_pair(&dir.path("dev"), &ca.leaf(&["dev.test"]));
    // Echoes; "boom" makes it reset the connection.
    let echo = raw_backend(|mut s, _| async move {
        let mut buf = [0u8; 4096];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if buf[..n].windows(4).any(|w| w == b"boom") {
                set_rst_on_close(&s);
                return;
            }
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let cfg = format!(
        "admin = \"\"\n[timeouts]\ntunnel_idle = \"700ms\"\n\
         [[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nupstream = \"echo\"\n\
         [listener.tls]\n{}\n\
         [[upstream]]\nname = \"echo\"\nbackends = [{{ name = \"e0\", address = \"{}\" }}]\n",
        cert_entry(&dir.path("dev")),
        echo.addr
    );
    let gw = Gateway::start_config(io, &cfg);
    let client = ca.client(&[]);
    // Warm up (first connections create per-worker state), then take the baseline.
    let mut w = within("handshake", connect(gw.addr, client.clone(), "dev.test"))
        .await
        .unwrap();
    within("write", w.write_all(b"w")).await.unwrap();
    within("read", w.read_exact(&mut [0u8; 1])).await.unwrap();
    within("close", w.shutdown()).await.unwrap();
    let _ = within("eof", w.read(&mut [0u8; 1])).await;
    drop(w);
    let base = stable_fds(&gw).await;
    let base_kinds = gw.fd_kinds();

    // KeyUpdate (TLS 1.3) mid-stream, several times: bytes keep flowing both ways.
    let mut c = within("handshake", connect(gw.addr, client.clone(), "dev.test"))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    for i in 0..5u8 {
        c.get_mut().1.refresh_traffic_keys().unwrap();
        let msg = [b'k', b'0' + i];
        within("write", c.write_all(&msg)).await.unwrap();
        within("read", c.read_exact(&mut buf[..2])).await.unwrap();
        assert_eq!(&buf[..2], &msg, "echo after KeyUpdate {i}");
    }
    // Idle past tunnel_idle: the gateway ends the tunnel.
    let r = within("idle close", c.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "idle tunnel closed: {r:?}");

    // The backend resets: the client's connection ends too.
    let mut c = within("handshake", connect(gw.addr, client.clone(), "dev.test"))
        .await
        .unwrap();
    within("write", c.write_all(b"hi")).await.unwrap();
    within("read", c.read_exact(&mut buf[..2])).await.unwrap();
    within("write", c.write_all(b"boom")).await.unwrap();
    let r = within("reset passed on", c.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "backend reset ends the client side: {r:?}"
    );

    // The client resets mid-tunnel: nothing is left open.
    let c = within("handshake", connect(gw.addr, client.clone(), "dev.test"))
        .await
        .unwrap();
    set_rst_on_close(c.get_ref().0);
    drop(c);
    let after = gw.settle_fds(base).await;
    assert!(
        after <= base,
        "fds: {after} after, {base} before; kinds {:?} after, {base_kinds:?} before: {:?}",
        gw.fd_kinds(),
        fd_links(gw.pid())
    );
}

fn fd_links(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The gateway's fd count once it stops changing (workers finish starting after the listening
/// line: a ring, an eventfd, per worker), for a baseline.
async fn stable_fds(gw: &Gateway) -> usize {
    let mut last = gw.fd_count();
    let mut same = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let n = gw.fd_count();
        same = if n == last { same + 1 } else { 0 };
        last = n;
        if same >= 5 {
            break;
        }
    }
    last
}

async fn post_reload(gw: &Gateway) -> u16 {
    let admin = gw.admin_addr().await;
    roundtrip(
        admin,
        b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .status
}

async fn reload_with_bad_certificates_keeps_the_old(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("reload");
    let old = ca.leaf(&["chat.test"]);
    write_pair(&dir.path("chat"), &old);
    let backend = http_backend(echo_http()).await;
    let gw = Gateway::start_config(
        io,
        &http_tls_config(&cert_entry(&dir.path("chat")), "", "", backend.addr),
    );
    let client = ca.client(&[]);
    let mut open = within("handshake", connect(gw.addr, client.clone(), "chat.test"))
        .await
        .unwrap();
    assert!(tls_get(&mut open, "/1").await.starts_with("HTTP/1.1 200"));

    // A key that is not the certificate's: the reload is refused, the old certificate serves.
    let new = ca.leaf(&["chat.test"]);
    std::fs::write(dir.path("chat/tls.crt"), &new.cert_pem).unwrap();
    assert_eq!(post_reload(&gw).await, 500, "{}", gw.log());
    let c = within("handshake", connect(gw.addr, client.clone(), "chat.test"))
        .await
        .unwrap();
    assert_eq!(served(&c), old.der);
    assert!(tls_get(&mut open, "/2").await.starts_with("HTTP/1.1 200"));

    // The matching key arrives: the reload takes it (whether the file poll saw it first or not).
    std::fs::write(dir.path("chat/tls.key"), &new.key_pem).unwrap();
    assert_eq!(post_reload(&gw).await, 200, "{}", gw.log());
    let c = within("handshake", connect(gw.addr, client.clone(), "chat.test"))
        .await
        .unwrap();
    assert_eq!(served(&c), new.der);
    // The connection opened before both reloads kept its session.
    assert!(tls_get(&mut open, "/3").await.starts_with("HTTP/1.1 200"));
    metric_until(
        &gw,
        "ringway_config_reloads_total",
        &[("result", "failed")],
        |v| v == 1.0,
    )
    .await;
}
