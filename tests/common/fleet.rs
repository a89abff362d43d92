//! A fleet of WebSocket clients for the rebalancing tests (`tests/rebalance.rs`): each holds one
//! tunnel through the gateway as device `dev-i`, records which backend answered (`X-Backend`)
//! and how the gateway ended it, and reconnects with its route cookie, as a device would.
//! Plus the admin-port requests those tests make. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bounds a wait: a hang fails the test instead of hanging it.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// One admin request: `(status, body)`.
pub async fn admin(
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

/// A counter's value from `/metrics` (0 when absent).
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = admin(addr, "GET", "/metrics", None, "").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// What one client saw: the backend (`X-Backend`) of each of its connections, how each ended,
/// and its route cookie.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub backends: Vec<String>,
    pub endings: Vec<String>,
    pub cookie: Option<String>,
}

/// Clients each holding one WebSocket through the gateway, reconnecting (up to
/// `MAX_CONNECTS` times) whenever the gateway ends it.
pub struct Fleet {
    seen: Arc<Mutex<BTreeMap<usize, Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub const MAX_CONNECTS: usize = 6;

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl Fleet {
    /// `n` clients; client `i` sends `X-Device: dev-i`, and the route cookie once it has one.
    pub fn start(gw: SocketAddr, n: usize) -> Fleet {
        let seen: Arc<Mutex<BTreeMap<usize, Seen>>> = Default::default();
        let tasks = (0..n)
            .map(|i| tokio::spawn(client(gw, i, seen.clone())))
            .collect();
        Fleet { seen, tasks }
    }

    pub fn snapshot(&self) -> BTreeMap<usize, Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until every client is connected and `ok` holds for what they saw.
    pub async fn until(&self, what: &str, ok: impl Fn(&BTreeMap<usize, Seen>) -> bool) {
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
    pub fn per_backend(&self) -> BTreeMap<String, usize> {
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
