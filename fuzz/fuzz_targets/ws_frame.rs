//! WebSocket frame tracking: never panic, and the verdict (frames, messages, close code, or
//! the error) must not depend on how the bytes were split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/proto/mod.rs"]
mod proto;

use proto::ws_frame::{FrameTracker, Sender, Tally};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let sender = if step & 1 == 0 { Sender::Client } else { Sender::Server };
    let step = usize::from(step >> 1).max(1);
    let (mut whole, mut whole_tally) = (FrameTracker::new(sender), Tally::default());
    let w = whole.scan(data, false, &mut whole_tally);

    let (mut split, mut split_tally) = (FrameTracker::new(sender), Tally::default());
    let mut s = Ok(data.len());
    for chunk in data.chunks(step) {
        if let Err(e) = split.scan(chunk, false, &mut split_tally) {
            s = Err(e);
            break;
        }
    }
    assert_eq!(w, s);
    if w.is_ok() {
        assert_eq!(whole_tally, split_tally);
        assert_eq!(whole.close_code(), split.close_code());
        assert_eq!(whole.at_boundary(), split.at_boundary());
    }
});
