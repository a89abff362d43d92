//! tcp mode: no parsing. Pick a backend (only `hash:ip` can key on anything), connect with the
//! retry rule, optionally send a PROXY header so the backend sees the device's address, then
//! tunnel.

use std::net::SocketAddr;
use std::rc::Rc;

use crate::config::{ListenerConfig, SendProxy};
use crate::error::Kind;
use crate::io::{self as rio, Driver};
use crate::proto::proxy_protocol;
use crate::state::Generation;

use super::client::Client;
use super::{connect, handoff, Worker};

pub async fn serve<D: Driver>(
    w: &Rc<Worker>,
    gen: &Generation,
    lcfg: &ListenerConfig,
    client: Client<D>,
    peer: SocketAddr,
    early: Vec<u8>,
) {
    let Some((up_index, up)) = lcfg
        .upstream
        .and_then(|i| gen.upstreams.get(i).map(|u| (i, u)))
    else {
        w.error(Kind::NoRoute);
        return;
    };
    let cfg = &gen.config;
    let table = up.lb.load_full();
    let backend = match connect::pick_and_connect::<D, _>(
        w,
        &table,
        &peer.ip(), // the only key a raw TCP connection has
        cfg.limits.connect_retries,
        cfg.timeouts.connect,
    )
    .await
    {
        Ok(b) => b,
        Err(_) => return, // counted in pick_and_connect; the client just sees the close
    };

    let mut hello = Vec::new();
    let local = client.socket().local_addr().unwrap_or(peer);
    match up.cfg.send_proxy {
        SendProxy::None => {}
        SendProxy::V1 => proxy_protocol::write_v1(peer, local, &mut hello),
        SendProxy::V2 => proxy_protocol::write_v2(peer, local, &mut hello),
    }
    hello.extend_from_slice(&early);
    if !hello.is_empty() && rio::write_all::<D>(&backend.stream, &hello).await.is_err() {
        w.error(Kind::BackendReset);
        return;
    }
    drop(hello);
    drop(early);

    let who = handoff::Who {
        log: &cfg.log,
        client: peer,
        listener: &lcfg.name,
        upstream: up_index,
        status: 0,
    };
    handoff::run::<D>(w, gen, &table, &client, &backend, &who).await;
}
