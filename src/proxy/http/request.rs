//! Phase 2, `prepare`: from a complete head in the client buffer to a connected backend and the
//! head we send on (in `Conn::out`). The parsed request borrows the buffer; everything the later
//! phases need is copied into a small `Plan`, and the head's bytes are consumed here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{Pick, Table};
use crate::config::ListenerConfig;
use crate::error::Kind;
use crate::io::{Driver, FirstBytes::Ours};
use crate::proto::{self, BodyKind, Upgrade};
use crate::state::{Generation, UpstreamRt};

use super::super::body::Framing;
use super::super::{access, connect, route, Worker};
use super::{Backend, Conn, Failure, Plan, ReqKey, WsKey};

/// httparse needs one slot per header; `limits.max_headers` is capped by this.
const HEADER_SLOTS: usize = 128;

impl<D: Driver> Conn<'_, D> {
    pub(super) async fn prepare(&mut self) -> Result<(Plan, Backend<D>), Failure> {
        let cfg = &self.gen.config;
        let limits = proto::HeadLimits {
            max_headers: cfg.limits.max_headers.min(HEADER_SLOTS),
        };
        let parse_started = Instant::now();
        let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
        let req = match proto::parse_request(&self.buf, &mut headers, &limits) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Failure::new(Kind::BadRequest)),
            Err(rej) => {
                tracing::debug!(client = %self.peer, reason = rej.reason, "request rejected");
                let kind = match rej.status {
                    431 => Kind::HeadTooLarge,
                    _ => Kind::BadRequest,
                };
                return Err(Failure::answered(kind, rej.status));
            }
        };
        self.cur.head_method = req.method == "HEAD";
        let ws_key = websocket_key(&req)?;
        let w = self.w;
        w.counters()
            .head_parse
            .observe_us(parse_started.elapsed().as_micros() as u64);
        let info = access::RequestInfo::capture(&cfg.log, &req);

        let key = ReqKey {
            req: &req,
            ip: self.peer.ip(),
        };
        let (upstream, table, pick) = self.route_and_pick(&req, &key)?;
        if ws_key.is_some() {
            self.cur.upgrade = Some(upstream);
        }
        let backend = connect_or_reuse(
            self.w,
            self.gen,
            &mut self.kept,
            upstream,
            table,
            pick,
            &key,
        )
        .await?;
        let up = &self.gen.upstreams[upstream];
        write_head(
            &mut self.out,
            &req,
            up,
            self.lcfg,
            self.peer,
            ws_key.is_some(),
            Some(info.header()),
        );

        let plan = Plan {
            body: match req.body {
                BodyKind::None => Framing::None,
                BodyKind::Length(n) => Framing::Length(n),
                BodyKind::Chunked => Framing::Chunked,
            },
            keep_alive: req.keep_alive,
            http11: req.minor_version == 1,
            expect_continue: req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")),
            ws_key,
            info,
        };
        let head_len = req.head_len;
        self.buf.drain(..head_len);
        Ok((plan, backend))
    }

    fn route_and_pick(
        &self,
        req: &proto::Request<'_, '_>,
        key: &ReqKey<'_, '_, '_>,
    ) -> Result<(usize, Arc<Table>, Pick), Failure> {
        let Some(upstream) = route::route(&self.gen.config, self.lcfg, req.host, req.path) else {
            return Err(Failure::new(Kind::NoRoute));
        };
        let table = self.gen.upstreams[upstream].lb.load_full();
        let Some(pick) = table.pick(key, &[]) else {
            return Err(Failure::new(Kind::NoBackend));
        };
        Ok((upstream, table, pick))
    }
}

/// The kept-alive backend connection when the policy picked the same backend (and the backend
/// has not closed it meanwhile); otherwise a new connection, retried on others.
async fn connect_or_reuse<D: Driver>(
    w: &Worker,
    gen: &Generation,
    kept: &mut Option<Backend<D>>,
    upstream: usize,
    table: Arc<Table>,
    pick: Pick,
    key: &ReqKey<'_, '_, '_>,
) -> Result<Backend<D>, Failure> {
    if let Some(mut k) = kept.take() {
        if k.upstream == upstream
            && same_backend(&k.table, k.conn.index, &table, pick.index)
            && !k.conn.stream.peer_closed()
        {
            k.conn.set_cookie = pick.set_cookie;
            k.conn.key_hash = pick.key_hash;
            return Ok(k);
        }
    }
    let up = &gen.upstreams[upstream];
    match connect::connect_from::<D, _>(w, &gen.config, up, &table, key, pick, &[], Ours).await {
        Ok(conn) => Ok(Backend {
            conn,
            table,
            upstream,
        }),
        // Each failed attempt was counted by `connect`; "none left to try" was not.
        Err(Kind::NoBackend) => Err(Failure::new(Kind::NoBackend)),
        Err(kind) => Err(Failure::new(kind).already_counted()),
    }
}

/// The head we send on, into `out`.
fn write_head(
    out: &mut Vec<u8>,
    req: &proto::Request<'_, '_>,
    up: &UpstreamRt,
    l: &ListenerConfig,
    peer: SocketAddr,
    upgrade: bool,
    extra_header: Option<(&str, &[u8])>,
) {
    let strip = up
        .cookie
        .as_ref()
        .filter(|c| c.strip)
        .map(|c| c.name.as_str());
    out.clear();
    proto::write_request_head(
        req,
        out,
        &proto::ForwardOpts {
            client_ip: peer.ip(),
            https: l.tls_terminated,
            forward_for: l.forward_for,
            real_ip: l.real_ip,
            forward_proto: l.forward_proto,
            forward_host: l.forward_host,
            upgrade,
            strip_cookie: strip,
            extra_header,
        },
    );
}

/// The key of a validated WebSocket upgrade; a bad handshake is answered with the parser's
/// status (400, or 426 with the version we speak).
fn websocket_key(req: &proto::Request<'_, '_>) -> Result<Option<WsKey>, Failure> {
    if req.upgrade != Upgrade::WebSocket {
        return Ok(None);
    }
    match proto::check_upgrade(req) {
        Ok(h) => {
            let mut bytes = [0u8; 32];
            let len = h.key.len().min(32);
            bytes[..len].copy_from_slice(&h.key[..len]);
            Ok(Some(WsKey { bytes, len }))
        }
        Err(rej) => {
            tracing::debug!(reason = rej.reason, "handshake rejected");
            Err(Failure::answered(Kind::BadHandshake, rej.status))
        }
    }
}

fn same_backend(a: &Table, ai: usize, b: &Table, bi: usize) -> bool {
    match (a.backend(ai), b.backend(bi)) {
        (Some(x), Some(y)) => x.name() == y.name() && x.addr() == y.addr(),
        _ => false,
    }
}
