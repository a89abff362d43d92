//! WebSocket message metrics of one upstream on one worker (issue 12): messages, payload
//! bytes, frames by opcode and a message size histogram per direction, and Close frames by who
//! sent them and their code. A tunnel's frame trackers gather a [`Tally`] per read batch and
//! flush it here with plain relaxed stores on the worker's own slot: no shared atomic per
//! message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{bump, Histogram, HistogramSnapshot};
use crate::proto::ws_frame::{Tally, OPCODES, SIZE_BOUNDS};

/// A tunnel direction, by who sent the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsDir {
    /// client → backend.
    FromClient = 0,
    /// backend → client.
    FromBackend = 1,
}

/// Who sent a Close frame: a peer (relayed or absorbed) or the gateway (injected), and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseSide {
    Client = 0,
    Backend = 1,
    GatewayToClient = 2,
    GatewayToBackend = 3,
}

impl CloseSide {
    pub const ALL: [CloseSide; 4] = [
        CloseSide::Client,
        CloseSide::Backend,
        CloseSide::GatewayToClient,
        CloseSide::GatewayToBackend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseSide::Client => "client",
            CloseSide::Backend => "backend",
            CloseSide::GatewayToClient => "gateway_to_client",
            CloseSide::GatewayToBackend => "gateway_to_backend",
        }
    }
}

/// Close codes with a label of their own (RFC 6455 §7.4.1 and the IANA registry); any other
/// code is counted as `other`.
pub const CLOSE_CODES: [u16; 13] = [
    1000, 1001, 1002, 1003, 1005, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
];

fn code_index(code: u16) -> usize {
    CLOSE_CODES
        .iter()
        .position(|&c| c == code)
        .unwrap_or(CLOSE_CODES.len())
}

pub struct DirCounters {
    messages: AtomicU64,
    payload: AtomicU64,
    frames: [AtomicU64; OPCODES.len()],
    sizes: Histogram,
}

impl Default for DirCounters {
    fn default() -> Self {
        DirCounters {
            messages: AtomicU64::new(0),
            payload: AtomicU64::new(0),
            frames: std::array::from_fn(|_| AtomicU64::new(0)),
            sizes: Histogram::new(SIZE_BOUNDS),
        }
    }
}

/// What became of the gateway's own pings (`ws_ping_interval`), by [`PingResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingResult {
    /// A Ping written to a client that had been silent for a whole interval.
    Sent = 0,
    /// A tunnel ended because its client did not answer in `ws_ping_timeout`.
    Timeout = 1,
}

impl PingResult {
    pub const ALL: [PingResult; 2] = [PingResult::Sent, PingResult::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            PingResult::Sent => "sent",
            PingResult::Timeout => "timeout",
        }
    }
}

#[derive(Default)]
pub struct WsCounters {
    dirs: [DirCounters; 2],
    /// Close frames by [`CloseSide`], then by [`CLOSE_CODES`] index (+ other).
    closes: [[AtomicU64; CLOSE_CODES.len() + 1]; 4],
    /// The gateway's pings by [`PingResult`].
    pings: [AtomicU64; 2],
}

impl WsCounters {
    /// Adds what one direction's tracker gathered, and resets it. Only the worker that owns
    /// this slot calls it.
    #[inline]
    pub fn flush(&self, dir: WsDir, t: &mut Tally) {
        if *t == Tally::default() {
            return;
        }
        let d = &self.dirs[dir as usize];
        bump(&d.messages, t.messages as u64);
        bump(&d.payload, t.payload);
        for (c, &n) in d.frames.iter().zip(&t.frames) {
            if n > 0 {
                bump(c, n as u64);
            }
        }
        // The sum is payload bytes as frames pass (a fragmented message's bytes before its
        // final frame's batch included), the counts complete messages.
        d.sizes.add_counts(&t.sizes.map(u64::from), t.payload);
        if let Some(code) = t.close {
            let side = match dir {
                WsDir::FromClient => CloseSide::Client,
                WsDir::FromBackend => CloseSide::Backend,
            };
            self.close(side, code);
        }
        *t = Tally::default();
    }

    /// Counts one Close frame.
    #[inline]
    pub fn close(&self, side: CloseSide, code: u16) {
        bump(&self.closes[side as usize][code_index(code)], 1);
    }

    /// Counts one of the gateway's pings, or a tunnel its timeout ended.
    pub fn ping(&self, what: PingResult) {
        bump(&self.pings[what as usize], 1);
    }
}

/// One direction summed over the workers.
#[derive(Debug, Default, Clone)]
pub struct DirTotals {
    pub messages: u64,
    pub payload: u64,
    pub frames: [u64; OPCODES.len()],
    pub sizes: Option<HistogramSnapshot>,
}

/// An upstream's WebSocket counters summed over the workers.
#[derive(Debug, Default, Clone)]
pub struct WsTotals {
    /// Indexed by [`WsDir`].
    pub dirs: [DirTotals; 2],
    /// Close frames: (side, code label, count), non-zero ones and the gateway's own codes.
    pub closes: Vec<(CloseSide, String, u64)>,
    /// The gateway's pings, indexed by [`PingResult`].
    pub pings: [u64; 2],
}

impl WsTotals {
    pub fn sum<'a>(slots: impl Iterator<Item = &'a WsCounters> + Clone) -> WsTotals {
        let mut out = WsTotals::default();
        for (i, d) in out.dirs.iter_mut().enumerate() {
            for s in slots.clone() {
                let c = &s.dirs[i];
                d.messages += c.messages.load(Relaxed);
                d.payload += c.payload.load(Relaxed);
                for (t, f) in d.frames.iter_mut().zip(&c.frames) {
                    *t += f.load(Relaxed);
                }
            }
            d.sizes = Histogram::sum(slots.clone().map(|s| &s.dirs[i].sizes));
        }
        for (i, n) in out.pings.iter_mut().enumerate() {
            *n = slots.clone().map(|s| s.pings[i].load(Relaxed)).sum();
        }
        for side in CloseSide::ALL {
            for k in 0..=CLOSE_CODES.len() {
                let n: u64 = slots
                    .clone()
                    .map(|s| s.closes[side as usize][k].load(Relaxed))
                    .sum();
                // The codes the gateway writes itself always have a series (0 until used),
                // so dashboards and alerts on them exist before the first drain.
                let own = matches!(
                    side,
                    CloseSide::GatewayToClient | CloseSide::GatewayToBackend
                ) && CLOSE_CODES
                    .get(k)
                    .is_some_and(|c| [1001, 1002, 1012].contains(c));
                if n > 0 || own {
                    let label = CLOSE_CODES
                        .get(k)
                        .map_or_else(|| "other".to_string(), |c| c.to_string());
                    out.closes.push((side, label, n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flushed_tally_is_summed_and_reset() {
        let a = WsCounters::default();
        let b = WsCounters::default();
        let mut t = Tally {
            messages: 2,
            payload: 300,
            close: Some(1001),
            ..Tally::default()
        };
        t.frames[1] = 2;
        t.sizes[0] = 1; // <= 64
        t.sizes[2] = 1; // <= 1024
        a.flush(WsDir::FromClient, &mut t);
        assert_eq!(t, Tally::default());
        b.close(CloseSide::GatewayToClient, 4321);
        let s = WsTotals::sum([&a, &b].into_iter());
        assert_eq!(s.dirs[0].messages, 2);
        assert_eq!(s.dirs[0].payload, 300);
        assert_eq!(s.dirs[0].frames[1], 2);
        assert_eq!(s.dirs[1].messages, 0);
        let sizes = s.dirs[0].sizes.as_ref().unwrap();
        assert_eq!(sizes.cumulative[0], 1);
        assert_eq!(sizes.cumulative[2], 2);
        let nonzero: Vec<_> = s.closes.iter().filter(|c| c.2 > 0).cloned().collect();
        assert_eq!(
            nonzero,
            vec![
                (CloseSide::Client, "1001".to_string(), 1),
                (CloseSide::GatewayToClient, "other".to_string(), 1)
            ]
        );
        // The gateway's own codes are there at 0.
        assert!(s
            .closes
            .contains(&(CloseSide::GatewayToBackend, "1012".to_string(), 0)));
    }
}
