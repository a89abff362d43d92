//! What the data plane reads and the control plane writes: one `Generation` (config, routes,
//! upstream tables) swapped whole on reload, plus process-wide counters and the lifecycle phase.
//! Workers `load()` a generation per connection (per request in http mode); a connection keeps
//! the generation and table it started with.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::balance;
use crate::config::{Config, CookieSecure, UpstreamConfig};
use crate::metrics::{ListenerCounters, Metrics, UpstreamCounters};
use crate::proto::CookieAttrs;

/// Lifecycle of the process, watched by every worker's accept loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// SIGTERM: /readyz is 503; listeners still accept until `accept_delay` ends.
    Draining,
    /// Listeners closed; open connections get `timeouts.drain`.
    StopAccepting,
}

/// One upstream as the data plane sees it.
pub struct UpstreamRt {
    pub cfg: Arc<UpstreamConfig>,
    pub lb: Arc<balance::Upstream>,
    pub counters: Arc<UpstreamCounters>,
    /// Set-Cookie attributes, prebuilt (cookie policy only).
    pub cookie: Option<CookieRt>,
    /// `[upstream.tls]`: the rustls client side, built with the generation.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
}

impl UpstreamRt {
    /// Some backend can take a new connection now (active in the table, not down by health).
    pub fn has_backend_up(&self) -> bool {
        let now = crate::balance::now_ms();
        self.lb.load().backends().iter().any(|b| {
            b.state() == crate::balance::BackendState::Active && b.stats().is_available(now)
        })
    }
}

pub struct CookieRt {
    pub name: String,
    pub attrs: CookieAttrs,
    /// `secure = auto`: add `Secure` when the listener is behind TLS.
    pub secure_auto: bool,
    pub strip: bool,
}

impl CookieRt {
    pub fn from_config(u: &UpstreamConfig) -> Option<CookieRt> {
        if !matches!(u.policy, balance::Policy::Cookie { .. }) {
            return None;
        }
        let c = &u.cookie;
        Some(CookieRt {
            name: c.name.clone(),
            attrs: CookieAttrs {
                path: c.path.clone(),
                http_only: c.http_only,
                same_site: c.same_site.clone(),
                secure: c.secure == CookieSecure::Always,
                max_age: c.max_age.map(|d| d.as_secs()),
            },
            secure_auto: c.secure == CookieSecure::Auto,
            strip: c.strip,
        })
    }
}

pub struct Generation {
    pub config: Arc<Config>,
    /// Parallel to `config.upstreams`.
    pub upstreams: Vec<UpstreamRt>,
    /// Parallel to `config.listeners`.
    pub listeners: Vec<Arc<ListenerCounters>>,
}

pub struct Shared {
    pub gen: ArcSwap<Generation>,
    pub metrics: Metrics,
    pub workers: usize,
    pub phase: watch::Sender<Phase>,
    /// Every worker has bound every listener.
    pub listeners_bound: AtomicBool,
    pub io_kind: std::sync::OnceLock<crate::io::IoKind>,
    pub limits: crate::limits::Limiter,
    /// Bumped after every generation swap, so accept loops notice a removed listener.
    pub generation: watch::Sender<u64>,
    /// One command channel per worker (index = worker id), for sockets of listeners added by a
    /// reload. Touched only at startup and reload.
    pub worker_cmds: std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<WorkerCmd>>>,
    /// TLS listeners' certificates and rustls configs (swapped on reload and when the
    /// certificate files change), and the TLS counters.
    pub tls: crate::tls::Store,
}

/// Work the control plane hands to a worker.
pub enum WorkerCmd {
    /// Start accepting on a newly bound socket of listener `name`.
    Listen {
        name: Arc<str>,
        /// The configured address (port 0 stays 0): with the name, the listener's identity.
        bind: std::net::SocketAddr,
        socket: std::net::TcpListener,
    },
}

impl Shared {
    pub fn new(gen: Generation, workers: usize) -> Arc<Shared> {
        let limits = crate::limits::Limiter::new(&gen.config.limits);
        let tls = crate::tls::Store::new();
        // `ringway run` checked the certificates before getting here; a file that changed
        // in between is logged, and TLS handshakes fail until a reload fixes it.
        if let Err(errors) = tls.apply(&gen.config) {
            for e in errors {
                tracing::error!(error = %e, "TLS certificates not loaded");
            }
        }
        Arc::new(Shared {
            gen: ArcSwap::from_pointee(gen),
            metrics: Metrics::new(workers),
            workers,
            phase: watch::channel(Phase::Running).0,
            listeners_bound: AtomicBool::new(false),
            io_kind: std::sync::OnceLock::new(),
            limits,
            generation: watch::channel(0).0,
            worker_cmds: std::sync::Mutex::new(Vec::new()),
            tls,
        })
    }

    /// Swaps in a new generation and tells the accept loops.
    pub fn publish(&self, gen: Generation) {
        self.gen.store(Arc::new(gen));
        self.generation.send_modify(|v| *v += 1);
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Ready = config loaded (there is a generation), listeners bound, not draining. That is
    /// what a DaemonSet's readiness means: this node can take connections. Upstream health is
    /// reported by `/backends` and `ringway_upstream_up`, not here, so one empty upstream does
    /// not take every edge node out of the load balancer in front; an upstream with
    /// `required_for_ready = true` opts back in.
    pub fn ready(&self) -> (bool, String) {
        if !self.listeners_bound.load(Ordering::Acquire) {
            return (false, "listeners not bound yet".into());
        }
        if self.phase() != Phase::Running {
            return (false, "draining".into());
        }
        let gen = self.gen.load();
        for u in gen.upstreams.iter().filter(|u| u.cfg.required_for_ready) {
            if !u.has_backend_up() {
                return (
                    false,
                    format!(
                        "upstream {} has no backend up (required_for_ready)",
                        u.cfg.name
                    ),
                );
            }
        }
        (true, "ready".into())
    }
}
