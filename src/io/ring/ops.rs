//! Futures for ring ops. Each holds only its op's key: what the kernel may touch is kept by
//! the op's slot in `sys::ring` until the last completion, so dropping a future early (a
//! timeout, a `select!` branch that lost) is always safe; it cancels the op.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::with;
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
