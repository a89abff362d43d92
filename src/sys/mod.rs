//! The only module allowed `unsafe`: raw syscalls (splice, pipes, affinity) and the io_uring
//! poll op. Every `unsafe` block says who owns the fd or buffer and why it outlives the kernel's
//! use of it. Everything above this module is safe Rust.
#![allow(unsafe_code)]

pub mod alloc;
pub mod bufring;
pub mod closer;
pub mod cpu;
pub mod pipe;
pub mod reactor;
pub mod ring;
pub mod socket;
pub mod waker;

use std::io;

/// `Err(WouldBlock)` means "not ready: wait for readiness and try again" everywhere in ringway.
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Raises RLIMIT_NOFILE to the hard limit: a gateway needs two fds per proxied connection.
/// Clock ticks per second of `/proc/PID/stat` CPU times (`sysconf(_SC_CLK_TCK)`, USER_HZ);
/// 100 when the call fails (the value Linux fixes in its ABI).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a plain integer name and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as u64
    } else {
        100
    }
}

pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit struct, read by the kernel during the call only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Number of open fds of this process (for leak tests and the admin view).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1)) // the read_dir's own fd
        .unwrap_or(0)
}
