//! Route cookie values: `base64url(no pad)` of the first 12 bytes of
//! `HMAC-SHA1(secret, backend name)` — 16 characters, opaque, never an address.
//!
//! Why this shape: the value must name a backend without revealing its address, and a
//! client must not be able to make up a value for a backend it was never sent to (the table
//! only maps values it computed itself, so a made-up value is simply unknown and rebalanced).
//! Keying on the name with a secret shared by every replica makes the value identical on all
//! gateways and stable across pod restarts (new IP, same name). 96 bits of HMAC output are
//! plenty for "guess a valid value" (2^-96 per try) and keep the cookie short. Rotating the
//! secret rebalances every sticky client once. SHA-1's collision weakness does not matter to
//! HMAC-SHA1 as a PRF.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Bytes of HMAC output kept in a cookie value.
pub const COOKIE_MAC_LEN: usize = 12;
/// Length of an encoded cookie value (`4 × 12 / 3`).
pub const COOKIE_VALUE_LEN: usize = 16;

const BLOCK: usize = 64;

/// HMAC-SHA1 (RFC 2104).
pub fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..20].copy_from_slice(&sha1_smol::Sha1::from(key).digest().bytes());
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let mut inner = sha1_smol::Sha1::new();
    inner.update(&ipad);
    inner.update(msg);
    let mut outer = sha1_smol::Sha1::new();
    outer.update(&opad);
    outer.update(&inner.digest().bytes());
    outer.digest().bytes()
}

/// The cookie value that names backend `name` under `secret`.
pub fn encode(secret: &[u8], name: &str) -> String {
    let mac = hmac_sha1(secret, name.as_bytes());
    URL_SAFE_NO_PAD.encode(&mac[..COOKIE_MAC_LEN])
}

/// Decode a cookie value to its 12 MAC bytes, or `None` if it cannot be one of ours (wrong
/// length or alphabet). Allocation-free; never panics on client input.
pub fn decode(value: &[u8]) -> Option<[u8; COOKIE_MAC_LEN]> {
    if value.len() != COOKIE_VALUE_LEN {
        return None;
    }
    let mut out = [0u8; COOKIE_MAC_LEN];
    match URL_SAFE_NO_PAD.decode_slice(value, &mut out) {
        Ok(COOKIE_MAC_LEN) => Some(out),
        _ => None,
    }
}
