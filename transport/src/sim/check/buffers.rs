//! Empty buffers: in a run without crashes or partitions, after the quiet
//! period every member's retransmission buffer (NAK `xmit_buffer`),
//! out-of-order buffer (NAK `out_of_order`), reassembly buffer (FRAG
//! `partials`) and causal hold-back queue (CAUSAL `held`) are empty. Counters are looked up by name in each layer's
//! stats; a layer absent from the stack is skipped, but a present layer that
//! does not report the counter is a failure (the check would otherwise pass
//! vacuously). Runs with faults pass trivially.

use crate::sim::Outcome;

/// The gauges that must read zero: (layer, counter, what it holds).
pub const GAUGES: &[(&str, &str, &str)] = &[
    ("NAK", "xmit_buffer", "messages kept for retransmission"),
    ("NAK", "out_of_order", "messages held out of order"),
    ("FRAG", "partials", "partly reassembled messages"),
    ("CAUSAL", "held", "messages held back for causal order"),
];

/// Checks that the buffers drained.
pub fn check(o: &Outcome) -> Result<(), String> {
    if !o.scenario.is_fault_free() {
        return Ok(());
    }
    for m in o.members.iter().filter(|m| m.alive()) {
        for &(layer, counter, what) in GAUGES {
            let Some(stats) = m.stats.iter().find(|s| s.name == layer) else { continue };
            match stats.counters.get(counter) {
                None => return Err(format!("{layer} at {} reports no counter `{counter}` ({what}); it reports {:?}", m.name, stats.counters.entries)),
                Some(0) => {}
                Some(v) => {
                    return Err(format!(
                        "{layer} at {} still holds {v} {what} (`{counter}`) at {:?}, {} ms after the quiet period began at {:?}; its stats: {:?}",
                        m.name,
                        o.end,
                        o.scenario.quiet_ms,
                        o.quiet_from.unwrap_or_default(),
                        stats.counters.entries
                    ))
                }
            }
        }
    }
    Ok(())
}
