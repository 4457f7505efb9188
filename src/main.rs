//! `ringmq`: one binary with subcommands. Thin wiring only: the work is in the crates.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::{Parser, Subcommand};
use ringmq_storage::{LogConfig, PartitionLog, SegmentCache};

mod admin;
mod cluster;
mod dev;
mod group;
mod serve;
mod tools;
mod top;
mod tune;

#[derive(Parser)]
#[command(
    name = "ringmq",
    version,
    about = "A durable, partitioned message log: thread-per-core on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: one shard per core, native protocol listener, data under
    /// --data-dir. Stops cleanly on SIGINT or SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// Inspect a partition directory offline: recover it (as the broker does at
    /// start) and print its offsets, segments and what recovery did.
    Log {
        /// The partition directory (e.g. ./data/orders-0).
        dir: PathBuf,
        /// Also print every batch, one line each: base offset, last offset, leader
        /// epoch, CRC (to compare replicas' logs).
        #[arg(long)]
        batches: bool,
    },
    /// Create, delete, list and describe topics.
    Topic {
        #[command(flatten)]
        broker: tools::BrokerArgs,
        #[command(subcommand)]
        command: tools::TopicCommand,
    },
    /// Write records read from standard input, one per line; prints a summary on
    /// standard error.
    Produce {
        #[command(flatten)]
        broker: tools::BrokerArgs,
        #[command(flatten)]
        args: tools::ProduceArgs,
    },
    /// Load generator: producers at a fixed or maximum rate, consumers, a progress line
    /// each second, and a report of rates and latency percentiles (produce ack and end
    /// to end) after the warm-up.
    Bench(Box<ringmq_bench::load::BenchArgs>),
    /// Consumer groups: list, describe (members, assignments, committed offsets, lag),
    /// reset offsets, delete. Speaks to the broker's Kafka listener (--kafka).
    Group {
        #[command(flatten)]
        kafka: group::KafkaArgs,
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Kernel tuning for a broker host: check, apply or revert a profile (throughput,
    /// latency, balanced) of sysctls, sysfs settings, NIC rings and coalescing, NIC-queue
    /// interrupt affinity to the shards' cores, and limits. The profiles are also plain
    /// files under tuning/profiles/.
    Tune {
        #[command(flatten)]
        args: tune::TuneArgs,
        #[command(subcommand)]
        command: tune::TuneCommand,
    },
    /// A local cluster for development: N `ringmq serve` nodes on 127.0.0.1, data
    /// under ./data/nodeN; prints the bootstrap addresses; Ctrl-C stops them all.
    Dev(dev::DevArgs),
    /// Cluster tools: the certificates nodes authenticate each other with, and the
    /// cluster's state.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// The broker's live figures in the terminal, read from its admin listener's
    /// /metrics: produce and fetch rates, ack latency, topics, consumer group lag, shards.
    Top(top::TopArgs),
    /// Read records and print them, one per line (text) or one JSON object per record.
    Consume {
        #[command(flatten)]
        broker: tools::BrokerArgs,
        #[command(flatten)]
        args: tools::ConsumeArgs,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: the command ran and says the answer is no (`tune check` found differences).
fn run() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Serve(a) => serve::log_level(a),
        Command::Log { .. } => "info".to_string(),
        _ => "warn".to_string(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Tune { args, command } = cli.command {
        return tune::tune(args, command);
    }
    match cli.command {
        Command::Tune { .. } => unreachable!("handled above"),
        Command::Serve(a) => serve::serve(*a),
        Command::Log { dir, batches } => inspect_log(dir, batches),
        Command::Topic { broker, command } => tools::topic(broker, command),
        Command::Produce { broker, args } => tools::produce(broker, args),
        Command::Consume { broker, args } => tools::consume(broker, args),
        Command::Group { kafka, command } => group::group(kafka, command),
        Command::Cluster { command } => cluster::cluster(command),
        Command::Dev(args) => dev::dev(args),
        Command::Top(args) => top::run(args),
        Command::Bench(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(ringmq_bench::load::run(*args)),
    }
    .map(|()| true)
}

fn inspect_log(dir: PathBuf, batches: bool) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let out = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("ringmq-log")
        .spawn(move || async move {
            let started = Instant::now();
            let log = PartitionLog::open(&dir, LogConfig::default(), SegmentCache::new(16)).await?;
            let r = log.recovery_report().clone();
            let text = format!(
                "directory       {}\nstart offset    {}\nend offset      {}\nsegments        {}\nsize            {} bytes\nclean shutdown  {}\nscanned         {} segment(s) in {:?}\ntruncated       {} bytes{}\n",
                log.dir().display(),
                log.start_offset(),
                log.end_offset(),
                log.segment_count(),
                log.size_bytes(),
                r.clean_shutdown,
                r.segments_scanned,
                started.elapsed(),
                r.truncated_bytes,
                r.truncation_reason.map(|w| format!(" ({w})")).unwrap_or_default(),
            );
            let mut text = text;
            if batches {
                text.push_str("batches         base_offset last_offset leader_epoch crc\n");
                let mut offset = log.start_offset();
                let end = log.end_offset();
                while offset < end {
                    let r = log.read(offset, 1 << 20, end).await?;
                    let bytes = r.to_bytes().await?;
                    let mut at = 0usize;
                    let mut last = offset;
                    while let Some((_, size)) = ringmq_storage::batch::peek_frame(&bytes[at..]) {
                        if at + size > bytes.len() {
                            break;
                        }
                        let b = &bytes[at..at + size];
                        let info = ringmq_storage::batch::parse_header(b)?;
                        text.push_str(&format!(
                            "batch {} {} {} {:08x}\n",
                            info.base_offset,
                            info.last_offset(),
                            info.leader_epoch,
                            ringmq_storage::batch::compute_crc(b)
                        ));
                        last = info.next_offset();
                        at += size;
                    }
                    if last <= offset {
                        break;
                    }
                    offset = last;
                }
            }
            log.close().await?;
            anyhow::Ok(text)
        })
        .map_err(|e| anyhow::anyhow!("starting an executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("executor thread: {e}"))??;
    print!("{out}");
    Ok(())
}
