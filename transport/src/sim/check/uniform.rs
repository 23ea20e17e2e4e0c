//! Uniform agreement and one order for durable deliveries (SAFE's
//! `Delivery::Safe`), within each era of the run ([`Outcome::eras`]: the
//! run before any total failure, and each run after one).
//!
//! * **Identity.** A tag names one cast: every delivery of a tag (and every
//!   replay list entry, see [`super::replay`]) carries the same payload id,
//!   whose sender is the tag's sender (by address), from that sender; and a
//!   cast travels under one tag.
//! * **(c) No duplication** within an incarnation: no tag, and no payload
//!   id (durable or plain), is delivered twice by one incarnation.
//! * **(d) Per-sender FIFO** within an incarnation: the durable deliveries
//!   of one sender incarnation come in increasing tag id and increasing
//!   cast index `k`; its plain casts (`Order::Fifo`, delivered as
//!   `Delivery::Cast`) in increasing `k`. (Nothing is said about a plain
//!   cast against a durable one.)
//! * **(b) One order.** There is one sequence of the era's durable messages
//!   such that every incarnation's non-replayed durable deliveries are a
//!   contiguous stretch of it: a joiner starts later, a crashed member
//!   stops early, nobody skips one in the middle. A member that receives
//!   the group's state again within an incarnation (a view followed by
//!   `StateBegin`: it was removed and readmitted) starts a new stretch
//!   there. Checked through successors: in one sequence each message has
//!   one successor and one predecessor, and following successors never
//!   comes back; a failure names the two members whose stretches disagree.
//! * **(a) Uniform agreement.** If the era lasts to the end of the run (no
//!   total failure ends it), the run was not cut short and no partition is
//!   in force at the end, then every message any incarnation of the era
//!   delivered durably (crashed ones included, replayed ones included) is
//!   known at the end to every *survivor*: an incarnation alive at the end
//!   whose last view is primary (and that is still in it), with its state
//!   loaded. Known means delivered, or loaded in a state transfer (a
//!   joiner's stretch starts later: what came before is in its state).
//!
//! Deliveries that are not durable (plain casts) are held only to (c) and (d).

use super::id_text;
use crate::sim::{Delivered, Entry, Era, FaultKind, Life, MsgId, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use strata_stack::{Delivery, Instant, MemberId, SafeTag, ViewId};

/// Checks identity, then (c), (d), (b) and (a) in each era.
pub fn check(o: &Outcome) -> Result<(), String> {
    identity(o)?;
    let eras = o.eras();
    for (k, era) in eras.iter().enumerate() {
        let lives = era_lives(o, era);
        let era_text = if eras.len() > 1 { format!(" (era {k}, from {:?})", era.from) } else { String::new() };
        for l in &lives {
            no_duplicates(l).map_err(|e| format!("{e}{era_text}"))?;
            fifo(l).map_err(|e| format!("{e}{era_text}"))?;
        }
        global_order(&lives).map_err(|e| format!("{e}{era_text}"))?;
        agreement(o, era, &lives).map_err(|e| format!("{e}{era_text}"))?;
    }
    Ok(())
}

/// One incarnation with the name of its member, for messages.
#[derive(Clone, Debug)]
pub(crate) struct NamedLife<'a> {
    /// The member's index.
    pub member: usize,
    /// Its display form.
    pub name: &'a str,
    /// The incarnation.
    pub life: Life<'a>,
}

impl NamedLife<'_> {
    /// `name#incarnation`, as failures print an incarnation.
    pub fn who(&self) -> String {
        format!("{}#{}", self.name, self.life.id.incarnation())
    }
}

/// The incarnations of `era`.
///
/// An incarnation whose state VSYNC replaces after it was a member (its
/// group absorbed by a merge, or re-formed around another member after the
/// primary was lost: a `StateBegin` after more than one view) counts as two
/// application lives, split at the view that brought the new state: the
/// application starts again from that state, and SAFE delivers and
/// replays for it as for a new member.
pub(crate) fn era_lives<'a>(o: &'a Outcome, era: &Era) -> Vec<NamedLife<'a>> {
    let mut out = Vec::new();
    for &(i, l) in &era.lives {
        let m = &o.members[i];
        let whole = m.lives().swap_remove(l);
        let (mut start, mut started_at, mut views, mut last_view) = (0, whole.started_at, 0, None);
        for (n, e) in whole.log.iter().enumerate() {
            match e {
                Entry::View { at, .. } => {
                    views += 1;
                    last_view = Some((n, *at));
                }
                Entry::StateBegin { .. } if views > 1 => {
                    let (split, at) = last_view.expect("a view came before");
                    if split > start {
                        let ended =
                            Life { left_at: Some(at), crashed_at: None, log: &whole.log[start..split], log_from: whole.log_from + start, started_at, ..whole };
                        out.push(NamedLife { member: i, name: m.name.as_str(), life: ended });
                    }
                    (start, started_at, views) = (split, at, 1);
                }
                _ => {}
            }
        }
        let rest = Life { log: &whole.log[start..], log_from: whole.log_from + start, started_at, ..whole };
        out.push(NamedLife { member: i, name: m.name.as_str(), life: rest });
    }
    out
}

/// A tag as failures print it: `tag (payload id)`.
pub(crate) fn tag_text(tag: &SafeTag, id: &Option<MsgId>) -> String {
    format!("{tag} ({})", id_text(id))
}

/// Every durable delivery: its tag names its sender, and tags and payload
/// ids map one to one over the whole run.
fn identity(o: &Outcome) -> Result<(), String> {
    let mut id_of: BTreeMap<SafeTag, (&Option<MsgId>, String, Instant)> = BTreeMap::new();
    let mut tag_of: BTreeMap<&MsgId, (SafeTag, String, Instant)> = BTreeMap::new();
    for m in &o.members {
        for l in m.lives() {
            let who = format!("{}#{}", m.name, l.id.incarnation());
            for (d, tag, _) in l.safe_deliveries() {
                if d.from != tag.sender {
                    return Err(format!("{who} delivered {} at {:?} as coming from {:?}", tag_text(&tag, &d.id), d.at, d.from));
                }
                if let Some((sender, _)) = &d.id {
                    if *sender != tag.sender.addr().to_string() {
                        return Err(format!("{who} delivered {} at {:?}: the tag names {} but the payload {sender}", tag_text(&tag, &d.id), d.at, tag.sender));
                    }
                }
                match id_of.get(&tag) {
                    Some((id, first, at)) if **id != d.id => {
                        return Err(format!(
                            "tag {tag} carries two messages: {} delivered it as {} at {at:?}, {who} as {} at {:?}",
                            first,
                            id_text(id),
                            id_text(&d.id),
                            d.at
                        ));
                    }
                    Some(_) => {}
                    None => {
                        id_of.insert(tag, (&d.id, who.clone(), d.at));
                    }
                }
                let Some(id) = &d.id else { continue };
                match tag_of.get(id) {
                    Some((t, first, at)) if *t != tag => {
                        return Err(format!(
                            "message {} travels under two tags: {first} delivered it as {t} at {at:?}, {who} as {tag} at {:?}",
                            id_text(&d.id),
                            d.at
                        ));
                    }
                    Some(_) => {}
                    None => {
                        tag_of.insert(id, (tag, who.clone(), d.at));
                    }
                }
            }
        }
    }
    Ok(())
}

/// (c): no tag and no payload id twice in one incarnation.
fn no_duplicates(l: &NamedLife<'_>) -> Result<(), String> {
    let mut tags: BTreeMap<SafeTag, Instant> = BTreeMap::new();
    let mut ids: BTreeMap<&MsgId, Instant> = BTreeMap::new();
    for e in l.life.log {
        let Entry::Deliver(d) = e else { continue };
        if let Delivery::Safe { tag, .. } = d.kind {
            if let Some(first) = tags.insert(tag, d.at) {
                return Err(format!("{} delivered {} twice: at {first:?} and at {:?}", l.who(), tag_text(&tag, &d.id), d.at));
            }
        }
        if let Some(id) = &d.id {
            if let Some(first) = ids.insert(id, d.at) {
                return Err(format!("{} delivered {} twice: at {first:?} and at {:?}", l.who(), id_text(&d.id), d.at));
            }
        }
    }
    Ok(())
}

/// (d): per sender incarnation, durable deliveries in increasing tag id and
/// `k`, plain ones in increasing `k`.
fn fifo(l: &NamedLife<'_>) -> Result<(), String> {
    /// The last delivery of a sender: (tag id, k, at, text).
    type Last = (u64, Option<u64>, Instant, String);
    // (sender, durable?) -> its last delivery.
    let mut last: BTreeMap<(MemberId, bool), Last> = BTreeMap::new();
    for e in l.life.log {
        let Entry::Deliver(d) = e else { continue };
        let k = d.id.as_ref().map(|(_, k)| *k);
        let (key, tag_id, text) = match d.kind {
            Delivery::Safe { tag, .. } => ((tag.sender, true), tag.id, tag_text(&tag, &d.id)),
            Delivery::Cast => ((d.from, false), 0, id_text(&d.id)),
            _ => continue,
        };
        if let Some((prev_id, prev_k, prev_at, prev)) = last.get(&key) {
            let id_back = key.1 && tag_id <= *prev_id;
            let k_back = matches!((k, prev_k), (Some(k), Some(p)) if k <= *p);
            if id_back || k_back {
                let what = if key.1 { "durable" } else { "plain" };
                return Err(format!("{} delivered {what} {text} at {:?} after {prev} at {prev_at:?}: not in the order {:?} cast them", l.who(), d.at, key.0));
            }
        }
        last.insert(key, (tag_id, k, d.at, text));
    }
    Ok(())
}

/// The stretches of one incarnation's non-replayed durable deliveries: a
/// new one starts at each view followed by `StateBegin`.
fn stretches<'a>(l: &'a NamedLife<'_>) -> Vec<Vec<(&'a Delivered, SafeTag)>> {
    let mut out: Vec<Vec<(&Delivered, SafeTag)>> = vec![Vec::new()];
    for (n, e) in l.life.log.iter().enumerate() {
        match e {
            Entry::View { .. } if matches!(l.life.log.get(n + 1), Some(Entry::StateBegin { .. })) && !out.last().is_some_and(Vec::is_empty) => {
                out.push(Vec::new());
            }
            Entry::Deliver(d) => {
                if let Delivery::Safe { tag, replayed: false } = d.kind {
                    out.last_mut().expect("one stretch at least").push((d, tag));
                }
            }
            _ => {}
        }
    }
    out
}

/// (b): the era's one sequence, as the maximal runs its stretches pin down
/// (one run when the stretches overlap, as they do in a group that stays
/// together); each run in order.
pub(crate) fn global_order(lives: &[NamedLife<'_>]) -> Result<Vec<Vec<SafeTag>>, String> {
    // Each message's successor and predecessor, with who said so: (neighbour, who, at of the message, at of the neighbour).
    type Link = (SafeTag, String, Instant, Instant);
    let mut succ: BTreeMap<SafeTag, Link> = BTreeMap::new();
    let mut pred: BTreeMap<SafeTag, Link> = BTreeMap::new();
    let mut ids: BTreeMap<SafeTag, Option<MsgId>> = BTreeMap::new();
    let mut all: BTreeSet<SafeTag> = BTreeSet::new();
    for l in lives {
        for stretch in stretches(l) {
            for &(d, tag) in &stretch {
                all.insert(tag);
                ids.entry(tag).or_insert_with(|| d.id.clone());
            }
            for pair in stretch.windows(2) {
                let ((da, a), (db, b)) = (pair[0], pair[1]);
                let text = |t: &SafeTag| tag_text(t, ids.get(t).unwrap_or(&None));
                if let Some((c, who, at_a, at_c)) = succ.get(&a) {
                    if *c != b {
                        return Err(format!(
                            "{} delivered {} at {:?} then {} at {:?}, but {who} delivered {} at {at_a:?} then {} at {at_c:?}",
                            l.who(),
                            text(&a),
                            da.at,
                            text(&b),
                            db.at,
                            text(&a),
                            text(c)
                        ));
                    }
                }
                if let Some((c, who, at_b, at_c)) = pred.get(&b) {
                    if *c != a {
                        return Err(format!(
                            "{} delivered {} at {:?} then {} at {:?}, but {who} delivered {} at {at_c:?} then {} at {at_b:?}",
                            l.who(),
                            text(&a),
                            da.at,
                            text(&b),
                            db.at,
                            text(c),
                            text(&b)
                        ));
                    }
                }
                succ.insert(a, (b, l.who(), da.at, db.at));
                pred.insert(b, (a, l.who(), db.at, da.at));
            }
        }
    }
    let mut runs = Vec::new();
    let mut placed = 0;
    for &head in all.iter().filter(|t| !pred.contains_key(t)) {
        let mut run = vec![head];
        let mut at = head;
        while let Some((next, ..)) = succ.get(&at) {
            run.push(*next);
            at = *next;
        }
        placed += run.len();
        runs.push(run);
    }
    if placed < all.len() {
        // Whatever no run reached lies on a cycle: some member delivered a
        // message after one that others delivered after it.
        let start = *all.iter().find(|t| !runs.iter().flatten().any(|x| x == *t)).expect("an unplaced message");
        let mut cycle = vec![start];
        let mut at = start;
        while let Some((next, ..)) = succ.get(&at) {
            if *next == start || cycle.len() > 10 {
                break;
            }
            cycle.push(*next);
            at = *next;
        }
        let (_, who, ..) = &succ[&at];
        let shown: Vec<String> = cycle.iter().map(|t| tag_text(t, ids.get(t).unwrap_or(&None))).collect();
        return Err(format!("no one order: the deliveries go round in a circle ({} ... and back, the last step by {who})", shown.join(" then ")));
    }
    Ok(runs)
}

/// Whether a partition is in force at the end of the run.
pub(crate) fn split_at_end(o: &Outcome) -> bool {
    o.scenario.faults_in_order().iter().fold(false, |split, f| match f.kind {
        FaultKind::Partition(_) | FaultKind::Cut { .. } => true,
        FaultKind::Heal => false,
        _ => split,
    })
}

/// Whether incarnation `l` is a survivor: alive at the end of the run, in
/// a primary view (VSYNC's `primary` gauge agreeing, when the stack has
/// it), with its state loaded.
pub(crate) fn survivor(o: &Outcome, l: &NamedLife<'_>) -> bool {
    let m = &o.members[l.member];
    l.life.alive() && l.life.last_view().is_some_and(|v| v.is_primary()) && m.counter("VSYNC", "primary").is_none_or(|p| p == 1) && !l.life.loading()
}

/// (a): survivors of an era that lasts to the end know everything the era
/// delivered durably.
fn agreement(o: &Outcome, era: &Era, lives: &[NamedLife<'_>]) -> Result<(), String> {
    if era.failed_at.is_some() || o.truncated.is_some() || split_at_end(o) {
        return Ok(());
    }
    // Each message's first durable delivery: who, when, in which view.
    let mut first: BTreeMap<&MsgId, (SafeTag, String, Instant, Option<ViewId>)> = BTreeMap::new();
    // A member that loads state again after it was a member had its group
    // absorbed by a merge (a group founded while the member was cut off,
    // or concurrently with another): VSYNC does not carry the absorbed
    // side's updates over (docs/layers/VSYNC.md). Returns where the
    // absorbing group's view begins in the log.
    let absorbed_at = |log: &[Entry]| -> Option<usize> {
        let begin = log.iter().rposition(|e| matches!(e, Entry::StateBegin { .. }))?;
        let views: Vec<usize> = log[..begin].iter().enumerate().filter(|(_, e)| matches!(e, Entry::View { .. })).map(|(i, _)| i).collect();
        (views.len() > 1).then(|| *views.last().expect("more than one"))
    };
    // Views some survivor installed in the lineage it ended in: a delivery
    // in one of them binds it.
    let survivors_views: BTreeSet<ViewId> = lives
        .iter()
        .filter(|l| survivor(o, l))
        .flat_map(|l| {
            let from = absorbed_at(l.life.log).unwrap_or(0);
            l.life.log[from..].iter().filter_map(|e| if let Entry::View { view, .. } = e { Some(view.id()) } else { None })
        })
        .collect();
    for l in lives {
        let absorbed_until = absorbed_at(l.life.log);
        let mut view = None;
        for (i, e) in l.life.log.iter().enumerate() {
            match e {
                Entry::View { view: v, .. } => view = Some(v.id()),
                Entry::Deliver(d) => {
                    let (Delivery::Safe { tag, .. }, Some(id)) = (d.kind, &d.id) else { continue };
                    // A view no survivor's final lineage includes: its
                    // group was lost (absorbed by a merge, or a primary
                    // lost to fragmentation and founded anew), and VSYNC
                    // keeps nothing of it (docs/layers/VSYNC.md).
                    let lost = view.is_some_and(|v| !survivors_views.contains(&v));
                    if lost && (absorbed_until.is_some_and(|until| i < until) || !survivor(o, l)) {
                        continue;
                    }
                    first.entry(id).or_insert_with(|| (tag, l.who(), d.at, view));
                }
                _ => {}
            }
        }
    }
    let text = |v: &Option<ViewId>| v.map_or_else(|| "no view".to_string(), |v| format!("view {v}"));
    for s in lives.iter().filter(|l| survivor(o, l)) {
        let known = s.life.knowledge();
        // What it delivered itself counts even if a state it loaded later
        // (its group absorbed) does not hold it: SAFE delivers a message
        // once per incarnation, and VSYNC replaced the application's state.
        let delivered: BTreeSet<&MsgId> = s.life.log.iter().filter_map(|e| if let Entry::Deliver(d) = e { d.id.as_ref() } else { None }).collect();
        for (id, (tag, who, at, view)) in &first {
            if known.contains(*id) || delivered.contains(*id) {
                continue;
            }
            let installed = s.life.log.iter().any(|e| matches!(e, Entry::View { view: v, .. } if Some(v.id()) == *view));
            let relation =
                if installed { format!("it was a member of {} too", text(view)) } else { format!("it never installed {}, and its state lacks it", text(view)) };
            let last = s.life.last_view().map(|v| v.id().to_string()).unwrap_or_default();
            return Err(format!(
                "{who} delivered {} at {at:?} in {}, but {}, alive in primary view {last} at the end ({:?}), never delivered it ({relation})",
                tag_text(tag, &Some((*id).clone())),
                text(view),
                s.who(),
                o.end
            ));
        }
    }
    Ok(())
}
