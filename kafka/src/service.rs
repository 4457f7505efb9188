//! [`KafkaService`]: the connection service that answers Kafka requests through the
//! shard.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use ringmq_net::codec::OutFrame;
use ringmq_net::conn::{LocalFuture, Service};
use ringmq_shard::broker::Shard;

use crate::decode::{Refusal, decode};
use crate::group_ops;
use crate::{GROUP_WAIT_MAX, KErr, KafkaOptions};

/// The Kafka protocol on one shard.
pub struct KafkaService {
    pub(crate) shard: Rc<Shard>,
    pub(crate) opts: Rc<KafkaOptions>,
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

impl KafkaService {
    async fn answer(self: Rc<Self>, body: Bytes, peer: Option<SocketAddr>) -> OutFrame {
        let client_host = peer.map(|p| format!("/{}", p.ip())).unwrap_or_default();
        let d = match decode(body) {
            Ok(d) => d,
            Err(Refusal::ApiVersionsFallback(correlation_id)) => {
                let mut r = self.api_versions();
                r.error_code = KErr::UnsupportedVersion.code();
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
                let Some(op) = group_ops::op(&request, version, &d.client_id, &client_host) else {
                    tracing::error!(api = ?api, "kafka: not a group request");
                    return OutFrame::close();
                };
                let reply = self.shard.group_request(op, wait).await;
                match reply.and_then(|r| group_ops::response(&request, version, r)) {
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
}

/// Encodes a response frame: length, header, body.
pub(crate) fn encode(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    resp: &ResponseKind,
) -> OutFrame {
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
