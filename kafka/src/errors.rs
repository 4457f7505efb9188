//! Kafka's error codes for the broker's errors, from `kafka-protocol`'s `ResponseError`.

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::protocol::StrBytes;
use ringmq_shard::error::{BrokerError, ErrorKind};

use crate::s;

/// Kafka's code for a broker error kind.
pub fn kafka_code(kind: ErrorKind) -> i16 {
    use ErrorKind as K;
    let e = match kind {
        K::UnknownTopic | K::UnknownPartition => KErr::UnknownTopicOrPartition,
        K::TopicExists => KErr::TopicAlreadyExists,
        K::InvalidTopic => KErr::InvalidTopicException,
        K::InvalidPartitions => KErr::InvalidPartitions,
        K::InvalidConfig => KErr::InvalidConfig,
        K::InvalidReplicationFactor => KErr::InvalidReplicationFactor,
        K::InvalidRequest => KErr::InvalidRequest,
        K::CorruptBatch => KErr::CorruptMessage,
        K::MessageTooLarge => KErr::MessageTooLarge,
        K::InvalidRecord => KErr::InvalidRecord,
        K::InvalidTimestamp => KErr::InvalidTimestamp,
        K::InvalidRequiredAcks => KErr::InvalidRequiredAcks,
        K::NotEnoughReplicas => KErr::NotEnoughReplicas,
        K::NotEnoughReplicasAfterAppend => KErr::NotEnoughReplicasAfterAppend,
        K::LeaderNotAvailable => KErr::LeaderNotAvailable,
        K::ProducerFenced => KErr::InvalidProducerEpoch,
        K::OutOfOrderSequence => KErr::OutOfOrderSequenceNumber,
        K::UnknownProducer => KErr::UnknownProducerId,
        K::OffsetOutOfRange => KErr::OffsetOutOfRange,
        K::NotLeader => KErr::NotLeaderOrFollower,
        K::FencedLeaderEpoch => KErr::FencedLeaderEpoch,
        K::UnknownLeaderEpoch => KErr::UnknownLeaderEpoch,
        K::CoordinatorNotAvailable | K::LimitReached => KErr::CoordinatorNotAvailable,
        K::NotCoordinator => KErr::NotCoordinator,
        K::CoordinatorLoadInProgress => KErr::CoordinatorLoadInProgress,
        K::InvalidGroupId => KErr::InvalidGroupId,
        K::GroupIdNotFound => KErr::GroupIdNotFound,
        K::UnknownMember => KErr::UnknownMemberId,
        K::MemberIdRequired => KErr::MemberIdRequired,
        K::IllegalGeneration => KErr::IllegalGeneration,
        K::RebalanceInProgress => KErr::RebalanceInProgress,
        K::InconsistentGroupProtocol => KErr::InconsistentGroupProtocol,
        K::InvalidSessionTimeout => KErr::InvalidSessionTimeout,
        K::FencedInstanceId => KErr::FencedInstanceId,
        K::NonEmptyGroup => KErr::NonEmptyGroup,
        K::GroupSubscribedToTopic => KErr::GroupSubscribedToTopic,
        K::GroupMaxSizeReached => KErr::GroupMaxSizeReached,
        K::Storage => KErr::KafkaStorageError,
        K::Unavailable => KErr::LeaderNotAvailable,
        K::Timeout => KErr::RequestTimedOut,
        K::Unsupported => KErr::UnsupportedVersion,
        K::Internal => KErr::UnknownServerError,
    };
    e.code()
}

/// Kafka's code for a broker error.
pub(crate) fn code(e: &BrokerError) -> i16 {
    kafka_code(e.kind)
}

/// Kafka's code and message for a result.
pub(crate) fn code_msg<T>(r: &Result<T, BrokerError>) -> (i16, Option<StrBytes>) {
    match r {
        Ok(_) => (0, None),
        Err(e) => (code(e), Some(s(&e.message))),
    }
}
