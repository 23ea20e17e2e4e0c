//! The properties of the `FRAG:NAK` stack, checked on random simulated runs.
//!
//! With 2..=8 members, up to 30% loss, duplication, reordering and payloads
//! of 1 B..=64 KiB, every member delivers every cast of every member exactly
//! once, in each sender's order, intact; and after the quiet period the
//! retransmission, out-of-order and reassembly buffers are empty. With
//! crashes and partitions, the safety properties still hold. A third of the
//! scenarios route casts along a tree (`tree=K`, as the TCP tree transport
//! does; `Ranges::trees`).
//!
//! `STRATA_SIM_CASES` sets how many random scenarios each property runs;
//! a failure prints `STRATA_SIM_REPLAY='<scenario>'`, and running this file
//! with that variable set replays the scenario (see docs/simulator.md).

mod sim_support;

use sim_support::{Checks, Property};
use std::time::Instant as WallClock;
use strata_stack::Rng;
use strata_transport::sim::{self, check, Ranges, Scenario};

const STACK: &str = "FRAG:NAK";
/// Cases per property when `STRATA_SIM_CASES` is unset: small enough for
/// every sim test to finish well within a minute on two cores.
const DEFAULT_CASES: u64 = 100;

/// Shrink rounds after a failure.
const MAX_SHRINK_ROUNDS: u32 = 40;

fn registry() -> strata_stack::Registry {
    strata_layers::builtin()
}

/// Every check of a reliable FIFO stack, on scenarios drawn by `generate`.
fn property(name: &'static str, generate: fn(&mut Rng) -> Scenario) -> Property {
    Property::new(name, DEFAULT_CASES, MAX_SHRINK_ROUNDS, generate, |s| sim::run_checked(&registry(), s, check::RELIABLE_FIFO).map(drop))
}

fn without_faults(rng: &mut Rng) -> Scenario {
    Scenario::generate(rng, &Ranges { faults: false, trees: true, ..Ranges::new(STACK) })
}

fn with_faults(rng: &mut Rng) -> Scenario {
    Scenario::generate(rng, &Ranges { faults: true, trees: true, ..Ranges::new(STACK) })
}

#[test]
fn frag_nak_delivers_every_cast_once_in_order_intact_and_drains_buffers() {
    property("frag_nak (no faults)", without_faults).check();
}

#[test]
fn frag_nak_stays_safe_under_crashes_and_partitions() {
    property("frag_nak (crashes, partitions)", with_faults).check();
}

/// Hand-picked corners, run every time: the largest payload under heavy
/// loss, many members with tiny payloads, sizes around a fragment, bursts.
#[test]
fn frag_nak_corner_scenarios() {
    let lines = [
        "seed=11 members=2 stack=FRAG:NAK loss=0.3 dup=0.1 reorder=0.2 delay_us=100..2000 casts=4 size=65536..65536 interval_us=500 quiet_ms=5000 faults=none",
        "seed=12 members=8 stack=FRAG:NAK loss=0.3 dup=0.1 reorder=0.2 delay_us=20..500 casts=20 size=1..16 interval_us=200 quiet_ms=5000 faults=none",
        "seed=13 members=3 stack=FRAG:NAK loss=0.1 dup=0.05 reorder=0.1 delay_us=100..1000 casts=30 size=1000..3000 interval_us=300 quiet_ms=5000 faults=none",
        "seed=14 members=4 stack=FRAG:NAK loss=0.2 dup=0 reorder=0 delay_us=100..100 casts=25 size=1..4096 interval_us=0 quiet_ms=5000 faults=none",
        "seed=15 members=5 stack=FRAG:NAK loss=0 dup=0 reorder=0 delay_us=50..400 casts=10 size=1..65536 interval_us=1000 quiet_ms=5000 faults=none",
        "seed=16 members=1 stack=FRAG:NAK casts=10 size=1..65536 quiet_ms=1000",
    ];
    let mut failures = Vec::new();
    for line in lines {
        let s: Scenario = line.parse().unwrap();
        let started = WallClock::now();
        match sim::run_checked(&registry(), &s, check::RELIABLE_FIFO) {
            Ok(o) => eprintln!("ok in {:.2?}: {line}\n    {}", started.elapsed(), o.summary()),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{} corner scenarios failed:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn frag_nak_runs_replay_byte_for_byte() {
    let s: Scenario = "seed=21 members=4 stack=FRAG:NAK loss=0.25 dup=0.1 reorder=0.2 delay_us=50..3000 casts=15 size=1..65536 interval_us=400 quiet_ms=3000 \
                       faults=partition(0.1|2.3)@3ms,heal@9ms"
        .parse()
        .unwrap();
    let a = sim::run(&registry(), &s).unwrap();
    let b = sim::run(&registry(), &s).unwrap();
    assert!(a.net.transmits > 0);
    assert_eq!(a.digest, b.digest, "same scenario, different runs:\n{}\n{}", a.summary(), b.summary());
    for (x, y) in a.members.iter().zip(&b.members) {
        assert_eq!(x.log, y.log);
        assert_eq!(x.stats, y.stats);
    }
}

/// Replays the scenario in `STRATA_SIM_REPLAY` with the built-in layers and
/// every property check; when the variable is unset there is nothing to
/// replay and the test passes after saying so.
#[test]
fn replay_from_env_if_set() {
    sim_support::replay_from_env(Checks::These(check::RELIABLE_FIFO), |_| Ok(()));
}

/// The shared property runner reports a failing scenario by its replay line.
#[test]
#[should_panic(expected = "STRATA_SIM_REPLAY='seed=")]
fn a_failing_property_names_its_scenario() {
    Property::new("always fails", 2, 1, without_faults, |_| Err("judged wrong".into())).check();
}
