//! WebSocket frame boundaries (RFC 6455 §5.2), tracked without touching payloads.
//!
//! A tunnel that understands frames can end a connection gracefully (inject a Close at the next
//! frame boundary, never inside a frame), count messages and close codes, and refuse malformed
//! framing with 1002 instead of passing garbage on. The payload is never copied or unmasked:
//! [`FrameTracker::scan`] reads headers out of bytes that pass through user space, and
//! [`FrameTracker::blind`] / [`FrameTracker::skip`] let a splice path move exactly the rest of
//! a data frame's payload without seeing it. Extensions (permessage-deflate's RSV1) pass
//! through untouched.
//!
//! Control frames (Close, Ping, Pong) are small (≤ 125 bytes) and are always scanned, so the
//! tracker sees a Close frame's status code.

/// Who sends the frames a tracker sees: a client's frames must be masked, a server's must not
/// be (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// Malformed framing: the tunnel is closed with 1002 (protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    ReservedOpcode,
    ControlTooLong,
    ControlFragmented,
    /// A 64-bit payload length with its most significant bit set.
    LengthTopBit,
    /// A continuation frame with no fragmented message open.
    UnexpectedContinuation,
    /// A new data message while a fragmented one is still open.
    ExpectedContinuation,
    /// A client frame without a mask, or a server frame with one.
    Masking,
}

impl FrameError {
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedOpcode => "reserved opcode",
            FrameError::ControlTooLong => "control frame longer than 125 bytes",
            FrameError::ControlFragmented => "fragmented control frame",
            FrameError::LengthTopBit => "64-bit length with the top bit set",
            FrameError::UnexpectedContinuation => "continuation without a message",
            FrameError::ExpectedContinuation => "new message inside a fragmented one",
            FrameError::Masking => "wrong masking for this direction",
        }
    }
}

/// Frame opcodes, as indices into [`Tally::frames`].
pub const OPCODES: [(u8, &str); 6] = [
    (0x0, "continuation"),
    (0x1, "text"),
    (0x2, "binary"),
    (0x8, "close"),
    (0x9, "ping"),
    (0xA, "pong"),
];

fn opcode_index(op: u8) -> Option<usize> {
    OPCODES.iter().position(|&(o, _)| o == op)
}

/// Upper bounds (bytes, inclusive) of the message size histogram in [`Tally::sizes`].
pub const SIZE_BOUNDS: &[u64] = &[64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576];

/// What went through one direction in the scans it was passed to, for metrics. The owner
/// passes one per read batch and flushes it into its per-core counters: the tracker holds
/// none, so an idle tunnel carries none (the counts are `u32` and wrap rather than panic if
/// an owner never flushes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Frames by opcode, indexed like [`OPCODES`].
    pub frames: [u32; 6],
    /// Complete data messages (the final frame of a text or binary message).
    pub messages: u32,
    /// Payload bytes of data frames.
    pub payload: u64,
    /// Complete messages by payload size, one count per [`SIZE_BOUNDS`] entry plus +Inf (not
    /// cumulative); a message is counted at its final frame's header.
    pub sizes: [u32; 9],
    /// The code of a Close frame that passed whole (1005 when it had none).
    pub close: Option<u16>,
}

/// The frame being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    /// The first two bytes of the mask: all a Close code's unmasking needs.
    mask: [u8; 2],
    /// Payload bytes already passed, counted up to 2 (where a Close frame's code ends).
    seen: u8,
}

impl Frame {
    /// `n` more payload bytes passed.
    fn saw(&mut self, n: u64) {
        self.seen = (self.seen as u64 + n).min(2) as u8;
    }
}

/// Tracks frame boundaries in one direction of a WebSocket tunnel.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    sender: Sender,
    /// Header bytes collected so far (a header is 2 to 14 bytes and may be split across reads).
    head: [u8; 14],
    have: u8,
    /// Payload bytes left in the current frame.
    left: u64,
    frame: Frame,
    /// A fragmented data message is open.
    in_message: bool,
    /// Payload bytes of the message being read so far (its frames' declared lengths).
    msg_len: u64,
    /// The status code of the last Close frame seen (1005 when it had none).
    close_code: Option<u16>,
    code_bytes: [u8; 2],
}

impl FrameTracker {
    pub fn new(sender: Sender) -> FrameTracker {
        FrameTracker {
            sender,
            head: [0; 14],
            have: 0,
            left: 0,
            frame: Frame {
                opcode: 0,
                mask: [0; 2],
                seen: 0,
            },
            in_message: false,
            msg_len: 0,
            close_code: None,
            code_bytes: [0; 2],
        }
    }

    /// Between two frames: a frame of our own (a Close) may be sent now.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// The status code of the Close frame this direction sent, once it has passed whole.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Payload bytes of the current *data* frame that may pass unseen (spliced): 0 inside a
    /// header or a control frame, which must be scanned.
    pub fn blind(&self) -> u64 {
        if self.have == 0 && self.frame.opcode < 0x8 {
            self.left
        } else {
            0
        }
    }

    /// Accounts for `n` payload bytes that passed unseen; `n` must not exceed [`Self::blind`]
    /// (the excess is ignored, never wrapped).
    pub fn skip(&mut self, n: u64) {
        let n = n.min(self.blind());
        self.left -= n;
        self.frame.saw(n);
        if self.left == 0 {
            self.end_frame(); // a data frame: no Close code to tally
        }
    }

    /// Scans bytes passing through; returns how many were consumed. All of `data` is consumed
    /// unless `stop_at_boundary` is set and a frame ends inside it: then the count ends right
    /// after that frame (the caller sends those bytes, then its own frame).
    pub fn scan(
        &mut self,
        data: &[u8],
        stop_at_boundary: bool,
        tally: &mut Tally,
    ) -> Result<usize, FrameError> {
        self.scan_to_error(data, stop_at_boundary, tally)
            .map_err(|(e, _)| e)
    }

    /// [`Self::scan`], saying on malformed framing where the bad frame's header starts in
    /// `data` (`None` when it started in an earlier call): the bytes before it are whole frames
    /// that may pass, so a Close can follow them without breaking a frame.
    pub fn scan_to_error(
        &mut self,
        data: &[u8],
        stop_at_boundary: bool,
        tally: &mut Tally,
    ) -> Result<usize, (FrameError, Option<usize>)> {
        let mut i = 0;
        while i < data.len() {
            if self.have > 0 || self.left == 0 {
                let start = (self.have == 0).then_some(i);
                i += self.read_head(&data[i..], tally).map_err(|e| (e, start))?;
                if self.have > 0 {
                    continue; // header incomplete: `i == data.len()` now
                }
                if self.left == 0 {
                    tally.close = self.end_frame().or(tally.close); // an empty frame ends with its header
                    if stop_at_boundary {
                        return Ok(i);
                    }
                }
                continue;
            }
            let take = (self.left.min((data.len() - i) as u64)) as usize;
            if self.frame.opcode == 0x8 {
                self.note_close_bytes(&data[i..i + take]);
            }
            self.left -= take as u64;
            self.frame.saw(take as u64);
            i += take;
            if self.left == 0 {
                tally.close = self.end_frame().or(tally.close);
                if stop_at_boundary {
                    return Ok(i);
                }
            }
        }
        Ok(i)
    }

    /// Collects header bytes; when the header is whole, validates it and starts the payload
    /// (`have` back to 0). Returns the bytes used.
    fn read_head(&mut self, data: &[u8], tally: &mut Tally) -> Result<usize, FrameError> {
        let mut used = 0;
        loop {
            let need = header_len(&self.head[..self.have as usize]);
            if self.have as usize >= need {
                break;
            }
            let Some(&b) = data.get(used) else {
                return Ok(used);
            };
            self.head[self.have as usize] = b;
            self.have += 1;
            used += 1;
        }
        self.start_frame(tally)?;
        Ok(used)
    }

    fn start_frame(&mut self, tally: &mut Tally) -> Result<(), FrameError> {
        let h = &self.head[..self.have as usize];
        let (fin, opcode, masked) = (h[0] & 0x80 != 0, h[0] & 0x0F, h[1] & 0x80 != 0);
        let (len, at) = match h[1] & 0x7F {
            126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (n as u64, 2),
        };
        if len >> 63 != 0 {
            return Err(FrameError::LengthTopBit);
        }
        if masked != (self.sender == Sender::Client) {
            return Err(FrameError::Masking);
        }
        let Some(index) = opcode_index(opcode) else {
            return Err(FrameError::ReservedOpcode);
        };
        if opcode >= 0x8 {
            if len > 125 {
                return Err(FrameError::ControlTooLong);
            }
            if !fin {
                return Err(FrameError::ControlFragmented);
            }
        } else {
            match (opcode == 0, self.in_message) {
                (true, false) => return Err(FrameError::UnexpectedContinuation),
                (false, true) => return Err(FrameError::ExpectedContinuation),
                _ => {}
            }
            self.in_message = !fin;
            self.msg_len = self.msg_len.saturating_add(len);
            if fin {
                tally.messages = tally.messages.wrapping_add(1);
                let bucket = SIZE_BOUNDS.partition_point(|&b| b < self.msg_len);
                tally.sizes[bucket] = tally.sizes[bucket].wrapping_add(1);
                self.msg_len = 0;
            }
            tally.payload = tally.payload.wrapping_add(len);
        }
        tally.frames[index] = tally.frames[index].wrapping_add(1);
        let mut mask = [0u8; 2];
        if masked {
            mask.copy_from_slice(&h[at..at + 2]);
        }
        self.frame = Frame {
            opcode,
            mask,
            seen: 0,
        };
        self.left = len;
        self.have = 0;
        Ok(())
    }

    /// Unmasks just the first two payload bytes of a Close frame (its status code).
    fn note_close_bytes(&mut self, bytes: &[u8]) {
        for (k, &b) in bytes.iter().enumerate() {
            let pos = self.frame.seen as usize + k;
            if pos >= 2 {
                break;
            }
            self.code_bytes[pos] = b ^ self.frame.mask[pos];
        }
    }

    /// Ends the current frame; returns its status code when it was a Close.
    fn end_frame(&mut self) -> Option<u16> {
        let mut close = None;
        if self.frame.opcode == 0x8 {
            let code = if self.frame.seen >= 2 {
                u16::from_be_bytes(self.code_bytes)
            } else {
                1005 // no status code present (RFC 6455 §7.1.5)
            };
            self.close_code = Some(code);
            close = Some(code);
        }
        self.frame.opcode = 0; // a finished frame blinds nothing
        close
    }
}

/// How long the header starting with `h` is (2 until its second byte is known).
fn header_len(h: &[u8]) -> usize {
    let Some(&b1) = h.get(1) else { return 2 };
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Close status codes the gateway sends when it ends a tunnel itself.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// Writes a Close frame with `code` and no reason into `out` and returns its length (4 bytes
/// unmasked, 8 masked). Frames to a server (the backend) must be masked, frames to a client
/// must not be (RFC 6455 §5.1); the mask need not be secret for a frame we write ourselves.
pub fn write_close(code: u16, mask: Option<[u8; 4]>, out: &mut [u8; 8]) -> usize {
    let c = code.to_be_bytes();
    out[0] = 0x88; // FIN | Close
    match mask {
        None => {
            out[1] = 2;
            out[2..4].copy_from_slice(&c);
            4
        }
        Some(m) => {
            out[1] = 0x80 | 2;
            out[2..6].copy_from_slice(&m);
            out[6] = c[0] ^ m[0];
            out[7] = c[1] ^ m[1];
            8
        }
    }
}

#[cfg(test)]
#[path = "ws_frame_tests.rs"]
mod tests;
