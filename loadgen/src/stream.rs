//! A client byte stream that is plain TCP or TLS over TCP, and its two halves. The
//! WebSocket client and the raw TCP scenarios run on these, so `--tls` changes only how a
//! connection is opened. Plain TCP keeps `TcpStream::into_split` (no lock between halves);
//! TLS splits through `tokio::io::split` (one session, shared by both halves).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub type Tls = TlsStream<TcpStream>;

/// One connected client stream.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// The reading half of a `ClientStream`.
pub enum ClientRead {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<Tls>>),
}

/// The writing half of a `ClientStream`.
pub enum ClientWrite {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<Tls>>),
}

impl From<TcpStream> for ClientStream {
    fn from(s: TcpStream) -> Self {
        ClientStream::Plain(s)
    }
}

impl ClientStream {
    pub fn into_split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

macro_rules! delegate_read {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(ClientStream);
delegate_read!(ClientRead);
delegate_write!(ClientStream);
delegate_write!(ClientWrite);
