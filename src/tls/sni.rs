//! Choosing a listener's certificate by the ClientHello's SNI: an exact name first, then a
//! wildcard covering its first label (`*.example.com` covers `a.example.com`, not
//! `a.b.example.com` nor `example.com`, as RFC 6125 §6.4.3), then the default (the first
//! certificate) — unless `refuse_unknown_sni`, which fails the handshake for a name no
//! certificate covers. A client that sends no SNI (an IP address, old devices) gets the default.
//!
//! Built off the hot path (startup, reload, file watcher) and immutable afterwards; a lookup is
//! one or two hash probes.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::Loaded;

#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    refuse_unknown: bool,
}

impl SniResolver {
    /// `certs` in configured order (never empty): an earlier certificate wins a name two cover.
    pub fn new(certs: &[Loaded], refuse_unknown: bool) -> Option<SniResolver> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()),
                    None => exact.entry(n.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
            refuse_unknown,
        })
    }

    /// The certificate for `sni` (`None` = refuse the handshake).
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return Some(self.default.clone());
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(k) = self.exact.get(name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        (!self.refuse_unknown).then(|| self.default.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::sign::any_supported_type;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn loaded(names: &[&str]) -> Loaded {
        let k = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let key = PrivateKeyDer::try_from(k.key_pair.serialize_der()).unwrap();
        Loaded {
            key: Arc::new(CertifiedKey::new(
                vec![CertificateDer::from(k.cert.der().to_vec())],
                any_supported_type(&key).unwrap(),
            )),
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after: 0,
            label: names[0].into(),
        }
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let certs = [
            loaded(&["default.test"]),
            loaded(&["chat.example.com"]),
            loaded(&["*.example.com"]),
        ];
        let r = SniResolver::new(&certs, false).unwrap();
        let is = |sni: Option<&str>, i: usize| {
            let got = r.pick(sni).unwrap();
            assert!(
                Arc::ptr_eq(&got, &certs[i].key),
                "{sni:?} should get cert {i}"
            );
        };
        is(None, 0);
        is(Some("chat.example.com"), 1);
        is(Some("CHAT.Example.com"), 1);
        is(Some("chat.example.com."), 1);
        is(Some("api.example.com"), 2);
        is(Some("a.b.example.com"), 0); // a wildcard covers one label
        is(Some("example.com"), 0);
        is(Some("other.test"), 0);

        let strict = SniResolver::new(&certs, true).unwrap();
        assert!(strict.pick(Some("other.test")).is_none());
        assert!(strict.pick(Some("a.b.example.com")).is_none());
        assert!(strict.pick(Some("api.example.com")).is_some());
        assert!(strict.pick(None).is_some(), "no SNI gets the default");
    }

    #[test]
    fn first_certificate_wins_a_shared_name() {
        let certs = [loaded(&["a.test"]), loaded(&["a.test", "b.test"])];
        let r = SniResolver::new(&certs, false).unwrap();
        assert!(Arc::ptr_eq(&r.pick(Some("a.test")).unwrap(), &certs[0].key));
        assert!(Arc::ptr_eq(&r.pick(Some("b.test")).unwrap(), &certs[1].key));
        assert!(SniResolver::new(&[], false).is_none());
    }
}
