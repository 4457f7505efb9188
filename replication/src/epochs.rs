//! Leader-epoch history and the follower's truncation rule (KIP-101, KIP-279).
//!
//! Every replica keeps, for its log, the list of (leader epoch, start offset) pairs:
//! the first offset written in each epoch. A new leader records (new epoch, its log
//! end offset) at election, before any record. The pairs have strictly increasing
//! epochs and non-decreasing start offsets.
//!
//! **OffsetsForLeaderEpoch** ([`EpochHistory::end_offset_for`]): asked for epoch `E`,
//! a replica answers where `E` ended in its log: for its current epoch, its log end
//! offset; for an older epoch, the start offset of the next epoch it knows, together
//! with the largest epoch ≤ `E` it has; for an epoch older than its whole history,
//! (`E`, its first start offset); for an epoch newer than its current one, (-1, -1).
//!
//! **Truncation** ([`truncation_point`]): a replica that becomes follower (or restarts,
//! or rejoins) asks the leader for the end of its latest epoch. If the leader answers
//! with that epoch, the logs agree below min(answer, follower LEO): truncate there. If
//! the leader answers an older epoch `E'` (it never had the follower's epoch: the fast
//! double failover of KIP-279), the follower looks `E'` up in its own history: if it
//! has `E'`, truncate to min(its end of `E'`, the answer); if not, truncate to the end
//! of its largest epoch below `E'` and ask again with that epoch. The high watermark is
//! never the truncation point: it may be ahead of what the new leader has.

use crate::{Epoch, Offset, UNDEFINED_EPOCH, UNDEFINED_OFFSET};

/// One entry of the history: the first offset written in a leader epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: Epoch,
    /// The first offset written (or to be written) in it.
    pub start_offset: Offset,
}

/// An OffsetsForLeaderEpoch answer: the epoch found and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEndOffset {
    /// The largest epoch ≤ the one asked for, or [`UNDEFINED_EPOCH`].
    pub epoch: Epoch,
    /// The offset where it ends (exclusive), or [`UNDEFINED_OFFSET`].
    pub end_offset: Offset,
}

impl EpochEndOffset {
    /// The answer for an epoch the replica does not know (-1, -1).
    pub const UNDEFINED: EpochEndOffset = EpochEndOffset {
        epoch: UNDEFINED_EPOCH,
        end_offset: UNDEFINED_OFFSET,
    };
}

/// A replica's leader-epoch history: epochs strictly increasing, start offsets
/// non-decreasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<EpochEntry>,
}

impl EpochHistory {
    /// An empty history (an empty log).
    pub fn new() -> Self {
        Self::default()
    }

    /// A history from entries, which must have strictly increasing epochs and
    /// non-decreasing start offsets (panics otherwise: a corrupt history).
    pub fn from_entries(entries: Vec<EpochEntry>) -> Self {
        for w in entries.windows(2) {
            assert!(w[0].epoch < w[1].epoch, "epochs increase: {w:?}");
            assert!(
                w[0].start_offset <= w[1].start_offset,
                "start offsets do not decrease: {w:?}"
            );
        }
        Self { entries }
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The latest entry.
    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` starts at `start_offset` (at election, or when a follower
    /// appends the first batch of a newer epoch). An epoch not newer than the latest
    /// is ignored (already recorded). Entries whose start offset is past
    /// `start_offset` are removed first (they describe a truncated tail), as Kafka's
    /// `LeaderEpochFileCache.assign` does.
    pub fn assign(&mut self, epoch: Epoch, start_offset: Offset) {
        if self.latest().is_some_and(|l| l.epoch >= epoch) {
            return;
        }
        self.entries.retain(|e| e.start_offset <= start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }

    /// Forgets the epochs that start at or after `offset` (the log was truncated to
    /// `offset`).
    pub fn truncate_from_end(&mut self, offset: Offset) {
        self.entries.retain(|e| e.start_offset < offset);
    }

    /// Kafka's OffsetsForLeaderEpoch answer for `epoch`, given this replica's log end
    /// offset (see the module doc).
    pub fn end_offset_for(&self, epoch: Epoch, log_end_offset: Offset) -> EpochEndOffset {
        let Some(latest) = self.latest() else {
            return EpochEndOffset::UNDEFINED;
        };
        if epoch == UNDEFINED_EPOCH {
            return EpochEndOffset::UNDEFINED;
        }
        if epoch == latest.epoch {
            return EpochEndOffset {
                epoch,
                end_offset: log_end_offset,
            };
        }
        let Some(higher) = self.entries.iter().find(|e| e.epoch > epoch) else {
            return EpochEndOffset::UNDEFINED; // newer than anything known
        };
        match self.entries.iter().rev().find(|e| e.epoch <= epoch) {
            None => EpochEndOffset {
                epoch,
                end_offset: higher.start_offset,
            },
            Some(floor) => EpochEndOffset {
                epoch: floor.epoch,
                end_offset: higher.start_offset,
            },
        }
    }
}

/// What a follower does with the leader's OffsetsForLeaderEpoch answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Truncate the log to this offset; the logs agree below it. Then fetch from it.
    To(Offset),
    /// Truncate to `truncate_to` (the follower's end of its largest epoch below the
    /// one the leader answered), then ask the leader again for `epoch`.
    AskAgain {
        /// Where to truncate now.
        truncate_to: Offset,
        /// The epoch to ask the leader about next.
        epoch: Epoch,
    },
    /// The leader does not know the epoch (it answered -1): it is not the leader this
    /// follower believes in any more, or is behind. Truncate nothing; refresh the
    /// metadata and ask again.
    LeaderUnaware,
}

/// The follower's truncation rule (KIP-101, KIP-279): `follower` is its own history
/// and `follower_leo` its log end; `answer` is the leader's OffsetsForLeaderEpoch
/// answer to the epoch the follower asked about. See the module doc.
pub fn truncation_point(
    follower: &EpochHistory,
    follower_leo: Offset,
    answer: EpochEndOffset,
) -> Truncation {
    if answer.epoch == UNDEFINED_EPOCH || answer.end_offset == UNDEFINED_OFFSET {
        return Truncation::LeaderUnaware;
    }
    let mine = follower.end_offset_for(answer.epoch, follower_leo);
    if mine.epoch == answer.epoch {
        Truncation::To(mine.end_offset.min(answer.end_offset).min(follower_leo))
    } else if mine.epoch == UNDEFINED_EPOCH {
        // The follower's history is empty or entirely newer: nothing below the
        // answer is known to agree except what both have.
        Truncation::To(answer.end_offset.min(follower_leo))
    } else {
        Truncation::AskAgain {
            truncate_to: mine.end_offset.min(follower_leo),
            epoch: mine.epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(Epoch, Offset)]) -> EpochHistory {
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

    fn eo(epoch: Epoch, end_offset: Offset) -> EpochEndOffset {
        EpochEndOffset { epoch, end_offset }
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let hist = h(&[(1, 0), (3, 10), (6, 25)]);
        let leo = 40;
        assert_eq!(
            hist.end_offset_for(6, leo),
            eo(6, 40),
            "current epoch ends at LEO"
        );
        assert_eq!(
            hist.end_offset_for(3, leo),
            eo(3, 25),
            "ends where the next began"
        );
        assert_eq!(
            hist.end_offset_for(4, leo),
            eo(3, 25),
            "largest epoch <= asked"
        );
        assert_eq!(
            hist.end_offset_for(0, leo),
            eo(0, 0),
            "older than the history"
        );
        assert_eq!(
            hist.end_offset_for(7, leo),
            EpochEndOffset::UNDEFINED,
            "newer"
        );
        assert_eq!(
            EpochHistory::new().end_offset_for(1, 0),
            EpochEndOffset::UNDEFINED
        );
    }

    #[test]
    fn assign_ignores_old_epochs_and_drops_truncated_tail() {
        let mut hist = h(&[(1, 0), (2, 10)]);
        hist.assign(2, 12);
        hist.assign(1, 50);
        assert_eq!(hist, h(&[(1, 0), (2, 10)]));
        hist.assign(4, 5);
        assert_eq!(hist, h(&[(1, 0), (4, 5)]));
        hist.truncate_from_end(5);
        assert_eq!(hist, h(&[(1, 0)]));
    }

    #[test]
    fn leader_has_the_epoch_truncate_to_min_of_end_and_leo() {
        let follower = h(&[(1, 0), (2, 10)]);
        assert_eq!(
            truncation_point(&follower, 20, eo(2, 15)),
            Truncation::To(15)
        );
        assert_eq!(
            truncation_point(&follower, 12, eo(2, 15)),
            Truncation::To(12)
        );
    }

    /// KIP-279's fast double failover. A leads epoch 1 and writes offsets 0 and 1; B
    /// copies offset 0 only. A fails; B leads epoch 2 and writes its own offset 1. B
    /// fails before A copies it; A comes back, leads epoch 3 and writes offset 2. B
    /// returns and asks A for epoch 2, which A never had: A answers (1, 2). With
    /// KIP-101 alone B would truncate to min(2, LEO 2) = 2 and keep its divergent
    /// offset 1; the rule looks epoch 1 up in B's history, which ends at 1.
    #[test]
    fn fast_double_failover_truncates_to_divergence() {
        let a = h(&[(1, 0), (3, 2)]);
        let b = h(&[(1, 0), (2, 1)]);
        let (a_leo, b_leo) = (3, 2);
        let answer = a.end_offset_for(2, a_leo);
        assert_eq!(answer, eo(1, 2));
        assert_eq!(truncation_point(&b, b_leo, answer), Truncation::To(1));
    }

    #[test]
    fn follower_lacks_the_answered_epoch_asks_again() {
        // Leader has epochs 1, 3, 7; follower has 1, 2, 5 and asks about 5.
        let leader = h(&[(1, 0), (3, 10), (7, 30)]);
        let follower = h(&[(1, 0), (2, 8), (5, 20)]);
        let answer = leader.end_offset_for(5, 40);
        assert_eq!(answer, eo(3, 30));
        // The follower has no epoch 3: its largest below is 2, which ends at 20.
        let step = truncation_point(&follower, 26, answer);
        assert_eq!(
            step,
            Truncation::AskAgain {
                truncate_to: 20,
                epoch: 2
            }
        );
        let answer = leader.end_offset_for(2, 40);
        assert_eq!(answer, eo(1, 10));
        let mut follower = follower;
        follower.truncate_from_end(20);
        assert_eq!(truncation_point(&follower, 20, answer), Truncation::To(8));
    }

    #[test]
    fn truncation_is_not_the_high_watermark() {
        // The follower's HW was 5 but the leader has its whole epoch 2 up to 9.
        let follower = h(&[(2, 0)]);
        assert_eq!(truncation_point(&follower, 9, eo(2, 12)), Truncation::To(9));
    }

    #[test]
    fn leader_unaware_truncates_nothing() {
        let follower = h(&[(2, 0)]);
        assert_eq!(
            truncation_point(&follower, 9, EpochEndOffset::UNDEFINED),
            Truncation::LeaderUnaware
        );
    }
}
