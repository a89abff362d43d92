//! Trust boundaries of the PROXY protocol and admission, against the real binary (issue 11,
//! items 3 and 4; issue 10, item 6): `proxy_protocol_from`, per-source limits on the carried
//! address, the pending-header guard, and refusals a client can read.

#[macro_use]
#[path = "common/both_io.rs"]
mod both_io;
#[path = "common/ops_harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use harness::{parse_response, temp_dir, Gateway, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// An http backend answering every request with the `X-Forwarded-For` it received (or `-`),
/// keep-alive; counts the connections it accepted.
struct XffBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
}

async fn xff_backend() -> XffBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let count = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let xff = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("x-forwarded-for")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_else(|| "-".into());
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{xff}",
                        xff.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    XffBackend { addr, accepts }
}

/// A tcp echo backend that counts its connections.
async fn echo_backend() -> XffBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let count = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    XffBackend { addr, accepts }
}

fn start(io: &str, tag: &str, text: &str) -> Gateway {
    let path = temp_dir(&format!("{tag}-{io}")).join("ringway.toml");
    std::fs::write(&path, text).unwrap();
    Gateway::start(&["--config", path.to_str().unwrap(), "--io", io])
}

fn config(mode: &str, backend: SocketAddr, listener: &str, top: &str) -> String {
    format!(
        "workers = 1\nadmin = \"127.0.0.1:0\"\n{top}\n\
         [[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\nmode = \"{mode}\"\nupstream = \"u\"\n{listener}\n\
         [[upstream]]\nname = \"u\"\nbackends = [{{ name = \"u0\", address = \"{backend}\" }}]\n"
    )
}

async fn connect_from(gw: SocketAddr, source: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(STEP, sock.connect(gw))
        .await
        .expect("connect in time")
        .expect("connect")
}

fn proxy_v1(src: &str) -> String {
    format!("PROXY TCP4 {src} 10.0.0.1 5555 80\r\n")
}

const GET: &str = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// Sends `bytes` and reads one response (status, body) from a keep-alive connection.
async fn exchange(s: &mut TcpStream, bytes: &[u8]) -> Option<(u16, String)> {
    s.write_all(bytes).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(STEP, async {
        loop {
            if let Some((status, _, body)) = parse_response(&buf) {
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let len = String::from_utf8_lossy(&buf[..end])
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + len {
                    return Some((status, body));
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return parse_response(&buf).map(|(st, _, b)| (st, b)),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("an answer or a close in time")
}

/// Reads until the gateway closes; `Err` is a reset (or another read error).
async fn read_to_close(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut buf))
        .await
        .expect("closed in time")?;
    Ok(buf)
}

async fn http_proxy_header_is_believed_only_from_the_listed_peers(io: &'static str) {
    let be = xff_backend().await;
    let gw = start(
        io,
        "pp-http",
        &config(
            "http",
            be.addr,
            "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.2/32\", \"10.0.0.0/8\"]",
            "",
        ),
    );
    // The load balancer (127.0.0.2): the carried address is the client.
    let mut lb = connect_from(gw.listen, "127.0.0.2").await;
    let req = format!("{}{GET}", proxy_v1("203.0.113.7"));
    assert_eq!(
        exchange(&mut lb, req.as_bytes()).await,
        Some((200, "203.0.113.7".into()))
    );
    // A direct client (127.0.0.1) without a header: served with its own address.
    let mut direct = connect_from(gw.listen, "127.0.0.1").await;
    assert_eq!(
        exchange(&mut direct, GET.as_bytes()).await,
        Some((200, "127.0.0.1".into()))
    );
    let accepts = be.accepts.load(Ordering::SeqCst);
    // A direct client claiming another address with a PROXY header: 400, never forwarded.
    for header in [proxy_v1("198.51.100.9"), "PROXY garbage\r\n".to_string()] {
        let mut spoof = connect_from(gw.listen, "127.0.0.1").await;
        spoof
            .write_all(format!("{header}{GET}").as_bytes())
            .await
            .unwrap();
        let got = read_to_close(&mut spoof).await.expect("a clean close");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    }
    // A listed peer without a header is refused, as before.
    let mut bare = connect_from(gw.listen, "127.0.0.2").await;
    bare.write_all(GET.as_bytes()).await.unwrap();
    let got = read_to_close(&mut bare).await.expect("a clean close");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 400 "));
    assert_eq!(
        be.accepts.load(Ordering::SeqCst),
        accepts,
        "a refused connection reached the backend"
    );
    let s = gw
        .metrics_until("the spoofs counted", |s| {
            s.sum("ringway_errors_total", &[("kind", "proxy_untrusted")]) == 2.0
        })
        .await;
    assert_eq!(
        s.sum("ringway_errors_total", &[("kind", "proxy_protocol")]),
        1.0,
        "{}",
        s.text
    );
    assert!(
        !gw.log_text()
            .contains("trusts a PROXY header from any peer"),
        "no warning when proxy_protocol_from is set"
    );
}

async fn tcp_proxy_header_from_elsewhere_is_closed_and_direct_clients_are_served(io: &'static str) {
    let be = echo_backend().await;
    let gw = start(
        io,
        "pp-tcp",
        &config(
            "tcp",
            be.addr,
            "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.2\"]",
            "",
        ),
    );
    // Direct client: its bytes reach the backend untouched.
    let mut direct = connect_from(gw.listen, "127.0.0.1").await;
    direct.write_all(b"hello device").await.unwrap();
    let mut got = [0u8; 12];
    tokio::time::timeout(STEP, direct.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"hello device");
    // Through the load balancer: the header is consumed, the rest tunnelled.
    let mut lb = connect_from(gw.listen, "127.0.0.2").await;
    lb.write_all(format!("{}via lb", proxy_v1("192.0.2.4")).as_bytes())
        .await
        .unwrap();
    let mut got = [0u8; 6];
    tokio::time::timeout(STEP, lb.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"via lb");
    assert_eq!(be.accepts.load(Ordering::SeqCst), 2);
    // A direct client sending a PROXY header: closed without a byte, never forwarded.
    let mut spoof = connect_from(gw.listen, "127.0.0.1").await;
    spoof
        .write_all(format!("{}payload", proxy_v1("198.51.100.9")).as_bytes())
        .await
        .unwrap();
    let got = read_to_close(&mut spoof).await.unwrap_or_default();
    assert!(got.is_empty(), "tcp refusal sent bytes: {got:?}");
    assert_eq!(be.accepts.load(Ordering::SeqCst), 2);
    gw.metrics_until("the spoof counted", |s| {
        s.sum("ringway_errors_total", &[("kind", "proxy_untrusted")]) == 1.0
    })
    .await;
}

async fn trusting_every_peer_warns_once_at_start(io: &'static str) {
    let be = xff_backend().await;
    let gw = start(
        io,
        "pp-warn",
        &config("http", be.addr, "proxy_protocol = true", ""),
    );
    // Today's behaviour: any peer's header is believed.
    let mut c = connect_from(gw.listen, "127.0.0.1").await;
    let req = format!("{}{GET}", proxy_v1("203.0.113.50"));
    assert_eq!(
        exchange(&mut c, req.as_bytes()).await,
        Some((200, "203.0.113.50".into()))
    );
    let log = gw.log_text();
    assert_eq!(
        log.matches("trusts a PROXY header from any peer").count(),
        1,
        "{log}"
    );
}

async fn per_source_limits_count_the_carried_address_not_the_load_balancer(io: &'static str) {
    let be = xff_backend().await;
    let gw = start(
        io,
        "pp-admit",
        &config(
            "http",
            be.addr,
            "proxy_protocol = true",
            "[limits]\nmax_connections_per_source = 2",
        ),
    );
    // Two connections of client 203.0.113.7 through the load balancer, kept open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from(gw.listen, "127.0.0.1").await;
        let req = format!("{}{GET}", proxy_v1("203.0.113.7"));
        assert_eq!(
            exchange(&mut c, req.as_bytes()).await,
            Some((200, "203.0.113.7".into()))
        );
        held.push(c);
    }
    // Its third is over its own limit: 429 naming the limit, read cleanly.
    let mut third = connect_from(gw.listen, "127.0.0.1").await;
    third
        .write_all(format!("{}{GET}", proxy_v1("203.0.113.7")).as_bytes())
        .await
        .unwrap();
    let got = read_to_close(&mut third).await.expect("no reset");
    let (status, _, body) = parse_response(&got).expect("a response");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("limits.max_connections_per_source"), "{body}");
    // Other clients behind the same load balancer are unaffected.
    for client in ["203.0.113.8", "203.0.113.9"] {
        let mut c = connect_from(gw.listen, "127.0.0.1").await;
        let req = format!("{}{GET}", proxy_v1(client));
        assert_eq!(
            exchange(&mut c, req.as_bytes()).await,
            Some((200, client.to_string()))
        );
        held.push(c);
    }
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_errors_total", &[("kind", "limit_source")]),
        1.0,
        "{}",
        s.text
    );
}

async fn half_sent_proxy_headers_hold_a_bounded_number_of_connections(io: &'static str) {
    let be = xff_backend().await;
    let gw = start(
        io,
        "pp-pending",
        &config(
            "http",
            be.addr,
            "proxy_protocol = true",
            "[limits]\nproxy_pending_per_peer = 3\n[timeouts]\nhead = \"2s\"",
        ),
    );
    // Three connections from one peer stall in the middle of their header.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut c = connect_from(gw.listen, "127.0.0.1").await;
        c.write_all(b"PROXY TCP4 203.0").await.unwrap();
        stalled.push(c);
    }
    // The fourth from that peer is refused at once, with a status naming the limit.
    let mut fourth = connect_from(gw.listen, "127.0.0.1").await;
    let got = read_to_close(&mut fourth).await.expect("no reset");
    let (status, _, body) = parse_response(&got).expect("a response");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("limits.proxy_pending_per_peer"), "{body}");
    // Another peer is unaffected.
    let mut other = connect_from(gw.listen, "127.0.0.3").await;
    let req = format!("{}{GET}", proxy_v1("203.0.113.70"));
    assert_eq!(
        exchange(&mut other, req.as_bytes()).await,
        Some((200, "203.0.113.70".into()))
    );
    // The head timeout ends the stalled ones (400: no valid header in time)...
    for c in stalled.iter_mut() {
        let got = read_to_close(c).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400 "),
            "{text}"
        );
    }
    // ...and gives their slots back once closed (polled: the gateway sees our close after a
    // scheduling round or two; the poll count only bounds the wait).
    drop(stalled);
    let mut answer = None;
    for _ in 0..100 {
        let mut again = connect_from(gw.listen, "127.0.0.1").await;
        let req = format!("{}{GET}", proxy_v1("203.0.113.71"));
        answer = exchange(&mut again, req.as_bytes()).await;
        if answer.as_ref().is_some_and(|(st, _)| *st == 200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answer, Some((200, "203.0.113.71".into())));
    let s = gw.metrics().await;
    assert!(
        s.sum("ringway_errors_total", &[("kind", "limit_proxy_pending")]) >= 1.0,
        "{}",
        s.text
    );
}

/// A client over a limit that already sent its whole request (with a body) reads the status
/// and a clean close, not a reset.
async fn refused_after_a_whole_request(io: &str, limits: &str, status: u16, names: &str) {
    let be = xff_backend().await;
    let gw = start(
        io,
        "refused",
        &config("http", be.addr, "", &format!("[limits]\n{limits}")),
    );
    // One connection admitted and held.
    let mut held = connect_from(gw.listen, "127.0.0.1").await;
    assert_eq!(
        exchange(&mut held, GET.as_bytes()).await,
        Some((200, "127.0.0.1".into()))
    );
    let body = vec![b'x'; 32 * 1024];
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    // The head and half the body at once; the rest a moment later, after the gateway has
    // answered (a gateway that closed at once would make these bytes draw a reset).
    let mut refused = connect_from(gw.listen, "127.0.0.1").await;
    let half = req.len() - body.len() / 2;
    refused
        .write_all(&req[..half])
        .await
        .expect("the head sent");
    let mut first = [0u8; 1];
    tokio::time::timeout(STEP, refused.peek(&mut first))
        .await
        .expect("an answer in time")
        .expect("an answer");
    refused
        .write_all(&req[half..])
        .await
        .expect("the whole request sent");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let got = read_to_close(&mut refused)
        .await
        .expect("the status, then a clean close (no ECONNRESET)");
    let (got_status, _, text) = parse_response(&got).expect("a response");
    assert_eq!(got_status, status, "{text}");
    assert!(text.contains(names), "{text}");
    assert!(!text.contains("no backend"), "{text}");
}

async fn per_source_count_refusal_is_a_readable_429(io: &'static str) {
    refused_after_a_whole_request(
        io,
        "max_connections_per_source = 1",
        429,
        "limits.max_connections_per_source",
    )
    .await;
}

async fn global_refusal_is_a_readable_503(io: &'static str) {
    refused_after_a_whole_request(io, "max_connections = 1", 503, "limits.max_connections").await;
}

async fn rate_refusal_is_a_readable_429(io: &'static str) {
    refused_after_a_whole_request(
        io,
        "source_rate = 0.01\nsource_burst = 1",
        429,
        "limits.source_rate",
    )
    .await;
}

both_io!(
    http_proxy_header_is_believed_only_from_the_listed_peers,
    tcp_proxy_header_from_elsewhere_is_closed_and_direct_clients_are_served,
    trusting_every_peer_warns_once_at_start,
    per_source_limits_count_the_carried_address_not_the_load_balancer,
    half_sent_proxy_headers_hold_a_bounded_number_of_connections,
    per_source_count_refusal_is_a_readable_429,
    global_refusal_is_a_readable_503,
    rate_refusal_is_a_readable_429,
);
