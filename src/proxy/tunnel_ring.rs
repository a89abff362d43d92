//! The ring-native copy path of one tunnel direction (io_uring workers with a buffer pool).
//!
//! - A multishot receive on src takes a buffer from the core's pool only when bytes arrive:
//!   an idle direction holds no buffer, and no op is re-armed per message.
//! - Each received buffer is sent to dst as it is, as a ring op submitted in the same
//!   `io_uring_enter` as the other ready work of the core. At most one send is in flight per
//!   direction (io_uring does not order two sends on one socket once one waits for space); the
//!   rest wait in a queue, in order. A buffer goes back to the pool when its send completed.
//! - Backpressure: past [`QUEUE_MAX`] bytes queued the receive is cancelled (what it already
//!   received still arrives) and re-armed when the queue has drained below half of it, so a
//!   slow reader makes the gateway hold at most about `QUEUE_MAX` + one buffer per direction.
//! - A receive that fills a whole buffer means bulk: the receive is stopped, the queue
//!   flushed in order, and the direction continues with splice on readiness (see `tunnel.rs`).
//! - When the core's pool is dry at its maximum, the direction moves one batch on readiness
//!   (through the core's scratch buffer) and comes back: no wait, no per-connection buffer.
//! - src's EOF becomes `shutdown(SHUT_WR)` on dst once everything queued is sent. When the EOF
//!   is already in hand as the last bytes are sent, that send holds them back (`MSG_MORE`)
//!   and the FIN carries them: one segment instead of two (a WebSocket peer's Close, then its
//!   FIN, is the common case).
//! - With frame tracking each received buffer is scanned; at the direction's Close boundary
//!   the buffer is cut there, the receive cancelled (what arrives after is only watched for
//!   src's Close) and, once the queue is sent, the direction returns [`RingEnd::Close`].

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::task::Poll;
use std::time::Instant;

use super::{Counted, DirError, Strategy};
use crate::io::ring::{Received, RecvMulti, RingSock, SendOp};
use crate::proxy::frames::{Framing, Then};
use crate::proxy::Worker;
use crate::sys::bufring::Lease;
use crate::sys::ring::POOL_BUF_SIZE;

/// The most a direction queues for a slow reader before it stops receiving.
pub const QUEUE_MAX: usize = 64 * 1024;

pub enum RingEnd {
    /// src's EOF, passed on as dst's half-close.
    Eof,
    /// A full buffer: continue with splice.
    Bulk,
    /// The core's buffer pool is dry at its maximum: move one batch on readiness (through the
    /// core's scratch buffer), then come back.
    NoBuffers,
    /// Everything before the direction's Close boundary was sent: close out.
    Close,
}

impl RingEnd {
    /// How a direction with nothing left to send ends, if it does: its Close boundary first,
    /// then src's EOF, a switch to splice, a dry pool.
    fn of(stopping: bool, eof: bool, bulk: bool, nobufs: bool) -> Option<RingEnd> {
        match (stopping, eof, bulk, nobufs) {
            (true, ..) => Some(RingEnd::Close),
            (_, true, ..) => Some(RingEnd::Eof),
            (_, _, true, _) => Some(RingEnd::Bulk),
            (.., true) => Some(RingEnd::NoBuffers),
            _ => None,
        }
    }
}

/// What a ring direction works with, lent by its owner on each poll: the state itself
/// ([`RingCopy`]) stores no reference, so an idle direction carries none of these twice.
pub struct Link<'a, 'c, 'f> {
    pub w: &'a Worker,
    pub dst: &'a TcpStream,
    pub rs: RingSock<'a>,
    pub rd: RingSock<'a>,
    pub moved: &'a Counted<'c>,
    pub last: Option<&'a Cell<Instant>>,
    pub f: Option<&'a Framing<'f>>,
}

/// The direction's copy loop, as a hand-written state (the receive, the outbox, how it ends):
/// polled by the direction that owns it, with the sockets and counters lent ([`Link`]).
pub struct RingCopy {
    recv: Option<RecvMulti>,
    out: Outbox,
    eof: bool,
    bulk: bool,
    nobufs: bool,
    /// Past the Close boundary: nothing more is sent, what arrives is only watched.
    stopping: bool,
}

impl RingCopy {
    /// Arms the multishot receive on `rs`.
    pub fn new(rs: RingSock<'_>) -> RingCopy {
        RingCopy {
            recv: Some(rs.recv_multi()),
            out: Outbox::default(),
            eof: false,
            bulk: false,
            nobufs: false,
            stopping: false,
        }
    }

    pub fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
        l: &Link<'_, '_, '_>,
    ) -> Poll<Result<RingEnd, DirError>> {
        let adaptive = l.w.strategy == Strategy::Adaptive;
        let RingCopy {
            recv,
            out,
            eof,
            bulk,
            nobufs,
            stopping,
        } = self;
        let (rs, rd, f) = (l.rs, l.rd, l.f);
        loop {
            let mut again = false;

            // 1. The send in flight, then the next one.
            match out.poll_sent(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => again = true,
                Poll::Pending => {}
            }
            let fin = || !*stopping && (*eof || recv.as_ref().is_some_and(|r| r.eof_next()));
            again |= out.send_next(rd, fin);

            // 2. The receive.
            if let Some(f) = f.filter(|_| !*stopping) {
                match watch_closing(f, cx, out.idle(), l.dst) {
                    Ok(s) => *stopping = s,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            match recv.as_mut() {
                Some(r) => {
                    if (out.queued >= QUEUE_MAX || *bulk || *stopping) && !r.is_cancelled() {
                        r.cancel();
                    }
                    match r.poll_next(cx) {
                        Poll::Ready(Received::Data(mut lease)) => {
                            if let Some(f) = f {
                                if !frames_to_pass(f, &mut lease, stopping) {
                                    continue;
                                }
                            }
                            let n = lease.len();
                            l.moved.add(n as u64);
                            if let Some(last) = l.last {
                                last.set(Instant::now());
                            }
                            if adaptive && n == POOL_BUF_SIZE as usize {
                                *bulk = true;
                            }
                            // src's FIN came with these bytes: they leave with dst's FIN.
                            let stop = *stopping;
                            out.push(lease, rd, || !stop && r.eof_next());
                            again = true;
                        }
                        Poll::Ready(Received::Eof) => {
                            *recv = None;
                            *eof = true;
                            again = true;
                        }
                        Poll::Ready(Received::Ended { nobufs: dry }) => {
                            *recv = None;
                            if dry {
                                *nobufs = true;
                            }
                            again = true;
                        }
                        Poll::Ready(Received::Err(e)) => return Poll::Ready(Err(DirError::Src(e))),
                        Poll::Pending => {}
                    }
                }
                None if !*eof && !*bulk && !*nobufs && !*stopping && out.queued < QUEUE_MAX / 2 => {
                    *recv = Some(rs.recv_multi());
                    again = true;
                }
                None => {}
            }

            // 3. Done: everything received has been sent.
            if recv.is_none() && out.idle() {
                if let Some(end) = RingEnd::of(*stopping, *eof, *bulk, *nobufs) {
                    if let RingEnd::Eof = end {
                        if !rd.shutdown_write() {
                            let _ = l.dst.shutdown(Shutdown::Write);
                        }
                    }
                    return Poll::Ready(Ok(end));
                }
            }
            if !again {
                return Poll::Pending;
            }
        }
    }
}

/// What a direction has to send to dst: at most one send in flight, the rest queued in order.
#[derive(Default)]
struct Outbox {
    /// Bytes received while a send was in flight, in order (empty, unallocated, when idle).
    queue: VecDeque<Lease>,
    /// Bytes queued plus the send in flight.
    queued: usize,
    sending: Option<SendOp>,
}

impl Outbox {
    fn idle(&self) -> bool {
        self.sending.is_none() && self.queue.is_empty()
    }

    /// The send in flight completed (`Ready(Ok)`): its bytes left; a short send's rest goes
    /// first next time.
    fn poll_sent(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), DirError>> {
        let Some(s) = self.sending.as_mut() else {
            return Poll::Pending;
        };
        let (r, rest) = std::task::ready!(s.poll_done(cx));
        self.sending = None;
        let n = match r {
            Ok(0) => return Poll::Ready(Err(DirError::Dst(std::io::ErrorKind::WriteZero.into()))),
            Ok(n) => n as usize,
            Err(e) => return Poll::Ready(Err(DirError::Dst(e))),
        };
        self.queued = self.queued.saturating_sub(n);
        if let Some(mut l) = rest {
            l.advance(n);
            if !l.is_empty() {
                self.queue.push_front(l);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Starts the next queued send if none is in flight (`fin()`: src's EOF is in hand, so the
    /// last bytes wait for dst's FIN). `true` if one started.
    fn send_next(&mut self, rd: RingSock<'_>, fin: impl FnOnce() -> bool) -> bool {
        if self.sending.is_some() {
            return false;
        }
        match self.queue.pop_front() {
            Some(l) => {
                let fin = self.queue.is_empty() && fin();
                self.sending = Some(rd.send(l, fin));
                true
            }
            None => {
                if self.queue.capacity() > 0 {
                    self.queue = VecDeque::new(); // drained: an idle direction holds no allocation
                }
                false
            }
        }
    }

    /// Received bytes to pass on: sent at once when nothing is ahead of them, else queued.
    fn push(&mut self, l: Lease, rd: RingSock<'_>, fin: impl FnOnce() -> bool) {
        self.queued += l.len();
        if self.idle() {
            self.sending = Some(rd.send(l, fin()));
        } else {
            self.queue.push_back(l);
        }
    }
}

/// A tracked direction's closing and gateway pings: `Ok(true)` once it must stop at its Close
/// boundary (registers the waker for a closing or a ping). A due Ping is written only when
/// nothing of ours is in flight to dst (`idle`): a plain write then keeps the order.
fn watch_closing(
    f: &Framing<'_>,
    cx: &mut std::task::Context<'_>,
    idle: bool,
    dst: &TcpStream,
) -> Result<bool, DirError> {
    let _ = f.closing.poll_started(f.slot(), cx);
    if f.must_close() {
        return Ok(true);
    }
    if idle && f.ping_now() {
        ping(f, dst)?;
    }
    Ok(false)
}

/// Writes the gateway's Ping (a would-block is retried next time round).
fn ping(f: &Framing<'_>, dst: &TcpStream) -> Result<(), DirError> {
    match write_ping(dst) {
        Ok(()) => f.ping_sent(),
        Err(e) if crate::sys::would_block(&e) => {} // next time round
        Err(e) => return Err(DirError::Dst(e)),
    }
    Ok(())
}

/// A tracked direction's received buffer, cut to what passes: nothing once the direction is
/// stopping, the client's answer to a gateway ping taken out when it starts or ends the
/// buffer (a Pong in the middle of one passes; the backend ignores an unsolicited Pong, RFC
/// 6455 §5.5.3), and nothing past the Close boundary or a malformed frame (`stopping` is set
/// then). `false`: nothing is left to send.
fn frames_to_pass(f: &Framing<'_>, l: &mut Lease, stopping: &mut bool) -> bool {
    if *stopping {
        f.discard(l.as_slice());
        return false;
    }
    if let Some((a, b)) = f.find_pong(l.as_slice()) {
        if a == 0 {
            l.advance(b);
            f.pong_taken();
        } else if b == l.len() {
            l.truncate(a);
            f.pong_taken();
        }
        if l.is_empty() {
            return false;
        }
    }
    let (pass, then) = f.scan(l.as_slice());
    if then != Then::Go {
        if then == Then::Close {
            f.discard(&l.as_slice()[pass..]);
        }
        l.truncate(pass);
        *stopping = true;
    }
    !l.is_empty()
}

/// Writes the gateway's Ping to the client with a plain syscall (no ring send in flight).
/// Six bytes into a socket with nothing queued by us: a short write is not expected; one is
/// finished here, or the tunnel ends (never a Ping cut in two with other bytes after it).
fn write_ping(dst: &TcpStream) -> std::io::Result<()> {
    use std::io::Write;
    let ping = &crate::proxy::frames::PING;
    let mut d = dst;
    let mut at = d.write(ping)?;
    while at < ping.len() {
        match d.write(&ping[at..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if crate::sys::would_block(&e) => {
                return Err(std::io::Error::other("short write of a ping"))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
