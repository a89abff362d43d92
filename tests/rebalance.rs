//! Moving live tunnels (issue 12): rebalancing after a scale-out (hash: exactly the keys whose
//! placement changed; least-conn / cookie: down to the fair share) and an operator's drain of a
//! backend. The real binary, the in-process DNS server of `tests/discovery.rs`, echo backends
//! on distinct loopback IPs, and a fleet of WebSocket clients that reconnect when the gateway
//! ends their tunnel, as a device would. Waits are bounded polls on behaviour.
//!
//! Today an asked tunnel ends with a FIN (or, once the frame tracking lands, a Close frame):
//! a client counts either as "ended" (anything read from an echo backend's tunnel that was not
//! sent is the gateway's), records how, and reconnects.

#[path = "common/dns.rs"]
mod dns;
#[macro_use]
#[path = "common/both_io.rs"]
mod both_io_def;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns::{free_port, Backend, DnsServer, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "rebalance-test-token-0123456789";

/// Bounds a wait: a hang fails the test instead of hanging it.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A gateway with one http listener to upstream `chat`, an admin port behind [`TOKEN`].
struct Setup {
    gw: Gateway,
    admin: SocketAddr,
    _token_file: TokenFile,
}

struct TokenFile(std::path::PathBuf);

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn gateway_config(io: &str, admin: SocketAddr, token: &std::path::Path, upstream: &str) -> String {
    format!(
        r#"workers = 2
io = "{io}"
admin = "{admin}"
admin_token_file = "{token}"
[log]
level = "info"
[[listener]]
name = "web"
bind = "{{LISTEN}}"
mode = "http"
upstream = "chat"
[[upstream]]
name = "chat"
{upstream}
"#,
        token = token.display()
    )
}

async fn start(io: &str, upstream: &str) -> Setup {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let token = std::env::temp_dir().join(format!(
        "ringway-rebalance-token-{}-{}",
        std::process::id(),
        admin.port()
    ));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = gateway_config(io, admin, &token, upstream);
    let gw = Gateway::start(&config).await;
    Setup {
        gw,
        admin,
        _token_file: TokenFile(token),
    }
}

/// A hash or least-conn upstream discovered from a headless service in `dns`.
fn discovered(dns: &DnsServer, port: u16, balance: &str, extra: &str) -> String {
    format!(
        "balance = \"{balance}\"\ndns_service = \"chat.rb.test:{port}\"\n{extra}\n\
         [upstream.discovery]\nresolver = \"{}\"\nmin_ttl = \"1s\"\nnegative_ttl = \"1s\"\n",
        dns.addr
    )
}

/// One admin request: `(status, body)`.
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &str,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let mut s = within("admin connect", TcpStream::connect(addr))
        .await
        .unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    within("admin response", s.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

async fn admin_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = admin(addr, "GET", path, Some(TOKEN), "").await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The backend address `/lookup` names for `key` now.
async fn lookup(addr: SocketAddr, key: &str) -> String {
    let v = admin_json(addr, &format!("/lookup?upstream=chat&key={key}")).await;
    v["address"].as_str().unwrap_or("-").to_string()
}

/// A counter's value from `/metrics` (0 when absent).
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = admin(addr, "GET", "/metrics", None, "").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// What one client saw: the backend (`X-Backend`) of each of its connections, how each ended,
/// and its route cookie.
#[derive(Debug, Default, Clone)]
struct Seen {
    backends: Vec<String>,
    endings: Vec<String>,
    cookie: Option<String>,
}

/// Clients each holding one WebSocket through the gateway, reconnecting (up to
/// `MAX_CONNECTS` times) whenever the gateway ends it.
struct Fleet {
    seen: Arc<Mutex<BTreeMap<usize, Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const MAX_CONNECTS: usize = 6;

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Fleet {
    /// `n` clients; client `i` sends `X-Device: dev-i`, and the route cookie once it has one.
    fn start(gw: SocketAddr, n: usize) -> Fleet {
        let seen: Arc<Mutex<BTreeMap<usize, Seen>>> = Default::default();
        let tasks = (0..n)
            .map(|i| tokio::spawn(client(gw, i, seen.clone())))
            .collect();
        Fleet { seen, tasks }
    }

    fn snapshot(&self) -> BTreeMap<usize, Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until every client is connected and `ok` holds for what they saw.
    async fn until(&self, what: &str, ok: impl Fn(&BTreeMap<usize, Seen>) -> bool) {
        let n = self.tasks.len();
        within(what, async {
            loop {
                let s = self.snapshot();
                let connected =
                    s.len() == n && s.values().all(|c| c.backends.len() == c.endings.len() + 1);
                if connected && ok(&s) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// Live connections per backend name.
    fn per_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in self.snapshot().values() {
            if c.backends.len() > c.endings.len() {
                *m.entry(c.backends.last().unwrap().clone()).or_default() += 1;
            }
        }
        m
    }
}

async fn client(gw: SocketAddr, i: usize, seen: Arc<Mutex<BTreeMap<usize, Seen>>>) {
    for _ in 0..MAX_CONNECTS {
        let cookie = seen.lock().unwrap().get(&i).and_then(|s| s.cookie.clone());
        let Some((backend, set_cookie, mut stream)) = upgrade(gw, i, cookie.as_deref()).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        {
            let mut s = seen.lock().unwrap();
            let e = s.entry(i).or_default();
            e.backends.push(backend);
            if set_cookie.is_some() {
                e.cookie = set_cookie;
            }
        }
        // The echo backend sends nothing unasked: whatever arrives is the gateway ending it.
        let mut buf = [0u8; 64];
        let ending = match stream.read(&mut buf).await {
            Ok(0) => "fin".to_string(),
            Ok(n) if n >= 4 && buf[0] & 0x0f == 8 => {
                format!("close {}", u16::from_be_bytes([buf[2], buf[3]]))
            }
            Ok(n) => format!("{n} bytes"),
            Err(e) => format!("error {:?}", e.kind()),
        };
        seen.lock()
            .unwrap()
            .entry(i)
            .or_default()
            .endings
            .push(ending);
    }
}

/// A WebSocket upgrade as device `dev-i`: the backend that answered, its `Set-Cookie`
/// (`name=value`), and the tunnel.
async fn upgrade(
    gw: SocketAddr,
    i: usize,
    cookie: Option<&str>,
) -> Option<(String, Option<String>, TcpStream)> {
    let mut s = TcpStream::connect(gw).await.ok()?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /chat HTTP/1.1\r\nHost: rb.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         X-Device: dev-{i}\r\n{cookie}\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 || head.len() > 8192 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return None;
    }
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let backend = header("x-backend")?;
    let set_cookie = header("set-cookie").map(|v| v.split(';').next().unwrap_or("").to_string());
    Some((backend, set_cookie, s))
}

/// Echo backends named `pod-{letter}` on `127.0.0.{base + k}:port`.
async fn pods(base: u8, port: u16, n: u8) -> (Vec<Backend>, HashMap<String, String>) {
    let mut backends = Vec::new();
    let mut by_addr = HashMap::new();
    for k in 0..n {
        let ip = format!("127.0.0.{}", base + k);
        let name = format!("pod-{}", (b'a' + k) as char);
        backends.push(Backend::start(&format!("{ip}:{port}"), &name).await);
        by_addr.insert(format!("{ip}:{port}"), name);
    }
    (backends, by_addr)
}

/// Waits until `/backends` lists `n` active backends for `chat`.
async fn active_backends(admin_addr: SocketAddr, n: usize) {
    within("the backend set to change", async {
        loop {
            let v = admin_json(admin_addr, "/backends").await;
            let active = v["upstreams"][0]["backends"]
                .as_array()
                .map_or(0, |b| b.iter().filter(|b| b["state"] == "active").count());
            if active == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// 200 tunnels keyed by `X-Device` over two pods; a third joins through DNS. Exactly the
/// devices whose key `/lookup` now places elsewhere are ended (once) and reconnect where
/// `/lookup` says; every other tunnel is untouched.
async fn scale_out_moves_exactly_the_keys_that_map_elsewhere(io: &'static str) {
    let dns = DnsServer::start().await;
    let port = free_port();
    let base = if io == "uring" { 71 } else { 81 };
    let (_pods, pod_of) = pods(base, port, 3).await;
    let ips: Vec<String> = (0..3).map(|k| format!("127.0.0.{}", base + k)).collect();
    dns.set_a("chat.rb.test", &[&ips[0], &ips[1]], 1);
    let upstream = discovered(
        &dns,
        port,
        "hash:header:X-Device",
        "rebalance = { max_per_second = 50 }",
    );
    let s = start(io, &upstream).await;
    active_backends(s.admin, 2).await;

    const N: usize = 200;
    let fleet = Fleet::start(s.gw.addr, N);
    fleet.until("200 tunnels", |_| true).await;
    let mut before = Vec::new();
    for i in 0..N {
        before.push(pod_of[&lookup(s.admin, &format!("dev-{i}")).await].clone());
    }
    let first: Vec<String> = fleet
        .snapshot()
        .values()
        .map(|c| c.backends[0].clone())
        .collect();
    assert_eq!(first, before, "every key is connected where /lookup said");

    dns.set_a("chat.rb.test", &[&ips[0], &ips[1], &ips[2]], 1);
    active_backends(s.admin, 3).await;
    let mut after = Vec::new();
    for i in 0..N {
        after.push(pod_of[&lookup(s.admin, &format!("dev-{i}")).await].clone());
    }
    let moved: BTreeSet<usize> = (0..N).filter(|&i| before[i] != after[i]).collect();
    assert!(
        moved.len() > N / 5 && moved.iter().all(|&i| after[i] == "pod-c"),
        "about a third of the keys map to the new pod, and only there: {moved:?}"
    );

    fleet
        .until("the moved keys to reconnect", |s| {
            moved.iter().all(|i| s[i].backends.len() == 2)
        })
        .await;
    // Two more ticks: nothing else may be touched.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = fleet.snapshot();
    let ended: BTreeSet<usize> = (0..N).filter(|i| !seen[i].endings.is_empty()).collect();
    assert_eq!(
        ended, moved,
        "exactly the keys that map elsewhere were ended"
    );
    for i in 0..N {
        let now = seen[&i].backends.last().unwrap();
        assert_eq!(*now, after[i], "dev-{i} is connected where /lookup says");
        assert!(
            seen[&i].backends.len() <= 2,
            "dev-{i} moved once: {:?}",
            seen[&i]
        );
    }
    let counted = metric(
        s.admin,
        "ringway_rebalance_closed_total{upstream=\"chat\",reason=\"placement\"}",
    )
    .await;
    assert_eq!(counted as usize, moved.len());
}

/// least-conn: 60 tunnels over two pods, a third joins. The two shed down to their fair share
/// (20 each), the ended clients reconnect to the new pod, and it settles within tolerance.
async fn least_conn_sheds_down_to_the_fair_share(io: &'static str) {
    let dns = DnsServer::start().await;
    let port = free_port();
    let base = if io == "uring" { 91 } else { 101 };
    let (_pods, _) = pods(base, port, 3).await;
    let ips: Vec<String> = (0..3).map(|k| format!("127.0.0.{}", base + k)).collect();
    dns.set_a("chat.rb.test", &[&ips[0], &ips[1]], 1);
    let upstream = discovered(
        &dns,
        port,
        "least-conn",
        "rebalance = { max_per_second = 50, tolerance = 0.10 }",
    );
    let s = start(io, &upstream).await;
    active_backends(s.admin, 2).await;

    const N: usize = 60;
    let fleet = Fleet::start(s.gw.addr, N);
    fleet.until("60 tunnels", |_| true).await;
    let per = fleet.per_backend();
    assert_eq!(per.len(), 2, "{per:?}");

    dns.set_a("chat.rb.test", &[&ips[0], &ips[1], &ips[2]], 1);
    active_backends(s.admin, 3).await;
    // Fair share 20; over (1 + 0.10) × 20 = 22 a pod sheds.
    fleet
        .until("the pods to settle at their fair share", |_| {
            let per = fleet.per_backend();
            per.len() == 3 && per.values().all(|&n| n <= 22)
        })
        .await;
    let seen = fleet.snapshot();
    let ended = seen.values().filter(|c| !c.endings.is_empty()).count();
    assert!(
        (10..=30).contains(&ended),
        "about 20 tunnels moved, not a reshuffle: {ended}"
    );
    for c in seen.values().filter(|c| !c.endings.is_empty()) {
        assert_ne!(c.backends[0], "pod-c", "only the old pods shed: {c:?}");
    }
    let counted = metric(
        s.admin,
        "ringway_rebalance_closed_total{upstream=\"chat\",reason=\"fair_share\"}",
    )
    .await;
    assert_eq!(
        counted as usize,
        seen.values().map(|c| c.endings.len()).sum::<usize>()
    );
}

/// cookie: clients reconnect with their route cookie; one naming a shedding pod is re-placed
/// and gets the new pod's cookie.
async fn cookie_clients_of_a_shedding_pod_are_re_placed(io: &'static str) {
    let dns = DnsServer::start().await;
    let port = free_port();
    let base = if io == "uring" { 111 } else { 121 };
    let (_pods, _) = pods(base, port, 3).await;
    let ips: Vec<String> = (0..3).map(|k| format!("127.0.0.{}", base + k)).collect();
    dns.set_a("chat.rb.test", &[&ips[0], &ips[1]], 1);
    let upstream = discovered(
        &dns,
        port,
        "cookie",
        "rebalance = { max_per_second = 50, tolerance = 0.10 }\n[upstream.cookie]\nsecret = \"t\"",
    );
    let s = start(io, &upstream).await;
    active_backends(s.admin, 2).await;

    const N: usize = 40;
    let fleet = Fleet::start(s.gw.addr, N);
    fleet.until("40 tunnels", |_| true).await;
    assert!(fleet.snapshot().values().all(|c| c.cookie.is_some()));

    dns.set_a("chat.rb.test", &[&ips[0], &ips[1], &ips[2]], 1);
    active_backends(s.admin, 3).await;
    // Fair share 13.3; over 14.7 a pod sheds.
    fleet
        .until("the pods to settle at their fair share", |_| {
            let per = fleet.per_backend();
            per.len() == 3 && per.values().all(|&n| n <= 14)
        })
        .await;
    let seen = fleet.snapshot();
    let moved: Vec<&Seen> = seen
        .values()
        .filter(|c| c.backends.first() != c.backends.last())
        .collect();
    assert!(!moved.is_empty());
    for c in &moved {
        assert_eq!(
            c.backends.last().unwrap(),
            "pod-c",
            "re-placed on the new pod: {c:?}"
        );
    }
    // The cookie they hold now routes to the new pod.
    let c = moved[0];
    let r = s.gw.get("/whoami", c.cookie.as_deref()).await;
    assert_eq!(r.body, "pod-c", "{c:?}");
}

/// An operator drains pod-a: the token is required, pod-a takes no new connection, its
/// tunnels are ended (and reconnect to pod-b), `/backends` shows it; undrain restores it.
async fn admin_drain_moves_a_backends_tunnels_and_undrain_restores(io: &'static str) {
    let port = free_port();
    let base = if io == "uring" { 131 } else { 141 };
    let (_pods, _) = pods(base, port, 2).await;
    let upstream = format!(
        "balance = \"least-conn\"\nbackends = [{{ name = \"pod-a\", address = \"127.0.0.{}:{port}\" }}, \
         {{ name = \"pod-b\", address = \"127.0.0.{}:{port}\" }}]",
        base,
        base + 1
    );
    let s = start(io, &upstream).await;
    const N: usize = 20;
    let fleet = Fleet::start(s.gw.addr, N);
    fleet.until("20 tunnels", |_| true).await;
    assert_eq!(fleet.per_backend().len(), 2);

    let path = "/backends/chat/pod-a/drain?rate=5";
    assert_eq!(admin(s.admin, "POST", path, None, "").await.0, 401);
    assert_eq!(
        admin(s.admin, "POST", path, Some("wrong-token-0123456789"), "")
            .await
            .0,
        401
    );
    let cross = "Origin: http://evil.example\r\n";
    assert_eq!(
        admin(s.admin, "POST", path, Some(TOKEN), cross).await.0,
        403
    );
    assert_eq!(admin(s.admin, "GET", path, Some(TOKEN), "").await.0, 405);
    for bad in ["/backends/chat/pod-z/drain", "/backends/nope/pod-a/drain"] {
        assert_eq!(
            admin(s.admin, "POST", bad, Some(TOKEN), "").await.0,
            404,
            "{bad}"
        );
    }
    for bad in ["0", "-1", "x", "100001"] {
        let p = format!("/backends/chat/pod-a/drain?rate={bad}");
        assert_eq!(
            admin(s.admin, "POST", &p, Some(TOKEN), "").await.0,
            400,
            "{p}"
        );
    }
    assert!(
        fleet.snapshot().values().all(|c| c.endings.is_empty()),
        "refusals drain nothing"
    );

    let (status, body) = admin(s.admin, "POST", path, Some(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    let v = admin_json(s.admin, "/backends").await;
    let a = &v["upstreams"][0]["backends"][0];
    assert_eq!(
        (a["name"].as_str(), a["reason"].as_str()),
        (Some("pod-a"), Some("drained-admin"))
    );
    assert_eq!(a["admin_drain_rate"], 5);
    for _ in 0..6 {
        assert_eq!(
            s.gw.get("/whoami", None).await.body,
            "pod-b",
            "no new placement on pod-a"
        );
    }
    fleet
        .until("pod-a's tunnels to move to pod-b", |_| {
            fleet.per_backend() == BTreeMap::from([("pod-b".to_string(), N)])
        })
        .await;
    let seen = fleet.snapshot();
    for c in seen.values() {
        assert_eq!(
            c.endings.is_empty(),
            c.backends[0] == "pod-b",
            "only pod-a's: {c:?}"
        );
    }
    let drained = seen.values().filter(|c| !c.endings.is_empty()).count();
    let counted = metric(
        s.admin,
        "ringway_rebalance_closed_total{upstream=\"chat\",reason=\"admin_drain\"}",
    )
    .await;
    assert_eq!(counted as usize, drained);

    let undrain = "/backends/chat/pod-a/undrain";
    assert_eq!(admin(s.admin, "POST", undrain, None, "").await.0, 401);
    assert_eq!(
        admin(s.admin, "POST", undrain, Some(TOKEN), "").await.0,
        200
    );
    // least-conn: pod-a (no tunnel) takes the next connection again.
    assert_eq!(s.gw.get("/whoami", None).await.body, "pod-a");
}

/// A reload that changes where a hash policy takes its key from moves nobody: the hashes the
/// tunnels were placed by say nothing about the new key.
async fn a_new_key_source_moves_no_tunnel(io: &'static str) {
    let port = free_port();
    let base = if io == "uring" { 151 } else { 161 };
    let (_pods, _) = pods(base, port, 3).await;
    let backends = |n: u8| {
        (0..n)
            .map(|k| {
                format!(
                    "{{ name = \"pod-{}\", address = \"127.0.0.{}:{port}\" }}",
                    (b'a' + k) as char,
                    base + k
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let upstream = |key: &str, n: u8| {
        format!(
            "balance = \"hash:header:{key}\"\nrebalance = {{ max_per_second = 100 }}\nbackends = [{}]",
            backends(n)
        )
    };
    let s = start(io, &upstream("X-Device", 2)).await;
    const N: usize = 40;
    let fleet = Fleet::start(s.gw.addr, N);
    fleet.until("40 tunnels", |_| true).await;

    let token = s._token_file.0.clone();
    s.gw.rewrite_config(&gateway_config(
        io,
        s.admin,
        &token,
        &upstream("X-Other", 3),
    ));
    let (status, body) = admin(s.admin, "POST", "/reload", Some(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    active_backends(s.admin, 3).await;
    // Three ticks: a tunnel compared by the wrong key would be moved by then (100/s).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let seen = fleet.snapshot();
    assert!(
        seen.values().all(|c| c.endings.is_empty()),
        "no tunnel moved: {seen:?}"
    );
}

both_io!(
    scale_out_moves_exactly_the_keys_that_map_elsewhere,
    least_conn_sheds_down_to_the_fair_share,
    cookie_clients_of_a_shedding_pod_are_re_placed,
    admin_drain_moves_a_backends_tunnels_and_undrain_restores,
    a_new_key_source_moves_no_tunnel,
);
