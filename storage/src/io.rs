//! The file layer: every read, write, sync and truncate goes through glommio's
//! io_uring ring on the calling shard. Directory listing and unlink, which io_uring
//! does not cover here, run on glommio's blocking-thread pool (`spawn_blocking`) so the
//! executor thread never blocks.
//!
//! glommio types stay inside this module: the rest of the crate sees
//! [`SegmentFile`] (a read handle) and [`SegmentWriter`] (the active segment's writer).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use glommio::io::{BufferedFile, DmaBuffer, DmaFile, OpenOptions};

use crate::error::{Error, Result};

/// How the active segment is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// O_DIRECT writes from aligned buffers (the last partial block is kept in memory
    /// and rewritten with the next write). The default: see docs/storage.md.
    #[default]
    Direct,
    /// Writes through the page cache.
    Buffered,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "direct" => Ok(IoMode::Direct),
            "buffered" => Ok(IoMode::Buffered),
            other => Err(format!(
                "unknown io mode {other:?}: expected direct or buffered"
            )),
        }
    }
}

/// A read handle on a segment's log file. Reads of a deleted segment keep working
/// while a handle is alive: the descriptor pins the inode.
#[derive(Debug)]
pub struct SegmentFile {
    file: BufferedFile,
    /// A duplicate of the descriptor that other shards' connections may hold while they
    /// send from it (file → socket), so it outlives this shard's handle when needed.
    shared: Arc<OwnedFd>,
    path: PathBuf,
}

impl SegmentFile {
    pub(crate) async fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .buffered_open(path)
            .await
            .map_err(|e| Error::io("opening segment", path, e))?;
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (owned from here on) or -1.
        let dup = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(Error::io(
                "duplicating segment descriptor",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `dup` is a fresh descriptor nothing else owns.
        let shared = Arc::new(unsafe { OwnedFd::from_raw_fd(dup) });
        Ok(Self {
            file,
            shared,
            path: path.to_owned(),
        })
    }

    /// The descriptor, for zero-copy sends (splice or sendfile) by the network layer;
    /// it stays open while any clone is held.
    pub fn shared_fd(&self) -> Arc<OwnedFd> {
        self.shared.clone()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `len` bytes at `position` (copying into user space).
    pub async fn read_exact(&self, position: u64, len: usize) -> Result<Bytes> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let pos = position + out.len() as u64;
            let got = self
                .file
                .read_at(pos, len - out.len())
                .await
                .map_err(|e| Error::io("reading segment", &self.path, e))?;
            if got.is_empty() {
                return Err(Error::io(
                    "short read of segment",
                    &self.path,
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
            out.extend_from_slice(&got);
        }
        Ok(Bytes::from(out))
    }

    /// Reads up to `len` bytes at `position`; fewer at the end of the file.
    pub(crate) async fn read_some(&self, position: u64, len: usize) -> Result<Vec<u8>> {
        let got = self
            .file
            .read_at(position, len)
            .await
            .map_err(|e| Error::io("reading segment", &self.path, e))?;
        Ok(got.to_vec())
    }
}

enum WriterFile {
    Direct {
        file: DmaFile,
        /// A duplicate of `file`'s descriptor for writes on the second ring (see
        /// [`write_direct`]), held by each write until it completes.
        fd: Rc<OwnedFd>,
        alignment: u64,
        /// Bytes of the last, partial block: `[align_down(write_pos), write_pos)`.
        tail_block: Vec<u8>,
    },
    Buffered(BufferedFile),
}

/// Appends to the active segment's log file. Owned by the partition's flush driver;
/// nothing else writes the file.
pub(crate) struct SegmentWriter {
    file: WriterFile,
    path: PathBuf,
    write_pos: u64,
    allocated: u64,
    preallocate_step_bytes: u64,
    /// Everything before this position has been written and synced (data, or the
    /// zeros of [`SegmentWriter::prepare_ahead`]): a direct write that ends before it
    /// overwrites written blocks, which ext4 makes durable without a journal commit.
    zeroed: u64,
    /// When the zero-fill last looked, and the end then: it fills at most once per
    /// interval, and not when more than a fill was written meanwhile.
    fill_check: Option<(std::time::Instant, u64)>,
}

/// A buffer being filled for one write.
pub(crate) enum WriteBuf {
    /// Direct mode: the block-aligned bytes from the start of the partial block the
    /// last write ended in. When that block is partial and more blocks follow, the
    /// first block is a separate buffer (`head`), written apart (see `write`).
    Direct {
        head: Option<DmaBuffer>,
        body: DmaBuffer,
        /// Bytes filled, counted from `start`.
        len: usize,
        start: u64,
    },
    Buffered {
        buf: Vec<u8>,
    },
}

impl WriteBuf {
    pub(crate) fn extend(&mut self, data: &[u8]) {
        match self {
            WriteBuf::Direct {
                head, body, len, ..
            } => {
                let mut data = data;
                if let Some(h) = head {
                    let cap = h.len();
                    if *len < cap {
                        let n = (cap - *len).min(data.len());
                        h.as_bytes_mut()[*len..*len + n].copy_from_slice(&data[..n]);
                        *len += n;
                        data = &data[n..];
                    }
                    if !data.is_empty() {
                        let at = *len - cap;
                        body.as_bytes_mut()[at..at + data.len()].copy_from_slice(data);
                    }
                } else {
                    body.as_bytes_mut()[*len..*len + data.len()].copy_from_slice(data);
                }
                *len += data.len();
            }
            WriteBuf::Buffered { buf } => buf.extend_from_slice(data),
        }
    }
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("path", &self.path)
            .field("write_pos", &self.write_pos)
            .finish()
    }
}

impl SegmentWriter {
    /// Opens (creating if needed) `path` for appending at `write_pos`, the logical end
    /// found by recovery. Bytes beyond `write_pos` are cut off.
    pub(crate) async fn open(
        path: &Path,
        mode: IoMode,
        write_pos: u64,
        preallocate_step_bytes: u64,
    ) -> Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true);
        let file = match mode {
            IoMode::Direct => {
                let file = opts
                    .dma_open(path)
                    .await
                    .map_err(|e| Error::io("opening segment for direct writes", path, e))?;
                // The filesystem block, not only the device's logical block: an
                // O_DIRECT write that starts or ends inside a 4 KiB ext4 block takes
                // ext4's slow, serialised path.
                let alignment = file.alignment().max(FS_BLOCK_BYTES);
                let block_start = write_pos - write_pos % alignment;
                let keep = (write_pos - block_start) as usize;
                let tail_block = if keep > 0 {
                    // Through the page cache: O_DIRECT reads of this block are not
                    // supported on every filesystem, and this runs once per open.
                    let reader = SegmentFile::open(path).await?;
                    let r = reader.read_some(block_start, keep).await?;
                    if r.len() < keep {
                        return Err(Error::Corrupt {
                            what: "segment tail shorter than its recovered size",
                            path: path.to_owned(),
                        });
                    }
                    r
                } else {
                    Vec::new()
                };
                let fd = Rc::new(
                    ringmq_uring::dup(file.as_raw_fd())
                        .map_err(|e| Error::io("duplicating segment descriptor", path, e))?,
                );
                WriterFile::Direct {
                    file,
                    fd,
                    alignment,
                    tail_block,
                }
            }
            IoMode::Buffered => WriterFile::Buffered(
                opts.buffered_open(path)
                    .await
                    .map_err(|e| Error::io("opening segment", path, e))?,
            ),
        };
        let mut w = Self {
            file,
            path: path.to_owned(),
            write_pos,
            allocated: 0,
            preallocate_step_bytes: preallocate_step_bytes.max(4096),
            zeroed: write_pos,
            fill_check: None,
        };
        w.truncate_file(write_pos).await?;
        w.allocated = write_pos;
        Ok(w)
    }

    /// Logical end of the data written so far.
    pub(crate) fn write_pos(&self) -> u64 {
        self.write_pos
    }

    /// A buffer for `len` more bytes at the current end.
    pub(crate) fn buffer(&self, len: usize) -> WriteBuf {
        match &self.file {
            WriterFile::Direct {
                file,
                alignment,
                tail_block,
                ..
            } => {
                let align = *alignment as usize;
                let total = tail_block.len() + len;
                let padded = total.div_ceil(align) * align;
                let split = !tail_block.is_empty() && padded > align;
                let (mut head, mut body) = if split {
                    (
                        Some(file.alloc_dma_buffer(align)),
                        file.alloc_dma_buffer(padded - align),
                    )
                } else {
                    (None, file.alloc_dma_buffer(padded))
                };
                // Zero the padding after the data so the file holds zeros past the end.
                let first = head.as_mut().unwrap_or(&mut body);
                first.as_bytes_mut()[..tail_block.len()].copy_from_slice(tail_block);
                if let Some(h) = head.as_mut() {
                    h.as_bytes_mut()[tail_block.len()..].fill(0);
                    let from = total.saturating_sub(align).min(body.len());
                    body.as_bytes_mut()[from..].fill(0);
                } else {
                    body.as_bytes_mut()[total..].fill(0);
                }
                WriteBuf::Direct {
                    head,
                    body,
                    len: tail_block.len(),
                    start: self.write_pos - tail_block.len() as u64,
                }
            }
            WriterFile::Buffered(_) => WriteBuf::Buffered {
                buf: Vec::with_capacity(len),
            },
        }
    }

    /// Extends the file (fallocate) so that `end` lies within it, a step at a time, so
    /// that an fdatasync after an append does not also record a new file size.
    async fn ensure_allocated(&mut self, end: u64) -> Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let step = self.preallocate_step_bytes;
        let target = end.div_ceil(step) * step;
        let r = match &self.file {
            WriterFile::Direct { file, .. } => file.pre_allocate(target, false).await,
            WriterFile::Buffered(file) => file.pre_allocate(target, false).await,
        };
        match r {
            Ok(()) => self.allocated = target,
            Err(e) => {
                let e: std::io::Error = e.into();
                // Filesystems without fallocate work, just without preallocation.
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    self.allocated = u64::MAX;
                } else {
                    return Err(Error::io("preallocating segment", &self.path, e));
                }
            }
        }
        Ok(())
    }

    /// Extends the preallocated runway when less than half a step is left, after a
    /// round was acknowledged, so the next append does not wait for it.
    ///
    /// In direct mode, and when `all_synced` (nothing written is waiting for an
    /// fdatasync, so this one's error cannot hide the loss of data), it also writes
    /// zeros over the next [`ZERO_FILL_CHUNK_BYTES`] past the end and syncs them, up to
    /// [`ZERO_FILL_AHEAD_BYTES`] ahead, at most once per [`ZERO_FILL_INTERVAL`], and not
    /// while appends come faster than that (more than a fill's worth written since the
    /// last look: the fill could not stay ahead, and would only cost the disk). An
    /// append into preallocated space changes the extent from unwritten to written,
    /// and its fdatasync then waits for a journal commit; an append over written zeros
    /// does not: 4 KiB write and fdatasync p50 61 + 54 µs against 69 + 165 µs here
    /// (fio, io_uring, O_DIRECT, 1,000 a second; docs/latency.md). The zeros cost
    /// disk bandwidth, hence the interval: at high rates the fill stops and appends go
    /// to preallocated space as before.
    /// Returns the bytes zero-filled.
    pub(crate) async fn prepare_ahead(&mut self, all_synced: bool) -> Result<u64> {
        let runway = self.allocated.saturating_sub(self.write_pos);
        if runway < self.preallocate_step_bytes / 2 {
            self.ensure_allocated(self.write_pos + self.preallocate_step_bytes)
                .await?;
        }
        if all_synced {
            return self.zero_fill().await;
        }
        Ok(0)
    }

    async fn zero_fill(&mut self) -> Result<u64> {
        let WriterFile::Direct { file, fd, .. } = &self.file else {
            return Ok(0);
        };
        let now = std::time::Instant::now();
        let fast = match self.fill_check {
            Some((at, _)) if now - at < ZERO_FILL_INTERVAL => return Ok(0),
            Some((_, end)) => self.write_pos - end > ZERO_FILL_CHUNK_BYTES as u64,
            None => false,
        };
        self.fill_check = Some((now, self.write_pos));
        if fast {
            return Ok(0);
        }
        let from = self
            .zeroed
            .max(self.write_pos.next_multiple_of(FS_BLOCK_BYTES));
        let until = from + ZERO_FILL_CHUNK_BYTES as u64;
        if until > self.write_pos + ZERO_FILL_AHEAD_BYTES || until > self.allocated {
            return Ok(0);
        }
        let mut zeros = file.alloc_dma_buffer(ZERO_FILL_CHUNK_BYTES);
        zeros.as_bytes_mut().fill(0);
        let wrote = write_direct(fd, vec![(zeros, from)], 0)
            .await
            .map_err(|e| Error::io("zero-filling segment", &self.path, e))?;
        if wrote != ZERO_FILL_CHUNK_BYTES {
            return Err(Error::io(
                "short zero-fill of segment",
                &self.path,
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
        sync_direct(fd)
            .await
            .map_err(|e| Error::io("syncing segment zero-fill", &self.path, e))?;
        self.zeroed = until;
        Ok(ZERO_FILL_CHUNK_BYTES as u64)
    }

    /// Writes a filled buffer at the end. On error nothing past the old end counts as
    /// written: the next write goes to the same position.
    ///
    /// With `dsync` a direct write is also durable when it completes (`RWF_DSYNC`: the
    /// kernel syncs it as part of the write, without a second request from here); a
    /// buffered write ignores it and needs [`SegmentWriter::sync`]. Returns whether the
    /// write was made durable.
    pub(crate) async fn write(&mut self, buf: WriteBuf, dsync: bool) -> Result<bool> {
        let (data_len, new_end) = match &buf {
            WriteBuf::Direct { len, start, .. } => {
                let data = *len as u64 - (self.write_pos - start);
                (data, self.write_pos + data)
            }
            WriteBuf::Buffered { buf } => (buf.len() as u64, self.write_pos + buf.len() as u64),
        };
        if data_len == 0 {
            return Ok(false);
        }
        // Over the zero-filled runway every block written is a written one: the write
        // can be one request, synced by itself.
        let over_runway = new_end <= self.zeroed;
        let dsync = dsync
            && (data_len >= DSYNC_WRITE_MIN_BYTES || over_runway)
            && matches!(self.file, WriterFile::Direct { .. });
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        self.ensure_allocated(new_end).await?;
        match (&mut self.file, buf) {
            (
                WriterFile::Direct {
                    fd,
                    alignment,
                    tail_block,
                    ..
                },
                WriteBuf::Direct {
                    head,
                    body,
                    len,
                    start,
                },
            ) => {
                let align = *alignment as usize;
                // Keep the new partial block before the buffers move into the ring.
                let keep_from = len - len % align;
                let new_tail = match &head {
                    Some(h) if keep_from == 0 => h.as_bytes()[..len].to_vec(),
                    Some(h) => body.as_bytes()[keep_from - h.len()..len - h.len()].to_vec(),
                    None => body.as_bytes()[keep_from..len].to_vec(),
                };
                // Rewriting the partial block that the last write ended in together
                // with fresh blocks is one O_DIRECT write over a written and an
                // unwritten extent, which ext4 serialises: 3.3 ms here for 16 KiB. As
                // two writes issued together (the rewrite alone, the fresh blocks
                // alone, submitted with one system call) it took 0.2 ms. See
                // docs/storage.md.
                // Over the runway there is no unwritten extent to serialise on: one
                // vectored write, which with RWF_DSYNC is the round's only request.
                let expect = head.as_ref().map_or(0, |h| h.len()) + body.len();
                let wrote = match head {
                    Some(head) if over_runway => {
                        write_direct_vectored(fd, vec![head, body], start, flags).await
                    }
                    Some(head) => {
                        write_direct(fd, vec![(head, start), (body, start + align as u64)], flags)
                            .await
                    }
                    None => write_direct(fd, vec![(body, start)], flags).await,
                }
                .map_err(|e| Error::io("writing segment", &self.path, e))?;
                if wrote != expect {
                    return Err(Error::io(
                        "short write to segment",
                        &self.path,
                        std::io::Error::from(std::io::ErrorKind::WriteZero),
                    ));
                }
                *tail_block = new_tail;
            }
            (WriterFile::Buffered(file), WriteBuf::Buffered { buf }) => {
                let mut buf = buf;
                let mut pos = self.write_pos;
                while !buf.is_empty() {
                    let n = buf.len();
                    let wrote = file
                        .write_at(buf, pos)
                        .await
                        .map_err(|e| Error::io("writing segment", &self.path, e))?;
                    if wrote == 0 {
                        return Err(Error::io(
                            "short write to segment",
                            &self.path,
                            std::io::Error::from(std::io::ErrorKind::WriteZero),
                        ));
                    }
                    // The buffer moved into the ring; a short write (rare for regular
                    // files) needs the remainder again, which we no longer hold.
                    if wrote < n {
                        return Err(Error::io(
                            "short write to segment",
                            &self.path,
                            std::io::Error::from(std::io::ErrorKind::WriteZero),
                        ));
                    }
                    pos += wrote as u64;
                    buf = Vec::new();
                }
            }
            _ => unreachable!("write buffer from another writer mode"),
        }
        self.write_pos = new_end;
        Ok(dsync)
    }

    /// fdatasync of everything written.
    pub(crate) async fn sync(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let r = match &self.file {
            WriterFile::Direct { fd, .. } => sync_direct(fd).await,
            WriterFile::Buffered(file) => file.fdatasync().await.map_err(Into::into),
        };
        crate::metrics::record_sync(started.elapsed());
        r.map_err(|e| Error::io("syncing segment", &self.path, e))
    }

    async fn truncate_file(&mut self, size: u64) -> Result<()> {
        let r = match &self.file {
            WriterFile::Direct { file, .. } => file.truncate(size).await,
            WriterFile::Buffered(file) => file.truncate(size).await,
        };
        r.map_err(|e| Error::io("truncating segment", &self.path, e))
    }

    /// Cuts the file to its logical size, syncs and closes it (a segment roll or a
    /// clean shutdown).
    pub(crate) async fn finish(mut self) -> Result<()> {
        self.truncate_file(self.write_pos).await?;
        self.sync().await?;
        let r = match self.file {
            WriterFile::Direct { file, .. } => file.close().await,
            WriterFile::Buffered(file) => file.close().await,
        };
        r.map_err(|e| Error::io("closing segment", &self.path, e))
    }
}

/// Direct writes of at least this many bytes that are to be synced at once carry
/// `RWF_DSYNC` instead of being followed by an fdatasync: the kernel syncs each as it
/// completes, which saves the round trip through this thread and the fdatasync's own
/// request. Smaller writes are two requests (the rewritten partial block and the new
/// blocks), and two synced writes cost two flushes where one fdatasync after both costs
/// one. Measured with `storage_append`, one appender, p50 append-to-durable (two runs
/// each): 16 KiB 327-332 µs with fdatasync vs 355-362 µs with RWF_DSYNC; 64 KiB 386-397
/// vs 380-405 µs; 1 MiB 962-965 vs 875-901 µs (1.07-1.10x the throughput).
const DSYNC_WRITE_MIN_BYTES: u64 = 128 << 10;

/// Zeros written at a time ahead of the end (see [`SegmentWriter::prepare_ahead`]).
const ZERO_FILL_CHUNK_BYTES: usize = 256 << 10;
/// How far past the end zeros are kept.
const ZERO_FILL_AHEAD_BYTES: u64 = 1 << 20;
/// At most one zero-fill per interval: 256 KiB per 20 ms is 12.8 MB/s of zeros at most.
const ZERO_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Alignment of direct writes: ext4's block size on these machines.
const FS_BLOCK_BYTES: u64 = 4096;

/// O_DIRECT writes of whole aligned buffers, each at its position, issued together with
/// one system call on the shard's second ring rather than glommio's: glommio would put
/// them on its polled ring and busy-poll the core until they complete (see the
/// `ringmq-uring` crate). Waited on with the ring's completion polling, when the shard
/// has it on (`Ring::set_poll`). The bytes written in all, or the first error (a
/// failure to set up the ring included).
async fn write_direct(
    fd: &Rc<OwnedFd>,
    bufs: Vec<(DmaBuffer, u64)>,
    rw_flags: i32,
) -> std::io::Result<usize> {
    use ringmq_uring::{Ring, opcode, types};
    let ring = Ring::current()?;
    let entries = bufs
        .into_iter()
        .map(|(buf, pos)| {
            let sqe = opcode::Write::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), buf.len() as u32)
                .offset(pos)
                .rw_flags(rw_flags)
                .build();
            let keep: Vec<Box<dyn std::any::Any>> = vec![Box::new(buf), Box::new(fd.clone())];
            (sqe, keep)
        })
        .collect();
    // SAFETY: the buffer each entry points at and the descriptor it names are both in
    // its `keep`, held by the ring until that write completes.
    let written = unsafe { ring.ops_polled(entries).await? };
    Ok(written.iter().map(|&n| n as usize).sum())
}

/// One O_DIRECT write of several whole aligned buffers, one after the other from
/// `pos`, on the shard's second ring like [`write_direct`]. The bytes written.
async fn write_direct_vectored(
    fd: &Rc<OwnedFd>,
    bufs: Vec<DmaBuffer>,
    pos: u64,
    rw_flags: i32,
) -> std::io::Result<usize> {
    use ringmq_uring::{Ring, opcode, types};
    let ring = Ring::current()?;
    let iovecs: Box<[libc::iovec]> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let sqe = opcode::Writev::new(
        types::Fd(fd.as_raw_fd()),
        iovecs.as_ptr(),
        iovecs.len() as u32,
    )
    .offset(pos)
    .rw_flags(rw_flags)
    .build();
    let keep: Vec<Box<dyn std::any::Any>> =
        vec![Box::new(iovecs), Box::new(bufs), Box::new(fd.clone())];
    // SAFETY: the iovec array, the buffers it points into (moving the boxes and the
    // vector does not move their heap memory) and the descriptor are all in `keep`,
    // held by the ring until the write completes.
    let written = unsafe { ring.ops_polled(vec![(sqe, keep)]).await? };
    Ok(written.iter().map(|&n| n as usize).sum())
}

/// fdatasync of a segment written with direct writes, on the same ring as the writes
/// and waited on the same way (polled when the shard has it on).
async fn sync_direct(fd: &Rc<OwnedFd>) -> std::io::Result<()> {
    use ringmq_uring::{Ring, opcode, types};
    let ring = Ring::current()?;
    let sqe = opcode::Fsync::new(types::Fd(fd.as_raw_fd()))
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    let keep: Vec<Box<dyn std::any::Any>> = vec![Box::new(fd.clone())];
    // SAFETY: the descriptor is in `keep`, held by the ring until the sync completes.
    unsafe { ring.ops_polled(vec![(sqe, keep)]).await? };
    Ok(())
}

/// Writes a small file crash-safely: write to `<name>.tmp`, fdatasync, rename over the
/// target, fsync the directory.
pub(crate) async fn write_file_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&tmp)
        .await
        .map_err(|e| Error::io("creating", &tmp, e))?;
    if !data.is_empty() {
        let wrote = file
            .write_at(data.to_vec(), 0)
            .await
            .map_err(|e| Error::io("writing", &tmp, e))?;
        if wrote != data.len() {
            return Err(Error::io(
                "short write",
                &tmp,
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
    }
    file.fdatasync()
        .await
        .map_err(|e| Error::io("syncing", &tmp, e))?;
    let mut file = file;
    file.rename(path)
        .await
        .map_err(|e| Error::io("renaming into place", path, e))?;
    file.close()
        .await
        .map_err(|e| Error::io("closing", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).await
}

/// Writes a rebuildable file (an index) without the rename dance, and syncs it.
pub(crate) async fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(path)
        .await
        .map_err(|e| Error::io("creating", path, e))?;
    let wrote = file
        .write_at(data.to_vec(), 0)
        .await
        .map_err(|e| Error::io("writing", path, e))?;
    if wrote != data.len() {
        return Err(Error::io(
            "short write",
            path,
            std::io::Error::from(std::io::ErrorKind::WriteZero),
        ));
    }
    file.fdatasync()
        .await
        .map_err(|e| Error::io("syncing", path, e))?;
    file.close()
        .await
        .map_err(|e| Error::io("closing", path, e))
}

/// Reads a whole small file; `None` if it does not exist.
pub(crate) async fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new().read(true).buffered_open(path).await {
        Ok(f) => f,
        Err(e) => {
            let e: std::io::Error = e.into();
            if e.kind() == std::io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(Error::io("opening", path, e));
        }
    };
    let mut out = Vec::new();
    loop {
        let got = file
            .read_at(out.len() as u64, 1 << 20)
            .await
            .map_err(|e| Error::io("reading", path, e))?;
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    file.close()
        .await
        .map_err(|e| Error::io("closing", path, e))?;
    Ok(Some(out))
}

/// fsync of a directory, so renames and unlinks in it are durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<()> {
    let d = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| Error::io("opening directory", dir, e))?;
    d.sync()
        .await
        .map_err(|e| Error::io("syncing directory", dir, e))?;
    d.close()
        .await
        .map_err(|e| Error::io("closing directory", dir, e))
}

/// Runs a blocking filesystem call (readdir, unlink, mkdir) off the executor thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    glommio::executor().spawn_blocking(f).await
}

/// Creates `dir` and its parents.
pub(crate) async fn create_dir_all(dir: &Path) -> Result<()> {
    let d = dir.to_owned();
    blocking(move || std::fs::create_dir_all(&d))
        .await
        .map_err(|e| Error::io("creating directory", dir, e))
}

/// Lists the file names in `dir`.
pub(crate) async fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let d = dir.to_owned();
    blocking(move || {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&d)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    })
    .await
    .map_err(|e| Error::io("listing directory", dir, e))
}

/// Removes files, ignoring ones already gone.
pub(crate) async fn remove_files(paths: Vec<PathBuf>) -> Result<()> {
    let first = paths.first().cloned().unwrap_or_default();
    blocking(move || {
        for p in &paths {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::io("removing", first, e))
}

/// Size of a file.
pub(crate) async fn file_size(path: &Path) -> Result<u64> {
    let p = path.to_owned();
    blocking(move || std::fs::metadata(&p).map(|m| m.len()))
        .await
        .map_err(|e| Error::io("reading size of", path, e))
}

/// A closed segment opened for reading: its descriptor and its indexes.
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub(crate) file: Rc<SegmentFile>,
    pub(crate) index: crate::index::OffsetIndex,
    pub(crate) time_index: crate::index::TimeIndex,
}

/// A bounded cache of open closed segments (descriptor and indexes), shared by the
/// partitions of one shard (owned by that shard; not `Send`). Closed segments hold no
/// descriptor and no index memory until read; the least recently used entry is dropped
/// when the cache is full. A handle still used by an in-flight read stays open until
/// that read drops it, so deleting or evicting a segment never breaks a read.
#[derive(Debug)]
pub struct SegmentCache {
    open_segments_max: usize,
    clock: Cell<u64>,
    entries: RefCell<HashMap<PathBuf, (Rc<OpenSegment>, u64)>>,
}

impl SegmentCache {
    /// A cache holding at most `open_segments_max` closed segments open.
    pub fn new(open_segments_max: usize) -> Rc<Self> {
        assert!(open_segments_max > 0);
        Rc::new(Self {
            open_segments_max,
            clock: Cell::new(0),
            entries: RefCell::new(HashMap::new()),
        })
    }

    /// Number of segments held open.
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// True when no segment is held open.
    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    pub(crate) fn lookup(&self, path: &Path) -> Option<Rc<OpenSegment>> {
        let tick = self.clock.get() + 1;
        self.clock.set(tick);
        let mut entries = self.entries.borrow_mut();
        let (seg, used) = entries.get_mut(path)?;
        *used = tick;
        Some(seg.clone())
    }

    pub(crate) fn insert(&self, path: &Path, seg: Rc<OpenSegment>) {
        let tick = self.clock.get() + 1;
        self.clock.set(tick);
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= self.open_segments_max && !entries.contains_key(path) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                entries.remove(&p);
            }
        }
        entries.insert(path.to_owned(), (seg, tick));
    }

    pub(crate) fn evict(&self, path: &Path) {
        self.entries.borrow_mut().remove(path);
    }
}
