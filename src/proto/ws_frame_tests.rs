use super::*;

/// A tracker with the tally its scans fill (the gateway passes a fresh one per read batch and
/// flushes it; a test keeps one for the whole stream).
struct Tracked {
    t: FrameTracker,
    tally: Tally,
}

impl Tracked {
    fn new(sender: Sender) -> Tracked {
        Tracked {
            t: FrameTracker::new(sender),
            tally: Tally::default(),
        }
    }

    fn scan(&mut self, data: &[u8], stop: bool) -> Result<usize, FrameError> {
        self.t.scan(data, stop, &mut self.tally)
    }

    fn scan_to_error(
        &mut self,
        data: &[u8],
        stop: bool,
    ) -> Result<usize, (FrameError, Option<usize>)> {
        self.t.scan_to_error(data, stop, &mut self.tally)
    }
}

impl std::ops::Deref for Tracked {
    type Target = FrameTracker;
    fn deref(&self) -> &FrameTracker {
        &self.t
    }
}

impl std::ops::DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut FrameTracker {
        &mut self.t
    }
}

/// A frame as a client (masked) or server (unmasked) would send it.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

const K: Option<[u8; 4]> = Some([1, 2, 3, 4]);

fn stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(frame(true, 1, b"hello", K));
    s.extend(frame(false, 2, &[7u8; 300], K));
    s.extend(frame(true, 9, b"ping", K)); // a control frame inside a fragmented message
    s.extend(frame(true, 0, &[8u8; 70_000], K));
    s.extend(frame(true, 2, b"", K));
    s.extend(frame(true, 8, &[0x03, 0xE9, b'b', b'y', b'e'], K));
    s
}

#[test]
fn whole_and_byte_by_byte_agree() {
    let s = stream();
    let mut whole = Tracked::new(Sender::Client);
    assert_eq!(whole.scan(&s, false), Ok(s.len()));
    let mut bytes = Tracked::new(Sender::Client);
    for b in s.chunks(1) {
        assert_eq!(bytes.scan(b, false), Ok(1));
    }
    assert_eq!(whole.tally, bytes.tally);
    assert_eq!(
        whole.tally.messages, 3,
        "hello, the fragmented one, the empty one"
    );
    assert_eq!(whole.tally.frames, [1, 1, 2, 1, 1, 0]);
    assert_eq!(whole.tally.payload, 5 + 300 + 70_000);
    assert_eq!(whole.close_code(), Some(1001));
    assert_eq!(bytes.close_code(), Some(1001));
    assert!(whole.at_boundary());
}

#[test]
fn stops_at_each_boundary() {
    let s = stream();
    let lens: Vec<usize> = [
        frame(true, 1, b"hello", K).len(),
        frame(false, 2, &[7u8; 300], K).len(),
        frame(true, 9, b"ping", K).len(),
        frame(true, 0, &[8u8; 70_000], K).len(),
        frame(true, 2, b"", K).len(),
        frame(true, 8, &[0x03, 0xE9, b'b', b'y', b'e'], K).len(),
    ]
    .to_vec();
    let mut t = Tracked::new(Sender::Client);
    let mut at = 0;
    for len in lens {
        let n = t.scan(&s[at..], true).unwrap();
        assert_eq!(n, len);
        assert!(t.at_boundary());
        at += n;
    }
    assert_eq!(at, s.len());
}

#[test]
fn blind_payload_can_be_skipped() {
    // A splice path: the header is scanned, the payload passes unseen.
    let f = frame(true, 2, &[5u8; 1000], None);
    let mut t = Tracked::new(Sender::Server);
    assert_eq!(t.scan(&f[..4], false), Ok(4)); // 2 + 2-byte length
    assert_eq!(t.blind(), 1000);
    assert!(!t.at_boundary());
    t.skip(600);
    assert_eq!(t.blind(), 400);
    t.skip(10_000); // more than the frame: clamped, never wraps
    assert!(t.at_boundary());
    assert_eq!(t.blind(), 0);
    assert_eq!(t.tally.messages, 1);
}

#[test]
fn control_frames_are_never_blind() {
    let f = frame(true, 8, &[0x03, 0xF4], None);
    let mut t = Tracked::new(Sender::Server);
    assert_eq!(t.scan(&f[..2], false), Ok(2));
    assert_eq!(t.blind(), 0, "a Close must be seen for its code");
    assert_eq!(t.scan(&f[2..], false), Ok(2));
    assert_eq!(t.close_code(), Some(1012));
}

#[test]
fn close_without_code_is_1005() {
    let mut t = Tracked::new(Sender::Client);
    let f = frame(true, 8, b"", K);
    t.scan(&f, false).unwrap();
    assert_eq!(t.close_code(), Some(1005));
}

#[test]
fn malformed_framing_is_refused() {
    let cases: Vec<(Vec<u8>, Sender, FrameError)> = vec![
        (
            frame(true, 3, b"", K),
            Sender::Client,
            FrameError::ReservedOpcode,
        ),
        (
            frame(true, 0xB, b"", K),
            Sender::Client,
            FrameError::ReservedOpcode,
        ),
        (
            frame(true, 9, &[0; 126], K),
            Sender::Client,
            FrameError::ControlTooLong,
        ),
        (
            frame(false, 9, b"", K),
            Sender::Client,
            FrameError::ControlFragmented,
        ),
        (
            frame(true, 0, b"x", K),
            Sender::Client,
            FrameError::UnexpectedContinuation,
        ),
        (
            frame(true, 1, b"x", None),
            Sender::Client,
            FrameError::Masking,
        ),
        (frame(true, 1, b"x", K), Sender::Server, FrameError::Masking),
        (
            vec![0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1],
            Sender::Server,
            FrameError::LengthTopBit,
        ),
    ];
    for (bytes, sender, want) in cases {
        let mut t = Tracked::new(sender);
        assert_eq!(t.scan(&bytes, false), Err(want), "{bytes:02x?}");
    }
    // a new message while a fragmented one is open
    let mut t = Tracked::new(Sender::Client);
    let mut s = frame(false, 1, b"a", K);
    s.extend(frame(true, 1, b"b", K));
    assert_eq!(t.scan(&s, false), Err(FrameError::ExpectedContinuation));
}

#[test]
fn extensions_pass_untouched() {
    // permessage-deflate sets RSV1 on the first frame: not ours to judge.
    let mut f = frame(true, 1, b"compressed", None);
    f[0] |= 0x40;
    let mut t = Tracked::new(Sender::Server);
    assert_eq!(t.scan(&f, false), Ok(f.len()));
    assert_eq!(t.tally.messages, 1);
}

#[test]
fn close_frames_we_write_parse_back() {
    let mut out = [0u8; 8];
    let n = write_close(CLOSE_GOING_AWAY, None, &mut out);
    let mut t = Tracked::new(Sender::Server);
    assert_eq!(t.scan(&out[..n], false), Ok(4));
    assert_eq!(t.close_code(), Some(1001));

    let n = write_close(CLOSE_SERVICE_RESTART, Some([9, 8, 7, 6]), &mut out);
    let mut t = Tracked::new(Sender::Client);
    assert_eq!(t.scan(&out[..n], false), Ok(8));
    assert_eq!(t.close_code(), Some(1012));
}

#[test]
fn random_input_never_panics() {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let base = stream();
    for round in 0..20_000 {
        let mut data = base.clone();
        for _ in 0..(next() % 4) {
            let i = (next() as usize) % data.len();
            data[i] = next() as u8;
        }
        let sender = if round % 2 == 0 {
            Sender::Client
        } else {
            Sender::Server
        };
        let mut t = Tracked::new(sender);
        let mut at = 0;
        while at < data.len() {
            let end = (at + 1 + (next() as usize) % 700).min(data.len());
            match t.scan(&data[at..end], round % 3 == 0) {
                Ok(n) => {
                    assert!(n <= end - at);
                    at += n;
                }
                Err(_) => break,
            }
            if t.blind() > 0 && next() % 2 == 0 {
                let n = t.blind().min((data.len() - at) as u64);
                t.skip(n);
                at += n as usize;
            }
        }
    }
}

#[test]
fn scan_to_error_says_where_the_bad_header_starts() {
    let good = frame(true, 2, b"fine", K);
    let mut data = good.clone();
    data.extend(frame(true, 3, b"x", K)); // reserved opcode
    let mut t = Tracked::new(Sender::Client);
    assert_eq!(
        t.scan_to_error(&data, false),
        Err((FrameError::ReservedOpcode, Some(good.len())))
    );
    // A bad header split across two calls: it began in the earlier one.
    let bad = frame(true, 3, b"x", K);
    let mut t = Tracked::new(Sender::Client);
    assert_eq!(t.scan_to_error(&bad[..1], false), Ok(1));
    assert_eq!(
        t.scan_to_error(&bad[1..], false),
        Err((FrameError::ReservedOpcode, None))
    );
}

#[test]
fn message_sizes_and_close_code_reach_the_tally() {
    let mut t = Tracked::new(Sender::Client);
    t.scan(&stream(), false).unwrap();
    // "hello" (5 B), the fragmented 300 + 70 000 B message, the empty one.
    assert_eq!(t.tally.sizes.iter().sum::<u32>(), 3);
    assert_eq!(t.tally.sizes[0], 2, "5 B and 0 B are <= 64");
    let big = SIZE_BOUNDS.partition_point(|&b| b < 70_300);
    assert_eq!(t.tally.sizes[big], 1);
    assert_eq!(t.tally.close, Some(1001));
}
