//! Loading one certificate pair (PEM chain + PEM key) into what rustls serves, with the checks
//! an operator needs before a certificate goes live: the files exist and parse, the key belongs
//! to the certificate, and the certificate has not expired. The same function serves
//! `ringway check`, startup, SIGHUP and the file watcher, so they all refuse the same things.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::CertFiles;

use super::der;

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The leaf's subjectAltName DNS names (lower case; `*.example.com` kept as written).
    pub names: Vec<String>,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// What metrics and logs call it: its first DNS name, else the certificate file's path.
    pub label: String,
}

/// Reads and checks one pair. `now` is Unix seconds (a parameter, so tests can move it).
pub fn load(files: &CertFiles, provider: &CryptoProvider, now: i64) -> Result<Loaded, String> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: garbled PEM: {e}", files.cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{}: no PEM CERTIFICATE block in the file",
            files.cert.display()
        ));
    };
    let (Some(not_after), Some(mut names)) = (der::not_after(leaf), der::dns_names(leaf)) else {
        return Err(format!(
            "{}: the certificate is not valid X.509 DER",
            files.cert.display()
        ));
    };
    if not_after <= now {
        return Err(format!(
            "{}: the certificate expired {} s ago (notAfter {not_after} Unix time)",
            files.cert.display(),
            now - not_after
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            files.key.display()
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unsupported private key: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    names.dedup();
    let label = names
        .first()
        .cloned()
        .unwrap_or_else(|| files.cert.display().to_string());
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        not_after,
        label,
    })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    struct Pair {
        dir: std::path::PathBuf,
        files: CertFiles,
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn write_pair(tag: &str, cert: &str, key: &str) -> Pair {
        let dir = std::env::temp_dir().join(format!("ringway-certs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        Pair {
            files: CertFiles {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
            },
            dir,
        }
    }

    fn self_signed(names: &[&str]) -> (String, String) {
        let k = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (k.cert.pem(), k.key_pair.serialize_pem())
    }

    #[test]
    fn loads_names_and_expiry() {
        let (c, k) = self_signed(&["chat.example.com", "*.example.com"]);
        let p = write_pair("ok", &c, &k);
        let l = load(&p.files, &provider(), now()).unwrap();
        assert_eq!(l.names, ["chat.example.com", "*.example.com"]);
        assert_eq!(l.label, "chat.example.com");
        assert!(l.not_after > now());
        // rcgen's default notAfter is 4096-01-01.
        assert_eq!(l.not_after, 67_090_118_400);
    }

    #[test]
    fn refuses_what_an_operator_gets_wrong() {
        let (c1, _k1) = self_signed(&["a.test"]);
        let (_c2, k2) = self_signed(&["b.test"]);
        let mismatched = write_pair("mismatch", &c1, &k2);
        let e = load(&mismatched.files, &provider(), now()).unwrap_err();
        assert!(e.contains("does not belong to"), "{e}");

        let (c, k) = self_signed(&["a.test"]);
        let p = write_pair("expired", &c, &k);
        let e = load(&p.files, &provider(), 67_090_118_401).unwrap_err();
        assert!(e.contains("expired"), "{e}");

        let garbled = write_pair(
            "garbled",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            &k,
        );
        let e = load(&garbled.files, &provider(), now()).unwrap_err();
        assert!(e.contains("garbled") || e.contains("not valid"), "{e}");

        let empty = write_pair("empty", "hello\n", &k);
        let e = load(&empty.files, &provider(), now()).unwrap_err();
        assert!(e.contains("no PEM CERTIFICATE"), "{e}");

        let nokey = write_pair("nokey", &c, "nothing here\n");
        let e = load(&nokey.files, &provider(), now()).unwrap_err();
        assert!(e.contains("private key"), "{e}");

        let missing = CertFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
        };
        let e = load(&missing, &provider(), now()).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn der_prefixes_never_panic() {
        let (c, _) = self_signed(&["a.test"]);
        let der = CertificateDer::from_pem_slice(c.as_bytes()).unwrap();
        for n in 0..der.len() {
            let _ = der::not_after(&der[..n]);
            let _ = der::dns_names(&der[..n]);
        }
        let mut flipped = der.to_vec();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x80;
            let _ = der::not_after(&flipped);
            let _ = der::dns_names(&flipped);
            flipped[i] ^= 0x80;
        }
    }
}
