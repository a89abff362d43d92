//! Balancing hot paths: key extraction + pick per policy, Maglev lookup, cookie
//! encode/decode, and table rebuilds (control plane, but Envoy learned they can be costly).
//!
//! `cargo bench --bench balance` (add `-- --quick` for a fast look).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ringway::balance::{cookie, maglev, BackendSpec, KeySource, Policy, StatsRegistry, Table};

/// A parsed request as the proxy would expose it: a few headers, one cookie, one query.
struct Req {
    headers: [(&'static str, &'static [u8]); 4],
    cookie: (&'static str, Vec<u8>),
}

impl KeySource for Req {
    fn client_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.0.eq_ignore_ascii_case(name))
            .map(|h| h.1)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        (self.cookie.0 == name).then_some(&self.cookie.1[..])
    }
    fn query(&self, _: &str) -> Option<&[u8]> {
        Some(b"device-0042")
    }
}

fn specs(n: usize) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 3000));
            BackendSpec::new(
                &format!("chat-{i}.chat-headless.ns.svc.cluster.local"),
                addr,
            )
        })
        .collect()
}

fn req(cookie_value: &str) -> Req {
    Req {
        headers: [
            ("Host", b"chat.example.com"),
            ("User-Agent", b"socket.io-client"),
            ("X-Device-Id", b"3f2b9c1e-7a64-4d1f-9e0b-5c8a2d7e6f10"),
            ("Accept", b"*/*"),
        ],
        cookie: ("ringway", cookie_value.as_bytes().to_vec()),
    }
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    let reg = StatsRegistry::default();
    let policies = [
        "round-robin",
        "least-conn",
        "hash:ip",
        "hash:header:X-Device-Id",
        "hash:query:device",
    ];
    for n in [10, 100] {
        for p in policies {
            let t = Table::build(&Policy::parse(p).unwrap(), specs(n), &reg);
            let r = req("");
            g.bench_function(BenchmarkId::new(p, n), |b| {
                b.iter(|| t.pick(black_box(&r), &[]))
            });
        }
        let policy = Policy::cookie("ringway", b"secret", "least-conn").unwrap();
        let t = Table::build(&policy, specs(n), &reg);
        let valid = req(t.cookie_value(n / 2).unwrap());
        g.bench_function(BenchmarkId::new("cookie-valid", n), |b| {
            b.iter(|| t.pick(black_box(&valid), &[]))
        });
        let forged = req("AAAAAAAAAAAAAAAA");
        g.bench_function(BenchmarkId::new("cookie-forged-fallback", n), |b| {
            b.iter(|| t.pick(black_box(&forged), &[]))
        });
    }
    g.finish();
}

/// A new connection's balancing cost: pick, count it (the guard; for hash policies it also
/// records the key in the upstream's key holders), and the close that drops the guard.
fn connect(c: &mut Criterion) {
    let mut g = c.benchmark_group("connect");
    let reg = StatsRegistry::default();
    let bounded = Policy::parse("hash:ip")
        .unwrap()
        .with_load_factor(Some(1.25))
        .unwrap();
    for (name, policy) in [
        ("round-robin", Policy::parse("round-robin").unwrap()),
        ("hash:ip", Policy::parse("hash:ip").unwrap()),
        ("hash:ip+bounded", bounded),
    ] {
        let t = Table::build(&policy, specs(10), &reg);
        let r = req("");
        g.bench_function(BenchmarkId::new(name, 10), |b| {
            b.iter(|| {
                let p = t.pick(black_box(&r), &[]).unwrap();
                drop(black_box(t.guard_pick(&p)));
            })
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    let t = Table::build(
        &Policy::parse("hash:ip").unwrap(),
        specs(100),
        &StatsRegistry::default(),
    );
    let key = b"3f2b9c1e-7a64-4d1f-9e0b-5c8a2d7e6f10";
    g.bench_function("stable_hash/36B", |b| {
        b.iter(|| maglev::stable_hash(maglev::KEY_SEED, black_box(key)))
    });
    g.bench_function("lookup_key/36B", |b| {
        b.iter(|| t.lookup_key(black_box(key)))
    });
    g.finish();
}

fn cookies(c: &mut Criterion) {
    let mut g = c.benchmark_group("cookie");
    let name = "chat-7.chat-headless.ns.svc.cluster.local";
    g.bench_function("encode", |b| {
        b.iter(|| cookie::encode(black_box(b"secret"), black_box(name)))
    });
    let v = cookie::encode(b"secret", name);
    g.bench_function("decode", |b| {
        b.iter(|| cookie::decode(black_box(v.as_bytes())))
    });
    let policy = Policy::cookie("ringway", b"secret", "least-conn").unwrap();
    let t = Table::build(&policy, specs(100), &StatsRegistry::default());
    let v = t.cookie_value(42).unwrap().to_owned();
    g.bench_function("lookup_cookie/100", |b| {
        b.iter(|| t.lookup_cookie(black_box(v.as_bytes())))
    });
    g.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut g = c.benchmark_group("rebuild");
    g.sample_size(20);
    let reg = StatsRegistry::default();
    for n in [10, 100, 1000] {
        for p in ["hash:ip", "round-robin", "cookie"] {
            let policy = Policy::parse(p).unwrap();
            let sp = specs(n);
            g.bench_function(BenchmarkId::new(p, n), |b| {
                b.iter(|| Table::build(&policy, black_box(sp.clone()), &reg))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pick, connect, lookup, cookies, rebuild
}
criterion_main!(benches);
