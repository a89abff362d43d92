//! The opt-in ring `SHUTDOWN` (`RINGWAY_URING_OPS=send,close,shutdown`; off by default, see
//! docs/benchmarks.md): FINs passed on through a tunnel both ways arrive after every byte sent
//! before them, and the sockets are all closed afterwards. One test in this binary: the
//! variable is set for the whole process before the gateway starts.

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use gateway::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_with_ring_shutdown() {
    // The only test of this binary: nothing else reads the environment meanwhile.
    std::env::set_var("RINGWAY_URING_OPS", "send,close,shutdown");
    let be = raw_backend(|s, _| async move {
        let mut c = Conn::new(s);
        let rest = c.read_to_end().await.unwrap_or_default();
        let mut tail = b"tail:".to_vec();
        tail.extend_from_slice(&rest);
        c.send(&tail).await;
    })
    .await;
    let gw = Gateway::start(
        "uring",
        &["--mode", "tcp", "--backend", &be.addr.to_string()],
    );
    // Sockets and other fds go back to what the gateway held after the first tunnel; pipe ends
    // (bigger bodies go through splice) are pooled per core, up to a cap.
    let start = gw.fd_kinds();
    let mut base = start;
    for round in 0..20u64 {
        if round == 1 {
            base = gw.settle_kinds((start.0, 0, usize::MAX), usize::MAX).await;
        }
        let mut c = Conn::connect(gw.addr).await;
        let body = pseudo_bytes(round, 1_000 + 997 * round as usize);
        c.send(&body).await;
        c.s.shutdown().await.unwrap();
        let got = within("the backend's tail and FIN", c.read_to_end())
            .await
            .expect("read to EOF");
        let mut want = b"tail:".to_vec();
        want.extend_from_slice(&body);
        assert!(
            got == want,
            "round {round}: got {} bytes, want {}",
            got.len(),
            want.len()
        );
    }
    let after = gw.settle_kinds(base, 64).await;
    assert!(
        after.0 <= base.0 && after.2 <= base.2,
        "(sockets, pipe ends, other) {after:?} after 20 tunnels, {base:?} before"
    );
}
