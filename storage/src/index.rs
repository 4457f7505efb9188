//! Sparse indexes of a segment, as plain in-memory structures with their file encoding.
//!
//! * [`OffsetIndex`]: relative offset → file position of the batch that starts there,
//!   one entry per `index_interval_bytes` of log.
//! * [`TimeIndex`]: max timestamp so far → relative offset of the batch that raised it.
//!
//! Files are the entries (big-endian) followed by an 8-byte trailer: CRC32 of the
//! entries (`crc32fast`) and a magic. Any damage shows as a failed parse, and the
//! index is then rebuilt from the log.

const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;
const TRAILER_BYTES: usize = 8;
const OFFSET_MAGIC: &[u8; 4] = b"RIX1";
const TIME_MAGIC: &[u8; 4] = b"RTX1";

/// One offset-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset relative to the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

/// Offset → position index of one segment. Entries increase in both fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; it must be beyond the last one in both fields.
    pub fn push(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(entry.relative_offset > last.relative_offset);
            assert!(entry.position > last.position);
        }
        self.entries.push(entry);
    }

    /// The entry with the largest relative offset ≤ `relative_offset`, if any.
    pub fn floor_offset(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let i = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Byte position to start a forward scan for `relative_offset`: the floor entry's
    /// position, or 0 (the segment's start) when there is none.
    pub fn scan_position(&self, relative_offset: u32) -> u64 {
        self.floor_offset(relative_offset)
            .map(|e| u64::from(e.position))
            .unwrap_or(0)
    }

    /// The entry with the largest position ≤ `position`, if any.
    pub fn floor_position(&self, position: u32) -> Option<OffsetEntry> {
        let i = self.entries.partition_point(|e| e.position <= position);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops entries at or beyond `relative_offset` (truncation).
    pub fn truncate_from(&mut self, relative_offset: u32) {
        let i = self
            .entries
            .partition_point(|e| e.relative_offset < relative_offset);
        self.entries.truncate(i);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<OffsetEntry>()
    }

    /// Releases spare capacity.
    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// File encoding with trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES + TRAILER_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        push_trailer(&mut out, OFFSET_MAGIC);
        out
    }

    /// Parses a file; `None` when the trailer, the CRC, the ordering or a position
    /// beyond `segment_bytes` shows damage.
    pub fn decode(buf: &[u8], segment_bytes: u64) -> Option<Self> {
        let body = check_trailer(buf, OFFSET_MAGIC, OFFSET_ENTRY_BYTES)?;
        let mut index = OffsetIndex::new();
        for c in body.chunks_exact(OFFSET_ENTRY_BYTES) {
            let e = OffsetEntry {
                relative_offset: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                position: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            };
            if u64::from(e.position) >= segment_bytes {
                return None;
            }
            if let Some(last) = index.entries.last()
                && (e.relative_offset <= last.relative_offset || e.position <= last.position)
            {
                return None;
            }
            index.entries.push(e);
        }
        Some(index)
    }
}

/// One time-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp in the segment up to and including this batch.
    pub timestamp_ms: i64,
    /// Relative offset of the batch that raised the max timestamp.
    pub relative_offset: u32,
}

/// Timestamp → offset index of one segment. Timestamps strictly increase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry if its timestamp exceeds the last one's; returns whether it did.
    pub fn push(&mut self, entry: TimeEntry) -> bool {
        if let Some(last) = self.entries.last()
            && (entry.timestamp_ms <= last.timestamp_ms
                || entry.relative_offset < last.relative_offset)
        {
            return false;
        }
        self.entries.push(entry);
        true
    }

    /// Relative offset from which to scan for the first batch whose max timestamp is
    /// ≥ `timestamp_ms`: the batch of the last entry below it (every batch before that
    /// one has a max timestamp below `timestamp_ms`), or 0.
    pub fn scan_start(&self, timestamp_ms: i64) -> u32 {
        let i = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        i.checked_sub(1)
            .map(|i| self.entries[i].relative_offset)
            .unwrap_or(0)
    }

    /// The last entry (the segment's max timestamp once the segment is closed).
    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Drops entries at or beyond `relative_offset`.
    pub fn truncate_from(&mut self, relative_offset: u32) {
        let i = self
            .entries
            .partition_point(|e| e.relative_offset < relative_offset);
        self.entries.truncate(i);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<TimeEntry>()
    }

    /// Releases spare capacity.
    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// File encoding with trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES + TRAILER_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.timestamp_ms.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        push_trailer(&mut out, TIME_MAGIC);
        out
    }

    /// Parses a file; `None` when it shows damage.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        let body = check_trailer(buf, TIME_MAGIC, TIME_ENTRY_BYTES)?;
        let mut index = TimeIndex::new();
        for c in body.chunks_exact(TIME_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&c[..8]);
            let e = TimeEntry {
                timestamp_ms: i64::from_be_bytes(ts),
                relative_offset: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
            };
            if !index.push(e) {
                return None;
            }
        }
        Some(index)
    }
}

fn push_trailer(out: &mut Vec<u8>, magic: &[u8; 4]) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(magic);
}

fn check_trailer<'a>(buf: &'a [u8], magic: &[u8; 4], entry_bytes: usize) -> Option<&'a [u8]> {
    let body_len = buf.len().checked_sub(TRAILER_BYTES)?;
    if body_len % entry_bytes != 0 || &buf[buf.len() - 4..] != magic {
        return None;
    }
    let body = &buf[..body_len];
    let crc = u32::from_be_bytes([
        buf[body_len],
        buf[body_len + 1],
        buf[body_len + 2],
        buf[body_len + 3],
    ]);
    (crc32fast::hash(body) == crc).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(n: u32) -> OffsetIndex {
        let mut ix = OffsetIndex::new();
        for i in 0..n {
            ix.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 4096,
            });
        }
        ix
    }

    #[test]
    fn floor_lookups() {
        let ix = build(5);
        assert_eq!(ix.floor_offset(0).unwrap().position, 0);
        assert_eq!(ix.floor_offset(9).unwrap().position, 0);
        assert_eq!(ix.floor_offset(10).unwrap().position, 4096);
        assert_eq!(ix.floor_offset(1000).unwrap().relative_offset, 40);
        assert_eq!(ix.floor_position(8191).unwrap().relative_offset, 10);
        assert!(OffsetIndex::new().floor_offset(3).is_none());
    }

    #[test]
    fn damaged_index_files_are_refused() {
        let ix = build(20);
        let bytes = ix.encode();
        assert_eq!(OffsetIndex::decode(&bytes, 1 << 30).as_ref(), Some(&ix));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(OffsetIndex::decode(&b, 1 << 30).is_none(), "flip at {i}");
        }
        assert!(OffsetIndex::decode(&bytes[..bytes.len() - 1], 1 << 30).is_none());
        // Positions beyond the segment are damage too.
        assert!(OffsetIndex::decode(&bytes, 4096).is_none());
    }

    #[test]
    fn time_index_scan_start() {
        let mut t = TimeIndex::new();
        assert!(t.push(TimeEntry {
            timestamp_ms: 100,
            relative_offset: 0
        }));
        assert!(t.push(TimeEntry {
            timestamp_ms: 200,
            relative_offset: 5
        }));
        assert!(!t.push(TimeEntry {
            timestamp_ms: 150,
            relative_offset: 7
        }));
        assert!(t.push(TimeEntry {
            timestamp_ms: 300,
            relative_offset: 9
        }));
        assert_eq!(t.scan_start(50), 0);
        assert_eq!(t.scan_start(100), 0);
        assert_eq!(t.scan_start(101), 0);
        assert_eq!(t.scan_start(200), 0);
        assert_eq!(t.scan_start(201), 5);
        assert_eq!(t.scan_start(1000), 9);
        let enc = t.encode();
        assert_eq!(TimeIndex::decode(&enc), Some(t));
    }

    proptest! {
        /// floor_offset agrees with a linear scan for any index and any key.
        #[test]
        fn floor_offset_matches_linear_scan(steps in proptest::collection::vec((1u32..50, 1u32..5000), 0..200), key in 0u32..20_000) {
            let mut ix = OffsetIndex::new();
            let (mut off, mut pos) = (0u32, 0u32);
            let mut all = Vec::new();
            for (d_off, d_pos) in steps {
                let e = OffsetEntry { relative_offset: off, position: pos };
                ix.push(e);
                all.push(e);
                off += d_off;
                pos += d_pos;
            }
            let expect = all.iter().rev().find(|e| e.relative_offset <= key).copied();
            prop_assert_eq!(ix.floor_offset(key), expect);
            let expect = all.iter().rev().find(|e| e.position <= key).copied();
            prop_assert_eq!(ix.floor_position(key), expect);
            prop_assert_eq!(OffsetIndex::decode(&ix.encode(), u64::MAX), Some(ix));
        }

        /// The scan start never skips a batch whose max timestamp reaches the target.
        #[test]
        fn time_scan_start_is_safe(ts in proptest::collection::vec(0i64..1000, 1..100), target in 0i64..1100) {
            // batch i has max timestamp ts[i]; the index records running maxima.
            let mut t = TimeIndex::new();
            let mut running = i64::MIN;
            for (i, &x) in ts.iter().enumerate() {
                if x > running {
                    running = x;
                    t.push(TimeEntry { timestamp_ms: x, relative_offset: i as u32 });
                }
            }
            let start = t.scan_start(target) as usize;
            let first = ts.iter().position(|&x| x >= target);
            if let Some(first) = first {
                prop_assert!(start <= first);
            }
        }
    }
}
