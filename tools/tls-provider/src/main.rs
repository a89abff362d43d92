//! Server-side CPU per TLS 1.3 handshake (X25519), full and resumed, ring vs aws-lc-rs: a rustls
//! client and server in memory, the server's calls timed with the thread's CPU clock (so other
//! load on the machine does not count). Resumption uses ring's ticketer for both providers.
//! The figures in docs/architecture.md come from this program.
use std::sync::Arc;
use std::time::Duration;

/// The calling thread's CPU time.
struct Instant(Duration);
impl Instant {
    fn now() -> Instant {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, exclusively borrowed timespec for the call's duration.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Instant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    fn elapsed(&self) -> Duration {
        Instant::now().0 - self.0
    }
}
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn run(
    provider: Arc<CryptoProvider>,
    cert: &str,
    key: &str,
    n: usize,
    resume: bool,
) -> (Duration, Duration) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let k = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(certs[0].clone()).unwrap();
    let mut sc = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, k)
        .unwrap();
    if resume {
        sc.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    }
    let mut resumed = 0;
    let sc = Arc::new(sc);
    let mut cc = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        cc.resumption = rustls::client::Resumption::disabled();
    }
    let cc = Arc::new(cc);
    let (mut server_t, mut client_t) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let mut c = ClientConnection::new(cc.clone(), "bench.test".try_into().unwrap()).unwrap();
        let mut s = ServerConnection::new(sc.clone()).unwrap();
        let mut buf = Vec::new();
        while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
            let t = Instant::now();
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.process_new_packets().unwrap();
            }
            client_t += t.elapsed();
            let t = Instant::now();
            let mut r = &buf[..];
            while !r.is_empty() {
                s.read_tls(&mut r).unwrap();
                s.process_new_packets().unwrap();
            }
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            server_t += t.elapsed();
            let t = Instant::now();
            let mut r = &buf[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
                c.process_new_packets().unwrap();
            }
            client_t += t.elapsed();
            if buf.is_empty() && !c.wants_write() {
                break;
            }
        }
        if s.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            resumed += 1;
        }
    }
    assert!(
        if resume {
            resumed >= n - 1
        } else {
            resumed == 0
        },
        "resumed {resumed}/{n}"
    );
    (server_t / n as u32, client_t / n as u32)
}

fn main() {
    let n = 300;
    for (name, p) in [
        ("ring", Arc::new(rustls::crypto::ring::default_provider())),
        (
            "aws-lc-rs",
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        ),
    ] {
        for (kind, c, k) in [
            ("ECDSA P-256", "ec.crt", "ec.key"),
            ("RSA 2048", "rsa.crt", "rsa.key"),
        ] {
            for resume in [false, true] {
                let _ = run(p.clone(), c, k, 20, resume);
                let mut v: Vec<_> = (0..3).map(|_| run(p.clone(), c, k, n, resume).0).collect();
                v.sort();
                let what = if resume { "resumed" } else { "full" };
                println!("{name:10} {kind:12} {what:8} server thread-CPU per TLS1.3 handshake: median of 3 = {:?}", v[1]);
            }
        }
    }
}
