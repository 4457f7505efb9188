//! ApiVersions, Metadata (with topic auto-creation) and DescribeCluster.

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages::{self as km};
use kafka_protocol::protocol::StrBytes;
use ringmq_shard::broker::CoordinatorNode;
use ringmq_shard::error::ErrorKind;
use ringmq_shard::groups;
use ringmq_shard::ops::TopicOp;
use ringmq_shard::topics;

use crate::{
    CLUSTER_ID, KafkaService, NODE_ID, SUPPORTED, TOPIC_UUID_NAMESPACE, s, topic_name, topic_uuid,
};

impl KafkaService {
    pub(crate) fn api_versions(&self) -> km::ApiVersionsResponse {
        let mut r = km::ApiVersionsResponse::default();
        r.api_keys = SUPPORTED
            .iter()
            .map(|&(k, lo, hi)| {
                let mut v = km::api_versions_response::ApiVersion::default();
                v.api_key = k as i16;
                v.min_version = lo;
                v.max_version = hi;
                v
            })
            .collect();
        r
    }

    pub(crate) fn broker(&self) -> (StrBytes, i32) {
        (
            s(&self.opts.advertise_host),
            i32::from(self.opts.advertise_port),
        )
    }

    /// Creates the topics that do not exist (auto-creation), ignoring races with
    /// another creator.
    pub(crate) async fn auto_create(&self, names: &[String]) {
        for name in names {
            if self.shard.has_topic(name) {
                continue;
            }
            if topics::validate_name(name).is_err() {
                continue;
            }
            let r = self
                .shard
                .change_topics(TopicOp::Create {
                    name: name.clone(),
                    partitions: self.opts.default_partitions,
                    configs: Vec::new(),
                    replication_factor: None,
                    validate_only: false,
                })
                .await;
            if let Err(e) = r
                && e.kind != ErrorKind::TopicExists
            {
                tracing::warn!(topic = %name, error = %e.message, "kafka: auto-creating topic failed");
            }
        }
    }

    pub(crate) async fn metadata(
        &self,
        r: km::MetadataRequest,
        version: i16,
    ) -> km::MetadataResponse {
        let requested: Option<Vec<String>> = match r.topics {
            Some(t) if !(version == 0 && t.is_empty()) => Some(
                t.into_iter()
                    .filter_map(|t| t.name.map(|n| n.0.to_string()))
                    .collect(),
            ),
            _ => None,
        };
        // A cluster node that has not learned the cluster's metadata yet (it is starting)
        // knows no topic: it answers LEADER_NOT_AVAILABLE, which clients retry.
        let starting = self.shard.clustered() && self.shard.cluster().is_none();
        let allow_create = (version < 4 || r.allow_auto_topic_creation) && !starting;
        if let Some(names) = &requested
            && allow_create
            && self.opts.auto_create_topics
        {
            self.auto_create(names).await;
        }
        let names = requested.unwrap_or_else(|| self.shard.topic_names());
        let mut resp = km::MetadataResponse::default();
        let cluster = self.shard.cluster();
        resp.brokers = self
            .brokers()
            .into_iter()
            .map(|(id, host, port)| {
                let mut b = km::metadata_response::MetadataResponseBroker::default();
                b.node_id = km::BrokerId(id);
                b.host = host;
                b.port = port;
                b
            })
            .collect();
        if version >= 2 {
            resp.cluster_id = Some(s(CLUSTER_ID));
        }
        if version >= 1 {
            resp.controller_id = km::BrokerId(
                self.controller_id(&resp.brokers.iter().map(|b| b.node_id.0).collect::<Vec<_>>()),
            );
        }
        for name in names {
            let mut t = km::metadata_response::MetadataResponseTopic::default();
            t.name = Some(topic_name(&name));
            match self.shard.topic(&name) {
                None => {
                    t.error_code = if topics::validate_name(&name).is_err() {
                        KErr::InvalidTopicException.code()
                    } else if starting {
                        KErr::LeaderNotAvailable.code()
                    } else {
                        KErr::UnknownTopicOrPartition.code()
                    };
                }
                Some(meta) => {
                    if version >= 10 {
                        t.topic_id = topic_uuid(meta.id);
                    }
                    // Consumers leave internal topics out of pattern subscriptions.
                    if version >= 1 {
                        t.is_internal = name == groups::OFFSETS_TOPIC;
                    }
                    t.partitions = (0..meta.partitions)
                        .map(|p| {
                            let mut mp =
                                km::metadata_response::MetadataResponsePartition::default();
                            mp.partition_index = p as i32;
                            let view = cluster.as_ref().and_then(|c| {
                                c.partition(&ringmq_shard::ops::TopicPartition::new(
                                    name.clone(),
                                    p,
                                ))
                            });
                            match view {
                                None => {
                                    mp.leader_id = km::BrokerId(NODE_ID);
                                    if version >= 7 {
                                        mp.leader_epoch = 0;
                                    }
                                    mp.replica_nodes = vec![km::BrokerId(NODE_ID)];
                                    mp.isr_nodes = vec![km::BrokerId(NODE_ID)];
                                }
                                Some(v) => {
                                    // A node that restarted and has not yet seen its own
                                    // registration replays older metadata: it names no
                                    // leader until it has caught up.
                                    let caught_up = cluster.as_ref().is_some_and(|c| c.registered);
                                    let leader = v.leader.filter(|_| caught_up);
                                    mp.leader_id = km::BrokerId(leader.unwrap_or(-1));
                                    if leader.is_none() {
                                        mp.error_code = KErr::LeaderNotAvailable.code();
                                    }
                                    if version >= 7 {
                                        mp.leader_epoch = v.leader_epoch;
                                    }
                                    mp.replica_nodes =
                                        v.replicas.iter().map(|&r| km::BrokerId(r)).collect();
                                    mp.isr_nodes = v.isr.iter().map(|&r| km::BrokerId(r)).collect();
                                }
                            }
                            mp
                        })
                        .collect();
                }
            }
            resp.topics.push(t);
        }
        resp
    }

    pub(crate) fn describe_cluster(&self) -> km::DescribeClusterResponse {
        let mut resp = km::DescribeClusterResponse::default();
        resp.cluster_id = s(CLUSTER_ID);
        let brokers = self.brokers();
        let ids: Vec<i32> = brokers.iter().map(|b| b.0).collect();
        resp.controller_id = km::BrokerId(self.controller_id(&ids));
        resp.brokers = brokers
            .into_iter()
            .map(|(id, host, port)| {
                let mut b = km::describe_cluster_response::DescribeClusterBroker::default();
                b.broker_id = km::BrokerId(id);
                b.host = host;
                b.port = port;
                b
            })
            .collect();
        resp
    }

    /// The controller a client should send administrative requests to, always one of
    /// `listed` (the brokers of the same answer): a client told of a controller it has no
    /// address for waits for it (librdkafka's admin requests wait until they time out).
    /// In a cluster every node forwards topic changes to the controller quorum's leader,
    /// as a KRaft broker does, so the quorum leader is named when it is listed, else
    /// this node, else any listed node.
    pub(crate) fn controller_id(&self, listed: &[i32]) -> i32 {
        match self.shard.cluster() {
            None => NODE_ID,
            Some(c) => named_controller(c.controller, c.me, listed),
        }
    }

    /// The brokers a Metadata or DescribeCluster answer lists: this one alone, or the
    /// cluster's unfenced nodes and always this node, which the client reached. (A node
    /// that has not yet applied its own registration would otherwise list no broker, or
    /// only others; librdkafka drops its bootstrap brokers on such an answer and, with
    /// none listed, is left with nobody to ask.)
    pub(crate) fn brokers(&self) -> Vec<(i32, StrBytes, i32)> {
        let mut brokers = self.unfenced();
        if let Some(c) = self.shard.cluster()
            && !brokers.iter().any(|b| b.0 == c.me)
        {
            let (host, port) = self.broker();
            brokers.push((c.me, host, port));
            brokers.sort_by_key(|b| b.0);
        }
        brokers
    }

    /// This broker alone, or the cluster's unfenced nodes as the metadata says.
    fn unfenced(&self) -> Vec<(i32, StrBytes, i32)> {
        match self.shard.cluster() {
            None => {
                let (host, port) = self.broker();
                vec![(NODE_ID, host, port)]
            }
            Some(c) => c
                .nodes
                .iter()
                .filter(|(_, n)| !n.fenced)
                .map(|(&id, n)| (id, s(&n.kafka_host), i32::from(n.kafka_port)))
                .collect(),
        }
    }

    /// The node coordinating `group`: this one alone; in a cluster, the leader of the
    /// group's partition of the groups' topic, which holds the group's state. Until
    /// that topic exists (its creation starts here, as in Kafka) or while that
    /// partition has no leader, COORDINATOR_NOT_AVAILABLE with why, which clients retry.
    pub(crate) fn coordinator_for(
        &self,
        group: &str,
    ) -> Result<(i32, StrBytes, i32), (i16, String)> {
        match self.shard.group_coordinator(group) {
            Ok(CoordinatorNode::Single { .. }) => {
                let (host, port) = self.broker();
                Ok((NODE_ID, host, port))
            }
            Ok(CoordinatorNode::Node { id, node, .. }) => {
                if self.shard.cluster().is_some_and(|c| c.me == id) {
                    let (host, port) = self.broker();
                    Ok((id, host, port))
                } else {
                    Ok((id, s(&node.kafka_host), i32::from(node.kafka_port)))
                }
            }
            Err(e) => Err((crate::errors::code(&e), e.message)),
        }
    }

    /// The name of the topic with Kafka id `id`, if there is one.
    pub(crate) fn topic_by_uuid(&self, id: uuid::Uuid) -> Option<String> {
        let (ns, n) = id.as_u64_pair();
        if ns != TOPIC_UUID_NAMESPACE || n == 0 {
            return None;
        }
        let want = u32::try_from(n - 1).ok()?;
        self.shard
            .topic_names()
            .into_iter()
            .find(|name| self.shard.topic(name).is_some_and(|m| m.id == want))
    }
}

/// The controller a cluster node names: the quorum leader `controller` when `listed`,
/// else this node `me` when listed, else the first listed node, else -1.
fn named_controller(controller: Option<i32>, me: i32, listed: &[i32]) -> i32 {
    controller
        .filter(|l| listed.contains(l))
        .or_else(|| listed.contains(&me).then_some(me))
        .or_else(|| listed.first().copied())
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::named_controller;

    /// Regression: a node that had not yet applied the other nodes' registrations listed
    /// itself alone and named node 3 controller; librdkafka's CreateTopics waited for a
    /// broker 3 it had no address for until it timed out.
    #[test]
    fn the_named_controller_is_always_a_listed_broker() {
        assert_eq!(named_controller(Some(3), 1, &[1, 2, 3]), 3);
        assert_eq!(named_controller(Some(3), 1, &[1]), 1);
        assert_eq!(named_controller(None, 1, &[1, 2]), 1);
        assert_eq!(named_controller(Some(3), 1, &[2]), 2);
        assert_eq!(named_controller(Some(3), 1, &[]), -1);
    }
}
