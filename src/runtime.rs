//! Process layout: one worker thread per core, each pinned, each with its own runtime (ringway's
//! own io_uring runtime, or tokio's epoll reactor) and its own SO_REUSEPORT socket per listener.
//! All sockets are bound here, before any worker starts, so a bind error stops the process
//! at startup instead of leaving half a gateway running.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use crate::balance::{self, PassiveHealth, Policy};
use crate::config::{Config, Discovery, IoMode, ListenerConfig, UpstreamConfig};
use crate::io::{Driver, Epoll, IoKind, Uring};
use crate::metrics::{ListenerCounters, UpstreamCounters};
use crate::proxy::{self, Worker};
use crate::state::{CookieRt, Generation, Phase, Shared, UpstreamRt, WorkerCmd};
use crate::sys;

const BACKLOG: i32 = 4096;
const RING_ENTRIES: u32 = 1024;

/// Decides the io backend: `auto` probes the ring and the ops a ring worker needs, and falls
/// back to epoll naming what was missing.
pub fn choose_io(mode: IoMode) -> anyhow::Result<IoKind> {
    match mode {
        IoMode::Epoll => Ok(IoKind::Epoll),
        IoMode::Uring => match sys::ring::probe() {
            Ok(()) => Ok(IoKind::Uring),
            Err(missing) => bail!(
                "io = \"uring\" but io_uring cannot be used: {missing} is missing (seccomp \
                 profile? kernel.io_uring_disabled? old kernel?); use io = \"auto\" to fall \
                 back to epoll"
            ),
        },
        IoMode::Auto => match sys::ring::probe() {
            Ok(()) => Ok(IoKind::Uring),
            Err(missing) => {
                tracing::warn!(%missing, "io_uring unusable, falling back to epoll");
                Ok(IoKind::Epoll)
            }
        },
    }
}

/// The policy an upstream's config asks for (built once, at validation).
pub fn policy_for(u: &UpstreamConfig) -> Result<Policy, String> {
    Ok(u.policy.clone())
}

pub fn passive_for(u: &UpstreamConfig) -> PassiveHealth {
    PassiveHealth {
        max_fails: u.health.max_fails,
        fail_timeout_ms: u.health.fail_timeout.as_millis() as u64,
    }
}

/// Builds a generation for `config`, reusing the upstream objects (tables, live counts,
/// health) of `prev` for upstreams of the same name, so a reload keeps them.
pub fn build_generation(
    config: Arc<Config>,
    prev: Option<&Generation>,
    workers: usize,
) -> Result<Generation, String> {
    let mut upstreams = Vec::new();
    for u in &config.upstreams {
        let policy = policy_for(u).map_err(|e| format!("upstream[{}].balance: {e}", u.name))?;
        let old = prev.and_then(|g| g.upstreams.iter().find(|o| o.cfg.name == u.name));
        let (lb, counters) = match old {
            Some(o) => {
                o.lb.set_policy(policy);
                o.lb.set_passive_health(passive_for(u));
                (o.lb.clone(), o.counters.clone())
            }
            None => (
                Arc::new(balance::Upstream::new(&u.name, policy, passive_for(u))),
                Arc::new(UpstreamCounters::new(u.name.clone(), workers)),
            ),
        };
        if let Discovery::Static(list) = &u.discovery {
            let specs = list
                .iter()
                .map(|b| balance::BackendSpec {
                    name: b.name.clone(),
                    addr: b.addr,
                    weight: b.weight,
                })
                .collect();
            lb.publish(specs);
        }
        // The CA and client certificate are read here, once per generation: a file broken
        // since `ringway check` refuses the reload (or the start) with the field named.
        let tls = crate::tls::UpstreamTls::build(u, old.and_then(|o| o.tls.as_deref()))
            .map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?
            .map(Arc::new);
        upstreams.push(UpstreamRt {
            cfg: u.clone(),
            lb,
            counters,
            cookie: CookieRt::from_config(u),
            tls,
        });
    }
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            prev.and_then(|g| g.listeners.iter().find(|c| c.name == l.name).cloned())
                .unwrap_or_else(|| Arc::new(ListenerCounters::new(l.name.clone(), workers)))
        })
        .collect();
    Ok(Generation {
        config,
        upstreams,
        listeners,
    })
}

/// A running data plane.
pub struct DataPlane {
    pub shared: Arc<Shared>,
    pub io: IoKind,
    threads: Vec<JoinHandle<()>>,
    /// Addresses actually bound (port 0 resolved), per listener.
    pub bound: Vec<std::net::SocketAddr>,
}

impl DataPlane {
    /// Binds every listener once per worker and starts the workers.
    pub fn start(config: Config) -> anyhow::Result<DataPlane> {
        let workers = config.workers.max(1);
        let io = choose_io(config.io)?;
        let config = Arc::new(config);
        let gen = build_generation(config.clone(), None, workers).map_err(anyhow::Error::msg)?;
        let shared = Shared::new(gen, workers);
        let _ = shared.io_kind.set(io);

        let mut per_worker: Vec<Vec<(Arc<str>, SocketAddr, TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let (addr, sockets) = bind_listener(l, workers)?;
            for (w, s) in sockets.into_iter().enumerate() {
                per_worker[w].push((l.name.clone(), l.bind, s));
            }
            bound.push(addr);
        }

        let cpus = sys::cpu::allowed_cpus();
        let mut threads = Vec::new();
        for (id, sockets) in per_worker.into_iter().enumerate() {
            let shared = shared.clone();
            let cpu = (config.pin_workers && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
            let (tx, rx) = mpsc::unbounded_channel();
            shared
                .worker_cmds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(tx);
            let t = std::thread::Builder::new()
                .name(format!("ringway-w{id}"))
                .spawn(move || worker_thread(id, cpu, io, shared, sockets, rx))
                .context("cannot start worker thread")?;
            threads.push(t);
        }
        shared.listeners_bound.store(true, Ordering::Release);
        for (l, a) in config.listeners.iter().zip(&bound) {
            tracing::info!(listener = %l.name, addr = %a, mode = ?l.mode, "listening");
        }
        tracing::info!(workers, io = io.as_str(), "data plane started");
        Ok(DataPlane {
            shared,
            io,
            threads,
            bound,
        })
    }

    /// Stops accepting and waits for workers, which drain for `timeouts.drain`.
    pub fn stop(self) {
        self.shared.phase.send_replace(Phase::StopAccepting);
        for t in self.threads {
            let _ = t.join();
        }
    }

    pub fn workers_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }
}

/// Binds one SO_REUSEPORT socket per worker for a listener. A port-0 listener gets its port
/// from the first socket; the others reuse it.
pub fn bind_listener(
    l: &ListenerConfig,
    workers: usize,
) -> anyhow::Result<(std::net::SocketAddr, Vec<TcpListener>)> {
    let mut addr = l.bind;
    let mut sockets = Vec::with_capacity(workers);
    // The gateway answers an HTTP client's request head, or a TLS client's hello, itself: the
    // ACK of those first bytes can wait to ride on the answer.
    let answers_first_bytes = l.mode == crate::config::Mode::Http || l.tls.is_some();
    for _ in 0..workers.max(1) {
        let s = sys::socket::bind_reuseport(addr, BACKLOG, answers_first_bytes)
            .with_context(|| format!("listener {}: cannot bind {addr}", l.name))?;
        addr = s.local_addr()?;
        sockets.push(s);
    }
    Ok((addr, sockets))
}

fn worker_thread(
    id: usize,
    cpu: Option<usize>,
    io: IoKind,
    shared: Arc<Shared>,
    sockets: Vec<(Arc<str>, SocketAddr, TcpListener)>,
    cmds: mpsc::UnboundedReceiver<WorkerCmd>,
) {
    if let Some(cpu) = cpu {
        if let Err(e) = sys::cpu::pin_current_thread(cpu) {
            tracing::warn!(worker = id, cpu, error = %e, "cannot pin worker");
        }
    }
    match io {
        IoKind::Uring => match crate::io::ring::Runtime::new(RING_ENTRIES, ring_setup()) {
            Ok(rt) => {
                tracing::debug!(worker = id, cpu, io = "io_uring", setup = ?rt.setup(), "worker started");
                rt.block_on(worker_main::<Uring>(id, shared, sockets, cmds));
            }
            Err(e) => {
                // The probe passed but this ring failed (memlock?): run this core on epoll.
                tracing::warn!(worker = id, error = %e, "io_uring ring failed; this worker uses epoll");
                run_epoll(id, shared, sockets, cmds);
            }
        },
        IoKind::Epoll => run_epoll(id, shared, sockets, cmds),
    }
}

/// Ring setup: `SINGLE_ISSUER | DEFER_TASKRUN` (completion work runs only when the worker
/// enters the kernel, which it does once per loop turn anyway), falling back to COOP_TASKRUN
/// on kernels without it. `RINGWAY_URING_SETUP=coop|plain` forces a weaker one (to measure;
/// docs/benchmarks.md).
fn ring_setup() -> sys::ring::Setup {
    match std::env::var("RINGWAY_URING_SETUP").as_deref() {
        Ok("coop") => sys::ring::Setup::CoopTaskrun,
        Ok("plain") => sys::ring::Setup::Plain,
        _ => sys::ring::Setup::DeferTaskrun,
    }
}

fn run_epoll(
    id: usize,
    shared: Arc<Shared>,
    sockets: Vec<(Arc<str>, SocketAddr, TcpListener)>,
    cmds: mpsc::UnboundedReceiver<WorkerCmd>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot build runtime");
            return;
        }
    };
    tracing::debug!(worker = id, io = "epoll", "worker started");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, worker_main::<Epoll>(id, shared, sockets, cmds));
}

async fn worker_main<D: Driver>(
    id: usize,
    shared: Arc<Shared>,
    sockets: Vec<(Arc<str>, SocketAddr, TcpListener)>,
    mut cmds: mpsc::UnboundedReceiver<WorkerCmd>,
) {
    let w = Worker::new(id, shared.clone());
    crate::io::spawn_local(proxy::lifecycle::tick(w.clone()));
    crate::io::spawn_local(trim_allocator());
    for (name, bind, s) in sockets {
        crate::io::spawn_local(proxy::accept_loop::<D>(w.clone(), name, bind, s));
    }
    let mut phase = shared.phase.subscribe();
    while *phase.borrow_and_update() != Phase::StopAccepting {
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { break },
            Some(cmd) = cmds.recv() => match cmd {
                WorkerCmd::Listen { name, bind, socket } => {
                    crate::io::spawn_local(proxy::accept_loop::<D>(w.clone(), name, bind, socket));
                }
            },
        }
    }
    let drain = shared.gen.load().config.timeouts.drain;
    if w.open_connections() > 0 {
        tracing::info!(worker = id, open = w.open_connections(), ?drain, "draining");
    }
    if crate::io::timeout(drain, w.wait_idle()).await.is_err() {
        tracing::info!(
            worker = id,
            closing = w.open_connections(),
            "drain time over, closing"
        );
    }
}

/// How often a worker hands the allocator's freed pages back to the OS.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Once a second, gives the pages this worker freed back to the OS (`sys::alloc::trim`): a
/// worker that goes quiet after a burst of handshakes makes no allocator call that would, and
/// would keep the burst's peak resident while it holds idle connections (docs/benchmarks.md,
/// "Idle memory"). On io_uring, the buffer pool's pages too, when no buffer is in use.
async fn trim_allocator() {
    loop {
        crate::io::sleep(TRIM_EVERY).await;
        sys::alloc::trim();
        crate::io::ring::release_idle_pool();
    }
}

/// `workers = 0` resolved against the machine.
pub fn resolve_workers(config: &mut Config) {
    config.resolve_workers(sys::cpu::usable_cpus());
}

pub fn check_kernel_fd_limit(workers: usize) -> anyhow::Result<()> {
    match sys::raise_nofile_limit() {
        Ok(n) if n < 1024 => bail!("RLIMIT_NOFILE is {n}; raise it (each connection costs 2 fds)"),
        Ok(n) => {
            tracing::debug!(nofile = n, workers, "fd limit");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
            Ok(())
        }
    }
}
