//! File descriptors of the gateway process (`/proc/PID/fd`) return to their baseline after many
//! connections open and close, and after head timeouts, tunnel idle timeouts and client resets
//! drop futures mid-operation. Both io backends (io_uring keeps an fd until a cancelled poll
//! completes, hence the bounded settle loop).
//!
//! The baseline is taken after one warm-up round of the same traffic, so per-core pools (pipes,
//! buffers) are at the level that traffic fills them to; a leak shows as growth per round.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message as Ws;

fn config(backend: SocketAddr, mode: &str) -> String {
    format!(
        "admin = \"\"\nworkers = 2\n[timeouts]\nhead = \"1s\"\ntunnel_idle = \"1s\"\n\n[[listener]]\nname = \"main\"\n\
         bind = \"127.0.0.1:0\"\nmode = \"{mode}\"\nupstream = \"main\"\n\n[[upstream]]\nname = \"main\"\n\
         close_timeout = \"1s\"\nbackends = [{{ name = \"b0\", address = \"{backend}\" }}]\n"
    )
}

/// 200 concurrent WebSocket connections, each echoing a message (one large), then closing.
async fn ws_round(addr: SocketAddr) {
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = within(
                "ws connect",
                tokio_tungstenite::connect_async(format!("ws://{addr}/fd")),
            )
            .await
            .expect("handshake");
            let n = if i % 10 == 0 { 200_000 } else { 100 };
            let p = pseudo_bytes(i, n);
            ws.send(Ws::binary(p.clone())).await.unwrap();
            loop {
                match within("echo", ws.next()).await {
                    Some(Ok(Ws::Binary(b))) => {
                        assert!(b[..] == p[..]);
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            if i % 2 == 0 {
                ws.close(None).await.unwrap();
            } else {
                // abrupt: drop the TCP connection
                drop(ws);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Half heads left to time out (408), tunnels left idle to time out, uploads cut by a reset,
/// plain keep-alive requests abandoned mid-connection.
async fn timeout_round(addr: SocketAddr) {
    let mut tasks = Vec::new();
    for i in 0..120u64 {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await;
            match i % 4 {
                0 => {
                    c.send(b"GET /half HTTP/1.1\r\nHost: t\r\n").await;
                    let r = c.response(false).await.expect("408");
                    assert_eq!(r.status, 408);
                }
                1 => {
                    c.send(&ws_upgrade_head("/idle", WS_KEY, "13")).await;
                    let r = c.response(false).await.expect("101");
                    assert_eq!(r.status, 101);
                    // idle: the gateway's tunnel_idle ends the tunnel gracefully (Close
                    // 1001), then cuts us after close_timeout since we never answer
                    let close = c.read_exact(4).await.expect("a Close frame");
                    assert_eq!(close, [0x88, 0x02, 0x03, 0xE9], "Close 1001");
                    assert!(c.closed().await, "idle tunnel not closed");
                }
                2 => {
                    c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
                        .await;
                    c.send(&pseudo_bytes(i, 30_000)).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    set_rst_on_close(&c.s);
                }
                _ => {
                    c.send(&get("/ka")).await;
                    let _ = c.response(false).await;
                    // leave without closing politely
                    set_rst_on_close(&c.s);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Idle pipes a worker may keep pooled (src/proxy/mod.rs PIPES_KEPT); each pipe is two fds.
const PIPES_KEPT_PER_WORKER: usize = 64;
const WORKERS: usize = 2;

async fn check_round<F, Fut>(gw: &Gateway, what: &str, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let fresh = gw.fd_kinds();
    let max_pipes = fresh.1 + 2 * PIPES_KEPT_PER_WORKER * WORKERS;
    // warm-up round: lazily created runtime fds (timers, wakers) appear here; then wait until
    // the counts are stable and take that as the baseline
    round().await;
    let mut base = gw.fd_kinds();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let k = gw.fd_kinds();
        if k == base {
            break;
        }
        base = k;
    }
    assert!(
        base.0 <= fresh.0 + 2 && base.2 <= fresh.2 + 8 && base.1 <= max_pipes,
        "{} {what}: after the warm-up round fds stay far above the fresh process: {base:?} vs {fresh:?}",
        gw.io
    );
    let base = (base.0.max(fresh.0), base.1, base.2.max(fresh.2));
    for r in 0..2 {
        round().await;
        let k = gw.settle_kinds(base, max_pipes).await;
        assert!(
            k.0 <= base.0 && k.2 <= base.2 && k.1 <= max_pipes,
            "{} {what}: fds did not return to baseline after round {r}: \
             (sockets, pipe ends, other) = {k:?}, baseline {base:?} (fresh {fresh:?}), pipe ends allowed {max_pipes}",
            gw.io
        );
    }
}

async fn fds_ws(io: &'static str) {
    let be = ws_echo_backend().await;
    let gw = Gateway::start(io, &["--workers", "2", "--backend", &be.addr.to_string()]);
    check_round(&gw, "200 WebSocket connections", || ws_round(gw.addr)).await;
}

async fn fds_timeouts(io: &'static str) {
    // the backend completes upgrades and answers GETs; uploads it just reads
    let ws = ws_echo_backend().await;
    let gw = Gateway::start_config(io, &config(ws.addr, "http"));
    check_round(&gw, "timeouts and resets", || timeout_round(gw.addr)).await;
}

async fn fds_tcp(io: &'static str) {
    let be = raw_backend(|mut s, _| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await;
    let gw = Gateway::start_config(io, &config(be.addr, "tcp"));
    let addr = gw.addr;
    let round = || async move {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::connect(addr).await;
                let p = pseudo_bytes(i, if i % 10 == 0 { 300_000 } else { 64 });
                c.send(&p).await;
                match i % 3 {
                    0 => {
                        c.s.shutdown().await.unwrap();
                        assert_eq!(c.read_to_end().await.unwrap().len(), p.len());
                    }
                    1 => set_rst_on_close(&c.s),
                    _ => {
                        // idle until tunnel_idle cuts it
                        let _ = c.read_to_end().await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    check_round(&gw, "200 tcp tunnels", round).await;
}

/// Reloads (SIGHUP) while clients connect: each reload wakes every accept loop, which must not
/// drop an accept that the kernel may already have completed (an io_uring accept op finishes in
/// the kernel; a dropped one could take a connection with it). Every client gets its answer,
/// and fds return to the baseline.
async fn fds_reload_accepting(io: &'static str) {
    let be = tagged_backend("r").await;
    let gw = Gateway::start_config(io, &config(be.addr, "http"));
    let addr = gw.addr;
    // The control thread installs its SIGHUP handler just after "listening" is logged, and
    // until then SIGHUP's default action ends the process (src/control.rs): give it time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = gw.pid().to_string();
    let gwr = &gw;
    let round = || {
        let pid = pid.clone();
        async move {
            let mut tasks = Vec::new();
            for i in 0..150u64 {
                tasks.push(tokio::spawn(async move {
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let s = match tokio::net::TcpStream::connect(addr).await {
                        Ok(s) => s,
                        Err(e) => return Err(format!("client {i}: connect: {e}")),
                    };
                    let mut c = Conn::new(s);
                    c.send(&get("/reload")).await;
                    match c.response(false).await {
                        Ok(r) if r.status == 200 => Ok(()),
                        other => Err(format!("client {i}: {other:?}")),
                    }
                }));
            }
            for _ in 0..10 {
                let st = std::process::Command::new("kill")
                    .args(["-HUP", &pid])
                    .status()
                    .expect("kill -HUP");
                assert!(st.success());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut failed = Vec::new();
            for t in tasks {
                if let Err(e) = t.await.unwrap() {
                    failed.push(e);
                }
            }
            assert!(
                failed.is_empty(),
                "{}: every client gets its answer despite reloads: {failed:?}\n--- log ---\n{}",
                gwr.io,
                gwr.log()
            );
        }
    };
    check_round(&gw, "reloads while accepting", round).await;
}

both_io!(fds_ws, fds_timeouts, fds_tcp, fds_reload_accepting);
