//! Which backend holds a key's live connections: what lets bounded-load hashing keep a device's
//! siblings together.
//!
//! Bounded load moves a key off its backend when that backend is over the cap. Without this
//! table the move is per connection: of a device's four connections (or four devices behind
//! one NAT), some land on the key's backend and some on the overflow one, and the backend that
//! must push to "device X" holds only part of it. With it, a key that already has a live
//! connection goes where that connection is, whatever the loads; only *new* keys overflow.
//!
//! Lock-free and fixed-size, shared by every core and every table of one upstream (it lives in
//! the [`StatsRegistry`](super::StatsRegistry), so a table rebuild keeps it): [`BUCKETS`]
//! `AtomicU64` (512 KiB), allocated only for upstreams that turn bounded load on. Each bucket
//! packs `tag (24 bits) | backend id (24) | live count (16)`; a key's hash picks a home bucket
//! and the next [`PROBE`] - 1 are tried in order (open addressing). Limits, all of which fall
//! back to plain bounded load for the key concerned (never to a wrong answer about load):
//! more than about `BUCKETS × 0.7` keys with live connections at once, more than 65535 live
//! connections of one key, or two live keys sharing a 40-bit hash prefix (then they are held
//! together, as if they were siblings).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Buckets per upstream (a power of two).
pub const BUCKETS: usize = 1 << 16;
/// Buckets tried per key.
pub const PROBE: usize = 8;

const COUNT_BITS: u32 = 16;
const ID_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const ID_MASK: u64 = (1 << ID_BITS) - 1;

/// A backend's id in this table: the low 24 bits of its [`BackendStats`](super::BackendStats)
/// id (ids are handed out once per name by the registry, so a wrap needs 16 M names).
pub fn short_id(id: u64) -> u64 {
    id & ID_MASK
}

pub struct KeyHolders {
    buckets: Box<[AtomicU64]>,
}

impl std::fmt::Debug for KeyHolders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHolders({} buckets)", self.buckets.len())
    }
}

impl Default for KeyHolders {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyHolders {
    pub fn new() -> Self {
        KeyHolders {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The home bucket and tag of a key hash: the bucket from the low bits, the tag (never 0,
    /// so an empty bucket never matches) from the high ones.
    fn place(hash: u64) -> (usize, u64) {
        let home = (hash as usize) & (BUCKETS - 1);
        let tag = ((hash >> 40) & 0xff_ffff).max(1);
        (home, tag)
    }

    fn unpack(v: u64) -> (u64, u64, u64) {
        (
            v >> (COUNT_BITS + ID_BITS),
            (v >> COUNT_BITS) & ID_MASK,
            v & COUNT_MASK,
        )
    }

    fn pack(tag: u64, id: u64, count: u64) -> u64 {
        (tag << (COUNT_BITS + ID_BITS)) | ((id & ID_MASK) << COUNT_BITS) | count
    }

    /// The backend (short id) holding live connections of the key, if tracked.
    pub fn holder(&self, hash: u64) -> Option<u64> {
        let (home, tag) = Self::place(hash);
        (0..PROBE).find_map(|k| {
            let (t, id, count) =
                Self::unpack(self.buckets[(home + k) & (BUCKETS - 1)].load(Relaxed));
            (t == tag && count > 0).then_some(id)
        })
    }

    /// Counts one more live connection of the key on backend `id`. `false`: not tracked
    /// (table full around the key, count saturated, or the key is held by another backend);
    /// the caller must then not call [`KeyHolders::release`] for it.
    pub fn hold(&self, hash: u64, id: u64) -> bool {
        let (home, tag) = Self::place(hash);
        let id = short_id(id);
        // First pass: the key's own bucket, if it has one (anywhere in the probe window).
        for k in 0..PROBE {
            let b = &self.buckets[(home + k) & (BUCKETS - 1)];
            let mut cur = b.load(Relaxed);
            loop {
                let (t, held_by, count) = Self::unpack(cur);
                if t != tag || count == 0 {
                    break;
                }
                if held_by != id || count == COUNT_MASK {
                    return false;
                }
                match b.compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed) {
                    Ok(_) => return true,
                    Err(v) => cur = v,
                }
            }
        }
        // Second pass: claim the first empty bucket.
        for k in 0..PROBE {
            let b = &self.buckets[(home + k) & (BUCKETS - 1)];
            let mut cur = b.load(Relaxed);
            loop {
                let (t, held_by, count) = Self::unpack(cur);
                if count != 0 {
                    if t == tag {
                        // Another core claimed it for this key meanwhile.
                        if held_by != id || count == COUNT_MASK {
                            return false;
                        }
                        match b.compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed) {
                            Ok(_) => return true,
                            Err(v) => {
                                cur = v;
                                continue;
                            }
                        }
                    }
                    break;
                }
                match b.compare_exchange_weak(cur, Self::pack(tag, id, 1), Relaxed, Relaxed) {
                    Ok(_) => return true,
                    Err(v) => cur = v,
                }
            }
        }
        false
    }

    /// Counts one live connection of the key on `id` fewer (after a successful
    /// [`KeyHolders::hold`]). At zero the bucket is free again.
    pub fn release(&self, hash: u64, id: u64) {
        let (home, tag) = Self::place(hash);
        let id = short_id(id);
        for k in 0..PROBE {
            let b = &self.buckets[(home + k) & (BUCKETS - 1)];
            let mut cur = b.load(Relaxed);
            loop {
                let (t, held_by, count) = Self::unpack(cur);
                if t != tag || held_by != id || count == 0 {
                    break;
                }
                let next = if count == 1 { 0 } else { cur - 1 };
                match b.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                    Ok(_) => return,
                    Err(v) => cur = v,
                }
            }
        }
    }

    /// Keys with live connections (a scan: tests and the admin view only).
    pub fn tracked(&self) -> usize {
        self.buckets
            .iter()
            .filter(|b| b.load(Relaxed) & COUNT_MASK != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_release_and_holder() {
        let h = KeyHolders::new();
        assert_eq!(h.holder(42), None);
        assert!(h.hold(42, 7));
        assert!(h.hold(42, 7));
        assert_eq!(h.holder(42), Some(7));
        assert!(!h.hold(42, 8), "a key held by 7 is not also tracked on 8");
        h.release(42, 7);
        assert_eq!(h.holder(42), Some(7));
        h.release(42, 7);
        assert_eq!(h.holder(42), None);
        assert_eq!(h.tracked(), 0);
        assert!(h.hold(42, 8), "a released key can move");
    }

    #[test]
    fn colliding_homes_probe_onwards_and_fill_up() {
        let h = KeyHolders::new();
        // Same home bucket (low bits), different tags (high bits).
        let key = |n: u64| (n << 40) | 5;
        for n in 1..=PROBE as u64 {
            assert!(h.hold(key(n), n));
        }
        assert!(!h.hold(key(100), 1), "the probe window is full");
        for n in 1..=PROBE as u64 {
            assert_eq!(h.holder(key(n)), Some(n));
        }
        h.release(key(3), 3);
        assert!(h.hold(key(100), 9), "a freed bucket is reused");
        assert_eq!(h.holder(key(100)), Some(9));
        assert_eq!(h.holder(key(3)), None);
    }

    #[test]
    fn release_of_an_unknown_key_changes_nothing() {
        let h = KeyHolders::new();
        assert!(h.hold(1, 1));
        h.release(2, 1);
        h.release(1, 2);
        assert_eq!(h.holder(1), Some(1));
    }

    #[test]
    fn concurrent_holds_and_releases_balance_out() {
        use std::sync::Arc;
        let h = Arc::new(KeyHolders::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    // splitmix64 per thread; 64 keys shared by all threads, so they contend.
                    let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    let mut held = Vec::new();
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = (x % 64).wrapping_mul(0x0100_0000_0001_0001);
                        let id = key % 3 + 1; // one backend per key, as picking would give
                        if x % 3 == 0 && !held.is_empty() {
                            let (k, i) = held.swap_remove((x as usize / 3) % held.len());
                            h.release(k, i);
                        } else if h.hold(key, id) {
                            held.push((key, id));
                        }
                    }
                    for (k, i) in held {
                        h.release(k, i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.tracked(), 0, "every hold was released exactly once");
    }
}
