//! A cheap echo backend: the thing a gateway forwards to in tests, benchmarks and the demo.
//!
//! `ws` mode speaks HTTP/1.1: a WebSocket upgrade is answered with a correct
//! `Sec-WebSocket-Accept` and `X-Backend: NAME`, then frames are echoed one by one (data and
//! continuation frames keep their opcode and FIN bit, pings get pongs, a close is answered
//! and the connection ends). Plain requests get `200` with body NAME (`GET /healthz` gets
//! `ok`), keep-alive unless the client asks to close. `tcp` mode echoes bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::ws::{self, Opcode, WsError, WsReader, WsWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1 + WebSocket echo.
    Ws,
    /// Raw TCP echo.
    Tcp,
}

/// Serves `listener` forever (until the task is dropped or aborted). Each connection runs
/// in its own task; a bad connection never stops the listener.
pub async fn run_backend(listener: TcpListener, mode: Mode, name: String) -> std::io::Result<()> {
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                if e.raw_os_error().is_some() {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                return Err(e);
            }
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let _ = match mode {
                Mode::Tcp => echo_tcp(stream).await.map_err(WsError::from),
                Mode::Ws => serve_http(stream, &name).await,
            };
        });
    }
}

/// A backend running on its own task; aborted when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The accept queue asked for; the kernel caps it at `net.core.somaxconn` (4096 here).
/// tokio's `TcpListener::bind` asks for 1024, which a storm of 5,000 simultaneous connects
/// overflows, so the direct run would measure SYN retransmits instead of the backend.
pub const BACKLOG: u32 = 65_535;

/// A listening socket on `addr` with SO_REUSEADDR and a [`BACKLOG`] accept queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// Binds `127.0.0.1:0` and serves on the current runtime.
pub async fn spawn_backend(mode: Mode, name: &str) -> std::io::Result<Backend> {
    let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(run_backend(listener, mode, name.to_string()));
    Ok(Backend {
        addr,
        name: name.to_string(),
        task,
    })
}

async fn echo_tcp(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        stream.write_all(&buf[..n]).await?;
    }
}

fn response(status: &str, name: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {name}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn serve_http(mut stream: TcpStream, name: &str) -> Result<(), WsError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let (end, rest) = match ws::read_head(&mut stream, &mut buf).await {
            Ok(x) => x,
            Err(WsError::BadHandshake(_)) => {
                stream
                    .write_all(&response(
                        "431 Request Header Fields Too Large",
                        name,
                        b"",
                        false,
                    ))
                    .await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some((line, headers)) = ws::parse_http_head(&buf[..end]) else {
            stream
                .write_all(&response("400 Bad Request", name, b"bad head", false))
                .await?;
            return Ok(());
        };
        let mut parts = line.split_whitespace();
        let (method, target, version) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if has_token(&headers, "upgrade", "websocket") {
            let Some(key) = header(&headers, "sec-websocket-key") else {
                stream
                    .write_all(&response("400 Bad Request", name, b"no key", false))
                    .await?;
                return Ok(());
            };
            if header(&headers, "sec-websocket-version") != Some("13") {
                let r = format!(
                    "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\
                     X-Backend: {name}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(r.as_bytes()).await?;
                return Ok(());
            }
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\nX-Backend: {name}\r\n\r\n",
                ws::accept_key(key)
            );
            stream.write_all(resp.as_bytes()).await?;
            return echo_ws(stream, &rest).await;
        }
        // Plain request: consume a Content-Length body (chunked bodies are not supported).
        let body_len: usize = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if header(&headers, "transfer-encoding").is_some() || body_len > 1 << 20 {
            stream
                .write_all(&response("501 Not Implemented", name, b"", false))
                .await?;
            return Ok(());
        }
        let mut leftover = rest;
        while leftover.len() < body_len {
            let mut tmp = [0u8; 4096];
            let n = stream.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            leftover.extend_from_slice(&tmp[..n]);
        }
        let keep_alive = if version == "HTTP/1.0" {
            has_token(&headers, "connection", "keep-alive")
        } else {
            !has_token(&headers, "connection", "close")
        };
        let path = target.split('?').next().unwrap_or("");
        let resp = match (method, path) {
            (_, "/healthz") => response("200 OK", name, b"ok", keep_alive),
            _ => response("200 OK", name, name.as_bytes(), keep_alive),
        };
        stream.write_all(&resp).await?;
        if !keep_alive {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        buf.clear();
        buf.extend_from_slice(&leftover[body_len..]);
    }
}

async fn echo_ws(stream: TcpStream, leftover: &[u8]) -> Result<(), WsError> {
    let (rd, wr) = stream.into_split();
    let mut reader = WsReader::new(rd, leftover, ws::DEFAULT_MAX_MESSAGE);
    let mut writer = WsWriter::new(wr, false);
    loop {
        let f = reader.next_frame().await?;
        match f.head.opcode {
            Opcode::Ping => writer.send_frame(true, Opcode::Pong, f.payload).await?,
            Opcode::Pong => {}
            Opcode::Close => {
                // Echo the status code back (RFC 6455 §5.5.1) and end the connection.
                let code = f.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                writer.send_close(code, b"").await?;
                let _ = writer.shutdown().await;
                return Ok(());
            }
            op => writer.send_frame(f.head.fin, op, f.payload).await?,
        }
    }
}
