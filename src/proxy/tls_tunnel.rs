//! The tunnel when either side speaks TLS (a TLS client, a backend of an upstream with
//! `[upstream.tls]`, or both): the same contract as `tunnel.rs` (half-close passed on, a reset
//! on one side resets the other, idle timeout, the lifecycle's endings, byte counters flushed
//! every MiB) with a copy pump through rustls, since splice cannot see plaintext. Each direction
//! is one of three pumps, chosen by which of its ends is TLS:
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
//! - WebSocket frame tracking as in `tunnel.rs` (`frames.rs`) for a TLS client in front of a
//!   plain backend: the decrypted bytes are scanned both ways, and a graceful ending writes its
//!   Close frames at frame boundaries (the client's encrypted like any other bytes). A tunnel
//!   to a TLS backend (upstream TLS) is not tracked yet: a blind pipe, ended by FIN/RST.

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
use super::frames::Framing;
use super::lifecycle::Registered;
use super::tunnel::{supervise, Counted, Dir, DirError, End, Ends, Frames, Moved, Shared, Tunnel};
use super::Worker;

/// Runs a tunnel with at least one TLS side until both directions are done, one side resets,
/// it idles out or the lifecycle ends it. (A plain pair runs as a [`Tunnel`].)
#[allow(clippy::too_many_arguments)]
pub async fn run<D: Driver>(
    w: &Worker,
    client: &Peer<D>,
    backend: &Peer<D>,
    idle: Option<&Duration>,
    stats: &BackendStats,
    ask: &Registered<'_>,
    frames: Option<&Frames<'_>>,
) -> (End, Moved) {
    let up = Counted::new(stats, Dir::Up);
    let down = Counted::new(stats, Dir::Down);
    let last = Cell::new(Instant::now());
    let ends = |graceful| Ends {
        client: client.socket(),
        backend: backend.socket(),
        idle,
        last: &last,
        ask,
        graceful,
    };
    // Each pump is pinned here and lent to `supervise`: moved in by value it would be stored
    // twice (once as the argument, once pinned inside), 2.3 KiB more per idle TLS tunnel.
    let end = match (client, backend) {
        (Peer::Tls(c), Peer::Plain(b)) => {
            let a = std::pin::pin!(decrypt::<D>(c, b, &up, &last, frames.map(|f| f.up)));
            let b = std::pin::pin!(encrypt::<D>(w, b, c, &down, &last, frames.map(|f| f.down)));
            supervise(a, b, &ends(frames)).await
        }
        // A TLS backend: blind pumps (`handoff` tracks no frames for it).
        (Peer::Plain(c), Peer::Tls(b)) => {
            let a = std::pin::pin!(encrypt::<D>(w, c, b, &up, &last, None));
            let b = std::pin::pin!(decrypt::<D>(b, c, &down, &last, None));
            supervise(a, b, &ends(None)).await
        }
        (Peer::Tls(c), Peer::Tls(b)) => {
            let a = std::pin::pin!(relay::<D>(c, b, &up, &last));
            let b = std::pin::pin!(relay::<D>(b, c, &down, &last));
            supervise(a, b, &ends(None)).await
        }
        // Not reached from `handoff`, which runs a plain pair as a `Tunnel` itself.
        (Peer::Plain(c), Peer::Plain(b)) => {
            let t = Shared::<D>::new(w, c, b, idle, stats, ask, frames);
            let end = Tunnel::new(&t).await;
            return (end, t.moved());
        }
    };
    (end, Moved::flushed(&up, &down))
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

/// Hands the backend what it takes now of the client's decrypted bytes, scanning exactly the
/// bytes taken (a tracked direction passes nothing beyond its Close boundary or a malformed
/// header).
fn take_up<D: Driver>(
    src: &TlsStream<D>,
    d: &TcpStream,
    f: Option<&Framing<'_>>,
    err: &mut Option<io::Error>,
) -> Plain {
    src.take_plain(|b| {
        let Some(f) = f else {
            return write_now(d, b, err);
        };
        // The src's answer to a gateway ping is not the dst's: taken when it comes
        // first, and nothing after it passes before it.
        let b = match f.find_pong(b) {
            Some((0, end)) => {
                f.pong_taken();
                return end;
            }
            Some((start, _)) => &b[..start],
            None => b,
        };
        let pass = f.probe(b);
        let n = if pass > 0 {
            write_now(d, &b[..pass], err)
        } else {
            0
        };
        // At `pass` the frames stop (a boundary or a bad header): the scan must see it.
        f.scan(if n == pass { b } else { &b[..n] });
        n
    })
}

/// TLS `src` (decrypted) → plain `dst`; with `f`, the client's frames (src is the client).
async fn decrypt<D: Driver>(
    src: &TlsStream<D>,
    dst: &Stream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
    f: Option<&Framing<'_>>,
) -> Result<(), DirError> {
    loop {
        if let Some(f) = f.filter(|f| f.must_close()) {
            // Boxed, as `close_down`: it runs once, and inline it would size the pump's
            // every wait.
            return Box::pin(close_up::<D>(src, dst, f)).await;
        }
        let mut err = None;
        let got = take_up(src, dst.get_ref(), f, &mut err);
        match err {
            Some(e) if sys::would_block(&e) => {
                // The dst is full: wait until it takes some of what rustls holds.
                let n = dst
                    .write_with(|d| {
                        let mut err = None;
                        let got = take_up(src, d, f, &mut err);
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
            Plain::Empty => match f {
                // Between frames a closing may start while the src is quiet.
                Some(f) if !f.closing.started() => {
                    let fill = std::pin::pin!(src.fill());
                    if let Some(r) = f.closing.or_stop(f.slot(), fill).await {
                        r.map_err(DirError::Src)?;
                    }
                }
                _ => {
                    src.fill().await.map_err(DirError::Src)?;
                }
            },
        }
    }
}

/// The client → backend direction at its Close boundary: the Close to the backend, then the
/// client's bytes are discarded until its own Close has passed.
async fn close_up<D: Driver>(
    src: &TlsStream<D>,
    dst: &Stream<D>,
    f: &Framing<'_>,
) -> Result<(), DirError> {
    if let Some((frame, len)) = f.close_frame() {
        crate::io::write_all::<D>(dst, &frame[..len])
            .await
            .map_err(DirError::Dst)?;
    }
    while !f.replied() {
        match src.take_plain(|b| {
            f.discard(b);
            b.len()
        }) {
            Plain::Data(_) => {}
            Plain::End => break,
            Plain::Err(e) => return Err(DirError::Src(e)),
            Plain::Empty => {
                src.fill().await.map_err(DirError::Src)?;
            }
        }
    }
    Ok(())
}

/// plain `src` → TLS `dst` (encrypted); with `f`, the backend's frames (dst is the client).
async fn encrypt<D: Driver>(
    w: &Worker,
    src: &Stream<D>,
    dst: &TlsStream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
    f: Option<&Framing<'_>>,
) -> Result<(), DirError> {
    // Bytes rustls' send queue could not take (only when the dst is slow and the queue at
    // its limit); allocated only then.
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
        if let Some(f) = f.filter(|f| f.must_close()) {
            return Box::pin(close_down::<D>(w, src, dst, f)).await;
        }
        if let Some(f) = f.filter(|f| f.ping_now()) {
            dst.queue(&super::frames::PING).map_err(DirError::Dst)?;
            dst.flush().await.map_err(DirError::Dst)?;
            f.ping_sent();
        }
        let op = |mut s: &TcpStream| {
            w.with_scratch(|buf| {
                let n = s.read(buf)?;
                let pass = match f {
                    Some(f) if n > 0 => f.pass(&buf[..n]),
                    _ => n,
                };
                let queued = match dst.queue(&buf[..pass]) {
                    Ok(q) => q,
                    Err(e) => return Ok(Err(e)),
                };
                if queued < pass {
                    pending.extend_from_slice(&buf[queued..pass]);
                }
                Ok(Ok(n))
            })
        };
        let Some(r) = super::frames::read_or_stop::<D, _>(src, f, likely_ready, op).await else {
            continue;
        };
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

/// The backend → client direction at its Close boundary: the Close to the client, then the
/// backend's bytes are discarded until its own Close has passed; then close_notify + FIN to
/// the client (nothing more comes its way; the client may still answer).
async fn close_down<D: Driver>(
    w: &Worker,
    src: &Stream<D>,
    dst: &TlsStream<D>,
    f: &Framing<'_>,
) -> Result<(), DirError> {
    if let Some((frame, len)) = f.close_frame() {
        dst.queue(&frame[..len]).map_err(DirError::Dst)?;
        dst.flush().await.map_err(DirError::Dst)?;
    }
    while !f.replied() {
        let n = src
            .read_with(|mut s| {
                w.with_scratch(|buf| {
                    let n = s.read(buf)?;
                    f.discard(&buf[..n]);
                    Ok(n)
                })
            })
            .await
            .map_err(DirError::Src)?;
        if n == 0 {
            break;
        }
    }
    dst.shutdown_write().await.map_err(DirError::Dst)
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
