//! `io = "auto"` falls back to epoll for each thing a ring worker needs that is missing (no ring
//! at all, the EXT_ARG timed wait, an op the kernel's probe lacks), says what was missing in its
//! log, and still serves; `io = "uring"` with something missing refuses to start and names it.
//! Each case is forced with the test hook `RINGWAY_URING_PRETEND_MISSING`.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gateway::*;

/// Starts `ringway run --io IO` with the hook set; returns the log lines up to "data plane
/// started" (or to exit), and the child if it is still running.
fn start(io: &str, pretend: &str, backend: &str) -> (Vec<String>, Option<std::process::Child>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "",
            "--workers",
            "1",
            "--io",
            io,
            "--backend",
            backend,
        ])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env("RINGWAY_URING_PRETEND_MISSING", pretend)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringway");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) => {
                let started = l.contains("data plane started");
                lines.push(l);
                if started {
                    // the "listening" line comes before "data plane started"
                    return (lines, Some(child));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed: the process exited
                let _ = child.wait();
                return (lines, None);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ringway neither started nor exited:\n{}", lines.join("\n"));
            }
        }
    }
}

fn listening_addr(lines: &[String]) -> std::net::SocketAddr {
    let l = lines
        .iter()
        .find(|l| l.contains("listening"))
        .expect("listening line");
    let i = l.find(" addr=").expect("addr field") + 6;
    l[i..].split_whitespace().next().unwrap().parse().unwrap()
}

async fn falls_back(pretend: &str, named: &str) {
    let be = tagged_backend("fb").await;
    let (lines, child) = start("auto", pretend, &be.addr.to_string());
    let log = lines.join("\n");
    let mut child = child.unwrap_or_else(|| panic!("did not start:\n{log}"));
    let warn = lines
        .iter()
        .find(|l| l.contains("falling back to epoll"))
        .unwrap_or_else(|| panic!("no fallback line for {pretend}:\n{log}"));
    assert!(
        warn.contains(named),
        "fallback line does not name {named}: {warn}"
    );
    let started = lines.last().unwrap();
    assert!(
        started.contains("io=\"epoll\"") || started.contains("io=epoll"),
        "{started}"
    );
    // and it serves
    let r = roundtrip(listening_addr(&lines), &get("/x")).await;
    assert_eq!(r.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn auto_without_a_ring_uses_epoll() {
    falls_back("ring", "io_uring_setup").await;
}

#[tokio::test]
async fn auto_without_ext_arg_uses_epoll() {
    falls_back("EXT_ARG", "IORING_FEAT_EXT_ARG").await;
}

#[tokio::test]
async fn auto_without_an_op_uses_epoll() {
    falls_back("ACCEPT", "IORING_OP_ACCEPT").await;
    falls_back("POLL_ADD", "IORING_OP_POLL_ADD").await;
}

#[tokio::test]
async fn auto_with_everything_uses_the_ring() {
    let be = tagged_backend("fb").await;
    let (lines, child) = start("auto", "", &be.addr.to_string());
    let log = lines.join("\n");
    let mut child = child.unwrap_or_else(|| panic!("did not start:\n{log}"));
    assert!(!log.contains("falling back"), "{log}");
    assert!(
        log.contains("io=\"io_uring\"") || log.contains("io=io_uring"),
        "{log}"
    );
    let r = roundtrip(listening_addr(&lines), &get("/x")).await;
    assert_eq!(r.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// Without DEFER_TASKRUN the ring worker takes a weaker setup and still serves.
#[tokio::test]
async fn uring_without_defer_taskrun_still_serves() {
    let be = tagged_backend("fb").await;
    let (lines, child) = start("uring", "DEFER_TASKRUN", &be.addr.to_string());
    let log = lines.join("\n");
    let mut child = child.unwrap_or_else(|| panic!("did not start:\n{log}"));
    let r = roundtrip(listening_addr(&lines), &get("/x")).await;
    assert_eq!(r.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn uring_forced_with_a_missing_op_refuses_and_names_it() {
    let (lines, child) = start("uring", "ASYNC_CANCEL", "127.0.0.1:9");
    assert!(child.is_none(), "started anyway: {lines:?}");
    let log = lines.join("\n");
    assert!(log.contains("IORING_OP_ASYNC_CANCEL"), "{log}");
}
