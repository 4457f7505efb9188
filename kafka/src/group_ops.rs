//! Kafka's group APIs as coordinator operations, and the answers back: a Kafka request
//! (decoded by the `kafka-protocol` crate) becomes a [`GroupOp`], whose flags the
//! request's version sets (`JoinGroup` v4+ requires a member id, static members from
//! v5, batched leaves from v3); the [`GroupReply`] becomes the response, with the
//! fields the version has; a [`BrokerError`] becomes Kafka's code
//! ([`error_code`], from `kafka_protocol::ResponseError`).
//!
//! It uses only the shard's public group and error types.

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{self as km, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use ringmq_shard::error::{BrokerError, ErrorKind};
use ringmq_shard::groups::{
    CommitOffsets, DeleteOffsets, DescribedGroup, FetchOffsets, GroupMember, GroupOp, GroupReply,
    Heartbeat, JoinGroup, LeaveGroup, Leaving, ListedGroup, OffsetCommit, SyncGroup, TopicOffsets,
};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

/// Kafka's code for an error of the group coordinator. Limits and an unavailable or
/// unwritable coordinator are COORDINATOR_NOT_AVAILABLE, which clients retry (after
/// looking the coordinator up again).
pub fn error_code(kind: ErrorKind) -> i16 {
    match kind {
        // A group's coordinator that cannot write or answer: the client finds the
        // coordinator again and retries.
        ErrorKind::Storage | ErrorKind::Unavailable => {
            ResponseError::CoordinatorNotAvailable.code()
        }
        other => crate::errors::kafka_code(other),
    }
}

/// COORDINATOR_NOT_AVAILABLE: for a group whose shard did not answer.
pub fn coordinator_not_available() -> i16 {
    ResponseError::CoordinatorNotAvailable.code()
}

/// A group's answer, or the code for why there is none: the coordinator's error, or
/// COORDINATOR_NOT_AVAILABLE when the group's shard gave no answer of that kind.
fn answered<T>(answer: Option<Result<T, BrokerError>>) -> Result<T, i16> {
    match answer {
        Some(Ok(t)) => Ok(t),
        Some(Err(e)) => Err(error_code(e.kind)),
        None => Err(coordinator_not_available()),
    }
}

fn code_of(r: &Result<(), BrokerError>) -> i16 {
    match r {
        Ok(()) => 0,
        Err(e) => error_code(e.kind),
    }
}

/// The operation of one of Kafka's per-group requests (JoinGroup, SyncGroup,
/// Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch up to v7, OffsetDelete) at
/// `version`; `None` for any other request (ListGroups, DescribeGroups, DeleteGroups
/// and OffsetFetch from v8 name no group or several: each group's operation is asked
/// on its own, see the functions below).
pub fn op(
    request: &RequestKind,
    version: i16,
    client_id: &str,
    client_host: &str,
) -> Option<GroupOp> {
    // Fields a version does not have decode as their defaults (no instance id before
    // v5 of JoinGroup, v3 of SyncGroup and Heartbeat, v7 of OffsetCommit).
    let instance = |i: &Option<StrBytes>| i.as_ref().map(|i| i.to_string());
    Some(match request {
        RequestKind::JoinGroup(q) => GroupOp::Join(JoinGroup {
            group: q.group_id.0.to_string(),
            member_id: q.member_id.to_string(),
            instance_id: if version >= 5 {
                instance(&q.group_instance_id)
            } else {
                None
            },
            session_timeout: ms(q.session_timeout_ms),
            // v0 has no rebalance timeout: the session timeout is used.
            rebalance_timeout: ms(if version >= 1 {
                q.rebalance_timeout_ms
            } else {
                q.session_timeout_ms
            }),
            protocol_type: q.protocol_type.to_string(),
            protocols: q
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
            // KIP-394: from v4 a first join gets MEMBER_ID_REQUIRED and a member id.
            require_member_id: version >= 4,
        }),
        RequestKind::SyncGroup(q) => GroupOp::Sync(SyncGroup {
            group: q.group_id.0.to_string(),
            member_id: q.member_id.to_string(),
            instance_id: instance(&q.group_instance_id),
            generation: q.generation_id,
            assignments: q
                .assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect(),
        }),
        RequestKind::Heartbeat(q) => GroupOp::Heartbeat(Heartbeat {
            group: q.group_id.0.to_string(),
            member_id: q.member_id.to_string(),
            instance_id: instance(&q.group_instance_id),
            generation: q.generation_id,
        }),
        RequestKind::LeaveGroup(q) => GroupOp::Leave(LeaveGroup {
            group: q.group_id.0.to_string(),
            // From v3 a request names several members (KIP-345), before one.
            members: if version >= 3 {
                q.members
                    .iter()
                    .map(|m| Leaving {
                        member_id: m.member_id.to_string(),
                        instance_id: instance(&m.group_instance_id),
                    })
                    .collect()
            } else {
                vec![Leaving {
                    member_id: q.member_id.to_string(),
                    instance_id: None,
                }]
            },
        }),
        RequestKind::OffsetCommit(q) => GroupOp::CommitOffsets(CommitOffsets {
            group: q.group_id.0.to_string(),
            member_id: q.member_id.to_string(),
            instance_id: instance(&q.group_instance_id),
            generation: q.generation_id_or_member_epoch,
            offsets: q
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(|p| OffsetCommit {
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    })
                })
                .collect(),
        }),
        RequestKind::OffsetFetch(q) if version < 8 => GroupOp::FetchOffsets(FetchOffsets {
            group: q.group_id.0.to_string(),
            topics: q.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            }),
            require_stable: version >= 7 && q.require_stable,
        }),
        RequestKind::OffsetDelete(q) => GroupOp::DeleteOffsets(DeleteOffsets {
            group: q.group_id.0.to_string(),
            partitions: q
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (t.name.0.to_string(), p.partition_index))
                })
                .collect(),
        }),
        _ => return None,
    })
}

/// The response to `request` (whose [`op`] was answered with `reply`) at `version`;
/// `None` if the reply is not the answer to that request.
pub fn response(request: &RequestKind, version: i16, reply: GroupReply) -> Option<ResponseKind> {
    Some(match (request, reply) {
        (RequestKind::JoinGroup(_), GroupReply::Join(r)) => {
            let mut resp = km::JoinGroupResponse::default();
            resp.member_id = s(&r.member_id);
            resp.protocol_name = Some(s(""));
            match r.result {
                Err(e) => {
                    resp.error_code = error_code(e.kind);
                    resp.generation_id = -1;
                }
                Ok(j) => {
                    resp.generation_id = j.generation;
                    resp.leader = s(&j.leader);
                    resp.protocol_name = Some(s(&j.protocol));
                    if version >= 7 {
                        resp.protocol_type = Some(s(&j.protocol_type));
                    }
                    if version >= 9 {
                        resp.skip_assignment = j.skip_assignment;
                    }
                    resp.members = join_members(j.members, version);
                }
            }
            ResponseKind::JoinGroup(resp)
        }
        (RequestKind::SyncGroup(_), GroupReply::Sync(r)) => {
            let mut resp = km::SyncGroupResponse::default();
            if version >= 5
                && let Some((protocol_type, protocol)) = &r.protocol
            {
                resp.protocol_type = Some(s(protocol_type));
                resp.protocol_name = Some(s(protocol));
            }
            match r.assignment {
                Ok(a) => resp.assignment = a,
                Err(e) => resp.error_code = error_code(e.kind),
            }
            ResponseKind::SyncGroup(resp)
        }
        (RequestKind::Heartbeat(_), GroupReply::Heartbeat(r)) => {
            let mut resp = km::HeartbeatResponse::default();
            resp.error_code = code_of(&r);
            ResponseKind::Heartbeat(resp)
        }
        (RequestKind::LeaveGroup(_), GroupReply::Leave(r)) => {
            let mut resp = km::LeaveGroupResponse::default();
            match r {
                Err(e) => resp.error_code = error_code(e.kind),
                Ok(left) if version >= 3 => {
                    resp.members = left
                        .into_iter()
                        .map(|m| {
                            let mut mr = km::leave_group_response::MemberResponse::default();
                            mr.member_id = s(&m.member_id);
                            mr.group_instance_id = m.instance_id.as_deref().map(s);
                            mr.error_code = code_of(&m.result);
                            mr
                        })
                        .collect();
                }
                Ok(left) => {
                    resp.error_code = left.last().map_or(0, |m| code_of(&m.result));
                }
            }
            ResponseKind::LeaveGroup(resp)
        }
        (RequestKind::OffsetCommit(q), GroupReply::CommitOffsets(results)) => {
            let mut results = results.into_iter();
            let mut resp = km::OffsetCommitResponse::default();
            for t in &q.topics {
                let mut tr = km::offset_commit_response::OffsetCommitResponseTopic::default();
                tr.name = t.name.clone();
                for p in &t.partitions {
                    let mut pr =
                        km::offset_commit_response::OffsetCommitResponsePartition::default();
                    pr.partition_index = p.partition_index;
                    pr.error_code = code_of(&results.next()?);
                    tr.partitions.push(pr);
                }
                resp.topics.push(tr);
            }
            ResponseKind::OffsetCommit(resp)
        }
        (RequestKind::OffsetFetch(_), GroupReply::FetchOffsets(topics)) => {
            let mut resp = km::OffsetFetchResponse::default();
            match topics {
                Ok(topics) => resp.topics = fetched_topics(topics, version),
                // v0 and v1 have no error field: their clients see no offsets.
                Err(e) if version >= 2 => resp.error_code = error_code(e.kind),
                Err(_) => {}
            }
            ResponseKind::OffsetFetch(resp)
        }
        (RequestKind::OffsetDelete(q), GroupReply::DeleteOffsets(r)) => {
            let mut resp = km::OffsetDeleteResponse::default();
            match r {
                Err(e) => resp.error_code = error_code(e.kind),
                Ok(results) => {
                    let mut results = results.into_iter();
                    for t in &q.topics {
                        let mut tr =
                            km::offset_delete_response::OffsetDeleteResponseTopic::default();
                        tr.name = t.name.clone();
                        for p in &t.partitions {
                            let mut pr =
                                km::offset_delete_response::OffsetDeleteResponsePartition::default(
                                );
                            pr.partition_index = p.partition_index;
                            pr.error_code = code_of(&results.next()?);
                            tr.partitions.push(pr);
                        }
                        resp.topics.push(tr);
                    }
                }
            }
            ResponseKind::OffsetDelete(resp)
        }
        _ => return None,
    })
}

/// JoinGroup's member list (instance ids from v5).
fn join_members(
    members: Vec<GroupMember>,
    version: i16,
) -> Vec<km::join_group_response::JoinGroupResponseMember> {
    members
        .into_iter()
        .map(|m| {
            let mut r = km::join_group_response::JoinGroupResponseMember::default();
            r.member_id = s(&m.member_id);
            if version >= 5 {
                r.group_instance_id = m.instance_id.as_deref().map(s);
            }
            r.metadata = m.metadata;
            r
        })
        .collect()
}

/// OffsetFetch's topics up to v7 (leader epochs from v5).
fn fetched_topics(
    topics: Vec<TopicOffsets>,
    version: i16,
) -> Vec<km::offset_fetch_response::OffsetFetchResponseTopic> {
    topics
        .into_iter()
        .map(|t| {
            let mut tr = km::offset_fetch_response::OffsetFetchResponseTopic::default();
            tr.name = km::TopicName(s(&t.topic));
            tr.partitions = t
                .partitions
                .into_iter()
                .map(|(p, committed)| {
                    let mut pr = km::offset_fetch_response::OffsetFetchResponsePartition::default();
                    pr.partition_index = p;
                    match committed {
                        Some(c) => {
                            pr.committed_offset = c.offset;
                            if version >= 5 {
                                pr.committed_leader_epoch = c.leader_epoch;
                            }
                            pr.metadata = Some(s(c.metadata.as_deref().unwrap_or("")));
                        }
                        None => {
                            pr.committed_offset = -1;
                            pr.metadata = Some(s(""));
                        }
                    }
                    pr
                })
                .collect();
            tr
        })
        .collect()
}

/// OffsetFetch from v8 names several groups: the operation for one of them.
pub fn fetch_group_op(
    group: &km::offset_fetch_request::OffsetFetchRequestGroup,
    require_stable: bool,
) -> GroupOp {
    GroupOp::FetchOffsets(FetchOffsets {
        group: group.group_id.0.to_string(),
        topics: group.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect()
        }),
        require_stable,
    })
}

/// OffsetFetch from v8: one group's part of the response, from its reply (`None`: its
/// shard did not answer).
pub fn fetch_group_response(
    group: &km::offset_fetch_request::OffsetFetchRequestGroup,
    reply: Option<GroupReply>,
) -> km::offset_fetch_response::OffsetFetchResponseGroup {
    let mut gr = km::offset_fetch_response::OffsetFetchResponseGroup::default();
    gr.group_id = group.group_id.clone();
    let answer = reply.and_then(|r| match r {
        GroupReply::FetchOffsets(r) => Some(r),
        _ => None,
    });
    let topics = match answered(answer) {
        Ok(topics) => topics,
        Err(code) => {
            gr.error_code = code;
            return gr;
        }
    };
    // As up to v7 (leader epochs included), in v8's types.
    gr.topics = fetched_topics(topics, 7)
        .into_iter()
        .map(|t| {
            let mut tr = km::offset_fetch_response::OffsetFetchResponseTopics::default();
            tr.name = t.name;
            tr.partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut pr =
                        km::offset_fetch_response::OffsetFetchResponsePartitions::default();
                    pr.partition_index = p.partition_index;
                    pr.committed_offset = p.committed_offset;
                    pr.committed_leader_epoch = p.committed_leader_epoch;
                    pr.metadata = p.metadata;
                    pr.error_code = p.error_code;
                    pr
                })
                .collect();
            tr
        })
        .collect();
    gr
}

/// ListGroups: one shard's groups at `version` (`None`: the shard did not answer).
pub fn listed_groups(
    reply: Option<GroupReply>,
    version: i16,
) -> Option<Vec<km::list_groups_response::ListedGroup>> {
    let Some(GroupReply::List(groups)) = reply else {
        return None;
    };
    Some(
        groups
            .into_iter()
            .map(|g: ListedGroup| {
                let mut lg = km::list_groups_response::ListedGroup::default();
                lg.group_id = km::GroupId(s(&g.group));
                lg.protocol_type = s(&g.protocol_type);
                if version >= 4 {
                    lg.group_state = s(g.state.name());
                }
                // v5 (KIP-848): every group here is a classic group.
                if version >= 5 {
                    lg.group_type = s("classic");
                }
                lg
            })
            .collect(),
    )
}

/// DescribeGroups: the operation for one of the groups named.
pub fn describe_op(group: &km::GroupId) -> GroupOp {
    GroupOp::Describe {
        group: group.0.to_string(),
    }
}

/// DescribeGroups: one group's part of the response at `version` (`None`: its shard
/// did not answer).
pub fn described_group(
    group: &km::GroupId,
    reply: Option<GroupReply>,
    version: i16,
) -> km::describe_groups_response::DescribedGroup {
    let mut dg = km::describe_groups_response::DescribedGroup::default();
    dg.group_id = group.clone();
    let answer = reply.and_then(|r| match r {
        GroupReply::Describe(r) => Some(r),
        _ => None,
    });
    let d = match answered(answer) {
        Ok(d) => d,
        Err(code) => {
            dg.error_code = code;
            return dg;
        }
    };
    let DescribedGroup {
        state,
        protocol_type,
        protocol,
        members,
    } = d;
    dg.group_state = s(state.name());
    dg.protocol_type = s(&protocol_type);
    dg.protocol_data = s(&protocol);
    dg.members = members
        .into_iter()
        .map(|m| {
            let mut dm = km::describe_groups_response::DescribedGroupMember::default();
            dm.member_id = s(&m.member_id);
            if version >= 4 {
                dm.group_instance_id = m.instance_id.as_deref().map(s);
            }
            dm.client_id = s(&m.client_id);
            dm.client_host = s(&m.client_host);
            dm.member_metadata = m.metadata;
            dm.member_assignment = m.assignment;
            dm
        })
        .collect();
    dg
}

/// DeleteGroups: the operation for one of the groups named.
pub fn delete_op(group: &km::GroupId) -> GroupOp {
    GroupOp::Delete {
        group: group.0.to_string(),
    }
}

/// DeleteGroups: one group's result (`None`: its shard did not answer).
pub fn deleted_group(
    group: &km::GroupId,
    reply: Option<GroupReply>,
) -> km::delete_groups_response::DeletableGroupResult {
    let mut r = km::delete_groups_response::DeletableGroupResult::default();
    r.group_id = group.clone();
    r.error_code = match reply {
        Some(GroupReply::Delete(result)) => code_of(&result),
        _ => coordinator_not_available(),
    };
    r
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::protocol::Encodable;

    use super::*;
    use ringmq_shard::groups::{
        DescribedMember, GroupState, JoinReply, Joined, MemberLeft, SyncReply, subscription,
    };

    #[test]
    fn group_errors_get_kafka_codes_and_limits_a_retriable_one() {
        assert_eq!(error_code(ErrorKind::GroupMaxSizeReached), 81);
        assert_eq!(error_code(ErrorKind::MemberIdRequired), 79);
        assert_eq!(error_code(ErrorKind::UnknownMember), 25);
        assert_eq!(error_code(ErrorKind::FencedInstanceId), 82);
        assert_eq!(error_code(ErrorKind::LimitReached), 15);
        let limit = ResponseError::try_from_code(error_code(ErrorKind::LimitReached));
        assert!(limit.is_some_and(|e| e.is_retriable()));
    }

    fn join_request() -> km::JoinGroupRequest {
        let mut q = km::JoinGroupRequest::default();
        q.group_id = km::GroupId(s("g"));
        q.session_timeout_ms = 10_000;
        q.rebalance_timeout_ms = 30_000;
        q.group_instance_id = Some(s("i"));
        q.protocol_type = s("consumer");
        q
    }

    #[test]
    fn join_flags_follow_the_version() {
        let join = |q: &km::JoinGroupRequest, v| match op(
            &RequestKind::JoinGroup(q.clone()),
            v,
            "c",
            "/h",
        ) {
            Some(GroupOp::Join(j)) => j,
            other => panic!("{other:?}"),
        };
        let q = join_request();
        assert!(!join(&q, 3).require_member_id);
        assert!(join(&q, 4).require_member_id);
        assert_eq!(join(&q, 4).instance_id, None, "static members from v5");
        assert_eq!(join(&q, 5).instance_id.as_deref(), Some("i"));
        assert_eq!(join(&q, 0).rebalance_timeout, Duration::from_secs(10));
        assert_eq!(join(&q, 1).rebalance_timeout, Duration::from_secs(30));
        let mut negative = q.clone();
        negative.session_timeout_ms = -5;
        assert_eq!(join(&negative, 9).session_timeout, Duration::ZERO);
    }

    #[test]
    fn leave_names_one_member_before_v3_and_several_from_it() {
        let mut q = km::LeaveGroupRequest::default();
        q.group_id = km::GroupId(s("g"));
        q.member_id = s("old");
        let mut m = km::leave_group_request::MemberIdentity::default();
        m.member_id = s("a");
        q.members = vec![m.clone(), m];
        let members = |v| match op(&RequestKind::LeaveGroup(q.clone()), v, "", "") {
            Some(GroupOp::Leave(l)) => l.members,
            other => panic!("{other:?}"),
        };
        assert_eq!(members(2).len(), 1);
        assert_eq!(members(2)[0].member_id, "old");
        assert_eq!(members(3).len(), 2);
    }

    fn encodes(resp: ResponseKind, version: i16) {
        resp.encode(&mut BytesMut::new(), version)
            .unwrap_or_else(|e| panic!("v{version} does not encode: {e}: {resp:?}"));
    }

    /// Each answer carries only the fields its version has (the crate refuses to encode
    /// a field set that the version lacks).
    #[test]
    fn answers_encode_at_every_version() {
        let member = GroupMember {
            member_id: "m".into(),
            instance_id: Some("i".into()),
            metadata: Bytes::from_static(b"x"),
        };
        let joined = Joined {
            generation: 2,
            leader: "m".into(),
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            members: vec![member],
            skip_assignment: true,
        };
        let refused = BrokerError::new(ErrorKind::MemberIdRequired, "again");
        for version in 0..=9 {
            for result in [Ok(joined.clone()), Err(refused.clone())] {
                let reply = GroupReply::Join(JoinReply {
                    member_id: "m".into(),
                    result,
                });
                let request = RequestKind::JoinGroup(join_request());
                encodes(response(&request, version, reply).unwrap(), version);
            }
        }
        for version in 0..=5 {
            let reply = GroupReply::Sync(SyncReply {
                protocol: Some(("consumer".into(), "range".into())),
                assignment: Ok(Bytes::from_static(b"a")),
            });
            let request = RequestKind::SyncGroup(Default::default());
            encodes(response(&request, version, reply).unwrap(), version);
            let reply = GroupReply::Leave(Ok(vec![MemberLeft {
                member_id: "m".into(),
                instance_id: Some("i".into()),
                result: Ok(()),
            }]));
            let request = RequestKind::LeaveGroup(Default::default());
            encodes(response(&request, version, reply).unwrap(), version);
            let reply = Some(GroupReply::List(vec![ListedGroup {
                group: "g".into(),
                protocol_type: "consumer".into(),
                state: GroupState::Stable,
            }]));
            let mut resp = km::ListGroupsResponse::default();
            resp.groups = listed_groups(reply, version).unwrap();
            encodes(ResponseKind::ListGroups(resp), version);
        }
        // OffsetFetch from v1, as advertised.
        for version in 1..=7 {
            let reply = GroupReply::FetchOffsets(Ok(vec![TopicOffsets {
                topic: "t".into(),
                partitions: vec![(0, None)],
            }]));
            let request = RequestKind::OffsetFetch(Default::default());
            encodes(response(&request, version, reply).unwrap(), version);
        }
        for version in 0..=6 {
            let reply = GroupReply::Describe(Ok(DescribedGroup {
                state: GroupState::Stable,
                protocol_type: "consumer".into(),
                protocol: "range".into(),
                members: vec![DescribedMember {
                    member_id: "m".into(),
                    instance_id: Some("i".into()),
                    client_id: "c".into(),
                    client_host: "/h".into(),
                    metadata: Bytes::new(),
                    assignment: Bytes::new(),
                }],
            }));
            let mut resp = km::DescribeGroupsResponse::default();
            let group = km::GroupId(s("g"));
            resp.groups = vec![described_group(&group, Some(reply), version)];
            encodes(ResponseKind::DescribeGroups(resp), version);
        }
    }

    #[test]
    fn commit_answers_follow_the_request_topics() {
        let mut q = km::OffsetCommitRequest::default();
        for (t, ps) in [("a", vec![0, 1]), ("b", vec![7])] {
            let mut tq = km::offset_commit_request::OffsetCommitRequestTopic::default();
            tq.name = km::TopicName(s(t));
            for p in ps {
                let mut pq = km::offset_commit_request::OffsetCommitRequestPartition::default();
                pq.partition_index = p;
                tq.partitions.push(pq);
            }
            q.topics.push(tq);
        }
        let request = RequestKind::OffsetCommit(q);
        let Some(GroupOp::CommitOffsets(c)) = op(&request, 9, "", "") else {
            panic!("a commit");
        };
        assert_eq!(c.offsets.len(), 3);
        let reply =
            GroupReply::CommitOffsets(vec![Ok(()), Err(BrokerError::unknown_topic("a")), Ok(())]);
        let Some(ResponseKind::OffsetCommit(r)) = response(&request, 9, reply) else {
            panic!("a commit answer");
        };
        let codes: Vec<Vec<i16>> = r
            .topics
            .iter()
            .map(|t| t.partitions.iter().map(|p| p.error_code).collect())
            .collect();
        assert_eq!(codes, vec![vec![0, 3], vec![0]]);
        // An answer with fewer results than partitions is not this request's.
        let short = GroupReply::CommitOffsets(vec![Ok(())]);
        assert!(response(&request, 9, short).is_none());
    }

    /// The coordinator's own reader of consumer subscriptions reads what Kafka's
    /// encoding (here the crate's) writes, at every version.
    #[test]
    fn the_subscription_reader_reads_kafka_subscriptions() {
        for version in 0..=3i16 {
            let mut sub = km::ConsumerProtocolSubscription::default();
            sub.topics = vec![s("orders"), s("audit")];
            sub.user_data = Some(Bytes::from_static(b"user"));
            let mut tp = km::consumer_protocol_subscription::TopicPartition::default();
            tp.topic = km::TopicName(s("orders"));
            tp.partitions = vec![0, 1];
            if version >= 1 {
                sub.owned_partitions = vec![tp];
            }
            let mut b = BytesMut::from(&version.to_be_bytes()[..]);
            sub.encode(&mut b, version).unwrap();
            assert_eq!(
                subscription::subscribed_topics(&b),
                Some(vec!["orders".to_string(), "audit".to_string()]),
                "v{version}"
            );
        }
    }
}
