//! ApiVersions, Metadata (with topic auto-creation) and DescribeCluster.

use kafka_protocol::ResponseError as KErr;
use kafka_protocol::messages::{self as km};
use kafka_protocol::protocol::StrBytes;
use ringmq_shard::error::ErrorKind;
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
        let allow_create = version < 4 || r.allow_auto_topic_creation;
        if let Some(names) = &requested
            && allow_create
            && self.opts.auto_create_topics
        {
            self.auto_create(names).await;
        }
        let names = requested.unwrap_or_else(|| self.shard.topic_names());
        let mut resp = km::MetadataResponse::default();
        let (host, port) = self.broker();
        let mut b = km::metadata_response::MetadataResponseBroker::default();
        b.node_id = km::BrokerId(NODE_ID);
        b.host = host;
        b.port = port;
        resp.brokers = vec![b];
        if version >= 2 {
            resp.cluster_id = Some(s(CLUSTER_ID));
        }
        if version >= 1 {
            resp.controller_id = km::BrokerId(NODE_ID);
        }
        for name in names {
            let mut t = km::metadata_response::MetadataResponseTopic::default();
            t.name = Some(topic_name(&name));
            match self.shard.topic(&name) {
                None => {
                    t.error_code = if topics::validate_name(&name).is_err() {
                        KErr::InvalidTopicException.code()
                    } else {
                        KErr::UnknownTopicOrPartition.code()
                    };
                }
                Some(meta) => {
                    if version >= 10 {
                        t.topic_id = topic_uuid(meta.id);
                    }
                    t.partitions = (0..meta.partitions)
                        .map(|p| {
                            let mut mp =
                                km::metadata_response::MetadataResponsePartition::default();
                            mp.partition_index = p as i32;
                            mp.leader_id = km::BrokerId(NODE_ID);
                            if version >= 7 {
                                mp.leader_epoch = 0;
                            }
                            mp.replica_nodes = vec![km::BrokerId(NODE_ID)];
                            mp.isr_nodes = vec![km::BrokerId(NODE_ID)];
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
        resp.controller_id = km::BrokerId(NODE_ID);
        let (host, port) = self.broker();
        let mut b = km::describe_cluster_response::DescribeClusterBroker::default();
        b.broker_id = km::BrokerId(NODE_ID);
        b.host = host;
        b.port = port;
        resp.brokers = vec![b];
        resp
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
