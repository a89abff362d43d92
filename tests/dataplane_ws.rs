//! WebSocket through the real gateway, with tokio-tungstenite (an independent implementation) as
//! client and backend, and hand-written peers for the exotic cases. Every test runs with
//! `--io uring` and `--io epoll`.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(addr: SocketAddr, path: &str) -> Client {
    let (ws, resp) = within(
        "ws connect",
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("websocket handshake through the gateway");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

async fn next_data(ws: &mut Client) -> Ws {
    loop {
        let m = within("ws message", ws.next())
            .await
            .expect("stream ended")
            .expect("ws error");
        if m.is_text() || m.is_binary() {
            return m;
        }
    }
}

fn text_of(n: usize, seed: u64) -> String {
    pseudo_bytes(seed, n)
        .into_iter()
        .map(|b| (b'a' + b % 26) as char)
        .collect()
}

async fn echo_sizes(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut ws = ws_connect(gw.addr, "/echo").await;
    for (i, n) in [0usize, 125, 126, 65536, 1 << 20].into_iter().enumerate() {
        let t = text_of(n, i as u64 + 1);
        ws.send(Ws::text(t.clone())).await.unwrap();
        match next_data(&mut ws).await {
            Ws::Text(got) => assert!(got.as_str() == t, "text echo of {n} B differs"),
            other => panic!("expected text, got {other:?}"),
        }
        let b = pseudo_bytes(i as u64 + 100, n);
        ws.send(Ws::binary(b.clone())).await.unwrap();
        match next_data(&mut ws).await {
            Ws::Binary(got) => assert!(got[..] == b[..], "binary echo of {n} B differs"),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    // the backend saw the upgrade with forwarding headers
    let reqs = be.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/echo");
    assert_eq!(reqs[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(reqs[0].header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(reqs[0].header("x-forwarded-proto"), Some("http"));
}

/// Big frames back to back, so the tunnel splices their payloads (with frame tracking, a
/// splice stops at the end of each frame and the next header is read and scanned), with
/// small and control frames between them: every message comes back whole and in order, and
/// every Ping gets its Pong.
async fn big_frames_back_to_back(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let ws = ws_connect(gw.addr, "/bulk").await;
    let (mut tx, mut rx) = ws.split();
    // (size, text?) of each data message; None: a Ping.
    let plan: Vec<Option<(usize, bool)>> = vec![
        Some((64 << 10, false)),
        Some((64 << 10, false)),
        Some((100 << 10, false)),
        None,
        Some((200, true)),
        Some((64 << 10, false)),
        Some((17 << 10, false)),
        Some((10, true)),
        Some((1 << 20, false)),
        None,
        Some((300 << 10, false)),
        Some((16 << 10, false)),
        Some((5, true)),
    ];
    let expected: Vec<Ws> = plan
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            p.map(|(n, text)| match text {
                true => Ws::text(text_of(n, i as u64)),
                false => Ws::binary(pseudo_bytes(i as u64 + 500, n)),
            })
        })
        .collect();
    let sent = expected.clone();
    let sender = tokio::spawn(async move {
        let mut data = sent.into_iter();
        for (i, p) in plan.into_iter().enumerate() {
            let m = match p {
                Some(_) => data.next().unwrap(),
                None => Ws::Ping(format!("ping {i}").into_bytes().into()),
            };
            tx.send(m).await.unwrap();
        }
        tx
    });
    let (mut got, mut pongs) = (0, Vec::new());
    while got < expected.len() {
        let m = within("echo", rx.next())
            .await
            .expect("stream ended")
            .expect("ws error");
        match m {
            Ws::Pong(p) => pongs.push(String::from_utf8_lossy(&p).into_owned()),
            Ws::Text(_) | Ws::Binary(_) => {
                assert!(
                    m == expected[got],
                    "message {got} differs or is out of order"
                );
                got += 1;
            }
            _ => {}
        }
    }
    let mut tx = sender.await.expect("sender");
    // The second Pong may trail the last echo.
    while pongs.len() < 2 {
        if let Ws::Pong(p) = within("pong", rx.next()).await.unwrap().unwrap() {
            pongs.push(String::from_utf8_lossy(&p).into_owned());
        }
    }
    assert_eq!(pongs, ["ping 3", "ping 9"]);
    tx.close().await.unwrap();
}

async fn many_concurrent(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let addr = gw.addr;
    let mut tasks = Vec::new();
    for c in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect(addr, "/many").await;
            for m in 0..5u64 {
                let payload = pseudo_bytes(c * 1000 + m, 10 + ((c * 7 + m * 13) % 3000) as usize);
                ws.send(Ws::binary(payload.clone())).await.unwrap();
                match next_data(&mut ws).await {
                    Ws::Binary(got) => {
                        assert!(got[..] == payload[..], "conn {c} msg {m} corrupted")
                    }
                    other => panic!("conn {c}: {other:?}"),
                }
            }
            ws.close(None).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(be.accepts(), 200);
}

async fn integrity_checksum(io: &'static str) {
    use rand::{Rng, SeedableRng};
    let be = ws_echo_backend().await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut tasks = Vec::new();
    for conn in 0..4u64 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + conn);
            let ws = ws_connect(addr, "/sum").await;
            let (mut tx, mut rx) = ws.split();
            // ~1.5 MB per connection, random sizes, sent while the echo streams back
            let mut sizes = Vec::new();
            let mut total = 0;
            while total < 1_500_000 {
                let n = match rng.gen_range(0..10) {
                    0 => rng.gen_range(0..70_000),
                    1..=3 => rng.gen_range(0..2048),
                    _ => rng.gen_range(0..200),
                };
                sizes.push(n);
                total += n;
            }
            let msgs: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&n| (0..n).map(|_| rng.gen()).collect())
                .collect();
            let mut sent_sum = 0u64;
            for m in &msgs {
                sent_sum = sent_sum.wrapping_add(fnv(m));
            }
            let count = msgs.len();
            let writer = tokio::spawn(async move {
                for m in msgs {
                    tx.send(Ws::binary(m)).await.unwrap();
                }
                tx
            });
            let mut got_sum = 0u64;
            let mut got = 0;
            while got < count {
                let m = within("echo", rx.next())
                    .await
                    .expect("ended")
                    .expect("ws error");
                if let Ws::Binary(b) = m {
                    got_sum = got_sum.wrapping_add(fnv(&b));
                    got += 1;
                }
            }
            let _tx = writer.await.unwrap();
            assert_eq!(
                got_sum, sent_sum,
                "conn {conn}: checksum of {count} messages differs"
            );
        }));
    }
    for t in tasks {
        t.await.expect("integrity task");
    }
}

/// A frame in the same write as the upgrade head reaches the backend (first) and is echoed.
async fn pipelined_frame(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    let mut bytes = ws_upgrade_head("/pipe", WS_KEY, "13");
    bytes.extend(ws_frame(0x1, b"first!"));
    bytes.extend(ws_frame(0x2, &[1, 2, 3]));
    c.send(&bytes).await;
    let r = c.response(false).await.expect("101");
    assert_eq!(r.status, 101);
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some(ws_accept(WS_KEY).as_str())
    );
    let (op, p) = within("frame", read_ws_frame(&mut c))
        .await
        .expect("echo frame");
    assert_eq!((op, p.as_slice()), (0x1, &b"first!"[..]));
    let (op, p) = within("frame", read_ws_frame(&mut c))
        .await
        .expect("echo frame");
    assert_eq!((op, p.as_slice()), (0x2, &[1u8, 2, 3][..]));
}

/// Pings from the client are answered by the backend; pings from the backend are answered by the
/// client; the close handshake goes through both ways.
async fn ping_pong_close(io: &'static str) {
    // backend: on "ping-me" it pings the client and reports the pong payload it got back
    let be = raw_backend(|s, _| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Ws::Text(t) if t.as_str() == "ping-me" => {
                    ws.send(Ws::Ping(b"from-backend".to_vec().into()))
                        .await
                        .unwrap();
                }
                Ws::Pong(p) => {
                    let s = format!("pong:{}", String::from_utf8_lossy(&p));
                    ws.send(Ws::text(s)).await.unwrap();
                }
                Ws::Close(f) => {
                    let reason = f.map(|f| f.reason.to_string()).unwrap_or_default();
                    assert_eq!(reason, "bye");
                    let _ = ws.flush().await;
                }
                _ => {}
            }
        }
    })
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut ws = ws_connect(gw.addr, "/pp").await;
    ws.send(Ws::Ping(b"hello".to_vec().into())).await.unwrap();
    let m = within("pong", ws.next()).await.unwrap().unwrap();
    assert_eq!(m, Ws::Pong(b"hello".to_vec().into()));
    ws.send(Ws::text("ping-me")).await.unwrap();
    // tungstenite answers the backend's ping on our next read
    let m = next_data(&mut ws).await;
    assert_eq!(m, Ws::text("pong:from-backend"));
    ws.send(Ws::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let mut saw_close = false;
    for _ in 0..10 {
        match within("close reply", ws.next()).await {
            Some(Ok(Ws::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode::Normal);
                saw_close = true;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(
        saw_close,
        "the backend's close frame did not reach the client"
    );
}

/// Client shuts down its write side: the backend sees EOF and can still send; then the backend
/// closes and the client sees EOF.
async fn half_close_client_first(io: &'static str) {
    let be = raw_ws_backend(|mut c, _| async move {
        let mut got = c.buf.drain(..).collect::<Vec<u8>>();
        let mut tmp = [0u8; 4096];
        loop {
            let n = c.s.read(&mut tmp).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&tmp[..n]);
        }
        // EOF seen: answer with what we got, after the client's FIN
        let mut answer = b"backend saw EOF after: ".to_vec();
        answer.extend_from_slice(&got);
        c.s.write_all(&server_frame(&answer)).await.unwrap();
        c.s.shutdown().await.unwrap();
    })
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = raw_ws_client(gw.addr).await;
    c.send(&client_frame(b"client-data")).await;
    c.s.shutdown().await.unwrap();
    let rest = within("read after half-close", c.read_to_end())
        .await
        .unwrap();
    let mut answer = b"backend saw EOF after: ".to_vec();
    answer.extend_from_slice(&client_frame(b"client-data"));
    assert_eq!(rest, server_frame(&answer));
}

/// Backend shuts down its write side first: the client sees EOF and can still send.
async fn half_close_backend_first(io: &'static str) {
    let store: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>> = Default::default();
    let st = store.clone();
    let be = raw_ws_backend(move |mut c, _| {
        let st = st.clone();
        async move {
            c.s.write_all(&server_frame(b"bye from backend"))
                .await
                .unwrap();
            c.s.shutdown().await.unwrap();
            let mut got = c.buf.drain(..).collect::<Vec<u8>>();
            let mut tmp = [0u8; 4096];
            loop {
                match c.s.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&tmp[..n]),
                }
            }
            *st.lock().unwrap() = Some(got);
        }
    })
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = raw_ws_client(gw.addr).await;
    // read until EOF from the backend's FIN
    let data = within("read until backend FIN", c.read_to_end())
        .await
        .unwrap();
    assert_eq!(data, server_frame(b"bye from backend"));
    // our write side is still open through the tunnel
    c.send(&client_frame(b"client still talking")).await;
    c.s.shutdown().await.unwrap();
    let mut got = None;
    for _ in 0..100 {
        got = store.lock().unwrap().clone();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        got.as_deref(),
        Some(&client_frame(b"client still talking")[..]),
        "backend did not get the client's bytes sent after the backend's FIN, then EOF"
    );
}

/// A backend that dies mid-tunnel (clean close and reset): the client sees the close.
async fn backend_dies_mid_tunnel(io: &'static str) {
    let be = raw_ws_backend(|mut c, n| async move {
        let mut tmp = [0u8; 64];
        let _ = c.s.read(&mut tmp).await;
        if n % 2 == 1 {
            // abortive close: RST
            set_rst_on_close(&c.s);
        }
        drop(c);
    })
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    for round in 0..4 {
        let mut c = raw_ws_client(gw.addr).await;
        c.send(&client_frame(b"trigger")).await;
        let rest = within("client sees close", c.read_to_end())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(rest.is_empty(), "round {round}: unexpected bytes {rest:?}");
    }
    // still serving
    let mut ws_ok = raw_ws_client(gw.addr).await;
    ws_ok.send(&client_frame(b"x")).await;
}

/// tokio-tungstenite client against a backend that answers a non-101 to the upgrade: the
/// response is relayed as a normal response.
async fn non_101_relayed(io: &'static str) {
    let be = http_backend(std::sync::Arc::new(|_: &Message, _| {
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nX-Why: nope\r\n\r\nnope!\n".to_vec()
    }))
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let r = roundtrip(gw.addr, &ws_upgrade_head("/x", WS_KEY, "13")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-why"), Some("nope"));
    assert_eq!(r.body, b"nope!\n");
}

/// Connect retry: the first backend refuses (closed port), the second serves; every upgrade
/// succeeds.
async fn connect_retry(io: &'static str) {
    let be = ws_echo_backend().await;
    let dead = closed_port();
    let gw = Gateway::start(io, &["--backend", &format!("{dead},{}", be.addr)]);
    for i in 0..10 {
        let mut ws = ws_connect(gw.addr, "/retry").await;
        ws.send(Ws::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Ws::text(format!("m{i}")));
        ws.close(None).await.unwrap();
    }
    assert_eq!(be.accepts(), 10);
}

/// An IPv6 listener.
async fn ipv6_listener(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start(
        io,
        &["--listen", "[::1]:0", "--backend", &be.addr.to_string()],
    );
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    let mut ws = ws_connect(gw.addr, "/v6").await;
    ws.send(Ws::text("six")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Ws::text("six"));
    assert_eq!(be.requests()[0].header("x-forwarded-for"), Some("::1"));
}

both_io!(
    echo_sizes,
    big_frames_back_to_back,
    many_concurrent,
    integrity_checksum,
    pipelined_frame,
    ping_pong_close,
    half_close_client_first,
    half_close_backend_first,
    backend_dies_mid_tunnel,
    non_101_relayed,
    connect_retry,
    ipv6_listener,
);
