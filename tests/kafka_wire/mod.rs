//! A small blocking Kafka client for protocol-level tests: requests built with the
//! `kafka-protocol` crate, sent at a chosen version, answers decoded at that version.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    self as km, ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ringmq_storage::{batch, codecs};

pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const INVALID_CONFIG: i16 = 40;
pub const UNKNOWN_PRODUCER_ID: i16 = 59;

/// One connection.
pub struct Kafka {
    stream: TcpStream,
    next_id: i32,
    /// The API and version of each request sent and not yet answered, by correlation id.
    sent: std::collections::HashMap<i32, (ApiKey, i16)>,
}

pub fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub fn api_of(r: &RequestKind) -> ApiKey {
    macro_rules! keys {
        ($($k:ident),*) => {
            match r {
                $(RequestKind::$k(_) => ApiKey::$k,)*
                other => panic!("no key for {other:?}"),
            }
        };
    }
    keys!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        DescribeConfigs,
        AlterConfigs,
        DescribeCluster,
        OffsetForLeaderEpoch,
        InitProducerId,
        CreatePartitions,
        IncrementalAlterConfigs,
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        ListGroups,
        DescribeGroups,
        DeleteGroups,
        OffsetDelete
    )
}

impl Kafka {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self::from_stream(stream)
    }

    /// A connection on a stream already open (its read timeout as set).
    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            next_id: 1,
            sent: Default::default(),
        }
    }

    /// The answer to request `id`, or `None` when none comes within the stream's read
    /// timeout.
    pub fn try_receive(&mut self, id: i32) -> Option<ResponseKind> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return None;
        }
        let (api, version) = self.sent.remove(&id).expect("a request sent");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).unwrap();
        let mut body = Bytes::from(body);
        let h = ResponseHeader::decode(&mut body, api.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, id);
        Some(ResponseKind::decode(api, &mut body, version).unwrap())
    }

    /// Sends a request at `version` without waiting; returns its correlation id.
    pub fn send(&mut self, version: i16, request: RequestKind) -> i32 {
        let api = api_of(&request);
        let id = self.next_id;
        self.next_id += 1;
        let mut h = RequestHeader::default();
        h.request_api_key = api as i16;
        h.request_api_version = version;
        h.correlation_id = id;
        h.client_id = Some(s("protocol-test"));
        let mut body = BytesMut::new();
        h.encode(&mut body, api.request_header_version(version))
            .unwrap();
        request
            .encode(&mut body, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version} does not encode: {e}"));
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).unwrap();
        self.sent.insert(id, (api, version));
        id
    }

    /// The answer to request `id` (answers come in request order).
    pub fn receive(&mut self, id: i32) -> ResponseKind {
        let (api, version) = self.sent.remove(&id).expect("a request sent");
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: no answer: {e}"));
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).unwrap();
        let mut body = Bytes::from(body);
        let h = ResponseHeader::decode(&mut body, api.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, id, "{api:?} v{version}: answers in order");
        let r = ResponseKind::decode(api, &mut body, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: answer does not decode: {e}"));
        assert!(
            body.is_empty(),
            "{api:?} v{version}: {} bytes left after the answer",
            body.len()
        );
        r
    }

    /// Sends and waits for the answer.
    pub fn call(&mut self, version: i16, request: RequestKind) -> ResponseKind {
        let id = self.send(version, request);
        self.receive(id)
    }
}

pub fn create_topic(k: &mut Kafka, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = km::create_topics_request::CreatableTopic::default();
    t.name = km::TopicName(s(name));
    t.num_partitions = partitions;
    t.replication_factor = 1;
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = km::create_topics_request::CreatableTopicConfig::default();
            c.name = s(k);
            c.value = Some(s(v));
            c
        })
        .collect();
    let mut q = km::CreateTopicsRequest::default();
    q.topics = vec![t];
    q.timeout_ms = 10_000;
    match k.call(7, RequestKind::CreateTopics(q)) {
        ResponseKind::CreateTopics(r) => {
            assert_eq!(
                r.topics[0].error_code, 0,
                "create {name}: {:?}",
                r.topics[0].error_message
            )
        }
        other => panic!("{other:?}"),
    }
}

pub fn produce_request(topic: &str, partition: i32, batch: Bytes) -> RequestKind {
    let mut p = km::produce_request::PartitionProduceData::default();
    p.index = partition;
    p.records = Some(batch);
    let mut t = km::produce_request::TopicProduceData::default();
    t.name = km::TopicName(s(topic));
    t.partition_data = vec![p];
    let mut q = km::ProduceRequest::default();
    q.acks = -1;
    q.timeout_ms = 30_000;
    q.topic_data = vec![t];
    RequestKind::Produce(q)
}

/// Produces one batch; (error code, base offset).
pub fn produce_one(
    k: &mut Kafka,
    version: i16,
    topic: &str,
    partition: i32,
    batch: Bytes,
) -> (i16, i64) {
    match k.call(version, produce_request(topic, partition, batch)) {
        ResponseKind::Produce(r) => {
            let p = &r.responses[0].partition_responses[0];
            (p.error_code, p.base_offset)
        }
        other => panic!("{other:?}"),
    }
}

pub fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    partition_max: i32,
) -> km::FetchRequest {
    let mut p = km::fetch_request::FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = partition_max;
    p.log_start_offset = -1;
    p.current_leader_epoch = -1;
    p.last_fetched_epoch = -1;
    let mut t = km::fetch_request::FetchTopic::default();
    t.topic = km::TopicName(s(topic));
    t.partitions = vec![p];
    let mut q = km::FetchRequest::default();
    q.replica_id = km::BrokerId(-1);
    q.max_wait_ms = 0;
    q.min_bytes = 0;
    q.max_bytes = max_bytes;
    q.isolation_level = 0;
    q.session_epoch = -1;
    q.topics = vec![t];
    q
}

/// Every record value of a partition, from offset 0 to the end, in offset order.
pub fn fetch_values(k: &mut Kafka, topic: &str, partition: i32) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let q = fetch_request(topic, partition, offset, 50 << 20, 8 << 20);
        let r = match k.call(12, RequestKind::Fetch(q)) {
            ResponseKind::Fetch(r) => r,
            other => panic!("{other:?}"),
        };
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch {topic}/{partition}@{offset}");
        let Some(records) = p.records.clone() else {
            break;
        };
        if records.is_empty() {
            break;
        }
        let mut got = 0;
        let mut pos = 0;
        while pos < records.len() {
            let (_, size) = batch::peek_frame(&records[pos..]).expect("a batch frame");
            let info =
                batch::validate(&records[pos..pos + size], usize::MAX).expect("a stored batch");
            let raw = &records[pos..pos + info.size_bytes];
            let plain = codecs::decompress(&raw[batch::HEADER_BYTES..], info.compression).unwrap();
            let plain_batch = batch::with_records_section(raw, batch::Compression::None, &plain);
            for rec in batch::records(&plain_batch).unwrap() {
                let at = info.base_offset + i64::from(rec.offset_delta);
                if at >= offset {
                    out.push(String::from_utf8_lossy(rec.value.unwrap_or_default()).to_string());
                    offset = at + 1;
                    got += 1;
                }
            }
            pos += info.size_bytes;
        }
        if got == 0 || offset >= p.high_watermark {
            break;
        }
    }
    out
}
