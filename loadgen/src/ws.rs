//! A small RFC 6455 implementation: the frame codec (sans-I/O), a buffered frame reader
//! and writer over any tokio stream, and the client handshake.
//!
//! It exists so the load generator is cheap per message: no per-frame allocation on the
//! hot path (`recv_into` reuses the caller's buffer), masking eight bytes at a time, and one
//! `write_all` per frame. The echo backend (`crate::backend`) reuses the same reader and
//! writer on the server side.
//!
//! Masking keys come from a per-connection xorshift generator seeded from the clock and a
//! process-wide counter: unpredictable enough for a load generator talking to its own
//! loopback targets, not a CSPRNG.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::stream::{ClientRead, ClientStream, ClientWrite};
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The GUID of RFC 6455 §1.3 that the accept key is derived with.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest response or request head we read (bytes); longer heads are an error.
pub const MAX_HEAD: usize = 16 * 1024;
/// Default largest message we assemble (bytes). Frames past it are a protocol error,
/// so a broken peer cannot make us allocate without bound.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// `Sec-WebSocket-Accept` for a given `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// Everything that can go wrong on a WebSocket connection, classified so reports can count
/// errors by kind.
#[derive(Debug)]
pub enum WsError {
    Io(io::Error),
    /// The server answered the upgrade with something other than 101.
    Status(u16),
    /// The 101 carried a `Sec-WebSocket-Accept` that does not match our key.
    BadAccept {
        expected: String,
        got: Option<String>,
    },
    /// The head was malformed or missing `Upgrade`/`Connection`.
    BadHandshake(&'static str),
    /// A frame broke RFC 6455.
    Protocol(&'static str),
    /// A message exceeded the configured maximum.
    TooBig(u64),
    /// The peer closed the TCP connection.
    Closed,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Io(e) => write!(f, "io: {e}"),
            WsError::Status(s) => write!(f, "handshake refused with status {s}"),
            WsError::BadAccept { expected, got } => {
                write!(
                    f,
                    "wrong Sec-WebSocket-Accept: expected {expected}, got {got:?}"
                )
            }
            WsError::BadHandshake(m) => write!(f, "bad handshake: {m}"),
            WsError::Protocol(m) => write!(f, "protocol error: {m}"),
            WsError::TooBig(n) => write!(f, "message of {n} bytes exceeds the limit"),
            WsError::Closed => write!(f, "connection closed by peer"),
        }
    }
}

impl std::error::Error for WsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WsError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WsError::Closed
        } else {
            WsError::Io(e)
        }
    }
}

impl WsError {
    /// A short stable name for counting errors by kind in reports.
    pub fn kind(&self) -> String {
        match self {
            WsError::Io(e) => crate::limits::io_error_kind(e),
            WsError::Status(s) => format!("status_{s}"),
            WsError::BadAccept { .. } => "bad_accept".into(),
            WsError::BadHandshake(_) => "bad_handshake".into(),
            WsError::Protocol(_) => "protocol".into(),
            WsError::TooBig(_) => "too_big".into(),
            WsError::Closed => "closed".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl Opcode {
    fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header. `header_len + payload_len` bytes make the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    pub header_len: usize,
}

/// Parses a frame header from the front of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(WsError::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(b);
            if l >> 63 != 0 {
                return Err(WsError::Protocol("64-bit length with the top bit set"));
            }
            (l, 10)
        }
        l => (l as u64, 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(WsError::Protocol("fragmented or oversized control frame"));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin,
        opcode,
        mask,
        payload_len: len,
        header_len: pos,
    }))
}

/// Appends a frame header to `out`, choosing the shortest of the three length encodings.
pub fn encode_head(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    out.push(if fin { 0x80 } else { 0 } | opcode as u8);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// Appends a whole frame to `out`; with a mask the payload is masked as it is copied.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    encode_head(out, fin, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        apply_mask(&mut out[start..], k);
    }
}

/// XORs `data` with the masking key, eight bytes per step. Masking is its own inverse.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_ne_bytes(w) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // Each chunk is 8 bytes, so the remainder starts at a multiple of 4 of the key.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A fast non-cryptographic generator (xorshift64*), for masking keys, handshake keys and
/// test payloads.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

static SEED_COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // splitmix64 step so that nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }
    /// Seeded from the clock and a process-wide counter.
    pub fn from_entropy() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let c = SEED_COUNTER.fetch_add(0x6A09_E667_F3BC_C909, Ordering::Relaxed);
        XorShift::new(nanos ^ c)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// What `recv_into` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// A complete data message, now in the caller's buffer.
    Text,
    Binary,
    /// Control frames carry their (≤125 byte) payload themselves.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Close with its status code (if any) and reason.
    Close(Option<u16>, Vec<u8>),
}

/// A high-level message, for callers that prefer owned values over the reusable buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// Reads frames from a stream through one growable buffer. Payloads of masked frames are
/// unmasked in place, so callers always see plain bytes.
pub struct WsReader<R> {
    io: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    max_message: usize,
    /// Opcode of the fragmented message being assembled, if any.
    fragment: Option<Opcode>,
}

/// A frame borrowed from the reader's buffer.
pub struct Frame<'a> {
    pub head: FrameHead,
    pub payload: &'a [u8],
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// `leftover` are bytes already read past the handshake head.
    pub fn new(io: R, leftover: &[u8], max_message: usize) -> Self {
        let mut buf = vec![0u8; leftover.len().max(4096)];
        buf[..leftover.len()].copy_from_slice(leftover);
        WsReader {
            io,
            buf,
            pos: 0,
            end: leftover.len(),
            max_message,
            fragment: None,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// Reads more bytes so that at least `need` bytes are buffered past `pos`.
    async fn fill(&mut self, need: usize) -> Result<(), WsError> {
        while self.end - self.pos < need {
            if self.pos + need > self.buf.len() {
                // Compact, then grow if the frame is bigger than the buffer.
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
                if need > self.buf.len() {
                    let new_len = need.max(self.buf.len() * 2);
                    self.buf.resize(new_len, 0);
                }
            }
            let n = self.io.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(WsError::Closed);
            }
            self.end += n;
        }
        Ok(())
    }

    /// The next frame, whole. Used by the echo backend, which forwards frames one by one.
    pub async fn next_frame(&mut self) -> Result<Frame<'_>, WsError> {
        let head = loop {
            match parse_head(&self.buf[self.pos..self.end])? {
                Some(h) => break h,
                None => {
                    let have = self.end - self.pos;
                    self.fill(have + 1).await?;
                }
            }
        };
        if head.payload_len > self.max_message as u64 {
            return Err(WsError::TooBig(head.payload_len));
        }
        let total = head.header_len + head.payload_len as usize;
        self.fill(total).await?;
        let start = self.pos + head.header_len;
        let stop = self.pos + total;
        self.pos = stop;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        let payload = &mut self.buf[start..stop];
        if let Some(k) = head.mask {
            apply_mask(payload, k);
        }
        Ok(Frame { head, payload })
    }

    /// Receives the next message into `out` (cleared first unless a fragmented message is
    /// in progress), assembling fragments. Control frames interleaved with fragments are
    /// returned as they come; call again with the same `out` to continue the message.
    pub async fn recv_into(&mut self, out: &mut Vec<u8>) -> Result<Recv, WsError> {
        if self.fragment.is_none() {
            out.clear();
        }
        let max = self.max_message;
        loop {
            let in_fragment = self.fragment;
            let f = self.next_frame().await?;
            let (head, payload) = (f.head, f.payload);
            match head.opcode {
                Opcode::Ping => return Ok(Recv::Ping(payload.to_vec())),
                Opcode::Pong => return Ok(Recv::Pong(payload.to_vec())),
                Opcode::Close => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let reason = payload.get(2..).unwrap_or(&[]).to_vec();
                    return Ok(Recv::Close(code, reason));
                }
                Opcode::Continuation => {
                    let Some(op) = in_fragment else {
                        return Err(WsError::Protocol("continuation without a started message"));
                    };
                    if out.len() + payload.len() > max {
                        return Err(WsError::TooBig((out.len() + payload.len()) as u64));
                    }
                    out.extend_from_slice(payload);
                    if head.fin {
                        self.fragment = None;
                        return Ok(if op == Opcode::Text {
                            Recv::Text
                        } else {
                            Recv::Binary
                        });
                    }
                }
                op @ (Opcode::Text | Opcode::Binary) => {
                    if in_fragment.is_some() {
                        return Err(WsError::Protocol(
                            "new data frame inside a fragmented message",
                        ));
                    }
                    out.extend_from_slice(payload);
                    if head.fin {
                        return Ok(if op == Opcode::Text {
                            Recv::Text
                        } else {
                            Recv::Binary
                        });
                    }
                    self.fragment = Some(op);
                }
            }
        }
    }
}

/// Writes frames through one reusable buffer, one `write_all` per frame. With `rng` set
/// (client side) every frame is masked with a fresh key.
pub struct WsWriter<W> {
    io: W,
    buf: Vec<u8>,
    rng: Option<XorShift>,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    pub fn new(io: W, client: bool) -> Self {
        WsWriter {
            io,
            buf: Vec::with_capacity(256),
            rng: client.then(XorShift::from_entropy),
        }
    }

    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: &[u8],
    ) -> Result<(), WsError> {
        self.buf.clear();
        let mask = self.rng.as_mut().map(|r| r.mask());
        encode_frame(&mut self.buf, fin, opcode, payload, mask);
        self.io.write_all(&self.buf).await?;
        // TLS may hold encrypted bytes until flushed; for plain TCP this is a no-op.
        self.io.flush().await?;
        Ok(())
    }

    /// Writes bytes that are already complete frames (for example pre-masked bulk frames).
    pub async fn send_raw(&mut self, frames: &[u8]) -> Result<(), WsError> {
        self.io.write_all(frames).await?;
        self.io.flush().await?;
        Ok(())
    }

    pub async fn send_close(&mut self, code: Option<u16>, reason: &[u8]) -> Result<(), WsError> {
        let mut p = Vec::with_capacity(2 + reason.len());
        if let Some(c) = code {
            p.extend_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&reason[..reason.len().min(123)]);
        }
        self.send_frame(true, Opcode::Close, &p).await
    }

    pub async fn shutdown(&mut self) -> Result<(), WsError> {
        self.io.shutdown().await?;
        Ok(())
    }

    pub fn rng(&mut self) -> Option<&mut XorShift> {
        self.rng.as_mut()
    }
}

/// The server's answer to our upgrade request.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits an HTTP head into its first line and headers. Lenient about whitespace,
/// strict about structure.
pub fn parse_http_head(head: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let first = lines.next()?.to_string();
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Some((first, headers))
}

/// Position just past the `\r\n\r\n` that ends a head, if present.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads an HTTP head (up to `MAX_HEAD`), returning it and any bytes read past it.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(usize, Vec<u8>), WsError> {
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(buf) {
            let rest = buf[end..].to_vec();
            return Ok((end, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(WsError::BadHandshake("head too large"));
        }
        let n = io.read(&mut tmp).await?;
        if n == 0 {
            return Err(WsError::Closed);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn header_has_token(v: Option<&str>, token: &str) -> bool {
    v.map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// A WebSocket client connection. `recv` answers pings by itself.
pub struct WsClient {
    pub reader: WsReader<ClientRead>,
    pub writer: WsWriter<ClientWrite>,
}

impl WsClient {
    /// Connects to `addr` (host:port) and upgrades `path`, with extra request headers.
    /// Bounded by a 10 s timeout for connect + handshake.
    pub async fn connect(
        addr: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
    ) -> Result<(WsClient, Response), WsError> {
        let fut = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            WsClient::handshake(stream, addr, path, extra_headers).await
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(r) => r,
            Err(_) => Err(WsError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect/handshake timed out",
            ))),
        }
    }

    /// Performs the upgrade on an already connected stream, plain TCP or TLS (the load
    /// scenarios bind their own source address first). Verifies status 101, `Upgrade`,
    /// `Connection` and `Sec-WebSocket-Accept`.
    pub async fn handshake(
        stream: impl Into<ClientStream>,
        host: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
    ) -> Result<(WsClient, Response), WsError> {
        let (mut rd, mut wr) = stream.into().into_split();
        let mut rng = XorShift::from_entropy();
        let mut raw = [0u8; 16];
        rng.fill(&mut raw);
        let key = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (n, v) in extra_headers {
            req.push_str(n);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        wr.write_all(req.as_bytes()).await?;
        wr.flush().await?;

        let mut buf = Vec::with_capacity(512);
        let (end, leftover) = read_head(&mut rd, &mut buf).await?;
        let (status_line, headers) = parse_http_head(&buf[..end])
            .ok_or(WsError::BadHandshake("unparsable response head"))?;
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(WsError::BadHandshake("not an HTTP/1.x response"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or(WsError::BadHandshake("no status code"))?;
        let resp = Response { status, headers };
        if status != 101 {
            return Err(WsError::Status(status));
        }
        if !header_has_token(resp.header("upgrade"), "websocket") {
            return Err(WsError::BadHandshake("101 without Upgrade: websocket"));
        }
        if !header_has_token(resp.header("connection"), "upgrade") {
            return Err(WsError::BadHandshake("101 without Connection: upgrade"));
        }
        let expected = accept_key(&key);
        let got = resp.header("sec-websocket-accept");
        if got != Some(expected.as_str()) {
            return Err(WsError::BadAccept {
                expected,
                got: got.map(str::to_string),
            });
        }
        let client = WsClient {
            reader: WsReader::new(rd, &leftover, DEFAULT_MAX_MESSAGE),
            writer: WsWriter {
                io: wr,
                buf: Vec::with_capacity(256),
                rng: Some(rng),
            },
        };
        Ok((client, resp))
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), WsError> {
        match msg {
            Message::Text(t) => {
                self.writer
                    .send_frame(true, Opcode::Text, t.as_bytes())
                    .await
            }
            Message::Binary(b) => self.writer.send_frame(true, Opcode::Binary, b).await,
            Message::Ping(p) => self.writer.send_frame(true, Opcode::Ping, p).await,
            Message::Pong(p) => self.writer.send_frame(true, Opcode::Pong, p).await,
            Message::Close(c, r) => self.writer.send_close(*c, r.as_bytes()).await,
        }
    }

    pub async fn send_text(&mut self, t: &str) -> Result<(), WsError> {
        self.writer
            .send_frame(true, Opcode::Text, t.as_bytes())
            .await
    }

    pub async fn send_binary(&mut self, b: &[u8]) -> Result<(), WsError> {
        self.writer.send_frame(true, Opcode::Binary, b).await
    }

    /// Receives a data message into `out`; pings are answered and pongs skipped on the way.
    /// Returns `Recv::Text`, `Recv::Binary` or `Recv::Close`.
    pub async fn recv_into(&mut self, out: &mut Vec<u8>) -> Result<Recv, WsError> {
        loop {
            match self.reader.recv_into(out).await? {
                Recv::Ping(p) => self.writer.send_frame(true, Opcode::Pong, &p).await?,
                Recv::Pong(_) => {}
                other => return Ok(other),
            }
        }
    }

    /// Receives the next message, owned. Pings are answered automatically and also not
    /// returned; pongs are returned (so a caller that pinged can see the answer).
    pub async fn recv(&mut self) -> Result<Message, WsError> {
        let mut out = Vec::new();
        loop {
            return Ok(match self.reader.recv_into(&mut out).await? {
                Recv::Text => Message::Text(
                    String::from_utf8(out)
                        .map_err(|_| WsError::Protocol("invalid UTF-8 in text"))?,
                ),
                Recv::Binary => Message::Binary(out),
                Recv::Ping(p) => {
                    self.writer.send_frame(true, Opcode::Pong, &p).await?;
                    continue;
                }
                Recv::Pong(p) => Message::Pong(p),
                Recv::Close(c, r) => Message::Close(c, String::from_utf8_lossy(&r).into_owned()),
            });
        }
    }

    /// Sends a close frame and waits (up to `wait`) for the server's close; then drops.
    pub async fn close(mut self, code: u16, wait: Duration) -> Result<(), WsError> {
        self.writer.send_close(Some(code), b"").await?;
        let mut out = Vec::new();
        let r = tokio::time::timeout(wait, async {
            loop {
                if let Recv::Close(..) = self.reader.recv_into(&mut out).await? {
                    return Ok::<(), WsError>(());
                }
            }
        })
        .await;
        match r {
            Ok(r) => r,
            Err(_) => Err(WsError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "close not answered",
            ))),
        }
    }

    pub fn into_split(self) -> (WsReader<ClientRead>, WsWriter<ClientWrite>) {
        (self.reader, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn length_encodings_round_trip() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut out = Vec::new();
                encode_frame(&mut out, true, Opcode::Binary, &payload, mask);
                let h = parse_head(&out).unwrap().unwrap();
                let expect_hlen = match len {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(h.header_len, expect_hlen, "len {len}");
                assert_eq!(h.payload_len, len as u64);
                let mut p = out[h.header_len..].to_vec();
                if let Some(k) = h.mask {
                    apply_mask(&mut p, k);
                }
                assert_eq!(p, payload);
                // Every strict prefix of the header asks for more bytes.
                for cut in 0..h.header_len {
                    assert!(parse_head(&out[..cut]).unwrap().is_none());
                }
            }
        }
    }

    #[test]
    fn mask_matches_bytewise_definition() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn bad_frames_are_rejected() {
        assert!(parse_head(&[0x80 | 0x40 | 1, 0]).is_err()); // RSV1
        assert!(parse_head(&[0x83, 0]).is_err()); // opcode 3
        assert!(parse_head(&[0x09, 0]).is_err()); // fragmented ping
        assert!(parse_head(&[0x89, 126, 0, 200]).is_err()); // ping > 125
    }
}
