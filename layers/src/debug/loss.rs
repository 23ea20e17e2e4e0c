//! # LOSS: seeded fault injection
//!
//! Drops, and optionally duplicates, a random share of the messages arriving
//! from other members, so that the layers above it can be exercised under
//! loss on any network, loopback included (where `tc netem` may be missing).
//! Put it at the bottom: `"LOSS(percent=20):FRAG:NAK"` loses 20% of the
//! datagrams (fragments, retransmissions and control traffic alike), and the
//! NAK layer's `retransmitted` counter shows what it repaired.
//!
//! * Guarantees: none; it takes guarantees away. A member's own casts, which
//!   the engine loops back locally, are never dropped.
//! * Header: none. Requires and provides nothing.
//! * Parameters: `percent` (0..=100, default 10) of incoming messages are
//!   dropped; `duplicate_percent` (0..=100, default 0) of those kept are passed
//!   up twice. Decisions come from the member's seeded rng, so a simulation
//!   replays exactly.
//! * Bad input: not inspected; it passes or drops whole messages.

use strata_stack::{Context, Layer, LayerDescriptor, ParamKind, ParamSpec, Params, Props, Stats, Up};

/// The `LOSS` descriptor.
pub const LOSS: LayerDescriptor = LayerDescriptor {
    name: "LOSS",
    summary: "fault injection: drops (and optionally duplicates) a seeded random share of incoming messages",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[
        ParamSpec {
            name: "percent",
            kind: ParamKind::U64 { min: 0, max: 100 },
            default: "10",
            doc: "share of incoming messages dropped, in percent",
            wire: false,
        },
        ParamSpec {
            name: "duplicate_percent",
            kind: ParamKind::U64 { min: 0, max: 100 },
            default: "0",
            doc: "share of kept incoming messages delivered twice, in percent",
            wire: false,
        },
    ],
    max_header_len: |_| 0,
    build: |p| Ok(Box::new(Loss::new(p))),
};

/// Drops and duplicates incoming messages at random.
#[derive(Debug)]
pub struct Loss {
    /// Probability of dropping one incoming message.
    drop_p: f64,
    /// Probability of duplicating one kept message.
    dup_p: f64,
    /// Messages passed up.
    passed: u64,
    /// Messages dropped on purpose.
    dropped: u64,
    /// Extra copies passed up.
    duplicated: u64,
}

impl Loss {
    /// A layer with the given parameters.
    pub fn new(p: &Params) -> Self {
        Loss { drop_p: p.u64("percent") as f64 / 100.0, dup_p: p.u64("duplicate_percent") as f64 / 100.0, passed: 0, dropped: 0, duplicated: 0 }
    }
}

impl Layer for Loss {
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        let from = match &ev {
            Up::Cast { from, .. } | Up::Send { from, .. } => *from,
            _ => return cx.up(ev),
        };
        if from == cx.local() {
            return cx.up(ev);
        }
        if cx.rng().chance(self.drop_p) {
            self.dropped += 1;
            return;
        }
        self.passed += 1;
        if cx.rng().chance(self.dup_p) {
            self.duplicated += 1;
            cx.up(ev.clone());
        }
        cx.up(ev);
    }

    fn stats(&self, out: &mut Stats) {
        out.add("passed", self.passed).add("injected_drops", self.dropped).add("injected_duplicates", self.duplicated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use strata_stack::harness::{LayerHarness, Out};
    use strata_stack::{MemberId, Msg, View};

    fn harness(percent: &str, dup: &str) -> LayerHarness {
        let mut p = Params::defaults(LOSS.params).unwrap();
        p.set("percent", strata_stack::ParamValue::parse(LOSS.params[0].kind, percent).unwrap());
        p.set("duplicate_percent", strata_stack::ParamValue::parse(LOSS.params[1].kind, dup).unwrap());
        let view = View::initial(vec![MemberId::sim(0), MemberId::sim(1)]).unwrap();
        LayerHarness::new(Loss::new(&p), MemberId::sim(0), view)
    }

    fn from(m: u16) -> Up {
        Up::Cast { from: MemberId::sim(m), msg: Msg::new(Bytes::from_static(b"x")) }
    }

    #[test]
    fn drops_about_the_configured_share_but_never_own_messages() {
        let mut h = harness("30", "0");
        let kept: usize = (0..10_000).map(|_| h.up(from(1)).len()).sum();
        assert!((6_500..7_500).contains(&kept), "kept {kept} of 10000 at 30% loss");
        assert!((0..1000).all(|_| h.up(from(0)) == vec![Out::Up(from(0))]));
        assert_eq!(h.stats().get("injected_drops"), Some(10_000 - kept as u64));
    }

    #[test]
    fn duplicates_when_asked() {
        let mut h = harness("0", "100");
        assert_eq!(h.up(from(1)), vec![Out::Up(from(1)), Out::Up(from(1))]);
    }
}
