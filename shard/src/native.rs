//! The native protocol's front-end: a connection [`Handler`] that turns each native
//! [`Request`] into the shard's operations ([`crate::ops`]) and their results back
//! into a [`Response`], mapping [`ErrorKind`]s to the native [`ErrorCode`]s.
//!
//! Native acks: 0 none, 1 the leader (durable under the topic's flush policy), 2 all
//! in-sync replicas (refused with `NotEnoughReplicas` when the topic's
//! `min.insync.replicas` is more than the in-sync replicas).

use std::rc::Rc;
use std::time::{Duration, Instant};

use ringmq_net::codec::{
    self, ErrorCode, FetchResult, OFFSET_EARLIEST, OFFSET_LATEST, PartitionInfo, PartitionLeader,
    ProduceResult, Request, Response, WireError,
};
use ringmq_net::conn::{Handler, Handoff, LocalFuture};

use crate::broker::{CoordinatorNode, Shard};
use crate::error::{BrokerError, ErrorKind};
use crate::groups::GroupOp;
use crate::ops::{
    Acks, Fetch, FetchPart, Isolation, OffsetQuery, OffsetSpec, ProducePart, Reader, TopicOp,
    TopicPartition,
};

/// ListOffsets for the record with the largest timestamp (Kafka's `MAX_TIMESTAMP`,
/// KIP-734).
pub const OFFSET_MAX_TIMESTAMP: i64 = -3;
/// ListOffsets for the first offset on local storage (KIP-405): the log start here.
pub const OFFSET_EARLIEST_LOCAL: i64 = -4;
/// ListOffsets for the last offset on tiered storage (KIP-1005): none here.
pub const OFFSET_LATEST_TIERED: i64 = -5;

/// The native code for a broker error kind.
pub fn code(kind: ErrorKind) -> ErrorCode {
    use ErrorKind as K;
    match kind {
        K::UnknownTopic => ErrorCode::UnknownTopic,
        K::UnknownPartition => ErrorCode::UnknownPartition,
        K::TopicExists => ErrorCode::TopicExists,
        K::InvalidTopic
        | K::InvalidPartitions
        | K::InvalidConfig
        | K::InvalidReplicationFactor
        | K::InvalidRequest
        | K::InvalidRequiredAcks
        | K::InvalidGroupId
        | K::InvalidSessionTimeout
        | K::InconsistentGroupProtocol
        | K::Unsupported => ErrorCode::InvalidRequest,
        K::CorruptBatch => ErrorCode::CorruptBatch,
        K::MessageTooLarge => ErrorCode::MessageTooLarge,
        K::InvalidRecord => ErrorCode::InvalidRecord,
        K::InvalidTimestamp => ErrorCode::InvalidTimestamp,
        K::NotEnoughReplicas | K::NotEnoughReplicasAfterAppend => ErrorCode::NotEnoughReplicas,
        K::ProducerFenced => ErrorCode::ProducerFenced,
        K::OutOfOrderSequence => ErrorCode::OutOfOrderSequence,
        K::UnknownProducer => ErrorCode::UnknownProducer,
        K::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
        K::UnknownMember | K::FencedInstanceId | K::MemberIdRequired => ErrorCode::UnknownMember,
        K::IllegalGeneration => ErrorCode::IllegalGeneration,
        K::RebalanceInProgress => ErrorCode::RebalanceInProgress,
        K::Storage => ErrorCode::StorageError,
        K::Timeout => ErrorCode::Timeout,
        K::NotLeader
        | K::LeaderNotAvailable
        | K::FencedLeaderEpoch
        | K::UnknownLeaderEpoch
        | K::CoordinatorNotAvailable
        | K::NotCoordinator
        | K::CoordinatorLoadInProgress
        | K::GroupIdNotFound
        | K::NonEmptyGroup
        | K::GroupSubscribedToTopic
        | K::GroupMaxSizeReached
        | K::LimitReached
        | K::Unavailable
        | K::Internal => ErrorCode::Unavailable,
    }
}

/// A broker error as a native one.
pub fn wire(e: BrokerError) -> WireError {
    WireError::new(code(e.kind), e.message)
}

fn done(r: Result<(), BrokerError>) -> Response {
    Response::Done(r.map_or_else(wire, |()| WireError::none()))
}

/// The native spec of a ListOffsets query.
fn offset_spec(v: i64) -> Result<OffsetSpec, BrokerError> {
    Ok(match v {
        OFFSET_EARLIEST | OFFSET_EARLIEST_LOCAL => OffsetSpec::Earliest,
        OFFSET_LATEST => OffsetSpec::Latest,
        OFFSET_MAX_TIMESTAMP => OffsetSpec::MaxTimestamp,
        OFFSET_LATEST_TIERED => OffsetSpec::LatestTiered,
        ts if ts >= 0 => OffsetSpec::Timestamp(ts),
        other => {
            return Err(BrokerError::new(
                ErrorKind::InvalidRequest,
                format!("offset spec {other}"),
            ));
        }
    })
}

impl Shard {
    /// Answers a native request that arrived on one of this shard's connections.
    pub async fn handle_native(self: Rc<Self>, req: Request) -> Response {
        match req {
            Request::ApiVersions { .. } => Response::ApiVersions(codec::supported_versions()),
            Request::BrokerStats => match self.broker_counters().await {
                Ok(mut c) => {
                    // Not a sum: which shard serves the connection that asked
                    // (connection steering).
                    c.push(("connection_shard".into(), u64::from(self.id())));
                    Response::Stats(c)
                }
                Err(e) => Response::Error(wire(e)),
            },
            Request::InitProducer => match self.new_producer_id().await {
                Ok(producer_id) => Response::Producer {
                    producer_id,
                    epoch: 0,
                },
                Err(e) => Response::Error(wire(e)),
            },
            // A move to another shard is done by the connection loop; what reaches here
            // names this shard (nothing to do) or no shard.
            Request::BindShard { shard } if shard < self.shard_count() => {
                Response::Done(WireError::none())
            }
            Request::BindShard { shard } => Response::Done(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "no shard {shard}: this broker has {} (0-{})",
                    self.shard_count(),
                    self.shard_count() - 1
                ),
            )),
            Request::ListTopics => Response::Topics(self.topic_names()),
            Request::DescribeTopic { name } => self.native_describe(name).await,
            Request::Leaders { topic } => self.native_leaders(&topic),
            Request::FindCoordinator { group } => self.native_find_coordinator(&group),
            Request::CreateTopic {
                name,
                partitions,
                configs,
                replication_factor,
            } => done(
                self.change_topics(TopicOp::Create {
                    name,
                    partitions,
                    configs,
                    replication_factor,
                    validate_only: false,
                })
                .await,
            ),
            Request::DeleteTopic { name } => {
                done(self.change_topics(TopicOp::Delete { name }).await)
            }
            Request::Produce { acks, partitions } => {
                let acks = match acks {
                    0 => Acks::None,
                    1 => Acks::Leader,
                    2 => Acks::All,
                    other => {
                        return Response::Error(WireError::new(
                            ErrorCode::InvalidRequest,
                            format!("acks {other}: expected 0 (none), 1 (leader) or 2 (all)"),
                        ));
                    }
                };
                let parts = partitions
                    .into_iter()
                    .map(|p| ProducePart {
                        tp: TopicPartition::new(p.topic, p.partition),
                        batch: p.batch,
                    })
                    .collect();
                let results = self.produce(acks, parts).await;
                Response::Produce(
                    results
                        .into_iter()
                        .map(|r| {
                            let (error, base_offset) = match r.result {
                                Ok(o) => (WireError::none(), o),
                                Err(e) => (wire(e), -1),
                            };
                            ProduceResult {
                                topic: r.tp.topic,
                                partition: r.tp.partition,
                                error,
                                base_offset,
                                record_errors: r.record_errors,
                            }
                        })
                        .collect(),
                )
            }
            Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            } => {
                let fetch = Fetch {
                    reader: Reader::Consumer(Isolation::ReadUncommitted),
                    max_wait: Duration::from_millis(u64::from(max_wait_ms)),
                    min_bytes,
                    max_bytes,
                    parts: partitions
                        .into_iter()
                        .map(|p| FetchPart {
                            tp: TopicPartition::new(p.topic, p.partition),
                            offset: p.offset,
                            max_bytes: p.max_bytes,
                            leader_epoch: None,
                            durable_offset: None,
                        })
                        .collect(),
                };
                let results = self.fetch(fetch).await;
                Response::Fetch(
                    results
                        .into_iter()
                        .map(|f| {
                            let (error, records) = match f.records {
                                Ok(r) => (WireError::none(), r),
                                Err(e) => (wire(e), codec::Records::new()),
                            };
                            FetchResult {
                                topic: f.tp.topic,
                                partition: f.tp.partition,
                                error,
                                high_watermark: f.high_watermark,
                                start_offset: f.log_start_offset,
                                records,
                            }
                        })
                        .collect(),
                )
            }
            Request::ListOffsets { partitions } => {
                let mut queries = Vec::with_capacity(partitions.len());
                let mut refused = Vec::new();
                for (i, (t, p, spec)) in partitions.into_iter().enumerate() {
                    match offset_spec(spec) {
                        Ok(spec) => queries.push(OffsetQuery {
                            tp: TopicPartition::new(t, p),
                            spec,
                            leader_epoch: None,
                        }),
                        Err(e) => refused.push((i, t, p, e)),
                    }
                }
                let mut found = self.list_offsets(queries).await.into_iter();
                let n = found.len() + refused.len();
                let mut refused = refused.into_iter().peekable();
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    if refused.peek().is_some_and(|r| r.0 == i) {
                        let (_, t, p, e) = refused.next().expect("peeked");
                        out.push((t, p, wire(e), -1, -1));
                        continue;
                    }
                    let Some(f) = found.next() else { break };
                    out.push(match f.result {
                        Ok(Some((o, ts, _))) => {
                            (f.tp.topic, f.tp.partition, WireError::none(), o, ts)
                        }
                        Ok(None) => (f.tp.topic, f.tp.partition, WireError::none(), -1, -1),
                        Err(e) => (f.tp.topic, f.tp.partition, wire(e), -1, -1),
                    });
                }
                Response::Offsets(out)
            }
            Request::JoinGroup { .. }
            | Request::GroupHeartbeat { .. }
            | Request::LeaveGroup { .. }
            | Request::CommitOffsets { .. }
            | Request::FetchOffsets { .. } => {
                // In a cluster the groups' topic is created at the first group request.
                self.ensure_offsets_topic();
                self.native_group(req).await
            }
        }
    }

    async fn native_describe(self: &Rc<Self>, name: String) -> Response {
        match self.describe_topic(&name).await {
            Err(e) => Response::Topic {
                error: wire(e),
                name,
                partitions: Vec::new(),
                configs: Vec::new(),
            },
            Ok((meta, stats)) => Response::Topic {
                error: WireError::none(),
                name,
                partitions: stats
                    .into_iter()
                    .map(|s| PartitionInfo {
                        partition: s.tp.partition,
                        shard: s.shard,
                        start_offset: s.start_offset,
                        high_watermark: s.high_watermark,
                        size_bytes: s.size_bytes,
                    })
                    .collect(),
                configs: meta.configs.into_iter().collect(),
            },
        }
    }

    /// Where each partition of `topic` is led. A single node leads them all (node 0, no
    /// address: the client goes on with the broker it asked); in a cluster, the
    /// metadata's leader and its native listener, none while this node has not yet
    /// caught up with the metadata after a restart.
    fn native_leaders(&self, topic: &str) -> Response {
        let Some(meta) = self.topic(topic) else {
            let error = if self.clustered() && self.cluster().is_none() {
                WireError::new(
                    ErrorCode::Unavailable,
                    "this node is starting: it has not learned the cluster's metadata yet",
                )
            } else {
                wire(BrokerError::unknown_topic(topic))
            };
            return Response::Leaders {
                error,
                partitions: Vec::new(),
            };
        };
        let cluster = self.cluster();
        let partitions = (0..meta.partitions)
            .map(|p| {
                let shard = meta.placement.get(p as usize).copied().unwrap_or(0);
                let Some(c) = &cluster else {
                    return PartitionLeader {
                        partition: p,
                        leader: 0,
                        leader_epoch: 0,
                        address: String::new(),
                        shard,
                    };
                };
                let view = c.partition(&TopicPartition::new(topic, p));
                let leader = view.and_then(|v| v.leader).filter(|_| c.registered);
                let address = leader
                    .and_then(|l| c.nodes.get(&l))
                    .filter(|n| !n.fenced)
                    .map(|n| n.native.clone());
                PartitionLeader {
                    partition: p,
                    leader: if address.is_some() {
                        leader.unwrap_or(-1)
                    } else {
                        -1
                    },
                    leader_epoch: view.map_or(0, |v| v.leader_epoch),
                    address: address.unwrap_or_default(),
                    shard,
                }
            })
            .collect();
        Response::Leaders {
            error: WireError::none(),
            partitions,
        }
    }

    /// Which node coordinates `group`, as a partition leader: on a single node, node 0
    /// with no address (the broker asked) and the group's shard; in a cluster, the
    /// leader of the group's partition of the groups' topic and its native listener.
    fn native_find_coordinator(self: &Rc<Self>, group: &str) -> Response {
        let (error, coordinator) = match self.group_coordinator(group) {
            Ok(CoordinatorNode::Single { shard }) => (
                WireError::none(),
                PartitionLeader {
                    partition: 0,
                    leader: 0,
                    leader_epoch: 0,
                    address: String::new(),
                    shard,
                },
            ),
            Ok(CoordinatorNode::Node {
                id,
                node,
                partition,
                leader_epoch,
                shard,
            }) => (
                WireError::none(),
                PartitionLeader {
                    partition,
                    leader: id,
                    leader_epoch,
                    address: node.native,
                    shard,
                },
            ),
            Err(e) => (
                wire(e),
                PartitionLeader {
                    partition: 0,
                    leader: -1,
                    leader_epoch: 0,
                    address: String::new(),
                    shard: 0,
                },
            ),
        };
        Response::Coordinator { error, coordinator }
    }

    /// A native group request: answered by the group's coordinator, as Kafka's are.
    async fn native_group(&self, req: Request) -> Response {
        let Some(op) = crate::native_groups::op(&req) else {
            return Response::Error(WireError::new(
                ErrorCode::InvalidRequest,
                "not a group request",
            ));
        };
        let wait = match &op {
            GroupOp::Join(j) => j.rebalance_timeout,
            _ => Duration::ZERO,
        };
        match self.group_request(op, wait).await {
            Some(reply) => crate::native_groups::response(reply),
            None => Response::Error(WireError::new(
                ErrorCode::Unavailable,
                "the group's coordinator shard did not answer",
            )),
        }
    }
}

impl Handler for Shard {
    fn handle(self: Rc<Self>, request: Request) -> LocalFuture<Response> {
        Box::pin(self.handle_native(request))
    }

    fn sleep_until(&self, deadline: Instant) -> LocalFuture<()> {
        Box::pin(self.timers().sleep_until(deadline))
    }

    fn shard(&self) -> (u32, u32) {
        (self.id(), self.shard_count())
    }

    fn hand_over(self: Rc<Self>, to: u32, conn: Handoff) -> LocalFuture<bool> {
        Box::pin(async move { Shard::hand_over(&self, to, conn).await })
    }
}
