//! Wakers that are one number: the runtime packs a task's id into the waker's data word and
//! names the function that wakes it. Nothing is allocated and nothing is owned, so a clone is
//! a copy and a drop does nothing (`io::ring` gives each task such a waker).

use std::marker::PhantomData;
use std::task::{RawWaker, RawWakerVTable, Waker};

/// What waking a word waker does, given its word. It may run on any thread.
pub trait WakeWord: 'static {
    fn wake(word: u64);
}

/// A waker whose data is `word`; waking it calls `W::wake(word)`.
pub fn waker<W: WakeWord>(word: u64) -> Waker {
    // SAFETY: the vtable's functions read the data word as a number, never as a pointer; they
    // own nothing (clone copies the word, drop does nothing); and `WakeWord::wake` is a plain
    // fn that may run on any thread, which is what `Waker` (Send + Sync) requires.
    unsafe { Waker::from_raw(raw::<W>(std::ptr::without_provenance(word as usize))) }
}

const _: () = assert!(usize::BITS == 64, "a waker's word is 64 bits");

struct Table<W>(PhantomData<W>);

impl<W: WakeWord> Table<W> {
    const VTABLE: RawWakerVTable = RawWakerVTable::new(raw::<W>, wake::<W>, wake::<W>, drop_word);
}

fn raw<W: WakeWord>(data: *const ()) -> RawWaker {
    RawWaker::new(data, &Table::<W>::VTABLE)
}

fn wake<W: WakeWord>(data: *const ()) {
    W::wake(data.addr() as u64)
}

fn drop_word(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static WOKEN: AtomicU64 = AtomicU64::new(0);

    struct Record;
    impl WakeWord for Record {
        fn wake(word: u64) {
            WOKEN.store(word, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_word_waker_wakes_with_its_word_from_any_thread() {
        let w = waker::<Record>(0xabcd_0001_0000_0007);
        let c = w.clone();
        assert!(c.will_wake(&w));
        assert!(!waker::<Record>(8).will_wake(&w));
        std::thread::spawn(move || c.wake()).join().unwrap();
        assert_eq!(WOKEN.load(Ordering::SeqCst), 0xabcd_0001_0000_0007);
        w.wake_by_ref();
        drop(w);
    }
}
