//! The follower's replication state for one partition.
//!
//! What it remembers: the leader it follows and that leader's epoch, its own log end
//! offset, durable offset and leader-epoch history, and the high watermark it learned
//! from the leader (min(leader high watermark, own log end), never decreasing except
//! when a truncation cuts the log below it).
//!
//! The rules:
//! - **Becoming follower** ([`FollowerState::become_follower`]; also on restart or
//!   rejoin): before fetching, the follower asks the leader where its latest epoch
//!   ends (OffsetsForLeaderEpoch) and truncates by [`truncation_point`] (KIP-101,
//!   KIP-279), asking again for an older epoch when the leader answers one the
//!   follower lacks. It never truncates to its high watermark. A follower with an
//!   empty log fetches at once.
//! - **Fetching** ([`FollowerState::next_request`]): from its log end offset, with the
//!   epoch of its last fetched batch, its durable offset and the leader epoch it
//!   believes in.
//! - **Appending** ([`FollowerState::on_fetch_response`]): batches keep the leader's
//!   offsets and epochs; a batch of a newer epoch adds (epoch, base offset) to the
//!   history. A batch that does not start at the log end is refused.
//! - **Fencing**: a response (or epoch answer) from an older leader epoch than the one
//!   followed is refused; one from a newer epoch means the follower must learn the new
//!   leadership from the controller first.

use crate::{
    Epoch, EpochCheck, EpochEndOffset, EpochHistory, Offset, ReplicaId, Truncation, check_epoch,
    truncation_point,
};

/// The request the follower sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerRequest {
    /// OffsetsForLeaderEpoch: where does `epoch` end in the leader's log?
    EndOffsetFor {
        /// The leader epoch the follower believes in (fencing).
        leader_epoch: Epoch,
        /// The epoch asked about.
        epoch: Epoch,
    },
    /// A replica fetch.
    Fetch {
        /// The follower.
        replica: ReplicaId,
        /// Its log end offset: fetch from here.
        fetch_offset: Offset,
        /// The epoch of its last fetched batch (-1 for an empty log).
        last_fetched_epoch: Epoch,
        /// Its durable offset (counted by the leader with every_batch flushing).
        durable_offset: Offset,
        /// The leader epoch the follower believes in (fencing).
        leader_epoch: Epoch,
    },
}

/// The header of a batch in a fetch response: its offsets and its leader epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// The first offset.
    pub base_offset: Offset,
    /// The last offset (inclusive).
    pub last_offset: Offset,
    /// The leader epoch it was written in.
    pub epoch: Epoch,
}

/// A fetch response from the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    /// The leader epoch of the responding leader.
    pub leader_epoch: Epoch,
    /// The leader's high watermark.
    pub high_watermark: Offset,
    /// The batches, in offset order.
    pub batches: Vec<BatchMeta>,
}

/// The verdict on a fetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// Append these batches at their own offsets; the follower's high watermark is now
    /// `high_watermark`.
    Append {
        /// The batches to append.
        batches: Vec<BatchMeta>,
        /// The follower's new high watermark.
        high_watermark: Offset,
    },
    /// From an older leader epoch than the one followed: drop it.
    FencedLeaderEpoch,
    /// From a newer leader epoch: learn the leadership from the controller first.
    UnknownLeaderEpoch,
    /// The follower has not finished truncating; it did not ask for records.
    NotFetching,
    /// A batch does not start at the follower's log end (`expected`) or its epoch is
    /// newer than the leader's: nothing appended.
    OutOfOrder {
        /// The offset the next batch had to start at.
        expected: Offset,
    },
}

/// What to do with an OffsetsForLeaderEpoch answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruncateStep {
    /// Truncate the log to `offset` (done here in the state), then send `next`.
    Truncate {
        /// Where to truncate the log.
        offset: Offset,
        /// The request to send next.
        next: FollowerRequest,
    },
    /// The leader did not know the epoch: refresh the metadata, then ask again.
    Retry,
    /// The answer is stale (another leader epoch, or not expected): ignore it.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Truncating { asked: Epoch },
    Fetching,
}

/// The follower side of one partition; see the module doc.
#[derive(Debug, Clone)]
pub struct FollowerState {
    me: ReplicaId,
    leader: Option<ReplicaId>,
    leader_epoch: Epoch,
    history: EpochHistory,
    log_end_offset: Offset,
    durable_offset: Offset,
    high_watermark: Offset,
    phase: Phase,
}

impl FollowerState {
    /// A replica's state from its log (after a restart: the log as recovered), not yet
    /// following anyone.
    pub fn new(
        me: ReplicaId,
        history: EpochHistory,
        log_end_offset: Offset,
        durable_offset: Offset,
        high_watermark: Offset,
    ) -> Self {
        assert!(durable_offset <= log_end_offset);
        Self {
            me,
            leader: None,
            leader_epoch: crate::UNDEFINED_EPOCH,
            history,
            log_end_offset,
            durable_offset,
            high_watermark: high_watermark.min(log_end_offset),
            phase: Phase::Fetching,
        }
    }

    /// The leader followed.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.leader
    }

    /// The leader epoch followed.
    pub fn leader_epoch(&self) -> Epoch {
        self.leader_epoch
    }

    /// The log end offset.
    pub fn log_end_offset(&self) -> Offset {
        self.log_end_offset
    }

    /// The high watermark learned from the leader.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The leader-epoch history.
    pub fn history(&self) -> &EpochHistory {
        &self.history
    }

    /// The controller made `leader` the leader in `leader_epoch`. Returns the first
    /// request to send, or `None` if `leader_epoch` is older than the one followed.
    pub fn become_follower(
        &mut self,
        leader: ReplicaId,
        leader_epoch: Epoch,
    ) -> Option<FollowerRequest> {
        if leader_epoch < self.leader_epoch {
            return None;
        }
        self.leader = Some(leader);
        self.leader_epoch = leader_epoch;
        self.phase = match self.history.latest() {
            Some(latest) => Phase::Truncating {
                asked: latest.epoch,
            },
            None => Phase::Fetching,
        };
        Some(self.next_request())
    }

    /// The request to send next: an epoch question while truncating, else a fetch.
    pub fn next_request(&self) -> FollowerRequest {
        match self.phase {
            Phase::Truncating { asked } => FollowerRequest::EndOffsetFor {
                leader_epoch: self.leader_epoch,
                epoch: asked,
            },
            Phase::Fetching => FollowerRequest::Fetch {
                replica: self.me,
                fetch_offset: self.log_end_offset,
                last_fetched_epoch: self
                    .history
                    .latest()
                    .map_or(crate::UNDEFINED_EPOCH, |e| e.epoch),
                durable_offset: self.durable_offset,
                leader_epoch: self.leader_epoch,
            },
        }
    }

    /// The leader answered the epoch question, in `response_leader_epoch`.
    ///
    /// `asked` is the epoch the answer is about, as the answer names it: an answer to
    /// another question than the one pending (a late or duplicated answer to an earlier
    /// question, perhaps from before a restart) is ignored, never taken for this one.
    pub fn on_end_offset_answer(
        &mut self,
        response_leader_epoch: Epoch,
        asked: Epoch,
        answer: EpochEndOffset,
    ) -> TruncateStep {
        if response_leader_epoch != self.leader_epoch {
            return TruncateStep::Ignore;
        }
        match self.phase {
            Phase::Truncating { asked: pending } if pending == asked => {}
            _ => return TruncateStep::Ignore,
        }
        let (offset, next_phase) =
            match truncation_point(&self.history, self.log_end_offset, answer) {
                Truncation::To(offset) => (offset, Phase::Fetching),
                Truncation::AskAgain { truncate_to, epoch } => {
                    (truncate_to, Phase::Truncating { asked: epoch })
                }
                Truncation::LeaderUnaware => return TruncateStep::Retry,
            };
        self.truncate_to(offset);
        self.phase = next_phase;
        TruncateStep::Truncate {
            offset,
            next: self.next_request(),
        }
    }

    fn truncate_to(&mut self, offset: Offset) {
        assert!(
            offset <= self.log_end_offset,
            "truncation only shortens the log"
        );
        self.log_end_offset = offset;
        self.durable_offset = self.durable_offset.min(offset);
        self.high_watermark = self.high_watermark.min(offset);
        self.history.truncate_from_end(offset);
    }

    /// A fetch response arrived; see the module doc.
    pub fn on_fetch_response(&mut self, response: &FetchResponse) -> ResponseVerdict {
        match check_epoch(response.leader_epoch, self.leader_epoch) {
            EpochCheck::Current => {}
            EpochCheck::Fenced => return ResponseVerdict::FencedLeaderEpoch,
            EpochCheck::Unknown => return ResponseVerdict::UnknownLeaderEpoch,
        }
        if self.phase != Phase::Fetching {
            return ResponseVerdict::NotFetching;
        }
        let mut expected = self.log_end_offset;
        for b in &response.batches {
            if b.base_offset != expected
                || b.last_offset < b.base_offset
                || b.epoch > self.leader_epoch
            {
                return ResponseVerdict::OutOfOrder {
                    expected: self.log_end_offset,
                };
            }
            expected = b.last_offset + 1;
        }
        for b in &response.batches {
            self.history.assign(b.epoch, b.base_offset);
        }
        self.log_end_offset = expected;
        self.high_watermark = self
            .high_watermark
            .max(response.high_watermark.min(self.log_end_offset));
        ResponseVerdict::Append {
            batches: response.batches.clone(),
            high_watermark: self.high_watermark,
        }
    }

    /// The log is durable below `durable_offset` (after an fsync).
    pub fn on_durable(&mut self, durable_offset: Offset) {
        assert!(durable_offset <= self.log_end_offset);
        self.durable_offset = self.durable_offset.max(durable_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EpochEntry;

    fn history(pairs: &[(Epoch, Offset)]) -> EpochHistory {
        EpochHistory::from_entries(
            pairs
                .iter()
                .map(|&(epoch, start_offset)| EpochEntry {
                    epoch,
                    start_offset,
                })
                .collect(),
        )
    }

    fn batch(base_offset: Offset, last_offset: Offset, epoch: Epoch) -> BatchMeta {
        BatchMeta {
            base_offset,
            last_offset,
            epoch,
        }
    }

    #[test]
    fn empty_follower_fetches_at_once_and_keeps_leader_offsets_and_epochs() {
        let mut f = FollowerState::new(2, EpochHistory::new(), 0, 0, 0);
        let req = f.become_follower(1, 4).expect("newer epoch");
        assert!(matches!(
            req,
            FollowerRequest::Fetch {
                fetch_offset: 0,
                leader_epoch: 4,
                last_fetched_epoch: -1,
                ..
            }
        ));
        let v = f.on_fetch_response(&FetchResponse {
            leader_epoch: 4,
            high_watermark: 3,
            batches: vec![batch(0, 4, 2), batch(5, 9, 4)],
        });
        assert_eq!(
            v,
            ResponseVerdict::Append {
                batches: vec![batch(0, 4, 2), batch(5, 9, 4)],
                high_watermark: 3
            }
        );
        assert_eq!(f.history(), &history(&[(2, 0), (4, 5)]));
        assert_eq!(f.log_end_offset(), 10);
        assert!(matches!(
            f.next_request(),
            FollowerRequest::Fetch {
                fetch_offset: 10,
                last_fetched_epoch: 4,
                ..
            }
        ));
    }

    #[test]
    fn hw_is_min_of_leader_hw_and_own_leo() {
        let mut f = FollowerState::new(2, EpochHistory::new(), 0, 0, 0);
        f.become_follower(1, 1);
        let v = f.on_fetch_response(&FetchResponse {
            leader_epoch: 1,
            high_watermark: 50,
            batches: vec![batch(0, 9, 1)],
        });
        assert!(matches!(
            v,
            ResponseVerdict::Append {
                high_watermark: 10,
                ..
            }
        ));
    }

    #[test]
    fn stale_and_newer_responses_are_refused() {
        let mut f = FollowerState::new(2, EpochHistory::new(), 0, 0, 0);
        f.become_follower(1, 5);
        let resp = |leader_epoch| FetchResponse {
            leader_epoch,
            high_watermark: 0,
            batches: vec![batch(0, 0, leader_epoch)],
        };
        assert_eq!(
            f.on_fetch_response(&resp(4)),
            ResponseVerdict::FencedLeaderEpoch
        );
        assert_eq!(
            f.on_fetch_response(&resp(6)),
            ResponseVerdict::UnknownLeaderEpoch
        );
        assert_eq!(f.log_end_offset(), 0);
        assert_eq!(
            f.become_follower(3, 4),
            None,
            "an older leadership is ignored"
        );
        let gap = FetchResponse {
            leader_epoch: 5,
            high_watermark: 0,
            batches: vec![batch(3, 4, 5)],
        };
        assert_eq!(
            f.on_fetch_response(&gap),
            ResponseVerdict::OutOfOrder { expected: 0 }
        );
    }

    /// The KIP-279 double failover from the follower's side: B (history {1: 0, 2: 1},
    /// LEO 2, HW 1) follows A in epoch 3; A never had epoch 2 and answers (1, 2). B
    /// truncates to 1, not to its HW and not to 2, then fetches from 1.
    #[test]
    fn becoming_follower_truncates_by_epoch_answer() {
        let mut b = FollowerState::new(2, history(&[(1, 0), (2, 1)]), 2, 2, 1);
        let req = b.become_follower(1, 3).expect("newer epoch");
        assert_eq!(
            req,
            FollowerRequest::EndOffsetFor {
                leader_epoch: 3,
                epoch: 2
            }
        );
        let no_records = FetchResponse {
            leader_epoch: 3,
            high_watermark: 0,
            batches: vec![],
        };
        assert_eq!(
            b.on_fetch_response(&no_records),
            ResponseVerdict::NotFetching
        );
        let a = history(&[(1, 0), (3, 2)]);
        let answer = a.end_offset_for(2, 3);
        let step = b.on_end_offset_answer(3, 2, answer);
        let TruncateStep::Truncate { offset, next } = step else {
            panic!("{step:?}")
        };
        assert_eq!(offset, 1);
        assert!(matches!(
            next,
            FollowerRequest::Fetch {
                fetch_offset: 1,
                last_fetched_epoch: 1,
                ..
            }
        ));
        assert_eq!(b.history(), &history(&[(1, 0)]));
        assert_eq!(b.high_watermark(), 1);
        // A's offsets 1 (epoch 1) and 2 (epoch 3) replace B's divergent offset 1.
        let v = b.on_fetch_response(&FetchResponse {
            leader_epoch: 3,
            high_watermark: 3,
            batches: vec![batch(1, 1, 1), batch(2, 2, 3)],
        });
        assert!(matches!(
            v,
            ResponseVerdict::Append {
                high_watermark: 3,
                ..
            }
        ));
        assert_eq!(b.history(), &history(&[(1, 0), (3, 2)]));
    }

    #[test]
    fn truncation_walks_back_when_the_follower_lacks_the_answered_epoch() {
        let leader = history(&[(1, 0), (3, 10), (7, 30)]);
        let mut f = FollowerState::new(2, history(&[(1, 0), (2, 8), (5, 20)]), 26, 26, 15);
        assert_eq!(
            f.become_follower(1, 7),
            Some(FollowerRequest::EndOffsetFor {
                leader_epoch: 7,
                epoch: 5
            })
        );
        let step = f.on_end_offset_answer(7, 5, leader.end_offset_for(5, 40));
        assert_eq!(
            step,
            TruncateStep::Truncate {
                offset: 20,
                next: FollowerRequest::EndOffsetFor {
                    leader_epoch: 7,
                    epoch: 2
                }
            }
        );
        let step = f.on_end_offset_answer(7, 2, leader.end_offset_for(2, 40));
        assert!(matches!(
            step,
            TruncateStep::Truncate {
                offset: 8,
                next: FollowerRequest::Fetch {
                    fetch_offset: 8,
                    ..
                }
            }
        ));
        assert_eq!(
            f.high_watermark(),
            8,
            "cut below the old HW 15: leader lacks it"
        );
    }

    #[test]
    fn epoch_answer_from_another_leader_epoch_is_ignored() {
        let mut f = FollowerState::new(2, history(&[(1, 0)]), 5, 5, 0);
        f.become_follower(1, 2);
        let answer = EpochEndOffset {
            epoch: 1,
            end_offset: 3,
        };
        assert_eq!(f.on_end_offset_answer(1, 1, answer), TruncateStep::Ignore);
        assert_eq!(
            f.on_end_offset_answer(2, 1, EpochEndOffset::UNDEFINED),
            TruncateStep::Retry
        );
        assert_eq!(f.log_end_offset(), 5);
    }

    /// Found by the simulator (seed 23575, 3 nodes): a follower that crashed and
    /// restarted asked about its latest epoch (3), and a duplicated answer to the
    /// question it had asked before the crash (epoch 2: "ends at 60") arrived first. Taken
    /// for the answer to the new question, it truncated 152 committed records. An answer
    /// names the epoch it answers; one for another question is ignored.
    #[test]
    fn a_late_answer_to_an_earlier_epoch_question_is_not_taken_for_the_current_one() {
        let mut f = FollowerState::new(2, history(&[(1, 0), (2, 34), (3, 60)]), 212, 212, 60);
        f.become_follower(3, 3);
        assert_eq!(
            f.next_request(),
            FollowerRequest::EndOffsetFor {
                leader_epoch: 3,
                epoch: 3
            }
        );
        let stale = EpochEndOffset {
            epoch: 2,
            end_offset: 60,
        };
        assert_eq!(f.on_end_offset_answer(3, 2, stale), TruncateStep::Ignore);
        assert_eq!(f.log_end_offset(), 212, "nothing truncated");
        let current = EpochEndOffset {
            epoch: 3,
            end_offset: 300,
        };
        let step = f.on_end_offset_answer(3, 3, current);
        assert!(
            matches!(step, TruncateStep::Truncate { offset: 212, .. }),
            "{step:?}"
        );
        assert_eq!(f.log_end_offset(), 212);
    }
}
