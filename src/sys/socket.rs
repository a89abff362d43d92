//! Socket setup: SO_REUSEPORT listeners (one per worker), non-blocking accept and connect.
//! Every socket ringway holds is non-blocking; readiness comes from the io backend.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// A non-blocking listening socket with SO_REUSEPORT, so every worker (and a second ringway
/// process during a rolling update) binds the same address and the kernel spreads connections.
///
/// `answers_first_bytes`: the listener's protocol answers the client's first bytes (an HTTP
/// request head, a TLS ClientHello), so the ACK of those bytes can ride on the answer instead
/// of going out alone: accepted sockets start with delayed ACKs (`TCP_QUICKACK` off), one
/// segment less per connection. Not for raw tcp listeners, whose backend may take its time
/// to answer while a client with Nagle on waits for that ACK.
pub fn bind_reuseport(
    addr: SocketAddr,
    backlog: i32,
    answers_first_bytes: bool,
) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit these from the listener (Linux clones the listening socket's
    // options into each child), so no setsockopt per connection.
    tune_client_options(&SockRef::from(&socket));
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    if answers_first_bytes {
        // After listen(2), which resets it; the accepted sockets inherit it. The kernel leaves
        // this mode by itself when the peer waits for an answer longer than the ACK delay
        // (TCP_QUICKACK is a hint, not a setting: tcp(7)).
        let _ = socket.set_quickack(false);
    }
    Ok(socket.into())
}

/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC: one syscall, no fcntl afterwards.
/// `Err(WouldBlock)` when no connection is queued.
pub fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let mut storage: libc::sockaddr_storage = unsafe_zeroed_storage();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the listener's fd is open for the duration of the call (we hold `&TcpListener`);
    // `storage` and `len` are valid, writable and sized as the kernel expects.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a fresh fd that nothing else owns; TcpStream takes ownership.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let peer = sockaddr_to_std(&storage).ok_or_else(|| io::Error::other("unknown family"))?;
    Ok((stream, peer))
}

fn unsafe_zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
}

pub(crate) fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which fits inside it.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which fits inside it.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Who sends the first bytes on a backend connection once it is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// The gateway, at once (a request head, a PROXY header, a TLS ClientHello, a tcp client's
    /// early bytes): the ACK that completes the TCP handshake rides on them ("smart connect"),
    /// one segment less per connection. The kernel sends it alone if nothing follows within
    /// its delayed-ACK bound (200 ms), so a wrong guess costs latency, never the connection.
    Ours,
    /// Maybe the backend (raw tcp with nothing from the client yet): ACK at once, or a
    /// server-speaks-first backend would not see the connection until the delay ran out.
    Theirs,
}

/// A new non-blocking, CLOEXEC TCP socket for `addr`'s family, without Nagle (backend side).
pub fn new_stream(addr: SocketAddr, first: FirstBytes) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    if first == FirstBytes::Ours {
        // A hint, as on the listener: a kernel that refuses it still connects.
        let _ = socket.set_quickack(false);
    }
    Ok(socket.into())
}

/// Starts a non-blocking connect. `Ok((stream, true))` when already connected (loopback can
/// be), `Ok((stream, false))` while in progress: wait for writability, then [`finish_connect`].
pub fn start_connect(addr: SocketAddr, first: FirstBytes) -> io::Result<(TcpStream, bool)> {
    let socket = Socket::from(new_stream(addr, first)?);
    match socket.connect(&addr.into()) {
        Ok(()) => Ok((socket.into(), true)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((socket.into(), false)),
        Err(e) => Err(e),
    }
}

/// After writability: `Ok(())` if the connect succeeded, else its error.
pub fn finish_connect(stream: &TcpStream) -> io::Result<()> {
    match stream.take_error()? {
        Some(e) => Err(e),
        None => match stream.peer_addr() {
            Ok(_) => Ok(()),
            // Spurious wakeup: not connected yet.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
            Err(e) => Err(e),
        },
    }
}

/// Client sockets: no Nagle (WebSocket messages are latency-bound), keepalive so a dead
/// peer behind a silent NAT is found eventually even with `tunnel_idle` off. Set once on each
/// listener; accepted sockets inherit them.
fn tune_client_options(sock: &SockRef<'_>) {
    let _ = sock.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    let _ = sock.set_tcp_keepalive(&ka);
}

/// Stops a listening socket without closing its fd: `shutdown(SHUT_RD)` on a listener ends
/// its listening (the kernel's listen-stop: connections in its queue move to a sibling
/// SO_REUSEPORT socket when `net.ipv4.tcp_migrate_req = 1`, else they are reset, as on close)
/// and wakes whoever waits to accept on it, with an error. An accept already under way on the
/// ring finishes with its connection or that error, so the caller can wait for it instead of
/// cancelling it, which would drop a connection the kernel had just accepted.
pub fn stop_listening(listener: &TcpListener) -> io::Result<()> {
    SockRef::from(listener).shutdown(std::net::Shutdown::Read)
}

/// Makes the next close send RST instead of FIN: how a reset on one side of a tunnel is
/// passed on to the other.
pub fn set_reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options a client socket needs arrive with accept (set once on the listener).
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let l = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, false).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).unwrap();
        let (s, peer) = loop {
            match accept_nonblocking(&l) {
                Ok(x) => break x,
                Err(e) if crate::sys::would_block(&e) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(peer, _c.local_addr().unwrap());
        let r = SockRef::from(&s);
        assert!(s.nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        assert_eq!(
            r.keepalive_time().unwrap(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            r.keepalive_interval().unwrap(),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(r.keepalive_retries().unwrap(), 6);
    }

    fn accept_one(l: &TcpListener) -> TcpStream {
        loop {
            match accept_nonblocking(l) {
                Ok((s, _)) => return s,
                Err(e) if crate::sys::would_block(&e) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// An HTTP listener's sockets start with delayed ACKs (the request head's ACK rides on
    /// the response); a raw tcp listener's ACK at once.
    #[test]
    fn http_listeners_delay_the_first_ack_and_tcp_listeners_do_not() {
        for (answers, quickack) in [(true, false), (false, true)] {
            let l = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16, answers).unwrap();
            let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let s = accept_one(&l);
            assert_eq!(SockRef::from(&s).quickack().unwrap(), quickack, "{answers}");
        }
    }

    /// A backend socket we write first on delays the handshake's last ACK (it rides on our
    /// first bytes); one the backend may speak first on does not.
    #[test]
    fn backend_sockets_delay_the_handshake_ack_only_when_we_write_first() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let ours = new_stream(addr, FirstBytes::Ours).unwrap();
        let theirs = new_stream(addr, FirstBytes::Theirs).unwrap();
        assert!(!SockRef::from(&ours).quickack().unwrap());
        assert!(SockRef::from(&theirs).quickack().unwrap());
        assert!(ours.nodelay().unwrap() && theirs.nodelay().unwrap());
    }
}
