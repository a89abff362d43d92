//! Upstream TLS end to end (`[upstream.tls]`, `--tls-ca`): the real binary in front of TLS
//! backends made in the test (tokio-rustls, certificates from a CA generated per test): HTTP
//! with keep-alive reuse and session resumption, WebSocket and tcp tunnels (plain and TLS
//! clients), verification failures (wrong CA, wrong name) as 502 counted by result, retry to
//! the next backend, mTLS, the quick form, and `ringway check` on bad files. Both io backends.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/dns.rs"]
mod dns;
#[path = "common/tls.rs"]
mod tlsc;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use gateway::*;
use tlsc::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
use tokio_tungstenite::tungstenite::Message as Ws;

both_io!(
    http_keepalive_bodies_and_resumption,
    websocket_and_tcp_tunnels_both_client_kinds,
    verification_failures_are_502_counted_and_retried,
    mtls_client_certificate,
    quick_form_tls_ca,
    health_probes_and_proxy_header_speak_tls,
    dns_backends_are_verified_by_their_name,
    bulk_both_ways_through_a_tls_backend_does_not_deadlock,
    reload_rereads_the_ca_and_forgets_sessions_it_no_longer_trusts,
);

const ROUNDS: usize = 3;
const NO_PASSIVE: &str = "[upstream.health]\nmax_fails = 0";

const HANDSHAKES: &str = "ringway_tls_upstream_handshakes_total";

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// A TLS backend: `handler(decrypted stream, connection index)` after each good handshake;
/// `failed` counts handshakes that did not complete (e.g. no client certificate).
struct TlsBackend {
    b: Backend,
    failed: Arc<AtomicUsize>,
}

fn server_config(leaf: &Leaf, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        }
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}

/// Waits (bounded) until `b` has accepted `n` connections.
async fn accepted_at_least(b: &Backend, n: usize, what: &str) {
    within(what, async {
        while b.accepts() < n {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn tls_backend<F, Fut>(config: Arc<rustls::ServerConfig>, handler: F) -> TlsBackend
where
    F: Fn(ServerTls, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let failed = Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let b = raw_backend(move |s, n| {
        let (acceptor, handler, f) = (acceptor.clone(), handler.clone(), f.clone());
        async move {
            match acceptor.accept(s).await {
                Ok(t) => handler(t, n).await,
                Err(_) => {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    })
    .await;
    TlsBackend { b, failed }
}

/// Keep-alive HTTP over TLS: every request answered `200` with body
/// `tls conn=N METHOD PATH body=<request body>`.
async fn https_backend(config: Arc<rustls::ServerConfig>) -> TlsBackend {
    tls_backend(config, |mut s: ServerTls, n| async move {
        let mut buf = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            };
            let m = parse_head(&buf[..end], true).unwrap();
            let len: usize = m
                .header("content-length")
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + len {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let body = format!(
                "tls conn={n} {} {} body={}",
                m.method,
                m.path,
                String::from_utf8_lossy(&buf[end..end + len])
            );
            buf.drain(..end + len);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// WebSocket echo over TLS (tokio-tungstenite).
async fn wss_backend(config: Arc<rustls::ServerConfig>) -> TlsBackend {
    tls_backend(config, |s: ServerTls, _| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                let _ = ws.flush().await;
            }
        }
    })
    .await
}

/// Byte echo over TLS; the client's close_notify/FIN is answered with ours after the echo.
async fn tls_echo_backend(config: Arc<rustls::ServerConfig>) -> TlsBackend {
    tls_backend(config, |s: ServerTls, _| async move {
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

fn upstream_config(name: &str, backends: &[SocketAddr], tls: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ name = \"b{i}\", address = \"{a}\" }}"))
        .collect();
    format!(
        "[[upstream]]\nname = \"{name}\"\nbackends = [{}]\n[upstream.tls]\n{tls}\n",
        list.join(", ")
    )
}

fn http_listener(upstream: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"{upstream}\"\n"
    )
}

fn ca_file(dir: &Dir, ca: &Ca) -> String {
    let p = dir.path("ca.pem");
    std::fs::write(&p, &ca.pem).unwrap();
    p.display().to_string()
}

/// Polls `/metrics` (bounded) until `name{labels}` satisfies `ok`.
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

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A static backend is verified by its IP (the default): requests, bodies and responses go
/// over TLS, a kept-alive backend connection serves the next request, and a new connection
/// to the same backend resumes the session.
async fn http_keepalive_bodies_and_resumption(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("up-http");
    let backend = https_backend(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let cfg = format!(
        "admin = \"127.0.0.1:0\"\n{}{}",
        http_listener("app"),
        upstream_config(
            "app",
            &[backend.b.addr],
            &format!("ca_file = \"{}\"", ca_file(&dir, &ca))
        )
    );
    let gw = Gateway::start_config(io, &cfg);

    let mut c = Conn::connect(gw.addr).await;
    c.send(&get("/one")).await;
    let r = within("first response", c.response(false)).await.unwrap();
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.body_str(), "tls conn=0 GET /one body=");
    let big = "y".repeat(100_000);
    c.send(&post("/two", &big)).await;
    let r = within("second response", c.response(false)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), format!("tls conn=0 POST /two body={big}"));
    assert_eq!(
        backend.b.accepts(),
        1,
        "the kept-alive TLS connection was reused"
    );
    drop(c);

    // A second client connection: a new backend connection, which resumes the session.
    let r = roundtrip(gw.addr, &get("/three")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "tls conn=1 GET /three body=");
    let up = [("upstream", "app")];
    metric_until(&gw, HANDSHAKES, &[up[0], ("result", "ok")], |v| v == 1.0).await;
    metric_until(&gw, HANDSHAKES, &[up[0], ("result", "resumed")], |v| {
        v == 1.0
    })
    .await;
    metric_until(&gw, HANDSHAKES, &up, |v| v == 2.0).await;
    assert_eq!(backend.failed.load(Ordering::SeqCst), 0);
}

/// WebSocket and tcp-mode tunnels to TLS backends, from a plain client (plain × TLS pumps) and
/// from a TLS client of a terminating listener (TLS × TLS), with half-close passed on.
async fn websocket_and_tcp_tunnels_both_client_kinds(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("up-tunnel");
    let front = ca.leaf(&["chat.test"]);
    write_pair(&dir.path("front"), &front);
    let back = server_config(&ca.leaf(&["pods.internal"]), None);
    let ws = wss_backend(back.clone()).await;
    let echo = tls_echo_backend(back).await;
    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"pods.internal\"",
        ca_file(&dir, &ca)
    );
    let cert = format!(
        "[listener.tls]\n[[listener.tls.certificate]]\ndir = \"{}\"\n",
        dir.path("front").display()
    );
    let cfg = format!(
        "admin = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"ws\"\n\
         [[listener]]\nname = \"webs\"\nbind = \"127.0.0.2:0\"\nmode = \"http\"\nupstream = \"ws\"\n{cert}\
         [[listener]]\nname = \"raw\"\nbind = \"127.0.0.3:0\"\nmode = \"tcp\"\nupstream = \"echo\"\n\
         [[listener]]\nname = \"raws\"\nbind = \"127.0.0.4:0\"\nmode = \"tcp\"\nupstream = \"echo\"\n{cert}\
         {}{}",
        upstream_config("ws", &[ws.b.addr], &tls),
        upstream_config("echo", &[echo.b.addr], &tls),
    );
    let gw = Gateway::start_config(io, &cfg);

    // ws:// (plain client) → TLS backend.
    let tcp = TcpStream::connect(gw.addrs[0]).await.unwrap();
    let (mut c, resp) = within(
        "ws upgrade",
        tokio_tungstenite::client_async("ws://app.test/socket", tcp),
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws_echo_rounds(&mut c).await;

    // wss:// (TLS client) → TLS backend.
    let tls = within(
        "handshake",
        connect(gw.addrs[1], ca.client(&["http/1.1"]), "chat.test"),
    )
    .await
    .unwrap();
    let (mut c, resp) = within(
        "wss upgrade",
        tokio_tungstenite::client_async("wss://chat.test/socket", tls),
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws_echo_rounds(&mut c).await;

    // tcp mode, plain client: bytes both ways, then our FIN reaches the backend and its
    // close_notify + FIN come back as a FIN.
    let mut c = TcpStream::connect(gw.addrs[2]).await.unwrap();
    tcp_echo_rounds(&mut c).await;

    // tcp mode, TLS client.
    let mut c = within(
        "handshake",
        connect(gw.addrs[3], ca.client(&[]), "chat.test"),
    )
    .await
    .unwrap();
    tcp_echo_rounds(&mut c).await;

    assert_eq!(ws.failed.load(Ordering::SeqCst), 0);
    assert_eq!(echo.failed.load(Ordering::SeqCst), 0);
    // Four tunnels, four backend handshakes (the first full, the others resumed).
    metric_until(&gw, HANDSHAKES, &[], |v| v == 4.0).await;
    metric_until(&gw, HANDSHAKES, &[("result", "bad_certificate")], |v| {
        v == 0.0
    })
    .await;
}

async fn ws_echo_rounds<S>(c: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..20 {
        let text = format!("message {i} {}", "x".repeat(i * 331));
        within("ws send", c.send(Ws::text(text.clone())))
            .await
            .unwrap();
        let got = within("ws echo", c.next()).await.unwrap().unwrap();
        assert_eq!(got, Ws::text(text));
    }
    let big: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    within("ws send big", c.send(Ws::binary(big.clone())))
        .await
        .unwrap();
    let got = within("ws echo big", c.next()).await.unwrap().unwrap();
    assert_eq!(got.into_data().as_ref(), &big[..]);
    within("ws close", c.close(None)).await.unwrap();
}

async fn tcp_echo_rounds<S>(c: &mut S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tcp_echo_bulk(c, 1 << 20).await;
}

/// A short echo, then `size` bytes both ways at once and a half-close.
async fn tcp_echo_bulk<S>(c: &mut S, size: u32)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("write", c.write_all(b"hello over tls"))
        .await
        .unwrap();
    let mut got = [0u8; 14];
    within("echo", c.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"hello over tls");
    // Both ways at once: neither pump may wait on the other.
    let big: Vec<u8> = (0..size).map(|i| (i * 13 % 253) as u8).collect();
    let (mut r, mut w) = tokio::io::split(c);
    let writer = async {
        w.write_all(&big).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let reader = async {
        r.read_to_end(&mut back).await.unwrap();
    };
    // A bound for a hang (a deadlock never ends), generous for a debug build on a busy machine.
    let both = tokio::time::timeout(std::time::Duration::from_secs(90), async {
        tokio::join!(writer, reader)
    });
    both.await
        .expect("bulk echo hung: the tunnel stopped moving bytes");
    assert_eq!(back.len(), big.len());
    assert!(back == big, "echoed bytes differ");
}

/// A backend whose certificate does not verify (another CA; a name it was not issued for) is a
/// failed connect: 502 when it is the only one, counted as `bad_certificate`; with a good
/// backend next to it the request is retried there. A backend that never answers the
/// ClientHello fails within `timeouts.tls_handshake`. No fd is left behind.
async fn verification_failures_are_502_counted_and_retried(io: &'static str) {
    let ca = Ca::new();
    let other = Ca::new();
    let dir = Dir::new("up-verify");
    let ca_path = ca_file(&dir, &ca);
    let foreign = https_backend(server_config(&other.leaf(&["127.0.0.1"]), None)).await;
    let named = https_backend(server_config(&ca.leaf(&["chat.internal"]), None)).await;
    let good = https_backend(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let silent = raw_backend(|mut s, _| async move {
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await; // reads the ClientHello, never answers
    })
    .await;
    let cfg = format!(
        "admin = \"127.0.0.1:0\"\n[timeouts]\ntls_handshake = \"300ms\"\n\
         [[listener]]\nname = \"d\"\nbind = \"127.0.0.4:0\"\nmode = \"http\"\nupstream = \"silent\"\n\
         [[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"foreign\"\n\
         [[listener]]\nname = \"b\"\nbind = \"127.0.0.2:0\"\nmode = \"http\"\nupstream = \"wrongname\"\n\
         [[listener]]\nname = \"c\"\nbind = \"127.0.0.3:0\"\nmode = \"http\"\nupstream = \"mixed\"\n\
         [[listener]]\nname = \"e\"\nbind = \"127.0.0.5:0\"\nmode = \"http\"\nupstream = \"insecure\"\n\
         {}{}{}{}{}",
        upstream_config("silent", &[silent.addr], &format!("ca_file = \"{ca_path}\"")),
        // Passive health off where the bad backend is alone: each request tries it again
        // (with it on, the second request would find no backend up: 503).
        upstream_config(
            "foreign",
            &[foreign.b.addr],
            &format!("ca_file = \"{ca_path}\"\n{NO_PASSIVE}")
        ),
        upstream_config(
            "wrongname",
            &[named.b.addr],
            &format!("ca_file = \"{ca_path}\"\nserver_name = \"other.internal\"\n{NO_PASSIVE}")
        ),
        upstream_config("mixed", &[foreign.b.addr, good.b.addr], &format!("ca_file = \"{ca_path}\"")),
        upstream_config("insecure", &[foreign.b.addr], "insecure_skip_verify = true"),
    );
    let gw = Gateway::start_config(io, &cfg);
    let _ = gw.metrics().await; // the admin listener's first scrape, before the baseline
    let base = stable_fds(&gw).await;

    let r = roundtrip(gw.addrs[0], &get("/")).await;
    assert_eq!(r.status, 502, "handshake timed out");
    for _ in 0..ROUNDS {
        let r = roundtrip(gw.addrs[1], &get("/")).await;
        assert_eq!(r.status, 502, "wrong CA");
        let r = roundtrip(gw.addrs[2], &get("/")).await;
        assert_eq!(r.status, 502, "wrong server name");
    }
    for _ in 0..4 {
        let r = roundtrip(gw.addrs[3], &get("/")).await;
        assert_eq!(r.status, 200, "retried on the good backend");
        assert!(r.body_str().starts_with("tls conn="), "{}", r.body_str());
    }
    assert!(good.b.accepts() >= 4);
    // insecure_skip_verify: the foreign certificate (and its name) is accepted.
    let r = roundtrip(gw.addrs[4], &get("/")).await;
    assert_eq!(r.status, 200, "insecure_skip_verify");
    assert!(
        foreign.b.accepts() >= 1,
        "the bad backend was tried first at least once"
    );
    let bad = ("result", "bad_certificate");
    metric_until(&gw, HANDSHAKES, &[("upstream", "foreign"), bad], |v| {
        v == ROUNDS as f64
    })
    .await;
    metric_until(&gw, HANDSHAKES, &[("upstream", "wrongname"), bad], |v| {
        v == ROUNDS as f64
    })
    .await;
    metric_until(&gw, HANDSHAKES, &[("upstream", "mixed"), bad], |v| v >= 1.0).await;
    let timeout = [("upstream", "silent"), ("result", "timeout")];
    metric_until(&gw, HANDSHAKES, &timeout, |v| v == 1.0).await;
    metric_until(
        &gw,
        "ringway_errors_total",
        &[("kind", "backend_tls_failed")],
        |v| v >= 8.0,
    )
    .await;
    // The gateway sent the alert; nothing of its side is left open.
    let after = gw.settle_fds(base).await;
    assert!(after <= base, "fds {after} > {base}");
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

/// mTLS: a backend that requires a client certificate refuses a gateway without one (502),
/// and serves one with `cert_file` + `key_file`.
async fn mtls_client_certificate(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("up-mtls");
    let ca_path = ca_file(&dir, &ca);
    let client = ca.leaf(&["gateway.internal"]);
    write_pair(&dir.path("client"), &client);
    let backend = https_backend(server_config(&ca.leaf(&["127.0.0.1"]), Some(&ca))).await;
    let cfg = format!(
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"anon\"\n\
         [[listener]]\nname = \"b\"\nbind = \"127.0.0.2:0\"\nmode = \"http\"\nupstream = \"mtls\"\n\
         {}{}",
        upstream_config("anon", &[backend.b.addr], &format!("ca_file = \"{ca_path}\"")),
        upstream_config(
            "mtls",
            &[backend.b.addr],
            &format!(
                "ca_file = \"{ca_path}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                dir.path("client/tls.crt").display(),
                dir.path("client/tls.key").display()
            )
        ),
    );
    let gw = Gateway::start_config(io, &cfg);
    let r = roundtrip(gw.addrs[0], &get("/")).await;
    assert_eq!(r.status, 502, "no client certificate");
    assert!(backend.failed.load(Ordering::SeqCst) >= 1);
    let r = roundtrip(gw.addrs[1], &get("/x")).await;
    assert_eq!(r.status, 200, "{}", gw.log());
    assert!(r.body_str().ends_with("GET /x body="), "{}", r.body_str());
}

/// `--tls-ca FILE` in the quick form: the --backend is verified by its IP.
async fn quick_form_tls_ca(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("up-quick");
    let ca_path = ca_file(&dir, &ca);
    let backend = https_backend(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let addr = backend.b.addr.to_string();
    let gw = Gateway::start(io, &["--backend", &addr, "--tls-ca", &ca_path]);
    let r = roundtrip(gw.addr, &get("/quick")).await;
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.body_str(), "tls conn=0 GET /quick body=");

    // The same gateway without --tls-ca speaks plain HTTP to the TLS port: not a 200.
    let gw = Gateway::start(io, &["--backend", &addr]);
    let r = roundtrip(gw.addr, &get("/quick")).await;
    assert_ne!(r.status, 200);
}

/// Active http probes of a TLS upstream handshake (and verify) like the data path: a backend
/// with a good certificate comes up (`start = "down"`, two good probes), one whose certificate
/// does not verify stays down (503). A tcp upstream's PROXY header goes on the TCP connection
/// before the handshake, where the backend reads it.
async fn health_probes_and_proxy_header_speak_tls(io: &'static str) {
    let ca = Ca::new();
    let other = Ca::new();
    let dir = Dir::new("up-health");
    let ca_path = ca_file(&dir, &ca);
    let good = https_backend(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let foreign = https_backend(server_config(&other.leaf(&["127.0.0.1"]), None)).await;
    let headers: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = headers.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&ca.leaf(&["127.0.0.1"]), None));
    let proxied = raw_backend(move |mut s, _| {
        let (acceptor, seen) = (acceptor.clone(), seen.clone());
        async move {
            // The PROXY v1 line, byte by byte so nothing of the ClientHello is read with it.
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") && line.len() < 108 {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_err() {
                    return;
                }
                line.push(b[0]);
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&line).into_owned());
            let Ok(t) = acceptor.accept(s).await else {
                return;
            };
            let (mut r, mut w) = tokio::io::split(t);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    })
    .await;
    let probe = "[upstream.health]\nmax_fails = 0\ncheck = \"http\"\npath = \"/health\"\n\
                 interval = \"100ms\"\ntimeout = \"2s\"\nrise = 2\nfall = 3\nstart = \"down\"";
    let cfg = format!(
        "admin = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"good\"\n\
         [[listener]]\nname = \"b\"\nbind = \"127.0.0.2:0\"\nmode = \"http\"\nupstream = \"foreign\"\n\
         [[listener]]\nname = \"c\"\nbind = \"127.0.0.3:0\"\nmode = \"tcp\"\nupstream = \"proxied\"\n\
         {}{}{}",
        upstream_config("good", &[good.b.addr], &format!("ca_file = \"{ca_path}\"\n{probe}")),
        upstream_config("foreign", &[foreign.b.addr], &format!("ca_file = \"{ca_path}\"\n{probe}")),
        upstream_config("proxied", &[proxied.addr], &format!("ca_file = \"{ca_path}\"")).replace(
            "[upstream.tls]",
            "send_proxy = \"v1\"\n[upstream.tls]"
        ),
    );
    let gw = Gateway::start_config(io, &cfg);
    metric_until(&gw, "ringway_backend_up", &[("upstream", "good")], |v| {
        v == 1.0
    })
    .await;
    // The gauge moves when the health state does; the table that places requests is rebuilt
    // from it a moment later: a few tries, then it must serve.
    let mut r = roundtrip(gw.addrs[0], &get("/")).await;
    for _ in 0..20 {
        if r.status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        r = roundtrip(gw.addrs[0], &get("/")).await;
    }
    assert_eq!(r.status, 200, "{}", gw.log());
    // Both backends see the probes' connections (and the good one the request's). The two
    // upstreams are probed on their own schedules, 100 ms apart: the foreign backend's second
    // probe may still be on its way when the good one came up and served, so wait for it.
    accepted_at_least(&good.b, 2, "probes and the request").await;
    accepted_at_least(&foreign.b, 2, "probed").await;
    metric_until(&gw, "ringway_backend_up", &[("upstream", "foreign")], |v| {
        v == 0.0
    })
    .await;
    let r = roundtrip(gw.addrs[1], &get("/")).await;
    assert_eq!(r.status, 503, "its only backend is down by health");
    // Probes go on every 100 ms: the last one accepted may still be mid-handshake.
    let (failed, accepted) = (foreign.failed.load(Ordering::SeqCst), foreign.b.accepts());
    assert!(
        failed >= 2 && failed + 1 >= accepted,
        "every probe of the foreign backend fails its handshake: {failed} of {accepted}"
    );

    let mut c = TcpStream::connect(gw.addrs[2]).await.unwrap();
    tcp_echo_rounds(&mut c).await;
    let seen = headers.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].starts_with("PROXY TCP4 127.0.0.1 127.0.0.3 "),
        "{seen:?}"
    );
}

/// DNS discovery: each backend is greeted (SNI) and verified by its own DNS name; a pod whose
/// certificate is for another name is refused (502) while its neighbour serves. `alpn` is
/// offered as configured.
async fn dns_backends_are_verified_by_their_name(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("up-dns");
    let ca_path = ca_file(&dir, &ca);
    let names: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    // Records the SNI of each ClientHello, then serves one response with `leaf`.
    let record = |leaf: Leaf| {
        let names = names.clone();
        let config = server_config(&leaf, None);
        move |s: TcpStream, _| {
            let (config, names) = (config.clone(), names.clone());
            async move {
                let start = tokio_rustls::LazyConfigAcceptor::new(Default::default(), s);
                let Ok(start) = start.await else { return };
                let hello = start.client_hello();
                let alpn: Vec<String> = hello
                    .alpn()
                    .map(|a| a.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    .unwrap_or_default();
                let sni = hello.server_name().unwrap_or("-").to_string();
                names
                    .lock()
                    .unwrap()
                    .push(format!("{sni} alpn={}", alpn.join(",")));
                let Ok(mut t) = start.into_stream(config).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = t.read(&mut buf).await;
                let body = "pod";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = t.write_all(resp.as_bytes()).await;
                let _ = t.shutdown().await;
            }
        }
    };
    let pod0 = raw_backend(record(ca.leaf(&["pod-0.chat.tls.test"]))).await;
    // pod-1's certificate names pod-0: valid chain, wrong name.
    let pod1 = raw_backend(record(ca.leaf(&["pod-0.chat.tls.test"]))).await;
    let server = dns::DnsServer::start().await;
    server.set_a("pod-0.chat.tls.test", &["127.0.0.1"], 30);
    server.set_a("pod-1.chat.tls.test", &["127.0.0.1"], 30);
    let cfg = format!(
        "admin = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"pod0\"\n\
         [[listener]]\nname = \"b\"\nbind = \"127.0.0.2:0\"\nmode = \"http\"\nupstream = \"pod1\"\n\
         [[upstream]]\nname = \"pod0\"\ndns = [\"pod-0.chat.tls.test:{}\"]\n\
         [upstream.discovery]\nresolver = \"{dns}\"\n[upstream.tls]\nca_file = \"{ca_path}\"\nalpn = [\"http/1.1\"]\n\
         [[upstream]]\nname = \"pod1\"\ndns = [\"pod-1.chat.tls.test:{}\"]\n\
         [upstream.discovery]\nresolver = \"{dns}\"\n[upstream.tls]\nca_file = \"{ca_path}\"\n",
        pod0.addr.port(),
        pod1.addr.port(),
        dns = server.addr,
    );
    let gw = Gateway::start_config(io, &cfg);
    metric_until(&gw, "ringway_upstream_up", &[("upstream", "pod0")], |v| {
        v == 1.0
    })
    .await;
    metric_until(&gw, "ringway_upstream_up", &[("upstream", "pod1")], |v| {
        v == 1.0
    })
    .await;
    let r = roundtrip(gw.addrs[0], &get("/")).await;
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.body_str(), "pod");
    let r = roundtrip(gw.addrs[1], &get("/")).await;
    assert_eq!(r.status, 502, "pod-1 presents pod-0's certificate");
    let mut seen = names.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            "pod-0.chat.tls.test alpn=http/1.1",
            "pod-1.chat.tls.test alpn="
        ],
        "SNI per backend, ALPN as configured"
    );
    let bad = [("upstream", "pod1"), ("result", "bad_certificate")];
    metric_until(&gw, HANDSHAKES, &bad, |v| v == 1.0).await;
}

/// More bytes both ways than every socket buffer on the path holds, through an echo backend
/// that stops reading while it cannot write (tokio's `copy`, like HAProxy in front of an echo
/// server): the gateway must keep reading the backend while its writes to it wait. (Reading
/// the backend used to wait for the session's queued records to be written first: both
/// directions then waited on the backend's window, which never opened.)
async fn bulk_both_ways_through_a_tls_backend_does_not_deadlock(io: &'static str) {
    let ca = Ca::new();
    let dir = Dir::new("up-bulk");
    let echo = tls_echo_backend(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let plain_echo = raw_backend(|s, _| async move {
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await;
    let front = ca.leaf(&["chat.test"]);
    write_pair(&dir.path("front"), &front);
    let cert = format!(
        "[listener.tls]\n[[listener.tls.certificate]]\ndir = \"{}\"\n",
        dir.path("front").display()
    );
    let cfg = format!(
        "[[listener]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nupstream = \"echo\"\n\
         [[listener]]\nname = \"raws\"\nbind = \"127.0.0.2:0\"\nmode = \"tcp\"\nupstream = \"echo\"\n{cert}\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.3:0\"\nmode = \"tcp\"\nupstream = \"plain\"\n{cert}\
         {}\
         [[upstream]]\nname = \"plain\"\nbackends = [{{ name = \"p0\", address = \"{}\" }}]\n",
        upstream_config("echo", &[echo.b.addr], &format!("ca_file = \"{}\"", ca_file(&dir, &ca))),
        plain_echo.addr,
    );
    let gw = Gateway::start_config(io, &cfg);
    // plain client × TLS backend
    let mut c = TcpStream::connect(gw.addrs[0]).await.unwrap();
    tcp_echo_bulk(&mut c, BULK).await;
    // TLS client × TLS backend
    let mut c = within(
        "handshake",
        connect(gw.addrs[1], ca.client(&[]), "chat.test"),
    )
    .await
    .unwrap();
    tcp_echo_bulk(&mut c, BULK).await;
    // TLS client × plain backend (the terminating listener's tunnel has the same pumps)
    let mut c = within(
        "handshake",
        connect(gw.addrs[2], ca.client(&[]), "chat.test"),
    )
    .await
    .unwrap();
    tcp_echo_bulk(&mut c, BULK).await;
}

/// A reload re-reads `ca_file`: a garbled one refuses the reload (the old trust keeps serving);
/// another CA is used at once, and sessions from before do not get around it by resuming; a
/// reload that changes nothing of the trust keeps the sessions.
async fn reload_rereads_the_ca_and_forgets_sessions_it_no_longer_trusts(io: &'static str) {
    let ca = Ca::new();
    let other = Ca::new();
    let dir = Dir::new("up-reload");
    let ca_path = ca_file(&dir, &ca);
    let backend = https_backend(server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let verified = format!("ca_file = \"{ca_path}\"\n{NO_PASSIVE}");
    let cfg = format!(
        "admin = \"127.0.0.1:0\"\n{}{}",
        http_listener("app"),
        upstream_config("app", &[backend.b.addr], &verified)
    );
    let gw = Gateway::start_config(io, &cfg);
    for _ in 0..3 {
        assert_eq!(roundtrip(gw.addr, &get("/")).await.status, 200);
    }
    metric_until(&gw, HANDSHAKES, &[("result", "resumed")], |v| v == 2.0).await;

    // A reload that changes nothing of the trust keeps the sessions: the next one resumes.
    assert_eq!(post_reload(&gw).await, 200, "{}", gw.log());
    assert_eq!(roundtrip(gw.addr, &get("/")).await.status, 200);
    metric_until(&gw, HANDSHAKES, &[("result", "resumed")], |v| v == 3.0).await;
    metric_until(&gw, HANDSHAKES, &[("result", "ok")], |v| v == 1.0).await;

    std::fs::write(&ca_path, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    assert_eq!(
        post_reload(&gw).await,
        500,
        "a garbled CA refuses the reload"
    );
    gw.log_until("upstream[app].tls.ca_file").await;
    assert_eq!(
        roundtrip(gw.addr, &get("/")).await.status,
        200,
        "the old trust serves"
    );

    // Another CA: the backend's sessions from before must not resume past it.
    std::fs::write(&ca_path, &other.pem).unwrap();
    assert_eq!(post_reload(&gw).await, 200, "{}", gw.log());
    for _ in 0..3 {
        assert_eq!(
            roundtrip(gw.addr, &get("/")).await.status,
            502,
            "not trusted any more"
        );
    }

    // The right CA again.
    std::fs::write(&ca_path, &ca.pem).unwrap();
    assert_eq!(post_reload(&gw).await, 200, "{}", gw.log());
    assert_eq!(roundtrip(gw.addr, &get("/")).await.status, 200);
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

/// Bytes each way in the bulk test: more than loopback's socket buffers along the path.
const BULK: u32 = 32 << 20;

// ------------------------------------------------------------------------------------------------
// `ringway check`: bad files are field-named errors, exit 64.

/// Runs `ringway check --config` on `toml` (bounded); (exit code, stderr + stdout).
fn check(dir: &Dir, toml: &str) -> (Option<i32>, String) {
    let path = dir.path("check.toml");
    std::fs::write(&path, toml).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringway check did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut out);
    let _ = std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out);
    (status.code(), strip_ansi(&out))
}

fn check_upstream(dir: &Dir, tls: &str) -> (Option<i32>, String) {
    let toml = format!(
        "admin = \"\"\n{}{}",
        http_listener("app"),
        upstream_config("app", &["127.0.0.1:9".parse().unwrap()], tls)
    );
    check(dir, &toml)
}

fn assert_refused(r: (Option<i32>, String), field: &str, says: &str) {
    assert_eq!(r.0, Some(64), "{}", r.1);
    assert!(r.1.contains(field), "expected {field}: {}", r.1);
    assert!(r.1.contains(says), "expected `{says}`: {}", r.1);
}

#[test]
fn check_reports_bad_upstream_tls_files() {
    let ca = Ca::new();
    let dir = Dir::new("up-check");
    let ca_path = ca_file(&dir, &ca);
    write_pair(&dir.path("client"), &ca.leaf(&["gateway.internal"]));
    let other = ca.leaf(&["other.internal"]);
    std::fs::write(dir.path("other.key"), &other.key_pem).unwrap();
    std::fs::write(
        dir.path("garbled.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!\n",
    )
    .unwrap();
    std::fs::write(dir.path("empty.pem"), "nothing here\n").unwrap();
    let client = |cert: &Path, key: &Path| {
        format!(
            "ca_file = \"{ca_path}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            cert.display(),
            key.display()
        )
    };

    let ok = check_upstream(
        &dir,
        &client(&dir.path("client/tls.crt"), &dir.path("client/tls.key")),
    );
    assert_eq!(ok.0, Some(0), "{}", ok.1);
    assert!(
        ok.1.contains("tls: ca_file"),
        "check describes it: {}",
        ok.1
    );

    let missing = dir.path("missing.pem").display().to_string();
    let field = "upstream[app].tls";
    assert_refused(
        check_upstream(&dir, &format!("ca_file = \"{missing}\"")),
        &format!("{field}.ca_file"),
        "cannot read",
    );
    assert_refused(
        check_upstream(
            &dir,
            &format!("ca_file = \"{}\"", dir.path("garbled.pem").display()),
        ),
        &format!("{field}.ca_file"),
        "garbled.pem",
    );
    assert_refused(
        check_upstream(
            &dir,
            &format!("ca_file = \"{}\"", dir.path("empty.pem").display()),
        ),
        &format!("{field}.ca_file"),
        "no PEM CERTIFICATE",
    );
    assert_refused(
        check_upstream(
            &dir,
            &client(&dir.path("client/tls.crt"), &dir.path("other.key")),
        ),
        &format!("{field}.cert_file"),
        "does not belong",
    );
    assert_refused(
        check_upstream(
            &dir,
            &client(&dir.path("missing.crt"), &dir.path("client/tls.key")),
        ),
        &format!("{field}.cert_file"),
        "cannot read",
    );
    // Shape errors, before any file is read.
    assert_refused(
        check_upstream(&dir, ""),
        &format!("{field}.ca_file"),
        "missing",
    );
    assert_refused(
        check_upstream(
            &dir,
            &format!(
                "ca_file = \"{ca_path}\"\ncert_file = \"{}\"",
                dir.path("client/tls.crt").display()
            ),
        ),
        &format!("{field}.key_file"),
        "missing",
    );
    assert_refused(
        check_upstream(
            &dir,
            &format!("ca_file = \"{ca_path}\"\ninsecure_skip_verify = true"),
        ),
        &format!("{field}.insecure_skip_verify"),
        "cannot be combined",
    );
    assert_refused(
        check_upstream(
            &dir,
            &format!("ca_file = \"{ca_path}\"\nserver_name = \"a b\""),
        ),
        &format!("{field}.server_name"),
        "not a DNS name",
    );
    assert_refused(
        check_upstream(&dir, &format!("ca_file = \"{ca_path}\"\nverify = false")),
        "verify",
        "unknown field",
    );
    // insecure_skip_verify is accepted, and `check` says so loudly.
    let insecure = check_upstream(&dir, "insecure_skip_verify = true");
    assert_eq!(insecure.0, Some(0), "{}", insecure.1);
    assert!(insecure.1.contains("INSECURE"), "{}", insecure.1);
}
