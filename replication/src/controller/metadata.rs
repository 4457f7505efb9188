//! The cluster metadata: the records of the controller's log and the state they build.
//!
//! [`MetadataRecord`]s are what the controller quorum commits; [`ClusterMetadata`] is
//! what applying them in log order gives. Every node holds a copy (the controller
//! voters apply the log, brokers apply what they are sent) and every copy is the same
//! function of the same prefix: [`ClusterMetadata::apply`] is deterministic (BTreeMaps
//! only) and total. A record that no longer fits the state (a change for a deleted
//! topic, a partition change computed from an older partition epoch, a registration of
//! an older incarnation) is a no-op, never an error: the controller may have proposed
//! it from a state that a record committed before it has since changed.
//!
//! Records are JSON (serde) in the log and in snapshots, so a log stays readable with
//! `jq`; the metadata log is small and off the data path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Epoch, ReplicaId, elect};

/// A node (broker) id: the replica id of the partitions it hosts.
pub type NodeId = ReplicaId;

/// One change to the cluster metadata, as committed in the controller's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// A node joined, or restarted with a new incarnation; it is unfenced.
    RegisterNode {
        /// The node.
        node: NodeId,
        /// Bumped at each start of the node process; an older one is stale.
        incarnation: u64,
        /// The Kafka listener advertised to clients, `host:port`.
        kafka: String,
        /// The native protocol listener, `host:port`.
        native: String,
        /// The address other nodes replicate from and send quorum messages to.
        cluster: String,
    },
    /// The node missed its session timeout: it leads nothing and leaves ISRs.
    FenceNode {
        /// The node.
        node: NodeId,
    },
    /// The node is heartbeating again.
    UnfenceNode {
        /// The node.
        node: NodeId,
    },
    /// A new topic and the assignment of its partitions.
    CreateTopic {
        /// The topic name.
        name: String,
        /// The topic id, never reused: it must be at least [`ClusterMetadata::next_topic_id`].
        id: u32,
        /// Per partition, its replicas; the first is the preferred leader.
        replicas: Vec<Vec<NodeId>>,
        /// The topic's configs.
        configs: BTreeMap<String, String>,
    },
    /// The topic is gone.
    DeleteTopic {
        /// The topic name.
        name: String,
    },
    /// Partitions added to a topic, numbered after the existing ones.
    CreatePartitions {
        /// The topic name.
        topic: String,
        /// Per new partition, its replicas; the first is the preferred leader.
        replicas: Vec<Vec<NodeId>>,
    },
    /// The topic's full config map after the change (it replaces the previous one).
    SetTopicConfigs {
        /// The topic name.
        topic: String,
        /// Every config of the topic.
        configs: BTreeMap<String, String>,
    },
    /// A partition's new leader, ISR and epochs (an election, a fencing, an
    /// AlterPartition). Applied only if `partition_epoch` is newer than the current one.
    PartitionChange {
        /// The topic name.
        topic: String,
        /// The partition index.
        partition: u32,
        /// The leader, `None` when no ISR member is live (offline).
        leader: Option<NodeId>,
        /// The leader epoch.
        leader_epoch: Epoch,
        /// The in-sync replicas (never empty).
        isr: Vec<NodeId>,
        /// The partition epoch: bumped by every change.
        partition_epoch: Epoch,
    },
}

/// A node as the metadata knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The incarnation it registered with.
    pub incarnation: u64,
    /// The Kafka listener, `host:port`.
    pub kafka: String,
    /// The native protocol listener, `host:port`.
    pub native: String,
    /// The cluster (replication and quorum) address, `host:port`.
    pub cluster: String,
    /// Missed its session timeout and has not heartbeated since.
    pub fenced: bool,
}

/// A partition's assignment, leader and ISR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// The assigned replicas; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The leader, `None` when offline.
    pub leader: Option<NodeId>,
    /// The leader epoch.
    pub leader_epoch: Epoch,
    /// The in-sync replicas (never empty).
    pub isr: Vec<NodeId>,
    /// The partition epoch (Kafka's partition epoch, checked by AlterPartition).
    pub partition_epoch: Epoch,
}

/// A topic: its id, configs and partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic id, never reused.
    pub id: u32,
    /// The topic's configs.
    pub configs: BTreeMap<String, String>,
    /// The partitions, by index.
    pub partitions: Vec<PartitionInfo>,
}

/// A partition's name: topic and index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    /// The topic name.
    pub topic: String,
    /// The partition index.
    pub partition: u32,
}

/// The cluster metadata: what applying the controller's log gives.
///
/// Owned by whoever applies the log (the controller voter's node thread, or a broker's
/// metadata cache); changed only through [`ClusterMetadata::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    nodes: BTreeMap<NodeId, NodeInfo>,
    topics: BTreeMap<String, TopicInfo>,
    next_topic_id: u32,
    last_applied_index: u64,
}

impl ClusterMetadata {
    /// Empty metadata: no nodes, no topics, nothing applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the record committed at log `index`. Deterministic and total: a record
    /// that no longer fits is a no-op (see the module doc).
    pub fn apply(&mut self, index: u64, record: &MetadataRecord) {
        self.last_applied_index = self.last_applied_index.max(index);
        match record {
            MetadataRecord::RegisterNode {
                node,
                incarnation,
                kafka,
                native,
                cluster,
            } => {
                if self
                    .nodes
                    .get(node)
                    .is_some_and(|n| n.incarnation > *incarnation)
                {
                    return;
                }
                self.nodes.insert(
                    *node,
                    NodeInfo {
                        incarnation: *incarnation,
                        kafka: kafka.clone(),
                        native: native.clone(),
                        cluster: cluster.clone(),
                        fenced: false,
                    },
                );
            }
            MetadataRecord::FenceNode { node } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.fenced = true;
                }
            }
            MetadataRecord::UnfenceNode { node } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.fenced = false;
                }
            }
            MetadataRecord::CreateTopic {
                name,
                id,
                replicas,
                configs,
            } => {
                if self.topics.contains_key(name)
                    || *id < self.next_topic_id
                    || replicas.is_empty()
                    || !replicas.iter().all(|r| valid_assignment(r))
                {
                    return;
                }
                let partitions = replicas.iter().map(|r| self.new_partition(r)).collect();
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        id: *id,
                        configs: configs.clone(),
                        partitions,
                    },
                );
                self.next_topic_id = id.saturating_add(1);
            }
            MetadataRecord::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            MetadataRecord::CreatePartitions { topic, replicas } => {
                if replicas.is_empty() || !replicas.iter().all(|r| valid_assignment(r)) {
                    return;
                }
                let new: Vec<PartitionInfo> =
                    replicas.iter().map(|r| self.new_partition(r)).collect();
                if let Some(t) = self.topics.get_mut(topic) {
                    t.partitions.extend(new);
                }
            }
            MetadataRecord::SetTopicConfigs { topic, configs } => {
                if let Some(t) = self.topics.get_mut(topic) {
                    t.configs = configs.clone();
                }
            }
            MetadataRecord::PartitionChange {
                topic,
                partition,
                leader,
                leader_epoch,
                isr,
                partition_epoch,
            } => {
                let Some(p) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                else {
                    return;
                };
                let fits = *partition_epoch > p.partition_epoch
                    && *leader_epoch >= p.leader_epoch
                    && !isr.is_empty()
                    && isr.iter().all(|r| p.replicas.contains(r))
                    && leader.is_none_or(|l| isr.contains(&l));
                if !fits {
                    return;
                }
                p.leader = *leader;
                p.leader_epoch = *leader_epoch;
                p.isr = isr.clone();
                p.partition_epoch = *partition_epoch;
            }
        }
    }

    /// A new partition: led by its first unfenced replica (the preferred one when it
    /// is unfenced), every replica in the ISR, epochs 0.
    fn new_partition(&self, replicas: &[NodeId]) -> PartitionInfo {
        let live = self.live_nodes();
        PartitionInfo {
            replicas: replicas.to_vec(),
            leader: elect(replicas, &live),
            leader_epoch: 0,
            isr: replicas.to_vec(),
            partition_epoch: 0,
        }
    }

    /// Every known node.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, node: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&node)
    }

    /// The registered nodes that are not fenced, in id order.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.fenced)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Every topic, in name order.
    pub fn topics(&self) -> &BTreeMap<String, TopicInfo> {
        &self.topics
    }

    /// One topic.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// One partition's state.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionInfo> {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
    }

    /// Every partition with its state, in (topic, index) order.
    pub fn partitions(&self) -> impl Iterator<Item = (PartitionId, &PartitionInfo)> {
        self.topics.iter().flat_map(|(name, t)| {
            t.partitions.iter().enumerate().map(|(i, p)| {
                (
                    PartitionId {
                        topic: name.clone(),
                        partition: i as u32,
                    },
                    p,
                )
            })
        })
    }

    /// The partitions `node` leads.
    pub fn partitions_led_by(&self, node: NodeId) -> Vec<PartitionId> {
        self.partitions()
            .filter(|(_, p)| p.leader == Some(node))
            .map(|(id, _)| id)
            .collect()
    }

    /// The partitions `node` is assigned to (leader or follower).
    pub fn partitions_replicated_by(&self, node: NodeId) -> Vec<PartitionId> {
        self.partitions()
            .filter(|(_, p)| p.replicas.contains(&node))
            .map(|(id, _)| id)
            .collect()
    }

    /// The id the next topic gets; ids are never reused.
    pub fn next_topic_id(&self) -> u32 {
        self.next_topic_id
    }

    /// The index of the last record applied (0: none).
    pub fn last_applied_index(&self) -> u64 {
        self.last_applied_index
    }

    /// The metadata registers this process of `node` (its `incarnation`) and has not
    /// fenced it. A node acts as a partition leader only when this holds: after a
    /// restart it replays committed metadata from before the crash, which may name it
    /// leader of an epoch whose unsynced tail it lost; leading that epoch again would
    /// serve a different log under the same epoch, which no epoch truncation can see.
    /// The controller re-registers the new incarnation and moves its leaderships to a
    /// new leader epoch; the node leads again only from that metadata on (the
    /// simulator found this: see docs/replication.md).
    pub fn registers(&self, node: NodeId, incarnation: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.incarnation == incarnation && !n.fenced)
    }
}

/// An assignment is non-empty and names each node once.
fn valid_assignment(replicas: &[NodeId]) -> bool {
    !replicas.is_empty()
        && replicas
            .iter()
            .enumerate()
            .all(|(i, r)| !replicas[..i].contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(node: NodeId, incarnation: u64) -> MetadataRecord {
        MetadataRecord::RegisterNode {
            node,
            incarnation,
            kafka: format!("127.0.0.{node}:9092"),
            native: format!("127.0.0.{node}:9093"),
            cluster: format!("127.0.0.{node}:9094"),
        }
    }

    #[test]
    fn new_topic_led_by_first_unfenced_replica() {
        let mut m = ClusterMetadata::new();
        for (i, n) in [1, 2, 3].into_iter().enumerate() {
            m.apply(i as u64 + 1, &register(n, 1));
        }
        m.apply(4, &MetadataRecord::FenceNode { node: 2 });
        m.apply(
            5,
            &MetadataRecord::CreateTopic {
                name: "t".into(),
                id: 0,
                replicas: vec![vec![1, 2], vec![2, 3]],
                configs: BTreeMap::new(),
            },
        );
        let p0 = m.partition("t", 0).unwrap();
        assert_eq!(p0.leader, Some(1));
        assert_eq!(p0.isr, vec![1, 2]);
        assert_eq!((p0.leader_epoch, p0.partition_epoch), (0, 0));
        assert_eq!(m.partition("t", 1).unwrap().leader, Some(3), "2 is fenced");
        assert_eq!(m.next_topic_id(), 1);
        assert_eq!(m.last_applied_index(), 5);
        assert_eq!(m.partitions_led_by(1).len(), 1);
        assert_eq!(m.partitions_replicated_by(2).len(), 2);
    }

    /// A restarted leader replaying the metadata from before its crash finds itself
    /// leader of its old epoch; that metadata does not register its new incarnation,
    /// so it must not lead until the controller's re-registration moves the partition
    /// to a new leader epoch.
    #[test]
    fn a_restarted_leader_does_not_lead_on_metadata_from_before_its_restart() {
        let mut m = ClusterMetadata::new();
        for (i, n) in [1, 2, 3].into_iter().enumerate() {
            m.apply(i as u64 + 1, &register(n, 1));
        }
        m.apply(
            4,
            &MetadataRecord::CreateTopic {
                name: "t".into(),
                id: 0,
                replicas: vec![vec![1, 2, 3]],
                configs: BTreeMap::new(),
            },
        );
        assert_eq!(m.partition("t", 0).unwrap().leader, Some(1));
        assert!(m.registers(1, 1));
        // Node 1 restarts as incarnation 2 and replays the log above.
        assert!(
            !m.registers(1, 2),
            "replayed metadata names the old process"
        );
        m.apply(5, &register(1, 2));
        assert!(m.registers(1, 2));
        assert!(!m.registers(1, 1), "the old process is gone");
        m.apply(6, &MetadataRecord::FenceNode { node: 1 });
        assert!(!m.registers(1, 2), "fenced");
        assert!(!m.registers(9, 1), "unknown");
    }

    #[test]
    fn records_that_no_longer_fit_are_no_ops() {
        let mut m = ClusterMetadata::new();
        m.apply(1, &register(1, 5));
        m.apply(2, &register(1, 4));
        assert_eq!(
            m.node(1).unwrap().incarnation,
            5,
            "older incarnation ignored"
        );
        let create = MetadataRecord::CreateTopic {
            name: "t".into(),
            id: 3,
            replicas: vec![vec![1]],
            configs: BTreeMap::new(),
        };
        m.apply(3, &create);
        let before = m.clone();
        m.apply(4, &create);
        let change = |pe| MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 0,
            leader: Some(1),
            leader_epoch: 1,
            isr: vec![1],
            partition_epoch: pe,
        };
        m.apply(5, &change(0));
        m.apply(
            6,
            &MetadataRecord::DeleteTopic {
                name: "gone".into(),
            },
        );
        let mut expected = before.clone();
        expected.last_applied_index = 6;
        assert_eq!(m, expected, "duplicate create, stale change, unknown topic");
        m.apply(7, &change(1));
        assert_eq!(m.partition("t", 0).unwrap().leader_epoch, 1);
        m.apply(8, &MetadataRecord::DeleteTopic { name: "t".into() });
        m.apply(9, &change(2));
        assert!(m.topic("t").is_none());
        m.apply(
            10,
            &MetadataRecord::CreateTopic {
                name: "t".into(),
                id: 3,
                replicas: vec![vec![1]],
                configs: BTreeMap::new(),
            },
        );
        assert!(m.topic("t").is_none(), "topic ids are never reused");
    }

    #[test]
    fn json_round_trip() {
        let r = MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 2,
            leader: None,
            leader_epoch: 3,
            isr: vec![1],
            partition_epoch: 4,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<MetadataRecord>(&s).unwrap(), r);
        let mut m = ClusterMetadata::new();
        m.apply(1, &register(7, 1));
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ClusterMetadata>(&s).unwrap(), m);
    }
}
