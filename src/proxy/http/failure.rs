//! The one failure path of a request: whatever phase fails, `Conn::fail` counts the error once,
//! answers the client when an answer is still possible, and ends the connection so the answer is
//! read (FIN, bounded drain, close: never a reset with the status unread).

use crate::error::Kind;
use crate::io::Driver;
use crate::proto;
use crate::proxy::client::ByteStream;

use super::Conn;

/// Why a request could not go on. Every failure ends the client connection: after one, the
/// framing of what either side sent is no longer accounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    /// The status to answer with, if the client can still get one (no final response head
    /// has been relayed yet, and the client is there to read it).
    pub status: Option<u16>,
    /// Already counted where it happened (each failed connect attempt is counted by
    /// `connect`): `fail` must not count it again.
    pub counted: bool,
}

impl Failure {
    /// A failure answered with the kind's own status (none for resets and idle ends).
    pub fn new(kind: Kind) -> Failure {
        Failure {
            kind,
            status: kind.status(),
            counted: false,
        }
    }

    /// A failure answered with `status` (e.g. a parser's 426 for a bad handshake).
    pub fn answered(kind: Kind, status: u16) -> Failure {
        Failure {
            kind,
            status: Some(status),
            counted: false,
        }
    }

    /// A failure after which nothing can be answered (the response already started, or the
    /// client is gone).
    pub fn quiet(kind: Kind) -> Failure {
        Failure {
            kind,
            status: None,
            counted: false,
        }
    }

    pub fn already_counted(mut self) -> Failure {
        self.counted = true;
        self
    }
}

impl<D: Driver> Conn<'_, D> {
    /// Counts, answers and closes. The only place a request's error is counted.
    pub(super) async fn fail(self, f: Failure) {
        let w = self.w;
        if !f.counted {
            w.error(f.kind);
        }
        if let Some(ui) = self.cur.upgrade {
            self.gen.upstreams[ui].counters.upgrade(w.id, false);
        }
        tracing::debug!(
            client = %self.peer,
            kind = f.kind.as_str(),
            side = f.kind.side().as_str(),
            "request failed"
        );
        if let Some(status) = f.status.filter(|_| !self.cur.responded) {
            let bytes = error_bytes(status, self.cur.head_method);
            if self.client.write_all(bytes).await.is_err() {
                return;
            }
        }
        self.client.linger_close().await;
    }
}

/// The canned error, without its body when answering HEAD (RFC 9110 §9.3.2: a response to
/// HEAD has none; its Content-Length still tells the size a GET would get).
pub fn error_bytes(status: u16, head_method: bool) -> &'static [u8] {
    let full = proto::error_response(status);
    if !head_method {
        return full;
    }
    match full.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &full[..end + 4],
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_errors_have_no_body() {
        let full = error_bytes(502, false);
        let head = error_bytes(502, true);
        assert!(full.starts_with(head));
        assert!(head.ends_with(b"\r\n\r\n"));
        assert!(full.len() > head.len(), "the GET answer has a body");
        assert!(std::str::from_utf8(head)
            .unwrap()
            .contains("Content-Length"));
    }

    #[test]
    fn statuses_follow_the_kind() {
        assert_eq!(Failure::new(Kind::BodyTimeout).status, Some(408));
        assert_eq!(Failure::new(Kind::BackendTimeout).status, Some(504));
        assert_eq!(Failure::new(Kind::ClientReset).status, None);
        assert_eq!(Failure::quiet(Kind::NoBackend).status, None);
        assert!(Failure::new(Kind::ConnectRefused).already_counted().counted);
    }
}
