//! Test fixtures for discovery and health: an authoritative DNS server on loopback whose
//! records the test edits (hickory-server with our own handler, so it can count queries,
//! answer SERVFAIL or stop), the real `ringway` binary started from a config, echo backends
//! on chosen loopback addresses, and a tiny HTTP client. Include with
//! `#[path = "common/dns.rs"] mod dns;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Default)]
struct Zone {
    a: HashMap<String, (Vec<IpAddr>, u32)>,
    srv: HashMap<String, (Vec<(String, u16)>, u32)>,
    servfail: bool,
}

#[derive(Default)]
struct Counters {
    /// Queries per name (lower case, no trailing dot), any type.
    queries: HashMap<String, u64>,
    /// NXDOMAIN answers per name.
    nxdomain: HashMap<String, u64>,
}

struct Handler {
    zone: Arc<Mutex<Zone>>,
    counters: Arc<Mutex<Counters>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let Ok(info) = request.request_info() else {
            return header.into();
        };
        let qname = info.query.name().to_string();
        let qtype = info.query.query_type();
        let name = key(&qname);
        let owner = Name::from_ascii(&qname).unwrap_or_default();
        let (records, code) = {
            let zone = self.zone.lock().unwrap();
            let mut c = self.counters.lock().unwrap();
            *c.queries.entry(name.clone()).or_default() += 1;
            if zone.servfail {
                (vec![], ResponseCode::ServFail)
            } else if let Some((ips, ttl)) = zone.a.get(&name) {
                let recs = ips
                    .iter()
                    .filter_map(|ip| match (ip, qtype) {
                        (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                        (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                        _ => None,
                    })
                    .map(|rd| Record::from_rdata(owner.clone(), *ttl, rd))
                    .collect();
                (recs, ResponseCode::NoError)
            } else if let Some((targets, ttl)) = zone.srv.get(&name) {
                let recs = if qtype == RecordType::SRV {
                    targets
                        .iter()
                        .map(|(t, port)| {
                            let target = Name::from_ascii(format!("{t}.")).unwrap();
                            let rd = RData::SRV(SRV::new(0, 10, *port, target));
                            Record::from_rdata(owner.clone(), *ttl, rd)
                        })
                        .collect()
                } else {
                    vec![]
                };
                (recs, ResponseCode::NoError)
            } else {
                *c.nxdomain.entry(name).or_default() += 1;
                (vec![], ResponseCode::NXDomain)
            }
        };
        header.set_response_code(code);
        let builder = MessageResponseBuilder::from_message_request(request);
        let msg = builder.build(header, records.iter(), [], [], []);
        response
            .send_response(msg)
            .await
            .unwrap_or_else(|_| header.into())
    }
}

/// An authoritative DNS server on `127.0.0.1:<random port>` (UDP and TCP).
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    counters: Arc<Mutex<Counters>>,
    server: Mutex<Option<ServerFuture<Handler>>>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        // The same port for UDP and TCP; another test may hold the TCP side of a UDP port.
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp, addr);
            }
        };
        let zone = Arc::new(Mutex::new(Zone::default()));
        let counters = Arc::new(Mutex::new(Counters::default()));
        let mut server = ServerFuture::new(Handler {
            zone: zone.clone(),
            counters: counters.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        DnsServer {
            addr,
            zone,
            counters,
            server: Mutex::new(Some(server)),
        }
    }

    /// Sets the A/AAAA records of `name`.
    pub fn set_a(&self, name: &str, ips: &[&str], ttl: u32) {
        let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
        self.zone.lock().unwrap().a.insert(key(name), (ips, ttl));
    }

    /// Sets the SRV records of `name`: `(target host, port)`.
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)], ttl: u32) {
        let t = targets.iter().map(|(h, p)| (h.to_string(), *p)).collect();
        self.zone.lock().unwrap().srv.insert(key(name), (t, ttl));
    }

    /// Removes every record of `name`: it answers NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        let mut z = self.zone.lock().unwrap();
        z.a.remove(&key(name));
        z.srv.remove(&key(name));
    }

    pub fn set_servfail(&self, on: bool) {
        self.zone.lock().unwrap().servfail = on;
    }

    pub fn queries(&self, name: &str) -> u64 {
        let c = self.counters.lock().unwrap();
        c.queries.get(&key(name)).copied().unwrap_or(0)
    }

    pub fn nxdomains(&self, name: &str) -> u64 {
        let c = self.counters.lock().unwrap();
        c.nxdomain.get(&key(name)).copied().unwrap_or(0)
    }

    /// Stops serving: the sockets close, queries fail (port unreachable).
    pub fn stop(&self) {
        drop(self.server.lock().unwrap().take());
    }
}

/// A port free on loopback now (bound and released), to pass to the binary.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An echo backend (loadgen's: `GET` answers its name, WebSocket upgrades echo) bound on a
/// chosen address, so pods can be told apart by loopback IP. Stops accepting when dropped
/// or [`Backend::kill`]ed (new connects are then refused).
pub struct Backend {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Backend {
    pub async fn start(addr: &str, name: &str) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(loadgen::run_backend(
            listener,
            loadgen::Mode::Ws,
            name.into(),
        ));
        Backend { addr, task }
    }

    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real `ringway` binary, run from a config; killed (and its log printed if the test
/// failed) when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    config: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Gateway {
    /// Starts the binary with `config`, in which `{LISTEN}` is replaced by a free loopback
    /// address; returns once that address accepts connections.
    pub async fn start(config: &str) -> Gateway {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stem = format!(
            "ringway-disc-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir();
        let (cfg_path, log) = (
            dir.join(format!("{stem}.toml")),
            dir.join(format!("{stem}.log")),
        );
        std::fs::write(&cfg_path, config.replace("{LISTEN}", &addr.to_string())).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            addr,
            child,
            log,
            config: cfg_path,
        };
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                return gw;
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("ringway exited with {status}:\n{}", gw.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ringway never listened on {addr}:\n{}", gw.log_text());
    }

    /// Rewrites the config file (`{LISTEN}` replaced as at start), for a reload.
    #[allow(dead_code)] // not every test file that includes this reloads
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(
            &self.config,
            config.replace("{LISTEN}", &self.addr.to_string()),
        )
        .unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` with an optional `Cookie` header value.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        get(self.addr, path, cookie).await
    }

    /// Polls `GET path` (every 50 ms, at most `tries` times) until `ok` holds; returns the
    /// response that satisfied it, or panics with the last one and the gateway's log.
    pub async fn poll_until(
        &self,
        path: &str,
        cookie: Option<&str>,
        tries: usize,
        ok: impl Fn(&Resp) -> bool,
    ) -> Resp {
        let mut last = None;
        for _ in 0..tries {
            let r = self.get(path, cookie).await;
            if ok(&r) {
                return r;
            }
            last = Some(r);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "condition never held; last response {last:?}\n{}",
            self.log_text()
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- ringway log ----\n{}", self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// What a test looks at in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    /// 0 when the connection failed or the response was not HTTP.
    pub status: u16,
    pub body: String,
    /// `name=value` of the first `Set-Cookie`, if any.
    pub set_cookie: Option<String>,
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Resp {
    let fail = Resp {
        status: 0,
        body: String::new(),
        set_cookie: None,
    };
    let once = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{cookie}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let Ok(Some(buf)) = tokio::time::timeout(Duration::from_secs(10), once).await else {
        return fail;
    };
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return fail;
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let set_cookie = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().split(';').next().unwrap_or("").to_string());
    Resp {
        status,
        body: body.to_string(),
        set_cookie,
    }
}
