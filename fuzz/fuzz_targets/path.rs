//! Route paths: normalising must never panic, must agree with the parser's escape check, and
//! whatever it returns must be a fixed point with no dot segment and no query, borrowed when
//! the input had no `%` and no dot segment.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/proto/mod.rs"]
mod proto;

use proto::path::{check_escapes, normalize, path_part};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let n = match normalize(target) {
        Ok(n) => n,
        Err(r) => {
            assert_eq!(r.status, 400);
            assert!(check_escapes(target).is_err());
            return;
        }
    };
    assert!(check_escapes(target).is_ok());
    let part = path_part(target);
    if !part.contains('%') && !part.split('/').any(|s| s == "." || s == "..") {
        assert!(matches!(n, Cow::Borrowed(_)));
    }
    assert!(!n.contains('?') && !n.contains('#'));
    assert!(n.len() <= part.len().max(1));
    if part.starts_with('/') {
        assert!(n.starts_with('/'));
        assert!(
            !n.split('/').any(|s| s == "." || s == ".."),
            "{target:?} -> {n:?}"
        );
    }
    let again = normalize(&n);
    assert_eq!(again.as_deref(), Ok(&*n), "{target:?}");
});
