//! `[upstream.tls]`: connect to an upstream's backends over TLS (clusters that encrypt pod
//! traffic). Only the shape is checked here (which files, which name, which ALPN); reading the
//! CA and the client certificate is `crate::tls::check`'s job, like the listener's.

use std::path::PathBuf;

use super::raw::RawUpstreamTls;
use super::tls::CertFiles;

/// A validated `[upstream.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// How the backend's certificate is checked.
    pub verify: Verify,
    /// The name sent as SNI and verified against the certificate, for every backend. `None`:
    /// each backend's own DNS name (DNS and SRV discovery), or its IP address (static and
    /// `dns_service` backends: no SNI is sent, and the certificate must carry the IP).
    pub server_name: Option<String>,
    /// mTLS: the certificate chain and key the gateway presents (both or neither).
    pub client_cert: Option<CertFiles>,
    /// ALPN protocols offered to the backend, in preference order (empty = no ALPN).
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// The chain must lead to a certificate in this PEM file, for the server name.
    Ca(PathBuf),
    /// `insecure_skip_verify = true`: any certificate is accepted (the traffic is encrypted but
    /// anyone on the path can pose as the backend). For tests and migrations only.
    InsecureSkipVerify,
}

/// Validates one upstream's `tls` table; `push(field, message)` collects errors.
pub(super) fn validate(
    field: &str,
    raw: &RawUpstreamTls,
    push: &mut dyn FnMut(String, String),
) -> Option<UpstreamTlsConfig> {
    let mut ok = true;
    let mut bad = |f: &str, m: String| {
        push(format!("{field}.{f}"), m);
        ok = false;
    };
    let skip = raw.insecure_skip_verify.unwrap_or(false);
    let verify = match (&raw.ca_file, skip) {
        (Some(ca), false) if !ca.is_empty() => Some(Verify::Ca(ca.into())),
        (Some(_), false) => {
            bad(
                "ca_file",
                "is empty: give the PEM file of the CA that signs the backends' certificates"
                    .into(),
            );
            None
        }
        (None, true) => Some(Verify::InsecureSkipVerify),
        (Some(_), true) => {
            bad(
                "insecure_skip_verify",
                "cannot be combined with ca_file: keep ca_file (verified) or drop it (not verified)"
                    .into(),
            );
            None
        }
        (None, false) => {
            bad(
                "ca_file",
                "missing: give the PEM file of the CA that signs the backends' certificates \
                 (or insecure_skip_verify = true to accept any certificate, which anyone on the \
                 path can then present)"
                    .into(),
            );
            None
        }
    };
    let server_name = match raw.server_name.as_deref() {
        None => None,
        Some(n) if valid_server_name(n) => Some(n.to_ascii_lowercase()),
        Some(n) => {
            bad(
                "server_name",
                format!("`{n}` is not a DNS name (e.g. chat.default.svc) or an IP address"),
            );
            None
        }
    };
    let client_cert = match (&raw.cert_file, &raw.key_file) {
        (None, None) => None,
        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => Some(CertFiles {
            cert: c.into(),
            key: k.into(),
        }),
        (Some(_), None) => {
            bad(
                "key_file",
                "missing: cert_file needs the key_file of its private key".into(),
            );
            None
        }
        (None, Some(_)) => {
            bad(
                "cert_file",
                "missing: key_file needs the cert_file of its certificate".into(),
            );
            None
        }
        _ => {
            bad(
                "cert_file",
                "cert_file and key_file must both be non-empty paths".into(),
            );
            None
        }
    };
    let alpn = raw.alpn.clone().unwrap_or_default();
    for p in &alpn {
        if p.is_empty() || p.len() > 255 {
            bad("alpn", format!("`{p}`: a protocol name is 1..=255 bytes"));
        }
    }
    let verify = verify?;
    ok.then_some(UpstreamTlsConfig {
        verify,
        server_name,
        client_cert,
        alpn,
    })
}

/// A DNS name (letters, digits, `-`, dot-separated labels of 1..=63, at most 253 bytes) or an
/// IP address: what a certificate can be issued for.
fn valid_server_name(n: &str) -> bool {
    if n.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let n = n.strip_suffix('.').unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(raw: RawUpstreamTls) -> Result<UpstreamTlsConfig, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let r = validate("upstream[u].tls", &raw, &mut |f, m| errs.push((f, m)));
        match r {
            Some(c) if errs.is_empty() => Ok(c),
            _ => Err(errs),
        }
    }

    fn fields(r: Result<UpstreamTlsConfig, Vec<(String, String)>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn ca_file_is_enough() {
        let c = run(RawUpstreamTls {
            ca_file: Some("/ca.pem".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.verify, Verify::Ca("/ca.pem".into()));
        assert_eq!(c.server_name, None);
        assert_eq!(c.client_cert, None);
        assert!(c.alpn.is_empty());
    }

    #[test]
    fn verification_must_be_chosen() {
        assert_eq!(
            fields(run(RawUpstreamTls::default())),
            ["upstream[u].tls.ca_file"]
        );
        let both = RawUpstreamTls {
            ca_file: Some("/ca.pem".into()),
            insecure_skip_verify: Some(true),
            ..Default::default()
        };
        assert_eq!(fields(run(both)), ["upstream[u].tls.insecure_skip_verify"]);
        let empty = RawUpstreamTls {
            ca_file: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(fields(run(empty)), ["upstream[u].tls.ca_file"]);
        let skip = RawUpstreamTls {
            insecure_skip_verify: Some(true),
            ..Default::default()
        };
        assert_eq!(run(skip).unwrap().verify, Verify::InsecureSkipVerify);
    }

    #[test]
    fn client_cert_needs_both_files() {
        let ca = || Some("/ca.pem".to_string());
        let cert_only = RawUpstreamTls {
            ca_file: ca(),
            cert_file: Some("/c.pem".into()),
            ..Default::default()
        };
        assert_eq!(fields(run(cert_only)), ["upstream[u].tls.key_file"]);
        let key_only = RawUpstreamTls {
            ca_file: ca(),
            key_file: Some("/k.pem".into()),
            ..Default::default()
        };
        assert_eq!(fields(run(key_only)), ["upstream[u].tls.cert_file"]);
        let empty = RawUpstreamTls {
            ca_file: ca(),
            cert_file: Some(String::new()),
            key_file: Some("/k.pem".into()),
            ..Default::default()
        };
        assert_eq!(fields(run(empty)), ["upstream[u].tls.cert_file"]);
        let both = RawUpstreamTls {
            ca_file: ca(),
            cert_file: Some("/c.pem".into()),
            key_file: Some("/k.pem".into()),
            ..Default::default()
        };
        let c = run(both).unwrap().client_cert.unwrap();
        assert_eq!((c.cert, c.key), ("/c.pem".into(), "/k.pem".into()));
    }

    #[test]
    fn server_name_and_alpn_are_checked() {
        let with = |name: &str| RawUpstreamTls {
            ca_file: Some("/ca.pem".into()),
            server_name: Some(name.into()),
            ..Default::default()
        };
        for good in [
            "chat.default.svc",
            "Chat-0.example.com.",
            "10.0.0.7",
            "::1",
            "localhost",
        ] {
            assert!(run(with(good)).is_ok(), "{good}");
        }
        assert_eq!(
            run(with("Chat.Example")).unwrap().server_name.as_deref(),
            Some("chat.example")
        );
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a b",
            "a/b",
            "é.example",
            &"a".repeat(64),
        ] {
            assert_eq!(
                fields(run(with(bad))),
                ["upstream[u].tls.server_name"],
                "{bad}"
            );
        }
        let alpn = RawUpstreamTls {
            ca_file: Some("/ca.pem".into()),
            alpn: Some(vec!["http/1.1".into(), String::new()]),
            ..Default::default()
        };
        assert_eq!(fields(run(alpn)), ["upstream[u].tls.alpn"]);
    }
}
