//! [`Shard`]: one core's broker. It owns the partitions placed on it, answers
//! requests from the connections it accepted, and forwards the parts of a request that
//! belong to other shards over bounded cross-shard channels.
//!
//! Shard-local state only: a `Shard` is created on its executor and never leaves it.
//! Its copy of the topic table is replaced whole when shard 0 (the metadata owner)
//! broadcasts a change. Nothing here takes a lock or touches another shard's memory.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use ringmq_net::codec::{
    self, ErrorCode, FetchPartition, FetchResult, OFFSET_EARLIEST, OFFSET_LATEST, PartitionInfo,
    ProducePartition, ProduceResult, Records, RecordsChunk, Request, Response, WireError,
};
use ringmq_net::conn::{Handler, Handoff, LocalFuture};
use ringmq_net::zerocopy::{FileRange, FileSender};
use ringmq_storage::{
    BatchError, LogConfig, Notify, PartitionLog, ReadChunk, ReadResult, SegmentCache,
};

use crate::groups::{
    Coordinator, CoordinatorOptions, GroupLimits, GroupOp, GroupReply, group_shard,
};
use crate::placement::place;
use crate::producer_ids::{IdKey, ProducerIds};
use crate::producers::{self, Check, Producers};
use crate::timers::Timers;
use crate::topic_configs::TopicPolicy;
use crate::topics::{self, TopicMeta, TopicTable};

/// Capacity of each cross-shard channel (messages).
pub const CROSS_SHARD_CHANNEL_MAX: usize = 1024;
/// ListOffsets for the record with the largest timestamp (Kafka's `MAX_TIMESTAMP`,
/// KIP-734).
pub const OFFSET_MAX_TIMESTAMP: i64 = -3;
/// ListOffsets for the first offset on local storage (KIP-405): the log start here.
pub const OFFSET_EARLIEST_LOCAL: i64 = -4;
/// ListOffsets for the last offset on tiered storage (KIP-1005): none here.
pub const OFFSET_LATEST_TIERED: i64 = -5;
/// Shard that owns topic metadata changes.
pub const METADATA_SHARD: u32 = 0;

/// Settings of one shard.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// This shard's index.
    pub shard_id: u32,
    /// Number of shards.
    pub shard_count: u32,
    /// The data directory (partitions in `<data-dir>/<topic>/<partition>`).
    pub data_dir: PathBuf,
    /// Log settings a topic's configs start from.
    pub log_defaults: LogConfig,
    /// Closed segments held open per shard.
    pub open_segments_max: usize,
    /// How long a call to another shard may take before the request gets
    /// `Unavailable` (fetch calls get their max wait on top).
    pub call_timeout: Duration,
    /// Send fetched file ranges file → socket without a copy through user space.
    pub zero_copy: bool,
    /// How long an empty consumer group waits for more members before its first
    /// rebalance completes (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay: Duration,
    /// A group log larger than this (and than four times its last snapshot) is
    /// compacted.
    pub group_log_compact_bytes: u64,
    /// Groups this shard holds at most ([`GroupLimits::groups_max`]; default
    /// [`crate::groups::GROUPS_MAX_DEFAULT`]).
    pub groups_max: usize,
    /// Members a group has at most, Kafka's `group.max.size`
    /// ([`GroupLimits::group_max_size`]; default
    /// [`crate::groups::GROUP_MAX_SIZE_DEFAULT`]).
    pub group_max_size: usize,
    /// Member ids a group has handed out and not yet seen join, at most
    /// ([`GroupLimits::pending_members_max`]; default
    /// [`crate::groups::GROUP_PENDING_MEMBERS_MAX_DEFAULT`]).
    pub group_pending_members_max: usize,
    /// The node's key for producer ids ([`IdKey::load_or_create`]).
    pub producer_id_key: IdKey,
}

/// A call from one shard to another.
#[derive(Debug)]
pub enum Call {
    /// A request (or the part of one) for partitions the callee owns.
    Request(Request),
    /// Replace the topic table and open or close partitions to match.
    ApplyTopics(TopicTable),
    /// Describe these partitions.
    Stats(Vec<(String, u32)>),
    /// The shard's counters.
    Counters,
    /// Change a topic (on the metadata shard).
    ChangeTopic(TopicChange),
    /// Move log start offsets of partitions the callee owns: (topic, partition,
    /// offset) (Kafka's DeleteRecords).
    DeleteRecords(Vec<(String, u32, i64)>),
    /// A consumer-group request for a group this shard coordinates; `wait` is how long
    /// it may legitimately take (a join waits for the rebalance).
    Group {
        /// The operation.
        op: Box<GroupOp>,
        /// Added to the call timeout.
        wait: Duration,
    },
}

/// A change to an existing topic, made by the metadata shard and applied by all.
#[derive(Debug, Clone)]
pub enum TopicChange {
    /// Set and remove topic settings (ringmq's names, as in
    /// [`topics::CONFIG_KEYS`]).
    Configs {
        /// The topic.
        name: String,
        /// Settings to set.
        set: Vec<(String, String)>,
        /// Settings to remove (back to the broker's defaults).
        remove: Vec<String>,
        /// Check only; change nothing.
        validate_only: bool,
    },
    /// Raise the partition count (existing partitions keep their shards and data).
    Partitions {
        /// The topic.
        name: String,
        /// The new partition count.
        count: u32,
        /// Check only; change nothing.
        validate_only: bool,
    },
}

/// The answer to a [`Call`].
#[derive(Debug)]
pub enum Reply {
    /// Answer to `Call::Request`.
    Response(Response),
    /// Answer to `Call::ApplyTopics`.
    Applied(Result<(), String>),
    /// Answer to `Call::Stats`.
    Stats(Vec<PartitionInfo>),
    /// Answer to `Call::Counters`.
    Counters(Vec<(String, u64)>),
    /// Answer to `Call::Group`.
    Group(Box<GroupReply>),
    /// Answer to `Call::DeleteRecords`: (error, log start offset) per partition.
    DeletedRecords(Vec<(WireError, i64)>),
}

/// What travels on a cross-shard channel.
#[derive(Debug)]
pub enum Envelope {
    /// A call, with the id its reply will carry.
    Call {
        /// Caller-chosen id.
        id: u64,
        /// Calling shard.
        from: u32,
        /// The call.
        call: Call,
    },
    /// A reply to call `id`.
    Reply {
        /// The call's id.
        id: u64,
        /// The reply.
        reply: Reply,
    },
    /// A client connection moving to this shard (native `BindShard`).
    Connection(Handoff),
}

/// One shard's ends of the cross-shard channels: `senders[j]` goes to shard `j`,
/// `receivers[j]` comes from shard `j` (`None` at the shard's own index).
pub struct Links {
    senders: Vec<Option<SharedSender<Envelope>>>,
    receivers: Vec<Option<SharedReceiver<Envelope>>>,
}

/// Bounded channels between every pair of shards, one `Links` per shard.
pub fn links(shard_count: usize) -> Vec<Links> {
    let mut all: Vec<Links> = (0..shard_count)
        .map(|_| Links {
            senders: (0..shard_count).map(|_| None).collect(),
            receivers: (0..shard_count).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shard_count {
        for to in 0..shard_count {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(CROSS_SHARD_CHANNEL_MAX);
                all[from].senders[to] = Some(tx);
                all[to].receivers[from] = Some(rx);
            }
        }
    }
    all
}

type KeyFn<I> = Box<dyn Fn(&I) -> (&str, u32)>;
type FailedFn<I, R> = Box<dyn Fn(&I, WireError) -> R>;
type LocalFn<I, R> = Box<dyn Fn(Rc<Shard>, Vec<I>) -> LocalFuture<Vec<R>>>;

/// How [`Shard::scatter`] handles one kind of per-partition request.
struct Scatter<I, R> {
    /// The partition an item is for.
    key: KeyFn<I>,
    /// The result for an item that failed before reaching its owner.
    failed: FailedFn<I, R>,
    /// Runs this shard's part.
    local: LocalFn<I, R>,
    /// The request that forwards another shard's part.
    request: Box<dyn Fn(Vec<I>) -> Request>,
    /// The results in that shard's response.
    answer: Rc<dyn Fn(Response) -> Option<Vec<R>>>,
}

/// A partition's idempotent-producer state, shared by its produce tasks.
type SharedProducers = Rc<RefCell<Producers>>;

/// A metadata change.
enum Edit {
    /// Create or delete a topic (native requests).
    Native(Request),
    /// Change a topic.
    Topic(TopicChange),
}

/// The channel to another shard. Sends go out in the order they were made: the
/// channel lets a new send take a free slot ahead of tasks already waiting for one, and
/// glommio's semaphore lets a new caller take a permit ahead of a waiter it has woken,
/// so a ticket queue orders them (a connection's forwarded produce requests must reach
/// the owner, and its partitions, in the order they arrived).
struct Peer {
    sender: ConnectedSender<Envelope>,
    /// Tickets of the sends waiting or under way, in the order they were made.
    queue: RefCell<std::collections::VecDeque<u64>>,
    next_ticket: Cell<u64>,
    turn: Notify,
}

/// A send's place in [`Peer::queue`]; leaves it when the send is done or dropped.
struct PeerTurn<'a> {
    peer: &'a Peer,
    ticket: u64,
}

impl Drop for PeerTurn<'_> {
    fn drop(&mut self) {
        self.peer.queue.borrow_mut().retain(|&t| t != self.ticket);
        self.peer.turn.notify_all();
    }
}

impl Peer {
    fn new(sender: ConnectedSender<Envelope>) -> Self {
        Self {
            sender,
            queue: RefCell::new(std::collections::VecDeque::new()),
            next_ticket: Cell::new(0),
            turn: Notify::new(),
        }
    }

    /// Sends `env` after every send started before it.
    async fn send(&self, env: Envelope) -> Result<(), ()> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.queue.borrow_mut().push_back(ticket);
        let _turn = PeerTurn { peer: self, ticket };
        loop {
            // Checked and registered with no await between: no wake-up is missed.
            let changed = self.turn.changed();
            if self.queue.borrow().front() == Some(&ticket) {
                break;
            }
            changed.await;
        }
        self.sender.send(env).await.map_err(|_| ())
    }
}

/// One core's broker.
pub struct Shard {
    opts: ShardOptions,
    cache: Rc<SegmentCache>,
    timers: Rc<Timers>,
    topics: RefCell<TopicTable>,
    partitions: RefCell<HashMap<(String, u32), Rc<PartitionLog>>>,
    producers: RefCell<HashMap<(String, u32), SharedProducers>>,
    /// What produce applies per topic (`compression.type`, `cleanup.policy`, ...).
    policies: RefCell<HashMap<String, Rc<TopicPolicy>>>,
    data_arrived: Notify,
    peers: RefCell<Vec<Option<Rc<Peer>>>>,
    pending: RefCell<HashMap<u64, local_channel::LocalSender<Reply>>>,
    next_call_id: Cell<u64>,
    metadata_lock: glommio::sync::Semaphore,
    stopping: Cell<bool>,
    files: Rc<FileSender>,
    groups: Rc<Coordinator>,
    fetch_memory_bytes: Cell<u64>,
    fetch_file_bytes: Cell<u64>,
    producer_ids: ProducerIds,
    adopt: RefCell<Option<Adopt>>,
    /// Request parts sent on to the shard that owns their partitions.
    forwarded: Cell<u64>,
}

/// What serves a native connection handed over from another shard (set by the server,
/// which owns the connection settings).
pub type Adopt = Box<dyn Fn(Handoff)>;

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("shard_id", &self.opts.shard_id)
            .finish()
    }
}

/// A log read as wire records: file ranges stay file ranges (sent without a copy),
/// tail-cache batches stay in memory.
fn records_of(r: ReadResult) -> Records {
    let mut out = Records::new();
    for c in r.chunks {
        out.push(match c {
            ReadChunk::File {
                file,
                position,
                len,
            } => RecordsChunk::File(FileRange {
                fd: file.shared_fd(),
                position,
                len,
            }),
            ReadChunk::Memory(b) => RecordsChunk::Memory(b),
        });
    }
    out
}

fn storage_error(e: &ringmq_storage::Error) -> WireError {
    use ringmq_storage::Error as E;
    let code = match e {
        E::InvalidBatch(BatchError::TooLarge { .. }) => ErrorCode::MessageTooLarge,
        E::InvalidBatch(_) => ErrorCode::CorruptBatch,
        E::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        E::Closed => ErrorCode::Unavailable,
        _ => ErrorCode::StorageError,
    };
    WireError::new(code, e.to_string())
}

impl Shard {
    /// Starts the shard on the current executor: connects its cross-shard channels,
    /// opens the partitions `table` places on it and starts its timer and
    /// housekeeping tasks.
    pub async fn start(
        opts: ShardOptions,
        table: TopicTable,
        links: Links,
    ) -> Result<Rc<Self>, String> {
        let cache = SegmentCache::new(opts.open_segments_max);
        let timers = Timers::new();
        let groups = Coordinator::open(
            &opts.data_dir,
            CoordinatorOptions {
                shard_id: opts.shard_id,
                shard_count: opts.shard_count,
                initial_rebalance_delay: opts.group_initial_rebalance_delay,
                log_compact_bytes: opts.group_log_compact_bytes,
                limits: GroupLimits {
                    groups_max: opts.groups_max,
                    group_max_size: opts.group_max_size,
                    pending_members_max: opts.group_pending_members_max,
                },
            },
            timers.clone(),
            cache.clone(),
        )
        .await?;
        let producer_ids = ProducerIds::open(&opts.data_dir, opts.producer_id_key, opts.shard_id)
            .await
            .map_err(|e| e.to_string())?;
        let shard = Rc::new(Self {
            cache,
            timers,
            groups,
            topics: RefCell::new(TopicTable::default()),
            partitions: RefCell::new(HashMap::new()),
            producers: RefCell::new(HashMap::new()),
            policies: RefCell::new(HashMap::new()),
            data_arrived: Notify::new(),
            peers: RefCell::new(Vec::new()),
            pending: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(1),
            metadata_lock: glommio::sync::Semaphore::new(1),
            stopping: Cell::new(false),
            files: FileSender::new(opts.zero_copy),
            fetch_memory_bytes: Cell::new(0),
            fetch_file_bytes: Cell::new(0),
            producer_ids,
            adopt: RefCell::new(None),
            forwarded: Cell::new(0),
            opts,
        });
        let weak = Rc::downgrade(&shard);
        shard.groups.set_partition_counts(Box::new(move |t| {
            weak.upgrade()?.topic(t).map(|m| m.partitions)
        }));
        // Connect every end at once: a sender's connect waits for its receiver.
        let mut sender_tasks = Vec::new();
        for s in links.senders {
            sender_tasks.push(glommio::spawn_local(async move {
                match s {
                    Some(s) => Some(s.connect().await),
                    None => None,
                }
            }));
        }
        let mut receiver_tasks = Vec::new();
        for (from, r) in links.receivers.into_iter().enumerate() {
            if let Some(r) = r {
                receiver_tasks.push((from, glommio::spawn_local(r.connect())));
            }
        }
        let mut peers = Vec::new();
        for t in sender_tasks {
            peers.push(t.await);
        }
        *shard.peers.borrow_mut() = peers
            .into_iter()
            .map(|p| p.map(|sender| Rc::new(Peer::new(sender))))
            .collect();
        let mut receivers = Vec::new();
        for (from, t) in receiver_tasks {
            receivers.push((from, t.await));
        }
        glommio::spawn_local(shard.timers.clone().run()).detach();
        // Open our partitions before serving calls from other shards: until then their
        // calls wait in the bounded channels.
        shard.apply_topics(table).await?;
        for (from, rx) in receivers {
            let me = shard.clone();
            glommio::spawn_local(async move {
                while let Some(env) = rx.recv().await {
                    let me2 = me.clone();
                    glommio::spawn_local(async move { me2.on_envelope(env).await }).detach();
                }
                tracing::debug!(shard = me.opts.shard_id, from, "cross-shard channel closed");
            })
            .detach();
        }
        let me = shard.clone();
        glommio::spawn_local(async move { me.housekeeping().await }).detach();
        Ok(shard)
    }

    /// Sets what serves the native connections other shards hand over to this one
    /// (`BindShard`); until it is set they are closed.
    pub fn set_adopt(&self, adopt: Adopt) {
        *self.adopt.borrow_mut() = Some(adopt);
    }

    /// This shard's index.
    pub fn id(&self) -> u32 {
        self.opts.shard_id
    }

    /// A new producer id for sequenced (idempotent) produce, on either protocol: never
    /// issued before on this node ([`ProducerIds`]).
    pub async fn new_producer_id(&self) -> Result<i64, WireError> {
        self.producer_ids.issue().await.map_err(|e| {
            tracing::error!(shard = self.opts.shard_id, error = %e, "issuing a producer id failed");
            WireError::new(ErrorCode::StorageError, e.to_string())
        })
    }

    /// What produce applies to `topic` (its `compression.type`, `cleanup.policy`,
    /// `min.insync.replicas`, ...), from this shard's copy of the topic table.
    pub fn policy(&self, topic: &str) -> Option<Rc<TopicPolicy>> {
        self.policies.borrow().get(topic).cloned()
    }

    /// The shard's timers.
    pub fn timers(&self) -> &Rc<Timers> {
        &self.timers
    }

    /// A topic's metadata, from this shard's copy of the topic table.
    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.topics.borrow().topics.get(name).cloned()
    }

    /// Whether a topic exists (without copying its metadata: produce asks this).
    pub fn has_topic(&self, name: &str) -> bool {
        self.topics.borrow().topics.contains_key(name)
    }

    /// The names of all topics.
    pub fn topic_names(&self) -> Vec<String> {
        self.topics.borrow().topics.keys().cloned().collect()
    }

    /// The log settings a topic's configs start from.
    pub fn log_defaults(&self) -> LogConfig {
        self.opts.log_defaults.clone()
    }

    /// Answers a consumer-group operation: here if this shard coordinates the group,
    /// else on the shard that does ([`group_shard`]); `wait` is how long it may
    /// legitimately take (a join waits for its rebalance). `None` when that shard did
    /// not answer.
    pub async fn group_request(&self, op: GroupOp, wait: Duration) -> Option<GroupReply> {
        let owner = match op.group() {
            Some(g) => group_shard(g, self.opts.shard_count),
            None => self.opts.shard_id,
        };
        self.group_request_on(owner, op, wait).await
    }

    /// Answers a group operation on a given shard (a list of groups asks every shard).
    pub async fn group_request_on(
        &self,
        shard: u32,
        op: GroupOp,
        wait: Duration,
    ) -> Option<GroupReply> {
        if shard == self.opts.shard_id {
            return Some(self.groups.handle(op).await);
        }
        let op = Box::new(op);
        match self.call(shard, Call::Group { op, wait }).await {
            Some(Reply::Group(r)) => Some(*r),
            _ => None,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.opts.shard_count
    }

    /// Number of partitions this shard owns.
    pub fn partition_count(&self) -> usize {
        self.partitions.borrow().len()
    }

    async fn housekeeping(self: Rc<Self>) {
        let mut last_retention = Instant::now();
        while !self.stopping.get() {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let logs: Vec<Rc<PartitionLog>> = self.partitions.borrow().values().cloned().collect();
            let now = ringmq_storage::now_ms();
            let retention_due = last_retention.elapsed() >= Duration::from_secs(30);
            for log in logs {
                if let Err(e) = log.sync_if_due(now).await {
                    tracing::warn!(dir = %log.dir().display(), error = %e, "interval flush failed");
                }
                if retention_due && let Err(e) = log.apply_retention(now).await {
                    tracing::warn!(dir = %log.dir().display(), error = %e, "retention failed");
                }
            }
            if retention_due {
                last_retention = Instant::now();
            }
        }
    }

    /// Flushes and closes every partition this shard owns (clean shutdown).
    pub async fn shutdown(&self) {
        self.stopping.set(true);
        self.timers.stop();
        self.groups.close().await;
        let logs: Vec<Rc<PartitionLog>> = self.partitions.borrow().values().cloned().collect();
        for log in logs {
            if let Err(e) = log.close().await {
                tracing::error!(dir = %log.dir().display(), error = %e, "closing partition failed");
            }
        }
    }

    async fn call(&self, to: u32, call: Call) -> Option<Reply> {
        let extra = match &call {
            Call::Request(Request::Fetch { max_wait_ms, .. }) => {
                Duration::from_millis(u64::from(*max_wait_ms))
            }
            Call::Group { wait, .. } => *wait,
            _ => Duration::ZERO,
        };
        let id = self.next_call_id.get();
        self.next_call_id.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        let Some(sender) = self.peer(to) else {
            self.pending.borrow_mut().remove(&id);
            return None;
        };
        let env = Envelope::Call {
            id,
            from: self.opts.shard_id,
            call,
        };
        if sender.send(env).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return None;
        }
        // A shard that does not answer in time (a stalled disk) gets the caller an
        // `Unavailable`, not a hang; a late reply finds no one waiting and is dropped.
        let timeout = self
            .timers
            .sleep_until(Instant::now() + self.opts.call_timeout + extra);
        let reply = futures_lite::future::or(rx.recv(), async {
            timeout.await;
            None
        })
        .await;
        if reply.is_none() {
            self.pending.borrow_mut().remove(&id);
            tracing::warn!(shard = self.opts.shard_id, to, "cross-shard call timed out");
        }
        reply
    }

    async fn reply(&self, to: u32, id: u64, reply: Reply) {
        if let Some(sender) = self.peer(to) {
            let _ = sender.send(Envelope::Reply { id, reply }).await;
        }
    }

    /// The channel to shard `to`.
    fn peer(&self, to: u32) -> Option<Rc<Peer>> {
        self.peers.borrow().get(to as usize)?.clone()
    }

    async fn on_envelope(self: Rc<Self>, env: Envelope) {
        match env {
            Envelope::Connection(conn) => match self.adopt.borrow().as_ref() {
                Some(adopt) => adopt(conn),
                None => tracing::warn!(
                    shard = self.opts.shard_id,
                    "a connection handed over before the shard serves connections; closed"
                ),
            },
            Envelope::Reply { id, reply } => {
                let tx = self.pending.borrow_mut().remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.try_send(reply);
                }
            }
            Envelope::Call { id, from, call } => {
                let reply = match call {
                    Call::Request(req) => Reply::Response(self.clone().handle_owned(req).await),
                    Call::ApplyTopics(table) => Reply::Applied(self.apply_topics(table).await),
                    Call::Stats(parts) => Reply::Stats(self.local_stats(&parts)),
                    Call::Counters => Reply::Counters(self.counters()),
                    Call::Group { op, .. } => Reply::Group(Box::new(self.groups.handle(*op).await)),
                    Call::ChangeTopic(c) => {
                        Reply::Response(self.clone().change_metadata(Edit::Topic(c)).await)
                    }
                    Call::DeleteRecords(parts) => {
                        Reply::DeletedRecords(self.delete_records_local(parts).await)
                    }
                };
                self.reply(from, id, reply).await;
            }
        }
    }

    /// Replaces the topic table and opens or closes this shard's partitions to match.
    async fn apply_topics(&self, table: TopicTable) -> Result<(), String> {
        let me = self.opts.shard_id;
        let mut wanted: Vec<(String, u32, LogConfig)> = Vec::new();
        let mut policies = HashMap::new();
        for (name, t) in &table.topics {
            let config = topics::log_config(&t.configs, &self.opts.log_defaults)?;
            let mut policy = TopicPolicy::of(&t.configs);
            policy.log_append_time =
                config.timestamp_type == ringmq_storage::batch::TimestampType::LogAppendTime;
            policies.insert(name.clone(), Rc::new(policy));
            for (p, owner) in t.placement.iter().enumerate() {
                if *owner == me {
                    wanted.push((name.clone(), p as u32, config.clone()));
                }
            }
        }
        // The topics' produce rules take effect before their partitions open, so no
        // produce reaches a new partition without them.
        *self.policies.borrow_mut() = policies;
        // Close and forget partitions no longer ours (deleted topics lose their data).
        let gone: Vec<(String, u32)> = self
            .partitions
            .borrow()
            .keys()
            .filter(|(t, p)| !wanted.iter().any(|(wt, wp, _)| wt == t && wp == p))
            .cloned()
            .collect();
        for key in gone {
            let log = self.partitions.borrow_mut().remove(&key);
            self.producers.borrow_mut().remove(&key);
            if let Some(log) = log {
                let _ = log.close().await;
                if !table.topics.contains_key(&key.0) {
                    let dir = self.partition_dir(&key.0, key.1);
                    if let Err(e) = ringmq_storage::remove_dir_all(&dir).await {
                        tracing::error!(dir = %dir.display(), error = %e, "removing deleted partition failed");
                    }
                    let topic_dir = self.opts.data_dir.join(&key.0);
                    let _ = ringmq_storage::remove_dir_all(&topic_dir).await;
                }
            }
        }
        for (name, p, config) in wanted {
            let key = (name.clone(), p);
            let existing = self.partitions.borrow().get(&key).cloned();
            match existing {
                Some(log) => log.set_config(config).map_err(|e| e.to_string())?,
                None => {
                    let dir = self.partition_dir(&name, p);
                    let log = PartitionLog::open(&dir, config, self.cache.clone())
                        .await
                        .map_err(|e| format!("opening {}: {e}", dir.display()))?;
                    let producers = match Producers::rebuild(&log).await {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(topic = %name, partition = p, error = %e, "rebuilding idempotent producer state failed; producers start over");
                            Producers::default()
                        }
                    };
                    if !producers.is_empty() {
                        tracing::info!(topic = %name, partition = p, producers = producers.len(), "idempotent producer state rebuilt");
                    }
                    self.producers
                        .borrow_mut()
                        .insert(key.clone(), Rc::new(RefCell::new(producers)));
                    self.partitions.borrow_mut().insert(key, log);
                }
            }
        }
        *self.topics.borrow_mut() = table;
        Ok(())
    }

    fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.opts.data_dir.join(topic).join(partition.to_string())
    }

    fn local_stats(&self, parts: &[(String, u32)]) -> Vec<PartitionInfo> {
        let logs = self.partitions.borrow();
        parts
            .iter()
            .map(|(t, p)| match logs.get(&(t.clone(), *p)) {
                Some(log) => PartitionInfo {
                    partition: *p,
                    shard: self.opts.shard_id,
                    start_offset: log.start_offset(),
                    high_watermark: log.committed_offset(),
                    size_bytes: log.size_bytes(),
                },
                None => PartitionInfo {
                    partition: *p,
                    shard: self.opts.shard_id,
                    start_offset: -1,
                    high_watermark: -1,
                    size_bytes: 0,
                },
            })
            .collect()
    }

    /// Sends fetched file ranges for this shard's connections.
    pub fn file_sender(&self) -> Rc<FileSender> {
        self.files.clone()
    }

    /// This shard's counters.
    fn counters(&self) -> Vec<(String, u64)> {
        let sent = self.files.stats();
        vec![
            (
                "fetch_records_memory_bytes".into(),
                self.fetch_memory_bytes.get(),
            ),
            (
                "fetch_records_file_bytes".into(),
                self.fetch_file_bytes.get(),
            ),
            ("send_file_bytes_spliced".into(), sent.spliced_bytes),
            ("send_file_bytes_copied".into(), sent.copied_bytes),
            ("zero_copy_shards".into(), u64::from(self.files.zero_copy())),
            ("requests_forwarded".into(), self.forwarded.get()),
            ("shards".into(), 1),
        ]
    }

    /// Every shard's counters, summed by name.
    async fn broker_stats(self: &Rc<Self>) -> Response {
        let mut sum = self.counters();
        for to in 0..self.opts.shard_count {
            if to == self.opts.shard_id {
                continue;
            }
            match self.call(to, Call::Counters).await {
                Some(Reply::Counters(c)) => {
                    for (name, v) in c {
                        match sum.iter_mut().find(|(n, _)| *n == name) {
                            Some(e) => e.1 += v,
                            None => sum.push((name, v)),
                        }
                    }
                }
                _ => {
                    return Response::Error(WireError::new(
                        ErrorCode::Unavailable,
                        format!("shard {to} did not answer"),
                    ));
                }
            }
        }
        // Not a sum: which shard serves the connection that asked (connection steering).
        sum.push(("connection_shard".into(), u64::from(self.opts.shard_id)));
        Response::Stats(sum)
    }

    /// Answers a request that arrived on one of this shard's connections.
    pub async fn handle_request(self: Rc<Self>, req: Request) -> Response {
        match req {
            Request::ApiVersions { .. } => Response::ApiVersions(codec::supported_versions()),
            Request::BrokerStats => self.broker_stats().await,
            Request::InitProducer => match self.new_producer_id().await {
                Ok(producer_id) => Response::Producer {
                    producer_id,
                    epoch: 0,
                },
                Err(e) => Response::Error(e),
            },
            // A move to another shard is done by the connection loop; what reaches here
            // names this shard (nothing to do) or no shard.
            Request::BindShard { shard } if shard < self.opts.shard_count => {
                Response::Done(WireError::none())
            }
            Request::BindShard { shard } => Response::Done(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "no shard {shard}: this broker has {} (0-{})",
                    self.opts.shard_count,
                    self.opts.shard_count - 1
                ),
            )),
            Request::ListTopics => {
                Response::Topics(self.topics.borrow().topics.keys().cloned().collect())
            }
            Request::DescribeTopic { name } => self.describe(name).await,
            Request::CreateTopic { .. } | Request::DeleteTopic { .. } => {
                if self.opts.shard_id == METADATA_SHARD {
                    self.change_metadata(Edit::Native(req)).await
                } else {
                    match self.call(METADATA_SHARD, Call::Request(req)).await {
                        Some(Reply::Response(r)) => r,
                        _ => Response::Done(WireError::new(
                            ErrorCode::Unavailable,
                            "metadata shard unavailable",
                        )),
                    }
                }
            }
            Request::Produce { acks, partitions } => self.produce(acks, partitions).await,
            Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            } => {
                self.fetch(max_wait_ms, min_bytes, max_bytes, partitions)
                    .await
            }
            Request::ListOffsets { partitions } => self.list_offsets(partitions).await,
            Request::JoinGroup { .. }
            | Request::GroupHeartbeat { .. }
            | Request::LeaveGroup { .. }
            | Request::CommitOffsets { .. }
            | Request::FetchOffsets { .. } => self.native_group(req).await,
        }
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

    /// Answers the part of a request forwarded to this shard as the owner.
    async fn handle_owned(self: Rc<Self>, req: Request) -> Response {
        match req {
            Request::Produce { acks, partitions } => {
                Response::Produce(self.produce_local(acks, partitions).await)
            }
            Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            } => Response::Fetch(
                self.fetch_local(max_wait_ms, min_bytes, max_bytes, partitions)
                    .await,
            ),
            Request::ListOffsets { partitions } => {
                Response::Offsets(self.list_offsets_local(partitions).await)
            }
            Request::CreateTopic { .. } | Request::DeleteTopic { .. }
                if self.opts.shard_id == METADATA_SHARD =>
            {
                self.change_metadata(Edit::Native(req)).await
            }
            other => Response::Error(WireError::new(
                ErrorCode::InvalidRequest,
                format!("{:?} cannot be forwarded", other.api_key()),
            )),
        }
    }

    async fn describe(self: Rc<Self>, name: String) -> Response {
        let meta = self.topics.borrow().topics.get(&name).cloned();
        let Some(meta) = meta else {
            return Response::Topic {
                error: WireError::new(ErrorCode::UnknownTopic, format!("unknown topic {name:?}")),
                name,
                partitions: Vec::new(),
                configs: Vec::new(),
            };
        };
        let mut by_shard: HashMap<u32, Vec<(String, u32)>> = HashMap::new();
        for (p, owner) in meta.placement.iter().enumerate() {
            by_shard
                .entry(*owner)
                .or_default()
                .push((name.clone(), p as u32));
        }
        let mut infos = Vec::new();
        for (owner, parts) in by_shard {
            if owner == self.opts.shard_id {
                infos.extend(self.local_stats(&parts));
            } else if let Some(Reply::Stats(s)) = self.call(owner, Call::Stats(parts)).await {
                infos.extend(s);
            }
        }
        infos.sort_by_key(|i| i.partition);
        Response::Topic {
            error: WireError::none(),
            name,
            partitions: infos,
            configs: meta.configs.into_iter().collect(),
        }
    }

    /// Changes a topic's settings or partition count (through the metadata shard).
    pub async fn change_topic(self: Rc<Self>, change: TopicChange) -> WireError {
        let r = if self.opts.shard_id == METADATA_SHARD {
            self.change_metadata(Edit::Topic(change)).await
        } else {
            match self.call(METADATA_SHARD, Call::ChangeTopic(change)).await {
                Some(Reply::Response(r)) => r,
                _ => Response::Done(WireError::new(
                    ErrorCode::Unavailable,
                    "metadata shard unavailable",
                )),
            }
        };
        match r {
            Response::Done(e) => e,
            other => WireError::new(ErrorCode::StorageError, format!("{other:?}")),
        }
    }

    /// Create, change or delete a topic: on the metadata shard only, one change at a
    /// time: persist the new table, then have every shard apply it before answering.
    async fn change_metadata(self: Rc<Self>, edit: Edit) -> Response {
        let _permit = self.metadata_lock.acquire_permit(1).await;
        let mut table = self.topics.borrow().clone();
        let req = match edit {
            Edit::Native(req) => req,
            Edit::Topic(change) => {
                let what = match self.edit_topic(&mut table, change) {
                    Ok(Some(what)) => what,
                    Ok(None) => return Response::Done(WireError::none()),
                    Err(e) => return Response::Done(e),
                };
                return self.save_and_apply(table, what).await;
            }
        };
        let what = match req {
            Request::CreateTopic {
                name,
                partitions,
                configs,
            } => {
                if let Err(e) = topics::validate_name(&name) {
                    return Response::Done(WireError::new(ErrorCode::InvalidRequest, e));
                }
                if table.topics.contains_key(&name) {
                    return Response::Done(WireError::new(
                        ErrorCode::TopicExists,
                        format!("topic {name:?} exists"),
                    ));
                }
                if partitions == 0 || partitions > topics::PARTITIONS_MAX {
                    return Response::Done(WireError::new(
                        ErrorCode::InvalidRequest,
                        format!("partition count must be 1 to {}", topics::PARTITIONS_MAX),
                    ));
                }
                let configs: std::collections::BTreeMap<String, String> =
                    configs.into_iter().collect();
                if let Err(e) = topics::log_config(&configs, &self.opts.log_defaults) {
                    return Response::Done(WireError::new(ErrorCode::InvalidRequest, e));
                }
                let id = table.next_id;
                table.next_id += 1;
                let placement = (0..partitions)
                    .map(|p| place(id, p, self.opts.shard_count))
                    .collect();
                table.topics.insert(
                    name.clone(),
                    TopicMeta {
                        id,
                        partitions,
                        configs,
                        placement,
                    },
                );
                tracing::info!(topic = %name, partitions, "topic created");
                name
            }
            Request::DeleteTopic { name } => {
                if table.topics.remove(&name).is_none() {
                    return Response::Done(WireError::new(
                        ErrorCode::UnknownTopic,
                        format!("unknown topic {name:?}"),
                    ));
                }
                tracing::info!(topic = %name, "topic deleted");
                name
            }
            _ => unreachable!("only create and delete change metadata"),
        };
        self.save_and_apply(table, what).await
    }

    /// Applies a topic change to `table`: `Ok(Some(name))` when it changed,
    /// `Ok(None)` when it was only validated.
    fn edit_topic(
        &self,
        table: &mut TopicTable,
        change: TopicChange,
    ) -> Result<Option<String>, WireError> {
        let unknown =
            |name: &str| WireError::new(ErrorCode::UnknownTopic, format!("unknown topic {name:?}"));
        match change {
            TopicChange::Configs {
                name,
                set,
                remove,
                validate_only,
            } => {
                let meta = table.topics.get_mut(&name).ok_or_else(|| unknown(&name))?;
                let mut configs = meta.configs.clone();
                for k in remove {
                    configs.remove(&k);
                }
                configs.extend(set);
                topics::log_config(&configs, &self.opts.log_defaults)
                    .map_err(|e| WireError::new(ErrorCode::InvalidRequest, e))?;
                if validate_only {
                    return Ok(None);
                }
                tracing::info!(topic = %name, configs = ?configs, "topic settings changed");
                meta.configs = configs;
                Ok(Some(name))
            }
            TopicChange::Partitions {
                name,
                count,
                validate_only,
            } => {
                let id_and_now = table
                    .topics
                    .get(&name)
                    .map(|m| (m.id, m.partitions))
                    .ok_or_else(|| unknown(&name))?;
                let (id, now) = id_and_now;
                if count <= now || count > topics::PARTITIONS_MAX {
                    return Err(WireError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "topic {name:?} has {now} partitions; the new count must be more, and at most {}",
                            topics::PARTITIONS_MAX
                        ),
                    ));
                }
                if validate_only {
                    return Ok(None);
                }
                let meta = table.topics.get_mut(&name).expect("checked above");
                meta.placement
                    .extend((now..count).map(|p| place(id, p, self.opts.shard_count)));
                meta.partitions = count;
                tracing::info!(topic = %name, from = now, to = count, "partitions added");
                Ok(Some(name))
            }
        }
    }

    /// Persists a changed topic table and has every shard apply it.
    async fn save_and_apply(&self, table: TopicTable, what: String) -> Response {
        let path = self.opts.data_dir.join(topics::TOPICS_FILE);
        if let Err(e) = ringmq_storage::write_file_atomic(&path, &table.to_json()).await {
            return Response::Done(WireError::new(
                ErrorCode::StorageError,
                format!("saving topic table: {e}"),
            ));
        }
        let mut errors = Vec::new();
        for shard in 0..self.opts.shard_count {
            let r = if shard == self.opts.shard_id {
                self.apply_topics(table.clone()).await
            } else {
                match self.call(shard, Call::ApplyTopics(table.clone())).await {
                    Some(Reply::Applied(r)) => r,
                    _ => Err(format!("shard {shard} did not answer")),
                }
            };
            if let Err(e) = r {
                errors.push(format!("shard {shard}: {e}"));
            }
        }
        if errors.is_empty() {
            Response::Done(WireError::none())
        } else {
            tracing::error!(topic = %what, errors = ?errors, "applying topic change failed");
            Response::Done(WireError::new(ErrorCode::StorageError, errors.join("; ")))
        }
    }

    /// Owner shard of a partition, or the error to answer.
    fn owner(&self, topic: &str, partition: u32) -> Result<u32, WireError> {
        let t = self.topics.borrow();
        match t.topics.get(topic) {
            None => Err(WireError::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic {topic:?}"),
            )),
            Some(m) => m.placement.get(partition as usize).copied().ok_or_else(|| {
                WireError::new(
                    ErrorCode::UnknownPartition,
                    format!(
                        "topic {topic:?} has {} partitions; {partition} does not exist",
                        m.partitions
                    ),
                )
            }),
        }
    }

    /// Splits items by owner shard (keeping each item's position), runs `local` on this
    /// shard's part and forwards the other parts (built into requests by `request`,
    /// answered through `answer`) concurrently, and puts the results back in request
    /// order. An unknown partition, or a part whose shard does not answer, gets
    /// `failed(item, error)`.
    async fn scatter<I, R>(self: &Rc<Self>, items: Vec<I>, ops: Scatter<I, R>) -> Vec<R>
    where
        I: 'static,
        R: 'static,
    {
        let Scatter {
            key,
            failed,
            local,
            request,
            answer,
        } = ops;
        let n = items.len();
        let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
        let mut groups: HashMap<u32, (Vec<usize>, Vec<I>)> = HashMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let (t, p) = key(&item);
            match self.owner(t, p) {
                Ok(owner) => {
                    let g = groups.entry(owner).or_default();
                    g.0.push(i);
                    g.1.push(item);
                }
                Err(e) => out[i] = Some(failed(&item, e)),
            }
        }
        let mut tasks = Vec::new();
        for (owner, (positions, group)) in groups {
            let me = self.clone();
            let task: LocalFuture<Vec<R>> = if owner == self.opts.shard_id {
                local(me, group)
            } else {
                let unavailable = WireError::new(
                    ErrorCode::Unavailable,
                    format!("shard {owner} did not answer"),
                );
                let fallback: Vec<R> = group
                    .iter()
                    .map(|i| failed(i, unavailable.clone()))
                    .collect();
                let req = request(group);
                let answer = answer.clone();
                self.forwarded.set(self.forwarded.get() + 1);
                Box::pin(async move {
                    match me.call(owner, Call::Request(req)).await {
                        Some(Reply::Response(r)) => match answer(r) {
                            Some(v) if v.len() == fallback.len() => v,
                            _ => fallback,
                        },
                        _ => fallback,
                    }
                })
            };
            tasks.push((positions, glommio::spawn_local(task)));
        }
        for (positions, task) in tasks {
            let results = task.await;
            for (pos, r) in positions.into_iter().zip(results) {
                out[pos] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every item answered"))
            .collect()
    }

    async fn produce(self: Rc<Self>, acks: u8, partitions: Vec<ProducePartition>) -> Response {
        if acks > 1 {
            return Response::Error(WireError::new(
                ErrorCode::InvalidRequest,
                format!("acks {acks}: expected 0 (none) or 1 (durable)"),
            ));
        }
        let ops = Scatter {
            key: Box::new(|p: &ProducePartition| (p.topic.as_str(), p.partition)),
            failed: Box::new(|p: &ProducePartition, error| ProduceResult {
                topic: p.topic.clone(),
                partition: p.partition,
                error,
                base_offset: -1,
                record_errors: Vec::new(),
            }),
            local: Box::new(move |me, group| {
                Box::pin(async move { me.produce_local(acks, group).await })
            }),
            request: Box::new(move |partitions| Request::Produce { acks, partitions }),
            answer: Rc::new(|r| match r {
                Response::Produce(v) => Some(v),
                _ => None,
            }),
        };
        Response::Produce(self.scatter(partitions, ops).await)
    }

    async fn produce_local(
        self: &Rc<Self>,
        acks: u8,
        partitions: Vec<ProducePartition>,
    ) -> Vec<ProduceResult> {
        let mut tasks = Vec::with_capacity(partitions.len());
        for p in partitions {
            let log = self
                .partitions
                .borrow()
                .get(&(p.topic.clone(), p.partition))
                .cloned();
            let policy = self.policies.borrow().get(&p.topic).cloned();
            let producer = producers::batch_ids(&p.batch).zip(
                self.producers
                    .borrow()
                    .get(&(p.topic.clone(), p.partition))
                    .cloned(),
            );
            let me = self.clone();
            let key = (p.topic.clone(), p.partition);
            // Detached: the task runs to the end even when this request is dropped (its
            // connection gone), so a sequence it reserved is always settled.
            tasks.push((key, glommio::spawn_local(async move {
                let Some(log) = log else {
                    return ProduceResult {
                        topic: p.topic,
                        partition: p.partition,
                        error: WireError::new(ErrorCode::UnknownPartition, "partition is not on this shard"),
                        base_offset: -1,
                        record_errors: Vec::new(),
                    };
                };
                // A producer id this node did not issue is refused: a client must not
                // act as another producer (its batches would be taken for that one's
                // retries) (`producer_ids`).
                if let Some((ids, _)) = &producer
                    && !me.producer_ids.issued(ids.producer_id)
                {
                    return ProduceResult {
                        topic: p.topic,
                        partition: p.partition,
                        error: WireError::new(
                            ErrorCode::UnknownProducer,
                            format!(
                                "producer id {} was not issued by this broker; ask for one with InitProducerId",
                                ids.producer_id
                            ),
                        ),
                        base_offset: -1,
                        record_errors: Vec::new(),
                    };
                }
                // The topic's rules: records it refuses, the codec it stores in. Applied
                // before the sequence check, so a refused batch leaves no trace.
                let rewritten = match policy.as_ref().map(|pol| pol.apply(&p.batch, ringmq_storage::now_ms())) {
                    None | Some(Ok(None)) => None,
                    Some(Ok(Some(b))) => Some(b),
                    Some(Err(refused)) => {
                        tracing::info!(topic = %p.topic, partition = p.partition, error = %refused.message, "produce refused by the topic's configs");
                        return ProduceResult {
                            topic: p.topic,
                            partition: p.partition,
                            error: WireError::new(refused.code, refused.message),
                            base_offset: -1,
                            record_errors: refused.record_errors,
                        };
                    }
                };
                // Idempotent producers: checked before the first await, so batches are
                // checked in the order they arrived.
                if let Some((ids, state)) = &producer {
                    match state.borrow_mut().check(ids) {
                        Check::Append => {}
                        Check::Duplicate(base_offset) => {
                            return ProduceResult {
                                topic: p.topic,
                                partition: p.partition,
                                error: WireError::none(),
                                base_offset,
                                record_errors: Vec::new(),
                            };
                        }
                        Check::Refuse(error) => {
                            tracing::info!(topic = %p.topic, partition = p.partition, error = %error.message, "produce refused");
                            return ProduceResult {
                                topic: p.topic,
                                partition: p.partition,
                                error,
                                base_offset: -1,
                                record_errors: Vec::new(),
                            };
                        }
                    }
                }
                let batch = match &rewritten {
                    Some(b) => BytesMut::from(&b[..]),
                    None => BytesMut::from(&p.batch[..]),
                };
                if acks == 0 {
                    // Fire and forget: the append still runs to completion.
                    let me2 = me.clone();
                    glommio::spawn_local(async move {
                        let r = log.append(batch).await;
                        if let Some((ids, state)) = &producer {
                            state.borrow_mut().complete(ids, r.as_ref().ok().map(|a| a.base_offset));
                        }
                        if r.is_ok() {
                            me2.data_arrived.notify_all();
                        }
                    })
                    .detach();
                    return ProduceResult {
                        topic: p.topic,
                        partition: p.partition,
                        error: WireError::none(),
                        base_offset: -1,
                        record_errors: Vec::new(),
                    };
                }
                let r = log.append(batch).await;
                if let Some((ids, state)) = &producer {
                    state.borrow_mut().complete(ids, r.as_ref().ok().map(|a| a.base_offset));
                }
                match r {
                    Ok(at) => {
                        me.data_arrived.notify_all();
                        ProduceResult {
                            topic: p.topic,
                            partition: p.partition,
                            error: WireError::none(),
                            base_offset: at.base_offset,
                            record_errors: Vec::new(),
                        }
                    }
                    Err(e) => {
                        tracing::info!(topic = %p.topic, partition = p.partition, error = %e, "produce refused");
                        ProduceResult {
                            topic: p.topic,
                            partition: p.partition,
                            error: storage_error(&e),
                            base_offset: -1,
                            record_errors: Vec::new(),
                        }
                    }
                }
            }).detach()));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for ((topic, partition), t) in tasks {
            out.push(t.await.unwrap_or_else(|| ProduceResult {
                topic,
                partition,
                error: WireError::new(ErrorCode::Unavailable, "the shard is stopping"),
                base_offset: -1,
                record_errors: Vec::new(),
            }));
        }
        out
    }

    async fn fetch(
        self: Rc<Self>,
        max_wait_ms: u32,
        min_bytes: u32,
        max_bytes: u32,
        partitions: Vec<FetchPartition>,
    ) -> Response {
        let ops = Scatter {
            key: Box::new(|p: &FetchPartition| (p.topic.as_str(), p.partition)),
            failed: Box::new(|p: &FetchPartition, error| FetchResult {
                topic: p.topic.clone(),
                partition: p.partition,
                error,
                high_watermark: -1,
                start_offset: -1,
                records: Records::new(),
            }),
            local: Box::new(move |me, group| {
                Box::pin(async move {
                    me.fetch_local(max_wait_ms, min_bytes, max_bytes, group)
                        .await
                })
            }),
            request: Box::new(move |partitions| Request::Fetch {
                max_wait_ms,
                min_bytes,
                max_bytes,
                partitions,
            }),
            answer: Rc::new(|r| match r {
                Response::Fetch(v) => Some(v),
                _ => None,
            }),
        };
        let limits: Vec<usize> = partitions.iter().map(|p| p.max_bytes as usize).collect();
        let mut results = self.scatter(partitions, ops).await;
        limit_fetch(&mut results, &limits, max_bytes as usize);
        Response::Fetch(results)
    }

    /// Reads the partitions; if fewer than `min_bytes` came back, waits on the timing
    /// wheel until data arrives on this shard or `max_wait_ms` passes, and reads again.
    async fn fetch_local(
        self: &Rc<Self>,
        max_wait_ms: u32,
        min_bytes: u32,
        max_bytes: u32,
        partitions: Vec<FetchPartition>,
    ) -> Vec<FetchResult> {
        let deadline = Instant::now() + Duration::from_millis(u64::from(max_wait_ms));
        loop {
            // Register interest before reading, so an append in between is not missed.
            let arrived = self.data_arrived.changed();
            let mut total = 0usize;
            let mut out = Vec::with_capacity(partitions.len());
            for p in &partitions {
                let log = self
                    .partitions
                    .borrow()
                    .get(&(p.topic.clone(), p.partition))
                    .cloned();
                let Some(log) = log else {
                    out.push(FetchResult {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        error: WireError::new(
                            ErrorCode::UnknownPartition,
                            "partition is not on this shard",
                        ),
                        high_watermark: -1,
                        start_offset: -1,
                        records: Records::new(),
                    });
                    continue;
                };
                let budget = (max_bytes as usize)
                    .saturating_sub(total)
                    .min(p.max_bytes as usize);
                let (error, records) = if budget == 0 && total > 0 {
                    (WireError::none(), Records::new())
                } else {
                    match log.read(p.offset, budget.max(1)).await {
                        Ok(r) => {
                            for c in &r.chunks {
                                let counter = match c {
                                    ReadChunk::File { .. } => &self.fetch_file_bytes,
                                    ReadChunk::Memory(_) => &self.fetch_memory_bytes,
                                };
                                counter.set(counter.get() + c.len() as u64);
                            }
                            (WireError::none(), records_of(r))
                        }
                        Err(e) => (storage_error(&e), Records::new()),
                    }
                };
                total += records.len();
                out.push(FetchResult {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    error,
                    high_watermark: log.committed_offset(),
                    start_offset: log.start_offset(),
                    records,
                });
            }
            let any_error = out.iter().any(|r| !r.error.is_ok());
            if total >= min_bytes as usize
                || any_error
                || Instant::now() >= deadline
                || self.stopping.get()
            {
                return out;
            }
            futures_lite::future::or(arrived, self.timers.sleep_until(deadline)).await;
        }
    }

    /// Kafka's DeleteRecords: moves each partition's log start offset up to the given
    /// offset (-1: the high watermark). Returns (error, log start offset) per
    /// partition, in request order.
    pub async fn delete_records(
        self: Rc<Self>,
        parts: Vec<(String, u32, i64)>,
    ) -> Vec<(WireError, i64)> {
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            let r = match self.owner(&part.0, part.1) {
                Err(e) => (e, -1),
                Ok(owner) if owner == self.opts.shard_id => {
                    self.delete_records_local(vec![part]).await.remove(0)
                }
                Ok(owner) => match self.call(owner, Call::DeleteRecords(vec![part])).await {
                    Some(Reply::DeletedRecords(mut v)) if v.len() == 1 => v.remove(0),
                    _ => (
                        WireError::new(
                            ErrorCode::Unavailable,
                            format!("shard {owner} did not answer"),
                        ),
                        -1,
                    ),
                },
            };
            out.push(r);
        }
        out
    }

    /// The log of a partition this shard owns.
    fn local_log(&self, topic: &str, partition: u32) -> Result<Rc<PartitionLog>, WireError> {
        self.partitions
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::UnknownPartition,
                    "partition is not on this shard",
                )
            })
    }

    async fn delete_records_local(&self, parts: Vec<(String, u32, i64)>) -> Vec<(WireError, i64)> {
        let mut out = Vec::with_capacity(parts.len());
        for (t, p, offset) in parts {
            let log = match self.local_log(&t, p) {
                Ok(log) => log,
                Err(e) => {
                    out.push((e, -1));
                    continue;
                }
            };
            out.push(match log.delete_records_before(offset).await {
                Ok(start) => {
                    tracing::info!(topic = %t, partition = p, start, "records deleted: log start offset moved");
                    (WireError::none(), start)
                }
                Err(e) => (storage_error(&e), -1),
            });
        }
        out
    }

    async fn list_offsets(self: Rc<Self>, partitions: Vec<(String, u32, i64)>) -> Response {
        let ops = Scatter {
            key: Box::new(|p: &(String, u32, i64)| (p.0.as_str(), p.1)),
            failed: Box::new(|p: &(String, u32, i64), error| (p.0.clone(), p.1, error, -1, -1)),
            local: Box::new(|me, group| {
                Box::pin(async move { me.list_offsets_local(group).await })
            }),
            request: Box::new(|partitions| Request::ListOffsets { partitions }),
            answer: Rc::new(|r| match r {
                Response::Offsets(v) => Some(v),
                _ => None,
            }),
        };
        Response::Offsets(self.scatter(partitions, ops).await)
    }

    async fn list_offsets_local(
        self: &Rc<Self>,
        partitions: Vec<(String, u32, i64)>,
    ) -> Vec<(String, u32, WireError, i64, i64)> {
        let mut out = Vec::with_capacity(partitions.len());
        for (t, p, spec) in partitions {
            let log = match self.local_log(&t, p) {
                Ok(log) => log,
                Err(e) => {
                    out.push((t, p, e, -1, -1));
                    continue;
                }
            };
            let r = match spec {
                OFFSET_EARLIEST | OFFSET_EARLIEST_LOCAL => Ok(Some((log.start_offset(), -1))),
                OFFSET_LATEST => Ok(Some((log.committed_offset(), -1))),
                // No tiered storage: nothing has been tiered.
                OFFSET_LATEST_TIERED => Ok(None),
                OFFSET_MAX_TIMESTAMP => match log.max_timestamp() {
                    ts if ts >= 0 => log.record_for_timestamp(ts).await,
                    _ => Ok(None),
                },
                ts if ts >= 0 => log.record_for_timestamp(ts).await,
                other => {
                    out.push((
                        t,
                        p,
                        WireError::new(ErrorCode::InvalidRequest, format!("offset spec {other}")),
                        -1,
                        -1,
                    ));
                    continue;
                }
            };
            match r {
                // A record below the log start (DeleteRecords cut into its segment) is
                // not readable: the answer is the log start at the least.
                Ok(Some((o, ts))) => {
                    out.push((t, p, WireError::none(), o.max(log.start_offset()), ts))
                }
                Ok(None) => out.push((t, p, WireError::none(), -1, -1)),
                Err(e) => out.push((t, p, storage_error(&e), -1, -1)),
            }
        }
        out
    }
}

impl Handler for Shard {
    fn handle(self: Rc<Self>, request: Request) -> LocalFuture<Response> {
        Box::pin(self.handle_request(request))
    }

    fn sleep_until(&self, deadline: Instant) -> LocalFuture<()> {
        Box::pin(self.timers.sleep_until(deadline))
    }

    fn shard(&self) -> (u32, u32) {
        (self.opts.shard_id, self.opts.shard_count)
    }

    fn hand_over(self: Rc<Self>, to: u32, conn: Handoff) -> LocalFuture<bool> {
        Box::pin(async move {
            match self.peer(to) {
                Some(sender) => sender.send(Envelope::Connection(conn)).await.is_ok(),
                None => false,
            }
        })
    }
}

/// Holds a fetch answer to its size limits, as Kafka does (KIP-74): the records of all
/// partitions together stay within `max_bytes` and each partition's within its
/// `partition_max_bytes`, except that the first non-empty partition keeps its data
/// even when its first batch alone is larger (so a consumer can always make progress).
///
/// The shards read their partitions concurrently, each within `max_bytes` and with a
/// first batch allowed over the limit, so together they can exceed it. A partition
/// whose data does not fit what is left is answered with no records (and no error):
/// the client fetches it again. A partition's read is either within its limits or a
/// single batch larger than them, so this keeps or drops whole reads. Both front-ends
/// get it: it runs where a fetch entered, after its parts came back.
fn limit_fetch(results: &mut [FetchResult], partition_max: &[usize], max_bytes: usize) {
    let mut total = 0usize;
    for (i, r) in results.iter_mut().enumerate() {
        let len = r.records.len();
        if len == 0 {
            continue;
        }
        let part_max = partition_max.get(i).copied().unwrap_or(usize::MAX);
        let fits = len <= part_max && total + len <= max_bytes;
        if fits || total == 0 {
            total += len;
        } else {
            r.records = Records::new();
        }
    }
}
