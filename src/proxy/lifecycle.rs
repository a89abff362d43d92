//! The gateway ending tunnels itself (issue 12): each worker keeps a registry of its live
//! tunnels, and one per-worker tick decides which of them to end and why.
//!
//! - A tunnel registers when it starts ([`Tunnels::register`]); its entry holds an [`Ask`]: a
//!   cell the tick sets to an [`Ending`] and the tunnel's supervisor polls through its
//!   [`Registered`] handle. What the tunnel then does
//!   (a Close frame at the next frame boundary for a WebSocket, a FIN/RST for a raw tunnel) is
//!   the tunnel's business; the registry only says *that* and *why*.
//! - One timer per worker, not one per tunnel: an idle tunnel holds no drain timer, and a rare
//!   event (a backend leaving, a shutdown) costs one scan of the registry per tick.
//! - Only this core's tunnels are touched: replicas and cores share nothing but the read-mostly
//!   tables (drain deadlines live in the backend's stats), so the work spreads without
//!   coordination.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::balance::{now_ms, BackendStats};
use crate::metrics::MoveReason;
use crate::state::Phase;

use super::Worker;

/// How often a worker looks over its tunnels.
pub const TICK: Duration = Duration::from_secs(1);
/// How long before the end of `timeouts.drain` a draining worker asks its tunnels to end, so
/// their close handshakes finish before the process exits.
pub const CLOSE_LEAD: Duration = Duration::from_secs(5);

/// Why the gateway ends a tunnel itself. Each maps to the Close code each side gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The gateway drains (SIGTERM) and will not come back on this socket.
    Shutdown,
    /// The gateway drains to be replaced (handover, rolling restart): clients should reconnect.
    Restart,
    /// The backend left discovery and its upstream's `drain_timeout` passed.
    BackendGone,
    /// A reload removed what placed this tunnel (its upstream).
    RouteRemoved,
    /// No bytes either way for `timeouts.tunnel_idle`.
    IdleTimeout,
    /// An operator drains the backend (`POST /backends/{upstream}/{backend}/drain`).
    AdminDrain,
    /// Rebalancing after a scale-out moves this connection to its new backend.
    Rebalance,
    /// The client did not answer the gateway's ping in time.
    PingTimeout,
}

impl Ending {
    /// The Close code the client gets (RFC 6455 §7.4.1): 1012 asks it to reconnect (the service
    /// restarts, possibly elsewhere), 1001 says this endpoint goes away.
    pub fn client_code(self) -> u16 {
        use crate::proto::ws_frame::{CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART};
        match self {
            Ending::Restart | Ending::BackendGone | Ending::AdminDrain | Ending::Rebalance => {
                CLOSE_SERVICE_RESTART
            }
            Ending::Shutdown | Ending::RouteRemoved | Ending::IdleTimeout | Ending::PingTimeout => {
                CLOSE_GOING_AWAY
            }
        }
    }

    /// The Close code the backend gets: its client is going away, whatever the reason.
    pub fn backend_code(self) -> u16 {
        crate::proto::ws_frame::CLOSE_GOING_AWAY
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Shutdown => "shutdown",
            Ending::Restart => "restart",
            Ending::BackendGone => "drained",
            Ending::RouteRemoved => "route_removed",
            Ending::IdleTimeout => "idle_timeout",
            Ending::AdminDrain => "admin_drain",
            Ending::Rebalance => "rebalance",
            Ending::PingTimeout => "ping_timeout",
        }
    }
}

/// A tunnel's mailbox: set once by the tick, awaited by the tunnel's supervisor.
#[derive(Default)]
pub struct Ask {
    ending: Cell<Option<Ending>>,
    waker: Cell<Option<Waker>>,
}

impl Ask {
    /// Asks the tunnel to end. The first reason wins.
    pub fn ask(&self, why: Ending) {
        if self.ending.get().is_none() {
            self.ending.set(Some(why));
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    pub fn asked(&self) -> Option<Ending> {
        self.ending.get()
    }

    /// Ready once the tunnel is asked to end; until then `cx` is woken when it is.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<Ending> {
        match self.ending.get() {
            Some(e) => Poll::Ready(e),
            None => {
                let w = match self.waker.take() {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                self.waker.set(Some(w));
                Poll::Pending
            }
        }
    }
}

/// What the registry knows of one live tunnel.
pub struct Entry {
    /// Its mailbox, in the entry itself (not shared through an `Rc`: 48 bytes less per tunnel).
    pub ask: Ask,
    /// The upstream's name (indices change with reloads; names do not).
    pub upstream: Arc<str>,
    pub backend: Arc<BackendStats>,
    /// The balancing key that placed it, for hash upstreams.
    pub key: Option<PlacedKey>,
    pub opened: Instant,
    /// An upgraded WebSocket (Close frames possible), as opposed to a raw tcp tunnel.
    pub websocket: bool,
}

/// How a hash policy placed a tunnel: enough to recompute its placement against a newer table
/// (one Maglev read), no key bytes kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedKey {
    /// The key's hash, as the pick recorded it (`Pick::key_hash`).
    pub hash: u64,
    /// [`crate::balance::Table::key_source`] of the table that placed it.
    pub source: u64,
}

/// A core's live tunnels: a slab (free slots reused) so register and unregister are O(1).
#[derive(Default)]
pub struct Tunnels {
    slots: RefCell<Vec<Option<Entry>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
}

/// A tunnel's place in the registry; removes it when dropped.
pub struct Registered<'a> {
    tunnels: &'a Tunnels,
    index: usize,
}

impl Registered<'_> {
    /// Ready once the tunnel is asked to end ([`Ask::poll_wait`] on its entry).
    pub fn poll_asked(&self, cx: &mut Context<'_>) -> Poll<Ending> {
        match self.tunnels.slots.borrow().get(self.index) {
            Some(Some(e)) => e.ask.poll_wait(cx),
            _ => Poll::Pending, // not reached: the entry lives as long as `self`
        }
    }

    /// When the tunnel opened (its entry's `opened`).
    pub fn opened(&self) -> Instant {
        let slots = self.tunnels.slots.borrow();
        match slots.get(self.index) {
            Some(Some(e)) => e.opened,
            _ => Instant::now(), // not reached: the entry lives as long as `self`
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut slots = self.tunnels.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(self.index) {
            *slot = None;
            self.tunnels.free.borrow_mut().push(self.index);
            self.tunnels.live.set(self.tunnels.live.get() - 1);
        }
    }
}

impl Tunnels {
    /// Registers a tunnel; `entry.ask` (usually `Ask::default()`) is its mailbox.
    pub fn register(&self, entry: Entry) -> Registered<'_> {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = Some(entry);
                i
            }
            None => {
                slots.push(Some(entry));
                slots.len() - 1
            }
        };
        self.live.set(self.live.get() + 1);
        Registered {
            tunnels: self,
            index,
        }
    }

    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Asks the tunnel at `index` (from [`Tunnels::for_each_indexed`]) to end, if it is
    /// still there.
    pub fn ask(&self, index: usize, why: Ending) {
        if let Some(Some(e)) = self.slots.borrow().get(index) {
            e.ask.ask(why);
        }
    }

    /// Calls `f` on every live tunnel, with its index. `f` must not register or unregister (it
    /// may ask).
    pub fn for_each_indexed(&self, mut f: impl FnMut(usize, &Entry)) {
        for (i, e) in self.slots.borrow().iter().enumerate() {
            if let Some(e) = e {
                f(i, e);
            }
        }
    }

    /// Calls `f` on every live tunnel. `f` must not register or unregister (it may ask).
    pub fn for_each(&self, mut f: impl FnMut(&Entry)) {
        for e in self.slots.borrow().iter().flatten() {
            f(e);
        }
    }
}

/// One worker's tick: every [`TICK`] until the worker stops, end the tunnels that must end.
pub async fn tick(w: Rc<Worker>) {
    let mut phase = w.shared.phase.subscribe();
    // When the worker stopped accepting: tunnels then get `timeouts.drain` to end by themselves.
    let mut stopped: Option<Instant> = None;
    loop {
        tokio::select! {
            () = crate::io::sleep(TICK) => {}
            changed = phase.changed() => if changed.is_err() { return },
        }
        if stopped.is_none() && *phase.borrow_and_update() == Phase::StopAccepting {
            stopped = Some(Instant::now());
        }
        let drain = w.shared.gen.load().config.timeouts.drain;
        let stopping = stopped.is_some_and(|t| t.elapsed() >= drain.saturating_sub(CLOSE_LEAD));
        look_over(&w, stopping);
    }
}

/// One pass over the registry: endings first, then moves (an admin drain, rebalancing).
fn look_over(w: &Worker, stopping: bool) {
    let tunnels = w.tunnels();
    let now = now_ms();
    let gen = w.shared.gen.load();
    if tunnels.live() > 0 {
        tunnels.for_each(|e| {
            if e.ask.asked().is_some() {
                return;
            }
            let upstream = gen.upstreams.iter().find(|u| *u.cfg.name == *e.upstream);
            if stopping {
                e.ask.ask(Ending::Shutdown);
            } else if e.backend.drain_deadline().is_some_and(|at| now >= at) {
                e.ask.ask(Ending::BackendGone);
            } else if upstream.is_none() {
                e.ask.ask(Ending::RouteRemoved);
            } else if e.backend.take_drain_token(now) {
                // An operator drains the backend: its tunnels go at the drain's rate, shared
                // by the cores (whichever takes the token closes one of its own).
                e.ask.ask(Ending::AdminDrain);
                if let Some(u) = upstream {
                    u.counters.moved(w.id, MoveReason::AdminDrain);
                }
            }
        });
    }
    if !stopping {
        // Also with no tunnel here: the shedding marks follow the gateway-wide counts.
        super::rebalance::pass(w, &gen, now);
    }
}
