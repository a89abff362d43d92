//! The eventfd that wakes a worker from another thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The eventfd other threads write to wake a worker. Shared (`Arc`) by the ring, whose READ
/// on it is armed, and by every cross-thread waker, so it stays open while any can write.
pub struct WakeFd(pub(super) OwnedFd);

impl WakeFd {
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the worker (from any thread).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: `one` is valid for 8 bytes during the call; `self` keeps the fd open.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}
