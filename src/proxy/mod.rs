//! The data plane. One `Worker` per core owns its listeners' sockets, a pipe pool and a scratch
//! buffer; connections are tasks on the worker's single-threaded executor. The proxy only reads
//! `Shared` (a generation snapshot, tables); it never calls discovery or admin.
//!
//! Flow: `accept_loop` → limits → (PROXY header) → `http::serve` (per request: head, route,
//! pick, connect, forward, response; upgrade → `tunnel`) or `tcp::serve` (pick, connect,
//! `tunnel`).

mod access;
mod body;
pub mod connect;
mod head_reader;
pub mod http;
pub mod limits;
mod proxy_header;
pub mod route;
pub mod tcp;
pub mod tunnel;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Mode;
use crate::error::Kind;
use crate::io::{self as rio, Driver, Listener, Ready};
use crate::metrics::CoreCounters;
use crate::state::{Phase, Shared};
use crate::sys::pipe::{Pipe, PipePool};

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
    pub strategy: tunnel::Strategy,
    closed: Notify,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Worker> {
        Rc::new(Worker {
            id,
            shared,
            pipes: RefCell::new(PipePool::new(PIPE_SIZE, PIPES_KEPT, PIPES_MAX)),
            scratch: RefCell::new(vec![0u8; tunnel::SCRATCH_SIZE].into_boxed_slice()),
            open: Cell::new(0),
            strategy: tunnel::Strategy::from_env(),
            closed: Notify::new(),
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
    _admission: limits::Admission,
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
    loop {
        if *phase.borrow_and_update() == Phase::StopAccepting {
            return;
        }
        if generation.has_changed().unwrap_or(false) {
            generation.borrow_and_update();
            if find_listener(&worker.shared.gen.load(), &name, bind).is_none() {
                tracing::info!(worker = worker.id, listener = %name, "listener removed; stop accepting");
                return;
            }
        }
        let accepted = tokio::select! {
            r = &mut next => r,
            _ = phase.changed() => continue,
            _ = generation.changed() => continue,
        };
        next.set(rio::accept::<D>(&listener));
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

        let admission = match worker.shared.limits.admit(peer.ip()) {
            Ok(a) => a,
            Err(kind) => {
                worker.error(kind);
                counters.rejected(worker.id);
                if lcfg.mode == Mode::Http {
                    // Best effort, non-blocking: a client over the limit gets 503 / 429.
                    let status = kind.status().unwrap_or(503);
                    let _ =
                        std::io::Write::write(&mut &stream, crate::proto::error_response(status));
                }
                continue;
            }
        };

        counters.opened(worker.id);
        worker.open.set(worker.open.get() + 1);
        let guard = OpenGuard {
            worker: worker.clone(),
            listener: counters,
        };
        let w = worker.clone();
        let life = ConnLife {
            _open: guard,
            _admission: admission,
        };
        rio::spawn_local(async move {
            let client = match <rio::Stream<D>>::new(stream) {
                Ok(c) => c,
                Err(_) => return,
            };
            serve::<D>(&w, gen, &lcfg, client, peer, life).await;
        });
    }
}

/// A listener is the same listener while its name and configured address are.
fn find_listener(gen: &crate::state::Generation, name: &str, bind: SocketAddr) -> Option<usize> {
    gen.config
        .listeners
        .iter()
        .position(|l| &*l.name == name && l.bind == bind)
}

async fn serve<D: Driver>(
    w: &Rc<Worker>,
    gen: Arc<crate::state::Generation>,
    lcfg: &crate::config::ListenerConfig,
    client: rio::Stream<D>,
    peer: SocketAddr,
    life: ConnLife,
) {
    let mut buf = Vec::new();
    let peer = if lcfg.proxy_protocol {
        match proxy_header::read::<D>(w, &client, &mut buf, gen.config.timeouts.head).await {
            Some(Some(src)) => src,
            Some(None) => peer, // LOCAL / UNKNOWN: the load balancer's own connection
            None => return,
        }
    } else {
        peer
    };
    match lcfg.mode {
        Mode::Http => http::serve::<D>(w, &gen, lcfg, client, peer, buf, life).await,
        Mode::Tcp => {
            tcp::serve::<D>(w, &gen, lcfg, client, peer, buf).await;
            drop(life);
        }
    }
}
