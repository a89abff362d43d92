//! The client's byte stream: the plain socket, or a TLS session over it. The http path (head
//! reader, bodies, responses) and the hand-off are written once over [`ByteStream`]; a plain
//! connection pays one enum branch per read or write over what it paid before, and the tunnel
//! still splices plain connections (`handoff` picks the copy pump of `tls_tunnel` for TLS ones).

use std::io::{self, Write};
use std::net::TcpStream;

use crate::io::{self as rio, Driver, Ready, Stream};
use crate::tls::TlsStream;

/// A client connection after accept (and after the TLS handshake, for a TLS listener).
pub enum Client<D: Driver> {
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

impl<D: Driver> ByteStream for Client<D> {
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

impl<D: Driver> Client<D> {
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
}
