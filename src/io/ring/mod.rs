//! ringway's own per-core runtime on io_uring: a single-threaded executor (boxed tasks, a run
//! queue, wakers), timers, and futures for ring ops. The worker waits only in
//! `io_uring_enter(GETEVENTS)`, with the nearest timer as the wait's timeout.
//!
//! - **Tasks** live in a slab; a task id is its index and a generation, so a stale waker never
//!   polls a newer task. A task is polled with its future taken out of the slab, so it can
//!   spawn, wake and drop other tasks freely. A panic ends that task alone.
//! - **Wakers** are `Arc`s (std's `Wake`): on the worker's own thread a wake is a push onto the
//!   run queue; from another thread (a config reload, a phase change through `tokio::sync`) it
//!   goes through a locked queue and the ring's eventfd.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub use ops::{
    accept, close, connect, poll, recv_into, send_all, shutdown_write, Received, RecvMulti,
    RingSock, SendOp,
};
pub use time::{sleep, sleep_until, Sleep};

use crate::sys::ring::{Ring, Setup, WakeFd};

type TaskId = u64;

fn task_id(index: usize, gen: u32) -> TaskId {
    (gen as u64) << 32 | index as u64
}

struct Task {
    gen: u32,
    live: bool,
    queued: bool,
    fut: Option<Pin<Box<dyn Future<Output = ()>>>>,
    waker: Option<Waker>,
}

/// What other threads need to wake a task of this runtime.
struct Remote {
    id: u64,
    queue: Mutex<Vec<TaskId>>,
    fd: Arc<WakeFd>,
}

struct TaskWaker {
    task: TaskId,
    remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if CURRENT.with(Cell::get) == self.remote.id && with(|rt| rt.schedule(self.task)).is_some()
        {
            return;
        }
        self.remote
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.task);
        self.remote.fd.wake();
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
    timers: time::Timers,
    /// fds whose last owner was dropped inside the ring (an op's slot freed while reaping):
    /// closed by ring ops at the end of the turn.
    closes: RefCell<Vec<std::os::fd::OwnedFd>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static RT: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
    /// Id of the runtime running on this thread (0: none).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
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
        Ok(Runtime {
            ring: RefCell::new(ring),
            tasks: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            runq: RefCell::new(VecDeque::new()),
            remote: Arc::new(Remote {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                queue: Mutex::new(Vec::new()),
                fd,
            }),
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
        let id = rt.remote.id;
        RT.with(|r| *r.borrow_mut() = Some(rt.clone()));
        CURRENT.with(|c| c.set(id));
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
                    t.waker = None;
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
                waker: None,
            });
            tasks.len() - 1
        });
        let t = &mut tasks[index];
        t.gen = t.gen.wrapping_add(1);
        let id = task_id(index, t.gen);
        t.live = true;
        t.queued = true;
        t.fut = Some(fut);
        t.waker = Some(Waker::from(Arc::new(TaskWaker {
            task: id,
            remote: self.remote.clone(),
        })));
        self.runq.borrow_mut().push_back(id);
    }

    fn schedule(&self, id: TaskId) {
        let mut tasks = self.tasks.borrow_mut();
        let Some(t) = tasks.get_mut((id & 0xffff_ffff) as usize) else {
            return;
        };
        if t.live && t.gen == (id >> 32) as u32 && !t.queued {
            t.queued = true;
            self.runq.borrow_mut().push_back(id);
        }
    }

    fn poll_task(&self, id: TaskId) {
        let index = (id & 0xffff_ffff) as usize;
        let (mut fut, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let t = &mut tasks[index];
            if !t.live || t.gen != (id >> 32) as u32 {
                return;
            }
            t.queued = false;
            match (t.fut.take(), t.waker.take()) {
                (Some(f), Some(w)) => (f, w),
                _ => return,
            }
        };
        let mut cx = Context::from_waker(&waker);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        match r {
            Ok(Poll::Pending) => {
                let mut tasks = self.tasks.borrow_mut();
                let t = &mut tasks[index];
                t.fut = Some(fut);
                t.waker = Some(waker);
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
                drop(waker);
            }
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
