//! The producer: per-partition batching by size and linger, one batch in flight per
//! partition (order kept), retries on retriable errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringmq_net::codec::{ProducePartition, Request, Response};
use ringmq_storage::batch::{BatchBuilder, Compression, HEADER_BYTES, with_records_section};
use tokio::sync::{mpsc, oneshot};

use crate::{Admin, Client, Error, Result, partition_for_key};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A partition's batch is sent when the next record would take it past this many
    /// bytes; a batch is never larger, unless a single record is. Default 64 KiB.
    pub batch_bytes: usize,
    /// ... or once its first record has waited this long. Default 5 ms. Zero sends a
    /// batch as soon as the one before it on its partition is answered; records that
    /// arrive meanwhile join it.
    pub linger: Duration,
    /// `true`: a send resolves once its batch is durable on the broker (acks `durable`);
    /// `false`: once the broker has the request (acks `none`; offsets are then -1).
    pub durable: bool,
    /// Attempts after the first for a batch that failed with a retriable error.
    pub retries: u32,
    /// Compression of each batch's records: `None`, `Lz4`, `Zstd`, `Gzip` or `Snappy`
    /// (xerial framing, as Kafka's Java client writes it). The broker stores batches as
    /// sent; consumers decompress.
    pub compression: Compression,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_bytes: 64 << 10,
            linger: Duration::from_millis(5),
            durable: true,
            retries: 3,
            compression: Compression::None,
        }
    }
}

type Waiter = oneshot::Sender<Result<(u32, i64)>>;

enum Job {
    /// An uncompressed batch and the waiters of its records, in order.
    Batch(Vec<u8>, Vec<Waiter>),
    /// Linger zero: send what has accumulated as soon as the batch before it is answered
    /// (records that arrive meanwhile join the same batch).
    Ready,
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Accum {
    /// Records are encoded straight into the batch as they are sent.
    batch: BatchBuilder,
    waiters: Vec<Waiter>,
    /// Bumped whenever the accumulator is taken, so a linger timer of an earlier batch
    /// does not send a later one early.
    generation: u64,
}

struct Partition {
    accum: Accum,
    jobs: mpsc::UnboundedSender<Job>,
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    /// By topic, then partition index (looked up by `&str`: no allocation per send).
    partitions: Mutex<HashMap<String, HashMap<u32, Partition>>>,
    counts: Mutex<HashMap<String, u32>>,
    sticky: Mutex<HashMap<String, u32>>,
    closed: std::sync::atomic::AtomicBool,
}

/// Sends records to topics; cheap to clone (clones share batches and connection).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Producer {
    /// A producer sending through `client`. Must be created inside a tokio runtime.
    pub fn new(client: Client, config: ProducerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                partitions: Mutex::new(HashMap::new()),
                counts: Mutex::new(HashMap::new()),
                sticky: Mutex::new(HashMap::new()),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Looks up a topic's partitions ahead of sending. Sends to a topic already looked
    /// up join their batch on their first poll, in the order they are polled.
    pub async fn prepare(&self, topic: &str) -> Result<u32> {
        self.partition_count(topic).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.inner.counts.lock().unwrap().get(topic) {
            return Ok(*n);
        }
        let d = Admin::new(self.inner.client.clone())
            .describe_topic(topic)
            .await?;
        let n = d.partitions.len() as u32;
        if n == 0 {
            return Err(Error::Invalid(format!("topic {topic} has no partitions")));
        }
        self.inner.counts.lock().unwrap().insert(topic.into(), n);
        Ok(n)
    }

    /// Sends a record; resolves to the (partition, offset) it was stored at. A keyed
    /// record goes to `partition_for_key(key, partitions)`; one without a key to the
    /// topic's current sticky partition, which changes with each batch sent.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<(u32, i64)> {
        let n = self.partition_count(topic).await?;
        let partition = match key {
            Some(k) => partition_for_key(k, n),
            None => *self
                .inner
                .sticky
                .lock()
                .unwrap()
                .entry(topic.to_string())
                .or_insert_with(|| sticky_start(topic) % n),
        };
        self.send_to(topic, partition, key, value, headers).await
    }

    /// Sends a record to a given partition.
    pub async fn send_to(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<(u32, i64)> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let n = self.partition_count(topic).await?;
        if partition >= n {
            return Err(Error::Invalid(format!(
                "topic {topic} has {n} partitions; there is no partition {partition}"
            )));
        }
        let (tx, rx) = oneshot::channel();
        let linger_for = {
            let mut parts = self.inner.partitions.lock().unwrap();
            if !parts.contains_key(topic) {
                parts.insert(topic.to_string(), HashMap::new());
            }
            let p = parts
                .get_mut(topic)
                .expect("inserted above")
                .entry(partition)
                .or_insert_with(|| self.start_partition(topic, partition));
            // A batch never grows past batch_bytes (the broker refuses batches over its
            // message_bytes_max): a record that would not fit goes into the next one.
            let record_bytes = 24
                + key.map_or(0, <[u8]>::len)
                + value.len()
                + headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 10)
                    .sum::<usize>();
            if !p.accum.batch.is_empty()
                && p.accum.batch.size_bytes() + record_bytes > self.inner.config.batch_bytes
            {
                self.take_batch(topic, p);
            }
            let first = p.accum.batch.is_empty();
            p.accum.batch.push(key, Some(value), headers, now_ms());
            p.accum.waiters.push(tx);
            if p.accum.batch.size_bytes() + record_bytes > self.inner.config.batch_bytes {
                self.take_batch(topic, p);
                None
            } else if first && self.inner.config.linger.is_zero() {
                // No timer: tokio's has millisecond ticks, so even a zero sleep could
                // hold the record for up to a millisecond.
                let _ = p.jobs.send(Job::Ready);
                None
            } else if first {
                Some(p.accum.generation)
            } else {
                None
            }
        };
        if let Some(generation) = linger_for {
            let me = self.clone();
            let topic = topic.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(me.inner.config.linger).await;
                let mut parts = me.inner.partitions.lock().unwrap();
                if let Some(p) = parts.get_mut(&topic).and_then(|t| t.get_mut(&partition))
                    && p.accum.generation == generation
                    && !p.accum.batch.is_empty()
                {
                    me.take_batch(&topic, p);
                }
            });
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Moves a partition's records into its send queue.
    fn take_batch(&self, topic: &str, p: &mut Partition) {
        if let Some((batch, waiters)) = take_accum(&self.inner, topic, p) {
            let _ = p.jobs.send(Job::Batch(batch, waiters));
        }
    }

    fn start_partition(&self, topic: &str, partition: u32) -> Partition {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let inner = self.inner.clone();
        let topic = topic.to_string();
        // One batch in flight per partition: the order of sends is the order of offsets.
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let (batch, waiters) = match job {
                    Job::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                    Job::Batch(batch, waiters) => (batch, waiters),
                    Job::Ready => {
                        let mut parts = inner.partitions.lock().unwrap();
                        let taken = parts
                            .get_mut(&topic)
                            .and_then(|t| t.get_mut(&partition))
                            .and_then(|p| take_accum(&inner, &topic, p));
                        match taken {
                            Some(t) => t,
                            None => continue,
                        }
                    }
                };
                let r = send_batch(&inner, &topic, partition, batch).await;
                for (i, w) in waiters.into_iter().enumerate() {
                    let _ = w.send(match &r {
                        Ok(base) if *base >= 0 => Ok((partition, base + i as i64)),
                        Ok(_) => Ok((partition, -1)),
                        Err(e) => Err(clone_error(e)),
                    });
                }
            }
        });
        Partition {
            accum: Accum::default(),
            jobs,
        }
    }

    /// Sends every batched record now and waits until all sends so far are answered.
    pub async fn flush(&self) -> Result<()> {
        let mut done = Vec::new();
        {
            let mut parts = self.inner.partitions.lock().unwrap();
            for (topic, by_index) in parts.iter_mut() {
                for p in by_index.values_mut() {
                    self.take_batch(topic, p);
                    let (tx, rx) = oneshot::channel();
                    let _ = p.jobs.send(Job::Flush(tx));
                    done.push(rx);
                }
            }
        }
        for rx in done {
            let _ = rx.await;
        }
        Ok(())
    }

    /// Flushes, then refuses further sends.
    pub async fn close(&self) -> Result<()> {
        self.flush().await?;
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// Appends one batch, retrying retriable failures; the base offset (-1 with acks none).
async fn send_batch(inner: &Inner, topic: &str, partition: u32, plain: Vec<u8>) -> Result<i64> {
    let batch = Bytes::from(compress(plain, inner.config.compression)?);
    let mut attempt = 0;
    loop {
        let r = inner
            .client
            .call(Request::Produce {
                acks: u8::from(inner.config.durable),
                partitions: vec![ProducePartition {
                    topic: topic.into(),
                    partition,
                    batch: batch.clone(),
                }],
            })
            .await
            .and_then(|r| match r {
                Response::Produce(v) if v.len() == 1 => {
                    if v[0].error.is_ok() {
                        Ok(v[0].base_offset)
                    } else {
                        Err(Error::broker(&v[0].error))
                    }
                }
                other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
            });
        match r {
            Err(e) if e.is_retriable() && attempt < inner.config.retries => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// The batch with its records section compressed.
fn compress(plain: Vec<u8>, c: Compression) -> Result<Vec<u8>> {
    if c == Compression::None {
        return Ok(plain);
    }
    let packed = crate::codecs::compress(&plain[HEADER_BYTES..], c).map_err(Error::Invalid)?;
    Ok(with_records_section(&plain, c, &packed))
}

/// The batch with its records section decompressed (unchanged if uncompressed).
pub(crate) fn decompress(batch: &[u8], c: Compression) -> Result<Option<Vec<u8>>> {
    if c == Compression::None {
        return Ok(None);
    }
    let plain = crate::codecs::decompress(&batch[HEADER_BYTES..], c).map_err(Error::Protocol)?;
    Ok(Some(with_records_section(batch, Compression::None, &plain)))
}

/// Takes a partition's accumulated records (`None` if there are none), moving keyless
/// records on to another partition for the next batch.
fn take_accum(inner: &Inner, topic: &str, p: &mut Partition) -> Option<(Vec<u8>, Vec<Waiter>)> {
    let batch = std::mem::take(&mut p.accum.batch);
    let waiters = std::mem::take(&mut p.accum.waiters);
    p.accum.generation += 1;
    if batch.is_empty() {
        return None;
    }
    // Records without a key move on to another partition with each batch.
    let mut sticky = inner.sticky.lock().unwrap();
    if let Some(s) = sticky.get_mut(topic)
        && let Some(n) = inner.counts.lock().unwrap().get(topic)
    {
        *s = (*s + 1) % n;
    }
    Some((batch.finish(), waiters))
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Io { addr, source } => Error::Io {
            addr: addr.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Broker { code, message } => Error::Broker {
            code: *code,
            message: message.clone(),
        },
        Error::Protocol(m) => Error::Protocol(m.clone()),
        Error::Invalid(m) => Error::Invalid(m.clone()),
        Error::Closed => Error::Closed,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where a topic's keyless records start: varies between producers and topics.
fn sticky_start(topic: &str) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (crate::murmur2(topic.as_bytes()) as u32) ^ t
}
