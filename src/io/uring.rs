//! The io_uring backend: readiness from POLL_ADD ops on the worker's tokio-uring ring.

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use super::{Driver, IoKind, Ready};
use crate::sys::reactor::OwnsFd;
use crate::sys::{self, uring::PollReady};

pub struct Uring;

const READ_TRY_FIRST: bool = false;

impl Driver for Uring {
    const KIND: IoKind = IoKind::Uring;
    type Fd<T: OwnsFd + 'static> = UringFd<T>;
}

/// The fd's owner is reference-counted so a pending poll can keep it open (see `sys::uring`).
pub struct UringFd<T>(Rc<T>);

impl<T: AsRawFd + 'static> UringFd<T> {
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
            let fd = self.0.as_raw_fd();
            match PollReady::new(self.0.clone(), fd, events).await {
                Ok(_) => {}
                Err(e) if sys::uring::is_spurious(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<T: OwnsFd + 'static> Ready<T> for UringFd<T> {
    fn new(inner: T) -> io::Result<Self> {
        Ok(UringFd(Rc::new(inner)))
    }

    fn get_ref(&self) -> &T {
        &self.0
    }

    async fn read_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        // Poll first: a read usually follows one that drained the socket (ping-pong), so an
        // optimistic read would cost an EAGAIN syscall per message.
        self.with(sys::uring::POLLIN, READ_TRY_FIRST, f).await
    }

    async fn write_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        // Try first: sockets are almost always writable.
        self.with(sys::uring::POLLOUT, true, f).await
    }
}
