//! DNS counters for the admin listener (`dns_updates{upstream,result}`), one set of atomics
//! per upstream name, kept for the life of the process so a reload does not reset them.
//!
//! Read them with [`dns_stats`]`().snapshot()`; discovery writes them from the control
//! runtime only, so the registry lock is never contended by the data plane.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

/// The `result` label of `dns_updates`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupResult {
    /// The answer differed from the last good one for that name.
    Changed,
    Unchanged,
    /// NXDOMAIN / no records (a hold started, or ran out and the name was removed).
    Negative,
    /// Timeout, SERVFAIL, refused: the last good answer was kept.
    Error,
}

impl LookupResult {
    pub const ALL: [LookupResult; 4] = [
        LookupResult::Changed,
        LookupResult::Unchanged,
        LookupResult::Negative,
        LookupResult::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LookupResult::Changed => "changed",
            LookupResult::Unchanged => "unchanged",
            LookupResult::Negative => "negative",
            LookupResult::Error => "error",
        }
    }
}

/// Counters of one upstream.
#[derive(Debug, Default)]
pub struct UpstreamDnsStats {
    lookups: [AtomicU64; 4],
    publishes: AtomicU64,
}

impl UpstreamDnsStats {
    pub(super) fn count(&self, r: LookupResult) {
        self.lookups[r as usize].fetch_add(1, Relaxed);
    }

    pub(super) fn count_publish(&self) {
        self.publishes.fetch_add(1, Relaxed);
    }

    /// Lookups that ended with `r`.
    pub fn lookups(&self, r: LookupResult) -> u64 {
        self.lookups[r as usize].load(Relaxed)
    }

    /// New backend sets published to the upstream's table.
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Relaxed)
    }
}

/// Every upstream's DNS counters, by upstream name.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    by_upstream: Mutex<BTreeMap<Arc<str>, Arc<UpstreamDnsStats>>>,
}

impl DiscoveryStats {
    /// The counters of `upstream`, created on first use.
    pub fn upstream(&self, upstream: &Arc<str>) -> Arc<UpstreamDnsStats> {
        let mut m = self.by_upstream.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(upstream.clone()).or_default().clone()
    }

    /// `(upstream, counters)` for every upstream that ever used DNS discovery, by name.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Arc<UpstreamDnsStats>)> {
        let m = self.by_upstream.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The process's DNS counters (one discovery per process).
pub fn dns_stats() -> &'static DiscoveryStats {
    static STATS: OnceLock<DiscoveryStats> = OnceLock::new();
    STATS.get_or_init(DiscoveryStats::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_upstream_and_label() {
        let s = DiscoveryStats::default();
        let a = s.upstream(&Arc::from("a"));
        a.count(LookupResult::Changed);
        a.count(LookupResult::Error);
        a.count(LookupResult::Error);
        s.upstream(&Arc::from("a")).count_publish();
        let snap = s.snapshot();
        assert_eq!(snap.len(), 1);
        let got: Vec<u64> = LookupResult::ALL
            .iter()
            .map(|r| snap[0].1.lookups(*r))
            .collect();
        assert_eq!(got, [1, 0, 0, 2]);
        assert_eq!(snap[0].1.publishes(), 1);
    }
}
