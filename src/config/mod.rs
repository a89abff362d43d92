//! Configuration: `RawConfig` (serde, untrusted) → `Config` (only reachable through
//! [`Config::validate`]). Validation collects *every* error before giving up, each naming the
//! field it is about and saying how to fix it, so an operator fixes a file in one pass.

mod cidr;
mod describe;
mod duration;
pub mod raw;
mod secrets;
mod tls;
mod upstream_tls;
mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use cidr::Cidr;
pub use describe::describe;
pub use duration::{format_duration, parse_duration};
pub use raw::RawConfig;
pub use validate::check_log_level;

use crate::balance::Policy;
pub use tls::{CertFiles, TlsConfig, TlsVersion, HTTP_ALPN};
pub use upstream_tls::{UpstreamTlsConfig, Verify};

/// Validates a `RawConfig` built in code (the CLI's quick form goes through the same checks).
pub fn validate_raw(raw: RawConfig) -> Result<Config, ConfigErrors> {
    validate::validate(raw)
}

/// One problem in a config: the dotted path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `listener[0].bind`, `upstream[chat].balance`, … (`<file>` for syntax errors).
    pub field: String,
    /// 1-based line in the file, when TOML could tell us.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// All the errors of one file; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    None,
    V1,
    V2,
}

/// The admin bearer token. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken(token.into())
    }

    /// Whether an `Authorization` header value carries this token (`Bearer <token>`). Compares
    /// in time independent of where the first difference is.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(v) = authorization else { return false };
        let Some((scheme, given)) = v.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken(<{} bytes>)", self.0.len())
    }
}

/// The validated configuration. Cheap to share (`Arc<Config>`); a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker threads; 0 until [`Config::resolve_workers`] looks at the machine.
    pub workers: usize,
    pub io: IoMode,
    pub admin: Option<SocketAddr>,
    /// Bearer token for the admin port's revealing and mutating endpoints (`/reload`,
    /// `/lookup`, `/backends`), read from `admin_token_file` at load and on every reload.
    pub admin_token: Option<AdminToken>,
    pub pin_workers: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    /// Valid but risky settings (a PROXY listener that trusts every peer, a per-process
    /// cookie secret, the example's secret): printed by `ringway check`, logged at start.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub head: Duration,
    pub connect: Duration,
    pub response_head: Duration,
    /// Longest wait for the client inside a body: between two reads of its request body (408,
    /// close), or for it to take response-body bytes. A client that declares a body and stalls
    /// must not hold a gateway and a backend connection forever.
    pub client_body: Duration,
    /// Longest wait between two reads of a response body, and for the backend to take
    /// request-body bytes (both connections closed).
    pub backend_read: Duration,
    pub http_idle: Duration,
    /// `None` = tunnels never time out for idleness (long connections are the point).
    pub tunnel_idle: Option<Duration>,
    pub drain: Duration,
    pub accept_delay: Duration,
    /// Longest a TLS handshake may take from accept (or from the end of the PROXY header):
    /// a client that opens a connection and stalls mid-handshake must not hold it forever.
    pub tls_handshake: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// 0 = unlimited.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// New connections per second per source IP; 0 = off.
    pub source_rate: f64,
    pub source_burst: u32,
    pub connect_retries: usize,
    /// Connections from one peer still waiting for their PROXY header (0 = no cap). Per-source
    /// limits apply to the address the header carries, so this is what bounds a peer that
    /// opens connections and sends half a header (with `timeouts.head`).
    pub proxy_pending_per_peer: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
    pub access_sample: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub mode: Mode,
    pub proxy_protocol: bool,
    /// Peers allowed to send a PROXY header (`proxy_protocol_from`); `None` = every peer
    /// (trusted blindly: warned about at start). A connection from elsewhere is a direct
    /// client; if it starts with a PROXY header anyway it is refused.
    pub proxy_protocol_from: Option<Vec<Cidr>>,
    /// The client's connection is TLS (terminated here, or by a balancer in front): sets
    /// `X-Forwarded-Proto: https` and `Secure` on `secure = "auto"` cookies. Defaults to
    /// whether `tls` is set; `tls_terminated` in the file overrides it.
    pub tls_terminated: bool,
    /// `[listener.tls]`: this listener terminates TLS.
    pub tls: Option<Arc<TlsConfig>>,
    /// tcp only: read the TLS ClientHello (without terminating TLS), route by its server name
    /// through the `[[route]]`s naming this listener, offer it as the `hash:sni` key, then
    /// tunnel every byte untouched.
    pub tls_passthrough: bool,
    /// tcp: the upstream (index into `Config::upstreams`), for passthrough listeners the one
    /// for names no route matches; http: the default route, if any.
    pub upstream: Option<usize>,
    pub forward_for: bool,
    pub real_ip: bool,
    pub forward_proto: bool,
    pub forward_host: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `None` = every http listener. A route naming a `tls_passthrough` tcp listener matches
    /// the ClientHello's server name against `host` (its `path_prefix` is `/`).
    pub listener: Option<Arc<str>>,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub upstream: usize,
}

/// Host matching, lower-cased at load time so the hot path compares bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: Arc<str>,
    /// How backends are picked, parsed once at validation (`balance`, the cookie's name, secrets
    /// and fallback, and `load_factor` are all in it), so nothing re-reads a policy string.
    pub policy: Policy,
    /// `Some`: bounded-load hashing (opt-in; see `docs/config.md`). `None`: no bound. Already
    /// applied to [`UpstreamConfig::policy`].
    pub load_factor: Option<f64>,
    pub send_proxy: SendProxy,
    pub cookie: CookieConfig,
    pub discovery: Discovery,
    pub dns: DnsOptions,
    pub health: HealthConfig,
    /// `/readyz` is 503 while this upstream has no backend that can take a connection. Off by
    /// default: one empty upstream must not take every edge node out of the load balancer.
    pub required_for_ready: bool,
    /// `[upstream.tls]`: backends are reached over TLS (`None`: plain TCP).
    pub tls: Option<Arc<UpstreamTlsConfig>>,
    /// Track WebSocket frame boundaries in this upstream's upgraded tunnels (on by default):
    /// needed for graceful Close frames, 1002 on malformed framing and message metrics.
    /// `false` makes them blind byte pipes again (the gateway's endings are FIN/RST).
    pub websocket_frames: bool,
    /// How long a WebSocket tunnel the gateway ends itself waits for the peers' Close replies
    /// (after finishing the frames in flight) before it cuts them.
    pub close_timeout: Duration,
    /// Ping WebSocket clients silent for this long (opt-in, needs `websocket_frames`): finds
    /// half-open mobile clients without the backend's help. `None`: no gateway pings.
    pub ws_ping_interval: Option<Duration>,
    /// How long a pinged client has to answer (a Pong, or any bytes) before its tunnel ends
    /// (Close 1001 both ways).
    pub ws_ping_timeout: Duration,
    /// `Some`: move live tunnels after the backend set changes (opt-in; see
    /// `docs/config.md` and `proxy::rebalance`).
    pub rebalance: Option<Rebalance>,
}

/// `rebalance = { max_per_second, tolerance }` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebalance {
    /// Tunnels this gateway closes per second at most, over all its cores.
    pub max_per_second: u32,
    /// Non-hash policies: a backend sheds tunnels once it holds more than
    /// `(1 + tolerance) ×` its fair share.
    pub tolerance: f64,
}

impl Rebalance {
    pub const DEFAULT_MAX_PER_SECOND: u32 = 20;
    pub const DEFAULT_TOLERANCE: f64 = 0.10;
}

/// The route cookie's attributes (`balance = "cookie"`). Its fallback policy lives in
/// [`UpstreamConfig::policy`].
#[derive(Debug, Clone, PartialEq)]
pub struct CookieConfig {
    pub name: String,
    /// The secret that signs new cookies (the first of `secrets` / of `secret_file`'s lines).
    pub secret: String,
    /// Retired secrets whose cookies are still honoured (rotation), in the order given.
    pub verify_secrets: Vec<String>,
    /// Where the secrets were read from (`secret_file`), re-read on every reload.
    pub secret_file: Option<std::path::PathBuf>,
    pub path: String,
    pub http_only: bool,
    pub same_site: Option<String>,
    pub secure: CookieSecure,
    pub max_age: Option<Duration>,
    pub strip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticBackend {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Where an upstream's backends come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    Static(Vec<StaticBackend>),
    /// Per-pod names (`host`, `port`); identity = the name.
    Dns(Vec<(String, u16)>),
    /// A headless service; identity = the address of each record.
    DnsService {
        host: String,
        port: u16,
    },
    /// An SRV name; identity = each target host name.
    Srv(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsOptions {
    pub resolver: Option<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
    pub nxdomain_hold: Duration,
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    None,
    Tcp,
    Http,
    WebSocket,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub check: CheckKind,
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub start_up: bool,
}

impl Config {
    /// Reads and validates a file. Errors carry line numbers where TOML knows them.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                field: path.display().to_string(),
                line: None,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigErrors(vec![ConfigError {
                field: "<file>".into(),
                line,
                message: e.message().trim().to_string(),
            }])
        })?;
        validate::validate(raw)
    }

    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| &*u.name == name)
    }

    /// Fills in `workers = 0` from the CPUs this process may actually use.
    pub fn resolve_workers(&mut self, available: usize) {
        if self.workers == 0 {
            self.workers = available.max(1);
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
