//! The simulated network: datagrams in flight, ordered by arrival time and
//! then by a sequence number (so that equal times break ties the same way
//! every run), and the faults that lose, duplicate, delay and cut them.
//!
//! Each copy of a datagram (one per destination) is decided on its own, in
//! this order of random draws: lost? (`loss`); base delay uniform in
//! `delay_us`; extra delay (`reorder`, 1 to 4 times the largest base delay);
//! duplicated? (`dup`, the duplicate gets its own delay). A partition cuts a
//! copy when it is sent; a crashed member's copies vanish on arrival.

use super::scenario::Scenario;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Duration;
use strata_stack::{Instant, Rng};

/// What happened to the datagrams of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Transmits taken from the stacks.
    pub transmits: u64,
    /// Copies addressed to a member (a group transmit makes one per other member).
    pub copies: u64,
    /// Copies lost at random.
    pub lost: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Copies given an extra (reordering) delay.
    pub delayed: u64,
    /// Copies cut by a partition.
    pub cut: u64,
    /// Copies that arrived at a crashed member.
    pub to_crashed: u64,
    /// Copies addressed to no member of the run.
    pub unroutable: u64,
    /// Copies handed to a stack.
    pub arrived: u64,
    /// What the attacker did (`attack=`, `keep_left=`; see [`super::attack`]).
    pub attack: super::attack::AttackStats,
}

pub(crate) struct InFlight {
    pub at: Instant,
    seq: u64,
    pub to: usize,
    pub data: bytes::Bytes,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub(crate) struct Net {
    rng: Rng,
    loss: f64,
    dup: f64,
    reorder: f64,
    delay_us: (u64, u64),
    heap: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// The set of each member while a partition holds.
    sets: Option<Vec<usize>>,
    pub stats: NetStats,
}

impl Net {
    pub fn new(s: &Scenario, rng: Rng) -> Net {
        Net { rng, loss: s.loss, dup: s.dup, reorder: s.reorder, delay_us: s.delay_us, heap: BinaryHeap::new(), seq: 0, sets: None, stats: NetStats::default() }
    }

    /// Starts a partition: `sets` lists member indices; the unlisted form one more set.
    pub fn partition(&mut self, members: usize, sets: &[Vec<u16>]) {
        let mut of = vec![sets.len(); members];
        for (n, set) in sets.iter().enumerate() {
            for &i in set {
                if let Some(slot) = of.get_mut(usize::from(i)) {
                    *slot = n;
                }
            }
        }
        self.sets = Some(of);
    }

    pub fn heal(&mut self) {
        self.sets = None;
    }

    fn delay(&mut self) -> Duration {
        let mut us = self.rng.between(self.delay_us.0, self.delay_us.1);
        if self.rng.chance(self.reorder) {
            self.stats.delayed += 1;
            let hi = self.delay_us.1.max(1);
            us += self.rng.between(hi, 4 * hi);
        }
        Duration::from_micros(us)
    }

    /// Sends one copy from `from` to `to` at `now`.
    pub fn send(&mut self, now: Instant, from: usize, to: usize, data: &bytes::Bytes) {
        self.stats.copies += 1;
        if self.sets.as_ref().is_some_and(|sets| sets[from] != sets[to]) {
            self.stats.cut += 1;
            return;
        }
        if self.rng.chance(self.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let at = now + self.delay();
            self.seq += 1;
            self.heap.push(Reverse(InFlight { at, seq: self.seq, to, data: data.clone() }));
        }
    }

    /// When the next copy arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.at)
    }

    /// The next copy, if it arrives at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<InFlight> {
        if self.next_arrival()? <= now {
            self.heap.pop().map(|r| r.0)
        } else {
            None
        }
    }
}
