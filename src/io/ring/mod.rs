//! ringway's own per-core runtime on io_uring: a single-threaded executor (boxed tasks, a run
//! queue, wakers), timers, and futures for ring ops. The worker waits only in
//! `io_uring_enter(GETEVENTS)`, with the nearest timer as the wait's timeout.
//!
//! - **Tasks** live in a slab; a task id is its index and a generation, so a stale waker never
//!   polls a newer task. A task is polled with its future taken out of the slab, so it can
//!   spawn, wake and drop other tasks freely. A panic ends that task alone.
//! - **Wakers** allocate nothing: a waker's data word is its task's id and its runtime's slot
//!   (see [`waker`]), so a task costs no waker allocation and a clone is a copy. On the worker's
//!   own thread a wake is a push onto the run queue; from another thread (a config reload, a
//!   phase change through `tokio::sync`) it goes through the runtime's locked queue and the
//!   ring's eventfd.
//! - **Timers** are an ordered map of deadlines (a tunnel's idle deadline is re-armed only when
//!   it expires, so the map changes rarely).
//! - **One loop turn:** run what is runnable, fire due timers, then one `io_uring_enter`: it
//!   submits every SQE queued during the turn and reaps completions (waiting only if nothing
//!   is runnable).

mod ops;
mod time;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

pub use ops::{
    accept, close, connect, poll, recv_into, send_all, shutdown_write, Received, RecvMulti,
    RingSock, SendOp,
};
pub use time::{sleep, sleep_until, Sleep};

use crate::sys::ring::{Ring, Setup, WakeFd};

/// A task's index (low 32 bits) and generation (the next 16): 48 bits, so that a waker's data
/// word holds it with its runtime's slot.
type TaskId = u64;

fn task_id(index: usize, gen: u16) -> TaskId {
    (gen as u64) << 32 | index as u64
}

struct Task {
    /// Bumped (wrapping) each time the slot is reused: a stale waker finds another generation,
    /// or, 65,536 reuses later, polls the new task once for nothing (a spurious wake).
    gen: u16,
    live: bool,
    queued: bool,
    fut: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

/// What other threads need to wake a task of this runtime.
struct Remote {
    queue: Mutex<Vec<TaskId>>,
    fd: Arc<WakeFd>,
}

/// The live runtimes, by slot: a waker names its runtime by slot (the top 16 bits of its data
/// word). Read only by wakes from another thread; a slot is freed when its runtime drops.
static REMOTES: Mutex<Vec<Option<Arc<Remote>>>> = Mutex::new(Vec::new());

/// The waker of task `id` on the runtime in `slot`: no allocation, nothing owned.
fn waker(slot: u16, id: TaskId) -> Waker {
    crate::sys::waker::waker::<TaskWake>((slot as u64) << 48 | id)
}

struct TaskWake;

impl crate::sys::waker::WakeWord for TaskWake {
    fn wake(word: u64) {
        wake_task(word)
    }
}

/// Wakes the task a waker's word names: on its worker's thread a push onto the run queue,
/// from another thread through the runtime's queue and eventfd.
fn wake_task(word: u64) {
    let slot = (word >> 48) as u16;
    let task = word & 0xffff_ffff_ffff;
    if CURRENT.try_with(Cell::get) == Ok(slot as u32 + 1) && with(|rt| rt.schedule(task)).is_some()
    {
        return;
    }
    // Another thread (or this one while its runtime is not reachable).
    let remote = REMOTES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(slot as usize)
        .cloned()
        .flatten();
    if let Some(r) = remote {
        r.queue.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        r.fd.wake();
    }
}

/// Sets its flag when dropped: a task's future ended, whether it returned or panicked.
struct Ended(Rc<Cell<bool>>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// A worker's runtime. Lives in a thread-local while [`Runtime::block_on`] runs.
pub struct Runtime {
    ring: RefCell<Ring>,
    tasks: RefCell<Vec<Task>>,
    free: RefCell<Vec<usize>>,
    runq: RefCell<VecDeque<TaskId>>,
    remote: Arc<Remote>,
    /// This runtime's slot in [`REMOTES`].
    slot: u16,
    timers: time::Timers,
    /// fds whose last owner was dropped inside the ring (an op's slot freed while reaping):
    /// closed by ring ops at the end of the turn.
    closes: RefCell<Vec<std::os::fd::OwnedFd>>,
}

thread_local! {
    static RT: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
    /// Slot + 1 of the runtime running on this thread (0: none).
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` with this thread's ring runtime, if it has one.
fn with<R>(f: impl FnOnce(&Runtime) -> R) -> Option<R> {
    RT.try_with(|r| r.borrow().as_deref().map(f)).ok().flatten()
}

/// Is this thread a ring worker (inside [`Runtime::block_on`])?
pub fn on_ring() -> bool {
    CURRENT.try_with(Cell::get).unwrap_or(0) != 0
}

/// Spawns a task on this thread's ring runtime. Panics off a ring worker (callers check
/// [`on_ring`]).
///
/// `f` is boxed as it is: wrapped in `async move { f.await }` (to drop an output) it would be
/// stored twice, once as the block's capture and once as the future it awaits, and every task,
/// an idle tunnel's included, would cost double (issue 14: 4.3 KiB instead of 2.4 per tunnel).
pub fn spawn<F: Future<Output = ()> + 'static>(f: F) {
    let fut: Pin<Box<dyn Future<Output = ()>>> = Box::pin(f);
    with(|rt| rt.spawn_boxed(fut)).expect("ring::spawn outside a ring worker");
}

/// Gives this worker's buffer pool memory back to the OS if no buffer is in use (an idle
/// worker after a burst; see `sys::ring::Ring::release_idle_pool`). `false` off a ring worker,
/// or when it did not release.
pub fn release_idle_pool() -> bool {
    with(|rt| rt.ring.borrow_mut().release_idle_pool()).unwrap_or(false)
}

impl Runtime {
    /// Builds the ring (preferring `setup`, falling back to weaker setups the kernel takes).
    pub fn new(entries: u32, setup: Setup) -> io::Result<Runtime> {
        let fd = Arc::new(WakeFd::new()?);
        let ring = Ring::new(entries, setup, fd.clone())?;
        let remote = Arc::new(Remote {
            queue: Mutex::new(Vec::new()),
            fd,
        });
        let slot = {
            let mut remotes = REMOTES.lock().unwrap_or_else(|p| p.into_inner());
            let slot = match remotes.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    remotes.push(None);
                    remotes.len() - 1
                }
            };
            remotes[slot] = Some(remote.clone());
            u16::try_from(slot).map_err(|_| io::Error::other("too many ring runtimes"))?
        };
        Ok(Runtime {
            ring: RefCell::new(ring),
            tasks: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            runq: RefCell::new(VecDeque::new()),
            remote,
            slot,
            timers: time::Timers::default(),
            closes: RefCell::new(Vec::new()),
        })
    }

    pub fn setup(&self) -> Setup {
        self.ring.borrow().setup()
    }

    /// Runs `main` (and the tasks it spawns) until `main` returns or panics; then drops the tasks still
    /// alive and lets the ring reap what they had in flight.
    pub fn block_on<F: Future<Output = ()> + 'static>(self, main: F) {
        let rt = Rc::new(self);
        RT.with(|r| *r.borrow_mut() = Some(rt.clone()));
        CURRENT.with(|c| c.set(rt.slot as u32 + 1));
        // Set when `main` ends, by returning or by a panic (the task is dropped then): a
        // worker whose main loop died must not run on without it.
        let done = Rc::new(Cell::new(false));
        let flag = Ended(done.clone());
        rt.spawn_boxed(Box::pin(async move {
            let _ended = flag;
            main.await;
        }));
        if let Err(e) = rt.run(&done) {
            tracing::error!(error = %e, "io_uring worker loop failed");
        }
        // Dropping tasks may cancel their ops (the runtime must still be reachable).
        loop {
            let futs: Vec<_> = rt
                .tasks
                .borrow_mut()
                .iter_mut()
                .filter_map(|t| {
                    t.live = false;
                    t.fut.take()
                })
                .collect();
            if futs.is_empty() {
                break;
            }
            drop(futs);
        }
        CURRENT.with(|c| c.set(0));
        RT.with(|r| r.borrow_mut().take());
        // `rt` drops here: the ring cancels and reaps every op still in flight.
    }

    fn run(&self, done: &Cell<bool>) -> io::Result<()> {
        let stats = std::env::var_os("RINGWAY_RING_STATS").is_some();
        let mut next_stats = std::time::Instant::now();
        loop {
            if stats && std::time::Instant::now() >= next_stats {
                next_stats += std::time::Duration::from_secs(2);
                let tasks = self.tasks.borrow();
                let live = tasks.iter().filter(|t| t.live).count();
                // What the live tasks' futures weigh (each is one allocation of its largest
                // state): the figure an idle tunnel's memory starts from.
                let sizes = tasks
                    .iter()
                    .filter_map(|t| t.fut.as_ref())
                    .map(|f| size_of_val(&**f));
                let (bytes, largest) = sizes.fold((0, 0), |(sum, max), n| (sum + n, max.max(n)));
                let ring = self.ring.borrow();
                eprintln!(
                    "ring stats: tasks {} live {} task_bytes {} largest {} slots {} in_flight {} timers {}",
                    tasks.len(),
                    live,
                    bytes,
                    largest,
                    ring.slot_count(),
                    ring.in_flight(),
                    self.timers.len()
                );
            }
            self.take_remote();
            let n = self.runq.borrow().len();
            for _ in 0..n {
                let Some(id) = self.runq.borrow_mut().pop_front() else {
                    break;
                };
                self.poll_task(id);
                if done.get() {
                    return Ok(());
                }
            }
            let next = self.timers.fire();
            self.flush_closes();
            let idle = self.runq.borrow().is_empty();
            let timeout = next.map(|at| at.saturating_duration_since(std::time::Instant::now()));
            self.ring.borrow_mut().enter(idle, timeout)?;
        }
    }

    fn flush_closes(&self) {
        let mut closes = self.closes.borrow_mut();
        if !closes.is_empty() {
            let mut ring = self.ring.borrow_mut();
            for fd in closes.drain(..) {
                ring.close(fd);
            }
        }
    }

    fn take_remote(&self) {
        let ids = std::mem::take(&mut *self.remote.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for id in ids {
            self.schedule(id);
        }
    }

    fn spawn_boxed(&self, fut: Pin<Box<dyn Future<Output = ()>>>) {
        let index = self.free.borrow_mut().pop();
        let mut tasks = self.tasks.borrow_mut();
        let index = index.unwrap_or_else(|| {
            tasks.push(Task {
                gen: 0,
                live: false,
                queued: false,
                fut: None,
            });
            tasks.len() - 1
        });
        let t = &mut tasks[index];
        t.gen = t.gen.wrapping_add(1);
        let id = task_id(index, t.gen);
        t.live = true;
        t.queued = true;
        t.fut = Some(fut);
        self.runq.borrow_mut().push_back(id);
    }

    fn schedule(&self, id: TaskId) {
        let mut tasks = self.tasks.borrow_mut();
        let Some(t) = tasks.get_mut((id & 0xffff_ffff) as usize) else {
            return;
        };
        if t.live && t.gen == (id >> 32) as u16 && !t.queued {
            t.queued = true;
            self.runq.borrow_mut().push_back(id);
        }
    }

    fn poll_task(&self, id: TaskId) {
        let index = (id & 0xffff_ffff) as usize;
        let mut fut = {
            let mut tasks = self.tasks.borrow_mut();
            let t = &mut tasks[index];
            if !t.live || t.gen != (id >> 32) as u16 {
                return;
            }
            t.queued = false;
            match t.fut.take() {
                Some(f) => f,
                None => return,
            }
        };
        let waker = waker(self.slot, id);
        let mut cx = Context::from_waker(&waker);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        match r {
            Ok(Poll::Pending) => {
                let mut tasks = self.tasks.borrow_mut();
                let t = &mut tasks[index];
                t.fut = Some(fut);
            }
            Ok(Poll::Ready(())) | Err(_) => {
                if r.is_err() {
                    tracing::error!("a connection task panicked; it is dropped");
                }
                {
                    let mut tasks = self.tasks.borrow_mut();
                    tasks[index].live = false;
                    tasks[index].queued = false;
                }
                self.free.borrow_mut().push(index);
                // Dropped with no borrow held: its drops may touch the ring or wake tasks.
                drop(fut);
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // From now on a wake from another thread for one of its tasks finds no runtime (or, once
        // the slot is reused, is a spurious wake of the new runtime: harmless).
        let mut remotes = REMOTES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = remotes.get_mut(self.slot as usize) {
            *r = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::closer::CloseWith;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pool_resident() -> usize {
        with(|rt| rt.ring.borrow().pool_resident_bytes()).expect("on the ring")
    }

    /// The next bytes a multishot receive brings (the lease itself).
    async fn next_lease(r: &mut RecvMulti) -> crate::sys::bufring::Lease {
        match std::future::poll_fn(|cx| r.poll_next(cx)).await {
            Received::Data(l) => l,
            Received::Eof => panic!("EOF instead of bytes"),
            Received::Ended { nobufs } => panic!("the receive ended (nobufs {nobufs})"),
            Received::Err(e) => panic!("receive failed: {e}"),
        }
    }

    /// After a burst, an idle worker gives its buffer pool's pages back to the OS; a buffer
    /// still lent keeps them all, and the bytes received after a release arrive whole.
    #[test]
    fn an_idle_pool_gives_its_memory_back() {
        let Ok(rt) = Runtime::new(64, Setup::DeferTaskrun) else {
            eprintln!("no io_uring here: this test cannot run");
            return;
        };
        if rt.setup() != Setup::DeferTaskrun {
            eprintln!("no DEFER_TASKRUN here: the pool is never released, nothing to test");
            return;
        }
        let done = Rc::new(Cell::new(false));
        let flag = done.clone();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            let s = Rc::new(CloseWith::new(s, drop));
            let sock = RingSock::new(&s).expect("the ring has a buffer pool");
            let mut r = sock.recv_multi();

            peer.write_all(b"first").unwrap();
            assert_eq!(next_lease(&mut r).await.as_slice(), b"first");
            assert!(pool_resident() > 0, "the kernel wrote into a buffer");
            assert!(release_idle_pool(), "every buffer is back in the ring");
            assert_eq!(pool_resident(), 0);
            assert!(!release_idle_pool(), "nothing was used since");

            peer.write_all(b"second").unwrap();
            let held = next_lease(&mut r).await;
            assert_eq!(held.as_slice(), b"second");
            assert!(!release_idle_pool(), "a buffer is lent");
            assert!(pool_resident() > 0);
            drop(held);

            // 64 KiB across many buffers, some of them released pages: every byte arrives.
            let sent: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
            peer.write_all(&sent).unwrap();
            let mut got = Vec::new();
            while got.len() < sent.len() {
                got.extend_from_slice(next_lease(&mut r).await.as_slice());
            }
            assert_eq!(got, sent);
            assert!(release_idle_pool(), "idle again");
            assert_eq!(pool_resident(), 0);
            flag.set(true);
        });
        assert!(done.get(), "the test's future ran to its end");
    }
}
