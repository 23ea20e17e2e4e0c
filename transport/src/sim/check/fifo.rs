//! FIFO: each member delivers each sender's messages in the order the
//! sender cast them (increasing `k`; gaps are completeness's business).

use crate::sim::Outcome;
use std::collections::BTreeMap;

/// Checks per-sender order at every member.
pub fn check(o: &Outcome) -> Result<(), String> {
    for m in &o.members {
        let mut last: BTreeMap<&str, (u64, _)> = BTreeMap::new();
        for d in m.deliveries() {
            let Some((sender, k)) = &d.id else { continue };
            if let Some(&(prev, at)) = last.get(sender.as_str()) {
                if *k <= prev {
                    return Err(format!("{} delivered {sender}:{k} at {:?} after {sender}:{prev} at {at:?}", m.name, d.at));
                }
            }
            last.insert(sender, (*k, d.at));
        }
    }
    Ok(())
}
