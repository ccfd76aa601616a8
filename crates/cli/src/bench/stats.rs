//! Percentiles of latency samples.

use serde::Serialize;

/// One (method, workload) latency summary, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub method: String,
    pub workload: String,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub n: usize,
}

/// Nearest-rank percentile (`q` in 0..=1) of unsorted samples.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

/// The summary row of `samples` (milliseconds), rounded to microseconds.
pub fn row(method: &str, workload: &str, samples: &[f64]) -> Row {
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    Row {
        method: method.to_string(),
        workload: workload.to_string(),
        p50_ms: round(percentile(samples, 0.50)),
        p90_ms: round(percentile(samples, 0.90)),
        p99_ms: round(percentile(samples, 0.99)),
        n: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.9), 90.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
