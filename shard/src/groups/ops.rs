//! What the group coordinator is asked ([`GroupOp`]) and what it answers
//! ([`GroupReply`]), in plain types: no wire format and no protocol version. Each
//! front-end maps its requests to these and the answers back (the Kafka one in
//! `kafka_groups`, the native one in `native_groups`); where a protocol version changes
//! what the coordinator does, the operation carries a named flag the front-end sets
//! (`JoinGroup::require_member_id`).
//!
//! Operations and replies are `Send`: a request that arrives on one shard is answered
//! by the group's shard ([`super::group_shard`]), over the cross-shard channels.

use std::time::Duration;

use bytes::Bytes;

use crate::error::Result;

/// An operation on consumer groups, answered by the shard that coordinates the group
/// ([`GroupOp::group`]) with the [`GroupReply`] of the same name.
#[derive(Debug, Clone)]
pub enum GroupOp {
    /// Join (or rejoin) a group: answered when its rebalance completes.
    Join(JoinGroup),
    /// Get this member's assignment for the generation (the leader gives everyone's).
    Sync(SyncGroup),
    /// Keep a membership alive; learn that the group rebalances.
    Heartbeat(Heartbeat),
    /// Members leave the group.
    Leave(LeaveGroup),
    /// Commit offsets for the group.
    CommitOffsets(CommitOffsets),
    /// The group's committed offsets.
    FetchOffsets(FetchOffsets),
    /// Delete committed offsets of the group.
    DeleteOffsets(DeleteOffsets),
    /// The groups the answering shard coordinates (ask every shard for all).
    List,
    /// A group's state and members.
    Describe {
        /// The group.
        group: String,
    },
    /// Delete a group that has no members, with its committed offsets.
    Delete {
        /// The group.
        group: String,
    },
}

impl GroupOp {
    /// The group the operation is about, whose shard answers it; `None` for
    /// [`GroupOp::List`], which every shard answers for its own groups.
    pub fn group(&self) -> Option<&str> {
        Some(match self {
            GroupOp::Join(o) => &o.group,
            GroupOp::Sync(o) => &o.group,
            GroupOp::Heartbeat(o) => &o.group,
            GroupOp::Leave(o) => &o.group,
            GroupOp::CommitOffsets(o) => &o.group,
            GroupOp::FetchOffsets(o) => &o.group,
            GroupOp::DeleteOffsets(o) => &o.group,
            GroupOp::Describe { group } | GroupOp::Delete { group } => group,
            GroupOp::List => return None,
        })
    }
}

/// [`GroupOp::Join`].
#[derive(Debug, Clone)]
pub struct JoinGroup {
    /// The group.
    pub group: String,
    /// Empty on a first join; then the id the coordinator gave.
    pub member_id: String,
    /// A static member's instance id (KIP-345): a member that restarts with it takes
    /// its old place.
    pub instance_id: Option<String>,
    /// Without a heartbeat for this long, the member is removed.
    pub session_timeout: Duration,
    /// How long a rebalance waits for the members to rejoin.
    pub rebalance_timeout: Duration,
    /// The group's protocol type (`consumer` for Kafka consumers, [`super::NATIVE_PROTOCOL_TYPE`]
    /// for native ones); every member must give the same.
    pub protocol_type: String,
    /// The protocols (assignors) the member supports, in its order of preference, each
    /// with its metadata in that protocol (for consumers, the subscription).
    pub protocols: Vec<(String, Bytes)>,
    /// The client id the member's client gave.
    pub client_id: String,
    /// Where the member connects from (`/IP`), or empty.
    pub client_host: String,
    /// A first join (no member id) without an instance id is answered
    /// `MemberIdRequired` with a new id, and the member joins with that id (KIP-394:
    /// a member is known before it counts). False: it joins at once under a new id.
    pub require_member_id: bool,
}

/// [`GroupOp::Sync`].
#[derive(Debug, Clone)]
pub struct SyncGroup {
    /// The group.
    pub group: String,
    /// The member.
    pub member_id: String,
    /// Its static instance id, if any (checked against the member id).
    pub instance_id: Option<String>,
    /// The generation the member joined.
    pub generation: i32,
    /// The leader's assignment: (member id, assignment); empty from the others.
    pub assignments: Vec<(String, Bytes)>,
}

/// [`GroupOp::Heartbeat`].
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// The group.
    pub group: String,
    /// The member.
    pub member_id: String,
    /// Its static instance id, if any.
    pub instance_id: Option<String>,
    /// The generation the member is in.
    pub generation: i32,
}

/// [`GroupOp::Leave`].
#[derive(Debug, Clone)]
pub struct LeaveGroup {
    /// The group.
    pub group: String,
    /// The members that leave, each answered on its own.
    pub members: Vec<Leaving>,
}

/// One member of a [`LeaveGroup`].
#[derive(Debug, Clone)]
pub struct Leaving {
    /// The member id; empty for a static member named by its instance id only.
    pub member_id: String,
    /// The static instance id, if any.
    pub instance_id: Option<String>,
}

/// [`GroupOp::CommitOffsets`].
#[derive(Debug, Clone)]
pub struct CommitOffsets {
    /// The group.
    pub group: String,
    /// The committing member (empty outside a generation).
    pub member_id: String,
    /// Its static instance id, if any.
    pub instance_id: Option<String>,
    /// The member's generation; negative for a commit outside any generation (a
    /// consumer that assigns its partitions itself), allowed while the group has no
    /// members.
    pub generation: i32,
    /// What to commit; each is answered on its own, in this order.
    pub offsets: Vec<OffsetCommit>,
}

/// One partition of a [`CommitOffsets`].
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset committed (the next one to read).
    pub offset: i64,
    /// The leader epoch of the record before it, or -1.
    pub leader_epoch: i32,
    /// The client's metadata for it.
    pub metadata: Option<String>,
}

/// [`GroupOp::FetchOffsets`].
#[derive(Debug, Clone)]
pub struct FetchOffsets {
    /// The group.
    pub group: String,
    /// (topic, partitions) wanted; `None` for every committed offset of the group.
    pub topics: Option<Vec<(String, Vec<i32>)>>,
    /// Only offsets no transaction is still writing (KIP-447). Offsets here are only
    /// ever committed outside transactions, so every one is stable and this changes
    /// nothing.
    pub require_stable: bool,
}

/// [`GroupOp::DeleteOffsets`].
#[derive(Debug, Clone)]
pub struct DeleteOffsets {
    /// The group.
    pub group: String,
    /// (topic, partition) whose offsets go; each is answered on its own, in this order.
    pub partitions: Vec<(String, i32)>,
}

/// The coordinator's answer to a [`GroupOp`], of the same name.
#[derive(Debug)]
pub enum GroupReply {
    /// To [`GroupOp::Join`].
    Join(JoinReply),
    /// To [`GroupOp::Sync`].
    Sync(SyncReply),
    /// To [`GroupOp::Heartbeat`]: `RebalanceInProgress` tells the member to rejoin.
    Heartbeat(Result<()>),
    /// To [`GroupOp::Leave`]: one answer per member, or why none (no such group).
    Leave(Result<Vec<MemberLeft>>),
    /// To [`GroupOp::CommitOffsets`]: one answer per offset, in the operation's order.
    CommitOffsets(Vec<Result<()>>),
    /// To [`GroupOp::FetchOffsets`], or why not (this node does not coordinate the
    /// group).
    FetchOffsets(Result<Vec<TopicOffsets>>),
    /// To [`GroupOp::DeleteOffsets`]: one answer per partition, in the operation's
    /// order, or why none (no such group, or one whose subscriptions are unknown).
    DeleteOffsets(Result<Vec<Result<()>>>),
    /// To [`GroupOp::List`].
    List(Vec<ListedGroup>),
    /// To [`GroupOp::Describe`], or why not (this node does not coordinate the group).
    Describe(Result<DescribedGroup>),
    /// To [`GroupOp::Delete`].
    Delete(Result<()>),
}

impl GroupReply {
    /// The answer to `op` when the coordinator cannot take it at all: `e` wherever
    /// the reply of that operation carries an error.
    pub fn refused(op: &GroupOp, e: crate::error::BrokerError) -> Self {
        match op {
            GroupOp::Join(j) => GroupReply::Join(JoinReply {
                member_id: j.member_id.clone(),
                result: Err(e),
            }),
            GroupOp::Sync(_) => GroupReply::Sync(SyncReply {
                protocol: None,
                assignment: Err(e),
            }),
            GroupOp::Heartbeat(_) => GroupReply::Heartbeat(Err(e)),
            GroupOp::Leave(_) => GroupReply::Leave(Err(e)),
            GroupOp::CommitOffsets(c) => {
                GroupReply::CommitOffsets(c.offsets.iter().map(|_| Err(e.clone())).collect())
            }
            GroupOp::FetchOffsets(_) => GroupReply::FetchOffsets(Err(e)),
            GroupOp::DeleteOffsets(_) => GroupReply::DeleteOffsets(Err(e)),
            GroupOp::List => GroupReply::List(Vec::new()),
            GroupOp::Describe { .. } => GroupReply::Describe(Err(e)),
            GroupOp::Delete { .. } => GroupReply::Delete(Err(e)),
        }
    }
}

/// The answer to a [`JoinGroup`].
#[derive(Debug, Clone)]
pub struct JoinReply {
    /// The member's id: the one it joined with, or the one given to it (a first join,
    /// `MemberIdRequired` included); empty when the join was refused before.
    pub member_id: String,
    /// The generation joined, or why not.
    pub result: Result<Joined>,
}

/// A completed join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The new generation.
    pub generation: i32,
    /// The leader's member id.
    pub leader: String,
    /// The group's protocol type.
    pub protocol_type: String,
    /// The protocol (assignor) chosen for the generation.
    pub protocol: String,
    /// For the leader, every member with its metadata in the chosen protocol; empty
    /// for the others. (Native members get their own assignment here, as their only
    /// member: the broker assigns for them.)
    pub members: Vec<GroupMember>,
    /// The leader must not assign again: the group keeps its assignment (a static
    /// leader that restarted, KIP-814).
    pub skip_assignment: bool,
}

/// A member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Its member id.
    pub member_id: String,
    /// Its static instance id, if any.
    pub instance_id: Option<String>,
    /// Its metadata in the group's protocol.
    pub metadata: Bytes,
}

/// The answer to a [`SyncGroup`].
#[derive(Debug, Clone)]
pub struct SyncReply {
    /// The group's protocol type and protocol, when the group exists.
    pub protocol: Option<(String, String)>,
    /// This member's assignment, or why not.
    pub assignment: Result<Bytes>,
}

/// One member's answer to a [`LeaveGroup`].
#[derive(Debug, Clone)]
pub struct MemberLeft {
    /// The member id, as asked.
    pub member_id: String,
    /// The instance id, as asked.
    pub instance_id: Option<String>,
    /// Whether it left.
    pub result: Result<()>,
}

/// A topic's part of the answer to a [`FetchOffsets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOffsets {
    /// The topic.
    pub topic: String,
    /// (partition, what is committed for it, if anything).
    pub partitions: Vec<(i32, Option<CommittedOffset>)>,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The offset.
    pub offset: i64,
    /// The leader epoch committed with it, or -1.
    pub leader_epoch: i32,
    /// The metadata committed with it.
    pub metadata: Option<String>,
}

/// A group's state, in the classic group protocol's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (committed offsets, or member ids handed out).
    Empty,
    /// Waiting for the members to (re)join.
    PreparingRebalance,
    /// Joined: waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// No such group.
    Dead,
}

impl GroupState {
    /// Its name, as Kafka's tools show it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// One group of a [`GroupReply::List`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    /// The group.
    pub group: String,
    /// Its protocol type.
    pub protocol_type: String,
    /// Its state.
    pub state: GroupState,
}

/// The answer to [`GroupOp::Describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedGroup {
    /// Its state ([`GroupState::Dead`]: no such group).
    pub state: GroupState,
    /// Its protocol type.
    pub protocol_type: String,
    /// The protocol (assignor) of its generation.
    pub protocol: String,
    /// Its members.
    pub members: Vec<DescribedMember>,
}

/// A member of a [`DescribedGroup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedMember {
    /// Its member id.
    pub member_id: String,
    /// Its static instance id, if any.
    pub instance_id: Option<String>,
    /// Its client's id.
    pub client_id: String,
    /// Where it connects from.
    pub client_host: String,
    /// Its metadata in the group's protocol.
    pub metadata: Bytes,
    /// Its assignment.
    pub assignment: Bytes,
}

// Operations and replies cross shards on glommio's shared channels.
const _: () = {
    const fn send<T: Send>() {}
    send::<GroupOp>();
    send::<GroupReply>();
};
