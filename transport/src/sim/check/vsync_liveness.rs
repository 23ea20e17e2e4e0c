//! Liveness of a membership layer: once the faults are over and the quiet
//! period has passed, the group has settled.
//!
//! ## When it is required
//! VSYNC promises progress to a *primary partition*: a view change decides
//! a primary view only with a quorum of the view before it (a majority of
//! it, or exactly half with its coordinator, rank 0); a crash or a split
//! that takes the quorum away leaves the rest stuck in non-primary views
//! for good, legitimately. So the check is required when no partition is
//! in force at the end (a minority cut off for good cannot rejoin) and
//! either
//!
//! * **a quorum survives:** the live members at the end (started, neither
//!   crashed nor left; an incarnation counts as its own member) hold a
//!   quorum of the *last primary view* (the primary view with the highest
//!   id any member installed); every partition of the run left one side
//!   with a majority of the members up at that moment (else no side may
//!   go on as the primary, and VSYNC never makes a primary view again:
//!   the generators only draw a minority smaller than half the founders);
//!   and the run went on for at least [`SETTLE_AFTER_FAULTS`] after its
//!   last fault (crash, restart, join, leave, partition or heal): time for
//!   VSYNC, at its default timing, to suspect the crashed, let the healed
//!   rejoin and transfer state; or
//! * **some live member ends in a primary view** (and is still in it: not
//!   outside every view, asking to join again). This alone is what an
//!   earlier version of this check required; it is kept so that the check
//!   is never weaker than it was. (It asks more than VSYNC can give when
//!   crashes took the quorum of a primary view its survivors are still
//!   in; the generators never draw that: their crashes, leaves and
//!   minorities together stay fewer than half the founders.)
//!
//! The first condition is what catches a group that lost its way while
//! it could have gone on: every live member stuck outside the primary
//! partition (non-primary views, or no view), as tree routing without
//! routing around lost members produced.
//!
//! ## What is then required
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
use crate::sim::{FaultKind, MsgId, Outcome, Scenario};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::{Instant, MemberId, View};

/// How long a run must go on after its last fault for a surviving quorum
/// to be required to settle: five `suspect_ms` (1.5 s) and two
/// `join_timeout_ms` (1 s) of VSYNC's defaults, room for a wrong suspicion
/// under loss, the rejoin that follows it, a probe round after a heal and
/// a state transfer.
pub const SETTLE_AFTER_FAULTS: Duration = Duration::from_millis(5 * 1500 + 2 * 1000);

/// The primary view with the highest id that any member installed.
pub fn last_primary(o: &Outcome) -> Option<&Arc<View>> {
    o.members.iter().flat_map(|m| m.views().map(|(_, v)| v)).filter(|v| v.is_primary()).max_by_key(|v| v.id())
}

/// Whether `members` hold a quorum of `view`: a majority of it, or exactly
/// half with its coordinator (VSYNC's rule for deciding a primary view).
pub fn quorum(view: &View, members: &[MemberId]) -> bool {
    let held = view.members().iter().filter(|m| members.contains(m)).count();
    2 * held > view.len() || (2 * held == view.len() && members.contains(&view.coordinator()))
}

/// Whether every partition of the scenario left one side with more than
/// half of the members up (started, not crashed, not left) at that moment.
pub fn partitions_keep_a_majority(s: &Scenario) -> bool {
    let mut up: BTreeSet<u16> = (0..s.members).filter(|i| s.join_time(*i).is_none()).collect();
    for f in s.faults_in_order() {
        match &f.kind {
            FaultKind::Join(i) | FaultKind::Restart(i) => {
                up.insert(*i);
            }
            FaultKind::Crash(i) | FaultKind::Leave(i) => {
                up.remove(i);
            }
            FaultKind::Partition(sets) => {
                // The unlisted members form one more set.
                let listed = |i: &u16| sets.iter().any(|set| set.contains(i));
                let rest = up.iter().filter(|i| !listed(i)).count();
                let largest = sets.iter().map(|set| set.iter().filter(|i| up.contains(i)).count()).max().unwrap_or(0).max(rest);
                if 2 * largest <= up.len() {
                    return false;
                }
            }
            // A one-way cut is not a partition VSYNC can settle.
            FaultKind::Cut { .. } => return false,
            FaultKind::Heal => {}
        }
    }
    true
}

/// The last primary view, if the live members at the end hold a quorum of
/// it, every partition kept a majority side
/// ([`partitions_keep_a_majority`]) and the run went on
/// [`SETTLE_AFTER_FAULTS`] after its last fault.
pub fn surviving_quorum(o: &Outcome) -> Option<&Arc<View>> {
    let last_fault = o.scenario.faults_in_order().last().map_or(Instant::ZERO, |f| Instant::ZERO + f.at);
    if o.end < last_fault + SETTLE_AFTER_FAULTS || !partitions_keep_a_majority(&o.scenario) {
        return None;
    }
    let live: Vec<MemberId> = o.members.iter().filter(|m| m.alive()).map(|m| m.id).collect();
    last_primary(o).filter(|v| quorum(v, &live))
}

/// Checks that the live members settled in one primary view, knowing everything cast.
pub fn check(o: &Outcome) -> Result<(), String> {
    let split = o.scenario.faults_in_order().iter().fold(false, |split, f| match f.kind {
        FaultKind::Partition(_) | FaultKind::Cut { .. } => true,
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
    let Some(anchor) = live.iter().find(in_primary) else {
        let Some(last) = surviving_quorum(o) else { return Ok(()) };
        let ends: Vec<String> = live
            .iter()
            .map(|m| match m.last_view() {
                Some(v) if m.counter("VSYNC", "primary").is_none_or(|p| p == 1) => format!("{} in {}", m.name, view_text(v)),
                Some(v) => format!("{} outside any view (last {})", m.name, view_text(v)),
                None => format!("{} in no view", m.name),
            })
            .collect();
        return Err(format!(
            "no live member ends in a primary view, though the live members hold a quorum of the last primary view {} and the run went on {:?} after its last fault{}: {}",
            view_text(last),
            o.end.saturating_since(o.scenario.faults_in_order().last().map_or(Instant::ZERO, |f| Instant::ZERO + f.at)),
            o.truncated.as_ref().map(|t| format!(" (cut short: {t})")).unwrap_or_default(),
            ends.join("; ")
        ));
    };
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
