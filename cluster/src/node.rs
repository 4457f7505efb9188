//! A cluster node's driver: the controller quorum voter, heartbeats, metadata given to
//! the shards, and the requests other nodes send. Runs on the node's metadata shard
//! (shard 0), which also serves the node's cluster listener.
//!
//! - **Quorum**: the [`Quorum`] (raft-rs) is ticked every [`NodeConfig::tick`]; every
//!   input (tick, a peer's message, a proposal) is followed by [`Controller::drive`]:
//!   take raft-rs's ready step, persist it in the [`MetadataLogStore`] (fsync), send its
//!   messages, hand it back. A persistence failure stops the node (the quorum's safety
//!   rests on what it persisted).
//! - **Metadata to the shards**: after a step that committed records, the applier task
//!   builds a [`ClusterView`] of the metadata applied and gives it to every shard
//!   ([`Shard::apply_cluster`]); views are whole, so a later one supersedes an earlier
//!   one that was not yet applied, and shards see changes in order.
//! - **Controller leader**: while this node leads the quorum (and has applied its
//!   term's first entry), [`ControllerLogic`] decides: heartbeats register and unfence
//!   nodes, its tick fences silent nodes and moves their partitions, AlterPartition and
//!   topic changes are checked and proposed.
//! - **Every node**: heartbeats to the controller leader every [`NodeConfig::heartbeat`];
//!   topic changes made on this node go to the controller leader and are answered once
//!   this node applied them ([`TopicAuthority`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::Future;
use ringmq_replication::controller::{
    self, ClusterMetadata, ControllerConfig, ControllerError, ControllerErrorKind, ControllerLogic,
    MetadataLogStore, MetadataRecord, Quorum, QuorumConfig,
};
use ringmq_shard::broker::Shard;
use ringmq_shard::cluster::{ClusterView, NodeInfo, PartitionView, TopicAuthority};
use ringmq_shard::error::{BrokerError, ErrorKind};
use ringmq_shard::ops::{TopicOp, TopicPartition};
use ringmq_shard::topics::{TopicMeta, TopicTable};
use ringmq_storage::Notify;

use crate::wire::{self, Request, Response};
use crate::{IncomingRequest, NodeId, Transport};

/// A node's cluster settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub me: NodeId,
    /// The controller quorum's voters and their cluster listeners.
    pub voters: BTreeMap<NodeId, SocketAddr>,
    /// This node's Kafka listener as clients reach it (`host:port`).
    pub kafka_advertise: String,
    /// This node's native listener.
    pub native: String,
    /// This node's cluster listener.
    pub cluster_listen: SocketAddr,
    /// The node's data directory (the metadata log goes in `cluster-metadata/`).
    pub data_dir: PathBuf,
    /// Shards on this node (partition placement over them).
    pub shard_count: u32,
    /// A node silent this long is fenced and its partitions move.
    pub session_timeout: Duration,
    /// The quorum's tick.
    pub tick: Duration,
    /// Ticks without a leader before a voter stands for election (raft-rs randomizes
    /// between this and twice this).
    pub election_ticks: usize,
    /// How often a node heartbeats to the controller leader.
    pub heartbeat: Duration,
    /// Replicas of a new topic's partitions when the request does not say.
    pub default_replication_factor: u16,
}

/// Where the metadata log lives in a data directory.
pub const METADATA_DIR: &str = "cluster-metadata";

fn broker_error(e: ControllerError) -> BrokerError {
    use ControllerErrorKind as C;
    let kind = match e.kind {
        C::NotController | C::ProposalDropped | C::StepPending => ErrorKind::Unavailable,
        C::UnknownTopicOrPartition => ErrorKind::UnknownTopic,
        C::TopicExists => ErrorKind::TopicExists,
        C::InvalidTopic => ErrorKind::InvalidTopic,
        C::InvalidPartitions => ErrorKind::InvalidPartitions,
        C::InvalidReplicationFactor => ErrorKind::InvalidReplicationFactor,
        C::FencedLeaderEpoch => ErrorKind::FencedLeaderEpoch,
        C::NotLeader => ErrorKind::NotLeader,
        C::InvalidUpdateVersion | C::IneligibleReplica | C::InvalidRequest => {
            ErrorKind::InvalidRequest
        }
        C::InvalidMessage | C::Corrupt => ErrorKind::Internal,
    };
    BrokerError::new(kind, e.message)
}

/// The controller voter and metadata applier of one node; see the module doc. Owned by
/// the metadata shard.
pub struct Controller {
    config: NodeConfig,
    shard: Rc<Shard>,
    transport: Rc<Transport>,
    quorum: RefCell<Quorum>,
    store: RefCell<MetadataLogStore>,
    logic: RefCell<ControllerLogic>,
    /// Deciding as the controller leader since the last tick.
    deciding: Cell<bool>,
    /// Metadata index the shards have applied.
    applied: Cell<u64>,
    /// Set when committed records wait to be given to the shards.
    dirty: Cell<bool>,
    /// Woken when records were committed (for the applier) and when the shards applied
    /// them (for those waiting for an index).
    committed: Notify,
    applied_changed: Notify,
    /// Raft messages waiting to be sent, per peer (bounded: raft-rs resends).
    outgoing: RefCell<BTreeMap<NodeId, Rc<RefCell<std::collections::VecDeque<Bytes>>>>>,
    outgoing_ready: BTreeMap<NodeId, Rc<Notify>>,
    started: Instant,
    incarnation: u64,
    /// Set when the node must stop (a persistence failure).
    failed: RefCell<Option<String>>,
    failed_notify: Notify,
}

/// Raft messages queued per peer at most; older ones are dropped (raft-rs resends).
const RAFT_QUEUE_MAX: usize = 256;
/// How long a Raft message may take to reach a peer.
const RAFT_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a change proposed here may take to be committed and applied.
const COMMIT_WAIT_MAX: Duration = Duration::from_secs(10);

impl Controller {
    /// Opens the metadata log in the data directory and the quorum voter on it.
    pub fn open(
        config: NodeConfig,
        shard: Rc<Shard>,
        transport: Rc<Transport>,
    ) -> Result<Rc<Self>, String> {
        let dir = config.data_dir.join(METADATA_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let (store, recovered) = MetadataLogStore::open(&dir)
            .map_err(|e| format!("opening the metadata log in {}: {e}", dir.display()))?;
        let voters: Vec<NodeId> = config.voters.keys().copied().collect();
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let quorum = Quorum::open(
            config.me,
            &voters,
            recovered,
            QuorumConfig {
                election_tick: config.election_ticks,
                heartbeat_tick: (config.election_ticks / 5).max(1),
                snapshot_every_entries: 10_000,
                election_seed: incarnation ^ u64::from(config.me as u32),
            },
        )
        .map_err(|e| format!("opening the controller quorum: {e}"))?;
        let logic = ControllerLogic::new(ControllerConfig {
            session_timeout_ms: config.session_timeout.as_millis() as u64,
            ..ControllerConfig::default()
        });
        let outgoing_ready = voters
            .iter()
            .filter(|&&v| v != config.me)
            .map(|&v| (v, Rc::new(Notify::new())))
            .collect();
        let c = Rc::new(Self {
            shard,
            transport,
            quorum: RefCell::new(quorum),
            store: RefCell::new(store),
            logic: RefCell::new(logic),
            deciding: Cell::new(false),
            applied: Cell::new(0),
            dirty: Cell::new(true),
            committed: Notify::new(),
            applied_changed: Notify::new(),
            outgoing: RefCell::new(BTreeMap::new()),
            outgoing_ready,
            started: Instant::now(),
            incarnation,
            failed: RefCell::new(None),
            failed_notify: Notify::new(),
            config,
        });
        Ok(c)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The controller leader as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.quorum.borrow().leader_id()
    }

    /// Runs the node's tasks until the node must stop; returns why.
    pub async fn run(self: Rc<Self>, incoming: crate::Incoming) -> String {
        for (&peer, ready) in &self.outgoing_ready {
            let me = self.clone();
            let ready = ready.clone();
            glommio::spawn_local(async move { me.send_loop(peer, ready).await }).detach();
        }
        let me = self.clone();
        glommio::spawn_local(async move { me.tick_loop().await }).detach();
        let me = self.clone();
        glommio::spawn_local(async move { me.apply_loop().await }).detach();
        let me = self.clone();
        glommio::spawn_local(async move { me.heartbeat_loop().await }).detach();
        let me = self.clone();
        glommio::spawn_local(async move {
            let incoming = Rc::new(incoming);
            while let Some(req) = incoming.next().await {
                let me = me.clone();
                glommio::spawn_local(async move { me.serve(req).await }).detach();
            }
        })
        .detach();
        self.drive();
        loop {
            let changed = self.failed_notify.changed();
            if let Some(why) = self.failed.borrow().clone() {
                return why;
            }
            changed.await;
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "the controller quorum cannot go on: stopping the node");
        *self.failed.borrow_mut() = Some(why);
        self.failed_notify.notify_all();
    }

    /// Takes raft-rs's ready steps until there is none: persist, send, advance.
    fn drive(&self) {
        if self.failed.borrow().is_some() {
            return;
        }
        loop {
            let step = match self.quorum.borrow_mut().ready() {
                Ok(Some(step)) => step,
                Ok(None) => break,
                Err(e) => return self.fail(format!("raft ready: {e}")),
            };
            if step.needs_persist()
                && let Err(e) = self.store.borrow_mut().persist(&step)
            {
                return self.fail(format!("persisting the metadata log: {e}"));
            }
            for (to, bytes) in &step.messages {
                self.queue_message(*to, Bytes::from(bytes.clone()));
            }
            if !step.committed.is_empty() {
                self.dirty.set(true);
                self.committed.notify_all();
            }
            if let Err(e) = self.quorum.borrow_mut().advance(step) {
                return self.fail(format!("raft advance: {e}"));
            }
        }
    }

    fn queue_message(&self, to: NodeId, bytes: Bytes) {
        let Some(ready) = self.outgoing_ready.get(&to) else {
            return;
        };
        let q = self.outgoing.borrow_mut().entry(to).or_default().clone();
        let mut q = q.borrow_mut();
        if q.len() >= RAFT_QUEUE_MAX {
            q.pop_front();
        }
        q.push_back(bytes);
        ready.notify_all();
    }

    async fn send_loop(self: Rc<Self>, peer: NodeId, ready: Rc<Notify>) {
        loop {
            let changed = ready.changed();
            let next = self
                .outgoing
                .borrow()
                .get(&peer)
                .and_then(|q| q.borrow_mut().pop_front());
            let Some(bytes) = next else {
                changed.await;
                continue;
            };
            let frame = Request::Raft.encode(&[bytes]);
            if let Err(e) = self
                .transport
                .request_within(peer, frame, RAFT_SEND_TIMEOUT)
                .await
            {
                tracing::debug!(peer, error = %e, "raft message not delivered");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn tick_loop(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(self.config.tick).await;
            if self.failed.borrow().is_some() {
                return;
            }
            if let Err(e) = self.quorum.borrow_mut().tick() {
                tracing::warn!(error = %e, "raft tick");
            }
            self.drive();
            self.decide();
        }
    }

    /// As controller leader: the logic's tick (fencing, elections).
    fn decide(&self) {
        let can = self.quorum.borrow().can_decide();
        if !can {
            self.deciding.set(false);
            return;
        }
        let now = self.now_ms();
        let meta = self.quorum.borrow().projected_metadata();
        if !self.deciding.get() {
            self.deciding.set(true);
            self.logic.borrow_mut().on_became_leader(&meta, now);
            tracing::info!(
                node = self.config.me,
                term = self.quorum.borrow().term(),
                "controller leader"
            );
        }
        let records = self.logic.borrow_mut().tick(&meta, now);
        if !records.is_empty() {
            self.propose(records).ok();
        }
    }

    /// Proposes `records` as controller leader; returns the index they will have.
    fn propose(&self, records: Vec<MetadataRecord>) -> Result<u64, ControllerError> {
        let index = {
            let mut q = self.quorum.borrow_mut();
            q.propose(records)?;
            q.last_index()
        };
        self.drive();
        Ok(index)
    }

    /// Gives each new state of the metadata to the shards, in order.
    async fn apply_loop(self: Rc<Self>) {
        loop {
            let changed = self.committed.changed();
            if !self.dirty.replace(false) {
                changed.await;
                continue;
            }
            let (view, index) = {
                let q = self.quorum.borrow();
                (
                    build_view(
                        q.metadata(),
                        self.config.me,
                        self.incarnation,
                        q.leader_id(),
                        self.config.shard_count,
                    ),
                    q.applied_index(),
                )
            };
            if let Err(e) = self.shard.apply_cluster(Arc::new(view)).await {
                tracing::error!(error = %e, "applying cluster metadata failed");
            }
            self.applied.set(index);
            self.applied_changed.notify_all();
        }
    }

    /// Waits until the shards applied metadata index `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), BrokerError> {
        let deadline = Instant::now() + COMMIT_WAIT_MAX;
        loop {
            let changed = self.applied_changed.changed();
            if self.applied.get() >= index {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BrokerError::new(
                    ErrorKind::Timeout,
                    format!("metadata change {index} was not committed within {COMMIT_WAIT_MAX:?}"),
                ));
            }
            futures_lite::future::or(
                changed,
                glommio::timer::sleep(left.min(Duration::from_millis(200))),
            )
            .await;
        }
    }

    async fn heartbeat_loop(self: Rc<Self>) {
        let hb = wire::Heartbeat {
            node: self.config.me,
            incarnation: self.incarnation,
            kafka: self.config.kafka_advertise.clone(),
            native: self.config.native.clone(),
            cluster: self.config.cluster_listen.to_string(),
        };
        loop {
            match self.leader() {
                Some(l) if l == self.config.me => {
                    let _ = self.on_heartbeat(&hb);
                }
                Some(l) => {
                    let frame = Request::Heartbeat(hb.clone()).encode(&[]);
                    if let Err(e) = self
                        .transport
                        .request_within(l, frame, self.config.heartbeat * 2)
                        .await
                    {
                        tracing::debug!(controller = l, error = %e, "heartbeat not delivered");
                    }
                }
                None => {}
            }
            glommio::timer::sleep(self.config.heartbeat).await;
        }
    }

    fn on_heartbeat(&self, hb: &wire::Heartbeat) -> Response {
        if !self.quorum.borrow().can_decide() {
            return Response::NotController {
                leader: self.leader(),
            };
        }
        let meta = self.quorum.borrow().projected_metadata();
        let records = self.logic.borrow_mut().on_heartbeat(
            &meta,
            &controller::Heartbeat {
                node: hb.node,
                incarnation: hb.incarnation,
                kafka: hb.kafka.clone(),
                native: hb.native.clone(),
                cluster: hb.cluster.clone(),
            },
            self.now_ms(),
        );
        if !records.is_empty() {
            let _ = self.propose(records);
        }
        Response::Done
    }

    /// As controller leader: checks and proposes a topic change; the index to wait for.
    fn decide_topics(&self, op: &TopicOp) -> Result<Option<u64>, BrokerError> {
        if !self.quorum.borrow().can_decide() {
            return Err(BrokerError::new(
                ErrorKind::Unavailable,
                "not the controller leader",
            ));
        }
        let meta = self.quorum.borrow().projected_metadata();
        let logic = self.logic.borrow();
        let (records, validate_only) = match op {
            TopicOp::Create {
                name,
                partitions,
                configs,
                replication_factor,
                validate_only,
            } => {
                let configs: BTreeMap<String, String> = configs.iter().cloned().collect();
                ringmq_shard::topics::log_config(&configs, &self.shard.log_defaults())
                    .map_err(|e| BrokerError::new(ErrorKind::InvalidConfig, e))?;
                let rf = replication_factor.unwrap_or(self.config.default_replication_factor);
                (
                    logic
                        .create_topic(&meta, name, *partitions, rf, configs)
                        .map_err(broker_error)?,
                    *validate_only,
                )
            }
            TopicOp::Delete { name } => (
                logic.delete_topic(&meta, name).map_err(broker_error)?,
                false,
            ),
            TopicOp::Configs {
                name,
                set,
                remove,
                validate_only,
            } => {
                let Some(t) = meta.topic(name) else {
                    return Err(BrokerError::new(
                        ErrorKind::UnknownTopic,
                        format!("no topic {name:?}"),
                    ));
                };
                let mut configs = t.configs.clone();
                for k in remove {
                    configs.remove(k);
                }
                for (k, v) in set {
                    configs.insert(k.clone(), v.clone());
                }
                ringmq_shard::topics::log_config(&configs, &self.shard.log_defaults())
                    .map_err(|e| BrokerError::new(ErrorKind::InvalidConfig, e))?;
                (
                    logic
                        .set_topic_configs(&meta, name, configs)
                        .map_err(broker_error)?,
                    *validate_only,
                )
            }
            TopicOp::Partitions {
                name,
                count,
                validate_only,
            } => (
                logic
                    .create_partitions(&meta, name, *count)
                    .map_err(broker_error)?,
                *validate_only,
            ),
        };
        drop(logic);
        if validate_only || records.is_empty() {
            return Ok(None);
        }
        self.propose(records).map(Some).map_err(broker_error)
    }

    /// A topic change made on this node: decided here as controller leader, or sent to
    /// it; answered once this node applied it.
    async fn change_topics(self: Rc<Self>, op: TopicOp) -> Result<(), BrokerError> {
        let deadline = Instant::now() + COMMIT_WAIT_MAX;
        loop {
            let leader = self.leader();
            let index = match leader {
                Some(l) if l == self.config.me => match self.decide_topics(&op) {
                    Ok(None) => return Ok(()),
                    Ok(Some(index)) => Some(index),
                    Err(e) if e.kind == ErrorKind::Unavailable => None,
                    Err(e) => return Err(e),
                },
                Some(l) => {
                    let frame = Request::ChangeTopics(op.clone()).encode(&[]);
                    match self
                        .transport
                        .request(l, frame)
                        .await
                        .map(|b| Response::decode(&b))
                    {
                        Ok(Ok((Response::Committed { index }, _))) => Some(index),
                        Ok(Ok((Response::Done, _))) => return Ok(()),
                        Ok(Ok((Response::Refused(e), _))) => return Err(e),
                        _ => None,
                    }
                }
                None => None,
            };
            if let Some(index) = index {
                return self.wait_applied(index).await;
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::new(
                    ErrorKind::Unavailable,
                    "no controller leader answered (is a majority of the voters up?)",
                ));
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn serve(self: Rc<Self>, req: IncomingRequest) {
        let (request, payload) = match Request::decode(&req.body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(from = req.from, error = %e, "malformed cluster request");
                let answer = Response::Refused(BrokerError::new(ErrorKind::InvalidRequest, e.0));
                return req.respond(answer.encode(&[]));
            }
        };
        let from = req.from;
        let answer = match request {
            Request::Raft => {
                let r = self.quorum.borrow_mut().step(from, &payload);
                match r {
                    Ok(()) => {
                        self.drive();
                        Response::Done.encode(&[])
                    }
                    Err(e) => {
                        tracing::warn!(from, error = %e, "raft message refused");
                        Response::Refused(broker_error(e)).encode(&[])
                    }
                }
            }
            Request::Heartbeat(hb) => {
                if hb.node != from {
                    Response::Refused(BrokerError::new(
                        ErrorKind::InvalidRequest,
                        format!("node {from} sent a heartbeat for node {}", hb.node),
                    ))
                    .encode(&[])
                } else {
                    self.on_heartbeat(&hb).encode(&[])
                }
            }
            Request::AlterPartition(a) => self.alter_partition(from, a).await.encode(&[]),
            Request::ChangeTopics(op) => match self.decide_topics(&op) {
                Ok(None) => Response::Done.encode(&[]),
                Ok(Some(index)) => Response::Committed { index }.encode(&[]),
                Err(e) if e.kind == ErrorKind::Unavailable => Response::NotController {
                    leader: self.leader(),
                }
                .encode(&[]),
                Err(e) => Response::Refused(e).encode(&[]),
            },
            Request::ReplicaFetch(f) => {
                return req.respond(crate::replicas::serve_fetch(&self.shard, from, f).await);
            }
            Request::EpochEnds(asks) => crate::replicas::serve_epochs(&self.shard, asks).await,
        };
        req.respond(answer);
    }

    async fn alter_partition(&self, from: NodeId, a: wire::AlterPartition) -> Response {
        if a.leader != from {
            return Response::Refused(BrokerError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "node {from} asked to alter a partition as node {}",
                    a.leader
                ),
            ));
        }
        if !self.quorum.borrow().can_decide() {
            return Response::NotController {
                leader: self.leader(),
            };
        }
        let meta = self.quorum.borrow().projected_metadata();
        let r = self.logic.borrow().alter_partition(
            &meta,
            &controller::AlterPartition {
                topic: a.topic,
                partition: a.partition,
                leader: a.leader,
                leader_epoch: a.leader_epoch,
                partition_epoch: a.partition_epoch,
                new_isr: a.new_isr,
            },
        );
        match r.and_then(|records| self.propose(records)) {
            Ok(index) => match self.wait_applied(index).await {
                Ok(()) => Response::Committed { index },
                // Maybe committed later, maybe not: the leader keeps its proposal
                // until the metadata settles it.
                Err(_) => Response::NotController {
                    leader: self.leader(),
                },
            },
            Err(e) if e.kind.refuses_alter_partition_for_good() => {
                Response::Refused(broker_error(e))
            }
            // A stale epoch or no controller: the committed metadata will say what
            // became of the ISR; the leader keeps its proposal until it does.
            Err(e) => {
                tracing::debug!(error = %e, "AlterPartition not decided");
                Response::NotController {
                    leader: self.leader(),
                }
            }
        }
    }
}

/// Topic changes made on this node go to the controller.
pub struct Authority(pub Rc<Controller>);

impl TopicAuthority for Authority {
    fn change(&self, op: TopicOp) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>>>> {
        Box::pin(self.0.clone().change_topics(op))
    }
}

/// The view of `meta` a shard of node `me` takes: the nodes, the topics placed over
/// `shard_count` shards, and each partition's replication.
pub fn build_view(
    meta: &ClusterMetadata,
    me: NodeId,
    incarnation: u64,
    controller: Option<NodeId>,
    shard_count: u32,
) -> ClusterView {
    let nodes = meta
        .nodes()
        .iter()
        .map(|(&id, n)| {
            let (host, port) = match n.kafka.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().unwrap_or(0)),
                None => (n.kafka.clone(), 0),
            };
            (
                id,
                NodeInfo {
                    kafka_host: host,
                    kafka_port: port,
                    native: n.native.clone(),
                    fenced: n.fenced,
                },
            )
        })
        .collect();
    let mut topics = TopicTable {
        next_id: meta.next_topic_id(),
        topics: BTreeMap::new(),
    };
    let mut partitions = BTreeMap::new();
    for (name, t) in meta.topics() {
        let count = t.partitions.len() as u32;
        topics.topics.insert(
            name.clone(),
            TopicMeta {
                id: t.id,
                partitions: count,
                configs: t.configs.clone(),
                placement: (0..count)
                    .map(|p| ringmq_shard::placement::place(t.id, p, shard_count))
                    .collect(),
            },
        );
        for (p, info) in t.partitions.iter().enumerate() {
            partitions.insert(
                TopicPartition::new(name.clone(), p as u32),
                PartitionView {
                    replicas: info.replicas.clone(),
                    leader: info.leader,
                    leader_epoch: info.leader_epoch,
                    isr: info.isr.clone(),
                    partition_epoch: info.partition_epoch,
                },
            );
        }
    }
    ClusterView {
        me,
        nodes,
        controller,
        topics,
        partitions,
        applied_index: meta.last_applied_index(),
        registered: meta.registers(me, incarnation),
    }
}
