//! One task per DNS-discovered upstream: queries each name when it is due (see
//! [`schedule`](super::schedule)), rebuilds the backend set from the last good answers and
//! publishes it to the upstream's table only when it changed.
//!
//! Identities (what placement, cookies and stats are keyed on):
//! - `dns`: the host name as written (`chat-0.chat-headless.ns.svc.cluster.local`); the same
//!   host listed twice with different ports becomes `host:port`. A name with several addresses
//!   connects to the smallest one (IPv4 before IPv6), so every replica agrees.
//! - `dns_service`: the address `ip:port` of each record (records carry no names).
//! - `srv`: each target host name (trailing dot removed), port from the SRV record, address
//!   = the target's smallest A/AAAA. SRV priority and weight are not used (Kubernetes gives
//!   every pod the same ones); each target has weight 1.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::resolve::{self, Resolver};
use super::schedule::{first_sorted, Answer, Change, NameState, Timing};
use super::stats::{LookupResult, UpstreamDnsStats};
use crate::balance::{self, BackendSpec};
use crate::config::{CheckKind, Discovery, UpstreamConfig};

/// What to resolve, derived once from the upstream's config.
enum Source {
    /// `(host, port, identity)` per pod name.
    Names(Vec<(String, u16, Arc<str>)>),
    Service {
        host: String,
        port: u16,
    },
    Srv(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Srv,
    Host(String),
}

enum Reply {
    Ips(Answer<Vec<IpAddr>>),
    Srv(Answer<Vec<(String, u16)>>),
}

/// The backend-set half of an upstream's discovery.
pub(super) struct DnsTask {
    cfg: Arc<UpstreamConfig>,
    lb: Arc<balance::Upstream>,
    stats: Arc<UpstreamDnsStats>,
}

struct State {
    source: Source,
    timing: Timing,
    hosts: BTreeMap<String, NameState<Vec<IpAddr>>>,
    srv: Option<NameState<Vec<(String, u16)>>>,
    published: Option<Vec<BackendSpec>>,
}

impl DnsTask {
    /// `None` for a static upstream (runtime publishes those on load and reload).
    pub(super) fn new(
        cfg: Arc<UpstreamConfig>,
        lb: Arc<balance::Upstream>,
        stats: Arc<UpstreamDnsStats>,
    ) -> Option<DnsTask> {
        (!matches!(cfg.discovery, Discovery::Static(_))).then_some(DnsTask { cfg, lb, stats })
    }

    pub(super) async fn run(self) {
        let name = self.cfg.name.clone();
        let resolver = {
            let mut failures = 0u32;
            loop {
                match resolve::build(self.cfg.dns.resolver) {
                    Ok(r) => break r,
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::error!(upstream = %name, error = %e, "cannot set up the DNS resolver; retrying");
                        }
                        tokio::time::sleep(timing(&self.cfg).backoff(failures)).await;
                    }
                }
            }
        };
        let now = Instant::now();
        let mut st = State {
            source: source(&self.cfg.discovery),
            timing: timing(&self.cfg),
            hosts: BTreeMap::new(),
            srv: None,
            published: None,
        };
        match &st.source {
            Source::Names(list) => {
                for (h, _, _) in list {
                    st.hosts.insert(h.clone(), NameState::new(now));
                }
            }
            Source::Service { host, .. } => {
                st.hosts.insert(host.clone(), NameState::new(now));
            }
            Source::Srv(_) => st.srv = Some(NameState::new(now)),
        }
        self.event_loop(resolver, st).await;
    }

    async fn event_loop(&self, resolver: Resolver, mut st: State) {
        let mut inflight: JoinSet<(Key, Reply)> = JoinSet::new();
        let mut pending: HashSet<Key> = HashSet::new();
        loop {
            let now = Instant::now();
            let mut next = None::<Instant>;
            for (key, due) in st.due_times() {
                if pending.contains(&key) {
                    continue;
                }
                if due <= now {
                    pending.insert(key.clone());
                    let r = resolver.clone();
                    let srv_name = match &st.source {
                        Source::Srv(n) => n.clone(),
                        _ => String::new(),
                    };
                    inflight.spawn(async move {
                        let reply = match &key {
                            Key::Srv => Reply::Srv(resolve::lookup_srv(&r, &srv_name).await),
                            Key::Host(h) => Reply::Ips(resolve::lookup_ips(&r, h).await),
                        };
                        (key, reply)
                    });
                } else {
                    next = Some(next.map_or(due, |n: Instant| n.min(due)));
                }
            }
            let sleep_until = next.unwrap_or(now + std::time::Duration::from_secs(3600));
            tokio::select! {
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    let Ok((key, reply)) = done else { continue };
                    pending.remove(&key);
                    self.apply(&mut st, key, reply, Instant::now());
                    self.maybe_publish(&mut st, pending.is_empty());
                }
                _ = tokio::time::sleep_until(sleep_until.into()) => {}
            }
        }
    }

    fn apply(&self, st: &mut State, key: Key, reply: Reply, now: Instant) {
        let up = &*self.cfg.name;
        let (change, failures, label) = match (&key, reply) {
            (Key::Host(h), Reply::Ips(a)) => {
                let Some(s) = st.hosts.get_mut(h) else { return };
                let was_failing = s.failures;
                let c = s.apply(a, now, &st.timing);
                (c, (was_failing, s.failures), h.as_str())
            }
            (Key::Srv, Reply::Srv(a)) => {
                let Some(s) = st.srv.as_mut() else { return };
                let was_failing = s.failures;
                let c = s.apply(a, now, &st.timing);
                let label = match &st.source {
                    Source::Srv(n) => n.as_str(),
                    _ => "",
                };
                let out = (c, (was_failing, s.failures), label);
                if matches!(c, Change::Updated | Change::Removed) {
                    let targets = st
                        .srv
                        .as_ref()
                        .and_then(|s| s.value.clone())
                        .unwrap_or_default();
                    sync_srv_targets(&mut st.hosts, &targets, now);
                }
                out
            }
            _ => return,
        };
        let hold = st.timing.nxdomain_hold;
        match change {
            Change::Updated => self.stats.count(LookupResult::Changed),
            Change::Unchanged => self.stats.count(LookupResult::Unchanged),
            Change::HoldStarted | Change::Removed => self.stats.count(LookupResult::Negative),
            Change::KeptOnFailure => self.stats.count(LookupResult::Error),
        }
        match change {
            Change::HoldStarted => tracing::warn!(
                upstream = up,
                name = label,
                ?hold,
                "name left DNS; its backends stay for the hold"
            ),
            Change::Removed => {
                tracing::info!(upstream = up, name = label, "hold expired; name removed")
            }
            Change::KeptOnFailure if failures.1 == 1 => tracing::warn!(
                upstream = up,
                name = label,
                "DNS lookup failed; keeping the last good answer and retrying with backoff"
            ),
            _ if failures.0 > 0 && failures.1 == 0 => {
                tracing::info!(upstream = up, name = label, "DNS lookup recovered")
            }
            _ => {}
        }
    }

    /// Publishes when the set changed. The first publish waits until every name has had a
    /// definitive answer, so a half-finished first round cannot shrink a table that a
    /// reload carried over; if some names keep failing it publishes what it has only when the
    /// table is empty anyway (nothing to lose).
    fn maybe_publish(&self, st: &mut State, round_done: bool) {
        let specs = st.backend_set();
        if st.published.as_ref() == Some(&specs) {
            return;
        }
        if st.published.is_none() && !st.all_answered() {
            let empty = self.lb.load().n_active() == 0;
            if !(round_done && empty && !specs.is_empty()) {
                return;
            }
        }
        let before = st.published.take().unwrap_or_default();
        self.log_and_mark(&before, &specs);
        self.lb.publish(specs.clone());
        self.stats.count_publish();
        st.published = Some(specs);
    }

    /// Logs every change once, arms or clears drain deadlines, and pre-marks new backends
    /// down when active health says they start down (before they can take a connection).
    fn log_and_mark(&self, before: &[BackendSpec], after: &[BackendSpec]) {
        let up = &self.cfg.name;
        let now = balance::now_ms();
        let starts_down = self.cfg.health.check != CheckKind::None && !self.cfg.health.start_up;
        for d in diff(before, after) {
            match d {
                Diff::Added(s) => {
                    tracing::info!(upstream = %up, backend = %s.name, addr = %s.addr, "backend added");
                    if let Some(stats) = self.lb.registry().get(&s.name) {
                        stats.set_drain_deadline(None);
                    }
                    if starts_down && self.lb.registry().get(&s.name).is_none() {
                        self.lb.registry().stats(&s.name).set_health_up(false);
                    }
                }
                Diff::Moved(old, s) => {
                    tracing::info!(upstream = %up, backend = %s.name, from = %old.addr, to = %s.addr, "backend address changed; identity kept");
                    if let Some(stats) = self.lb.registry().get(&s.name) {
                        stats.reset_passive();
                    }
                }
                Diff::Removed(s) => {
                    let deadline = self.cfg.dns.drain_timeout.map(|d| {
                        now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    });
                    tracing::info!(upstream = %up, backend = %s.name, addr = %s.addr, drain_deadline_ms = ?deadline, "backend left the set; draining (no new connections)");
                    if let Some(at) = deadline {
                        if let Some(stats) = self.lb.registry().get(&s.name) {
                            stats.set_drain_deadline(Some(at));
                        }
                    }
                }
            }
        }
    }
}

impl State {
    fn due_times(&self) -> Vec<(Key, Instant)> {
        let mut v: Vec<(Key, Instant)> = self
            .hosts
            .iter()
            .map(|(h, s)| (Key::Host(h.clone()), s.next_at))
            .collect();
        if let Some(s) = &self.srv {
            v.push((Key::Srv, s.next_at));
        }
        v
    }

    fn all_answered(&self) -> bool {
        !matches!(&self.srv, Some(s) if !s.answered) && self.hosts.values().all(|s| s.answered)
    }

    /// The backend set from the last good answers, sorted by name.
    fn backend_set(&self) -> Vec<BackendSpec> {
        let ips = |h: &str| self.hosts.get(h).and_then(|s| s.value.as_deref());
        let mut out: Vec<BackendSpec> = match &self.source {
            Source::Names(list) => list
                .iter()
                .filter_map(|(h, port, id)| {
                    let ip = first_sorted(ips(h)?)?;
                    Some(spec(id.clone(), SocketAddr::new(ip, *port)))
                })
                .collect(),
            Source::Service { host, port } => ips(host)
                .unwrap_or_default()
                .iter()
                .map(|ip| {
                    let addr = SocketAddr::new(*ip, *port);
                    spec(Arc::from(addr.to_string()), addr)
                })
                .collect(),
            Source::Srv(_) => {
                let targets = self.srv.as_ref().and_then(|s| s.value.as_deref());
                targets
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|(h, port)| {
                        let ip = first_sorted(ips(h)?)?;
                        Some(spec(Arc::from(h.as_str()), SocketAddr::new(ip, *port)))
                    })
                    .collect()
            }
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        out
    }
}

/// Keeps one host entry per SRV target: new targets are queried at once, dropped ones forgotten.
fn sync_srv_targets(
    hosts: &mut BTreeMap<String, NameState<Vec<IpAddr>>>,
    targets: &[(String, u16)],
    now: Instant,
) {
    hosts.retain(|h, _| targets.iter().any(|(t, _)| t == h));
    for (t, _) in targets {
        hosts
            .entry(t.clone())
            .or_insert_with(|| NameState::new(now));
    }
}

fn spec(name: Arc<str>, addr: SocketAddr) -> BackendSpec {
    BackendSpec {
        name,
        addr,
        weight: 1,
    }
}

fn timing(cfg: &UpstreamConfig) -> Timing {
    Timing {
        min_ttl: cfg.dns.min_ttl,
        max_ttl: cfg.dns.max_ttl,
        negative_ttl: cfg.dns.negative_ttl,
        nxdomain_hold: cfg.dns.nxdomain_hold,
    }
}

fn source(d: &Discovery) -> Source {
    match d {
        Discovery::Dns(list) => Source::Names(
            list.iter()
                .map(|(h, p)| {
                    let dup = list.iter().filter(|(o, _)| o == h).count() > 1;
                    let id = if dup { format!("{h}:{p}") } else { h.clone() };
                    (h.clone(), *p, Arc::from(id.trim_end_matches('.')))
                })
                .collect(),
        ),
        Discovery::DnsService { host, port } => Source::Service {
            host: host.clone(),
            port: *port,
        },
        Discovery::Srv(name) => Source::Srv(name.clone()),
        Discovery::Static(_) => Source::Names(Vec::new()),
    }
}

/// One difference between two backend sets (both sorted by name).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Diff<'a> {
    Added(&'a BackendSpec),
    /// Same identity, new address: a restarted pod.
    Moved(&'a BackendSpec, &'a BackendSpec),
    Removed(&'a BackendSpec),
}

pub(super) fn diff<'a>(before: &'a [BackendSpec], after: &'a [BackendSpec]) -> Vec<Diff<'a>> {
    let mut out = Vec::new();
    for b in after {
        match before.iter().find(|o| o.name == b.name) {
            None => out.push(Diff::Added(b)),
            Some(o) if o.addr != b.addr || o.weight != b.weight => out.push(Diff::Moved(o, b)),
            Some(_) => {}
        }
    }
    for o in before {
        if !after.iter().any(|b| b.name == o.name) {
            out.push(Diff::Removed(o));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, addr: &str) -> BackendSpec {
        spec(Arc::from(name), addr.parse().unwrap())
    }

    #[test]
    fn diff_reports_added_moved_removed() {
        let before = [
            s("a", "10.0.0.1:80"),
            s("b", "10.0.0.2:80"),
            s("c", "10.0.0.3:80"),
        ];
        let after = [
            s("a", "10.0.0.1:80"),
            s("b", "10.0.0.9:80"),
            s("d", "10.0.0.4:80"),
        ];
        let d = diff(&before, &after);
        assert_eq!(
            d,
            vec![
                Diff::Moved(&before[1], &after[1]),
                Diff::Added(&after[2]),
                Diff::Removed(&before[2]),
            ]
        );
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn identities_follow_the_source() {
        let now = Instant::now();
        let t = Timing {
            min_ttl: std::time::Duration::from_secs(1),
            max_ttl: std::time::Duration::from_secs(30),
            negative_ttl: std::time::Duration::from_secs(5),
            nxdomain_hold: std::time::Duration::from_secs(10),
        };
        let ttl = std::time::Duration::from_secs(5);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut st = State {
            source: source(&Discovery::Dns(vec![
                ("chat-0.svc.".into(), 3000),
                ("chat-1.svc".into(), 3000),
            ])),
            timing: t,
            hosts: BTreeMap::new(),
            srv: None,
            published: None,
        };
        for h in ["chat-0.svc.", "chat-1.svc"] {
            st.hosts.insert(h.into(), NameState::new(now));
        }
        assert!(!st.all_answered());
        st.hosts.get_mut("chat-0.svc.").unwrap().apply(
            Answer::Found(vec![ip("10.0.0.7"), ip("10.0.0.5")], ttl),
            now,
            &t,
        );
        assert_eq!(
            st.backend_set(),
            vec![s("chat-0.svc", "10.0.0.5:3000")],
            "smallest address; chat-1 unresolved"
        );

        st.source = Source::Service {
            host: "svc".into(),
            port: 80,
        };
        st.hosts.insert("svc".into(), NameState::new(now));
        st.hosts.get_mut("svc").unwrap().apply(
            Answer::Found(vec![ip("10.0.0.2"), ip("10.0.0.1")], ttl),
            now,
            &t,
        );
        assert_eq!(
            st.backend_set(),
            vec![
                s("10.0.0.1:80", "10.0.0.1:80"),
                s("10.0.0.2:80", "10.0.0.2:80")
            ]
        );

        st.source = Source::Srv("_ws._tcp.svc".into());
        let mut srv = NameState::new(now);
        srv.apply(
            Answer::Found(vec![("a.svc".into(), 81), ("b.svc".into(), 82)], ttl),
            now,
            &t,
        );
        st.srv = Some(srv);
        sync_srv_targets(
            &mut st.hosts,
            &[("a.svc".into(), 81), ("b.svc".into(), 82)],
            now,
        );
        assert_eq!(st.hosts.len(), 2, "entries of other names dropped");
        st.hosts
            .get_mut("a.svc")
            .unwrap()
            .apply(Answer::Found(vec![ip("10.0.0.1")], ttl), now, &t);
        assert_eq!(
            st.backend_set(),
            vec![s("a.svc", "10.0.0.1:81")],
            "b.svc not resolved yet"
        );
        assert!(!st.all_answered());
    }

    #[test]
    fn duplicate_hosts_get_port_in_identity() {
        let Source::Names(n) = source(&Discovery::Dns(vec![
            ("h".into(), 1),
            ("h".into(), 2),
            ("g".into(), 1),
        ])) else {
            panic!()
        };
        let ids: Vec<&str> = n.iter().map(|(_, _, id)| &**id).collect();
        assert_eq!(ids, ["h:1", "h:2", "g"]);
    }
}
