use super::*;

fn v16(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

fn ext(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = ty.to_be_bytes().to_vec();
    v.extend(v16(data));
    v
}

fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, n) in names {
        list.push(*ty);
        list.extend(v16(n));
    }
    ext(0, &v16(&list))
}

fn alpn_ext(protos: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protos {
        list.push(p.len() as u8);
        list.extend_from_slice(p);
    }
    ext(16, &v16(&list))
}

/// A ClientHello handshake message (type, 3-byte length, body) with these extensions.
fn hello_msg(exts: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(32);
    body.extend([1u8; 32]); // session id
    body.extend(v16(&[0x13, 0x01, 0x13, 0x02]));
    body.extend([1, 0]); // compression: null
    body.extend(v16(&exts.concat()));
    let mut m = vec![1];
    m.extend(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend(body);
    m
}

/// The message in TLS records of at most `max` payload bytes each.
fn records(msg: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in msg.chunks(max) {
        out.extend([22, 3, 1]);
        out.extend((part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn typical() -> Vec<u8> {
    records(
        &hello_msg(&[
            sni_ext(&[(0, b"Chat.Example.COM")]),
            ext(10, &[0, 2, 0, 29]),
            alpn_ext(&[b"h2", b"http/1.1"]),
        ]),
        16384,
    )
}

#[test]
fn reads_sni_and_alpn() {
    let b = typical();
    let h = parse_client_hello(&b).unwrap().unwrap();
    assert_eq!(h.sni.unwrap().as_str(), "chat.example.com");
    assert!(h.alpn_h2 && h.alpn_http11);
    assert_eq!(h.len, b.len());
}

#[test]
fn incomplete_until_whole_at_every_split() {
    let b = typical();
    for cut in 0..b.len() {
        assert_eq!(parse_client_hello(&b[..cut]), Ok(None), "cut at {cut}");
    }
    // bytes after the ClientHello (there are none in TLS before the server speaks, but a
    // client may pipeline): ignored
    let mut more = b.clone();
    more.extend_from_slice(b"trailing");
    assert!(parse_client_hello(&more).unwrap().is_some());
}

#[test]
fn reassembles_across_records() {
    let msg = hello_msg(&[sni_ext(&[(0, b"a.example")])]);
    for max in [1, 7, 50, 100] {
        let b = records(&msg, max);
        let h = parse_client_hello(&b).unwrap().unwrap();
        assert_eq!(h.sni.unwrap().as_str(), "a.example", "records of {max}");
        for cut in 0..b.len() {
            assert_eq!(parse_client_hello(&b[..cut]), Ok(None));
        }
    }
}

#[test]
fn no_sni_is_a_hello_without_a_name() {
    let b = records(&hello_msg(&[alpn_ext(&[b"mqtt"])]), 16384);
    let h = parse_client_hello(&b).unwrap().unwrap();
    assert_eq!(h.sni, None);
    assert!(!h.alpn_h2 && !h.alpn_http11);
    // and no extensions block at all
    let mut m = hello_msg(&[]);
    m.truncate(m.len() - 2);
    let n = (m.len() - 4) as u32;
    m[1..4].copy_from_slice(&n.to_be_bytes()[1..]);
    assert_eq!(
        parse_client_hello(&records(&m, 16384))
            .unwrap()
            .unwrap()
            .sni,
        None
    );
}

#[test]
fn plain_http_is_refused_at_once() {
    assert!(parse_client_hello(b"G").is_err());
    assert!(parse_client_hello(b"GET / HTTP/1.1\r\n").is_err());
    assert_eq!(parse_client_hello(b""), Ok(None));
    assert_eq!(parse_client_hello(&[22]), Ok(None));
}

#[test]
fn garbled_and_oversized_are_refused() {
    let good = hello_msg(&[sni_ext(&[(0, b"a.example")])]);
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (
            records(&hello_msg(&[sni_ext(&[(0, b"bad name!")])]), 16384),
            "name",
        ),
        (
            records(&hello_msg(&[sni_ext(&[(0, b"")])]), 16384),
            "empty name",
        ),
        (
            records(&hello_msg(&[sni_ext(&[(0, b"a.x"), (0, b"b.x")])]), 16384),
            "two names",
        ),
        (
            records(
                &hello_msg(&[sni_ext(&[(0, b"a.x")]), sni_ext(&[(0, b"b.x")])]),
                16384,
            ),
            "two extensions",
        ),
        (
            records(&hello_msg(&[alpn_ext(&[b""])]), 16384),
            "empty alpn",
        ),
        (
            {
                let mut m = good.clone();
                m[0] = 2;
                records(&m, 16384)
            },
            "server hello",
        ),
        (
            {
                let mut r = records(&good, 16384);
                r[1] = 2;
                r
            },
            "record version",
        ),
        (
            {
                let mut r = records(&good, 16384);
                r[3] = 0;
                r[4] = 0;
                r
            },
            "empty record",
        ),
        (
            {
                let mut m = good.clone();
                m[1] = 0xFF;
                records(&m, 16384)
            },
            "huge handshake length",
        ),
        (
            {
                let mut m = good.clone();
                let l = m.len();
                m[l - 3] = 0xFF;
                records(&m, 16384)
            },
            "extension overruns",
        ),
    ];
    for (b, what) in bad {
        assert!(parse_client_hello(&b).is_err(), "{what}");
    }
}

#[test]
fn random_input_never_panics() {
    let base = typical();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..(1 + next() % 3) {
            let i = next() as usize % b.len();
            b[i] = next() as u8;
        }
        let cut = next() as usize % (b.len() + 1);
        let _ = parse_client_hello(&b[..cut]);
    }
}
