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
            assert_ne!(r.producer_id.0, sent_id, "v{v}: the client's id is not reused");
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
                assert_eq!(r.error_code, UNSUPPORTED_VERSION, "v{v}");
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
            assert!(offsets.insert(offset), "{tag} batch {i}: offset {offset} given twice");
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
        let (code, offset) =
            produce_one(&mut k2, 9, "idem", 0, idempotent_batch(restarted, 0, i, &format!("r-{i}")));
        assert_eq!(code, 0);
        assert!(offsets.insert(offset));
    }
    // Ids the broker did not issue: refused, nothing stored.
    for forged in [0, 1, a + 1, b_id ^ 1, i64::MAX] {
        let (code, _) = produce_one(&mut k2, 9, "idem", 0, idempotent_batch(forged, 0, 0, "x"));
        assert_eq!(code, UNKNOWN_PRODUCER_ID, "forged id {forged}");
    }
    let values = fetch_values(&mut k2, "idem", 0);
    assert_eq!(values.len(), 2 * per_producer as usize + 10, "every acknowledged batch is stored");
    let unique: HashSet<_> = values.iter().collect();
    assert_eq!(unique.len(), values.len());
    assert!(!values.iter().any(|v| v == "x"));
}

/// Regression: a waiting large batch was overtaken by a later small one, so pipelined
/// produce requests of one connection were stored out of order. Each round pipelines
/// requests of mixed sizes (up to about 1 MB) to both partitions of a topic, one of
/// which is on another shard than the connection (forwarded), without waiting for
/// answers, and checks the stored order.
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
    let mut k = Kafka::connect(b.kafka);
    create_topic(&mut k, "order", 2, &[]);
    let rounds = 5;
    let per_round = 30;
    let mut sent: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for round in 0..rounds {
        let mut k = Kafka::connect(b.kafka);
        let mut ids = Vec::new();
        for i in 0..per_round {
            for partition in 0..2 {
                let big = (i + round) % 2 == 0;
                let tag = format!("{round}-{i}-{partition}");
                let pad = if big { 900 << 10 } else { 100 };
                let batch = plain_batch(&tag, pad);
                ids.push(k.send(7, produce_request("order", partition, batch)));
                sent.entry(partition).or_default().push(tag);
            }
        }
        for id in ids {
            match k.receive(id) {
                ResponseKind::Produce(r) => {
                    let p = &r.responses[0].partition_responses[0];
                    assert_eq!(p.error_code, 0, "round {round}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    for (partition, tags) in sent {
        let got: Vec<String> = fetch_values(&mut k, "order", partition)
            .into_iter()
            .map(|v| v.split(':').next().unwrap().to_string())
            .collect();
        assert_eq!(got, tags, "partition {partition}: stored in the order sent");
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
