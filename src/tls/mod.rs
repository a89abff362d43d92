//! TLS termination (rustls, `ring` provider). This module owns everything TLS that is not a
//! byte path: loading and checking certificates (`certs`, `der`), choosing one by SNI (`sni`),
//! the per-listener rustls `ServerConfig`s the workers handshake with (`Store`, swapped whole on
//! reload or when the files change), and the counters (`stats`). The byte path is `stream`
//! (the handshake and the decrypted stream over the io seam).
//!
//! Why `ring` over `aws-lc-rs`: see docs/architecture.md ("TLS").

pub mod certs;
mod der;
pub mod sni;
pub mod stats;
pub mod stream;
pub mod upstream;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ProducesTickets, ServerConfig, ServerSessionMemoryCache, StoresServerSessions,
};

use crate::config::{Config, ConfigError, TlsConfig, TlsVersion};

pub use stats::{Outcome, Stats};
pub use stream::TlsStream;
pub use upstream::UpstreamTls;

/// TLS 1.2 sessions kept for ID-based resumption (TLS 1.3 and ticket-capable 1.2 clients use
/// stateless tickets). Shared by every listener and worker; an entry is ~200 bytes.
const SESSION_CACHE: usize = 4096;

/// The crypto provider every ServerConfig is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One certificate as it serves now, for the expiry metric.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub label: String,
    pub not_after: i64,
}

/// A TLS listener's current state: what workers read (one `ArcSwap` load per handshake), and
/// what the control thread's watcher compares (the files' stamps).
pub struct ListenerTls {
    pub cfg: Arc<TlsConfig>,
    server: ArcSwap<ServerConfig>,
    certs: ArcSwap<Vec<CertInfo>>,
    /// Control thread only (the file watcher and reload): the files as last read.
    stamps: Mutex<Vec<watch::Stamp>>,
}

/// Every TLS listener's config, by listener name.
pub struct Store {
    listeners: ArcSwap<HashMap<Arc<str>, Arc<ListenerTls>>>,
    pub stats: Stats,
    provider: Arc<CryptoProvider>,
    /// One ticket key rotator for the process (rotates every 6 h, keeps the previous key), so
    /// a ticket issued by one worker or listener resumes on any other.
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    pub fn new() -> Store {
        let provider = provider();
        let ticketer: Arc<dyn ProducesTickets> = match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => t,
            Err(e) => {
                // Only on a broken RNG; full handshakes still work.
                tracing::error!(error = %e, "TLS session tickets off: cannot make a ticket key");
                Arc::new(NoTickets)
            }
        };
        Store {
            listeners: ArcSwap::from_pointee(HashMap::new()),
            stats: Stats::new(&provider),
            provider,
            ticketer,
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
        }
    }

    /// The ServerConfig new handshakes on listener `name` use (`None`: not a TLS listener).
    pub fn server_config(&self, name: &str) -> Option<Arc<ServerConfig>> {
        self.listeners
            .load()
            .get(name)
            .map(|l| l.server.load_full())
    }

    /// Every TLS listener with its certificates, for metrics.
    pub fn certificates(&self) -> Vec<(Arc<str>, Arc<Vec<CertInfo>>)> {
        let mut v: Vec<_> = self
            .listeners
            .load()
            .iter()
            .map(|(n, l)| (n.clone(), l.certs.load_full()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Loads every TLS listener of `config` and, only if all load, swaps them in (startup,
    /// SIGHUP, POST /reload). On error nothing changes and the errors name the fields.
    pub fn apply(&self, config: &Config) -> Result<(), Vec<ConfigError>> {
        let mut next = HashMap::new();
        let mut errors = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(tls) = &l.tls else { continue };
            let stamps = watch::stamps(tls);
            match self.build(tls, &format!("listener[{i}].tls")) {
                Ok((server, certs)) => {
                    next.insert(
                        l.name.clone(),
                        Arc::new(ListenerTls {
                            cfg: tls.clone(),
                            server: ArcSwap::from_pointee(server),
                            certs: ArcSwap::from_pointee(certs),
                            stamps: Mutex::new(stamps),
                        }),
                    );
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.listeners.store(Arc::new(next));
        Ok(())
    }

    /// Re-reads the certificates of every TLS listener whose files changed since they were
    /// last read (the control thread calls this every few seconds). A pair that fails to load
    /// keeps the listener on its old certificates, with a log line and a counted failure;
    /// open connections are never touched (each holds its own rustls session).
    pub fn poll_files(&self) {
        let listeners = self.listeners.load();
        for (name, l) in listeners.iter() {
            let now = watch::stamps(&l.cfg);
            {
                let mut seen = l.stamps.lock().unwrap_or_else(|p| p.into_inner());
                if *seen == now {
                    continue;
                }
                // Record the change whatever comes of it: a bad file is reported once, not
                // every poll; the next change is tried again.
                *seen = now;
            }
            self.reload_listener(name, l);
        }
    }

    pub fn has_listeners(&self) -> bool {
        !self.listeners.load().is_empty()
    }

    /// Re-reads every listener's certificates whether or not the files changed (SIGHUP in the
    /// quick form). `false` if any listener kept its old certificates.
    pub fn reload_all(&self) -> bool {
        let listeners = self.listeners.load();
        let mut ok = true;
        for (name, l) in listeners.iter() {
            *l.stamps.lock().unwrap_or_else(|p| p.into_inner()) = watch::stamps(&l.cfg);
            ok &= self.reload_listener(name, l);
        }
        ok
    }

    fn reload_listener(&self, name: &str, l: &ListenerTls) -> bool {
        match self.build(&l.cfg, &format!("listener[{name}].tls")) {
            Ok((server, certs)) => {
                let labels: Vec<&str> = certs.iter().map(|c| c.label.as_str()).collect();
                tracing::info!(listener = %name, certificates = ?labels, "TLS certificates reloaded; new handshakes use them");
                l.server.store(Arc::new(server));
                l.certs.store(Arc::new(certs));
                self.stats
                    .reloads_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!(listener = %name, error = %e, "TLS certificate reload failed; the old certificates stay in use");
                }
                self.stats
                    .reloads_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        }
    }

    /// Loads a listener's pairs and builds its ServerConfig.
    fn build(
        &self,
        tls: &TlsConfig,
        field: &str,
    ) -> Result<(ServerConfig, Vec<CertInfo>), Vec<ConfigError>> {
        let loaded = load_all(tls, &self.provider, field)?;
        let err = |m: String| {
            vec![ConfigError {
                field: field.to_string(),
                line: None,
                message: m,
            }]
        };
        let Some(resolver) = sni::SniResolver::new(&loaded, tls.refuse_unknown_sni) else {
            return Err(err("no certificate".into()));
        };
        let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut server = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| err(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        server.ticketer = self.ticketer.clone();
        server.session_storage = self.sessions.clone();
        let mut info: Vec<CertInfo> = Vec::with_capacity(loaded.len());
        for (j, c) in loaded.iter().enumerate() {
            // Two pairs may share a first name (an RSA and an ECDSA one): metric series must
            // stay distinct, so a repeated label gets its position.
            let label = if info.iter().any(|i| i.label == c.label) {
                format!("{}#{j}", c.label)
            } else {
                c.label.clone()
            };
            info.push(CertInfo {
                label,
                not_after: c.not_after,
            });
        }
        Ok((server, info))
    }
}

/// Loads every pair of a listener; errors name `field.certificate[j]`.
fn load_all(
    tls: &TlsConfig,
    provider: &CryptoProvider,
    field: &str,
) -> Result<Vec<certs::Loaded>, Vec<ConfigError>> {
    let now = certs::now();
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for (j, files) in tls.certificates.iter().enumerate() {
        match certs::load(files, provider, now) {
            Ok(c) => loaded.push(c),
            Err(message) => errors.push(ConfigError {
                field: format!("{field}.certificate[{j}]"),
                line: None,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// `ringway check` and startup: every certificate and key of `config` loads (files exist and
/// parse, keys match, nothing expired), listeners' and upstreams' (`[upstream.tls]`: the CA
/// file and the client certificate). Errors name the field, like the config's own.
pub fn check(config: &Config) -> Vec<ConfigError> {
    let provider = provider();
    let mut errors = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(tls) = &l.tls {
            if let Err(e) = load_all(tls, &provider, &format!("listener[{i}].tls")) {
                errors.extend(e);
            }
        }
    }
    errors.extend(upstream::check(config));
    errors
}

/// Ticket production when no ticket key could be made: no tickets (stateful resumption only).
#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}
