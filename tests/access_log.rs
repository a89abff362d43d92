//! The access log: one JSON line per request and per tunnel close, with the fields an operator
//! greps for (client, upstream, backend, status, bytes, how it ended).

#[path = "common/ops_harness.rs"]
mod ops_harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ops_harness::{http_get_with, http_raw, Gateway, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn access_lines(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ringway::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_tunnels_get_one_line_each() {
    let (_backend, mut gw) = Gateway::with_echo_backend(&["--access-log"]).await;
    assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
    ws.echo(b"hello").await.unwrap();
    ws.finish().await.unwrap();

    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = access_lines(&gw);
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let request = lines
        .iter()
        .find(|v| v["end"] == "response")
        .expect("a request line");
    assert_eq!(request["status"], 200);
    assert_eq!(request["backend"], "b0");
    assert_eq!(request["upstream"], "main");
    assert!(request["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(request["bytes_down"].as_u64().unwrap() > 0);
    let tunnel = lines
        .iter()
        .find(|v| v["status"] == 101)
        .expect("a tunnel line");
    assert_eq!(tunnel["end"], "closed");
    // The tunnel's line names the upgrade request it started from, with its request id.
    assert_eq!(tunnel["method"], "GET", "{tunnel}");
    assert_ne!(tunnel["path"], "-", "{tunnel}");
    assert_eq!(tunnel["request_id"].as_str().unwrap().len(), 32, "{tunnel}");
    assert_ne!(tunnel["request_id"], request["request_id"], "{tunnel}");
    assert!(tunnel["bytes_up"].as_u64().unwrap() >= 5, "{tunnel}");
    assert!(tunnel["bytes_down"].as_u64().unwrap() >= 5, "{tunnel}");
    assert_eq!(gw.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default() {
    let (_backend, mut gw) = Gateway::with_echo_backend(&[]).await;
    for _ in 0..5 {
        assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    }
    assert_eq!(gw.stop(), Some(0));
    assert!(access_lines(&gw).is_empty());
}

/// A long tunnel's bytes reach `ringway_bytes_total` while it is still open (flushed every
/// MiB), so a dashboard of hour-long WebSockets is not flat until they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tunnel_bytes_reach_the_metrics_before_close() {
    let (_backend, mut gw) = Gateway::with_echo_backend(&[]).await;
    let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
    let chunk = vec![7u8; 60 * 1024];
    for _ in 0..20 {
        ws.echo(&chunk).await.unwrap(); // 1.2 MiB each way, tunnel still open
    }
    let up = [("backend", "b0"), ("direction", "to_backend")];
    let scrape = gw
        .metrics_until("bytes flushed", |s| {
            s.sum("ringway_bytes_total", &up) >= (1 << 20) as f64
        })
        .await;
    assert!(
        scrape.sum(
            "ringway_bytes_total",
            &[("backend", "b0"), ("direction", "to_client")]
        ) >= (1 << 20) as f64
    );
    ws.finish().await.unwrap();
    assert_eq!(gw.stop(), Some(0));
}

/// A backend that records every request head it gets and answers `200 ok`, closing.
async fn recording_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, heads)
}

/// The `X-Request-Id` values of one recorded head.
fn request_ids(head: &str) -> Vec<String> {
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("x-request-id"))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

async fn lines_until(gw: &Gateway, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = access_lines(gw);
        if lines.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_name_the_request_its_backend_address_and_its_id() {
    let (backend, heads) = recording_backend().await;
    let mut gw = Gateway::quick(&backend.to_string(), &["--access-log"]);
    let long = "a".repeat(129);
    let cases: [Option<&str>; 3] = [Some("4bf92f35-77b3-4da6"), Some(&long), None];
    for (i, id) in cases.iter().enumerate() {
        let extra = id.map_or(String::new(), |v| format!("X-Request-Id: {v}\r\n"));
        let req = format!(
            "POST /chat/{i}?sid=secret HTTP/1.1\r\nHost: app.example\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, _, _) = http_raw(gw.listen, req.as_bytes()).await.unwrap();
        assert_eq!(status, 200);
    }
    let lines = lines_until(&gw, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["host"], "app.example", "{line}");
        // The query (often a token or a session id) stays out of the log.
        assert_eq!(line["path"], format!("/chat/{i}"), "{line}");
        assert_eq!(line["backend_addr"], backend.to_string(), "{line}");
        // The backend got exactly one id, the one logged.
        let ids = request_ids(&heads[i]);
        assert_eq!(ids.len(), 1, "{}", heads[i]);
        assert_eq!(line["request_id"], ids[0], "{line}");
    }
    // A sane client id is kept; an oversized one and a missing one are generated.
    assert_eq!(lines[0]["request_id"], "4bf92f35-77b3-4da6");
    for line in &lines[1..] {
        let id = line["request_id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
    }
    assert_ne!(lines[1]["request_id"], lines[2]["request_id"]);
    assert_eq!(gw.stop(), Some(0));
}

/// `--access-log` (a command-line override of `log.access`) survives a SIGHUP reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_command_line_overrides() {
    let (backend, _heads) = recording_backend().await;
    let dir = ops_harness::temp_dir("access-reload");
    let path = dir.join("ringway.toml");
    std::fs::write(
        &path,
        format!(
            "admin = \"127.0.0.1:0\"\n[log]\naccess = false\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n\
             [[upstream]]\nname = \"app\"\nbackends = [{{ name = \"b0\", address = \"{backend}\" }}]\n"
        ),
    )
    .unwrap();
    let mut gw = Gateway::start(&["--config", path.to_str().unwrap(), "--access-log"]);
    assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    assert_eq!(lines_until(&gw, 1).await.len(), 1);

    gw.signal(libc::SIGHUP);
    gw.metrics_until("one good reload", |s| {
        s.sum("ringway_config_reloads_total", &[("result", "ok")]) == 1.0
    })
    .await;
    assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    let lines = lines_until(&gw, 2).await;
    assert_eq!(
        lines.len(),
        2,
        "no access line after the reload:\n{}",
        gw.log_text()
    );
    assert_eq!(gw.stop(), Some(0));
}
