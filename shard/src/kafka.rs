//! The Kafka wire protocol on a shard: existing Kafka clients and tools talk to ringmq
//! unchanged.
//!
//! [`KafkaService`] is a connection [`Service`]: it decodes a Kafka request with the
//! `kafka-protocol` crate, answers it through the shard's own request handling (the
//! same code the native protocol uses: forwarding to owner shards, long-poll fetches on
//! the timing wheel, group commit) and encodes the response in the version the client
//! asked for. Fetch responses are encoded here by hand, because the crate can only
//! encode records it holds in memory, and on-disk records go file → socket without a
//! copy (`OutFrame` file parts).
//!
//! What Kafka brokers do, this does: a request that cannot be parsed, an unknown API
//! key or an unsupported version of an API other than ApiVersions closes the
//! connection (logged); ApiVersions answers a version it does not know with error 35
//! in version 0, so the client can retry with one it does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a forwarded JoinGroup or SyncGroup may wait for its rebalance.
const GROUP_WAIT_MAX: Duration = Duration::from_secs(600);

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{self as km, ApiKey, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ringmq_net::codec::{
    ErrorCode, FetchPartition, OFFSET_LATEST, OutFrame, ProducePartition, Request, Response,
    WireError,
};
use ringmq_net::conn::{LocalFuture, Service};

use crate::broker::{Shard, TopicChange};
use crate::groups::{self, GroupOp};
use crate::kafka_groups;
use crate::topic_configs;
use crate::topics;

/// The broker's node id in Kafka metadata (a single node).
pub const NODE_ID: i32 = 0;
/// The cluster id reported to clients.
pub const CLUSTER_ID: &str = "ringmq";

/// Kafka error codes used here (Kafka's `Errors` enum).
pub mod errors {
    /// Unexpected server error.
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    /// Success.
    pub const NONE: i16 = 0;
    /// Offset out of range.
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    /// A batch failed its CRC or is malformed.
    pub const CORRUPT_MESSAGE: i16 = 2;
    /// Unknown topic or partition.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// Leader not available (retriable).
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    /// Request timed out.
    pub const REQUEST_TIMED_OUT: i16 = 7;
    /// Fewer in-sync replicas than `min.insync.replicas` (acks=all).
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    /// A record's timestamp is out of the topic's range.
    pub const INVALID_TIMESTAMP: i16 = 32;
    /// Batch larger than the topic's max.message.bytes.
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    /// Invalid topic name.
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    /// acks other than -1, 0, 1.
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    /// Unknown topic id (KIP-516).
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    /// Unsupported API version.
    pub const UNSUPPORTED_VERSION: i16 = 35;
    /// Topic exists.
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    /// Invalid partition count.
    pub const INVALID_PARTITIONS: i16 = 37;
    /// Invalid replication factor.
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    /// Invalid config.
    pub const INVALID_CONFIG: i16 = 40;
    /// Invalid request.
    pub const INVALID_REQUEST: i16 = 42;
    /// An idempotent producer's sequence has a gap.
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    /// An idempotent producer's epoch is stale.
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    /// The partition has no state for the producer.
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    /// Storage error (retriable).
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    /// Invalid record.
    pub const INVALID_RECORD: i16 = 87;
}

/// What a transactional request gets (FindCoordinator for a transaction, InitProducerId
/// with a transactional id): TRANSACTIONAL_ID_AUTHORIZATION_FAILED, with a message
/// saying that transactions are not supported. It is the one error that every client
/// treats as fatal at once (librdkafka retries a coordinator lookup on any other error
/// until the caller's timeout; the Java client fails fast on it too), so
/// `init_transactions` fails within a second and reports the message.
const TRANSACTIONS_UNSUPPORTED: i16 = 53;
/// The message that goes with [`TRANSACTIONS_UNSUPPORTED`].
const TRANSACTIONS_UNSUPPORTED_MESSAGE: &str =
    "transactions are not supported by this broker (ringmq): use an idempotent producer";

/// The APIs and versions this listener implements: exactly what ApiVersions reports.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
];

fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, lo, hi)| (lo, hi))
}

/// Settings of the Kafka listener.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Host that Metadata tells clients to connect to.
    pub advertise_host: String,
    /// Port that Metadata tells clients to connect to.
    pub advertise_port: u16,
    /// Create a topic on first produce or metadata request for it.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, and of CreateTopics with -1.
    pub default_partitions: u32,
}

/// The Kafka protocol on one shard.
pub struct KafkaService {
    shard: Rc<Shard>,
    opts: Rc<KafkaOptions>,
}

impl KafkaService {
    /// The service for `shard`.
    pub fn new(shard: Rc<Shard>, opts: Rc<KafkaOptions>) -> Self {
        Self { shard, opts }
    }
}

impl Service for KafkaService {
    fn call(self: Rc<Self>, body: Bytes, peer: Option<SocketAddr>) -> LocalFuture<OutFrame> {
        Box::pin(async move { self.answer(body, peer).await })
    }

    fn sleep_until(&self, deadline: Instant) -> LocalFuture<()> {
        Box::pin(self.shard.timers().sleep_until(deadline))
    }
}

/// A decoded request.
struct Decoded {
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: String,
    request: RequestKind,
}

/// What to do with a frame that is not a request we serve.
enum Refusal {
    /// Answer ApiVersions v0 with UNSUPPORTED_VERSION (the KIP-511 fallback).
    ApiVersionsFallback(i32),
    /// Close the connection, logging why.
    Close(String),
}

/// Decodes a Kafka request frame's body (without the length prefix) as the listener
/// does: `Ok((api key, version, correlation id))` for a request this listener serves,
/// `Err(why)` for one it refuses (the listener closes the connection, or answers an
/// ApiVersions from the future in v0). For tests and fuzzing.
pub fn check_request(body: Bytes) -> Result<(i16, i16, i32), String> {
    match decode(body) {
        Ok(d) => Ok((d.api as i16, d.version, d.correlation_id)),
        Err(Refusal::ApiVersionsFallback(_)) => Err("ApiVersions from the future".into()),
        Err(Refusal::Close(why)) => Err(why),
    }
}

fn decode(mut body: Bytes) -> Result<Decoded, Refusal> {
    if body.len() < 8 {
        return Err(Refusal::Close(format!(
            "frame of {} bytes is shorter than a request header",
            body.len()
        )));
    }
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let api =
        ApiKey::try_from(key).map_err(|_| Refusal::Close(format!("unknown API key {key}")))?;
    let Some((lo, hi)) = supported(api) else {
        return Err(Refusal::Close(format!("API {api:?} is not supported")));
    };
    if version < lo || version > hi {
        if api == ApiKey::ApiVersions && version > hi {
            return Err(Refusal::ApiVersionsFallback(correlation_id));
        }
        return Err(Refusal::Close(format!(
            "{api:?} v{version} is not supported (v{lo} to v{hi} are)"
        )));
    }
    // The crate returns errors for short or malformed input; the unwind guard is a
    // second line, so a decoder bug can only close this one connection.
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let h = km::RequestHeader::decode(&mut body, api.request_header_version(version))?;
        let request = RequestKind::decode(api, &mut body, version)?;
        Ok::<_, anyhow::Error>((
            h.client_id.map(|c| c.to_string()).unwrap_or_default(),
            request,
        ))
    }));
    match decoded {
        Ok(Ok((client_id, request))) => Ok(Decoded {
            api,
            version,
            correlation_id,
            client_id,
            request,
        }),
        Ok(Err(e)) => Err(Refusal::Close(format!(
            "{api:?} v{version} could not be decoded: {e}"
        ))),
        Err(_) => Err(Refusal::Close(format!(
            "{api:?} v{version} could not be decoded"
        ))),
    }
}

/// Kafka's code for one of ours.
fn code(e: &WireError) -> i16 {
    use errors::*;
    match e.code {
        ErrorCode::None => NONE,
        ErrorCode::Malformed => CORRUPT_MESSAGE,
        ErrorCode::UnsupportedVersion => UNSUPPORTED_VERSION,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::TopicExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::CorruptBatch => CORRUPT_MESSAGE,
        ErrorCode::MessageTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::InvalidRequest => INVALID_REQUEST,
        ErrorCode::StorageError => KAFKA_STORAGE_ERROR,
        ErrorCode::Unavailable => LEADER_NOT_AVAILABLE,
        ErrorCode::Timeout => REQUEST_TIMED_OUT,
        ErrorCode::ProducerFenced => INVALID_PRODUCER_EPOCH,
        ErrorCode::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::UnknownProducer => UNKNOWN_PRODUCER_ID,
        ErrorCode::RebalanceInProgress => ResponseError::RebalanceInProgress.code(),
        ErrorCode::UnknownMember => ResponseError::UnknownMemberId.code(),
        ErrorCode::IllegalGeneration => ResponseError::IllegalGeneration.code(),
        ErrorCode::InvalidRecord => INVALID_RECORD,
        ErrorCode::InvalidTimestamp => INVALID_TIMESTAMP,
        ErrorCode::NotEnoughReplicas => NOT_ENOUGH_REPLICAS,
    }
}

fn msg(e: &WireError) -> Option<StrBytes> {
    (!e.is_ok()).then(|| StrBytes::from_string(e.message.clone()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic_name(v: &str) -> km::TopicName {
    km::TopicName(s(v))
}

/// A topic's Kafka id: ringmq's topic number in a fixed namespace (never zero).
pub fn topic_uuid(id: u32) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(TOPIC_UUID_NAMESPACE, u64::from(id) + 1)
}

/// The high half of every topic id ("ringmq" and two zero bytes).
const TOPIC_UUID_NAMESPACE: u64 = 0x7269_6e67_6d71_0000;

/// One config change from a Kafka client, in the names stored for the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConfigChange {
    /// Set a stored config.
    Set(String, String),
    /// Back to the broker's default.
    Reset(String),
}

/// A Kafka topic config as the topic stores it (`topic_configs`): a ringmq log setting
/// under ringmq's name, anything else Kafka defines under Kafka's name. Kafka's
/// `flush.ms` and `flush.messages` map onto the flush policy (their default, the
/// largest long, means the broker's policy). An unknown name or a bad value is refused
/// with the reason.
fn config_from_kafka(name: &str, value: Option<&str>) -> Result<ConfigChange, String> {
    let Some(v) = value else {
        return Err(format!("config {name} has no value"));
    };
    let never = i64::MAX.to_string();
    match name {
        "flush.messages" => {
            let v = topic_configs::check(name, v)?;
            return match v.as_str() {
                "1" => Ok(ConfigChange::Set("flush".into(), "every_batch".into())),
                n if n == never => Ok(ConfigChange::Reset("flush".into())),
                n => Err(format!(
                    "flush.messages={n}: ringmq syncs every batch (1), by time (flush.ms) or by bytes (ringmq.flush=bytes:N)"
                )),
            };
        }
        "flush.ms" => {
            let v = topic_configs::check(name, v)?;
            return Ok(if v == never {
                ConfigChange::Reset("flush".into())
            } else {
                ConfigChange::Set("flush".into(), format!("interval_ms:{v}"))
            });
        }
        _ => {}
    }
    if let Some((_, ours)) = topic_configs::SETTING_NAMES
        .iter()
        .find(|(k, _)| *k == name)
    {
        let v = if topic_configs::def(name).is_some() {
            topic_configs::check(name, v)?
        } else {
            v.to_string()
        };
        return Ok(ConfigChange::Set(ours.to_string(), v));
    }
    if topic_configs::def(name).is_some() {
        return Ok(ConfigChange::Set(
            name.to_string(),
            topic_configs::check(name, v)?,
        ));
    }
    Err(format!(
        "unknown topic config {name}: ringmq takes every topic config Kafka defines (docs/kafka.md), and ringmq.flush"
    ))
}

/// Topic configs given by a Kafka client (CreateTopics, AlterConfigs), as stored.
fn configs_from_kafka<'a>(
    items: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in items {
        if let ConfigChange::Set(k, v) = config_from_kafka(k, v)? {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// One described config.
struct Described {
    name: String,
    value: String,
    /// Set on the topic (else the default).
    set: bool,
    config_type: i8,
}

/// A topic's effective configs in Kafka's names: every config Kafka defines, and
/// `ringmq.flush`.
fn effective_configs(
    explicit: &BTreeMap<String, String>,
    defaults: &ringmq_storage::LogConfig,
) -> Vec<Described> {
    // Shown as configured, also where a compact-only policy turns retention off.
    let mut settings = explicit.clone();
    settings.remove("cleanup.policy");
    let c = topics::log_config(&settings, defaults).unwrap_or_else(|_| defaults.clone());
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-1".into());
    let never = i64::MAX.to_string();
    let mut out: Vec<Described> = topic_configs::DEFS
        .iter()
        .map(|d| {
            let ours = topic_configs::SETTING_NAMES
                .iter()
                .find(|(k, _)| *k == d.name)
                .map(|p| p.1);
            let (value, set) = match d.name {
                "retention.ms" => (opt(c.retention_ms), None),
                "retention.bytes" => (opt(c.retention_bytes), None),
                "segment.bytes" => (c.segment_bytes.to_string(), None),
                "segment.ms" => (c.segment_ms.to_string(), None),
                "max.message.bytes" => (c.message_bytes_max.to_string(), None),
                "index.interval.bytes" => (c.index_interval_bytes.to_string(), None),
                "message.timestamp.type" => (
                    match c.timestamp_type {
                        ringmq_storage::batch::TimestampType::CreateTime => "CreateTime".into(),
                        ringmq_storage::batch::TimestampType::LogAppendTime => {
                            "LogAppendTime".into()
                        }
                    },
                    None,
                ),
                "flush.messages" => (
                    if c.flush == ringmq_storage::FlushPolicy::EveryBatch {
                        "1".into()
                    } else {
                        never.clone()
                    },
                    Some(explicit.contains_key("flush")),
                ),
                "flush.ms" => (
                    match c.flush {
                        ringmq_storage::FlushPolicy::IntervalMs(ms) => ms.to_string(),
                        _ => never.clone(),
                    },
                    Some(explicit.contains_key("flush")),
                ),
                name => (
                    explicit
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| d.default.to_string()),
                    Some(explicit.contains_key(name)),
                ),
            };
            let set = set.unwrap_or_else(|| ours.is_some_and(|o| explicit.contains_key(o)));
            Described {
                name: d.name.to_string(),
                value,
                set,
                config_type: d.config_type(),
            }
        })
        .collect();
    out.push(Described {
        name: "ringmq.flush".into(),
        value: c.flush.to_string(),
        set: explicit.contains_key("flush"),
        config_type: 2,
    });
    out
}

/// Kafka's broker-level names of the topic defaults this broker gives new topics.
const BROKER_CONFIG_NAMES: &[(&str, &str)] = &[
    ("retention.ms", "log.retention.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    ("max.message.bytes", "message.max.bytes"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("flush.ms", "log.flush.interval.ms"),
    ("flush.messages", "log.flush.interval.messages"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("cleanup.policy", "log.cleanup.policy"),
    ("compression.type", "compression.type"),
    ("min.insync.replicas", "min.insync.replicas"),
];

impl KafkaService {
    async fn answer(self: Rc<Self>, body: Bytes, peer: Option<SocketAddr>) -> OutFrame {
        let client_host = peer.map(|p| format!("/{}", p.ip())).unwrap_or_default();
        let d = match decode(body) {
            Ok(d) => d,
            Err(Refusal::ApiVersionsFallback(correlation_id)) => {
                let mut r = self.api_versions();
                r.error_code = errors::UNSUPPORTED_VERSION;
                return encode(
                    correlation_id,
                    ApiKey::ApiVersions,
                    0,
                    &ResponseKind::ApiVersions(r),
                );
            }
            Err(Refusal::Close(why)) => {
                tracing::info!(shard = self.shard.id(), %why, "kafka: closing connection on a bad request");
                return OutFrame::close();
            }
        };
        let (api, version, cid) = (d.api, d.version, d.correlation_id);
        let resp = match d.request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(self.api_versions()),
            RequestKind::Metadata(r) => ResponseKind::Metadata(self.metadata(r, version).await),
            RequestKind::Produce(r) => match self.produce(r, version).await {
                Some(r) => ResponseKind::Produce(r),
                None => return OutFrame::nothing(),
            },
            RequestKind::Fetch(r) => return self.fetch(r, version, cid).await,
            RequestKind::ListOffsets(r) => {
                ResponseKind::ListOffsets(self.list_offsets(r, version).await)
            }
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(self.create_topics(r, version).await)
            }
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(self.delete_topics(r, version).await)
            }
            RequestKind::DescribeConfigs(r) => {
                ResponseKind::DescribeConfigs(self.describe_configs(r, version))
            }
            RequestKind::DescribeCluster(_) => {
                ResponseKind::DescribeCluster(self.describe_cluster())
            }
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(self.create_partitions(r).await)
            }
            RequestKind::IncrementalAlterConfigs(r) => {
                ResponseKind::IncrementalAlterConfigs(self.alter_configs(r).await)
            }
            RequestKind::DeleteRecords(r) => {
                ResponseKind::DeleteRecords(self.delete_records(r).await)
            }
            RequestKind::AlterConfigs(r) => {
                ResponseKind::AlterConfigs(self.alter_configs_whole(r).await)
            }
            RequestKind::InitProducerId(r) => {
                ResponseKind::InitProducerId(self.init_producer_id(r).await)
            }
            RequestKind::OffsetForLeaderEpoch(r) => {
                ResponseKind::OffsetForLeaderEpoch(self.offset_for_leader_epoch(r).await)
            }
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(self.find_coordinator(r, version))
            }
            RequestKind::ListGroups(r) => {
                ResponseKind::ListGroups(self.list_groups(r, version).await)
            }
            RequestKind::DescribeGroups(r) => {
                ResponseKind::DescribeGroups(self.describe_groups(r, version).await)
            }
            RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(self.delete_groups(r).await),
            RequestKind::OffsetFetch(r) if version >= 8 => {
                ResponseKind::OffsetFetch(self.offset_fetch_groups(r).await)
            }
            request @ (RequestKind::JoinGroup(_)
            | RequestKind::SyncGroup(_)
            | RequestKind::Heartbeat(_)
            | RequestKind::LeaveGroup(_)
            | RequestKind::OffsetCommit(_)
            | RequestKind::OffsetFetch(_)
            | RequestKind::OffsetDelete(_)) => {
                let wait = match &request {
                    RequestKind::JoinGroup(_) | RequestKind::SyncGroup(_) => GROUP_WAIT_MAX,
                    _ => Duration::ZERO,
                };
                let Some(op) = kafka_groups::op(&request, version, &d.client_id, &client_host)
                else {
                    tracing::error!(api = ?api, "kafka: not a group request");
                    return OutFrame::close();
                };
                let reply = self.shard.group_request(op, wait).await;
                match reply.and_then(|r| kafka_groups::response(&request, version, r)) {
                    Some(resp) => resp,
                    None => {
                        tracing::warn!(api = ?api, "kafka: group coordinator shard did not answer");
                        return OutFrame::close();
                    }
                }
            }
            other => {
                // `decode` admits only the APIs of SUPPORTED, each answered above.
                tracing::error!(api = ?api, "kafka: no handler for {other:?}");
                return OutFrame::close();
            }
        };
        encode(cid, api, version, &resp)
    }

    fn api_versions(&self) -> km::ApiVersionsResponse {
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

    fn broker(&self) -> (StrBytes, i32) {
        (
            s(&self.opts.advertise_host),
            i32::from(self.opts.advertise_port),
        )
    }

    /// Creates the topics that do not exist (auto-creation), ignoring races with
    /// another creator.
    async fn auto_create(&self, names: &[String]) {
        for name in names {
            if self.shard.has_topic(name) {
                continue;
            }
            if topics::validate_name(name).is_err() {
                continue;
            }
            let r = self
                .shard
                .clone()
                .handle_request(Request::CreateTopic {
                    name: name.clone(),
                    partitions: self.opts.default_partitions,
                    configs: Vec::new(),
                })
                .await;
            if let Response::Done(e) = r
                && !e.is_ok()
                && e.code != ErrorCode::TopicExists
            {
                tracing::warn!(topic = %name, error = %e.message, "kafka: auto-creating topic failed");
            }
        }
    }

    async fn metadata(&self, r: km::MetadataRequest, version: i16) -> km::MetadataResponse {
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
                        errors::INVALID_TOPIC_EXCEPTION
                    } else {
                        errors::UNKNOWN_TOPIC_OR_PARTITION
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

    /// Produce: acks 0 gets no response (`None`), 1 and -1 are durable (group commit
    /// under the topic's flush policy: on a single node, -1 means durable here).
    async fn produce(&self, r: km::ProduceRequest, version: i16) -> Option<km::ProduceResponse> {
        let acks = r.acks;
        let mut resp = km::ProduceResponse::default();
        if !matches!(acks, -1..=1) {
            for t in &r.topic_data {
                let mut tr = km::produce_response::TopicProduceResponse::default();
                tr.name = t.name.clone();
                for p in &t.partition_data {
                    let mut pr = km::produce_response::PartitionProduceResponse::default();
                    pr.index = p.index;
                    pr.error_code = errors::INVALID_REQUIRED_ACKS;
                    pr.base_offset = -1;
                    tr.partition_responses.push(pr);
                }
                resp.responses.push(tr);
            }
            return Some(resp);
        }
        // From v13 topics are named by id (KIP-516); an id names an existing topic.
        let names: Vec<Option<String>> = r
            .topic_data
            .iter()
            .map(|t| {
                if version >= 13 {
                    self.topic_by_uuid(t.topic_id)
                } else {
                    Some(t.name.0.to_string())
                }
            })
            .collect();
        if self.opts.auto_create_topics && version < 13 {
            let names: Vec<String> = names.iter().flatten().cloned().collect();
            self.auto_create(&names).await;
        }
        // Partitions with a batch go to the shard; the rest are answered here.
        let mut parts = Vec::new();
        let mut early: HashMap<(usize, usize), (i16, String)> = HashMap::new();
        for (ti, t) in r.topic_data.iter().enumerate() {
            for (pi, p) in t.partition_data.iter().enumerate() {
                let Some(name) = &names[ti] else {
                    early.insert(
                        (ti, pi),
                        (
                            errors::UNKNOWN_TOPIC_ID,
                            format!("unknown topic id {}", t.topic_id),
                        ),
                    );
                    continue;
                };
                // acks=all on a single node: one in-sync replica, so a topic that asks
                // for more refuses it (acks=1 is not affected), as Kafka does.
                if acks == -1
                    && let Some(policy) = self.shard.policy(name)
                {
                    let min = policy.min_insync_replicas;
                    if min > 1 {
                        early.insert(
                            (ti, pi),
                            (
                                errors::NOT_ENOUGH_REPLICAS,
                                format!(
                                    "min.insync.replicas={min} but the in-sync replica set has 1 replica: this broker is a single node"
                                ),
                            ),
                        );
                        continue;
                    }
                }
                match (&p.records, u32::try_from(p.index)) {
                    (Some(batch), Ok(partition)) if !batch.is_empty() => {
                        parts.push(ProducePartition {
                            topic: name.clone(),
                            partition,
                            batch: batch.clone(),
                        })
                    }
                    (_, Err(_)) => {
                        early.insert(
                            (ti, pi),
                            (
                                errors::UNKNOWN_TOPIC_OR_PARTITION,
                                format!("partition {}", p.index),
                            ),
                        );
                    }
                    _ => {
                        early.insert((ti, pi), (errors::INVALID_RECORD, "no records".into()));
                    }
                }
            }
        }
        let native_acks = if acks == 0 { 0 } else { 1 };
        let answer = self
            .shard
            .clone()
            .handle_request(Request::Produce {
                acks: native_acks,
                partitions: parts,
            })
            .await;
        if acks == 0 {
            return None;
        }
        let mut results = match answer {
            Response::Produce(v) => v.into_iter(),
            other => {
                tracing::error!("kafka: unexpected produce answer {other:?}");
                Vec::new().into_iter()
            }
        };
        for (ti, t) in r.topic_data.iter().enumerate() {
            let mut tr = km::produce_response::TopicProduceResponse::default();
            if version >= 13 {
                tr.topic_id = t.topic_id;
            } else {
                tr.name = t.name.clone();
            }
            for (pi, p) in t.partition_data.iter().enumerate() {
                let mut pr = km::produce_response::PartitionProduceResponse::default();
                pr.index = p.index;
                pr.log_append_time_ms = -1;
                pr.log_start_offset = -1;
                if let Some((c, m)) = early.remove(&(ti, pi)) {
                    pr.error_code = c;
                    pr.error_message = (version >= 8).then(|| s(&m));
                    pr.base_offset = -1;
                } else if let Some(res) = results.next() {
                    pr.error_code = code(&res.error);
                    pr.error_message = msg(&res.error).filter(|_| version >= 8);
                    pr.base_offset = res.base_offset;
                    if version >= 8 {
                        pr.record_errors = res
                            .record_errors
                            .iter()
                            .map(|(i, m)| {
                                let mut e =
                                    km::produce_response::BatchIndexAndErrorMessage::default();
                                e.batch_index = *i;
                                e.batch_index_error_message = Some(s(m));
                                e
                            })
                            .collect();
                    }
                } else {
                    pr.error_code = errors::UNKNOWN_SERVER_ERROR;
                    pr.base_offset = -1;
                }
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        Some(resp)
    }

    async fn fetch(&self, r: km::FetchRequest, version: i16, cid: i32) -> OutFrame {
        let mut parts = Vec::new();
        // Per topic in request order: its name, its id, and each partition with the
        // error it gets without asking the shard (a negative partition, an unknown
        // topic id), or `None` when the shard answers it.
        let mut order: Vec<FetchTopicOrder> = Vec::new();
        for t in &r.topics {
            // From v13 topics are named by id (KIP-516).
            let name = if version >= 13 {
                self.topic_by_uuid(t.topic_id)
            } else {
                Some(t.topic.0.to_string())
            };
            let mut ps = Vec::new();
            for p in &t.partitions {
                match (&name, u32::try_from(p.partition)) {
                    (None, _) => ps.push((p.partition, Some(errors::UNKNOWN_TOPIC_ID))),
                    (Some(name), Ok(partition)) => {
                        parts.push(FetchPartition {
                            topic: name.clone(),
                            partition,
                            offset: p.fetch_offset,
                            max_bytes: p.partition_max_bytes.max(0) as u32,
                        });
                        ps.push((p.partition, None));
                    }
                    (Some(_), Err(_)) => {
                        ps.push((p.partition, Some(errors::UNKNOWN_TOPIC_OR_PARTITION)))
                    }
                }
            }
            order.push((name.unwrap_or_default(), t.topic_id, ps));
        }
        let max_bytes = if r.max_bytes > 0 {
            r.max_bytes as u32
        } else {
            i32::MAX as u32
        };
        let answer = self
            .shard
            .clone()
            .handle_request(Request::Fetch {
                max_wait_ms: r.max_wait_ms.max(0) as u32,
                min_bytes: r.min_bytes.max(0) as u32,
                max_bytes,
                partitions: parts,
            })
            .await;
        // Held to max_bytes and each partition's limit by the shard (KIP-74).
        let mut results = match answer {
            Response::Fetch(v) => v.into_iter(),
            _ => Vec::new().into_iter(),
        };
        let flexible = version >= 12;
        let mut f = OutFrame::begin();
        {
            let b = f.bytes_mut();
            b.put_i32(cid);
            if flexible {
                b.put_u8(0); // response header tagged fields
            }
            b.put_i32(0); // throttle_time_ms
            if version >= 7 {
                b.put_i16(errors::NONE);
                b.put_i32(0); // session id 0: no incremental fetch session (KIP-227)
            }
            put_len(b, order.len(), flexible);
        }
        for (name, id, ps) in &order {
            if version >= 13 {
                f.bytes_mut().put_slice(id.as_bytes());
            } else {
                put_string(f.bytes_mut(), name, flexible);
            }
            put_len(f.bytes_mut(), ps.len(), flexible);
            for &(partition, early) in ps {
                let res = if early.is_none() {
                    results.next()
                } else {
                    None
                };
                let b = f.bytes_mut();
                b.put_i32(partition);
                match &res {
                    Some(res) => {
                        b.put_i16(code(&res.error));
                        b.put_i64(res.high_watermark);
                        b.put_i64(res.high_watermark); // last stable offset: no transactions
                        if version >= 5 {
                            b.put_i64(res.start_offset);
                        }
                    }
                    None => {
                        b.put_i16(early.unwrap_or(errors::UNKNOWN_TOPIC_OR_PARTITION));
                        b.put_i64(-1);
                        b.put_i64(-1);
                        if version >= 5 {
                            b.put_i64(-1);
                        }
                    }
                }
                put_len(b, 0, flexible); // aborted transactions: none
                if version >= 11 {
                    b.put_i32(-1); // preferred read replica
                }
                let len = res.as_ref().map_or(0, |r| r.records.len());
                if flexible {
                    put_uvarint(b, len as u32 + 1);
                } else {
                    b.put_i32(len as i32);
                }
                if let Some(res) = &res {
                    f.put_chunks(&res.records);
                }
                if flexible {
                    f.bytes_mut().put_u8(0); // partition tagged fields
                }
            }
            if flexible {
                f.bytes_mut().put_u8(0); // topic tagged fields
            }
        }
        if flexible {
            f.bytes_mut().put_u8(0); // response tagged fields
        }
        f.seal()
    }

    /// The name of the topic with Kafka id `id`, if there is one.
    fn topic_by_uuid(&self, id: uuid::Uuid) -> Option<String> {
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

    /// Native ListOffsets: (topic, partition, error, offset) in request order.
    async fn offsets(
        &self,
        parts: Vec<(String, u32, i64)>,
    ) -> std::vec::IntoIter<(String, u32, WireError, i64, i64)> {
        let answer = self
            .shard
            .clone()
            .handle_request(Request::ListOffsets { partitions: parts })
            .await;
        match answer {
            Response::Offsets(v) => v.into_iter(),
            _ => Vec::new().into_iter(),
        }
    }

    async fn list_offsets(
        &self,
        r: km::ListOffsetsRequest,
        version: i16,
    ) -> km::ListOffsetsResponse {
        let mut parts = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                parts.push((
                    t.name.0.to_string(),
                    p.partition_index.max(0) as u32,
                    p.timestamp,
                ));
            }
        }
        let mut results = self.offsets(parts).await;
        let mut resp = km::ListOffsetsResponse::default();
        for t in &r.topics {
            let mut tr = km::list_offsets_response::ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = km::list_offsets_response::ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.timestamp = -1;
                match results.next() {
                    Some((_, _, e, offset, timestamp)) if p.partition_index >= 0 => {
                        pr.error_code = code(&e);
                        pr.offset = offset;
                        pr.timestamp = timestamp;
                        if offset >= 0 && version >= 4 {
                            pr.leader_epoch = 0;
                        }
                    }
                    _ => {
                        pr.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                        pr.offset = -1;
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    async fn create_topics(
        &self,
        r: km::CreateTopicsRequest,
        version: i16,
    ) -> km::CreateTopicsResponse {
        let mut resp = km::CreateTopicsResponse::default();
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut tr = km::create_topics_response::CreatableTopicResult::default();
            tr.name = t.name.clone();
            tr.num_partitions = -1;
            tr.replication_factor = -1;
            let partitions = if t.num_partitions == -1 {
                Ok(self.opts.default_partitions)
            } else if t.num_partitions < 1 || t.num_partitions as u32 > topics::PARTITIONS_MAX {
                Err(format!(
                    "partition count must be 1 to {} (or -1 for the default)",
                    topics::PARTITIONS_MAX
                ))
            } else {
                Ok(t.num_partitions as u32)
            };
            let configs = configs_from_kafka(
                t.configs
                    .iter()
                    .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
            );
            let (err, message) = if let Err(e) = topics::validate_name(&name) {
                (errors::INVALID_TOPIC_EXCEPTION, Some(e))
            } else if let Err(e) = &partitions {
                (errors::INVALID_PARTITIONS, Some(e.clone()))
            } else if !matches!(t.replication_factor, -1 | 1) {
                (
                    errors::INVALID_REPLICATION_FACTOR,
                    Some(format!(
                        "replication factor {}: this broker is a single node (use 1 or -1)",
                        t.replication_factor
                    )),
                )
            } else if !t.assignments.is_empty() {
                (
                    errors::INVALID_REQUEST,
                    Some("manual replica assignment is not supported".into()),
                )
            } else if let Err(e) = &configs {
                (errors::INVALID_CONFIG, Some(e.clone()))
            } else if let Err(e) = topics::log_config(
                &configs.clone().unwrap_or_default().into_iter().collect(),
                &self.shard.log_defaults(),
            ) {
                (errors::INVALID_CONFIG, Some(e))
            } else if r.validate_only {
                if self.shard.has_topic(&name) {
                    (
                        errors::TOPIC_ALREADY_EXISTS,
                        Some(format!("topic {name:?} exists")),
                    )
                } else {
                    (errors::NONE, None)
                }
            } else {
                let answer = self
                    .shard
                    .clone()
                    .handle_request(Request::CreateTopic {
                        name: name.clone(),
                        partitions: *partitions.as_ref().expect("checked above"),
                        configs: configs.clone().expect("checked above"),
                    })
                    .await;
                match answer {
                    Response::Done(e) => (code(&e), msg(&e).map(|m| m.to_string())),
                    other => (errors::UNKNOWN_SERVER_ERROR, Some(format!("{other:?}"))),
                }
            };
            tr.error_code = err;
            tr.error_message = message.map(|m| s(&m)).filter(|_| version >= 1);
            if err == errors::NONE && version >= 5 {
                tr.num_partitions = *partitions.as_ref().unwrap_or(&0) as i32;
                tr.replication_factor = 1;
                let explicit: BTreeMap<String, String> =
                    configs.unwrap_or_default().into_iter().collect();
                tr.configs = Some(
                    effective_configs(&explicit, &self.shard.log_defaults())
                        .into_iter()
                        .map(|d| {
                            let mut c =
                                km::create_topics_response::CreatableTopicConfigs::default();
                            c.name = s(&d.name);
                            c.value = Some(s(&d.value));
                            c.config_source = if d.set { 1 } else { 5 };
                            c
                        })
                        .collect(),
                );
                if let Some(meta) = self.shard.topic(&name).filter(|_| version >= 7) {
                    tr.topic_id = topic_uuid(meta.id);
                }
            }
            resp.topics.push(tr);
        }
        resp
    }

    async fn delete_topics(
        &self,
        r: km::DeleteTopicsRequest,
        version: i16,
    ) -> km::DeleteTopicsResponse {
        let mut resp = km::DeleteTopicsResponse::default();
        let mut wanted: Vec<(Option<String>, uuid::Uuid)> = r
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect();
        wanted.extend(
            r.topics
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
        );
        for (name, id) in wanted {
            let mut tr = km::delete_topics_response::DeletableTopicResult::default();
            if version >= 6 {
                tr.topic_id = id;
            }
            let name = name.or_else(|| {
                self.shard
                    .topic_names()
                    .into_iter()
                    .find(|n| self.shard.topic(n).is_some_and(|m| topic_uuid(m.id) == id))
            });
            let Some(name) = name else {
                tr.error_code = 100; // UNKNOWN_TOPIC_ID
                tr.error_message = Some(s("unknown topic id")).filter(|_| version >= 5);
                resp.responses.push(tr);
                continue;
            };
            tr.name = Some(topic_name(&name));
            let answer = self
                .shard
                .clone()
                .handle_request(Request::DeleteTopic { name })
                .await;
            if let Response::Done(e) = answer {
                tr.error_code = code(&e);
                tr.error_message = msg(&e).filter(|_| version >= 5);
            }
            resp.responses.push(tr);
        }
        resp
    }

    fn describe_configs(
        &self,
        r: km::DescribeConfigsRequest,
        version: i16,
    ) -> km::DescribeConfigsResponse {
        let mut resp = km::DescribeConfigsResponse::default();
        for res in r.resources {
            let mut rr = km::describe_configs_response::DescribeConfigsResult::default();
            rr.resource_type = res.resource_type;
            rr.resource_name = res.resource_name.clone();
            let name = res.resource_name.to_string();
            // (described, source): TOPIC_CONFIG 1, STATIC_BROKER_CONFIG 4, DEFAULT_CONFIG 5.
            let configs: Vec<(Described, i8)> = match res.resource_type {
                // TOPIC
                2 => match self.shard.topic(&name) {
                    Some(meta) => effective_configs(&meta.configs, &self.shard.log_defaults())
                        .into_iter()
                        .map(|d| {
                            let source = if d.set { 1 } else { 5 };
                            (d, source)
                        })
                        .collect(),
                    None => {
                        rr.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                        rr.error_message = Some(s(&format!("unknown topic {name:?}")));
                        Vec::new()
                    }
                },
                // BROKER: the defaults new topics start from.
                4 => effective_configs(&BTreeMap::new(), &self.shard.log_defaults())
                    .into_iter()
                    .filter_map(|mut d| {
                        let (_, broker) = BROKER_CONFIG_NAMES.iter().find(|(t, _)| *t == d.name)?;
                        d.name = broker.to_string();
                        Some((d, 4))
                    })
                    .collect(),
                other => {
                    rr.error_code = errors::INVALID_REQUEST;
                    rr.error_message = Some(s(&format!("resource type {other} is not supported")));
                    Vec::new()
                }
            };
            let keys: Option<HashSet<String>> = res
                .configuration_keys
                .map(|k| k.iter().map(|k| k.to_string()).collect());
            for (d, source) in configs {
                if keys.as_ref().is_some_and(|keys| !keys.contains(&d.name)) {
                    continue;
                }
                let mut c = km::describe_configs_response::DescribeConfigsResourceResult::default();
                c.name = s(&d.name);
                c.value = Some(s(&d.value));
                c.read_only = false;
                c.config_source = source;
                if version >= 3 {
                    c.config_type = d.config_type;
                }
                rr.configs.push(c);
            }
            resp.results.push(rr);
        }
        resp
    }

    /// A producer id for an idempotent producer: always a new one, with epoch 0, as
    /// Kafka answers when there is no transactional id. The id and epoch a client sends
    /// are ignored: an id the broker did not issue must never become the client's
    /// (some clients send producer id 0 by default; they would all share it).
    async fn init_producer_id(&self, r: km::InitProducerIdRequest) -> km::InitProducerIdResponse {
        let mut resp = km::InitProducerIdResponse::default();
        resp.producer_id = km::ProducerId(-1);
        resp.producer_epoch = -1;
        match &r.transactional_id {
            None => {}
            // Kafka's answer to an empty transactional id.
            Some(t) if t.is_empty() => {
                resp.error_code = errors::INVALID_REQUEST;
                return resp;
            }
            Some(_) => {
                resp.error_code = TRANSACTIONS_UNSUPPORTED;
                return resp;
            }
        }
        match self.shard.new_producer_id().await {
            Ok(id) => {
                resp.producer_id = km::ProducerId(id);
                resp.producer_epoch = 0;
            }
            Err(e) => resp.error_code = code(&e),
        }
        resp
    }

    async fn create_partitions(
        &self,
        r: km::CreatePartitionsRequest,
    ) -> km::CreatePartitionsResponse {
        let mut resp = km::CreatePartitionsResponse::default();
        for t in r.topics {
            let mut tr = km::create_partitions_response::CreatePartitionsTopicResult::default();
            tr.name = t.name.clone();
            let e = if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                WireError::new(
                    ErrorCode::InvalidRequest,
                    "manual replica assignment is not supported",
                )
            } else if t.count < 1 {
                WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("partition count {}", t.count),
                )
            } else {
                self.shard
                    .clone()
                    .change_topic(TopicChange::Partitions {
                        name: t.name.0.to_string(),
                        count: t.count as u32,
                        validate_only: r.validate_only,
                    })
                    .await
            };
            tr.error_code = match e.code {
                ErrorCode::InvalidRequest => errors::INVALID_PARTITIONS,
                _ => code(&e),
            };
            tr.error_message = msg(&e);
            resp.results.push(tr);
        }
        resp
    }

    /// DeleteRecords: moves log start offsets (retention and reads respect them).
    async fn delete_records(&self, r: km::DeleteRecordsRequest) -> km::DeleteRecordsResponse {
        // A negative partition is answered here: it must never reach a partition.
        let mut parts = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                if let Ok(partition) = u32::try_from(p.partition_index) {
                    parts.push((t.name.0.to_string(), partition, p.offset));
                }
            }
        }
        let mut results = self.shard.clone().delete_records(parts).await.into_iter();
        let mut resp = km::DeleteRecordsResponse::default();
        for t in &r.topics {
            let mut tr = km::delete_records_response::DeleteRecordsTopicResult::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = km::delete_records_response::DeleteRecordsPartitionResult::default();
                pr.partition_index = p.partition_index;
                match (p.partition_index >= 0).then(|| results.next()).flatten() {
                    Some((e, start)) => {
                        pr.error_code = code(&e);
                        pr.low_watermark = start;
                    }
                    _ => {
                        pr.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                        pr.low_watermark = -1;
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    /// AlterConfigs (the whole set): a topic's configs become exactly the ones given;
    /// every other goes back to its default.
    async fn alter_configs_whole(&self, r: km::AlterConfigsRequest) -> km::AlterConfigsResponse {
        let mut resp = km::AlterConfigsResponse::default();
        for res in r.resources {
            let mut rr = km::alter_configs_response::AlterConfigsResourceResponse::default();
            rr.resource_type = res.resource_type;
            rr.resource_name = res.resource_name.clone();
            let result = self
                .alter_topic(
                    res.resource_type,
                    &res.resource_name,
                    r.validate_only,
                    |meta| {
                        let set = configs_from_kafka(
                            res.configs
                                .iter()
                                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
                        )?;
                        let remove = meta
                            .configs
                            .keys()
                            .filter(|k| !set.iter().any(|(s, _)| s == *k))
                            .cloned()
                            .collect();
                        Ok((set, remove))
                    },
                )
                .await;
            if let Err((c, m)) = result {
                rr.error_code = c;
                rr.error_message = Some(s(&m));
            }
            resp.responses.push(rr);
        }
        resp
    }

    /// Changes a topic's stored configs as `changes` says, given the topic's metadata;
    /// the error code and message for the resource otherwise.
    async fn alter_topic(
        &self,
        resource_type: i8,
        name: &str,
        validate_only: bool,
        changes: impl FnOnce(&topics::TopicMeta) -> Result<StoredChanges, String>,
    ) -> Result<(), (i16, String)> {
        if resource_type != 2 {
            return Err((
                errors::INVALID_REQUEST,
                format!("resource type {resource_type}: only topics (2) can be altered"),
            ));
        }
        let Some(meta) = self.shard.topic(name) else {
            return Err((
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {name:?}"),
            ));
        };
        let (set, remove) = changes(&meta).map_err(|e| (errors::INVALID_CONFIG, e))?;
        self.change_configs(name.to_string(), set, remove, validate_only)
            .await
    }

    /// Sets and removes a topic's configs (ringmq's names) on the metadata shard.
    async fn change_configs(
        &self,
        name: String,
        set: Vec<(String, String)>,
        remove: Vec<String>,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        let e = self
            .shard
            .clone()
            .change_topic(TopicChange::Configs {
                name,
                set,
                remove,
                validate_only,
            })
            .await;
        match e.code {
            ErrorCode::None => Ok(()),
            ErrorCode::InvalidRequest => Err((errors::INVALID_CONFIG, e.message)),
            _ => Err((code(&e), e.message)),
        }
    }

    /// IncrementalAlterConfigs on topics: SET and DELETE of the settings ringmq has
    /// (APPEND and SUBTRACT apply to list settings, which it has none of).
    async fn alter_configs(
        &self,
        r: km::IncrementalAlterConfigsRequest,
    ) -> km::IncrementalAlterConfigsResponse {
        let mut resp = km::IncrementalAlterConfigsResponse::default();
        for res in r.resources {
            let mut rr =
                km::incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            rr.resource_type = res.resource_type;
            rr.resource_name = res.resource_name.clone();
            let defaults = self.shard.log_defaults();
            let result = self
                .alter_topic(
                    res.resource_type,
                    &res.resource_name,
                    r.validate_only,
                    |meta| incremental_changes(&meta.configs, &defaults, &res.configs),
                )
                .await;
            if let Err((c, m)) = result {
                rr.error_code = c;
                rr.error_message = Some(s(&m));
            }
            resp.responses.push(rr);
        }
        resp
    }

    /// Every group's coordinator is this node (the group's shard is found inside).
    /// From v4 a request names several keys (KIP-699) and each gets its own answer.
    /// Transaction coordinators (key type 1) are refused: transactions are not
    /// supported; share groups (key type 2) neither.
    fn find_coordinator(
        &self,
        r: km::FindCoordinatorRequest,
        version: i16,
    ) -> km::FindCoordinatorResponse {
        let mut resp = km::FindCoordinatorResponse::default();
        let (host, port) = self.broker();
        let refusal = match r.key_type {
            0 => None,
            1 => Some((
                TRANSACTIONS_UNSUPPORTED,
                TRANSACTIONS_UNSUPPORTED_MESSAGE.to_string(),
            )),
            2 => Some((
                errors::INVALID_REQUEST,
                "share groups are not supported by this broker".to_string(),
            )),
            t => Some((
                errors::INVALID_REQUEST,
                format!("unknown coordinator key type {t}"),
            )),
        };
        if version >= 4 {
            for key in r.coordinator_keys {
                let mut c = km::find_coordinator_response::Coordinator::default();
                c.key = key;
                match &refusal {
                    Some((code, message)) => {
                        c.error_code = *code;
                        c.error_message = Some(s(message));
                        c.node_id = km::BrokerId(-1);
                        c.host = s("");
                        c.port = -1;
                    }
                    None => {
                        c.node_id = km::BrokerId(NODE_ID);
                        c.host = host.clone();
                        c.port = port;
                    }
                }
                resp.coordinators.push(c);
            }
            return resp;
        }
        if let Some((code, message)) = refusal {
            resp.error_code = code;
            if version >= 1 {
                resp.error_message = Some(s(&message));
            }
            resp.node_id = km::BrokerId(-1);
            resp.port = -1;
            return resp;
        }
        resp.node_id = km::BrokerId(NODE_ID);
        resp.host = host;
        resp.port = port;
        resp
    }

    /// OffsetFetch from v8 names several groups; each is asked on its own shard, and
    /// the answers are put together.
    async fn offset_fetch_groups(&self, r: km::OffsetFetchRequest) -> km::OffsetFetchResponse {
        let mut resp = km::OffsetFetchResponse::default();
        for g in &r.groups {
            let reply = self
                .on_group_shard(kafka_groups::fetch_group_op(g, r.require_stable))
                .await;
            resp.groups
                .push(kafka_groups::fetch_group_response(g, reply));
        }
        resp
    }

    /// ListGroups asks every shard.
    async fn list_groups(&self, r: km::ListGroupsRequest, version: i16) -> km::ListGroupsResponse {
        let mut resp = km::ListGroupsResponse::default();
        for shard in 0..self.shard.shard_count() {
            let reply = self
                .shard
                .group_request_on(shard, GroupOp::List, Duration::ZERO)
                .await;
            match kafka_groups::listed_groups(reply, version) {
                Some(groups) => resp.groups.extend(groups),
                None => resp.error_code = kafka_groups::coordinator_not_available(),
            }
        }
        // v5 (KIP-848): every group here is a classic group.
        if !r.types_filter.is_empty()
            && !r
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case("classic"))
        {
            resp.groups.clear();
        }
        if !r.states_filter.is_empty() {
            resp.groups.retain(|g| {
                r.states_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(&g.group_state))
            });
        }
        resp
    }

    /// Answers an operation on one group on the group's shard.
    async fn on_group_shard(&self, op: GroupOp) -> Option<groups::GroupReply> {
        self.shard.group_request(op, Duration::ZERO).await
    }

    /// DescribeGroups: each group on its own shard.
    async fn describe_groups(
        &self,
        r: km::DescribeGroupsRequest,
        version: i16,
    ) -> km::DescribeGroupsResponse {
        let mut resp = km::DescribeGroupsResponse::default();
        for g in &r.groups {
            let reply = self.on_group_shard(kafka_groups::describe_op(g)).await;
            resp.groups
                .push(kafka_groups::described_group(g, reply, version));
        }
        resp
    }

    /// DeleteGroups: each group on its own shard.
    async fn delete_groups(&self, r: km::DeleteGroupsRequest) -> km::DeleteGroupsResponse {
        let mut resp = km::DeleteGroupsResponse::default();
        for g in &r.groups_names {
            let reply = self.on_group_shard(kafka_groups::delete_op(g)).await;
            resp.results.push(kafka_groups::deleted_group(g, reply));
        }
        resp
    }

    fn describe_cluster(&self) -> km::DescribeClusterResponse {
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

    /// Every partition has had one leader epoch, 0: the end offset of epoch 0 (or of any
    /// later epoch a client asks about) is the log end offset.
    async fn offset_for_leader_epoch(
        &self,
        r: km::OffsetForLeaderEpochRequest,
    ) -> km::OffsetForLeaderEpochResponse {
        let mut parts = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                parts.push((
                    t.topic.0.to_string(),
                    p.partition.max(0) as u32,
                    OFFSET_LATEST,
                ));
            }
        }
        let mut results = self.offsets(parts).await;
        let mut resp = km::OffsetForLeaderEpochResponse::default();
        for t in &r.topics {
            let mut tr =
                km::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            for p in &t.partitions {
                let mut pr = km::offset_for_leader_epoch_response::EpochEndOffset::default();
                pr.partition = p.partition;
                match results.next() {
                    Some((_, _, e, offset, _)) if e.is_ok() && p.leader_epoch >= 0 => {
                        pr.leader_epoch = 0;
                        pr.end_offset = offset;
                    }
                    Some((_, _, e, _, _)) if !e.is_ok() => {
                        pr.error_code = code(&e);
                        pr.leader_epoch = -1;
                        pr.end_offset = -1;
                    }
                    _ => {
                        pr.leader_epoch = -1;
                        pr.end_offset = -1;
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }
}

/// Configs to set and configs to remove, as stored.
type StoredChanges = (Vec<(String, String)>, Vec<String>);

/// A fetched topic in request order: its name, its id, and each partition with the
/// error it gets without asking the shard, or `None` when the shard answers it.
type FetchTopicOrder = (String, uuid::Uuid, Vec<(i32, Option<i16>)>);

/// IncrementalAlterConfigs' operations on one topic as stored changes: SET (0),
/// DELETE (1, back to the default), and for list configs APPEND (2) and SUBTRACT (3),
/// applied to the topic's effective value. Returns (set, remove).
fn incremental_changes(
    stored: &BTreeMap<String, String>,
    defaults: &ringmq_storage::LogConfig,
    ops: &[km::incremental_alter_configs_request::AlterableConfig],
) -> Result<StoredChanges, String> {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    let effective = effective_configs(stored, defaults);
    for c in ops {
        let name = c.name.as_str();
        let value = c.value.as_ref().map(|v| v.as_str());
        let change = match c.config_operation {
            0 => config_from_kafka(name, value)?,
            1 => match config_from_kafka(
                name,
                Some(topic_configs::def(name).map_or("", |d| d.default)),
            ) {
                Ok(ConfigChange::Set(k, _) | ConfigChange::Reset(k)) => ConfigChange::Reset(k),
                Err(_) if name == "ringmq.flush" => ConfigChange::Reset("flush".into()),
                Err(e) => return Err(e),
            },
            op @ (2 | 3) => {
                let def = topic_configs::def(name)
                    .ok_or_else(|| format!("unknown topic config {name}"))?;
                if !def.is_list() {
                    return Err(format!(
                        "{} is not allowed on {name}: it is not a list config",
                        if op == 2 { "APPEND" } else { "SUBTRACT" }
                    ));
                }
                let current = effective
                    .iter()
                    .find(|d| d.name == name)
                    .map(|d| d.value.clone())
                    .unwrap_or_default();
                let next =
                    topic_configs::append_or_subtract(&current, value.unwrap_or(""), op == 2);
                config_from_kafka(name, Some(&next))?
            }
            op => return Err(format!("config operation {op} on {name}: expected 0 to 3")),
        };
        match change {
            ConfigChange::Set(k, v) => set.push((k, v)),
            ConfigChange::Reset(k) => remove.push(k),
        }
    }
    Ok((set, remove))
}

/// Encodes a response frame: length, header, body.
fn encode(correlation_id: i32, api: ApiKey, version: i16, resp: &ResponseKind) -> OutFrame {
    let mut f = OutFrame::begin();
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation_id;
    let b = f.bytes_mut();
    let ok = h
        .encode(b, api.response_header_version(version))
        .and_then(|_| resp.encode(b, version));
    if let Err(e) = ok {
        // Only a response that breaks the protocol's limits lands here.
        tracing::error!(api = ?api, version, error = %e, "kafka: response could not be encoded");
        return OutFrame::close();
    }
    f.seal()
}

fn put_uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn put_len(b: &mut BytesMut, n: usize, flexible: bool) {
    if flexible {
        put_uvarint(b, n as u32 + 1);
    } else {
        b.put_i32(n as i32);
    }
}

fn put_string(b: &mut BytesMut, v: &str, flexible: bool) {
    if flexible {
        put_uvarint(b, v.len() as u32 + 1);
    } else {
        b.put_i16(v.len() as i16);
    }
    b.put_slice(v.as_bytes());
}
