//! [`Partition`]: one partition a shard owns: its log, its idempotent producers, its
//! role and leader epoch, and the two offsets replication turns on, the log end offset
//! (what the log holds) and the high watermark (what consumers may read).
//!
//! Every partition leads today (a single node). A leader's high watermark is what its
//! in-sync replicas all have; with the leader the only replica, that is what the
//! topic's flush policy has made safe to acknowledge: the durable offset under
//! `every_batch` (acknowledged after fdatasync), the written offset under the other
//! policies (acknowledged at write). Storage does not decide it: every read takes its
//! upper bound from here (the high watermark for a consumer, the log end for a
//! follower).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use ringmq_storage::{FlushPolicy, LogConfig, Notify, PartitionLog, ReadResult, SegmentCache};

use crate::error::{BrokerError, ErrorKind};
use crate::ops::{Acks, EpochEnd, OffsetSpec, Reader, TopicPartition};
use crate::producers::{self, Check, Producers};
use crate::replica::Replication;
use crate::topic_configs::TopicPolicy;

/// The leader epoch a partition starts at on this node.
pub const FIRST_LEADER_EPOCH: i32 = 0;

/// What a partition is to this broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It takes produce and answers consumers (and, with replication, followers).
    Leader,
    /// It copies a leader's log and serves no client.
    Follower,
    /// Replicated, with no leader known here: it serves nothing.
    Leaderless,
}

/// The outcome of an append that was accepted (see [`Partition::produce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: i64,
    /// One past its last record.
    pub end_offset: i64,
}

/// One partition this shard owns.
#[derive(Debug)]
pub struct Partition {
    tp: TopicPartition,
    log: Rc<PartitionLog>,
    pub(crate) producers: RefCell<Producers>,
    leader_epoch: Cell<i32>,
    /// The topic's produce rules (`compression.type`, `cleanup.policy`,
    /// `min.insync.replicas`, ...).
    policy: RefCell<Rc<TopicPolicy>>,
    /// Its place in the cluster and the replication rules' state ([`crate::replica`]).
    pub(crate) replication: RefCell<Replication>,
    /// This broker's id in the cluster (0 alone).
    pub(crate) me: Cell<i32>,
    /// The high watermark last reported by the leader's rules.
    pub(crate) last_high_watermark: Cell<i64>,
    /// The high watermark last written to the partition's checkpoint.
    pub(crate) checkpointed_high_watermark: Cell<i64>,
    /// Woken when the high watermark may have moved.
    high_watermark_moved: Notify,
    /// The shard's "data arrived" signal, woken after an append and when the high
    /// watermark moves (long-polling fetches wait on it).
    data_arrived: RefCell<Option<Rc<Notify>>>,
    /// Records and bytes in and out, for the metrics.
    pub(crate) traffic: crate::metrics::Traffic,
}

impl Partition {
    /// Opens (or creates) the partition's log in `dir`, rebuilds its idempotent
    /// producers from the log, and takes the leadership: a log that never had a
    /// leader epoch starts [`FIRST_LEADER_EPOCH`] at its end.
    pub async fn open(
        tp: TopicPartition,
        dir: &Path,
        config: LogConfig,
        cache: Rc<SegmentCache>,
        policy: Rc<TopicPolicy>,
    ) -> Result<Rc<Self>, String> {
        let log = PartitionLog::open(dir, config, cache)
            .await
            .map_err(|e| format!("opening {}: {e}", dir.display()))?;
        let producers = match Producers::rebuild(&log).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(partition = %tp, error = %e, "rebuilding idempotent producer state failed; producers start over");
                Producers::default()
            }
        };
        if !producers.is_empty() {
            tracing::info!(partition = %tp, producers = producers.len(), "idempotent producer state rebuilt");
        }
        let epoch = match log.leader_epochs().last() {
            Some(&(e, _)) => e,
            None => {
                log.set_leader_epoch(FIRST_LEADER_EPOCH)
                    .await
                    .map_err(|e| format!("{tp}: recording the leader epoch: {e}"))?;
                FIRST_LEADER_EPOCH
            }
        };
        Ok(Rc::new(Self {
            tp,
            log,
            producers: RefCell::new(producers),
            leader_epoch: Cell::new(epoch),
            policy: RefCell::new(policy),
            replication: RefCell::new(Replication::Alone),
            me: Cell::new(0),
            last_high_watermark: Cell::new(-1),
            checkpointed_high_watermark: Cell::new(-1),
            data_arrived: RefCell::new(None),
            traffic: Default::default(),
            high_watermark_moved: Notify::new(),
        }))
    }

    /// Which partition this is.
    pub fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    /// Its log.
    pub fn log(&self) -> &Rc<PartitionLog> {
        &self.log
    }

    /// What it is to this broker.
    pub fn role(&self) -> Role {
        match &*self.replication.borrow() {
            Replication::Alone | Replication::Leader(_) => Role::Leader,
            Replication::Follower(_) => Role::Follower,
            Replication::Leaderless { .. } => Role::Leaderless,
        }
    }

    /// The topic's produce rules.
    pub(crate) fn policy(&self) -> Rc<TopicPolicy> {
        self.policy.borrow().clone()
    }

    /// Wakes `signal` after every append and whenever the high watermark moves (the
    /// shard's long polls wait on it).
    pub fn signal_data_to(&self, signal: Rc<Notify>) {
        *self.data_arrived.borrow_mut() = Some(signal);
    }

    /// Wakes the long polls waiting for data.
    pub(crate) fn signal_data(&self) {
        if let Some(n) = &*self.data_arrived.borrow() {
            n.notify_all();
        }
    }

    /// Woken when the high watermark may have moved.
    pub(crate) fn high_watermark_moved(&self) -> &Notify {
        &self.high_watermark_moved
    }

    pub(crate) fn set_leader_epoch_cell(&self, epoch: i32) {
        self.leader_epoch.set(epoch);
    }

    /// Its current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    /// The leader epoch in force at `offset` by the log's history (-1 before the
    /// first).
    pub fn epoch_at(&self, offset: i64) -> i32 {
        self.log
            .leader_epochs()
            .iter()
            .rev()
            .find(|&&(_, start)| start <= offset)
            .map_or(-1, |&(e, _)| e)
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log.start_offset()
    }

    /// One past the last record the log holds.
    pub fn log_end_offset(&self) -> i64 {
        self.log.end_offset()
    }

    /// One past the last record every in-sync replica has: what consumers may read and
    /// what acks=all waits for (see the module's documentation).
    pub fn high_watermark(&self) -> i64 {
        if let Some(hw) = self.replicated_high_watermark() {
            return hw;
        }
        match self.log.flush_policy() {
            FlushPolicy::EveryBatch => self.log.durable_offset(),
            _ => self.log.end_offset(),
        }
    }

    /// Replaces the topic's settings and produce rules.
    pub fn set_config(&self, config: LogConfig, policy: Rc<TopicPolicy>) -> Result<(), String> {
        self.log.set_config(config).map_err(|e| e.to_string())?;
        *self.policy.borrow_mut() = policy;
        Ok(())
    }

    /// Checks the leader epoch a client or replica believes current against this
    /// partition's, as Kafka does: an older one is fenced, a newer one unknown here.
    pub fn check_epoch(&self, believed: Option<i32>) -> Result<(), BrokerError> {
        let Some(e) = believed.filter(|&e| e >= 0) else {
            return Ok(());
        };
        let ours = self.leader_epoch.get();
        if e < ours {
            Err(BrokerError::new(
                ErrorKind::FencedLeaderEpoch,
                format!(
                    "{}: leader epoch {e} is older than the current {ours}",
                    self.tp
                ),
            ))
        } else if e > ours {
            Err(BrokerError::new(
                ErrorKind::UnknownLeaderEpoch,
                format!(
                    "{}: leader epoch {e} is newer than the current {ours}",
                    self.tp
                ),
            ))
        } else {
            Ok(())
        }
    }

    /// Appends a producer's batch: the topic's rules first (records it refuses, the
    /// codec it stores in), then acks=all's `min.insync.replicas`, then the idempotent
    /// producer's sequence, then the log. With `Acks::All` the answer waits for the
    /// high watermark to pass the batch. Errors carry the refused records' indexes
    /// (`Err((error, record errors))`).
    ///
    /// Everything before the first await runs in the order calls arrive, so a
    /// connection's batches are checked and appended in order. The caller runs this
    /// to its end even when the client is gone (a sequence it reserved must be
    /// settled).
    pub async fn produce(
        &self,
        batch: Bytes,
        acks: Acks,
        now_ms: i64,
    ) -> Result<Appended, (BrokerError, Vec<(i32, String)>)> {
        let policy = self.policy.borrow().clone();
        if let Err(e) = self.check_leading("produce") {
            return Err((e, Vec::new()));
        }
        let alone = matches!(&*self.replication.borrow(), Replication::Alone);
        if acks == Acks::All && !alone {
            self.check_acks_all().map_err(|e| (e, Vec::new()))?;
        }
        if acks == Acks::All && alone {
            let min = policy.min_insync_replicas;
            let isr = 1usize;
            if (isr as i64) < i64::from(min) {
                return Err((
                    BrokerError::new(
                        ErrorKind::NotEnoughReplicas,
                        format!(
                            "{}: min.insync.replicas={min} but the in-sync replica set has {isr} replica{}",
                            self.tp,
                            if isr == 1 { "" } else { "s" }
                        ),
                    ),
                    Vec::new(),
                ));
            }
        }
        // A leader with followers admits appends within its replication window, in the
        // order they arrive (before the sequence check, which must see them in order).
        let window = if alone { None } else { self.window() };
        let window_bytes = (batch.len() as u64).min(crate::replica::REPLICATION_WINDOW_BYTES);
        if let Some(w) = &window
            && !w.admit(window_bytes).await
        {
            return Err((
                BrokerError::new(
                    ErrorKind::NotLeader,
                    format!("{}: the leadership moved while the append waited", self.tp),
                ),
                Vec::new(),
            ));
        }
        let r = self
            .produce_admitted(batch, acks, now_ms, policy, alone)
            .await;
        if let Some(w) = &window {
            let end = r.as_ref().ok().map(|a| a.end_offset);
            w.appended(end, window_bytes, self.high_watermark());
        }
        r
    }

    /// [`Partition::produce`] once the replication window admitted the batch.
    async fn produce_admitted(
        &self,
        batch: Bytes,
        acks: Acks,
        now_ms: i64,
        policy: Rc<TopicPolicy>,
        alone: bool,
    ) -> Result<Appended, (BrokerError, Vec<(i32, String)>)> {
        // Applied before the sequence check, so a refused batch leaves no trace.
        let rewritten = match policy.apply(&batch, now_ms) {
            Ok(b) => b,
            Err(refused) => {
                tracing::info!(partition = %self.tp, error = %refused.message, "produce refused by the topic's configs");
                return Err((
                    BrokerError::new(refused.kind, refused.message),
                    refused.record_errors,
                ));
            }
        };
        let ids = producers::batch_ids(&batch);
        if let Some(ids) = &ids {
            // Decided before any await: the producers' state is not borrowed across one.
            let check = self.producers.borrow_mut().check(ids);
            match check {
                Check::Append => {}
                Check::Duplicate(base_offset) => {
                    let end_offset = base_offset + i64::from(ids.last_seq - ids.first_seq) + 1;
                    // A retry of a batch in the log is acknowledged as the first send
                    // would have been: with acks=all, only once the high watermark
                    // passes it. The first send may never have been acknowledged (a
                    // leader cut off from its followers), and the log may yet lose it.
                    if !alone {
                        self.after_leader_append(end_offset, acks == Acks::All)
                            .await
                            .map_err(|e| (e, Vec::new()))?;
                    }
                    return Ok(Appended {
                        base_offset,
                        end_offset,
                    });
                }
                Check::Refuse(e) => return Err((e, Vec::new())),
            }
        }
        let data = match &rewritten {
            Some(b) => BytesMut::from(&b[..]),
            None => BytesMut::from(&batch[..]),
        };
        let r = self.log.append(data).await;
        if let Some(ids) = &ids {
            self.producers
                .borrow_mut()
                .complete(ids, r.as_ref().ok().map(|a| a.base_offset));
        }
        let at = r.map_err(|e| {
            tracing::info!(partition = %self.tp, error = %e, "produce refused");
            (BrokerError::from(&e), Vec::new())
        })?;
        let appended = Appended {
            base_offset: at.base_offset,
            end_offset: at.last_offset + 1,
        };
        self.high_watermark_moved.notify_all();
        self.signal_data();
        if !alone {
            self.after_leader_append(appended.end_offset, acks == Acks::All)
                .await
                .map_err(|e| (e, Vec::new()))?;
        } else if acks == Acks::All {
            self.wait_for_high_watermark(appended.end_offset).await;
        }
        Ok(appended)
    }

    /// Resolves when the high watermark reaches `offset`. Alone in its in-sync set the
    /// leader's append already moved it; followers will move it with replication.
    async fn wait_for_high_watermark(&self, offset: i64) {
        loop {
            let moved = self.high_watermark_moved.changed();
            if self.high_watermark() >= offset {
                return;
            }
            moved.await;
        }
    }

    /// Reads whole batches from `offset`, up to about `max_bytes` (a first batch is
    /// whole even when larger), never past what `reader` may see: the high watermark
    /// for a consumer, the log end for a follower.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        reader: Reader,
    ) -> Result<ReadResult, BrokerError> {
        let upper = match reader {
            Reader::Consumer(_) => {
                self.check_leading("fetch")?;
                self.high_watermark()
            }
            // Only a follower of this partition reads past the high watermark: a client
            // that calls itself a replica must not see what is not yet committed.
            Reader::Follower { replica_id, .. } => {
                if !self.has_follower(replica_id) {
                    return Err(BrokerError::new(
                        ErrorKind::NotLeader,
                        format!(
                            "{}: broker {replica_id} is not a follower of this partition",
                            self.tp
                        ),
                    ));
                }
                self.log_end_offset()
            }
        };
        self.log
            .read(offset, max_bytes, upper)
            .await
            .map_err(|e| BrokerError::from(&e))
    }

    /// ListOffsets: `Ok(Some((offset, timestamp)))`, the timestamp -1 where the spec
    /// is not a time; `Ok(None)` when no record matches.
    pub async fn offset_for(&self, spec: OffsetSpec) -> Result<Option<(i64, i64)>, BrokerError> {
        self.check_leading("list offsets")?;
        let hw = self.high_watermark();
        let found = match spec {
            OffsetSpec::Earliest => Ok(Some((self.log_start_offset(), -1))),
            OffsetSpec::Latest => Ok(Some((hw, -1))),
            // No tiered storage: nothing has been tiered.
            OffsetSpec::LatestTiered => Ok(None),
            OffsetSpec::MaxTimestamp => match self.log.max_timestamp() {
                ts if ts >= 0 => self.log.record_for_timestamp(ts, hw).await,
                _ => Ok(None),
            },
            OffsetSpec::Timestamp(ts) => self.log.record_for_timestamp(ts, hw).await,
        };
        // A record below the log start (DeleteRecords cut into its segment) is not
        // readable: the answer is the log start at the least.
        found
            .map(|o| o.map(|(o, ts)| (o.max(self.log_start_offset()), ts)))
            .map_err(|e| BrokerError::from(&e))
    }

    /// OffsetForLeaderEpoch, from the log's leader-epoch history as Kafka answers it:
    /// for the current epoch, the log end; for an older one, the start of the first
    /// epoch after it, with the largest epoch at most the one asked (the asked one
    /// itself when it is older than the whole history); (-1, -1) for an epoch newer
    /// than the current one.
    pub fn end_of_epoch(&self, epoch: i32) -> EpochEnd {
        EpochEnd {
            tp: self.tp.clone(),
            result: self
                .check_leading("offset for leader epoch")
                .map(|()| self.log.end_offset_for_epoch(epoch)),
        }
    }

    /// Kafka's DeleteRecords: moves the log start up to `offset` (-1: the high
    /// watermark); returns the log start offset.
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, BrokerError> {
        self.check_leading("delete records")?;
        self.log
            .delete_records_before(offset, self.high_watermark())
            .await
            .map_err(|e| BrokerError::from(&e))
    }
}
