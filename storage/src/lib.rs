//! ringmq's partition log.
//!
//! The principal type is [`PartitionLog`]: one partition's directory of segments,
//! opened (and recovered) with [`PartitionLog::open`], appended to with
//! [`PartitionLog::append`] and read with [`PartitionLog::read`]. Its settings are a
//! [`LogConfig`]; closed segments are opened on demand through a [`SegmentCache`]
//! shared by all partitions of a shard.
//!
//! Batches are Kafka RecordBatch v2, validated by [`batch::validate`] and stored
//! verbatim. The sparse indexes are plain structures in [`index`]. The on-disk
//! format, the group-commit protocol and the I/O choices are described in
//! `docs/storage.md`.
//!
//! Without the `log` feature (on by default) the crate is the batch format alone
//! ([`batch`], [`index`]), which is what clients need.
//!
//! A log belongs to one shard: it is `!Send`, and every method must be called from the
//! glommio executor of the thread that opened it.
//!
//! ```no_run
//! use bytes::BytesMut;
//! use ringmq_storage::{batch, LogConfig, PartitionLog, SegmentCache};
//!
//! glommio::LocalExecutor::default().run(async {
//!     let cache = SegmentCache::new(64);
//!     let log = PartitionLog::open("/tmp/ringmq-demo/t-0", LogConfig::default(), cache)
//!         .await
//!         .unwrap();
//!     let b = batch::encode_batch(&[batch::Record {
//!         value: Some(b"hello".to_vec()),
//!         timestamp_ms: 1,
//!         ..Default::default()
//!     }]);
//!     let at = log.append(BytesMut::from(&b[..])).await.unwrap(); // durable on return
//!     let read = log.read(at.base_offset, 1 << 20, log.end_offset()).await.unwrap();
//!     assert_eq!(read.next_offset, at.last_offset + 1);
//!     log.close().await.unwrap();
//! });
//! ```
#![deny(missing_docs)]

pub mod batch;
pub mod codecs;
#[cfg(feature = "log")]
mod config;
mod error;
pub mod index;
#[cfg(feature = "log")]
mod io;
#[cfg(feature = "log")]
mod log;
#[cfg(feature = "log")]
pub mod metrics;
#[cfg(feature = "log")]
mod notify;

#[cfg(feature = "log")]
pub use config::{FlushPolicy, LogConfig, SEGMENT_BYTES_LIMIT};
pub use error::{BatchError, Error, ErrorKind, Result};
#[cfg(feature = "log")]
pub use io::{IoMode, SegmentCache, SegmentFile};

/// Writes a small file crash-safely from a shard: write `<name>.tmp`, fdatasync,
/// rename over the target, fsync the directory. All through io_uring.
#[cfg(feature = "log")]
pub async fn write_file_atomic(path: &std::path::Path, data: &[u8]) -> Result<()> {
    io::write_file_atomic(path, data).await
}

/// Removes a directory tree from a shard, off the executor thread.
#[cfg(feature = "log")]
pub async fn remove_dir_all(path: &std::path::Path) -> Result<()> {
    let p = path.to_owned();
    io::blocking(move || match std::fs::remove_dir_all(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
    .map_err(|e| Error::io("removing", path, e))
}
#[cfg(feature = "log")]
pub use log::{
    AppendInfo, LogStats, PartitionLog, ReadChunk, ReadResult, RecoveryReport, RetentionOutcome,
    end_offset_for_epoch, now_ms,
};
#[cfg(feature = "log")]
pub use notify::Notify;
