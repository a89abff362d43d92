//! `RawConfig` → `Config`. Every check pushes onto one error list and carries on, so the
//! operator sees every problem of a file at once (linkerd does the same).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::raw::*;
use super::secrets::{admin_token, cookie_secrets};
use super::*;
use crate::balance::Policy;

pub(super) struct Errors(Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            field: field.into(),
            line: None,
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.push(field, e);
                default
            }),
        }
    }

    /// A duration that must not be zero.
    fn positive(&mut self, field: &str, v: &Option<String>, default: Duration) -> Duration {
        let d = self.duration(field, v, default);
        if d.is_zero() {
            self.push(field, "must be greater than 0");
            return default;
        }
        d
    }

    fn count(&mut self, field: &str, v: Option<i64>, default: usize, min: i64, max: i64) -> usize {
        match v {
            None => default,
            Some(n) if n < min || n > max => {
                self.push(field, format!("{n} is out of range; use {min}..={max}"));
                default
            }
            Some(n) => n as usize,
        }
    }

    fn choice<T: Copy>(
        &mut self,
        field: &str,
        v: &Option<String>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(s) = v else { return default };
        match options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
        {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.push(field, format!("`{s}` is not one of {}", names.join(" | ")));
                default
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut e = Errors(Vec::new());

    let workers = e.count("workers", raw.workers, 0, 0, 1024);
    let io = e.choice(
        "io",
        &raw.io,
        IoMode::Auto,
        &[
            ("auto", IoMode::Auto),
            ("uring", IoMode::Uring),
            ("epoll", IoMode::Epoll),
        ],
    );
    let admin = match raw.admin.as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9900))),
        Some("") => None,
        Some(s) => parse_addr(&mut e, "admin", s),
    };
    let admin_token = raw
        .admin_token_file
        .as_deref()
        .and_then(|path| admin_token(&mut e, path));

    let t = &raw.timeouts;
    let timeouts = Timeouts {
        head: e.positive("timeouts.head", &t.head, Duration::from_secs(10)),
        connect: e.positive("timeouts.connect", &t.connect, Duration::from_secs(5)),
        response_head: e.positive(
            "timeouts.response_head",
            &t.response_head,
            Duration::from_secs(60),
        ),
        client_body: e.positive(
            "timeouts.client_body",
            &t.client_body,
            Duration::from_secs(60),
        ),
        backend_read: e.positive(
            "timeouts.backend_read",
            &t.backend_read,
            Duration::from_secs(60),
        ),
        http_idle: e.positive("timeouts.http_idle", &t.http_idle, Duration::from_secs(60)),
        tunnel_idle: Some(e.duration("timeouts.tunnel_idle", &t.tunnel_idle, Duration::ZERO))
            .filter(|d| !d.is_zero()),
        drain: e.duration("timeouts.drain", &t.drain, Duration::from_secs(30)),
        accept_delay: e.duration("timeouts.accept_delay", &t.accept_delay, Duration::ZERO),
        tls_handshake: e.positive(
            "timeouts.tls_handshake",
            &t.tls_handshake,
            Duration::from_secs(10),
        ),
    };

    let l = &raw.limits;
    let source_rate = l.source_rate.unwrap_or(0.0);
    if !(source_rate.is_finite() && source_rate >= 0.0) {
        e.push("limits.source_rate", "must be a number >= 0 (0 = off)");
    }
    let limits = Limits {
        max_head_bytes: e.count(
            "limits.max_head_bytes",
            l.max_head_bytes,
            16384,
            1024,
            1 << 20,
        ),
        max_headers: e.count("limits.max_headers", l.max_headers, 100, 8, 1000),
        max_connections: e.count("limits.max_connections", l.max_connections, 0, 0, 1 << 30),
        max_connections_per_source: e.count(
            "limits.max_connections_per_source",
            l.max_connections_per_source,
            0,
            0,
            1 << 30,
        ),
        source_rate: source_rate.max(0.0),
        source_burst: e.count(
            "limits.source_burst",
            l.source_burst,
            source_rate.ceil().max(1.0) as usize,
            0,
            1 << 30,
        ) as u32,
        connect_retries: e.count("limits.connect_retries", l.connect_retries, 2, 0, 16),
        proxy_pending_per_peer: e.count(
            "limits.proxy_pending_per_peer",
            l.proxy_pending_per_peer,
            256,
            0,
            1 << 20,
        ),
    };
    let mut warnings = Vec::new();

    let lg = &raw.log;
    let access_sample = lg.access_sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&access_sample) {
        e.push("log.access_sample", "must be between 0.0 and 1.0");
    }
    if let Some(level) = &lg.level {
        if let Err(m) = check_log_level(level) {
            e.push("log.level", m);
        }
    }
    let log = LogConfig {
        format: e.choice(
            "log.format",
            &lg.format,
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        ),
        level: lg.level.clone().unwrap_or_else(|| "info".into()),
        access: lg.access.unwrap_or(false),
        access_sample: access_sample.clamp(0.0, 1.0),
    };

    // Upstreams first: listeners and routes refer to them by name.
    let mut upstreams = Vec::new();
    let mut upstream_names = HashSet::new();
    for (i, u) in raw.upstream.iter().enumerate() {
        let field = match &u.name {
            Some(n) => format!("upstream[{n}]"),
            None => format!("upstream[{i}]"),
        };
        if let Some(up) = validate_upstream(&mut e, &mut warnings, &field, u) {
            if !upstream_names.insert(up.name.clone()) {
                e.push(format!("{field}.name"), "duplicate upstream name");
            }
            upstreams.push(Arc::new(up));
        }
    }
    let find_upstream = |name: &str| upstreams.iter().position(|u| &*u.name == name);

    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut binds = HashSet::new();
    if raw.listener.is_empty() {
        e.push("listener", "at least one [[listener]] is needed");
    }
    for (i, l) in raw.listener.iter().enumerate() {
        let field = format!("listener[{i}]");
        let name: Arc<str> = match &l.name {
            Some(n) if valid_name(n) => n.as_str().into(),
            Some(n) => {
                e.push(
                    format!("{field}.name"),
                    format!("`{n}`: use letters, digits, - _ ."),
                );
                continue;
            }
            None => format!("listener{i}").into(),
        };
        if !listener_names.insert(name.clone()) {
            e.push(
                format!("{field}.name"),
                format!("duplicate listener name `{name}`"),
            );
        }
        let bind = match &l.bind {
            Some(s) => parse_addr(&mut e, &format!("{field}.bind"), s),
            None => {
                e.push(
                    format!("{field}.bind"),
                    "missing; e.g. bind = \"0.0.0.0:8080\"",
                );
                None
            }
        };
        let mode = e.choice(
            &format!("{field}.mode"),
            &l.mode,
            Mode::Http,
            &[("http", Mode::Http), ("tcp", Mode::Tcp)],
        );
        let upstream = match l.upstream.as_deref() {
            None | Some("") => None,
            Some(u) => match find_upstream(u) {
                Some(i) => Some(i),
                None => {
                    e.push(
                        format!("{field}.upstream"),
                        format!("no [[upstream]] named `{u}`"),
                    );
                    None
                }
            },
        };
        let tls_passthrough = l.tls_passthrough.unwrap_or(false);
        if tls_passthrough && mode != Mode::Tcp {
            e.push(
                format!("{field}.tls_passthrough"),
                "only tcp listeners pass TLS through; an http listener needs plaintext",
            );
        }
        let has_sni_routes = raw
            .route
            .iter()
            .any(|r| r.listener.as_deref() == Some(&*name));
        if mode == Mode::Tcp
            && upstream.is_none()
            && l.upstream.is_none()
            && !(tls_passthrough && has_sni_routes)
        {
            e.push(
                format!("{field}.upstream"),
                "a tcp listener needs an upstream",
            );
        }
        let proxy_protocol = l.proxy_protocol.unwrap_or(false);
        let proxy_protocol_from = match &l.proxy_protocol_from {
            None => None,
            Some(list) => {
                if !proxy_protocol {
                    e.push(
                        format!("{field}.proxy_protocol_from"),
                        "only used with proxy_protocol = true",
                    );
                }
                if list.is_empty() {
                    e.push(
                        format!("{field}.proxy_protocol_from"),
                        "empty: list the load balancers' addresses (e.g. [\"10.0.0.0/8\"]), \
                         or set proxy_protocol = false",
                    );
                }
                let mut out = Vec::new();
                for (j, c) in list.iter().enumerate() {
                    match Cidr::parse(c) {
                        Ok(c) => out.push(c),
                        Err(m) => e.push(format!("{field}.proxy_protocol_from[{j}]"), m),
                    }
                }
                Some(out)
            }
        };
        if proxy_protocol && proxy_protocol_from.is_none() {
            warnings.push(format!(
                "listener `{name}`: proxy_protocol = true trusts a PROXY header from any peer, \
                 so a client that reaches the port directly can claim any source address; \
                 set proxy_protocol_from = [\"<load balancer CIDR>\", ...]"
            ));
        }
        let tls = l.tls.as_ref().and_then(|t| {
            super::tls::validate(&format!("{field}.tls"), mode, t, &mut |f, m| e.push(f, m))
                .map(Arc::new)
        });
        if tls.is_some() && l.tls_passthrough == Some(true) {
            e.push(
                format!("{field}.tls_passthrough"),
                "a listener either terminates TLS ([listener.tls]) or passes it through, not both",
            );
        }
        if let Some(b) = bind {
            if !binds.insert(b) {
                e.push(
                    format!("{field}.bind"),
                    format!("{b} is bound by another listener"),
                );
            }
            listeners.push(ListenerConfig {
                name,
                bind: b,
                mode,
                proxy_protocol,
                proxy_protocol_from,
                tls_terminated: l.tls_terminated.unwrap_or(tls.is_some()),
                tls,
                tls_passthrough,
                upstream,
                forward_for: l.forward_for.unwrap_or(true),
                real_ip: l.real_ip.unwrap_or(true),
                forward_proto: l.forward_proto.unwrap_or(true),
                forward_host: l.forward_host.unwrap_or(true),
            });
        }
    }

    let mut routes = Vec::new();
    for (i, r) in raw.route.iter().enumerate() {
        let field = format!("route[{i}]");
        let listener: Option<Arc<str>> = r.listener.as_deref().map(Into::into);
        if let Some(l) = &listener {
            match raw
                .listener
                .iter()
                .position(|x| x.name.as_deref() == Some(l))
            {
                None => e.push(
                    format!("{field}.listener"),
                    format!("no [[listener]] named `{l}`"),
                ),
                Some(li) if raw.listener[li].mode.as_deref() == Some("tcp") => {
                    if raw.listener[li].tls_passthrough != Some(true) {
                        e.push(
                            format!("{field}.listener"),
                            format!(
                                "`{l}` is a tcp listener; routes apply to http listeners and to \
                                 tcp listeners with `tls_passthrough = true` (by server name)"
                            ),
                        );
                    } else if r.path_prefix.as_deref().is_some_and(|p| p != "/") {
                        e.push(
                            format!("{field}.path_prefix"),
                            format!("`{l}` passes TLS through: it routes by server name only"),
                        );
                    }
                }
                Some(_) => {}
            }
        }
        let host = match r.host.as_deref() {
            None | Some("") | Some("*") => None,
            Some(h) => parse_host_match(&mut e, &format!("{field}.host"), h),
        };
        let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
        if !path_prefix.starts_with('/') {
            e.push(format!("{field}.path_prefix"), "must start with `/`");
        } else {
            check_path_prefix(&mut e, &format!("{field}.path_prefix"), &path_prefix);
        }
        match r.upstream.as_deref() {
            None => e.push(format!("{field}.upstream"), "missing"),
            Some(u) => match find_upstream(u) {
                None => e.push(
                    format!("{field}.upstream"),
                    format!("no [[upstream]] named `{u}`"),
                ),
                Some(upstream) => routes.push(RouteConfig {
                    listener,
                    host,
                    path_prefix,
                    upstream,
                }),
            },
        }
    }

    check_policies_fit(&mut e, &listeners, &routes, &upstreams);
    for l in &listeners {
        if l.mode == Mode::Http
            && l.upstream.is_none()
            && !routes
                .iter()
                .any(|r| r.listener.as_ref().is_none_or(|n| *n == l.name))
        {
            e.push(
                format!("listener[{}]", l.name),
                "an http listener needs a [[route]] or a default `upstream`",
            );
        }
    }

    if e.0.is_empty() {
        Ok(Config {
            workers,
            io,
            admin,
            admin_token,
            pin_workers: raw.pin_workers.unwrap_or(true),
            timeouts,
            limits,
            log,
            listeners,
            routes,
            upstreams,
            warnings,
        })
    } else {
        Err(ConfigErrors(e.0))
    }
}

/// `ws_ping_timeout`'s default: a mobile client woken from the background answers well
/// within it.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// `close_timeout`'s default: long enough for a client on a slow mobile link to answer a Close,
/// short enough to fit the drain window's last seconds (`proxy::lifecycle::CLOSE_LEAD`).
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn validate_upstream(
    e: &mut Errors,
    warnings: &mut Vec<String>,
    field: &str,
    u: &RawUpstream,
) -> Option<UpstreamConfig> {
    let name: Arc<str> = match &u.name {
        Some(n) if valid_name(n) => n.as_str().into(),
        Some(n) => {
            e.push(
                format!("{field}.name"),
                format!("`{n}`: use letters, digits, - _ ."),
            );
            return None;
        }
        None => {
            e.push(format!("{field}.name"), "missing");
            return None;
        }
    };
    let errors_before = e.0.len();
    let balance = u.balance.as_deref().unwrap_or("round-robin");
    let parsed = Policy::parse(balance)
        .map_err(|msg| e.push(format!("{field}.balance"), msg))
        .ok();
    let is_cookie = matches!(parsed, Some(Policy::Cookie { .. }));
    // Bounded load is opt-in: without `load_factor` a key stays where the table puts it.
    let load_factor = u.load_factor;
    if load_factor.is_some_and(|f| !(f.is_finite() && f >= 1.0)) {
        e.push(
            format!("{field}.load_factor"),
            "must be >= 1.0 (1.25 is a good start), or left out for no load bound",
        );
    }
    let rebalance = u
        .rebalance
        .as_ref()
        .map(|r| rebalance(e, &format!("{field}.rebalance"), r, load_factor.is_some()));
    let send_proxy = e.choice(
        &format!("{field}.send_proxy"),
        &u.send_proxy,
        SendProxy::None,
        &[
            ("none", SendProxy::None),
            ("v1", SendProxy::V1),
            ("v2", SendProxy::V2),
        ],
    );

    let rc = u.cookie.as_ref();
    if rc.is_some() && !is_cookie {
        e.push(
            format!("{field}.cookie"),
            "only used with balance = \"cookie\"",
        );
    }
    let rc_default = RawCookie::default();
    let rc = rc.unwrap_or(&rc_default);
    let cookie_name = rc.name.clone().unwrap_or_else(|| "ringway".into());
    if cookie_name.is_empty() || !cookie_name.bytes().all(is_token_byte) {
        e.push(
            format!("{field}.cookie.name"),
            "must be a non-empty cookie token",
        );
    }
    let fallback = rc.fallback.as_deref().unwrap_or("least-conn");
    match Policy::parse(fallback) {
        Ok(Policy::Cookie { .. }) => e.push(
            format!("{field}.cookie.fallback"),
            "cannot be `cookie` itself",
        ),
        Ok(_) => {}
        Err(msg) => e.push(format!("{field}.cookie.fallback"), msg),
    }
    let path = rc.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
        e.push(
            format!("{field}.cookie.path"),
            "must start with `/` and hold no `;`",
        );
    }
    let same_site = match rc.same_site.as_deref() {
        None => Some("Lax".to_string()),
        Some("") => None,
        Some(s) => match ["Strict", "Lax", "None"]
            .iter()
            .find(|v| v.eq_ignore_ascii_case(s))
        {
            Some(v) => Some(v.to_string()),
            None => {
                e.push(
                    format!("{field}.cookie.same_site"),
                    "use Strict | Lax | None",
                );
                None
            }
        },
    };
    let (secrets, secret_file) = cookie_secrets(e, warnings, field, rc, is_cookie);
    let mut secrets = secrets.into_iter();
    let secret = secrets.next().unwrap_or_default();
    let verify_secrets: Vec<String> = secrets.collect();
    let max_age = Some(e.duration(
        &format!("{field}.cookie.max_age"),
        &rc.max_age,
        Duration::ZERO,
    ))
    .filter(|d| !d.is_zero());
    let built = build_policy(parsed, &cookie_name, &secret, fallback, load_factor)
        .map(|p| p.with_verify_secrets(&verify_secrets));
    let policy = built.unwrap_or_else(|msg| {
        // Every way this can fail was reported above, field by field; say it here only
        // if not, so no error goes missing.
        if e.0.len() == errors_before {
            e.push(format!("{field}.balance"), msg);
        }
        Policy::RoundRobin
    });
    let cookie = CookieConfig {
        name: cookie_name,
        secret,
        verify_secrets,
        secret_file,
        path,
        http_only: rc.http_only.unwrap_or(true),
        same_site,
        secure: e.choice(
            &format!("{field}.cookie.secure"),
            &rc.secure,
            CookieSecure::Auto,
            &[
                ("auto", CookieSecure::Auto),
                ("always", CookieSecure::Always),
                ("never", CookieSecure::Never),
            ],
        ),
        max_age,
        strip: rc.strip.unwrap_or(true),
    };

    let sources = [
        u.backends.is_some(),
        u.dns.is_some(),
        u.dns_service.is_some(),
        u.srv.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources != 1 {
        e.push(
            field.to_string(),
            "give exactly one of backends, dns, dns_service, srv",
        );
    }
    let discovery = if let Some(list) = &u.backends {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        if list.is_empty() {
            e.push(
                format!("{field}.backends"),
                "empty; list at least one backend",
            );
        }
        for (j, b) in list.iter().enumerate() {
            let bf = format!("{field}.backends[{j}]");
            let bname: Arc<str> = match &b.name {
                Some(n) if valid_name(n) => n.as_str().into(),
                Some(n) => {
                    e.push(
                        format!("{bf}.name"),
                        format!("`{n}`: use letters, digits, - _ ."),
                    );
                    continue;
                }
                None => format!("b{j}").into(),
            };
            if !names.insert(bname.clone()) {
                e.push(
                    format!("{bf}.name"),
                    format!("duplicate backend name `{bname}`"),
                );
            }
            let weight = e.count(&format!("{bf}.weight"), b.weight, 1, 1, 1000) as u32;
            match b.address.as_deref() {
                None => e.push(format!("{bf}.address"), "missing; e.g. \"10.0.0.5:3000\""),
                Some(a) => {
                    if let Some(addr) = parse_addr(e, &format!("{bf}.address"), a) {
                        out.push(StaticBackend {
                            name: bname,
                            addr,
                            weight,
                        });
                    }
                }
            }
        }
        Discovery::Static(out)
    } else if let Some(names) = &u.dns {
        if names.is_empty() {
            e.push(format!("{field}.dns"), "empty; list at least one NAME:PORT");
        }
        let mut out = Vec::new();
        for (j, n) in names.iter().enumerate() {
            if let Some(hp) = parse_host_port(e, &format!("{field}.dns[{j}]"), n) {
                out.push(hp);
            }
        }
        Discovery::Dns(out)
    } else if let Some(s) = &u.dns_service {
        match parse_host_port(e, &format!("{field}.dns_service"), s) {
            Some((host, port)) => Discovery::DnsService { host, port },
            None => Discovery::Static(Vec::new()),
        }
    } else if let Some(s) = &u.srv {
        if !valid_hostname(s) {
            e.push(format!("{field}.srv"), format!("`{s}` is not a DNS name"));
        }
        Discovery::Srv(s.clone())
    } else {
        Discovery::Static(Vec::new())
    };

    let rd_default = RawDns::default();
    if u.discovery.is_some() && matches!(discovery, Discovery::Static(_)) {
        e.push(
            format!("{field}.discovery"),
            "only used with dns, dns_service or srv",
        );
    }
    let rd = u.discovery.as_ref().unwrap_or(&rd_default);
    let df = format!("{field}.discovery");
    let dns = DnsOptions {
        resolver: match rd.resolver.as_deref() {
            None | Some("") => None,
            Some(s) => parse_addr(e, &format!("{df}.resolver"), s),
        },
        min_ttl: e.positive(
            &format!("{df}.min_ttl"),
            &rd.min_ttl,
            Duration::from_secs(1),
        ),
        max_ttl: e.positive(
            &format!("{df}.max_ttl"),
            &rd.max_ttl,
            Duration::from_secs(30),
        ),
        negative_ttl: e.positive(
            &format!("{df}.negative_ttl"),
            &rd.negative_ttl,
            Duration::from_secs(5),
        ),
        nxdomain_hold: e.duration(
            &format!("{df}.nxdomain_hold"),
            &rd.nxdomain_hold,
            Duration::from_secs(10),
        ),
        drain_timeout: Some(e.duration(
            &format!("{df}.drain_timeout"),
            &rd.drain_timeout,
            Duration::ZERO,
        ))
        .filter(|d| !d.is_zero()),
    };
    if dns.min_ttl > dns.max_ttl {
        e.push(format!("{df}.min_ttl"), "must not be larger than max_ttl");
    }

    let rh_default = RawHealth::default();
    let rh = u.health.as_ref().unwrap_or(&rh_default);
    let hf = format!("{field}.health");
    let health = HealthConfig {
        max_fails: e.count(&format!("{hf}.max_fails"), rh.max_fails, 3, 0, 1000) as u32,
        fail_timeout: e.positive(
            &format!("{hf}.fail_timeout"),
            &rh.fail_timeout,
            Duration::from_secs(10),
        ),
        check: e.choice(
            &format!("{hf}.check"),
            &rh.check,
            CheckKind::None,
            &[
                ("none", CheckKind::None),
                ("tcp", CheckKind::Tcp),
                ("http", CheckKind::Http),
                ("websocket", CheckKind::WebSocket),
            ],
        ),
        path: rh.path.clone().unwrap_or_else(|| "/".into()),
        host: rh.host.clone().filter(|h| !h.is_empty()),
        interval: e.positive(
            &format!("{hf}.interval"),
            &rh.interval,
            Duration::from_secs(5),
        ),
        timeout: e.positive(
            &format!("{hf}.timeout"),
            &rh.timeout,
            Duration::from_secs(2),
        ),
        rise: e.count(&format!("{hf}.rise"), rh.rise, 2, 1, 100) as u32,
        fall: e.count(&format!("{hf}.fall"), rh.fall, 3, 1, 100) as u32,
        start_up: e.choice(
            &format!("{hf}.start"),
            &rh.start,
            true,
            &[("up", true), ("down", false)],
        ),
    };
    if !health.path.starts_with('/') || health.path.bytes().any(|b| b <= b' ') {
        e.push(
            format!("{hf}.path"),
            "must start with `/` and hold no spaces",
        );
    }

    let tls = u.tls.as_ref().and_then(|t| {
        super::upstream_tls::validate(&format!("{field}.tls"), t, &mut |f, m| e.push(f, m))
    });
    // Gateway pings are opt-in; "0s" is off too. They need the frame trackers (a ping may only
    // go in between two frames, and the client's Pong must be taken out of its stream).
    let ping_field = format!("{field}.ws_ping_interval");
    let ws_ping_interval =
        Some(e.duration(&ping_field, &u.ws_ping_interval, Duration::ZERO)).filter(|d| !d.is_zero());
    if ws_ping_interval.is_some() && u.websocket_frames == Some(false) {
        e.push(
            ping_field,
            "gateway pings need websocket_frames = true (remove one of them)",
        );
    }

    Some(UpstreamConfig {
        name,
        policy,
        load_factor,
        send_proxy,
        cookie,
        discovery,
        dns,
        health,
        required_for_ready: u.required_for_ready.unwrap_or(false),
        tls: tls.map(Arc::new),
        websocket_frames: u.websocket_frames.unwrap_or(true),
        close_timeout: e.positive(
            &format!("{field}.close_timeout"),
            &u.close_timeout,
            DEFAULT_CLOSE_TIMEOUT,
        ),
        ws_ping_interval,
        ws_ping_timeout: e.positive(
            &format!("{field}.ws_ping_timeout"),
            &u.ws_ping_timeout,
            DEFAULT_PING_TIMEOUT,
        ),
        rebalance,
    })
}

/// `rebalance = { max_per_second, tolerance }`. Refused with `load_factor`: bounded load
/// places by this replica's loads and keeps keys with their live connections, so a tunnel
/// moved to where the table says could be placed back where it was.
fn rebalance(e: &mut Errors, field: &str, r: &RawRebalance, bounded: bool) -> Rebalance {
    let max_per_second = e.count(
        &format!("{field}.max_per_second"),
        r.max_per_second,
        Rebalance::DEFAULT_MAX_PER_SECOND as usize,
        1,
        100_000,
    ) as u32;
    let tolerance = match r.tolerance {
        None => Rebalance::DEFAULT_TOLERANCE,
        Some(t) if t.is_finite() && (0.0..=10.0).contains(&t) => t,
        Some(t) => {
            e.push(
                format!("{field}.tolerance"),
                format!("{t} is out of range; use a fraction in 0.0..=10.0 (0.10 = 10% over the fair share)"),
            );
            Rebalance::DEFAULT_TOLERANCE
        }
    };
    if bounded {
        e.push(
            field,
            "cannot be combined with `load_factor` (bounded load places by this replica's \
             loads, so a moved tunnel could come straight back); drop one of them",
        );
    }
    Rebalance {
        max_per_second,
        tolerance,
    }
}

/// Requests are routed on their normalised path (`proto::path`), so a prefix that is not
/// normalised itself could never match, or would match other than it reads.
fn check_path_prefix(e: &mut Errors, field: &str, prefix: &str) {
    match crate::proto::normalize_path(prefix) {
        Ok(n) if n == prefix => {}
        Ok(n) => e.push(
            field,
            format!(
                "`{prefix}` is matched against normalised paths (no query, no `.`/`..` \
                 segments, unreserved characters unescaped, escapes in upper case); write `{n}`"
            ),
        ),
        Err(_) => e.push(
            field,
            format!("`{prefix}` has a `%` not followed by two hex digits"),
        ),
    }
}

/// The typed policy of an upstream: the balancer owns the grammar and the cookie policy's
/// rules; this only hands it the fields. `parsed` is `None` when `balance` did not parse.
fn build_policy(
    parsed: Option<Policy>,
    cookie_name: &str,
    secret: &str,
    fallback: &str,
    load_factor: Option<f64>,
) -> Result<Policy, String> {
    let policy = match parsed {
        None => return Err("invalid balance policy".into()),
        Some(Policy::Cookie { .. }) => Policy::cookie(cookie_name, secret.as_bytes(), fallback)?,
        Some(p) => p,
    };
    policy.with_load_factor(load_factor)
}

fn parse_addr(e: &mut Errors, field: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            e.push(
                field,
                format!("`{s}` is not an IP:PORT address (e.g. 0.0.0.0:8080 or [::]:8080)"),
            );
            None
        }
    }
}

fn parse_host_port(e: &mut Errors, field: &str, s: &str) -> Option<(String, u16)> {
    let Some((host, port)) = s.rsplit_once(':') else {
        e.push(field, format!("`{s}`: write NAME:PORT"));
        return None;
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            e.push(field, format!("`{s}`: `{port}` is not a port"));
            return None;
        }
    };
    if !valid_hostname(host) {
        e.push(field, format!("`{host}` is not a DNS name"));
        return None;
    }
    Some((host.to_string(), port))
}

fn parse_host_match(e: &mut Errors, field: &str, h: &str) -> Option<HostMatch> {
    let lower = h.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("*.") {
        if valid_hostname(rest) {
            return Some(HostMatch::Suffix(format!(".{rest}")));
        }
    } else if valid_hostname(&lower) {
        return Some(HostMatch::Exact(lower));
    }
    e.push(field, format!("`{h}` is not a host name or `*.domain`"));
    None
}

fn valid_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `log.level` / `--log-level`: an `EnvFilter` directive list whose bare words are level names
/// (`info`, `warn,ringway::access=info`). A bare word that is not a level would be read as a
/// target name and silently log nothing of ringway (`inof`), so it is refused.
pub fn check_log_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let bare_ok = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains('='))
        .all(|d| LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l)));
    if !bare_ok || tracing_subscriber::EnvFilter::try_new(level).is_err() {
        return Err(format!(
            "`{level}` is not a log level (trace | debug | info | warn | error | off) or a filter like \"info,ringway::access=warn\""
        ));
    }
    Ok(())
}

/// Every upstream a listener can send to must be able to place its connections: a tcp
/// connection has no request to take a header, cookie or query from (and no response to set a
/// cookie on), and only a `tls_passthrough` listener reads a ClientHello for `hash:sni`; such a
/// policy would silently not stick.
fn check_policies_fit(
    e: &mut Errors,
    listeners: &[ListenerConfig],
    routes: &[RouteConfig],
    upstreams: &[Arc<UpstreamConfig>],
) {
    for l in listeners {
        let via_routes = routes.iter().filter(|r| match &r.listener {
            Some(n) => *n == l.name,
            None => l.mode == Mode::Http,
        });
        let used = l.upstream.into_iter().chain(via_routes.map(|r| r.upstream));
        let mut seen = std::collections::BTreeSet::new();
        for ui in used.filter(|ui| seen.insert(*ui)) {
            let u = &upstreams[ui];
            let fits = match l.mode {
                Mode::Http => u.policy.works_in_http_mode(),
                Mode::Tcp => u.policy.works_in_tcp_mode().and_then(|()| {
                    let sni = matches!(
                        u.policy,
                        Policy::Hash {
                            key: crate::balance::HashKey::Sni,
                            ..
                        }
                    );
                    if sni && !l.tls_passthrough {
                        Err(format!(
                            "balance {} needs the ClientHello, which only a listener with \
                             `tls_passthrough = true` reads",
                            u.policy
                        ))
                    } else {
                        Ok(())
                    }
                }),
            };
            if let Err(why) = fits {
                let kind = if l.mode == Mode::Tcp { "tcp" } else { "http" };
                e.push(
                    format!("upstream[{}].balance", u.name),
                    format!(
                        "{why}, but {kind} listener `{}` uses this upstream: change `balance`, \
                         or give the listener an upstream of its own",
                        l.name
                    ),
                );
            }
        }
    }
}
