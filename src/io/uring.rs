//! The io_uring backend: readiness from one-shot POLL_ADD ops on the worker's own ring
//! (`io::ring`), accepts as ring ops.

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use super::{ring, Driver, FirstBytes, IoKind, Ready};
use crate::sys::closer::CloseWith;
use crate::sys::reactor::OwnsFd;
use crate::sys::{self, ring::POLLIN, ring::POLLOUT};

pub struct Uring;

const READ_TRY_FIRST: bool = false;

impl Driver for Uring {
    const KIND: IoKind = IoKind::Uring;
    type Fd<T: OwnsFd + 'static> = UringFd<T>;

    async fn accept(listener: &UringFd<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
        let owner: Rc<dyn Any> = listener.0.clone();
        ring::accept(owner, listener.0.as_raw_fd()).await
    }

    fn ring_sock(s: &UringFd<TcpStream>) -> Option<ring::RingSock<'_>> {
        ring::RingSock::new(&s.0)
    }

    async fn write_all(s: &UringFd<TcpStream>, buf: &[u8]) -> io::Result<()> {
        if buf.len() > SEND_COPY_MAX || !ops().send {
            // Bulk (a body, bytes a slow reader left): write(2) on readiness, no copy.
            return super::write_all_ready(s, buf).await;
        }
        let owner: Rc<dyn Any> = s.0.clone();
        ring::send_all(owner, s.0.as_raw_fd(), buf).await
    }

    fn shutdown_write(s: &UringFd<TcpStream>) {
        let owner: Rc<dyn Any> = s.0.clone();
        if !ops().shutdown || !ring::shutdown_write(owner, s.0.as_raw_fd()) {
            let _ = s.0.shutdown(std::net::Shutdown::Write);
        }
    }

    async fn connect(addr: SocketAddr, first: FirstBytes) -> io::Result<UringFd<TcpStream>> {
        let s = Rc::new(CloseWith::new(
            sys::socket::new_stream(addr, first)?,
            ring_close,
        ));
        let owner: Rc<dyn Any> = s.clone();
        ring::connect(owner, s.as_raw_fd(), addr).await?;
        Ok(UringFd(s))
    }
}

/// Writes up to this size (heads, answers) go out as a ring send of a copy; longer ones as
/// write(2) on readiness.
const SEND_COPY_MAX: usize = 4 * 1024;

/// The fd's owner is reference-counted so a pending op can keep it open (see `sys::ring`).
/// Whoever drops it last (this handle, or the slot of an op the kernel finished late) closes
/// the fd with a ring op, submitted with the turn's other work: no close(2).
pub struct UringFd<T: OwnsFd>(Rc<CloseWith<T>>);

/// Closes `fd` on this worker's ring; with close(2) off a ring worker or from inside the ring
/// (an op's slot freed during a reap).
fn ring_close(fd: OwnedFd) {
    if !ops().close {
        return drop(fd);
    }
    if let Err(fd) = ring::close(fd) {
        drop(fd);
    }
}

/// Which writes and closes go through the ring (the rest are syscalls).
#[derive(Clone, Copy)]
pub struct RingOps {
    pub send: bool,
    pub shutdown: bool,
    pub close: bool,
}

/// Read once: `RINGWAY_URING_OPS=send,close,shutdown` names the ring ops to use, to measure
/// them against their syscalls (docs/benchmarks.md). Default `send,close`: not `SHUTDOWN`,
/// which the kernel never issues non-blocking: it runs every one on an io-wq thread (a thread
/// hop per FIN, measured dearer than the syscall).
pub fn ops() -> RingOps {
    static OPS: std::sync::OnceLock<RingOps> = std::sync::OnceLock::new();
    *OPS.get_or_init(|| {
        let v = std::env::var("RINGWAY_URING_OPS").unwrap_or_else(|_| "send,close".into());
        let has = |name: &str| v.split(',').any(|w| w.trim().eq_ignore_ascii_case(name));
        RingOps {
            send: has("send"),
            shutdown: has("shutdown"),
            close: has("close"),
        }
    })
}

impl<T: OwnsFd + 'static> UringFd<T> {
    async fn with<R>(
        &self,
        events: u32,
        try_first: bool,
        mut f: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut try_now = try_first;
        loop {
            if try_now {
                match f(&self.0) {
                    Err(e) if sys::would_block(&e) => {}
                    r => return r,
                }
            }
            try_now = true;
            let owner: Rc<dyn Any> = self.0.clone();
            match ring::poll(owner, self.0.as_raw_fd(), events).await {
                Ok(_) => {}
                Err(e) if is_spurious(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The errors an interrupted poll completes with (`EINTR`, and the kernel-internal
/// `ERESTARTSYS` = 512): wait again.
fn is_spurious(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(512))
}

impl<T: OwnsFd + 'static> Ready<T> for UringFd<T> {
    fn new(inner: T) -> io::Result<Self> {
        Ok(UringFd(Rc::new(CloseWith::new(inner, ring_close))))
    }

    fn get_ref(&self) -> &T {
        &self.0
    }

    async fn read_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        // Poll first: a read usually follows one that drained the socket (ping-pong), so an
        // optimistic read would cost an EAGAIN syscall per message.
        self.with(POLLIN, READ_TRY_FIRST, f).await
    }

    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>
    where
        for<'a> &'a T: io::Read,
    {
        let owner: Rc<dyn Any> = self.0.clone();
        if let Some(r) = ring::recv_into(owner, self.0.as_raw_fd(), buf).await {
            return r;
        }
        // No pool, or it ran dry: readiness, then read(2).
        self.read_with(|mut t| io::Read::read(&mut t, buf)).await
    }

    async fn read_with_hint<R>(
        &self,
        likely_ready: bool,
        f: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        self.with(POLLIN, likely_ready, f).await
    }

    async fn write_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        // Try first: sockets are almost always writable.
        self.with(POLLOUT, true, f).await
    }
}
