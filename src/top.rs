//! `ringmq top`: the broker's live figures in the terminal, for operators on a server
//! without a browser. It reads the admin listener's `/metrics` every interval and shows
//! what changed since the last read: produce and fetch rates, produce-ack latency
//! percentiles, per-topic traffic, per-shard requests and connections, and each
//! consumer group's lag.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

/// Flags of `ringmq top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// The broker's admin listener, HOST:PORT
    #[arg(long, env = "RINGMQ_ADMIN", default_value = "127.0.0.1:9644")]
    admin: String,
    /// Seconds between refreshes
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print this many refreshes one after another (no screen clearing), then exit;
    /// 0 runs until Ctrl-C, redrawing the screen
    #[arg(long, default_value_t = 0)]
    count: u64,
}

/// Samples by (name, labels as `k=v` pairs sorted).
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses the Prometheus text format as the broker writes it (no timestamps, no
/// escaped quotes in the label values it reads here).
fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.trim_end_matches('}');
                let mut labels: Vec<(String, String)> = Vec::new();
                for pair in split_labels(body) {
                    if let Some((k, v)) = pair.split_once('=') {
                        labels.push((k.to_string(), v.trim_matches('"').replace("\\\"", "\"")));
                    }
                }
                labels.sort();
                (n.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.insert((name, labels), v);
    }
    out
}

/// Splits `a="x",b="y,z"` at the commas between pairs.
fn split_labels(body: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            '\\' if quoted => escaped = !escaped,
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    if start < body.len() {
        out.push(&body[start..]);
    }
    out
}

fn label<'a>(labels: &'a [(String, String)], k: &str) -> Option<&'a str> {
    labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Sum of a family's samples, grouped by the value of `by` (all together for "").
fn sum_by(s: &Samples, name: &str, by: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for ((n, labels), v) in s {
        if n == name {
            let key = if by.is_empty() {
                String::new()
            } else {
                label(labels, by).unwrap_or("").to_string()
            };
            *out.entry(key).or_insert(0.0) += v;
        }
    }
    out
}

fn total(s: &Samples, name: &str) -> f64 {
    sum_by(s, name, "").values().sum()
}

/// A histogram's quantile over what was added between `before` and `now` (all shards
/// together): linear within the bucket that holds it, in seconds; `None` without samples.
fn quantile(before: &Samples, now: &Samples, name: &str, q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut by_le: BTreeMap<u64, f64> = BTreeMap::new(); // le in ns → cumulative count
    let mut inf = 0.0;
    for ((n, labels), v) in now {
        if *n != bucket {
            continue;
        }
        let d = v - before
            .get(&(n.clone(), labels.clone()))
            .copied()
            .unwrap_or(0.0);
        match label(labels, "le") {
            Some("+Inf") => inf += d,
            Some(le) => {
                if let Ok(le) = le.parse::<f64>() {
                    *by_le.entry((le * 1e9) as u64).or_insert(0.0) += d;
                }
            }
            None => {}
        }
    }
    if inf <= 0.0 {
        return None;
    }
    let want = q * inf;
    let mut lower = (0u64, 0.0);
    for (&le, &count) in &by_le {
        if count >= want {
            let span = count - lower.1;
            let frac = if span > 0.0 {
                (want - lower.1) / span
            } else {
                1.0
            };
            return Some((lower.0 as f64 + frac * (le - lower.0) as f64) / 1e9);
        }
        lower = (le, count);
    }
    // Above the last bound: say the bound.
    Some(lower.0 as f64 / 1e9)
}

fn fetch(admin: &str) -> anyhow::Result<Samples> {
    let mut s = TcpStream::connect(admin).with_context(|| {
        format!("cannot reach the admin listener at {admin} (set --admin or RINGMQ_ADMIN)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out).context("reading /metrics")?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("not an HTTP answer from the admin listener")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the admin listener answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(parse(body))
}

fn rate_text(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn bytes_text(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} GB", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB", v / 1e3)
    } else {
        format!("{v:.0} B")
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.2}", s * 1e3))
}

/// One screen: the figures between two reads `secs` apart.
fn render(before: &Samples, now: &Samples, secs: f64, admin: &str) -> String {
    let per_s = |name: &str| (total(now, name) - total(before, name)).max(0.0) / secs;
    let q = |name: &str, p: f64| ms(quantile(before, now, name, p));
    let mut out = String::new();
    let node = total(now, "ringmq_node_id");
    let shards = total(now, "ringmq_shards");
    out.push_str(&format!(
        "ringmq top — {admin}, node {node:.0}, {shards:.0} shard(s), every {secs:.1} s\n\n"
    ));
    out.push_str(&format!(
        "produce  {:>9} records/s  {:>10}/s in   {:>8} requests/s   ack p50 {} ms  p99 {} ms\n",
        rate_text(per_s("ringmq_partition_records_in_total")),
        bytes_text(per_s("ringmq_partition_bytes_in_total")),
        rate_text(per_s("ringmq_produce_requests_total")),
        q("ringmq_produce_duration_seconds", 0.5),
        q("ringmq_produce_duration_seconds", 0.99),
    ));
    out.push_str(&format!(
        "fetch    {:>10}/s out  {:>8} requests/s   fdatasync {:>6}/s, p99 {} ms   errors {}/s\n\n",
        bytes_text(per_s("ringmq_partition_bytes_out_total")),
        rate_text(per_s("ringmq_fetch_requests_total")),
        rate_text(per_s("ringmq_log_syncs_total")),
        q("ringmq_log_sync_duration_seconds", 0.99),
        rate_text(per_s("ringmq_request_errors_total")),
    ));
    // Topics.
    let delta_by = |name: &str, by: &str| {
        let (b, n) = (sum_by(before, name, by), sum_by(now, name, by));
        n.into_iter()
            .map(|(k, v)| {
                let d = (v - b.get(&k).copied().unwrap_or(0.0)).max(0.0) / secs;
                (k, d)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let records = delta_by("ringmq_partition_records_in_total", "topic");
    let bytes_in = delta_by("ringmq_partition_bytes_in_total", "topic");
    let bytes_out = delta_by("ringmq_partition_bytes_out_total", "topic");
    let size = sum_by(now, "ringmq_partition_size_bytes", "topic");
    out.push_str(&format!(
        "{:<32} {:>12} {:>12} {:>12} {:>12}\n",
        "TOPIC", "RECORDS/S", "IN/S", "OUT/S", "SIZE"
    ));
    let mut topics: Vec<_> = records.iter().collect();
    topics.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    for (t, r) in topics.iter().take(15) {
        out.push_str(&format!(
            "{:<32} {:>12} {:>12} {:>12} {:>12}\n",
            t,
            rate_text(**r),
            bytes_text(bytes_in.get(*t).copied().unwrap_or(0.0)),
            bytes_text(bytes_out.get(*t).copied().unwrap_or(0.0)),
            bytes_text(size.get(*t).copied().unwrap_or(0.0)),
        ));
    }
    if topics.len() > 15 {
        out.push_str(&format!("  … and {} more topics\n", topics.len() - 15));
    }
    // Groups.
    let lag = sum_by(now, "ringmq_group_lag_offsets", "group");
    let members = sum_by(now, "ringmq_group_members", "group");
    let committed_rate = delta_by("ringmq_group_committed_offset", "group");
    out.push_str(&format!(
        "\n{:<32} {:>12} {:>12} {:>16}\n",
        "GROUP", "MEMBERS", "LAG", "COMMITTED/S"
    ));
    if lag.is_empty() {
        out.push_str("  (no consumer group with committed offsets on this node)\n");
    }
    for (g, l) in &lag {
        out.push_str(&format!(
            "{:<32} {:>12} {:>12} {:>16}\n",
            g,
            members.get(g).copied().unwrap_or(0.0),
            format!("{l:.0}"),
            rate_text(committed_rate.get(g).copied().unwrap_or(0.0)),
        ));
    }
    // Shards.
    let produce = delta_by("ringmq_produce_requests_total", "shard");
    let fetches = delta_by("ringmq_fetch_requests_total", "shard");
    let forwarded = delta_by("ringmq_requests_forwarded_total", "shard");
    let conns = sum_by(now, "ringmq_connections", "shard");
    out.push_str(&format!(
        "\n{:<8} {:>14} {:>14} {:>14} {:>12}\n",
        "SHARD", "PRODUCE REQ/S", "FETCH REQ/S", "FORWARDED/S", "CONNECTIONS"
    ));
    for (s, c) in &conns {
        out.push_str(&format!(
            "{:<8} {:>14} {:>14} {:>14} {:>12}\n",
            s,
            rate_text(produce.get(s).copied().unwrap_or(0.0)),
            rate_text(fetches.get(s).copied().unwrap_or(0.0)),
            rate_text(forwarded.get(s).copied().unwrap_or(0.0)),
            format!("{c:.0}"),
        ));
    }
    out
}

/// Runs `ringmq top`.
pub fn run(a: TopArgs) -> anyhow::Result<()> {
    if a.interval.is_nan() || a.interval <= 0.0 {
        bail!("--interval must be more than 0 seconds");
    }
    let every = Duration::from_secs_f64(a.interval);
    let mut before = fetch(&a.admin)?;
    let mut at = Instant::now();
    let mut shown = 0u64;
    loop {
        std::thread::sleep(every);
        let now = fetch(&a.admin)?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let screen = render(&before, &now, secs, &a.admin);
        let mut out = std::io::stdout().lock();
        if a.count == 0 {
            // Clear the screen and go home, then draw.
            write!(out, "\x1b[2J\x1b[H{screen}")?;
        } else {
            writeln!(out, "{screen}")?;
        }
        out.flush()?;
        before = now;
        shown += 1;
        if a.count > 0 && shown >= a.count {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_added_between_reads() {
        let before = parse(
            "h_bucket{shard=\"0\",le=\"0.001\"} 10\nh_bucket{shard=\"0\",le=\"0.002\"} 10\nh_bucket{shard=\"0\",le=\"+Inf\"} 10\n",
        );
        // 100 more samples: 50 at or under 1 ms, 50 in (1 ms, 2 ms].
        let now = parse(
            "h_bucket{shard=\"0\",le=\"0.001\"} 60\nh_bucket{shard=\"0\",le=\"0.002\"} 110\nh_bucket{shard=\"0\",le=\"+Inf\"} 110\n",
        );
        let p50 = quantile(&before, &now, "h", 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        let p99 = quantile(&before, &now, "h", 0.99).unwrap();
        assert!((p99 - 0.00198).abs() < 1e-6, "{p99}");
        assert_eq!(quantile(&now, &now, "h", 0.5), None, "no new samples");
    }

    #[test]
    fn labels_with_commas_and_quotes_parse() {
        let s = parse("m{topic=\"a,b\",partition=\"0\"} 5\nm2 7\n");
        assert_eq!(
            s.get(&(
                "m".to_string(),
                vec![
                    ("partition".to_string(), "0".to_string()),
                    ("topic".to_string(), "a,b".to_string())
                ]
            )),
            Some(&5.0)
        );
        assert_eq!(total(&s, "m2"), 7.0);
    }
}
