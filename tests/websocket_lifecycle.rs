//! WebSocket tunnels the gateway ends itself (issue 12), against the real binary with
//! tokio-tungstenite and hand-written peers: a drained gateway and an idle tunnel end with a
//! Close frame (1001), not a cut; the close handshake completes with a backend that answers and
//! is cut after `close_timeout` with one that does not; a large frame in flight finishes before
//! the Close; malformed framing gets 1002 and is counted; `websocket_frames = false` keeps the
//! blind pipe. Every test runs with `--io uring` and `--io epoll`.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/tls.rs"]
mod tlsc;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Ws;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One upstream `app` with `backend`, `upstream_extra` lines in its section, `top` first.
fn config(top: &str, backend: SocketAddr, upstream_extra: &str) -> String {
    format!(
        "admin = \"127.0.0.1:0\"\nworkers = 1\n{top}\n\
         [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nbackends = [{{ address = \"{backend}\" }}]\n{upstream_extra}\n"
    )
}

async fn ws_connect(addr: SocketAddr) -> Client {
    let (ws, resp) = within(
        "ws connect",
        tokio_tungstenite::connect_async(format!("ws://{addr}/live")),
    )
    .await
    .expect("websocket handshake through the gateway");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The code of the Close the client reads next (data messages before it are returned too).
async fn read_until_close<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> (Vec<Vec<u8>>, Option<u16>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut data = Vec::new();
    loop {
        match within("ws message or close", ws.next()).await {
            Some(Ok(Ws::Close(frame))) => return (data, frame.map(|f| u16::from(f.code))),
            Some(Ok(m)) if m.is_binary() || m.is_text() => data.push(m.into_data().to_vec()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("websocket error before a Close frame (a cut?): {e}"),
            None => panic!("stream ended without a Close frame"),
        }
    }
}

fn sigterm(gw: &Gateway) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -TERM failed");
}

const CLOSE_1001_UNMASKED: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];
const CLOSE_1002_UNMASKED: [u8; 4] = [0x88, 0x02, 0x03, 0xEA];

/// The Close code in a masked Close frame at the start of `b`, if `b` starts with one.
fn masked_close_code(b: &[u8]) -> Option<u16> {
    if b.len() < 8 || b[0] != 0x88 || b[1] != 0x82 {
        return None;
    }
    Some(u16::from_be_bytes([b[6] ^ b[2], b[7] ^ b[3]]))
}

/// What a hand-written backend saw, and how its connection ended.
#[derive(Default, Clone, Debug)]
struct Seen {
    bytes: Vec<u8>,
    /// `Some(true)`: clean EOF; `Some(false)`: reset / error.
    clean_eof: Option<bool>,
}

/// A backend that waits for the gateway's Close and answers it (if `answer`), then reads to
/// the end of the connection, recording everything.
async fn closing_backend(answer: bool) -> (Backend, Arc<Mutex<Seen>>) {
    let seen: Arc<Mutex<Seen>> = Default::default();
    let st = seen.clone();
    let be = raw_ws_backend(move |mut c, _| {
        let st = st.clone();
        async move {
            let mut tmp = [0u8; 4096];
            let mut answered = false;
            loop {
                match c.s.read(&mut tmp).await {
                    Ok(0) => {
                        st.lock().unwrap().clean_eof = Some(true);
                        return;
                    }
                    Err(_) => {
                        st.lock().unwrap().clean_eof = Some(false);
                        return;
                    }
                    Ok(n) => {
                        let bytes = {
                            let mut s = st.lock().unwrap();
                            s.bytes.extend_from_slice(&tmp[..n]);
                            s.bytes.clone()
                        };
                        let tail = &bytes[bytes.len().saturating_sub(8)..];
                        if answer && !answered && masked_close_code(tail).is_some() {
                            answered = true;
                            c.s.write_all(&CLOSE_1001_UNMASKED).await.unwrap();
                        }
                    }
                }
            }
        }
    })
    .await;
    (be, seen)
}

async fn wait_seen(seen: &Arc<Mutex<Seen>>) -> Seen {
    within("backend connection ends", async {
        loop {
            let s = seen.lock().unwrap().clone();
            if s.clean_eof.is_some() {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// SIGTERM: the client of an open WebSocket reads Close 1001 (going away), not a cut.
async fn drained_gateway_sends_close_1001(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start_config(io, &config("[timeouts]\ndrain = \"6s\"", be.addr, ""));
    let mut ws = ws_connect(gw.addr).await;
    ws.send(Ws::text("before")).await.unwrap();
    let (echo, _) = {
        // one echo first: the tunnel is up
        let m = within("echo", ws.next()).await.unwrap().unwrap();
        (m, ())
    };
    assert_eq!(echo.into_text().unwrap().as_str(), "before");
    sigterm(&gw);
    let (_, code) = read_until_close(&mut ws).await;
    assert_eq!(code, Some(1001));
    // tungstenite answers the Close; the stream then ends cleanly.
    while let Some(m) = within("stream end", ws.next()).await {
        if let Err(e) = m {
            let s = e.to_string();
            assert!(!s.contains("reset"), "cut after the Close: {s}");
            break;
        }
    }
}

/// Idle timeout: Close 1001 to both sides; a backend that answers the Close completes the
/// handshake and sees a clean FIN. The message metrics counted the traffic and the Closes.
async fn idle_timeout_closes_with_handshake(io: &'static str) {
    let (be, seen) = closing_backend(true).await;
    let gw = Gateway::start_config(io, &config("[timeouts]\ntunnel_idle = \"1s\"", be.addr, ""));
    let mut c = raw_ws_client(gw.addr).await;
    c.send(&client_frame(b"hello")).await;
    // The gateway's Close to the client, then (after the backend's answer and ours) its FIN.
    let got = within("close from the gateway", c.read_exact(4))
        .await
        .unwrap();
    assert_eq!(got, CLOSE_1001_UNMASKED, "client: expected Close 1001");
    c.send(&ws_frame_bytes(0x88, &1001u16.to_be_bytes(), true))
        .await;
    let rest = within("gateway FIN", c.read_to_end()).await.unwrap();
    assert!(rest.is_empty(), "bytes after the Close: {rest:?}");
    let s = wait_seen(&seen).await;
    assert!(s.bytes.starts_with(&client_frame(b"hello")), "{s:?}");
    let after = &s.bytes[client_frame(b"hello").len()..];
    assert_eq!(masked_close_code(after), Some(1001), "backend: {s:?}");
    assert_eq!(after.len(), 8, "only the Close after the message: {s:?}");
    assert_eq!(
        s.clean_eof,
        Some(true),
        "backend answered: clean FIN expected"
    );

    let m = gw.metrics().await;
    let up = ("upstream", "app");
    let msgs = m.sum(
        "ringway_websocket_messages_total",
        &[up, ("direction", "to_backend")],
    );
    assert_eq!(msgs, 1.0, "{}", m.text);
    let close = |side, code| {
        m.sum(
            "ringway_websocket_close_total",
            &[up, ("side", side), ("code", code)],
        )
    };
    assert_eq!(close("gateway_to_client", "1001"), 1.0, "{}", m.text);
    assert_eq!(close("gateway_to_backend", "1001"), 1.0, "{}", m.text);
    assert_eq!(close("client", "1001"), 1.0, "{}", m.text);
    assert_eq!(close("backend", "1001"), 1.0, "{}", m.text);
    let sized = m.sum(
        "ringway_websocket_message_size_bytes_count",
        &[up, ("direction", "to_backend")],
    );
    assert_eq!(sized, 1.0, "{}", m.text);
}

/// A backend that never answers the Close is cut once `close_timeout` has passed; the client
/// still got its Close first.
async fn silent_backend_is_cut(io: &'static str) {
    let (be, seen) = closing_backend(false).await;
    let gw = Gateway::start_config(
        io,
        &config(
            "[timeouts]\ntunnel_idle = \"1s\"",
            be.addr,
            "close_timeout = \"1s\"",
        ),
    );
    let mut c = raw_ws_client(gw.addr).await;
    let got = within("close from the gateway", c.read_exact(4))
        .await
        .unwrap();
    assert_eq!(got, CLOSE_1001_UNMASKED);
    // The client answers; the backend never does.
    c.send(&ws_frame_bytes(0x88, &1001u16.to_be_bytes(), true))
        .await;
    let s = wait_seen(&seen).await;
    assert_eq!(masked_close_code(&s.bytes), Some(1001), "{s:?}");
    assert_eq!(s.clean_eof, Some(false), "a silent backend is reset: {s:?}");
    // The client's connection ends too (FIN: it answered).
    let rest = within("client connection ends", c.read_to_end()).await;
    assert_eq!(rest.unwrap_or_default(), Vec::<u8>::new());
}

/// A 4 MiB message streaming from the backend when the drain starts arrives whole (checksum)
/// before the Close; its last bytes arrive together with half of the next frame, so a splice
/// that ran past the frame's end (or a Close injected by a tracker that lost its place) would
/// break the stream the client reads.
async fn large_frame_finishes_before_close(io: &'static str) {
    const SIZE: usize = 4 << 20;
    let payload = pseudo_bytes(0xB16, SIZE);
    let sum = fnv(&payload);
    let big = server_frame(&payload);
    let small = server_frame(b"after the big one");
    let mut stream = big.clone();
    stream.extend_from_slice(&small);
    let stream = Arc::new(stream);
    let split = big.len() + small.len() / 2;
    let st = stream.clone();
    let be = raw_ws_backend(move |mut c, _| {
        let st = st.clone();
        async move {
            // Wait for the client's trigger, then stream over ~3 s: the drain's Close is asked
            // for while the big frame is in flight.
            let mut tmp = [0u8; 4096];
            if c.buf.is_empty() && c.s.read(&mut tmp).await.unwrap_or(0) == 0 {
                return;
            }
            for chunk in st[..split - 1000].chunks(64 * 1024) {
                if c.s.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(45)).await;
            }
            // The big frame's last bytes with half of the next frame, then the rest of it.
            let _ = c.s.write_all(&st[split - 1000..split]).await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let _ = c.s.write_all(&st[split..]).await;
            // Answer the gateway's Close, then read to the end.
            let mut seen = Vec::new();
            loop {
                match c.s.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&tmp[..n]),
                }
                let t = &seen[seen.len().saturating_sub(8)..];
                if masked_close_code(t).is_some() {
                    let _ = c.s.write_all(&CLOSE_1001_UNMASKED).await;
                }
            }
        }
    })
    .await;
    let gw = Gateway::start_config(io, &config("[timeouts]\ndrain = \"6s\"", be.addr, ""));
    let mut ws = ws_connect(gw.addr).await;
    ws.send(Ws::binary(b"go".to_vec())).await.unwrap();
    sigterm(&gw);
    let (data, code) = read_until_close(&mut ws).await;
    assert!(!data.is_empty(), "the big message before the Close");
    assert_eq!(data[0].len(), SIZE, "every byte before the Close");
    assert_eq!(fnv(&data[0]), sum, "checksum");
    for m in &data[1..] {
        assert_eq!(m, b"after the big one", "frames after the big one intact");
    }
    assert_eq!(code, Some(1001));
}

/// Malformed client framing: the client reads Close 1002, then the end; counted as
/// `client_ws_framing` and as a 1002 Close to the client.
async fn malformed_frames_get_1002(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start_config(io, &config("", be.addr, ""));
    let cases: [(&str, Vec<u8>); 5] = [
        ("reserved opcode", ws_frame_bytes(0x83, b"x", true)),
        ("control > 125", ws_frame_bytes(0x89, &[0u8; 126], true)),
        ("fragmented control", ws_frame_bytes(0x09, b"p", true)),
        (
            "top-bit length",
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4],
        ),
        ("unmasked client frame", ws_frame_bytes(0x82, b"x", false)),
    ];
    for (what, bad) in &cases {
        let mut c = raw_ws_client(gw.addr).await;
        // A good message first: it passes, the bad frame after it does not.
        c.send(&client_frame(b"ok")).await;
        let echo = within("echo", c.read_exact(4)).await.unwrap();
        assert_eq!(echo, server_frame(b"ok"), "{what}");
        c.send(bad).await;
        let rest = within("close after malformed", c.read_to_end())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(rest, CLOSE_1002_UNMASKED, "{what}");
    }
    let m = gw.metrics().await;
    let n = m.sum("ringway_errors_total", &[("kind", "client_ws_framing")]);
    assert_eq!(n, cases.len() as f64, "{}", m.text);
    let closes = m.sum(
        "ringway_websocket_close_total",
        &[("side", "gateway_to_client"), ("code", "1002")],
    );
    assert_eq!(closes, cases.len() as f64, "{}", m.text);
}

/// Malformed backend framing (a masked server frame): the client reads Close 1002 and the
/// backend gets Close 1002 too.
async fn malformed_backend_frame(io: &'static str) {
    let seen: Arc<Mutex<Seen>> = Default::default();
    let st = seen.clone();
    let be = raw_ws_backend(move |mut c, _| {
        let st = st.clone();
        async move {
            c.s.write_all(&ws_frame_bytes(0x82, b"masked!", true))
                .await
                .unwrap();
            let mut got = Vec::new();
            let r = c.s.read_to_end(&mut got).await;
            let mut s = st.lock().unwrap();
            s.bytes = got;
            s.clean_eof = Some(r.is_ok());
        }
    })
    .await;
    let gw = Gateway::start_config(io, &config("", be.addr, "close_timeout = \"1s\""));
    let mut c = raw_ws_client(gw.addr).await;
    let got = within("close to the client", c.read_exact(4))
        .await
        .unwrap();
    assert_eq!(got, CLOSE_1002_UNMASKED);
    let s = wait_seen(&seen).await;
    assert_eq!(masked_close_code(&s.bytes), Some(1002), "{s:?}");
    let m = gw.metrics().await;
    let n = m.sum("ringway_errors_total", &[("kind", "backend_ws_framing")]);
    assert_eq!(n, 1.0, "{}", m.text);
}

/// `websocket_frames = false`: unframed bytes pass both ways, and the idle timeout ends the
/// tunnel without a Close frame (the old blind pipe).
async fn frames_off_is_a_blind_pipe(io: &'static str) {
    let be = raw_ws_backend(|mut c, _| async move {
        let mut tmp = [0u8; 4096];
        loop {
            match c.s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if c.s.write_all(&tmp[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let gw = Gateway::start_config(
        io,
        &config(
            "[timeouts]\ntunnel_idle = \"1s\"",
            be.addr,
            "websocket_frames = false",
        ),
    );
    let mut c = raw_ws_client(gw.addr).await;
    c.send(b"not a websocket frame").await;
    let echo = within("echo", c.read_exact(21)).await.unwrap();
    assert_eq!(echo, b"not a websocket frame");
    let rest = within("idle end", c.read_to_end())
        .await
        .unwrap_or_default();
    assert!(rest.is_empty(), "no Close frame without tracking: {rest:?}");
}

/// A wss:// client (TLS terminated by the gateway, the copy pump through rustls): the idle
/// timeout ends with Close 1001; malformed framing that arrives with the upgrade head gets the
/// 101, then Close 1002, then the end.
async fn wss_graceful_endings(io: &'static str) {
    use tlsc::{connect, write_pair, Ca, Dir};
    let ca = Ca::new();
    let dir = Dir::new("wslife");
    write_pair(&dir.path("chat"), &ca.leaf(&["chat.test"]));
    let be = ws_echo_backend().await;
    let cfg = format!(
        "admin = \"\"\n[timeouts]\ntunnel_idle = \"1s\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\n\
         [listener.tls]\n[[listener.tls.certificate]]\ndir = \"{}\"\n\
         [[upstream]]\nname = \"app\"\nbackends = [{{ address = \"{}\" }}]\n",
        dir.path("chat").display(),
        be.addr
    );
    let gw = Gateway::start_config(io, &cfg);
    let tls = within(
        "handshake",
        connect(gw.addr, ca.client(&["http/1.1"]), "chat.test"),
    )
    .await
    .unwrap();
    let (mut ws, _) = within(
        "ws upgrade",
        tokio_tungstenite::client_async("wss://chat.test/live", tls),
    )
    .await
    .expect("upgrade");
    ws.send(Ws::text("hi")).await.unwrap();
    let (data, code) = read_until_close(&mut ws).await;
    assert_eq!(data, vec![b"hi".to_vec()]);
    assert_eq!(code, Some(1001), "idle timeout over TLS");

    let mut c = within(
        "handshake",
        connect(gw.addr, ca.client(&["http/1.1"]), "chat.test"),
    )
    .await
    .unwrap();
    let mut req = ws_upgrade_head("/raw", WS_KEY, "13");
    req.extend(ws_frame_bytes(0x83, b"x", true)); // reserved opcode, with the head
    c.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within("read to the end", c.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(got.ends_with(&CLOSE_1002_UNMASKED), "{got:?}");
}

/// The frames a client sent, as (opcode, unmasked payload), from bytes a backend received.
fn client_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 6 {
        let op = b[0] & 0x0F;
        let (len, at) = match b[1] & 0x7F {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(b[1] & 0x80 != 0, "unmasked client frame: {b:?}");
        let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let body = &b[at + 4..at + 4 + len];
        out.push((
            op,
            body.iter()
                .enumerate()
                .map(|(i, x)| x ^ key[i % 4])
                .collect(),
        ));
        b = &b[at + 4 + len..];
    }
    assert!(b.is_empty(), "trailing bytes {b:?}");
    out
}

const PING: [u8; 6] = [0x89, 0x04, b'r', b'w', b'p', b'g'];

/// Gateway pings: a client that answers (tokio-tungstenite answers pings by itself) stays; the
/// backend never sees the pings nor the client's Pongs.
async fn pings_keep_answering_clients(io: &'static str) {
    let (be, seen) = closing_backend(true).await;
    let gw = Gateway::start_config(
        io,
        &config(
            "",
            be.addr,
            "ws_ping_interval = \"300ms\"\nws_ping_timeout = \"3s\"",
        ),
    );
    let mut ws = ws_connect(gw.addr).await;
    // Silent for a while, reading (which answers the pings).
    let mut pings = 0;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(m) = ws.next().await {
            match m.expect("no error while pinged") {
                Ws::Ping(p) => {
                    assert_eq!(&p[..], b"rwpg");
                    pings += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(pings >= 2, "the gateway pinged a silent client ({pings})");
    ws.send(Ws::text("still here")).await.unwrap();
    let frames = within("the backend gets the message", async {
        loop {
            let b = seen.lock().unwrap().bytes.clone();
            if !b.is_empty() {
                return client_frames(&b);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        frames,
        vec![(0x1, b"still here".to_vec())],
        "no ping or pong reached the backend"
    );
    // Every ping the client saw was counted as sent (more may be in flight), none timed out.
    let sent = pings_counted(&gw, "sent", |n| n >= pings as f64).await;
    assert!(sent >= pings as f64);
    let m = gw.metrics().await;
    assert_eq!(m.sum(PINGS, &[("result", "timeout")]), 0.0, "{}", m.text);
}

const PINGS: &str = "ringway_websocket_pings_total";

/// `ringway_websocket_pings_total{result}` once `ok` holds (bounded wait: the tunnel's end is
/// counted after the bytes the client saw were written).
async fn pings_counted(gw: &Gateway, result: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = String::new();
    for _ in 0..100 {
        let m = gw.metrics().await;
        let n = m.sum(PINGS, &[("upstream", "app"), ("result", result)]);
        if ok(n) {
            return n;
        }
        last = m.text;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{PINGS}{{result={result}}} never as expected:\n{last}");
}

/// Gateway pings: a client that never answers gets a Ping, then Close 1001; the backend gets
/// Close 1001 and nothing else.
async fn silent_client_is_closed_after_a_ping(io: &'static str) {
    let (be, seen) = closing_backend(true).await;
    let gw = Gateway::start_config(
        io,
        &config(
            "",
            be.addr,
            "ws_ping_interval = \"300ms\"\nws_ping_timeout = \"500ms\"\nclose_timeout = \"1s\"",
        ),
    );
    let mut c = raw_ws_client(gw.addr).await;
    let got = within("ping, then close", c.read_exact(10)).await.unwrap();
    assert_eq!(&got[..6], &PING, "a Ping first");
    assert_eq!(&got[6..], &CLOSE_1001_UNMASKED, "then Close 1001");
    let s = wait_seen(&seen).await;
    assert_eq!(
        client_frames(&s.bytes),
        vec![(0x8, 1001u16.to_be_bytes().to_vec())],
        "the backend: only the gateway's Close 1001"
    );
    // One ping sent, and the tunnel it could not keep counted as a timeout.
    assert_eq!(pings_counted(&gw, "timeout", |n| n >= 1.0).await, 1.0);
    assert_eq!(pings_counted(&gw, "sent", |n| n >= 1.0).await, 1.0);
}

both_io!(
    pings_keep_answering_clients,
    silent_client_is_closed_after_a_ping,
    wss_graceful_endings,
    drained_gateway_sends_close_1001,
    idle_timeout_closes_with_handshake,
    silent_backend_is_cut,
    large_frame_finishes_before_close,
    malformed_frames_get_1002,
    malformed_backend_frame,
    frames_off_is_a_blind_pipe,
);
