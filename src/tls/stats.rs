//! TLS counters: handshakes by result, successful ones by protocol version and cipher suite,
//! resumed sessions, certificate reloads. Process-wide atomics rather than per-core slots: a
//! handshake costs hundreds of microseconds of crypto, next to which one relaxed atomic add
//! on a shared line is noise (the per-message path never touches these).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, ProtocolVersion};

/// Why a handshake ended. `Ok` is the only success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// `timeouts.tls_handshake` passed.
    Timeout,
    /// The client sent a plain HTTP request to the TLS port (answered 400).
    PlainHttp,
    /// The client closed or reset during the handshake.
    Closed,
    /// `refuse_unknown_sni` and the SNI named no certificate.
    UnknownSni,
    /// The client offered ALPN protocols and none is the listener's.
    NoAlpn,
    /// No common protocol version or cipher suite (e.g. TLS 1.2 only to a `min_version = "1.3"`
    /// listener).
    Incompatible,
    /// Not TLS: a record or message that does not parse (garbage on the port).
    BadRecord,
    /// The peer sent an alert (a client that did not trust our certificate, usually; a backend
    /// that wanted a client certificate).
    AlertReceived,
    /// Upstream TLS only: the backend's certificate did not verify (unknown CA, wrong name,
    /// expired). Not in [`Outcome::ALL`]: a listener never verifies a peer.
    BadCertificate,
    /// Any other protocol error.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::Timeout,
        Outcome::PlainHttp,
        Outcome::Closed,
        Outcome::UnknownSni,
        Outcome::NoAlpn,
        Outcome::Incompatible,
        Outcome::BadRecord,
        Outcome::AlertReceived,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::PlainHttp => "plain_http",
            Outcome::Closed => "closed",
            Outcome::UnknownSni => "unknown_sni",
            Outcome::NoAlpn => "no_alpn",
            Outcome::Incompatible => "incompatible",
            Outcome::BadRecord => "bad_record",
            Outcome::AlertReceived => "alert_received",
            Outcome::BadCertificate => "bad_certificate",
            Outcome::Error => "error",
        }
    }

    /// Classifies a rustls error from `process_new_packets`.
    pub fn of(e: &rustls::Error) -> Outcome {
        use rustls::Error as E;
        match e {
            E::NoApplicationProtocol => Outcome::NoAlpn,
            E::PeerIncompatible(_) => Outcome::Incompatible,
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => Outcome::BadRecord,
            E::InappropriateHandshakeMessage { .. } => Outcome::BadRecord,
            E::AlertReceived(_) => Outcome::AlertReceived,
            E::InvalidCertificate(_) => Outcome::BadCertificate,
            // What rustls says when the certificate resolver returns none.
            E::General(m) if m.contains("certificate") => Outcome::UnknownSni,
            _ => Outcome::Error,
        }
    }
}

/// Successful handshakes of one (version, suite).
struct BySuite {
    version: &'static str,
    suite: CipherSuite,
    name: &'static str,
    n: AtomicU64,
}

pub struct Stats {
    results: [AtomicU64; Outcome::ALL.len()],
    ok: Vec<BySuite>,
    pub resumed: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Stats {
    pub fn new(provider: &CryptoProvider) -> Stats {
        let ok = provider
            .cipher_suites
            .iter()
            .map(|s| BySuite {
                version: match s.version().version {
                    ProtocolVersion::TLSv1_3 => "TLSv1.3",
                    _ => "TLSv1.2",
                },
                suite: s.suite(),
                name: s.suite().as_str().unwrap_or("unknown"),
                n: AtomicU64::new(0),
            })
            .collect();
        Stats {
            results: Default::default(),
            ok,
            resumed: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    pub fn count(&self, o: Outcome) {
        let i = Outcome::ALL
            .iter()
            .position(|&x| x == o)
            .unwrap_or(Outcome::ALL.len() - 1);
        self.results[i].fetch_add(1, Relaxed);
    }

    pub fn succeeded(&self, suite: Option<CipherSuite>, resumed: bool) {
        self.count(Outcome::Ok);
        if let Some(s) = self.ok.iter().find(|b| Some(b.suite) == suite) {
            s.n.fetch_add(1, Relaxed);
        }
        if resumed {
            self.resumed.fetch_add(1, Relaxed);
        }
    }

    /// `(result, count)` for every outcome.
    pub fn results(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Outcome::ALL
            .iter()
            .zip(&self.results)
            .map(|(o, n)| (o.as_str(), n.load(Relaxed)))
    }

    /// `(version, cipher, count)` for every suite the provider offers.
    pub fn suites(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.ok
            .iter()
            .map(|s| (s.version, s.name, s.n.load(Relaxed)))
    }
}
