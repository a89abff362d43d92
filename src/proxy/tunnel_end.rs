//! How a tunnel ends, whatever moves its bytes: `supervise` drives both directions and the
//! endings the gateway decides (the idle watchdog, the lifecycle tick's [`Ask`], gateway pings,
//! malformed framing), hard for raw tunnels, graceful (Close frames, `close_timeout`) for
//! tracked WebSocket tunnels.

use std::cell::Cell;
use std::future::Future;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::io as rio;
use crate::sys::socket;

use super::{DirError, End, Graceful};
use crate::proxy::frames::{self, Cause, Closing};
use crate::proxy::lifecycle::{Ask, Ending};

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
/// The directions come pinned (lent by the caller, which owns them); a plain fn returning an
/// `async move` block, so each argument is stored once in the tunnel's task.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(in crate::proxy) fn supervise<'a, 'g, U, Dn>(
    mut up: U,
    mut down: Dn,
    client: &'a TcpStream,
    backend: &'a TcpStream,
    idle: Option<&'a Duration>,
    last: &'a Cell<Instant>,
    ask: &'a Ask,
    graceful: Option<Graceful<'g>>,
) -> impl Future<Output = End> + use<'a, 'g, U, Dn>
where
    U: Future<Output = Result<(), DirError>> + Unpin,
    Dn: Future<Output = Result<(), DirError>> + Unpin,
{
    async move {
        let watchdog = idle_watchdog(idle, last);
        tokio::pin!(watchdog);
        let asked = ask.wait();
        tokio::pin!(asked);
        let (mut up_done, mut down_done) = (false, false);
        // Set once a graceful ending started: when the peers are cut if they have not answered.
        let mut cut_at: Option<Instant> = None;
        let pings = pinger(graceful);
        tokio::pin!(pings);
        let begin = |why: Ending| match graceful {
            Some(g) => {
                g.closing.start(Cause::Ended(why));
                None
            }
            None => Some(End::Ended(why)),
        };
        loop {
            // Src of `up` and Dst of `down` are the client; the other two are the backend.
            let failed = tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r.err().map(|e| e.side(true)) }
                r = &mut down, if !down_done => { down_done = true; r.err().map(|e| e.side(false)) }
                () = &mut watchdog, if cut_at.is_none() => match begin(Ending::IdleTimeout) {
                    Some(end) => return end,
                    None => None,
                },
                why = &mut asked, if cut_at.is_none() => match begin(why) {
                    Some(end) => return end,
                    None => None,
                },
                () = &mut pings, if cut_at.is_none() => match begin(Ending::PingTimeout) {
                    Some(end) => return end,
                    None => None,
                },
                () = closing_started(graceful), if cut_at.is_none() => None,
                () = until(cut_at) => {
                    // The peers had `close_timeout`: FIN to those that answered (the direction that
                    // reads them is done), RST to the others.
                    for (sock, answered) in [(client, up_done), (backend, down_done)] {
                        if answered {
                            let _ = sock.shutdown(Shutdown::Write);
                        } else {
                            socket::set_reset_on_close(sock);
                        }
                    }
                    return graceful_end(graceful);
                }
            };
            if let (None, Some(g)) = (cut_at, graceful) {
                if g.closing.started() {
                    cut_at = Some(Instant::now() + g.cfg.close_timeout);
                }
            }
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
                None if up_done && down_done => {
                    if cut_at.is_some() {
                        let _ = client.shutdown(Shutdown::Write);
                        let _ = backend.shutdown(Shutdown::Write);
                        return graceful_end(graceful);
                    }
                    return End::Closed;
                }
                None => {}
            }
        }
    }
}

/// Resolves when a graceful ending starts (never without frame tracking). A plain poll_fn over
/// the closing alone: it is built anew on every turn of `supervise`'s loop and lives in every
/// tunnel's future.
fn closing_started<'a>(graceful: Option<Graceful<'a>>) -> impl Future<Output = ()> + 'a {
    let closing = graceful.map(|g| g.closing);
    std::future::poll_fn(move |cx| match closing {
        Some(c) => c.poll_started(frames::SUPERVISOR, cx),
        None => std::task::Poll::Pending,
    })
}

/// Gateway pings (opt-in): resolves when a client that was silent for a whole
/// `ws_ping_interval` did not answer the ping (a Pong, or any bytes) within `ws_ping_timeout`.
/// Never resolves without pings. The pinging loop is boxed, so a tunnel without pings (the
/// default) carries 8 bytes for it instead of its timers.
fn pinger<'a>(graceful: Option<Graceful<'a>>) -> impl Future<Output = ()> + 'a {
    boxed_or_pending(graceful.and_then(|g| {
        let (interval, timeout) = g.ping()?;
        Some(ping_loop(g.closing, interval, timeout))
    }))
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

/// Resolves at `at` (never for `None`). The timer is boxed so that a tunnel's future does not
/// carry a second timer's state while it is open (it exists only once a tunnel is closing).
fn until(at: Option<Instant>) -> impl Future<Output = ()> {
    boxed_or_pending(at.map(rio::sleep_until))
}

/// `f`, boxed, or a future that never resolves for `None`: what a tunnel may never run (a
/// timer, a loop) costs its future 8 bytes instead of its state until it exists.
fn boxed_or_pending<F: Future<Output = ()>>(f: Option<F>) -> impl Future<Output = ()> {
    let mut f = f.map(Box::pin);
    std::future::poll_fn(move |cx| match f.as_mut() {
        Some(f) => f.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    })
}

fn graceful_end(graceful: Option<Graceful<'_>>) -> End {
    match graceful.and_then(|g| g.closing.cause()) {
        Some(Cause::Ended(why)) => End::Ended(why),
        Some(Cause::Malformed { client }) => End::Malformed { client },
        None => End::Closed,
    }
}

/// Resolves when the tunnel has moved no byte for `idle` (never for `None`, the default). The
/// watching loop is boxed: a tunnel without an idle timeout carries 8 bytes for it.
fn idle_watchdog<'a>(
    idle: Option<&Duration>,
    last: &'a Cell<Instant>,
) -> impl Future<Output = ()> + 'a {
    boxed_or_pending(idle.map(|idle| watch_idle(*idle, last)))
}

async fn watch_idle(idle: Duration, last: &Cell<Instant>) {
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        rio::sleep_until(deadline).await;
    }
}
