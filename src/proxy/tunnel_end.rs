//! How a tunnel ends, whatever moves its bytes: the [`Supervisor`] drives both directions and the
//! endings the gateway decides (the idle watchdog, the lifecycle tick's [`Ask`], gateway pings,
//! malformed framing), hard for raw tunnels, graceful (Close frames, `close_timeout`) for
//! tracked WebSocket tunnels.

use std::cell::Cell;
use std::future::Future;
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::io as rio;
use crate::sys::socket;

use super::{DirError, End, Graceful};
use crate::proxy::frames::{self, Cause, Closing};
use crate::proxy::lifecycle::{Ending, Registered};

/// What the supervisor of a tunnel watches besides its directions: the two sockets (FIN or
/// RST at the end), the idle timeout and when a byte last moved, the lifecycle tick's [`Ask`],
/// and, for a tracked WebSocket tunnel, its [`Frames`](super::Frames) (`graceful`). Lent on each
/// poll: the supervisor's own state stores no reference.
pub(in crate::proxy) struct Ends<'a, 'g> {
    pub client: &'a TcpStream,
    pub backend: &'a TcpStream,
    pub idle: Option<&'a Duration>,
    pub last: &'a Cell<Instant>,
    pub ask: &'a Registered<'a>,
    pub graceful: Option<Graceful<'g>>,
}

/// Drives both directions of a tunnel (`up`: client → backend, `down`: backend → client) to
/// the tunnel's end, whatever moves the bytes (the readiness pump, the ring copy path, or the
/// TLS pump): both done is a clean close; an error on one side resets the other (RST on close);
/// the idle watchdog and the worker's lifecycle tick ([`Ask`]: drain deadline, shutdown,
/// reload) end it too. Shared so every kind of tunnel ends the same way.
///
/// With frame tracking (`graceful`: the tunnel's [`Closing`] and `close_timeout`) those
/// endings, and malformed framing, are graceful: the directions close at their next frame
/// boundary with a Close frame and wait for the peers' Close; when both are done both sides
/// get a FIN. A peer that has not answered when `close_timeout` has passed is reset.
///
/// Hand-written state, polled with the directions and the [`Ends`] lent: an idle tunnel holds
/// it for its whole life, so it keeps only flags and the timers that exist (the idle deadline
/// when there is an idle timeout, the ping loop when there are pings, the cut once a graceful
/// ending started).
pub(in crate::proxy) struct Supervisor<'g> {
    up_done: bool,
    down_done: bool,
    /// A graceful ending started: `timer` is when the peers are cut if they have not answered.
    cutting: bool,
    /// The idle deadline (armed at the first poll, when there is an idle timeout), then, once
    /// a graceful ending started, the cut: one timer, as the watchdog stops when the cut starts.
    timer: Option<rio::Sleep>,
    /// The gateway's ping loop, if the upstream has pings (boxed: most tunnels have none).
    pings: Option<Pin<Box<dyn Future<Output = ()> + 'g>>>,
}

impl<'g> Supervisor<'g> {
    pub fn new(graceful: Option<Graceful<'g>>) -> Self {
        let pings = graceful.and_then(|g| {
            let (interval, timeout) = g.ping()?;
            let f: Pin<Box<dyn Future<Output = ()> + 'g>> =
                Box::pin(ping_loop(g.closing, interval, timeout));
            Some(f)
        });
        Supervisor {
            up_done: false,
            down_done: false,
            cutting: false,
            timer: None,
            pings,
        }
    }

    /// Polls both directions (`up`, `down`: each polled until it is done) and every ending.
    pub fn poll<U, Dn>(
        &mut self,
        cx: &mut Context<'_>,
        e: &Ends<'_, 'g>,
        mut up: U,
        mut down: Dn,
    ) -> Poll<End>
    where
        U: FnMut(&mut Context<'_>) -> Poll<Result<(), DirError>>,
        Dn: FnMut(&mut Context<'_>) -> Poll<Result<(), DirError>>,
    {
        loop {
            let mut moved_on = false;
            // Src of `up` and Dst of `down` are the client; the other two are the backend.
            let mut failed = None;
            if !self.up_done {
                if let Poll::Ready(r) = up(cx) {
                    self.up_done = true;
                    moved_on = true;
                    failed = r.err().map(|x| x.side(true));
                }
            }
            if failed.is_none() && !self.down_done {
                if let Poll::Ready(r) = down(cx) {
                    self.down_done = true;
                    moved_on = true;
                    failed = r.err().map(|x| x.side(false));
                }
            }
            if failed.is_none() {
                if !self.cutting {
                    if let Some(why) = self.poll_endings(cx, e) {
                        match e.graceful {
                            Some(g) => g.closing.start(Cause::Ended(why)),
                            None => return Poll::Ready(End::Ended(why)),
                        }
                    }
                    if let Some(g) = e.graceful {
                        if g.closing.poll_started(frames::SUPERVISOR, cx).is_ready() {
                            self.cutting = true;
                            self.timer = Some(rio::sleep(g.cfg.close_timeout));
                            moved_on = true;
                        }
                    }
                } else if self
                    .timer
                    .as_mut()
                    .is_some_and(|c| Pin::new(c).poll(cx).is_ready())
                {
                    // The peers had `close_timeout`: FIN to those that answered (the direction
                    // that reads them is done), RST to the others.
                    for (sock, answered) in [(e.client, self.up_done), (e.backend, self.down_done)]
                    {
                        if answered {
                            let _ = sock.shutdown(Shutdown::Write);
                        } else {
                            socket::set_reset_on_close(sock);
                        }
                    }
                    return Poll::Ready(graceful_end(e.graceful));
                }
            }
            match failed {
                Some((true, err)) => {
                    tracing::debug!(error = %err, "client side failed");
                    socket::set_reset_on_close(e.backend);
                    return Poll::Ready(End::ClientReset);
                }
                Some((false, err)) => {
                    tracing::debug!(error = %err, "backend side failed");
                    socket::set_reset_on_close(e.client);
                    return Poll::Ready(End::BackendReset);
                }
                None if self.up_done && self.down_done => {
                    if self.cutting {
                        let _ = e.client.shutdown(Shutdown::Write);
                        let _ = e.backend.shutdown(Shutdown::Write);
                        return Poll::Ready(graceful_end(e.graceful));
                    }
                    return Poll::Ready(End::Closed);
                }
                None if !moved_on => return Poll::Pending,
                None => {}
            }
        }
    }

    /// The endings the gateway decides, before a graceful ending started: the idle watchdog,
    /// the lifecycle tick's ask, a gateway ping without an answer.
    fn poll_endings(&mut self, cx: &mut Context<'_>, e: &Ends<'_, 'g>) -> Option<Ending> {
        if let Some(idle) = e.idle {
            // The deadline moves with every byte: when the timer fires early, it is re-armed
            // for the deadline as it now stands.
            loop {
                let deadline = e.last.get() + *idle;
                if Instant::now() >= deadline {
                    return Some(Ending::IdleTimeout);
                }
                let timer = self.timer.get_or_insert_with(|| rio::sleep_until(deadline));
                if Pin::new(timer).poll(cx).is_pending() {
                    break;
                }
                self.timer = None;
            }
        }
        if let Poll::Ready(why) = e.ask.poll_asked(cx) {
            return Some(why);
        }
        if self
            .pings
            .as_mut()
            .is_some_and(|p| p.as_mut().poll(cx).is_ready())
        {
            self.pings = None;
            return Some(Ending::PingTimeout);
        }
        None
    }
}

/// [`Supervisor`] over two directions the caller pinned (the TLS pumps), as a future.
pub(in crate::proxy) async fn supervise<U, Dn>(mut up: U, mut down: Dn, e: &Ends<'_, '_>) -> End
where
    U: Future<Output = Result<(), DirError>> + Unpin,
    Dn: Future<Output = Result<(), DirError>> + Unpin,
{
    let mut s = Supervisor::new(e.graceful);
    std::future::poll_fn(|cx| {
        s.poll(
            cx,
            e,
            |cx| Pin::new(&mut up).poll(cx),
            |cx| Pin::new(&mut down).poll(cx),
        )
    })
    .await
}

async fn ping_loop(c: &Closing, interval: Duration, timeout: Duration) {
    loop {
        let seen = c.heard();
        rio::sleep(interval).await;
        if c.heard() != seen {
            continue;
        }
        c.request_ping();
        // Wait for the answer, looking every interval, for at most `timeout`.
        let deadline = Instant::now() + timeout;
        loop {
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(interval);
            rio::sleep(step).await;
            if c.heard() != seen {
                break;
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }
}

fn graceful_end(graceful: Option<Graceful<'_>>) -> End {
    match graceful.and_then(|g| g.closing.cause()) {
        Some(Cause::Ended(why)) => End::Ended(why),
        Some(Cause::Malformed { client }) => End::Malformed { client },
        None => End::Closed,
    }
}
