//! The consumer: assigned partitions, positions, and a poll that long-polls the broker.

use std::collections::VecDeque;

use bytes::Bytes;
use ringmq_net::codec::{self, FetchPartition, Request, Response};
use ringmq_storage::batch;

use crate::{Client, Error, Result};

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
}

/// Reads assigned partitions. Prefetched records are bounded by `max_bytes` per poll.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    assigned: Vec<Assigned>,
    buffered: VecDeque<ConsumerRecord>,
    /// The next fetch, started when the last poll returned (prefetch: one fetch ahead,
    /// so at most `max_bytes` of records beyond what the application holds).
    next: Option<tokio::task::JoinHandle<Result<Response>>>,
    /// Record bytes the last fetch brought.
    last_fetch_bytes: usize,
    /// Longest a poll waits on the broker for data.
    pub max_wait_ms: u32,
    /// Bytes fetched per partition per poll at most.
    pub partition_max_bytes: u32,
    /// Bytes fetched per poll at most.
    pub max_bytes: u32,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            next.abort();
        }
    }
}

impl Consumer {
    /// A consumer reading through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            assigned: Vec::new(),
            buffered: VecDeque::new(),
            next: None,
            last_fetch_bytes: 0,
            max_wait_ms: 500,
            partition_max_bytes: 1 << 20,
            max_bytes: 8 << 20,
        }
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
        self.assigned
            .retain(|a| !(a.topic == topic && a.partition == partition));
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
        self.assigned.push(Assigned {
            topic: topic.into(),
            partition,
            offset,
        });
        // A prefetch for the old positions is of no use now.
        if let Some(next) = self.next.take() {
            next.abort();
        }
        Ok(())
    }

    /// Record bytes the most recent fetch brought: at most `max_bytes` (or one batch, if
    /// a single batch is larger), the bound on what a prefetch holds.
    pub fn last_fetch_bytes(&self) -> usize {
        self.last_fetch_bytes
    }

    fn fetch_request(&self) -> Request {
        Request::Fetch {
            max_wait_ms: self.max_wait_ms,
            min_bytes: 1,
            max_bytes: self.max_bytes,
            partitions: self
                .assigned
                .iter()
                .map(|a| FetchPartition {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset: a.offset,
                    max_bytes: self.partition_max_bytes,
                })
                .collect(),
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
        let resp = match self.next.take() {
            Some(next) => next
                .await
                .map_err(|e| Error::Protocol(format!("prefetch task: {e}")))??,
            None => self.client.call(self.fetch_request()).await?,
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
        // Prefetch: the next fetch runs while the application handles these records.
        let (client, req) = (self.client.clone(), self.fetch_request());
        self.next = Some(tokio::spawn(async move { client.call(req).await }));
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
