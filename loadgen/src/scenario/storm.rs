//! Storm: N clients connect and upgrade at the same instant, as after a node restart or a
//! deploy, hold briefly, then all close.
//!
//! Every client task is spawned first and parks on a barrier; when the last one has
//! arrived the start instant is taken and all are released at once. A client counts as
//! *established* once it is connected, upgraded (WebSocket) and its first message has been
//! echoed, so a gateway that accepts but cannot forward is not counted. The report gives
//! how many were established, the time until the last one was (`established_s`),
//! connections per second over that time, the distribution of each client's time to
//! established (the latency), and the failures by kind. Then all hold for `hold` and close
//! together (a WebSocket close handshake, bounded at 1 s, or a FIN).
//!
//! Bounded in count and time: at most [`MAX_STORM_CONNS`] clients (the load generator holds
//! one fd per client and its in-process echo backends one more; a proxying gateway holds
//! two), each must be established within `duration` of the start, and the close is bounded.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Barrier};
use tokio::time::Instant;

use super::{join_all, payload, Conn, ConnError, Live, RunConfig, GRACE};
use crate::report::{Latency, Report};

/// At most this many clients in one storm: a gateway in front of the load generator holds
/// two fds per client, and this machine allows 20,000 per process.
pub const MAX_STORM_CONNS: usize = 9_000;

/// The default number of clients.
pub const DEFAULT_STORM_CONNS: usize = 5_000;

/// What one client reports once it is established or has failed.
type Outcome = Result<Duration, String>;

pub async fn run(cfg: &RunConfig) -> Report {
    let n = cfg.conns.clamp(1, MAX_STORM_CONNS);
    let mut rep = cfg.base_report("storm");
    rep.conns = n;
    let barrier = Arc::new(Barrier::new(n + 1));
    let (go_tx, go_rx) = watch::channel::<Option<Instant>>(None);
    let (close_tx, close_rx) = watch::channel(false);
    let (out_tx, mut out_rx) = mpsc::channel::<Outcome>(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let cfg = cfg.clone();
        let barrier = barrier.clone();
        let mut go = go_rx.clone();
        let mut close = close_rx.clone();
        let out = out_tx.clone();
        tasks.push(tokio::spawn(async move {
            let msg = payload(cfg.size.max(1), i as u64 + 1);
            barrier.wait().await;
            let start = match go.wait_for(|s| s.is_some()).await {
                Ok(s) => s.expect("checked by wait_for"),
                Err(_) => return,
            };
            let deadline = start + cfg.duration;
            let mut scratch = Vec::with_capacity(msg.len());
            let one = async {
                let mut c = Conn::open(&cfg, i as u64).await?;
                c.echo(&msg, &mut scratch).await?;
                Ok::<_, ConnError>(c)
            };
            let conn = match tokio::time::timeout_at(deadline, one).await {
                Ok(Ok(c)) => {
                    let _ = out.send(Ok(start.elapsed())).await;
                    c
                }
                Ok(Err(e)) => {
                    let _ = out.send(Err(e.0)).await;
                    return;
                }
                Err(_) => {
                    let _ = out.send(Err("establish_timeout".into())).await;
                    return;
                }
            };
            drop(out);
            // Hold until told to close (or the coordinator is gone), then close.
            let _ = close.wait_for(|c| *c).await;
            conn.close().await;
        }));
    }
    drop(out_tx);
    drop(go_rx);
    drop(close_rx);

    // Release everyone at once.
    barrier.wait().await;
    let start = Instant::now();
    let _ = go_tx.send(Some(start));
    let deadline = start + cfg.duration;

    let mut lat = Latency::new();
    let mut established = 0u64;
    let mut last = Duration::ZERO;
    let mut received = 0usize;
    while received < n {
        match tokio::time::timeout_at(deadline + GRACE, out_rx.recv()).await {
            Ok(Some(Ok(at))) => {
                received += 1;
                established += 1;
                last = last.max(at);
                lat.record(at);
                Live::add(&cfg.live.conns, 1);
                Live::add(&cfg.live.messages, 1);
            }
            Ok(Some(Err(kind))) => {
                received += 1;
                Live::add(&cfg.live.errors, 1);
                rep.add_error(&kind);
            }
            // Every sender is gone: tasks that panicked never reported.
            Ok(None) => break,
            Err(_) => break,
        }
    }
    for _ in received..n {
        rep.add_error("no_report");
    }

    // Hold, then close all together.
    tokio::time::sleep(cfg.hold).await;
    let _ = close_tx.send(true);
    let close_deadline = Instant::now() + Duration::from_secs(2);
    join_all(tasks, close_deadline).await;

    rep.duration_s = start.elapsed().as_secs_f64();
    rep.messages = established;
    rep.established = Some(established);
    if established > 0 {
        let secs = last.as_secs_f64();
        rep.established_s = Some(secs);
        rep.conns_per_s = Some(established as f64 / secs.max(1e-9));
    }
    rep.set_latency(lat);
    rep.explain_limits();
    if cfg.conns > n {
        rep.limits_hit.push(format!(
            "storm clients capped at {MAX_STORM_CONNS} (asked {}): a gateway holds two fds per \
             client and this machine allows 20,000 per process",
            cfg.conns
        ));
    }
    rep
}
