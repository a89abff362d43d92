//! Phase 3, `forward_request`: the head we built, then the request body per its framing.
//!
//! The body is always forwarded whole before the response is read, upgrade requests included:
//! holding an upgrade's body back (or forwarding its Content-Length without its bytes) lets the
//! client's next bytes fill the body the backend waits for, and a declined upgrade then pairs
//! responses with the wrong requests (request smuggling). After this phase the client buffer
//! holds exactly what followed the request.

use crate::error::Kind;
use crate::io::{self as rio, Driver};
use crate::proxy::client::ByteStream;

use super::super::body::{self, BodyError, Framing, Stalls};
use super::{Backend, Conn, Failure, Plan};

/// How much of the request reached the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Head and body, whole.
    Whole,
    /// The backend stopped taking the body (closed, reset, or took nothing for
    /// `timeouts.backend_read`): it may have answered early, so its response is still read,
    /// but neither connection can be reused.
    Partial,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl<D: Driver> Conn<'_, D> {
    pub(super) async fn forward_request(
        &mut self,
        plan: &Plan,
        backend: &Backend<D>,
    ) -> Result<Sent, Failure> {
        let t = &self.gen.config.timeouts;
        let stalls = Stalls {
            src: t.client_body,
            dst: t.backend_read,
        };
        let to = &backend.conn.stream;
        match rio::timeout(stalls.dst, to.write_all(&self.out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Failure::answered(Kind::BackendReset, 502)),
            Err(_) => return Err(Failure::new(Kind::BackendTimeout)),
        }
        if plan.body == Framing::None {
            return Ok(Sent::Whole);
        }
        // `Expect: 100-continue` is the gateway's to answer (it is not forwarded): the client
        // waits for it before sending the body. Only HTTP/1.1 clients may get a 1xx.
        let wants_continue = plan.expect_continue && plan.http11 && self.buf.is_empty();
        if wants_continue && self.client.write_all(CONTINUE).await.is_err() {
            return Err(Failure::quiet(Kind::ClientReset));
        }
        match body::forward(&self.client, to, &mut self.buf, plan.body, stalls).await {
            Ok(_) => Ok(Sent::Whole),
            Err(e) => request_body_failed(e),
        }
    }
}

fn request_body_failed(e: BodyError) -> Result<Sent, Failure> {
    tracing::debug!(error = ?e, "request body failed");
    match e {
        BodyError::Src(_) => Err(Failure::quiet(Kind::ClientReset)),
        BodyError::SrcStalled => Err(Failure::new(Kind::BodyTimeout)),
        BodyError::Bad(rej) => Err(Failure::answered(Kind::BadRequest, rej.status)),
        // The backend stopped taking the body: it may have answered early (413, 401, …), so its
        // answer is still read (within timeouts.response_head); neither side is reused.
        BodyError::Dst(_) | BodyError::DstStalled => Ok(Sent::Partial),
    }
}
