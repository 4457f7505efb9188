//! The Kafka wire protocol: existing Kafka clients and tools talk to ringmq unchanged.
//!
//! [`KafkaService`] is a connection [`Service`]: it decodes a Kafka request with the
//! `kafka-protocol` crate, turns it into the shard's operations (`ringmq_shard::ops`:
//! the same ones the native protocol uses, which the shard routes to the partitions'
//! owner shards), and encodes their results in the version the client asked for, with
//! Kafka's error codes for the broker's errors ([`kafka_code`]). One module per API
//! family: `produce`, `fetch`, `offsets`, `metadata`, `admin` (topics and configs),
//! `groups`. Fetch responses are encoded here by hand, because the crate can only
//! encode records it holds in memory, and on-disk records go file → socket without a
//! copy (`OutFrame` file parts).
//!
//! What Kafka brokers do, this does: a request that cannot be parsed, an unknown API
//! key or an unsupported version of an API other than ApiVersions closes the
//! connection (logged); ApiVersions answers a version it does not know with error 35
//! in version 0, so the client can retry with one it does.
//!
//! Before the crate decodes a request, `bounds` walks it once (walk functions
//! generated from the crate's decoders into `bounds_generated`, by
//! `kafka/gen/bounds.py`): every array count, string and bytes length must be backed
//! by bytes of the frame, so the decoder never reserves memory for elements a request
//! merely claims.

#![deny(missing_docs)]

//! Without the default `service` feature the crate is only the decoder
//! ([`check_request`], [`SUPPORTED`]): it links neither the shard nor the network
//! layer, so it can be fuzzed on its own.

#[cfg(feature = "service")]
mod admin;
mod bounds;
#[allow(clippy::manual_range_contains, clippy::absurd_extreme_comparisons)]
mod bounds_generated;
#[cfg(feature = "service")]
mod configs;
mod decode;
#[cfg(feature = "service")]
mod errors;
#[cfg(feature = "service")]
mod fetch;
#[cfg(feature = "service")]
mod group_ops;
#[cfg(feature = "service")]
mod groups;
#[cfg(feature = "service")]
mod metadata;
#[cfg(feature = "service")]
mod offsets;
#[cfg(feature = "service")]
mod produce;
#[cfg(feature = "service")]
mod service;

#[cfg(feature = "service")]
use std::time::Duration;

#[cfg(feature = "service")]
use kafka_protocol::ResponseError as KErr;
#[cfg(feature = "service")]
use kafka_protocol::messages as km;
use kafka_protocol::messages::ApiKey;
#[cfg(feature = "service")]
use kafka_protocol::protocol::StrBytes;

pub use decode::check_request;
#[cfg(feature = "service")]
pub use errors::kafka_code;
#[cfg(feature = "service")]
pub use service::KafkaService;

#[cfg(feature = "service")]
/// How long a forwarded JoinGroup or SyncGroup may wait for its rebalance.
pub(crate) const GROUP_WAIT_MAX: Duration = Duration::from_secs(600);

/// The broker's node id in Kafka metadata (a single node).
pub const NODE_ID: i32 = 0;
/// The cluster id reported to clients.
pub const CLUSTER_ID: &str = "ringmq";

#[cfg(feature = "service")]
/// What a transactional request gets (FindCoordinator for a transaction, InitProducerId
/// with a transactional id): TRANSACTIONAL_ID_AUTHORIZATION_FAILED, with a message
/// saying that transactions are not supported. It is the one error that every client
/// treats as fatal at once (librdkafka retries a coordinator lookup on any other error
/// until the caller's timeout; the Java client fails fast on it too), so
/// `init_transactions` fails within a second and reports the message.
pub(crate) const TRANSACTIONS_UNSUPPORTED: i16 = KErr::TransactionalIdAuthorizationFailed.code();
/// The message that goes with [`TRANSACTIONS_UNSUPPORTED`].
#[cfg(feature = "service")]
pub(crate) const TRANSACTIONS_UNSUPPORTED_MESSAGE: &str =
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

pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
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

#[cfg(feature = "service")]
pub(crate) fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

#[cfg(feature = "service")]
pub(crate) fn topic_name(v: &str) -> km::TopicName {
    km::TopicName(s(v))
}

/// A topic's Kafka id: ringmq's topic number in a fixed namespace (never zero).
pub fn topic_uuid(id: u32) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(TOPIC_UUID_NAMESPACE, u64::from(id) + 1)
}

/// The high half of every topic id ("ringmq" and two zero bytes).
pub(crate) const TOPIC_UUID_NAMESPACE: u64 = 0x7269_6e67_6d71_0000;
