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

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::balance::BackendStats;
use crate::io::{Driver, Ready, Stream};
use crate::sys;
use crate::tls::stream::Plain;
use crate::tls::TlsStream;

use super::lifecycle::Ask;
use super::tunnel::{supervise, Counted, Dir, DirError, End, Moved};
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
) -> (End, Moved) {
    let up = Counted::new(stats, Dir::Up);
    let down = Counted::new(stats, Dir::Down);
    let last = Cell::new(Instant::now());
    let a = pump_up::<D>(client, backend, &up, &last);
    let b = pump_down::<D>(w, backend, client, &down, &last);
    let end = supervise(a, b, client.socket(), backend.get_ref(), idle, &last, ask).await;
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

/// client (decrypted) → backend.
async fn pump_up<D: Driver>(
    client: &TlsStream<D>,
    backend: &Stream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
) -> Result<(), DirError> {
    loop {
        let mut err = None;
        let got = client.take_plain(|b| write_now(backend.get_ref(), b, &mut err));
        match err {
            Some(e) if sys::would_block(&e) => {
                // The backend is full: wait until it takes some of what rustls holds.
                let n = backend
                    .write_with(|d| {
                        let mut err = None;
                        let got = client.take_plain(|b| write_now(d, b, &mut err));
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
            Plain::Empty => {
                client.fill().await.map_err(DirError::Src)?;
            }
        }
    }
}

/// backend → client (encrypted).
async fn pump_down<D: Driver>(
    w: &Worker,
    backend: &Stream<D>,
    client: &TlsStream<D>,
    moved: &Counted<'_>,
    last: &Cell<Instant>,
) -> Result<(), DirError> {
    // Bytes rustls' send queue could not take (only when the client is slow and the queue at
    // its limit); allocated only then.
    let mut pending: Vec<u8> = Vec::new();
    // The last read filled the scratch buffer: more is probably queued (see read_with_hint).
    let mut likely_ready = false;
    loop {
        while !pending.is_empty() {
            let n = client.queue(&pending).map_err(DirError::Dst)?;
            pending.drain(..n);
            client.flush().await.map_err(DirError::Dst)?;
        }
        pending = Vec::new();
        let r = backend
            .read_with_hint(likely_ready, |mut s| {
                w.with_scratch(|buf| {
                    let n = s.read(buf)?;
                    let queued = match client.queue(&buf[..n]) {
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
            return client.shutdown_write().await.map_err(DirError::Dst);
        }
        likely_ready = n == super::tunnel::SCRATCH_SIZE;
        client.flush().await.map_err(DirError::Dst)?;
        add(moved, n as u64, last);
    }
}

/// Counts `n` bytes moved one way, and the tunnel as not idle.
fn add(moved: &Counted<'_>, n: u64, last: &Cell<Instant>) {
    if n > 0 {
        last.set(Instant::now());
        moved.add(n);
    }
}
