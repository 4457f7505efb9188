//! The version matrix: for every API the Kafka listener advertises and every version
//! of it, a request built with `kafka-protocol` at that version goes to a real broker,
//! the answer is decoded at the same version and checked for meaning (the data asked
//! for, not only "no error").

mod common;
mod kafka_wire;

use std::collections::BTreeSet;

use bytes::Bytes;
use kafka_protocol::messages::{self as km, ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::{Encodable, Message};
use kafka_protocol::records::RecordBatchDecoder;
use ringmq_storage::batch::{self, Record};

use common::Broker;
use kafka_wire::*;

/// Every API the matrix checks (the group APIs last). ApiVersions must advertise
/// exactly these.
const COVERED: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::DeleteRecords,
    ApiKey::DescribeConfigs,
    ApiKey::AlterConfigs,
    ApiKey::DescribeCluster,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::InitProducerId,
    ApiKey::CreatePartitions,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
];

/// The group APIs: the last ten of [`COVERED`].
const GROUP_APIS: &[ApiKey] = COVERED.split_at(COVERED.len() - 10).1;
const _: () = assert!(matches!(GROUP_APIS[0], ApiKey::JoinGroup));

fn tn(name: &str) -> km::TopicName {
    km::TopicName(s(name))
}

fn one_record(value: &str, timestamp_ms: i64) -> Bytes {
    Bytes::from(batch::encode_batch(&[Record {
        key: Some(b"k".to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![("h".into(), b"v".to_vec())],
        timestamp_ms,
    }]))
}

struct Matrix {
    k: Kafka,
    port: i32,
    /// Each API's advertised range.
    ranges: Vec<(ApiKey, i16, i16)>,
}

impl Matrix {
    fn max(&self, api: ApiKey) -> i16 {
        self.ranges
            .iter()
            .find(|r| r.0 == api)
            .expect("advertised")
            .2
    }

    fn metadata(&mut self, topic: &str) -> km::metadata_response::MetadataResponseTopic {
        let mut t = km::metadata_request::MetadataRequestTopic::default();
        t.name = Some(tn(topic));
        let mut q = km::MetadataRequest::default();
        q.topics = Some(vec![t]);
        q.allow_auto_topic_creation = false;
        match self.k.call(12, RequestKind::Metadata(q)) {
            ResponseKind::Metadata(r) => r.topics.into_iter().next().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn list_offset(&mut self, topic: &str, partition: i32, spec: i64) -> (i64, i64) {
        let r = self.list_offsets_at(6, topic, partition, spec);
        (r.offset, r.timestamp)
    }

    fn list_offsets_at(
        &mut self,
        v: i16,
        topic: &str,
        partition: i32,
        spec: i64,
    ) -> km::list_offsets_response::ListOffsetsPartitionResponse {
        let mut p = km::list_offsets_request::ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = spec;
        if v >= 4 {
            p.current_leader_epoch = -1;
        }
        let mut t = km::list_offsets_request::ListOffsetsTopic::default();
        t.name = tn(topic);
        t.partitions = vec![p];
        let mut q = km::ListOffsetsRequest::default();
        q.replica_id = km::BrokerId(-1);
        q.topics = vec![t];
        if v >= 10 {
            q.timeout_ms = 5000;
        }
        match self.k.call(v, RequestKind::ListOffsets(q)) {
            ResponseKind::ListOffsets(r) => {
                let p = r.topics[0].partitions[0].clone();
                assert_eq!(p.error_code, 0, "ListOffsets v{v} {topic} spec {spec}");
                p
            }
            other => panic!("{other:?}"),
        }
    }

    fn describe_config(&mut self, topic: &str, name: &str) -> (String, i8) {
        let mut res = km::describe_configs_request::DescribeConfigsResource::default();
        res.resource_type = 2;
        res.resource_name = s(topic);
        res.configuration_keys = Some(vec![s(name)]);
        let mut q = km::DescribeConfigsRequest::default();
        q.resources = vec![res];
        match self.k.call(4, RequestKind::DescribeConfigs(q)) {
            ResponseKind::DescribeConfigs(r) => {
                let c = &r.results[0].configs[0];
                (c.value.as_ref().unwrap().to_string(), c.config_source)
            }
            other => panic!("{other:?}"),
        }
    }

    fn check(&mut self, api: ApiKey, v: i16) {
        match api {
            ApiKey::ApiVersions => {
                let mut q = km::ApiVersionsRequest::default();
                if v >= 3 {
                    q.client_software_name = s("matrix");
                    q.client_software_version = s("1");
                }
                match self.k.call(v, RequestKind::ApiVersions(q)) {
                    ResponseKind::ApiVersions(r) => {
                        assert_eq!(r.error_code, 0);
                        let keys: BTreeSet<i16> = r.api_keys.iter().map(|a| a.api_key).collect();
                        let want: BTreeSet<i16> = COVERED.iter().map(|a| *a as i16).collect();
                        assert_eq!(keys, want, "ApiVersions v{v}");
                    }
                    other => panic!("{other:?}"),
                }
            }
            ApiKey::Metadata => {
                let mut q = km::MetadataRequest::default();
                let mut t = km::metadata_request::MetadataRequestTopic::default();
                t.name = Some(tn("matrix"));
                q.topics = Some(vec![t]);
                if v >= 4 {
                    q.allow_auto_topic_creation = false;
                }
                match self.k.call(v, RequestKind::Metadata(q)) {
                    ResponseKind::Metadata(r) => {
                        assert_eq!(r.brokers.len(), 1, "v{v}");
                        assert_eq!(r.brokers[0].port, self.port, "v{v}");
                        let t = &r.topics[0];
                        assert_eq!(t.error_code, 0, "v{v}");
                        assert_eq!(t.partitions.len(), 2, "v{v}");
                        assert!(t.partitions.iter().all(|p| p.leader_id.0 == 0));
                        if v >= 10 {
                            assert!(!t.topic_id.is_nil(), "v{v}: topic id");
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
            ApiKey::CreateTopics => {
                let name = format!("ct-{v}");
                let mut t = km::create_topics_request::CreatableTopic::default();
                t.name = tn(&name);
                t.num_partitions = 3;
                t.replication_factor = 1;
                let mut c = km::create_topics_request::CreatableTopicConfig::default();
                c.name = s("retention.ms");
                c.value = Some(s("3600000"));
                t.configs = vec![c];
                let mut q = km::CreateTopicsRequest::default();
                q.topics = vec![t];
                q.timeout_ms = 5000;
                match self.k.call(v, RequestKind::CreateTopics(q)) {
                    ResponseKind::CreateTopics(r) => {
                        let t = &r.topics[0];
                        assert_eq!(t.error_code, 0, "v{v}");
                        if v >= 5 {
                            assert_eq!(t.num_partitions, 3);
                            assert!(t.configs.as_ref().unwrap().iter().any(|c| {
                                c.name.as_str() == "retention.ms"
                                    && c.value.as_deref() == Some("3600000")
                            }));
                        }
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(self.metadata(&name).partitions.len(), 3);
            }
            ApiKey::DeleteTopics => {
                let name = format!("dt-{v}");
                create_topic(&mut self.k, &name, 1, &[]);
                let mut q = km::DeleteTopicsRequest::default();
                q.timeout_ms = 5000;
                if v >= 6 {
                    let mut t = km::delete_topics_request::DeleteTopicState::default();
                    t.name = Some(tn(&name));
                    q.topics = vec![t];
                } else {
                    q.topic_names = vec![tn(&name)];
                }
                match self.k.call(v, RequestKind::DeleteTopics(q)) {
                    ResponseKind::DeleteTopics(r) => assert_eq!(r.responses[0].error_code, 0),
                    other => panic!("{other:?}"),
                }
                assert_eq!(self.metadata(&name).error_code, UNKNOWN_TOPIC_OR_PARTITION);
            }
            ApiKey::Produce => {
                let topic_id = self.metadata("matrix").topic_id;
                let before = self.list_offset("matrix", 0, -1).0;
                let mut p = km::produce_request::PartitionProduceData::default();
                p.index = 0;
                p.records = Some(one_record(&format!("produce-v{v}"), 1_000 + i64::from(v)));
                let mut t = km::produce_request::TopicProduceData::default();
                if v >= 13 {
                    t.topic_id = topic_id;
                } else {
                    t.name = tn("matrix");
                }
                t.partition_data = vec![p];
                let mut q = km::ProduceRequest::default();
                q.acks = -1;
                q.timeout_ms = 5000;
                q.topic_data = vec![t];
                match self.k.call(v, RequestKind::Produce(q)) {
                    ResponseKind::Produce(r) => {
                        let t = &r.responses[0];
                        if v >= 13 {
                            assert_eq!(t.topic_id, topic_id);
                        } else {
                            assert_eq!(t.name.0.as_str(), "matrix");
                        }
                        let p = &t.partition_responses[0];
                        assert_eq!(p.error_code, 0, "v{v}");
                        assert_eq!(p.base_offset, before, "v{v}");
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(self.list_offset("matrix", 0, -1).0, before + 1);
            }
            ApiKey::Fetch => {
                let topic_id = self.metadata("matrix").topic_id;
                let mut q = fetch_request("matrix", 0, 0, 1 << 20, 1 << 20);
                if v >= 13 {
                    q.topics[0].topic = Default::default();
                    q.topics[0].topic_id = topic_id;
                }
                if v < 9 {
                    q.topics[0].partitions[0].current_leader_epoch = -1;
                }
                if v < 12 {
                    q.topics[0].partitions[0].last_fetched_epoch = -1;
                }
                if v < 7 {
                    q.session_epoch = -1;
                }
                if v >= 15 {
                    q.replica_id = km::BrokerId(-1);
                    q.replica_state.replica_id = km::BrokerId(-1);
                }
                match self.k.call(v, RequestKind::Fetch(q)) {
                    ResponseKind::Fetch(r) => {
                        let t = &r.responses[0];
                        if v >= 13 {
                            assert_eq!(t.topic_id, topic_id, "v{v}");
                        } else {
                            assert_eq!(t.topic.0.as_str(), "matrix", "v{v}");
                        }
                        let p = &t.partitions[0];
                        assert_eq!(p.error_code, 0, "v{v}");
                        assert!(p.high_watermark > 0, "v{v}");
                        let mut records = p.records.clone().expect("records");
                        let first = RecordBatchDecoder::decode(&mut records).unwrap();
                        let rec = &first.records[0];
                        assert_eq!(rec.offset, 0);
                        assert_eq!(rec.value.as_deref(), Some(&b"seed-0"[..]), "v{v}");
                        assert_eq!(
                            rec.headers.get(&s("h")).cloned().flatten().as_deref(),
                            Some(&b"v"[..])
                        );
                    }
                    other => panic!("{other:?}"),
                }
            }
            ApiKey::ListOffsets => {
                let end = self.list_offset("matrix", 1, -1).0;
                assert_eq!(self.list_offsets_at(v, "matrix", 1, -2).offset, 0, "v{v}");
                assert_eq!(self.list_offsets_at(v, "matrix", 1, -1).offset, end, "v{v}");
                // Partition 1 holds records with timestamps 10, 20, ... 50.
                let r = self.list_offsets_at(v, "matrix", 1, 25);
                assert_eq!(r.offset, 2, "v{v}: first record at or after 25");
                assert_eq!(r.timestamp, 30, "v{v}");
                if v >= 7 {
                    let r = self.list_offsets_at(v, "matrix", 1, -3);
                    assert_eq!((r.offset, r.timestamp), (4, 50), "v{v}: max timestamp");
                }
                if v >= 8 {
                    assert_eq!(self.list_offsets_at(v, "matrix", 1, -4).offset, 0, "v{v}");
                }
                if v >= 9 {
                    assert_eq!(self.list_offsets_at(v, "matrix", 1, -5).offset, -1, "v{v}");
                }
            }
            ApiKey::DescribeConfigs => {
                let mut res = km::describe_configs_request::DescribeConfigsResource::default();
                res.resource_type = 2;
                res.resource_name = s("matrix");
                res.configuration_keys = None;
                let mut q = km::DescribeConfigsRequest::default();
                q.resources = vec![res];
                match self.k.call(v, RequestKind::DescribeConfigs(q)) {
                    ResponseKind::DescribeConfigs(r) => {
                        let rr = &r.results[0];
                        assert_eq!(rr.error_code, 0);
                        let c = rr
                            .configs
                            .iter()
                            .find(|c| c.name.as_str() == "segment.ms")
                            .expect("segment.ms described");
                        assert_eq!(c.value.as_deref(), Some("86400000"), "v{v}");
                        assert_eq!(c.config_source, 1, "v{v}: set on the topic");
                    }
                    other => panic!("{other:?}"),
                }
            }
            ApiKey::AlterConfigs => {
                let name = format!("ac-{v}");
                create_topic(&mut self.k, &name, 1, &[("segment.ms", "60000")]);
                let mut c = km::alter_configs_request::AlterableConfig::default();
                c.name = s("retention.ms");
                c.value = Some(s("1234567"));
                let mut res = km::alter_configs_request::AlterConfigsResource::default();
                res.resource_type = 2;
                res.resource_name = s(&name);
                res.configs = vec![c];
                let mut q = km::AlterConfigsRequest::default();
                q.resources = vec![res];
                match self.k.call(v, RequestKind::AlterConfigs(q)) {
                    ResponseKind::AlterConfigs(r) => assert_eq!(r.responses[0].error_code, 0),
                    other => panic!("{other:?}"),
                }
                assert_eq!(
                    self.describe_config(&name, "retention.ms"),
                    ("1234567".into(), 1)
                );
                // Not in the new set: back to its default.
                assert_eq!(self.describe_config(&name, "segment.ms").1, 5, "v{v}");
            }
            ApiKey::IncrementalAlterConfigs => {
                let mut c = km::incremental_alter_configs_request::AlterableConfig::default();
                c.name = s("retention.bytes");
                c.config_operation = 0;
                c.value = Some(s(&format!("{}", 1_000_000 + i64::from(v))));
                let mut res =
                    km::incremental_alter_configs_request::AlterConfigsResource::default();
                res.resource_type = 2;
                res.resource_name = s("matrix");
                res.configs = vec![c];
                let mut q = km::IncrementalAlterConfigsRequest::default();
                q.resources = vec![res];
                match self.k.call(v, RequestKind::IncrementalAlterConfigs(q)) {
                    ResponseKind::IncrementalAlterConfigs(r) => {
                        assert_eq!(r.responses[0].error_code, 0)
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(
                    self.describe_config("matrix", "retention.bytes").0,
                    format!("{}", 1_000_000 + i64::from(v))
                );
            }
            ApiKey::CreatePartitions => {
                let name = format!("cp-{v}");
                create_topic(&mut self.k, &name, 1, &[]);
                let mut t = km::create_partitions_request::CreatePartitionsTopic::default();
                t.name = tn(&name);
                t.count = 3;
                t.assignments = None;
                let mut q = km::CreatePartitionsRequest::default();
                q.topics = vec![t];
                q.timeout_ms = 5000;
                match self.k.call(v, RequestKind::CreatePartitions(q)) {
                    ResponseKind::CreatePartitions(r) => assert_eq!(r.results[0].error_code, 0),
                    other => panic!("{other:?}"),
                }
                assert_eq!(self.metadata(&name).partitions.len(), 3);
            }
            ApiKey::DescribeCluster => {
                let q = km::DescribeClusterRequest::default();
                match self.k.call(v, RequestKind::DescribeCluster(q)) {
                    ResponseKind::DescribeCluster(r) => {
                        assert_eq!(r.error_code, 0);
                        assert_eq!(r.cluster_id.as_str(), "ringmq");
                        assert_eq!(r.brokers.len(), 1);
                        assert_eq!(r.brokers[0].port, self.port);
                    }
                    other => panic!("{other:?}"),
                }
            }
            ApiKey::OffsetForLeaderEpoch => {
                let end = self.list_offset("matrix", 1, -1).0;
                let mut p =
                    km::offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
                p.partition = 1;
                p.current_leader_epoch = -1;
                p.leader_epoch = 0;
                let mut t = km::offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
                t.topic = tn("matrix");
                t.partitions = vec![p];
                let mut q = km::OffsetForLeaderEpochRequest::default();
                q.topics = vec![t];
                if v >= 3 {
                    q.replica_id = km::BrokerId(-1);
                }
                match self.k.call(v, RequestKind::OffsetForLeaderEpoch(q)) {
                    ResponseKind::OffsetForLeaderEpoch(r) => {
                        let p = &r.topics[0].partitions[0];
                        assert_eq!(p.error_code, 0);
                        assert_eq!(p.end_offset, end, "v{v}");
                    }
                    other => panic!("{other:?}"),
                }
            }
            ApiKey::InitProducerId => {
                let mut q = km::InitProducerIdRequest::default();
                q.transactional_id = None;
                q.transaction_timeout_ms = 60_000;
                match self.k.call(v, RequestKind::InitProducerId(q)) {
                    ResponseKind::InitProducerId(r) => {
                        assert_eq!(r.error_code, 0);
                        assert!(r.producer_id.0 > 0);
                        assert_eq!(r.producer_epoch, 0);
                    }
                    other => panic!("{other:?}"),
                }
            }
            ApiKey::DeleteRecords => {
                let name = format!("dr-{v}");
                create_topic(&mut self.k, &name, 1, &[]);
                for i in 0..5 {
                    let (code, _) =
                        produce_one(&mut self.k, 9, &name, 0, one_record(&i.to_string(), 1));
                    assert_eq!(code, 0);
                }
                let mut p = km::delete_records_request::DeleteRecordsPartition::default();
                p.partition_index = 0;
                p.offset = 3;
                let mut t = km::delete_records_request::DeleteRecordsTopic::default();
                t.name = tn(&name);
                t.partitions = vec![p];
                let mut q = km::DeleteRecordsRequest::default();
                q.topics = vec![t];
                q.timeout_ms = 5000;
                match self.k.call(v, RequestKind::DeleteRecords(q)) {
                    ResponseKind::DeleteRecords(r) => {
                        let p = &r.topics[0].partitions[0];
                        assert_eq!(p.error_code, 0, "v{v}");
                        assert_eq!(p.low_watermark, 3, "v{v}");
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(self.list_offset(&name, 0, -2).0, 3);
            }
            ApiKey::FindCoordinator => {
                let mut q = km::FindCoordinatorRequest::default();
                if v >= 4 {
                    q.coordinator_keys = vec![s("g1"), s("g2")];
                } else {
                    q.key = s("g1");
                }
                match self.k.call(v, RequestKind::FindCoordinator(q)) {
                    ResponseKind::FindCoordinator(r) if v >= 4 => {
                        assert_eq!(r.coordinators.len(), 2);
                        for (c, key) in r.coordinators.iter().zip(["g1", "g2"]) {
                            assert_eq!(c.key.as_str(), key);
                            assert_eq!(c.error_code, 0);
                            assert_eq!(c.port, self.port);
                        }
                    }
                    ResponseKind::FindCoordinator(r) => {
                        assert_eq!(r.error_code, 0);
                        assert_eq!(r.port, self.port);
                    }
                    other => panic!("{other:?}"),
                }
                if v >= 1 {
                    // A transaction coordinator: refused as unsupported.
                    let mut q = km::FindCoordinatorRequest::default();
                    q.key_type = 1;
                    if v >= 4 {
                        q.coordinator_keys = vec![s("tx")];
                    } else {
                        q.key = s("tx");
                    }
                    match self.k.call(v, RequestKind::FindCoordinator(q)) {
                        ResponseKind::FindCoordinator(r) => {
                            let (code, msg) = if v >= 4 {
                                (
                                    r.coordinators[0].error_code,
                                    r.coordinators[0].error_message.clone(),
                                )
                            } else {
                                (r.error_code, r.error_message.clone())
                            };
                            assert_eq!(code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "v{v}");
                            assert!(msg.unwrap().contains("transactions are not supported"));
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
            group_api => {
                let mut versions: Vec<(ApiKey, i16)> =
                    GROUP_APIS.iter().map(|a| (*a, self.max(*a))).collect();
                versions
                    .iter_mut()
                    .find(|(a, _)| *a == group_api)
                    .unwrap()
                    .1 = v;
                let group = format!("g-{group_api:?}-{v}");
                self.group_flow(&group, &versions);
            }
        }
    }

    /// One member's life in a group, each group API at the version given: join (with
    /// the member-id round trip from v4), sync with its assignment, heartbeat, commit,
    /// fetch the commit, describe, list, leave, delete one offset, delete the group.
    fn group_flow(&mut self, group: &str, versions: &[(ApiKey, i16)]) {
        let ver = |api: ApiKey| versions.iter().find(|(a, _)| *a == api).unwrap().1;
        let gid = km::GroupId(s(group));
        // Join.
        let jv = ver(ApiKey::JoinGroup);
        let mut subscription = bytes::BytesMut::new();
        let mut sub = km::ConsumerProtocolSubscription::default();
        sub.topics = vec![s("matrix")];
        subscription.extend_from_slice(&0i16.to_be_bytes());
        sub.encode(&mut subscription, 0).unwrap();
        let join = |member: &str| {
            let mut q = km::JoinGroupRequest::default();
            q.group_id = gid.clone();
            q.session_timeout_ms = 10_000;
            if jv >= 1 {
                q.rebalance_timeout_ms = 10_000;
            }
            q.member_id = s(member);
            q.protocol_type = s("consumer");
            let mut p = km::join_group_request::JoinGroupRequestProtocol::default();
            p.name = s("range");
            p.metadata = subscription.clone().freeze();
            q.protocols = vec![p];
            RequestKind::JoinGroup(q)
        };
        let mut r = match self.k.call(jv, join("")) {
            ResponseKind::JoinGroup(r) => r,
            other => panic!("{other:?}"),
        };
        if jv >= 4 {
            assert_eq!(
                r.error_code, 79,
                "JoinGroup v{jv}: MEMBER_ID_REQUIRED first"
            );
            let member = r.member_id.to_string();
            r = match self.k.call(jv, join(&member)) {
                ResponseKind::JoinGroup(r) => r,
                other => panic!("{other:?}"),
            };
        }
        assert_eq!(r.error_code, 0, "JoinGroup v{jv}");
        let member = r.member_id.to_string();
        let generation = r.generation_id;
        assert!(generation >= 1);
        assert_eq!(
            r.leader.as_str(),
            member,
            "JoinGroup v{jv}: the only member leads"
        );
        assert_eq!(r.members.len(), 1);
        assert_eq!(r.members[0].metadata, subscription.clone().freeze());
        if jv >= 7 {
            assert_eq!(r.protocol_type.as_deref(), Some("consumer"));
        }
        assert_eq!(r.protocol_name.as_deref(), Some("range"));
        // Sync.
        let sv = ver(ApiKey::SyncGroup);
        let assignment = Bytes::from_static(b"\x00\x00assignment-bytes");
        let mut q = km::SyncGroupRequest::default();
        q.group_id = gid.clone();
        q.generation_id = generation;
        q.member_id = s(&member);
        if sv >= 5 {
            q.protocol_type = Some(s("consumer"));
            q.protocol_name = Some(s("range"));
        }
        let mut a = km::sync_group_request::SyncGroupRequestAssignment::default();
        a.member_id = s(&member);
        a.assignment = assignment.clone();
        q.assignments = vec![a];
        match self.k.call(sv, RequestKind::SyncGroup(q)) {
            ResponseKind::SyncGroup(r) => {
                assert_eq!(r.error_code, 0, "SyncGroup v{sv}");
                assert_eq!(r.assignment, assignment, "SyncGroup v{sv}");
            }
            other => panic!("{other:?}"),
        }
        // Heartbeat, and one with a wrong generation.
        let hv = ver(ApiKey::Heartbeat);
        for (g, want) in [(generation, 0), (generation + 7, 22)] {
            let mut q = km::HeartbeatRequest::default();
            q.group_id = gid.clone();
            q.generation_id = g;
            q.member_id = s(&member);
            match self.k.call(hv, RequestKind::Heartbeat(q)) {
                ResponseKind::Heartbeat(r) => assert_eq!(r.error_code, want, "Heartbeat v{hv}"),
                other => panic!("{other:?}"),
            }
        }
        // Commit offsets 3 and 4 of the two partitions.
        let cv = ver(ApiKey::OffsetCommit);
        let mut q = km::OffsetCommitRequest::default();
        q.group_id = gid.clone();
        q.generation_id_or_member_epoch = generation;
        q.member_id = s(&member);
        let mut t = km::offset_commit_request::OffsetCommitRequestTopic::default();
        t.name = tn("matrix");
        for (p, o) in [(0, 3), (1, 4)] {
            let mut pp = km::offset_commit_request::OffsetCommitRequestPartition::default();
            pp.partition_index = p;
            pp.committed_offset = o;
            pp.committed_metadata = Some(s("meta"));
            t.partitions.push(pp);
        }
        q.topics = vec![t];
        match self.k.call(cv, RequestKind::OffsetCommit(q)) {
            ResponseKind::OffsetCommit(r) => {
                for p in &r.topics[0].partitions {
                    assert_eq!(p.error_code, 0, "OffsetCommit v{cv}");
                }
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            self.committed(group, ver(ApiKey::OffsetFetch)),
            vec![(0, 3), (1, 4)]
        );
        // Describe and list.
        let dv = ver(ApiKey::DescribeGroups);
        let mut q = km::DescribeGroupsRequest::default();
        q.groups = vec![gid.clone()];
        match self.k.call(dv, RequestKind::DescribeGroups(q)) {
            ResponseKind::DescribeGroups(r) => {
                let g = &r.groups[0];
                assert_eq!(g.error_code, 0);
                assert_eq!(g.group_state.as_str(), "Stable", "DescribeGroups v{dv}");
                assert_eq!(g.protocol_data.as_str(), "range");
                assert_eq!(g.members.len(), 1);
                assert_eq!(g.members[0].member_id.as_str(), member);
                assert_eq!(g.members[0].member_assignment, assignment);
            }
            other => panic!("{other:?}"),
        }
        let lv = ver(ApiKey::ListGroups);
        let mut q = km::ListGroupsRequest::default();
        if lv >= 4 {
            q.states_filter = vec![s("Stable")];
        }
        if lv >= 5 {
            q.types_filter = vec![s("classic")];
        }
        match self.k.call(lv, RequestKind::ListGroups(q)) {
            ResponseKind::ListGroups(r) => {
                assert_eq!(r.error_code, 0);
                let g = r
                    .groups
                    .iter()
                    .find(|g| g.group_id.0.as_str() == group)
                    .unwrap_or_else(|| panic!("ListGroups v{lv} lists {group}"));
                assert_eq!(g.protocol_type.as_str(), "consumer");
                if lv >= 4 {
                    assert_eq!(g.group_state.as_str(), "Stable");
                }
            }
            other => panic!("{other:?}"),
        }
        if lv >= 5 {
            let mut q = km::ListGroupsRequest::default();
            q.types_filter = vec![s("consumer")];
            match self.k.call(lv, RequestKind::ListGroups(q)) {
                ResponseKind::ListGroups(r) => {
                    assert!(r.groups.is_empty(), "no new-protocol groups")
                }
                other => panic!("{other:?}"),
            }
        }
        // Leave.
        let leave_v = ver(ApiKey::LeaveGroup);
        let mut q = km::LeaveGroupRequest::default();
        q.group_id = gid.clone();
        if leave_v >= 3 {
            let mut m = km::leave_group_request::MemberIdentity::default();
            m.member_id = s(&member);
            q.members = vec![m];
        } else {
            q.member_id = s(&member);
        }
        match self.k.call(leave_v, RequestKind::LeaveGroup(q)) {
            ResponseKind::LeaveGroup(r) => {
                assert_eq!(r.error_code, 0, "LeaveGroup v{leave_v}");
                if leave_v >= 3 {
                    assert_eq!(r.members[0].error_code, 0);
                }
            }
            other => panic!("{other:?}"),
        }
        // Delete one committed offset, then the group.
        let mut q = km::OffsetDeleteRequest::default();
        q.group_id = gid.clone();
        let mut t = km::offset_delete_request::OffsetDeleteRequestTopic::default();
        t.name = tn("matrix");
        let mut p = km::offset_delete_request::OffsetDeleteRequestPartition::default();
        p.partition_index = 0;
        t.partitions = vec![p];
        q.topics = vec![t];
        match self
            .k
            .call(ver(ApiKey::OffsetDelete), RequestKind::OffsetDelete(q))
        {
            ResponseKind::OffsetDelete(r) => {
                assert_eq!(r.error_code, 0);
                assert_eq!(r.topics[0].partitions[0].error_code, 0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            self.committed(group, ver(ApiKey::OffsetFetch)),
            vec![(0, -1), (1, 4)]
        );
        let gv = ver(ApiKey::DeleteGroups);
        let mut q = km::DeleteGroupsRequest::default();
        q.groups_names = vec![gid.clone()];
        match self.k.call(gv, RequestKind::DeleteGroups(q)) {
            ResponseKind::DeleteGroups(r) => {
                assert_eq!(r.results[0].error_code, 0, "DeleteGroups v{gv}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            self.committed(group, ver(ApiKey::OffsetFetch)),
            vec![(0, -1), (1, -1)]
        );
    }

    /// The group's committed offsets of partitions 0 and 1 of `matrix`.
    fn committed(&mut self, group: &str, v: i16) -> Vec<(i32, i64)> {
        let mut q = km::OffsetFetchRequest::default();
        if v >= 8 {
            let mut t = km::offset_fetch_request::OffsetFetchRequestTopics::default();
            t.name = tn("matrix");
            t.partition_indexes = vec![0, 1];
            let mut g = km::offset_fetch_request::OffsetFetchRequestGroup::default();
            g.group_id = km::GroupId(s(group));
            g.topics = Some(vec![t]);
            if v >= 9 {
                g.member_epoch = -1;
            }
            // A second group with nothing committed: answered beside the first.
            let mut other = km::offset_fetch_request::OffsetFetchRequestGroup::default();
            other.group_id = km::GroupId(s("nobody"));
            other.topics = None;
            if v >= 9 {
                other.member_epoch = -1;
            }
            q.groups = vec![g, other];
        } else {
            let mut t = km::offset_fetch_request::OffsetFetchRequestTopic::default();
            t.name = tn("matrix");
            t.partition_indexes = vec![0, 1];
            q.group_id = km::GroupId(s(group));
            q.topics = Some(vec![t]);
        }
        let r = match self.k.call(v, RequestKind::OffsetFetch(q)) {
            ResponseKind::OffsetFetch(r) => r,
            other => panic!("{other:?}"),
        };
        if v >= 8 {
            assert_eq!(r.groups.len(), 2, "OffsetFetch v{v}");
            assert_eq!(r.groups[0].group_id.0.as_str(), group);
            assert_eq!(r.groups[0].error_code, 0);
            assert_eq!(r.groups[1].group_id.0.as_str(), "nobody");
            assert!(r.groups[1].topics.is_empty());
            r.groups[0].topics[0]
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.committed_offset))
                .collect()
        } else {
            assert_eq!(r.error_code, 0, "OffsetFetch v{v}");
            r.topics[0]
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.committed_offset))
                .collect()
        }
    }
}

/// The newest version of an API's request that `kafka-protocol` decodes. (For a few
/// APIs its response schema is a version ahead of its request schema: OffsetCommit and
/// OffsetFetch v10, InitProducerId v6.)
fn newest_request(api: ApiKey) -> i16 {
    macro_rules! newest {
        ($($k:ident => $t:ty),* $(,)?) => {
            match api {
                $(ApiKey::$k => <$t as Message>::VERSIONS.max,)*
                other => panic!("{other:?} is not covered"),
            }
        };
    }
    newest!(
        Produce => km::ProduceRequest,
        Fetch => km::FetchRequest,
        ListOffsets => km::ListOffsetsRequest,
        Metadata => km::MetadataRequest,
        ApiVersions => km::ApiVersionsRequest,
        CreateTopics => km::CreateTopicsRequest,
        DeleteTopics => km::DeleteTopicsRequest,
        DeleteRecords => km::DeleteRecordsRequest,
        DescribeConfigs => km::DescribeConfigsRequest,
        AlterConfigs => km::AlterConfigsRequest,
        DescribeCluster => km::DescribeClusterRequest,
        OffsetForLeaderEpoch => km::OffsetForLeaderEpochRequest,
        InitProducerId => km::InitProducerIdRequest,
        CreatePartitions => km::CreatePartitionsRequest,
        IncrementalAlterConfigs => km::IncrementalAlterConfigsRequest,
        FindCoordinator => km::FindCoordinatorRequest,
        JoinGroup => km::JoinGroupRequest,
        SyncGroup => km::SyncGroupRequest,
        Heartbeat => km::HeartbeatRequest,
        LeaveGroup => km::LeaveGroupRequest,
        OffsetCommit => km::OffsetCommitRequest,
        OffsetFetch => km::OffsetFetchRequest,
        ListGroups => km::ListGroupsRequest,
        DescribeGroups => km::DescribeGroupsRequest,
        DeleteGroups => km::DeleteGroupsRequest,
        OffsetDelete => km::OffsetDeleteRequest,
    )
}

#[test]
fn every_advertised_version_of_every_api_answers_meaningfully() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_args(
        &dir.path().join("data"),
        2,
        &["--group-initial-rebalance-delay-ms", "0"],
    );
    let mut k = Kafka::connect(b.kafka);
    let ranges = match k.call(
        3,
        RequestKind::ApiVersions(km::ApiVersionsRequest::default()),
    ) {
        ResponseKind::ApiVersions(r) => r
            .api_keys
            .iter()
            .map(|a| {
                (
                    ApiKey::try_from(a.api_key).unwrap(),
                    a.min_version,
                    a.max_version,
                )
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let advertised: BTreeSet<i16> = ranges.iter().map(|r| r.0 as i16).collect();
    let covered: BTreeSet<i16> = COVERED.iter().map(|a| *a as i16).collect();
    assert_eq!(advertised, covered, "every advertised API is in the matrix");
    // Each advertised range reaches the newest version the crate speaks (Kafka 4.x).
    let behind: Vec<String> = ranges
        .iter()
        .filter(|(api, _, hi)| *hi != newest_request(*api))
        .map(|(api, _, hi)| format!("{api:?} v{hi} of v{}", newest_request(*api)))
        .collect();
    assert!(
        behind.is_empty(),
        "newest versions not advertised: {behind:?}"
    );
    create_topic(&mut k, "matrix", 2, &[("segment.ms", "86400000")]);
    let (code, _) = produce_one(&mut k, 9, "matrix", 0, one_record("seed-0", 5));
    assert_eq!(code, 0);
    for (i, ts) in [10, 20, 30, 40, 50].into_iter().enumerate() {
        let (code, offset) = produce_one(&mut k, 9, "matrix", 1, one_record("ts", ts));
        assert_eq!((code, offset), (0, i as i64));
    }
    let mut m = Matrix {
        k,
        port: i32::from(b.kafka.port()),
        ranges: ranges.clone(),
    };
    let mut checked = 0;
    for &(api, lo, hi) in &ranges {
        for v in lo..=hi {
            m.check(api, v);
            checked += 1;
        }
    }
    println!("{checked} API versions checked");
}
