//! Request latency histograms with fixed buckets, cheap enough for every
//! request (one atomic add per bucket) and exported in Prometheus format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket is +Inf).
const BOUNDS_US: [u64; 14] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    2_000_000, 10_000_000,
];

/// One histogram: counts per bucket (not cumulative), a sum and a count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the Prometheus text form (`le` in seconds, cumulative).
    pub fn write_prometheus(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = BOUNDS_US
                .get(i)
                .map_or("+Inf".to_string(), |&us| format!("{}", us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

/// Latency of the requests a node's `Db` handles, by kind.
#[derive(Debug, Default)]
pub struct RequestLatency {
    pub reads: Histogram,
    pub writes: Histogram,
    pub failures: AtomicU64,
}

impl RequestLatency {
    pub fn write_prometheus(&self, out: &mut String) {
        let name = "tessera_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a Db request to its answer, retries included.\n# TYPE {name} histogram"
        );
        self.reads.write_prometheus(out, name, "kind=\"read\"");
        self.writes.write_prometheus(out, name, "kind=\"write\"");
        let _ = writeln!(
            out,
            "# HELP tessera_request_failures_total Db requests that ended in an error.\n# TYPE tessera_request_failures_total counter\ntessera_request_failures_total {}",
            self.failures.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.write_prometheus(&mut out, "x", "k=\"v\"");
        assert!(out.contains("x_bucket{k=\"v\",le=\"0.00025\"} 1"), "{out}");
        assert!(out.contains("x_bucket{k=\"v\",le=\"0.005\"} 2"), "{out}");
        assert!(out.contains("x_bucket{k=\"v\",le=\"10\"} 2"), "{out}");
        assert!(out.contains("x_bucket{k=\"v\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count{k=\"v\"} 3"), "{out}");
    }
}
