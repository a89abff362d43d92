//! An fd owner whose last drop hands the fd to a closer of its choice (a ring worker's `CLOSE`
//! op) instead of close(2).

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::reactor::OwnsFd;

pub struct CloseWith<T: OwnsFd> {
    inner: ManuallyDrop<T>,
    close: fn(OwnedFd),
}

impl<T: OwnsFd> CloseWith<T> {
    /// `close` receives the fd when this value is dropped; it must close it (or drop it).
    pub fn new(inner: T, close: fn(OwnedFd)) -> CloseWith<T> {
        CloseWith {
            inner: ManuallyDrop::new(inner),
            close,
        }
    }
}

impl<T: OwnsFd> Deref for CloseWith<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: OwnsFd> AsRawFd for CloseWith<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl<T: OwnsFd> Drop for CloseWith<T> {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken exactly once, here, and `self` is never used after drop.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        (self.close)(inner.into());
    }
}
