//! Timers of the ring runtime: an ordered map of (deadline, sequence) → waker. The loop fires
//! what is due before each `io_uring_enter` and uses the nearest deadline as the wait's timeout.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::with;

#[derive(Default)]
pub(super) struct Timers {
    map: RefCell<BTreeMap<(Instant, u64), Waker>>,
    seq: Cell<u64>,
}

impl Timers {
    pub(super) fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Wakes every timer that is due; returns the next deadline.
    pub(super) fn fire(&self) -> Option<Instant> {
        let mut due = Vec::new();
        let next = {
            let mut map = self.map.borrow_mut();
            let first = *map.keys().next()?;
            let now = Instant::now();
            if first.0 <= now {
                while let Some(e) = map.first_entry() {
                    if e.key().0 > now {
                        break;
                    }
                    due.push(e.remove());
                }
            }
            map.keys().next().map(|k| k.0)
        };
        for w in due {
            w.wake();
        }
        next
    }

    fn insert(&self, at: Instant, waker: Waker) -> u64 {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        self.map.borrow_mut().insert((at, seq), waker);
        seq
    }

    /// Re-registers the waker of a pending timer; false if it already fired.
    fn update(&self, at: Instant, seq: u64, waker: &Waker) -> bool {
        match self.map.borrow_mut().get_mut(&(at, seq)) {
            Some(w) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                true
            }
            None => false,
        }
    }

    fn remove(&self, at: Instant, seq: u64) {
        self.map.borrow_mut().remove(&(at, seq));
    }
}

/// Resolves at its deadline. Registered on first poll; unregistered when dropped.
pub struct Sleep {
    at: Instant,
    seq: u64,
}

pub fn sleep(dur: Duration) -> Sleep {
    sleep_until(Instant::now() + dur)
}

pub fn sleep_until(at: Instant) -> Sleep {
    Sleep { at, seq: 0 }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (at, seq) = (self.at, self.seq);
        if Instant::now() >= at {
            if seq != 0 {
                with(|rt| rt.timers.remove(at, seq));
                self.seq = 0;
            }
            return Poll::Ready(());
        }
        let registered = seq != 0 && with(|rt| rt.timers.update(at, seq, cx.waker())) == Some(true);
        if !registered {
            self.seq = with(|rt| rt.timers.insert(at, cx.waker().clone())).unwrap_or(0);
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if self.seq != 0 {
            with(|rt| rt.timers.remove(self.at, self.seq));
        }
    }
}
