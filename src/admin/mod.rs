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
//! | `POST /backends/U/B/drain?rate=N` | an operator drains backend B ([`drain`]); `undrain` undoes |
//!
//! See `docs/operations.md` for example outputs.
//!
//! ## Guards
//!
//! - **Token.** With `admin_token_file`, `/reload`, `/lookup`, `/backends` and the drain
//!   endpoints under `/backends/` (which mutate or
//!   reveal backends, addresses and cookie validity) need `Authorization: Bearer <token>`
//!   (401 otherwise); `/metrics`, `/healthz` and `/readyz` stay open for scrapers and probes.
//! - **No cross-site requests.** A browser on another site must not drive the port (a
//!   `text/plain` POST to `/reload` needs no CORS preflight): a request whose `Origin` is not
//!   this host, or whose `Sec-Fetch-Site` is `cross-site` / `same-site`, gets 403, and a POST
//!   with a form or `text/plain` body (the "simple" content types) gets 415.
//! - **Probes never starve.** The accept loop never waits for a slot: every connection gets a
//!   task at once, so idle or slow clients cannot keep `/healthz` in the backlog. A connection
//!   must send its request within [`http::READ_TIMEOUT`], or [`BUSY_READ_TIMEOUT`] once
//!   [`BUSY_CONNECTIONS`] are open (a probe sends its request at once; an idle client is let go
//!   fast); beyond [`MAX_CONNECTIONS`] new connections are closed unanswered.

mod drain;
mod guard;
mod http;
mod metrics;
pub mod names;
#[cfg(test)]
mod tests;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use crate::state::Shared;
use http::{Request, Response};

pub use metrics::render as render_metrics;

/// Re-reads the config file and swaps it in; `true` on success.
pub type Reloader = Arc<dyn Fn() -> bool + Send + Sync>;

/// Admin connections open at once; more are closed unanswered. Scrapers and probes are a
/// handful; the cap keeps a misbehaving client from growing memory or fds without bound.
pub const MAX_CONNECTIONS: usize = 1024;

/// Open admin connections from which the read deadline drops to [`BUSY_READ_TIMEOUT`].
pub const BUSY_CONNECTIONS: usize = 32;

/// How long a connection may take to send its request while the port is busy: a probe or a
/// scraper sends it with the connection; only idle or trickling clients are cut.
pub const BUSY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

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
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let now_open = open.load(Ordering::Relaxed);
        if now_open >= MAX_CONNECTIONS {
            continue; // dropped: closed unanswered
        }
        let deadline = if now_open >= BUSY_CONNECTIONS {
            BUSY_READ_TIMEOUT
        } else {
            http::READ_TIMEOUT
        };
        open.fetch_add(1, Ordering::Relaxed);
        let slot = OpenSlot(open.clone());
        let (shared, reload) = (shared.clone(), reload.clone());
        tokio::spawn(async move {
            handle(stream, &shared, &reload, deadline).await;
            drop(slot);
        });
    }
}

/// One open admin connection, counted while alive.
struct OpenSlot(Arc<AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    mut stream: TcpStream,
    shared: &Arc<Shared>,
    reload: &Reloader,
    deadline: std::time::Duration,
) {
    let (resp, head_only) = match http::read_request(&mut stream, deadline).await {
        Ok(req) => (route(&req, shared, reload), req.method == "HEAD"),
        Err(resp) => (resp, false),
    };
    http::write_response(&mut stream, &resp, head_only).await;
}

/// Dispatches one request. Never panics on any input: unknown paths get 404, known paths with
/// the wrong method 405 with `Allow`; cross-site requests 403 / 415, protected endpoints
/// without the token 401 (see the module docs).
fn route(req: &Request, shared: &Arc<Shared>, reload: &Reloader) -> Response {
    if let Some(refused) = guard::cross_site(req) {
        return refused;
    }
    if guard::protected(&req.path) {
        if let Some(token) = &shared.gen.load().config.admin_token {
            if !token.accepts(req.authorization.as_deref()) {
                let mut r = Response::error(
                    401,
                    format!("{} needs `Authorization: Bearer <admin token>`", req.path),
                );
                r.challenge = true;
                return r;
            }
        }
    }
    if let Some((upstream, backend, on)) = drain::parse_path(&req.path) {
        if req.method != "POST" {
            let mut r = Response::error(405, format!("{} does not allow {}", req.path, req.method));
            r.allow = Some("POST");
            return r;
        }
        return drain::handle(shared, upstream, backend, on, &req.query);
    }
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
            challenge: false,
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
