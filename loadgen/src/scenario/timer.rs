//! A precise sleep for the open-loop schedule.
//!
//! tokio's timer wheel has millisecond resolution and rounds up, so a message due at
//! t would go out up to 1 ms late; measured from the intended time, that lateness of the
//! load generator would be charged to the target (an early run showed a 1.2 ms p50 where
//! the closed loop showed 0.1 ms). Here one background thread keeps a heap of deadlines and
//! sleeps on a condition variable with an absolute timeout, with its timer slack set to 1 ns,
//! then wakes the task; the remaining error is the thread wake-up plus tokio's scheduling
//! (tens of µs), not a millisecond.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

struct Entry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: the earliest deadline is the top of the max-heap.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

fn shared() -> &'static Shared {
    static TIMER: OnceLock<Shared> = OnceLock::new();
    TIMER.get_or_init(|| {
        let s: Shared = Arc::default();
        let t = s.clone();
        std::thread::Builder::new()
            .name("loadgen-timer".into())
            .spawn(move || run(t))
            .expect("spawning the timer thread");
        s
    })
}

fn run(s: Shared) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let (lock, cv) = &*s;
    let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while st.heap.peek().is_some_and(|e| e.at <= now) {
            if let Some(e) = st.heap.pop() {
                due.push(e.waker);
            }
        }
        if !due.is_empty() {
            drop(st);
            due.into_iter().for_each(Waker::wake);
            st = lock.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        st = match st.heap.peek().map(|e| e.at) {
            Some(at) => {
                cv.wait_timeout(st, at.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => cv.wait(st).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Completes at `at` (within tens of µs), without blocking a runtime thread.
pub fn sleep_until(at: Instant) -> PreciseSleep {
    PreciseSleep { at }
}

pub struct PreciseSleep {
    at: Instant,
}

impl Future for PreciseSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        // Register on every pending poll (the waker may have changed); a stale entry
        // only costs one extra wake.
        let (lock, cv) = &**shared();
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.seq += 1;
        let seq = st.seq;
        let earliest = match st.heap.peek() {
            Some(e) => self.at < e.at,
            None => true,
        };
        st.heap.push(Entry {
            at: self.at,
            seq,
            waker: cx.waker().clone(),
        });
        drop(st);
        if earliest {
            cv.notify_one();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_end_at_or_after_their_deadline_in_order() {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for ms in [30u64, 10, 20] {
            let at = t0 + std::time::Duration::from_millis(ms);
            tasks.push(tokio::spawn(async move {
                sleep_until(at).await;
                assert!(Instant::now() >= at);
                ms
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
