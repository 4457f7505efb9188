//! End-to-end: `ringmq serve` with 2 shards on 127.0.0.1 and a free port, spoken to
//! over real sockets with the native protocol.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq_net::codec::{
    self, ApiKey, ErrorCode, FetchPartition, OFFSET_EARLIEST, OFFSET_LATEST, ProducePartition,
    Request, Response,
};
use ringmq_storage::batch::{self, Record};

mod common;
use common::Broker;

struct Client {
    s: TcpStream,
    next_id: u32,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { s, next_id: 1 }
    }

    fn send(&mut self, req: &Request) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.s.write_all(&codec::encode_request(id, req)).unwrap();
        id
    }

    fn recv(&mut self, api: ApiKey) -> (u32, Response) {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut body).unwrap();
        codec::decode_response(api, Bytes::from(body)).unwrap()
    }

    /// A call whose connection may be closed: `None` then.
    fn call_checked(&mut self, req: Request) -> Option<Response> {
        let api = req.api_key();
        let id = self.next_id;
        self.next_id += 1;
        self.s.write_all(&codec::encode_request(id, &req)).ok()?;
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut body).ok()?;
        let resp = codec::decode_response(api, Bytes::from(body)).ok()?;
        assert_eq!(resp.0, id);
        Some(resp.1)
    }

    fn call(&mut self, req: Request) -> Response {
        let api = req.api_key();
        let id = self.send(&req);
        let (got, resp) = self.recv(api);
        assert_eq!(got, id);
        resp
    }
}

fn batch_for(topic: &str, partition: u32, seq: u32) -> Vec<u8> {
    let recs: Vec<Record> = (0..3)
        .map(|i| Record {
            key: Some(format!("{topic}-{partition}-{seq}-{i}").into_bytes()),
            value: Some(vec![(seq % 251) as u8; 100 + i]),
            headers: vec![("h".into(), b"v".to_vec())],
            timestamp_ms: 1_000 + i64::from(seq),
        })
        .collect();
    batch::encode_batch(&recs)
}

fn create(c: &mut Client, name: &str, partitions: u32) {
    match c.call(Request::CreateTopic {
        name: name.into(),
        partitions,
        configs: vec![],
        replication_factor: None,
    }) {
        Response::Done(e) => assert!(e.is_ok(), "{e:?}"),
        other => panic!("{other:?}"),
    }
}

/// A durable produce of one batch.
fn produce_request(topic: &str, partition: u32, b: &[u8]) -> Request {
    Request::Produce {
        acks: 1,
        partitions: vec![ProducePartition {
            topic: topic.into(),
            partition,
            batch: Bytes::copy_from_slice(b),
        }],
    }
}

fn produce(c: &mut Client, topic: &str, partition: u32, b: &[u8]) -> i64 {
    match c.call(produce_request(topic, partition, b)) {
        Response::Produce(r) => {
            assert!(r[0].error.is_ok(), "{:?}", r[0].error);
            r[0].base_offset
        }
        other => panic!("{other:?}"),
    }
}

/// Every batch of a partition, fetched from offset 0, with base offsets reset.
fn fetch_all(c: &mut Client, topic: &str, partition: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = match c.call(Request::Fetch {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: topic.into(),
                partition,
                offset,
                max_bytes: 64 << 10,
            }],
        }) {
            Response::Fetch(mut r) => r.remove(0),
            other => panic!("{other:?}"),
        };
        assert!(r.error.is_ok(), "{:?}", r.error);
        let records = r
            .records
            .in_memory()
            .expect("a decoded response is in memory");
        if records.is_empty() {
            return out;
        }
        let mut pos = 0;
        while pos < records.len() {
            let (_, size) = batch::peek_frame(&records[pos..]).unwrap();
            let mut b = records[pos..pos + size].to_vec();
            let info = batch::validate(&b, usize::MAX).unwrap();
            offset = info.next_offset();
            batch::set_base_offset(&mut b, 0);
            batch::set_leader_epoch(&mut b, -1);
            out.push(b);
            pos += size;
        }
    }
}

#[test]
fn produce_fetch_forwarding_long_poll_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let mut c = Client::connect(broker.addr);

    match c.call(Request::ApiVersions {
        client: "test".into(),
    }) {
        Response::ApiVersions(v) => assert_eq!(v.len(), ApiKey::ALL.len()),
        other => panic!("{other:?}"),
    }
    create(&mut c, "orders", 8);
    // Created from any shard's connection, visible to all.
    match c.call(Request::CreateTopic {
        name: "orders".into(),
        partitions: 8,
        configs: vec![],
        replication_factor: None,
    }) {
        Response::Done(e) => assert_eq!(e.code, ErrorCode::TopicExists),
        other => panic!("{other:?}"),
    }
    // A single node leads every partition itself: node 0, no address, each one's shard.
    let described = match c.call(Request::DescribeTopic {
        name: "orders".into(),
    }) {
        Response::Topic { partitions, .. } => partitions,
        other => panic!("{other:?}"),
    };
    match c.call(Request::Leaders {
        topic: "orders".into(),
    }) {
        Response::Leaders { error, partitions } => {
            assert!(error.is_ok(), "{error:?}");
            assert_eq!(partitions.len(), 8);
            for (l, d) in partitions.iter().zip(&described) {
                assert_eq!((l.partition, l.leader, l.leader_epoch), (d.partition, 0, 0));
                assert_eq!((l.address.as_str(), l.shard), ("", d.shard));
            }
        }
        other => panic!("{other:?}"),
    }
    match c.call(Request::Leaders {
        topic: "nope".into(),
    }) {
        Response::Leaders { error, .. } => assert_eq!(error.code, ErrorCode::UnknownTopic),
        other => panic!("{other:?}"),
    }
    // 8 partitions over 2 shards: this connection's shard forwards half the requests.
    let mut sent: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for seq in 0..20 {
        for p in 0..8 {
            let b = batch_for("orders", p, seq);
            let base = produce(&mut c, "orders", p, &b);
            assert_eq!(
                base,
                i64::from(seq) * 3,
                "offsets are per partition and dense"
            );
            sent.entry(p).or_default().push(b);
        }
    }
    for p in 0..8 {
        assert_eq!(
            fetch_all(&mut c, "orders", p),
            sent[&p],
            "partition {p} byte-identical"
        );
    }
    match c.call(Request::DescribeTopic {
        name: "orders".into(),
    }) {
        Response::Topic {
            error, partitions, ..
        } => {
            assert!(error.is_ok());
            assert_eq!(partitions.len(), 8);
            let shards: std::collections::BTreeSet<u32> =
                partitions.iter().map(|p| p.shard).collect();
            assert_eq!(shards.len(), 2, "partitions on both shards");
            assert!(partitions.iter().all(|p| p.high_watermark == 60));
        }
        other => panic!("{other:?}"),
    }
    match c.call(Request::ListOffsets {
        partitions: vec![
            ("orders".into(), 1, OFFSET_EARLIEST),
            ("orders".into(), 2, OFFSET_LATEST),
            ("orders".into(), 3, 1_010),
        ],
    }) {
        Response::Offsets(v) => {
            assert_eq!(v.iter().map(|x| x.3).collect::<Vec<_>>(), vec![0, 60, 30]);
        }
        other => panic!("{other:?}"),
    }

    // Long poll: a fetch at the end waits, and a produce from another connection wakes it.
    for p in [0u32, 1] {
        let mut waiter = Client::connect(broker.addr);
        let started = Instant::now();
        let id = waiter.send(&Request::Fetch {
            max_wait_ms: 10_000,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: "orders".into(),
                partition: p,
                offset: 60,
                max_bytes: 1 << 20,
            }],
        });
        std::thread::sleep(Duration::from_millis(200));
        let mut other = Client::connect(broker.addr);
        produce(&mut other, "orders", p, &batch_for("orders", p, 99));
        let (got, resp) = waiter.recv(ApiKey::Fetch);
        assert_eq!(got, id);
        let waited = started.elapsed();
        match resp {
            Response::Fetch(r) => assert!(!r[0].records.is_empty(), "woken with data"),
            other => panic!("{other:?}"),
        }
        assert!(
            waited < Duration::from_secs(5),
            "woken by the produce, not the 10 s max wait ({waited:?})"
        );
        sent.get_mut(&p).unwrap().push(batch_for("orders", p, 99));
    }
    // An empty long poll returns at max wait.
    let started = Instant::now();
    match c.call(Request::Fetch {
        max_wait_ms: 300,
        min_bytes: 1,
        max_bytes: 1 << 20,
        partitions: vec![FetchPartition {
            topic: "orders".into(),
            partition: 5,
            offset: 60,
            max_bytes: 1 << 20,
        }],
    }) {
        Response::Fetch(r) => assert!(r[0].records.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(290));

    // Clean restart: everything is served again.
    broker.stop();
    let broker = Broker::start(&data);
    let mut c = Client::connect(broker.addr);
    for p in 0..8 {
        assert_eq!(
            fetch_all(&mut c, "orders", p),
            sent[&p],
            "partition {p} after restart"
        );
    }
    broker.stop();
}

#[test]
fn bad_input_gets_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let mut c = Client::connect(broker.addr);
    create(&mut c, "t", 2);
    // Unknown topic and partition.
    match c.call(Request::Produce {
        acks: 1,
        partitions: vec![
            ProducePartition {
                topic: "nope".into(),
                partition: 0,
                batch: Bytes::from(batch_for("x", 0, 0)),
            },
            ProducePartition {
                topic: "t".into(),
                partition: 9,
                batch: Bytes::from(batch_for("x", 0, 0)),
            },
        ],
    }) {
        Response::Produce(r) => {
            assert_eq!(r[0].error.code, ErrorCode::UnknownTopic);
            assert_eq!(r[1].error.code, ErrorCode::UnknownPartition);
        }
        other => panic!("{other:?}"),
    }
    // Corrupt batch.
    let mut b = batch_for("t", 0, 0);
    let last = b.len() - 1;
    b[last] ^= 1;
    match c.call(Request::Produce {
        acks: 1,
        partitions: vec![ProducePartition {
            topic: "t".into(),
            partition: 0,
            batch: Bytes::from(b),
        }],
    }) {
        Response::Produce(r) => {
            assert_eq!(r[0].error.code, ErrorCode::CorruptBatch, "{:?}", r[0].error)
        }
        other => panic!("{other:?}"),
    }
    // Invalid names and counts.
    for (name, parts) in [("bad/name", 1), ("ok", 0)] {
        match c.call(Request::CreateTopic {
            name: name.into(),
            partitions: parts,
            configs: vec![],
            replication_factor: None,
        }) {
            Response::Done(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
            other => panic!("{other:?}"),
        }
    }
    // Unknown API and version: an error response with the request id, connection kept.
    let mut f = codec::encode_request(77, &Request::ListTopics);
    f[4..6].copy_from_slice(&200u16.to_be_bytes());
    c.s.write_all(&f).unwrap();
    let (id, r) = c.recv(ApiKey::ListTopics);
    assert_eq!(id, 77);
    assert!(matches!(r, Response::Error(e) if e.code == ErrorCode::UnsupportedVersion));
    // Garbage body: error response; the connection still works.
    let mut f = codec::encode_request(78, &Request::DescribeTopic { name: "t".into() });
    f.truncate(f.len() - 1);
    let len = (f.len() - 4) as u32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    c.s.write_all(&f).unwrap();
    let (id, r) = c.recv(ApiKey::DescribeTopic);
    assert_eq!(id, 78);
    assert!(matches!(r, Response::Error(e) if e.code == ErrorCode::Malformed));
    assert!(
        matches!(c.call(Request::ListTopics), Response::Topics(t) if t == vec!["t".to_string()])
    );
    // Oversized frame and random bytes: the connection is closed, the broker lives.
    let mut bad = TcpStream::connect(broker.addr).unwrap();
    bad.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    let mut sink = [0u8; 16];
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(bad.read(&mut sink).unwrap_or(0), 0, "closed");
    for seed in 0..20u8 {
        let mut s = TcpStream::connect(broker.addr).unwrap();
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let _ = s.write_all(&junk);
        drop(s); // vanish mid-request
    }
    let mut c2 = Client::connect(broker.addr);
    assert!(matches!(c2.call(Request::ListTopics), Response::Topics(_)));
    broker.stop();
}

#[test]
fn durable_acks_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let mut c = Client::connect(broker.addr);
    create(&mut c, "k", 4);
    let addr = broker.addr;
    // Producers on two connections; the broker is killed while they run.
    let producers: Vec<_> = (0..2u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut acked = Vec::new();
                for seq in 0.. {
                    let p = (seq + t) % 4;
                    let b = batch_for("k", p, seq * 2 + t);
                    let id = c.send(&Request::Produce {
                        acks: 1,
                        partitions: vec![ProducePartition {
                            topic: "k".into(),
                            partition: p,
                            batch: Bytes::from(b.clone()),
                        }],
                    });
                    let mut len = [0u8; 4];
                    if c.s.read_exact(&mut len).is_err() {
                        break;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    if c.s.read_exact(&mut body).is_err() {
                        break;
                    }
                    let (got, r) =
                        codec::decode_response(ApiKey::Produce, Bytes::from(body)).unwrap();
                    assert_eq!(got, id);
                    if let Response::Produce(r) = r
                        && r[0].error.is_ok()
                    {
                        acked.push((p, r[0].base_offset, b));
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    broker.kill();
    let acked: Vec<_> = producers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(
        acked.len() > 10,
        "producers made progress ({})",
        acked.len()
    );
    let broker = Broker::start(&data);
    let mut c = Client::connect(broker.addr);
    let mut stored: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for p in 0..4 {
        stored.insert(p, fetch_all(&mut c, "k", p));
    }
    for (p, base, b) in &acked {
        let mut offset = 0;
        let found = stored[p].iter().any(|s| {
            let hit = offset == *base && s == b;
            offset += i64::from(batch::parse_header(s).unwrap().record_count);
            hit
        });
        assert!(
            found,
            "acknowledged batch at partition {p} offset {base} is missing after SIGKILL"
        );
    }
    broker.stop();
}

fn shards_of(c: &mut Client, topic: &str) -> Vec<u32> {
    match c.call(Request::DescribeTopic { name: topic.into() }) {
        Response::Topic { partitions, .. } => partitions.iter().map(|p| p.shard).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn restart_on_fewer_cores_moves_partitions_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start_with(&data, 2);
    let mut c = Client::connect(broker.addr);
    create(&mut c, "m", 4);
    let mut sent: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for p in 0..4 {
        for seq in 0..5 {
            let b = batch_for("m", p, seq);
            produce(&mut c, "m", p, &b);
            sent.entry(p).or_default().push(b);
        }
    }
    let before = shards_of(&mut c, "m");
    assert!(before.contains(&1));
    broker.stop();

    let broker = Broker::start_with(&data, 1);
    let mut c = Client::connect(broker.addr);
    assert_eq!(
        shards_of(&mut c, "m"),
        vec![0, 0, 0, 0],
        "shard 1 is gone: its partitions moved"
    );
    for p in 0..4 {
        assert_eq!(fetch_all(&mut c, "m", p), sent[&p]);
    }
    broker.stop();

    // Back to two shards: placement stays where it is now (stable), data intact.
    let broker = Broker::start_with(&data, 2);
    let mut c = Client::connect(broker.addr);
    assert_eq!(shards_of(&mut c, "m"), vec![0, 0, 0, 0]);
    for p in 0..4 {
        assert_eq!(fetch_all(&mut c, "m", p), sent[&p]);
    }
    broker.stop();
}

#[test]
fn many_concurrent_pipelined_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let mut c = Client::connect(broker.addr);
    create(&mut c, "busy", 6);
    let addr = broker.addr;
    let clients = 16u32;
    let per_client = 60u32;
    let handles: Vec<_> = (0..clients)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut ids = std::collections::VecDeque::new();
                for seq in 0..per_client {
                    let p = (t + seq) % 6;
                    ids.push_back(c.send(&Request::Produce {
                        acks: 1,
                        partitions: vec![ProducePartition {
                            topic: "busy".into(),
                            partition: p,
                            batch: Bytes::from(batch_for("busy", p, seq)),
                        }],
                    }));
                    // Up to 8 requests in flight per connection.
                    if ids.len() == 8 {
                        let (id, r) = c.recv(ApiKey::Produce);
                        assert_eq!(Some(id), ids.pop_front(), "responses in request order");
                        assert!(matches!(r, Response::Produce(r) if r[0].error.is_ok()));
                    }
                }
                while let Some(want) = ids.pop_front() {
                    let (id, r) = c.recv(ApiKey::Produce);
                    assert_eq!(id, want);
                    assert!(matches!(r, Response::Produce(r) if r[0].error.is_ok()));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total: i64 = match c.call(Request::ListOffsets {
        partitions: (0..6)
            .map(|p| ("busy".to_string(), p, OFFSET_LATEST))
            .collect(),
    }) {
        Response::Offsets(v) => v.iter().map(|x| x.3).sum(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        total,
        i64::from(clients * per_client * 3),
        "every record of every client"
    );
    broker.stop();
}

#[test]
fn idle_connections_are_closed_but_long_polls_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_args(&dir.path().join("data"), 2, &["--idle-timeout-ms", "300"]);
    let mut c = Client::connect(broker.addr);
    create(&mut c, "i", 1);
    // A long poll longer than the idle timeout is not idleness.
    match c.call(Request::Fetch {
        max_wait_ms: 800,
        min_bytes: 1,
        max_bytes: 1024,
        partitions: vec![FetchPartition {
            topic: "i".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
        }],
    }) {
        Response::Fetch(r) => assert!(r[0].error.is_ok()),
        other => panic!("{other:?}"),
    }
    // Then silence: the broker closes the connection.
    std::thread::sleep(Duration::from_millis(1000));
    let mut b = [0u8; 1];
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.s.read(&mut b).unwrap(), 0, "closed by the broker");
    broker.stop();
}

fn broker_stats(c: &mut Client) -> HashMap<String, u64> {
    match c.call(Request::BrokerStats) {
        Response::Stats(v) => v.into_iter().collect(),
        other => panic!("{other:?}"),
    }
}

fn big_batch(partition: u32, seq: u32) -> Vec<u8> {
    let recs: Vec<Record> = (0..64)
        .map(|i| Record {
            key: Some(format!("{partition}-{seq}-{i}").into_bytes()),
            value: Some(
                (0..1000)
                    .map(|j| (j as u32 * 31 + seq * 7 + i as u32) as u8)
                    .collect(),
            ),
            headers: vec![],
            timestamp_ms: 5_000 + i64::from(seq),
        })
        .collect();
    batch::encode_batch(&recs)
}

/// Data beyond the tail cache is sent file → socket: byte-identical (every batch's CRC
/// is checked), through forwarding between shards, with the splice counters moving and
/// nothing copied; with `--zero-copy false` the same bytes come back through memory.
#[test]
fn zero_copy_fetch_sends_files_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let mut c = Client::connect(broker.addr);
    create(&mut c, "big", 4);
    // 40 × 64 KiB per partition: 2.5 MiB, more than the 1 MiB tail cache.
    let mut sent: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    for seq in 0..40 {
        for p in 0..4 {
            let b = big_batch(p, seq);
            produce(&mut c, "big", p, &b);
            sent.entry(p).or_default().push(b);
        }
    }
    for p in 0..4 {
        assert_eq!(fetch_all(&mut c, "big", p), sent[&p], "partition {p}");
    }
    // One request over all partitions (two shards): each answer starts at offset 0.
    match c.call(Request::Fetch {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 8 << 20,
        partitions: (0..4)
            .map(|p| FetchPartition {
                topic: "big".into(),
                partition: p,
                offset: 0,
                max_bytes: 1 << 20,
            })
            .collect(),
    }) {
        Response::Fetch(results) => {
            for r in results {
                assert!(r.error.is_ok(), "{:?}", r.error);
                let got = r.records.in_memory().unwrap();
                let want: Vec<u8> = sent[&r.partition].concat();
                assert!(got.len() >= 64 << 10, "at least one batch");
                let mut b = got.to_vec();
                let mut pos = 0;
                while pos < b.len() {
                    let (_, size) = batch::peek_frame(&b[pos..]).unwrap();
                    batch::validate(&b[pos..pos + size], usize::MAX).unwrap();
                    batch::set_base_offset(&mut b[pos..pos + size], 0);
                    batch::set_leader_epoch(&mut b[pos..pos + size], -1);
                    pos += size;
                }
                assert_eq!(b[..], want[..b.len()], "partition {}", r.partition);
            }
        }
        other => panic!("{other:?}"),
    }
    let stats = broker_stats(&mut c);
    eprintln!("zero-copy on: {stats:?}");
    assert_eq!(stats["shards"], 2);
    assert_eq!(stats["zero_copy_shards"], 2);
    assert!(stats["fetch_records_file_bytes"] > 4 << 20, "{stats:?}");
    assert!(stats["send_file_bytes_spliced"] > 4 << 20, "{stats:?}");
    assert_eq!(stats["send_file_bytes_copied"], 0, "{stats:?}");
    broker.stop();

    let broker = Broker::start_args(&data, 2, &["--zero-copy", "false"]);
    let mut c = Client::connect(broker.addr);
    for p in 0..4 {
        assert_eq!(fetch_all(&mut c, "big", p), sent[&p], "partition {p}");
    }
    let stats = broker_stats(&mut c);
    assert_eq!(stats["zero_copy_shards"], 0);
    assert_eq!(stats["send_file_bytes_spliced"], 0, "{stats:?}");
    assert!(stats["send_file_bytes_copied"] > 8 << 20, "{stats:?}");
    broker.stop();
}

/// Pins the calling thread to one core.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to core {cpu}"
        );
    }
}

/// The shards that serve `n` connections opened from a thread pinned to `cpu`.
fn shards_serving(addr: SocketAddr, cpu: usize, n: usize) -> Vec<u64> {
    std::thread::spawn(move || {
        pin_to(cpu);
        (0..n)
            .map(|_| broker_stats(&mut Client::connect(addr))["connection_shard"])
            .collect()
    })
    .join()
    .unwrap()
}

#[test]
fn connections_land_on_the_shard_of_the_core_that_sent_them() {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = online.min(2);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), shards as u32);
    // On loopback a SYN is processed on the sending thread's core, so a client pinned
    // to core c must be served by the shard on core c (shard c here: --shards N takes
    // cores 0..N), every time.
    for cpu in 0..shards {
        let served = shards_serving(broker.addr, cpu, 20);
        assert!(
            served.iter().all(|&s| s == cpu as u64),
            "connections from core {cpu} were served by shards {served:?}"
        );
    }
    broker.stop();
    if shards < 2 {
        return;
    }
    // Without steering the kernel spreads by a hash of the addresses: 20 connections
    // from core 0 all on shard 0 would be a 1 in 2^20 chance.
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_args(dir.path(), 2, &["--steer-connections", "false"]);
    let served = shards_serving(broker.addr, 0, 20);
    assert!(
        served.contains(&1),
        "hashing put every connection on shard 0: {served:?}"
    );
    broker.stop();
}

/// The number of request parts the shards sent on to another shard so far.
fn forwarded(c: &mut Client) -> u64 {
    broker_stats(c)["requests_forwarded"]
}

#[test]
fn a_connection_bound_to_a_shard_is_served_there_without_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_with(dir.path(), 2);
    let mut c = Client::connect(broker.addr);
    create(&mut c, "bind", 4);
    let shards = shards_of(&mut c, "bind");
    let here = broker_stats(&mut c)["connection_shard"] as u32;
    let there = 1 - here;
    let theirs: Vec<u32> = (0..4).filter(|&p| shards[p as usize] == there).collect();
    let mine: Vec<u32> = (0..4).filter(|&p| shards[p as usize] == here).collect();
    assert!(!theirs.is_empty() && !mine.is_empty(), "{shards:?}");

    // A request to the other shard's partition is forwarded.
    let before = forwarded(&mut c);
    produce(&mut c, "bind", theirs[0], &batch_for("bind", theirs[0], 0));
    assert_eq!(forwarded(&mut c), before + 1);

    // Binding to a shard that does not exist is an error, and nothing moves.
    match c.call(Request::BindShard { shard: 7 }) {
        Response::Done(e) => assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Binding to its own shard is a no-op.
    match c.call(Request::BindShard { shard: here }) {
        Response::Done(e) => assert!(e.is_ok(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(broker_stats(&mut c)["connection_shard"], u64::from(here));

    // A produce still in flight, the bind, and a produce sent right behind it (before
    // the bind's answer): answered in order, the first by the old shard, the last by the
    // new one, which received it from the old shard's buffer.
    let first = c.send(&produce_request(
        "bind",
        mine[0],
        &batch_for("bind", mine[0], 1),
    ));
    let bind = c.send(&Request::BindShard { shard: there });
    let last = c.send(&produce_request(
        "bind",
        theirs[0],
        &batch_for("bind", theirs[0], 2),
    ));
    for (want, api) in [
        (first, ApiKey::Produce),
        (bind, ApiKey::BindShard),
        (last, ApiKey::Produce),
    ] {
        let (id, resp) = c.recv(api);
        assert_eq!(id, want);
        match resp {
            Response::Produce(r) => assert!(r[0].error.is_ok(), "{:?}", r[0].error),
            Response::Done(e) => assert!(e.is_ok(), "{e:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(broker_stats(&mut c)["connection_shard"], u64::from(there));

    // From here on its partitions are served without forwarding, and the others'
    // still work (forwarded back).
    let before = forwarded(&mut c);
    for seq in 3..20 {
        for &p in &theirs {
            produce(&mut c, "bind", p, &batch_for("bind", p, seq));
        }
    }
    assert_eq!(forwarded(&mut c), before);
    produce(&mut c, "bind", mine[0], &batch_for("bind", mine[0], 20));
    assert_eq!(forwarded(&mut c), before + 1);
    let got = fetch_all(&mut c, "bind", theirs[0]);
    assert_eq!(got.len(), 1 + 1 + 17, "batches 0, 2 and 3..20");
    drop(c);
    broker.stop();
}

/// The broker's resident memory, bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// `--connections-max`: a shard serves at most that many connections at once; one past
/// it is closed at once, and when a served one ends, new connections are served again.
#[test]
fn connections_past_the_limit_are_closed_and_served_again_once_others_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_args(&dir.path().join("data"), 1, &["--connections-max", "4"]);
    // The fifth is closed: its request gets no answer but the end of the connection.
    let refused = |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&codec::encode_request(1, &Request::ListTopics));
        let mut buf = [0u8; 4];
        match s.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    };
    // Served connections, each answered once. The harness's readiness probes count
    // until the broker has seen them end: a connection refused meanwhile is retried.
    let mut held: Vec<Client> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 4 {
        let mut c = Client::connect(broker.addr);
        match c.call_checked(Request::ListTopics) {
            Some(Response::Topics(_)) => held.push(c),
            _ => {
                assert!(Instant::now() < deadline, "probe connections end");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert!(refused(broker.addr), "a fifth connection is closed");
    // The served ones are not disturbed.
    assert!(matches!(
        held[0].call(Request::ListTopics),
        Response::Topics(_)
    ));
    // One ends; a new connection is served once the broker has seen it end.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !refused(broker.addr) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a slot freed by a closed connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// acks=0 appends count against the shard's `--acks-none-bytes-max`: a client that
/// floods acks=0 produce (the broker answers each at once) is held to the pace of the
/// log, the broker's memory stays within its budgets, and it answers another client
/// meanwhile; every batch it took is appended.
#[test]
fn an_acks_none_flood_stays_within_the_memory_budget() {
    const BATCH_BYTES: usize = 256 << 10;
    const FLOOD: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start_args(
        &dir.path().join("data"),
        1,
        &[
            "--acks-none-bytes-max",
            "4194304",
            "--request-memory-bytes-max",
            "16777216",
        ],
    );
    let pid = broker.child.id();
    let mut admin = Client::connect(broker.addr);
    create(&mut admin, "flood", 1);
    let before = rss_bytes(pid);

    let batch = Bytes::from(batch::encode_batch(&[Record {
        key: None,
        value: Some(vec![7u8; BATCH_BYTES]),
        headers: vec![],
        timestamp_ms: 1,
    }]));
    let request = codec::encode_request(
        1,
        &Request::Produce {
            acks: 0,
            partitions: vec![ProducePartition {
                topic: "flood".into(),
                partition: 0,
                batch,
            }],
        },
    );
    let flooder = TcpStream::connect(broker.addr).unwrap();
    let mut reader = flooder.try_clone().unwrap();
    // The answers are read (and counted) on their own thread, so the flood is held
    // back only by the broker.
    let answers = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut len = [0u8; 4];
        while reader.read_exact(&mut len).is_ok() {
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            if reader.read_exact(&mut body).is_err() {
                break;
            }
            n += 1;
        }
        n
    });
    let writer = std::thread::spawn(move || {
        let mut w = flooder;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < FLOOD {
            w.write_all(&request).unwrap();
            sent += 1;
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
        sent
    });
    let mut peak = before;
    let mut answered_meanwhile = 0;
    while !writer.is_finished() {
        peak = peak.max(rss_bytes(pid));
        assert!(matches!(
            admin.call(Request::ListTopics),
            Response::Topics(_)
        ));
        answered_meanwhile += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = writer.join().unwrap();
    let answered = answers.join().unwrap();
    peak = peak.max(rss_bytes(pid));
    assert_eq!(answered, sent, "every acks=0 request is answered");
    assert!(answered_meanwhile > 0);
    // Budgets: 16 MiB of requests read, 4 MiB of acks=0 appends, 8 MiB of write buffer
    // per partition, the tail cache; 96 MiB leaves room for the allocator.
    let grown = peak.saturating_sub(before);
    eprintln!(
        "acks=0 flood: {sent} batches of {} KiB in {FLOOD:?}, broker RSS {} -> peak {} MiB",
        BATCH_BYTES >> 10,
        before >> 20,
        peak >> 20
    );
    assert!(
        grown < 96 << 20,
        "RSS grew {} MiB under an acks=0 flood",
        grown >> 20
    );
    // Every batch taken is appended (the shard finishes acks=0 appends it started).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let end = match admin.call(Request::ListOffsets {
            partitions: vec![("flood".into(), 0, OFFSET_LATEST)],
        }) {
            Response::Offsets(v) => v[0].3,
            other => panic!("{other:?}"),
        };
        if end == sent as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{end} of {sent} batches appended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
