//! Consumer groups: the group coordinator of one shard, for Kafka and native clients.
//!
//! The coordinator speaks no wire protocol: it is asked [`GroupOp`]s and answers
//! [`GroupReply`]s (module [`ops`]), with [`crate::error::BrokerError`]s; the front-ends
//! map their requests to these (`crate::kafka_groups`, `crate::native_groups`). The
//! native join is a join of protocol type [`NATIVE_PROTOCOL_TYPE`], whose partitions the
//! broker assigns (module [`assign`](mod@assign)).
//!
//! Each group belongs to one shard, [`group_shard`] of its id; operations for it that
//! arrive on other shards are forwarded there. The coordinator lives on that shard's
//! executor and only that shard changes it. The classic protocol:
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
//! **Bounds** ([`GroupLimits`]): the groups a shard holds, the members of a group and
//! the member ids a group has handed out and not yet seen join are capped; a join past
//! a cap is refused with an error that names the setting, and the broker logs it (at
//! most every [`LIMIT_WARN_INTERVAL`]). Groups with no member and no member id handed out
//! are reclaimed at the next sweep.
//!
//! Committed offsets are appended to the shard's own group log
//! (`<data-dir>/__ringmq_groups/<shard>/<generation>`, RecordBatch v2, flush every batch) and an
//! OffsetCommit is answered only once its batch is durable. At start every shard reads
//! all group logs (its own last) and keeps the groups it owns, so a change in the shard
//! count keeps every group's offsets. A group's membership is written there too when
//! it becomes stable (or empty), so a restarted broker restores stable groups and their
//! members heartbeat on in the same generation. A log grown past its compaction threshold is rewritten as a snapshot of the
//! live offsets in a new generation directory (see [`Coordinator::open`]).

pub mod assign;
pub mod ops;
pub mod replicated;
pub mod subscription;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalSender};
use ringmq_storage::batch::{self, Record};
use ringmq_storage::{FlushPolicy, LogConfig, PartitionLog, SegmentCache};

pub use assign::{ASSIGNORS, assign};
pub use ops::{
    CommitOffsets, CommittedOffset, DeleteOffsets, DescribedGroup, DescribedMember, FetchOffsets,
    GroupMember, GroupOp, GroupReply, GroupState, Heartbeat, JoinGroup, JoinReply, Joined,
    LeaveGroup, Leaving, ListedGroup, MemberLeft, OffsetCommit, SyncGroup, SyncReply, TopicOffsets,
};
pub use replicated::{
    Leading, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS, OFFSETS_TOPIC_REPLICATION_FACTOR,
    offsets_partition, offsets_topic_configs,
};

use crate::error::{BrokerError, ErrorKind};
use crate::timers::Timers;

/// Directory of the group logs under the data directory.
pub const GROUPS_DIR: &str = "__ringmq_groups";

/// The shard that coordinates `group`: FNV-1a of the id, modulo the shard count.
pub fn group_shard(group: &str, shard_count: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shard_count.max(1)
}

/// Default of [`GroupLimits::groups_max`]: groups (with members, or with member ids
/// handed out) per shard. Deployments run tens to thousands of groups in all; a
/// hundred thousand per shard is far beyond that, and at the few hundred bytes an
/// empty group with a pending member id costs, it bounds that state to tens of MB per
/// shard when a client makes up group ids.
pub const GROUPS_MAX_DEFAULT: usize = 100_000;
/// Default of [`GroupLimits::group_max_size`]: members per group. A member without a
/// partition is idle, so a group larger than its topics' partition count gains nothing,
/// and topics with more than a thousand partitions are rare; the leader's JoinGroup
/// answer lists every member's subscription, so the size also bounds that answer.
/// Kafka's `group.max.size` has no limit by default.
pub const GROUP_MAX_SIZE_DEFAULT: usize = 1000;
/// Default of [`GroupLimits::pending_members_max`]: member ids a group has handed out
/// (MEMBER_ID_REQUIRED) that have not joined yet. A client joins with its id at once,
/// so a real group has about as many pending as members starting together; as many
/// as [`GROUP_MAX_SIZE_DEFAULT`] lets a full group start at once. Unjoined ids expire
/// after [`PENDING_MEMBER_TTL`].
pub const GROUP_PENDING_MEMBERS_MAX_DEFAULT: usize = 1000;
/// How long a member id handed out with MEMBER_ID_REQUIRED waits for its join.
pub const PENDING_MEMBER_TTL: Duration = Duration::from_secs(300);
/// A limit's refusals are logged at most this often (with how many were not).
pub const LIMIT_WARN_INTERVAL: Duration = Duration::from_secs(10);

const _: () = assert!(GROUP_PENDING_MEMBERS_MAX_DEFAULT >= GROUP_MAX_SIZE_DEFAULT);

/// The session timeouts a member may ask for (Kafka's `group.min.session.timeout.ms`
/// and `group.max.session.timeout.ms` defaults).
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// See [`SESSION_TIMEOUT_MIN`].
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(1800);

/// The caps on a shard's group state; see each default for why it is where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Groups one shard holds (`--groups-max`). A join that would create one more is
    /// refused with [`ErrorKind::LimitReached`] (Kafka: COORDINATOR_NOT_AVAILABLE,
    /// which clients retry). Groups known only by their committed offsets do not count.
    pub groups_max: usize,
    /// Members of one group (`--group-max-size`, Kafka's `group.max.size`). A new
    /// member past it is refused with [`ErrorKind::GroupMaxSizeReached`].
    pub group_max_size: usize,
    /// Member ids one group has handed out that have not joined yet
    /// (`--group-pending-members-max`). A first join past it is refused with
    /// [`ErrorKind::LimitReached`].
    pub pending_members_max: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            groups_max: GROUPS_MAX_DEFAULT,
            group_max_size: GROUP_MAX_SIZE_DEFAULT,
            pending_members_max: GROUP_PENDING_MEMBERS_MAX_DEFAULT,
        }
    }
}

/// Which limit refused a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Groups,
    GroupSize,
    PendingMembers,
}

/// Refusals of one limit, for a warning at most every [`LIMIT_WARN_INTERVAL`].
#[derive(Debug, Default)]
struct LimitLog {
    last_warn: Cell<Option<Instant>>,
    since_warn: Cell<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn public(self) -> GroupState {
        match self {
            State::Empty => GroupState::Empty,
            State::PreparingRebalance => GroupState::PreparingRebalance,
            State::CompletingRebalance => GroupState::CompletingRebalance,
            State::Stable => GroupState::Stable,
        }
    }
}

/// What a pending join is answered with.
type JoinDone = Result<Joined, BrokerError>;

/// UnknownMember: `member` is not (or no longer) in the group.
fn unknown_member(member: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::UnknownMember,
        format!("member {member:?} is not in the group"),
    )
}

/// RebalanceInProgress: the member must join again.
fn rebalancing() -> BrokerError {
    BrokerError::new(
        ErrorKind::RebalanceInProgress,
        "the group is rebalancing: join again",
    )
}

/// A group id as messages show it: at most 64 characters (ids come from clients, and
/// may be long).
fn shown(group: &str) -> String {
    match group.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}...", &group[..end]),
        None => format!("{group:?}"),
    }
}

/// IllegalGeneration: `asked` is not the group's generation.
fn illegal_generation(asked: i32, current: i32) -> BrokerError {
    BrokerError::new(
        ErrorKind::IllegalGeneration,
        format!("generation {asked} is not the group's, {current}"),
    )
}

/// FencedInstanceId: a newer instance took the static member's place.
fn fenced_instance(instance_id: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::FencedInstanceId,
        format!("a newer member with instance id {instance_id:?} replaced this one"),
    )
}

/// CoordinatorNotAvailable: the group log could not be written.
fn not_written(e: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::CoordinatorNotAvailable,
        format!("the group log could not be written: {e}"),
    )
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
    sync: Option<LocalSender<Result<Bytes, BrokerError>>>,
}

impl Member {
    /// Its metadata in `protocol` (empty if it does not support it).
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.0 == protocol)
            .map(|p| p.1.clone())
            .unwrap_or_default()
    }
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
    /// The leader's view of the members: each with its metadata in the group's
    /// protocol.
    fn member_view(&self) -> Vec<GroupMember> {
        self.members
            .iter()
            .map(|(id, m)| GroupMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata(&self.protocol),
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
    /// the one registered with that id (KIP-345). `Ok` when the request may go on.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), BrokerError> {
        let Some(iid) = instance_id else {
            return Ok(());
        };
        match self.static_member(iid) {
            Some(k) if k == member_id => Ok(()),
            Some(_) => Err(fenced_instance(iid)),
            None => Err(unknown_member(member_id)),
        }
    }

    fn new(now: Instant) -> Self {
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

/// The group coordinator of one shard: created on the shard's executor by
/// [`Coordinator::open`], used and changed only there.
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
    limits: GroupLimits,
    /// Refusals by each limit, for rate-limited warnings.
    limit_logs: [LimitLog; 3],
    /// A cluster node: group state lives in [`OFFSETS_TOPIC`] ([`replicated`]), not in
    /// the group log.
    clustered: bool,
    /// In a cluster: the partitions of [`OFFSETS_TOPIC`] this shard leads.
    offsets_topic: RefCell<replicated::OffsetsTopic>,
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

    fn into_group(self, now: Instant) -> Group {
        let mut g = Group::new(now);
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

/// Settings of a shard's [`Coordinator`].
#[derive(Debug, Clone, Copy)]
pub struct CoordinatorOptions {
    /// The shard's index.
    pub shard_id: u32,
    /// Number of shards.
    pub shard_count: u32,
    /// How long an empty group waits for more members before its first rebalance
    /// completes (Kafka's `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
    /// A group log larger than this (and than four times its last snapshot) is
    /// compacted.
    pub log_compact_bytes: u64,
    /// The caps on groups, members and pending member ids.
    pub limits: GroupLimits,
    /// A cluster node: groups live in the replicated [`OFFSETS_TOPIC`], each coordinated
    /// by the leader of its partition; the local group log is not used.
    pub clustered: bool,
}

/// A topic's partition count, if the topic exists.
pub type PartitionCounts = Box<dyn Fn(&str) -> Option<u32>>;

/// The protocol type of groups of native consumers, whose partitions the broker
/// assigns.
pub const NATIVE_PROTOCOL_TYPE: &str = "ringmq";

/// The protocol type of Kafka consumers' groups, whose metadata is Kafka's consumer
/// protocol ([`subscription`]); also the type shown for a group known only by its
/// committed offsets.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// The topics a member subscribes to, from its metadata in the group's protocol:
/// Kafka's ConsumerProtocolSubscription for protocol type `consumer`, a list of names
/// for native members. `None` for another protocol type or metadata that does not
/// decode.
fn subscribed_topics(protocol_type: &str, meta: &[u8]) -> Option<Vec<String>> {
    match protocol_type {
        NATIVE_PROTOCOL_TYPE => Some(assign::decode_topics(meta)),
        CONSUMER_PROTOCOL_TYPE => subscription::subscribed_topics(meta),
        _ => None,
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("shard_id", &self.shard_id)
            .finish()
    }
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
    /// owns from every shard's group log. Once the log outgrows
    /// `options.log_compact_bytes` (and four times its last snapshot) it is compacted.
    pub async fn open(
        data_dir: &Path,
        options: CoordinatorOptions,
        timers: Rc<Timers>,
        cache: Rc<SegmentCache>,
    ) -> Result<Rc<Self>, String> {
        let CoordinatorOptions {
            shard_id,
            shard_count,
            initial_rebalance_delay: initial_delay,
            log_compact_bytes: compact_bytes,
            limits,
            clustered,
        } = options;
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
            limits,
            limit_logs: Default::default(),
            clustered,
            offsets_topic: Default::default(),
        });
        if clustered {
            // Groups load from the offsets topic's partitions as this node leads them.
            let sweeper = me.clone();
            glommio::spawn_local(async move { sweeper.sweep().await }).detach();
            return Ok(me);
        }
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
            me.groups
                .borrow_mut()
                .insert(name, rec.into_group(me.timers.now()));
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

    /// Whether records of `group` belong to this shard: on a single node, when it is
    /// the group's shard; in a cluster, when the shard leads the group's partition of
    /// [`OFFSETS_TOPIC`].
    fn owns(&self, group: &str) -> bool {
        if self.clustered {
            self.holds_replicated(group)
        } else {
            group_shard(group, self.shard_count) == self.shard_id
        }
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
                if self.owns(name) {
                    let rec = r.value.and_then(|v| serde_json::from_slice(v).ok());
                    self.restored.borrow_mut().insert(name.to_string(), rec);
                }
                continue;
            }
            let Some((group, topic, p)) = r.key.and_then(parse_offset_key) else {
                continue;
            };
            if !self.owns(&group) {
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

    /// Answers an operation on a group this shard coordinates ([`GroupOp::List`]: on
    /// the groups here).
    pub async fn handle(self: &Rc<Self>, op: GroupOp) -> GroupReply {
        if self.clustered
            && let Some(g) = op.group()
            && let Err(e) = self.serves(g)
        {
            return GroupReply::refused(&op, e);
        }
        match op {
            GroupOp::Join(o) => GroupReply::Join(self.join(o).await),
            GroupOp::Sync(o) => GroupReply::Sync(self.sync(o).await),
            GroupOp::Heartbeat(o) => GroupReply::Heartbeat(self.heartbeat(&o)),
            GroupOp::Leave(o) => GroupReply::Leave(self.leave(o)),
            GroupOp::CommitOffsets(o) => GroupReply::CommitOffsets(self.commit(o).await),
            GroupOp::FetchOffsets(o) => GroupReply::FetchOffsets(Ok(self.fetch_offsets(&o))),
            GroupOp::DeleteOffsets(o) => GroupReply::DeleteOffsets(self.delete_offsets(o).await),
            GroupOp::List => GroupReply::List(self.list()),
            GroupOp::Describe { group } => GroupReply::Describe(Ok(self.describe(&group))),
            GroupOp::Delete { group } => GroupReply::Delete(self.delete_group(&group).await),
        }
    }

    /// Tells a replaced static member's waiting join and sync that it is fenced.
    fn fence_waiters(m: &mut Member) {
        let iid = m.instance_id.clone().unwrap_or_default();
        if let Some(join) = m.join.take() {
            let _ = join.try_send(Err(fenced_instance(&iid)));
        }
        if let Some(sync) = m.sync.take() {
            let _ = sync.try_send(Err(fenced_instance(&iid)));
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

    /// The error of a join refused by `limit` (`count`: what the limit counts now),
    /// logged at most every [`LIMIT_WARN_INTERVAL`] with the refusals since.
    fn limit_reached(&self, limit: Limit, group: &str, count: usize) -> BrokerError {
        let group = shown(group);
        let e = match limit {
            Limit::Groups => BrokerError::new(
                ErrorKind::LimitReached,
                format!(
                    "group {group} cannot be created: shard {} holds {count} groups, the \
                     most its groups-max setting allows (--groups-max); retry later",
                    self.shard_id
                ),
            ),
            Limit::GroupSize => BrokerError::new(
                ErrorKind::GroupMaxSizeReached,
                format!(
                    "group {group} has {count} members, the most the group-max-size \
                     setting allows (--group-max-size)"
                ),
            ),
            Limit::PendingMembers => BrokerError::new(
                ErrorKind::LimitReached,
                format!(
                    "group {group} has handed out {count} member ids that have not joined \
                     yet, the most its group-pending-members-max setting allows \
                     (--group-pending-members-max); retry later"
                ),
            ),
        };
        let log = &self.limit_logs[limit as usize];
        log.since_warn.set(log.since_warn.get() + 1);
        let now = self.timers.now();
        if log
            .last_warn
            .get()
            .is_none_or(|t| now.duration_since(t) >= LIMIT_WARN_INTERVAL)
        {
            log.last_warn.set(Some(now));
            // Taken outside the macro, which skips its arguments when nothing listens.
            let refused = log.since_warn.replace(0);
            tracing::warn!(
                shard = self.shard_id,
                refused,
                "group join refused: {}",
                e.message
            );
        }
        e
    }

    async fn join(self: &Rc<Self>, q: JoinGroup) -> JoinReply {
        let refuse = |member_id: &str, error: BrokerError| JoinReply {
            member_id: member_id.to_string(),
            result: Err(error),
        };
        let group_id = q.group.clone();
        if group_id.is_empty() {
            return refuse(
                "",
                BrokerError::new(ErrorKind::InvalidGroupId, "the group id is empty"),
            );
        }
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&q.session_timeout) {
            return refuse(
                "",
                BrokerError::new(
                    ErrorKind::InvalidSessionTimeout,
                    format!(
                        "session timeout {} ms is outside {}..={} ms",
                        q.session_timeout.as_millis(),
                        SESSION_TIMEOUT_MIN.as_millis(),
                        SESSION_TIMEOUT_MAX.as_millis()
                    ),
                ),
            );
        }
        let instance_id = q.instance_id.clone();
        let (tx, rx) = local_channel::new_bounded(1);
        let member_id;
        {
            let mut groups = self.groups.borrow_mut();
            if !groups.contains_key(&group_id) && groups.len() >= self.limits.groups_max {
                let count = groups.len();
                return refuse(
                    &q.member_id,
                    self.limit_reached(Limit::Groups, &group_id, count),
                );
            }
            let g = groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(self.timers.now()));
            if !g.members.is_empty()
                && !g.protocol_type.is_empty()
                && g.protocol_type != q.protocol_type
            {
                let e = format!(
                    "the group's protocol type is {:?}, not {:?}",
                    g.protocol_type, q.protocol_type
                );
                return refuse(
                    "",
                    BrokerError::new(ErrorKind::InconsistentGroupProtocol, e),
                );
            }
            if q.protocol_type == NATIVE_PROTOCOL_TYPE
                && q.protocols
                    .iter()
                    .any(|p| !ASSIGNORS.contains(&p.0.as_str()))
            {
                let e = format!("the broker's assignors are {}", ASSIGNORS.join(", "));
                return refuse(
                    "",
                    BrokerError::new(ErrorKind::InconsistentGroupProtocol, e),
                );
            }
            let mut id = q.member_id.clone();
            if id.is_empty() {
                // A static member rejoining takes its old member's place.
                let old = instance_id
                    .as_ref()
                    .and_then(|iid| g.static_member(iid).cloned());
                if let Some(old_id) = &old
                    && g.state == State::Stable
                    && g.members[old_id].protocols == q.protocols
                {
                    // KIP-345: a static member that restarts with what it had gets its
                    // place back, under a new member id, without a rebalance of the
                    // others; its SyncGroup returns its assignment.
                    let new_id = self.new_member_id(&q.client_id);
                    let mut m = g.members.remove(old_id).expect("found above");
                    Self::fence_waiters(&mut m);
                    let now = self.timers.now();
                    m.client_id = q.client_id.clone();
                    m.client_host = q.client_host.clone();
                    m.session_timeout = q.session_timeout;
                    m.rebalance_timeout = q.rebalance_timeout;
                    m.deadline = now + q.session_timeout;
                    g.members.insert(new_id.clone(), m);
                    if g.leader == *old_id {
                        g.leader = new_id.clone();
                    }
                    self.dirty.borrow_mut().insert(group_id.clone());
                    tracing::info!(shard = self.shard_id, group = %group_id, old = %old_id, new = %new_id, "static member rejoined without a rebalance");
                    // The leader gets the members, as after a rebalance, and is told to
                    // skip the assignment: the group keeps the one it has.
                    let leader = g.leader == new_id;
                    return JoinReply {
                        result: Ok(Joined {
                            generation: g.generation,
                            leader: g.leader.clone(),
                            protocol_type: g.protocol_type.clone(),
                            protocol: g.protocol.clone(),
                            members: if leader { g.member_view() } else { Vec::new() },
                            skip_assignment: leader,
                        }),
                        member_id: new_id,
                    };
                }
                match old {
                    Some(old_id) => {
                        let m = g.members.remove(&old_id).expect("found above");
                        if let Some(old_join) = m.join {
                            let iid = m.instance_id.unwrap_or_default();
                            let _ = old_join.try_send(Err(fenced_instance(&iid)));
                        }
                        if g.leader == old_id {
                            g.leader.clear();
                        }
                        id = self.new_member_id(&q.client_id);
                    }
                    None => {
                        if g.members.len() >= self.limits.group_max_size {
                            let count = g.members.len();
                            return refuse(
                                "",
                                self.limit_reached(Limit::GroupSize, &group_id, count),
                            );
                        }
                        id = self.new_member_id(&q.client_id);
                        if q.require_member_id && instance_id.is_none() {
                            if g.pending_ids.len() >= self.limits.pending_members_max {
                                let count = g.pending_ids.len();
                                return refuse(
                                    "",
                                    self.limit_reached(Limit::PendingMembers, &group_id, count),
                                );
                            }
                            g.pending_ids.insert(id.clone(), self.timers.now());
                            return refuse(
                                &id,
                                BrokerError::new(
                                    ErrorKind::MemberIdRequired,
                                    "join again with the member id given",
                                ),
                            );
                        }
                    }
                }
            } else if let Err(e) = g.fenced(&id, instance_id.as_deref()) {
                return refuse(&id, e);
            } else if !g.members.contains_key(&id) {
                if g.pending_ids.remove(&id).is_none() {
                    return refuse(&id, unknown_member(&id));
                }
                if g.members.len() >= self.limits.group_max_size {
                    let count = g.members.len();
                    return refuse(&id, self.limit_reached(Limit::GroupSize, &group_id, count));
                }
            }
            member_id = id.clone();
            let now = self.timers.now();
            let session = q.session_timeout;
            let member = g.members.entry(id).or_insert_with(|| Member {
                instance_id: instance_id.clone(),
                client_id: q.client_id.clone(),
                client_host: q.client_host.clone(),
                session_timeout: session,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                deadline: now + session,
                join: None,
                sync: None,
            });
            member.session_timeout = session;
            member.rebalance_timeout = q.rebalance_timeout;
            member.protocols = q.protocols;
            member.deadline = now + session;
            if let Some(old) = member.join.replace(tx) {
                let _ = old.try_send(Err(BrokerError::new(
                    ErrorKind::UnknownMember,
                    format!("a newer join of member {member_id:?} replaced this one"),
                )));
            }
            g.protocol_type = q.protocol_type;
            if g.state != State::PreparingRebalance {
                self.prepare_rebalance(g);
            }
            if Self::all_joined(g) && self.timers.now() >= g.initial_until {
                self.complete_join(&group_id, g);
            }
        }
        let Some(result) = rx.recv().await else {
            return refuse("", unknown_member(&member_id));
        };
        JoinReply { member_id, result }
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
        let now = self.timers.now();
        g.rebalance_deadline = now + timeout;
        g.initial_until = if was_empty {
            now + self.initial_delay.min(timeout)
        } else {
            now
        };
        for m in g.members.values_mut() {
            if let Some(sync) = m.sync.take() {
                let _ = sync.try_send(Err(rebalancing()));
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
        let now = self.timers.now();
        let Some(protocol) = chosen else {
            for (_, m) in std::mem::take(&mut g.members) {
                if let Some(j) = m.join {
                    let _ = j.try_send(Err(BrokerError::new(
                        ErrorKind::InconsistentGroupProtocol,
                        "no protocol (assignor) is supported by every member",
                    )));
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
                .map(|m| (m.member_id.clone(), assign::decode_topics(&m.metadata)))
                .collect();
            let previous: HashMap<String, Vec<(String, u32)>> = g
                .members
                .iter()
                .map(|(id, m)| (id.clone(), assign::decode_assignment(&m.assignment)))
                .collect();
            let lookup = self.partition_count.borrow();
            let counts = |t: &str| lookup.as_ref().and_then(|f| f(t)).unwrap_or(0);
            let assigned = assign(&protocol, &subscriptions, &counts, &previous);
            for (id, m) in g.members.iter_mut() {
                m.assignment =
                    assign::encode_assignment(assigned.get(id).map(Vec::as_slice).unwrap_or(&[]));
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
                    vec![GroupMember {
                        member_id: id.clone(),
                        instance_id: None,
                        metadata: m.assignment.clone(),
                    }]
                } else if *id == g.leader {
                    view.clone()
                } else {
                    Vec::new()
                };
                let _ = j.try_send(Ok(Joined {
                    generation: g.generation,
                    leader: g.leader.clone(),
                    protocol_type: g.protocol_type.clone(),
                    protocol: protocol.clone(),
                    members,
                    skip_assignment: false,
                }));
            }
        }
    }

    /// Sets how the coordinator learns a topic's partition count (for server-side
    /// assignment): the shard's topic table.
    pub fn set_partition_counts(&self, f: PartitionCounts) {
        *self.partition_count.borrow_mut() = Some(f);
    }

    async fn sync(&self, q: SyncGroup) -> SyncReply {
        let mut reply = SyncReply {
            protocol: None,
            assignment: Err(unknown_member(&q.member_id)),
        };
        let member_id = q.member_id;
        let rx = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(&q.group) else {
                return reply;
            };
            reply.protocol = Some((g.protocol_type.clone(), g.protocol.clone()));
            if let Err(e) = g.fenced(&member_id, q.instance_id.as_deref()) {
                reply.assignment = Err(e);
                return reply;
            }
            if !g.members.contains_key(&member_id) {
                return reply;
            }
            if q.generation != g.generation {
                reply.assignment = Err(illegal_generation(q.generation, g.generation));
                return reply;
            }
            match g.state {
                State::PreparingRebalance | State::Empty => {
                    reply.assignment = Err(rebalancing());
                    return reply;
                }
                State::Stable => {
                    reply.assignment = Ok(g.members[&member_id].assignment.clone());
                    return reply;
                }
                State::CompletingRebalance => {}
            }
            let now = self.timers.now();
            if member_id == g.leader {
                let given: HashMap<String, Bytes> = q.assignments.into_iter().collect();
                for (id, m) in g.members.iter_mut() {
                    m.assignment = given.get(id).cloned().unwrap_or_default();
                    m.deadline = now + m.session_timeout;
                    if let Some(w) = m.sync.take() {
                        let _ = w.try_send(Ok(m.assignment.clone()));
                    }
                }
                g.state = State::Stable;
                self.dirty.borrow_mut().insert(q.group.clone());
                reply.assignment = Ok(g.members[&member_id].assignment.clone());
                return reply;
            }
            let (tx, rx) = local_channel::new_bounded(1);
            let m = g.members.get_mut(&member_id).expect("checked above");
            m.deadline = now + m.session_timeout;
            m.sync = Some(tx);
            rx
        };
        reply.assignment = rx.recv().await.unwrap_or_else(|| Err(rebalancing()));
        reply
    }

    fn heartbeat(&self, q: &Heartbeat) -> Result<(), BrokerError> {
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(&q.group) else {
            return Err(unknown_member(&q.member_id));
        };
        g.fenced(&q.member_id, q.instance_id.as_deref())?;
        let (generation, state) = (g.generation, g.state);
        let Some(m) = g.members.get_mut(&q.member_id) else {
            return Err(unknown_member(&q.member_id));
        };
        m.deadline = self.timers.now() + m.session_timeout;
        if state == State::PreparingRebalance {
            Err(rebalancing())
        } else if q.generation != generation {
            Err(illegal_generation(q.generation, generation))
        } else {
            Ok(())
        }
    }

    fn leave(&self, q: LeaveGroup) -> Result<Vec<MemberLeft>, BrokerError> {
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(&q.group) else {
            return Err(BrokerError::new(
                ErrorKind::UnknownMember,
                format!("group {:?} has no members", q.group),
            ));
        };
        let mut removed = false;
        let mut out = Vec::with_capacity(q.members.len());
        for Leaving {
            member_id: id,
            instance_id: iid,
        } in q.members
        {
            let key = if id.is_empty() {
                iid.as_ref().and_then(|iid| g.static_member(iid).cloned())
            } else {
                Some(id.clone())
            };
            // A static member's id must match its instance id (KIP-345).
            let fenced = if id.is_empty() {
                Ok(())
            } else {
                g.fenced(&id, iid.as_deref())
            };
            let result = match fenced {
                Err(e) => Err(e),
                Ok(()) => match key.and_then(|k| g.members.remove(&k).map(|m| (k, m))) {
                    Some((k, m)) => {
                        tracing::info!(shard = self.shard_id, group = %q.group, member = %k, "member left");
                        if let Some(j) = m.join {
                            let _ = j.try_send(Err(unknown_member(&k)));
                        }
                        removed = true;
                        Ok(())
                    }
                    None => Err(unknown_member(&id)),
                },
            };
            out.push(MemberLeft {
                member_id: id,
                instance_id: iid,
                result,
            });
        }
        if removed {
            self.after_member_loss(&q.group, g);
        }
        Ok(out)
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
                .sleep_until(self.timers.now() + Duration::from_millis(100))
                .await;
            let records = self.sweep_once();
            let groups: Vec<String> = records
                .iter()
                .filter_map(|(k, _)| k.strip_prefix(b"g"))
                .filter_map(|g| std::str::from_utf8(g).ok().map(str::to_string))
                .collect();
            if let Err(e) = self.write(records).await {
                tracing::warn!(shard = self.shard_id, error = %e, "writing group membership failed");
                // In a cluster the failure passes (a replica returns to the ISR, or
                // another node takes the groups over): written again at the next
                // sweep, if this shard still holds them.
                if self.clustered {
                    let mut dirty = self.dirty.borrow_mut();
                    dirty.extend(groups.into_iter().filter(|g| self.owns(g)));
                }
            }
        }
    }

    /// One pass of [`Coordinator::sweep`]; returns the membership records to write.
    fn sweep_once(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        {
            let now = self.timers.now();
            let mut groups = self.groups.borrow_mut();
            for (id, g) in groups.iter_mut() {
                g.pending_ids
                    .retain(|_, t| now.duration_since(*t) < PENDING_MEMBER_TTL);
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
                        let _ = w.try_send(Err(rebalancing()));
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
        if self.clustered {
            return self.write_replicated(records).await;
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

    /// Whether `topic` has `partition`: UnknownTopic or UnknownPartition if not.
    fn partition_exists(&self, topic: &str, partition: i32) -> Result<(), BrokerError> {
        let counts = self.partition_count.borrow();
        match counts.as_ref().and_then(|f| f(topic)) {
            None => Err(BrokerError::unknown_topic(topic)),
            Some(n) if partition < 0 || partition as u32 >= n => Err(BrokerError::new(
                ErrorKind::UnknownPartition,
                format!("topic {topic:?} has {n} partitions, not partition {partition}"),
            )),
            Some(_) => Ok(()),
        }
    }

    async fn commit(self: &Rc<Self>, q: CommitOffsets) -> Vec<Result<(), BrokerError>> {
        let group_id = &q.group;
        let check = {
            let groups = self.groups.borrow();
            match groups.get(group_id) {
                _ if group_id.is_empty() => Err(BrokerError::new(
                    ErrorKind::InvalidGroupId,
                    "the group id is empty",
                )),
                // A commit outside any generation (assign() users): allowed while the
                // group has no members.
                None => Ok(()),
                Some(g) if q.generation < 0 => {
                    if g.members.is_empty() {
                        Ok(())
                    } else {
                        Err(unknown_member(&q.member_id))
                    }
                }
                Some(g) => {
                    if let Err(e) = g.fenced(&q.member_id, q.instance_id.as_deref()) {
                        Err(e)
                    } else if !g.members.contains_key(&q.member_id) {
                        Err(unknown_member(&q.member_id))
                    } else if q.generation != g.generation {
                        Err(illegal_generation(q.generation, g.generation))
                    } else if g.state == State::CompletingRebalance {
                        // A new generation is being handed out: its members have not
                        // got their assignments yet (as Kafka answers).
                        Err(rebalancing())
                    } else {
                        // Stable, or PreparingRebalance with the generation the member
                        // still belongs to: accepted, as Kafka accepts it, so a member
                        // can commit what it read before it rejoins or leaves (the
                        // commit in a rebalance listener, or on close).
                        Ok(())
                    }
                }
            }
        };
        // A partition that does not exist gets UnknownTopic or UnknownPartition, as in
        // Kafka; the others are committed.
        let mut records = Vec::new();
        if check.is_ok() {
            for o in &q.offsets {
                if self.partition_exists(&o.topic, o.partition).is_err() {
                    continue;
                }
                records.push((
                    offset_key(group_id, &o.topic, o.partition),
                    Some(offset_value(
                        o.offset,
                        o.leader_epoch,
                        o.metadata.as_deref(),
                    )),
                ));
            }
        }
        let result = match check {
            Err(e) => Err(e),
            // `write` applies the records to the offsets in memory.
            Ok(()) => self.write(records).await.map_err(|e| {
                tracing::warn!(group = %group_id, error = %e, "offset commit failed");
                not_written(&e)
            }),
        };
        q.offsets
            .iter()
            .map(|o| {
                result
                    .clone()
                    .and_then(|()| self.partition_exists(&o.topic, o.partition))
            })
            .collect()
    }

    fn fetch_offsets(&self, q: &FetchOffsets) -> Vec<TopicOffsets> {
        // `require_stable` asks for offsets no transaction is still writing; with no
        // transactional commits here, every committed offset is stable.
        let _ = q.require_stable;
        let all = self.offsets.borrow();
        let empty = Offsets::new();
        let mine = all.get(&q.group).unwrap_or(&empty);
        let wanted: Vec<(String, Vec<i32>)> = match &q.topics {
            Some(ts) => ts.clone(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (t, p) in mine.keys() {
                    by_topic.entry(t.clone()).or_default().push(*p);
                }
                by_topic.into_iter().collect()
            }
        };
        wanted
            .into_iter()
            .map(|(topic, parts)| {
                let partitions = parts
                    .into_iter()
                    .map(|p| {
                        let committed =
                            mine.get(&(topic.clone(), p))
                                .map(|(o, e, m)| CommittedOffset {
                                    offset: *o,
                                    leader_epoch: *e,
                                    metadata: m.clone(),
                                });
                        (p, committed)
                    })
                    .collect();
                TopicOffsets { topic, partitions }
            })
            .collect()
    }

    async fn delete_offsets(
        self: &Rc<Self>,
        q: DeleteOffsets,
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        let group_id = &q.group;
        let busy = self
            .groups
            .borrow()
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty());
        let known = self.offsets.borrow().contains_key(group_id);
        if !known {
            return Err(BrokerError::new(
                ErrorKind::GroupIdNotFound,
                format!("group {group_id:?} has no committed offsets"),
            ));
        }
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = q
            .partitions
            .iter()
            .map(|(t, p)| (offset_key(group_id, t, *p), None))
            .collect();
        // With members, only the offsets of topics no member subscribes to can go
        // (GroupSubscribedToTopic for the others, per partition, as Kafka answers); a
        // group whose subscriptions cannot be read keeps all (NonEmptyGroup).
        let subscribed: Option<HashSet<String>> = if busy {
            let groups = self.groups.borrow();
            let g = groups.get(group_id).expect("busy means present");
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
                return Err(BrokerError::new(
                    ErrorKind::NonEmptyGroup,
                    format!("group {group_id:?} has members whose subscriptions cannot be read"),
                ));
            }
            Some(all)
        } else {
            None
        };
        let in_use = |topic: &str| subscribed.as_ref().is_some_and(|s| s.contains(topic));
        records.retain(|(k, _)| parse_offset_key(k).is_some_and(|(_, topic, _)| !in_use(&topic)));
        let written = self.write(records).await.map_err(|e| not_written(&e));
        Ok(q.partitions
            .iter()
            .map(|(topic, _)| {
                if in_use(topic) {
                    Err(BrokerError::new(
                        ErrorKind::GroupSubscribedToTopic,
                        format!("group {group_id:?} consumes topic {topic:?}"),
                    ))
                } else {
                    written.clone()
                }
            })
            .collect())
    }

    /// The groups this shard coordinates (members or committed offsets).
    pub fn list(&self) -> Vec<ListedGroup> {
        let groups = self.groups.borrow();
        let offsets = self.offsets.borrow();
        let mut names: Vec<&String> = groups.keys().chain(offsets.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let g = groups.get(name);
                if g.is_none_or(|g| g.members.is_empty()) && !offsets.contains_key(name) {
                    return None;
                }
                Some(ListedGroup {
                    group: name.clone(),
                    protocol_type: g
                        .map_or(CONSUMER_PROTOCOL_TYPE, |g| g.protocol_type.as_str())
                        .to_string(),
                    state: g.map_or(GroupState::Empty, |g| g.state.public()),
                })
            })
            .collect()
    }

    fn describe(&self, group: &str) -> DescribedGroup {
        let groups = self.groups.borrow();
        match groups.get(group) {
            Some(g) => DescribedGroup {
                state: g.state.public(),
                protocol_type: g.protocol_type.clone(),
                protocol: g.protocol.clone(),
                members: g
                    .members
                    .iter()
                    .map(|(id, m)| DescribedMember {
                        member_id: id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: m.metadata(&g.protocol),
                        assignment: m.assignment.clone(),
                    })
                    .collect(),
            },
            None if self.offsets.borrow().contains_key(group) => DescribedGroup {
                state: GroupState::Empty,
                protocol_type: CONSUMER_PROTOCOL_TYPE.to_string(),
                protocol: String::new(),
                members: Vec::new(),
            },
            None => DescribedGroup {
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        }
    }

    async fn delete_group(self: &Rc<Self>, name: &str) -> Result<(), BrokerError> {
        let busy = self
            .groups
            .borrow()
            .get(name)
            .is_some_and(|g| !g.members.is_empty());
        let keys: Option<Vec<(String, i32)>> = self
            .offsets
            .borrow()
            .get(name)
            .map(|o| o.keys().cloned().collect());
        if busy {
            return Err(BrokerError::new(
                ErrorKind::NonEmptyGroup,
                format!("group {name:?} has members"),
            ));
        }
        if let Some(keys) = keys {
            let records = keys
                .iter()
                .map(|(t, p)| (offset_key(name, t, *p), None))
                .collect();
            self.write(records).await.map_err(|e| not_written(&e))?;
            self.groups.borrow_mut().remove(name);
            tracing::info!(group = %name, "group deleted");
            Ok(())
        } else if self.groups.borrow_mut().remove(name).is_some() {
            Ok(())
        } else {
            Err(BrokerError::new(
                ErrorKind::GroupIdNotFound,
                format!("no group {name:?}"),
            ))
        }
    }

    /// Member counts of the groups with members, for the metrics: (group, members).
    pub fn member_counts(&self) -> Vec<(String, usize)> {
        self.groups
            .borrow()
            .iter()
            .filter(|(_, g)| !g.members.is_empty())
            .map(|(name, g)| (name.clone(), g.members.len()))
            .collect()
    }

    /// Every committed offset, for the metrics: (group, topic, partition, offset).
    pub fn all_committed(&self) -> Vec<(String, String, i32, i64)> {
        let offsets = self.offsets.borrow();
        let mut out = Vec::new();
        for (group, o) in offsets.iter() {
            for ((t, p), (off, _, _)) in o {
                out.push((group.clone(), t.clone(), *p, *off));
            }
        }
        out
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
    use std::future::Future;

    /// Runs `f` with a coordinator of shard 0 of 1 on an executor of its own, its group
    /// log in a temporary directory; topic `t` has 4 partitions.
    fn with_coordinator<F, Fut>(limits: GroupLimits, f: F)
    where
        F: FnOnce(Rc<Coordinator>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let timers = Timers::new();
                glommio::spawn_local(timers.clone().run()).detach();
                let options = CoordinatorOptions {
                    shard_id: 0,
                    shard_count: 1,
                    initial_rebalance_delay: Duration::ZERO,
                    log_compact_bytes: 1 << 20,
                    limits,
                    clustered: false,
                };
                let c = Coordinator::open(&data, options, timers.clone(), SegmentCache::new(16))
                    .await
                    .unwrap();
                c.set_partition_counts(Box::new(|t| (t == "t").then_some(4)));
                f(c.clone()).await;
                c.close().await;
                timers.stop();
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A Kafka consumer's subscription (ConsumerProtocolSubscription v0) to `topics`.
    fn subscription(topics: &[&str]) -> Bytes {
        let mut b = 0i16.to_be_bytes().to_vec();
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for t in topics {
            b.extend_from_slice(&(t.len() as i16).to_be_bytes());
            b.extend_from_slice(t.as_bytes());
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(b)
    }

    fn join_op(group: &str, member: &str, require_member_id: bool) -> JoinGroup {
        JoinGroup {
            group: group.into(),
            member_id: member.into(),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: CONSUMER_PROTOCOL_TYPE.into(),
            protocols: vec![("range".into(), subscription(&["t"]))],
            client_id: "test".into(),
            client_host: "/127.0.0.1".into(),
            require_member_id,
        }
    }

    async fn join(c: &Rc<Coordinator>, op: JoinGroup) -> JoinReply {
        match c.handle(GroupOp::Join(op)).await {
            GroupReply::Join(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// A first join with MEMBER_ID_REQUIRED, then the join with the id given.
    async fn join_new(c: &Rc<Coordinator>, group: &str) -> (String, Joined) {
        let first = join(c, join_op(group, "", true)).await;
        assert_eq!(first.result.unwrap_err().kind, ErrorKind::MemberIdRequired);
        let id = first.member_id;
        let r = join(c, join_op(group, &id, true)).await;
        assert_eq!(r.member_id, id);
        (id, r.result.unwrap())
    }

    fn heartbeat(
        c: &Coordinator,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), BrokerError> {
        c.heartbeat(&Heartbeat {
            group: group.into(),
            member_id: member.into(),
            instance_id: None,
            generation,
        })
    }

    fn kinds<T>(rs: &[Result<T, BrokerError>]) -> Vec<Option<ErrorKind>> {
        rs.iter()
            .map(|r| r.as_ref().err().map(|e| e.kind))
            .collect()
    }

    #[test]
    fn a_member_joins_syncs_commits_and_leaves() {
        with_coordinator(GroupLimits::default(), |c| async move {
            let (id, joined) = join_new(&c, "g").await;
            assert_eq!(joined.generation, 1);
            assert_eq!(joined.leader, id);
            assert_eq!(joined.protocol, "range");
            assert_eq!(joined.members.len(), 1, "the leader sees the members");
            assert_eq!(joined.members[0].metadata, subscription(&["t"]));
            let synced = c
                .sync(SyncGroup {
                    group: "g".into(),
                    member_id: id.clone(),
                    instance_id: None,
                    generation: 1,
                    assignments: vec![(id.clone(), Bytes::from_static(b"a"))],
                })
                .await;
            assert_eq!(synced.protocol, Some(("consumer".into(), "range".into())));
            assert_eq!(synced.assignment.unwrap(), Bytes::from_static(b"a"));

            assert!(heartbeat(&c, "g", &id, 1).is_ok());
            let kind = |r: Result<(), BrokerError>| r.unwrap_err().kind;
            assert_eq!(
                kind(heartbeat(&c, "g", &id, 2)),
                ErrorKind::IllegalGeneration
            );
            assert_eq!(
                kind(heartbeat(&c, "g", "made-up", 1)),
                ErrorKind::UnknownMember
            );

            // Per partition: unknown topics and partitions are refused, the rest kept.
            let offset = |topic: &str, partition: i32, offset: i64| OffsetCommit {
                topic: topic.into(),
                partition,
                offset,
                leader_epoch: 3,
                metadata: Some("m".into()),
            };
            let committed = c
                .commit(CommitOffsets {
                    group: "g".into(),
                    member_id: id.clone(),
                    instance_id: None,
                    generation: 1,
                    offsets: vec![offset("t", 0, 5), offset("nope", 0, 1), offset("t", 9, 1)],
                })
                .await;
            assert_eq!(
                kinds(&committed),
                vec![
                    None,
                    Some(ErrorKind::UnknownTopic),
                    Some(ErrorKind::UnknownPartition)
                ]
            );
            let fetched = c.fetch_offsets(&FetchOffsets {
                group: "g".into(),
                topics: Some(vec![("t".into(), vec![0, 1])]),
                require_stable: true,
            });
            let five = CommittedOffset {
                offset: 5,
                leader_epoch: 3,
                metadata: Some("m".into()),
            };
            assert_eq!(
                fetched,
                vec![TopicOffsets {
                    topic: "t".into(),
                    partitions: vec![(0, Some(five)), (1, None)],
                }]
            );

            let described = c.describe("g");
            assert_eq!(described.state, GroupState::Stable);
            assert_eq!(described.members[0].client_host, "/127.0.0.1");
            assert_eq!(
                c.list(),
                vec![ListedGroup {
                    group: "g".into(),
                    protocol_type: "consumer".into(),
                    state: GroupState::Stable,
                }]
            );
            // With a member: the topic it consumes keeps its offsets, the group stays.
            let deleted = c
                .delete_offsets(DeleteOffsets {
                    group: "g".into(),
                    partitions: vec![("t".into(), 0), ("u".into(), 0)],
                })
                .await
                .unwrap();
            assert_eq!(
                kinds(&deleted),
                vec![Some(ErrorKind::GroupSubscribedToTopic), None]
            );
            assert_eq!(
                c.delete_group("g").await.unwrap_err().kind,
                ErrorKind::NonEmptyGroup
            );

            let left = c
                .leave(LeaveGroup {
                    group: "g".into(),
                    members: vec![Leaving {
                        member_id: id.clone(),
                        instance_id: None,
                    }],
                })
                .unwrap();
            assert!(left[0].result.is_ok());
            assert_eq!(kind(heartbeat(&c, "g", &id, 1)), ErrorKind::UnknownMember);
            assert_eq!(c.describe("g").state, GroupState::Empty, "its offsets stay");
            assert!(c.delete_group("g").await.is_ok());
            assert_eq!(c.describe("g").state, GroupState::Dead);
            assert_eq!(
                c.delete_group("g").await.unwrap_err().kind,
                ErrorKind::GroupIdNotFound
            );
        });
    }

    #[test]
    fn a_static_member_that_restarts_keeps_its_place_and_fences_its_old_id() {
        with_coordinator(GroupLimits::default(), |c| async move {
            let static_op = |member: &str| JoinGroup {
                instance_id: Some("i1".into()),
                ..join_op("s", member, true)
            };
            // A static member joins at once, without MEMBER_ID_REQUIRED.
            let first = join(&c, static_op("")).await;
            let old = first.member_id.clone();
            let joined = first.result.unwrap();
            let synced = c
                .sync(SyncGroup {
                    group: "s".into(),
                    member_id: old.clone(),
                    instance_id: Some("i1".into()),
                    generation: joined.generation,
                    assignments: vec![(old.clone(), Bytes::from_static(b"mine"))],
                })
                .await;
            assert!(synced.assignment.is_ok());
            let again = join(&c, static_op("")).await;
            let new = again.member_id.clone();
            let rejoined = again.result.unwrap();
            assert_ne!(new, old);
            assert_eq!(rejoined.generation, joined.generation, "no rebalance");
            assert_eq!(rejoined.leader, new);
            assert!(rejoined.skip_assignment, "the leader keeps the assignment");
            let fenced = c.heartbeat(&Heartbeat {
                group: "s".into(),
                member_id: old,
                instance_id: Some("i1".into()),
                generation: joined.generation,
            });
            assert_eq!(fenced.unwrap_err().kind, ErrorKind::FencedInstanceId);
        });
    }

    #[test]
    fn joins_that_would_create_a_group_past_groups_max_are_refused() {
        let limits = GroupLimits {
            groups_max: 3,
            ..GroupLimits::default()
        };
        with_coordinator(limits, |c| async move {
            for g in ["g0", "g1", "g2"] {
                let r = join(&c, join_op(g, "", true)).await;
                assert_eq!(r.result.unwrap_err().kind, ErrorKind::MemberIdRequired);
            }
            for _ in 0..5 {
                let r = join(&c, join_op("g3", "", true)).await;
                let e = r.result.unwrap_err();
                assert_eq!(e.kind, ErrorKind::LimitReached);
                assert!(e.message.contains("groups-max"), "{e}");
            }
            assert!(!c.groups.borrow().contains_key("g3"), "nothing held for it");
            // One warning, and the refusals since it counted for the next.
            assert_eq!(c.limit_logs[Limit::Groups as usize].since_warn.get(), 4);
            // The groups there are go on: a member joins one.
            let id = join(&c, join_op("g0", "", true)).await.member_id;
            assert!(join(&c, join_op("g0", &id, true)).await.result.is_ok());
        });
    }

    #[test]
    fn first_joins_past_group_pending_members_max_are_refused() {
        let limits = GroupLimits {
            pending_members_max: 2,
            ..GroupLimits::default()
        };
        with_coordinator(limits, |c| async move {
            let a = join(&c, join_op("g", "", true)).await.member_id;
            let _b = join(&c, join_op("g", "", true)).await.member_id;
            let e = join(&c, join_op("g", "", true)).await.result.unwrap_err();
            assert_eq!(e.kind, ErrorKind::LimitReached);
            assert!(e.message.contains("group-pending-members-max"), "{e}");
            // A member id handed out still joins, and frees its place.
            assert!(join(&c, join_op("g", &a, true)).await.result.is_ok());
            let r = join(&c, join_op("g", "", true)).await;
            assert_eq!(r.result.unwrap_err().kind, ErrorKind::MemberIdRequired);
            assert_eq!(c.groups.borrow()["g"].pending_ids.len(), 2);
        });
    }

    #[test]
    fn members_past_group_max_size_are_refused() {
        let limits = GroupLimits {
            group_max_size: 1,
            ..GroupLimits::default()
        };
        with_coordinator(limits, |c| async move {
            // Two ids handed out while the group is empty; the second is refused when it
            // joins, once the first is in.
            let a = join(&c, join_op("g", "", true)).await.member_id;
            let b = join(&c, join_op("g", "", true)).await.member_id;
            assert!(join(&c, join_op("g", &a, true)).await.result.is_ok());
            let r = join(&c, join_op("g", &b, true)).await;
            assert_eq!(r.member_id, b);
            assert_eq!(r.result.unwrap_err().kind, ErrorKind::GroupMaxSizeReached);
            // A first join, with or without the member id round, is refused at once.
            for require_member_id in [true, false] {
                let r = join(&c, join_op("g", "", require_member_id)).await;
                let e = r.result.unwrap_err();
                assert_eq!(e.kind, ErrorKind::GroupMaxSizeReached);
                assert!(e.message.contains("group-max-size"), "{e}");
            }
            assert!(c.groups.borrow()["g"].pending_ids.is_empty());
            // The member in the group rejoins as before.
            assert!(join(&c, join_op("g", &a, true)).await.result.is_ok());
        });
    }

    #[test]
    fn groups_left_by_refused_joins_are_reclaimed_at_the_sweep() {
        with_coordinator(GroupLimits::default(), |c| async move {
            let r = join(
                &c,
                JoinGroup {
                    protocol_type: NATIVE_PROTOCOL_TYPE.into(),
                    protocols: vec![("no-such-assignor".into(), Bytes::new())],
                    ..join_op("refused", "", false)
                },
            )
            .await;
            assert_eq!(
                r.result.unwrap_err().kind,
                ErrorKind::InconsistentGroupProtocol
            );
            assert!(c.groups.borrow().contains_key("refused"));
            let _ = c.sweep_once();
            assert!(!c.groups.borrow().contains_key("refused"));
        });
    }

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
