//! Pick a backend and connect, with the retry rule: a failed connect marks a passive-health
//! failure and the next pick excludes that backend, up to `connect_retries` more tries. The
//! client sees 503 when no backend can be picked, else 502 (refused/reset) or 504 (timed out)
//! from the last try.

use std::time::{Duration, Instant};

use crate::balance::{now_ms, ConnGuard, KeySource, Pick, Table};
use crate::error::Kind;
use crate::io::{self as rio, ConnectError, Driver, Stream};

use super::Worker;

/// A connected backend: the stream, which backend it is, and the live-connection guard that
/// keeps `least-conn` and the per-backend gauge exact for as long as it is held.
pub struct Connected<D: Driver> {
    pub stream: Stream<D>,
    pub index: usize,
    pub guard: ConnGuard,
    /// The policy wants the route cookie (re)issued on the response.
    pub set_cookie: bool,
    /// The hash of the key a hash policy placed it by ([`Pick::key_hash`]): the lifecycle
    /// registry keeps it so rebalancing can recompute the key's placement.
    pub key_hash: Option<u64>,
}

/// Picks and connects (tcp mode); every failure is counted, the final "no backend" included.
pub async fn pick_and_connect<D: Driver, K: KeySource + ?Sized>(
    w: &Worker,
    table: &Table,
    key: &K,
    retries: usize,
    timeout: Duration,
) -> Result<Connected<D>, Kind> {
    let r = match table.pick(key, &[]) {
        Some(first) => connect_from(w, table, key, first, retries, timeout).await,
        None => Err(Kind::NoBackend),
    };
    if r.as_ref().err() == Some(&Kind::NoBackend) {
        w.error(Kind::NoBackend);
    }
    r
}

/// Connects to `first` (already picked), then to further picks excluding the ones that failed.
/// Each failed attempt is counted here; `Err(NoBackend)` (no backend could be tried) is not:
/// the caller counts its final outcome once.
pub async fn connect_from<D: Driver, K: KeySource + ?Sized>(
    w: &Worker,
    table: &Table,
    key: &K,
    first: Pick,
    retries: usize,
    timeout: Duration,
) -> Result<Connected<D>, Kind> {
    let mut tried: [usize; 17] = [usize::MAX; 17];
    let mut last = Kind::NoBackend;
    let mut next = Some(first);
    for n_tried in 0..=retries.min(16) {
        let pick = match next.take() {
            Some(p) => p,
            None => match table.pick(key, &tried[..n_tried]) {
                Some(p) => p,
                None => break,
            },
        };
        let Some(backend) = table.backend(pick.index) else {
            break;
        };
        tried[n_tried] = pick.index;
        // Counted from the pick, not from the connect: other cores picking meanwhile must
        // see this connection, or least-conn and bounded load pile onto one backend.
        let guard = table
            .guard_pick(&pick)
            .unwrap_or_else(|| ConnGuard::new(backend.stats().clone()));
        let started = Instant::now();
        match rio::connect::<D>(backend.addr(), timeout).await {
            Ok(stream) => {
                w.counters()
                    .connect
                    .observe_us(started.elapsed().as_micros() as u64);
                backend.stats().record_success(now_ms());
                return Ok(Connected {
                    stream,
                    index: pick.index,
                    guard,
                    set_cookie: pick.set_cookie,
                    key_hash: pick.key_hash,
                });
            }
            Err(e) => {
                backend.stats().record_failure(now_ms());
                last = match e {
                    ConnectError::TimedOut => Kind::ConnectTimeout,
                    ConnectError::Failed(_) => Kind::ConnectRefused,
                };
                w.error(last);
                tracing::debug!(backend = backend.name(), error = ?e, "connect failed");
            }
        }
    }
    Err(last)
}
