//! http mode: one client connection, many requests (keep-alive), each routed on its own.
//!
//! Per request: read the head into a bounded buffer (431 past `max_head_bytes`, 408 past
//! `timeouts.head`), parse and check it strictly (`proto`), route, pick a backend (reusing the
//! kept-alive backend connection when the policy picks the same backend), forward the head and
//! body, read the response head, and either relay the response (body per its framing) or, on a
//! verified `101`, hand both sockets to the tunnel.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{KeySource, Table};
use crate::config::ListenerConfig;
use crate::error::Kind;
use crate::io::{self as rio, Driver, Stream};
use crate::proto::{self, BodyKind, RespBody, Upgrade};
use crate::state::{Generation, UpstreamRt};

use super::body::{self, BodyError, Framing};
use super::connect::{self, Connected};
use super::head_reader::{self, HeadRead};
use super::{access, tunnel, Worker};

/// httparse needs one slot per header; `limits.max_headers` is capped by this.
const HEADER_SLOTS: usize = 128;

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

/// A backend connection kept for the client's next request.
struct Kept<D: Driver> {
    conn: Connected<D>,
    table: Arc<Table>,
    upstream: usize,
}

/// What a request needs after its head has been parsed and the borrow of the read buffer ends.
struct Exchange {
    body: Framing,
    keep_alive: bool,
    head_method: bool,
    expect_continue: bool,
    /// `Sec-WebSocket-Key` of a validated upgrade.
    ws_key: Option<([u8; 32], usize)>,
    info: access::RequestInfo,
}

pub async fn serve<D: Driver>(
    w: &Rc<Worker>,
    gen: &Arc<Generation>,
    lcfg: &ListenerConfig,
    client: Stream<D>,
    peer: SocketAddr,
    mut buf: Vec<u8>,
    life: super::ConnLife,
) {
    let cfg = &gen.config;
    let limits = proto::HeadLimits {
        max_headers: cfg.limits.max_headers.min(HEADER_SLOTS),
    };
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut rbuf: Vec<u8> = Vec::new();
    let mut kept: Option<Kept<D>> = None;
    let mut first = true;

    loop {
        // ---- 1. a complete head in `buf`
        match head_reader::read::<D>(&client, &mut buf, cfg, first).await {
            HeadRead::Complete => {}
            HeadRead::Closed => return,
            HeadRead::Reject(kind) => {
                return reject::<D>(w, &client, kind, kind.status().unwrap_or(400)).await;
            }
        }
        first = false;
        let parse_started = Instant::now();
        let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
        let req = match proto::parse_request(&buf, &mut headers, &limits) {
            Ok(Some(r)) => r,
            Ok(None) => return reject::<D>(w, &client, Kind::BadRequest, 400).await,
            Err(rej) => {
                let kind = if rej.status == 431 {
                    Kind::HeadTooLarge
                } else {
                    Kind::BadRequest
                };
                tracing::debug!(%peer, reason = rej.reason, "request rejected");
                return reject::<D>(w, &client, kind, rej.status).await;
            }
        };
        let ws = match req.upgrade {
            Upgrade::WebSocket => match proto::check_upgrade(&req) {
                Ok(h) => {
                    let mut key = [0u8; 32];
                    let n = h.key.len().min(32);
                    key[..n].copy_from_slice(&h.key[..n]);
                    Some((key, n))
                }
                Err(rej) => {
                    tracing::debug!(%peer, reason = rej.reason, "handshake rejected");
                    return reject::<D>(w, &client, Kind::BadHandshake, rej.status).await;
                }
            },
            _ => None,
        };
        w.counters()
            .head_parse
            .observe_us(parse_started.elapsed().as_micros() as u64);
        let req_is_head = req.method == "HEAD";
        let info = access::RequestInfo::capture(&cfg.log, &req);

        // ---- 2. route and pick
        let Some(ui) = super::route::route(cfg, lcfg, req.host, req.path) else {
            return reject_head::<D>(w, &client, req_is_head, Kind::NoRoute, 404).await;
        };
        let up = &gen.upstreams[ui];
        let key = ReqKey {
            req: &req,
            ip: peer.ip(),
        };
        let table = up.lb.load_full();
        let Some(pick) = table.pick(&key, &[]) else {
            w.error(Kind::NoBackend);
            return reject_head::<D>(w, &client, req_is_head, Kind::NoBackend, 503).await;
        };
        let reuse = match kept.take() {
            Some(k)
                if k.upstream == ui && same_backend(&k.table, k.conn.index, &table, pick.index) =>
            {
                if rio::peer_closed::<D>(&k.conn.stream) {
                    None
                } else {
                    Some(k)
                }
            }
            _ => None,
        };
        let (mut conn, table) = match reuse {
            Some(mut k) => {
                k.conn.set_cookie = pick.set_cookie;
                (k.conn, k.table)
            }
            None => {
                match connect::connect_from::<D, _>(
                    w,
                    &table,
                    &key,
                    pick,
                    cfg.limits.connect_retries,
                    cfg.timeouts.connect,
                )
                .await
                {
                    Ok(c) => (c, table),
                    Err(kind) => {
                        let status = kind.status().unwrap_or(502);
                        return reject_head::<D>(w, &client, req_is_head, kind, status).await;
                    }
                }
            }
        };

        // ---- 3. the head we send on
        out.clear();
        let strip = up
            .cookie
            .as_ref()
            .filter(|c| c.strip)
            .map(|c| c.name.as_str());
        proto::write_request_head(
            &req,
            &mut out,
            &proto::ForwardOpts {
                client_ip: peer.ip(),
                https: lcfg.tls_terminated,
                forward_for: lcfg.forward_for,
                real_ip: lcfg.real_ip,
                forward_proto: lcfg.forward_proto,
                forward_host: lcfg.forward_host,
                upgrade: ws.is_some(),
                strip_cookie: strip,
                extra_header: Some(info.header()),
            },
        );
        let ex = Exchange {
            body: match req.body {
                BodyKind::None => Framing::None,
                BodyKind::Length(n) => Framing::Length(n),
                BodyKind::Chunked => Framing::Chunked,
            },
            keep_alive: req.keep_alive,
            head_method: req.method == "HEAD",
            expect_continue: req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")),
            ws_key: ws,
            info,
        };
        let head_len = req.head_len;
        buf.drain(..head_len);

        if rio::write_all::<D>(&conn.stream, &out).await.is_err() {
            w.error(Kind::BackendReset);
            return reject_head::<D>(w, &client, req_is_head, Kind::BackendReset, 502).await;
        }

        // ---- 4. exchange
        let started = Instant::now();
        match exchange::<D>(
            w, gen, up, lcfg, &client, &mut conn, &table, &ex, &mut buf, &mut rbuf, &mut out, peer,
            started,
        )
        .await
        {
            Next::KeepBoth => {
                kept = Some(Kept {
                    conn,
                    table,
                    upstream: ui,
                });
            }
            Next::KeepClient => {}
            Next::Close => return,
            Next::Tunnel => {
                // The tunnel continues in a task of its own: this task's future is sized for
                // its largest state (two header arrays, the exchange), which an idle WebSocket
                // should not keep; the tunnel task holds only the two sockets and its pumps.
                let w = w.clone();
                let gen = gen.clone();
                let listener = lcfg.name.clone();
                let info = ex.info;
                rio::spawn_local(async move {
                    let up = &gen.upstreams[ui];
                    let drain = up.cfg.dns.drain_timeout.is_some();
                    let started = Instant::now();
                    let idle = gen.config.timeouts.tunnel_idle;
                    let stats = conn.guard.stats().clone();
                    let (end, moved) =
                        tunnel::run::<D>(&w, &client, &conn.stream, idle, &stats, drain).await;
                    let who = Who {
                        log: &gen.config.log,
                        client: peer,
                        listener: &listener,
                        upstream: &up.cfg.name,
                        status: 101,
                        request: Some(&info),
                    };
                    account_tunnel(&w, &table, conn.index, end, moved, started, &who);
                    drop(life);
                });
                return;
            }
        }
    }
}

enum Next {
    KeepBoth,
    KeepClient,
    Close,
    Tunnel,
}

#[allow(clippy::too_many_arguments)]
async fn exchange<D: Driver>(
    w: &Worker,
    gen: &Generation,
    up: &UpstreamRt,
    lcfg: &ListenerConfig,
    client: &Stream<D>,
    conn: &mut Connected<D>,
    table: &Table,
    ex: &Exchange,
    buf: &mut Vec<u8>,
    rbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    peer: SocketAddr,
    started: Instant,
) -> Next {
    let cfg = &gen.config;
    let backend = &conn.stream;
    let mut body_sent = ex.body == Framing::None || ex.ws_key.is_some();
    if !body_sent && !ex.expect_continue {
        if let Err(e) = body::forward::<D>(client, backend, buf, ex.body).await {
            return body_failed::<D>(w, client, e, true).await;
        }
        body_sent = true;
    }

    rbuf.clear();
    let mut client_keep = ex.keep_alive;
    loop {
        // ---- response head
        let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
        let resp = match head_reader::read_response::<D>(
            backend,
            rbuf,
            &mut headers,
            ex.head_method,
            cfg.timeouts.response_head,
            cfg.limits.max_head_bytes.max(16 * 1024),
        )
        .await
        {
            Ok(r) => r,
            Err(kind) => {
                w.error(kind);
                if ex.ws_key.is_some() {
                    up.counters.upgrade(w.id, false);
                }
                let status = kind.status().unwrap_or(502);
                return reject_next::<D>(client, status, ex.head_method).await;
            }
        };
        count_response(table, conn.index, resp.code);

        if resp.is_interim() {
            // 100 Continue and friends: relay, then the real response follows.
            let n = resp.head_len;
            if rio::write_all::<D>(client, &rbuf[..n]).await.is_err() {
                return Next::Close;
            }
            rbuf.drain(..n);
            if !body_sent {
                if let Err(e) = body::forward::<D>(client, backend, buf, ex.body).await {
                    return body_failed::<D>(w, client, e, true).await;
                }
                body_sent = true;
            }
            continue;
        }

        // ---- the cookie, if the policy wants one issued (once per new session: the only
        // allocation of an exchange, and only then)
        let mut cookie_buf = Vec::new();
        if conn.set_cookie {
            if let (Some(c), Some(value)) = (&up.cookie, table.cookie_value(conn.index)) {
                let secure = c.attrs.secure || (c.secure_auto && lcfg.tls_terminated);
                if secure == c.attrs.secure {
                    proto::write_set_cookie(&mut cookie_buf, &c.name, value.as_bytes(), &c.attrs);
                } else {
                    let attrs = proto::CookieAttrs {
                        secure,
                        ..c.attrs.clone()
                    };
                    proto::write_set_cookie(&mut cookie_buf, &c.name, value.as_bytes(), &attrs);
                }
            }
        }
        let set_cookie = (!cookie_buf.is_empty()).then_some(cookie_buf.as_slice());

        if resp.code == 101 {
            let ok = match (ex.ws_key, resp.ws_accept) {
                (Some((key, n)), Some(accept)) => {
                    resp.upgrade
                        .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"))
                        && proto::check_accept(accept, &key[..n])
                }
                _ => false,
            };
            if !ok {
                let kind = if ex.ws_key.is_some() {
                    Kind::BadAccept
                } else {
                    Kind::BadResponse
                };
                w.error(kind);
                up.counters.upgrade(w.id, false);
                return reject_next::<D>(client, 502, ex.head_method).await;
            }
            out.clear();
            proto::write_response_head(
                &resp,
                out,
                &proto::RespForwardOpts {
                    set_cookie,
                    close: false,
                },
            );
            let n = resp.head_len;
            // The 101, then any bytes the backend sent right after it; and the client's
            // frames that arrived with its head go to the backend before anything else.
            if rio::write_all::<D>(client, out).await.is_err()
                || rio::write_all::<D>(client, &rbuf[n..]).await.is_err()
            {
                return Next::Close;
            }
            if !buf.is_empty() && rio::write_all::<D>(backend, buf).await.is_err() {
                return Next::Close;
            }
            up.counters.upgrade(w.id, true);
            return Next::Tunnel;
        }

        if ex.ws_key.is_some() {
            up.counters.upgrade(w.id, false);
        }
        // ---- a normal response
        let code = resp.code;
        let framing = match resp.body {
            RespBody::None => Framing::None,
            RespBody::Length(n) => Framing::Length(n),
            RespBody::Chunked => Framing::Chunked,
            RespBody::UntilClose => Framing::UntilClose,
        };
        // A request body the backend answered before reading (expect-continue refused, an
        // early error) is still in the client's pipe: the client connection cannot be reused.
        client_keep &= framing != Framing::UntilClose && body_sent;
        let backend_keep = resp.keep_alive && body_sent;
        out.clear();
        proto::write_response_head(
            &resp,
            out,
            &proto::RespForwardOpts {
                set_cookie,
                close: !client_keep,
            },
        );
        let n = resp.head_len;
        if rio::write_all::<D>(client, out).await.is_err() {
            return Next::Close;
        }
        rbuf.drain(..n);
        let down = match body::forward::<D>(backend, client, rbuf, framing).await {
            Ok(n) => n,
            Err(e) => return body_failed::<D>(w, client, e, false).await,
        };
        up.counters.response(w.id, started);
        access::log(
            &cfg.log,
            access::Entry {
                client: peer,
                listener: &lcfg.name,
                upstream: &up.cfg.name,
                backend: table.name(conn.index).unwrap_or("-"),
                backend_addr: table.addr(conn.index),
                request: Some(&ex.info),
                status: code,
                started,
                bytes_up: 0,
                bytes_down: down,
                end: "response",
            },
        );
        if !rbuf.is_empty() {
            // A backend that sends more than it framed is broken: don't reuse it.
            return if client_keep {
                Next::KeepClient
            } else {
                Next::Close
            };
        }
        return match (client_keep, backend_keep) {
            (false, _) => Next::Close,
            (true, true) => Next::KeepBoth,
            (true, false) => Next::KeepClient,
        };
    }
}

async fn body_failed<D: Driver>(
    w: &Worker,
    client: &Stream<D>,
    e: BodyError,
    request_body: bool,
) -> Next {
    tracing::debug!(error = ?e, request_body, "body transfer failed");
    let kind = match (&e, request_body) {
        (BodyError::Bad(_), true) => Kind::BadRequest,
        (BodyError::Bad(_), false) => Kind::BadResponse,
        (BodyError::Src(_), true) | (BodyError::Dst(_), false) => Kind::ClientReset,
        (BodyError::Src(_), false) | (BodyError::Dst(_), true) => Kind::BackendReset,
    };
    w.error(kind);
    if request_body {
        if let BodyError::Bad(rej) = e {
            let _ = rio::write_all::<D>(client, proto::error_response(rej.status)).await;
        } else if kind == Kind::BackendReset {
            let _ = rio::write_all::<D>(client, proto::error_response(502)).await;
        }
    }
    Next::Close
}

async fn reject_next<D: Driver>(client: &Stream<D>, status: u16, head_method: bool) -> Next {
    let _ = rio::write_all::<D>(client, error_bytes(status, head_method)).await;
    Next::Close
}

/// The canned error, without its body when answering HEAD (RFC 9110 §9.3.2: a response to
/// HEAD has none; its Content-Length still tells the size a GET would get).
fn error_bytes(status: u16, head_method: bool) -> &'static [u8] {
    let full = proto::error_response(status);
    if !head_method {
        return full;
    }
    match full.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &full[..end + 4],
        None => full,
    }
}

/// `reject` for a parsed request, which knows whether it was HEAD.
async fn reject_head<D: Driver>(
    w: &Worker,
    client: &Stream<D>,
    head_method: bool,
    kind: Kind,
    status: u16,
) {
    if !matches!(
        kind,
        Kind::NoBackend | Kind::ConnectRefused | Kind::ConnectTimeout
    ) {
        // Connect failures were counted where they happened.
        w.error(kind);
    }
    let _ = rio::write_all::<D>(client, error_bytes(status, head_method)).await;
}

/// Answers a canned error (which carries `Connection: close`), counts it, and closes.
async fn reject<D: Driver>(w: &Worker, client: &Stream<D>, kind: Kind, status: u16) {
    reject_head::<D>(w, client, false, kind, status).await;
}

fn same_backend(a: &Table, ai: usize, b: &Table, bi: usize) -> bool {
    match (a.backend(ai), b.backend(bi)) {
        (Some(x), Some(y)) => x.name() == y.name() && x.addr() == y.addr(),
        _ => false,
    }
}

fn count_response(table: &Table, index: usize, code: u16) {
    if let Some(b) = table.backend(index) {
        b.stats().record_response(code);
    }
}

/// Who a finished exchange or tunnel was for, for the access log.
pub struct Who<'a> {
    pub log: &'a crate::config::LogConfig,
    pub client: SocketAddr,
    pub listener: &'a str,
    pub upstream: &'a str,
    /// 101 for an upgraded tunnel, 0 in tcp mode.
    pub status: u16,
    /// The upgrade request (http mode), for the access log.
    pub request: Option<&'a access::RequestInfo>,
}

/// Metrics for a finished tunnel: bytes per backend, lifetime, how it ended.
pub fn account_tunnel(
    w: &Worker,
    table: &Table,
    index: usize,
    end: tunnel::End,
    moved: tunnel::Moved,
    started: Instant,
    who: &Who<'_>,
) {
    // Bytes were added to the backend's counters by the tunnel as they moved.
    access::log(
        who.log,
        access::Entry {
            client: who.client,
            listener: who.listener,
            upstream: who.upstream,
            backend: table.name(index).unwrap_or("-"),
            backend_addr: table.addr(index),
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
        tunnel::End::IdleTimeout => w.error(Kind::ClientTimeout),
        tunnel::End::Drained => w.error(Kind::Drained),
    }
}

#[cfg(test)]
mod tests {
    use super::error_bytes;

    #[test]
    fn head_errors_have_no_body() {
        let full = error_bytes(502, false);
        let head = error_bytes(502, true);
        assert!(full.starts_with(head));
        assert!(head.ends_with(b"\r\n\r\n"));
        assert!(full.len() > head.len(), "the GET answer has a body");
        assert!(std::str::from_utf8(head)
            .unwrap()
            .contains("Content-Length"));
    }
}
