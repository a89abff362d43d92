//! Upstream TLS: what a worker needs to handshake with a backend of an upstream that has
//! `[upstream.tls]`. The rustls `ClientConfig` (CA roots, client certificate, ALPN) is built
//! once per generation (startup, reload) off the data path; a connection only clones an `Arc`
//! and makes the server name. A reload that changes nothing the sessions' trust rests on (the
//! settings, the CA and client certificate files' bytes) keeps the running config and its
//! session cache, so it does not cost every backend a full handshake; any change starts both
//! afresh (rustls never resumes a session made under another verifier anyway).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ConfigError, Discovery, UpstreamConfig, UpstreamTlsConfig, Verify};

use super::{certs, Outcome};

/// TLS sessions kept per upstream for resumption (one per backend name is what matters; a
/// ticket is a few hundred bytes).
const SESSIONS_PER_UPSTREAM: usize = 256;

/// Upstream handshake results, in metric order: the slots of
/// `metrics::UpstreamCounters::tls_handshake`. `ok` is a full handshake, `resumed` one that
/// resumed a session; the two are disjoint, so the results sum to the handshakes tried.
pub const RESULTS: [Outcome; 7] = [
    Outcome::Ok,
    Outcome::BadCertificate,
    Outcome::AlertReceived,
    Outcome::Incompatible,
    Outcome::Timeout,
    Outcome::Closed,
    Outcome::Error,
];
pub const RESUMED_SLOT: usize = RESULTS.len();
pub const RESULT_NAMES: [&str; crate::metrics::UPSTREAM_TLS_SLOTS] = [
    "ok",
    "bad_certificate",
    "alert_received",
    "incompatible",
    "timeout",
    "closed",
    "error",
    "resumed",
];

/// The counter slot of a failed (or full) handshake's outcome; other outcomes count as `error`.
pub fn slot(o: Outcome) -> usize {
    RESULTS
        .iter()
        .position(|&r| r == o)
        .unwrap_or(RESULTS.len() - 1)
}

/// One upstream's TLS client side, for one generation.
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// The configured `server_name`, parsed once; `None`: per backend (see [`UpstreamTls::name_for`]).
    name: Option<ServerName<'static>>,
    /// Backends are named by their DNS name (`dns`, `srv` discovery), not by a label or an
    /// address (static backends, `dns_service`).
    dns_named: bool,
    /// Kept across generations with `config` while [`UpstreamTls::trust`] is unchanged.
    pub sessions: Arc<dyn ClientSessionStore>,
    /// A hash of the settings and file contents that decide whom we trust and who we are.
    trust: u64,
}

impl UpstreamTls {
    /// Builds the client side of `u` (`Ok(None)`: no `[upstream.tls]`). `prev` is the same
    /// upstream in the running generation: its session cache carries over. Errors name the
    /// field.
    pub fn build(
        u: &UpstreamConfig,
        prev: Option<&UpstreamTls>,
    ) -> Result<Option<UpstreamTls>, Vec<ConfigError>> {
        let Some(t) = &u.tls else { return Ok(None) };
        let provider = super::provider();
        let field = format!("upstream[{}].tls", u.name);
        let trust = trust_hash(t);
        let sessions: Arc<dyn ClientSessionStore> =
            Arc::new(ClientSessionMemoryCache::new(SESSIONS_PER_UPSTREAM));
        // Built (and so checked: an expired client certificate is refused) on every reload.
        let (config, name) = client_config(t, provider, &field, sessions.clone())?;
        let dns_named = matches!(u.discovery, Discovery::Dns(_) | Discovery::Srv(_));
        // Unchanged trust: keep the running config itself, since rustls resumes only sessions
        // made under the same verifier and client certificate objects.
        if let Some(p) = prev.filter(|p| p.trust == trust) {
            return Ok(Some(UpstreamTls {
                config: p.config.clone(),
                name: p.name.clone(),
                dns_named,
                sessions: p.sessions.clone(),
                trust,
            }));
        }
        Ok(Some(UpstreamTls {
            config,
            name,
            dns_named,
            sessions,
            trust,
        }))
    }

    /// The name a backend is greeted and verified as: the configured `server_name`; else, for
    /// `dns` and `srv` discovery, the backend's name (its host: a `:port` that tells two entries
    /// of one host apart is dropped); else its IP address (static backends, whose name is a
    /// label, and `dns_service` ones, named by address: rustls then sends no SNI and the
    /// certificate must carry the address as an IP SAN).
    pub fn name_for(&self, backend: &str, addr: SocketAddr) -> ServerName<'static> {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if self.dns_named {
            let host = match backend.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => backend,
            };
            if let Ok(ServerName::DnsName(d)) = ServerName::try_from(host) {
                return ServerName::DnsName(d.to_owned());
            }
        }
        ServerName::IpAddress(addr.ip().into())
    }
}

/// The settings and the files' bytes a session's trust rests on (see [`UpstreamTls::trust`]).
fn trust_hash(t: &UpstreamTlsConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    format!("{t:?}").hash(&mut h);
    let files = [
        match &t.verify {
            Verify::Ca(p) => Some(p),
            Verify::InsecureSkipVerify => None,
        },
        t.client_cert.as_ref().map(|c| &c.cert),
        t.client_cert.as_ref().map(|c| &c.key),
    ];
    for f in files.into_iter().flatten() {
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}

/// `ringway check` and startup: the files of every upstream's `tls` load. Errors name the field.
pub fn check(config: &crate::config::Config) -> Vec<ConfigError> {
    let provider = super::provider();
    let mut errors = Vec::new();
    for u in &config.upstreams {
        if let Some(t) = &u.tls {
            let field = format!("upstream[{}].tls", u.name);
            let store = Arc::new(ClientSessionMemoryCache::new(1));
            if let Err(e) = client_config(t, provider.clone(), &field, store) {
                errors.extend(e);
            }
        }
    }
    errors
}

fn client_config(
    t: &UpstreamTlsConfig,
    provider: Arc<CryptoProvider>,
    field: &str,
    sessions: Arc<dyn ClientSessionStore>,
) -> Result<(Arc<ClientConfig>, Option<ServerName<'static>>), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut err = |f: &str, message: String| {
        errors.push(ConfigError {
            field: format!("{field}.{f}"),
            line: None,
            message,
        })
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            vec![ConfigError {
                field: field.to_string(),
                line: None,
                message: e.to_string(),
            }]
        })?;
    let builder = match &t.verify {
        Verify::Ca(path) => match roots(path) {
            Ok(r) => Some(builder.with_root_certificates(r)),
            Err(m) => {
                err("ca_file", m);
                None
            }
        },
        Verify::InsecureSkipVerify => Some(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone()))),
        ),
    };
    let client_key = match &t.client_cert {
        None => None,
        Some(files) => match certs::load(files, &provider, certs::now()) {
            Ok(l) => Some(l.key),
            Err(m) => {
                err("cert_file", m);
                None
            }
        },
    };
    let name = match t.server_name.as_deref().map(ServerName::try_from) {
        None => None,
        Some(Ok(n)) => Some(n.to_owned()),
        Some(Err(e)) => {
            err("server_name", e.to_string());
            None
        }
    };
    let (Some(builder), true) = (builder, errors.is_empty()) else {
        return Err(errors);
    };
    let mut config = match client_key {
        Some(key) => builder.with_client_cert_resolver(Arc::new(OneCert(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.resumption = rustls::client::Resumption::store(sessions);
    Ok((Arc::new(config), name))
}

/// The CA certificates of a PEM file.
fn roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: garbled PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM CERTIFICATE block in the file",
            path.display()
        ));
    }
    let mut store = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        store.add(c).map_err(|e| {
            format!(
                "{}: certificate #{i} is not a usable CA certificate: {e}",
                path.display()
            )
        })?;
    }
    Ok(store)
}

/// mTLS: the one client certificate, whatever the backend asks.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// `insecure_skip_verify = true`: any certificate, for any name, is accepted. The handshake
/// signatures are still checked (the backend holds the key of the certificate it sent), so
/// this only removes *who* the backend is, which is exactly what makes it insecure.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(server_name: Option<&str>, dns_named: bool) -> UpstreamTls {
        UpstreamTls {
            config: Arc::new(
                ClientConfig::builder_with_provider(super::super::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            name: server_name.map(|n| ServerName::try_from(n).unwrap().to_owned()),
            dns_named,
            sessions: Arc::new(ClientSessionMemoryCache::new(1)),
            trust: 0,
        }
    }

    #[test]
    fn server_name_per_backend() {
        let addr: SocketAddr = "10.1.2.3:8443".parse().unwrap();
        let dns = |s: &str| ServerName::try_from(s.to_string()).unwrap();
        let ip = ServerName::IpAddress(addr.ip().into());
        // dns / srv discovery: the backend's name is its host.
        let t = tls(None, true);
        assert_eq!(
            t.name_for("chat-0.chat.ns.svc", addr),
            dns("chat-0.chat.ns.svc")
        );
        assert_eq!(
            t.name_for("chat-0.chat.ns.svc:8443", addr),
            dns("chat-0.chat.ns.svc")
        );
        assert_eq!(t.name_for("chat-0", addr), dns("chat-0"));
        assert_eq!(
            t.name_for("10.1.2.3", addr),
            ip,
            "an address is not a DNS name"
        );
        assert_eq!(t.name_for("chat 0", addr), ip);
        // Static and dns_service backends: a label or an address, so the IP is verified.
        let t = tls(None, false);
        assert_eq!(t.name_for("b0", addr), ip);
        assert_eq!(t.name_for("chat.example.com", addr), ip);
        assert_eq!(t.name_for("10.1.2.3:8443", addr), ip);
        // server_name wins over both.
        let fixed = tls(Some("chat.internal"), false);
        assert_eq!(fixed.name_for("b0", addr), dns("chat.internal"));
        let fixed = tls(Some("chat.internal"), true);
        assert_eq!(
            fixed.name_for("chat-0.chat.ns.svc", addr),
            dns("chat.internal")
        );
    }
}
