//! The tunnel when either side speaks TLS (a TLS client, a backend of an upstream with
//! `[upstream.tls]`, or both): the same contract as `tunnel.rs` (half-close passed on, a reset
//! on one side resets the other, idle timeout, drain deadline, byte counters flushed every MiB)
//! with a copy pump through rustls, since splice cannot see plaintext. Each direction is one of
//! three pumps, chosen by which of its ends is TLS:
//!
//! - [`decrypt`] (TLS → plain): decrypted bytes go from rustls' buffer straight to the plain
//!   socket (`take_plain`: no copy of our own); when that socket is full they stay in rustls,
//!   which reads no more until they are taken, so a slow reader holds back the writer.
//! - [`encrypt`] (plain → TLS): one read into the core's scratch buffer, encrypted into the
//!   session, flushed before the next read (so at most one read is queued per slow peer).
//! - [`relay`] (TLS → TLS): decrypted bytes go from one session's buffer into the other's send
//!   queue, flushed before more are taken.
//! - A close_notify or FIN becomes a FIN (plain) or close_notify + FIN (TLS) on the other side.
//!   A TLS protocol error ends the tunnel as a reset of that side (after the alert).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::balance::BackendStats;
use crate::io::{Driver, Ready, Stream};
use crate::sys;
use crate::tls::stream::Plain;
use crate::tls::TlsStream;

use super::client::Peer;
use super::lifecycle::Ask;
use super::tunnel::{supervise, Counted, Dir, DirError, End, Moved};
use super::Worker;

/// Runs a tunnel with at least one TLS side until both directions are done, one side resets,
/// it idles out or its backend's drain deadline passes. (A plain pair is `tunnel::run`'s:
/// `handoff` only sends one here by mistake, and it is then served by the copy pumps of
/// `tunnel::run` all the same.)
pub async fn run<D: Driver>(
    w: &Worker,
    client: &Peer<D>,
    backend: &Peer<D>,
    idle: Option<Duration>,
    stats: &BackendStats,
    ask: &Ask,
) -> (End, Moved) {
    let up = Counted::new(stats, Dir::Up);
    let down = Counted::new(stats, Dir::Down);
    let last = Cell::new(Instant::now());
    let (cs, bs) = (client.socket(), backend.socket());
    let end = match (client, backend) {
        (Peer::Tls(c), Peer::Plain(b)) => {
            let a = decrypt::<D>(c, b, &up, &last);
            let b = encrypt::<D>(w, b, c, &down, &last);
            supervise(a, b, cs, bs, idle, &last, ask).await
        }
        (Peer::Plain(c), Peer::Tls(b)) => {
            let a = encrypt::<D>(w, c, b, &up, &last);
            let b = decrypt::<D>(b, c, &down, &last);
            supervise(a, b, cs, bs, idle, &last, ask).await
        }
        (Peer::Tls(c), Peer::Tls(b)) => {
            let a = relay::<D>(c, b, &up, &last);
            let b = relay::<D>(b, c, &down, &last);
            supervise(a, b, cs, bs, idle, &last, ask).await
        }
        (Peer::Plain(c), Peer::Plain(b)) => {
            return super::tunnel::run::<D>(w, c, b, idle, stats, ask).await;
        }
    };
    up.flush();
    down.flush();
    (
        end,
        Moved {
            up: up.total.get(),
            down: down.total.get(),
        },
    )
}

/// Writes what `d` takes now of `b`; a would-block is 0, another error is kept in `err`.
fn write_now(d: &TcpStream, b: &[u8], err: &mut Option<io::Error>) -> usize {
    let mut d = d;
    match d.write(b) {
        Ok(n) => n,
        Err(e) => {
            *err = Some(e);
            0
        }
    }
}

/// TLS `src` (decrypted) → plain `dst`.
async fn decrypt<D: Driver>(
    src: &TlsStream<D>,
    dst: &Stream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
) -> Result<(), DirError> {
    loop {
        let mut err = None;
        let got = src.take_plain(|b| write_now(dst.get_ref(), b, &mut err));
        match err {
            Some(e) if sys::would_block(&e) => {
                // `dst` is full: wait until it takes some of what rustls holds.
                let n = dst
                    .write_with(|d| {
                        let mut err = None;
                        let got = src.take_plain(|b| write_now(d, b, &mut err));
                        match (err, got) {
                            (Some(e), _) if sys::would_block(&e) => Err(e),
                            (Some(e), _) => Ok(Err(DirError::Dst(e))),
                            (None, Plain::Data(n)) => Ok(Ok(n)),
                            (None, _) => Ok(Ok(0)),
                        }
                    })
                    .await
                    .map_err(DirError::Dst)??;
                add(moved, n as u64, last);
                continue;
            }
            Some(e) => return Err(DirError::Dst(e)),
            None => {}
        }
        match got {
            Plain::Data(n) => add(moved, n as u64, last),
            Plain::End => {
                let _ = dst.get_ref().shutdown(Shutdown::Write);
                return Ok(());
            }
            Plain::Err(e) => return Err(DirError::Src(e)),
            Plain::Empty => {
                src.fill().await.map_err(DirError::Src)?;
            }
        }
    }
}

/// plain `src` → TLS `dst` (encrypted).
async fn encrypt<D: Driver>(
    w: &Worker,
    src: &Stream<D>,
    dst: &TlsStream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
) -> Result<(), DirError> {
    // Bytes rustls' send queue could not take (only when `dst` is slow and the queue at its
    // limit); allocated only then.
    let mut pending: Vec<u8> = Vec::new();
    // The last read filled the scratch buffer: more is probably queued (see read_with_hint).
    let mut likely_ready = false;
    loop {
        while !pending.is_empty() {
            let n = dst.queue(&pending).map_err(DirError::Dst)?;
            pending.drain(..n);
            dst.flush().await.map_err(DirError::Dst)?;
        }
        pending = Vec::new();
        let r = src
            .read_with_hint(likely_ready, |mut s| {
                w.with_scratch(|buf| {
                    let n = s.read(buf)?;
                    let queued = match dst.queue(&buf[..n]) {
                        Ok(q) => q,
                        Err(e) => return Ok(Err(e)),
                    };
                    if queued < n {
                        pending.extend_from_slice(&buf[queued..n]);
                    }
                    Ok(Ok(n))
                })
            })
            .await;
        let n = match r {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(DirError::Dst(e)),
            Err(e) => return Err(DirError::Src(e)),
        };
        if n == 0 {
            return dst.shutdown_write().await.map_err(DirError::Dst);
        }
        likely_ready = n == super::tunnel::SCRATCH_SIZE;
        dst.flush().await.map_err(DirError::Dst)?;
        add(moved, n as u64, last);
    }
}

/// TLS `src` (decrypted) → TLS `dst` (encrypted again): rustls' plaintext buffer straight into
/// the other session's send queue, flushed before more is taken.
async fn relay<D: Driver>(
    src: &TlsStream<D>,
    dst: &TlsStream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
) -> Result<(), DirError> {
    loop {
        let mut err = None;
        let got = src.take_plain(|b| match dst.queue(b) {
            Ok(n) => n,
            Err(e) => {
                err = Some(e);
                0
            }
        });
        if let Some(e) = err {
            return Err(DirError::Dst(e));
        }
        match got {
            // 0: `dst`'s queue is at its limit; the flush makes room.
            Plain::Data(n) => {
                add(moved, n as u64, last);
                dst.flush().await.map_err(DirError::Dst)?;
            }
            Plain::End => return dst.shutdown_write().await.map_err(DirError::Dst),
            Plain::Err(e) => return Err(DirError::Src(e)),
            Plain::Empty => {
                src.fill().await.map_err(DirError::Src)?;
            }
        }
    }
}

/// Counts `n` bytes moved one way, and the tunnel as not idle.
fn add(moved: &Counted<'_>, n: u64, last: &Cell<Instant>) {
    if n > 0 {
        last.set(Instant::now());
        moved.add(n);
    }
}
