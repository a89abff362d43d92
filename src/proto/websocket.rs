//! WebSocket opening handshake checks (RFC 6455 §4).
//!
//! The gateway validates the client's handshake before it connects to a
//! backend, so a malformed upgrade costs no backend connection, and it
//! checks the backend's `Sec-WebSocket-Accept` before it starts splicing, so
//! a backend that is not speaking WebSocket (an error page, a different
//! service on a reused IP) is reported as 502 instead of being tunnelled.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::head::Request;
use super::{eq_ic, trim_ows, Reject};

/// The GUID appended to the key before hashing (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The parts of a valid client handshake the proxy needs later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsHandshake<'b> {
    /// `Sec-WebSocket-Key` as sent (24 base64 characters): the backend's
    /// accept value is checked against it.
    pub key: &'b [u8],
    /// `Sec-WebSocket-Protocol`, if any; passed through, not interpreted.
    pub protocol: Option<&'b [u8]>,
}

/// Validates a request whose `upgrade` is [`super::Upgrade::WebSocket`].
///
/// GET over HTTP/1.1 (else 400), `Sec-WebSocket-Version: 13` (else 426, whose
/// canned response advertises version 13), one `Sec-WebSocket-Key` that is
/// base64 of exactly 16 bytes (else 400).
pub fn check_upgrade<'b>(req: &Request<'_, 'b>) -> Result<WsHandshake<'b>, Reject> {
    if req.method != "GET" {
        return Err(Reject::bad_request("WebSocket upgrade must use GET"));
    }
    if req.minor_version != 1 {
        return Err(Reject::bad_request("WebSocket upgrade needs HTTP/1.1"));
    }
    let mut version_ok = false;
    let mut versions = 0usize;
    let mut key: Option<&'b [u8]> = None;
    let mut keys = 0usize;
    let mut protocol = None;
    for h in req.headers {
        let name = h.name.as_bytes();
        if eq_ic(name, b"sec-websocket-version") {
            versions += 1;
            version_ok = trim_ows(h.value) == b"13";
        } else if eq_ic(name, b"sec-websocket-key") {
            keys += 1;
            key = Some(trim_ows(h.value));
        } else if eq_ic(name, b"sec-websocket-protocol") && protocol.is_none() {
            protocol = Some(h.value);
        }
    }
    if versions != 1 || !version_ok {
        return Err(Reject::new(426, "unsupported Sec-WebSocket-Version"));
    }
    let key = match (keys, key) {
        (1, Some(k)) if key_is_valid(k) => k,
        (0, _) => return Err(Reject::bad_request("missing Sec-WebSocket-Key")),
        (1, _) => return Err(Reject::bad_request("invalid Sec-WebSocket-Key")),
        _ => return Err(Reject::bad_request("more than one Sec-WebSocket-Key")),
    };
    Ok(WsHandshake { key, protocol })
}

/// True if `key` is canonical base64 of exactly 16 bytes (RFC 6455 §4.1).
fn key_is_valid(key: &[u8]) -> bool {
    // 16 bytes always encode to 24 characters ending in "=="; checking the
    // length first keeps the decoder's output within the stack buffer.
    if key.len() != 24 {
        return false;
    }
    let mut out = [0u8; 24];
    matches!(STANDARD.decode_slice(key, &mut out), Ok(16))
}

/// `base64(SHA-1(key ++ GUID))`, the value the server must return in
/// `Sec-WebSocket-Accept` (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest = sha.digest().bytes();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 characters, so this cannot fail;
    // ignoring the result keeps a panic path out of the hot path.
    let _ = STANDARD.encode_slice(digest, &mut out);
    out
}

/// True if the backend's `Sec-WebSocket-Accept` value matches `key`.
pub fn check_accept(resp_accept: &[u8], key: &[u8]) -> bool {
    trim_ows(resp_accept) == accept_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::head::{parse_request, HeadLimits, Upgrade};

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn check(head: &str) -> Result<(), Reject> {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let req = parse_request(head.as_bytes(), &mut h, &HeadLimits::default())
            .expect("head is valid")
            .expect("head is complete");
        assert_eq!(req.upgrade, Upgrade::WebSocket);
        check_upgrade(&req).map(|_| ())
    }

    fn handshake(method: &str, version: &str, extra: &str) -> String {
        format!(
            "{method} /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\
             Sec-WebSocket-Version: {version}\r\n\r\n"
        )
    }

    #[test]
    fn rfc6455_test_vector() {
        assert_eq!(&accept_key(KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(check_accept(
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            KEY.as_bytes()
        ));
        assert!(!check_accept(
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo",
            KEY.as_bytes()
        ));
        assert!(!check_accept(b"", KEY.as_bytes()));
    }

    #[test]
    fn valid_handshake() {
        let head = handshake(
            "GET",
            "13",
            &format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Protocol: chat\r\n"),
        );
        let mut h = [httparse::EMPTY_HEADER; 32];
        let req = parse_request(head.as_bytes(), &mut h, &HeadLimits::default())
            .unwrap()
            .unwrap();
        let hs = check_upgrade(&req).unwrap();
        assert_eq!(hs.key, KEY.as_bytes());
        assert_eq!(hs.protocol, Some(&b"chat"[..]));
    }

    #[test]
    fn wrong_version_is_426() {
        let key = format!("Sec-WebSocket-Key: {KEY}\r\n");
        assert_eq!(check(&handshake("GET", "8", &key)).unwrap_err().status, 426);
        assert_eq!(
            check(&handshake("GET", "13, 8", &key)).unwrap_err().status,
            426
        );
        let no_version = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n{key}\r\n"
        );
        assert_eq!(check(&no_version).unwrap_err().status, 426);
    }

    #[test]
    fn post_upgrade_is_400() {
        let key = format!("Sec-WebSocket-Key: {KEY}\r\n");
        assert_eq!(
            check(&handshake("POST", "13", &key)).unwrap_err().status,
            400
        );
    }

    #[test]
    fn http10_upgrade_is_400() {
        let head = format!(
            "GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(check(&head).unwrap_err().status, 400);
    }

    #[test]
    fn bad_keys_are_400() {
        for key in [
            "AAECAwQFBgcICQoLDA0O".to_string(),     // 15 bytes
            "AAECAwQFBgcICQoLDA0ODxA=".to_string(), // 17 bytes, 24 chars
            "AAECAwQFBgcICQoLDA0ODxA".to_string(),  // 17 bytes, unpadded
            "dGhlIHNhbXBsZSBub25jZQ!!".to_string(), // not base64
            "dGhlIHNhbXBsZSBub25jZR==".to_string(), // non-canonical trailing bits
            String::new(),
        ] {
            let extra = format!("Sec-WebSocket-Key: {key}\r\n");
            assert_eq!(
                check(&handshake("GET", "13", &extra)).unwrap_err().status,
                400,
                "{key}"
            );
        }
        assert_eq!(check(&handshake("GET", "13", "")).unwrap_err().status, 400);
        let two = format!("Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Key: {KEY}\r\n");
        assert_eq!(
            check(&handshake("GET", "13", &two)).unwrap_err().status,
            400
        );
    }
}
