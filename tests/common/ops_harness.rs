//! Shared by tests/admin.rs, tests/lifecycle.rs and tests/limits.rs: the real `ringway`
//! binary on port 0 with JSON logs (its bound addresses are read from the log), a raw
//! WebSocket client that counts every byte it moves (so `ringway_bytes_total` can be checked
//! exactly), a one-shot HTTP client and a `/metrics` parser. Every wait is a bounded poll.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header or label pairs.
pub type Headers = Vec<(String, String)>;
/// Status, headers (names lowercased), body.
pub type HttpResponse = (u16, Headers, String);

/// How long one network step may take before a test gives up (a hang guard, never asserted).
pub const STEP: Duration = Duration::from_secs(10);

/// A running gateway process; SIGKILLed when dropped.
/// Hang guard for a process expected to exit (draining included): 30 s of 25 ms polls.
const EXIT_POLLS: u32 = 1200;

pub struct Gateway {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Every stderr line so far (JSON with `--log-format json`).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `ringway run ARGS --log-format json` and waits (bounded) until it logs its
    /// listener and admin addresses.
    pub fn start(args: &[&str]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .arg("run")
            .args(args)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut listen = None;
        let mut admin = None;
        for _ in 0..400 {
            for line in log.lock().unwrap().iter() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let addr = v["addr"].as_str().and_then(|a| a.parse().ok());
                match v["message"].as_str() {
                    Some("listening") if listen.is_none() => listen = addr,
                    Some("admin listening") => admin = addr,
                    _ => {}
                }
            }
            if listen.is_some() && admin.is_some() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ringway exited with {status}:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let (Some(listen), Some(admin)) = (listen, admin) else {
            let _ = child.kill();
            panic!(
                "ringway did not log its addresses:\n{}",
                log.lock().unwrap().join("\n")
            );
        };
        Gateway {
            child,
            listen,
            admin,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid; no memory is involved.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    /// The quick form in front of `backends` (comma-separated), admin on port 0, plus `extra`.
    pub fn quick(backends: &str, extra: &[&str]) -> Gateway {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backends,
            "--admin",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Gateway::start(&args)
    }

    /// One WebSocket echo backend named `b0` and the quick form in front of it. Keep the
    /// backend alive as long as the gateway.
    pub async fn with_echo_backend(extra: &[&str]) -> (loadgen::Backend, Gateway) {
        let backend = loadgen::spawn_backend(loadgen::Mode::Ws, "b0")
            .await
            .unwrap();
        let gw = Gateway::quick(&backend.addr.to_string(), extra);
        (backend, gw)
    }

    /// Whether the process is still running (no waiting).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit code, once the process exits. The wait is bounded only so that a hung process
    /// fails the test instead of hanging CI; it is not a speed check.
    pub fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..EXIT_POLLS {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// SIGTERM, then the exit code (see [`Gateway::exit_code`]).
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.exit_code()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub async fn metrics(&self) -> Scrape {
        let (status, _, body) = http_get(self.admin, "/metrics").await.expect("scrape");
        assert_eq!(status, 200, "{body}");
        Scrape::parse(&body)
    }

    /// Polls /metrics until `ok` holds (bounded: ~10 s); returns the last scrape.
    pub async fn metrics_until(&self, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
        for _ in 0..200 {
            let s = self.metrics().await;
            if ok(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = self.metrics().await;
        assert!(ok(&s), "metrics never showed {what}:\n{}", s.text);
        s
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One parsed `/metrics` response.
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, Headers, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").expect("label");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
                None => (series.to_string(), Vec::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// Sends one request (`Connection: close` is the caller's to add) and reads the whole answer.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<HttpResponse> {
    tokio::time::timeout(STEP, async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        parse_response(&buf).ok_or_else(|| std::io::Error::other(format!("bad response: {buf:?}")))
    })
    .await
    .map_err(|_| std::io::Error::other("http timed out"))?
}

pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    http_raw(addr, req.as_bytes()).await
}

pub async fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    http_raw(addr, req.as_bytes()).await
}

/// A GET through the gateway with extra headers; returns status and headers.
pub async fn http_get_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!("GET / HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n");
    http_raw(addr, req.as_bytes()).await
}

pub fn parse_response(buf: &[u8]) -> Option<HttpResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((
        status,
        headers,
        String::from_utf8_lossy(&buf[end + 4..]).into_owned(),
    ))
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A raw WebSocket client that counts the bytes it moves after the handshake head.
pub struct Ws {
    stream: TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes written after the request head (client → backend).
    pub sent: u64,
    /// Bytes read after the 101 head (backend → client).
    pub received: u64,
    buf: Vec<u8>,
}

impl Ws {
    pub async fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> std::io::Result<Ws> {
        tokio::time::timeout(STEP, Self::connect_inner(addr, headers))
            .await
            .map_err(|_| std::io::Error::other("ws connect timed out"))?
    }

    async fn connect_inner(addr: SocketAddr, headers: &[(&str, &str)]) -> std::io::Result<Ws> {
        let mut stream = TcpStream::connect(addr).await?;
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed during handshake",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let (status, headers, _) =
            parse_response(&buf[..end]).ok_or_else(|| std::io::Error::other("bad head"))?;
        let rest = buf.split_off(end);
        Ok(Ws {
            stream,
            status,
            headers,
            sent: 0,
            received: rest.len() as u64,
            buf: rest,
        })
    }

    pub fn backend(&self) -> String {
        header(&self.headers, "x-backend")
            .unwrap_or("?")
            .to_string()
    }

    /// Sends one masked binary frame and waits for its echo, which must be identical.
    pub async fn echo(&mut self, payload: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(STEP, self.echo_inner(payload))
            .await
            .map_err(|_| std::io::Error::other("echo timed out"))?
    }

    async fn echo_inner(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut frame = vec![0x82];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await?;
        self.sent += frame.len() as u64;
        let want_head = if payload.len() < 126 { 2 } else { 4 };
        self.fill(want_head).await?;
        let len = match self.buf[1] & 0x7f {
            126 => u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize,
            n => n as usize,
        };
        let head = if self.buf[1] & 0x7f == 126 { 4 } else { 2 };
        self.fill(head + len).await?;
        let got: Vec<u8> = self.buf.drain(..head + len).skip(head).collect();
        if got != payload {
            return Err(std::io::Error::other("echo differs"));
        }
        Ok(())
    }

    async fn fill(&mut self, n: usize) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        while self.buf.len() < n {
            let r = self.stream.read(&mut chunk).await?;
            if r == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "tunnel closed",
                ));
            }
            self.received += r as u64;
            self.buf.extend_from_slice(&chunk[..r]);
        }
        Ok(())
    }

    /// Half-closes, reads until the peer closes, and returns `(sent, received)`.
    pub async fn finish(mut self) -> std::io::Result<(u64, u64)> {
        self.stream.shutdown().await?;
        let mut chunk = [0u8; 8192];
        tokio::time::timeout(STEP, async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => self.received += n as u64,
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::other("close timed out"))??;
        Ok((self.sent, self.received))
    }
}

/// An address that refuses connections (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A fresh temp directory for config files.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ringway-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
