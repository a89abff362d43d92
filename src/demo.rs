//! `ringway demo`: the first thing a newcomer runs. Starts three echo backends and the gateway
//! on loopback (in this process, so nothing is left behind), plays a socket.io-like session per
//! client (long-polls on fresh TCP connections, then a WebSocket upgrade) to show cookie
//! stickiness, then measures a short ping-pong through the gateway against a direct connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{raw, validate_raw};
use crate::runtime::DataPlane;

const CLIENTS: usize = 6;
const POLLS: usize = 3;

pub fn run() -> i32 {
    crate::logging::init(crate::config::LogFormat::Text, "warn");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start a runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(55), demo()).await }) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("demo failed: {e:#}");
            1
        }
        Err(_) => {
            eprintln!("demo failed: did not finish within 55 s");
            1
        }
    }
}

async fn demo() -> anyhow::Result<()> {
    println!("ringway demo: 3 echo backends, the gateway in front, a socket.io-like load\n");
    let mut backends = Vec::new();
    for i in 0..3 {
        backends.push(loadgen::spawn_backend(loadgen::Mode::Ws, &format!("ws-{i}")).await?);
    }
    for b in &backends {
        println!("  backend {} on {}", b.name, b.addr);
    }

    let port = free_port()?;
    let mut r = raw::RawConfig {
        workers: Some(1),
        admin: Some(String::new()),
        ..Default::default()
    };
    r.listener.push(raw::RawListener {
        name: Some("web".into()),
        bind: Some(format!("127.0.0.1:{port}")),
        upstream: Some("chat".into()),
        ..Default::default()
    });
    r.upstream.push(raw::RawUpstream {
        name: Some("chat".into()),
        balance: Some("cookie".into()),
        cookie: Some(raw::RawCookie {
            secret: Some("demo-secret".into()),
            ..Default::default()
        }),
        backends: Some(
            backends
                .iter()
                .map(|b| raw::RawBackend {
                    name: Some(b.name.clone()),
                    address: Some(b.addr.to_string()),
                    weight: None,
                })
                .collect(),
        ),
        ..Default::default()
    });
    r.timeouts.drain = Some("1s".into());
    let config = validate_raw(r).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plane = DataPlane::start(config)?;
    let gw = plane.bound[0];
    println!(
        "  gateway  on {gw} (io: {}, balance = \"cookie\", fallback least-conn)\n",
        plane.io.as_str()
    );

    let result = session_and_load(gw, backends[0].addr).await;
    tokio::task::spawn_blocking(move || plane.stop()).await?;
    result?;
    println!("\nwhere to look next:");
    println!("  README.md                      run it in front of your own backends (quick form / config file)");
    println!("  docs/architecture.md           how a connection flows through the gateway");
    println!("  target/release/loadgen compare  the gateway's cost against a direct connection, HAProxy, nginx");
    println!("  ringway run --admin 127.0.0.1:9900 ...  then curl /metrics, /backends, /lookup?upstream=..&key=..");
    Ok(())
}

async fn session_and_load(gw: SocketAddr, direct: SocketAddr) -> anyhow::Result<()> {
    println!("socket.io-like sessions, all clients from one source IP (think: one office NAT):");
    let mut per_backend = std::collections::BTreeMap::new();
    for c in 1..=CLIENTS {
        let first = http_get(gw, "/socket.io/?EIO=4&transport=polling", None).await?;
        let cookie = first
            .set_cookie
            .clone()
            .context("the first response carries no route cookie")?;
        let mut line = format!("  client {c}: poll → {} (cookie set)", first.backend);
        for _ in 1..POLLS {
            let r = http_get(gw, "/socket.io/?EIO=4&transport=polling", Some(&cookie)).await?;
            if r.backend != first.backend {
                bail!(
                    "client {c}: sticky routing broken: {} then {}",
                    first.backend,
                    r.backend
                );
            }
            line.push_str(&format!(", poll → {}", r.backend));
        }
        let header = format!("ringway={cookie}");
        let (mut ws, resp) = loadgen::WsClient::connect(
            &gw.to_string(),
            "/socket.io/?EIO=4&transport=websocket",
            &[("Cookie", header.as_str())],
        )
        .await
        .map_err(|e| anyhow::anyhow!("websocket upgrade: {e:?}"))?;
        let ws_backend = resp.header("x-backend").unwrap_or("?").to_string();
        if ws_backend != first.backend {
            bail!(
                "client {c}: upgrade went to {ws_backend}, session is on {}",
                first.backend
            );
        }
        ws.send_text("2probe")
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let echoed = ws.recv().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if !matches!(&echoed, loadgen::Message::Text(t) if t == "2probe") {
            bail!("client {c}: echo mismatch");
        }
        line.push_str(&format!(", websocket → {ws_backend}   sticky ✓"));
        println!("{line}");
        *per_backend.entry(first.backend.clone()).or_insert(0) += 1;
    }
    let spread: Vec<String> = per_backend
        .iter()
        .map(|(b, n)| format!("{b}: {n}"))
        .collect();
    println!("  one source IP, spread by cookie: {}", spread.join(", "));

    let forged = http_get(gw, "/socket.io/", Some("not-a-real-cookie")).await?;
    println!(
        "  a forged cookie is rebalanced: → {} with a new cookie ({})",
        forged.backend,
        if forged.set_cookie.is_some() {
            "re-set ✓"
        } else {
            "NOT re-set"
        }
    );
    if forged.set_cookie.is_none() {
        bail!("a forged cookie was not re-set");
    }

    println!("\nping-pong, 16 WebSocket connections × 64 B, 3 s each (same machine, same run):");
    let mut cfg = loadgen::RunConfig::new(direct, loadgen::Proto::Ws);
    cfg.conns = 16;
    cfg.duration = Duration::from_secs(3);
    let d = loadgen::run_scenario(loadgen::Kind::Pingpong, &cfg).await;
    cfg.target = gw;
    cfg.host = gw.to_string();
    let g = loadgen::run_scenario(loadgen::Kind::Pingpong, &cfg).await;
    for (name, r) in [("direct", &d), ("ringway", &g)] {
        let (p50, p99) = r
            .latency
            .as_ref()
            .map_or((0.0, 0.0), |l| (l.p50_us, l.p99_us));
        println!(
            "  {name:8} {:>9.0} msg/s   p50 {:>6.0} µs   p99 {:>6.0} µs   errors {}",
            r.msgs_per_s.unwrap_or(0.0),
            p50,
            p99,
            r.errors
        );
    }
    if g.errors > 0 || g.messages == 0 {
        bail!("the load through the gateway had errors");
    }
    println!("  (the gateway and the load generator share 2 cores here; `loadgen compare` measures CPU per message)");
    Ok(())
}

struct Answer {
    backend: String,
    set_cookie: Option<String>,
}

/// One request on a fresh TCP connection, like a long-poll from a browser.
async fn http_get(gw: SocketAddr, path: &str, cookie: Option<&str>) -> anyhow::Result<Answer> {
    let mut s = tokio::net::TcpStream::connect(gw).await?;
    let cookie_line = cookie.map_or(String::new(), |c| format!("Cookie: ringway={c}\r\n"));
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: demo\r\n{cookie_line}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {status}");
    }
    let mut backend = None;
    let mut set_cookie = None;
    for l in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-backend") {
            backend = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("set-cookie") {
            set_cookie = value
                .strip_prefix("ringway=")
                .and_then(|v| v.split(';').next())
                .map(str::to_string);
        }
    }
    Ok(Answer {
        backend: backend.context("response without X-Backend")?,
        set_cookie,
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
