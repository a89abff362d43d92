//! Bulk: N connections stream frames (or raw writes) of B bytes as fast as the path takes
//! them while reading the echo back concurrently. Reports MB/s each way (1 MB = 10^6 bytes,
//! payload bytes only) over the run's duration; after the deadline the readers drain what
//! is still in flight (bounded) so that "bytes both ways" can be compared.
//!
//! To keep the client cheap, WebSocket frames are masked once up front: 16 frames with
//! different keys are built and then sent in rotation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{join_all, open_many, payload, Conn, ConnError, Live, RunConfig};
use crate::report::Report;
use crate::ws::{encode_frame, Opcode};

/// How long readers keep draining the echo after the deadline.
const DRAIN: Duration = Duration::from_secs(2);

struct Totals {
    sent: u64,
    received: u64,
    received_by_deadline: u64,
    error: Option<String>,
}

pub async fn run(cfg: &RunConfig) -> Report {
    let mut rep = cfg.base_report("bulk");
    let open_deadline = Instant::now() + cfg.connect_timeout + cfg.duration;
    let (conns, errs) = open_many(cfg, cfg.conns, open_deadline).await;
    for e in &errs {
        rep.add_error(e);
    }
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, conn) in conns.into_iter().enumerate() {
        let frame = payload(cfg.frame, i as u64 + 11);
        let live = cfg.live.clone();
        tasks.push(tokio::spawn(stream_one(conn, frame, deadline, live)));
    }
    let results = join_all(tasks, deadline + DRAIN).await;
    let secs = cfg.duration.as_secs_f64();
    let (mut sent, mut recv, mut recv_dl) = (0u64, 0u64, 0u64);
    for t in &results {
        sent += t.sent;
        recv += t.received;
        recv_dl += t.received_by_deadline;
        if let Some(e) = &t.error {
            rep.add_error(e);
        }
    }
    rep.duration_s = secs;
    rep.bytes_sent = Some(sent);
    rep.bytes_received = Some(recv);
    rep.mb_per_s_up = Some(sent as f64 / 1e6 / secs.max(1e-9));
    rep.mb_per_s_down = Some(recv_dl as f64 / 1e6 / secs.max(1e-9));
    rep.explain_limits();
    rep
}

/// When a reader should look up from a blocked read: at the end of the drain while the
/// writer runs, then every 50 ms so that the end of the writer is noticed promptly. Reads
/// are cancel-safe, so timing out of one loses nothing.
fn wake(deadline: Instant) -> Instant {
    let now = Instant::now();
    if now < deadline {
        deadline + Duration::from_millis(50)
    } else {
        (now + Duration::from_millis(50)).min(deadline + DRAIN)
    }
}

async fn stream_one(conn: Conn, frame: Vec<u8>, deadline: Instant, live: Arc<Live>) -> Totals {
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let flen = frame.len() as u64;
    match conn {
        Conn::Ws(c) => {
            let (mut rd, mut wr) = c.into_split();
            let mut frames: Vec<Vec<u8>> = Vec::with_capacity(16);
            for _ in 0..16 {
                let mut f = Vec::with_capacity(frame.len() + 14);
                let mask = wr.rng().map(|r| r.mask());
                encode_frame(&mut f, true, Opcode::Binary, &frame, mask);
                frames.push(f);
            }
            let (s, d) = (sent.clone(), done.clone());
            let writer = tokio::spawn(async move {
                let mut k = 0usize;
                let mut err = None;
                while Instant::now() < deadline {
                    // A frame once started is finished (bounded by the drain), so that the
                    // echo can account for every byte sent.
                    let w = tokio::time::timeout_at(deadline + DRAIN, wr.send_raw(&frames[k % 16]))
                        .await;
                    match w {
                        Ok(Ok(())) => {
                            s.fetch_add(flen, Ordering::Relaxed);
                            k += 1;
                        }
                        Ok(Err(e)) => {
                            err = Some(e.kind());
                            break;
                        }
                        // A partial frame may be on the wire; the connection ends with
                        // this task, so it does not matter.
                        Err(_) => break,
                    }
                }
                d.store(true, Ordering::Release);
                err
            });
            let mut t = Totals {
                sent: 0,
                received: 0,
                received_by_deadline: 0,
                error: None,
            };
            loop {
                if done.load(Ordering::Acquire) && t.received >= sent.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout_at(wake(deadline), rd.next_frame()).await {
                    Ok(Ok(f)) => {
                        let n = f.payload.len() as u64;
                        t.received += n;
                        Live::add(&live.bytes, n);
                        if Instant::now() <= deadline {
                            t.received_by_deadline = t.received;
                        }
                    }
                    Ok(Err(e)) => {
                        t.error = Some(e.kind());
                        break;
                    }
                    Err(_) if Instant::now() >= deadline + DRAIN => break,
                    Err(_) => {}
                }
            }
            let werr = writer.await.unwrap_or(None);
            t.sent = sent.load(Ordering::Relaxed);
            t.error = t.error.or(werr);
            t
        }
        Conn::Tcp(stream) => {
            let (mut rd, mut wr) = stream.into_split();
            let (s, d) = (sent.clone(), done.clone());
            let writer = tokio::spawn(async move {
                let mut err = None;
                // `write` (not `write_all`) so that every byte that left is counted, even
                // when the deadline cuts a write short.
                let mut off = 0usize;
                while Instant::now() < deadline {
                    match tokio::time::timeout_at(deadline, wr.write(&frame[off..])).await {
                        Ok(Ok(0)) => {
                            err = Some("closed".to_string());
                            break;
                        }
                        Ok(Ok(n)) => {
                            s.fetch_add(n as u64, Ordering::Relaxed);
                            off = (off + n) % frame.len();
                        }
                        Ok(Err(e)) => {
                            err = Some(ConnError::from(e).0);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // TLS may still hold the last records; plain TCP flushes nothing.
                let _ = tokio::time::timeout_at(deadline + DRAIN, wr.flush()).await;
                d.store(true, Ordering::Release);
                err
            });
            let mut t = Totals {
                sent: 0,
                received: 0,
                received_by_deadline: 0,
                error: None,
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if done.load(Ordering::Acquire) && t.received >= sent.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout_at(wake(deadline), rd.read(&mut buf)).await {
                    Ok(Ok(0)) => {
                        t.error = Some("closed".into());
                        break;
                    }
                    Ok(Ok(n)) => {
                        t.received += n as u64;
                        Live::add(&live.bytes, n as u64);
                        if Instant::now() <= deadline {
                            t.received_by_deadline = t.received;
                        }
                    }
                    Ok(Err(e)) => {
                        t.error = Some(ConnError::from(e).0);
                        break;
                    }
                    Err(_) if Instant::now() >= deadline + DRAIN => break,
                    Err(_) => {}
                }
            }
            let werr = writer.await.unwrap_or(None);
            t.sent = sent.load(Ordering::Relaxed);
            t.error = t.error.or(werr);
            t
        }
    }
}
