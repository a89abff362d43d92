//! Shared helpers for the data-plane end-to-end tests: start the real `ringway` binary, talk to it
//! with a hand-written HTTP/1.1 client, and stand up hand-written or tokio-tungstenite backends.
//!
//! Included by each `tests/dataplane_*.rs` with
//! `#[macro_use] #[path = "common/gateway.rs"] mod gateway;`.
//! Nothing here shares code with the gateway: the HTTP parsing and chunk decoding are our own.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for any single network step (a step that should take microseconds).
pub const STEP: Duration = Duration::from_secs(10);

// `both_io!`: one test body run on both io backends (shared with the ops harness's tests).
include!("both_io.rs");

/// Bounded await: a hung gateway fails the test instead of hanging CI.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

// ------------------------------------------------------------------------------------------------
// the gateway process

pub struct Gateway {
    child: Child,
    /// First listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in config order.
    pub addrs: Vec<SocketAddr>,
    pub io: String,
    log: Arc<Mutex<String>>,
    config: Option<PathBuf>,
}

static CONFIG_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Gateway {
    /// Quick form: `ringway run --listen 127.0.0.1:0 --admin "" --io IO ARGS...`.
    /// `args` may carry its own `--listen`.
    pub fn start(io: &str, args: &[&str]) -> Gateway {
        let mut v: Vec<String> = vec!["run".into()];
        if !args.contains(&"--listen") {
            v.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        v.extend(["--admin".into(), String::new(), "--io".into(), io.into()]);
        v.extend(args.iter().map(|s| s.to_string()));
        Self::spawn(io, v, None, 1)
    }

    /// `ringway run --config FILE --io IO` with `toml` written to a temp file; the config's
    /// `admin` should be "" (we add `admin = ""` at the top when the text has none).
    pub fn start_config(io: &str, toml: &str) -> Gateway {
        let n = CONFIG_SEQ.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ringway-e2e-{}-{n}.toml", std::process::id()));
        let mut text = String::new();
        if !toml.contains("admin") {
            text.push_str("admin = \"\"\n");
        }
        text.push_str(toml);
        std::fs::write(&path, text).expect("write config");
        let listeners = toml.matches("[[listener]]").count().max(1);
        let v = vec![
            "run".into(),
            "--config".into(),
            path.display().to_string(),
            "--io".into(),
            io.into(),
        ];
        Self::spawn(io, v, Some(path), listeners)
    }

    fn spawn(io: &str, args: Vec<String>, config: Option<PathBuf>, listeners: usize) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .args(&args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let clean = strip_ansi(&line);
                    if clean.contains("listening") && !clean.contains("admin") {
                        if let Some(a) = field(&clean, "addr") {
                            if let Ok(a) = a.parse() {
                                let _ = tx.send(a);
                            }
                        }
                    }
                    let mut l = log.lock().unwrap();
                    if l.len() < 4 << 20 {
                        l.push_str(&clean);
                        l.push('\n');
                    }
                }
            });
        }
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            match rx.recv_timeout(Duration::from_secs(15)) {
                Ok(a) => addrs.push(a),
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "ringway (--io {io}) did not start listening (exit: {status:?}); args {args:?}\n\
                         {}--- log ---\n{}",
                        if io == "uring" {
                            "!!! io_uring backend failed to start: this machine may lack io_uring \
                             (seccomp / kernel.io_uring_disabled); the uring half of the suite \
                             did NOT run !!!\n"
                        } else {
                            ""
                        },
                        log.lock().unwrap()
                    );
                }
            }
        }
        Gateway {
            child,
            addr: addrs[0],
            addrs,
            io: io.into(),
            log,
            config,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "ringway exited unexpectedly: {st}\n--- log ---\n{}",
                self.log()
            );
        }
    }

    /// Open file descriptors of the gateway process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Open fds by kind: (sockets, pipe ends, everything else).
    pub fn fd_kinds(&self) -> (usize, usize, usize) {
        let (mut sock, mut pipe, mut other) = (0, 0, 0);
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            for e in dir.flatten() {
                match std::fs::read_link(e.path()) {
                    Ok(t) if t.to_string_lossy().starts_with("socket:") => sock += 1,
                    Ok(t) if t.to_string_lossy().starts_with("pipe:") => pipe += 1,
                    Ok(_) => other += 1,
                    Err(_) => {}
                }
            }
        }
        (sock, pipe, other)
    }

    /// Waits (bounded) until sockets and other fds are back to `base` and pipe ends are at most
    /// `max_pipe_fds` (pooled pipes are kept up to a cap); returns the last kinds seen.
    pub async fn settle_kinds(
        &self,
        base: (usize, usize, usize),
        max_pipe_fds: usize,
    ) -> (usize, usize, usize) {
        let mut k = self.fd_kinds();
        for _ in 0..100 {
            if k.0 <= base.0 && k.1 <= max_pipe_fds && k.2 <= base.2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            k = self.fd_kinds();
        }
        k
    }

    /// Waits (bounded) until the fd count is at most `limit`; returns the last count seen.
    /// io_uring keeps an fd alive until a cancelled poll completes, so allow time to settle.
    pub async fn settle_fds(&self, limit: usize) -> usize {
        let mut n = self.fd_count();
        for _ in 0..100 {
            if n <= limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            n = self.fd_count();
        }
        n
    }
}

/// Admin and `/metrics` access, for tests whose config sets `admin = "127.0.0.1:0"`.
impl Gateway {
    /// The admin listener's address, read (bounded wait) from its "admin listening" log line.
    pub async fn admin_addr(&self) -> SocketAddr {
        for _ in 0..200 {
            let log = self.log();
            let found = log
                .lines()
                .filter(|l| l.contains("admin listening"))
                .find_map(|l| field(l, "addr").and_then(|a| a.parse().ok()));
            if let Some(a) = found {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no \"admin listening\" line (does the config set admin?)\n--- log ---\n{}",
            self.log()
        );
    }

    /// Waits (bounded, 10 s) until the log holds `needle`, and panics with the log if it never
    /// does. The log is read from the child's stderr by a thread, so a line the gateway wrote
    /// before answering a request may not be in `log()` yet when the answer arrives.
    pub async fn log_until(&self, needle: &str) {
        for _ in 0..200 {
            if self.log().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {needle:?}\n--- log ---\n{}", self.log());
    }

    /// One scrape of `/metrics` on the admin listener.
    pub async fn metrics(&self) -> Metrics {
        let admin = self.admin_addr().await;
        let r = roundtrip(
            admin,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        Metrics { text: r.body_str() }
    }
}

/// A `/metrics` text (Prometheus exposition format).
pub struct Metrics {
    pub text: String,
}

impl Metrics {
    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for line in self.text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (n, body) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                continue;
            }
            let has = |k: &str, v: &str| {
                body.split("\",")
                    .filter_map(|p| p.split_once("=\""))
                    .any(|(a, b)| a == k && b.trim_end_matches('"') == v)
            };
            if labels.iter().all(|(k, v)| has(k, v)) {
                total += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        total
    }
}

/// A config: `top` first (top-level keys such as `admin`, then sections such as `[timeouts]`),
/// one http listener `main` on 127.0.0.1:0 with no default upstream, and for each
/// `(path_prefix, upstream name, backends)` an upstream routed by that prefix, in order.
pub fn routed_config(top: &str, routes: &[(&str, &str, &[SocketAddr])]) -> String {
    let mut s = format!(
        "{top}\n\n[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\n"
    );
    for (prefix, up, _) in routes {
        s.push_str(&format!(
            "\n[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"{up}\"\n"
        ));
    }
    for (_, up, backends) in routes {
        let list: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ name = \"{up}{i}\", address = \"{a}\" }}"))
            .collect();
        s.push_str(&format!(
            "\n[[upstream]]\nname = \"{up}\"\nbackends = [{}]\n",
            list.join(", ")
        ));
    }
    s
}

/// `config` with every upstream's WebSocket tunnels blind (`websocket_frames = false`), for
/// tests that push raw bytes, not WebSocket frames, through an upgrade.
pub fn blind_tunnels(config: &str) -> String {
    config.replace("[[upstream]]\n", "[[upstream]]\nwebsocket_frames = false\n")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let crashed = self.child.try_wait().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.config {
            let _ = std::fs::remove_file(p);
        }
        if let Some(st) = crashed {
            if !std::thread::panicking() {
                panic!(
                    "ringway exited during the test: {st}\n--- log ---\n{}",
                    self.log()
                );
            }
        }
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=value` out of a text log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    Some(
        rest.split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches('"'),
    )
}

/// A port on loopback where nothing listens (connects are refused).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ------------------------------------------------------------------------------------------------
// a hand-written HTTP/1.1 message reader (responses at the client, requests at the backend)

#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Request: method; response: "".
    pub method: String,
    /// Request: target.
    pub path: String,
    /// "HTTP/1.1" etc.
    pub version: String,
    /// Response status (0 for requests).
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// How the body was framed: "none", "length", "chunked", "close".
    pub framing: &'static str,
    pub raw_head: Vec<u8>,
}

impl Message {
    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    /// `Connection` lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.all("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Head as text and the body's size and start, for assertion messages.
    pub fn brief(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(120)]).into_owned();
        format!(
            "{:?} + body {} B {body:?}",
            String::from_utf8_lossy(&self.raw_head),
            self.body.len()
        )
    }
}

/// A buffered reader over a stream.
pub struct Conn {
    pub s: TcpStream,
    pub buf: VecDeque<u8>,
}

#[derive(Debug)]
pub enum ReadErr {
    /// Clean EOF before any byte of a message.
    Eof,
    /// EOF or reset in the middle of a message, or an I/O error.
    Broken(String),
    /// Bytes that are not HTTP/1.x.
    Invalid(String),
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        let s = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        s.set_nodelay(true).unwrap();
        Conn::new(s)
    }
    pub fn new(s: TcpStream) -> Conn {
        Conn {
            s,
            buf: VecDeque::new(),
        }
    }
    pub async fn send(&mut self, bytes: &[u8]) {
        within("write", self.s.write_all(bytes))
            .await
            .expect("write");
    }
    /// Reads more bytes into the buffer; Ok(0) at EOF.
    async fn fill(&mut self) -> Result<usize, ReadErr> {
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout(STEP, self.s.read(&mut tmp)).await {
            Err(_) => Err(ReadErr::Broken("read timed out".into())),
            Ok(Err(e)) => Err(ReadErr::Broken(e.to_string())),
            Ok(Ok(n)) => {
                self.buf.extend(&tmp[..n]);
                Ok(n)
            }
        }
    }
    /// Reads until EOF (bounded); returns everything buffered plus what arrived.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match self.fill().await {
                Ok(0) => return Ok(self.buf.drain(..).collect()),
                Ok(_) => {}
                Err(ReadErr::Broken(e)) => {
                    if e.contains("timed out") {
                        return Err(e);
                    }
                    // reset: still return what we have, the caller decides
                    return Ok(self.buf.drain(..).collect());
                }
                Err(e) => return Err(format!("{e:?}")),
            }
        }
    }
    /// True when the peer closed (EOF or reset) with no further bytes, within STEP.
    pub async fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match self.fill().await {
            Ok(0) => true,
            Ok(_) => false,
            Err(ReadErr::Broken(e)) => !e.contains("timed out"),
            Err(_) => false,
        }
    }
    pub async fn head(&mut self) -> Result<Vec<u8>, ReadErr> {
        loop {
            let b = self.buf.make_contiguous();
            if let Some(i) = b.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return Ok(head);
            }
            if self.buf.len() > 1 << 20 {
                return Err(ReadErr::Invalid("head over 1 MiB".into()));
            }
            let had = self.buf.len();
            match self.fill().await? {
                0 if had == 0 => return Err(ReadErr::Eof),
                0 => {
                    return Err(ReadErr::Broken(format!(
                        "EOF inside a head: {:?}",
                        String::from_utf8_lossy(self.buf.make_contiguous())
                    )))
                }
                _ => {}
            }
        }
    }
    async fn exact(&mut self, n: usize) -> Result<Vec<u8>, ReadErr> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(ReadErr::Broken(format!(
                    "EOF after {} of {n} body bytes",
                    self.buf.len()
                )));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }
    async fn line(&mut self) -> Result<Vec<u8>, ReadErr> {
        loop {
            let b = self.buf.make_contiguous();
            if let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(l[..i].to_vec());
            }
            if self.buf.len() > 65536 {
                return Err(ReadErr::Invalid("line over 64 KiB".into()));
            }
            if self.fill().await? == 0 {
                return Err(ReadErr::Broken("EOF inside a chunked body".into()));
            }
        }
    }
    async fn chunked(&mut self, m: &mut Message) -> Result<(), ReadErr> {
        loop {
            let l = self.line().await?;
            let l = String::from_utf8_lossy(&l).into_owned();
            let size = l.split(';').next().unwrap().trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| ReadErr::Invalid(format!("bad chunk size line {l:?}")))?;
            if n == 0 {
                loop {
                    let t = self.line().await?;
                    if t.is_empty() {
                        return Ok(());
                    }
                    let t = String::from_utf8_lossy(&t).into_owned();
                    let (k, v) = t
                        .split_once(':')
                        .ok_or_else(|| ReadErr::Invalid(format!("bad trailer {t:?}")))?;
                    m.trailers.push((k.trim().into(), v.trim().into()));
                }
            }
            let data = self.exact(n).await?;
            m.body.extend(data);
            if self.exact(2).await? != b"\r\n" {
                return Err(ReadErr::Invalid("chunk not followed by CRLF".into()));
            }
        }
    }

    /// Reads one response. `head_request`: the request was HEAD (no body whatever the headers say).
    /// Interim (1xx) responses are returned as they come.
    pub async fn response(&mut self, head_request: bool) -> Result<Message, ReadErr> {
        self.response_for(|_| head_request).await
    }

    /// Like `response`, with `no_body(status)` saying whether this response answers a HEAD.
    pub async fn response_for(
        &mut self,
        no_body: impl Fn(u16) -> bool,
    ) -> Result<Message, ReadErr> {
        let raw = self.head().await?;
        let mut m = parse_head(&raw, false)?;
        let te_chunked = m
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().trim().ends_with("chunked"));
        if no_body(m.status) || (100..200).contains(&m.status) || m.status == 204 || m.status == 304
        {
            m.framing = "none";
        } else if te_chunked {
            m.framing = "chunked";
            self.chunked(&mut m).await?;
        } else if let Some(cl) = m.header("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| ReadErr::Invalid(format!("bad content-length {cl:?}")))?;
            m.framing = "length";
            m.body = self.exact(n).await?;
        } else {
            m.framing = "close";
            let mut body: Vec<u8> = self.buf.drain(..).collect();
            loop {
                match self.fill().await {
                    Ok(0) => break,
                    Ok(_) => body.extend(self.buf.drain(..)),
                    Err(e) => return Err(e),
                }
            }
            m.body = body;
        }
        Ok(m)
    }

    /// A final (non-1xx) response, skipping interim ones.
    pub async fn final_response(&mut self, head_request: bool) -> Message {
        for _ in 0..10 {
            let m = self.response(head_request).await.expect("response");
            if m.status >= 200 {
                return m;
            }
        }
        panic!("too many interim responses")
    }

    /// Exactly `n` bytes (from the buffer, then the stream).
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadErr> {
        self.exact(n).await
    }

    /// One request head (backend side), body not read: see `request_body`.
    pub async fn request_head(&mut self) -> Result<Message, ReadErr> {
        let raw = self.head().await?;
        parse_head(&raw, true)
    }

    /// The body of request `m` (read with `request_head`), per its framing, into `m.body`.
    pub async fn request_body(&mut self, m: &mut Message) -> Result<(), ReadErr> {
        let te_chunked = m
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().trim().ends_with("chunked"));
        if te_chunked {
            m.framing = "chunked";
            self.chunked(m).await
        } else if let Some(cl) = m.header("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| ReadErr::Invalid(format!("bad content-length {cl:?}")))?;
            m.framing = "length";
            m.body = self.exact(n).await?;
            Ok(())
        } else {
            m.framing = "none";
            Ok(())
        }
    }

    /// Reads one request (backend side). Sends `100 Continue` first when asked
    /// (`expect_reply`) and the request carries `Expect: 100-continue`.
    pub async fn request(&mut self, expect_reply: bool) -> Result<Message, ReadErr> {
        let raw = self.head().await?;
        let mut m = parse_head(&raw, true)?;
        if expect_reply
            && m.header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        let te_chunked = m
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().trim().ends_with("chunked"));
        if te_chunked {
            m.framing = "chunked";
            self.chunked(&mut m).await?;
        } else if let Some(cl) = m.header("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| ReadErr::Invalid(format!("bad content-length {cl:?}")))?;
            m.framing = "length";
            m.body = self.exact(n).await?;
        } else {
            m.framing = "none";
        }
        Ok(m)
    }
}

pub fn parse_head(raw: &[u8], request: bool) -> Result<Message, ReadErr> {
    let text =
        std::str::from_utf8(raw).map_err(|_| ReadErr::Invalid("head is not UTF-8".into()))?;
    let mut lines = text.trim_end_matches("\r\n").split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut m = Message {
        raw_head: raw.to_vec(),
        ..Default::default()
    };
    let parts: Vec<&str> = first.splitn(3, ' ').collect();
    if request {
        if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
            return Err(ReadErr::Invalid(format!("bad request line {first:?}")));
        }
        m.method = parts[0].into();
        m.path = parts[1].into();
        m.version = parts[2].into();
    } else {
        if parts.len() < 2
            || !(parts[0] == "HTTP/1.1" || parts[0] == "HTTP/1.0")
            || parts[1].len() != 3
        {
            return Err(ReadErr::Invalid(format!("bad status line {first:?}")));
        }
        m.version = parts[0].into();
        m.status = parts[1]
            .parse()
            .map_err(|_| ReadErr::Invalid(format!("bad status {first:?}")))?;
        if !(100..600).contains(&m.status) {
            return Err(ReadErr::Invalid(format!("status out of range {first:?}")));
        }
    }
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| ReadErr::Invalid(format!("bad header line {l:?}")))?;
        if k.is_empty() || k.contains(' ') || k.contains('\t') {
            return Err(ReadErr::Invalid(format!("bad header name {l:?}")));
        }
        m.headers.push((k.into(), v.trim().into()));
    }
    Ok(m)
}

/// One request on a new connection; returns the final response.
pub async fn roundtrip(addr: SocketAddr, req: &[u8]) -> Message {
    let mut c = Conn::connect(addr).await;
    c.send(req).await;
    let head = req.starts_with(b"HEAD ");
    c.final_response(head).await
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

// ------------------------------------------------------------------------------------------------
// backends

/// A backend: its address, how many connections it accepted, and the requests it saw.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<Message>>>,
    pub name: String,
}

impl Backend {
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> Vec<Message> {
        self.requests.lock().unwrap().clone()
    }
}

/// A raw TCP backend: `handler(stream, connection index)` per accepted connection.
pub async fn raw_backend<F, Fut>(handler: F) -> Backend
where
    F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    raw_backend_on("127.0.0.1:0", handler).await
}

pub async fn raw_backend_on<F, Fut>(bind: &str, handler: F) -> Backend
where
    F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let b = Backend {
        addr,
        accepts: accepts.clone(),
        requests: Arc::new(Mutex::new(Vec::new())),
        name: addr.to_string(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true);
            let n = accepts.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(s, n));
        }
    });
    b
}

pub type Responder = Arc<dyn Fn(&Message, usize) -> Vec<u8> + Send + Sync>;

/// A keep-alive HTTP backend: reads requests (sending `100 Continue` when asked), records them,
/// answers `respond(request, connection index)` (raw bytes); closes after a response that
/// contains `Connection: close` or when the request asked to close.
pub async fn http_backend(respond: Responder) -> Backend {
    let requests: Arc<Mutex<Vec<Message>>> = Arc::new(Mutex::new(Vec::new()));
    let reqs = requests.clone();
    let mut b = raw_backend(move |s, n| {
        let respond = respond.clone();
        let reqs = reqs.clone();
        async move {
            let mut c = Conn::new(s);
            while let Ok(req) = c.request(true).await {
                let resp = respond(&req, n);
                let close_req = req.connection_has("close");
                reqs.lock().unwrap().push(req);
                if c.s.write_all(&resp).await.is_err() {
                    return;
                }
                let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
                if close_req || text.contains("connection: close") {
                    return;
                }
            }
        }
    })
    .await;
    b.requests = requests;
    b
}

/// What a `scripted_backend` does with one request, decided from its head.
pub enum Reply {
    /// Read the body, then answer `respond(request with its body)`.
    After(fn(&Message) -> Vec<u8>),
    /// Answer these bytes first, then read the body (as a server declining an upgrade may).
    Before(Vec<u8>),
    /// Read the body, then reset the connection (RST) without answering.
    Reset,
    /// Read the body, accept the WebSocket upgrade (101, right accept), then echo every byte.
    Tunnel,
}

/// `Reply::After(echo_reply)`: `200`, `X-Seq` and `X-Path` echoed, body `METHOD PATH len=N\n`
/// then the request body (none for HEAD, with the Content-Length a GET would get).
pub fn echo_reply(m: &Message) -> Vec<u8> {
    let mut body = format!("{} {} len={}\n", m.method, m.path, m.body.len()).into_bytes();
    body.extend_from_slice(&m.body);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nX-Seq: {}\r\nX-Path: {}\r\nContent-Length: {}\r\n\r\n",
        m.header("x-seq").unwrap_or("-"),
        m.path,
        body.len()
    )
    .into_bytes();
    if m.method != "HEAD" {
        out.extend(body);
    }
    out
}

pub type Script = Arc<dyn Fn(&Message, usize) -> Reply + Send + Sync>;

/// A keep-alive backend that never sends `100 Continue` on its own and records every request
/// with the exact body bytes it read (a request whose body could not be read is recorded with
/// framing "broken", then the connection is dropped). `script(head, connection index)` decides
/// the reply. Closes after a reply with `Connection: close` or when the request asked to close.
pub async fn scripted_backend(script: Script) -> Backend {
    let requests: Arc<Mutex<Vec<Message>>> = Arc::new(Mutex::new(Vec::new()));
    let reqs = requests.clone();
    let mut b = raw_backend(move |s, n| {
        let script = script.clone();
        let reqs = reqs.clone();
        async move {
            let mut c = Conn::new(s);
            while let Ok(mut req) = c.request_head().await {
                let reply = script(&req, n);
                if let Reply::Before(bytes) = &reply {
                    if c.s.write_all(bytes).await.is_err() {
                        reqs.lock().unwrap().push(req);
                        return;
                    }
                }
                let body = c.request_body(&mut req).await;
                if body.is_err() {
                    req.framing = "broken";
                }
                reqs.lock().unwrap().push(req.clone());
                if body.is_err() {
                    return;
                }
                let sent = match reply {
                    Reply::Before(bytes) => bytes,
                    Reply::After(respond) => {
                        let bytes = respond(&req);
                        if c.s.write_all(&bytes).await.is_err() {
                            return;
                        }
                        bytes
                    }
                    Reply::Reset => {
                        set_rst_on_close(&c.s);
                        return;
                    }
                    Reply::Tunnel => {
                        let key = req.header("sec-websocket-key").unwrap_or("");
                        let resp = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                            ws_accept(key)
                        );
                        if c.s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        let early: Vec<u8> = c.buf.drain(..).collect();
                        if c.s.write_all(&early).await.is_err() {
                            return;
                        }
                        let (mut rd, mut wr) = c.s.split();
                        let _ = tokio::io::copy(&mut rd, &mut wr).await;
                        return;
                    }
                };
                let text = String::from_utf8_lossy(&sent).to_ascii_lowercase();
                if req.connection_has("close") || text.contains("connection: close") {
                    return;
                }
            }
        }
    })
    .await;
    b.requests = requests;
    b
}

/// An HTTP backend answering `200` with a body naming itself (`tag`) and the request path,
/// plus an echo of the request body.
pub async fn tagged_backend(tag: &'static str) -> Backend {
    let mut b = http_backend(Arc::new(move |req: &Message, n| {
        let mut body = format!("{tag} {} {} conn={n}\n", req.method, req.path).into_bytes();
        body.extend_from_slice(&req.body);
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nX-Backend: {tag}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if req.method != "HEAD" {
            out.extend(body);
        }
        out
    }))
    .await;
    b.name = tag.into();
    b
}

/// A tokio-tungstenite echo backend (text and binary echoed, pings answered by tungstenite);
/// for plain HTTP requests it answers whatever tungstenite answers (an error).
pub async fn ws_echo_backend() -> Backend {
    let requests: Arc<Mutex<Vec<Message>>> = Arc::new(Mutex::new(Vec::new()));
    let reqs = requests.clone();
    let mut b = raw_backend(move |s, _| {
        let reqs = reqs.clone();
        async move {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
            #[allow(clippy::result_large_err)]
            let cb = |req: &Request, resp: Response| {
                let mut m = Message {
                    method: req.method().to_string(),
                    path: req.uri().to_string(),
                    ..Default::default()
                };
                for (k, v) in req.headers() {
                    m.headers.push((
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    ));
                }
                reqs.lock().unwrap().push(m);
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                } else if msg.is_close() {
                    // tungstenite queued the close reply; flush it
                    let _ = ws.flush().await;
                }
            }
        }
    })
    .await;
    b.requests = requests;
    b
}

/// The `Sec-WebSocket-Accept` for `key` (RFC 6455), computed here with our own SHA-1 so the test
/// does not share code with the gateway.
pub fn ws_accept(key: &str) -> String {
    let mut data = key.as_bytes().to_vec();
    data.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&data))
}

pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bitlen = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bitlen.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A raw WebSocket upgrade request head.
pub fn ws_upgrade_head(path: &str, key: &str, version: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
    .into_bytes()
}

/// A masked client frame (FIN set).
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (opcode, payload).
pub async fn read_ws_frame(c: &mut Conn) -> Result<(u8, Vec<u8>), ReadErr> {
    let h = c.exact(2).await?;
    let op = h[0] & 0x0f;
    if h[1] & 0x80 != 0 {
        return Err(ReadErr::Invalid("server frame is masked".into()));
    }
    let n = match h[1] & 0x7f {
        126 => {
            let b = c.exact(2).await?;
            u16::from_be_bytes([b[0], b[1]]) as usize
        }
        127 => {
            let b = c.exact(8).await?;
            u64::from_be_bytes(b.try_into().unwrap()) as usize
        }
        n => n as usize,
    };
    Ok((op, c.exact(n).await?))
}

/// A raw backend that completes any WebSocket upgrade correctly (101 with the right accept) and
/// then runs `after(conn)` on the tunnel (with any bytes already read still in `conn.buf`).
pub async fn raw_ws_backend<F, Fut>(after: F) -> Backend
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let after = Arc::new(after);
    raw_backend(move |s, n| {
        let after = after.clone();
        async move {
            let mut c = Conn::new(s);
            let Ok(req) = c.request(false).await else {
                return;
            };
            let key = req.header("sec-websocket-key").unwrap_or("").to_string();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                ws_accept(&key)
            );
            if c.s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            after(c, n).await
        }
    })
    .await
}

/// Client side of a raw upgrade: connect, send the head, expect a good 101.
pub async fn raw_ws_client(addr: SocketAddr) -> Conn {
    let mut c = Conn::connect(addr).await;
    c.send(&ws_upgrade_head("/raw", WS_KEY, "13")).await;
    let r = c.response(false).await.expect("upgrade response");
    assert_eq!(r.status, 101, "upgrade: {r:?}");
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some(ws_accept(WS_KEY).as_str())
    );
    c
}

/// One WebSocket frame (RFC 6455 §5.2) with `first` as its first byte (FIN | RSV | opcode):
/// masked (with a fixed mask) for a client's frame, unmasked for a server's.
pub fn ws_frame_bytes(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![first];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x11, 0x22, 0x33, 0x44];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A final binary frame from a client (masked).
pub fn client_frame(payload: &[u8]) -> Vec<u8> {
    ws_frame_bytes(0x82, payload, true)
}

/// A final binary frame from a server (unmasked).
pub fn server_frame(payload: &[u8]) -> Vec<u8> {
    ws_frame_bytes(0x82, payload, false)
}

/// Deterministic pseudo-random bytes (xorshift) for payloads.
pub fn pseudo_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a 64, our checksum for integrity checks.
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Makes the next close of `s` an abortive one (RST).
pub fn set_rst_on_close(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}
