//! Forwards one message body per its framing (RFC 9112 §6): Content-Length, chunked (bytes are
//! relayed verbatim while a scanner finds the end, trailers included; de-chunked for an
//! HTTP/1.0 client), or until close. Bytes
//! read past the end of the body stay in `pending`: they are the next pipelined message.
//!
//! Every wait is bounded: a read from the sender by `Stalls::src`, a write to the receiver by
//! `Stalls::dst` (the longest wait between two steps, not for the whole body, so a slow but
//! moving upload is fine and a stalled one is cut).

use std::io;
use std::time::Duration;

use crate::io as rio;

use super::client::ByteStream;
use crate::proto::{ChunkedScanner, Reject};

/// How the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// A chunked body relayed to an HTTP/1.0 client, which cannot read chunked framing
    /// (RFC 9112 §7.1): only the payload is passed on, and the connection's close ends it.
    Dechunk,
    UntilClose,
}

/// The longest wait for each side between two steps of a body.
#[derive(Debug, Clone, Copy)]
pub struct Stalls {
    pub src: Duration,
    pub dst: Duration,
}

#[derive(Debug)]
pub enum BodyError {
    /// The sender failed or closed before the body ended.
    Src(Option<io::Error>),
    /// The sender sent nothing for `Stalls::src`.
    SrcStalled,
    Dst(#[allow(dead_code)] io::Error), // shown in debug logs
    /// The receiver took nothing for `Stalls::dst`.
    DstStalled,
    /// Bad chunked framing.
    Bad(Reject),
}

const READ_CHUNK: usize = 16 * 1024;

/// Moves the body from `src` to `dst`; returns the bytes moved. `pending` holds bytes already
/// read from `src` beyond the head (it is the connection's read buffer, reused: no allocation
/// once warm). On success every byte of the body was written and `pending` holds only what
/// followed it.
pub async fn forward(
    src: &impl ByteStream,
    dst: &impl ByteStream,
    pending: &mut Vec<u8>,
    framing: Framing,
    stalls: Stalls,
) -> Result<u64, BodyError> {
    let mut moved = 0u64;
    match framing {
        Framing::None => Ok(0),
        Framing::Length(mut left) => loop {
            let take = (left.min(pending.len() as u64)) as usize;
            if take > 0 {
                send(dst, &pending[..take], stalls.dst).await?;
                pending.drain(..take);
                left -= take as u64;
                moved += take as u64;
            }
            if left == 0 {
                return Ok(moved);
            }
            fill(src, pending, stalls.src).await?;
        },
        Framing::Chunked => {
            let mut scanner = ChunkedScanner::default();
            loop {
                if !pending.is_empty() {
                    let scan = scanner.feed(pending).map_err(BodyError::Bad)?;
                    send(dst, &pending[..scan.consumed], stalls.dst).await?;
                    pending.drain(..scan.consumed);
                    moved += scan.consumed as u64;
                    if scan.done {
                        return Ok(moved);
                    }
                }
                fill(src, pending, stalls.src).await?;
            }
        }
        Framing::Dechunk => {
            let mut scanner = ChunkedScanner::default();
            loop {
                // The payload spans are moved to the front of `pending` (framing dropped in
                // place), then written in one go.
                let (mut at, mut kept) = (0, 0);
                let mut done = false;
                while at < pending.len() && !done {
                    let span = scanner.span(&pending[at..]).map_err(BodyError::Bad)?;
                    if span.data {
                        pending.copy_within(at..at + span.len, kept);
                        kept += span.len;
                    }
                    at += span.len;
                    done = span.done;
                }
                if kept > 0 {
                    send(dst, &pending[..kept], stalls.dst).await?;
                    moved += kept as u64;
                }
                pending.drain(..at);
                if done {
                    return Ok(moved);
                }
                fill(src, pending, stalls.src).await?;
            }
        }
        Framing::UntilClose => loop {
            if !pending.is_empty() {
                send(dst, pending, stalls.dst).await?;
                moved += pending.len() as u64;
                pending.clear();
            }
            match fill(src, pending, stalls.src).await {
                Ok(()) => {}
                Err(BodyError::Src(None)) => return Ok(moved), // EOF ends the body
                Err(e) => return Err(e),
            }
        },
    }
}

async fn send(dst: &impl ByteStream, bytes: &[u8], stall: Duration) -> Result<(), BodyError> {
    match rio::timeout(stall, dst.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BodyError::Dst(e)),
        Err(_) => Err(BodyError::DstStalled),
    }
}

/// Appends one read to `pending`; EOF → `Src(None)`.
async fn fill(
    src: &impl ByteStream,
    pending: &mut Vec<u8>,
    stall: Duration,
) -> Result<(), BodyError> {
    match rio::timeout(stall, src.read_append(pending, READ_CHUNK)).await {
        Ok(Ok(0)) => Err(BodyError::Src(None)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(BodyError::Src(Some(e))),
        Err(_) => Err(BodyError::SrcStalled),
    }
}
