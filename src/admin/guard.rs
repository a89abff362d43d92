//! The admin port's request guards: which endpoints need the token, and which requests come
//! from another site (a browser tricked into calling the port: CSRF).

use super::http::{Request, Response};

/// Endpoints that mutate (`/reload`, the drains under `/backends/`) or reveal backends,
/// addresses and cookie validity (`/lookup`, `/backends`): behind the token when one is
/// configured. `/metrics`, `/healthz` and `/readyz` stay open for Prometheus and the kubelet.
pub fn protected(path: &str) -> bool {
    matches!(path, "/reload" | "/lookup" | "/backends") || path.starts_with("/backends/")
}

/// `Some(refusal)` for a request a browser sent on behalf of another site:
/// - `Sec-Fetch-Site: cross-site | same-site` (modern browsers send it on every request);
/// - an `Origin` that is not this host (`http(s)://` + the `Host` header), or `null`;
/// - a POST whose body is a form or `text/plain`, the content types a page may send anywhere
///   without a CORS preflight (`curl -X POST` sends none, and JSON is allowed).
///
/// Tools (curl, Prometheus, the kubelet) send none of these headers and pass.
pub fn cross_site(req: &Request) -> Option<Response> {
    if let Some(site) = &req.sec_fetch_site {
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Some(Response::error(
                403,
                format!("cross-site requests are refused (Sec-Fetch-Site: {site})"),
            ));
        }
    }
    if let Some(origin) = &req.origin {
        let host = req.host.as_deref().unwrap_or("");
        let same = !host.is_empty()
            && (origin.eq_ignore_ascii_case(&format!("http://{host}"))
                || origin.eq_ignore_ascii_case(&format!("https://{host}")));
        if !same {
            return Some(Response::error(
                403,
                format!("cross-site requests are refused (Origin: {origin})"),
            ));
        }
    }
    if req.method == "POST" {
        if let Some(ct) = &req.content_type {
            let mime = ct.split(';').next().unwrap_or("").trim();
            let simple = [
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "text/plain",
            ];
            if simple.iter().any(|s| mime.eq_ignore_ascii_case(s)) {
                return Some(Response::error(
                    415,
                    format!(
                        "POST with Content-Type {mime} is refused (a web page can send it \
                         cross-site); send no body, or application/json"
                    ),
                ));
            }
        }
    }
    None
}
