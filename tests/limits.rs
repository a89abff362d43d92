//! `[limits]` against the real binary: the status a client over each limit gets, tcp mode's
//! immediate close, and the counters in /metrics.

#[path = "common/ops_harness.rs"]
mod harness;

use std::net::SocketAddr;

use harness::{temp_dir, Gateway, Ws, STEP};
use loadgen::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config(mode: &str, backend: SocketAddr, limits: &str) -> String {
    format!(
        "workers = 2\nadmin = \"127.0.0.1:0\"\n[limits]\n{limits}\n\
         [[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\nmode = \"{mode}\"\nupstream = \"u\"\n\
         [[upstream]]\nname = \"u\"\nbackends = [{{ name = \"u0\", address = \"{backend}\" }}]\n"
    )
}

fn start(tag: &str, text: &str) -> Gateway {
    let dir = temp_dir(tag);
    let path = dir.join("ringway.toml");
    std::fs::write(&path, text).unwrap();
    Gateway::start(&["--config", path.to_str().unwrap()])
}

/// Connects from `source` (any 127/8 address works on loopback) and reads what the gateway
/// says without sending anything: a refused client gets its status and a close.
async fn refused_status(gw: SocketAddr, source: &str) -> Option<u16> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(gw).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut buf))
        .await
        .expect("closed at once")
        .ok()?;
    harness::parse_response(&buf).map(|(status, _, _)| status)
}

async fn ws_from(gw: SocketAddr, source: &str) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{source}:0").parse().unwrap())?;
    let mut s = sock.connect(gw).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await?;
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await?;
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_gives_the_extra_http_client_503() {
    let b = loadgen::spawn_backend(Mode::Ws, "u0").await.unwrap();
    let gw = start(
        "limit-total",
        &config("http", b.addr, "max_connections = 3"),
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
        ws.echo(b"in").await.unwrap();
        held.push(ws);
    }
    assert_eq!(refused_status(gw.listen, "127.0.0.1").await, Some(503));
    let s = gw.metrics().await;
    assert_eq!(
        s.sum(
            "ringway_connections_rejected_total",
            &[("listener", "edge")]
        ),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(
        s.sum(
            "ringway_errors_total",
            &[("kind", "limit_connections"), ("side", "client")]
        ),
        1.0
    );
    // Held tunnels are untouched; closing one makes room again.
    for ws in held.iter_mut() {
        ws.echo(b"still here").await.unwrap();
    }
    held.pop().unwrap().finish().await.unwrap();
    gw.metrics_until("room again", |s| {
        s.sum("ringway_connections_active", &[("listener", "edge")]) == 2.0
    })
    .await;
    let mut again = Ws::connect(gw.listen, &[]).await.unwrap();
    again.echo(b"admitted").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_cap_refuses_only_that_source() {
    let b = loadgen::spawn_backend(Mode::Ws, "u0").await.unwrap();
    let gw = start(
        "limit-source",
        &config("http", b.addr, "max_connections_per_source = 2"),
    );
    let _one = ws_from(gw.listen, "127.0.0.2").await.unwrap();
    let _two = ws_from(gw.listen, "127.0.0.2").await.unwrap();
    assert_eq!(refused_status(gw.listen, "127.0.0.2").await, Some(429));
    // Another source is still admitted.
    let _other = ws_from(gw.listen, "127.0.0.3").await.unwrap();
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_errors_total", &[("kind", "limit_source")]),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(
        s.sum(
            "ringway_connections_rejected_total",
            &[("listener", "edge")]
        ),
        1.0
    );
    assert_eq!(
        s.sum("ringway_connections_active", &[("listener", "edge")]),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_rate_gives_429() {
    let b = loadgen::spawn_backend(Mode::Ws, "u0").await.unwrap();
    // A bucket of 2 refilled once per 100 s: the third connection is over the rate.
    let gw = start(
        "limit-rate",
        &config("http", b.addr, "source_rate = 0.01\nsource_burst = 2"),
    );
    for _ in 0..2 {
        let (status, _, _) = harness::http_get(gw.listen, "/").await.unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(refused_status(gw.listen, "127.0.0.1").await, Some(429));
    let s = gw.metrics().await;
    assert_eq!(
        s.sum(
            "ringway_errors_total",
            &[("kind", "limit_rate"), ("side", "client")]
        ),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(
        s.sum(
            "ringway_connections_rejected_total",
            &[("listener", "edge")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_over_the_limit_is_closed_at_once() {
    let b = loadgen::spawn_backend(Mode::Tcp, "u0").await.unwrap();
    let gw = start("limit-tcp", &config("tcp", b.addr, "max_connections = 1"));
    let mut first = TcpStream::connect(gw.listen).await.unwrap();
    first.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(STEP, first.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    // Over the limit: closed without a byte (no status line in tcp mode).
    let mut second = TcpStream::connect(gw.listen).await.unwrap();
    let mut got = Vec::new();
    // EOF or a reset both mean closed; the timeout is the failure.
    let _ = tokio::time::timeout(STEP, second.read_to_end(&mut got))
        .await
        .expect("closed at once");
    assert!(got.is_empty(), "tcp refusal sent bytes: {got:?}");
    let s = gw.metrics().await;
    assert_eq!(
        s.sum(
            "ringway_connections_rejected_total",
            &[("listener", "edge")]
        ),
        1.0,
        "{}",
        s.text
    );
    assert_eq!(
        s.sum("ringway_errors_total", &[("kind", "limit_connections")]),
        1.0
    );
    // The admitted connection still works.
    first.write_all(b"pong").await.unwrap();
    tokio::time::timeout(STEP, first.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");
}
