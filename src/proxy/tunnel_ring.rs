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
//! - src's EOF becomes `shutdown(SHUT_WR)` on dst once everything queued is sent.

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::task::Poll;
use std::time::Instant;

use super::{Counted, DirError, Strategy};
use crate::io::ring::{Received, RecvMulti, RingSock, SendOp};
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
}

pub async fn ring_copy(
    w: &Worker,
    dst: &TcpStream,
    rs: &RingSock,
    rd: &RingSock,
    moved: &Counted<'_>,
    last: Option<&Cell<Instant>>,
) -> Result<RingEnd, DirError> {
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

    std::future::poll_fn(|cx| loop {
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
                sending = Some(rd.send(l));
                again = true;
            } else if queue.capacity() > 0 {
                queue = VecDeque::new(); // drained: an idle direction holds no allocation
            }
        }

        // 2. The receive.
        match recv.as_mut() {
            Some(r) => {
                if (queued >= QUEUE_MAX || bulk) && !r.is_cancelled() {
                    r.cancel();
                }
                match r.poll_next(cx) {
                    Poll::Ready(Received::Data(l)) => {
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
                            sending = Some(rd.send(l));
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
            None if !eof && !bulk && !nobufs && queued < QUEUE_MAX / 2 => {
                recv = Some(rs.recv_multi());
                again = true;
            }
            None => {}
        }

        // 3. Done: everything received has been sent.
        if recv.is_none() && sending.is_none() && queue.is_empty() {
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
    .await
}
