//! The data plane. One `Worker` per core owns its listeners' sockets, a pipe pool and a scratch
//! buffer; connections are tasks on the worker's single-threaded executor. The proxy only reads
//! `Shared` (a generation snapshot, tables); it never calls discovery or admin.
//!
//! Flow: `accept_loop` → limits → (PROXY header) → (TLS handshake: `tls_accept`) →
//! `http::serve` (per request: head, route, pick, connect, forward, response; upgrade →
//! `handoff` → `tunnel`, or `tls_tunnel` for a TLS client) or `tcp::serve` (pick, connect,
//! `handoff` → `tunnel` / `tls_tunnel`).
//!
//! Admission: on a listener without the PROXY protocol every limit is checked at accept on
//! the peer. With it, a peer in `proxy_protocol_from` (every peer without that option) is a
//! load balancer: the global cap is checked at accept, the connection holds one of the peer's
//! pending-header slots while its header arrives (bounded by `timeouts.head`), and the
//! per-source limits apply to the address the header carries. A peer outside
//! `proxy_protocol_from` is a direct client, admitted on its own address at accept.
//! A refused http client reads a status naming the limit, then a graceful close
//! ([`limits::refusal`], `io::linger_close`); a refused tcp client is closed.

mod access;
mod body;
pub mod client;
pub mod connect;
mod frames;
mod handoff;
mod head_reader;
pub mod http;
pub mod lifecycle;
mod proxy_header;
mod rebalance;
pub mod route;
pub mod tcp;
mod tls_tunnel;
pub mod tunnel;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Mode;
use crate::error::Kind;
use crate::io::{self as rio, Driver, Listener, Ready};
use crate::limits;
use crate::metrics::CoreCounters;
use crate::state::{Phase, Shared};
use crate::sys;
use crate::sys::pipe::{Pipe, PipePool};

/// Refused http clients a core answers and closes gracefully at once (each holds its socket
/// for at most `io::linger_close`'s bound); beyond this a refusal is written best-effort and
/// the socket closed at once, so a flood of refused connections cannot pin fds.
const MAX_LINGERING: usize = 256;

/// Pipes a core keeps pooled, and the most it may have at once (each is 2 fds).
const PIPES_KEPT: usize = 64;
const PIPES_MAX: usize = 4096;
const PIPE_SIZE: usize = 256 * 1024;

/// Per-core state. Lives on one thread; shared by that core's connection tasks through `Rc`.
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pipes: RefCell<PipePool>,
    scratch: RefCell<Box<[u8]>>,
    /// Connections open on this core; drain waits for it to reach 0.
    open: Cell<usize>,
    /// Refused connections being answered and closed gracefully.
    lingering: Cell<usize>,
    pub strategy: tunnel::Strategy,
    closed: Notify,
    /// This core's live tunnels, for the lifecycle tick.
    tunnels: lifecycle::Tunnels,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Worker> {
        Rc::new(Worker {
            id,
            shared,
            pipes: RefCell::new(PipePool::new(PIPE_SIZE, PIPES_KEPT, PIPES_MAX)),
            scratch: RefCell::new(vec![0u8; tunnel::SCRATCH_SIZE].into_boxed_slice()),
            open: Cell::new(0),
            lingering: Cell::new(0),
            strategy: tunnel::Strategy::from_env(),
            closed: Notify::new(),
            tunnels: lifecycle::Tunnels::default(),
        })
    }

    pub fn counters(&self) -> &CoreCounters {
        self.shared.metrics.core(self.id)
    }

    pub fn error(&self, kind: Kind) {
        self.counters().error(kind);
    }

    /// Runs `f` with the core's scratch buffer. `f` is synchronous, so no other task can
    /// want the buffer meanwhile (single-threaded executor, no await inside).
    pub fn with_scratch<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(&mut self.scratch.borrow_mut())
    }

    pub fn get_pipe(&self) -> Option<Pipe> {
        let p = self.pipes.borrow_mut().get();
        if p.is_some() {
            crate::metrics::bump_signed(&self.counters().pipes_lent, 1);
        }
        p
    }

    pub fn put_pipe(&self, p: Pipe) {
        self.pipes.borrow_mut().put(p);
        crate::metrics::bump_signed(&self.counters().pipes_lent, -1);
    }

    pub fn tunnels(&self) -> &lifecycle::Tunnels {
        &self.tunnels
    }

    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Waits until every connection of this core has ended.
    pub async fn wait_idle(&self) {
        while self.open.get() > 0 {
            self.closed.notified().await;
        }
    }
}

/// Counts a connection open on a worker and on its listener while alive.
struct OpenGuard {
    worker: Rc<Worker>,
    listener: Arc<crate::metrics::ListenerCounters>,
}

/// What a client connection holds for its whole life (open counts, limits admission). It
/// moves with the connection when an upgraded connection continues in its own tunnel task.
pub struct ConnLife {
    _open: OpenGuard,
    _admission: crate::limits::Admission,
}

impl OpenGuard {
    /// Counts a connection open on its worker and listener until the guard drops.
    fn open(worker: &Rc<Worker>, listener: Arc<crate::metrics::ListenerCounters>) -> OpenGuard {
        listener.opened(worker.id);
        worker.open.set(worker.open.get() + 1);
        OpenGuard {
            worker: worker.clone(),
            listener,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.worker.open.set(self.worker.open.get() - 1);
        self.listener.closed(self.worker.id);
        if self.worker.open.get() == 0 {
            self.worker.closed.notify_waiters();
        }
    }
}

/// Accepts on one listener until the process stops accepting, or a reload removes the
/// listener (looked up by name in the current generation, so reloads that reorder or change
/// listeners apply to the next connection).
/// How long a stopping accept loop waits for its pending accept's outcome.
const LAST_ACCEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn accept_loop<D: Driver>(
    worker: Rc<Worker>,
    name: Arc<str>,
    bind: SocketAddr,
    socket: TcpListener,
) {
    let listener = match <Listener<D>>::new(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = worker.id, error = %e, "cannot register listener");
            return;
        }
    };
    let mut phase = worker.shared.phase.subscribe();
    let mut generation = worker.shared.generation.subscribe();
    // One accept stays pending across phase and generation wake-ups: on io_uring an accept is
    // a kernel op, and dropping one the kernel just completed would drop its connection.
    let mut next = std::pin::pin!(rio::accept::<D>(&listener));
    // Set on StopAccepting: the listener is stopped and the pending accept's outcome is the
    // last connection this loop serves.
    let mut stopping = false;
    loop {
        if stopping {
            return;
        }
        if *phase.borrow_and_update() == Phase::StopAccepting {
            // Not a plain return: dropping the pending accept cancels it, and on io_uring the
            // kernel may have just accepted a connection into it, which would then be closed
            // unanswered (a reset for a client during a handover). The listener is stopped
            // first, which ends the accept with its connection or an error; that outcome is
            // waited for (bounded) and served.
            if let Err(e) = sys::socket::stop_listening(listener.get_ref()) {
                tracing::debug!(worker = worker.id, error = %e, "cannot stop the listener");
            }
            stopping = true;
        } else if generation.has_changed().unwrap_or(false) {
            generation.borrow_and_update();
            if find_listener(&worker.shared.gen.load(), &name, bind).is_none() {
                tracing::info!(worker = worker.id, listener = %name, "listener removed; stop accepting");
                return;
            }
        }
        let accepted = if stopping {
            match rio::timeout(LAST_ACCEPT_WAIT, &mut next).await {
                Ok(Ok(x)) => Ok(x),
                _ => return, // the listener's end (EINVAL), or no outcome in time
            }
        } else {
            let r = tokio::select! {
                r = &mut next => r,
                _ = phase.changed() => continue,
                _ = generation.changed() => continue,
            };
            next.set(rio::accept::<D>(&listener));
            r
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                worker.error(Kind::Internal);
                rio::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let gen = worker.shared.gen.load_full();
        let Some(index) = find_listener(&gen, &name, bind) else {
            return; // removed by a reload just now: this connection is closed unanswered
        };
        let lcfg = gen.config.listeners[index].clone();
        let counters = gen.listeners[index].clone();

        let trusted = trusts_proxy_header(&lcfg, peer);
        match admit(&worker.shared.limits, peer, trusted) {
            Ok((admission, pending)) => {
                let start = Start {
                    open: OpenGuard::open(&worker, counters),
                    admission,
                    pending,
                    trusted,
                };
                spawn_connection::<D>(&worker, gen, lcfg, stream, peer, start);
            }
            Err(kind) => {
                worker.error(kind);
                counters.rejected(worker.id);
                refuse_at_accept::<D>(&worker, stream, kind, lcfg.mode);
            }
        }
    }
}

/// The limits a new connection passes: from a trusted load balancer, the client's address
/// comes with the PROXY header, so only the global cap now, and one of the balancer's
/// pending-header slots until the header is read; otherwise the per-source limits too.
fn admit(
    limits: &limits::Limiter,
    peer: SocketAddr,
    trusted: bool,
) -> Result<(limits::Admission, Option<limits::Pending>), Kind> {
    if trusted {
        limits
            .admit_global()
            .and_then(|a| limits.pending(peer.ip()).map(|p| (a, Some(p))))
    } else {
        limits.admit(peer.ip()).map(|a| (a, None))
    }
}

/// The connection's own task: the stream registered with the worker's io, then `serve`.
fn spawn_connection<D: Driver>(
    worker: &Rc<Worker>,
    gen: Arc<crate::state::Generation>,
    lcfg: crate::config::ListenerConfig,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    start: Start,
) {
    let w = worker.clone();
    rio::spawn_local(async move {
        let client = match <rio::Stream<D>>::new(stream) {
            Ok(c) => c,
            Err(_) => return,
        };
        serve::<D>(&w, gen, &lcfg, client, peer, start).await;
    });
}

/// A listener is the same listener while its name and configured address are.
fn find_listener(gen: &crate::state::Generation, name: &str, bind: SocketAddr) -> Option<usize> {
    gen.config
        .listeners
        .iter()
        .position(|l| &*l.name == name && l.bind == bind)
}

/// Whether a PROXY header from `peer` is believed on this listener: `proxy_protocol` on, and
/// `peer` inside `proxy_protocol_from` (every peer when that is not set).
fn trusts_proxy_header(lcfg: &crate::config::ListenerConfig, peer: SocketAddr) -> bool {
    lcfg.proxy_protocol
        && lcfg
            .proxy_protocol_from
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(peer.ip())))
}

/// What the accept loop hands a new connection's task.
struct Start {
    open: OpenGuard,
    /// The global cap (and, unless `trusted`, the per-source limits on the peer).
    admission: limits::Admission,
    /// The raw peer's pending-header slot, held until the PROXY header is read.
    pending: Option<limits::Pending>,
    /// The peer may (and must) send a PROXY header.
    trusted: bool,
}

/// A refusal at accept: an http client gets the status naming the limit, written on the
/// registered stream and followed by a graceful close, in a task of its own (bounded per core
/// by [`MAX_LINGERING`]); a tcp client is closed.
fn refuse_at_accept<D: Driver>(
    worker: &Rc<Worker>,
    stream: std::net::TcpStream,
    kind: Kind,
    mode: Mode,
) {
    let Some(answer) = limits::refusal(kind).filter(|_| mode == Mode::Http) else {
        return; // dropped: closed
    };
    if worker.lingering.get() >= MAX_LINGERING {
        // Best effort, non-blocking, then closed at once.
        let _ = std::io::Write::write(&mut &stream, answer);
        return;
    }
    worker.lingering.set(worker.lingering.get() + 1);
    let slot = Lingering(worker.clone());
    rio::spawn_local(async move {
        if let Ok(client) = <rio::Stream<D>>::new(stream) {
            refuse_on::<D>(&client, answer).await;
        }
        drop(slot);
    });
}

/// One [`Worker::lingering`] slot, given back on drop.
struct Lingering(Rc<Worker>);

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.lingering.set(self.0.lingering.get() - 1);
    }
}

/// Writes `answer` and closes gracefully (bounded in time: a client that does not read cannot
/// hold the socket).
async fn refuse_on<D: Driver>(client: &rio::Stream<D>, answer: &[u8]) {
    let _ = rio::timeout(std::time::Duration::from_secs(2), async {
        if rio::write_all::<D>(client, answer).await.is_ok() {
            rio::linger_close::<D>(client).await;
        }
    })
    .await;
}

async fn serve<D: Driver>(
    w: &Rc<Worker>,
    gen: Arc<crate::state::Generation>,
    lcfg: &crate::config::ListenerConfig,
    client: rio::Stream<D>,
    peer: SocketAddr,
    start: Start,
) {
    let Start {
        open,
        mut admission,
        pending,
        trusted,
    } = start;
    let mut buf = Vec::new();
    let head = gen.config.timeouts.head;
    let peer = if trusted {
        match proxy_header::read::<D>(w, &client, &mut buf, head, lcfg.mode).await {
            Some(Some(src)) => src,
            Some(None) => peer, // LOCAL / UNKNOWN: the load balancer's own connection
            None => return,
        }
    } else if lcfg.proxy_protocol {
        // A peer outside `proxy_protocol_from`: a direct client, unless it claims otherwise.
        if !proxy_header::sniff::<D>(w, &client, &mut buf, head, lcfg.mode).await {
            return;
        }
        peer
    } else {
        peer
    };
    drop(pending);
    if trusted {
        if let Err(kind) = admission.add_source(&w.shared.limits, peer.ip()) {
            w.error(kind);
            open.listener.rejected(w.id);
            if lcfg.mode == Mode::Http {
                if let Some(answer) = limits::refusal(kind) {
                    refuse_on::<D>(&client, answer).await;
                }
            }
            return;
        }
    }
    let life = ConnLife {
        _open: open,
        _admission: admission,
    };
    let client = match tls_accept::<D>(w, &gen, lcfg, client, &mut buf).await {
        Some(c) => c,
        None => return,
    };
    match lcfg.mode {
        Mode::Http => http::serve::<D>(w, &gen, lcfg, client, peer, buf, life).await,
        Mode::Tcp => tcp::serve::<D>(w, &gen, lcfg, client, peer, buf, life).await,
    }
}

/// On a TLS listener, the handshake (bytes already read after a PROXY header are the start of
/// the ClientHello); otherwise the plain socket. `None`: the handshake failed (counted by
/// reason, the client got an alert or a plaintext 400) and the connection ends.
async fn tls_accept<D: Driver>(
    w: &Worker,
    gen: &crate::state::Generation,
    lcfg: &crate::config::ListenerConfig,
    client: rio::Stream<D>,
    buf: &mut Vec<u8>,
) -> Option<client::Client<D>> {
    if lcfg.tls.is_none() {
        return Some(client::Client::Plain(client));
    }
    let Some(server) = w.shared.tls.server_config(&lcfg.name) else {
        // Its certificates failed to load at startup (logged): nothing to handshake with.
        w.shared.tls.stats.count(crate::tls::Outcome::Error);
        return None;
    };
    let early = std::mem::take(buf);
    let timeout = gen.config.timeouts.tls_handshake;
    match crate::tls::stream::handshake::<D>(client, server, early, timeout, &w.shared.tls.stats)
        .await
    {
        Ok(s) => Some(client::Client::Tls(Box::new(s))),
        Err(outcome) => {
            tracing::debug!(listener = %lcfg.name, result = outcome.as_str(), "TLS handshake failed");
            None
        }
    }
}
