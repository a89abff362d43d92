//! Picks the upstream for a request: routes in file order, first match wins, then the
//! listener's default upstream. Hosts were lower-cased at load time; the request's Host is
//! compared case-insensitively with its port stripped, without allocating.
//!
//! Path prefixes match the *normalised* path ([`proto::normalize_path`]: dot segments removed,
//! escaped unreserved characters decoded, query dropped), so `/c/../x` and `/c/%2e%2e/x` are
//! routed as `/x`, where the backend will serve them, and not by the `/c/` route they start
//! with. The target is still forwarded as received. Normalising allocates only for a path with
//! a `%` or a dot segment.

use crate::config::{Config, HostMatch, ListenerConfig};
use crate::proto;

/// The upstream index for (`listener`, `host`, `path`), if any route matches. `path` is the
/// request's path as received (query included); it is normalised here. A path with a malformed
/// escape matches nothing (`proto::parse_request` refuses those with 400 before routing).
pub fn route(
    config: &Config,
    listener: &ListenerConfig,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    let path = proto::normalize_path(path).ok()?;
    let host = host.map(strip_port);
    for r in &config.routes {
        if let Some(l) = &r.listener {
            if **l != *listener.name {
                continue;
            }
        }
        if let Some(m) = &r.host {
            let Some(h) = host else { continue };
            if !host_matches(m, h) {
                continue;
            }
        }
        if path.starts_with(r.path_prefix.as_str()) {
            return Some(r.upstream);
        }
    }
    listener.upstream
}

/// The upstream for a connection on a `tls_passthrough` tcp listener: the routes naming this
/// listener, in file order, matched on the ClientHello's server name (a route without `host`
/// matches any connection, with or without a name); then the listener's default upstream.
pub fn route_sni(config: &Config, listener: &ListenerConfig, sni: Option<&str>) -> Option<usize> {
    let mine = config
        .routes
        .iter()
        .filter(|r| r.listener.as_deref() == Some(&*listener.name));
    for r in mine {
        match (&r.host, sni) {
            (None, _) => return Some(r.upstream),
            (Some(m), Some(name)) if host_matches(m, name) => return Some(r.upstream),
            _ => {}
        }
    }
    listener.upstream
}

fn strip_port(host: &str) -> &str {
    let h = host.trim_end_matches('.');
    if h.starts_with('[') {
        // [v6]:port
        return h.split_once(']').map_or(h, |(a, _)| &a[1..]);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    }
}

fn host_matches(m: &HostMatch, host: &str) -> bool {
    match m {
        HostMatch::Exact(want) => host.eq_ignore_ascii_case(want),
        HostMatch::Suffix(suffix) => {
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [[listener]]
            name = "web"
            bind = "127.0.0.1:1"
            upstream = "default"
            [[listener]]
            name = "other"
            bind = "127.0.0.1:2"
            upstream = "default"
            [[route]]
            listener = "web"
            host = "chat.example.com"
            path_prefix = "/socket.io/"
            upstream = "chat"
            [[route]]
            host = "*.api.example.com"
            upstream = "api"
            [[route]]
            path_prefix = "/ws"
            upstream = "ws"
            [[upstream]]
            name = "default"
            backends = [{ address = "127.0.0.1:9" }]
            [[upstream]]
            name = "chat"
            backends = [{ address = "127.0.0.1:9" }]
            [[upstream]]
            name = "api"
            backends = [{ address = "127.0.0.1:9" }]
            [[upstream]]
            name = "ws"
            backends = [{ address = "127.0.0.1:9" }]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let c = config();
        let web = &c.listeners[0];
        let other = &c.listeners[1];
        let idx = |n: &str| c.upstream_index(n).unwrap();
        assert_eq!(
            route(&c, web, Some("chat.example.com"), "/socket.io/?x"),
            Some(idx("chat"))
        );
        assert_eq!(
            route(&c, web, Some("CHAT.Example.com:8080"), "/socket.io/"),
            Some(idx("chat"))
        );
        // listener-scoped route does not apply to `other`
        assert_eq!(
            route(&c, other, Some("chat.example.com"), "/socket.io/"),
            Some(idx("default"))
        );
        assert_eq!(
            route(&c, web, Some("v1.api.example.com"), "/"),
            Some(idx("api"))
        );
        // the bare suffix is not a subdomain
        assert_eq!(
            route(&c, web, Some("api.example.com"), "/"),
            Some(idx("default"))
        );
        assert_eq!(route(&c, web, None, "/ws/1"), Some(idx("ws")));
        assert_eq!(route(&c, web, Some("x"), "/other"), Some(idx("default")));
    }

    /// Prefixes match the normalised path: a target that walks out of `/ws` with `..` (plain or
    /// escaped) is routed where it lands, an escaped unreserved character matches its plain
    /// form, and an escaped `/` is not a separator.
    #[test]
    fn prefixes_match_the_normalised_path() {
        let c = config();
        let web = &c.listeners[0];
        let idx = |n: &str| c.upstream_index(n).unwrap();
        let ws = Some(idx("ws"));
        let default = Some(idx("default"));
        for (path, want) in [
            ("/ws/1", ws),
            ("/ws/../x", default),
            ("/ws/%2e%2e/x", default),
            ("/ws/%2E%2E/x", default),
            ("/ws/./../x", default),
            ("/ws/.%2e", default),
            ("/x/../ws/1", ws),
            ("/x/%2e%2e/ws", ws),
            ("/%77s/1", ws),
            ("/%77%73", ws),
            ("/./ws?x=/..", ws),
            ("/w%2Fs", default),
            ("/x?/ws", default),
            // malformed escapes never match (parse_request answers 400 before this)
            ("/ws/%zz", None),
            ("/ws/%4", None),
        ] {
            assert_eq!(route(&c, web, Some("x"), path), want, "{path:?}");
        }
        // A host-scoped route sees the normalised path too.
        assert_eq!(
            route(&c, web, Some("chat.example.com"), "/socket.io/../ws"),
            ws
        );
        assert_eq!(
            route(&c, web, Some("chat.example.com"), "/a/../socket.io/"),
            Some(idx("chat"))
        );
    }

    #[test]
    fn ports_and_brackets_are_stripped() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.b."), "a.b");
    }
}
