//! The deterministic network simulator.
//!
//! [`run`] drives one [`Stack`] per member on one thread, in virtual time,
//! jumping from one wakeup to the next: the earliest of the datagrams in
//! flight ([`net`]), the stacks' timers ([`Stack::poll_timeout`]), the
//! workload's next cast ([`workload`]) and the next fault. One seed (the
//! scenario's) decides everything, so the same [`Scenario`] gives the same
//! run byte for byte; [`Outcome::digest`] hashes every datagram sent and
//! every event delivered, in order, so a test can check that.
//!
//! At equal times the simulator applies, one at a time and in this order: a
//! fault, an arriving datagram (earliest sent first), a due timer (lowest
//! member first), a due cast (lowest member first). After every input it
//! drains the stack as the engine asks: transmits, then events.
//!
//! The run ends `quiet_ms` after the later of the last accepted cast and the
//! last fault. Per member, the [`Outcome`] holds what it cast, every event
//! it delivered ([`Entry`]) and its final [`Stack::stats`]; the
//! [`check`] module decides whether a property held.
//!
//! Member `i` (from 0) is `MemberId::sim(i)`; membership is static: every
//! stack starts with the full member list. See `docs/simulator.md` for the
//! scenario line and the environment variables.

pub mod check;
pub mod net;
pub mod scenario;
pub mod workload;

/// The payload format (shared with `strata node`).
pub use crate::payload;
pub use check::Check;
pub use net::NetStats;
pub use scenario::{Fault, FaultKind, Ranges, Scenario, ScenarioError};

use bytes::Bytes;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::codec::fnv1a64;
use strata_stack::{AppEvent, BuildError, Delivery, Dest, Instant, LayerStats, MemberId, Registry, Rng, Stack, StackConfig, View};

/// The environment variable holding a scenario line to replay.
pub const REPLAY_ENV: &str = "STRATA_SIM_REPLAY";
/// The environment variable holding the number of random scenarios a property test runs.
pub const CASES_ENV: &str = "STRATA_SIM_CASES";
/// The group name every simulated stack joins.
pub const GROUP: &str = "sim";
/// How long past its nominal end a workload held up by backpressure may run
/// before the run is cut short (and marked [`Outcome::truncated`]).
pub const MAX_OVERRUN: Duration = Duration::from_secs(300);
/// Inputs one run may process before it is cut short (a guard against a
/// stack that never goes quiet, e.g. a timer re-armed at the same instant).
pub const MAX_STEPS: u64 = 20_000_000;

/// The member with index `i`.
pub fn member(i: u16) -> MemberId {
    MemberId::sim(i)
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is impossible.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A stack could not be built.
    #[error("member {member} cannot build stack `{stack}`: {error}")]
    Build {
        /// The member.
        member: MemberId,
        /// The stack string.
        stack: String,
        /// Why.
        error: Box<BuildError>,
    },
}

/// One message delivered to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// When.
    pub at: Instant,
    /// The sender the stack reported.
    pub from: MemberId,
    /// Cast or point-to-point.
    pub kind: Delivery,
    /// The id `(member text, k)` the payload claims, if it has one.
    pub id: Option<(String, u64)>,
    /// Payload length.
    pub len: usize,
    /// `fnv1a64` of the payload.
    pub hash: u64,
    /// Whether the payload's filler is what its claimed id prescribes.
    pub intact: bool,
}

/// One event in a member's log.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A delivered message.
    Deliver(Delivered),
    /// An installed view.
    View {
        /// When.
        at: Instant,
        /// The view.
        view: Arc<View>,
    },
    /// Any other event (problem, lost messages, suspicion...), as debug text.
    Other {
        /// When.
        at: Instant,
        /// What.
        what: String,
    },
}

/// One cast a member's stack accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CastRecord {
    /// Its index among the member's casts (the `k` in its id).
    pub k: u64,
    /// When the stack accepted it.
    pub at: Instant,
    /// Payload length.
    pub len: usize,
    /// `fnv1a64` of the payload.
    pub hash: u64,
}

/// What one member did during a run.
#[derive(Clone, Debug)]
pub struct MemberLog {
    /// The member.
    pub id: MemberId,
    /// Its display form, as payload ids spell it.
    pub name: String,
    /// When it crashed, if it did.
    pub crashed_at: Option<Instant>,
    /// The casts its stack accepted, in order (`casts[k].k == k`).
    pub casts: Vec<CastRecord>,
    /// How many casts the stack refused with backpressure (each was retried).
    pub backpressured: u64,
    /// Every event it delivered, in order.
    pub log: Vec<Entry>,
    /// Its layers' counters at the end of the run (or at its crash), bottom first.
    pub stats: Vec<LayerStats>,
    /// The engine's counters at the same moment.
    pub engine: LayerStats,
}

impl MemberLog {
    /// The delivered messages, in order.
    pub fn deliveries(&self) -> impl Iterator<Item = &Delivered> {
        self.log.iter().filter_map(|e| match e {
            Entry::Deliver(d) => Some(d),
            _ => None,
        })
    }

    /// Whether it was alive at the end of the run.
    pub fn alive(&self) -> bool {
        self.crashed_at.is_none()
    }

    /// Counter `counter` of the layer named `layer`, if both exist.
    pub fn counter(&self, layer: &str, counter: &str) -> Option<u64> {
        self.stats.iter().find(|s| s.name == layer)?.counters.get(counter)
    }
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What was run.
    pub scenario: Scenario,
    /// One log per member, by index.
    pub members: Vec<MemberLog>,
    /// What the network did.
    pub net: NetStats,
    /// When the quiet period began (`None` if the workload never finished).
    pub quiet_from: Option<Instant>,
    /// When the run stopped.
    pub end: Instant,
    /// Inputs processed.
    pub steps: u64,
    /// A hash of every cast, datagram sent and event delivered, in order.
    pub digest: u64,
    /// Why the run was cut short, if it was.
    pub truncated: Option<String>,
}

impl Outcome {
    /// The member whose display form is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// The member with id `id`.
    pub fn index_of_id(&self, id: &MemberId) -> Option<usize> {
        self.members.iter().position(|m| m.id == *id)
    }

    /// One line: casts, deliveries, network counters, virtual duration.
    pub fn summary(&self) -> String {
        let casts: usize = self.members.iter().map(|m| m.casts.len()).sum();
        let delivered: usize = self.members.iter().map(|m| m.deliveries().count()).sum();
        let n = &self.net;
        format!(
            "casts={casts} delivered={delivered} transmits={} copies={} lost={} dup={} delayed={} cut={} end={:?} steps={} digest={:016x}{}",
            n.transmits,
            n.copies,
            n.lost,
            n.duplicated,
            n.delayed,
            n.cut,
            self.end,
            self.steps,
            self.digest,
            self.truncated.as_ref().map(|t| format!(" TRUNCATED: {t}")).unwrap_or_default()
        )
    }
}

/// An incremental FNV-1a hash of the run.
struct Digest(u64);

impl Digest {
    fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }
}

/// The state [`run`] shares between its steps, split so that one member's
/// stack and the network can be borrowed at once.
struct World {
    nodes: Vec<Option<Stack>>,
    logs: Vec<MemberLog>,
    index: BTreeMap<MemberId, usize>,
    net: net::Net,
    digest: Digest,
}

impl World {
    /// Hands everything member `i`'s stack has to give to the network and its log.
    fn drain(&mut self, now: Instant, i: usize) {
        let Some(stack) = self.nodes[i].as_mut() else { return };
        while let Some(tx) = stack.poll_transmit() {
            let data = tx.msg.to_bytes();
            self.net.stats.transmits += 1;
            self.digest.u64(0xD0 + i as u64);
            self.digest.u64(now.as_nanos());
            self.digest.u64(fnv1a64(&data));
            match tx.dest {
                Dest::Group => {
                    for m in stack.view().members() {
                        if *m == stack.local() {
                            continue;
                        }
                        match self.index.get(m) {
                            Some(&to) => self.net.send(now, i, to, &data),
                            None => self.net.stats.unroutable += 1,
                        }
                    }
                }
                Dest::Member(m) => match self.index.get(&m) {
                    Some(&to) => self.net.send(now, i, to, &data),
                    None => self.net.stats.unroutable += 1,
                },
            }
        }
        while let Some(ev) = stack.poll_event() {
            self.digest.u64(0xE0 + i as u64);
            self.digest.u64(now.as_nanos());
            let entry = match ev {
                AppEvent::Deliver { from, kind, body } => {
                    let (id, intact) = workload::inspect(&body);
                    let d = Delivered { at: now, from, kind, id, len: body.len(), hash: fnv1a64(&body), intact };
                    self.digest.bytes(from.to_string().as_bytes());
                    self.digest.u64(d.hash);
                    Entry::Deliver(d)
                }
                AppEvent::View(view) => {
                    self.digest.bytes(format!("{view:?}").as_bytes());
                    Entry::View { at: now, view }
                }
                other => {
                    let what = format!("{other:?}");
                    self.digest.bytes(what.as_bytes());
                    Entry::Other { at: now, what }
                }
            };
            self.logs[i].log.push(entry);
        }
    }

    fn crash(&mut self, now: Instant, i: usize) {
        if let Some(stack) = self.nodes[i].take() {
            self.logs[i].stats = stack.stats();
            self.logs[i].engine = stack.engine_stats();
            self.logs[i].crashed_at = Some(now);
            self.digest.u64(0xC0 + i as u64);
        }
    }
}

/// Runs `scenario` with layers from `registry`.
pub fn run(registry: &Registry, scenario: &Scenario) -> Result<Outcome, SimError> {
    scenario.validate()?;
    let n = usize::from(scenario.members);
    let ids: Vec<MemberId> = (0..scenario.members).map(member).collect();
    let mut master = Rng::new(scenario.seed);
    let net_rng = master.fork();
    let mut workload_rng = master.fork();
    let mut world = World {
        nodes: Vec::with_capacity(n),
        logs: Vec::with_capacity(n),
        index: ids.iter().enumerate().map(|(i, m)| (*m, i)).collect(),
        net: net::Net::new(scenario, net_rng),
        digest: Digest(0xcbf2_9ce4_8422_2325),
    };
    let mut casters = Vec::with_capacity(n);
    for &id in &ids {
        let mut config = StackConfig::new(GROUP, id, ids.clone());
        config.seed = scenario.seed;
        let stack = Stack::new(registry, &scenario.stack, config, Instant::ZERO).map_err(|error| SimError::Build {
            member: id,
            stack: scenario.stack.clone(),
            error: Box::new(error),
        })?;
        let empty = LayerStats { name: "engine", counters: Default::default(), dropped: Vec::new() };
        world.logs.push(MemberLog {
            id,
            name: id.to_string(),
            crashed_at: None,
            casts: Vec::new(),
            backpressured: 0,
            log: Vec::new(),
            stats: Vec::new(),
            engine: empty,
        });
        world.nodes.push(Some(stack));
        casters.push(workload::Caster::new(scenario, id.to_string(), &mut workload_rng));
    }
    for i in 0..n {
        world.drain(Instant::ZERO, i);
    }

    let faults = scenario.faults_in_order();
    let last_fault = faults.last().map_or(Instant::ZERO, |f| Instant::ZERO + f.at);
    let quiet = Duration::from_millis(scenario.quiet_ms);
    let hard_end = Instant::ZERO + scenario.nominal_end() + MAX_OVERRUN;
    let mut next_fault = 0;
    let mut now = Instant::ZERO;
    let mut quiet_from = None;
    let mut truncated = None;
    let mut steps = 0u64;
    loop {
        if quiet_from.is_none() && casters.iter().all(|c| c.next_at.is_none()) {
            quiet_from = Some(now.max(last_fault));
        }
        let end = quiet_from.map(|q| q + quiet);
        let wakeups = [
            faults.get(next_fault).map(|f| Instant::ZERO + f.at),
            world.net.next_arrival(),
            world.nodes.iter().filter_map(|s| s.as_ref()?.poll_timeout()).min(),
            casters.iter().filter_map(|c| c.next_at).min(),
        ];
        let limit = end.unwrap_or(hard_end);
        let t = match wakeups.iter().flatten().min() {
            Some(&t) if t <= limit => t.max(now),
            _ => {
                if end.is_none() {
                    truncated = Some(format!("the workload was not done {MAX_OVERRUN:?} after its nominal end (backpressure that never lifts?)"));
                }
                now = now.max(limit);
                break;
            }
        };
        steps += 1;
        if steps > MAX_STEPS {
            truncated = Some(format!("more than {MAX_STEPS} inputs by {t:?} (a stack that never goes quiet?)"));
            break;
        }
        now = t;
        if let Some(f) = faults.get(next_fault).filter(|f| Instant::ZERO + f.at <= now) {
            match &f.kind {
                FaultKind::Crash(i) => {
                    world.crash(now, usize::from(*i));
                    casters[usize::from(*i)].stop();
                }
                FaultKind::Partition(sets) => world.net.partition(n, sets),
                FaultKind::Heal => world.net.heal(),
            }
            next_fault += 1;
            continue;
        }
        if let Some(d) = world.net.pop_due(now) {
            match world.nodes[d.to].as_mut() {
                None => world.net.stats.to_crashed += 1,
                Some(stack) => {
                    world.net.stats.arrived += 1;
                    stack.handle_datagram(now, d.data);
                    world.drain(now, d.to);
                }
            }
            continue;
        }
        if let Some(i) = world.nodes.iter().position(|s| s.as_ref().and_then(Stack::poll_timeout).is_some_and(|d| d <= now)) {
            if let Some(stack) = world.nodes[i].as_mut() {
                stack.handle_timeout(now);
            }
            world.drain(now, i);
            continue;
        }
        if let Some(i) = casters.iter().position(|c| c.next_at.is_some_and(|d| d <= now)) {
            cast(&mut world, &mut casters[i], now, i);
            continue;
        }
        debug_assert!(false, "a wakeup at {now:?} found nothing due");
    }
    for (i, node) in world.nodes.iter().enumerate() {
        if let Some(stack) = node {
            world.logs[i].stats = stack.stats();
            world.logs[i].engine = stack.engine_stats();
        }
    }
    Ok(Outcome { scenario: scenario.clone(), members: world.logs, net: world.net.stats, quiet_from, end: now, steps, digest: world.digest.0, truncated })
}

fn cast(world: &mut World, caster: &mut workload::Caster, now: Instant, i: usize) {
    let Some(stack) = world.nodes[i].as_mut() else {
        caster.stop();
        return;
    };
    let payload: Bytes = caster.payload();
    let (len, hash) = (payload.len(), fnv1a64(&payload));
    match stack.cast(now, payload) {
        Ok(()) => {
            let k = caster.next_k;
            world.logs[i].casts.push(CastRecord { k, at: now, len, hash });
            world.digest.u64(0xA0 + i as u64);
            world.digest.u64(k);
            world.digest.u64(hash);
            caster.accepted(now);
        }
        Err(_refused) => {
            world.logs[i].backpressured += 1;
            caster.refused(now);
        }
    }
    world.drain(now, i);
}

/// The line a failing test prints so that the run can be replayed:
/// `STRATA_SIM_REPLAY='<scenario line>'`, quoted for a POSIX shell.
pub fn replay_line(scenario: &Scenario) -> String {
    format!("{REPLAY_ENV}='{}'", scenario.to_string().replace('\'', r"'\''"))
}

/// Runs `scenario` and `checks` on its outcome. A failure (a check, a bad
/// scenario, or a panic inside a stack) is reported as the replay line, a
/// newline and a precise message.
pub fn run_checked(registry: &Registry, scenario: &Scenario, checks: &[Check]) -> Result<Outcome, String> {
    let fail = |msg: String| format!("{}\n{msg}", replay_line(scenario));
    match std::panic::catch_unwind(AssertUnwindSafe(|| run(registry, scenario))) {
        Err(panic) => {
            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(fail(format!("the run panicked: {what}")))
        }
        Ok(Err(e)) => Err(fail(e.to_string())),
        Ok(Ok(outcome)) => match check::run(&outcome, checks) {
            Ok(()) => Ok(outcome),
            Err(msg) => Err(fail(format!("{msg}\n(run: {})", outcome.summary()))),
        },
    }
}

/// The scenario in [`REPLAY_ENV`], if the variable is set.
pub fn replay_from_env() -> Option<Result<Scenario, ScenarioError>> {
    let line = std::env::var(REPLAY_ENV).ok()?;
    Some(line.parse())
}

/// The number of random cases a property test runs: [`CASES_ENV`] if set
/// to a number, else `default`.
pub fn cases_from_env(default: u64) -> u64 {
    std::env::var(CASES_ENV).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}
