//! ringmq's replication rules for one partition, Kafka's model (leaders, followers,
//! in-sync replicas, high watermark, leader epochs), as plain code: no executor, no
//! clock, no sockets. Inputs are events with the time passed in (milliseconds as
//! `u64`); outputs are verdicts and effects the caller carries out (append, reply,
//! send a fetch, propose an ISR change, truncate). A test or a seeded simulator drives
//! it directly.
//!
//! The map:
//! - [`LeaderState`] ([`leader`]): the leader's view of a partition: the assignment,
//!   the ISR and the maximal ISR, each follower's log end and durable offset and
//!   last-caught-up time, the high watermark, acks=all waiters. Events:
//!   [`LeaderState::on_follower_fetch`] (verdict [`FetchVerdict`]),
//!   [`LeaderState::on_produce`] ([`ProduceVerdict`]), [`LeaderState::tick`],
//!   [`LeaderState::on_isr_committed`]; each returns [`Effects`]: the new high
//!   watermark, waiters completed or failed, and maybe an [`IsrProposal`] for the
//!   controller.
//! - [`EpochHistory`] ([`epochs`]): (leader epoch, start offset) pairs, Kafka's
//!   OffsetsForLeaderEpoch answer ([`EpochHistory::end_offset_for`]) and the follower's
//!   truncation rule ([`truncation_point`], KIP-101 and KIP-279) with its verdict
//!   [`Truncation`].
//! - [`FollowerState`] ([`follower`]): the follower's log end, the high watermark it
//!   learned, the leader epoch it follows, the request it sends next
//!   ([`FollowerState::next_request`]) and the checks on the answers it gets.
//! - [`elect`] ([`election`]): a new leader only from the ISR (no unclean election).
//! - [`controller`]: the cluster metadata as a Raft log, as KRaft does. The records
//!   ([`MetadataRecord`]) and the state they build ([`ClusterMetadata`]); the controller
//!   leader's decisions ([`ControllerLogic`]: fencing, elections, AlterPartition checks,
//!   placement); the quorum ([`Quorum`], raft-rs behind a small API: `tick`, `step`,
//!   `propose`, then `ready` → persist, send, apply → `advance`); its durable log
//!   ([`MetadataLogStore`]).
//!
//! ```
//! use ringmq_replication::*;
//!
//! let config = LeaderConfig { min_insync_replicas: 2, replica_lag_time_max_ms: 3_000,
//!     durability: Durability::LogEnd };
//! let mut leader = LeaderState::new(LeaderInit { me: 1, leader_epoch: 5,
//!     partition_epoch: 7, assignment: vec![1, 2, 3], isr: vec![1, 2, 3],
//!     log_end_offset: 0, durable_offset: 0, high_watermark: 0 }, config);
//! let ProduceVerdict::Wait { waiter, .. } = leader.on_produce(9) else { panic!() };
//! let fetch = |replica| FollowerFetch { replica, fetch_offset: 10, durable_offset: 10,
//!     leader_epoch: 5 };
//! leader.on_follower_fetch(&fetch(2), 100);
//! let FetchVerdict::Ok(effects) = leader.on_follower_fetch(&fetch(3), 100) else { panic!() };
//! assert_eq!(effects.high_watermark, 10);
//! assert_eq!(effects.completed, vec![waiter]);
//! ```

#![deny(missing_docs)]

pub mod controller;
pub mod election;
pub mod epochs;
pub mod follower;
pub mod leader;

pub use controller::{
    AlterPartition, ClusterMetadata, ControllerConfig, ControllerError, ControllerErrorKind,
    ControllerLogic, HardState, Heartbeat, LogEntry, MetadataLogStore, MetadataRecord, NodeId,
    NodeInfo, PartitionId, PartitionInfo, Quorum, QuorumConfig, Recovered, Snapshot, Step,
    TopicInfo,
};
pub use election::elect;
pub use epochs::{EpochEndOffset, EpochEntry, EpochHistory, Truncation, truncation_point};
pub use follower::{
    BatchMeta, FetchResponse, FollowerRequest, FollowerState, ResponseVerdict, TruncateStep,
};
pub use leader::{
    Durability, Effects, FetchVerdict, FollowerFetch, IsrProposal, LeaderConfig, LeaderInit,
    LeaderState, ProduceVerdict, WaiterId,
};

/// A broker (replica) id, as Kafka's `int32` broker ids.
pub type ReplicaId = i32;
/// A leader epoch or partition epoch, as Kafka's `int32`.
pub type Epoch = i32;
/// An offset in a partition's log.
pub type Offset = i64;

/// Kafka's undefined epoch (`-1`), in OffsetsForLeaderEpoch answers.
pub const UNDEFINED_EPOCH: Epoch = -1;
/// Kafka's undefined end offset (`-1`), in OffsetsForLeaderEpoch answers.
pub const UNDEFINED_OFFSET: Offset = -1;

/// How a request's leader epoch compares with the receiver's (KIP-320 fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochCheck {
    /// Same epoch: serve it.
    Current,
    /// Older than ours: refuse with FENCED_LEADER_EPOCH.
    Fenced,
    /// Newer than ours: refuse with UNKNOWN_LEADER_EPOCH; the receiver must catch up
    /// with the controller's metadata.
    Unknown,
}

/// Compares the epoch a request carries with the receiver's current leader epoch.
pub fn check_epoch(request_epoch: Epoch, current_epoch: Epoch) -> EpochCheck {
    use std::cmp::Ordering::*;
    match request_epoch.cmp(&current_epoch) {
        Equal => EpochCheck::Current,
        Less => EpochCheck::Fenced,
        Greater => EpochCheck::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_compares_epochs() {
        assert_eq!(check_epoch(5, 5), EpochCheck::Current);
        assert_eq!(check_epoch(4, 5), EpochCheck::Fenced);
        assert_eq!(check_epoch(6, 5), EpochCheck::Unknown);
    }
}
