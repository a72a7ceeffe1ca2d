//! A fixed-bucket histogram updated without locks, for the log's monitoring counters
//! (fdatasync latency, records per fdatasync) and for anyone who exports them (Prometheus).

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (inclusive) of the fdatasync latency buckets, in microseconds; a last bucket
/// holds everything above.
pub const SYNC_MICROS_BOUNDS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Upper bounds (inclusive) of latency buckets for acknowledgement delays, in microseconds.
pub const ACK_MICROS_BOUNDS: [u64; 12] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// Upper bounds (inclusive) of the records-per-fdatasync buckets.
pub const RECORDS_PER_SYNC_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Buckets per histogram: one per bound and one above the last.
pub const BUCKETS: usize = 13;

/// A histogram's counts at one moment: `counts[i]` observations in bucket `i` (not
/// cumulative), and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket (the last: above every bound).
    pub counts: [u64; BUCKETS],
    /// The sum of every observation.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Observations in every bucket.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative counts per bound (Prometheus' `le` buckets), the last being `+Inf`.
    pub fn cumulative(&self) -> [u64; BUCKETS] {
        let mut acc = 0;
        let mut out = [0; BUCKETS];
        for (o, c) in out.iter_mut().zip(self.counts) {
            acc += c;
            *o = acc;
        }
        out
    }
}

/// The live histogram: updated with relaxed atomics, read as a [`HistogramSnapshot`].
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64; BUCKETS - 1],
    counts: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with `bounds` (inclusive upper bounds, ascending).
    pub fn new(bounds: &'static [u64; BUCKETS - 1]) -> Histogram {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::new(&RECORDS_PER_SYNC_BOUNDS);
        for v in [0, 1, 2, 3, 4096, 4097, u64::MAX / 2] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2, "0 and 1");
        assert_eq!(s.counts[1], 1, "2");
        assert_eq!(s.counts[2], 1, "3 (<= 4)");
        assert_eq!(s.counts[11], 1, "4096");
        assert_eq!(s.counts[12], 2, "above the last bound");
        assert_eq!(s.count(), 7);
        assert_eq!(s.cumulative()[12], 7);
        assert_eq!(s.cumulative()[1], 3);
    }
}
