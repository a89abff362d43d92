//! The admin port's guards against the real binary (issue 11, item 5): the bearer token, the
//! cross-site refusals, and probes that idle clients cannot starve.

#[path = "common/ops_harness.rs"]
mod harness;

use harness::{http_get, http_raw, temp_dir, Gateway};
use tokio::net::TcpStream;

fn gateway(tag: &str, top: &str) -> Gateway {
    let dir = temp_dir(tag);
    let path = dir.join("ringway.toml");
    let backend = harness::dead_addr();
    std::fs::write(
        &path,
        format!(
            "workers = 1\nadmin = \"127.0.0.1:0\"\n{top}\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\nupstream = \"u\"\n\
             [[upstream]]\nname = \"u\"\nbalance = \"hash:header:X-Id\"\nbackends = [{{ name = \"u0\", address = \"{backend}\" }}]\n"
        ),
    )
    .unwrap();
    Gateway::start(&["--config", path.to_str().unwrap()])
}

async fn status(gw: &Gateway, request: &str) -> u16 {
    http_raw(gw.admin, request.as_bytes()).await.unwrap().0
}

/// Probes are answered ahead of idle clients, not after them: every probe gets its answer
/// while all 40 idle connections are still open (a server that makes probes wait for a free
/// slot answers only once idle clients have been timed out and closed). Asserted as an order
/// of events, not a duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_forty_clients_sit_idle() {
    let gw = gateway("admin-idle", "");
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    for path in ["/healthz", "/readyz"] {
        let answer = http_get(gw.admin, path).await.unwrap();
        assert!(
            answer.0 == 200 || (path == "/readyz" && answer.0 == 503),
            "{path}: {answer:?}"
        );
        let still_open = idle
            .iter()
            .filter(|s| {
                let mut b = [0u8; 1];
                matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        assert_eq!(
            still_open, 40,
            "{path} was answered only after idle clients were cut"
        );
    }
    // A scrape is answered too.
    assert_eq!(http_get(gw.admin, "/metrics").await.unwrap().0, 200);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_reload_lookup_and_backends() {
    let dir = temp_dir("admin-token-file");
    let token_path = dir.join("token");
    let token = "e2e-token-0123456789abcdef";
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let gw = gateway(
        "admin-token",
        &format!("admin_token_file = \"{}\"", token_path.display()),
    );
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (method, path) in [
        ("GET", "/backends"),
        ("GET", "/lookup?upstream=u&key=k"),
        ("POST", "/reload"),
    ] {
        let bare = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(status(&gw, &bare).await, 401, "{method} {path}");
        let with =
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
        assert_eq!(
            status(&gw, &with).await,
            200,
            "{method} {path} with the token"
        );
    }
    for path in ["/metrics", "/healthz"] {
        assert_eq!(
            http_get(gw.admin, path).await.unwrap().0,
            200,
            "{path} stays open"
        );
    }
    // A cross-site "simple" POST is refused even with the token a browser might hold.
    let csrf = format!(
        "POST /reload HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status(&gw, &csrf).await, 415);
    let foreign = format!(
        "POST /reload HTTP/1.1\r\nHost: t\r\n{auth}Origin: http://evil.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status(&gw, &foreign).await, 403);
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_config_reloads_total", &[("result", "ok")]),
        1.0,
        "only the authorised reload ran: {}",
        s.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_reload_is_refused_without_a_token_too() {
    let gw = gateway("admin-csrf", "");
    for headers in [
        "Content-Type: text/plain\r\nContent-Length: 0\r\n",
        "Origin: http://evil.example\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
    ] {
        let req = format!("POST /reload HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
        let got = status(&gw, &req).await;
        assert!(got == 403 || got == 415, "{headers:?}: {got}");
    }
    let s = gw.metrics().await;
    assert_eq!(
        s.sum("ringway_config_reloads_total", &[]),
        0.0,
        "a refused request reloaded: {}",
        s.text
    );
}
