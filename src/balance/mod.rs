//! Backend tables and balancing policies: pure logic, no I/O.
//!
//! The control plane (discovery, config reload) builds an immutable [`Table`] per upstream
//! and publishes it with [`Upstream::publish`]; workers only [`Upstream::load`] it and call
//! [`Table::pick`] once per new connection (or request, in http mode). The only shared
//! writes on the data path are one atomic cursor per table (round robin, least-conn tie
//! rotation) and each backend's live counter, touched on connect and close, never per
//! message. Placement is keyed on backend **names** with a fixed, portable hash, so every
//! replica agrees and a pod restarted with a new IP gets its clients back.
//!
//! ## Maglev or a ketama ring? (measured by `tests::maglev_vs_ring`)
//!
//! Both keyed on names with [`maglev::stable_hash`]. Ring: 160 points per unit weight, a
//! sorted `Vec<(u64, u32)>`, binary search. Maglev: 65537 `u16` slots. 100k random 16-byte
//! keys, equal weights, removing backend `N/2`; lookup = hashing the key + placement, mean
//! over 1M lookups (the hash alone is 3.3 ns); max/avg = largest owned share of hash space
//! over the ideal. Release build on the shared 2-core dev VM, `cargo test --release --
//! --ignored --nocapture maglev_vs_ring`:
//!
//! | N    | moved on removal (ideal)      | max/avg share   | lookup          | memory             | build            |
//! |------|-------------------------------|-----------------|-----------------|--------------------|------------------|
//! | 3    | maglev 33.2% · ring 31.2% (33.3%) | 1.000 · 1.057 | 4.1 · 13.1 ns | 128 KiB · 7 KiB    | 0.5 ms · 0.04 ms |
//! | 10   | maglev 10.3% · ring 9.5% (10.0%)  | 1.000 · 1.133 | 4.0 · 15.6 ns | 128 KiB · 25 KiB   | 1.0 ms · 0.09 ms |
//! | 50   | maglev 2.5% · ring 2.1% (2.0%)    | 1.000 · 1.277 | 4.0 · 21.0 ns | 128 KiB · 125 KiB  | 1.1 ms · 0.27 ms |
//! | 1000 | maglev 0.72% · ring 0.10% (0.10%) | 1.007 · 1.277 | 4.2 · 66.6 ns | 128 KiB · 2.5 MiB  | 1.3 ms · 6.9 ms  |
//!
//! The ring moves exactly the removed backend's keys, but those are "its share", and its
//! shares are uneven (up to +28% over average with 160 points): with few pods that is the
//! 80/20 skew users complain about, and bounded load would have to correct it on every
//! busy lookup. Maglev is within one slot of even, its extra disruption stays under 1% (it
//! grows slowly with N: 0.6 points at N = 1000), lookup is one multiply and one array read
//! whatever N, memory is constant and the build stays around a millisecond (off the hot
//! path). **Maglev wins**; the ring is kept only in tests, as the comparison baseline.
//!
//! ## Costs (`benches/balance.rs`, criterion `--quick` medians on the shared dev VM)
//!
//! Pick, no connection open: round-robin 13 ns; `hash:ip` 25 ns and `hash:header` 31 ns at
//! 10 or 100 backends (hashing a 36-byte key alone: 9.5 ns); valid route cookie 30 ns;
//! least-conn 49 ns at 10 backends, 336 ns at 100 (a scan of every backend's counter,
//! also what a cookie or hash request without a key pays). Cookie: decode 16 ns, map lookup
//! 26 ns, encode (HMAC, at build only) 335 ns. Rebuild: hash (Maglev) 1.2 / 1.6 / 1.7 ms
//! for 10 / 100 / 1000 backends, round-robin 1.4 µs / 25 µs / 1.0 ms, cookie + least-conn
//! 7 µs / 74 µs / 0.5 ms.
//!
//! A new connection's whole balancing cost, pick + guard + close (`connect/*/10`, same bench,
//! 2026-11-29, a busier VM: `pick/round-robin/10` 16 ns and `pick/hash:ip/10` 36 ns in that
//! run): round-robin 38 ns, `hash:ip` 100 ns, `hash:ip` with `load_factor` 146 ns. Of the
//! hash figure about 40 ns is the key holders' record and release (two CAS on a shared
//! bucket), paid once per connection, never per message.
//!
//! ## Bounded load: opt-in, and never at the cost of a connected key's siblings
//!
//! Hashing is unbounded unless the upstream sets `load_factor`: the key's Maglev slot names
//! its backend, and when that backend cannot take connections (down, draining, excluded after
//! a failed connect) the next slots' backends are tried in order. The answer depends only on
//! the table and health, so every replica agrees, a dead backend's keys are the only ones that
//! move, and removing it from the config moves nobody else (measured end to end by
//! `tests/stickiness.rs`: 200 connections from 50 IPs over 3 backends, 0 survivors moved).
//!
//! Bounded load (`load_factor = c`, Mirrokni et al.'s cap, see `Table::bounded`: walking Maglev
//! slots after the key's slot when its backend is full; O(1) while it is under the cap) trades
//! that for balance. With it on, and bounded by default as it was, the issue-11 run put only 31
//! of 50 IPs wholly on one backend: each *connection* was placed against the cap, so a
//! device's four connections split whenever its backend filled between them. Now a key that
//! already holds live connections goes where they are, whatever the cap ([`holders`]: a fixed
//! lock-free table of key hash → backend id and count, touched once on connect and once on
//! close, shared by all tables of an upstream), so overflow only moves *new* keys. What
//! remains of the trade, and why it is opt-in: placement depends on this replica's loads (two
//! replicas may place a new key differently), and a key whose connections all closed may come
//! back to another backend.

mod backend;
mod bucket;
pub mod cookie;
pub mod holders;
pub mod maglev;
mod policy;
#[cfg(test)]
mod ring;
mod table;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

pub use backend::{
    now_ms, BackendSpec, BackendState, BackendStats, ConnGuard, PassiveHealth, StatsRegistry,
};
pub use bucket::Bucket;
pub use policy::{HashKey, Policy, ACCEPTED, DEFAULT_COOKIE_NAME, SUGGESTED_LOAD_FACTOR};
pub use table::{ip_bytes, Backend, Table, RR_MAX_SEQUENCE};

/// What a policy may take its key from. The proxy implements it over the parsed request
/// head (borrowing from the read buffer, no allocation); tcp mode has only an address —
/// `IpAddr` implements it with every other key absent.
pub trait KeySource {
    /// The client address (after the PROXY protocol, if any).
    fn client_ip(&self) -> IpAddr;
    /// A request header's value, name matched case-insensitively.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// A cookie's value from the Cookie header(s).
    fn cookie(&self, name: &str) -> Option<&[u8]>;
    /// A query parameter's raw value.
    fn query(&self, name: &str) -> Option<&[u8]>;
    /// The TLS server name (lower-cased), where the connection's ClientHello was read.
    fn sni(&self) -> Option<&[u8]> {
        None
    }
}

impl KeySource for IpAddr {
    fn client_ip(&self) -> IpAddr {
        *self
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn cookie(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn query(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// The outcome of [`Table::pick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index into [`Table::backends`] of the table that picked it.
    pub index: usize,
    /// The cookie policy wants its cookie (re)issued: the request carried none, or one that
    /// was forged, stale, or named a backend that cannot take it now. The proxy formats
    /// `Set-Cookie` from [`Table::cookie_name`] and [`Table::cookie_value`].
    pub set_cookie: bool,
    /// The hashed key's hash (hash policies, when the request had the key): the connection's
    /// guard ([`Table::guard_pick`]) records the key as held by this backend.
    pub key_hash: Option<u64>,
}

/// One upstream (pool of backends): the current table plus what the control plane needs to
/// rebuild it.
pub struct Upstream {
    name: Arc<str>,
    table: ArcSwap<Table>,
    registry: StatsRegistry,
    /// Control-plane state; the lock serialises publishers (discovery, reload). Never taken
    /// on the data path, which only `load()`s the table.
    control: Mutex<Control>,
    /// The gateway-wide budget of tunnels rebalancing closes per second, shared by every
    /// worker's tick (`rebalance.max_per_second`).
    rebalance: Bucket,
}

struct Control {
    policy: Policy,
    specs: Vec<BackendSpec>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("table", &self.load())
            .finish()
    }
}

impl Upstream {
    /// An upstream with no backends yet (every pick is `None` until the first publish).
    pub fn new(name: &str, policy: Policy, passive: PassiveHealth) -> Upstream {
        let registry = StatsRegistry::new(passive);
        let table = Table::build(&policy, Vec::new(), &registry);
        Upstream {
            name: Arc::from(name),
            table: ArcSwap::from_pointee(table),
            registry,
            control: Mutex::new(Control {
                policy,
                specs: Vec::new(),
            }),
            rebalance: Bucket::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current table, for one pick (cheap, lock-free). Hold [`Upstream::load_full`]
    /// instead across a connect and its retries, so `exclude` indexes stay meaningful.
    pub fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    /// The current table as an owned `Arc`.
    pub fn load_full(&self) -> Arc<Table> {
        self.table.load_full()
    }

    pub fn registry(&self) -> &StatsRegistry {
        &self.registry
    }

    pub fn policy(&self) -> Policy {
        self.control().policy.clone()
    }

    /// The rebalancing budget of this upstream (see [`Bucket`]).
    pub fn rebalance_bucket(&self) -> &Bucket {
        &self.rebalance
    }

    /// Starts (`Some(per_second)`) or ends (`None`) an operator's drain of backend `name`:
    /// the backend takes no new connection (a route cookie naming it is re-placed) and the
    /// workers close its tunnels at that rate. `false`: no backend of that name in the
    /// current table. The state lives in the backend's shared stats, so it survives
    /// rebuilds (a DNS refresh) for as long as the name is tracked.
    pub fn set_admin_drain(&self, name: &str, per_second: Option<u32>) -> bool {
        let table = self.load();
        match table.index_of(name).and_then(|i| table.backend(i)) {
            Some(b) => {
                b.stats().set_admin_drain(per_second);
                true
            }
            None => false,
        }
    }

    /// Publish a new backend set (discovery). Backends that left the set but still hold
    /// connections stay listed as `Draining` until their last connection ends; stats of
    /// names gone with no connection are forgotten.
    pub fn publish(&self, specs: Vec<BackendSpec>) {
        let mut control = self.control();
        control.specs = specs;
        self.rebuild(&control);
    }

    /// Change the policy (config reload) and rebuild. Counts and health are kept.
    pub fn set_policy(&self, policy: Policy) {
        let mut control = self.control();
        control.policy = policy;
        self.rebuild(&control);
    }

    /// Change passive health limits (config reload) for every backend.
    pub fn set_passive_health(&self, passive: PassiveHealth) {
        self.registry.set_passive(passive);
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        // Every mutation is a single assignment followed by a rebuild: still consistent
        // after a panic elsewhere, so a poisoned lock is fine to reuse.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rebuild(&self, control: &Control) {
        let old = self.table.load();
        let draining: Vec<BackendSpec> = old
            .backends()
            .iter()
            .filter(|b| b.live() > 0 && !control.specs.iter().any(|s| s.name.as_ref() == b.name()))
            .map(|b| b.spec().clone())
            .collect();
        let table = Table::build_with_draining(
            &control.policy,
            control.specs.clone(),
            draining,
            &self.registry,
        );
        let keep: std::collections::HashSet<&str> =
            table.backends().iter().map(|b| b.name()).collect();
        self.registry.prune(&|name| keep.contains(name));
        drop(old);
        self.table.store(Arc::new(table));
    }
}
