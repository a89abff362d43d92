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

/// The direction's copy loop. A plain fn returning the loop's future (armed at the call: the
/// caller awaits it at once), not an async fn: an async fn would store its arguments beside
/// the closure's copies of them in every idle direction.
#[allow(clippy::too_many_arguments)]
pub fn ring_copy<'a, 'c, 'f>(
    w: &'a Worker,
    dst: &'a TcpStream,
    rs: &'a RingSock,
    rd: &'a RingSock,
    moved: &'a Counted<'c>,
    last: Option<&'a Cell<Instant>>,
    f: Option<&'a Framing<'f>>,
) -> impl std::future::Future<Output = Result<RingEnd, DirError>> + use<'a, 'c, 'f> {
    let adaptive = w.strategy == Strategy::Adaptive;
    let mut recv: Option<RecvMulti> = Some(rs.recv_multi());
    // Bytes received while a send was in flight, in order (empty, unallocated, when idle).
    let mut queue: VecDeque<Lease> = VecDeque::new();
    // Bytes queued plus the send in flight.
    let mut queued = 0usize;
    let mut sending: Option<SendOp> = None;
    let mut eof = false;
    let mut bulk = false;
    let mut nobufs = false;
    // Past the Close boundary: nothing more is sent, what arrives is only watched.
    let mut stopping = false;

    // `move`: the closure owns the state; borrowing it would add a pointer per local to every
    // idle direction's future.
    std::future::poll_fn(move |cx| loop {
        let mut again = false;

        // 1. The send in flight.
        if let Some(s) = sending.as_mut() {
            if let Poll::Ready((r, rest)) = s.poll_done(cx) {
                sending = None;
                match r {
                    Ok(0) => {
                        return Poll::Ready(Err(DirError::Dst(
                            std::io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Ok(n) => {
                        let n = n as usize;
                        queued = queued.saturating_sub(n);
                        if let Some(mut l) = rest {
                            l.advance(n);
                            if !l.is_empty() {
                                queue.push_front(l); // a short send: the rest goes first
                            }
                        }
                    }
                    Err(e) => return Poll::Ready(Err(DirError::Dst(e))),
                }
                again = true;
            }
        }
        if sending.is_none() {
            if let Some(l) = queue.pop_front() {
                let last = !stopping
                    && queue.is_empty()
                    && (eof || recv.as_ref().is_some_and(|r| r.eof_next()));
                sending = Some(rd.send(l, last));
                again = true;
            } else if queue.capacity() > 0 {
                queue = VecDeque::new(); // drained: an idle direction holds no allocation
            }
        }

        // 2. The receive.
        if let Some(f) = f.filter(|_| !stopping) {
            let _ = f.closing.poll_started(f.slot(), cx); // wakes us for a closing or a ping
            stopping = f.must_close();
            if !stopping && sending.is_none() && queue.is_empty() && f.ping_now() {
                // Nothing of ours in flight: a plain write keeps the order.
                match write_ping(dst) {
                    Ok(()) => f.ping_sent(),
                    Err(e) if crate::sys::would_block(&e) => {} // next time round
                    Err(e) => return Poll::Ready(Err(DirError::Dst(e))),
                }
            }
        }
        match recv.as_mut() {
            Some(r) => {
                if (queued >= QUEUE_MAX || bulk || stopping) && !r.is_cancelled() {
                    r.cancel();
                }
                match r.poll_next(cx) {
                    Poll::Ready(Received::Data(mut l)) => {
                        if let Some(f) = f {
                            if stopping {
                                f.discard(l.as_slice());
                                continue;
                            }
                            // The client's answer to a gateway ping is not the backend's: cut
                            // when it starts or ends the buffer (a Pong in the middle of one
                            // passes; the backend ignores an unsolicited Pong, RFC 6455 §5.5.3).
                            if let Some((a, b)) = f.find_pong(l.as_slice()) {
                                if a == 0 {
                                    l.advance(b);
                                    f.pong_taken();
                                } else if b == l.len() {
                                    l.truncate(a);
                                    f.pong_taken();
                                }
                                if l.is_empty() {
                                    continue;
                                }
                            }
                            let (pass, then) = f.scan(l.as_slice());
                            if then != Then::Go {
                                if then == Then::Close {
                                    f.discard(&l.as_slice()[pass..]);
                                }
                                l.truncate(pass);
                                stopping = true;
                                if l.is_empty() {
                                    continue;
                                }
                            }
                        }
                        let n = l.len();
                        moved.add(n as u64);
                        if let Some(last) = last {
                            last.set(Instant::now());
                        }
                        if adaptive && n == POOL_BUF_SIZE as usize {
                            bulk = true;
                        }
                        queued += n;
                        if sending.is_none() && queue.is_empty() {
                            // src's FIN came with these bytes: they leave with dst's FIN.
                            let last = !stopping && r.eof_next();
                            sending = Some(rd.send(l, last));
                        } else {
                            queue.push_back(l);
                        }
                        again = true;
                    }
                    Poll::Ready(Received::Eof) => {
                        recv = None;
                        eof = true;
                        again = true;
                    }
                    Poll::Ready(Received::Ended { nobufs: dry }) => {
                        recv = None;
                        if dry {
                            nobufs = true;
                        }
                        again = true;
                    }
                    Poll::Ready(Received::Err(e)) => return Poll::Ready(Err(DirError::Src(e))),
                    Poll::Pending => {}
                }
            }
            None if !eof && !bulk && !nobufs && !stopping && queued < QUEUE_MAX / 2 => {
                recv = Some(rs.recv_multi());
                again = true;
            }
            None => {}
        }

        // 3. Done: everything received has been sent.
        if recv.is_none() && sending.is_none() && queue.is_empty() {
            if stopping {
                return Poll::Ready(Ok(RingEnd::Close));
            }
            if eof {
                if !rd.shutdown_write() {
                    let _ = dst.shutdown(Shutdown::Write);
                }
                return Poll::Ready(Ok(RingEnd::Eof));
            }
            if bulk {
                return Poll::Ready(Ok(RingEnd::Bulk));
            }
            if nobufs {
                return Poll::Ready(Ok(RingEnd::NoBuffers));
            }
        }
        if !again {
            return Poll::Pending;
        }
    })
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
