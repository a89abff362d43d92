//! A per-core provided-buffer ring (`IORING_REGISTER_PBUF_RING`): multishot receives take a
//! buffer from it only when bytes arrive, so an idle tunnel holds none.
//!
//! A buffer the kernel filled is ours until we give it back: a [`Lease`] names it, and
//! dropping the lease returns it to the ring (publishes it at the tail). A lease travels with
//! the bytes: from the receive completion into a tunnel's send queue, into the send op's slot
//! while the kernel reads it, and back to the ring when that send has completed (or when the
//! bytes are discarded). So a buffer is never handed back while a send may still read it.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// Buffer group id of the core's pool.
pub const BGID: u16 = 0;

/// `RINGWAY_URING_NO_POOL=1` (test and measurement hook): no buffer pool, so ring tunnels use
/// the readiness pump as epoll does.
pub fn disabled() -> bool {
    std::env::var_os("RINGWAY_URING_NO_POOL").is_some()
}

pub struct BufRing {
    /// The ring of entries shared with the kernel (page aligned, `count` entries).
    entries: *mut BufRingEntry,
    entries_len: usize,
    /// The buffers, `count × size` bytes.
    bufs: *mut u8,
    bufs_len: usize,
    count: u16,
    size: u32,
    tail: Cell<u16>,
    lent: Cell<usize>,
    /// Buffers handed to the kernel so far (bids `0..provided`): the pool starts small and
    /// grows when the kernel runs out, so its resident size follows the peak in flight (the
    /// ring hands buffers out in FIFO order, so every provided buffer ends up touched).
    provided: Cell<u16>,
    /// Buffers the kernel has taken from the ring so far (one per completion that names one):
    /// the ring's head as the kernel sees it, once every completion is reaped.
    taken: Cell<u16>,
    /// A buffer was taken since the pool's memory was last given back.
    used: Cell<bool>,
}

fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl BufRing {
    /// Maps room for `count` (a power of two) buffers of `size` bytes, registers the ring with
    /// `ring` and provides the first `initial` buffers.
    pub fn new(ring: &IoUring, count: u16, size: u32, initial: u16) -> io::Result<Rc<BufRing>> {
        assert!(count.is_power_of_two());
        let entries_len = count as usize * std::mem::size_of::<BufRingEntry>();
        let bufs_len = count as usize * size as usize;
        let entries = map(entries_len)?.cast::<BufRingEntry>();
        let bufs = match map(bufs_len) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `entries` was mapped above with this length and is not used elsewhere.
                unsafe { libc::munmap(entries.cast(), entries_len) };
                return Err(e);
            }
        };
        let r = BufRing {
            entries,
            entries_len,
            bufs,
            bufs_len,
            count,
            size,
            tail: Cell::new(0),
            lent: Cell::new(0),
            provided: Cell::new(0),
            taken: Cell::new(0),
            used: Cell::new(false),
        };
        // SAFETY: `entries` is page aligned (mmap) and `count` entries long; it stays mapped
        // until `r` is dropped, which the owner does only after the ring is closed (see
        // `sys::ring::Ring`: the pool drops after the ring's fd, or is leaked).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BGID, 0)?
        };
        r.grow(initial);
        Ok(Rc::new(r))
    }

    /// Provides up to `n` more buffers (the kernel ran out); false when the pool is at its
    /// maximum.
    pub fn grow(&self, n: u16) -> bool {
        let from = self.provided.get();
        let to = from.saturating_add(n).min(self.count);
        for bid in from..to {
            self.push(bid);
        }
        self.provided.set(to);
        self.publish();
        to > from
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Are all the buffers the pool may have provided already?
    pub fn at_max(&self) -> bool {
        self.provided.get() >= self.count
    }

    /// A completion named a buffer: the kernel took it from the ring.
    pub(in crate::sys) fn note_taken(&self) {
        self.taken.set(self.taken.get().wrapping_add(1));
        self.used.set(true);
    }

    /// Gives the memory of the whole pool back to the OS (`MADV_DONTNEED`) when every
    /// provided buffer is back in the ring and one was used since the last time; `true` if it
    /// did. The buffers stay provided: one the kernel fills later is a fresh zeroed page.
    ///
    /// The caller guarantees that the kernel writes into no buffer while this runs and that
    /// every completion that named a buffer has been counted ([`Self::note_taken`]): see
    /// `sys::ring::Ring::release_idle_pool` (DEFER_TASKRUN, completion queue drained).
    pub(in crate::sys) fn release_if_idle(&self) -> bool {
        let in_ring = self.tail.get().wrapping_sub(self.taken.get());
        if !self.used.get() || in_ring != self.provided.get() {
            return false;
        }
        let len = self.provided.get() as usize * self.size as usize;
        // SAFETY: `bufs..bufs+len` is inside our private anonymous mapping (`len <=
        // bufs_len`). Every buffer in it is in the ring, unfilled (the caller's guarantee), so
        // no byte in it is anyone's data: discarding the pages loses nothing, and a later
        // fill (by the kernel, under its page-fault rules) gets a zeroed page.
        let r = unsafe { libc::madvise(self.bufs.cast(), len, libc::MADV_DONTNEED) };
        self.used.set(false);
        r == 0
    }

    /// Resident bytes of the provided buffers (`mincore`), for tests.
    #[cfg(test)]
    pub fn resident_bytes(&self) -> usize {
        let page = 4096;
        let len = self.provided.get() as usize * self.size as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `bufs` is page aligned (mmap) and `len` bytes of it are mapped; `vec` has
        // one byte per page of that range, as mincore(2) writes.
        let r = unsafe { libc::mincore(self.bufs.cast(), len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        vec.iter().filter(|&&v| v & 1 != 0).count() * page
    }

    /// Buffers currently lent out (filled by the kernel and not yet returned).
    pub fn lent(&self) -> usize {
        self.lent.get()
    }

    fn push(&self, bid: u16) {
        let t = self.tail.get();
        let i = (t & (self.count - 1)) as usize;
        // SAFETY: `i < count`, inside the entries mapping; the kernel reads entries only up to
        // the published tail, and this one is past it until `publish`.
        let e = unsafe { &mut *self.entries.add(i) };
        // SAFETY: `bid < count`: the offset is inside the buffers mapping.
        e.set_addr(unsafe { self.bufs.add(bid as usize * self.size as usize) } as u64);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail.set(t.wrapping_add(1));
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the mapping (BufRingEntry::tail);
        // the kernel reads it, we are its only writer; the release store orders the entry
        // writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail.get(), Ordering::Release);
        }
    }

    /// Takes buffer `bid` that a completion says the kernel filled with `len` bytes.
    pub fn lease(self: &Rc<Self>, bid: u16, len: u32) -> Lease {
        self.lent.set(self.lent.get() + 1);
        Lease {
            pool: self.clone(),
            bid,
            off: 0,
            len: len.min(self.size),
        }
    }

    /// Returns a buffer the kernel filled but nobody will read.
    pub fn give_back(&self, bid: u16) {
        if bid < self.count {
            self.push(bid);
            self.publish();
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these lengths; the ring that used
        // them is closed (the owner drops the pool after it), so nothing reads them anymore.
        unsafe {
            libc::munmap(self.entries.cast(), self.entries_len);
            libc::munmap(self.bufs.cast(), self.bufs_len);
        }
    }
}

/// Bytes `off..off+len` of a filled buffer, ours until dropped (then back to the ring).
pub struct Lease {
    pool: Rc<BufRing>,
    bid: u16,
    off: u32,
    len: u32,
}

impl Lease {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the first `n` bytes (they were sent).
    pub fn advance(&mut self, n: usize) {
        let n = (n as u32).min(self.len);
        self.off += n;
        self.len -= n;
    }

    /// Keeps only the first `n` bytes (the rest is not to be sent).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n as u32);
    }

    /// Pointer to the remaining bytes (for a send op).
    pub(crate) fn as_ptr(&self) -> *const u8 {
        // SAFETY: `bid < count` and `off + len <= size`: inside the buffers mapping.
        unsafe {
            self.pool
                .bufs
                .add(self.bid as usize * self.pool.size as usize + self.off as usize)
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the kernel wrote these bytes before the completion that made this lease and
        // does not touch the buffer again until the lease is dropped (given back).
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len as usize) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.lent.set(self.pool.lent.get() - 1);
        self.pool.give_back(self.bid);
    }
}
