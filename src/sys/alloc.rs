//! Housekeeping of the allocator (mimalloc, `src/main.rs`) for a gateway that holds thousands of
//! idle connections after a burst.
//!
//! mimalloc gives a freed page back to the OS only from inside its own calls on the thread that
//! owns the page, and only after `purge_delay` (1 s in mimalloc 3). A worker that goes quiet right after a
//! burst (thousands of clients connect and upgrade at once, then idle) makes no such call, so
//! every page the burst's request futures used stays resident for as long as the worker
//! sleeps. [`trim`] is that call: each worker makes it once a second (`runtime.rs`), which
//! returns what a burst left within two calls. Measured in docs/benchmarks.md ("Idle memory").

/// Frees this thread's empty allocator pages and returns to the OS those idle for longer than
/// mimalloc's purge delay. Cheap (a walk over the thread's pages, no syscall when nothing is
/// to purge). A no-op for memory of other allocators (tests run on the system allocator).
pub fn trim() {
    // SAFETY: mi_collect takes no pointers and only touches the calling thread's mimalloc heap
    // and mimalloc's own bookkeeping; it is safe to call at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// Keeps the process's heap on small pages, whatever the host's transparent huge pages mode.
///
/// mimalloc reserves its heap as 1 GiB arenas. With huge pages, the first touch of any byte in
/// a 2 MiB stretch makes all of it resident, and a gateway's heap is thousands of small
/// per-connection objects spread over the arena: 9,000 idle WebSockets cost 3.4 KiB each
/// with huge pages and 2.7 KiB without (docs/benchmarks.md, "Idle memory"). A gateway gains
/// nothing from them back: its hot path is the kernel's, not a large heap's TLB reach.
///
/// mimalloc is built not to ask for huge pages (`no_thp`, Cargo.toml); this covers hosts
/// where the kernel hands them out unasked (`transparent_hugepage/enabled = always`). It
/// applies to faults from now on, and is inherited by child processes. A kernel without the
/// option leaves things as they were.
pub fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of this
    // process's memory map; no memory of ours is read or written.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}
