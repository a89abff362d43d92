//! Route-cookie secrets against the real binary (issue 11, item 6): the quick form signs with a
//! random per-process secret (and says so), `secret_file` rotates on reload with the first
//! line signing and every line verifying, and `ringway check` warns on the example's secret.

#[path = "common/ops_harness.rs"]
mod harness;

use harness::{header, http_get, http_get_with, temp_dir, Gateway};
use loadgen::Mode;

/// The route cookie value a response sets, if any.
fn set_cookie(headers: &[(String, String)]) -> Option<String> {
    let set = header(headers, "set-cookie")?;
    Some(set.split(';').next()?.split_once('=')?.1.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_form_without_a_secret_signs_with_a_random_one_and_warns() {
    let b = loadgen::spawn_backend(Mode::Ws, "b0").await.unwrap();
    let addr = b.addr.to_string();
    let mut values = Vec::new();
    for _ in 0..2 {
        let gw = Gateway::quick(&addr, &["--workers", "1", "--balance", "cookie"]);
        let (status, headers, _) = http_get(gw.listen, "/").await.unwrap();
        assert_eq!(status, 200);
        values.push(set_cookie(&headers).expect("a route cookie"));
        assert!(
            gw.log_text().contains("random secret"),
            "no warning about the per-process secret:\n{}",
            gw.log_text()
        );
    }
    // One backend, two processes: a fixed default secret would give the same value twice.
    assert_ne!(
        values[0], values[1],
        "the quick form's secret is not random"
    );
    // With --cookie-secret, replicas agree and nothing is warned about.
    let mut values = Vec::new();
    for _ in 0..2 {
        let gw = Gateway::quick(
            &addr,
            &[
                "--workers",
                "1",
                "--balance",
                "cookie",
                "--cookie-secret",
                "a-shared-secret-of-some-length",
            ],
        );
        let (_, headers, _) = http_get(gw.listen, "/").await.unwrap();
        values.push(set_cookie(&headers).unwrap());
        assert!(!gw.log_text().contains("random secret"));
    }
    assert_eq!(values[0], values[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_file_rotation_first_line_signs_every_line_verifies() {
    let b0 = loadgen::spawn_backend(Mode::Ws, "b0").await.unwrap();
    let b1 = loadgen::spawn_backend(Mode::Ws, "b1").await.unwrap();
    let dir = temp_dir("cookie-rotation");
    let secret = dir.join("cookie-secret");
    std::fs::write(&secret, "old-secret-0123456789abcdef\n").unwrap();
    let config = dir.join("ringway.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 1\nadmin = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nupstream = \"u\"\n\
             [[upstream]]\nname = \"u\"\nbalance = \"cookie\"\n\
             backends = [{{ name = \"b0\", address = \"{}\" }}, {{ name = \"b1\", address = \"{}\" }}]\n\
             [upstream.cookie]\nsecret_file = \"{}\"\n",
            b0.addr,
            b1.addr,
            secret.display()
        ),
    )
    .unwrap();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let (_, headers, _) = http_get(gw.listen, "/").await.unwrap();
    let backend = header(&headers, "x-backend").unwrap().to_string();
    let old = set_cookie(&headers).expect("a route cookie");

    // Rotate: the new secret first, the old one kept to verify.
    std::fs::write(
        &secret,
        "new-secret-0123456789abcdef\nold-secret-0123456789abcdef\n",
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    gw.metrics_until("the reload counted", |s| {
        s.sum("ringway_config_reloads_total", &[("result", "ok")]) == 1.0
    })
    .await;
    let cookie = format!("ringway={old}");
    let (_, headers, _) = http_get_with(gw.listen, &[("Cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(
        header(&headers, "x-backend"),
        Some(backend.as_str()),
        "the old cookie still routes"
    );
    let new = set_cookie(&headers).expect("re-issued under the new secret");
    assert_ne!(new, old);
    let cookie = format!("ringway={new}");
    let (_, headers, _) = http_get_with(gw.listen, &[("Cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(header(&headers, "x-backend"), Some(backend.as_str()));
    assert_eq!(
        set_cookie(&headers),
        None,
        "a current cookie is not re-issued"
    );
    // /lookup agrees.
    let (_, _, body) = http_get(gw.admin, &format!("/lookup?upstream=u&cookie={old}"))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cookie_state"], "valid", "{body}");
    assert_eq!(v["backend"], backend.as_str(), "{body}");

    // Retire the old secret: its cookies are rebalanced and get a new cookie.
    std::fs::write(&secret, "new-secret-0123456789abcdef\n").unwrap();
    gw.signal(libc::SIGHUP);
    gw.metrics_until("the second reload counted", |s| {
        s.sum("ringway_config_reloads_total", &[("result", "ok")]) == 2.0
    })
    .await;
    let cookie = format!("ringway={old}");
    let (_, headers, _) = http_get_with(gw.listen, &[("Cookie", &cookie)])
        .await
        .unwrap();
    assert!(
        set_cookie(&headers).is_some(),
        "a retired cookie is replaced"
    );
}

#[test]
fn check_warns_on_the_examples_secret() {
    let dir = temp_dir("check-change-me");
    let path = dir.join("ringway.toml");
    std::fs::write(
        &path,
        "[[listener]]\nbind = \"127.0.0.1:0\"\nupstream = \"u\"\n\
         [[upstream]]\nname = \"u\"\nbalance = \"cookie\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n\
         [upstream.cookie]\nsecret = \"change-me-to-a-long-random-string\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "still valid: {stdout}");
    assert!(
        stdout.contains("warning: upstream[u].cookie.secret") && stdout.contains("placeholder"),
        "{stdout}"
    );
}
