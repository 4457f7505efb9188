//! Per-partition log settings, with Kafka's defaults where Kafka has one.

use crate::batch::TimestampType;
use crate::error::{Error, Result};
use crate::io::IoMode;

/// When appended data is made durable with fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// An append is acknowledged only after the fdatasync that covers it; appends that
    /// arrive while a flush runs share the next one (group commit). The default.
    #[default]
    EveryBatch,
    /// Sync when this many milliseconds passed since the last sync (checked at each
    /// write and by [`crate::PartitionLog::sync_if_due`]).
    IntervalMs(u64),
    /// Sync once this many bytes were written since the last sync.
    Bytes(u64),
    /// Never sync, except at segment roll and clean shutdown.
    Never,
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;
    /// `every_batch`, `never`, `interval_ms:N`, `bytes:N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("bad flush policy {s:?}: expected every_batch, interval_ms:N, bytes:N or never")
        };
        match s {
            "every_batch" => Ok(FlushPolicy::EveryBatch),
            "never" => Ok(FlushPolicy::Never),
            _ => {
                let (k, v) = s.split_once(':').ok_or_else(bad)?;
                let n: u64 = v.parse().map_err(|_| bad())?;
                match k {
                    "interval_ms" => Ok(FlushPolicy::IntervalMs(n)),
                    "bytes" => Ok(FlushPolicy::Bytes(n)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushPolicy::EveryBatch => write!(f, "every_batch"),
            FlushPolicy::IntervalMs(n) => write!(f, "interval_ms:{n}"),
            FlushPolicy::Bytes(n) => write!(f, "bytes:{n}"),
            FlushPolicy::Never => write!(f, "never"),
        }
    }
}

/// Settings of one partition's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment past this size. Default 1 GiB; at most 2 GiB - 1 so
    /// positions fit the 32-bit index.
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old. Default 7 days.
    pub segment_ms: u64,
    /// One offset-index entry per this many bytes of log. Default 4 KiB.
    pub index_interval_bytes: u32,
    /// Largest batch accepted. Default 1 MiB + 12 bytes, like Kafka's `message.max.bytes`.
    pub message_bytes_max: usize,
    /// When to fdatasync.
    pub flush: FlushPolicy,
    /// Delete closed segments while the log stays above this size. `None`: no limit.
    pub retention_bytes: Option<u64>,
    /// Delete closed segments whose newest record is older than this. Default 7 days.
    pub retention_ms: Option<u64>,
    /// Producer's timestamps or the broker's.
    pub timestamp_type: TimestampType,
    /// Recent batches kept in memory to serve hot reads. Default 1 MiB.
    pub tail_cache_bytes_max: usize,
    /// Appended bytes waiting for the flush driver; appends wait beyond this.
    /// Default 32 MiB.
    pub write_buffer_bytes_max: usize,
    /// Direct or buffered writes.
    pub io_mode: IoMode,
    /// The active segment's file is extended (fallocate) in steps of this size.
    /// Default 32 MiB.
    pub preallocate_step_bytes: u64,
}

/// Largest segment: positions are 32-bit in the index.
pub const SEGMENT_BYTES_LIMIT: u64 = i32::MAX as u64;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            message_bytes_max: (1 << 20) + 12,
            flush: FlushPolicy::EveryBatch,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            timestamp_type: TimestampType::CreateTime,
            tail_cache_bytes_max: 1 << 20,
            write_buffer_bytes_max: 8 << 20,
            io_mode: IoMode::Direct,
            preallocate_step_bytes: 32 << 20,
        }
    }
}

impl LogConfig {
    /// Checks the relations between settings.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::InvalidConfig(m));
        if self.segment_bytes < 1024 || self.segment_bytes > SEGMENT_BYTES_LIMIT {
            return fail(format!(
                "segment_bytes {} must be between 1024 and {SEGMENT_BYTES_LIMIT}",
                self.segment_bytes
            ));
        }
        if self.message_bytes_max < crate::batch::HEADER_BYTES {
            return fail(format!(
                "message_bytes_max {} is smaller than a batch header",
                self.message_bytes_max
            ));
        }
        if self.message_bytes_max as u64 > SEGMENT_BYTES_LIMIT {
            return fail(format!(
                "message_bytes_max {} is too large",
                self.message_bytes_max
            ));
        }
        if self.write_buffer_bytes_max < self.message_bytes_max {
            return fail(format!(
                "write_buffer_bytes_max {} must hold at least one batch of message_bytes_max {}",
                self.write_buffer_bytes_max, self.message_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        if self.segment_ms == 0 {
            return fail("segment_ms must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses_and_prints() {
        for s in ["every_batch", "never", "interval_ms:100", "bytes:4096"] {
            let p: FlushPolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert!("sometimes".parse::<FlushPolicy>().is_err());
        assert!("bytes:x".parse::<FlushPolicy>().is_err());
    }

    #[test]
    fn config_relations_are_checked() {
        assert!(LogConfig::default().validate().is_ok());
        let c = LogConfig {
            write_buffer_bytes_max: 10,
            ..LogConfig::default()
        };
        assert!(c.validate().is_err());
        let c = LogConfig {
            segment_bytes: 1 << 40,
            ..LogConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
