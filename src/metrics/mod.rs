//! Per-core counters. Each worker writes only its own slot (a relaxed load + store, no locked
//! instruction, no shared cache line); the admin thread sums the slots at scrape time.
//! Per-backend figures live in `balance::BackendStats` (touched per connection, not per
//! message). Metric names are defined once, in `admin::names`.

mod histogram;
pub mod process;
pub mod websocket;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub use histogram::{
    Histogram, HistogramSnapshot, CONNECT_BUCKETS, LIFETIME_BUCKETS, PARSE_BUCKETS,
    RESPONSE_BUCKETS,
};

use crate::error::Kind;

/// Adds to a counter only this thread writes: no atomic read-modify-write needed.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
pub fn bump_signed(c: &AtomicI64, n: i64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// One worker's counters, cache-line aligned so two workers never share a line.
#[repr(align(128))]
pub struct CoreCounters {
    pub errors: [AtomicU64; Kind::COUNT],
    pub head_parse: Histogram,
    pub connect: Histogram,
    pub tunnel_lifetime: Histogram,
    pub pipes_lent: AtomicI64,
}

impl Default for CoreCounters {
    fn default() -> Self {
        CoreCounters {
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            head_parse: Histogram::new(PARSE_BUCKETS),
            connect: Histogram::new(CONNECT_BUCKETS),
            tunnel_lifetime: Histogram::new(LIFETIME_BUCKETS),
            pipes_lent: AtomicI64::new(0),
        }
    }
}

impl CoreCounters {
    #[inline]
    pub fn error(&self, kind: Kind) {
        bump(&self.errors[kind as usize], 1);
    }
}

/// Per-listener counters, one slot per worker.
pub struct ListenerCounters {
    pub name: Arc<str>,
    slots: Box<[ListenerSlot]>,
}

#[repr(align(128))]
#[derive(Default)]
struct ListenerSlot {
    accepted: AtomicU64,
    active: AtomicI64,
    rejected: AtomicU64,
}

impl ListenerCounters {
    pub fn new(name: Arc<str>, workers: usize) -> Self {
        ListenerCounters {
            name,
            slots: (0..workers.max(1))
                .map(|_| ListenerSlot::default())
                .collect(),
        }
    }

    #[inline]
    pub fn opened(&self, worker: usize) {
        let s = &self.slots[worker % self.slots.len()];
        bump(&s.accepted, 1);
        bump_signed(&s.active, 1);
    }

    #[inline]
    pub fn closed(&self, worker: usize) {
        bump_signed(&self.slots[worker % self.slots.len()].active, -1);
    }

    #[inline]
    pub fn rejected(&self, worker: usize) {
        bump(&self.slots[worker % self.slots.len()].rejected, 1);
    }

    pub fn accepted_total(&self) -> u64 {
        self.slots.iter().map(|s| s.accepted.load(Relaxed)).sum()
    }

    pub fn active(&self) -> i64 {
        self.slots.iter().map(|s| s.active.load(Relaxed)).sum()
    }

    pub fn rejected_total(&self) -> u64 {
        self.slots.iter().map(|s| s.rejected.load(Relaxed)).sum()
    }
}

/// Per-upstream counters, one slot per worker.
pub struct UpstreamCounters {
    pub name: Arc<str>,
    slots: Box<[UpstreamSlot]>,
}

#[repr(align(128))]
struct UpstreamSlot {
    upgrades_ok: AtomicU64,
    upgrades_failed: AtomicU64,
    /// Plain HTTP exchanges of this upstream, request sent to response relayed.
    response: Histogram,
    /// TLS handshakes to this upstream's backends, by result (`crate::tls::upstream::RESULTS`
    /// order, then resumed sessions); touched once per backend connection, never per message.
    tls: [AtomicU64; UPSTREAM_TLS_SLOTS],
    /// WebSocket frames of this upstream's tunnels, per direction.
    ws: websocket::WsCounters,
    /// Tunnels the tick asked to end to move them, by [`MoveReason`].
    moved: [AtomicU64; MoveReason::ALL.len()],
}

/// Why the gateway moved a tunnel (`ringway_rebalance_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// A hash upstream's table now places the tunnel's key on another backend.
    Placement = 0,
    /// Its backend held more than its fair share (non-hash policies).
    FairShare = 1,
    /// An operator drains its backend.
    AdminDrain = 2,
}

impl MoveReason {
    pub const ALL: [MoveReason; 3] = [
        MoveReason::Placement,
        MoveReason::FairShare,
        MoveReason::AdminDrain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::Placement => "placement",
            MoveReason::FairShare => "fair_share",
            MoveReason::AdminDrain => "admin_drain",
        }
    }
}

/// Upstream TLS handshake results counted per upstream (the results, then "resumed").
pub const UPSTREAM_TLS_SLOTS: usize = 8;

impl Default for UpstreamSlot {
    fn default() -> Self {
        UpstreamSlot {
            upgrades_ok: AtomicU64::new(0),
            upgrades_failed: AtomicU64::new(0),
            response: Histogram::new(RESPONSE_BUCKETS),
            tls: Default::default(),
            ws: websocket::WsCounters::default(),
            moved: Default::default(),
        }
    }
}

impl UpstreamCounters {
    pub fn new(name: Arc<str>, workers: usize) -> Self {
        UpstreamCounters {
            name,
            slots: (0..workers.max(1))
                .map(|_| UpstreamSlot::default())
                .collect(),
        }
    }

    pub fn upgrade(&self, worker: usize, ok: bool) {
        let s = &self.slots[worker % self.slots.len()];
        bump(
            if ok {
                &s.upgrades_ok
            } else {
                &s.upgrades_failed
            },
            1,
        );
    }

    /// One relayed response of a plain HTTP exchange that started at `started`.
    #[inline]
    pub fn response(&self, worker: usize, started: std::time::Instant) {
        let s = &self.slots[worker % self.slots.len()];
        s.response.observe_us(started.elapsed().as_micros() as u64);
    }

    /// The response-time histogram summed over the workers (at scrape time).
    pub fn response_times(&self) -> Option<HistogramSnapshot> {
        Histogram::sum(self.slots.iter().map(|s| &s.response))
    }

    /// One upstream TLS handshake, counted in slot `i` (see [`UPSTREAM_TLS_SLOTS`]).
    pub fn tls_handshake(&self, worker: usize, i: usize) {
        let s = &self.slots[worker % self.slots.len()];
        bump(&s.tls[i.min(UPSTREAM_TLS_SLOTS - 1)], 1);
    }

    /// The upstream TLS handshake counters summed over the workers (at scrape time).
    pub fn tls_handshakes(&self) -> [u64; UPSTREAM_TLS_SLOTS] {
        let mut sum = [0u64; UPSTREAM_TLS_SLOTS];
        for s in self.slots.iter() {
            for (t, c) in sum.iter_mut().zip(&s.tls) {
                *t += c.load(Relaxed);
            }
        }
        sum
    }

    /// This worker's WebSocket counters (written by the worker's tunnels only).
    #[inline]
    pub fn ws(&self, worker: usize) -> &websocket::WsCounters {
        &self.slots[worker % self.slots.len()].ws
    }

    /// The WebSocket counters summed over the workers (at scrape time).
    pub fn ws_totals(&self) -> websocket::WsTotals {
        websocket::WsTotals::sum(self.slots.iter().map(|s| &s.ws))
    }

    /// One tunnel asked to end by the tick to move it.
    pub fn moved(&self, worker: usize, why: MoveReason) {
        let s = &self.slots[worker % self.slots.len()];
        bump(&s.moved[why as usize], 1);
    }

    /// Tunnels moved for `why`, summed over the workers.
    pub fn moved_total(&self, why: MoveReason) -> u64 {
        self.slots
            .iter()
            .map(|s| s.moved[why as usize].load(Relaxed))
            .sum()
    }

    pub fn upgrades(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(a, b), s| {
            (
                a + s.upgrades_ok.load(Relaxed),
                b + s.upgrades_failed.load(Relaxed),
            )
        })
    }
}

/// Process-wide counters not tied to the hot path (written by the control plane).
#[derive(Default)]
pub struct ControlCounters {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

/// Everything the admin endpoint reads.
pub struct Metrics {
    pub cores: Box<[CoreCounters]>,
    pub control: ControlCounters,
}

impl Metrics {
    pub fn new(workers: usize) -> Self {
        Metrics {
            cores: (0..workers.max(1))
                .map(|_| CoreCounters::default())
                .collect(),
            control: ControlCounters::default(),
        }
    }

    pub fn core(&self, worker: usize) -> &CoreCounters {
        &self.cores[worker % self.cores.len()]
    }

    pub fn errors(&self, kind: Kind) -> u64 {
        self.cores
            .iter()
            .map(|c| c.errors[kind as usize].load(Relaxed))
            .sum()
    }
}
