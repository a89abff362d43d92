//! `--tls` against a real TLS server: a small tokio-rustls terminator in the test (a CA and
//! certificate made per test with rcgen, session tickets on) in front of the plaintext echo
//! backend, and HAProxy / nginx through `compare --tls` when they are installed. Asserted:
//! echoes complete with zero errors over `wss://` and TLS raw TCP in every scenario, `--ca`
//! vs `--insecure` (a wrong CA or name fails with a clear error), the SNI the server sees,
//! and full vs resumed handshakes counted. Never a duration.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loadgen::compare::{run_compare, CompareConfig, GatewaySpec, Peer, TlsCompare};
use loadgen::scenario::{Kind, Proto, RunConfig};
use loadgen::tls::{generate_certs, CertSet, TlsClient, TlsOptions};
use loadgen::{run_scenario, spawn_backend, Backend, Mode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// A TLS terminator: accepts TLS, records the SNI, and pipes the plaintext to an echo
/// backend. Dropping it stops the accept loop.
struct Terminator {
    addr: SocketAddr,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    _backend: Backend,
    task: tokio::task::JoinHandle<()>,
    _dir: loadgen::compare::TempDir,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn certs(tag: &str, names: &[&str]) -> (loadgen::compare::TempDir, CertSet) {
    let dir = loadgen::compare::TempDir::new(tag).unwrap();
    let set = generate_certs(&dir.0, names).unwrap();
    (dir, set)
}

async fn terminator(proto: Proto, names: &[&str]) -> (Terminator, CertSet) {
    let tag = format!("tls-term-{}", names.join("-"));
    let (dir, set) = certs(&tag, names);
    let backend = spawn_backend(
        match proto {
            Proto::Ws => Mode::Ws,
            Proto::Tcp => Mode::Tcp,
        },
        "echo",
    )
    .await
    .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(set.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(set.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let snis = Arc::new(Mutex::new(Vec::new()));
    let (seen, upstream) = (snis.clone(), backend.addr);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                seen.lock()
                    .unwrap()
                    .push(tls.get_ref().1.server_name().map(str::to_string));
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (
        Terminator {
            addr,
            snis,
            _backend: backend,
            task,
            _dir: dir,
        },
        set,
    )
}

fn client(ca: Option<&CertSet>, sni: Option<&str>, resume: bool) -> Arc<TlsClient> {
    Arc::new(
        TlsClient::new(
            &TlsOptions {
                ca: ca.map(|c| c.ca.clone()),
                insecure: ca.is_none(),
                sni: sni.map(str::to_string),
                resume,
            },
            "127.0.0.1:1",
        )
        .unwrap(),
    )
}

fn cfg(addr: SocketAddr, proto: Proto, tls: Arc<TlsClient>) -> RunConfig {
    let mut c = RunConfig::new(addr, proto);
    c.duration = Duration::from_millis(500);
    c.hold = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(5);
    c.tls = Some(tls);
    c
}

/// `wss://` and TLS raw TCP pingpong verified against the CA, zero errors; one handshake per
/// connection, each counted once; the server saw the SNI asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_over_wss_and_tls_tcp_with_ca() {
    for proto in [Proto::Ws, Proto::Tcp] {
        let (t, set) = terminator(proto, &["echo.test"]).await;
        let mut c = cfg(t.addr, proto, client(Some(&set), Some("echo.test"), true));
        c.conns = 4;
        let r = run_scenario(Kind::Pingpong, &c).await;
        assert_eq!(r.errors, 0, "{proto:?}: {}", r.human());
        assert!(r.messages > 0, "{proto:?}: {}", r.human());
        assert_eq!(
            r.proto,
            if proto == Proto::Ws { "wss" } else { "tls" },
            "{}",
            r.human()
        );
        let h = r.tls.as_ref().expect("a TLS run reports its handshakes");
        assert_eq!(h.full_handshakes + h.resumed_handshakes, 4, "{}", r.human());
        assert_eq!(h.sni, "echo.test");
        assert!(
            h.negotiated
                .as_deref()
                .unwrap_or("")
                .starts_with("TLSv1_3 TLS13_"),
            "{h:?}"
        );
        let snis = t.snis.lock().unwrap().clone();
        assert_eq!(snis.len(), 4);
        assert!(
            snis.iter().all(|s| s.as_deref() == Some("echo.test")),
            "{snis:?}"
        );
        assert!(r.human().contains("resumed handshakes"), "{}", r.human());
    }
}

/// `--insecure` accepts a certificate from an unknown CA; `--ca` with another CA refuses it
/// with `tls_unknown_issuer` and a sentence naming `--ca`; a name the certificate does not
/// hold is `tls_bad_name`. Nothing is echoed through a refused handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_vs_ca_and_a_wrong_ca_fails_clearly() {
    let (t, _set) = terminator(Proto::Ws, &["localhost"]).await;
    let mut c = cfg(t.addr, Proto::Ws, client(None, Some("localhost"), true));
    c.conns = 2;
    let r = run_scenario(Kind::Pingpong, &c).await;
    assert_eq!(r.errors, 0, "--insecure: {}", r.human());
    assert!(r.messages > 0);

    let (_other_dir, other) = certs("tls-other-ca", &["localhost"]);
    let mut c = cfg(
        t.addr,
        Proto::Ws,
        client(Some(&other), Some("localhost"), true),
    );
    c.conns = 2;
    let r = run_scenario(Kind::Pingpong, &c).await;
    assert_eq!(r.messages, 0, "{}", r.human());
    assert_eq!(
        r.errors_by_kind.keys().collect::<Vec<_>>(),
        vec!["tls_unknown_issuer"],
        "{}",
        r.human()
    );
    assert!(
        r.human().contains("not signed by a CA in --ca"),
        "{}",
        r.human()
    );
    let h = r.tls.unwrap();
    assert_eq!(h.full_handshakes + h.resumed_handshakes, 0);

    let (t2, set2) = terminator(Proto::Tcp, &["localhost"]).await;
    let mut c = cfg(
        t2.addr,
        Proto::Tcp,
        client(Some(&set2), Some("other.test"), true),
    );
    c.conns = 1;
    let r = run_scenario(Kind::Pingpong, &c).await;
    assert_eq!(
        r.errors_by_kind.keys().collect::<Vec<_>>(),
        vec!["tls_bad_name"],
        "{}",
        r.human()
    );
}

/// The CLI refuses a wrong CA before the run, with one clear line, and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_wrong_ca_is_one_clear_error() {
    let (t, set) = terminator(Proto::Ws, &["localhost"]).await;
    let (_d, other) = certs("tls-cli-other", &["localhost"]);
    let bin = env!("CARGO_BIN_EXE_loadgen");
    let run = |ca: &std::path::Path| {
        tokio::process::Command::new(bin)
            .args(["--threads", "1", "pingpong", "--tls", "--sni", "localhost"])
            .arg("--ca")
            .arg(ca)
            .args(["--conns", "1", "--duration", "300ms", "--json", "--target"])
            .arg(t.addr.to_string())
            .kill_on_drop(true)
            .output()
    };
    let out = tokio::time::timeout(Duration::from_secs(30), run(&other.ca))
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("tls_unknown_issuer"), "{err}");
    assert!(err.contains("not signed by a CA in --ca"), "{err}");
    let out = tokio::time::timeout(Duration::from_secs(30), run(&set.ca))
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report"]["errors"], 0, "{v}");
    assert_eq!(v["report"]["proto"], "wss", "{v}");
    assert!(
        v["report"]["tls"]["full_handshakes"].as_u64().is_some(),
        "{v}"
    );
}

/// rate: with resumption, every handshake after the first ticket arrives is resumed; with
/// `--no-resume`, every one is full. The counts add up to the handshakes the run made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counts_full_and_resumed_handshakes() {
    for proto in [Proto::Ws, Proto::Tcp] {
        let (t, set) = terminator(proto, &["localhost"]).await;
        for resume in [true, false] {
            let mut c = cfg(t.addr, proto, client(Some(&set), Some("localhost"), resume));
            c.concurrency = 2;
            let r = run_scenario(Kind::Rate, &c).await;
            assert_eq!(r.errors, 0, "{proto:?} resume={resume}: {}", r.human());
            let n = r.handshakes.unwrap();
            assert!(n >= 4, "{proto:?}: {}", r.human());
            let h = r.tls.clone().unwrap();
            assert_eq!(h.full_handshakes + h.resumed_handshakes, n, "{}", r.human());
            assert_eq!(h.resumption, resume);
            if resume {
                assert!(h.resumed_handshakes > 0, "{proto:?}: {}", r.human());
            } else {
                assert_eq!(h.resumed_handshakes, 0, "{proto:?}: {}", r.human());
            }
        }
    }
}

/// idle, bulk and storm over TLS: every connection survives, every byte sent comes back,
/// every storm client is established.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_bulk_storm_over_tls() {
    for proto in [Proto::Ws, Proto::Tcp] {
        let (t, set) = terminator(proto, &["localhost"]).await;
        let tls = client(Some(&set), Some("localhost"), true);

        let mut c = cfg(t.addr, proto, tls.clone());
        c.conns = 20;
        let r = run_scenario(Kind::Idle, &c).await;
        assert_eq!(r.survived, Some(20), "{proto:?}: {}", r.human());
        assert_eq!(r.errors, 0, "{proto:?}: {}", r.human());

        let mut c = cfg(t.addr, proto, tls.clone());
        c.conns = 2;
        c.frame = 16 * 1024;
        let r = run_scenario(Kind::Bulk, &c).await;
        let (sent, recv) = (r.bytes_sent.unwrap(), r.bytes_received.unwrap());
        assert!(sent > 0, "{proto:?}: {}", r.human());
        assert_eq!(sent, recv, "{proto:?}: {}", r.human());
        assert_eq!(r.errors, 0, "{proto:?}: {}", r.human());

        let mut c = cfg(t.addr, proto, tls);
        c.conns = 40;
        c.duration = Duration::from_secs(10);
        c.hold = Duration::from_millis(100);
        let r = run_scenario(Kind::Storm, &c).await;
        assert_eq!(r.established, Some(40), "{proto:?}: {}", r.human());
        assert_eq!(r.errors, 0, "{proto:?}: {}", r.human());
        let h = r.tls.unwrap();
        assert_eq!(h.full_handshakes + h.resumed_handshakes, 40);
    }
}

fn compare_cfg(kind: Kind, proto: Proto, resume: bool) -> CompareConfig {
    let mut run = RunConfig::new("127.0.0.1:1".parse().unwrap(), proto);
    run.conns = 4;
    run.concurrency = 2;
    run.duration = Duration::from_millis(500);
    run.hold = Duration::from_millis(200);
    CompareConfig {
        kind,
        run,
        gateways: vec![],
        peers: vec![],
        backends: 2,
        gateway_threads: None,
        startup_timeout: Duration::from_secs(10),
        tls: Some(TlsCompare { resume }),
    }
}

/// compare --tls: HAProxy (`bind ... ssl crt`) and nginx (`listen ... ssl`) with the run's
/// certificate, over wss:// and TLS raw TCP, zero errors; rate counts resumed handshakes
/// only when resumption is on. Skipped when a peer is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_tls_peers_forward() {
    let peers: Vec<Peer> = [Peer::Haproxy, Peer::Nginx]
        .into_iter()
        .filter(|p| std::path::Path::new(p.binary()).exists())
        .collect();
    if peers.is_empty() {
        eprintln!("haproxy and nginx missing: skipped");
        return;
    }
    for (kind, proto, resume) in [
        (Kind::Pingpong, Proto::Ws, true),
        (Kind::Pingpong, Proto::Tcp, true),
        (Kind::Rate, Proto::Ws, true),
        (Kind::Rate, Proto::Ws, false),
    ] {
        let mut c = compare_cfg(kind, proto, resume);
        c.peers = peers.clone();
        if proto == Proto::Tcp
            && !std::path::Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists()
        {
            c.peers.retain(|p| *p != Peer::Nginx);
        }
        let r = run_compare(&c, &|_| {}).await.unwrap();
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert!(r.tls.as_deref().unwrap().contains("direct is plaintext"));
        assert!(r.targets[0].report.tls.is_none(), "direct stays plaintext");
        assert_eq!(r.targets.len(), 1 + c.peers.len());
        for t in &r.targets[1..] {
            let what = format!("{} {kind:?} {proto:?} resume={resume}", t.name);
            assert_eq!(t.report.errors, 0, "{what}: {}", t.report.human());
            assert!(t.report.messages > 0, "{what}: {}", t.report.human());
            let h = t.report.tls.as_ref().unwrap();
            assert!(h.full_handshakes + h.resumed_handshakes > 0, "{what}");
            // Every peer speaks TLS 1.3 (nginx 1.22 needs ssl_protocols for it).
            assert!(
                h.negotiated.as_deref().unwrap_or("").starts_with("TLSv1_3"),
                "{what}: {h:?}"
            );
            if kind == Kind::Rate {
                assert_eq!(
                    h.full_handshakes + h.resumed_handshakes,
                    t.report.handshakes.unwrap(),
                    "{what}"
                );
                if resume {
                    assert!(h.resumed_handshakes > 0, "{what}: {h:?}");
                } else {
                    assert_eq!(h.resumed_handshakes, 0, "{what}: {h:?}");
                }
            }
        }
    }
}

/// A ringway binary without `--tls-cert` (main before the `tls` branch) is not guessed at:
/// its TLS run is skipped with a reason that says so. A gateway command without `{CERT}`
/// is skipped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_tls_skips_a_ringway_without_tls_and_commands_without_cert() {
    let dir = loadgen::compare::TempDir::new("fake-ringway").unwrap();
    let fake = dir.0.join("ringway");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Usage: ringway run --listen ADDR'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = compare_cfg(Kind::Pingpong, Proto::Ws, true);
    c.gateways = vec![
        GatewaySpec {
            name: "ringway".into(),
            cmd: format!(
                "{} run --listen {{LISTEN}} --backend {{BACKENDS}} --tls-cert {{CERT}} --tls-key {{KEY}}",
                fake.display()
            ),
        },
        GatewaySpec {
            name: "plain-only".into(),
            cmd: "exec true {LISTEN} {BACKENDS}".into(),
        },
    ];
    let r = run_compare(&c, &|_| {}).await.unwrap();
    assert_eq!(r.targets.len(), 1, "only direct ran");
    assert_eq!(r.skipped.len(), 2, "{:?}", r.skipped);
    assert!(r.skipped[0].contains("no --tls-cert"), "{:?}", r.skipped);
    assert!(r.skipped[0].contains("branch `tls`"), "{:?}", r.skipped);
    assert!(r.skipped[1].contains("{CERT}"), "{:?}", r.skipped);
}
