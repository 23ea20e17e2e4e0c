//! The properties of the SAFE stacks (`FRAG:NAK:VSYNC:SAFE` and
//! `FRAG:NAK:CAUSAL:VSYNC:SAFE`), checked on random simulated runs and on
//! named scenarios, with `check::for_stack` (`check::SAFE_CHECKS`, with
//! causal order for the CAUSAL stack): uniform agreement and one order of
//! the durable deliveries, replay after total failures, and view agreement,
//! virtual synchrony, total (and causal) order and liveness per era,
//! plain (`Order::Fifo`) casts left out of the orders.
//!
//! Two families of random scenarios, each with `acceptors` in 1..=5 and
//! CAUSAL or not:
//!
//! * *crashes*: `Ranges::safe`: 2..=7 members, loss up to 20%, crashes of
//!   fewer than half the members at random times (often the coordinator,
//!   which leads SAFE; sometimes a second during the flush), half of them
//!   restarted 0.2–4 s later, late joiners, a leave, a minority partitioned
//!   off and healed, up to a fifth of the casts FIFO-only; half the runs
//!   with `log_dir=/safe` (each member's log on its own simulated disk);
//! * *total failure*: the same without leaves and partitions, with
//!   `log_dir=/safe`, ending with every member crashing (together or within
//!   20 ms) and restarting from its log (together or over up to 1 s), log
//!   tails lost or torn.
//!
//! A third of the scenarios of each family route casts along a tree as the
//! TCP tree transport does (`tree=K`, `Ranges::trees`); with a partition
//! (tree or not), VSYNC liveness is checked apart and failures listed
//! (`sim_support::liveness_apart`).
//!
//! Then named scenarios (the leader crashes mid-stream; two acceptors of
//! three crash together in a group of five; a total failure right after a
//! burst; a total failure with torn log tails), tests of the simulator's
//! disks, restarts and application model on a stand-in SAFE layer that
//! logs what it delivers but orders nothing itself, and tests on hand-built
//! histories showing that the uniform and replay checks pass a correct one
//! and catch each violation they exist for.
//!
//! `STRATA_SIM_CASES` sets how many random scenarios each property runs; a
//! failure prints `STRATA_SIM_REPLAY='<scenario>'`, and running
//! `replay_from_env_if_set` with that variable set replays it with the
//! checks of its stack and prints every member's timeline.

use bytes::Bytes;
mod sim_support;

use sim_support::{Checks, Property};
use strata_stack::{Context, Delivery, Down, LayerDescriptor, LogFile, MemberId, ParamKind, ParamSpec, Props, Registry, Rng, SafeTag, Stats, Up};
use strata_transport::sim::{self, check, Entry, FaultKind, Outcome, Ranges, Scenario};

/// Cases per family when `STRATA_SIM_CASES` is unset: a run takes about
/// 7 ms in the test profile, so both properties take a few seconds when they pass.
const DEFAULT_CASES: u64 = 300;
/// Shrink rounds after a failure (each round runs up to ~20 candidates).
const MAX_SHRINK_ROUNDS: u32 = 15;

/// The SAFE stack string: with CAUSAL below VSYNC or not, `acceptors`, and a log directory or not.
fn safe_stack(causal: bool, acceptors: u64, log: bool) -> String {
    format!("FRAG:NAK:{}VSYNC:SAFE(acceptors={acceptors}{})", if causal { "CAUSAL:" } else { "" }, if log { ",log_dir=/safe" } else { "" })
}

/// The scenarios of one family.
#[derive(Copy, Clone, Debug)]
enum Family {
    Crashes,
    TotalFailure,
}

/// A random scenario of `family`, decided by `rng`.
fn generate(family: Family, rng: &mut Rng) -> Scenario {
    let causal = rng.below(2) == 0;
    let acceptors = rng.between(1, 5);
    match family {
        Family::Crashes => {
            let stack = safe_stack(causal, acceptors, rng.below(2) == 0);
            Scenario::generate(rng, &Ranges { interval_us: Some((500, 10_000)), ..Ranges::safe(stack) })
        }
        Family::TotalFailure => {
            let stack = safe_stack(causal, acceptors, true);
            let r = Ranges { interval_us: Some((500, 10_000)), total_failure: true, max_leaves: 0, partitions: false, ..Ranges::safe(stack) };
            Scenario::generate(rng, &r)
        }
    }
}

/// Whether `s` stays within what SAFE promises to survive, as the
/// generator's scenarios do: a majority of the members (that started and
/// did not leave) is up at every moment, except during a total failure,
/// when the crashes that take the majority away take everyone within 20 ms;
/// and a majority is up again at the end. (Shrinking a scenario drops
/// crashes and restarts one by one, which can leave a majority down for
/// good: the group then legitimately stops.)
fn keeps_the_fault_model(s: &Scenario) -> bool {
    #[derive(Copy, Clone, PartialEq)]
    enum State {
        Out,
        Up,
        Down,
    }
    let mut state: Vec<State> = (0..s.members).map(|i| if s.join_time(i).is_some() { State::Out } else { State::Up }).collect();
    let faults = s.faults_in_order();
    let count = |state: &[State], x: State| state.iter().filter(|m| **m == x).count();
    let states: Vec<(std::time::Duration, Vec<State>)> = faults
        .iter()
        .map(|f| {
            match f.kind {
                FaultKind::Join(i) | FaultKind::Restart(i) => state[usize::from(i)] = State::Up,
                FaultKind::Crash(i) if state[usize::from(i)] == State::Up => state[usize::from(i)] = State::Down,
                FaultKind::Leave(i) => state[usize::from(i)] = State::Out,
                _ => {}
            }
            (f.at, state.clone())
        })
        .collect();
    for (n_f, f) in faults.iter().enumerate() {
        let (at, now) = &states[n_f];
        let (up, down) = (count(now, State::Up), count(now, State::Down));
        if matches!(f.kind, FaultKind::Crash(_)) && up > 0 && 2 * down >= up + down {
            let total_soon =
                states[n_f..].iter().take_while(|(t, _)| *t <= *at + std::time::Duration::from_millis(20)).any(|(_, st)| count(st, State::Up) == 0);
            if !total_soon {
                return false;
            }
        }
    }
    let (up, down) = (count(&state, State::Up), count(&state, State::Down));
    2 * down < up + down
}

/// Every check of its stack, on scenarios drawn by `generate`; shrinking
/// keeps the fault model.
fn property(name: &'static str, generate: fn(&mut Rng) -> Scenario) -> Property {
    Property {
        keep: keeps_the_fault_model,
        ..Property::new(name, DEFAULT_CASES, MAX_SHRINK_ROUNDS, generate, |s| sim_support::run_checked_listing(s, &check::for_stack(&s.stack)).map(drop))
    }
}

#[test]
fn safe_stacks_deliver_uniformly_in_one_order_under_crashes_and_restarts() {
    property("Crashes", |rng| generate(Family::Crashes, rng)).check();
}

#[test]
fn safe_stacks_replay_what_they_owe_after_a_total_failure() {
    property("TotalFailure", |rng| generate(Family::TotalFailure, rng)).check();
}

/// Runs `line` with the checks of its stack; on failure panics with the
/// replay line, the failure and every member's timeline.
fn run_named(name: &str, line: &str) -> Outcome {
    sim_support::run_named(name, line, Checks::OfStack, true)
}

/// `line` with `{stack}` replaced by a SAFE stack with three acceptors and a
/// log, with and without CAUSAL.
fn for_each_safe_stack(name: &str, line: &str, then: impl Fn(&str, &Outcome)) {
    for causal in [false, true] {
        let stack = safe_stack(causal, 3, true);
        let name = format!("{name} ({stack})");
        let o = run_named(&name, &line.replace("{stack}", &stack));
        then(&name, &o);
    }
}

/// Durable deliveries of member `i`'s last incarnation after `at`.
fn durable_after(o: &Outcome, i: usize, at: strata_stack::Instant) -> usize {
    o.members[i].deliveries().filter(|d| d.at > at && matches!(d.kind, Delivery::Safe { .. })).count()
}

#[test]
fn the_leader_crashes_mid_stream() {
    // Member 0 founds the group, so it coordinates and leads SAFE; it
    // crashes while every member casts every 5 ms.
    for_each_safe_stack(
        "leader crash",
        "seed=301 members=5 stack={stack} loss=0.05 delay_us=100..1000 casts=200 size=1..4000 interval_us=5000 quiet_ms=10000 faults=crash(0)@1600ms",
        |name, o| {
            let v = o.members[1].last_view().expect("a view");
            assert!(!v.contains(&sim::member(0)) && v.len() == 4 && v.is_primary(), "{name}: {v:?}");
            let crashed = o.members[0].crashed_at.unwrap();
            let before = o.members[0].deliveries().filter(|d| matches!(d.kind, Delivery::Safe { .. })).count();
            assert!(before > 20, "{name}: the leader delivered {before} durable messages before its crash; move the crash later");
            let after = durable_after(o, 1, crashed);
            assert!(after > 100, "{name}: the survivors go on delivering after the crash ({after} durable deliveries)");
        },
    );
}

#[test]
fn two_acceptors_of_three_crash_together_in_a_group_of_five() {
    // The acceptors are the first three members of the view (0, 1, 2): 0
    // and 1 crash at once, a majority of the acceptors, but a majority of
    // the members (2, 3, 4) survives and holds every delivered message.
    for_each_safe_stack(
        "two acceptors crash",
        "seed=302 members=5 stack={stack} loss=0.05 delay_us=100..1000 casts=300 size=1..4000 interval_us=5000 quiet_ms=10000 \
         faults=crash(0)@1600ms,crash(1)@1600ms",
        |name, o| {
            let v = o.members[2].last_view().expect("a view");
            assert!(v.len() == 3 && v.is_primary() && v.coordinator() == sim::member(2), "{name}: {v:?}");
            let after = durable_after(o, 2, o.members[0].crashed_at.unwrap());
            assert!(after > 100, "{name}: the survivors go on delivering ({after} durable deliveries after the crash)");
        },
    );
}

/// Member `i`'s replay lists, one per incarnation that got one.
fn replays(o: &Outcome, i: usize) -> Vec<usize> {
    o.members[i].log.iter().filter_map(|e| if let Entry::Replay { messages, .. } = e { Some(messages.len()) } else { None }).collect()
}

#[test]
fn a_total_failure_right_after_a_burst() {
    // Three members cast 40 messages each 2 ms apart once the group has
    // formed (at 1 s); everyone crashes just after the last delivery
    // (about 1127 ms), with done calls still pending, and restarts from its log.
    for_each_safe_stack(
        "total failure after a burst",
        "seed=303 members=3 stack={stack} loss=0.02 delay_us=100..1000 casts=40 size=1..2000 interval_us=2000 quiet_ms=10000 \
         faults=crash(0)@1128ms,crash(1)@1128ms,crash(2)@1128ms,restart(0)@1400ms,restart(1)@1410ms,restart(2)@1420ms",
        |name, o| {
            assert_eq!(o.eras().len(), 2, "{name}: one total failure");
            let lists: Vec<Vec<usize>> = (0..3).map(|i| replays(o, i)).collect();
            assert!(lists.iter().all(|l| l.len() == 2), "{name}: one replay per incarnation: {lists:?}");
            assert!(lists.iter().any(|l| l[1] > 0), "{name}: the burst left unfinished messages to replay: {lists:?}\n{}", o.timeline(false));
            let replayed = o.members.iter().flat_map(|m| m.deliveries()).filter(|d| matches!(d.kind, Delivery::Safe { replayed: true, .. })).count();
            assert!(replayed > 0, "{name}: replayed deliveries follow the replay");
        },
    );
}

#[test]
fn a_total_failure_with_torn_log_tails() {
    // Everyone crashes within 3 ms during the traffic; every crash keeps a
    // torn prefix of what the logs had not synced; the members come back
    // over 400 ms and go on casting once the group has formed again.
    for_each_safe_stack(
        "total failure, torn tails",
        "seed=304 members=5 stack={stack} loss=0.05 delay_us=100..2000 casts=120 size=1..3000 interval_us=4000 quiet_ms=10000 \
         faults=crash(3)@1300ms,crash(0)@1301ms,crash(4)@1301ms,crash(1)@1302ms,crash(2)@1303ms,\
         restart(2)@1400ms,restart(0)@1500ms,restart(4)@1600ms,restart(1)@1700ms,restart(3)@1800ms crash_tail=torn",
        |name, o| {
            assert_eq!(o.eras().len(), 2, "{name}: one total failure");
            for (i, m) in o.members.iter().enumerate() {
                assert_eq!(m.id.incarnation(), 1, "{name}: member {i} restarted once");
                assert!(m.alive(), "{name}: member {i} is up at the end");
            }
            let last = o.members.iter().map(|m| m.casts.last().unwrap().at).max().unwrap();
            assert!(last > strata_stack::Instant::ZERO + std::time::Duration::from_millis(2200), "{name}: the casts go on after the restarts");
            assert!(replays(o, 0)[1] > 0, "{name}: the failure hit unfinished messages");
        },
    );
}

/// Replays the scenario in `STRATA_SIM_REPLAY` with the checks of its stack
/// and prints every member's timeline (deliveries listed if
/// `STRATA_SIM_VERBOSE` is set); passes with a note when the variable is unset.
#[test]
fn replay_from_env_if_set() {
    sim_support::replay_from_env(Checks::OfStack, |_| Ok(()));
}

#[test]
fn generated_scenarios_keep_the_fault_model_and_shrinking_keeps_it() {
    let mut rng = Rng::new(316);
    for family in [Family::Crashes, Family::TotalFailure] {
        for _ in 0..300 {
            let s = generate(family, &mut rng);
            assert!(keeps_the_fault_model(&s), "{family:?}: {s}");
        }
    }
    let line = |faults: &str| format!("members=5 faults={faults}").parse::<Scenario>().unwrap();
    assert!(keeps_the_fault_model(&line("crash(0)@1s,crash(1)@1s,crash(2)@1010ms,crash(3)@1020ms,crash(4)@1020ms,restart(0)@2s,restart(1)@2s,restart(2)@2s")));
    assert!(!keeps_the_fault_model(&line("crash(0)@1s,crash(1)@1s,crash(2)@1010ms,crash(3)@1020ms,restart(0)@2s,restart(1)@2s,restart(2)@2s,restart(3)@2s")));
    assert!(!keeps_the_fault_model(&line("crash(0)@1s,crash(1)@1s,crash(2)@1010ms,crash(3)@1020ms,crash(4)@1020ms,restart(0)@2s,restart(1)@2s")));
    assert!(keeps_the_fault_model(&line("crash(0)@1s,crash(1)@1s,restart(0)@2s,crash(2)@3s")));
    assert!(!keeps_the_fault_model(&line("crash(0)@1s,crash(1)@1s,crash(2)@3s")));
}

#[test]
fn for_stack_holds_safe_stacks_to_the_safe_checks() {
    let names = |stack: &str| check::for_stack(stack).iter().map(|c| c.name).collect::<Vec<_>>().join(",");
    let safe = "integrity,no creation,view agreement,uniform agreement,replay,virtual synchrony,total order,vsync liveness";
    assert_eq!(names(&safe_stack(false, 3, true)), safe);
    assert_eq!(names(&safe_stack(true, 1, false)), safe.replace("total order", "causal order,total order"));
    assert!(check::replay::logs_to_disk("FRAG:NAK:VSYNC:SAFE(acceptors=3,log_dir=/safe)"));
    assert!(check::replay::logs_to_disk("FRAG:NAK:VSYNC:SAFE( log_dir = /x )"));
    assert!(!check::replay::logs_to_disk("FRAG:NAK:VSYNC:SAFE(acceptors=3)") && !check::replay::logs_to_disk("FRAG:NAK:VSYNC:SAFE"));
    assert!(!check::replay::logs_to_disk("FRAG(log_dir=/x):NAK:VSYNC:SAFE"));
}

/// A stand-in for SAFE: it tags casts and delivers them as durable as
/// they come (the order of the layers below, no agreement of its own),
/// passes FIFO-only casts as plain, writes every durable delivery to its
/// log (synced) and, with a `log_dir`, announces the log's contents as a
/// replay at its first view and delivers them again. It exercises the
/// simulator's disks, restarts and application model, and the checks
/// catch it wherever uniformity matters.
mod stand_in {
    use super::*;
    use strata_stack::codec::{Reader, Writer};
    use strata_stack::{Msg, Order, Params};

    pub struct FakeSafe {
        log_dir: String,
        log: Option<Box<dyn LogFile>>,
        replayed: bool,
        next_id: u64,
        view: u64,
        done: u64,
    }

    const PARAMS: &[ParamSpec] = &[ParamSpec { name: "log_dir", kind: ParamKind::Str, default: "", doc: "where the log goes", wire: false }];

    pub const FAKE_SAFE: LayerDescriptor = LayerDescriptor {
        name: "SAFE",
        summary: "tags casts as durable and logs them (a stand-in)",
        requires: Props::NONE,
        provides: Props::UNIFORM,
        params: PARAMS,
        max_header_len: |_| 24,
        build: |p: &Params| Ok(Box::new(FakeSafe { log_dir: p.str("log_dir").to_string(), log: None, replayed: false, next_id: 0, view: 0, done: 0 })),
    };

    /// The built-in layers with the stand-in as SAFE.
    pub fn registry() -> Registry {
        let mut r = Registry::new();
        for d in strata_layers::BUILTIN.iter().filter(|d| d.name != "SAFE") {
            r.register(*d).unwrap();
        }
        r.register(FAKE_SAFE).unwrap();
        r
    }

    fn decode(data: &[u8]) -> Vec<(SafeTag, Bytes)> {
        let mut r = Reader::new(data);
        let mut out = Vec::new();
        while r.remaining() > 0 {
            let Ok(len) = r.u32() else { break };
            let Ok(record) = r.bytes(len as usize) else { break };
            let mut rr = Reader::new(record);
            let (Ok(sender), Ok(view), Ok(id)) = (MemberId::decode(&mut rr), rr.varint(), rr.varint()) else { break };
            out.push((SafeTag { sender, view, id }, Bytes::copy_from_slice(rr.rest())));
        }
        out
    }

    impl strata_stack::Layer for FakeSafe {
        fn init(&mut self, cx: &mut Context<'_>) {
            if !self.log_dir.is_empty() {
                self.log = Some(cx.open_log(&self.log_dir, "sim.safelog").expect("a simulated disk opens"));
            }
        }

        fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
            match ev {
                Down::Cast(mut msg) if msg.order() == Some(Order::Fifo) => {
                    msg.push(&[2]);
                    cx.down(Down::Cast(msg));
                }
                Down::Cast(mut msg) => {
                    self.next_id += 1;
                    let (view, id) = (self.view, self.next_id);
                    msg.push_with(|w| {
                        w.u8(1).varint(view).varint(id);
                    });
                    cx.down(Down::Cast(msg));
                }
                Down::Done(_) => self.done += 1,
                other => cx.down(other),
            }
        }

        fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
            match ev {
                Up::Cast { from, mut msg } => {
                    let header = msg.pop_with(|r| {
                        let kind = r.u8()?;
                        Ok(if kind == 1 { Some((r.varint()?, r.varint()?)) } else { None })
                    });
                    match header {
                        Ok(None) => cx.up(Up::Cast { from, msg }),
                        Ok(Some((view, id))) => {
                            let tag = SafeTag { sender: from, view, id };
                            if let Some(log) = &mut self.log {
                                let mut record = Writer::new();
                                tag.sender.encode(&mut record);
                                record.varint(view).varint(id).bytes(msg.body());
                                let mut w = Writer::new();
                                w.u32(record.len() as u32).bytes(record.as_slice());
                                // A crashed stack's log refuses writes: nothing to do about it.
                                let _ = log.append(w.as_slice()).and_then(|()| log.sync());
                            }
                            cx.up(Up::Durable { tag, msg, replayed: false });
                        }
                        Err(_) => cx.drop_malformed("bad_header"),
                    }
                }
                Up::View(view) => {
                    self.view = view.id().counter;
                    cx.up(Up::View(view));
                    if !std::mem::replace(&mut self.replayed, true) && self.log.is_some() {
                        let old = self.log.as_mut().and_then(|l| l.read_all().ok()).map(|d| decode(&d)).unwrap_or_default();
                        cx.up(Up::Replay(old.clone()));
                        for (tag, body) in old {
                            cx.up(Up::Durable { tag, msg: Msg::new(body), replayed: true });
                        }
                    }
                }
                other => cx.up(other),
            }
        }

        fn stats(&self, out: &mut Stats) {
            out.add("done", self.done);
        }
    }
}

#[test]
fn each_member_has_a_disk_that_outlives_its_crash() {
    // Member 2 crashes and restarts as incarnation 1 on the same disk: the
    // stand-in replays every durable message its first incarnation logged.
    let line = "seed=310 members=3 stack=FRAG:NAK:VSYNC:TOTAL:SAFE(log_dir=/safe) delay_us=100..1000 casts=60 size=1..500 interval_us=10000 \
                quiet_ms=10000 faults=crash(2)@1400ms,restart(2)@2500ms crash_tail=lost";
    let s: Scenario = line.parse().unwrap();
    let o = sim::run(&stand_in::registry(), &s).unwrap();
    let m2 = &o.members[2];
    assert_eq!(m2.id, MemberId::new(sim::member(2).addr(), 1), "the member ends as its next incarnation");
    assert!(m2.alive() && m2.crashed_at.is_none() && m2.started_at == Some(strata_stack::Instant::ZERO));
    let lives = m2.lives();
    assert_eq!(lives.len(), 2);
    assert_eq!(lives[0].crashed_at, Some(strata_stack::Instant::ZERO + std::time::Duration::from_millis(1400)));
    let before: Vec<SafeTag> = lives[0].safe_deliveries().map(|(_, t, _)| t).collect();
    assert!(before.len() > 10, "{}", o.timeline(false));
    let replay = lives[1].log.iter().find_map(|e| if let Entry::Replay { messages, .. } = e { Some(messages.clone()) } else { None }).expect("a replay");
    assert_eq!(replay.iter().map(|r| r.tag).collect::<Vec<_>>(), before, "the log held what the first incarnation delivered");
    assert!(replay.iter().all(|r| r.intact && r.id.is_some()));
    let replayed: Vec<SafeTag> = lives[1].safe_deliveries().filter(|(_, _, r)| *r).map(|(_, t, _)| t).collect();
    assert_eq!(replayed, before);
    // The restarted member joined the others and casts on from where it stopped.
    let v = o.members[0].last_view().unwrap();
    assert!(v.contains(&m2.id) && !v.contains(&sim::member(2)) && v.len() == 3, "{v:?}");
    assert_eq!(m2.casts.len(), 60, "all its casts were made, numbered on");
    assert!(m2.casts.windows(2).all(|w| w[1].k == w[0].k + 1));
    let after_restart = m2.casts.iter().filter(|c| c.at > lives[1].started_at).count();
    assert!(after_restart > 0 && o.members[0].deliveries().filter(|d| d.from == m2.id).count() > 0, "{}", o.timeline(false));
    // Datagrams to the old incarnation's address reach the new one: nothing is unroutable.
    assert_eq!(o.net.unroutable, 0);
    // The same scenario is the same run.
    assert_eq!(sim::run(&stand_in::registry(), &s).unwrap().digest, o.digest);
}

#[test]
fn the_application_calls_done_for_each_durable_delivery_unless_it_crashes() {
    let line = "seed=311 members=4 stack=FRAG:NAK:VSYNC:TOTAL:SAFE delay_us=100..1000 casts=50 size=1..500 interval_us=5000 \
                quiet_ms=10000 faults=crash(3)@1500ms fifo=0.3";
    let o = sim::run(&stand_in::registry(), &line.parse().unwrap()).unwrap();
    let (mut immediate, mut delayed) = (0, 0);
    for (i, m) in o.members.iter().enumerate() {
        let delivered: Vec<(strata_stack::Instant, SafeTag)> =
            m.deliveries().filter_map(|d| if let Delivery::Safe { tag, .. } = d.kind { Some((d.at, tag)) } else { None }).collect();
        let done: Vec<(strata_stack::Instant, SafeTag)> =
            m.log.iter().filter_map(|e| if let Entry::Done { at, tag } = e { Some((*at, *tag)) } else { None }).collect();
        for (at, tag) in &done {
            let (delivered_at, _) = delivered.iter().find(|(_, t)| t == tag).expect("done only for a delivered tag");
            let delay = at.saturating_since(*delivered_at);
            assert!(delay <= sim::MAX_DONE_DELAY, "{delay:?}");
            if delay.is_zero() {
                immediate += 1;
            } else {
                delayed += 1;
            }
        }
        if i == 3 {
            // The crash discards the calls still pending.
            assert!(done.len() <= delivered.len());
            assert!(done.iter().all(|(at, _)| Some(*at) < m.crashed_at));
        } else {
            assert_eq!(done.len(), delivered.len(), "{}: every durable delivery is finished", m.name);
            assert_eq!(m.counter("SAFE", "done"), Some(done.len() as u64), "the stack got every call");
        }
    }
    assert!(immediate > 50 && delayed > 3 * immediate / 2, "{immediate} immediate, {delayed} delayed");
    // FIFO-only casts go out plain, about 30% of them.
    let plain = o.members[0].deliveries().filter(|d| d.kind == Delivery::Cast).count();
    let all = o.members[0].deliveries().count();
    assert!(plain * 5 > all && plain * 5 < 2 * all, "{plain} plain of {all}");
    assert_eq!(check::plain_casts(&o).len(), plain);
}

#[test]
fn a_total_failure_splits_the_run_into_eras() {
    let line = "seed=312 members=3 stack=FRAG:NAK:VSYNC:TOTAL:SAFE(log_dir=/safe) delay_us=100..1000 casts=30 size=1..500 interval_us=10000 \
                quiet_ms=10000 faults=crash(1)@1300ms,restart(1)@1500ms,crash(0)@1600ms,crash(1)@1600ms,crash(2)@1605ms,restart(2)@1700ms,restart(0)@1900ms,restart(1)@1900ms";
    let s: Scenario = line.parse().unwrap();
    let o = sim::run(&stand_in::registry(), &s).unwrap();
    let eras = o.eras();
    assert_eq!(eras.len(), 2, "{eras:?}");
    let ms = |m| strata_stack::Instant::ZERO + std::time::Duration::from_millis(m);
    assert_eq!((eras[0].from, eras[0].failed_at, eras[1].from, eras[1].failed_at), (ms(0), Some(ms(1605)), ms(1605), None));
    // Member 1 lived twice before the failure, once after.
    assert_eq!(eras[0].lives, vec![(0, 0), (1, 0), (2, 0), (1, 1)]);
    assert_eq!(eras[1].lives, vec![(2, 1), (0, 1), (1, 2)]);
    assert_eq!(o.members[1].id.incarnation(), 2);
    // Each era as a run of its own: the second starts with an empty state.
    let second = o.era_outcome(1);
    for m in &second.members {
        assert!(matches!(m.log[..2], [Entry::StateBegin { .. }, Entry::StateLoaded { .. }]), "{:?}", &m.log[..2]);
        assert!(!m.log.iter().any(|e| matches!(e, Entry::Restarted { .. })));
        assert!(m.alive());
    }
    assert_eq!(second.members[1].started_at, Some(ms(1900)));
    // The first: member 1's first incarnation comes after the members, as one of its own.
    let first = o.era_outcome(0);
    assert!(first.members.iter().all(|m| !m.alive()));
    assert_eq!(first.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["10.0.0.0:7000", "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.1:7000#0"]);
    assert_eq!((first.members[1].id.incarnation(), first.members[3].id.incarnation(), first.members[3].crashed_at), (1, 0, Some(ms(1300))));
    assert!(first.members[3].casts.is_empty() && first.members[1].casts.len() == 30);
    assert!(matches!(first.members[1].log[..2], [Entry::StateBegin { .. }, Entry::StateLoaded { .. }]));
    // A run without restarts is one era; so is one whose members come back one at a time.
    let calm = sim::run(&stand_in::registry(), &"seed=313 members=3 stack=FRAG:NAK:VSYNC:TOTAL:SAFE faults=crash(1)@1300ms".parse().unwrap()).unwrap();
    assert_eq!(calm.eras(), vec![sim::Era { from: ms(0), failed_at: None, lives: vec![(0, 0), (1, 0), (2, 0)] }]);
}

#[test]
fn the_stand_in_passes_every_safe_check_without_crashes() {
    // Below it, TOTAL orders everything and VSYNC keeps the members
    // together: without crashes the stand-in is uniform, joiners and
    // leavers included, and no check may complain.
    let mut rng = Rng::new(315);
    for n in 0..16 {
        let stack = format!("FRAG:NAK:{}VSYNC:TOTAL:SAFE{}", ["", "CAUSAL:"][n % 2], ["", "(log_dir=/safe)"][n / 2 % 2]);
        let s = Scenario::generate(&mut rng, &Ranges { max_crashes: 0, partitions: false, ..Ranges::safe(stack) });
        assert!(!s.faults.iter().any(|f| matches!(f.kind, FaultKind::Crash(_) | FaultKind::Restart(_))), "{s}");
        if let Err(e) = sim::run_checked(&stand_in::registry(), &s, &check::for_stack(&s.stack)) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_checks_catch_a_stand_in_that_replays_only_what_each_member_saw() {
    // The stand-in's replay is each member's own log, and it never
    // forgets: after total failures its members disagree on the list, or
    // deliver again what others never delivered.
    let mut rng = Rng::new(314);
    let (mut caught, runs) = (0, 12);
    for _ in 0..runs {
        let mut s = generate(Family::TotalFailure, &mut rng);
        s.stack = "FRAG:NAK:VSYNC:TOTAL:SAFE(log_dir=/safe)".into();
        if let Err(e) = sim::run_checked(&stand_in::registry(), &s, &[check::UNIFORM, check::REPLAY]) {
            caught += usize::from(e.contains("replay violated") || e.contains("uniform agreement violated"));
        }
    }
    assert!(caught * 2 >= runs, "only {caught} of {runs} total failures caught the stand-in");
}

/// Histories built by hand, to show that the uniform and replay checks
/// pass a correct one and catch each violation they exist for.
mod hand_built {
    use super::*;
    use crate::sim_support::history::{self, member_log, name, payload, t};
    use std::sync::Arc;
    use std::time::Duration;
    use strata_stack::codec::fnv1a64;
    use strata_stack::{View, ViewId};
    use strata_transport::sim::{Delivered, MemberLog, Replayed};

    const LOGGED: &str = "FRAG:NAK:VSYNC:SAFE(log_dir=/safe)";

    /// Member `i` in incarnation `inc`.
    fn mid(i: u16, inc: u64) -> MemberId {
        MemberId::new(sim::member(i).addr(), inc)
    }

    fn view(counter: u64, creator: MemberId, members: &[MemberId]) -> Arc<View> {
        View::new(ViewId { counter, creator }, members.to_vec()).unwrap()
    }

    /// The view of the first era: members 0, 1, 2 in incarnation 0.
    fn v1() -> Arc<View> {
        view(1, mid(0, 0), &[mid(0, 0), mid(1, 0), mid(2, 0)])
    }

    fn v(ms: u64, view: &Arc<View>) -> Entry {
        Entry::View { at: t(ms), view: view.clone() }
    }

    /// The message member `i` casts as its cast `k`, tag id `k + 1`, in
    /// incarnation `inc` and view counter `view`.
    fn tag(i: u16, inc: u64, view: u64, k: u64) -> SafeTag {
        SafeTag { sender: mid(i, inc), view, id: k + 1 }
    }

    /// A durable delivery at `ms` of cast `k` of member `i` (incarnation 0, view 1).
    fn s(ms: u64, i: u16, k: u64) -> Entry {
        safe_of(ms, tag(i, 0, 1, k), k, false)
    }

    fn safe_of(ms: u64, tag: SafeTag, k: u64, replayed: bool) -> Entry {
        let i = tag.sender.addr().ip().to_string().rsplit('.').next().unwrap().parse::<u16>().unwrap();
        let p = payload(i, k);
        Entry::Deliver(Delivered {
            at: t(ms),
            from: tag.sender,
            kind: Delivery::Safe { tag, replayed },
            id: Some((name(i), k)),
            len: p.len(),
            hash: fnv1a64(&p),
            intact: true,
        })
    }

    fn done(ms: u64, i: u16, k: u64) -> Entry {
        Entry::Done { at: t(ms), tag: tag(i, 0, 1, k) }
    }

    fn replay(ms: u64, list: &[(u16, u64)]) -> Entry {
        let messages = list
            .iter()
            .map(|&(i, k)| {
                let p = payload(i, k);
                Replayed { tag: tag(i, 0, 1, k), id: Some((name(i), k)), len: p.len(), hash: fnv1a64(&p), intact: true }
            })
            .collect();
        Entry::Replay { at: t(ms), messages }
    }

    /// Member `i` with `casts` casts (at 1000 + k ms), its log, ending in
    /// the incarnation its last `Restarted` names.
    fn member(i: u16, casts: u64, log: Vec<Entry>) -> MemberLog {
        let id = log.iter().rev().find_map(|e| if let Entry::Restarted { id, .. } = e { Some(*id) } else { None }).unwrap_or(mid(i, 0));
        member_log(id, i, (0..casts).map(|k| 1000 + k), log)
    }

    fn outcome(members: Vec<MemberLog>) -> Outcome {
        history::outcome(LOGGED, members, 5000, 15_000)
    }

    /// A correct history: three members, each casts one message after its
    /// replay (empty: the logs are new), all deliver a0, b0, c0 in this
    /// order and finish them.
    fn good() -> Outcome {
        let log = |i: u16| vec![v(500, &v1()), replay(500, &[]), s(1010, 0, 0), s(1011, 1, 0), s(1012, 2, 0), done(1020 + u64::from(i), 0, 0)];
        outcome((0..3).map(|i| member(i, 1, log(i))).collect())
    }

    fn fails(o: &Outcome, check: check::Check, needles: &[&str]) {
        let e = (check.run)(o).expect_err(check.name);
        for n in needles {
            assert!(e.contains(n), "{} failure lacks `{n}`: {e}", check.name);
        }
    }

    #[test]
    fn a_correct_history_passes_every_safe_check() {
        check::run(&good(), check::SAFE_CHECKS).unwrap();
    }

    #[test]
    fn uniform_agreement_catches_a_message_only_a_crashed_member_delivered() {
        // Member 0 delivers d = a1 and crashes; 1 and 2 live on without it.
        let mut o = good();
        o.members[0].casts = member(0, 2, Vec::new()).casts;
        o.members[0].log.push(s(1030, 0, 1));
        o.members[0].crashed_at = Some(t(1040));
        fails(
            &o,
            check::UNIFORM,
            &["10.0.0.0:7000#0 delivered 10.0.0.0:7000#0/1/2 (10.0.0.0:7000:1) at 1.030000000s in view 1@10.0.0.0:7000, but 10.0.0.1:7000#0, alive in primary view 1@10.0.0.0:7000 at the end", "it was a member of view 1@10.0.0.0:7000 too"],
        );
        // The others delivering it mends it; a survivor that got it in a state transfer knows it too.
        o.members[1].log.push(s(1031, 0, 1));
        o.members[2].log.push(s(1031, 0, 1));
        (check::UNIFORM.run)(&o).unwrap();
        let v2 = view(2, mid(1, 0), &[mid(1, 0), mid(2, 0), mid(3, 0)]);
        let known = [(name(0), 0), (name(1), 0), (name(2), 0), (name(0), 1)].into_iter().collect();
        let joiner = vec![
            v(2000, &v2),
            Entry::StateBegin { at: t(2000) },
            Entry::StateLoaded { at: t(2001), chunks: 1, bytes: 0, known: Arc::new(known) },
            replay(2001, &[]),
        ];
        o.members.push(member(3, 0, joiner));
        (check::UNIFORM.run)(&o).unwrap();
        // A state without it is not enough.
        let Entry::StateLoaded { known, .. } = &mut o.members[3].log[2] else { unreachable!() };
        *known = Arc::new([(name(0), 0)].into_iter().collect());
        fails(&o, check::UNIFORM, &["but 10.0.0.3:7000#0", "it never installed view 1@10.0.0.0:7000, and its state lacks it"]);
    }

    #[test]
    fn one_order_catches_two_members_that_disagree() {
        let mut o = good();
        o.members[2].log.swap(3, 4);
        fails(
            &o,
            check::UNIFORM,
            &["10.0.0.2:7000#0 delivered 10.0.0.0:7000#0/1/1 (10.0.0.0:7000:0) at 1.010000000s then 10.0.0.2:7000#0/1/1 (10.0.0.2:7000:0) at 1.012000000s, \
               but 10.0.0.1:7000#0 delivered 10.0.0.0:7000#0/1/1 (10.0.0.0:7000:0) at 1.010000000s then 10.0.0.1:7000#0/1/1 (10.0.0.1:7000:0) at 1.011000000s"],
        );
        // Two members in opposite orders of the same two messages go round in a circle.
        let mut o = good();
        for m in &mut o.members {
            m.log.remove(4);
        }
        o.members[1].log.swap(2, 3);
        fails(&o, check::UNIFORM, &["no one order: the deliveries go round in a circle"]);
    }

    #[test]
    fn one_order_catches_a_skip_but_lets_members_start_late_and_stop_early() {
        // Member 2 skips b0.
        let mut o = good();
        o.members[2].log.remove(3);
        fails(
            &o,
            check::UNIFORM,
            &["10.0.0.2:7000#0 delivered 10.0.0.0:7000#0/1/1 (10.0.0.0:7000:0) at 1.010000000s then 10.0.0.2:7000#0/1/1 (10.0.0.2:7000:0) at 1.012000000s"],
        );
        // Member 2 crashes after a0; member 0 stops there too, and starts over after a state transfer with c0.
        let mut o = good();
        o.members[2].log.truncate(3);
        o.members[2].crashed_at = Some(t(1011));
        let v2 = view(2, mid(0, 0), &[mid(0, 0), mid(1, 0)]);
        o.members[0].log = vec![v(500, &v1()), replay(500, &[]), s(1010, 0, 0), v(1500, &v2), Entry::StateBegin { at: t(1500) }];
        o.members[0].log.push(Entry::StateLoaded { at: t(1501), chunks: 1, bytes: 0, known: Arc::new([(name(0), 0), (name(1), 0)].into_iter().collect()) });
        o.members[0].log.push(s(1502, 2, 0));
        o.members[1].log.insert(5, v(1500, &v2));
        (check::UNIFORM.run)(&o).unwrap();
    }

    #[test]
    fn no_duplicate_within_an_incarnation_but_again_after_a_restart() {
        let mut o = good();
        o.members[1].log.push(s(1013, 1, 0));
        fails(&o, check::UNIFORM, &["10.0.0.1:7000#0 delivered 10.0.0.1:7000#0/1/1 (10.0.0.1:7000:0) twice: at 1.011000000s and at 1.013000000s"]);
        // A plain cast twice is a duplicate too.
        let mut o = good();
        let Entry::Deliver(mut d) = s(1013, 1, 0) else { unreachable!() };
        d.kind = Delivery::Cast;
        o.members[1].log.push(Entry::Deliver(d));
        fails(&o, check::UNIFORM, &["10.0.0.1:7000#0 delivered 10.0.0.1:7000:0 twice"]);
    }

    #[test]
    fn per_sender_fifo_by_tag_id() {
        // Member 0 casts a0 and a1; everyone delivers a1 first (one order, but not FIFO).
        let mut o = good();
        o.members[0].casts = member(0, 2, Vec::new()).casts;
        for m in &mut o.members {
            m.log.insert(2, s(1009, 0, 1));
        }
        fails(
            &o,
            check::UNIFORM,
            &["delivered durable 10.0.0.0:7000#0/1/1 (10.0.0.0:7000:0) at 1.010000000s after 10.0.0.0:7000#0/1/2 (10.0.0.0:7000:1) at 1.009000000s"],
        );
    }

    #[test]
    fn a_tag_names_one_message() {
        let mut o = good();
        let Entry::Deliver(d) = &mut o.members[2].log[3] else { unreachable!() };
        d.id = Some((name(1), 5));
        fails(&o, check::UNIFORM, &["tag 10.0.0.1:7000#0/1/1 carries two messages"]);
    }

    /// A total failure at 3000 ms: before it, the history of [`good`] plus
    /// b1 and c1 (cast by 1 and 2 at 1001 ms), everyone delivering a0, b0,
    /// c0, b1, c1; member 0 finishes everything, member 1 a0 and b0, member 2
    /// a0, b0, c0; after it (incarnation 1, view 1 created by 0#1), member 0
    /// replays `list0`, 1 and 2 replay `list`, and all deliver it replayed.
    fn failure(list0: &[(u16, u64)], list: &[(u16, u64)]) -> Outcome {
        let v_after = view(1, mid(0, 1), &[mid(0, 1), mid(1, 1), mid(2, 1)]);
        let before = |finished: &[(u16, u64)]| {
            let mut log = vec![v(500, &v1()), replay(500, &[]), s(1010, 0, 0), s(1011, 1, 0), s(1012, 2, 0), s(1013, 1, 1), s(1014, 2, 1)];
            log.extend(finished.iter().map(|&(i, k)| done(1100, i, k)));
            log
        };
        let after = |i: u16, list: &[(u16, u64)]| {
            let mut log = vec![Entry::Restarted { at: t(3500), id: mid(i, 1), crashed_at: t(3000) }, v(4600, &v_after), replay(4600, list)];
            log.extend(list.iter().map(|&(j, k)| safe_of(4601, tag(j, 0, 1, k), k, true)));
            log
        };
        let everything = [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1)];
        let mut o = outcome(vec![
            member(0, 1, [before(&everything), after(0, list0)].concat()),
            member(1, 2, [before(&everything[..2]), after(1, list)].concat()),
            member(2, 2, [before(&everything[..3]), after(2, list)].concat()),
        ]);
        o.scenario.faults = (0..3)
            .flat_map(|i| {
                [
                    sim::Fault { at: Duration::from_millis(3000), kind: FaultKind::Crash(i) },
                    sim::Fault { at: Duration::from_millis(3500), kind: FaultKind::Restart(i) },
                ]
            })
            .collect();
        o
    }

    #[test]
    fn a_correct_replay_passes() {
        // Unfinished: c0 (by 1), b1 and c1 (by 1 and 2); a0 and b0 may come along.
        let needed = [(2, 0), (1, 1), (2, 1)];
        check::run(&failure(&needed, &needed), check::SAFE_CHECKS).unwrap();
        let more = [(1, 0), (2, 0), (1, 1), (2, 1)];
        check::run(&failure(&more, &more), &[check::UNIFORM, check::REPLAY]).unwrap();
        // A member joining the live group later gets an empty list and the state instead.
        let mut o = failure(&needed, &needed);
        let r = o.members[2].log.iter().rposition(|e| matches!(e, Entry::Replay { .. })).unwrap();
        o.members[2].log.truncate(r);
        let known = [(name(2), 0), (name(1), 1), (name(2), 1)].into_iter().collect();
        o.members[2].log.extend([
            Entry::StateBegin { at: t(4700) },
            Entry::StateLoaded { at: t(4700), chunks: 1, bytes: 0, known: Arc::new(known) },
            replay(4700, &[]),
        ]);
        let Entry::Restarted { at, .. } = &mut o.members[2].log[r - 2] else { panic!("{:?}", o.members[2].log[r - 2]) };
        *at = t(4650);
        o.scenario.faults[5].at = Duration::from_millis(4650);
        check::run(&o, &[check::UNIFORM, check::REPLAY]).unwrap();
        // But not a non-empty one.
        let list = o.members[0].log.iter().rev().find_map(|e| if let Entry::Replay { messages, .. } = e { Some(messages.clone()) } else { None }).unwrap();
        let Some(Entry::Replay { messages, .. }) = o.members[2].log.last_mut() else { unreachable!() };
        *messages = list;
        fails(&o, check::REPLAY, &["10.0.0.2:7000#1 started at 4.650000000s, after SAFE became live at 10.0.0.0:7000#1 (4.600000000s), so it joined a live group, but its replay at 4.700000000s lists 3 messages"]);
    }

    #[test]
    fn a_replay_must_hold_every_unfinished_message() {
        let o = failure(&[(1, 1), (2, 1)], &[(1, 1), (2, 1)]);
        fails(&o, check::REPLAY, &["after the total failure at 3.000000000s, 10.0.0.0:7000#1's replay at 4.600000000s lacks 10.0.0.2:7000#0/1/1 (10.0.0.2:7000:0): 10.0.0.1:7000#0 (in the final view 1@10.0.0.0:7000) delivered it at 1.012000000s and had not called done for it"]);
        let o = failure(&[], &[]);
        fails(&o, check::REPLAY, &["every replay is empty", "but 10.0.0.1:7000#0/1/2 (10.0.0.1:7000:1) is lost"]);
    }

    #[test]
    fn replays_must_agree_and_keep_the_order() {
        let o = failure(&[(2, 0), (1, 1), (2, 1)], &[(2, 0), (2, 1), (1, 1)]);
        fails(&o, check::REPLAY, &["10.0.0.0:7000#1 (at 4.600000000s) and 10.0.0.1:7000#1 (at 4.600000000s) got different replays (3 and 3 messages): at position 1, 10.0.0.1:7000#0/1/2 (10.0.0.1:7000:1) and 10.0.0.2:7000#0/1/2 (10.0.0.2:7000:1)"]);
        let swapped = [(2, 0), (2, 1), (1, 1)];
        let o = failure(&swapped, &swapped);
        fails(&o, check::REPLAY, &["lists 10.0.0.2:7000#0/1/2 (10.0.0.2:7000:1) before 10.0.0.1:7000#0/1/2 (10.0.0.1:7000:1), but they were delivered the other way round before the failure"]);
        // A message never cast, and one listed twice.
        let never = [(2, 0), (1, 1), (2, 1), (1, 7)];
        fails(
            &failure(&never, &never),
            check::REPLAY,
            &["10.0.0.0:7000#1's replay at 4.600000000s lists 10.0.0.1:7000#0/1/8 (10.0.0.1:7000:7), which was never cast"],
        );
        let twice = [(2, 0), (1, 1), (2, 1), (2, 1)];
        fails(&failure(&twice, &twice), check::REPLAY, &["lists 10.0.0.2:7000#0/1/2 (10.0.0.2:7000:1) twice"]);
    }

    #[test]
    fn replayed_deliveries_follow_the_replay_and_equal_it() {
        let needed = [(2, 0), (1, 1), (2, 1)];
        // One replayed delivery missing at a survivor.
        let mut o = failure(&needed, &needed);
        o.members[1].log.pop();
        fails(&o, check::REPLAY, &["10.0.0.1:7000#1 survives to the end (15.000000000s) but delivered only 2 of the 3 messages of its replay at 4.600000000s; the first missing is 10.0.0.2:7000#0/1/2 (10.0.0.2:7000:1)"]);
        // One out of place.
        let mut o = failure(&needed, &needed);
        let n = o.members[1].log.len();
        o.members[1].log.swap(n - 1, n - 2);
        fails(
            &o,
            check::REPLAY,
            &["10.0.0.1:7000#1's replayed delivery 1 is 10.0.0.2:7000#0/1/2 (10.0.0.2:7000:1) at 4.601000000s, but its replay list says 10.0.0.1:7000#0/1/2"],
        );
        // A durable delivery before the replay.
        let mut o = failure(&needed, &needed);
        let r = o.members[0].log.iter().rposition(|e| matches!(e, Entry::Replay { .. })).unwrap();
        let e = o.members[0].log.remove(r);
        o.members[0].log.push(e);
        fails(&o, check::REPLAY, &["10.0.0.0:7000#1 delivered 10.0.0.2:7000#0/1/1 (10.0.0.2:7000:0) at 4.601000000s before its Replay at 4.600000000s"]);
        // Two replays in one incarnation.
        let mut o = failure(&needed, &needed);
        o.members[2].log.push(replay(5000, &[]));
        fails(&o, check::REPLAY, &["10.0.0.2:7000#1 got 2 replays, at 4.600000000s (3 messages), 5.000000000s (0 messages): one per incarnation"]);
        // A survivor whose SAFE never became live.
        let mut o = good();
        o.members[1].log.remove(1);
        o.members[1].log.truncate(1);
        fails(&o, check::REPLAY, &["10.0.0.1:7000#0 is alive in primary view 1@10.0.0.0:7000 at the end (15.000000000s) but never got a Replay"]);
        // Without a log_dir, no replay is required, and a non-empty one is wrong.
        o.scenario.stack = "FRAG:NAK:VSYNC:SAFE".into();
        (check::REPLAY.run)(&o).unwrap();
        let mut o = failure(&needed, &needed);
        o.scenario.stack = "FRAG:NAK:VSYNC:SAFE".into();
        fails(&o, check::REPLAY, &["10.0.0.0:7000#1 got a replay of 3 messages at 4.600000000s, but SAFE has no log_dir"]);
    }
}
