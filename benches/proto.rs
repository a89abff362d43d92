//! Hot-path costs of the sans-I/O protocol layer: what the gateway spends per
//! request head, per WebSocket handshake, and per chunked body, before any
//! syscall. Run with `cargo bench --bench proto`; numbers depend on the
//! machine, so compare runs on the same one.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringway::proto::ws_frame::{FrameTracker, Sender, Tally};
use ringway::proto::{
    accept_key, check_upgrade, parse_request, write_request_head, ChunkedScanner, ForwardOpts,
    HeadLimits,
};

/// A typical ~200-byte WebSocket upgrade head.
const SMALL: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// A ~4 KiB head with 40 headers, like a browser request with big cookies.
fn large_head() -> Vec<u8> {
    let mut h = b"POST /api/v1/messages?room=42 HTTP/1.1\r\nHost: chat.example.com\r\nContent-Length: 0\r\n".to_vec();
    for i in 0..38 {
        h.extend_from_slice(format!("X-Header-{i:02}: ").as_bytes());
        h.resize(h.len() + 90, b'v');
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn bench_heads(c: &mut Criterion) {
    let limits = HeadLimits { max_headers: 100 };
    let large = large_head();
    let mut g = c.benchmark_group("head");
    for (name, head) in [("small", SMALL), ("large", &large[..])] {
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(format!("parse_validate_{name}"), |b| {
            b.iter(|| {
                let mut headers = [httparse::EMPTY_HEADER; 100];
                let req = parse_request(black_box(head), &mut headers, &limits);
                black_box(req.map(|r| r.map(|r| r.head_len)))
            })
        });
    }
    let opts = ForwardOpts {
        client_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        https: false,
        forward_for: true,
        real_ip: true,
        forward_proto: true,
        forward_host: false,
        upgrade: true,
        strip_cookie: Some("rw"),
        extra_header: None,
    };
    let mut out = Vec::with_capacity(8192);
    g.bench_function("parse_check_forward_small", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            if let Ok(Some(req)) = parse_request(black_box(SMALL), &mut headers, &limits) {
                let hs = check_upgrade(&req).map(|h| h.key.len());
                out.clear();
                write_request_head(&req, &mut out, &opts);
                let _ = black_box((hs, out.len()));
            }
        })
    });
    g.finish();
}

fn bench_websocket(c: &mut Criterion) {
    c.bench_function("websocket/accept_key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
}

fn bench_chunked(c: &mut Criterion) {
    // 64 chunks of 1 KiB: framing scan cost with bulk data skipping.
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"400\r\n");
        body.resize(body.len() + 1024, b'x');
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("scan_64x1k", |b| {
        b.iter(|| ChunkedScanner::new().feed(black_box(&body)))
    });
    g.bench_function("scan_64x1k_split_1500", |b| {
        b.iter(|| {
            let mut sc = ChunkedScanner::new();
            let mut last = None;
            for piece in black_box(&body).chunks(1500) {
                last = Some(sc.feed(piece));
            }
            last
        })
    });
    g.finish();
}

/// Frame tracking per 64-byte WebSocket message (the tunnel's per-message cost when it tracks
/// frames): a masked client frame and an unmasked server frame.
fn bench_ws_frames(c: &mut Criterion) {
    let mut masked = vec![0x82u8, 0x80 | 64, 1, 2, 3, 4];
    masked.resize(masked.len() + 64, 0x5a);
    let mut plain = vec![0x82u8, 64];
    plain.resize(plain.len() + 64, 0x5a);
    let mut g = c.benchmark_group("ws_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("client_64b", |b| {
        let (mut t, mut tally) = (FrameTracker::new(Sender::Client), Tally::default());
        b.iter(|| t.scan(black_box(&masked), false, &mut tally))
    });
    g.bench_function("server_64b", |b| {
        let (mut t, mut tally) = (FrameTracker::new(Sender::Server), Tally::default());
        b.iter(|| t.scan(black_box(&plain), false, &mut tally))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_heads,
    bench_websocket,
    bench_chunked,
    bench_ws_frames
);
criterion_main!(benches);
