//! A ketama-style ring, kept only as the baseline of the Maglev comparison
//! (`tests::maglev_vs_ring`): `POINTS` points per unit weight, each at
//! `stable_hash(name || '#' || i)`, sorted; a key goes to the first point at or after its hash.

use super::maglev::stable_hash;

pub const POINTS: u32 = 160;
const RING_SEED: u64 = 0x6b65_7461_6d61_2121; // "ketama!!"

pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// `(backend index, name, weight)`.
    pub fn build(entries: &[(usize, &str, u32)]) -> Ring {
        let mut points = Vec::new();
        let mut buf = Vec::new();
        for &(index, name, w) in entries {
            for i in 0..POINTS * w.max(1) {
                buf.clear();
                buf.extend_from_slice(name.as_bytes());
                buf.push(b'#');
                buf.extend_from_slice(&i.to_le_bytes());
                points.push((stable_hash(RING_SEED, &buf), index as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn lookup(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|p| p.0 < hash);
        self.points[i % self.points.len()].1 as usize
    }

    pub fn memory_bytes(&self) -> usize {
        self.points.len() * std::mem::size_of::<(u64, u32)>()
    }
}
