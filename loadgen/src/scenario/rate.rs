//! Connection rate: C loops, each connecting, handshaking (WebSocket upgrade, or nothing
//! more for raw TCP), exchanging one message, and closing, over and over until the deadline.
//! The latency reported is connect + handshake; a handshake counts once its message has
//! been echoed, so a gateway that accepts but cannot forward is not counted.

use tokio::time::Instant;

use super::{join_all, payload, Conn, Live, RunConfig, GRACE};
use crate::report::{Latency, Report};

pub async fn run(cfg: &RunConfig) -> Report {
    let mut rep = cfg.base_report("rate");
    rep.conns = cfg.concurrency;
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    for w in 0..cfg.concurrency {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let mut done = 0u64;
            let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
            let msg = payload(cfg.size, w as u64 + 1);
            let mut scratch = Vec::with_capacity(cfg.size);
            // Connection indices interleave between workers so source addresses rotate.
            let mut idx = w as u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let this = idx;
                let one = async {
                    let mut c = Conn::open(&cfg, this).await?;
                    let hs = t0.elapsed();
                    c.echo(&msg, &mut scratch).await?;
                    c.close().await;
                    Ok::<_, super::ConnError>(hs)
                };
                idx += cfg.concurrency as u64;
                match tokio::time::timeout_at(deadline + GRACE / 2, one).await {
                    Ok(Ok(hs)) => {
                        lat.record(hs);
                        done += 1;
                        Live::add(&cfg.live.messages, 1);
                    }
                    Ok(Err(e)) => {
                        Live::add(&cfg.live.errors, 1);
                        let limit = crate::limits::explain_limit(&e.0).is_some();
                        *errors.entry(e.0).or_default() += 1;
                        // A refused connect or a machine limit (no fds, no ports) does not
                        // lift within microseconds: back off instead of spinning on it.
                        let pause = if limit { 10 } else { 1 };
                        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    }
                    Err(_) => {
                        *errors.entry("timeout".into()).or_default() += 1;
                        break;
                    }
                }
            }
            (lat, done, errors)
        }));
    }
    let results = join_all(tasks, deadline).await;
    let elapsed = start.elapsed().min(cfg.duration + GRACE);
    let mut lat = Latency::new();
    let mut done = 0;
    for (l, d, errs) in &results {
        lat.merge(l);
        done += d;
        for (k, n) in errs {
            rep.errors += n;
            *rep.errors_by_kind.entry(k.clone()).or_default() += n;
        }
    }
    rep.duration_s = elapsed.as_secs_f64();
    rep.messages = done;
    rep.handshakes = Some(done);
    rep.handshakes_per_s = Some(done as f64 / rep.duration_s.max(1e-9));
    rep.set_latency(lat);
    rep.explain_limits();
    rep
}
