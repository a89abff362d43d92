//! Admission limits, checked once per accepted connection (never per message): a global cap,
//! a per-source cap and a per-source token bucket for new connections.
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

    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Kind> {
        self.admit_at(ip, Instant::now())
    }

    pub fn admit_at(&self, ip: IpAddr, now: Instant) -> Result<Admission, Kind> {
        let i = &self.0;
        let max_total = i.max_total.load(Ordering::Relaxed);
        let per_source = i.per_source.load(Ordering::Relaxed);
        let rate = f64::from_bits(i.rate.load(Ordering::Relaxed));
        let mut adm = Admission {
            limiter: None,
            ip,
            counted_total: false,
            counted_source: false,
        };
        if max_total == 0 && per_source == 0 && rate <= 0.0 {
            return Ok(adm); // no limits: nothing shared is touched
        }
        adm.limiter = Some(self.clone());
        if max_total > 0 {
            let before = i.total.fetch_add(1, Ordering::Relaxed);
            adm.counted_total = true;
            if before >= max_total {
                return Err(Kind::LimitTotal); // `adm` drops and gives the slot back
            }
        }
        if per_source == 0 && rate <= 0.0 {
            return Ok(adm);
        }
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
        Ok(adm)
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
}
