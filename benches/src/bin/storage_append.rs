//! Append throughput and append-to-durable latency of `PartitionLog` on one shard.
//!
//! Two modes:
//! * `throughput`: one partition, batches of `--batch-bytes` made of 1 KiB records,
//!   each append waiting for its fdatasync (`every_batch`). With one appender (the
//!   default) this is the same work as `fio --rw=write --direct=1 --fdatasync=1
//!   --bs=<batch>`; with more, appends in flight share fdatasyncs (group commit).
//! * `latency`: `--partitions N` partitions with `--appenders-per-partition K` tasks
//!   each, all on one shard; reports appends/s, syncs per append and the latency from
//!   the call to `append` until it returns (durable).
//!
//! Run by `benches/storage.sh`, which puts fio beside it.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Parser, ValueEnum};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringmq_storage::batch::{Record, encode_batch};
use ringmq_storage::{IoMode, LogConfig, PartitionLog, SegmentCache};

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Mode {
    Throughput,
    Latency,
}

#[derive(Parser, Debug)]
#[command(about = "Append throughput and append-to-durable latency of the partition log")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    /// Directory for the partitions (removed at the end).
    #[arg(long, default_value = "./bench-data")]
    dir: PathBuf,
    /// Batch size in bytes (1 KiB records).
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Partitions appended to concurrently (latency mode).
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// Concurrent appenders per partition (appends in flight, as a producer with
    /// several requests in flight has).
    #[arg(long, default_value_t = 1)]
    appenders_per_partition: usize,
    /// direct or buffered writes.
    #[arg(long, default_value = "direct")]
    io_mode: String,
    /// CPU to pin the shard to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Preallocation step of the active segment, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    preallocate_step_bytes: u64,
    /// The shard spins this long for new I/O completions before it parks (glommio
    /// `spin_before_park`); 0 parks at once.
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

const RECORD_BYTES: usize = 1024;

fn make_batch(batch_bytes: usize) -> Vec<u8> {
    // 1 KiB records: value sized so that each encoded record is about 1 KiB.
    let n = (batch_bytes / RECORD_BYTES).max(1);
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            key: None,
            value: Some(vec![(i % 251) as u8; RECORD_BYTES - 8]),
            headers: Vec::new(),
            timestamp_ms: 1,
        })
        .collect();
    encode_batch(&records)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let io_mode: IoMode = args.io_mode.parse().map_err(anyhow::Error::msg)?;
    let dir = args.dir.clone();
    std::fs::create_dir_all(&dir)?;
    let result = LocalExecutorBuilder::new(Placement::Fixed(args.cpu))
        .name("bench-shard")
        .spin_before_park(Duration::from_micros(args.spin_us))
        .spawn(move || async move { run(args, io_mode).await })
        .map_err(|e| anyhow::anyhow!("starting the shard: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("shard thread: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(args: Args, io_mode: IoMode) -> anyhow::Result<()> {
    let batch = Rc::new(make_batch(args.batch_bytes));
    let cache = SegmentCache::new(64);
    let config = LogConfig {
        io_mode,
        retention_ms: None,
        message_bytes_max: 4 << 20,
        preallocate_step_bytes: args.preallocate_step_bytes,
        write_buffer_bytes_max: 64 << 20,
        ..LogConfig::default()
    };
    let parts = match args.mode {
        Mode::Throughput => 1,
        Mode::Latency => args.partitions,
    };
    let appenders = args.appenders_per_partition;
    let mut logs = Vec::new();
    for p in 0..parts {
        let dir = args.dir.join(format!("bench-{p}"));
        let _ = std::fs::remove_dir_all(&dir);
        logs.push(PartitionLog::open(dir, config.clone(), cache.clone()).await?);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for log in &logs {
        for _ in 0..appenders {
            let log = log.clone();
            let batch = batch.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut h =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let mut bytes = 0u64;
                // The appender's next batch is made (a copy of the template, as a
                // producer's buffer would be) while the current append's I/O is in
                // flight, so the benchmark's own copy is not on the measured path.
                let mut next = BytesMut::from(&batch[..]);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let append = glommio::spawn_local({
                        let log = log.clone();
                        let buf = std::mem::take(&mut next);
                        async move { log.append(buf).await }
                    });
                    // Let the append run up to its first I/O wait, then copy.
                    futures_lite::future::yield_now().await;
                    next = BytesMut::from(&batch[..]);
                    append.await?;
                    h.record(t.elapsed().as_micros().max(1) as u64).ok();
                    bytes += batch.len() as u64;
                }
                anyhow::Ok((h, bytes))
            }));
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut bytes = 0u64;
    for t in tasks {
        let (h, b) = t.await?;
        hist.add(h)?;
        bytes += b;
    }
    let secs = started.elapsed().as_secs_f64();
    let (mut appends, mut syncs) = (0u64, 0u64);
    for log in &logs {
        let s = log.stats();
        appends += s.appends;
        syncs += s.syncs;
        log.close().await?;
    }
    let mbps = bytes as f64 / secs / 1e6;
    let p = ringmq_bench::percentiles_us(&hist);
    if args.json {
        let lat = ringmq_bench::percentiles_json(&hist);
        println!(
            "{}",
            serde_json::json!({
                "mode": format!("{:?}", args.mode).to_lowercase(),
                "io_mode": args.io_mode,
                "batch_bytes": batch.len(),
                "partitions": parts,
                "appenders_per_partition": appenders,
                "seconds": secs,
                "appends_per_sec": appends as f64 / secs,
                "bytes_per_sec": bytes as f64 / secs,
                "syncs_per_append": syncs as f64 / appends.max(1) as f64,
                "append_latency_us": lat,
            })
        );
    } else {
        println!(
            "{:?} io={} batch={}B partitions={} appenders/partition={}: {:.0} appends/s, {:.1} MB/s, {:.3} syncs/append, latency us {}",
            args.mode,
            args.io_mode,
            batch.len(),
            parts,
            appenders,
            appends as f64 / secs,
            mbps,
            syncs as f64 / appends.max(1) as f64,
            p.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
