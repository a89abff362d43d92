//! Inbound PROXY protocol (v1/v2) from a load balancer in front: the client address it carries
//! replaces the socket's peer for X-Forwarded-For, hashing and limits.
//!
//! Who may send one is the listener's `proxy_protocol_from`. A peer inside it must start with
//! a valid header ([`read`]: a missing or malformed one is refused). A peer outside it is a
//! direct client ([`sniff`]): served with its own address, unless its first bytes are a PROXY
//! header, which would be a client claiming someone else's address: refused and counted
//! (`proxy_untrusted`). Refusals answer 400 on http listeners (then a graceful close) and just
//! close on tcp listeners.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Mode;
use crate::error::Kind;
use crate::io::{self as rio, Driver, Stream};
use crate::proto::proxy_protocol::{self, V2_SIGNATURE};

use super::Worker;

/// v2 headers are bounded by their 16-bit length; we read at most this much before deciding.
const MAX_PROXY_HEADER: usize = 16 + 65535;

/// The v1 preamble.
const V1: &[u8] = b"PROXY ";

/// Reads the header into `buf`; bytes after it stay in `buf` (the start of the request).
/// `None` = refused (counted, answered, connection to be closed); `Some(None)` = LOCAL/UNKNOWN.
pub async fn read<D: Driver>(
    w: &Worker,
    client: &Stream<D>,
    buf: &mut Vec<u8>,
    timeout: Duration,
    mode: Mode,
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
            refuse::<D>(w, client, Kind::ProxyProtocol, mode).await;
            None
        }
    }
}

/// Whether `buf` starts like a PROXY header: `Some(true)` once a whole v1 preamble or v2
/// signature is there, `Some(false)` as soon as a byte rules both out, `None` while `buf` is
/// a strict prefix of one (or empty).
pub fn starts_like_proxy(buf: &[u8]) -> Option<bool> {
    if buf.is_empty() {
        return None;
    }
    let n1 = buf.len().min(V1.len());
    let n2 = buf.len().min(V2_SIGNATURE.len());
    let v1 = buf[..n1] == V1[..n1];
    let v2 = buf[..n2] == V2_SIGNATURE[..n2];
    if (v1 && n1 == V1.len()) || (v2 && n2 == V2_SIGNATURE.len()) {
        Some(true)
    } else if !v1 && !v2 {
        Some(false)
    } else {
        None
    }
}

/// A peer outside `proxy_protocol_from`: reads its first bytes into `buf` (left there for the
/// request or tunnel) until they rule a PROXY header in or out. `true` = serve it as a direct
/// client; `false` = refused (counted, answered) or gone.
///
/// The wait is bounded by `timeout` (`timeouts.head`). An http client that sends nothing in
/// that time gets 408, as it would from the head reader. A tcp client may be waiting for the
/// server to speak first: after `timeout` it is served as a direct client.
pub async fn sniff<D: Driver>(
    w: &Worker,
    client: &Stream<D>,
    buf: &mut Vec<u8>,
    timeout: Duration,
    mode: Mode,
) -> bool {
    let work = async {
        loop {
            if let Some(proxy) = starts_like_proxy(buf) {
                return Some(proxy);
            }
            match rio::read_append::<D>(client, buf, 512).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    match rio::timeout(timeout, work).await {
        Ok(Some(false)) => true,
        Ok(Some(true)) => {
            refuse::<D>(w, client, Kind::ProxyUntrusted, mode).await;
            false
        }
        Ok(None) => false,
        Err(_) if mode == Mode::Tcp => true,
        Err(_) => {
            refuse::<D>(w, client, Kind::HeadTimeout, mode).await;
            false
        }
    }
}

/// Counts `kind`; on an http listener answers its status and closes gracefully (so the client
/// reads the answer instead of a reset); on a tcp listener the caller just closes.
async fn refuse<D: Driver>(w: &Worker, client: &Stream<D>, kind: Kind, mode: Mode) {
    w.error(kind);
    if mode == Mode::Http {
        let status = kind.status().unwrap_or(400);
        if rio::write_all::<D>(client, crate::proto::error_response(status))
            .await
            .is_ok()
        {
            rio::linger_close::<D>(client).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_proxy_preambles_from_their_first_bytes() {
        let v2: &[u8] = &V2_SIGNATURE;
        for (bytes, want) in [
            (&b""[..], None),
            (b"P", None),
            (b"PROX", None),
            (b"PROXY", None),
            (b"PROXY ", Some(true)),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Some(true)),
            (b"\r\n\r\n", None),
            (v2, Some(true)),
            (b"GET / HTTP/1.1\r\n", Some(false)),
            (b"G", Some(false)),
            (b"POST / HTTP/1.1\r\n", Some(false)),
            (b"PUT", Some(false)),
            (b"PROXYX", Some(false)),
            (b"\r\n\r\nX", Some(false)),
            (b"\r\n\r\n\0\r\nQUIX", Some(false)),
            (b"\x16\x03\x01", Some(false)), // a TLS ClientHello
        ] {
            assert_eq!(
                starts_like_proxy(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
