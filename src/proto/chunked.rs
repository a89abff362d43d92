//! Finding the end of a chunked body while forwarding it verbatim.
//!
//! The gateway never de-chunks: bytes go to the other side exactly as they
//! came, so the backend sees the same framing the client sent. What the
//! gateway must know is where the body *ends*, so it can parse the next
//! request on a kept-alive connection, and it must agree with the backend on
//! that point; hence the strictness (CRLF only, no bare LF, bounded lines).
//!
//! [`ChunkedScanner`] is a byte-level state machine that keeps no input, so
//! any split of the body across reads gives the same answer, and chunk data
//! is skipped in bulk rather than byte by byte.

use super::Reject;

/// Largest chunk we accept (1 TiB). Far above any real chunk, far below u64
/// overflow, so size arithmetic never wraps.
pub const MAX_CHUNK_SIZE: u64 = 1 << 40;
/// Longest chunk-size line (size + extensions), in bytes.
pub const MAX_SIZE_LINE: usize = 4 * 1024;
/// Longest trailer section, in bytes.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Outcome of one [`ChunkedScanner::feed`].
/// One run of a chunked body's bytes, all payload or all framing ([`ChunkedScanner::span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub len: usize,
    /// Chunk payload (what a de-chunking relay passes on), as opposed to framing.
    pub data: bool,
    /// The body ended with this span; what follows it is the next message.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of the fed slice that belong to the body. Equals `data.len()`
    /// unless `done`; when `done`, `data[consumed..]` is the next message.
    pub consumed: usize,
    /// The final CRLF of the body (after any trailers) has been seen.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` counts them (at least one needed).
    Size { digits: usize },
    /// Whitespace after the size (BWS before `;` or CR).
    SizeWs,
    /// Inside chunk extensions, up to CR.
    Ext,
    /// Saw CR at the end of the size line, expect LF.
    SizeLf,
    /// Inside chunk data; `self.size` bytes remain.
    Data,
    /// Expect CR after chunk data.
    DataCr,
    /// Expect LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line, up to CR.
    Trailer,
    /// Saw CR at the end of a trailer line, expect LF.
    TrailerLf,
    /// Saw the CR of the final empty line, expect LF.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Incremental, allocation-free scanner for a chunked body (RFC 9112 §7.1).
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    /// Size of the current chunk while reading its size line; bytes of it
    /// still to skip while in `Data`.
    size: u64,
    /// Bytes of the current size line, bounded by [`MAX_SIZE_LINE`].
    line_len: usize,
    /// Bytes of the trailer section so far, bounded by [`MAX_TRAILERS`].
    trailer_len: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

const BAD: Reject = Reject::bad_request("malformed chunked body");

impl ChunkedScanner {
    /// A scanner positioned at the start of a chunked body.
    pub const fn new() -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    /// Back to the start, for the next body on the same connection.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// True once the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes of the body. After `done`, further calls consume
    /// nothing and report `done` again.
    pub fn feed(&mut self, data: &[u8]) -> Result<Scan, Reject> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Done {
                return Ok(Scan {
                    consumed: i,
                    done: true,
                });
            }
            if self.state == State::Data {
                // Bulk skip; `size` is at most MAX_CHUNK_SIZE so the cast to
                // usize only saturates on 32-bit, which `min` makes harmless.
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(data[i])?;
            i += 1;
        }
        Ok(Scan {
            consumed: data.len(),
            done: self.state == State::Done,
        })
    }

    /// The next run of `data` that is either all chunk payload or all framing (size lines,
    /// CRLFs, trailers): what lets a relay de-chunk a body for an HTTP/1.0 client without
    /// copying it twice. `len` is 0 only when `data` is empty or the body is already done.
    pub fn span(&mut self, data: &[u8]) -> Result<Span, Reject> {
        if self.state == State::Data && !data.is_empty() {
            let take = usize::try_from(self.size)
                .unwrap_or(usize::MAX)
                .min(data.len());
            self.size -= take as u64;
            if self.size == 0 {
                self.state = State::DataCr;
            }
            return Ok(Span {
                len: take,
                data: true,
                done: false,
            });
        }
        let mut i = 0;
        while i < data.len() && !matches!(self.state, State::Data | State::Done) {
            self.step(data[i])?;
            i += 1;
        }
        Ok(Span {
            len: i,
            data: false,
            done: self.state == State::Done,
        })
    }

    /// One byte of framing (everything except chunk data).
    fn step(&mut self, b: u8) -> Result<(), Reject> {
        match self.state {
            State::Size { .. } | State::SizeWs | State::Ext | State::SizeLf => {
                self.line_len += 1;
                if self.line_len > MAX_SIZE_LINE {
                    return Err(Reject::bad_request("chunk-size line too long"));
                }
            }
            State::TrailerStart | State::Trailer | State::TrailerLf | State::FinalLf => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILERS {
                    return Err(Reject::bad_request("chunked trailer section too long"));
                }
            }
            _ => {}
        }
        self.state = match (self.state, b) {
            (State::Size { digits }, _) if b.is_ascii_hexdigit() => {
                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                self.size = self.size * 16 + d;
                if self.size > MAX_CHUNK_SIZE {
                    return Err(Reject::bad_request("chunk size too large"));
                }
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 0 }, _) => {
                return Err(Reject::bad_request("invalid chunk size"))
            }
            (State::Size { .. } | State::SizeWs, b' ' | b'\t') => State::SizeWs,
            (State::Size { .. } | State::SizeWs | State::Ext, b';') => State::Ext,
            (State::Size { .. } | State::SizeWs | State::Ext, b'\r') => State::SizeLf,
            (State::Ext, b'\n' | 0) => return Err(BAD),
            (State::Ext, _) => State::Ext,
            (State::SizeLf, b'\n') => {
                self.line_len = 0;
                if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { digits: 0 },
            (State::TrailerStart, b'\r') => State::FinalLf,
            (State::TrailerStart | State::Trailer, b'\n' | 0) => return Err(BAD),
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, _) => State::Trailer,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::FinalLf, b'\n') => State::Done,
            (State::DataCr | State::DataLf, _) => {
                return Err(Reject::bad_request("missing CRLF after chunk data"))
            }
            _ => return Err(BAD),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// De-chunks `body` fed in pieces of `step` bytes; returns (payload, bytes after the body).
    fn dechunk(body: &[u8], step: usize) -> Result<(Vec<u8>, usize), Reject> {
        let mut s = ChunkedScanner::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let end = (at + step).min(body.len());
            let mut piece = &body[at..end];
            while !piece.is_empty() {
                let sp = s.span(piece)?;
                if sp.data {
                    out.extend_from_slice(&piece[..sp.len]);
                }
                at += sp.len;
                piece = &piece[sp.len..];
                if sp.done {
                    return Ok((out, body.len() - at));
                }
            }
        }
        Err(Reject::bad_request("unfinished"))
    }

    #[test]
    fn spans_separate_payload_from_framing_whatever_the_pieces() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let (payload, rest) = dechunk(body, step).unwrap();
            assert_eq!(payload, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(rest, 4, "step {step}: NEXT is the next message");
        }
    }

    /// Mutated bodies fed in random pieces: `span` accepts exactly what `feed` accepts, ends
    /// the body at the same byte, and its payload is what the chunk sizes promise.
    #[test]
    fn spans_agree_with_feed_on_mutated_bodies() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(12);
        let base = b"4\r\nwiki\r\n5;a=b\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\n";
        for _ in 0..20_000 {
            let mut body = base.to_vec();
            for _ in 0..rng.gen_range(0..3) {
                let i = rng.gen_range(0..body.len());
                match rng.gen_range(0..3) {
                    0 => body[i] = rng.gen(),
                    1 => {
                        body.remove(i);
                    }
                    _ => body.insert(i, rng.gen()),
                }
            }
            let step = rng.gen_range(1..8);
            let fed = scan_all(&body);
            match (dechunk(&body, step), fed) {
                (Ok((_, rest)), Ok(scan)) => {
                    assert!(scan.done);
                    assert_eq!(body.len() - rest, scan.consumed, "{body:?}");
                }
                (Err(_), Err(_)) | (Err(_), Ok(Scan { done: false, .. })) => {}
                (d, f) => panic!("span {d:?} vs feed {f:?} on {body:?}"),
            }
        }
    }

    #[test]
    fn spans_reject_what_feed_rejects() {
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"5\r\nhello\r\n0\r\nbad\n"] {
            assert!(
                dechunk(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(scan_all(bad).is_err());
        }
    }

    fn scan_all(body: &[u8]) -> Result<Scan, Reject> {
        ChunkedScanner::new().feed(body)
    }

    const BODY: &[u8] = b"5\r\nhello\r\n1a;ext=1;q=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";

    #[test]
    fn whole_body_then_next_message() {
        let mut data = BODY.to_vec();
        data.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let s = scan_all(&data).unwrap();
        assert_eq!(
            s,
            Scan {
                consumed: BODY.len(),
                done: true
            }
        );
        assert_eq!(
            scan_all(b"0\r\n\r\n").unwrap(),
            Scan {
                consumed: 5,
                done: true
            }
        );
    }

    #[test]
    fn byte_by_byte_matches_whole() {
        let mut sc = ChunkedScanner::new();
        for (i, b) in BODY.iter().enumerate() {
            let s = sc.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(s.consumed, 1);
            assert_eq!(s.done, i == BODY.len() - 1, "at {i}");
        }
        assert_eq!(
            sc.feed(b"x").unwrap(),
            Scan {
                consumed: 0,
                done: true
            }
        );
    }

    #[test]
    fn incomplete_is_not_done() {
        for cut in 0..BODY.len() {
            let s = scan_all(&BODY[..cut]).unwrap();
            assert_eq!(
                s,
                Scan {
                    consumed: cut,
                    done: false
                }
            );
        }
    }

    #[test]
    fn malformed_bodies_are_400() {
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"0\r\nX: 1\n\r\n",
            b"-1\r\n",
            b"0x5\r\n",
            b"10000000001\r\n",               // 2^40 + 1
            b"fffffffffffffffffffffffff\r\n", // > u64
            b"5 5\r\n",
        ] {
            let e = scan_all(bad).unwrap_err();
            assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn line_and_trailer_caps() {
        let mut long = b"1;".to_vec();
        long.resize(MAX_SIZE_LINE + 10, b'a');
        assert_eq!(
            scan_all(&long).unwrap_err().reason,
            "chunk-size line too long"
        );
        // The cap includes the CRLF: exactly MAX_SIZE_LINE is fine, one more is not.
        for (len, ok) in [(MAX_SIZE_LINE, true), (MAX_SIZE_LINE + 1, false)] {
            let mut body = b"1;".to_vec();
            body.resize(len - 2, b'a');
            body.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            assert_eq!(scan_all(&body).is_ok(), ok, "{len}");
        }

        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 100 {
            trailers.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            scan_all(&trailers).unwrap_err().reason,
            "chunked trailer section too long"
        );
    }

    #[test]
    fn size_whitespace_and_leading_zeros() {
        assert!(scan_all(b"005 \t;a=b\r\nhello\r\n0\r\n\r\n").unwrap().done);
        assert!(scan_all(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().done);
    }

    #[test]
    fn reset_scans_a_second_body() {
        let mut sc = ChunkedScanner::new();
        assert!(sc.feed(BODY).unwrap().done);
        sc.reset();
        assert!(!sc.is_done());
        assert!(sc.feed(BODY).unwrap().done);
    }
}
