//! Idle: open N connections, hold them for T without traffic, then check that every one
//! still echoes. Reports how many were opened and how many survived. `run_with_probe` calls
//! a hook at the end of the hold, while all connections are open and idle; `compare` uses
//! it to read the gateway's resident memory at its peak.

use std::time::Duration;

use tokio::time::Instant;

use super::{join_all, open_many, payload, Live, RunConfig};
use crate::report::Report;

pub async fn run(cfg: &RunConfig) -> Report {
    run_with_probe(cfg, || {}).await
}

pub async fn run_with_probe<F: FnOnce()>(cfg: &RunConfig, probe: F) -> Report {
    let mut rep = cfg.base_report("idle");
    let start = Instant::now();
    // Opening many connections takes time of its own: allow the connect timeout plus the
    // run duration for it, never unbounded.
    let open_deadline = start + cfg.connect_timeout + cfg.duration;
    let (conns, errs) = open_many(cfg, cfg.conns, open_deadline).await;
    for e in &errs {
        rep.add_error(e);
    }
    rep.opened = Some(conns.len() as u64);
    tokio::time::sleep(cfg.hold).await;
    probe();
    let check_deadline = Instant::now() + cfg.connect_timeout;
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, mut c) in conns.into_iter().enumerate() {
        let size = cfg.size.max(1);
        let live = cfg.live.clone();
        tasks.push(tokio::spawn(async move {
            let msg = payload(size, i as u64 + 7);
            let mut scratch = Vec::with_capacity(size);
            let r = match tokio::time::timeout_at(check_deadline, c.echo(&msg, &mut scratch)).await
            {
                Ok(r) => r.map_err(|e| e.0),
                Err(_) => Err("timeout".to_string()),
            };
            if r.is_ok() {
                Live::add(&live.messages, 1);
            }
            // Close without waiting for the peer: thousands of closes need not be polite.
            drop(c);
            r
        }));
    }
    let results = join_all(tasks, check_deadline).await;
    let mut survived = 0;
    for r in &results {
        match r {
            Ok(()) => survived += 1,
            Err(e) => rep.add_error(&format!("check_{e}")),
        }
    }
    rep.survived = Some(survived);
    rep.messages = survived;
    rep.duration_s = start.elapsed().as_secs_f64();
    rep.explain_limits();
    // Let the peer see the closes before the caller measures anything else.
    tokio::time::sleep(Duration::from_millis(20)).await;
    rep
}
