//! The waiting side: one `io_uring_enter` per loop turn (submit, reap, wait if idle), moving
//! completions into their slots, and the teardown that lets the kernel finish every op.

use std::io;
use std::time::Duration;

use io_uring::{cqueue, opcode, types};

use super::{discard, Cqe, OpKey, Ring, Setup, IGNORE, POOL_GROW, WAKE};

impl Ring {
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
    pub(super) fn reap(&mut self) -> usize {
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
                if cqueue::buffer_select(cqe.flags()).is_some() {
                    if let Some(b) = &self.bufs {
                        b.note_taken();
                    }
                }
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
                    k => {
                        if let Some(key) = OpKey::from_raw(k) {
                            self.complete(key, batch[i]);
                        }
                    }
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
        s.push_result(cqe);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Gives the buffer pool's memory back to the OS if every buffer is back in the ring (an
    /// idle worker after a burst: see `BufRing::release_if_idle`). Only under DEFER_TASKRUN,
    /// with the completion queue drained and nothing in the kernel's overflow list: then the
    /// kernel fills buffers only inside this worker's own `io_uring_enter` (receives on
    /// sockets are poll-driven; none is handed to an io-wq thread), and every buffer it has
    /// taken so far was named by a completion already counted. (Without
    /// DEFER_TASKRUN, completion work may run whenever this thread returns to user space, so
    /// a buffer could be filled between the check and the release.) `true` if it released.
    pub fn release_idle_pool(&mut self) -> bool {
        if self.setup != Setup::DeferTaskrun
            || !self.ring.completion().is_empty()
            || self.ring.submission().cq_overflow()
        {
            return false;
        }
        self.bufs.as_ref().is_some_and(|b| b.release_if_idle())
    }

    /// Resident bytes of the buffer pool, for tests.
    #[cfg(test)]
    pub fn pool_resident_bytes(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.resident_bytes())
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
                let sqe = opcode::AsyncCancel::new(key.raw())
                    .build()
                    .user_data(IGNORE);
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
