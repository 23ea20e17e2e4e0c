//! Properties checked over the logs of a run, one file per property. Each
//! check is a pure function of the [`Outcome`] that returns `Ok(())` or a
//! message naming the member, the sender, the message id and the time.
//!
//! Safety properties ([`SAFETY`]) must hold in every run, faults or not.
//! Liveness ([`completeness`]) and empty buffers ([`buffers`]) are required
//! only of fault-free runs (no crash, partition, join or leave), after the
//! quiet period: without a membership layer a survivor may keep messages
//! for a crashed member forever, legitimately.
//!
//! A stack with a membership layer (VSYNC) is held to
//! [`VIRTUAL_SYNCHRONY`]: the safety properties, FIFO, [`view_agreement`],
//! [`virtual_synchrony`] and, once the group settles in a primary view,
//! [`vsync_liveness`]. These read the views, state loads and knowledge
//! (the set of message ids a member delivered or loaded) in the logs.
//!
//! Ordering stacks add [`causal_order`] (CAUSAL) and [`total_order`]
//! (TOTAL, TOKEN) to those: [`RELIABLE_CAUSAL`] for `FRAG:NAK:CAUSAL`,
//! [`VIRTUAL_SYNCHRONY_CAUSAL`], [`VIRTUAL_SYNCHRONY_TOTAL`] and
//! [`VIRTUAL_SYNCHRONY_CAUSAL_TOTAL`] with VSYNC, and [`for_stack`] picks
//! the right set from a stack string.
//!
//! A stack with SAFE is held to [`SAFE_CHECKS`] ([`SAFE_CAUSAL_CHECKS`]
//! with CAUSAL): [`uniform`] agreement and one order of its durable
//! deliveries, [`replay`] after total failures, and the checks above that
//! apply, per era of the run ([`Outcome::eras`], so that a run restarted
//! after a total failure is judged like a fresh one) and leaving out the
//! plain casts (`Order::Fifo`, delivered as `Delivery::Cast`) where they
//! promise no order. Incarnations replace members in duplication and FIFO
//! (a restarted member may deliver again what its earlier self delivered):
//! [`uniform`] checks both per incarnation.

pub mod buffers;
pub mod causal_order;
pub mod completeness;
pub mod fifo;
pub mod integrity;
pub mod no_creation;
pub mod no_duplication;
mod numbering;
pub mod replay;
pub mod total_order;
pub mod uniform;
pub mod view_agreement;
pub mod virtual_synchrony;
pub mod vsync_liveness;

use super::{Entry, MemberLog, MsgId, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use strata_stack::Delivery;
use strata_stack::{Instant, View, ViewId};

/// A named property.
#[derive(Copy, Clone, Debug)]
pub struct Check {
    /// The property's name, as failures print it.
    pub name: &'static str,
    /// The check.
    pub run: fn(&Outcome) -> Result<(), String>,
}

/// Payloads arrive as they were cast.
pub const INTEGRITY: Check = Check { name: "integrity", run: integrity::check };
/// No member delivers a message twice.
pub const NO_DUPLICATION: Check = Check { name: "no duplication", run: no_duplication::check };
/// Every delivered message was cast by its sender.
pub const NO_CREATION: Check = Check { name: "no creation", run: no_creation::check };
/// Each sender's messages are delivered in the order it cast them.
pub const FIFO: Check = Check { name: "fifo", run: fifo::check };
/// Every live member delivers every cast of every live member.
pub const COMPLETENESS: Check = Check { name: "completeness", run: completeness::check };
/// Retransmission, out-of-order and reassembly buffers are empty at the end.
pub const BUFFERS: Check = Check { name: "empty buffers", run: buffers::check };
/// Members agree on each view, install views in order and skip none.
pub const VIEW_AGREEMENT: Check = Check { name: "view agreement", run: view_agreement::check };
/// Members that go from one view to the same next view know the same
/// messages, and each message is delivered in the same view everywhere.
pub const VIRTUAL_SYNCHRONY_CHECK: Check = Check { name: "virtual synchrony", run: virtual_synchrony::check };
/// Once the group ends primary, the live members end in one view of
/// exactly themselves, knowing the same messages, every live cast among them.
pub const VSYNC_LIVENESS: Check = Check { name: "vsync liveness", run: vsync_liveness::check };

/// No member delivers a message before, or (in the same view) without,
/// the messages it causally depends on.
pub const CAUSAL_ORDER: Check = Check { name: "causal order", run: causal_order::check };
/// Every two members deliver their common messages in the same order
/// (leaving out what a member delivered in a view it crashed in or was cut
/// off from: the order is not uniform, see [`total_order`]).
pub const TOTAL_ORDER: Check = Check { name: "total order", run: total_order::check };
/// The same, counting every delivery (for stacks that promise uniformity).
pub const UNIFORM_TOTAL_ORDER: Check = Check { name: "uniform total order", run: total_order::check_uniform };

/// Durable deliveries: uniform agreement, one order, no duplicate and
/// per-sender FIFO per incarnation, in each era.
pub const UNIFORM: Check = Check { name: "uniform agreement", run: uniform::check };
/// One replay per incarnation before any durable delivery; after a total
/// failure, every unfinished message replayed, in order.
pub const REPLAY: Check = Check { name: "replay", run: replay::check };
/// [`VIEW_AGREEMENT`] in each era.
pub const ERA_VIEW_AGREEMENT: Check = Check { name: "view agreement", run: |o| per_era(o, view_agreement::check) };
/// [`VIRTUAL_SYNCHRONY_CHECK`] in each era, leaving out the durable
/// deliveries of a member in a view it failed out of (see
/// [`without_durable_deliveries_in_failed_views`]).
pub const ERA_VIRTUAL_SYNCHRONY: Check =
    Check { name: "virtual synchrony", run: |o| per_era(o, |e| virtual_synchrony::check(&without_durable_deliveries_in_failed_views(e))) };
/// [`VSYNC_LIVENESS`] in each era (only the last can have live members).
pub const ERA_VSYNC_LIVENESS: Check = Check { name: "vsync liveness", run: |o| per_era(o, vsync_liveness::check) };
/// [`TOTAL_ORDER`] in each era, plain casts left out.
pub const ERA_TOTAL_ORDER: Check =
    Check { name: "total order", run: |o| per_era(o, |e| total_order::check_except(e, &|s, k| plain_casts(e).contains(&(s, k)))) };
/// [`CAUSAL_ORDER`] in each era, plain casts left out.
pub const ERA_CAUSAL_ORDER: Check = Check {
    name: "causal order",
    run: |o| {
        per_era(o, |e| {
            let e = without_replayed(e);
            causal_order::check_except(&e, &|s, k| plain_casts(&e).contains(&(s, k)))
        })
    },
};

/// `o` without redeliveries after a recovery (`replayed`): the log keeps
/// what was not finished, not its finished causal predecessors.
pub fn without_replayed(o: &Outcome) -> Outcome {
    let mut out = o.clone();
    for m in &mut out.members {
        m.log.retain(|e| !matches!(e, Entry::Deliver(d) if matches!(d.kind, Delivery::Safe { replayed: true, .. })));
    }
    out
}

/// What every stack must satisfy, whatever it claims.
pub const SAFETY: &[Check] = &[INTEGRITY, NO_DUPLICATION, NO_CREATION];
/// What a reliable FIFO stack (FRAG:NAK) must satisfy.
pub const RELIABLE_FIFO: &[Check] = &[INTEGRITY, NO_DUPLICATION, NO_CREATION, FIFO, COMPLETENESS, BUFFERS];
/// What a virtually synchronous stack (FRAG:NAK:VSYNC) must satisfy.
pub const VIRTUAL_SYNCHRONY: &[Check] = &[INTEGRITY, NO_DUPLICATION, NO_CREATION, FIFO, VIEW_AGREEMENT, VIRTUAL_SYNCHRONY_CHECK, VSYNC_LIVENESS];
/// What a reliable causal stack without membership (FRAG:NAK:CAUSAL) must satisfy.
pub const RELIABLE_CAUSAL: &[Check] = &[INTEGRITY, NO_DUPLICATION, NO_CREATION, FIFO, CAUSAL_ORDER, COMPLETENESS, BUFFERS];
/// What a virtually synchronous causal stack (FRAG:NAK:CAUSAL:VSYNC) must satisfy.
pub const VIRTUAL_SYNCHRONY_CAUSAL: &[Check] =
    &[INTEGRITY, NO_DUPLICATION, NO_CREATION, FIFO, VIEW_AGREEMENT, VIRTUAL_SYNCHRONY_CHECK, VSYNC_LIVENESS, CAUSAL_ORDER];
/// What a virtually synchronous totally ordered stack (FRAG:NAK:VSYNC:TOTAL,
/// FRAG:NAK:VSYNC:TOKEN) must satisfy.
pub const VIRTUAL_SYNCHRONY_TOTAL: &[Check] =
    &[INTEGRITY, NO_DUPLICATION, NO_CREATION, FIFO, VIEW_AGREEMENT, VIRTUAL_SYNCHRONY_CHECK, VSYNC_LIVENESS, TOTAL_ORDER];
/// The same with CAUSAL below VSYNC (FRAG:NAK:CAUSAL:VSYNC:TOTAL): causal order as well.
pub const VIRTUAL_SYNCHRONY_CAUSAL_TOTAL: &[Check] =
    &[INTEGRITY, NO_DUPLICATION, NO_CREATION, FIFO, VIEW_AGREEMENT, VIRTUAL_SYNCHRONY_CHECK, VSYNC_LIVENESS, CAUSAL_ORDER, TOTAL_ORDER];

/// What a stack with SAFE (FRAG:NAK:VSYNC:SAFE) must satisfy, per era.
pub const SAFE_CHECKS: &[Check] = &[INTEGRITY, NO_CREATION, ERA_VIEW_AGREEMENT, UNIFORM, REPLAY, ERA_VIRTUAL_SYNCHRONY, ERA_TOTAL_ORDER, ERA_VSYNC_LIVENESS];
/// The same with CAUSAL below VSYNC (FRAG:NAK:CAUSAL:VSYNC:SAFE): causal order as well.
pub const SAFE_CAUSAL_CHECKS: &[Check] =
    &[INTEGRITY, NO_CREATION, ERA_VIEW_AGREEMENT, UNIFORM, REPLAY, ERA_VIRTUAL_SYNCHRONY, ERA_CAUSAL_ORDER, ERA_TOTAL_ORDER, ERA_VSYNC_LIVENESS];

/// Runs `check` on each era of `o` as a run of its own ([`Outcome::era_outcome`]);
/// on `o` itself when it has no restart.
fn per_era(o: &Outcome, check: fn(&Outcome) -> Result<(), String>) -> Result<(), String> {
    if !o.scenario.has_restarts() {
        return check(o);
    }
    let eras = o.eras();
    for k in 0..eras.len() {
        check(&o.era_outcome(k)).map_err(|e| if eras.len() > 1 { format!("{e} (era {k}, from {:?})", eras[k].from) } else { e })?;
    }
    Ok(())
}

/// `o` without the durable deliveries (`Delivery::Safe`) each member made in
/// a view it *failed out of*: one it crashed in, or left for a non-primary
/// view or for one it joined anew (see [`total_order`]). SAFE decides a
/// message in a view once a majority acknowledged it; a member that
/// delivers it and is then cut off may have been the only one to see those
/// acknowledgements, and the others learn the decision in the next view
/// (from its leader's NEWVIEW). The delivery is uniform ([`uniform`] checks
/// that the others deliver it, in the same place of the order), but not in
/// the same view.
pub fn without_durable_deliveries_in_failed_views(o: &Outcome) -> Outcome {
    let mut out = o.clone();
    for (i, copy) in out.members.iter_mut().enumerate() {
        let failed = in_failed_views(o, i);
        let mut position = 0;
        copy.log.retain(|e| {
            let in_failed = failed[position];
            position += 1;
            !(in_failed && matches!(e, Entry::Deliver(d) if matches!(d.kind, Delivery::Safe { .. })))
        });
    }
    out
}

/// For each entry of member `i`'s log, whether it lies in a view the
/// member failed out of: a view followed by a non-primary one or by one it
/// joined afresh, or its last view if it crashed.
pub(crate) fn in_failed_views(o: &Outcome, i: usize) -> Vec<bool> {
    let m = &o.members[i];
    let epochs = epochs(o, m);
    let failed: Vec<bool> = (0..epochs.len())
        .map(|e| match epochs.get(e + 1) {
            Some(next) => !next.view.is_primary() || next.joined,
            None => m.crashed_at.is_some(),
        })
        .collect();
    let mut epoch: Option<usize> = None;
    m.log
        .iter()
        .map(|e| {
            if let Entry::View { .. } = e {
                epoch = Some(epoch.map_or(0, |x| x + 1));
            }
            epoch.is_some_and(|x| failed[x])
        })
        .collect()
}

/// The casts delivered somewhere as plain casts (`Delivery::Cast`): on a
/// stack with SAFE, those that asked for FIFO order only. As
/// `(member index, k)`.
pub fn plain_casts(o: &Outcome) -> BTreeSet<(usize, u64)> {
    let mut out = BTreeSet::new();
    for m in &o.members {
        for d in m.deliveries().filter(|d| d.kind == Delivery::Cast) {
            if let Some((s, k)) = d.id.as_ref().and_then(|(name, k)| Some((o.index_of(name)?, *k))) {
                out.insert((s, k));
            }
        }
    }
    out
}

/// The checks a stack is held to, by the built-in layers its string names:
/// [`VIRTUAL_SYNCHRONY`] with VSYNC, else [`RELIABLE_FIFO`]; plus
/// [`CAUSAL_ORDER`] with CAUSAL, and [`TOTAL_ORDER`] with TOTAL or TOKEN.
/// (For the stacks the constants above name, the same checks in the same order.)
/// A stack with SAFE gets [`SAFE_CHECKS`], or [`SAFE_CAUSAL_CHECKS`] with CAUSAL.
pub fn for_stack(stack: &str) -> Vec<Check> {
    let names: Vec<&str> = super::workload::layer_names(stack).collect();
    let has = |name: &str| names.contains(&name);
    if has("SAFE") {
        return if has("CAUSAL") { SAFE_CAUSAL_CHECKS.to_vec() } else { SAFE_CHECKS.to_vec() };
    }
    let mut checks = if has("VSYNC") { VIRTUAL_SYNCHRONY.to_vec() } else { RELIABLE_FIFO.to_vec() };
    let mut extra = Vec::new();
    if has("CAUSAL") {
        extra.push(CAUSAL_ORDER);
    }
    if has("TOTAL") || has("TOKEN") {
        extra.push(TOTAL_ORDER);
    }
    // Ordering checks before the liveness ones of a stack without
    // membership, as in RELIABLE_CAUSAL: a misordering is the sharper report.
    let at = if has("VSYNC") { checks.len() } else { checks.iter().position(|c| c.name == COMPLETENESS.name).unwrap_or(checks.len()) };
    checks.splice(at..at, extra);
    checks
}

/// Runs `checks` in order; the first failure is returned as `<name> violated: <message>`.
pub fn run(outcome: &Outcome, checks: &[Check]) -> Result<(), String> {
    for c in checks {
        (c.run)(outcome).map_err(|m| format!("{} violated: {m}", c.name))?;
    }
    Ok(())
}

/// `member:k` as payload ids spell it.
pub(crate) fn id_text(id: &Option<(String, u64)>) -> String {
    match id {
        Some((m, k)) => format!("{m}:{k}"),
        None => "<no id>".into(),
    }
}

/// One view as one member lived it.
#[derive(Clone, Debug)]
pub struct Epoch<'a> {
    /// The view.
    pub view: &'a Arc<View>,
    /// When the member installed it.
    pub at: Instant,
    /// The member's knowledge when it installed the view: every message id
    /// it delivered before, a completed state load replacing what came
    /// before the load.
    pub known: BTreeSet<MsgId>,
    /// Whether the member was still loading state when it left this view
    /// (a `StateBegin` in it with no `StateDone` after it), so its knowledge
    /// in this view is incomplete.
    pub loading: bool,
    /// Whether the member joined this view rather than moving into it from
    /// its previous view: the view is followed at once by `StateBegin`
    /// (state transfer) and the member's previous view is not the one the
    /// view was decided in ([`predecessors`]; a member still loading state
    /// is sent it again in the next view, and does move). A member's first view, a
    /// rejoin after a dissolved minority view or after being removed, are
    /// joins; a founder's first view is neither (it has no predecessor).
    pub joined: bool,
}

/// For each view, the view it was decided in, as seen by a member that
/// moved into it without a state transfer (an old member of the group).
pub fn predecessors(o: &Outcome) -> BTreeMap<ViewId, ViewId> {
    let mut out = BTreeMap::new();
    for m in &o.members {
        let mut prev: Option<ViewId> = None;
        for (n, e) in m.log.iter().enumerate() {
            if let Entry::View { view, .. } = e {
                let state_follows = matches!(m.log.get(n + 1), Some(Entry::StateBegin { .. }));
                if let (Some(p), false) = (prev, state_follows) {
                    out.insert(view.id(), p);
                }
                prev = Some(view.id());
            }
        }
    }
    out
}

/// The views member `m` of run `o` installed, in order, with its knowledge at each.
pub fn epochs<'a>(o: &Outcome, m: &'a MemberLog) -> Vec<Epoch<'a>> {
    let predecessors = predecessors(o);
    let mut out: Vec<Epoch<'a>> = Vec::new();
    let mut known = BTreeSet::new();
    let mut loading = false;
    for (n, e) in m.log.iter().enumerate() {
        match e {
            Entry::View { at, view } => {
                let prev = out.last().map(|e| e.view.id());
                if let Some(last) = out.last_mut() {
                    last.loading = loading;
                }
                // State follows a view both for a joiner and for a member
                // still loading that moves on; a member moved if its previous
                // view is the one the view was decided in.
                let state_follows = matches!(m.log.get(n + 1), Some(Entry::StateBegin { .. }));
                let moved = match predecessors.get(&view.id()) {
                    Some(p) => prev == Some(*p),
                    None => loading,
                };
                out.push(Epoch { view, at: *at, known: known.clone(), loading: false, joined: state_follows && !moved });
            }
            Entry::Deliver(d) => {
                if let Some(id) = &d.id {
                    known.insert(id.clone());
                }
            }
            Entry::StateBegin { .. } => loading = true,
            Entry::StateLoaded { known: loaded, .. } => {
                known = (**loaded).clone();
                loading = false;
            }
            _ => {}
        }
    }
    if let Some(last) = out.last_mut() {
        last.loading = loading;
    }
    out
}

/// Member names, comma-separated.
pub(crate) fn names(members: &[strata_stack::MemberId]) -> String {
    members.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(",")
}

/// A view as failures print it: `id [members]`, plus ` non-primary` if it is not primary.
pub(crate) fn view_text(v: &View) -> String {
    format!("{} [{}]{}", v.id(), names(v.members()), if v.is_primary() { "" } else { " non-primary" })
}

/// The ids in `a` but not in `b`, at most 10, as text.
pub(crate) fn missing(a: &BTreeSet<MsgId>, b: &BTreeSet<MsgId>) -> String {
    let diff: Vec<String> = a.difference(b).map(|(m, k)| format!("{m}:{k}")).collect();
    if diff.is_empty() {
        return "none".into();
    }
    let more = if diff.len() > 10 { format!(",... ({} in all)", diff.len()) } else { String::new() };
    format!("{}{more}", diff[..diff.len().min(10)].join(","))
}
