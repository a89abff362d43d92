//! `POST /backends/{upstream}/{backend}/drain[?rate=N]` and `.../undrain`: an operator's
//! tool before deleting a pod. A drained backend takes no new connection (whatever the policy;
//! a route cookie naming it is re-placed and re-set), and the workers close its tunnels at
//! `rate` per second for this gateway (Close 1012 for WebSockets: "reconnect"), default the
//! upstream's `rebalance.max_per_second`, else 20. `undrain` lets it take connections again
//! (tunnels already asked to end still end). The state lives in the backend's shared stats
//! (the balance layer); the data plane only reads it.

use serde_json::json;

use super::http::{percent_decode, query_param, Response};
use crate::config::Rebalance;
use crate::state::Shared;

/// Largest `rate` accepted (closes per second).
pub const MAX_RATE: u32 = 100_000;

/// `Some(action)` for a path of the drain endpoints: `(upstream, backend, drain?)`, still
/// percent-encoded.
pub fn parse_path(path: &str) -> Option<(&str, &str, bool)> {
    let rest = path.strip_prefix("/backends/")?;
    let mut parts = rest.split('/');
    let (upstream, backend, action) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || upstream.is_empty() || backend.is_empty() {
        return None;
    }
    match action {
        "drain" => Some((upstream, backend, true)),
        "undrain" => Some((upstream, backend, false)),
        _ => None,
    }
}

/// Answers a drain or undrain (the method and token were checked by the router).
pub fn handle(
    shared: &Shared,
    upstream: &str,
    backend: &str,
    drain: bool,
    query: &str,
) -> Response {
    let decode = |s: &str, what: &str| {
        percent_decode(s)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Response::error(400, format!("{what}: bad percent-encoding")))
    };
    let (upstream, backend) = match (decode(upstream, "upstream"), decode(backend, "backend")) {
        (Ok(u), Ok(b)) => (u, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let gen = shared.gen.load();
    let Some(u) = gen.upstreams.iter().find(|u| *u.cfg.name == upstream) else {
        return Response::error(404, format!("unknown upstream `{upstream}`"));
    };
    let default_rate = u
        .cfg
        .rebalance
        .map_or(Rebalance::DEFAULT_MAX_PER_SECOND, |r| r.max_per_second);
    let rate = match query_param(query, "rate") {
        None => default_rate,
        Some(Ok(v)) => match std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        {
            Some(r) if (1..=MAX_RATE).contains(&r) => r,
            _ => {
                return Response::error(
                    400,
                    format!("`rate`: closes per second, an integer in 1..={MAX_RATE}"),
                )
            }
        },
        Some(Err(e)) => return Response::error(400, e),
    };
    if !u.lb.set_admin_drain(&backend, drain.then_some(rate)) {
        return Response::error(
            404,
            format!("upstream `{upstream}` has no backend `{backend}`"),
        );
    }
    let table = u.lb.load();
    let live = table.index_of(&backend).and_then(|i| table.live(i));
    tracing::info!(
        upstream = %upstream,
        backend = %backend,
        rate = drain.then_some(rate),
        "{}",
        if drain { "admin drain started" } else { "admin drain ended" }
    );
    Response::json(
        200,
        &json!({
            "upstream": upstream,
            "backend": backend,
            "drained": drain,
            "rate": drain.then_some(rate),
            "live_connections": live,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_path;

    #[test]
    fn drain_paths() {
        assert_eq!(
            parse_path("/backends/chat/pod-a/drain"),
            Some(("chat", "pod-a", true))
        );
        assert_eq!(
            parse_path("/backends/chat/127.0.0.1:80/undrain"),
            Some(("chat", "127.0.0.1:80", false))
        );
        for bad in [
            "/backends",
            "/backends/",
            "/backends/chat",
            "/backends/chat/pod-a",
            "/backends/chat/pod-a/stop",
            "/backends/chat/pod-a/drain/",
            "/backends//pod-a/drain",
            "/backends/chat//drain",
            "/backends/chat/pod-a/drain/x",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }
}
