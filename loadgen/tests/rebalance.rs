//! The `rebalance` scenario against in-process backends: it counts every held connection on
//! the backend that answered, and reconnects the ones a peer ends. Counts are asserted, never
//! a duration.

use std::time::Duration;

use loadgen::scenario::rebalance::{self, Options};
use loadgen::scenario::{Proto, RunConfig};
use loadgen::{spawn_backend, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cfg(addr: std::net::SocketAddr, conns: usize, duration_ms: u64) -> RunConfig {
    let mut c = RunConfig::new(addr, Proto::Ws);
    c.conns = conns;
    c.duration = Duration::from_millis(duration_ms);
    c.connect_timeout = Duration::from_secs(5);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_are_counted_per_backend_and_the_trigger_runs() {
    let b = spawn_backend(Mode::Ws, "pod-x").await.unwrap();
    let opts = Options {
        interval: Duration::from_millis(250),
        trigger: Some((Duration::from_millis(250), "true".into())),
    };
    let t = rebalance::run(&cfg(b.addr, 12, 1500), &opts, false).await;
    let last = t.samples.last().unwrap();
    assert_eq!(last.per_backend.get("pod-x"), Some(&12), "{t:?}");
    assert_eq!(last.ended, 0);
    assert_eq!(t.trigger_s, Some(0.25));
    assert!(t.errors.is_empty(), "{:?}", t.errors);
}

/// A backend that answers the upgrade, then closes after a moment: every client reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_peer_ends_are_counted_and_reopened() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\nX-Backend: flaky\r\n\r\n",
                    loadgen::ws::accept_key(&key)
                );
                let _ = s.write_all(resp.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(600)).await;
                // Close 1012, as ringway ends a moved tunnel.
                let _ = s.write_all(&[0x88, 0x02, 0x03, 0xf4]).await;
            });
        }
    });
    let opts = Options {
        interval: Duration::from_millis(200),
        trigger: None,
    };
    let t = rebalance::run(&cfg(addr, 5, 2000), &opts, false).await;
    server.abort();
    let last = t.samples.last().unwrap();
    assert!(
        last.ended >= 5,
        "every client was ended at least once: {t:?}"
    );
    assert!(
        t.samples
            .iter()
            .any(|s| s.per_backend.get("flaky") == Some(&5)),
        "and reconnected: {t:?}"
    );
}
