//! Percentile summaries of latency samples.

use serde::{Deserialize, Serialize};

/// The nearest-rank `p`th percentile of `sorted` (ascending), or `None` when it is empty.
///
/// Nearest rank: the smallest sample such that at least `p`% of the samples are at or below
/// it, so a percentile is always a sample that was measured, never an interpolation.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // The rank is between 0 and len, far below 2^52: the casts are exact.
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// p50, p90, p99 and max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Percentiles {
    /// Summarizes samples given in microseconds; sorts them in place. All zero when empty.
    pub fn from_micros(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let ms = |p| percentile(samples, p).map_or(0.0, micros_to_ms);
        Self {
            count: samples.len(),
            p50: ms(50.0),
            p90: ms(90.0),
            p99: ms(99.0),
            max: ms(100.0),
        }
    }
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50));
        assert_eq!(percentile(&samples, 90.0), Some(90));
        assert_eq!(percentile(&samples, 99.0), Some(99));
        assert_eq!(percentile(&samples, 99.9), Some(100));
        assert_eq!(percentile(&samples, 100.0), Some(100));
        assert_eq!(percentile(&samples, 0.0), Some(1));
    }

    #[test]
    fn nearest_rank_on_few_samples_picks_a_sample() {
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        // Ten samples: p99 needs the 10th, p50 the 5th.
        let samples = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1000];
        assert_eq!(percentile(&samples, 99.0), Some(1000));
        assert_eq!(percentile(&samples, 50.0), Some(5));
        assert_eq!(percentile(&samples, 90.0), Some(9));
    }

    #[test]
    fn empty_has_no_percentile() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(Percentiles::from_micros(&mut []), Percentiles::default());
    }

    #[test]
    fn summary_sorts_and_converts_to_ms() {
        let mut samples: Vec<u64> = (1..=1000).rev().map(|n| n * 1000).collect();
        let summary = Percentiles::from_micros(&mut samples);
        assert_eq!(summary.count, 1000);
        assert!((summary.p50 - 500.0).abs() < f64::EPSILON);
        assert!((summary.p90 - 900.0).abs() < f64::EPSILON);
        assert!((summary.p99 - 990.0).abs() < f64::EPSILON);
        assert!((summary.max - 1000.0).abs() < f64::EPSILON);
    }
}
