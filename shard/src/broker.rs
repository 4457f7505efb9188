//! [`Shard`]: one core's broker. It owns the partitions placed on it and executes the
//! shard's operations ([`crate::ops`]) for the front-ends of the connections it
//! accepted: each many-partition operation is split by owner shard, this shard's part
//! runs on its own [`Partition`]s, and the other parts go over the bounded
//! cross-shard channels ([`crate::router`]) to the shards that own them.
//!
//! Shard-local state only: a `Shard` is created on its executor and never leaves it.
//! Its copy of the topic table is replaced whole when shard 0 (the metadata owner)
//! broadcasts a change. Nothing here takes a lock or touches another shard's memory.
//!
//! Work runs in glommio task queues with shares, so that one kind of traffic cannot
//! starve another: client requests (in their connections' queue), calls from other
//! shards, and housekeeping (see [`Queues`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{Latency, Shares, TaskQueueHandle};
use ringmq_net::conn::Handoff;
use ringmq_net::zerocopy::FileSender;
use ringmq_storage::{LogConfig, Notify, ReadChunk, SegmentCache};

use crate::cluster::{ClusterView, TopicAuthority};
use crate::error::{BrokerError, ErrorKind};
use crate::gate::Gate;
use crate::groups::{
    Coordinator, CoordinatorOptions, GroupLimits, GroupOp, GroupReply, Leading, OFFSETS_TOPIC,
    group_shard, offsets_partition,
};
use crate::metadata;
use crate::ops::{
    Acks, DeleteBefore, Deleted, EpochEnd, EpochQuery, Fetch, Fetched, OffsetFound, OffsetQuery,
    PartitionStats, ProducePart, Produced, TopicOp, TopicPartition,
};
use crate::partition::Partition;
use crate::producer_ids::{IdKey, ProducerIds};
use crate::producers;
use crate::replica::{Leadership, Outbox, ReplicaSettings};
use crate::router::{self, Call, Envelope, Part, Reply, Router};
use crate::timers::Timers;
use crate::topic_configs::TopicPolicy;
use crate::topics::{self, TopicMeta, TopicTable};

pub use crate::router::{Links, links};

/// Shard that owns topic metadata changes.
pub const METADATA_SHARD: u32 = 0;

/// Which node coordinates a consumer group ([`Shard::group_coordinator`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorNode {
    /// A single node, which coordinates every group itself, on `shard`.
    Single {
        /// The shard that keeps the group.
        shard: u32,
    },
    /// A cluster's node, possibly this one.
    Node {
        /// Its id.
        id: i32,
        /// Its listeners.
        node: crate::cluster::NodeInfo,
        /// The group's partition of [`OFFSETS_TOPIC`], which that node leads.
        partition: u32,
        /// That partition's leader epoch.
        leader_epoch: i32,
        /// Its shard that holds the partition (as this node places it).
        shard: u32,
    },
}

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
    /// The node's key for producer ids ([`IdKey::load_or_create`]; in a cluster, one
    /// key shared by every node, so each recognises the ids the others issued).
    pub producer_id_key: IdKey,
    /// The issuer field of the producer ids this shard issues: the shard's index alone,
    /// in a cluster unique over every shard of every node.
    pub producer_id_issuer: u32,
    /// `min.insync.replicas` of topics that do not set it (Kafka's broker setting of
    /// the same name).
    pub min_insync_replicas: i32,
    /// Bytes of acks=0 batches a shard appends at once; a client sending more waits
    /// (its connection stops being read) until earlier ones are appended.
    pub acks_none_bytes_max: u64,
    /// Kafka's `replica.lag.time.max.ms`: an in-sync follower that has not caught up
    /// for this long is removed from the ISR (cluster only).
    pub replica_lag_time_max_ms: u64,
    /// A node of a cluster: its topics come from the controller quorum's metadata.
    pub clustered: bool,
}

/// Default of [`ShardOptions::replica_lag_time_max_ms`] (Kafka's is 30 s).
pub const REPLICA_LAG_TIME_MAX_MS: u64 = 10_000;

/// Calls from other shards a shard executes at once; more are refused at once (the
/// calling shard answers its client Unavailable, which clients retry). Each call's
/// bytes are also held by the calling shard's request memory budget until answered;
/// this bounds the tasks and what outlives a caller that gave up (its call timeout).
pub const CALLS_IN_FLIGHT_MAX: u64 = 8192;

/// Default of [`ShardOptions::acks_none_bytes_max`]: 64 MiB per shard.
pub const ACKS_NONE_BYTES_MAX: u64 = 64 << 20;

/// The shard's task queues besides the one its connections run in (glommio's default
/// queue, 1000 shares), where client produce and fetch run. Shares split the core
/// between queues that all have work: calls from other shards (the other half of a
/// client request that arrived there) weigh as much as the connections, housekeeping
/// (interval flushes, retention) a tenth, so background work cannot delay a client.
/// Follower traffic will get its own queue.
///
/// Client produce and fetch stay in the connection's queue: moving each request's work
/// to a queue of its own cost 12 % of the produce throughput and 150 µs of median ack
/// latency in `benches/broker.sh` (a switch of task queue per request), with nothing to
/// balance it against while clients are the only traffic.
#[derive(Debug, Clone, Copy)]
pub struct Queues {
    /// Calls from other shards.
    pub forwarded: TaskQueueHandle,
    /// Interval flushes, retention.
    pub background: TaskQueueHandle,
}

impl Queues {
    fn create() -> Self {
        let q = |shares, name| {
            glommio::executor().create_task_queue(
                Shares::Static(shares),
                Latency::NotImportant,
                name,
            )
        };
        Self {
            forwarded: q(1000, "forwarded"),
            background: q(100, "background"),
        }
    }
}

/// Runs `fut` as a task in queue `tq`.
fn spawn_in<T: 'static>(
    tq: TaskQueueHandle,
    fut: impl Future<Output = T> + 'static,
) -> glommio::Task<T> {
    glommio::spawn_local_into(fut, tq).expect("the shard's task queues live as long as it")
}

/// The shard's counters.
#[derive(Debug, Default)]
struct Counters {
    fetch_memory_bytes: Cell<u64>,
    fetch_file_bytes: Cell<u64>,
    /// Request parts sent on to the shard that owns their partitions.
    forwarded: Cell<u64>,
}

/// What serves a native connection handed over from another shard (set by the server,
/// which owns the connection settings).
pub type Adopt = Box<dyn Fn(Handoff)>;

/// One core's broker.
pub struct Shard {
    opts: ShardOptions,
    cache: Rc<SegmentCache>,
    timers: Rc<Timers>,
    queues: Queues,
    router: Router,
    topics: RefCell<TopicTable>,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    data_arrived: Rc<Notify>,
    /// One topic change at a time (on the metadata shard).
    metadata_lock: glommio::sync::Semaphore,
    stopping: Cell<bool>,
    /// Tasks that must end before the logs close.
    gate: Rc<Gate>,
    /// Long polls of fetches that other shards (or this one) may stop early, by
    /// (calling shard, fetch id).
    fetch_stops: RefCell<HashMap<(u32, u64), Rc<Notify>>>,
    next_fetch_id: Cell<u64>,
    /// Calls from other shards being executed ([`CALLS_IN_FLIGHT_MAX`]).
    call_slots: Rc<glommio::sync::Semaphore>,
    calls_refused_logged: Cell<Option<Instant>>,
    /// Bytes of acks=0 appends under way.
    acks_none_budget: Rc<glommio::sync::Semaphore>,
    files: Rc<FileSender>,
    groups: Rc<Coordinator>,
    producer_ids: ProducerIds,
    adopt: RefCell<Option<Adopt>>,
    counters: Counters,
    /// Request counts and latencies for the metrics.
    metrics: crate::metrics::ShardMetrics,
    /// Client connections open on this shard (kept by the listener).
    connections: Rc<Cell<usize>>,
    /// The listener's memory budget, once set.
    memory_budget: RefCell<Option<Rc<ringmq_net::conn::MemoryBudget>>>,
    /// The cluster as the controller's metadata last said (`None`: a single node).
    cluster: RefCell<Option<Arc<ClusterView>>>,
    /// Where topic changes go in a cluster (set on the metadata shard).
    authority: RefCell<Option<Rc<dyn TopicAuthority>>>,
    /// ISR changes this shard's leaders ask the controller for.
    outbox: Rc<Outbox>,
    /// A creation of [`OFFSETS_TOPIC`] is under way ([`Shard::ensure_offsets_topic`]).
    creating_offsets: Cell<bool>,
    /// Time zero of the replication rules' millisecond clock.
    started: Instant,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("shard_id", &self.opts.shard_id)
            .finish()
    }
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
        Self::start_with_timers(opts, table, links, Timers::new()).await
    }

    /// [`Shard::start`] on given timers: a test passes [`Timers::manual`] to move the
    /// shard's time itself.
    pub async fn start_with_timers(
        opts: ShardOptions,
        table: TopicTable,
        links: Links,
        timers: Rc<Timers>,
    ) -> Result<Rc<Self>, String> {
        let cache = SegmentCache::new(opts.open_segments_max);
        let queues = Queues::create();
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
                clustered: opts.clustered,
            },
            timers.clone(),
            cache.clone(),
        )
        .await?;
        let producer_ids = ProducerIds::open(
            &opts.data_dir,
            opts.producer_id_key,
            opts.producer_id_issuer,
        )
        .await
        .map_err(|e| e.to_string())?;
        let (router, receivers) =
            Router::connect(opts.shard_id, links, opts.call_timeout, timers.clone()).await;
        let shard = Rc::new(Self {
            cache,
            timers: timers.clone(),
            queues,
            router,
            groups,
            topics: RefCell::new(TopicTable::default()),
            partitions: RefCell::new(HashMap::new()),
            data_arrived: Rc::new(Notify::new()),
            metadata_lock: glommio::sync::Semaphore::new(1),
            stopping: Cell::new(false),
            gate: Gate::new(),
            call_slots: Rc::new(glommio::sync::Semaphore::new(CALLS_IN_FLIGHT_MAX)),
            calls_refused_logged: Cell::new(None),
            fetch_stops: RefCell::new(HashMap::new()),
            next_fetch_id: Cell::new(1),
            acks_none_budget: Rc::new(glommio::sync::Semaphore::new(
                opts.acks_none_bytes_max.max(1),
            )),
            files: FileSender::new(opts.zero_copy),
            producer_ids,
            adopt: RefCell::new(None),
            counters: Counters::default(),
            metrics: Default::default(),
            connections: Rc::new(Cell::new(0)),
            memory_budget: RefCell::new(None),
            cluster: RefCell::new(None),
            authority: RefCell::new(None),
            outbox: Outbox::new(),
            creating_offsets: Cell::new(false),
            started: timers.now(),
            opts,
        });
        let weak = Rc::downgrade(&shard);
        shard.groups.set_partition_counts(Box::new(move |t| {
            weak.upgrade()?.topic(t).map(|m| m.partitions)
        }));
        glommio::spawn_local(shard.timers.clone().run()).detach();
        // Open our partitions before serving calls from other shards: until then their
        // calls wait in the bounded channels.
        shard.apply_topics(table).await?;
        for (from, rx) in receivers {
            let me = shard.clone();
            spawn_in(shard.queues.forwarded, async move {
                while let Some(env) = rx.recv().await {
                    // A call past the shard's limit of calls in flight is answered
                    // at once as refused (the caller answers Unavailable, which
                    // clients retry); replies and handed-over connections always go on.
                    let slot = match &env {
                        Envelope::Call { .. } => match me.call_slots.try_acquire_static_permit(1) {
                            Ok(slot) => Some(slot),
                            Err(_) => {
                                me.refuse_call(env);
                                continue;
                            }
                        },
                        _ => None,
                    };
                    let me2 = me.clone();
                    spawn_in(me.queues.forwarded, async move {
                        let _slot = slot;
                        me2.on_envelope(env).await
                    })
                    .detach();
                }
                tracing::debug!(shard = me.opts.shard_id, from, "cross-shard channel closed");
            })
            .detach();
        }
        let me = shard.clone();
        spawn_in(
            shard.queues.background,
            async move { me.housekeeping().await },
        )
        .detach();
        Ok(shard)
    }

    /// The partitions this shard holds.
    pub fn partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// This node's id in the cluster (0 for a single node, or before the cluster's
    /// metadata arrived).
    pub fn node_id(&self) -> i32 {
        self.cluster.borrow().as_ref().map_or(0, |v| v.me)
    }

    /// Whether this node is part of a cluster (whether or not its metadata arrived).
    pub fn clustered(&self) -> bool {
        self.opts.clustered
    }

    /// The cluster as this shard last learned it (`None`: a single node, or a cluster
    /// node that has not learned the metadata yet).
    pub fn cluster(&self) -> Option<Arc<ClusterView>> {
        self.cluster.borrow().clone()
    }

    /// Sends topic changes to `authority` (the controller) instead of this node's own
    /// table; set on the metadata shard of a cluster node.
    pub fn set_topic_authority(&self, authority: Rc<dyn TopicAuthority>) {
        *self.authority.borrow_mut() = Some(authority);
    }

    /// The ISR changes this shard's leaders ask for.
    pub fn outbox(&self) -> &Rc<Outbox> {
        &self.outbox
    }

    /// Milliseconds on the shard's clock since it started (the replication rules'
    /// time).
    pub fn now_ms(&self) -> u64 {
        self.timers.now().duration_since(self.started).as_millis() as u64
    }

    /// The shard that owns `tp`, or the error to answer. A cluster node that has not yet
    /// learned the cluster's metadata (it is starting) answers LEADER_NOT_AVAILABLE,
    /// which clients retry, rather than calling the topic unknown.
    fn owner(&self, table: &TopicTable, tp: &TopicPartition) -> Result<u32, BrokerError> {
        metadata::owner(table, tp).map_err(|e| {
            if self.opts.clustered && self.cluster.borrow().is_none() {
                BrokerError::new(
                    ErrorKind::LeaderNotAvailable,
                    "this node is starting: it has not learned the cluster's metadata yet",
                )
            } else {
                e
            }
        })
    }

    /// The error for a partition the table places on this shard that the shard does not
    /// hold. In a cluster that is a partition this node is not a replica of, or one it
    /// is still opening (it is starting, or the partition just moved here):
    /// NOT_LEADER_OR_FOLLOWER, so clients refresh their metadata and retry, as Kafka
    /// answers. On a single node, a change of the topic table is under way.
    fn not_here(&self, tp: &TopicPartition) -> BrokerError {
        if self.opts.clustered {
            BrokerError::new(
                ErrorKind::NotLeader,
                format!("node {} does not hold partition {tp} (yet)", self.node_id()),
            )
        } else {
            BrokerError::new(
                ErrorKind::UnknownPartition,
                "partition is not on this shard",
            )
        }
    }

    fn replica_settings(&self) -> ReplicaSettings {
        ReplicaSettings {
            replica_lag_time_max_ms: self.opts.replica_lag_time_max_ms,
        }
    }

    /// Takes the cluster's metadata on every shard, in order: called on the metadata
    /// shard by the cluster driver, which waits for it before applying the next.
    pub async fn apply_cluster(self: &Rc<Self>, view: Arc<ClusterView>) -> Result<(), String> {
        let errors = self
            .on_every_shard(
                || self.apply_cluster_here(view.clone()),
                || Call::ApplyCluster(view.clone()),
            )
            .await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Applies a change on every shard in shard order: this one by `here`, the others by
    /// the call `call` makes. Returns each failure, naming its shard.
    async fn on_every_shard<Fut>(
        &self,
        here: impl Fn() -> Fut,
        call: impl Fn() -> Call,
    ) -> Vec<String>
    where
        Fut: Future<Output = Result<(), String>>,
    {
        let mut errors = Vec::new();
        for shard in 0..self.opts.shard_count {
            let r = if shard == self.opts.shard_id {
                here().await
            } else {
                match self.router.call(shard, call()).await {
                    Some(Reply::Applied(r)) => r,
                    _ => Err(format!("shard {shard} did not answer")),
                }
            };
            if let Err(e) = r {
                errors.push(format!("shard {shard}: {e}"));
            }
        }
        errors
    }

    /// This shard's part of [`Shard::apply_cluster`]: the topic table, the hosted
    /// partitions opened or closed, and each one's role.
    async fn apply_cluster_here(self: &Rc<Self>, view: Arc<ClusterView>) -> Result<(), String> {
        *self.cluster.borrow_mut() = Some(view.clone());
        // The table first: while partitions open, a request for one finds its topic and
        // gets NOT_LEADER_OR_FOLLOWER (retried) rather than UNKNOWN_TOPIC_OR_PARTITION.
        *self.topics.borrow_mut() = view.topics.clone();
        let hosted = |tp: &TopicPartition| view.hosts(tp);
        self.apply_topics_hosted(view.topics.clone(), &hosted)
            .await?;
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let mut errors = Vec::new();
        let mut offsets_led = Vec::new();
        for p in parts {
            let Some(pv) = view.partition(p.tp()) else {
                continue;
            };
            match pv.leader {
                // Metadata from before this process's registration (a restart replays
                // it) may name this node leader of an epoch it cannot lead again.
                Some(l) if l == view.me && !view.registered => p.stand_by(),
                Some(l) if l == view.me => {
                    let leadership = Leadership {
                        me: view.me,
                        leader_epoch: pv.leader_epoch,
                        partition_epoch: pv.partition_epoch,
                        replicas: pv.replicas.clone(),
                        isr: pv.isr.clone(),
                    };
                    if let Err(e) = p
                        .lead(
                            leadership,
                            self.replica_settings(),
                            self.outbox.clone(),
                            self.now_ms(),
                        )
                        .await
                    {
                        errors.push(e.message);
                    } else if p.tp().topic == OFFSETS_TOPIC {
                        offsets_led.push(Leading {
                            partition: p.clone(),
                            epoch: pv.leader_epoch,
                        });
                    }
                }
                Some(l) => p.follow(view.me, l, pv.leader_epoch),
                None => p.stand_by(),
            }
        }
        let offsets_partitions = view.topics.topics.get(OFFSETS_TOPIC).map(|m| m.partitions);
        self.groups.lead_offsets(offsets_partitions, offsets_led);
        self.data_arrived.notify_all();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
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

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.opts.shard_count
    }

    /// The shard's timers.
    pub fn timers(&self) -> &Rc<Timers> {
        &self.timers
    }

    /// Sends fetched file ranges for this shard's connections.
    pub fn file_sender(&self) -> Rc<FileSender> {
        self.files.clone()
    }

    /// The log settings a topic's configs start from.
    pub fn log_defaults(&self) -> LogConfig {
        self.opts.log_defaults.clone()
    }

    /// The broker's `min.insync.replicas` for topics that do not set it.
    pub fn min_insync_replicas(&self) -> i32 {
        self.opts.min_insync_replicas
    }

    /// A topic's metadata, from this shard's copy of the topic table.
    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.topics.borrow().topics.get(name).cloned()
    }

    /// Whether a topic exists (without copying its metadata).
    pub fn has_topic(&self, name: &str) -> bool {
        self.topics.borrow().topics.contains_key(name)
    }

    /// The names of all topics.
    pub fn topic_names(&self) -> Vec<String> {
        self.topics.borrow().topics.keys().cloned().collect()
    }

    /// The name of the topic with id `id`.
    pub fn topic_by_id(&self, id: u32) -> Option<String> {
        self.topics
            .borrow()
            .topics
            .iter()
            .find(|(_, m)| m.id == id)
            .map(|(n, _)| n.clone())
    }

    /// Number of partitions this shard owns.
    pub fn partition_count(&self) -> usize {
        self.partitions.borrow().len()
    }

    /// A partition this shard owns.
    pub fn partition(&self, tp: &TopicPartition) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(tp).cloned()
    }

    /// A new producer id for sequenced (idempotent) produce, on either protocol: never
    /// issued before on this node ([`ProducerIds`]).
    pub async fn new_producer_id(&self) -> Result<i64, BrokerError> {
        self.producer_ids.issue().await.map_err(|e| {
            tracing::error!(shard = self.opts.shard_id, error = %e, "issuing a producer id failed");
            BrokerError::new(ErrorKind::Storage, e.to_string())
        })
    }

    /// In a cluster, creates [`OFFSETS_TOPIC`] if it does not exist yet (as Kafka does
    /// at the first FindCoordinator): [`crate::groups::OFFSETS_TOPIC_PARTITIONS`]
    /// partitions, one replica per node up to
    /// [`crate::groups::OFFSETS_TOPIC_REPLICATION_FACTOR`], no retention. Runs in the
    /// background, one creation at a time; until it is done, group requests are
    /// answered COORDINATOR_NOT_AVAILABLE, which clients retry.
    pub fn ensure_offsets_topic(self: &Rc<Self>) {
        let Some(view) = self.cluster() else {
            return;
        };
        if self.has_topic(OFFSETS_TOPIC) || !view.registered || self.creating_offsets.get() {
            return;
        }
        let rf = u16::try_from(view.nodes.len())
            .unwrap_or(u16::MAX)
            .clamp(1, crate::groups::OFFSETS_TOPIC_REPLICATION_FACTOR);
        self.creating_offsets.set(true);
        let me = self.clone();
        glommio::spawn_local(async move {
            let r = me
                .change_topics(TopicOp::Create {
                    name: OFFSETS_TOPIC.to_string(),
                    partitions: crate::groups::OFFSETS_TOPIC_PARTITIONS,
                    configs: crate::groups::offsets_topic_configs(),
                    replication_factor: Some(rf),
                    validate_only: false,
                })
                .await;
            match r {
                Ok(()) => tracing::info!(replication_factor = rf, "created {OFFSETS_TOPIC}, the consumer groups' topic"),
                Err(e) if e.kind == ErrorKind::TopicExists => {}
                Err(e) => tracing::warn!(error = %e.message, "creating {OFFSETS_TOPIC} failed; the next group request tries again"),
            }
            me.creating_offsets.set(false);
        })
        .detach();
    }

    /// The node that coordinates `group`, for FindCoordinator on either protocol: on a
    /// single node, this one; in a cluster, the leader of the group's partition of
    /// [`OFFSETS_TOPIC`] (creating the topic if it does not exist yet). Errors with
    /// CoordinatorNotAvailable, which clients retry, while the topic is being created,
    /// while the partition has no leader, or while its leader is fenced.
    pub fn group_coordinator(self: &Rc<Self>, group: &str) -> Result<CoordinatorNode, BrokerError> {
        let not_available = |why: String| BrokerError::new(ErrorKind::CoordinatorNotAvailable, why);
        let Some(c) = self.cluster() else {
            if self.opts.clustered {
                return Err(not_available(
                    "this node is starting: it has not learned the cluster's metadata yet".into(),
                ));
            }
            return Ok(CoordinatorNode::Single {
                shard: group_shard(group, self.opts.shard_count),
            });
        };
        let Some(partitions) = self.topic(OFFSETS_TOPIC).map(|t| t.partitions) else {
            self.ensure_offsets_topic();
            return Err(not_available(format!(
                "the group coordinators are starting: creating topic {OFFSETS_TOPIC}"
            )));
        };
        let tp = TopicPartition::new(OFFSETS_TOPIC, offsets_partition(group, partitions));
        let Some((id, leader_epoch)) = c
            .partition(&tp)
            .and_then(|pv| pv.leader.map(|l| (l, pv.leader_epoch)))
        else {
            return Err(not_available(format!(
                "partition {tp} has no leader: an election is under way"
            )));
        };
        match c.nodes.get(&id) {
            Some(n) if !n.fenced => Ok(CoordinatorNode::Node {
                id,
                node: n.clone(),
                partition: tp.partition,
                leader_epoch,
                shard: self.offsets_shard(group),
            }),
            _ => Err(not_available(format!(
                "node {id}, the coordinator of this group, is not available"
            ))),
        }
    }

    /// Answers a consumer-group operation: here if this shard coordinates the group,
    /// else on the shard that does ([`group_shard`]); `wait` is how long it may
    /// legitimately take (a join waits for its rebalance). `None` when that shard did
    /// not answer.
    pub async fn group_request(&self, op: GroupOp, wait: Duration) -> Option<GroupReply> {
        let owner = match op.group() {
            Some(g) if self.opts.clustered => self.offsets_shard(g),
            Some(g) => group_shard(g, self.opts.shard_count),
            None => self.opts.shard_id,
        };
        self.group_request_on(owner, op, wait).await
    }

    /// In a cluster: the shard holding `group`'s partition of [`OFFSETS_TOPIC`] (this
    /// one until the topic exists; its coordinator then answers that it is not ready).
    fn offsets_shard(&self, group: &str) -> u32 {
        let table = self.topics.borrow();
        table
            .topics
            .get(OFFSETS_TOPIC)
            .and_then(|m| {
                let p = offsets_partition(group, m.partitions);
                m.placement.get(p as usize).copied()
            })
            .unwrap_or(self.opts.shard_id)
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
        match self.router.call(shard, Call::Group { op, wait }).await {
            Some(Reply::Group(r)) => Some(*r),
            _ => None,
        }
    }

    /// Flushes and closes every partition this shard owns (clean shutdown), after the
    /// appends under way have ended.
    pub async fn shutdown(&self) {
        self.stopping.set(true);
        // Long polls return now.
        self.data_arrived.notify_all();
        self.gate.close().await;
        self.timers.stop();
        self.groups.close().await;
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            if let Err(e) = p.log().close().await {
                tracing::error!(partition = %p.tp(), error = %e, "closing partition failed");
            }
        }
    }

    async fn housekeeping(self: Rc<Self>) {
        let mut last_retention = self.timers.now();
        let mut last_checkpoint_s = 0u64;
        while !self.stopping.get() {
            self.timers
                .sleep_until(self.timers.now() + Duration::from_millis(100))
                .await;
            let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
            let now = ringmq_storage::now_ms();
            let retention_due =
                self.timers.now().duration_since(last_retention) >= Duration::from_secs(30);
            let now_ms = self.now_ms();
            let checkpoint_due = now_ms / 1000 != last_checkpoint_s;
            last_checkpoint_s = now_ms / 1000;
            for p in parts {
                p.tick(now_ms);
                if checkpoint_due && p.is_replicated() {
                    p.checkpoint_high_watermark().await;
                }
                let log = p.log();
                if let Err(e) = log.sync_if_due(now).await {
                    tracing::warn!(partition = %p.tp(), error = %e, "interval flush failed");
                }
                if retention_due && let Err(e) = log.apply_retention(now).await {
                    tracing::warn!(partition = %p.tp(), error = %e, "retention failed");
                }
            }
            if retention_due {
                last_retention = self.timers.now();
            }
        }
    }

    /// Runs a many-partition operation where each part's partition lives: `run(shard,
    /// owner, parts)` runs one owner's parts (here, or by a call to that shard),
    /// `None` when that shard did not answer. Results come back in request order; a
    /// part with no owner (unknown topic or partition) gets its error.
    async fn on_owners<P, F, Fut>(self: &Rc<Self>, parts: Vec<P>, run: F) -> Vec<P::Result>
    where
        P: Part + 'static,
        P::Result: 'static,
        F: Fn(Rc<Self>, u32, Vec<P>) -> Fut,
        Fut: Future<Output = Option<Vec<P::Result>>> + 'static,
    {
        let mut plan = {
            let table = self.topics.borrow();
            router::split(parts, |tp| self.owner(&table, tp))
        };
        let mut running = Vec::new();
        for (owner, positions, ps) in std::mem::take(&mut plan.by_owner) {
            let tps: Vec<TopicPartition> = ps.iter().map(|p| p.tp().clone()).collect();
            if owner != self.opts.shard_id {
                self.counters
                    .forwarded
                    .set(self.counters.forwarded.get() + 1);
            }
            running.push((owner, positions, tps, run(self.clone(), owner, ps)));
        }
        let mut answers = Vec::with_capacity(running.len());
        if running.len() == 1 {
            // One owner (the common case): no task to spawn.
            let (owner, positions, tps, fut) = running.pop().expect("one");
            let r = fut
                .await
                .ok_or_else(|| (tps, BrokerError::shard_silent(owner)));
            answers.push((positions, r));
        } else {
            let tasks: Vec<_> = running
                .into_iter()
                .map(|(owner, positions, tps, fut)| {
                    (owner, positions, tps, glommio::spawn_local(fut))
                })
                .collect();
            for (owner, positions, tps, task) in tasks {
                let r = task
                    .await
                    .ok_or_else(|| (tps, BrokerError::shard_silent(owner)));
                answers.push((positions, r));
            }
        }
        plan.join(answers)
    }

    /// Produces batches to their partitions. With `Acks::None` each result is
    /// `Ok(-1)` once the append has started.
    pub async fn produce(self: &Rc<Self>, acks: Acks, parts: Vec<ProducePart>) -> Vec<Produced> {
        let started = Instant::now();
        let out = self
            .on_owners(parts, move |me, owner, parts| async move {
                if owner == me.opts.shard_id {
                    return Some(me.produce_here(acks, parts).await);
                }
                match me.router.call(owner, Call::Produce { acks, parts }).await {
                    Some(Reply::Produced(v)) => Some(v),
                    _ => None,
                }
            })
            .await;
        let acks_index = match acks {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => 2,
        };
        self.metrics.produced(acks_index, started.elapsed());
        for p in &out {
            if let Err(e) = &p.result {
                self.metrics.failed("produce", e.kind);
            }
        }
        out
    }

    /// Produce to partitions this shard owns. Each part's append runs in its own task
    /// (in the caller's task queue), to its end even when the request is dropped (its client
    /// gone): a sequence it reserved is always settled.
    async fn produce_here(self: &Rc<Self>, acks: Acks, parts: Vec<ProducePart>) -> Vec<Produced> {
        let mut running = Vec::with_capacity(parts.len());
        for part in parts {
            if part.tp.topic == OFFSETS_TOPIC {
                let e = BrokerError::new(
                    ErrorKind::InvalidTopic,
                    format!("{OFFSETS_TOPIC} is internal: only the group coordinators write to it"),
                );
                running.push(Err(Produced::failed(part.tp, e)));
                continue;
            }
            let Some(partition) = self.partition(&part.tp) else {
                let e = self.not_here(&part.tp);
                running.push(Err(Produced::failed(part.tp, e)));
                continue;
            };
            // A producer id this node did not issue is refused: a client must not act
            // as another producer (its batches would be taken for that one's retries).
            if let Some(ids) = producers::batch_ids(&part.batch)
                && !self.producer_ids.issued(ids.producer_id)
            {
                let e = BrokerError::new(
                    ErrorKind::UnknownProducer,
                    format!(
                        "producer id {} was not issued by this broker; ask for one with InitProducerId",
                        ids.producer_id
                    ),
                );
                running.push(Err(Produced::failed(part.tp, e)));
                continue;
            }
            let Some(pass) = self.gate.enter() else {
                running.push(Err(Produced::failed(part.tp, stopping())));
                continue;
            };
            // acks=0 appends are not awaited: their bytes count against the shard's
            // budget, and a client over it waits here for earlier ones to finish.
            let budget = if acks == Acks::None {
                let bytes =
                    (part.batch.len() as u64).clamp(1, self.opts.acks_none_bytes_max.max(1));
                match self.acks_none_budget.acquire_static_permit(bytes).await {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        running.push(Err(Produced::failed(part.tp, stopping())));
                        continue;
                    }
                }
            } else {
                None
            };
            let me = self.clone();
            let ProducePart { tp, batch } = part;
            let answer_tp = tp.clone();
            let task = glommio::spawn_local(async move {
                let _pass = pass;
                let _budget = budget;
                let bytes = batch.len() as u64;
                let r = partition
                    .produce(batch, acks, ringmq_storage::now_ms())
                    .await;
                if let Ok(a) = &r {
                    partition
                        .traffic
                        .appended((a.end_offset - a.base_offset).max(0) as u64, bytes);
                    me.data_arrived.notify_all();
                }
                match r {
                    Ok(a) => Produced {
                        tp,
                        result: Ok(if acks == Acks::None {
                            -1
                        } else {
                            a.base_offset
                        }),
                        record_errors: Vec::new(),
                    },
                    Err((e, record_errors)) => Produced {
                        tp,
                        result: Err(e),
                        record_errors,
                    },
                }
            })
            .detach();
            if acks == Acks::None {
                running.push(Err(Produced {
                    tp: answer_tp,
                    result: Ok(-1),
                    record_errors: Vec::new(),
                }));
            } else {
                running.push(Ok((answer_tp, task)));
            }
        }
        let mut out = Vec::with_capacity(running.len());
        for r in running {
            out.push(match r {
                Err(done) => done,
                Ok((tp, task)) => task
                    .await
                    .unwrap_or_else(|| Produced::failed(tp, stopping())),
            });
        }
        out
    }

    /// Fetches from the partitions, held to the fetch's size limits (KIP-74).
    ///
    /// Each owner shard reads its part and, while it has less than `min_bytes`, waits
    /// for data up to the max wait. As soon as the parts answered so far hold
    /// `min_bytes` (or an error), the parts still waiting are stopped and answer with
    /// what they have: data arriving on one shard answers the fetch without waiting
    /// out the max wait on the others.
    pub async fn fetch(self: &Rc<Self>, fetch: Fetch) -> Vec<Fetched> {
        let started = Instant::now();
        let follower = matches!(fetch.reader, crate::ops::Reader::Follower { .. });
        let out = self.fetch_unmetered(fetch).await;
        self.metrics.fetched(follower, started.elapsed());
        for f in &out {
            if let Err(e) = &f.records {
                self.metrics.failed("fetch", e.kind);
            }
        }
        out
    }

    async fn fetch_unmetered(self: &Rc<Self>, fetch: Fetch) -> Vec<Fetched> {
        let limits: Vec<usize> = fetch.parts.iter().map(|p| p.max_bytes as usize).collect();
        let Fetch {
            reader,
            max_wait,
            min_bytes,
            max_bytes,
            parts,
        } = fetch;
        let mut plan = {
            let table = self.topics.borrow();
            router::split(parts, |tp| self.owner(&table, tp))
        };
        let id = self.next_fetch_id.get();
        self.next_fetch_id.set(id + 1);
        let owners: Vec<(u32, Vec<usize>, Vec<TopicPartition>)> = plan
            .by_owner
            .iter()
            .map(|(owner, positions, ps)| {
                (
                    *owner,
                    positions.clone(),
                    ps.iter().map(|p| p.tp.clone()).collect(),
                )
            })
            .collect();
        // Each owner's answer arrives on this channel, tagged with its index.
        let (tx, rx) = glommio::channels::local_channel::new_unbounded();
        let tx = Rc::new(tx);
        for (k, (owner, _, ps)) in std::mem::take(&mut plan.by_owner).into_iter().enumerate() {
            let f = Fetch {
                reader,
                max_wait,
                min_bytes,
                max_bytes,
                parts: ps,
            };
            let me = self.clone();
            let tx = tx.clone();
            let task = async move {
                let r = if owner == me.opts.shard_id {
                    Some(me.fetch_here(f, Some((me.opts.shard_id, id))).await)
                } else {
                    me.counters.forwarded.set(me.counters.forwarded.get() + 1);
                    match me.router.call(owner, Call::Fetch { fetch: f, id }).await {
                        Some(Reply::Fetched(v)) => Some(v),
                        _ => None,
                    }
                };
                let _ = tx.try_send((k, r));
            };
            glommio::spawn_local(task).detach();
        }
        drop(tx);
        let mut answers: Vec<Option<Option<Vec<Fetched>>>> = owners.iter().map(|_| None).collect();
        let (mut total, mut stopped, mut left) = (0usize, false, owners.len());
        while left > 0 {
            let Some((k, r)) = rx.recv().await else { break };
            left -= 1;
            if let Some(v) = &r {
                total += v.iter().map(Fetched::len).sum::<usize>();
                if v.iter().any(|f| f.records.is_err()) {
                    total = usize::MAX;
                }
            }
            answers[k] = Some(r);
            if !stopped && left > 0 && total >= min_bytes as usize {
                stopped = true;
                for (j, (owner, _, _)) in owners.iter().enumerate() {
                    if answers[j].is_none() {
                        self.stop_fetch(*owner, id);
                    }
                }
            }
        }
        let joined = owners
            .into_iter()
            .zip(answers)
            .map(|((owner, positions, tps), a)| {
                let r = a
                    .flatten()
                    .ok_or_else(|| (tps, BrokerError::shard_silent(owner)));
                (positions, r)
            })
            .collect();
        let mut results = plan.join(joined);
        limit_fetch(&mut results, &limits, max_bytes as usize);
        results
    }

    /// Stops the long poll of this shard's fetch `id` on shard `owner`.
    fn stop_fetch(self: &Rc<Self>, owner: u32, id: u64) {
        if owner == self.opts.shard_id {
            if let Some(n) = self.fetch_stops.borrow().get(&(owner, id)) {
                n.notify_all();
            }
            return;
        }
        let me = self.clone();
        glommio::spawn_local(async move {
            let _ = me.router.call(owner, Call::StopFetch { id }).await;
        })
        .detach();
    }

    /// Reads the partitions; if fewer than `min_bytes` came back, waits on the timing
    /// wheel until data arrives on this shard or the max wait passes, and reads again.
    /// `stop`: (calling shard, fetch id) under which [`Call::StopFetch`] can end the
    /// wait early.
    async fn fetch_here(self: &Rc<Self>, f: Fetch, stop: Option<(u32, u64)>) -> Vec<Fetched> {
        let deadline = self.timers.now() + f.max_wait;
        let stopped = Rc::new(Notify::new());
        let _registered = stop.map(|key| {
            self.fetch_stops.borrow_mut().insert(key, stopped.clone());
            StopRegistration {
                shard: self.clone(),
                key,
            }
        });
        let mut stop_now = false;
        let mut first_round = true;
        loop {
            let stop_signal = stopped.changed();
            // Register interest before reading, so an append in between is not missed.
            let arrived = self.data_arrived.changed();
            let mut total = 0usize;
            let mut any_error = false;
            let mut out = Vec::with_capacity(f.parts.len());
            for p in &f.parts {
                let Some(partition) = self.partition(&p.tp) else {
                    any_error = true;
                    out.push(Fetched::failed(p.tp.clone(), self.not_here(&p.tp)));
                    continue;
                };
                let budget = (f.max_bytes as usize)
                    .saturating_sub(total)
                    .min(p.max_bytes as usize);
                let counted = match (f.reader, first_round) {
                    (
                        crate::ops::Reader::Follower {
                            replica_id,
                            leader_epoch,
                        },
                        true,
                    ) => partition.follower_fetched(
                        replica_id,
                        p.leader_epoch.unwrap_or(leader_epoch),
                        p.offset,
                        p.durable_offset.unwrap_or(-1).max(0),
                        self.now_ms(),
                    ),
                    _ => Ok(()),
                };
                let records = if let Err(e) = counted {
                    Err(e)
                } else if let Err(e) = partition.check_epoch(p.leader_epoch) {
                    Err(e)
                } else if budget == 0 && total > 0 {
                    Ok(ringmq_net::codec::Records::new())
                } else {
                    match partition.read(p.offset, budget.max(1), f.reader).await {
                        Ok(r) => {
                            partition.traffic.read(
                                matches!(f.reader, crate::ops::Reader::Follower { .. }),
                                (r.next_offset - p.offset).max(0) as u64,
                                r.len() as u64,
                            );
                            for c in &r.chunks {
                                let counter = match c {
                                    ReadChunk::File { .. } => &self.counters.fetch_file_bytes,
                                    ReadChunk::Memory(_) => &self.counters.fetch_memory_bytes,
                                };
                                counter.set(counter.get() + c.len() as u64);
                            }
                            Ok(records_of(r))
                        }
                        Err(e) => Err(e),
                    }
                };
                any_error |= records.is_err();
                total += records.as_ref().map_or(0, |r| r.len());
                let hw = partition.high_watermark();
                out.push(Fetched {
                    tp: p.tp.clone(),
                    records,
                    high_watermark: hw,
                    last_stable_offset: hw,
                    log_start_offset: partition.log_start_offset(),
                });
            }
            first_round = false;
            if total >= f.min_bytes as usize
                || any_error
                || stop_now
                || self.timers.now() >= deadline
                || self.stopping.get()
            {
                return out;
            }
            let woken = futures_lite::future::or(
                async {
                    futures_lite::future::or(arrived, self.timers.sleep_until(deadline)).await;
                    false
                },
                async {
                    stop_signal.await;
                    true
                },
            )
            .await;
            // Stopped: read once more and answer with what is there.
            stop_now |= woken;
        }
    }

    /// Looks up offsets (ListOffsets).
    pub async fn list_offsets(self: &Rc<Self>, queries: Vec<OffsetQuery>) -> Vec<OffsetFound> {
        self.on_owners(queries, |me, owner, queries| async move {
            if owner == me.opts.shard_id {
                return Some(me.list_offsets_here(queries).await);
            }
            match me.router.call(owner, Call::ListOffsets(queries)).await {
                Some(Reply::Offsets(v)) => Some(v),
                _ => None,
            }
        })
        .await
    }

    async fn list_offsets_here(&self, queries: Vec<OffsetQuery>) -> Vec<OffsetFound> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            let result = match self.partition(&q.tp) {
                None => Err(self.not_here(&q.tp)),
                Some(p) => match p.check_epoch(q.leader_epoch) {
                    Err(e) => Err(e),
                    Ok(()) => p
                        .offset_for(q.spec)
                        .await
                        .map(|found| found.map(|(o, ts)| (o, ts, p.epoch_at(o)))),
                },
            };
            out.push(OffsetFound { tp: q.tp, result });
        }
        out
    }

    /// Where leader epochs end (OffsetForLeaderEpoch), from each partition's history.
    pub async fn end_of_epochs(self: &Rc<Self>, queries: Vec<EpochQuery>) -> Vec<EpochEnd> {
        self.on_owners(queries, |me, owner, queries| async move {
            if owner == me.opts.shard_id {
                return Some(me.end_of_epochs_here(queries));
            }
            match me.router.call(owner, Call::EpochEnds(queries)).await {
                Some(Reply::EpochEnds(v)) => Some(v),
                _ => None,
            }
        })
        .await
    }

    fn end_of_epochs_here(&self, queries: Vec<EpochQuery>) -> Vec<EpochEnd> {
        queries
            .into_iter()
            .map(|q| match self.partition(&q.tp) {
                None => EpochEnd {
                    result: Err(self.not_here(&q.tp)),
                    tp: q.tp,
                },
                Some(p) => match p.check_epoch(q.current_leader_epoch) {
                    Err(e) => EpochEnd {
                        tp: q.tp,
                        result: Err(e),
                    },
                    Ok(()) => p.end_of_epoch(q.leader_epoch),
                },
            })
            .collect()
    }

    /// Kafka's DeleteRecords: moves each partition's log start offset up to the given
    /// offset (-1: the high watermark).
    pub async fn delete_records(self: &Rc<Self>, parts: Vec<DeleteBefore>) -> Vec<Deleted> {
        self.on_owners(parts, |me, owner, parts| async move {
            if owner == me.opts.shard_id {
                return Some(me.delete_records_here(parts).await);
            }
            match me.router.call(owner, Call::DeleteRecords(parts)).await {
                Some(Reply::Deleted(v)) => Some(v),
                _ => None,
            }
        })
        .await
    }

    async fn delete_records_here(&self, parts: Vec<DeleteBefore>) -> Vec<Deleted> {
        let mut out = Vec::with_capacity(parts.len());
        for d in parts {
            let result = match self.partition(&d.tp) {
                None => Err(self.not_here(&d.tp)),
                Some(p) => p.delete_records_before(d.offset).await,
            };
            if let Ok(start) = &result {
                tracing::info!(partition = %d.tp, start, "records deleted: log start offset moved");
            }
            out.push(Deleted { tp: d.tp, result });
        }
        out
    }

    /// A topic's metadata and its partitions' figures.
    pub async fn describe_topic(
        self: &Rc<Self>,
        name: &str,
    ) -> Result<(TopicMeta, Vec<PartitionStats>), BrokerError> {
        let meta = self
            .topic(name)
            .ok_or_else(|| BrokerError::unknown_topic(name))?;
        let mut by_shard: HashMap<u32, Vec<TopicPartition>> = HashMap::new();
        for (p, owner) in meta.placement.iter().enumerate() {
            by_shard
                .entry(*owner)
                .or_default()
                .push(TopicPartition::new(name, p as u32));
        }
        let mut stats = Vec::new();
        for (owner, tps) in by_shard {
            if owner == self.opts.shard_id {
                stats.extend(self.stats_here(tps));
            } else if let Some(Reply::Stats(s)) = self.router.call(owner, Call::Stats(tps)).await {
                stats.extend(s);
            }
        }
        stats.sort_by_key(|s| s.tp.partition);
        Ok((meta, stats))
    }

    fn stats_here(&self, tps: Vec<TopicPartition>) -> Vec<PartitionStats> {
        tps.into_iter()
            .map(|tp| match self.partition(&tp) {
                Some(p) => PartitionStats {
                    shard: self.opts.shard_id,
                    start_offset: p.log_start_offset(),
                    high_watermark: p.high_watermark(),
                    size_bytes: p.log().size_bytes(),
                    leader_epoch: p.leader_epoch(),
                    tp,
                },
                None => PartitionStats {
                    tp,
                    shard: self.opts.shard_id,
                    start_offset: -1,
                    high_watermark: -1,
                    size_bytes: 0,
                    leader_epoch: -1,
                },
            })
            .collect()
    }

    /// This shard's counters.
    fn counters(&self) -> Vec<(String, u64)> {
        let sent = self.files.stats();
        let c = &self.counters;
        vec![
            (
                "fetch_records_memory_bytes".into(),
                c.fetch_memory_bytes.get(),
            ),
            ("fetch_records_file_bytes".into(), c.fetch_file_bytes.get()),
            ("send_file_bytes_spliced".into(), sent.spliced_bytes),
            ("send_file_bytes_copied".into(), sent.copied_bytes),
            ("zero_copy_shards".into(), u64::from(self.files.zero_copy())),
            ("requests_forwarded".into(), c.forwarded.get()),
            ("shards".into(), 1),
        ]
    }

    /// This shard's metric samples: its requests, I/O and connections, and its
    /// partitions and groups.
    fn metrics_here(&self) -> Vec<crate::metrics::Sample> {
        use crate::metrics::Sample;
        let shard = self.opts.shard_id.to_string();
        let mut out = Vec::new();
        self.metrics.samples(&shard, &mut out);
        let s = || ("shard", shard.clone());
        let sent = self.files.stats();
        let c = &self.counters;
        let mut number =
            |family, labels, v: u64| out.push(Sample::number(family, labels, v as f64));
        number(
            "ringmq_requests_forwarded_total",
            vec![s()],
            c.forwarded.get(),
        );
        number(
            "ringmq_fetch_bytes_total",
            vec![s(), ("source", "memory".into())],
            c.fetch_memory_bytes.get(),
        );
        number(
            "ringmq_fetch_bytes_total",
            vec![s(), ("source", "file".into())],
            c.fetch_file_bytes.get(),
        );
        number(
            "ringmq_send_file_bytes_total",
            vec![s(), ("mode", "spliced".into())],
            sent.spliced_bytes,
        );
        number(
            "ringmq_send_file_bytes_total",
            vec![s(), ("mode", "copied".into())],
            sent.copied_bytes,
        );
        number(
            "ringmq_connections",
            vec![s()],
            self.connections.get() as u64,
        );
        if let Some(b) = &*self.memory_budget.borrow() {
            number(
                "ringmq_memory_budget_used_bytes",
                vec![s()],
                b.used() as u64,
            );
            number("ringmq_memory_budget_bytes", vec![s()], b.max() as u64);
        }
        let mut partitions: Vec<(TopicPartition, Rc<Partition>)> = self
            .partitions
            .borrow()
            .iter()
            .map(|(tp, p)| (tp.clone(), p.clone()))
            .collect();
        partitions.sort_by(|a, b| a.0.cmp(&b.0));
        for (tp, p) in partitions {
            let tpl = || {
                vec![
                    ("topic", tp.topic.clone()),
                    ("partition", tp.partition.to_string()),
                ]
            };
            p.traffic.samples(&tpl(), &mut out);
            let log = p.log();
            let figures = p.replication_figures();
            let mut gauges = vec![
                ("ringmq_partition_log_start_offset", p.log_start_offset()),
                ("ringmq_partition_log_end_offset", log.end_offset()),
                ("ringmq_partition_high_watermark", p.high_watermark()),
                ("ringmq_partition_size_bytes", log.size_bytes() as i64),
                ("ringmq_partition_segments", log.segment_count() as i64),
                ("ringmq_partition_leader", i64::from(figures.leads)),
            ];
            if figures.leads {
                gauges.extend([
                    ("ringmq_partition_replicas", figures.replicas as i64),
                    ("ringmq_partition_in_sync_replicas", figures.in_sync as i64),
                    (
                        "ringmq_partition_under_replicated",
                        i64::from(figures.in_sync < figures.replicas),
                    ),
                ]);
            }
            for (family, v) in gauges {
                out.push(Sample::number(family, tpl(), v as f64));
            }
            for (replica, lag) in figures.follower_lag {
                let mut labels = tpl();
                labels.push(("replica", replica.to_string()));
                out.push(Sample::number(
                    "ringmq_partition_replica_lag_offsets",
                    labels,
                    lag as f64,
                ));
            }
        }
        for (group, members) in self.groups.member_counts() {
            out.push(Sample::number(
                "ringmq_group_members",
                vec![("group", group)],
                members as f64,
            ));
        }
        for (group, topic, partition, offset) in self.groups.all_committed() {
            out.push(Sample::number(
                "ringmq_group_committed_offset",
                vec![
                    ("group", group),
                    ("topic", topic),
                    ("partition", partition.to_string()),
                ],
                offset as f64,
            ));
        }
        out
    }

    /// The whole broker's metrics in the Prometheus text format: every shard's samples
    /// (one cross-shard call each), the node's, and each group's lag where this node
    /// holds the partition.
    pub async fn scrape(self: &Rc<Self>) -> Result<String, BrokerError> {
        use crate::metrics::{Sample, Value};
        let started = Instant::now();
        let mut samples = self.metrics_here();
        for to in 0..self.opts.shard_count {
            if to == self.opts.shard_id {
                continue;
            }
            match self.router.call(to, Call::Metrics).await {
                Some(Reply::Metrics(m)) => samples.extend(m),
                _ => return Err(BrokerError::shard_silent(to)),
            }
        }
        let number = |family, labels, v: f64| Sample::number(family, labels, v);
        samples.push(number(
            "ringmq_build_info",
            vec![("version", env!("CARGO_PKG_VERSION").into())],
            1.0,
        ));
        samples.push(number(
            "ringmq_shards",
            vec![],
            f64::from(self.opts.shard_count),
        ));
        samples.push(number("ringmq_node_id", vec![], f64::from(self.node_id())));
        if let Some(c) = self.cluster() {
            samples.push(number(
                "ringmq_cluster_controller_leader",
                vec![],
                f64::from(c.controller.unwrap_or(-1)),
            ));
            let fenced = c.nodes.values().filter(|n| n.fenced).count();
            samples.push(number(
                "ringmq_cluster_nodes",
                vec![("state", "alive".into())],
                (c.nodes.len() - fenced) as f64,
            ));
            samples.push(number(
                "ringmq_cluster_nodes",
                vec![("state", "fenced".into())],
                fenced as f64,
            ));
        }
        // Lag: the partition's high watermark (from whichever shard holds it) minus the
        // committed offset (from the group's coordinator shard).
        let watermarks: HashMap<(String, String), f64> = samples
            .iter()
            .filter(|s| s.family == "ringmq_partition_high_watermark")
            .filter_map(|s| match &s.value {
                Value::Number(v) => Some(((s.labels[0].1.clone(), s.labels[1].1.clone()), *v)),
                Value::Histogram(_) => None,
            })
            .collect();
        let lags: Vec<Sample> = samples
            .iter()
            .filter(|s| s.family == "ringmq_group_committed_offset")
            .filter_map(|s| {
                let Value::Number(committed) = s.value else {
                    return None;
                };
                let hw = watermarks.get(&(s.labels[1].1.clone(), s.labels[2].1.clone()))?;
                Some(number(
                    "ringmq_group_lag_offsets",
                    s.labels.clone(),
                    (hw - committed).max(0.0),
                ))
            })
            .collect();
        samples.extend(lags);
        samples.push(number(
            "ringmq_scrape_duration_seconds",
            vec![],
            started.elapsed().as_secs_f64(),
        ));
        Ok(crate::metrics::render(&samples))
    }

    /// The count of client connections open on this shard, kept by the listener.
    pub fn connection_count(&self) -> Rc<Cell<usize>> {
        self.connections.clone()
    }

    /// The listener's memory budget, for the metrics.
    pub fn set_memory_budget(&self, budget: Rc<ringmq_net::conn::MemoryBudget>) {
        *self.memory_budget.borrow_mut() = Some(budget);
    }

    /// Every shard's counters, summed by name.
    pub async fn broker_counters(self: &Rc<Self>) -> Result<Vec<(String, u64)>, BrokerError> {
        let mut sum = self.counters();
        for to in 0..self.opts.shard_count {
            if to == self.opts.shard_id {
                continue;
            }
            match self.router.call(to, Call::Counters).await {
                Some(Reply::Counters(c)) => {
                    for (name, v) in c {
                        match sum.iter_mut().find(|(n, _)| *n == name) {
                            Some(e) => e.1 += v,
                            None => sum.push((name, v)),
                        }
                    }
                }
                _ => return Err(BrokerError::shard_silent(to)),
            }
        }
        Ok(sum)
    }

    /// Creates, changes or deletes a topic (through the metadata shard).
    pub async fn change_topics(self: &Rc<Self>, op: TopicOp) -> Result<(), BrokerError> {
        // The groups' topic maps each group to a partition by the partition count, and
        // holds every committed offset: it is neither deleted nor resized.
        if let TopicOp::Delete { name } | TopicOp::Partitions { name, .. } = &op
            && name == OFFSETS_TOPIC
        {
            return Err(BrokerError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "{OFFSETS_TOPIC} is the consumer groups' internal topic: it cannot be deleted or get more partitions"
                ),
            ));
        }
        if self.opts.shard_id == METADATA_SHARD {
            let authority = self.authority.borrow().clone();
            if let Some(a) = authority {
                return a.change(op).await;
            }
            return self.change_metadata(op).await;
        }
        match self
            .router
            .call(METADATA_SHARD, Call::ChangeTopics(op))
            .await
        {
            Some(Reply::TopicsChanged(r)) => r,
            _ => Err(BrokerError::new(
                ErrorKind::Unavailable,
                "metadata shard unavailable",
            )),
        }
    }

    /// On the metadata shard only, one change at a time: change a copy of the table,
    /// persist it, then have every shard apply it before answering.
    async fn change_metadata(self: &Rc<Self>, op: TopicOp) -> Result<(), BrokerError> {
        let _permit = self.metadata_lock.acquire_permit(1).await;
        let mut table = self.topics.borrow().clone();
        let Some(what) = metadata::edit(
            &mut table,
            op,
            &self.opts.log_defaults,
            self.opts.shard_count,
        )?
        else {
            return Ok(());
        };
        let path = self.opts.data_dir.join(topics::TOPICS_FILE);
        ringmq_storage::write_file_atomic(&path, &table.to_json())
            .await
            .map_err(|e| {
                BrokerError::new(ErrorKind::Storage, format!("saving topic table: {e}"))
            })?;
        let errors = self
            .on_every_shard(
                || self.apply_topics(table.clone()),
                || Call::ApplyTopics(table.clone()),
            )
            .await;
        if errors.is_empty() {
            Ok(())
        } else {
            tracing::error!(topic = %what, errors = ?errors, "applying topic change failed");
            Err(BrokerError::new(ErrorKind::Storage, errors.join("; ")))
        }
    }

    /// Replaces the topic table and opens or closes this shard's partitions to match.
    async fn apply_topics(&self, table: TopicTable) -> Result<(), String> {
        self.apply_topics_hosted(table, &|_| true).await
    }

    /// [`Shard::apply_topics`], opening only the partitions `hosted` accepts (in a
    /// cluster, those with a replica on this node).
    async fn apply_topics_hosted(
        &self,
        table: TopicTable,
        hosted: &dyn Fn(&TopicPartition) -> bool,
    ) -> Result<(), String> {
        let me = self.opts.shard_id;
        let mut wanted: Vec<(TopicPartition, LogConfig, Rc<TopicPolicy>)> = Vec::new();
        for (name, t) in &table.topics {
            let config = topics::log_config(&t.configs, &self.opts.log_defaults)?;
            let mut policy = TopicPolicy::of(&t.configs);
            policy.log_append_time =
                config.timestamp_type == ringmq_storage::batch::TimestampType::LogAppendTime;
            if !t.configs.contains_key("min.insync.replicas") {
                policy.min_insync_replicas = self.opts.min_insync_replicas;
            }
            let policy = Rc::new(policy);
            for (p, owner) in t.placement.iter().enumerate() {
                let tp = TopicPartition::new(name.clone(), p as u32);
                if *owner == me && hosted(&tp) {
                    wanted.push((tp, config.clone(), policy.clone()));
                }
            }
        }
        // Close and forget partitions no longer ours (deleted topics lose their data).
        let gone: Vec<TopicPartition> = self
            .partitions
            .borrow()
            .keys()
            .filter(|tp| !wanted.iter().any(|(w, _, _)| w == *tp))
            .cloned()
            .collect();
        for tp in gone {
            let partition = self.partitions.borrow_mut().remove(&tp);
            if let Some(partition) = partition {
                let _ = partition.log().close().await;
                if !table.topics.contains_key(&tp.topic) {
                    let dir = self.partition_dir(&tp);
                    if let Err(e) = ringmq_storage::remove_dir_all(&dir).await {
                        tracing::error!(dir = %dir.display(), error = %e, "removing deleted partition failed");
                    }
                    let topic_dir = self.opts.data_dir.join(&tp.topic);
                    let _ = ringmq_storage::remove_dir_all(&topic_dir).await;
                }
            }
        }
        for (tp, config, policy) in wanted {
            let existing = self.partition(&tp);
            match existing {
                // The topic's produce rules change with its settings, before any
                // produce sees the new table.
                Some(p) => {
                    p.set_config(config, policy)?;
                    p.replication_config_changed(self.replica_settings());
                }
                None => {
                    let dir = self.partition_dir(&tp);
                    let p = Partition::open(tp.clone(), &dir, config, self.cache.clone(), policy)
                        .await?;
                    p.signal_data_to(self.data_arrived.clone());
                    let clustered = self.cluster.borrow().is_some();
                    if clustered {
                        // Replicated: nothing is served until the role is known.
                        p.stand_by_at_checkpoint().await;
                    }
                    self.partitions.borrow_mut().insert(tp, p);
                }
            }
        }
        *self.topics.borrow_mut() = table;
        Ok(())
    }

    fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.opts
            .data_dir
            .join(&tp.topic)
            .join(tp.partition.to_string())
    }

    /// Hands a native connection to shard `to` (`BindShard`); false when it cannot.
    pub async fn hand_over(&self, to: u32, conn: Handoff) -> bool {
        self.router.hand_over(to, conn).await
    }

    /// Answers a call the shard has no room for with [`Reply::Refused`].
    fn refuse_call(self: &Rc<Self>, env: Envelope) {
        let Envelope::Call { id, from, .. } = env else {
            return;
        };
        let now = self.timers.now();
        if self
            .calls_refused_logged
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.calls_refused_logged.set(Some(now));
            tracing::warn!(
                shard = self.opts.shard_id,
                from,
                limit = CALLS_IN_FLIGHT_MAX,
                "a call from another shard refused: too many calls in flight"
            );
        }
        let me = self.clone();
        spawn_in(self.queues.forwarded, async move {
            me.router.reply(from, id, Reply::Refused).await;
        })
        .detach();
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
            Envelope::Reply { id, reply } => self.router.deliver(id, reply),
            Envelope::Call { id, from, call } => {
                let reply = self.serve_call(from, call).await;
                self.router.reply(from, id, reply).await;
            }
        }
    }

    /// Executes a call from another shard.
    async fn serve_call(self: &Rc<Self>, from: u32, call: Call) -> Reply {
        match call {
            Call::Produce { acks, parts } => Reply::Produced(self.produce_here(acks, parts).await),
            Call::Fetch { fetch, id } => {
                Reply::Fetched(self.fetch_here(fetch, Some((from, id))).await)
            }
            Call::StopFetch { id } => {
                if let Some(n) = self.fetch_stops.borrow().get(&(from, id)) {
                    n.notify_all();
                }
                Reply::Stopped
            }
            Call::ListOffsets(q) => Reply::Offsets(self.list_offsets_here(q).await),
            Call::EpochEnds(q) => Reply::EpochEnds(self.end_of_epochs_here(q)),
            Call::DeleteRecords(d) => Reply::Deleted(self.delete_records_here(d).await),
            Call::Stats(tps) => Reply::Stats(self.stats_here(tps)),
            Call::Counters => Reply::Counters(self.counters()),
            Call::Metrics => Reply::Metrics(self.metrics_here()),
            Call::ChangeTopics(op) => Reply::TopicsChanged(self.change_topics(op).await),
            Call::ApplyCluster(view) => Reply::Applied(self.apply_cluster_here(view).await),
            Call::ApplyTopics(table) => Reply::Applied(self.apply_topics(table).await),
            Call::Group { op, .. } => Reply::Group(Box::new(self.groups.handle(*op).await)),
        }
    }
}

/// Removes a long poll's stop when the poll ends.
struct StopRegistration {
    shard: Rc<Shard>,
    key: (u32, u64),
}

impl Drop for StopRegistration {
    fn drop(&mut self) {
        self.shard.fetch_stops.borrow_mut().remove(&self.key);
    }
}

fn stopping() -> BrokerError {
    BrokerError::new(ErrorKind::Unavailable, "the shard is stopping")
}

/// A log read as records: file ranges stay file ranges (sent without a copy),
/// tail-cache batches stay in memory.
fn records_of(r: ringmq_storage::ReadResult) -> ringmq_net::codec::Records {
    use ringmq_net::codec::{Records, RecordsChunk};
    use ringmq_net::zerocopy::FileRange;
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
fn limit_fetch(results: &mut [Fetched], partition_max: &[usize], max_bytes: usize) {
    let mut total = 0usize;
    for (i, r) in results.iter_mut().enumerate() {
        let len = r.len();
        if len == 0 {
            continue;
        }
        let part_max = partition_max.get(i).copied().unwrap_or(usize::MAX);
        let fits = len <= part_max && total + len <= max_bytes;
        if fits || total == 0 {
            total += len;
        } else {
            r.records = Ok(ringmq_net::codec::Records::new());
        }
    }
}
