//! Liveness of a membership layer: once the faults are over and the quiet
//! period has passed, the group has settled.
//!
//! Required only when at least one live member (started, neither crashed nor
//! left) ends in a primary view (and is still in it: not outside every view,
//! asking to join again), and no partition is in force at the end: a
//! group that lost its majority for good legitimately stays non-primary, and
//! a minority cut off for good cannot rejoin. Then:
//!
//! * the run was not cut short;
//! * every member told to leave that did not crash got `Left`;
//! * every live member ends in the same view, primary, whose members are
//!   exactly the live members, with its state loaded (no `StateBegin`
//!   without a `StateDone` after it: deliveries wait behind a load);
//! * their knowledge (see [`super::epochs`]) is the same;
//! * every cast accepted by a live member's stack is in it, except casts
//!   made before the member's last state transfer (`StateBegin`): a member
//!   that receives the state again was cut off from the primary partition
//!   (removed, or its side's views dissolved into another group on a
//!   merge), and what it cast on its side may be unknown to the group it
//!   joined (see docs/virtual-synchrony.md, "What is not promised"). Casts
//!   after its last state transfer must all be known.

use super::{epochs, missing, names, view_text};
use crate::sim::Entry;
use crate::sim::{FaultKind, MsgId, Outcome};
use std::collections::BTreeSet;

/// Checks that the live members settled in one primary view, knowing everything cast.
pub fn check(o: &Outcome) -> Result<(), String> {
    let split = o.scenario.faults_in_order().iter().fold(false, |split, f| match f.kind {
        FaultKind::Partition(_) => true,
        FaultKind::Heal => false,
        _ => split,
    });
    if split {
        return Ok(());
    }
    let live: Vec<_> = o.members.iter().filter(|m| m.alive()).collect();
    // A member whose last view is primary but that has since left it to
    // join again (removed, or its view dissolved) is in no view now: VSYNC's
    // `primary` gauge says which members are in a primary view at the end.
    let in_primary = |m: &&&crate::sim::MemberLog| m.last_view().is_some_and(|v| v.is_primary()) && m.counter("VSYNC", "primary").is_none_or(|p| p == 1);
    let Some(anchor) = live.iter().find(in_primary) else { return Ok(()) };
    let view = anchor.last_view().expect("found by its last view");
    if let Some(why) = &o.truncated {
        return Err(format!("the run was cut short: {why}"));
    }
    for (i, m) in o.members.iter().enumerate() {
        if let Some(at) = o.scenario.leave_time(i as u16) {
            if m.left_at.is_none() && m.crashed_at.is_none() {
                return Err(format!("{} was told to leave at {at:?} but never got Left (by the end, {:?})", m.name, o.end));
            }
        }
    }
    for m in &live {
        match m.last_view() {
            None => return Err(format!("{} is live but never installed a view, while {} ends in {}", m.name, anchor.name, view_text(view))),
            Some(v) if v.id() != view.id() => {
                return Err(format!("{} ends in view {} but {} ends in view {} (both live)", m.name, view_text(v), anchor.name, view_text(view)))
            }
            Some(_) => {}
        }
    }
    let mut expected: Vec<_> = live.iter().map(|m| m.id).collect();
    expected.sort();
    let mut got = view.members().to_vec();
    got.sort();
    if got != expected {
        return Err(format!(
            "the live members end in view {}, but the live members are [{}] (started, neither crashed nor left)",
            view_text(view),
            names(&expected)
        ));
    }
    for m in &live {
        if epochs(o, m).last().is_some_and(|e| e.loading) {
            let begin = m.log.iter().rev().find(|e| matches!(e, Entry::StateBegin { .. })).map(Entry::at);
            return Err(format!(
                "{} is still loading state at the end (StateBegin at {:?}, no StateDone after it by {:?}) in view {}: its deliveries wait behind the load",
                m.name,
                begin.unwrap_or_default(),
                o.end,
                view_text(view)
            ));
        }
    }
    let known = anchor.knowledge();
    for m in &live {
        let k = m.knowledge();
        if k != known {
            return Err(format!(
                "{} and {} end in view {} knowing different messages ({} and {} ids); only {} knows {}; only {} knows {}",
                anchor.name,
                m.name,
                view.id(),
                known.len(),
                k.len(),
                anchor.name,
                missing(&known, &k),
                m.name,
                missing(&k, &known)
            ));
        }
    }
    for m in &live {
        // (Casts before a member's last state transfer may have been made on
        // a side it was cut off from, or that dissolved: see above.)
        let reloaded_at = m.log.iter().rev().find(|e| matches!(e, Entry::StateBegin { .. })).map(Entry::at);
        let cut_off = |at: strata_stack::Instant| reloaded_at.is_some_and(|r| at < r);
        let lost: BTreeSet<MsgId> = m.casts.iter().filter(|c| !cut_off(c.at)).map(|c| (m.name.clone(), c.k)).filter(|id| !known.contains(id)).collect();
        if let Some((_, k)) = lost.first() {
            let c = &m.casts[*k as usize];
            return Err(format!(
                "{} casts of live {} are not known to the live members at the end (view {}): {}; the first, {}:{k}, was accepted at {:?}; quiet period from {} to {:?}",
                lost.len(),
                m.name,
                view.id(),
                missing(&lost, &BTreeSet::new()),
                m.name,
                c.at,
                o.quiet_from.map(|q| format!("{q:?}")).unwrap_or_else(|| "never".into()),
                o.end
            ));
        }
    }
    Ok(())
}
