//! Latency summaries for the benchmark reports.

use std::time::Duration;

use serde::Serialize;

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles over `samples` (sorted here).
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let pct = |p: f64| ms(percentile(samples, p));
        Self {
            samples: samples.len(),
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
            max_ms: ms(*samples.last().expect("non-empty")),
        }
    }
}

/// The nearest-rank `p`th percentile of sorted, non-empty `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latency::of(&mut v);
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(Latency::of(&mut []).samples, 0);
        let one = [Duration::from_millis(7)];
        assert_eq!(percentile(&one, 99.0), Duration::from_millis(7));
    }
}
