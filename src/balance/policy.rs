//! Balancing policies and their parsing from config strings (`balance = "..."`, `--balance`).

use std::fmt;

/// A usual `load_factor` for those who turn bounded load on (HAProxy's documentation suggests
/// 125 for `hash-balance-factor`). Not a default: without `load_factor` hashing is unbounded,
/// as HAProxy (`hash-balance-factor 0`) and Envoy do unless asked, because a bound trades
/// stickiness for balance (see the module docs of `balance`).
pub const SUGGESTED_LOAD_FACTOR: f64 = 1.25;

/// Default route cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "ringway";

/// What the accepted policy strings look like; quoted in every parse error.
pub const ACCEPTED: &str = "round-robin | least-conn | hash:ip | hash:sni | hash:header:NAME | \
                            hash:cookie:NAME | hash:query:NAME | cookie";

/// Where a hash policy takes its key from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client address (after the PROXY protocol, if any). The only key in tcp mode.
    Ip,
    /// A request header, by name (matched case-insensitively by the `KeySource`).
    Header(String),
    /// A cookie, by name.
    Cookie(String),
    /// A query parameter, by name.
    Query(String),
    /// The server name of a TLS ClientHello, read by a `tls_passthrough` tcp listener without
    /// terminating TLS (devices with end-to-end TLS, keyed by the name they dial).
    Sni,
}

impl HashKey {
    /// Whether a tcp listener (no parsed request) can provide this key.
    pub fn works_in_tcp_mode(&self) -> bool {
        matches!(self, HashKey::Ip | HashKey::Sni)
    }

    /// Whether an http listener can provide this key (it has no ClientHello).
    pub fn works_in_http_mode(&self) -> bool {
        !matches!(self, HashKey::Sni)
    }
}

/// How an upstream picks a backend for a new connection (or request, in http mode).
#[derive(Clone, PartialEq)]
pub enum Policy {
    /// Smooth weighted round robin (nginx).
    RoundRobin,
    /// Fewest `live / weight`; ties broken by a rotating start.
    LeastConn,
    /// Consistent hashing (Maglev) of a key; requests without the key fall back to
    /// least-conn. `load_factor: Some(c)` (`c >= 1.0`) turns on bounded load: a backend takes
    /// at most `ceil(c × average)` live connections, except that a key which already has live
    /// connections on a backend stays there. `None` (the default): no bound, a key goes where
    /// the table says, whatever the loads.
    Hash {
        key: HashKey,
        load_factor: Option<f64>,
    },
    /// Route-cookie stickiness: a valid cookie names the backend; anything else is balanced
    /// by `fallback` (never `Cookie` itself) and gets a new cookie. `secret` keys the opaque
    /// cookie values and must be the same on every replica. `verify` are retired secrets
    /// (rotation): cookies they signed are still honoured, and re-issued under `secret`.
    Cookie {
        fallback: Box<Policy>,
        secret: Vec<u8>,
        verify: Vec<Vec<u8>>,
        name: String,
    },
}

impl fmt::Debug for Policy {
    /// Never prints the cookie secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::RoundRobin => f.write_str("RoundRobin"),
            Policy::LeastConn => f.write_str("LeastConn"),
            Policy::Hash { key, load_factor } => f
                .debug_struct("Hash")
                .field("key", key)
                .field("load_factor", load_factor)
                .finish(),
            Policy::Cookie {
                fallback,
                secret,
                verify,
                name,
            } => f
                .debug_struct("Cookie")
                .field("fallback", fallback)
                .field("secret", &format_args!("<{} bytes>", secret.len()))
                .field(
                    "verify",
                    &format_args!("<{} retired secrets>", verify.len()),
                )
                .field("name", name)
                .finish(),
        }
    }
}

impl fmt::Display for Policy {
    /// The config spelling (`hash:header:X-Device-Id`), without load factor or secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::RoundRobin => f.write_str("round-robin"),
            Policy::LeastConn => f.write_str("least-conn"),
            Policy::Hash {
                key: HashKey::Ip, ..
            } => f.write_str("hash:ip"),
            Policy::Hash {
                key: HashKey::Sni, ..
            } => f.write_str("hash:sni"),
            Policy::Hash {
                key: HashKey::Header(n),
                ..
            } => write!(f, "hash:header:{n}"),
            Policy::Hash {
                key: HashKey::Cookie(n),
                ..
            } => write!(f, "hash:cookie:{n}"),
            Policy::Hash {
                key: HashKey::Query(n),
                ..
            } => write!(f, "hash:query:{n}"),
            Policy::Cookie { .. } => f.write_str("cookie"),
        }
    }
}

impl Policy {
    /// Parse a `balance` string. Hash policies get no load bound; `cookie` gets
    /// name `ringway`, fallback `least-conn` and an EMPTY secret — the config layer must
    /// supply one with [`Policy::cookie`] (an empty secret still never reveals an address,
    /// but anyone can compute the values).
    pub fn parse(s: &str) -> Result<Policy, String> {
        let bad = |why: &str| {
            Err(format!(
                "invalid balance policy {s:?}: {why}; expected {ACCEPTED}"
            ))
        };
        match s {
            "round-robin" => return Ok(Policy::RoundRobin),
            "least-conn" => return Ok(Policy::LeastConn),
            "hash:ip" => return Ok(Policy::hash(HashKey::Ip)),
            "hash:sni" => return Ok(Policy::hash(HashKey::Sni)),
            "cookie" => {
                return Ok(Policy::Cookie {
                    fallback: Box::new(Policy::LeastConn),
                    secret: Vec::new(),
                    verify: Vec::new(),
                    name: DEFAULT_COOKIE_NAME.to_owned(),
                })
            }
            _ => {}
        }
        let Some(rest) = s.strip_prefix("hash:") else {
            return bad("unknown policy");
        };
        let Some((kind, name)) = rest.split_once(':') else {
            return bad("a hash key is `ip` or `header:NAME`, `cookie:NAME`, `query:NAME`");
        };
        if name.is_empty() {
            return bad("the key name is empty");
        }
        if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return bad("the key name must be visible ASCII without ':'");
        }
        let key = match kind {
            "header" => HashKey::Header(name.to_owned()),
            "cookie" => HashKey::Cookie(name.to_owned()),
            "query" => HashKey::Query(name.to_owned()),
            _ => return bad("a hash key is `ip` or `header:NAME`, `cookie:NAME`, `query:NAME`"),
        };
        Ok(Policy::hash(key))
    }

    /// Hash on `key`, unbounded.
    pub fn hash(key: HashKey) -> Policy {
        Policy::Hash {
            key,
            load_factor: None,
        }
    }

    /// Set (`Some`) or clear (`None`) the load bound of a hash policy (or of a cookie
    /// policy's hash fallback). Refuses values below 1.0 (no backend could ever take the
    /// average) and non-finite ones. Other policies are returned unchanged.
    pub fn with_load_factor(self, factor: Option<f64>) -> Result<Policy, String> {
        if let Some(f) = factor {
            if !f.is_finite() || f < 1.0 {
                return Err(format!("load_factor must be a number >= 1.0, got {f}"));
            }
        }
        Ok(match self {
            Policy::Hash { key, .. } => Policy::Hash {
                key,
                load_factor: factor,
            },
            Policy::Cookie {
                fallback,
                secret,
                verify,
                name,
            } => Policy::Cookie {
                fallback: Box::new(fallback.with_load_factor(factor)?),
                secret,
                verify,
                name,
            },
            other => other,
        })
    }

    /// A route-cookie policy. `fallback` is parsed like `balance` but may not be `cookie`.
    pub fn cookie(name: &str, secret: &[u8], fallback: &str) -> Result<Policy, String> {
        let fallback = Policy::parse(fallback).map_err(|e| format!("cookie fallback: {e}"))?;
        if matches!(fallback, Policy::Cookie { .. }) {
            return Err(
                "cookie fallback: `cookie` cannot be its own fallback; expected \
                        round-robin | least-conn | hash:..."
                    .to_owned(),
            );
        }
        if name.is_empty() || !name.bytes().all(is_cookie_name_byte) {
            return Err(format!(
                "cookie name {name:?} is not a valid cookie name (RFC 6265 token: visible \
                 ASCII without separators like ()<>@,;:\\\"/[]?={{}})"
            ));
        }
        Ok(Policy::Cookie {
            fallback: Box::new(fallback),
            secret: secret.to_vec(),
            verify: Vec::new(),
            name: name.to_owned(),
        })
    }

    /// Adds retired cookie secrets (rotation: the first secret signs, all verify). Other
    /// policies are returned unchanged.
    pub fn with_verify_secrets<S: AsRef<[u8]>>(self, retired: &[S]) -> Policy {
        match self {
            Policy::Cookie {
                fallback,
                secret,
                name,
                ..
            } => Policy::Cookie {
                fallback,
                secret,
                verify: retired.iter().map(|s| s.as_ref().to_vec()).collect(),
                name,
            },
            other => other,
        }
    }

    /// The policy that balances requests this policy cannot place by itself (a cookie
    /// policy's fallback), or `self`.
    pub fn effective(&self) -> &Policy {
        match self {
            Policy::Cookie { fallback, .. } => fallback,
            p => p,
        }
    }

    /// Usable on an http listener (no ClientHello to take a server name from).
    pub fn works_in_http_mode(&self) -> Result<(), String> {
        match self.effective() {
            Policy::Hash { key, .. } if !key.works_in_http_mode() => Err(format!(
                "balance {self} needs a TLS ClientHello; only tcp listeners with \
                 `tls_passthrough = true` read one"
            )),
            _ => Ok(()),
        }
    }

    /// Usable on a tcp listener (no request to take a header, cookie or query from).
    pub fn works_in_tcp_mode(&self) -> Result<(), String> {
        match self {
            Policy::RoundRobin | Policy::LeastConn => Ok(()),
            Policy::Hash { key, .. } if key.works_in_tcp_mode() => Ok(()),
            p => Err(format!(
                "balance {p} needs an HTTP request; tcp listeners accept round-robin | \
                 least-conn | hash:ip | hash:sni"
            )),
        }
    }
}

/// RFC 6265 `token` bytes.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}
