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
pub mod stream;
pub mod tls;
pub mod ws;

pub use backend::{run_backend, spawn_backend, Backend, Mode};
pub use report::{Latency, Report};
pub use scenario::{Kind, Proto, RunConfig};
pub use ws::{Message, WsClient, WsError};

/// Runs one scenario with the given configuration. With `--tls`, the report counts the
/// run's full and resumed handshakes.
pub async fn run_scenario(kind: Kind, cfg: &RunConfig) -> Report {
    with_tls_counts(cfg, async {
        match kind {
            Kind::Pingpong => scenario::pingpong::run(cfg).await,
            Kind::Rate => scenario::rate::run(cfg).await,
            Kind::Idle => scenario::idle::run(cfg).await,
            Kind::Bulk => scenario::bulk::run(cfg).await,
            Kind::Storm => scenario::storm::run(cfg).await,
        }
    })
    .await
}

/// Runs `run` and, with `--tls`, puts the handshakes it made (full and resumed) into its
/// report.
pub async fn with_tls_counts(
    cfg: &RunConfig,
    run: impl std::future::Future<Output = Report>,
) -> Report {
    let before = cfg.tls.as_ref().map(|t| t.counts());
    let mut report = run.await;
    if let (Some(t), Some(b)) = (&cfg.tls, before) {
        let now = t.counts();
        report.tls = Some(report::TlsCounts {
            sni: t.server_name(),
            resumption: t.resume,
            full_handshakes: now.full - b.full,
            resumed_handshakes: now.resumed - b.resumed,
            negotiated: t.negotiated(),
        });
    }
    report
}
