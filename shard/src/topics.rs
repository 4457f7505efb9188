//! Topic metadata: names, partition counts, settings and placement.
//!
//! Kept in `<data-dir>/topics.json`, written crash-safely (write-new, fdatasync,
//! rename, directory fsync) by shard 0, which owns metadata changes; every shard holds
//! its own copy of the table, replaced as a whole when shard 0 broadcasts a change.

use std::collections::BTreeMap;
use std::path::Path;

use ringmq_storage::batch::TimestampType;
use ringmq_storage::{FlushPolicy, LogConfig};
use serde::{Deserialize, Serialize};

use crate::placement::place;

/// File name of the topic table in the data directory.
pub const TOPICS_FILE: &str = "topics.json";
/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 200;
/// Most partitions in one topic.
pub const PARTITIONS_MAX: u32 = 10_000;

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Stable id, never reused.
    pub id: u32,
    /// Partition count.
    pub partitions: u32,
    /// Settings as given (`key=value`), validated by [`log_config`].
    pub configs: BTreeMap<String, String>,
    /// Owning shard of each partition.
    pub placement: Vec<u32>,
}

/// Every topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicTable {
    /// Next topic id.
    pub next_id: u32,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
}

impl TopicTable {
    /// Reads the table from `data_dir` (empty if absent). Called before the shards
    /// start, on the main thread.
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(TOPICS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a valid topic table: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// The table as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("topic table serializes")
    }

    /// Re-places partitions whose recorded shard does not exist with `shard_count`
    /// shards (a restart on fewer cores). Partition directories are shared by all
    /// shards, so moving a partition is only a change of owner. Returns the moves.
    pub fn fit_to_shards(&mut self, shard_count: u32) -> Vec<(String, u32, u32, u32)> {
        let mut moves = Vec::new();
        for (name, t) in self.topics.iter_mut() {
            for (p, shard) in t.placement.iter_mut().enumerate() {
                if *shard >= shard_count {
                    let to = place(t.id, p as u32, shard_count);
                    moves.push((name.clone(), p as u32, *shard, to));
                    *shard = to;
                }
            }
        }
        moves
    }

    /// The owner of a partition, if the topic and partition exist.
    pub fn owner(&self, topic: &str, partition: u32) -> Option<u32> {
        self.topics
            .get(topic)
            .and_then(|t| t.placement.get(partition as usize).copied())
    }
}

/// Checks a topic name: 1 to 200 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if name.starts_with("__ringmq") {
        return Err("topic names starting with __ringmq are reserved".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has invalid character {c:?}: use [A-Za-z0-9._-]"
        ));
    }
    Ok(())
}

/// Topic settings understood, with what they set.
pub const CONFIG_KEYS: &[(&str, &str)] = &[
    (
        "retention_ms",
        "delete closed segments older than this (ms); -1: keep forever",
    ),
    (
        "retention_bytes",
        "delete closed segments beyond this size (bytes); -1: no limit",
    ),
    ("segment_bytes", "roll segments at this size"),
    ("segment_ms", "roll segments at this age (ms)"),
    ("flush", "every_batch | interval_ms:N | bytes:N | never"),
    ("message_bytes_max", "largest batch accepted"),
    ("timestamp_type", "CreateTime | LogAppendTime"),
    (
        "index_interval_bytes",
        "bytes between entries of the sparse offset index",
    ),
];

/// The log settings a topic's configs give, over `base`.
pub fn log_config(
    configs: &BTreeMap<String, String>,
    base: &LogConfig,
) -> Result<LogConfig, String> {
    let mut c = base.clone();
    for (k, v) in configs {
        let num = || {
            v.parse::<i64>()
                .map_err(|_| format!("{k}={v}: not a number"))
        };
        match k.as_str() {
            "retention_ms" => c.retention_ms = u64::try_from(num()?).ok(),
            "retention_bytes" => c.retention_bytes = u64::try_from(num()?).ok(),
            "segment_bytes" => c.segment_bytes = num()?.max(0) as u64,
            "segment_ms" => c.segment_ms = num()?.max(0) as u64,
            "message_bytes_max" => c.message_bytes_max = num()?.max(0) as usize,
            "flush" => c.flush = v.parse::<FlushPolicy>()?,
            "index_interval_bytes" => {
                c.index_interval_bytes = num()?.clamp(1, i64::from(u32::MAX)) as u32
            }
            // Kafka's names of what the broker applies itself, or of what has no
            // effect here (`topic_configs`).
            k if crate::topic_configs::def(k).is_some() => {
                crate::topic_configs::check(k, v)?;
            }
            "timestamp_type" => {
                c.timestamp_type = match v.as_str() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(format!("{k}={v}: expected CreateTime or LogAppendTime")),
                }
            }
            _ => {
                let known: Vec<&str> = CONFIG_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "unknown topic setting {k:?}; known: {}",
                    known.join(", ")
                ));
            }
        }
    }
    // A compact-only topic: Kafka deletes nothing from it by time or size.
    if crate::topic_configs::retention_off(configs) {
        c.retention_ms = None;
        c.retention_bytes = None;
    }
    if c.write_buffer_bytes_max < c.message_bytes_max {
        c.write_buffer_bytes_max = c.message_bytes_max;
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("orders.v2_eu-1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(201)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configs_parse_and_unknown_keys_are_refused() {
        let mut m = BTreeMap::new();
        m.insert("retention_ms".to_string(), "-1".to_string());
        m.insert("flush".to_string(), "interval_ms:50".to_string());
        m.insert("segment_bytes".to_string(), "1048576".to_string());
        let c = log_config(&m, &LogConfig::default()).unwrap();
        assert_eq!(c.retention_ms, None);
        assert_eq!(c.flush, FlushPolicy::IntervalMs(50));
        assert_eq!(c.segment_bytes, 1 << 20);
        m.insert("bogus".to_string(), "1".to_string());
        assert!(
            log_config(&m, &LogConfig::default())
                .unwrap_err()
                .contains("unknown topic setting")
        );
        let mut m = BTreeMap::new();
        m.insert("segment_bytes".to_string(), "10".to_string());
        assert!(log_config(&m, &LogConfig::default()).is_err());
    }

    #[test]
    fn fewer_shards_move_only_orphaned_partitions() {
        let mut t = TopicTable::default();
        t.topics.insert(
            "a".into(),
            TopicMeta {
                id: 0,
                partitions: 4,
                configs: BTreeMap::new(),
                placement: vec![0, 1, 2, 3],
            },
        );
        let moves = t.fit_to_shards(2);
        assert_eq!(moves.len(), 2);
        assert_eq!(t.topics["a"].placement, vec![0, 1, 0, 1]);
        assert!(t.fit_to_shards(2).is_empty());
    }
}
