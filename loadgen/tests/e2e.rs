//! Small end-to-end runs of every scenario against in-process echo backends, and of
//! `compare` with gateway commands that fail or are missing. Counts are asserted, never a
//! duration or a speed.

use std::time::Duration;

use loadgen::compare::{run_compare, CompareConfig, GatewaySpec, Peer};
use loadgen::scenario::{Kind, Proto, RunConfig};
use loadgen::{run_scenario, spawn_backend, Mode};

fn cfg(addr: std::net::SocketAddr, proto: Proto) -> RunConfig {
    let mut c = RunConfig::new(addr, proto);
    c.duration = Duration::from_millis(500);
    c.hold = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(5);
    c
}

fn mode(p: Proto) -> Mode {
    match p {
        Proto::Ws => Mode::Ws,
        Proto::Tcp => Mode::Tcp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_closed_loop_both_protocols() {
    for proto in [Proto::Ws, Proto::Tcp] {
        let b = spawn_backend(mode(proto), "b").await.unwrap();
        let mut c = cfg(b.addr, proto);
        c.conns = 4;
        c.duration = Duration::from_secs(1);
        let r = run_scenario(Kind::Pingpong, &c).await;
        assert!(r.messages > 0, "{proto:?}: {}", r.human());
        assert_eq!(r.errors, 0, "{proto:?}: {}", r.human());
        let l = r.latency.as_ref().unwrap();
        assert_eq!(l.count, r.messages);
        assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_open_loop_sends_on_schedule() {
    let b = spawn_backend(Mode::Ws, "b").await.unwrap();
    let mut c = cfg(b.addr, Proto::Ws);
    c.conns = 2;
    c.rate = Some(200.0);
    c.duration = Duration::from_millis(500);
    let r = run_scenario(Kind::Pingpong, &c).await;
    assert_eq!(r.errors, 0, "{}", r.human());
    // 200/s for 0.5 s over 2 connections: messages due at 0, 5, …, 495 ms → exactly 100.
    assert_eq!(r.messages, 100, "{}", r.human());
    assert_eq!(r.target_rate, Some(200.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_fifty_connections_survive() {
    for proto in [Proto::Ws, Proto::Tcp] {
        let b = spawn_backend(mode(proto), "b").await.unwrap();
        let mut c = cfg(b.addr, proto);
        c.conns = 50;
        let r = run_scenario(Kind::Idle, &c).await;
        assert_eq!(r.opened, Some(50), "{}", r.human());
        assert_eq!(r.survived, Some(50), "{}", r.human());
        assert_eq!(r.errors, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_completes_handshakes() {
    for proto in [Proto::Ws, Proto::Tcp] {
        let b = spawn_backend(mode(proto), "b").await.unwrap();
        let mut c = cfg(b.addr, proto);
        c.concurrency = 2;
        let r = run_scenario(Kind::Rate, &c).await;
        assert!(r.handshakes.unwrap() > 0, "{}", r.human());
        assert_eq!(r.errors, 0, "{}", r.human());
        assert_eq!(r.latency.as_ref().unwrap().count, r.handshakes.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_moves_bytes_both_ways() {
    for proto in [Proto::Ws, Proto::Tcp] {
        let b = spawn_backend(mode(proto), "b").await.unwrap();
        let mut c = cfg(b.addr, proto);
        c.conns = 2;
        c.frame = 16 * 1024;
        let r = run_scenario(Kind::Bulk, &c).await;
        let (sent, recv) = (r.bytes_sent.unwrap(), r.bytes_received.unwrap());
        assert!(sent > 0 && recv > 0, "{}", r.human());
        assert_eq!(
            sent,
            recv,
            "everything sent comes back after the drain: {}",
            r.human()
        );
        assert_eq!(r.errors, 0, "{}", r.human());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_target_is_an_error_not_a_hang() {
    let port = loadgen::compare::free_port().unwrap();
    let mut c = cfg(format!("127.0.0.1:{port}").parse().unwrap(), Proto::Ws);
    c.conns = 3;
    let r = run_scenario(Kind::Pingpong, &c).await;
    assert_eq!(r.messages, 0);
    assert_eq!(
        r.errors_by_kind.get("ECONNREFUSED"),
        Some(&3),
        "{}",
        r.human()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_reports_direct_and_skips_broken_or_missing_gateways() {
    let mut run = cfg("127.0.0.1:1".parse().unwrap(), Proto::Ws);
    run.conns = 2;
    run.duration = Duration::from_millis(300);
    let c = CompareConfig {
        kind: Kind::Pingpong,
        run,
        gateways: vec![GatewaySpec {
            name: "broken".into(),
            cmd: "echo cannot start {LISTEN} >&2; exit 3".into(),
        }],
        peers: if std::path::Path::new("/usr/sbin/nginx").exists() {
            vec![]
        } else {
            vec![Peer::Nginx]
        },
        backends: 2,
        gateway_threads: None,
        startup_timeout: Duration::from_secs(3),
        tls: None,
    };
    let r = run_compare(&c, &|_| {}).await.unwrap();
    assert_eq!(r.targets.len(), 1);
    assert_eq!(r.targets[0].name, "direct");
    assert!(r.targets[0].report.messages > 0);
    assert!(
        r.skipped
            .iter()
            .any(|s| s.contains("broken") && s.contains("cannot start")),
        "{:?}",
        r.skipped
    );
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        assert!(r
            .skipped
            .iter()
            .any(|s| s.contains("nginx is not installed (apt-get install nginx)")));
    }
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(json["machine"]["kernel"].as_str().is_some());
}

/// A real gateway process: a tiny forwarding proxy in Python, if python3 is present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_measures_a_forwarding_gateway() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("1")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("python3 missing: skipped");
        return;
    }
    let script = r#"
import asyncio, sys
host, port = sys.argv[1].rsplit(':', 1)
backends = [b.rsplit(':', 1) for b in sys.argv[2].split(',')]
n = 0
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data); await w.drain()
    finally:
        w.close()
async def handle(cr, cw):
    global n
    bh, bp = backends[n % len(backends)]; n += 1
    br, bw = await asyncio.open_connection(bh, int(bp))
    await asyncio.gather(pipe(cr, bw), pipe(br, cw), return_exceptions=True)
async def main():
    s = await asyncio.start_server(handle, host, int(port))
    async with s: await s.serve_forever()
asyncio.run(main())
"#;
    let dir = loadgen::compare::TempDir::new("pyproxy").unwrap();
    let path = dir.0.join("proxy.py");
    std::fs::write(&path, script).unwrap();
    let mut run = cfg("127.0.0.1:1".parse().unwrap(), Proto::Tcp);
    run.conns = 20;
    run.hold = Duration::from_millis(300);
    let c = CompareConfig {
        kind: Kind::Idle,
        run,
        gateways: vec![GatewaySpec {
            name: "pyproxy".into(),
            // {WORKERS} is rendered even for a gateway that ignores it.
            cmd: format!(
                "exec python3 {} {{LISTEN}} {{BACKENDS}} {{WORKERS}}",
                path.display()
            ),
        }],
        peers: vec![],
        backends: 2,
        gateway_threads: Some(1),
        startup_timeout: Duration::from_secs(10),
        tls: None,
    };
    let r = run_compare(&c, &|_| {}).await.unwrap();
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.targets.len(), 2);
    let gw = &r.targets[1];
    assert_eq!(gw.report.survived, Some(20), "{}", gw.report.human());
    assert_eq!(r.gateway_threads, 1);
    assert!(
        gw.command.as_deref().unwrap().ends_with(" 1"),
        "{:?}",
        gw.command
    );
    let cost = gw.gateway.as_ref().unwrap();
    assert!(cost.rss_bytes_end > 0 && cost.processes >= 1 && cost.threads >= 1);
    assert!(cost.rss_per_conn_bytes.is_some());
    // The ratio to "ringway" falls back to the first gateway: itself.
    assert_eq!(
        gw.ratios.cost_vs_ringway.map(|v| (v * 1000.0).round()),
        cost.rss_per_conn_bytes.filter(|v| *v > 0.0).map(|_| 1000.0)
    );
    // The gateway was stopped.
    let cmd = gw.command.clone().unwrap();
    let out = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(&cmd)
        .output();
    if let Ok(o) = out {
        assert!(
            o.stdout.is_empty(),
            "gateway still running: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}
