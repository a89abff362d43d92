//! `RawConfig`: the file exactly as serde reads it. Nothing here is trusted; `Config::validate`
//! turns it into a `Config` or a list of errors. Every struct denies unknown fields, so a typo
//! (`conect = "5s"`) is an error that names the key instead of a silently ignored setting.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub workers: Option<i64>,
    pub io: Option<String>,
    pub admin: Option<String>,
    pub admin_token_file: Option<String>,
    pub pin_workers: Option<bool>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub head: Option<String>,
    pub connect: Option<String>,
    pub response_head: Option<String>,
    pub client_body: Option<String>,
    pub backend_read: Option<String>,
    pub http_idle: Option<String>,
    pub tunnel_idle: Option<String>,
    pub drain: Option<String>,
    pub accept_delay: Option<String>,
    pub tls_handshake: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_head_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_connections_per_source: Option<i64>,
    pub source_rate: Option<f64>,
    pub source_burst: Option<i64>,
    pub connect_retries: Option<i64>,
    pub proxy_pending_per_peer: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub access: Option<bool>,
    pub access_sample: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub bind: Option<String>,
    pub mode: Option<String>,
    pub proxy_protocol: Option<bool>,
    pub proxy_protocol_from: Option<Vec<String>>,
    pub tls_terminated: Option<bool>,
    pub tls_passthrough: Option<bool>,
    pub upstream: Option<String>,
    pub forward_for: Option<bool>,
    pub real_ip: Option<bool>,
    pub forward_proto: Option<bool>,
    pub forward_host: Option<bool>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificate: Vec<RawCertificate>,
    pub refuse_unknown_sni: Option<bool>,
    pub min_version: Option<String>,
    pub alpn: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// A mounted Secret: `<dir>/tls.crt` and `<dir>/tls.key`.
    pub dir: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub listener: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Option<String>,
    pub balance: Option<String>,
    pub load_factor: Option<f64>,
    pub send_proxy: Option<String>,
    pub cookie: Option<RawCookie>,
    pub backends: Option<Vec<RawBackend>>,
    pub dns: Option<Vec<String>>,
    pub dns_service: Option<String>,
    pub srv: Option<String>,
    pub discovery: Option<RawDns>,
    pub health: Option<RawHealth>,
    pub required_for_ready: Option<bool>,
    pub websocket_frames: Option<bool>,
    pub close_timeout: Option<String>,
    pub ws_ping_interval: Option<String>,
    pub ws_ping_timeout: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    pub rebalance: Option<RawRebalance>,
}

/// `[upstream.tls]`: TLS to the backends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca_file: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub server_name: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub alpn: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRebalance {
    pub max_per_second: Option<i64>,
    pub tolerance: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    pub name: Option<String>,
    pub secret: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub secret_file: Option<String>,
    pub fallback: Option<String>,
    pub path: Option<String>,
    pub http_only: Option<bool>,
    pub same_site: Option<String>,
    pub secure: Option<String>,
    pub max_age: Option<String>,
    pub strip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Option<String>,
    pub address: Option<String>,
    pub weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub resolver: Option<String>,
    pub min_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub nxdomain_hold: Option<String>,
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub max_fails: Option<i64>,
    pub fail_timeout: Option<String>,
    pub check: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub start: Option<String>,
}
