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
//!     let read = log.read(at.base_offset, 1 << 20).await.unwrap();
//!     assert_eq!(read.next_offset, at.last_offset + 1);
//!     log.close().await.unwrap();
//! });
//! ```
#![deny(missing_docs)]

pub mod batch;
mod config;
mod error;
pub mod index;
mod io;
mod log;
mod notify;

pub use config::{FlushPolicy, LogConfig, SEGMENT_BYTES_LIMIT};
pub use error::{BatchError, Error, ErrorKind, Result};
pub use io::{IoMode, SegmentCache, SegmentFile};
pub use log::{
    AppendInfo, LogStats, PartitionLog, ReadChunk, ReadResult, RecoveryReport, RetentionOutcome,
    now_ms,
};
pub use notify::Notify;
