//! The leader's replication state for one partition (Kafka's `Partition` leader side).
//!
//! What it remembers: the assignment (the replicas), the committed ISR and the
//! partition epoch it was committed at, at most one ISR change in flight at the
//! controller, each follower's log end offset (its fetch offset), durable offset and
//! last-caught-up time, the leader's own log end and durable offsets, the high
//! watermark and the acks=all produces waiting for it.
//!
//! The rules:
//! - **Maximal ISR**: the committed ISR plus the replica of a pending expansion. A
//!   pending shrink does not remove anyone from it: until the controller commits the
//!   shrink, the high watermark still waits for the replica being removed, so acks=all
//!   stays safe whatever the controller decides.
//! - **High watermark** = the minimum, over the maximal ISR, of each member's offset:
//!   its log end offset, or with [`Durability::EveryBatch`] the offset it reports
//!   durable. It never decreases, it waits while a member's offset is unknown (no fetch
//!   since this leader started) and it does not advance while the committed ISR is
//!   smaller than `min_insync_replicas` (KIP-966's strict min ISR).
//! - **Caught up** (Kafka's `lastCaughtUpTimeMs`): a fetch at time `t` whose offset
//!   reaches the leader's log end at `t` makes the follower caught up at `t`; a fetch
//!   whose offset reaches the leader's log end at the follower's previous fetch makes it
//!   caught up at that previous fetch's time.
//! - **Shrink** ([`LeaderState::tick`]): ISR followers not caught up within
//!   `replica_lag_time_max_ms` are proposed for removal. **Expand**
//!   ([`LeaderState::on_follower_fetch`]): an assigned follower outside the ISR whose
//!   counted offset (log end, or durable offset with every_batch) reaches the high
//!   watermark and whose fetch offset reaches the start of this leader's epoch is
//!   proposed for addition. Proposals carry the partition epoch and are never applied
//!   here first; [`LeaderState::on_isr_committed`] applies the controller's decision
//!   and ignores stale partition epochs. One proposal is in flight at a time.
//! - **acks=all** ([`LeaderState::on_produce`]): refused with NOT_ENOUGH_REPLICAS when
//!   the committed ISR is smaller than the minimum on arrival; otherwise a waiter,
//!   completed when the high watermark passes its last offset, failed with
//!   NOT_ENOUGH_REPLICAS_AFTER_APPEND when a committed ISR below the minimum arrives
//!   while it waits (the high watermark cannot advance then).
//! - **Fencing** (KIP-320): a follower fetch with an older leader epoch is refused
//!   (FENCED_LEADER_EPOCH), a newer one too (UNKNOWN_LEADER_EPOCH).

use std::collections::{BTreeMap, BTreeSet};

use crate::{Epoch, EpochCheck, Offset, ReplicaId, check_epoch};

/// Which offset of a replica the high watermark counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The log end offset (data written, maybe not yet synced).
    LogEnd,
    /// The durable offset (with `every_batch` flushing: only data on disk on every ISR
    /// member counts).
    EveryBatch,
}

/// The leader's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderConfig {
    /// `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: u64,
    /// Which offset the high watermark counts.
    pub durability: Durability,
}

/// What a replica knows when it becomes leader (from the controller's decision and
/// its own log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInit {
    /// This replica.
    pub me: ReplicaId,
    /// The leader epoch it leads in.
    pub leader_epoch: Epoch,
    /// The partition epoch of the committed ISR.
    pub partition_epoch: Epoch,
    /// The assigned replicas.
    pub assignment: Vec<ReplicaId>,
    /// The committed ISR (contains `me`).
    pub isr: Vec<ReplicaId>,
    /// Its log end offset, which is also the start offset of `leader_epoch`.
    pub log_end_offset: Offset,
    /// Its durable offset.
    pub durable_offset: Offset,
    /// The high watermark it knows.
    pub high_watermark: Offset,
}

/// A follower's fetch, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerFetch {
    /// The follower.
    pub replica: ReplicaId,
    /// Its fetch offset (its log end offset).
    pub fetch_offset: Offset,
    /// The offset below which its log is durable (≤ `fetch_offset`).
    pub durable_offset: Offset,
    /// The leader epoch the follower believes in.
    pub leader_epoch: Epoch,
}

/// An ISR change for the controller (Kafka's AlterPartition), never applied locally
/// before the controller commits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsrProposal {
    /// Add `replica`; `new_isr` is the ISR asked for.
    Expand {
        /// The follower to add.
        replica: ReplicaId,
        /// The whole ISR asked for.
        new_isr: Vec<ReplicaId>,
        /// The partition epoch the proposal is based on.
        partition_epoch: Epoch,
    },
    /// Remove `removed`; `new_isr` is the ISR asked for.
    Shrink {
        /// The followers to remove.
        removed: Vec<ReplicaId>,
        /// The whole ISR asked for.
        new_isr: Vec<ReplicaId>,
        /// The partition epoch the proposal is based on.
        partition_epoch: Epoch,
    },
}

impl IsrProposal {
    /// The whole ISR asked for.
    pub fn new_isr(&self) -> &[ReplicaId] {
        match self {
            IsrProposal::Expand { new_isr, .. } | IsrProposal::Shrink { new_isr, .. } => new_isr,
        }
    }

    /// The partition epoch the proposal is based on.
    pub fn partition_epoch(&self) -> Epoch {
        match self {
            IsrProposal::Expand {
                partition_epoch, ..
            }
            | IsrProposal::Shrink {
                partition_epoch, ..
            } => *partition_epoch,
        }
    }
}

/// The id of an acks=all produce waiting for the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub u64);

/// What an event changed, for the caller to carry out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// The high watermark after the event.
    pub high_watermark: Offset,
    /// Waiters whose last offset the high watermark passed: reply success.
    pub completed: Vec<WaiterId>,
    /// Waiters to fail with NOT_ENOUGH_REPLICAS_AFTER_APPEND.
    pub failed: Vec<WaiterId>,
    /// An ISR change to send to the controller.
    pub proposal: Option<IsrProposal>,
}

/// The verdict on a follower fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchVerdict {
    /// Served; send records from the fetch offset and the high watermark.
    Ok(Effects),
    /// The request's leader epoch is older: FENCED_LEADER_EPOCH.
    FencedLeaderEpoch,
    /// The request's leader epoch is newer: UNKNOWN_LEADER_EPOCH.
    UnknownLeaderEpoch,
    /// The sender is not an assigned follower: NOT_LEADER_OR_FOLLOWER.
    NotAReplica,
    /// The fetch offset is past the leader's log end, or the durable offset past the
    /// fetch offset: OFFSET_OUT_OF_RANGE.
    OffsetOutOfRange,
}

/// The verdict on an acks=all produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProduceVerdict {
    /// Appended; wait for `waiter` in [`Effects::completed`] or [`Effects::failed`]
    /// (it may already be in `effects.completed`).
    Wait {
        /// The waiter's id.
        waiter: WaiterId,
        /// What the append changed.
        effects: Effects,
    },
    /// The ISR is smaller than `min_insync_replicas`: NOT_ENOUGH_REPLICAS, nothing
    /// appended.
    NotEnoughReplicas,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// `None` until the first fetch in this leader epoch.
    log_end_offset: Option<Offset>,
    durable_offset: Option<Offset>,
    last_caught_up_ms: u64,
    last_fetch_ms: u64,
    /// The leader's log end offset at the follower's previous fetch.
    last_fetch_leader_leo: Offset,
}

/// The leader side of one partition; see the module doc.
#[derive(Debug, Clone)]
pub struct LeaderState {
    me: ReplicaId,
    config: LeaderConfig,
    leader_epoch: Epoch,
    epoch_start_offset: Offset,
    partition_epoch: Epoch,
    assignment: Vec<ReplicaId>,
    isr: BTreeSet<ReplicaId>,
    pending: Option<IsrProposal>,
    followers: BTreeMap<ReplicaId, Progress>,
    log_end_offset: Offset,
    durable_offset: Offset,
    high_watermark: Offset,
    waiters: BTreeMap<WaiterId, Offset>,
    next_waiter: u64,
}

impl LeaderState {
    /// The state of a replica that just became leader. Followers' offsets are unknown
    /// until they fetch; their last-caught-up time starts at 0, so pass the time of
    /// election to [`LeaderState::tick`] only after they had a chance to fetch (or
    /// use [`LeaderState::with_start_time`]).
    pub fn new(init: LeaderInit, config: LeaderConfig) -> Self {
        Self::with_start_time(init, config, 0)
    }

    /// As [`LeaderState::new`], with followers considered caught up at `now_ms` (Kafka
    /// does this for ISR members when a replica becomes leader).
    pub fn with_start_time(init: LeaderInit, config: LeaderConfig, now_ms: u64) -> Self {
        assert!(init.isr.contains(&init.me), "the leader is in the ISR");
        assert!(init.assignment.contains(&init.me), "the leader is assigned");
        assert!(init.durable_offset <= init.log_end_offset);
        assert!(init.high_watermark <= init.log_end_offset);
        let followers = init
            .assignment
            .iter()
            .filter(|&&r| r != init.me)
            .map(|&r| {
                (
                    r,
                    Progress {
                        last_caught_up_ms: now_ms,
                        last_fetch_ms: now_ms,
                        ..Progress::default()
                    },
                )
            })
            .collect();
        Self {
            me: init.me,
            config,
            leader_epoch: init.leader_epoch,
            epoch_start_offset: init.log_end_offset,
            partition_epoch: init.partition_epoch,
            assignment: init.assignment,
            isr: init.isr.into_iter().collect(),
            pending: None,
            followers,
            log_end_offset: init.log_end_offset,
            durable_offset: init.durable_offset,
            high_watermark: init.high_watermark,
            waiters: BTreeMap::new(),
            next_waiter: 0,
        }
    }

    /// Replaces the settings (a topic's `min.insync.replicas` changed); takes effect
    /// at the next event.
    pub fn set_config(&mut self, config: LeaderConfig) {
        self.config = config;
    }

    /// The settings.
    pub fn config(&self) -> LeaderConfig {
        self.config
    }

    /// The high watermark.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The leader's log end offset.
    pub fn log_end_offset(&self) -> Offset {
        self.log_end_offset
    }

    /// The leader epoch.
    pub fn leader_epoch(&self) -> Epoch {
        self.leader_epoch
    }

    /// The partition epoch of the committed ISR.
    pub fn partition_epoch(&self) -> Epoch {
        self.partition_epoch
    }

    /// The assigned replicas.
    pub fn assignment(&self) -> &[ReplicaId] {
        &self.assignment
    }

    /// The committed ISR.
    pub fn isr(&self) -> Vec<ReplicaId> {
        self.isr.iter().copied().collect()
    }

    /// The committed ISR plus a pending addition.
    pub fn maximal_isr(&self) -> Vec<ReplicaId> {
        let mut m = self.isr.clone();
        if let Some(IsrProposal::Expand { replica, .. }) = &self.pending {
            m.insert(*replica);
        }
        m.into_iter().collect()
    }

    /// The ISR change in flight at the controller.
    pub fn pending_proposal(&self) -> Option<&IsrProposal> {
        self.pending.as_ref()
    }

    /// A follower's log end offset, if it fetched in this epoch.
    pub fn follower_log_end_offset(&self, replica: ReplicaId) -> Option<Offset> {
        self.followers.get(&replica).and_then(|p| p.log_end_offset)
    }

    /// The offset of `replica` the high watermark counts (`None` while unknown).
    pub fn counted_offset(&self, replica: ReplicaId) -> Option<Offset> {
        let (leo, durable) = if replica == self.me {
            (Some(self.log_end_offset), Some(self.durable_offset))
        } else {
            let p = self.followers.get(&replica)?;
            (p.log_end_offset, p.durable_offset)
        };
        match self.config.durability {
            Durability::LogEnd => leo,
            Durability::EveryBatch => durable,
        }
    }

    /// The number of acks=all produces waiting.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// An acks=all produce whose records end at `last_offset` (inclusive) arrived.
    /// Refused when the committed ISR is too small; otherwise the caller appends it
    /// (the leader's log end becomes `last_offset + 1`) and waits.
    pub fn on_produce(&mut self, last_offset: Offset) -> ProduceVerdict {
        if self.isr.len() < self.config.min_insync_replicas {
            return ProduceVerdict::NotEnoughReplicas;
        }
        // Appends may be reported out of order (each produce reports its own): the
        // log end never moves back.
        self.log_end_offset = self.log_end_offset.max(last_offset + 1);
        if self.config.durability == Durability::LogEnd {
            self.durable_offset = self.log_end_offset;
        }
        let waiter = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        self.waiters.insert(waiter, last_offset);
        let effects = self.settle(None);
        ProduceVerdict::Wait { waiter, effects }
    }

    /// The leader's own log is durable below `durable_offset` (with every_batch
    /// flushing, after the fsync).
    pub fn on_local_durable(&mut self, durable_offset: Offset) -> Effects {
        assert!(durable_offset <= self.log_end_offset);
        self.durable_offset = self.durable_offset.max(durable_offset);
        self.settle(None)
    }

    /// The leader's own log moved without an acks=all waiter (acks none or leader, or
    /// a report after an append): its log end and durable offsets, each taken only
    /// when larger than known.
    pub fn on_local_log(&mut self, log_end_offset: Offset, durable_offset: Offset) -> Effects {
        assert!(durable_offset <= log_end_offset);
        self.log_end_offset = self.log_end_offset.max(log_end_offset);
        self.durable_offset = self.durable_offset.max(match self.config.durability {
            Durability::LogEnd => log_end_offset,
            Durability::EveryBatch => durable_offset,
        });
        self.settle(None)
    }

    /// A follower fetched at `now_ms`; see the module doc for the rules.
    pub fn on_follower_fetch(&mut self, fetch: &FollowerFetch, now_ms: u64) -> FetchVerdict {
        match check_epoch(fetch.leader_epoch, self.leader_epoch) {
            EpochCheck::Current => {}
            EpochCheck::Fenced => return FetchVerdict::FencedLeaderEpoch,
            EpochCheck::Unknown => return FetchVerdict::UnknownLeaderEpoch,
        }
        let leader_leo = self.log_end_offset;
        let Some(p) = self.followers.get_mut(&fetch.replica) else {
            return FetchVerdict::NotAReplica;
        };
        if fetch.fetch_offset > leader_leo
            || fetch.durable_offset > fetch.fetch_offset
            || fetch.fetch_offset < 0
        {
            return FetchVerdict::OffsetOutOfRange;
        }
        if fetch.fetch_offset >= leader_leo {
            p.last_caught_up_ms = p.last_caught_up_ms.max(now_ms);
        } else if fetch.fetch_offset >= p.last_fetch_leader_leo {
            p.last_caught_up_ms = p.last_caught_up_ms.max(p.last_fetch_ms);
        }
        p.last_fetch_leader_leo = leader_leo;
        p.last_fetch_ms = now_ms;
        p.log_end_offset = Some(fetch.fetch_offset);
        p.durable_offset = Some(fetch.durable_offset);

        let mut proposal = None;
        if self.pending.is_none()
            && !self.isr.contains(&fetch.replica)
            && self
                .counted_offset(fetch.replica)
                .is_some_and(|o| o >= self.high_watermark)
            && fetch.fetch_offset >= self.epoch_start_offset
        {
            let mut new_isr = self.isr.clone();
            new_isr.insert(fetch.replica);
            let p = IsrProposal::Expand {
                replica: fetch.replica,
                new_isr: new_isr.into_iter().collect(),
                partition_epoch: self.partition_epoch,
            };
            self.pending = Some(p.clone());
            proposal = Some(p);
        }
        FetchVerdict::Ok(self.settle(proposal))
    }

    /// Time advanced to `now_ms`: propose removing ISR followers that have not caught
    /// up within `replica_lag_time_max_ms` (unless a proposal is in flight).
    pub fn tick(&mut self, now_ms: u64) -> Effects {
        let mut proposal = None;
        if self.pending.is_none() {
            let lag_max = self.config.replica_lag_time_max_ms;
            let removed: Vec<ReplicaId> = self
                .isr
                .iter()
                .copied()
                .filter(|&r| r != self.me)
                .filter(|r| {
                    self.followers
                        .get(r)
                        .is_none_or(|p| now_ms.saturating_sub(p.last_caught_up_ms) > lag_max)
                })
                .collect();
            if !removed.is_empty() {
                let new_isr = self
                    .isr
                    .iter()
                    .copied()
                    .filter(|r| !removed.contains(r))
                    .collect();
                let p = IsrProposal::Shrink {
                    removed,
                    new_isr,
                    partition_epoch: self.partition_epoch,
                };
                self.pending = Some(p.clone());
                proposal = Some(p);
            }
        }
        self.settle(proposal)
    }

    /// The controller committed `new_isr` at `partition_epoch` (the answer to a
    /// proposal, or a change of its own). A partition epoch not newer than the one
    /// known is stale and ignored. Clears the proposal in flight. The leader stays in
    /// its own ISR (AlterPartition never removes the leader; a change of leader arrives
    /// as a new leadership, for which this state is dropped and rebuilt).
    pub fn on_isr_committed(&mut self, new_isr: &[ReplicaId], partition_epoch: Epoch) -> Effects {
        if partition_epoch <= self.partition_epoch {
            return self.settle(None);
        }
        self.partition_epoch = partition_epoch;
        self.isr = new_isr.iter().copied().collect();
        self.isr.insert(self.me); // the leader never leaves its own ISR
        self.pending = None;
        self.settle(None)
    }

    /// The controller refused the proposal in flight for good
    /// ([`crate::ControllerErrorKind::refuses_alter_partition_for_good`]): forget it, so
    /// the next event may propose again. Not on a timeout or any other answer: the
    /// proposal may still be committed, and forgetting an expansion would let the high
    /// watermark advance without a replica the committed ISR (and so the next
    /// election) counts on; resend it and wait for [`LeaderState::on_isr_committed`].
    pub fn on_proposal_rejected(&mut self) {
        self.pending = None;
    }

    /// Recomputes the high watermark and settles the waiters.
    fn settle(&mut self, proposal: Option<IsrProposal>) -> Effects {
        if self.isr.len() >= self.config.min_insync_replicas {
            let candidate = self
                .maximal_isr()
                .into_iter()
                .map(|r| self.counted_offset(r))
                .try_fold(Offset::MAX, |acc, o| o.map(|o| acc.min(o)));
            if let Some(c) = candidate {
                self.high_watermark = self.high_watermark.max(c);
            }
        }
        let hw = self.high_watermark;
        let completed: Vec<WaiterId> = self
            .waiters
            .iter()
            .filter(|&(_, &last)| last < hw)
            .map(|(&w, _)| w)
            .collect();
        for w in &completed {
            self.waiters.remove(w);
        }
        let failed = if self.isr.len() < self.config.min_insync_replicas {
            std::mem::take(&mut self.waiters).into_keys().collect()
        } else {
            Vec::new()
        };
        Effects {
            high_watermark: hw,
            completed,
            failed,
            proposal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LAG_MS: u64 = 3_000;

    fn config(min_insync_replicas: usize, durability: Durability) -> LeaderConfig {
        LeaderConfig {
            min_insync_replicas,
            replica_lag_time_max_ms: LAG_MS,
            durability,
        }
    }

    /// Replica 1 leads epoch 5 of {1, 2, 3}, all in the ISR at partition epoch 10.
    fn leader(min_insync_replicas: usize, durability: Durability) -> LeaderState {
        LeaderState::new(
            LeaderInit {
                me: 1,
                leader_epoch: 5,
                partition_epoch: 10,
                assignment: vec![1, 2, 3],
                isr: vec![1, 2, 3],
                log_end_offset: 0,
                durable_offset: 0,
                high_watermark: 0,
            },
            config(min_insync_replicas, durability),
        )
    }

    fn fetch(replica: ReplicaId, offset: Offset) -> FollowerFetch {
        FollowerFetch {
            replica,
            fetch_offset: offset,
            durable_offset: offset,
            leader_epoch: 5,
        }
    }

    fn ok(v: FetchVerdict) -> Effects {
        match v {
            FetchVerdict::Ok(e) => e,
            other => panic!("expected Ok, got {other:?}"),
        }
    }

    fn waiter(v: ProduceVerdict) -> WaiterId {
        match v {
            ProduceVerdict::Wait { waiter, .. } => waiter,
            other => panic!("expected Wait, got {other:?}"),
        }
    }

    #[test]
    fn hw_is_min_over_the_isr_and_never_decreases() {
        let mut l = leader(2, Durability::LogEnd);
        waiter(l.on_produce(9));
        assert_eq!(
            ok(l.on_follower_fetch(&fetch(2, 10), 1)).high_watermark,
            0,
            "3 unknown"
        );
        assert_eq!(ok(l.on_follower_fetch(&fetch(3, 4), 1)).high_watermark, 4);
        assert_eq!(ok(l.on_follower_fetch(&fetch(3, 10), 2)).high_watermark, 10);
        // Replica 3 restarted and lost its tail: the HW does not go back.
        assert_eq!(ok(l.on_follower_fetch(&fetch(3, 6), 3)).high_watermark, 10);
    }

    #[test]
    fn stale_and_newer_fetch_epochs_are_refused() {
        let mut l = leader(1, Durability::LogEnd);
        let mut f = fetch(2, 0);
        f.leader_epoch = 4;
        assert_eq!(l.on_follower_fetch(&f, 1), FetchVerdict::FencedLeaderEpoch);
        f.leader_epoch = 6;
        assert_eq!(l.on_follower_fetch(&f, 1), FetchVerdict::UnknownLeaderEpoch);
        assert_eq!(
            l.on_follower_fetch(&fetch(9, 0), 1),
            FetchVerdict::NotAReplica
        );
        assert_eq!(
            l.on_follower_fetch(&fetch(2, 1), 1),
            FetchVerdict::OffsetOutOfRange
        );
    }

    #[test]
    fn every_batch_counts_only_durable_offsets() {
        let mut l = leader(3, Durability::EveryBatch);
        let w = waiter(l.on_produce(9));
        let durable_at = |replica, durable_offset| FollowerFetch {
            durable_offset,
            ..fetch(replica, 10)
        };
        ok(l.on_follower_fetch(&durable_at(2, 10), 1));
        let e = ok(l.on_follower_fetch(&durable_at(3, 10), 1));
        assert_eq!(e.high_watermark, 0, "the leader has not synced");
        let e = l.on_local_durable(10);
        assert_eq!(e.high_watermark, 10);
        assert_eq!(e.completed, vec![w]);

        let w = waiter(l.on_produce(19));
        l.on_local_durable(20);
        ok(l.on_follower_fetch(&durable_at(2, 10), 2));
        let e = ok(l.on_follower_fetch(
            &FollowerFetch {
                fetch_offset: 20,
                ..durable_at(3, 12)
            },
            2,
        ));
        assert_eq!(e.high_watermark, 10, "2 has 20 written but 10 durable");
        let e = ok(l.on_follower_fetch(
            &FollowerFetch {
                fetch_offset: 20,
                ..durable_at(2, 20)
            },
            3,
        ));
        assert_eq!(e.high_watermark, 12);
        let e = ok(l.on_follower_fetch(
            &FollowerFetch {
                fetch_offset: 20,
                ..durable_at(3, 20)
            },
            3,
        ));
        assert_eq!((e.high_watermark, e.completed), (20, vec![w]));
    }

    #[test]
    fn lagging_follower_is_proposed_for_shrink_not_removed() {
        let mut l = leader(1, Durability::LogEnd);
        l.on_produce(9);
        ok(l.on_follower_fetch(&fetch(2, 10), 1_000));
        ok(l.on_follower_fetch(&fetch(3, 2), 1_000));
        assert_eq!(l.tick(3_000).proposal, None, "nobody lags yet");
        let e = l.tick(3_001);
        assert_eq!(
            e.proposal,
            Some(IsrProposal::Shrink {
                removed: vec![3],
                new_isr: vec![1, 2],
                partition_epoch: 10
            })
        );
        assert_eq!(l.isr(), vec![1, 2, 3], "not applied before the commit");
        assert_eq!(l.maximal_isr(), vec![1, 2, 3]);
        assert_eq!(e.high_watermark, 2, "still waits for 3");
        assert_eq!(l.tick(9_000).proposal, None, "one proposal in flight");
        let e = l.on_isr_committed(&[1, 2], 11);
        assert_eq!(e.high_watermark, 10, "3 no longer counted");
        assert_eq!(l.isr(), vec![1, 2]);
        assert_eq!(l.partition_epoch(), 11);
    }

    /// Kafka's rule: a follower that reaches, at its fetch, the leader's log end of its
    /// previous fetch was caught up at that previous fetch's time.
    #[test]
    fn caught_up_at_previous_fetch_when_reaching_its_log_end() {
        let mut l = leader(1, Durability::LogEnd);
        l.on_produce(9);
        ok(l.on_follower_fetch(&fetch(2, 10), 0));
        ok(l.on_follower_fetch(&fetch(3, 10), 0));
        l.on_produce(19); // leader LEO 20
        ok(l.on_follower_fetch(&fetch(2, 10), 2_000)); // behind; LEO at this fetch: 20
        ok(l.on_follower_fetch(&fetch(3, 20), 2_000));
        l.on_produce(29); // leader LEO 30
        ok(l.on_follower_fetch(&fetch(2, 20), 4_000)); // reaches 20: caught up at 2_000
        ok(l.on_follower_fetch(&fetch(3, 30), 4_000));
        assert_eq!(l.tick(5_000).proposal, None);
        assert!(
            matches!(l.tick(5_001).proposal, Some(IsrProposal::Shrink { ref removed, .. }) if removed == &vec![2])
        );
    }

    #[test]
    fn follower_reaching_the_hw_is_proposed_for_expand() {
        let mut l = leader(1, Durability::LogEnd);
        l.on_isr_committed(&[1, 2], 11);
        l.on_produce(9);
        let e = ok(l.on_follower_fetch(&fetch(2, 10), 1));
        assert_eq!(e.high_watermark, 10);
        let e = ok(l.on_follower_fetch(&fetch(3, 5), 1));
        assert_eq!(e.proposal, None, "below the HW");
        let e = ok(l.on_follower_fetch(&fetch(3, 10), 2));
        assert_eq!(
            e.proposal,
            Some(IsrProposal::Expand {
                replica: 3,
                new_isr: vec![1, 2, 3],
                partition_epoch: 11
            })
        );
        assert_eq!(l.isr(), vec![1, 2]);
        assert_eq!(l.maximal_isr(), vec![1, 2, 3], "pending addition counted");
        l.on_produce(19);
        ok(l.on_follower_fetch(&fetch(2, 20), 3));
        assert_eq!(
            l.high_watermark(),
            10,
            "the HW waits for the pending member"
        );
        // A stale commit is ignored; the real one applies.
        l.on_isr_committed(&[1], 11);
        assert_eq!(l.isr(), vec![1, 2]);
        l.on_isr_committed(&[1, 2, 3], 12);
        assert_eq!(l.isr(), vec![1, 2, 3]);
        assert_eq!(l.pending_proposal(), None);
    }

    #[test]
    fn hw_does_not_advance_below_min_isr() {
        let mut l = leader(2, Durability::LogEnd);
        l.on_isr_committed(&[1], 11);
        assert_eq!(l.on_produce(9), ProduceVerdict::NotEnoughReplicas);
        assert_eq!(l.log_end_offset(), 0, "nothing appended");
        let mut l = leader(2, Durability::LogEnd);
        l.on_produce(9);
        l.on_isr_committed(&[1], 11);
        assert_eq!(l.on_local_durable(10).high_watermark, 0);
        assert_eq!(l.high_watermark(), 0, "ISR {{1}} alone may not advance it");
    }

    #[test]
    fn not_enough_replicas_after_append() {
        let mut l = leader(2, Durability::LogEnd);
        let a = waiter(l.on_produce(4));
        let b = waiter(l.on_produce(9));
        ok(l.on_follower_fetch(&fetch(2, 5), 1));
        let e = ok(l.on_follower_fetch(&fetch(3, 5), 1));
        assert_eq!(e.completed, vec![a]);
        let e = l.on_isr_committed(&[1, 3], 11);
        assert!(e.failed.is_empty(), "2 of 3 is still enough");
        let e = l.on_isr_committed(&[1], 12);
        assert_eq!(e.failed, vec![b]);
        assert_eq!(l.waiting(), 0);
        assert_eq!(l.on_produce(10), ProduceVerdict::NotEnoughReplicas);
    }

    #[test]
    fn single_replica_completes_on_append() {
        let mut l = LeaderState::new(
            LeaderInit {
                me: 1,
                leader_epoch: 1,
                partition_epoch: 1,
                assignment: vec![1],
                isr: vec![1],
                log_end_offset: 0,
                durable_offset: 0,
                high_watermark: 0,
            },
            config(1, Durability::LogEnd),
        );
        let ProduceVerdict::Wait { waiter, effects } = l.on_produce(0) else {
            panic!()
        };
        assert_eq!(effects.completed, vec![waiter]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Produce(i64),
        Fetch {
            replica: ReplicaId,
            advance: i64,
            durable_lag: i64,
        },
        Tick(u64),
        CommitPending,
        ControllerShrink(Vec<ReplicaId>),
        StaleCommit(Vec<ReplicaId>),
        Durable,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1i64..20).prop_map(Op::Produce),
            (2..=3i32, 0i64..20, 0i64..5).prop_map(|(replica, advance, durable_lag)| Op::Fetch {
                replica,
                advance,
                durable_lag
            }),
            (0u64..4_000).prop_map(Op::Tick),
            Just(Op::CommitPending),
            Just(Op::CommitPending),
            proptest::sample::subsequence(vec![2, 3], 0..=2).prop_map(Op::ControllerShrink),
            proptest::sample::subsequence(vec![1, 2, 3], 0..=3).prop_map(Op::StaleCommit),
            Just(Op::Durable),
        ]
    }

    proptest! {
        /// Under any sequence of produces, follower fetches (offsets that only move
        /// forward), ticks, commits of the pending proposal, shrinks decided by the
        /// controller and stale commits: the HW never decreases, never exceeds the
        /// counted offset of a maximal-ISR member, never advances with a committed ISR
        /// below the minimum, and a waiter completes iff the HW passed its last offset
        /// (or fails only with the ISR below the minimum).
        #[test]
        fn hw_and_waiter_invariants(
            min_isr in 1usize..=3,
            every_batch in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let durability = if every_batch { Durability::EveryBatch } else { Durability::LogEnd };
            let mut l = leader(min_isr, durability);
            let mut now = 0u64;
            let mut partition_epoch = 10;
            let mut fetched: BTreeMap<ReplicaId, (Offset, Offset)> = BTreeMap::new();
            let mut waiting: BTreeMap<WaiterId, Offset> = BTreeMap::new();
            for op in ops {
                let hw_before = l.high_watermark();
                let effects = match op {
                    Op::Produce(n) => match l.on_produce(l.log_end_offset() + n - 1) {
                        ProduceVerdict::Wait { waiter, effects } => {
                            waiting.insert(waiter, l.log_end_offset() - 1);
                            effects
                        }
                        ProduceVerdict::NotEnoughReplicas => {
                            prop_assert!(l.isr().len() < min_isr);
                            continue;
                        }
                    },
                    Op::Fetch { replica, advance, durable_lag } => {
                        let (leo, durable) = fetched.get(&replica).copied().unwrap_or((0, 0));
                        let leo = (leo + advance).min(l.log_end_offset());
                        let durable = (leo - durable_lag).max(durable).min(leo);
                        fetched.insert(replica, (leo, durable));
                        let f = FollowerFetch { replica, fetch_offset: leo, durable_offset: durable, leader_epoch: 5 };
                        match l.on_follower_fetch(&f, now) {
                            FetchVerdict::Ok(e) => e,
                            other => return Err(TestCaseError::fail(format!("{other:?}"))),
                        }
                    }
                    Op::Tick(dt) => { now += dt; l.tick(now) }
                    Op::CommitPending => {
                        let Some(p) = l.pending_proposal() else { continue };
                        let isr = match p {
                            IsrProposal::Expand { new_isr, .. } | IsrProposal::Shrink { new_isr, .. } => new_isr.clone(),
                        };
                        partition_epoch += 1;
                        l.on_isr_committed(&isr, partition_epoch)
                    }
                    Op::ControllerShrink(keep) => {
                        // The controller removes replicas on its own (a fenced broker).
                        let isr: Vec<ReplicaId> = l.isr().into_iter().filter(|r| *r == 1 || keep.contains(r)).collect();
                        partition_epoch += 1;
                        l.on_isr_committed(&isr, partition_epoch)
                    }
                    Op::StaleCommit(isr) => l.on_isr_committed(&isr, partition_epoch),
                    Op::Durable => l.on_local_durable(l.log_end_offset()),
                };
                let hw = l.high_watermark();
                prop_assert_eq!(effects.high_watermark, hw);
                prop_assert!(hw >= hw_before, "HW went back from {} to {}", hw_before, hw);
                if hw > hw_before {
                    prop_assert!(l.isr().len() >= min_isr, "advanced below min ISR");
                }
                for r in l.maximal_isr() {
                    if let Some(o) = l.counted_offset(r) {
                        prop_assert!(hw <= o, "HW {} past member {}'s offset {}", hw, r, o);
                    }
                }
                for w in &effects.completed {
                    let last = waiting.remove(w).expect("completed once");
                    prop_assert!(last < hw);
                }
                for w in &effects.failed {
                    let last = waiting.remove(w).expect("failed once");
                    prop_assert!(last >= hw);
                    prop_assert!(l.isr().len() < min_isr);
                }
                for &last in waiting.values() {
                    prop_assert!(last >= hw, "waiter for {} still waits at HW {}", last, hw);
                }
                prop_assert_eq!(waiting.len(), l.waiting());
            }
        }
    }
}
