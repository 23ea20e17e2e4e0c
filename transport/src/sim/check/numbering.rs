//! Dense numbers for the casts of a run, shared by the order checks: cast
//! `k` of member `s` is message `offset[s] + k`, so per-message state
//! lives in vectors instead of maps keyed by strings, and checking a run
//! of many thousands of messages stays linear.

use crate::sim::{MsgId, Outcome};
use std::collections::BTreeMap;
use strata_stack::Instant;

/// The numbering of one run's casts.
pub(crate) struct Numbering<'a> {
    /// `offsets[s]` is the number of member `s`'s first cast; `offsets[n]` the total.
    offsets: Vec<usize>,
    by_name: BTreeMap<&'a str, usize>,
    names: Vec<&'a str>,
}

/// One first delivery of a known cast in a member's log.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Delivery {
    /// Its index in the member's log.
    pub pos: usize,
    /// The message's number.
    pub msg: usize,
    /// When.
    pub at: Instant,
}

impl<'a> Numbering<'a> {
    /// Numbers every cast the members' stacks accepted.
    pub fn new(o: &'a Outcome) -> Self {
        let mut offsets = Vec::with_capacity(o.members.len() + 1);
        let mut total = 0;
        for m in &o.members {
            offsets.push(total);
            total += m.casts.len();
        }
        offsets.push(total);
        let by_name = o.members.iter().enumerate().map(|(i, m)| (m.name.as_str(), i)).collect();
        let names = o.members.iter().map(|m| m.name.as_str()).collect();
        Numbering { offsets, by_name, names }
    }

    /// How many casts there are.
    pub fn total(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }

    /// How many members there are.
    pub fn members(&self) -> usize {
        self.names.len()
    }

    /// How many casts member `s` made.
    pub fn casts_of(&self, s: usize) -> usize {
        self.offsets[s + 1] - self.offsets[s]
    }

    /// The number of member `s`'s cast `k` (which must exist).
    pub fn msg(&self, s: usize, k: u64) -> usize {
        debug_assert!((k as usize) < self.casts_of(s), "callers only number casts that were made");
        self.offsets[s] + k as usize
    }

    /// The number of the cast an id names, if it names one that was made.
    pub fn of(&self, id: &MsgId) -> Option<usize> {
        let s = *self.by_name.get(id.0.as_str())?;
        ((id.1 as usize) < self.casts_of(s)).then(|| self.msg(s, id.1))
    }

    /// The sender and `k` of message `msg`.
    pub fn sender_k(&self, msg: usize) -> (usize, u64) {
        let s = self.offsets.partition_point(|&o| o <= msg) - 1;
        (s, (msg - self.offsets[s]) as u64)
    }

    /// Message `msg` as ids print: `member:k`.
    pub fn text(&self, msg: usize) -> String {
        let (s, k) = self.sender_k(msg);
        format!("{}:{k}", self.names[s])
    }

    /// Member `i`'s first delivery of each cast it delivered, in log order
    /// (deliveries naming no cast and repeated ones are the business of
    /// other checks).
    pub fn deliveries(&self, o: &Outcome, i: usize) -> Vec<Delivery> {
        let mut seen = vec![false; self.total()];
        let mut out = Vec::new();
        for (pos, e) in o.members[i].log.iter().enumerate() {
            let crate::sim::Entry::Deliver(d) = e else { continue };
            let Some(msg) = d.id.as_ref().and_then(|id| self.of(id)) else { continue };
            if !std::mem::replace(&mut seen[msg], true) {
                out.push(Delivery { pos, msg, at: d.at });
            }
        }
        out
    }
}
