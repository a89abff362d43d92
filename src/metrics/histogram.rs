//! A fixed-bucket histogram written by one worker (plain relaxed stores) and summed across
//! workers at scrape time. Buckets are upper bounds in microseconds (Prometheus `le`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::bump;

/// Head parse: sub-microsecond to a few hundred µs.
pub const PARSE_BUCKETS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 1000];
/// Backend connect: loopback tens of µs to seconds.
pub const CONNECT_BUCKETS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000, 5_000_000,
];
/// Response time of a plain HTTP exchange (request head sent to response relayed): a
/// millisecond to a minute, like the default buckets of most HTTP servers' histograms.
pub const RESPONSE_BUCKETS: &[u64] = &[
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 60_000_000,
];
/// Tunnel lifetime: a second to a day.
pub const LIFETIME_BUCKETS: &[u64] = &[
    1_000_000,
    10_000_000,
    60_000_000,
    600_000_000,
    3_600_000_000,
    21_600_000_000,
    86_400_000_000,
];

pub struct Histogram {
    bounds: &'static [u64],
    /// One count per bound plus the +Inf bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// Summed, cumulative view for rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [u64],
    /// Cumulative counts per bound (Prometheus semantics), last = +Inf = total count.
    pub cumulative: Vec<u64>,
    pub sum_us: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn observe_us(&self, us: u64) {
        let i = self.bounds.partition_point(|&b| b < us);
        bump(&self.counts[i], 1);
        bump(&self.sum_us, us);
    }

    /// Adds counts gathered elsewhere (one per bound plus +Inf, not cumulative, with the same
    /// bounds as this histogram) and their sum.
    #[inline]
    pub fn add_counts(&self, counts: &[u64], sum: u64) {
        for (c, &n) in self.counts.iter().zip(counts) {
            if n > 0 {
                bump(c, n);
            }
        }
        bump(&self.sum_us, sum);
    }

    pub fn sum<'a>(hs: impl Iterator<Item = &'a Histogram>) -> Option<HistogramSnapshot> {
        let mut out: Option<HistogramSnapshot> = None;
        for h in hs {
            let snap = out.get_or_insert_with(|| HistogramSnapshot {
                bounds: h.bounds,
                cumulative: vec![0; h.bounds.len() + 1],
                sum_us: 0,
            });
            let mut acc = 0;
            for (i, c) in h.counts.iter().enumerate() {
                acc += c.load(Relaxed);
                snap.cumulative[i] += acc;
            }
            snap.sum_us += h.sum_us.load(Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_summed_across_cores() {
        let a = Histogram::new(&[10, 100]);
        let b = Histogram::new(&[10, 100]);
        a.observe_us(5); // <= 10
        a.observe_us(10); // <= 10 (le is inclusive)
        b.observe_us(50); // <= 100
        b.observe_us(5000); // +Inf
        let s = Histogram::sum([&a, &b].into_iter()).unwrap();
        assert_eq!(s.cumulative, vec![2, 3, 4]);
        assert_eq!(s.sum_us, 5065);
    }
}
