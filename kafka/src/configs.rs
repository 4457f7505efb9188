//! Topic configs as Kafka names them: what a client sets (CreateTopics, AlterConfigs)
//! as the topic stores it, and a topic's effective configs as DescribeConfigs shows them.

use std::collections::BTreeMap;

use kafka_protocol::messages::{self as km};
use ringmq_shard::{topic_configs, topics};

/// One config change from a Kafka client, in the names stored for the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigChange {
    /// Set a stored config.
    Set(String, String),
    /// Back to the broker's default.
    Reset(String),
}

/// A Kafka topic config as the topic stores it (`topic_configs`): a ringmq log setting
/// under ringmq's name, anything else Kafka defines under Kafka's name. Kafka's
/// `flush.ms` and `flush.messages` map onto the flush policy (their default, the
/// largest long, means the broker's policy). An unknown name or a bad value is refused
/// with the reason.
pub(crate) fn config_from_kafka(name: &str, value: Option<&str>) -> Result<ConfigChange, String> {
    let Some(v) = value else {
        return Err(format!("config {name} has no value"));
    };
    let never = i64::MAX.to_string();
    match name {
        "flush.messages" => {
            let v = topic_configs::check(name, v)?;
            return match v.as_str() {
                "1" => Ok(ConfigChange::Set("flush".into(), "every_batch".into())),
                n if n == never => Ok(ConfigChange::Reset("flush".into())),
                n => Err(format!(
                    "flush.messages={n}: ringmq syncs every batch (1), by time (flush.ms) or by bytes (ringmq.flush=bytes:N)"
                )),
            };
        }
        "flush.ms" => {
            let v = topic_configs::check(name, v)?;
            return Ok(if v == never {
                ConfigChange::Reset("flush".into())
            } else {
                ConfigChange::Set("flush".into(), format!("interval_ms:{v}"))
            });
        }
        _ => {}
    }
    if let Some((_, ours)) = topic_configs::SETTING_NAMES
        .iter()
        .find(|(k, _)| *k == name)
    {
        let v = if topic_configs::def(name).is_some() {
            topic_configs::check(name, v)?
        } else {
            v.to_string()
        };
        return Ok(ConfigChange::Set(ours.to_string(), v));
    }
    if topic_configs::def(name).is_some() {
        return Ok(ConfigChange::Set(
            name.to_string(),
            topic_configs::check(name, v)?,
        ));
    }
    Err(format!(
        "unknown topic config {name}: ringmq takes every topic config Kafka defines (docs/kafka.md), and ringmq.flush"
    ))
}

/// Topic configs given by a Kafka client (CreateTopics, AlterConfigs), as stored.
pub(crate) fn configs_from_kafka<'a>(
    items: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in items {
        if let ConfigChange::Set(k, v) = config_from_kafka(k, v)? {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// One described config.
pub(crate) struct Described {
    pub(crate) name: String,
    pub(crate) value: String,
    /// Set on the topic (else the default).
    pub(crate) set: bool,
    pub(crate) config_type: i8,
}

/// A topic's effective configs in Kafka's names: every config Kafka defines, and
/// `ringmq.flush`.
/// `min_insync` is the broker's `min.insync.replicas` for topics that do not set it.
pub(crate) fn effective_configs(
    explicit: &BTreeMap<String, String>,
    defaults: &ringmq_storage::LogConfig,
    min_insync: i32,
) -> Vec<Described> {
    // Shown as configured, also where a compact-only policy turns retention off.
    let mut settings = explicit.clone();
    settings.remove("cleanup.policy");
    let c = topics::log_config(&settings, defaults).unwrap_or_else(|_| defaults.clone());
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-1".into());
    let never = i64::MAX.to_string();
    let mut out: Vec<Described> = topic_configs::DEFS
        .iter()
        .map(|d| {
            let ours = topic_configs::SETTING_NAMES
                .iter()
                .find(|(k, _)| *k == d.name)
                .map(|p| p.1);
            let (value, set) = match d.name {
                "retention.ms" => (opt(c.retention_ms), None),
                "retention.bytes" => (opt(c.retention_bytes), None),
                "segment.bytes" => (c.segment_bytes.to_string(), None),
                "segment.ms" => (c.segment_ms.to_string(), None),
                "max.message.bytes" => (c.message_bytes_max.to_string(), None),
                "index.interval.bytes" => (c.index_interval_bytes.to_string(), None),
                "message.timestamp.type" => (
                    match c.timestamp_type {
                        ringmq_storage::batch::TimestampType::CreateTime => "CreateTime".into(),
                        ringmq_storage::batch::TimestampType::LogAppendTime => {
                            "LogAppendTime".into()
                        }
                    },
                    None,
                ),
                "flush.messages" => (
                    if c.flush == ringmq_storage::FlushPolicy::EveryBatch {
                        "1".into()
                    } else {
                        never.clone()
                    },
                    Some(explicit.contains_key("flush")),
                ),
                "flush.ms" => (
                    match c.flush {
                        ringmq_storage::FlushPolicy::IntervalMs(ms) => ms.to_string(),
                        _ => never.clone(),
                    },
                    Some(explicit.contains_key("flush")),
                ),
                "min.insync.replicas" => (
                    explicit
                        .get(d.name)
                        .cloned()
                        .unwrap_or_else(|| min_insync.to_string()),
                    Some(explicit.contains_key(d.name)),
                ),
                name => (
                    explicit
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| d.default.to_string()),
                    Some(explicit.contains_key(name)),
                ),
            };
            let set = set.unwrap_or_else(|| ours.is_some_and(|o| explicit.contains_key(o)));
            Described {
                name: d.name.to_string(),
                value,
                set,
                config_type: d.config_type(),
            }
        })
        .collect();
    out.push(Described {
        name: "ringmq.flush".into(),
        value: c.flush.to_string(),
        set: explicit.contains_key("flush"),
        config_type: 2,
    });
    out
}

/// Kafka's broker-level names of the topic defaults this broker gives new topics.
pub(crate) const BROKER_CONFIG_NAMES: &[(&str, &str)] = &[
    ("retention.ms", "log.retention.ms"),
    ("retention.bytes", "log.retention.bytes"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.ms", "log.roll.ms"),
    ("max.message.bytes", "message.max.bytes"),
    ("message.timestamp.type", "log.message.timestamp.type"),
    ("flush.ms", "log.flush.interval.ms"),
    ("flush.messages", "log.flush.interval.messages"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("cleanup.policy", "log.cleanup.policy"),
    ("compression.type", "compression.type"),
    ("min.insync.replicas", "min.insync.replicas"),
];

/// Configs to set and configs to remove, as stored.
pub(crate) type StoredChanges = (Vec<(String, String)>, Vec<String>);

/// IncrementalAlterConfigs' operations on one topic as stored changes: SET (0),
/// DELETE (1, back to the default), and for list configs APPEND (2) and SUBTRACT (3),
/// applied to the topic's effective value. Returns (set, remove).
pub(crate) fn incremental_changes(
    stored: &BTreeMap<String, String>,
    defaults: &ringmq_storage::LogConfig,
    ops: &[km::incremental_alter_configs_request::AlterableConfig],
) -> Result<StoredChanges, String> {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    let effective = effective_configs(stored, defaults, 1);
    for c in ops {
        let name = c.name.as_str();
        let value = c.value.as_ref().map(|v| v.as_str());
        let change = match c.config_operation {
            0 => config_from_kafka(name, value)?,
            1 => match config_from_kafka(
                name,
                Some(topic_configs::def(name).map_or("", |d| d.default)),
            ) {
                Ok(ConfigChange::Set(k, _) | ConfigChange::Reset(k)) => ConfigChange::Reset(k),
                Err(_) if name == "ringmq.flush" => ConfigChange::Reset("flush".into()),
                Err(e) => return Err(e),
            },
            op @ (2 | 3) => {
                let def = topic_configs::def(name)
                    .ok_or_else(|| format!("unknown topic config {name}"))?;
                if !def.is_list() {
                    return Err(format!(
                        "{} is not allowed on {name}: it is not a list config",
                        if op == 2 { "APPEND" } else { "SUBTRACT" }
                    ));
                }
                let current = effective
                    .iter()
                    .find(|d| d.name == name)
                    .map(|d| d.value.clone())
                    .unwrap_or_default();
                let next =
                    topic_configs::append_or_subtract(&current, value.unwrap_or(""), op == 2);
                config_from_kafka(name, Some(&next))?
            }
            op => return Err(format!("config operation {op} on {name}: expected 0 to 3")),
        };
        match change {
            ConfigChange::Set(k, v) => set.push((k, v)),
            ConfigChange::Reset(k) => remove.push(k),
        }
    }
    Ok((set, remove))
}
