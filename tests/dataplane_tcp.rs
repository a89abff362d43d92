//! tcp mode (L4) and the PROXY protocol through the real gateway, against hand-written backends.
//! Both io backends.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo_backend() -> Backend {
    raw_backend(|mut s, _| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

fn tcp_gateway(io: &str, backends: &str, extra: &[&str]) -> Gateway {
    let mut args = vec!["--mode", "tcp", "--backend", backends];
    args.extend_from_slice(extra);
    Gateway::start(io, &args)
}

/// Random payloads of many sizes, each on its own connection, written while reading back.
async fn echo_random(io: &'static str) {
    use rand::{Rng, SeedableRng};
    let be = echo_backend().await;
    let gw = tcp_gateway(io, &be.addr.to_string(), &[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut sizes: Vec<usize> = vec![
        0,
        1,
        2,
        63,
        64,
        65,
        4095,
        4096,
        4097,
        65535,
        65536,
        65537,
        1 << 20,
        3 << 20,
    ];
    for _ in 0..30 {
        sizes.push(rng.gen_range(0..300_000));
    }
    let mut tasks = Vec::new();
    for (i, n) in sizes.into_iter().enumerate() {
        let addr = gw.addr;
        let data = pseudo_bytes(i as u64 + 1000, n);
        tasks.push(tokio::spawn(async move {
            let s = within("connect", tokio::net::TcpStream::connect(addr))
                .await
                .unwrap();
            let (mut r, mut w) = s.into_split();
            let d2 = data.clone();
            let writer = tokio::spawn(async move {
                // uneven writes
                let mut off = 0;
                let mut step = 1;
                while off < d2.len() {
                    let end = (off + step).min(d2.len());
                    w.write_all(&d2[off..end]).await.unwrap();
                    off = end;
                    step = (step * 7 + 13) % 70_000 + 1;
                }
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::with_capacity(n);
            within("echo back", r.read_to_end(&mut got)).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), data.len(), "payload {i}: length");
            assert_eq!(fnv(&got), fnv(&data), "payload {i} ({n} B): checksum");
        }));
    }
    for t in tasks {
        t.await.expect("echo task");
    }
}

/// Client FIN first: the backend sees EOF and can still answer; then backend FIN.
async fn half_close_client_first(io: &'static str) {
    let be = raw_backend(|mut s, _| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(b"after EOF: ").await.unwrap();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let gw = tcp_gateway(io, &be.addr.to_string(), &[]);
    let mut c = Conn::connect(gw.addr).await;
    c.send(b"device says hi").await;
    c.s.shutdown().await.unwrap();
    let got = within("read", c.read_to_end()).await.unwrap();
    assert_eq!(got, b"after EOF: device says hi");
}

/// Backend FIN first: the client sees EOF and can still send; the backend gets it.
async fn half_close_backend_first(io: &'static str) {
    let store: Arc<Mutex<Option<Vec<u8>>>> = Default::default();
    let st = store.clone();
    let be = raw_backend(move |mut s, _| {
        let st = st.clone();
        async move {
            s.write_all(b"server done").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            *st.lock().unwrap() = Some(got);
        }
    })
    .await;
    let gw = tcp_gateway(io, &be.addr.to_string(), &[]);
    let mut c = Conn::connect(gw.addr).await;
    let got = within("read", c.read_to_end()).await.unwrap();
    assert_eq!(got, b"server done");
    c.send(b"still sending after your FIN").await;
    c.s.shutdown().await.unwrap();
    let mut got = None;
    for _ in 0..100 {
        got = store.lock().unwrap().clone();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.as_deref(), Some(&b"still sending after your FIN"[..]));
}

/// Backend dies mid-tunnel (FIN and RST): the client sees the close.
async fn backend_dies(io: &'static str) {
    let be = raw_backend(|mut s, n| async move {
        let mut tmp = [0u8; 16];
        let _ = s.read(&mut tmp).await;
        if n % 2 == 1 {
            set_rst_on_close(&s);
        }
        drop(s);
    })
    .await;
    let gw = tcp_gateway(io, &be.addr.to_string(), &[]);
    for round in 0..4 {
        let mut c = Conn::connect(gw.addr).await;
        c.send(b"x").await;
        let got = within("close", c.read_to_end())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(got.is_empty());
    }
}

/// Client dies mid-tunnel with a RST: the backend sees the close.
async fn client_resets(io: &'static str) {
    let closed: Arc<Mutex<usize>> = Default::default();
    let cl = closed.clone();
    let be = raw_backend(move |mut s, _| {
        let cl = cl.clone();
        async move {
            let mut tmp = [0u8; 1024];
            loop {
                match s.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            *cl.lock().unwrap() += 1;
        }
    })
    .await;
    let gw = tcp_gateway(io, &be.addr.to_string(), &[]);
    for _ in 0..4 {
        let mut c = Conn::connect(gw.addr).await;
        c.send(b"hello").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        set_rst_on_close(&c.s);
        drop(c);
    }
    let mut n = 0;
    for _ in 0..100 {
        n = *closed.lock().unwrap();
        if n == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 4, "backend connections not closed after client resets");
}

/// Connect retry in tcp mode: the refused backend is skipped, every connection is served.
async fn connect_retry(io: &'static str) {
    let be = echo_backend().await;
    let gw = tcp_gateway(io, &format!("{},{}", closed_port(), be.addr), &[]);
    for i in 0..10 {
        let mut c = Conn::connect(gw.addr).await;
        c.send(format!("ping {i}").as_bytes()).await;
        c.s.shutdown().await.unwrap();
        assert_eq!(
            c.read_to_end().await.unwrap(),
            format!("ping {i}").as_bytes()
        );
    }
    assert_eq!(be.accepts(), 10);
}

/// Reads a PROXY header (v1 or v2) at a backend; returns (source, destination, bytes after it).
async fn read_proxy_header(s: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    loop {
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0, "EOF before a PROXY header");
        buf.extend_from_slice(&tmp[..n]);
        if buf.starts_with(b"PROXY ") {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(buf[..i].to_vec()).unwrap();
                let rest = buf[i + 2..].to_vec();
                let p: Vec<&str> = line.split(' ').collect();
                assert_eq!(p.len(), 6, "{line}");
                let src: SocketAddr = format!("{}:{}", p[2], p[4]).parse().unwrap();
                let dst: SocketAddr = format!("{}:{}", p[3], p[5]).parse().unwrap();
                return (format!("v1 {} {src} {dst}", p[1]), rest);
            }
        } else if buf.len() >= 16 {
            assert_eq!(
                &buf[..12],
                b"\r\n\r\n\0\r\nQUIT\n",
                "neither v1 nor v2: {buf:?}"
            );
            assert_eq!(buf[12], 0x21, "v2 PROXY command");
            let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
            if buf.len() >= 16 + len {
                let a = &buf[16..16 + len];
                let desc = match buf[13] {
                    0x11 => {
                        let src = SocketAddr::from((
                            [a[0], a[1], a[2], a[3]],
                            u16::from_be_bytes([a[8], a[9]]),
                        ));
                        let dst = SocketAddr::from((
                            [a[4], a[5], a[6], a[7]],
                            u16::from_be_bytes([a[10], a[11]]),
                        ));
                        format!("v2 TCP4 {src} {dst}")
                    }
                    0x21 => {
                        let ip = |o: usize| {
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&a[o..o + 16]).unwrap())
                        };
                        let src = SocketAddr::from((ip(0), u16::from_be_bytes([a[32], a[33]])));
                        let dst = SocketAddr::from((ip(16), u16::from_be_bytes([a[34], a[35]])));
                        format!("v2 TCP6 {src} {dst}")
                    }
                    f => panic!("v2 family {f:#x}"),
                };
                return (desc, buf[16 + len..].to_vec());
            }
        }
        assert!(buf.len() < 1000, "no PROXY header end");
    }
}

fn proxy_recording_backend(
    store: Arc<Mutex<Vec<String>>>,
) -> impl Fn(
    tokio::net::TcpStream,
    usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
       + Send
       + Sync
       + 'static {
    move |mut s, _| {
        let store = store.clone();
        Box::pin(async move {
            let (desc, rest) = read_proxy_header(&mut s).await;
            store.lock().unwrap().push(desc);
            // echo what follows the header
            s.write_all(&rest).await.unwrap();
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        })
    }
}

/// `--send-proxy v1|v2`: the backend gets a PROXY header whose source is the client's address,
/// then the client's bytes unchanged.
async fn send_proxy(io: &'static str) {
    for version in ["v1", "v2"] {
        let store: Arc<Mutex<Vec<String>>> = Default::default();
        let be = raw_backend(proxy_recording_backend(store.clone())).await;
        let gw = tcp_gateway(io, &be.addr.to_string(), &["--send-proxy", version]);
        let mut c = Conn::connect(gw.addr).await;
        let me = c.s.local_addr().unwrap();
        c.send(b"payload after header").await;
        c.s.shutdown().await.unwrap();
        assert_eq!(c.read_to_end().await.unwrap(), b"payload after header");
        let seen = store.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let want = format!("{version} TCP4 {me} {}", gw.addr);
        assert_eq!(seen[0], want, "PROXY {version} header at the backend");
    }
}

fn proxy_v1(src: &str, sport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 10.0.0.1 {sport} 80\r\n").into_bytes()
}

fn proxy_v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    h.push(0x11);
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

/// `--proxy-protocol` on an http listener: the address from a v1/v2 header is the client for
/// X-Forwarded-For / X-Real-IP; a missing or malformed header is refused without a backend.
async fn accept_proxy_http(io: &'static str) {
    let be = tagged_backend("b").await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string(), "--proxy-protocol"]);
    for (hdr, ip) in [
        (proxy_v1("203.0.113.7", 5555), "203.0.113.7"),
        (proxy_v2_tcp4([198, 51, 100, 23], 4444), "198.51.100.23"),
    ] {
        let mut req = hdr.clone();
        req.extend(get("/pp"));
        let mut c = Conn::connect(gw.addr).await;
        c.send(&req).await;
        let r = c.final_response(false).await;
        assert_eq!(r.status, 200, "{r:?}");
        // keep-alive: the second request on the connection has no PROXY header of its own
        c.send(&get("/pp2")).await;
        assert_eq!(c.final_response(false).await.status, 200);
        let reqs = be.requests();
        for q in &reqs[reqs.len() - 2..] {
            assert_eq!(q.header("x-forwarded-for"), Some(ip), "{q:?}");
            assert_eq!(q.header("x-real-ip"), Some(ip));
        }
    }
    let before = be.accepts();
    for (what, bytes) in [
        ("no PROXY header", get("/direct")),
        (
            "malformed v1",
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "v1 without CRLF",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
    ] {
        let mut c = Conn::connect(gw.addr).await;
        c.send(&bytes).await;
        let rest = within(what, c.read_to_end()).await.unwrap();
        if !rest.is_empty() {
            let text = String::from_utf8_lossy(&rest);
            assert!(text.starts_with("HTTP/1.1 400 "), "{what}: {text}");
        }
    }
    assert_eq!(
        be.accepts(),
        before,
        "a refused PROXY connection reached the backend"
    );
}

/// tcp listener with `--proxy-protocol` and `--send-proxy v2`: the device address from the load
/// balancer's header reaches the pod.
async fn proxy_in_tcp_out(io: &'static str) {
    let store: Arc<Mutex<Vec<String>>> = Default::default();
    let be = raw_backend(proxy_recording_backend(store.clone())).await;
    let gw = tcp_gateway(
        io,
        &be.addr.to_string(),
        &["--proxy-protocol", "--send-proxy", "v2"],
    );
    let mut c = Conn::connect(gw.addr).await;
    let mut bytes = proxy_v1("192.0.2.44", 6000);
    bytes.extend(b"device bytes");
    c.send(&bytes).await;
    c.s.shutdown().await.unwrap();
    assert_eq!(c.read_to_end().await.unwrap(), b"device bytes");
    let seen = store.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("v2 TCP4 192.0.2.44:6000 "), "{seen:?}");
    // a connection without the header is refused and never reaches the backend
    let mut c = Conn::connect(gw.addr).await;
    c.send(b"no header here, just device bytes\r\n").await;
    let _ = within("refused", c.read_to_end()).await;
    assert_eq!(be.accepts(), 1);
}

/// IPv6 listener in tcp mode.
async fn ipv6_tcp(io: &'static str) {
    let be = echo_backend().await;
    let gw = tcp_gateway(io, &be.addr.to_string(), &["--listen", "[::1]:0"]);
    assert!(gw.addr.is_ipv6());
    let mut c = Conn::connect(gw.addr).await;
    c.send(b"v6").await;
    c.s.shutdown().await.unwrap();
    assert_eq!(c.read_to_end().await.unwrap(), b"v6");
}

both_io!(
    echo_random,
    half_close_client_first,
    half_close_backend_first,
    backend_dies,
    client_resets,
    connect_retry,
    send_proxy,
    accept_proxy_http,
    proxy_in_tcp_out,
    ipv6_tcp,
);
