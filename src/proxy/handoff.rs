//! A connection becoming a tunnel: after a verified `101` (http mode) or right after the backend
//! connect (tcp mode), both sockets move into [`run`], which runs the tunnel and accounts for it
//! when it ends (bytes were counted by the tunnel as they moved; here: the access-log line, the
//! lifetime histogram, how it ended). Both modes share it, so a tunnel is a tunnel whatever
//! started it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::Table;
use crate::config::LogConfig;
use crate::error::Kind;
use crate::io::Driver;
use crate::state::Generation;

use super::client::Client;
use super::connect::Connected;
use super::lifecycle::{self, Ending};
use super::{access, tls_tunnel, tunnel, Worker};

/// Who a tunnel is for, for the access log.
pub struct Who<'a> {
    pub log: &'a LogConfig,
    pub client: SocketAddr,
    pub listener: &'a str,
    pub upstream: usize,
    /// 101 for an upgraded tunnel, 0 in tcp mode.
    pub status: u16,
    /// The upgrade request, for the access log (none in tcp mode).
    pub request: Option<&'a access::RequestInfo>,
}

/// Runs the tunnel between `client` and `backend` to its end, then accounts for it.
pub async fn run<D: Driver>(
    w: &Worker,
    gen: &Generation,
    table: &Table,
    client: &Client<D>,
    backend: &Connected<D>,
    who: &Who<'_>,
) {
    let up = &gen.upstreams[who.upstream];
    let started = Instant::now();
    let idle = gen.config.timeouts.tunnel_idle;
    let stats = backend.guard.stats().clone();
    let registered = w.tunnels().register(lifecycle::Entry {
        ask: Default::default(),
        upstream: up.cfg.name.clone(),
        backend: stats.clone(),
        key: None,
        opened: started,
        websocket: who.status == 101,
    });
    let ask = &registered.ask;
    let (end, moved) = match client {
        Client::Plain(c) => tunnel::run::<D>(w, c, &backend.stream, idle, &stats, ask).await,
        // splice cannot see plaintext: TLS clients take the copy pump through rustls.
        // Boxed: a plain tunnel's task is not sized for the TLS pumps it never runs.
        Client::Tls(c) => {
            Box::pin(tls_tunnel::run::<D>(
                w,
                c,
                &backend.stream,
                idle,
                &stats,
                ask,
            ))
            .await
        }
    };
    drop(registered);
    access::log(
        who.log,
        access::Entry {
            client: who.client,
            listener: who.listener,
            upstream: &up.cfg.name,
            backend: table.name(backend.index).unwrap_or("-"),
            backend_addr: table.addr(backend.index),
            request: who.request,
            status: who.status,
            started,
            bytes_up: moved.up,
            bytes_down: moved.down,
            end: end.as_str(),
        },
    );
    w.counters()
        .tunnel_lifetime
        .observe_us(started.elapsed().as_micros() as u64);
    match end {
        tunnel::End::Closed => {}
        tunnel::End::ClientReset => w.error(Kind::ClientReset),
        tunnel::End::BackendReset => w.error(Kind::BackendReset),
        tunnel::End::Ended(Ending::IdleTimeout) => w.error(Kind::ClientTimeout),
        tunnel::End::Ended(Ending::BackendGone) => w.error(Kind::Drained),
        tunnel::End::Ended(_) => {}
    }
}

/// Everything an upgraded connection keeps once it is a tunnel: the sockets, the table that
/// picked the backend, and what it holds for its whole life (open counts, admission).
pub struct Upgraded<D: Driver> {
    pub client: Client<D>,
    pub backend: Connected<D>,
    pub table: Arc<Table>,
    pub upstream: usize,
    pub peer: SocketAddr,
    pub request: access::RequestInfo,
    pub life: super::ConnLife,
}

/// Continues an upgraded connection in a task of its own: the request task's future is sized
/// for its largest state (header arrays, buffers), which an idle WebSocket should not keep; the
/// tunnel task holds only the two sockets and its pumps.
pub fn spawn<D: Driver>(
    w: &std::rc::Rc<Worker>,
    gen: &Arc<Generation>,
    listener: Arc<str>,
    u: Upgraded<D>,
) {
    let w = w.clone();
    let gen = gen.clone();
    crate::io::spawn_local(async move {
        let who = Who {
            log: &gen.config.log,
            client: u.peer,
            listener: &listener,
            upstream: u.upstream,
            status: 101,
            request: Some(&u.request),
        };
        run::<D>(&w, &gen, &u.table, &u.client, &u.backend, &who).await;
        drop(u.life);
    });
}
