//! The simulated network: datagrams in flight, ordered by arrival time and
//! then by a sequence number (so that equal times break ties the same way
//! every run), and the faults that lose, duplicate, delay and cut them.
//!
//! Each copy of a datagram (one per destination) is decided on its own, in
//! this order of random draws: lost? (`loss`); base delay uniform in
//! `delay_us`; extra delay (`reorder`, 1 to 4 times the largest base delay);
//! duplicated? (`dup`, the duplicate gets its own delay). A partition cuts a
//! copy when it is sent; a crashed member's copies vanish on arrival. With
//! `link_fifo=true` a copy never arrives before an earlier copy between the
//! same two members: its arrival is held back to that one's (the send order
//! breaks the tie). With `tree=K` a forwarded copy is sent like any other,
//! by the member that forwards it (see [`super::route`]), and the network
//! also carries the tree transport's own events: notices of connections
//! broken by a crash (`Carried::Lost`), which draw a base delay and
//! nothing else, and the checks of stalled connections
//! (`Carried::Stall`), which draw nothing.

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
    /// Copies addressed to a member (a group transmit makes one per other
    /// member, or with `tree=K` one per tree neighbour of the sender; every
    /// forwarded copy counts too).
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
    /// With `tree=K`: copies a member forwarded to a tree neighbour (see [`super::route`]).
    pub forwarded: u64,
    /// With `tree=K`: tree copies that arrived at a running member under a
    /// view tag other than its own view's, and so were not forwarded.
    pub not_forwarded: u64,
    /// With `tree=K`: members marked unreachable by another member's
    /// transport (a crash notice, a refused connect, a stalled connection;
    /// a failed reconnect renews a mark and is not counted again).
    pub unreachable: u64,
    /// With `tree=K`: marks that cleared (a reconnect got through, or the
    /// member connected to the one that marked it).
    pub reconnected: u64,
    /// With `tree=K`: new marks reported to a stack as a suspicion
    /// (`Stack::suspect`), as the runtime's driver does with `poll_lost`
    /// (only when the marking member's view holds a member at that address).
    pub suspicions: u64,
    /// With `tree=K`: copies a member sent on behalf of an unreachable
    /// neighbour (marked as coming from it; see [`super::route`]).
    pub routed_around: u64,
}

pub(crate) struct InFlight {
    pub at: Instant,
    seq: u64,
    /// The member that sent this copy (the last hop of a forwarded cast).
    pub from: usize,
    pub to: usize,
    pub what: Carried,
}

/// What a copy in flight carries.
pub(crate) enum Carried {
    /// A datagram; `tree` is set if it is a cast routed along a tree (and so
    /// to be forwarded).
    Datagram { data: bytes::Bytes, tree: Option<TreeCopy> },
    /// The connection to the sender of this notice (a member that crashed)
    /// broke: `watcher`, the incarnation of the receiver that had the
    /// connection, is told.
    Lost { watcher: strata_stack::MemberId },
    /// `stall_ms` after a tree copy from `watcher` (the incarnation of the
    /// receiver of this event) to member `peer` was cut at `since`: if the
    /// edge is still cut, the connection times out.
    Stall { watcher: strata_stack::MemberId, peer: usize, since: Instant },
}

/// What a tree copy carries besides the datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct TreeCopy {
    /// The view tag of the sender's tree.
    pub tag: u64,
    /// The rank, in that tree, the copy logically comes from: the member
    /// that sent it, or the unreachable neighbour it was sent on behalf of.
    pub as_from: usize,
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
    /// One-way links cut until the next heal, as (from, to).
    cut_links: Vec<(usize, usize)>,
    /// With `link_fifo=true`: the latest arrival scheduled on each link,
    /// at `from * members + to`.
    link_last: Option<Vec<Instant>>,
    members: usize,
    pub stats: NetStats,
}

impl Net {
    pub fn new(s: &Scenario, rng: Rng) -> Net {
        let members = usize::from(s.members);
        let link_last = s.link_fifo.then(|| vec![Instant::ZERO; members * members]);
        Net {
            rng,
            loss: s.loss,
            dup: s.dup,
            reorder: s.reorder,
            delay_us: s.delay_us,
            heap: BinaryHeap::new(),
            seq: 0,
            sets: None,
            cut_links: Vec::new(),
            link_last,
            members,
            stats: NetStats::default(),
        }
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

    /// Cuts the link from `from` to `to` (one way) until the next heal.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.cut_links.push((from, to));
    }

    pub fn heal(&mut self) {
        self.sets = None;
        self.cut_links.clear();
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

    /// Whether a partition or a cut stops the copies from `from` to `to` now.
    pub fn cuts(&self, from: usize, to: usize) -> bool {
        self.sets.as_ref().is_some_and(|sets| sets[from] != sets[to]) || self.cut_links.contains(&(from, to))
    }

    /// Sends one copy from `from` to `to` at `now`; `tree` marks a tree
    /// cast (see [`Carried::Datagram`]). Whether a partition cut it.
    pub fn send(&mut self, now: Instant, from: usize, to: usize, data: &bytes::Bytes, tree: Option<TreeCopy>) -> bool {
        self.stats.copies += 1;
        if self.cuts(from, to) {
            self.stats.cut += 1;
            return true;
        }
        if self.rng.chance(self.loss) {
            self.stats.lost += 1;
            return false;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let mut at = now + self.delay();
            if let Some(last) = self.link_last.as_mut().and_then(|l| l.get_mut(from * self.members + to)) {
                at = at.max(*last);
                *last = at;
            }
            self.push(at, from, to, Carried::Datagram { data: data.clone(), tree });
        }
        false
    }

    /// Tells member `to` (incarnation `watcher`), one base delay after
    /// `now`, that its connection to the crashed member `from` broke.
    pub fn notify_lost(&mut self, now: Instant, to: usize, watcher: strata_stack::MemberId, from: usize) {
        let at = now + Duration::from_micros(self.rng.between(self.delay_us.0, self.delay_us.1));
        self.push(at, from, to, Carried::Lost { watcher });
    }

    /// Schedules the stall check `stall` for member `at_member` at `at`
    /// (no random draw).
    pub fn schedule_stall(&mut self, at: Instant, at_member: usize, stall: Carried) {
        self.push(at, at_member, at_member, stall);
    }

    fn push(&mut self, at: Instant, from: usize, to: usize, what: Carried) {
        self.seq += 1;
        self.heap.push(Reverse(InFlight { at, seq: self.seq, from, to, what }));
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
