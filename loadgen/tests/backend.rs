//! Our echo backend against an independent client (tokio-tungstenite) and raw HTTP.

use futures_util::{SinkExt, StreamExt};
use loadgen::{spawn_backend, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn upgrade_carries_correct_accept_and_backend_name() {
    let b = spawn_backend(Mode::Ws, "pod-a").await.unwrap();
    let mut req = format!("ws://{}/chat", b.addr)
        .into_client_request()
        .unwrap();
    // RFC 6455's example key, so the expected accept is a constant, not our own code.
    req.headers_mut().insert(
        "Sec-WebSocket-Key",
        "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(resp.headers()["x-backend"], "pod-a");
}

#[tokio::test]
async fn echoes_all_length_classes_answers_ping_and_close() {
    let b = spawn_backend(Mode::Ws, "pod-b").await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", b.addr))
        .await
        .unwrap();
    let mut rng = loadgen::ws::XorShift::new(7);
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        ws.send(Message::binary(data.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(got) => assert!(got[..] == data[..], "binary len {len}"),
            m => panic!("len {len}: unexpected {m:?}"),
        }
        let text: String = data.iter().map(|b| (b'A' + b % 26) as char).collect();
        ws.send(Message::text(text.clone())).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Text(got) => assert_eq!(got.as_str(), text, "text len {len}"),
            m => panic!("len {len}: unexpected {m:?}"),
        }
    }
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        m => panic!("expected pong, got {m:?}"),
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        m => panic!("expected close, got {m:?}"),
    }
    assert!(
        !matches!(ws.next().await, Some(Ok(_))),
        "connection should end after close"
    );
}

async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let mut tmp = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .unwrap()
                .parse()
                .unwrap();
            while buf.len() < end + len {
                let n = s.read(&mut tmp).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end..end + len]).to_string();
            buf.drain(..end + len);
            return (head, body);
        }
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[tokio::test]
async fn whoami_twice_on_one_keep_alive_connection() {
    let b = spawn_backend(Mode::Ws, "pod-c").await.unwrap();
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "pod-c");
    }
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /any/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok",
        "{head}{body}"
    );
    let (head, body) = read_response(&mut s, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "pod-c",
        "{head}{body}"
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn wrong_websocket_version_gets_426() {
    let b = spawn_backend(Mode::Ws, "pod-d").await.unwrap();
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 426") && text.contains("Sec-WebSocket-Version: 13"),
        "{text}"
    );
}

#[tokio::test]
async fn tcp_mode_echoes_random_payloads() {
    let b = spawn_backend(Mode::Tcp, "dev").await.unwrap();
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let mut rng = loadgen::ws::XorShift::new(99);
    for len in [1usize, 100, 4096, 70_000, 300_000] {
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        let (mut rd, mut wr) = s.split();
        let send = async { wr.write_all(&data).await.unwrap() };
        let mut got = vec![0u8; len];
        let recv = async { rd.read_exact(&mut got).await.unwrap() };
        tokio::join!(send, recv);
        assert!(got == data, "len {len}");
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}
