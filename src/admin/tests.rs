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
        let typed = if def.seconds {
            sample.clone()
        } else {
            def.family.to_string()
        };
        assert!(
            text.contains(&format!("# TYPE {typed} ")),
            "{typed} has no TYPE line in:\n{text}"
        );
        // No upstream of this config uses DNS discovery: that family has no series.
        // Nor a TLS listener: no certificate to expire.
        if def.family != names::DNS_UPDATES.family && def.family != names::TLS_CERT_EXPIRY.family {
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
    };
    let reload: Reloader = Arc::new(|| true);
    let r = route(&req, &s, &reload);
    assert_eq!((r.status, r.allow), (405, Some("GET, HEAD")));
    let req = Request {
        method: "GET".into(),
        path: "/reload".into(),
        query: String::new(),
    };
    assert_eq!(route(&req, &s, &reload).status, 405);
    let req = Request {
        method: "POST".into(),
        path: "/reload".into(),
        query: String::new(),
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
    }
    let sticky = gen.upstreams[1].lb.load_full();
    let cookie = sticky.cookie_value(0).unwrap().to_string();
    let (status, body) = get(&s, &format!("/lookup?upstream=sticky&cookie={cookie}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"s-0\""));
    assert_eq!(get(&s, "/lookup?upstream=sticky&cookie=forged").0, 404);
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
