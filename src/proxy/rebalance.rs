//! Rebalancing (issue 12): after the backend set changes, move live tunnels so the new
//! backends get their share, without coordination between cores or replicas.
//!
//! Run by each worker's lifecycle tick (once a second) for every upstream with `rebalance`
//! configured. A moved tunnel is asked to end with [`Ending::Rebalance`] (Close 1012 for a
//! WebSocket: "service restart, reconnect"); its client reconnects and the policy places it.
//!
//! - **Hash upstreams** ([`by_placement`]): a tunnel whose key the current table places on
//!   another backend than the one it is on is moved, so `/lookup` becomes true again for every
//!   key. The registry keeps the key's hash (what the pick recorded), so this is one Maglev
//!   read per tunnel and no key bytes kept. Tunnels are left alone when they were placed
//!   without a key (the least-conn fallback of a request without one) or by another key
//!   source (a reload changed the policy's key), while the table has no
//!   backend for the key, while their own backend is down by health (they still work, and are
//!   placed right again once it is back) and while an operator drains it (the drain moves them).
//! - **Other policies** ([`by_fair_share`]): a backend holding more than `(1 + tolerance) ×`
//!   its fair share (`live connections of the upstream × weight / Σ weights` of the backends
//!   that can take connections) sheds tunnels down to its fair share, newest first (the oldest
//!   have proven stable, the newest lose least). While it is over, it is marked *shedding*:
//!   a route cookie naming it is re-placed and re-set, so cookie clients do not come back.
//! - **Rate**: every close takes a token from the upstream's [`crate::balance::Bucket`], shared
//!   by all workers: `max_per_second` is per gateway, whatever the core count.
//! - **Proportional, no coordination**: the counts are this gateway's; each core moves only its
//!   own tunnels, its share of a backend's excess in proportion to the tunnels it holds there,
//!   minus those it already asked to end. Replicas each do the same with their own tunnels.

use std::sync::Arc;
use std::time::Instant;

use crate::balance::{Policy, Table};
use crate::config::Rebalance;
use crate::metrics::MoveReason;
use crate::state::{Generation, UpstreamRt};

use super::lifecycle::{Ending, Tunnels};
use super::Worker;

/// One pass of every rebalancing upstream over this worker's tunnels.
pub(super) fn pass(w: &Worker, gen: &Generation, now_ms: u64) {
    for u in &gen.upstreams {
        let table = u.lb.load();
        let Some(cfg) = u.cfg.rebalance else {
            table
                .backends()
                .iter()
                .for_each(|b| b.stats().set_shedding(false));
            continue;
        };
        let moved = match table.policy() {
            Policy::Hash { .. } => by_placement(w.tunnels(), u, &table, cfg, now_ms),
            _ => by_fair_share(w.tunnels(), u, &table, cfg, now_ms),
        };
        for why in moved {
            u.counters.moved(w.id, why);
        }
    }
}

/// Hash upstreams: moves tunnels whose key's placement changed. Returns what it moved.
fn by_placement(
    tunnels: &Tunnels,
    u: &UpstreamRt,
    table: &Table,
    cfg: Rebalance,
    now_ms: u64,
) -> Vec<MoveReason> {
    let mut moved = Vec::new();
    let mut budget = true;
    let source = table.key_source();
    tunnels.for_each(|e| {
        if !budget || e.ask.asked().is_some() || *e.upstream != *u.cfg.name {
            return;
        }
        // Placed by a key (not the keyless fallback), taken from where the table takes it now.
        let Some(hash) = e.key.filter(|k| Some(k.source) == source).map(|k| k.hash) else {
            return;
        };
        if !e.backend.is_available(now_ms) {
            return; // down by health (it comes back), or drained by an operator
        }
        let Some(to) = table.placement_of_hash(hash).and_then(|i| table.backend(i)) else {
            return;
        };
        if Arc::ptr_eq(to.stats(), &e.backend) {
            return;
        }
        if !u.lb.rebalance_bucket().take(now_ms, cfg.max_per_second) {
            budget = false;
            return;
        }
        e.ask.ask(Ending::Rebalance);
        moved.push(MoveReason::Placement);
    });
    moved
}

/// A backend over its fair share, as this worker sees it.
struct Over {
    index: usize,
    /// Tunnels above the fair share, gateway-wide.
    excess: u64,
    live: u64,
    /// This worker's tunnels there, and how many of them were already asked to end.
    mine: u64,
    asked: u64,
    /// This worker's tunnels there that may be moved: when they opened, their registry index.
    candidates: Vec<(Instant, usize)>,
}

/// Other policies: marks backends over `(1 + tolerance) ×` their fair share as shedding and
/// moves this worker's share of their excess, newest first. Returns what it moved.
fn by_fair_share(
    tunnels: &Tunnels,
    u: &UpstreamRt,
    table: &Table,
    cfg: Rebalance,
    now_ms: u64,
) -> Vec<MoveReason> {
    let mut over = over_fair_share(table, cfg.tolerance);
    if over.is_empty() {
        return Vec::new();
    }
    tunnels.for_each_indexed(|i, e| {
        if *e.upstream != *u.cfg.name {
            return;
        }
        let Some(o) = over
            .iter_mut()
            .find(|o| Arc::ptr_eq(table.backends()[o.index].stats(), &e.backend))
        else {
            return;
        };
        o.mine += 1;
        if e.ask.asked().is_some() {
            o.asked += 1;
        } else {
            o.candidates.push((e.opened, i));
        }
    });
    let mut moved = Vec::new();
    for o in &mut over {
        let quota = quota(o);
        o.candidates
            .sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        // Asked after the pass over the registry, in the same turn: the indices still hold.
        for &(_, i) in o.candidates.iter().take(quota) {
            if !u.lb.rebalance_bucket().take(now_ms, cfg.max_per_second) {
                return moved;
            }
            tunnels.ask(i, Ending::Rebalance);
            moved.push(MoveReason::FairShare);
        }
    }
    moved
}

/// How many more of its tunnels on `o`'s backend this core moves: its share of the excess (in
/// proportion to the tunnels it holds there, rounded up), less what it already asked to end.
fn quota(o: &Over) -> usize {
    let share = (o.excess * o.mine).div_ceil(o.live.max(1));
    share.saturating_sub(o.asked) as usize
}

/// Backends holding more than `(1 + tolerance) ×` their fair share, each marked shedding
/// (every other backend unmarked). Only backends that can take connections have a share.
fn over_fair_share(table: &Table, tolerance: f64) -> Vec<Over> {
    let can = |i: usize| i < table.n_active() && table.can_take(i);
    let sum_w: u64 = (0..table.len())
        .filter(|&i| can(i))
        .map(|i| u64::from(table.backends()[i].weight()))
        .sum();
    let total = table.pool_live();
    let mut over = Vec::new();
    for (i, b) in table.backends().iter().enumerate() {
        if sum_w == 0 || !can(i) {
            b.stats().set_shedding(false);
            continue;
        }
        let fair = total as f64 * f64::from(b.weight()) / sum_w as f64;
        let live = b.live();
        let shedding = live as f64 > (1.0 + tolerance) * fair;
        b.stats().set_shedding(shedding);
        if shedding {
            over.push(Over {
                index: i,
                excess: live.saturating_sub(fair.ceil() as u64),
                live,
                mine: 0,
                asked: 0,
                candidates: Vec::new(),
            });
        }
    }
    over
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::balance::{BackendSpec, ConnGuard, StatsRegistry};

    fn table(weights: &[(&str, u32)], registry: &StatsRegistry) -> Table {
        let specs = weights
            .iter()
            .enumerate()
            .map(|(i, (name, w))| BackendSpec {
                weight: *w,
                ..BackendSpec::new(name, SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
            })
            .collect();
        Table::build(&Policy::LeastConn, specs, registry)
    }

    fn open(t: &Table, counts: &[usize]) -> Vec<ConnGuard> {
        let mut g = Vec::new();
        for (i, &n) in counts.iter().enumerate() {
            g.extend((0..n).map(|_| t.guard(i).unwrap()));
        }
        g
    }

    fn over(t: &Table, tolerance: f64) -> Vec<(usize, u64)> {
        over_fair_share(t, tolerance)
            .iter()
            .map(|o| (o.index, o.excess))
            .collect()
    }

    #[test]
    fn after_a_scale_out_the_old_backends_shed_down_to_their_share() {
        let r = StatsRegistry::default();
        let t = table(&[("a", 1), ("b", 1), ("c", 1)], &r);
        let _g = open(&t, &[30, 30, 0]);
        // Fair share 20 each, shed above 22: a and b each give 10.
        assert_eq!(over(&t, 0.10), vec![(0, 10), (1, 10)]);
        let marks: Vec<bool> = t.backends().iter().map(|b| b.stats().shedding()).collect();
        assert_eq!(marks, [true, true, false]);
    }

    #[test]
    fn within_tolerance_nothing_moves_and_marks_clear() {
        let r = StatsRegistry::default();
        let t = table(&[("a", 1), ("b", 1), ("c", 1)], &r);
        let g = open(&t, &[30, 30, 0]);
        assert_eq!(over(&t, 0.10).len(), 2);
        drop(g);
        let _g = open(&t, &[22, 20, 18]);
        assert_eq!(over(&t, 0.10), vec![], "22 is not over 1.1 × 20");
        assert!(t.backends().iter().all(|b| !b.stats().shedding()));
        assert_eq!(over(&t, 0.05), vec![(0, 2)], "a tighter tolerance sheds it");
    }

    #[test]
    fn weights_set_the_share_and_a_drained_backend_has_none() {
        let r = StatsRegistry::default();
        let t = table(&[("a", 1), ("b", 3)], &r);
        let _g = open(&t, &[20, 20]);
        // Shares 10 and 30: a holds twice its share.
        assert_eq!(over(&t, 0.10), vec![(0, 10)]);
        // Drained by an operator: its tunnels go with the drain, not here, and b's share is
        // now everything.
        t.backends()[0].stats().set_admin_drain(Some(5));
        assert_eq!(over(&t, 0.10), vec![]);
        assert!(!t.backends()[0].stats().shedding());
    }

    #[test]
    fn each_core_moves_its_proportion_of_the_excess() {
        let o = |excess, live, mine, asked| Over {
            index: 0,
            excess,
            live,
            mine,
            asked,
            candidates: Vec::new(),
        };
        assert_eq!(
            quota(&o(10, 30, 15, 0)),
            5,
            "half the tunnels: half the excess"
        );
        assert_eq!(
            quota(&o(10, 30, 1, 0)),
            1,
            "rounded up: a core with a few still moves"
        );
        assert_eq!(quota(&o(10, 30, 0, 0)), 0);
        assert_eq!(
            quota(&o(10, 30, 15, 3)),
            2,
            "less those already asked to end"
        );
        assert_eq!(quota(&o(10, 30, 15, 9)), 0);
        assert_eq!(quota(&o(1, 0, 0, 0)), 0, "no division by zero");
    }
}
