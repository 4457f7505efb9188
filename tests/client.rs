//! The native Rust client against `ringmq serve` (2 shards, 127.0.0.1, a free port).

use std::collections::HashMap;

use ringmq_client::{
    Admin, Client, Consumer, Error, ErrorCode, Position, Producer, ProducerConfig,
    partition_for_key,
};

mod common;
use common::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_produce_consume_and_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr).await.unwrap();
    let admin = Admin::new(client.clone());

    admin
        .create_topic("events", 4, &[("retention_ms".into(), "3600000".into())])
        .await
        .unwrap();
    admin.create_topic("scratch", 1, &[]).await.unwrap();
    match admin.create_topic("events", 4, &[]).await {
        Err(Error::Broker { code, .. }) => assert_eq!(code, ErrorCode::TopicExists),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        admin.list_topics().await.unwrap(),
        vec!["events", "scratch"]
    );
    let d = admin.describe_topic("events").await.unwrap();
    assert_eq!(d.partitions.len(), 4);
    assert!(
        d.configs
            .iter()
            .any(|(k, v)| k == "retention_ms" && v == "3600000")
    );
    admin.delete_topic("scratch").await.unwrap();
    assert_eq!(admin.list_topics().await.unwrap(), vec!["events"]);
    match admin.describe_topic("nope").await {
        Err(Error::Broker { code, .. }) => assert_eq!(code, ErrorCode::UnknownTopic),
        other => panic!("{other:?}"),
    }

    // 4000 keyed records with headers, sent concurrently, batched by the producer.
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let sends = (0..4000u32).map(|i| {
        let producer = producer.clone();
        async move {
            let key = format!("user-{}", i % 97);
            let value = format!("value-{i}");
            let headers = vec![("seq".to_string(), i.to_be_bytes().to_vec())];
            let at = producer
                .send("events", Some(key.as_bytes()), value.as_bytes(), &headers)
                .await
                .unwrap();
            (i, key, at)
        }
    });
    let sent: Vec<(u32, String, (u32, i64))> = futures_join_all(sends).await;
    producer.close().await.unwrap();
    assert!(matches!(
        producer.send("events", None, b"late", &[]).await,
        Err(Error::Closed)
    ));
    for (_, key, (p, _)) in &sent {
        assert_eq!(
            *p,
            partition_for_key(key.as_bytes(), 4),
            "Kafka's partition for {key}"
        );
    }

    // Read everything back: offsets as acknowledged, values, keys, headers.
    let mut by_offset: HashMap<(u32, i64), u32> = HashMap::new();
    for (i, _, (p, o)) in &sent {
        assert!(
            by_offset.insert((*p, *o), *i).is_none(),
            "offsets are unique"
        );
    }
    let mut consumer = Consumer::new(client.clone());
    for p in 0..4 {
        consumer
            .assign("events", p, Position::Earliest)
            .await
            .unwrap();
    }
    let mut got = 0;
    let mut last: HashMap<u32, i64> = HashMap::new();
    while got < sent.len() {
        let records = consumer.poll().await.unwrap();
        assert!(!records.is_empty(), "data is there");
        for r in records {
            let i = by_offset[&(r.partition, r.offset)];
            assert_eq!(r.value.as_deref(), Some(format!("value-{i}").as_bytes()));
            assert_eq!(
                r.key.as_deref(),
                Some(format!("user-{}", i % 97).as_bytes())
            );
            assert_eq!(
                r.headers,
                vec![("seq".to_string(), i.to_be_bytes().to_vec())]
            );
            if let Some(prev) = last.insert(r.partition, r.offset) {
                assert!(r.offset > prev, "in order within a partition");
            }
            got += 1;
        }
    }
    // Nothing more: a poll waits its max wait and returns empty.
    consumer.max_wait_ms = 100;
    assert!(consumer.poll().await.unwrap().is_empty());

    // Positions: latest is the end, a timestamp finds the first record at or after it.
    let end = consumer
        .offset_for("events", 0, Position::Latest)
        .await
        .unwrap();
    assert_eq!(end, last[&0] + 1);
    let ts = consumer
        .offset_for("events", 0, Position::Timestamp(0))
        .await
        .unwrap();
    assert_eq!(ts, 0);

    // The broker restarts; the same client reconnects on its next call.
    let broker_addr = broker.addr;
    broker.stop();
    let broker = Broker::start_on(&data, 2, broker_addr, &[]);
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut attempt = 0;
    let (p, o) = loop {
        match producer
            .send_to("events", 0, None, b"after restart", &[])
            .await
        {
            Ok(at) => break at,
            Err(e) if e.is_retriable() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!((p, o), (0, end));
    match producer.send_to("events", 9, None, b"x", &[]).await {
        Err(Error::Invalid(m)) => assert!(m.contains("no partition 9"), "{m}"),
        other => panic!("{other:?}"),
    }
    broker.stop();
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn blocking_wrapper_sends_and_reads() {
    use ringmq_client::blocking::BlockingClient;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let c = BlockingClient::connect(&broker.addr.to_string()).unwrap();
    c.create_topic("b", 1).unwrap();
    assert_eq!(c.list_topics().unwrap(), vec!["b"]);
    let at = c
        .send_all(
            "b",
            &[
                (None, b"one".to_vec()),
                (Some(b"k".to_vec()), b"two".to_vec()),
            ],
        )
        .unwrap();
    assert_eq!(at, vec![(0, 0), (0, 1)]);
    let got = c.read("b", 0, Position::Earliest, 10).unwrap();
    let values: Vec<_> = got.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, vec![b"one".to_vec(), b"two".to_vec()]);
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_round_trip_with_every_codec() {
    use ringmq_client::Compression;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let admin = Admin::new(client.clone());
    for (name, c) in [
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
    ] {
        admin.create_topic(name, 1, &[]).await.unwrap();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                compression: c,
                batch_bytes: 1 << 20,
                ..ProducerConfig::default()
            },
        );
        producer.prepare(name).await.unwrap();
        // Compressible values, batched together.
        let sends: Vec<_> = (0..500u32)
            .map(|i| {
                let p = producer.clone();
                tokio::spawn(async move {
                    let v = format!("{name} record {i} {}", "x".repeat(200));
                    p.send_to(
                        name,
                        0,
                        Some(&i.to_be_bytes()),
                        v.as_bytes(),
                        &[("h".into(), vec![1, 2])],
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        for s in sends {
            s.await.unwrap();
        }
        producer.close().await.unwrap();
        let d = admin.describe_topic(name).await.unwrap();
        assert!(
            d.partitions[0].size_bytes < 500 * 200 / 4,
            "{name}: stored compressed ({} bytes)",
            d.partitions[0].size_bytes
        );
        let mut consumer = Consumer::new(client.clone());
        consumer.assign(name, 0, Position::Earliest).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 500 {
            let r = consumer.poll().await.unwrap();
            assert!(!r.is_empty());
            got.extend(r);
        }
        for r in &got {
            let i = u32::from_be_bytes(r.key.as_deref().unwrap().try_into().unwrap());
            assert_eq!(
                r.value.as_deref(),
                Some(format!("{name} record {i} {}", "x".repeat(200)).as_bytes())
            );
            assert_eq!(r.headers, vec![("h".to_string(), vec![1, 2])]);
        }
        let mut keys: Vec<u32> = got
            .iter()
            .map(|r| u32::from_be_bytes(r.key.as_deref().unwrap().try_into().unwrap()))
            .collect();
        keys.sort();
        assert_eq!(keys, (0..500).collect::<Vec<_>>());
    }
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_sends_held_batches_and_prefetch_is_bounded() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin.create_topic("f", 1, &[]).await.unwrap();

    // A linger of a minute holds every record until flush.
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_secs(60),
            batch_bytes: 64 << 20,
            ..ProducerConfig::default()
        },
    );
    producer.prepare("f").await.unwrap();
    let sends: Vec<_> = (0..100u32)
        .map(|i| {
            let p = producer.clone();
            tokio::spawn(async move { p.send_to("f", 0, None, &i.to_be_bytes(), &[]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = |admin: Admin| async move {
        admin.describe_topic("f").await.unwrap().partitions[0].end_offset
    };
    assert_eq!(end(admin.clone()).await, 0, "held by the linger");
    producer.flush().await.unwrap();
    assert_eq!(
        end(admin.clone()).await,
        100,
        "flush returns once all are acknowledged"
    );
    for s in sends {
        let (p, o) = s.await.unwrap().unwrap();
        assert_eq!(p, 0);
        assert!((0..100).contains(&o));
    }

    // Batches as large as the broker takes (1 MiB): full ones must not exceed it.
    let big = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 1 << 20,
            ..ProducerConfig::default()
        },
    );
    admin.create_topic("big", 1, &[]).await.unwrap();
    big.prepare("big").await.unwrap();
    let sends: Vec<_> = (0..3000u32)
        .map(|_| {
            let p = big.clone();
            tokio::spawn(async move { p.send_to("big", 0, None, &[7u8; 1000], &[]).await })
        })
        .collect();
    for s in sends {
        s.await.unwrap().expect("no batch over the broker's limit");
    }
    big.close().await.unwrap();

    // 4000 records of 1000 bytes in batches of about 64 KiB.
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let sends: Vec<_> = (0..4000u32)
        .map(|i| {
            let p = producer.clone();
            tokio::spawn(async move {
                let mut v = vec![(i % 251) as u8; 1000];
                v[..4].copy_from_slice(&i.to_be_bytes());
                p.send_to("f", 0, None, &v, &[]).await.unwrap()
            })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    producer.close().await.unwrap();

    // The consumer fetches one fetch ahead, each at most max_bytes (plus one batch).
    let mut consumer = Consumer::new(client.clone());
    consumer.max_bytes = 256 << 10;
    consumer.partition_max_bytes = 256 << 10;
    consumer
        .assign("f", 0, Position::Offset(100))
        .await
        .unwrap();
    let mut got = 0usize;
    let mut next = 100i64;
    while got < 4000 {
        let records = consumer.poll().await.unwrap();
        assert!(!records.is_empty());
        assert!(
            consumer.last_fetch_bytes() <= (256 << 10) + (70 << 10),
            "a fetch brought {} bytes",
            consumer.last_fetch_bytes()
        );
        for r in records {
            assert_eq!(r.offset, next, "in order, no gaps");
            next += 1;
            got += 1;
        }
    }
    assert_eq!(consumer.position("f", 0), Some(4100));
    broker.stop();
}

// --- consumer groups ----------------------------------------------------------------

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(usize, i32, Vec<(String, u32)>, Vec<u32>)>>>;

/// One group member: records (member, generation, assignment, values read) after each
/// poll, until `stop` is set; `close` says whether it leaves cleanly.
async fn member(
    addr: String,
    index: usize,
    assignor: &'static str,
    seen: Seen,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    close: bool,
) {
    let client = Client::connect(&addr).await.unwrap();
    let config = ringmq_client::GroupConfig {
        session_timeout: std::time::Duration::from_secs(3),
        heartbeat_interval: std::time::Duration::from_millis(300),
        auto_commit: Some(std::time::Duration::from_millis(200)),
        assignor: assignor.into(),
        ..Default::default()
    };
    let mut c = ringmq_client::GroupConsumer::join(client, "native-group", &["grp"], config)
        .await
        .unwrap();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let records = c.poll().await.unwrap();
        let values: Vec<u32> = records
            .iter()
            .map(|r| {
                std::str::from_utf8(r.value.as_ref().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        seen.lock()
            .unwrap()
            .push((index, c.generation(), c.assignment().to_vec(), values));
    }
    if close {
        c.close().await.unwrap();
    }
}

async fn produce_range(client: &Client, from: u32, to: u32) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let sends: Vec<_> = (from..to)
        .map(|i| {
            let producer = producer.clone();
            tokio::spawn(async move {
                producer
                    .send(
                        "grp",
                        Some(format!("k{i}").as_bytes()),
                        i.to_string().as_bytes(),
                        &[],
                    )
                    .await
                    .unwrap();
            })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_group_shares_partitions_and_survives_a_member_crash_and_a_broker_kill() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = ["--group-initial-rebalance-delay-ms", "500"];
    let broker = Broker::start_args(&data, 2, &extra);
    let (addr, kafka) = (broker.addr, broker.kafka);
    let client = Client::connect(&addr.to_string()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("grp", 6, &[])
        .await
        .unwrap();
    produce_range(&client, 0, 6000).await;

    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let stops: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut tasks: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(member(
                addr.to_string(),
                i,
                "sticky",
                seen.clone(),
                stops[i].clone(),
                true,
            ))
        })
        .collect();
    let values = |seen: &Seen| -> std::collections::BTreeSet<u32> {
        seen.lock()
            .unwrap()
            .iter()
            .flat_map(|e| e.3.clone())
            .collect()
    };
    // Current assignment of each live member (its latest report).
    let latest = |seen: &Seen, live: &[usize]| -> HashMap<usize, (i32, Vec<(String, u32)>)> {
        let mut m = HashMap::new();
        for (i, g, a, _) in seen.lock().unwrap().iter() {
            if live.contains(i) {
                m.insert(*i, (*g, a.clone()));
            }
        }
        m
    };
    let shared = |seen: &Seen, live: &[usize]| {
        let l = latest(seen, live);
        let gens: std::collections::BTreeSet<i32> = l.values().map(|v| v.0).collect();
        let mut parts: Vec<(String, u32)> = l.values().flat_map(|v| v.1.clone()).collect();
        parts.sort();
        l.len() == live.len()
            && gens.len() == 1
            && l.values().all(|v| !v.1.is_empty())
            && parts == (0..6).map(|p| ("grp".to_string(), p)).collect::<Vec<_>>()
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool, secs: u64| {
        // Blocking this worker thread: the runtime moves its other tasks elsewhere.
        tokio::task::block_in_place(|| {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while !cond() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    wait(
        "3 members to share 6 partitions",
        &|| shared(&seen, &[0, 1, 2]),
        30,
    );
    wait(
        "the first 6000 records",
        &|| values(&seen).len() >= 6000,
        30,
    );
    // Member 0 crashes: its task is dropped, no leave, no more heartbeats.
    tasks.remove(0).abort();
    let t_crash = Instant::now();
    wait(
        "members 1 and 2 to take all 6 partitions",
        &|| shared(&seen, &[1, 2]),
        30,
    );
    let moved = t_crash.elapsed();
    produce_range(&client, 6000, 9000).await;
    wait("all 9000 records", &|| values(&seen).len() >= 9000, 30);
    for s in &stops[1..] {
        s.store(true, Ordering::SeqCst);
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Within a generation, no partition has two owners.
    let mut by_gen: HashMap<i32, HashMap<usize, Vec<(String, u32)>>> = HashMap::new();
    for (i, g, a, _) in seen.lock().unwrap().iter() {
        by_gen.entry(*g).or_default().insert(*i, a.clone());
    }
    for (g, members) in &by_gen {
        let mut all: Vec<&(String, u32)> = members.values().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            n,
            "generation {g}: a partition owned twice: {members:?}"
        );
    }
    // Committed is durable: SIGKILL the broker; a new member resumes where the group
    // committed (the closing members committed everything they read).
    broker.kill();
    let _broker = Broker::start_at(&data, 2, addr, kafka, &extra);
    let client = Client::connect(&addr.to_string()).await.unwrap();
    produce_range(&client, 9000, 9300).await;
    let seen2: Seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let t = tokio::spawn(member(
        addr.to_string(),
        9,
        "range",
        seen2.clone(),
        stop.clone(),
        true,
    ));
    wait("the 300 new records", &|| values(&seen2).len() >= 300, 30);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    t.await.unwrap();
    let got: Vec<u32> = seen2
        .lock()
        .unwrap()
        .iter()
        .flat_map(|e| e.3.clone())
        .collect();
    assert!(
        got.iter().all(|v| *v >= 9000),
        "a resumed member re-read committed records: {:?}",
        got.iter()
            .filter(|v| **v < 9000)
            .take(5)
            .collect::<Vec<_>>()
    );
    println!(
        "native group: 3 members shared 6 partitions; after a crash the other two took them in {:.1} s (session 3 s); {} generations; resumed after a broker kill at the committed offsets",
        moved.as_secs_f64(),
        by_gen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_group_membership_survives_a_broker_restart_without_a_rebalance() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra = ["--group-initial-rebalance-delay-ms", "300"];
    let broker = Broker::start_args(&data, 2, &extra);
    let (addr, kafka) = (broker.addr, broker.kafka);
    let client = Client::connect(&addr.to_string()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("grp", 4, &[])
        .await
        .unwrap();
    let config = ringmq_client::GroupConfig {
        session_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(300),
        auto_commit: None,
        ..Default::default()
    };
    let join = |client: Client, config: ringmq_client::GroupConfig| async move {
        ringmq_client::GroupConsumer::join(client, "kept", &["grp"], config)
            .await
            .unwrap()
    };
    let (mut a, mut b) = tokio::join!(
        join(
            Client::connect(&addr.to_string()).await.unwrap(),
            config.clone()
        ),
        join(
            Client::connect(&addr.to_string()).await.unwrap(),
            config.clone()
        )
    );
    // Both in the same (latest) generation with two partitions each.
    while a.generation() != b.generation() {
        let _ = tokio::join!(a.poll(), b.poll());
    }
    let generation = a.generation();
    let ids = (a.member_id().to_string(), b.member_id().to_string());
    assert_eq!(a.assignment().len() + b.assignment().len(), 4);
    // Let the membership reach the group log, then SIGKILL and restart the broker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill();
    let _broker = Broker::start_at(&data, 2, addr, kafka, &extra);
    // The members reconnect and heartbeat on; no rebalance: same generation, and they
    // still read their partitions.
    produce_range(&Client::connect(&addr.to_string()).await.unwrap(), 0, 400).await;
    let mut read = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read < 400 && std::time::Instant::now() < deadline {
        let (ra, rb) = tokio::join!(a.poll(), b.poll());
        read += ra.map(|r| r.len()).unwrap_or(0) + rb.map(|r| r.len()).unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = tokio::join!(a.poll(), b.poll());
    assert_eq!(
        read, 400,
        "the members read what was produced after the restart"
    );
    assert_eq!(
        (a.generation(), b.generation()),
        (generation, generation),
        "no rebalance after the restart"
    );
    assert_eq!(
        (a.member_id().to_string(), b.member_id().to_string()),
        ids,
        "the broker still knew the members (a rejoin gets a new id)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout() {
    use ringmq_net::codec::{Request, Response};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_args(
        &dir.path().join("data"),
        2,
        &["--group-initial-rebalance-delay-ms", "0"],
    );
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("rt", 4, &[])
        .await
        .unwrap();
    let join = |member: String| {
        let client = client.clone();
        async move {
            match client
                .call(Request::JoinGroup {
                    group: "rt-group".into(),
                    member_id: member,
                    session_timeout_ms: 30_000,
                    rebalance_timeout_ms: 1_500,
                    topics: vec!["rt".into()],
                    assignor: "range".into(),
                })
                .await
                .unwrap()
            {
                Response::Joined {
                    error,
                    generation,
                    member_id,
                    assignment,
                } => {
                    assert!(error.is_ok(), "{error:?}");
                    (generation, member_id, assignment)
                }
                other => panic!("{other:?}"),
            }
        }
    };
    // A joins alone, then B joins: A is told by its heartbeat to rejoin, and does.
    let (_, a, _) = join(String::new()).await;
    let b_join = tokio::spawn(join(String::new()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (generation, _, a_parts) = join(a.clone()).await;
    let (b_generation, b, b_parts) = b_join.await.unwrap();
    assert_eq!(generation, b_generation);
    assert_eq!((a_parts.len(), b_parts.len()), (2, 2));
    // A rejoins again (say its subscription changed); B keeps heartbeating but never
    // rejoins. At B's rebalance timeout (1.5 s) the rebalance completes without B.
    let started = Instant::now();
    let a_rejoin = tokio::spawn(join(a.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // B on a connection of its own: answers come in request order, and A's join on the
    // shared connection is answered only when the rebalance completes.
    let b_client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let hb = b_client
        .call(Request::GroupHeartbeat {
            group: "rt-group".into(),
            member_id: b.clone(),
            generation,
        })
        .await
        .unwrap();
    assert!(
        matches!(&hb, Response::Done(e) if e.code == ErrorCode::RebalanceInProgress),
        "{hb:?}"
    );
    // While the group prepares the rebalance, B still commits what it read with its
    // generation (as Kafka allows: a member commits before it rejoins or leaves).
    let commit = |generation: i32, member_id: String| {
        let client = b_client.clone();
        let (topic, partition) = b_parts[0].clone();
        async move {
            client
                .call(Request::CommitOffsets {
                    group: "rt-group".into(),
                    member_id,
                    generation,
                    offsets: vec![(topic, partition, 1)],
                })
                .await
                .unwrap()
        }
    };
    let c = commit(generation, b.clone()).await;
    assert!(matches!(&c, Response::Done(e) if e.is_ok()), "{c:?}");
    let (new_generation, _, parts) = a_rejoin.await.unwrap();
    let took = started.elapsed();
    assert_eq!(new_generation, generation + 1);
    assert_eq!(parts.len(), 4, "A has all partitions once B is dropped");
    assert!(
        took >= Duration::from_millis(1_400) && took < Duration::from_secs(5),
        "the rebalance waited for B's rebalance timeout: {took:?}"
    );
    // B is no longer a member.
    let hb = client
        .call(Request::GroupHeartbeat {
            group: "rt-group".into(),
            member_id: b.clone(),
            generation: new_generation,
        })
        .await
        .unwrap();
    assert!(
        matches!(&hb, Response::Done(e) if e.code == ErrorCode::UnknownMember),
        "{hb:?}"
    );
    let c = commit(new_generation, b.clone()).await;
    assert!(
        matches!(&c, Response::Done(e) if e.code == ErrorCode::UnknownMember),
        "{c:?}"
    );
    println!(
        "rebalance completed without the silent member after {took:?} (rebalance timeout 1.5 s)"
    );
}

/// Batches that librdkafka compressed (its snappy is raw, not xerial-framed) are read by
/// the native consumer: Kafka producers and native consumers share topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_consumer_reads_what_librdkafka_compressed() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let admin = Admin::new(client.clone());
    // (The rdkafka crate's librdkafka is built without zstd; the Python suites cover it.)
    for codec in ["gzip", "snappy", "lz4"] {
        let topic = format!("rd-{codec}");
        admin.create_topic(&topic, 1, &[]).await.unwrap();
        let kafka = broker.kafka.to_string();
        let t = topic.clone();
        tokio::task::spawn_blocking(move || {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &kafka)
                .set("compression.codec", codec)
                .set("linger.ms", "20")
                .create()
                .unwrap();
            for i in 0..2000u32 {
                let v = format!("{codec} value {i} {}", "y".repeat(100));
                let k = i.to_be_bytes();
                p.send(BaseRecord::to(&t).partition(0).key(&k[..]).payload(&v))
                    .unwrap();
                p.poll(std::time::Duration::ZERO);
            }
            p.flush(std::time::Duration::from_secs(30)).unwrap();
        })
        .await
        .unwrap();
        let d = admin.describe_topic(&topic).await.unwrap();
        assert!(
            d.partitions[0].size_bytes < 2000 * 100 / 3,
            "{codec}: stored compressed ({} bytes)",
            d.partitions[0].size_bytes
        );
        let mut consumer = Consumer::new(client.clone());
        consumer
            .assign(&topic, 0, Position::Earliest)
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2000 {
            got.extend(consumer.poll().await.unwrap());
        }
        for (i, r) in got.iter().enumerate() {
            assert_eq!(
                r.key.as_deref(),
                Some(&(i as u32).to_be_bytes()[..]),
                "{codec}"
            );
            assert_eq!(
                r.value.as_deref(),
                Some(format!("{codec} value {i} {}", "y".repeat(100)).as_bytes()),
                "{codec}"
            );
        }
    }
    broker.stop();
}

/// Linger zero: a batch goes out as soon as the one before it is answered, and what
/// arrives meanwhile joins it. Every send resolves to the offset its record got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_zero_batches_what_arrives_while_a_batch_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin.create_topic("l0", 1, &[]).await.unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: std::time::Duration::ZERO,
            ..ProducerConfig::default()
        },
    );
    producer.prepare("l0").await.unwrap();
    let sent = futures_join_all((0..3000u32).map(|i| {
        let p = producer.clone();
        async move {
            let (_, offset) = p
                .send_to("l0", 0, Some(&i.to_be_bytes()), b"v", &[])
                .await
                .unwrap();
            (offset, i)
        }
    }))
    .await;
    let mut by_offset: Vec<(i64, u32)> = sent;
    by_offset.sort();
    assert_eq!(
        by_offset.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (0..3000).collect::<Vec<i64>>(),
        "every record has its own offset"
    );
    let mut consumer = Consumer::new(client.clone());
    consumer.assign("l0", 0, Position::Earliest).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3000 {
        got.extend(consumer.poll().await.unwrap());
    }
    for (r, (offset, i)) in got.iter().zip(&by_offset) {
        assert_eq!(r.offset, *offset);
        assert_eq!(
            r.key.as_deref(),
            Some(&i.to_be_bytes()[..]),
            "offset {offset}"
        );
    }
    // Concurrent sends shared batches: far fewer batches than records on disk.
    let d = admin.describe_topic("l0").await.unwrap();
    assert!(
        d.partitions[0].size_bytes < 3000 * 40,
        "records were batched ({} bytes for 3000 records)",
        d.partitions[0].size_bytes
    );
    broker.stop();
}

/// The broker side of sequenced produce on the native protocol: a resent batch is
/// answered with its first offset and not stored again, and a batch that skips ahead in
/// its producer's sequence is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequenced_batches_are_stored_once_and_in_sequence() {
    use ringmq_net::codec::{ProducePartition, Request, Response};
    use ringmq_storage::batch::{Record, encode_batch, set_producer};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("sq", 1, &[])
        .await
        .unwrap();
    let (id, epoch) = match client.call(Request::InitProducer).await.unwrap() {
        Response::Producer { producer_id, epoch } => (producer_id, epoch),
        other => panic!("{other:?}"),
    };
    assert!(id > 0 && epoch == 0);
    match client.call(Request::InitProducer).await.unwrap() {
        Response::Producer { producer_id, .. } => assert_ne!(producer_id, id, "ids are unique"),
        other => panic!("{other:?}"),
    }
    let batch = |seq: i32, n: usize| {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                value: Some(format!("r{}", seq as usize + i).into_bytes()),
                timestamp_ms: 1,
                ..Default::default()
            })
            .collect();
        let mut b = encode_batch(&records);
        set_producer(&mut b, id, epoch, seq);
        bytes::Bytes::from(b)
    };
    let produce = |b: bytes::Bytes| {
        let client = client.clone();
        async move {
            match client
                .call(Request::Produce {
                    acks: 1,
                    partitions: vec![ProducePartition {
                        topic: "sq".into(),
                        partition: 0,
                        batch: b,
                    }],
                })
                .await
                .unwrap()
            {
                Response::Produce(v) => (v[0].error.code, v[0].base_offset),
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(produce(batch(0, 3)).await, (ErrorCode::None, 0));
    assert_eq!(produce(batch(3, 2)).await, (ErrorCode::None, 3));
    // The same batch again (an answer that was lost): its offset, nothing stored.
    assert_eq!(produce(batch(3, 2)).await, (ErrorCode::None, 3));
    // Skipping sequence 5..7: refused.
    assert_eq!(produce(batch(7, 1)).await.0, ErrorCode::OutOfOrderSequence);
    assert_eq!(produce(batch(5, 1)).await, (ErrorCode::None, 5));
    let d = Admin::new(client.clone())
        .describe_topic("sq")
        .await
        .unwrap();
    assert_eq!(d.partitions[0].end_offset, 6, "nothing stored twice");
    broker.stop();
}

/// Up to five batches in flight per partition, through a SIGKILL of the broker and its
/// restart: every send is answered, each record is stored once, and each partition
/// holds its records in the order they were sent, at the offsets their sends reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_producer_keeps_order_and_stores_once_across_a_broker_kill() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let addr = broker.addr;
    let client = Client::connect(&addr.to_string()).await.unwrap();
    Admin::new(client.clone())
        .create_topic("pipe", 2, &[])
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 4 << 10,
            linger: std::time::Duration::ZERO,
            retries: 12,
            max_in_flight: 5,
            ..ProducerConfig::default()
        },
    );
    producer.prepare("pipe").await.unwrap();
    const N: u32 = 30_000;
    /// Each send's outcome, by send index.
    type Outcomes = Vec<Option<Result<(u32, i64), String>>>;
    let results: Arc<Mutex<Outcomes>> = Arc::new(Mutex::new(vec![None; N as usize]));
    let acked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let sender = {
        let (producer, results, acked) = (producer.clone(), results.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..N {
                let (results, acked) = (results.clone(), acked.clone());
                let value = format!("{i:08} {}", "v".repeat(100));
                producer
                    .send_with("pipe", None, value.as_bytes(), &[], move |r| {
                        results.lock().unwrap()[i as usize] = Some(r.map_err(|e| e.to_string()));
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    })
                    .await
                    .unwrap();
                // Spread the sends over the kill below.
                if i % 1000 == 999 {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        })
    };
    while acked.load(std::sync::atomic::Ordering::Relaxed) < N / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    broker.kill();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let broker = Broker::start_on(&data, 2, addr, &[]);
    sender.await.unwrap();
    producer.flush().await.unwrap();
    let results = results.lock().unwrap().clone();
    let mut at: HashMap<(u32, i64), u32> = HashMap::new();
    let mut per_partition: HashMap<u32, Vec<u32>> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        let (p, o) = match r {
            Some(Ok(po)) => *po,
            other => panic!("send {i}: {other:?}"),
        };
        assert!(
            at.insert((p, o), i as u32).is_none(),
            "two sends at {p}/{o}"
        );
        per_partition.entry(p).or_default().push(i as u32);
    }
    let mut consumer = Consumer::new(client.clone());
    for p in 0..2 {
        consumer
            .assign("pipe", p, Position::Earliest)
            .await
            .unwrap();
    }
    let mut stored: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut n = 0;
    while n < N as usize {
        let records = consumer.poll().await.unwrap();
        assert!(!records.is_empty(), "all {N} records are there ({n} read)");
        for r in records {
            let v = r.value.unwrap();
            let i: u32 = std::str::from_utf8(&v[..8]).unwrap().parse().unwrap();
            assert_eq!(
                at.get(&(r.partition, r.offset)),
                Some(&i),
                "where its send said"
            );
            stored.entry(r.partition).or_default().push(i);
            n += 1;
        }
    }
    consumer.max_wait_ms = 200;
    assert!(
        consumer.poll().await.unwrap().is_empty(),
        "nothing stored twice"
    );
    for (p, sent) in &per_partition {
        assert_eq!(&stored[p], sent, "partition {p} in send order");
    }
    broker.stop();
}

/// How many request parts the broker's shards have forwarded to another shard so far.
async fn forwarded(client: &Client) -> u64 {
    use ringmq_net::codec::{Request, Response};
    match client.call(Request::BrokerStats).await.unwrap() {
        Response::Stats(v) => v
            .iter()
            .find(|(k, _)| k == "requests_forwarded")
            .map(|(_, v)| *v)
            .expect("requests_forwarded"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_aware_producer_and_consumer_reach_each_partition_on_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin.create_topic("aware", 4, &[]).await.unwrap();
    let shards: Vec<u32> = admin
        .describe_topic("aware")
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.shard)
        .collect();
    assert!(shards.contains(&0) && shards.contains(&1), "{shards:?}");
    for aware in [true, false] {
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                shard_aware: aware,
                linger: std::time::Duration::ZERO,
                ..ProducerConfig::default()
            },
        );
        let before = forwarded(&client).await;
        let mut sent = Vec::new();
        for i in 0..400u32 {
            let v = format!("{aware}-{i}");
            sent.push(
                producer
                    .send_to("aware", i % 4, None, v.as_bytes(), &[])
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        let moved = forwarded(&client).await - before;
        if aware {
            assert_eq!(moved, 0, "no batch forwarded between shards");
        } else {
            assert!(
                moved > 0,
                "one connection: the other shard's batches are forwarded"
            );
        }
        // Every record at its partition, in send order.
        for p in 0..4u32 {
            let offsets: Vec<i64> = sent
                .iter()
                .filter(|(part, _)| *part == p)
                .map(|(_, o)| *o)
                .collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        }
    }
    // The consumer likewise: one fetch per shard on a bound connection, none forwarded;
    // every record once, in offset order per partition.
    for aware in [true, false] {
        let mut consumer = Consumer::new(client.clone());
        consumer.shard_aware = aware;
        consumer.max_bytes = 4096; // many small fetches
        for p in 0..4 {
            consumer
                .assign("aware", p, Position::Earliest)
                .await
                .unwrap();
        }
        let before = forwarded(&client).await;
        let mut next: HashMap<u32, i64> = HashMap::new();
        let mut n = 0;
        while n < 800 {
            for r in consumer.poll().await.unwrap() {
                let want = next.entry(r.partition).or_insert(0);
                assert_eq!(r.offset, *want, "partition {}", r.partition);
                *want += 1;
                n += 1;
            }
        }
        assert_eq!(n, 800);
        drop(consumer);
        let moved = forwarded(&client).await - before;
        if aware {
            assert_eq!(moved, 0, "no fetch forwarded between shards");
        } else {
            assert!(
                moved > 0,
                "one connection: the other shard's part is forwarded"
            );
        }
    }
    drop(broker);
}

/// acks=all exists inside the broker: a produce with `Acks::All` to a topic whose
/// `min.insync.replicas` is more than the in-sync replicas (one, on a single node) is
/// refused with NotEnoughReplicas and stores nothing, while `Acks::Leader` succeeds;
/// topics without the setting take the broker's `--min-insync-replicas`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_is_refused_below_min_insync_replicas_and_leader_acks_succeed() {
    use ringmq_client::Acks;
    let dir = tempfile::tempdir().unwrap();
    let producer_with = |client: &Client, acks| {
        Producer::new(
            client.clone(),
            ProducerConfig {
                acks,
                linger: std::time::Duration::ZERO,
                ..ProducerConfig::default()
            },
        )
    };
    let refused = |r: Result<(u32, i64), Error>| match r {
        Err(Error::Broker { code, message }) => {
            assert_eq!(code, ErrorCode::NotEnoughReplicas, "{message}");
            assert!(message.contains("min.insync.replicas=2"), "{message}");
        }
        other => panic!("acks=all below min.insync.replicas: {other:?}"),
    };

    // Broker default 1: only the topic that asks for 2 refuses acks=all.
    let broker = Broker::start(&dir.path().join("a"));
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin
        .create_topic("strict", 1, &[("min.insync.replicas".into(), "2".into())])
        .await
        .unwrap();
    admin.create_topic("plain", 1, &[]).await.unwrap();
    let all = producer_with(&client, Acks::All);
    refused(all.send_to("strict", 0, None, b"refused", &[]).await);
    let leader = producer_with(&client, Acks::Leader);
    let (_, o) = leader
        .send_to("strict", 0, None, b"stored", &[])
        .await
        .unwrap();
    assert_eq!(o, 0, "the refused batch stored nothing");
    let (_, o) = all.send_to("plain", 0, None, b"all", &[]).await.unwrap();
    assert_eq!(o, 0);
    let mut consumer = Consumer::new(client.clone());
    consumer
        .assign("strict", 0, Position::Earliest)
        .await
        .unwrap();
    let got = consumer.poll().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value.as_deref(), Some(&b"stored"[..]));
    drop(broker);

    // Broker default 2: topics without the setting refuse acks=all; one that sets 1
    // takes it.
    let broker = Broker::start_args(&dir.path().join("b"), 2, &["--min-insync-replicas", "2"]);
    let client = Client::connect(&broker.addr.to_string()).await.unwrap();
    let admin = Admin::new(client.clone());
    admin.create_topic("default", 1, &[]).await.unwrap();
    admin
        .create_topic("relaxed", 1, &[("min.insync.replicas".into(), "1".into())])
        .await
        .unwrap();
    let all = producer_with(&client, Acks::All);
    refused(all.send_to("default", 0, None, b"refused", &[]).await);
    all.send_to("relaxed", 0, None, b"all", &[]).await.unwrap();
    producer_with(&client, Acks::Leader)
        .send_to("default", 0, None, b"leader", &[])
        .await
        .unwrap();
}
