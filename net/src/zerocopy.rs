//! Zero-copy sends of file ranges to sockets: `IORING_OP_SPLICE` file → pipe → socket on
//! a second io_uring ring that the shard thread owns beside glommio's.
//!
//! Why not glommio's own ring: glommio has no splice operation, and its sockets are
//! blocking descriptors, so a plain `sendfile(2)` from the executor thread blocks it (24 ms
//! seen here on a full socket buffer). Splice requests on an io_uring ring always run in
//! the kernel's io-wq workers, so a cold disk read or a full socket buffer blocks a
//! kernel worker, never the executor. Completions reach glommio through an eventfd
//! registered on the ring, which one task per shard reads with a glommio read and then
//! drains the ring's completion queue. Written here rather than taken from a crate
//! because the async io_uring crates run their own reactor or threads, which the
//! thread-per-core model rules out.
//!
//! Descriptors an operation uses (file, pipe, a duplicate of the socket) are held until
//! its completion arrives, even if the future that started it is dropped, so a
//! descriptor number is never closed and reused under a request in flight.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use glommio::io::BufferedFile;
use io_uring::{IoUring, opcode, types};

/// A byte range of a file, sent to a socket without passing through user space.
#[derive(Debug, Clone)]
pub struct FileRange {
    /// The open file; holding it keeps the bytes readable (a segment deleted by
    /// retention meanwhile stays readable through it).
    pub fd: Arc<OwnedFd>,
    /// Byte position in the file.
    pub position: u64,
    /// Byte count.
    pub len: u64,
}

impl PartialEq for FileRange {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.fd, &other.fd) && self.position == other.position && self.len == other.len
    }
}

impl Eq for FileRange {}

/// Byte counts of what a shard's connections sent from files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// File bytes spliced to sockets (never in user-space memory).
    pub spliced_bytes: u64,
    /// File bytes read into user-space memory and written from there (the fallback when
    /// zero-copy is off or its ring could not be set up).
    pub copied_bytes: u64,
}

/// Sends file ranges to sockets: by splice on a second io_uring ring when available,
/// else by reading into memory through glommio and writing. One per shard.
pub struct FileSender {
    splicer: Option<Rc<Splicer>>,
    copied_bytes: Cell<u64>,
}

impl std::fmt::Debug for FileSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSender")
            .field("zero_copy", &self.splicer.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Pipes a shard keeps for splicing; each holds up to [`PIPE_BYTES`] in flight.
pub const PIPES_MAX: usize = 16;
/// Requested pipe capacity (the unprivileged default maximum, `fs.pipe-max-size`).
pub const PIPE_BYTES: usize = 1 << 20;

impl FileSender {
    /// A sender for this shard. With `zero_copy` it sets up the splice ring; if that
    /// fails (io_uring refused, no splice support) it logs why and copies instead.
    /// Must be called on the shard's glommio executor.
    pub fn new(zero_copy: bool) -> Rc<Self> {
        let splicer = if zero_copy {
            match Splicer::new(PIPES_MAX) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "zero-copy fetch unavailable; fetches copy through memory");
                    None
                }
            }
        } else {
            None
        };
        Rc::new(Self {
            splicer,
            copied_bytes: Cell::new(0),
        })
    }

    /// True when file ranges are spliced.
    pub fn zero_copy(&self) -> bool {
        self.splicer.is_some()
    }

    /// What was sent so far.
    pub fn stats(&self) -> SendStats {
        SendStats {
            spliced_bytes: self.splicer.as_ref().map_or(0, |s| s.spliced.get()),
            copied_bytes: self.copied_bytes.get(),
        }
    }

    /// Sends `range` to `socket` (whose earlier writes have completed). `more`: more
    /// bytes of the same response follow.
    pub async fn send<S>(&self, socket: &mut S, range: &FileRange, more: bool) -> io::Result<()>
    where
        S: futures_lite::AsyncWrite + AsRawFd + Unpin,
    {
        match &self.splicer {
            Some(s) => s.send(socket.as_raw_fd(), range, more).await,
            None => {
                use futures_lite::AsyncWriteExt;
                // SAFETY: a new descriptor for the same file, owned by the BufferedFile
                // (closed when it drops).
                let file = unsafe { BufferedFile::from_raw_fd(dup(range.fd.as_raw_fd())?) };
                let mut pos = range.position;
                let end = range.position + range.len;
                let result = async {
                    while pos < end {
                        let want = (end - pos).min(1 << 20) as usize;
                        let got = file.read_at(pos, want).await.map_err(io::Error::from)?;
                        if got.is_empty() {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "file shorter than the range to send",
                            ));
                        }
                        socket.write_all(&got).await?;
                        pos += got.len() as u64;
                        self.copied_bytes
                            .set(self.copied_bytes.get() + got.len() as u64);
                    }
                    Ok(())
                }
                .await;
                let _ = file.close().await;
                result
            }
        }
    }
}

/// True when every page of `len` bytes at `pos` of `fd` is in the page cache
/// (`cachestat(2)`, Linux 6.5+); false when not, or when the kernel cannot tell.
fn page_cached(fd: RawFd, pos: u64, len: usize) -> bool {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    const PAGE: u64 = 4096;
    let range = Range {
        off: pos,
        len: len as u64,
    };
    let mut st = CacheStat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both live locals of the layout
    // the kernel expects.
    let r = unsafe { libc::syscall(SYS_CACHESTAT, fd, &range, &mut st, 0) };
    let pages = (pos + len as u64).div_ceil(PAGE) - pos / PAGE;
    r == 0 && st.nr_cache >= pages
}

fn dup(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold open; returns a new one or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(new)
    }
}

fn dup_owned(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: `dup` returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup(fd)?) })
}

/// A pipe: read end, write end, capacity.
struct Pipe {
    read: Rc<OwnedFd>,
    write: Rc<OwnedFd>,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded; both descriptors are new and owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per splice; the kernel may refuse (fs.pipe-max-size,
        // per-user pipe page limits), in which case the default capacity is used.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_BYTES as libc::c_int,
            )
        };
        // SAFETY: as above.
        let capacity = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if capacity <= 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            read: Rc::new(read),
            write: Rc::new(write),
            capacity: capacity as usize,
        })
    }
}

/// A descriptor an operation in flight holds open (held, never read).
#[allow(dead_code)]
enum Keep {
    Local(Rc<OwnedFd>),
    Shared(Arc<OwnedFd>),
}

enum SlotState {
    Waiting(Option<Waker>),
    Done(i32),
    /// The future was dropped; the slot is freed when the completion arrives.
    Abandoned,
}

struct Slot {
    state: SlotState,
    keep: Vec<Keep>,
}

/// The shard's splice ring.
struct Splicer {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    pipes: RefCell<Vec<Pipe>>,
    pipes_free: glommio::sync::Semaphore,
    spliced: Cell<u64>,
    broken: Cell<bool>,
    _eventfd: OwnedFd,
}

const RING_ENTRIES: u32 = 128;

impl Splicer {
    fn new(pipes_max: usize) -> io::Result<Rc<Self>> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Splice::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring splice is not supported by this kernel",
            ));
        }
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
        // SAFETY: a duplicate, owned by the BufferedFile glommio reads it through.
        let reader = unsafe { BufferedFile::from_raw_fd(dup(eventfd.as_raw_fd())?) };
        let me = Rc::new(Self {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            pipes: RefCell::new(Vec::new()),
            pipes_free: glommio::sync::Semaphore::new(pipes_max as u64),
            spliced: Cell::new(0),
            broken: Cell::new(false),
            _eventfd: eventfd,
        });
        glommio::spawn_local(completions(Rc::downgrade(&me), reader)).detach();
        Ok(me)
    }

    /// Sends `range` to the non-blocking `socket`, a piece of at most a pipe's capacity
    /// at a time. A piece whose pages are all in the page cache goes by `sendfile(2)` on
    /// the executor thread (no disk wait, no copy); any other piece is read file → pipe
    /// by a splice on the ring (the disk wait happens in a kernel worker) and the pipe
    /// is drained into the socket here. A full socket is waited for with a poll request
    /// on the ring.
    async fn send(&self, socket: RawFd, range: &FileRange, more: bool) -> io::Result<()> {
        if range.len == 0 {
            return Ok(());
        }
        let socket = Rc::new(dup_owned(socket)?);
        let file = range.fd.as_raw_fd();
        let mut pipe: Option<(PipeGuard<'_>, glommio::sync::Permit)> = None;
        let mut pos = range.position;
        let end = range.position + range.len;
        while pos < end {
            let want = ((end - pos) as usize).min(PIPE_BYTES);
            if page_cached(file, pos, want) {
                let mut off = pos as libc::off_t;
                // SAFETY: sendfile between two descriptors we hold open; `off` is ours.
                let n = unsafe { libc::sendfile(socket.as_raw_fd(), file, &mut off, want) };
                if n > 0 {
                    pos += n as u64;
                    self.spliced.set(self.spliced.get() + n as u64);
                    continue;
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than the range to send",
                    ));
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                self.writable(&socket).await?;
                continue;
            }
            if pipe.is_none() {
                // Not in memory: ask the kernel to read the rest of the range, and as
                // much again beyond it (where a consumer's next fetch starts), ahead of
                // the splices, so the disk works on more than one piece at a time.
                let ahead = opcode::Fadvise::new(
                    types::Fd(file),
                    ((end - pos) * 2) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
                .offset(pos)
                .build();
                self.op(ahead, vec![Keep::Shared(range.fd.clone())]).await?;
                let permit = self
                    .pipes_free
                    .acquire_permit(1)
                    .await
                    .map_err(|_| io::Error::other("splice pipes closed"))?;
                let p = match self.pipes.borrow_mut().pop() {
                    Some(p) => p,
                    None => Pipe::new()?,
                };
                pipe = Some((
                    PipeGuard {
                        pipes: &self.pipes,
                        pipe: Some(p),
                        clean: false,
                    },
                    permit,
                ));
            }
            let (guard, _) = pipe.as_mut().expect("set above");
            let p = guard.pipe.as_ref().expect("held until drop");
            let want = want.min(p.capacity) as u32;
            let sqe = opcode::Splice::new(
                types::Fd(file),
                pos as i64,
                types::Fd(p.write.as_raw_fd()),
                -1,
                want,
            )
            .flags(libc::SPLICE_F_MOVE)
            .build();
            let keep = vec![Keep::Shared(range.fd.clone()), Keep::Local(p.write.clone())];
            let n = self.op(sqe, keep).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than the range to send",
                ));
            }
            pos += u64::from(n);
            let mut left = n as usize;
            while left > 0 {
                let flags = libc::SPLICE_F_MOVE
                    | libc::SPLICE_F_NONBLOCK
                    | if more || pos < end {
                        libc::SPLICE_F_MORE
                    } else {
                        0
                    };
                // SAFETY: splice between descriptors we hold open, no offsets (a pipe
                // and a socket); the pipe holds `left` bytes, so the call does not wait
                // for the pipe, and the socket is non-blocking.
                let k = unsafe {
                    libc::splice(
                        p.read.as_raw_fd(),
                        std::ptr::null_mut(),
                        socket.as_raw_fd(),
                        std::ptr::null_mut(),
                        left,
                        flags,
                    )
                };
                if k > 0 {
                    left -= k as usize;
                    self.spliced.set(self.spliced.get() + k as u64);
                } else if k == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                } else {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Err(e);
                    }
                    self.writable(&socket).await?;
                }
            }
        }
        if let Some((mut guard, _)) = pipe {
            guard.clean = true;
        }
        Ok(())
    }

    /// Waits until `socket` can take more bytes (a poll request on the ring).
    async fn writable(&self, socket: &Rc<OwnedFd>) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(socket.as_raw_fd()), libc::POLLOUT as u32).build();
        let revents = self.op(sqe, vec![Keep::Local(socket.clone())]).await?;
        if revents & (libc::POLLERR | libc::POLLHUP) as u32 != 0
            && revents & libc::POLLOUT as u32 == 0
        {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        Ok(())
    }

    /// Submits one request and waits for its completion: the result, or the error.
    async fn op(&self, sqe: io_uring::squeue::Entry, keep: Vec<Keep>) -> io::Result<u32> {
        if self.broken.get() {
            return Err(io::Error::other("splice ring failed"));
        }
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
        {
            let mut ring = self.ring.borrow_mut();
            // SAFETY: every descriptor the entry names is kept open by its slot until
            // the completion arrives; no buffer pointers are involved.
            let pushed = unsafe { ring.submission().push(&sqe).is_ok() };
            let pushed = pushed || {
                // Full submission queue: submit what is there, then retry.
                ring.submit()?;
                // SAFETY: as above.
                unsafe { ring.submission().push(&sqe).is_ok() }
            };
            if !pushed {
                self.release(idx);
                return Err(io::Error::other("splice ring submission queue full"));
            }
            if let Err(e) = ring.submit() {
                // The entry may not have reached the kernel; it stays in its slot and
                // the ring is treated as failed from here on.
                self.broken.set(true);
                return Err(e);
            }
        }
        let res = OpFuture { splicer: self, idx }.await;
        if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as u32)
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
        for (idx, res) in done {
            let mut slots = self.slots.borrow_mut();
            let Some(Some(slot)) = slots.get_mut(idx) else {
                continue;
            };
            match std::mem::replace(&mut slot.state, SlotState::Done(res)) {
                SlotState::Waiting(w) => {
                    // The op's descriptors can go now; the state stays for the waiter.
                    slot.keep.clear();
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

async fn completions(splicer: Weak<Splicer>, eventfd: BufferedFile) {
    loop {
        let read = eventfd.read_at(0, 8).await;
        let Some(s) = splicer.upgrade() else {
            return;
        };
        if let Err(e) = read {
            tracing::error!(error = %e, "reading the splice ring's eventfd failed; zero-copy sends stop");
            s.broken.set(true);
            return;
        }
        s.reap();
    }
}

struct OpFuture<'a> {
    splicer: &'a Splicer,
    idx: usize,
}

impl Future for OpFuture<'_> {
    type Output = i32;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let res = {
            let mut slots = self.splicer.slots.borrow_mut();
            let slot = slots[self.idx].as_mut().expect("slot of a pending op");
            match &mut slot.state {
                SlotState::Done(res) => *res,
                SlotState::Waiting(w) => {
                    *w = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                SlotState::Abandoned => unreachable!("only set on drop"),
            }
        };
        self.splicer.release(self.idx);
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
            let mut slots = self.splicer.slots.borrow_mut();
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
            self.splicer.release(self.idx);
        }
    }
}

/// Returns a drained pipe to the pool; a pipe whose send failed or was dropped midway
/// may hold bytes, so it is closed instead (its descriptors stay open while an
/// operation on them is in flight: the slots hold them).
struct PipeGuard<'a> {
    pipes: &'a RefCell<Vec<Pipe>>,
    pipe: Option<Pipe>,
    clean: bool,
}

impl Drop for PipeGuard<'_> {
    fn drop(&mut self) {
        if let (true, Some(p)) = (self.clean, self.pipe.take()) {
            self.pipes.borrow_mut().push(p);
        }
    }
}
