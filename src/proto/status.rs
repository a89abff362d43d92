//! Canned error responses: what a client gets when we refuse it.
//!
//! They are `&'static [u8]` built by `concat!` at compile time, so answering
//! an error costs one write of a constant (no formatting, no allocation) —
//! which matters most exactly when something is flooding us with bad input.
//! Every one closes the connection: after an error the state of the client's
//! byte stream is unknown (a rejected head may have a body we did not
//! read), and guessing where the next request starts is how smuggling works.
//! The Content-Length literals are checked by a unit test that parses every
//! response.

use std::io::Write;

use super::Reject;

/// Builds one canned response. `$len` is the body length in bytes (checked
/// by the tests); extra header lines go before the blank line.
macro_rules! canned {
    ($code:literal, $reason:literal, $len:literal, $body:literal $(, $extra:literal)?) => {
        concat!(
            "HTTP/1.1 ", $code, " ", $reason, "\r\n",
            "Content-Type: text/plain\r\n",
            "Content-Length: ", $len, "\r\n",
            $($extra,)?
            "Connection: close\r\n\r\n",
            $body
        )
        .as_bytes()
    };
}

/// Statuses that have a canned response; anything else maps to 500.
pub const CANNED: [u16; 16] = [
    400, 403, 404, 405, 408, 413, 421, 426, 429, 431, 500, 501, 502, 503, 504, 505,
];

/// The complete response (head and body) for `status`. Unknown statuses get
/// the 500 response, so a caller bug never sends a malformed status line.
pub fn error_response(status: u16) -> &'static [u8] {
    match status {
        400 => canned!(
            400,
            "Bad Request",
            49,
            "bad request: malformed or ambiguous request head\n"
        ),
        403 => canned!(403, "Forbidden", 10, "forbidden\n"),
        404 => canned!(404, "Not Found", 32, "no route for this host and path\n"),
        405 => canned!(405, "Method Not Allowed", 19, "method not allowed\n"),
        408 => canned!(
            408,
            "Request Timeout",
            34,
            "request head not received in time\n"
        ),
        413 => canned!(413, "Content Too Large", 23, "request body too large\n"),
        421 => canned!(
            421,
            "Misdirected Request",
            50,
            "misdirected request: this host is not served here\n"
        ),
        426 => canned!(
            426,
            "Upgrade Required",
            57,
            "upgrade required: only WebSocket version 13 is supported\n",
            "Sec-WebSocket-Version: 13\r\n"
        ),
        429 => canned!(
            429,
            "Too Many Requests",
            33,
            "too many requests or connections\n"
        ),
        431 => canned!(
            431,
            "Request Header Fields Too Large",
            23,
            "request head too large\n"
        ),
        500 => canned!(500, "Internal Server Error", 23, "internal gateway error\n"),
        501 => canned!(501, "Not Implemented", 16, "not implemented\n"),
        502 => canned!(
            502,
            "Bad Gateway",
            60,
            "bad gateway: the backend failed or sent an invalid response\n"
        ),
        503 => canned!(503, "Service Unavailable", 21, "no backend available\n"),
        504 => canned!(
            504,
            "Gateway Timeout",
            35,
            "the backend did not answer in time\n"
        ),
        505 => canned!(
            505,
            "HTTP Version Not Supported",
            41,
            "HTTP version not supported: use HTTP/1.1\n"
        ),
        _ => canned!(500, "Internal Server Error", 23, "internal gateway error\n"),
    }
}

/// The standard reason phrase for a status we answer with ("" if unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends an error response whose body names the specific problem
/// (`"400 Bad Request: both Content-Length and Transfer-Encoding"`), for
/// when the caller prefers a precise message over the canned one. Writes
/// into a reused buffer; the only formatting is of integers.
pub fn write_error_response(out: &mut Vec<u8>, reject: &Reject) {
    let status = if reason_phrase(reject.status).is_empty() {
        500
    } else {
        reject.status
    };
    let phrase = reason_phrase(status);
    // "<code> <phrase>: <reason>\n"
    let body_len = 3 + 1 + phrase.len() + 2 + reject.reason.len() + 1;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n"
    );
    if status == 426 {
        out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    }
    let _ = write!(
        out,
        "Connection: close\r\n\r\n{status} {phrase}: {}\n",
        reject.reason
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bytes` as a full response and returns (code, body).
    fn check(bytes: &[u8]) -> (u16, Vec<u8>, bool) {
        let mut h = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut h);
        let n = match r.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("does not parse: {other:?}"),
        };
        let len = r
            .headers
            .iter()
            .find(|h| h.name == "Content-Length")
            .expect("has Content-Length");
        let len: usize = std::str::from_utf8(len.value).unwrap().parse().unwrap();
        assert_eq!(len, bytes.len() - n, "Content-Length matches the body");
        assert!(r
            .headers
            .iter()
            .any(|h| h.name == "Connection" && h.value == b"close"));
        assert!(r
            .headers
            .iter()
            .any(|h| h.name == "Content-Type" && h.value == b"text/plain"));
        let ws = r
            .headers
            .iter()
            .any(|h| h.name == "Sec-WebSocket-Version" && h.value == b"13");
        (r.code.unwrap(), bytes[n..].to_vec(), ws)
    }

    #[test]
    fn every_canned_response_is_valid() {
        for code in CANNED {
            let (got, body, ws) = check(error_response(code));
            assert_eq!(got, code);
            assert!(!body.is_empty());
            assert_eq!(ws, code == 426, "only 426 advertises the WebSocket version");
            assert!(!reason_phrase(code).is_empty());
        }
        assert_eq!(check(error_response(299)).0, 500);
    }

    #[test]
    fn precise_error_names_the_problem() {
        for code in CANNED.into_iter().chain([777]) {
            let mut out = Vec::new();
            write_error_response(
                &mut out,
                &Reject::new(code, "both Content-Length and Transfer-Encoding"),
            );
            let (got, body, ws) = check(&out);
            assert_eq!(got, if code == 777 { 500 } else { code });
            assert!(body.ends_with(b": both Content-Length and Transfer-Encoding\n"));
            assert_eq!(ws, code == 426);
        }
    }
}
