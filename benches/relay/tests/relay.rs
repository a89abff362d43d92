//! The floor must relay what a proxy would: bytes both ways, in order, and the FIN.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An echo backend on a thread: each connection's bytes back until its EOF, then EOF.
fn echo_backend() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn start(backends: &str, threads: &str) -> (Relay, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_ring-relay"))
        .args([&listen, backends, threads])
        .spawn()
        .unwrap();
    let relay = Relay(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "ring-relay never listened on {listen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (relay, listen)
}

#[test]
fn relays_a_stream_both_ways_byte_for_byte_and_passes_the_fin_on() {
    // Two threads: the clients may land on either (SO_REUSEPORT).
    let (_relay, listen) = start(&format!("{},{}", echo_backend(), echo_backend()), "2");
    // Two clients, one per backend (round robin); 4 MiB each, more than a socket buffer, so
    // some sends come back short and buffers are reused many times over.
    let clients: Vec<_> = (0..2u8)
        .map(|k| {
            let listen = listen.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&listen).unwrap();
                let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8 ^ k).collect();
                let mut w = c.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&sent).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                c.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert_eq!(back.len(), data.len(), "client {k}: bytes echoed");
                assert!(
                    back == data,
                    "client {k}: the echo differs from what was sent"
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn refuses_bad_arguments_with_a_clear_error() {
    for args in [
        &[][..],
        &["127.0.0.1:1"][..],
        &["nonsense", "127.0.0.1:1"][..],
        &["127.0.0.1:0", "x"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ring-relay"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("ring-relay"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
