//! The controller: the cluster metadata as a Raft log held by a quorum of voter nodes,
//! as Kafka's KRaft does (KIP-500, KIP-595, KIP-631). Sans-IO like the rest of the
//! crate: time and messages come in as arguments, records and bytes go out.
//!
//! - [`metadata`]: the records ([`MetadataRecord`]) and the state they build
//!   ([`ClusterMetadata`]), deterministic and total.
//! - [`logic`]: the leader's decisions ([`ControllerLogic`]): sessions and fencing,
//!   elections from the ISR, AlterPartition checks, topic creation and placement.
//! - [`quorum`]: raft-rs behind a small API ([`Quorum`]): tick, step, propose, and a
//!   [`Step`] to persist, send and apply.
//! - [`log_store`]: the durable side ([`MetadataLogStore`]): entries, hard state and
//!   snapshot in a directory, on plain `std::fs`.

pub mod error;
pub mod log_store;
pub mod logic;
pub mod metadata;
pub mod quorum;

pub use error::{ControllerError, ControllerErrorKind};
pub use log_store::MetadataLogStore;
pub use logic::{AlterPartition, ControllerConfig, ControllerLogic, Heartbeat, place};
pub use metadata::{
    ClusterMetadata, MetadataRecord, NodeId, NodeInfo, PartitionId, PartitionInfo, TopicInfo,
};
pub use quorum::{
    HardState, LogEntry, PROPOSAL_BYTES_MAX, Quorum, QuorumConfig, Recovered, Snapshot, Step,
};
