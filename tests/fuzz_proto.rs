//! Randomized heads at the crate boundary (fixed seed): ~2000 random and mutated request heads
//! sent to the running gateway. Every answer must be a well-formed HTTP/1.x response (or several,
//! for pipelined input) or a plain close; the gateway must not crash and must still serve a good
//! request afterwards. Both io backends.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::sync::Arc;

use gateway::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"\0",
    b"\xff",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"Content-Length: 99999999999999999999",
    b"Connection: close",
    b"Upgrade: websocket",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"HTTP/1.",
    b"0\r\n\r\n",
    b"ffffffff\r\n",
    b"Sec-WebSocket-Version: 8",
    b"Host: ",
    b"\r\n\r\n",
    b"%00",
    b"GET",
    b"-1",
    b",",
    b";",
    b"\"",
];

fn mutate(rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_ratio(1, 8) {
        // pure noise
        let n = rng.gen_range(0..600);
        return (0..n).map(|_| rng.gen()).collect();
    }
    let mut v = SEEDS[rng.gen_range(0..SEEDS.len())].to_vec();
    for _ in 0..rng.gen_range(1..6) {
        let len = v.len().max(1);
        match rng.gen_range(0..7) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            1 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                let j = (i + rng.gen_range(1..20)).min(v.len());
                v.drain(i..j);
            }
            2 => {
                let i = rng.gen_range(0..=v.len());
                let t = TOKENS[rng.gen_range(0..TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            3 => {
                // duplicate a slice (header repeats)
                let i = rng.gen_range(0..len);
                let j = (i + rng.gen_range(1..40)).min(v.len());
                let dup = v[i.min(v.len())..j].to_vec();
                let at = rng.gen_range(0..=v.len());
                v.splice(at..at, dup);
            }
            4 => v.truncate(rng.gen_range(0..=v.len())),
            5 => {
                let i = rng.gen_range(0..=v.len());
                let filler = vec![b'a'; rng.gen_range(0..3000)];
                v.splice(i..i, filler);
            }
            _ => {
                if !v.is_empty() {
                    let i = rng.gen_range(0..v.len());
                    v[i] = v[i].to_ascii_uppercase();
                }
            }
        }
    }
    v
}

/// All responses on the connection must be well-formed; returns how many there were.
async fn check_case(addr: std::net::SocketAddr, input: &[u8], case: usize) -> usize {
    let mut c = Conn::connect(addr).await;
    use tokio::io::AsyncWriteExt;
    // the gateway may close before reading everything: ignore write errors
    let _ = c.s.write_all(input).await;
    let _ = c.s.shutdown().await;
    // leading empty lines before a request line may be ignored (RFC 9112 §2.2)
    let start = input
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let head_req = input[start..].starts_with(b"HEAD ");
    let mut n = 0;
    loop {
        // Bodiless answers to HEAD: our backend's 200, and the gateway's own answers to a HEAD
        // request it parsed (404 no route, 502/503/504 backend trouble). Errors from a failed
        // parse (400, 431, 505, …) answer something that was not a valid HEAD request, so
        // their body is framed as usual.
        let bodiless = |st: u16| head_req && (st == 200 || st == 404 || (500..505).contains(&st));
        match c.response_for(bodiless).await {
            Ok(m) => {
                assert!(m.status >= 100, "case {case}: {m:?}");
                n += 1;
                if n > 20 {
                    panic!("case {case}: more responses than requests");
                }
                if m.status == 101 {
                    return n;
                }
            }
            Err(ReadErr::Eof) => return n,
            Err(ReadErr::Broken(e)) if e.contains("reset") => return n,
            Err(e) => panic!(
                "case {case}: invalid output {e:?} for input {:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }
}

async fn random_heads(io: &'static str) {
    let be = http_backend(Arc::new(|req: &Message, _| {
        if req.header("sec-websocket-key").is_some() {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                ws_accept(req.header("sec-websocket-key").unwrap())
            )
            .into_bytes()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    }))
    .await;
    let toml = format!(
        "admin = \"\"\n[timeouts]\nhead = \"1s\"\nresponse_head = \"2s\"\n\n[[listener]]\nname = \"main\"\n\
         bind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"main\"\n\n[[upstream]]\nname = \"main\"\n\
         backends = [{{ name = \"b0\", address = \"{}\" }}]\n[upstream.health]\nmax_fails = 0\n",
        be.addr
    );
    let mut gw = Gateway::start_config(io, &toml);
    // fixed seed; RINGWAY_FUZZ_SEED=N explores others
    let seed = std::env::var("RINGWAY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7269_6e67_7761_7900u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let cases: Vec<Vec<u8>> = (0..2000).map(|_| mutate(&mut rng)).collect();
    let cases = Arc::new(cases);
    let addr = gw.addr;
    let mut tasks = Vec::new();
    for lane in 0..32 {
        let cases = cases.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            for i in (lane..cases.len()).step_by(32) {
                answered += check_case(addr, &cases[i], i).await;
            }
            answered
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.expect("fuzz lane");
    }
    assert!(answered > 100, "suspiciously few responses: {answered}");
    gw.assert_alive();
    let r = roundtrip(gw.addr, &get("/still-alive")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
}

both_io!(random_heads);
