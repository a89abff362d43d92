//! Request heads: parsing must never panic, and whatever it accepts must
//! forward into a head it accepts again, with the same method, path, host and
//! framing, and at most one Content-Length.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/proto/mod.rs"]
mod proto;

use proto::{check_upgrade, parse_request, write_request_head, ForwardOpts, HeadLimits, Upgrade};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits { max_headers: 64 };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let Ok(Some(req)) = parse_request(data, &mut headers, &limits) else {
        return;
    };
    assert!(req.head_len <= data.len());
    if req.upgrade == Upgrade::WebSocket {
        let _ = check_upgrade(&req);
    }
    let _ = proto::find_cookie(req.headers, "rw");
    let _ = proto::query_param(req.path, "sid");
    if req.host.is_none() {
        return;
    }
    let opts = ForwardOpts {
        client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        https: data.len() % 2 == 0,
        forward_for: true,
        real_ip: true,
        forward_proto: true,
        forward_host: true,
        upgrade: req.upgrade == Upgrade::WebSocket,
        strip_cookie: Some("rw"),
        extra_header: None,
    };
    let mut out = Vec::new();
    write_request_head(&req, &mut out, &opts);
    // Forwarding adds at most six headers of our own.
    let mut headers2 = [httparse::EMPTY_HEADER; 70];
    let limits2 = HeadLimits { max_headers: 70 };
    let again = parse_request(&out, &mut headers2, &limits2);
    let Ok(Some(again)) = again else {
        panic!("forwarded head refused: {again:?}");
    };
    // The backend frames and routes it as we did, and sees one Content-Length at most
    // (equal duplicates are collapsed, never passed on).
    assert_eq!(
        (again.method, again.path, again.host, again.body),
        (req.method, req.path, req.host, req.body)
    );
    assert!(again.header_count("content-length") <= 1);
});
