//! Forwards one message body per its framing (RFC 9112 §6): Content-Length, chunked (bytes are
//! relayed verbatim while a scanner finds the end, trailers included), or until close. Bytes
//! read past the end of the body stay in `pending`: they are the next pipelined message.

use std::io;

use crate::io::{self as rio, Driver, Stream};
use crate::proto::{ChunkedScanner, Reject};

/// How the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
pub enum BodyError {
    /// The sender failed or closed before the body ended.
    Src(Option<io::Error>),
    Dst(#[allow(dead_code)] io::Error), // shown in debug logs
    /// Bad chunked framing.
    Bad(Reject),
}

const READ_CHUNK: usize = 16 * 1024;

/// `pending` holds bytes already read from `src` beyond the head (it is the connection's read
/// buffer, reused: no allocation once warm).
pub async fn forward<D: Driver>(
    src: &Stream<D>,
    dst: &Stream<D>,
    pending: &mut Vec<u8>,
    framing: Framing,
) -> Result<u64, BodyError> {
    let mut moved = 0u64;
    match framing {
        Framing::None => Ok(0),
        Framing::Length(mut left) => loop {
            let take = (left.min(pending.len() as u64)) as usize;
            if take > 0 {
                rio::write_all::<D>(dst, &pending[..take])
                    .await
                    .map_err(BodyError::Dst)?;
                pending.drain(..take);
                left -= take as u64;
                moved += take as u64;
            }
            if left == 0 {
                return Ok(moved);
            }
            fill::<D>(src, pending).await?;
        },
        Framing::Chunked => {
            let mut scanner = ChunkedScanner::default();
            loop {
                if !pending.is_empty() {
                    let scan = scanner.feed(pending).map_err(BodyError::Bad)?;
                    rio::write_all::<D>(dst, &pending[..scan.consumed])
                        .await
                        .map_err(BodyError::Dst)?;
                    pending.drain(..scan.consumed);
                    moved += scan.consumed as u64;
                    if scan.done {
                        return Ok(moved);
                    }
                }
                fill::<D>(src, pending).await?;
            }
        }
        Framing::UntilClose => loop {
            if !pending.is_empty() {
                rio::write_all::<D>(dst, pending)
                    .await
                    .map_err(BodyError::Dst)?;
                moved += pending.len() as u64;
                pending.clear();
            }
            match fill::<D>(src, pending).await {
                Ok(()) => {}
                Err(BodyError::Src(None)) => return Ok(moved), // EOF ends the body
                Err(e) => return Err(e),
            }
        },
    }
}

/// Appends one read to `pending`; EOF → `Src(None)`.
async fn fill<D: Driver>(src: &Stream<D>, pending: &mut Vec<u8>) -> Result<(), BodyError> {
    match rio::read_append::<D>(src, pending, READ_CHUNK).await {
        Ok(0) => Err(BodyError::Src(None)),
        Ok(_) => Ok(()),
        Err(e) => Err(BodyError::Src(Some(e))),
    }
}
