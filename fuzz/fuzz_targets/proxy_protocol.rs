//! PROXY protocol v1/v2: never panic, never claim more bytes than given, and
//! a parsed address header round-trips through the writer.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/proto/mod.rs"]
mod proto;

use proto::proxy_protocol::{parse, write_v2};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((header, n))) = parse(data) else {
        return;
    };
    assert!(n <= data.len());
    if let (Some(src), Some(dst)) = (header.source, header.dest) {
        let mut out = Vec::new();
        write_v2(src, dst, &mut out);
        let again = parse(&out).ok().flatten().map(|(h, _)| h);
        assert_eq!(
            again.and_then(|h| h.source).map(|s| s.port()),
            Some(src.port())
        );
    }
});
