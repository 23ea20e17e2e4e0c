//! View agreement: the members agree on what each view is and install views
//! in one order.
//!
//! * A view id installed by several members has the same member list (in
//!   rank order) and the same primary flag at each.
//! * Each member's view counters strictly increase (a member never installs
//!   a view twice, nor an older one after a newer one).
//! * No skipping: if member A installs view V and then moves to W (W is the
//!   next view A installs, and A did not *join* W, see
//!   [`super::Epoch::joined`]), every member B that installs V, is a member
//!   of W and installs some view after V, installs W next. A member that
//!   joins W with state transfer (a minority member rejoining after its
//!   non-primary view dissolved, a member removed and readmitted) starts
//!   afresh: its previous view has no say in W, and two minority members
//!   may rejoin the primary in different views. Likewise B is excused when
//!   its view after V is non-primary or one it joined: W was decided with B
//!   in it, but B was cut off before installing it (in the standard model,
//!   B failed just before W), and W's members remove it later.
//!
//! A run without views (a stack without a membership layer) passes.

use super::{epochs, view_text};
use crate::sim::Outcome;
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_stack::{Instant, MemberId, View, ViewId};

/// One member's views in order, with when it installed each.
type Installed<'a> = Vec<(Instant, &'a Arc<View>)>;

/// Checks view agreement over every member's log.
pub fn check(o: &Outcome) -> Result<(), String> {
    // The first installation of each view id: by whom, when, what.
    let mut first: BTreeMap<ViewId, (&str, Instant, &Arc<View>)> = BTreeMap::new();
    // Each member's views in order.
    let mut sequences: Vec<(&str, MemberId, Installed<'_>)> = Vec::new();
    for m in &o.members {
        let mut seq: Vec<(Instant, &Arc<View>)> = Vec::new();
        for (at, view) in m.views() {
            match first.get(&view.id()) {
                Some(&(who, when, v)) if v.members() != view.members() || v.is_primary() != view.is_primary() => {
                    return Err(format!(
                        "view {} is {} at {who} (installed at {when:?}) but {} at {} (installed at {at:?})",
                        view.id(),
                        view_text(v),
                        view_text(view),
                        m.name
                    ));
                }
                Some(_) => {}
                None => {
                    first.insert(view.id(), (&m.name, at, view));
                }
            }
            if let Some(&(prev_at, prev)) = seq.last() {
                if view.id().counter <= prev.id().counter {
                    return Err(format!(
                        "{} installed view {} at {at:?} after view {} at {prev_at:?}: view counters must strictly increase",
                        m.name,
                        view_text(view),
                        view_text(prev)
                    ));
                }
            }
            seq.push((at, view));
        }
        sequences.push((&m.name, m.id, seq));
    }
    // Which (member, view) installations were joins.
    let b_joined: BTreeMap<(&str, ViewId), bool> =
        o.members.iter().flat_map(|m| epochs(o, m).into_iter().map(move |e| ((m.name.as_str(), e.view.id()), e.joined))).collect();
    for (m, (a, _, _)) in o.members.iter().zip(&sequences) {
        for pair in epochs(o, m).windows(2) {
            if pair[1].joined {
                continue;
            }
            let (v, w, w_at) = (pair[0].view, pair[1].view, pair[1].at);
            for (b, b_id, seq_b) in &sequences {
                if a == b || !w.contains(b_id) {
                    continue;
                }
                let Some(p) = seq_b.iter().position(|(_, x)| x.id() == v.id()) else { continue };
                let Some(&(x_at, x)) = seq_b.get(p + 1) else { continue };
                // B was cut off after W was decided with it: it went on in a
                // minority's view, or was removed and joined again later.
                if !x.is_primary() || b_joined.get(&(*b, x.id())).copied().unwrap_or(false) {
                    continue;
                }
                if x.id() != w.id() {
                    return Err(format!(
                        "{a} installed view {} then {} (at {w_at:?}), but {b}, a member of {}, installed {} then {} (at {x_at:?})",
                        v.id(),
                        view_text(w),
                        w.id(),
                        v.id(),
                        view_text(x)
                    ));
                }
            }
        }
    }
    Ok(())
}
