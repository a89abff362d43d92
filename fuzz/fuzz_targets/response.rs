//! Backend response heads: never panic; an accepted head forwards into a
//! head that parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/proto/mod.rs"]
mod proto;

use proto::{parse_response, write_response_head, RespForwardOpts};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let Ok(Some(resp)) = parse_response(data, &mut headers, flags & 1 == 1) else {
        return;
    };
    assert!(resp.head_len <= data.len());
    let opts = RespForwardOpts {
        set_cookie: Some(b"rw=abc; Path=/"),
        close: flags & 2 == 2,
    };
    let mut out = Vec::new();
    write_response_head(&resp, &mut out, &opts);
    let mut headers2 = [httparse::EMPTY_HEADER; 70];
    assert!(matches!(
        parse_response(&out, &mut headers2, false),
        Ok(Some(_))
    ));
});
