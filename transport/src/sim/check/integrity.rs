//! Integrity: every delivered payload is byte for byte what its sender cast.
//! The filler must match the payload's own id (checked at delivery), and the
//! length and `fnv1a64` must match the sender's record of that cast.
//! Payloads whose id names no cast are left to [`super::no_creation`].

use super::id_text;
use crate::sim::Outcome;

/// Checks integrity over every member's log.
pub fn check(o: &Outcome) -> Result<(), String> {
    for m in &o.members {
        for d in m.deliveries() {
            if !d.intact {
                return Err(format!(
                    "{} delivered from {} at {:?} a {}-byte payload with id {} whose bytes are corrupt (fnv {:016x})",
                    m.name,
                    d.from,
                    d.at,
                    d.len,
                    id_text(&d.id),
                    d.hash
                ));
            }
            let Some((sender, k)) = &d.id else { continue };
            let Some(cast) = o.index_of(sender).and_then(|s| o.members[s].casts.get(*k as usize)) else { continue };
            if (cast.len, cast.hash) != (d.len, d.hash) {
                return Err(format!(
                    "{} delivered {sender}:{k} at {:?} as {} bytes with fnv {:016x}, but it was cast at {:?} as {} bytes with fnv {:016x}",
                    m.name, d.at, d.len, d.hash, cast.at, cast.len, cast.hash
                ));
            }
        }
    }
    Ok(())
}
