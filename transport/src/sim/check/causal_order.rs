//! Causal order: no member delivers a message before the messages it
//! causally depends on, and none delivers it without those of them that
//! were delivered in the same view.
//!
//! **Happened before.** The causal predecessors of a cast `m'` by member A
//! are A's earlier casts and every message A delivered strictly before it
//! cast `m'` (by the virtual clock), and, transitively, their
//! predecessors. A delivery at the very instant of the cast is not counted:
//! the log cannot tell whether it came before the cast or after it, so the
//! check only asks for what certainly happened before. Messages delivered
//! through a state transfer (a joiner's loaded knowledge) are not counted
//! either: they belong to earlier views, which this check leaves to
//! virtual synchrony.
//!
//! **What is required.** For every member X that delivers `m'`:
//!
//! * *order*: every predecessor of `m'` that X delivers comes before `m'`
//!   in X's log;
//! * *no gap in the view*: X has delivered (or loaded in a state) before
//!   `m'` every predecessor of `m'` delivered, by anyone, in the view `m'`
//!   was delivered in ("outside any view" counts as one view, for stacks
//!   without a membership layer). A predecessor of an earlier view is not
//!   required: a joiner never delivers it (it loads the state instead), and
//!   virtual synchrony already settles who delivers what in each view. A
//!   predecessor nobody delivered is not required either (a crashed
//!   sender's last casts, a cast lost with a minority's view): completeness
//!   and liveness say when that is wrong.
//!
//! **How.** Casts are numbered densely (`numbering.rs`). One sweep
//! over every member's casts and deliveries in time order (casts before
//! deliveries at the same instant) gives each cast a vector clock: per
//! sender, how many of its casts precede-or-are the cast (a sender's
//! predecessors are always a prefix of its casts). Then, per member, a
//! prefix maximum of its delivery positions per sender answers "is any
//! predecessor delivered after `m'`?" in O(members), and per (sender, view)
//! lists of casts with a pointer advancing over what the member knows
//! answer "is any same-view predecessor missing?" in amortised O(members).
//! A failure names both messages and the chain of deliveries and casts
//! that makes one precede the other.
//!
//! Casts that asked for FIFO order only (`Order::Fifo`) are exempt:
//! [`check_except`] takes a predicate naming them, and they are neither
//! checked as successors nor required as predecessors, and their delivery
//! does not carry causality to the deliverer's later casts. (Per-sender
//! FIFO still applies to them: [`super::fifo`].)

use super::numbering::Numbering;
use crate::sim::{Entry, Outcome};
use std::collections::HashMap;
use strata_stack::{Instant, ViewId};

/// Which casts are exempt from ordering: `(member index, k)` of a cast
/// that asked for FIFO order only.
pub type Exempt<'a> = &'a dyn Fn(usize, u64) -> bool;

/// Checks causal order over every member's log; no cast is exempt.
pub fn check(o: &Outcome) -> Result<(), String> {
    check_except(o, &|_, _| false)
}

/// Checks causal order, leaving out the casts `exempt` names.
pub fn check_except(o: &Outcome, exempt: Exempt<'_>) -> Result<(), String> {
    let c = Causality::new(o, exempt);
    for x in 0..o.members.len() {
        c.check_member(x)?;
    }
    Ok(())
}

/// The view a message was delivered in (`None`: outside any view).
type ViewOf = Option<ViewId>;

struct Causality<'a> {
    o: &'a Outcome,
    num: Numbering<'a>,
    /// Members.
    n: usize,
    /// Whether each message is exempt.
    exempt: Vec<bool>,
    /// Each cast's vector clock, `n` entries per message: for sender `s`,
    /// how many of `s`'s casts precede or are the cast.
    clocks: Vec<u32>,
    /// Where each message was first delivered: by whom, when, in which view.
    first: Vec<Option<(usize, Instant, ViewOf)>>,
    /// Per (sender, view): the `k` of its non-exempt casts first delivered
    /// in that view, ascending.
    in_view: HashMap<(usize, ViewOf), Vec<u64>>,
}

impl<'a> Causality<'a> {
    fn new(o: &'a Outcome, exempt: Exempt<'_>) -> Self {
        let num = Numbering::new(o);
        let n = num.members();
        let total = num.total();
        let exempt: Vec<bool> = (0..total).map(|m| num.sender_k(m)).map(|(s, k)| exempt(s, k)).collect();

        // Where each message was first delivered.
        let mut first: Vec<Option<(usize, Instant, ViewOf)>> = vec![None; total];
        for (x, m) in o.members.iter().enumerate() {
            let mut view = None;
            for e in &m.log {
                match e {
                    Entry::View { view: v, .. } => view = Some(v.id()),
                    Entry::Deliver(d) => {
                        if let Some(msg) = d.id.as_ref().and_then(|id| num.of(id)) {
                            if first[msg].is_none_or(|(_, at, _)| d.at < at) {
                                first[msg] = Some((x, d.at, view));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut in_view: HashMap<(usize, ViewOf), Vec<u64>> = HashMap::new();
        for msg in 0..total {
            if let (Some((_, _, v)), false) = (first[msg], exempt[msg]) {
                let (s, k) = num.sender_k(msg);
                in_view.entry((s, v)).or_default().push(k);
            }
        }

        // Vector clocks: one sweep in time order, casts before deliveries at
        // the same instant (a delivery at the instant of a cast is not
        // counted as its predecessor), each member's own events in order.
        let mut events: Vec<(Instant, bool, usize, usize, usize)> = Vec::with_capacity(total * (n + 1));
        for (i, m) in o.members.iter().enumerate() {
            for c in &m.casts {
                events.push((c.at, false, i, c.k as usize, num.msg(i, c.k)));
            }
            for d in num.deliveries(o, i) {
                events.push((d.at, true, i, d.pos, d.msg));
            }
        }
        events.sort_unstable();
        let mut clocks = vec![0u32; total * n];
        let mut cast = vec![false; total];
        let mut current = vec![0u32; n * n];
        for &(_, delivery, i, _, msg) in &events {
            let mine = &mut current[i * n..(i + 1) * n];
            if delivery {
                // A message delivered before it was cast (impossible, but
                // this is a checker) or exempt carries no history.
                if cast[msg] && !exempt[msg] {
                    for (c, &v) in mine.iter_mut().zip(&clocks[msg * n..(msg + 1) * n]) {
                        *c = (*c).max(v);
                    }
                }
            } else {
                let (_, k) = num.sender_k(msg);
                mine[i] = mine[i].max(k as u32 + 1);
                clocks[msg * n..(msg + 1) * n].copy_from_slice(mine);
                cast[msg] = true;
            }
        }
        Causality { o, num, n, exempt, clocks, first, in_view }
    }

    fn clock(&self, msg: usize) -> &[u32] {
        &self.clocks[msg * self.n..(msg + 1) * self.n]
    }

    /// How many of sender `s`'s casts precede message `msg` (a prefix of them).
    fn preceding(&self, msg: usize, s: usize) -> u64 {
        let (sender, k) = self.num.sender_k(msg);
        let count = u64::from(self.clock(msg)[s]);
        if s == sender {
            count.min(k)
        } else {
            count
        }
    }

    fn check_member(&self, x: usize) -> Result<(), String> {
        let (o, num, n) = (self.o, &self.num, self.n);
        let me = &o.members[x];
        let deliveries = num.deliveries(o, x);
        // For each sender, the largest log position among its first
        // `j` casts' deliveries here (non-exempt ones), -1 for none.
        let mut delivered_at: Vec<i64> = vec![-1; num.total()];
        for d in &deliveries {
            if !self.exempt[d.msg] {
                delivered_at[d.msg] = d.pos as i64;
            }
        }
        let latest: Vec<Vec<i64>> = (0..n)
            .map(|s| {
                let mut acc = -1;
                std::iter::once(-1)
                    .chain((0..num.casts_of(s)).map(|k| {
                        acc = acc.max(delivered_at[num.msg(s, k as u64)]);
                        acc
                    }))
                    .collect()
            })
            .collect();
        let mut known = vec![false; num.total()];
        // Per (sender, view): how many leading casts of `in_view` this member knows.
        let mut known_prefix: HashMap<(usize, ViewOf), usize> = HashMap::new();
        let mut next = deliveries.iter().peekable();
        for (pos, e) in me.log.iter().enumerate() {
            if let Entry::StateLoaded { known: loaded, .. } = e {
                for id in loaded.iter() {
                    if let Some(msg) = num.of(id) {
                        known[msg] = true;
                    }
                }
                continue;
            }
            let Some(d) = next.next_if(|d| d.pos == pos) else { continue };
            let msg = d.msg;
            if self.exempt[msg] {
                known[msg] = true;
                continue;
            }
            // Order: no predecessor is delivered here after `msg`.
            for (s, latest_s) in latest.iter().enumerate() {
                let bound = self.preceding(msg, s) as usize;
                if latest_s[bound] > pos as i64 {
                    let k = (0..bound as u64).find(|&k| delivered_at[num.msg(s, k)] > pos as i64).expect("the prefix maximum says one exists");
                    let pred = num.msg(s, k);
                    let later = &me.log[delivered_at[pred] as usize];
                    return Err(format!(
                        "{} delivered {} at {:?} before {} at {:?}, which causally precedes it: {}",
                        me.name,
                        num.text(msg),
                        d.at,
                        num.text(pred),
                        later.at(),
                        self.chain(pred, msg)
                    ));
                }
            }
            // No gap: every predecessor delivered in `msg`'s view is known here.
            let view = self.first[msg].and_then(|(_, _, v)| v);
            for s in 0..n {
                let Some(list) = self.in_view.get(&(s, view)) else { continue };
                let bound = self.preceding(msg, s);
                let required = list.partition_point(|&k| k < bound);
                let have = known_prefix.entry((s, view)).or_insert(0);
                while *have < required && known[num.msg(s, list[*have])] {
                    *have += 1;
                }
                if *have < required {
                    let pred = num.msg(s, list[*have]);
                    let (by, at, _) = self.first[pred].expect("listed because delivered");
                    let view_text = view.map(|v| format!("view {v}")).unwrap_or_else(|| "outside any view".into());
                    return Err(format!(
                        "{} delivered {} at {:?} ({view_text}) without having delivered {}, which causally precedes it ({}) and was delivered in the same view (by {} at {at:?})",
                        me.name,
                        num.text(msg),
                        d.at,
                        num.text(pred),
                        self.chain(pred, msg),
                        o.members[by].name
                    ));
                }
            }
            known[msg] = true;
        }
        Ok(())
    }

    /// Why `pred` causally precedes `succ`, as a chain of casts and deliveries.
    fn chain(&self, pred: usize, succ: usize) -> String {
        let mut steps: Vec<String> = Vec::new();
        let mut succ = succ;
        for _ in 0..20 {
            let (ps, pk) = self.num.sender_k(pred);
            let (ss, sk) = self.num.sender_k(succ);
            let member = &self.o.members[ss];
            let cast_at = member.casts[sk as usize].at;
            if ps == ss && pk < sk {
                steps.push(format!("{} cast {} before casting {} at {cast_at:?}", member.name, self.num.text(pred), self.num.text(succ)));
                break;
            }
            // The deliveries at `ss` strictly before it cast `succ`.
            let before: Vec<_> = self.num.deliveries(self.o, ss).into_iter().filter(|d| d.at < cast_at && !self.exempt[d.msg]).collect();
            if let Some(d) = before.iter().find(|d| d.msg == pred) {
                steps.push(format!("{} delivered {} at {:?} before casting {} at {cast_at:?}", member.name, self.num.text(pred), d.at, self.num.text(succ)));
                break;
            }
            let Some(via) = before.iter().rev().find(|d| self.preceding(d.msg, ps) > pk || d.msg == pred) else {
                steps.push(format!("(no chain found from {} to {})", self.num.text(pred), self.num.text(succ)));
                break;
            };
            steps.push(format!("{} delivered {} at {:?} before casting {} at {cast_at:?}", member.name, self.num.text(via.msg), via.at, self.num.text(succ)));
            succ = via.msg;
        }
        steps.reverse();
        steps.join("; then ")
    }
}
