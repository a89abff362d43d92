//! One classified error at the proxy boundary: what went wrong (`Kind`), whose fault it was
//! (`Side`), and the status a client gets, so logs and metrics say the same thing.

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    Internal,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::Client, Side::Backend, Side::Internal];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
            Side::Internal => "internal",
        }
    }
}

macro_rules! kinds {
    ($($variant:ident => $name:literal, $side:ident;)*) => {
        /// Every error the data plane counts. `as_str` is the `kind` metric label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Kind { $($variant),* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];
            pub const COUNT: usize = Kind::ALL.len();

            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$variant => $name),* }
            }

            pub fn side(self) -> Side {
                match self { $(Kind::$variant => Side::$side),* }
            }
        }
    };
}

kinds! {
    BadRequest => "bad_request", Client;
    HeadTooLarge => "head_too_large", Client;
    HeadTimeout => "head_timeout", Client;
    BadHandshake => "bad_handshake", Client;
    ProxyProtocol => "proxy_protocol", Client;
    BadClientHello => "bad_client_hello", Client;
    ProxyUntrusted => "proxy_untrusted", Client;
    NoRoute => "no_route", Client;
    ClientReset => "client_reset", Client;
    ClientTimeout => "client_idle_timeout", Client;
    ClientFraming => "client_ws_framing", Client;
    BodyTimeout => "client_body_timeout", Client;
    LimitTotal => "limit_connections", Client;
    LimitSource => "limit_source", Client;
    LimitRate => "limit_rate", Client;
    LimitPending => "limit_proxy_pending", Client;
    NoBackend => "no_backend", Backend;
    ConnectRefused => "connect_failed", Backend;
    ConnectTimeout => "connect_timeout", Backend;
    BackendTls => "backend_tls_failed", Backend;
    ResponseTimeout => "response_timeout", Backend;
    BackendTimeout => "backend_body_timeout", Backend;
    BadResponse => "bad_response", Backend;
    BadAccept => "bad_accept", Backend;
    BackendReset => "backend_reset", Backend;
    BackendFraming => "backend_ws_framing", Backend;
    Drained => "drained", Internal;
    Internal => "internal", Internal;
}

impl Kind {
    /// The status a client gets for this error when a response is still possible.
    pub fn status(self) -> Option<u16> {
        Some(match self {
            Kind::BadRequest | Kind::BadHandshake | Kind::ProxyProtocol | Kind::ProxyUntrusted => {
                400
            }
            Kind::HeadTooLarge => 431,
            Kind::HeadTimeout | Kind::BodyTimeout => 408,
            Kind::NoRoute => 404,
            // Over a per-source limit: the client should slow down (429); over the process-wide
            // or pending-header cap, the gateway is full (503).
            Kind::LimitTotal | Kind::LimitPending | Kind::NoBackend => 503,
            Kind::LimitSource | Kind::LimitRate => 429,
            Kind::ConnectRefused | Kind::BackendTls | Kind::BadResponse | Kind::BadAccept => 502,
            Kind::ConnectTimeout | Kind::ResponseTimeout | Kind::BackendTimeout => 504,
            Kind::Internal => 500,
            Kind::ClientReset
            | Kind::ClientTimeout
            | Kind::BackendReset
            | Kind::ClientFraming
            | Kind::BackendFraming
            | Kind::Drained
            | Kind::BadClientHello => return None,
        })
    }

    /// Whether another backend may be tried for the same request.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Kind::ConnectRefused | Kind::ConnectTimeout | Kind::BackendTls
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for k in Kind::ALL {
            assert!(seen.insert(k.as_str()), "duplicate {}", k.as_str());
            assert!(k
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(Kind::COUNT, seen.len());
    }

    #[test]
    fn statuses_match_the_brief() {
        assert_eq!(Kind::HeadTooLarge.status(), Some(431));
        assert_eq!(Kind::HeadTimeout.status(), Some(408));
        assert_eq!(Kind::NoBackend.status(), Some(503));
        assert_eq!(Kind::ConnectTimeout.status(), Some(504));
        assert_eq!(Kind::BadAccept.status(), Some(502));
        assert_eq!(Kind::LimitSource.status(), Some(429));
        assert_eq!(Kind::LimitRate.status(), Some(429));
        assert_eq!(Kind::LimitTotal.status(), Some(503));
        assert!(Kind::ConnectRefused.retryable());
        assert!(!Kind::BadResponse.retryable());
        assert_eq!(Kind::BadAccept.side(), Side::Backend);
    }
}
