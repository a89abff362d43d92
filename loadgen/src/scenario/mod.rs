//! The load scenarios and what they share: the target, one client connection over WebSocket
//! or raw TCP, run configuration, live counters for the progress line, and the clock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::report::Report;
use crate::stream::ClientStream;
use crate::tls::TlsClient;
use crate::ws::{Recv, WsClient, WsError};

pub mod bulk;
pub mod idle;
pub mod pingpong;
pub mod rate;
pub mod rebalance;
pub mod storm;
pub mod timer;

/// Hard caps so that no run can be unbounded, whatever the flags say.
pub const MAX_CONNS: usize = 100_000;
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long past the deadline a run may take to wind down (drain, close) before tasks are
/// abandoned.
pub const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Ws,
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Ws => "ws",
            Proto::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Pingpong,
    Rate,
    Idle,
    Bulk,
    /// N clients connect and upgrade at the same instant, hold, close.
    Storm,
}

/// Counters the progress line reads while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub messages: AtomicU64,
    pub conns: AtomicU64,
    pub errors: AtomicU64,
    pub bytes: AtomicU64,
}

impl Live {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Everything a scenario needs. Flags a scenario does not use are ignored.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: SocketAddr,
    pub proto: Proto,
    /// Request path and Host header for the WebSocket upgrade.
    pub path: String,
    pub host: String,
    pub conns: usize,
    /// Message size (pingpong, rate, idle checks).
    pub size: usize,
    /// Open-loop rate over all connections, messages per second (pingpong).
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Parallel connect loops (rate).
    pub concurrency: usize,
    /// How long idle (and storm) connections are held.
    pub hold: Duration,
    /// Frame / write size (bulk).
    pub frame: usize,
    pub connect_timeout: Duration,
    pub live: Arc<Live>,
    /// `--tls`: every connection runs a TLS handshake first (`wss://`, TLS raw TCP).
    pub tls: Option<Arc<TlsClient>>,
}

impl RunConfig {
    pub fn new(target: SocketAddr, proto: Proto) -> RunConfig {
        RunConfig {
            target,
            proto,
            path: "/".into(),
            host: target.to_string(),
            conns: 10,
            size: 64,
            rate: None,
            duration: Duration::from_secs(5),
            concurrency: 8,
            hold: Duration::from_secs(5),
            frame: 64 * 1024,
            connect_timeout: Duration::from_secs(5),
            live: Arc::new(Live::default()),
            tls: None,
        }
    }

    /// Applies the hard caps.
    pub fn clamp(mut self) -> RunConfig {
        self.conns = self.conns.clamp(1, MAX_CONNS);
        self.concurrency = self.concurrency.clamp(1, MAX_CONNS);
        self.duration = self.duration.min(MAX_DURATION);
        self.hold = self.hold.min(MAX_DURATION);
        self.size = self.size.min(MAX_MESSAGE);
        self.frame = self.frame.clamp(1, MAX_MESSAGE);
        self
    }

    pub fn base_report(&self, scenario: &str) -> Report {
        Report {
            scenario: scenario.into(),
            proto: match (self.proto, self.tls.is_some()) {
                (Proto::Ws, true) => "wss".into(),
                (Proto::Tcp, true) => "tls".into(),
                (p, false) => p.name().into(),
            },
            target: self.target.to_string(),
            conns: self.conns,
            ..Default::default()
        }
    }
}

/// One client connection.
pub enum Conn {
    Ws(Box<WsClient>),
    /// Raw TCP, plain or TLS.
    Tcp(ClientStream),
}

/// A classified failure: the kind is what reports count.
#[derive(Debug)]
pub struct ConnError(pub String);

impl From<WsError> for ConnError {
    fn from(e: WsError) -> Self {
        ConnError(e.kind())
    }
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError(crate::limits::io_error_kind(&e))
    }
}

impl Conn {
    /// Connects client number `idx` (which picks its source address), runs the TLS
    /// handshake with `--tls`, and, for WebSocket, upgrades. Each step is bounded by
    /// `connect_timeout`.
    pub async fn open(cfg: &RunConfig, idx: u64) -> Result<Conn, ConnError> {
        let tcp = crate::limits::connect(cfg.target, idx, cfg.connect_timeout).await?;
        let stream = match &cfg.tls {
            None => ClientStream::Plain(tcp),
            Some(t) => match tokio::time::timeout(cfg.connect_timeout, t.handshake(tcp)).await {
                Ok(Ok(s)) => ClientStream::Tls(Box::new(s)),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ConnError("tls_handshake_timeout".into())),
            },
        };
        match cfg.proto {
            Proto::Tcp => Ok(Conn::Tcp(stream)),
            Proto::Ws => {
                let hs = WsClient::handshake(stream, &cfg.host, &cfg.path, &[]);
                match tokio::time::timeout(cfg.connect_timeout, hs).await {
                    Ok(Ok((c, _))) => Ok(Conn::Ws(Box::new(c))),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(ConnError("handshake_timeout".into())),
                }
            }
        }
    }

    /// Sends `payload` and waits for the same bytes back, using `scratch` as the receive
    /// buffer. A different echo is an error.
    pub async fn echo(&mut self, payload: &[u8], scratch: &mut Vec<u8>) -> Result<(), ConnError> {
        match self {
            Conn::Ws(c) => {
                c.send_binary(payload).await?;
                match c.recv_into(scratch).await? {
                    Recv::Binary | Recv::Text => {}
                    _ => return Err(ConnError("closed".into())),
                }
            }
            Conn::Tcp(s) => {
                s.write_all(payload).await?;
                s.flush().await?;
                scratch.resize(payload.len(), 0);
                s.read_exact(scratch).await?;
            }
        }
        if scratch.as_slice() != payload {
            return Err(ConnError("echo_mismatch".into()));
        }
        Ok(())
    }

    /// Ends the connection politely: a WebSocket close handshake (bounded), or a FIN.
    pub async fn close(self) {
        match self {
            Conn::Ws(c) => {
                let _ = c.close(1000, Duration::from_secs(1)).await;
            }
            Conn::Tcp(mut s) => {
                let _ = s.shutdown().await;
            }
        }
    }
}

/// A payload of `size` bytes that is not all one value, so a corrupting hop is noticed.
pub fn payload(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    crate::ws::XorShift::new(seed).fill(&mut v);
    v
}

/// Time source of the open-loop driver; tests inject a manual clock.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep_until(&self, t: Instant) -> impl std::future::Future<Output = ()>;
}

/// The real clock: tokio's `Instant`, and the precise timer thread for sleeping (tokio's
/// own timer is only accurate to a millisecond, see `timer`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep_until(&self, t: Instant) -> impl std::future::Future<Output = ()> {
        timer::sleep_until(t.into_std())
    }
}

/// Waits for all tasks, abandoning (aborting) those still running `grace` after `deadline`.
pub async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>, deadline: Instant) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    let hard = deadline + GRACE;
    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(hard, t).await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }
    out
}

/// Opens `n` connections, at most 256 handshakes in flight, stopping early at `deadline`.
/// Returns the connections (index order not kept) and the failures by kind.
pub async fn open_many(cfg: &RunConfig, n: usize, deadline: Instant) -> (Vec<Conn>, Vec<String>) {
    use tokio::task::JoinSet;
    let mut set = JoinSet::new();
    let mut conns = Vec::with_capacity(n);
    let mut errors = Vec::new();
    let mut next = 0usize;
    while next < n || !set.is_empty() {
        while next < n && set.len() < 256 && Instant::now() < deadline {
            let cfg = cfg.clone();
            let idx = next as u64;
            set.spawn(async move { Conn::open(&cfg, idx).await });
            next += 1;
        }
        if Instant::now() >= deadline {
            next = n;
        }
        match tokio::time::timeout_at(deadline + GRACE, set.join_next()).await {
            Ok(Some(Ok(Ok(c)))) => {
                Live::add(&cfg.live.conns, 1);
                conns.push(c);
            }
            Ok(Some(Ok(Err(e)))) => {
                Live::add(&cfg.live.errors, 1);
                errors.push(e.0);
            }
            Ok(Some(Err(_))) => errors.push("task_panicked".into()),
            Ok(None) => {}
            Err(_) => {
                errors.extend((0..set.len()).map(|_| "open_timeout".to_string()));
                set.abort_all();
                break;
            }
        }
    }
    (conns, errors)
}
