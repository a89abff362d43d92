//! Pick a backend and connect, with the retry rule: a failed connect marks a passive-health
//! failure and the next pick excludes that backend, up to `connect_retries` more tries. The
//! client sees 503 when no backend can be picked, else 502 (refused/reset) or 504 (timed out)
//! from the last try.
//!
//! An upstream with `[upstream.tls]` adds the TLS handshake to the connect: bounded by
//! `timeouts.tls_handshake` (the TCP connect keeps `timeouts.connect`), counted per upstream by
//! result, and a failed handshake or certificate check is a failed connect like a refused one
//! (passive health, the next backend, 502 if none is left). A PROXY header for such an upstream
//! (`send_proxy`) is written on the TCP connection before the handshake, where backends (and
//! HAProxy's `send-proxy` with `ssl`) put it.

use std::net::SocketAddr;
use std::time::Instant;

use crate::balance::{now_ms, ConnGuard, KeySource, Pick, Table};
use crate::config::Config;
use crate::error::Kind;
use crate::io::{self as rio, ConnectError, Driver, FirstBytes, Stream};
use crate::state::UpstreamRt;
use crate::tls::{upstream, TlsStream, UpstreamTls};

use super::client::Peer;
use super::Worker;

/// A connected backend: the stream, which backend it is, and the live-connection guard that
/// keeps `least-conn` and the per-backend gauge exact for as long as it is held.
pub struct Connected<D: Driver> {
    /// The socket, or the TLS session over it (`[upstream.tls]`).
    pub stream: Peer<D>,
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
    cfg: &Config,
    up: &UpstreamRt,
    table: &Table,
    key: &K,
    preface: &[u8],
    first_bytes: FirstBytes,
) -> Result<Connected<D>, Kind> {
    let r = match table.pick(key, &[]) {
        Some(first) => connect_from(w, cfg, up, table, key, first, preface, first_bytes).await,
        None => Err(Kind::NoBackend),
    };
    if r.as_ref().err() == Some(&Kind::NoBackend) {
        w.error(Kind::NoBackend);
    }
    r
}

/// Connects to `first` (already picked), then to further picks excluding the ones that failed.
/// Each failed attempt is counted here; `Err(NoBackend)` (no backend could be tried) is not:
/// the caller counts its final outcome once. `preface` (a PROXY header) is written before the
/// TLS handshake of an upstream with `tls`; a plain upstream's caller writes it itself.
/// `first_bytes`: whether the caller writes at once on the new connection (a TLS upstream
/// always does: its ClientHello).
#[allow(clippy::too_many_arguments)]
pub async fn connect_from<D: Driver, K: KeySource + ?Sized>(
    w: &Worker,
    cfg: &Config,
    up: &UpstreamRt,
    table: &Table,
    key: &K,
    first: Pick,
    preface: &[u8],
    first_bytes: FirstBytes,
) -> Result<Connected<D>, Kind> {
    let (retries, timeout) = (cfg.limits.connect_retries, cfg.timeouts.connect);
    let first_bytes = match up.tls {
        Some(_) => FirstBytes::Ours,
        None => first_bytes,
    };
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
        match rio::connect::<D>(backend.addr(), first_bytes, timeout).await {
            Ok(stream) => {
                w.counters()
                    .connect
                    .observe_us(started.elapsed().as_micros() as u64);
                let stream = match &up.tls {
                    None => Peer::Plain(stream),
                    Some(t) => {
                        let (name, addr) = (backend.name(), backend.addr());
                        let hs = cfg.timeouts.tls_handshake;
                        let to = Dest {
                            name,
                            addr,
                            preface,
                        };
                        // Boxed: inline, the handshake's state (3 KiB) would be carried by
                        // every connection's task, TLS upstream or not.
                        match Box::pin(handshake::<D>(w, up, t, stream, to, hs)).await {
                            Some(s) => Peer::Tls(Box::new(s)),
                            None => {
                                backend.stats().record_failure(now_ms());
                                last = Kind::BackendTls;
                                w.error(last);
                                continue;
                            }
                        }
                    }
                };
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

/// The backend a handshake is for, and what goes before it.
struct Dest<'a> {
    name: &'a str,
    addr: SocketAddr,
    preface: &'a [u8],
}

/// The TLS handshake with a just-connected backend (after `preface`, within `timeout` in all),
/// counted per upstream by result. `None`: it failed (the socket is closed).
async fn handshake<D: Driver>(
    w: &Worker,
    up: &UpstreamRt,
    t: &UpstreamTls,
    stream: Stream<D>,
    to: Dest<'_>,
    timeout: std::time::Duration,
) -> Option<TlsStream<D>> {
    let Dest {
        name,
        addr,
        preface,
    } = to;
    let started = Instant::now();
    if !preface.is_empty() {
        let sent = rio::timeout(timeout, rio::write_all::<D>(&stream, preface)).await;
        if !matches!(sent, Ok(Ok(()))) {
            let outcome = if sent.is_err() {
                crate::tls::Outcome::Timeout
            } else {
                crate::tls::Outcome::Closed
            };
            up.counters.tls_handshake(w.id, upstream::slot(outcome));
            return None;
        }
    }
    let server_name = t.name_for(name, addr);
    let left = timeout.saturating_sub(started.elapsed());
    match crate::tls::stream::connect::<D>(stream, t.config.clone(), server_name, left).await {
        Ok(s) => {
            let slot = if s.resumed() {
                upstream::RESUMED_SLOT
            } else {
                upstream::slot(crate::tls::Outcome::Ok)
            };
            up.counters.tls_handshake(w.id, slot);
            Some(s)
        }
        Err(outcome) => {
            up.counters.tls_handshake(w.id, upstream::slot(outcome));
            tracing::debug!(upstream = %up.cfg.name, backend = name, result = outcome.as_str(), "TLS handshake to backend failed");
            None
        }
    }
}
