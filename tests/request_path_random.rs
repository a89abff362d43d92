//! Randomized request sequences through the real gateway (issue 10): pipelined keep-alive
//! sequences of GET / HEAD / POST with Content-Length and chunked bodies written at random split
//! points, declined upgrades (200 / 400 with a body, the upgrade itself with or without a body),
//! 1xx before final responses, an upgrade accepted with 101 (last: then bytes echoed through the
//! tunnel) and backend resets (last: the sequence ends). Two upstreams on `/a/` and `/b/`, each
//! with a backend that records the exact body bytes it reads.
//!
//! Checked per sequence: each backend saw exactly the requests sent to its prefix, in order,
//! each with its own body byte for byte; the client got exactly one final answer per request,
//! in order (matched by the echoed `X-Seq`).
//!
//! Seeded: the seed is printed; `RINGWAY_FUZZ_SEED=N` replays it. Bounded: `SEQUENCES`
//! sequences of at most `MAX_LEN` requests, every wait bounded by `within`.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::sync::Arc;
use std::time::Duration;

use gateway::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEQUENCES: usize = 60;
const MAX_LEN: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    /// The backend answers 200 (after reading the body).
    Normal,
    /// The backend sends one or two `103 Early Hints` before its 200.
    Interim,
    /// An upgrade the backend declines with this status and a body, answering before it
    /// reads the upgrade's body.
    Decline(u16),
    /// An upgrade the backend accepts (101) after reading its body; last in a sequence.
    Accept,
    /// The backend resets the connection after reading the request; last in a sequence.
    Reset,
}

impl Act {
    fn header(self) -> &'static str {
        match self {
            Act::Normal => "normal",
            Act::Interim => "interim",
            Act::Decline(200) => "decline200",
            Act::Decline(_) => "decline400",
            Act::Accept => "accept",
            Act::Reset => "reset",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length,
    Chunked,
}

#[derive(Clone)]
struct Req {
    seq: usize,
    prefix: &'static str,
    method: &'static str,
    target: String,
    framing: Framing,
    body: Vec<u8>,
    act: Act,
    close: bool,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} {} {:?}({} B) {:?}{}",
            self.seq,
            self.method,
            self.target,
            self.framing,
            self.body.len(),
            self.act,
            if self.close { " close" } else { "" }
        )
    }
}

fn gen_body(rng: &mut StdRng) -> Vec<u8> {
    let n = if rng.gen_ratio(1, 8) {
        rng.gen_range(1000..40_000)
    } else {
        rng.gen_range(0..200)
    };
    pseudo_bytes(rng.gen(), n)
}

fn gen_sequence(rng: &mut StdRng, first_seq: usize) -> Vec<Req> {
    let len = rng.gen_range(1..=MAX_LEN);
    let mut v = Vec::with_capacity(len);
    for i in 0..len {
        let last = i + 1 == len;
        let act = match rng.gen_range(0..10) {
            0 | 1 => Act::Interim,
            2 => Act::Decline(200),
            3 => Act::Decline(400),
            4 if last => Act::Accept,
            5 if last => Act::Reset,
            _ => Act::Normal,
        };
        let upgrade = matches!(act, Act::Decline(_) | Act::Accept);
        let method = if upgrade {
            "GET"
        } else {
            ["GET", "HEAD", "POST", "POST"][rng.gen_range(0..4)]
        };
        let framing = if method == "HEAD" || (method == "GET" && !upgrade) {
            Framing::None
        } else {
            [Framing::None, Framing::Length, Framing::Chunked][rng.gen_range(0..3)]
        };
        let body = if framing == Framing::None {
            Vec::new()
        } else {
            gen_body(rng)
        };
        let prefix = if rng.gen_bool(0.5) { "/a/" } else { "/b/" };
        let seq = first_seq + i;
        v.push(Req {
            seq,
            prefix,
            method,
            target: format!("{prefix}r{seq}?q={}", rng.gen_range(0..1000)),
            framing,
            body,
            act,
            close: last && matches!(act, Act::Normal | Act::Interim) && rng.gen_ratio(1, 3),
        });
    }
    v
}

fn encode(rng: &mut StdRng, r: &Req, out: &mut Vec<u8>) {
    out.extend(format!("{} {} HTTP/1.1\r\nHost: t\r\n", r.method, r.target).as_bytes());
    out.extend(format!("X-Seq: {}\r\nX-Act: {}\r\n", r.seq, r.act.header()).as_bytes());
    if matches!(r.act, Act::Decline(_) | Act::Accept) {
        out.extend(
            format!(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
                 Sec-WebSocket-Version: 13\r\n"
            )
            .as_bytes(),
        );
    } else if r.close {
        out.extend(b"Connection: close\r\n");
    }
    match r.framing {
        Framing::None => out.extend(b"\r\n"),
        Framing::Length => {
            out.extend(format!("Content-Length: {}\r\n\r\n", r.body.len()).as_bytes());
            out.extend(&r.body);
        }
        Framing::Chunked => {
            out.extend(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = r.body.as_slice();
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len().min(5000));
                out.extend(format!("{n:x}\r\n").as_bytes());
                out.extend(&rest[..n]);
                out.extend(b"\r\n");
                rest = &rest[n..];
            }
            out.extend(b"0\r\n\r\n");
        }
    }
}

/// The backend's side of `Act`, read from the request's `X-Act`.
fn script(m: &Message, _conn: usize) -> Reply {
    fn interim(m: &Message) -> Vec<u8> {
        let seq: usize = m.header("x-seq").and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut out = Vec::new();
        for _ in 0..1 + seq % 2 {
            out.extend(b"HTTP/1.1 103 Early Hints\r\nLink: </hint>; rel=preload\r\n\r\n");
        }
        out.extend(echo_reply(m));
        out
    }
    let seq = m.header("x-seq").unwrap_or("-");
    let decline = |status: &str| {
        let body = format!("declined-{seq}");
        Reply::Before(
            format!(
                "HTTP/1.1 {status}\r\nX-Seq: {seq}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    };
    match m.header("x-act").unwrap_or("") {
        "interim" => Reply::After(interim),
        "decline200" => decline("200 OK"),
        "decline400" => decline("400 Bad Request"),
        "accept" => Reply::Tunnel,
        "reset" => Reply::Reset,
        _ => Reply::After(echo_reply),
    }
}

/// Sends `seq` pipelined (split at random points), then checks every answer in order.
async fn run_sequence(rng: &mut StdRng, addr: std::net::SocketAddr, seq: &[Req], ctx: &str) {
    let mut bytes = Vec::new();
    for r in seq {
        encode(rng, r, &mut bytes);
    }
    let mut c = Conn::connect(addr).await;
    let mut cuts: Vec<usize> = (0..rng.gen_range(0..6))
        .map(|_| rng.gen_range(0..=bytes.len()))
        .collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut from = 0;
    for to in cuts {
        c.send(&bytes[from..to]).await;
        from = to;
        if rng.gen_ratio(1, 2) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3))).await;
        }
    }
    for r in seq {
        let resp = loop {
            let m = c
                .response(r.method == "HEAD")
                .await
                .unwrap_or_else(|e| panic!("{ctx}: no answer to #{}: {e:?}", r.seq));
            if m.status >= 200 || m.status == 101 {
                break m;
            }
        };
        let what = format!("{ctx}: answer to {r:?}");
        match r.act {
            Act::Normal | Act::Interim => {
                assert_eq!(resp.status, 200, "{what}: {}", resp.brief());
                assert_eq!(
                    resp.header("x-seq"),
                    Some(r.seq.to_string().as_str()),
                    "{what}"
                );
                let mut want =
                    format!("{} {} len={}\n", r.method, r.target, r.body.len()).into_bytes();
                want.extend(&r.body);
                if r.method == "HEAD" {
                    want.clear();
                }
                assert!(
                    resp.body == want,
                    "{what}: body differs ({} B)",
                    resp.body.len()
                );
            }
            Act::Decline(status) => {
                assert_eq!(resp.status, status, "{what}: {}", resp.brief());
                assert_eq!(
                    resp.header("x-seq"),
                    Some(r.seq.to_string().as_str()),
                    "{what}"
                );
                assert_eq!(resp.body_str(), format!("declined-{}", r.seq), "{what}");
            }
            Act::Accept => {
                assert_eq!(resp.status, 101, "{what}: {}", resp.brief());
                let ping = format!("tunnel-{}", r.seq).into_bytes();
                c.send(&ping).await;
                let echo = c
                    .read_exact(ping.len())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: tunnel echo: {e:?}"));
                assert_eq!(echo, ping, "{what}: tunnel echo");
                return;
            }
            Act::Reset => {
                assert_eq!(resp.status, 502, "{what}: {}", resp.brief());
                assert!(c.closed().await, "{what}: not closed after the 502");
                return;
            }
        }
    }
    if seq.last().is_some_and(|r| r.close) {
        assert!(
            c.closed().await,
            "{ctx}: not closed after Connection: close"
        );
    }
    assert!(
        c.buf.is_empty(),
        "{ctx}: extra bytes after the last answer: {:?}",
        String::from_utf8_lossy(c.buf.make_contiguous())
    );
}

/// Waits (bounded) for `be` to hold `from + want.len()` records, then checks the new ones.
async fn check_backend(be: &Backend, from: usize, want: &[&Req], ctx: &str) {
    for _ in 0..100 {
        if be.requests().len() >= from + want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Requests that went over different backend connections are recorded in the order the
    // backend's tasks finished reading them, not the order the gateway sent them: compare in
    // sequence order (the client checks the order of the answers).
    let mut got = be.requests();
    let start = from.min(got.len());
    got[start..].sort_by_key(|m| {
        m.header("x-seq")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    let seen: Vec<String> = got[start..]
        .iter()
        .map(|m| {
            format!(
                "{} {} seq={} {} B",
                m.method,
                m.path,
                m.header("x-seq").unwrap_or("-"),
                m.body.len()
            )
        })
        .collect();
    let mut want = want.to_vec();
    want.sort_by_key(|r| r.seq);
    let sent: Vec<String> = want
        .iter()
        .map(|r| format!("{} {} seq={} {} B", r.method, r.target, r.seq, r.body.len()))
        .collect();
    assert_eq!(seen, sent, "{ctx}: backend {} saw other requests", be.name);
    for (m, r) in got[from..].iter().zip(&want) {
        assert!(
            m.body == r.body,
            "{ctx}: body of #{} differs at the backend",
            r.seq
        );
        assert_ne!(m.framing, "broken", "{ctx}: #{} framing broken", r.seq);
    }
}

fn seed() -> u64 {
    match std::env::var("RINGWAY_FUZZ_SEED") {
        Ok(s) => s.trim().parse().expect("RINGWAY_FUZZ_SEED: a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

async fn random_sequences(io: &'static str) {
    let seed = seed();
    eprintln!("request_path_random ({io}): seed {seed} (replay: RINGWAY_FUZZ_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut a = scripted_backend(Arc::new(script)).await;
    let mut b = scripted_backend(Arc::new(script)).await;
    a.name = "a".into();
    b.name = "b".into();
    let gw = Gateway::start_config(
        io,
        // Accepted upgrades carry raw bytes (the scripted backend echoes them), not WebSocket
        // frames: blind tunnels, or the gateway would refuse them with Close 1002.
        &blind_tunnels(&routed_config(
            "",
            &[("/a/", "a", &[a.addr]), ("/b/", "b", &[b.addr])],
        )),
    );
    let mut next = 0;
    for i in 0..SEQUENCES {
        let seq = gen_sequence(&mut rng, next);
        next += seq.len();
        let ctx = format!("seed {seed} ({io}) sequence {i} {seq:?}");
        let (from_a, from_b) = (a.requests().len(), b.requests().len());
        within(&ctx, run_sequence(&mut rng, gw.addr, &seq, &ctx)).await;
        let to = |p: &str| seq.iter().filter(|r| r.prefix == p).collect::<Vec<_>>();
        check_backend(&a, from_a, &to("/a/"), &ctx).await;
        check_backend(&b, from_b, &to("/b/"), &ctx).await;
    }
}

both_io!(random_sequences);
