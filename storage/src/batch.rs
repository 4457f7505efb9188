//! Kafka RecordBatch v2 (magic 2): the one format ringmq stores and serves.
//!
//! A batch is stored verbatim. The broker rewrites only the base offset (which is
//! outside the CRC's range), the partition leader epoch (also outside it) and, for
//! partitions configured with `LogAppendTime`, the timestamp type and max timestamp
//! (inside it: the CRC is then recomputed). It never decompresses a batch.
//!
//! Layout (big-endian), after Kafka's `DefaultRecordBatch`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8 | base offset |
//! | 8  | 4 | batch length (bytes after this field) |
//! | 12 | 4 | partition leader epoch |
//! | 16 | 1 | magic (2) |
//! | 17 | 4 | CRC32C of bytes 21.. |
//! | 21 | 2 | attributes (bits 0-2 compression, bit 3 timestamp type, bit 4 transactional, bit 5 control) |
//! | 23 | 4 | last offset delta |
//! | 27 | 8 | base timestamp |
//! | 35 | 8 | max timestamp |
//! | 43 | 8 | producer id |
//! | 51 | 2 | producer epoch |
//! | 53 | 4 | base sequence |
//! | 57 | 4 | record count |
//! | 61 | … | records |

use crate::error::BatchError;

/// Size of the fixed batch header, before the records.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the batch length field is complete: base offset + length.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only magic value ringmq accepts.
pub const MAGIC_V2: u8 = 2;

const BASE_OFFSET_POS: usize = 0;
const LENGTH_POS: usize = 8;
const LEADER_EPOCH_POS: usize = 12;
const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
const ATTRIBUTES_POS: usize = 21;
const LAST_OFFSET_DELTA_POS: usize = 23;
const BASE_TIMESTAMP_POS: usize = 27;
const MAX_TIMESTAMP_POS: usize = 35;
const PRODUCER_ID_POS: usize = 43;
const PRODUCER_EPOCH_POS: usize = 51;
const BASE_SEQUENCE_POS: usize = 53;
const RECORD_COUNT_POS: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const CONTROL_BIT: i16 = 0x20;

const _: () = assert!(RECORD_COUNT_POS + 4 == HEADER_BYTES);
const _: () = assert!(CRC_POS + 4 == ATTRIBUTES_POS);

/// Compression codec named by a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Records stored as they are.
    None,
    /// gzip.
    Gzip,
    /// snappy (Kafka's xerial framing).
    Snappy,
    /// lz4 frame.
    Lz4,
    /// zstd.
    Zstd,
}

/// Which clock a batch's timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's clock (Kafka's default).
    #[default]
    CreateTime,
    /// The broker's clock at append.
    LogAppendTime,
}

/// What validation learned about a batch: enough to append and index it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Base offset as found in the batch (a producer's is usually 0).
    pub base_offset: i64,
    /// Total size in bytes, header included.
    pub size_bytes: usize,
    /// `last_offset_delta`: the batch covers `base_offset..=base_offset + last_offset_delta`.
    pub last_offset_delta: i32,
    /// Number of records.
    pub record_count: i32,
    /// Largest record timestamp (or the append time for `LogAppendTime`).
    pub max_timestamp: i64,
    /// First record's timestamp.
    pub base_timestamp: i64,
    /// Compression codec.
    pub compression: Compression,
    /// Partition leader epoch stamped in the batch.
    pub leader_epoch: i32,
    /// Producer id (-1 when the producer is not idempotent).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record (-1 when not idempotent).
    pub base_sequence: i32,
    /// A control batch (transaction markers).
    pub is_control: bool,
}

impl BatchInfo {
    /// Offset of the last record of the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// First offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
}

fn be_i16(b: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes([b[pos], b[pos + 1]])
}
fn be_i32(b: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]])
}
fn be_u32(b: &[u8], pos: usize) -> u32 {
    be_i32(b, pos) as u32
}
fn be_i64(b: &[u8], pos: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    i64::from_be_bytes(a)
}

/// Reads the base offset and total size of the batch starting at `buf[0]`, looking
/// only at the first [`LOG_OVERHEAD_BYTES`]. Returns `None` when `buf` is too short or
/// the declared length cannot be a batch (used by recovery to find the log's end).
pub fn peek_frame(buf: &[u8]) -> Option<(i64, usize)> {
    if buf.len() < LOG_OVERHEAD_BYTES {
        return None;
    }
    let length = be_i32(buf, LENGTH_POS);
    if length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
        return None;
    }
    Some((
        be_i64(buf, BASE_OFFSET_POS),
        LOG_OVERHEAD_BYTES + length as usize,
    ))
}

/// Reads the header fields of a batch without checking its CRC or records.
/// `buf` must hold at least [`HEADER_BYTES`].
pub fn parse_header(buf: &[u8]) -> Result<BatchInfo, BatchError> {
    if buf.len() < HEADER_BYTES {
        return Err(BatchError::TooShort {
            size_bytes: buf.len(),
        });
    }
    let length = be_i32(buf, LENGTH_POS);
    if length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
        return Err(BatchError::BadLength {
            declared: i64::from(length) + LOG_OVERHEAD_BYTES as i64,
            actual: buf.len(),
        });
    }
    let magic = buf[MAGIC_POS];
    if magic != MAGIC_V2 {
        return Err(BatchError::BadMagic { magic });
    }
    let attributes = be_i16(buf, ATTRIBUTES_POS);
    let compression = match attributes & COMPRESSION_MASK {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => return Err(BatchError::UnknownCompression { codec: other as u8 }),
    };
    Ok(BatchInfo {
        base_offset: be_i64(buf, BASE_OFFSET_POS),
        size_bytes: LOG_OVERHEAD_BYTES + length as usize,
        last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_POS),
        record_count: be_i32(buf, RECORD_COUNT_POS),
        max_timestamp: be_i64(buf, MAX_TIMESTAMP_POS),
        base_timestamp: be_i64(buf, BASE_TIMESTAMP_POS),
        compression,
        leader_epoch: be_i32(buf, LEADER_EPOCH_POS),
        producer_id: be_i64(buf, PRODUCER_ID_POS),
        producer_epoch: be_i16(buf, PRODUCER_EPOCH_POS),
        base_sequence: be_i32(buf, BASE_SEQUENCE_POS),
        is_control: attributes & CONTROL_BIT != 0,
    })
}

/// CRC32C over Kafka's CRC range (attributes to the end of the batch).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_POS..])
}

/// Checks only the CRC of a batch whose frame is complete (`buf.len()` equals its
/// declared size). Recovery uses this on every batch past the recovery point.
pub fn crc_matches(batch: &[u8]) -> bool {
    batch.len() >= HEADER_BYTES && be_u32(batch, CRC_POS) == compute_crc(batch)
}

/// Validates one batch exactly as a producer sent it: its length, magic, CRC32C,
/// record count and offset deltas, and its size against `message_bytes_max`.
///
/// `buf` must be exactly one batch. For uncompressed batches the records are walked
/// too: each record's length must fit and its offset delta must equal its index.
pub fn validate(buf: &[u8], message_bytes_max: usize) -> Result<BatchInfo, BatchError> {
    if buf.len() > message_bytes_max {
        return Err(BatchError::TooLarge {
            size_bytes: buf.len(),
            max_bytes: message_bytes_max,
        });
    }
    let info = parse_header(buf)?;
    if info.size_bytes != buf.len() {
        return Err(BatchError::BadLength {
            declared: info.size_bytes as i64,
            actual: buf.len(),
        });
    }
    let stored = be_u32(buf, CRC_POS);
    let computed = compute_crc(buf);
    if stored != computed {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    if info.record_count <= 0 {
        return Err(BatchError::NoRecords {
            record_count: info.record_count,
        });
    }
    if info.last_offset_delta != info.record_count - 1 {
        return Err(BatchError::OffsetDeltaMismatch {
            last_offset_delta: info.last_offset_delta,
            record_count: info.record_count,
        });
    }
    if info.compression == Compression::None {
        walk_records(buf, info.record_count)?;
    }
    Ok(info)
}

/// One record's position and fields, from an uncompressed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Offset delta from the batch's base offset.
    pub offset_delta: i32,
    /// Timestamp delta from the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Value, if any.
    pub value: Option<&'a [u8]>,
    /// The raw encoded headers (count first).
    pub headers_raw: &'a [u8],
}

/// Decodes the records of an uncompressed batch.
pub fn records(batch: &[u8]) -> Result<Vec<RecordView<'_>>, BatchError> {
    let info = parse_header(batch)?;
    if info.compression != Compression::None {
        return Err(BatchError::Compressed);
    }
    walk_records(batch, info.record_count)
}

fn walk_records(buf: &[u8], record_count: i32) -> Result<Vec<RecordView<'_>>, BatchError> {
    let mut pos = HEADER_BYTES;
    // The count comes from the batch: reserve no more than its bytes can hold (a
    // record takes at least 7), so a forged count cannot ask for gigabytes.
    let fits = buf.len().saturating_sub(HEADER_BYTES) / 7;
    let mut out = Vec::with_capacity((record_count.max(0) as usize).min(fits));
    for index in 0..record_count {
        let bad = |what: &'static str| BatchError::BadRecord { index, what };
        let (len, n) = read_varint(&buf[pos..]).ok_or(bad("length"))?;
        pos += n;
        if len < 0 || pos + len as usize > buf.len() {
            return Err(bad("length exceeds batch"));
        }
        let end = pos + len as usize;
        let rec = &buf[pos..end];
        let mut p = 1usize; // attributes
        if rec.is_empty() {
            return Err(bad("empty record"));
        }
        let (ts_delta, n) = read_varlong(&rec[p..]).ok_or(bad("timestamp delta"))?;
        p += n;
        let (off_delta, n) = read_varint(&rec[p..]).ok_or(bad("offset delta"))?;
        p += n;
        if off_delta != index {
            return Err(BatchError::BadOffsetDelta {
                index,
                offset_delta: off_delta,
            });
        }
        let (key, n) = read_bytes_field(&rec[p..]).ok_or(bad("key"))?;
        p += n;
        let (value, n) = read_bytes_field(&rec[p..]).ok_or(bad("value"))?;
        p += n;
        let headers_raw = &rec[p..];
        out.push(RecordView {
            offset_delta: off_delta,
            timestamp_delta: ts_delta,
            key,
            value,
            headers_raw,
        });
        pos = end;
    }
    if pos != buf.len() {
        return Err(BatchError::TrailingBytes {
            bytes: buf.len() - pos,
        });
    }
    Ok(out)
}

fn read_bytes_field(b: &[u8]) -> Option<(Option<&[u8]>, usize)> {
    let (len, n) = read_varint(b)?;
    if len < 0 {
        return Some((None, n));
    }
    let end = n.checked_add(len as usize)?;
    if end > b.len() {
        return None;
    }
    Some((Some(&b[n..end]), end))
}

/// Reads a zig-zag varint (Kafka's `varint`). Returns the value and bytes used.
pub fn read_varint(b: &[u8]) -> Option<(i32, usize)> {
    let (v, n) = read_unsigned(b, 5)?;
    let v = v as u32;
    Some((((v >> 1) as i32) ^ -((v & 1) as i32), n))
}

/// Reads a zig-zag varlong (Kafka's `varlong`). Returns the value and bytes used.
pub fn read_varlong(b: &[u8]) -> Option<(i64, usize)> {
    let (v, n) = read_unsigned(b, 10)?;
    Some((((v >> 1) as i64) ^ -((v & 1) as i64), n))
}

fn read_unsigned(b: &[u8], max_len: usize) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, byte) in b.iter().take(max_len).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Appends a zig-zag varint.
pub fn write_varint(out: &mut Vec<u8>, v: i32) {
    write_unsigned(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Appends a zig-zag varlong.
pub fn write_varlong(out: &mut Vec<u8>, v: i64) {
    write_unsigned(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn write_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Sets the base offset (outside the CRC range).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets the partition leader epoch (outside the CRC range).
pub fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Sets the producer id, epoch and base sequence (inside the CRC range) and recomputes
/// the CRC: what a sequenced (idempotent) producer stamps on each batch it sends.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    batch[PRODUCER_ID_POS..PRODUCER_ID_POS + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_POS..PRODUCER_EPOCH_POS + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE_POS..BASE_SEQUENCE_POS + 4].copy_from_slice(&base_sequence.to_be_bytes());
    fix_crc(batch);
}

/// Marks the batch as `LogAppendTime` with `now_ms` as its max timestamp and
/// recomputes the CRC, as Kafka does.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attrs = be_i16(batch, ATTRIBUTES_POS) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One record to put in a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Key (`None` is a null key).
    pub key: Option<Vec<u8>>,
    /// Value (`None` is a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp in milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// Encodes uncompressed records as a RecordBatch v2 with base offset 0, as a producer
/// would send it. Used by the native client, the benchmarks and the tests.
pub fn encode_batch(records: &[Record]) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(
            r.key.as_deref(),
            r.value.as_deref(),
            &r.headers,
            r.timestamp_ms,
        );
    }
    b.finish()
}

/// Builds an uncompressed RecordBatch v2 record by record, writing each record straight
/// into the batch (no intermediate [`Record`]): what a producer's accumulator needs.
#[derive(Debug)]
pub struct BatchBuilder {
    out: Vec<u8>,
    scratch: Vec<u8>,
    count: i32,
    base_ts: i64,
    max_ts: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            out: vec![0u8; HEADER_BYTES],
            scratch: Vec::new(),
            count: 0,
            base_ts: 0,
            max_ts: 0,
        }
    }

    /// Records so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes so far, header included.
    pub fn size_bytes(&self) -> usize {
        self.out.len()
    }

    /// Appends a record.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp_ms: i64,
    ) {
        if self.count == 0 {
            self.base_ts = timestamp_ms;
            self.max_ts = timestamp_ms;
        }
        self.max_ts = self.max_ts.max(timestamp_ms);
        let rec = &mut self.scratch;
        rec.clear();
        rec.push(0); // attributes
        write_varlong(rec, timestamp_ms - self.base_ts);
        write_varint(rec, self.count);
        write_opt_bytes(rec, key);
        write_opt_bytes(rec, value);
        write_varint(rec, headers.len() as i32);
        for (k, v) in headers {
            write_opt_bytes(rec, Some(k.as_bytes()));
            write_opt_bytes(rec, Some(v));
        }
        write_varint(&mut self.out, rec.len() as i32);
        self.out.extend_from_slice(rec);
        self.count += 1;
    }

    /// The finished batch (base offset 0, no producer id), as [`encode_batch`] makes it.
    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.count > 0, "a batch holds at least one record");
        let out = &mut self.out;
        let length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[LENGTH_POS..LENGTH_POS + 4].copy_from_slice(&length.to_be_bytes());
        out[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[MAGIC_POS] = MAGIC_V2;
        out[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4]
            .copy_from_slice(&(self.count - 1).to_be_bytes());
        out[BASE_TIMESTAMP_POS..BASE_TIMESTAMP_POS + 8]
            .copy_from_slice(&self.base_ts.to_be_bytes());
        out[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&self.max_ts.to_be_bytes());
        out[PRODUCER_ID_POS..PRODUCER_ID_POS + 8].copy_from_slice(&(-1i64).to_be_bytes());
        out[PRODUCER_EPOCH_POS..PRODUCER_EPOCH_POS + 2].copy_from_slice(&(-1i16).to_be_bytes());
        out[BASE_SEQUENCE_POS..BASE_SEQUENCE_POS + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[RECORD_COUNT_POS..RECORD_COUNT_POS + 4].copy_from_slice(&self.count.to_be_bytes());
        fix_crc(out);
        self.out
    }
}

fn write_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => write_varint(out, -1),
        Some(b) => {
            write_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// A copy of `batch`'s header marked with `compression`, followed by `records` as its
/// records section, with length and CRC recomputed. Clients use it to build a compressed
/// batch from an uncompressed one (`records` compressed), or to read a compressed one
/// (`Compression::None` and the decompressed records, then [`records`]).
pub fn with_records_section(batch: &[u8], compression: Compression, records: &[u8]) -> Vec<u8> {
    assert!(batch.len() >= HEADER_BYTES, "a batch header");
    let mut out = Vec::with_capacity(HEADER_BYTES + records.len());
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    out.extend_from_slice(records);
    let length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
    out[LENGTH_POS..LENGTH_POS + 4].copy_from_slice(&length.to_be_bytes());
    let bits: i16 = match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    };
    let attrs = i16::from_be_bytes([out[ATTRIBUTES_POS], out[ATTRIBUTES_POS + 1]]);
    let attrs = (attrs & !COMPRESSION_MASK) | bits;
    out[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attrs.to_be_bytes());
    fix_crc(&mut out);
    out
}

/// Rewrites the CRC field after a test or tool changed bytes in the CRC range.
pub fn fix_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(v: &[u8], ts: i64) -> Record {
        Record {
            key: Some(b"k".to_vec()),
            value: Some(v.to_vec()),
            headers: vec![("h".into(), b"1".to_vec())],
            timestamp_ms: ts,
        }
    }

    #[test]
    fn encoded_batch_validates_and_decodes() {
        let b = encode_batch(&[rec(b"a", 10), rec(b"bb", 30), rec(b"c", 20)]);
        let info = validate(&b, 1 << 20).unwrap();
        assert_eq!(info.record_count, 3);
        assert_eq!(info.last_offset_delta, 2);
        assert_eq!(info.max_timestamp, 30);
        assert_eq!(info.base_timestamp, 10);
        let recs = records(&b).unwrap();
        assert_eq!(recs[1].value, Some(&b"bb"[..]));
        assert_eq!(recs[2].timestamp_delta, 10);
    }

    #[test]
    fn rejects_wrong_crc() {
        let mut b = encode_batch(&[rec(b"a", 1)]);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn rejects_wrong_length() {
        let mut b = encode_batch(&[rec(b"a", 1)]);
        b.push(0);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::BadLength { .. })
        ));
        let short = &b[..HEADER_BYTES - 1];
        assert!(matches!(
            validate(short, 1 << 20),
            Err(BatchError::TooShort { .. })
        ));
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut b = encode_batch(&[rec(b"a", 1)]);
        b[MAGIC_POS] = 1;
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::BadMagic { magic: 1 })
        ));
    }

    #[test]
    fn rejects_oversized() {
        let b = encode_batch(&[rec(&[7u8; 2000], 1)]);
        assert!(matches!(
            validate(&b, 1000),
            Err(BatchError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_zero_records() {
        let mut b = encode_batch(&[rec(b"a", 1)]);
        b[RECORD_COUNT_POS..RECORD_COUNT_POS + 4].copy_from_slice(&0i32.to_be_bytes());
        fix_crc(&mut b);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::NoRecords { record_count: 0 })
        ));
    }

    #[test]
    fn rejects_offset_delta_mismatch() {
        let mut b = encode_batch(&[rec(b"a", 1), rec(b"b", 1)]);
        b[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&5i32.to_be_bytes());
        fix_crc(&mut b);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::OffsetDeltaMismatch { .. })
        ));
    }

    #[test]
    fn log_append_time_keeps_crc_valid() {
        let mut b = encode_batch(&[rec(b"a", 1)]);
        set_log_append_time(&mut b, 12345);
        let info = validate(&b, 1 << 20).unwrap();
        assert_eq!(info.max_timestamp, 12345);
        set_base_offset(&mut b, 99);
        set_leader_epoch(&mut b, 7);
        let info = validate(&b, 1 << 20).unwrap();
        assert_eq!(info.base_offset, 99);
        assert_eq!(info.leader_epoch, 7);
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<i32>(), l in any::<i64>()) {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            prop_assert_eq!(read_varint(&out), Some((v, out.len())));
            out.clear();
            write_varlong(&mut out, l);
            prop_assert_eq!(read_varlong(&out), Some((l, out.len())));
        }

        #[test]
        fn any_encoded_batch_validates(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20), ts in 0i64..1<<40) {
            let recs: Vec<Record> = values.iter().enumerate().map(|(i, v)| rec(v, ts + i as i64)).collect();
            let b = encode_batch(&recs);
            let info = validate(&b, usize::MAX).unwrap();
            prop_assert_eq!(info.record_count as usize, recs.len());
            prop_assert_eq!(info.size_bytes, b.len());
            let decoded = records(&b).unwrap();
            for (d, r) in decoded.iter().zip(&recs) {
                prop_assert_eq!(d.value, r.value.as_deref());
            }
        }

        #[test]
        fn any_single_byte_flip_is_rejected(values in proptest::collection::vec(any::<u8>(), 1..200), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut b = encode_batch(&[rec(&values, 5)]);
            let i = pos.index(b.len());
            // base offset and leader epoch lie outside the CRC by design.
            prop_assume!(i >= LENGTH_POS && !(LEADER_EPOCH_POS..MAGIC_POS).contains(&i));
            b[i] ^= flip;
            prop_assert!(validate(&b, usize::MAX).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = validate(&bytes, 1 << 20);
            let _ = peek_frame(&bytes);
            let _ = records(&bytes);
        }
    }
}
