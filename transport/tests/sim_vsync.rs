//! The properties of the `FRAG:NAK:VSYNC` stack, checked on random simulated
//! runs and on named scenarios.
//!
//! With 2..=8 members, up to 20% loss, crashes of fewer than half the
//! members (often the first coordinator, sometimes a second one while the
//! group handles the first), members joining during the traffic, leaving,
//! and a minority partitioned off and healed, the run satisfies
//! `check::VIRTUAL_SYNCHRONY`: integrity, no duplication, no creation,
//! FIFO, view agreement, virtual synchrony (members moving from one view to
//! the same next one know the same messages; state transfer replaces a
//! joiner's knowledge) and liveness (every live member in one primary view
//! of exactly the live members, knowing the same messages, every live
//! member's cast among them) wherever a quorum of the last primary view
//! survives (see `check::vsync_liveness`). A third of the scenarios route
//! casts along a tree as the TCP tree transport does (`tree=K`,
//! `Ranges::trees`), where the members' transports mark lost members
//! unreachable, route around them and report them as suspicions; with a
//! partition (over a tree or not) liveness is checked apart and failures
//! listed (`sim_support::liveness_apart`: VSYNC may lose its primary to
//! fragmentation, a known limitation).
//!
//! The tests at the end build `Outcome`s by hand and show that each
//! membership check catches the violation it exists for.
//!
//! `STRATA_SIM_CASES` sets how many random scenarios the property runs; a
//! failure prints `STRATA_SIM_REPLAY='<scenario>'`, and running this file
//! with that variable set replays the scenario and prints every member's
//! timeline (see docs/simulator.md).

mod sim_support;

use sim_support::{Checks, Property};
use std::sync::atomic::{AtomicU64, Ordering};
use strata_stack::Rng;
use strata_transport::sim::{self, check, Entry, Outcome, Ranges, Scenario};

const STACK: &str = "FRAG:NAK:VSYNC";
/// The same with `merge=true`: minorities keep working and views merge on
/// heal. A quarter of the generated scenarios use it.
const MERGE_STACK: &str = "FRAG:NAK:VSYNC(merge=true)";
/// Cases when `STRATA_SIM_CASES` is unset: a run takes about 6 ms in the
/// test profile (about 70 ms before the simulator parked refused casters),
/// so the property takes a couple of seconds when it passes.
const DEFAULT_CASES: u64 = 200;
/// Shrink rounds after a failure (each round runs up to ~20 candidates).
const MAX_SHRINK_ROUNDS: u32 = 25;

fn registry() -> strata_stack::Registry {
    strata_layers::builtin()
}

/// Casts of departed senders that NAK relayed during flushes, over every
/// passing case: the property must exercise that path, not just pass.
static RELAYED: AtomicU64 = AtomicU64::new(0);

fn generate(rng: &mut Rng) -> Scenario {
    let stack = if rng.below(4) == 0 { MERGE_STACK } else { STACK };
    Scenario::generate(&mut Rng::new(rng.next_u64()), &Ranges::vsync(stack))
}

fn judge(s: &Scenario) -> Result<(), String> {
    let o = sim_support::run_checked_listing(s, check::VIRTUAL_SYNCHRONY)?;
    let recovered: u64 = o.members.iter().filter_map(|m| m.counter("NAK", "recovered")).sum();
    RELAYED.fetch_add(recovered, Ordering::Relaxed);
    Ok(())
}

#[test]
fn merge_mode_minority_keeps_working_and_merges_on_heal() {
    let o = run_named(
        "merge",
        "seed=2 members=5 stack=FRAG:NAK:VSYNC(merge=true) loss=0.05 delay_us=100..1000 casts=40 size=1..4000 interval_us=50000 quiet_ms=10000 \
         faults=partition(0.1.2|3.4)@1300ms,heal@4000ms",
    );
    // The minority installed a non-primary view and delivered in it.
    let minority = &o.members[3];
    let epochs = check::epochs(&o, minority);
    let np = epochs.iter().position(|e| !e.view.is_primary()).expect("a non-primary view at the minority");
    let delivered_in_np =
        minority.log.iter().filter(|e| matches!(e, Entry::Deliver(d) if d.at >= epochs[np].at && epochs.get(np + 1).is_none_or(|n| d.at < n.at))).count();
    assert!(delivered_in_np > 0, "with merge=true the minority keeps delivering");
    let last = minority.last_view().expect("views");
    assert!(last.is_primary() && last.len() == 5, "merged back into one view: {last:?}");
}

#[test]
fn vsync_is_virtually_synchronous_and_live_under_crashes_joins_leaves_and_partitions() {
    let property = Property::new("vsync", DEFAULT_CASES, MAX_SHRINK_ROUNDS, generate, judge);
    property.check();
    let (cases, relayed) = (property.cases(), RELAYED.load(Ordering::Relaxed));
    eprintln!("vsync: {relayed} casts of departed senders relayed");
    if cases >= 100 {
        assert!(relayed > 0, "no scenario made a member recover a departed sender's casts from a holder");
    }
}

/// Runs `line` with every check; on failure panics with the replay line,
/// the failure and every member's timeline.
fn run_named(name: &str, line: &str) -> Outcome {
    sim_support::run_named(name, line, Checks::These(check::VIRTUAL_SYNCHRONY), false)
}

/// Member `i`'s log.
fn log(o: &Outcome, i: usize) -> &sim::MemberLog {
    &o.members[i]
}

/// When member `i` installed its last view.
fn last_view_at(o: &Outcome, i: usize) -> strata_stack::Instant {
    log(o, i).views().last().map(|(at, _)| at).expect("installed a view")
}

#[test]
fn coordinator_crash_mid_traffic() {
    let o = run_named(
        "coordinator crash",
        "seed=101 members=5 stack=FRAG:NAK:VSYNC loss=0.05 delay_us=100..1000 casts=40 size=1..4000 interval_us=10000 quiet_ms=10000 faults=crash(0)@1300ms",
    );
    let v = log(&o, 1).last_view().unwrap();
    assert!(!v.contains(&sim::member(0)) && v.len() == 4 && v.is_primary(), "{v:?}");
    assert_eq!(v.coordinator(), sim::member(1), "the next member takes over: {v:?}");
}

#[test]
fn over_a_tree_a_crash_is_suspected_by_its_neighbour_at_once() {
    // Member 6 is a leaf of the binary tree of 7 (its parent is 2). Its
    // parent's transport loses the connection one network delay after the
    // crash and suspects it, so the view change starts long before VSYNC's
    // own suspicion timeout (1.5 s) would start it. (A crashed *inner*
    // member cuts its subtree off from the casts the view change needs:
    // see "Tree routing" in docs/simulator.md.)
    let line = "seed=106 members=7 stack=FRAG:NAK:VSYNC loss=0.05 delay_us=100..1000 casts=40 size=1..4000 interval_us=10000 quiet_ms=10000 \
                faults=crash(6)@1300ms";
    let crash = strata_stack::Instant::ZERO + std::time::Duration::from_millis(1300);
    let tree = run_named("leaf crash over a tree", &format!("{line} tree=2"));
    assert_eq!(tree.net.suspicions, 1, "{}", tree.summary());
    let suspected_at = log(&tree, 2).log.iter().find(|e| matches!(e, Entry::Other { what, .. } if what.contains("Suspect"))).map(Entry::at);
    assert!(suspected_at.is_some_and(|t| t > crash && t <= crash + std::time::Duration::from_millis(1)), "{suspected_at:?}");
    for i in 0..6 {
        let removed = log(&tree, i).views().find(|(_, v)| !v.contains(&sim::member(6))).map(|(at, _)| at);
        assert!(removed.is_some_and(|t| t < crash + std::time::Duration::from_millis(1000)), "member {i}: {removed:?}\n{}", tree.timeline(false));
        assert!(log(&tree, i).last_view().is_some_and(|v| v.len() == 6 && v.is_primary()));
    }
    assert_eq!(run_named("leaf crash over UDP", line).net.suspicions, 0);
}

#[test]
fn second_crash_during_the_view_change() {
    // Member 0 (the coordinator) crashes; about 1.5 s later member 1
    // suspects it and starts the flush; member 1 crashes during that flush,
    // and member 2 must finish the change.
    let o = run_named(
        "second crash during the view change",
        "seed=101 members=5 stack=FRAG:NAK:VSYNC loss=0.05 delay_us=100..1000 casts=40 size=1..4000 interval_us=10000 quiet_ms=10000 \
         faults=crash(0)@1300ms,crash(1)@2801ms",
    );
    let m1 = log(&o, 1);
    let crashed = m1.crashed_at.unwrap();
    let last_block = m1.log.iter().rev().find(|e| matches!(e, Entry::Block { .. })).map(Entry::at);
    let last_view = m1.views().last().map(|(at, _)| at).unwrap();
    assert!(
        last_block.is_some_and(|b| b > last_view && b <= crashed),
        "member 1 should crash during its flush (after a Block, before the next view); adjust the crash time:\n{}",
        o.timeline(false)
    );
    let v = log(&o, 2).last_view().unwrap();
    assert!(v.len() == 3 && v.coordinator() == sim::member(2) && v.is_primary(), "{v:?}");
}

#[test]
fn join_during_traffic_transfers_state() {
    let o = run_named(
        "join during traffic",
        "seed=103 members=4 stack=FRAG:NAK:VSYNC loss=0.05 delay_us=100..1000 casts=40 size=1..4000 interval_us=10000 quiet_ms=10000 faults=join(3)@1250ms",
    );
    let joiner = log(&o, 3);
    assert!(joiner.log.iter().all(|e| e.at() >= joiner.started_at.unwrap()));
    // Its first event is its first view, then the state, then deliveries.
    assert!(matches!(joiner.log[0], Entry::View { .. }) && matches!(joiner.log[1], Entry::StateBegin { .. }), "{:?}", &joiner.log[..2]);
    let Some(Entry::StateLoaded { known, chunks, .. }) = joiner.log.iter().find(|e| matches!(e, Entry::StateLoaded { .. })) else {
        panic!("the joiner never loaded state:\n{}", o.timeline(false))
    };
    assert!(*chunks >= 2 && !known.is_empty(), "the state should need several chunks: {chunks} chunks, {} ids", known.len());
    let requests: Vec<usize> = o
        .members
        .iter()
        .flat_map(|m| m.log.iter())
        .filter_map(|e| match e {
            Entry::StateRequest { joiners, known, .. } if joiners.contains(&sim::member(3)) => Some(*known),
            _ => None,
        })
        .collect();
    assert_eq!(requests, vec![known.len()], "one old member provided the state the joiner loaded");
    assert_eq!(o.members.iter().filter(|m| m.knowledge().len() == 160).count(), 4, "everyone knows all 4x40 casts");
}

#[test]
fn clean_leave() {
    let o = run_named(
        "clean leave",
        "seed=104 members=4 stack=FRAG:NAK:VSYNC loss=0.05 delay_us=100..1000 casts=40 size=1..4000 interval_us=10000 quiet_ms=10000 faults=leave(2)@1300ms",
    );
    let leaver = log(&o, 2);
    let left = leaver.left_at.expect("member 2 left");
    assert!(matches!(leaver.log.last(), Some(Entry::Left { .. })), "Left is the leaver's last event");
    assert!(leaver.casts.len() < 40 && leaver.casts.iter().all(|c| c.at < left));
    for i in [0, 1, 3] {
        let v = log(&o, i).last_view().unwrap();
        assert!(!v.contains(&sim::member(2)) && v.len() == 3, "{v:?}");
        // The leaver's casts were flushed before it went.
        let known = log(&o, i).knowledge();
        assert!(leaver.casts.iter().all(|c| known.contains(&(leaver.name.clone(), c.k))), "member {i} lacks some of the leaver's casts");
    }
}

#[test]
fn partition_3_2_heals_and_the_minority_rejoins() {
    let o = run_named(
        "partition 3|2 then heal",
        "seed=105 members=5 stack=FRAG:NAK:VSYNC loss=0.05 delay_us=100..1000 casts=40 size=1..4000 interval_us=10000 quiet_ms=10000 \
         faults=partition(0.1.2|3.4)@1300ms,heal@4000ms",
    );
    for i in [3, 4] {
        let m = log(&o, i);
        assert!(m.views().any(|(_, v)| !v.is_primary()), "member {i} never installed a non-primary view:\n{}", o.timeline(false));
        assert!(m.log.iter().any(|e| matches!(e, Entry::StateLoaded { at, .. } if *at > strata_stack::Instant::ZERO + std::time::Duration::from_millis(4000))));
        assert_eq!(log(&o, i).last_view(), log(&o, 0).last_view());
    }
    // Nothing is delivered in a non-primary view.
    for m in &o.members {
        let mut primary = true;
        for e in &m.log {
            match e {
                Entry::View { view, .. } => primary = view.is_primary(),
                Entry::Deliver(d) => assert!(primary, "{} delivered {:?} at {:?} in a non-primary view", m.name, d.id, d.at),
                _ => {}
            }
        }
    }
}

#[test]
fn four_members_started_together_form_one_group() {
    let o = run_named(
        "four started together",
        "seed=106 members=4 stack=FRAG:NAK:VSYNC loss=0.05 delay_us=100..1000 casts=20 size=1..4000 interval_us=10000 quiet_ms=10000 faults=none",
    );
    let all = log(&o, 0).last_view().unwrap().clone();
    assert_eq!(all.len(), 4);
    for i in 1..4 {
        let views: Vec<_> = log(&o, i).views().map(|(_, v)| v.id()).collect();
        assert_eq!(views, vec![all.id()], "member {i} joined the one group straight away");
    }
    assert!(last_view_at(&o, 3) < strata_stack::Instant::ZERO + std::time::Duration::from_millis(1500));
}

#[test]
fn vsync_runs_replay_byte_for_byte() {
    let s: Scenario = "seed=107 members=5 stack=FRAG:NAK:VSYNC loss=0.1 dup=0.02 reorder=0.05 delay_us=100..2000 casts=25 size=1..8192 interval_us=8000 \
                       quiet_ms=8000 faults=join(4)@1200ms,crash(0)@1400ms,leave(2)@1500ms"
        .parse()
        .unwrap();
    let a = sim::run(&registry(), &s).unwrap();
    let b = sim::run(&registry(), &s).unwrap();
    assert!(a.members[4].log.iter().any(|e| matches!(e, Entry::StateLoaded { .. })), "{}", a.timeline(false));
    assert_eq!(a.digest, b.digest, "same scenario, different runs:\n{}\n{}", a.summary(), b.summary());
    for (x, y) in a.members.iter().zip(&b.members) {
        assert_eq!(x.log, y.log);
        assert_eq!((x.started_at, x.crashed_at, x.left_at), (y.started_at, y.crashed_at, y.left_at));
    }
}

/// Replays the scenario in `STRATA_SIM_REPLAY` with `check::VIRTUAL_SYNCHRONY`
/// and prints every member's timeline (deliveries listed if
/// `STRATA_SIM_VERBOSE` is set); passes with a note when the variable is unset.
#[test]
fn replay_from_env_if_set() {
    sim_support::replay_from_env(Checks::These(check::VIRTUAL_SYNCHRONY), |_| Ok(()));
}

/// Outcomes built by hand, to show that each membership check catches the
/// violation it exists for (and passes a correct history).
mod hand_built {
    use super::*;
    use crate::sim_support::history::{self, member_log, name, payload, t};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;
    use strata_stack::codec::fnv1a64;
    use strata_stack::{Delivery, MemberId, View, ViewId};
    use strata_transport::sim::{CastRecord, Delivered, MemberLog};

    fn view(counter: u64, creator: u16, members: &[u16], primary: bool) -> Arc<View> {
        let id = ViewId { counter, creator: sim::member(creator) };
        View::with_primary(id, members.iter().map(|&i| sim::member(i)).collect(), primary).unwrap()
    }

    /// Member `i`, started at 0, whose stack accepted `casts` casts, with `log`.
    fn member(i: u16, casts: u64, log: Vec<Entry>) -> MemberLog {
        member_log(sim::member(i), i, (0..casts).map(|k| 1000 + k), log)
    }

    fn v(ms: u64, view: &Arc<View>) -> Entry {
        Entry::View { at: t(ms), view: view.clone() }
    }

    /// Member `from`'s cast `k`, delivered at `ms`.
    fn d(ms: u64, from: u16, k: u64) -> Entry {
        let p = payload(from, k);
        Entry::Deliver(Delivered {
            at: t(ms),
            from: sim::member(from),
            kind: Delivery::Cast,
            id: Some((name(from), k)),
            len: p.len(),
            hash: fnv1a64(&p),
            intact: true,
        })
    }

    fn loaded(ms: u64, ids: &[(u16, u64)]) -> Entry {
        let known: BTreeSet<sim::MsgId> = ids.iter().map(|&(i, k)| (name(i), k)).collect();
        Entry::StateLoaded { at: t(ms), chunks: 1, bytes: 0, known: Arc::new(known) }
    }

    fn outcome(members: Vec<MemberLog>) -> Outcome {
        history::outcome(STACK, members, 2000, 12_000)
    }

    /// A correct history: 0 and 1 form V2 = {0,1}, both cast one message;
    /// 2 joins in V3 and loads the state; all end in V3.
    fn good() -> Outcome {
        let v1 = view(1, 0, &[0], true);
        let v2 = view(2, 0, &[0, 1], true);
        let v3 = view(3, 0, &[0, 1, 2], true);
        outcome(vec![
            member(
                0,
                1,
                vec![
                    v(1000, &v1),
                    v(1000, &v2),
                    d(1001, 0, 0),
                    d(1002, 1, 0),
                    Entry::StateRequest { at: t(1500), token: 0, joiners: vec![sim::member(2)], known: 2 },
                    v(1500, &v3),
                ],
            ),
            member(1, 1, vec![v(1000, &v2), Entry::StateBegin { at: t(1000) }, loaded(1000, &[]), d(1002, 0, 0), d(1003, 1, 0), v(1500, &v3)]),
            member(2, 0, vec![v(1500, &v3), Entry::StateBegin { at: t(1500) }, loaded(1510, &[(0, 0), (1, 0)])]),
        ])
    }

    fn fails(o: &Outcome, check: check::Check, needles: &[&str]) {
        let e = (check.run)(o).expect_err(check.name);
        for n in needles {
            assert!(e.contains(n), "{} failure lacks `{n}`: {e}", check.name);
        }
        assert!(check::run(o, check::VIRTUAL_SYNCHRONY).is_err());
    }

    #[test]
    fn a_correct_history_passes_every_check() {
        check::run(&good(), check::VIRTUAL_SYNCHRONY).unwrap();
        let names: Vec<&str> = check::VIRTUAL_SYNCHRONY.iter().map(|c| c.name).collect();
        assert_eq!(names, ["integrity", "no duplication", "no creation", "fifo", "view agreement", "virtual synchrony", "vsync liveness"]);
    }

    #[test]
    fn view_agreement_catches_two_versions_of_one_view() {
        let mut o = good();
        // Member 1 installs view 2@0 with a different member list.
        o.members[1].log[0] = v(1000, &view(2, 0, &[1, 0], true));
        fails(&o, check::VIEW_AGREEMENT, &["view 2@10.0.0.0:7000", "10.0.0.0:7000", "10.0.0.1:7000", "installed at 1.000000000s"]);
        // ... or the same list, but non-primary.
        let mut o = good();
        o.members[1].log[0] = v(1000, &view(2, 0, &[0, 1], false));
        fails(&o, check::VIEW_AGREEMENT, &["non-primary"]);
    }

    #[test]
    fn view_agreement_catches_counters_that_do_not_increase() {
        let mut o = good();
        let again = view(2, 0, &[0, 1], true);
        o.members[0].log.push(v(1600, &again));
        fails(&o, check::VIEW_AGREEMENT, &["10.0.0.0:7000 installed view 2@10.0.0.0:7000", "at 1.600000000s", "strictly increase"]);
    }

    #[test]
    fn view_agreement_catches_a_skipped_view_but_not_a_rejoin() {
        // Member 1 goes from 2@0 to 4@0, skipping 3@0 that it belongs to.
        let mut o = good();
        let v4 = view(4, 0, &[0, 1, 2], true);
        o.members[1].log[5] = v(1500, &v4);
        o.members[0].log.push(v(1700, &v4));
        o.members[2].log.push(v(1700, &v4));
        fails(&o, check::VIEW_AGREEMENT, &["10.0.0.0:7000 installed view 2@10.0.0.0:7000 then 3@10.0.0.0:7000", "but 10.0.0.1:7000", "then 4@10.0.0.0:7000"]);
        // A member that is not in the skipped view is not bound by it: 1
        // removed from 3@0 = {0,2} rejoins in 4@0 with state transfer.
        let v1 = view(1, 0, &[0], true);
        let v2 = view(2, 0, &[0, 1, 2], true);
        let v3 = view(3, 0, &[0, 2], true);
        let o = outcome(vec![
            member(0, 0, vec![v(1000, &v1), v(1000, &v2), v(1500, &v3), v(1700, &v4)]),
            member(
                1,
                0,
                vec![v(1000, &v2), Entry::StateBegin { at: t(1000) }, loaded(1000, &[]), v(1700, &v4), Entry::StateBegin { at: t(1700) }, loaded(1701, &[])],
            ),
            member(2, 0, vec![v(1000, &v2), Entry::StateBegin { at: t(1000) }, loaded(1000, &[]), v(1500, &v3), v(1700, &v4)]),
        ]);
        check::run(&o, check::VIRTUAL_SYNCHRONY).unwrap();
        // And a member that *joins* 4@0 straight from 2@0 (its minority view
        // dissolved, say) is not the one moving from 2@0 to 4@0.
        let mut o = o;
        o.members[1].log.truncate(3);
        o.members[1].log.extend([v(1700, &v4), Entry::StateBegin { at: t(1700) }, loaded(1701, &[])]);
        check::view_agreement::check(&o).unwrap();
    }

    #[test]
    fn virtual_synchrony_catches_different_knowledge_across_a_change() {
        // Member 1 misses 0's cast in 2@0 yet moves to 3@0 with member 0.
        let mut o = good();
        o.members[1].log.remove(3);
        fails(
            &o,
            check::VIRTUAL_SYNCHRONY_CHECK,
            &["10.0.0.0:7000 and 10.0.0.1:7000 both went from view 2@10.0.0.0:7000 to view 3@10.0.0.0:7000", "only 10.0.0.0:7000 knew 10.0.0.0:7000:0"],
        );
    }

    #[test]
    fn virtual_synchrony_skips_a_member_still_loading_and_replaces_knowledge_on_load() {
        // Member 1 never finished loading in 2@0: its knowledge there is not compared.
        let mut o = good();
        o.members[1].log.remove(2);
        o.members[1].log.remove(2);
        check::virtual_synchrony::check(&o).unwrap();
        // A completed load replaces knowledge: member 1 loads {1:0} (not
        // what 0 knows) and misses 0's cast; now the sets differ.
        let mut o = good();
        o.members[1].log[2] = loaded(1000, &[(1, 5)]);
        fails(&o, check::VIRTUAL_SYNCHRONY_CHECK, &["only 10.0.0.1:7000 knew 10.0.0.1:7000:5"]);
    }

    #[test]
    fn virtual_synchrony_catches_a_message_delivered_in_two_views() {
        // Member 0 delivers its cast in 1@0; member 1, which joins 2@0 (and
        // loads a state without it), delivers it again in 2@0.
        let v1 = view(1, 0, &[0], true);
        let v2 = view(2, 0, &[0, 1], true);
        let o = outcome(vec![
            member(0, 1, vec![v(1000, &v1), d(1001, 0, 0), v(1500, &v2)]),
            member(1, 0, vec![v(1500, &v2), Entry::StateBegin { at: t(1500) }, loaded(1501, &[]), d(1600, 0, 0)]),
        ]);
        fails(
            &o,
            check::VIRTUAL_SYNCHRONY_CHECK,
            &[
                "10.0.0.0:7000:0 was delivered by 10.0.0.0:7000 at 1.001000000s in view 1@10.0.0.0:7000",
                "by 10.0.0.1:7000 at 1.600000000s in view 2@10.0.0.0:7000",
            ],
        );
        // Delivered outside any view, too.
        let mut o = o;
        o.members[1].log = vec![d(1600, 0, 0)];
        fails(&o, check::VIRTUAL_SYNCHRONY_CHECK, &["outside any view"]);
    }

    #[test]
    fn liveness_catches_members_that_end_apart() {
        let mut o = good();
        o.members[2].log.push(v(1800, &view(4, 2, &[2], true)));
        fails(&o, check::VSYNC_LIVENESS, &["10.0.0.2:7000 ends in view 4@10.0.0.2:7000", "but 10.0.0.0:7000 ends in view 3@10.0.0.0:7000"]);
    }

    #[test]
    fn liveness_catches_a_final_view_that_is_not_the_live_members() {
        let mut o = good();
        o.members[2].crashed_at = Some(t(1900));
        fails(&o, check::VSYNC_LIVENESS, &["the live members end in view 3@10.0.0.0:7000", "live members are [10.0.0.0:7000,10.0.0.1:7000]"]);
    }

    #[test]
    fn liveness_catches_different_knowledge_and_a_lost_cast() {
        let mut o = good();
        o.members[2].log[2] = loaded(1510, &[(0, 0)]);
        fails(
            &o,
            check::VSYNC_LIVENESS,
            &["10.0.0.0:7000 and 10.0.0.2:7000 end in view 3@10.0.0.0:7000 knowing different messages", "only 10.0.0.0:7000 knows 10.0.0.1:7000:0"],
        );
        // Member 1's stack accepted a second cast that nobody delivered.
        let mut o = good();
        let p = payload(1, 1);
        o.members[1].casts.push(CastRecord { k: 1, at: t(1400), len: p.len(), hash: fnv1a64(&p) });
        fails(&o, check::VSYNC_LIVENESS, &["1 casts of live 10.0.0.1:7000 are not known", "10.0.0.1:7000:1", "accepted at 1.400000000s"]);
    }

    #[test]
    fn liveness_catches_a_member_still_loading_and_a_leave_that_never_ends() {
        let mut o = good();
        o.members[2].log.truncate(2);
        fails(&o, check::VSYNC_LIVENESS, &["10.0.0.2:7000 is still loading state at the end", "StateBegin at 1.500000000s"]);
        let mut o = good();
        o.scenario.faults = vec![sim::Fault { at: Duration::from_millis(1800), kind: sim::FaultKind::Leave(2) }];
        fails(&o, check::VSYNC_LIVENESS, &["10.0.0.2:7000 was told to leave at 1.8s but never got Left"]);
        // Once it left (and the others installed a view without it), all is well.
        o.members[2].left_at = Some(t(1900));
        o.members[2].log.push(Entry::Left { at: t(1900) });
        let v4 = view(4, 0, &[0, 1], true);
        o.members[0].log.push(v(1900, &v4));
        o.members[1].log.push(v(1900, &v4));
        check::run(&o, check::VIRTUAL_SYNCHRONY).unwrap();
    }

    #[test]
    fn liveness_is_required_when_a_quorum_of_the_last_primary_view_survives() {
        // Members 0 and 1 end in non-primary views of their own, knowing
        // nothing alike, though both are live and no fault split them.
        let v1 = view(1, 0, &[0, 1], true);
        let apart = |i: u16| v(3000, &view(2, i, &[i], false));
        let o = outcome(vec![member(0, 1, vec![v(1000, &v1), d(1001, 0, 0), apart(0)]), member(1, 1, vec![v(1000, &v1), d(1001, 1, 0), apart(1)])]);
        fails(
            &o,
            check::VSYNC_LIVENESS,
            &[
                "no live member ends in a primary view, though the live members hold a quorum of the last primary view 1@10.0.0.0:7000",
                "went on 12s after its last fault",
                "10.0.0.1:7000 in 2@10.0.0.1:7000 [10.0.0.1:7000] non-primary",
            ],
        );
        // Not required when a partition left no side a majority ...
        let mut split = o.clone();
        split.scenario.faults = vec![
            sim::Fault { at: Duration::from_millis(2000), kind: sim::FaultKind::Partition(vec![vec![0], vec![1]]) },
            sim::Fault { at: Duration::from_millis(2100), kind: sim::FaultKind::Heal },
        ];
        check::vsync_liveness::check(&split).unwrap();
        // ... when the run ended sooner than SETTLE_AFTER_FAULTS after its last fault ...
        let mut soon = o.clone();
        soon.scenario.faults = vec![sim::Fault { at: Duration::from_millis(3000), kind: sim::FaultKind::Heal }];
        assert!(soon.end < strata_stack::Instant::ZERO + Duration::from_millis(3000) + check::vsync_liveness::SETTLE_AFTER_FAULTS);
        check::vsync_liveness::check(&soon).unwrap();
        soon.scenario.faults[0].at = Duration::from_millis(2000);
        assert!(check::vsync_liveness::check(&soon).is_err());
        // ... or when crashes took the quorum: 2, 3 and 4 of {0..4} crashed.
        let v1 = view(1, 0, &[0, 1, 2, 3, 4], true);
        let mut members = vec![member(0, 1, vec![v(1000, &v1), d(1001, 0, 0), apart(0)]), member(1, 1, vec![v(1000, &v1), d(1001, 1, 0), apart(1)])];
        for i in 2..5 {
            let mut m = member(i, 0, vec![v(1000, &v1)]);
            m.crashed_at = Some(t(2000));
            members.push(m);
        }
        let mut o = outcome(members);
        check::vsync_liveness::check(&o).unwrap();
        // (With one of them alive, {0, 1, 2} is a majority again; 2 ends
        // in the primary view, so the earlier condition applies too.)
        o.members[2].crashed_at = None;
        fails(&o, check::VSYNC_LIVENESS, &["but 10.0.0.2:7000 ends in view 1@10.0.0.0:7000"]);
        // Nor while a partition holds at the end: member 2 is cut off for good.
        let mut o = good();
        o.members[2].log.push(v(3000, &view(4, 2, &[2], false)));
        o.scenario.faults = vec![sim::Fault { at: Duration::from_millis(1600), kind: sim::FaultKind::Partition(vec![vec![0, 1], vec![2]]) }];
        check::vsync_liveness::check(&o).unwrap();
        o.scenario.faults.push(sim::Fault { at: Duration::from_millis(1700), kind: sim::FaultKind::Heal });
        fails(&o, check::VSYNC_LIVENESS, &["10.0.0.2:7000 ends in view 4@10.0.0.2:7000 [10.0.0.2:7000] non-primary"]);
        // ... and a truncated run where some member ends primary fails.
        let mut o = good();
        o.truncated = Some("stuck".into());
        fails(&o, check::VSYNC_LIVENESS, &["cut short: stuck"]);
        let _ = MemberId::sim(0);
    }
}
