//! The controller's typed error: a kind to map to each protocol's error codes and a
//! message that says what was expected.

use std::fmt;

/// What went wrong, to map to Kafka's error codes (and the native protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControllerErrorKind {
    /// This node is not the controller quorum's leader (Kafka's NOT_CONTROLLER).
    NotController,
    /// The topic or the partition does not exist (UNKNOWN_TOPIC_OR_PARTITION).
    UnknownTopicOrPartition,
    /// A topic of that name exists (TOPIC_ALREADY_EXISTS).
    TopicExists,
    /// The topic name is not valid (INVALID_TOPIC_EXCEPTION).
    InvalidTopic,
    /// A partition count that is zero, too large, or not larger than the current one
    /// (INVALID_PARTITIONS).
    InvalidPartitions,
    /// A replication factor of zero or larger than the unfenced nodes
    /// (INVALID_REPLICATION_FACTOR).
    InvalidReplicationFactor,
    /// An AlterPartition whose leader epoch is not the current one (FENCED_LEADER_EPOCH).
    FencedLeaderEpoch,
    /// An AlterPartition whose partition epoch is not the current one
    /// (INVALID_UPDATE_VERSION).
    InvalidUpdateVersion,
    /// An AlterPartition from a node that does not lead the partition (NOT_LEADER_OR_FOLLOWER).
    NotLeader,
    /// An AlterPartition adding a replica that is fenced or not assigned
    /// (INELIGIBLE_REPLICA).
    IneligibleReplica,
    /// A request that breaks a rule not covered above, e.g. an ISR without its leader
    /// (INVALID_REQUEST).
    InvalidRequest,
    /// A peer's quorum message that could not be decoded or does not fit (the bytes
    /// are refused; nothing changed).
    InvalidMessage,
    /// The quorum refused a proposal (too large, too many uncommitted entries); retry.
    ProposalDropped,
    /// The quorum was fed while a [`crate::controller::Step`] was out (between
    /// `ready()` and `advance()`), which raft-rs forbids: a bug in the driver.
    StepPending,
    /// The quorum's recovered state or its log is inconsistent (e.g. a committed entry
    /// that does not decode): stop the node.
    Corrupt,
}

impl ControllerErrorKind {
    /// For an AlterPartition refused with this kind: the controller found the
    /// request's leader and partition epochs current and refused it on its content, so
    /// neither this request nor an earlier copy of it was applied; the leader may
    /// forget the proposal ([`crate::LeaderState::on_proposal_rejected`]). Any other
    /// answer, and no answer, leaves the outcome unknown: a stale partition epoch may
    /// be the mark of an earlier copy that was applied, and a proposal accepted by a
    /// controller leader that lost its leadership may still be committed by the next.
    /// Then the leader keeps the proposal (its maximal ISR keeps an added replica),
    /// resends it, and the committed metadata settles it
    /// ([`crate::LeaderState::on_isr_committed`]), as Kafka's leader does (KIP-497).
    pub fn refuses_alter_partition_for_good(self) -> bool {
        matches!(
            self,
            ControllerErrorKind::IneligibleReplica
                | ControllerErrorKind::InvalidRequest
                | ControllerErrorKind::UnknownTopicOrPartition
        )
    }
}

/// A controller error: its kind and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerError {
    /// What went wrong.
    pub kind: ControllerErrorKind,
    /// What was expected and what was found.
    pub message: String,
}

impl ControllerError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ControllerErrorKind, message: impl Into<String>) -> Self {
        ControllerError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ControllerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ControllerError {}
