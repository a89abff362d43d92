//! The resolver (hickory) and the translation of its answers into [`Answer`]s.
//!
//! hickory's own cache is turned off: we schedule re-queries ourselves (TTL clamped to
//! `[min_ttl, max_ttl]`), and a cache would hand back a stale answer whenever our `max_ttl`
//! is shorter than the record's TTL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use super::schedule::Answer;

/// A cheap handle (clones share one connection pool).
pub type Resolver = TokioResolver;

/// `resolver = Some(addr)`: that server only, no search list (tests, or an explicit cluster
/// DNS). `None`: /etc/resolv.conf — nameservers, `search` and `ndots` — as a pod would.
pub fn build(server: Option<SocketAddr>) -> Result<Resolver, ResolveError> {
    let mut builder = match server {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            let config = ResolverConfig::from_parts(None, vec![], group);
            let mut b = Resolver::builder_with_config(config, TokioConnectionProvider::default());
            b.options_mut().timeout = Duration::from_secs(2);
            b
        }
        None => Resolver::builder_tokio()?,
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    Ok(builder.build())
}

/// A and AAAA records of `name`, sorted, with the smallest TTL.
pub async fn lookup_ips(r: &Resolver, name: &str) -> Answer<Vec<IpAddr>> {
    r.clear_cache();
    match r.lookup_ip(name).await {
        Ok(l) => {
            let mut ips: Vec<IpAddr> = l.iter().collect();
            ips.sort_unstable();
            ips.dedup();
            if ips.is_empty() {
                return Answer::Negative;
            }
            Answer::Found(ips, min_ttl(l.as_lookup().records()))
        }
        Err(e) => classify(&e),
    }
}

/// SRV records of `name`: `(target host without the trailing dot, port)`, sorted.
pub async fn lookup_srv(r: &Resolver, name: &str) -> Answer<Vec<(String, u16)>> {
    r.clear_cache();
    match r.srv_lookup(name).await {
        Ok(l) => {
            let mut targets: Vec<(String, u16)> = l
                .iter()
                .map(|srv| {
                    let t = srv.target().to_ascii();
                    (t.trim_end_matches('.').to_ascii_lowercase(), srv.port())
                })
                .collect();
            targets.sort();
            targets.dedup();
            if targets.is_empty() {
                return Answer::Negative;
            }
            Answer::Found(targets, min_ttl(l.as_lookup().records()))
        }
        Err(e) => classify(&e),
    }
}

fn min_ttl(records: &[hickory_resolver::proto::rr::Record]) -> Duration {
    let ttl = records.iter().map(|r| r.ttl()).min().unwrap_or(0);
    Duration::from_secs(u64::from(ttl))
}

/// NXDOMAIN and NOERROR-without-records are answers about the name; everything else
/// (SERVFAIL, REFUSED, timeouts, I/O) says nothing about it and must not shrink the set.
fn classify<T>(e: &ResolveError) -> Answer<T> {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. })
            if *response_code == ResponseCode::NXDomain
                || *response_code == ResponseCode::NoError =>
        {
            Answer::Negative
        }
        _ => Answer::Failed,
    }
}
