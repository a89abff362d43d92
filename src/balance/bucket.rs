//! A rate shared by every core without a lock: the gateway-wide budget of tunnels the workers'
//! ticks may close per second (rebalancing, an admin drain).
//!
//! It is GCRA (the "virtual scheduling" form of a token bucket): one atomic holds the
//! theoretical arrival time of the next token; taking a token moves it on by `1 / rate`,
//! and is refused when it would run more than one second ahead of the clock. So at most
//! `rate` tokens are taken in a burst (one tick's worth), and `rate` per second on average,
//! whichever core takes them. Touched only by the once-a-second ticks, never per message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How far ahead of the clock the schedule may run: one second's worth of tokens.
const BURST_US: u64 = 1_000_000;

/// A shared rate limiter (see the module docs).
#[derive(Debug, Default)]
pub struct Bucket {
    /// Theoretical arrival time of the next token, in µs on the [`super::now_ms`] clock.
    tat_us: AtomicU64,
}

impl Bucket {
    /// Takes one token at `now_ms` from a budget of `per_second` (0: none ever).
    pub fn take(&self, now_ms: u64, per_second: u32) -> bool {
        if per_second == 0 {
            return false;
        }
        let interval = (BURST_US / u64::from(per_second)).max(1);
        let now = now_ms.saturating_mul(1000);
        let mut tat = self.tat_us.load(Relaxed);
        loop {
            let next = tat.max(now).saturating_add(interval);
            if next - now > BURST_US {
                return false;
            }
            match self
                .tat_us
                .compare_exchange_weak(tat, next, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;

    fn taken(b: &Bucket, now_ms: u64, rate: u32, tries: usize) -> usize {
        (0..tries).filter(|_| b.take(now_ms, rate)).count()
    }

    #[test]
    fn a_burst_is_one_seconds_worth_then_the_rate() {
        let b = Bucket::default();
        assert_eq!(taken(&b, 10_000, 20, 100), 20, "one second's worth at once");
        assert_eq!(
            taken(&b, 10_000, 20, 100),
            0,
            "then nothing at the same instant"
        );
        assert_eq!(
            taken(&b, 10_500, 20, 100),
            10,
            "half a second later: half the rate"
        );
        assert_eq!(
            taken(&b, 11_500, 20, 100),
            20,
            "never more than a second's worth"
        );
    }

    #[test]
    fn zero_rate_gives_nothing_and_huge_rates_do_not_overflow() {
        let b = Bucket::default();
        assert_eq!(taken(&b, 1, 0, 10), 0);
        assert_eq!(taken(&b, u64::MAX / 1000, u32::MAX, 10), 10);
    }

    #[test]
    fn cores_share_one_budget() {
        let b = std::sync::Arc::new(Bucket::default());
        let got: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || taken(&b, 5_000, 50, 100))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(got, 50);
    }
}
