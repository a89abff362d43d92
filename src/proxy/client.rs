//! A connection's byte stream, either side: the plain socket, or a TLS session over it (a
//! client of a TLS listener; a backend of an upstream with `[upstream.tls]`). The http path
//! (head reader, bodies, responses) and the hand-off are written once over [`ByteStream`]; a
//! plain connection pays one enum branch per read or write over what it paid before and no
//! heap (the TLS session is boxed), and the tunnel still splices plain pairs (`handoff` picks
//! the copy pump of `tls_tunnel` when either side is TLS).

use std::io::{self, Write};
use std::net::TcpStream;

use crate::io::{self as rio, Driver, Ready, Stream};
use crate::tls::TlsStream;

/// A connection after accept or connect, and after its TLS handshake if it has one.
pub enum Peer<D: Driver> {
    Plain(Stream<D>),
    /// Boxed: a rustls session is ~1 KiB, and most plain connections should not carry its size.
    Tls(Box<TlsStream<D>>),
}

/// What the http path needs from a byte stream, client or backend.
#[allow(async_fn_in_trait)] // workers are single-threaded: these futures never cross threads
pub trait ByteStream {
    /// Appends one read of at most `max` bytes to `buf` (0 = end of stream).
    async fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Writes all of `bytes`.
    async fn write_all(&self, bytes: &[u8]) -> io::Result<()>;
}

/// Every registered socket (a backend connection, a plain client).
impl<R: Ready<TcpStream>> ByteStream for R {
    async fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let start = buf.len();
        buf.resize(start + max.max(1), 0);
        let r = self.read_some(&mut buf[start..]).await;
        buf.truncate(start + *r.as_ref().unwrap_or(&0));
        r
    }

    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.write_with(|mut t| t.write(bytes)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

/// A client connection (after the TLS handshake, for a TLS listener).
pub type Client<D> = Peer<D>;

impl<D: Driver> ByteStream for Peer<D> {
    async fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        match self {
            Client::Plain(s) => rio::read_append::<D>(s, buf, max).await,
            Client::Tls(s) => s.read_append(buf, max).await,
        }
    }

    async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Client::Plain(s) => rio::write_all::<D>(s, bytes).await,
            Client::Tls(s) => s.write_all(bytes).await,
        }
    }
}

impl<D: Driver> Peer<D> {
    /// The TCP socket under the stream.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Client::Plain(s) => s.get_ref(),
            Client::Tls(s) => s.socket(),
        }
    }

    /// Ends the connection so the client reads what was written last (see
    /// `crate::io::linger_close`; a TLS client gets a close_notify first).
    pub async fn linger_close(&self) {
        match self {
            Client::Plain(s) => rio::linger_close::<D>(s).await,
            Client::Tls(s) => s.linger_close().await,
        }
    }

    /// An idle kept-alive connection the peer closed or sent something unasked on (see
    /// `crate::io::peer_closed`): not to be reused. Never waits.
    pub fn peer_closed(&self) -> bool {
        match self {
            Peer::Plain(s) => rio::peer_closed::<D>(s),
            Peer::Tls(s) => s.peer_closed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Epoll, Uring};
    use std::mem::size_of;

    /// A plain backend (or client) costs what its socket did, plus at most the enum's tag word:
    /// the TLS session is boxed, so upstreams without TLS carry no new heap state.
    #[test]
    fn a_plain_peer_is_its_socket_plus_a_tag() {
        assert!(size_of::<Peer<Epoll>>() <= size_of::<Stream<Epoll>>() + 8);
        assert!(size_of::<Peer<Uring>>() <= size_of::<Stream<Uring>>() + 8);
        eprintln!(
            "Stream<Epoll> {} B, Peer<Epoll> {} B; Stream<Uring> {} B, Peer<Uring> {} B",
            size_of::<Stream<Epoll>>(),
            size_of::<Peer<Epoll>>(),
            size_of::<Stream<Uring>>(),
            size_of::<Peer<Uring>>()
        );
    }
}
