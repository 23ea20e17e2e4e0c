//! A latency histogram with fixed memory and no allocation per sample:
//! log-linear buckets (each power of two cut into 128 equal steps, so a
//! value is kept to within 1/128 ≈ 0.8% of itself; exact below 128 ns),
//! covering every `u64` nanosecond count. Percentiles walk the buckets;
//! the exact maximum is kept on the side.
//!
//! Members send their histograms to the coordinating process as the list of
//! non-empty buckets ([`Histogram::to_sparse`]), which merges them.

/// Steps per power of two (as a shift).
const STEP_BITS: u32 = 7;
const STEPS: usize = 1 << STEP_BITS;
/// Buckets: values below `STEPS` one each, then `STEPS` per power of two.
const BUCKETS: usize = STEPS + (64 - STEP_BITS as usize) * STEPS;

/// Nanosecond samples.
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0, max: 0 }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < STEPS as u64 {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= STEP_BITS
    let step = (value >> (exp - STEP_BITS)) as usize & (STEPS - 1);
    STEPS + (exp - STEP_BITS) as usize * STEPS + step
}

/// The middle of a bucket's range of values.
fn value_of(bucket: usize) -> u64 {
    if bucket < STEPS {
        return bucket as u64;
    }
    let exp = (bucket - STEPS) / STEPS; // the shift of this power of two's steps
    let step = ((bucket - STEPS) % STEPS) as u64;
    let low = (STEPS as u64 + step) << exp;
    let width = 1u64 << exp;
    low.saturating_add(width / 2)
}

impl Histogram {
    /// Adds one sample.
    pub fn record(&mut self, nanos: u64) {
        self.counts[bucket_of(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The largest sample (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0 to 1): the smallest bucket that holds at
    /// least `q` of the samples, as its middle, but never above the maximum.
    /// `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(value_of(bucket).min(self.max));
            }
        }
        Some(self.max)
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The non-empty buckets as `[bucket, count]` pairs, then the maximum
    /// as a last single-element entry: `[[b, c], ..., [max]]`.
    pub fn to_sparse(&self) -> serde_json::Value {
        let mut out: Vec<serde_json::Value> = self.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(b, &c)| serde_json::json!([b, c])).collect();
        out.push(serde_json::json!([self.max]));
        serde_json::Value::Array(out)
    }

    /// Reads what [`Histogram::to_sparse`] wrote; `None` if it is not that.
    pub fn from_sparse(value: &serde_json::Value) -> Option<Histogram> {
        let mut h = Histogram::default();
        for entry in value.as_array()? {
            match entry.as_array()?.as_slice() {
                [b, c] => {
                    let (b, c) = (b.as_u64()? as usize, c.as_u64()?);
                    *h.counts.get_mut(b)? += c;
                    h.total += c;
                }
                [max] => h.max = max.as_u64()?,
                _ => return None,
            }
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_values_within_one_percent() {
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 12_345, 999_999, 1 << 40, u64::MAX / 3, u64::MAX] {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            let back = value_of(b);
            let err = back.abs_diff(v) as f64 / (v.max(1) as f64);
            assert!(err <= 1.0 / 128.0, "{v} -> bucket {b} -> {back}");
        }
        // Buckets are ordered like values.
        let mut last = 0;
        for v in (0..20_000u64).map(|i| i * 37) {
            assert!(bucket_of(v) >= last);
            last = bucket_of(v);
        }
    }

    #[test]
    fn quantiles_are_ordered_and_bounded_by_the_maximum() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let (p50, p99, p999) = (h.quantile(0.5).unwrap(), h.quantile(0.99).unwrap(), h.quantile(0.999).unwrap());
        assert!(p50 <= p99 && p99 <= p999 && p999 <= h.max(), "{p50} {p99} {p999} {}", h.max());
        assert!((495_000..=505_000).contains(&p50), "{p50}");
        assert!((985_000..=995_000).contains(&p99), "{p99}");
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.quantile(1.0), Some(h.max()));
    }

    #[test]
    fn sparse_form_round_trips_and_merges() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 0..500u64 {
            a.record(v * 7919);
            b.record(v * 13);
        }
        let back = Histogram::from_sparse(&a.to_sparse()).unwrap();
        assert_eq!((back.len(), back.max(), back.quantile(0.9)), (a.len(), a.max(), a.quantile(0.9)));
        let mut merged = Histogram::from_sparse(&b.to_sparse()).unwrap();
        merged.merge(&back);
        assert_eq!(merged.len(), 1000);
        assert_eq!(merged.max(), a.max());
        assert!(Histogram::from_sparse(&serde_json::json!([[BUCKETS, 1]])).is_none(), "a bucket out of range");
        assert!(Histogram::from_sparse(&serde_json::json!("x")).is_none());
    }
}
