//! The reference relay of issue 14: the least a ring-native raw-TCP proxy can do per message,
//! measured beside ringway (`benches/compare/floor.sh`) so ringway's own cost has a floor to
//! be read against. **Not a gateway**: no timeouts, metrics, backpressure or limits, a
//! blocking connect per client, and nothing freed until the process ends.
//!
//! Per thread, one ring (`SINGLE_ISSUER | DEFER_TASKRUN`, one `submit_and_wait` per turn):
//! multishot accept on an SO_REUSEPORT listener,
//! multishot receive into a provided-buffer ring, each received buffer sent to the peer as is
//! and given back to the ring when its send completes. What a proxy cannot skip, it does: one
//! send in flight per direction with the rest queued behind it (two sends on one socket are
//! not ordered once one waits for space), the rest of a short send sent again, the FIN passed
//! on after the bytes before it.
//!
//!     ring-relay LISTEN BACKEND[,BACKEND...] [THREADS]
//!
//! Clients go round robin over the backends. THREADS (default 1) relays run in threads of
//! their own, each with its ring and its SO_REUSEPORT listener, as ringway's workers do.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Provided buffers: as many, and as big, as the relay the issue measured.
const BUFS: u16 = 4096;
const BUF_SIZE: usize = 16 * 1024;
const GROUP: u16 = 0;
/// user_data: the accept; a send (bits 16..48: the fd its bytes came from); else a receive
/// (its fd).
const ACCEPT: u64 = 1 << 62;
const SEND: u64 = 1 << 61;

/// A received buffer on its way out: which, how much of it is sent, how much there is.
#[derive(Clone, Copy)]
struct Out {
    bid: u16,
    off: u32,
    len: u32,
}

/// One direction, by the fd its bytes come from: its peer, what waits to go out (the head is
/// in flight), and whether its EOF arrived.
#[derive(Default)]
struct Way {
    to: RawFd,
    queue: VecDeque<Out>,
    eof: bool,
}

struct Relay {
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    /// The buffer ring's entries (a page-aligned mapping the kernel reads).
    entries: *mut types::BufRingEntry,
    tail: u16,
    /// BUFS buffers of BUF_SIZE, in a mapping only the kernel writes (no Rust reference to it
    /// is ever made, so its writes alias nothing).
    bufs: *mut u8,
    ways: Vec<Way>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backends)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: ring-relay LISTEN BACKEND[,BACKEND...] [THREADS]");
        std::process::exit(64);
    };
    let threads: usize = match args.get(3).map(|t| t.parse()) {
        None => 1,
        Some(Ok(n @ 1..=1024)) => n,
        Some(_) => fail("threads", "not a number from 1 to 1024"),
    };
    let backends: Vec<SocketAddr> = match backends.split(',').map(str::parse).collect() {
        Ok(b) => b,
        Err(e) => fail("backend address", e),
    };
    let listen: SocketAddr = listen.parse().unwrap_or_else(|e| fail("listen address", e));
    // Every listener is bound before any thread runs, so a failure is reported at once.
    let listeners: Vec<TcpListener> = (0..threads)
        .map(|_| reuseport_listener(listen).unwrap_or_else(|e| fail("listen", e)))
        .collect();
    let relays: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let backends = backends.clone();
            std::thread::spawn(move || {
                let mut relay = Relay::new().unwrap_or_else(|e| fail("io_uring setup", e));
                if let Err(e) = relay.run(&l, &backends) {
                    fail("relay", e);
                }
            })
        })
        .collect();
    for r in relays {
        let _ = r.join();
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("ring-relay: {what}: {e}");
    std::process::exit(1);
}

impl Relay {
    fn new() -> std::io::Result<Relay> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(4 * BUFS as u32)
            .build(BUFS as u32)?;
        let map = anonymous(BUFS as usize * std::mem::size_of::<types::BufRingEntry>())?;
        // SAFETY: `map` is page-aligned and holds BUFS entries; it outlives the ring (above).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(map as u64, BUFS, GROUP, 0)?;
        }
        let mut r = Relay {
            ring,
            entries: map.cast(),
            tail: 0,
            bufs: anonymous(BUFS as usize * BUF_SIZE)?.cast(),
            ways: Vec::new(),
        };
        for bid in 0..BUFS {
            r.give_back(bid);
        }
        Ok(r)
    }

    /// Lends buffer `bid` to the kernel again.
    fn give_back(&mut self, bid: u16) {
        let slot = (self.tail & (BUFS - 1)) as usize;
        // SAFETY: `slot` < BUFS, inside the mapping; the kernel does not read an entry until
        // the tail (published below) covers it, and `bufs` is never unmapped.
        unsafe {
            let e = &mut *self.entries.add(slot);
            e.set_addr(self.bufs.add(bid as usize * BUF_SIZE) as u64);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in the first entry of the mapping, u16-aligned, and the
        // kernel only reads it: a release store publishes the entry written above.
        unsafe {
            (*(types::BufRingEntry::tail(self.entries) as *const AtomicU16))
                .store(self.tail, Ordering::Release);
        }
    }

    fn push(&mut self, sqe: squeue::Entry) -> std::io::Result<()> {
        loop {
            // SAFETY: every op points at a socket we keep open or into `bufs`, never
            // unmapped; a buffer is not lent again until its send completed.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn run(&mut self, listener: &TcpListener, backends: &[SocketAddr]) -> std::io::Result<()> {
        let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .build()
            .user_data(ACCEPT);
        self.push(accept.clone())?;
        let mut next = 0;
        let mut cqes = Vec::with_capacity(4 * BUFS as usize);
        loop {
            self.ring.submit_and_wait(1)?;
            cqes.extend(self.ring.completion());
            for c in cqes.drain(..) {
                let (ud, res, more) = (c.user_data(), c.result(), cqueue::more(c.flags()));
                if ud == ACCEPT {
                    if res >= 0 {
                        self.pair(res, backends[next % backends.len()])?;
                        next += 1;
                    }
                    if !more {
                        self.push(accept.clone())?;
                    }
                } else if ud & SEND != 0 {
                    self.sent((ud >> 16) as u32 as RawFd, res)?;
                } else {
                    self.received(ud as RawFd, res, c.flags(), more)?;
                }
            }
        }
    }

    /// A client: connect its backend, receive on both.
    fn pair(&mut self, client: RawFd, backend: SocketAddr) -> std::io::Result<()> {
        let b = match TcpStream::connect(backend) {
            Ok(b) => b,
            Err(_) => {
                // SAFETY: `client` came from the accept and nothing else holds it.
                drop(unsafe { TcpStream::from_raw_fd(client) });
                return Ok(());
            }
        };
        b.set_nodelay(true)?;
        // SAFETY: as above; the stream is turned back into its fd at once.
        let c = unsafe { TcpStream::from_raw_fd(client) };
        c.set_nodelay(true)?;
        let (c, b) = (c.into_raw_fd(), b.into_raw_fd());
        let hi = c.max(b) as usize + 1;
        if self.ways.len() < hi {
            self.ways.resize_with(hi, Way::default);
        }
        self.ways[c as usize] = Way {
            to: b,
            ..Way::default()
        };
        self.ways[b as usize] = Way {
            to: c,
            ..Way::default()
        };
        self.push(recv(c))?;
        self.push(recv(b))
    }

    fn received(&mut self, fd: RawFd, res: i32, flags: u32, more: bool) -> std::io::Result<()> {
        if res == -libc::ENOBUFS {
            return self.push(recv(fd));
        }
        let way = &mut self.ways[fd as usize];
        if res <= 0 {
            // EOF or error: the FIN follows the bytes queued before it. The fds stay open
            // (see the module doc).
            way.eof = true;
            if way.queue.is_empty() {
                fin(way.to);
            }
            return Ok(());
        }
        let Some(bid) = cqueue::buffer_select(flags) else {
            return Ok(());
        };
        way.queue.push_back(Out {
            bid,
            off: 0,
            len: res as u32,
        });
        if way.queue.len() == 1 {
            self.send(fd)?;
        }
        if !more {
            self.push(recv(fd))?;
        }
        Ok(())
    }

    /// Sends the head of the queue of the direction from `from`.
    fn send(&mut self, from: RawFd) -> std::io::Result<()> {
        let way = &self.ways[from as usize];
        let Some(o) = way.queue.front() else {
            return Ok(());
        };
        // SAFETY: inside buffer `bid` (off < len <= BUF_SIZE).
        let ptr = unsafe { self.bufs.add(o.bid as usize * BUF_SIZE + o.off as usize) };
        let sqe = opcode::Send::new(types::Fd(way.to), ptr, o.len - o.off)
            .build()
            .user_data(SEND | (from as u32 as u64) << 16);
        self.push(sqe)
    }

    fn sent(&mut self, from: RawFd, res: i32) -> std::io::Result<()> {
        let way = &mut self.ways[from as usize];
        let Some(o) = way.queue.front_mut() else {
            return Ok(());
        };
        if res > 0 && o.off + (res as u32) < o.len {
            o.off += res as u32;
            return self.send(from);
        }
        // Sent whole, or the peer is gone (its bytes are dropped, as a proxy must).
        let bid = o.bid;
        way.queue.pop_front();
        if way.queue.is_empty() && way.eof {
            fin(way.to);
        }
        self.give_back(bid);
        self.send(from)
    }
}

/// A zeroed mapping of `len` bytes, never unmapped: the kernel uses it while the process lives.
fn anonymous(len: usize) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: an anonymous private mapping; no memory of ours is touched.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(map)
}

fn fin(fd: RawFd) {
    // SAFETY: plain syscall on a socket this relay owns.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

fn recv(fd: RawFd) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), GROUP)
        .build()
        .user_data(fd as u64)
}

/// A listener others can bind beside (SO_REUSEPORT): two relays, two threads.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain syscalls; the fd is owned by the TcpListener from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let l = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let p = &one as *const libc::c_int as *const libc::c_void;
            if libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, 4) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of_val(&sin) as libc::socklen_t;
        if libc::bind(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        ) != 0
            || libc::listen(fd, 1024) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(l)
    }
}
