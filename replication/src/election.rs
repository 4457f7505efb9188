//! Leader election without unclean election: a new leader comes only from the ISR.
//!
//! A replica outside the ISR may lack acknowledged writes (it was removed because it
//! lagged, or it shut down uncleanly and lost its unsynced tail); electing it could
//! lose them, so when no ISR member is live the partition stays without a leader.

use crate::ReplicaId;

/// The first live member of `isr` (in the order given: pass the ISR in assignment
/// order to prefer the preferred replica, as Kafka does), or `None` when no ISR member
/// is live. Never a replica outside the ISR.
pub fn elect(isr: &[ReplicaId], live: &[ReplicaId]) -> Option<ReplicaId> {
    isr.iter().copied().find(|r| live.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_first_live_isr_member() {
        assert_eq!(elect(&[3, 1, 2], &[1, 2]), Some(1));
        assert_eq!(elect(&[3, 1, 2], &[3, 2]), Some(3));
    }

    #[test]
    fn never_elects_outside_the_isr() {
        assert_eq!(
            elect(&[1], &[2, 3]),
            None,
            "only out-of-sync replicas are live"
        );
        assert_eq!(elect(&[], &[1, 2, 3]), None);
    }
}
