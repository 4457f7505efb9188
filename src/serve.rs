//! `ringmq serve`: one shard per core, each a pinned glommio executor with its own
//! SO_REUSEPORT listener. Settings: defaults < `--config FILE` < `RINGMQ_*` < flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use glommio::{LocalExecutorBuilder, Placement};
use ringmq_kafka::{KafkaOptions, KafkaService};
use ringmq_net::conn::{
    ConnEnd, ConnLimits, MemoryBudget, Native, Service, serve_connection, serve_handed_over,
};
use ringmq_shard::broker::{Shard, ShardOptions, links};
use ringmq_shard::groups::{
    GROUP_MAX_SIZE_DEFAULT, GROUP_PENDING_MEMBERS_MAX_DEFAULT, GROUPS_MAX_DEFAULT, GroupLimits,
};
use ringmq_shard::topics::TopicTable;
use ringmq_storage::LogConfig;
use serde::Deserialize;

/// Flags of `ringmq serve`. Every setting can also come from `RINGMQ_<NAME>` and from
/// the TOML file given with `--config`.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Data directory [default: ./data]
    #[arg(long, env = "RINGMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Native protocol listen address [default: 127.0.0.1:9093]
    #[arg(long, env = "RINGMQ_NATIVE_LISTEN")]
    native_listen: Option<SocketAddr>,
    /// Kafka protocol listen address; "off" disables the Kafka listener
    /// [default: 127.0.0.1:9092]
    #[arg(long, env = "RINGMQ_KAFKA_LISTEN")]
    kafka_listen: Option<String>,
    /// Admin HTTP listen address (Prometheus metrics at /metrics, JSON API under /v1/);
    /// "off" disables it. When the default address is busy the broker starts without it
    /// (with a warning); an address given here must be free [default: 127.0.0.1:9644]
    #[arg(long, env = "RINGMQ_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// HOST:PORT that Kafka Metadata responses tell clients to connect to
    /// [default: the Kafka listen address]
    #[arg(long, env = "RINGMQ_KAFKA_ADVERTISE")]
    kafka_advertise: Option<String>,
    /// Create a topic when a Kafka client produces to it or asks for its metadata
    /// (Kafka's auto.create.topics.enable) [default: true]
    #[arg(long, env = "RINGMQ_AUTO_CREATE_TOPICS", action = clap::ArgAction::Set)]
    auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics and of Kafka CreateTopics with -1 (Kafka's
    /// num.partitions) [default: 1]
    #[arg(long, env = "RINGMQ_DEFAULT_PARTITIONS")]
    default_partitions: Option<u32>,
    /// How long an empty consumer group waits for more members before its first
    /// rebalance completes, ms (Kafka's group.initial.rebalance.delay.ms) [default: 3000]
    #[arg(long, env = "RINGMQ_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<u64>,
    /// Compact a shard's group log (committed offsets) once it is larger than this many
    /// bytes and four times its last snapshot; in a cluster, a partition of
    /// __consumer_offsets once this many bytes were written to it since its last
    /// snapshot (and four times that snapshot) [default: 16777216]
    #[arg(long, env = "RINGMQ_GROUP_LOG_COMPACT_BYTES")]
    group_log_compact_bytes: Option<u64>,
    /// Consumer groups one shard holds at most (groups with members or with member ids
    /// handed out; those known only by committed offsets do not count). A join that
    /// would create one more is refused with a retriable error (Kafka:
    /// COORDINATOR_NOT_AVAILABLE) and a warning in the log [default: 100000]
    #[arg(long, env = "RINGMQ_GROUPS_MAX")]
    groups_max: Option<usize>,
    /// Members one consumer group has at most (Kafka's group.max.size); a member past
    /// it is refused with GROUP_MAX_SIZE_REACHED [default: 1000]
    #[arg(long, env = "RINGMQ_GROUP_MAX_SIZE")]
    group_max_size: Option<usize>,
    /// Member ids one consumer group has handed out (MEMBER_ID_REQUIRED) and not yet
    /// seen join, at most; a first join past it is refused with a retriable error
    /// (Kafka: COORDINATOR_NOT_AVAILABLE). Unjoined ids expire after 5 minutes
    /// [default: 1000]
    #[arg(long, env = "RINGMQ_GROUP_PENDING_MEMBERS_MAX")]
    group_pending_members_max: Option<usize>,
    /// TOML file with any of these settings (keys as the flags, with _ for -)
    #[arg(long, env = "RINGMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Run shards on the first N online cores [default: all online cores]
    #[arg(long, env = "RINGMQ_SHARDS")]
    shards: Option<usize>,
    /// Run shards on these cores, e.g. 0,2 (overrides --shards)
    #[arg(long, env = "RINGMQ_CPUS", value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Log level: error, warn, info, debug, trace (RUST_LOG takes precedence) [default: info]
    #[arg(long, env = "RINGMQ_LOG_LEVEL")]
    log_level: Option<String>,
    /// Default segment size of new topics, bytes [default: 1073741824]
    #[arg(long, env = "RINGMQ_SEGMENT_BYTES")]
    segment_bytes: Option<u64>,
    /// Default retention of new topics, ms; -1 keeps forever [default: 604800000]
    #[arg(long, env = "RINGMQ_RETENTION_MS", allow_hyphen_values = true)]
    retention_ms: Option<i64>,
    /// Default flush policy: every_batch | interval_ms:N | bytes:N | never [default: every_batch]
    #[arg(long, env = "RINGMQ_FLUSH")]
    flush: Option<String>,
    /// Largest batch accepted, bytes [default: 1048588]
    #[arg(long, env = "RINGMQ_MESSAGE_BYTES_MAX")]
    message_bytes_max: Option<usize>,
    /// Bytes of appends a partition queues while its previous write and sync run;
    /// further appends wait, in arrival order (at least --message-bytes-max)
    /// [default: 8388608]
    #[arg(long, env = "RINGMQ_WRITE_BUFFER_BYTES_MAX")]
    write_buffer_bytes_max: Option<usize>,
    /// Requests in flight per connection [default: 64]
    #[arg(long, env = "RINGMQ_INFLIGHT_MAX")]
    inflight_max: Option<usize>,
    /// Per-shard memory for requests read but not yet answered, bytes [default: 268435456]
    #[arg(long, env = "RINGMQ_REQUEST_MEMORY_BYTES_MAX")]
    request_memory_bytes_max: Option<usize>,
    /// Close connections idle this long, ms; 0 never [default: 600000]
    #[arg(long, env = "RINGMQ_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// Connections one shard serves at once, native and Kafka together; a new one past
    /// it is closed at once (logged) [default: 50000]
    #[arg(long, env = "RINGMQ_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// `min.insync.replicas` of topics that do not set it: a produce with acks=all
    /// (-1) is refused with NOT_ENOUGH_REPLICAS while fewer replicas are in sync (a
    /// single node has one) [default: 1]
    #[arg(long, env = "RINGMQ_MIN_INSYNC_REPLICAS")]
    min_insync_replicas: Option<i32>,
    /// Per-shard memory for acks=0 batches being appended, bytes: a client that sends
    /// more waits until earlier ones are on the log [default: 67108864]
    #[arg(long, env = "RINGMQ_ACKS_NONE_BYTES_MAX")]
    acks_none_bytes_max: Option<u64>,
    /// A request part forwarded to another shard gets Unavailable after this long, ms
    /// (plus a fetch's max wait) [default: 30000]
    #[arg(long, env = "RINGMQ_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Send fetched data that is on disk file → socket without a copy through user space
    /// (splice on a second io_uring ring per shard); false copies through memory
    /// [default: true]
    #[arg(long, env = "RINGMQ_ZERO_COPY", action = clap::ArgAction::Set)]
    zero_copy: Option<bool>,
    /// Send each new connection to the shard on the core that received its packets (a
    /// BPF program on the listeners' SO_REUSEPORT group reading the receiving CPU, as
    /// SO_INCOMING_CPU reports it); false lets the kernel spread connections by hash.
    /// Pair it with `ringmq tune apply`, which pins each NIC queue's interrupt to a
    /// shard's core [default: true]
    #[arg(long, env = "RINGMQ_STEER_CONNECTIONS", action = clap::ArgAction::Set)]
    steer_connections: Option<bool>,
    /// Microseconds a shard with nothing to do keeps polling before it sleeps: fewer
    /// sleep/wake cycles (each costs a context switch, dear in a VM)
    /// for lower latency under light load, paid in CPU while idle; 0 sleeps at once
    /// [default: 0]
    #[arg(long, env = "RINGMQ_SPIN_BEFORE_PARK_US")]
    spin_before_park_us: Option<u64>,
    /// Microseconds a shard polls for the completion of a segment write or fdatasync it
    /// is waiting for, instead of sleeping until the disk's interrupt wakes it: the
    /// acknowledgement leaves as soon as the write is durable, without a wake-up across
    /// cores in between. Costs CPU only while such I/O is in flight (an idle shard
    /// sleeps as before); between polls the shard runs its other work and yields the
    /// core to the kernel. 0 never polls [default: 1000]
    #[arg(long, env = "RINGMQ_DISK_POLL_US")]
    disk_poll_us: Option<u64>,
    /// This node's id in a cluster (with --voters); without --voters the broker is a
    /// single node and this is ignored
    #[arg(long, env = "RINGMQ_NODE_ID")]
    node_id: Option<i32>,
    /// The controller quorum, every node of the cluster a voter: `1@host:port,2@...`,
    /// each node's cluster listener. Turns the broker into a cluster node
    #[arg(long, env = "RINGMQ_VOTERS")]
    voters: Option<String>,
    /// This node's cluster listener (node-to-node replication and controller traffic)
    /// [default: this node's address in --voters]
    #[arg(long, env = "RINGMQ_CLUSTER_LISTEN")]
    cluster_listen: Option<SocketAddr>,
    /// Node-to-node transport: quic or tcp, both with mutual TLS [default: quic]
    #[arg(long, env = "RINGMQ_CLUSTER_TRANSPORT")]
    cluster_transport: Option<String>,
    /// Directory with the cluster CA and this node's certificate (`ca.pem`,
    /// `node-N.pem`, `node-N.key`), as `ringmq cluster init-certs` writes them
    /// [default: <data-dir>/../certs]
    #[arg(long, env = "RINGMQ_CLUSTER_CERTS")]
    cluster_certs: Option<PathBuf>,
    /// A node silent this long is fenced by the controller and its partitions get new
    /// leaders from their in-sync replicas, ms [default: 6000]
    #[arg(long, env = "RINGMQ_NODE_SESSION_TIMEOUT_MS")]
    node_session_timeout_ms: Option<u64>,
    /// Kafka's replica.lag.time.max.ms: an in-sync follower that has not caught up for
    /// this long leaves the ISR, ms [default: 10000]
    #[arg(long, env = "RINGMQ_REPLICA_LAG_TIME_MAX_MS")]
    replica_lag_time_max_ms: Option<u64>,
    /// Replicas of a new topic's partitions when the request does not say [default: 1]
    #[arg(long, env = "RINGMQ_DEFAULT_REPLICATION_FACTOR")]
    default_replication_factor: Option<u16>,
}

/// A cluster node's settings (`--voters` given).
#[derive(Debug, Clone)]
struct ClusterSettings {
    me: i32,
    voters: std::collections::BTreeMap<i32, SocketAddr>,
    listen: SocketAddr,
    transport: ringmq_cluster::TransportKind,
    certs: PathBuf,
    session_timeout: Duration,
    default_replication_factor: u16,
}

/// Parses `1@host:port,2@host:port`.
fn parse_voters(text: &str) -> anyhow::Result<std::collections::BTreeMap<i32, SocketAddr>> {
    let mut voters = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('@')
            .with_context(|| format!("--voters: {part:?} is not id@host:port"))?;
        let id: i32 = id
            .parse()
            .with_context(|| format!("--voters: {id:?} is not a node id"))?;
        if id < 0 {
            bail!("--voters: node ids are 0 or more ({id})");
        }
        let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .with_context(|| format!("--voters: {addr:?} is not host:port"))?
            .next()
            .with_context(|| format!("--voters: {addr:?} resolves to no address"))?;
        if voters.insert(id, addr).is_some() {
            bail!("--voters names node {id} twice");
        }
    }
    if voters.is_empty() {
        bail!("--voters names no node");
    }
    Ok(voters)
}

/// The same settings as the TOML file spells them.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    native_listen: Option<SocketAddr>,
    kafka_listen: Option<String>,
    admin_listen: Option<String>,
    kafka_advertise: Option<String>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<u32>,
    group_initial_rebalance_delay_ms: Option<u64>,
    group_log_compact_bytes: Option<u64>,
    groups_max: Option<usize>,
    group_max_size: Option<usize>,
    group_pending_members_max: Option<usize>,
    shards: Option<usize>,
    cpus: Option<Vec<usize>>,
    log_level: Option<String>,
    segment_bytes: Option<u64>,
    retention_ms: Option<i64>,
    flush: Option<String>,
    message_bytes_max: Option<usize>,
    write_buffer_bytes_max: Option<usize>,
    inflight_max: Option<usize>,
    request_memory_bytes_max: Option<usize>,
    idle_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    min_insync_replicas: Option<i32>,
    acks_none_bytes_max: Option<u64>,
    connections_max: Option<usize>,
    zero_copy: Option<bool>,
    steer_connections: Option<bool>,
    spin_before_park_us: Option<u64>,
    disk_poll_us: Option<u64>,
    node_id: Option<i32>,
    voters: Option<String>,
    cluster_listen: Option<SocketAddr>,
    cluster_transport: Option<String>,
    cluster_certs: Option<PathBuf>,
    node_session_timeout_ms: Option<u64>,
    replica_lag_time_max_ms: Option<u64>,
    default_replication_factor: Option<u16>,
}

/// How long a shard polls for a segment write or fdatasync by default (see
/// `--disk-poll-us`). Measured with `benches/broker.sh`'s fixed-rate workload (64 KiB
/// durable produce at 20k records/s, 2 shards): see docs/architecture.md.
const DISK_POLL_US_DEFAULT: u64 = 1000;

/// The admin listener's address by default (Redpanda's admin port).
const ADMIN_LISTEN_DEFAULT: &str = "127.0.0.1:9644";

/// Connections a shard serves at once by default (see `--connections-max`): far more
/// than clients open in practice, few enough that a connection flood cannot exhaust
/// the broker's file descriptors and memory (each connection holds buffers).
const CONNECTIONS_MAX_DEFAULT: usize = 50_000;

/// Settings after merging.
#[derive(Debug, Clone)]
struct Settings {
    data_dir: PathBuf,
    native_listen: SocketAddr,
    kafka_listen: Option<SocketAddr>,
    /// The admin listener, and whether its address was given (a busy default is
    /// skipped with a warning, a busy given address stops the start).
    admin_listen: Option<(SocketAddr, bool)>,
    kafka: KafkaOptions,
    group_initial_rebalance_delay: Duration,
    group_log_compact_bytes: u64,
    group_limits: GroupLimits,
    cpus: Vec<usize>,
    log_defaults: LogConfig,
    limits: ConnLimits,
    request_memory_bytes_max: usize,
    request_timeout_ms: u64,
    min_insync_replicas: i32,
    acks_none_bytes_max: u64,
    connections_max: usize,
    zero_copy: bool,
    steer_connections: bool,
    spin_before_park: Duration,
    disk_poll: Duration,
    replica_lag_time_max_ms: u64,
    cluster: Option<ClusterSettings>,
}

/// The settings as the admin API's `GET /v1/configs` shows them: the names of the flags
/// (with `_`), the values in effect after flags, variables, file and defaults.
fn settings_json(s: &Settings) -> serde_json::Value {
    let l = &s.log_defaults;
    serde_json::json!({
        "data_dir": s.data_dir.display().to_string(),
        "native_listen": s.native_listen.to_string(),
        "kafka_listen": s.kafka_listen.map_or("off".to_string(), |a| a.to_string()),
        "kafka_advertise": format!("{}:{}", s.kafka.advertise_host, s.kafka.advertise_port),
        "admin_listen": s.admin_listen.map_or("off".to_string(), |(a, _)| a.to_string()),
        "auto_create_topics": s.kafka.auto_create_topics,
        "default_partitions": s.kafka.default_partitions,
        "cpus": s.cpus,
        "segment_bytes": l.segment_bytes,
        "retention_ms": l.retention_ms.map_or(-1, |v| v as i64),
        "retention_bytes": l.retention_bytes.map_or(-1, |v| v as i64),
        "flush": l.flush.to_string(),
        "message_bytes_max": l.message_bytes_max,
        "write_buffer_bytes_max": l.write_buffer_bytes_max,
        "inflight_max": s.limits.inflight_max,
        "idle_timeout_ms": s.limits.idle_timeout.map_or(0, |d| d.as_millis() as u64),
        "request_memory_bytes_max": s.request_memory_bytes_max,
        "request_timeout_ms": s.request_timeout_ms,
        "connections_max": s.connections_max,
        "min_insync_replicas": s.min_insync_replicas,
        "acks_none_bytes_max": s.acks_none_bytes_max,
        "zero_copy": s.zero_copy,
        "steer_connections": s.steer_connections,
        "spin_before_park_us": s.spin_before_park.as_micros() as u64,
        "disk_poll_us": s.disk_poll.as_micros() as u64,
        "group_initial_rebalance_delay_ms": s.group_initial_rebalance_delay.as_millis() as u64,
        "group_log_compact_bytes": s.group_log_compact_bytes,
        "groups_max": s.group_limits.groups_max,
        "group_max_size": s.group_limits.group_max_size,
        "replica_lag_time_max_ms": s.replica_lag_time_max_ms,
        "node_id": s.cluster.as_ref().map(|c| c.me),
        "voters": s.cluster.as_ref().map(|c| c.voters.iter().map(|(id, a)| format!("{id}@{a}")).collect::<Vec<_>>().join(",")),
        "cluster_listen": s.cluster.as_ref().map(|c| c.listen.to_string()),
        "cluster_transport": s.cluster.as_ref().map(|c| match c.transport {
            ringmq_cluster::TransportKind::Quic => "quic",
            ringmq_cluster::TransportKind::Tcp => "tcp",
        }),
        "node_session_timeout_ms": s.cluster.as_ref().map(|c| c.session_timeout.as_millis() as u64),
        "default_replication_factor": s.cluster.as_ref().map(|c| c.default_replication_factor),
    })
}

fn settings(args: ServeArgs) -> anyhow::Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let online = num_cpus::get();
    let cpus = match args.cpus.or(file.cpus) {
        Some(c) => {
            if c.is_empty() {
                bail!("--cpus names no core");
            }
            if let Some(bad) = c.iter().find(|&&c| c >= online) {
                bail!(
                    "--cpus names core {bad}, but this machine has {online} online cores (0..{})",
                    online - 1
                );
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = c.iter().find(|&&c| !seen.insert(c)) {
                bail!("--cpus names core {dup} twice: one shard per core");
            }
            c
        }
        None => {
            let n = args.shards.or(file.shards).unwrap_or(online);
            if n == 0 || n > online {
                bail!("--shards {n}: must be 1 to {online} (online cores)");
            }
            (0..n).collect()
        }
    };
    let mut log_defaults = LogConfig::default();
    if let Some(v) = args.segment_bytes.or(file.segment_bytes) {
        log_defaults.segment_bytes = v;
    }
    if let Some(v) = args.retention_ms.or(file.retention_ms) {
        log_defaults.retention_ms = u64::try_from(v).ok();
    }
    if let Some(v) = args.flush.or(file.flush) {
        log_defaults.flush = v.parse().map_err(anyhow::Error::msg)?;
    }
    if let Some(v) = args.message_bytes_max.or(file.message_bytes_max) {
        log_defaults.message_bytes_max = v;
        log_defaults.write_buffer_bytes_max = log_defaults.write_buffer_bytes_max.max(v);
    }
    if let Some(v) = args.write_buffer_bytes_max.or(file.write_buffer_bytes_max) {
        log_defaults.write_buffer_bytes_max = v.max(log_defaults.message_bytes_max);
    }
    log_defaults.validate().context("invalid log settings")?;
    let kafka_listen = match args
        .kafka_listen
        .or(file.kafka_listen)
        .unwrap_or_else(|| "127.0.0.1:9092".into())
        .as_str()
    {
        "off" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--kafka-listen {a}: expected HOST:PORT or off"))?,
        ),
    };
    let admin_given = args.admin_listen.or(file.admin_listen);
    let admin_listen = match admin_given.as_deref().unwrap_or(ADMIN_LISTEN_DEFAULT) {
        "off" => None,
        a => Some((
            a.parse::<SocketAddr>()
                .with_context(|| format!("--admin-listen {a}: expected HOST:PORT or off"))?,
            admin_given.is_some(),
        )),
    };
    let (advertise_host, advertise_port) = match args.kafka_advertise.or(file.kafka_advertise) {
        Some(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .with_context(|| format!("--kafka-advertise {a}: expected HOST:PORT"))?;
            let p: u16 = p
                .parse()
                .with_context(|| format!("--kafka-advertise {a}: bad port"))?;
            (h.trim_matches(['[', ']']).to_string(), p)
        }
        None => match kafka_listen {
            Some(l) => (l.ip().to_string(), l.port()),
            None => ("127.0.0.1".into(), 9092),
        },
    };
    let default_partitions = args
        .default_partitions
        .or(file.default_partitions)
        .unwrap_or(1);
    if default_partitions == 0 || default_partitions > ringmq_shard::topics::PARTITIONS_MAX {
        bail!(
            "--default-partitions {default_partitions}: must be 1 to {}",
            ringmq_shard::topics::PARTITIONS_MAX
        );
    }
    let min_insync_replicas = args
        .min_insync_replicas
        .or(file.min_insync_replicas)
        .unwrap_or(1);
    if min_insync_replicas < 1 {
        bail!("--min-insync-replicas is {min_insync_replicas}: it must be at least 1");
    }
    let group_limits = GroupLimits {
        groups_max: args
            .groups_max
            .or(file.groups_max)
            .unwrap_or(GROUPS_MAX_DEFAULT),
        group_max_size: args
            .group_max_size
            .or(file.group_max_size)
            .unwrap_or(GROUP_MAX_SIZE_DEFAULT),
        pending_members_max: args
            .group_pending_members_max
            .or(file.group_pending_members_max)
            .unwrap_or(GROUP_PENDING_MEMBERS_MAX_DEFAULT),
    };
    for (flag, v) in [
        ("--groups-max", group_limits.groups_max),
        ("--group-max-size", group_limits.group_max_size),
        (
            "--group-pending-members-max",
            group_limits.pending_members_max,
        ),
    ] {
        if v == 0 {
            bail!("{flag} 0: no group could ever be joined; it must be at least 1");
        }
    }
    let cluster = match args.voters.or(file.voters) {
        None => None,
        Some(text) => {
            let voters = parse_voters(&text)?;
            let me = args
                .node_id
                .or(file.node_id)
                .context("--voters needs --node-id (this node's id among the voters)")?;
            let Some(&mine) = voters.get(&me) else {
                bail!("--node-id {me} is not among --voters (every node of a cluster is a voter)");
            };
            let listen = args.cluster_listen.or(file.cluster_listen).unwrap_or(mine);
            let transport = match args
                .cluster_transport
                .or(file.cluster_transport)
                .as_deref()
                .unwrap_or("quic")
            {
                "quic" => ringmq_cluster::TransportKind::Quic,
                "tcp" => ringmq_cluster::TransportKind::Tcp,
                other => bail!("--cluster-transport {other:?}: use quic or tcp"),
            };
            let data_dir = args
                .data_dir
                .clone()
                .or(file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from("./data"));
            let certs = args
                .cluster_certs
                .or(file.cluster_certs)
                .unwrap_or_else(|| {
                    std::path::absolute(&data_dir)
                        .ok()
                        .and_then(|d| d.parent().map(|p| p.join("certs")))
                        .unwrap_or_else(|| PathBuf::from("certs"))
                });
            let tls = ringmq_cluster::TlsFiles::in_dir(&certs, me);
            if !tls.ca.exists() || !tls.cert.exists() || !tls.key.exists() {
                bail!(
                    "no certificates for node {me} in {} (ca.pem, node-{me}.pem, node-{me}.key): create them with `ringmq cluster init-certs --dir {} --nodes {}` and copy each node's files to it",
                    certs.display(),
                    certs.display(),
                    voters
                        .keys()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            Some(ClusterSettings {
                me,
                voters,
                listen,
                transport,
                certs,
                session_timeout: Duration::from_millis(
                    args.node_session_timeout_ms
                        .or(file.node_session_timeout_ms)
                        .unwrap_or(6000)
                        .max(500),
                ),
                default_replication_factor: args
                    .default_replication_factor
                    .or(file.default_replication_factor)
                    .unwrap_or(1)
                    .max(1),
            })
        }
    };
    Ok(Settings {
        group_limits,
        group_initial_rebalance_delay: Duration::from_millis(
            args.group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(3000),
        ),
        group_log_compact_bytes: args
            .group_log_compact_bytes
            .or(file.group_log_compact_bytes)
            .unwrap_or(16 << 20),
        kafka_listen,
        admin_listen,
        kafka: KafkaOptions {
            advertise_host,
            advertise_port,
            auto_create_topics: args
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            default_partitions,
        },
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data")),
        native_listen: args
            .native_listen
            .or(file.native_listen)
            .unwrap_or_else(|| "127.0.0.1:9093".parse().expect("valid default address")),
        cpus,
        log_defaults,
        limits: ConnLimits {
            inflight_max: args.inflight_max.or(file.inflight_max).unwrap_or(64).max(1),
            idle_timeout: match args
                .idle_timeout_ms
                .or(file.idle_timeout_ms)
                .unwrap_or(600_000)
            {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            ..ConnLimits::default()
        },
        request_timeout_ms: args
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(30_000)
            .max(1),
        request_memory_bytes_max: args
            .request_memory_bytes_max
            .or(file.request_memory_bytes_max)
            .unwrap_or(256 << 20)
            .max(1 << 20),
        min_insync_replicas,
        acks_none_bytes_max: args
            .acks_none_bytes_max
            .or(file.acks_none_bytes_max)
            .unwrap_or(ringmq_shard::broker::ACKS_NONE_BYTES_MAX)
            .max(1 << 20),
        connections_max: args
            .connections_max
            .or(file.connections_max)
            .unwrap_or(CONNECTIONS_MAX_DEFAULT)
            .max(1),
        zero_copy: args.zero_copy.or(file.zero_copy).unwrap_or(true),
        steer_connections: args
            .steer_connections
            .or(file.steer_connections)
            .unwrap_or(true),
        spin_before_park: Duration::from_micros(
            args.spin_before_park_us
                .or(file.spin_before_park_us)
                .unwrap_or(0)
                .min(1_000_000),
        ),
        disk_poll: Duration::from_micros(
            args.disk_poll_us
                .or(file.disk_poll_us)
                .unwrap_or(DISK_POLL_US_DEFAULT)
                .min(1_000_000),
        ),
        replica_lag_time_max_ms: args
            .replica_lag_time_max_ms
            .or(file.replica_lag_time_max_ms)
            .unwrap_or(ringmq_shard::broker::REPLICA_LAG_TIME_MAX_MS)
            .max(100),
        cluster,
    })
}

/// Whether glommio can register (lock) its I/O buffers: root or CAP_IPC_LOCK, or a
/// locked-memory limit of at least 512 KiB per shard.
fn buffer_registration(shards: usize) -> (bool, String) {
    // SAFETY: geteuid and getrlimit only read process state into a local struct.
    let (euid, memlock) = unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r);
        (libc::geteuid(), r.rlim_cur)
    };
    let needed = 512u64 * 1024 * shards as u64;
    if euid == 0 {
        (
            true,
            "running as root (CAP_IPC_LOCK): io_uring buffers are registered".into(),
        )
    } else if memlock >= needed {
        (
            true,
            format!("locked-memory limit {memlock} bytes: io_uring buffers are registered"),
        )
    } else {
        (
            false,
            format!(
                "WARNING: locked-memory limit {memlock} bytes < {needed} needed: io_uring buffers are NOT registered (raise `ulimit -l` or grant CAP_IPC_LOCK)"
            ),
        )
    }
}

/// The log level to start with: the flag or variable, else the file's, else info.
pub fn log_level(args: &ServeArgs) -> String {
    if let Some(l) = &args.log_level {
        return l.clone();
    }
    args.config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| toml::from_str::<FileConfig>(&t).ok())
        .and_then(|f| f.log_level)
        .unwrap_or_else(|| "info".into())
}

/// Runs the broker until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let s = settings(args)?;
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("creating data directory {}", s.data_dir.display()))?;
    let data_dir = std::path::absolute(&s.data_dir)?;
    let producer_id_key = match &s.cluster {
        None => ringmq_shard::producer_ids::IdKey::load_or_create(&data_dir)
            .with_context(|| format!("the producer-id key in {}", data_dir.display()))?,
        Some(c) => {
            // Every node must recognise the producer ids every other node issued: the
            // key is derived from what the nodes share, the cluster CA's certificate.
            if c.voters.len() * s.cpus.len() > 256 {
                bail!(
                    "{} voters × {} shards: producer ids name at most 256 issuing shards in a cluster",
                    c.voters.len(),
                    s.cpus.len()
                );
            }
            let ca = ringmq_cluster::TlsFiles::in_dir(&c.certs, c.me).ca;
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            ringmq_shard::producer_ids::IdKey::derived_from(&pem)
        }
    };
    let shard_count = s.cpus.len() as u32;
    let mut table = TopicTable::load(&data_dir).map_err(anyhow::Error::msg)?;
    let moves = table.fit_to_shards(shard_count);
    if !moves.is_empty() {
        for (t, p, from, to) in &moves {
            tracing::warn!(topic = %t, partition = p, from, to, "shard {from} no longer exists: partition moves to shard {to}");
        }
        let path = data_dir.join(ringmq_shard::topics::TOPICS_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, table.to_json())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&data_dir)?.sync_all()?;
    }
    let (_, registration) = buffer_registration(s.cpus.len());
    // Bind once here to report a busy port clearly (the shards' listeners, bound below
    // with SO_REUSEPORT, would join a group a dying broker still holds).
    // A broker killed a moment ago can hold its listening sockets for a short while
    // after it is gone (the kernel tears its io_uring rings down asynchronously), so a
    // busy port is retried for up to 3 s before giving up.
    for addr in std::iter::once(s.native_listen).chain(s.kafka_listen) {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => {
                    drop(l);
                    break;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => bail!("cannot listen on {addr}: {e}"),
            }
        }
    }
    println!("ringmq {} starting", env!("CARGO_PKG_VERSION"));
    println!("  data directory   {}", data_dir.display());
    match s.kafka_listen {
        Some(a) => println!(
            "  kafka listener   {a} (advertised as {}:{}; auto-create topics {})",
            s.kafka.advertise_host,
            s.kafka.advertise_port,
            if s.kafka.auto_create_topics {
                "on"
            } else {
                "off"
            }
        ),
        None => println!("  kafka listener   off"),
    }
    println!("  native listener  {}", s.native_listen);
    println!(
        "  shards           {} on cores {}",
        s.cpus.len(),
        s.cpus
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("  io_uring         {registration}");
    println!(
        "  zero-copy fetch  {}",
        if s.zero_copy {
            "on (splice on a second io_uring ring per shard)"
        } else {
            "off (fetched file data is copied through memory)"
        }
    );
    let (sockets, steering) = bind_listeners(&s)?;
    println!("  steering         {steering}");
    let mut admin = match s.admin_listen {
        None => {
            println!("  admin listener   off");
            None
        }
        Some((addr, given)) => match bind_admin(addr) {
            Ok(l) => {
                println!(
                    "  admin listener   http://{addr} (Prometheus metrics at /metrics, JSON API under /v1/)"
                );
                Some(l)
            }
            Err(e) if !given => {
                tracing::warn!(address = %addr, error = %e, "the admin listener is not started: its default address is busy; set --admin-listen (or off)");
                println!(
                    "  admin listener   not started: {addr} is busy ({e}); set --admin-listen"
                );
                None
            }
            Err(e) => bail!("cannot listen on {addr} (--admin-listen): {e}"),
        },
    };
    if !s.spin_before_park.is_zero() {
        println!(
            "  idle shards      poll {} µs before sleeping",
            s.spin_before_park.as_micros()
        );
    }
    if s.disk_poll.is_zero() {
        println!("  disk waits       sleep until the completion interrupt");
    } else {
        println!(
            "  disk waits       poll up to {} µs for segment writes and fdatasyncs",
            s.disk_poll.as_micros()
        );
    }
    if let Some(c) = &s.cluster {
        println!("  node id          {}", c.me);
        println!(
            "  voters           {}",
            c.voters
                .iter()
                .map(|(id, a)| format!("{id}@{a}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        println!(
            "  cluster listener {} ({}, mutual TLS with the CA in {})",
            c.listen,
            match c.transport {
                ringmq_cluster::TransportKind::Quic => "quic",
                ringmq_cluster::TransportKind::Tcp => "tcp",
            },
            c.certs.display()
        );
        if !table.topics.is_empty() {
            tracing::warn!(
                topics = table.topics.len(),
                "this data directory has a single-node topic table; a cluster node takes its topics from the controller and ignores it"
            );
        }
        table = TopicTable::default();
        println!("  topics           from the controller quorum");
    } else {
        println!("  topics           {}", table.topics.len());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut handles = Vec::new();
    let all_links = links(s.cpus.len());
    for (i, ((cpu, l), sockets)) in s
        .cpus
        .iter()
        .copied()
        .zip(all_links)
        .zip(sockets)
        .enumerate()
    {
        let opts = ShardOptions {
            shard_id: i as u32,
            shard_count,
            data_dir: data_dir.clone(),
            log_defaults: s.log_defaults.clone(),
            open_segments_max: 256,
            call_timeout: Duration::from_millis(s.request_timeout_ms),
            zero_copy: s.zero_copy,
            group_initial_rebalance_delay: s.group_initial_rebalance_delay,
            group_log_compact_bytes: s.group_log_compact_bytes,
            groups_max: s.group_limits.groups_max,
            group_max_size: s.group_limits.group_max_size,
            group_pending_members_max: s.group_limits.pending_members_max,
            producer_id_key,
            producer_id_issuer: match &s.cluster {
                None => i as u32,
                Some(c) => {
                    let index = c.voters.keys().position(|&v| v == c.me).unwrap_or(0);
                    (index * s.cpus.len() + i) as u32
                }
            },
            min_insync_replicas: s.min_insync_replicas,
            acks_none_bytes_max: s.acks_none_bytes_max,
            replica_lag_time_max_ms: s.replica_lag_time_max_ms,
            clustered: s.cluster.is_some(),
        };
        let table = table.clone();
        let stop = stop.clone();
        let listeners = Listeners {
            native: s.native_listen,
            kafka: s.kafka_listen,
            admin: if i == 0 {
                admin.take().map(|l| (l, settings_json(&s)))
            } else {
                None
            },
            sockets,
            kafka_options: s.kafka.clone(),
            limits: s.limits,
            memory: s.request_memory_bytes_max,
            connections_max: s.connections_max,
        };
        let disk_poll = s.disk_poll;
        let cluster = s.cluster.clone().map(|c| {
            let node = ringmq_cluster::node::NodeConfig {
                me: c.me,
                voters: c.voters.clone(),
                kafka_advertise: format!("{}:{}", s.kafka.advertise_host, s.kafka.advertise_port),
                // Clients dial this: a wildcard listener is reached at the host the
                // Kafka listener advertises.
                native: if s.native_listen.ip().is_unspecified() {
                    format!("{}:{}", s.kafka.advertise_host, s.native_listen.port())
                } else {
                    s.native_listen.to_string()
                },
                cluster_listen: c.listen,
                data_dir: data_dir.clone(),
                shard_count,
                session_timeout: c.session_timeout,
                tick: Duration::from_millis(100),
                election_ticks: 10,
                heartbeat: Duration::from_millis(500),
                default_replication_factor: c.default_replication_factor,
            };
            (c, node, cpu)
        });
        let mut builder =
            LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(&format!("shard-{i}"));
        if !s.spin_before_park.is_zero() {
            builder = builder.spin_before_park(s.spin_before_park);
        }
        let h = builder
            .spawn(move || async move {
                match ringmq_uring::Ring::current() {
                    Ok(ring) => ring.set_poll(disk_poll),
                    Err(e) => tracing::warn!(shard = i, error = %e, "no second io_uring ring; disk waits are not polled"),
                }
                let r = run_shard(opts, table, l, listeners, cluster, stop.clone()).await;
                // A shard that failed leaves the listener groups with indexes that no
                // longer match the shards (and its partitions unserved): stop them all.
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            })
            .map_err(|e| anyhow::anyhow!("starting shard {i} on core {cpu}: {e}"))?;
        handles.push(h);
    }
    let mut failed = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(format!("shard {i}: {e}")),
            Err(e) => failed = Some(format!("shard {i} panicked: {e}")),
        }
    }
    if let Some(e) = failed {
        bail!(e);
    }
    println!("ringmq stopped cleanly");
    Ok(())
}

/// A shard's listening socket: SO_REUSEPORT, so every shard listens on the address, and
/// SO_REUSEADDR, so a restart is not refused while the previous run's closed connections
/// sit in TIME_WAIT on the port.
fn listen(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    // The kernel caps the backlog at net.core.somaxconn (4096 in the tuning profiles).
    s.listen(4096)?;
    Ok(s)
}

/// The listening sockets of one shard.
struct ShardSockets {
    native: socket2::Socket,
    kafka: Option<socket2::Socket>,
}

/// Binds every shard's listeners here, in shard order, so that the socket of shard `i` is
/// the `i`-th of each SO_REUSEPORT group (the index the steering program returns), then
/// attaches the steering program. Says how connections are spread, for the startup lines.
fn bind_listeners(s: &Settings) -> anyhow::Result<(Vec<ShardSockets>, String)> {
    let mut all = Vec::with_capacity(s.cpus.len());
    for _ in &s.cpus {
        let native =
            listen(s.native_listen).with_context(|| format!("listening on {}", s.native_listen))?;
        let kafka = match s.kafka_listen {
            Some(a) => Some(listen(a).with_context(|| format!("listening on {a}"))?),
            None => None,
        };
        all.push(ShardSockets { native, kafka });
    }
    if !s.steer_connections {
        return Ok((all, "off: the kernel spreads connections by hash".into()));
    }
    if s.cpus.len() == 1 {
        return Ok((all, "one shard takes every connection".into()));
    }
    use std::os::fd::AsRawFd;
    let first = &all[0];
    let mut refused = Vec::new();
    for (name, sock) in
        std::iter::once(("native", &first.native)).chain(first.kafka.as_ref().map(|k| ("kafka", k)))
    {
        if let Err(e) = ringmq_net::steer::steer_by_incoming_cpu(sock.as_raw_fd(), &s.cpus) {
            tracing::warn!(listener = name, error = %e, "connection steering unavailable: the kernel refused the SO_REUSEPORT BPF program; connections are spread by hash");
            refused.push(format!("{name}: {e}"));
        }
    }
    let how = "by receiving core: a connection goes to the shard on the core that took its packets";
    Ok(if refused.is_empty() {
        (all, how.into())
    } else {
        let n = 1 + usize::from(first.kafka.is_some());
        let what = if refused.len() == n {
            "off".to_string()
        } else {
            format!("{how}, except")
        };
        (
            all,
            format!(
                "{what}: the kernel refused the BPF program ({}); spread by hash",
                refused.join("; ")
            ),
        )
    })
}

/// The admin listener's socket (not SO_REUSEPORT: one shard serves it).
fn bind_admin(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s)
}

/// What a shard listens on.
struct Listeners {
    native: SocketAddr,
    kafka: Option<SocketAddr>,
    /// The admin listener, on the shard that serves it, and the settings it shows.
    admin: Option<(socket2::Socket, serde_json::Value)>,
    sockets: ShardSockets,
    kafka_options: KafkaOptions,
    limits: ConnLimits,
    memory: usize,
    connections_max: usize,
}

async fn run_shard(
    opts: ShardOptions,
    table: TopicTable,
    l: ringmq_shard::broker::Links,
    listeners: Listeners,
    cluster: Option<(ClusterSettings, ringmq_cluster::node::NodeConfig, usize)>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let id = opts.shard_id;
    let shard = Shard::start(opts, table, l).await?;
    if let Some((c, node, cpu)) = cluster {
        start_cluster(&shard, c, node, cpu).await?;
    }
    let native = glommio_listener(listeners.sockets.native);
    let kafka = listeners.sockets.kafka.map(glommio_listener);
    tracing::info!(shard = id, partitions = shard.partition_count(), native = %listeners.native, kafka = ?listeners.kafka, "shard ready");
    let budget = MemoryBudget::new(listeners.memory);
    shard.set_memory_budget(budget.clone());
    let conns = shard.connection_count();
    let admin = listeners.admin.map(|(l, settings)| {
        glommio::spawn_local(crate::admin::serve(
            glommio_listener(l),
            shard.clone(),
            Rc::new(settings),
            stop.clone(),
        ))
    });
    let accepting = |protocol| Accepting {
        shard: shard.clone(),
        budget: budget.clone(),
        limits: listeners.limits,
        conns: conns.clone(),
        connections_max: listeners.connections_max,
        refused_logged: Rc::new(std::cell::Cell::new(None)),
        stop: stop.clone(),
        protocol,
    };
    // Native connections other shards hand over (`BindShard`). Weak: the shard holds
    // this, and the service holds the shard.
    let adopt = {
        let (weak, budget, conns, limits) = (
            Rc::downgrade(&shard),
            budget.clone(),
            conns.clone(),
            listeners.limits,
        );
        move |conn| {
            let Some(shard) = weak.upgrade() else {
                return;
            };
            let files = shard.file_sender();
            let served =
                serve_handed_over(conn, Rc::new(Native(shard)), limits, budget.clone(), files);
            spawn_served(served, id, "native", None, conns.clone());
        }
    };
    shard.set_adopt(Box::new(adopt));
    let accept_native = accept_loop(native, Rc::new(Native(shard.clone())), accepting("native"));
    let accept_kafka = async {
        if let Some(kafka) = kafka {
            let service = Rc::new(KafkaService::new(
                shard.clone(),
                Rc::new(listeners.kafka_options.clone()),
            ));
            accept_loop(kafka, service, accepting("kafka")).await;
        }
    };
    futures_lite::future::zip(accept_native, accept_kafka).await;
    if let Some(admin) = admin {
        admin.await;
    }
    tracing::info!(
        shard = id,
        connections = conns.get(),
        "stopping: flushing and closing partitions"
    );
    shard.shutdown().await;
    Ok(())
}

/// Joins the cluster: this shard's transport and replication tasks, and on the first
/// shard the cluster listener and the controller voter.
async fn start_cluster(
    shard: &Rc<Shard>,
    c: ClusterSettings,
    node: ringmq_cluster::node::NodeConfig,
    cpu: usize,
) -> Result<(), String> {
    use ringmq_cluster::{Transport, TransportConfig};
    let serving = shard.id() == 0;
    let mut tc = TransportConfig::new(c.me, ringmq_cluster::TlsFiles::in_dir(&c.certs, c.me));
    tc.kind = c.transport;
    tc.listen = serving.then_some(c.listen);
    // This node is a peer too: a shard whose partition leader asks the controller for
    // an ISR change, when this node leads the quorum, reaches it through the node's own
    // listener like any other node's.
    tc.peers = c.voters.iter().map(|(&id, &a)| (id, a)).collect();
    tc.peers.insert(c.me, c.listen);
    tc.core = Some(cpu);
    let (transport, incoming) = Transport::start(tc)
        .await
        .map_err(|e| format!("starting the cluster transport: {e}"))?;
    let transport = Rc::new(transport);
    let voters: Vec<i32> = c.voters.keys().copied().collect();
    ringmq_cluster::replicas::start(shard.clone(), transport.clone(), voters);
    if serving {
        let incoming = incoming.ok_or("the cluster listener did not start")?;
        let controller = ringmq_cluster::node::Controller::open(node, shard.clone(), transport)?;
        shard.set_topic_authority(Rc::new(ringmq_cluster::node::Authority(controller.clone())));
        glommio::spawn_local(async move {
            let why = controller.run(incoming).await;
            // The quorum's safety rests on what it persisted: a node that cannot persist
            // stops rather than go on with a log it cannot trust.
            eprintln!("ringmq: stopping: {why}");
            std::process::exit(3);
        })
        .detach();
    }
    Ok(())
}

fn glommio_listener(s: socket2::Socket) -> glommio::net::TcpListener {
    use std::os::fd::IntoRawFd;
    // SAFETY: a bound, listening socket whose descriptor the listener owns from here on.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(s.into_raw_fd()) }
}

/// What an accept loop needs besides its listener and service.
struct Accepting {
    shard: Rc<Shard>,
    budget: Rc<MemoryBudget>,
    limits: ConnLimits,
    conns: Rc<std::cell::Cell<usize>>,
    /// `--connections-max`.
    connections_max: usize,
    /// When a refused connection was last logged (one line per 10 s at most).
    refused_logged: Rc<std::cell::Cell<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    protocol: &'static str,
}

/// Accepts connections and serves each on its own task until `stop` is set.
async fn accept_loop<S: Service>(
    listener: glommio::net::TcpListener,
    service: Rc<S>,
    a: Accepting,
) {
    let id = a.shard.id();
    let protocol = a.protocol;
    // One accept stays in flight across the ticks that look at the stop flag. Dropping
    // an accept when a tick wins would only queue its cancellation: if the kernel had
    // already accepted a connection, its socket was lost, neither served nor closed
    // (1 connection in 50-150 under load, seen as a client's first request never
    // answered).
    let mut accept = Box::pin(listener.accept());
    // How often the stop flag is looked at: 100 ms. `RINGMQ_ACCEPT_TICK_MS` changes it,
    // a seam for the test that makes ticks and accepts meet often.
    let tick_every = std::env::var("RINGMQ_ACCEPT_TICK_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_millis(100), |ms| {
            Duration::from_millis(ms.max(1))
        });
    loop {
        let tick = a.shard.timers().sleep_until(Instant::now() + tick_every);
        let accepted = futures_lite::future::or(async { Some((&mut accept).await) }, async {
            tick.await;
            None
        })
        .await;
        if a.stop.load(Ordering::Relaxed) {
            break;
        }
        if accepted.is_some() {
            accept = Box::pin(listener.accept());
        }
        match accepted {
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(shard = id, protocol, error = %e, "accept failed");
                a.shard
                    .timers()
                    .sleep_until(Instant::now() + Duration::from_millis(10))
                    .await;
            }
            Some(Ok(stream)) if a.conns.get() >= a.connections_max => {
                // Closed at once (dropped): the client sees the connection end.
                let peer = stream.peer_addr().ok();
                drop(stream);
                let now = Instant::now();
                let due = a
                    .refused_logged
                    .get()
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
                if due {
                    a.refused_logged.set(Some(now));
                    tracing::warn!(
                        shard = id,
                        protocol,
                        ?peer,
                        connections = a.conns.get(),
                        "connection refused: the shard serves --connections-max={} connections",
                        a.connections_max
                    );
                }
            }
            Some(Ok(stream)) => {
                let peer = stream.peer_addr().ok();
                let files = a.shard.file_sender();
                let served =
                    serve_connection(stream, service.clone(), a.limits, a.budget.clone(), files);
                spawn_served(served, id, protocol, peer, a.conns.clone());
            }
        }
    }
}

/// Runs one connection on its own task, counted in `conns`, and logs how it ended.
fn spawn_served(
    served: impl std::future::Future<Output = ConnEnd> + 'static,
    id: u32,
    protocol: &'static str,
    peer: Option<SocketAddr>,
    conns: Rc<std::cell::Cell<usize>>,
) {
    conns.set(conns.get() + 1);
    glommio::spawn_local(async move {
        let end = served.await;
        conns.set(conns.get() - 1);
        match end {
            ConnEnd::Closed => tracing::debug!(shard = id, protocol, ?peer, "connection closed"),
            ConnEnd::Io(e) => {
                tracing::info!(shard = id, protocol, ?peer, error = %e, "connection error")
            }
            ConnEnd::Idle => tracing::debug!(shard = id, protocol, ?peer, "closed idle connection"),
            ConnEnd::Oversized(n) => tracing::warn!(
                shard = id,
                protocol,
                ?peer,
                frame_bytes = n,
                "closed connection: oversized frame"
            ),
            ConnEnd::Moved(to) => {
                tracing::debug!(
                    shard = id,
                    protocol,
                    ?peer,
                    to,
                    "connection moved to its shard"
                )
            }
            ConnEnd::MoveFailed(to) => tracing::warn!(
                shard = id,
                protocol,
                ?peer,
                to,
                "moving a connection to another shard failed; closed"
            ),
        }
    })
    .detach();
}
