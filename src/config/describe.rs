//! `ringway check` prints the effective configuration: every default filled in, so an operator
//! sees what will actually run.

use std::fmt::Write;

use super::*;

pub fn describe(c: &Config) -> String {
    let mut o = String::new();
    globals(&mut o, c);
    listeners(&mut o, c);
    routes(&mut o, c);
    for u in &c.upstreams {
        upstream(&mut o, c, u);
    }
    o
}

/// Workers, io, timeouts, limits, admin.
fn globals(o: &mut String, c: &Config) {
    let d = format_duration;
    let _ = writeln!(
        o,
        "workers = {} ({})",
        c.workers,
        if c.workers == 0 {
            "one per usable CPU"
        } else {
            "fixed"
        }
    );
    let _ = writeln!(o, "io = {:?}", c.io);
    let _ = writeln!(
        o,
        "admin = {} (token: {})",
        c.admin.map_or("off".to_string(), |a| a.to_string()),
        if c.admin_token.is_some() {
            "required for /reload, /lookup, /backends"
        } else {
            "none"
        }
    );
    let t = &c.timeouts;
    let _ = writeln!(
        o,
        "timeouts: head {} · connect {} · response_head {} · http_idle {} · tunnel_idle {} · drain {} · accept_delay {}",
        d(t.head),
        d(t.connect),
        d(t.response_head),
        d(t.http_idle),
        t.tunnel_idle.map_or("off".to_string(), d),
        d(t.drain),
        d(t.accept_delay)
    );
    let l = &c.limits;
    let _ = writeln!(
        o,
        "limits: max_head_bytes {} · max_headers {} · max_connections {} · per_source {} · source_rate {}/s (burst {}) · connect_retries {} · proxy_pending_per_peer {}",
        l.max_head_bytes,
        l.max_headers,
        l.max_connections,
        l.max_connections_per_source,
        l.source_rate,
        l.source_burst,
        l.connect_retries,
        l.proxy_pending_per_peer
    );
}

fn listeners(o: &mut String, c: &Config) {
    let d = format_duration;
    let t = &c.timeouts;
    for l in &c.listeners {
        let up = l
            .upstream
            .map_or("-".to_string(), |i| c.upstreams[i].name.to_string());
        let _ = writeln!(
            o,
            "listener {}: {} mode={:?} upstream={} proxy_protocol={} tls_terminated={}",
            l.name, l.bind, l.mode, up, l.proxy_protocol, l.tls_terminated
        );
        if l.proxy_protocol {
            let from = l.proxy_protocol_from.as_ref().map_or_else(
                || "every peer (!)".to_string(),
                |nets| {
                    nets.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            );
            let _ = writeln!(o, "  PROXY header believed from: {from}");
        }
        if let Some(tls) = &l.tls {
            let certs: Vec<String> = tls
                .certificates
                .iter()
                .map(|f| f.cert.display().to_string())
                .collect();
            let _ = writeln!(
                o,
                "  tls: certificates [{}] (first = default) · min_version {} · alpn [{}] · refuse_unknown_sni {} · handshake timeout {}",
                certs.join(", "),
                tls.min_version.as_str(),
                tls.alpn.join(", "),
                tls.refuse_unknown_sni,
                d(t.tls_handshake)
            );
        }
    }
}

fn routes(o: &mut String, c: &Config) {
    for r in &c.routes {
        let host = match &r.host {
            None => "*".to_string(),
            Some(HostMatch::Exact(h)) => h.clone(),
            Some(HostMatch::Suffix(s)) => format!("*{s}"),
        };
        let _ = writeln!(
            o,
            "route: listener={} host={} path_prefix={} -> {}",
            r.listener.as_deref().unwrap_or("*"),
            host,
            r.path_prefix,
            c.upstreams[r.upstream].name
        );
    }
}

fn upstream(o: &mut String, c: &Config, u: &UpstreamConfig) {
    let d = format_duration;
    let _ = writeln!(
        o,
        "upstream {}: balance={} load_factor={} send_proxy={:?}",
        u.name,
        u.policy,
        u.load_factor
            .map_or_else(|| "none (no load bound)".to_string(), |f| f.to_string()),
        u.send_proxy
    );
    if let Some(r) = &u.rebalance {
        let _ = writeln!(
            o,
            "  rebalance: at most {}/s closed by this gateway, tolerance {}",
            r.max_per_second, r.tolerance
        );
    }
    if u.required_for_ready {
        let _ = writeln!(
            o,
            "  required_for_ready: /readyz is 503 while no backend is up"
        );
    }
    if let Some(t) = &u.tls {
        let verify = match &t.verify {
            super::Verify::Ca(p) => format!("ca_file {}", p.display()),
            super::Verify::InsecureSkipVerify => {
                "INSECURE: any certificate accepted (insecure_skip_verify)".to_string()
            }
        };
        let _ = writeln!(
            o,
            "  tls: {verify} · server_name {} · client certificate {} · alpn [{}] · handshake timeout {}",
            t.server_name.as_deref().unwrap_or(match u.discovery {
                Discovery::Dns(_) | Discovery::Srv(_) => "each backend's DNS name",
                Discovery::Static(_) | Discovery::DnsService { .. } => {
                    "each backend's IP address (no SNI; the certificate needs an IP SAN)"
                }
            }),
            t.client_cert
                .as_ref()
                .map_or("none".to_string(), |c| c.cert.display().to_string()),
            t.alpn.join(", "),
            d(c.timeouts.tls_handshake)
        );
    }
    let _ = writeln!(
        o,
        "  websocket: frames={} close_timeout={} pings={}",
        if u.websocket_frames {
            "tracked"
        } else {
            "blind"
        },
        d(u.close_timeout),
        u.ws_ping_interval.map_or("off".to_string(), |i| format!(
            "every {} silent, answer within {}",
            d(i),
            d(u.ws_ping_timeout)
        ))
    );
    backends(o, u);
    cookie(o, u);
}

/// Where the backends come from, and how their health is checked.
fn backends(o: &mut String, u: &UpstreamConfig) {
    let d = format_duration;
    match &u.discovery {
        Discovery::Static(list) => {
            for b in list {
                let _ = writeln!(o, "  backend {} {} weight={}", b.name, b.addr, b.weight);
            }
        }
        Discovery::Dns(names) => {
            for (h, p) in names {
                let _ = writeln!(o, "  dns {h}:{p}");
            }
        }
        Discovery::DnsService { host, port } => {
            let _ = writeln!(o, "  dns_service {host}:{port}");
        }
        Discovery::Srv(s) => {
            let _ = writeln!(o, "  srv {s}");
        }
    }
    if !matches!(u.discovery, Discovery::Static(_)) {
        let n = &u.dns;
        let _ = writeln!(
            o,
            "  discovery: resolver={} ttl=[{}, {}] negative_ttl={} nxdomain_hold={} drain_timeout={}",
            n.resolver.map_or("/etc/resolv.conf".to_string(), |a| a.to_string()),
            d(n.min_ttl),
            d(n.max_ttl),
            d(n.negative_ttl),
            d(n.nxdomain_hold),
            n.drain_timeout.map_or("off".to_string(), d)
        );
    }
    let h = &u.health;
    let _ = writeln!(
        o,
        "  health: max_fails={} fail_timeout={} check={:?} interval={} timeout={} rise={} fall={} start={}",
        h.max_fails,
        d(h.fail_timeout),
        h.check,
        d(h.interval),
        d(h.timeout),
        h.rise,
        h.fall,
        if h.start_up { "up" } else { "down" }
    );
}

fn cookie(o: &mut String, u: &UpstreamConfig) {
    if let Policy::Cookie { fallback, .. } = &u.policy {
        let k = &u.cookie;
        let _ = writeln!(
            o,
            "  cookie: name={} fallback={} path={} http_only={} same_site={} secure={:?} strip={} secret=<{} bytes>",
            k.name,
            fallback,
            k.path,
            k.http_only,
            k.same_site.as_deref().unwrap_or("-"),
            k.secure,
            k.strip,
            k.secret.len()
        );
        if !k.verify_secrets.is_empty() || k.secret_file.is_some() {
            let _ = writeln!(
                o,
                "  cookie secrets: {} retired still verify{}",
                k.verify_secrets.len(),
                k.secret_file
                    .as_ref()
                    .map(|p| format!(", from {}", p.display()))
                    .unwrap_or_default()
            );
        }
    }
}
