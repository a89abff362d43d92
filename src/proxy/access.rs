//! The access log: one line per request and per tunnel close (client, listener, upstream,
//! backend and its address, method, host, path, request id, status, duration, bytes each way,
//! how it ended), through `tracing` under the target `ringway::access`, so `--log-format json`
//! makes it JSON. Off by default; when on, `log.access_sample` keeps a fraction (a per-core
//! xorshift decides, no shared state).
//!
//! The request id ([`RequestId`]) is made for every request, logged or not, because it is
//! forwarded to the backend as `X-Request-Id`: the client's own value when it is sane, else
//! one generated here (no allocation, no shared state).

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::LogConfig;
use crate::proto;

/// The header a request id travels in, both ways of the gateway.
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";
/// Longest client-sent request id kept; a longer one is replaced by a generated id (it would
/// bloat every log line and backend head, and no tracing scheme needs more).
pub const MAX_REQUEST_ID: usize = 128;

/// A request's id: the client's `X-Request-Id` if it is 1..=[`MAX_REQUEST_ID`] bytes of
/// `A-Z a-z 0-9 - _ . : + / = @` (UUIDs, hex, base64, W3C trace ids), else 32 hex digits
/// generated here. Kept inline, so making one never allocates.
#[derive(Clone)]
pub struct RequestId {
    buf: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl RequestId {
    /// The client's id from `value` (the first `X-Request-Id` header) when valid, else a new one.
    pub fn from_client(value: Option<&[u8]>) -> RequestId {
        match value {
            Some(v) if valid_request_id(v) => {
                let mut buf = [0u8; MAX_REQUEST_ID];
                buf[..v.len()].copy_from_slice(v);
                RequestId {
                    buf,
                    len: v.len() as u8,
                }
            }
            _ => RequestId::generate(),
        }
    }

    /// 128 bits as 32 lowercase hex digits: a random per-thread prefix and a per-thread
    /// counter mixed through a bijection, so ids are unique within a thread and collide across
    /// threads or processes only by chance (2^-64).
    pub fn generate() -> RequestId {
        let (prefix, n) = ID_STATE.with(|s| {
            let (p, n) = s.get();
            s.set((p, n.wrapping_add(1)));
            (p, n)
        });
        let mut buf = [0u8; MAX_REQUEST_ID];
        hex16(&mut buf[..16], prefix);
        hex16(
            &mut buf[16..32],
            splitmix64(prefix ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        RequestId { buf, len: 32 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked or generated).
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }
}

pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len())
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

fn hex16(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

thread_local! {
    /// (random prefix, counter). The prefix comes from std's per-process random hash keys.
    static ID_STATE: Cell<(u64, u64)> = Cell::new((random_u64(), 0));
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// What the access log and the backend need of a request after its head buffer is gone: the
/// request id (always) and "method host path" (only while the access log is on, so a gateway
/// with it off allocates nothing here). The path is logged without its query string, which
/// often carries tokens and session ids.
pub struct RequestInfo {
    pub id: RequestId,
    text: String,
    method_end: usize,
    host_end: usize,
}

impl RequestInfo {
    pub fn capture(log: &LogConfig, req: &proto::Request<'_, '_>) -> RequestInfo {
        let id = RequestId::from_client(req.header("x-request-id"));
        let mut text = String::new();
        let (mut method_end, mut host_end) = (0, 0);
        if log.access {
            let path = req.path.split('?').next().unwrap_or("");
            let host = req.host.unwrap_or("");
            text.reserve(req.method.len() + host.len() + path.len());
            text.push_str(req.method);
            method_end = text.len();
            text.push_str(host);
            host_end = text.len();
            text.push_str(path);
        }
        RequestInfo {
            id,
            text,
            method_end,
            host_end,
        }
    }

    /// The header to add to the request sent to the backend (`ForwardOpts::extra_header`);
    /// the writer drops any `X-Request-Id` the client sent, so the backend sees exactly one.
    pub fn header(&self) -> (&'static str, &[u8]) {
        (REQUEST_ID_HEADER, self.id.as_bytes())
    }

    pub fn method(&self) -> &str {
        &self.text[..self.method_end]
    }

    pub fn host(&self) -> &str {
        &self.text[self.method_end..self.host_end]
    }

    pub fn path(&self) -> &str {
        &self.text[self.host_end..]
    }
}

pub struct Entry<'a> {
    pub client: SocketAddr,
    pub listener: &'a str,
    pub upstream: &'a str,
    pub backend: &'a str,
    /// The backend's address (`-` when none was picked).
    pub backend_addr: Option<SocketAddr>,
    /// The request (http mode); `None` for a tcp-mode tunnel.
    pub request: Option<&'a RequestInfo>,
    /// HTTP status relayed (101 for a tunnel), 0 in tcp mode.
    pub status: u16,
    pub started: Instant,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// `response`, or how a tunnel ended (`closed`, `client_reset`, …).
    pub end: &'static str,
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// Whether this line is kept (`sample` in 0..=1).
fn sampled(sample: f64) -> bool {
    if sample >= 1.0 {
        return true;
    }
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < sample
    })
}

pub fn log(cfg: &LogConfig, e: Entry<'_>) {
    if !cfg.access || !sampled(cfg.access_sample) {
        return;
    }
    let r = e.request;
    tracing::info!(
        target: "ringway::access",
        client = %e.client,
        listener = e.listener,
        method = r.map_or("-", RequestInfo::method),
        host = r.map_or("-", RequestInfo::host),
        path = r.map_or("-", RequestInfo::path),
        request_id = r.map_or("-", |r| r.id.as_str()),
        upstream = e.upstream,
        backend = e.backend,
        backend_addr = %Addr(e.backend_addr),
        status = e.status,
        duration_ms = e.started.elapsed().as_secs_f64() * 1000.0,
        bytes_up = e.bytes_up,
        bytes_down = e.bytes_down,
        end = e.end,
    );
}

/// `Option<SocketAddr>` displayed as the address or `-`.
struct Addr(Option<SocketAddr>);

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_anything_else_replaced() {
        let uuid = b"4bf92f35-77b3-4da6-a3ce-929d0e0e4736";
        assert_eq!(RequestId::from_client(Some(uuid)).as_bytes(), uuid);
        let max = [b'a'; MAX_REQUEST_ID];
        assert_eq!(RequestId::from_client(Some(&max)).as_bytes(), &max[..]);
        let too_long = [b'a'; MAX_REQUEST_ID + 1];
        let bads: [&[u8]; 7] = [
            &too_long[..],
            b"",
            b"has space",
            b"crlf\r\nX-Evil: 1",
            b"quote\"",
            b"\xff\xfe",
            b"semi;colon",
        ];
        for bad in bads {
            let id = RequestId::from_client(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert_eq!(id.as_bytes().len(), 32, "{bad:?}");
            assert!(valid_request_id(id.as_bytes()));
        }
        assert_eq!(RequestId::from_client(None).as_str().len(), 32);
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| RequestId::generate().as_str().to_string())
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn sampling_keeps_about_the_fraction() {
        let kept = (0..100_000).filter(|_| sampled(0.1)).count();
        assert!((8_000..12_000).contains(&kept), "{kept}");
        assert!((0..1000).all(|_| sampled(1.0)));
        assert!((0..1000).all(|_| !sampled(0.0)));
    }
}
