//! [`PartitionLog`]: one partition's segmented log.
//!
//! Owned by one shard (it is `!Send`); every method takes `&self` so the shard's tasks
//! can share it through an `Rc`. No `RefCell` borrow is held across an `.await`.
//!
//! Appends are assigned offsets synchronously and queued; whichever waiting task finds
//! no flush running becomes the flush driver: it writes every queued batch in one
//! write, fdatasyncs once if the flush policy asks, and wakes everyone. Appends that
//! arrive while it runs share the next round (group commit).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::IoMode;
use crate::batch::{self, BatchInfo, TimestampType};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{Error, Result};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::io::{self, OpenSegment, SegmentCache, SegmentFile, SegmentWriter};
use crate::notify::Notify;

const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
const RECOVERY_POINT_FILE: &str = "recovery-point";
const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
/// The partition's last checkpointed high watermark (Kafka's
/// `replication-offset-checkpoint`, one file per partition here).
const HIGH_WATERMARK_FILE: &str = "high-watermark-checkpoint";
/// The log start offset set by [`PartitionLog::delete_records_before`] (Kafka's
/// `log-start-offset-checkpoint`), when it lies above the first segment's base.
const LOG_START_FILE: &str = "log-start-offset";
const SCAN_CHUNK_BYTES: usize = 1 << 20;
const HEADER_SCAN_CHUNK_BYTES: usize = 16 << 10;

/// Milliseconds since the Unix epoch by the wall clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn segment_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

fn parse_segment_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Offsets assigned to an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
    /// The broker's timestamp when the partition uses `LogAppendTime`, else -1.
    pub log_append_time_ms: i64,
    /// Size of the batch in bytes.
    pub size_bytes: usize,
}

/// A piece of a read: bytes still in a segment file, or bytes in memory.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    /// `len` bytes at `position` of `file`: whole batches the network layer can send
    /// without copying them through user space.
    File {
        /// The segment's read handle; holding it keeps the data readable even if
        /// retention deletes the segment meanwhile.
        file: Rc<SegmentFile>,
        /// Byte position in the file.
        position: u64,
        /// Byte count.
        len: u64,
    },
    /// Whole batches from the tail cache.
    Memory(Bytes),
}

impl ReadChunk {
    /// Bytes in this chunk.
    pub fn len(&self) -> usize {
        match self {
            ReadChunk::File { len, .. } => *len as usize,
            ReadChunk::Memory(b) => b.len(),
        }
    }

    /// True for an empty chunk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk's bytes (a copy for file chunks).
    pub async fn to_bytes(&self) -> Result<Bytes> {
        match self {
            ReadChunk::File {
                file,
                position,
                len,
            } => file.read_exact(*position, *len as usize).await,
            ReadChunk::Memory(b) => Ok(b.clone()),
        }
    }
}

/// Whole batches returned by [`PartitionLog::read`].
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// The batches, in offset order.
    pub chunks: Vec<ReadChunk>,
    /// First offset after the returned batches (the requested offset if none).
    pub next_offset: i64,
}

impl ReadResult {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(ReadChunk::len).sum()
    }

    /// True when no batch was returned.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// All bytes concatenated (copies file chunks).
    pub async fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len());
        for c in &self.chunks {
            out.extend_from_slice(&c.to_bytes().await?);
        }
        Ok(out)
    }
}

/// What [`PartitionLog::apply_retention`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
    /// Log start offset afterwards.
    pub start_offset: i64,
}

/// What recovery did when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The previous shutdown was clean (no scan past the last index entry).
    pub clean_shutdown: bool,
    /// Segments whose batches were validated one by one.
    pub segments_scanned: usize,
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Segments deleted because they followed corrupt data.
    pub segments_dropped: usize,
    /// Index files rebuilt because they were missing or damaged.
    pub indexes_rebuilt: usize,
    /// Why the tail was cut, if it was.
    pub truncation_reason: Option<String>,
}

/// Index state of the active segment, built while appending or scanning.
#[derive(Debug, Default)]
struct SegmentIndexBuilder {
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_entry: u64,
    max_timestamp_ms: i64,
    offset_of_max_timestamp: i64,
}

impl SegmentIndexBuilder {
    fn new(base_offset: i64) -> Self {
        Self {
            max_timestamp_ms: -1,
            offset_of_max_timestamp: base_offset,
            ..Self::default()
        }
    }

    fn on_batch(&mut self, segment_base: i64, position: u64, info: &BatchInfo, interval: u32) {
        if info.max_timestamp > self.max_timestamp_ms {
            self.max_timestamp_ms = info.max_timestamp;
            self.offset_of_max_timestamp = info.base_offset;
        }
        if self.bytes_since_entry >= u64::from(interval) {
            let relative_offset = (info.base_offset - segment_base) as u32;
            self.index.push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            self.time_index.push(TimeEntry {
                timestamp_ms: self.max_timestamp_ms,
                relative_offset: (self.offset_of_max_timestamp - segment_base) as u32,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += info.size_bytes as u64;
    }

    /// Final time-index entry so a closed segment's max timestamp is its last entry.
    fn seal(&mut self, segment_base: i64) {
        if self.max_timestamp_ms >= 0 {
            self.time_index.push(TimeEntry {
                timestamp_ms: self.max_timestamp_ms,
                relative_offset: (self.offset_of_max_timestamp - segment_base) as u32,
            });
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ClosedSegment {
    base_offset: i64,
    next_offset: i64,
    size_bytes: u64,
    max_timestamp_ms: i64,
}

#[derive(Debug)]
struct ActiveSegment {
    base_offset: i64,
    size_bytes: u64,
    created_ms: i64,
    builder: SegmentIndexBuilder,
    reader: Rc<SegmentFile>,
}

#[derive(Debug)]
struct Pending {
    bytes: Bytes,
    info: BatchInfo,
}

/// An append's place in the admission queue ([`State::admit_waiting`]). Dropped
/// before admission (refused, or the append's future dropped), it leaves the queue
/// and lets the next one go.
struct AdmitGuard<'a> {
    log: &'a PartitionLog,
    ticket: u64,
}

impl AdmitGuard<'_> {
    /// Leaves the queue as admitted (the caller holds the state borrow).
    fn admitted(&mut self, s: &mut State) {
        let first = s.admit_waiting.pop_front();
        assert_eq!(first, Some(self.ticket), "admitted out of turn");
        self.ticket = u64::MAX;
        self.log.changed.notify_all();
    }
}

impl Drop for AdmitGuard<'_> {
    fn drop(&mut self) {
        if self.ticket == u64::MAX {
            return;
        }
        let mut s = self.log.state.borrow_mut();
        if let Some(i) = s.admit_waiting.iter().position(|&t| t == self.ticket) {
            s.admit_waiting.remove(i);
        }
        drop(s);
        self.log.changed.notify_all();
    }
}

#[derive(Debug, Default)]
struct TailCache {
    batches: VecDeque<(i64, i64, Bytes)>,
    bytes: usize,
    bytes_max: usize,
}

impl TailCache {
    fn push(&mut self, base: i64, next: i64, data: Bytes) {
        if data.len() > self.bytes_max {
            self.clear();
            return;
        }
        self.bytes += data.len();
        self.batches.push_back((base, next, data));
        while self.bytes > self.bytes_max {
            let (_, _, d) = self.batches.pop_front().expect("non-empty over budget");
            self.bytes -= d.len();
        }
    }

    fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    fn read(&self, offset: i64, max_bytes: usize, upper: i64) -> Option<(Vec<ReadChunk>, i64)> {
        let front = self.batches.front()?;
        let back = self.batches.back()?;
        if offset < front.0 || offset >= back.1 {
            return None;
        }
        let first = self.batches.partition_point(|b| b.1 <= offset);
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut next = offset;
        for (base, end, data) in self.batches.iter().skip(first) {
            if *base >= upper || (!out.is_empty() && total + data.len() > max_bytes) {
                break;
            }
            total += data.len();
            next = *end;
            out.push(ReadChunk::Memory(data.clone()));
        }
        Some((out, next))
    }

    fn memory_bytes(&self) -> usize {
        self.bytes + self.batches.capacity() * std::mem::size_of::<(i64, i64, Bytes)>()
    }
}

#[derive(Debug)]
struct State {
    closed: BTreeMap<i64, ClosedSegment>,
    active: ActiveSegment,
    writer: Option<SegmentWriter>,
    start_offset: i64,
    /// Next offset to assign (includes queued appends).
    next_offset: i64,
    /// End of what is written to the file.
    written_offset: i64,
    /// End of what is fdatasynced.
    durable_offset: i64,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// Appends waiting for room in `pending`, by ticket, in arrival order: only the
    /// first may be admitted.
    admit_waiting: VecDeque<u64>,
    admit_next_ticket: u64,
    flushing: bool,
    sync_requested: bool,
    unsynced_bytes: u64,
    last_sync_ms: i64,
    abort_generation: u64,
    abort_reason: String,
    failed: Option<String>,
    closed_for_writes: bool,
    tail: TailCache,
    /// See [`PartitionLog::set_tail_cache_floor`].
    tail_floor: usize,
    leader_epochs: Vec<(i32, i64)>,
    config: LogConfig,
    stats: LogStats,
    /// The active segment's indexes are in their files, not in memory.
    active_index_spilled: bool,
}

/// Counters of one log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches appended.
    pub appends: u64,
    /// Writes to segment files (one per flush round and segment).
    pub writes: u64,
    /// fdatasync calls on segment files.
    pub syncs: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes of zeros written and synced ahead of the active segment's end, so that
    /// appends overwrite written blocks (see `SegmentWriter::prepare_ahead`).
    pub zero_filled_bytes: u64,
}

/// One partition's log: a directory of segments. See the crate docs for the format.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    cache: Rc<SegmentCache>,
    state: RefCell<State>,
    changed: Notify,
    recovery: RecoveryReport,
    /// One `delete_records_before` at a time: they write the same checkpoint file.
    start_moves: glommio::sync::Semaphore,
}

/// How a scan of a segment ended.
#[derive(Debug)]
struct ScanEnd {
    valid_end: u64,
    next_offset: i64,
    /// Why the scan stopped before the end of the data, if it hit damage.
    damage: Option<String>,
}

/// Walks batches from `start_pos`, validating each (frame, header, CRC32C, offsets),
/// feeding the index builder, and stops at the first invalid one or at zeros.
async fn scan_segment(
    file: &SegmentFile,
    segment_base: i64,
    start_pos: u64,
    start_offset: i64,
    builder: &mut SegmentIndexBuilder,
    interval: u32,
    leader_epochs: &[(i32, i64)],
) -> Result<ScanEnd> {
    let mut pos = start_pos;
    let mut expected = start_offset;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = pos;
    let end = |pos: u64, expected: i64, damage: Option<String>| {
        Ok(ScanEnd {
            valid_end: pos,
            next_offset: expected,
            damage,
        })
    };
    loop {
        let mut rel = (pos - buf_start) as usize;
        if buf.len() < rel + batch::LOG_OVERHEAD_BYTES {
            buf = file.read_some(pos, SCAN_CHUNK_BYTES).await?;
            buf_start = pos;
            rel = 0;
            if buf.len() < batch::LOG_OVERHEAD_BYTES {
                let damage = (!buf.iter().all(|&b| b == 0))
                    .then(|| format!("{} stray bytes at position {pos}", buf.len()));
                return end(pos, expected, damage);
            }
        }
        let head = &buf[rel..rel + batch::LOG_OVERHEAD_BYTES];
        let Some((_, size)) = batch::peek_frame(&buf[rel..]) else {
            let damage = (!head.iter().all(|&b| b == 0))
                .then(|| format!("invalid batch frame at position {pos}"));
            return end(pos, expected, damage);
        };
        if size > batch::LOG_OVERHEAD_BYTES + i32::MAX as usize / 2 {
            return end(
                pos,
                expected,
                Some(format!("absurd batch size {size} at position {pos}")),
            );
        }
        if buf.len() < rel + size {
            buf = file.read_some(pos, size.max(SCAN_CHUNK_BYTES)).await?;
            buf_start = pos;
            rel = 0;
            if buf.len() < size {
                return end(
                    pos,
                    expected,
                    Some(format!(
                        "batch at position {pos} is torn ({} of {size} bytes)",
                        buf.len()
                    )),
                );
            }
        }
        let b = &buf[rel..rel + size];
        let info = match batch::parse_header(b) {
            Ok(info) => info,
            Err(e) => return end(pos, expected, Some(format!("batch at position {pos}: {e}"))),
        };
        if !batch::crc_matches(b) {
            return end(
                pos,
                expected,
                Some(format!("batch at position {pos} fails its CRC32C")),
            );
        }
        if info.base_offset != expected || info.last_offset_delta < 0 {
            return end(
                pos,
                expected,
                Some(format!(
                    "batch at position {pos} has base offset {} where {expected} was expected",
                    info.base_offset
                )),
            );
        }
        let epoch = epoch_at(leader_epochs, info.base_offset);
        if info.leader_epoch != epoch {
            return end(
                pos,
                expected,
                Some(format!(
                    "batch at position {pos} carries leader epoch {} where the checkpoint says {epoch}",
                    info.leader_epoch
                )),
            );
        }
        builder.on_batch(segment_base, pos, &info, interval);
        pos += size as u64;
        expected = info.next_offset();
    }
}

/// The leader epoch in force at `offset` by the checkpoint, -1 before the first.
fn epoch_at(leader_epochs: &[(i32, i64)], offset: i64) -> i32 {
    leader_epochs
        .iter()
        .rev()
        .find(|&&(_, start)| start <= offset)
        .map(|&(e, _)| e)
        .unwrap_or(-1)
}

/// A batch header found by [`HeaderScan`].
#[derive(Debug, Clone, Copy)]
struct Header {
    position: u64,
    info: BatchInfo,
}

/// Reads batch headers forward from a position, in chunks, without reading bodies
/// it can skip.
struct HeaderScan<'a> {
    file: &'a SegmentFile,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> HeaderScan<'a> {
    fn new(file: &'a SegmentFile, pos: u64, end: u64) -> Self {
        Self {
            file,
            pos,
            end,
            buf: Vec::new(),
            buf_start: pos,
        }
    }

    async fn next(&mut self) -> Result<Option<Header>> {
        if self.pos + batch::HEADER_BYTES as u64 > self.end {
            return Ok(None);
        }
        let in_buf = self.pos >= self.buf_start
            && self.pos + batch::HEADER_BYTES as u64 <= self.buf_start + self.buf.len() as u64;
        if !in_buf {
            let want = HEADER_SCAN_CHUNK_BYTES.min((self.end - self.pos) as usize);
            self.buf = self.file.read_some(self.pos, want).await?;
            self.buf_start = self.pos;
            if self.buf.len() < batch::HEADER_BYTES {
                return Err(Error::Corrupt {
                    what: "batch header beyond the end of the segment",
                    path: self.file.path().to_owned(),
                });
            }
        }
        let rel = (self.pos - self.buf_start) as usize;
        let info =
            batch::parse_header(&self.buf[rel..rel + batch::HEADER_BYTES]).map_err(|_| {
                Error::Corrupt {
                    what: "batch header in a recovered segment",
                    path: self.file.path().to_owned(),
                }
            })?;
        let h = Header {
            position: self.pos,
            info,
        };
        self.pos += info.size_bytes as u64;
        Ok(Some(h))
    }
}

/// Where to read in one segment: its file, index, bounds.
struct SegmentView {
    file: Rc<SegmentFile>,
    size_bytes: u64,
    /// Start position hint for `offset` (floor index entry).
    start_hint: u64,
    /// Start position hint for the end of the range (a batch start that is within
    /// both the byte and the offset bound).
    end_hint: u64,
    /// Bytes before this position are never written again (see [`REWRITE_WINDOW`]);
    /// bytes from here on are returned in memory rather than as a file range.
    stable_end: u64,
}

/// Direct writes rewrite the partial block the previous write ended in. A page of that
/// block that a reader holds in the page cache while the rewrite completes (a file range
/// being spliced to a socket pins its pages) could not be invalidated and would go
/// stale, so file ranges of the active segment under direct I/O end before the last
/// `REWRITE_WINDOW` boundary below its written size (a multiple of any block size up to
/// 64 KiB); the rest of a read, at most this much, is copied into memory.
const REWRITE_WINDOW: u64 = 64 << 10;

impl PartitionLog {
    /// Opens (creating if needed) the partition log in `dir` and recovers it: from the
    /// last recovery checkpoint each batch is validated, a torn or corrupt tail is cut
    /// at the last valid batch boundary, and missing or damaged indexes are rebuilt.
    pub async fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        cache: Rc<SegmentCache>,
    ) -> Result<Rc<Self>> {
        config.validate()?;
        // glommio opens files relative to no directory (dirfd -1): paths must be
        // absolute. `absolute` only consults the working directory.
        let dir = std::path::absolute(dir.into()).map_err(|e| Error::io("resolving", ".", e))?;
        io::create_dir_all(&dir).await?;
        let names = io::list_dir(&dir).await?;
        let stale: Vec<PathBuf> = names
            .iter()
            .filter(|n| n.ends_with(".tmp"))
            .map(|n| dir.join(n))
            .collect();
        if !stale.is_empty() {
            io::remove_files(stale).await?;
        }
        let mut bases: Vec<i64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        bases.sort_unstable();
        let clean = names.iter().any(|n| n == CLEAN_SHUTDOWN_FILE);
        let recovery_point = read_recovery_point(&dir).await?;
        let mut leader_epochs = read_leader_epochs(&dir).await?;
        let mut report = RecoveryReport {
            clean_shutdown: clean,
            ..RecoveryReport::default()
        };
        if bases.is_empty() {
            bases.push(0);
        }
        let interval = config.index_interval_bytes;
        let mut closed = BTreeMap::new();
        let mut active_base = *bases.last().expect("at least one segment");
        // Closed segments: trusted before the recovery point, scanned from it.
        let mut i = 0;
        while i + 1 < bases.len() {
            let base = bases[i];
            let next_base = bases[i + 1];
            let path = dir.join(segment_name(base, "log"));
            let trusted = clean || base < recovery_point;
            let time_index = if trusted {
                io::read_file(&dir.join(segment_name(base, "timeindex")))
                    .await?
                    .and_then(|b| TimeIndex::decode(&b))
            } else {
                None
            };
            let seg = match time_index {
                Some(t) => ClosedSegment {
                    base_offset: base,
                    next_offset: next_base,
                    size_bytes: io::file_size(&path).await?,
                    max_timestamp_ms: t.last().map(|e| e.timestamp_ms).unwrap_or(-1),
                },
                None => {
                    let file = SegmentFile::open(&path).await?;
                    let mut b = SegmentIndexBuilder::new(base);
                    let scan = scan_segment(&file, base, 0, base, &mut b, interval, &leader_epochs)
                        .await?;
                    report.segments_scanned += 1;
                    let file_size = io::file_size(&path).await?;
                    if scan.damage.is_some() || scan.next_offset != next_base {
                        // Damage inside a closed segment: it becomes the end of the log.
                        let reason = scan.damage.unwrap_or_else(|| {
                            format!(
                                "segment ends at offset {} but the next starts at {next_base}",
                                scan.next_offset
                            )
                        });
                        tracing::warn!(dir = %dir.display(), segment = base, %reason, "corrupt segment: truncating the log here");
                        report.truncated_bytes += file_size - scan.valid_end;
                        report.truncation_reason = Some(reason);
                        let dropped: Vec<i64> = bases[i + 1..].to_vec();
                        report.segments_dropped += dropped.len();
                        let mut paths = Vec::new();
                        for d in dropped {
                            for ext in ["log", "index", "timeindex"] {
                                paths.push(dir.join(segment_name(d, ext)));
                            }
                        }
                        io::remove_files(paths).await?;
                        bases.truncate(i + 1);
                        active_base = base;
                        break;
                    }
                    b.seal(base);
                    write_indexes(&dir, base, &b).await?;
                    report.indexes_rebuilt += 1;
                    ClosedSegment {
                        base_offset: base,
                        next_offset: next_base,
                        size_bytes: scan.valid_end,
                        max_timestamp_ms: b.max_timestamp_ms,
                    }
                }
            };
            closed.insert(base, seg);
            i += 1;
        }

        // The active segment.
        let path = dir.join(segment_name(active_base, "log"));
        if !bases.contains(&active_base) || bases.is_empty() {
            unreachable!("active segment comes from the listing");
        }
        let exists = names
            .iter()
            .any(|n| parse_segment_name(n) == Some(active_base));
        let mut builder = SegmentIndexBuilder::new(active_base);
        let scan = if exists {
            let file = SegmentFile::open(&path).await?;
            let file_size = io::file_size(&path).await?;
            // After a clean shutdown, resume from the last index entry; otherwise
            // validate the whole segment.
            let loaded = if clean {
                load_indexes(&dir, active_base, file_size).await?
            } else {
                None
            };
            let scan = match loaded {
                Some((index, time_index)) if clean => {
                    let (start_pos, start_offset) = match index.floor_offset(u32::MAX) {
                        Some(e) => (
                            u64::from(e.position),
                            active_base + i64::from(e.relative_offset),
                        ),
                        None => (0, active_base),
                    };
                    builder.index = index;
                    builder.time_index = time_index;
                    if let Some(t) = builder.time_index.last() {
                        builder.max_timestamp_ms = t.timestamp_ms;
                        builder.offset_of_max_timestamp =
                            active_base + i64::from(t.relative_offset);
                    }
                    // Entries at or past the start are re-added by the scan.
                    builder
                        .index
                        .truncate_from((start_offset - active_base) as u32);
                    builder
                        .time_index
                        .truncate_from((start_offset - active_base) as u32 + 1);
                    builder.bytes_since_entry = u64::from(interval);
                    if start_pos == 0 {
                        builder.bytes_since_entry = 0;
                    }
                    scan_segment(
                        &file,
                        active_base,
                        start_pos,
                        start_offset,
                        &mut builder,
                        interval,
                        &leader_epochs,
                    )
                    .await?
                }
                _ => {
                    report.segments_scanned += 1;
                    scan_segment(
                        &file,
                        active_base,
                        0,
                        active_base,
                        &mut builder,
                        interval,
                        &leader_epochs,
                    )
                    .await?
                }
            };
            if let Some(reason) = &scan.damage {
                report.truncated_bytes += file_size.saturating_sub(scan.valid_end);
                report.truncation_reason = Some(reason.clone());
                tracing::warn!(
                    dir = %dir.display(),
                    segment = active_base,
                    position = scan.valid_end,
                    %reason,
                    "truncating torn or corrupt tail of the active segment"
                );
            }
            scan
        } else {
            ScanEnd {
                valid_end: 0,
                next_offset: active_base,
                damage: None,
            }
        };
        let writer = SegmentWriter::open(
            &path,
            config.io_mode,
            scan.valid_end,
            config.preallocate_step_bytes.min(config.segment_bytes),
        )
        .await?;
        let reader = Rc::new(SegmentFile::open(&path).await?);
        if clean {
            io::remove_files(vec![dir.join(CLEAN_SHUTDOWN_FILE)]).await?;
        }
        write_recovery_point(&dir, active_base).await?;
        let next_offset = scan.next_offset;
        leader_epochs.retain(|&(_, start)| start <= next_offset);
        let first_base = closed.keys().next().copied().unwrap_or(active_base);
        let start_offset = read_log_start(&dir).await?.max(first_base).min(next_offset);
        if report.truncated_bytes > 0 || report.segments_scanned > 0 || report.indexes_rebuilt > 0 {
            tracing::info!(
                dir = %dir.display(),
                clean = report.clean_shutdown,
                scanned = report.segments_scanned,
                truncated_bytes = report.truncated_bytes,
                dropped = report.segments_dropped,
                start_offset,
                end_offset = next_offset,
                "partition log recovered"
            );
        }
        let tail = TailCache {
            bytes_max: config.tail_cache_bytes_max,
            ..TailCache::default()
        };
        let state = State {
            closed,
            active: ActiveSegment {
                base_offset: active_base,
                size_bytes: scan.valid_end,
                created_ms: now_ms(),
                builder,
                reader,
            },
            writer: Some(writer),
            start_offset,
            next_offset,
            written_offset: next_offset,
            durable_offset: next_offset,
            pending: VecDeque::new(),
            pending_bytes: 0,
            admit_waiting: VecDeque::new(),
            admit_next_ticket: 0,
            flushing: false,
            sync_requested: false,
            unsynced_bytes: 0,
            last_sync_ms: now_ms(),
            abort_generation: 0,
            abort_reason: String::new(),
            failed: None,
            closed_for_writes: false,
            tail,
            tail_floor: 0,
            leader_epochs,
            config,
            stats: LogStats::default(),
            active_index_spilled: false,
        };
        Ok(Rc::new(Self {
            dir,
            cache,
            state: RefCell::new(state),
            changed: Notify::new(),
            recovery: report,
            start_moves: glommio::sync::Semaphore::new(1),
        }))
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery did at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> i64 {
        self.state.borrow().start_offset
    }

    /// Log end offset: one past the last batch written to the segment file.
    pub fn end_offset(&self) -> i64 {
        self.state.borrow().written_offset
    }

    /// One past the last fdatasynced batch.
    pub fn durable_offset(&self) -> i64 {
        self.state.borrow().durable_offset
    }

    /// The flush policy in force (the partition above decides from it what a
    /// consumer may read).
    pub fn flush_policy(&self) -> FlushPolicy {
        self.state.borrow().config.flush
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        self.state.borrow().stats
    }

    /// Bytes on disk (all segments).
    pub fn size_bytes(&self) -> u64 {
        let s = self.state.borrow();
        s.closed.values().map(|c| c.size_bytes).sum::<u64>() + s.active.size_bytes
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.state.borrow().closed.len() + 1
    }

    /// The current configuration.
    pub fn config(&self) -> LogConfig {
        self.state.borrow().config.clone()
    }

    /// Keeps at least `bytes` of recent batches in memory, above the config's
    /// `tail_cache_bytes_max` (`0`: the config's size alone). A replicated leader keeps
    /// what its followers have yet to fetch there, so their reads are not file reads.
    pub fn set_tail_cache_floor(&self, bytes: usize) {
        let mut s = self.state.borrow_mut();
        s.tail_floor = bytes;
        s.tail.bytes_max = s.config.tail_cache_bytes_max.max(bytes);
        if s.tail.bytes > s.tail.bytes_max {
            s.tail.clear();
        }
    }

    /// Replaces the configuration (retention, flush, roll and cache settings take
    /// effect from the next operation; `io_mode` from the next open).
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        let mut s = self.state.borrow_mut();
        s.tail.bytes_max = config.tail_cache_bytes_max.max(s.tail_floor);
        if s.tail.bytes > s.tail.bytes_max {
            s.tail.clear();
        }
        s.config = config;
        Ok(())
    }

    /// Heap bytes this partition holds: indexes of the active segment, tail cache,
    /// queued appends and segment metadata. Closed segments' indexes live in the
    /// shard's [`SegmentCache`], not here.
    pub fn memory_bytes(&self) -> usize {
        let s = self.state.borrow();
        std::mem::size_of::<Self>()
            + s.active.builder.index.memory_bytes()
            + s.active.builder.time_index.memory_bytes()
            + s.tail.memory_bytes()
            + s.pending_bytes
            + s.pending.capacity() * std::mem::size_of::<Pending>()
            + s.closed.len() * (std::mem::size_of::<ClosedSegment>() + 16)
            + s.leader_epochs.capacity() * 12
    }

    /// Drops what an idle partition does not need: the tail cache, spare capacity and
    /// the active segment's indexes, which are written to their files and read back
    /// when next needed. Does nothing while appends are in flight.
    pub async fn release_memory(&self) -> Result<()> {
        let (base, snapshot, written) = {
            let mut s = self.state.borrow_mut();
            if s.flushing || !s.pending.is_empty() || s.closed_for_writes {
                return Ok(());
            }
            s.tail.clear();
            s.tail.batches.shrink_to_fit();
            s.pending.shrink_to_fit();
            if s.active_index_spilled
                || s.active.builder.index.is_empty() && s.active.builder.time_index.is_empty()
            {
                return Ok(());
            }
            let b = &s.active.builder;
            (
                s.active.base_offset,
                SegmentIndexBuilder {
                    index: b.index.clone(),
                    time_index: b.time_index.clone(),
                    ..SegmentIndexBuilder::default()
                },
                s.written_offset,
            )
        };
        write_indexes(&self.dir, base, &snapshot).await?;
        let mut s = self.state.borrow_mut();
        // Only if nothing was appended meanwhile and the segment is the same.
        if s.written_offset == written && s.active.base_offset == base && !s.flushing {
            s.active.builder.index = OffsetIndex::new();
            s.active.builder.time_index = TimeIndex::new();
            s.active_index_spilled = true;
        }
        Ok(())
    }

    /// Reads the active segment's indexes back after [`PartitionLog::release_memory`]
    /// (rebuilding them from the segment if their files are damaged).
    async fn ensure_active_index(&self) -> Result<()> {
        let (base, size, interval, epochs) = {
            let s = self.state.borrow();
            if !s.active_index_spilled {
                return Ok(());
            }
            (
                s.active.base_offset,
                s.active.size_bytes,
                s.config.index_interval_bytes,
                s.leader_epochs.clone(),
            )
        };
        let loaded = load_indexes(&self.dir, base, size.max(1)).await?;
        let (index, time_index) = match loaded {
            Some(ix) => ix,
            None => {
                tracing::warn!(dir = %self.dir.display(), segment = base, "spilled index damaged; rebuilding from the log");
                let reader = self.state.borrow().active.reader.clone();
                let mut b = SegmentIndexBuilder::new(base);
                scan_segment(&reader, base, 0, base, &mut b, interval, &epochs).await?;
                (b.index, b.time_index)
            }
        };
        let mut s = self.state.borrow_mut();
        if s.active_index_spilled && s.active.base_offset == base {
            s.active.builder.index = index;
            s.active.builder.time_index = time_index;
            s.active_index_spilled = false;
        }
        Ok(())
    }

    fn check_writable(&self, s: &State) -> Result<()> {
        if let Some(reason) = &s.failed {
            return Err(Error::Failed {
                path: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        if s.closed_for_writes {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Validates and appends a producer's batch, assigning its offsets, and returns
    /// once it is acknowledged by the flush policy: durable under `every_batch`,
    /// written to the file otherwise. A refused batch leaves the log unchanged.
    pub async fn append(&self, batch: BytesMut) -> Result<AppendInfo> {
        self.append_at(batch, now_ms()).await
    }

    /// [`PartitionLog::append`] with the broker's clock given (`LogAppendTime`, rolls).
    pub async fn append_at(&self, mut batch: BytesMut, now_ms: i64) -> Result<AppendInfo> {
        let message_bytes_max = self.state.borrow().config.message_bytes_max;
        let info = batch::validate(&batch, message_bytes_max)?;
        let mut waiting = self.admit(batch.len()).await?;
        let (base_offset, end, generation, append_time, wait_durable) = {
            let mut s = self.state.borrow_mut();
            waiting.admitted(&mut s);
            let base = s.next_offset;
            batch::set_base_offset(&mut batch, base);
            // Always stamped, so recovery can check every batch against the
            // leader-epoch checkpoint (the field lies outside the CRC).
            let epoch = s.leader_epochs.last().map(|&(e, _)| e).unwrap_or(-1);
            batch::set_leader_epoch(&mut batch, epoch);
            let mut append_time = -1;
            if s.config.timestamp_type == TimestampType::LogAppendTime {
                batch::set_log_append_time(&mut batch, now_ms);
                append_time = now_ms;
            }
            let mut info = info;
            info.base_offset = base;
            if append_time >= 0 {
                info.max_timestamp = append_time;
            }
            let end = info.next_offset();
            s.next_offset = end;
            s.pending_bytes += batch.len();
            s.pending.push_back(Pending {
                bytes: batch.freeze(),
                info,
            });
            (
                base,
                end,
                s.abort_generation,
                append_time,
                s.config.flush == FlushPolicy::EveryBatch,
            )
        };
        self.wait_for(end, generation, wait_durable).await?;
        Ok(AppendInfo {
            base_offset,
            last_offset: end - 1,
            log_append_time_ms: append_time,
            size_bytes: info.size_bytes,
        })
    }

    /// Appends a batch a leader replicated, keeping its offsets and its leader epoch
    /// (a follower's append): its base offset must be the log end and its epoch at
    /// least the log's latest, else it is refused with [`Error::Diverged`] and the log
    /// is unchanged (the follower truncates first, from the leader's epoch answer). A
    /// batch that starts a newer epoch records it in the leader-epoch checkpoint, durably,
    /// before the batch is queued. Returns like [`PartitionLog::append`]: durable under
    /// `every_batch`, written otherwise.
    pub async fn append_replica(&self, batch: impl Into<Bytes>) -> Result<AppendInfo> {
        // Taken as it came from the leader (a slice of the fetch answer): not copied.
        let batch: Bytes = batch.into();
        let message_bytes_max = self.state.borrow().config.message_bytes_max;
        let info = batch::validate(&batch, message_bytes_max)?;
        let mut waiting = self.admit(batch.len()).await?;
        // First in the admission queue: no other append moves the log end meanwhile.
        let (log_end, latest) = {
            let s = self.state.borrow();
            (s.next_offset, s.leader_epochs.last().copied())
        };
        let latest_epoch = latest.map_or(-1, |(e, _)| e);
        if info.base_offset != log_end || info.leader_epoch < latest_epoch {
            return Err(Error::Diverged {
                base_offset: info.base_offset,
                epoch: info.leader_epoch,
                log_end,
                latest_epoch,
            });
        }
        if info.leader_epoch > latest_epoch {
            let mut epochs = self.state.borrow().leader_epochs.clone();
            epochs.push((info.leader_epoch, info.base_offset));
            write_leader_epochs(&self.dir, &epochs).await?;
            self.state.borrow_mut().leader_epochs = epochs;
        }
        let (end, generation, wait_durable) = {
            let mut s = self.state.borrow_mut();
            waiting.admitted(&mut s);
            let end = info.next_offset();
            s.next_offset = end;
            s.pending_bytes += batch.len();
            s.pending.push_back(Pending { bytes: batch, info });
            (
                end,
                s.abort_generation,
                s.config.flush == FlushPolicy::EveryBatch,
            )
        };
        self.wait_for(end, generation, wait_durable).await?;
        Ok(AppendInfo {
            base_offset: info.base_offset,
            last_offset: end - 1,
            log_append_time_ms: -1,
            size_bytes: info.size_bytes,
        })
    }

    /// Kafka's OffsetsForLeaderEpoch answer from this log's leader-epoch history:
    /// `(epoch, end offset)` ([`end_offset_for_epoch`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let s = self.state.borrow();
        end_offset_for_epoch(&s.leader_epochs, epoch, s.written_offset)
    }

    /// Records the partition's high watermark durably (write-new, sync, rename), so a
    /// restarted replica knows what was committed before it learns the leader's.
    pub async fn checkpoint_high_watermark(&self, high_watermark: i64) -> Result<()> {
        io::write_file_atomic(
            &self.dir.join(HIGH_WATERMARK_FILE),
            format!("{high_watermark}\n").as_bytes(),
        )
        .await
    }

    /// The last checkpointed high watermark, `None` when none was written.
    pub async fn high_watermark_checkpoint(&self) -> Result<Option<i64>> {
        let path = self.dir.join(HIGH_WATERMARK_FILE);
        let Some(bytes) = io::read_file(&path).await? else {
            return Ok(None);
        };
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| Error::Corrupt {
                what: "high watermark checkpoint",
                path,
            })
    }

    /// Backpressure: waits until an append of `len` bytes is first in the admission
    /// queue and the write queue has room for it. Appends are admitted in the order
    /// they arrived: a waiting large batch is never overtaken by a later small one that
    /// would fit (Kafka appends a connection's requests to a partition in arrival
    /// order). The caller queues its batch and marks it admitted with the guard.
    async fn admit(&self, len: usize) -> Result<AdmitGuard<'_>> {
        let ticket = {
            let mut s = self.state.borrow_mut();
            let t = s.admit_next_ticket;
            s.admit_next_ticket += 1;
            s.admit_waiting.push_back(t);
            t
        };
        let waiting = AdmitGuard { log: self, ticket };
        loop {
            let changed = {
                let s = self.state.borrow();
                self.check_writable(&s)?;
                let first = s.admit_waiting.front() == Some(&ticket);
                let room = s.pending.is_empty()
                    || s.pending_bytes + len <= s.config.write_buffer_bytes_max;
                if first && room {
                    return Ok(waiting);
                }
                if s.flushing || !first {
                    Some(self.changed.changed())
                } else {
                    None
                }
            };
            match changed {
                Some(c) => c.await,
                None => self.drive().await,
            }
        }
    }

    /// Waits until `end` is written (or durable), driving flushes when none runs.
    async fn wait_for(&self, end: i64, generation: u64, durable: bool) -> Result<()> {
        loop {
            let changed = {
                let s = self.state.borrow();
                let reached = if durable {
                    s.durable_offset
                } else {
                    s.written_offset
                };
                if reached >= end {
                    return Ok(());
                }
                if let Some(reason) = &s.failed {
                    return Err(Error::Failed {
                        path: self.dir.clone(),
                        reason: reason.clone(),
                    });
                }
                if s.written_offset < end && s.abort_generation > generation {
                    return Err(Error::io(
                        "append aborted by a failed write to",
                        &self.dir,
                        std::io::Error::other(s.abort_reason.clone()),
                    ));
                }
                if s.flushing {
                    Some(self.changed.changed())
                } else {
                    None
                }
            };
            match changed {
                Some(c) => c.await,
                None => {
                    if durable {
                        self.state.borrow_mut().sync_requested = true;
                    }
                    self.drive().await
                }
            }
        }
    }

    /// Makes everything appended so far durable.
    pub async fn sync(&self) -> Result<()> {
        let end = self.state.borrow().next_offset;
        let generation = self.state.borrow().abort_generation;
        self.state.borrow_mut().sync_requested = true;
        self.wait_for(end, generation, true).await
    }

    /// Under `interval_ms`, syncs if the interval has passed since the last sync.
    /// The shard calls this from its timer.
    pub async fn sync_if_due(&self, now_ms: i64) -> Result<()> {
        let due = {
            let s = self.state.borrow();
            match s.config.flush {
                FlushPolicy::IntervalMs(ms) => {
                    s.written_offset > s.durable_offset && now_ms - s.last_sync_ms >= ms as i64
                }
                _ => false,
            }
        };
        if due { self.sync().await } else { Ok(()) }
    }

    /// The flush driver: one task at a time writes every queued batch and syncs as the
    /// policy asks, until the queue is empty. Errors are recorded in the state and
    /// reported to the waiting appends.
    async fn drive(&self) {
        {
            let mut s = self.state.borrow_mut();
            assert!(!s.flushing, "one flush driver at a time");
            s.flushing = true;
        }
        struct Done<'a>(&'a PartitionLog);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.state.borrow_mut().flushing = false;
                self.0.changed.notify_all();
            }
        }
        let _done = Done(self);
        loop {
            let batches: Vec<Pending> = {
                let mut s = self.state.borrow_mut();
                if s.failed.is_some() {
                    return;
                }
                s.pending_bytes = 0;
                s.pending.drain(..).collect()
            };
            // When this round will be synced anyway, direct writes carry the sync
            // themselves (one request instead of a write and then an fdatasync). That
            // covers only this round's writes: it replaces the fdatasync only when
            // everything written before them is durable already.
            let (sync_now, earlier_durable) = {
                let s = self.state.borrow();
                (
                    s.sync_requested || matches!(s.config.flush, FlushPolicy::EveryBatch),
                    s.durable_offset >= s.written_offset,
                )
            };
            let mut synced_by_write = false;
            if !batches.is_empty()
                && let Err(e) = match self.ensure_active_index().await {
                    Ok(()) => self.write_batches(batches, sync_now).await.map(|synced| {
                        synced_by_write = synced;
                    }),
                    Err(e) => Err(e),
                }
            {
                let mut s = self.state.borrow_mut();
                tracing::error!(dir = %self.dir.display(), error = %e, "write failed; queued appends aborted");
                s.abort_generation += 1;
                s.abort_reason = e.to_string();
                s.next_offset = s.written_offset;
                s.pending.clear();
                s.pending_bytes = 0;
                return;
            }
            let sync = {
                let mut s = self.state.borrow_mut();
                let now = now_ms();
                let due = match s.config.flush {
                    FlushPolicy::EveryBatch => true,
                    FlushPolicy::IntervalMs(ms) => now - s.last_sync_ms >= ms as i64,
                    FlushPolicy::Bytes(n) => s.unsynced_bytes >= n,
                    FlushPolicy::Never => false,
                };
                let want = (due || s.sync_requested) && s.written_offset > s.durable_offset;
                s.sync_requested = false;
                want.then_some(s.written_offset)
            };
            if let Some(target) = sync {
                let by_write = synced_by_write && earlier_durable;
                let r = if by_write {
                    Ok(())
                } else {
                    let writer = self.state.borrow_mut().writer.take();
                    let writer = writer.expect("writer present while driving");
                    let r = writer.sync().await;
                    self.state.borrow_mut().writer = Some(writer);
                    r
                };
                let mut s = self.state.borrow_mut();
                match r {
                    Ok(()) => {
                        s.stats.syncs += u64::from(!by_write);
                        s.durable_offset = s.durable_offset.max(target);
                        s.unsynced_bytes = 0;
                        s.last_sync_ms = now_ms();
                    }
                    Err(e) => {
                        // After a failed fdatasync the kernel may have dropped the
                        // dirty pages: nothing unsynced can be trusted any more.
                        tracing::error!(dir = %self.dir.display(), error = %e, "fdatasync failed; partition log is failed until reopened");
                        s.failed = Some(e.to_string());
                        return;
                    }
                }
            }
            self.changed.notify_all();
            if self.state.borrow().pending.is_empty() {
                // Acknowledged: extend the segment's runway off the append path.
                let all_synced = {
                    let s = self.state.borrow();
                    s.durable_offset >= s.written_offset
                };
                let writer = self.state.borrow_mut().writer.take();
                let mut writer = writer.expect("writer present while driving");
                let r = writer.prepare_ahead(all_synced).await;
                let mut s = self.state.borrow_mut();
                s.writer = Some(writer);
                let r = r.map(|zeroed| s.stats.zero_filled_bytes += zeroed);
                drop(s);
                if let Err(e) = r {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "segment preallocation failed");
                }
            }
            let s = self.state.borrow();
            if s.pending.is_empty() && !s.sync_requested {
                return;
            }
        }
    }

    /// Writes batches (in offset order) to the active segment, rolling as needed.
    /// With `dsync`, direct writes are made durable as they complete; returns true when
    /// every write was.
    async fn write_batches(&self, batches: Vec<Pending>, dsync: bool) -> Result<bool> {
        let mut all_synced = true;
        let mut i = 0;
        while i < batches.len() {
            let now = now_ms();
            let (roll, segment_bytes) = {
                let s = self.state.borrow();
                let size = s.active.size_bytes;
                let full =
                    size > 0 && size + batches[i].bytes.len() as u64 > s.config.segment_bytes;
                let old = size > 0 && now - s.active.created_ms >= s.config.segment_ms as i64;
                (full || old, s.config.segment_bytes)
            };
            if roll {
                self.roll(now).await?;
            }
            let (mut size, interval) = {
                let s = self.state.borrow();
                (s.active.size_bytes, s.config.index_interval_bytes)
            };
            let mut j = i;
            let mut total = 0usize;
            while j < batches.len()
                && (j == i || size + batches[j].bytes.len() as u64 <= segment_bytes)
            {
                size += batches[j].bytes.len() as u64;
                total += batches[j].bytes.len();
                j += 1;
            }
            let mut writer = self
                .state
                .borrow_mut()
                .writer
                .take()
                .expect("writer present while driving");
            let mut buf = writer.buffer(total);
            for b in &batches[i..j] {
                buf.extend(&b.bytes);
            }
            let r = writer.write(buf, dsync).await;
            let mut s = self.state.borrow_mut();
            s.writer = Some(writer);
            all_synced &= r?;
            s.stats.writes += 1;
            s.stats.bytes_written += total as u64;
            s.stats.appends += (j - i) as u64;
            for b in &batches[i..j] {
                let pos = s.active.size_bytes;
                let base = s.active.base_offset;
                s.active.builder.on_batch(base, pos, &b.info, interval);
                s.active.size_bytes += b.bytes.len() as u64;
                s.written_offset = b.info.next_offset();
                s.unsynced_bytes += b.bytes.len() as u64;
                s.tail
                    .push(b.info.base_offset, b.info.next_offset(), b.bytes.clone());
            }
            i = j;
        }
        Ok(all_synced)
    }

    /// Closes the active segment (cut to size, synced, indexes written) and starts a
    /// new one at the next offset. Called only by the flush driver.
    async fn roll(&self, now: i64) -> Result<()> {
        let (
            writer,
            base,
            mut builder_index,
            mut builder_time,
            max_ts,
            offset_of_max,
            next,
            mode,
            step,
        ) = {
            let mut s = self.state.borrow_mut();
            let writer = s.writer.take().expect("writer present while driving");
            let b = &s.active.builder;
            (
                writer,
                s.active.base_offset,
                b.index.clone(),
                b.time_index.clone(),
                b.max_timestamp_ms,
                b.offset_of_max_timestamp,
                s.written_offset,
                s.config.io_mode,
                s.config.preallocate_step_bytes.min(s.config.segment_bytes),
            )
        };
        let size = writer.write_pos();
        if let Err(e) = writer.finish().await {
            // The old writer is gone; reopen so the log stays usable.
            let path = self.dir.join(segment_name(base, "log"));
            let w = SegmentWriter::open(&path, mode, size, step).await?;
            self.state.borrow_mut().writer = Some(w);
            return Err(e);
        }
        {
            let mut s = self.state.borrow_mut();
            s.stats.syncs += 1;
            s.durable_offset = s.durable_offset.max(next);
            s.unsynced_bytes = 0;
            s.last_sync_ms = now;
        }
        let mut sealed = SegmentIndexBuilder {
            index: std::mem::take(&mut builder_index),
            time_index: std::mem::take(&mut builder_time),
            bytes_since_entry: 0,
            max_timestamp_ms: max_ts,
            offset_of_max_timestamp: offset_of_max,
        };
        sealed.seal(base);
        write_indexes(&self.dir, base, &sealed).await?;
        let path = self.dir.join(segment_name(next, "log"));
        let writer = SegmentWriter::open(&path, mode, 0, step).await?;
        let reader = Rc::new(SegmentFile::open(&path).await?);
        io::sync_dir(&self.dir).await?;
        {
            let mut s = self.state.borrow_mut();
            s.closed.insert(
                base,
                ClosedSegment {
                    base_offset: base,
                    next_offset: next,
                    size_bytes: size,
                    max_timestamp_ms: max_ts,
                },
            );
            s.active = ActiveSegment {
                base_offset: next,
                size_bytes: 0,
                created_ms: now,
                builder: SegmentIndexBuilder::new(next),
                reader,
            };
            s.writer = Some(writer);
        }
        write_recovery_point(&self.dir, next).await?;
        tracing::debug!(dir = %self.dir.display(), segment = next, "rolled segment");
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to about
    /// `max_bytes` (the first batch is returned whole even if larger), from one segment,
    /// never at or past `upper` (the caller's bound: the high watermark for a
    /// consumer, the log end for a follower; capped at the log end). Recent batches
    /// come from memory, older ones as file ranges.
    pub async fn read(&self, offset: i64, max_bytes: usize, upper: i64) -> Result<ReadResult> {
        self.ensure_active_index().await?;
        let (view, upper) = {
            let s = self.state.borrow();
            let upper = upper.min(s.written_offset);
            if offset < s.start_offset || offset > s.written_offset {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    start: s.start_offset,
                    end: s.written_offset,
                });
            }
            if offset >= upper {
                return Ok(ReadResult {
                    chunks: Vec::new(),
                    next_offset: offset,
                });
            }
            if let Some((chunks, next_offset)) = s.tail.read(offset, max_bytes, upper) {
                return Ok(ReadResult {
                    chunks,
                    next_offset,
                });
            }
            if offset >= s.active.base_offset {
                let a = &s.active;
                let rel = (offset - a.base_offset) as u32;
                let start_hint = a.builder.index.scan_position(rel);
                let limit = (start_hint + max_bytes as u64).min(u32::MAX as u64) as u32;
                let upper_rel = (upper - 1 - a.base_offset).max(0) as u32;
                let end_hint = end_hint(&a.builder.index, limit, upper_rel);
                (
                    Some(SegmentView {
                        file: a.reader.clone(),
                        size_bytes: a.size_bytes,
                        start_hint,
                        end_hint,
                        stable_end: match s.config.io_mode {
                            IoMode::Direct => a.size_bytes - a.size_bytes % REWRITE_WINDOW,
                            IoMode::Buffered => u64::MAX,
                        },
                    }),
                    upper,
                )
            } else {
                (None, upper)
            }
        };
        let view = match view {
            Some(v) => v,
            None => self.closed_view(offset, max_bytes, upper).await?,
        };
        read_from_segment(view, offset, max_bytes, upper).await
    }

    async fn closed_view(&self, offset: i64, max_bytes: usize, upper: i64) -> Result<SegmentView> {
        let seg = {
            let s = self.state.borrow();
            *s.closed
                .range(..=offset)
                .next_back()
                .map(|(_, c)| c)
                .ok_or(Error::OffsetOutOfRange {
                    offset,
                    start: s.start_offset,
                    end: s.written_offset,
                })?
        };
        let open = self.open_closed(&seg).await?;
        let rel = (offset - seg.base_offset) as u32;
        let start_hint = open.index.scan_position(rel);
        let limit = (start_hint + max_bytes as u64).min(u32::MAX as u64) as u32;
        let upper_rel = (upper.min(seg.next_offset) - 1 - seg.base_offset).max(0) as u32;
        Ok(SegmentView {
            file: open.file.clone(),
            size_bytes: seg.size_bytes,
            start_hint,
            end_hint: end_hint(&open.index, limit, upper_rel),
            stable_end: u64::MAX,
        })
    }

    /// A closed segment's handle and indexes, through the shard's cache; damaged or
    /// missing index files are rebuilt from the log.
    async fn open_closed(&self, seg: &ClosedSegment) -> Result<Rc<OpenSegment>> {
        let path = self.dir.join(segment_name(seg.base_offset, "log"));
        if let Some(open) = self.cache.lookup(&path) {
            return Ok(open);
        }
        let file = Rc::new(SegmentFile::open(&path).await?);
        let (index, time_index) = match load_indexes(&self.dir, seg.base_offset, seg.size_bytes)
            .await?
        {
            Some(ix) => ix,
            None => {
                tracing::warn!(dir = %self.dir.display(), segment = seg.base_offset, "index missing or damaged; rebuilding from the log");
                let (interval, epochs) = {
                    let s = self.state.borrow();
                    (s.config.index_interval_bytes, s.leader_epochs.clone())
                };
                let mut b = SegmentIndexBuilder::new(seg.base_offset);
                let scan = scan_segment(
                    &file,
                    seg.base_offset,
                    0,
                    seg.base_offset,
                    &mut b,
                    interval,
                    &epochs,
                )
                .await?;
                if scan.damage.is_some() || scan.valid_end != seg.size_bytes {
                    return Err(Error::Corrupt {
                        what: "closed segment (batches fail validation)",
                        path,
                    });
                }
                b.seal(seg.base_offset);
                write_indexes(&self.dir, seg.base_offset, &b).await?;
                (b.index, b.time_index)
            }
        };
        let open = Rc::new(OpenSegment {
            file,
            index,
            time_index,
        });
        self.cache.insert(&path, open.clone());
        Ok(open)
    }

    /// The first offset whose record timestamp is ≥ `timestamp_ms` (Kafka's
    /// ListOffsets by timestamp) up to the log end, or `None` when every record is older. For compressed
    /// batches the answer is the batch's base offset.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        Ok(self
            .record_for_timestamp(timestamp_ms, i64::MAX)
            .await?
            .map(|(offset, _)| offset))
    }

    /// The largest record timestamp in the log, or -1 for an empty log (Kafka's
    /// `MAX_TIMESTAMP` query, KIP-734, looks up the record with it).
    pub fn max_timestamp(&self) -> i64 {
        let s = self.state.borrow();
        s.closed
            .values()
            .map(|c| c.max_timestamp_ms)
            .chain(std::iter::once(s.active.builder.max_timestamp_ms))
            .max()
            .unwrap_or(-1)
    }

    /// [`PartitionLog::offset_for_timestamp`] with the found record's timestamp:
    /// `(offset, timestamp)`. In a compressed batch, or under `LogAppendTime`, records
    /// are not looked into: the batch's base offset and its largest timestamp.
    /// Records at or past `upper` (the caller's high watermark) are not looked at.
    pub async fn record_for_timestamp(
        &self,
        timestamp_ms: i64,
        upper: i64,
    ) -> Result<Option<(i64, i64)>> {
        self.ensure_active_index().await?;
        enum Target {
            Active(Rc<SegmentFile>, u64, u64),
            Closed(ClosedSegment),
        }
        let (target, upper) = {
            let s = self.state.borrow();
            let upper = upper.min(s.written_offset);
            let closed = s
                .closed
                .values()
                .find(|c| c.max_timestamp_ms >= timestamp_ms)
                .copied();
            match closed {
                Some(c) => (Target::Closed(c), upper),
                None => {
                    let a = &s.active;
                    if a.builder.max_timestamp_ms < timestamp_ms {
                        return Ok(None);
                    }
                    let rel = a.builder.time_index.scan_start(timestamp_ms);
                    let pos = a.builder.index.scan_position(rel);
                    (Target::Active(a.reader.clone(), pos, a.size_bytes), upper)
                }
            }
        };
        let (file, end, pos) = match target {
            Target::Active(file, pos, size) => (file, size, pos),
            Target::Closed(c) => {
                let open = self.open_closed(&c).await?;
                let rel = open.time_index.scan_start(timestamp_ms);
                let pos = open.index.scan_position(rel);
                (open.file.clone(), c.size_bytes, pos)
            }
        };
        let mut scan = HeaderScan::new(&file, pos, end);
        while let Some(h) = scan.next().await? {
            if h.info.base_offset >= upper {
                return Ok(None);
            }
            if h.info.max_timestamp < timestamp_ms {
                continue;
            }
            if h.info.compression != batch::Compression::None
                || self.state.borrow().config.timestamp_type == TimestampType::LogAppendTime
            {
                return Ok(Some((h.info.base_offset, h.info.max_timestamp)));
            }
            let body = file.read_exact(h.position, h.info.size_bytes).await?;
            let records = batch::records(&body).map_err(|_| Error::Corrupt {
                what: "records of a stored batch",
                path: file.path().to_owned(),
            })?;
            for r in records {
                let ts = h.info.base_timestamp + r.timestamp_delta;
                if ts >= timestamp_ms {
                    return Ok(Some((h.info.base_offset + i64::from(r.offset_delta), ts)));
                }
            }
            return Ok(Some((h.info.base_offset, h.info.max_timestamp)));
        }
        Ok(None)
    }

    /// Deletes whole closed segments beyond `retention_bytes` or older than
    /// `retention_ms`, oldest first, and advances the log start offset. Reads using a
    /// deleted segment finish normally: their handle keeps the file alive.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome> {
        let doomed: Vec<ClosedSegment> = {
            let mut s = self.state.borrow_mut();
            let mut total: u64 =
                s.closed.values().map(|c| c.size_bytes).sum::<u64>() + s.active.size_bytes;
            let mut doomed = Vec::new();
            for c in s.closed.values() {
                let by_size = s
                    .config
                    .retention_bytes
                    .is_some_and(|max| total - c.size_bytes >= max);
                let by_time = s.config.retention_ms.is_some_and(|ms| {
                    c.max_timestamp_ms >= 0 && now_ms - c.max_timestamp_ms > ms as i64
                });
                let below_start = c.next_offset <= s.start_offset;
                if !(by_size || by_time || below_start) {
                    break;
                }
                total -= c.size_bytes;
                doomed.push(*c);
            }
            for c in &doomed {
                s.closed.remove(&c.base_offset);
            }
            if let Some(last) = doomed.last() {
                s.start_offset = s.start_offset.max(last.next_offset);
                s.tail.batches.retain(|b| b.0 >= last.next_offset);
                s.tail.bytes = s.tail.batches.iter().map(|b| b.2.len()).sum();
            }
            doomed
        };
        let mut outcome = RetentionOutcome {
            start_offset: self.start_offset(),
            ..RetentionOutcome::default()
        };
        if doomed.is_empty() {
            return Ok(outcome);
        }
        let mut paths = Vec::new();
        for c in &doomed {
            let log = self.dir.join(segment_name(c.base_offset, "log"));
            self.cache.evict(&log);
            paths.push(log);
            paths.push(self.dir.join(segment_name(c.base_offset, "index")));
            paths.push(self.dir.join(segment_name(c.base_offset, "timeindex")));
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += c.size_bytes;
        }
        io::remove_files(paths).await?;
        io::sync_dir(&self.dir).await?;
        tracing::info!(
            dir = %self.dir.display(),
            segments = outcome.segments_deleted,
            bytes = outcome.bytes_deleted,
            start_offset = outcome.start_offset,
            "retention deleted segments"
        );
        Ok(outcome)
    }

    /// Kafka's DeleteRecords: moves the log start offset up to `offset` (-1: the
    /// caller's `high_watermark`), so records below it are no longer read, and
    /// deletes the segments wholly below it. The new start is recorded durably before
    /// it takes effect. An offset below the start changes nothing; one above the high
    /// watermark (capped at the log end) is refused. Returns the log start offset.
    pub async fn delete_records_before(&self, offset: i64, high_watermark: i64) -> Result<i64> {
        // Serialised, so the checkpoint file only ever moves up and is never written by
        // two at once.
        let _one = self
            .start_moves
            .acquire_permit(1)
            .await
            .map_err(|_| Error::Closed)?;
        let (start, committed) = {
            let s = self.state.borrow();
            self.check_writable(&s)?;
            (s.start_offset, high_watermark.min(s.written_offset))
        };
        let offset = if offset == -1 { committed } else { offset };
        if offset < 0 || offset > committed {
            return Err(Error::OffsetOutOfRange {
                offset,
                start,
                end: committed,
            });
        }
        if offset <= start {
            return Ok(start);
        }
        write_log_start(&self.dir, offset).await?;
        {
            let mut s = self.state.borrow_mut();
            s.start_offset = s.start_offset.max(offset);
        }
        self.apply_retention(now_ms()).await?;
        Ok(self.start_offset())
    }

    /// Cuts the log back so that `offset` is its end (a follower that diverged from
    /// a new leader). `offset` must be a batch boundary within the log, and no append
    /// may be in flight.
    pub async fn truncate_to(&self, offset: i64) -> Result<()> {
        self.ensure_active_index().await?;
        let (start, end, busy) = {
            let s = self.state.borrow();
            self.check_writable(&s)?;
            (
                s.start_offset,
                s.written_offset,
                s.flushing || !s.pending.is_empty(),
            )
        };
        if busy {
            return Err(Error::InvalidConfig(
                "truncate_to while appends are in flight".into(),
            ));
        }
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        if offset == end {
            return Ok(());
        }
        // Hold off appends while we work: mark as flushing.
        self.state.borrow_mut().flushing = true;
        let r = self.truncate_inner(offset).await;
        self.state.borrow_mut().flushing = false;
        self.changed.notify_all();
        r
    }

    async fn truncate_inner(&self, offset: i64) -> Result<()> {
        let (seg_base, seg_size, is_active, mode, step, interval) = {
            let s = self.state.borrow();
            let step = s.config.preallocate_step_bytes.min(s.config.segment_bytes);
            if offset >= s.active.base_offset {
                (
                    s.active.base_offset,
                    s.active.size_bytes,
                    true,
                    s.config.io_mode,
                    step,
                    s.config.index_interval_bytes,
                )
            } else {
                let c = s
                    .closed
                    .range(..=offset)
                    .next_back()
                    .map(|(_, c)| *c)
                    .expect("offset within log");
                (
                    c.base_offset,
                    c.size_bytes,
                    false,
                    s.config.io_mode,
                    step,
                    s.config.index_interval_bytes,
                )
            }
        };
        // Find the byte position of `offset` by rescanning the segment: this is rare
        // and also rebuilds its index up to the cut.
        let path = self.dir.join(segment_name(seg_base, "log"));
        let file = SegmentFile::open(&path).await?;
        let mut builder = SegmentIndexBuilder::new(seg_base);
        let mut cut = None;
        {
            let mut scan = HeaderScan::new(&file, 0, seg_size);
            while let Some(h) = scan.next().await? {
                if h.info.base_offset == offset {
                    cut = Some(h.position);
                    break;
                }
                if h.info.base_offset > offset {
                    break;
                }
                builder.on_batch(seg_base, h.position, &h.info, interval);
            }
        }
        let cut = if offset == seg_base { Some(0) } else { cut };
        let Some(cut) = cut else {
            return Err(Error::InvalidConfig(format!(
                "offset {offset} is not a batch boundary"
            )));
        };
        // Drop the writer of the current active segment and every later segment.
        let old_writer = self.state.borrow_mut().writer.take();
        drop(old_writer);
        let mut doomed = Vec::new();
        {
            let s = self.state.borrow();
            for c in s.closed.range(seg_base + 1..) {
                doomed.push(*c.0);
            }
            if !is_active {
                doomed.push(s.active.base_offset);
            }
        }
        let mut paths = Vec::new();
        for b in &doomed {
            let log = self.dir.join(segment_name(*b, "log"));
            self.cache.evict(&log);
            paths.push(log);
            paths.push(self.dir.join(segment_name(*b, "index")));
            paths.push(self.dir.join(segment_name(*b, "timeindex")));
        }
        self.cache.evict(&path);
        if !is_active {
            paths.push(self.dir.join(segment_name(seg_base, "index")));
            paths.push(self.dir.join(segment_name(seg_base, "timeindex")));
        }
        io::remove_files(paths).await?;
        let writer = SegmentWriter::open(&path, mode, cut, step).await?;
        writer.sync().await?;
        let reader = Rc::new(SegmentFile::open(&path).await?);
        io::sync_dir(&self.dir).await?;
        write_recovery_point(&self.dir, seg_base).await?;
        let epochs = {
            let mut s = self.state.borrow_mut();
            s.closed.retain(|&b, _| b < seg_base);
            s.active = ActiveSegment {
                base_offset: seg_base,
                size_bytes: cut,
                created_ms: now_ms(),
                builder,
                reader,
            };
            s.writer = Some(writer);
            s.next_offset = offset;
            s.written_offset = offset;
            s.durable_offset = offset;
            s.tail.clear();
            s.leader_epochs.retain(|&(_, start)| start < offset);
            s.leader_epochs.clone()
        };
        write_leader_epochs(&self.dir, &epochs).await?;
        tracing::warn!(dir = %self.dir.display(), offset, "log truncated");
        Ok(())
    }

    /// Records that `epoch` starts at the current end of the log; later batches carry
    /// it in their partition-leader-epoch field. Persisted (write-new, sync, rename).
    pub async fn set_leader_epoch(&self, epoch: i32) -> Result<()> {
        let epochs = {
            let mut s = self.state.borrow_mut();
            if let Some(&(last, _)) = s.leader_epochs.last()
                && epoch <= last
            {
                if epoch == last {
                    return Ok(());
                }
                return Err(Error::InvalidConfig(format!(
                    "leader epoch {epoch} is older than {last}"
                )));
            }
            let start = s.next_offset;
            s.leader_epochs.push((epoch, start));
            s.leader_epochs.clone()
        };
        write_leader_epochs(&self.dir, &epochs).await
    }

    /// (epoch, start offset) pairs, oldest first.
    pub fn leader_epochs(&self) -> Vec<(i32, i64)> {
        self.state.borrow().leader_epochs.clone()
    }

    /// Flushes everything, writes the active segment's indexes, cuts its file to
    /// size and marks the shutdown clean. The log refuses appends afterwards.
    pub async fn close(&self) -> Result<()> {
        self.ensure_active_index().await?;
        self.sync().await?;
        loop {
            let c = {
                let mut s = self.state.borrow_mut();
                if !s.flushing {
                    s.closed_for_writes = true;
                    s.flushing = true;
                    break;
                }
                self.changed.changed()
            };
            c.await;
        }
        let (writer, base, mut builder_index, builder_time) = {
            let mut s = self.state.borrow_mut();
            (
                s.writer.take(),
                s.active.base_offset,
                std::mem::take(&mut s.active.builder.index),
                std::mem::take(&mut s.active.builder.time_index),
            )
        };
        builder_index.shrink();
        let b = SegmentIndexBuilder {
            index: builder_index,
            time_index: builder_time,
            ..SegmentIndexBuilder::default()
        };
        if let Some(w) = writer {
            w.finish().await?;
        }
        write_indexes(&self.dir, base, &b).await?;
        io::write_file_atomic(&self.dir.join(CLEAN_SHUTDOWN_FILE), b"").await?;
        Ok(())
    }
}

/// A batch start within both the byte limit and the offset bound, from the index.
fn end_hint(index: &OffsetIndex, limit_pos: u32, upper_rel: u32) -> u64 {
    let by_pos = index
        .floor_position(limit_pos)
        .map(|e| e.position)
        .unwrap_or(0);
    let by_off = index
        .floor_offset(upper_rel)
        .map(|e| e.position)
        .unwrap_or(0);
    u64::from(by_pos.min(by_off))
}

async fn read_from_segment(
    view: SegmentView,
    offset: i64,
    max_bytes: usize,
    upper: i64,
) -> Result<ReadResult> {
    // Find the batch holding `offset`.
    let mut scan = HeaderScan::new(&view.file, view.start_hint, view.size_bytes);
    let mut first = None;
    while let Some(h) = scan.next().await? {
        if h.info.next_offset() > offset {
            first = Some(h);
            break;
        }
    }
    let Some(first) = first else {
        return Ok(ReadResult {
            chunks: Vec::new(),
            next_offset: offset,
        });
    };
    if first.info.base_offset >= upper {
        return Ok(ReadResult {
            chunks: Vec::new(),
            next_offset: offset,
        });
    }
    let start = first.position;
    let limit = start + (max_bytes as u64).max(first.info.size_bytes as u64);
    let mut end = start + first.info.size_bytes as u64;
    let mut next_offset = first.info.next_offset();
    // Skip ahead with the index: every batch before the hint fits both bounds (see
    // `end_hint`). Then walk headers to the last batch that fits.
    let mut walk = HeaderScan::new(&view.file, end, view.size_bytes);
    if view.end_hint > end {
        walk = HeaderScan::new(&view.file, view.end_hint, view.size_bytes);
        match walk.next().await? {
            Some(h)
                if h.position + h.info.size_bytes as u64 <= limit && h.info.base_offset < upper =>
            {
                end = h.position + h.info.size_bytes as u64;
                next_offset = h.info.next_offset();
            }
            Some(h) => {
                end = h.position;
                next_offset = h.info.base_offset;
                walk = HeaderScan::new(&view.file, view.size_bytes, view.size_bytes);
            }
            None => {}
        }
    }
    while let Some(h) = walk.next().await? {
        if h.position + h.info.size_bytes as u64 > limit || h.info.base_offset >= upper {
            break;
        }
        end = h.position + h.info.size_bytes as u64;
        next_offset = h.info.next_offset();
    }
    let split = end.min(view.stable_end.max(start));
    let mut chunks = Vec::with_capacity(2);
    if split > start {
        chunks.push(ReadChunk::File {
            file: view.file.clone(),
            position: start,
            len: split - start,
        });
    }
    if end > split {
        chunks.push(ReadChunk::Memory(
            view.file.read_exact(split, (end - split) as usize).await?,
        ));
    }
    Ok(ReadResult {
        chunks,
        next_offset,
    })
}

async fn load_indexes(
    dir: &Path,
    base: i64,
    segment_bytes: u64,
) -> Result<Option<(OffsetIndex, TimeIndex)>> {
    let ix = io::read_file(&dir.join(segment_name(base, "index"))).await?;
    let tx = io::read_file(&dir.join(segment_name(base, "timeindex"))).await?;
    let (Some(ix), Some(tx)) = (ix, tx) else {
        return Ok(None);
    };
    match (
        OffsetIndex::decode(&ix, segment_bytes.max(1)),
        TimeIndex::decode(&tx),
    ) {
        (Some(i), Some(t)) => Ok(Some((i, t))),
        _ => Ok(None),
    }
}

async fn write_indexes(dir: &Path, base: i64, b: &SegmentIndexBuilder) -> Result<()> {
    io::write_file(&dir.join(segment_name(base, "index")), &b.index.encode()).await?;
    io::write_file(
        &dir.join(segment_name(base, "timeindex")),
        &b.time_index.encode(),
    )
    .await
}

async fn read_recovery_point(dir: &Path) -> Result<i64> {
    let Some(bytes) = io::read_file(&dir.join(RECOVERY_POINT_FILE)).await? else {
        return Ok(0);
    };
    let parsed = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    Ok(parsed.unwrap_or_else(|| {
        tracing::warn!(dir = %dir.display(), "unreadable recovery point; validating every segment");
        0
    }))
}

async fn read_log_start(dir: &Path) -> Result<i64> {
    let Some(bytes) = io::read_file(&dir.join(LOG_START_FILE)).await? else {
        return Ok(0);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .ok_or_else(|| Error::Corrupt {
            what: "log start offset checkpoint",
            path: dir.join(LOG_START_FILE),
        })
}

async fn write_log_start(dir: &Path, offset: i64) -> Result<()> {
    io::write_file_atomic(&dir.join(LOG_START_FILE), format!("{offset}\n").as_bytes()).await
}

async fn write_recovery_point(dir: &Path, offset: i64) -> Result<()> {
    io::write_file_atomic(
        &dir.join(RECOVERY_POINT_FILE),
        format!("{offset}\n").as_bytes(),
    )
    .await
}

/// Kafka's answer to OffsetsForLeaderEpoch over a history of (epoch, start offset),
/// oldest first, and the log end: for the latest epoch, `(epoch, log end)`; for an
/// older one, the start of the first later epoch, with the largest epoch at most the
/// one asked (the asked one itself when it is older than the whole history); `(-1, -1)`
/// for an epoch newer than the latest or a negative one. A follower truncates to
/// `min(end offset, its own log end)` of the answer for its latest epoch (KIP-101).
pub fn end_offset_for_epoch(history: &[(i32, i64)], epoch: i32, log_end: i64) -> (i32, i64) {
    if epoch < 0 {
        return (-1, -1);
    }
    if history.last().map(|&(e, _)| e) == Some(epoch) {
        return (epoch, log_end);
    }
    let Some(&(_, next_start)) = history.iter().find(|&&(e, _)| e > epoch) else {
        return (-1, -1);
    };
    let floor = history
        .iter()
        .rev()
        .find(|&&(e, _)| e <= epoch)
        .map_or(epoch, |&(e, _)| e);
    (floor, next_start)
}

/// Kafka's leader-epoch-checkpoint format: version, count, then `epoch start` lines.
async fn read_leader_epochs(dir: &Path) -> Result<Vec<(i32, i64)>> {
    let path = dir.join(LEADER_EPOCH_FILE);
    let Some(bytes) = io::read_file(&path).await? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let bad = || Error::Corrupt {
        what: "leader epoch checkpoint",
        path: path.clone(),
    };
    if lines.next() != Some("0") {
        return Err(bad());
    }
    let count: usize = lines.next().and_then(|l| l.parse().ok()).ok_or_else(bad)?;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let line = lines.next().ok_or_else(bad)?;
        let (e, o) = line.split_once(' ').ok_or_else(bad)?;
        out.push((e.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?));
    }
    Ok(out)
}

async fn write_leader_epochs(dir: &Path, epochs: &[(i32, i64)]) -> Result<()> {
    let mut text = format!("0\n{}\n", epochs.len());
    for (e, o) in epochs {
        text.push_str(&format!("{e} {o}\n"));
    }
    io::write_file_atomic(&dir.join(LEADER_EPOCH_FILE), text.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(42, "log"), "00000000000000000042.log");
        assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.index"), None);
    }

    #[test]
    fn tail_cache_is_bounded_and_contiguous() {
        let mut t = TailCache {
            bytes_max: 100,
            ..TailCache::default()
        };
        for i in 0..10i64 {
            t.push(i * 2, i * 2 + 2, Bytes::from(vec![i as u8; 30]));
        }
        assert!(t.bytes <= 100);
        assert_eq!(t.batches.front().unwrap().0, 14);
        assert!(t.read(13, 1000, 100).is_none());
        let (chunks, next) = t.read(15, 1000, 100).unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(next, 20);
        let (chunks, next) = t.read(15, 10, 100).unwrap();
        assert_eq!(chunks.len(), 1, "first batch is whole even past max_bytes");
        assert_eq!(next, 16);
        let (chunks, _) = t.read(15, 1000, 18).unwrap();
        assert_eq!(chunks.len(), 2, "never past the upper bound");
    }
}
