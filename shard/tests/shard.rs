//! The shard without a socket: partitions, routing between shards, long polls and
//! topic changes, driven through the shard's own operations on real executors and a
//! temporary data directory.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use ringmq_shard::broker::{Shard, ShardOptions, links};
use ringmq_shard::error::ErrorKind;
use ringmq_shard::ops::{
    Acks, Fetch, FetchPart, Isolation, OffsetQuery, OffsetSpec, ProducePart, Reader, TopicOp,
    TopicPartition,
};
use ringmq_shard::partition::Partition;
use ringmq_shard::producer_ids::IdKey;
use ringmq_shard::timers::Timers;
use ringmq_shard::topic_configs::TopicPolicy;
use ringmq_shard::topics::TopicTable;
use ringmq_storage::batch::{self, Record};
use ringmq_storage::{LogConfig, SegmentCache};

fn batch(value: &[u8]) -> Bytes {
    Bytes::from(batch::encode_batch(&[Record {
        key: None,
        value: Some(value.to_vec()),
        headers: vec![],
        timestamp_ms: 1_000,
    }]))
}

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

fn options(data: &Path, key: IdKey, shard_id: u32, shard_count: u32) -> ShardOptions {
    ShardOptions {
        shard_id,
        shard_count,
        data_dir: data.to_path_buf(),
        log_defaults: LogConfig::default(),
        open_segments_max: 16,
        call_timeout: Duration::from_secs(10),
        zero_copy: false,
        group_initial_rebalance_delay: Duration::ZERO,
        group_log_compact_bytes: 16 << 20,
        groups_max: 1000,
        group_max_size: 100,
        group_pending_members_max: 100,
        producer_id_key: key,
        producer_id_issuer: shard_id,
        min_insync_replicas: 1,
        acks_none_bytes_max: 1 << 20,
        replica_lag_time_max_ms: ringmq_shard::broker::REPLICA_LAG_TIME_MAX_MS,
        clustered: false,
    }
}

/// The one shard of a cluster node with no metadata yet, its options changed by `tweak`.
async fn cluster_node(data: &Path, tweak: impl FnOnce(&mut ShardOptions)) -> Rc<Shard> {
    let key = IdKey::load_or_create(data).unwrap();
    let mut opts = options(data, key, 0, 1);
    opts.clustered = true;
    tweak(&mut opts);
    let l = links(1).into_iter().next().unwrap();
    Shard::start(opts, TopicTable::default(), l).await.unwrap()
}

/// A partition's log end and high watermark, reads bounded by the reader, acks=all
/// against `min.insync.replicas`, and the leader-epoch history.
#[test]
fn a_partition_produces_reads_and_answers_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let tp = TopicPartition::new("t", 0);
        let strict = Rc::new(TopicPolicy {
            min_insync_replicas: 2,
            ..TopicPolicy::default()
        });
        let p = Partition::open(
            tp.clone(),
            &path.join("t-0"),
            LogConfig::default(),
            SegmentCache::new(4),
            strict,
        )
        .await
        .unwrap();
        assert_eq!(p.leader_epoch(), 0, "a new partition starts epoch 0");
        // acks=all with one in-sync replica of the two required: refused, not stored.
        let (e, _) = p.produce(batch(b"all"), Acks::All, 1).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotEnoughReplicas);
        assert_eq!(p.log_end_offset(), 0);
        for (i, v) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
            let at = p.produce(batch(v), Acks::Leader, 1).await.unwrap();
            assert_eq!(at.base_offset, i as i64);
        }
        // every_batch: acknowledged means durable, so the watermark is the end.
        assert_eq!((p.log_end_offset(), p.high_watermark()), (3, 3));
        let consumer = Reader::Consumer(Isolation::ReadUncommitted);
        let r = p.read(0, 1 << 20, consumer).await.unwrap();
        assert_eq!(r.next_offset, 3);
        let follower = Reader::Follower {
            replica_id: 1,
            leader_epoch: 0,
        };
        // No followers without replication: a reader that claims to be one is refused,
        // never shown what is past the high watermark.
        assert_eq!(
            p.read(0, 1 << 20, follower).await.unwrap_err().kind,
            ErrorKind::NotLeader
        );
        let far = p.read(4, 1 << 20, consumer).await.unwrap_err();
        assert_eq!(far.kind, ErrorKind::OffsetOutOfRange);
        // Epochs: the current one ends at the log end; a newer one is unknown.
        assert_eq!(p.end_of_epoch(0).result, Ok((0, 3)));
        assert_eq!(p.end_of_epoch(1).result, Ok((-1, -1)));
        assert_eq!(p.epoch_at(2), 0);
        assert_eq!(
            p.check_epoch(Some(1)).unwrap_err().kind,
            ErrorKind::UnknownLeaderEpoch
        );
        assert!(p.check_epoch(Some(0)).is_ok() && p.check_epoch(None).is_ok());
        assert_eq!(
            p.offset_for(OffsetSpec::Latest).await.unwrap(),
            Some((3, -1))
        );
        p.log().close().await.unwrap();
    });
}

/// Two shards on two executors: a topic change made on one applies on both, produce
/// and fetch reach the partitions of both through the router, and a long-polling
/// fetch is woken by the produce that gives it data, well before its max wait.
#[test]
fn shards_route_operations_and_long_polls_wake_on_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let mut all = links(2).into_iter();
    let (l0, l1) = (all.next().unwrap(), all.next().unwrap());
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    // The node's key is made once, before the shards start (as `serve` does).
    let key = IdKey::load_or_create(&data).unwrap();
    let d1 = data.clone();
    // Shard 1 serves calls until shard 0 is done.
    let other = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shard = Shard::start(options(&d1, key, 1, 2), TopicTable::default(), l1)
                .await
                .unwrap();
            while stop_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            shard.shutdown().await;
        })
        .unwrap();
    run(move || async move {
        let shard = Shard::start(options(&data, key, 0, 2), TopicTable::default(), l0)
            .await
            .unwrap();
        shard
            .change_topics(TopicOp::Create {
                name: "t".into(),
                partitions: 4,
                configs: vec![],
                replication_factor: None,
                validate_only: false,
            })
            .await
            .unwrap();
        let placement = shard.topic("t").unwrap().placement;
        assert!(
            placement.contains(&0) && placement.contains(&1),
            "{placement:?}"
        );
        let parts: Vec<ProducePart> = (0..4)
            .map(|p| ProducePart {
                tp: TopicPartition::new("t", p),
                batch: batch(format!("p{p}").as_bytes()),
            })
            .chain([ProducePart {
                tp: TopicPartition::new("nope", 0),
                batch: batch(b"x"),
            }])
            .collect();
        let produced = shard.produce(Acks::Leader, parts).await;
        assert_eq!(produced.len(), 5);
        for (p, r) in produced.iter().take(4).enumerate() {
            assert_eq!(r.tp, TopicPartition::new("t", p as u32));
            assert_eq!(r.result, Ok(0), "{r:?}");
        }
        assert_eq!(
            produced[4].result.as_ref().unwrap_err().kind,
            ErrorKind::UnknownTopic
        );
        let fetch = |offset: i64, max_wait: Duration| Fetch {
            reader: Reader::Consumer(Isolation::ReadUncommitted),
            max_wait,
            min_bytes: 1,
            max_bytes: 1 << 20,
            parts: (0..4)
                .map(|p| FetchPart {
                    tp: TopicPartition::new("t", p),
                    offset,
                    max_bytes: 1 << 20,
                    leader_epoch: Some(0),
                    durable_offset: None,
                })
                .collect(),
        };
        let got = shard.fetch(fetch(0, Duration::ZERO)).await;
        assert!(
            got.iter().all(|f| !f.is_empty() && f.high_watermark == 1),
            "{got:?}"
        );
        let offsets = shard
            .list_offsets(
                (0..4)
                    .map(|p| OffsetQuery {
                        tp: TopicPartition::new("t", p),
                        spec: OffsetSpec::Latest,
                        leader_epoch: None,
                    })
                    .collect(),
            )
            .await;
        assert!(offsets.iter().all(|o| o.result == Ok(Some((1, -1, 0)))));

        // A long poll at the end of every partition, woken by a produce to one that
        // lives on the other shard.
        let on_other = placement.iter().position(|&s| s == 1).unwrap() as u32;
        let waiting = {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let start = Instant::now();
                let got = shard.fetch(fetch(1, Duration::from_secs(20))).await;
                (start.elapsed(), got)
            })
        };
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let r = shard
            .produce(
                Acks::Leader,
                vec![ProducePart {
                    tp: TopicPartition::new("t", on_other),
                    batch: batch(b"late"),
                }],
            )
            .await;
        assert_eq!(r[0].result, Ok(1));
        let (waited, got) = waiting.await;
        assert!(
            waited < Duration::from_secs(10),
            "woken by data, waited {waited:?}"
        );
        assert!(!got[on_other as usize].is_empty());

        // Deleting the topic applies on both shards.
        shard
            .change_topics(TopicOp::Delete { name: "t".into() })
            .await
            .unwrap();
        let gone = shard.fetch(fetch(0, Duration::ZERO)).await;
        assert!(
            gone.iter()
                .all(|f| f.records.as_ref().unwrap_err().kind == ErrorKind::UnknownTopic)
        );
        shard.shutdown().await;
        stop_tx.send(()).unwrap();
    });
    other.join().unwrap();
}

/// A long poll on the shard's own clock, moved by the test: it waits while time stands
/// still, answers empty once the clock passes its max wait, and an append wakes it
/// before its deadline without the clock moving at all.
#[test]
fn a_long_poll_waits_on_the_shards_clock_and_wakes_on_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    run(move || async move {
        let key = IdKey::load_or_create(&data).unwrap();
        let timers = Timers::manual();
        let shard = Shard::start_with_timers(
            options(&data, key, 0, 1),
            TopicTable::default(),
            links(1).pop().unwrap(),
            timers.clone(),
        )
        .await
        .unwrap();
        shard
            .change_topics(TopicOp::Create {
                name: "t".into(),
                partitions: 1,
                configs: vec![],
                replication_factor: None,
                validate_only: false,
            })
            .await
            .unwrap();
        let poll = |shard: Rc<Shard>| {
            let done = Rc::new(Cell::new(false));
            let d = done.clone();
            let task = glommio::spawn_local(async move {
                let got = shard
                    .fetch(Fetch {
                        reader: Reader::Consumer(Isolation::ReadUncommitted),
                        max_wait: Duration::from_millis(500),
                        min_bytes: 1,
                        max_bytes: 1 << 20,
                        parts: vec![FetchPart {
                            tp: TopicPartition::new("t", 0),
                            offset: 0,
                            max_bytes: 1 << 20,
                            leader_epoch: None,
                            durable_offset: None,
                        }],
                    })
                    .await;
                d.set(true);
                got
            });
            (done, task)
        };
        // Lets the shard's tasks run; the shard's clock does not move meanwhile.
        let settle = || glommio::timer::sleep(Duration::from_millis(30));

        let (done, task) = poll(shard.clone());
        settle().await;
        assert!(!done.get(), "no data: the poll waits");
        timers.advance(Duration::from_millis(400));
        settle().await;
        assert!(!done.get(), "400 ms of its 500 ms max wait: still waiting");
        timers.advance(Duration::from_millis(200));
        settle().await;
        assert!(
            done.get(),
            "the shard's clock passed the max wait: answered"
        );
        let got = task.await;
        assert!(
            got[0].records.as_ref().unwrap().is_empty(),
            "answered empty"
        );

        let (done, task) = poll(shard.clone());
        settle().await;
        assert!(!done.get());
        let r = shard
            .produce(
                Acks::Leader,
                vec![ProducePart {
                    tp: TopicPartition::new("t", 0),
                    batch: batch(b"wake"),
                }],
            )
            .await;
        assert_eq!(r[0].result, Ok(0));
        let got = task.await;
        assert!(
            !got[0].is_empty(),
            "woken by the append, the clock never moved"
        );
        shard.shutdown().await;
    });
}

/// One replicated partition on two replicas in one executor, messages carried by hand:
/// the leader's acks=all produce waits until the follower fetched past it; the
/// follower copies the batches at the leader's offsets and epochs, learns the high
/// watermark, refuses clients, and after a change of leader truncates what the new
/// leader never had.
#[test]
fn a_replicated_partition_acknowledges_after_the_follower_has_it() {
    use ringmq_replication::{EpochEndOffset, FollowerRequest};
    use ringmq_shard::replica::{LeaderAnswer, Leadership, Outbox, ReplicaSettings};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let tp = TopicPartition::new("t", 0);
        let policy = Rc::new(TopicPolicy {
            min_insync_replicas: 2,
            ..TopicPolicy::default()
        });
        let open = |name: &str| {
            let (tp, dir, policy) = (tp.clone(), path.join(name), policy.clone());
            async move {
                Partition::open(tp, &dir, LogConfig::default(), SegmentCache::new(4), policy)
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (open("a").await, open("b").await);
        let settings = ReplicaSettings {
            replica_lag_time_max_ms: 3_000,
        };
        let outbox = Outbox::new();
        let leadership = |me, epoch, partition_epoch| Leadership {
            me,
            leader_epoch: epoch,
            partition_epoch,
            replicas: vec![1, 2],
            isr: vec![1, 2],
        };
        a.lead(leadership(1, 1, 1), settings, outbox.clone(), 0)
            .await
            .unwrap();
        b.follow(2, 1, 1);
        assert_eq!(
            b.produce(batch(b"x"), Acks::Leader, 1)
                .await
                .unwrap_err()
                .0
                .kind,
            ErrorKind::NotLeader,
            "a follower takes no produce"
        );

        // One round of the follower: ask or fetch, then apply the leader's answer.
        let round = |a: Rc<Partition>, b: Rc<Partition>, now: u64| async move {
            match b.follower_request().unwrap() {
                FollowerRequest::EndOffsetFor {
                    leader_epoch,
                    epoch,
                } => {
                    let (e, end) = a.end_of_epoch(epoch).result.unwrap();
                    b.on_epoch_answer(
                        leader_epoch,
                        epoch,
                        EpochEndOffset {
                            epoch: e,
                            end_offset: end,
                        },
                    )
                    .await
                    .unwrap();
                }
                FollowerRequest::Fetch {
                    replica,
                    fetch_offset,
                    durable_offset,
                    leader_epoch,
                    ..
                } => {
                    a.follower_fetched(replica, leader_epoch, fetch_offset, durable_offset, now)
                        .unwrap();
                    let reader = Reader::Follower {
                        replica_id: replica,
                        leader_epoch,
                    };
                    let r = a.read(fetch_offset, 1 << 20, reader).await.unwrap();
                    let mut bytes = Vec::new();
                    for c in r.chunks {
                        bytes.extend_from_slice(&c.to_bytes().await.unwrap());
                    }
                    b.append_from_leader(LeaderAnswer {
                        leader_epoch,
                        high_watermark: a.high_watermark(),
                        records: Bytes::from(bytes),
                    })
                    .await
                    .unwrap();
                }
            }
        };

        // acks=all waits for the follower: two rounds (copy, then report the copy).
        let waiting = glommio::spawn_local({
            let a = a.clone();
            async move { a.produce(batch(b"v0"), Acks::All, 1).await }
        });
        glommio::yield_if_needed().await;
        glommio::timer::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.log_end_offset(), 1);
        assert_eq!(a.high_watermark(), 0, "the follower has not fetched it yet");
        // A new log starts epoch 0, so the follower first asks where epoch 0 ends.
        assert!(matches!(
            b.follower_request(),
            Some(FollowerRequest::EndOffsetFor { epoch: 0, .. })
        ));
        round(a.clone(), b.clone(), 5).await;
        round(a.clone(), b.clone(), 10).await; // copies offset 0
        assert_eq!(b.log_end_offset(), 1);
        round(a.clone(), b.clone(), 20).await; // reports it: the watermark moves
        assert_eq!(a.high_watermark(), 1);
        assert_eq!(waiting.await.unwrap().base_offset, 0);
        round(a.clone(), b.clone(), 30).await;
        assert_eq!(b.high_watermark(), 1, "the follower learned the watermark");
        let consumer = Reader::Consumer(Isolation::ReadUncommitted);
        assert_eq!(
            b.read(0, 1 << 20, consumer).await.unwrap_err().kind,
            ErrorKind::NotLeader
        );

        // The leader appends one more that the follower never gets, then the follower
        // becomes leader in epoch 2 and the old leader follows it: the old leader's
        // extra record is cut (it was never committed).
        a.produce(batch(b"lost"), Acks::Leader, 1).await.unwrap();
        assert_eq!(a.log_end_offset(), 2);
        b.lead(leadership(2, 2, 2), settings, outbox.clone(), 40)
            .await
            .unwrap();
        a.follow(1, 2, 2);
        round(b.clone(), a.clone(), 50).await; // epoch question: truncates to 1
        assert_eq!(a.log_end_offset(), 1, "the uncommitted record is gone");
        b.produce(batch(b"v1"), Acks::Leader, 1).await.unwrap();
        round(b.clone(), a.clone(), 60).await;
        assert_eq!(a.log_end_offset(), 2);
        assert_eq!(a.epoch_at(1), 2, "the copy keeps the leader's epoch");
        assert!(outbox.take().is_empty(), "no ISR change was needed");
        a.log().close().await.unwrap();
        b.log().close().await.unwrap();
    });
}

/// Regression: a leader cut off from its followers acknowledged a producer's retry of
/// a batch it had appended but never committed (found by the cluster fault suite's
/// soak: nine acks=all writes lost when the isolated leader truncated them). A retry is
/// acknowledged as the first send: with acks=all, once the high watermark passes it.
#[test]
fn an_idempotent_retry_with_acks_all_waits_for_the_high_watermark_like_the_first_send() {
    use ringmq_shard::replica::{Leadership, Outbox, ReplicaSettings};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let tp = TopicPartition::new("t", 0);
        let policy = Rc::new(TopicPolicy {
            min_insync_replicas: 2,
            ..TopicPolicy::default()
        });
        let p = Partition::open(
            tp,
            &path.join("a"),
            LogConfig::default(),
            SegmentCache::new(4),
            policy,
        )
        .await
        .unwrap();
        let leadership = Leadership {
            me: 1,
            leader_epoch: 1,
            partition_epoch: 1,
            replicas: vec![1, 2],
            isr: vec![1, 2],
        };
        let settings = ReplicaSettings {
            replica_lag_time_max_ms: 3_000,
        };
        p.lead(leadership, settings, Outbox::new(), 0)
            .await
            .unwrap();
        let mut b = batch::encode_batch(&[Record {
            key: None,
            value: Some(b"once".to_vec()),
            headers: vec![],
            timestamp_ms: 1_000,
        }]);
        batch::set_producer(&mut b, 7, 0, 0);
        batch::fix_crc(&mut b);
        let b = Bytes::from(b);
        let first = glommio::spawn_local({
            let (p, b) = (p.clone(), b.clone());
            async move { p.produce(b, Acks::All, 1).await }
        });
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert_eq!(p.log_end_offset(), 1, "appended, not committed");
        let retry_done = Rc::new(Cell::new(false));
        let retry = glommio::spawn_local({
            let (p, b, done) = (p.clone(), b.clone(), retry_done.clone());
            async move {
                let r = p.produce(b, Acks::All, 1).await;
                done.set(true);
                r
            }
        });
        glommio::timer::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.log_end_offset(), 1, "the retry is not appended again");
        assert!(
            !retry_done.get(),
            "the retry is not acknowledged before the high watermark passes it"
        );
        // The follower reports the batch: both the send and its retry are acknowledged.
        assert_eq!(p.high_watermark(), 0);
        p.follower_fetched(2, 1, 1, 1, 10).unwrap();
        assert_eq!(first.await.unwrap().base_offset, 0);
        assert_eq!(retry.await.unwrap().base_offset, 0);
        // A retry with no follower fetching after a change of leadership is refused,
        // never acknowledged from the uncommitted log.
        p.follow(1, 2, 2);
        let refused = p.produce(b, Acks::All, 1).await.unwrap_err().0;
        assert_eq!(refused.kind, ErrorKind::NotLeader);
        p.log().close().await.unwrap();
    });
}

/// A cluster node answers what clients retry while it cannot serve a partition yet:
/// LEADER_NOT_AVAILABLE before it has learned the cluster's metadata (it is starting),
/// NOT_LEADER_OR_FOLLOWER for a partition the metadata has that this node does not
/// hold; UNKNOWN_TOPIC_OR_PARTITION only for what the metadata does not have.
/// (Regression: a restarted node answered UNKNOWN_TOPIC_OR_PARTITION while it reopened
/// its partitions, and a Kafka consumer gave up on the topic.)
#[test]
fn a_cluster_node_answers_retriable_errors_for_partitions_it_does_not_hold() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use ringmq_shard::cluster::{ClusterView, PartitionView};
    use ringmq_shard::topics::TopicMeta;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    run(move || async move {
        let shard = cluster_node(&data, |_| {}).await;
        let produce = |topic: &str, partition| {
            let shard = shard.clone();
            let tp = TopicPartition::new(topic, partition);
            async move {
                let r = shard
                    .produce(
                        Acks::Leader,
                        vec![ProducePart {
                            tp,
                            batch: batch(b"x"),
                        }],
                    )
                    .await;
                r[0].result.as_ref().map_err(|e| e.kind).copied()
            }
        };
        let earliest = |topic: &str, partition| {
            let shard = shard.clone();
            let tp = TopicPartition::new(topic, partition);
            async move {
                let r = shard
                    .list_offsets(vec![OffsetQuery {
                        tp,
                        spec: OffsetSpec::Earliest,
                        leader_epoch: None,
                    }])
                    .await;
                r[0].result.as_ref().map(|_| ()).map_err(|e| e.kind)
            }
        };
        assert_eq!(produce("t", 0).await, Err(ErrorKind::LeaderNotAvailable));
        assert_eq!(earliest("t", 0).await, Err(ErrorKind::LeaderNotAvailable));

        // Topic t has two partitions; this node (1) is a replica of partition 1 only.
        let mut topics = TopicTable::default();
        topics.topics.insert(
            "t".into(),
            TopicMeta {
                id: 1,
                partitions: 2,
                configs: BTreeMap::new(),
                placement: vec![0, 0],
            },
        );
        let view = |me, leader| PartitionView {
            replicas: vec![me],
            leader: Some(leader),
            leader_epoch: 0,
            isr: vec![me],
            partition_epoch: 0,
        };
        let mut partitions = BTreeMap::new();
        partitions.insert(TopicPartition::new("t", 0), view(2, 2));
        partitions.insert(TopicPartition::new("t", 1), view(1, 1));
        shard
            .apply_cluster(Arc::new(ClusterView {
                me: 1,
                topics,
                partitions,
                registered: true,
                ..ClusterView::default()
            }))
            .await
            .unwrap();
        assert_eq!(produce("t", 0).await, Err(ErrorKind::NotLeader));
        assert_eq!(earliest("t", 0).await, Err(ErrorKind::NotLeader));
        assert_eq!(produce("t", 1).await, Ok(0));
        assert_eq!(earliest("t", 1).await, Ok(()));
        assert_eq!(produce("nope", 0).await, Err(ErrorKind::UnknownTopic));
        assert_eq!(earliest("t", 2).await, Err(ErrorKind::UnknownPartition));
        shard.shutdown().await;
    });
}

/// A cluster node's groups live in `__consumer_offsets`: the node coordinates a group
/// only while it leads the group's partition, a commit is written to that partition,
/// the partition is compacted to a snapshot once it grows, and a node that leads it
/// again (a new epoch) rebuilds the group's offsets from the log. Before the topic exists, and for a partition led elsewhere, group requests get
/// the retriable errors that send Kafka clients to the coordinator.
#[test]
fn a_cluster_nodes_groups_follow_the_leadership_of_their_offsets_partition() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use ringmq_shard::broker::CoordinatorNode;
    use ringmq_shard::cluster::{ClusterView, NodeInfo, PartitionView};
    use ringmq_shard::groups::{
        CommitOffsets, FetchOffsets, GroupOp, GroupReply, OFFSETS_TOPIC, OffsetCommit,
        offsets_partition,
    };
    use ringmq_shard::topics::TopicMeta;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    run(move || async move {
        let shard = cluster_node(&data, |o| o.group_log_compact_bytes = 0).await;
        let group = "billing";
        let commit = |offset: i64| {
            let shard = shard.clone();
            async move {
                let op = GroupOp::CommitOffsets(CommitOffsets {
                    group: group.into(),
                    member_id: String::new(),
                    instance_id: None,
                    generation: -1,
                    offsets: vec![OffsetCommit {
                        topic: "t".into(),
                        partition: 0,
                        offset,
                        leader_epoch: -1,
                        metadata: None,
                    }],
                });
                match shard.group_request(op, Duration::ZERO).await {
                    Some(GroupReply::CommitOffsets(r)) => r[0].clone().map_err(|e| e.kind),
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        };
        let fetch = || {
            let shard = shard.clone();
            async move {
                let op = GroupOp::FetchOffsets(FetchOffsets {
                    group: group.into(),
                    topics: None,
                    require_stable: false,
                });
                match shard.group_request(op, Duration::ZERO).await {
                    Some(GroupReply::FetchOffsets(r)) => r
                        .map(|ts| {
                            ts.iter()
                                .flat_map(|t| t.partitions.iter())
                                .filter_map(|(_, c)| c.as_ref().map(|c| c.offset))
                                .collect::<Vec<_>>()
                        })
                        .map_err(|e| e.kind),
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        };
        // Fetched until the partition's load is done (it runs in the background).
        let fetch_loaded = || async {
            for _ in 0..200 {
                match fetch().await {
                    Err(ErrorKind::CoordinatorLoadInProgress) => {
                        glommio::timer::sleep(Duration::from_millis(5)).await
                    }
                    r => return r,
                }
            }
            panic!("the load did not end");
        };
        let table = {
            let mut topics = TopicTable::default();
            let meta = |id, partitions| TopicMeta {
                id,
                partitions,
                configs: BTreeMap::new(),
                placement: vec![0; partitions as usize],
            };
            topics.topics.insert("t".into(), meta(1, 1));
            topics.topics.insert(OFFSETS_TOPIC.into(), meta(2, 2));
            topics
        };
        let p = offsets_partition(group, 2);
        // This node (1) leads the group's partition in `epoch`, or node 2 does.
        let view = |leader: i32, epoch: i32| {
            let pv = |leader| PartitionView {
                replicas: vec![1, 2],
                leader: Some(leader),
                leader_epoch: epoch,
                isr: vec![leader],
                partition_epoch: epoch,
            };
            let mut partitions = BTreeMap::new();
            partitions.insert(TopicPartition::new("t", 0), pv(1));
            partitions.insert(TopicPartition::new(OFFSETS_TOPIC, p), pv(leader));
            partitions.insert(TopicPartition::new(OFFSETS_TOPIC, 1 - p), pv(2));
            let node = |n: i32| NodeInfo {
                kafka_host: "127.0.0.1".into(),
                kafka_port: 9092,
                native: format!("127.0.0.{n}:9093"),
                fenced: false,
            };
            Arc::new(ClusterView {
                me: 1,
                nodes: [(1, node(1)), (2, node(2))].into(),
                topics: table.clone(),
                partitions,
                registered: true,
                ..ClusterView::default()
            })
        };
        // FindCoordinator's answer: (node, its native listener, partition, epoch).
        let coordinator = || match shard.group_coordinator(group) {
            Ok(CoordinatorNode::Node {
                id,
                node,
                partition,
                leader_epoch,
                ..
            }) => Ok((id, node.native, partition, leader_epoch)),
            Ok(other) => panic!("a cluster node answered {other:?}"),
            Err(e) => Err(e.kind),
        };

        assert_eq!(commit(5).await, Err(ErrorKind::CoordinatorNotAvailable));
        assert_eq!(coordinator(), Err(ErrorKind::CoordinatorNotAvailable));
        shard.apply_cluster(view(1, 1)).await.unwrap();
        assert_eq!(coordinator(), Ok((1, "127.0.0.1:9093".into(), p, 1)));
        assert_eq!(fetch_loaded().await, Ok(vec![]));
        assert_eq!(commit(5).await, Ok(()));
        assert_eq!(commit(7).await, Ok(()));
        assert_eq!(fetch().await, Ok(vec![7]));
        let log_end = |shard: &Rc<Shard>| {
            shard
                .partition(&TopicPartition::new(OFFSETS_TOPIC, p))
                .unwrap()
                .log_end_offset()
        };
        assert_eq!(
            log_end(&shard),
            2,
            "each commit is a record of the partition"
        );
        assert_eq!(
            shard
                .produce(
                    Acks::All,
                    vec![ProducePart {
                        tp: TopicPartition::new(OFFSETS_TOPIC, p),
                        batch: batch(b"forged"),
                    }],
                )
                .await[0]
                .result
                .as_ref()
                .map_err(|e| e.kind)
                .copied(),
            Err(ErrorKind::InvalidTopic),
            "clients do not write to the groups' topic"
        );

        // Commits past the compaction threshold (64 KiB at least): a snapshot of the
        // group's offsets is written and the partition's log start moves to it.
        let log_start = |shard: &Rc<Shard>| {
            shard
                .partition(&TopicPartition::new(OFFSETS_TOPIC, p))
                .unwrap()
                .log()
                .start_offset()
        };
        for offset in 100..1100 {
            assert_eq!(commit(offset).await, Ok(()));
        }
        for _ in 0..200 {
            if log_start(&shard) > 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert!(log_start(&shard) > 0, "the partition was compacted");
        assert!(log_start(&shard) < log_end(&shard));
        assert_eq!(fetch().await, Ok(vec![1099]));

        // Node 2 takes the partition over: the group is not coordinated here.
        shard.apply_cluster(view(2, 2)).await.unwrap();
        assert_eq!(coordinator(), Ok((2, "127.0.0.2:9093".into(), p, 2)));
        assert_eq!(fetch().await, Err(ErrorKind::NotCoordinator));
        assert_eq!(commit(9).await, Err(ErrorKind::NotCoordinator));

        // Back here in epoch 3: the offsets come back from the partition's log, which
        // starts at the snapshot.
        shard.apply_cluster(view(1, 3)).await.unwrap();
        assert_eq!(fetch_loaded().await, Ok(vec![1099]));
        assert_eq!(commit(11).await, Ok(()));
        assert_eq!(fetch().await, Ok(vec![11]));
        shard.shutdown().await;
    });
}
