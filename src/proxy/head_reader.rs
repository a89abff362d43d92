//! Reads a message head into a bounded buffer, without parsing it twice: each read is scanned
//! for the blank line that ends a head (CRLF CRLF, or bare LF LF, which httparse also accepts);
//! only then is the head parsed, once.

use std::time::Duration;

use crate::config::Config;
use crate::error::Kind;
use crate::io as rio;

use super::client::ByteStream;

pub enum HeadRead {
    Complete,
    /// The client went away (or idled out between requests): close quietly.
    Closed,
    Reject(Kind),
}

/// Index just past the end of the head, scanning from `from` (bytes before it were scanned).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from.saturating_sub(3);
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let rest = &buf[nl + 1..];
        if rest.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if rest.len() >= 2 && rest[0] == b'\r' && rest[1] == b'\n' {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

const READ_CHUNK: usize = 4096;

/// Reads until `buf` holds a complete request head. The first request of a connection must
/// complete within `timeouts.head` of accept; later ones may idle `timeouts.http_idle` before
/// their first byte, then get `timeouts.head`.
pub async fn read(
    client: &impl ByteStream,
    buf: &mut Vec<u8>,
    cfg: &Config,
    first: bool,
) -> HeadRead {
    let max = cfg.limits.max_head_bytes;
    if head_end(buf, 0).is_some() {
        return HeadRead::Complete; // pipelined
    }
    if buf.is_empty() && !first {
        match rio::timeout(cfg.timeouts.http_idle, fill(client, buf, max)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return HeadRead::Closed,
            Ok(Ok(_)) => {}
        }
    }
    let work = async {
        let mut scanned = 0;
        loop {
            if let Some(_end) = head_end(buf, scanned) {
                return HeadRead::Complete;
            }
            scanned = buf.len();
            if buf.len() >= max {
                return HeadRead::Reject(Kind::HeadTooLarge);
            }
            match fill(client, buf, max).await {
                // A close (even half-way through a head): nobody to answer.
                Ok(0) | Err(_) => return HeadRead::Closed,
                Ok(_) => {}
            }
        }
    };
    match rio::timeout(cfg.timeouts.head, work).await {
        Ok(r) => r,
        Err(_) => HeadRead::Reject(Kind::HeadTimeout),
    }
}

/// One read, appended, never growing `buf` past `max`.
async fn fill(s: &impl ByteStream, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
    let want = READ_CHUNK.min(max.saturating_sub(buf.len()));
    s.read_append(buf, want).await
}

/// Reads until `rbuf` holds a complete backend response head (504 on timeout, 502 on garbage
/// or a close); the caller parses it.
pub async fn read_response_head(
    backend: &impl ByteStream,
    rbuf: &mut Vec<u8>,
    timeout: Duration,
    max: usize,
) -> Result<(), Kind> {
    let work = async {
        let mut scanned = 0;
        loop {
            if head_end(rbuf, scanned).is_some() {
                return Ok(());
            }
            scanned = rbuf.len();
            if rbuf.len() >= max {
                return Err(Kind::BadResponse);
            }
            match fill(backend, rbuf, max).await {
                Ok(0) | Err(_) => return Err(Kind::BackendReset),
                Ok(_) => {}
            }
        }
    };
    match rio::timeout(timeout, work).await {
        Err(_) => Err(Kind::ResponseTimeout),
        Ok(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn finds_the_blank_line() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nBODY", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"", 0), None);
        // The terminator split across reads is still found when scanning resumes.
        let full = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(full, 25), Some(27));
        assert_eq!(head_end(full, 27), Some(27));
    }
}
