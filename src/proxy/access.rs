//! The access log: one line per request and per tunnel close (client, listener, upstream,
//! backend, status, duration, bytes each way, how it ended), through `tracing` under the
//! target `ringway::access`, so `--log-format json` makes it JSON. Off by default; when on,
//! `log.access_sample` keeps a fraction (a per-core xorshift decides, no shared state).

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::LogConfig;

pub struct Entry<'a> {
    pub client: SocketAddr,
    pub listener: &'a str,
    pub upstream: &'a str,
    pub backend: &'a str,
    /// HTTP status relayed (101 for a tunnel), 0 in tcp mode.
    pub status: u16,
    pub started: Instant,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// `response`, or how a tunnel ended (`closed`, `client_reset`, …).
    pub end: &'static str,
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// Whether this line is kept (`sample` in 0..=1).
fn sampled(sample: f64) -> bool {
    if sample >= 1.0 {
        return true;
    }
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < sample
    })
}

pub fn log(cfg: &LogConfig, e: Entry<'_>) {
    if !cfg.access || !sampled(cfg.access_sample) {
        return;
    }
    tracing::info!(
        target: "ringway::access",
        client = %e.client,
        listener = e.listener,
        upstream = e.upstream,
        backend = e.backend,
        status = e.status,
        duration_ms = e.started.elapsed().as_secs_f64() * 1000.0,
        bytes_up = e.bytes_up,
        bytes_down = e.bytes_down,
        end = e.end,
    );
}

#[cfg(test)]
mod tests {
    use super::sampled;

    #[test]
    fn sampling_keeps_about_the_fraction() {
        let kept = (0..100_000).filter(|_| sampled(0.1)).count();
        assert!((8_000..12_000).contains(&kept), "{kept}");
        assert!((0..1000).all(|_| sampled(1.0)));
        assert!((0..1000).all(|_| !sampled(0.0)));
    }
}
