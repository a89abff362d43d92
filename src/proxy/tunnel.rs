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
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::balance::BackendStats;
use crate::config::UpstreamConfig;
use crate::io::ring::RingSock;
use crate::io::{self as rio, Driver, Ready, Stream};
use crate::sys;
use crate::sys::pipe::Pipe;

use super::frames::{self, Closing, Framing};
use super::lifecycle::{Ending, Registered};
use super::Worker;

#[path = "tunnel_ring.rs"]
mod ring_copy;
#[path = "tunnel_end.rs"]
mod tunnel_end;

pub(super) use tunnel_end::{supervise, Ends, Supervisor};

/// A read that fills the scratch buffer switches the direction to splice.
pub const SCRATCH_SIZE: usize = 16 * 1024;
/// This many consecutive splice reads below `SMALL_READ` switch back to copying.
const SMALL_STREAK: u8 = 8;
const SMALL_READ: usize = 2048;
/// A splice at least this big suggests a bulk stream with more bytes already queued.
const BIG_READ: usize = 64 * 1024;
/// Between two big data frames of a tracked direction, the copy read that takes the next
/// frame's header reads no more than this (a header is at most 14 bytes; a control frame,
/// with its payload, at most 139), so the payload behind it goes by splice.
const HEADER_READ: usize = 256;
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
    /// Malformed WebSocket framing (`client`: the client sent it), closed with 1002.
    Malformed {
        client: bool,
    },
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::BackendReset => "backend_reset",
            End::Ended(why) => why.as_str(),
            End::Malformed { client: true } => "client_protocol_error",
            End::Malformed { client: false } => "backend_protocol_error",
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

/// A WebSocket tunnel's frame tracking (none for raw tcp tunnels and `websocket_frames =
/// false`): each direction's tracker, their shared closing, and how long a graceful ending
/// may take.
#[derive(Clone, Copy)]
pub struct Frames<'a> {
    pub up: &'a Framing<'a>,
    pub down: &'a Framing<'a>,
    pub closing: &'a Closing,
    /// The upstream's `close_timeout` and gateway pings (`ws_ping_interval`,
    /// `ws_ping_timeout`), read where they are: a copy would cost every tracked tunnel 48 bytes.
    pub cfg: &'a UpstreamConfig,
}

impl Frames<'_> {
    /// Gateway pings (interval, timeout), if the upstream has them.
    pub fn ping(&self) -> Option<(Duration, Duration)> {
        let c = self.cfg;
        c.ws_ping_interval.map(|i| (i, c.ws_ping_timeout))
    }
}

/// What the [`Supervisor`] needs of a tracked tunnel (its closing, `close_timeout`, and
/// pings): the tunnel's [`Frames`], lent.
pub(super) type Graceful<'a> = &'a Frames<'a>;

/// Everything a plain tunnel's directions and its supervisor work with: the sockets, the
/// counters, the endings it watches. Owned by the caller (the tunnel's task) and lent whole:
/// the tunnel's future ([`Tunnel`]) stores one pointer to it, and its directions and
/// supervisor store none of it (each level of an async fn would keep its own copy of each).
pub(super) struct Shared<'a, D: Driver> {
    w: &'a Worker,
    client: &'a Stream<D>,
    backend: &'a Stream<D>,
    idle: Option<&'a Duration>,
    ask: &'a Registered<'a>,
    frames: Option<&'a Frames<'a>>,
    up: Counted<'a>,
    down: Counted<'a>,
    /// When a byte last moved (read only with an idle timeout).
    last: Cell<Instant>,
    /// The ring path's handles on (client, backend), if it is taken.
    ring: Option<(RingSock<'a>, RingSock<'a>)>,
}

impl<'a, D: Driver> Shared<'a, D> {
    pub(super) fn new(
        w: &'a Worker,
        client: &'a Stream<D>,
        backend: &'a Stream<D>,
        idle: Option<&'a Duration>,
        stats: &'a BackendStats,
        ask: &'a Registered<'a>,
        frames: Option<&'a Frames<'a>>,
    ) -> Self {
        let ring = match (D::ring_sock(client), D::ring_sock(backend)) {
            (Some(c), Some(b)) if w.strategy != Strategy::Splice => Some((c, b)),
            _ => None,
        };
        Shared {
            w,
            client,
            backend,
            idle,
            ask,
            frames,
            up: Counted::new(stats, Dir::Up),
            down: Counted::new(stats, Dir::Down),
            last: Cell::new(Instant::now()),
            ring,
        }
    }

    /// The bytes moved, once the tunnel ended.
    pub(super) fn moved(&self) -> Moved {
        Moved::flushed(&self.up, &self.down)
    }

    /// Both directions' loans: client → backend, backend → client.
    fn ways(&'a self) -> (Way<'a, D>, Way<'a, D>) {
        let last = self.idle.is_some().then_some(&self.last);
        let (c, b) = match self.ring {
            Some((c, b)) => (Some(c), Some(b)),
            None => (None, None),
        };
        let way = |src, dst, moved, f, ring| Way {
            w: self.w,
            src,
            dst,
            moved,
            last,
            f,
            ring,
        };
        (
            way(
                self.client,
                self.backend,
                &self.up,
                self.frames.map(|f| f.up),
                c.zip(b),
            ),
            way(
                self.backend,
                self.client,
                &self.down,
                self.frames.map(|f| f.down),
                b.zip(c),
            ),
        )
    }

    fn ends(&'a self) -> Ends<'a, 'a> {
        Ends {
            client: self.client.get_ref(),
            backend: self.backend.get_ref(),
            idle: self.idle,
            last: &self.last,
            ask: self.ask,
            graceful: self.frames,
        }
    }
}

/// A plain tunnel, until both directions are done, or one side resets, or it ends otherwise
/// (see [`Supervisor`]). Hand-written: an idle tunnel's task holds it for the tunnel's whole
/// life, so it keeps one loan of the [`Shared`] part and each direction's state ([`Phase`]).
pub(super) struct Tunnel<'a, D: Driver> {
    t: &'a Shared<'a, D>,
    up: Phase<'a>,
    down: Phase<'a>,
    sup: Supervisor<'a>,
}

impl<'a, D: Driver> Tunnel<'a, D> {
    pub(super) fn new(t: &'a Shared<'a, D>) -> Self {
        let (a, b) = t.ways();
        Tunnel {
            t,
            up: a.start(),
            down: b.start(),
            sup: Supervisor::new(t.frames),
        }
    }
}

impl<D: Driver> Future for Tunnel<'_, D> {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let Tunnel { t, up, down, sup } = self.get_mut();
        let (a, b) = t.ways();
        sup.poll(cx, &t.ends(), |cx| a.poll(up, cx), |cx| b.poll(down, cx))
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
    /// Counted but not yet in the backend's counters (below `FLUSH_BYTES`, so a u32).
    unflushed: Cell<u32>,
}

impl<'a> Counted<'a> {
    pub(super) fn new(stats: &'a BackendStats, dir: Dir) -> Self {
        Counted {
            stats,
            dir,
            total: Cell::new(0),
            unflushed: Cell::new(0),
        }
    }

    #[inline]
    pub(super) fn add(&self, n: u64) {
        self.total.set(self.total.get() + n);
        let pending = self.unflushed.get() as u64 + n;
        if pending >= FLUSH_BYTES {
            self.flush_bytes(pending);
        } else {
            self.unflushed.set(pending as u32); // below FLUSH_BYTES
        }
    }

    pub(super) fn flush(&self) {
        self.flush_bytes(self.unflushed.get() as u64);
    }

    fn flush_bytes(&self, delta: u64) {
        if delta > 0 {
            match self.dir {
                Dir::Up => self.stats.add_bytes(delta, 0),
                Dir::Down => self.stats.add_bytes(0, delta),
            }
            self.unflushed.set(0);
        }
    }
}

impl Moved {
    /// The tunnel's totals, once it ended: its directions may have been dropped mid-way, so
    /// what they did not flush into the backend's counters is flushed here.
    pub(super) fn flushed(up: &Counted<'_>, down: &Counted<'_>) -> Moved {
        up.flush();
        down.flush();
        Moved {
            up: up.total.get(),
            down: down.total.get(),
        }
    }
}

/// How a readiness pump stopped without an error.
enum PumpEnd {
    /// src's EOF, passed on as dst's half-close.
    Eof,
    /// A run of small reads while splicing ([`PumpMode::UntilSmall`]), or one batch moved
    /// ([`PumpMode::OneBatch`]): hand back to the ring copy path.
    Handback,
    /// The direction reached its Close boundary: [`close_out`] follows.
    Close,
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
/// returns where it would switch back to copying. With frame tracking (`f`) every byte copied
/// is scanned, a splice moves no further than the end of the current data frame (headers and
/// control frames are copied, so scanned), and it stops at its Close boundary.
async fn pump<D: Driver>(
    w: &Worker,
    src: &Stream<D>,
    dst: &Stream<D>,
    moved: &Counted<'_>,
    last: Option<&Cell<Instant>>,
    mode: PumpMode,
    f: Option<&Framing<'_>>,
) -> Result<PumpEnd, DirError> {
    let mut adapt = Adapt::new(w.strategy, mode);
    // Bytes read but not yet accepted by dst (copy mode). Allocated only when dst is slow.
    let mut pending: Vec<u8> = Vec::new();
    // A pipe holding bytes dst has not taken yet (splice mode).
    let mut held: Option<Pipe> = None;

    loop {
        // 1. Flush whatever dst could not take last time.
        flush::<D>(w, dst, &mut pending, &mut held).await?;
        if f.is_some_and(|f| f.must_close()) {
            return Ok(PumpEnd::Close);
        }
        if let Some(f) = f.filter(|f| f.ping_now()) {
            rio::write_all::<D>(dst, &frames::PING)
                .await
                .map_err(DirError::Dst)?;
            f.ping_sent();
        }
        if adapt.leave {
            return Ok(PumpEnd::Handback);
        }

        // 2. Move the next batch.
        // A tracked direction splices only the payload of a data frame, at most up to its end.
        let limit = f.map_or(usize::MAX, |f| f.blind().min(usize::MAX as u64) as usize);
        let n = if adapt.splice_now(limit) {
            match w.get_pipe() {
                Some(mut p) => {
                    let r = src
                        .read_with_hint(adapt.likely_ready, |s| {
                            splice_batch(s, dst.get_ref(), &mut p, limit, f)
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
                    if p.is_empty() {
                        w.put_pipe(p);
                    } else {
                        held = Some(p);
                    }
                    adapt.spliced(n);
                    n
                }
                None => {
                    // Pool exhausted (cap or kernel limit): copy this batch instead.
                    adapt.no_pipe();
                    continue;
                }
            }
        } else {
            // Moved into the read's closure, as a bool: a local of its own would take a
            // slot of the future for the whole wait (an epoll direction's pump is in
            // mimalloc's 640 B class, with 8 B to spare).
            let header_only = adapt.header_only();
            let pending = &mut pending;
            let op = move |s: &TcpStream| {
                let cap = if header_only {
                    HEADER_READ
                } else {
                    SCRATCH_SIZE
                };
                w.with_scratch(|buf| copy_batch(s, dst.get_ref(), &mut buf[..cap], f, pending))
            };
            let Some(r) = frames::read_or_stop::<D, _>(src, f, false, op).await else {
                continue;
            };
            let n = match r {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(DirError::Dst(e)),
                Err(e) => return Err(DirError::Src(e)),
            };
            adapt.copied(n, f);
            n
        };

        if n == 0 {
            // EOF from src: pass the half-close on, after flushing what is still pending.
            flush::<D>(w, dst, &mut pending, &mut held).await?;
            rio::shutdown_write::<D>(dst);
            return Ok(PumpEnd::Eof);
        }
        moved.add(n as u64);
        if let Some(last) = last {
            last.set(Instant::now());
        }
        adapt.batch_done();
    }
}

/// The pump's choice between copying and splicing, batch by batch.
struct Adapt {
    strategy: Strategy,
    mode: PumpMode,
    splicing: bool,
    /// Return to the caller after this batch (flushed first).
    leave: bool,
    /// The last splice moved a big batch: more is probably queued, so try before waiting (on
    /// io_uring a wait is a poll round trip per batch; see docs/benchmarks.md, bulk).
    likely_ready: bool,
    /// Consecutive small splice reads.
    small: u8,
    /// Tracked: the data frame being passed (or just passed) has at least SCRATCH_SIZE bytes
    /// of payload left to splice, so the next one is probably big too.
    big_frame: bool,
}

impl Adapt {
    fn new(strategy: Strategy, mode: PumpMode) -> Adapt {
        Adapt {
            strategy,
            mode,
            splicing: strategy == Strategy::Splice || mode == PumpMode::UntilSmall,
            leave: false,
            likely_ready: false,
            small: 0,
            big_frame: false,
        }
    }

    /// Whether the next batch is a splice of at most `limit` bytes (0: a frame header or
    /// control frame, which is copied to be scanned).
    fn splice_now(&mut self, limit: usize) -> bool {
        if self.strategy == Strategy::Splice {
            self.splicing = true; // retry after a pool-exhausted fallback
        }
        self.splicing && limit > 0
    }

    /// A splice moved `n` bytes: a run of small ones switches back to copying.
    fn spliced(&mut self, n: usize) {
        self.likely_ready = n >= BIG_READ;
        if n < SMALL_READ && self.strategy == Strategy::Adaptive {
            self.small += 1;
            if self.small >= SMALL_STREAK {
                self.splicing = false;
                self.small = 0;
                // The bulk phase of a ring-native direction ends where copying would start.
                self.leave = self.mode == PumpMode::UntilSmall;
            }
        } else {
            self.small = 0;
        }
    }

    /// A batch was moved: one batch is all [`PumpMode::OneBatch`] moves (then it leaves,
    /// after flushing what dst has not taken yet).
    fn batch_done(&mut self) {
        if self.mode == PumpMode::OneBatch {
            self.leave = true;
        }
    }

    /// No pipe to splice through: copy this batch.
    fn no_pipe(&mut self) {
        self.splicing = false;
        self.small = 0;
    }

    /// Whether the next copy reads [`HEADER_READ`] bytes, not [`SCRATCH_SIZE`]: between big
    /// frames, the next header alone. A full read would copy 16 KiB of the payload behind it
    /// (a quarter of a 64 KiB frame).
    fn header_only(&self) -> bool {
        self.splicing && self.big_frame
    }

    /// A copy moved `n` bytes: one that filled the scratch buffer switches to splicing.
    fn copied(&mut self, n: usize, f: Option<&Framing<'_>>) {
        if n == SCRATCH_SIZE && self.strategy == Strategy::Adaptive {
            self.splicing = true;
            self.small = 0;
            self.leave = false;
        }
        self.big_frame = f.is_some_and(|f| f.blind() >= SCRATCH_SIZE as u64);
    }
}

/// One splice batch of the pump: src → the pipe (at most `limit` bytes), passed on to dst at
/// once as far as it takes them. `Err`: src failed; `Ok(Err)`: dst failed; else the bytes read.
fn splice_batch(
    src: &TcpStream,
    dst: &TcpStream,
    p: &mut Pipe,
    limit: usize,
    f: Option<&Framing<'_>>,
) -> io::Result<io::Result<usize>> {
    let n = p.fill_from_max(src.as_fd(), limit)?;
    if n > 0 {
        if let Some(f) = f {
            f.skip(n as u64);
        }
        // Push it on right away: usually dst takes it all.
        match p.drain_to(dst.as_fd()) {
            Ok(_) => {}
            Err(e) if sys::would_block(&e) => {}
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(n))
}

/// One copy batch of the pump: a read into the core's scratch buffer `buf`, scanned when
/// tracked (a gateway ping's answer taken out, nothing passed beyond the Close boundary), then
/// written to dst; what dst does not take now waits in `pending`. `Err`: src failed;
/// `Ok(Err)`: dst failed; else the bytes read (0: src's EOF).
fn copy_batch(
    mut src: &TcpStream,
    mut dst: &TcpStream,
    buf: &mut [u8],
    f: Option<&Framing<'_>>,
    pending: &mut Vec<u8>,
) -> io::Result<io::Result<usize>> {
    let n = src.read(buf)?;
    if n == 0 {
        return Ok(Ok(0));
    }
    let pass = match f {
        Some(f) => {
            // The client's answer to a gateway ping is not the backend's.
            let mut len = n;
            if let Some((a, b)) = f.find_pong(&buf[..n]) {
                buf.copy_within(b..n, a);
                len -= b - a;
                f.pong_taken();
            }
            f.pass(&buf[..len])
        }
        None => n,
    };
    let written = match dst.write(&buf[..pass]) {
        Ok(k) => k,
        Err(e) if sys::would_block(&e) => 0,
        Err(e) => return Ok(Err(e)),
    };
    if written < pass {
        pending.extend_from_slice(&buf[written..pass]);
    }
    Ok(Ok(n))
}

/// Passes on what dst could not take yet: the pump's pending copied bytes, then its held pipe
/// (given back to the pool). An idle direction is left holding neither.
async fn flush<D: Driver>(
    w: &Worker,
    dst: &Stream<D>,
    pending: &mut Vec<u8>,
    held: &mut Option<Pipe>,
) -> Result<(), DirError> {
    if !pending.is_empty() {
        rio::write_all::<D>(dst, pending)
            .await
            .map_err(DirError::Dst)?;
        *pending = Vec::new();
    }
    if let Some(mut p) = held.take() {
        let r = drain_pipe::<D>(dst, &mut p).await;
        w.put_pipe(p);
        r.map_err(DirError::Dst)?;
    }
    Ok(())
}

async fn drain_pipe<D: Driver>(dst: &Stream<D>, p: &mut Pipe) -> io::Result<()> {
    while !p.is_empty() {
        dst.write_with(|d| p.drain_to(d.as_fd())).await?;
    }
    Ok(())
}

/// The end of a tracked direction that reached its Close boundary (everything before it was
/// passed on): the Close frame to dst, then src is read and discarded until its own Close
/// has passed, or its EOF. Never half-closes dst: `supervise` FINs both sides at the end.
async fn close_out<D: Driver>(
    w: &Worker,
    src: &Stream<D>,
    dst: &Stream<D>,
    f: &Framing<'_>,
) -> Result<(), DirError> {
    if let Some((frame, len)) = f.close_frame() {
        rio::write_all::<D>(dst, &frame[..len])
            .await
            .map_err(DirError::Dst)?;
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
    Ok(())
}

/// One direction, on whichever path the backend offers: the ring-native copy path (multishot
/// receive into the core's buffer pool, sends as ring ops) with splice on readiness for bulk,
/// or the readiness pump (copy through the scratch buffer, splice for bulk).
///
/// A `Way` is the direction's loans, made anew from the tunnel's [`Shared`] part on each poll;
/// its state is a [`Phase`], which stores no reference of its own: an idle tunnel carries two,
/// each the ring copy's state ([`ring_copy::RingCopy`]) inline. The readiness phases (the
/// pump's pipe, pending bytes and readiness futures, the close-out) are boxed, allocated only
/// while a direction streams or closes. On epoll that is one allocation per direction per
/// tunnel, never per message.
#[derive(Clone, Copy)]
struct Way<'a, D: Driver> {
    w: &'a Worker,
    src: &'a Stream<D>,
    dst: &'a Stream<D>,
    moved: &'a Counted<'a>,
    last: Option<&'a Cell<Instant>>,
    f: Option<&'a Framing<'a>>,
    /// The ring path's handles on (src, dst): none on readiness alone.
    ring: Option<(RingSock<'a>, RingSock<'a>)>,
}

enum Phase<'a> {
    Ring(ring_copy::RingCopy),
    /// The readiness pump in its mode, boxed as it is: a block mapping its end would be sized
    /// around it again (600 B, mimalloc's 640 B class, against 656 B and 768), and on epoll
    /// this box is what every idle direction holds.
    Pump(
        Pin<Box<dyn Future<Output = Result<PumpEnd, DirError>> + 'a>>,
        PumpMode,
    ),
    CloseOut(Pin<Box<dyn Future<Output = Result<(), DirError>> + 'a>>),
    Done,
}

impl<'a, D: Driver> Way<'a, D> {
    /// The direction's first phase.
    fn start(&self) -> Phase<'a> {
        match self.ring {
            Some((rs, _)) => Phase::Ring(ring_copy::RingCopy::new(rs)),
            // Readiness alone (epoll, forced splice, or a ring worker without a buffer pool).
            None => self.pump(PumpMode::Whole),
        }
    }

    /// A readiness phase: the pump in `mode`.
    fn pump(&self, mode: PumpMode) -> Phase<'a> {
        let Way {
            w,
            src,
            dst,
            moved,
            last,
            f,
            ..
        } = *self;
        Phase::Pump(Box::pin(pump::<D>(w, src, dst, moved, last, mode, f)), mode)
    }

    /// The close-out of a tracked direction that reached its Close boundary.
    fn close_out(&self) -> Phase<'a> {
        let Way { w, src, dst, f, .. } = *self;
        match f {
            Some(f) => Phase::CloseOut(Box::pin(close_out::<D>(w, src, dst, f))),
            None => Phase::Done,
        }
    }

    /// Moves the direction on from `phase` until it is done or waits.
    fn poll(&self, phase: &mut Phase<'a>, cx: &mut Context<'_>) -> Poll<Result<(), DirError>> {
        loop {
            *phase = match phase {
                Phase::Ring(copy) => {
                    let Some((rs, rd)) = self.ring else {
                        return Poll::Ready(Ok(())); // not reached: a ring phase has its sockets
                    };
                    let link = ring_copy::Link {
                        w: self.w,
                        dst: self.dst.get_ref(),
                        rs,
                        rd,
                        moved: self.moved,
                        last: self.last,
                        f: self.f,
                    };
                    match std::task::ready!(copy.poll(cx, &link)) {
                        Err(e) => {
                            *phase = Phase::Done;
                            return Poll::Ready(Err(e));
                        }
                        Ok(ring_copy::RingEnd::Eof) => Phase::Done,
                        Ok(ring_copy::RingEnd::Bulk) => self.pump(PumpMode::UntilSmall),
                        Ok(ring_copy::RingEnd::NoBuffers) => self.pump(PumpMode::OneBatch),
                        Ok(ring_copy::RingEnd::Close) => self.close_out(),
                    }
                }
                Phase::Pump(fut, mode) => {
                    let mode = *mode;
                    match std::task::ready!(fut.as_mut().poll(cx)) {
                        Err(e) => {
                            *phase = Phase::Done;
                            return Poll::Ready(Err(e));
                        }
                        Ok(PumpEnd::Handback) if mode != PumpMode::Whole => match self.ring {
                            Some((rs, _)) => Phase::Ring(ring_copy::RingCopy::new(rs)),
                            None => Phase::Done,
                        },
                        Ok(PumpEnd::Close) => self.close_out(),
                        Ok(_) => Phase::Done,
                    }
                }
                Phase::CloseOut(fut) => {
                    let r = std::task::ready!(fut.as_mut().poll(cx));
                    *phase = Phase::Done;
                    return Poll::Ready(r);
                }
                Phase::Done => return Poll::Ready(Ok(())),
            };
        }
    }
}
