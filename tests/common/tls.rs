//! TLS test helpers: a test CA generated per test (rcgen; no private key is committed),
//! certificates written as a mounted Kubernetes TLS Secret (`..data` symlink swap included),
//! and rustls clients that report which certificate the gateway served.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};

pub type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("ringway-tls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    pub pem: String,
}

/// A leaf certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "ringway test CA");
        let cert = p.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca { key, cert, pem }
    }

    /// A leaf for `names` (DNS names; an IP address becomes an IP SAN).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    pub fn leaf_with(&self, names: &[&str], f: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        f(&mut p);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A rustls client trusting this CA, offering `alpn`. It never resumes a session, so every
    /// handshake shows the certificate the gateway serves now (a resumed session reports the
    /// certificate of the session it resumes).
    pub fn client(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        self.client_versions(alpn, rustls::DEFAULT_VERSIONS)
    }

    /// Like [`Ca::client`], but keeping tickets and resuming sessions (rustls' default).
    pub fn client_resuming(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        let mut c = (*self.client(alpn)).clone();
        c.resumption = rustls::client::Resumption::default();
        Arc::new(c)
    }

    pub fn client_versions(
        &self,
        alpn: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut c =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    }
}

/// Writes a pair as `dir/tls.crt` + `dir/tls.key` (plain files).
pub fn write_pair(dir: &Path, leaf: &Leaf) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
}

/// A Secret volume as the kubelet lays it out: `dir/tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`; [`Secret::rotate`] writes a new version and swaps `..data`
/// atomically (rename over the symlink), as the kubelet does.
pub struct Secret {
    pub dir: PathBuf,
    version: usize,
}

impl Secret {
    pub fn new(dir: PathBuf, leaf: &Leaf) -> Secret {
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Secret { dir, version: 0 };
        s.rotate_pems(&leaf.cert_pem, &leaf.key_pem);
        std::os::unix::fs::symlink("..data/tls.crt", s.dir.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", s.dir.join("tls.key")).unwrap();
        s
    }

    pub fn rotate(&mut self, leaf: &Leaf) {
        self.rotate_pems(&leaf.cert_pem, &leaf.key_pem);
    }

    pub fn rotate_pems(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        let vdir = self.dir.join(&v);
        std::fs::create_dir_all(&vdir).unwrap();
        std::fs::write(vdir.join("tls.crt"), cert).unwrap();
        std::fs::write(vdir.join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// Connects with `sni` (a DNS name, or an IP address: then no SNI is sent).
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsClient> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented.
pub fn served(c: &TlsClient) -> Vec<u8> {
    c.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Runs a command (curl, openssl) off the runtime with stdin closed; (status ok, stdout+stderr).
pub async fn run(cmd: &str, args: Vec<String>) -> (bool, String) {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&cmd)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{cmd} not runnable ({e}); .ci/run installs it"));
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    })
    .await
    .unwrap()
}
