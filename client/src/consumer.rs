//! The consumer: assigned partitions, positions, and a poll that long-polls the broker.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use ringmq_net::codec::{self, FetchPartition, Request, Response};
use ringmq_storage::batch;

use tokio::sync::mpsc;

use crate::routes::{Route, Routes};
use crate::{Client, Error, Result};

/// How long `offset_for` keeps asking while a partition has no reachable leader.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// The node and shard its fetches go to.
    route: Route,
}

/// A fetch's answer: the group it was for (its route), the assignment generation it
/// was started in, and the response.
type Fetched = (Route, u64, Result<Response>);

/// Reads assigned partitions. Each group of partitions (one per broker shard when
/// shard-aware, otherwise all of them) has one fetch in flight, started when its last
/// answer was returned: prefetched records are bounded by `max_bytes` per group.
#[derive(Debug)]
pub struct Consumer {
    assigned: Vec<Assigned>,
    buffered: VecDeque<ConsumerRecord>,
    /// The fetch in flight of each group (the partitions of one route).
    in_flight: HashMap<Route, tokio::task::JoinHandle<()>>,
    done_tx: mpsc::UnboundedSender<Fetched>,
    done_rx: mpsc::UnboundedReceiver<Fetched>,
    /// Bumped by each assignment: answers to fetches started before it are dropped.
    generation: u64,
    /// Each partition's leader and shard, and a connection per (node, shard) used.
    routes: Routes,
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
            routes: Routes::new(client),
            assigned: Vec::new(),
            buffered: VecDeque::new(),
            in_flight: HashMap::new(),
            done_tx,
            done_rx,
            generation: 0,
            last_fetch_bytes: 0,
            max_wait_ms: 500,
            partition_max_bytes: 1 << 20,
            max_bytes: 8 << 20,
            shard_aware: true,
        }
    }

    /// Where a partition's requests go (its topic looked up once); the client's own
    /// broker when the topic's routes cannot be learned.
    async fn route_of(&self, topic: &str, partition: u32) -> Route {
        let route = match self.routes.lookup(topic).await {
            Ok(r) => r.get(partition as usize).cloned(),
            Err(_) => None,
        };
        route
            .unwrap_or(Route {
                addr: None,
                shard: None,
            })
            .shard_aware(self.shard_aware)
    }

    /// Resolves a position to an offset, asking the partition's leader. In a cluster,
    /// while the leader moves, asks again for up to 30 s.
    pub async fn offset_for(&self, topic: &str, partition: u32, at: Position) -> Result<i64> {
        let spec = match at {
            Position::Offset(o) => return Ok(o),
            Position::Earliest => codec::OFFSET_EARLIEST,
            Position::Latest => codec::OFFSET_LATEST,
            Position::Timestamp(t) => t,
        };
        let started = std::time::Instant::now();
        loop {
            let client = self.routes.client(&self.route_of(topic, partition).await);
            let r = client
                .call(Request::ListOffsets {
                    partitions: vec![(topic.into(), partition, spec)],
                })
                .await;
            let r = match r {
                Ok(Response::Offsets(v)) if v.len() == 1 => {
                    if v[0].2.is_ok() {
                        Ok(v[0].3)
                    } else {
                        Err(Error::broker(&v[0].2))
                    }
                }
                Ok(other) => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
                Err(e) => Err(e),
            };
            match r {
                Err(e)
                    if e.is_retriable()
                        && self.routes.clustered()
                        && started.elapsed() < LEADER_WAIT =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let _ = self.routes.refresh(topic).await;
                }
                r => return r,
            }
        }
    }

    /// After a retriable failure of `group`'s fetch or of some of its partitions: in a
    /// cluster, learns again where `topics` are led and moves their partitions there,
    /// and returns true (the failure is the moving leader's, not the application's);
    /// on a single node returns false.
    async fn follow_leaders(&mut self, topics: &[String]) -> bool {
        if !self.routes.clustered() {
            return false;
        }
        // Not in a tight loop while a partition has no leader.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for t in topics {
            let Ok(routes) = self.routes.refresh(t).await else {
                continue;
            };
            for a in self.assigned.iter_mut().filter(|a| &a.topic == t) {
                if let Some(r) = routes.get(a.partition as usize) {
                    a.route = r.clone().shard_aware(self.shard_aware);
                }
            }
        }
        true
    }

    /// Reads `partition` of `topic` from `at` (replacing an earlier assignment of it).
    pub async fn assign(&mut self, topic: &str, partition: u32, at: Position) -> Result<()> {
        let offset = self.offset_for(topic, partition, at).await?;
        let route = self.route_of(topic, partition).await;
        self.assigned
            .retain(|a| !(a.topic == topic && a.partition == partition));
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
        self.assigned.push(Assigned {
            topic: topic.into(),
            partition,
            offset,
            route,
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
        let mut groups: HashMap<Route, Vec<FetchPartition>> = HashMap::new();
        for a in &self.assigned {
            if self.in_flight.contains_key(&a.route) {
                continue;
            }
            groups
                .entry(a.route.clone())
                .or_default()
                .push(FetchPartition {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset: a.offset,
                    max_bytes: self.partition_max_bytes,
                });
        }
        for (group, partitions) in groups {
            let client = self.routes.client(&group);
            let req = Request::Fetch {
                max_wait_ms: self.max_wait_ms,
                min_bytes: 1,
                max_bytes: self.max_bytes,
                partitions,
            };
            let (done, generation) = (self.done_tx.clone(), self.generation);
            let key = group.clone();
            let task = tokio::spawn(async move {
                let r = client.call(req).await;
                let _ = done.send((group, generation, r));
            });
            self.in_flight.insert(key, task);
        }
    }

    /// The topics of the partitions fetched through `route`.
    fn topics_routed(&self, route: &Route) -> Vec<String> {
        let mut topics: Vec<String> = Vec::new();
        for a in self.assigned.iter().filter(|a| &a.route == route) {
            if !topics.contains(&a.topic) {
                topics.push(a.topic.clone());
            }
        }
        topics
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
                match resp {
                    Ok(r) => break r,
                    Err(e) if e.is_retriable() => {
                        let topics = self.topics_routed(&group);
                        if self.follow_leaders(&topics).await {
                            return Ok(Vec::new());
                        }
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let Response::Fetch(results) = resp else {
            return Err(Error::Protocol(format!("unexpected answer {resp:?}")));
        };
        let fetched: usize = results.iter().map(|r| r.records.len()).sum();
        let mut moved: Vec<String> = Vec::new();
        for r in results {
            if !r.error.is_ok() {
                let e = Error::broker(&r.error);
                if e.is_retriable() && self.routes.clustered() {
                    // Led elsewhere now (or being elected): the others' records stand.
                    if !moved.contains(&r.topic) {
                        moved.push(r.topic.clone());
                    }
                    continue;
                }
                return Err(e);
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
        if !moved.is_empty() {
            self.follow_leaders(&moved).await;
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
