//! Unit tests of the admin API without sockets: the router, the request parser and the
//! exposition. The end-to-end behaviour (numbers right under real traffic) is in
//! `tests/admin.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::http::{parse, percent_decode, query_param, Request};
use super::names;
use super::{route, Reloader};
use crate::config::Config;
use crate::state::Shared;

const CONFIG: &str = r#"
admin = "127.0.0.1:0"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
mode = "http"
upstream = "chat"

[[upstream]]
name = "chat"
balance = "hash:header:X-Device-Id"
backends = [
  { name = "chat-0", address = "127.0.0.1:3000" },
  { name = "chat-1", address = "127.0.0.1:3001" },
]

[[upstream]]
name = "sticky"
balance = "cookie"
backends = [{ name = "s-0", address = "127.0.0.1:3002" }]
[upstream.cookie]
secret = "s3cret"
"#;

fn shared() -> Arc<Shared> {
    let config = Config::from_toml(CONFIG).expect("test config is valid");
    let gen = crate::runtime::build_generation(Arc::new(config), None, 2).expect("generation");
    Shared::new(gen, 2)
}

/// A request carrying only an `X-Device-Id` header.
struct KeyReq(&'static [u8]);

impl crate::balance::KeySource for KeyReq {
    fn client_ip(&self) -> std::net::IpAddr {
        std::net::IpAddr::from([127, 0, 0, 1])
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        name.eq_ignore_ascii_case("x-device-id").then_some(self.0)
    }
    fn cookie(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn query(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

fn get(shared: &Arc<Shared>, target: &str) -> (u16, String) {
    let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (req, _, _) = parse(raw.as_bytes()).ok().flatten().expect("parses");
    let reload: Reloader = Arc::new(|| false);
    let r = route(&req, shared, &reload);
    (r.status, String::from_utf8(r.body).unwrap())
}

#[test]
fn every_defined_metric_is_exposed_under_its_sample_name() {
    let s = shared();
    let text = super::render_metrics(&s);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    for def in names::ALL {
        let sample = def.sample();
        let typed = match &def.unit {
            Some(u) => format!("{}_{}", def.family, u.as_str()),
            None => def.family.to_string(),
        };
        assert!(
            text.contains(&format!("# TYPE {typed} ")),
            "{typed} has no TYPE line in:\n{text}"
        );
        // No upstream of this config uses DNS discovery: that family has no series.
        // Nor a TLS listener: no certificate to expire. Nor an upstream with TLS.
        let empty = [
            names::DNS_UPDATES.family,
            names::TLS_CERT_EXPIRY.family,
            names::TLS_UPSTREAM_HANDSHAKES.family,
        ];
        if !empty.contains(&def.family) {
            assert!(
                text.lines().any(|l| l.starts_with(&sample)),
                "no {sample} sample in:\n{text}"
            );
        }
    }
    assert!(text
        .contains("ringway_upstream_connections_active{upstream=\"chat\",backend=\"chat-0\"} 0"));
    assert!(text
        .contains("ringway_requests_total{upstream=\"chat\",backend=\"chat-1\",code=\"5xx\"} 0"));
    assert!(text.contains("ringway_errors_total{kind=\"bad_request\",side=\"client\"} 0"));
    assert!(text.contains("ringway_build_info{version=\""));
    assert!(text.contains("ringway_head_parse_seconds_bucket{le=\"+Inf\"} 0"));
}

#[test]
fn histograms_are_in_seconds_and_cumulative() {
    let s = shared();
    s.metrics.cores[0].connect.observe_us(80); // <= 100 µs
    s.metrics.cores[1].connect.observe_us(2_000_000); // <= 5 s
    s.metrics
        .control
        .reloads_failed
        .fetch_add(1, Ordering::Relaxed);
    let text = super::render_metrics(&s);
    assert!(
        text.contains("ringway_backend_connect_seconds_bucket{le=\"0.0001\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ringway_backend_connect_seconds_bucket{le=\"5.0\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("ringway_backend_connect_seconds_count 2"),
        "{text}"
    );
    assert!(
        text.contains("ringway_backend_connect_seconds_sum 2.00008"),
        "{text}"
    );
    assert!(
        text.contains("ringway_config_reloads_total{result=\"failed\"} 1"),
        "{text}"
    );
}

#[test]
fn router_answers_every_path_and_method() {
    let s = shared();
    assert_eq!(get(&s, "/healthz"), (200, "ok\n".into()));
    // Listeners never bound in this test: not ready, and the reason says why.
    assert_eq!(
        get(&s, "/readyz"),
        (503, "listeners not bound yet\n".into())
    );
    assert_eq!(get(&s, "/nope").0, 404);
    let req = Request {
        method: "DELETE".into(),
        path: "/metrics".into(),
        query: String::new(),
        ..Request::default()
    };
    let reload: Reloader = Arc::new(|| true);
    let r = route(&req, &s, &reload);
    assert_eq!((r.status, r.allow), (405, Some("GET, HEAD")));
    let req = Request {
        method: "GET".into(),
        path: "/reload".into(),
        query: String::new(),
        ..Request::default()
    };
    assert_eq!(route(&req, &s, &reload).status, 405);
    let req = Request {
        method: "POST".into(),
        path: "/reload".into(),
        query: String::new(),
        ..Request::default()
    };
    assert_eq!(route(&req, &s, &reload).status, 200);
    let failing: Reloader = Arc::new(|| false);
    assert_eq!(route(&req, &s, &failing).status, 500);
}

#[test]
fn lookup_agrees_with_the_table_and_rejects_bad_queries() {
    let s = shared();
    let gen = s.gen.load();
    let table = gen.upstreams[0].lb.load_full();
    for key in ["dev-1", "dev-2", "a b", "x+y"] {
        let expect = table
            .name(table.lookup_key(key.as_bytes()).unwrap())
            .unwrap();
        let encoded = key.replace('+', "%2B").replace(' ', "%20");
        let (status, body) = get(&s, &format!("/lookup?upstream=chat&key={encoded}"));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["backend"], expect, "{body}");
        assert_eq!(v["key"], key);
        // Bounded load is off: the answer is the table's placement, the same on every replica.
        assert_eq!(v["placement"], expect, "{body}");
        assert_eq!(v["same_on_every_replica"], true, "{body}");
        assert_eq!(v["bounded_load"], serde_json::Value::Null, "{body}");
        assert_eq!(v["key_live_on"], serde_json::Value::Null, "{body}");
    }
    // After a failover the key's live connection sits elsewhere: the answer says so.
    let home = table.placement(b"dev-1").unwrap();
    table.backends()[home].stats().set_health_up(false);
    let p = table
        .pick(&KeyReq(b"dev-1"), &[])
        .expect("the other backend takes it");
    let guard = table.guard_pick(&p).unwrap();
    table.backends()[home].stats().set_health_up(true);
    let (_, body) = get(&s, "/lookup?upstream=chat&key=dev-1");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["backend"], table.name(home).unwrap(), "{body}");
    assert_eq!(v["key_live_on"], table.name(p.index).unwrap(), "{body}");
    assert!(
        v["note"].as_str().unwrap().contains("live connections"),
        "{body}"
    );
    drop(guard);
    let sticky = gen.upstreams[1].lb.load_full();
    let cookie = sticky.cookie_value(0).unwrap().to_string();
    let (status, body) = get(&s, &format!("/lookup?upstream=sticky&cookie={cookie}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"s-0\""));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cookie_state"], "valid", "{body}");
    let (status, body) = get(&s, "/lookup?upstream=sticky&cookie=forged");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cookie_state"], "invalid", "{body}");
    assert_eq!(v["backend"], serde_json::Value::Null, "{body}");
    assert_eq!(v["re_placed_by"], "least-conn", "{body}");
    assert_eq!(v["re_placed_now_on"], "s-0", "{body}");
    // A cookie whose backend is down is stale: named, and where it is re-placed.
    sticky.backends()[0].stats().set_health_up(false);
    let (_, body) = get(&s, &format!("/lookup?upstream=sticky&cookie={cookie}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cookie_state"], "stale", "{body}");
    assert_eq!(v["names_backend"], "s-0", "{body}");
    assert_eq!(v["names_backend_reason"], "down-health", "{body}");
    assert_eq!(
        v["re_placed_now_on"],
        serde_json::Value::Null,
        "nothing is up: {body}"
    );
    sticky.backends()[0].stats().set_health_up(true);
    // `key` on a cookie upstream points at `cookie=`.
    let (status, body) = get(&s, "/lookup?upstream=sticky&key=a");
    assert_eq!(status, 400);
    assert!(body.contains("cookie=VALUE"), "{body}");
    assert_eq!(get(&s, "/lookup?upstream=nope&key=a").0, 404);
    assert_eq!(get(&s, "/lookup?key=a").0, 400);
    assert_eq!(get(&s, "/lookup?upstream=chat").0, 400);
    assert_eq!(get(&s, "/lookup?upstream=chat&key=%zz").0, 400);
    assert_eq!(
        get(&s, "/lookup?upstream=chat&cookie=abc").0,
        400,
        "chat is not a cookie upstream"
    );
}

#[test]
fn backends_view_lists_every_backend() {
    let s = shared();
    let (status, body) = get(&s, "/backends");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let chat = &v["upstreams"][0];
    assert_eq!(chat["name"], "chat");
    assert_eq!(chat["backends"][1]["name"], "chat-1");
    assert_eq!(chat["backends"][1]["address"], "127.0.0.1:3001");
    assert_eq!(chat["backends"][1]["reason"], "active");
    assert_eq!(chat["backends"][1]["live_connections"], 0);
}

#[test]
fn parser_is_bounded_and_strict() {
    assert!(parse(b"GET /metrics HTTP/1.1\r\nHost:").unwrap().is_none());
    let bad = parse(b"GET /metrics HTTP/1.1\r\nBad Header\r\n\r\n").unwrap_err();
    assert_eq!(bad.status, 400);
    let chunked =
        parse(b"POST /reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
    assert_eq!(chunked.status, 400);
    let big = parse(b"POST /reload HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").unwrap_err();
    assert_eq!(big.status, 413);
    let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
    let too_many = parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err();
    assert_eq!(too_many.status, 431);
    let (req, head, body) = parse(b"POST /reload?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap()
        .unwrap();
    assert_eq!(
        (req.path.as_str(), req.query.as_str(), head, body),
        ("/reload", "x=1", 48, 3)
    );
}

#[test]
fn query_decoding() {
    assert_eq!(percent_decode("a%2Bb+c%20").unwrap(), b"a+b+c ");
    assert!(percent_decode("%2").is_none());
    assert!(percent_decode("%+1").is_none());
    assert_eq!(
        query_param("a=1&key=x%3Dy&b", "key").unwrap().unwrap(),
        b"x=y"
    );
    assert_eq!(query_param("a=1&b", "b").unwrap().unwrap(), b"");
    assert!(query_param("a=1", "key").is_none());
}

/// Routes a raw request through the parser and the router.
fn send(shared: &Arc<Shared>, raw: &str) -> (u16, String, bool) {
    let (req, _, _) = parse(raw.as_bytes()).ok().flatten().expect("parses");
    let reload: Reloader = Arc::new(|| true);
    let r = route(&req, shared, &reload);
    (r.status, String::from_utf8(r.body).unwrap(), r.challenge)
}

fn shared_with_token(token: &str) -> Arc<Shared> {
    let dir = std::env::temp_dir().join(format!("ringway-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let text = format!("admin_token_file = \"{}\"\n{CONFIG}", path.display());
    let config = Config::from_toml(&text).expect("test config is valid");
    let gen = crate::runtime::build_generation(Arc::new(config), None, 2).expect("generation");
    Shared::new(gen, 2)
}

#[test]
fn the_token_guards_revealing_and_mutating_endpoints_only() {
    let token = "0123456789abcdef0123456789abcdef";
    let s = shared_with_token(token);
    for (method, path) in [
        ("POST", "/reload"),
        ("GET", "/backends"),
        ("GET", "/lookup?upstream=chat&key=a"),
        ("POST", "/backends/chat/chat-1/drain?rate=3"),
        ("POST", "/backends/chat/chat-1/undrain"),
    ] {
        let bare = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, body, challenge) = send(&s, &bare);
        assert_eq!((status, challenge), (401, true), "{method} {path}: {body}");
        for wrong in ["Bearer nope", &format!("Basic {token}"), "Bearer", ""] {
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {wrong}\r\n\r\n");
            assert_eq!(send(&s, &req).0, 401, "{method} {path} with {wrong:?}");
        }
        let good =
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
        assert_eq!(send(&s, &good).0, 200, "{method} {path}");
        let lower =
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nauthorization: bearer {token}\r\n\r\n");
        assert_eq!(
            send(&s, &lower).0,
            200,
            "scheme and name are case-insensitive"
        );
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        let status = send(&s, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).0;
        assert_ne!(status, 401, "{path} stays open");
    }
    // Without a token configured nothing asks for one.
    assert_eq!(get(&shared(), "/backends").0, 200);
    assert!(!format!("{:?}", s.gen.load().config.admin_token).contains(token));
}

#[test]
fn cross_site_requests_are_refused() {
    let s = shared();
    let post = |headers: &str| {
        send(
            &s,
            &format!("POST /reload HTTP/1.1\r\nHost: 127.0.0.1:9900\r\n{headers}\r\n"),
        )
    };
    assert_eq!(post("").0, 200, "curl -X POST");
    assert_eq!(post("Content-Type: application/json\r\n").0, 200);
    assert_eq!(
        post("Origin: http://127.0.0.1:9900\r\n").0,
        200,
        "same origin"
    );
    assert_eq!(post("Sec-Fetch-Site: same-origin\r\n").0, 200);
    assert_eq!(post("Sec-Fetch-Site: none\r\n").0, 200);
    for (headers, status) in [
        ("Origin: http://evil.example\r\n", 403),
        ("Origin: null\r\n", 403),
        ("Origin: http://127.0.0.1:9900.evil.example\r\n", 403),
        ("Sec-Fetch-Site: cross-site\r\n", 403),
        ("Sec-Fetch-Site: same-site\r\n", 403),
        ("Content-Type: text/plain\r\nContent-Length: 0\r\n", 415),
        ("Content-Type: text/plain;charset=UTF-8\r\n", 415),
        ("Content-Type: application/x-www-form-urlencoded\r\n", 415),
        ("Content-Type: multipart/form-data; boundary=x\r\n", 415),
    ] {
        let (got, body, _) = post(headers);
        assert_eq!(got, status, "{headers:?}: {body}");
    }
    // GETs are guarded the same way (a page cannot read answers cross-site, but a foreign
    // Origin is never a tool of ours).
    let (status, _, _) = send(
        &s,
        "GET /backends HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n",
    );
    assert_eq!(status, 403);
}

#[test]
fn drain_marks_the_backend_and_undrain_clears_it() {
    let s = shared();
    let post = |path: &str| send(&s, &format!("POST {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    let (status, body, _) = post("/backends/chat/chat-1/drain?rate=7");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["drained"].as_bool(), v["rate"].as_u64()),
        (Some(true), Some(7))
    );
    let (_, view) = get(&s, "/backends");
    assert!(view.contains("\"drained-admin\""), "{view}");
    let table = s.gen.load().upstreams[0].lb.load_full();
    assert_eq!(table.backends()[1].stats().admin_drain(), Some(7));
    // No rate: the default (no `rebalance` on this upstream).
    assert_eq!(post("/backends/chat/chat-0/drain").0, 200);
    assert_eq!(table.backends()[0].stats().admin_drain(), Some(20));
    assert_eq!(post("/backends/chat/chat-0/undrain").0, 200);
    assert_eq!(post("/backends/chat/chat-1/undrain").0, 200);
    assert!(table
        .backends()
        .iter()
        .all(|b| b.stats().admin_drain().is_none()));
    for (path, want) in [
        ("/backends/chat/chat-9/drain", 404),
        ("/backends/nope/chat-0/drain", 404),
        ("/backends/chat/chat-0/drain?rate=0", 400),
        ("/backends/chat/chat-0/drain?rate=1e3", 400),
        ("/backends/chat/chat-0/drain?rate=%zz", 400),
        ("/backends/chat/chat-%zz/drain", 400),
        ("/backends/chat/chat-0/stop", 404),
    ] {
        assert_eq!(post(path).0, want, "{path}");
    }
    assert_eq!(get(&s, "/backends/chat/chat-0/drain").0, 405);
    assert!(table
        .backends()
        .iter()
        .all(|b| b.stats().admin_drain().is_none()));
}
