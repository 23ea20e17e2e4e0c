//! The workload: when each member casts and how large each payload is, and
//! the check of a delivered payload against the shared format of
//! [`crate::payload`].
//!
//! Member `i` casts `casts` messages, the first at a random offset within one
//! interval, each next one an interval after the previous one was accepted.
//! A cast refused with `Refused::Backpressure` is retried after [`RETRY`] with the same
//! payload: the workload never drops a cast. Sizes are drawn log-uniformly
//! from the scenario's range, so a range of 1..=65536 gives tiny, medium and
//! large payloads alike. Each member draws from its own random stream, so
//! cutting the number of casts leaves the other members' sizes alone.

use super::scenario::Scenario;
use bytes::Bytes;
use std::time::Duration;
use strata_stack::{Instant, Rng};

/// How long a member waits before retrying a cast refused by backpressure.
pub const RETRY: Duration = Duration::from_micros(200);

/// One member's remaining casts.
#[derive(Debug)]
pub(crate) struct Caster {
    rng: Rng,
    name: String,
    /// The index of the next cast.
    pub next_k: u64,
    /// When to try it; `None` once all are cast (or the member crashed).
    pub next_at: Option<Instant>,
    /// The payload being retried after backpressure, if any.
    pending: Option<Bytes>,
    total: u64,
    interval: Duration,
    size: (usize, usize),
}

impl Caster {
    pub fn new(s: &Scenario, name: String, rng: &mut Rng) -> Caster {
        let mut rng = rng.fork();
        let interval = Duration::from_micros(s.interval_us);
        let first = Instant::ZERO + Duration::from_micros(rng.below(s.interval_us.max(1)));
        let next_at = (s.casts > 0).then_some(first);
        Caster { rng, name, next_k: 0, next_at, pending: None, total: u64::from(s.casts), interval, size: s.size }
    }

    /// The payload of the cast due now (the same one again after backpressure).
    pub fn payload(&mut self) -> Bytes {
        if let Some(p) = &self.pending {
            return p.clone();
        }
        let size = draw_size(&mut self.rng, self.size.0, self.size.1);
        let p = crate::payload::make(&self.name, self.next_k, size);
        self.pending = Some(p.clone());
        p
    }

    /// The cast due now was accepted at `now`.
    pub fn accepted(&mut self, now: Instant) {
        self.pending = None;
        self.next_k += 1;
        self.next_at = (self.next_k < self.total).then(|| now + self.interval);
    }

    /// The cast due now was refused; try again later.
    pub fn refused(&mut self, now: Instant) {
        self.next_at = Some(now + RETRY);
    }

    /// Stops casting (the member crashed).
    pub fn stop(&mut self) {
        self.next_at = None;
    }
}

/// A size in `lo..=hi`, log-uniform: first a power-of-two band, then a
/// uniform size inside it.
pub fn draw_size(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    if hi <= lo {
        return lo;
    }
    let band = |x: usize| usize::BITS - x.max(1).leading_zeros(); // 1 for 1, 2 for 2..=3, 3 for 4..=7 ...
    let b = rng.between(u64::from(band(lo)), u64::from(band(hi))) as u32;
    let band_lo = (1usize << (b - 1)).max(lo);
    let band_hi = ((1usize << b) - 1).min(hi);
    rng.between(band_lo as u64, band_hi as u64) as usize
}

/// Whether `payload`'s filler after its id text is the one
/// [`crate::payload::make`] writes for cast `k`. Does not allocate.
pub fn filler_intact(payload: &[u8], k: u64) -> bool {
    let Some(text_end) = payload.iter().position(|&b| b == b'|') else { return false };
    payload.iter().enumerate().skip(text_end + 1).all(|(j, &b)| b == ((j as u64).wrapping_mul(31).wrapping_add(k) % 256) as u8)
}

/// The id `(member text, k)` a payload claims, and whether its filler is intact.
pub fn inspect(payload: &[u8]) -> (Option<(String, u64)>, bool) {
    match crate::payload::id(payload).and_then(crate::payload::split_id) {
        Some((member, k)) => (Some((member.to_string(), k)), filler_intact(payload, k)),
        None => (None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_small_and_large_within_bounds() {
        let mut rng = Rng::new(3);
        let sizes: Vec<usize> = (0..2000).map(|_| draw_size(&mut rng, 1, 65_536)).collect();
        assert!(sizes.iter().all(|s| (1..=65_536).contains(s)));
        assert!(sizes.iter().filter(|&&s| s <= 64).count() > 200);
        assert!(sizes.iter().filter(|&&s| s >= 16_384).count() > 200);
        assert_eq!(draw_size(&mut rng, 5, 5), 5);
        assert!((0..100).all(|_| (1000..=1003).contains(&draw_size(&mut rng, 1000, 1003))));
    }

    #[test]
    fn inspect_checks_id_and_filler() {
        let p = crate::payload::make("10.0.0.1:7000", 9, 300);
        assert_eq!(inspect(&p), (Some(("10.0.0.1:7000".to_string(), 9)), true));
        let mut bad = p.to_vec();
        bad[200] ^= 0x40;
        assert!(!inspect(&bad).1);
        assert_eq!(inspect(b"no id here"), (None, false));
        assert!(inspect(&crate::payload::make("m", 3, 1)).1);
    }
}
