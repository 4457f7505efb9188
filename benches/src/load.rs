//! `ringmq bench`: a load generator in the manner of the OpenMessaging Benchmark, the
//! same workload through each broker's own client (the drivers of [`crate::driver`]:
//! ringmq's native client, Kafka, NATS JetStream, RabbitMQ, Redis streams). Producers
//! send at a fixed rate (each latency counted from the intended send time, so a stall
//! cannot hide behind a slowed sender) or as fast as acknowledgements allow; consumers
//! read every partition. Reports produce and consume rates, produce-ack latency and
//! end-to-end latency (send time carried in the value) after a warm-up, with a progress
//! line each second. Given the broker's process ids (`--broker-pid`), it also reports the
//! CPU time the broker used per GB moved.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

use crate::driver::{self, Receiver, Sender};

/// Workload flags of `ringmq bench` (stable: scripts use them). Each driver sends the
/// same workload through its broker's own client; [`DRIVERS_HELP`] says how each maps a
/// partition and what its acknowledgement means.
#[derive(Args, Debug, Clone)]
#[command(after_long_help = DRIVERS_HELP)]
pub struct BenchArgs {
    /// Broker address, HOST:PORT [default: 127.0.0.1:9093 for native, 127.0.0.1:9092
    /// for kafka, 127.0.0.1:4222 for nats, 127.0.0.1:5672 for rabbitmq (user guest),
    /// 127.0.0.1:6379 for redis; a URL also works for these three]
    #[arg(long, env = "RINGMQ_BROKERS")]
    pub brokers: Option<String>,
    /// Client and protocol: native (ringmq-client on the native protocol), kafka
    /// (librdkafka through the rdkafka crate, on any Kafka-API broker: ringmq's Kafka
    /// listener, Kafka, Redpanda, Tansu), nats (NATS JetStream through async-nats),
    /// rabbitmq (AMQP 0-9-1 through lapin) or redis (Redis streams through the redis
    /// crate)
    #[arg(long, default_value = "native", value_parser = driver::DRIVERS)]
    pub driver: String,
    /// The RabbitMQ queue type of the rabbitmq driver: quorum or stream
    #[arg(long, default_value = "quorum", value_parser = ["quorum", "stream"])]
    pub rabbitmq_queue: String,
    /// Topic (created with --partitions if missing)
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the topic when it is created
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,
    /// Producers, each with its own connection
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumers, each with its own connection, sharing the partitions
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Message (value) size in bytes, at least 8
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Producer batch size in bytes (native and kafka)
    #[arg(long, default_value_t = 64 << 10)]
    pub batch_bytes: usize,
    /// Producer linger in milliseconds (native and kafka)
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// durable (acknowledged once durable) or none
    #[arg(long, default_value = "durable", value_parser = ["durable", "none", "all", "-1", "1", "0"])]
    pub acks: String,
    /// Batch compression: none, lz4, zstd, gzip or snappy (native and kafka drivers)
    #[arg(long, default_value = "none", value_parser = ["none", "lz4", "zstd", "gzip", "snappy"])]
    pub compression: String,
    /// Messages per second over all producers; 0 sends as fast as acknowledgements allow
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seconds of load before measuring
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds measured
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Print the final report as one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report (throughput and latency over time, the
    /// latency distribution) to this file
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// A process id of the broker (repeatable): reports the CPU seconds it and its
    /// descendants used during the measured period, per GB of messages produced
    #[arg(long, value_name = "PID")]
    pub broker_pid: Vec<u32>,
}

/// What each driver's partition and acknowledgement are, for `ringmq bench --help` (the
/// details: docs/benchmarks.md).
pub const DRIVERS_HELP: &str = "\
Drivers, their partitions and what an acknowledgement means (compare durable with durable):
  native    ringmq partitions; acked once fdatasync'd (flush every_batch, the default)
  kafka     Kafka partitions, acks=all; on ringmq acked once fdatasync'd; on another broker
            as durable as that broker's acks=all (Tansu: in memory)
  nats      a JetStream stream per partition (file storage, 1 replica); publish acks;
            durable only with `jetstream { sync_interval: always }` on the server
            (nats-server 2.10+; otherwise synced every 2 minutes)
  rabbitmq  a durable queue per partition, persistent messages, publisher confirms;
            quorum queues confirm once the Raft WAL is fdatasync'd; stream queues
            confirm without an fsync (no durability on a single node)
  redis     a stream key per partition (XADD, XREAD BLOCK); durable only with
            `appendonly yes` and `appendfsync always` on the server
--batch-bytes and --linger-ms apply to native and kafka; the nats, rabbitmq and redis
clients send each message as its own command, pipelined. See docs/benchmarks.md.";

/// Sends in flight per producer at max rate.
const MAX_INFLIGHT: usize = 2048;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// One second of the run, for the HTML report.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    t: f64,
    produce_msgs: u64,
    consume_msgs: u64,
    ack_p50_us: u64,
    ack_p99_us: u64,
    e2e_p50_us: u64,
    e2e_p99_us: u64,
}

struct Shared {
    start: Instant,
    measure_from: Instant,
    sent: AtomicU64,
    acked: AtomicU64,
    consumed: AtomicU64,
    consumed_measured: AtomicU64,
    acked_measured: AtomicU64,
    ack: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
    /// The current second's latencies, for the progress line and the time series.
    ack_tick: Mutex<Histogram<u64>>,
    e2e_tick: Mutex<Histogram<u64>>,
    series: Mutex<Vec<Sample>>,
    errors: AtomicU64,
    stop_consumers: AtomicBool,
    /// CPU seconds the broker's processes used during the measured period.
    broker_cpu_secs: Mutex<Option<f64>>,
    /// This process's CPU seconds (producers and consumers) over the measured period.
    client_cpu_secs: Mutex<Option<f64>>,
}

impl Shared {
    fn micros_since_start(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_micros() as u64
    }
}

/// Runs the benchmark; the report goes to stdout, progress to stderr.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.message_size >= 8,
        "--message-size must be at least 8 (the send time)"
    );
    anyhow::ensure!(
        a.producers > 0 || a.consumers > 0,
        "nothing to do: no producers or consumers"
    );
    anyhow::ensure!(a.duration > 0.0, "--duration must be positive");
    driver::check(&a)?;
    let brokers = a
        .brokers
        .clone()
        .unwrap_or_else(|| driver::default_brokers(&a.driver).to_string());
    let partitions = driver::setup(&a, &brokers).await?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        measure_from: start + Duration::from_secs_f64(a.warmup),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        consumed_measured: AtomicU64::new(0),
        acked_measured: AtomicU64::new(0),
        ack: Mutex::new(hist()),
        e2e: Mutex::new(hist()),
        ack_tick: Mutex::new(hist()),
        e2e_tick: Mutex::new(hist()),
        series: Mutex::new(Vec::new()),
        errors: AtomicU64::new(0),
        stop_consumers: AtomicBool::new(false),
        broker_cpu_secs: Mutex::new(None),
        client_cpu_secs: Mutex::new(None),
    });
    let end = shared.measure_from + Duration::from_secs_f64(a.duration);

    // This process's CPU time over the measured period, read at its two ends.
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(shared.measure_from.into()).await;
            let from = own_cpu_secs();
            tokio::time::sleep_until(end.into()).await;
            *shared.client_cpu_secs.lock().unwrap() = Some(own_cpu_secs() - from);
        });
    }
    // The broker's CPU time over the measured period, read at its two ends.
    let cpu_meter = (!a.broker_pid.is_empty()).then(|| {
        let (shared, pids) = (shared.clone(), a.broker_pid.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(shared.measure_from.into()).await;
            let from = tree_cpu_secs(&pids);
            tokio::time::sleep_until(end.into()).await;
            let to = tree_cpu_secs(&pids);
            *shared.broker_cpu_secs.lock().unwrap() = Some(to - from);
        })
    });

    // Consumers first, at the end of each partition, so they see every message sent.
    let mut consumers = Vec::new();
    for c in 0..a.consumers {
        let mine: Vec<u32> = (0..partitions)
            .filter(|p| *p as usize % a.consumers == c)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let receiver = driver::receiver(&a, &brokers, &mine).await?;
        let shared = shared.clone();
        consumers.push(tokio::spawn(async move { consume(receiver, shared).await }));
    }

    let mut producers = Vec::new();
    for i in 0..a.producers {
        let producer = driver::sender(&a, &brokers, partitions).await?;
        let (shared, a2) = (shared.clone(), a.clone());
        producers.push(tokio::spawn(async move {
            produce(producer, i, a2, shared, end).await
        }));
    }

    // Progress, once a second.
    let progress = {
        let shared = shared.clone();
        let size = a.message_size as f64;
        tokio::spawn(async move {
            let (mut last_acked, mut last_consumed) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let (acked, consumed) = (
                    shared.acked.load(Ordering::Relaxed),
                    shared.consumed.load(Ordering::Relaxed),
                );
                let (ack_p50, ack_p99) = {
                    let mut h = shared.ack_tick.lock().unwrap();
                    let r = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
                    h.reset();
                    r
                };
                let (e2e_p50, e2e_p99) = {
                    let mut h = shared.e2e_tick.lock().unwrap();
                    let r = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
                    h.reset();
                    r
                };
                let t = shared.start.elapsed().as_secs_f64();
                shared.series.lock().unwrap().push(Sample {
                    t,
                    produce_msgs: acked - last_acked,
                    consume_msgs: consumed - last_consumed,
                    ack_p50_us: ack_p50,
                    ack_p99_us: ack_p99,
                    e2e_p50_us: e2e_p50,
                    e2e_p99_us: e2e_p99,
                });
                let phase = if Instant::now() < shared.measure_from {
                    "warm-up"
                } else {
                    "measure"
                };
                eprintln!(
                    "[{t:>4.0}s {phase}] produce {:>9} msg/s {:>8.1} MB/s | consume {:>9} msg/s {:>8.1} MB/s | ack p50 {:.2} p99 {:.2} ms | e2e p99 {:.2} ms | errors {}",
                    acked - last_acked,
                    (acked - last_acked) as f64 * size / 1e6,
                    consumed - last_consumed,
                    (consumed - last_consumed) as f64 * size / 1e6,
                    ack_p50 as f64 / 1000.0,
                    ack_p99 as f64 / 1000.0,
                    e2e_p99 as f64 / 1000.0,
                    shared.errors.load(Ordering::Relaxed),
                );
                last_acked = acked;
                last_consumed = consumed;
            }
        })
    };

    for p in producers {
        p.await??;
    }
    // Let consumers catch up with everything acknowledged (at most 10 s).
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while a.consumers > 0
        && shared.consumed.load(Ordering::Relaxed) < shared.acked.load(Ordering::Relaxed)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.stop_consumers.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await??;
    }
    progress.abort();
    if let Some(meter) = cpu_meter {
        meter.await?;
    }
    report(&a, &shared);
    Ok(())
}

/// A message: the send time (µs since the start) in its first 8 bytes, then filler.
fn message(template: &[u8], sent_us: u64) -> Vec<u8> {
    let mut v = template.to_vec();
    v[..8].copy_from_slice(&sent_us.to_le_bytes());
    v
}

fn template(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

async fn produce(
    producer: Sender,
    index: usize,
    a: BenchArgs,
    shared: Arc<Shared>,
    end: Instant,
) -> anyhow::Result<()> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let tpl = template(a.message_size);
    // Sends in flight are futures of this one task (no task, no lock per message); each
    // completion is recorded here, into a histogram merged into the shared one at the end.
    let mut pending = FuturesUnordered::new();
    let mut ack = hist();
    let topic: Arc<str> = a.topic.as_str().into();
    let send = |intended: Instant| {
        let value = message(&tpl, shared.micros_since_start(intended));
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let (p, topic) = (producer.clone(), topic.clone());
        async move {
            let ok = p.send(&topic, value).await;
            (intended, ok)
        }
    };
    let mut done = |(intended, ok): (Instant, bool)| record_ack(&shared, &mut ack, intended, ok);
    // The native client answers through callbacks (no future per message in flight);
    // they record into this histogram.
    let native_ack = Arc::new(Mutex::new(hist()));
    let mut value = tpl.clone();
    if a.rate > 0 {
        // Fixed rate: a thread keeps time with the OS timer (tokio's timer works in whole
        // milliseconds, which would add up to a millisecond of lateness to every send)
        // and, about every 100 µs, tells this task how many messages are due; each is
        // sent with its own intended time without waiting for earlier sends, so a stall
        // shows in the latencies instead of slowing the sender.
        let interval = Duration::from_secs_f64(a.producers as f64 / a.rate as f64);
        let offset = interval.mul_f64(index as f64 / a.producers as f64);
        let total = (end
            .saturating_duration_since(shared.start + offset)
            .as_secs_f64()
            / interval.as_secs_f64())
        .ceil() as u64;
        let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let start = shared.start;
        std::thread::spawn(move || {
            let mut sent_due = 0u64;
            while sent_due < total {
                std::thread::sleep(Duration::from_micros(100));
                let elapsed = Instant::now().saturating_duration_since(start + offset);
                let due = ((elapsed.as_secs_f64() / interval.as_secs_f64()) as u64 + 1).min(total);
                if due > sent_due {
                    sent_due = due;
                    if due_tx.send(due).is_err() {
                        return;
                    }
                }
            }
        });
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                due = due_rx.recv() => match due {
                    Some(due) => {
                        while n < due {
                            let intended = shared.start + offset + interval.mul_f64(n as f64);
                            match &producer {
                                Sender::Native(p) => {
                                    send_native(p, &topic, &mut value, intended, &shared, &native_ack, None).await;
                                }
                                _ => pending.push(send(intended)),
                            }
                            n += 1;
                        }
                    }
                    None => break,
                },
                Some(r) = pending.next(), if !pending.is_empty() => done(r),
            }
        }
    } else if let Sender::Native(p) = &producer {
        // Max rate on the native client: a semaphore keeps MAX_INFLIGHT outstanding.
        let inflight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT));
        while Instant::now() < end {
            let permit = inflight.clone().acquire_owned().await?;
            let intended = Instant::now();
            send_native(
                p,
                &topic,
                &mut value,
                intended,
                &shared,
                &native_ack,
                Some(permit),
            )
            .await;
        }
    } else {
        // Max rate: keep up to MAX_INFLIGHT sends outstanding.
        while Instant::now() < end {
            while pending.len() >= MAX_INFLIGHT {
                if let Some(r) = pending.next().await {
                    done(r);
                }
            }
            pending.push(send(Instant::now()));
        }
    }
    while let Some(r) = pending.next().await {
        done(r);
    }
    // Closing waits for every send to be answered (the native client's callbacks too).
    producer.close().await?;
    shared.ack.lock().unwrap().add(&ack)?;
    shared
        .ack
        .lock()
        .unwrap()
        .add(&*native_ack.lock().unwrap())?;
    Ok(())
}

/// Sends one message through the native client, stamped with its intended send time;
/// its callback records the answer into `ack` and releases `permit`.
async fn send_native(
    p: &ringmq_client::Producer,
    topic: &str,
    value: &mut [u8],
    intended: Instant,
    shared: &Arc<Shared>,
    ack: &Arc<Mutex<Histogram<u64>>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    value[..8].copy_from_slice(&shared.micros_since_start(intended).to_le_bytes());
    shared.sent.fetch_add(1, Ordering::Relaxed);
    let (shared2, ack2) = (shared.clone(), ack.clone());
    let r = p
        .send_with(topic, None, value, &[], move |r| {
            drop(permit);
            record_ack(&shared2, &mut ack2.lock().unwrap(), intended, r.is_ok());
        })
        .await;
    if r.is_err() {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one send's answer: an error, or an acknowledgement whose latency from its
/// intended send time goes into the per-second histogram and, when it was sent in the
/// measured period, into `measured`.
fn record_ack(shared: &Shared, measured: &mut Histogram<u64>, intended: Instant, ok: bool) {
    if !ok {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let us = intended.elapsed().as_micros().max(1) as u64;
    shared.acked.fetch_add(1, Ordering::Relaxed);
    let _ = shared.ack_tick.lock().unwrap().record(us);
    if intended >= shared.measure_from {
        shared.acked_measured.fetch_add(1, Ordering::Relaxed);
        let _ = measured.record(us);
    }
}

async fn consume(mut receiver: Receiver, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut sent = Vec::new();
    while !shared.stop_consumers.load(Ordering::Relaxed) {
        sent.clear();
        receiver.poll(&mut sent).await?;
        let now = shared.micros_since_start(Instant::now());
        let mut h = shared.e2e.lock().unwrap();
        let mut tick = shared.e2e_tick.lock().unwrap();
        for &sent_us in &sent {
            shared.consumed.fetch_add(1, Ordering::Relaxed);
            let us = now.saturating_sub(sent_us).max(1);
            let _ = tick.record(us);
            if sent_us >= shared.micros_since_start(shared.measure_from) {
                shared.consumed_measured.fetch_add(1, Ordering::Relaxed);
                let _ = h.record(us);
            }
        }
    }
    Ok(())
}

fn report(a: &BenchArgs, shared: &Shared) {
    let secs = a.duration;
    let size = a.message_size as f64;
    let acked = shared.acked_measured.load(Ordering::Relaxed) as f64;
    let consumed = shared.consumed_measured.load(Ordering::Relaxed) as f64;
    let ack = shared.ack.lock().unwrap();
    let e2e = shared.e2e.lock().unwrap();
    let q = [0.5, 0.9, 0.99, 0.999, 0.9999];
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let lat_us = |h: &Histogram<u64>| {
        serde_json::json!({
            "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
            "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999),
            "p9999": h.value_at_quantile(0.9999), "max": h.max(),
        })
    };
    let summary = serde_json::json!({
        "produce": {
            "messages": acked as u64,
            "messages_per_sec": acked / secs,
            "bytes_per_sec": acked * size / secs,
            "ack_latency_us": lat_us(&ack),
        },
        "consume": {
            "messages": consumed as u64,
            "messages_per_sec": consumed / secs,
            "bytes_per_sec": consumed * size / secs,
        },
        "end_to_end_latency_us": lat_us(&e2e),
        "errors": shared.errors.load(Ordering::Relaxed),
        "broker": broker_cpu_json(a, shared, acked * size),
        "client": client_cpu_json(shared, acked * size),
        "workload": {
            "driver": a.driver, "topic": a.topic, "partitions": a.partitions, "producers": a.producers,
            "consumers": a.consumers, "message_size": a.message_size, "batch_bytes": a.batch_bytes,
            "linger_ms": a.linger_ms, "acks": a.acks, "rate": a.rate, "warmup": a.warmup,
            "duration": a.duration, "compression": a.compression,
        },
    });
    if let Some(path) = &a.html {
        let series = shared.series.lock().unwrap().clone();
        match std::fs::write(path, html_report(&summary, &series, &ack, &e2e)) {
            Ok(()) => eprintln!("report written to {}", path.display()),
            Err(e) => eprintln!("error: writing {}: {e}", path.display()),
        }
    }
    if a.json {
        println!("{summary}");
        return;
    }
    println!(
        "== ringmq bench ({} driver): topic {} ({} producer(s), {} consumer(s), {} B messages, rate {}), {:.0} s measured after {:.0} s warm-up",
        a.driver,
        a.topic,
        a.producers,
        a.consumers,
        a.message_size,
        if a.rate == 0 {
            "max".to_string()
        } else {
            format!("{}/s", a.rate)
        },
        a.duration,
        a.warmup
    );
    println!("{:<10} {:>12} {:>10}", "", "msgs/s", "MB/s");
    println!(
        "{:<10} {:>12.0} {:>10.1}",
        "produce",
        acked / secs,
        acked * size / secs / 1e6
    );
    println!(
        "{:<10} {:>12.0} {:>10.1}",
        "consume",
        consumed / secs,
        consumed * size / secs / 1e6
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    for (name, h) in [("produce ack", &*ack), ("end to end", &*e2e)] {
        if h.is_empty() {
            println!("{name:<22} (no samples)");
            continue;
        }
        print!("{name:<22}");
        for q in q {
            print!(" {:>8.2}", ms(h, q));
        }
        println!(" {:>8.2}", h.max() as f64 / 1000.0);
    }
    if let Some(cpu) = *shared.broker_cpu_secs.lock().unwrap() {
        println!(
            "broker CPU: {cpu:.2} s over the measured period, {:.2} s per GB produced",
            cpu / (acked * size / 1e9).max(f64::MIN_POSITIVE)
        );
    }
    if let Some(cpu) = *shared.client_cpu_secs.lock().unwrap() {
        println!(
            "client CPU: {cpu:.2} s over the measured period, {:.2} s per GB produced (this process: producers and consumers)",
            cpu / (acked * size / 1e9).max(f64::MIN_POSITIVE)
        );
    }
    let errors = shared.errors.load(Ordering::Relaxed);
    if errors > 0 {
        println!("errors: {errors} send(s) failed");
    }
}

/// The `broker` object of the JSON report: the CPU seconds the broker used during the
/// measured period and those seconds per GB (10^9 bytes) of message values produced and
/// acknowledged in it; each of those messages was also delivered to a consumer once.
fn broker_cpu_json(a: &BenchArgs, shared: &Shared, bytes_produced: f64) -> serde_json::Value {
    let mut v = cpu_json(*shared.broker_cpu_secs.lock().unwrap(), bytes_produced);
    if let Some(o) = v.as_object_mut() {
        o.insert("pids".into(), serde_json::json!(a.broker_pid));
    }
    v
}

/// The `client` object of the JSON report: this process's CPU seconds (its producers and
/// consumers) over the measured period, and per GB produced, as for the broker.
fn client_cpu_json(shared: &Shared, bytes_produced: f64) -> serde_json::Value {
    cpu_json(*shared.client_cpu_secs.lock().unwrap(), bytes_produced)
}

/// `{cpu_seconds, cpu_seconds_per_gb}`, or null when not measured.
fn cpu_json(cpu: Option<f64>, bytes_produced: f64) -> serde_json::Value {
    match cpu {
        Some(cpu) => serde_json::json!({
            "cpu_seconds": cpu,
            "cpu_seconds_per_gb": if bytes_produced > 0.0 {
                serde_json::json!(cpu / (bytes_produced / 1e9))
            } else {
                serde_json::Value::Null
            },
        }),
        None => serde_json::Value::Null,
    }
}

/// CPU seconds (user and system) this process has used so far.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU seconds (user and system) used so far by the processes `pids` and all their
/// descendants alive now, from /proc.
fn tree_cpu_secs(pids: &[u32]) -> f64 {
    // (pid, parent pid, user + system clock ticks) of every process.
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The fields after the command name, which is in parentheses and may hold
            // spaces: state, ppid, ... utime is field 14 of the line, stime field 15.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            procs.push((pid, num(1) as u32, num(11) + num(12)));
        }
    }
    let mut tree: Vec<u32> = pids.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|p| p.1 == parent && !tree.contains(&p.0))
                .map(|p| p.0)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    procs
        .iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| p.2 as f64)
        .sum::<f64>()
        / ticks_per_sec
}

/// A named, coloured line of a chart.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A self-contained HTML report: inline SVG charts, no scripts or external resources.
fn html_report(
    summary: &serde_json::Value,
    series: &[Sample],
    ack: &Histogram<u64>,
    e2e: &Histogram<u64>,
) -> String {
    let chart = |title: &str, unit: &str, lines: &[Line<'_>], log_x: bool| {
        let (w, h, pad) = (640.0, 240.0, 48.0);
        let xs = lines.iter().flat_map(|l| l.2.iter().map(|p| p.0));
        let ys = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1));
        let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let y1 = ys.fold(0.0f64, f64::max).max(1e-9) * 1.1;
        let sx = |x: f64| pad + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * pad);
        let sy = |y: f64| h - pad + -(y / y1) * (h - 2.0 * pad);
        let mut svg = format!(
            "<h3>{title}</h3><svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg' style='border:1px solid #ccc'>\
             <text x='4' y='14' font-size='11'>{y1:.1} {unit}</text><text x='4' y='{}' font-size='11'>0</text>",
            h - pad
        );
        for (i, (name, color, pts)) in lines.iter().enumerate() {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            svg += &format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\
                 <text x='{}' y='{}' font-size='12' fill='{color}'>{name}</text>",
                path.join(" "),
                w - 170.0,
                16.0 + 14.0 * i as f64
            );
        }
        let xlabel = if log_x {
            "percentile (1, 2, 3, 4 nines)"
        } else {
            "seconds"
        };
        svg += &format!(
            "<text x='{}' y='{}' font-size='11'>{xlabel}: {x0:.1} to {x1:.1}</text></svg>",
            pad,
            h - 8.0
        );
        svg
    };
    let rate = |f: fn(&Sample) -> u64| {
        series
            .iter()
            .map(|s| (s.t, f(s) as f64))
            .collect::<Vec<_>>()
    };
    let ms = |f: fn(&Sample) -> u64| {
        series
            .iter()
            .map(|s| (s.t, f(s) as f64 / 1000.0))
            .collect::<Vec<_>>()
    };
    let nines = |h: &Histogram<u64>| {
        [0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999]
            .iter()
            .map(|q| {
                (
                    -(1.0f64 - q).log10(),
                    h.value_at_quantile(*q) as f64 / 1000.0,
                )
            })
            .collect::<Vec<_>>()
    };
    let mut out = String::from(
        "<!doctype html><html><head><meta charset='utf-8'><title>ringmq bench</title>\
         <style>body{font-family:sans-serif;margin:24px}pre{background:#f4f4f4;padding:8px}</style>\
         </head><body><h1>ringmq bench</h1>",
    );
    out += &format!(
        "<h2>Summary</h2><pre>{}</pre>",
        serde_json::to_string_pretty(summary).unwrap_or_default()
    );
    out += &chart(
        "Throughput over time",
        "msg/s",
        &[
            ("produce", "#1f77b4", rate(|s| s.produce_msgs)),
            ("consume", "#ff7f0e", rate(|s| s.consume_msgs)),
        ],
        false,
    );
    out += &chart(
        "Latency over time (per second)",
        "ms",
        &[
            ("ack p50", "#2ca02c", ms(|s| s.ack_p50_us)),
            ("ack p99", "#d62728", ms(|s| s.ack_p99_us)),
            ("end-to-end p50", "#9467bd", ms(|s| s.e2e_p50_us)),
            ("end-to-end p99", "#8c564b", ms(|s| s.e2e_p99_us)),
        ],
        false,
    );
    out += &chart(
        "Latency distribution (measured phase)",
        "ms",
        &[
            ("produce ack", "#d62728", nines(ack)),
            ("end to end", "#8c564b", nines(e2e)),
        ],
        true,
    );
    out += "</body></html>\n";
    out
}
