//! SNI routing without terminating TLS: a `tls_passthrough` tcp listener reads the ClientHello,
//! routes by its server name (and `hash:sni` keys on it), and the backend receives every byte
//! untouched, the ClientHello first. Real sockets, the real binary, both io backends; one test
//! drives a real TLS client (`openssl s_client`).

#[macro_use]
#[path = "common/gateway.rs"]
mod gateway;

use std::net::SocketAddr;

use gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A ClientHello (one record) naming `sni`, if any.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let v16 = |b: &[u8]| {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    };
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend(v16(name.as_bytes()));
        exts.extend([0, 0]);
        exts.extend(v16(&v16(&entry)));
    }
    exts.extend([0, 10]); // supported_groups, untouched
    exts.extend(v16(&[0, 2, 0, 29]));
    let mut body = vec![3, 3];
    body.extend([0x42u8; 32]);
    body.push(0);
    body.extend(v16(&[0x13, 0x01]));
    body.extend([1, 0]);
    body.extend(v16(&exts));
    let mut msg = vec![1];
    msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    let mut rec = vec![22, 3, 1];
    rec.extend((msg.len() as u16).to_be_bytes());
    rec.extend(msg);
    rec
}

/// A backend that answers with its tag, then echoes what it receives.
async fn tagged_echo(tag: &'static str) -> Backend {
    raw_backend(move |mut s, _| async move {
        let _ = s.write_all(tag.as_bytes()).await;
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

fn config(a: SocketAddr, fleet: &[SocketAddr], other: SocketAddr) -> String {
    let fleet: Vec<String> = fleet
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ name = \"fleet-{i}\", address = \"{b}\" }}"))
        .collect();
    format!(
        "admin = \"\"\n[timeouts]\nhead = \"2s\"\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
         tls_passthrough = true\nupstream = \"other\"\n\
         [[route]]\nlistener = \"tls\"\nhost = \"a.example\"\nupstream = \"a\"\n\
         [[route]]\nlistener = \"tls\"\nhost = \"*.fleet.example\"\nupstream = \"fleet\"\n\
         [[upstream]]\nname = \"a\"\nbackends = [{{ address = \"{a}\" }}]\n\
         [[upstream]]\nname = \"fleet\"\nbalance = \"hash:sni\"\nbackends = [{}]\n\
         [[upstream]]\nname = \"other\"\nbackends = [{{ address = \"{other}\" }}]\n",
        fleet.join(", ")
    )
}

/// Sends a ClientHello for `sni` (split in two writes) and returns which backend answered;
/// checks the backend received the bytes untouched (they come back in its echo).
async fn dial(addr: SocketAddr, sni: Option<&str>) -> String {
    let hello = client_hello(sni);
    let mut c = Conn::connect(addr).await;
    let (first, rest) = hello.split_at(hello.len() / 3);
    c.send(first).await;
    c.send(rest).await;
    c.send(b"after").await;
    let tag = c.read_exact(3).await.expect("backend tag");
    let echo = c.read_exact(hello.len() + 5).await.expect("echo");
    assert_eq!(
        &echo[..hello.len()],
        &hello[..],
        "the ClientHello must arrive untouched"
    );
    assert_eq!(&echo[hello.len()..], b"after");
    String::from_utf8(tag).unwrap()
}

async fn routes_by_server_name(io: &'static str) {
    let a = tagged_echo("A1:").await;
    let f0 = tagged_echo("F0:").await;
    let f1 = tagged_echo("F1:").await;
    let other = tagged_echo("O1:").await;
    let gw = Gateway::start_config(io, &config(a.addr, &[f0.addr, f1.addr], other.addr));

    assert_eq!(dial(gw.addr, Some("a.example")).await, "A1:");
    assert_eq!(
        dial(gw.addr, Some("A.Example.")).await,
        "A1:",
        "names compare without case"
    );
    assert_eq!(dial(gw.addr, Some("unknown.example")).await, "O1:");
    assert_eq!(
        dial(gw.addr, None).await,
        "O1:",
        "no SNI → the listener's upstream"
    );
    // hash:sni: one name always lands on one backend, and different names spread
    let mut seen = std::collections::HashSet::new();
    for i in 0..16 {
        let name = format!("dev{i}.fleet.example");
        let first = dial(gw.addr, Some(&name)).await;
        assert!(first.starts_with('F'), "{name} → {first}");
        for _ in 0..2 {
            assert_eq!(dial(gw.addr, Some(&name)).await, first, "{name} must stick");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "16 names over 2 backends use both");
}

async fn refuses_what_is_not_a_client_hello(io: &'static str) {
    let a = tagged_echo("A1:").await;
    let other = tagged_echo("O1:").await;
    let gw = Gateway::start_config(io, &config(a.addr, &[a.addr], other.addr));
    // plain HTTP to a TLS port, garbage, a truncated hello then a close: closed, no backend
    for bytes in [
        b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n".to_vec(),
        vec![22, 3, 1, 0, 0],
        vec![22, 9, 9, 9, 9, 9, 9],
    ] {
        let mut c = Conn::connect(gw.addr).await;
        c.send(&bytes).await;
        let got = c.read_to_end().await.unwrap_or_default();
        assert!(got.is_empty(), "{bytes:?} reached a backend: {got:?}");
    }
    // a ClientHello that never completes is cut by timeouts.head
    let mut c = Conn::connect(gw.addr).await;
    c.send(&client_hello(Some("a.example"))[..20]).await;
    assert!(c.read_to_end().await.unwrap_or_default().is_empty());
    // and the listener goes on
    assert_eq!(dial(gw.addr, Some("a.example")).await, "A1:");
}

/// A real TLS client: `openssl s_client -servername` reaches the backend routed by that name,
/// and the backend's first bytes are a TLS handshake record.
async fn openssl_client_is_routed(io: &'static str) {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed: skipped (CI installs it)");
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, Vec<u8>)>();
    let record = |tag: &'static str| {
        let tx = tx.clone();
        raw_backend(move |mut s, _| {
            let tx = tx.clone();
            async move {
                let mut buf = vec![0u8; 5];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = tx.send((tag, buf));
                }
            }
        })
    };
    let a = record("a").await;
    let f = record("fleet").await;
    let o = record("other").await;
    let gw = Gateway::start_config(io, &config(a.addr, &[f.addr], o.addr));
    for (name, want) in [("a.example", "a"), ("x.fleet.example", "fleet")] {
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &gw.addr.to_string(),
                "-servername",
                name,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl");
        let (tag, first) = within("backend saw the hello", rx.recv()).await.unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tag, want, "{name}");
        assert_eq!(first[0], 22, "a TLS handshake record");
    }
}

both_io!(
    routes_by_server_name,
    refuses_what_is_not_a_client_hello,
    openssl_client_is_routed
);
