//! The TLS byte path over the io seam: the handshake (server side for a terminating listener,
//! client side for an upstream with `tls`), then a decrypted stream. rustls is sans-I/O; here its `read_tls`/`write_tls` run inside `Ready::read_with`/`write_with` on
//! the non-blocking socket, so TLS works the same on io_uring and epoll.
//!
//! The rustls session sits in a `RefCell` and is only ever borrowed inside synchronous code (a
//! readiness closure, a buffer copy), never across an await: the tunnel's two directions run
//! concurrently in one task and each borrows it briefly.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::server::ServerConnection;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig};

use crate::io::{self as rio, Driver, Ready, Stream};

use super::stats::{Outcome, Stats};

/// The answer to plain HTTP sent to a TLS port (nginx answers the same way): short, and the
/// connection closes.
pub const PLAIN_HTTP_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 47\r\nconnection: close\r\n\r\nThis port speaks TLS: use https:// or wss://.\r\n";

/// What [`TlsStream::take_plain`] found.
#[derive(Debug)]
pub enum Plain {
    /// `f` was given bytes and took this many (0: it could not take any now).
    Data(usize),
    /// Nothing decrypted is waiting: read more.
    Empty,
    /// The client ended the stream (close_notify, or a FIN without one).
    End,
    Err(io::Error),
}

/// A connection after a successful handshake: a client's (we are the server) or a backend's
/// (we are the client). Both sides share every method below.
pub struct TlsStream<D: Driver> {
    io: Stream<D>,
    conn: RefCell<Connection>,
    /// The last socket read filled what rustls asked for: more is probably queued (a bulk
    /// stream), so the next read is tried before waiting (a poll round trip saved per record
    /// batch on io_uring; see `Ready::read_with_hint`).
    likely_ready: std::cell::Cell<bool>,
}

/// What one `read_tls` asks of the socket at most (rustls' read size); a read that size
/// suggests more is queued.
const TLS_READ_SIZE: usize = 4096;

/// A fatal `decode_error` alert record (TLS 1.2 record version, as TLS 1.3 sends it too).
const DECODE_ERROR_ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];

/// The TLS record type of a handshake message: the first byte a TLS client sends.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the server handshake on `io` within `timeout`. `pending` holds bytes already read from
/// the client (after a PROXY header); they are the start of its ClientHello. On failure the
/// client got what it should (an alert, or a plaintext 400 for plain HTTP) and `io` is closed
/// when dropped; every outcome is counted in `stats`.
pub async fn handshake<D: Driver>(
    io: Stream<D>,
    config: Arc<ServerConfig>,
    mut pending: Vec<u8>,
    timeout: Duration,
    stats: &Stats,
) -> Result<TlsStream<D>, Outcome> {
    let deadline = std::time::Instant::now() + timeout;
    let r = match rio::timeout(timeout, first_bytes::<D>(&io, &mut pending)).await {
        Err(_) => Err(Outcome::Timeout),
        Ok(false) => Err(Outcome::Closed),
        Ok(true) if pending[0] != HANDSHAKE_RECORD && pending[0].is_ascii_uppercase() => {
            // "GET / HTTP/1.1": someone typed http:// for an https:// port. The answer is
            // written within the handshake time; the graceful close has its own bound.
            if let Ok(Ok(())) =
                rio::timeout(timeout, rio::write_all::<D>(&io, PLAIN_HTTP_400)).await
            {
                stats.count(Outcome::PlainHttp);
                rio::linger_close::<D>(&io).await;
                return Err(Outcome::PlainHttp);
            }
            Err(Outcome::PlainHttp)
        }
        Ok(true) => {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rio::timeout(left, run::<D>(io, config, pending)).await {
                Ok(r) => r,
                Err(_) => Err(Outcome::Timeout),
            }
        }
    };
    match &r {
        Ok(s) => {
            let c = s.conn.borrow();
            let resumed = c.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            stats.succeeded(c.negotiated_cipher_suite().map(|s| s.suite()), resumed);
        }
        Err(o) => stats.count(*o),
    }
    r
}

/// Makes sure `pending` holds the client's first bytes; `false` if it closed first.
async fn first_bytes<D: Driver>(io: &Stream<D>, pending: &mut Vec<u8>) -> bool {
    if !pending.is_empty() {
        return true;
    }
    matches!(rio::read_append::<D>(io, pending, 4096).await, Ok(n) if n > 0)
}

async fn run<D: Driver>(
    io: Stream<D>,
    config: Arc<ServerConfig>,
    pending: Vec<u8>,
) -> Result<TlsStream<D>, Outcome> {
    let conn = ServerConnection::new(config).map_err(|e| Outcome::of(&e))?;
    exchange(io, conn.into(), &pending).await
}

/// Runs the client handshake to a backend on `io` (just connected) within `timeout`, naming
/// `name` (SNI, and what the certificate is verified for). On failure `io` is closed when
/// dropped; the caller counts the outcome (per upstream).
pub async fn connect<D: Driver>(
    io: Stream<D>,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeout: Duration,
) -> Result<TlsStream<D>, Outcome> {
    let conn = ClientConnection::new(config, name).map_err(|e| Outcome::of(&e))?;
    match rio::timeout(timeout, exchange(io, conn.into(), &[])).await {
        Ok(r) => r,
        Err(_) => Err(Outcome::Timeout),
    }
}

/// The handshake messages back and forth until rustls says it is done: `pending` holds the
/// peer's first bytes if some were read already.
async fn exchange<D: Driver>(
    io: Stream<D>,
    conn: Connection,
    pending: &[u8],
) -> Result<TlsStream<D>, Outcome> {
    let s = TlsStream {
        io,
        conn: RefCell::new(conn),
        likely_ready: std::cell::Cell::new(false),
    };
    let mut first: &[u8] = pending;
    while !first.is_empty() {
        let n = s.conn.borrow_mut().read_tls(&mut first).map_err(|e| {
            tracing::debug!(error = %e, "TLS read_tls error");
            Outcome::BadRecord
        })?;
        if n == 0 {
            break;
        }
        s.process().await.map_err(|e| e.1)?;
    }
    loop {
        s.flush().await.map_err(|_| Outcome::Closed)?;
        if !s.conn.borrow().is_handshaking() {
            return Ok(s);
        }
        match s.read_tls().await {
            Ok(0) | Err(_) => return Err(Outcome::Closed),
            Ok(_) => {}
        }
        s.process().await.map_err(|e| e.1)?;
    }
}

/// A TLS protocol error: the io error handed to callers, and how the handshake counts it.
type Failure = (io::Error, Outcome);

impl<D: Driver> TlsStream<D> {
    pub fn socket(&self) -> &TcpStream {
        self.io.get_ref()
    }

    /// One `read_tls` from the socket when it is readable (0 = EOF).
    async fn read_tls(&self) -> io::Result<usize> {
        let n = self
            .io
            .read_with_hint(self.likely_ready.get(), |t| {
                let mut t: &TcpStream = t;
                self.conn.borrow_mut().read_tls(&mut t)
            })
            .await?;
        self.likely_ready.set(n >= TLS_READ_SIZE);
        Ok(n)
    }

    /// Decrypts what `read_tls` took in. On a protocol error the alert rustls queued is sent
    /// (best effort) before the error is returned.
    async fn process(&self) -> Result<(), Failure> {
        let r = self.conn.borrow_mut().process_new_packets().map(|_| ());
        match r {
            Ok(()) => Ok(()),
            // Boxed: the alert is written once, at the end. Inline, its writes would size
            // every read wait of every TLS stream (`fill`: 392 B instead of 128).
            Err(e) => Box::pin(self.fail(e)).await,
        }
    }

    /// Sends the alert for a protocol error (best effort, bounded), then returns the error.
    async fn fail(&self, e: rustls::Error) -> Result<(), Failure> {
        tracing::debug!(error = %e, "TLS protocol error");
        if self.conn.borrow().wants_write() {
            // Bounded: a peer that reads nothing must not hold the connection open.
            let _ = rio::timeout(Duration::from_secs(1), self.flush()).await;
        } else {
            // rustls queues no alert for a few malformed inputs (an oversized handshake
            // length): the client still gets one before the close.
            let _ = rio::write_all::<D>(&self.io, DECODE_ERROR_ALERT).await;
        }
        let outcome = Outcome::of(&e);
        Err((io::Error::new(io::ErrorKind::InvalidData, e), outcome))
    }

    /// Writes every TLS record rustls has queued.
    pub async fn flush(&self) -> io::Result<()> {
        while self.conn.borrow().wants_write() {
            self.io
                .write_with(|t| {
                    let mut t: &TcpStream = t;
                    self.conn.borrow_mut().write_tls(&mut t)
                })
                .await?;
        }
        Ok(())
    }

    /// Hands `f` the decrypted bytes waiting (a non-empty slice) and consumes as many as `f`
    /// returns, without copying them out first (the tunnel writes them straight to the
    /// backend). Never touches the socket: [`TlsStream::fill`] reads more.
    pub fn take_plain(&self, f: impl FnOnce(&[u8]) -> usize) -> Plain {
        use std::io::BufRead;
        let mut c = self.conn.borrow_mut();
        let mut r = c.reader();
        match r.fill_buf() {
            Ok([]) => Plain::End,
            Ok(b) => {
                let n = f(b).min(b.len());
                r.consume(n);
                Plain::Data(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Plain::Empty,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Plain::End,
            Err(e) => Plain::Err(e),
        }
    }

    /// Waits until the socket is readable, reads and decrypts what came. `Ok(false)` at the
    /// socket's EOF (then [`TlsStream::take_plain`] reports `End` once the plaintext is taken).
    ///
    /// Records waiting to be sent (a KeyUpdate answer, or the other direction's data) are
    /// written only as far as the socket takes them now: reading must never wait for the
    /// peer's window, or a tunnel whose peer reads only when it can write (an echo server)
    /// stops both ways. What is left goes with the next [`TlsStream::flush`], which the
    /// writing direction does before its next read.
    pub async fn fill(&self) -> io::Result<bool> {
        self.try_flush()?;
        if self.read_tls().await? == 0 {
            return Ok(false);
        }
        self.process().await.map_err(|e| e.0)?;
        // A KeyUpdate asking for ours (or a close_notify): answer now, not with the next write.
        self.try_flush()?;
        Ok(true)
    }

    /// Writes the queued TLS records the socket takes now, without waiting.
    fn try_flush(&self) -> io::Result<()> {
        while self.conn.borrow().wants_write() {
            let mut t: &TcpStream = self.io.get_ref();
            match self.conn.borrow_mut().write_tls(&mut t) {
                Ok(_) => {}
                Err(e) if crate::sys::would_block(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Encrypts `bytes` into the session's send queue without writing to the socket (the
    /// caller flushes). Returns how many were taken: fewer when the queue is at its limit.
    pub fn queue(&self, bytes: &[u8]) -> io::Result<usize> {
        self.conn.borrow_mut().writer().write(bytes)
    }

    /// Reads decrypted bytes into `buf` (at least one, or 0 at the end of the stream: a
    /// close_notify, or a TCP FIN without one, which many clients send).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.borrow_mut().reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // A KeyUpdate or ticket may want an answer before more data comes.
            self.flush().await?;
            if self.read_tls().await? == 0 {
                // EOF: let rustls see it, then the reader reports the end.
                let _ = self.conn.borrow_mut().process_new_packets();
                return match self.conn.borrow_mut().reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    Err(e) => Err(e),
                };
            }
            self.process().await.map_err(|e| e.0)?;
        }
    }

    /// Appends one read of at most `max` decrypted bytes to `buf` (0 = end of stream).
    pub async fn read_append(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        let start = buf.len();
        buf.resize(start + max.max(1), 0);
        let r = self.read(&mut buf[start..]).await;
        buf.truncate(start + *r.as_ref().unwrap_or(&0));
        r
    }

    /// Encrypts and writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.conn.borrow_mut().writer().write(data)?;
            if n == 0 && !self.conn.borrow().wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
            self.flush().await?;
        }
        Ok(())
    }

    /// Ends the write direction: close_notify, then FIN.
    pub async fn shutdown_write(&self) -> io::Result<()> {
        self.conn.borrow_mut().send_close_notify();
        let r = self.flush().await;
        let _ = self.io.get_ref().shutdown(Shutdown::Write);
        r
    }

    /// Ends the connection so the client reads what was written last (like
    /// `crate::io::linger_close`): close_notify and FIN, then read and discard what the client
    /// still sends, bounded in bytes and time.
    pub async fn linger_close(&self) {
        let _ = self.shutdown_write().await;
        let drain = async {
            let mut sink = [0u8; 2048];
            let mut left = 64 * 1024usize;
            while left > 0 {
                match self.io.read_with(|mut t| t.read(&mut sink)).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = rio::timeout(Duration::from_secs(1), drain).await;
    }

    /// The negotiated protocol version and ALPN, for logs.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.conn.borrow().alpn_protocol().map(|p| p.to_vec())
    }

    /// The session resumed an earlier one (no certificate exchange).
    pub fn resumed(&self) -> bool {
        self.conn.borrow().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// An idle kept-alive connection the peer closed, or on which it sent something unasked
    /// (decrypted bytes waiting, or a record not read yet that is not just a session ticket
    /// we can take now): not to be reused. Never waits.
    pub fn peer_closed(&self) -> bool {
        // Records that came while idle (TLS 1.3 session tickets, a close_notify): take them in.
        loop {
            let r = self.io.get_ref().peek(&mut [0u8; 1]);
            match r {
                Err(e) if crate::sys::would_block(&e) => break,
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
            let mut t: &TcpStream = self.io.get_ref();
            let mut c = self.conn.borrow_mut();
            match c.read_tls(&mut t) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
            if c.process_new_packets().is_err() {
                return true;
            }
        }
        !matches!(self.take_plain(|_| 0), Plain::Empty)
    }
}
