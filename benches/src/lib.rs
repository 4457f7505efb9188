//! ringmq's benchmarks. The binaries in `src/bin/` measure one thing each and print
//! their figures; the shell scripts beside them (`benches/*.sh`) run them next to a
//! reference measured in the same run (fio, iperf3) and print the ratio.
#![deny(missing_docs)]

use hdrhistogram::Histogram;

/// Latency percentiles in microseconds, as the benchmarks report them.
pub fn percentiles_us(h: &Histogram<u64>) -> [(&'static str, u64); 5] {
    [
        ("p50", h.value_at_quantile(0.50)),
        ("p90", h.value_at_quantile(0.90)),
        ("p99", h.value_at_quantile(0.99)),
        ("p99.9", h.value_at_quantile(0.999)),
        ("max", h.max()),
    ]
}

/// The percentiles of [`percentiles_us`] as a JSON object, for `--json` outputs.
pub fn percentiles_json(h: &Histogram<u64>) -> serde_json::Value {
    let mut lat = serde_json::Map::new();
    for (k, v) in percentiles_us(h) {
        lat.insert(k.to_string(), v.into());
    }
    serde_json::Value::Object(lat)
}
