//! The Kafka listener at the protocol level: requests built with the `kafka-protocol`
//! crate at every version ringmq advertises, answers decoded at the same version and
//! checked for meaning. Regression tests for acknowledged-but-not-stored and
//! out-of-order batches live here too.

mod common;
mod kafka_wire;

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use kafka_protocol::messages::{self as km, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use ringmq_storage::batch::{self, Record};

use common::Broker;
use kafka_wire::*;

fn broker(data: &std::path::Path) -> Broker {
    Broker::start_args(data, 2, &["--group-initial-rebalance-delay-ms", "0"])
}

/// Regression: InitProducerId returned the producer id the client sent (0 by default
/// at v3+), so two producers shared it; the second one's batches were taken for the
/// first one's retries, acknowledged and not stored.
#[test]
fn init_producer_id_issues_a_new_id_at_every_version_whatever_the_client_sends() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data"));
    let mut k = Kafka::connect(b.kafka);
    let mut seen = HashSet::new();
    for v in 0..=5 {
        // The id and epoch fields exist from v3.
        let sent: &[(i64, i16)] = if v >= 3 {
            &[(-1, -1), (0, 0), (12345, 7)]
        } else {
            &[(-1, -1), (-1, -1)]
        };
        for &(sent_id, sent_epoch) in sent {
            let mut q = km::InitProducerIdRequest::default();
            q.transactional_id = None;
            q.transaction_timeout_ms = 60_000;
            q.producer_id = km::ProducerId(sent_id);
            q.producer_epoch = sent_epoch;
            let r = match k.call(v, RequestKind::InitProducerId(q)) {
                ResponseKind::InitProducerId(r) => r,
                other => panic!("{other:?}"),
            };
            assert_eq!(r.error_code, 0, "v{v}");
            assert!(r.producer_id.0 >= 0, "v{v}");
            assert_ne!(
                r.producer_id.0, sent_id,
                "v{v}: the client's id is not reused"
            );
            assert_eq!(r.producer_epoch, 0, "v{v}");
            assert!(seen.insert(r.producer_id.0), "v{v}: id issued twice");
        }
        // A transactional id: refused as unsupported, not as a missing coordinator.
        let mut q = km::InitProducerIdRequest::default();
        q.transactional_id = Some(km::TransactionalId(StrBytes::from_static_str("tx")));
        q.transaction_timeout_ms = 60_000;
        q.producer_id = km::ProducerId(-1);
        q.producer_epoch = -1;
        match k.call(v, RequestKind::InitProducerId(q)) {
            ResponseKind::InitProducerId(r) => {
                assert_eq!(r.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "v{v}");
                assert_eq!(r.producer_id.0, -1);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Two idempotent producers whose batches carry identical sequence numbers, a
/// producer that restarts (a new InitProducerId, sequences from 0 again), and a
/// producer id the broker never issued.
#[test]
fn producers_with_identical_sequences_are_all_stored_and_forged_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data"));
    let mut k = Kafka::connect(b.kafka);
    create_topic(&mut k, "idem", 1, &[]);
    // What a v4 client sends by default: producer id 0, epoch 0.
    let mut init = || {
        let mut q = km::InitProducerIdRequest::default();
        q.transactional_id = None;
        q.transaction_timeout_ms = 60_000;
        q.producer_id = km::ProducerId(0);
        q.producer_epoch = 0;
        match k.call(4, RequestKind::InitProducerId(q)) {
            ResponseKind::InitProducerId(r) => r.producer_id.0,
            other => panic!("{other:?}"),
        }
    };
    let (a, b_id) = (init(), init());
    assert_ne!(a, b_id);
    let mut k = Kafka::connect(b.kafka);
    let mut offsets = HashSet::new();
    let per_producer = 50;
    for i in 0..per_producer {
        for (pid, tag) in [(a, "a"), (b_id, "b")] {
            let batch = idempotent_batch(pid, 0, i, &format!("{tag}-{i}"));
            let (code, offset) = produce_one(&mut k, 9, "idem", 0, batch);
            assert_eq!(code, 0, "{tag} batch {i}");
            assert!(
                offsets.insert(offset),
                "{tag} batch {i}: offset {offset} given twice"
            );
        }
    }
    // A retry of a stored batch is acknowledged with its offset, not stored again.
    let (code, offset) = produce_one(&mut k, 9, "idem", 0, idempotent_batch(a, 0, 49, "a-49"));
    assert_eq!(code, 0);
    assert!(offsets.contains(&offset));
    // The application restarts: a new id, sequences from 0 again; all stored.
    let mut k2 = Kafka::connect(b.kafka);
    let mut q = km::InitProducerIdRequest::default();
    q.transactional_id = None;
    q.transaction_timeout_ms = 60_000;
    q.producer_id = km::ProducerId(a);
    q.producer_epoch = 0;
    let restarted = match k2.call(5, RequestKind::InitProducerId(q)) {
        ResponseKind::InitProducerId(r) => r.producer_id.0,
        other => panic!("{other:?}"),
    };
    assert_ne!(restarted, a);
    for i in 0..10 {
        let (code, offset) = produce_one(
            &mut k2,
            9,
            "idem",
            0,
            idempotent_batch(restarted, 0, i, &format!("r-{i}")),
        );
        assert_eq!(code, 0);
        assert!(offsets.insert(offset));
    }
    // Ids the broker did not issue: refused, nothing stored.
    for forged in [0, 1, a + 1, b_id ^ 1, i64::MAX] {
        let (code, _) = produce_one(&mut k2, 9, "idem", 0, idempotent_batch(forged, 0, 0, "x"));
        assert_eq!(code, UNKNOWN_PRODUCER_ID, "forged id {forged}");
    }
    let values = fetch_values(&mut k2, "idem", 0);
    assert_eq!(
        values.len(),
        2 * per_producer as usize + 10,
        "every acknowledged batch is stored"
    );
    let unique: HashSet<_> = values.iter().collect();
    assert_eq!(unique.len(), values.len());
    assert!(!values.iter().any(|v| v == "x"));
}

/// Regression: a waiting large batch was overtaken by a later small one, so pipelined
/// produce requests of one connection were stored out of order. Each round pipelines
/// requests of mixed sizes (100 B and 900 KB) to both partitions of a topic, one of
/// which is on another shard than the connection (forwarded), without waiting for
/// answers, and checks the stored order: plain batches, then an idempotent producer's.
#[test]
fn pipelined_produce_requests_are_stored_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    // A write buffer of two large batches, so large batches wait for room while
    // small ones would fit.
    let b = Broker::start_args(
        &dir.path().join("data"),
        2,
        &["--write-buffer-bytes-max", "2000000"],
    );
    pipeline(&b, "order", false);
    pipeline(&b, "order-idempotent", true);
}

/// Three connections at once each pipeline requests of mixed sizes to both partitions
/// of `topic` (as an idempotent producer each, with `idempotent`); each connection's
/// batches must be stored in the order it sent them.
fn pipeline(b: &Broker, topic: &str, idempotent: bool) {
    let mut k = Kafka::connect(b.kafka);
    create_topic(&mut k, topic, 2, &[]);
    let connections = 3;
    let rounds = 4;
    let per_round = 30;
    let senders: Vec<_> = (0..connections)
        .map(|c| {
            let addr = b.kafka;
            let topic = topic.to_string();
            std::thread::spawn(move || {
                let mut k = Kafka::connect(addr);
                let pid = idempotent.then(|| {
                    let mut q = km::InitProducerIdRequest::default();
                    q.transactional_id = None;
                    q.transaction_timeout_ms = 60_000;
                    match k.call(4, RequestKind::InitProducerId(q)) {
                        ResponseKind::InitProducerId(r) => r.producer_id.0,
                        other => panic!("{other:?}"),
                    }
                });
                let mut seq = [0i32; 2];
                for round in 0..rounds {
                    let mut ids = Vec::new();
                    for i in 0..per_round {
                        for partition in 0..2 {
                            let big = (i + round + c) % 2 == 0;
                            let tag = format!("{c}-{round}-{i}-{partition}");
                            let pad = if big { 900 << 10 } else { 100 };
                            let mut batch = plain_batch(&tag, pad).to_vec();
                            if let Some(pid) = pid {
                                batch::set_producer(&mut batch, pid, 0, seq[partition as usize]);
                                batch::fix_crc(&mut batch);
                                seq[partition as usize] += 1;
                            }
                            ids.push(
                                k.send(7, produce_request(&topic, partition, Bytes::from(batch))),
                            );
                        }
                    }
                    for id in ids {
                        match k.receive(id) {
                            ResponseKind::Produce(r) => {
                                let p = &r.responses[0].partition_responses[0];
                                assert_eq!(p.error_code, 0, "{topic} connection {c} round {round}");
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    for partition in 0..2 {
        let stored: Vec<String> = fetch_values(&mut k, topic, partition)
            .into_iter()
            .map(|v| v.split(':').next().unwrap().to_string())
            .collect();
        assert_eq!(
            stored.len(),
            connections * rounds * per_round,
            "{topic}/{partition}"
        );
        for c in 0..connections {
            let mine: Vec<&String> = stored
                .iter()
                .filter(|t| t.starts_with(&format!("{c}-")))
                .collect();
            let sent: Vec<String> = (0..rounds)
                .flat_map(|r| (0..per_round).map(move |i| format!("{c}-{r}-{i}-{partition}")))
                .collect();
            assert_eq!(
                mine.len(),
                sent.len(),
                "{topic}/{partition}: connection {c}"
            );
            if let Some(i) = (0..sent.len()).find(|&i| *mine[i] != sent[i]) {
                panic!(
                    "{topic}/{partition}: connection {c}'s batch {} was stored where {} was sent",
                    mine[i], sent[i]
                );
            }
        }
    }
}

fn plain_batch(tag: &str, pad: usize) -> Bytes {
    let value = format!("{tag}:{}", "p".repeat(pad));
    Bytes::from(batch::encode_batch(&[Record {
        key: None,
        value: Some(value.into_bytes()),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
    }]))
}

fn idempotent_batch(producer_id: i64, epoch: i16, seq: i32, value: &str) -> Bytes {
    let mut b = batch::encode_batch(&[Record {
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
    }]);
    batch::set_producer(&mut b, producer_id, epoch, seq);
    batch::fix_crc(&mut b);
    Bytes::from(b)
}

fn subscription(topics: &[&str]) -> Bytes {
    use kafka_protocol::protocol::Encodable;
    let mut b = bytes::BytesMut::new();
    b.extend_from_slice(&0i16.to_be_bytes());
    let mut sub = km::ConsumerProtocolSubscription::default();
    sub.topics = topics.iter().map(|t| s(t)).collect();
    sub.encode(&mut b, 0).unwrap();
    b.freeze()
}

fn join_request(group: &str, member: &str, instance: Option<&str>, topics: &[&str]) -> RequestKind {
    let mut q = km::JoinGroupRequest::default();
    q.group_id = km::GroupId(s(group));
    q.session_timeout_ms = 30_000;
    q.rebalance_timeout_ms = 30_000;
    q.member_id = s(member);
    q.group_instance_id = instance.map(s);
    q.protocol_type = s("consumer");
    let mut p = km::join_group_request::JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = subscription(topics);
    q.protocols = vec![p];
    RequestKind::JoinGroup(q)
}

fn joined(r: ResponseKind) -> km::JoinGroupResponse {
    match r {
        ResponseKind::JoinGroup(r) => r,
        other => panic!("{other:?}"),
    }
}

fn sync_request(
    group: &str,
    generation: i32,
    member: &str,
    instance: Option<&str>,
    assignments: &[(&str, &str)],
) -> RequestKind {
    let mut q = km::SyncGroupRequest::default();
    q.group_id = km::GroupId(s(group));
    q.generation_id = generation;
    q.member_id = s(member);
    q.group_instance_id = instance.map(s);
    q.protocol_type = Some(s("consumer"));
    q.protocol_name = Some(s("range"));
    q.assignments = assignments
        .iter()
        .map(|(m, a)| {
            let mut x = km::sync_group_request::SyncGroupRequestAssignment::default();
            x.member_id = s(m);
            x.assignment = Bytes::from(a.as_bytes().to_vec());
            x
        })
        .collect();
    RequestKind::SyncGroup(q)
}

fn synced(r: ResponseKind) -> (i16, String) {
    match r {
        ResponseKind::SyncGroup(r) => (
            r.error_code,
            String::from_utf8_lossy(&r.assignment).to_string(),
        ),
        other => panic!("{other:?}"),
    }
}

fn heartbeat(
    k: &mut Kafka,
    group: &str,
    generation: i32,
    member: &str,
    instance: Option<&str>,
) -> i16 {
    let mut q = km::HeartbeatRequest::default();
    q.group_id = km::GroupId(s(group));
    q.generation_id = generation;
    q.member_id = s(member);
    q.group_instance_id = instance.map(s);
    match k.call(4, RequestKind::Heartbeat(q)) {
        ResponseKind::Heartbeat(r) => r.error_code,
        other => panic!("{other:?}"),
    }
}

fn commit(
    k: &mut Kafka,
    group: &str,
    generation: i32,
    member: &str,
    instance: Option<&str>,
    parts: &[(&str, i32, i64)],
) -> Vec<i16> {
    let mut q = km::OffsetCommitRequest::default();
    q.group_id = km::GroupId(s(group));
    q.generation_id_or_member_epoch = generation;
    q.member_id = s(member);
    q.group_instance_id = instance.map(s);
    for (t, p, o) in parts {
        let mut pp = km::offset_commit_request::OffsetCommitRequestPartition::default();
        pp.partition_index = *p;
        pp.committed_offset = *o;
        let mut tt = km::offset_commit_request::OffsetCommitRequestTopic::default();
        tt.name = km::TopicName(s(t));
        tt.partitions = vec![pp];
        q.topics.push(tt);
    }
    match k.call(9, RequestKind::OffsetCommit(q)) {
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        other => panic!("{other:?}"),
    }
}

const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const FENCED_INSTANCE_ID: i16 = 82;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

/// Static membership (KIP-345): a static member that restarts gets its place and its
/// assignment back without a rebalance of the others, and its old member id is fenced.
/// Ids the coordinator did not hand out, or that belong to another instance, are
/// refused. Commits for partitions that do not exist, and the deletion of offsets of
/// topics the group consumes, are refused per partition.
#[test]
fn group_identities_are_checked_and_a_static_member_restarts_without_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data"));
    let mut k = Kafka::connect(b.kafka);
    create_topic(&mut k, "st", 2, &[]);
    create_topic(&mut k, "other", 1, &[]);
    let g = "static-group";
    let (mut ka, mut kb) = (Kafka::connect(b.kafka), Kafka::connect(b.kafka));
    // A joins alone: generation 1, A leads.
    let r = joined(ka.call(9, join_request(g, "", Some("i1"), &["st"])));
    assert_eq!(r.error_code, 0);
    let a = r.member_id.to_string();
    assert_eq!(
        synced(ka.call(
            5,
            sync_request(g, r.generation_id, &a, Some("i1"), &[(&a, "a1")])
        ))
        .1,
        "a1"
    );
    // B joins; A rejoins when its heartbeat says so.
    let b_join = kb.send(9, join_request(g, "", Some("i2"), &["st"]));
    let mut tries = 0;
    while heartbeat(&mut ka, g, r.generation_id, &a, Some("i1")) != REBALANCE_IN_PROGRESS {
        tries += 1;
        assert!(tries < 200, "the rebalance starts");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let a_join = ka.send(9, join_request(g, &a, Some("i1"), &["st"]));
    let (ra, rb) = (joined(ka.receive(a_join)), joined(kb.receive(b_join)));
    assert_eq!((ra.error_code, rb.error_code), (0, 0));
    assert_eq!(ra.generation_id, rb.generation_id);
    let generation = ra.generation_id;
    let bm = rb.member_id.to_string();
    assert_eq!(ra.leader.as_str(), a);
    assert_eq!(ra.members.len(), 2);
    let b_sync = kb.send(5, sync_request(g, generation, &bm, Some("i2"), &[]));
    let a_sync = synced(ka.call(
        5,
        sync_request(g, generation, &a, Some("i1"), &[(&a, "a2"), (&bm, "b2")]),
    ));
    assert_eq!(a_sync, (0, "a2".to_string()));
    assert_eq!(synced(kb.receive(b_sync)), (0, "b2".to_string()));

    // Ids the coordinator did not issue, or of another instance.
    assert_eq!(
        heartbeat(&mut kb, g, generation, "made-up", None),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        heartbeat(&mut kb, g, generation, &bm, Some("i1")),
        FENCED_INSTANCE_ID
    );
    assert_eq!(
        heartbeat(&mut kb, g, generation + 1, &bm, Some("i2")),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        joined(kb.call(9, join_request(g, "made-up", Some("i2"), &["st"]))).error_code,
        FENCED_INSTANCE_ID
    );
    assert_eq!(
        commit(&mut kb, g, generation, &bm, Some("i1"), &[("st", 0, 1)]),
        vec![FENCED_INSTANCE_ID]
    );
    assert_eq!(
        commit(&mut kb, g, generation, "made-up", None, &[("st", 0, 1)]),
        vec![UNKNOWN_MEMBER_ID]
    );
    // The group is untouched by all that.
    assert_eq!(heartbeat(&mut kb, g, generation, &bm, Some("i2")), 0);

    // A restarts: same instance id, no member id. It is back at once, in the same
    // generation, under a new id; B sees no rebalance.
    let mut ka2 = Kafka::connect(b.kafka);
    let r = joined(ka2.call(9, join_request(g, "", Some("i1"), &["st"])));
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, generation, "no new generation");
    let a2 = r.member_id.to_string();
    assert_ne!(a2, a);
    assert_eq!(r.leader.as_str(), a2, "it led before, it leads now");
    assert!(r.skip_assignment, "the leader keeps the assignment it made");
    assert_eq!(
        heartbeat(&mut kb, g, generation, &bm, Some("i2")),
        0,
        "B: no rebalance"
    );
    assert_eq!(
        synced(ka2.call(5, sync_request(g, generation, &a2, Some("i1"), &[]))),
        (0, "a2".to_string())
    );
    // The old id is fenced.
    assert_eq!(
        heartbeat(&mut ka, g, generation, &a, Some("i1")),
        FENCED_INSTANCE_ID
    );
    assert_eq!(
        heartbeat(&mut ka, g, generation, &a, None),
        UNKNOWN_MEMBER_ID
    );

    // Commits: per partition, unknown ones refused.
    assert_eq!(
        commit(
            &mut kb,
            g,
            generation,
            &bm,
            Some("i2"),
            &[("st", 0, 5), ("nope", 0, 5), ("st", 99, 5), ("other", 0, 7)]
        ),
        vec![0, UNKNOWN_TOPIC_OR_PARTITION, UNKNOWN_TOPIC_OR_PARTITION, 0]
    );
    // OffsetDelete while the group has members: the topic it consumes is refused, the
    // other deleted.
    let mut q = km::OffsetDeleteRequest::default();
    q.group_id = km::GroupId(s(g));
    for t in ["st", "other"] {
        let mut tt = km::offset_delete_request::OffsetDeleteRequestTopic::default();
        tt.name = km::TopicName(s(t));
        let mut p = km::offset_delete_request::OffsetDeleteRequestPartition::default();
        p.partition_index = 0;
        tt.partitions = vec![p];
        q.topics.push(tt);
    }
    match k.call(0, RequestKind::OffsetDelete(q)) {
        ResponseKind::OffsetDelete(r) => {
            assert_eq!(r.error_code, 0);
            assert_eq!(
                r.topics[0].partitions[0].error_code,
                GROUP_SUBSCRIBED_TO_TOPIC
            );
            assert_eq!(r.topics[1].partitions[0].error_code, 0);
        }
        other => panic!("{other:?}"),
    }
    let mut t = km::offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = km::TopicName(s("other"));
    t.partition_indexes = vec![0];
    let mut t2 = km::offset_fetch_request::OffsetFetchRequestTopic::default();
    t2.name = km::TopicName(s("st"));
    t2.partition_indexes = vec![0];
    let mut q = km::OffsetFetchRequest::default();
    q.group_id = km::GroupId(s(g));
    q.topics = Some(vec![t, t2]);
    match k.call(7, RequestKind::OffsetFetch(q)) {
        ResponseKind::OffsetFetch(r) => {
            assert_eq!(
                r.topics[0].partitions[0].committed_offset, -1,
                "other: deleted"
            );
            assert_eq!(r.topics[1].partitions[0].committed_offset, 5, "st: kept");
        }
        other => panic!("{other:?}"),
    }
}

fn describe(k: &mut Kafka, topic: &str) -> BTreeMap<String, (String, i8)> {
    let mut res = km::describe_configs_request::DescribeConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = s(topic);
    res.configuration_keys = None;
    let mut q = km::DescribeConfigsRequest::default();
    q.resources = vec![res];
    match k.call(4, RequestKind::DescribeConfigs(q)) {
        ResponseKind::DescribeConfigs(r) => r.results[0]
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    (
                        c.value.as_deref().unwrap_or("").to_string(),
                        c.config_source,
                    ),
                )
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn alter(k: &mut Kafka, topic: &str, ops: &[(&str, i8, Option<&str>)]) -> (i16, Option<String>) {
    let mut res = km::incremental_alter_configs_request::AlterConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = s(topic);
    res.configs = ops
        .iter()
        .map(|(n, op, v)| {
            let mut c = km::incremental_alter_configs_request::AlterableConfig::default();
            c.name = s(n);
            c.config_operation = *op;
            c.value = v.map(s);
            c
        })
        .collect();
    let mut q = km::IncrementalAlterConfigsRequest::default();
    q.resources = vec![res];
    match k.call(1, RequestKind::IncrementalAlterConfigs(q)) {
        ResponseKind::IncrementalAlterConfigs(r) => (
            r.responses[0].error_code,
            r.responses[0].error_message.as_ref().map(|m| m.to_string()),
        ),
        other => panic!("{other:?}"),
    }
}

fn keyed_batch(keys: &[Option<&str>]) -> Bytes {
    let recs: Vec<Record> = keys
        .iter()
        .map(|k| Record {
            key: k.map(|k| k.as_bytes().to_vec()),
            value: Some(b"value".repeat(40)),
            headers: vec![("h".into(), b"1".to_vec())],
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    Bytes::from(batch::encode_batch(&recs))
}

const INVALID_RECORD: i16 = 87;
const NOT_ENOUGH_REPLICAS: i16 = 19;

/// Every topic config Kafka defines is accepted and described; list configs take
/// APPEND and SUBTRACT; a compacted topic refuses records without keys and says which
/// (KIP-467); `compression.type` rewrites batches in the topic's codec;
/// `min.insync.replicas` above the in-sync replicas refuses acks=all.
#[test]
fn topic_configs_behave_as_in_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data"));
    let mut k = Kafka::connect(b.kafka);
    create_topic(
        &mut k,
        "cfg",
        1,
        &[
            ("min.cleanable.dirty.ratio", "0.3"),
            ("preallocate", "true"),
        ],
    );
    let d = describe(&mut k, "cfg");
    for name in [
        "cleanup.policy",
        "compression.type",
        "delete.retention.ms",
        "file.delete.delay.ms",
        "flush.messages",
        "flush.ms",
        "index.interval.bytes",
        "local.retention.ms",
        "max.compaction.lag.ms",
        "max.message.bytes",
        "message.timestamp.type",
        "min.compaction.lag.ms",
        "min.insync.replicas",
        "remote.storage.enable",
        "retention.bytes",
        "retention.ms",
        "segment.bytes",
        "segment.index.bytes",
        "segment.jitter.ms",
        "segment.ms",
        "unclean.leader.election.enable",
        "message.timestamp.before.max.ms",
        "message.timestamp.after.max.ms",
    ] {
        assert!(d.contains_key(name), "{name} described");
    }
    assert_eq!(
        d["min.cleanable.dirty.ratio"],
        ("0.3".into(), 1),
        "set on the topic"
    );
    assert_eq!(d["preallocate"], ("true".into(), 1));
    assert_eq!(d["cleanup.policy"], ("delete".into(), 5), "the default");
    // Unknown names and bad values: INVALID_CONFIG.
    let mut t = km::create_topics_request::CreatableTopic::default();
    t.name = km::TopicName(s("cfg-bad"));
    t.num_partitions = 1;
    t.replication_factor = 1;
    let mut c = km::create_topics_request::CreatableTopicConfig::default();
    c.name = s("no.such.config");
    c.value = Some(s("1"));
    t.configs = vec![c];
    let mut q = km::CreateTopicsRequest::default();
    q.topics = vec![t];
    match k.call(7, RequestKind::CreateTopics(q)) {
        ResponseKind::CreateTopics(r) => assert_eq!(r.topics[0].error_code, INVALID_CONFIG),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        alter(&mut k, "cfg", &[("min.insync.replicas", 0, Some("0"))]).0,
        INVALID_CONFIG
    );
    // APPEND and SUBTRACT on a list; not on a number.
    assert_eq!(
        alter(&mut k, "cfg", &[("cleanup.policy", 2, Some("compact"))]).0,
        0
    );
    assert_eq!(
        describe(&mut k, "cfg")["cleanup.policy"],
        ("delete,compact".into(), 1)
    );
    assert_eq!(
        alter(&mut k, "cfg", &[("cleanup.policy", 3, Some("delete"))]).0,
        0
    );
    assert_eq!(describe(&mut k, "cfg")["cleanup.policy"].0, "compact");
    let (code, message) = alter(&mut k, "cfg", &[("retention.ms", 2, Some("5"))]);
    assert_eq!(code, INVALID_CONFIG);
    assert!(message.unwrap().contains("not a list"));
    assert_eq!(
        alter(&mut k, "cfg", &[("cleanup.policy", 3, Some("compact"))]).0,
        INVALID_CONFIG,
        "never empty"
    );

    // cfg is compact-only now: records need keys; the refused ones are named.
    let (code, _) = produce_one(&mut k, 9, "cfg", 0, keyed_batch(&[Some("a"), Some("b")]));
    assert_eq!(code, 0);
    match k.call(
        9,
        produce_request("cfg", 0, keyed_batch(&[Some("a"), None, Some("c"), None])),
    ) {
        ResponseKind::Produce(r) => {
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(p.error_code, INVALID_RECORD);
            assert_eq!(
                p.record_errors
                    .iter()
                    .map(|e| e.batch_index)
                    .collect::<Vec<_>>(),
                vec![1, 3]
            );
            assert!(p.error_message.as_ref().unwrap().contains("without keys"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fetch_values(&mut k, "cfg", 0).len(),
        2,
        "nothing of the refused batch stored"
    );
    // DELETE: back to the default, records without keys go in again.
    assert_eq!(alter(&mut k, "cfg", &[("cleanup.policy", 1, None)]).0, 0);
    assert_eq!(
        describe(&mut k, "cfg")["cleanup.policy"],
        ("delete".into(), 5)
    );
    assert_eq!(produce_one(&mut k, 9, "cfg", 0, keyed_batch(&[None])).0, 0);

    // compression.type: the broker stores the topic's codec whatever the producer sent.
    create_topic(&mut k, "gz", 1, &[("compression.type", "gzip")]);
    let sent = keyed_batch(&[Some("x"), None, Some("z")]);
    assert_eq!(produce_one(&mut k, 9, "gz", 0, sent.clone()).0, 0);
    let r = match k.call(
        12,
        RequestKind::Fetch(fetch_request("gz", 0, 0, 1 << 20, 1 << 20)),
    ) {
        ResponseKind::Fetch(r) => r,
        other => panic!("{other:?}"),
    };
    let stored = r.responses[0].partitions[0].records.clone().unwrap();
    let info = batch::validate(&stored, usize::MAX).unwrap();
    assert_eq!(info.compression, batch::Compression::Gzip);
    assert_eq!(info.record_count, 3);
    let plain = ringmq_storage::codecs::decompress(
        &stored[batch::HEADER_BYTES..],
        batch::Compression::Gzip,
    )
    .unwrap();
    assert_eq!(
        plain,
        sent[batch::HEADER_BYTES..].to_vec(),
        "the same records"
    );
    assert_eq!(fetch_values(&mut k, "gz", 0).len(), 3);

    // min.insync.replicas: acks=all needs that many in-sync replicas; acks=1 does not.
    create_topic(&mut k, "isr", 1, &[("min.insync.replicas", "2")]);
    assert_eq!(
        produce_one(&mut k, 9, "isr", 0, keyed_batch(&[Some("a")])).0,
        NOT_ENOUGH_REPLICAS
    );
    let mut q = match produce_request("isr", 0, keyed_batch(&[Some("a")])) {
        RequestKind::Produce(q) => q,
        _ => unreachable!(),
    };
    q.acks = 1;
    match k.call(9, RequestKind::Produce(q)) {
        ResponseKind::Produce(r) => assert_eq!(r.responses[0].partition_responses[0].error_code, 0),
        other => panic!("{other:?}"),
    }
}

/// The sizes of the records each partition of a fetch answer carries, in request order.
fn fetch_sizes(
    k: &mut Kafka,
    parts: &[(&str, i32)],
    max_bytes: i32,
    partition_max: i32,
) -> Vec<usize> {
    let mut q = fetch_request(parts[0].0, parts[0].1, 0, max_bytes, partition_max);
    q.topics.clear();
    for (topic, partition) in parts {
        let mut t = fetch_request(topic, *partition, 0, max_bytes, partition_max)
            .topics
            .remove(0);
        t.partitions[0].partition = *partition;
        q.topics.push(t);
    }
    match k.call(12, RequestKind::Fetch(q)) {
        ResponseKind::Fetch(r) => r
            .responses
            .iter()
            .map(|t| {
                let p = &t.partitions[0];
                assert_eq!(p.error_code, 0);
                p.records.as_ref().map_or(0, |r| r.len())
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Regression: a fetch answer exceeded the request's `max_bytes` (each shard filled
/// its own part up to it), so a consumer with a 1 MB limit got 2.7 MB and could not
/// consume. Kafka's rule (KIP-74): the answer stays within `max_bytes` and each
/// partition within `partition_max_bytes`, except the first batch of the first
/// non-empty partition, which comes whole.
#[test]
fn fetch_answers_stay_within_max_bytes_and_partition_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data"));
    let mut k = Kafka::connect(b.kafka);
    // Partitions on both shards, each with two batches of about 400 KB.
    create_topic(&mut k, "big", 4, &[]);
    for p in 0..4 {
        for i in 0..2 {
            let (code, _) = produce_one(
                &mut k,
                9,
                "big",
                p,
                plain_batch(&format!("{p}-{i}"), 400_000),
            );
            assert_eq!(code, 0);
        }
    }
    create_topic(&mut k, "huge", 1, &[("max.message.bytes", "3000000")]);
    assert_eq!(
        produce_one(&mut k, 9, "huge", 0, plain_batch("h", 1_500_000)).0,
        0
    );
    let big: Vec<(&str, i32)> = (0..4).map(|p| ("big", p)).collect();

    // 1 MB for the whole answer: two batches of the first partition, nothing more.
    let sizes = fetch_sizes(&mut k, &big, 1_000_000, 1 << 20);
    assert!(sizes.iter().sum::<usize>() <= 1_000_000, "{sizes:?}");
    assert!(
        sizes[0] > 700_000,
        "the first partition fills what it can: {sizes:?}"
    );
    // Room for all: every partition answers.
    let sizes = fetch_sizes(&mut k, &big, 50 << 20, 1 << 20);
    assert!(sizes.iter().all(|&s| s > 700_000), "{sizes:?}");
    // 500 KB per partition: one batch each.
    let sizes = fetch_sizes(&mut k, &big, 50 << 20, 500_000);
    assert!(sizes.iter().all(|&s| s > 0 && s <= 500_000), "{sizes:?}");
    // A first batch larger than both limits comes whole when its partition is the
    // first non-empty one, and then nothing else fits.
    let sizes = fetch_sizes(
        &mut k,
        &[("huge", 0), ("big", 0), ("big", 1)],
        1_000_000,
        1 << 20,
    );
    assert!(sizes[0] > 1_500_000, "{sizes:?}");
    assert_eq!(&sizes[1..], &[0, 0], "{sizes:?}");
    // Not the first: it waits for a fetch of its own.
    let sizes = fetch_sizes(&mut k, &[("big", 0), ("huge", 0)], 1_000_000, 1 << 20);
    assert!(sizes[0] > 0 && sizes[0] <= 1_000_000, "{sizes:?}");
    assert_eq!(sizes[1], 0, "{sizes:?}");
    // Over the partition limit only: still whole when first.
    let sizes = fetch_sizes(&mut k, &[("big", 2), ("big", 3)], 50 << 20, 100_000);
    assert!(
        sizes[0] > 400_000 && sizes[0] < 800_000,
        "one whole batch: {sizes:?}"
    );
    assert_eq!(sizes[1], 0, "{sizes:?}");
}

/// Regression: the accept loop raced each accept against a tick that checks for a stop
/// and dropped the accept when the tick won; a connection the kernel had accepted by
/// then was lost, neither served nor closed, and a client's first request on it was
/// never answered. With a tick of 1 ms, every one of 10 000 connections must be served.
#[test]
fn every_accepted_connection_is_served_while_the_accept_loop_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_env(
        &dir.path().join("data"),
        2,
        &[],
        &[("RINGMQ_ACCEPT_TICK_MS", "1")],
    );
    // Eight clients at once, each connecting 1250 times: an answer or a lost connection.
    let addr = b.kafka;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut lost = 0;
                for _ in 0..1250 {
                    let stream = std::net::TcpStream::connect(addr).unwrap();
                    stream
                        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .unwrap();
                    let mut k = Kafka::from_stream(stream);
                    let id = k.send(
                        3,
                        RequestKind::ApiVersions(km::ApiVersionsRequest::default()),
                    );
                    match k.try_receive(id) {
                        Some(ResponseKind::ApiVersions(r)) => assert_eq!(r.error_code, 0),
                        Some(other) => panic!("{other:?}"),
                        None => lost += 1,
                    }
                }
                lost
            })
        })
        .collect();
    let lost: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(lost, 0, "accepted connections were never served");
}

/// Regression: DeleteRecords for partition -1 was sent on as partition 0, deleting
/// partition 0's records while answering UNKNOWN_TOPIC_OR_PARTITION; and a damaged
/// batch sent to a topic whose `compression.type` rewrites batches must be refused, not
/// given a new CRC.
#[test]
fn bad_partitions_and_damaged_batches_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data"));
    let mut k = Kafka::connect(b.kafka);
    create_topic(&mut k, "keep", 1, &[("compression.type", "gzip")]);
    for i in 0..3 {
        assert_eq!(
            produce_one(&mut k, 9, "keep", 0, plain_batch(&i.to_string(), 10)).0,
            0
        );
    }
    let mut p = km::delete_records_request::DeleteRecordsPartition::default();
    p.partition_index = -1;
    p.offset = -1;
    let mut t = km::delete_records_request::DeleteRecordsTopic::default();
    t.name = km::TopicName(s("keep"));
    t.partitions = vec![p];
    let mut q = km::DeleteRecordsRequest::default();
    q.topics = vec![t];
    q.timeout_ms = 5000;
    match k.call(2, RequestKind::DeleteRecords(q)) {
        ResponseKind::DeleteRecords(r) => {
            assert_eq!(
                r.topics[0].partitions[0].error_code,
                UNKNOWN_TOPIC_OR_PARTITION
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fetch_values(&mut k, "keep", 0).len(),
        3,
        "partition 0 untouched"
    );
    // A flipped byte in the records: the CRC no longer holds.
    let mut bad = plain_batch("damaged", 100).to_vec();
    let last = bad.len() - 5;
    bad[last] ^= 0x5a;
    let (code, _) = produce_one(&mut k, 9, "keep", 0, Bytes::from(bad));
    assert_eq!(code, 2, "CORRUPT_MESSAGE");
    assert_eq!(fetch_values(&mut k, "keep", 0).len(), 3, "nothing stored");
}

/// A group that a refused join created, with no member, is reclaimed: it does not stay
/// in the coordinator's memory (a client could otherwise fill it with new group ids).
#[test]
fn groups_left_behind_by_refused_joins_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data"));
    let mut k = Kafka::connect(b.kafka);
    let describe = |k: &mut Kafka, g: &str| {
        let mut q = km::DescribeGroupsRequest::default();
        q.groups = vec![km::GroupId(s(g))];
        match k.call(5, RequestKind::DescribeGroups(q)) {
            ResponseKind::DescribeGroups(r) => r.groups[0].group_state.to_string(),
            other => panic!("{other:?}"),
        }
    };
    for i in 0..50 {
        let g = format!("refused-{i}");
        // The native protocol type with an assignor the broker does not have.
        let mut q = km::JoinGroupRequest::default();
        q.group_id = km::GroupId(s(&g));
        q.session_timeout_ms = 10_000;
        q.rebalance_timeout_ms = 10_000;
        q.protocol_type = s("ringmq");
        let mut p = km::join_group_request::JoinGroupRequestProtocol::default();
        p.name = s("no-such-assignor");
        q.protocols = vec![p];
        assert_eq!(joined(k.call(7, RequestKind::JoinGroup(q))).error_code, 23);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while (0..50).any(|i| describe(&mut k, &format!("refused-{i}")) != "Dead") {
        assert!(
            std::time::Instant::now() < deadline,
            "refused groups still held after 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The broker's resident memory, KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends every request on one connection, at most `window` in flight; the answers'
/// error codes (with the member ids given), in request order.
fn join_all(k: &mut Kafka, requests: Vec<RequestKind>, window: usize) -> Vec<(i16, String)> {
    let mut out = Vec::with_capacity(requests.len());
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let ids: Vec<i32> = requests
            .by_ref()
            .take(window)
            .map(|r| k.send(9, r))
            .collect();
        for id in ids {
            let r = joined(k.receive(id));
            out.push((r.error_code, r.member_id.to_string()));
        }
    }
    out
}

const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const MEMBER_ID_REQUIRED: i16 = 79;
const GROUP_MAX_SIZE_REACHED: i16 = 81;

/// What a client that makes up group ids and members can make the coordinator hold is
/// capped (`--groups-max`, `--group-max-size`, `--group-pending-members-max`): joins
/// past the caps get clear, retriable errors (GROUP_MAX_SIZE_REACHED for a full group),
/// the broker's memory stays within a bound, and it goes on serving.
///
/// The bound: 40 000 first joins with 1000-byte group ids, every one a new group, grow
/// the broker's RSS by about 63 MiB without the caps (measured with `--groups-max`
/// 1000000); with them it must grow by less than 24 MiB (measured: under 1 MiB).
#[test]
fn group_caps_hold_against_a_flood_of_joins() {
    const FLOOD: usize = 40_000;
    const GROUPS_MAX: usize = 50;
    const PENDING_MAX: usize = 20;
    const GROWTH_MAX_KIB: u64 = 24 << 10;
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_args(
        &dir.path().join("data"),
        2,
        &[
            "--group-initial-rebalance-delay-ms",
            "1000",
            "--groups-max",
            &GROUPS_MAX.to_string(),
            "--group-max-size",
            "3",
            "--group-pending-members-max",
            &PENDING_MAX.to_string(),
        ],
    );
    let pid = b.child.id();
    let mut k = Kafka::connect(b.kafka);
    create_topic(&mut k, "caps", 3, &[]);
    let before = rss_kib(pid);

    // Members for one group: ids are handed out up to --group-pending-members-max.
    let crowd: Vec<RequestKind> = (0..5_000)
        .map(|_| join_request("crowd", "", None, &["caps"]))
        .collect();
    let answers = join_all(&mut k, crowd, 64);
    let pending: Vec<String> = answers
        .iter()
        .filter(|(code, _)| *code == MEMBER_ID_REQUIRED)
        .map(|(_, member)| member.clone())
        .collect();
    assert_eq!(pending.len(), PENDING_MAX);
    assert!(
        answers[PENDING_MAX..]
            .iter()
            .all(|(code, _)| *code == COORDINATOR_NOT_AVAILABLE),
        "first joins past the pending ids: retriable"
    );
    // New group ids, each long: MEMBER_ID_REQUIRED (a member id handed out, the group
    // held) until a shard holds --groups-max groups, then COORDINATOR_NOT_AVAILABLE.
    let pad = "x".repeat(1000);
    let flood: Vec<RequestKind> = (0..FLOOD)
        .map(|i| join_request(&format!("flood-{i}-{pad}"), "", None, &["caps"]))
        .collect();
    let answers = join_all(&mut k, flood, 64);
    let handed_out: Vec<(usize, String)> = answers
        .iter()
        .enumerate()
        .filter(|(_, (code, _))| *code == MEMBER_ID_REQUIRED)
        .map(|(i, (_, member))| (i, member.clone()))
        .collect();
    let refused = answers
        .iter()
        .filter(|(code, _)| *code == COORDINATOR_NOT_AVAILABLE)
        .count();
    assert_eq!(
        handed_out.len() + 1,
        2 * GROUPS_MAX,
        "two shards, each full (the crowd group is one)"
    );
    assert_eq!(handed_out.len() + refused, FLOOD, "no other answer");

    let after = rss_kib(pid);
    println!("broker RSS: {before} KiB before the joins, {after} KiB after");
    assert!(
        after < before + GROWTH_MAX_KIB,
        "RSS grew from {before} KiB to {after} KiB"
    );

    // Three of those members join, together (in the first rebalance's delay): the group
    // is full, and the next member with an id handed out is refused.
    let mut conns: Vec<Kafka> = (0..3).map(|_| Kafka::connect(b.kafka)).collect();
    let sent: Vec<i32> = conns
        .iter_mut()
        .zip(&pending)
        .map(|(c, m)| c.send(9, join_request("crowd", m, None, &["caps"])))
        .collect();
    for (c, id) in conns.iter_mut().zip(sent) {
        let r = joined(c.receive(id));
        assert_eq!((r.error_code, r.generation_id), (0, 1));
    }
    let r = joined(k.call(9, join_request("crowd", &pending[3], None, &["caps"])));
    assert_eq!(r.error_code, GROUP_MAX_SIZE_REACHED);
    let r = joined(k.call(9, join_request("crowd", "", None, &["caps"])));
    assert_eq!(r.error_code, GROUP_MAX_SIZE_REACHED);

    // The broker goes on: Metadata, and a consumer joining, syncing and heartbeating
    // in one of the groups the flood made.
    let mut q = km::MetadataRequest::default();
    q.topics = None;
    match k.call(12, RequestKind::Metadata(q)) {
        ResponseKind::Metadata(m) => {
            assert!(
                m.topics
                    .iter()
                    .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "caps"))
            )
        }
        other => panic!("{other:?}"),
    }
    let (i, member) = &handed_out[0];
    let g = format!("flood-{i}-{pad}");
    let r = joined(k.call(9, join_request(&g, member, None, &["caps"])));
    assert_eq!(r.error_code, 0);
    assert_eq!(r.leader.as_str(), member);
    let (code, assignment) = synced(k.call(
        5,
        sync_request(&g, r.generation_id, member, None, &[(member, "all")]),
    ));
    assert_eq!((code, assignment.as_str()), (0, "all"));
    assert_eq!(heartbeat(&mut k, &g, r.generation_id, member, None), 0);
}
