//! Kafka's topic configs: every name Kafka (3.x and 4.x) defines for a topic, its
//! default, how a value is checked, and what it does in ringmq.
//!
//! Three kinds of effect ([`Effect`]):
//! - a ringmq log setting (`retention.ms` is `retention_ms`, ...): stored under
//!   ringmq's name and applied by the partition log;
//! - implemented by the broker itself (`cleanup.policy`, `compression.type`,
//!   `min.insync.replicas`): stored under Kafka's name and applied on produce (see
//!   [`TopicPolicy`]);
//! - accepted, stored and described, with no effect in ringmq yet (compaction tuning,
//!   tiered storage, replication throttles, ...); `docs/kafka.md` lists them and why.
//!
//! A topic's stored configs are one map: ringmq names (no dot) and Kafka names (with
//! dots) side by side; [`crate::topics::log_config`] checks both.

use std::collections::BTreeMap;

use crate::error::ErrorKind;
use ringmq_storage::batch::{self, Compression};
use ringmq_storage::codecs;

/// How a value is checked.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A 64-bit integer within bounds.
    Long(i64, i64),
    /// A 32-bit integer within bounds.
    Int(i64, i64),
    /// A number within bounds.
    Double(f64, f64),
    /// `true` or `false`.
    Bool,
    /// One of these words.
    Enum(&'static [&'static str]),
    /// A comma-separated list; of these words when given.
    List(Option<&'static [&'static str]>),
}

/// What a config does in ringmq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A partition log setting, stored under ringmq's name.
    Setting,
    /// Applied by the broker on produce or in its answers.
    Broker,
    /// Accepted, stored and described; no effect in ringmq yet (the reason).
    NoEffect(&'static str),
}

/// One Kafka topic config.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    /// Kafka's name.
    pub name: &'static str,
    /// Kafka's default, as DescribeConfigs shows it.
    pub default: &'static str,
    /// How a value is checked.
    pub kind: Kind,
    /// What it does here.
    pub effect: Effect,
}

impl Def {
    /// DescribeConfigs' `config_type` (BOOLEAN 1, STRING 2, INT 3, LONG 5, DOUBLE 6,
    /// LIST 7).
    pub fn config_type(&self) -> i8 {
        match self.kind {
            Kind::Bool => 1,
            Kind::Enum(_) => 2,
            Kind::Int(..) => 3,
            Kind::Long(..) => 5,
            Kind::Double(..) => 6,
            Kind::List(_) => 7,
        }
    }

    /// True for list-valued configs (the targets of APPEND and SUBTRACT).
    pub fn is_list(&self) -> bool {
        matches!(self.kind, Kind::List(_))
    }
}

const L: i64 = i64::MAX;
const I: i64 = i32::MAX as i64;
const COMPACTION: &str = "log compaction is not implemented: a compacted topic keeps every record (retention does not delete from it)";
const TIERED: &str = "tiered storage is not implemented: every segment is local";
const REPLICATION: &str = "replication is not implemented yet: every partition has one replica";
const FORMAT: &str = "ringmq stores RecordBatch v2 only and never converts formats";

/// Every topic config Kafka defines, in name order.
pub const DEFS: &[Def] = &[
    Def {
        name: "cleanup.policy",
        default: "delete",
        kind: Kind::List(Some(&["delete", "compact"])),
        effect: Effect::Broker,
    },
    Def {
        name: "compression.gzip.level",
        default: "-1",
        kind: Kind::Int(-1, 9),
        effect: Effect::Broker,
    },
    Def {
        name: "compression.lz4.level",
        default: "9",
        kind: Kind::Int(1, 17),
        effect: Effect::NoEffect("the lz4 encoder here has one level"),
    },
    Def {
        name: "compression.type",
        default: "producer",
        kind: Kind::Enum(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        effect: Effect::Broker,
    },
    Def {
        name: "compression.zstd.level",
        default: "3",
        kind: Kind::Int(-131072, 22),
        effect: Effect::Broker,
    },
    Def {
        name: "delete.retention.ms",
        default: "86400000",
        kind: Kind::Long(0, L),
        effect: Effect::NoEffect(COMPACTION),
    },
    Def {
        name: "file.delete.delay.ms",
        default: "60000",
        kind: Kind::Long(0, L),
        effect: Effect::NoEffect(
            "segments are deleted at once; reads in progress keep their open file",
        ),
    },
    Def {
        name: "flush.messages",
        default: "9223372036854775807",
        kind: Kind::Long(1, L),
        effect: Effect::Setting,
    },
    Def {
        name: "flush.ms",
        default: "9223372036854775807",
        kind: Kind::Long(0, L),
        effect: Effect::Setting,
    },
    Def {
        name: "follower.replication.throttled.replicas",
        default: "",
        kind: Kind::List(None),
        effect: Effect::NoEffect(REPLICATION),
    },
    Def {
        name: "index.interval.bytes",
        default: "4096",
        kind: Kind::Int(0, I),
        effect: Effect::Setting,
    },
    Def {
        name: "leader.replication.throttled.replicas",
        default: "",
        kind: Kind::List(None),
        effect: Effect::NoEffect(REPLICATION),
    },
    Def {
        name: "local.retention.bytes",
        default: "-2",
        kind: Kind::Long(-2, L),
        effect: Effect::NoEffect(TIERED),
    },
    Def {
        name: "local.retention.ms",
        default: "-2",
        kind: Kind::Long(-2, L),
        effect: Effect::NoEffect(TIERED),
    },
    Def {
        name: "max.compaction.lag.ms",
        default: "9223372036854775807",
        kind: Kind::Long(1, L),
        effect: Effect::NoEffect(COMPACTION),
    },
    Def {
        name: "max.message.bytes",
        default: "1048588",
        kind: Kind::Int(0, I),
        effect: Effect::Setting,
    },
    Def {
        name: "message.downconversion.enable",
        default: "true",
        kind: Kind::Bool,
        effect: Effect::NoEffect(FORMAT),
    },
    Def {
        name: "message.format.version",
        default: "3.0-IV1",
        kind: Kind::List(None),
        effect: Effect::NoEffect(FORMAT),
    },
    Def {
        name: "message.timestamp.after.max.ms",
        default: "9223372036854775807",
        kind: Kind::Long(0, L),
        effect: Effect::Broker,
    },
    Def {
        name: "message.timestamp.before.max.ms",
        default: "9223372036854775807",
        kind: Kind::Long(0, L),
        effect: Effect::Broker,
    },
    Def {
        name: "message.timestamp.difference.max.ms",
        default: "9223372036854775807",
        kind: Kind::Long(0, L),
        effect: Effect::Broker,
    },
    Def {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: Kind::Enum(&["CreateTime", "LogAppendTime"]),
        effect: Effect::Setting,
    },
    Def {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        kind: Kind::Double(0.0, 1.0),
        effect: Effect::NoEffect(COMPACTION),
    },
    Def {
        name: "min.compaction.lag.ms",
        default: "0",
        kind: Kind::Long(0, L),
        effect: Effect::NoEffect(COMPACTION),
    },
    Def {
        name: "min.insync.replicas",
        default: "1",
        kind: Kind::Int(1, I),
        effect: Effect::Broker,
    },
    Def {
        name: "preallocate",
        default: "false",
        kind: Kind::Bool,
        effect: Effect::NoEffect("ringmq always preallocates segment space ahead of the writes"),
    },
    Def {
        name: "remote.log.copy.disable",
        default: "false",
        kind: Kind::Bool,
        effect: Effect::NoEffect(TIERED),
    },
    Def {
        name: "remote.log.delete.on.disable",
        default: "false",
        kind: Kind::Bool,
        effect: Effect::NoEffect(TIERED),
    },
    Def {
        name: "remote.storage.enable",
        default: "false",
        kind: Kind::Enum(&["false"]),
        effect: Effect::NoEffect(TIERED),
    },
    Def {
        name: "retention.bytes",
        default: "-1",
        kind: Kind::Long(-1, L),
        effect: Effect::Setting,
    },
    Def {
        name: "retention.ms",
        default: "604800000",
        kind: Kind::Long(-1, L),
        effect: Effect::Setting,
    },
    Def {
        name: "segment.bytes",
        default: "1073741824",
        kind: Kind::Int(14, I),
        effect: Effect::Setting,
    },
    Def {
        name: "segment.index.bytes",
        default: "10485760",
        kind: Kind::Int(4, I),
        effect: Effect::NoEffect("indexes grow as needed; they have no preallocated size"),
    },
    Def {
        name: "segment.jitter.ms",
        default: "0",
        kind: Kind::Long(0, L),
        effect: Effect::NoEffect("segments roll at segment.ms exactly"),
    },
    Def {
        name: "segment.ms",
        default: "604800000",
        kind: Kind::Long(1, L),
        effect: Effect::Setting,
    },
    Def {
        name: "unclean.leader.election.enable",
        default: "false",
        kind: Kind::Bool,
        effect: Effect::NoEffect(REPLICATION),
    },
];

/// Kafka names of ringmq log settings, and ringmq's (the `Effect::Setting` configs but
/// `flush.*`, which map onto the flush policy).
pub const SETTING_NAMES: &[(&str, &str)] = &[
    ("retention.ms", "retention_ms"),
    ("retention.bytes", "retention_bytes"),
    ("segment.bytes", "segment_bytes"),
    ("segment.ms", "segment_ms"),
    ("max.message.bytes", "message_bytes_max"),
    ("message.timestamp.type", "timestamp_type"),
    ("index.interval.bytes", "index_interval_bytes"),
    ("ringmq.flush", "flush"),
];

/// The definition of `name`, if Kafka defines it.
pub fn def(name: &str) -> Option<&'static Def> {
    DEFS.iter().find(|d| d.name == name)
}

/// Checks `value` for config `name`: the value as stored (lists without blanks), or
/// why it is refused.
pub fn check(name: &str, value: &str) -> Result<String, String> {
    let Some(d) = def(name) else {
        return Err(format!("unknown topic config {name}"));
    };
    let v = value.trim();
    let num = |lo: i64, hi: i64| match v.parse::<i64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n.to_string()),
        Ok(n) => Err(format!("{name}={n}: must be {lo} to {hi}")),
        Err(_) => Err(format!("{name}={v:?}: not an integer")),
    };
    match d.kind {
        Kind::Long(lo, hi) | Kind::Int(lo, hi) => num(lo, hi),
        Kind::Double(lo, hi) => match v.parse::<f64>() {
            Ok(x) if (lo..=hi).contains(&x) => Ok(v.to_string()),
            _ => Err(format!("{name}={v:?}: must be a number from {lo} to {hi}")),
        },
        Kind::Bool => match v.to_ascii_lowercase().as_str() {
            b @ ("true" | "false") => Ok(b.to_string()),
            _ => Err(format!("{name}={v:?}: must be true or false")),
        },
        Kind::Enum(words) => match words.iter().find(|w| w.eq_ignore_ascii_case(v)) {
            Some(w) => Ok(w.to_string()),
            None if name == "remote.storage.enable" => Err(format!("{name}={v}: {TIERED}")),
            None => Err(format!("{name}={v:?}: must be one of {}", words.join(", "))),
        },
        Kind::List(words) => {
            let items = split_list(v);
            if let Some(words) = words {
                if let Some(bad) = items.iter().find(|i| !words.contains(&i.as_str())) {
                    return Err(format!(
                        "{name}: {bad:?} is not one of {}",
                        words.join(", ")
                    ));
                }
                if items.is_empty() {
                    return Err(format!("{name} cannot be empty"));
                }
            }
            Ok(items.join(","))
        }
    }
}

/// The items of a list value.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A list config after Kafka's APPEND (items added that are not there yet) or
/// SUBTRACT (items removed).
pub fn append_or_subtract(current: &str, value: &str, append: bool) -> String {
    let mut items = split_list(current);
    for item in split_list(value) {
        let at = items.iter().position(|i| *i == item);
        match (append, at) {
            (true, None) => items.push(item),
            (false, Some(i)) => {
                items.remove(i);
            }
            _ => {}
        }
    }
    items.join(",")
}

/// What the broker does on produce to a topic, from its configs. Built when the topic
/// table changes, looked up per produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPolicy {
    /// Rewrite batches with this codec (`compression.type` other than `producer`).
    pub compression: Option<Compression>,
    /// `compression.gzip.level` (-1: the codec's default).
    pub gzip_level: i32,
    /// `compression.zstd.level`.
    pub zstd_level: i32,
    /// Every record needs a key (`cleanup.policy` has `compact`).
    pub keys_required: bool,
    /// Records older than now minus this are refused (`message.timestamp.before.max.ms`,
    /// or `message.timestamp.difference.max.ms`).
    pub timestamp_before_max_ms: Option<i64>,
    /// Records newer than now plus this are refused.
    pub timestamp_after_max_ms: Option<i64>,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// The topic stamps the append time (timestamps are not checked then).
    pub log_append_time: bool,
}

impl TopicPolicy {
    /// The policy of a topic with these stored configs.
    pub fn of(configs: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| {
            configs
                .get(k)
                .map(String::as_str)
                .unwrap_or_else(|| def(k).map_or("", |d| d.default))
        };
        let ms = |k: &str| get(k).parse::<i64>().ok().filter(|&v| v != i64::MAX);
        let compression = match get("compression.type") {
            "uncompressed" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "snappy" => Some(Compression::Snappy),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        };
        let difference = ms("message.timestamp.difference.max.ms");
        Self {
            compression,
            gzip_level: get("compression.gzip.level").parse().unwrap_or(-1),
            zstd_level: get("compression.zstd.level").parse().unwrap_or(3),
            keys_required: split_list(get("cleanup.policy"))
                .iter()
                .any(|p| p == "compact"),
            timestamp_before_max_ms: ms("message.timestamp.before.max.ms").or(difference),
            timestamp_after_max_ms: ms("message.timestamp.after.max.ms").or(difference),
            min_insync_replicas: get("min.insync.replicas").parse().unwrap_or(1),
            log_append_time: false,
        }
    }

    /// True when produce must look into the records of a batch.
    pub fn inspects_records(&self) -> bool {
        self.compression.is_some() || self.keys_required || self.checks_timestamps()
    }

    fn checks_timestamps(&self) -> bool {
        !self.log_append_time
            && (self.timestamp_before_max_ms.is_some() || self.timestamp_after_max_ms.is_some())
    }

    /// Applies the policy to a producer's batch before it is appended: records that
    /// break the topic's rules refuse the whole batch, saying which (Kafka's record
    /// errors, KIP-467), and a batch in another codec than `compression.type` is
    /// rewritten in it (`Ok(Some(batch))`). `Ok(None)`: append the batch as it is.
    /// A batch that does not parse is left to the log's own validation.
    pub fn apply(&self, batch: &[u8], now_ms: i64) -> Result<Option<Vec<u8>>, Refused> {
        if !self.inspects_records() {
            return Ok(None);
        }
        // Only a batch whose CRC holds is looked into: a rewritten batch gets a new
        // CRC, which must never cover damage the producer's did not.
        let Ok(info) = batch::validate(batch, usize::MAX) else {
            return Ok(None);
        };
        if batch.len() < batch::HEADER_BYTES || info.is_control {
            return Ok(None);
        }
        let needs_records = self.keys_required || self.checks_timestamps();
        let wrong_codec = self.compression.is_some_and(|c| c != info.compression);
        if !needs_records && !wrong_codec {
            return Ok(None);
        }
        let corrupt = |why: String| Refused {
            kind: ErrorKind::CorruptBatch,
            message: why,
            record_errors: Vec::new(),
        };
        let section = &batch[batch::HEADER_BYTES..];
        let plain = codecs::decompress_max(section, info.compression, DECOMPRESSED_BYTES_MAX)
            .map_err(corrupt)?;
        if needs_records {
            let plain_batch = batch::with_records_section(batch, Compression::None, &plain);
            let records = batch::records(&plain_batch)
                .map_err(|e| corrupt(format!("records do not decode: {e}")))?;
            let mut errors = Vec::new();
            let mut kind = ErrorKind::InvalidRecord;
            let mut message = String::new();
            for (i, r) in records.iter().enumerate() {
                if self.keys_required && r.key.is_none() {
                    errors.push((
                        i as i32,
                        "compacted topic cannot accept a record without a key".to_string(),
                    ));
                    message = "a compacted topic (cleanup.policy=compact) cannot accept records without keys".into();
                    continue;
                }
                if self.checks_timestamps() {
                    let ts = info.base_timestamp + r.timestamp_delta;
                    let low = self
                        .timestamp_before_max_ms
                        .map(|ms| now_ms.saturating_sub(ms));
                    let high = self
                        .timestamp_after_max_ms
                        .map(|ms| now_ms.saturating_add(ms));
                    if low.is_some_and(|l| ts < l) || high.is_some_and(|h| ts > h) {
                        errors.push((
                            i as i32,
                            format!(
                                "timestamp {ts} is out of range: it must be within [{}, {}]",
                                low.unwrap_or(i64::MIN),
                                high.unwrap_or(i64::MAX)
                            ),
                        ));
                        if message.is_empty() {
                            kind = ErrorKind::InvalidTimestamp;
                            message = "timestamps out of the range message.timestamp.before.max.ms and message.timestamp.after.max.ms allow".into();
                        }
                    }
                }
            }
            if !errors.is_empty() {
                return Err(Refused {
                    kind,
                    message,
                    record_errors: errors,
                });
            }
        }
        let Some(target) = self.compression.filter(|_| wrong_codec) else {
            return Ok(None);
        };
        let level = match target {
            Compression::Gzip => self.gzip_level,
            Compression::Zstd => self.zstd_level,
            _ => 0,
        };
        let packed = codecs::compress_level(&plain, target, level).map_err(corrupt)?;
        Ok(Some(batch::with_records_section(batch, target, &packed)))
    }
}

/// The most a batch's records may expand to when the broker looks into them.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

/// Why a batch was refused by its topic's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The error.
    pub kind: ErrorKind,
    /// What it was.
    pub message: String,
    /// Each refused record's index in the batch, and why.
    pub record_errors: Vec<(i32, String)>,
}

impl Default for TopicPolicy {
    fn default() -> Self {
        Self::of(&BTreeMap::new())
    }
}

/// True when the stored configs keep records from retention (`cleanup.policy` without
/// `delete`: Kafka deletes nothing by time or size from a compact-only topic).
pub fn retention_off(configs: &BTreeMap<String, String>) -> bool {
    configs
        .get("cleanup.policy")
        .is_some_and(|p| !split_list(p).iter().any(|i| i == "delete"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_def_has_a_valid_default_and_names_are_sorted_and_unique() {
        for w in DEFS.windows(2) {
            assert!(w[0].name < w[1].name, "{} then {}", w[0].name, w[1].name);
        }
        for d in DEFS {
            if d.default.is_empty() {
                continue;
            }
            assert!(check(d.name, d.default).is_ok(), "{}={}", d.name, d.default);
        }
        for (kafka, _) in SETTING_NAMES {
            if *kafka != "ringmq.flush" {
                assert_eq!(def(kafka).unwrap().effect, Effect::Setting, "{kafka}");
            }
        }
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(
            check("cleanup.policy", "compact, delete").unwrap(),
            "compact,delete"
        );
        assert!(check("cleanup.policy", "shred").is_err());
        assert!(check("cleanup.policy", "").is_err());
        assert_eq!(check("compression.type", "GZIP").unwrap(), "gzip");
        assert!(check("compression.type", "brotli").is_err());
        assert!(check("min.insync.replicas", "0").is_err());
        assert!(check("min.cleanable.dirty.ratio", "1.5").is_err());
        assert_eq!(check("preallocate", "TRUE").unwrap(), "true");
        assert!(
            check("remote.storage.enable", "true")
                .unwrap_err()
                .contains("tiered")
        );
        assert!(check("no.such.config", "1").is_err());
    }

    #[test]
    fn lists_append_and_subtract() {
        assert_eq!(
            append_or_subtract("delete", "compact", true),
            "delete,compact"
        );
        assert_eq!(
            append_or_subtract("delete,compact", "compact", true),
            "delete,compact"
        );
        assert_eq!(
            append_or_subtract("delete,compact", "delete", false),
            "compact"
        );
        assert_eq!(append_or_subtract("compact", "delete", false), "compact");
    }

    fn batch_of(keys: &[Option<&str>], timestamps: &[i64]) -> Vec<u8> {
        let recs: Vec<batch::Record> = keys
            .iter()
            .zip(timestamps)
            .map(|(k, ts)| batch::Record {
                key: k.map(|k| k.as_bytes().to_vec()),
                value: Some(vec![b'v'; 300]),
                headers: vec![("h".into(), b"x".to_vec())],
                timestamp_ms: *ts,
            })
            .collect();
        batch::encode_batch(&recs)
    }

    #[test]
    fn compacted_topics_refuse_records_without_keys_and_say_which() {
        let mut c = BTreeMap::new();
        c.insert("cleanup.policy".to_string(), "compact".to_string());
        let p = TopicPolicy::of(&c);
        let ok = batch_of(&[Some("a"), Some("b")], &[1, 2]);
        assert_eq!(p.apply(&ok, 0), Ok(None));
        let bad = batch_of(&[Some("a"), None, Some("c"), None], &[1, 2, 3, 4]);
        let e = p.apply(&bad, 0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRecord);
        assert_eq!(
            e.record_errors.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 3]
        );
        // Also inside a compressed batch.
        let packed = codecs::compress(&bad[batch::HEADER_BYTES..], Compression::Lz4).unwrap();
        let bad_lz4 = batch::with_records_section(&bad, Compression::Lz4, &packed);
        assert_eq!(p.apply(&bad_lz4, 0).unwrap_err().record_errors.len(), 2);
    }

    #[test]
    fn timestamps_out_of_range_are_refused() {
        let mut c = BTreeMap::new();
        c.insert(
            "message.timestamp.before.max.ms".to_string(),
            "1000".to_string(),
        );
        c.insert(
            "message.timestamp.after.max.ms".to_string(),
            "500".to_string(),
        );
        let p = TopicPolicy::of(&c);
        let now = 1_000_000;
        assert_eq!(
            p.apply(&batch_of(&[None, None], &[now - 1000, now + 500]), now),
            Ok(None)
        );
        let e = p
            .apply(
                &batch_of(&[None, None, None], &[now, now - 1001, now + 501]),
                now,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidTimestamp);
        assert_eq!(
            e.record_errors.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let append_time = TopicPolicy {
            log_append_time: true,
            ..p
        };
        assert_eq!(append_time.apply(&batch_of(&[None], &[0]), now), Ok(None));
    }

    #[test]
    fn batches_are_rewritten_in_the_topics_codec() {
        let mut c = BTreeMap::new();
        c.insert("compression.type".to_string(), "gzip".to_string());
        let p = TopicPolicy::of(&c);
        let plain = batch_of(&[Some("a"), None], &[7, 8]);
        let out = p.apply(&plain, 0).unwrap().expect("rewritten");
        let info = batch::validate(&out, usize::MAX).unwrap();
        assert_eq!(info.compression, Compression::Gzip);
        assert_eq!(info.record_count, 2);
        let back = codecs::decompress(&out[batch::HEADER_BYTES..], Compression::Gzip).unwrap();
        assert_eq!(back, plain[batch::HEADER_BYTES..].to_vec());
        // Already gzip: left as it is. To uncompressed: rewritten plain.
        assert_eq!(p.apply(&out, 0), Ok(None));
        c.insert("compression.type".to_string(), "uncompressed".to_string());
        let plain_again = TopicPolicy::of(&c).apply(&out, 0).unwrap().unwrap();
        assert_eq!(plain_again, plain);
        // The producer's choice is kept by default.
        assert_eq!(TopicPolicy::default().apply(&out, 0), Ok(None));
    }

    proptest::proptest! {
        /// Whatever a client sends, looking into it refuses it or lets it through;
        /// it never panics (the broker never crashes on what a client sends).
        #[test]
        fn damaged_batches_are_refused_not_panicked_on(
            codec in 0usize..5,
            flips in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 0..12),
            cut in 0usize..4096,
        ) {
            let codecs_all = [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];
            let plain = batch_of(&[Some("a"), None, Some("c")], &[1, 2, 3]);
            let packed = codecs::compress(&plain[batch::HEADER_BYTES..], codecs_all[codec]).unwrap();
            let mut b = batch::with_records_section(&plain, codecs_all[codec], &packed);
            for (at, byte) in flips {
                let at = batch::HEADER_BYTES.min(b.len() - 1) + at % (b.len() - batch::HEADER_BYTES.min(b.len() - 1));
                b[at] ^= byte;
            }
            b.truncate(b.len().min(cut.max(1)));
            if b.len() >= batch::HEADER_BYTES {
                batch::fix_crc(&mut b);
            }
            let mut c = BTreeMap::new();
            c.insert("cleanup.policy".to_string(), "compact".to_string());
            c.insert("compression.type".to_string(), "zstd".to_string());
            c.insert("message.timestamp.before.max.ms".to_string(), "1000".to_string());
            let _ = TopicPolicy::of(&c).apply(&b, 5);
        }
    }

    #[test]
    fn policies_follow_the_configs() {
        let mut c = BTreeMap::new();
        assert_eq!(TopicPolicy::of(&c), TopicPolicy::default());
        assert!(!TopicPolicy::of(&c).inspects_records());
        c.insert("cleanup.policy".to_string(), "compact".to_string());
        c.insert("compression.type".to_string(), "zstd".to_string());
        let p = TopicPolicy::of(&c);
        assert!(p.keys_required);
        assert_eq!(p.compression, Some(Compression::Zstd));
        assert!(retention_off(&c));
        c.insert("cleanup.policy".to_string(), "compact,delete".to_string());
        assert!(!retention_off(&c));
    }
}
