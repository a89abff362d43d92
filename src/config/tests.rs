//! Every config field has a malformed-input test: the error must name the field.

use super::*;

const BASE: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
upstream = "app"

[[upstream]]
name = "app"
backends = [{ name = "a", address = "127.0.0.1:9001" }]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match Config::from_toml(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// Asserts that some error names `field` (exactly) and mentions `needle`.
fn assert_error(text: &str, field: &str, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.field == field && e.message.contains(needle)),
        "no error on `{field}` containing `{needle}`; got: {errs:#?}"
    );
}

/// BASE with `extra` appended to the top-level table (before the first `[[`).
fn with_top(extra: &str) -> String {
    format!("{extra}\n{BASE}")
}

fn with_upstream(extra: &str) -> String {
    format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
upstream = "app"

[[upstream]]
name = "app"
{extra}
"#
    )
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml(BASE).unwrap();
    assert_eq!(c.workers, 0);
    assert_eq!(c.io, IoMode::Auto);
    assert_eq!(c.admin, Some("127.0.0.1:9900".parse().unwrap()));
    assert_eq!(c.timeouts.head, Duration::from_secs(10));
    assert_eq!(c.timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.timeouts.tunnel_idle, None);
    assert_eq!(c.timeouts.drain, Duration::from_secs(30));
    assert_eq!(c.limits.max_head_bytes, 16384);
    assert_eq!(c.limits.connect_retries, 2);
    assert_eq!(c.listeners[0].mode, Mode::Http);
    assert!(c.listeners[0].forward_for);
    let u = &c.upstreams[0];
    assert_eq!(u.policy, Policy::RoundRobin);
    assert_eq!(u.load_factor, None, "bounded load is opt-in");
    assert_eq!(u.health.max_fails, 3);
    assert_eq!(u.health.fail_timeout, Duration::from_secs(10));
    assert_eq!(u.cookie.name, "ringway");
    match &u.discovery {
        Discovery::Static(b) => {
            assert_eq!(&*b[0].name, "a");
            assert_eq!(b[0].weight, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_example_in_docs_parses() {
    // The deploy example must stay valid; CI also runs `ringway check` on it.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/ringway.toml");
    if path.exists() {
        Config::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
    }
}

#[test]
fn syntax_errors_carry_a_line() {
    let errs = errors("workers = 2\n\n[[listener]\nname = 1");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "<file>");
    assert_eq!(errs[0].line, Some(3));
}

#[test]
fn unknown_keys_are_errors() {
    let errs = errors(&with_top("conect_timeout = \"5s\""));
    assert!(errs[0].message.contains("conect_timeout"), "{errs:?}");
    let errs = errors(&format!("{BASE}\n[timeouts]\nconect = \"5s\"\n"));
    assert!(errs[0].message.contains("conect"), "{errs:?}");
    assert!(errs[0].line.is_some());
}

#[test]
fn wrong_types_are_errors() {
    let errs = errors(&with_top("workers = \"two\""));
    assert!(errs[0].message.contains("invalid type"), "{errs:?}");
}

#[test]
fn process_fields() {
    assert_error(&with_top("workers = -1"), "workers", "out of range");
    assert_error(&with_top("io = \"kqueue\""), "io", "auto | uring | epoll");
    assert_error(&with_top("admin = \"localhost\""), "admin", "IP:PORT");
    let c = Config::from_toml(&with_top("admin = \"\"")).unwrap();
    assert_eq!(c.admin, None);
}

#[test]
fn timeouts() {
    for f in [
        "head",
        "connect",
        "response_head",
        "http_idle",
        "tunnel_idle",
        "drain",
        "accept_delay",
    ] {
        let text = format!("{BASE}\n[timeouts]\n{f} = \"10\"\n");
        assert_error(&text, &format!("timeouts.{f}"), "no unit");
    }
    for f in ["head", "connect", "response_head", "http_idle"] {
        let text = format!("{BASE}\n[timeouts]\n{f} = \"0s\"\n");
        assert_error(&text, &format!("timeouts.{f}"), "greater than 0");
    }
    let c = Config::from_toml(&format!("{BASE}\n[timeouts]\ntunnel_idle = \"5m\"\n")).unwrap();
    assert_eq!(c.timeouts.tunnel_idle, Some(Duration::from_secs(300)));
}

#[test]
fn limits() {
    let t = |k: &str, v: &str| format!("{BASE}\n[limits]\n{k} = {v}\n");
    assert_error(
        &t("max_head_bytes", "10"),
        "limits.max_head_bytes",
        "out of range",
    );
    assert_error(&t("max_headers", "0"), "limits.max_headers", "out of range");
    assert_error(
        &t("max_connections", "-5"),
        "limits.max_connections",
        "out of range",
    );
    assert_error(
        &t("max_connections_per_source", "-1"),
        "limits.max_connections_per_source",
        "out of range",
    );
    assert_error(&t("source_rate", "-1.0"), "limits.source_rate", ">= 0");
    assert_error(
        &t("source_burst", "-1"),
        "limits.source_burst",
        "out of range",
    );
    assert_error(
        &t("connect_retries", "100"),
        "limits.connect_retries",
        "out of range",
    );
}

#[test]
fn log() {
    assert_error(
        &format!("{BASE}\n[log]\nformat = \"xml\"\n"),
        "log.format",
        "text | json",
    );
    assert_error(
        &format!("{BASE}\n[log]\naccess_sample = 2.0\n"),
        "log.access_sample",
        "between",
    );
}

#[test]
fn listeners() {
    assert_error(
        "[[upstream]]\nname = \"a\"\nbackends = [{address = \"127.0.0.1:1\"}]",
        "listener",
        "at least one",
    );
    let l = |extra: &str| {
        format!(
            "[[listener]]\n{extra}\n[[upstream]]\nname = \"app\"\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n"
        )
    };
    assert_error(&l("upstream = \"app\""), "listener[0].bind", "missing");
    assert_error(
        &l("bind = \"8080\"\nupstream = \"app\""),
        "listener[0].bind",
        "IP:PORT",
    );
    assert_error(
        &l("bind = \"127.0.0.1:1\"\nmode = \"udp\"\nupstream = \"app\""),
        "listener[0].mode",
        "http | tcp",
    );
    assert_error(
        &l("bind = \"127.0.0.1:1\"\nupstream = \"nope\""),
        "listener[0].upstream",
        "no [[upstream]]",
    );
    assert_error(
        &l("bind = \"127.0.0.1:1\"\nmode = \"tcp\""),
        "listener[0].upstream",
        "needs an upstream",
    );
    assert_error(
        &l("name = \"a b\"\nbind = \"127.0.0.1:1\"\nupstream = \"app\""),
        "listener[0].name",
        "letters",
    );
    assert_error(
        &l("bind = \"127.0.0.1:1\""),
        "listener[listener0]",
        "needs a [[route]]",
    );
    let two = format!(
        "{BASE}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nupstream = \"app\"\n"
    );
    let errs = errors(&two);
    assert!(errs
        .iter()
        .any(|e| e.field == "listener[1].name" && e.message.contains("duplicate")));
    assert!(errs
        .iter()
        .any(|e| e.field == "listener[1].bind" && e.message.contains("bound by another")));
}

#[test]
fn routes() {
    let r = |extra: &str| format!("{BASE}\n[[route]]\n{extra}\n");
    assert_error(&r("path_prefix = \"/x\""), "route[0].upstream", "missing");
    assert_error(
        &r("upstream = \"nope\""),
        "route[0].upstream",
        "no [[upstream]]",
    );
    assert_error(
        &r("upstream = \"app\"\nlistener = \"nope\""),
        "route[0].listener",
        "no [[listener]]",
    );
    assert_error(
        &r("upstream = \"app\"\npath_prefix = \"x\""),
        "route[0].path_prefix",
        "start with",
    );
    // Requests are routed on their normalised path; a prefix must be written that way.
    for (prefix, want) in [
        ("/a/../b/", "write `/b/`"),
        ("/a/./", "write `/a/`"),
        ("/%41pi/", "write `/Api/`"),
        ("/a%2fb", "write `/a%2Fb`"),
        ("/ws?x=1", "write `/ws`"),
        ("/a%zz", "two hex digits"),
    ] {
        assert_error(
            &r(&format!("upstream = \"app\"\npath_prefix = \"{prefix}\"")),
            "route[0].path_prefix",
            want,
        );
    }
    for prefix in ["/", "/socket.io/", "/a%2Fb/", "/a..b/", "/~u/"] {
        let c = Config::from_toml(&r(&format!(
            "upstream = \"app\"\npath_prefix = \"{prefix}\""
        )))
        .unwrap();
        assert_eq!(c.routes[0].path_prefix, prefix);
    }
    assert_error(
        &r("upstream = \"app\"\nhost = \"a b\""),
        "route[0].host",
        "not a host name",
    );
    let c = Config::from_toml(&r("upstream = \"app\"\nhost = \"*.Example.com\"")).unwrap();
    assert_eq!(
        c.routes[0].host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
    let tcp =
        "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:1\"\nmode = \"tcp\"\nupstream = \"app\"\n\
               [[route]]\nlistener = \"t\"\nupstream = \"app\"\n\
               [[upstream]]\nname = \"app\"\nbackends = [{ address = \"127.0.0.1:9001\" }]\n";
    assert_error(tcp, "route[0].listener", "tcp listener");
}

#[test]
fn upstream_fields() {
    assert_error(
        &with_upstream("balance = \"random\"\nbackends = [{ address = \"127.0.0.1:1\" }]"),
        "upstream[app].balance",
        "",
    );
    let c = Config::from_toml(&with_upstream(
        "balance = \"hash:ip\"\nload_factor = 1.5\nbackends = [{ address = \"127.0.0.1:1\" }]",
    ))
    .unwrap();
    assert_eq!(c.upstreams[0].load_factor, Some(1.5), "opt-in bounded load");
    assert_error(
        &with_upstream("load_factor = 0.5\nbackends = [{ address = \"127.0.0.1:1\" }]"),
        "upstream[app].load_factor",
        ">= 1.0",
    );
    assert_error(
        &with_upstream("send_proxy = \"v3\"\nbackends = [{ address = \"127.0.0.1:1\" }]"),
        "upstream[app].send_proxy",
        "none | v1 | v2",
    );
    assert_error(&with_upstream(""), "upstream[app]", "exactly one");
    assert_error(
        &with_upstream("backends = [{ address = \"127.0.0.1:1\" }]\ndns = [\"a.b:80\"]"),
        "upstream[app]",
        "exactly one",
    );
    let errs = errors(
        "[[listener]]\nbind = \"127.0.0.1:1\"\nupstream = \"x\"\n[[upstream]]\nbackends = []\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.field == "upstream[0].name" && e.message.contains("missing")),
        "{errs:?}"
    );
}

#[test]
fn backends() {
    assert_error(
        &with_upstream("backends = []"),
        "upstream[app].backends",
        "empty",
    );
    assert_error(
        &with_upstream("backends = [{ name = \"a\" }]"),
        "upstream[app].backends[0].address",
        "missing",
    );
    assert_error(
        &with_upstream("backends = [{ address = \"pod:80\" }]"),
        "upstream[app].backends[0].address",
        "IP:PORT",
    );
    assert_error(
        &with_upstream("backends = [{ address = \"127.0.0.1:1\", weight = 0 }]"),
        "upstream[app].backends[0].weight",
        "out of range",
    );
    assert_error(
        &with_upstream("backends = [{ name = \"x\", address = \"127.0.0.1:1\" }, { name = \"x\", address = \"127.0.0.1:2\" }]"),
        "upstream[app].backends[1].name",
        "duplicate",
    );
    assert_error(
        &with_upstream("backends = [{ name = \"x y\", address = \"127.0.0.1:1\" }]"),
        "upstream[app].backends[0].name",
        "letters",
    );
}

#[test]
fn dns_sources() {
    assert_error(&with_upstream("dns = []"), "upstream[app].dns", "empty");
    assert_error(
        &with_upstream("dns = [\"chat-0.svc\"]"),
        "upstream[app].dns[0]",
        "NAME:PORT",
    );
    assert_error(
        &with_upstream("dns = [\"chat-0.svc:http\"]"),
        "upstream[app].dns[0]",
        "not a port",
    );
    assert_error(
        &with_upstream("dns = [\"bad name:80\"]"),
        "upstream[app].dns[0]",
        "not a DNS name",
    );
    assert_error(
        &with_upstream("dns_service = \"svc\""),
        "upstream[app].dns_service",
        "NAME:PORT",
    );
    assert_error(
        &with_upstream("srv = \"_ws._tcp..x\""),
        "upstream[app].srv",
        "not a DNS name",
    );
    let c = Config::from_toml(&with_upstream(
        "dns = [\"chat-0.chat.ns.svc.cluster.local:3000\"]",
    ))
    .unwrap();
    assert_eq!(
        c.upstreams[0].discovery,
        Discovery::Dns(vec![("chat-0.chat.ns.svc.cluster.local".into(), 3000)])
    );
}

#[test]
fn discovery_options() {
    let d = |extra: &str| {
        with_upstream(&format!(
            "dns = [\"a.b:80\"]\n[upstream.discovery]\n{extra}"
        ))
    };
    assert_error(
        &d("resolver = \"dns\""),
        "upstream[app].discovery.resolver",
        "IP:PORT",
    );
    assert_error(
        &d("min_ttl = \"0s\""),
        "upstream[app].discovery.min_ttl",
        "greater than 0",
    );
    assert_error(
        &d("max_ttl = \"1x\""),
        "upstream[app].discovery.max_ttl",
        "unknown unit",
    );
    assert_error(
        &d("min_ttl = \"60s\"\nmax_ttl = \"30s\""),
        "upstream[app].discovery.min_ttl",
        "larger than max_ttl",
    );
    assert_error(
        &d("negative_ttl = \"0s\""),
        "upstream[app].discovery.negative_ttl",
        "greater than 0",
    );
    assert_error(
        &d("nxdomain_hold = \"soon\""),
        "upstream[app].discovery.nxdomain_hold",
        "not a duration",
    );
    assert_error(
        &d("drain_timeout = \"5\""),
        "upstream[app].discovery.drain_timeout",
        "no unit",
    );
    assert_error(
        &with_upstream(
            "backends = [{ address = \"127.0.0.1:1\" }]\n[upstream.discovery]\nmin_ttl = \"1s\"",
        ),
        "upstream[app].discovery",
        "only used with",
    );
}

#[test]
fn health() {
    let h = |extra: &str| {
        with_upstream(&format!(
            "backends = [{{ address = \"127.0.0.1:1\" }}]\n[upstream.health]\n{extra}"
        ))
    };
    assert_error(
        &h("max_fails = -1"),
        "upstream[app].health.max_fails",
        "out of range",
    );
    assert_error(
        &h("fail_timeout = \"0s\""),
        "upstream[app].health.fail_timeout",
        "greater than 0",
    );
    assert_error(
        &h("check = \"icmp\""),
        "upstream[app].health.check",
        "none | tcp | http | websocket",
    );
    assert_error(
        &h("path = \"health\""),
        "upstream[app].health.path",
        "start with",
    );
    assert_error(
        &h("interval = \"0s\""),
        "upstream[app].health.interval",
        "greater than 0",
    );
    assert_error(
        &h("timeout = \"2\""),
        "upstream[app].health.timeout",
        "no unit",
    );
    assert_error(&h("rise = 0"), "upstream[app].health.rise", "out of range");
    assert_error(
        &h("fall = 1000"),
        "upstream[app].health.fall",
        "out of range",
    );
    assert_error(
        &h("start = \"maybe\""),
        "upstream[app].health.start",
        "up | down",
    );
}

#[test]
fn cookie() {
    let c = |extra: &str| {
        with_upstream(&format!(
            "balance = \"cookie\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n[upstream.cookie]\nsecret = \"s\"\n{extra}"
        ))
    };
    Config::from_toml(&c("")).unwrap();
    assert_error(
        &c("name = \"a;b\""),
        "upstream[app].cookie.name",
        "cookie token",
    );
    assert_error(
        &c("fallback = \"cookie\""),
        "upstream[app].cookie.fallback",
        "itself",
    );
    assert_error(
        &c("fallback = \"nope\""),
        "upstream[app].cookie.fallback",
        "",
    );
    assert_error(
        &c("path = \"x\""),
        "upstream[app].cookie.path",
        "start with",
    );
    assert_error(
        &c("same_site = \"Sometimes\""),
        "upstream[app].cookie.same_site",
        "Strict | Lax | None",
    );
    assert_error(
        &c("secure = \"yes\""),
        "upstream[app].cookie.secure",
        "auto | always | never",
    );
    assert_error(
        &c("max_age = \"1d\""),
        "upstream[app].cookie.max_age",
        "unknown unit",
    );
    assert_error(
        &with_upstream("balance = \"cookie\"\nbackends = [{ address = \"127.0.0.1:1\" }]"),
        "upstream[app].cookie.secret",
        "set a secret",
    );
    assert_error(
        &with_upstream(
            "backends = [{ address = \"127.0.0.1:1\" }]\n[upstream.cookie]\nsecret = \"s\"",
        ),
        "upstream[app].cookie",
        "only used with",
    );
}

/// The policy is parsed once, at validation, into the type the balancer uses: load factor
/// applied, the cookie policy carrying its name, secret and (typed) fallback.
#[test]
fn policy_is_typed_at_validation() {
    use crate::balance::HashKey;
    let policy = |extra: &str| {
        let c = Config::from_toml(&with_upstream(&format!(
            "{extra}\nbackends = [{{ address = \"127.0.0.1:1\" }}]"
        )))
        .unwrap();
        c.upstreams[0].policy.clone()
    };
    assert_eq!(policy(""), Policy::RoundRobin);
    assert_eq!(policy("balance = \"least-conn\""), Policy::LeastConn);
    assert_eq!(
        policy("balance = \"hash:header:X-Device\"\nload_factor = 2.0"),
        Policy::Hash {
            key: HashKey::Header("X-Device".into()),
            load_factor: Some(2.0)
        }
    );
    let c = Config::from_toml(&with_upstream(
        "balance = \"cookie\"\nload_factor = 1.5\nbackends = [{ address = \"127.0.0.1:1\" }]\n\
         [upstream.cookie]\nsecret = \"s3\"\nname = \"sid\"\nfallback = \"hash:ip\"",
    ))
    .unwrap();
    assert_eq!(
        c.upstreams[0].policy,
        Policy::Cookie {
            fallback: Box::new(Policy::Hash {
                key: HashKey::Ip,
                load_factor: Some(1.5)
            }),
            secret: b"s3".to_vec(),
            verify: Vec::new(),
            name: "sid".into(),
        }
    );
    assert!(describe(&c).contains("cookie: name=sid fallback=hash:ip"));
}

/// A tcp listener has no request to hash a header, cookie or query of, and no response to
/// set a cookie on: an upstream it uses with such a policy is an error naming the field.
#[test]
fn tcp_listeners_refuse_policies_that_need_a_request() {
    let tcp = |balance: &str, cookie: &str| {
        format!(
            "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:7000\"\nmode = \"tcp\"\n\
             upstream = \"dev\"\n[[upstream]]\nname = \"dev\"\nbalance = \"{balance}\"\n\
             backends = [{{ address = \"127.0.0.1:1\" }}]\n{cookie}"
        )
    };
    for balance in ["hash:header:X-Device", "hash:cookie:sid", "hash:query:id"] {
        assert_error(
            &tcp(balance, ""),
            "upstream[dev].balance",
            &format!("balance {balance} needs an HTTP request"),
        );
        assert_error(
            &tcp(balance, ""),
            "upstream[dev].balance",
            "tcp listener `devices` uses this upstream",
        );
    }
    let cookie = tcp("cookie", "[upstream.cookie]\nsecret = \"s\"");
    assert_error(&cookie, "upstream[dev].balance", "balance cookie needs");
    assert_error(
        &cookie,
        "upstream[dev].balance",
        "tcp listeners accept round-robin | least-conn | hash:ip",
    );
    for balance in ["round-robin", "least-conn", "hash:ip"] {
        Config::from_toml(&tcp(balance, "")).unwrap();
    }
    // The same upstream behind an http listener is fine.
    let http = tcp("hash:header:X-Device", "").replace("mode = \"tcp\"", "mode = \"http\"");
    Config::from_toml(&http).unwrap();
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = r#"
workers = -3
io = "kqueue"
[timeouts]
head = "soon"
[[listener]]
bind = "nowhere"
mode = "udp"
[[upstream]]
name = "app"
balance = "random"
backends = []
"#;
    let errs = errors(text);
    assert!(errs.len() >= 5, "{errs:#?}");
    let shown = ConfigErrors(errs).to_string();
    assert!(
        shown.contains("workers")
            && shown.contains("timeouts.head")
            && shown.contains("listener[0].bind")
    );
}

#[test]
fn log_level_is_a_level_or_a_filter() {
    for ok in [
        "info",
        "DEBUG",
        "warn,ringway::access=info",
        "ringway=trace",
        "off",
    ] {
        let c = Config::from_toml(&format!("{BASE}\n[log]\nlevel = \"{ok}\"\n"))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(c.log.level, ok);
    }
    for bad in ["inof", "loud", "info,verbose", "ringway=[", "ringway=loud"] {
        assert_error(
            &format!("{BASE}\n[log]\nlevel = \"{bad}\"\n"),
            "log.level",
            "not a log level",
        );
    }
    assert!(check_log_level("info,ringway::proxy=debug").is_ok());
}

#[test]
fn required_for_ready_defaults_off() {
    let c = Config::from_toml(BASE).unwrap();
    assert!(!c.upstreams[0].required_for_ready);
    let c = Config::from_toml(&with_upstream(
        "required_for_ready = true\nbackends = [{ address = \"127.0.0.1:1\" }]",
    ))
    .unwrap();
    assert!(c.upstreams[0].required_for_ready);
    let errs = errors(&with_upstream(
        "required_for_ready = \"yes\"\nbackends = [{ address = \"127.0.0.1:1\" }]",
    ));
    // A type error is serde's: it names the line (the line of `required_for_ready`).
    assert!(
        errs.iter()
            .any(|e| e.line == Some(9) && e.message.contains("expected a boolean")),
        "{errs:#?}"
    );
}

#[test]
fn proxy_protocol_from() {
    let l = |extra: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:1\"\nupstream = \"app\"\n{extra}\n\
             [[upstream]]\nname = \"app\"\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n"
        )
    };
    let c = Config::from_toml(&l(
        "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
    ))
    .unwrap();
    let from = c.listeners[0].proxy_protocol_from.as_ref().unwrap();
    assert_eq!(from.len(), 3);
    assert!(from[0].contains("10.2.3.4".parse().unwrap()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_error(
        &l("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"10.0.0.0/33\"]"),
        "listener[0].proxy_protocol_from[1]",
        "0..=32",
    );
    assert_error(
        &l("proxy_protocol = true\nproxy_protocol_from = [\"lb.internal\"]"),
        "listener[0].proxy_protocol_from[0]",
        "not an address range",
    );
    assert_error(
        &l("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.1/8\"]"),
        "listener[0].proxy_protocol_from[0]",
        "10.0.0.0/8",
    );
    assert_error(
        &l("proxy_protocol = true\nproxy_protocol_from = []"),
        "listener[0].proxy_protocol_from",
        "empty",
    );
    assert_error(
        &l("proxy_protocol_from = [\"10.0.0.0/8\"]"),
        "listener[0].proxy_protocol_from",
        "only used with proxy_protocol = true",
    );
    assert_error(
        &l("proxy_protocol = true\nproxy_protocol_from = \"10.0.0.0/8\""),
        "<file>",
        "",
    );
    // Trusting every peer is allowed (today's behaviour), with a warning naming the listener.
    let c = Config::from_toml(&l("name = \"edge\"\nproxy_protocol = true")).unwrap();
    assert_eq!(c.listeners[0].proxy_protocol_from, None);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("`edge`") && c.warnings[0].contains("proxy_protocol_from"));
    assert!(Config::from_toml(BASE).unwrap().warnings.is_empty());
}

#[test]
fn proxy_pending_per_peer() {
    assert_eq!(
        Config::from_toml(BASE)
            .unwrap()
            .limits
            .proxy_pending_per_peer,
        256
    );
    assert_eq!(
        Config::from_toml(&format!("[limits]\nproxy_pending_per_peer = 0\n{BASE}"))
            .unwrap()
            .limits
            .proxy_pending_per_peer,
        0
    );
    assert_error(
        &format!("[limits]\nproxy_pending_per_peer = -1\n{BASE}"),
        "limits.proxy_pending_per_peer",
        "out of range",
    );
}

#[test]
fn tls_passthrough_routes_by_server_name() {
    let ok = r#"
[[listener]]
name = "devices"
bind = "127.0.0.1:7443"
mode = "tcp"
tls_passthrough = true
upstream = "other"
[[route]]
listener = "devices"
host = "*.fleet.example"
upstream = "fleet"
[[upstream]]
name = "fleet"
balance = "hash:sni"
backends = [{ address = "127.0.0.1:1" }]
[[upstream]]
name = "other"
backends = [{ address = "127.0.0.1:2" }]
"#;
    let c = Config::from_toml(ok).unwrap();
    assert!(c.listeners[0].tls_passthrough);
    assert_eq!(c.routes[0].listener.as_deref(), Some("devices"));
    // routes alone are enough: names no route matches are closed
    Config::from_toml(&ok.replace("upstream = \"other\"\n[[route]]", "[[route]]")).unwrap();

    // an http listener has no ClientHello
    let http = ok
        .replace("mode = \"tcp\"\ntls_passthrough = true", "mode = \"http\"")
        .replace("listener = \"devices\"\nhost", "host");
    assert_error(&http, "upstream[fleet].balance", "needs a TLS ClientHello");
    // neither has a tcp listener that does not pass TLS through
    let plain = ok.replace("tls_passthrough = true\n", "");
    assert_error(&plain, "route[0].listener", "tls_passthrough = true");
    let plain_default = r#"
[[listener]]
bind = "127.0.0.1:7443"
mode = "tcp"
upstream = "fleet"
[[upstream]]
name = "fleet"
balance = "hash:sni"
backends = [{ address = "127.0.0.1:1" }]
"#;
    assert_error(
        plain_default,
        "upstream[fleet].balance",
        "only a listener with",
    );
    // passthrough is for tcp listeners, and routes by name only
    let on_http = ok.replace("mode = \"tcp\"", "mode = \"http\"");
    assert_error(
        &on_http,
        "listener[0].tls_passthrough",
        "only tcp listeners",
    );
    let with_path = ok.replace(
        "host = \"*.fleet.example\"",
        "host = \"*.fleet.example\"\npath_prefix = \"/x\"",
    );
    assert_error(
        &with_path,
        "route[0].path_prefix",
        "routes by server name only",
    );
    assert_error(
        &ok.replace("tls_passthrough = true", "tls_passthrough = \"yes\""),
        "<file>",
        "expected a boolean",
    );
}

#[test]
fn cookie_secrets_rotation_file_and_warnings() {
    let c = |cookie: &str| {
        with_upstream(&format!(
            "balance = \"cookie\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n[upstream.cookie]\n{cookie}"
        ))
    };
    let long = "0123456789abcdef0123";
    // secrets = [new, old]: the first signs, the rest verify.
    let cfg =
        Config::from_toml(&c(&format!("secrets = [\"{long}-new\", \"{long}-old\"]"))).unwrap();
    let k = &cfg.upstreams[0].cookie;
    assert_eq!(k.secret, format!("{long}-new"));
    assert_eq!(k.verify_secrets, vec![format!("{long}-old")]);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    // secret_file: one per line, blank lines and comments skipped.
    let dir = std::env::temp_dir().join(format!("ringway-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cookie-secret");
    std::fs::write(
        &file,
        format!("# rotated 2026-11\n{long}-new\n\n  {long}-old  \n"),
    )
    .unwrap();
    let cfg = Config::from_toml(&c(&format!("secret_file = \"{}\"", file.display()))).unwrap();
    let k = &cfg.upstreams[0].cookie;
    assert_eq!(k.secret, format!("{long}-new"));
    assert_eq!(k.verify_secrets, vec![format!("{long}-old")]);
    assert_eq!(k.secret_file.as_deref(), Some(file.as_path()));
    // Errors name the field.
    assert_error(
        &c(&format!(
            "secret_file = \"{}\"",
            dir.join("missing").display()
        )),
        "upstream[app].cookie.secret_file",
        "cannot read",
    );
    std::fs::write(dir.join("empty"), "# nothing\n\n").unwrap();
    assert_error(
        &c(&format!(
            "secret_file = \"{}\"",
            dir.join("empty").display()
        )),
        "upstream[app].cookie.secret_file",
        "empty",
    );
    assert_error(&c("secrets = []"), "upstream[app].cookie.secrets", "empty");
    assert_error(
        &c("secrets = [\"a\", \"\"]"),
        "upstream[app].cookie.secrets",
        "empty",
    );
    assert_error(
        &c("secret = \"x\"\nsecrets = [\"y\"]"),
        "upstream[app].cookie",
        "one of secret, secrets, secret_file",
    );
    assert_error(
        &with_upstream(
            "balance = \"cookie\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n[upstream.cookie]\nname = \"c\"",
        ),
        "upstream[app].cookie.secret",
        "secret_file",
    );
    // The example's placeholder and short secrets are valid, with a warning.
    let cfg = Config::from_toml(&c("secret = \"change-me-to-a-long-random-string\"")).unwrap();
    assert_eq!(cfg.warnings.len(), 1);
    assert!(
        cfg.warnings[0].contains("upstream[app].cookie.secret")
            && cfg.warnings[0].contains("placeholder")
    );
    let cfg = Config::from_toml(&c("secret = \"short\"")).unwrap();
    assert!(
        cfg.warnings[0].contains("shorter than 16"),
        "{:?}",
        cfg.warnings
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_token_file() {
    let dir = std::env::temp_dir().join(format!("ringway-admin-token-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    std::fs::write(&good, "\n  0123456789abcdef0123  \n").unwrap();
    let c = Config::from_toml(&with_top(&format!(
        "admin_token_file = \"{}\"",
        good.display()
    )))
    .unwrap();
    let token = c.admin_token.expect("a token");
    assert!(token.accepts(Some("Bearer 0123456789abcdef0123")));
    assert!(!token.accepts(Some("Bearer 0123456789abcdef012")));
    assert!(!format!("{token:?}").contains("0123456789"));
    assert_eq!(Config::from_toml(BASE).unwrap().admin_token, None);
    for (name, content, says) in [
        ("empty", "\n\n", "empty"),
        ("short", "abc\n", "at least 16"),
        ("spaces", "0123456789 abcdef0123\n", "at least 16 visible"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        assert_error(
            &with_top(&format!("admin_token_file = \"{}\"", p.display())),
            "admin_token_file",
            says,
        );
    }
    assert_error(
        &with_top(&format!(
            "admin_token_file = \"{}\"",
            dir.join("missing").display()
        )),
        "admin_token_file",
        "cannot read",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn websocket_frames_and_close_timeout() {
    let c = Config::from_toml(BASE).unwrap();
    assert!(
        c.upstreams[0].websocket_frames,
        "frame tracking is on by default"
    );
    assert_eq!(
        c.upstreams[0].close_timeout,
        std::time::Duration::from_secs(5)
    );
    let c = Config::from_toml(&with_upstream(
        "websocket_frames = false\nclose_timeout = \"750ms\"\nbackends = [{ address = \"127.0.0.1:1\" }]",
    ))
    .unwrap();
    assert!(!c.upstreams[0].websocket_frames);
    assert_eq!(
        c.upstreams[0].close_timeout,
        std::time::Duration::from_millis(750)
    );
    for (bad, what) in [
        ("close_timeout = \"0s\"", "greater than 0"),
        ("close_timeout = \"soon\"", ""),
        ("close_timeout = \"-1s\"", ""),
    ] {
        let errs = errors(&with_upstream(&format!(
            "{bad}\nbackends = [{{ address = \"127.0.0.1:1\" }}]"
        )));
        assert!(
            errs.iter()
                .any(|e| e.field.ends_with(".close_timeout") && e.message.contains(what)),
            "{bad}: {errs:#?}"
        );
    }
    // A type error is serde's: it names the line.
    for bad in [
        "websocket_frames = \"no\"",
        "websocket_frames = 0",
        "close_timeout = 5",
    ] {
        let errs = errors(&with_upstream(&format!(
            "{bad}\nbackends = [{{ address = \"127.0.0.1:1\" }}]"
        )));
        assert!(errs.iter().any(|e| e.line.is_some()), "{bad}: {errs:#?}");
    }
}

#[test]
fn gateway_pings_are_opt_in_and_need_frames() {
    let c = Config::from_toml(BASE).unwrap();
    assert_eq!(c.upstreams[0].ws_ping_interval, None, "off by default");
    assert_eq!(
        c.upstreams[0].ws_ping_timeout,
        std::time::Duration::from_secs(10)
    );
    let b = "backends = [{ address = \"127.0.0.1:1\" }]";
    let c = Config::from_toml(&with_upstream(&format!(
        "ws_ping_interval = \"30s\"\nws_ping_timeout = \"5s\"\n{b}"
    )))
    .unwrap();
    assert_eq!(
        c.upstreams[0].ws_ping_interval,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        c.upstreams[0].ws_ping_timeout,
        std::time::Duration::from_secs(5)
    );
    let c = Config::from_toml(&with_upstream(&format!("ws_ping_interval = \"0s\"\n{b}"))).unwrap();
    assert_eq!(c.upstreams[0].ws_ping_interval, None, "0s is off");
    for (bad, field, what) in [
        ("ws_ping_interval = \"often\"", "ws_ping_interval", ""),
        (
            "ws_ping_timeout = \"0s\"",
            "ws_ping_timeout",
            "greater than 0",
        ),
        ("ws_ping_timeout = \"x\"", "ws_ping_timeout", ""),
        (
            "ws_ping_interval = \"30s\"\nwebsocket_frames = false",
            "ws_ping_interval",
            "websocket_frames",
        ),
    ] {
        let errs = errors(&with_upstream(&format!("{bad}\n{b}")));
        assert!(
            errs.iter()
                .any(|e| e.field.ends_with(field) && e.message.contains(what)),
            "{bad}: {errs:#?}"
        );
    }
}

#[test]
fn rebalance_fields() {
    let b = "backends = [{ address = \"127.0.0.1:1\" }]";
    let c = Config::from_toml(&with_upstream(b)).unwrap();
    assert_eq!(c.upstreams[0].rebalance, None, "rebalancing is opt-in");
    let c = Config::from_toml(&with_upstream(&format!(
        "balance = \"hash:ip\"\nrebalance = {{}}\n{b}"
    )))
    .unwrap();
    assert_eq!(
        c.upstreams[0].rebalance,
        Some(Rebalance {
            max_per_second: 20,
            tolerance: 0.10
        }),
        "defaults"
    );
    let c = Config::from_toml(&with_upstream(&format!(
        "rebalance = {{ max_per_second = 5, tolerance = 0.5 }}\n{b}"
    )))
    .unwrap();
    assert_eq!(
        c.upstreams[0].rebalance,
        Some(Rebalance {
            max_per_second: 5,
            tolerance: 0.5
        })
    );
    let field = "upstream[app].rebalance.max_per_second";
    for bad in ["0", "-3", "100001"] {
        assert_error(
            &with_upstream(&format!("rebalance = {{ max_per_second = {bad} }}\n{b}")),
            field,
            "out of range",
        );
    }
    let field = "upstream[app].rebalance.tolerance";
    for bad in ["-0.1", "10.5", "nan", "inf"] {
        assert_error(
            &with_upstream(&format!("rebalance = {{ tolerance = {bad} }}\n{b}")),
            field,
            "out of range",
        );
    }
    assert_error(
        &with_upstream(&format!(
            "balance = \"hash:ip\"\nload_factor = 1.25\nrebalance = {{}}\n{b}"
        )),
        "upstream[app].rebalance",
        "load_factor",
    );
    for (bad, needle) in [
        ("rebalance = { max_per_second = \"fast\" }", "invalid type"),
        ("rebalance = { tolerance = \"10%\" }", "invalid type"),
        ("rebalance = { max_per_sec = 5 }", "max_per_sec"),
        ("rebalance = 20", "invalid type"),
    ] {
        let errs = errors(&with_upstream(&format!("{bad}\n{b}")));
        assert!(
            errs[0].message.contains(needle),
            "{bad}: no `{needle}` in {errs:?}"
        );
    }
}
