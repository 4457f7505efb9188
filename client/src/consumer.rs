//! The consumer: assigned partitions, positions, and a poll that long-polls the broker.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use ringmq_net::codec::{self, FetchPartition, Request, Response};
use ringmq_storage::batch;

use tokio::sync::mpsc;

use crate::conn::ShardClients;
use crate::{Admin, Client, Error, Result};

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The first offset still stored.
    Earliest,
    /// The end: only records produced from now on.
    Latest,
    /// This offset.
    Offset(i64),
    /// The first record with a timestamp at or after this one (ms since the epoch).
    Timestamp(i64),
}

/// One record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug)]
struct Assigned {
    topic: String,
    partition: u32,
    offset: i64,
    /// The broker shard that owns the partition, when known.
    shard: Option<u32>,
}

/// A fetch's answer: the group it was for (its shard, or `None`), the assignment
/// generation it was started in, and the response.
type Fetched = (Option<u32>, u64, Result<Response>);

/// Reads assigned partitions. Each group of partitions (one per broker shard when
/// shard-aware, otherwise all of them) has one fetch in flight, started when its last
/// answer was returned: prefetched records are bounded by `max_bytes` per group.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    assigned: Vec<Assigned>,
    buffered: VecDeque<ConsumerRecord>,
    /// The fetch in flight of each group.
    in_flight: HashMap<Option<u32>, tokio::task::JoinHandle<()>>,
    done_tx: mpsc::UnboundedSender<Fetched>,
    done_rx: mpsc::UnboundedReceiver<Fetched>,
    /// Bumped by each assignment: answers to fetches started before it are dropped.
    generation: u64,
    /// By topic: each partition's shard.
    shards: HashMap<String, Vec<u32>>,
    /// A connection per shard (shard-aware fetching).
    shard_clients: ShardClients,
    /// Record bytes the last fetch brought.
    last_fetch_bytes: usize,
    /// Longest a poll waits on the broker for data.
    pub max_wait_ms: u32,
    /// Bytes fetched per partition per poll at most.
    pub partition_max_bytes: u32,
    /// Bytes fetched per fetch (per group) at most.
    pub max_bytes: u32,
    /// Fetch each shard's partitions on a connection bound to that shard (one fetch per
    /// shard in flight), so no fetch is forwarded between the broker's cores. Default
    /// on; takes effect for partitions assigned afterwards.
    pub shard_aware: bool,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for (_, t) in self.in_flight.drain() {
            t.abort();
        }
    }
}

impl Consumer {
    /// A consumer reading through `client`.
    pub fn new(client: Client) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            shard_clients: ShardClients::new(client.clone()),
            client,
            assigned: Vec::new(),
            buffered: VecDeque::new(),
            in_flight: HashMap::new(),
            done_tx,
            done_rx,
            generation: 0,
            shards: HashMap::new(),
            last_fetch_bytes: 0,
            max_wait_ms: 500,
            partition_max_bytes: 1 << 20,
            max_bytes: 8 << 20,
            shard_aware: true,
        }
    }

    /// The shard that owns a partition (looked up once per topic); `None` when not
    /// shard-aware or when the broker does not say.
    async fn shard_of(&mut self, topic: &str, partition: u32) -> Option<u32> {
        if !self.shard_aware {
            return None;
        }
        if !self.shards.contains_key(topic) {
            let d = Admin::new(self.client.clone())
                .describe_topic(topic)
                .await
                .ok()?;
            let shards = d.partitions.iter().map(|p| p.shard).collect();
            self.shards.insert(topic.to_string(), shards);
        }
        self.shards.get(topic)?.get(partition as usize).copied()
    }

    /// Resolves a position to an offset.
    pub async fn offset_for(&self, topic: &str, partition: u32, at: Position) -> Result<i64> {
        let spec = match at {
            Position::Offset(o) => return Ok(o),
            Position::Earliest => codec::OFFSET_EARLIEST,
            Position::Latest => codec::OFFSET_LATEST,
            Position::Timestamp(t) => t,
        };
        match self
            .client
            .call(Request::ListOffsets {
                partitions: vec![(topic.into(), partition, spec)],
            })
            .await?
        {
            Response::Offsets(v) if v.len() == 1 => {
                if v[0].2.is_ok() {
                    Ok(v[0].3)
                } else {
                    Err(Error::broker(&v[0].2))
                }
            }
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Reads `partition` of `topic` from `at` (replacing an earlier assignment of it).
    pub async fn assign(&mut self, topic: &str, partition: u32, at: Position) -> Result<()> {
        let offset = self.offset_for(topic, partition, at).await?;
        let shard = self.shard_of(topic, partition).await;
        self.assigned
            .retain(|a| !(a.topic == topic && a.partition == partition));
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
        self.assigned.push(Assigned {
            topic: topic.into(),
            partition,
            offset,
            shard,
        });
        // Prefetches for the old positions are of no use now.
        for (_, t) in self.in_flight.drain() {
            t.abort();
        }
        self.generation += 1;
        Ok(())
    }

    /// Record bytes the most recent fetch brought: at most `max_bytes` (or one batch, if
    /// a single batch is larger), the bound on what a prefetch holds.
    pub fn last_fetch_bytes(&self) -> usize {
        self.last_fetch_bytes
    }

    /// Starts a fetch for every group that has none in flight.
    fn start_fetches(&mut self) {
        let mut groups: HashMap<Option<u32>, Vec<FetchPartition>> = HashMap::new();
        for a in &self.assigned {
            if self.in_flight.contains_key(&a.shard) {
                continue;
            }
            groups.entry(a.shard).or_default().push(FetchPartition {
                topic: a.topic.clone(),
                partition: a.partition,
                offset: a.offset,
                max_bytes: self.partition_max_bytes,
            });
        }
        for (group, partitions) in groups {
            let client = self.shard_clients.get(group);
            let req = Request::Fetch {
                max_wait_ms: self.max_wait_ms,
                min_bytes: 1,
                max_bytes: self.max_bytes,
                partitions,
            };
            let (done, generation) = (self.done_tx.clone(), self.generation);
            let task = tokio::spawn(async move {
                let r = client.call(req).await;
                let _ = done.send((group, generation, r));
            });
            self.in_flight.insert(group, task);
        }
    }

    /// The next offset to read of an assigned partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.assigned
            .iter()
            .find(|a| a.topic == topic && a.partition == partition)
            .map(|a| a.offset)
    }

    /// The next records of the assigned partitions: waits up to `max_wait_ms` for some;
    /// an empty result means none arrived in that time.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        if !self.buffered.is_empty() {
            return Ok(self.buffered.drain(..).collect());
        }
        if self.assigned.is_empty() {
            return Err(Error::Invalid("no partition assigned".into()));
        }
        self.start_fetches();
        let resp = loop {
            // The consumer holds a sender, so the channel never closes.
            let Some((group, generation, resp)) = self.done_rx.recv().await else {
                return Err(Error::Protocol("fetch channel closed".into()));
            };
            if generation == self.generation {
                self.in_flight.remove(&group);
                break resp?;
            }
        };
        let Response::Fetch(results) = resp else {
            return Err(Error::Protocol(format!("unexpected answer {resp:?}")));
        };
        let fetched: usize = results.iter().map(|r| r.records.len()).sum();
        for r in results {
            if !r.error.is_ok() {
                return Err(Error::broker(&r.error));
            }
            let Some(a) = self
                .assigned
                .iter_mut()
                .find(|a| a.topic == r.topic && a.partition == r.partition)
            else {
                continue;
            };
            let bytes = r
                .records
                .in_memory()
                .ok_or_else(|| Error::Protocol("records not in memory".into()))?;
            let mut pos = 0;
            while pos < bytes.len() {
                let (_, size) = batch::peek_frame(&bytes[pos..])
                    .filter(|(_, s)| pos + s <= bytes.len())
                    .ok_or_else(|| Error::Protocol("truncated batch".into()))?;
                let b = &bytes[pos..pos + size];
                pos += size;
                if !batch::crc_matches(b) {
                    return Err(Error::Protocol(format!(
                        "batch of {}/{} fails its CRC",
                        r.topic, r.partition
                    )));
                }
                let info = batch::parse_header(b).map_err(|e| Error::Protocol(e.to_string()))?;
                // Keys and values are slices of the fetched (or decompressed) buffer:
                // no copy per record.
                let owner = match crate::producer::decompress(b, info.compression)? {
                    Some(plain) => Bytes::from(plain),
                    None => bytes.slice_ref(b),
                };
                let records = batch::records(&owner).map_err(|e| Error::Protocol(e.to_string()))?;
                for rec in records {
                    let offset = info.base_offset + i64::from(rec.offset_delta);
                    if offset < a.offset {
                        continue; // before the position, in the batch that holds it
                    }
                    self.buffered.push_back(ConsumerRecord {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        offset,
                        timestamp_ms: info.base_timestamp + rec.timestamp_delta,
                        key: rec.key.map(|k| owner.slice_ref(k)),
                        value: rec.value.map(|v| owner.slice_ref(v)),
                        headers: parse_headers(rec.headers_raw)?,
                    });
                }
                a.offset = a.offset.max(info.last_offset() + 1);
            }
        }
        // Prefetch: the group's next fetch runs while the application handles these
        // records.
        self.start_fetches();
        self.last_fetch_bytes = fetched;
        Ok(self.buffered.drain(..).collect())
    }
}

fn parse_headers(raw: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = || Error::Protocol("malformed record headers".into());
    let (count, mut p) = batch::read_varint(raw).ok_or_else(bad)?;
    // A header takes at least 2 bytes: reserve no more than the bytes can hold.
    let mut out = Vec::with_capacity((count.max(0) as usize).min(raw.len() / 2));
    for _ in 0..count.max(0) {
        let (klen, n) = batch::read_varint(&raw[p..]).ok_or_else(bad)?;
        p += n;
        let key = raw.get(p..p + klen.max(0) as usize).ok_or_else(bad)?;
        p += klen.max(0) as usize;
        let (vlen, n) = batch::read_varint(&raw[p..]).ok_or_else(bad)?;
        p += n;
        let value = if vlen < 0 {
            Vec::new()
        } else {
            let v = raw.get(p..p + vlen as usize).ok_or_else(bad)?;
            p += vlen as usize;
            v.to_vec()
        };
        out.push((String::from_utf8_lossy(key).into_owned(), value));
    }
    Ok(out)
}
