//! The admin listener (control plane): Prometheus metrics, health endpoints, the backend view,
//! key lookup and reload. Runs on the control thread's runtime, never on a worker, so a slow
//! scrape or a reload can't take a core's time from connections.
//!
//! | endpoint                          | answer                                               |
//! |-----------------------------------|------------------------------------------------------|
//! | `GET /metrics`                    | OpenMetrics text, summed at scrape time ([`metrics`]) |
//! | `GET /healthz`                    | 200 while the process runs                           |
//! | `GET /readyz`                     | 200, or 503 with the reason from `Shared::ready()`  |
//! | `GET /backends`                   | JSON: every upstream's backends ([`views`])          |
//! | `GET /lookup?upstream=U&key=K`    | JSON: where key K goes now (`&cookie=V` for cookies) |
//! | `POST /reload`                    | re-reads the config file: 200, or 500 (old kept)     |
//!
//! See `docs/operations.md` for example outputs.

mod http;
mod metrics;
pub mod names;
#[cfg(test)]
mod tests;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::state::Shared;
use http::{Request, Response};

pub use metrics::render as render_metrics;

/// Re-reads the config file and swaps it in; `true` on success.
pub type Reloader = Arc<dyn Fn() -> bool + Send + Sync>;

/// Admin connections served at once; more wait in the kernel's backlog. Scrapers and probes
/// are a handful; the cap keeps a misbehaving client from growing memory or fds.
const MAX_CONNECTIONS: usize = 32;

/// Binds the admin listener and serves it on the current (control) runtime. Returns the bound
/// address (port 0 resolved).
pub async fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
    reload: Reloader,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, shared, reload));
    Ok(bound)
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, reload: Reloader) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, reload) = (shared.clone(), reload.clone());
        tokio::spawn(async move {
            handle(stream, &shared, &reload).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Arc<Shared>, reload: &Reloader) {
    let (resp, head_only) = match http::read_request(&mut stream).await {
        Ok(req) => (route(&req, shared, reload), req.method == "HEAD"),
        Err(resp) => (resp, false),
    };
    http::write_response(&mut stream, &resp, head_only).await;
}

/// Dispatches one request. Never panics on any input: unknown paths get 404, known paths with
/// the wrong method 405 with `Allow`.
fn route(req: &Request, shared: &Arc<Shared>, reload: &Reloader) -> Response {
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    let allow = match req.path.as_str() {
        "/metrics" | "/healthz" | "/readyz" | "/backends" | "/lookup" if get => None,
        "/metrics" | "/healthz" | "/readyz" | "/backends" | "/lookup" => Some("GET, HEAD"),
        "/reload" if req.method == "POST" => None,
        "/reload" => Some("POST"),
        _ => return Response::error(404, format!("no such endpoint `{}`", req.path)),
    };
    if let Some(allow) = allow {
        let mut r = Response::error(405, format!("{} does not allow {}", req.path, req.method));
        r.allow = Some(allow);
        return r;
    }
    match req.path.as_str() {
        "/metrics" => Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(shared).into_bytes(),
            allow: None,
        },
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let (ready, reason) = shared.ready();
            Response::text(if ready { 200 } else { 503 }, format!("{reason}\n"))
        }
        "/backends" => views::backends(shared),
        "/lookup" => views::lookup(shared, &req.query),
        _ => {
            // POST /reload. The reloader validates and swaps synchronously; it logs every
            // config error, and the reload counter records the outcome.
            if reload() {
                Response::json(200, &json!({ "reloaded": true }))
            } else {
                Response::json(
                    500,
                    &json!({
                        "reloaded": false,
                        "error": "reload refused; the previous configuration keeps running (the log names every error)",
                    }),
                )
            }
        }
    }
}
