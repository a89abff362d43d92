//! The application under test for `tests/socketio.rs`: three socket.io pods, the DNS server
//! that names them, ringway in front, the clients, and what each client did (folded from the
//! clients' JSON events).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde_json::Value;

use crate::dns::{self, DnsServer};
use crate::gateway::{self, within};
use crate::node::{self, Node};

/// Clients per transport mode: `N_WS` WebSocket-only and `N_UPGRADE` polling-then-upgrade.
pub const N_WS: usize = 10;
pub const N_UPGRADE: usize = 10;
pub const CLIENTS: usize = N_WS + N_UPGRADE;

/// One socket.io server process: a pod with a DNS name.
pub struct Pod {
    pub name: &'static str,
    pub ip: String,
    pub port: u16,
    pub dns: String,
    pub server: Node,
}

impl Pod {
    async fn start(name: &'static str, ip: String, domain: &str) -> Pod {
        let server = Node::spawn("server.js", &[&ip, "0", name]);
        within(&format!("socket.io server {name} listening"), async {
            server
                .until(|ev| ev.iter().any(|e| e["ev"] == "listening"))
                .await
        })
        .await;
        let port = server.named("listening")[0]["port"].as_u64().unwrap() as u16;
        let dns = format!("{name}.{domain}");
        Pod {
            name,
            ip,
            port,
            dns,
            server,
        }
    }

    /// The `dns = [...]` entry of this pod.
    pub fn target(&self) -> String {
        format!("\"{}:{}\"", self.dns, self.port)
    }
}

/// What one client did, folded from its events.
#[derive(Debug, Default, Clone)]
pub struct ClientLog {
    /// The backend of each session, in order (a second entry = socket.io reconnected it).
    pub sessions: Vec<String>,
    /// `(session index, seq, backend, ok)` for every acknowledged echo.
    pub echoes: Vec<(usize, u64, String, bool)>,
    pub upgrades: usize,
    /// `(reason, WebSocket close code)` of each disconnect.
    pub disconnects: Vec<(String, Option<u64>)>,
    /// Messages sent without an ack (sent again after the next connect).
    pub unacked: usize,
}

impl ClientLog {
    pub fn echoes_in(&self, session: usize) -> usize {
        self.echoes.iter().filter(|e| e.0 == session).count()
    }
}

pub fn fold(events: &[Value]) -> Vec<ClientLog> {
    let mut logs = vec![ClientLog::default(); CLIENTS];
    for e in events {
        let Some(c) = e["id"].as_u64().and_then(|i| logs.get_mut(i as usize)) else {
            continue;
        };
        let s = |k: &str| e[k].as_str().unwrap_or("?").to_string();
        match e["ev"].as_str().unwrap_or("") {
            "connected" => c.sessions.push(s("backend")),
            "echo" => {
                let session = c.sessions.len().saturating_sub(1);
                let seq = e["seq"].as_u64().unwrap_or(0);
                c.echoes.push((session, seq, s("backend"), e["ok"] == true));
            }
            "upgraded" => c.upgrades += 1,
            "disconnected" => c.disconnects.push((s("reason"), e["code"].as_u64())),
            "unacked" => c.unacked += 1,
            _ => {}
        }
    }
    logs
}

/// Clients `N_WS..` long-poll first and upgrade.
pub fn upgrades_by_design(id: usize) -> bool {
    id >= N_WS
}

/// `within(..)` with a failure message computed only on timeout (the clients' and servers'
/// stories), for waits whose cause is otherwise hard to read.
pub async fn within_or<T>(
    what: &str,
    diag: impl FnOnce() -> String,
    f: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(gateway::STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}\n{}", diag()),
    }
}

/// The app: three pods, DNS, the gateway in front, and the clients.
pub struct App {
    /// `a` and `b` in DNS from the start, `c` not yet.
    pub pods: [Pod; 3],
    pub dns: DnsServer,
    /// Its log is printed if the test fails.
    pub gw: dns::Gateway,
    pub clients: Node,
    pub io: &'static str,
}

impl App {
    /// Pods `a`, `b` (in DNS) and `c` (not yet) on 127.0.0.`ip_base`+1..=3 (distinct per test,
    /// so tests run in parallel), ringway in front with `config(dns, pods)`, then the clients.
    /// `domain` tells this test's DNS names apart.
    pub async fn start(
        io: &'static str,
        ip_base: u8,
        domain: &str,
        config: impl FnOnce(&DnsServer, &[Pod; 3]) -> String,
    ) -> App {
        node::node_modules(); // install first: a missing npm fails here, with its message
        let ip = |n: u8| format!("127.0.0.{}", ip_base + n);
        let pods = [
            Pod::start("a", ip(1), domain).await,
            Pod::start("b", ip(2), domain).await,
            Pod::start("c", ip(3), domain).await,
        ];
        let dns = DnsServer::start().await;
        dns.set_a(&pods[0].dns, &[&pods[0].ip], 1);
        dns.set_a(&pods[1].dns, &[&pods[1].ip], 1);
        let gw = dns::Gateway::start(&config(&dns, &pods)).await;
        // Both pods in the table before any client connects (server.js answers its name on `/`).
        within("a and b both answer through the gateway", async {
            let mut seen = BTreeSet::new();
            while seen.len() < 2 {
                let r = gw.get("/", None).await;
                if r.status == 200 {
                    seen.insert(r.body);
                }
            }
        })
        .await;
        let url = format!("http://{}", gw.addr);
        let (n_ws, n_up) = (N_WS.to_string(), N_UPGRADE.to_string());
        let clients = Node::spawn("client.js", &[&url, &n_ws, &n_up]);
        App {
            pods,
            dns,
            gw,
            clients,
            io,
        }
    }

    /// The admin listener's address, from the gateway's "admin listening" log line.
    pub async fn admin_addr(&self) -> SocketAddr {
        within("the admin listener's address in the log", async {
            loop {
                let log = gateway::strip_ansi(&self.gw.log_text());
                let found = log
                    .lines()
                    .filter(|l| l.contains("admin listening"))
                    .find_map(|l| {
                        let rest = &l[l.find(" addr=")? + " addr=".len()..];
                        rest.split_whitespace()
                            .next()?
                            .trim_matches('"')
                            .parse()
                            .ok()
                    });
                if let Some(a) = found {
                    return a;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
    }

    pub fn logs(&self) -> Vec<ClientLog> {
        fold(&self.clients.events())
    }

    /// Bounded wait until `done(client logs)` holds; on timeout, the whole story.
    pub async fn until(&self, what: &str, done: impl Fn(&[ClientLog]) -> bool) {
        within_or(what, || self.diag(), async {
            self.clients.until(|ev| done(&fold(ev))).await
        })
        .await
    }

    /// Each client's summary, then every process's stderr and last events.
    pub fn diag(&self) -> String {
        let mut s = String::from("--- clients ---\n");
        for (id, c) in self.logs().iter().enumerate() {
            let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
            for (r, _) in &c.disconnects {
                *reasons.entry(r).or_default() += 1;
            }
            s.push_str(&format!(
                "client {id}: sessions {:?}, {} echoes, {} upgrades, disconnects {:?}, \
                 {} unacked\n",
                c.sessions,
                c.echoes.len(),
                c.upgrades,
                reasons,
                c.unacked
            ));
        }
        s.push_str(&self.clients.diagnostics());
        for p in &self.pods {
            s.push('\n');
            s.push_str(&p.server.diagnostics());
        }
        s
    }
}
