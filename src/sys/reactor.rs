//! Registering fds with tokio's epoll reactor. Since tokio 1.54 registration is `unsafe`: the
//! caller promises the fd stays open and is not re-registered elsewhere for as long as the
//! `AsyncFd` lives. We only register types that own their fd ([`OwnsFd`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::TcpStream {}
    impl Sealed for std::net::TcpListener {}
}

/// Implemented only for types that own their fd and close it on drop.
pub trait OwnsFd: AsRawFd + Into<OwnedFd> + sealed::Sealed {}
impl OwnsFd for std::net::TcpStream {}
impl OwnsFd for std::net::TcpListener {}

pub fn register<T: OwnsFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its fd (OwnsFd is sealed to TcpStream/TcpListener). The AsyncFd takes
    // ownership of `inner`, so the fd stays open until the AsyncFd is dropped, which
    // deregisters it before dropping (closing) `inner`. Nothing else registers this fd.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| e.into())
}
