//! No creation: every delivered message was cast by the member the stack
//! names as its sender. Its payload must carry an id, the id must name that
//! sender, and the sender's stack must have accepted a cast with that index.

use super::id_text;
use crate::sim::Outcome;

/// Checks that nothing is delivered that was not cast.
pub fn check(o: &Outcome) -> Result<(), String> {
    for m in &o.members {
        for d in m.deliveries() {
            let Some((sender, k)) = &d.id else {
                return Err(format!("{} delivered from {} at {:?} a {}-byte payload without an id", m.name, d.from, d.at, d.len));
            };
            if *sender != d.from.to_string() {
                return Err(format!("{} delivered {} at {:?} as coming from {}, but its id names {sender}", m.name, id_text(&d.id), d.at, d.from));
            }
            let Some(s) = o.index_of_id(&d.from) else {
                return Err(format!("{} delivered {} at {:?} from {}, who is not a member", m.name, id_text(&d.id), d.at, d.from));
            };
            let cast = o.members[s].casts.len() as u64;
            if *k >= cast {
                return Err(format!("{} delivered {sender}:{k} at {:?}, but {sender} cast only {cast} messages (0..{cast})", m.name, d.at));
            }
        }
    }
    Ok(())
}
