//! The tunnel: after a 101, and in tcp mode from accept, bytes move both ways until both
//! directions are done.
//!
//! - A FIN from one side becomes `shutdown(SHUT_WR)` on the other; the other direction goes on.
//! - A reset (or a write error) on one side ends both; the other side is closed with RST.
//! - Each direction moves bytes with a non-blocking syscall on readiness. It starts by copying
//!   through the core's one scratch buffer (cheapest for small WebSocket messages: ~15% less CPU
//!   than splice at 64 B, equal at 1 KiB) and switches to splice(2) through a pooled pipe when a
//!   read fills the scratch buffer (1.5–2× cheaper at 64 KiB); it switches back after a run of
//!   small reads. Figures: docs/benchmarks.md.
//! - An idle direction holds nothing: no pipe (returned to the pool when empty), no userspace
//!   buffer (the scratch buffer belongs to the core; bytes a slow receiver could not take yet
//!   wait in a small per-direction buffer freed as soon as it drains).

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::balance::BackendStats;
use crate::io::{self as rio, Driver, Ready, Stream};
use crate::sys::pipe::Pipe;
use crate::sys::{self, socket};

use super::lifecycle::{Ask, Ending};
use super::Worker;

#[path = "tunnel_ring.rs"]
mod ring_copy;

/// A read that fills the scratch buffer switches the direction to splice.
pub const SCRATCH_SIZE: usize = 16 * 1024;
/// This many consecutive splice reads below `SMALL_READ` switch back to copying.
const SMALL_STREAK: u8 = 8;
const SMALL_READ: usize = 2048;
/// A splice at least this big suggests a bulk stream with more bytes already queued.
const BIG_READ: usize = 64 * 1024;
/// Byte counters of a live tunnel reach the backend's metrics at least every this many bytes.
const FLUSH_BYTES: u64 = 1 << 20;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed cleanly (FIN both ways).
    Closed,
    ClientReset,
    BackendReset,
    /// The gateway ended it (idle timeout, drain, shutdown, ...; see [`Ending`]).
    Ended(Ending),
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::BackendReset => "backend_reset",
            End::Ended(why) => why.as_str(),
        }
    }
}

/// Bytes moved, for metrics: `up` client→backend, `down` backend→client.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub up: u64,
    pub down: u64,
}

/// How a direction moves bytes. `Adaptive` is the default; the forced ones exist to measure
/// it (`RINGWAY_TUNNEL=copy|splice`, read once at startup; see docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Adaptive,
    Copy,
    Splice,
}

impl Strategy {
    pub fn from_env() -> Strategy {
        match std::env::var("RINGWAY_TUNNEL").as_deref() {
            Ok("copy") => Strategy::Copy,
            Ok("splice") => Strategy::Splice,
            _ => Strategy::Adaptive,
        }
    }
}

/// Which side failed inside a direction.
pub(super) enum DirError {
    Src(io::Error),
    Dst(io::Error),
}

impl DirError {
    /// (whether the client's side failed, the error), for a direction that reads from the
    /// client (`from_client`) or from the backend.
    fn side(self, from_client: bool) -> (bool, io::Error) {
        match self {
            DirError::Src(e) => (from_client, e),
            DirError::Dst(e) => (!from_client, e),
        }
    }
}

/// Runs a tunnel until both directions are done, or one side resets, or it idles out.
pub async fn run<D: Driver>(
    w: &Worker,
    client: &Stream<D>,
    backend: &Stream<D>,
    idle: Option<Duration>,
    stats: &BackendStats,
    ask: &Ask,
) -> (End, Moved) {
    let up = Counted::new(stats, Dir::Up);
    let down = Counted::new(stats, Dir::Down);
    let last = Cell::new(Instant::now());
    let track = idle.is_some();

    // Pinned here and lent to `supervise`: moved in by value, each direction's state would be
    // stored twice in this future (once per level), and an idle tunnel's task would carry it.
    let a = std::pin::pin!(direction::<D>(
        w,
        client,
        backend,
        &up,
        track.then_some(&last)
    ));
    let b = std::pin::pin!(direction::<D>(
        w,
        backend,
        client,
        &down,
        track.then_some(&last)
    ));
    let (c, k) = (client.get_ref(), backend.get_ref());
    let end = supervise(a, b, c, k, idle, &last, ask).await;
    // The pumps may have been dropped mid-way: whatever they did not flush is added here.
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

/// Drives both directions of a tunnel (`up`: client → backend, `down`: backend → client) to
/// the tunnel's end, whatever moves the bytes (the readiness pump, the ring copy path, or the
/// TLS pump): both done is a clean close; an error on one side resets the other (RST on close);
/// the idle watchdog and the worker's lifecycle tick ([`Ask`]: drain deadline, shutdown,
/// reload) end it too. Shared so every kind of tunnel ends the same way.
pub(super) async fn supervise(
    up: impl Future<Output = Result<(), DirError>>,
    down: impl Future<Output = Result<(), DirError>>,
    client: &TcpStream,
    backend: &TcpStream,
    idle: Option<Duration>,
    last: &Cell<Instant>,
    ask: &Ask,
) -> End {
    tokio::pin!(up, down);
    let watchdog = idle_watchdog(idle, last);
    tokio::pin!(watchdog);
    let asked = ask.wait();
    tokio::pin!(asked);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        // Src of `up` and Dst of `down` are the client; the other two are the backend.
        let failed = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; r.err().map(|e| e.side(true)) }
            r = &mut down, if !down_done => { down_done = true; r.err().map(|e| e.side(false)) }
            () = &mut watchdog => return End::Ended(Ending::IdleTimeout),
            why = &mut asked => return End::Ended(why),
        };
        match failed {
            Some((true, e)) => {
                tracing::debug!(error = %e, "client side failed");
                socket::set_reset_on_close(backend);
                return End::ClientReset;
            }
            Some((false, e)) => {
                tracing::debug!(error = %e, "backend side failed");
                socket::set_reset_on_close(client);
                return End::BackendReset;
            }
            None if up_done && down_done => return End::Closed,
            None => {}
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Dir {
    Up,
    Down,
}

/// Bytes one direction moved, flushed into the backend's counters every `FLUSH_BYTES` so the
/// byte metrics of an hour-long tunnel move while it lives (one atomic add per MiB).
pub(super) struct Counted<'a> {
    stats: &'a BackendStats,
    dir: Dir,
    pub(super) total: Cell<u64>,
    flushed: Cell<u64>,
}

impl<'a> Counted<'a> {
    pub(super) fn new(stats: &'a BackendStats, dir: Dir) -> Self {
        Counted {
            stats,
            dir,
            total: Cell::new(0),
            flushed: Cell::new(0),
        }
    }

    #[inline]
    pub(super) fn add(&self, n: u64) {
        let total = self.total.get() + n;
        self.total.set(total);
        if total - self.flushed.get() >= FLUSH_BYTES {
            self.flush();
        }
    }

    pub(super) fn flush(&self) {
        let delta = self.total.get() - self.flushed.get();
        if delta > 0 {
            match self.dir {
                Dir::Up => self.stats.add_bytes(delta, 0),
                Dir::Down => self.stats.add_bytes(0, delta),
            }
            self.flushed.set(self.total.get());
        }
    }
}

async fn idle_watchdog(idle: Option<Duration>, last: &Cell<Instant>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        rio::sleep_until(deadline).await;
    }
}

/// How a readiness pump stopped without an error.
enum PumpEnd {
    /// src's EOF, passed on as dst's half-close.
    Eof,
    /// A run of small reads while splicing ([`PumpMode::UntilSmall`]), or one batch moved
    /// ([`PumpMode::OneBatch`]): hand back to the ring copy path.
    Handback,
}

/// How long a readiness pump runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PumpMode {
    /// Until src's EOF (the epoll path, and forced splice).
    Whole,
    /// The bulk phase of a ring-native direction: splice until a run of small reads.
    UntilSmall,
    /// One batch by copy through the scratch buffer: the core's buffer pool ran dry.
    OneBatch,
}

/// One direction: src → dst until src's EOF (then shutdown dst's write side). With
/// [`PumpMode::UntilSmall`] (the bulk phase of a ring-native direction) it starts splicing and
/// returns where it would switch back to copying.
async fn pump<D: Driver>(
    w: &Worker,
    src: &Stream<D>,
    dst: &Stream<D>,
    moved: &Counted<'_>,
    last: Option<&Cell<Instant>>,
    mode: PumpMode,
) -> Result<PumpEnd, DirError> {
    let until_small = mode == PumpMode::UntilSmall;
    let strategy = w.strategy;
    let mut splicing = strategy == Strategy::Splice || until_small;
    let mut leave = false;
    // The last splice moved a big batch: more is probably queued, so try before waiting (on
    // io_uring a wait is a poll round trip per batch; see docs/benchmarks.md, bulk).
    let mut likely_ready = false;
    let mut small: u8 = 0;
    // Bytes read but not yet accepted by dst (copy mode). Allocated only when dst is slow.
    let mut pending: Vec<u8> = Vec::new();
    // A pipe holding bytes dst has not taken yet (splice mode).
    let mut held: Option<Pipe> = None;

    loop {
        // 1. Flush whatever dst could not take last time.
        if !pending.is_empty() {
            rio::write_all::<D>(dst, &pending)
                .await
                .map_err(DirError::Dst)?;
            pending = Vec::new(); // idle directions hold no buffer
        }
        if let Some(mut p) = held.take() {
            let r = drain_pipe::<D>(dst, &mut p).await;
            w.put_pipe(p);
            r.map_err(DirError::Dst)?;
        }
        if leave {
            return Ok(PumpEnd::Handback);
        }

        // 2. Move the next batch.
        if strategy == Strategy::Splice {
            splicing = true; // retry after a pool-exhausted fallback
        }
        let n = if splicing {
            match w.get_pipe() {
                Some(mut p) => {
                    let r = src
                        .read_with_hint(likely_ready, |s| {
                            let n = p.fill_from(s.as_fd())?;
                            if n > 0 {
                                // Push it on right away: usually dst takes it all.
                                match p.drain_to(dst.get_ref().as_fd()) {
                                    Ok(_) => {}
                                    Err(e) if sys::would_block(&e) => {}
                                    Err(e) => return Ok(Err(e)),
                                }
                            }
                            Ok(Ok(n))
                        })
                        .await;
                    let n = match r {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => {
                            w.put_pipe(p);
                            return Err(DirError::Dst(e));
                        }
                        Err(e) => {
                            w.put_pipe(p);
                            return Err(DirError::Src(e));
                        }
                    };
                    likely_ready = n >= BIG_READ;
                    if p.is_empty() {
                        w.put_pipe(p);
                    } else {
                        held = Some(p);
                    }
                    if n < SMALL_READ && strategy == Strategy::Adaptive {
                        small += 1;
                        if small >= SMALL_STREAK {
                            splicing = false;
                            small = 0;
                            leave = until_small;
                        }
                    } else {
                        small = 0;
                    }
                    n
                }
                None => {
                    // Pool exhausted (cap or kernel limit): copy this batch instead.
                    splicing = false;
                    small = 0;
                    continue;
                }
            }
        } else {
            let r = src
                .read_with(|mut s| {
                    w.with_scratch(|buf| {
                        let n = s.read(buf)?;
                        if n == 0 {
                            return Ok(Ok(0));
                        }
                        let mut d: &TcpStream = dst.get_ref();
                        let written = match d.write(&buf[..n]) {
                            Ok(k) => k,
                            Err(e) if sys::would_block(&e) => 0,
                            Err(e) => return Ok(Err(e)),
                        };
                        if written < n {
                            pending.extend_from_slice(&buf[written..n]);
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
            if n == SCRATCH_SIZE && strategy == Strategy::Adaptive {
                splicing = true;
                small = 0;
                leave = false;
            }
            n
        };

        if n == 0 {
            // EOF from src: pass the half-close on, after flushing what is still pending.
            if !pending.is_empty() {
                rio::write_all::<D>(dst, &pending)
                    .await
                    .map_err(DirError::Dst)?;
            }
            if let Some(mut p) = held.take() {
                let r = drain_pipe::<D>(dst, &mut p).await;
                w.put_pipe(p);
                r.map_err(DirError::Dst)?;
            }
            rio::shutdown_write::<D>(dst);
            return Ok(PumpEnd::Eof);
        }
        moved.add(n as u64);
        if let Some(last) = last {
            last.set(Instant::now());
        }
        if mode == PumpMode::OneBatch {
            leave = true; // after flushing what dst has not taken yet
        }
    }
}

async fn drain_pipe<D: Driver>(dst: &Stream<D>, p: &mut Pipe) -> io::Result<()> {
    while !p.is_empty() {
        dst.write_with(|d| p.drain_to(d.as_fd())).await?;
    }
    Ok(())
}

/// One direction, on whichever path the backend offers: the ring-native copy path (multishot
/// receive into the core's buffer pool, sends as ring ops) with splice on readiness for bulk,
/// or the readiness pump (copy through the scratch buffer, splice for bulk).
async fn direction<D: Driver>(
    w: &Worker,
    src: &Stream<D>,
    dst: &Stream<D>,
    moved: &Counted<'_>,
    last: Option<&Cell<Instant>>,
) -> Result<(), DirError> {
    let socks = match (D::ring_sock(src), D::ring_sock(dst)) {
        (Some(s), Some(d)) if w.strategy != Strategy::Splice => Some((s, d)),
        _ => None,
    };
    let Some((rs, rd)) = socks else {
        return pump::<D>(w, src, dst, moved, last, PumpMode::Whole)
            .await
            .map(drop);
    };
    loop {
        let mode = match ring_copy::ring_copy(w, dst.get_ref(), &rs, &rd, moved, last).await? {
            ring_copy::RingEnd::Eof => return Ok(()),
            ring_copy::RingEnd::Bulk => PumpMode::UntilSmall,
            ring_copy::RingEnd::NoBuffers => PumpMode::OneBatch,
        };
        // Boxed: the readiness phase's state (pipe, pending bytes, readiness futures) is
        // allocated only while a direction streams, not carried by every idle tunnel.
        match Box::pin(pump::<D>(w, src, dst, moved, last, mode)).await? {
            PumpEnd::Eof => return Ok(()),
            PumpEnd::Handback => {}
        }
    }
}
