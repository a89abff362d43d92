//! `--tls`: the client side of `wss://` and TLS raw TCP, on rustls 0.23 with the `ring`
//! provider (the gateway's). Verification against `--ca FILE` (or, with `--insecure`, none),
//! the server name from `--sni` (else the target's host), session resumption on unless
//! `--no-resume`. Every handshake is counted as full or resumed, so a run reports CPU per
//! full and per resumed handshake separately. Also the run-time certificate of
//! `compare --tls` (a CA and a leaf for `localhost` / 127.0.0.1, generated with rcgen).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::stream::Tls;

/// What the command line says about TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA(s) the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Accept any certificate (signatures are still checked).
    pub insecure: bool,
    /// Server name sent as SNI and verified; default: the target's host.
    pub sni: Option<String>,
    /// Offer session resumption (tickets / session ids). Off: every handshake is full.
    pub resume: bool,
}

/// Sessions kept for resumption (per server name, rustls keeps several tickets).
const SESSION_CACHE: usize = 4096;

/// A ready TLS client: the rustls configuration, the server name, and handshake counters.
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
    pub resume: bool,
    full: AtomicU64,
    resumed: AtomicU64,
    /// Protocol version, cipher suite and key exchange of the first handshake
    /// ("TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519").
    negotiated: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .field("resume", &self.resume)
            .field("counts", &self.counts())
            .finish()
    }
}

/// Handshakes so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    pub full: u64,
    pub resumed: u64,
}

impl TlsClient {
    /// Builds the client. `target_host` is the host (or host:port) used when there is no
    /// `--sni`. Errors name the flag: a missing or empty `--ca`, a bad `--sni`, neither
    /// `--ca` nor `--insecure`.
    pub fn new(opts: &TlsOptions, target_host: &str) -> Result<TlsClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("rustls: no protocol versions")?;
        let mut config = match (&opts.ca, opts.insecure) {
            (Some(_), true) => bail!("--ca and --insecure: give one of them"),
            (Some(ca), false) => builder
                .with_root_certificates(load_roots(ca)?)
                .with_no_client_auth(),
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth(),
            (None, false) => {
                bail!("--tls needs --ca FILE (the CA that signed the server's certificate) or --insecure")
            }
        };
        config.resumption = if opts.resume {
            Resumption::in_memory_sessions(SESSION_CACHE)
        } else {
            Resumption::disabled()
        };
        let name = match &opts.sni {
            Some(n) => n.clone(),
            None => host_of(target_host).to_string(),
        };
        let name = ServerName::try_from(name.clone())
            .with_context(|| format!("--sni: {name:?} is not a DNS name or IP address"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            resume: opts.resume,
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            negotiated: std::sync::OnceLock::new(),
        })
    }

    /// The server name verified (and sent as SNI when it is a DNS name).
    pub fn server_name(&self) -> String {
        self.name.to_str().into_owned()
    }

    /// Runs the handshake over `tcp` and counts it as full or resumed.
    pub async fn handshake(&self, tcp: TcpStream) -> std::io::Result<Tls> {
        let s = self.connector.connect(self.name.clone(), tcp).await?;
        let session = s.get_ref().1;
        if self.negotiated.get().is_none() {
            let v = session.protocol_version().map(|v| format!("{v:?}"));
            let c = session
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()));
            let g = session
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()));
            let _ = self.negotiated.set(format!(
                "{} {} {}",
                v.unwrap_or_default(),
                c.unwrap_or_default(),
                g.unwrap_or_default()
            ));
        }
        let c = if session.handshake_kind() == Some(HandshakeKind::Resumed) {
            &self.resumed
        } else {
            &self.full
        };
        c.fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }

    /// Protocol version, cipher suite and key exchange group of the first completed handshake.
    pub fn negotiated(&self) -> Option<String> {
        self.negotiated.get().cloned()
    }

    pub fn counts(&self) -> HandshakeCounts {
        HandshakeCounts {
            full: self.full.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
        }
    }
}

/// "host" of "host:port", "[::1]:443" → "::1"; a bare host is returned as is.
pub fn host_of(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
        _ => target,
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("--ca: reading {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.with_context(|| format!("--ca: {} is not valid PEM", path.display()))?;
        roots
            .add(c)
            .with_context(|| format!("--ca: a certificate in {} is unusable", path.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca: {} holds no CERTIFICATE block", path.display());
    }
    Ok(roots)
}

/// The error kind a report counts for a failed TLS handshake (`tls_unknown_issuer`,
/// `tls_bad_name`, `tls_expired`, `tls_alert_<description>`, `tls_handshake`), or `None`
/// when the error is not a TLS one.
pub fn error_kind(e: &std::io::Error) -> Option<String> {
    let t = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    use rustls::{CertificateError as C, Error as E};
    Some(match t {
        E::InvalidCertificate(C::UnknownIssuer) => "tls_unknown_issuer".into(),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "tls_bad_name".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "tls_expired".into(),
        E::InvalidCertificate(C::BadSignature) => "tls_bad_signature".into(),
        E::InvalidCertificate(_) => "tls_bad_certificate".into(),
        E::AlertReceived(a) => format!("tls_alert_{a:?}").to_lowercase(),
        _ => "tls_handshake".into(),
    })
}

/// A sentence for a person about a TLS error kind (None for other kinds).
pub fn explain(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "tls_unknown_issuer" => {
            "the server's certificate is not signed by a CA in --ca (give the CA that signed it, or --insecure)"
        }
        "tls_bad_name" => {
            "the server's certificate does not name the server (set --sni to a name it holds)"
        }
        "tls_expired" => "the server's certificate has expired",
        "tls_bad_signature" => {
            "the server's certificate does not verify against the CA in --ca (another CA of the same name?)"
        }
        "tls_bad_certificate" => "the server's certificate was refused",
        "tls_handshake" => {
            "the TLS handshake failed (is the target speaking TLS? without --tls, drop it)"
        }
        k if k.starts_with("tls_alert_") => "the server refused the TLS handshake with an alert",
        _ => return None,
    })
}

/// `--insecure`: any certificate, any name; the handshake signatures are still verified
/// (the handshake costs what it costs with verification, minus the chain check).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
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

/// A CA and a leaf certificate it signed, in PEM, and where they were written.
#[derive(Debug, Clone)]
pub struct CertSet {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The files: `ca.crt`, `tls.crt`, `tls.key` (laid out like a Kubernetes TLS Secret)
    /// and `tls.pem` (certificate then key, HAProxy's `crt`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}

/// Generates a fresh CA and an ECDSA P-256 leaf for `names` (DNS names or IP addresses)
/// into `dir`. ECDSA P-256 is what the gateway's provider measurement used and what
/// HAProxy and nginx handle best.
pub fn generate_certs(dir: &Path, names: &[&str]) -> Result<CertSet> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().context("rcgen: CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("rcgen: CA params")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A distinct name per CA, so that another run's CA is an unknown issuer, not a
    // same-named CA whose signature fails.
    let tag = crate::ws::XorShift::from_entropy().next_u64();
    ca.distinguished_name
        .push(DnType::CommonName, format!("loadgen test CA {tag:016x}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("rcgen: CA certificate")?;
    let key = KeyPair::generate().context("rcgen: leaf key")?;
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut leaf = CertificateParams::new(names).context("rcgen: leaf names")?;
    leaf.distinguished_name.push(DnType::CommonName, "loadgen");
    let cert = leaf
        .signed_by(&key, &ca_cert, &ca_key)
        .context("rcgen: leaf certificate")?;
    let set = CertSet {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        combined: dir.join("tls.pem"),
    };
    let write = |p: &Path, s: &str| {
        std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))
    };
    write(&set.ca, &set.ca_pem)?;
    write(&set.cert, &set.cert_pem)?;
    write(&set.key, &set.key_pem)?;
    write(&set.combined, &format!("{}{}", set.cert_pem, set.key_pem))?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_cut_from_the_port() {
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn options_are_checked_and_name_the_flag() {
        let e = TlsClient::new(&TlsOptions::default(), "x:1").unwrap_err();
        assert!(format!("{e:#}").contains("--ca FILE"), "{e:#}");
        let o = TlsOptions {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = TlsClient::new(&o, "x:1").unwrap_err();
        assert!(format!("{e:#}").contains("--ca: reading"), "{e:#}");
        let o = TlsOptions {
            insecure: true,
            sni: Some("not a name".into()),
            ..Default::default()
        };
        let e = TlsClient::new(&o, "x:1").unwrap_err();
        assert!(format!("{e:#}").contains("--sni"), "{e:#}");
        let o = TlsOptions {
            insecure: true,
            ..Default::default()
        };
        let c = TlsClient::new(&o, "127.0.0.1:9").unwrap();
        assert_eq!(c.server_name(), "127.0.0.1");
        assert_eq!(c.counts(), HandshakeCounts::default());
    }

    #[test]
    fn a_garbled_ca_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("loadgen-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("empty.pem");
        std::fs::write(&p, "no pem here\n").unwrap();
        let o = TlsOptions {
            ca: Some(p),
            ..Default::default()
        };
        let e = TlsClient::new(&o, "x:1").unwrap_err();
        assert!(format!("{e:#}").contains("no CERTIFICATE"), "{e:#}");
        let set = generate_certs(&dir, &["localhost", "127.0.0.1"]).unwrap();
        let o = TlsOptions {
            ca: Some(set.ca.clone()),
            ..Default::default()
        };
        TlsClient::new(&o, "localhost:1").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
