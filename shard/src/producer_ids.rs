//! Producer ids: unique per node, and recognisable as issued by this node without a
//! table of every id ever issued.
//!
//! An idempotent producer's id is its identity: a partition acknowledges a batch whose
//! sequence repeats a recent batch of the same producer id as a retry, without storing
//! it. So two clients must never share an id, and a client must never be able to pick
//! one: an id the client sent (producer id 0, say, which some clients send by default)
//! would let it act as another producer, and have its batches acknowledged and dropped.
//! InitProducerId therefore always hands out a new id ([`ProducerIds::issue`]), and a
//! produce whose id this node did not issue ([`ProducerIds::issued`]) is refused with
//! `UnknownProducer`, which Kafka clients answer by asking for a new id.
//!
//! An id (63 bits, never negative) is a serial number and a tag:
//!
//! ```text
//!  62            55 54                          24 23                0
//! | issuing shard | counter (31 bits)            | tag (24 bits)      |
//! ```
//!
//! - The counter is per shard and never reused: a shard reserves blocks of
//!   [`BLOCK_IDS`] counter values by writing the block's end to
//!   `<data-dir>/__ringmq_producer_ids/<shard>` (atomically, synced) before issuing
//!   from it; after a restart it starts at the recorded end, skipping what the last run
//!   had reserved but not used.
//! - The tag is SipHash-2-4 of the serial under the node's secret key
//!   (`<data-dir>/__ringmq_producer_ids/key`, 16 random bytes made at first start).
//!   An id a client made up passes with probability 2⁻²⁴.

use std::cell::Cell;
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};

use siphasher::sip::SipHasher24;

/// Counter values a shard reserves with one write.
pub const BLOCK_IDS: u64 = 4096;
/// Bits of the tag.
const TAG_BITS: u32 = 24;
/// Bits of the per-shard counter.
const COUNTER_BITS: u32 = 31;
/// Bits of the issuing shard.
const SHARD_BITS: u32 = 8;
const _: () = assert!(TAG_BITS + COUNTER_BITS + SHARD_BITS == 63);

/// The folder under the data directory that holds the key and the shards' counters.
pub const DIR_NAME: &str = "__ringmq_producer_ids";

/// The node's producer-id key, 128 bits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdKey(pub [u8; 16]);

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(..)")
    }
}

impl IdKey {
    /// A key derived from `shared` (bytes every node of a cluster holds): SipHash-2-4
    /// of it under two fixed keys.
    pub fn derived_from(shared: &[u8]) -> Self {
        let half = |k: u64| {
            let mut h = SipHasher24::new_with_keys(k, !k);
            h.write(shared);
            h.finish().to_be_bytes()
        };
        let (a, b) = (half(0x7269_6e67_6d71_0001), half(0x7269_6e67_6d71_0002));
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&a);
        key[8..].copy_from_slice(&b);
        Self(key)
    }

    /// Reads the node's key from `data_dir`, or makes one (random, written and synced)
    /// at first start. Call once per node, before the shards start.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<IdKey> {
        let dir = data_dir.join(DIR_NAME);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("key");
        match std::fs::read(&path) {
            Ok(b) if b.len() == 16 => {
                let mut k = [0u8; 16];
                k.copy_from_slice(&b);
                return Ok(IdKey(k));
            }
            Ok(b) => {
                return Err(std::io::Error::other(format!(
                    "{} holds {} bytes, expected 16",
                    path.display(),
                    b.len()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut k = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut k)?;
        let tmp = dir.join("key.tmp");
        {
            let f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &f, &k)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(IdKey(k))
    }

    fn tag(&self, serial: u64) -> u64 {
        let (a, b) = self.0.split_at(8);
        let mut h = SipHasher24::new_with_keys(
            u64::from_le_bytes(a.try_into().expect("8 bytes")),
            u64::from_le_bytes(b.try_into().expect("8 bytes")),
        );
        h.write_u64(serial);
        h.finish() & ((1 << TAG_BITS) - 1)
    }

    /// The id of `serial` (shard and counter).
    fn id(&self, serial: u64) -> i64 {
        debug_assert!(serial < 1 << (SHARD_BITS + COUNTER_BITS));
        ((serial << TAG_BITS) | self.tag(serial)) as i64
    }

    /// True when `id` was issued under this key.
    pub fn issued(&self, id: i64) -> bool {
        if id < 0 {
            return false;
        }
        let id = id as u64;
        self.tag(id >> TAG_BITS) == id & ((1 << TAG_BITS) - 1)
    }
}

/// Why an id could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The shard's counter is used up (2³¹ ids).
    #[error("shard {0} has issued every producer id it can")]
    Exhausted(u32),
    /// Reserving a block failed.
    #[error("reserving producer ids failed: {0}")]
    Storage(String),
}

/// One shard's issuer. Owned by its shard; used only on that shard's thread.
#[derive(Debug)]
pub struct ProducerIds {
    key: IdKey,
    shard: u32,
    /// Next counter value to issue.
    next: Cell<u64>,
    /// End of the reserved block (exclusive).
    reserved_end: Cell<u64>,
    path: PathBuf,
    reserving: glommio::sync::Semaphore,
}

impl ProducerIds {
    /// The issuer of `shard`, continuing after what earlier runs reserved.
    pub async fn open(data_dir: &Path, key: IdKey, shard: u32) -> Result<Self, IssueError> {
        assert!(
            shard < 1 << SHARD_BITS,
            "shard {shard} beyond the id's shard bits"
        );
        std::fs::create_dir_all(data_dir.join(DIR_NAME)).map_err(|e| {
            IssueError::Storage(format!("{}: {e}", data_dir.join(DIR_NAME).display()))
        })?;
        let path = data_dir.join(DIR_NAME).join(shard.to_string());
        let start = match std::fs::read(&path) {
            Ok(b) if b.len() == 8 => u64::from_be_bytes(b.try_into().expect("8 bytes")),
            Ok(b) => {
                return Err(IssueError::Storage(format!(
                    "{} holds {} bytes, expected 8",
                    path.display(),
                    b.len()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(IssueError::Storage(format!("{}: {e}", path.display())));
            }
        };
        Ok(Self {
            key,
            shard,
            next: Cell::new(start),
            reserved_end: Cell::new(start),
            path,
            reserving: glommio::sync::Semaphore::new(1),
        })
    }

    /// The node's key (to check ids of any shard).
    pub fn key(&self) -> IdKey {
        self.key
    }

    /// A new id, never issued before on this node.
    pub async fn issue(&self) -> Result<i64, IssueError> {
        loop {
            let n = self.next.get();
            if n < self.reserved_end.get() {
                self.next.set(n + 1);
                let serial = (u64::from(self.shard) << COUNTER_BITS) | n;
                return Ok(self.key.id(serial));
            }
            let _one = self
                .reserving
                .acquire_permit(1)
                .await
                .map_err(|e| IssueError::Storage(e.to_string()))?;
            if self.next.get() < self.reserved_end.get() {
                continue; // another task reserved a block meanwhile
            }
            let end = self.reserved_end.get() + BLOCK_IDS;
            if end > 1 << COUNTER_BITS {
                return Err(IssueError::Exhausted(self.shard));
            }
            ringmq_storage::write_file_atomic(&self.path, &end.to_be_bytes())
                .await
                .map_err(|e| IssueError::Storage(e.to_string()))?;
            self.reserved_end.set(end);
        }
    }

    /// True when this node issued `id` (on any shard).
    pub fn issued(&self, id: i64) -> bool {
        self.key.issued(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_recognised_and_made_up_ones_are_not() {
        let key = IdKey([7; 16]);
        let other = IdKey([8; 16]);
        for serial in [0u64, 1, 4095, (3 << COUNTER_BITS) | 17, (1 << 39) - 1] {
            let id = key.id(serial);
            assert!(id >= 0);
            assert!(key.issued(id), "serial {serial}");
            assert!(!other.issued(id) || other.tag(serial) == key.tag(serial));
        }
        // What clients send by default, or make up.
        let made_up = (0..100_000i64).filter(|&id| key.issued(id)).count();
        assert!(made_up <= 1, "{made_up} of the first 100000 ids pass");
        assert!(!key.issued(-1));
    }

    #[test]
    fn issued_ids_are_unique_across_restarts_and_shards() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let ids = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let key = IdKey::load_or_create(&data).unwrap();
                assert_eq!(key, IdKey::load_or_create(&data).unwrap(), "key is kept");
                let mut all = Vec::new();
                for _run in 0..3 {
                    for shard in 0..2 {
                        let p = ProducerIds::open(&data, key, shard).await.unwrap();
                        for _ in 0..(BLOCK_IDS + 10) {
                            let id = p.issue().await.unwrap();
                            assert!(p.issued(id));
                            all.push(id);
                        }
                    }
                }
                all
            })
            .unwrap()
            .join()
            .unwrap();
        let n = ids.len();
        let unique: std::collections::HashSet<_> = ids.into_iter().collect();
        assert_eq!(unique.len(), n, "no id issued twice");
    }
}
