//! A connection becoming a tunnel: after a verified `101` (http mode) or right after the backend
//! connect (tcp mode), both sockets move into a task of their own ([`spawn`]), whose [`run`]
//! runs the tunnel and accounts for it when it ends (bytes were counted by the tunnel as they moved; here: the access-log line, the
//! lifetime histogram, how it ended). Both modes share it, so a tunnel is a tunnel whatever
//! started it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::Table;
use crate::error::Kind;
use crate::io::Driver;
use crate::state::Generation;

use crate::metrics::websocket::{PingResult, WsDir};

use super::client::{ByteStream, Client};
use super::connect::Connected;
use super::frames::{Closing, Framing};
use super::lifecycle::{self, Ending};
use super::{access, tls_tunnel, tunnel, Worker};

/// Who a tunnel is for, for the access log: held by the tunnel's task for the tunnel's whole
/// life, so only what the log line needs, each once.
struct Who {
    client: SocketAddr,
    listener: Arc<str>,
    /// The upstream's index in the generation.
    upstream: u32,
    /// 101 for an upgraded tunnel, 0 in tcp mode.
    status: u16,
    /// The upgrade request, when the access log is on (never in tcp mode).
    request: Option<Box<access::RequestInfo>>,
}

/// Runs the tunnel between `client` and `backend` to its end, then accounts for it. `early`:
/// bytes that arrived with the heads (client → backend, backend → client), passed on before
/// the tunnel moves anything else, then freed. Lent, not moved: an argument taken by value
/// stays in the task's future for the tunnel's whole life.
///
/// A plain fn returning an `async move` block, not an async fn, so the arguments are stored
/// once in the tunnel's task (an async fn rebinds each to a local).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run<'a, D: Driver>(
    w: &'a Worker,
    gen: &'a Generation,
    table: &'a Table,
    client: &'a Client<D>,
    backend: &'a Connected<D>,
    who: &'a Who,
    early: &'a mut Early,
) -> impl std::future::Future<Output = ()> + use<'a, D> {
    async move {
        let up = &gen.upstreams[who.upstream as usize];
        let registered = register(w, up, table, backend, who);
        // WebSocket tunnels track frames unless the upstream opts out; raw tcp tunnels never do.
        // A TLS backend (upstream TLS) is not tracked yet: its tunnel is a blind pipe.
        let tracked = who.status == 101
            && up.cfg.websocket_frames
            && matches!(backend.stream, Client::Plain(_));
        let closing = Closing::default();
        let counters = up.counters.ws(w.id);
        let fu = tracked.then(|| Framing::new(WsDir::FromClient, &closing, counters));
        let fd = tracked.then(|| Framing::new(WsDir::FromBackend, &closing, counters));
        let frames = match (&fu, &fd) {
            (Some(fu), Some(fd)) => Some(tunnel::Frames {
                up: fu,
                down: fd,
                closing: &closing,
                cfg: &up.cfg,
            }),
            _ => None,
        };
        // Taken: an idle tunnel holds no buffer.
        let passed = match early.take() {
            // Boxed: it runs once, and on epoll it is larger than the tunnel itself.
            Some(e) => {
                let s = &backend.stream;
                Box::pin(pass_early::<D>(client, s, &e, fu.as_ref(), fd.as_ref())).await
            }
            None => Ok(()),
        };
        // Read here, after the early bytes: what is held across that wait takes room in the
        // task for the tunnel's whole life (the layout keeps their slots).
        let idle = gen.config.timeouts.tunnel_idle.as_ref();
        let stats = backend.guard.stats();
        let ask = &registered;
        let s = &backend.stream;
        let (end, moved) = match passed {
            Err(end) => (end, tunnel::Moved::default()),
            Ok(()) => match (client, s) {
                (Client::Plain(c), Client::Plain(b)) => {
                    // The tunnel's shared part lives here, and the tunnel lends it: through
                    // a future of its own, every argument would be stored once more.
                    let t = tunnel::Shared::<D>::new(w, c, b, idle, stats, ask, frames.as_ref());
                    let end = tunnel::Tunnel::new(&t).await;
                    (end, t.moved())
                }
                // splice cannot see plaintext: a TLS side (client or backend) takes the copy pumps
                // through rustls.
                // Boxed: a plain tunnel's task is not sized for the TLS pumps it never runs.
                (c, b) => {
                    Box::pin(tls_tunnel::run::<D>(
                        w,
                        c,
                        b,
                        idle,
                        stats,
                        ask,
                        frames.as_ref(),
                    ))
                    .await
                }
            },
        };
        // When it opened, from its registry entry: a copy would ride in the task all along.
        let started = registered.opened();
        drop(registered);
        account(w, gen, table, backend.index, who, started, end, moved);
    }
}

/// The tunnel's place in the worker's registry (the lifecycle tick's view of it).
fn register<'w, D: Driver>(
    w: &'w Worker,
    up: &crate::state::UpstreamRt,
    table: &Table,
    backend: &Connected<D>,
    who: &Who,
) -> lifecycle::Registered<'w> {
    w.tunnels().register(lifecycle::Entry {
        ask: Default::default(),
        upstream: up.cfg.name.clone(),
        backend: backend.guard.stats().clone(),
        key: backend
            .key_hash
            .zip(table.key_source())
            .map(|(hash, source)| lifecycle::PlacedKey { hash, source }),
        opened: Instant::now(),
        websocket: who.status == 101,
    })
}

/// Accounts for an ended tunnel: its access-log line, its lifetime, how it ended.
#[allow(clippy::too_many_arguments)]
fn account(
    w: &Worker,
    gen: &Generation,
    table: &Table,
    index: usize,
    who: &Who,
    started: Instant,
    end: tunnel::End,
    moved: tunnel::Moved,
) {
    // Looked up again, not kept across the tunnel's life (8 bytes more in every task).
    let up = &gen.upstreams[who.upstream as usize];
    access::log(
        &gen.config.log,
        access::Entry {
            client: who.client,
            listener: &who.listener[..],
            upstream: &up.cfg.name,
            backend: table.name(index).unwrap_or("-"),
            backend_addr: table.addr(index),
            request: who.request.as_deref(),
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
    count_end(w, up, end);
}

/// Counts how a tunnel ended: the error kinds, and a gateway ping that found no client.
fn count_end(w: &Worker, up: &crate::state::UpstreamRt, end: tunnel::End) {
    match end {
        tunnel::End::Closed => {}
        tunnel::End::ClientReset => w.error(Kind::ClientReset),
        tunnel::End::BackendReset => w.error(Kind::BackendReset),
        tunnel::End::Ended(Ending::IdleTimeout) => w.error(Kind::ClientTimeout),
        tunnel::End::Ended(Ending::BackendGone) => w.error(Kind::Drained),
        tunnel::End::Ended(Ending::PingTimeout) => up.counters.ws(w.id).ping(PingResult::Timeout),
        tunnel::End::Malformed { client: true } => w.error(Kind::ClientFraming),
        tunnel::End::Malformed { client: false } => w.error(Kind::BackendFraming),
        tunnel::End::Ended(_) => {}
    }
}

/// Passes on the bytes that came with the heads, each way (a tracked tunnel scans them first:
/// they may hold whole frames, the start of one, or malformed framing, which starts the
/// tunnel's closing and passes only the whole frames before it).
async fn pass_early<D: Driver>(
    client: &Client<D>,
    backend: &Client<D>,
    (up, down): &(Vec<u8>, Vec<u8>),
    fu: Option<&Framing<'_>>,
    fd: Option<&Framing<'_>>,
) -> Result<(), tunnel::End> {
    let passable = |f: Option<&Framing<'_>>, b: &[u8]| match f {
        Some(f) if !b.is_empty() => f.scan(b).0,
        _ => b.len(),
    };
    let up = &up[..passable(fu, up)];
    if !up.is_empty() {
        backend
            .write_all(up)
            .await
            .map_err(|_| tunnel::End::BackendReset)?;
    }
    let down = &down[..passable(fd, down)];
    if !down.is_empty() {
        client
            .write_all(down)
            .await
            .map_err(|_| tunnel::End::ClientReset)?;
    }
    Ok(())
}

/// Everything an upgraded connection keeps once it is a tunnel: the sockets, the table that
/// picked the backend, and what it holds for its whole life (open counts, admission).
pub struct Upgraded<D: Driver> {
    pub client: Client<D>,
    pub backend: Connected<D>,
    pub table: Arc<Table>,
    pub upstream: usize,
    pub peer: SocketAddr,
    /// The upgrade request, when the access log is on.
    pub request: Option<Box<access::RequestInfo>>,
    pub life: super::ConnLife,
    /// Client bytes after its request head (frames sent before the 101 arrived), and the
    /// backend's bytes right after its 101.
    pub early: Early,
}

/// Bytes that came with the heads (client → backend, backend → client), boxed, and only when
/// there are any: the tunnel's task keeps 8 bytes for them for its whole life, not 48.
pub type Early = Option<Box<(Vec<u8>, Vec<u8>)>>;

/// The [`Early`] bytes of an upgrade.
pub fn early(up: Vec<u8>, down: Vec<u8>) -> Early {
    (!up.is_empty() || !down.is_empty()).then(|| Box::new((up, down)))
}

/// Continues an upgraded connection (`status` 101), or a tcp-mode one (0), in a task of its
/// own: the connection's task is sized for its largest state (header arrays, buffers, a
/// ClientHello, the connect), which an idle tunnel should not keep; the tunnel task holds only
/// the two sockets and its pumps.
pub fn spawn<D: Driver>(
    w: &std::rc::Rc<Worker>,
    gen: &Arc<Generation>,
    listener: Arc<str>,
    u: Upgraded<D>,
    status: u16,
) {
    let w = w.clone();
    let gen = gen.clone();
    // Taken apart here, not inside the task: rebound there, each part would be stored twice in
    // the task's future.
    let Upgraded {
        client,
        backend,
        table,
        upstream,
        peer,
        request,
        life,
        mut early,
    } = u;
    let who = Who {
        client: peer,
        listener,
        upstream: upstream as u32,
        status,
        request,
    };
    crate::io::spawn_local(async move {
        run::<D>(&w, &gen, &table, &client, &backend, &who, &mut early).await;
        drop(life);
    });
}
