//! Group state in a cluster: kept in the replicated internal topic [`OFFSETS_TOPIC`],
//! so a group survives the loss of its coordinator's node.
//!
//! Each group belongs to one partition of the topic ([`offsets_partition`] of its id),
//! and the node that leads that partition coordinates the group, on the shard that
//! holds the partition. The coordinator writes the same records as a single node's
//! group log (committed offsets, stable memberships, deletions), as one RecordBatch per
//! partition, produced with acks=all: an OffsetCommit is answered once its batch is
//! replicated to the in-sync replicas, and only then applied in memory.
//!
//! When this node becomes leader of a partition of the topic (in a new leader epoch)
//! the coordinator reads the partition's log from its start and rebuilds the groups of
//! that partition; until it is done their requests are answered
//! COORDINATOR_LOAD_IN_PROGRESS. When it stops leading one, it drops those groups: their
//! requests get NOT_COORDINATOR, and clients look the coordinator up again.
//!
//! Once a partition has taken more than the group log's compaction threshold since it
//! was last compacted (and four times the last snapshot), the coordinator writes a
//! snapshot of its groups to it and moves its log start there
//! ([`Coordinator::compact_offsets`]). The partition count is fixed at
//! [`OFFSETS_TOPIC_PARTITIONS`].

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::Bytes;

use super::{Coordinator, group_shard, parse_offset_key};
use crate::error::{BrokerError, ErrorKind};
use crate::ops::Acks;
use crate::partition::Partition;

/// The internal topic that holds a cluster's consumer groups and committed offsets
/// (Kafka's name for it, so tools that know Kafka's internal topic recognise it).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Partitions of [`OFFSETS_TOPIC`]. Groups spread over them (and so over their leaders);
/// Kafka has 50 by default, Redpanda 16. Each is a replicated log every replica keeps
/// open, and there are few coordinator nodes here; 8 spreads groups over up to 8 nodes.
pub const OFFSETS_TOPIC_PARTITIONS: u32 = 8;

/// The replication factor [`OFFSETS_TOPIC`] is created with, at most (a smaller cluster
/// gets one replica per node).
pub const OFFSETS_TOPIC_REPLICATION_FACTOR: u16 = 3;

/// The topic settings of [`OFFSETS_TOPIC`]: never deleted by retention (a group's last
/// commit may be old and still the one to resume from).
pub fn offsets_topic_configs() -> Vec<(String, String)> {
    vec![
        ("retention.ms".to_string(), "-1".to_string()),
        ("retention.bytes".to_string(), "-1".to_string()),
    ]
}

/// The partition of [`OFFSETS_TOPIC`] that holds `group` (of `partitions`).
pub fn offsets_partition(group: &str, partitions: u32) -> u32 {
    group_shard(group, partitions)
}

/// A partition of [`OFFSETS_TOPIC`] this shard leads.
#[derive(Debug)]
pub(super) struct Led {
    /// The leader epoch it leads in.
    epoch: i32,
    partition: Rc<Partition>,
    /// Its groups are loaded; until then their requests wait.
    loaded: bool,
    /// Bytes this shard wrote to it since it led it or last compacted it.
    written: u64,
    /// Bytes of the last snapshot written by a compaction.
    snapshot: u64,
    compacting: bool,
}

/// What a clustered coordinator knows of [`OFFSETS_TOPIC`].
#[derive(Debug, Default)]
pub(super) struct OffsetsTopic {
    /// Its partition count; `None` until it exists.
    partitions: Option<u32>,
    /// The partitions this shard leads, by partition.
    led: HashMap<u32, Led>,
}

/// A partition of [`OFFSETS_TOPIC`] this shard leads, as the cluster's metadata says.
#[derive(Debug, Clone)]
pub struct Leading {
    /// The partition.
    pub partition: Rc<Partition>,
    /// The leader epoch.
    pub epoch: i32,
}

/// A group-log record: its key, and its value (`None`: a deletion).
type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// The group a group-log record is about, from its key.
fn record_group(key: &[u8]) -> Option<String> {
    if let Some(name) = key.strip_prefix(b"g") {
        return std::str::from_utf8(name).ok().map(str::to_string);
    }
    parse_offset_key(key).map(|(g, _, _)| g)
}

impl Coordinator {
    /// The partition of [`OFFSETS_TOPIC`] of `group`, once the topic exists.
    fn partition_of(&self, group: &str) -> Option<u32> {
        let t = self.offsets_topic.borrow();
        t.partitions.map(|n| offsets_partition(group, n))
    }

    /// In a cluster: whether this shard holds `group`'s state (it leads the group's
    /// partition, loaded or loading).
    pub(super) fn holds_replicated(&self, group: &str) -> bool {
        self.partition_of(group)
            .is_some_and(|p| self.offsets_topic.borrow().led.contains_key(&p))
    }

    /// In a cluster: `Ok` when this shard coordinates `group` now, else the error that
    /// sends the client to the coordinator (or has it wait for the load).
    pub(super) fn serves(&self, group: &str) -> Result<(), BrokerError> {
        let t = self.offsets_topic.borrow();
        let Some(n) = t.partitions else {
            return Err(BrokerError::new(
                ErrorKind::CoordinatorNotAvailable,
                format!(
                    "the group coordinators are not ready: topic {OFFSETS_TOPIC} does not exist yet"
                ),
            ));
        };
        let p = offsets_partition(group, n);
        match t.led.get(&p) {
            None => Err(BrokerError::new(
                ErrorKind::NotCoordinator,
                format!(
                    "this node does not coordinate group {}: it does not lead {OFFSETS_TOPIC} partition {p}",
                    super::shown(group)
                ),
            )),
            Some(l) if !l.loaded => Err(BrokerError::new(
                ErrorKind::CoordinatorLoadInProgress,
                format!("loading the groups of {OFFSETS_TOPIC} partition {p}"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Takes the cluster's metadata: the partition count of [`OFFSETS_TOPIC`] (`None`:
    /// it does not exist yet) and the partitions of it this shard leads. Partitions led
    /// no more (or in a new epoch) drop their groups; newly led ones load theirs.
    pub fn lead_offsets(self: &Rc<Self>, partitions: Option<u32>, leading: Vec<Leading>) {
        let leading: BTreeMap<u32, Leading> = leading
            .into_iter()
            .map(|l| (l.partition.tp().partition, l))
            .collect();
        let mut dropped = Vec::new();
        let mut to_load = Vec::new();
        {
            let mut t = self.offsets_topic.borrow_mut();
            if t.partitions.is_some() && t.partitions != partitions {
                // Its partition count cannot change (the broker refuses it); a deleted
                // and recreated topic maps groups anew: drop everything.
                dropped.extend(t.led.keys().copied());
                t.led.clear();
            }
            t.partitions = partitions;
            let gone: Vec<u32> = t
                .led
                .iter()
                .filter(|(p, l)| leading.get(p).is_none_or(|n| n.epoch != l.epoch))
                .map(|(p, _)| *p)
                .collect();
            for p in gone {
                t.led.remove(&p);
                dropped.push(p);
            }
            for (p, l) in leading {
                if let std::collections::hash_map::Entry::Vacant(e) = t.led.entry(p) {
                    e.insert(Led {
                        epoch: l.epoch,
                        partition: l.partition.clone(),
                        loaded: false,
                        written: 0,
                        snapshot: 0,
                        compacting: false,
                    });
                    to_load.push(l);
                }
            }
        }
        if !dropped.is_empty() {
            self.unload(&dropped);
        }
        for l in to_load {
            let me = self.clone();
            glommio::spawn_local(async move { me.load(l).await }).detach();
        }
    }

    /// Drops the groups of partitions this shard no longer leads: their waiting joins
    /// and syncs are answered NOT_COORDINATOR.
    fn unload(&self, partitions: &[u32]) {
        // Everything of a partition no longer led goes (with a changed partition
        // count, everything not held under the new one).
        let of_them = |g: &str| !self.holds_replicated(g);
        let moved = || {
            BrokerError::new(
                ErrorKind::NotCoordinator,
                "this node no longer coordinates the group: find its coordinator again",
            )
        };
        let mut groups = self.groups.borrow_mut();
        let names: Vec<String> = groups.keys().filter(|g| of_them(g)).cloned().collect();
        for name in &names {
            if let Some(g) = groups.remove(name) {
                for m in g.members.into_values() {
                    if let Some(j) = m.join {
                        let _ = j.try_send(Err(moved()));
                    }
                    if let Some(s) = m.sync {
                        let _ = s.try_send(Err(moved()));
                    }
                }
            }
        }
        drop(groups);
        self.offsets.borrow_mut().retain(|g, _| !of_them(g));
        self.dirty.borrow_mut().retain(|g| !of_them(g));
        self.restored.borrow_mut().retain(|g, _| !of_them(g));
        tracing::info!(
            shard = self.shard_id,
            partitions = ?partitions,
            groups = names.len(),
            "no longer coordinating the groups of these {OFFSETS_TOPIC} partitions"
        );
    }

    /// Rebuilds the groups of a partition this shard now leads from its log, then
    /// serves them (if it still leads the partition in that epoch).
    async fn load(self: Rc<Self>, l: Leading) {
        let p = l.partition.tp().partition;
        let started = std::time::Instant::now();
        let log = l.partition.log().clone();
        let result = self.replay(&log).await;
        let still = {
            let t = self.offsets_topic.borrow();
            t.led.get(&p).is_some_and(|x| x.epoch == l.epoch)
        };
        if !still {
            return;
        }
        if let Err(e) = result {
            tracing::error!(shard = self.shard_id, partition = p, error = %e, "loading groups failed; this node will not coordinate them");
            self.offsets_topic.borrow_mut().led.remove(&p);
            self.unload(&[p]);
            return;
        }
        let n = self.offsets_topic.borrow().partitions;
        let restored: Vec<(String, super::GroupRecord)> = {
            let mut r = self.restored.borrow_mut();
            let mine: Vec<String> = r
                .keys()
                .filter(|g| n.is_some_and(|n| offsets_partition(g, n) == p))
                .cloned()
                .collect();
            mine.into_iter()
                .filter_map(|g| {
                    let rec = r.remove(&g)?;
                    Some((g, rec?))
                })
                .collect()
        };
        let now = self.timers.now();
        let members = restored.len();
        for (name, rec) in restored {
            self.groups
                .borrow_mut()
                .entry(name)
                .or_insert_with(|| rec.into_group(now));
        }
        if let Some(x) = self.offsets_topic.borrow_mut().led.get_mut(&p) {
            x.loaded = true;
        }
        let offsets = self
            .offsets
            .borrow()
            .keys()
            .filter(|g| n.is_some_and(|n| offsets_partition(g, n) == p))
            .count();
        tracing::info!(
            shard = self.shard_id,
            partition = p,
            epoch = l.epoch,
            groups_with_offsets = offsets,
            groups_with_members = members,
            records_end = log.end_offset(),
            ms = started.elapsed().as_millis() as u64,
            "coordinating the groups of {OFFSETS_TOPIC} partition {p}"
        );
    }

    /// Appends records to the partitions of [`OFFSETS_TOPIC`] their groups belong to,
    /// acks=all, and applies each batch in memory once it is replicated. Fails for a
    /// group whose partition this shard does not lead.
    pub(super) async fn write_replicated(
        self: &Rc<Self>,
        records: Vec<KeyValue>,
    ) -> Result<(), String> {
        let mut by_partition: BTreeMap<u32, Vec<KeyValue>> = BTreeMap::new();
        for (k, v) in records {
            let p = record_group(&k)
                .and_then(|g| self.partition_of(&g))
                .ok_or_else(|| format!("no {OFFSETS_TOPIC} partition for a group record"))?;
            by_partition.entry(p).or_default().push((k, v));
        }
        for (p, records) in by_partition {
            let (epoch, partition) = {
                let t = self.offsets_topic.borrow();
                let l = t.led.get(&p).ok_or_else(|| {
                    format!("this node does not lead {OFFSETS_TOPIC} partition {p}")
                })?;
                (l.epoch, l.partition.clone())
            };
            let b = Self::encode(records);
            let _permit = self.writing.acquire_permit(1).await;
            partition
                .produce(Bytes::from(b.clone()), Acks::All, ringmq_storage::now_ms())
                .await
                .map_err(|(e, _)| {
                    format!("writing to {OFFSETS_TOPIC} partition {p}: {}", e.message)
                })?;
            // Applied only if this epoch still leads: after a change of leader the
            // batch is in the log the next load reads.
            let current = self
                .offsets_topic
                .borrow()
                .led
                .get(&p)
                .is_some_and(|l| l.epoch == epoch);
            if current {
                self.apply_batch(&b);
            }
            let due = {
                let mut t = self.offsets_topic.borrow_mut();
                match t.led.get_mut(&p) {
                    Some(l) if l.epoch == epoch => {
                        l.written += b.len() as u64;
                        let due =
                            !l.compacting && l.written > self.compact_bytes.max(4 * l.snapshot);
                        l.compacting |= due;
                        due
                    }
                    _ => false,
                }
            };
            if due {
                let me = self.clone();
                glommio::spawn_local(async move { me.compact_offsets(p, epoch).await }).detach();
            }
        }
        Ok(())
    }

    /// Compaction of a partition of [`OFFSETS_TOPIC`] this shard leads: appends every
    /// live record of its groups (their committed offsets and stable memberships) as a
    /// snapshot, then moves the partition's log start to the snapshot, so the next
    /// leader reads only that and what follows. No write to the partition runs
    /// meanwhile (the snapshot is the state at its offset). Followers keep their older
    /// records until they lead and compact (DeleteRecords moves the leader's log start
    /// only); reading them first gives the same state.
    async fn compact_offsets(self: Rc<Self>, p: u32, epoch: i32) {
        let _permit = self.writing.acquire_permit(1).await;
        let partition = {
            let t = self.offsets_topic.borrow();
            match t.led.get(&p) {
                Some(l) if l.epoch == epoch => l.partition.clone(),
                _ => return,
            }
        };
        let n = self.offsets_topic.borrow().partitions;
        let mine = |g: &str| n.is_some_and(|n| offsets_partition(g, n) == p);
        let mut records: Vec<KeyValue> = self
            .offsets
            .borrow()
            .iter()
            .filter(|(g, _)| mine(g))
            .flat_map(|(g, o)| {
                o.iter().map(move |((t, part), (off, e, m))| {
                    (
                        super::offset_key(g, t, *part),
                        Some(super::offset_value(*off, *e, m.as_deref())),
                    )
                })
            })
            .collect();
        records.extend(
            self.groups
                .borrow()
                .iter()
                .filter(|(name, _)| mine(name))
                .filter_map(|(name, g)| {
                    super::GroupRecord::of(g)
                        .map(|r| (super::group_key(name), serde_json::to_vec(&r).ok()))
                }),
        );
        let result = async {
            let mut start = partition.log_end_offset();
            let mut bytes = 0u64;
            let mut first = true;
            let mut it = records.into_iter().peekable();
            while it.peek().is_some() {
                let chunk: Vec<KeyValue> = it.by_ref().take(1000).collect();
                let b = Self::encode(chunk);
                bytes += b.len() as u64;
                let a = partition
                    .produce(Bytes::from(b), Acks::All, ringmq_storage::now_ms())
                    .await
                    .map_err(|(e, _)| e.message)?;
                if first {
                    start = a.base_offset;
                    first = false;
                }
            }
            let before = partition.log().start_offset();
            partition
                .delete_records_before(start)
                .await
                .map_err(|e| e.message)?;
            Ok::<_, String>((before, start, bytes))
        }
        .await;
        let mut t = self.offsets_topic.borrow_mut();
        let Some(l) = t.led.get_mut(&p).filter(|l| l.epoch == epoch) else {
            return;
        };
        l.compacting = false;
        match result {
            Ok((before, start, bytes)) => {
                l.written = 0;
                l.snapshot = bytes;
                tracing::info!(
                    shard = self.shard_id,
                    partition = p,
                    log_start_before = before,
                    log_start = start,
                    snapshot_bytes = bytes,
                    "{OFFSETS_TOPIC} partition compacted"
                );
            }
            Err(e) => {
                // Tried again after as many bytes more.
                l.written = 0;
                tracing::warn!(shard = self.shard_id, partition = p, error = %e, "compacting {OFFSETS_TOPIC} failed");
            }
        }
    }
}

/// A membership record's key, for tests of [`record_group`].
#[cfg(test)]
fn membership_key(group: &str) -> Vec<u8> {
    super::group_key(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_names_its_group_and_groups_spread_over_the_partitions() {
        assert_eq!(
            record_group(&membership_key("orders")).as_deref(),
            Some("orders")
        );
        let k = super::super::offset_key("billing", "payments", 3);
        assert_eq!(record_group(&k).as_deref(), Some("billing"));
        assert_eq!(record_group(b"x"), None);
        let mut used = std::collections::HashSet::new();
        for i in 0..200 {
            let p = offsets_partition(&format!("group-{i}"), OFFSETS_TOPIC_PARTITIONS);
            assert!(p < OFFSETS_TOPIC_PARTITIONS);
            used.insert(p);
        }
        assert_eq!(used.len(), OFFSETS_TOPIC_PARTITIONS as usize);
        // Stable: the same group always lands on the same partition.
        assert_eq!(
            offsets_partition("orders", OFFSETS_TOPIC_PARTITIONS),
            offsets_partition("orders", OFFSETS_TOPIC_PARTITIONS)
        );
    }
}
