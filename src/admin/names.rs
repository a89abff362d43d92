//! Every metric ringway exports, defined once: family name, help, type and unit.
//!
//! The exposition is OpenMetrics (prometheus-client), where a counter family `x` is exposed as
//! the sample `x_total`, an info family `x` as `x_info`, and a family with a unit ends in it
//! (`..._seconds_bucket`). [`Def::sample`] gives the name an operator sees, which is what the
//! dashboards in `deploy/` and `docs/operations.md` use; a unit test checks that every
//! definition here shows up in a scrape under that name.

use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// One metric family.
pub struct Def {
    /// The OpenMetrics family name (no `_total` / `_info` suffix).
    pub family: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    /// Histograms of durations and `process_*` families have one (seconds, bytes); it is part
    /// of the exposed name (`process_cpu_seconds_total`).
    pub unit: Option<Unit>,
}

impl Def {
    /// The name of the samples as scraped (`_total` for counters, `_info` for info).
    pub fn sample(&self) -> String {
        let base = match &self.unit {
            Some(u) => format!("{}_{}", self.family, u.as_str()),
            None => self.family.to_string(),
        };
        match self.kind {
            MetricType::Counter => format!("{base}_total"),
            MetricType::Info => format!("{base}_info"),
            _ => base,
        }
    }

    pub fn unit(&self) -> Option<Unit> {
        self.unit.clone()
    }
}

const fn counter(family: &'static str, help: &'static str) -> Def {
    Def {
        family,
        help,
        kind: MetricType::Counter,
        unit: None,
    }
}

const fn gauge(family: &'static str, help: &'static str) -> Def {
    Def {
        family,
        help,
        kind: MetricType::Gauge,
        unit: None,
    }
}

const fn seconds_histogram(family: &'static str, help: &'static str) -> Def {
    Def {
        family,
        help,
        kind: MetricType::Histogram,
        unit: Some(Unit::Seconds),
    }
}

pub const CONNECTIONS_ACTIVE: Def = gauge(
    "ringway_connections_active",
    "Client connections open now, per listener.",
);
pub const CONNECTIONS: Def = counter(
    "ringway_connections",
    "Client connections accepted (and admitted by the limits), per listener.",
);
pub const CONNECTIONS_REJECTED: Def = counter(
    "ringway_connections_rejected",
    "Client connections refused by [limits] (http: 503/429 answered; tcp: closed), per listener.",
);
pub const UPSTREAM_CONNECTIONS_ACTIVE: Def = gauge(
    "ringway_upstream_connections_active",
    "Live connections to each backend (tunnels and in-flight requests): what HPA/KEDA scale on.",
);
pub const REQUESTS: Def = counter(
    "ringway_requests",
    "Responses relayed from each backend; code is the status class (1xx, 2xx, 3xx, 4xx, 5xx).",
);
pub const UPGRADES: Def = counter(
    "ringway_upgrades",
    "WebSocket upgrades per upstream; result=ok (101 relayed) or failed.",
);
pub const REBALANCE_CLOSED: Def = counter(
    "ringway_rebalance_closed",
    "Tunnels this gateway closed to move them, per upstream; reason=placement (a hash key now maps elsewhere), fair_share (its backend was over its share), admin_drain (an operator drains its backend).",
);
pub const ERRORS: Def = counter(
    "ringway_errors",
    "Errors by kind; side says whose fault: client, backend or internal.",
);
pub const BYTES: Def = counter(
    "ringway_bytes",
    "Tunnel bytes per backend, added while a tunnel lives (at least every MiB) and when it ends; direction=to_backend or to_client.",
);
pub const HEAD_PARSE: Def = seconds_histogram(
    "ringway_head_parse",
    "Time to parse a complete request head.",
);
pub const BACKEND_CONNECT: Def =
    seconds_histogram("ringway_backend_connect", "Time to connect to a backend.");
pub const TUNNEL_DURATION: Def = seconds_histogram(
    "ringway_tunnel_duration",
    "Lifetime of finished tunnels (WebSocket after 101, tcp mode).",
);
pub const UPSTREAM_UP: Def = gauge(
    "ringway_upstream_up",
    "1 when some backend of the upstream can take a new connection, else 0 (/readyz ignores it unless required_for_ready).",
);
pub const BACKEND_UP: Def = gauge(
    "ringway_backend_up",
    "1 when a backend may take new connections by health (active probe up, not passively down), else 0.",
);
pub const DNS_UPDATES: Def = counter(
    "ringway_dns_updates",
    "DNS lookups per upstream; result=changed, unchanged, negative (NXDOMAIN / no records) or error (last good answer kept).",
);
pub const CONFIG_RELOADS: Def = counter(
    "ringway_config_reloads",
    "Configuration reloads (SIGHUP, POST /reload); result=ok or failed (the old config kept running).",
);
pub const IO_BACKEND: Def = gauge(
    "ringway_io_backend",
    "1 for the io backend the workers run on (io_uring or epoll), 0 for the other.",
);
pub const BUILD: Def = Def {
    family: "ringway_build",
    help: "The running ringway version.",
    kind: MetricType::Info,
    unit: None,
};
pub const PIPES_IN_USE: Def = gauge(
    "ringway_pipes_in_use",
    "Splice pipes lent to open tunnels now (each holds two fds).",
);
pub const UPSTREAM_RESPONSE: Def = seconds_histogram(
    "ringway_upstream_response",
    "Plain HTTP exchanges per upstream: request head sent to the backend until the response is relayed (tunnels are in ringway_tunnel_duration).",
);
pub const PROCESS_OPEN_FDS: Def = gauge(
    "process_open_fds",
    "Open file descriptors of the process (/proc/self/fd at scrape time).",
);
pub const PROCESS_MAX_FDS: Def = gauge(
    "process_max_fds",
    "The process's soft limit on open file descriptors (RLIMIT_NOFILE).",
);
pub const PROCESS_RESIDENT_MEMORY: Def = Def {
    family: "process_resident_memory",
    help: "Resident memory of the process (VmRSS), in bytes.",
    kind: MetricType::Gauge,
    unit: Some(Unit::Bytes),
};
pub const PROCESS_CPU: Def = Def {
    family: "process_cpu",
    help: "User and system CPU time of the process, in seconds.",
    kind: MetricType::Counter,
    unit: Some(Unit::Seconds),
};
pub const TLS_HANDSHAKES: Def = counter(
    "ringway_tls_handshakes",
    "TLS handshakes on terminating listeners by result: ok, timeout, plain_http (answered 400), closed, unknown_sni, no_alpn, incompatible (no common version or cipher), bad_record (not TLS), alert_received (the client refused us), error.",
);
pub const TLS_UPSTREAM_HANDSHAKES: Def = counter(
    "ringway_tls_upstream_handshakes",
    "TLS handshakes to backends of upstreams with [upstream.tls], by result: ok (full handshake), resumed (a session resumed), bad_certificate (did not verify: unknown CA, wrong name, expired), alert_received (the backend refused us, e.g. no client certificate under TLS 1.2), incompatible, timeout (timeouts.tls_handshake), closed, error.",
);
pub const TLS_CIPHERS: Def = counter(
    "ringway_tls_handshake_ciphers",
    "Successful TLS handshakes by protocol version and cipher suite.",
);
pub const TLS_RESUMED: Def = counter(
    "ringway_tls_resumed_sessions",
    "TLS handshakes that resumed a session (ticket or session ID) instead of a full handshake.",
);
pub const TLS_CERT_EXPIRY: Def = gauge(
    "ringway_tls_certificate_expiry_seconds",
    "notAfter of each certificate in use, as Unix time in seconds (alert on it minus time()); labels listener and name (the certificate's first DNS name).",
);
pub const TLS_CERT_RELOADS: Def = counter(
    "ringway_tls_certificate_reloads",
    "Certificate reloads after their files changed (or SIGHUP in the quick form); result=failed kept the old certificates.",
);

pub const WS_MESSAGES: Def = counter(
    "ringway_websocket_messages",
    "Complete WebSocket data messages (text or binary) through tunnels with frame tracking, per upstream and direction (to_backend, to_client).",
);
pub const WS_PAYLOAD: Def = counter(
    "ringway_websocket_payload_bytes",
    "Payload bytes of WebSocket data frames (headers excluded), per upstream and direction.",
);
pub const WS_FRAMES: Def = counter(
    "ringway_websocket_frames",
    "WebSocket frames per upstream, direction and opcode (continuation, text, binary, close, ping, pong).",
);
pub const WS_CLOSE: Def = counter(
    "ringway_websocket_close",
    "WebSocket Close frames per upstream, side and code: side=client or backend for Closes a peer sent (relayed, or absorbed as the reply to the gateway's own), gateway_to_client / gateway_to_backend for the Closes the gateway wrote when it ended a tunnel (drain, idle timeout, malformed framing with 1002, ...). code=other for codes without a label of their own.",
);
pub const WS_PINGS: Def = counter(
    "ringway_websocket_pings",
    "The gateway's own WebSocket pings (ws_ping_interval) per upstream: result=sent for each Ping written to a client silent for a whole interval, result=timeout for each tunnel ended because its client did not answer within ws_ping_timeout (a half-open client found).",
);
pub const WS_MESSAGE_SIZE: Def = Def {
    family: "ringway_websocket_message_size",
    help: "WebSocket data message payload sizes, per upstream and direction.",
    kind: MetricType::Histogram,
    unit: Some(Unit::Bytes),
};

/// Every family, in exposition order.
pub const ALL: &[&Def] = &[
    &CONNECTIONS_ACTIVE,
    &CONNECTIONS,
    &CONNECTIONS_REJECTED,
    &UPSTREAM_CONNECTIONS_ACTIVE,
    &REQUESTS,
    &UPGRADES,
    &REBALANCE_CLOSED,
    &ERRORS,
    &BYTES,
    &HEAD_PARSE,
    &BACKEND_CONNECT,
    &TUNNEL_DURATION,
    &BACKEND_UP,
    &UPSTREAM_UP,
    &DNS_UPDATES,
    &CONFIG_RELOADS,
    &IO_BACKEND,
    &BUILD,
    &PIPES_IN_USE,
    &UPSTREAM_RESPONSE,
    &WS_MESSAGES,
    &WS_PAYLOAD,
    &WS_FRAMES,
    &WS_CLOSE,
    &WS_PINGS,
    &WS_MESSAGE_SIZE,
    &PROCESS_OPEN_FDS,
    &PROCESS_MAX_FDS,
    &PROCESS_RESIDENT_MEMORY,
    &PROCESS_CPU,
    &TLS_HANDSHAKES,
    &TLS_UPSTREAM_HANDSHAKES,
    &TLS_CIPHERS,
    &TLS_RESUMED,
    &TLS_CERT_EXPIRY,
    &TLS_CERT_RELOADS,
];
