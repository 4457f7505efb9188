//! What a shard knows of the cluster: the nodes, the controller, and each partition's
//! replicas, leader, leader epoch and ISR, as the controller's metadata log last said
//! ([`ClusterView`]); and the seam through which topic changes go to the controller
//! ([`TopicAuthority`]).
//!
//! The view is plain data built by the cluster driver from the metadata it applied,
//! and given to every shard in order ([`crate::broker::Shard::apply_cluster`]); each
//! shard then opens the partitions it hosts and gives each its role. Without a view the
//! shard is a single node, as before.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::error::BrokerError;
use crate::ops::{TopicOp, TopicPartition};
use crate::topics::TopicTable;

/// A node of the cluster, as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Kafka listener's advertised host.
    pub kafka_host: String,
    /// The Kafka listener's advertised port.
    pub kafka_port: u16,
    /// The native listener (`host:port`).
    pub native: String,
    /// Fenced by the controller (stopped heartbeating, or not yet registered).
    pub fenced: bool,
}

/// One partition's replication, as the controller decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// The assigned replicas, the preferred leader first.
    pub replicas: Vec<i32>,
    /// The leader (`None`: offline).
    pub leader: Option<i32>,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The in-sync replicas.
    pub isr: Vec<i32>,
    /// The partition epoch (bumped by every ISR or leader change).
    pub partition_epoch: i32,
}

/// The cluster as one node sees it; see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's id.
    pub me: i32,
    /// Every registered node.
    pub nodes: BTreeMap<i32, NodeInfo>,
    /// The controller quorum's leader, if known.
    pub controller: Option<i32>,
    /// The topics, with the placement of each partition on this node's shards.
    pub topics: TopicTable,
    /// Every partition's replication.
    pub partitions: BTreeMap<TopicPartition, PartitionView>,
    /// The index of the last metadata record applied.
    pub applied_index: u64,
    /// The metadata registers this node's current process (its incarnation) unfenced.
    /// Until it does, the node leads nothing: metadata replayed after a restart may
    /// still name it leader of an epoch whose unsynced tail it lost.
    pub registered: bool,
}

impl ClusterView {
    /// Whether this node holds a replica of `tp`.
    pub fn hosts(&self, tp: &TopicPartition) -> bool {
        self.partitions
            .get(tp)
            .is_some_and(|p| p.replicas.contains(&self.me))
    }

    /// The partition's replication, if it exists.
    pub fn partition(&self, tp: &TopicPartition) -> Option<&PartitionView> {
        self.partitions.get(tp)
    }
}

/// Where topic changes go in a cluster: the controller. Implemented by the cluster
/// driver; the metadata shard calls it instead of editing its own table. The answer
/// comes once this node has applied the change.
pub trait TopicAuthority {
    /// Asks the controller for `op`, with `replication_factor` for a new topic.
    fn change(&self, op: TopicOp) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>>>>;
}
