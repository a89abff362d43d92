//! Drain deadlines of removed backends (`drain_timeout`): when a backend leaves the
//! discovered set, discovery records "close its tunnels at T" here; the proxy reads it.
//!
//! The proxy cannot act on it yet (it does not own this module and has no hook): the intended
//! use is for a long tunnel to check, on its idle tick, `drains().epoch()` against the epoch it
//! saw last — one atomic load, no lock — and only when it moved, look its backend up with
//! [`DrainBook::deadline_ms`] (one `ArcSwap` load and a hash lookup) and close itself once
//! `balance::now_ms()` passes the deadline. A backend that comes back clears its deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

type Map = HashMap<(Arc<str>, Arc<str>), u64>;

/// Deadlines by `(upstream, backend name)`, in [`crate::balance::now_ms`] milliseconds.
#[derive(Default)]
pub struct DrainBook {
    map: ArcSwap<Map>,
    /// Serialises writers (the control runtime only); readers never take it.
    write: Mutex<()>,
    epoch: AtomicU64,
}

impl DrainBook {
    /// Changes on every `set`/`clear` that changed something; start at 0.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// When tunnels to `backend` of `upstream` must be closed, if it is draining with a
    /// deadline.
    pub fn deadline_ms(&self, upstream: &str, backend: &str) -> Option<u64> {
        let map = self.map.load();
        // Linear in the number of draining backends, which is small; avoids allocating a key.
        map.iter()
            .find(|((u, b), _)| &**u == upstream && &**b == backend)
            .map(|(_, at)| *at)
    }

    pub(super) fn set(&self, upstream: &Arc<str>, backend: &Arc<str>, at_ms: u64) {
        self.update(|m| m.insert((upstream.clone(), backend.clone()), at_ms) != Some(at_ms));
    }

    pub(super) fn clear(&self, upstream: &Arc<str>, backend: &Arc<str>) {
        if self.deadline_ms(upstream, backend).is_some() {
            self.update(|m| m.remove(&(upstream.clone(), backend.clone())).is_some());
        }
    }

    /// Forgets deadlines that passed more than `grace_ms` ago (their tunnels are closed).
    pub(super) fn purge(&self, now_ms: u64, grace_ms: u64) {
        if self
            .map
            .load()
            .values()
            .any(|at| at.saturating_add(grace_ms) < now_ms)
        {
            self.update(|m| {
                let n = m.len();
                m.retain(|_, at| at.saturating_add(grace_ms) >= now_ms);
                m.len() != n
            });
        }
    }

    fn update(&self, f: impl FnOnce(&mut Map) -> bool) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Map::clone(&self.map.load());
        if f(&mut next) {
            self.map.store(Arc::new(next));
            self.epoch.fetch_add(1, Ordering::Release);
        }
    }
}

/// The process's drain deadlines.
pub fn drains() -> &'static DrainBook {
    static BOOK: OnceLock<DrainBook> = OnceLock::new();
    BOOK.get_or_init(DrainBook::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_purge_move_the_epoch() {
        let b = DrainBook::default();
        let (u, x): (Arc<str>, Arc<str>) = (Arc::from("chat"), Arc::from("chat-1"));
        assert_eq!(b.deadline_ms("chat", "chat-1"), None);
        b.set(&u, &x, 5_000);
        assert_eq!(
            (b.deadline_ms("chat", "chat-1"), b.epoch()),
            (Some(5_000), 1)
        );
        b.set(&u, &x, 5_000);
        assert_eq!(b.epoch(), 1, "no change, no new epoch");
        b.purge(6_000, 10_000);
        assert_eq!(b.deadline_ms("chat", "chat-1"), Some(5_000), "within grace");
        b.purge(20_000, 10_000);
        assert_eq!((b.deadline_ms("chat", "chat-1"), b.epoch()), (None, 2));
        b.set(&u, &x, 7_000);
        b.clear(&u, &x);
        assert_eq!((b.deadline_ms("chat", "chat-1"), b.epoch()), (None, 4));
    }
}
