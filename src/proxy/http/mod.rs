//! http mode: one client connection, many requests (keep-alive), each routed on its own.
//!
//! A request goes through named phases, each returning `Result<_, Failure>`; any failure takes
//! the one failure path (`Conn::fail`: count once, answer if still possible, close gracefully):
//!
//! 1. `read_head`: a complete head in the client buffer (431 past `max_head_bytes`, 408 past
//!    `timeouts.head`).
//! 2. `prepare` (request.rs): parse and check strictly (`proto`), route on the normalised path,
//!    pick a backend, reuse the kept-alive backend connection if the pick is the same backend or
//!    connect (retrying others), and write the head we send on.
//! 3. `forward_request` (exchange.rs): the head, then the body per its framing, always whole,
//!    upgrades included: after it the client buffer holds only what follows the request.
//!    `Expect: 100-continue` is answered by the gateway itself (HTTP/1.1 clients only).
//! 4. `relay_response` (response.rs): interim responses (to HTTP/1.1 clients), then the final
//!    head and its body per framing, or a verified `101` and the hand-off to the tunnel.
//!
//! Whether either connection can be reused is decided from the state of the bytes, in one
//! place (`response::reuse`): the request body was sent whole, the response body relayed whole
//! and nothing unframed followed it.

mod exchange;
mod failure;
mod request;
mod response;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use crate::balance::{KeySource, Table};
use crate::config::ListenerConfig;
use crate::io::Driver;
use crate::proto;
use crate::state::Generation;

use super::body::Framing;
use super::client::Client;
use super::connect::Connected;
use super::head_reader::{self, HeadRead};
use super::{access, handoff, ConnLife, Worker};

use failure::Failure;

/// A backend connection with the table that picked it: kept between requests for reuse.
struct Backend<D: Driver> {
    conn: Connected<D>,
    table: Arc<Table>,
    upstream: usize,
}

/// `Sec-WebSocket-Key` of a validated upgrade, copied out of the read buffer.
#[derive(Debug, Clone, Copy)]
struct WsKey {
    bytes: [u8; 32],
    len: usize,
}

impl WsKey {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What the exchange needs from a request head once the head's bytes are gone.
struct Plan {
    body: Framing,
    keep_alive: bool,
    /// HTTP/1.1 (1xx responses may be sent); HTTP/1.0 clients never get one.
    http11: bool,
    expect_continue: bool,
    ws_key: Option<WsKey>,
    /// Method, host, path and request id, for the access log and `X-Request-Id`.
    info: access::RequestInfo,
}

/// Per-request facts the failure path needs, whatever phase failed.
#[derive(Debug, Default, Clone, Copy)]
struct Current {
    head_method: bool,
    /// The upstream of a WebSocket upgrade not yet decided: a failure counts a failed upgrade.
    upgrade: Option<usize>,
    /// A final response head was relayed: no error status can follow it.
    responded: bool,
}

/// What the connection does after an exchange.
enum Step<D: Driver> {
    /// Read the next request.
    Next,
    /// The client went away between requests: nothing to answer.
    Gone,
    /// Close after the response (the client asked, or a side cannot be reused).
    Close,
    /// A verified 101: both sockets become a tunnel (boxed: it moves once per upgrade, and the
    /// other steps stay small).
    Tunnel(Box<(Backend<D>, access::RequestInfo)>),
}

/// One client connection in http mode.
struct Conn<'a, D: Driver> {
    w: &'a Rc<Worker>,
    gen: &'a Arc<Generation>,
    lcfg: &'a ListenerConfig,
    client: Client<D>,
    peer: SocketAddr,
    /// Client bytes not yet consumed: the rest of a head, a body, the next request.
    buf: Vec<u8>,
    /// Backend bytes not yet relayed.
    rbuf: Vec<u8>,
    /// The heads we write, reused for every request.
    out: Vec<u8>,
    kept: Option<Backend<D>>,
    first: bool,
    cur: Current,
}

pub async fn serve<D: Driver>(
    w: &Rc<Worker>,
    gen: &Arc<Generation>,
    lcfg: &ListenerConfig,
    client: Client<D>,
    peer: SocketAddr,
    buf: Vec<u8>,
    life: ConnLife,
) {
    let mut c = Conn::<D> {
        w,
        gen,
        lcfg,
        client,
        peer,
        buf,
        rbuf: Vec::new(),
        out: Vec::with_capacity(1024),
        kept: None,
        first: true,
        cur: Current::default(),
    };
    loop {
        c.cur = Current::default();
        match c.exchange().await {
            Ok(Step::Next) => {}
            Ok(Step::Gone) => return,
            Ok(Step::Close) => return c.client.linger_close().await,
            Ok(Step::Tunnel(t)) => return c.into_tunnel(t.0, t.1, life),
            Err(f) => return c.fail(f).await,
        }
    }
}

impl<D: Driver> Conn<'_, D> {
    /// One request, phase by phase.
    async fn exchange(&mut self) -> Result<Step<D>, Failure> {
        if !self.read_head().await? {
            return Ok(Step::Gone);
        }
        let (plan, backend) = self.prepare().await?;
        let sent = self.forward_request(&plan, &backend).await?;
        self.relay_response(plan, backend, sent).await
    }

    /// Phase 1: `Ok(false)` when the client closed (or idled out) between requests.
    async fn read_head(&mut self) -> Result<bool, Failure> {
        let cfg = &self.gen.config;
        match head_reader::read(&self.client, &mut self.buf, cfg, self.first).await {
            HeadRead::Complete => {
                self.first = false;
                Ok(true)
            }
            HeadRead::Closed => Ok(false),
            HeadRead::Reject(kind) => Err(Failure::new(kind)),
        }
    }

    fn into_tunnel(self, backend: Backend<D>, request: access::RequestInfo, life: ConnLife) {
        let u = handoff::Upgraded {
            client: self.client,
            backend: backend.conn,
            table: backend.table,
            upstream: backend.upstream,
            peer: self.peer,
            // Kept (boxed) only for the access log line at the tunnel's end: an idle tunnel
            // without the access log does not carry the request's 176 bytes.
            request: self.gen.config.log.access.then(|| Box::new(request)),
            life,
            early: handoff::early(self.buf, self.rbuf),
        };
        handoff::spawn(self.w, self.gen, self.lcfg.name.clone(), u, 101);
    }
}

/// The request's view for the balancer: headers, cookies, query parameters, client IP.
struct ReqKey<'r, 'h, 'b> {
    req: &'r proto::Request<'h, 'b>,
    ip: IpAddr,
}

impl KeySource for ReqKey<'_, '_, '_> {
    fn client_ip(&self) -> IpAddr {
        self.ip
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.req.header(name)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        proto::find_cookie(self.req.headers, name)
    }
    fn query(&self, name: &str) -> Option<&[u8]> {
        proto::query_param(self.req.path, name).map(str::as_bytes)
    }
}
