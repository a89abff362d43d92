//! What the gateway writes and closes itself, on both io backends: request and response heads
//! (on io_uring a head up to 4 KiB goes out as a ring SEND of a copy, a longer one as write(2)
//! on readiness), error answers, the half-close it passes on through a tunnel (a ring SHUTDOWN)
//! and the sockets it closes (ring CLOSE ops, submitted with the turn's other work).

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::sync::Arc;

use gateway::*;
use tokio::io::AsyncWriteExt;

/// Head sizes on both sides of the 4 KiB ring-send limit, in the request the backend gets and
/// in the response the client gets: every byte arrives, in order, over one kept-alive
/// connection each way.
async fn heads_around_the_send_limit(io: &'static str) {
    let be = http_backend(Arc::new(|m: &Message, _| {
        let pad = m.header("x-pad").unwrap_or("").to_string();
        format!(
            "HTTP/1.1 200 OK\r\nX-Back: {pad}\r\nContent-Length: {}\r\n\r\n{}",
            m.path.len(),
            m.path
        )
        .into_bytes()
    }))
    .await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    let sizes = [1usize, 3_800, 3_990, 4_000, 4_050, 4_096, 4_200, 6_000];
    for (i, &n) in sizes.iter().enumerate() {
        let pad: String = pseudo_bytes(i as u64, n)
            .iter()
            .map(|b| (b'a' + b % 26) as char)
            .collect();
        c.send(format!("GET /h{i} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n").as_bytes())
            .await;
        let r = c.final_response(false).await;
        assert_eq!(r.status, 200, "size {n}");
        assert_eq!(
            r.header("x-back"),
            Some(pad.as_str()),
            "response head of size {n}"
        );
        assert_eq!(r.body_str(), format!("/h{i}"));
    }
    let reqs = be.requests();
    assert_eq!(reqs.len(), sizes.len());
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.path, format!("/h{i}"));
        assert_eq!(
            r.header("x-pad").map(str::len),
            Some(sizes[i]),
            "request head {i}"
        );
    }
    assert_eq!(be.accepts(), 1, "the backend connection was not reused");
}

/// The gateway's own answers (here 502/503: no backend listening) reach the client whole, and
/// the connection then ends; many in a row leave no fd behind (closes are ring ops).
async fn own_answers_and_closes(io: &'static str) {
    let gw = Gateway::start(io, &["--backend", &closed_port().to_string()]);
    let mut base = None;
    for round in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let addr = gw.addr;
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::connect(addr).await;
                c.send(format!("GET /e{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                    .await;
                let r = c.final_response(false).await;
                // 502 (connect refused), then 503 once passive health marks it down
                assert!(r.status == 502 || r.status == 503, "{r:?}");
                assert!(!r.body.is_empty(), "{r:?}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let fds = gw.settle_fds(base.unwrap_or(usize::MAX)).await;
        match base {
            None => base = Some(fds),
            Some(b) => assert!(fds <= b, "round {round}: {fds} fds, baseline {b}"),
        }
    }
}

/// Half-closes pass through a tunnel both ways, after every byte sent before them: the
/// client's FIN reaches the backend after its last bytes, the backend still answers, and then
/// its FIN reaches the client. (tcp mode: raw bytes, no WebSocket framing.)
async fn half_close_after_the_last_bytes(io: &'static str) {
    let be = raw_backend(|s, _| async move {
        let mut c = Conn::new(s);
        let rest = c.read_to_end().await.unwrap_or_default();
        let mut tail = b"tail:".to_vec();
        tail.extend_from_slice(&rest);
        c.send(&tail).await;
    })
    .await;
    let gw = Gateway::start(io, &["--mode", "tcp", "--backend", &be.addr.to_string()]);
    let mut c = Conn::connect(gw.addr).await;
    let body = pseudo_bytes(3, 10_000);
    c.send(&body).await;
    c.s.shutdown().await.unwrap();
    let got = within("the backend's tail and FIN", c.read_to_end())
        .await
        .expect("read to EOF");
    let mut want = b"tail:".to_vec();
    want.extend_from_slice(&body);
    assert!(got == want, "got {} bytes, want {}", got.len(), want.len());
}

/// A backend that writes its last bytes and closes at once (its FIN right behind them, as a
/// WebSocket server's Close is): the gateway sends those bytes with its own FIN (held back
/// with `MSG_MORE` on io_uring until the half-close). Every byte arrives, then the EOF; a
/// send held back and never released would hang the read. Sizes around the ring's 4 KiB
/// buffers (one buffer, several, a partial last one), 40 connections at once.
async fn last_bytes_leave_with_the_fin(io: &'static str) {
    const SIZES: [usize; 5] = [1, 125, 4_096, 4_097, 20_000];
    let be = raw_backend(|mut s, n| async move {
        let _ = s
            .write_all(&pseudo_bytes(n as u64, SIZES[n % SIZES.len()]))
            .await;
        // dropped: close(2), the FIN right behind the bytes
    })
    .await;
    let gw = Gateway::start(io, &["--mode", "tcp", "--backend", &be.addr.to_string()]);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await;
            within("the backend's bytes and FIN", c.read_to_end())
                .await
                .expect("read to EOF")
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    // Which backend connection served which client is the gateway's business: match by
    // content, each of the 40 exactly once.
    let mut want: Vec<Vec<u8>> = (0..40)
        .map(|n| pseudo_bytes(n as u64, SIZES[n % SIZES.len()]))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(be.accepts(), 40);
    for (g, w) in got.iter().zip(&want) {
        assert!(g == w, "got {} bytes, want {}", g.len(), w.len());
    }
}

both_io!(
    heads_around_the_send_limit,
    own_answers_and_closes,
    half_close_after_the_last_bytes,
    last_bytes_leave_with_the_fin
);
