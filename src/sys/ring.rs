//! A worker's io_uring ring and its in-flight ops: the mechanism under ringway's own per-core
//! runtime (`crate::io::ring`). Safe to use from above; every `unsafe` is here.
//!
//! - **Op slots.** Each submitted op gets a slot in a slab; its index is the SQE's `user_data`.
//!   The slot keeps what the kernel may touch (a buffer, the fd's owner) until the op's *last*
//!   completion arrives, whatever happens to the future that submitted it.
//! - **Dropped futures.** A future dropped before its completion marks its slot ignored and
//!   submits `ASYNC_CANCEL` for that `user_data` (only that op: a sibling op on the same fd is
//!   not disturbed). The slot, and what it keeps, is freed when the (cancelled) completion
//!   arrives.
//! - **Multishot ops** (accept, recv) post several completions; the slot queues their results
//!   and stays until a completion without `IORING_CQE_F_MORE`.
//! - **Waiting.** The worker enters the kernel only through [`Ring::enter`]: submit what is
//!   queued and, if it has nothing to run, wait for a completion or the nearest timer (EXT_ARG
//!   timespec). No epoll.
//! - **Other threads** wake the worker through an eventfd it always has a READ armed on.
//! - **Teardown** cancels everything and reaps until the kernel has let go of every slot
//!   (bounded); what the kernel still holds after that is leaked rather than freed under it.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::{BufRing, Lease, BGID};

/// The core's receive buffers: up to 256 × 4 KiB (1 MiB) per core, of which 32 are provided
/// at first and more, 32 at a time, whenever the kernel runs out (so resident memory follows
/// the peak of bytes in flight, up to 1 MiB). Past that, reads and tunnel copies fall back to
/// readiness and the core's scratch buffer. A receive that fills a whole buffer hands the
/// direction to splice. (A burst on every connection, like loadgen's idle check, makes the
/// whole pool resident: 4 KiB buffers keep that at 1 MiB per core.)
const POOL_BUFS: u16 = 256;
const POOL_INITIAL: u16 = 32;
const POOL_GROW: u16 = 32;
pub const POOL_BUF_SIZE: u32 = 4 * 1024;

pub const POLLIN: u32 = libc::POLLIN as u32;
pub const POLLOUT: u32 = libc::POLLOUT as u32;

/// `user_data` of completions the ring ignores (cancel requests).
const IGNORE: u64 = u64::MAX;
/// `user_data` of the eventfd read that wakes the worker from another thread.
const WAKE: u64 = u64::MAX - 1;

/// What a slot keeps alive for the kernel until its last completion.
pub enum Keep {
    Nothing,
    /// The owner of the fd the op names (so the fd number cannot be closed and reused).
    Owner(Rc<dyn Any>),
    /// The owner of the fd and a heap buffer the kernel writes into (accept's sockaddr).
    OwnerAndBuf(Rc<dyn Any>, Box<dyn Any>),
    /// A multishot receive into the core's buffer pool: its completions carry buffers.
    Recv(Rc<dyn Any>),
    /// A send: the buffer it reads, returned to the pool when the slot is freed.
    Send(Rc<dyn Any>, Lease),
    /// A send of bytes the ring copied (a head, an error answer): kept until the completion,
    /// then recycled for the next such send.
    Bytes(Rc<dyn Any>, Vec<u8>),
}

/// Sends of copied bytes up to this size keep their buffer for the next one ([`SPARE_MAX`]
/// of them per core: 32 KiB at most, so an idle core holds next to nothing).
const SPARE_SIZE: usize = 4 * 1024;
const SPARE_MAX: usize = 8;

/// One completion: the result (`>= 0` or `-errno`) and the CQE flags.
#[derive(Debug, Clone, Copy)]
pub struct Cqe {
    pub res: i32,
    pub flags: u32,
}

impl Cqe {
    pub fn result(&self) -> io::Result<u32> {
        if self.res >= 0 {
            Ok(self.res as u32)
        } else {
            Err(io::Error::from_raw_os_error(-self.res))
        }
    }

    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

struct Slot {
    /// Bumped each time the slot is reused, so a stale key never reaches a new op.
    gen: u32,
    live: bool,
    /// The future that waits on this op was dropped: free the slot at its last completion.
    ignored: bool,
    /// No more completions will come (the last one lacked F_MORE).
    finished: bool,
    keep: Keep,
    waker: Option<Waker>,
    results: VecDeque<Cqe>,
}

/// An op's key: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpKey(u64);

impl OpKey {
    fn new(index: usize, gen: u32) -> OpKey {
        OpKey((gen as u64) << 32 | index as u64)
    }
    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Ring setup the worker asked for and got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completion work runs only when the worker enters.
    DeferTaskrun,
    /// `COOP_TASKRUN`: completion work does not interrupt the worker.
    CoopTaskrun,
    Plain,
}

pub struct Ring {
    ring: IoUring,
    /// The core's provided-buffer pool (None if the kernel refused it: no ring copy path).
    /// Declared after `ring`: it is unmapped only after the ring's fd is closed.
    bufs: Option<Rc<BufRing>>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: usize,
    setup: Setup,
    wake: Arc<WakeFd>,
    /// Where the eventfd READ writes its counter (the ring owns it: it outlives every read).
    wake_buf: Box<u64>,
    wake_armed: bool,
    closing: bool,
    /// Buffers of finished [`Keep::Bytes`] sends, for the next one.
    spare: Vec<Vec<u8>>,
}

/// The eventfd other threads write to wake a worker. Shared (`Arc`) by the ring, whose READ
/// on it is armed, and by every cross-thread waker, so it stays open while any can write.
pub struct WakeFd(OwnedFd);

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

/// The result of [`Ring::take`].
pub enum Take {
    Ready(Cqe),
    Pending,
    /// No such op (already finished and freed).
    Gone,
}

impl Ring {
    /// Builds a ring with the best setup this kernel takes (`pref` first, then weaker ones).
    pub fn new(entries: u32, pref: Setup, wake: Arc<WakeFd>) -> io::Result<Ring> {
        let order: &[Setup] = match pref {
            Setup::DeferTaskrun => &[Setup::DeferTaskrun, Setup::CoopTaskrun, Setup::Plain],
            Setup::CoopTaskrun => &[Setup::CoopTaskrun, Setup::Plain],
            Setup::Plain => &[Setup::Plain],
        };
        let mut last = None;
        for &setup in order {
            if setup == Setup::DeferTaskrun && pretend_missing("DEFER_TASKRUN") {
                continue;
            }
            let mut b = IoUring::builder();
            match setup {
                Setup::DeferTaskrun => {
                    b.setup_single_issuer().setup_defer_taskrun();
                }
                Setup::CoopTaskrun => {
                    b.setup_coop_taskrun();
                }
                Setup::Plain => {}
            }
            b.setup_cqsize(entries * 4);
            match b.build(entries) {
                Ok(ring) => return Ok(Ring::with(ring, setup, wake)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no ring setup")))
    }

    fn with(ring: IoUring, setup: Setup, wake: Arc<WakeFd>) -> Ring {
        let bufs = if super::bufring::disabled() {
            None
        } else {
            // Test hook: RINGWAY_URING_POOL=N (a power of two) caps the pool at N buffers,
            // so tests can drive it dry.
            let max = std::env::var("RINGWAY_URING_POOL")
                .ok()
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|n| n.is_power_of_two())
                .unwrap_or(POOL_BUFS);
            match BufRing::new(&ring, max, POOL_BUF_SIZE, POOL_INITIAL.min(max)) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, "no provided-buffer ring: tunnels copy on readiness");
                    None
                }
            }
        };
        let mut r = Ring {
            ring,
            bufs,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            setup,
            wake,
            wake_buf: Box::new(0),
            wake_armed: false,
            closing: false,
            spare: Vec::new(),
        };
        r.arm_wake();
        r
    }

    pub fn setup(&self) -> Setup {
        self.setup
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.wake.0.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(WAKE);
        // SAFETY: the ring holds the eventfd (`Arc`) and `wake_buf` until the read's completion
        // has been reaped, or leaks the buffer if it never is (see Drop).
        unsafe { self.push_raw(&sqe) };
        self.wake_armed = true;
    }

    /// Pushes an SQE, submitting first if the queue is full.
    ///
    /// # Safety
    /// Every fd and buffer the SQE names must stay valid until its last completion.
    unsafe fn push_raw(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: the caller's promise.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EAGAIN) {
                    tracing::error!(error = %e, "io_uring submit failed");
                }
                // Completions must be reaped before the kernel takes more.
                self.reap();
            }
        }
    }

    fn alloc(&mut self, keep: Keep) -> OpKey {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    live: false,
                    ignored: false,
                    finished: false,
                    keep: Keep::Nothing,
                    waker: None,
                    results: VecDeque::new(),
                });
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[index];
        s.gen = s.gen.wrapping_add(1);
        s.live = true;
        s.ignored = false;
        s.finished = false;
        s.keep = keep;
        self.in_flight += 1;
        OpKey::new(index, s.gen)
    }

    fn release(&mut self, index: usize) {
        let bufs = self.bufs.as_ref();
        let s = &mut self.slots[index];
        while let Some(c) = s.results.pop_front() {
            discard(&s.keep, bufs, c);
        }
        s.live = false;
        if let Keep::Bytes(_, mut b) = std::mem::replace(&mut s.keep, Keep::Nothing) {
            if b.capacity() <= SPARE_SIZE && self.spare.len() < SPARE_MAX {
                b.clear();
                self.spare.push(b);
            }
        }
        s.waker = None;
        s.results.clear();
        self.free.push(index);
        self.in_flight -= 1;
    }

    fn slot(&mut self, key: OpKey) -> Option<&mut Slot> {
        self.slots
            .get_mut(key.index())
            .filter(|s| s.live && s.gen == key.gen())
    }

    /// A one-shot poll for `events` on `fd`, which `owner` owns.
    pub fn poll_add(&mut self, owner: Rc<dyn Any>, fd: RawFd, events: u32) -> OpKey {
        let key = self.alloc(Keep::Owner(owner));
        let sqe = opcode::PollAdd::new(types::Fd(fd), events)
            .build()
            .user_data(key.0);
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
            .user_data(key.0);
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
            .user_data(key.0);
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
            .user_data(key.0);
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
            .user_data(key.0);
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
    /// buffer is not given back) until the send's completion.
    pub fn send(&mut self, owner: Rc<dyn Any>, fd: RawFd, lease: Lease) -> OpKey {
        let (ptr, len) = (lease.as_ptr(), lease.len() as u32);
        let key = self.alloc(Keep::Send(owner, lease));
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(key.0);
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
            .user_data(key.0);
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
            .user_data(key.0);
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
            let sqe = opcode::AsyncCancel::new(key.0).build().user_data(IGNORE);
            // SAFETY: a cancel names only a user_data.
            unsafe { self.push_raw(&sqe) };
        }
    }

    /// The connection an accept op's completion `cqe` (taken from `key`) accepted.
    pub fn accepted(&mut self, key: OpKey, cqe: Cqe) -> io::Result<(TcpStream, SocketAddr)> {
        let peer = match self.slot(key).map(|s| &s.keep) {
            Some(Keep::OwnerAndBuf(_, b)) => b
                .downcast_ref::<AcceptAddr>()
                .and_then(|a| super::socket::sockaddr_to_std(&a.storage)),
            _ => return Err(io::Error::other("not an accept op")),
        };
        let fd = cqe.result()? as RawFd;
        // SAFETY: `cqe` is the successful completion of the accept op in `key`'s slot: its
        // result is a new connected fd that nothing else owns.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        let peer = peer.ok_or_else(|| io::Error::other("accept: unknown address family"))?;
        Ok((stream, peer))
    }

    /// Takes the next result of `key`, or registers `waker` for it.
    pub fn take(&mut self, key: OpKey, waker: &Waker) -> Take {
        let Some(s) = self.slot(key) else {
            return Take::Gone;
        };
        if let Some(c) = s.results.pop_front() {
            return Take::Ready(c);
        }
        if s.finished {
            return Take::Gone;
        }
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        Take::Pending
    }

    /// Frees a finished one-shot op (its future got its result).
    pub fn done(&mut self, key: OpKey) {
        let finished = match self.slot(key) {
            Some(s) => s.finished && s.results.is_empty(),
            None => return,
        };
        if finished {
            self.release(key.index());
        }
    }

    /// The future of `key` is gone. Frees the slot if the kernel is done with it; otherwise
    /// cancels the op and frees the slot at its last completion.
    pub fn forget(&mut self, key: OpKey) {
        let bufs = self.bufs.clone();
        let Some(s) = self.slot(key) else { return };
        if s.finished {
            self.release(key.index());
            return;
        }
        s.ignored = true;
        s.waker = None;
        while let Some(c) = s.results.pop_front() {
            discard(&s.keep, bufs.as_ref(), c);
        }
        let sqe = opcode::AsyncCancel::new(key.0).build().user_data(IGNORE);
        // SAFETY: a cancel names only a user_data, no memory or fd.
        unsafe { self.push_raw(&sqe) };
    }

    /// Submits what is queued and reaps completions. Waits for at least one completion when
    /// `wait` is set, for at most `timeout` (`None`: until one arrives). Returns how many
    /// completions it reaped.
    pub fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<usize> {
        let r = if !wait {
            // GETEVENTS even without waiting: under DEFER_TASKRUN completion work only runs
            // when the issuer asks for events.
            let queued = self.ring.submission().len() as u32;
            // SAFETY: no argument pointer is passed (EXT_ARG not set).
            unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    queued,
                    0,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            }
        } else if let Some(t) = timeout {
            let ts = types::Timespec::from(t);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            self.ring.submit_and_wait(1)
        };
        match r {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) => {}
            Err(e) => return Err(e),
        }
        Ok(self.reap())
    }

    /// Moves completions into their slots and wakes their futures.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        let mut rearm_wake = false;
        loop {
            let mut batch = [Cqe { res: 0, flags: 0 }; 32];
            let mut keys = [0u64; 32];
            let mut got = 0;
            for cqe in self.ring.completion().take(32) {
                batch[got] = Cqe {
                    res: cqe.result(),
                    flags: cqe.flags(),
                };
                keys[got] = cqe.user_data();
                got += 1;
            }
            if got == 0 {
                break;
            }
            n += got;
            for i in 0..got {
                match keys[i] {
                    IGNORE => {}
                    WAKE => {
                        self.wake_armed = false;
                        rearm_wake = !self.closing;
                    }
                    k => self.complete(OpKey(k), batch[i]),
                }
            }
        }
        if rearm_wake {
            self.arm_wake();
        }
        n
    }

    fn complete(&mut self, key: OpKey, cqe: Cqe) {
        let bufs = self.bufs.clone();
        if cqe.res == -libc::ENOBUFS {
            if let Some(b) = &bufs {
                b.grow(POOL_GROW);
            }
        }
        let Some(s) = self.slot(key) else {
            if let Some(b) = &bufs {
                if let Some(bid) = cqueue::buffer_select(cqe.flags) {
                    b.give_back(bid);
                }
            }
            return;
        };
        if !cqe.more() {
            s.finished = true;
        }
        if s.ignored {
            discard(&s.keep, bufs.as_ref(), cqe);
            if s.finished {
                self.release(key.index());
            }
            return;
        }
        s.results.push_back(cqe);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Op slots allocated (live or free).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Ops the kernel has not finished with.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Cancels every op and reaps until the kernel is done with all of them (bounded).
    pub fn shutdown(&mut self) {
        self.closing = true;
        if self.wake_armed {
            let sqe = opcode::AsyncCancel::new(WAKE).build().user_data(IGNORE);
            // SAFETY: a cancel names only a user_data.
            unsafe { self.push_raw(&sqe) };
        }
        for i in 0..self.slots.len() {
            if self.slots[i].live && !self.slots[i].finished {
                let key = OpKey::new(i, self.slots[i].gen);
                self.slots[i].ignored = true;
                self.slots[i].waker = None;
                let sqe = opcode::AsyncCancel::new(key.0).build().user_data(IGNORE);
                // SAFETY: a cancel names only a user_data.
                unsafe { self.push_raw(&sqe) };
            } else if self.slots[i].live {
                self.release(i);
            }
        }
        for _ in 0..50 {
            if self.in_flight == 0 && !self.wake_armed {
                break;
            }
            let _ = self.enter(true, Some(Duration::from_millis(20)));
        }
        if self.in_flight > 0 {
            tracing::warn!(ops = self.in_flight, "io_uring ops still in flight at exit");
            // The kernel may still touch what these slots keep: leak it rather than free it.
            for s in self.slots.drain(..) {
                if s.live {
                    std::mem::forget(s.keep);
                }
            }
            std::mem::forget(self.bufs.take());
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.shutdown();
        if self.wake_armed {
            // The kernel never completed the eventfd READ: leak its 8-byte buffer rather than
            // free memory it may still write.
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        }
    }
}

/// Releases what a completion nobody will take gave us: an accepted fd is closed, a filled
/// buffer goes back to the pool.
fn discard(keep: &Keep, bufs: Option<&Rc<BufRing>>, cqe: Cqe) {
    match keep {
        Keep::OwnerAndBuf(_, b) if b.is::<AcceptAddr>() && cqe.res >= 0 => {
            // SAFETY: a successful accept's result is a new fd that nothing else owns (its
            // future is gone), so closing it here is its only close.
            unsafe { libc::close(cqe.res) };
        }
        _ => {
            if let (Some(b), Some(bid)) = (bufs, cqueue::buffer_select(cqe.flags)) {
                b.give_back(bid);
            }
        }
    }
}

/// Where an accept op writes the peer's address.
struct AcceptAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// The ops a ring worker uses, by the names a fallback log line gives them.
const NEEDED_OPS: &[(&str, u8)] = &[
    ("POLL_ADD", opcode::PollAdd::CODE),
    ("ACCEPT", opcode::Accept::CODE),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ("READ", opcode::Read::CODE),
    // Heads and answers, half-closes and closes (all in Linux 5.11, which EXT_ARG needs).
    ("SEND", opcode::Send::CODE),
    ("SHUTDOWN", opcode::Shutdown::CODE),
    ("CLOSE", opcode::Close::CODE),
];

/// Test hook: `RINGWAY_URING_PRETEND_MISSING=ring|EXT_ARG|DEFER_TASKRUN|<op name>,...` makes
/// [`probe`] report those as missing, so every fallback case can be forced in tests.
fn pretend_missing(what: &str) -> bool {
    std::env::var("RINGWAY_URING_PRETEND_MISSING")
        .map(|v| v.split(',').any(|w| w.trim().eq_ignore_ascii_case(what)))
        .unwrap_or(false)
}

/// Can this process run a ring worker? `Err` names what is missing: the ring itself
/// (seccomp and `kernel.io_uring_disabled` make io_uring_setup fail with EPERM/ENOSYS), a
/// feature (EXT_ARG: the timed wait), or an op (from the kernel's opcode probe).
pub fn probe() -> Result<(), String> {
    if pretend_missing("ring") {
        return Err("io_uring_setup (RINGWAY_URING_PRETEND_MISSING)".into());
    }
    let ring = IoUring::new(2).map_err(|e| format!("io_uring_setup: {e}"))?;
    if !ring.params().is_feature_ext_arg() || pretend_missing("EXT_ARG") {
        return Err("IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)".into());
    }
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for &(name, code) in NEEDED_OPS {
        if !p.is_supported(code) || pretend_missing(name) {
            return Err(format!("IORING_OP_{name}"));
        }
    }
    Ok(())
}
