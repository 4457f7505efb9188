//! A second io_uring ring per shard thread, beside glommio's, for operations glommio
//! lacks (splice, poll on a descriptor it does not own) or runs badly here: glommio sends
//! O_DIRECT reads and writes to its polled ring whenever its probe read succeeds, and on
//! a disk without poll queues (virtio here, `io_poll` 0) the probe still succeeds, so the
//! shard busy-polls for every direct write: it kept its core 3-7 ms at a time while the
//! kernel worker that completes writes into preallocated (unwritten) extents waited for
//! that same core, which put 4-5 ms on produce latency.
//!
//! Completions reach glommio through an eventfd registered with the ring, which one task
//! per thread reads with a glommio read (its completion wakes a parked executor) and then
//! drains the completion queue. Written here rather than taken from a crate because the
//! async io_uring crates run their own reactor or threads, which the thread-per-core
//! model rules out.
//!
//! An operation waited on with [`Ring::ops_polled`] is polled for instead, for up to the
//! thread's [`Ring::set_poll`] limit: the shard keeps running (other tasks too) and sees
//! the completion in the queue's shared memory the moment the kernel posts it, rather
//! than sleeping until an interrupt, a wake-up across cores and the eventfd bring it
//! back. The storage engine waits for its segment writes and fdatasyncs this way.
//!
//! Whatever an operation points at (descriptors, buffers) is handed to [`Ring::op`] to
//! keep until its completion arrives, even if the future that started it is dropped, so
//! a descriptor number is never closed and reused, nor a buffer freed, under a request in
//! flight.
#![deny(missing_docs)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::io::BufferedFile;
use io_uring::IoUring;
pub use io_uring::{opcode, squeue, types};

/// Entries of each thread's ring.
const RING_ENTRIES: u32 = 256;

/// At most this share of a thread's time goes on polling for completions
/// ([`Ring::ops_polled`]), counted over windows of [`POLL_WINDOW`]: once a window's
/// share is spent, waits sleep until the window ends. Under light load (the case polling
/// is for: a 64 KiB durable append at 20k records/s keeps a shard waiting about 10 % of
/// the time) it always polls; under saturation, where the thread would rarely sleep
/// anyway, it stops taking the CPU that other work on the core needs. Polling without
/// this cap took 13-15 % off the broker's max produce rate here (connections sending to
/// both shards' partitions, the load generator on the same two cores); with it, the max
/// rate is within its noise.
const POLL_SHARE_MAX: f64 = 0.2;

/// The window over which [`POLL_SHARE_MAX`] is counted.
const POLL_WINDOW: Duration = Duration::from_millis(100);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Ring>>> = const { RefCell::new(None) };
}

enum SlotState {
    Waiting(Option<Waker>),
    Done(i32),
    /// The future was dropped; the slot is freed when the completion arrives.
    Abandoned,
}

struct Slot {
    state: SlotState,
    keep: Vec<Box<dyn Any>>,
}

/// This thread's second ring.
pub struct Ring {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    broken: Cell<bool>,
    /// How long [`Ring::ops_polled`] polls for a completion before it sleeps.
    poll: Cell<Duration>,
    /// Polling spent in the current budget window, and when that window began.
    polled: Cell<(Duration, Instant)>,
    /// Entries pushed to the submission queue and completions reaped, since the ring
    /// was set up (for the broker's metrics).
    submitted: Cell<u64>,
    completed: Cell<u64>,
    _eventfd: OwnedFd,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("slots", &self.slots.borrow().len())
            .field("broken", &self.broken.get())
            .finish()
    }
}

/// Duplicates a descriptor (close-on-exec).
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller holds open; returns a new one
    // (owned from here on) or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    }
}

impl Ring {
    /// This thread's ring, set up on first use (with the task that reaps its
    /// completions). Must be called on a glommio executor.
    pub fn current() -> io::Result<Rc<Ring>> {
        if let Some(r) = CURRENT.with(|c| c.borrow().clone()) {
            return Ok(r);
        }
        let r = Self::new()?;
        CURRENT.with(|c| *c.borrow_mut() = Some(r.clone()));
        Ok(r)
    }

    fn new() -> io::Result<Rc<Self>> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // A blocking eventfd: glommio's read of it waits in the kernel's poll machinery
        // (an O_NONBLOCK one would make io_uring return EAGAIN instead).
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned from here on.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let reader_fd = dup(eventfd.as_raw_fd())?;
        // SAFETY: the duplicate is owned by the BufferedFile from here on.
        let reader =
            unsafe { BufferedFile::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(reader_fd)) };
        let me = Rc::new(Self {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            broken: Cell::new(false),
            poll: Cell::new(Duration::ZERO),
            polled: Cell::new((Duration::ZERO, Instant::now())),
            submitted: Cell::new(0),
            completed: Cell::new(0),
            _eventfd: eventfd,
        });
        glommio::spawn_local(completions(Rc::downgrade(&me), reader)).detach();
        Ok(me)
    }

    /// Entries submitted and completions reaped on this thread's ring since it was set
    /// up: (0, 0) when the thread has not used it.
    pub fn counts_here() -> (u64, u64) {
        CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .map_or((0, 0), |r| (r.submitted.get(), r.completed.get()))
        })
    }

    /// True when the kernel supports `op` on this ring.
    pub fn supports(&self, op: u8) -> bool {
        let mut probe = io_uring::Probe::new();
        self.ring
            .borrow()
            .submitter()
            .register_probe(&mut probe)
            .is_ok()
            && probe.is_supported(op)
    }

    /// Submits one request and waits for its completion: the result, or the error.
    /// `keep` is held until the kernel is done with the request: every descriptor and
    /// buffer the entry points at must be in it (or outlive the ring).
    ///
    /// # Safety
    /// The entry's pointers and descriptors must stay valid until its completion; they
    /// do if they are owned by `keep` (or by something `keep` holds).
    pub async unsafe fn op(&self, sqe: squeue::Entry, keep: Vec<Box<dyn Any>>) -> io::Result<u32> {
        // SAFETY: passed on from the caller.
        let mut results = unsafe { self.ops(vec![(sqe, keep)]) }.await?;
        Ok(results.pop().expect("one result per entry"))
    }

    /// Submits several requests with one system call and waits for them: their results
    /// in the order given, or the first error. They run concurrently and complete in any
    /// order; each entry's `keep` is held until that entry completes, also when this
    /// returns early with an error.
    ///
    /// # Safety
    /// As for [`Ring::op`], for every entry.
    pub async unsafe fn ops(
        &self,
        entries: Vec<(squeue::Entry, Vec<Box<dyn Any>>)>,
    ) -> io::Result<Vec<u32>> {
        // SAFETY: passed on from the caller.
        unsafe { self.wait_for(entries, None) }.await
    }

    /// [`Ring::ops`] for requests expected to complete within the thread's poll limit
    /// ([`Ring::set_poll`], off by default): until it passes, the thread polls the
    /// completion queue instead of sleeping, so a completion is seen as soon as the
    /// kernel posts it, without an interrupt and a wake-up to bring the thread back.
    /// Between polls the task yields to the executor (other tasks run) and the thread
    /// yields the core to the kernel (`sched_yield`), because the kernel's own work for
    /// these requests (the io-wq worker running an fdatasync, the filesystem's
    /// completion of a direct write) may be waiting for this core: polling without
    /// yielding made 64 KiB durable appends slower here, p50 623 against 468 µs.
    ///
    /// # Safety
    /// As for [`Ring::op`], for every entry.
    pub async unsafe fn ops_polled(
        &self,
        entries: Vec<(squeue::Entry, Vec<Box<dyn Any>>)>,
    ) -> io::Result<Vec<u32>> {
        let poll = self.poll.get();
        let start = Instant::now();
        let until = (!poll.is_zero() && self.poll_budget_left(start)).then(|| start + poll);
        // SAFETY: passed on from the caller.
        let r = unsafe { self.wait_for(entries, until) }.await;
        if let Some(until) = until {
            let (spent, window) = self.polled.get();
            self.polled
                .set((spent + (Instant::now().min(until) - start), window));
        }
        r
    }

    /// Whether polling in the current window is still under its share of the thread's
    /// time ([`POLL_SHARE_MAX`]); starts a new window when the last one is over.
    fn poll_budget_left(&self, now: Instant) -> bool {
        let (spent, window) = self.polled.get();
        if now - window >= POLL_WINDOW {
            self.polled.set((Duration::ZERO, now));
            return true;
        }
        spent < POLL_WINDOW.mul_f64(POLL_SHARE_MAX)
    }

    /// How long [`Ring::ops_polled`] polls for completions on this thread before it
    /// sleeps until they arrive; zero (the default) does not poll. Polling costs the
    /// CPU of the wait, and only while such requests are in flight: an idle thread
    /// sleeps as before.
    pub fn set_poll(&self, max: Duration) {
        self.poll.set(max);
    }

    /// Submits `entries` and waits for them, polling until `poll_until` if given.
    ///
    /// # Safety
    /// As for [`Ring::op`], for every entry.
    async unsafe fn wait_for(
        &self,
        entries: Vec<(squeue::Entry, Vec<Box<dyn Any>>)>,
        poll_until: Option<Instant>,
    ) -> io::Result<Vec<u32>> {
        // SAFETY: passed on from the caller.
        let idxs = unsafe { self.submit(entries) }?;
        // Every future exists before the first is awaited: the ones not awaited (this
        // future dropped, or an error returned) give up their slots, which are released
        // at their completions.
        let futures: Vec<OpFuture<'_>> = idxs
            .into_iter()
            .map(|idx| OpFuture {
                ring: self,
                idx,
                poll_until,
            })
            .collect();
        let mut out = Vec::with_capacity(futures.len());
        for f in futures {
            let res = f.await;
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
            out.push(res as u32);
        }
        Ok(out)
    }

    /// Puts each entry in a slot holding its `keep`, pushes them all and submits them
    /// with one system call: the slots, in order.
    ///
    /// # Safety
    /// As for [`Ring::op`].
    unsafe fn submit(
        &self,
        entries: Vec<(squeue::Entry, Vec<Box<dyn Any>>)>,
    ) -> io::Result<Vec<usize>> {
        if self.broken.get() {
            return Err(io::Error::other("the second io_uring ring failed"));
        }
        let mut ring = self.ring.borrow_mut();
        let room = {
            let sq = ring.submission();
            sq.capacity() - sq.len()
        };
        if room < entries.len() {
            // Not room for all of them: submit what is queued first.
            ring.submit()?;
        }
        let mut idxs = Vec::with_capacity(entries.len());
        for (sqe, keep) in entries {
            let idx = {
                let mut slots = self.slots.borrow_mut();
                let slot = Slot {
                    state: SlotState::Waiting(None),
                    keep,
                };
                match self.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = Some(slot);
                        i
                    }
                    None => {
                        slots.push(Some(slot));
                        slots.len() - 1
                    }
                }
            };
            let sqe = sqe.user_data(idx as u64);
            // SAFETY: the caller guarantees the entry's pointers and descriptors live
            // until its completion (held by the slot's `keep`).
            let pushed = unsafe { ring.submission().push(&sqe).is_ok() };
            let pushed = pushed || {
                // Full submission queue: submit what is there, then retry.
                ring.submit()?;
                // SAFETY: as above.
                unsafe { ring.submission().push(&sqe).is_ok() }
            };
            if !pushed {
                drop(ring);
                self.release(idx);
                // The entries pushed before this one are submitted with the next
                // request and released at their completions.
                for idx in idxs {
                    self.abandon(idx);
                }
                return Err(io::Error::other("io_uring submission queue full"));
            }
            idxs.push(idx);
            self.submitted.set(self.submitted.get() + 1);
        }
        if let Err(e) = ring.submit() {
            // The entries may not have reached the kernel; they stay in their slots and
            // the ring is treated as failed from here on.
            self.broken.set(true);
            return Err(e);
        }
        Ok(idxs)
    }

    /// Gives up on a submitted request: its slot is released at its completion.
    fn abandon(&self, idx: usize) {
        if let Some(slot) = self.slots.borrow_mut()[idx].as_mut() {
            slot.state = SlotState::Abandoned;
        }
    }

    fn release(&self, idx: usize) {
        self.slots.borrow_mut()[idx] = None;
        self.free.borrow_mut().push(idx);
    }

    /// Records every completion in the queue and wakes its waiter.
    fn reap(&self) {
        let mut done = Vec::new();
        {
            let mut ring = self.ring.borrow_mut();
            for cqe in ring.completion() {
                done.push((cqe.user_data() as usize, cqe.result()));
            }
        }
        self.completed.set(self.completed.get() + done.len() as u64);
        for (idx, res) in done {
            let mut slots = self.slots.borrow_mut();
            let Some(Some(slot)) = slots.get_mut(idx) else {
                continue;
            };
            match std::mem::replace(&mut slot.state, SlotState::Done(res)) {
                SlotState::Waiting(w) => {
                    // The request's resources can go now; the state stays for the waiter.
                    let keep = std::mem::take(&mut slot.keep);
                    drop(slots);
                    drop(keep);
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                SlotState::Abandoned => {
                    drop(slots);
                    self.release(idx);
                }
                SlotState::Done(_) => {}
            }
        }
    }
}

async fn completions(ring: Weak<Ring>, eventfd: BufferedFile) {
    loop {
        let read = eventfd.read_at(0, 8).await;
        let Some(r) = ring.upgrade() else {
            return;
        };
        if let Err(e) = read {
            tracing::error!(error = %e, "reading the second ring's eventfd failed; its operations stop");
            r.broken.set(true);
            return;
        }
        r.reap();
    }
}

struct OpFuture<'a> {
    ring: &'a Ring,
    idx: usize,
    /// Poll the completion queue until then instead of sleeping.
    poll_until: Option<Instant>,
}

impl Future for OpFuture<'_> {
    type Output = i32;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let polling = self.poll_until.is_some_and(|t| Instant::now() < t);
        if polling {
            self.ring.reap();
        }
        let res = {
            let mut slots = self.ring.slots.borrow_mut();
            let slot = slots[self.idx].as_mut().expect("slot of a pending op");
            match &mut slot.state {
                SlotState::Done(res) => *res,
                SlotState::Waiting(w) => {
                    *w = Some(cx.waker().clone());
                    if polling {
                        // SAFETY: sched_yield takes no arguments and cannot fail on
                        // Linux.
                        unsafe { libc::sched_yield() };
                        // Runnable again at once: the executor polls this after its
                        // other ready tasks, and does not sleep meanwhile.
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                SlotState::Abandoned => unreachable!("only set on drop"),
            }
        };
        self.ring.release(self.idx);
        // Released: make drop a no-op.
        self.get_mut().idx = usize::MAX;
        Poll::Ready(res)
    }
}

impl Drop for OpFuture<'_> {
    fn drop(&mut self) {
        if self.idx == usize::MAX {
            return;
        }
        let done = {
            let mut slots = self.ring.slots.borrow_mut();
            match slots[self.idx].as_mut() {
                Some(slot) if matches!(slot.state, SlotState::Done(_)) => true,
                Some(slot) => {
                    slot.state = SlotState::Abandoned;
                    false
                }
                None => false,
            }
        };
        if done {
            self.ring.release(self.idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn on_executor<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_write_lands_and_its_buffer_is_kept_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let p = path.clone();
        on_executor(move || async move {
            let fd = Rc::new(OwnedFd::from(std::fs::File::create(&p).unwrap()));
            let ring = Ring::current().unwrap();
            assert!(
                Rc::ptr_eq(&ring, &Ring::current().unwrap()),
                "one ring per thread"
            );
            let buf = vec![7u8; 10_000];
            let sqe = opcode::Write::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), buf.len() as u32)
                .offset(5)
                .build();
            let keep: Vec<Box<dyn Any>> = vec![Box::new(buf), Box::new(fd.clone())];
            let n = unsafe { ring.op(sqe, keep).await }.unwrap();
            assert_eq!(n, 10_000);
            let got = std::fs::read(&p).unwrap();
            assert_eq!(got.len(), 10_005);
            assert!(got[5..].iter().all(|&b| b == 7));
        });
    }

    #[test]
    fn errors_come_back_as_io_errors() {
        on_executor(|| async {
            let ring = Ring::current().unwrap();
            // A write to a descriptor that is not open.
            let sqe = opcode::Write::new(types::Fd(1 << 20), std::ptr::null(), 0).build();
            let err = unsafe { ring.op(sqe, Vec::new()).await }.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        });
    }

    /// How a wait for a late byte went: the byte, the wall time, and how often the
    /// waiting future was polled: in all, and once `late_after` had passed.
    struct Waited {
        byte: u8,
        wall: Duration,
        polls: usize,
        late_polls: usize,
    }

    /// Reads one byte from a pipe that another thread writes to after `delay`, with
    /// `ops_polled` and the given poll limit. A polling wait is polled again on every
    /// turn of the executor, a sleeping one only when woken: counting polls tells the two
    /// apart whatever share of the CPU the thread gets on a busy machine.
    async fn polled_read_of_late_byte(
        poll: Duration,
        delay: Duration,
        late_after: Duration,
    ) -> Waited {
        let ring = Ring::current().unwrap();
        ring.set_poll(poll);
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Before the writer starts: the byte cannot arrive sooner than `delay` after it.
        let start = Instant::now();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            std::fs::File::from(w).write_all(&[42]).unwrap();
        });
        let mut buf = vec![0u8; 1];
        let sqe = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 1).build();
        let r = Rc::new(r);
        let keep: Vec<Box<dyn Any>> = vec![Box::new(r.clone())];
        let (polls, late_polls) = (Cell::new(0), Cell::new(0));
        let mut wait = std::pin::pin!(unsafe { ring.ops_polled(vec![(sqe, keep)]) });
        let n = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            if start.elapsed() > late_after {
                late_polls.set(late_polls.get() + 1);
            }
            wait.as_mut().poll(cx)
        })
        .await
        .unwrap();
        let wall = start.elapsed();
        writer.join().unwrap();
        ring.set_poll(Duration::ZERO);
        assert_eq!(n, vec![1]);
        Waited {
            byte: buf[0],
            wall,
            polls: polls.get(),
            late_polls: late_polls.get(),
        }
    }

    #[test]
    fn a_polled_op_keeps_the_thread_polling_until_it_completes() {
        on_executor(|| async {
            let w = polled_read_of_late_byte(
                Duration::from_secs(5),
                Duration::from_millis(100),
                Duration::from_millis(50),
            )
            .await;
            assert_eq!(w.byte, 42);
            assert!(w.wall >= Duration::from_millis(100), "{:?}", w.wall);
            // Still polling in the second half of the wait (asleep, it would be polled
            // once at the start and once at the completion).
            assert!(
                w.late_polls >= 10,
                "{} polls after 50 ms, {} in all",
                w.late_polls,
                w.polls
            );
        });
    }

    #[test]
    fn a_polled_op_sleeps_once_the_poll_limit_passes() {
        on_executor(|| async {
            let w = polled_read_of_late_byte(
                Duration::from_millis(1),
                Duration::from_millis(150),
                Duration::from_millis(50),
            )
            .await;
            assert_eq!(w.byte, 42);
            assert!(w.wall >= Duration::from_millis(150), "{:?}", w.wall);
            // After the 1 ms limit only the completion's wake-up polls it.
            assert!(
                w.late_polls <= 2,
                "{} polls after 50 ms: still polling after the limit",
                w.late_polls
            );
        });
    }

    #[test]
    fn polling_stops_for_the_rest_of_a_window_whose_share_is_spent() {
        on_executor(|| async {
            let ring = Ring::current().unwrap();
            // This window's polling share is spent: the wait sleeps from the start.
            ring.polled.set((POLL_WINDOW, Instant::now()));
            let w = polled_read_of_late_byte(
                Duration::from_secs(5),
                Duration::from_millis(60),
                Duration::ZERO,
            )
            .await;
            assert_eq!(w.byte, 42);
            assert!(w.polls <= 3, "{} polls: polled past the budget", w.polls);
            // The same spent share in a window that is over: a new window, polling again.
            ring.polled
                .set((POLL_WINDOW, Instant::now() - POLL_WINDOW * 2));
            let w = polled_read_of_late_byte(
                Duration::from_secs(5),
                Duration::from_millis(100),
                Duration::from_millis(50),
            )
            .await;
            assert!(w.late_polls >= 10, "{} polls after 50 ms", w.late_polls);
            let (spent, _) = ring.polled.get();
            assert!(
                spent >= Duration::from_millis(100),
                "polling counted: {spent:?}"
            );
        });
    }

    #[test]
    fn a_dropped_op_is_reaped_and_the_ring_goes_on() {
        on_executor(|| async {
            let ring = Ring::current().unwrap();
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let r = Rc::new(r);
            // Poll for input that is not there yet, then give up on it.
            let sqe = opcode::PollAdd::new(types::Fd(r.as_raw_fd()), libc::POLLIN as u32).build();
            let keep: Vec<Box<dyn Any>> = vec![Box::new(r.clone())];
            let pending = futures_lite::future::poll_once(unsafe { ring.op(sqe, keep) }).await;
            assert!(pending.is_none());
            assert_eq!(
                Rc::strong_count(&r),
                2,
                "the ring still holds the descriptor"
            );
            // Its completion arrives later and frees the slot and the descriptor.
            let mut w = std::fs::File::from(w);
            w.write_all(b"x").unwrap();
            let sqe = opcode::Nop::new().build();
            unsafe { ring.op(sqe, Vec::new()).await }.unwrap();
            for _ in 0..100 {
                if Rc::strong_count(&r) == 1 {
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(Rc::strong_count(&r), 1, "released after its completion");
        });
    }
}
