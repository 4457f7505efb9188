//! Which shard owns a partition: a documented pure function.
//!
//! `shard = (topic_id + partition) % shard_count`. Consecutive partitions of a topic
//! land on consecutive shards, and topics start at different shards (their ids
//! differ), so partitions spread evenly. The result is recorded in the topic's
//! metadata at creation, so it does not change when the function or the core count
//! does; the broker re-places only partitions whose recorded shard no longer exists
//! (see `TopicTable::fit_to_shards`).

/// The shard for `partition` of the topic with id `topic_id`.
pub fn place(topic_id: u32, partition: u32, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "at least one shard");
    ((u64::from(topic_id) + u64::from(partition)) % u64::from(shard_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_evenly_and_is_stable() {
        let mut counts = [0u32; 4];
        for p in 0..64 {
            counts[place(7, p, 4) as usize] += 1;
        }
        assert_eq!(counts, [16, 16, 16, 16]);
        assert_eq!(place(7, 3, 4), place(7, 3, 4));
        assert_eq!(
            place(u32::MAX, u32::MAX, 3),
            ((2 * u32::MAX as u64) % 3) as u32
        );
    }
}
