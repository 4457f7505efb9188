//! The shard's own operations: what front-ends (Kafka, native, later the admin API and
//! the cluster transport) ask of the broker, in no protocol's terms. A front-end turns
//! a request into operations, the router sends each partition's part to the shard that
//! owns it (the cross-shard call carries these types, never a wire request), the
//! owner's [`crate::partition::Partition`] executes it, and the front-end turns the
//! results back into its protocol, mapping [`BrokerError`] kinds to its own codes.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use ringmq_net::codec::Records;

use crate::error::BrokerError;

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic's name.
    pub topic: String,
    /// The partition's index.
    pub partition: u32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// When a produce is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Not at all: the client gets no answer (the append still runs to its end).
    None,
    /// When the leader has the batch (durable under the topic's flush policy).
    Leader,
    /// When every in-sync replica has it (the high watermark passed it), and only if
    /// the in-sync replicas are at least the topic's `min.insync.replicas`.
    All,
}

/// One partition's part of a produce.
#[derive(Debug, Clone)]
pub struct ProducePart {
    /// Where to.
    pub tp: TopicPartition,
    /// One RecordBatch v2, as the client sent it.
    pub batch: Bytes,
}

/// The outcome of producing to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// The partition.
    pub tp: TopicPartition,
    /// The offset of the batch's first record (-1 with acks none), or why not.
    pub result: Result<i64, BrokerError>,
    /// For a batch refused because of some of its records: each one's index in the
    /// batch and why (Kafka's record errors, KIP-467).
    pub record_errors: Vec<(i32, String)>,
}

impl Produced {
    /// A failed produce to `tp`.
    pub fn failed(tp: TopicPartition, e: BrokerError) -> Self {
        Self {
            tp,
            result: Err(e),
            record_errors: Vec::new(),
        }
    }
}

/// Which records a consumer may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything up to the high watermark.
    #[default]
    ReadUncommitted,
    /// Up to the last stable offset (without transactions: the high watermark).
    ReadCommitted,
}

/// Who reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A consumer: reads up to the high watermark (or the last stable offset).
    Consumer(Isolation),
    /// A follower replica: reads up to the log end, at the leader epoch it believes in.
    Follower {
        /// The replica's broker id.
        replica_id: i32,
        /// The leader epoch it follows.
        leader_epoch: i32,
    },
}

/// One partition's part of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPart {
    /// Which partition.
    pub tp: TopicPartition,
    /// The first offset wanted.
    pub offset: i64,
    /// Bytes wanted from this partition at most (a first batch is returned whole).
    pub max_bytes: u32,
    /// The leader epoch the reader believes current (`None`: not checked).
    pub leader_epoch: Option<i32>,
    /// A follower's durable offset (what it has on disk), which the high watermark
    /// counts with `every_batch` flushing; `None` for a consumer.
    pub durable_offset: Option<i64>,
}

/// A fetch of several partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Who reads.
    pub reader: Reader,
    /// How long to wait for `min_bytes`.
    pub max_wait: Duration,
    /// Answer as soon as this much is there.
    pub min_bytes: u32,
    /// The most to answer with, over all partitions.
    pub max_bytes: u32,
    /// The partitions, in the order the answer keeps.
    pub parts: Vec<FetchPart>,
}

/// What one partition gave a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The partition.
    pub tp: TopicPartition,
    /// Whole batches in offset order, or why not.
    pub records: Result<Records, BrokerError>,
    /// The high watermark (-1 when unknown).
    pub high_watermark: i64,
    /// The last stable offset (the high watermark: no transactions).
    pub last_stable_offset: i64,
    /// The log start offset (-1 when unknown).
    pub log_start_offset: i64,
}

impl Fetched {
    /// A failed fetch of `tp`.
    pub fn failed(tp: TopicPartition, e: BrokerError) -> Self {
        Self {
            tp,
            records: Err(e),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
        }
    }

    /// Bytes of records.
    pub fn len(&self) -> usize {
        self.records.as_ref().map_or(0, Records::len)
    }

    /// True when no records came back.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which offset ListOffsets looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset (also Kafka's earliest-local, KIP-405: nothing is tiered).
    Earliest,
    /// The high watermark (what a consumer starting at the end reads from).
    Latest,
    /// The record with the largest timestamp (KIP-734).
    MaxTimestamp,
    /// The last offset on tiered storage (KIP-1005): there is none.
    LatestTiered,
    /// The first record whose timestamp is at least this (ms).
    Timestamp(i64),
}

/// One partition of a ListOffsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetQuery {
    /// Which partition.
    pub tp: TopicPartition,
    /// What to look up.
    pub spec: OffsetSpec,
    /// The leader epoch the client believes current (`None`: not checked).
    pub leader_epoch: Option<i32>,
}

/// The answer to an [`OffsetQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFound {
    /// The partition.
    pub tp: TopicPartition,
    /// `Ok(None)`: no such record. `Ok(Some((offset, timestamp, leader epoch)))`, the
    /// timestamp -1 where the spec is not a time.
    pub result: Result<Option<(i64, i64, i32)>, BrokerError>,
}

/// One partition of an OffsetForLeaderEpoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochQuery {
    /// Which partition.
    pub tp: TopicPartition,
    /// The epoch whose end offset is wanted.
    pub leader_epoch: i32,
    /// The leader epoch the asker believes current (`None`: not checked).
    pub current_leader_epoch: Option<i32>,
}

/// The answer to an [`EpochQuery`]: (the largest epoch at most the one asked, the
/// offset where it ends), or (-1, -1) when the log knows no such epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochEnd {
    /// The partition.
    pub tp: TopicPartition,
    /// (epoch, end offset), or why not.
    pub result: Result<(i32, i64), BrokerError>,
}

/// One partition of a DeleteRecords: move its log start up to `offset` (-1: the high
/// watermark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteBefore {
    /// Which partition.
    pub tp: TopicPartition,
    /// The new log start offset.
    pub offset: i64,
}

/// The answer to a [`DeleteBefore`]: the log start offset now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The partition.
    pub tp: TopicPartition,
    /// The new log start offset, or why not.
    pub result: Result<i64, BrokerError>,
}

/// A partition's figures, for describing a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// The partition.
    pub tp: TopicPartition,
    /// The shard that owns it.
    pub shard: u32,
    /// Log start offset (-1 when the shard does not have it).
    pub start_offset: i64,
    /// High watermark (-1 when the shard does not have it).
    pub high_watermark: i64,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// The partition's leader epoch (-1 when the shard does not have it).
    pub leader_epoch: i32,
}

/// A change to the topics, made by the metadata shard and applied by all.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TopicOp {
    /// Create a topic.
    Create {
        /// Its name.
        name: String,
        /// Its partition count.
        partitions: u32,
        /// Its settings (stored names: ringmq's and Kafka's, `topic_configs`).
        configs: Vec<(String, String)>,
        /// Replicas of each partition (`None`: the broker's default).
        replication_factor: Option<u16>,
        /// Check only; change nothing.
        validate_only: bool,
    },
    /// Delete a topic and its data.
    Delete {
        /// Its name.
        name: String,
    },
    /// Set and remove topic settings.
    Configs {
        /// The topic.
        name: String,
        /// Settings to set.
        set: Vec<(String, String)>,
        /// Settings to remove (back to the broker's defaults).
        remove: Vec<String>,
        /// Check only; change nothing.
        validate_only: bool,
    },
    /// Raise the partition count (existing partitions keep their shards and data).
    Partitions {
        /// The topic.
        name: String,
        /// The new partition count.
        count: u32,
        /// Check only; change nothing.
        validate_only: bool,
    },
}

/// The bytes of fetched records, for a reader that needs them in memory (a follower's
/// fetch over an encrypted transport, the admin API's message browser). Chunks in
/// memory are shared; file ranges are read with `pread` (recent segment data is in the
/// page cache).
pub fn records_bytes(records: &Records) -> Result<Vec<Bytes>, BrokerError> {
    let chunks = records.chunks();
    use std::os::fd::AsRawFd;
    let mut out = Vec::with_capacity(chunks.len());
    for c in chunks {
        match c {
            ringmq_net::codec::RecordsChunk::Memory(b) => out.push(b.clone()),
            ringmq_net::codec::RecordsChunk::File(r) => {
                let mut buf = vec![0u8; r.len as usize];
                let mut done = 0usize;
                while done < buf.len() {
                    // SAFETY: the buffer is valid for `len - done` bytes from `done`, and
                    // the descriptor is kept open by the range's `Arc`.
                    let n = unsafe {
                        libc::pread(
                            r.fd.as_raw_fd(),
                            buf[done..].as_mut_ptr().cast(),
                            buf.len() - done,
                            (r.position + done as u64) as libc::off_t,
                        )
                    };
                    if n <= 0 {
                        return Err(BrokerError::new(
                            crate::error::ErrorKind::Storage,
                            format!(
                                "reading {} bytes of a segment: {}",
                                r.len,
                                std::io::Error::last_os_error()
                            ),
                        ));
                    }
                    done += n as usize;
                }
                out.push(Bytes::from(buf));
            }
        }
    }
    Ok(out)
}
