//! WebSocket frames in a tunnel (issue 12): each direction of an upgraded tunnel tracks frame
//! boundaries ([`FrameTracker`]) in the bytes it moves, so the gateway can
//!
//! - end a tunnel gracefully: when asked ([`Closing::start`]), each direction passes on the
//!   rest of the frame in flight (a spliced frame finishes first), writes a Close frame to its
//!   destination at that boundary, then reads its source, discarding, until that peer's own
//!   Close (its reply) has passed or it closes; `tunnel::supervise` bounds the whole by the
//!   upstream's `close_timeout`, then FINs both sides (RST to a peer that did not answer);
//! - refuse malformed framing: the direction that saw it passes the whole frames before the
//!   bad header, then the tunnel closes with 1002 to the client (1002 to the backend if the
//!   backend's framing was bad, 1001 if the client's: the backend did nothing wrong, its client
//!   is going away);
//! - count messages, payload bytes, frames by opcode, message sizes and Close codes per
//!   upstream and direction ([`crate::metrics::websocket`]), flushed per read batch into the
//!   core's own slot.
//!
//! State per direction: a tracker (~70 bytes: no buffer, no counts; a scan counts into a
//! `Tally` of the read batch) and two flags; per tunnel: one
//! [`Closing`] (codes and the task's waker). Nothing is allocated and no timer runs while a
//! tunnel is idle: `close_timeout`'s timer exists only once a tunnel is closing.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::metrics::websocket::{CloseSide, PingResult, WsCounters, WsDir};
use crate::proto::ws_frame::{
    write_close, FrameTracker, Sender, Tally, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR,
};

use super::lifecycle::Ending;
use crate::io::{Driver, Ready, Stream};

/// The mask of the Close frames the gateway writes to a backend. Masking exists against
/// cache poisoning by a script choosing the bytes (RFC 6455 §10.3); a 2-byte status code we
/// choose ourselves needs no secret mask.
const MASK: [u8; 4] = [0x52, 0x69, 0x6e, 0x67];

/// Why a tunnel closes gracefully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The gateway ends it (drain, shutdown, reload, idle timeout, ...).
    Ended(Ending),
    /// Malformed framing; `true` when the client sent it.
    Malformed { client: bool },
}

/// The Close codes each side gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codes {
    pub client: u16,
    pub backend: u16,
}

impl Cause {
    pub fn codes(self) -> Codes {
        match self {
            Cause::Ended(why) => Codes {
                client: why.client_code(),
                backend: why.backend_code(),
            },
            Cause::Malformed { client } => Codes {
                client: CLOSE_PROTOCOL_ERROR,
                backend: if client {
                    CLOSE_GOING_AWAY
                } else {
                    CLOSE_PROTOCOL_ERROR
                },
            },
        }
    }
}

/// Who polls a [`Closing`]: the two directions (by [`WsDir`]) and the supervisor.
pub const SUPERVISOR: usize = 2;

/// The gateway's Ping to a silent client (opt-in, `ws_ping_interval`): unmasked, with a
/// payload of our own so that the client's Pong (which echoes it) is told from the client's
/// own Pongs, which are the backend's business.
pub const PING: [u8; 6] = [0x89, 0x04, b'r', b'w', b'p', b'g'];
const PING_IDLE: u8 = 0;
const PING_DUE: u8 = 1;
const PING_SENT: u8 = 2;

/// A tunnel's graceful ending, shared by its directions and its supervisor: set once, wakes
/// the tunnel's task (all three run in it). Also the gateway's pings: the supervisor asks for one, the down direction writes
/// it between two frames, the up direction takes the client's Pong out of its stream.
#[derive(Default)]
pub struct Closing {
    cause: Cell<Option<Cause>>,
    /// The waker of the tunnel's task: its directions and its supervisor are one task, so one
    /// waker wakes all three (one slot instead of three, in every tracked tunnel).
    waker: Cell<Option<Waker>>,
    ping: Cell<u8>,
    /// Batches read from the client (any bytes: an answer to a ping, or the client talking).
    heard: Cell<u32>,
}

impl Closing {
    /// Starts closing. The first cause wins.
    pub fn start(&self, cause: Cause) {
        if self.cause.get().is_none() {
            self.cause.set(Some(cause));
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    pub fn cause(&self) -> Option<Cause> {
        self.cause.get()
    }

    pub fn started(&self) -> bool {
        self.cause.get().is_some()
    }

    /// Ready once closing started (or, for the down direction, when a ping is due); registers
    /// `cx` in slot `who` otherwise.
    pub fn poll_started(&self, who: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.started() {
            return Poll::Ready(());
        }
        // Polled once per read batch while open: keep the waker we have when it is the same.
        let slot = &self.waker;
        match slot.take() {
            Some(w) if w.will_wake(cx.waker()) => slot.set(Some(w)),
            _ => slot.set(Some(cx.waker().clone())),
        }
        if who == WsDir::FromBackend as usize && self.ping.get() == PING_DUE {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Asks the down direction to ping the client at its next frame boundary.
    /// A ping still unanswered from an earlier round (the client talked meanwhile, so it was
    /// not cut) is sent again.
    pub fn request_ping(&self) {
        if self.ping.get() != PING_DUE && !self.started() {
            self.ping.set(PING_DUE);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// How many batches the client has sent so far (wrapping).
    pub fn heard(&self) -> u32 {
        self.heard.get()
    }

    fn heard_now(&self) {
        self.heard.set(self.heard.get().wrapping_add(1));
    }

    /// Resolves once closing started.
    pub fn wait(&self, who: usize) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_started(who, cx))
    }

    /// `f`, or `None` as soon as closing starts (then `f` is dropped: only readiness waits,
    /// which consume nothing, are raced this way). `f` is pinned by the caller and lent: taken
    /// by value, it would be stored twice in the caller's future (once as the argument, once
    /// pinned), in every idle tracked tunnel.
    pub fn or_stop<'a, F: Future>(
        &'a self,
        who: usize,
        mut f: Pin<&'a mut F>,
    ) -> impl Future<Output = Option<F::Output>> + 'a {
        std::future::poll_fn(move |cx| {
            if self.poll_started(who, cx).is_ready() {
                return Poll::Ready(None);
            }
            f.as_mut().poll(cx).map(Some)
        })
    }
}

/// One read of a direction's source with `op`. A tracked direction between two frames also
/// wakes for a closing (or a ping) that starts while the source is quiet: `None` then (loop
/// again, to write the Close or the Ping). Otherwise a read that follows a full batch
/// (`likely_ready`) is tried before waiting.
pub(super) async fn read_or_stop<D: Driver, R>(
    src: &Stream<D>,
    f: Option<&Framing<'_>>,
    likely_ready: bool,
    op: impl FnMut(&TcpStream) -> std::io::Result<R>,
) -> Option<std::io::Result<R>> {
    match f {
        Some(f) if !f.closing.started() && f.at_boundary() => {
            let read = std::pin::pin!(src.read_with(op));
            f.closing.or_stop(f.slot(), read).await
        }
        _ => Some(src.read_with_hint(likely_ready, op).await),
    }
}

/// What a scanned batch allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Pass `pass` bytes (all of them) and go on.
    Go,
    /// Pass `pass` bytes; they end at the frame boundary where the Close goes: the rest of the
    /// batch is discarded (after [`Framing::discard`]).
    Close,
    /// Pass `pass` bytes (the whole frames before a malformed header), then close.
    Malformed,
}

/// One direction's frame state.
pub struct Framing<'a> {
    tracker: RefCell<FrameTracker>,
    pub closing: &'a Closing,
    dir: WsDir,
    counters: &'a WsCounters,
    /// The boundary where this direction's Close goes has been reached.
    reached: Cell<bool>,
    /// Malformed framing seen: the source's stream can no longer be followed.
    desync: Cell<bool>,
    /// The Close may be written (false when a malformed header began in an earlier batch,
    /// so the destination holds part of it).
    clean: Cell<bool>,
}

impl<'a> Framing<'a> {
    pub fn new(dir: WsDir, closing: &'a Closing, counters: &'a WsCounters) -> Self {
        let sender = match dir {
            WsDir::FromClient => Sender::Client,
            WsDir::FromBackend => Sender::Server,
        };
        Framing {
            tracker: RefCell::new(FrameTracker::new(sender)),
            closing,
            dir,
            counters,
            reached: Cell::new(false),
            desync: Cell::new(false),
            clean: Cell::new(true),
        }
    }

    /// The [`Closing`] waker slot of this direction.
    pub fn slot(&self) -> usize {
        self.dir as usize
    }

    /// The down direction is between frames and a ping is due: write [`PING`] to the client
    /// now, then call [`Self::ping_sent`].
    pub fn ping_now(&self) -> bool {
        self.dir == WsDir::FromBackend
            && self.closing.ping.get() == PING_DUE
            && !self.closing.started()
            && self.tracker.borrow().at_boundary()
    }

    /// The [`PING`] was written (counted in `ringway_websocket_pings_total{result="sent"}`).
    pub fn ping_sent(&self) {
        self.closing.ping.set(PING_SENT);
        self.counters.ping(PingResult::Sent);
    }

    /// Where the client's Pong to our [`PING`] lies in a batch from the client, if a ping is
    /// outstanding and the whole Pong is in it: those bytes must not reach the backend. The
    /// caller that takes it out calls [`Self::pong_taken`].
    pub fn find_pong(&self, data: &[u8]) -> Option<(usize, usize)> {
        if self.dir != WsDir::FromClient || self.closing.ping.get() != PING_SENT {
            return None;
        }
        // Walk the batch frame by frame on a copy of the tracker (rare: a ping is out).
        let mut t = self.tracker.borrow().clone();
        let mut scratch = Tally::default(); // a look ahead: nothing is counted
        let mut i = 0;
        while i < data.len() {
            let starts = t.at_boundary();
            let k = t.scan(&data[i..], true, &mut scratch).ok()?;
            if k == 0 {
                return None;
            }
            if starts && is_our_pong(&data[i..i + k]) {
                return Some((i, i + k));
            }
            i += k;
        }
        None
    }

    /// The client's Pong was taken out of its stream: the ping is answered.
    pub fn pong_taken(&self) {
        self.closing.ping.set(PING_IDLE);
        self.closing.heard_now();
    }

    /// Between two frames (a read there may wait for a closing or a ping to start).
    pub fn at_boundary(&self) -> bool {
        self.tracker.borrow().at_boundary()
    }

    /// Scans a batch read from the source: how many bytes may pass, and what then.
    pub fn scan(&self, data: &[u8]) -> (usize, Then) {
        if self.dir == WsDir::FromClient && !data.is_empty() {
            self.closing.heard_now();
        }
        let stopping = self.closing.started();
        let mut t = self.tracker.borrow_mut();
        let mut tally = Tally::default();
        let out = match t.scan_to_error(data, stopping, &mut tally) {
            Ok(k) if stopping && t.at_boundary() => {
                self.reached.set(true);
                (k, Then::Close)
            }
            Ok(k) => (k, Then::Go),
            Err((e, at)) => {
                tracing::debug!(error = e.reason(), dir = ?self.dir, "malformed websocket framing");
                self.desync.set(true);
                self.clean.set(at.is_some());
                self.closing.start(Cause::Malformed {
                    client: self.dir == WsDir::FromClient,
                });
                (at.unwrap_or(0), Then::Malformed)
            }
        };
        self.counters.flush(self.dir, &mut tally);
        out
    }

    /// [`Self::scan`] without changing anything: for a destination that may take fewer bytes
    /// than offered (the TLS pump scans for real only what was taken).
    pub fn probe(&self, data: &[u8]) -> usize {
        let mut t = self.tracker.borrow().clone();
        match t.scan_to_error(data, self.closing.started(), &mut Tally::default()) {
            Ok(k) => k,
            Err((_, at)) => at.unwrap_or(0),
        }
    }

    /// Payload bytes of the current data frame that may be spliced unseen.
    pub fn blind(&self) -> u64 {
        self.tracker.borrow().blind()
    }

    /// Accounts for `n` spliced bytes (at most [`Self::blind`]).
    pub fn skip(&self, n: u64) {
        if self.dir == WsDir::FromClient {
            self.closing.heard_now();
        }
        let mut t = self.tracker.borrow_mut();
        t.skip(n);
        if self.closing.started() && t.at_boundary() {
            self.reached.set(true);
        }
    }

    /// The direction must stop passing bytes and close now: its Close boundary was reached,
    /// or closing started while it was between frames, or its framing is malformed.
    pub fn must_close(&self) -> bool {
        self.desync.get()
            || self.reached.get()
            || (self.closing.started() && self.tracker.borrow().at_boundary())
    }

    /// The Close frame this direction writes to its destination, if any: none when its source
    /// already sent its own Close that way, or the destination holds part of a bad frame.
    pub fn close_frame(&self) -> Option<([u8; 8], usize)> {
        let codes = self.closing.cause()?.codes();
        if self.tracker.borrow().close_code().is_some() || !self.clean.get() {
            return None;
        }
        let mut out = [0u8; 8];
        let len = match self.dir {
            WsDir::FromClient => {
                self.counters
                    .close(CloseSide::GatewayToBackend, codes.backend);
                write_close(codes.backend, Some(MASK), &mut out)
            }
            WsDir::FromBackend => {
                self.counters
                    .close(CloseSide::GatewayToClient, codes.client);
                write_close(codes.client, None, &mut out)
            }
        };
        Some((out, len))
    }

    /// Scans bytes read from the source and returns how many of them to pass on: all, or
    /// those before the Close boundary (the rest are [`Self::discard`]ed).
    pub fn pass(&self, data: &[u8]) -> usize {
        let (pass, then) = self.scan(data);
        if then == Then::Close {
            self.discard(&data[pass..]);
        }
        pass
    }

    /// Bytes read from the source after this direction's Close: watched for the source's own
    /// Close, never passed on. Returns whether the wait is over.
    pub fn discard(&self, data: &[u8]) -> bool {
        if !self.desync.get() {
            let mut tally = Tally::default();
            if self
                .tracker
                .borrow_mut()
                .scan(data, false, &mut tally)
                .is_err()
            {
                self.desync.set(true);
            }
            self.counters.flush(self.dir, &mut tally);
        }
        self.replied()
    }

    /// The source's own Close has passed (or its framing can no longer be followed): nothing
    /// more to wait for.
    pub fn replied(&self) -> bool {
        self.desync.get() || self.tracker.borrow().close_code().is_some()
    }
}

/// A masked Pong from a client whose payload is [`PING`]'s.
fn is_our_pong(frame: &[u8]) -> bool {
    let [0x8A, 0x84, m0, m1, m2, m3, p @ ..] = frame else {
        return false;
    };
    let m = [*m0, *m1, *m2, *m3];
    p.len() == 4 && p.iter().enumerate().all(|(i, b)| b ^ m[i] == PING[2 + i])
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
