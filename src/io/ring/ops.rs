//! Futures for ring ops. Each holds only its op's key: what the kernel may touch is kept by
//! the op's slot in `sys::ring` until the last completion, so dropping a future early (a
//! timeout, a `select!` branch that lost) is always safe; it cancels the op.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::with;
use crate::sys::bufring::Lease;
use crate::sys::closer::CloseWith;
use crate::sys::ring::{Cqe, OpKey, Take};

struct Op {
    key: Option<OpKey>,
}

impl Op {
    fn poll_cqe(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Cqe>> {
        let Some(key) = self.key else {
            return Poll::Ready(Err(io::Error::other("op polled after completion")));
        };
        let r = with(|rt| rt.ring.borrow_mut().take(key, cx.waker()));
        match r {
            Some(Take::Ready(c)) => Poll::Ready(Ok(c)),
            Some(Take::Pending) => Poll::Pending,
            Some(Take::Gone) | None => {
                self.key = None;
                Poll::Ready(Err(io::Error::other("io_uring op lost")))
            }
        }
    }

    fn finish(&mut self) {
        if let Some(key) = self.key.take() {
            with(|rt| rt.ring.borrow_mut().done(key));
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            with(|rt| rt.ring.borrow_mut().forget(key));
        }
    }
}

/// Waits until `fd` (owned by `owner`) has one of `events`; resolves with the revents.
pub fn poll(owner: Rc<dyn Any>, fd: RawFd, events: u32) -> Poll1 {
    let key = with(|rt| rt.ring.borrow_mut().poll_add(owner, fd, events));
    Poll1 { op: Op { key } }
}

pub struct Poll1 {
    op: Op,
}

impl Future for Poll1 {
    type Output = io::Result<u32>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u32>> {
        let c = std::task::ready!(self.op.poll_cqe(cx))?;
        self.op.finish();
        Poll::Ready(c.result())
    }
}

/// Accepts one connection on the listener `fd` (owned by `owner`): non-blocking, CLOEXEC,
/// with the peer's address (no getpeername).
pub fn accept(owner: Rc<dyn Any>, fd: RawFd) -> Accept {
    let key = with(|rt| rt.ring.borrow_mut().accept(owner, fd));
    Accept { op: Op { key } }
}

pub struct Accept {
    op: Op,
}

impl Future for Accept {
    type Output = io::Result<(TcpStream, SocketAddr)>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let c = std::task::ready!(self.op.poll_cqe(cx))?;
        let r = match self.op.key {
            Some(k) => with(|rt| rt.ring.borrow_mut().accepted(k, c))
                .unwrap_or_else(|| Err(io::Error::other("no ring"))),
            None => Err(io::Error::other("accept op lost")),
        };
        self.op.finish();
        Poll::Ready(r)
    }
}

/// A socket as the ring-native copy path sees it: a loan of what keeps its fd open (each op
/// clones it into its slot). One pointer, copied freely: a tunnel's directions hold two each.
#[derive(Clone, Copy)]
pub struct RingSock<'a>(&'a Rc<CloseWith<TcpStream>>);

impl<'a> RingSock<'a> {
    /// `None` off a ring worker or when the core has no buffer pool.
    pub fn new(owner: &'a Rc<CloseWith<TcpStream>>) -> Option<RingSock<'a>> {
        with(|rt| rt.ring.borrow().has_pool())
            .unwrap_or(false)
            .then_some(RingSock(owner))
    }

    fn owner(self) -> Rc<dyn Any> {
        self.0.clone()
    }

    fn fd(self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Arms a multishot receive into the core's buffer pool.
    pub fn recv_multi(&self) -> RecvMulti {
        let key = with(|rt| rt.ring.borrow_mut().recv_multi(self.owner(), self.fd())).flatten();
        RecvMulti {
            op: Op { key },
            cancelled: false,
        }
    }

    /// Half-closes the socket with a ring op nobody waits for (`false`: not on a ring worker;
    /// the caller shuts down with the syscall).
    pub fn shutdown_write(&self) -> bool {
        crate::io::uring_ops().shutdown && shutdown_write(self.owner(), self.fd())
    }

    /// Sends the bytes of `lease` (one send in flight per direction: the caller queues).
    /// `fin_follows`: the caller half-closes the socket right after this send completes; the
    /// bytes wait for the FIN and leave with it, one segment instead of two.
    pub fn send(&self, lease: Lease, fin_follows: bool) -> SendOp {
        let key = with(move |rt| {
            rt.ring
                .borrow_mut()
                .send(self.owner(), self.fd(), lease, fin_follows)
        });
        SendOp { op: Op { key } }
    }
}

/// What a multishot receive yields.
pub enum Received {
    Data(Lease),
    Eof,
    /// The receive ended without an error (cancelled, or the pool ran dry: `nobufs` when it
    /// cannot grow, so wait a little); arm a new one to go on.
    Ended {
        nobufs: bool,
    },
    Err(io::Error),
}

pub struct RecvMulti {
    op: Op,
    cancelled: bool,
}

impl RecvMulti {
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        if self.op.key.is_none() {
            return Poll::Ready(Received::Ended { nobufs: false });
        }
        let c = match std::task::ready!(self.op.poll_cqe(cx)) {
            Ok(c) => c,
            Err(e) => return Poll::Ready(Received::Err(e)),
        };
        if !c.more() {
            // The op is over after this completion: free its slot now.
            self.op.finish();
        }
        let lease = with(|rt| rt.ring.borrow().lease(&c)).flatten();
        Poll::Ready(match (c.res, lease) {
            (n, Some(l)) if n > 0 => Received::Data(l),
            (0, _) => Received::Eof,
            (n, _) if n == -libc::ENOBUFS => Received::Ended {
                // the pool grew on this completion unless it was at its maximum
                nobufs: with(|rt| rt.ring.borrow().pool_at_max()).unwrap_or(true),
            },
            (n, _) if n == -libc::ECANCELED => Received::Ended { nobufs: false },
            (n, _) if n < 0 => Received::Err(io::Error::from_raw_os_error(-n)),
            _ => Received::Err(io::Error::other("receive completion without a buffer")),
        })
    }

    /// Asks the kernel to stop this receive (backpressure, or a switch to splice); what it
    /// already received still comes, then `Ended`.
    pub fn cancel(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            if let Some(k) = self.op.key {
                with(|rt| rt.ring.borrow_mut().cancel(k));
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// The source's end of stream has already arrived behind what was taken so far.
    pub fn eof_next(&self) -> bool {
        self.op
            .key
            .is_some_and(|k| with(|rt| rt.ring.borrow().eof_next(k)).unwrap_or(false))
    }
}

pub struct SendOp {
    op: Op,
}

impl SendOp {
    /// Resolves with the bytes sent and the lease (its rest, after a short send).
    pub fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<(io::Result<u32>, Option<Lease>)> {
        let c = match std::task::ready!(self.op.poll_cqe(cx)) {
            Ok(c) => c,
            Err(e) => return Poll::Ready((Err(e), None)),
        };
        let lease = self
            .op
            .key
            .and_then(|k| with(|rt| rt.ring.borrow_mut().take_lease(k)).flatten());
        self.op.finish();
        Poll::Ready((c.result(), lease))
    }
}

/// Reads at most `buf.len()` bytes from `fd` (owned by `owner`) with one ring op (a receive
/// into the core's pool, copied out). `None` when the core has no pool or it ran dry: read on
/// readiness instead.
pub async fn recv_into(owner: Rc<dyn Any>, fd: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
    let len = buf.len().min(u32::MAX as usize) as u32;
    let key = with(|rt| rt.ring.borrow_mut().recv_once(owner, fd, len)).flatten()?;
    let mut op = Op { key: Some(key) };
    let c = match std::future::poll_fn(|cx| op.poll_cqe(cx)).await {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    op.finish();
    if c.res == -libc::ENOBUFS {
        return None;
    }
    if c.res < 0 {
        return Some(Err(io::Error::from_raw_os_error(-c.res)));
    }
    let lease = with(|rt| rt.ring.borrow().lease(&c)).flatten();
    Some(Ok(match lease {
        Some(l) => {
            let n = l.len().min(buf.len());
            buf[..n].copy_from_slice(&l.as_slice()[..n]);
            n
        }
        None => 0, // EOF: no buffer taken
    }))
}

/// Connects the socket `fd` (owned by `owner`) to `addr` with one ring op: no connect,
/// getsockopt(SO_ERROR) or getpeername syscalls.
pub async fn connect(owner: Rc<dyn Any>, fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    let key = with(|rt| rt.ring.borrow_mut().connect(owner, fd, addr));
    let mut op = Op { key };
    let c = std::future::poll_fn(|cx| op.poll_cqe(cx)).await?;
    op.finish();
    c.result().map(drop)
}

/// Writes all of `bytes` to `fd` (owned by `owner`) as ring sends of a copy (no `sendto`):
/// for heads and short answers, which the socket almost always takes at once. A future
/// dropped mid-way cancels its send; bytes the kernel already took still go out.
pub async fn send_all(owner: Rc<dyn Any>, fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let key = with(|rt| rt.ring.borrow_mut().send_copy(owner.clone(), fd, bytes));
        let mut op = Op { key };
        let c = std::future::poll_fn(|cx| op.poll_cqe(cx)).await?;
        op.finish();
        match c.result()? as usize {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => bytes = &bytes[n.min(bytes.len())..],
        }
    }
    Ok(())
}

/// Half-closes `fd` (owned by `owner`) with a ring op nobody waits for. `false` off a ring
/// worker (the caller shuts down with the syscall).
pub fn shutdown_write(owner: Rc<dyn Any>, fd: RawFd) -> bool {
    with(|rt| rt.ring.borrow_mut().shutdown_write(owner, fd)).is_some()
}

/// Closes `fd` with a ring op (from inside the ring itself, an op's slot being freed, at the
/// end of the loop turn); gives it back off a ring worker (the caller closes it).
pub fn close(fd: OwnedFd) -> Result<(), OwnedFd> {
    let mut fd = Some(fd);
    with(|rt| {
        if let Some(fd) = fd.take() {
            match rt.ring.try_borrow_mut() {
                Ok(mut ring) => ring.close(fd),
                Err(_) => rt.closes.borrow_mut().push(fd),
            }
        }
    });
    match fd {
        None => Ok(()),
        Some(fd) => Err(fd),
    }
}
