//! Idempotent producers: per-partition producer state, so a batch a producer retries
//! (its response was lost, the broker restarted) is acknowledged again without a
//! second append, and a gap in a producer's sequence numbers is refused.
//!
//! A batch carries its producer's id, epoch and base sequence in the RecordBatch v2
//! header (the fields Kafka's idempotent producers fill in); batches without a producer
//! id (-1) are not tracked. For each producer a partition remembers its epoch and its
//! last [`RECENT_BATCHES`] batches (first and last sequence, base offset), as Kafka
//! does, since a producer has at most 5 requests in flight per partition.
//!
//! The state is rebuilt when a partition opens by reading the batch headers of the
//! last [`REBUILD_RECORDS`] offsets of its log: producers that wrote within that
//! window continue where they were. A producer whose last batch is older than that
//! is unknown after a restart and gets `UnknownProducer` for a sequence other than 0;
//! Kafka clients answer that by starting a new epoch.

use std::collections::{HashMap, VecDeque};

use crate::error::{BrokerError, ErrorKind};
use ringmq_storage::PartitionLog;

/// Batches remembered per producer (Kafka's limit of requests in flight per
/// partition for an idempotent producer).
pub const RECENT_BATCHES: usize = 5;
/// How far back from the log end the state is rebuilt at open, in offsets.
pub const REBUILD_RECORDS: i64 = 200_000;

const HEADER_BYTES: usize = 61;
const ATTR_TRANSACTIONAL: i16 = 0x10;

/// The producer fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIds {
    /// Producer id (≥ 0).
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
    /// The batch is part of a transaction.
    pub transactional: bool,
}

/// `seq + n` in producer sequence numbers, which wrap from `i32::MAX` to 0 (as Kafka's
/// do).
fn seq_add(seq: i32, n: i32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// The producer fields of `batch` (a RecordBatch v2), or `None` for a batch without a
/// producer id or too short to have them.
pub fn batch_ids(batch: &[u8]) -> Option<BatchIds> {
    if batch.len() < HEADER_BYTES || batch[16] != 2 {
        return None;
    }
    let i16_at = |i: usize| i16::from_be_bytes([batch[i], batch[i + 1]]);
    let i32_at = |i: usize| i32::from_be_bytes(batch[i..i + 4].try_into().expect("4 bytes"));
    let producer_id = i64::from_be_bytes(batch[43..51].try_into().expect("8 bytes"));
    if producer_id < 0 {
        return None;
    }
    let first_seq = i32_at(53);
    let last_delta = i32_at(23);
    Some(BatchIds {
        producer_id,
        epoch: i16_at(51),
        first_seq,
        last_seq: seq_add(first_seq, last_delta),
        transactional: i16_at(21) & ATTR_TRANSACTIONAL != 0,
    })
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    first_seq: i32,
    last_seq: i32,
    /// `None` while the append is in flight.
    base_offset: Option<i64>,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    recent: VecDeque<Entry>,
}

impl Producer {
    fn next_seq(&self) -> Option<i32> {
        self.recent.back().map(|e| seq_add(e.last_seq, 1))
    }

    fn push(&mut self, e: Entry) {
        if self.recent.len() == RECENT_BATCHES {
            self.recent.pop_front();
        }
        self.recent.push_back(e);
    }
}

/// What to do with a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Append it; then call [`Producers::complete`].
    Append,
    /// A retry of a batch already in the log at this base offset: acknowledge it
    /// without appending.
    Duplicate(i64),
    /// Refuse it.
    Refuse(BrokerError),
}

/// The producers of one partition.
#[derive(Debug, Default)]
pub struct Producers {
    by_id: HashMap<i64, Producer>,
}

impl Producers {
    /// Number of producers known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no producer is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Checks a batch against its producer's state; for [`Check::Append`] the batch's
    /// sequence range is reserved (so the next batch of the producer, arriving before
    /// this one is appended, is checked against it).
    pub fn check(&mut self, ids: &BatchIds) -> Check {
        if ids.transactional {
            return Check::Refuse(BrokerError::new(
                ErrorKind::InvalidRequest,
                "transactional batches are not supported",
            ));
        }
        let p = self.by_id.entry(ids.producer_id).or_default();
        let known = !p.recent.is_empty();
        if known && ids.epoch < p.epoch {
            return Check::Refuse(BrokerError::new(
                ErrorKind::ProducerFenced,
                format!(
                    "producer {} epoch {} is older than the current epoch {}",
                    ids.producer_id, ids.epoch, p.epoch
                ),
            ));
        }
        if known && ids.epoch == p.epoch {
            if let Some(e) = p
                .recent
                .iter()
                .find(|e| e.first_seq == ids.first_seq && e.last_seq == ids.last_seq)
            {
                return match e.base_offset {
                    Some(o) => Check::Duplicate(o),
                    None => Check::Refuse(BrokerError::new(
                        ErrorKind::Unavailable,
                        "the same batch is being appended; retry",
                    )),
                };
            }
            let next = p.next_seq().expect("known producer has a batch");
            if ids.first_seq != next {
                return Check::Refuse(BrokerError::new(
                    ErrorKind::OutOfOrderSequence,
                    format!(
                        "producer {} sent sequence {} where {} was expected",
                        ids.producer_id, ids.first_seq, next
                    ),
                ));
            }
        } else if ids.first_seq != 0 {
            // A new producer, or a new epoch, starts at sequence 0.
            let code = if known {
                ErrorKind::OutOfOrderSequence
            } else {
                self.by_id.remove(&ids.producer_id);
                ErrorKind::UnknownProducer
            };
            return Check::Refuse(BrokerError::new(
                code,
                format!(
                    "producer {} epoch {} starts at sequence {}, not 0",
                    ids.producer_id, ids.epoch, ids.first_seq
                ),
            ));
        } else if known {
            p.recent.clear();
        }
        if !known || ids.epoch > p.epoch {
            p.epoch = ids.epoch;
        }
        p.push(Entry {
            first_seq: ids.first_seq,
            last_seq: ids.last_seq,
            base_offset: None,
        });
        Check::Append
    }

    /// Records how the append of a batch that got [`Check::Append`] ended. A failed
    /// append releases its sequence range (the producer retries it).
    pub fn complete(&mut self, ids: &BatchIds, base_offset: Option<i64>) {
        let Some(p) = self.by_id.get_mut(&ids.producer_id) else {
            return;
        };
        match base_offset {
            Some(o) => {
                if let Some(e) = p
                    .recent
                    .iter_mut()
                    .find(|e| e.first_seq == ids.first_seq && e.base_offset.is_none())
                {
                    e.base_offset = Some(o);
                }
            }
            None => {
                // This batch and any reserved after it: the later ones will fail their
                // own appends or be retried in order by the producer.
                if let Some(i) = p
                    .recent
                    .iter()
                    .position(|e| e.first_seq == ids.first_seq && e.base_offset.is_none())
                {
                    p.recent.truncate(i);
                }
                if p.recent.is_empty() {
                    self.by_id.remove(&ids.producer_id);
                }
            }
        }
    }

    /// Notes a batch found in the log (rebuilding the state at open).
    pub fn observe(&mut self, ids: &BatchIds, base_offset: i64) {
        let p = self.by_id.entry(ids.producer_id).or_default();
        if ids.epoch != p.epoch {
            p.recent.clear();
            p.epoch = ids.epoch;
        }
        p.push(Entry {
            first_seq: ids.first_seq,
            last_seq: ids.last_seq,
            base_offset: Some(base_offset),
        });
    }

    /// Rebuilds the state from the batch headers of the last [`REBUILD_RECORDS`]
    /// offsets of `log`.
    pub async fn rebuild(log: &PartitionLog) -> Result<Self, ringmq_storage::Error> {
        let mut me = Self::default();
        let end = log.end_offset();
        let mut offset = log.start_offset().max(end - REBUILD_RECORDS);
        while offset < end {
            let r = log.read(offset, 4 << 20, i64::MAX).await?;
            let bytes = r.to_bytes().await?;
            let mut pos = 0;
            let before = offset;
            while pos + HEADER_BYTES <= bytes.len() {
                let b = &bytes[pos..];
                let base = i64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
                let len = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
                let total = 12 + len.max(0) as usize;
                if len < 49 || pos + total > bytes.len() {
                    break;
                }
                let last_delta = i32::from_be_bytes(b[23..27].try_into().expect("4 bytes"));
                if let Some(ids) = batch_ids(&b[..total]) {
                    me.observe(&ids, base);
                }
                offset = base + i64::from(last_delta) + 1;
                pos += total;
            }
            if offset <= before {
                break;
            }
        }
        Ok(me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pid: i64, epoch: i16, first: i32, last: i32) -> BatchIds {
        BatchIds {
            producer_id: pid,
            epoch,
            first_seq: first,
            last_seq: last,
            transactional: false,
        }
    }

    fn code(c: Check) -> ErrorKind {
        match c {
            Check::Refuse(e) => e.kind,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut p = Producers::default();
        let a = ids(7, 0, 0, 9);
        assert_eq!(p.check(&a), Check::Append);
        // A retry while the first append is in flight is refused as retriable.
        assert_eq!(code(p.check(&a)), ErrorKind::Unavailable);
        let b = ids(7, 0, 10, 19);
        assert_eq!(p.check(&b), Check::Append);
        p.complete(&a, Some(100));
        p.complete(&b, Some(110));
        assert_eq!(p.check(&a), Check::Duplicate(100));
        assert_eq!(p.check(&b), Check::Duplicate(110));
        assert_eq!(
            code(p.check(&ids(7, 0, 25, 30))),
            ErrorKind::OutOfOrderSequence
        );
        assert_eq!(p.check(&ids(7, 0, 20, 20)), Check::Append);
    }

    #[test]
    fn sequences_wrap_from_the_largest_to_zero() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(i32::MAX - 2, 5), 2);
        assert_eq!(seq_add(7, 3), 10);
        let mut p = Producers::default();
        assert!(matches!(p.check(&ids(9, 0, 0, 0)), Check::Append));
        p.complete(&ids(9, 0, 0, 0), Some(0));
        // A producer far along: its batch ending at i32::MAX is followed by one at 0.
        p.by_id
            .get_mut(&9)
            .unwrap()
            .recent
            .back_mut()
            .unwrap()
            .last_seq = i32::MAX;
        assert!(matches!(p.check(&ids(9, 0, 0, 4)), Check::Append));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut p = Producers::default();
        assert_eq!(p.check(&ids(1, 3, 0, 0)), Check::Append);
        p.complete(&ids(1, 3, 0, 0), Some(0));
        assert_eq!(code(p.check(&ids(1, 2, 1, 1))), ErrorKind::ProducerFenced);
        assert_eq!(
            code(p.check(&ids(1, 4, 5, 5))),
            ErrorKind::OutOfOrderSequence
        );
        assert_eq!(p.check(&ids(1, 4, 0, 0)), Check::Append);
        assert_eq!(code(p.check(&ids(2, 0, 8, 8))), ErrorKind::UnknownProducer);
    }

    #[test]
    fn a_failed_append_releases_its_sequences() {
        let mut p = Producers::default();
        let a = ids(9, 0, 0, 4);
        assert_eq!(p.check(&a), Check::Append);
        p.complete(&a, None);
        assert_eq!(p.check(&a), Check::Append);
        p.complete(&a, Some(50));
        let b = ids(9, 0, 5, 5);
        assert_eq!(p.check(&b), Check::Append);
        p.complete(&b, None);
        assert_eq!(p.check(&b), Check::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut p = Producers::default();
        for i in 0..7 {
            let b = ids(3, 0, i, i);
            assert_eq!(p.check(&b), Check::Append);
            p.complete(&b, Some(i64::from(i)));
        }
        assert_eq!(
            code(p.check(&ids(3, 0, 1, 1))),
            ErrorKind::OutOfOrderSequence
        );
        assert_eq!(p.check(&ids(3, 0, 2, 2)), Check::Duplicate(2));
    }

    #[test]
    fn header_fields_are_read() {
        let mut b = vec![0u8; 70];
        b[16] = 2;
        b[23..27].copy_from_slice(&4i32.to_be_bytes());
        b[43..51].copy_from_slice(&77i64.to_be_bytes());
        b[51..53].copy_from_slice(&2i16.to_be_bytes());
        b[53..57].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(batch_ids(&b), Some(ids(77, 2, 10, 14)));
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        assert_eq!(batch_ids(&b), None);
    }
}
