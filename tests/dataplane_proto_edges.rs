//! What `proto` decides, seen end to end through the real gateway (issue 10 items 4 and 5):
//! equal duplicate Content-Lengths reach the backend as exactly one header, routes match the
//! normalised path while the target is forwarded as received, and a path with a malformed
//! escape is answered 400 without a backend connection.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use gateway::*;

async fn duplicate_content_length_is_sent_once(io: &'static str) {
    let be = tagged_backend("b").await;
    let gw = Gateway::start(io, &["--backend", &be.addr.to_string()]);
    for dup in [
        "Content-Length: 3, 3\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\n",
        "Content-Length: 3\r\ncontent-length: 3,3\r\n",
    ] {
        let r = roundtrip(
            gw.addr,
            format!("POST /p HTTP/1.1\r\nHost: t\r\n{dup}\r\nabc").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{dup:?}: {r:?}");
        assert!(r.body_str().ends_with("\nabc"), "{dup:?}: {r:?}");
        let seen = be.requests().pop().expect("the backend saw the request");
        assert_eq!(seen.all("content-length"), ["3"], "{dup:?}: {seen:?}");
        assert_eq!(seen.body, b"abc", "{dup:?}");
    }
    let before = be.requests().len();
    let accepts = be.accepts();
    for differ in [
        "Content-Length: 3, 4\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n",
    ] {
        let r = roundtrip(
            gw.addr,
            format!("POST /p HTTP/1.1\r\nHost: t\r\n{differ}\r\nabcd").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{differ:?}: {r:?}");
    }
    assert_eq!(be.requests().len(), before);
    assert_eq!(
        be.accepts(),
        accepts,
        "a refused head opened a backend connection"
    );
}

async fn routes_match_the_normalised_path(io: &'static str) {
    let c = tagged_backend("c").await;
    let x = tagged_backend("x").await;
    let toml = format!(
        r#"admin = ""
[[listener]]
name = "main"
bind = "127.0.0.1:0"
mode = "http"

[[route]]
path_prefix = "/c/"
upstream = "c"

[[route]]
path_prefix = "/x"
upstream = "x"

[[upstream]]
name = "c"
backends = [{{ name = "c-0", address = "{}" }}]

[[upstream]]
name = "x"
backends = [{{ name = "x-0", address = "{}" }}]
"#,
        c.addr, x.addr
    );
    let gw = Gateway::start_config(io, &toml);
    for (target, want) in [
        ("/c/a", Some("c")),
        ("/c/../x", Some("x")),
        ("/c/%2e%2e/x", Some("x")),
        ("/c/%2E%2E/x?q=/c/", Some("x")),
        ("/c/./../x", Some("x")),
        ("/c/%41bc", Some("c")),
        ("/%63/a", Some("c")),
        ("/x/../c/a", Some("c")),
        ("/c/../y", None),
        ("/c/%2e%2e/", None),
    ] {
        let r = roundtrip(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        )
        .await;
        match want {
            Some(tag) => {
                assert_eq!(r.status, 200, "{target}: {r:?}");
                assert_eq!(r.header("x-backend"), Some(tag), "{target}");
                // Forwarded as received, not as routed.
                assert!(
                    r.body_str().starts_with(&format!("{tag} GET {target} ")),
                    "{target}: {r:?}"
                );
            }
            None => assert_eq!(r.status, 404, "{target}: {r:?}"),
        }
    }
    let accepts = c.accepts() + x.accepts();
    for target in ["/c/%zz", "/c/%4", "/c/%", "/x%G1"] {
        let r = roundtrip(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    assert_eq!(c.accepts() + x.accepts(), accepts);
}

both_io!(
    duplicate_content_length_is_sent_once,
    routes_match_the_normalised_path,
);
