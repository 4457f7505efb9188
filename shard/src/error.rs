//! The broker's own errors: what went wrong ([`ErrorKind`]) and a message for the
//! client. Front-ends map a kind to their protocol's code (the Kafka front-end to
//! Kafka's error codes, the native one to [`ringmq_net::codec::ErrorCode`]); nothing
//! here knows a wire format.

use std::fmt;

/// What went wrong, in the broker's terms. Each front-end maps every kind to a code of
/// its protocol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ErrorKind {
    // Topics and partitions.
    /// No such topic.
    UnknownTopic,
    /// The topic exists, but not this partition.
    UnknownPartition,
    /// A topic of that name exists already.
    TopicExists,
    /// The topic name is not valid.
    InvalidTopic,
    /// A partition count out of range.
    InvalidPartitions,
    /// A topic config that is unknown or has a bad value.
    InvalidConfig,
    /// A replication factor the cluster cannot give.
    InvalidReplicationFactor,
    /// Any other argument out of range or inconsistent.
    InvalidRequest,

    // Produce.
    /// A batch failed validation (CRC, length, magic, records).
    CorruptBatch,
    /// A batch larger than the topic's `max.message.bytes`.
    MessageTooLarge,
    /// A record breaks a rule of the topic (a compacted topic needs keys).
    InvalidRecord,
    /// A record's timestamp is outside what the topic accepts.
    InvalidTimestamp,
    /// acks other than none, leader or all.
    InvalidRequiredAcks,
    /// Fewer in-sync replicas than `min.insync.replicas` (acks=all).
    NotEnoughReplicas,
    /// The in-sync replicas fell below `min.insync.replicas` while an acks=all
    /// produce waited: it was appended, but is not acknowledged as replicated.
    NotEnoughReplicasAfterAppend,
    /// An idempotent producer's epoch is older than its current one.
    ProducerFenced,
    /// An idempotent producer's batch does not continue its sequence.
    OutOfOrderSequence,
    /// The producer id is unknown here (never issued, or its state is gone).
    UnknownProducer,

    // Reads and replicas.
    /// The offset is outside the log.
    OffsetOutOfRange,
    /// This broker does not lead the partition.
    NotLeader,
    /// The partition has no leader at the moment (an election is under way).
    LeaderNotAvailable,
    /// The reader's leader epoch is older than the partition's.
    FencedLeaderEpoch,
    /// The reader's leader epoch is newer than the partition's.
    UnknownLeaderEpoch,

    // Consumer groups.
    /// The coordinator cannot serve the group now (its log cannot be written).
    CoordinatorNotAvailable,
    /// This node does not coordinate the group (in a cluster: it does not lead the
    /// group's partition of the offsets topic): find the coordinator again.
    NotCoordinator,
    /// This node is loading the group's state (it just became leader of the group's
    /// partition of the offsets topic): retry shortly.
    CoordinatorLoadInProgress,
    /// The group id is empty or not valid.
    InvalidGroupId,
    /// No such group.
    GroupIdNotFound,
    /// The member is not (or no longer) in the group.
    UnknownMember,
    /// A first join: retry with the member id given.
    MemberIdRequired,
    /// The request's generation is not the group's current one.
    IllegalGeneration,
    /// The group is rebalancing: join again.
    RebalanceInProgress,
    /// No protocol (assignor) is shared by the members.
    InconsistentGroupProtocol,
    /// A session timeout out of the allowed range.
    InvalidSessionTimeout,
    /// A static member replaced by a newer instance with the same instance id.
    FencedInstanceId,
    /// The group has members (it cannot be deleted).
    NonEmptyGroup,
    /// The group consumes the topic whose offsets were to be deleted.
    GroupSubscribedToTopic,
    /// The group has as many members as it may.
    GroupMaxSizeReached,

    // The broker.
    /// A limit of the broker was reached (groups, pending member ids, memory): retry
    /// later or raise the setting the message names.
    LimitReached,
    /// Storage failed; the request may be retried.
    Storage,
    /// The broker or the shard that owns the data cannot answer now; retry.
    Unavailable,
    /// The request timed out.
    Timeout,
    /// A feature this broker does not have.
    Unsupported,
    /// A failure that fits no other kind (a bug: the message says more).
    Internal,
}

/// A broker error: its kind and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Why, for the client and the log.
    pub message: String,
}

impl BrokerError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// UnknownTopic, naming the topic.
    pub fn unknown_topic(topic: &str) -> Self {
        Self::new(ErrorKind::UnknownTopic, format!("unknown topic {topic:?}"))
    }

    /// Unavailable: shard `shard` did not answer.
    pub fn shard_silent(shard: u32) -> Self {
        Self::new(
            ErrorKind::Unavailable,
            format!("shard {shard} did not answer"),
        )
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for BrokerError {}

impl From<&ringmq_storage::Error> for BrokerError {
    fn from(e: &ringmq_storage::Error) -> Self {
        use ringmq_storage::{BatchError, Error as E};
        let kind = match e {
            E::InvalidBatch(BatchError::TooLarge { .. }) => ErrorKind::MessageTooLarge,
            E::InvalidBatch(_) => ErrorKind::CorruptBatch,
            E::OffsetOutOfRange { .. } => ErrorKind::OffsetOutOfRange,
            E::Closed => ErrorKind::Unavailable,
            _ => ErrorKind::Storage,
        };
        Self::new(kind, e.to_string())
    }
}

/// A result with a [`BrokerError`].
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
