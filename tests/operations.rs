//! What docs/operations.md promises an operator, against the real binary: a reload adds and
//! removes listeners, and the admin port keeps answering while the gateway drains.

#[path = "common/ops_harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{http_get, http_get_with, temp_dir, Gateway, Ws};

fn config(backend: SocketAddr, second_listener: bool) -> String {
    let mut c = format!(
        "admin = \"127.0.0.1:0\"\nworkers = 1\n[timeouts]\naccept_delay = \"0s\"\ndrain = \"30s\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [[upstream]]\nname = \"app\"\nbackends = [{{ name = \"b0\", address = \"{backend}\" }}]\n"
    );
    if second_listener {
        c.push_str("[[listener]]\nname = \"extra\"\nbind = \"127.0.0.2:0\"\nupstream = \"app\"\n");
    }
    c
}

/// The address of the listener a reload added, from its JSON log line (bounded wait).
async fn added_listener(gw: &Gateway) -> SocketAddr {
    for _ in 0..200 {
        for line in gw.log.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] == "listening (added by reload)" && v["listener"] == "extra" {
                return v["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no listener added by reload:\n{}", gw.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_listeners() {
    let backend = loadgen::spawn_backend(loadgen::Mode::Ws, "b0")
        .await
        .unwrap();
    let dir = temp_dir("ops-listeners");
    let path = dir.join("ringway.toml");
    std::fs::write(&path, config(backend.addr, false)).unwrap();
    let mut gw = Gateway::start(&["--config", path.to_str().unwrap()]);

    std::fs::write(&path, config(backend.addr, true)).unwrap();
    gw.signal(libc::SIGHUP);
    let extra = added_listener(&gw).await;
    assert_eq!(http_get_with(extra, &[]).await.unwrap().0, 200);
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_config_reloads_total", &[("result", "ok")]),
        1.0
    );

    // Removed again: it stops accepting (bounded poll), the first listener keeps serving.
    std::fs::write(&path, config(backend.addr, false)).unwrap();
    gw.signal(libc::SIGHUP);
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(extra).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "the removed listener still accepts");
    assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    assert_eq!(gw.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_answers_while_draining() {
    let backend = loadgen::spawn_backend(loadgen::Mode::Ws, "b0")
        .await
        .unwrap();
    let dir = temp_dir("ops-drain");
    let path = dir.join("ringway.toml");
    std::fs::write(&path, config(backend.addr, false)).unwrap();
    let mut gw = Gateway::start(&["--config", path.to_str().unwrap()]);
    let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
    ws.echo(b"before").await.unwrap();

    gw.signal(libc::SIGTERM);
    // Listeners close (accept_delay 0s) while the tunnel drains...
    let mut closed = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(gw.listen).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(closed, "listeners still accept after SIGTERM");
    // ... and the admin port still answers: not ready, metrics counting the open tunnel.
    let (status, _, body) = http_get(gw.admin, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (503, "draining"));
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_connections_active", &[("listener", "web")]),
        1.0,
        "{}",
        s.text
    );
    ws.echo(b"while draining").await.unwrap();
    ws.finish().await.unwrap();
    assert_eq!(gw.exit_code(), Some(0));
}

/// The gateway keeps its heap off transparent huge pages (docs/operations.md, "Memory"): the
/// kernel reports the process's THP switch off, while it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heap_stays_off_huge_pages() {
    let (_backend, mut gw) = Gateway::with_echo_backend(&[]).await;
    assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    // Kernels before 5.0 have no such line; this machine's has.
    assert_eq!(thp, Some("0"), "THP_enabled of the gateway:\n{status}");
    assert_eq!(gw.stop(), Some(0));
}
