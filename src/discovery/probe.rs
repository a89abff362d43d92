//! Active health probes, one connection each: `tcp` (connect), `http` (GET, 2xx/3xx) and
//! `websocket` (a real upgrade: `101`, `Upgrade: websocket` and the right
//! `Sec-WebSocket-Accept` — a backend that answers plain HTTP but cannot upgrade fails it).
//! The caller bounds the whole probe with the configured timeout. For an upstream with
//! `[upstream.tls]` the probe speaks through the same TLS client config as the data path (a
//! `tcp` check then means: connect and a verified handshake).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::CheckKind;
use crate::proto::check_accept;

/// Largest response head a probe reads; a longer one fails the probe.
const MAX_HEAD: usize = 8 * 1024;

/// Why a probe failed, for the log line of a state change.
pub type ProbeError = String;

/// One probe of the backend `name` at `addr`; `tls`: the upstream's TLS client side.
pub async fn probe(
    kind: CheckKind,
    (name, addr): (&str, SocketAddr),
    path: &str,
    host: Option<&str>,
    tls: Option<&crate::tls::UpstreamTls>,
) -> Result<(), ProbeError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let host = host.map_or_else(|| addr.to_string(), str::to_string);
    match tls {
        None => check(kind, s, path, &host).await,
        Some(t) => {
            let connector = tokio_rustls::TlsConnector::from(t.config.clone());
            let s = connector
                .connect(t.name_for(name, addr), s)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            check(kind, s, path, &host).await
        }
    }
}

async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    kind: CheckKind,
    mut s: S,
    path: &str,
    host: &str,
) -> Result<(), ProbeError> {
    match kind {
        CheckKind::None | CheckKind::Tcp => Ok(()),
        CheckKind::Http => {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringway-health\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let head = read_head(&mut s).await?;
            match status(&head)? {
                200..=399 => Ok(()),
                code => Err(format!("status {code}")),
            }
        }
        CheckKind::WebSocket => {
            let key = fresh_key();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringway-health\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: {key}\r\n\r\n"
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let head = read_head(&mut s).await?;
            check_upgrade(&head, key.as_bytes())?;
            // A polite close (masked, empty payload) so the backend does not log an abort.
            let _ = s.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await;
            Ok(())
        }
    }
}

/// Reads until the end of a response head (`\r\n\r\n`).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, ProbeError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
    }
}

fn status(head: &[u8]) -> Result<u16, ProbeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => resp.code.ok_or_else(|| "no status".into()),
        _ => Err("malformed response head".into()),
    }
}

/// The checks a client makes on a `101` (RFC 6455 §4.1).
pub(super) fn check_upgrade(head: &[u8], key: &[u8]) -> Result<(), ProbeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err("malformed response head".into());
    }
    match resp.code {
        Some(101) => {}
        Some(code) => return Err(format!("upgrade refused: status {code}")),
        None => return Err("no status".into()),
    }
    let get = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !get("upgrade").is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket")) {
        return Err("101 without Upgrade: websocket".into());
    }
    match get("sec-websocket-accept") {
        Some(v) if check_accept(v, key) => Ok(()),
        Some(_) => Err("wrong Sec-WebSocket-Accept".into()),
        None => Err("101 without Sec-WebSocket-Accept".into()),
    }
}

/// A new 16-byte nonce per probe (RFC 6455 wants it unpredictable per connection; a
/// process-unique counter mixed with the clock through SHA-1 is plenty for a health probe).
fn fresh_key() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut sha = sha1_smol::Sha1::new();
    sha.update(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    sha.update(&crate::balance::now_ms().to_le_bytes());
    sha.update(&std::process::id().to_le_bytes());
    let d = sha.digest().bytes();
    base64::engine::general_purpose::STANDARD.encode(&d[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::accept_key;

    #[test]
    fn upgrade_checks() {
        let key = fresh_key();
        assert_eq!(key.len(), 24);
        assert_ne!(key, fresh_key());
        let accept = String::from_utf8(accept_key(key.as_bytes()).to_vec()).unwrap();
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        assert_eq!(check_upgrade(ok.as_bytes(), key.as_bytes()), Ok(()));
        let wrong = ok.replace(&accept, "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(check_upgrade(wrong.as_bytes(), key.as_bytes()).is_err());
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            check_upgrade(plain, key.as_bytes()),
            Err("upgrade refused: status 200".into())
        );
        assert_eq!(status(plain), Ok(200));
    }
}
