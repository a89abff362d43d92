//! The pure part of DNS discovery: what one name's state becomes after an answer, and when
//! to ask again. No I/O and no clock of its own (every function takes `now`), so the rules
//! below are unit-tested without a DNS server or a sleep.
//!
//! Rules (issue 5):
//! - a positive answer is re-queried after its TTL clamped to `[min_ttl, max_ttl]`; the floor
//!   is what keeps a TTL-0 record from spinning the resolver (linkerd2-proxy added one after
//!   exactly that loop);
//! - a negative answer (NXDOMAIN, or NOERROR with no record) is re-queried after
//!   `negative_ttl`; a name that *had* addresses keeps them for `nxdomain_hold` after the first
//!   negative answer (a terminating pod leaves DNS before its connections end), then loses them;
//! - a failure (timeout, SERVFAIL, refused, no resolver) keeps the last good value and retries
//!   with exponential backoff from `min_ttl`, bounded by `max_ttl`.

use std::time::{Duration, Instant};

/// A re-query is never scheduled sooner than this, whatever the config says: the last line of
/// defence against a tight loop if `min_ttl` or `negative_ttl` were configured as zero.
pub const HARD_FLOOR: Duration = Duration::from_millis(100);

/// The timing knobs of one upstream (from `DnsOptions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
    pub nxdomain_hold: Duration,
}

impl Timing {
    /// The delay before re-querying a positive answer carrying `ttl`.
    pub fn clamp_ttl(&self, ttl: Duration) -> Duration {
        let min = self.min_ttl.max(HARD_FLOOR);
        ttl.clamp(min, self.max_ttl.max(min))
    }

    /// The delay before the `failures`-th consecutive retry (1-based): `min_ttl × 2^(n-1)`,
    /// at most `max_ttl`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let base = self.min_ttl.max(HARD_FLOOR);
        let shift = failures.saturating_sub(1).min(16);
        base.saturating_mul(1u32 << shift)
            .min(self.max_ttl.max(base))
    }

    fn negative_delay(&self) -> Duration {
        self.negative_ttl.max(HARD_FLOOR)
    }
}

/// What one lookup said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// Records, with the smallest TTL among them.
    Found(T, Duration),
    /// NXDOMAIN, or the name exists with no record of the asked type.
    Negative,
    /// Timeout, SERVFAIL, REFUSED, a network error: says nothing about the name.
    Failed,
}

/// What applying an answer did to the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    /// New value (first answer, or different records).
    Updated,
    /// A negative answer started the hold; the value is kept for now.
    HoldStarted,
    /// The hold ran out: the value is gone.
    Removed,
    /// A failure; the last good value is kept.
    KeptOnFailure,
}

/// One name's state: the last good value and when to ask again.
#[derive(Clone, Debug)]
pub struct NameState<T> {
    /// Last good value; `None` before the first positive answer and after a hold expired.
    pub value: Option<T>,
    /// When the first negative answer of the current run arrived (hold in progress).
    pub missing_since: Option<Instant>,
    /// Consecutive failures, for the backoff.
    pub failures: u32,
    /// A definitive answer (positive or negative) has been seen at least once.
    pub answered: bool,
    pub next_at: Instant,
}

impl<T: PartialEq> NameState<T> {
    /// A name to query at once.
    pub fn new(now: Instant) -> Self {
        NameState {
            value: None,
            missing_since: None,
            failures: 0,
            answered: false,
            next_at: now,
        }
    }

    /// Applies one answer received at `now` and schedules the next query.
    pub fn apply(&mut self, answer: Answer<T>, now: Instant, t: &Timing) -> Change {
        match answer {
            Answer::Found(value, ttl) => {
                self.failures = 0;
                self.missing_since = None;
                self.answered = true;
                self.next_at = now + t.clamp_ttl(ttl);
                if self.value.as_ref() == Some(&value) {
                    Change::Unchanged
                } else {
                    self.value = Some(value);
                    Change::Updated
                }
            }
            Answer::Negative => {
                self.failures = 0;
                self.answered = true;
                let retry = now + t.negative_delay();
                if self.value.is_none() {
                    self.missing_since = None;
                    self.next_at = retry;
                    return Change::Unchanged;
                }
                let since = *self.missing_since.get_or_insert(now);
                let expires = since + t.nxdomain_hold;
                if now >= expires {
                    self.value = None;
                    self.missing_since = None;
                    self.next_at = retry;
                    return Change::Removed;
                }
                // Ask again when the hold runs out if that comes before the negative TTL, so
                // removal happens on time; a positive answer meanwhile cancels the hold.
                self.next_at = retry.min(expires).max(now + HARD_FLOOR);
                if since == now {
                    Change::HoldStarted
                } else {
                    Change::Unchanged
                }
            }
            Answer::Failed => {
                self.failures = self.failures.saturating_add(1);
                self.next_at = now + t.backoff(self.failures);
                Change::KeptOnFailure
            }
        }
    }
}

/// Picks the address a per-pod name connects to when it has several: the smallest one
/// (IPv4 sorts before IPv6), so every replica and every refresh makes the same choice.
pub fn first_sorted<T: Ord + Copy>(addrs: &[T]) -> Option<T> {
    addrs.iter().min().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            nxdomain_hold: Duration::from_secs(10),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ttl_is_clamped() {
        let t = timing();
        assert_eq!(t.clamp_ttl(S(0)), S(1));
        assert_eq!(t.clamp_ttl(S(7)), S(7));
        assert_eq!(t.clamp_ttl(S(3600)), S(30));
        let zero = Timing { min_ttl: S(0), ..t };
        assert_eq!(zero.clamp_ttl(S(0)), HARD_FLOOR);
        let inverted = Timing { max_ttl: S(0), ..t };
        assert_eq!(inverted.clamp_ttl(S(10)), S(1));
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let t = timing();
        let steps: Vec<u64> = (1..=8).map(|n| t.backoff(n).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(t.backoff(u32::MAX), S(30));
    }

    #[test]
    fn positive_answers_update_only_on_change() {
        let (t, now) = (timing(), Instant::now());
        let mut s = NameState::new(now);
        assert_eq!(s.apply(Answer::Found(1, S(0)), now, &t), Change::Updated);
        assert_eq!(s.next_at, now + S(1), "a zero TTL waits the floor");
        assert_eq!(s.apply(Answer::Found(1, S(5)), now, &t), Change::Unchanged);
        assert_eq!(s.apply(Answer::Found(2, S(5)), now, &t), Change::Updated);
        assert_eq!(s.value, Some(2));
    }

    #[test]
    fn failure_keeps_last_good_value() {
        let (t, now) = (timing(), Instant::now());
        let mut s = NameState::new(now);
        s.apply(Answer::Found(1, S(5)), now, &t);
        assert_eq!(s.apply(Answer::Failed, now, &t), Change::KeptOnFailure);
        assert_eq!(s.apply(Answer::Failed, now, &t), Change::KeptOnFailure);
        assert_eq!((s.value, s.failures, s.next_at), (Some(1), 2, now + S(2)));
        s.apply(Answer::Found(1, S(5)), now, &t);
        assert_eq!(s.failures, 0);
    }

    #[test]
    fn nxdomain_holds_then_removes() {
        let (t, t0) = (timing(), Instant::now());
        let mut s = NameState::new(t0);
        s.apply(Answer::Found(1, S(5)), t0, &t);
        assert_eq!(s.apply(Answer::Negative, t0, &t), Change::HoldStarted);
        assert_eq!(s.next_at, t0 + S(5), "re-asked after negative_ttl");
        assert_eq!(s.apply(Answer::Negative, t0 + S(5), &t), Change::Unchanged);
        assert_eq!(s.next_at, t0 + S(10), "re-asked when the hold ends");
        assert_eq!(s.value, Some(1));
        assert_eq!(s.apply(Answer::Negative, t0 + S(10), &t), Change::Removed);
        assert_eq!(s.value, None);
        assert_eq!(s.apply(Answer::Negative, t0 + S(15), &t), Change::Unchanged);
    }

    #[test]
    fn answer_during_hold_cancels_it() {
        let (t, t0) = (timing(), Instant::now());
        let mut s = NameState::new(t0);
        s.apply(Answer::Found(1, S(5)), t0, &t);
        s.apply(Answer::Negative, t0, &t);
        assert_eq!(
            s.apply(Answer::Failed, t0 + S(1), &t),
            Change::KeptOnFailure
        );
        assert_eq!(
            s.apply(Answer::Found(1, S(5)), t0 + S(2), &t),
            Change::Unchanged
        );
        assert_eq!(s.missing_since, None);
        // A later negative answer starts a fresh hold.
        assert_eq!(
            s.apply(Answer::Negative, t0 + S(20), &t),
            Change::HoldStarted
        );
        assert_eq!(s.apply(Answer::Negative, t0 + S(29), &t), Change::Unchanged);
        assert_eq!(s.apply(Answer::Negative, t0 + S(30), &t), Change::Removed);
    }

    #[test]
    fn negative_for_unknown_name_has_nothing_to_hold() {
        let (t, t0) = (timing(), Instant::now());
        let mut s = NameState::<u8>::new(t0);
        assert_eq!(s.apply(Answer::Negative, t0, &t), Change::Unchanged);
        assert!(s.answered && s.value.is_none() && s.missing_since.is_none());
    }

    #[test]
    fn first_sorted_prefers_smallest() {
        use std::net::IpAddr;
        let v: Vec<IpAddr> = ["::1", "10.0.0.9", "10.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(first_sorted(&v), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(first_sorted::<IpAddr>(&[]), None);
    }
}
