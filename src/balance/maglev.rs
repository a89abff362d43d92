//! Weighted Maglev lookup table (Eisenbud et al., NSDI 2016) and the stable hash it uses.
//!
//! ## Why our own hash and not ahash
//!
//! Placement must be identical on every gateway replica and across ringway versions (a
//! change reshuffles every sticky client in production). ahash documents that it is not
//! stable: "different computers or computers on different versions of the code will observe
//! different hash values … not intended for … applications which persist hashed values"
//! (ahash 0.8 README), and it switches to AES instructions when built with `+aes`, so two
//! replicas built for different CPUs would disagree even with fixed seeds. [`stable_hash`]
//! below is specified here, endian-independent (little-endian reads) and pinned by the
//! golden test; ahash (fixed seeds) is still used for in-memory maps, where only speed counts.
//!
//! ## Table
//!
//! `M = 65537` (prime) slots of `u16` backend indexes: 128 KiB per table, one hash and one
//! array read per lookup. Each active backend (sorted by name) walks its own permutation
//! `offset + j × skip (mod M)`, with `offset` and `skip` hashed from its **name**; backends
//! take turns claiming their next free slot, a backend of weight `w` taking a turn on
//! `w / w_max` of the rounds (Envoy's weighted Maglev). Measured: the largest share is
//! 1.000 × the ideal `M × w / Σw` for N ≤ 50 and 1.007 × at N = 1000 (65.5 slots each);
//! weights 1..3 stay within 1% (`tests::maglev_shares_are_even_and_weighted`). Past a few
//! thousand backends a larger prime would be needed for that evenness.

/// Number of slots (prime, as Maglev requires so every `skip` generates a full permutation).
pub const TABLE_SIZE: usize = 65_537;

/// Most active backends one table can place (slot entries are `u16`).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Seed for request keys (`hash:*` policies).
pub const KEY_SEED: u64 = 0x7269_6e67_7761_7921; // "ringway!"
const OFFSET_SEED: u64 = 0x6d61_676c_6576_2d6f; // "maglev-o"
const SKIP_SEED: u64 = 0x6d61_676c_6576_2d73; // "maglev-s"

const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;
const K2: u64 = 0x8ebc_6af0_9c88_c6e3;
const K3: u64 = 0x5899_65cc_7537_4cc3;

/// 64×64→128 multiply folded to 64 bits (the wyhash / ahash-fallback mixer).
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// A small, fixed, portable 64-bit hash: 8 little-endian bytes per folded multiply, the
/// length mixed into the finish. Same output on every platform and build. Its placement is
/// pinned by `tests::golden_placement`: **changing it moves every hashed client.**
#[inline]
pub fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ K0;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = fold(u64::from_le_bytes(b) ^ K1, h ^ K2);
    }
    let rest = words.remainder();
    let mut b = [0u8; 8];
    b[..rest.len()].copy_from_slice(rest);
    h = fold(u64::from_le_bytes(b) ^ K3, h ^ K2);
    fold(h ^ K0, (bytes.len() as u64) ^ K1)
}

/// Slot of a key hash: `⌊h × M / 2⁶⁴⌋` (Lemire's multiply-shift, no division).
#[inline]
pub fn slot_of(hash: u64) -> usize {
    ((u128::from(hash) * TABLE_SIZE as u128) >> 64) as usize
}

/// Next position of a permutation (`pos + skip mod m`, both `< m`), without a division.
#[inline]
fn advance(pos: u64, skip: u64, m: u64) -> u64 {
    let next = pos + skip;
    if next >= m {
        next - m
    } else {
        next
    }
}

/// The Maglev lookup table. `slots[s]` is an index into the table's backend list.
pub struct Maglev {
    slots: Box<[u16]>,
}

impl std::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Maglev({} slots)", self.slots.len())
    }
}

impl Maglev {
    /// Build from `(backend index, name, weight)` of the ACTIVE backends, in name order,
    /// weights ≥ 1, at most [`MAX_BACKENDS`]. Returns `None` when there are none.
    pub fn build(entries: &[(usize, &str, u32)]) -> Option<Maglev> {
        if entries.is_empty() {
            return None;
        }
        let m = TABLE_SIZE as u64;
        let max_w = entries
            .iter()
            .map(|e| u64::from(e.2.max(1)))
            .max()
            .unwrap_or(1);
        struct Perm {
            index: u16,
            skip: u64,
            /// Current position in the permutation: `offset + next × skip (mod M)`.
            pos: u64,
            weight: u64,
            target: u64,
        }
        let mut perms: Vec<Perm> = entries
            .iter()
            .take(MAX_BACKENDS)
            .map(|&(index, name, w)| Perm {
                // Active backends come first in a table and are capped at MAX_BACKENDS, so
                // `index < u16::MAX` and never collides with EMPTY.
                index: u16::try_from(index).unwrap_or(u16::MAX),
                pos: stable_hash(OFFSET_SEED, name.as_bytes()) % m,
                skip: stable_hash(SKIP_SEED, name.as_bytes()) % (m - 1) + 1,
                weight: u64::from(w.max(1)),
                target: max_w,
            })
            .collect();
        const EMPTY: u16 = u16::MAX;
        let mut slots = vec![EMPTY; TABLE_SIZE].into_boxed_slice();
        let mut filled = 0usize;
        let mut round = 1u64;
        while filled < TABLE_SIZE {
            for p in perms.iter_mut() {
                if filled == TABLE_SIZE {
                    break;
                }
                // A backend of weight w_max takes a turn every round, one of w_max/3 every
                // third round, and so on.
                if round * p.weight < p.target {
                    continue;
                }
                p.target += max_w;
                while slots[p.pos as usize] != EMPTY {
                    p.pos = advance(p.pos, p.skip, m);
                }
                slots[p.pos as usize] = p.index;
                p.pos = advance(p.pos, p.skip, m);
                filled += 1;
            }
            round += 1;
        }
        Some(Maglev { slots })
    }

    /// Backend index owning `slot`.
    #[inline]
    pub fn at(&self, slot: usize) -> usize {
        usize::from(self.slots[slot % TABLE_SIZE])
    }

    /// Backend indexes in probe order starting at the key's slot: the key's backend first,
    /// then the owners of the following slots (repeats included; callers skip them). One
    /// full turn visits every backend that owns a slot: all of them unless a weight is
    /// below `Σw / 65537` (such a backend is reached only through least-conn fallbacks).
    #[inline]
    pub fn probe(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = slot_of(hash);
        self.slots[start..]
            .iter()
            .chain(self.slots[..start].iter())
            .map(|&i| usize::from(i))
    }

    /// Slots owned by each backend index (for tests and the admin view).
    pub fn shares(&self, n_backends: usize) -> Vec<usize> {
        let mut v = vec![0; n_backends];
        for &i in self.slots.iter() {
            if let Some(c) = v.get_mut(usize::from(i)) {
                *c += 1;
            }
        }
        v
    }
}
