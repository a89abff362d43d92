//! Inbound PROXY protocol (v1/v2) from a load balancer in front: the client address it carries
//! replaces the socket's peer for X-Forwarded-For, hashing and limits. A missing or malformed
//! header closes the connection (http listeners answer 400 first).

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::Kind;
use crate::io::{self as rio, Driver, Stream};
use crate::proto::proxy_protocol;

use super::Worker;

/// v2 headers are bounded by their 16-bit length; we read at most this much before deciding.
const MAX_PROXY_HEADER: usize = 16 + 65535;

/// Reads the header into `buf`; bytes after it stay in `buf` (the start of the request).
/// `None` = refused (counted, connection to be closed); `Some(None)` = LOCAL/UNKNOWN.
pub async fn read<D: Driver>(
    w: &Worker,
    client: &Stream<D>,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Option<Option<SocketAddr>> {
    let work = async {
        loop {
            match proxy_protocol::parse(buf) {
                Ok(Some((hdr, used))) => {
                    buf.drain(..used);
                    return Some(hdr.source);
                }
                Ok(None) if buf.len() < MAX_PROXY_HEADER => {}
                Ok(None) | Err(_) => return None,
            }
            match rio::read_append::<D>(client, buf, 512).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    match rio::timeout(timeout, work).await {
        Ok(Some(src)) => Some(src),
        _ => {
            w.error(Kind::ProxyProtocol);
            let _ = rio::write_all::<D>(client, crate::proto::error_response(400)).await;
            None
        }
    }
}
