//! The broker's metrics in the Prometheus text format (version 0.0.4).
//!
//! Each shard counts what it does in plain cells ([`ShardMetrics`], and per partition
//! [`Traffic`]): nothing is shared between cores on the data path. A scrape asks every
//! shard for its [`Sample`]s (one cross-shard call each), and [`render`] groups them
//! into metric families, in the order of [`FAMILIES`], each with its `# HELP` and
//! `# TYPE` lines. Names follow Prometheus conventions: a `ringmq_` prefix, base units
//! in the name (`_seconds`, `_bytes`), `_total` on counters.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use ringmq_storage::metrics::{BUCKET_BOUNDS_SECONDS, Histogram, HistogramSnapshot};

use crate::error::ErrorKind;

/// A metric family's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at 0 with the process).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Samples in buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Every metric family the broker exports: name, kind, labels, meaning. The table
/// `docs/operations.md` lists is this one (a test checks they agree).
pub const FAMILIES: &[(&str, Kind, &str, &str)] = &[
    (
        "ringmq_build_info",
        Kind::Gauge,
        "version",
        "Always 1; the version of the broker.",
    ),
    (
        "ringmq_shards",
        Kind::Gauge,
        "",
        "Shards (pinned executors, one per core used).",
    ),
    (
        "ringmq_node_id",
        Kind::Gauge,
        "",
        "This node's id in its cluster (0 for a single node).",
    ),
    (
        "ringmq_produce_requests_total",
        Kind::Counter,
        "shard, acks",
        "Produce requests received (Kafka and native), by the shard whose connection received them.",
    ),
    (
        "ringmq_produce_duration_seconds",
        Kind::Histogram,
        "shard",
        "Produce requests with acks 1 or all: from the request decoded to its answer ready (the durable, or replicated, ack).",
    ),
    (
        "ringmq_fetch_requests_total",
        Kind::Counter,
        "shard, reader",
        "Fetch requests received, by consumers (`reader=\"consumer\"`) and follower replicas (`reader=\"follower\"`).",
    ),
    (
        "ringmq_fetch_duration_seconds",
        Kind::Histogram,
        "shard, reader",
        "Fetch requests: from the request decoded to its answer ready, long-poll wait included.",
    ),
    (
        "ringmq_request_errors_total",
        Kind::Counter,
        "shard, api, error",
        "Partition results of produce and fetch requests that failed, by error (the broker's error kind in snake case).",
    ),
    (
        "ringmq_requests_forwarded_total",
        Kind::Counter,
        "shard",
        "Partition requests a shard sent to the shard that owns the partition (a cross-core hand-off).",
    ),
    (
        "ringmq_fetch_bytes_total",
        Kind::Counter,
        "shard, source",
        "Record bytes read for fetches, from the tail cache in memory (`source=\"memory\"`) or from segment files (`source=\"file\"`).",
    ),
    (
        "ringmq_send_file_bytes_total",
        Kind::Counter,
        "shard, mode",
        "File bytes sent to sockets by splice without a copy (`mode=\"spliced\"`) or copied through memory (`mode=\"copied\"`).",
    ),
    (
        "ringmq_connections",
        Kind::Gauge,
        "shard",
        "Client connections open (Kafka and native).",
    ),
    (
        "ringmq_memory_budget_used_bytes",
        Kind::Gauge,
        "shard",
        "Bytes of requests read but not yet answered, held against the shard's memory budget.",
    ),
    (
        "ringmq_memory_budget_bytes",
        Kind::Gauge,
        "shard",
        "The shard's memory budget for requests in flight.",
    ),
    (
        "ringmq_log_syncs_total",
        Kind::Counter,
        "shard",
        "fdatasync calls on segment files.",
    ),
    (
        "ringmq_log_sync_duration_seconds",
        Kind::Histogram,
        "shard",
        "fdatasync latency of segment files.",
    ),
    (
        "ringmq_io_file_operations_total",
        Kind::Counter,
        "shard, op",
        "File reads and writes through glommio's file API, on its own io_uring rings (segment reads past the tail cache, index and checkpoint files).",
    ),
    (
        "ringmq_io_file_bytes_total",
        Kind::Counter,
        "shard, op",
        "Bytes of those file reads and writes.",
    ),
    (
        "ringmq_uring_submissions_total",
        Kind::Counter,
        "shard, ring",
        "Entries submitted to the kernel on the shard's io_uring rings: `ring=\"glommio\"` the executor's own rings (sockets, files through glommio, timers, wake-ups), `ring=\"second\"` the shard's second ring (O_DIRECT segment writes, their fdatasyncs, splice sends).",
    ),
    (
        "ringmq_uring_completions_total",
        Kind::Counter,
        "shard, ring",
        "Completions consumed from those rings.",
    ),
    (
        "ringmq_partition_records_in_total",
        Kind::Counter,
        "topic, partition",
        "Records appended by producers to a partition this node leads.",
    ),
    (
        "ringmq_partition_bytes_in_total",
        Kind::Counter,
        "topic, partition",
        "Batch bytes appended by producers.",
    ),
    (
        "ringmq_partition_records_out_total",
        Kind::Counter,
        "topic, partition, reader",
        "Records read by consumers and by follower replicas (the offsets each read moved its reader on).",
    ),
    (
        "ringmq_partition_bytes_out_total",
        Kind::Counter,
        "topic, partition, reader",
        "Record bytes read by consumers and by follower replicas.",
    ),
    (
        "ringmq_partition_log_start_offset",
        Kind::Gauge,
        "topic, partition",
        "The first offset still in the log.",
    ),
    (
        "ringmq_partition_log_end_offset",
        Kind::Gauge,
        "topic, partition",
        "One past the last offset in the log.",
    ),
    (
        "ringmq_partition_high_watermark",
        Kind::Gauge,
        "topic, partition",
        "The high watermark: what consumers can read up to.",
    ),
    (
        "ringmq_partition_size_bytes",
        Kind::Gauge,
        "topic, partition",
        "Bytes of the partition's segments on disk.",
    ),
    (
        "ringmq_partition_segments",
        Kind::Gauge,
        "topic, partition",
        "Segment files of the partition.",
    ),
    (
        "ringmq_partition_leader",
        Kind::Gauge,
        "topic, partition",
        "1 where this node leads the partition, 0 where it follows or it has no leader.",
    ),
    (
        "ringmq_partition_replicas",
        Kind::Gauge,
        "topic, partition",
        "On the leader: assigned replicas (1 on a single node).",
    ),
    (
        "ringmq_partition_in_sync_replicas",
        Kind::Gauge,
        "topic, partition",
        "On the leader: in-sync replicas (1 on a single node).",
    ),
    (
        "ringmq_partition_under_replicated",
        Kind::Gauge,
        "topic, partition",
        "On the leader: 1 while the in-sync replicas are fewer than the replicas.",
    ),
    (
        "ringmq_partition_replica_lag_offsets",
        Kind::Gauge,
        "topic, partition, replica",
        "On the leader: how far each follower is behind the log end, in offsets (as of its last fetch).",
    ),
    (
        "ringmq_group_members",
        Kind::Gauge,
        "group",
        "Members of a consumer group this node coordinates.",
    ),
    (
        "ringmq_group_committed_offset",
        Kind::Gauge,
        "group, topic, partition",
        "A group's committed offset (the next offset to read).",
    ),
    (
        "ringmq_group_lag_offsets",
        Kind::Gauge,
        "group, topic, partition",
        "The partition's high watermark minus the group's committed offset, where this node holds the partition.",
    ),
    (
        "ringmq_cluster_controller_leader",
        Kind::Gauge,
        "",
        "The node id of the controller quorum's leader as this node knows it (-1 unknown); absent on a single node.",
    ),
    (
        "ringmq_cluster_nodes",
        Kind::Gauge,
        "state",
        "Registered nodes by state (`alive`, `fenced`); absent on a single node.",
    ),
    (
        "ringmq_scrape_duration_seconds",
        Kind::Gauge,
        "",
        "How long gathering this scrape took.",
    ),
];

/// A sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's or gauge's number.
    Number(f64),
    /// A histogram's counts.
    Histogram(HistogramSnapshot),
}

/// One sample of a family, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family's name (one of [`FAMILIES`]).
    pub family: &'static str,
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

impl Sample {
    /// A number.
    pub fn number(family: &'static str, labels: Vec<(&'static str, String)>, v: f64) -> Self {
        Self {
            family,
            labels,
            value: Value::Number(v),
        }
    }
}

/// A partition's traffic since this process opened it.
#[derive(Debug, Default)]
pub struct Traffic {
    records_in: Cell<u64>,
    bytes_in: Cell<u64>,
    bytes_out_consumers: Cell<u64>,
    bytes_out_followers: Cell<u64>,
    records_out_consumers: Cell<u64>,
    records_out_followers: Cell<u64>,
}

impl Traffic {
    pub(crate) fn appended(&self, records: u64, bytes: u64) {
        self.records_in.set(self.records_in.get() + records);
        self.bytes_in.set(self.bytes_in.get() + bytes);
    }

    /// The partition's traffic samples, labelled `labels` (its topic and partition) and
    /// the reader where it matters.
    pub(crate) fn samples(&self, labels: &[(&'static str, String)], out: &mut Vec<Sample>) {
        let with = |reader: Option<&str>| {
            let mut l = labels.to_vec();
            l.extend(reader.map(|r| ("reader", r.to_string())));
            l
        };
        for (family, reader, v) in [
            ("ringmq_partition_records_in_total", None, &self.records_in),
            ("ringmq_partition_bytes_in_total", None, &self.bytes_in),
            (
                "ringmq_partition_records_out_total",
                Some("consumer"),
                &self.records_out_consumers,
            ),
            (
                "ringmq_partition_records_out_total",
                Some("follower"),
                &self.records_out_followers,
            ),
            (
                "ringmq_partition_bytes_out_total",
                Some("consumer"),
                &self.bytes_out_consumers,
            ),
            (
                "ringmq_partition_bytes_out_total",
                Some("follower"),
                &self.bytes_out_followers,
            ),
        ] {
            out.push(Sample::number(family, with(reader), v.get() as f64));
        }
    }

    /// A read of `bytes` that took the reader `records` offsets further.
    pub(crate) fn read(&self, follower: bool, records: u64, bytes: u64) {
        let (r, b) = if follower {
            (&self.records_out_followers, &self.bytes_out_followers)
        } else {
            (&self.records_out_consumers, &self.bytes_out_consumers)
        };
        r.set(r.get() + records);
        b.set(b.get() + bytes);
    }
}

/// What one shard counts of its requests.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Produce requests by acks: none, leader, all.
    produce_requests: [Cell<u64>; 3],
    produce_latency: Histogram,
    /// Fetch requests by consumers and by followers.
    fetch_requests: [Cell<u64>; 2],
    fetch_latency: [Histogram; 2],
    errors: RefCell<BTreeMap<(&'static str, ErrorKind), u64>>,
    /// glommio's I/O counters, which it hands out as deltas: summed here. File reads,
    /// read bytes, writes, written bytes; ring entries submitted, completions consumed.
    io: Cell<[u64; 6]>,
}

impl ShardMetrics {
    /// A produce request answered after `took` (`acks`: 0 none, 1 leader, 2 all).
    pub(crate) fn produced(&self, acks: usize, took: Duration) {
        let c = &self.produce_requests[acks.min(2)];
        c.set(c.get() + 1);
        if acks > 0 {
            self.produce_latency.record(took);
        }
    }

    /// A fetch request answered after `took`.
    pub(crate) fn fetched(&self, follower: bool, took: Duration) {
        let i = usize::from(follower);
        self.fetch_requests[i].set(self.fetch_requests[i].get() + 1);
        self.fetch_latency[i].record(took);
    }

    /// A partition's result of `api` failed with `kind`.
    pub(crate) fn failed(&self, api: &'static str, kind: ErrorKind) {
        *self.errors.borrow_mut().entry((api, kind)).or_default() += 1;
    }

    /// This shard's request samples, labelled `shard`.
    pub(crate) fn samples(&self, shard: &str, out: &mut Vec<Sample>) {
        let s = || ("shard", shard.to_string());
        for (i, acks) in ["0", "1", "all"].into_iter().enumerate() {
            out.push(Sample::number(
                "ringmq_produce_requests_total",
                vec![s(), ("acks", acks.into())],
                self.produce_requests[i].get() as f64,
            ));
        }
        out.push(Sample {
            family: "ringmq_produce_duration_seconds",
            labels: vec![s()],
            value: Value::Histogram(self.produce_latency.snapshot()),
        });
        for (i, reader) in ["consumer", "follower"].into_iter().enumerate() {
            out.push(Sample::number(
                "ringmq_fetch_requests_total",
                vec![s(), ("reader", reader.into())],
                self.fetch_requests[i].get() as f64,
            ));
            out.push(Sample {
                family: "ringmq_fetch_duration_seconds",
                labels: vec![s(), ("reader", reader.into())],
                value: Value::Histogram(self.fetch_latency[i].snapshot()),
            });
        }
        for (&(api, kind), &n) in self.errors.borrow().iter() {
            out.push(Sample::number(
                "ringmq_request_errors_total",
                vec![
                    s(),
                    ("api", api.into()),
                    ("error", snake(&format!("{kind:?}"))),
                ],
                n as f64,
            ));
        }
        // glommio hands out its counters since the last call and resets them.
        let io = glommio::executor().io_stats().all_rings();
        let (reads, read_bytes) = io.file_reads();
        let (breads, bread_bytes) = io.file_buffered_reads();
        let (writes, written) = io.file_writes();
        let (bwrites, bwritten) = io.file_buffered_writes();
        let (entries, completions) = io.ring_entries();
        let mut t = self.io.get();
        t[0] += reads + breads;
        t[1] += read_bytes + bread_bytes;
        t[2] += writes + bwrites;
        t[3] += written + bwritten;
        t[4] += entries;
        t[5] += completions;
        self.io.set(t);
        let (submitted, completed) = ringmq_uring::Ring::counts_here();
        for (family, (key, value), n) in [
            ("ringmq_io_file_operations_total", ("op", "read"), t[0]),
            ("ringmq_io_file_bytes_total", ("op", "read"), t[1]),
            ("ringmq_io_file_operations_total", ("op", "write"), t[2]),
            ("ringmq_io_file_bytes_total", ("op", "write"), t[3]),
            ("ringmq_uring_submissions_total", ("ring", "glommio"), t[4]),
            ("ringmq_uring_completions_total", ("ring", "glommio"), t[5]),
            (
                "ringmq_uring_submissions_total",
                ("ring", "second"),
                submitted,
            ),
            (
                "ringmq_uring_completions_total",
                ("ring", "second"),
                completed,
            ),
        ] {
            out.push(Sample::number(
                family,
                vec![s(), (key, value.into())],
                n as f64,
            ));
        }
        let syncs = ringmq_storage::metrics::sync_latency_here();
        out.push(Sample::number(
            "ringmq_log_syncs_total",
            vec![s()],
            syncs.count() as f64,
        ));
        out.push(Sample {
            family: "ringmq_log_sync_duration_seconds",
            labels: vec![s()],
            value: Value::Histogram(syncs),
        });
    }
}

/// `NotLeader` → `not_leader`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(labels: &[(&str, String)], extra: Option<(&str, &str)>, out: &mut String) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().map(|(k, v)| (*k, v.as_str())).chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    out.push('}');
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The samples as the Prometheus text format: each family of [`FAMILIES`] that has
/// samples, in that order, with its help and type. Samples of a family not in the
/// table are a bug: they are left out (and fail the tests).
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::with_capacity(64 * samples.len() + 4096);
    for &(name, kind, _, help) in FAMILIES {
        let mut of = samples.iter().filter(|s| s.family == name).peekable();
        if of.peek().is_none() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
        for s in of {
            match &s.value {
                Value::Number(v) => {
                    out.push_str(name);
                    write_labels(&s.labels, None, &mut out);
                    let _ = writeln!(out, " {}", number(*v));
                }
                Value::Histogram(h) => {
                    let mut cumulative = 0u64;
                    for (i, c) in h.counts.iter().enumerate() {
                        cumulative += c;
                        let le = BUCKET_BOUNDS_SECONDS
                            .get(i)
                            .map_or("+Inf".to_string(), |b| format!("{b}"));
                        let _ = write!(out, "{name}_bucket");
                        write_labels(&s.labels, Some(("le", &le)), &mut out);
                        let _ = writeln!(out, " {cumulative}");
                    }
                    if h.counts.is_empty() {
                        let _ = write!(out, "{name}_bucket");
                        write_labels(&s.labels, Some(("le", "+Inf")), &mut out);
                        out.push_str(" 0\n");
                    }
                    let _ = write!(out, "{name}_sum");
                    write_labels(&s.labels, None, &mut out);
                    let _ = writeln!(out, " {}", number(h.sum_seconds));
                    let _ = write!(out, "{name}_count");
                    write_labels(&s.labels, None, &mut out);
                    let _ = writeln!(out, " {cumulative}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_their_samples_with_help_and_type_and_histograms_are_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_millis(2));
        let samples = vec![
            Sample::number("ringmq_connections", vec![("shard", "0".into())], 3.0),
            Sample::number("ringmq_shards", vec![], 2.0),
            Sample::number("ringmq_connections", vec![("shard", "1".into())], 4.0),
            Sample {
                family: "ringmq_produce_duration_seconds",
                labels: vec![("shard", "0".into())],
                value: Value::Histogram(h.snapshot()),
            },
            Sample::number(
                "ringmq_partition_high_watermark",
                vec![("topic", "a\"b\\c".into()), ("partition", "0".into())],
                12.0,
            ),
        ];
        let text = render(&samples);
        // Families in table order, each once, its samples together.
        let shards = text.find("# TYPE ringmq_shards gauge").unwrap();
        let conns = text.find("# TYPE ringmq_connections gauge").unwrap();
        assert!(shards < conns);
        assert_eq!(text.matches("# TYPE ringmq_connections").count(), 1);
        assert!(
            text.contains("ringmq_connections{shard=\"0\"} 3\nringmq_connections{shard=\"1\"} 4\n")
        );
        assert!(
            text.contains("ringmq_produce_duration_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1\n")
        );
        assert!(
            text.contains("ringmq_produce_duration_seconds_bucket{shard=\"0\",le=\"0.0025\"} 2\n")
        );
        assert!(
            text.contains("ringmq_produce_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2\n")
        );
        assert!(text.contains("ringmq_produce_duration_seconds_count{shard=\"0\"} 2\n"));
        assert!(text.contains(
            "ringmq_partition_high_watermark{topic=\"a\\\"b\\\\c\",partition=\"0\"} 12\n"
        ));
    }

    #[test]
    fn error_kinds_become_snake_case_labels() {
        assert_eq!(snake("NotLeader"), "not_leader");
        assert_eq!(snake("Storage"), "storage");
        assert_eq!(
            snake("NotEnoughReplicasAfterAppend"),
            "not_enough_replicas_after_append"
        );
    }

    #[test]
    fn docs_operations_lists_every_family_with_its_type() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/operations.md"
        ))
        .expect("docs/operations.md");
        for &(name, kind, _, _) in FAMILIES {
            let row = format!("| `{name}` | {} |", kind.as_str());
            assert!(doc.contains(&row), "docs/operations.md has no row {row}");
        }
        let rows = doc.lines().filter(|l| l.starts_with("| `ringmq_")).count();
        assert_eq!(
            rows,
            FAMILIES.len(),
            "a row for a family that is not exported"
        );
    }

    #[test]
    fn every_family_has_a_conventional_name() {
        for &(name, kind, _, help) in FAMILIES {
            assert!(name.starts_with("ringmq_"), "{name}");
            assert!(!help.is_empty(), "{name}");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }
}
