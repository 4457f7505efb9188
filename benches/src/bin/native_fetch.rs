//! Fetch throughput against a running broker over the native protocol, and what the
//! broker copied through user space to send it.
//!
//! Three steps, each its own invocation so `benches/fetch.sh` can restart the broker
//! and evict the page cache between them:
//! * `load`: creates the topic and produces `--bytes` of 1 KiB records in large batches;
//! * `evict DIR`: drops every file under DIR from the page cache (posix_fadvise
//!   DONTNEED; no root needed), so the next fetch reads from the disk;
//! * `fetch`: one connection per partition fetches everything from offset 0, checking
//!   every batch's CRC, and prints MB/s with the broker's send counters (BrokerStats)
//!   before and after.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use ringmq_bench::{call, produce_frames, read_frame};
use ringmq_net::codec::{self, FetchPartition, Request, Response};
use ringmq_storage::batch::{self, Record, encode_batch};

#[derive(Parser, Debug)]
#[command(about = "Fetch throughput against a ringmq broker (native protocol)")]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:9093")]
    broker: SocketAddr,
    /// Topic.
    #[arg(long, default_value = "fetch-bench")]
    topic: String,
    /// Partitions (created with the topic by `load`).
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Create the topic and produce `--bytes` spread over its partitions.
    Load {
        /// Bytes to produce in all.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// Records per batch (1 KiB records).
        #[arg(long, default_value_t = 512)]
        batch_records: usize,
    },
    /// Evict every file under a directory from the page cache.
    Evict {
        /// Directory.
        dir: PathBuf,
    },
    /// Fetch every partition from offset 0 to its end; one JSON object on stdout.
    Fetch {
        /// Max bytes per partition per fetch request.
        #[arg(long, default_value_t = 1 << 20)]
        max_bytes: u32,
    },
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn load(args: &Args, bytes: u64, batch_records: usize) -> anyhow::Result<()> {
    let mut s = connect(args.broker)?;
    match call(
        &mut s,
        &Request::CreateTopic {
            name: args.topic.clone(),
            partitions: args.partitions,
            configs: vec![],
            replication_factor: None,
        },
    )? {
        Response::Done(e) if e.is_ok() => {}
        other => bail!("creating topic: {other:?}"),
    }
    let batch = Bytes::from(encode_batch(
        &(0..batch_records)
            .map(|i| Record {
                value: Some(vec![(i % 251) as u8; 1016]),
                timestamp_ms: 1,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    ));
    let frames: Vec<Vec<u8>> = produce_frames(&args.topic, args.partitions, &batch, 1);
    let batches = bytes.div_ceil(batch.len() as u64);
    let inflight = 8u64;
    let started = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < batches {
        while sent < batches && sent - done < inflight {
            s.write_all(&frames[(sent % u64::from(args.partitions)) as usize])?;
            sent += 1;
        }
        match codec::decode_response(codec::ApiKey::Produce, read_frame(&mut s)?)?.1 {
            Response::Produce(r) if r.iter().all(|p| p.error.is_ok()) => done += 1,
            other => bail!("produce failed: {other:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "loaded {} MB in {batches} batches ({:.0} MB/s)",
        batches * batch.len() as u64 / 1_000_000,
        (batches * batch.len() as u64) as f64 / secs / 1e6
    );
    Ok(())
}

fn evict(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            n += evict(&path)?;
        } else if let Ok(f) = std::fs::File::open(&path) {
            // SAFETY: advice on a descriptor we hold open.
            let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if r != 0 {
                bail!("posix_fadvise on {}: error {r}", path.display());
            }
            n += 1;
        }
    }
    Ok(n)
}

fn stats(addr: SocketAddr) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut s = connect(addr)?;
    match call(&mut s, &Request::BrokerStats)? {
        Response::Stats(v) => Ok(v.into_iter().map(|(k, v)| (k, v.into())).collect()),
        other => bail!("broker stats: {other:?}"),
    }
}

fn high_watermark(s: &mut TcpStream, topic: &str, partition: u32) -> anyhow::Result<i64> {
    match call(
        s,
        &Request::ListOffsets {
            partitions: vec![(topic.into(), partition, codec::OFFSET_LATEST)],
        },
    )? {
        Response::Offsets(v) if v[0].2.is_ok() => Ok(v[0].3),
        other => bail!("list offsets: {other:?}"),
    }
}

/// Fetches one partition from 0 to its end, checking every batch; returns bytes.
fn fetch_partition(args: &Args, partition: u32, max_bytes: u32) -> anyhow::Result<u64> {
    let mut s = connect(args.broker)?;
    let end = high_watermark(&mut s, &args.topic, partition)?;
    let (mut offset, mut bytes) = (0i64, 0u64);
    while offset < end {
        let r = match call(
            &mut s,
            &Request::Fetch {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes,
                partitions: vec![FetchPartition {
                    topic: args.topic.clone(),
                    partition,
                    offset,
                    max_bytes,
                }],
            },
        )? {
            Response::Fetch(mut r) => r.remove(0),
            other => bail!("fetch: {other:?}"),
        };
        if !r.error.is_ok() {
            bail!("fetch partition {partition} at {offset}: {:?}", r.error);
        }
        let records = r
            .records
            .in_memory()
            .expect("decoded records are in memory");
        if records.is_empty() {
            bail!("fetch partition {partition} at {offset}: no data before the end {end}");
        }
        let mut pos = 0;
        while pos < records.len() {
            let (_, size) = batch::peek_frame(&records[pos..]).context("truncated batch")?;
            let b = &records[pos..pos + size];
            if !batch::crc_matches(b) {
                bail!("partition {partition}: batch at offset {offset} fails its CRC");
            }
            offset = batch::parse_header(b)?.next_offset();
            pos += size;
        }
        bytes += records.len() as u64;
    }
    Ok(bytes)
}

fn fetch(args: &Args, max_bytes: u32) -> anyhow::Result<()> {
    let before = stats(args.broker)?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<u64>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..args.partitions)
            .map(|p| sc.spawn(move || fetch_partition(args, p, max_bytes)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    let after = stats(args.broker)?;
    let delta = |k: &str| {
        after.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
            - before.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
    };
    // Record bytes that passed through the broker's user-space memory: file data read
    // and written by the copy path, and tail-cache data copied into response frames.
    let copied = delta("send_file_bytes_copied") + delta("fetch_records_memory_bytes");
    let out = serde_json::json!({
        "bytes": bytes,
        "seconds": secs,
        "mb_per_sec": bytes as f64 / secs / 1e6,
        "spliced_bytes": delta("send_file_bytes_spliced"),
        "copied_file_bytes": delta("send_file_bytes_copied"),
        "memory_bytes": delta("fetch_records_memory_bytes"),
        "user_space_bytes_per_byte": copied as f64 / bytes.max(1) as f64,
    });
    println!("{out}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.step {
        Step::Load {
            bytes,
            batch_records,
        } => load(&args, *bytes, *batch_records),
        Step::Evict { dir } => {
            let n = evict(dir)?;
            eprintln!(
                "evicted {n} files under {} from the page cache",
                dir.display()
            );
            Ok(())
        }
        Step::Fetch { max_bytes } => fetch(&args, *max_bytes),
    }
}
