//! The workload: when each member casts and how large each payload is, and
//! the check of a delivered payload against the shared format of
//! [`crate::payload`].
//!
//! Member `i` casts `casts` messages, the first at a random offset within one
//! interval of its start (0, or its `join(i)@T`), each next one an interval
//! after the previous one was accepted.
//! A cast refused with `Refused::Backpressure` is retried after [`RETRY`] with the same
//! payload: the workload never drops a cast. (A refused cast leaves the
//! stack untouched, and only an input to the stack can reopen it, so the
//! simulator *parks* a refused caster until its stack gets an input and
//! then retries at the next point of the same [`RETRY`] grid, counting the
//! attempts it skipped as refused: the same run as retrying every
//! [`RETRY`], without the steps.) Sizes are drawn log-uniformly
//! from the scenario's range, so a range of 1..=65536 gives tiny, medium and
//! large payloads alike. Each member draws from its own random stream, so
//! cutting the number of casts leaves the other members' sizes alone.
//!
//! ## Reactive casts (ordering stacks)
//! An ordering layer is only tested by casts that depend on deliveries,
//! sent while what they depend on is still on its way elsewhere. So when
//! the scenario's stack names an ordering layer (`CAUSAL`, `TOTAL` or
//! `TOKEN`, see [`reacts`]), [`REACT_PERCENT`]% of the casts are
//! *reactive*: when the previous cast is accepted, a point is drawn
//! uniformly within the next interval, and the cast goes out
//! [`REACT_DELAY`] after the first input to the member's stack (a datagram
//! or a timer, which is what makes it deliver) at or after that point, or
//! at the end of the interval if no input comes first. Delivered at the
//! input's instant and cast strictly later, what the input delivered is a
//! causal predecessor of the cast, which then races it to the other
//! members. The reactions draw from a random stream of their own, and other
//! stacks (the FRAG:NAK and VSYNC properties) get the plain workload, run
//! for run unchanged.
//!
//! ## FIFO-only casts
//! With `fifo=p` in the scenario, each cast asks for `Order::Fifo` with
//! probability `p` (drawn from a stream of its own, so `fifo=0` leaves
//! everything else as it was): on SAFE such a cast is plain, outside the
//! total order.
//!
//! ## Restarts
//! A crash stops a member's casts; a `restart(i)@T` resumes them
//! (`Caster::resume`): the remaining casts, numbered on from where the
//! member stopped, the first within one interval of the restart.

use super::scenario::Scenario;
use bytes::Bytes;
use std::time::Duration;
use strata_stack::{Instant, Order, Rng};

/// How long a member waits before retrying a cast refused by backpressure.
pub const RETRY: Duration = Duration::from_micros(200);

/// The share of reactive casts (in percent) when the stack [`reacts`].
pub const REACT_PERCENT: u64 = 50;

/// How long after the input it reacts to a reactive cast goes out: strictly
/// later, so that the checks, which count as a cast's predecessors only the
/// deliveries strictly before it, see what the input delivered.
pub const REACT_DELAY: Duration = Duration::from_micros(1);

/// The layer names that make the workload reactive (see the module doc).
pub const REACTIVE_LAYERS: &[&str] = &["CAUSAL", "TOTAL", "TOKEN", "SAFE"];

/// Whether the workload of a run of `stack` has reactive casts: whether the
/// stack string names a layer of [`REACTIVE_LAYERS`] (a layer's name is
/// what precedes its parameters, between the colons outside parentheses).
pub fn reacts(stack: &str) -> bool {
    layer_names(stack).any(|name| REACTIVE_LAYERS.contains(&name))
}

/// The layer names of a stack string, bottom first, as written (trimmed).
pub fn layer_names(stack: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0i32;
    stack
        .split(move |c: char| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            c == ':' && depth == 0
        })
        .map(|layer| layer.split('(').next().unwrap_or("").trim())
}

/// One member's remaining casts.
#[derive(Debug)]
pub(crate) struct Caster {
    rng: Rng,
    name: String,
    /// The index of the next cast.
    pub next_k: u64,
    /// When to try it; `None` once all are cast (or the member crashed).
    pub next_at: Option<Instant>,
    /// The payload being retried after backpressure, if any, and the order it asks for.
    pending: Option<(Bytes, Option<Order>)>,
    /// Refused, and its stack has had no input since: the attempt due at
    /// `next_at` (and those after it on the [`RETRY`] grid) would be refused too.
    pub parked: bool,
    total: u64,
    interval: Duration,
    size: (usize, usize),
    /// The reactions' own random stream; `None` for a plain workload.
    react: Option<Rng>,
    /// The next cast is reactive: it goes out [`REACT_DELAY`] after the
    /// first input at or after this point.
    react_from: Option<Instant>,
    /// The FIFO-only draws' own random stream and share; `None` for `fifo=0`.
    fifo: Option<(Rng, f64)>,
}

impl Caster {
    /// The casts of the member named `name`, which starts at `start`.
    pub fn new(s: &Scenario, name: String, rng: &mut Rng, start: Instant) -> Caster {
        let mut rng = rng.fork();
        let interval = Duration::from_micros(s.interval_us);
        let first = start + Duration::from_micros(rng.below(s.interval_us.max(1)));
        let next_at = (s.casts > 0).then_some(first);
        // Forked only for a reactive workload, so the plain one draws as it always did.
        let react = reacts(&s.stack).then(|| rng.fork());
        // Likewise forked only when some casts are FIFO-only.
        let fifo = (s.fifo > 0.0).then(|| (rng.fork(), s.fifo));
        Caster { rng, name, next_k: 0, next_at, pending: None, parked: false, total: u64::from(s.casts), interval, size: s.size, react, react_from: None, fifo }
    }

    /// The payload of the cast due now (the same one again after backpressure).
    #[cfg(test)]
    pub fn payload(&mut self) -> Bytes {
        self.next_cast().0
    }

    /// The payload of the cast due now and the order it asks for (`None`:
    /// the stack's strongest); the same again after backpressure.
    pub fn next_cast(&mut self) -> (Bytes, Option<Order>) {
        if let Some(p) = &self.pending {
            return p.clone();
        }
        let size = draw_size(&mut self.rng, self.size.0, self.size.1);
        let p = crate::payload::make(&self.name, self.next_k, size);
        let fifo_only = self.fifo.as_mut().is_some_and(|(rng, share)| rng.chance(*share));
        let order = fifo_only.then_some(Order::Fifo);
        self.pending = Some((p.clone(), order));
        (p, order)
    }

    /// The cast due now was accepted at `now`.
    pub fn accepted(&mut self, now: Instant) {
        self.pending = None;
        self.next_k += 1;
        self.next_at = (self.next_k < self.total).then(|| now + self.interval);
        self.react_from = None;
        if let (Some(rng), Some(_)) = (&mut self.react, self.next_at) {
            if rng.below(100) < REACT_PERCENT {
                let within = rng.below(self.interval.as_nanos().max(1) as u64);
                self.react_from = Some(now + Duration::from_nanos(within));
            }
        }
    }

    /// The cast due now was refused; try again later (parked until the stack gets an input).
    pub fn refused(&mut self, now: Instant) {
        self.next_at = Some(now + RETRY);
        self.parked = true;
    }

    /// When to try next, unless parked.
    pub fn due(&self) -> Option<Instant> {
        self.next_at.filter(|_| !self.parked)
    }

    /// The member's stack got an input at `now`: unparks the caster, moving
    /// its next attempt to the first [`RETRY`] grid point at or after `now`,
    /// or, if the next cast is reactive and its point has come, brings it
    /// forward to [`REACT_DELAY`] after `now`.
    /// Returns how many attempts (grid points before `now`) were skipped.
    pub fn wake(&mut self, now: Instant) -> u64 {
        if !std::mem::replace(&mut self.parked, false) {
            if let (Some(from), Some(due)) = (self.react_from, self.next_at) {
                if from <= now {
                    self.react_from = None;
                    self.next_at = Some(due.min(now + REACT_DELAY));
                }
            }
            return 0;
        }
        let Some(due) = self.next_at else { return 0 };
        let behind = now.saturating_since(due).as_nanos();
        let step = RETRY.as_nanos();
        let skipped = behind.div_ceil(step) as u64;
        self.next_at = Some(due + RETRY * skipped as u32);
        skipped
    }

    /// Attempts a parked caster would have made up to and including `end`.
    pub fn parked_attempts_until(&self, end: Instant) -> u64 {
        match self.next_at.filter(|_| self.parked) {
            Some(due) if due <= end => (end.saturating_since(due).as_nanos() / RETRY.as_nanos()) as u64 + 1,
            _ => 0,
        }
    }

    /// Stops casting at `now` (the member crashed or leaves). Returns the
    /// attempts a parked caster skipped before `now`.
    pub fn stop(&mut self, now: Instant) -> u64 {
        let skipped = self.wake(now);
        self.next_at = None;
        self.react_from = None;
        skipped
    }

    /// The member restarted at `now`: its remaining casts go on, the first
    /// at a random point within one interval (a cast refused before the
    /// crash is tried again with the same payload and number). Whether any remain.
    pub fn resume(&mut self, now: Instant) -> bool {
        self.parked = false;
        self.react_from = None;
        self.next_at = (self.next_k < self.total).then(|| now + Duration::from_nanos(self.rng.below(self.interval.as_nanos().max(1) as u64)));
        self.next_at.is_some()
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
    fn only_stacks_naming_an_ordering_layer_react() {
        assert!(reacts("FRAG:NAK:CAUSAL:VSYNC") && reacts("FRAG:NAK:VSYNC:TOTAL") && reacts("FRAG:NAK(x=1):VSYNC:TOKEN(hold_ms=2)"));
        assert!(reacts(" FRAG : NAK : CAUSAL ") && reacts("CAUSAL(a=b:c)"));
        assert!(!reacts("FRAG:NAK:VSYNC") && !reacts("FRAG:NAK") && !reacts("FRAG(x=CAUSAL):NAK") && !reacts("TOTALLY:CAUSALITY") && !reacts(""));
        assert_eq!(layer_names("FRAG(a=1:2):NAK").collect::<Vec<_>>(), ["FRAG", "NAK"]);
    }

    #[test]
    fn a_reactive_cast_follows_the_first_input_after_its_point() {
        let s = Scenario { stack: "FRAG:NAK:CAUSAL".into(), casts: 1000, interval_us: 10_000, ..Scenario::default() };
        let mut c = Caster::new(&s, "m".into(), &mut Rng::new(5), Instant::ZERO);
        let (mut reactive, mut plain) = (0, 0);
        let mut now = c.next_at.unwrap();
        for _ in 0..400 {
            c.payload();
            c.accepted(now);
            let interval_end = now + Duration::from_millis(10);
            // Inputs every 2 ms: a reactive cast goes 1 us after the first one at or after its point.
            let point = c.react_from;
            let mut input = now;
            while c.next_at == Some(interval_end) && input + Duration::from_millis(2) < interval_end {
                input += Duration::from_millis(2);
                assert_eq!(c.wake(input), 0);
            }
            match point {
                Some(p) => {
                    let first_input = if p <= now {
                        now + Duration::from_millis(2)
                    } else {
                        now + Duration::from_millis(2) * (p.saturating_since(now).as_nanos().div_ceil(2_000_000) as u32)
                    };
                    let expected = if first_input < interval_end { first_input + REACT_DELAY } else { interval_end };
                    assert_eq!(c.next_at, Some(expected));
                    reactive += 1;
                }
                None => {
                    assert_eq!(c.next_at, Some(interval_end));
                    plain += 1;
                }
            }
            now = c.next_at.unwrap();
        }
        assert!(reactive > 150 && plain > 150, "{reactive} reactive, {plain} plain");
        // A plain workload never moves a cast.
        let s = Scenario { stack: "FRAG:NAK:VSYNC".into(), ..s };
        let mut c = Caster::new(&s, "m".into(), &mut Rng::new(5), Instant::ZERO);
        c.payload();
        c.accepted(Instant::ZERO);
        assert_eq!(c.wake(Instant::ZERO + Duration::from_millis(3)), 0);
        assert_eq!(c.next_at, Some(Instant::ZERO + Duration::from_millis(10)));
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
