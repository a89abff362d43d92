//! Route matching per request: routes in file order, first match wins, host compared
//! case-insensitively with the port stripped, prefix compared with the normalised path.
//! Measured for a hit on the first route, a hit on the last of 20 routes, a miss that falls to
//! the listener's default upstream, and the last of 20 again for a path that must be
//! normalised (dot segments and escapes: the one shape that allocates).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ringway::config::Config;
use ringway::proxy::route::route;

fn config(routes: usize) -> Config {
    let mut t = String::from(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\nupstream = \"default\"\n\
         [[upstream]]\nname = \"default\"\nbackends = [{ address = \"127.0.0.1:9\" }]\n",
    );
    for i in 0..routes {
        t.push_str(&format!(
            "[[route]]\nhost = \"app{i}.example.com\"\npath_prefix = \"/api/v{i}/\"\nupstream = \"u{i}\"\n\
             [[upstream]]\nname = \"u{i}\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
        ));
    }
    Config::from_toml(&t).expect("valid bench config")
}

fn bench(c: &mut Criterion) {
    let cfg = config(20);
    let l = &cfg.listeners[0];
    let mut g = c.benchmark_group("route");
    g.bench_function("first_of_20", |b| {
        b.iter(|| {
            route(
                &cfg,
                l,
                black_box(Some("App0.example.com:8080")),
                black_box("/api/v0/x"),
            )
        })
    });
    g.bench_function("last_of_20", |b| {
        b.iter(|| {
            route(
                &cfg,
                l,
                black_box(Some("app19.example.com")),
                black_box("/api/v19/x"),
            )
        })
    });
    g.bench_function("last_of_20_normalised", |b| {
        b.iter(|| {
            route(
                &cfg,
                l,
                black_box(Some("app19.example.com")),
                black_box("/api/v0/../v19/%78?q=1"),
            )
        })
    });
    g.bench_function("miss_to_default", |b| {
        b.iter(|| {
            route(
                &cfg,
                l,
                black_box(Some("other.example.com")),
                black_box("/"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
