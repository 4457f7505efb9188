//! The controller quorum: raft-rs (`raft` 0.7) behind a small, sans-IO API.
//!
//! raft-rs has had no release since March 2023, so everything of it stays in this
//! module: callers see [`NodeId`]s, bytes, [`MetadataRecord`]s and the plain structs
//! below, never a raft-rs type.
//!
//! The driver (the node thread of a voter) loops:
//! 1. feed inputs: [`Quorum::tick`] every tick interval, [`Quorum::step`] for each
//!    message received, [`Quorum::propose`] for the controller's decisions;
//! 2. while [`Quorum::ready`] gives a [`Step`]: persist it
//!    ([`crate::controller::MetadataLogStore::persist`], fsync included), send its
//!    `messages`, apply its `committed` records (or read [`Quorum::metadata`]), then
//!    hand it back with [`Quorum::advance`]. Nothing may be fed between `ready` and
//!    `advance` (raft-rs forbids it; the quorum refuses with
//!    [`ControllerErrorKind::StepPending`](crate::ControllerErrorKind::StepPending)). A persistence failure stops the node.
//!
//! Rules of raft-rs this module keeps:
//! - Messages that must wait for persistence (raft-rs's persisted messages: votes,
//!   append responses) are held back and given out in the next `Step`, after the
//!   caller persisted the one they depend on. A leader's appends go out at once
//!   (Raft thesis 10.2.1).
//! - Storage holds every entry raft-rs expects (raft-rs panics otherwise): entries
//!   and snapshots go to the in-memory storage in `advance`, after the caller
//!   persisted them and before raft-rs is told.
//! - Every `snapshot_every_entries` applied entries the quorum snapshots its
//!   [`ClusterMetadata`] and compacts the log below it (the `Step`'s `compaction`); a
//!   follower too far behind gets that snapshot. A snapshot message is reported as
//!   sent right away; if it was lost the leader probes again and resends it.
//! - `check_quorum` (an isolated leader steps down) and `pre_vote` (a rejoining node
//!   does not disrupt a working leader) are on.
//! - Election timeouts are drawn from a seeded function of (seed, node, term) rather
//!   than raft-rs's thread RNG, so a simulation replays exactly.
//!
//! Peer bytes are checked before raft-rs sees them ([`Quorum::step`]): undecodable
//! protobuf, a wrong sender or receiver, a message type no peer sends, an entry or
//! snapshot whose payload does not decode are refused with
//! [`ControllerErrorKind::InvalidMessage`](crate::ControllerErrorKind::InvalidMessage). The quorum trusts its peers to follow Raft
//! (no Byzantine faults).

use raft::eraftpb::{
    ConfState, Entry, EntryType, HardState as RaftHardState, Message, MessageType,
    Snapshot as RaftSnapshot,
};
use raft::{GetEntriesContext, RaftState, RawNode, Ready, SnapshotStatus, StateRole, StorageError};
use serde::{Deserialize, Serialize};

use crate::controller::error::{ControllerError, ControllerErrorKind as Kind};
use crate::controller::metadata::{ClusterMetadata, MetadataRecord, NodeId};

/// The largest proposal (its JSON), so one entry stays well below a message's limit.
pub const PROPOSAL_BYTES_MAX: usize = 1 << 20;
/// raft-rs's limit on the entries of one append message.
const MESSAGE_BYTES_MAX: u64 = 1 << 20;
/// raft-rs's limit on append messages in flight to one follower.
const INFLIGHT_MESSAGES_MAX: usize = 256;
/// raft-rs's limit on uncommitted entries on a leader; beyond it proposals are dropped.
const UNCOMMITTED_BYTES_MAX: u64 = 16 << 20;

/// The quorum's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumConfig {
    /// Ticks without hearing a leader before a follower campaigns (randomized up to
    /// twice that).
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats; less than `election_tick`.
    pub heartbeat_tick: usize,
    /// Snapshot the metadata and compact the log every this many applied entries.
    pub snapshot_every_entries: u64,
    /// Seed of the election timeouts (give each run its own in a simulation).
    pub election_seed: u64,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        QuorumConfig {
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every_entries: 1_000,
            election_seed: 0,
        }
    }
}

/// One log entry as persisted: `data` is the JSON of a `Vec<MetadataRecord>`, or
/// empty (a new leader's first entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The log index.
    pub index: u64,
    /// The term of the leader that created it.
    pub term: u64,
    /// The payload.
    pub data: Vec<u8>,
}

/// Raft's durable state besides the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The current term.
    pub term: u64,
    /// The voter this node voted for in `term`.
    pub vote: Option<NodeId>,
    /// The commit index known.
    pub commit: u64,
}

/// The metadata as of a log index, and the voters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last index it covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The quorum's voters.
    pub voters: Vec<NodeId>,
    /// The metadata with every entry up to `index` applied.
    pub metadata: ClusterMetadata,
}

/// What a node recovered from its directory, to [`Quorum::open`] with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last hard state persisted (default when none).
    pub hard_state: HardState,
    /// The last snapshot persisted.
    pub snapshot: Option<Snapshot>,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<LogEntry>,
}

/// The work one [`Quorum::ready`] hands out: persist (`snapshot`, `entries`,
/// `compaction`, `hard_state`), then send `messages` and apply `committed`, then
/// [`Quorum::advance`].
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Messages to send: (receiver, bytes for its [`Quorum::step`]).
    pub messages: Vec<(NodeId, Vec<u8>)>,
    /// A snapshot received from the leader: it replaces the whole log.
    pub snapshot: Option<Snapshot>,
    /// Entries to append; any persisted entry at or after the first one's index is
    /// replaced.
    pub entries: Vec<LogEntry>,
    /// The hard state to persist, when it changed.
    pub hard_state: Option<HardState>,
    /// This node's own snapshot: persist it and drop the entries it covers.
    pub compaction: Option<Snapshot>,
    /// Records committed, in log order, with their index: apply them.
    pub committed: Vec<(u64, MetadataRecord)>,
    /// The raft-rs ready this step carries, if any.
    pub(crate) number: Option<u64>,
}

impl Step {
    /// Nothing to persist, send or apply.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.compaction.is_none()
            && self.committed.is_empty()
            && self.number.is_none()
    }

    /// Something to persist (and fsync) before the messages go out.
    pub fn needs_persist(&self) -> bool {
        self.snapshot.is_some()
            || !self.entries.is_empty()
            || self.hard_state.is_some()
            || self.compaction.is_some()
    }
}

/// One controller voter's Raft state: raft-rs's `RawNode`, its in-memory log, and the
/// metadata applied so far. Owned by the voter's node thread; nothing else touches it.
pub struct Quorum {
    id: NodeId,
    voters: Vec<NodeId>,
    config: QuorumConfig,
    node: RawNode<LogStorage>,
    /// The metadata with every committed entry up to `applied` applied.
    meta: ClusterMetadata,
    applied: u64,
    /// The raft-rs ready given out in a `Step`, until `advance`.
    pending: Option<Ready>,
    /// Messages allowed out only now (after the persistence they waited for).
    outbox: Vec<Message>,
    /// Committed records applied in `advance`, for the next `Step`.
    committed_out: Vec<(u64, MetadataRecord)>,
    compaction_out: Option<Snapshot>,
    /// The commit index moved in `advance`: the next `Step` persists the hard state.
    hard_state_dirty: bool,
    /// Followers a snapshot was sent to, reported to raft-rs after `advance`.
    snapshot_sent_to: Vec<u64>,
    /// This leader's proposals not yet applied: (index, records).
    in_flight: Vec<(u64, Vec<MetadataRecord>)>,
    /// (term, leader) the in-flight proposals belong to.
    role_seen: (u64, bool),
    /// The index of this leader's first entry of its term.
    term_start_index: u64,
}

impl Quorum {
    /// Opens voter `id` of the quorum `voters` (static membership) on what it recovered
    /// from its directory.
    pub fn open(
        id: NodeId,
        voters: &[NodeId],
        recovered: Recovered,
        config: QuorumConfig,
    ) -> Result<Quorum, ControllerError> {
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != voters.len() || !voters.contains(&id) || sorted[0] < 0 {
            return Err(ControllerError::new(
                Kind::InvalidRequest,
                format!("voters {voters:?}: expected distinct non-negative ids including {id}"),
            ));
        }
        let conf_state = ConfState {
            voters: sorted.iter().map(|&v| raft_id(v)).collect(),
            ..Default::default()
        };
        let mut storage = LogStorage {
            hard_state: RaftHardState::default(),
            conf_state: conf_state.clone(),
            snapshot: RaftSnapshot::default(),
            entries: Vec::new(),
        };
        let mut meta = ClusterMetadata::new();
        let mut applied = 0;
        if let Some(s) = recovered.snapshot {
            let mut snap_voters = s.voters.clone();
            snap_voters.sort_unstable();
            if snap_voters != sorted {
                return Err(ControllerError::new(
                    Kind::Corrupt,
                    format!(
                        "snapshot voters {:?}, expected {sorted:?} (membership changes are not supported)",
                        s.voters
                    ),
                ));
            }
            storage.snapshot = raft_snapshot(&s, &conf_state);
            applied = s.index;
            meta = s.metadata;
        }
        for (expected, e) in (applied + 1..).zip(recovered.entries.iter()) {
            if e.index != expected {
                return Err(ControllerError::new(
                    Kind::Corrupt,
                    format!("recovered entry {}, expected index {expected}", e.index),
                ));
            }
            storage.entries.push(Entry {
                entry_type: EntryType::EntryNormal,
                term: e.term,
                index: e.index,
                data: e.data.clone().into(),
                ..Default::default()
            });
        }
        let hs = recovered.hard_state;
        let last_term = storage.term_of(storage.last()).unwrap_or(0);
        let (term, vote) = if hs.term < last_term {
            // The hard state of the last step was not persisted: nothing was sent in
            // that term by this node (see docs/replication.md), so no vote to keep.
            (last_term, 0)
        } else {
            (hs.term, hs.vote.map_or(0, raft_id))
        };
        storage.hard_state = RaftHardState {
            term,
            vote,
            commit: hs.commit.max(applied).min(storage.last()),
            ..Default::default()
        };
        let raft_config = raft::Config {
            id: raft_id(id),
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            max_size_per_msg: MESSAGE_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_MESSAGES_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| ControllerError::new(Kind::InvalidRequest, e.to_string()))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&raft_config, storage, &logger)
            .map_err(|e| ControllerError::new(Kind::Corrupt, e.to_string()))?;
        let mut q = Quorum {
            id,
            voters: sorted,
            config,
            node,
            meta,
            applied,
            pending: None,
            outbox: Vec::new(),
            committed_out: Vec::new(),
            compaction_out: None,
            hard_state_dirty: false,
            snapshot_sent_to: Vec::new(),
            in_flight: Vec::new(),
            role_seen: (0, false),
            term_start_index: 0,
        };
        q.after_input();
        Ok(q)
    }

    /// This voter's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The voters, in id order.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// One tick of the quorum's logical clock (the driver ticks at a fixed interval).
    pub fn tick(&mut self) -> Result<(), ControllerError> {
        self.check_no_step()?;
        self.node.tick();
        self.after_input();
        Ok(())
    }

    /// A message from peer `from` (bytes from its `Step`). Refuses bytes that don't
    /// decode or don't fit (see the module doc); never panics on them.
    pub fn step(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), ControllerError> {
        use protobuf::Message as _;
        self.check_no_step()?;
        let msg = Message::parse_from_bytes(bytes)
            .map_err(|e| invalid(format!("undecodable quorum message from {from}: {e}")))?;
        if from == self.id || !self.voters.contains(&from) {
            return Err(invalid(format!(
                "message from {from}, expected one of the other voters {:?}",
                self.voters
            )));
        }
        if msg.from != raft_id(from) || msg.to != raft_id(self.id) {
            return Err(invalid(format!(
                "message from {from} names sender {} and receiver {}, expected {} and {}",
                msg.from,
                msg.to,
                raft_id(from),
                raft_id(self.id)
            )));
        }
        use MessageType::*;
        let t = msg.get_msg_type();
        if !matches!(
            t,
            MsgAppend
                | MsgAppendResponse
                | MsgRequestVote
                | MsgRequestVoteResponse
                | MsgRequestPreVote
                | MsgRequestPreVoteResponse
                | MsgSnapshot
                | MsgHeartbeat
                | MsgHeartbeatResponse
                | MsgTimeoutNow
        ) {
            return Err(invalid(format!(
                "message type {t:?} from {from}: not a peer's"
            )));
        }
        for e in msg.entries.iter() {
            if e.get_entry_type() != EntryType::EntryNormal {
                return Err(invalid(format!(
                    "entry {} of type {:?}",
                    e.index,
                    e.get_entry_type()
                )));
            }
            if !e.data.is_empty() {
                decode_records(&e.data).map_err(|m| invalid(format!("entry {}: {m}", e.index)))?;
            }
        }
        if t == MsgSnapshot {
            let s = msg.get_snapshot();
            serde_json::from_slice::<ClusterMetadata>(&s.data)
                .map_err(|e| invalid(format!("snapshot from {from}: {e}")))?;
            let mut voters = s.get_metadata().get_conf_state().voters.clone();
            voters.sort_unstable();
            let ours: Vec<u64> = self.voters.iter().map(|&v| raft_id(v)).collect();
            if voters != ours {
                return Err(invalid(format!(
                    "snapshot from {from} with raft voters {voters:?}, expected {ours:?}"
                )));
            }
        }
        self.node
            .step(msg)
            .map_err(|e| invalid(format!("message from {from}: {e}")))?;
        self.after_input();
        Ok(())
    }

    /// Proposes records as one log entry; they apply, in order, when committed.
    /// Refused with [`ControllerErrorKind::NotController`](crate::ControllerErrorKind::NotController) when this node is not the
    /// leader.
    pub fn propose(&mut self, records: Vec<MetadataRecord>) -> Result<(), ControllerError> {
        self.check_no_step()?;
        if !self.is_leader() {
            return Err(ControllerError::new(
                Kind::NotController,
                format!(
                    "node {} is not the controller leader; the leader is {:?}",
                    self.id,
                    self.leader_id()
                ),
            ));
        }
        if records.is_empty() {
            return Ok(());
        }
        let data = serde_json::to_vec(&records)
            .map_err(|e| ControllerError::new(Kind::InvalidRequest, e.to_string()))?;
        if data.len() > PROPOSAL_BYTES_MAX {
            return Err(ControllerError::new(
                Kind::ProposalDropped,
                format!(
                    "proposal of {} bytes, expected at most {PROPOSAL_BYTES_MAX}",
                    data.len()
                ),
            ));
        }
        self.node
            .propose(Vec::new(), data)
            .map_err(|e| ControllerError::new(Kind::ProposalDropped, e.to_string()))?;
        let index = self.node.raft.raft_log.last_index();
        self.in_flight.push((index, records));
        self.after_input();
        Ok(())
    }

    /// The index of the last entry in the log (after a proposal: the proposal's).
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// This node leads the quorum (it may not know yet that it was deposed).
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The leader this node knows, if any.
    pub fn leader_id(&self) -> Option<NodeId> {
        match self.node.raft.leader_id {
            0 => None,
            r => Some(node_id(r)),
        }
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// The leader has applied every entry before its term's first one, so its
    /// metadata is complete and [`crate::controller::ControllerLogic`] may decide on
    /// it (call [`crate::controller::ControllerLogic::on_became_leader`] when this turns
    /// true).
    pub fn can_decide(&self) -> bool {
        self.is_leader() && self.applied >= self.term_start_index
    }

    /// The metadata applied so far.
    pub fn metadata(&self) -> &ClusterMetadata {
        &self.meta
    }

    /// The index of the last entry applied.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The applied metadata with this leader's proposals not yet applied applied to
    /// it: what the controller should decide on. The applied metadata on a follower.
    pub fn projected_metadata(&self) -> ClusterMetadata {
        let mut m = self.meta.clone();
        for (index, records) in &self.in_flight {
            for r in records {
                m.apply(*index, r);
            }
        }
        m
    }

    /// The work to do now, if any. The committed records it carries are already
    /// applied to [`Quorum::metadata`]. Hand it back with [`Quorum::advance`] after
    /// persisting it.
    pub fn ready(&mut self) -> Result<Option<Step>, ControllerError> {
        self.check_no_step()?;
        let mut step = Step {
            committed: std::mem::take(&mut self.committed_out),
            compaction: self.compaction_out.take(),
            ..Default::default()
        };
        let mut messages = std::mem::take(&mut self.outbox);
        if self.node.has_ready() {
            let mut rd = self.node.ready();
            step.number = Some(rd.number());
            messages.extend(rd.take_messages());
            if !rd.snapshot().is_empty() {
                let s = rd.snapshot();
                let metadata = serde_json::from_slice(&s.data)
                    .map_err(|e| corrupt(format!("snapshot being installed: {e}")))?;
                step.snapshot = Some(Snapshot {
                    index: s.get_metadata().index,
                    term: s.get_metadata().term,
                    voters: self.voters.clone(),
                    metadata,
                });
            }
            step.entries = rd
                .entries()
                .iter()
                .map(|e| LogEntry {
                    index: e.index,
                    term: e.term,
                    data: e.data.to_vec(),
                })
                .collect();
            if let Some(hs) = rd.hs() {
                step.hard_state = Some(plain_hard_state(hs));
                self.hard_state_dirty = false;
            }
            let committed = rd.take_committed_entries();
            self.pending = Some(rd);
            step.committed.extend(self.apply_entries(&committed)?);
        }
        if self.hard_state_dirty {
            step.hard_state = Some(plain_hard_state(&self.node.raft.hard_state()));
            self.hard_state_dirty = false;
        }
        step.messages = self.encode(messages);
        Ok((!step.is_empty()).then_some(step))
    }

    /// The caller persisted `step` (fsync included) and sent its messages: raft-rs may
    /// go on.
    pub fn advance(&mut self, step: Step) -> Result<(), ControllerError> {
        let number = self.pending.as_ref().map(|rd| rd.number());
        if step.number != number {
            return Err(ControllerError::new(
                Kind::InvalidRequest,
                format!(
                    "advance with step {:?}, expected the step given out last ({number:?})",
                    step.number
                ),
            ));
        }
        if let Some(mut rd) = self.pending.take() {
            self.outbox.extend(rd.take_persisted_messages());
            let store = self.node.mut_store();
            if !rd.snapshot().is_empty() {
                store.install(rd.snapshot().clone());
                if let Some(s) = step.snapshot {
                    self.meta = s.metadata;
                    self.applied = s.index;
                    self.in_flight.clear();
                }
            }
            let store = self.node.mut_store();
            store.append(rd.entries());
            if let Some(hs) = rd.hs() {
                store.hard_state = hs.clone();
            }
            let mut light = self.node.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.node.mut_store().hard_state.commit = commit;
                self.hard_state_dirty = true;
            }
            self.outbox.extend(light.take_messages());
            let committed = light.take_committed_entries();
            let applied = self.apply_entries(&committed)?;
            self.committed_out.extend(applied);
            self.node.advance_apply();
        }
        for to in std::mem::take(&mut self.snapshot_sent_to) {
            self.node.report_snapshot(to, SnapshotStatus::Finish);
        }
        self.maybe_compact();
        self.after_input();
        Ok(())
    }

    fn check_no_step(&self) -> Result<(), ControllerError> {
        match &self.pending {
            None => Ok(()),
            Some(rd) => Err(ControllerError::new(
                Kind::StepPending,
                format!(
                    "step {} is out: expected advance() before feeding the quorum",
                    rd.number()
                ),
            )),
        }
    }

    fn encode(&mut self, messages: Vec<Message>) -> Vec<(NodeId, Vec<u8>)> {
        use protobuf::Message as _;
        messages
            .into_iter()
            .map(|m| {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.snapshot_sent_to.push(m.to);
                }
                let bytes = m
                    .write_to_bytes()
                    .expect("a raft message always encodes (no required fields)");
                (node_id(m.to), bytes)
            })
            .collect()
    }

    /// Applies committed entries to the metadata (they were persisted).
    fn apply_entries(
        &mut self,
        entries: &[Entry],
    ) -> Result<Vec<(u64, MetadataRecord)>, ControllerError> {
        let mut out = Vec::new();
        for e in entries {
            assert!(e.index > self.applied, "entries apply in order, once");
            self.applied = e.index;
            self.in_flight.retain(|(i, _)| *i > e.index);
            if e.data.is_empty() {
                continue;
            }
            let records = decode_records(&e.data)
                .map_err(|m| corrupt(format!("committed entry {}: {m}", e.index)))?;
            for r in records {
                self.meta.apply(e.index, &r);
                out.push((e.index, r));
            }
        }
        Ok(out)
    }

    fn maybe_compact(&mut self) {
        let store = self.node.store();
        let snap_index = store.snap_index();
        if self.applied < snap_index + self.config.snapshot_every_entries.max(1)
            || self.applied > store.last()
        {
            return;
        }
        let term = store
            .term_of(self.applied)
            .expect("applied entries are in storage");
        let snapshot = Snapshot {
            index: self.applied,
            term,
            voters: self.voters.clone(),
            metadata: self.meta.clone(),
        };
        let raft_snap = raft_snapshot(&snapshot, &store.conf_state.clone());
        self.node.mut_store().compact(raft_snap);
        self.compaction_out = Some(snapshot);
    }

    /// After every input: deterministic election timeout, in-flight proposals of a
    /// lost leadership forgotten, a new leadership's first index noted.
    fn after_input(&mut self) {
        let raft = &mut self.node.raft;
        // raft-rs's defaults: [election_tick, 2 * election_tick).
        let min = self.config.election_tick;
        let max = 2 * self.config.election_tick;
        let h = mix(self.config.election_seed ^ mix(raft.id) ^ mix(raft.term).rotate_left(17));
        raft.set_randomized_election_timeout(min + (h % (max - min).max(1) as u64) as usize);
        let role = (raft.term, raft.state == StateRole::Leader);
        if role != self.role_seen {
            self.in_flight.clear();
            if role.1 {
                self.term_start_index = raft.raft_log.last_index();
            }
            self.role_seen = role;
        }
    }
}

/// raft-rs ids start at 1; ringmq node ids at 0.
fn raft_id(node: NodeId) -> u64 {
    node as u64 + 1
}

fn node_id(raft_id: u64) -> NodeId {
    (raft_id - 1) as NodeId
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn invalid(message: String) -> ControllerError {
    ControllerError::new(Kind::InvalidMessage, message)
}

fn corrupt(message: String) -> ControllerError {
    ControllerError::new(Kind::Corrupt, message)
}

fn decode_records(data: &[u8]) -> Result<Vec<MetadataRecord>, String> {
    serde_json::from_slice(data).map_err(|e| format!("not a list of metadata records: {e}"))
}

fn plain_hard_state(hs: &RaftHardState) -> HardState {
    HardState {
        term: hs.term,
        vote: (hs.vote != 0).then(|| node_id(hs.vote)),
        commit: hs.commit,
    }
}

fn raft_snapshot(s: &Snapshot, conf_state: &ConfState) -> RaftSnapshot {
    let mut snap = RaftSnapshot {
        data: serde_json::to_vec(&s.metadata)
            .expect("metadata always serializes")
            .into(),
        ..Default::default()
    };
    let m = snap.mut_metadata();
    m.index = s.index;
    m.term = s.term;
    m.set_conf_state(conf_state.clone());
    snap
}

/// raft-rs's view of the log: in memory, a copy of what the caller persisted.
/// Invariant: `entries[0].index == snapshot index + 1`.
struct LogStorage {
    hard_state: RaftHardState,
    conf_state: ConfState,
    /// Index 0 when there is none.
    snapshot: RaftSnapshot,
    entries: Vec<Entry>,
}

impl LogStorage {
    fn snap_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snap_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snap_index(), |e| e.index)
    }

    fn term_of(&self, index: u64) -> raft::Result<u64> {
        if index == self.snap_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first()) as usize].term)
    }

    /// Appends, replacing any entry at or after the first new one.
    fn append(&mut self, entries: &[Entry]) {
        let Some(first_new) = entries.first() else {
            return;
        };
        assert!(
            first_new.index > self.snap_index() && first_new.index <= self.last() + 1,
            "append at {} to a log of {}..={}",
            first_new.index,
            self.first(),
            self.last()
        );
        self.entries
            .truncate((first_new.index - self.first()) as usize);
        self.entries.extend_from_slice(entries);
    }

    /// A snapshot from the leader replaces the whole log.
    fn install(&mut self, snapshot: RaftSnapshot) {
        let m = snapshot.get_metadata();
        self.hard_state.commit = self.hard_state.commit.max(m.index);
        self.hard_state.term = self.hard_state.term.max(m.term);
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Our own snapshot: drop the entries it covers.
    fn compact(&mut self, snapshot: RaftSnapshot) {
        let index = snapshot.get_metadata().index;
        assert!(index >= self.snap_index() && index <= self.last());
        self.entries.drain(..(index - self.snap_index()) as usize);
        self.snapshot = snapshot;
    }
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut entries = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.term_of(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<RaftSnapshot> {
        if self.snap_index() == 0 || self.snap_index() < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}
