//! The epoll backend: tokio's reactor (`AsyncFd`) on a current-thread runtime.

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{Driver, IoKind, Ready};
use crate::sys::reactor::OwnsFd;

pub struct Epoll;

impl Driver for Epoll {
    const KIND: IoKind = IoKind::Epoll;
    type Fd<T: OwnsFd + 'static> = EpollFd<T>;
}

pub struct EpollFd<T: AsRawFd>(AsyncFd<T>);

impl<T: OwnsFd + 'static> Ready<T> for EpollFd<T> {
    fn new(inner: T) -> io::Result<Self> {
        crate::sys::reactor::register(inner).map(EpollFd)
    }

    fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    async fn read_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.0.async_io(Interest::READABLE, f).await
    }

    async fn write_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.0.async_io(Interest::WRITABLE, f).await
    }
}
