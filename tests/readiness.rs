//! Readiness as a DaemonSet needs it, on the real binary's admin port: ready = config loaded,
//! listeners bound, not draining. An upstream with nothing up shows in `/backends` and
//! `ringway_upstream_up`, and makes `/readyz` 503 only when it says `required_for_ready = true`.

#[path = "common/ops_harness.rs"]
mod harness;

use std::time::Duration;

use harness::{dead_addr, http_get, temp_dir, Gateway};

/// Polls `/readyz` (bounded) until its status is `want`; returns the last status and body.
async fn readyz_until(gw: &Gateway, want: u16) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..200 {
        let (status, _, body) = http_get(gw.admin, "/readyz").await.unwrap();
        last = (status, body.trim().to_string());
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    last
}

/// Two upstreams whose backends are down by their health check (`start = "down"`, a dead
/// address); `must` is required for readiness when `required` is set, and points at `must_addr`.
fn config(required: bool, must_addr: std::net::SocketAddr) -> String {
    let health =
        "[upstream.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nstart = \"down\"\n";
    format!(
        "admin = \"127.0.0.1:0\"\nworkers = 1\n[timeouts]\naccept_delay = \"100ms\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"spare\"\n\
         [[route]]\npath_prefix = \"/must/\"\nupstream = \"must\"\n\
         [[upstream]]\nname = \"spare\"\nbackends = [{{ name = \"s0\", address = \"{}\" }}]\n{health}\
         [[upstream]]\nname = \"must\"\nrequired_for_ready = {required}\n\
         backends = [{{ name = \"m0\", address = \"{must_addr}\" }}]\n{health}",
        dead_addr(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_nothing_up_does_not_make_the_node_unready() {
    let dir = temp_dir("ready-optional");
    let path = dir.join("ringway.toml");
    std::fs::write(&path, config(false, dead_addr())).unwrap();
    let gw = Gateway::start(&["--config", path.to_str().unwrap()]);

    // Upstream health is reported where it belongs: /backends and the metrics.
    let s = gw
        .metrics_until("both upstreams down by health", |s| {
            s.has("ringway_upstream_up")
                && s.sum("ringway_upstream_up", &[("upstream", "spare")]) == 0.0
                && s.sum("ringway_upstream_up", &[("upstream", "must")]) == 0.0
        })
        .await;
    assert_eq!(s.sum("ringway_backend_up", &[]), 0.0, "{}", s.text);
    // ... and the node is ready all the same.
    assert_eq!(readyz_until(&gw, 200).await, (200, "ready".into()));
    let (_, _, body) = http_get(gw.admin, "/backends").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for u in v["upstreams"].as_array().unwrap() {
        assert_eq!(u["up"], false, "{body}");
        assert_eq!(u["required_for_ready"], false, "{body}");
        assert_eq!(u["backends"][0]["reason"], "down-health", "{body}");
    }
    // Still ready after a while of probes failing (nothing flips it later).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http_get(gw.admin, "/readyz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_for_ready_upstream_gates_readiness_until_a_backend_is_up() {
    let dir = temp_dir("ready-required");
    let path = dir.join("ringway.toml");
    std::fs::write(&path, config(true, dead_addr())).unwrap();
    let mut gw = Gateway::start(&["--config", path.to_str().unwrap()]);

    let (status, body) = readyz_until(&gw, 503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream must has no backend up"), "{body}");
    // The optional upstream is down too, but only `must` is named.
    assert!(!body.contains("spare"), "{body}");

    // A backend for `must` appears (reload onto a live address): ready.
    let backend = loadgen::spawn_backend(loadgen::Mode::Ws, "m0")
        .await
        .unwrap();
    std::fs::write(&path, config(true, backend.addr)).unwrap();
    gw.signal(libc::SIGHUP);
    assert_eq!(readyz_until(&gw, 200).await, (200, "ready".into()));
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_upstream_up", &[("upstream", "must")]),
        1.0,
        "{}",
        s.text
    );

    // Draining still wins over everything.
    gw.signal(libc::SIGTERM);
    assert_eq!(readyz_until(&gw, 503).await, (503, "draining".into()));
    assert_eq!(gw.exit_code(), Some(0));
}
