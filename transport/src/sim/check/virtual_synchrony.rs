//! Virtual synchrony: members that move together from one view to the next
//! know the same messages, and every message is delivered in one view.
//!
//! * For members A and B that both install view V and then the same next
//!   view W, A's knowledge when it installs W equals B's when it installs W.
//!   Knowledge is the set of message ids a member delivered, a completed
//!   state load replacing what came before it (see [`super::epochs`]). A
//!   member still loading state when it leaves V (a `StateBegin` in V
//!   without a `StateDone` after it) is skipped for V, and so is a member
//!   that joins W rather than moving into it ([`super::Epoch::joined`]:
//!   it left V without the flush, and the state it loads in W replaces
//!   its knowledge).
//! * A message delivered by several members is delivered in the same view
//!   at each: the view of a delivery is the last view the member installed
//!   before it ("outside any view" if none).
//!
//! A run without views passes the first part trivially, and the second as
//! long as no member delivers outside a view while another delivers in one.

use super::{epochs, missing};
use crate::sim::{Entry, MsgId, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use strata_stack::{Instant, ViewId};

/// Checks virtual synchrony over every member's log.
pub fn check(o: &Outcome) -> Result<(), String> {
    same_knowledge_across_each_change(o)?;
    same_view_for_each_message(o)
}

fn same_knowledge_across_each_change(o: &Outcome) -> Result<(), String> {
    // (V, W) -> the first member seen going from V to W with complete
    // knowledge: its name, when it installed W, its knowledge then.
    let mut seen: BTreeMap<(ViewId, ViewId), (&str, Instant, BTreeSet<MsgId>)> = BTreeMap::new();
    for m in &o.members {
        let epochs = epochs(o, m);
        for pair in epochs.windows(2) {
            let (v, w) = (&pair[0], &pair[1]);
            if v.loading || w.joined {
                continue;
            }
            let key = (v.view.id(), w.view.id());
            match seen.get(&key) {
                None => {
                    seen.insert(key, (&m.name, w.at, w.known.clone()));
                }
                Some((a, a_at, known)) if *known != w.known => {
                    return Err(format!(
                        "{a} and {} both went from view {} to view {} but knew different messages when they installed it \
                         ({a} at {a_at:?}: {} ids, {} at {:?}: {} ids); only {a} knew {}; only {} knew {}",
                        m.name,
                        key.0,
                        key.1,
                        known.len(),
                        m.name,
                        w.at,
                        w.known.len(),
                        missing(known, &w.known),
                        m.name,
                        missing(&w.known, known)
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn same_view_for_each_message(o: &Outcome) -> Result<(), String> {
    // Message -> the first member seen delivering it: name, time, view.
    let mut first: BTreeMap<&MsgId, (&str, Instant, Option<ViewId>)> = BTreeMap::new();
    let text = |v: &Option<ViewId>| v.map(|v| format!("view {v}")).unwrap_or_else(|| "outside any view".into());
    for m in &o.members {
        let mut current: Option<ViewId> = None;
        for e in &m.log {
            match e {
                Entry::View { view, .. } => current = Some(view.id()),
                Entry::Deliver(d) => {
                    let Some(id) = &d.id else { continue };
                    match first.get(id) {
                        None => {
                            first.insert(id, (&m.name, d.at, current));
                        }
                        Some((a, a_at, v)) if *v != current => {
                            return Err(format!(
                                "{}:{} was delivered by {a} at {a_at:?} in {} but by {} at {:?} in {}",
                                id.0,
                                id.1,
                                text(v),
                                m.name,
                                d.at,
                                text(&current)
                            ));
                        }
                        Some(_) => {}
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}
