//! Completeness (liveness): in a run without crashes or partitions, every
//! member delivers every cast of every member (its own included) by the end
//! of the quiet period, and every member got all its casts accepted.
//! Runs with faults pass trivially.

use crate::sim::Outcome;
use std::collections::BTreeSet;

/// Checks that everything cast was delivered everywhere.
pub fn check(o: &Outcome) -> Result<(), String> {
    if !o.scenario.is_fault_free() {
        return Ok(());
    }
    if let Some(why) = &o.truncated {
        return Err(format!("the run was cut short: {why}"));
    }
    let quiet = o.quiet_from.map(|q| format!("{q:?}")).unwrap_or_else(|| "never".into());
    for s in &o.members {
        if s.casts.len() as u64 != u64::from(o.scenario.casts) {
            return Err(format!(
                "{} got only {} of its {} casts accepted ({} refused by backpressure)",
                s.name,
                s.casts.len(),
                o.scenario.casts,
                s.backpressured
            ));
        }
    }
    for m in &o.members {
        let got: BTreeSet<(&str, u64)> = m.deliveries().filter_map(|d| d.id.as_ref().map(|(s, k)| (s.as_str(), *k))).collect();
        for s in &o.members {
            let missing: Vec<u64> = s.casts.iter().map(|c| c.k).filter(|k| !got.contains(&(s.name.as_str(), *k))).collect();
            if !missing.is_empty() {
                let shown: Vec<String> = missing.iter().take(10).map(|k| k.to_string()).collect();
                let first = &s.casts[missing[0] as usize];
                return Err(format!(
                    "{} never delivered {} of the {} casts of {} (k = {}{}); the first, {}:{} ({} bytes), was cast at {:?}; quiet period from {quiet} to {:?}",
                    m.name,
                    missing.len(),
                    s.casts.len(),
                    s.name,
                    shown.join(","),
                    if missing.len() > 10 { ",..." } else { "" },
                    s.name,
                    first.k,
                    first.len,
                    first.at,
                    o.end
                ));
            }
        }
    }
    Ok(())
}
