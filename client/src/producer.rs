//! The producer: per-partition batching by size and linger, up to
//! [`ProducerConfig::max_in_flight`] batches in flight per partition, retries on
//! retriable errors, and order kept through all of it.
//!
//! Order with several batches in flight is kept as Kafka's idempotent producer keeps it:
//! the producer gets a producer id from the broker (`InitProducer`) and stamps each batch
//! with it and the sequence number of its first record. The broker appends a
//! partition's batches from one producer only in sequence, refuses one that skips ahead
//! (`OutOfOrderSequence`), and answers a batch it already has with its first offset
//! instead of appending it again. So when a batch fails, the ones sent after it fail
//! too, and they are all sent again in order; a batch whose answer was lost (a broker
//! restart) is not stored twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringmq_net::codec::{ProducePartition, Request, Response};
use ringmq_storage::batch::{
    BatchBuilder, Compression, HEADER_BYTES, set_producer, with_records_section,
};
use tokio::sync::{mpsc, oneshot};

use crate::conn::Reply;
use crate::routes::{Route, Routes};
use crate::{Client, Error, Result, partition_for_key};

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
    /// When a send resolves: [`Acks::Leader`] (the default) once its batch is durable
    /// on the partition's leader under the topic's flush policy; [`Acks::All`] once
    /// every in-sync replica has it, refused with `NotEnoughReplicas` while fewer
    /// replicas are in sync than the topic's `min.insync.replicas` (in a cluster, retried
    /// like a moved leader until `delivery_timeout`; on a single node at once, as its
    /// in-sync replicas cannot grow); [`Acks::None`] once
    /// the broker has the request (offsets are then -1).
    pub acks: Acks,
    /// Attempts after the first for a batch that failed with a retriable error (the
    /// connection failed, the partition's leader moved or is being elected, or, in a
    /// cluster, too few replicas were in sync), within
    /// `delivery_timeout`. Default: no limit but the timeout, as Kafka's producer.
    pub retries: u32,
    /// How long a batch is tried at most, from when it is first sent: long enough for
    /// a cluster to elect a new leader after a node fails. Default 120 s (Kafka's
    /// `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Compression of each batch's records: `None`, `Lz4`, `Zstd`, `Gzip` or `Snappy`
    /// (xerial framing, as Kafka's Java client writes it). The broker stores batches as
    /// sent; consumers decompress.
    pub compression: Compression,
    /// Batches of one partition sent before the first of them is answered. Default 5,
    /// the most the broker remembers per producer for recognising a resent batch; larger
    /// values are lowered to 5. With 1, a batch waits for the one before it (the
    /// producer then needs no producer id).
    pub max_in_flight: usize,
    /// Send each partition's batches on a connection served by the broker shard (core)
    /// that owns the partition: one connection per shard used, no request forwarded
    /// between cores. Default on; off sends each node's partitions on one connection.
    /// Either way, in a cluster each partition's batches go to the node that leads it.
    pub shard_aware: bool,
}

/// When the broker acknowledges a batch ([`ProducerConfig::acks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Not at all: a send resolves once the request is written.
    None,
    /// Once the partition's leader has the batch (durable under its flush policy).
    #[default]
    Leader,
    /// Once every in-sync replica has it, and only while at least the topic's
    /// `min.insync.replicas` are in sync.
    All,
}

impl Acks {
    /// The native protocol's value: 0, 1 or 2.
    fn wire(self) -> u8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => 2,
        }
    }
}

/// The most batches per partition in flight: what the broker remembers per producer.
const MAX_IN_FLIGHT_LIMIT: usize = 5;

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_bytes: 64 << 10,
            linger: Duration::from_millis(5),
            acks: Acks::Leader,
            retries: u32::MAX,
            delivery_timeout: Duration::from_secs(120),
            compression: Compression::None,
            max_in_flight: MAX_IN_FLIGHT_LIMIT,
            shard_aware: true,
        }
    }
}

/// A `send_with` callback: told a record's (partition, offset) or why it failed.
type Callback = dyn FnOnce(Result<(u32, i64)>) + Send + Sync;

/// Who is told a record's outcome.
enum Waiter {
    /// A `send` future.
    Channel(oneshot::Sender<Result<(u32, i64)>>),
    /// A `send_with` callback.
    Callback(Box<Callback>),
}

impl Waiter {
    fn done(self, r: Result<(u32, i64)>) {
        match self {
            Waiter::Channel(tx) => {
                let _ = tx.send(r);
            }
            Waiter::Callback(f) => f(r),
        }
    }
}

enum Job {
    /// Send the partition's oldest full batch; with linger zero, when there is none,
    /// what has accumulated (records that arrive meanwhile join it). Sent once per full
    /// batch and once per batch started under linger zero, and handled when there is
    /// room in flight. Batches are taken from the partition only here, oldest first, so
    /// they go out in the order their records were sent.
    Ready,
    /// Answered once every batch taken before it is answered.
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
    /// Full batches (uncompressed) and their records' waiters, oldest first.
    full: VecDeque<(Vec<u8>, Vec<Waiter>)>,
    jobs: mpsc::UnboundedSender<Job>,
}

struct Inner {
    config: ProducerConfig,
    /// By topic, then partition index (looked up by `&str`: no allocation per send).
    partitions: Mutex<HashMap<String, HashMap<u32, Partition>>>,
    /// Each partition's leader and shard, and a connection per (node, shard) used,
    /// shared by the partitions routed there.
    routes: Routes,
    sticky: Mutex<HashMap<String, u32>>,
    closed: std::sync::atomic::AtomicBool,
    /// Producer id and epoch for sequenced batches, shared by the partitions.
    ids: tokio::sync::Mutex<Ids>,
}

/// The producer's identity for sequenced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ids {
    /// Not asked for yet.
    Unknown,
    /// The broker's answer; every partition numbers its batches from 0 in it.
    Known { producer_id: i64, epoch: i16 },
    /// The broker has no `InitProducer`: one batch in flight per partition.
    Unsupported,
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
                routes: Routes::new(client),
                config,
                partitions: Mutex::new(HashMap::new()),
                sticky: Mutex::new(HashMap::new()),
                closed: std::sync::atomic::AtomicBool::new(false),
                ids: tokio::sync::Mutex::new(Ids::Unknown),
            }),
        }
    }

    /// Looks up a topic's partitions ahead of sending. Sends to a topic already looked
    /// up join their batch on their first poll, in the order they are polled.
    pub async fn prepare(&self, topic: &str) -> Result<u32> {
        self.partition_count(topic).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.inner.routes.partition_count(topic) {
            return Ok(n);
        }
        Ok(self.inner.routes.lookup(topic).await?.len() as u32)
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
        let partition = self.partition_of(topic, key, n);
        self.send_to(topic, partition, key, value, headers).await
    }

    /// Like [`Producer::send`], but returns as soon as the record is in its batch, and
    /// `callback` gets the outcome once the batch is answered (as with the Java client's
    /// callback). The callback runs on the producer's sending task: it must be quick and
    /// must not block. Lighter than a future per record when many records are in flight.
    pub async fn send_with(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(String, Vec<u8>)],
        callback: impl FnOnce(Result<(u32, i64)>) + Send + Sync + 'static,
    ) -> Result<()> {
        let n = self.partition_count(topic).await?;
        let partition = self.partition_of(topic, key, n);
        self.enqueue(
            topic,
            partition,
            key,
            value,
            headers,
            Waiter::Callback(Box::new(callback)),
        )
        .await
    }

    /// The partition of a record: by key, or the topic's sticky partition.
    fn partition_of(&self, topic: &str, key: Option<&[u8]>, n: u32) -> u32 {
        if let Some(k) = key {
            return partition_for_key(k, n);
        }
        let mut sticky = self.inner.sticky.lock().unwrap();
        if let Some(p) = sticky.get(topic) {
            return *p;
        }
        let p = sticky_start(topic) % n;
        sticky.insert(topic.to_string(), p);
        p
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
        let (tx, rx) = oneshot::channel();
        self.enqueue(topic, partition, key, value, headers, Waiter::Channel(tx))
            .await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Puts a record into its partition's batch; `waiter` is told its outcome.
    async fn enqueue(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(String, Vec<u8>)],
        waiter: Waiter,
    ) -> Result<()> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let n = self.partition_count(topic).await?;
        if partition >= n {
            return Err(Error::Invalid(format!(
                "topic {topic} has {n} partitions; there is no partition {partition}"
            )));
        }
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
            p.accum.waiters.push(waiter);
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
        Ok(())
    }

    /// Moves a partition's records into its send queue.
    fn take_batch(&self, topic: &str, p: &mut Partition) {
        if let Some(full) = take_accum(&self.inner, topic, p) {
            p.full.push_back(full);
            let _ = p.jobs.send(Job::Ready);
        }
    }

    fn start_partition(&self, topic: &str, partition: u32) -> Partition {
        let (jobs, rx) = mpsc::unbounded_channel::<Job>();
        let route = self
            .inner
            .routes
            .cached(topic, partition)
            .unwrap_or(Route {
                addr: None,
                shard: None,
            })
            .shard_aware(self.inner.config.shard_aware);
        let client = self.inner.routes.client(&route);
        let worker = Worker {
            client,
            inner: self.inner.clone(),
            topic: topic.to_string(),
            partition,
            window: VecDeque::new(),
            ids: None,
            next_seq: 0,
            taken: 0,
            answered: 0,
            flushes: Vec::new(),
        };
        tokio::spawn(worker.run(rx));
        Partition {
            accum: Accum::default(),
            full: VecDeque::new(),
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

/// The batch with its records section compressed.
fn compress(plain: Vec<u8>, c: Compression) -> Result<Vec<u8>> {
    if c == Compression::None {
        return Ok(plain);
    }
    let packed =
        ringmq_storage::codecs::compress(&plain[HEADER_BYTES..], c).map_err(Error::Invalid)?;
    Ok(with_records_section(&plain, c, &packed))
}

/// The batch with its records section decompressed (unchanged if uncompressed).
pub(crate) fn decompress(batch: &[u8], c: Compression) -> Result<Option<Vec<u8>>> {
    if c == Compression::None {
        return Ok(None);
    }
    let plain =
        ringmq_storage::codecs::decompress(&batch[HEADER_BYTES..], c).map_err(Error::Protocol)?;
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
        && let Some(n) = inner.routes.partition_count(topic)
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

/// A batch taken from the accumulator, from its first send until it is answered.
struct InFlight {
    /// Compressed, and stamped once `seq` is set.
    batch: Bytes,
    records: i32,
    waiters: Vec<Waiter>,
    /// Its first record's sequence number under the ids it was stamped with.
    seq: Option<i32>,
    /// The request on the wire; `None` when it is to be sent (again).
    reply: Option<Reply>,
    /// When it was taken to be sent (its delivery timeout runs from here).
    taken_at: std::time::Instant,
}

/// One partition's sender: takes batches in order, keeps up to `max_in_flight` of them
/// on the wire, and answers their records' sends.
struct Worker {
    /// The connection this partition's batches go on.
    client: Client,
    inner: Arc<Inner>,
    topic: String,
    partition: u32,
    window: VecDeque<InFlight>,
    /// The ids this partition's sequence numbers belong to (`None`: not stamping).
    ids: Option<(i64, i16)>,
    next_seq: i32,
    /// Batches taken and answered so far (flushes wait for `answered` to catch up).
    taken: u64,
    answered: u64,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut open = true;
        loop {
            let room = self.window.len() < self.limit();
            if !open && self.window.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                r = wait_first(&mut self.window), if !self.window.is_empty() => {
                    let done = self.window.pop_front().expect("waited on it");
                    match r {
                        Ok(base) => self.answer(done, Ok(base)),
                        Err(e) => self.recover(done, e).await,
                    }
                }
                job = rx.recv(), if open && room => match job {
                    None => open = false,
                    Some(Job::Flush(done)) => self.flushes.push((self.taken, done)),
                    Some(Job::Ready) => {
                        let linger_zero = self.inner.config.linger.is_zero();
                        let taken = {
                            let mut parts = self.inner.partitions.lock().unwrap();
                            parts
                                .get_mut(&self.topic)
                                .and_then(|t| t.get_mut(&self.partition))
                                .and_then(|p| match p.full.pop_front() {
                                    Some(full) => Some(full),
                                    None if linger_zero => take_accum(&self.inner, &self.topic, p),
                                    None => None,
                                })
                        };
                        if let Some((batch, waiters)) = taken {
                            self.take(batch, waiters).await;
                        }
                    }
                },
            }
            let answered = self.answered;
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
                .into_iter()
                .partition(|(upto, _)| *upto <= answered);
            self.flushes = waiting;
            for (_, done) in ready {
                let _ = done.send(());
            }
        }
    }

    /// Batches in flight at most: 1 until the producer has ids.
    fn limit(&self) -> usize {
        if self.ids.is_some() {
            self.inner
                .config
                .max_in_flight
                .clamp(1, MAX_IN_FLIGHT_LIMIT)
        } else {
            1
        }
    }

    /// Compresses a batch and sends it behind the ones in flight.
    async fn take(&mut self, plain: Vec<u8>, waiters: Vec<Waiter>) {
        self.taken += 1;
        let records = waiters.len() as i32;
        let batch = match compress(plain, self.inner.config.compression) {
            Ok(b) => b,
            Err(e) => {
                let f = InFlight {
                    batch: Bytes::new(),
                    records,
                    waiters,
                    seq: None,
                    reply: None,
                    taken_at: std::time::Instant::now(),
                };
                self.answer(f, Err(e));
                return;
            }
        };
        let mut f = InFlight {
            batch: Bytes::from(batch),
            records,
            waiters,
            seq: None,
            reply: None,
            taken_at: std::time::Instant::now(),
        };
        // A failed send leaves `reply` empty: the batch fails in its turn and goes
        // through `recover`, like one whose answer was an error.
        if let Ok(reply) = self.send(&mut f).await {
            f.reply = Some(reply);
        }
        self.window.push_back(f);
    }

    /// Stamps the batch (first send only) and puts it on the wire.
    async fn send(&mut self, f: &mut InFlight) -> Result<Reply> {
        if f.seq.is_none() && self.inner.config.max_in_flight > 1 {
            if self.ids.is_none() {
                self.ids = self.producer_ids().await?;
                self.next_seq = 0;
            }
            if let Some((producer_id, epoch)) = self.ids {
                let mut b = f.batch.to_vec();
                set_producer(&mut b, producer_id, epoch, self.next_seq);
                f.batch = Bytes::from(b);
                f.seq = Some(self.next_seq);
                self.next_seq = self.next_seq.wrapping_add(f.records) & i32::MAX;
            }
        }
        self.client
            .start(Request::Produce {
                acks: self.inner.config.acks.wire(),
                partitions: vec![ProducePartition {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    batch: f.batch.clone(),
                }],
            })
            .await
    }

    /// The producer's ids, asked for once and shared by its partitions.
    async fn producer_ids(&self) -> Result<Option<(i64, i16)>> {
        let mut ids = self.inner.ids.lock().await;
        if *ids == Ids::Unknown {
            *ids = match self.inner.routes.call_any(Request::InitProducer).await {
                Ok(Response::Producer { producer_id, epoch }) => Ids::Known { producer_id, epoch },
                Ok(other) => {
                    return Err(Error::Protocol(format!("unexpected answer {other:?}")));
                }
                Err(Error::Broker {
                    code: ringmq_net::codec::ErrorCode::UnsupportedVersion,
                    ..
                }) => Ids::Unsupported,
                Err(e) => return Err(e),
            };
        }
        Ok(match *ids {
            Ids::Known { producer_id, epoch } => Some((producer_id, epoch)),
            _ => None,
        })
    }

    /// New ids after a batch failed for good: the batches after it cannot follow its
    /// sequence numbers (the broker would wait for the missing ones), so they start over
    /// from 0 under a new producer id (`recover`, the only caller, clears their sequence
    /// numbers; nothing is in flight then). Partitions still on the old ids go on with
    /// them.
    async fn renew_ids(&mut self) {
        if let Some((producer_id, epoch)) = self.ids.take() {
            let mut ids = self.inner.ids.lock().await;
            if *ids == (Ids::Known { producer_id, epoch }) {
                *ids = Ids::Unknown;
            }
        }
    }

    /// A batch failed (or could not be sent): every batch after it is answered first,
    /// then the failed ones are sent again one at a time, in order.
    async fn recover(&mut self, first: InFlight, error: Error) {
        let mut outcomes: VecDeque<(InFlight, Result<i64>)> = VecDeque::new();
        outcomes.push_back((first, Err(error)));
        while let Some(mut f) = self.window.pop_front() {
            let r = wait_one(&mut f).await;
            outcomes.push_back((f, r));
        }
        let (mut restamp, mut last_ok) = (false, false);
        for (mut f, r) in outcomes {
            let mut error = match r {
                // Stored although an earlier batch failed (only a failed write on the
                // broker can do that): it keeps its answer.
                Ok(base) => {
                    self.answer(f, Ok(base));
                    last_ok = true;
                    continue;
                }
                Err(e) => e,
            };
            if restamp {
                f.seq = None;
            }
            let mut attempt = 0;
            let result = loop {
                let again = match retry_for(&error, self.inner.routes.clustered()) {
                    Retry::No => false,
                    Retry::Again => true,
                    // The broker lost this producer (it restarted before storing any of
                    // its batches): start over under new ids.
                    Retry::WithNewIds => {
                        self.renew_ids().await;
                        f.seq = None;
                        restamp = true;
                        true
                    }
                };
                if !again
                    || attempt >= self.inner.config.retries
                    || f.taken_at.elapsed() >= self.inner.config.delivery_timeout
                {
                    break Err(error);
                }
                // Right after the batch before it went in, the next one goes at once.
                if !(attempt == 0 && last_ok) {
                    let backoff = 100 * u64::from(attempt.saturating_add(1)).min(10);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                if error.is_retriable() {
                    self.follow_leader().await;
                }
                attempt += 1;
                match self.send(&mut f).await {
                    Ok(reply) => {
                        f.reply = Some(reply);
                        match wait_one(&mut f).await {
                            Ok(base) => break Ok(base),
                            Err(e) => error = e,
                        }
                    }
                    Err(e) => error = e,
                }
            };
            if result.is_err() && f.seq.is_some() {
                self.renew_ids().await;
                restamp = true;
            }
            last_ok = result.is_ok();
            self.answer(f, result);
        }
    }

    /// After a failure a moved leader would explain (a connection failure, or
    /// `Unavailable`), sends to wherever the partition is led now.
    async fn follow_leader(&mut self) {
        if let Ok(routes) = self.inner.routes.refresh(&self.topic).await
            && let Some(route) = routes.get(self.partition as usize)
        {
            let route = route.clone().shard_aware(self.inner.config.shard_aware);
            self.client = self.inner.routes.client(&route);
        }
    }

    /// Answers a batch's sends.
    fn answer(&mut self, f: InFlight, r: Result<i64>) {
        self.answered += 1;
        for (i, w) in f.waiters.into_iter().enumerate() {
            w.done(match &r {
                Ok(base) if *base >= 0 => Ok((self.partition, base + i as i64)),
                Ok(_) => Ok((self.partition, -1)),
                Err(e) => Err(clone_error(e)),
            });
        }
    }
}

/// The answer to the first batch in flight.
async fn wait_first(window: &mut VecDeque<InFlight>) -> Result<i64> {
    match window.front_mut() {
        Some(f) => wait_one(f).await,
        None => std::future::pending().await,
    }
}

/// The answer to one batch: its first offset (-1 with acks none).
async fn wait_one(f: &mut InFlight) -> Result<i64> {
    let Some(reply) = f.reply.as_mut() else {
        return Err(Error::Io {
            addr: String::new(),
            source: std::io::Error::from(std::io::ErrorKind::NotConnected),
        });
    };
    let r = reply.wait().await;
    f.reply = None;
    match r? {
        Response::Produce(v) if v.len() == 1 => {
            if v[0].error.is_ok() {
                Ok(v[0].base_offset)
            } else {
                Err(Error::broker(&v[0].error))
            }
        }
        other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
    }
}

/// What a batch's failure calls for ([`retry_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Fail the batch.
    No,
    /// Send it again (to the partition's leader as it is now).
    Again,
    /// Send it again under new producer ids.
    WithNewIds,
}

/// Whether a batch that failed with `error` goes again, on a broker that is a cluster's
/// node (`clustered`) or a single node.
fn retry_for(error: &Error, clustered: bool) -> Retry {
    use ringmq_net::codec::ErrorCode;
    match error {
        e if e.is_retriable() => Retry::Again,
        Error::Broker { code, .. } => match code {
            // Too few replicas in sync: in a cluster the ISR grows back once a follower
            // catches up (Kafka's producer retries this too); a single node's ISR is
            // itself and never grows, so there it fails at once.
            ErrorCode::NotEnoughReplicas if clustered => Retry::Again,
            // The broker lost this producer (it restarted before storing any of its
            // batches).
            ErrorCode::UnknownProducer => Retry::WithNewIds,
            // A later batch refused while an earlier one was missing: it goes again
            // once the earlier one is in.
            ErrorCode::OutOfOrderSequence => Retry::Again,
            _ => Retry::No,
        },
        _ => Retry::No,
    }
}

#[cfg(test)]
mod retry_tests {
    use super::{Error, Retry, retry_for};
    use ringmq_net::codec::ErrorCode;

    fn broker(code: ErrorCode) -> Error {
        Error::Broker {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn too_few_in_sync_replicas_are_waited_for_in_a_cluster_only() {
        let e = broker(ErrorCode::NotEnoughReplicas);
        assert_eq!(retry_for(&e, true), Retry::Again);
        assert_eq!(retry_for(&e, false), Retry::No);
    }

    #[test]
    fn moved_leaders_and_lost_producers_are_retried_and_bad_batches_are_not() {
        let expected = [
            (ErrorCode::Unavailable, Retry::Again),
            (ErrorCode::Timeout, Retry::Again),
            (ErrorCode::OutOfOrderSequence, Retry::Again),
            (ErrorCode::UnknownProducer, Retry::WithNewIds),
            (ErrorCode::CorruptBatch, Retry::No),
            (ErrorCode::MessageTooLarge, Retry::No),
        ];
        for clustered in [false, true] {
            for (code, want) in expected {
                assert_eq!(retry_for(&broker(code), clustered), want, "{code:?}");
            }
        }
    }
}
