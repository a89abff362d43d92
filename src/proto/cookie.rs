//! Cookies and query parameters: the sticky keys that live inside a request.
//!
//! Route-cookie stickiness (brief, problem 1) reads one cookie on every
//! request, strips it before the request goes to the backend (the backend
//! did not set it and should not see it), and sets it on the first response.
//! Hash-by-query-parameter reads one parameter of the path. All of it
//! borrows from the head; nothing is decoded into new memory.

use std::io::Write;

use super::{eq_ic, trim_ows};

/// Attributes of the route cookie we set. The defaults are `Path=/; HttpOnly; SameSite=Lax`:
/// the cookie routes the whole host, scripts have no business reading it, and Lax keeps it on
/// top-level navigations (the socket.io polling requests are same-site anyway). Built once per
/// config (validated there: path without `;`, SameSite one of Strict/Lax/None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    pub path: String,
    pub http_only: bool,
    /// `None` leaves the attribute out.
    pub same_site: Option<String>,
    /// Add `Secure` (set when the listener is HTTPS-terminated upstream of us).
    pub secure: bool,
    /// Add `Max-Age=N`; `None` makes a session cookie.
    pub max_age: Option<u64>,
}

impl Default for CookieAttrs {
    fn default() -> Self {
        CookieAttrs {
            path: "/".into(),
            http_only: true,
            same_site: Some("Lax".into()),
            secure: false,
            max_age: None,
        }
    }
}

/// Iterates `(name, value)` pairs of one Cookie header value
/// (`a=b; c="d"`), trimmed; the value keeps any quotes.
fn pairs(v: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    v.split(|&b| b == b';').filter_map(|p| {
        let p = trim_ows(p);
        let eq = p.iter().position(|&b| b == b'=')?;
        Some((trim_ows(&p[..eq]), trim_ows(&p[eq + 1..])))
    })
}

/// The value of cookie `name` from any Cookie header (first match wins).
/// Names compare exactly (RFC 6265 §5.4 treats them as case-sensitive);
/// surrounding double quotes are removed from the value.
pub fn find_cookie<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .filter(|h| eq_ic(h.name.as_bytes(), b"cookie"))
        .find_map(|h| pairs(h.value).find(|(n, _)| *n == name.as_bytes()))
        .map(|(_, v)| unquote(v))
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Appends the value of one Cookie header without cookie `name`, separating
/// the kept pairs with `"; "`. Returns false (and appends nothing) when no
/// pair is left, so the caller can drop the header entirely.
pub fn write_cookie_without(out: &mut Vec<u8>, value: &[u8], name: &str) -> bool {
    let mut first = true;
    for part in value.split(|&b| b == b';') {
        let part = trim_ows(part);
        if part.is_empty() {
            continue;
        }
        let pname = part
            .iter()
            .position(|&b| b == b'=')
            .map_or(part, |eq| trim_ows(&part[..eq]));
        if pname == name.as_bytes() {
            continue;
        }
        if !first {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(part);
        first = false;
    }
    !first
}

/// The value of query parameter `name` in a request path (`/p?a=1&b=2`).
/// Exact, undecoded name match; `?a` gives `Some("")`. Stops at `#`.
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

/// Appends a Set-Cookie *value* (`name=value; Path=/; HttpOnly;
/// SameSite=Lax[; Secure][; Max-Age=N]`), without the header name, so it
/// can be handed to [`super::RespForwardOpts::set_cookie`]. The caller
/// guarantees `name` is a token and `value` is cookie-octets (the route
/// cookie is an opaque value we generate, never client input).
pub fn write_set_cookie(out: &mut Vec<u8>, name: &str, value: &[u8], attrs: &CookieAttrs) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.extend_from_slice(b"; Path=");
    out.extend_from_slice(attrs.path.as_bytes());
    if attrs.http_only {
        out.extend_from_slice(b"; HttpOnly");
    }
    if let Some(ss) = &attrs.same_site {
        out.extend_from_slice(b"; SameSite=");
        out.extend_from_slice(ss.as_bytes());
    }
    if attrs.secure {
        out.extend_from_slice(b"; Secure");
    }
    if let Some(age) = attrs.max_age {
        // Writing an integer into a Vec cannot fail.
        let _ = write!(out, "; Max-Age={age}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name, value }
    }

    #[test]
    fn finds_cookie_across_headers() {
        let hs = [
            h("Host", b"x"),
            h("Cookie", b"a=1; rw=\"b7\""),
            h("cookie", b"sid=abc;route=r1 ;x=y"),
        ];
        assert_eq!(find_cookie(&hs, "a"), Some(&b"1"[..]));
        assert_eq!(find_cookie(&hs, "rw"), Some(&b"b7"[..]));
        assert_eq!(find_cookie(&hs, "route"), Some(&b"r1"[..]));
        assert_eq!(find_cookie(&hs, "x"), Some(&b"y"[..]));
        assert_eq!(find_cookie(&hs, "Route"), None);
        assert_eq!(find_cookie(&hs, "rout"), None);
        assert_eq!(find_cookie(&hs, "Host"), None);
    }

    #[test]
    fn empty_and_odd_values() {
        let hs = [h("Cookie", b"a=; b; =c; d=\"\"; e=\"")];
        assert_eq!(find_cookie(&hs, "a"), Some(&b""[..]));
        assert_eq!(find_cookie(&hs, "b"), None);
        assert_eq!(find_cookie(&hs, ""), Some(&b"c"[..]));
        assert_eq!(find_cookie(&hs, "d"), Some(&b""[..]));
        assert_eq!(find_cookie(&hs, "e"), Some(&b"\""[..]));
    }

    #[test]
    fn strips_one_cookie() {
        let mut out = Vec::new();
        assert!(write_cookie_without(&mut out, b"a=1; rw=x; b=2", "rw"));
        assert_eq!(out, b"a=1; b=2");
        out.clear();
        assert!(!write_cookie_without(&mut out, b" rw=x ;", "rw"));
        assert!(out.is_empty());
        assert!(write_cookie_without(&mut out, b"rwx=1;rw=2", "rw"));
        assert_eq!(out, b"rwx=1");
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("/socket.io/?EIO=4&transport=polling&sid=abc", "sid"),
            Some("abc")
        );
        assert_eq!(query_param("/p?a=1&b=2", "a"), Some("1"));
        assert_eq!(query_param("/p?a=1&b=2", "b"), Some("2"));
        assert_eq!(query_param("/p?aa=1", "a"), None);
        assert_eq!(query_param("/p?flag&x=1", "flag"), Some(""));
        assert_eq!(query_param("/p?x=1#frag", "x"), Some("1"));
        assert_eq!(query_param("/p", "a"), None);
        assert_eq!(query_param("/p?a=b=c", "a"), Some("b=c"));
    }

    #[test]
    fn set_cookie_attrs() {
        let mut out = Vec::new();
        write_set_cookie(&mut out, "rw", b"k1", &CookieAttrs::default());
        assert_eq!(out, b"rw=k1; Path=/; HttpOnly; SameSite=Lax");
        out.clear();
        write_set_cookie(
            &mut out,
            "rw",
            b"k1",
            &CookieAttrs {
                secure: true,
                max_age: Some(3600),
                ..CookieAttrs::default()
            },
        );
        assert_eq!(
            out,
            b"rw=k1; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=3600"
        );
        out.clear();
        write_set_cookie(
            &mut out,
            "rw",
            b"k1",
            &CookieAttrs {
                path: "/chat".into(),
                http_only: false,
                same_site: None,
                ..CookieAttrs::default()
            },
        );
        assert_eq!(out, b"rw=k1; Path=/chat");
    }
}
