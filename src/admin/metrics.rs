//! `GET /metrics`: a prometheus-client [`Collector`] that reads the data plane's counters at
//! scrape time. Workers never touch a Prometheus type: they bump plain per-core slots
//! (`crate::metrics`) and per-backend atomics (`balance::BackendStats`), and this sums them,
//! so a scrape costs the control thread a few microseconds per backend and the hot path
//! nothing.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::registry::Registry;

use super::names::{self, Def};
use crate::balance::{now_ms, Backend};
use crate::error::Kind;
use crate::io::IoKind;
use crate::metrics::process::ProcessStats;
use crate::metrics::{Histogram, HistogramSnapshot, MoveReason};
use crate::state::{Generation, Shared};

/// Content-Type of the exposition (Prometheus negotiates OpenMetrics and accepts it as is).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Status classes, in the order of `BackendStats::responses()`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Renders every metric of `shared` as OpenMetrics text.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(shared.clone())));
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The collector: one per scrape, holding the shared state it reads.
struct Scrape(Arc<Shared>);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

/// Starts a family and hands its encoder to `body`.
fn family(
    enc: &mut DescriptorEncoder,
    def: &Def,
    body: impl FnOnce(&mut MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let unit = def.unit();
    let mut m = enc.encode_descriptor(def.family, def.help, unit.as_ref(), def.kind)?;
    body(&mut m)
}

fn counter<const N: usize>(
    m: &mut MetricEncoder,
    labels: [(&str, &str); N],
    v: u64,
) -> fmt::Result {
    if N == 0 {
        return m.encode_counter::<NoLabelSet, u64, u64>(&v, None);
    }
    m.encode_family(&labels)?
        .encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn gauge<const N: usize>(m: &mut MetricEncoder, labels: [(&str, &str); N], v: i64) -> fmt::Result {
    if N == 0 {
        return m.encode_gauge(&v);
    }
    m.encode_family(&labels)?.encode_gauge(&v)
}

/// Our histograms count in microseconds with cumulative snapshots; Prometheus wants seconds,
/// and the encoder wants per-bucket counts (it accumulates them itself).
fn histogram(m: &mut MetricEncoder, snap: Option<HistogramSnapshot>) -> fmt::Result {
    let Some(s) = snap else {
        return m.encode_histogram::<NoLabelSet>(0.0, 0, &[(f64::MAX, 0)], None);
    };
    let mut buckets = Vec::with_capacity(s.cumulative.len());
    let mut prev = 0;
    for (i, &cum) in s.cumulative.iter().enumerate() {
        let bound = s.bounds.get(i).map_or(f64::MAX, |&us| us as f64 / 1e6);
        buckets.push((bound, cum.saturating_sub(prev)));
        prev = cum;
    }
    m.encode_histogram::<NoLabelSet>(s.sum_us as f64 / 1e6, prev, &buckets, None)
}

/// A histogram of plain counts (bytes): no unit conversion.
fn count_histogram(m: &mut MetricEncoder, snap: Option<HistogramSnapshot>) -> fmt::Result {
    let Some(s) = snap else {
        return m.encode_histogram::<NoLabelSet>(0.0, 0, &[(f64::MAX, 0)], None);
    };
    let mut buckets = Vec::with_capacity(s.cumulative.len());
    let mut prev = 0;
    for (i, &cum) in s.cumulative.iter().enumerate() {
        let bound = s.bounds.get(i).map_or(f64::MAX, |&b| b as f64);
        buckets.push((bound, cum.saturating_sub(prev)));
        prev = cum;
    }
    m.encode_histogram::<NoLabelSet>(s.sum_us as f64, prev, &buckets, None)
}

/// Where a backend stands for `ringway_backend_up` and `/backends`.
pub fn backend_up(b: &Backend, now: u64) -> bool {
    b.stats().health_up() && !b.stats().is_down(now)
}

/// DNS update counts per upstream: `(upstream, result, count)`, from discovery's process-wide
/// counters (`crate::discovery::dns_stats`), which survive reloads. Upstreams that never used
/// DNS discovery have no series.
fn dns_updates() -> Vec<(String, &'static str, u64)> {
    use crate::discovery::{dns_stats, LookupResult};
    let mut out = Vec::new();
    for (upstream, stats) in dns_stats().snapshot() {
        for r in LookupResult::ALL {
            out.push((upstream.to_string(), r.label(), stats.lookups(r)));
        }
    }
    out
}

/// Renders `ringway_dns_updates_total{upstream,result}` from `(upstream, result, count)`.
pub fn encode_dns_updates(
    enc: &mut DescriptorEncoder,
    updates: &[(String, &'static str, u64)],
) -> fmt::Result {
    family(enc, &names::DNS_UPDATES, |m| {
        for (upstream, result, n) in updates {
            counter(m, [("upstream", upstream), ("result", result)], *n)?;
        }
        Ok(())
    })
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shared = &*self.0;
        let gen = shared.gen.load();
        encode_listeners(&mut enc, &gen)?;
        encode_backends(&mut enc, &gen)?;
        encode_upstreams(&mut enc, &gen)?;
        encode_data_plane(&mut enc, shared)?;
        encode_control(&mut enc, shared)?;
        encode_process(&mut enc, &ProcessStats::read())?;
        encode_tls(&mut enc, &shared.tls)
    }
}

/// Connections per listener.
fn encode_listeners(enc: &mut DescriptorEncoder, gen: &Generation) -> fmt::Result {
    family(enc, &names::CONNECTIONS_ACTIVE, |m| {
        gen.listeners
            .iter()
            .try_for_each(|l| gauge(m, [("listener", &l.name)], l.active()))
    })?;
    family(enc, &names::CONNECTIONS, |m| {
        gen.listeners
            .iter()
            .try_for_each(|l| counter(m, [("listener", &l.name)], l.accepted_total()))
    })?;
    family(enc, &names::CONNECTIONS_REJECTED, |m| {
        gen.listeners
            .iter()
            .try_for_each(|l| counter(m, [("listener", &l.name)], l.rejected_total()))
    })
}

/// Per-backend families, from one table load per upstream so every family of a scrape agrees.
fn encode_backends(enc: &mut DescriptorEncoder, gen: &Generation) -> fmt::Result {
    // One table load per upstream, so every per-backend family of a scrape agrees.
    let tables: Vec<_> = gen
        .upstreams
        .iter()
        .map(|u| (&u.cfg.name, u.lb.load_full()))
        .collect();
    let each_backend = |m: &mut MetricEncoder,
                        f: &mut dyn FnMut(&mut MetricEncoder, &str, &Backend) -> fmt::Result|
     -> fmt::Result {
        for (up, table) in &tables {
            for b in table.backends() {
                f(m, up, b)?;
            }
        }
        Ok(())
    };
    family(enc, &names::UPSTREAM_CONNECTIONS_ACTIVE, |m| {
        each_backend(m, &mut |m, up, b| {
            gauge(
                m,
                [("upstream", up), ("backend", b.name())],
                b.live() as i64,
            )
        })
    })?;
    family(enc, &names::REQUESTS, |m| {
        each_backend(m, &mut |m, up, b| {
            let r = b.stats().responses();
            CLASSES.iter().zip(r).try_for_each(|(code, n)| {
                counter(
                    m,
                    [("upstream", up), ("backend", b.name()), ("code", code)],
                    n,
                )
            })
        })
    })?;
    family(enc, &names::BYTES, |m| {
        each_backend(m, &mut |m, up, b| {
            let (to_backend, to_client) = b.stats().bytes();
            let l = |d| [("upstream", up), ("backend", b.name()), ("direction", d)];
            counter(m, l("to_backend"), to_backend)?;
            counter(m, l("to_client"), to_client)
        })
    })?;
    let now = now_ms();
    family(enc, &names::BACKEND_UP, |m| {
        each_backend(m, &mut |m, up, b| {
            gauge(
                m,
                [("upstream", up), ("backend", b.name())],
                backend_up(b, now) as i64,
            )
        })
    })
}

/// Per-upstream families: any backend up, upgrades, response times.
fn encode_upstreams(enc: &mut DescriptorEncoder, gen: &Generation) -> fmt::Result {
    family(enc, &names::UPSTREAM_UP, |m| {
        gen.upstreams
            .iter()
            .try_for_each(|u| gauge(m, [("upstream", &u.cfg.name)], u.has_backend_up() as i64))
    })?;
    family(enc, &names::UPGRADES, |m| {
        gen.upstreams.iter().try_for_each(|u| {
            let (ok, failed) = u.counters.upgrades();
            counter(m, [("upstream", &u.cfg.name), ("result", "ok")], ok)?;
            counter(m, [("upstream", &u.cfg.name), ("result", "failed")], failed)
        })
    })?;
    family(enc, &names::REBALANCE_CLOSED, |m| {
        gen.upstreams.iter().try_for_each(|u| {
            MoveReason::ALL.iter().try_for_each(|&r| {
                let labels = [("upstream", &*u.cfg.name), ("reason", r.as_str())];
                counter(m, labels, u.counters.moved_total(r))
            })
        })
    })?;
    family(enc, &names::UPSTREAM_RESPONSE, |m| {
        gen.upstreams.iter().try_for_each(|u| {
            let labels = [("upstream", &*u.cfg.name)];
            let mut h = m.encode_family(&labels)?;
            histogram(&mut h, u.counters.response_times())
        })
    })?;
    family(enc, &names::TLS_UPSTREAM_HANDSHAKES, |m| {
        gen.upstreams
            .iter()
            .filter(|u| u.tls.is_some())
            .try_for_each(|u| {
                let n = u.counters.tls_handshakes();
                crate::tls::upstream::RESULT_NAMES
                    .iter()
                    .zip(n)
                    .try_for_each(|(r, n)| {
                        counter(m, [("upstream", &*u.cfg.name), ("result", r)], n)
                    })
            })
    })?;
    encode_websocket(enc, gen)
}

/// WebSocket message metrics per upstream (tunnels with frame tracking).
fn encode_websocket(enc: &mut DescriptorEncoder, gen: &Generation) -> fmt::Result {
    use crate::proto::ws_frame::OPCODES;
    const DIRS: [&str; 2] = ["to_backend", "to_client"];
    let totals: Vec<_> = gen
        .upstreams
        .iter()
        .map(|u| (&*u.cfg.name, u.counters.ws_totals()))
        .collect();
    family(enc, &names::WS_MESSAGES, |m| {
        totals.iter().try_for_each(|(up, t)| {
            DIRS.iter().zip(&t.dirs).try_for_each(|(dir, d)| {
                counter(m, [("upstream", up), ("direction", dir)], d.messages)
            })
        })
    })?;
    family(enc, &names::WS_PAYLOAD, |m| {
        totals.iter().try_for_each(|(up, t)| {
            DIRS.iter().zip(&t.dirs).try_for_each(|(dir, d)| {
                counter(m, [("upstream", up), ("direction", dir)], d.payload)
            })
        })
    })?;
    family(enc, &names::WS_FRAMES, |m| {
        totals.iter().try_for_each(|(up, t)| {
            DIRS.iter().zip(&t.dirs).try_for_each(|(dir, d)| {
                OPCODES.iter().zip(d.frames).try_for_each(|((_, op), n)| {
                    counter(m, [("upstream", up), ("direction", dir), ("opcode", op)], n)
                })
            })
        })
    })?;
    family(enc, &names::WS_CLOSE, |m| {
        totals.iter().try_for_each(|(up, t)| {
            t.closes.iter().try_for_each(|(side, code, n)| {
                counter(
                    m,
                    [("upstream", up), ("side", side.as_str()), ("code", code)],
                    *n,
                )
            })
        })
    })?;
    family(enc, &names::WS_PINGS, |m| {
        use crate::metrics::websocket::PingResult;
        totals.iter().try_for_each(|(up, t)| {
            PingResult::ALL.iter().try_for_each(|r| {
                counter(
                    m,
                    [("upstream", up), ("result", r.as_str())],
                    t.pings[*r as usize],
                )
            })
        })
    })?;
    family(enc, &names::WS_MESSAGE_SIZE, |m| {
        totals.iter().try_for_each(|(up, t)| {
            DIRS.iter().zip(&t.dirs).try_for_each(|(dir, d)| {
                let labels = [("upstream", *up), ("direction", *dir)];
                let mut h = m.encode_family(&labels)?;
                count_histogram(&mut h, d.sizes.clone())
            })
        })
    })
}

/// Errors, latency histograms and pipes, summed over the cores.
fn encode_data_plane(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let cores = &shared.metrics.cores;
    family(enc, &names::ERRORS, |m| {
        Kind::ALL.iter().try_for_each(|&k| {
            let labels = [("kind", k.as_str()), ("side", k.side().as_str())];
            counter(m, labels, shared.metrics.errors(k))
        })
    })?;
    family(enc, &names::HEAD_PARSE, |m| {
        histogram(m, Histogram::sum(cores.iter().map(|c| &c.head_parse)))
    })?;
    family(enc, &names::BACKEND_CONNECT, |m| {
        histogram(m, Histogram::sum(cores.iter().map(|c| &c.connect)))
    })?;
    family(enc, &names::TUNNEL_DURATION, |m| {
        histogram(m, Histogram::sum(cores.iter().map(|c| &c.tunnel_lifetime)))
    })?;
    family(enc, &names::PIPES_IN_USE, |m| {
        let lent: i64 = cores.iter().map(|c| c.pipes_lent.load(Relaxed)).sum();
        gauge(m, [], lent)
    })
}

/// The control plane: DNS updates, reloads, the io backend, the build.
fn encode_control(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    encode_dns_updates(enc, &dns_updates())?;
    family(enc, &names::CONFIG_RELOADS, |m| {
        let c = &shared.metrics.control;
        counter(m, [("result", "ok")], c.reloads_ok.load(Relaxed))?;
        counter(m, [("result", "failed")], c.reloads_failed.load(Relaxed))
    })?;
    family(enc, &names::IO_BACKEND, |m| {
        let current = shared.io_kind.get().copied();
        // Labelled with the config's spelling (`io = "uring"`), as deploy/ documents.
        [(IoKind::Uring, "uring"), (IoKind::Epoll, "epoll")]
            .iter()
            .try_for_each(|&(k, label)| gauge(m, [("kind", label)], (current == Some(k)) as i64))
    })?;
    family(enc, &names::BUILD, |m| {
        m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])
    })
}

/// The `process_*` families; a figure `/proc` did not give has no sample.
pub fn encode_process(enc: &mut DescriptorEncoder, p: &ProcessStats) -> fmt::Result {
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    family(enc, &names::PROCESS_OPEN_FDS, |m| {
        p.open_fds.map_or(Ok(()), |v| gauge(m, [], clamp(v)))
    })?;
    family(enc, &names::PROCESS_MAX_FDS, |m| {
        p.max_fds.map_or(Ok(()), |v| gauge(m, [], clamp(v)))
    })?;
    family(enc, &names::PROCESS_RESIDENT_MEMORY, |m| {
        p.resident_bytes.map_or(Ok(()), |v| gauge(m, [], clamp(v)))
    })?;
    family(enc, &names::PROCESS_CPU, |m| {
        p.cpu_seconds.map_or(Ok(()), |v| {
            m.encode_counter::<NoLabelSet, f64, u64>(&v, None)
        })
    })
}

/// The TLS families (counters of `crate::tls::Stats`, certificates of `crate::tls::Store`).
fn encode_tls(enc: &mut DescriptorEncoder, tls: &crate::tls::Store) -> fmt::Result {
    let s = &tls.stats;
    family(enc, &names::TLS_HANDSHAKES, |m| {
        s.results()
            .try_for_each(|(result, n)| counter(m, [("result", result)], n))
    })?;
    family(enc, &names::TLS_CIPHERS, |m| {
        s.suites().try_for_each(|(version, cipher, n)| {
            counter(m, [("version", version), ("cipher", cipher)], n)
        })
    })?;
    family(enc, &names::TLS_RESUMED, |m| {
        counter(m, [], s.resumed.load(Relaxed))
    })?;
    family(enc, &names::TLS_CERT_EXPIRY, |m| {
        tls.certificates().iter().try_for_each(|(listener, certs)| {
            certs.iter().try_for_each(|c| {
                gauge(
                    m,
                    [("listener", listener), ("name", c.label.as_str())],
                    c.not_after,
                )
            })
        })
    })?;
    family(enc, &names::TLS_CERT_RELOADS, |m| {
        counter(m, [("result", "ok")], s.reloads_ok.load(Relaxed))?;
        counter(m, [("result", "failed")], s.reloads_failed.load(Relaxed))
    })
}
