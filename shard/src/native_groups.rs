//! The native protocol's group requests as coordinator operations, and the answers
//! back. The native join is a join of protocol type
//! [`groups::NATIVE_PROTOCOL_TYPE`], whose metadata lists the topics and whose
//! partitions the broker assigns ([`groups::assign()`]); its member ids are given at the
//! first join (no MEMBER_ID_REQUIRED round).

use std::collections::BTreeMap;
use std::time::Duration;

use ringmq_net::codec::{ErrorCode, Request, Response, WireError};

use crate::error::BrokerError;
use crate::groups::{
    self, CommitOffsets, FetchOffsets, GroupOp, GroupReply, Heartbeat, JoinGroup, LeaveGroup,
    Leaving, OffsetCommit, assign,
};

/// The client id native members are described with.
const NATIVE_CLIENT_ID: &str = "ringmq";

/// The operation of a native group request; `None` if it is not one.
pub fn op(req: &Request) -> Option<GroupOp> {
    Some(match req {
        Request::JoinGroup {
            group,
            member_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            topics,
            assignor,
        } => GroupOp::Join(JoinGroup {
            group: group.clone(),
            member_id: member_id.clone(),
            instance_id: None,
            session_timeout: Duration::from_millis(u64::from(*session_timeout_ms)),
            rebalance_timeout: Duration::from_millis(u64::from(*rebalance_timeout_ms)),
            protocol_type: groups::NATIVE_PROTOCOL_TYPE.to_string(),
            protocols: vec![(assignor.clone(), assign::encode_topics(topics))],
            client_id: NATIVE_CLIENT_ID.to_string(),
            client_host: String::new(),
            require_member_id: false,
        }),
        Request::GroupHeartbeat {
            group,
            member_id,
            generation,
        } => GroupOp::Heartbeat(Heartbeat {
            group: group.clone(),
            member_id: member_id.clone(),
            instance_id: None,
            generation: *generation,
        }),
        Request::LeaveGroup { group, member_id } => GroupOp::Leave(LeaveGroup {
            group: group.clone(),
            members: vec![Leaving {
                member_id: member_id.clone(),
                instance_id: None,
            }],
        }),
        Request::CommitOffsets {
            group,
            member_id,
            generation,
            offsets,
        } => GroupOp::CommitOffsets(CommitOffsets {
            group: group.clone(),
            member_id: member_id.clone(),
            instance_id: None,
            generation: *generation,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| OffsetCommit {
                    topic: topic.clone(),
                    partition: partition_index(*partition),
                    offset: *offset,
                    leader_epoch: -1,
                    metadata: None,
                })
                .collect(),
        }),
        Request::FetchOffsets { group, partitions } => {
            let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (t, p) in partitions {
                topics
                    .entry(t.clone())
                    .or_default()
                    .push(partition_index(*p));
            }
            GroupOp::FetchOffsets(FetchOffsets {
                group: group.clone(),
                topics: Some(topics.into_iter().collect()),
                require_stable: false,
            })
        }
        _ => return None,
    })
}

/// A native partition number as the coordinator's (past `i32::MAX`: a partition no
/// topic has, answered as unknown).
fn partition_index(p: u32) -> i32 {
    i32::try_from(p).unwrap_or(i32::MAX)
}

/// The native code of a coordinator error ([`crate::native::code`]), with its message.
pub fn error(e: &BrokerError) -> WireError {
    WireError::new(crate::native::code(e.kind), e.message.clone())
}

fn outcome(r: &Result<(), BrokerError>) -> WireError {
    match r {
        Ok(()) => WireError::none(),
        Err(e) => error(e),
    }
}

/// The native answer to a group operation's reply.
pub fn response(reply: GroupReply) -> Response {
    match reply {
        GroupReply::Join(r) => match r.result {
            Ok(joined) => Response::Joined {
                error: WireError::none(),
                generation: joined.generation,
                member_id: r.member_id,
                // A native member's join answer carries its own assignment as its
                // only member.
                assignment: joined
                    .members
                    .first()
                    .map(|m| assign::decode_assignment(&m.metadata))
                    .unwrap_or_default(),
            },
            Err(e) => Response::Joined {
                error: error(&e),
                generation: -1,
                member_id: r.member_id,
                assignment: Vec::new(),
            },
        },
        GroupReply::Heartbeat(r) => Response::Done(outcome(&r)),
        GroupReply::Leave(r) => Response::Done(outcome(&r.and_then(|left| {
            left.into_iter()
                .map(|m| m.result)
                .find(Result::is_err)
                .unwrap_or(Ok(()))
        }))),
        GroupReply::CommitOffsets(results) => Response::Done(outcome(
            &results.into_iter().find(Result::is_err).unwrap_or(Ok(())),
        )),
        GroupReply::FetchOffsets(Err(e)) => Response::Error(crate::native::wire(e)),
        GroupReply::FetchOffsets(Ok(topics)) => Response::Offsets(
            topics
                .into_iter()
                .flat_map(|t| {
                    let topic = t.topic;
                    t.partitions.into_iter().map(move |(p, committed)| {
                        (
                            topic.clone(),
                            p as u32,
                            WireError::none(),
                            committed.map_or(-1, |c| c.offset),
                            -1,
                        )
                    })
                })
                .collect(),
        ),
        other => Response::Error(WireError::new(
            ErrorCode::InvalidRequest,
            format!("unexpected group answer {other:?}"),
        )),
    }
}
