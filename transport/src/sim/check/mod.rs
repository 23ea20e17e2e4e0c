//! Properties checked over the logs of a run, one file per property. Each
//! check is a pure function of the [`Outcome`] that returns `Ok(())` or a
//! message naming the member, the sender, the message id and the time.
//!
//! Safety properties ([`SAFETY`]) must hold in every run, faults or not.
//! Liveness ([`completeness`]) and empty buffers ([`buffers`]) are required
//! only of fault-free runs (no crash, no partition), after the quiet period:
//! without a membership layer a survivor may keep messages for a crashed
//! member forever, legitimately.

pub mod buffers;
pub mod completeness;
pub mod fifo;
pub mod integrity;
pub mod no_creation;
pub mod no_duplication;

use super::Outcome;

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

/// What every stack must satisfy, whatever it claims.
pub const SAFETY: &[Check] = &[INTEGRITY, NO_DUPLICATION, NO_CREATION];
/// What a reliable FIFO stack (FRAG:NAK) must satisfy.
pub const RELIABLE_FIFO: &[Check] = &[INTEGRITY, NO_DUPLICATION, NO_CREATION, FIFO, COMPLETENESS, BUFFERS];

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
