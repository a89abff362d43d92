//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`, or one address) for trust rules such as a
//! listener's `proxy_protocol_from`.

use std::net::IpAddr;

/// An IPv4 or IPv6 network. IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`, what a dual-stack
/// socket reports) match IPv4 ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address with the host bits cleared.
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address (a /32 or /128). Host bits set below the prefix
    /// (`10.0.0.1/8`) are an error: such a range is usually a typo for something else.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| {
            format!("`{s}` is not an address range; write e.g. 10.0.0.0/8 or 2001:db8::/32")
        })?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "`{s}`: the prefix length must be a number 0..={max}"
                    ))
                }
            },
        };
        let cidr = Cidr { net: ip, prefix };
        if mask(ip, prefix) != ip {
            return Err(format!(
                "`{s}` has host bits set below /{prefix}; did you mean {}/{prefix}?",
                mask(ip, prefix)
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::from((bits & m).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::from((bits & m).to_be_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_match_what_they_should() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(
            c.contains(ip("::ffff:10.9.9.9")),
            "v4-mapped peers match v4 ranges"
        );
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert_eq!(one.to_string(), "192.0.2.7/32");
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::2")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::2")));
    }

    #[test]
    fn malformed_ranges_are_refused_with_a_hint() {
        for (bad, says) in [
            ("", "not an address range"),
            ("10.0.0/8", "not an address range"),
            ("10.0.0.0/33", "0..=32"),
            ("10.0.0.0/", "0..=32"),
            ("10.0.0.0/x", "0..=32"),
            ("2001:db8::/129", "0..=128"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("lb.example.com", "not an address range"),
            ("10.0.0.0/8/8", "0..=32"),
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
