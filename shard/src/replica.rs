//! A partition's place in the cluster: alone (a single node), leader, follower, or
//! without a leader, with the replication rules of [`ringmq_replication`] applied to
//! its log.
//!
//! Owned by the partition's shard. The role changes only when cluster metadata is
//! applied, in order ([`Partition::lead`], [`Partition::follow`],
//! [`Partition::stand_by`]); the rules' other events come from the data path: an
//! append ([`Partition::produce`]), a follower's fetch ([`Partition::follower_fetched`]),
//! time ([`Partition::tick`]), and on a follower the leader's answers
//! ([`Partition::on_epoch_answer`], [`Partition::append_from_leader`]).
//!
//! The rules decide; this module carries out their effects: it completes or fails
//! the acks=all produces waiting for the high watermark, truncates the log where a
//! follower diverged, appends the leader's batches at the leader's offsets, and queues
//! ISR changes for the controller in an [`Outbox`] the cluster driver drains.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use ringmq_replication::{
    BatchMeta, Durability, Effects, EpochEndOffset, EpochEntry, EpochHistory, FetchResponse,
    FetchVerdict, FollowerFetch, FollowerRequest, FollowerState, IsrProposal, LeaderConfig,
    LeaderInit, LeaderState, ProduceVerdict, ResponseVerdict, TruncateStep, WaiterId,
};
use ringmq_storage::{FlushPolicy, Notify, batch};

use crate::error::{BrokerError, ErrorKind};
use crate::ops::TopicPartition;
use crate::partition::Partition;
use crate::producers::{self, Producers};

/// Longest an acks=all produce waits for its batch to be replicated before it is
/// answered `Timeout` (Kafka's default `request.timeout.ms`): a leader cut off from its
/// followers and from the controller cannot tell it lost its leadership, and native
/// clients have no request timeout of their own.
pub const ACKS_ALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bytes a leader of a replicated partition admits above its high watermark: appends
/// past it wait (in arrival order) until the followers have taken enough. Without a
/// bound a fast producer puts the leader tens of MB ahead of its followers, whose
/// fetches then read the data back from the segment files (a copy per follower, 40% of
/// the leader's CPU in `benches/cluster.sh`); within it they are served from the log's
/// tail cache, sized to hold it. An acks=all produce waits for the followers anyway;
/// acks=1 and acks=0 producers are slowed to what the followers take.
pub const REPLICATION_WINDOW_BYTES: u64 = 8 << 20;

/// The replication window of a leader ([`REPLICATION_WINDOW_BYTES`]): appends are
/// admitted first come, first served (an idempotent producer's batches keep their
/// order), and their bytes are given back as the high watermark passes them.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Bytes admitted and not yet below the high watermark.
    in_flight: Cell<u64>,
    next_ticket: Cell<u64>,
    /// The ticket admitted next.
    serving: Cell<u64>,
    /// Tickets whose produce went away before its turn.
    abandoned: RefCell<std::collections::BTreeSet<u64>>,
    /// Appended batches above the high watermark: (end offset, bytes).
    held: RefCell<std::collections::VecDeque<(i64, u64)>>,
    closed: Cell<bool>,
    changed: Notify,
}

/// A place in a [`Window`]'s queue; given up if dropped before its turn.
struct Ticket<'a> {
    window: &'a Window,
    ticket: u64,
    admitted: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            self.window.abandoned.borrow_mut().insert(self.ticket);
            self.window.changed.notify_all();
        }
    }
}

impl Window {
    /// Waits for room for `bytes` (all of the window when it is empty, whatever the
    /// size); `false` once the window is closed (the leadership moved).
    pub(crate) async fn admit(&self, bytes: u64) -> bool {
        let mut t = Ticket {
            window: self,
            ticket: self.next_ticket.get(),
            admitted: false,
        };
        self.next_ticket.set(t.ticket + 1);
        loop {
            if self.closed.get() {
                return false;
            }
            {
                let mut abandoned = self.abandoned.borrow_mut();
                while abandoned.remove(&self.serving.get()) {
                    self.serving.set(self.serving.get() + 1);
                }
            }
            let room = self.in_flight.get() == 0
                || self.in_flight.get() + bytes <= REPLICATION_WINDOW_BYTES;
            if self.serving.get() == t.ticket && room {
                t.admitted = true;
                self.in_flight.set(self.in_flight.get() + bytes);
                self.serving.set(t.ticket + 1);
                self.changed.notify_all();
                return true;
            }
            self.changed.changed().await;
        }
    }

    /// An admitted append of `bytes` ended at `end_offset` (`None`: it failed, or was
    /// a duplicate): held until the high watermark `hw` passes it.
    pub(crate) fn appended(&self, end_offset: Option<i64>, bytes: u64, hw: i64) {
        match end_offset {
            Some(end) if end > hw => self.held.borrow_mut().push_back((end, bytes)),
            _ => self.give_back(bytes),
        }
    }

    /// The high watermark moved to `hw`: the bytes below it are given back.
    fn release_to(&self, hw: i64) {
        let mut freed = 0;
        {
            let mut held = self.held.borrow_mut();
            while held.front().is_some_and(|&(end, _)| end <= hw) {
                freed += held.pop_front().expect("checked").1;
            }
        }
        if freed > 0 {
            self.give_back(freed);
        }
    }

    fn give_back(&self, bytes: u64) {
        self.in_flight
            .set(self.in_flight.get().saturating_sub(bytes));
        self.changed.notify_all();
    }

    /// The leadership moved: every waiting append is refused.
    fn close(&self) {
        self.closed.set(true);
        self.changed.notify_all();
    }
}

/// A partition's replication state.
#[derive(Debug)]
pub(crate) enum Replication {
    /// A single node: the leader alone; the flush policy decides the high watermark.
    Alone,
    /// Leads a replicated partition.
    Leader(Box<Leading>),
    /// Follows a leader.
    Follower(Box<FollowerState>),
    /// Replicated, but no leader is known here (the metadata has not arrived, or the
    /// partition is offline): nothing is served. Keeps the high watermark it knew.
    Leaderless {
        /// The last high watermark known.
        high_watermark: i64,
    },
}

/// A leader's state: the rules' [`LeaderState`] and the acks=all produces waiting.
#[derive(Debug)]
pub(crate) struct Leading {
    state: LeaderState,
    waiters: BTreeMap<WaiterId, Outcome>,
    outbox: Rc<Outbox>,
    /// With followers: the replication window.
    window: Option<Rc<Window>>,
}

/// Where an acks=all produce's outcome lands once the rules settle it.
type Outcome = Rc<Cell<Option<Result<(), ErrorKind>>>>;

/// An ISR change a leader asks the controller for (Kafka's AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    /// The partition.
    pub tp: TopicPartition,
    /// The leader epoch the leader leads in.
    pub leader_epoch: i32,
    /// The change.
    pub proposal: IsrProposal,
}

/// ISR changes waiting to be sent to the controller, for one shard; the cluster driver
/// drains it ([`Outbox::take`]) when [`Outbox::ready`] fires.
#[derive(Debug, Default)]
pub struct Outbox {
    items: RefCell<Vec<IsrChange>>,
    ready: Notify,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    fn push(&self, change: IsrChange) {
        self.items.borrow_mut().push(change);
        self.ready.notify_all();
    }

    /// Everything queued, oldest first.
    pub fn take(&self) -> Vec<IsrChange> {
        std::mem::take(&mut *self.items.borrow_mut())
    }

    /// Resolves when something may have been queued since the call.
    pub async fn ready(&self) {
        if !self.items.borrow().is_empty() {
            return;
        }
        self.ready.changed().await;
    }
}

/// The leadership the controller gave a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// This broker's id.
    pub me: i32,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch of the ISR.
    pub partition_epoch: i32,
    /// The assigned replicas.
    pub replicas: Vec<i32>,
    /// The in-sync replicas.
    pub isr: Vec<i32>,
}

/// The settings a leader's rules take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// `replica.lag.time.max.ms`: an ISR follower not caught up for this long is
    /// removed.
    pub replica_lag_time_max_ms: u64,
}

/// What a leader tells a follower with the records it fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderAnswer {
    /// The leader epoch of the answering leader.
    pub leader_epoch: i32,
    /// The leader's high watermark.
    pub high_watermark: i64,
    /// Whole batches, from the follower's fetch offset.
    pub records: Bytes,
}

fn not_leader(tp: &TopicPartition, what: &str) -> BrokerError {
    BrokerError::new(
        ErrorKind::NotLeader,
        format!("{tp}: this broker is not the leader ({what})"),
    )
}

impl Partition {
    /// The rules' settings for this partition now.
    fn leader_config(&self, settings: ReplicaSettings) -> LeaderConfig {
        LeaderConfig {
            min_insync_replicas: self.policy().min_insync_replicas.max(1) as usize,
            replica_lag_time_max_ms: settings.replica_lag_time_max_ms,
            durability: match self.log().flush_policy() {
                FlushPolicy::EveryBatch => Durability::EveryBatch,
                _ => Durability::LogEnd,
            },
        }
    }

    /// The high watermark this replica knows, whatever its role.
    pub(crate) fn replicated_high_watermark(&self) -> Option<i64> {
        match &*self.replication.borrow() {
            Replication::Alone => None,
            Replication::Leader(l) => Some(l.state.high_watermark()),
            Replication::Follower(f) => Some(f.high_watermark()),
            Replication::Leaderless { high_watermark } => Some(*high_watermark),
        }
    }

    /// Whether this replica may take produce and serve consumers: `Err` says why not.
    pub(crate) fn check_leading(&self, what: &str) -> Result<(), BrokerError> {
        match &*self.replication.borrow() {
            Replication::Alone | Replication::Leader(_) => Ok(()),
            Replication::Follower(_) => Err(not_leader(self.tp(), what)),
            Replication::Leaderless { .. } => Err(BrokerError::new(
                ErrorKind::LeaderNotAvailable,
                format!(
                    "{}: no leader is known for this partition ({what})",
                    self.tp()
                ),
            )),
        }
    }

    /// Whether the partition is replicated (part of a cluster).
    pub fn is_replicated(&self) -> bool {
        !matches!(&*self.replication.borrow(), Replication::Alone)
    }

    /// The in-sync replicas (1 alone, and 0 where this replica does not lead).
    pub fn in_sync_replicas(&self) -> usize {
        match &*self.replication.borrow() {
            Replication::Alone => 1,
            Replication::Leader(l) => l.state.isr().len(),
            _ => 0,
        }
    }

    /// The partition's replication for the metrics: whether this replica leads it, the
    /// assigned replicas, the in-sync ones, and on a leader each follower's distance
    /// behind the log end (the whole log end while the follower has not fetched).
    pub(crate) fn replication_figures(&self) -> ReplicationFigures {
        let log_end = self.log().end_offset();
        match &*self.replication.borrow() {
            Replication::Alone => ReplicationFigures {
                leads: true,
                replicas: 1,
                in_sync: 1,
                follower_lag: Vec::new(),
            },
            Replication::Leader(l) => ReplicationFigures {
                leads: true,
                replicas: l.state.assignment().len(),
                in_sync: l.state.isr().len(),
                follower_lag: l
                    .state
                    .assignment()
                    .iter()
                    .filter(|&&r| r != self.me())
                    .map(|&r| {
                        let at = l.state.follower_log_end_offset(r).unwrap_or(0);
                        (r, (log_end - at).max(0))
                    })
                    .collect(),
            },
            Replication::Follower(_) | Replication::Leaderless { .. } => ReplicationFigures {
                leads: false,
                replicas: 0,
                in_sync: 0,
                follower_lag: Vec::new(),
            },
        }
    }

    /// Whether `replica` is an assigned follower of this leader.
    pub(crate) fn has_follower(&self, replica: i32) -> bool {
        match &*self.replication.borrow() {
            Replication::Leader(l) => {
                replica != self.me() && l.state.assignment().contains(&replica)
            }
            _ => false,
        }
    }

    fn me(&self) -> i32 {
        self.me.get()
    }

    /// Opened in a cluster: replicated with no leader known yet, at the high watermark
    /// last checkpointed (never the log end, which may hold records no quorum has).
    pub(crate) async fn stand_by_at_checkpoint(&self) {
        let hw = match self.log().high_watermark_checkpoint().await {
            Ok(Some(hw)) => hw,
            Ok(None) => self.log().start_offset(),
            Err(e) => {
                tracing::warn!(partition = %self.tp(), error = %e, "reading the high-watermark checkpoint failed; starting from the log start");
                self.log().start_offset()
            }
        };
        let hw = hw.clamp(self.log().start_offset(), self.log().end_offset());
        self.checkpointed_high_watermark.set(hw);
        self.set_replication(Replication::Leaderless { high_watermark: hw });
    }

    /// Writes the high watermark to the partition's checkpoint if it moved since the
    /// last one (a restarted replica starts from it).
    pub(crate) async fn checkpoint_high_watermark(&self) {
        let hw = self.high_watermark();
        if hw == self.checkpointed_high_watermark.get() {
            return;
        }
        match self.log().checkpoint_high_watermark(hw).await {
            Ok(()) => self.checkpointed_high_watermark.set(hw),
            Err(e) => {
                tracing::warn!(partition = %self.tp(), error = %e, "checkpointing the high watermark failed")
            }
        }
    }

    /// Marks the partition replicated with no leader known yet (a node starting in a
    /// cluster, or a partition whose leader the controller could not elect). Waiting
    /// acks=all produces fail with NOT_LEADER_OR_FOLLOWER.
    pub fn stand_by(&self) {
        let hw = self.high_watermark();
        self.set_replication(Replication::Leaderless { high_watermark: hw });
        self.set_leader_epoch_cell(self.leader_epoch());
    }

    /// Takes the leadership the controller gave: records the new leader epoch at the
    /// log end (durably, before any record of it), and starts the leader's rules with
    /// the followers counted caught up now. Already leading in this epoch, it takes
    /// the new ISR (a committed AlterPartition) instead.
    pub async fn lead(
        &self,
        leadership: Leadership,
        settings: ReplicaSettings,
        outbox: Rc<Outbox>,
        now_ms: u64,
    ) -> Result<(), BrokerError> {
        {
            let mut r = self.replication.borrow_mut();
            if let Replication::Leader(l) = &mut *r
                && l.state.leader_epoch() == leadership.leader_epoch
            {
                let effects = l
                    .state
                    .on_isr_committed(&leadership.isr, leadership.partition_epoch);
                drop(r);
                self.carry_out(effects, leadership.leader_epoch);
                return Ok(());
            }
        }
        let was_follower = matches!(
            &*self.replication.borrow(),
            Replication::Follower(_) | Replication::Leaderless { .. }
        );
        self.me.set(leadership.me);
        self.log()
            .set_leader_epoch(leadership.leader_epoch)
            .await
            .map_err(|e| {
                BrokerError::new(
                    ErrorKind::Storage,
                    format!(
                        "{}: recording leader epoch {}: {e}",
                        self.tp(),
                        leadership.leader_epoch
                    ),
                )
            })?;
        if was_follower {
            // The producers' state follows the log the follower replicated.
            match Producers::rebuild(self.log()).await {
                Ok(p) => *self.producers.borrow_mut() = p,
                Err(e) => {
                    tracing::warn!(partition = %self.tp(), error = %e, "rebuilding idempotent producer state failed")
                }
            }
        }
        let log_end_offset = self.log().end_offset();
        let durable_offset = self.log().durable_offset().min(log_end_offset);
        let high_watermark = self.high_watermark().min(log_end_offset);
        let mut isr = leadership.isr.clone();
        if !isr.contains(&leadership.me) {
            isr.push(leadership.me);
        }
        let state = LeaderState::with_start_time(
            LeaderInit {
                me: leadership.me,
                leader_epoch: leadership.leader_epoch,
                partition_epoch: leadership.partition_epoch,
                assignment: leadership.replicas.clone(),
                isr,
                log_end_offset,
                durable_offset,
                high_watermark,
            },
            self.leader_config(settings),
            now_ms,
        );
        let replicated = leadership.replicas.len() > 1;
        let old = self.set_replication(Replication::Leader(Box::new(Leading {
            state,
            waiters: BTreeMap::new(),
            outbox,
            window: replicated.then(|| Rc::new(Window::default())),
        })));
        drop(old);
        if replicated {
            // What the followers have yet to fetch stays in memory.
            self.log()
                .set_tail_cache_floor(REPLICATION_WINDOW_BYTES as usize + (1 << 20));
        }
        self.set_leader_epoch_cell(leadership.leader_epoch);
        tracing::info!(partition = %self.tp(), epoch = leadership.leader_epoch, isr = ?leadership.isr, log_end_offset, high_watermark, "leading");
        self.high_watermark_moved().notify_all();
        Ok(())
    }

    /// Follows `leader` in `leader_epoch`, as the controller decided: the follower's
    /// rules start from the log as it is (it asks the leader where its latest epoch ends
    /// before fetching). An older epoch than the one followed is ignored.
    pub fn follow(&self, me: i32, leader: i32, leader_epoch: i32) {
        if let Replication::Follower(f) = &*self.replication.borrow()
            && f.leader() == Some(leader)
            && f.leader_epoch() >= leader_epoch
        {
            return;
        }
        self.me.set(me);
        let history = EpochHistory::from_entries(
            self.log()
                .leader_epochs()
                .into_iter()
                .map(|(epoch, start_offset)| EpochEntry {
                    epoch,
                    start_offset,
                })
                .collect(),
        );
        let log_end_offset = self.log().end_offset();
        let durable_offset = self.log().durable_offset().min(log_end_offset);
        let mut state = FollowerState::new(
            me,
            history,
            log_end_offset,
            durable_offset,
            self.high_watermark().min(log_end_offset),
        );
        if state.become_follower(leader, leader_epoch).is_none() {
            return;
        }
        self.set_replication(Replication::Follower(Box::new(state)));
        self.set_leader_epoch_cell(leader_epoch);
        tracing::info!(partition = %self.tp(), leader, epoch = leader_epoch, log_end_offset, "following");
    }

    /// Replaces the replication state; a leader's waiting produces fail with
    /// NOT_LEADER_OR_FOLLOWER.
    fn set_replication(&self, new: Replication) -> Replication {
        let leads = matches!(new, Replication::Leader(_));
        let old = std::mem::replace(&mut *self.replication.borrow_mut(), new);
        if let Replication::Leader(l) = &old {
            for cell in l.waiters.values() {
                cell.set(Some(Err(ErrorKind::NotLeader)));
            }
            if let Some(w) = &l.window {
                w.close();
            }
            self.high_watermark_moved().notify_all();
            if !leads {
                self.log().set_tail_cache_floor(0);
            }
        }
        old
    }

    /// Carries out what the leader's rules decided.
    fn carry_out(&self, effects: Effects, leader_epoch: i32) {
        let mut r = self.replication.borrow_mut();
        let Replication::Leader(l) = &mut *r else {
            return;
        };
        let mut moved = !effects.completed.is_empty() || !effects.failed.is_empty();
        for w in effects.completed {
            if let Some(cell) = l.waiters.remove(&w) {
                cell.set(Some(Ok(())));
            }
        }
        for w in effects.failed {
            if let Some(cell) = l.waiters.remove(&w) {
                cell.set(Some(Err(ErrorKind::NotEnoughReplicasAfterAppend)));
            }
        }
        if effects.high_watermark > self.last_high_watermark.get() {
            self.last_high_watermark.set(effects.high_watermark);
            moved = true;
        }
        if let Some(w) = &l.window {
            w.release_to(self.last_high_watermark.get());
        }
        if let Some(proposal) = effects.proposal {
            l.outbox.push(IsrChange {
                tp: self.tp().clone(),
                leader_epoch,
                proposal,
            });
        }
        drop(r);
        if moved {
            self.high_watermark_moved().notify_all();
            self.signal_data();
        }
    }

    /// The replication window of a leader with followers.
    pub(crate) fn window(&self) -> Option<Rc<Window>> {
        match &*self.replication.borrow() {
            Replication::Leader(l) => l.window.clone(),
            _ => None,
        }
    }

    /// acks=all on a replicated leader: refused at once when the ISR is too small.
    pub(crate) fn check_acks_all(&self) -> Result<(), BrokerError> {
        let r = self.replication.borrow();
        let Replication::Leader(l) = &*r else {
            return Ok(());
        };
        let isr = l.state.isr().len();
        let min = l.state.config().min_insync_replicas;
        if isr < min {
            return Err(BrokerError::new(
                ErrorKind::NotEnoughReplicas,
                format!(
                    "{}: min.insync.replicas={min} but the in-sync replica set has {isr} replica{}",
                    self.tp(),
                    if isr == 1 { "" } else { "s" }
                ),
            ));
        }
        Ok(())
    }

    /// After an append to a replicated leader's log: tells the rules, and with acks=all
    /// waits until the high watermark passes `end_offset` (or the append cannot be
    /// acknowledged as replicated).
    pub(crate) async fn after_leader_append(
        &self,
        end_offset: i64,
        wait: bool,
    ) -> Result<(), BrokerError> {
        let log_end = self.log().end_offset();
        let durable = self.log().durable_offset().min(log_end);
        let (cell, effects, epoch) = {
            let mut r = self.replication.borrow_mut();
            let Replication::Leader(l) = &mut *r else {
                return match &*r {
                    Replication::Alone => Ok(()),
                    _ => Err(not_leader(self.tp(), "leadership moved during the append")),
                };
            };
            let epoch = l.state.leader_epoch();
            let effects = l.state.on_local_log(log_end, durable);
            if !wait {
                (None, effects, epoch)
            } else {
                match l.state.on_produce(end_offset - 1) {
                    ProduceVerdict::Wait {
                        waiter,
                        effects: e2,
                    } => {
                        let cell = Rc::new(Cell::new(None));
                        l.waiters.insert(waiter, cell.clone());
                        let mut effects = effects;
                        effects.completed.extend(e2.completed);
                        effects.failed.extend(e2.failed);
                        effects.high_watermark = e2.high_watermark;
                        effects.proposal = effects.proposal.or(e2.proposal);
                        (Some(cell), effects, epoch)
                    }
                    ProduceVerdict::NotEnoughReplicas => {
                        drop(r);
                        self.carry_out(effects, epoch);
                        return Err(BrokerError::new(
                            ErrorKind::NotEnoughReplicasAfterAppend,
                            format!(
                                "{}: appended, but the in-sync replicas fell below min.insync.replicas",
                                self.tp()
                            ),
                        ));
                    }
                }
            }
        };
        self.carry_out(effects, epoch);
        let Some(cell) = cell else { return Ok(()) };
        let deadline = std::time::Instant::now() + ACKS_ALL_TIMEOUT;
        loop {
            let moved = self.high_watermark_moved().changed();
            match cell.get() {
                Some(Ok(())) => return Ok(()),
                Some(Err(kind)) => {
                    return Err(BrokerError::new(
                        kind,
                        format!(
                            "{}: appended at offset {} but not acknowledged as replicated",
                            self.tp(),
                            end_offset - 1
                        ),
                    ));
                }
                None => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        // Not an acknowledgement: the batch may yet commit, or be cut
                        // by a new leader; an idempotent retry finds out which.
                        return Err(BrokerError::new(
                            ErrorKind::Timeout,
                            format!(
                                "{}: appended at offset {} but not replicated to the in-sync replicas within {} s",
                                self.tp(),
                                end_offset - 1,
                                ACKS_ALL_TIMEOUT.as_secs()
                            ),
                        ));
                    }
                    futures_lite::future::or(moved, glommio::timer::sleep(left)).await;
                }
            }
        }
    }

    /// A follower fetched from `fetch_offset` believing in `leader_epoch`, durable
    /// below `durable_offset`: the leader's rules count it (which may move the high
    /// watermark or ask to add it to the ISR). `Err` when this replica cannot serve it.
    pub fn follower_fetched(
        &self,
        replica: i32,
        leader_epoch: i32,
        fetch_offset: i64,
        durable_offset: i64,
        now_ms: u64,
    ) -> Result<(), BrokerError> {
        // The log may hold more than the rules were told (an append is reported when
        // its produce resumes, after the flush policy; a follower may already have read
        // it): bring the rules up to the log first, or the fetch would look past the end.
        let log_end = self.log().end_offset();
        let durable = self.log().durable_offset().min(log_end);
        let (verdict, epoch) = {
            let mut r = self.replication.borrow_mut();
            let Replication::Leader(l) = &mut *r else {
                drop(r);
                return Err(match self.check_leading("replica fetch") {
                    Err(e) => e,
                    Ok(()) => not_leader(self.tp(), "the partition is not replicated"),
                });
            };
            let epoch = l.state.leader_epoch();
            let caught_up = l.state.on_local_log(log_end, durable);
            drop(r);
            self.carry_out(caught_up, epoch);
            let mut r = self.replication.borrow_mut();
            let Replication::Leader(l) = &mut *r else {
                return Err(not_leader(self.tp(), "leadership moved"));
            };
            let fetch = FollowerFetch {
                replica,
                fetch_offset,
                durable_offset: durable_offset.min(fetch_offset),
                leader_epoch,
            };
            (l.state.on_follower_fetch(&fetch, now_ms), epoch)
        };
        match verdict {
            FetchVerdict::Ok(effects) => {
                self.carry_out(effects, epoch);
                Ok(())
            }
            FetchVerdict::FencedLeaderEpoch => Err(BrokerError::new(
                ErrorKind::FencedLeaderEpoch,
                format!(
                    "{}: leader epoch {leader_epoch} is older than {epoch}",
                    self.tp()
                ),
            )),
            FetchVerdict::UnknownLeaderEpoch => Err(BrokerError::new(
                ErrorKind::UnknownLeaderEpoch,
                format!(
                    "{}: leader epoch {leader_epoch} is newer than {epoch}",
                    self.tp()
                ),
            )),
            FetchVerdict::NotAReplica => Err(BrokerError::new(
                ErrorKind::NotLeader,
                format!(
                    "{}: broker {replica} is not a follower of this partition",
                    self.tp()
                ),
            )),
            FetchVerdict::OffsetOutOfRange => Err(BrokerError::new(
                ErrorKind::OffsetOutOfRange,
                format!(
                    "{}: replica fetch at {fetch_offset} is past the log end {}",
                    self.tp(),
                    self.log().end_offset()
                ),
            )),
        }
    }

    /// Time passed: a leader proposes removing followers that fell behind.
    pub fn tick(&self, now_ms: u64) {
        let (effects, epoch) = {
            let mut r = self.replication.borrow_mut();
            let Replication::Leader(l) = &mut *r else {
                return;
            };
            (l.state.tick(now_ms), l.state.leader_epoch())
        };
        self.carry_out(effects, epoch);
    }

    /// The ISR change this leader has in flight at the controller, with its leader
    /// epoch (`None` when there is none, or this replica does not lead).
    pub fn pending_isr_change(&self) -> Option<(i32, IsrProposal)> {
        match &*self.replication.borrow() {
            Replication::Leader(l) => l
                .state
                .pending_proposal()
                .map(|p| (l.state.leader_epoch(), p.clone())),
            _ => None,
        }
    }

    /// The controller refused this leader's ISR change for good (an ineligible
    /// replica, an invalid request, an unknown partition). Never on a timeout or a
    /// stale epoch: the change may still be committed.
    pub fn isr_change_refused(&self) {
        if let Replication::Leader(l) = &mut *self.replication.borrow_mut() {
            l.state.on_proposal_rejected();
        }
    }

    /// The topic's settings changed: the leader's rules take the new
    /// `min.insync.replicas` and flush policy.
    pub(crate) fn replication_config_changed(&self, settings: ReplicaSettings) {
        let config = self.leader_config(settings);
        let log_end = self.log().end_offset();
        let durable = self.log().durable_offset().min(log_end);
        let (effects, epoch) = {
            let mut r = self.replication.borrow_mut();
            let Replication::Leader(l) = &mut *r else {
                return;
            };
            l.state.set_config(config);
            (
                l.state.on_local_log(log_end, durable),
                l.state.leader_epoch(),
            )
        };
        self.carry_out(effects, epoch);
    }

    /// The leader epoch followed and the leader, on a follower.
    pub fn followed(&self) -> Option<(i32, i32)> {
        match &*self.replication.borrow() {
            Replication::Follower(f) => f.leader().map(|l| (l, f.leader_epoch())),
            _ => None,
        }
    }

    /// The follower's next request to its leader (`None` unless following).
    pub fn follower_request(&self) -> Option<FollowerRequest> {
        match &*self.replication.borrow() {
            Replication::Follower(f) => Some(f.next_request()),
            _ => None,
        }
    }

    /// The leader answered where epoch `asked` ends (`answer`), in `leader_epoch`: the
    /// follower truncates where its rules say.
    pub async fn on_epoch_answer(
        &self,
        leader_epoch: i32,
        asked: i32,
        answer: EpochEndOffset,
    ) -> Result<(), BrokerError> {
        let step = {
            let mut r = self.replication.borrow_mut();
            let Replication::Follower(f) = &mut *r else {
                return Ok(());
            };
            f.on_end_offset_answer(leader_epoch, asked, answer)
        };
        let TruncateStep::Truncate { offset, .. } = step else {
            return Ok(());
        };
        if offset < self.log().end_offset() {
            tracing::warn!(partition = %self.tp(), offset, log_end_offset = self.log().end_offset(), "truncating to the leader's epoch boundary");
            self.log().truncate_to(offset).await.map_err(|e| {
                BrokerError::new(
                    ErrorKind::Storage,
                    format!("{}: truncating to {offset}: {e}", self.tp()),
                )
            })?;
            match Producers::rebuild(self.log()).await {
                Ok(p) => *self.producers.borrow_mut() = p,
                Err(e) => {
                    tracing::warn!(partition = %self.tp(), error = %e, "rebuilding idempotent producer state failed")
                }
            }
        }
        Ok(())
    }

    /// The leader sent records (`answer`): the follower checks them against its rules
    /// and appends them at the leader's offsets. Returns the batches appended.
    pub async fn append_from_leader(&self, answer: LeaderAnswer) -> Result<usize, BrokerError> {
        let mut metas = Vec::new();
        let mut frames = Vec::new();
        let mut at = 0usize;
        let data = &answer.records[..];
        while at < data.len() {
            let Some((_, size)) = batch::peek_frame(&data[at..]) else {
                break;
            };
            if at + size > data.len() {
                break; // a partial batch at the end of a fetch: fetched again next time
            }
            let info = batch::parse_header(&data[at..at + size]).map_err(|e| {
                BrokerError::new(
                    ErrorKind::CorruptBatch,
                    format!("{}: a replicated batch: {e}", self.tp()),
                )
            })?;
            metas.push(BatchMeta {
                base_offset: info.base_offset,
                last_offset: info.last_offset(),
                epoch: info.leader_epoch,
            });
            frames.push(answer.records.slice(at..at + size));
            at += size;
        }
        let verdict = {
            let mut r = self.replication.borrow_mut();
            let Replication::Follower(f) = &mut *r else {
                return Ok(0);
            };
            f.on_fetch_response(&FetchResponse {
                leader_epoch: answer.leader_epoch,
                high_watermark: answer.high_watermark,
                batches: metas,
            })
        };
        let appended = match verdict {
            ResponseVerdict::Append { batches, .. } => batches.len(),
            ResponseVerdict::FencedLeaderEpoch | ResponseVerdict::NotFetching => return Ok(0),
            ResponseVerdict::UnknownLeaderEpoch => {
                return Err(BrokerError::new(
                    ErrorKind::UnknownLeaderEpoch,
                    format!(
                        "{}: the leader answered in epoch {}, newer than the one followed",
                        self.tp(),
                        answer.leader_epoch
                    ),
                ));
            }
            ResponseVerdict::OutOfOrder { expected } => {
                return Err(BrokerError::new(
                    ErrorKind::CorruptBatch,
                    format!(
                        "{}: the leader's batches do not continue the log at {expected}",
                        self.tp()
                    ),
                ));
            }
        };
        // Every batch is queued at once, in order (tasks run in the order spawned, and
        // the log admits appends in the order they ask), so one group commit makes them
        // all durable: awaiting each before queuing the next would cost a flush (an
        // fdatasync under every_batch) per batch.
        let appends: Vec<_> = frames
            .into_iter()
            .map(|frame| {
                let log = self.log().clone();
                let ids = producers::batch_ids(&frame);
                let task = glommio::spawn_local(async move { log.append_replica(frame).await });
                (ids, task)
            })
            .collect();
        let mut failed = None;
        for (ids, task) in appends {
            let r = task.await;
            if failed.is_some() {
                continue;
            }
            match r {
                Ok(info) => {
                    if let Some(ids) = &ids {
                        self.producers.borrow_mut().observe(ids, info.base_offset);
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            // The rules counted the batches: start over from the log as it is.
            let leader = self.followed();
            if let Some((leader, epoch)) = leader {
                self.set_replication(Replication::Leaderless {
                    high_watermark: self.high_watermark(),
                });
                self.follow(self.me(), leader, epoch);
            }
            return Err(BrokerError::new(
                ErrorKind::Storage,
                format!("{}: appending a replicated batch: {e}", self.tp()),
            ));
        }
        let durable = self.log().durable_offset().min(self.log().end_offset());
        if let Replication::Follower(f) = &mut *self.replication.borrow_mut() {
            f.on_durable(durable.min(f.log_end_offset()));
        }
        Ok(appended)
    }

    /// The follower's durable offset as it reports it to the leader.
    pub fn durable_offset_for_leader(&self) -> i64 {
        self.log().durable_offset().min(self.log().end_offset())
    }
}

/// A partition's replication, for the metrics ([`Partition::replication_figures`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicationFigures {
    /// This replica leads the partition (or is alone).
    pub leads: bool,
    /// Assigned replicas (0 where this replica does not lead: the leader reports them).
    pub replicas: usize,
    /// In-sync replicas (likewise).
    pub in_sync: usize,
    /// On a leader: (follower, offsets it is behind the log end).
    pub follower_lag: Vec<(i32, i64)>,
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use std::time::Duration;

    fn run<Fut: std::future::Future<Output = ()> + 'static>(
        f: impl FnOnce() -> Fut + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::default()
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    /// Appends wait for room in arrival order (a small one does not pass a large one
    /// queued before it), get room as the high watermark passes appended batches, and
    /// are refused once the leadership moves; an append that went away does not hold
    /// up the ones behind it.
    #[test]
    fn the_window_admits_in_order_frees_below_the_high_watermark_and_closes() {
        run(|| async {
            const MIB: u64 = 1 << 20;
            let w = Rc::new(Window::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let admit = |name: &'static str, bytes: u64| {
                let (w, order) = (w.clone(), order.clone());
                glommio::spawn_local(async move {
                    let ok = w.admit(bytes).await;
                    order.borrow_mut().push((name, ok));
                })
            };
            let settle = || glommio::timer::sleep(Duration::from_millis(5));
            let first = admit("6 MiB", 6 * MIB);
            settle().await;
            let large = admit("4 MiB", 4 * MIB);
            settle().await;
            let gone = admit("gone", MIB);
            settle().await;
            let small = admit("1 KiB", 1024);
            settle().await;
            first.await;
            assert_eq!(*order.borrow(), vec![("6 MiB", true)], "the rest wait");
            drop(gone); // its produce went away before its turn
            w.appended(Some(10), 6 * MIB, 0);
            settle().await;
            assert_eq!(
                order.borrow().len(),
                1,
                "nothing is free below the high watermark"
            );
            w.release_to(10);
            large.await;
            small.await;
            assert_eq!(
                *order.borrow(),
                vec![("6 MiB", true), ("4 MiB", true), ("1 KiB", true)]
            );
            // Full again: a waiting append is refused when the leadership moves.
            let refused = admit("8 MiB", 8 * MIB);
            settle().await;
            w.close();
            refused.await;
            assert_eq!(order.borrow().last(), Some(&("8 MiB", false)));
            // A batch larger than the window goes through alone.
            let w = Rc::new(Window::default());
            assert!(w.admit(64 * MIB).await);
        });
    }
}
