//! The io backend seam. The proxy is written once, generic over [`Driver`]; the two backends
//! differ only in where readiness comes from:
//!
//! - [`Uring`]: ringway's own runtime per worker ([`ring`]), on the `io-uring` crate; readiness
//!   from one-shot `POLL_ADD` ops on the worker's ring, accepts as ring ops (submissions batched
//!   into one `io_uring_enter` per loop turn, which is also the only place the worker waits).
//! - [`Epoll`]: a tokio current-thread runtime per worker; readiness from epoll (`AsyncFd`).
//!
//! In both, the actual transfer is a non-blocking syscall (read, write, splice, accept4)
//! made when the fd is ready, so every byte-moving line of code is shared.

mod epoll;
pub mod ring;
mod uring;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

pub use epoll::Epoll;
pub use uring::{ops as uring_ops, Uring};

pub use crate::sys::socket::FirstBytes;

use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Uring,
    Epoll,
}

impl IoKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IoKind::Uring => "io_uring",
            IoKind::Epoll => "epoll",
        }
    }
}

/// An io backend: how a worker waits for an fd to become ready.
pub trait Driver: 'static {
    const KIND: IoKind;
    /// An fd registered with this backend.
    type Fd<T: sys::reactor::OwnsFd + 'static>: Ready<T>;

    /// Accepts one connection (non-blocking socket, CLOEXEC) and its peer's address. Default:
    /// readiness, then accept4.
    #[allow(async_fn_in_trait)]
    async fn accept(listener: &Self::Fd<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
        listener.read_with(sys::socket::accept_nonblocking).await
    }

    /// The ring-native copy path's handle on a socket (multishot receive into the core's
    /// buffer pool, sends as ring ops), if this backend has one. Default: none, so tunnels copy
    /// on readiness.
    fn ring_sock(_s: &Self::Fd<TcpStream>) -> Option<ring::RingSock<'_>> {
        None
    }

    /// Reads what is available into `buf` (at least one byte, or 0 at EOF): see
    /// [`Ready::read_some`].
    #[allow(async_fn_in_trait)]
    async fn read(s: &Self::Fd<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
        s.read_some(buf).await
    }

    /// Writes all of `buf`. Default: write(2), waiting for writability when the socket is full.
    #[allow(async_fn_in_trait)]
    async fn write_all(s: &Self::Fd<TcpStream>, buf: &[u8]) -> io::Result<()> {
        write_all_ready(s, buf).await
    }

    /// Half-closes the write side (`shutdown(SHUT_WR)`, result ignored: the peer may be gone).
    fn shutdown_write(s: &Self::Fd<TcpStream>) {
        let _ = s.get_ref().shutdown(std::net::Shutdown::Write);
    }

    /// Opens a connection to `addr` (non-blocking, no Nagle; `first` says whether the
    /// handshake's last ACK may wait for our first bytes). Default: connect(2), then
    /// writability and SO_ERROR.
    #[allow(async_fn_in_trait)]
    async fn connect(addr: SocketAddr, first: FirstBytes) -> io::Result<Self::Fd<TcpStream>> {
        let (stream, done) = sys::socket::start_connect(addr, first)?;
        let stream = <Self::Fd<TcpStream>>::new(stream)?;
        if !done {
            stream.write_with(sys::socket::finish_connect).await?;
        }
        Ok(stream)
    }
}

/// A registered, non-blocking fd. `f` is the non-blocking operation; it is retried after
/// readiness for as long as it returns `Err(WouldBlock)`.
#[allow(async_fn_in_trait)] // workers are single-threaded: these futures never cross threads
pub trait Ready<T>: Sized {
    fn new(inner: T) -> io::Result<Self>;
    fn get_ref(&self) -> &T;
    async fn read_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R>;
    async fn write_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R>;

    /// Reads what is available into `buf` (at least one byte, or 0 at EOF). Default:
    /// readiness, then read(2); on io_uring one ring receive into the core's buffer pool.
    #[allow(async_fn_in_trait)]
    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>
    where
        for<'a> &'a T: io::Read,
    {
        self.read_with(|mut t| io::Read::read(&mut t, buf)).await
    }

    /// [`Ready::read_with`], trying `f` before waiting when `likely_ready` (the last call
    /// moved a full batch, so more bytes are probably queued: a bulk stream). A backend whose
    /// readiness is sticky (epoll) ignores the hint; a one-shot poll backend saves a poll
    /// round trip per batch with it.
    #[allow(async_fn_in_trait)]
    async fn read_with_hint<R>(
        &self,
        likely_ready: bool,
        f: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        let _ = likely_ready;
        self.read_with(f).await
    }
}

pub type Stream<D> = <D as Driver>::Fd<TcpStream>;
pub type Listener<D> = <D as Driver>::Fd<TcpListener>;

/// Why a backend connect failed: the status the client gets depends on it.
#[derive(Debug)]
pub enum ConnectError {
    TimedOut,
    Failed(io::Error),
}

/// Connects to `addr` within `timeout`.
pub async fn connect<D: Driver>(
    addr: SocketAddr,
    first: FirstBytes,
    timeout: Duration,
) -> Result<Stream<D>, ConnectError> {
    let attempt = D::connect(addr, first);
    match self::timeout(timeout, attempt).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ConnectError::Failed(e)),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// Accepts one connection (non-blocking socket, CLOEXEC).
pub async fn accept<D: Driver>(listener: &Listener<D>) -> io::Result<(TcpStream, SocketAddr)> {
    D::accept(listener).await
}

/// Reads what is available into `buf` (at least one byte, or 0 at EOF).
pub async fn read<D: Driver>(s: &Stream<D>, buf: &mut [u8]) -> io::Result<usize> {
    D::read(s, buf).await
}

/// Appends one read of at most `max` bytes to `buf` (0 = EOF). The buffer is the
/// connection's own, reused across reads, so once warm this does not allocate.
pub async fn read_append<D: Driver>(
    s: &Stream<D>,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + max.max(1), 0);
    let r = read::<D>(s, &mut buf[start..]).await;
    buf.truncate(start + *r.as_ref().unwrap_or(&0));
    r
}

/// Writes all of `buf` (on io_uring a short one, a head or an answer, as a ring send).
pub async fn write_all<D: Driver>(s: &Stream<D>, buf: &[u8]) -> io::Result<()> {
    D::write_all(s, buf).await
}

/// Writes all of `buf` with write(2), waiting for writability when the socket is full.
async fn write_all_ready<R: Ready<TcpStream>>(s: &R, mut buf: &[u8]) -> io::Result<()> {
    use std::io::Write;
    while !buf.is_empty() {
        let n = s.write_with(|mut t| t.write(buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Half-closes the write side of `s` (on io_uring as a ring op; result ignored).
pub fn shutdown_write<D: Driver>(s: &Stream<D>) {
    D::shutdown_write(s)
}

/// Waits for `dur` on the worker's timer. Worker code never calls `tokio::time` directly: on a
/// ring worker the clock is the ring runtime's (its nearest deadline is the ring wait's
/// timeout); elsewhere (epoll workers, tests) it is tokio's.
pub fn sleep(dur: Duration) -> Sleep {
    sleep_until(std::time::Instant::now() + dur)
}

/// Waits until `deadline` on the worker's timer.
pub fn sleep_until(deadline: std::time::Instant) -> Sleep {
    if ring::on_ring() {
        Sleep::Ring(ring::sleep_until(deadline))
    } else {
        Sleep::Tokio(Box::pin(tokio::time::sleep_until(deadline.into())))
    }
}

/// The future of [`sleep`] and [`sleep_until`]. Small on a ring worker (a deadline and a timer
/// key: idle tunnels each hold one); tokio's larger timer is boxed.
pub enum Sleep {
    Ring(ring::Sleep),
    Tokio(std::pin::Pin<Box<tokio::time::Sleep>>),
}

impl Future for Sleep {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.get_mut() {
            Sleep::Ring(s) => std::pin::Pin::new(s).poll(cx),
            Sleep::Tokio(s) => s.as_mut().poll(cx),
        }
    }
}

/// Runs `f` for at most `dur`: `Err(Elapsed)` when the time ran out first (and `f` is dropped).
///
/// A struct, not an async fn: an async fn keeps its argument `f` for its whole life, and the
/// timer future it awaits holds `f` again (twice, for the ring's: argument and pinned local),
/// so every request phase under a deadline was stored three times over in the connection's
/// task (a 21 KiB task, copied whole at each spawn). This holds `f` once, beside the timer.
pub fn timeout<F: Future>(dur: Duration, f: F) -> Timeout<F> {
    Timeout {
        f,
        deadline: Deadline::Unarmed { dur },
    }
}

pin_project_lite::pin_project! {
    /// See [`timeout`].
    pub struct Timeout<F> {
        #[pin]
        f: F,
        #[pin]
        deadline: Deadline,
    }
}

pin_project_lite::pin_project! {
    /// The timer, armed at the first poll on whichever runtime polls it (as the async fn did:
    /// a tokio timer can only be made inside tokio's runtime).
    #[project = DeadlineProj]
    enum Deadline {
        Unarmed { dur: Duration },
        Ring { sleep: ring::Sleep },
        Tokio { #[pin] sleep: tokio::time::Sleep },
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let mut this = self.project();
        if let DeadlineProj::Unarmed { dur } = this.deadline.as_mut().project() {
            let dur = *dur;
            this.deadline.set(match ring::on_ring() {
                true => Deadline::Ring {
                    sleep: ring::sleep(dur),
                },
                false => Deadline::Tokio {
                    sleep: tokio::time::sleep(dur),
                },
            });
        }
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let due = match this.deadline.project() {
            DeadlineProj::Ring { sleep } => std::pin::Pin::new(sleep).poll(cx),
            DeadlineProj::Tokio { sleep } => sleep.poll(cx),
            DeadlineProj::Unarmed { .. } => Poll::Pending, // armed above
        };
        due.map(|()| Err(Elapsed))
    }
}

/// The time given to [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Spawns a task on the current worker: the ring runtime's executor on a ring worker, tokio's
/// LocalSet elsewhere. Detached: the task runs to its end (or until the worker stops).
pub fn spawn_local<F: Future<Output = ()> + 'static>(f: F) {
    if ring::on_ring() {
        ring::spawn(f)
    } else {
        drop(tokio::task::spawn_local(f));
    }
}

/// The most a graceful close reads and discards, and for how long.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// Ends a connection so the peer reads what was written last (an error status, usually).
/// Closing a socket with unread bytes in its receive queue sends RST, and the peer's stack may
/// discard the answer it had not read yet; so: FIN after the answer, then read and discard what
/// the peer still sends, bounded by [`LINGER_BYTES`] and [`LINGER_TIME`], then the caller drops
/// the socket.
pub async fn linger_close<D: Driver>(s: &Stream<D>) {
    shutdown_write::<D>(s);
    let drain = async {
        // On the heap: this runs only after an error answer, and a 2 KiB array here would be
        // carried by every connection task that might get one.
        let mut sink = vec![0u8; 2048];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match read::<D>(s, &mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = timeout(LINGER_TIME, drain).await;
}

/// Has the peer closed (or sent something unasked) on an idle kept-alive connection? Checked
/// before reusing a backend connection, so a request is never sent into a socket the backend
/// already closed.
pub fn peer_closed<D: Driver>(s: &Stream<D>) -> bool {
    let mut byte = [0u8; 1];
    !matches!(s.get_ref().peek(&mut byte), Err(e) if sys::would_block(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A future that is ready at its n-th poll (woken at once each time).
    fn ready_at(n: u32) -> impl Future<Output = u32> {
        let mut polls = 0;
        std::future::poll_fn(move |cx| {
            polls += 1;
            if polls >= n {
                std::task::Poll::Ready(polls)
            } else {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
    }

    async fn outcomes() -> (
        Result<u32, Elapsed>,
        Result<(), Elapsed>,
        Result<u32, Elapsed>,
    ) {
        let ready = timeout(Duration::from_secs(60), ready_at(3)).await;
        let never = timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
        // A zero deadline still gives the future its first poll (as tokio's timeout does).
        let first = timeout(Duration::ZERO, ready_at(1)).await;
        (ready, never, first)
    }

    fn check(
        o: (
            Result<u32, Elapsed>,
            Result<(), Elapsed>,
            Result<u32, Elapsed>,
        ),
    ) {
        assert_eq!(o.0, Ok(3));
        assert_eq!(o.1, Err(Elapsed));
        assert_eq!(o.2, Ok(1));
    }

    #[test]
    fn timeout_on_tokio() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        check(rt.block_on(outcomes()));
    }

    #[test]
    fn timeout_on_the_ring() {
        let Ok(rt) = ring::Runtime::new(8, sys::ring::Setup::DeferTaskrun) else {
            eprintln!("no io_uring here: the ring half of this test cannot run");
            return;
        };
        let got = Rc::new(Cell::new(None));
        let out = got.clone();
        rt.block_on(async move { out.set(Some(outcomes().await)) });
        check(got.take().expect("the ring ran the timeouts"));
    }

    /// The point of `Timeout` being a struct: it holds its future once.
    #[test]
    fn timeout_holds_its_future_once() {
        let f = async {
            let buf = [0u8; 4096];
            std::future::pending::<()>().await;
            buf[0]
        };
        let inner = std::mem::size_of_val(&f);
        assert!(std::mem::size_of_val(&timeout(Duration::ZERO, f)) < inner + 256);
    }
}
