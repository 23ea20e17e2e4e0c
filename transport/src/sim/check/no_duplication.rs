//! No duplication: no member delivers the same message (sender, k) twice.

use crate::sim::Outcome;
use std::collections::BTreeMap;

/// Checks that every member delivers each message at most once.
pub fn check(o: &Outcome) -> Result<(), String> {
    for m in &o.members {
        let mut seen = BTreeMap::new();
        for d in m.deliveries() {
            let Some((sender, k)) = &d.id else { continue };
            if let Some(first) = seen.insert((sender.as_str(), *k), d.at) {
                return Err(format!("{} delivered {sender}:{k} twice: at {first:?} and at {:?}", m.name, d.at));
            }
        }
    }
    Ok(())
}
