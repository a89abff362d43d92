//! The immutable per-upstream [`Table`]: backends, the policy's precomputed structure and the
//! cookie map, built by the control plane and only read by workers.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::backend::{now_ms, BackendSpec, BackendState, BackendStats, ConnGuard, StatsRegistry};
use super::cookie::{self, COOKIE_MAC_LEN};
use super::holders::{short_id, KeyHolders};
use super::maglev::{stable_hash, Maglev, KEY_SEED, MAX_BACKENDS};
use super::policy::{HashKey, Policy};
use super::{KeySource, Pick};

/// Longest precomputed smooth-WRR sequence (when `Σ weight / gcd` is larger, weights are
/// scaled down to fit, keeping every backend at least once): 8192 × 4 bytes = 32 KiB.
pub const RR_MAX_SEQUENCE: usize = 8192;

/// Fixed seeds for the in-memory cookie map (ahash; order and values never leave the
/// process, fixed only so that behaviour is reproducible).
const MAP_SEEDS: [u64; 4] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003, 0x5eed_0004];

/// One backend in a table.
#[derive(Debug, Clone)]
pub struct Backend {
    spec: BackendSpec,
    stats: Arc<BackendStats>,
    state: BackendState,
}

impl Backend {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn addr(&self) -> SocketAddr {
        self.spec.addr
    }
    pub fn weight(&self) -> u32 {
        self.spec.weight
    }
    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }
    pub fn state(&self) -> BackendState {
        self.state
    }
    /// Shared stats (same `Arc` in every table of the upstream for this name).
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }
    pub fn live(&self) -> u64 {
        self.stats.live()
    }
}

/// The policy's precomputed structure.
enum Structure {
    /// Smooth WRR sequence of backend indexes.
    RoundRobin(Box<[u32]>),
    LeastConn,
    Hash {
        key: HashKey,
        /// `Some`: bounded load (and keys stay with their live connections).
        load_factor: Option<f64>,
        maglev: Option<Maglev>,
        /// Where keys' live connections are (shared by every table of the upstream). Always
        /// kept for hash policies, so `/lookup` can say where a key's connections sit; only
        /// bounded load reads it when picking.
        holders: Arc<KeyHolders>,
        /// Active backends by [`short_id`] of their stats id.
        by_id: HashMap<u64, usize, ahash::RandomState>,
        /// [`Table::key_source`].
        source: u64,
    },
}

/// Cookie values of every backend and the reverse map.
struct Cookies {
    name: String,
    /// Under the signing (first) secret.
    values: Vec<Box<str>>,
    /// MAC → (backend, signed by the current secret). Retired secrets' MACs map too, so their
    /// cookies keep routing during a rotation (and are re-issued).
    by_mac: HashMap<[u8; COOKIE_MAC_LEN], (usize, bool), ahash::RandomState>,
}

/// A shared cursor on its own cache line: round robin and least-conn tie rotation touch it
/// once per new connection from every core; keeping it apart from the read-only fields
/// stops that traffic from evicting them.
#[repr(align(64))]
struct Rotor(AtomicUsize);

/// An immutable snapshot of an upstream's backends and how to pick among them.
///
/// Invariants relied on by picking: backends `0..n_active` are `Active`, sorted by name,
/// weight ≥ 1; backends `n_active..` are `Draining`, sorted by name. Indexes are only
/// meaningful for the table that produced them (hold the same `Arc<Table>` across retries).
pub struct Table {
    backends: Vec<Backend>,
    n_active: usize,
    active_weight: u64,
    policy: Policy,
    structure: Structure,
    cookies: Option<Cookies>,
    /// Live connections of the whole upstream (shared with every `BackendStats`).
    pool_live: Arc<AtomicU64>,
    rotor: Rotor,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("policy", &self.policy)
            .field("backends", &self.backends)
            .field("n_active", &self.n_active)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Build a table from the discovered backends. Order of `specs` does not matter (sorted
    /// by name; a duplicated name keeps its first entry by address order). Weight 0 makes a
    /// backend `Draining`.
    pub fn build(policy: &Policy, specs: Vec<BackendSpec>, registry: &StatsRegistry) -> Table {
        Self::build_with_draining(policy, specs, Vec::new(), registry)
    }

    /// Like [`Table::build`], plus backends that left the discovered set but still hold
    /// connections: listed as `Draining` (metrics, lookups), never picked. A name present
    /// in `specs` wins over the same name in `draining`.
    pub fn build_with_draining(
        policy: &Policy,
        specs: Vec<BackendSpec>,
        draining: Vec<BackendSpec>,
        registry: &StatsRegistry,
    ) -> Table {
        let mut specs = specs;
        specs.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        specs.dedup_by(|b, a| a.name == b.name);
        let (mut active, mut gone): (Vec<_>, Vec<_>) =
            specs.into_iter().partition(|s| s.weight > 0);
        if active.len() > MAX_BACKENDS {
            gone.extend(active.drain(MAX_BACKENDS..));
        }
        let mut draining = draining;
        draining.retain(|d| active.binary_search_by(|a| a.name.cmp(&d.name)).is_err());
        gone.extend(draining);
        gone.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        gone.dedup_by(|b, a| a.name == b.name);

        let n_active = active.len();
        let make = |spec: BackendSpec, state| Backend {
            stats: registry.stats(&spec.name),
            spec,
            state,
        };
        let backends: Vec<Backend> = active
            .into_iter()
            .map(|s| make(s, BackendState::Active))
            .chain(gone.into_iter().map(|s| make(s, BackendState::Draining)))
            .collect();
        let active_weight = backends[..n_active]
            .iter()
            .map(|b| u64::from(b.weight()))
            .sum();

        let structure = match policy.effective() {
            Policy::RoundRobin => Structure::RoundRobin(smooth_wrr(&backends[..n_active])),
            Policy::Hash { key, load_factor } => {
                let entries: Vec<(usize, &str, u32)> = backends[..n_active]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i, b.name(), b.weight()))
                    .collect();
                let mut by_id = HashMap::with_capacity_and_hasher(n_active, map_hasher());
                for (i, b) in backends[..n_active].iter().enumerate() {
                    by_id.insert(short_id(b.stats.id()), i);
                }
                Structure::Hash {
                    key: key.clone(),
                    load_factor: *load_factor,
                    maglev: Maglev::build(&entries),
                    holders: registry.holders(),
                    by_id,
                    source: key_source(key),
                }
            }
            // `Cookie` never nests (`Policy::cookie` refuses it); treat it as least-conn.
            Policy::LeastConn | Policy::Cookie { .. } => Structure::LeastConn,
        };
        let cookies = match policy {
            Policy::Cookie {
                secret,
                verify,
                name,
                ..
            } => {
                let values: Vec<Box<str>> = backends
                    .iter()
                    .map(|b| cookie::encode(secret, b.name()).into_boxed_str())
                    .collect();
                let mut by_mac = HashMap::with_capacity_and_hasher(
                    values.len() * (1 + verify.len()),
                    map_hasher(),
                );
                for (i, v) in values.iter().enumerate() {
                    if let Some(mac) = cookie::decode(v.as_bytes()) {
                        by_mac.entry(mac).or_insert((i, true));
                    }
                }
                for old in verify {
                    for (i, b) in backends.iter().enumerate() {
                        let v = cookie::encode(old, b.name());
                        if let Some(mac) = cookie::decode(v.as_bytes()) {
                            by_mac.entry(mac).or_insert((i, false));
                        }
                    }
                }
                Some(Cookies {
                    name: name.clone(),
                    values,
                    by_mac,
                })
            }
            _ => None,
        };
        Table {
            backends,
            n_active,
            active_weight,
            policy: policy.clone(),
            structure,
            cookies,
            pool_live: registry.pool_counter(),
            rotor: Rotor(AtomicUsize::new(0)),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
    pub fn backend(&self, index: usize) -> Option<&Backend> {
        self.backends.get(index)
    }
    pub fn len(&self) -> usize {
        self.backends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
    /// Backends that may take new connections when healthy (`0..n_active`).
    pub fn n_active(&self) -> usize {
        self.n_active
    }
    pub fn name(&self, index: usize) -> Option<&str> {
        self.backend(index).map(Backend::name)
    }
    pub fn addr(&self, index: usize) -> Option<SocketAddr> {
        self.backend(index).map(Backend::addr)
    }
    pub fn state(&self, index: usize) -> Option<BackendState> {
        self.backend(index).map(Backend::state)
    }
    pub fn live(&self, index: usize) -> Option<u64> {
        self.backend(index).map(Backend::live)
    }
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name() == name)
    }
    /// Live connections of the whole upstream.
    pub fn pool_live(&self) -> u64 {
        self.pool_live.load(Relaxed)
    }
    /// The route cookie's name, when the policy is `cookie`.
    pub fn cookie_name(&self) -> Option<&str> {
        self.cookies.as_ref().map(|c| c.name.as_str())
    }
    /// The route cookie value naming backend `index` (precomputed), when the policy is
    /// `cookie`.
    pub fn cookie_value(&self, index: usize) -> Option<&str> {
        self.cookies.as_ref()?.values.get(index).map(|v| &**v)
    }

    /// Which backend a route cookie value names, if any (in any state), under the current or
    /// a retired secret. Allocation-free.
    pub fn lookup_cookie(&self, value: &[u8]) -> Option<usize> {
        self.lookup_cookie_signed(value).map(|(i, _)| i)
    }

    /// [`Table::lookup_cookie`], and whether the current secret signed it (`false`: a retired
    /// one, so the cookie is due for re-issue).
    pub fn lookup_cookie_signed(&self, value: &[u8]) -> Option<(usize, bool)> {
        let cookies = self.cookies.as_ref()?;
        cookies.by_mac.get(&cookie::decode(value)?).copied()
    }

    /// Where a new connection hashed on `key` goes now (`None` when the policy does not hash
    /// keys or nothing is available). Unbounded: [`Table::placement`], which depends only on
    /// the table. Bounded load: also the key's live connections and the loads.
    pub fn lookup_key(&self, key: &[u8]) -> Option<usize> {
        self.lookup_key_with(key, &Now::lazy())
    }

    /// [`Table::lookup_key`] at an injected time.
    pub fn lookup_key_at(&self, key: &[u8], now_ms: u64) -> Option<usize> {
        self.lookup_key_with(key, &Now::at(now_ms))
    }

    fn lookup_key_with(&self, key: &[u8], now_ms: &Now) -> Option<usize> {
        let hash = stable_hash(KEY_SEED, key);
        self.hashed(hash, &[], now_ms).map(|(i, _)| i)
    }

    /// Where the table alone places `key`: the first backend in the key's Maglev probe order
    /// that may take connections (active, health up, not passively down), ignoring loads and
    /// live connections. Every replica that sees the same backends and health gives the same
    /// answer. `None`: not a hash policy, or no backend available.
    pub fn placement(&self, key: &[u8]) -> Option<usize> {
        let Structure::Hash { maglev, .. } = &self.structure else {
            return None;
        };
        self.first_eligible(
            maglev.as_ref()?,
            stable_hash(KEY_SEED, key),
            &[],
            &Now::lazy(),
        )
    }

    /// [`Table::placement`] of a key already hashed (with `KEY_SEED`, as picks record it in
    /// [`Pick::key_hash`]): what rebalancing compares a live tunnel's backend with, one
    /// Maglev read per tunnel and no key bytes kept.
    pub fn placement_of_hash(&self, hash: u64) -> Option<usize> {
        let Structure::Hash { maglev, .. } = &self.structure else {
            return None;
        };
        self.first_eligible(maglev.as_ref()?, hash, &[], &Now::lazy())
    }

    /// What a hash policy takes its key from, as a number (`None`: not a hash policy): a tunnel
    /// placed under another key source (a reload changed `hash:header:A` to `hash:header:B`)
    /// has a recorded hash that says nothing about where the new key goes, so rebalancing
    /// leaves it alone instead of reshuffling every tunnel. Computed at build.
    pub fn key_source(&self) -> Option<u64> {
        match &self.structure {
            Structure::Hash { source, .. } => Some(*source),
            _ => None,
        }
    }

    /// The backend holding live connections of `key` (hash policies; `None` when it has none,
    /// or they are not tracked: see [`KeyHolders`]). May be a draining backend.
    pub fn key_holder(&self, key: &[u8]) -> Option<usize> {
        let Structure::Hash { holders, .. } = &self.structure else {
            return None;
        };
        let id = holders.holder(stable_hash(KEY_SEED, key))?;
        self.backends
            .iter()
            .position(|b| short_id(b.stats.id()) == id)
    }

    /// The backend least-conn would pick now (fewest `live / weight` among those that may
    /// take connections, first by name on a tie), without moving the shared rotation: for
    /// operators' previews (`/lookup`), never for picking.
    pub fn least_loaded(&self) -> Option<usize> {
        let now = Now::lazy();
        (0..self.n_active)
            .filter(|&i| self.eligible(i, &[], &now))
            .min_by(|&a, &b| {
                let (a, b) = (&self.backends[a], &self.backends[b]);
                (u128::from(a.live()) * u128::from(b.weight()))
                    .cmp(&(u128::from(b.live()) * u128::from(a.weight())))
            })
    }

    /// Whether backend `index` may take a new connection now (active, health up, not
    /// passively down).
    pub fn can_take(&self, index: usize) -> bool {
        index < self.backends.len() && self.eligible(index, &[], &Now::lazy())
    }

    /// Whether this table bounds load (a hash policy with `load_factor`).
    pub fn bounded_load(&self) -> Option<f64> {
        match &self.structure {
            Structure::Hash { load_factor, .. } => *load_factor,
            _ => None,
        }
    }

    /// Pick a backend for a new connection of request `req`, never one of `exclude` (backends
    /// that already failed to connect for this request). `None`: nothing available (503).
    pub fn pick<K: KeySource + ?Sized>(&self, req: &K, exclude: &[usize]) -> Option<Pick> {
        self.pick_with(req, exclude, &Now::lazy())
    }

    /// [`Table::pick`] at an injected time (`now_ms` decides passive health).
    pub fn pick_at<K: KeySource + ?Sized>(
        &self,
        req: &K,
        exclude: &[usize],
        now_ms: u64,
    ) -> Option<Pick> {
        self.pick_with(req, exclude, &Now::at(now_ms))
    }

    fn pick_with<K: KeySource + ?Sized>(
        &self,
        req: &K,
        exclude: &[usize],
        now_ms: &Now,
    ) -> Option<Pick> {
        if let Some(c) = &self.cookies {
            let sticky = req
                .cookie(&c.name)
                .and_then(|v| self.lookup_cookie_signed(v))
                // A shedding backend (rebalancing) keeps its tunnels but not its cookies'
                // reconnects: they are re-placed, and get the new backend's cookie.
                .filter(|&(i, _)| {
                    self.eligible(i, exclude, now_ms) && !self.backends[i].stats.shedding()
                });
            if let Some((index, current)) = sticky {
                return Some(Pick {
                    index,
                    // A retired secret's cookie still routes; re-issue it under the new one.
                    set_cookie: !current,
                    key_hash: None,
                });
            }
            return self
                .place_new_session(req, exclude, now_ms)
                .map(|(index, key_hash)| Pick {
                    index,
                    set_cookie: true,
                    key_hash,
                });
        }
        self.pick_structure(req, exclude, now_ms)
            .map(|(index, key_hash)| Pick {
                index,
                set_cookie: false,
                key_hash,
            })
    }

    /// A new cookie session's backend: not one that is shedding (rebalancing) while another
    /// can take it, or the session's next request — carrying the shedding backend's fresh
    /// cookie — would be re-placed and lose the backend that holds its state (a socket.io
    /// handshake, then its polling requests). All shedding: placed anyway.
    fn place_new_session<K: KeySource + ?Sized>(
        &self,
        req: &K,
        exclude: &[usize],
        now_ms: &Now,
    ) -> Option<(usize, Option<u64>)> {
        const TRIES: usize = 4;
        let mut skip = [usize::MAX; 24];
        let n = exclude.len().min(skip.len() - TRIES);
        skip[..n].copy_from_slice(&exclude[..n]);
        let mut first = None;
        for k in 0..TRIES {
            let Some(p) = self.pick_structure(req, &skip[..n + k], now_ms) else {
                break;
            };
            if !self.backends[p.0].stats.shedding() {
                return Some(p);
            }
            first.get_or_insert(p);
            skip[n + k] = p.0;
        }
        first
    }

    /// Count a new connection to `index` (see [`ConnGuard`]).
    pub fn guard(&self, index: usize) -> Option<ConnGuard> {
        self.backend(index).map(|b| ConnGuard::new(b.stats.clone()))
    }

    /// Count a new connection for `pick`: like [`Table::guard`], and a hashed key is recorded
    /// as held by the picked backend for as long as the guard lives.
    pub fn guard_pick(&self, pick: &Pick) -> Option<ConnGuard> {
        let b = self.backend(pick.index)?;
        Some(match (&self.structure, pick.key_hash) {
            (Structure::Hash { holders, .. }, Some(hash)) => {
                ConnGuard::holding(b.stats.clone(), holders, hash)
            }
            _ => ConnGuard::new(b.stats.clone()),
        })
    }

    /// May take a new connection: active, not excluded, health up, not passively down.
    #[inline]
    fn eligible(&self, i: usize, exclude: &[usize], now_ms: &Now) -> bool {
        i < self.n_active
            && !exclude.contains(&i)
            && self.backends[i].stats.available_with(|| now_ms.get())
    }

    /// The backend and, for a hashed key, the key's hash.
    fn pick_structure<K: KeySource + ?Sized>(
        &self,
        req: &K,
        exclude: &[usize],
        now_ms: &Now,
    ) -> Option<(usize, Option<u64>)> {
        match &self.structure {
            Structure::RoundRobin(seq) => self.round_robin(seq, exclude, now_ms).map(|i| (i, None)),
            Structure::LeastConn => self.least_conn(exclude, now_ms).map(|i| (i, None)),
            Structure::Hash { key, .. } => {
                let mut ip_buf = [0u8; 16];
                let bytes = match key {
                    HashKey::Ip => Some(ip_bytes(req.client_ip(), &mut ip_buf)),
                    HashKey::Header(n) => req.header(n),
                    HashKey::Cookie(n) => req.cookie(n),
                    HashKey::Query(n) => req.query(n),
                    HashKey::Sni => req.sni(),
                };
                match bytes {
                    Some(k) => self.hashed(stable_hash(KEY_SEED, k), exclude, now_ms),
                    None => self.least_conn(exclude, now_ms).map(|i| (i, None)),
                }
            }
        }
    }

    /// A hashed key's backend: the first eligible backend in its probe order, or with bounded
    /// load the backend of its live connections, else [`Table::bounded`]. Returns the hash
    /// with the index so the connection's guard can record the key.
    fn hashed(&self, hash: u64, exclude: &[usize], now_ms: &Now) -> Option<(usize, Option<u64>)> {
        let Structure::Hash {
            load_factor,
            maglev,
            holders,
            by_id,
            ..
        } = &self.structure
        else {
            return None;
        };
        let maglev = maglev.as_ref()?;
        let index = match load_factor {
            None => self.first_eligible(maglev, hash, exclude, now_ms)?,
            Some(factor) => {
                // Siblings first: a key with live connections stays where they are, whatever
                // the loads, so overflow moves new keys and never splits a connected device.
                let held = holders
                    .holder(hash)
                    .and_then(|id| by_id.get(&id).copied())
                    .filter(|&i| self.eligible(i, exclude, now_ms));
                match held {
                    Some(i) => i,
                    None => self.bounded(maglev, hash, *factor, exclude, now_ms)?,
                }
            }
        };
        Some((index, Some(hash)))
    }

    /// Unbounded consistent hashing: the key's slot, or when its backend cannot take the
    /// connection, the next slot's backend that can (a dead backend's keys spread over the
    /// others; every other key stays).
    fn first_eligible(
        &self,
        maglev: &Maglev,
        hash: u64,
        exclude: &[usize],
        now_ms: &Now,
    ) -> Option<usize> {
        let first = maglev.at(super::maglev::slot_of(hash));
        if self.eligible(first, exclude, now_ms) {
            return Some(first);
        }
        if !(0..self.n_active).any(|i| self.eligible(i, exclude, now_ms)) {
            return None;
        }
        maglev
            .probe(hash)
            .find(|&i| self.eligible(i, exclude, now_ms))
    }

    /// Next eligible entry of the smooth WRR sequence from the shared cursor. After
    /// `n_active` ineligible entries, a rotating linear scan finds any eligible backend in
    /// O(n) instead of walking a long sequence dominated by one down backend.
    fn round_robin(&self, seq: &[u32], exclude: &[usize], now_ms: &Now) -> Option<usize> {
        let len = seq.len();
        if len == 0 {
            return None;
        }
        let start = self.rotor.0.fetch_add(1, Relaxed);
        for k in 0..len.min(self.n_active) {
            let i = seq[(start.wrapping_add(k)) % len] as usize;
            if self.eligible(i, exclude, now_ms) {
                return Some(i);
            }
        }
        let n = self.n_active;
        (0..n)
            .map(|k| (start.wrapping_add(k)) % n)
            .find(|&i| self.eligible(i, exclude, now_ms))
    }

    /// Fewest `live / weight` among eligible backends; the scan starts at a rotating offset
    /// and keeps the first minimum, so simultaneous pickers on several cores that see equal
    /// counts spread instead of herding on index 0.
    fn least_conn(&self, exclude: &[usize], now_ms: &Now) -> Option<usize> {
        let n = self.n_active;
        if n == 0 {
            return None;
        }
        let start = self.rotor.0.fetch_add(1, Relaxed) % n;
        let mut best: Option<(usize, u128, u128)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !self.eligible(i, exclude, now_ms) {
                continue;
            }
            let b = &self.backends[i];
            let (live, w) = (u128::from(b.live()), u128::from(b.weight()));
            // live_i / w_i < live_b / w_b without division.
            if best.is_none_or(|(_, bl, bw)| live * bw < bl * w) {
                best = Some((i, live, w));
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// Consistent hashing with bounded load (Mirrokni et al.): walk the Maglev probe order
    /// from the key's slot and take the first eligible backend holding fewer than
    /// `ceil(load_factor × (total_live + 1) × w_i / W)` connections, where `W` sums the
    /// weights of available backends and `total_live` counts the upstream's live connections.
    ///
    /// Fast path (the usual case, O(1)): the key's own backend is eligible and under the
    /// bound computed with `W` = all active weights; that bound is never above the exact one,
    /// so the answer is the same. Otherwise an O(n) scan finds the exact `W`, then the walk.
    /// Some available backend is always under the bound (its load is ≤ the weighted average
    /// `< (T+1) w_i / W`); if excluded ones are the only such, least-conn decides.
    fn bounded(
        &self,
        maglev: &Maglev,
        hash: u64,
        factor: f64,
        exclude: &[usize],
        now_ms: &Now,
    ) -> Option<usize> {
        let total = self.pool_live.load(Relaxed);
        let cap = |w: u32, sum_w: u64| -> u64 {
            (factor * (total + 1) as f64 * f64::from(w) / sum_w.max(1) as f64).ceil() as u64
        };
        let first = maglev.at(super::maglev::slot_of(hash));
        if self.eligible(first, exclude, now_ms) {
            let b = &self.backends[first];
            if b.live() < cap(b.weight(), self.active_weight) {
                return Some(first);
            }
        }
        let sum_w: u64 = self.backends[..self.n_active]
            .iter()
            .filter(|b| b.stats.available_with(|| now_ms.get()))
            .map(|b| u64::from(b.weight()))
            .sum();
        if sum_w == 0 {
            return None;
        }
        let under = |i: usize| {
            let b = &self.backends[i];
            self.eligible(i, exclude, now_ms) && b.live() < cap(b.weight(), sum_w)
        };
        if !(0..self.n_active).any(under) {
            return self.least_conn(exclude, now_ms);
        }
        maglev
            .probe(hash)
            .find(|&i| under(i))
            .or_else(|| self.least_conn(exclude, now_ms))
    }
}

/// A number naming where a hash key comes from (its kind and, lower-cased, its name).
fn key_source(key: &HashKey) -> u64 {
    let (kind, name): (u64, String) = match key {
        HashKey::Ip => (1, String::new()),
        HashKey::Sni => (2, String::new()),
        // Header names match case-insensitively; cookie and query names do not.
        HashKey::Header(n) => (3, n.to_ascii_lowercase()),
        HashKey::Cookie(n) => (4, n.clone()),
        HashKey::Query(n) => (5, n.clone()),
    };
    stable_hash(kind, name.as_bytes())
}

fn map_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(MAP_SEEDS[0], MAP_SEEDS[1], MAP_SEEDS[2], MAP_SEEDS[3])
}

/// The time passive health is judged at, read from the clock at most once per pick and
/// only if some candidate has a pending down mark. Reading it on every pick cost more than
/// the pick itself on the dev VM (`benches/balance.rs`, criterion `--quick`, medians):
/// `pick/round-robin/10` 93 ns → 12.7 ns, `pick/hash:ip/10` 89 ns → 25 ns.
struct Now(Cell<Option<u64>>);

impl Now {
    fn at(ms: u64) -> Now {
        Now(Cell::new(Some(ms)))
    }
    fn lazy() -> Now {
        Now(Cell::new(None))
    }
    fn get(&self) -> u64 {
        self.0.get().unwrap_or_else(|| {
            let t = now_ms();
            self.0.set(Some(t));
            t
        })
    }
}

/// The client address as hash key bytes: 4 bytes for IPv4 (also for IPv4-mapped IPv6, so a
/// dual-stack listener hashes a client the same either way), 16 for IPv6.
pub fn ip_bytes(ip: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            *buf = v6.octets();
            &buf[..]
        }
    }
}

/// nginx's smooth weighted round robin, run once over a full period: weights divided by
/// their gcd (5,5,10 → 1,1,2), scaled down to fit [`RR_MAX_SEQUENCE`] if needed.
fn smooth_wrr(active: &[Backend]) -> Box<[u32]> {
    if active.is_empty() {
        return Box::new([]);
    }
    let g = active
        .iter()
        .fold(0u64, |g, b| gcd(g, u64::from(b.weight())));
    let mut w: Vec<u64> = active
        .iter()
        .map(|b| u64::from(b.weight()) / g.max(1))
        .collect();
    let total: u64 = w.iter().sum();
    let limit = RR_MAX_SEQUENCE.max(active.len()) as u64;
    if total > limit {
        w.iter_mut().for_each(|x| *x = (*x * limit / total).max(1));
    }
    let total: u64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        seq.push(best as u32);
    }
    seq.into_boxed_slice()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
