//! What the simulator's property tests share: quickcheck over random
//! scenarios (bounded shrinking, the first failure printed before it
//! shrinks, the replay line as a case's debug form), named scenarios that
//! must pass, and replaying a scenario line from `STRATA_SIM_REPLAY`.
//!
//! Each test file includes it with `mod sim_support;` and describes a
//! property with a [`Property`]: how to draw a scenario and how to judge
//! its run.

#![allow(dead_code)] // Each test file uses part of it.

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::cell::Cell;
use std::fmt;
use std::time::Instant as WallClock;
use strata_stack::Rng;
use strata_transport::sim::{self, check, Outcome, Scenario};

/// One property over random scenarios.
#[derive(Copy, Clone)]
pub struct Property {
    /// Printed with the case count and the time taken.
    pub name: &'static str,
    /// Cases when `STRATA_SIM_CASES` is unset.
    pub default_cases: u64,
    /// Shrink rounds after a failure (each round runs up to ~20
    /// candidates), so a failure is reported within minutes even when
    /// each run is slow.
    pub max_shrink_rounds: u32,
    /// Draws a scenario.
    pub generate: fn(&mut Rng) -> Scenario,
    /// Whether a shrunk scenario still belongs to the property (the fault
    /// model it was drawn from).
    pub keep: fn(&Scenario) -> bool,
    /// Runs a scenario and judges it.
    pub judge: fn(&Scenario) -> Result<(), String>,
}

impl Property {
    /// A property that keeps every shrunk scenario.
    pub fn new(
        name: &'static str,
        default_cases: u64,
        max_shrink_rounds: u32,
        generate: fn(&mut Rng) -> Scenario,
        judge: fn(&Scenario) -> Result<(), String>,
    ) -> Self {
        Property { name, default_cases, max_shrink_rounds, generate, keep: |_| true, judge }
    }

    /// How many cases a run of this property checks.
    pub fn cases(&self) -> u64 {
        sim::cases_from_env(self.default_cases)
    }

    /// Checks the property on [`Property::cases`] random scenarios; panics
    /// with the (shrunk) scenario's replay line on a failure.
    pub fn check(self) {
        let cases = self.cases();
        let started = WallClock::now();
        // quickcheck draws, runs and shrinks on this thread.
        CURRENT.with(|c| c.set(Some(self)));
        SHRINK_ROUNDS.with(|r| r.set(0));
        REPORTED.with(|r| r.set(false));
        LISTED.with(|l| l.borrow_mut().clear());
        QuickCheck::new().tests(cases).max_tests(cases.saturating_mul(4)).quickcheck(property as fn(Case) -> TestResult);
        let listed = LISTED.with(|l| std::mem::take(&mut *l.borrow_mut()));
        for l in &listed {
            eprintln!("listed (known limitation, see run_checked_listing):\n  {l}");
        }
        eprintln!("{}: {cases} scenarios in {:.2?}; {} listed apart", self.name, started.elapsed(), listed.len());
    }
}

/// A known limitation, listed rather than failed: under a partition VSYNC
/// may lose its primary view to fragmentation. While the partition holds,
/// members of the majority side that suspect each other (loss, or over a
/// tree a member whose path to the rest of its side crossed the cut and is
/// silent until `stall_ms` passes) may change the view among the members
/// each still hears, into fragments none of which holds a quorum; VSYNC
/// re-forms a primary view only around a surviving primary partition
/// (layers/src/vsync/mod.rs, "Partitions"), so the primary is then lost
/// for good. Seen in direct runs too (1 in several hundred, with loss); over
/// a tree with `stall_ms` at 3 s in 8 of 300 runs, at 1 s (the default) 2.
/// So for any scenario with a partition, VSYNC liveness is checked apart;
/// crash-only runs must keep a primary view.
pub fn liveness_apart(s: &Scenario) -> bool {
    s.faults.iter().any(|f| matches!(f.kind, sim::FaultKind::Partition(_)))
}

/// [`sim::run_checked`] with `checks`, except that for a scenario of
/// [`liveness_apart`] the VSYNC liveness check is run apart: its failure
/// is listed (printed at the end of the property) rather than returned.
pub fn run_checked_listing(s: &Scenario, checks: &[check::Check]) -> Result<Outcome, String> {
    let registry = strata_layers::builtin();
    if !liveness_apart(s) {
        return sim::run_checked(&registry, s, checks);
    }
    let (apart, required): (Vec<check::Check>, Vec<check::Check>) = checks.iter().partition(|c| c.name == check::VSYNC_LIVENESS.name);
    let o = sim::run_checked(&registry, s, &required)?;
    if let Err(e) = check::run(&o, &apart) {
        LISTED.with(|l| l.borrow_mut().push(format!("{}\n  {}", sim::replay_line(s), e.lines().next().unwrap_or_default())));
    }
    Ok(o)
}

thread_local! {
    static CURRENT: Cell<Option<Property>> = const { Cell::new(None) };
    static SHRINK_ROUNDS: Cell<u32> = const { Cell::new(0) };
    static REPORTED: Cell<bool> = const { Cell::new(false) };
    static LISTED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn current() -> Property {
    CURRENT.with(|c| c.get()).expect("a case is drawn inside Property::check")
}

/// A random scenario of the property being checked.
#[derive(Clone)]
pub struct Case(pub Scenario);

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", sim::replay_line(&self.0))
    }
}

impl Arbitrary for Case {
    fn arbitrary(g: &mut Gen) -> Self {
        Case((current().generate)(&mut Rng::new(u64::arbitrary(g))))
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let p = current();
        let rounds = SHRINK_ROUNDS.with(|r| r.replace(r.get() + 1));
        if rounds >= p.max_shrink_rounds {
            return Box::new(std::iter::empty());
        }
        Box::new(self.0.shrink().into_iter().filter(p.keep).map(Case))
    }
}

fn property(case: Case) -> TestResult {
    match (current().judge)(&case.0) {
        Ok(()) => TestResult::passed(),
        Err(msg) => {
            if !REPORTED.with(|r| r.replace(true)) {
                eprintln!("first failure, before shrinking:\n{msg}\n");
            }
            TestResult::error(msg)
        }
    }
}

/// The checks a scenario is held to: those of its stack, or these.
#[derive(Copy, Clone)]
pub enum Checks {
    /// `check::for_stack` of the scenario's stack.
    OfStack,
    /// A fixed list.
    These(&'static [check::Check]),
}

impl Checks {
    /// The checks for `s`.
    pub fn of(self, s: &Scenario) -> Vec<check::Check> {
        match self {
            Checks::OfStack => check::for_stack(&s.stack),
            Checks::These(list) => list.to_vec(),
        }
    }
}

/// Runs the named scenario `line` with `checks`; on failure panics with
/// the replay line, the failure and every member's timeline (with every
/// event if `verbose`).
pub fn run_named(name: &str, line: &str, checks: Checks, verbose: bool) -> Outcome {
    let s: Scenario = line.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
    let started = WallClock::now();
    let o = sim::run(&strata_layers::builtin(), &s).unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Err(e) = check::run(&o, &checks.of(&s)) {
        panic!("{name} failed:\n{}\n{e}\n(run: {})\n{}", sim::replay_line(&s), o.summary(), o.timeline(verbose));
    }
    eprintln!("{name}: ok in {:.2?}: {}", started.elapsed(), o.summary());
    o
}

/// Replays the scenario line in `STRATA_SIM_REPLAY` (printed by a failing
/// test) with `checks` and then `more`, printing every member's timeline
/// (every event with `STRATA_SIM_VERBOSE` set); does nothing when the
/// variable is unset.
pub fn replay_from_env(checks: Checks, more: impl Fn(&Outcome) -> Result<(), String>) {
    let Some(parsed) = sim::replay_from_env() else {
        eprintln!("{} is unset: nothing to replay (set it to a scenario line printed by a failing test)", sim::REPLAY_ENV);
        return;
    };
    let s = parsed.unwrap_or_else(|e| panic!("{}: {e}", sim::REPLAY_ENV));
    let started = WallClock::now();
    let o = sim::run(&strata_layers::builtin(), &s).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", o.timeline(std::env::var_os("STRATA_SIM_VERBOSE").is_some()));
    match check::run(&o, &checks.of(&s)).and_then(|()| more(&o)) {
        Ok(()) => eprintln!("replayed in {:.2?}, every check passed: {}", started.elapsed(), o.summary()),
        Err(e) => panic!("{}\n{e}\n(run: {})", sim::replay_line(&s), o.summary()),
    }
}

/// Building blocks of hand-made histories, for tests that show a check
/// passing a correct history and catching the violation it exists for.
pub mod history {
    use std::time::Duration;
    use strata_stack::codec::fnv1a64;
    use strata_stack::{Instant, MemberId};
    use strata_transport::sim::{self, CastRecord, MemberLog, NetStats, Outcome, Scenario};

    /// `ms` milliseconds into the run.
    pub fn t(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    /// Member `i`'s name (its address).
    pub fn name(i: u16) -> String {
        sim::member(i).to_string()
    }

    /// The payload of member `i`'s cast `k` (40 bytes).
    pub fn payload(i: u16, k: u64) -> bytes::Bytes {
        strata_transport::payload::make(&name(i), k, 40)
    }

    /// The log of member `id` (named as member `i`), started at 0, whose
    /// stack accepted cast `k` at `cast_ms[k]`, with `log`.
    pub fn member_log(id: MemberId, i: u16, cast_ms: impl IntoIterator<Item = u64>, log: Vec<sim::Entry>) -> MemberLog {
        let casts = cast_ms
            .into_iter()
            .enumerate()
            .map(|(k, ms)| {
                let p = payload(i, k as u64);
                CastRecord { k: k as u64, at: t(ms), len: p.len(), hash: fnv1a64(&p) }
            })
            .collect();
        MemberLog { started_at: Some(Instant::ZERO), casts, log, ..MemberLog::new(id) }
    }

    /// A run of `stack` by `members`, quiet from `quiet_ms`, ending at `end_ms`.
    pub fn outcome(stack: &str, members: Vec<MemberLog>, quiet_ms: u64, end_ms: u64) -> Outcome {
        Outcome {
            scenario: Scenario { members: members.len() as u16, stack: stack.into(), ..Scenario::default() },
            members,
            net: NetStats::default(),
            quiet_from: Some(t(quiet_ms)),
            end: t(end_ms),
            steps: 0,
            digest: 0,
            truncated: None,
        }
    }
}
