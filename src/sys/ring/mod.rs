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
//!
//! Here: the ring, its slots and the futures' side (take, done, forget); `ops.rs` submits ops,
//! `reap.rs` enters the kernel and reaps, `wake.rs` is the cross-thread eventfd, `probe.rs`
//! what a worker needs from the kernel.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::{BufRing, Lease};

mod ops;
mod probe;
mod reap;
mod wake;

use probe::pretend_missing;
pub use probe::probe;
pub use wake::WakeFd;

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
    /// `first` holds a result not taken yet.
    has_first: bool,
    keep: Keep,
    waker: Option<Waker>,
    /// Results not taken yet, in order: the first inline (a one-shot op has only one, and an
    /// idle multishot receive none), the rest behind it in `more`, allocated the first time a
    /// multishot op's completions outrun its future and then kept with the slot. (A
    /// `VecDeque` here took 32 bytes, and every idle tunnel has two slots.)
    first: Cqe,
    #[allow(clippy::box_collection)] // on purpose: 8 bytes in every slot, not a VecDeque's 32
    more: Option<Box<VecDeque<Cqe>>>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            gen: 0,
            live: false,
            ignored: false,
            finished: false,
            keep: Keep::Nothing,
            waker: None,
            has_first: false,
            first: Cqe { res: 0, flags: 0 },
            more: None,
        }
    }

    fn push_result(&mut self, c: Cqe) {
        if !self.has_first {
            self.first = c;
            self.has_first = true;
        } else {
            self.more.get_or_insert_with(Default::default).push_back(c);
        }
    }

    fn pop_result(&mut self) -> Option<Cqe> {
        if !self.has_first {
            return None;
        }
        let c = self.first;
        match self.more.as_mut().and_then(|m| m.pop_front()) {
            Some(next) => self.first = next,
            None => self.has_first = false,
        }
        Some(c)
    }

    fn front_result(&self) -> Option<&Cqe> {
        self.has_first.then_some(&self.first)
    }

    fn clear_results(&mut self) {
        self.has_first = false;
        if let Some(m) = &mut self.more {
            m.clear();
        }
    }
}

/// An op's key: slot index and generation. A generation is never 0, so a key is never 0 and
/// `Option<OpKey>` (what every op future holds) costs 8 bytes, not 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpKey(NonZeroU64);

impl OpKey {
    fn new(index: usize, gen: u32) -> OpKey {
        debug_assert!(gen != 0);
        OpKey(NonZeroU64::new((gen as u64) << 32 | index as u64).unwrap_or(NonZeroU64::MAX))
    }
    /// The key a completion's `user_data` names (none for 0, which no op carries).
    fn from_raw(user_data: u64) -> Option<OpKey> {
        NonZeroU64::new(user_data).map(OpKey)
    }
    fn raw(self) -> u64 {
        self.0.get()
    }
    fn index(self) -> usize {
        (self.raw() & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        (self.raw() >> 32) as u32
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
                self.slots.push(Slot::empty());
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[index];
        s.gen = s.gen.wrapping_add(1).max(1); // never 0: see OpKey
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
        while let Some(c) = s.pop_result() {
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
        s.clear_results();
        self.free.push(index);
        self.in_flight -= 1;
    }

    fn slot(&mut self, key: OpKey) -> Option<&mut Slot> {
        self.slots
            .get_mut(key.index())
            .filter(|s| s.live && s.gen == key.gen())
    }

    /// Takes the next result of `key`, or registers `waker` for it.
    pub fn take(&mut self, key: OpKey, waker: &Waker) -> Take {
        let Some(s) = self.slot(key) else {
            return Take::Gone;
        };
        if let Some(c) = s.pop_result() {
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

    /// The next queued result of `key` is an end of stream (a receive's 0).
    pub fn eof_next(&self, key: OpKey) -> bool {
        self.slots
            .get(key.index())
            .filter(|s| s.live && s.gen == key.gen())
            .and_then(|s| s.front_result())
            .is_some_and(|c| c.res == 0)
    }

    /// Frees a finished one-shot op (its future got its result).
    pub fn done(&mut self, key: OpKey) {
        let finished = match self.slot(key) {
            Some(s) => s.finished && !s.has_first,
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
        while let Some(c) = s.pop_result() {
            discard(&s.keep, bufs.as_ref(), c);
        }
        let sqe = opcode::AsyncCancel::new(key.raw())
            .build()
            .user_data(IGNORE);
        // SAFETY: a cancel names only a user_data, no memory or fd.
        unsafe { self.push_raw(&sqe) };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot gives its results back in the order they came, across the inline first one and
    /// the queue behind it, and is empty again after a clear.
    #[test]
    fn a_slot_gives_its_results_in_order() {
        let mut s = Slot::empty();
        assert!(s.pop_result().is_none());
        let cqe = |res| Cqe { res, flags: 0 };
        for round in 0..2 {
            for i in 1..=5 {
                s.push_result(cqe(i + round * 10));
            }
            assert_eq!(s.front_result().map(|c| c.res), Some(1 + round * 10));
            let got: Vec<i32> = std::iter::from_fn(|| s.pop_result())
                .map(|c| c.res)
                .collect();
            assert_eq!(got, (1..=5).map(|i| i + round * 10).collect::<Vec<_>>());
            assert!(s.front_result().is_none());
        }
        s.push_result(cqe(7));
        s.push_result(cqe(8));
        s.clear_results();
        assert!(s.pop_result().is_none());
        s.push_result(cqe(9));
        assert_eq!(s.pop_result().map(|c| c.res), Some(9));
    }
}
