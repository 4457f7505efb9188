//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::rc::Rc;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use rand::{Rng, SeedableRng, rngs::StdRng};
use ringmq_storage::batch::{self, Record};
use ringmq_storage::{LogConfig, PartitionLog, SegmentCache};

/// Runs `f` on a fresh glommio executor on its own thread and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("executor thread ends")
}

/// A batch of `records` records whose values are derived from `seed`.
pub fn make_batch(seed: u64, records: usize, value_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let recs: Vec<Record> = (0..records)
        .map(|i| {
            let mut v = vec![0u8; value_bytes];
            rng.fill(&mut v[..]);
            Record {
                key: Some(format!("key-{seed}-{i}").into_bytes()),
                value: Some(v),
                headers: vec![("seed".into(), seed.to_be_bytes().to_vec())],
                timestamp_ms: timestamp_ms + i as i64,
            }
        })
        .collect();
    batch::encode_batch(&recs)
}

pub fn bm(b: &[u8]) -> BytesMut {
    BytesMut::from(b)
}

/// Hash of a batch's bytes ignoring the broker-assigned base offset and leader epoch.
pub fn content_hash(b: &[u8]) -> u64 {
    let mut c = b.to_vec();
    batch::set_base_offset(&mut c, 0);
    batch::set_leader_epoch(&mut c, -1);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    c.hash(&mut h);
    h.finish()
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        preallocate_step_bytes: 16 << 10,
        tail_cache_bytes_max: 8 << 10,
        retention_ms: None,
        ..LogConfig::default()
    }
}

pub async fn open(dir: &Path, config: LogConfig) -> Rc<PartitionLog> {
    PartitionLog::open(dir, config, SegmentCache::new(8))
        .await
        .expect("log opens")
}

/// Every batch from the start of the log, as (base offset, bytes), read through
/// `PartitionLog::read` with copies of file ranges.
pub async fn read_all(log: &PartitionLog) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.start_offset();
    // What a single node acknowledges: durable under every_batch, written otherwise.
    let end = match log.flush_policy() {
        ringmq_storage::FlushPolicy::EveryBatch => log.durable_offset(),
        _ => log.end_offset(),
    };
    while offset < end {
        let r = log.read(offset, 16 << 10, end).await.expect("read");
        assert!(
            !r.is_empty(),
            "read at {offset} below committed {end} returned nothing"
        );
        let bytes = r.to_bytes().await.expect("bytes");
        let mut pos = 0;
        while pos < bytes.len() {
            let info = batch::validate(
                &bytes[pos..pos + batch::peek_frame(&bytes[pos..]).unwrap().1],
                usize::MAX,
            )
            .expect("stored batch is valid");
            out.push((info.base_offset, bytes[pos..pos + info.size_bytes].to_vec()));
            pos += info.size_bytes;
        }
        assert!(r.next_offset > offset);
        offset = r.next_offset;
    }
    out
}
