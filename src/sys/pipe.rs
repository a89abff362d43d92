//! Pipes for splice(2). A tunnel direction borrows a pipe from its core's pool only while
//! bytes are in flight; an idle tunnel holds none.
//!
//! Invariant relied on by the tunnel: a pipe goes back to the pool only when empty
//! (`len == 0`), and we never splice socket→pipe while the pipe still holds bytes, so bytes
//! can never be reordered between two uses of a pipe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    /// Bytes spliced in and not yet out.
    len: usize,
    /// What the kernel gave us (F_SETPIPE_SZ is a request, not a promise).
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe, asking for `want` bytes of capacity. `F_SETPIPE_SZ` can fail
    /// (per-user pipe pages, `fs.pipe-user-pages-soft`): then the default size is kept.
    pub fn new(want: usize) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two c_ints for the kernel to write.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh fds that nothing else owns.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on an fd we own.
        let got = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, want as libc::c_int) };
        let capacity = if got > 0 {
            got as usize
        } else {
            // SAFETY: plain fcntl on an fd we own.
            let cur = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if cur > 0 {
                cur as usize
            } else {
                65536
            }
        };
        Ok(Pipe {
            rd,
            wr,
            len: 0,
            capacity,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// splice(src → pipe), non-blocking. `Ok(0)` = src reached EOF.
    pub fn fill_from(&mut self, src: BorrowedFd<'_>) -> io::Result<usize> {
        self.fill_from_max(src, usize::MAX)
    }

    /// [`Pipe::fill_from`], moving at most `limit` bytes (a WebSocket tunnel splices no further
    /// than the end of the current frame). `limit` must not be 0 (that would read as EOF).
    pub fn fill_from_max(&mut self, src: BorrowedFd<'_>, limit: usize) -> io::Result<usize> {
        debug_assert!(
            self.len == 0,
            "never splice into a pipe that still holds bytes"
        );
        debug_assert!(limit > 0, "a zero-length splice reads as EOF");
        let max = (self.capacity - self.len).min(limit);
        // SAFETY: `src` is borrowed for the call, so it is open; `wr` is ours. Null offsets
        // are required for sockets and pipes.
        let n = unsafe {
            libc::splice(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                self.wr.as_raw_fd(),
                std::ptr::null_mut(),
                max,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.len += n as usize;
        Ok(n as usize)
    }

    /// splice(pipe → dst), non-blocking; returns bytes moved (maybe fewer than `len`).
    pub fn drain_to(&mut self, dst: BorrowedFd<'_>) -> io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        // SAFETY: `dst` is borrowed for the call, so it is open; `rd` is ours.
        let n = unsafe {
            libc::splice(
                self.rd.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                self.len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.len -= n as usize;
        Ok(n as usize)
    }
}

/// A per-core pool of empty pipes with a cap: creating a pipe costs two syscalls and two fds,
/// so hot tunnels reuse them; the cap bounds fds held by idle pools.
pub struct PipePool {
    free: Vec<Pipe>,
    keep: usize,
    size: usize,
    /// Pipes currently lent out plus pooled; creation stops at `max_total`.
    total: usize,
    max_total: usize,
}

impl PipePool {
    pub fn new(size: usize, keep: usize, max_total: usize) -> Self {
        PipePool {
            free: Vec::with_capacity(keep),
            keep,
            size,
            total: 0,
            max_total,
        }
    }

    /// An empty pipe, or `None` when the cap is reached or the kernel refuses (the caller
    /// then copies through userspace instead).
    pub fn get(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if self.total >= self.max_total {
            return None;
        }
        let p = Pipe::new(self.size).ok()?;
        self.total += 1;
        Some(p)
    }

    /// Returns a pipe. Only empty pipes are reused; one that still holds bytes (its tunnel
    /// died mid-transfer) is closed, since its bytes belong to nobody now.
    pub fn put(&mut self, p: Pipe) {
        if p.is_empty() && self.free.len() < self.keep {
            self.free.push(p);
        } else {
            self.total -= 1;
        }
    }

    /// A pipe dropped without `put` (e.g. its future was cancelled).
    pub fn forget(&mut self) {
        self.total = self.total.saturating_sub(1);
    }

    pub fn pooled(&self) -> usize {
        self.free.len()
    }

    pub fn lent(&self) -> usize {
        self.total - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn splice_moves_bytes_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        let mut c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (d, _) = listener.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        d.set_nonblocking(true).unwrap();
        let mut p = Pipe::new(1 << 16).unwrap();
        assert!(p.capacity() >= 4096);
        // Nothing to read yet: WouldBlock, not 0 (which would mean EOF).
        let e = p.fill_from(b.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"hello splice").unwrap();
        let mut moved = 0;
        while moved < 12 {
            match p.fill_from(b.as_fd()) {
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
            while !p.is_empty() {
                p.drain_to(d.as_fd()).unwrap();
            }
        }
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello splice");
        drop(a);
        // EOF shows as Ok(0).
        loop {
            match p.fill_from(b.as_fd()) {
                Ok(0) => break,
                Ok(n) => panic!("unexpected {n} bytes"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn pool_caps_and_reuses() {
        let mut pool = PipePool::new(1 << 16, 2, 3);
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        let c = pool.get().unwrap();
        assert!(pool.get().is_none(), "cap of 3 reached");
        pool.put(a);
        pool.put(b);
        pool.put(c); // keep = 2: the third is closed
        assert_eq!(pool.pooled(), 2);
        assert_eq!(pool.lent(), 0);
        assert!(pool.get().is_some());
    }
}
