//! Admission limits, checked once per accepted connection (never per message): a global cap,
//! a per-source cap and a per-source token bucket for new connections.
//!
//! On a listener that takes the PROXY protocol the source is the address the header carries,
//! known only once the header is read: the global cap is taken at accept
//! ([`Limiter::admit_global`]), the per-source limits after the header
//! ([`Admission::add_source`]). Until then a connection counts against its raw peer's
//! [`Pending`] slots (`limits.proxy_pending_per_peer`), so one peer sending half headers holds
//! a bounded number of connections, each for at most `timeouts.head`.
//!
//! It sits at the crate root, beside `state`, because the process owns it: `state::Shared`
//! holds the one `Limiter` (its counts outlive any listener or reload) and the proxy's accept
//! loop only asks it. Kept in `proxy`, it made `state` depend on `proxy` while `proxy` depends
//! on `state`.
//!
//! Per-source state is sharded by a hash of the IP (64 shards, each a small mutex-guarded map
//! held for a few hundred nanoseconds at accept and close), so cores rarely meet, and it is
//! bounded: an entry lives while its source has open connections or a bucket still refilling;
//! a shard over its cap sweeps idle entries, and when it is full of live ones new sources are
//! refused rather than grow memory without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Limits;
use crate::error::Kind;

const SHARDS: usize = 64;
const MAX_PER_SHARD: usize = 16 * 1024;

#[derive(Clone)]
pub struct Limiter(Arc<Inner>);

struct Inner {
    max_total: AtomicUsize,
    per_source: AtomicUsize,
    /// f64 bits: tokens per second, and bucket size.
    rate: AtomicU64,
    burst: AtomicU64,
    total: AtomicUsize,
    shards: Box<[Mutex<HashMap<IpAddr, Source>>]>,
    /// Connections per raw peer still in the PROXY-header phase.
    max_pending: AtomicUsize,
    pending: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    hasher: ahash::RandomState,
}

struct Source {
    open: u32,
    tokens: f64,
    refilled: Instant,
}

/// Held for the life of an admitted connection; releases its counts on drop.
pub struct Admission {
    limiter: Option<Limiter>,
    ip: IpAddr,
    counted_total: bool,
    counted_source: bool,
}

impl Limiter {
    pub fn new(l: &Limits) -> Limiter {
        let inner = Inner {
            max_total: AtomicUsize::new(0),
            per_source: AtomicUsize::new(0),
            rate: AtomicU64::new(0),
            burst: AtomicU64::new(0),
            total: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_pending: AtomicUsize::new(0),
            pending: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
        };
        let limiter = Limiter(Arc::new(inner));
        limiter.update(l);
        limiter
    }

    /// Applies new limits (config reload); open connections are not affected.
    pub fn update(&self, l: &Limits) {
        self.0.max_total.store(l.max_connections, Ordering::Relaxed);
        self.0
            .per_source
            .store(l.max_connections_per_source, Ordering::Relaxed);
        self.0
            .rate
            .store(l.source_rate.to_bits(), Ordering::Relaxed);
        self.0
            .burst
            .store((l.source_burst.max(1) as f64).to_bits(), Ordering::Relaxed);
        self.0
            .max_pending
            .store(l.proxy_pending_per_peer, Ordering::Relaxed);
    }

    /// Open connections admitted and not yet closed.
    pub fn total(&self) -> usize {
        self.0.total.load(Ordering::Relaxed)
    }

    pub fn tracked_sources(&self) -> usize {
        self.0
            .shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// Every limit at once, on `ip` (listeners without the PROXY protocol).
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Kind> {
        self.admit_at(ip, Instant::now())
    }

    pub fn admit_at(&self, ip: IpAddr, now: Instant) -> Result<Admission, Kind> {
        let mut adm = self.admit_global()?;
        self.admit_source(&mut adm, ip, now)?;
        Ok(adm)
    }

    /// The process-wide cap only; the per-source limits follow with
    /// [`Admission::add_source`] once the client's address is known.
    pub fn admit_global(&self) -> Result<Admission, Kind> {
        let i = &self.0;
        let max_total = i.max_total.load(Ordering::Relaxed);
        let mut adm = Admission {
            limiter: None,
            ip: IpAddr::from([0, 0, 0, 0]),
            counted_total: false,
            counted_source: false,
        };
        if max_total > 0 {
            adm.limiter = Some(self.clone());
            let before = i.total.fetch_add(1, Ordering::Relaxed);
            adm.counted_total = true;
            if before >= max_total {
                return Err(Kind::LimitTotal); // `adm` drops and gives the slot back
            }
        }
        Ok(adm)
    }

    /// Takes one of `peer`'s slots for a connection in the PROXY-header phase; `Err` when the
    /// peer already has `limits.proxy_pending_per_peer` such connections.
    pub fn pending(&self, peer: IpAddr) -> Result<Pending, Kind> {
        let max = self.0.max_pending.load(Ordering::Relaxed);
        if max == 0 {
            return Ok(Pending {
                limiter: None,
                peer,
            });
        }
        let mut shard = self.0.pending[self.shard(peer)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = shard.entry(peer).or_insert(0);
        if *n as usize >= max {
            return Err(Kind::LimitPending);
        }
        *n += 1;
        Ok(Pending {
            limiter: Some(self.clone()),
            peer,
        })
    }

    /// Raw peers with connections in the PROXY-header phase.
    pub fn pending_peers(&self) -> usize {
        self.0
            .pending
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    fn admit_source(&self, adm: &mut Admission, ip: IpAddr, now: Instant) -> Result<(), Kind> {
        let i = &self.0;
        let per_source = i.per_source.load(Ordering::Relaxed);
        let rate = f64::from_bits(i.rate.load(Ordering::Relaxed));
        if per_source == 0 && rate <= 0.0 {
            return Ok(()); // nothing per source: no shared map is touched
        }
        adm.limiter = Some(self.clone());
        adm.ip = ip;
        let burst = f64::from_bits(i.burst.load(Ordering::Relaxed));
        let mut shard = i.shards[self.shard(ip)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= MAX_PER_SHARD && !shard.contains_key(&ip) {
            shard.retain(|_, s| s.open > 0 || (rate > 0.0 && refill(s, rate, burst, now) < burst));
            if shard.len() >= MAX_PER_SHARD {
                return Err(Kind::LimitSource);
            }
        }
        let s = shard.entry(ip).or_insert(Source {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if rate > 0.0 {
            if refill(s, rate, burst, now) < 1.0 {
                return Err(Kind::LimitRate);
            }
            s.tokens -= 1.0;
        }
        if per_source > 0 && s.open as usize >= per_source {
            return Err(Kind::LimitSource);
        }
        s.open += 1;
        adm.counted_source = true;
        Ok(())
    }

    fn shard(&self, ip: IpAddr) -> usize {
        (self.0.hasher.hash_one(ip) as usize) % SHARDS
    }

    fn release(&self, adm: &Admission) {
        if adm.counted_total {
            self.0.total.fetch_sub(1, Ordering::Relaxed);
        }
        if adm.counted_source {
            let mut shard = self.0.shards[self.shard(adm.ip)]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let rate = f64::from_bits(self.0.rate.load(Ordering::Relaxed));
            if let Some(s) = shard.get_mut(&adm.ip) {
                s.open = s.open.saturating_sub(1);
                if s.open == 0 && rate <= 0.0 {
                    shard.remove(&adm.ip);
                }
            }
        }
    }
}

impl Admission {
    /// Applies the per-source limits to `ip` (the address the PROXY header carried, or the
    /// peer). On `Err` nothing is counted for the source; the global slot stays held until the
    /// admission drops.
    pub fn add_source(&mut self, limiter: &Limiter, ip: IpAddr) -> Result<(), Kind> {
        self.add_source_at(limiter, ip, Instant::now())
    }

    pub fn add_source_at(
        &mut self,
        limiter: &Limiter,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), Kind> {
        if self.counted_source {
            return Ok(());
        }
        limiter.admit_source(self, ip, now)
    }
}

/// One connection of a raw peer in the PROXY-header phase; gives the slot back on drop.
pub struct Pending {
    limiter: Option<Limiter>,
    peer: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(l) = self.limiter.take() else { return };
        let mut shard = l.0.pending[l.shard(self.peer)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = shard.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&self.peer);
            }
        }
    }
}

fn refill(s: &mut Source, rate: f64, burst: f64, now: Instant) -> f64 {
    let dt = now.saturating_duration_since(s.refilled).as_secs_f64();
    s.tokens = (s.tokens + dt * rate).min(burst);
    s.refilled = now;
    s.tokens
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(l) = self.limiter.take() {
            l.release(self);
        }
    }
}

/// The answer an http client refused by a limit gets: the status (429 for a per-source limit,
/// 503 for a process-wide one), `Retry-After`, and a body naming the limit, so an operator
/// reading a client's log knows which knob it hit. `None` for kinds that are not limits.
/// Constants: refusing a flood costs one write each.
pub fn refusal(kind: Kind) -> Option<&'static [u8]> {
    Some(match kind {
        Kind::LimitSource => b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 80\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many open connections from your address (limits.max_connections_per_source)\n",
        Kind::LimitRate => b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 64\r\nRetry-After: 1\r\nConnection: close\r\n\r\nnew connections from your address too fast (limits.source_rate)\n",
        Kind::LimitTotal => b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 64\r\nRetry-After: 1\r\nConnection: close\r\n\r\nthe gateway is at its connection limit (limits.max_connections)\n",
        Kind::LimitPending => b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 99\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections from this peer waiting for their PROXY header (limits.proxy_pending_per_peer)\n",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(total: usize, per_source: usize, rate: f64, burst: u32) -> Limits {
        Limits {
            max_head_bytes: 16384,
            max_headers: 100,
            max_connections: total,
            max_connections_per_source: per_source,
            source_rate: rate,
            source_burst: burst,
            connect_retries: 2,
            proxy_pending_per_peer: 2,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn global_cap_and_release() {
        let l = Limiter::new(&limits(2, 0, 0.0, 0));
        let a = l.admit(ip(1)).unwrap();
        let _b = l.admit(ip(2)).unwrap();
        assert_eq!(l.admit(ip(3)).err(), Some(Kind::LimitTotal));
        assert_eq!(l.total(), 2, "a refused admission gives its slot back");
        drop(a);
        assert!(l.admit(ip(3)).is_ok());
    }

    #[test]
    fn per_source_cap_is_per_ip() {
        let l = Limiter::new(&limits(0, 2, 0.0, 0));
        let _a = l.admit(ip(1)).unwrap();
        let b = l.admit(ip(1)).unwrap();
        assert_eq!(l.admit(ip(1)).err(), Some(Kind::LimitSource));
        assert!(l.admit(ip(2)).is_ok());
        drop(b);
        assert!(l.admit(ip(1)).is_ok());
    }

    #[test]
    fn token_bucket_refills_with_time() {
        let l = Limiter::new(&limits(0, 0, 2.0, 2));
        let t0 = Instant::now();
        let _a = l.admit_at(ip(1), t0).unwrap();
        let _b = l.admit_at(ip(1), t0).unwrap();
        assert_eq!(l.admit_at(ip(1), t0).err(), Some(Kind::LimitRate));
        assert!(
            l.admit_at(ip(2), t0).is_ok(),
            "other sources have their own bucket"
        );
        // Half a second at 2/s refills one token.
        assert!(l.admit_at(ip(1), t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(
            l.admit_at(ip(1), t0 + Duration::from_millis(500)).err(),
            Some(Kind::LimitRate)
        );
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let l = Limiter::new(&limits(0, 5, 0.0, 0));
        for n in 0..100 {
            drop(l.admit(ip(n)).unwrap());
        }
        assert_eq!(l.tracked_sources(), 0);
    }

    #[test]
    fn no_limits_touch_nothing() {
        let l = Limiter::new(&limits(0, 0, 0.0, 0));
        let a = l.admit(ip(1)).unwrap();
        assert!(a.limiter.is_none());
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn source_limits_apply_after_the_global_one_on_the_carried_address() {
        let l = Limiter::new(&limits(3, 1, 0.0, 0));
        // Three connections from one load balancer, each carrying a different client.
        let mut a = l.admit_global().unwrap();
        a.add_source(&l, ip(1)).unwrap();
        let mut b = l.admit_global().unwrap();
        b.add_source(&l, ip(2)).unwrap();
        let mut c = l.admit_global().unwrap();
        assert_eq!(c.add_source(&l, ip(1)).err(), Some(Kind::LimitSource));
        assert!(
            c.add_source(&l, ip(3)).is_ok(),
            "a refused source counts nothing"
        );
        assert_eq!(l.admit_global().err(), Some(Kind::LimitTotal));
        drop((a, b, c));
        assert_eq!(l.total(), 0);
        assert_eq!(l.tracked_sources(), 0);
    }

    #[test]
    fn pending_slots_are_bounded_per_peer_and_given_back() {
        let l = Limiter::new(&limits(0, 0, 0.0, 0));
        let a = l.pending(ip(1)).unwrap();
        let _b = l.pending(ip(1)).unwrap();
        assert_eq!(l.pending(ip(1)).err(), Some(Kind::LimitPending));
        assert!(l.pending(ip(2)).is_ok(), "other peers have their own slots");
        drop(a);
        let _c = l.pending(ip(1)).unwrap();
        drop((_b, _c));
        assert_eq!(l.pending_peers(), 0, "idle peers are forgotten");
        let mut off = limits(0, 0, 0.0, 0);
        off.proxy_pending_per_peer = 0;
        let l = Limiter::new(&off);
        let held: Vec<_> = (0..100).map(|_| l.pending(ip(1)).unwrap()).collect();
        assert_eq!(held.len(), 100);
        assert_eq!(l.pending_peers(), 0, "0 = no cap, nothing tracked");
    }

    #[test]
    fn refusals_are_valid_responses_that_name_the_limit() {
        for (kind, status, names) in [
            (Kind::LimitSource, 429, "limits.max_connections_per_source"),
            (Kind::LimitRate, 429, "limits.source_rate"),
            (Kind::LimitTotal, 503, "limits.max_connections"),
            (Kind::LimitPending, 503, "limits.proxy_pending_per_peer"),
        ] {
            let bytes = refusal(kind).unwrap();
            let mut h = [httparse::EMPTY_HEADER; 8];
            let mut r = httparse::Response::new(&mut h);
            let n = match r.parse(bytes) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("{kind:?}: {other:?}"),
            };
            assert_eq!(r.code, Some(status));
            assert_eq!(Some(status), kind.status());
            let len = r
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .unwrap();
            let len: usize = std::str::from_utf8(len.value).unwrap().parse().unwrap();
            assert_eq!(len, bytes.len() - n, "{kind:?}: Content-Length");
            let body = std::str::from_utf8(&bytes[n..]).unwrap();
            assert!(body.contains(names), "{kind:?}: {body}");
            assert!(!body.contains("no backend"), "{kind:?}: {body}");
        }
        assert!(refusal(Kind::NoBackend).is_none());
    }
}
