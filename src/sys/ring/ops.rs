//! Submitting ops: each takes a slot (`Ring::alloc`) that keeps what the kernel may touch
//! until the op's last completion, then pushes its SQE (sent with the turn's next
//! `io_uring_enter`).

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use io_uring::{cqueue, opcode, squeue, types};

use super::{AcceptAddr, Cqe, Keep, OpKey, Ring, IGNORE, POOL_BUF_SIZE};
use crate::sys::bufring::{Lease, BGID};

impl Ring {
    /// A one-shot poll for `events` on `fd`, which `owner` owns.
    pub fn poll_add(&mut self, owner: Rc<dyn Any>, fd: RawFd, events: u32) -> OpKey {
        let key = self.alloc(Keep::Owner(owner));
        let sqe = opcode::PollAdd::new(types::Fd(fd), events)
            .build()
            .user_data(key.raw());
        // SAFETY: the SQE names only `fd`; the slot keeps `owner` (which owns `fd`) alive
        // until the op's completion.
        unsafe { self.push_raw(&sqe) };
        key
    }

    /// A one-shot accept on `fd` (owned by `owner`) that returns the peer's address too.
    pub fn accept(&mut self, owner: Rc<dyn Any>, fd: RawFd) -> OpKey {
        let mut addr: Box<AcceptAddr> = Box::new(AcceptAddr {
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        });
        let storage: *mut libc::sockaddr_storage = &mut addr.storage;
        let len: *mut libc::socklen_t = &mut addr.len;
        let key = self.alloc(Keep::OwnerAndBuf(owner, addr));
        let sqe = opcode::Accept::new(types::Fd(fd), storage.cast(), len)
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(key.raw());
        // SAFETY: the address buffer is a heap allocation the slot owns (moving the Box does
        // not move its contents) until the completion; `owner` keeps the listener's fd open.
        unsafe { self.push_raw(&sqe) };
        key
    }

    /// Has the buffer pool provided every buffer it may (so a dry pool stays dry until
    /// buffers come back)?
    pub fn pool_at_max(&self) -> bool {
        self.bufs.as_ref().is_none_or(|b| b.at_max())
    }

    /// Does this ring have a buffer pool (the ring-native copy path)?
    pub fn has_pool(&self) -> bool {
        self.bufs.is_some()
    }

    /// A multishot receive on `fd` (owned by `owner`) into the core's buffer pool.
    pub fn recv_multi(&mut self, owner: Rc<dyn Any>, fd: RawFd) -> Option<OpKey> {
        self.bufs.as_ref()?;
        let key = self.alloc(Keep::Recv(owner));
        let sqe = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(key.raw());
        // SAFETY: the SQE names `fd` (kept open by `owner` in the slot) and the buffer group,
        // whose memory the ring owns and unmaps only after its fd is closed.
        unsafe { self.push_raw(&sqe) };
        Some(key)
    }

    /// A one-shot receive of at most `len` bytes on `fd` (owned by `owner`) into a buffer of
    /// the core's pool: readiness and the read in one op, no syscall.
    pub fn recv_once(&mut self, owner: Rc<dyn Any>, fd: RawFd, len: u32) -> Option<OpKey> {
        self.bufs.as_ref()?;
        let key = self.alloc(Keep::Recv(owner));
        let sqe = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), len.min(POOL_BUF_SIZE))
            .buf_group(BGID)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(key.raw());
        // SAFETY: the SQE names `fd` (kept open by `owner` in the slot) and the buffer group,
        // whose memory the ring owns until after its fd is closed; no caller memory.
        unsafe { self.push_raw(&sqe) };
        Some(key)
    }

    /// Connects the socket `fd` (owned by `owner`) to `addr`; completes with 0 or `-errno`.
    pub fn connect(&mut self, owner: Rc<dyn Any>, fd: RawFd, addr: SocketAddr) -> OpKey {
        let addr = Box::new(socket2::SockAddr::from(addr));
        let (ptr, len) = (addr.as_ptr(), addr.len());
        let key = self.alloc(Keep::OwnerAndBuf(owner, addr));
        let sqe = opcode::Connect::new(types::Fd(fd), ptr.cast(), len)
            .build()
            .user_data(key.raw());
        // SAFETY: the address is a heap allocation the slot owns until the completion (moving
        // the Box does not move it); `owner` keeps `fd` open.
        unsafe { self.push_raw(&sqe) };
        key
    }

    /// The buffer a receive completion filled, as a lease (None for a completion without one).
    pub fn lease(&self, cqe: &Cqe) -> Option<Lease> {
        let bid = cqueue::buffer_select(cqe.flags)?;
        let pool = self.bufs.as_ref()?;
        Some(pool.lease(bid, cqe.res.max(0) as u32))
    }

    /// Sends the bytes of `lease` on `fd` (owned by `owner`). The slot keeps the lease (so the
    /// buffer is not given back) until the send's completion. `fin_follows`: the caller
    /// half-closes `fd` as soon as this send completes, so the bytes are held back
    /// (`MSG_MORE`) for the FIN to go out in the same segment.
    pub fn send(
        &mut self,
        owner: Rc<dyn Any>,
        fd: RawFd,
        lease: Lease,
        fin_follows: bool,
    ) -> OpKey {
        let (ptr, len) = (lease.as_ptr(), lease.len() as u32);
        let key = self.alloc(Keep::Send(owner, lease));
        let more = if fin_follows { libc::MSG_MORE } else { 0 };
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL | more)
            .build()
            .user_data(key.raw());
        // SAFETY: `ptr..ptr+len` is inside the pool mapping, lent to this slot (not given
        // back) until the completion; `owner` keeps `fd` open.
        unsafe { self.push_raw(&sqe) };
        key
    }

    /// Sends a copy of `bytes` on `fd` (owned by `owner`): one ring op instead of a `sendto`
    /// on readiness. The slot owns the copy until the completion, so the caller's buffer is
    /// free at once and a dropped future cannot leave the kernel reading freed memory.
    pub fn send_copy(&mut self, owner: Rc<dyn Any>, fd: RawFd, bytes: &[u8]) -> OpKey {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(bytes);
        let (ptr, len) = (buf.as_ptr(), buf.len().min(u32::MAX as usize) as u32);
        let key = self.alloc(Keep::Bytes(owner, buf));
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(key.raw());
        // SAFETY: `ptr..ptr+len` is the heap buffer of a Vec the slot owns until the op's
        // completion (moving the Vec into the slot does not move its buffer, and nothing
        // touches it meanwhile); `owner` keeps `fd` open.
        unsafe { self.push_raw(&sqe) };
        key
    }

    /// `shutdown(fd, SHUT_WR)` as a ring op, submitted with the turn's other work; nobody
    /// waits for it (like a `shutdown` whose result is ignored). The slot keeps `owner`, so
    /// the fd stays open until the op completes.
    pub fn shutdown_write(&mut self, owner: Rc<dyn Any>, fd: RawFd) {
        let key = self.alloc(Keep::Owner(owner));
        self.slots[key.index()].ignored = true;
        let sqe = opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR)
            .build()
            .user_data(key.raw());
        // SAFETY: the SQE names only `fd`, which the slot's `owner` keeps open until the
        // completion frees the slot.
        unsafe { self.push_raw(&sqe) };
    }

    /// Closes `fd` as a ring op, submitted with the turn's other work (an RST-on-close
    /// linger set on the socket applies as with close(2)).
    pub fn close(&mut self, fd: OwnedFd) {
        use std::os::fd::IntoRawFd;
        let sqe = opcode::Close::new(types::Fd(fd.into_raw_fd()))
            .build()
            .user_data(IGNORE);
        // SAFETY: the fd number was owned by `fd` and is now the op's alone (into_raw_fd: no
        // other close); the kernel closes it whether or not anyone reaps the completion.
        unsafe { self.push_raw(&sqe) };
    }

    /// Takes back the lease of a completed send (to send the rest after a short send).
    pub fn take_lease(&mut self, key: OpKey) -> Option<Lease> {
        let s = self.slot(key)?;
        if !s.finished {
            return None;
        }
        match std::mem::replace(&mut s.keep, Keep::Nothing) {
            Keep::Send(_, l) => Some(l),
            other => {
                s.keep = other;
                None
            }
        }
    }

    /// Asks the kernel to end op `key` (a multishot receive being paused); its remaining
    /// completions, and the final `ECANCELED`, still arrive.
    pub fn cancel(&mut self, key: OpKey) {
        if self.slot(key).is_some_and(|s| !s.finished) {
            let sqe = opcode::AsyncCancel::new(key.raw())
                .build()
                .user_data(IGNORE);
            // SAFETY: a cancel names only a user_data.
            unsafe { self.push_raw(&sqe) };
        }
    }

    /// The connection an accept op's completion `cqe` (taken from `key`) accepted.
    pub fn accepted(&mut self, key: OpKey, cqe: Cqe) -> io::Result<(TcpStream, SocketAddr)> {
        let peer = match self.slot(key).map(|s| &s.keep) {
            Some(Keep::OwnerAndBuf(_, b)) => b
                .downcast_ref::<AcceptAddr>()
                .and_then(|a| crate::sys::socket::sockaddr_to_std(&a.storage)),
            _ => return Err(io::Error::other("not an accept op")),
        };
        let fd = cqe.result()? as RawFd;
        // SAFETY: `cqe` is the successful completion of the accept op in `key`'s slot: its
        // result is a new connected fd that nothing else owns.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        let peer = peer.ok_or_else(|| io::Error::other("accept: unknown address family"))?;
        Ok((stream, peer))
    }
}
