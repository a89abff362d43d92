//! tcp mode: no HTTP parsing. Pick a backend (by client IP, or on a `tls_passthrough` listener
//! by the ClientHello's server name: routes and `hash:sni`), connect with the retry rule,
//! optionally send a PROXY header so the backend sees the device's address, then tunnel every
//! byte untouched (the ClientHello included).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use crate::balance::KeySource;
use crate::config::{ListenerConfig, SendProxy};
use crate::error::Kind;
use crate::io::{self as rio, Driver, FirstBytes};
use crate::proto::client_hello::{self, ClientHello, HostName};
use crate::proto::proxy_protocol;
use crate::state::Generation;

use super::client::{ByteStream, Client};
use super::{connect, handoff, route, Worker};

/// What a tcp connection can be keyed on.
struct TcpKey {
    ip: IpAddr,
    sni: Option<HostName>,
}

impl KeySource for TcpKey {
    fn client_ip(&self) -> IpAddr {
        self.ip
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn cookie(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn query(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn sni(&self) -> Option<&[u8]> {
        self.sni.as_ref().map(|n| n.as_str().as_bytes())
    }
}

/// Serves a tcp-mode connection up to its tunnel, which continues in a task of its own
/// ([`handoff::spawn`]), holding `life` to its end.
pub async fn serve<D: Driver>(
    w: &Rc<Worker>,
    gen: &Arc<Generation>,
    lcfg: &ListenerConfig,
    client: Client<D>,
    peer: SocketAddr,
    mut early: Vec<u8>,
    life: super::ConnLife,
) {
    let cfg = &gen.config;
    let mut key = TcpKey {
        ip: peer.ip(),
        sni: None,
    };
    let upstream = if lcfg.tls_passthrough {
        match read_client_hello(&client, &mut early, cfg.timeouts.head).await {
            Ok(hello) => {
                key.sni = hello.sni;
                route::route_sni(cfg, lcfg, key.sni.as_ref().map(HostName::as_str))
            }
            Err(kind) => {
                w.error(kind);
                return; // no TLS stack to send an alert with: the client sees the close
            }
        }
    } else {
        lcfg.upstream
    };
    let Some((up_index, up)) = upstream.and_then(|i| gen.upstreams.get(i).map(|u| (i, u))) else {
        w.error(Kind::NoRoute);
        return;
    };
    let table = up.lb.load_full();
    // The PROXY header goes first on the TCP connection: for a TLS upstream, before the
    // handshake (`connect` writes it); for a plain one, with the early bytes below.
    let mut header = Vec::new();
    let local = client.socket().local_addr().unwrap_or(peer);
    match up.cfg.send_proxy {
        SendProxy::None => {}
        SendProxy::V1 => proxy_protocol::write_v1(peer, local, &mut header),
        SendProxy::V2 => proxy_protocol::write_v2(peer, local, &mut header),
    }
    let preface: &[u8] = if up.tls.is_some() { &header } else { &[] };
    // With nothing to write at once, the backend may be the one to speak first.
    let first = match header.is_empty() && early.is_empty() {
        true => FirstBytes::Theirs,
        false => FirstBytes::Ours,
    };
    let backend =
        match connect::pick_and_connect::<D, _>(w, cfg, up, &table, &key, preface, first).await {
            Ok(b) => b,
            Err(_) => return, // counted in pick_and_connect; the client just sees the close
        };

    let mut hello = if up.tls.is_some() { Vec::new() } else { header };
    hello.extend_from_slice(&early);
    if !hello.is_empty() && backend.stream.write_all(&hello).await.is_err() {
        w.error(Kind::BackendReset);
        return;
    }
    drop(hello);
    drop(early);

    // The tunnel gets a task of its own: this one is sized for the ClientHello and the
    // connect (6.7 KiB with the listener's state), which an idle device's tunnel should not
    // keep.
    let u = handoff::Upgraded {
        client,
        backend,
        table,
        upstream: up_index,
        peer,
        request: None,
        life,
        early: None, // written above, with the PROXY header
    };
    handoff::spawn(w, gen, lcfg.name.clone(), u, 0);
}

/// Bytes a ClientHello may take on the wire: the largest handshake message plus the headers of
/// the records it may be split into.
const MAX_HELLO_BYTES: usize = client_hello::MAX_HELLO + 1024;

/// Reads until `buf` (bytes already read: after a PROXY header, or nothing) holds a whole
/// ClientHello, within `timeout` of accept. Not TLS, garbled or oversized → `BadClientHello`;
/// too slow → `HeadTimeout`; a close before it is whole → `ClientReset`.
async fn read_client_hello<D: Driver>(
    client: &Client<D>,
    buf: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> Result<ClientHello, Kind> {
    let work = async {
        loop {
            match client_hello::parse_client_hello(buf) {
                Ok(Some(hello)) => return Ok(hello),
                Ok(None) if buf.len() < MAX_HELLO_BYTES => {}
                Ok(None) | Err(_) => return Err(Kind::BadClientHello),
            }
            let want = (MAX_HELLO_BYTES - buf.len()).min(4096);
            match client.read_append(buf, want).await {
                Ok(0) | Err(_) => return Err(Kind::ClientReset),
                Ok(_) => {}
            }
        }
    };
    rio::timeout(timeout, work)
        .await
        .unwrap_or(Err(Kind::HeadTimeout))
}
