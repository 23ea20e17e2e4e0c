//! Total order: every two members deliver the messages they both deliver
//! in the same relative order, across the whole run (all views, before and
//! after crashes, joins and state transfers), except what a member
//! delivered in a view it *failed out of*.
//!
//! **Failing out of a view.** A member fails out of view V if it crashed
//! while V was its view, or if the view it installed next is non-primary
//! (it was cut off from the primary partition) or one it *joined* with a
//! state transfer (it was removed and readmitted, see
//! [`super::Epoch::joined`]). Its deliveries in V are left out of the
//! comparison: the order of a sequencer or token protocol is not uniform
//! (Isis's ABCAST, JGroups' SEQUENCER): a sequencer delivers its own order
//! at once, and if it crashes or is cut off before its announcement gets
//! through, the survivors order those casts anew in the flush. Members
//! that go on together, and members that leave cleanly (a leave takes part
//! in the flush), are held to one order. [`check_uniform`] compares every
//! delivery, failed views included: that is *uniform* total order, what a
//! stack with a stability layer (SAFE) above promises.
//!
//! For each pair of members A and B, A's deliveries restricted to what B
//! delivered must equal B's deliveries restricted to what A delivered; at
//! the first difference A delivered `x` where B delivered `y`, so each
//! delivered the two in the opposite order, and the failure names both
//! messages, both members and the four delivery times. With message
//! numbers (`numbering.rs`) and a position per delivered message
//! per member, the check costs O(members² × deliveries).
//!
//! That members moving from one view to the next delivered the same set in
//! it is virtual synchrony ([`super::virtual_synchrony`]); a stack
//! providing total order runs both (see `check::VIRTUAL_SYNCHRONY_TOTAL`).
//!
//! Casts that asked for FIFO order only (`Order::Fifo`) are exempt:
//! [`check_except`] leaves out the casts its predicate names (per-sender
//! FIFO still applies to them: [`super::fifo`]).

use super::causal_order::Exempt;
use super::numbering::{Delivery, Numbering};
use crate::sim::Outcome;

/// Checks total order over every pair of members, leaving out what a
/// member delivered in a view it failed out of; no cast is exempt.
pub fn check(o: &Outcome) -> Result<(), String> {
    check_except(o, &|_, _| false)
}

/// Checks uniform total order: every delivery of every member counts, in
/// failed views too.
pub fn check_uniform(o: &Outcome) -> Result<(), String> {
    compare(o, &|_, _| false, false)
}

/// Checks total order like [`check`], leaving out the casts `exempt` names.
pub fn check_except(o: &Outcome, exempt: Exempt<'_>) -> Result<(), String> {
    compare(o, exempt, true)
}

fn compare(o: &Outcome, exempt: Exempt<'_>, non_uniform: bool) -> Result<(), String> {
    let num = Numbering::new(o);
    let n = num.members();
    let orders: Vec<Vec<Delivery>> = (0..n)
        .map(|i| {
            let failed = if non_uniform { super::in_failed_views(o, i) } else { Vec::new() };
            num.deliveries(o, i)
                .into_iter()
                .filter(|d| {
                    let (s, k) = num.sender_k(d.msg);
                    !exempt(s, k) && !failed.get(d.pos).copied().unwrap_or(false)
                })
                .collect()
        })
        .collect();
    // Whether member `i` delivered message `m`: `delivered[i * total + m]`.
    let total = num.total();
    let mut delivered = vec![false; n * total];
    for (i, order) in orders.iter().enumerate() {
        for d in order {
            delivered[i * total + d.msg] = true;
        }
    }
    for a in 0..n {
        for b in a + 1..n {
            let in_b = |d: &&Delivery| delivered[b * total + d.msg];
            let in_a = |d: &&Delivery| delivered[a * total + d.msg];
            let mut theirs = orders[b].iter().filter(in_a);
            for x in orders[a].iter().filter(in_b) {
                let y = theirs.next().expect("both lists hold the common messages");
                if x.msg != y.msg {
                    let find = |i: usize, msg: usize| orders[i].iter().find(|d| d.msg == msg).expect("a common message").at;
                    let (an, bn) = (&o.members[a].name, &o.members[b].name);
                    return Err(format!(
                        "{an} delivered {} at {:?} before {} at {:?}, but {bn} delivered {} at {:?} before {} at {:?}",
                        num.text(x.msg),
                        x.at,
                        num.text(y.msg),
                        find(a, y.msg),
                        num.text(y.msg),
                        y.at,
                        num.text(x.msg),
                        find(b, x.msg)
                    ));
                }
            }
        }
    }
    Ok(())
}
