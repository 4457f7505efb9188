//! The native protocol v1: frames, requests and responses. Pure code over byte
//! buffers; documented in docs/protocol.md.
//!
//! Every frame starts with a 4-byte big-endian length that counts the bytes after it.
//! A request frame continues with `api key: u16`, `api version: u16`,
//! `request id: u32`, then the body; a response frame with `request id: u32` and the
//! body. Strings are `u16 length + UTF-8`, byte fields `u32 length + bytes` (`u32::MAX`
//! for none), arrays `u32 count + items`, integers big-endian.

use bytes::{BufMut, Bytes, BytesMut};

use std::os::fd::OwnedFd;
use std::sync::Arc;

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

/// Largest frame accepted by default (64 MiB); larger frames close the connection.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes of a request header after the length: api key, version, request id.
pub const REQUEST_HEADER_BYTES: usize = 8;

/// The protocol version this code speaks for every API.
pub const VERSION_1: u16 = 1;

/// Request kinds and their keys on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ApiKey {
    /// Version negotiation.
    ApiVersions = 0,
    /// Create a topic.
    CreateTopic = 1,
    /// Delete a topic.
    DeleteTopic = 2,
    /// List topic names.
    ListTopics = 3,
    /// Describe one topic.
    DescribeTopic = 4,
    /// Append batches.
    Produce = 5,
    /// Read batches.
    Fetch = 6,
    /// Earliest, latest or by-timestamp offsets.
    ListOffsets = 7,
    /// The broker's counters, summed over its shards.
    BrokerStats = 8,
    /// Join a consumer group (the broker assigns partitions).
    JoinGroup = 9,
    /// Keep a group membership alive.
    GroupHeartbeat = 10,
    /// Leave a consumer group.
    LeaveGroup = 11,
    /// Commit a group's offsets.
    CommitOffsets = 12,
    /// Read a group's committed offsets.
    FetchOffsets = 13,
    /// A producer id for sequenced (idempotent) produce.
    InitProducer = 14,
    /// Move this connection to the shard that owns the partitions it will use.
    BindShard = 15,
    /// Where each partition of a topic is led: node, native address and shard.
    Leaders = 16,
    /// Which node coordinates a consumer group.
    FindCoordinator = 17,
}

impl ApiKey {
    /// Every API, in key order.
    pub const ALL: [ApiKey; 18] = [
        ApiKey::ApiVersions,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::ListTopics,
        ApiKey::DescribeTopic,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::BrokerStats,
        ApiKey::JoinGroup,
        ApiKey::GroupHeartbeat,
        ApiKey::LeaveGroup,
        ApiKey::CommitOffsets,
        ApiKey::FetchOffsets,
        ApiKey::InitProducer,
        ApiKey::BindShard,
        ApiKey::Leaders,
        ApiKey::FindCoordinator,
    ];

    /// The key for a wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }
}

/// Error codes on the wire. 0 is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// The frame or body could not be decoded.
    Malformed = 1,
    /// Unknown API key or unsupported version.
    UnsupportedVersion = 2,
    /// No such topic.
    UnknownTopic = 3,
    /// No such partition.
    UnknownPartition = 4,
    /// The topic exists already.
    TopicExists = 5,
    /// A batch failed validation (CRC, length, magic, records).
    CorruptBatch = 6,
    /// A batch exceeds the partition's `message_bytes_max`.
    MessageTooLarge = 7,
    /// The offset is outside the log.
    OffsetOutOfRange = 8,
    /// Invalid argument (partition count, config value, acks, name).
    InvalidRequest = 9,
    /// Storage failure; the request may be retried.
    StorageError = 10,
    /// The broker is shutting down or the shard is overloaded; retry.
    Unavailable = 11,
    /// The request timed out.
    Timeout = 12,
    /// An idempotent producer's batch carries an epoch older than the producer's
    /// current one: another instance took over.
    ProducerFenced = 13,
    /// An idempotent producer's batch does not continue its sequence.
    OutOfOrderSequence = 14,
    /// An idempotent producer's batch continues a sequence the partition does not know
    /// (its state is gone); the producer starts a new epoch.
    UnknownProducer = 15,
    /// The consumer group is rebalancing: join again.
    RebalanceInProgress = 16,
    /// The member is not (or no longer) in the group: join again as a new member.
    UnknownMember = 17,
    /// The request's generation is not the group's current one: join again.
    IllegalGeneration = 18,
    /// A record of the batch breaks a rule of the topic (a compacted topic needs keys).
    InvalidRecord = 19,
    /// A record's timestamp is outside what the topic accepts.
    InvalidTimestamp = 20,
    /// Fewer in-sync replicas than the topic's `min.insync.replicas` (acks=all).
    NotEnoughReplicas = 21,
}

impl ErrorCode {
    /// The code for a wire value (unknown values read as `Malformed`).
    pub fn from_u16(v: u16) -> Self {
        use ErrorCode::*;
        [
            None,
            Malformed,
            UnsupportedVersion,
            UnknownTopic,
            UnknownPartition,
            TopicExists,
            CorruptBatch,
            MessageTooLarge,
            OffsetOutOfRange,
            InvalidRequest,
            StorageError,
            Unavailable,
            Timeout,
            ProducerFenced,
            OutOfOrderSequence,
            UnknownProducer,
            RebalanceInProgress,
            UnknownMember,
            IllegalGeneration,
            InvalidRecord,
            InvalidTimestamp,
            NotEnoughReplicas,
        ]
        .get(v as usize)
        .copied()
        .unwrap_or(Malformed)
    }

    /// Whether a client may retry the same request.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageError | ErrorCode::Unavailable | ErrorCode::Timeout
        )
    }
}

/// An error code with a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The code.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl WireError {
    /// An error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Success.
    pub fn none() -> Self {
        Self::new(ErrorCode::None, "")
    }

    /// True for success.
    pub fn is_ok(&self) -> bool {
        self.code == ErrorCode::None
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended early.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A string was not UTF-8.
    #[error("{0} is not UTF-8")]
    BadUtf8(&'static str),
    /// Bytes left after the body.
    #[error("{0} unexpected bytes after the body")]
    Trailing(usize),
    /// A field's value is out of range.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Unknown API key.
    #[error("unknown api key {0}")]
    UnknownApi(u16),
    /// Version not supported.
    #[error("api {api:?} version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion {
        /// The API.
        api: ApiKey,
        /// Version asked for.
        version: u16,
        /// Lowest supported.
        min: u16,
        /// Highest supported.
        max: u16,
    },
}

/// Topic settings in requests and descriptions, as `key=value` strings
/// (`retention_ms`, `retention_bytes`, `segment_bytes`, `segment_ms`, `flush`, ...).
pub type Configs = Vec<(String, String)>;

/// A partition of a produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// One RecordBatch v2.
    pub batch: Bytes,
}

/// A partition of a fetch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// First offset wanted.
    pub offset: i64,
    /// Bytes wanted from this partition at most (a first batch is returned whole).
    pub max_bytes: u32,
}

/// What to look up in ListOffsets.
pub const OFFSET_EARLIEST: i64 = -2;
/// What to look up in ListOffsets.
pub const OFFSET_LATEST: i64 = -1;

/// A request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Which APIs and versions the broker speaks.
    ApiVersions {
        /// Client name, for logs.
        client: String,
    },
    /// Create a topic.
    CreateTopic {
        /// Name: 1 to 200 of `[A-Za-z0-9._-]`.
        name: String,
        /// Partition count, at least 1.
        partitions: u32,
        /// Settings.
        configs: Configs,
        /// Copies of each partition in a cluster (`None`: the broker's default). Sent
        /// only as version 2 of the request, so version-1 brokers still take the rest.
        replication_factor: Option<u16>,
    },
    /// Delete a topic and its data.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Every topic's name.
    ListTopics,
    /// One topic's partitions and settings.
    DescribeTopic {
        /// Name.
        name: String,
    },
    /// Where each partition of a topic is led (clients send each partition's requests
    /// to its leader, and ask again when a partition answers `Unavailable`).
    Leaders {
        /// Topic name.
        topic: String,
    },
    /// Which node coordinates a group: group requests go there (in a cluster, the
    /// leader of the group's partition of the groups' topic; ask again when a group
    /// request answers `Unavailable`).
    FindCoordinator {
        /// The group.
        group: String,
    },
    /// Append batches.
    Produce {
        /// 0: no answer wanted (answered at once); 1: answer once the leader has it
        /// (durable per the flush policy); 2: once every in-sync replica has it.
        acks: u8,
        /// Per-partition batches.
        partitions: Vec<ProducePartition>,
    },
    /// Read batches.
    Fetch {
        /// Longest wait for `min_bytes`.
        max_wait_ms: u32,
        /// Answer as soon as this many bytes are available.
        min_bytes: u32,
        /// Bytes in the whole answer at most.
        max_bytes: u32,
        /// Per-partition positions.
        partitions: Vec<FetchPartition>,
    },
    /// Offsets by position or time.
    ListOffsets {
        /// (topic, partition, `OFFSET_EARLIEST` | `OFFSET_LATEST` | timestamp ms).
        partitions: Vec<(String, u32, i64)>,
    },
    /// The broker's counters.
    BrokerStats,
    /// A new producer id, epoch 0, for batches that carry producer sequence numbers.
    InitProducer,
    /// Serve the rest of this connection on shard `shard` (as listed by DescribeTopic),
    /// so that requests for that shard's partitions are not forwarded between cores.
    /// Answered (`Done`) by the new shard once the connection is there; the client
    /// sends nothing else until then.
    BindShard {
        /// The shard to move to.
        shard: u32,
    },
    /// Join (or rejoin) a consumer group. Answered when the group's rebalance
    /// completes, with this member's partitions.
    JoinGroup {
        /// The group.
        group: String,
        /// Empty on a first join; then the id the broker gave.
        member_id: String,
        /// Without a heartbeat for this long, the member is removed.
        session_timeout_ms: u32,
        /// How long a rebalance waits for members to rejoin.
        rebalance_timeout_ms: u32,
        /// Topics to consume.
        topics: Vec<String>,
        /// `range`, `roundrobin` or `sticky`.
        assignor: String,
    },
    /// Keep a membership alive.
    GroupHeartbeat {
        /// The group.
        group: String,
        /// The member.
        member_id: String,
        /// The generation the member is in.
        generation: i32,
    },
    /// Leave a group now (the others rebalance without waiting for a timeout).
    LeaveGroup {
        /// The group.
        group: String,
        /// The member.
        member_id: String,
    },
    /// Commit offsets (the next offset to read) for a group; answered once durable.
    CommitOffsets {
        /// The group.
        group: String,
        /// The member, or empty for a commit outside any generation (allowed while the
        /// group has no members).
        member_id: String,
        /// The member's generation, or -1.
        generation: i32,
        /// (topic, partition, offset).
        offsets: Vec<(String, u32, i64)>,
    },
    /// A group's committed offsets (-1 where none).
    FetchOffsets {
        /// The group.
        group: String,
        /// (topic, partition).
        partitions: Vec<(String, u32)>,
    },
}

impl Request {
    /// The version this request is sent as: the oldest that carries all it says.
    pub fn version(&self) -> u16 {
        match self {
            Request::CreateTopic {
                replication_factor: Some(_),
                ..
            } => 2,
            _ => VERSION_1,
        }
    }

    /// The API of this request.
    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::ApiVersions { .. } => ApiKey::ApiVersions,
            Request::CreateTopic { .. } => ApiKey::CreateTopic,
            Request::DeleteTopic { .. } => ApiKey::DeleteTopic,
            Request::ListTopics => ApiKey::ListTopics,
            Request::DescribeTopic { .. } => ApiKey::DescribeTopic,
            Request::Leaders { .. } => ApiKey::Leaders,
            Request::FindCoordinator { .. } => ApiKey::FindCoordinator,
            Request::Produce { .. } => ApiKey::Produce,
            Request::Fetch { .. } => ApiKey::Fetch,
            Request::ListOffsets { .. } => ApiKey::ListOffsets,
            Request::BrokerStats => ApiKey::BrokerStats,
            Request::InitProducer => ApiKey::InitProducer,
            Request::BindShard { .. } => ApiKey::BindShard,
            Request::JoinGroup { .. } => ApiKey::JoinGroup,
            Request::GroupHeartbeat { .. } => ApiKey::GroupHeartbeat,
            Request::LeaveGroup { .. } => ApiKey::LeaveGroup,
            Request::CommitOffsets { .. } => ApiKey::CommitOffsets,
            Request::FetchOffsets { .. } => ApiKey::FetchOffsets,
        }
    }
}

/// One partition of a topic description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// Shard that owns it.
    pub shard: u32,
    /// Log start offset.
    pub start_offset: i64,
    /// High watermark (what consumers can read up to).
    pub high_watermark: i64,
    /// Bytes on disk.
    pub size_bytes: u64,
}

/// Where one partition is led ([`Response::Leaders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLeader {
    /// Partition index.
    pub partition: u32,
    /// The leader's node id: -1 while the partition has none (an election or a node
    /// restart under way: ask again), 0 on a single node.
    pub leader: i32,
    /// The leader's epoch (0 on a single node).
    pub leader_epoch: i32,
    /// The leader's native listener, `host:port`; empty on a single node (the broker
    /// that answered) and while there is no leader.
    pub address: String,
    /// The shard of the leader that owns the partition (for `BindShard`).
    pub shard: u32,
}

/// Result of producing to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Success or why not.
    pub error: WireError,
    /// Offset of the batch's first record (-1 on error or acks 0).
    pub base_offset: i64,
    /// For a batch refused because of some of its records: each one's index in the
    /// batch and why (Kafka's record errors, KIP-467). Not on the native wire.
    pub record_errors: Vec<(i32, String)>,
}

/// Result of fetching from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Success or why not.
    pub error: WireError,
    /// High watermark.
    pub high_watermark: i64,
    /// Log start offset.
    pub start_offset: i64,
    /// Whole batches, in offset order.
    pub records: Records,
}

/// One piece of [`Records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsChunk {
    /// Batches in memory.
    Memory(Bytes),
    /// Batches in a file, sent file → socket without a copy through user space.
    File(FileRange),
}

impl RecordsChunk {
    /// Bytes in the chunk.
    pub fn len(&self) -> usize {
        match self {
            RecordsChunk::Memory(b) => b.len(),
            RecordsChunk::File(r) => r.len as usize,
        }
    }

    /// True for an empty chunk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batches of a fetch result: what the broker found in memory and in segment files,
/// concatenated on the wire. A decoded response holds one memory chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    chunks: Vec<RecordsChunk>,
}

impl Records {
    /// No batches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk (empty ones are dropped).
    pub fn push(&mut self, chunk: RecordsChunk) {
        if !chunk.is_empty() {
            self.chunks.push(chunk);
        }
    }

    /// The chunks.
    pub fn chunks(&self) -> &[RecordsChunk] {
        &self.chunks
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(RecordsChunk::len).sum()
    }

    /// True when there are no batches.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The bytes, when they are all in one memory chunk (as in a decoded response) or
    /// there are none; `None` when part of them is in a file.
    pub fn in_memory(&self) -> Option<Bytes> {
        match self.chunks.as_slice() {
            [] => Some(Bytes::new()),
            [RecordsChunk::Memory(b)] => Some(b.clone()),
            _ => None,
        }
    }
}

impl From<Bytes> for Records {
    fn from(b: Bytes) -> Self {
        let mut r = Records::new();
        r.push(RecordsChunk::Memory(b));
        r
    }
}

/// A response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Request-level error (malformed frame, unsupported API or version).
    Error(WireError),
    /// (api key, min version, max version) for each API.
    ApiVersions(Vec<(u16, u16, u16)>),
    /// Result of create, delete.
    Done(WireError),
    /// Topic names.
    Topics(Vec<String>),
    /// Counters by name, summed over the broker's shards.
    Stats(Vec<(String, u64)>),
    /// A producer id and epoch.
    Producer {
        /// Unique on this broker, across its shards and restarts.
        producer_id: i64,
        /// The epoch; sequences start at 0 in it.
        epoch: i16,
    },
    /// A topic.
    Topic {
        /// Success or why not.
        error: WireError,
        /// Name.
        name: String,
        /// Partitions.
        partitions: Vec<PartitionInfo>,
        /// Settings.
        configs: Configs,
    },
    /// Answer to Leaders.
    Leaders {
        /// Success or why not (`UnknownTopic`).
        error: WireError,
        /// Every partition, in index order.
        partitions: Vec<PartitionLeader>,
    },
    /// Answer to FindCoordinator.
    Coordinator {
        /// Success or why not (`Unavailable` while no node can coordinate the group).
        error: WireError,
        /// The coordinating node, as a partition leader: `partition` is the group's
        /// partition of the groups' topic (0 on a single node), `address` is empty on a
        /// single node (the broker that answered).
        coordinator: PartitionLeader,
    },
    /// Per-partition produce results.
    Produce(Vec<ProduceResult>),
    /// Per-partition fetch results.
    Fetch(Vec<FetchResult>),
    /// (topic, partition, error, offset, timestamp) per partition. The timestamp is
    /// the found record's for a query by timestamp or for the largest timestamp, -1
    /// otherwise; it is not part of the native wire format (decoded as -1).
    Offsets(Vec<(String, u32, WireError, i64, i64)>),
    /// Answer to JoinGroup.
    Joined {
        /// Success or why not.
        error: WireError,
        /// The group's generation.
        generation: i32,
        /// This member's id (keep it for the next join).
        member_id: String,
        /// This member's partitions.
        assignment: Vec<(String, u32)>,
    },
}

// ---- encoding primitives

fn put_str(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let len = b.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&b[..len]);
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_err(out: &mut BytesMut, e: &WireError) {
    out.put_u16(e.code as u16);
    put_str(out, &e.message);
}

fn put_leader(out: &mut BytesMut, p: &PartitionLeader) {
    out.put_u32(p.partition);
    out.put_i32(p.leader);
    out.put_i32(p.leader_epoch);
    put_str(out, &p.address);
    out.put_u32(p.shard);
}

fn put_configs(out: &mut BytesMut, c: &Configs) {
    out.put_u32(c.len() as u32);
    for (k, v) in c {
        put_str(out, k);
        put_str(out, v);
    }
}

/// A cursor over a frame body.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(what))?;
        if end > self.buf.len() {
            return Err(DecodeError::Truncated(what));
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(self.u16(what)? as i16)
    }
    fn str(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadUtf8(what))
    }
    /// A byte field, sliced from the frame without copying.
    fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u32(what)? as usize;
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..start + n))
    }
    /// An array count, checked against the bytes left (each item takes at least
    /// `item_bytes_min`), so a hostile count cannot make us allocate.
    fn count(&mut self, what: &'static str, item_bytes_min: usize) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(item_bytes_min) > self.buf.len() - self.pos {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n)
    }
    fn err(&mut self) -> Result<WireError, DecodeError> {
        let code = ErrorCode::from_u16(self.u16("error code")?);
        Ok(WireError {
            code,
            message: self.str("error message")?,
        })
    }
    fn leader(&mut self) -> Result<PartitionLeader, DecodeError> {
        Ok(PartitionLeader {
            partition: self.u32("partition")?,
            leader: self.i32("leader")?,
            leader_epoch: self.i32("leader epoch")?,
            address: self.str("address")?,
            shard: self.u32("shard")?,
        })
    }
    fn configs(&mut self) -> Result<Configs, DecodeError> {
        let n = self.count("configs", 4)?;
        let mut c = Vec::with_capacity(n);
        for _ in 0..n {
            c.push((self.str("config key")?, self.str("config value")?));
        }
        Ok(c)
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(DecodeError::Trailing(self.buf.len() - self.pos));
        }
        Ok(())
    }
}

/// A decoded request frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// API key (maybe unknown to us).
    pub api_key: u16,
    /// API version.
    pub api_version: u16,
    /// Echoed in the response.
    pub request_id: u32,
}

/// Reads the length prefix of the frame at the start of `buf`: `Ok(None)` if fewer
/// than 4 bytes are buffered, `Err` if the frame is larger than `frame_bytes_max`.
pub fn frame_len(buf: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, usize> {
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if n > frame_bytes_max {
        return Err(n);
    }
    Ok(Some(n))
}

/// Encodes a request frame (with its length prefix).
pub fn encode_request(request_id: u32, req: &Request) -> BytesMut {
    let mut out = BytesMut::with_capacity(64);
    out.put_u32(0);
    out.put_u16(req.api_key() as u16);
    out.put_u16(req.version());
    out.put_u32(request_id);
    match req {
        Request::ApiVersions { client } => put_str(&mut out, client),
        Request::CreateTopic {
            name,
            partitions,
            configs,
            replication_factor,
        } => {
            put_str(&mut out, name);
            out.put_u32(*partitions);
            put_configs(&mut out, configs);
            if let Some(rf) = replication_factor {
                out.put_u16(*rf);
            }
        }
        Request::DeleteTopic { name }
        | Request::DescribeTopic { name }
        | Request::Leaders { topic: name }
        | Request::FindCoordinator { group: name } => put_str(&mut out, name),
        Request::ListTopics | Request::BrokerStats | Request::InitProducer => {}
        Request::BindShard { shard } => out.put_u32(*shard),
        Request::Produce { acks, partitions } => {
            out.put_u8(*acks);
            out.put_u32(partitions.len() as u32);
            for p in partitions {
                put_str(&mut out, &p.topic);
                out.put_u32(p.partition);
                put_bytes(&mut out, &p.batch);
            }
        }
        Request::Fetch {
            max_wait_ms,
            min_bytes,
            max_bytes,
            partitions,
        } => {
            out.put_u32(*max_wait_ms);
            out.put_u32(*min_bytes);
            out.put_u32(*max_bytes);
            out.put_u32(partitions.len() as u32);
            for p in partitions {
                put_str(&mut out, &p.topic);
                out.put_u32(p.partition);
                out.put_i64(p.offset);
                out.put_u32(p.max_bytes);
            }
        }
        Request::JoinGroup {
            group,
            member_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            topics,
            assignor,
        } => {
            put_str(&mut out, group);
            put_str(&mut out, member_id);
            out.put_u32(*session_timeout_ms);
            out.put_u32(*rebalance_timeout_ms);
            out.put_u32(topics.len() as u32);
            for t in topics {
                put_str(&mut out, t);
            }
            put_str(&mut out, assignor);
        }
        Request::GroupHeartbeat {
            group,
            member_id,
            generation,
        } => {
            put_str(&mut out, group);
            put_str(&mut out, member_id);
            out.put_i32(*generation);
        }
        Request::LeaveGroup { group, member_id } => {
            put_str(&mut out, group);
            put_str(&mut out, member_id);
        }
        Request::CommitOffsets {
            group,
            member_id,
            generation,
            offsets,
        } => {
            put_str(&mut out, group);
            put_str(&mut out, member_id);
            out.put_i32(*generation);
            out.put_u32(offsets.len() as u32);
            for (t, p, o) in offsets {
                put_str(&mut out, t);
                out.put_u32(*p);
                out.put_i64(*o);
            }
        }
        Request::FetchOffsets { group, partitions } => {
            put_str(&mut out, group);
            out.put_u32(partitions.len() as u32);
            for (t, p) in partitions {
                put_str(&mut out, t);
                out.put_u32(*p);
            }
        }
        Request::ListOffsets { partitions } => {
            out.put_u32(partitions.len() as u32);
            for (t, p, spec) in partitions {
                put_str(&mut out, t);
                out.put_u32(*p);
                out.put_i64(*spec);
            }
        }
    }
    let len = (out.len() - LENGTH_PREFIX_BYTES) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Decodes a request frame body (the bytes after the length prefix). The header is
/// returned even when the body fails, so the error can answer the right request id.
pub fn decode_request(frame: Bytes) -> (Option<RequestHeader>, Result<Request, DecodeError>) {
    let mut r = Reader::new(&frame);
    let header = match (r.u16("api key"), r.u16("api version"), r.u32("request id")) {
        (Ok(api_key), Ok(api_version), Ok(request_id)) => RequestHeader {
            api_key,
            api_version,
            request_id,
        },
        _ => return (None, Err(DecodeError::Truncated("request header"))),
    };
    let result = (|| {
        let api =
            ApiKey::from_u16(header.api_key).ok_or(DecodeError::UnknownApi(header.api_key))?;
        let max = max_version(api);
        if !(VERSION_1..=max).contains(&header.api_version) {
            return Err(DecodeError::UnsupportedVersion {
                api,
                version: header.api_version,
                min: VERSION_1,
                max,
            });
        }
        let req = match api {
            ApiKey::ApiVersions => Request::ApiVersions {
                client: r.str("client")?,
            },
            ApiKey::CreateTopic => Request::CreateTopic {
                name: r.str("topic")?,
                partitions: r.u32("partitions")?,
                configs: r.configs()?,
                replication_factor: if header.api_version >= 2 {
                    Some(r.u16("replication factor")?)
                } else {
                    None
                },
            },
            ApiKey::DeleteTopic => Request::DeleteTopic {
                name: r.str("topic")?,
            },
            ApiKey::ListTopics => Request::ListTopics,
            ApiKey::BrokerStats => Request::BrokerStats,
            ApiKey::InitProducer => Request::InitProducer,
            ApiKey::BindShard => Request::BindShard {
                shard: r.u32("shard")?,
            },
            ApiKey::DescribeTopic => Request::DescribeTopic {
                name: r.str("topic")?,
            },
            ApiKey::Leaders => Request::Leaders {
                topic: r.str("topic")?,
            },
            ApiKey::FindCoordinator => Request::FindCoordinator {
                group: r.str("group")?,
            },
            ApiKey::Produce => {
                let acks = r.u8("acks")?;
                let n = r.count("partitions", 10)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(ProducePartition {
                        topic: r.str("topic")?,
                        partition: r.u32("partition")?,
                        batch: r.bytes("batch")?,
                    });
                }
                Request::Produce { acks, partitions }
            }
            ApiKey::Fetch => {
                let max_wait_ms = r.u32("max wait")?;
                let min_bytes = r.u32("min bytes")?;
                let max_bytes = r.u32("max bytes")?;
                let n = r.count("partitions", 18)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(FetchPartition {
                        topic: r.str("topic")?,
                        partition: r.u32("partition")?,
                        offset: r.i64("offset")?,
                        max_bytes: r.u32("partition max bytes")?,
                    });
                }
                Request::Fetch {
                    max_wait_ms,
                    min_bytes,
                    max_bytes,
                    partitions,
                }
            }
            ApiKey::JoinGroup => {
                let group = r.str("group")?;
                let member_id = r.str("member id")?;
                let session_timeout_ms = r.u32("session timeout")?;
                let rebalance_timeout_ms = r.u32("rebalance timeout")?;
                let n = r.count("topics", 2)?;
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    topics.push(r.str("topic")?);
                }
                Request::JoinGroup {
                    group,
                    member_id,
                    session_timeout_ms,
                    rebalance_timeout_ms,
                    topics,
                    assignor: r.str("assignor")?,
                }
            }
            ApiKey::GroupHeartbeat => Request::GroupHeartbeat {
                group: r.str("group")?,
                member_id: r.str("member id")?,
                generation: r.i32("generation")?,
            },
            ApiKey::LeaveGroup => Request::LeaveGroup {
                group: r.str("group")?,
                member_id: r.str("member id")?,
            },
            ApiKey::CommitOffsets => {
                let group = r.str("group")?;
                let member_id = r.str("member id")?;
                let generation = r.i32("generation")?;
                let n = r.count("offsets", 14)?;
                let mut offsets = Vec::with_capacity(n);
                for _ in 0..n {
                    offsets.push((r.str("topic")?, r.u32("partition")?, r.i64("offset")?));
                }
                Request::CommitOffsets {
                    group,
                    member_id,
                    generation,
                    offsets,
                }
            }
            ApiKey::FetchOffsets => {
                let group = r.str("group")?;
                let n = r.count("partitions", 6)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push((r.str("topic")?, r.u32("partition")?));
                }
                Request::FetchOffsets { group, partitions }
            }
            ApiKey::ListOffsets => {
                let n = r.count("partitions", 14)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push((r.str("topic")?, r.u32("partition")?, r.i64("offset spec")?));
                }
                Request::ListOffsets { partitions }
            }
        };
        r.finish()?;
        Ok(req)
    })();
    (Some(header), result)
}

/// Encodes a response frame (with its length prefix). The response's kind is implied
/// by the request it answers; a request-level error is tag 1, a body tag 0.
pub fn encode_response(request_id: u32, resp: &Response) -> OutFrame {
    let mut out = OutFrame::begin();
    out.buf.put_u32(request_id);
    match resp {
        Response::Error(e) => {
            out.buf.put_u8(1);
            put_err(&mut out.buf, e);
        }
        other => {
            out.buf.put_u8(0);
            encode_response_body(&mut out, other);
        }
    }
    out.finish()
}

/// An encoded response frame: bytes in memory and file ranges, in wire order. File
/// ranges are sent file → socket by the broker's connections (the `zerocopy` module).
#[derive(Debug, Default)]
pub struct OutFrame {
    parts: Vec<OutPart>,
    buf: BytesMut,
    len: usize,
    close: bool,
}

/// A piece of an [`OutFrame`].
#[derive(Debug)]
pub enum OutPart {
    /// Encoded bytes.
    Bytes(Bytes),
    /// Record bytes to send from a file.
    File(FileRange),
}

impl OutFrame {
    /// A frame to build with [`OutFrame::bytes_mut`] and [`OutFrame::put_chunks`], then
    /// [`OutFrame::seal`]: its 4-byte length prefix is reserved.
    pub fn begin() -> Self {
        let mut f = Self::default();
        f.buf.put_u32(0);
        f
    }

    /// Nothing to send (a request that has no response, such as a Kafka produce with
    /// acks 0).
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Nothing to send, and the connection is to be closed once the responses before
    /// this one are written (what Kafka brokers do with a request they cannot parse).
    pub fn close() -> Self {
        Self {
            close: true,
            ..Self::default()
        }
    }

    /// True when the connection closes after this frame.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// The buffer that encoded bytes go into.
    pub fn bytes_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends record bytes (no length prefix): memory chunks are copied into the
    /// frame, file chunks become file parts sent without a copy.
    pub fn put_chunks(&mut self, records: &Records) {
        for c in records.chunks() {
            match c {
                RecordsChunk::Memory(b) => self.buf.put_slice(b),
                RecordsChunk::File(r) => {
                    self.flush_buf();
                    self.len += r.len as usize;
                    self.parts.push(OutPart::File(r.clone()));
                }
            }
        }
    }

    /// Writes the length prefix of a frame started with [`OutFrame::begin`].
    pub fn seal(self) -> Self {
        self.finish()
    }

    /// The pieces, in wire order.
    pub fn parts(&self) -> &[OutPart] {
        &self.parts
    }

    /// Total bytes on the wire, length prefix included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a frame with no bytes (never produced by the encoder).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame as one buffer, when it has no file ranges.
    pub fn into_memory(self) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(self.len);
        for p in self.parts {
            match p {
                OutPart::Bytes(b) => out.extend_from_slice(&b),
                OutPart::File(_) => return None,
            }
        }
        Some(out.freeze())
    }

    fn put_records(&mut self, records: &Records) {
        self.buf.put_u32(records.len() as u32);
        self.put_chunks(records);
    }

    fn flush_buf(&mut self) {
        if !self.buf.is_empty() {
            let b = self.buf.split().freeze();
            self.len += b.len();
            self.parts.push(OutPart::Bytes(b));
        }
    }

    /// Writes the length prefix and seals the frame.
    fn finish(mut self) -> Self {
        let body = self.len + self.buf.len() - LENGTH_PREFIX_BYTES;
        let prefix = (body as u32).to_be_bytes();
        match self.parts.first_mut() {
            // The prefix is in the first part, already frozen: rebuild that part.
            Some(OutPart::Bytes(first)) => {
                let mut b = BytesMut::from(&first[..]);
                b[..4].copy_from_slice(&prefix);
                *first = b.freeze();
            }
            Some(OutPart::File(_)) => unreachable!("a frame starts with its header"),
            None => self.buf[..4].copy_from_slice(&prefix),
        }
        self.flush_buf();
        self
    }
}

fn encode_response_body(frame: &mut OutFrame, resp: &Response) {
    if let Response::Fetch(results) = resp {
        frame.buf.put_u32(results.len() as u32);
        for r in results {
            put_str(&mut frame.buf, &r.topic);
            frame.buf.put_u32(r.partition);
            put_err(&mut frame.buf, &r.error);
            frame.buf.put_i64(r.high_watermark);
            frame.buf.put_i64(r.start_offset);
            frame.put_records(&r.records);
        }
        return;
    }
    let out = &mut frame.buf;
    match resp {
        Response::Error(_) => unreachable!("handled by the caller"),
        Response::ApiVersions(v) => {
            out.put_u32(v.len() as u32);
            for (k, lo, hi) in v {
                out.put_u16(*k);
                out.put_u16(*lo);
                out.put_u16(*hi);
            }
        }
        Response::Done(e) => put_err(out, e),
        Response::Topics(names) => {
            out.put_u32(names.len() as u32);
            for n in names {
                put_str(out, n);
            }
        }
        Response::Stats(counters) => {
            out.put_u32(counters.len() as u32);
            for (name, v) in counters {
                put_str(out, name);
                out.put_u64(*v);
            }
        }
        Response::Producer { producer_id, epoch } => {
            out.put_i64(*producer_id);
            out.put_i16(*epoch);
        }
        Response::Topic {
            error,
            name,
            partitions,
            configs,
        } => {
            put_err(out, error);
            put_str(out, name);
            out.put_u32(partitions.len() as u32);
            for p in partitions {
                out.put_u32(p.partition);
                out.put_u32(p.shard);
                out.put_i64(p.start_offset);
                out.put_i64(p.high_watermark);
                out.put_u64(p.size_bytes);
            }
            put_configs(out, configs);
        }
        Response::Leaders { error, partitions } => {
            put_err(out, error);
            out.put_u32(partitions.len() as u32);
            for p in partitions {
                put_leader(out, p);
            }
        }
        Response::Coordinator { error, coordinator } => {
            put_err(out, error);
            put_leader(out, coordinator);
        }
        Response::Produce(results) => {
            out.put_u32(results.len() as u32);
            for r in results {
                put_str(out, &r.topic);
                out.put_u32(r.partition);
                put_err(out, &r.error);
                out.put_i64(r.base_offset);
            }
        }
        Response::Fetch(_) => unreachable!("encoded above"),
        Response::Offsets(v) => {
            out.put_u32(v.len() as u32);
            for (t, p, e, o, _timestamp) in v {
                put_str(out, t);
                out.put_u32(*p);
                put_err(out, e);
                out.put_i64(*o);
            }
        }
        Response::Joined {
            error,
            generation,
            member_id,
            assignment,
        } => {
            put_err(out, error);
            out.put_i32(*generation);
            put_str(out, member_id);
            out.put_u32(assignment.len() as u32);
            for (t, p) in assignment {
                put_str(out, t);
                out.put_u32(*p);
            }
        }
    }
}

/// Decodes a response frame body (after the length prefix) for a request of `api`.
pub fn decode_response(api: ApiKey, frame: Bytes) -> Result<(u32, Response), DecodeError> {
    let mut r = Reader::new(&frame);
    let request_id = r.u32("request id")?;
    let tag = r.u8("response tag")?;
    if tag == 1 {
        let e = r.err()?;
        r.finish()?;
        return Ok((request_id, Response::Error(e)));
    }
    if tag != 0 {
        return Err(DecodeError::Invalid("response tag"));
    }
    let resp = match api {
        ApiKey::ApiVersions => {
            let n = r.count("apis", 6)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push((r.u16("api")?, r.u16("min")?, r.u16("max")?));
            }
            Response::ApiVersions(v)
        }
        ApiKey::CreateTopic
        | ApiKey::DeleteTopic
        | ApiKey::GroupHeartbeat
        | ApiKey::LeaveGroup
        | ApiKey::CommitOffsets
        | ApiKey::BindShard => Response::Done(r.err()?),
        ApiKey::JoinGroup => {
            let error = r.err()?;
            let generation = r.i32("generation")?;
            let member_id = r.str("member id")?;
            let n = r.count("assignment", 6)?;
            let mut assignment = Vec::with_capacity(n);
            for _ in 0..n {
                assignment.push((r.str("topic")?, r.u32("partition")?));
            }
            Response::Joined {
                error,
                generation,
                member_id,
                assignment,
            }
        }
        ApiKey::ListTopics => {
            let n = r.count("topics", 2)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(r.str("topic")?);
            }
            Response::Topics(v)
        }
        ApiKey::BrokerStats => {
            let n = r.count("counters", 10)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push((r.str("counter")?, r.u64("value")?));
            }
            Response::Stats(v)
        }
        ApiKey::InitProducer => Response::Producer {
            producer_id: r.i64("producer id")?,
            epoch: r.i16("epoch")?,
        },
        ApiKey::DescribeTopic => {
            let error = r.err()?;
            let name = r.str("topic")?;
            let n = r.count("partitions", 32)?;
            let mut partitions = Vec::with_capacity(n);
            for _ in 0..n {
                partitions.push(PartitionInfo {
                    partition: r.u32("partition")?,
                    shard: r.u32("shard")?,
                    start_offset: r.i64("start offset")?,
                    high_watermark: r.i64("high watermark")?,
                    size_bytes: r.u64("size")?,
                });
            }
            Response::Topic {
                error,
                name,
                partitions,
                configs: r.configs()?,
            }
        }
        ApiKey::Leaders => {
            let error = r.err()?;
            let n = r.count("partitions", 16)?;
            let mut partitions = Vec::with_capacity(n);
            for _ in 0..n {
                partitions.push(r.leader()?);
            }
            Response::Leaders { error, partitions }
        }
        ApiKey::FindCoordinator => Response::Coordinator {
            error: r.err()?,
            coordinator: r.leader()?,
        },
        ApiKey::Produce => {
            let n = r.count("results", 16)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(ProduceResult {
                    topic: r.str("topic")?,
                    partition: r.u32("partition")?,
                    error: r.err()?,
                    base_offset: r.i64("base offset")?,
                    record_errors: Vec::new(),
                });
            }
            Response::Produce(v)
        }
        ApiKey::Fetch => {
            let n = r.count("results", 28)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(FetchResult {
                    topic: r.str("topic")?,
                    partition: r.u32("partition")?,
                    error: r.err()?,
                    high_watermark: r.i64("high watermark")?,
                    start_offset: r.i64("start offset")?,
                    records: Records::from(r.bytes("records")?),
                });
            }
            Response::Fetch(v)
        }
        ApiKey::ListOffsets | ApiKey::FetchOffsets => {
            let n = r.count("results", 16)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push((
                    r.str("topic")?,
                    r.u32("partition")?,
                    r.err()?,
                    r.i64("offset")?,
                    -1,
                ));
            }
            Response::Offsets(v)
        }
    };
    r.finish()?;
    Ok((request_id, resp))
}

/// The newest version of `api` this broker speaks: 2 for `CreateTopic` (adds the
/// replication factor), 1 for every other.
pub fn max_version(api: ApiKey) -> u16 {
    match api {
        ApiKey::CreateTopic => 2,
        _ => VERSION_1,
    }
}

/// The APIs and versions this broker speaks, for `ApiVersions`.
pub fn supported_versions() -> Vec<(u16, u16, u16)> {
    ApiKey::ALL
        .iter()
        .map(|k| (*k as u16, VERSION_1, max_version(*k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(frame: &BytesMut) -> Bytes {
        Bytes::copy_from_slice(&frame[LENGTH_PREFIX_BYTES..])
    }

    fn sample_requests() -> Vec<Request> {
        vec![
            Request::ApiVersions { client: "t".into() },
            Request::CreateTopic {
                name: "orders".into(),
                partitions: 8,
                configs: vec![("retention_ms".into(), "1000".into())],
                replication_factor: None,
            },
            Request::CreateTopic {
                name: "replicated".into(),
                partitions: 3,
                configs: vec![],
                replication_factor: Some(3),
            },
            Request::DeleteTopic { name: "x".into() },
            Request::ListTopics,
            Request::BrokerStats,
            Request::InitProducer,
            Request::BindShard { shard: 3 },
            Request::DescribeTopic { name: "y".into() },
            Request::Leaders { topic: "y".into() },
            Request::FindCoordinator {
                group: "billing".into(),
            },
            Request::Produce {
                acks: 1,
                partitions: vec![ProducePartition {
                    topic: "orders".into(),
                    partition: 3,
                    batch: Bytes::from_static(b"batch-bytes"),
                }],
            },
            Request::Fetch {
                max_wait_ms: 500,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partitions: vec![FetchPartition {
                    topic: "orders".into(),
                    partition: 3,
                    offset: 42,
                    max_bytes: 4096,
                }],
            },
            Request::ListOffsets {
                partitions: vec![
                    ("orders".into(), 0, OFFSET_EARLIEST),
                    ("orders".into(), 1, 1234),
                ],
            },
            Request::JoinGroup {
                group: "g".into(),
                member_id: String::new(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 30_000,
                topics: vec!["orders".into(), "audit".into()],
                assignor: "sticky".into(),
            },
            Request::GroupHeartbeat {
                group: "g".into(),
                member_id: "m-1".into(),
                generation: 3,
            },
            Request::LeaveGroup {
                group: "g".into(),
                member_id: "m-1".into(),
            },
            Request::CommitOffsets {
                group: "g".into(),
                member_id: "m-1".into(),
                generation: -1,
                offsets: vec![("orders".into(), 2, 99)],
            },
            Request::FetchOffsets {
                group: "g".into(),
                partitions: vec![("orders".into(), 2)],
            },
        ]
    }

    #[test]
    fn requests_round_trip() {
        for (i, req) in sample_requests().into_iter().enumerate() {
            let f = encode_request(i as u32, &req);
            assert_eq!(frame_len(&f, 1 << 20), Ok(Some(f.len() - 4)));
            let (h, got) = decode_request(body(&f));
            assert_eq!(h.unwrap().request_id, i as u32);
            assert_eq!(got.unwrap(), req);
        }
    }

    #[test]
    fn responses_round_trip() {
        let cases = vec![
            (
                ApiKey::ApiVersions,
                Response::ApiVersions(supported_versions()),
            ),
            (
                ApiKey::CreateTopic,
                Response::Done(WireError::new(ErrorCode::TopicExists, "exists")),
            ),
            (
                ApiKey::BrokerStats,
                Response::Stats(vec![("fetch_file_bytes_spliced".into(), 7)]),
            ),
            (
                ApiKey::InitProducer,
                Response::Producer {
                    producer_id: (1_700_000_000_000 << 8) | 3,
                    epoch: 0,
                },
            ),
            (
                ApiKey::ListTopics,
                Response::Topics(vec!["a".into(), "b".into()]),
            ),
            (ApiKey::BindShard, Response::Done(WireError::none())),
            (
                ApiKey::DescribeTopic,
                Response::Topic {
                    error: WireError::none(),
                    name: "a".into(),
                    partitions: vec![PartitionInfo {
                        partition: 0,
                        shard: 1,
                        start_offset: 0,
                        high_watermark: 10,
                        size_bytes: 999,
                    }],
                    configs: vec![("flush".into(), "every_batch".into())],
                },
            ),
            (
                ApiKey::FindCoordinator,
                Response::Coordinator {
                    error: WireError::none(),
                    coordinator: PartitionLeader {
                        partition: 5,
                        leader: 2,
                        leader_epoch: 7,
                        address: "10.0.0.2:9093".into(),
                        shard: 1,
                    },
                },
            ),
            (
                ApiKey::Leaders,
                Response::Leaders {
                    error: WireError::none(),
                    partitions: vec![PartitionLeader {
                        partition: 0,
                        leader: 2,
                        leader_epoch: 5,
                        address: "10.0.0.2:9093".into(),
                        shard: 1,
                    }],
                },
            ),
            (
                ApiKey::Produce,
                Response::Produce(vec![ProduceResult {
                    topic: "a".into(),
                    partition: 0,
                    error: WireError::none(),
                    base_offset: 7,
                    record_errors: Vec::new(),
                }]),
            ),
            (
                ApiKey::Fetch,
                Response::Fetch(vec![FetchResult {
                    topic: "a".into(),
                    partition: 0,
                    error: WireError::none(),
                    high_watermark: 9,
                    start_offset: 0,
                    records: Records::from(Bytes::from_static(b"xyz")),
                }]),
            ),
            (
                ApiKey::ListOffsets,
                Response::Offsets(vec![("a".into(), 0, WireError::none(), 5, -1)]),
            ),
            (
                ApiKey::Fetch,
                Response::Error(WireError::new(ErrorCode::Malformed, "bad")),
            ),
            (
                ApiKey::JoinGroup,
                Response::Joined {
                    error: WireError::none(),
                    generation: 4,
                    member_id: "m-1".into(),
                    assignment: vec![("orders".into(), 0), ("orders".into(), 5)],
                },
            ),
            (
                ApiKey::FetchOffsets,
                Response::Offsets(vec![("orders".into(), 2, WireError::none(), -1, -1)]),
            ),
            (
                ApiKey::CommitOffsets,
                Response::Done(WireError::new(ErrorCode::IllegalGeneration, "old")),
            ),
        ];
        for (api, resp) in cases {
            let f = encode_response(77, &resp).into_memory().unwrap();
            let (id, got) = decode_response(api, f.slice(4..)).unwrap();
            assert_eq!(id, 77);
            assert_eq!(got, resp);
        }
    }

    #[test]
    fn unknown_api_and_version_keep_the_request_id() {
        let mut f = encode_request(5, &Request::ListTopics);
        f[4..6].copy_from_slice(&99u16.to_be_bytes());
        let (h, r) = decode_request(body(&f));
        assert_eq!(h.unwrap().request_id, 5);
        assert_eq!(r, Err(DecodeError::UnknownApi(99)));
        let mut f = encode_request(6, &Request::ListTopics);
        f[6..8].copy_from_slice(&2u16.to_be_bytes());
        let (h, r) = decode_request(body(&f));
        assert_eq!(h.unwrap().request_id, 6);
        assert!(matches!(
            r,
            Err(DecodeError::UnsupportedVersion { version: 2, .. })
        ));
    }

    /// CreateTopic goes as version 1 unless it carries a replication factor (version
    /// 2); a version-2 frame is refused as truncated without it, version 3 as unknown.
    #[test]
    fn create_topic_is_sent_as_the_oldest_version_that_carries_it() {
        let create = |replication_factor| Request::CreateTopic {
            name: "t".into(),
            partitions: 1,
            configs: vec![],
            replication_factor,
        };
        let v1 = encode_request(1, &create(None));
        let v2 = encode_request(2, &create(Some(3)));
        assert_eq!(&v1[6..8], &1u16.to_be_bytes());
        assert_eq!(&v2[6..8], &2u16.to_be_bytes());
        assert_eq!(decode_request(body(&v2)).1, Ok(create(Some(3))));
        let mut short = v1.clone();
        short[6..8].copy_from_slice(&2u16.to_be_bytes());
        assert!(matches!(
            decode_request(body(&short)).1,
            Err(DecodeError::Truncated(_))
        ));
        let mut v3 = v2.clone();
        v3[6..8].copy_from_slice(&3u16.to_be_bytes());
        assert!(matches!(
            decode_request(body(&v3)).1,
            Err(DecodeError::UnsupportedVersion { max: 2, .. })
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let f = [0x7f, 0xff, 0xff, 0xff];
        assert_eq!(frame_len(&f, 1 << 20), Err(0x7fff_ffff));
        assert_eq!(frame_len(&f[..3], 1 << 20), Ok(None));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let b = Bytes::from(bytes);
            let _ = decode_request(b.clone());
            for api in ApiKey::ALL {
                let _ = decode_response(api, b.clone());
            }
        }

        #[test]
        fn every_truncation_of_a_valid_request_is_an_error(at in 0.0f64..1.0, which in 0usize..64) {
            let requests = sample_requests();
            let req = &requests[which % requests.len()];
            let f = encode_request(1, req);
            let b = body(&f);
            let cut = ((at * b.len() as f64) as usize).min(b.len() - 1);
            let (_, r) = decode_request(b.slice(..cut));
            prop_assert!(r.is_err());
        }

        #[test]
        fn produce_round_trips(topic in "[a-z]{1,20}", partition in any::<u32>(), batch in proptest::collection::vec(any::<u8>(), 0..500)) {
            let req = Request::Produce { acks: 1, partitions: vec![ProducePartition { topic, partition, batch: Bytes::from(batch) }] };
            let f = encode_request(9, &req);
            prop_assert_eq!(decode_request(body(&f)).1.unwrap(), req);
        }
    }
}
