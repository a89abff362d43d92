//! Readiness from the io_uring ring: a one-shot `IORING_OP_POLL_ADD` per wait, submitted through
//! tokio-uring's public op API so it shares the worker's ring and its batched submission.
//!
//! Why poll and not READ/SPLICE ops: io_uring's SPLICE op is always punted to an io-wq kernel
//! worker (2.8× the CPU per message of a non-blocking splice(2) in our prototypes, and with
//! blocking sockets each idle direction parks a kernel thread), and a pending READ must own a
//! buffer, so an idle tunnel would pin memory. A poll owns nothing but a reference to the fd.
//!
//! Lifetime rules (the reason this file exists):
//! - The op's stable data holds an `Rc` to the socket's owner, so the fd cannot be closed and its
//!   number reused while the kernel may still look it up. tokio-uring keeps that data alive
//!   (`Lifecycle::Ignored`) when the future is dropped before its completion arrives.
//! - Dropping a pending poll submits `ASYNC_CANCEL` matching the fd, so the completion arrives
//!   promptly and the fd is released (a dropped op is *not* cancelled by tokio-uring itself; an
//!   un-cancelled poll on an idle socket would hold its fd forever). Cancel-by-fd matches every
//!   pending op on that fd, so a sibling poll (the other tunnel direction) may complete with
//!   `ECANCELED`: waiters treat that as a spurious wake-up and poll again.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::{cqueue, opcode, types};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

pub const POLLIN: u32 = libc::POLLIN as u32;
pub const POLLOUT: u32 = libc::POLLOUT as u32;

/// Keeps the fd's owner alive until the kernel has completed the op.
pub struct PollData {
    _owner: Rc<dyn Any>,
}

pub struct PollTransform;

impl OneshotOutputTransform for PollTransform {
    type Output = io::Result<u32>;
    type StoredData = PollData;

    fn transform_oneshot_output(self, _data: PollData, cqe: cqueue::Entry) -> io::Result<u32> {
        cqe_result(cqe.result())
    }
}

fn cqe_result(res: i32) -> io::Result<u32> {
    if res >= 0 {
        Ok(res as u32)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}

/// A pending readiness wait. Resolves with the revents mask.
pub struct PollReady {
    op: Option<InFlightOneshot<PollData, PollTransform>>,
    fd: RawFd,
}

impl PollReady {
    /// Arms a one-shot poll for `events` on `fd`, which `owner` owns.
    ///
    /// Must be called on a tokio-uring runtime thread.
    pub fn new(owner: Rc<dyn Any>, fd: RawFd, events: u32) -> PollReady {
        let sqe = opcode::PollAdd::new(types::Fd(fd), events).build();
        // SAFETY-relevant (no `unsafe` needed, tokio-uring's constructor is safe): the SQE
        // names only `fd`, and `PollData` keeps `owner` (which owns `fd`) alive until the
        // completion, even if this future is dropped first.
        let op = UnsubmittedOneshot::new(PollData { _owner: owner }, PollTransform, sqe).submit();
        PollReady { op: Some(op), fd }
    }
}

impl Future for PollReady {
    type Output = io::Result<u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u32>> {
        let this = &mut *self;
        let Some(op) = this.op.as_mut() else {
            return Poll::Ready(Err(io::Error::other("poll after completion")));
        };
        match Pin::new(op).poll(cx) {
            Poll::Ready(r) => {
                this.op = None;
                Poll::Ready(r)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for PollReady {
    fn drop(&mut self) {
        if self.op.is_some() && RING_ACTIVE.with(Cell::get) {
            cancel_fd(self.fd);
        }
        // Dropping `op` hands its PollData to the driver until the (cancelled) completion.
        // While the runtime shuts down (tasks dropped, no context to submit in), the driver's
        // own drop reaps every op still in flight, releasing their data.
    }
}

thread_local! {
    /// True while this thread's tokio-uring runtime can take submissions.
    static RING_ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread's ring as accepting submissions (set around the worker's main future:
/// the tasks still alive when it returns are dropped during runtime teardown).
pub fn set_ring_active(active: bool) {
    RING_ACTIVE.with(|a| a.set(active));
}

/// Submits an async cancel of every op pending on `fd`; fire and forget.
fn cancel_fd(fd: RawFd) {
    struct Ignore;
    impl OneshotOutputTransform for Ignore {
        type Output = ();
        type StoredData = ();
        fn transform_oneshot_output(self, _: (), _: cqueue::Entry) {}
    }
    let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
    drop(UnsubmittedOneshot::new((), Ignore, sqe).submit());
}

/// True for the errors a cancelled or interrupted poll completes with (`ECANCELED`, and the
/// kernel-internal `ERESTARTSYS` = 512 seen when a task is interrupted): wait again.
pub fn is_spurious(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECANCELED) | Some(libc::EINTR) | Some(512)
    )
}

/// Can this process create a ring at all? (seccomp and `kernel.io_uring_disabled` make
/// io_uring_setup fail with EPERM/ENOSYS.)
pub fn probe() -> io::Result<()> {
    io_uring::IoUring::new(2).map(drop)
}
