//! The tunnel of a TLS client: the same contract as `tunnel.rs` (half-close passed on, a reset
//! on one side resets the other, idle timeout, drain deadline, byte counters flushed every MiB)
//! with a copy pump through rustls, since splice cannot see plaintext.
//!
//! - client → backend: decrypted bytes go from rustls' buffer straight to the backend socket
//!   (`take_plain`: no copy of our own); when the backend is full they stay in rustls, which
//!   reads no more until they are taken, so a slow backend holds back the client.
//! - backend → client: one read into the core's scratch buffer, encrypted into the session,
//!   flushed before the next read (so at most one read is queued per slow client).
//! - The client's close_notify or FIN becomes a FIN to the backend; the backend's FIN becomes
//!   close_notify + FIN to the client. A TLS protocol error from the client ends the tunnel as
//!   a client reset (after the alert).
//! - WebSocket frame tracking as in `tunnel.rs` (`frames.rs`): the decrypted bytes are scanned
//!   both ways, and a graceful ending writes its Close frames at frame boundaries (the
//!   client's encrypted like any other bytes).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::balance::BackendStats;
use crate::io::{Driver, Ready, Stream};
use crate::sys;
use crate::tls::stream::Plain;
use crate::tls::TlsStream;

use super::frames::{Framing, Then};
use super::lifecycle::Ask;
use super::tunnel::{supervise, Counted, Dir, DirError, End, Frames, Moved};
use super::Worker;

/// Runs a TLS client's tunnel until both directions are done, one side resets, it idles out
/// or its backend's drain deadline passes.
pub async fn run<D: Driver>(
    w: &Worker,
    client: &TlsStream<D>,
    backend: &Stream<D>,
    idle: Option<Duration>,
    stats: &BackendStats,
    ask: &Ask,
    frames: Option<Frames<'_>>,
) -> (End, Moved) {
    let up = Counted::new(stats, Dir::Up);
    let down = Counted::new(stats, Dir::Down);
    let last = Cell::new(Instant::now());
    let a = pump_up::<D>(client, backend, &up, &last, frames.map(|f| f.up));
    let b = pump_down::<D>(w, backend, client, &down, &last, frames.map(|f| f.down));
    let graceful = frames.map(|f| (f.closing, f.close_timeout, f.ping));
    let (c, k) = (client.socket(), backend.get_ref());
    let end = supervise(a, b, c, k, idle, &last, ask, graceful).await;
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

/// Hands the backend what it takes now of the client's decrypted bytes, scanning exactly the
/// bytes taken (a tracked direction passes nothing beyond its Close boundary or a malformed
/// header).
fn take_up<D: Driver>(
    client: &TlsStream<D>,
    d: &TcpStream,
    f: Option<&Framing<'_>>,
    err: &mut Option<io::Error>,
) -> Plain {
    client.take_plain(|b| {
        let Some(f) = f else {
            return write_now(d, b, err);
        };
        // The client's answer to a gateway ping is not the backend's: taken when it comes
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

/// client (decrypted) → backend.
async fn pump_up<D: Driver>(
    client: &TlsStream<D>,
    backend: &Stream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
    f: Option<&Framing<'_>>,
) -> Result<(), DirError> {
    loop {
        if let Some(f) = f.filter(|f| f.must_close()) {
            return close_up::<D>(client, backend, f).await;
        }
        let mut err = None;
        let got = take_up(client, backend.get_ref(), f, &mut err);
        match err {
            Some(e) if sys::would_block(&e) => {
                // The backend is full: wait until it takes some of what rustls holds.
                let n = backend
                    .write_with(|d| {
                        let mut err = None;
                        let got = take_up(client, d, f, &mut err);
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
                let _ = backend.get_ref().shutdown(Shutdown::Write);
                return Ok(());
            }
            Plain::Err(e) => return Err(DirError::Src(e)),
            Plain::Empty => match f {
                // Between frames a closing may start while the client is quiet.
                Some(f) if !f.closing.started() => {
                    if let Some(r) = f.closing.or_stop(f.slot(), client.fill()).await {
                        r.map_err(DirError::Src)?;
                    }
                }
                _ => {
                    client.fill().await.map_err(DirError::Src)?;
                }
            },
        }
    }
}

/// The client → backend direction at its Close boundary: the Close to the backend, then the
/// client's bytes are discarded until its own Close has passed.
async fn close_up<D: Driver>(
    client: &TlsStream<D>,
    backend: &Stream<D>,
    f: &Framing<'_>,
) -> Result<(), DirError> {
    if let Some((frame, len)) = f.close_frame() {
        crate::io::write_all::<D>(backend, &frame[..len])
            .await
            .map_err(DirError::Dst)?;
    }
    while !f.replied() {
        match client.take_plain(|b| {
            f.discard(b);
            b.len()
        }) {
            Plain::Data(_) => {}
            Plain::End => break,
            Plain::Err(e) => return Err(DirError::Src(e)),
            Plain::Empty => {
                client.fill().await.map_err(DirError::Src)?;
            }
        }
    }
    Ok(())
}

/// backend → client (encrypted).
async fn pump_down<D: Driver>(
    w: &Worker,
    backend: &Stream<D>,
    client: &TlsStream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
    f: Option<&Framing<'_>>,
) -> Result<(), DirError> {
    // Bytes rustls' send queue could not take (only when the client is slow and the queue at
    // its limit); allocated only then.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        while !pending.is_empty() {
            let n = client.queue(&pending).map_err(DirError::Dst)?;
            pending.drain(..n);
            client.flush().await.map_err(DirError::Dst)?;
        }
        pending = Vec::new();
        if let Some(f) = f.filter(|f| f.must_close()) {
            return close_down::<D>(w, backend, client, f).await;
        }
        if let Some(f) = f.filter(|f| f.ping_now()) {
            client.queue(&super::frames::PING).map_err(DirError::Dst)?;
            client.flush().await.map_err(DirError::Dst)?;
            f.ping_sent();
        }
        let op = |mut s: &TcpStream| {
            w.with_scratch(|buf| {
                let n = s.read(buf)?;
                let pass = match f {
                    Some(f) if n > 0 => {
                        let (pass, then) = f.scan(&buf[..n]);
                        if then == Then::Close {
                            f.discard(&buf[pass..n]);
                        }
                        pass
                    }
                    _ => n,
                };
                let queued = match client.queue(&buf[..pass]) {
                    Ok(q) => q,
                    Err(e) => return Ok(Err(e)),
                };
                if queued < pass {
                    pending.extend_from_slice(&buf[queued..pass]);
                }
                Ok(Ok(n))
            })
        };
        let r = match f {
            // Between frames a closing (or a ping) may start while the backend is quiet.
            Some(f) if !f.closing.started() && f.at_boundary() => {
                match f.closing.or_stop(f.slot(), backend.read_with(op)).await {
                    Some(r) => r,
                    None => continue,
                }
            }
            _ => backend.read_with(op).await,
        };
        let n = match r {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(DirError::Dst(e)),
            Err(e) => return Err(DirError::Src(e)),
        };
        if n == 0 {
            return client.shutdown_write().await.map_err(DirError::Dst);
        }
        client.flush().await.map_err(DirError::Dst)?;
        add(moved, n as u64, last);
    }
}

/// The backend → client direction at its Close boundary: the Close to the client, then the
/// backend's bytes are discarded until its own Close has passed; then close_notify + FIN to
/// the client (nothing more comes its way; the client may still answer).
async fn close_down<D: Driver>(
    w: &Worker,
    backend: &Stream<D>,
    client: &TlsStream<D>,
    f: &Framing<'_>,
) -> Result<(), DirError> {
    if let Some((frame, len)) = f.close_frame() {
        client.queue(&frame[..len]).map_err(DirError::Dst)?;
        client.flush().await.map_err(DirError::Dst)?;
    }
    while !f.replied() {
        let n = backend
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
    client.shutdown_write().await.map_err(DirError::Dst)
}

/// Counts `n` bytes moved one way, and the tunnel as not idle.
fn add(moved: &Counted<'_>, n: u64, last: &Cell<Instant>) {
    if n > 0 {
        last.set(Instant::now());
        moved.add(n);
    }
}
