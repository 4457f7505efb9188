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

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use glommio::io::BufferedFile;
use ringmq_uring::{Ring, opcode, squeue as opcode_entry, types};

pub use crate::codec::FileRange;

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

/// File ranges at least this long start a read-ahead of the ranges after them.
const READ_AHEAD_TRIGGER: u64 = 256 << 10;
/// The smallest read-ahead window.
const READ_AHEAD_MIN: u64 = 4 << 20;

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

/// The shard's splicer, on its second ring.
struct Splicer {
    ring: Rc<Ring>,
    pipes: RefCell<Vec<Pipe>>,
    pipes_free: glommio::sync::Semaphore,
    spliced: Cell<u64>,
}

impl Splicer {
    fn new(pipes_max: usize) -> io::Result<Rc<Self>> {
        let ring = Ring::current()?;
        if !ring.supports(opcode::Splice::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring splice is not supported by this kernel",
            ));
        }
        Ok(Rc::new(Self {
            ring,
            pipes: RefCell::new(Vec::new()),
            pipes_free: glommio::sync::Semaphore::new(pipes_max as u64),
            spliced: Cell::new(0),
        }))
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
        self.read_ahead(range);
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
                self.op(ahead, vec![Box::new(range.fd.clone())]).await?;
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
            let keep: Vec<Box<dyn Any>> =
                vec![Box::new(range.fd.clone()), Box::new(p.write.clone())];
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

    /// A consumer catching up fetches large ranges one after another; while this one
    /// is sent, the kernel reads the next ones (the window after `range`, as long as it
    /// again, at least [`READ_AHEAD_MIN`], within the file) into the page cache, so the
    /// next fetch is sent from memory instead of waiting for the disk. Nothing is done
    /// for small ranges (a consumer at the tail) or when the window's last page is
    /// already cached. The advice runs on the ring without holding up this send.
    fn read_ahead(&self, range: &FileRange) {
        if range.len < READ_AHEAD_TRIGGER {
            return;
        }
        let file = range.fd.as_raw_fd();
        let start = range.position + range.len;
        // SAFETY: fstat on a descriptor we hold open, into a zeroed local.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(file, &mut st) != 0 {
                return;
            }
            st.st_size as u64
        };
        let stop = (start + range.len.max(READ_AHEAD_MIN)).min(size);
        if stop <= start || page_cached(file, stop - 1, 1) {
            return;
        }
        let advice = opcode::Fadvise::new(
            types::Fd(file),
            (stop - start) as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        )
        .offset(start)
        .build();
        let ring = self.ring.clone();
        let fd = range.fd.clone();
        glommio::spawn_local(async move {
            // SAFETY: the entry names only the file, which `keep` holds.
            let keep: Vec<Box<dyn Any>> = vec![Box::new(fd)];
            if let Err(e) = unsafe { ring.op(advice, keep).await } {
                tracing::debug!(error = %e, "read-ahead advice failed");
            }
        })
        .detach();
    }

    /// Waits until `socket` can take more bytes (a poll request on the ring).
    async fn writable(&self, socket: &Rc<OwnedFd>) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(socket.as_raw_fd()), libc::POLLOUT as u32).build();
        let revents = self.op(sqe, vec![Box::new(socket.clone())]).await?;
        if revents & (libc::POLLERR | libc::POLLHUP) as u32 != 0
            && revents & libc::POLLOUT as u32 == 0
        {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        Ok(())
    }

    /// Runs one request on the ring, keeping `keep` until it completes.
    async fn op(&self, sqe: opcode_entry::Entry, keep: Vec<Box<dyn Any>>) -> io::Result<u32> {
        // SAFETY: every descriptor the entries built in this module name is in `keep`
        // (an `Rc`/`Arc` of it), and they carry no buffer pointers.
        unsafe { self.ring.op(sqe, keep).await }
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
