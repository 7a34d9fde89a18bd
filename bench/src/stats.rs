//! Percentiles of latency samples.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Summary {
    /// Nearest-rank percentiles; `None` for no samples.
    pub fn of(samples: &[u64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[index.clamp(1, sorted.len()) - 1]
        };
        Some(Summary {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50, 95, 99, 100));
        assert_eq!(Summary::of(&[7]).unwrap().p99, 7);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(ms(1_234), "1.23 ms");
    }
}
