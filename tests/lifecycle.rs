//! Process lifecycle against the real binary: SIGHUP reloads under load (no open connection is
//! cut, a bad file changes nothing), SIGTERM drain (not ready at once, open tunnels keep
//! working, exit 0), the two-process handover on one port, and JSON logs.

#[path = "common/ops_harness.rs"]
mod harness;

use std::path::Path;
use std::time::Duration;

use harness::{http_get, http_get_with, temp_dir, Gateway, Ws};
use loadgen::Mode;

/// A config with upstreams `a` (a0, a1) and `b` (b0, b1); `variant` picks routes and policies.
fn config(a: &[String], b: &[String], variant: usize, extra: &str) -> String {
    let (a_balance, b_balance, route, default) = match variant {
        0 => ("round-robin", "round-robin", "", "a"),
        1 => (
            "least-conn",
            "round-robin",
            "[[route]]\npath_prefix = \"/b/\"\nupstream = \"b\"\n",
            "a",
        ),
        2 => ("hash:header:X-Device-Id", "least-conn", "", "b"),
        3 => (
            "cookie",
            "hash:ip",
            "[[route]]\npath_prefix = \"/a/\"\nupstream = \"a\"\n",
            "b",
        ),
        _ => ("least-conn", "cookie", "", "a"),
    };
    let backends = |names: &str, addrs: &[String]| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{{ name = \"{names}{i}\", address = \"{addr}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cookie = |balance: &str| {
        if balance == "cookie" {
            "[upstream.cookie]\nsecret = \"reload-test\"\n"
        } else {
            ""
        }
    };
    format!(
        "workers = 2\nadmin = \"127.0.0.1:0\"\n{extra}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"{default}\"\n\n\
         {route}\n\
         [[upstream]]\nname = \"a\"\nbalance = \"{a_balance}\"\nbackends = [{}]\n{}\n\
         [[upstream]]\nname = \"b\"\nbalance = \"{b_balance}\"\nbackends = [{}]\n{}\n",
        backends("a", a),
        cookie(a_balance),
        backends("b", b),
        cookie(b_balance),
    )
}

async fn spawn(names: &[&str]) -> (Vec<loadgen::Backend>, Vec<String>) {
    let mut v = Vec::new();
    for n in names {
        v.push(loadgen::spawn_backend(Mode::Ws, n).await.unwrap());
    }
    let addrs = v.iter().map(|b| b.addr.to_string()).collect();
    (v, addrs)
}

fn write(path: &Path, text: &str) {
    // Write then rename, so a reload never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Which upstream a new request to `path` reaches, by the first letter of `X-Backend`.
async fn upstream_of(gw: &Gateway, path: &str) -> char {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Device-Id: d1\r\nConnection: close\r\n\r\n");
    let (status, headers, _) = harness::http_raw(gw.listen, req.as_bytes()).await.unwrap();
    assert_eq!(status, 200);
    harness::header(&headers, "x-backend")
        .unwrap()
        .chars()
        .next()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_never_cut_a_connection() {
    let (_a, a) = spawn(&["a0", "a1"]).await;
    let (_b, b) = spawn(&["b0", "b1"]).await;
    let dir = temp_dir("reload");
    let path = dir.join("ringway.toml");
    write(&path, &config(&a, &b, 0, ""));
    let gw = Gateway::start(&["--config", path.to_str().unwrap()]);

    const N: usize = 200;
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
        assert_eq!(ws.status, 101, "client {i}");
        ws.echo(format!("hello {i}").as_bytes()).await.unwrap();
        clients.push(ws);
    }
    // (variant, path probed, upstream expected there)
    let steps = [
        (1, "/b/x", 'b'),
        (2, "/", 'b'),
        (3, "/a/x", 'a'),
        (4, "/", 'a'),
        (0, "/b/x", 'a'),
    ];
    for (round, (variant, probe, expect)) in steps.into_iter().enumerate() {
        write(&path, &config(&a, &b, variant, ""));
        gw.signal(libc::SIGHUP);
        let ok = (round + 1) as f64;
        gw.metrics_until("the reload counted", |s| {
            s.sum("ringway_config_reloads_total", &[("result", "ok")]) == ok
        })
        .await;
        assert_eq!(
            upstream_of(&gw, probe).await,
            expect,
            "after reload {round} (variant {variant})"
        );
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.echo(format!("round {round} client {i}").as_bytes())
                .await
                .unwrap_or_else(|e| {
                    panic!("client {i} after reload {round}: {e}\n{}", gw.log_text())
                });
        }
    }

    // An invalid file: refused, counted, old config and every connection untouched.
    let good = std::fs::read_to_string(&path).unwrap();
    write(
        &path,
        &good.replace("balance = \"round-robin\"", "balance = \"fastest-please\""),
    );
    gw.signal(libc::SIGHUP);
    let s = gw
        .metrics_until("the failed reload", |s| {
            s.sum("ringway_config_reloads_total", &[("result", "failed")]) == 1.0
        })
        .await;
    assert_eq!(
        s.sum("ringway_config_reloads_total", &[("result", "ok")]),
        5.0
    );
    assert!(
        gw.log_text().contains("fastest-please"),
        "the log names the bad value"
    );
    assert_eq!(
        upstream_of(&gw, "/b/x").await,
        'a',
        "routing is the last good config"
    );
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.echo(b"after the bad reload")
            .await
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
    // POST /reload of the same bad file: 500, counted.
    let (status, _, _) = harness::http_post(gw.admin, "/reload").await.unwrap();
    assert_eq!(status, 500);
    for ws in clients {
        ws.finish().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_tunnels_and_exits_zero() {
    let (_a, a) = spawn(&["a0"]).await;
    let (_b, b) = spawn(&["b0"]).await;
    let dir = temp_dir("drain");
    let path = dir.join("ringway.toml");
    // accept_delay: the window in which /readyz answers 503 while listeners still accept.
    write(
        &path,
        &config(
            &a,
            &b,
            0,
            "[timeouts]\naccept_delay = \"3s\"\ndrain = \"30s\"\n",
        ),
    );
    let mut gw = Gateway::start(&["--config", path.to_str().unwrap()]);
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut ws = Ws::connect(gw.listen, &[]).await.unwrap();
        ws.echo(format!("before {i}").as_bytes()).await.unwrap();
        clients.push(ws);
    }
    assert_eq!(http_get(gw.admin, "/readyz").await.unwrap().0, 200);
    gw.signal(libc::SIGTERM);
    let mut status = 0;
    for _ in 0..100 {
        status = http_get(gw.admin, "/readyz").await.unwrap().0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 503, "/readyz must turn 503 on SIGTERM");
    // Open tunnels keep working through the accept delay and the drain that follows.
    for round in 0..3 {
        for ws in clients.iter_mut() {
            ws.echo(format!("draining {round}").as_bytes())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Every client just echoed through the drain: the process is serving, not exiting.
    assert!(gw.running(), "exited while tunnels were open");
    for ws in clients {
        ws.finish().await.unwrap();
    }
    assert_eq!(gw.exit_code(), Some(0), "{}", gw.log_text());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_process_handover_refuses_no_connection() {
    let backend = loadgen::spawn_backend(Mode::Ws, "b0").await.unwrap();
    let addr = backend.addr.to_string();
    let common = [
        "--backend",
        addr.as_str(),
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--drain",
        "5s",
    ];
    let mut a = Gateway::start(&[&["--listen", "127.0.0.1:0"][..], &common[..]].concat());
    let port = a.listen.to_string();
    let b = Gateway::start(&[&["--listen", port.as_str()][..], &common[..]].concat());
    assert_eq!(b.listen, a.listen);

    const ATTEMPTS: usize = 3000;
    let mut failures = Vec::new();
    let mut signalled = false;
    for i in 0..ATTEMPTS {
        if i == ATTEMPTS / 5 {
            a.signal(libc::SIGTERM);
            signalled = true;
        }
        match http_get_with(a.listen, &[]).await {
            Ok((200, _, _)) => {}
            Ok((status, _, body)) => failures.push(format!("attempt {i}: status {status} {body}")),
            Err(e) => failures.push(format!("attempt {i}: {e} ({:?})", e.kind())),
        }
    }
    assert!(signalled);
    assert_eq!(a.exit_code(), Some(0), "{}", a.log_text());
    assert!(
        failures.is_empty(),
        "{} of {ATTEMPTS} attempts failed during the handover:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // B took over: it still answers.
    assert_eq!(http_get_with(b.listen, &[]).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line() {
    let (_backend, mut gw) = Gateway::with_echo_backend(&[]).await;
    assert_eq!(http_get_with(gw.listen, &[]).await.unwrap().0, 200);
    assert_eq!(gw.stop(), Some(0));
    // The reader thread may still be draining the pipe: poll for the final line (bounded).
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = gw.log.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("\"stopped\"")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lines.len() >= 3, "too few log lines: {lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"stopped\"")), "{lines:?}");
}
