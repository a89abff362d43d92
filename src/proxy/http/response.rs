//! Phase 4, `relay_response`: interim responses, then either the final response (head, body
//! per its framing) or a verified `101` that turns both sockets into a tunnel. Whether either
//! connection is reused afterwards is decided here, from the state of the bytes (`reuse`).

use crate::error::Kind;
use crate::io::Driver;
use crate::proto::{self, RespBody, Response};
use crate::proxy::client::ByteStream;

use super::super::access;
use super::super::body::{self, BodyError, Framing, Stalls};
use super::super::head_reader;
use super::exchange::Sent;
use super::{Backend, Conn, Failure, Plan, Step};

/// httparse slots for a response head.
const HEADER_SLOTS: usize = 128;

/// A final response, shaped: its head is in `Conn::out`, ready to write.
struct Shaped {
    head_len: usize,
    code: u16,
    /// `None` for a verified 101.
    body: Option<Framing>,
    client_keep: bool,
    backend_keep: bool,
}

impl<D: Driver> Conn<'_, D> {
    pub(super) async fn relay_response(
        &mut self,
        plan: Plan,
        backend: Backend<D>,
        sent: Sent,
    ) -> Result<Step<D>, Failure> {
        self.rbuf.clear();
        let started = std::time::Instant::now();
        self.skip_interims(&plan, &backend).await?;
        let cookie = self.set_cookie(&backend);
        let shaped = {
            let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
            let resp = match proto::parse_response(&self.rbuf, &mut headers, self.cur.head_method) {
                Ok(Some(r)) => r,
                _ => return Err(Failure::answered(Kind::BadResponse, 502)),
            };
            count_response(&backend, resp.code);
            let cookie = (!cookie.is_empty()).then_some(cookie.as_slice());
            shape(&resp, &plan, sent, cookie, &mut self.out)?
        };
        if shaped.body.is_none() {
            return self.switch_protocols(shaped, backend, plan.info).await;
        }
        if let Some(ui) = self.cur.upgrade.take() {
            self.gen.upstreams[ui].counters.upgrade(self.w.id, false); // declined
        }
        self.relay_final(shaped, backend, started, &plan.info).await
    }

    /// Relays 1xx responses (not 101) to HTTP/1.1 clients, drops them for HTTP/1.0 ones, until
    /// `rbuf` starts with the final response head.
    async fn skip_interims(&mut self, plan: &Plan, backend: &Backend<D>) -> Result<(), Failure> {
        let cfg = &self.gen.config;
        let max = cfg.limits.max_head_bytes.max(16 * 1024);
        let stream = &backend.conn.stream;
        loop {
            let t = cfg.timeouts.response_head;
            if let Err(kind) = head_reader::read_response_head(stream, &mut self.rbuf, t, max).await
            {
                return Err(Failure::answered(kind, kind.status().unwrap_or(502)));
            }
            let interim = {
                let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
                match proto::parse_response(&self.rbuf, &mut headers, self.cur.head_method) {
                    Ok(Some(r)) if r.is_interim() => Some(r.head_len),
                    Ok(Some(_)) => None,
                    _ => return Err(Failure::answered(Kind::BadResponse, 502)),
                }
            };
            let Some(n) = interim else { return Ok(()) };
            if plan.http11 && self.client.write_all(&self.rbuf[..n]).await.is_err() {
                return Err(Failure::quiet(Kind::ClientReset));
            }
            self.rbuf.drain(..n);
        }
    }

    /// The verified 101. Any bytes the backend sent right after it (left in `rbuf`) and the
    /// client's frames that arrived with its head (left in `buf`) go to the tunnel, which
    /// passes them on first (through its frame trackers).
    async fn switch_protocols(
        &mut self,
        s: Shaped,
        backend: Backend<D>,
        info: access::RequestInfo,
    ) -> Result<Step<D>, Failure> {
        let client_gone = Failure::quiet(Kind::ClientReset);
        self.client
            .write_all(&self.out)
            .await
            .map_err(|_| client_gone)?;
        self.cur.responded = true;
        self.rbuf.drain(..s.head_len);
        if let Some(ui) = self.cur.upgrade.take() {
            self.gen.upstreams[ui].counters.upgrade(self.w.id, true);
        }
        Ok(Step::Tunnel(Box::new((backend, info))))
    }

    async fn relay_final(
        &mut self,
        s: Shaped,
        backend: Backend<D>,
        started: std::time::Instant,
        info: &access::RequestInfo,
    ) -> Result<Step<D>, Failure> {
        if self.client.write_all(&self.out).await.is_err() {
            return Err(Failure::quiet(Kind::ClientReset));
        }
        self.cur.responded = true;
        self.rbuf.drain(..s.head_len);
        let t = &self.gen.config.timeouts;
        let stalls = Stalls {
            src: t.backend_read,
            dst: t.client_body,
        };
        let framing = s.body.unwrap_or(Framing::None);
        let stream = &backend.conn.stream;
        let down = body::forward(stream, &self.client, &mut self.rbuf, framing, stalls)
            .await
            .map_err(response_body_failed)?;
        self.log_response(&backend, s.code, started, down, info);
        // A backend that sent more than it framed is broken: never reuse it.
        if s.backend_keep && self.rbuf.is_empty() {
            self.kept = Some(backend);
        }
        self.rbuf.clear();
        Ok(if s.client_keep {
            Step::Next
        } else {
            Step::Close
        })
    }

    /// The route cookie, when the policy wants it issued (once per new session: the only
    /// allocation of an exchange, and only then).
    fn set_cookie(&self, backend: &Backend<D>) -> Vec<u8> {
        let mut out = Vec::new();
        let up = &self.gen.upstreams[backend.upstream];
        if !backend.conn.set_cookie {
            return out;
        }
        if let (Some(c), Some(value)) = (&up.cookie, backend.table.cookie_value(backend.conn.index))
        {
            let secure = c.attrs.secure || (c.secure_auto && self.lcfg.tls_terminated);
            let attrs = proto::CookieAttrs {
                secure,
                ..c.attrs.clone()
            };
            proto::write_set_cookie(&mut out, &c.name, value.as_bytes(), &attrs);
        }
        out
    }

    fn log_response(
        &self,
        backend: &Backend<D>,
        status: u16,
        started: std::time::Instant,
        down: u64,
        info: &access::RequestInfo,
    ) {
        let up = &self.gen.upstreams[backend.upstream];
        up.counters.response(self.w.id, started);
        access::log(
            &self.gen.config.log,
            access::Entry {
                client: self.peer,
                listener: &self.lcfg.name,
                upstream: &up.cfg.name,
                backend: backend.table.name(backend.conn.index).unwrap_or("-"),
                backend_addr: backend.table.addr(backend.conn.index),
                request: Some(info),
                status,
                started,
                bytes_up: 0,
                bytes_down: down,
                end: "response",
            },
        );
    }
}

/// Checks a final response against the request and writes the head we relay into `out`.
fn shape(
    resp: &Response<'_, '_>,
    plan: &Plan,
    sent: Sent,
    set_cookie: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<Shaped, Failure> {
    out.clear();
    if resp.code == 101 {
        let verified = match (plan.ws_key, resp.ws_accept) {
            (Some(key), Some(accept)) => {
                sent == Sent::Whole
                    && resp
                        .upgrade
                        .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"))
                    && proto::check_accept(accept, key.as_bytes())
            }
            _ => false,
        };
        if !verified {
            // A 101 to a request that did not ask for an upgrade is a broken backend, not a
            // failed upgrade.
            let kind = if plan.ws_key.is_some() {
                Kind::BadAccept
            } else {
                Kind::BadResponse
            };
            return Err(Failure::answered(kind, 502));
        }
        let opts = proto::RespForwardOpts {
            set_cookie,
            close: false,
            dechunk: false,
        };
        proto::write_response_head(resp, out, &opts);
        return Ok(Shaped {
            head_len: resp.head_len,
            code: 101,
            body: None,
            client_keep: false,
            backend_keep: false,
        });
    }
    let framing = match resp.body {
        RespBody::None => Framing::None,
        RespBody::Length(n) => Framing::Length(n),
        // An HTTP/1.0 client cannot read chunked framing: it gets the payload, ended by close.
        RespBody::Chunked if !plan.http11 => Framing::Dechunk,
        RespBody::Chunked => Framing::Chunked,
        RespBody::UntilClose => Framing::UntilClose,
    };
    let (client_keep, backend_keep) = reuse(plan.keep_alive, resp.keep_alive, sent, framing);
    let opts = proto::RespForwardOpts {
        set_cookie,
        close: !client_keep,
        dechunk: framing == Framing::Dechunk,
    };
    proto::write_response_head(resp, out, &opts);
    Ok(Shaped {
        head_len: resp.head_len,
        code: resp.code,
        body: Some(framing),
        client_keep,
        backend_keep,
    })
}

/// Which connections can carry another exchange once this response has been relayed whole:
/// only those whose bytes are all accounted for. A request body the backend did not take
/// whole leaves the client's bytes unread and the backend's framing unknown; a close-delimited
/// response ends both.
/// A de-chunked body is close-delimited for the client only: the backend's framing is intact.
fn reuse(client_wants: bool, backend_offers: bool, sent: Sent, framing: Framing) -> (bool, bool) {
    let whole = sent == Sent::Whole && framing != Framing::UntilClose;
    let client_framed = framing != Framing::Dechunk;
    (
        client_wants && whole && client_framed,
        backend_offers && whole,
    )
}

fn count_response<D: Driver>(backend: &Backend<D>, code: u16) {
    if let Some(b) = backend.table.backend(backend.conn.index) {
        b.stats().record_response(code);
    }
}

fn response_body_failed(e: BodyError) -> Failure {
    tracing::debug!(error = ?e, "response body failed");
    Failure::quiet(match e {
        BodyError::Src(_) => Kind::BackendReset,
        BodyError::SrcStalled => Kind::BackendTimeout,
        BodyError::Bad(_) => Kind::BadResponse,
        BodyError::Dst(_) => Kind::ClientReset,
        BodyError::DstStalled => Kind::ClientTimeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_follows_the_bytes() {
        let len = Framing::Length(3);
        assert_eq!(reuse(true, true, Sent::Whole, len), (true, true));
        assert_eq!(reuse(false, true, Sent::Whole, len), (false, true));
        assert_eq!(reuse(true, false, Sent::Whole, len), (true, false));
        // The backend did not take the whole body: nothing is reusable.
        assert_eq!(reuse(true, true, Sent::Partial, len), (false, false));
        // A close-delimited body ends both.
        assert_eq!(
            reuse(true, true, Sent::Whole, Framing::UntilClose),
            (false, false)
        );
        // De-chunked for an HTTP/1.0 client: the close ends its body; the backend is intact.
        assert_eq!(
            reuse(true, true, Sent::Whole, Framing::Dechunk),
            (false, true)
        );
    }
}
