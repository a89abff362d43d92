//! Health end to end: passive (failed connects mark a backend down, the retry moves the
//! client) and active probes (tcp, and a websocket probe that catches a backend answering
//! HTTP but refusing the upgrade). The real binary, static backends on loopback; every wait
//! is a bounded poll on status codes and on which backend answered.

#[path = "common/dns.rs"]
mod dns;

use std::time::Duration;

use dns::{Backend, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Listener → upstream `pair` by default, `/solo/` → upstream `solo`.
fn config(pair: [&Backend; 2], solo: &Backend, health: &str) -> String {
    format!(
        r#"workers = 1
admin = ""
[[listener]]
name = "web"
bind = "{{LISTEN}}"
mode = "http"
upstream = "pair"
[[route]]
path_prefix = "/solo/"
upstream = "solo"
[[upstream]]
name = "pair"
balance = "round-robin"
backends = [{{ name = "b0", address = "{}" }}, {{ name = "b1", address = "{}" }}]
[upstream.health]
{health}
[[upstream]]
name = "solo"
backends = [{{ name = "s0", address = "{}" }}]
[upstream.health]
{health}
"#,
        pair[0].addr, pair[1].addr, solo.addr
    )
}

#[tokio::test]
async fn passive_failures_mark_a_killed_backend_down_and_retry_moves_the_client() {
    let (b0, b1, s0) = (
        Backend::start("127.0.0.1:0", "b0").await,
        Backend::start("127.0.0.1:0", "b1").await,
        Backend::start("127.0.0.1:0", "s0").await,
    );
    let gw = Gateway::start(&config(
        [&b0, &b1],
        &s0,
        "max_fails = 2\nfail_timeout = \"30s\"",
    ))
    .await;
    assert_eq!(gw.get("/solo/whoami", None).await.body, "s0");

    b1.kill();
    for _ in 0..10 {
        let r = gw.get("/whoami", None).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "b0"),
            "{}",
            gw.log_text()
        );
    }

    // Alone in its upstream, a dead backend costs 502s until it is marked down: then 503.
    s0.kill();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = gw.get("/solo/whoami", None).await;
        statuses.push(r.status);
        if r.status == 503 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&503),
        "{statuses:?}\n{}",
        gw.log_text()
    );
    assert!(
        statuses.iter().all(|s| [502, 503].contains(s)),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn tcp_probe_takes_a_killed_backend_out_and_back_after_rise() {
    let (b0, b1, s0) = (
        Backend::start("127.0.0.1:0", "b0").await,
        Backend::start("127.0.0.1:0", "b1").await,
        Backend::start("127.0.0.1:0", "s0").await,
    );
    let health = "max_fails = 0\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2";
    let gw = Gateway::start(&config([&b0, &b1], &s0, health)).await;
    gw.poll_until("/solo/whoami", None, 100, |r| r.body == "s0")
        .await;

    // Passive health is off: only the probes can make the gateway answer 503 (no backend
    // up) instead of 502 (connect refused).
    let addr = s0.addr;
    s0.kill();
    gw.poll_until("/solo/whoami", None, 100, |r| r.status == 503)
        .await;

    let _s0 = Backend::start(&addr.to_string(), "s0").await;
    gw.poll_until("/solo/whoami", None, 100, |r| {
        r.status == 200 && r.body == "s0"
    })
    .await;
}

/// Answers every request, upgrade or not, with `200 liar`: alive for tcp and http probes.
async fn liar() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nliar";
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn websocket_probe_catches_a_backend_that_refuses_the_upgrade() {
    let good = Backend::start("127.0.0.1:0", "good").await;
    let (liar_addr, liar_task) = liar().await;
    let s0 = Backend::start("127.0.0.1:0", "s0").await;
    let health = "max_fails = 0\ncheck = \"websocket\"\npath = \"/ws\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1";
    let cfg = config([&good, &good], &s0, health).replacen(
        &format!("name = \"b1\", address = \"{}\"", good.addr),
        &format!("name = \"b1\", address = \"{liar_addr}\""),
        1,
    );
    let gw = Gateway::start(&cfg).await;

    // Until the first probe round the liar takes its share; then only `good` answers.
    let mut streak = 0;
    for _ in 0..200 {
        let r = gw.get("/whoami", None).await;
        assert_eq!(r.status, 200);
        streak = if r.body == "good" { streak + 1 } else { 0 };
        if streak == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        streak,
        20,
        "the liar kept getting requests\n{}",
        gw.log_text()
    );
    assert!(
        gw.log_text().contains("upgrade refused"),
        "{}",
        gw.log_text()
    );
    liar_task.abort();
}
