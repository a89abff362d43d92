//! The admin API against the real binary under real traffic: numbers in /metrics match what
//! the clients did, /lookup agrees with where connections actually land, probes and the
//! backend view answer, and bad admin requests get clean errors.

#[path = "common/ops_harness.rs"]
mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{dead_addr, header, http_get, http_get_with, http_post, http_raw, Gateway, Ws};
use loadgen::Mode;

async fn backends(n: usize) -> (Vec<loadgen::Backend>, String) {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            loadgen::spawn_backend(Mode::Ws, &format!("b{i}"))
                .await
                .unwrap(),
        );
    }
    let list = v
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    (v, list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_open_tunnels_and_count_their_bytes() {
    let (_b, list) = backends(2).await;
    let gw = Gateway::quick(&list, &["--workers", "2"]);
    const N: usize = 12;
    let mut clients = Vec::new();
    for i in 0..N {
        let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
        assert_eq!(ws.status, 101);
        // Different sizes per client, so a byte miscount on one shows.
        ws.echo(&vec![i as u8; 10 + i]).await.unwrap();
        ws.echo(&vec![7u8; 300 + 17 * i]).await.unwrap();
        clients.push(ws);
    }
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for c in &clients {
        *per_backend.entry(c.backend()).or_default() += 1;
    }
    let s = gw
        .metrics_until("the tunnels as live connections", |s| {
            s.sum(
                "ringway_upstream_connections_active",
                &[("upstream", "main")],
            ) == N as f64
        })
        .await;
    for name in ["b0", "b1"] {
        let want = per_backend.get(name).copied().unwrap_or(0) as f64;
        let got = s.sum(
            "ringway_upstream_connections_active",
            &[("upstream", "main"), ("backend", name)],
        );
        assert_eq!(got, want, "backend {name}:\n{}", s.text);
    }
    assert_eq!(
        s.sum("ringway_connections_active", &[("listener", "main")]),
        N as f64
    );
    assert_eq!(
        s.sum(
            "ringway_upgrades_total",
            &[("upstream", "main"), ("result", "ok")]
        ),
        N as f64
    );
    assert_eq!(
        s.sum("ringway_io_backend", &[]),
        1.0,
        "exactly one io backend is in use"
    );
    assert_eq!(s.sum("ringway_build_info", &[]), 1.0);

    let mut moved: HashMap<String, (u64, u64)> = HashMap::new();
    for c in clients {
        let name = c.backend();
        let (sent, received) = c.finish().await.unwrap();
        let e = moved.entry(name).or_default();
        e.0 += sent;
        e.1 += received;
    }
    let s = gw
        .metrics_until("every tunnel closed", |s| {
            s.sum("ringway_upstream_connections_active", &[]) == 0.0
                && s.sum("ringway_tunnel_duration_seconds_count", &[]) == N as f64
        })
        .await;
    assert_eq!(
        s.sum("ringway_connections_active", &[("listener", "main")]),
        0.0
    );
    assert_eq!(
        s.sum("ringway_connections_total", &[("listener", "main")]),
        N as f64
    );
    for (name, (sent, received)) in moved {
        let b = [("upstream", "main"), ("backend", name.as_str())];
        let up = s.sum(
            "ringway_bytes_total",
            &[b[0], b[1], ("direction", "to_backend")],
        );
        let down = s.sum(
            "ringway_bytes_total",
            &[b[0], b[1], ("direction", "to_client")],
        );
        assert_eq!(
            (up, down),
            (sent as f64, received as f64),
            "bytes of {name}:\n{}",
            s.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_kind_and_side() {
    let dead = dead_addr().to_string();
    let gw = Gateway::quick(&dead, &["--workers", "1"]);
    let (status, _, _) = http_raw(gw.listen, b"GARBAGE / NOPE\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status, 400);
    // The only backend refuses: 502 while it is tried, 503 once passive health marks it down.
    let mut saw_503 = false;
    for _ in 0..20 {
        let (status, _, _) = http_get(gw.listen, "/").await.unwrap();
        assert!(status == 502 || status == 503, "status {status}");
        if status == 503 {
            saw_503 = true;
            break;
        }
    }
    assert!(
        saw_503,
        "never got a 503 from a gateway whose only backend is down"
    );
    let s = gw.metrics().await;
    assert_eq!(
        s.sum(
            "ringway_errors_total",
            &[("kind", "bad_request"), ("side", "client")]
        ),
        1.0,
        "{}",
        s.text
    );
    assert!(
        s.sum(
            "ringway_errors_total",
            &[("kind", "no_backend"), ("side", "backend")]
        ) >= 1.0,
        "{}",
        s.text
    );
    assert!(
        s.sum(
            "ringway_errors_total",
            &[("kind", "connect_failed"), ("side", "backend")]
        ) >= 1.0,
        "{}",
        s.text
    );
    assert_eq!(
        s.sum("ringway_backend_up", &[("backend", "b0")]),
        0.0,
        "{}",
        s.text
    );
    let (_, _, body) = http_get(gw.admin, "/backends").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["upstreams"][0]["backends"][0]["reason"], "down-passive",
        "{body}"
    );
    assert_eq!(v["upstreams"][0]["up"], false, "{body}");
    assert_eq!(
        s.sum("ringway_upstream_up", &[("upstream", "main")]),
        0.0,
        "{}",
        s.text
    );
    // An upstream with nothing up is reported above, not by readiness (issue 11 item 7): the
    // node can still take connections.
    let (status, _, body) = http_get(gw.admin, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
}

/// Waits until the upstream holds no live connection, so bounded load can't move the next key.
async fn wait_idle(gw: &Gateway) {
    gw.metrics_until("an idle upstream", |s| {
        s.sum("ringway_upstream_connections_active", &[]) == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_agrees_with_where_hashed_connections_land() {
    let (_b, list) = backends(3).await;
    let gw = Gateway::quick(
        &list,
        &["--workers", "2", "--balance", "hash:header:X-Device-Id"],
    );
    let mut seen = std::collections::HashSet::new();
    for i in 0..12 {
        let key = format!("device-{i}");
        let (status, _, body) = http_get(gw.admin, &format!("/lookup?upstream=main&key={key}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let predicted = v["backend"].as_str().unwrap().to_string();
        let ws = Ws::connect(gw.listen, &[("X-Device-Id", &key)])
            .await
            .unwrap();
        assert_eq!(
            ws.backend(),
            predicted,
            "key {key}: /lookup said {predicted}"
        );
        // /backends sees the tunnel on that backend, and (bounded load being opt-in) a second
        // /lookup gives the same answer with the connection open, and says it is live there.
        let (_, _, body) = http_get(gw.admin, &format!("/lookup?upstream=main&key={key}"))
            .await
            .unwrap();
        let again: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(again["backend"], predicted.as_str(), "{body}");
        assert_eq!(again["key_live_on"], predicted.as_str(), "{body}");
        let (_, _, body) = http_get(gw.admin, "/backends").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let b = v["upstreams"][0]["backends"].as_array().unwrap();
        let holder = b.iter().find(|b| b["name"] == predicted.as_str()).unwrap();
        assert_eq!(holder["live_connections"], 1, "{body}");
        ws.finish().await.unwrap();
        seen.insert(predicted);
        wait_idle(&gw).await;
    }
    assert!(
        seen.len() > 1,
        "12 keys all on one backend: the test would prove little"
    );
    let (status, _, _) = http_get(gw.admin, "/lookup?upstream=nope&key=a")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _, _) = http_get(gw.admin, "/lookup?upstream=main").await.unwrap();
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_by_cookie_agrees_with_stickiness() {
    let (_b, list) = backends(3).await;
    let gw = Gateway::quick(
        &list,
        &[
            "--workers",
            "2",
            "--balance",
            "cookie",
            "--cookie-secret",
            "test-secret",
        ],
    );
    for _ in 0..4 {
        let (status, headers, _) = http_get(gw.listen, "/").await.unwrap();
        assert_eq!(status, 200);
        let first = header(&headers, "x-backend").unwrap().to_string();
        let set = header(&headers, "set-cookie").expect("a route cookie is set");
        let value = set
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_string();
        let (status, _, body) =
            http_get(gw.admin, &format!("/lookup?upstream=main&cookie={value}"))
                .await
                .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["backend"], first.as_str(), "{body}");
        for _ in 0..3 {
            let cookie = format!("ringway={value}");
            let (_, headers, _) = http_get_with(gw.listen, &[("Cookie", &cookie)])
                .await
                .unwrap();
            assert_eq!(header(&headers, "x-backend"), Some(first.as_str()));
        }
    }
    let (status, _, body) = http_get(gw.admin, "/lookup?upstream=main&cookie=AAAAAAAAAAAAAAAA")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cookie_state"], "invalid", "{body}");
    assert_eq!(v["re_placed_by"], "least-conn", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_backends_view_and_bad_requests() {
    let (b, list) = backends(2).await;
    let gw = Gateway::quick(&list, &["--workers", "2"]);
    assert_eq!(http_get(gw.admin, "/healthz").await.unwrap().0, 200);
    let mut ready = None;
    for _ in 0..100 {
        let (status, _, body) = http_get(gw.admin, "/readyz").await.unwrap();
        ready = Some((status, body));
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ready.map(|(s, b)| (s, b.trim().to_string())),
        Some((200, "ready".into()))
    );

    let (status, headers, body) = http_get(gw.admin, "/backends").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v["upstreams"][0]["backends"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for (i, backend) in list.iter().enumerate() {
        assert_eq!(backend["name"], format!("b{i}"));
        assert_eq!(backend["address"], b[i].addr.to_string());
        assert_eq!(backend["state"], "active");
        assert_eq!(backend["reason"], "active");
        assert_eq!(backend["up"], true);
    }

    // Bad requests to the admin port: clean statuses, and the port keeps serving.
    assert_eq!(http_get(gw.admin, "/nope").await.unwrap().0, 404);
    let (status, headers, _) = http_post(gw.admin, "/metrics").await.unwrap();
    assert_eq!(
        (status, header(&headers, "allow")),
        (405, Some("GET, HEAD"))
    );
    assert_eq!(http_get(gw.admin, "/reload").await.unwrap().0, 405);
    assert_eq!(
        http_raw(gw.admin, b"\x00\x01garbage\r\n\r\n")
            .await
            .unwrap()
            .0,
        400
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http_raw(gw.admin, huge.as_bytes()).await.unwrap().0, 431);
    // Quick form has no file: a reload is refused and counted.
    let (status, _, body) = http_post(gw.admin, "/reload").await.unwrap();
    assert_eq!(status, 500, "{body}");
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_config_reloads_total", &[("result", "failed")]),
        1.0
    );
}

/// Issue 11 item 10: process figures from /proc at scrape time, one family per meaning
/// (upgrades and requests, no duplicates), and per-upstream response-time histograms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_merged_families_and_response_times() {
    let (_b, list) = backends(1).await;
    let gw = Gateway::quick(&list, &["--workers", "2"]);
    const N: usize = 3;
    for _ in 0..N {
        assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    }
    let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
    assert_eq!(ws.status, 101);
    // The gateway counts the upgrade after it wrote the 101 the client has already read: wait
    // for both counts, not only the responses'.
    let s = gw
        .metrics_until("three responses timed and the upgrade counted", |s| {
            s.sum(
                "ringway_upstream_response_seconds_count",
                &[("upstream", "main")],
            ) == N as f64
                && s.sum(
                    "ringway_upgrades_total",
                    &[("upstream", "main"), ("result", "ok")],
                ) == 1.0
        })
        .await;

    // What the test can see of the gateway process itself.
    let pid = gw.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let max: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse()
        .unwrap();
    let open = s.sum("process_open_fds", &[]);
    // Both counts see the open tunnel's sockets; the gateway may have opened or closed an fd
    // for the scrape itself in between.
    assert!(
        (open - fds).abs() <= 2.0,
        "open {open} vs /proc {fds}\n{}",
        s.text
    );
    assert_eq!(s.sum("process_max_fds", &[]), max, "{}", s.text);
    assert!(
        s.sum("process_resident_memory_bytes", &[]) > 1e6,
        "{}",
        s.text
    );
    assert!(s.has("process_cpu_seconds_total"), "{}", s.text);

    // One family per meaning: upgrades by result, responses by backend and class.
    assert!(!s.has("ringway_handshakes_total"), "{}", s.text);
    assert!(!s.has("ringway_http_requests_total"), "{}", s.text);
    assert_eq!(
        s.sum(
            "ringway_upgrades_total",
            &[("upstream", "main"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        s.sum(
            "ringway_requests_total",
            &[("upstream", "main"), ("code", "2xx")]
        ),
        N as f64
    );
    // The histogram's +Inf bucket holds every response; the 101 is not a timed response.
    assert_eq!(
        s.sum(
            "ringway_upstream_response_seconds_bucket",
            &[("upstream", "main"), ("le", "+Inf")]
        ),
        N as f64,
        "{}",
        s.text
    );
    ws.echo(b"still open").await.unwrap();
    ws.finish().await.unwrap();
}
