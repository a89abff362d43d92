//! Ping-pong: N connections, one message in flight on each, round-trip latency.
//!
//! Closed loop (default): each connection sends as soon as the previous echo is back, and
//! latency is measured from the actual send.
//!
//! Open loop (`rate`): message k of connection c is *due* at
//! `start + c/R + k·N/R` (R messages per second spread evenly over N connections), and its
//! latency is measured from that intended time, not from when it was actually sent. When the
//! target stalls, the messages that should have gone out during the stall are sent late and
//! carry the stall in their latency, so it is not hidden (no coordinated omission, as in
//! wrk2).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    join_all, open_many, payload, Clock, Conn, ConnError, Live, RunConfig, TokioClock, GRACE,
};
use crate::report::{Latency, Report};

/// The send schedule of one connection in open loop.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    /// Time between two messages of this connection: N / R.
    pub interval: Duration,
    /// Where this connection's slot sits in the first interval: c / R.
    pub offset: Duration,
}

impl Schedule {
    /// The schedule of connection `conn` of `conns` for a total of `rate` messages/s.
    pub fn for_conn(start: Instant, rate: f64, conns: usize, conn: usize) -> Schedule {
        let rate = rate.max(1e-3);
        Schedule {
            start,
            interval: Duration::from_secs_f64(conns as f64 / rate),
            offset: Duration::from_secs_f64(conn as f64 / rate),
        }
    }

    /// When message `k` is due.
    pub fn intended(&self, k: u64) -> Instant {
        let ns = self.interval.as_nanos().saturating_mul(k as u128);
        self.start + self.offset + Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }
}

/// One request/response exchange on a connection.
pub trait Exchange {
    fn exchange(&mut self) -> impl Future<Output = Result<(), ConnError>>;
}

/// Echo of a fixed payload over a real connection.
pub struct Echo {
    pub conn: Conn,
    pub payload: Vec<u8>,
    pub scratch: Vec<u8>,
}

impl Exchange for Echo {
    fn exchange(&mut self) -> impl Future<Output = Result<(), ConnError>> {
        self.conn.echo(&self.payload, &mut self.scratch)
    }
}

/// Runs the open-loop schedule until the next due time reaches `deadline` or `max`
/// messages are done: sleeps until each message is due (never when late), exchanges, and
/// records `completion - intended`. Returns the number of completed messages.
pub async fn open_loop<C: Clock, E: Exchange>(
    clock: &C,
    sched: &Schedule,
    deadline: Instant,
    max: u64,
    ex: &mut E,
    lat: &mut Latency,
) -> Result<u64, ConnError> {
    let mut k = 0;
    while k < max {
        let intended = sched.intended(k);
        if intended >= deadline {
            break;
        }
        if clock.now() < intended {
            clock.sleep_until(intended).await;
        }
        ex.exchange().await?;
        lat.record(clock.now().saturating_duration_since(intended));
        k += 1;
    }
    Ok(k)
}

/// Closed loop: exchange back to back until `deadline`, latency from the actual send.
pub async fn closed_loop<C: Clock, E: Exchange>(
    clock: &C,
    deadline: Instant,
    max: u64,
    ex: &mut E,
    lat: &mut Latency,
) -> Result<u64, ConnError> {
    let mut k = 0;
    while k < max && clock.now() < deadline {
        let t0 = clock.now();
        ex.exchange().await?;
        lat.record(clock.now().saturating_duration_since(t0));
        k += 1;
    }
    Ok(k)
}

/// Counts completed exchanges into the live counters as they happen.
struct Counted<'a> {
    inner: Echo,
    live: &'a Live,
}

impl Exchange for Counted<'_> {
    async fn exchange(&mut self) -> Result<(), ConnError> {
        self.inner.exchange().await?;
        Live::add(&self.live.messages, 1);
        Ok(())
    }
}

pub async fn run(cfg: &RunConfig) -> Report {
    let mut rep = cfg.base_report("pingpong");
    rep.target_rate = cfg.rate;
    let open_deadline = Instant::now() + cfg.connect_timeout + cfg.duration;
    let (conns, errs) = open_many(cfg, cfg.conns, open_deadline).await;
    for e in &errs {
        rep.add_error(e);
    }
    let n = conns.len();
    let start = Instant::now() + Duration::from_millis(10);
    let deadline = start + cfg.duration;
    let mut tasks = Vec::with_capacity(n);
    for (i, conn) in conns.into_iter().enumerate() {
        let cfg = cfg.clone();
        let echo = Echo {
            conn,
            payload: payload(cfg.size, i as u64 + 1),
            scratch: Vec::with_capacity(cfg.size),
        };
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let live = cfg.live.clone();
            let mut ex = Counted {
                inner: echo,
                live: &live,
            };
            tokio::time::sleep_until(start).await;
            let fut = async {
                match cfg.rate {
                    Some(r) => {
                        let s = Schedule::for_conn(start, r, n, i);
                        open_loop(&TokioClock, &s, deadline, u64::MAX, &mut ex, &mut lat).await
                    }
                    None => closed_loop(&TokioClock, deadline, u64::MAX, &mut ex, &mut lat).await,
                }
            };
            let r = match tokio::time::timeout_at(deadline + GRACE / 2, fut).await {
                Ok(r) => r,
                Err(_) => Err(ConnError("timeout".into())),
            };
            if r.is_err() {
                Live::add(&live.errors, 1);
            }
            let Counted { inner, .. } = ex;
            inner.conn.close().await;
            (lat, r)
        }));
    }
    let results = join_all(tasks, deadline).await;
    let elapsed = Instant::now()
        .min(deadline)
        .saturating_duration_since(start);
    let mut lat = Latency::new();
    for (l, r) in &results {
        lat.merge(l);
        if let Err(e) = r {
            rep.add_error(&e.0);
        }
    }
    let lost = n - results.len();
    for _ in 0..lost {
        rep.add_error("abandoned");
    }
    rep.messages = lat.count();
    rep.duration_s = elapsed.as_secs_f64();
    rep.msgs_per_s = Some(rep.messages as f64 / rep.duration_s.max(1e-9));
    rep.set_latency(lat);
    rep.explain_limits();
    rep
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A manual clock: sleeping jumps to the wake time, exchanges advance it by their
    /// service time.
    struct FakeClock(Cell<Instant>);

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.0.get()
        }
        fn sleep_until(&self, t: Instant) -> impl Future<Output = ()> {
            if t > self.0.get() {
                self.0.set(t);
            }
            std::future::ready(())
        }
    }

    struct FakeService<'a> {
        clock: &'a FakeClock,
        service: Vec<Duration>,
        sent_at: Vec<Instant>,
    }

    impl Exchange for FakeService<'_> {
        fn exchange(&mut self) -> impl Future<Output = Result<(), ConnError>> {
            let now = self.clock.now();
            self.sent_at.push(now);
            let d = self.service[self.sent_at.len() - 1];
            self.clock.0.set(now + d);
            std::future::ready(Ok(()))
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn schedule_spreads_connections_evenly() {
        let t0 = Instant::now();
        // 1000 msg/s over 4 connections: each sends every 4 ms, offsets 0,1,2,3 ms.
        let s2 = Schedule::for_conn(t0, 1000.0, 4, 2);
        assert_eq!(s2.interval, ms(4));
        assert_eq!(s2.offset, ms(2));
        assert_eq!(s2.intended(0), t0 + ms(2));
        assert_eq!(s2.intended(10), t0 + ms(42));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn open_loop_counts_from_intended_time_through_a_stall() {
        let t0 = Instant::now();
        let clock = FakeClock(Cell::new(t0));
        // 100 msg/s on one connection: due every 10 ms. The first answer takes 55 ms (a
        // stall); the rest take 1 ms each.
        let mut service = vec![ms(55)];
        service.extend(std::iter::repeat_n(ms(1), 20));
        let mut ex = FakeService {
            clock: &clock,
            service,
            sent_at: vec![],
        };
        let sched = Schedule::for_conn(t0, 100.0, 1, 0);
        let mut lat = Latency::new();
        let n = open_loop(&clock, &sched, t0 + ms(100), 1000, &mut ex, &mut lat)
            .await
            .unwrap();
        assert_eq!(n, 10, "messages due at 0,10,…,90 ms");
        // Sends: 0 (on time), then 55,56,57,58,59 (late: due 10..50), then 60,70,80,90.
        let sent: Vec<u128> = ex.sent_at.iter().map(|t| (*t - t0).as_millis()).collect();
        assert_eq!(sent, vec![0, 55, 56, 57, 58, 59, 60, 70, 80, 90]);
        // Latency from the intended time: 55, 56-10, 57-20, 58-30, 59-40, 60-50, then 1 ms.
        let expect_ms = [55u64, 46, 37, 28, 19, 10, 1, 1, 1, 1];
        let mut check = Latency::new();
        for v in expect_ms {
            check.record(ms(v));
        }
        for q in [0.1, 0.5, 0.7, 0.9, 1.0] {
            assert_eq!(lat.quantile(q), check.quantile(q), "q={q}");
        }
        // A closed loop over the same service would have hidden the stall in one sample.
        let clock2 = FakeClock(Cell::new(t0));
        let mut service = vec![ms(55)];
        service.extend(std::iter::repeat_n(ms(1), 200));
        let mut ex2 = FakeService {
            clock: &clock2,
            service,
            sent_at: vec![],
        };
        let mut closed = Latency::new();
        closed_loop(&clock2, t0 + ms(100), 1000, &mut ex2, &mut closed)
            .await
            .unwrap();
        assert_eq!(
            closed.quantile(0.9),
            check.quantile(0.1),
            "p90 of the closed loop is the 1 ms service time"
        );
    }
}
