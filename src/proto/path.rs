//! The path a request is *routed* on: RFC 3986 normalisation of the request-target's path.
//!
//! Routes match path prefixes, and a prefix check on the raw target is easy to walk around:
//! `/public/../admin` starts with `/public/`, and so does `/public/%2e%2e/admin`, but every
//! backend that resolves dot segments (most do, or the framework in front of the handler does)
//! serves `/admin`. So routing sees the path the way the backend will:
//!
//! 1. percent-encoded *unreserved* characters (`ALPHA / DIGIT / - . _ ~`, RFC 3986 §2.3, hex
//!    in either case) are decoded, because §6.2.2.2 makes `%41` and `A` the same URI (this is
//!    what turns `%2e%2e` into a dot segment);
//! 2. the hex digits of every other escape are upper-cased (§6.2.2.1), so a reserved
//!    character stays encoded (`%2f` → `%2F`, never `/`: `a%2Fb` is one segment, not two);
//! 3. dot segments are removed (§5.2.4): `/c/./../x` → `/x`, `/..` → `/`.
//!
//! The query (from the first `?`) and any fragment are not part of the path and are neither
//! returned nor checked. What is *forwarded* is the target as received: normalising only the
//! routing decision means a backend that distinguishes `%41` from `A` still gets what the
//! client sent.
//!
//! A path with a `%` not followed by two hex digits (`%zz`, a truncated `%4`) is malformed
//! (RFC 3986 §2.1): [`super::parse_request`] refuses it with 400 through [`check_escapes`], so
//! routing never has to guess.
//!
//! Cost: nothing is allocated when the path has no `%` and no dot segment, the shape of nearly
//! every real request; [`normalize`] returns a slice of its input then. Otherwise it builds one
//! `String` of at most the input's length.

use std::borrow::Cow;

use super::Reject;

/// The malformed-escape reject, shared by [`check_escapes`] and [`normalize`].
const BAD_ESCAPE: Reject = Reject::bad_request("invalid percent-encoding in the path");

/// The path part of an origin-form target: everything before the first `?` or `#`.
#[inline]
pub fn path_part(target: &str) -> &str {
    match target.bytes().position(|c| c == b'?' || c == b'#') {
        Some(end) => &target[..end],
        None => target,
    }
}

/// Refuses a path (the part before `?`) whose `%` is not followed by two hex digits. Does not
/// allocate; this is what [`super::parse_request`] calls on every target.
pub fn check_escapes(target: &str) -> Result<(), Reject> {
    let b = path_part(target).as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'%') {
        let at = i + off;
        match (b.get(at + 1), b.get(at + 2)) {
            (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i = at + 3,
            _ => return Err(BAD_ESCAPE),
        }
    }
    Ok(())
}

/// The normalised path of `target` (its query dropped), borrowed when nothing changes.
///
/// A target that does not start with `/` (the `*` of `OPTIONS *`) is returned as it is, after
/// the same escape check. `Err` only for a malformed escape.
pub fn normalize(target: &str) -> Result<Cow<'_, str>, Reject> {
    let (path, plain) = scan(target);
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let decoded = decode_unreserved(b)?;
    let out = if decoded.first() == Some(&b'/') {
        remove_dot_segments(&decoded)
    } else {
        decoded
    };
    // Only whole segments were dropped and only ASCII was decoded, so the bytes are still
    // UTF-8; the check is the no-panic way of saying so.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| BAD_ESCAPE)
}

/// One pass over the target for the common case: its path part, and whether that path is
/// already normal (no `%`, no dot segment), so [`normalize`] can return it borrowed.
#[inline]
fn scan(target: &str) -> (&str, bool) {
    let b = target.as_bytes();
    let mut plain = true;
    let mut seg = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'?' | b'#' => {
                let dot = is_dot_segment(&b[seg..i]);
                return (&target[..i], plain && !dot);
            }
            b'%' => plain = false,
            b'/' => {
                plain &= !is_dot_segment(&b[seg..i]);
                seg = i + 1;
            }
            _ => {}
        }
    }
    (target, plain && !is_dot_segment(&b[seg..]))
}

#[inline]
fn is_dot_segment(s: &[u8]) -> bool {
    s == b"." || s == b".."
}

/// Copies `b`, decoding escapes of unreserved characters and upper-casing the hex of the rest.
fn decode_unreserved(b: &[u8]) -> Result<Vec<u8>, Reject> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(BAD_ESCAPE);
        };
        let c = (h << 4) | l;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else {
            out.extend_from_slice(&[
                b'%',
                b[i + 1].to_ascii_uppercase(),
                b[i + 2].to_ascii_uppercase(),
            ]);
        }
        i += 3;
    }
    Ok(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 for an absolute path (`b` starts with `/`), one segment at a time: `.` is
/// dropped, `..` drops the segment before it (never above the root), and a trailing `.` or
/// `..` leaves the trailing `/` the RFC's loop leaves. Empty segments (`//`) are kept.
fn remove_dot_segments(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let segments = b[1..].split(|&c| c == b'/');
    let last = segments.clone().count() - 1;
    for (n, seg) in segments.enumerate() {
        match seg {
            b"." => {}
            b".." => {
                let cut = out.iter().rposition(|&c| c == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(seg);
                continue;
            }
        }
        if n == last {
            out.push(b'/');
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True if some segment of `b` (between `/`s, or at either end) is `.` or `..`.
    fn has_dot_segment(b: &[u8]) -> bool {
        b.split(|&c| c == b'/').any(is_dot_segment)
    }

    /// (input target, normalised path). Borrowed results are checked separately.
    const CASES: &[(&str, &str)] = &[
        // untouched
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/a//b", "/a//b"),
        ("/a/b?x=1", "/a/b"),
        ("/a/b?x=/../%zz", "/a/b"),
        ("/a#frag", "/a"),
        ("/.a/..b/...", "/.a/..b/..."),
        ("/a.b/c..d", "/a.b/c..d"),
        ("*", "*"),
        // dot segments (RFC 3986 §5.2.4 and §5.4's examples, on absolute paths)
        ("/c/../x", "/x"),
        ("/c/./../x", "/x"),
        ("/c/./x", "/c/x"),
        ("/c/.", "/c/"),
        ("/c/..", "/"),
        ("/c/../", "/"),
        ("/..", "/"),
        ("/.", "/"),
        ("/../../x", "/x"),
        ("/a/b/c/./../../g", "/a/g"),
        ("/mid/content=5/../6", "/mid/6"),
        ("/a//../b", "/a/b"),
        ("/a/b/../../..", "/"),
        ("/a/./b/./", "/a/b/"),
        ("/c/..?q", "/"),
        // percent-encoding: unreserved decoded (either hex case), reserved kept, hex upper-cased
        ("/c/%41", "/c/A"),
        ("/c/%41bc", "/c/Abc"),
        ("/c/%61%7A%30%2D%2e%5F%7e", "/c/az0-._~"),
        ("/c/%2e%2e/x", "/x"),
        ("/c/%2E%2E/x", "/x"),
        ("/c/.%2e/x", "/x"),
        ("/c/%2e/x", "/c/x"),
        ("/c/%2F../x", "/c/%2F../x"),
        ("/c%2f../x", "/c%2F../x"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb/..", "/"),
        ("/%252e%252e/x", "/%252e%252e/x"),
        ("/%25", "/%25"),
        ("/sp%20ace", "/sp%20ace"),
        ("/%c3%a9", "/%C3%A9"),
        ("/caf\u{e9}/../x", "/x"),
    ];

    #[test]
    fn table() {
        for &(input, want) in CASES {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input:?}");
            assert_eq!(check_escapes(input), Ok(()), "{input:?}");
        }
    }

    #[test]
    fn the_common_case_is_borrowed() {
        for input in [
            "/",
            "/socket.io/?EIO=4&transport=polling",
            "/a/b.c/d",
            "/a/..b",
            "*",
        ] {
            assert!(
                matches!(normalize(input), Ok(Cow::Borrowed(_))),
                "{input:?}"
            );
        }
        assert!(matches!(normalize("/a/../b"), Ok(Cow::Owned(_))));
        assert!(matches!(normalize("/%41"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn malformed_escapes_are_400() {
        for input in [
            "/c/%zz",
            "/c/%4",
            "/c/%",
            "/%g1",
            "/%1g",
            "/a%%41",
            "/ok/%4?x",
            "%zz",
            "/%\u{e9}a",
        ] {
            assert_eq!(normalize(input), Err(BAD_ESCAPE), "{input:?}");
            assert_eq!(
                check_escapes(input).map_err(|r| r.status),
                Err(400),
                "{input:?}"
            );
        }
        // ... but only in the path: the query is the application's business.
        assert_eq!(check_escapes("/a?q=%zz&r=%"), Ok(()));
        assert_eq!(normalize("/a?q=%zz").as_deref(), Ok("/a"));
    }

    /// Whatever comes out is a fixed point, holds no dot segment and no escaped unreserved
    /// character, and never climbs above the root.
    #[test]
    fn output_properties_on_random_paths() {
        const ALPHABET: &[&str] = &[
            "/", ".", "..", "%2e", "%2E", "%2f", "%41", "a", "%", "?", "b/", "%4", "#",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut ok = 0;
        for _ in 0..20_000 {
            let mut p = String::from("/");
            for _ in 0..(x % 9) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push_str(ALPHABET[(x % ALPHABET.len() as u64) as usize]);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (part, plain) = scan(&p);
            assert_eq!(part, path_part(&p));
            assert_eq!(
                plain,
                !part.contains('%') && !has_dot_segment(part.as_bytes()),
                "{p:?}"
            );
            let Ok(n) = normalize(&p) else {
                assert!(check_escapes(&p).is_err(), "{p:?}");
                continue;
            };
            ok += 1;
            assert_eq!(check_escapes(&p), Ok(()), "{p:?}");
            assert!(n.starts_with('/'), "{p:?} -> {n:?}");
            assert!(!has_dot_segment(n.as_bytes()), "{p:?} -> {n:?}");
            assert!(!n.contains('?'), "{p:?} -> {n:?}");
            assert_eq!(normalize(&n).as_deref(), Ok(&*n), "{p:?} -> {n:?}");
            assert!(matches!(normalize(&n), Ok(Cow::Borrowed(_))) || n.contains('%'));
        }
        assert!(ok > 5_000, "{ok}");
    }
}
