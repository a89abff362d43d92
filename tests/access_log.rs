//! The access log: one JSON line per request and per tunnel close, with the fields an operator
//! greps for (client, upstream, backend, status, bytes, how it ended).

#[path = "common/ops_harness.rs"]
mod ops_harness;

use std::time::Duration;

use ops_harness::{http_get_with, Gateway, Ws};

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
