//! JSON views of the balancing state: `GET /backends` and `GET /lookup`.
//!
//! `/lookup` answers from the same immutable table and the same functions the workers pick
//! with (`Table::lookup_key`, `Table::lookup_cookie`), keyed on backend names with a fixed
//! hash. With bounded load off (the default) the answer depends only on the table, so any
//! replica that sees the same backend set gives the same answer for the fleet; with it on the
//! answer is this replica's (loads and the key's live connections count) and says so. It also
//! says where the key's live connections sit when that differs (after a failover), and for a
//! route cookie whether it is valid, stale or invalid, and where it would be re-placed.

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
    } else if b.stats().admin_drain().is_some() {
        "drained-admin"
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
        "admin_drain_rate": b.stats().admin_drain(),
        "shedding": b.stats().shedding(),
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

fn state_str(b: &Backend) -> &'static str {
    match b.state() {
        BackendState::Active => "active",
        BackendState::Draining => "draining",
    }
}

/// The common fields of an answer: the upstream and the backend a new connection goes to.
fn answer(u: &UpstreamRt, table: &Table, index: Option<usize>, extra: Value) -> Response {
    let now = now_ms();
    let mut v = json!({
        "upstream": &*u.cfg.name,
        "policy": table.policy().to_string(),
    });
    let obj = v.as_object_mut().expect("an object");
    match index.and_then(|i| table.backend(i)) {
        Some(b) => {
            obj.insert("backend".into(), b.name().into());
            obj.insert("address".into(), b.addr().to_string().into());
            obj.insert("state".into(), state_str(b).into());
            obj.insert("reason".into(), reason(b, now).into());
            obj.insert("live_connections".into(), b.live().into());
        }
        None => {
            obj.insert("backend".into(), Value::Null);
        }
    }
    if let Value::Object(extra) = extra {
        obj.extend(extra);
    }
    Response::json(200, &v)
}

fn by_key(u: &UpstreamRt, key: &[u8]) -> Response {
    let table = u.lb.load_full();
    let hash_key = match table.policy().effective() {
        Policy::Hash { key, .. } => key.clone(),
        p => {
            let hint = if table.cookie_name().is_some() {
                "; ask with `cookie=VALUE` for the backend a route cookie names"
            } else {
                ""
            };
            return Response::error(
                400,
                format!(
                    "upstream `{}` balances with {p}, which does not place keys{hint}",
                    u.cfg.name
                ),
            );
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
    let Some(index) = table.lookup_key(bytes) else {
        return Response::error(503, format!("upstream `{}` has no backend up", u.cfg.name));
    };
    let bound = table.bounded_load();
    let placement = table.placement(bytes);
    let holder = table.key_holder(bytes);
    let name = |i: Option<usize>| i.and_then(|i| table.name(i)).map(str::to_owned);
    let mut extra = json!({
        "key": String::from_utf8_lossy(key),
        "bounded_load": bound,
        // Where the table alone puts the key: the same on every replica that sees the same
        // backends (with bounded load off, this is also `backend`).
        "placement": name(placement),
        "same_on_every_replica": bound.is_none(),
        "key_live_on": name(holder),
    });
    let obj = extra.as_object_mut().expect("an object");
    if let Some(h) = holder.filter(|&h| h != index) {
        obj.insert(
            "note".into(),
            format!(
                "this key's live connections are on {} (placed there before a failover or \
                 under load); a new connection goes to {}",
                table.name(h).unwrap_or("?"),
                table.name(index).unwrap_or("?"),
            )
            .into(),
        );
    } else if bound.is_some() && placement != Some(index) {
        obj.insert(
            "note".into(),
            "bounded load: the key's backend is over its cap (or holds the key's live \
             connections elsewhere), so the answer depends on this replica's loads"
                .into(),
        );
    }
    answer(u, &table, Some(index), extra)
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
    let fallback = table.policy().effective();
    // Where a request whose cookie cannot be honoured goes (it then gets a new cookie).
    let replaced = || -> Value {
        match fallback {
            Policy::LeastConn => table
                .least_loaded()
                .and_then(|i| table.name(i))
                .map_or(Value::Null, Into::into),
            _ => Value::Null,
        }
    };
    let value = String::from_utf8_lossy(cookie);
    match table.lookup_cookie(cookie) {
        Some(i) if table.can_take(i) && !table.backends()[i].stats().shedding() => answer(
            u,
            &table,
            Some(i),
            json!({ "cookie": value, "cookie_state": "valid" }),
        ),
        Some(i) => {
            let b = &table.backends()[i];
            answer(
                u,
                &table,
                None,
                json!({
                    "cookie": value,
                    "cookie_state": "stale",
                    "names_backend": b.name(),
                    "names_backend_reason": reason(b, now_ms()),
                    "re_placed_by": fallback.to_string(),
                    "re_placed_now_on": replaced(),
                    "note": "the backend this cookie names takes no new connections: a request \
                             carrying it is balanced by the fallback policy and gets a new cookie",
                }),
            )
        }
        None => answer(
            u,
            &table,
            None,
            json!({
                "cookie": value,
                "cookie_state": "invalid",
                "re_placed_by": fallback.to_string(),
                "re_placed_now_on": replaced(),
                "note": "no backend of this upstream has that cookie (forged, signed with a \
                         retired secret, or its backend left the table): a request carrying it \
                         is balanced by the fallback policy and gets a new cookie",
            }),
        ),
    }
}
