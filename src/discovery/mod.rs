//! Discovery and health (control plane): keeps each upstream's table current from DNS and
//! health checks and publishes new tables; the data plane only reads them.
//!
//! Everything here runs on the control thread's current-thread runtime, never on a worker:
//! - a supervisor ([`spawn`]) watches `Shared::gen` and runs, per upstream, one DNS task
//!   ([`dns`], for `dns` / `dns_service` / `srv` discovery) and one prober ([`health`], when
//!   `check != none`). A reload that changes an upstream's discovery or health settings
//!   restarts that upstream's task; an upstream that disappears has its tasks stopped. Tables,
//!   live counts and health survive because reloads keep the same `balance::Upstream`.
//! - [`schedule`] holds the pure rules (TTL clamp, backoff, NXDOMAIN hold), unit-tested.
//!
//! For other modules:
//! - [`dns_stats`]: the `dns_updates{upstream,result}` counters and publish counts (admin).
//! - [`drains`]: drain deadlines of backends that left the set with `drain_timeout` set
//!   (the proxy's hook to close their tunnels; see [`drain`]).

mod dns;
mod health;
mod probe;
mod resolve;
pub mod schedule;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use stats::{dns_stats, DiscoveryStats, LookupResult, UpstreamDnsStats};

use crate::balance;
use crate::config::UpstreamConfig;
use crate::state::{Generation, Shared};

/// How often the supervisor looks for a new generation (a reload). Reloads are rare and a
/// second of delay before new DNS settings apply is harmless; the check is one pointer compare.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Starts discovery and health tasks on the current (control) runtime.
pub fn spawn(shared: Arc<Shared>) {
    tokio::spawn(supervise(shared));
}

/// A task aborted when dropped, so replacing or removing an entry stops its work.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What runs for one upstream, and the settings it was started with.
struct Running {
    lb: Arc<balance::Upstream>,
    cfg: Arc<UpstreamConfig>,
    dns: Option<Task>,
    health: Option<Task>,
}

async fn supervise(shared: Arc<Shared>) {
    let mut running: HashMap<Arc<str>, Running> = HashMap::new();
    let mut seen: Option<Arc<Generation>> = None;
    loop {
        let gen = shared.gen.load_full();
        if !matches!(&seen, Some(s) if Arc::ptr_eq(s, &gen)) {
            reconcile(&mut running, &gen);
            seen = Some(gen);
        }
        tokio::time::sleep(RELOAD_POLL).await;
    }
}

/// Settings whose change restarts the DNS task (health's start state is used when new
/// backends are published, so it belongs here too).
fn dns_settings_changed(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.discovery != b.discovery
        || a.dns != b.dns
        || a.health.check != b.health.check
        || a.health.start_up != b.health.start_up
}

fn reconcile(running: &mut HashMap<Arc<str>, Running>, gen: &Generation) {
    running.retain(|name, _| {
        let keep = gen.upstreams.iter().any(|u| &u.cfg.name == name);
        if !keep {
            tracing::info!(upstream = %name, "upstream removed; its discovery and health checks stop");
        }
        keep
    });
    for u in &gen.upstreams {
        let name = u.cfg.name.clone();
        let (restart_dns, restart_health) = match running.get(&name) {
            Some(r) if Arc::ptr_eq(&r.lb, &u.lb) => (
                dns_settings_changed(&r.cfg, &u.cfg),
                r.cfg.health != u.cfg.health || r.cfg.tls != u.cfg.tls,
            ),
            _ => (true, true),
        };
        let entry = running.entry(name.clone()).or_insert_with(|| Running {
            lb: u.lb.clone(),
            cfg: u.cfg.clone(),
            dns: None,
            health: None,
        });
        entry.lb = u.lb.clone();
        entry.cfg = u.cfg.clone();
        if restart_dns {
            entry.dns = None;
            let stats = dns_stats().upstream(&name);
            if let Some(t) = dns::DnsTask::new(u.cfg.clone(), u.lb.clone(), stats) {
                tracing::info!(upstream = %name, discovery = ?u.cfg.discovery, resolver = ?u.cfg.dns.resolver, "DNS discovery started");
                entry.dns = Some(Task(tokio::spawn(t.run())));
            }
        }
        if restart_health {
            entry.health = None;
            if let Some(t) = health::HealthTask::new(u.cfg.clone(), u.lb.clone(), u.tls.clone()) {
                let h = &u.cfg.health;
                tracing::info!(upstream = %name, check = ?h.check, interval = ?h.interval, rise = h.rise, fall = h.fall, start_up = h.start_up, "active health checks started");
                entry.health = Some(Task(tokio::spawn(t.run())));
            }
        }
    }
}
