//! DNS discovery end to end: the real binary, a real authoritative DNS server on loopback
//! whose records the tests change, echo backends on distinct loopback IPs (one per "pod").
//! Every wait is a bounded poll on behaviour (which backend answered `/whoami`, status
//! codes, queries counted at the server), never an assertion on a duration.

#[path = "common/dns.rs"]
mod dns;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dns::{free_port, Backend, DnsServer, Gateway};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// One http listener to one upstream `chat` discovered through `dns`.
fn config(dns: &DnsServer, balance: &str, source: &str, dns_opts: &str, extra: &str) -> String {
    format!(
        r#"workers = 1
admin = ""
[log]
level = "info"
[[listener]]
name = "web"
bind = "{{LISTEN}}"
mode = "http"
upstream = "chat"
[[upstream]]
name = "chat"
balance = "{balance}"
{source}
{extra}
[upstream.discovery]
resolver = "{addr}"
min_ttl = "1s"
negative_ttl = "1s"
{dns_opts}
"#,
        addr = dns.addr
    )
}

const COOKIE: &str = "[upstream.cookie]\nsecret = \"t\"\n";

/// Backends that answered `n` requests without a cookie.
async fn answered_by(gw: &Gateway, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = gw.get("/whoami", None).await;
        if r.status == 200 {
            seen.insert(r.body);
        }
    }
    seen
}

/// A route cookie (`ringway=…`) for each of `names`, from requests without one.
async fn cookies_for(gw: &Gateway, names: &[&str]) -> Vec<String> {
    let mut got = std::collections::HashMap::new();
    for _ in 0..50 {
        let r = gw.get("/whoami", None).await;
        if let (200, Some(c)) = (r.status, r.set_cookie) {
            got.insert(r.body, c);
        }
        if names.iter().all(|n| got.contains_key(*n)) {
            return names.iter().map(|n| got[*n].clone()).collect();
        }
    }
    panic!("no cookie for every backend: {got:?}\n{}", gw.log_text());
}

#[tokio::test]
async fn record_change_is_followed_and_dns_outage_keeps_last_good_set() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let _a = Backend::start(&format!("127.0.0.21:{port}"), "pod-a").await;
    let _b = Backend::start(&format!("127.0.0.22:{port}"), "pod-b").await;
    dns.set_a("ws.disc.test", &["127.0.0.21"], 1);
    let src = format!("dns = [\"ws.disc.test:{port}\"]");
    let gw = Gateway::start(&config(&dns, "round-robin", &src, "", "")).await;
    gw.poll_until("/whoami", None, 100, |r| r.body == "pod-a")
        .await;

    // New connections follow the record within TTL (1 s) + 1 s: 40 polls of ≥ 50 ms.
    dns.set_a("ws.disc.test", &["127.0.0.22"], 1);
    gw.poll_until("/whoami", None, 40, |r| r.body == "pod-b")
        .await;

    // SERVFAIL: the gateway asks again, gets nothing usable, keeps pod-b.
    let q = dns.queries("ws.disc.test");
    dns.set_servfail(true);
    for _ in 0..100 {
        if dns.queries("ws.disc.test") >= q + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dns.queries("ws.disc.test") >= q + 2,
        "no re-query after SERVFAIL"
    );
    // The server goes away entirely: still the last good set.
    dns.stop();
    for _ in 0..20 {
        let r = gw.get("/whoami", None).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "pod-b"),
            "{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn restarted_pod_keeps_its_cookie_and_other_clients_never_notice() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let _ws0 = Backend::start(&format!("127.0.0.31:{port}"), "ws-0").await;
    let ws1 = Backend::start(&format!("127.0.0.32:{port}"), "ws-1").await;
    dns.set_a("ws-0.chat.disc.test", &["127.0.0.31"], 1);
    dns.set_a("ws-1.chat.disc.test", &["127.0.0.32"], 1);
    let src = format!("dns = [\"ws-0.chat.disc.test:{port}\", \"ws-1.chat.disc.test:{port}\"]");
    let extra = format!("{COOKIE}[upstream.health]\nmax_fails = 1\nfail_timeout = \"1s\"\n");
    let gw = Gateway::start(&config(&dns, "cookie", &src, "", &extra)).await;
    gw.poll_until("/whoami", None, 100, |r| r.status == 200)
        .await;
    let c = cookies_for(&gw, &["ws-0", "ws-1"]).await;
    let (c0, c1) = (c[0].as_str(), c[1].as_str());

    // A ws-0 client holds a WebSocket across the whole story.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/chat", gw.addr),
    )
    .unwrap();
    req.headers_mut().insert("cookie", c0.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["x-backend"], "ws-0");
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    // ws-1 is rescheduled: the old address stops answering, the pod comes back elsewhere.
    ws1.kill();
    let _ws1b = Backend::start(&format!("127.0.0.33:{port}"), "ws-1").await;
    dns.set_a("ws-1.chat.disc.test", &["127.0.0.33"], 1);

    let mut back = None;
    for _ in 0..150 {
        let r = gw.get("/whoami", Some(c0)).await;
        assert_eq!(
            (r.status, r.body.as_str(), r.set_cookie.as_deref()),
            (200, "ws-0", None)
        );
        let r = gw.get("/whoami", Some(c1)).await;
        if r.status == 200 && r.body == "ws-1" {
            back = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = back.unwrap_or_else(|| panic!("ws-1 never came back\n{}", gw.log_text()));
    assert!(
        back.set_cookie.as_deref().unwrap_or(c1) == c1,
        "same cookie reaches the new address: {back:?}"
    );

    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
}

#[tokio::test]
async fn nxdomain_is_held_then_the_backend_is_removed() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let _ws0 = Backend::start(&format!("127.0.0.41:{port}"), "ws-0").await;
    let _ws1 = Backend::start(&format!("127.0.0.42:{port}"), "ws-1").await;
    dns.set_a("ws-0.nx.disc.test", &["127.0.0.41"], 1);
    dns.set_a("ws-1.nx.disc.test", &["127.0.0.42"], 1);
    let src = format!("dns = [\"ws-0.nx.disc.test:{port}\", \"ws-1.nx.disc.test:{port}\"]");
    let opts = "nxdomain_hold = \"3s\"";
    let gw = Gateway::start(&config(&dns, "cookie", &src, opts, COOKIE)).await;
    gw.poll_until("/whoami", None, 100, |r| r.status == 200)
        .await;
    let c1 = cookies_for(&gw, &["ws-1"]).await.remove(0);

    dns.remove("ws-1.nx.disc.test");
    for _ in 0..100 {
        if dns.nxdomains("ws-1.nx.disc.test") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dns.nxdomains("ws-1.nx.disc.test") > 0,
        "gateway never re-asked"
    );
    // The gateway has seen NXDOMAIN, but the hold keeps ws-1 for now.
    let r = gw.get("/whoami", Some(&c1)).await;
    assert_eq!(
        (r.status, r.body.as_str(), r.set_cookie),
        (200, "ws-1", None)
    );
    // After the hold it is gone: its cookie falls back to ws-0 with a new cookie.
    let r = gw
        .poll_until("/whoami", Some(&c1), 150, |r| r.body == "ws-0")
        .await;
    assert!(r.set_cookie.is_some_and(|c| c != c1));
}

#[tokio::test]
async fn srv_set_grows_from_two_to_three_targets() {
    let dns = DnsServer::start().await;
    let pods = [
        Backend::start("127.0.0.1:0", "ws-0").await,
        Backend::start("127.0.0.1:0", "ws-1").await,
        Backend::start("127.0.0.1:0", "ws-2").await,
    ];
    for i in 0..3 {
        dns.set_a(&format!("ws-{i}.srv.disc.test"), &["127.0.0.1"], 1);
    }
    let target = |i: usize| (format!("ws-{i}.srv.disc.test"), pods[i].addr.port());
    let t: Vec<(String, u16)> = (0..3).map(target).collect();
    let refs = |n: usize| {
        t[..n]
            .iter()
            .map(|(h, p)| (h.as_str(), *p))
            .collect::<Vec<_>>()
    };
    dns.set_srv("_ws._tcp.srv.disc.test", &refs(2), 1);
    let src = "srv = \"_ws._tcp.srv.disc.test\"";
    let gw = Gateway::start(&config(&dns, "round-robin", src, "", "")).await;
    gw.poll_until("/whoami", None, 100, |r| r.status == 200)
        .await;
    assert_eq!(
        answered_by(&gw, 6).await,
        BTreeSet::from(["ws-0".into(), "ws-1".into()])
    );

    dns.set_srv("_ws._tcp.srv.disc.test", &refs(3), 1);
    gw.poll_until("/whoami", None, 60, |r| r.body == "ws-2")
        .await;
    let all: BTreeSet<String> = ["ws-0", "ws-1", "ws-2"].map(String::from).into();
    assert_eq!(answered_by(&gw, 9).await, all);
}

#[tokio::test]
async fn headless_service_records_are_the_backend_set() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let _a = Backend::start(&format!("127.0.0.51:{port}"), "svc-a").await;
    let _b = Backend::start(&format!("127.0.0.52:{port}"), "svc-b").await;
    dns.set_a("chat.svc.disc.test", &["127.0.0.51", "127.0.0.52"], 1);
    let src = format!("dns_service = \"chat.svc.disc.test:{port}\"");
    let gw = Gateway::start(&config(&dns, "round-robin", &src, "", "")).await;
    gw.poll_until("/whoami", None, 100, |r| r.status == 200)
        .await;
    assert_eq!(
        answered_by(&gw, 6).await,
        BTreeSet::from(["svc-a".into(), "svc-b".into()])
    );

    dns.set_a("chat.svc.disc.test", &["127.0.0.52"], 1);
    for _ in 0..60 {
        if answered_by(&gw, 4).await == BTreeSet::from(["svc-b".into()]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("svc-a never left the set\n{}", gw.log_text());
}

#[tokio::test]
async fn zero_ttl_does_not_spin_the_resolver() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let _a = Backend::start(&format!("127.0.0.61:{port}"), "zero").await;
    dns.set_a("zero.disc.test", &["127.0.0.61"], 0);
    let src = format!("dns = [\"zero.disc.test:{port}\"]");
    let gw = Gateway::start(&config(&dns, "round-robin", &src, "", "")).await;
    gw.poll_until("/whoami", None, 100, |r| r.body == "zero")
        .await;

    let (q0, t0) = (dns.queries("zero.disc.test"), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (q1, window) = (dns.queries("zero.disc.test"), t0.elapsed());
    // min_ttl = 1 s: at most one lookup (A + AAAA = 2 queries) per started second of the
    // window, plus the one in flight when it opened.
    let bound = 2 * (window.as_secs() + 2);
    assert!(
        q1 - q0 <= bound,
        "{} queries in {window:?} (bound {bound})",
        q1 - q0
    );
    assert!(
        q1 - q0 >= 2,
        "a zero TTL is still re-resolved ({} queries)",
        q1 - q0
    );
    assert_eq!(gw.get("/whoami", None).await.body, "zero");
}

/// A backend that left DNS takes no new connections; with `drain_timeout` its open tunnels are
/// closed once the deadline passes, while tunnels to backends still in the set stay open.
#[tokio::test]
async fn drain_timeout_closes_tunnels_of_removed_backends_only() {
    let dns = DnsServer::start().await;
    let port = free_port();
    let _ws0 = Backend::start(&format!("127.0.0.51:{port}"), "ws-0").await;
    let _ws1 = Backend::start(&format!("127.0.0.52:{port}"), "ws-1").await;
    dns.set_a("ws-0.drain.disc.test", &["127.0.0.51"], 1);
    dns.set_a("ws-1.drain.disc.test", &["127.0.0.52"], 1);
    let src = format!("dns = [\"ws-0.drain.disc.test:{port}\", \"ws-1.drain.disc.test:{port}\"]");
    let opts = "nxdomain_hold = \"1s\"\ndrain_timeout = \"1s\"";
    let gw = Gateway::start(&config(&dns, "cookie", &src, opts, COOKIE)).await;
    gw.poll_until("/whoami", None, 100, |r| r.status == 200)
        .await;
    let cookies = cookies_for(&gw, &["ws-0", "ws-1"]).await;

    let mut tunnels = Vec::new();
    for (name, cookie) in ["ws-0", "ws-1"].iter().zip(&cookies) {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/chat", gw.addr),
            )
            .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers()["x-backend"], *name);
        tunnels.push(ws);
    }
    let mut ws1 = tunnels.pop().unwrap();
    let mut ws0 = tunnels.pop().unwrap();

    dns.remove("ws-1.drain.disc.test");
    // ws-1's tunnel is closed by the gateway after hold + drain_timeout (bounded wait).
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws1.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        closed,
        "the drained tunnel was not closed\n{}",
        gw.log_text()
    );
    // ws-0's tunnel never noticed.
    ws0.send(Message::text("still here")).await.unwrap();
    let echo = ws0.next().await.unwrap().unwrap();
    assert_eq!(echo, Message::text("still here"));
}
