//! Active health checks: one task per upstream with `check != none` probes every backend the
//! table lists as active, every `interval`, each probe bounded by `timeout`; `fall`
//! consecutive failures mark a backend down, `rise` consecutive successes mark it up again.
//! The verdict goes to [`BackendStats::set_health_up`](crate::balance::BackendStats), which
//! the data plane reads on every pick. Passive health (`max_fails` / `fail_timeout`) lives in
//! `balance` and the proxy; the two combine (a backend takes connections only if both agree).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::probe::probe;
use crate::balance::{self, BackendState};
use crate::config::{CheckKind, UpstreamConfig};

/// Rise/fall counting for one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tracker {
    pub up: bool,
    /// Consecutive results against the current state (successes while down, failures while up).
    streak: u32,
}

impl Tracker {
    pub fn new(start_up: bool) -> Self {
        Tracker {
            up: start_up,
            streak: 0,
        }
    }

    /// Records one probe result; returns the new state when it flips.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise }.max(1);
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

pub(super) struct HealthTask {
    cfg: Arc<UpstreamConfig>,
    lb: Arc<balance::Upstream>,
    /// `[upstream.tls]`: probes handshake like the data path does.
    tls: Option<Arc<crate::tls::UpstreamTls>>,
}

impl HealthTask {
    /// `None` when the upstream has no active check.
    pub fn new(
        cfg: Arc<UpstreamConfig>,
        lb: Arc<balance::Upstream>,
        tls: Option<Arc<crate::tls::UpstreamTls>>,
    ) -> Option<HealthTask> {
        (cfg.health.check != CheckKind::None).then_some(HealthTask { cfg, lb, tls })
    }

    pub async fn run(self) {
        let h = &self.cfg.health;
        let up_name = &self.cfg.name;
        let mut trackers: HashMap<Arc<str>, Tracker> = HashMap::new();
        let mut interval = tokio::time::interval(h.interval.max(super::schedule::HARD_FLOOR));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let table = self.lb.load_full();
            trackers.retain(|name, _| table.index_of(name).is_some());
            let mut probes = JoinSet::new();
            for b in table
                .backends()
                .iter()
                .filter(|b| b.state() == BackendState::Active)
            {
                let name: Arc<str> = b.spec().name.clone();
                trackers.entry(name.clone()).or_insert_with(|| {
                    b.stats().set_health_up(h.start_up);
                    Tracker::new(h.start_up)
                });
                let (kind, addr, timeout) = (h.check, b.addr(), h.timeout);
                let (path, host) = (h.path.clone(), h.host.clone());
                let stats = b.stats().clone();
                let tls = self.tls.clone();
                probes.spawn(async move {
                    let to = (&*name, addr);
                    let r = tokio::time::timeout(
                        timeout,
                        probe(kind, to, &path, host.as_deref(), tls.as_deref()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                    (name, addr, stats, r)
                });
            }
            while let Some(done) = probes.join_next().await {
                let Ok((name, addr, stats, result)) = done else {
                    continue;
                };
                let Some(t) = trackers.get_mut(&name) else {
                    continue;
                };
                match t.record(result.is_ok(), h.rise, h.fall) {
                    Some(true) => {
                        tracing::info!(upstream = %up_name, backend = %name, %addr, check = ?h.check, "backend up (active health)");
                        stats.set_health_up(true);
                    }
                    Some(false) => {
                        let reason = result.err().unwrap_or_default();
                        tracing::warn!(upstream = %up_name, backend = %name, %addr, check = ?h.check, %reason, "backend down (active health)");
                        stats.set_health_up(false);
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_then_rise() {
        let mut t = Tracker::new(true);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(
            t.record(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), Some(false));
        assert!(!t.up);
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(
            t.record(false, 2, 3),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(t.record(true, 2, 3), Some(true));
    }

    #[test]
    fn start_down_needs_rise_and_zero_counts_as_one() {
        let mut t = Tracker::new(false);
        assert_eq!(t.record(true, 0, 0), Some(true));
        assert_eq!(t.record(false, 0, 0), Some(false));
    }
}
