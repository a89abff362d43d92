//! Operating-system limits that stop a load run long before the target does: open files,
//! source ports, and how we name them in reports.
//!
//! One source address gives at most ~28,000 ephemeral ports (the default
//! `ip_local_port_range` 32768–60999) towards one destination; spreading client sockets
//! over 127.0.0.1..127.0.0.254 multiplies that by 254 when the target is on loopback.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Raises the soft RLIMIT_NOFILE to the hard limit. Returns (soft, hard) after the call.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we own on the stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return Err(io::Error::last_os_error());
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok((rl.rlim_cur as u64, rl.rlim_max as u64))
}

/// Current (soft, hard) RLIMIT_NOFILE.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn nofile() -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own on the stack.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
    }
    (rl.rlim_cur as u64, rl.rlim_max as u64)
}

/// The source address for client connection number `idx` towards `target`: spread over
/// 127.0.0.1..=127.0.0.254 when the target is IPv4 loopback, none otherwise.
pub fn source_for(target: &SocketAddr, idx: u64) -> Option<IpAddr> {
    match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => {
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (idx % 254) as u8)))
        }
        _ => None,
    }
}

/// Connects client number `idx` to `target` within `timeout`, binding a spread source
/// address first on loopback (with IP_BIND_ADDRESS_NO_PORT, so the port is chosen at
/// connect time per destination and not reserved at bind time). TCP_NODELAY is set.
pub async fn connect(target: SocketAddr, idx: u64, timeout: Duration) -> io::Result<TcpStream> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source_for(&target, idx) {
        set_bind_no_port(&sock);
        sock.bind(SocketAddr::new(src, 0))?;
    }
    let stream = match tokio::time::timeout(timeout, sock.connect(target)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_bind_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is owned by `sock`, alive for the call; the option value is a c_int
    // on our stack. Failure only costs port spreading, so the result is ignored.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A short stable name for an I/O error: the errno name for the limits that matter,
/// the error kind otherwise.
pub fn io_error_kind(e: &io::Error) -> String {
    if let Some(k) = crate::tls::error_kind(e) {
        return k;
    }
    if let Some(code) = e.raw_os_error() {
        if let Some(name) = errno_name(code) {
            return name.to_string();
        }
    }
    match e.kind() {
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::ConnectionRefused => "ECONNREFUSED".into(),
        io::ErrorKind::ConnectionReset => "ECONNRESET".into(),
        io::ErrorKind::BrokenPipe => "EPIPE".into(),
        io::ErrorKind::UnexpectedEof => "closed".into(),
        k => format!("{k:?}"),
    }
}

fn errno_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return None,
    })
}

/// When an error kind is a machine limit rather than the target's fault, explains it and
/// says how to lift it. Reports print these lines prominently.
pub fn explain_limit(kind: &str) -> Option<String> {
    let (soft, hard) = nofile();
    Some(match kind {
        "EMFILE" => format!(
            "the load generator ran out of file descriptors (RLIMIT_NOFILE soft {soft}, hard {hard}); \
             raise the hard limit (ulimit -Hn / LimitNOFILE) or use fewer connections"
        ),
        "ENFILE" => "the system-wide file table is full (fs.file-max)".to_string(),
        "EADDRNOTAVAIL" => "no free source port/address (net.ipv4.ip_local_port_range, TIME_WAIT); \
                            spread over more source addresses or lower the rate"
            .to_string(),
        "EADDRINUSE" => "source address/port already in use (ephemeral ports exhausted)".to_string(),
        "ENOBUFS" | "ENOMEM" => "the kernel ran out of socket memory (net.ipv4.tcp_mem, net.core.*mem)".to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_on_loopback_only() {
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(source_for(&lo, 0), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_for(&lo, 253), Some("127.0.0.254".parse().unwrap()));
        assert_eq!(source_for(&lo, 254), Some("127.0.0.1".parse().unwrap()));
        let other: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(source_for(&other, 5), None);
    }

    #[test]
    fn limits_are_named() {
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(io_error_kind(&e), "EMFILE");
        assert!(explain_limit("EMFILE")
            .unwrap()
            .contains("file descriptors"));
        assert!(explain_limit("ECONNREFUSED").is_none());
    }

    #[test]
    fn raising_nofile_reaches_hard_limit() {
        let (soft, hard) = raise_nofile().unwrap();
        assert_eq!(soft, hard);
    }
}
