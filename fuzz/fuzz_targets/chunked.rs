//! Chunked framing: never panic, and the verdict must not depend on how the
//! bytes were split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/proto/mod.rs"]
mod proto;

use proto::ChunkedScanner;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let whole = ChunkedScanner::new()
        .feed(data)
        .map(|s| (s.consumed, s.done));

    let mut sc = ChunkedScanner::new();
    let mut split = Ok((data.len(), false));
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + step).min(data.len());
        match sc.feed(&data[pos..end]) {
            Err(e) => {
                split = Err(e);
                break;
            }
            Ok(s) if s.done => {
                split = Ok((pos + s.consumed, true));
                break;
            }
            Ok(_) => pos = end,
        }
    }
    assert_eq!(whole.is_ok(), split.is_ok());
    if let (Ok(w), Ok(s)) = (whole, split) {
        assert_eq!(w, s);
    }
});
