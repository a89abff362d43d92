//! ringway's load generator as a library: the WebSocket client and frame codec (`ws`), the
//! echo backend (`backend`), the load scenarios (`scenario`), reports (`report`), the
//! side-by-side comparison with other gateways (`compare`), and the /proc and rlimit helpers
//! (`procstat`, `limits`). The `loadgen` binary is a thin CLI over it; `ringway demo` and the
//! tests reuse the backend and the client.

pub mod backend;
pub mod compare;
pub mod limits;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod ws;

pub use backend::{run_backend, spawn_backend, Backend, Mode};
pub use report::{Latency, Report};
pub use scenario::{Kind, Proto, RunConfig};
pub use ws::{Message, WsClient, WsError};

/// Runs one scenario with the given configuration.
pub async fn run_scenario(kind: Kind, cfg: &RunConfig) -> Report {
    match kind {
        Kind::Pingpong => scenario::pingpong::run(cfg).await,
        Kind::Rate => scenario::rate::run(cfg).await,
        Kind::Idle => scenario::idle::run(cfg).await,
        Kind::Bulk => scenario::bulk::run(cfg).await,
        Kind::Storm => scenario::storm::run(cfg).await,
    }
}
