//! Typed errors of the storage layer.

use std::io;
use std::path::PathBuf;

/// Why a producer's batch was refused. The log is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a batch header.
    #[error("batch too short: {size_bytes} bytes, a RecordBatch v2 header alone is 61")]
    TooShort {
        /// Bytes received.
        size_bytes: usize,
    },
    /// The length field disagrees with the bytes received.
    #[error("batch length field says {declared} bytes but {actual} were received")]
    BadLength {
        /// Size the length field declares (header included).
        declared: i64,
        /// Bytes received.
        actual: usize,
    },
    /// Not RecordBatch v2.
    #[error("unsupported batch magic {magic}: only RecordBatch v2 (magic 2) is accepted")]
    BadMagic {
        /// The magic byte found.
        magic: u8,
    },
    /// The CRC32C does not match the bytes.
    #[error("batch CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC stored in the batch.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// Record count zero or negative.
    #[error("batch holds {record_count} records; at least one is required")]
    NoRecords {
        /// Record count found.
        record_count: i32,
    },
    /// `last_offset_delta` is not `record_count - 1`.
    #[error("last offset delta {last_offset_delta} does not match {record_count} records")]
    OffsetDeltaMismatch {
        /// Last offset delta found.
        last_offset_delta: i32,
        /// Record count found.
        record_count: i32,
    },
    /// A record's offset delta is not its index in the batch.
    #[error("record {index} has offset delta {offset_delta}; expected {index}")]
    BadOffsetDelta {
        /// Index of the record.
        index: i32,
        /// Offset delta found.
        offset_delta: i32,
    },
    /// A record could not be decoded.
    #[error("record {index} is malformed: bad {what}")]
    BadRecord {
        /// Index of the record.
        index: i32,
        /// Which field.
        what: &'static str,
    },
    /// Bytes left after the last record.
    #[error("{bytes} bytes after the last record")]
    TrailingBytes {
        /// How many.
        bytes: usize,
    },
    /// Bigger than the partition's `message_bytes_max`.
    #[error("batch of {size_bytes} bytes exceeds message_bytes_max {max_bytes}")]
    TooLarge {
        /// Batch size.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Compression codec id not defined by Kafka.
    #[error("unknown compression codec {codec}")]
    UnknownCompression {
        /// Codec id found.
        codec: u8,
    },
    /// Records were asked for on a compressed batch.
    #[error("batch is compressed; records are not decoded by the broker")]
    Compressed,
}

/// The kinds of storage error, for callers that map them to protocol error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A producer's batch was refused ([`BatchError`]).
    InvalidBatch,
    /// An offset below the log start or beyond the log end.
    OffsetOutOfRange,
    /// An I/O error; the log is intact up to its durable offset.
    Io,
    /// The log failed (a sync failed) and refuses writes until it is reopened.
    Failed,
    /// The log is closed.
    Closed,
    /// Configuration refused.
    InvalidConfig,
    /// On-disk data that recovery could not make sense of.
    Corrupt,
    /// A replica's batch does not continue the log (a gap, an overlap, an older epoch).
    Diverged,
}

/// A storage error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`BatchError`].
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// Offset outside `[log_start, log_end]`.
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// Log start offset.
        start: i64,
        /// Log end offset.
        end: i64,
    },
    /// I/O failure with what was being done.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The log is failed after a sync error.
    #[error("log {} is failed after an I/O error ({reason}); reopen it to recover", path.display())]
    Failed {
        /// The partition directory.
        path: PathBuf,
        /// The original error.
        reason: String,
    },
    /// The log is closed.
    #[error("log is closed")]
    Closed,
    /// Configuration refused.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// A leader's batch that does not continue this replica's log: its base offset is
    /// not the log end, or its leader epoch is older than the log's latest.
    #[error(
        "replica batch at offset {base_offset} epoch {epoch} does not continue the log (end {log_end}, latest epoch {latest_epoch})"
    )]
    Diverged {
        /// The batch's base offset.
        base_offset: i64,
        /// The batch's leader epoch.
        epoch: i32,
        /// The log end offset.
        log_end: i64,
        /// The latest epoch in the log's history (-1: none).
        latest_epoch: i32,
    },
    /// On-disk data recovery could not use.
    #[error("corrupt {what} in {}", path.display())]
    Corrupt {
        /// What was corrupt.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidBatch(_) => ErrorKind::InvalidBatch,
            Error::OffsetOutOfRange { .. } => ErrorKind::OffsetOutOfRange,
            Error::Io { .. } => ErrorKind::Io,
            Error::Failed { .. } => ErrorKind::Failed,
            Error::Closed => ErrorKind::Closed,
            Error::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Diverged { .. } => ErrorKind::Diverged,
        }
    }

    #[cfg_attr(not(feature = "log"), allow(dead_code))]
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source: source.into(),
        }
    }
}

/// Result with a storage [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
