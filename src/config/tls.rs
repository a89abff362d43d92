//! `[listener.tls]`: TLS termination on a listener. Only the shape is checked here (which
//! files, which versions, which ALPN names); reading the certificates and keys is
//! `crate::tls::check`'s job, so `config` stays free of crypto and file contents.

use std::path::PathBuf;

use super::raw::{RawCertificate, RawTls};
use super::Mode;

/// A validated `[listener.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// In order; the first is the default certificate (clients without SNI, or with a name no
    /// certificate covers). Never empty.
    pub certificates: Vec<CertFiles>,
    /// Refuse a handshake whose SNI names no certificate (instead of serving the default).
    pub refuse_unknown_sni: bool,
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in preference order (empty = no ALPN).
    pub alpn: Vec<String>,
}

/// One certificate chain and its key: PEM files, as a mounted Kubernetes TLS Secret lays them
/// out (`<dir>/tls.crt`, `<dir>/tls.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

/// The ALPN an http listener offers: the proxy speaks HTTP/1.1 only.
pub const HTTP_ALPN: &str = "http/1.1";

/// Validates one listener's `tls` table; `push(field, message)` collects errors.
pub(super) fn validate(
    field: &str,
    mode: Mode,
    raw: &RawTls,
    push: &mut dyn FnMut(String, String),
) -> Option<TlsConfig> {
    let mut ok = true;
    let mut certificates = Vec::new();
    if raw.certificate.is_empty() {
        push(
            format!("{field}.certificate"),
            "at least one [[listener.tls.certificate]] (dir = \"/etc/tls/NAME\", or cert + key) is needed".into(),
        );
        ok = false;
    }
    for (i, c) in raw.certificate.iter().enumerate() {
        match cert_files(c) {
            Ok(files) => certificates.push(files),
            Err(msg) => {
                push(format!("{field}.certificate[{i}]"), msg.into());
                ok = false;
            }
        }
    }
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(v) => {
            push(
                format!("{field}.min_version"),
                format!("`{v}` is not one of \"1.2\" | \"1.3\""),
            );
            ok = false;
            TlsVersion::V1_2
        }
    };
    let alpn = match (&raw.alpn, mode) {
        (None, Mode::Http) => vec![HTTP_ALPN.to_string()],
        (None, Mode::Tcp) => Vec::new(),
        (Some(list), Mode::Http) if list.iter().any(|p| p != HTTP_ALPN) => {
            push(
                format!("{field}.alpn"),
                "an http listener speaks HTTP/1.1 only: use [\"http/1.1\"] or leave it out".into(),
            );
            ok = false;
            Vec::new()
        }
        (Some(list), _) => {
            for p in list {
                if p.is_empty() || p.len() > 255 {
                    push(
                        format!("{field}.alpn"),
                        format!("`{p}`: a protocol name is 1..=255 bytes"),
                    );
                    ok = false;
                }
            }
            list.clone()
        }
    };
    ok.then(|| TlsConfig {
        certificates,
        refuse_unknown_sni: raw.refuse_unknown_sni.unwrap_or(false),
        min_version,
        alpn,
    })
}

fn cert_files(c: &RawCertificate) -> Result<CertFiles, &'static str> {
    match (&c.dir, &c.cert, &c.key) {
        (Some(d), None, None) if !d.is_empty() => {
            let d = PathBuf::from(d);
            Ok(CertFiles {
                cert: d.join("tls.crt"),
                key: d.join("tls.key"),
            })
        }
        (None, Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => Ok(CertFiles {
            cert: cert.into(),
            key: key.into(),
        }),
        _ => Err("give either dir = \"/path/to/secret\" (with tls.crt and tls.key in it) or both cert and key"),
    }
}
