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
    let (out_tx, out_rx) = mpsc::channel::<Outcome>(n);
    let signals = Signals {
        barrier: barrier.clone(),
        go: go_rx,
        close: close_rx,
        out: out_tx,
    };
    let tasks: Vec<_> = (0..n).map(|i| spawn_client(cfg, i, &signals)).collect();
    drop(signals);

    // Release everyone at once.
    barrier.wait().await;
    let start = Instant::now();
    let _ = go_tx.send(Some(start));
    let tally = collect(cfg, &mut rep, out_rx, n, start + cfg.duration).await;

    // Hold, then close all together.
    tokio::time::sleep(cfg.hold).await;
    let _ = close_tx.send(true);
    join_all(tasks, Instant::now() + Duration::from_secs(2)).await;

    rep.duration_s = start.elapsed().as_secs_f64();
    finish(cfg, &mut rep, n, tally);
    rep
}

/// What every client waits on or reports to: the barrier, the start signal (the instant the
/// storm was released), the close signal, and the channel of outcomes.
struct Signals {
    barrier: Arc<Barrier>,
    go: watch::Receiver<Option<Instant>>,
    close: watch::Receiver<bool>,
    out: mpsc::Sender<Outcome>,
}

/// One client: waits at the barrier, connects (and upgrades) and echoes one message once
/// released, reports how long that took, holds until told to close, then closes.
fn spawn_client(cfg: &RunConfig, i: usize, s: &Signals) -> tokio::task::JoinHandle<()> {
    let cfg = cfg.clone();
    let barrier = s.barrier.clone();
    let (mut go, mut close, out) = (s.go.clone(), s.close.clone(), s.out.clone());
    tokio::spawn(async move {
        let msg = payload(cfg.size.max(1), i as u64 + 1);
        barrier.wait().await;
        let start = match go.wait_for(|s| s.is_some()).await {
            Ok(s) => s.expect("checked by wait_for"),
            Err(_) => return,
        };
        let mut scratch = Vec::with_capacity(msg.len());
        let one = async {
            let mut c = Conn::open(&cfg, i as u64).await?;
            c.echo(&msg, &mut scratch).await?;
            Ok::<_, ConnError>(c)
        };
        let conn = match tokio::time::timeout_at(start + cfg.duration, one).await {
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
    })
}

/// The clients' outcomes, as they come.
struct Tally {
    established: u64,
    /// When the last client was established, from the release.
    last: Duration,
    lat: Latency,
}

/// Collects one outcome per client (errors go into the report by kind); a client that never
/// reports by the deadline (plus grace) counts as `no_report`.
async fn collect(
    cfg: &RunConfig,
    rep: &mut Report,
    mut out_rx: mpsc::Receiver<Outcome>,
    n: usize,
    deadline: Instant,
) -> Tally {
    let mut t = Tally {
        established: 0,
        last: Duration::ZERO,
        lat: Latency::new(),
    };
    let mut received = 0usize;
    while received < n {
        match tokio::time::timeout_at(deadline + GRACE, out_rx.recv()).await {
            Ok(Some(Ok(at))) => {
                received += 1;
                t.established += 1;
                t.last = t.last.max(at);
                t.lat.record(at);
                Live::add(&cfg.live.conns, 1);
                Live::add(&cfg.live.messages, 1);
            }
            Ok(Some(Err(kind))) => {
                received += 1;
                Live::add(&cfg.live.errors, 1);
                rep.add_error(&kind);
            }
            // Every sender is gone (tasks that panicked never reported), or time is up.
            Ok(None) | Err(_) => break,
        }
    }
    for _ in received..n {
        rep.add_error("no_report");
    }
    t
}

/// Establishment figures and the limits that applied.
fn finish(cfg: &RunConfig, rep: &mut Report, n: usize, t: Tally) {
    rep.messages = t.established;
    rep.established = Some(t.established);
    if t.established > 0 {
        let secs = t.last.as_secs_f64();
        rep.established_s = Some(secs);
        rep.conns_per_s = Some(t.established as f64 / secs.max(1e-9));
    }
    rep.set_latency(t.lat);
    rep.explain_limits();
    if cfg.conns > n {
        rep.limits_hit.push(format!(
            "storm clients capped at {MAX_STORM_CONNS} (asked {}): a gateway holds two fds per \
             client and this machine allows 20,000 per process",
            cfg.conns
        ));
    }
}
