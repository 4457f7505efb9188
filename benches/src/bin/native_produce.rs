//! Produce load against a running broker over the native protocol: throughput at max
//! rate, or ack latency at a fixed rate (latency counted from each request's intended
//! send time, so a stall cannot hide behind a slowed-down sender).
//!
//! Run by `benches/broker.sh`, which starts the broker and measures iperf3 and fio
//! beside it.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use ringmq_bench::{call, produce_frames, read_frame};
use ringmq_net::codec::{self, ApiKey, Request, Response};
use ringmq_storage::batch::{Record, encode_batch};

#[derive(Parser, Debug)]
#[command(about = "Produce load against a ringmq broker (native protocol)")]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:9093")]
    broker: SocketAddr,
    /// Topic (created if missing).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Partitions of the topic when created.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Record size in bytes.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per batch (one batch per produce request).
    #[arg(long, default_value_t = 64)]
    batch_records: usize,
    /// Connections (one thread each).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Records per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to measure (after warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Fixed rate: microseconds before each send time that the sender stops sleeping
    /// and spins (a sleeping thread wakes 50-100 µs late, which would be counted as the
    /// broker's latency); 0 sleeps to the send time.
    #[arg(long, default_value_t = 200)]
    spin_us: u64,
    /// durable (answered once durable) or none (answered on arrival: the latency without
    /// the storage path).
    #[arg(long, default_value = "durable", value_parser = ["durable", "none"])]
    acks: String,
    /// Each connection is bound to one shard (connection i to shard i mod shards, with
    /// the native `BindShard` request) and sends only to that shard's partitions, as a
    /// Kafka client sends each partition's requests to its leader: no request is
    /// forwarded between shards. Off: every connection sends to every partition in turn.
    #[arg(long)]
    shard_aware: bool,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// The partitions connection `index` sends to, in turn.
fn partitions_for(args: &Args, index: usize, s: &mut TcpStream) -> anyhow::Result<Vec<u32>> {
    let all: Vec<u32> = (0..args.partitions).collect();
    if !args.shard_aware {
        return Ok(all);
    }
    let shards: Vec<u32> = match call(
        s,
        &Request::DescribeTopic {
            name: args.topic.clone(),
        },
    )? {
        Response::Topic { partitions, .. } => partitions.iter().map(|p| p.shard).collect(),
        other => anyhow::bail!("describing {}: {other:?}", args.topic),
    };
    let count = shards.iter().max().map_or(1, |m| m + 1);
    let shard = index as u32 % count;
    match call(s, &Request::BindShard { shard })? {
        Response::Done(e) if e.is_ok() => {}
        other => anyhow::bail!("binding to shard {shard}: {other:?}"),
    }
    let on_shard: Vec<u32> = (0..args.partitions)
        .filter(|&p| shards.get(p as usize) == Some(&shard))
        .collect();
    eprintln!("connection {index}: shard {shard}, partitions {on_shard:?}");
    Ok(if on_shard.is_empty() { all } else { on_shard })
}

struct Outcome {
    hist: Histogram<u64>,
    /// Fixed rate: how late each request left after its intended send time.
    late: Histogram<u64>,
    bytes: u64,
    records: u64,
}

fn run_connection(
    args: &Args,
    index: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Outcome> {
    let mut s = TcpStream::connect(args.broker)?;
    s.set_nodelay(true)?;
    let mine = partitions_for(args, index, &mut s)?;
    let batch = Bytes::from(encode_batch(
        &(0..args.batch_records)
            .map(|i| Record {
                value: Some(vec![(i % 251) as u8; args.record_bytes.saturating_sub(8)]),
                timestamp_ms: 1,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    ));
    // The client must not be the bottleneck: encode each partition's request once.
    let mut frames: Vec<Vec<u8>> = produce_frames(
        &args.topic,
        args.partitions,
        &batch,
        u8::from(args.acks == "durable"),
    );
    let per_conn_rate = args.rate as f64 / args.connections as f64 / args.batch_records as f64;
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / per_conn_rate));
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut late = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut bytes, mut records) = (0u64, 0u64);
    let mut inflight: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut next_id = 0u32;
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        let can_send = now < end && inflight.len() < args.inflight;
        let intended = interval
            .map(|iv| start + iv.mul_f64(n as f64 + index as f64 / args.connections as f64));
        let due = intended.is_none_or(|t| t <= now);
        if can_send && due {
            let partition = mine[(n as usize + index) % mine.len()];
            // Pre-encoded per partition; only the request id changes (bytes 8..12).
            let frame = &mut frames[partition as usize];
            frame[8..12].copy_from_slice(&next_id.to_be_bytes());
            s.write_all(frame)?;
            if let Some(t) = intended
                && t >= measure_from
            {
                late.record(t.elapsed().as_micros() as u64)?;
            }
            inflight.push_back((next_id, intended.unwrap_or(now)));
            next_id = next_id.wrapping_add(1);
            n += 1;
            continue;
        }
        if inflight.is_empty() {
            if now >= end {
                break;
            }
            if let Some(t) = intended {
                // Sleep to just short of the send time, then spin (`--spin-us`).
                let left = t.saturating_duration_since(now);
                let spin = Duration::from_micros(args.spin_us);
                if left > spin {
                    std::thread::sleep((left - spin).min(Duration::from_millis(1)));
                } else {
                    std::hint::spin_loop();
                }
            }
            continue;
        }
        // Wait for the oldest answer (responses come in request order).
        let frame = read_frame(&mut s)?;
        let (id, resp) = codec::decode_response(ApiKey::Produce, frame)?;
        let (want, sent_at) = inflight.pop_front().expect("in flight");
        anyhow::ensure!(id == want, "response {id} for request {want}");
        match resp {
            Response::Produce(r) if r[0].error.is_ok() => {}
            other => anyhow::bail!("produce failed: {other:?}"),
        }
        if sent_at >= measure_from {
            hist.record(sent_at.elapsed().as_micros().max(1) as u64)?;
            bytes += batch.len() as u64;
            records += args.batch_records as u64;
        }
    }
    Ok(Outcome {
        hist,
        late,
        bytes,
        records,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut admin = TcpStream::connect(args.broker)?;
    match call(
        &mut admin,
        &Request::CreateTopic {
            name: args.topic.clone(),
            partitions: args.partitions,
            configs: vec![],
            replication_factor: None,
        },
    )? {
        Response::Done(e) if e.is_ok() || e.code == codec::ErrorCode::TopicExists => {}
        other => anyhow::bail!("creating topic: {other:?}"),
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let outcomes: Vec<anyhow::Result<Outcome>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..args.connections)
            .map(|i| {
                let args = &args;
                sc.spawn(move || run_connection(args, i, start, measure_from, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut late = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut bytes, mut records) = (0u64, 0u64);
    for o in outcomes {
        let o = o?;
        hist.add(o.hist)?;
        late.add(o.late)?;
        bytes += o.bytes;
        records += o.records;
    }
    let secs = args.duration;
    let p = ringmq_bench::percentiles_us(&hist);
    if args.json {
        let lat = ringmq_bench::percentiles_json(&hist);
        println!(
            "{}",
            serde_json::json!({
                "records_per_sec": records as f64 / secs,
                "bytes_per_sec": bytes as f64 / secs,
                "ack_latency_us": lat,
                "send_late_us": ringmq_bench::percentiles_json(&late),
                "rate": args.rate,
                "connections": args.connections,
                "inflight": args.inflight,
                "batch_records": args.batch_records,
                "record_bytes": args.record_bytes,
            })
        );
    } else {
        let fmt = |p: [(&str, u64); 5]| {
            p.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:.0} records/s, {:.1} MB/s, ack latency us {}",
            records as f64 / secs,
            bytes as f64 / secs / 1e6,
            fmt(p)
        );
        if args.rate > 0 {
            println!(
                "sends after their intended time, us {}",
                fmt(ringmq_bench::percentiles_us(&late))
            );
        }
    }
    Ok(())
}
