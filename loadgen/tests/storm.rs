//! The storm scenario against in-process echo backends, a backend that only answers once
//! every client is connected, a refused port, and through `compare` (a small Python proxy,
//! and HAProxy with splice-auto when it is installed). Counts are asserted, never a
//! duration or a speed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loadgen::compare::{run_compare, CompareConfig, GatewaySpec, Peer};
use loadgen::scenario::storm::MAX_STORM_CONNS;
use loadgen::scenario::{Kind, Proto, RunConfig};
use loadgen::{run_scenario, spawn_backend, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cfg(addr: std::net::SocketAddr, proto: Proto, conns: usize) -> RunConfig {
    let mut c = RunConfig::new(addr, proto);
    c.conns = conns;
    c.duration = Duration::from_secs(10);
    c.hold = Duration::from_millis(100);
    c.connect_timeout = Duration::from_secs(5);
    c
}

/// The tests of this file count the process's fds: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Every client is established against the echo backend, with no error, each counted once
/// in the latency, and all are closed again when the run returns (the backend's side
/// follows within a bounded wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_establishes_every_client_and_closes_them() {
    let _serial = SERIAL.lock().await;
    for (proto, mode) in [(Proto::Ws, Mode::Ws), (Proto::Tcp, Mode::Tcp)] {
        let b = spawn_backend(mode, "b").await.unwrap();
        // A small storm first: what the process opens once, lazily (runtime and resolver
        // state), is then open before the count, so the count compares connections only.
        let warm = run_scenario(Kind::Storm, &cfg(b.addr, proto, 10)).await;
        assert_eq!(warm.errors, 0, "{proto:?}: {}", warm.human());
        let mut before = open_fds();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = open_fds();
            if n >= before {
                break; // the warm-up's sockets are closed: stable
            }
            before = n;
        }
        let r = run_scenario(Kind::Storm, &cfg(b.addr, proto, 300)).await;
        assert_eq!(r.scenario, "storm");
        assert_eq!(r.conns, 300);
        assert_eq!(r.errors, 0, "{proto:?}: {}", r.human());
        assert_eq!(r.established, Some(300), "{proto:?}: {}", r.human());
        assert_eq!(r.messages, 300);
        assert_eq!(r.latency.as_ref().unwrap().count, 300);
        let (t, rate) = (r.established_s.unwrap(), r.conns_per_s.unwrap());
        assert!(t > 0.0 && rate > 0.0, "{}", r.human());
        assert!(
            r.human().contains("300 of 300 established"),
            "{}",
            r.human()
        );
        // The clients' sockets are gone; the backend's close once it reads the FIN or close
        // (a bounded wait: up to 20 s on a loaded machine).
        let mut now = open_fds();
        for _ in 0..400 {
            if now <= before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            now = open_fds();
        }
        assert!(now <= before, "{proto:?}: {before} fds before, {now} after");
    }
}

/// A backend that echoes nothing until all N clients are connected at once: a storm that
/// connected its clients one after another could never finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_clients_are_all_in_flight_together() {
    let _serial = SERIAL.lock().await;
    const N: usize = 64;
    let listener = loadgen::backend::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let peak2 = peak.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < N {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
        peak2.store(held.len(), Ordering::SeqCst);
        for mut s in held {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let r = run_scenario(Kind::Storm, &cfg(addr, Proto::Tcp, N)).await;
    server.abort();
    assert_eq!(peak.load(Ordering::SeqCst), N);
    assert_eq!(r.established, Some(N as u64), "{}", r.human());
    assert_eq!(r.errors, 0, "{}", r.human());
}

/// Failures are counted by kind, one per client, and nothing is called established.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_counts_refused_clients_by_kind() {
    let _serial = SERIAL.lock().await;
    let port = loadgen::compare::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = run_scenario(Kind::Storm, &cfg(addr, Proto::Ws, 40)).await;
    assert_eq!(r.established, Some(0), "{}", r.human());
    assert_eq!(r.errors, 40);
    assert_eq!(
        r.errors_by_kind.get("ECONNREFUSED"),
        Some(&40),
        "{}",
        r.human()
    );
    assert_eq!(r.established_s, None);
    assert_eq!(r.conns_per_s, None);
}

/// More clients than the fd budget allows are capped, and the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_is_capped_at_the_fd_budget() {
    let _serial = SERIAL.lock().await;
    let port = loadgen::compare::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = run_scenario(Kind::Storm, &cfg(addr, Proto::Tcp, MAX_STORM_CONNS + 500)).await;
    assert_eq!(r.conns, MAX_STORM_CONNS);
    assert_eq!(r.errors, MAX_STORM_CONNS as u64, "{}", r.human());
    assert!(
        r.limits_hit.iter().any(|l| l.contains("capped at 9000")),
        "{:?}",
        r.limits_hit
    );
}

fn python3() -> bool {
    std::process::Command::new("python3")
        .arg("-c")
        .arg("1")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Through a real forwarding process: direct and the gateway both establish every client,
/// and the gateway's CPU is divided by connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_storm_charges_cpu_per_connection() {
    let _serial = SERIAL.lock().await;
    if !python3() {
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
    s = await asyncio.start_server(handle, host, int(port), backlog=4096)
    async with s: await s.serve_forever()
asyncio.run(main())
"#;
    let dir = loadgen::compare::TempDir::new("storm-pyproxy").unwrap();
    let path = dir.0.join("proxy.py");
    std::fs::write(&path, script).unwrap();
    let c = CompareConfig {
        kind: Kind::Storm,
        run: cfg("127.0.0.1:1".parse().unwrap(), Proto::Ws, 100),
        gateways: vec![GatewaySpec {
            name: "pyproxy".into(),
            cmd: format!("exec python3 {} {{LISTEN}} {{BACKENDS}}", path.display()),
        }],
        peers: vec![],
        backends: 2,
        gateway_threads: None,
        startup_timeout: Duration::from_secs(10),
        tls: None,
    };
    let r = run_compare(&c, &|_| {}).await.unwrap();
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.conns, 100);
    assert_eq!(r.targets.len(), 2);
    for t in &r.targets {
        assert_eq!(t.report.established, Some(100), "{}", t.report.human());
        assert_eq!(t.report.errors, 0, "{}", t.report.human());
        assert!(t.ratios.throughput_vs_direct.is_some());
    }
    let cost = r.targets[1].gateway.as_ref().unwrap();
    assert_eq!(cost.unit, "connection");
    assert_eq!(cost.units, 100.0);
    assert!(cost.cpu_us_per_unit.is_some());
    let text = loadgen::compare::human(&r);
    assert!(
        text.contains("storm (pyproxy): 100 of 100 established"),
        "{text}"
    );
}

/// HAProxy with `option splice-auto` starts from our config and forwards a storm and a
/// pingpong with no error (skipped when HAProxy is not installed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_splice_peer_forwards() {
    let _serial = SERIAL.lock().await;
    if !std::path::Path::new(Peer::HaproxySplice.binary()).exists() {
        eprintln!("haproxy missing: skipped");
        return;
    }
    for (kind, proto) in [(Kind::Storm, Proto::Ws), (Kind::Pingpong, Proto::Tcp)] {
        let mut run = cfg("127.0.0.1:1".parse().unwrap(), proto, 50);
        if kind == Kind::Pingpong {
            run.duration = Duration::from_millis(500);
        }
        let c = CompareConfig {
            kind,
            run,
            gateways: vec![],
            peers: vec![Peer::HaproxySplice],
            backends: 2,
            gateway_threads: None,
            startup_timeout: Duration::from_secs(10),
            tls: None,
        };
        let r = run_compare(&c, &|_| {}).await.unwrap();
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        let t = &r.targets[1];
        assert_eq!(t.name, "haproxy-splice");
        assert!(t.command.as_ref().unwrap().contains("haproxy"));
        assert_eq!(t.report.errors, 0, "{}", t.report.human());
        assert!(t.report.messages > 0, "{}", t.report.human());
        if kind == Kind::Storm {
            assert_eq!(t.report.established, Some(50));
        }
    }
}
