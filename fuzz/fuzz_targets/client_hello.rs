//! ClientHello (SNI) parsing: never panic; a complete verdict never changes when more bytes
//! follow, and every prefix of a parsed hello is `Incomplete` or the same refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/proto/mod.rs"]
mod proto;

use proto::client_hello::parse_client_hello;

fuzz_target!(|data: &[u8]| {
    let whole = parse_client_hello(data);
    if let Ok(Some(h)) = whole {
        assert!(h.len <= data.len());
        for cut in [h.len / 2, h.len.saturating_sub(1)] {
            assert!(matches!(parse_client_hello(&data[..cut]), Ok(None)));
        }
        assert_eq!(parse_client_hello(&data[..h.len]), whole);
    }
});
