//! Latency histograms with fixed buckets, for the broker's Prometheus metrics. Each
//! shard thread owns its histograms and updates them with plain cells (no atomics, no
//! locks: nothing on the data path is shared between cores); a scrape takes a
//! [`HistogramSnapshot`] of each and sums them.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus `le`), from 50 µs to 30 s; a
/// last bucket (`+Inf`) takes the rest.
pub const BUCKET_BOUNDS_SECONDS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

const BUCKETS: usize = BUCKET_BOUNDS_SECONDS.len() + 1;

/// The bounds in nanoseconds, to place a sample without floating point.
const BOUNDS_NANOS: [u64; BUCKETS - 1] = {
    let mut out = [0u64; BUCKETS - 1];
    let mut i = 0;
    while i < out.len() {
        out[i] = (BUCKET_BOUNDS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A latency histogram of one thread.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [Cell<u64>; BUCKETS],
    sum_nanos: Cell<u64>,
}

impl Histogram {
    /// Counts one sample.
    pub fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NANOS.partition_point(|&b| b < nanos);
        let c = &self.counts[i];
        c.set(c.get() + 1);
        self.sum_nanos
            .set(self.sum_nanos.get().saturating_add(nanos));
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(Cell::get).collect(),
            sum_seconds: self.sum_nanos.get() as f64 / 1e9,
        }
    }
}

/// A histogram's counts at one moment, sendable between threads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Samples per bucket (not cumulative), one per bound of
    /// [`BUCKET_BOUNDS_SECONDS`] and a last one above them all. Empty: no histogram.
    pub counts: Vec<u64>,
    /// The sum of the samples, in seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
    }

    /// Samples in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

thread_local! {
    static SYNC_LATENCY: Histogram = Histogram::default();
}

/// Counts one fdatasync of a segment file on this thread.
pub(crate) fn record_sync(d: Duration) {
    SYNC_LATENCY.with(|h| h.record(d));
}

/// The fdatasync latencies of segment files on this thread (this shard) so far.
pub fn sync_latency_here() -> HistogramSnapshot {
    SYNC_LATENCY.with(Histogram::snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::default();
        h.record(Duration::from_micros(50)); // on the first bound: first bucket
        h.record(Duration::from_micros(51));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.counts.len(), BUCKET_BOUNDS_SECONDS.len() + 1);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[6], 1, "3 ms is in the (2.5 ms, 5 ms] bucket");
        assert_eq!(s.counts[BUCKET_BOUNDS_SECONDS.len()], 1);
        assert_eq!(s.count(), 4);
        assert!((s.sum_seconds - 60.003_101).abs() < 1e-9);
        let mut sum = s.clone();
        sum.merge(&s);
        assert_eq!(sum.count(), 8);
        assert_eq!(sum.counts[6], 2);
    }
}
