//! Consumer groups: the group coordinator of one shard, for Kafka clients.
//!
//! Each group belongs to one shard, [`group_shard`] of its id; requests for it that
//! arrive on other shards are forwarded there. The classic protocol:
//!
//! - **Join.** A member joining (or rejoining) moves the group to `PreparingRebalance`.
//!   The rebalance completes when every known member has rejoined, or at the rebalance
//!   deadline (the members' largest rebalance timeout), when members that did not rejoin
//!   are dropped. A group that was empty waits `initial_rebalance_delay` first, so
//!   consumers starting together land in one generation (Kafka's
//!   `group.initial.rebalance.delay.ms`). Completion starts a new generation, picks the
//!   first protocol (assignor) every member supports, in the leader's order, and
//!   answers every pending join; the leader gets the members and their metadata.
//! - **Sync.** The leader's SyncGroup carries the assignment; it moves the group to
//!   `Stable` and answers every member's pending sync with its own part.
//! - **Heartbeat.** Keeps a member alive; during a rebalance it answers
//!   REBALANCE_IN_PROGRESS so the member rejoins. A member silent for its session
//!   timeout is removed and the group rebalances. Deadlines are checked every 100 ms on
//!   the shard's timing wheel.
//! - **Static members** (`group.instance.id`): a member rejoining with a known instance
//!   id takes over the old member's place without the old one timing out first.
//!
//! Committed offsets are appended to the shard's own group log
//! (`<data-dir>/__ringmq_groups/<shard>/<generation>`, RecordBatch v2, flush every batch) and an
//! OffsetCommit is answered only once its batch is durable. At start every shard reads
//! all group logs (its own last) and keeps the groups it owns, so a change in the shard
//! count keeps every group's offsets. A group's membership is written there too when
//! it becomes stable (or empty), so a restarted broker restores stable groups and their
//! members heartbeat on in the same generation. A log grown past its compaction threshold is rewritten as a snapshot of the
//! live offsets in a new generation directory (see [`Coordinator::open`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalSender};
use kafka_protocol::messages::{self as km, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use ringmq_storage::batch::{self, Record};
use ringmq_storage::{FlushPolicy, LogConfig, PartitionLog, SegmentCache};

use crate::timers::Timers;

/// Directory of the group logs under the data directory.
pub const GROUPS_DIR: &str = "__ringmq_groups";

/// Kafka error codes of the group protocol.
pub mod errors {
    /// Success.
    pub const NONE: i16 = 0;
    /// The coordinator could not write.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// Generation mismatch.
    pub const ILLEGAL_GENERATION: i16 = 22;
    /// No protocol shared by the members.
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    /// Empty group id.
    pub const INVALID_GROUP_ID: i16 = 24;
    /// Member not in the group.
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    /// Session timeout out of bounds.
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    /// The group is rebalancing: rejoin.
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    /// Unknown topic or partition.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// The group has members.
    pub const NON_EMPTY_GROUP: i16 = 68;
    /// No such group.
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    /// First join: retry with the member id given.
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    /// Static member fenced by a newer instance.
    pub const FENCED_INSTANCE_ID: i16 = 82;
    /// The group consumes the topic whose offsets were to be deleted.
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}

/// The shard that coordinates `group`: FNV-1a of the id, modulo the shard count.
pub fn group_shard(group: &str, shard_count: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shard_count.max(1)
}

/// The group a group request is about (for routing), or `None` for requests every
/// shard answers (ListGroups) or that are not group requests.
pub fn group_of(request: &RequestKind) -> Option<String> {
    let g = match request {
        RequestKind::JoinGroup(r) => &r.group_id,
        RequestKind::SyncGroup(r) => &r.group_id,
        RequestKind::Heartbeat(r) => &r.group_id,
        RequestKind::LeaveGroup(r) => &r.group_id,
        RequestKind::OffsetCommit(r) => &r.group_id,
        RequestKind::OffsetFetch(r) => &r.group_id,
        RequestKind::OffsetDelete(r) => &r.group_id,
        _ => return None,
    };
    Some(g.0.to_string())
}

/// A group request, as forwarded between shards.
#[derive(Debug)]
pub struct GroupRequest {
    /// The decoded Kafka request.
    pub request: RequestKind,
    /// Its version.
    pub version: i16,
    /// The client id of its header.
    pub client_id: String,
    /// Where it came from (`/IP`), or empty when unknown.
    pub client_host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// What a pending join is answered with.
#[derive(Debug, Clone)]
struct JoinDone {
    error: i16,
    generation: i32,
    protocol: String,
    leader: String,
    /// The leader's view: (member, instance id, metadata); empty for followers.
    members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    deadline: Instant,
    join: Option<LocalSender<JoinDone>>,
    sync: Option<LocalSender<(i16, Bytes)>>,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending_ids: HashMap<String, Instant>,
    rebalance_deadline: Instant,
    /// An empty group's first rebalance does not complete before this.
    initial_until: Instant,
}

impl Group {
    /// The leader's view of the members: (member id, instance id, metadata in the
    /// group's protocol).
    fn member_view(&self) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|p| p.0 == self.protocol)
                    .map(|p| p.1.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect()
    }

    /// The member registered with static instance id `iid`.
    fn static_member(&self, iid: &str) -> Option<&String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(iid))
            .map(|(k, _)| k)
    }

    /// Kafka's check of a request that names a static instance id: the member must be
    /// the one registered with that id (KIP-345). `None` when the request may go on.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> Option<i16> {
        let iid = instance_id?;
        match self.static_member(iid) {
            Some(k) if k == member_id => None,
            Some(_) => Some(errors::FENCED_INSTANCE_ID),
            None => Some(errors::UNKNOWN_MEMBER_ID),
        }
    }

    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            pending_ids: HashMap::new(),
            rebalance_deadline: now,
            initial_until: now,
        }
    }
}

/// Committed offsets of one group: (topic, partition) → (offset, leader epoch, metadata).
type Offsets = BTreeMap<(String, i32), (i64, i32, Option<String>)>;

/// The group coordinator of one shard.
pub struct Coordinator {
    shard_id: u32,
    shard_count: u32,
    timers: Rc<Timers>,
    groups: RefCell<HashMap<String, Group>>,
    offsets: RefCell<HashMap<String, Offsets>>,
    /// The group log being written: `<root>/<shard>/<generation>`.
    log: RefCell<Rc<PartitionLog>>,
    log_generation: Cell<u64>,
    own_root: PathBuf,
    config: LogConfig,
    cache: Rc<SegmentCache>,
    /// Held across an append and its in-memory update, and by compaction.
    writing: glommio::sync::Semaphore,
    compacting: Cell<bool>,
    compact_bytes: u64,
    snapshot_bytes: Cell<u64>,
    initial_delay: Duration,
    partition_count: RefCell<Option<PartitionCounts>>,
    /// Groups whose membership changed since it was last written to the group log.
    dirty: RefCell<std::collections::BTreeSet<String>>,
    /// Group membership read from the group logs at start.
    restored: RefCell<HashMap<String, Option<GroupRecord>>>,
}

/// A stable group's membership as the group log keeps it, so a restarted broker knows
/// its members and generation (they go on heartbeating without a rebalance).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct GroupRecord {
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: Vec<MemberRecord>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MemberRecord {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    #[serde(default)]
    client_host: String,
    session_ms: u64,
    rebalance_ms: u64,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
}

fn group_key(group: &str) -> Vec<u8> {
    let mut k = vec![b'g'];
    k.extend_from_slice(group.as_bytes());
    k
}

impl GroupRecord {
    fn of(g: &Group) -> Option<Self> {
        (g.state == State::Stable && !g.members.is_empty()).then(|| Self {
            generation: g.generation,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            leader: g.leader.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberRecord {
                    id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_ms: m.session_timeout.as_millis() as u64,
                    rebalance_ms: m.rebalance_timeout.as_millis() as u64,
                    protocols: m
                        .protocols
                        .iter()
                        .map(|(n, b)| (n.clone(), b.to_vec()))
                        .collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        })
    }

    fn into_group(self) -> Group {
        let now = Instant::now();
        let mut g = Group::new();
        g.state = State::Stable;
        g.generation = self.generation;
        g.protocol_type = self.protocol_type;
        g.protocol = self.protocol;
        g.leader = self.leader;
        for m in self.members {
            let session = Duration::from_millis(m.session_ms);
            g.members.insert(
                m.id,
                Member {
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: session,
                    rebalance_timeout: Duration::from_millis(m.rebalance_ms),
                    protocols: m
                        .protocols
                        .into_iter()
                        .map(|(n, b)| (n, Bytes::from(b)))
                        .collect(),
                    assignment: Bytes::from(m.assignment),
                    deadline: now + session,
                    join: None,
                    sync: None,
                },
            );
        }
        g
    }
}

/// A topic's partition count, if the topic exists.
pub type PartitionCounts = Box<dyn Fn(&str) -> Option<u32>>;

/// The protocol type of groups of native consumers, whose partitions the broker
/// assigns.
pub const NATIVE_PROTOCOL_TYPE: &str = "ringmq";

/// The assignors the broker runs for native consumers.
pub const ASSIGNORS: [&str; 3] = ["range", "roundrobin", "sticky"];

/// The topics a member subscribes to, from its metadata in the group's protocol:
/// Kafka's ConsumerProtocolSubscription (a version, then the message) for protocol type
/// `consumer`, a list of names for native members. `None` for another protocol type or
/// metadata that does not decode.
fn subscribed_topics(protocol_type: &str, meta: &Bytes) -> Option<Vec<String>> {
    use kafka_protocol::protocol::Decodable;
    match protocol_type {
        NATIVE_PROTOCOL_TYPE => Some(decode_topics(meta)),
        "consumer" => {
            let mut b = meta.clone();
            if b.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([b[0], b[1]]);
            bytes::Buf::advance(&mut b, 2);
            // Versions newer than the crate knows keep the fields it reads first.
            let version = version.clamp(0, 3);
            let sub = std::panic::catch_unwind(|| {
                km::ConsumerProtocolSubscription::decode(&mut b.clone(), version).ok()
            })
            .ok()
            .flatten()?;
            Some(sub.topics.iter().map(|t| t.to_string()).collect())
        }
        _ => None,
    }
}

/// JoinGroup's member list from a leader's view (instance ids from v5).
fn join_members(
    view: Vec<(String, Option<String>, Bytes)>,
    version: i16,
) -> Vec<km::join_group_response::JoinGroupResponseMember> {
    view.into_iter()
        .map(|(id, iid, meta)| {
            let mut m = km::join_group_response::JoinGroupResponseMember::default();
            m.member_id = s(&id);
            if version >= 5 {
                m.group_instance_id = iid.map(|i| s(&i));
            }
            m.metadata = meta;
            m
        })
        .collect()
}

fn decode_topics(meta: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(meta)
        .split('\n')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn encode_assignment(parts: &[(String, u32)]) -> Bytes {
    let mut out = String::new();
    for (t, p) in parts {
        out.push_str(&format!("{t}\t{p}\n"));
    }
    Bytes::from(out)
}

fn decode_assignment(b: &[u8]) -> Vec<(String, u32)> {
    String::from_utf8_lossy(b)
        .lines()
        .filter_map(|l| {
            let (t, p) = l.split_once('\t')?;
            Some((t.to_string(), p.parse().ok()?))
        })
        .collect()
}

/// Server-side assignment. `members` are (member id, subscribed topics) in id order.
///
/// - `range`: per topic, each subscribed member takes a contiguous range (the first
///   ones one more when the count does not divide).
/// - `roundrobin`: every (topic, partition) in order, dealt to the subscribed members
///   in turn.
/// - `sticky`: members keep what they had (still subscribed, still existing) up to a
///   balanced share; the rest goes to the least loaded.
pub fn assign(
    assignor: &str,
    members: &[(String, Vec<String>)],
    partitions: &dyn Fn(&str) -> u32,
    previous: &HashMap<String, Vec<(String, u32)>>,
) -> HashMap<String, Vec<(String, u32)>> {
    let mut out: HashMap<String, Vec<(String, u32)>> = members
        .iter()
        .map(|(m, _)| (m.clone(), Vec::new()))
        .collect();
    let mut topics: Vec<&String> = members.iter().flat_map(|(_, t)| t).collect();
    topics.sort();
    topics.dedup();
    let subscribed = |m: &(String, Vec<String>), t: &str| m.1.iter().any(|x| x == t);
    match assignor {
        "roundrobin" => {
            let mut next = 0usize;
            for t in &topics {
                for p in 0..partitions(t) {
                    for _ in 0..members.len() {
                        let m = &members[next % members.len()];
                        next += 1;
                        if subscribed(m, t) {
                            out.get_mut(&m.0).expect("member").push(((*t).clone(), p));
                            break;
                        }
                    }
                }
            }
        }
        "sticky" => {
            let all: Vec<(String, u32)> = topics
                .iter()
                .flat_map(|t| (0..partitions(t)).map(move |p| ((*t).clone(), p)))
                .collect();
            let k = members.len().max(1);
            let (base, extra) = (all.len() / k, all.len() % k);
            let mut owned: HashMap<(String, u32), String> = HashMap::new();
            // Keep previous partitions, most loaded members first get the larger shares.
            let mut order: Vec<&(String, Vec<String>)> = members.iter().collect();
            order.sort_by_key(|m| std::cmp::Reverse(previous.get(&m.0).map_or(0, Vec::len)));
            for (i, m) in order.iter().enumerate() {
                let cap = base + usize::from(i < extra);
                let mine = out.get_mut(&m.0).expect("member");
                for tp in previous.get(&m.0).into_iter().flatten() {
                    if mine.len() < cap
                        && subscribed(m, &tp.0)
                        && tp.1 < partitions(&tp.0)
                        && !owned.contains_key(tp)
                    {
                        owned.insert(tp.clone(), m.0.clone());
                        mine.push(tp.clone());
                    }
                }
            }
            for tp in all {
                if owned.contains_key(&tp) {
                    continue;
                }
                let target = members
                    .iter()
                    .filter(|m| subscribed(m, &tp.0))
                    .min_by_key(|m| (out[&m.0].len(), m.0.clone()));
                if let Some(m) = target {
                    out.get_mut(&m.0).expect("member").push(tp);
                }
            }
        }
        _ => {
            // range
            for t in &topics {
                let subs: Vec<&(String, Vec<String>)> =
                    members.iter().filter(|m| subscribed(m, t)).collect();
                let n = partitions(t) as usize;
                let k = subs.len().max(1);
                let (per, extra) = (n / k, n % k);
                let mut p = 0u32;
                for (i, m) in subs.iter().enumerate() {
                    let take = per + usize::from(i < extra);
                    for _ in 0..take {
                        out.get_mut(&m.0).expect("member").push(((*t).clone(), p));
                        p += 1;
                    }
                }
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// A native-protocol group request, answered by the group's shard through the same
/// coordinator as Kafka's (the native join is a Kafka join of protocol type
/// [`NATIVE_PROTOCOL_TYPE`], whose metadata lists the topics).
pub fn native_to_kafka(req: &ringmq_net::codec::Request) -> Option<(RequestKind, i16)> {
    use ringmq_net::codec::Request as R;
    Some(match req {
        R::JoinGroup {
            group,
            member_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            topics,
            assignor,
        } => {
            let mut q = km::JoinGroupRequest::default();
            q.group_id = km::GroupId(s(group));
            q.member_id = s(member_id);
            q.session_timeout_ms = *session_timeout_ms as i32;
            q.rebalance_timeout_ms = *rebalance_timeout_ms as i32;
            q.protocol_type = s(NATIVE_PROTOCOL_TYPE);
            let mut p = km::join_group_request::JoinGroupRequestProtocol::default();
            p.name = s(assignor);
            p.metadata = Bytes::from(topics.join("\n"));
            q.protocols = vec![p];
            // Version 3: ids are given at the first join (no MEMBER_ID_REQUIRED round).
            (RequestKind::JoinGroup(q), 3)
        }
        R::GroupHeartbeat {
            group,
            member_id,
            generation,
        } => {
            let mut q = km::HeartbeatRequest::default();
            q.group_id = km::GroupId(s(group));
            q.member_id = s(member_id);
            q.generation_id = *generation;
            (RequestKind::Heartbeat(q), 0)
        }
        R::LeaveGroup { group, member_id } => {
            let mut q = km::LeaveGroupRequest::default();
            q.group_id = km::GroupId(s(group));
            q.member_id = s(member_id);
            (RequestKind::LeaveGroup(q), 0)
        }
        R::CommitOffsets {
            group,
            member_id,
            generation,
            offsets,
        } => {
            let mut q = km::OffsetCommitRequest::default();
            q.group_id = km::GroupId(s(group));
            q.member_id = s(member_id);
            q.generation_id_or_member_epoch = *generation;
            let mut by_topic: BTreeMap<&String, Vec<(u32, i64)>> = BTreeMap::new();
            for (t, p, o) in offsets {
                by_topic.entry(t).or_default().push((*p, *o));
            }
            for (t, ps) in by_topic {
                let mut tq = km::offset_commit_request::OffsetCommitRequestTopic::default();
                tq.name = km::TopicName(s(t));
                for (p, o) in ps {
                    let mut pq = km::offset_commit_request::OffsetCommitRequestPartition::default();
                    pq.partition_index = p as i32;
                    pq.committed_offset = o;
                    tq.partitions.push(pq);
                }
                q.topics.push(tq);
            }
            (RequestKind::OffsetCommit(q), 2)
        }
        R::FetchOffsets { group, partitions } => {
            let mut q = km::OffsetFetchRequest::default();
            q.group_id = km::GroupId(s(group));
            let mut by_topic: BTreeMap<&String, Vec<i32>> = BTreeMap::new();
            for (t, p) in partitions {
                by_topic.entry(t).or_default().push(*p as i32);
            }
            q.topics = Some(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        let mut tq = km::offset_fetch_request::OffsetFetchRequestTopic::default();
                        tq.name = km::TopicName(s(t));
                        tq.partition_indexes = ps;
                        tq
                    })
                    .collect(),
            );
            (RequestKind::OffsetFetch(q), 1)
        }
        _ => return None,
    })
}

fn native_error(code: i16, what: &str) -> ringmq_net::codec::WireError {
    use ringmq_net::codec::{ErrorCode as E, WireError};
    let c = match code {
        errors::NONE => return WireError::none(),
        errors::REBALANCE_IN_PROGRESS => E::RebalanceInProgress,
        errors::UNKNOWN_MEMBER_ID | errors::FENCED_INSTANCE_ID => E::UnknownMember,
        errors::ILLEGAL_GENERATION => E::IllegalGeneration,
        errors::COORDINATOR_NOT_AVAILABLE => E::StorageError,
        errors::UNKNOWN_TOPIC_OR_PARTITION => E::UnknownTopic,
        _ => E::InvalidRequest,
    };
    WireError::new(c, format!("{what}: Kafka error {code}"))
}

/// The native answer to a group request answered by the coordinator.
pub fn kafka_to_native(
    req: &ringmq_net::codec::Request,
    resp: ResponseKind,
) -> ringmq_net::codec::Response {
    use ringmq_net::codec::{Response as N, WireError};
    match resp {
        ResponseKind::JoinGroup(r) => N::Joined {
            error: native_error(r.error_code, "join"),
            generation: r.generation_id,
            member_id: r.member_id.to_string(),
            assignment: r
                .members
                .first()
                .map(|m| decode_assignment(&m.metadata))
                .unwrap_or_default(),
        },
        ResponseKind::Heartbeat(r) => N::Done(native_error(r.error_code, "heartbeat")),
        ResponseKind::LeaveGroup(r) => N::Done(native_error(r.error_code, "leave")),
        ResponseKind::OffsetCommit(r) => {
            let code = r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .find(|c| *c != errors::NONE)
                .unwrap_or(errors::NONE);
            N::Done(native_error(code, "commit"))
        }
        ResponseKind::OffsetFetch(r) => {
            let mut out = Vec::new();
            for t in r.topics {
                for p in t.partitions {
                    out.push((
                        t.name.0.to_string(),
                        p.partition_index as u32,
                        native_error(p.error_code, "offset fetch"),
                        p.committed_offset,
                        -1,
                    ));
                }
            }
            let _ = req;
            N::Offsets(out)
        }
        other => N::Error(WireError::new(
            ringmq_net::codec::ErrorCode::InvalidRequest,
            format!("unexpected group answer {other:?}"),
        )),
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("shard_id", &self.shard_id)
            .finish()
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + group.len() + topic.len());
    k.push(b'o');
    k.extend_from_slice(&(group.len() as u16).to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn parse_offset_key(k: &[u8]) -> Option<(String, String, i32)> {
    let take = |b: &[u8], at: usize| -> Option<(String, usize)> {
        let n = u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        let v = std::str::from_utf8(b.get(at + 2..at + 2 + n)?).ok()?;
        Some((v.to_string(), at + 2 + n))
    };
    if k.first() != Some(&b'o') {
        return None;
    }
    let (group, at) = take(k, 1)?;
    let (topic, at) = take(k, at)?;
    let p = i32::from_be_bytes(k.get(at..at + 4)?.try_into().ok()?);
    Some((group, topic, p))
}

fn offset_value(offset: i64, epoch: i32, metadata: Option<&str>) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&epoch.to_be_bytes());
    if let Some(m) = metadata {
        v.extend_from_slice(m.as_bytes());
    }
    v
}

fn parse_offset_value(v: &[u8]) -> Option<(i64, i32, Option<String>)> {
    let offset = i64::from_be_bytes(v.get(0..8)?.try_into().ok()?);
    let epoch = i32::from_be_bytes(v.get(8..12)?.try_into().ok()?);
    let meta = std::str::from_utf8(&v[12..]).ok()?.to_string();
    Some((offset, epoch, (!meta.is_empty()).then_some(meta)))
}

impl Coordinator {
    /// Opens this shard's group log and rebuilds the committed offsets of the groups it
    /// owns from every shard's group log. Once the log outgrows `compact_bytes` (and
    /// four times its last snapshot) it is compacted.
    pub async fn open(
        data_dir: &Path,
        shard_id: u32,
        shard_count: u32,
        timers: Rc<Timers>,
        cache: Rc<SegmentCache>,
        initial_delay: Duration,
        compact_bytes: u64,
    ) -> Result<Rc<Self>, String> {
        let root = data_dir.join(GROUPS_DIR);
        let config = LogConfig {
            flush: FlushPolicy::EveryBatch,
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: 64 << 20,
            ..LogConfig::default()
        };
        let own_root = root.join(shard_id.to_string());
        let generations = |dir: &Path| -> Vec<(u64, PathBuf)> {
            let mut g: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| {
                        let p = e.ok()?.path();
                        let n = p.file_name()?.to_str()?.parse().ok()?;
                        p.is_dir().then_some((n, p))
                    })
                    .collect()
                })
                .unwrap_or_default();
            g.sort();
            g
        };
        let own_gens = generations(&own_root);
        let current = own_gens.last().map(|g| g.0).unwrap_or(0);
        let log_dir = own_root.join(format!("{current:020}"));
        let log = PartitionLog::open(&log_dir, config.clone(), cache.clone())
            .await
            .map_err(|e| format!("opening group log {}: {e}", log_dir.display()))?;
        let me = Rc::new(Self {
            shard_id,
            shard_count,
            timers,
            groups: RefCell::new(HashMap::new()),
            offsets: RefCell::new(HashMap::new()),
            log: RefCell::new(log),
            log_generation: Cell::new(current),
            own_root: own_root.clone(),
            config,
            cache,
            writing: glommio::sync::Semaphore::new(1),
            compacting: Cell::new(false),
            compact_bytes: compact_bytes.max(64 << 10),
            snapshot_bytes: Cell::new(0),
            initial_delay,
            partition_count: RefCell::new(None),
            dirty: RefCell::new(Default::default()),
            restored: RefCell::new(HashMap::new()),
        });
        // Other shards' logs first (groups that moved here), then ours: older
        // generations (left by a compaction cut short) from their files, the current
        // one through the log.
        let mut others: Vec<PathBuf> = std::fs::read_dir(&root)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        others.retain(|p| p != &own_root && p.is_dir());
        others.sort();
        for dir in others {
            for (_, g) in generations(&dir) {
                me.replay_dir(&g)?;
            }
        }
        for (n, g) in &own_gens {
            if *n != current {
                me.replay_dir(g)?;
            }
        }
        let own_log = me.log.borrow().clone();
        me.replay(&own_log).await?;
        let groups = me.offsets.borrow().len();
        if groups > 0 {
            tracing::info!(shard = shard_id, groups, "committed offsets rebuilt");
        }
        let restored: Vec<(String, GroupRecord)> = me
            .restored
            .borrow_mut()
            .drain()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        if !restored.is_empty() {
            tracing::info!(
                shard = shard_id,
                groups = restored.len(),
                "group memberships restored"
            );
        }
        for (name, rec) in restored {
            me.groups.borrow_mut().insert(name, rec.into_group());
        }
        if own_gens.len() > 1 {
            me.clone().compact().await;
        }
        let sweeper = me.clone();
        glommio::spawn_local(async move { sweeper.sweep().await }).detach();
        Ok(me)
    }

    /// Reads another shard's group log straight from its segment files, read-only (its
    /// own shard may have it open), up to the first batch that is not whole and valid.
    /// Only records of groups this shard now owns are kept, and those were written by
    /// an earlier run with another shard count, so a concurrent append cannot matter.
    fn replay_dir(&self, dir: &Path) -> Result<(), String> {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        for seg in segments {
            let bytes =
                std::fs::read(&seg).map_err(|e| format!("reading {}: {e}", seg.display()))?;
            let mut pos = 0;
            while let Some((_, len)) = batch::peek_frame(&bytes[pos..]) {
                if pos + len > bytes.len()
                    || batch::validate(&bytes[pos..pos + len], usize::MAX).is_err()
                {
                    break;
                }
                self.apply_batch(&bytes[pos..pos + len]);
                pos += len;
            }
        }
        Ok(())
    }

    /// Applies the offset records of one group-log batch that belong to this shard.
    fn apply_batch(&self, b: &[u8]) {
        let Ok(records) = batch::records(b) else {
            return;
        };
        let mut all = self.offsets.borrow_mut();
        for r in records {
            if let Some(name) = r.key.and_then(|k| k.strip_prefix(b"g"))
                && let Ok(name) = std::str::from_utf8(name)
            {
                if group_shard(name, self.shard_count) == self.shard_id {
                    let rec = r.value.and_then(|v| serde_json::from_slice(v).ok());
                    self.restored.borrow_mut().insert(name.to_string(), rec);
                }
                continue;
            }
            let Some((group, topic, p)) = r.key.and_then(parse_offset_key) else {
                continue;
            };
            if group_shard(&group, self.shard_count) != self.shard_id {
                continue;
            }
            match r.value.and_then(parse_offset_value) {
                Some(v) => {
                    all.entry(group).or_default().insert((topic, p), v);
                }
                None => {
                    if let Some(g) = all.get_mut(&group) {
                        g.remove(&(topic, p));
                        if g.is_empty() {
                            all.remove(&group);
                        }
                    }
                }
            }
        }
    }

    async fn replay(&self, log: &PartitionLog) -> Result<(), String> {
        let end = log.end_offset();
        let mut offset = log.start_offset();
        while offset < end {
            let r = log
                .read(offset, 4 << 20, i64::MAX)
                .await
                .map_err(|e| e.to_string())?;
            let bytes = r.to_bytes().await.map_err(|e| e.to_string())?;
            let before = offset;
            let mut pos = 0;
            while let Some((base, len)) = batch::peek_frame(&bytes[pos..]) {
                if pos + len > bytes.len() {
                    break;
                }
                let b = &bytes[pos..pos + len];
                let info = batch::parse_header(b).map_err(|e| e.to_string())?;
                self.apply_batch(b);
                offset = base + i64::from(info.last_offset_delta) + 1;
                pos += len;
            }
            if offset <= before {
                break;
            }
        }
        Ok(())
    }

    /// Answers a group request this shard coordinates.
    pub async fn handle(self: &Rc<Self>, r: GroupRequest) -> ResponseKind {
        let v = r.version;
        match r.request {
            RequestKind::JoinGroup(q) => {
                ResponseKind::JoinGroup(self.join(q, v, r.client_id, r.client_host).await)
            }
            RequestKind::SyncGroup(q) => ResponseKind::SyncGroup(self.sync(q, v).await),
            RequestKind::Heartbeat(q) => ResponseKind::Heartbeat(self.heartbeat(q)),
            RequestKind::LeaveGroup(q) => ResponseKind::LeaveGroup(self.leave(q, v)),
            RequestKind::OffsetCommit(q) => ResponseKind::OffsetCommit(self.commit(q).await),
            RequestKind::OffsetFetch(q) => ResponseKind::OffsetFetch(self.fetch_offsets(q, v)),
            RequestKind::OffsetDelete(q) => {
                ResponseKind::OffsetDelete(self.delete_offsets(q).await)
            }
            RequestKind::ListGroups(_) => ResponseKind::ListGroups(self.list(v)),
            RequestKind::DescribeGroups(q) => ResponseKind::DescribeGroups(self.describe(q, v)),
            RequestKind::DeleteGroups(q) => ResponseKind::DeleteGroups(self.delete_groups(q).await),
            other => {
                tracing::error!("not a group request: {other:?}");
                ResponseKind::Heartbeat(km::HeartbeatResponse::default())
            }
        }
    }

    /// Tells a replaced static member's waiting join and sync that it is fenced.
    fn fence_waiters(m: &mut Member) {
        if let Some(join) = m.join.take() {
            let _ = join.try_send(JoinDone {
                error: errors::FENCED_INSTANCE_ID,
                generation: -1,
                protocol: String::new(),
                leader: String::new(),
                members: Vec::new(),
            });
        }
        if let Some(sync) = m.sync.take() {
            let _ = sync.try_send((errors::FENCED_INSTANCE_ID, Bytes::new()));
        }
    }

    /// A new member id: the client id and a random UUID, as Kafka makes them, so one
    /// client cannot guess another's id and act as that member.
    fn new_member_id(&self, client_id: &str) -> String {
        format!(
            "{}-{}",
            if client_id.is_empty() {
                "member"
            } else {
                client_id
            },
            uuid::Uuid::new_v4()
        )
    }

    async fn join(
        self: &Rc<Self>,
        q: km::JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> km::JoinGroupResponse {
        let group_id = q.group_id.0.to_string();
        let mut resp = km::JoinGroupResponse::default();
        resp.protocol_name = Some(s(""));
        let fail = |mut resp: km::JoinGroupResponse, code: i16| {
            resp.error_code = code;
            resp.generation_id = -1;
            resp
        };
        if group_id.is_empty() {
            return fail(resp, errors::INVALID_GROUP_ID);
        }
        if !(1_000..=1_800_000).contains(&q.session_timeout_ms) {
            return fail(resp, errors::INVALID_SESSION_TIMEOUT);
        }
        let rebalance_timeout = if version >= 1 {
            q.rebalance_timeout_ms
        } else {
            q.session_timeout_ms
        };
        let instance_id = q.group_instance_id.as_ref().map(|i| i.to_string());
        let (tx, rx) = local_channel::new_bounded(1);
        let member_id;
        {
            let mut groups = self.groups.borrow_mut();
            let g = groups.entry(group_id.clone()).or_insert_with(Group::new);
            if !g.members.is_empty()
                && !g.protocol_type.is_empty()
                && g.protocol_type != q.protocol_type.as_str()
            {
                return fail(resp, errors::INCONSISTENT_GROUP_PROTOCOL);
            }
            if q.protocol_type.as_str() == NATIVE_PROTOCOL_TYPE
                && q.protocols
                    .iter()
                    .any(|p| !ASSIGNORS.contains(&p.name.as_str()))
            {
                return fail(resp, errors::INCONSISTENT_GROUP_PROTOCOL);
            }
            let mut id = q.member_id.to_string();
            if id.is_empty() {
                // A static member rejoining takes its old member's place.
                let old = instance_id
                    .as_ref()
                    .and_then(|iid| g.static_member(iid).cloned());
                let protocols: Vec<(String, Bytes)> = q
                    .protocols
                    .iter()
                    .map(|p| (p.name.to_string(), p.metadata.clone()))
                    .collect();
                if let Some(old_id) = &old
                    && g.state == State::Stable
                    && g.members[old_id].protocols == protocols
                {
                    // KIP-345: a static member that restarts with what it had gets its
                    // place back, under a new member id, without a rebalance of the
                    // others; its SyncGroup returns its assignment.
                    let new_id = self.new_member_id(&client_id);
                    let mut m = g.members.remove(old_id).expect("found above");
                    Self::fence_waiters(&mut m);
                    let now = Instant::now();
                    let session = Duration::from_millis(q.session_timeout_ms as u64);
                    m.client_id = client_id.clone();
                    m.client_host = client_host.clone();
                    m.session_timeout = session;
                    m.rebalance_timeout = Duration::from_millis(rebalance_timeout.max(0) as u64);
                    m.deadline = now + session;
                    g.members.insert(new_id.clone(), m);
                    if g.leader == *old_id {
                        g.leader = new_id.clone();
                    }
                    self.dirty.borrow_mut().insert(group_id.clone());
                    tracing::info!(shard = self.shard_id, group = %group_id, old = %old_id, new = %new_id, "static member rejoined without a rebalance");
                    let leader = g.leader == new_id;
                    resp.error_code = errors::NONE;
                    resp.generation_id = g.generation;
                    resp.member_id = s(&new_id);
                    resp.leader = s(&g.leader);
                    resp.protocol_name = Some(s(&g.protocol));
                    if version >= 7 {
                        resp.protocol_type = Some(s(&g.protocol_type));
                    }
                    // The leader gets the members, as after a rebalance (from v9 it is
                    // told to skip the assignment: the group keeps the one it has).
                    if leader {
                        resp.members = join_members(g.member_view(), version);
                        if version >= 9 {
                            resp.skip_assignment = true;
                        }
                    }
                    return resp;
                }
                match old {
                    Some(old_id) => {
                        let m = g.members.remove(&old_id).expect("found above");
                        if let Some(old_join) = m.join {
                            let _ = old_join.try_send(JoinDone {
                                error: errors::FENCED_INSTANCE_ID,
                                generation: -1,
                                protocol: String::new(),
                                leader: String::new(),
                                members: Vec::new(),
                            });
                        }
                        if g.leader == old_id {
                            g.leader.clear();
                        }
                        id = self.new_member_id(&client_id);
                    }
                    None => {
                        id = self.new_member_id(&client_id);
                        if version >= 4 && instance_id.is_none() {
                            g.pending_ids.insert(id.clone(), Instant::now());
                            resp.member_id = s(&id);
                            return fail(resp, errors::MEMBER_ID_REQUIRED);
                        }
                    }
                }
            } else if let Some(code) = g.fenced(&id, instance_id.as_deref()) {
                resp.member_id = s(&id);
                return fail(resp, code);
            } else if !g.members.contains_key(&id) && g.pending_ids.remove(&id).is_none() {
                resp.member_id = s(&id);
                return fail(resp, errors::UNKNOWN_MEMBER_ID);
            }
            member_id = id.clone();
            let now = Instant::now();
            let session = Duration::from_millis(q.session_timeout_ms as u64);
            let member = g.members.entry(id).or_insert_with(|| Member {
                instance_id: instance_id.clone(),
                client_id: client_id.clone(),
                client_host: client_host.clone(),
                session_timeout: session,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                deadline: now + session,
                join: None,
                sync: None,
            });
            member.session_timeout = session;
            member.rebalance_timeout = Duration::from_millis(rebalance_timeout.max(0) as u64);
            member.protocols = q
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect();
            member.deadline = now + session;
            if let Some(old) = member.join.replace(tx) {
                let _ = old.try_send(JoinDone {
                    error: errors::UNKNOWN_MEMBER_ID,
                    generation: -1,
                    protocol: String::new(),
                    leader: String::new(),
                    members: Vec::new(),
                });
            }
            g.protocol_type = q.protocol_type.to_string();
            if g.state != State::PreparingRebalance {
                self.prepare_rebalance(g);
            }
            if Self::all_joined(g) && Instant::now() >= g.initial_until {
                self.complete_join(&group_id, g);
            }
        }
        let Some(done) = rx.recv().await else {
            return fail(resp, errors::UNKNOWN_MEMBER_ID);
        };
        resp.error_code = done.error;
        resp.generation_id = done.generation;
        resp.member_id = s(&member_id);
        resp.leader = s(&done.leader);
        resp.protocol_name = Some(s(&done.protocol));
        if version >= 7 {
            resp.protocol_type = Some(s(&q.protocol_type));
        }
        resp.members = join_members(done.members, version);
        resp
    }

    fn all_joined(g: &Group) -> bool {
        g.members.values().all(|m| m.join.is_some())
    }

    /// Moves a group into PreparingRebalance: pending syncs are told to rejoin.
    fn prepare_rebalance(&self, g: &mut Group) {
        let was_empty = g.state == State::Empty;
        g.state = State::PreparingRebalance;
        let timeout = g
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        let now = Instant::now();
        g.rebalance_deadline = now + timeout;
        g.initial_until = if was_empty {
            now + self.initial_delay.min(timeout)
        } else {
            now
        };
        for m in g.members.values_mut() {
            if let Some(sync) = m.sync.take() {
                let _ = sync.try_send((errors::REBALANCE_IN_PROGRESS, Bytes::new()));
            }
        }
    }

    /// Ends the join phase: drops members that did not rejoin, starts a generation and
    /// answers the pending joins.
    fn complete_join(&self, group_id: &str, g: &mut Group) {
        g.members.retain(|_, m| m.join.is_some());
        g.generation += 1;
        if g.members.is_empty() {
            g.state = State::Empty;
            g.leader.clear();
            g.protocol.clear();
            return;
        }
        if !g.members.contains_key(&g.leader) {
            g.leader = g.members.keys().next().expect("not empty").clone();
        }
        let leader_protocols: Vec<String> = g.members[&g.leader]
            .protocols
            .iter()
            .map(|p| p.0.clone())
            .collect();
        let chosen = leader_protocols.into_iter().find(|name| {
            g.members
                .values()
                .all(|m| m.protocols.iter().any(|p| &p.0 == name))
        });
        let now = Instant::now();
        let Some(protocol) = chosen else {
            for (_, m) in std::mem::take(&mut g.members) {
                if let Some(j) = m.join {
                    let _ = j.try_send(JoinDone {
                        error: errors::INCONSISTENT_GROUP_PROTOCOL,
                        generation: -1,
                        protocol: String::new(),
                        leader: String::new(),
                        members: Vec::new(),
                    });
                }
            }
            g.state = State::Empty;
            return;
        };
        g.protocol = protocol.clone();
        g.state = State::CompletingRebalance;
        let view = g.member_view();
        tracing::info!(shard = self.shard_id, group = %group_id, generation = g.generation, members = g.members.len(), protocol = %protocol, "group rebalanced");
        // Native consumers: the broker assigns, and the group is stable at once. Each
        // member's join answer carries its own assignment as its only "member".
        let native = g.protocol_type == NATIVE_PROTOCOL_TYPE;
        if native {
            let subscriptions: Vec<(String, Vec<String>)> = view
                .iter()
                .map(|(id, _, meta)| (id.clone(), decode_topics(meta)))
                .collect();
            let previous: HashMap<String, Vec<(String, u32)>> = g
                .members
                .iter()
                .map(|(id, m)| (id.clone(), decode_assignment(&m.assignment)))
                .collect();
            let lookup = self.partition_count.borrow();
            let counts = |t: &str| lookup.as_ref().and_then(|f| f(t)).unwrap_or(0);
            let assigned = assign(&protocol, &subscriptions, &counts, &previous);
            for (id, m) in g.members.iter_mut() {
                m.assignment =
                    encode_assignment(assigned.get(id).map(Vec::as_slice).unwrap_or(&[]));
            }
            g.state = State::Stable;
            self.dirty.borrow_mut().insert(group_id.to_string());
        }
        for (id, m) in g.members.iter_mut() {
            m.deadline = now + m.session_timeout;
            if !native {
                m.assignment = Bytes::new();
            }
            if let Some(j) = m.join.take() {
                let members = if native {
                    vec![(id.clone(), None, m.assignment.clone())]
                } else if *id == g.leader {
                    view.clone()
                } else {
                    Vec::new()
                };
                let _ = j.try_send(JoinDone {
                    error: errors::NONE,
                    generation: g.generation,
                    protocol: protocol.clone(),
                    leader: g.leader.clone(),
                    members,
                });
            }
        }
    }

    /// Sets how the coordinator learns a topic's partition count (for server-side
    /// assignment): the shard's topic table.
    pub fn set_partition_counts(&self, f: PartitionCounts) {
        *self.partition_count.borrow_mut() = Some(f);
    }

    async fn sync(&self, q: km::SyncGroupRequest, version: i16) -> km::SyncGroupResponse {
        let mut resp = km::SyncGroupResponse::default();
        let group_id = q.group_id.0.to_string();
        let member_id = q.member_id.to_string();
        let rx = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(&group_id) else {
                resp.error_code = errors::UNKNOWN_MEMBER_ID;
                return resp;
            };
            if version >= 5 {
                resp.protocol_type = Some(s(&g.protocol_type));
                resp.protocol_name = Some(s(&g.protocol));
            }
            if let Some(code) = g.fenced(&member_id, q.group_instance_id.as_deref()) {
                resp.error_code = code;
                return resp;
            }
            if !g.members.contains_key(&member_id) {
                resp.error_code = errors::UNKNOWN_MEMBER_ID;
                return resp;
            }
            if q.generation_id != g.generation {
                resp.error_code = errors::ILLEGAL_GENERATION;
                return resp;
            }
            match g.state {
                State::PreparingRebalance | State::Empty => {
                    resp.error_code = errors::REBALANCE_IN_PROGRESS;
                    return resp;
                }
                State::Stable => {
                    resp.assignment = g.members[&member_id].assignment.clone();
                    return resp;
                }
                State::CompletingRebalance => {}
            }
            let now = Instant::now();
            if member_id == g.leader {
                let given: HashMap<String, Bytes> = q
                    .assignments
                    .iter()
                    .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                    .collect();
                for (id, m) in g.members.iter_mut() {
                    m.assignment = given.get(id).cloned().unwrap_or_default();
                    m.deadline = now + m.session_timeout;
                    if let Some(w) = m.sync.take() {
                        let _ = w.try_send((errors::NONE, m.assignment.clone()));
                    }
                }
                g.state = State::Stable;
                self.dirty.borrow_mut().insert(group_id.clone());
                resp.assignment = g.members[&member_id].assignment.clone();
                return resp;
            }
            let (tx, rx) = local_channel::new_bounded(1);
            let m = g.members.get_mut(&member_id).expect("checked above");
            m.deadline = now + m.session_timeout;
            m.sync = Some(tx);
            rx
        };
        match rx.recv().await {
            Some((code, assignment)) => {
                resp.error_code = code;
                resp.assignment = assignment;
            }
            None => resp.error_code = errors::REBALANCE_IN_PROGRESS,
        }
        resp
    }

    fn heartbeat(&self, q: km::HeartbeatRequest) -> km::HeartbeatResponse {
        let mut resp = km::HeartbeatResponse::default();
        let mut groups = self.groups.borrow_mut();
        let member_id = q.member_id.to_string();
        let Some(g) = groups.get_mut(q.group_id.0.as_str()) else {
            resp.error_code = errors::UNKNOWN_MEMBER_ID;
            return resp;
        };
        if let Some(code) = g.fenced(&member_id, q.group_instance_id.as_deref()) {
            resp.error_code = code;
            return resp;
        }
        let (generation, state) = (g.generation, g.state);
        let Some(m) = g.members.get_mut(&member_id) else {
            resp.error_code = errors::UNKNOWN_MEMBER_ID;
            return resp;
        };
        m.deadline = Instant::now() + m.session_timeout;
        resp.error_code = if state == State::PreparingRebalance {
            errors::REBALANCE_IN_PROGRESS
        } else if q.generation_id != generation {
            errors::ILLEGAL_GENERATION
        } else {
            errors::NONE
        };
        resp
    }

    fn leave(&self, q: km::LeaveGroupRequest, version: i16) -> km::LeaveGroupResponse {
        let mut resp = km::LeaveGroupResponse::default();
        let group_id = q.group_id.0.to_string();
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            q.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|i| i.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(q.member_id.to_string(), None)]
        };
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(&group_id) else {
            resp.error_code = errors::UNKNOWN_MEMBER_ID;
            return resp;
        };
        let mut removed = false;
        for (id, iid) in leaving {
            let key = if id.is_empty() {
                iid.as_ref().and_then(|iid| g.static_member(iid).cloned())
            } else {
                Some(id.clone())
            };
            // A static member's id must match its instance id (KIP-345).
            let fenced = if id.is_empty() {
                None
            } else {
                g.fenced(&id, iid.as_deref())
            };
            let code = match fenced {
                Some(code) => code,
                None => match key.and_then(|k| g.members.remove(&k).map(|m| (k, m))) {
                    Some((k, m)) => {
                        tracing::info!(shard = self.shard_id, group = %group_id, member = %k, "member left");
                        if let Some(j) = m.join {
                            let _ = j.try_send(JoinDone {
                                error: errors::UNKNOWN_MEMBER_ID,
                                generation: -1,
                                protocol: String::new(),
                                leader: String::new(),
                                members: Vec::new(),
                            });
                        }
                        removed = true;
                        errors::NONE
                    }
                    None => errors::UNKNOWN_MEMBER_ID,
                },
            };
            if version >= 3 {
                let mut mr = km::leave_group_response::MemberResponse::default();
                mr.member_id = s(&id);
                mr.group_instance_id = iid.map(|i| s(&i));
                mr.error_code = code;
                resp.members.push(mr);
            } else {
                resp.error_code = code;
            }
        }
        if removed {
            self.after_member_loss(&group_id, g);
        }
        resp
    }

    /// A member left or timed out: the rest rebalance (or the group empties).
    fn after_member_loss(&self, group_id: &str, g: &mut Group) {
        if g.members.is_empty() {
            g.state = State::Empty;
            g.generation += 1;
            g.leader.clear();
            g.protocol.clear();
            self.dirty.borrow_mut().insert(group_id.to_string());
            return;
        }
        if g.state != State::PreparingRebalance {
            self.prepare_rebalance(g);
        }
        if Self::all_joined(g) {
            self.complete_join(group_id, g);
        }
    }

    /// Every 100 ms on the timing wheel: expire silent members, end rebalances whose
    /// deadline passed.
    async fn sweep(self: Rc<Self>) {
        loop {
            self.timers
                .sleep_until(Instant::now() + Duration::from_millis(100))
                .await;
            let records = self.sweep_once();
            if let Err(e) = self.write(records).await {
                tracing::warn!(shard = self.shard_id, error = %e, "writing group membership failed");
            }
        }
    }

    /// One pass of [`Coordinator::sweep`]; returns the membership records to write.
    fn sweep_once(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        {
            let now = Instant::now();
            let mut groups = self.groups.borrow_mut();
            for (id, g) in groups.iter_mut() {
                g.pending_ids
                    .retain(|_, t| now.duration_since(*t) < Duration::from_secs(300));
                let expired: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| m.join.is_none() && m.deadline <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &expired {
                    tracing::info!(shard = self.shard_id, group = %id, member = %k, "member session expired");
                    if let Some(m) = g.members.remove(k)
                        && let Some(w) = m.sync
                    {
                        let _ = w.try_send((errors::REBALANCE_IN_PROGRESS, Bytes::new()));
                    }
                }
                if !expired.is_empty() {
                    self.after_member_loss(id, g);
                }
                if g.state == State::PreparingRebalance
                    && now >= g.initial_until
                    && (Self::all_joined(g) || now >= g.rebalance_deadline)
                {
                    self.complete_join(id, g);
                }
            }
            // Membership changes go to the group log (a group that is not stable now
            // is written again when it is; an empty one is removed).
            let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = dirty
                .iter()
                .filter_map(|name| {
                    let rec = groups.get(name).map(GroupRecord::of);
                    match rec {
                        Some(None) if groups[name].state != State::Empty => None,
                        Some(Some(r)) => Some((group_key(name), serde_json::to_vec(&r).ok())),
                        _ => Some((group_key(name), None)),
                    }
                })
                .collect();
            // A group with no members and no member ids handed out holds nothing: it
            // goes (a join refused before it had a member left one behind; its
            // committed offsets are kept apart, and DescribeGroups shows it Empty while
            // it has some, Dead otherwise).
            groups.retain(|_, g| !g.members.is_empty() || !g.pending_ids.is_empty());
            records
        }
    }

    /// Appends offset records (value `None`: delete), waits until they are durable and
    /// applies them to the offsets in memory. A compaction waits for it, and it for a
    /// compaction, so a snapshot never misses an acknowledged commit.
    async fn write(
        self: &Rc<Self>,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        let b = Self::encode(records);
        let size = {
            let _permit = self.writing.acquire_permit(1).await;
            let log = self.log.borrow().clone();
            log.append(BytesMut::from(&b[..]))
                .await
                .map_err(|e| e.to_string())?;
            self.apply_batch(&b);
            log.size_bytes()
        };
        if size > self.compact_bytes.max(4 * self.snapshot_bytes.get()) && !self.compacting.get() {
            let me = self.clone();
            glommio::spawn_local(async move { me.compact().await }).detach();
        }
        Ok(())
    }

    fn encode(records: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Vec<u8> {
        let now = ringmq_storage::now_ms();
        let recs: Vec<Record> = records
            .into_iter()
            .map(|(k, v)| Record {
                key: Some(k),
                value: v,
                headers: Vec::new(),
                timestamp_ms: now,
            })
            .collect();
        batch::encode_batch(&recs)
    }

    /// Compaction: writes every live offset of this shard into a new generation of the
    /// group log, switches to it and removes the older ones. Cut short by a crash, both
    /// generations are replayed at the next start (older first), then compacted again.
    async fn compact(self: Rc<Self>) {
        if self.compacting.replace(true) {
            return;
        }
        let _permit = self.writing.acquire_permit(1).await;
        let next = self.log_generation.get() + 1;
        let dir = self.own_root.join(format!("{next:020}"));
        let result = async {
            let log = PartitionLog::open(&dir, self.config.clone(), self.cache.clone())
                .await
                .map_err(|e| e.to_string())?;
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
                .offsets
                .borrow()
                .iter()
                .flat_map(|(g, o)| {
                    o.iter().map(move |((t, p), (off, e, m))| {
                        (
                            offset_key(g, t, *p),
                            Some(offset_value(*off, *e, m.as_deref())),
                        )
                    })
                })
                .collect();
            let mut records = records;
            records.extend(self.groups.borrow().iter().filter_map(|(name, g)| {
                GroupRecord::of(g).map(|r| (group_key(name), serde_json::to_vec(&r).ok()))
            }));
            let count = records.len();
            let mut it = records.into_iter().peekable();
            while it.peek().is_some() {
                let chunk: Vec<_> = it.by_ref().take(1000).collect();
                log.append(BytesMut::from(&Self::encode(chunk)[..]))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((log, count))
        }
        .await;
        match result {
            Ok((log, count)) => {
                let old = std::mem::replace(&mut *self.log.borrow_mut(), log.clone());
                let before = old.size_bytes();
                let _ = old.close().await;
                self.log_generation.set(next);
                self.snapshot_bytes.set(log.size_bytes());
                if let Ok(d) = std::fs::read_dir(&self.own_root) {
                    for e in d.flatten() {
                        let n = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok());
                        if n.is_some_and(|n| n < next) {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
                tracing::info!(
                    shard = self.shard_id,
                    offsets = count,
                    before_bytes = before,
                    after_bytes = log.size_bytes(),
                    "group log compacted"
                );
            }
            Err(e) => {
                tracing::warn!(shard = self.shard_id, error = %e, "group log compaction failed; the current log stays");
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        self.compacting.set(false);
    }

    async fn commit(self: &Rc<Self>, q: km::OffsetCommitRequest) -> km::OffsetCommitResponse {
        let group_id = q.group_id.0.to_string();
        let check = {
            let groups = self.groups.borrow();
            match groups.get(&group_id) {
                _ if group_id.is_empty() => errors::INVALID_GROUP_ID,
                // A commit outside any generation (assign() users): allowed while the
                // group has no members.
                None => errors::NONE,
                Some(g) if q.generation_id_or_member_epoch < 0 => {
                    if g.members.is_empty() {
                        errors::NONE
                    } else {
                        errors::UNKNOWN_MEMBER_ID
                    }
                }
                Some(g) => {
                    if let Some(code) =
                        g.fenced(q.member_id.as_str(), q.group_instance_id.as_deref())
                    {
                        code
                    } else if !g.members.contains_key(q.member_id.as_str()) {
                        errors::UNKNOWN_MEMBER_ID
                    } else if q.generation_id_or_member_epoch != g.generation {
                        errors::ILLEGAL_GENERATION
                    } else if g.state == State::CompletingRebalance {
                        // A new generation is being handed out: its members have not
                        // got their assignments yet (as Kafka answers).
                        errors::REBALANCE_IN_PROGRESS
                    } else {
                        // Stable, or PreparingRebalance with the generation the member
                        // still belongs to: accepted, as Kafka accepts it, so a member
                        // can commit what it read before it rejoins or leaves (the
                        // commit in a rebalance listener, or on close).
                        errors::NONE
                    }
                }
            }
        };
        // A partition that does not exist gets UNKNOWN_TOPIC_OR_PARTITION, as in Kafka;
        // the others are committed.
        let exists = |topic: &str, partition: i32| {
            let counts = self.partition_count.borrow();
            let count = counts.as_ref().and_then(|f| f(topic));
            count.is_some_and(|n| partition >= 0 && (partition as u32) < n)
        };
        let mut records = Vec::new();
        if check == errors::NONE {
            for t in &q.topics {
                for p in &t.partitions {
                    if !exists(t.name.0.as_str(), p.partition_index) {
                        continue;
                    }
                    records.push((
                        offset_key(&group_id, t.name.0.as_str(), p.partition_index),
                        Some(offset_value(
                            p.committed_offset,
                            p.committed_leader_epoch,
                            p.committed_metadata.as_ref().map(|m| m.as_str()),
                        )),
                    ));
                }
            }
        }
        let code = if check != errors::NONE {
            check
        } else {
            match self.write(records).await {
                // `write` applied the records to the offsets in memory.
                Ok(()) => errors::NONE,
                Err(e) => {
                    tracing::warn!(group = %group_id, error = %e, "offset commit failed");
                    errors::COORDINATOR_NOT_AVAILABLE
                }
            }
        };
        let mut resp = km::OffsetCommitResponse::default();
        for t in &q.topics {
            let mut tr = km::offset_commit_response::OffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = km::offset_commit_response::OffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                pr.error_code =
                    if code == errors::NONE && !exists(t.name.0.as_str(), p.partition_index) {
                        errors::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        code
                    };
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    fn fetch_offsets(&self, q: km::OffsetFetchRequest, version: i16) -> km::OffsetFetchResponse {
        let group_id = q.group_id.0.to_string();
        let all = self.offsets.borrow();
        let empty = Offsets::new();
        let mine = all.get(&group_id).unwrap_or(&empty);
        let mut resp = km::OffsetFetchResponse::default();
        let wanted: Vec<(String, Vec<i32>)> = match &q.topics {
            Some(ts) => ts
                .iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (t, p) in mine.keys() {
                    by_topic.entry(t.clone()).or_default().push(*p);
                }
                by_topic.into_iter().collect()
            }
        };
        for (topic, parts) in wanted {
            let mut tr = km::offset_fetch_response::OffsetFetchResponseTopic::default();
            tr.name = km::TopicName(s(&topic));
            for p in parts {
                let mut pr = km::offset_fetch_response::OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                match mine.get(&(topic.clone(), p)) {
                    Some((o, e, m)) => {
                        pr.committed_offset = *o;
                        if version >= 5 {
                            pr.committed_leader_epoch = *e;
                        }
                        pr.metadata = Some(s(m.as_deref().unwrap_or("")));
                    }
                    None => {
                        pr.committed_offset = -1;
                        pr.metadata = Some(s(""));
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    async fn delete_offsets(
        self: &Rc<Self>,
        q: km::OffsetDeleteRequest,
    ) -> km::OffsetDeleteResponse {
        let group_id = q.group_id.0.to_string();
        let mut resp = km::OffsetDeleteResponse::default();
        let busy = self
            .groups
            .borrow()
            .get(&group_id)
            .is_some_and(|g| !g.members.is_empty());
        let known = self.offsets.borrow().contains_key(&group_id);
        if !known {
            resp.error_code = errors::GROUP_ID_NOT_FOUND;
            return resp;
        }
        let mut records = Vec::new();
        for t in &q.topics {
            for p in &t.partitions {
                records.push((
                    offset_key(&group_id, t.name.0.as_str(), p.partition_index),
                    None,
                ));
            }
        }
        // With members, only the offsets of topics no member subscribes to can go
        // (GROUP_SUBSCRIBED_TO_TOPIC for the others, per partition, as Kafka answers);
        // a group whose subscriptions cannot be read keeps all (NON_EMPTY_GROUP).
        let subscribed: Option<HashSet<String>> = if busy {
            let groups = self.groups.borrow();
            let g = groups.get(&group_id).expect("busy means present");
            let mut all = HashSet::new();
            let mut readable = true;
            for m in g.members.values() {
                let meta = m
                    .protocols
                    .iter()
                    .find(|p| p.0 == g.protocol)
                    .or(m.protocols.first())
                    .map(|p| p.1.clone())
                    .unwrap_or_default();
                match subscribed_topics(&g.protocol_type, &meta) {
                    Some(ts) => all.extend(ts),
                    None => readable = false,
                }
            }
            if !readable {
                resp.error_code = errors::NON_EMPTY_GROUP;
                return resp;
            }
            Some(all)
        } else {
            None
        };
        let in_use = |topic: &str| subscribed.as_ref().is_some_and(|s| s.contains(topic));
        records.retain(|(k, _)| parse_offset_key(k).is_some_and(|(_, topic, _)| !in_use(&topic)));
        let code = match self.write(records).await {
            Ok(()) => errors::NONE,
            Err(_) => errors::COORDINATOR_NOT_AVAILABLE,
        };
        for t in &q.topics {
            let mut tr = km::offset_delete_response::OffsetDeleteResponseTopic::default();
            tr.name = t.name.clone();
            for p in &t.partitions {
                let mut pr = km::offset_delete_response::OffsetDeleteResponsePartition::default();
                pr.partition_index = p.partition_index;
                pr.error_code = if in_use(t.name.0.as_str()) {
                    errors::GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    code
                };
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    /// The groups this shard coordinates (members or committed offsets).
    pub fn list(&self, version: i16) -> km::ListGroupsResponse {
        let mut resp = km::ListGroupsResponse::default();
        let groups = self.groups.borrow();
        let offsets = self.offsets.borrow();
        let mut names: Vec<&String> = groups.keys().chain(offsets.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let g = groups.get(name);
            if g.is_none_or(|g| g.members.is_empty()) && !offsets.contains_key(name) {
                continue;
            }
            let mut lg = km::list_groups_response::ListedGroup::default();
            lg.group_id = km::GroupId(s(name));
            lg.protocol_type = s(g.map_or("consumer", |g| g.protocol_type.as_str()));
            if version >= 4 {
                lg.group_state = s(g.map_or("Empty", |g| g.state.name()));
            }
            if version >= 5 {
                lg.group_type = s("classic");
            }
            resp.groups.push(lg);
        }
        resp
    }

    fn describe(&self, q: km::DescribeGroupsRequest, version: i16) -> km::DescribeGroupsResponse {
        let mut resp = km::DescribeGroupsResponse::default();
        let groups = self.groups.borrow();
        let offsets = self.offsets.borrow();
        for id in q.groups {
            let mut dg = km::describe_groups_response::DescribedGroup::default();
            dg.group_id = id.clone();
            match groups.get(id.0.as_str()) {
                Some(g) => {
                    dg.group_state = s(g.state.name());
                    dg.protocol_type = s(&g.protocol_type);
                    dg.protocol_data = s(&g.protocol);
                    for (mid, m) in &g.members {
                        let mut dm = km::describe_groups_response::DescribedGroupMember::default();
                        dm.member_id = s(mid);
                        if version >= 4 {
                            dm.group_instance_id = m.instance_id.as_ref().map(|i| s(i));
                        }
                        dm.client_id = s(&m.client_id);
                        dm.client_host = s(&m.client_host);
                        dm.member_metadata = m
                            .protocols
                            .iter()
                            .find(|p| p.0 == g.protocol)
                            .map(|p| p.1.clone())
                            .unwrap_or_default();
                        dm.member_assignment = m.assignment.clone();
                        dg.members.push(dm);
                    }
                }
                None if offsets.contains_key(id.0.as_str()) => {
                    dg.group_state = s("Empty");
                    dg.protocol_type = s("consumer");
                }
                None => dg.group_state = s("Dead"),
            }
            resp.groups.push(dg);
        }
        resp
    }

    async fn delete_groups(
        self: &Rc<Self>,
        q: km::DeleteGroupsRequest,
    ) -> km::DeleteGroupsResponse {
        let mut resp = km::DeleteGroupsResponse::default();
        for id in q.groups_names {
            let name = id.0.to_string();
            let mut r = km::delete_groups_response::DeletableGroupResult::default();
            r.group_id = id;
            let busy = self
                .groups
                .borrow()
                .get(&name)
                .is_some_and(|g| !g.members.is_empty());
            let keys: Option<Vec<(String, i32)>> = self
                .offsets
                .borrow()
                .get(&name)
                .map(|o| o.keys().cloned().collect());
            r.error_code = if busy {
                errors::NON_EMPTY_GROUP
            } else if let Some(keys) = keys {
                let records = keys
                    .iter()
                    .map(|(t, p)| (offset_key(&name, t, *p), None))
                    .collect();
                match self.write(records).await {
                    Ok(()) => {
                        self.groups.borrow_mut().remove(&name);
                        tracing::info!(group = %name, "group deleted");
                        errors::NONE
                    }
                    Err(_) => errors::COORDINATOR_NOT_AVAILABLE,
                }
            } else if self.groups.borrow_mut().remove(&name).is_some() {
                errors::NONE
            } else {
                errors::GROUP_ID_NOT_FOUND
            };
            resp.results.push(r);
        }
        resp
    }

    /// Committed offsets of a group, for tools: (topic, partition, offset).
    pub fn committed(&self, group: &str) -> Vec<(String, i32, i64)> {
        self.offsets
            .borrow()
            .get(group)
            .map(|o| {
                o.iter()
                    .map(|((t, p), (off, _, _))| (t.clone(), *p, *off))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Closes the group log.
    pub async fn close(&self) {
        let log = self.log.borrow().clone();
        let _ = log.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip() {
        let k = offset_key("g", "topic-a", 7);
        assert_eq!(
            parse_offset_key(&k),
            Some(("g".into(), "topic-a".into(), 7))
        );
        let v = offset_value(42, 3, Some("meta"));
        assert_eq!(parse_offset_value(&v), Some((42, 3, Some("meta".into()))));
        assert_eq!(
            parse_offset_value(&offset_value(1, -1, None)),
            Some((1, -1, None))
        );
        assert_eq!(parse_offset_key(b"x"), None);
    }

    fn members(n: usize) -> Vec<(String, Vec<String>)> {
        (0..n)
            .map(|i| (format!("m{i}"), vec!["a".to_string(), "b".to_string()]))
            .collect()
    }

    fn check_partition(out: &HashMap<String, Vec<(String, u32)>>, total: usize) {
        let mut all: Vec<&(String, u32)> = out.values().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a partition assigned twice: {out:?}");
        assert_eq!(n, total, "every partition assigned: {out:?}");
    }

    #[test]
    fn assignors_assign_every_partition_once_and_balance() {
        let counts = |t: &str| if t == "a" { 6 } else { 3 };
        for assignor in ASSIGNORS {
            for n in 1..=4 {
                let out = assign(assignor, &members(n), &counts, &HashMap::new());
                check_partition(&out, 9);
                let loads: Vec<usize> = out.values().map(Vec::len).collect();
                let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
                // Range balances per topic, so over two topics it may differ by 2.
                assert!(
                    spread <= if assignor == "range" { 2 } else { 1 },
                    "{assignor} {n}: {out:?}"
                );
            }
        }
        let out = assign("range", &members(2), &counts, &HashMap::new());
        assert_eq!(
            out["m0"],
            vec![
                ("a".into(), 0),
                ("a".into(), 1),
                ("a".into(), 2),
                ("b".into(), 0),
                ("b".into(), 1)
            ]
        );
    }

    #[test]
    fn sticky_keeps_what_members_had() {
        let counts = |t: &str| if t == "a" { 6 } else { 3 };
        let before = assign("sticky", &members(3), &counts, &HashMap::new());
        // m2 leaves: m0 and m1 keep all they had and split m2's partitions.
        let after = assign("sticky", &members(2), &counts, &before);
        check_partition(&after, 9);
        for m in ["m0", "m1"] {
            for tp in &before[m] {
                assert!(
                    after[m].contains(tp),
                    "{m} lost {tp:?}: {before:?} -> {after:?}"
                );
            }
        }
        // A member subscribed to one topic only gets only that topic.
        let mixed = vec![
            ("m0".to_string(), vec!["a".to_string()]),
            ("m1".to_string(), vec!["a".to_string(), "b".to_string()]),
        ];
        for assignor in ASSIGNORS {
            let out = assign(assignor, &mixed, &counts, &HashMap::new());
            check_partition(&out, 9);
            assert!(
                out["m0"].iter().all(|(t, _)| t == "a"),
                "{assignor}: {out:?}"
            );
        }
    }

    #[test]
    fn assignments_encode_and_decode() {
        let parts = vec![("orders".to_string(), 3), ("audit".to_string(), 0)];
        assert_eq!(decode_assignment(&encode_assignment(&parts)), parts);
        assert_eq!(
            decode_topics(b"a\nb\n"),
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn groups_spread_over_shards_stably() {
        let mut counts = [0u32; 4];
        for i in 0..1000 {
            counts[group_shard(&format!("group-{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
        assert_eq!(group_shard("orders", 1), 0);
        assert_eq!(group_shard("orders", 3), group_shard("orders", 3));
    }
}
