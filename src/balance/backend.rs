//! Per-backend identity ([`BackendSpec`]) and shared state ([`BackendStats`]).
//!
//! A `BackendStats` lives in the upstream's [`StatsRegistry`], keyed by backend **name**, so
//! the live-connection count and the health state of `chat-0` survive every table rebuild
//! (a DNS refresh, a weight change, a policy reload) and a restarted pod that comes back
//! with a new address gets its own counters back. Everything in it is an atomic: workers on
//! every core touch it on connect and close (never per message), the control plane reads it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::bucket::Bucket;
use super::holders::KeyHolders;

/// Milliseconds on a monotonic clock that starts near process start.
///
/// Health timestamps are stored in atomics as these millis (an `Instant` does not fit in an
/// atomic). Every health method takes `now_ms` as a parameter so tests inject the clock and
/// never sleep; the data plane passes `now_ms()`.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One backend (one pod) as discovery reports it. The identity is `name`: placement, cookie
/// values and shared stats are all keyed on it, never on `addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable name (`chat-0`, or the pod's DNS name). Unique within an upstream.
    pub name: Arc<str>,
    /// Where to connect now; may change across rebuilds without moving any client.
    pub addr: SocketAddr,
    /// Relative weight. `0` means "in the table but takes no new connections" (drain by
    /// weight, as HAProxy's `weight 0`): the backend is built as [`BackendState::Draining`].
    pub weight: u32,
}

impl BackendSpec {
    /// A spec with weight 1.
    pub fn new(name: &str, addr: SocketAddr) -> Self {
        BackendSpec {
            name: Arc::from(name),
            addr,
            weight: 1,
        }
    }
}

/// Whether a backend in a table may take new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Placed in the hash / round-robin structures; may take new connections while healthy.
    Active,
    /// Listed for lookups and metrics (it still holds live connections: it left the
    /// discovered set, or its weight is 0) but never picked for a new connection and absent
    /// from the placement structures.
    Draining,
}

/// Passive health (nginx `max_fails` / `fail_timeout` semantics): `max_fails` failed
/// connects within `fail_timeout_ms` mark the backend down for `fail_timeout_ms`. When that
/// expires it is tried again; one more failure marks it down again at once, a success
/// clears it. `max_fails == 0` turns passive health off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveHealth {
    pub max_fails: u32,
    pub fail_timeout_ms: u64,
}

impl Default for PassiveHealth {
    /// nginx's defaults: `max_fails=1 fail_timeout=10s`.
    fn default() -> Self {
        PassiveHealth {
            max_fails: 1,
            fail_timeout_ms: 10_000,
        }
    }
}

/// Low 16 bits of `window`: failures counted in the current window (saturating).
const FAILS_MASK: u64 = 0xffff;

/// Shared per-backend counters and health. Aligned to a cache line so two backends'
/// `live` counters, written from different cores, never share one.
#[derive(Debug)]
#[repr(align(64))]
pub struct BackendStats {
    /// Live connections to this backend, across all cores.
    live: AtomicU64,
    /// Handed out once per name by the registry (0 outside one): names this backend in the
    /// upstream's [`KeyHolders`], which outlive tables (indexes would not).
    id: u64,
    /// Live connections of the whole upstream (shared by every stats of one registry):
    /// bounded-load hashing reads the total in O(1) instead of summing every backend.
    pool_live: Arc<AtomicU64>,
    /// Driven by the active prober; `true` until a probe says otherwise.
    health_up: AtomicBool,
    /// `window_start_ms << 16 | fails_in_window`, updated with one CAS so two cores
    /// reporting failures at once cannot lose the window reset.
    window: AtomicU64,
    /// Passively down while `now_ms < down_until_ms`.
    down_until_ms: AtomicU64,
    /// Every failure ever reported (a Prometheus counter).
    failures_total: AtomicU64,
    max_fails: AtomicU32,
    fail_timeout_ms: AtomicU64,
    /// Responses relayed, by status class (index 0 = 1xx … 4 = 5xx). Touched once per
    /// request, like `live`; never per tunnelled message.
    responses: [AtomicU64; 5],
    /// Tunnel and body bytes, client→backend and backend→client, added when a tunnel ends.
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// `now_ms()` after which this backend's open tunnels are closed (it left discovery and
    /// the upstream has a `drain_timeout`); 0 = none. Set by discovery, read by tunnels.
    drain_deadline_ms: AtomicU64,
    /// An operator drains this backend (`POST /backends/{upstream}/{backend}/drain`): the
    /// gateway-wide number of its tunnels closed per second; 0 = not drained. Set by the
    /// admin port, read by every pick (a drained backend takes no new connection) and by
    /// the workers' ticks. Kept by name across table rebuilds, like the counts.
    admin_drain_rate: AtomicU32,
    /// The drain's budget, shared by every core's tick.
    drain_bucket: Bucket,
    /// Rebalancing found this backend above its fair share: a route cookie naming it is
    /// re-placed instead of honoured. Set and cleared by the workers' ticks.
    shedding: AtomicBool,
}

impl BackendStats {
    /// Stats of a backend alone in its own pool (tests, tools). Use a [`StatsRegistry`]
    /// for backends of an upstream.
    pub fn new(passive: PassiveHealth) -> Self {
        Self::with_pool(passive, Arc::new(AtomicU64::new(0)), 0)
    }

    fn with_pool(passive: PassiveHealth, pool_live: Arc<AtomicU64>, id: u64) -> Self {
        BackendStats {
            live: AtomicU64::new(0),
            id,
            pool_live,
            health_up: AtomicBool::new(true),
            window: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            max_fails: AtomicU32::new(passive.max_fails),
            fail_timeout_ms: AtomicU64::new(passive.fail_timeout_ms),
            responses: Default::default(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            drain_deadline_ms: AtomicU64::new(0),
            admin_drain_rate: AtomicU32::new(0),
            drain_bucket: Bucket::default(),
            shedding: AtomicBool::new(false),
        }
    }

    /// Sets (or with `None` clears: the backend came back) the drain deadline.
    pub fn set_drain_deadline(&self, at_ms: Option<u64>) {
        self.drain_deadline_ms
            .store(at_ms.map_or(0, |t| t.max(1)), Relaxed);
    }

    pub fn drain_deadline(&self) -> Option<u64> {
        match self.drain_deadline_ms.load(Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    /// Starts (`Some(rate)`, closes per second for this gateway, at least 1) or ends
    /// (`None`) an operator's drain.
    pub fn set_admin_drain(&self, per_second: Option<u32>) {
        self.admin_drain_rate
            .store(per_second.map_or(0, |r| r.max(1)), Relaxed);
    }

    /// The drain rate while an operator drains this backend.
    pub fn admin_drain(&self) -> Option<u32> {
        match self.admin_drain_rate.load(Relaxed) {
            0 => None,
            r => Some(r),
        }
    }

    /// One of the drain's closes at `now_ms`, if its rate allows (any core).
    pub fn take_drain_token(&self, now_ms: u64) -> bool {
        self.admin_drain()
            .is_some_and(|rate| self.drain_bucket.take(now_ms, rate))
    }

    /// Marks (or clears) this backend as above its fair share (rebalancing).
    pub fn set_shedding(&self, on: bool) {
        if self.shedding.load(Relaxed) != on {
            self.shedding.store(on, Relaxed);
        }
    }

    pub fn shedding(&self) -> bool {
        self.shedding.load(Relaxed)
    }

    /// Counts one response relayed from this backend.
    pub fn record_response(&self, code: u16) {
        let class = (code / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    /// Responses by class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub fn responses(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.responses[i].load(Relaxed))
    }

    /// Adds bytes moved through a finished tunnel (or a long one's flush).
    pub fn add_bytes(&self, up: u64, down: u64) {
        if up > 0 {
            self.bytes_up.fetch_add(up, Relaxed);
        }
        if down > 0 {
            self.bytes_down.fetch_add(down, Relaxed);
        }
    }

    /// `(client→backend, backend→client)` bytes so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_up.load(Relaxed), self.bytes_down.load(Relaxed))
    }

    /// This backend's id in its registry (stable for as long as the registry tracks the name).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Live connections to this backend.
    pub fn live(&self) -> u64 {
        self.live.load(Relaxed)
    }

    /// Live connections of the whole upstream this backend belongs to.
    pub fn pool_live(&self) -> u64 {
        self.pool_live.load(Relaxed)
    }

    /// Failures reported since the process started.
    pub fn failures_total(&self) -> u64 {
        self.failures_total.load(Relaxed)
    }

    /// Set by the active health prober.
    pub fn set_health_up(&self, up: bool) {
        self.health_up.store(up, Relaxed);
    }

    pub fn health_up(&self) -> bool {
        self.health_up.load(Relaxed)
    }

    /// Passively marked down at `now_ms`.
    pub fn is_down(&self, now_ms: u64) -> bool {
        now_ms < self.down_until_ms.load(Relaxed)
    }

    /// May take a new connection at `now_ms` (active health up, not passively down, not
    /// drained by an operator).
    /// A table additionally refuses `Draining` backends.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.health_up() && !self.is_down(now_ms) && self.admin_drain().is_none()
    }

    /// [`BackendStats::is_available`] that reads the clock only when a down mark is pending,
    /// and clears an expired mark so later picks skip the clock again. Clearing is safe:
    /// the "tried again after the timeout" state lives in the failure window, and a
    /// concurrent `record_failure`'s new mark makes the compare-exchange fail.
    #[inline]
    pub(crate) fn available_with(&self, now_ms: impl FnOnce() -> u64) -> bool {
        if !self.health_up() || self.admin_drain_rate.load(Relaxed) != 0 {
            return false;
        }
        let until = self.down_until_ms.load(Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        let _ = self
            .down_until_ms
            .compare_exchange(until, 0, Relaxed, Relaxed);
        true
    }

    /// A connect (or handshake) to this backend failed at `now_ms`.
    pub fn record_failure(&self, now_ms: u64) {
        self.failures_total.fetch_add(1, Relaxed);
        let max_fails = u64::from(self.max_fails.load(Relaxed));
        if max_fails == 0 {
            return;
        }
        let timeout = self.fail_timeout_ms.load(Relaxed);
        let mut cur = self.window.load(Relaxed);
        let fails = loop {
            let (start, fails) = (cur >> 16, cur & FAILS_MASK);
            let next = if fails >= max_fails {
                // Tripped earlier (down, or tried again after the timeout): stay tripped.
                cur
            } else if fails == 0 || now_ms.saturating_sub(start) >= timeout {
                (now_ms << 16) | 1
            } else {
                (start << 16) | (fails + 1).min(FAILS_MASK)
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => break next & FAILS_MASK,
                Err(actual) => cur = actual,
            }
        };
        if fails >= max_fails {
            self.down_until_ms
                .fetch_max(now_ms.saturating_add(timeout), Relaxed);
        }
    }

    /// A connect to this backend succeeded at `now_ms`. Clears the failure count unless the
    /// backend is currently down: a connect that was already in flight when the backend was
    /// marked down must not bring it back early (nginx resets `fails` only once the peer
    /// was re-tried after `fail_timeout`).
    pub fn record_success(&self, now_ms: u64) {
        if self.window.load(Relaxed) & FAILS_MASK != 0 && !self.is_down(now_ms) {
            self.window.store(0, Relaxed);
        }
    }

    /// Forgets passive failures: the backend's address changed (a restarted pod), so failures
    /// counted against the old address say nothing about the new one.
    pub fn reset_passive(&self) {
        self.window.store(0, Relaxed);
        self.down_until_ms.store(0, Relaxed);
    }

    fn set_passive(&self, passive: PassiveHealth) {
        self.max_fails.store(passive.max_fails, Relaxed);
        self.fail_timeout_ms.store(passive.fail_timeout_ms, Relaxed);
    }
}

/// Counts one live connection for as long as it exists: increments on creation, decrements
/// on drop. Create it right after `pick` (before connecting) so concurrent pickers on other
/// cores already see the connection; drop it when the connection ends or the connect fails.
#[derive(Debug)]
pub struct ConnGuard {
    stats: Arc<BackendStats>,
    /// The key hash this connection holds in its upstream's [`KeyHolders`] (bounded-load
    /// hashing only), released on drop.
    key: Option<(Arc<KeyHolders>, u64)>,
}

impl ConnGuard {
    pub fn new(stats: Arc<BackendStats>) -> Self {
        stats.live.fetch_add(1, Relaxed);
        stats.pool_live.fetch_add(1, Relaxed);
        ConnGuard { stats, key: None }
    }

    /// Like [`ConnGuard::new`], and records that the key `hash` has a live connection on
    /// this backend, so its siblings follow it (see [`KeyHolders`]).
    pub fn holding(stats: Arc<BackendStats>, holders: &Arc<KeyHolders>, hash: u64) -> Self {
        let mut g = Self::new(stats);
        if holders.hold(hash, g.stats.id) {
            g.key = Some((holders.clone(), hash));
        }
        g
    }

    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some((holders, hash)) = self.key.take() {
            holders.release(hash, self.stats.id);
        }
        self.stats.live.fetch_sub(1, Relaxed);
        self.stats.pool_live.fetch_sub(1, Relaxed);
    }
}

/// Hands out one `Arc<BackendStats>` per backend name for an upstream, so counts and health
/// survive table rebuilds. Used only by the control plane when building tables; the lock is
/// never taken on the data path.
#[derive(Debug)]
pub struct StatsRegistry {
    inner: Mutex<RegistryInner>,
    pool_live: Arc<AtomicU64>,
    /// Where keys' live connections are, created by the first bounded-load table.
    holders: OnceLock<Arc<KeyHolders>>,
}

#[derive(Debug)]
struct RegistryInner {
    passive: PassiveHealth,
    by_name: HashMap<Arc<str>, Arc<BackendStats>>,
    next_id: u64,
}

impl Default for StatsRegistry {
    fn default() -> Self {
        Self::new(PassiveHealth::default())
    }
}

impl StatsRegistry {
    pub fn new(passive: PassiveHealth) -> Self {
        StatsRegistry {
            inner: Mutex::new(RegistryInner {
                passive,
                by_name: HashMap::new(),
                next_id: 1,
            }),
            pool_live: Arc::new(AtomicU64::new(0)),
            holders: OnceLock::new(),
        }
    }

    /// The upstream's key holders (allocated on first use: only bounded load needs them).
    pub(crate) fn holders(&self) -> Arc<KeyHolders> {
        self.holders.get_or_init(Default::default).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        // A panic while holding this lock leaves a consistent map (every op is one insert or
        // retain), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stats for `name`, created on first use.
    pub fn stats(&self, name: &Arc<str>) -> Arc<BackendStats> {
        let mut inner = self.lock();
        if let Some(s) = inner.by_name.get(name) {
            return s.clone();
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let s = Arc::new(BackendStats::with_pool(
            inner.passive,
            self.pool_live.clone(),
            id,
        ));
        inner.by_name.insert(name.clone(), s.clone());
        s
    }

    /// The stats for `name` if it has any.
    pub fn get(&self, name: &str) -> Option<Arc<BackendStats>> {
        self.lock().by_name.get(name).cloned()
    }

    /// Live connections of the whole upstream.
    pub fn pool_live(&self) -> u64 {
        self.pool_live.load(Relaxed)
    }

    /// The upstream-wide live counter shared by every stats of this registry.
    pub(crate) fn pool_counter(&self) -> Arc<AtomicU64> {
        self.pool_live.clone()
    }

    /// Change `max_fails` / `fail_timeout` (config reload) for existing and future backends.
    pub fn set_passive(&self, passive: PassiveHealth) {
        let mut inner = self.lock();
        inner.passive = passive;
        inner.by_name.values().for_each(|s| s.set_passive(passive));
    }

    /// Forget backends that are not in `keep` and hold no live connection. A name that comes
    /// back later starts with fresh health state.
    pub fn prune(&self, keep: &dyn Fn(&str) -> bool) {
        self.lock()
            .by_name
            .retain(|name, s| keep(name) || s.live() > 0);
    }

    /// Number of names tracked.
    pub fn len(&self) -> usize {
        self.lock().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
