//! JSON views of the balancing state: `GET /backends` and `GET /lookup`.
//!
//! `/lookup` answers from the same immutable table and the same functions the workers pick
//! with (`Table::lookup_key`, `Table::lookup_cookie`), keyed on backend names with a fixed
//! hash, so any replica that sees the same backend set gives the same answer for the fleet.
//! Bounded load is included: the answer is where a *new* connection with that key goes now.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::http::{query_param, Response};
use super::metrics::backend_up;
use crate::balance::{ip_bytes, now_ms, Backend, BackendState, HashKey, Policy, Table};
use crate::state::{Shared, UpstreamRt};

/// Why a backend does or doesn't take new connections, for operators.
pub fn reason(b: &Backend, now: u64) -> &'static str {
    if b.state() == BackendState::Draining {
        "draining"
    } else if !b.stats().health_up() {
        "down-health"
    } else if b.stats().is_down(now) {
        "down-passive"
    } else {
        "active"
    }
}

fn backend_json(b: &Backend, now: u64) -> Value {
    let [r1, r2, r3, r4, r5] = b.stats().responses();
    let (to_backend, to_client) = b.stats().bytes();
    json!({
        "name": b.name(),
        "address": b.addr().to_string(),
        "weight": b.weight(),
        "state": match b.state() {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
        },
        "up": backend_up(b, now),
        "reason": reason(b, now),
        "live_connections": b.live(),
        "failures": b.stats().failures_total(),
        "responses": { "1xx": r1, "2xx": r2, "3xx": r3, "4xx": r4, "5xx": r5 },
        "bytes": { "to_backend": to_backend, "to_client": to_client },
    })
}

/// `GET /backends`.
pub fn backends(shared: &Shared) -> Response {
    let gen = shared.gen.load();
    let now = now_ms();
    let upstreams: Vec<Value> = gen
        .upstreams
        .iter()
        .map(|u| {
            let table = u.lb.load();
            json!({
                "name": &*u.cfg.name,
                "policy": table.policy().to_string(),
                "live_connections": table.pool_live(),
                "up": u.has_backend_up(),
                "required_for_ready": u.cfg.required_for_ready,
                "backends": table.backends().iter().map(|b| backend_json(b, now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    Response::json(200, &json!({ "upstreams": upstreams }))
}

/// `GET /lookup?upstream=U&key=K` or `...&cookie=V`.
pub fn lookup(shared: &Shared, query: &str) -> Response {
    let param = |name| match query_param(query, name) {
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(e)) => Err(Response::error(400, e)),
        None => Ok(None),
    };
    let (upstream, key, cookie) = match (param("upstream"), param("key"), param("cookie")) {
        (Ok(u), Ok(k), Ok(c)) => (u, k, c),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let Some(upstream) = upstream else {
        return Response::error(400, "missing `upstream` parameter");
    };
    let upstream = String::from_utf8_lossy(&upstream).into_owned();
    let gen = shared.gen.load();
    let Some(u) = gen.upstreams.iter().find(|u| *u.cfg.name == upstream) else {
        return Response::error(404, format!("unknown upstream `{upstream}`"));
    };
    match (key, cookie) {
        (Some(key), None) => by_key(u, &key),
        (None, Some(cookie)) => by_cookie(u, &cookie),
        (Some(_), Some(_)) => Response::error(400, "give either `key` or `cookie`, not both"),
        (None, None) => Response::error(400, "missing `key` or `cookie` parameter"),
    }
}

fn answer(u: &UpstreamRt, table: &Table, index: usize, extra: Value) -> Response {
    let Some(b) = table.backend(index) else {
        return Response::error(500, "table changed during lookup");
    };
    let now = now_ms();
    let mut v = json!({
        "upstream": &*u.cfg.name,
        "policy": table.policy().to_string(),
        "backend": b.name(),
        "address": b.addr().to_string(),
        "state": match b.state() {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
        },
        "reason": reason(b, now),
        "live_connections": b.live(),
    });
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), extra) {
        obj.extend(extra);
    }
    Response::json(200, &v)
}

fn by_key(u: &UpstreamRt, key: &[u8]) -> Response {
    let table = u.lb.load_full();
    let hash_key = match table.policy().effective() {
        Policy::Hash { key, .. } => key.clone(),
        p => {
            return Response::error(
                400,
                format!(
                    "upstream `{}` balances with {p}, which does not place keys",
                    u.cfg.name
                ),
            )
        }
    };
    // hash:ip hashes the address bytes, so the key must be an address.
    let mut buf = [0u8; 16];
    let bytes: &[u8] = if hash_key == HashKey::Ip {
        let Some(ip) = std::str::from_utf8(key)
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            return Response::error(
                400,
                "upstream hashes on the client IP: `key` must be an IP address",
            );
        };
        ip_bytes(ip, &mut buf)
    } else {
        key
    };
    match table.lookup_key(bytes) {
        Some(i) => answer(u, &table, i, json!({ "key": String::from_utf8_lossy(key) })),
        None => Response::error(503, format!("upstream `{}` has no backend up", u.cfg.name)),
    }
}

fn by_cookie(u: &UpstreamRt, cookie: &[u8]) -> Response {
    let table = u.lb.load_full();
    if table.cookie_name().is_none() {
        return Response::error(
            400,
            format!(
                "upstream `{}` balances with {}, not cookie",
                u.cfg.name,
                table.policy()
            ),
        );
    }
    match table.lookup_cookie(cookie) {
        Some(i) => answer(
            u,
            &table,
            i,
            json!({ "cookie": String::from_utf8_lossy(cookie) }),
        ),
        None => Response::error(
            404,
            "no backend of this upstream has that cookie (forged, or its backend is gone): \
             a request carrying it is balanced anew",
        ),
    }
}
