//! Topic metadata changes and lookups: which shard owns a partition, and how a
//! [`TopicOp`] changes the [`TopicTable`]. Pure functions of the table: the metadata
//! shard applies them one at a time, persists the result and has every shard apply
//! it (`broker`), and they are tested here without a shard.

use std::collections::BTreeMap;

use ringmq_storage::LogConfig;

use crate::error::{BrokerError, ErrorKind};
use crate::ops::{TopicOp, TopicPartition};
use crate::placement::place;
use crate::topics::{self, TopicMeta, TopicTable};

/// The shard that owns `tp`, or the error to answer.
pub fn owner(table: &TopicTable, tp: &TopicPartition) -> Result<u32, BrokerError> {
    let Some(meta) = table.topics.get(&tp.topic) else {
        return Err(BrokerError::unknown_topic(&tp.topic));
    };
    meta.placement
        .get(tp.partition as usize)
        .copied()
        .ok_or_else(|| {
            BrokerError::new(
                ErrorKind::UnknownPartition,
                format!(
                    "topic {:?} has {} partitions; {} does not exist",
                    tp.topic, meta.partitions, tp.partition
                ),
            )
        })
}

/// Applies `op` to `table`: `Ok(Some(topic))` when the table changed, `Ok(None)`
/// when the op only validated. New partitions are placed over `shard_count` shards;
/// settings are checked against the broker's `defaults`.
pub fn edit(
    table: &mut TopicTable,
    op: TopicOp,
    defaults: &LogConfig,
    shard_count: u32,
) -> Result<Option<String>, BrokerError> {
    let invalid = |kind, m: String| BrokerError::new(kind, m);
    match op {
        TopicOp::Create {
            name,
            partitions,
            configs,
            replication_factor,
            validate_only,
        } => {
            topics::validate_name(&name).map_err(|e| invalid(ErrorKind::InvalidTopic, e))?;
            if let Some(rf) = replication_factor.filter(|&rf| rf != 1) {
                return Err(invalid(
                    ErrorKind::InvalidReplicationFactor,
                    format!("replication factor {rf}: this broker is a single node (use 1)"),
                ));
            }
            if table.topics.contains_key(&name) {
                return Err(invalid(
                    ErrorKind::TopicExists,
                    format!("topic {name:?} exists"),
                ));
            }
            if partitions == 0 || partitions > topics::PARTITIONS_MAX {
                return Err(invalid(
                    ErrorKind::InvalidPartitions,
                    format!("partition count must be 1 to {}", topics::PARTITIONS_MAX),
                ));
            }
            let configs: BTreeMap<String, String> = configs.into_iter().collect();
            topics::log_config(&configs, defaults)
                .map_err(|e| invalid(ErrorKind::InvalidConfig, e))?;
            if validate_only {
                return Ok(None);
            }
            let id = table.next_id;
            table.next_id += 1;
            let placement = (0..partitions).map(|p| place(id, p, shard_count)).collect();
            table.topics.insert(
                name.clone(),
                TopicMeta {
                    id,
                    partitions,
                    configs,
                    placement,
                },
            );
            tracing::info!(topic = %name, partitions, "topic created");
            Ok(Some(name))
        }
        TopicOp::Delete { name } => {
            if table.topics.remove(&name).is_none() {
                return Err(BrokerError::unknown_topic(&name));
            }
            tracing::info!(topic = %name, "topic deleted");
            Ok(Some(name))
        }
        TopicOp::Configs {
            name,
            set,
            remove,
            validate_only,
        } => {
            let meta = table
                .topics
                .get_mut(&name)
                .ok_or_else(|| BrokerError::unknown_topic(&name))?;
            let mut configs = meta.configs.clone();
            for k in remove {
                configs.remove(&k);
            }
            configs.extend(set);
            topics::log_config(&configs, defaults)
                .map_err(|e| invalid(ErrorKind::InvalidConfig, e))?;
            if validate_only {
                return Ok(None);
            }
            tracing::info!(topic = %name, configs = ?configs, "topic settings changed");
            meta.configs = configs;
            Ok(Some(name))
        }
        TopicOp::Partitions {
            name,
            count,
            validate_only,
        } => {
            let meta = table
                .topics
                .get_mut(&name)
                .ok_or_else(|| BrokerError::unknown_topic(&name))?;
            let now = meta.partitions;
            if count <= now || count > topics::PARTITIONS_MAX {
                return Err(invalid(
                    ErrorKind::InvalidPartitions,
                    format!(
                        "topic {name:?} has {now} partitions; the new count must be more, and at most {}",
                        topics::PARTITIONS_MAX
                    ),
                ));
            }
            if validate_only {
                return Ok(None);
            }
            let id = meta.id;
            meta.placement
                .extend((now..count).map(|p| place(id, p, shard_count)));
            meta.partitions = count;
            tracing::info!(topic = %name, from = now, to = count, "partitions added");
            Ok(Some(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32) -> TopicOp {
        TopicOp::Create {
            name: name.into(),
            partitions,
            configs: Vec::new(),
            replication_factor: None,
            validate_only: false,
        }
    }

    #[test]
    fn create_places_partitions_and_owner_finds_them() {
        let mut t = TopicTable::default();
        let d = LogConfig::default();
        assert_eq!(edit(&mut t, create("a", 4), &d, 2), Ok(Some("a".into())));
        for p in 0..4 {
            let o = owner(&t, &TopicPartition::new("a", p)).unwrap();
            assert_eq!(o, place(0, p, 2));
        }
        let e = owner(&t, &TopicPartition::new("a", 4)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownPartition);
        let e = owner(&t, &TopicPartition::new("b", 0)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownTopic);
        assert_eq!(
            edit(&mut t, create("a", 1), &d, 2).unwrap_err().kind,
            ErrorKind::TopicExists
        );
        assert_eq!(
            edit(&mut t, create("../x", 1), &d, 2).unwrap_err().kind,
            ErrorKind::InvalidTopic
        );
        assert_eq!(
            edit(&mut t, create("z", 0), &d, 2).unwrap_err().kind,
            ErrorKind::InvalidPartitions
        );
    }

    #[test]
    fn validate_only_changes_nothing_and_partitions_only_grow() {
        let mut t = TopicTable::default();
        let d = LogConfig::default();
        edit(&mut t, create("a", 2), &d, 2).unwrap();
        let before = t.clone();
        let grow = |count, validate_only| TopicOp::Partitions {
            name: "a".into(),
            count,
            validate_only,
        };
        assert_eq!(edit(&mut t, grow(5, true), &d, 2), Ok(None));
        assert_eq!(t, before);
        assert_eq!(
            edit(&mut t, grow(2, false), &d, 2).unwrap_err().kind,
            ErrorKind::InvalidPartitions
        );
        edit(&mut t, grow(5, false), &d, 2).unwrap();
        let meta = &t.topics["a"];
        assert_eq!(meta.partitions, 5);
        assert_eq!(&meta.placement[..2], &before.topics["a"].placement[..]);
        let bad = TopicOp::Configs {
            name: "a".into(),
            set: vec![("retention.ms".into(), "soon".into())],
            remove: Vec::new(),
            validate_only: false,
        };
        assert_eq!(
            edit(&mut t, bad, &d, 2).unwrap_err().kind,
            ErrorKind::InvalidConfig
        );
        assert_eq!(
            edit(&mut t, TopicOp::Delete { name: "a".into() }, &d, 2),
            Ok(Some("a".into()))
        );
        assert!(t.topics.is_empty());
    }
}
