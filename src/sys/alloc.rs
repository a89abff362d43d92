//! Housekeeping of the allocator (mimalloc, `src/main.rs`) for a gateway that holds thousands of
//! idle connections after a burst.
//!
//! mimalloc gives a freed page back to the OS only from inside its own calls on the thread that
//! owns the page, and only after `purge_delay` (10 ms). A worker that goes quiet right after a
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
