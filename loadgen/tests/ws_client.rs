//! Our WebSocket client against an independent server (tokio-tungstenite) and against
//! hand-written misbehaving servers.

use futures_util::{SinkExt, StreamExt};
use loadgen::ws::{accept_key, encode_frame, Opcode, Recv, WsClient, WsError};
use loadgen::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as TMessage;

fn fnv64(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A tokio-tungstenite echo server; returns its address.
async fn tungstenite_echo() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    // Pings and closes are answered by tungstenite on the next poll.
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A raw server that reads the request head and answers with `answer(key)`.
async fn raw_server(answer: fn(&str) -> String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut tmp).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap_or("")
            .trim()
            .to_string();
        s.write_all(answer(&key).as_bytes()).await.unwrap();
        // Fragmented text "hel" + "lo " + "world" with a ping in between.
        let mut out = Vec::new();
        encode_frame(&mut out, false, Opcode::Text, b"hel", None);
        encode_frame(&mut out, false, Opcode::Continuation, b"lo ", None);
        encode_frame(&mut out, true, Opcode::Ping, b"p", None);
        encode_frame(&mut out, true, Opcode::Continuation, b"world", None);
        s.write_all(&out).await.unwrap();
        // Expect the client's pong (masked), then hold until the client goes away.
        let mut rest = [0u8; 64];
        let _ = s.read(&mut rest).await;
        let _ = s.read(&mut rest).await;
    });
    addr
}

#[tokio::test]
async fn handshake_ok_against_tungstenite() {
    let addr = tungstenite_echo().await;
    let (mut c, resp) = WsClient::connect(&addr, "/chat", &[("X-Test", "1")])
        .await
        .unwrap();
    assert_eq!(resp.status, 101);
    assert!(resp.header("sec-websocket-accept").is_some());
    c.send_text("hello").await.unwrap();
    assert_eq!(c.recv().await.unwrap(), Message::Text("hello".into()));
}

#[tokio::test]
async fn wrong_accept_is_detected() {
    let addr = raw_server(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_string()
    })
    .await;
    match WsClient::connect(&addr, "/", &[]).await {
        Err(WsError::BadAccept { got, .. }) => {
            assert_eq!(got.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
        }
        Err(e) => panic!("expected BadAccept, got {e}"),
        Ok(_) => panic!("a wrong Sec-WebSocket-Accept was accepted"),
    }
}

#[tokio::test]
async fn missing_accept_is_detected() {
    let addr = raw_server(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .into()
    })
    .await;
    assert!(matches!(
        WsClient::connect(&addr, "/", &[]).await,
        Err(WsError::BadAccept { got: None, .. })
    ));
}

#[tokio::test]
async fn status_400_is_detected() {
    let addr = raw_server(|_| "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".into()).await;
    match WsClient::connect(&addr, "/", &[]).await {
        Err(WsError::Status(400)) => {}
        Err(e) => panic!("expected Status(400), got {e}"),
        Ok(_) => panic!("a 400 was taken for an upgrade"),
    }
}

#[tokio::test]
async fn fragmented_frames_are_assembled_and_pings_answered() {
    let addr = raw_server(|key| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key)
        )
    })
    .await;
    let (mut c, _) = WsClient::connect(&addr, "/", &[]).await.unwrap();
    let mut out = Vec::new();
    assert_eq!(c.recv_into(&mut out).await.unwrap(), Recv::Text);
    assert_eq!(out, b"hello world");
}

#[tokio::test]
async fn all_length_classes_round_trip_text_and_binary() {
    let addr = tungstenite_echo().await;
    let (mut c, _) = WsClient::connect(&addr, "/", &[]).await.unwrap();
    let mut rng = loadgen::ws::XorShift::new(42);
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
        let mut bin = vec![0u8; len];
        rng.fill(&mut bin);
        c.send_binary(&bin).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(
            c.recv_into(&mut out).await.unwrap(),
            Recv::Binary,
            "len {len}"
        );
        assert_eq!(out.len(), len);
        assert_eq!(fnv64(&out), fnv64(&bin), "binary len {len}");

        let text: String = bin.iter().map(|b| (b'a' + b % 26) as char).collect();
        c.send_text(&text).await.unwrap();
        assert_eq!(
            c.recv_into(&mut out).await.unwrap(),
            Recv::Text,
            "len {len}"
        );
        assert_eq!(out.len(), len);
        assert_eq!(fnv64(&out), fnv64(text.as_bytes()), "text len {len}");
    }
    c.close(1000, std::time::Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn tungstenite_sees_our_frames_as_valid() {
    // The server side checks masking and framing; a bad frame would end the echo.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        let mut got = Vec::new();
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                TMessage::Binary(b) => got.push(b.len()),
                TMessage::Ping(p) => got.push(1000 + p.len()),
                TMessage::Close(_) => break,
                _ => {}
            }
        }
        got
    });
    let (mut c, _) = WsClient::connect(&addr, "/", &[]).await.unwrap();
    c.send_binary(&[7u8; 300]).await.unwrap();
    c.send(&Message::Ping(b"abc".to_vec())).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), Message::Pong(b"abc".to_vec()));
    let _ = c.close(1000, std::time::Duration::from_secs(2)).await;
    assert_eq!(server.await.unwrap(), vec![300, 1003]);
}
