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
//! Member `i` (from 0) is `MemberId::sim(i)`. Every stack is built with the
//! full member list in `StackConfig::members`: the membership of a stack
//! without a membership layer, the seeds (contact points) of one with VSYNC.
//! A member with a `join(i)@T` fault is built at `T`; one with `leave(i)@T`
//! calls [`Stack::leave`] then and is dropped once it reports `Left`.
//!
//! ## The application
//! Each member runs a small application whose state is its *knowledge*:
//! the set of message ids ([`MsgId`]) it delivered. On
//! `AppEvent::StateRequest` it encodes its knowledge ([`encode_knowledge`])
//! and hands it to [`Stack::provide_state`] in chunks of [`STATE_CHUNK`]
//! bytes, keeping what backpressure refuses for its next step; a completed
//! state load (`StateBegin`, `StateChunk`*, `StateDone`) *replaces* its
//! knowledge with the loaded set ([`Entry::StateLoaded`]).
//!
//! See `docs/simulator.md` for the scenario line and the environment variables.

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
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::codec::fnv1a64;
use strata_stack::{AppEvent, BuildError, Delivery, Dest, Instant, LayerStats, MemberId, Refused, Registry, Rng, Stack, StackConfig, View};

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

/// The most bytes of state the application passes in one
/// [`Stack::provide_state`] call (less if the stack carries less).
pub const STATE_CHUNK: usize = 512;

/// A message id: the sender's display form and the index of its cast, as
/// payloads spell them.
pub type MsgId = (String, u64);

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
    /// A view change started (`AppEvent::Block`).
    Block {
        /// When.
        at: Instant,
    },
    /// The member was asked for its state (`AppEvent::StateRequest`) and
    /// queued its knowledge as of this point for [`Stack::provide_state`].
    StateRequest {
        /// When.
        at: Instant,
        /// The request's token.
        token: u64,
        /// Who receives the state.
        joiners: Vec<MemberId>,
        /// How many message ids the state holds.
        known: usize,
    },
    /// The member starts loading the group's state (`AppEvent::StateBegin`):
    /// anything loaded since an earlier `StateBegin` is discarded.
    StateBegin {
        /// When.
        at: Instant,
    },
    /// The state finished loading (`AppEvent::StateDone`): the member's
    /// knowledge is now exactly `known`.
    StateLoaded {
        /// When.
        at: Instant,
        /// Chunks received since the last `StateBegin`.
        chunks: usize,
        /// Their bytes.
        bytes: usize,
        /// The loaded knowledge.
        known: Arc<BTreeSet<MsgId>>,
    },
    /// The member left the group (`AppEvent::Left`); its stack is dropped.
    Left {
        /// When.
        at: Instant,
    },
    /// Any other event (problem, lost messages, suspicion...), as debug text.
    Other {
        /// When.
        at: Instant,
        /// What.
        what: String,
    },
}

impl Entry {
    /// When it happened.
    pub fn at(&self) -> Instant {
        match self {
            Entry::Deliver(d) => d.at,
            Entry::View { at, .. }
            | Entry::Block { at }
            | Entry::StateRequest { at, .. }
            | Entry::StateBegin { at }
            | Entry::StateLoaded { at, .. }
            | Entry::Left { at }
            | Entry::Other { at, .. } => *at,
        }
    }
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
    /// When its stack was built: at 0, at its `join(i)@T`, or never (`None`).
    pub started_at: Option<Instant>,
    /// When it crashed, if it did.
    pub crashed_at: Option<Instant>,
    /// When its stack reported `Left` (after a `leave(i)@T`), if it did.
    pub left_at: Option<Instant>,
    /// The casts its stack accepted, in order (`casts[k].k == k`).
    pub casts: Vec<CastRecord>,
    /// How many casts the stack refused with backpressure (each was retried).
    pub backpressured: u64,
    /// Every event it delivered, in order.
    pub log: Vec<Entry>,
    /// Its layers' counters at the end of the run (or when it crashed or left), bottom first.
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

    /// Whether it was running at the end of the run: started, neither
    /// crashed nor left.
    pub fn alive(&self) -> bool {
        self.started_at.is_some() && self.crashed_at.is_none() && self.left_at.is_none()
    }

    /// The views it installed, in order, with when.
    pub fn views(&self) -> impl Iterator<Item = (Instant, &Arc<View>)> {
        self.log.iter().filter_map(|e| match e {
            Entry::View { at, view } => Some((*at, view)),
            _ => None,
        })
    }

    /// The last view it installed.
    pub fn last_view(&self) -> Option<&Arc<View>> {
        self.views().last().map(|(_, v)| v)
    }

    /// Its knowledge at the end of its log: every message id it delivered,
    /// where a completed state load replaces what came before.
    pub fn knowledge(&self) -> BTreeSet<MsgId> {
        let mut known = BTreeSet::new();
        for e in &self.log {
            match e {
                Entry::Deliver(Delivered { id: Some(id), .. }) => {
                    known.insert(id.clone());
                }
                Entry::StateLoaded { known: loaded, .. } => known = (**loaded).clone(),
                _ => {}
            }
        }
        known
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

impl Outcome {
    /// Every member's log in short: one line per view, block, state event,
    /// leave and other event, with the deliveries between them counted (and
    /// listed by id if `deliveries` is set), then its layers' final counters
    /// and drops. For reading a failed run.
    pub fn timeline(&self, deliveries: bool) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for m in &self.members {
            let _ = writeln!(
                out,
                "== {} started={:?} crashed={:?} left={:?} casts={} backpressured={}",
                m.name,
                m.started_at,
                m.crashed_at,
                m.left_at,
                m.casts.len(),
                m.backpressured
            );
            let mut run: Vec<String> = Vec::new();
            let flush = |out: &mut String, run: &mut Vec<String>| {
                if !run.is_empty() {
                    let list = if deliveries { format!(": {}", run.join(" ")) } else { String::new() };
                    let _ = writeln!(out, "    ({} deliveries{list})", run.len());
                    run.clear();
                }
            };
            for e in &m.log {
                let line = match e {
                    Entry::Deliver(d) => {
                        run.push(d.id.as_ref().map(|(s, k)| format!("{s}:{k}")).unwrap_or_else(|| "?".into()));
                        continue;
                    }
                    Entry::View { view, .. } => format!("view {view:?}"),
                    Entry::Block { .. } => "block".into(),
                    Entry::StateRequest { token, joiners, known, .. } => format!("state request {token} for {joiners:?}: {known} ids"),
                    Entry::StateBegin { .. } => "state begin".into(),
                    Entry::StateLoaded { chunks, bytes, known, .. } => format!("state loaded: {} ids in {chunks} chunks ({bytes} bytes)", known.len()),
                    Entry::Left { .. } => "left".into(),
                    Entry::Other { what, .. } => what.clone(),
                };
                flush(&mut out, &mut run);
                let _ = writeln!(out, "  {:?} {line}", e.at());
            }
            flush(&mut out, &mut run);
            for l in &m.stats {
                let _ = writeln!(out, "  [{}] {:?} dropped={:?}", l.name, l.counters.entries, l.dropped);
            }
        }
        out
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

/// Encodes a knowledge set as the application's state: one `member k`
/// line per id.
pub fn encode_knowledge(known: &BTreeSet<MsgId>) -> Vec<u8> {
    let mut out = Vec::new();
    for (m, k) in known {
        out.extend_from_slice(format!("{m} {k}\n").as_bytes());
    }
    out
}

/// Decodes what [`encode_knowledge`] wrote.
pub fn decode_knowledge(data: &[u8]) -> Result<BTreeSet<MsgId>, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("the state is not UTF-8: {e}"))?;
    let mut known = BTreeSet::new();
    for line in text.split_terminator('\n') {
        let id = line.rsplit_once(' ').and_then(|(m, k)| Some((m.to_string(), k.parse::<u64>().ok()?)));
        match id {
            Some(id) => known.insert(id),
            None => return Err(format!("bad state line `{line}`")),
        };
    }
    Ok(known)
}

/// One member's application: its knowledge and the state it owes joiners.
#[derive(Default)]
struct App {
    known: BTreeSet<MsgId>,
    /// The state being loaded since the last `StateBegin`, and its chunks.
    loading: Vec<u8>,
    chunks: usize,
    /// The chunks (then `None`, the end) of the state for `outbox_token`
    /// that the stack has not taken yet.
    outbox: VecDeque<Option<Bytes>>,
    outbox_token: u64,
    /// Views seen since that request: its own view comes next; at a second,
    /// the request is stale and the rest is dropped.
    outbox_views: u32,
}

/// The state [`run`] shares between its steps, split so that one member's
/// stack and the network can be borrowed at once.
struct World {
    nodes: Vec<Option<Stack>>,
    apps: Vec<App>,
    logs: Vec<MemberLog>,
    index: BTreeMap<MemberId, usize>,
    net: net::Net,
    digest: Digest,
}

impl World {
    /// Hands everything member `i`'s stack has to give to the network and
    /// its application, and passes the application's pending state chunks
    /// to the stack, until neither has anything more; drops the stack once
    /// it reported `Left`.
    fn drain(&mut self, now: Instant, i: usize) {
        let Some(mut stack) = self.nodes[i].take() else { return };
        loop {
            self.transmits(now, i, &mut stack);
            while let Some(ev) = stack.poll_event() {
                self.event(now, i, &stack, ev);
            }
            if !self.provide_state(now, i, &mut stack) {
                break;
            }
        }
        if self.logs[i].left_at.is_some() {
            self.logs[i].stats = stack.stats();
            self.logs[i].engine = stack.engine_stats();
            self.digest.u64(0x1_0200 + i as u64);
        } else {
            self.nodes[i] = Some(stack);
        }
    }

    fn transmits(&mut self, now: Instant, i: usize, stack: &mut Stack) {
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
    }

    /// Member `i`'s application handles one event.
    fn event(&mut self, now: Instant, i: usize, stack: &Stack, ev: AppEvent) {
        self.digest.u64(0xE0 + i as u64);
        self.digest.u64(now.as_nanos());
        let app = &mut self.apps[i];
        let entry = match ev {
            AppEvent::Deliver { from, kind, body } => {
                let (id, intact) = workload::inspect(&body);
                if let Some(id) = &id {
                    app.known.insert(id.clone());
                }
                let d = Delivered { at: now, from, kind, id, len: body.len(), hash: fnv1a64(&body), intact };
                self.digest.bytes(from.to_string().as_bytes());
                self.digest.u64(d.hash);
                Entry::Deliver(d)
            }
            AppEvent::View(view) => {
                self.digest.bytes(format!("{view:?}").as_bytes());
                app.outbox_views += 1;
                if app.outbox_views > 1 {
                    app.outbox.clear();
                }
                Entry::View { at: now, view }
            }
            AppEvent::Block => {
                self.digest.bytes(b"Block");
                Entry::Block { at: now }
            }
            AppEvent::StateRequest { token, joiners } => {
                let state = encode_knowledge(&app.known);
                self.digest.bytes(format!("StateRequest {token} {joiners:?}").as_bytes());
                self.digest.u64(fnv1a64(&state));
                let size = STATE_CHUNK.min(stack.max_message()).max(1);
                app.outbox = state.chunks(size).map(|c| Some(Bytes::copy_from_slice(c))).chain([None]).collect();
                app.outbox_token = token;
                app.outbox_views = 0;
                Entry::StateRequest { at: now, token, joiners, known: app.known.len() }
            }
            AppEvent::StateBegin => {
                self.digest.bytes(b"StateBegin");
                app.loading.clear();
                app.chunks = 0;
                Entry::StateBegin { at: now }
            }
            AppEvent::StateChunk(data) => {
                self.digest.bytes(b"StateChunk");
                self.digest.u64(fnv1a64(&data));
                app.loading.extend_from_slice(&data);
                app.chunks += 1;
                return;
            }
            AppEvent::StateDone => {
                self.digest.bytes(b"StateDone");
                self.digest.u64(fnv1a64(&app.loading));
                let (chunks, bytes) = (app.chunks, app.loading.len());
                let loaded = decode_knowledge(&std::mem::take(&mut app.loading));
                app.chunks = 0;
                app.known = match loaded {
                    Ok(known) => known,
                    Err(e) => {
                        self.logs[i].log.push(Entry::Other { at: now, what: format!("the loaded state is undecodable ({e}); knowledge set to empty") });
                        BTreeSet::new()
                    }
                };
                Entry::StateLoaded { at: now, chunks, bytes, known: Arc::new(app.known.clone()) }
            }
            AppEvent::Left => {
                self.digest.bytes(b"Left");
                self.logs[i].left_at = Some(now);
                Entry::Left { at: now }
            }
            other => {
                let what = format!("{other:?}");
                self.digest.bytes(what.as_bytes());
                Entry::Other { at: now, what }
            }
        };
        self.logs[i].log.push(entry);
    }

    /// Passes member `i`'s pending state chunks to its stack until it refuses
    /// one; whether it took any.
    fn provide_state(&mut self, now: Instant, i: usize, stack: &mut Stack) -> bool {
        let app = &mut self.apps[i];
        let mut took = false;
        while let Some(chunk) = app.outbox.front() {
            match stack.provide_state(now, app.outbox_token, chunk.clone()) {
                Ok(()) => {
                    self.digest.u64(0x1_0300 + i as u64);
                    app.outbox.pop_front();
                    took = true;
                }
                Err(Refused::Backpressure) => break,
                Err(e) => {
                    self.logs[i].log.push(Entry::Other { at: now, what: format!("the stack refused a state chunk: {e}; the rest of the state is dropped") });
                    app.outbox.clear();
                    break;
                }
            }
        }
        took
    }

    fn crash(&mut self, now: Instant, i: usize) {
        if let Some(stack) = self.nodes[i].take() {
            self.logs[i].stats = stack.stats();
            self.logs[i].engine = stack.engine_stats();
            self.logs[i].crashed_at = Some(now);
            self.apps[i].outbox.clear();
            self.digest.u64(0xC0 + i as u64);
        }
    }

    /// Builds member `i`'s stack at `now`.
    fn start(&mut self, registry: &Registry, scenario: &Scenario, i: usize, now: Instant) -> Result<(), SimError> {
        let ids: Vec<MemberId> = (0..scenario.members).map(member).collect();
        let id = ids[i];
        let mut config = StackConfig::new(GROUP, id, ids);
        config.seed = scenario.seed;
        let stack = Stack::new(registry, &scenario.stack, config, now).map_err(|error| SimError::Build {
            member: id,
            stack: scenario.stack.clone(),
            error: Box::new(error),
        })?;
        self.nodes[i] = Some(stack);
        self.logs[i].started_at = Some(now);
        if now > Instant::ZERO {
            self.digest.u64(0x1_0100 + i as u64);
        }
        Ok(())
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
        apps: Vec::with_capacity(n),
        logs: Vec::with_capacity(n),
        index: ids.iter().enumerate().map(|(i, m)| (*m, i)).collect(),
        net: net::Net::new(scenario, net_rng),
        digest: Digest(0xcbf2_9ce4_8422_2325),
    };
    let mut casters = Vec::with_capacity(n);
    for (i, &id) in ids.iter().enumerate() {
        let empty = LayerStats { name: "engine", counters: Default::default(), dropped: Vec::new() };
        world.logs.push(MemberLog {
            id,
            name: id.to_string(),
            started_at: None,
            crashed_at: None,
            left_at: None,
            casts: Vec::new(),
            backpressured: 0,
            log: Vec::new(),
            stats: Vec::new(),
            engine: empty,
        });
        world.nodes.push(None);
        world.apps.push(App::default());
        let start = Instant::ZERO + scenario.join_time(i as u16).unwrap_or_default();
        casters.push(workload::Caster::new(scenario, id.to_string(), &mut workload_rng, start));
    }
    for i in 0..n {
        if scenario.join_time(i as u16).is_none() {
            world.start(registry, scenario, i, Instant::ZERO)?;
        }
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
    let mut out_of_steps = false;
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
            casters.iter().filter_map(workload::Caster::due).min(),
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
            out_of_steps = true;
            break;
        }
        now = t;
        if let Some(f) = faults.get(next_fault).filter(|f| Instant::ZERO + f.at <= now) {
            match &f.kind {
                FaultKind::Crash(i) => {
                    world.crash(now, usize::from(*i));
                    world.logs[usize::from(*i)].backpressured += casters[usize::from(*i)].stop(now);
                }
                FaultKind::Partition(sets) => world.net.partition(n, sets),
                FaultKind::Heal => world.net.heal(),
                FaultKind::Join(i) => {
                    let i = usize::from(*i);
                    world.start(registry, scenario, i, now)?;
                    world.drain(now, i);
                }
                FaultKind::Leave(i) => {
                    let i = usize::from(*i);
                    world.logs[i].backpressured += casters[i].stop(now);
                    if let Some(stack) = world.nodes[i].as_mut() {
                        world.digest.u64(0x1_0400 + i as u64);
                        stack.leave(now);
                        world.drain(now, i);
                    }
                }
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
                    world.logs[d.to].backpressured += casters[d.to].wake(now);
                    world.drain(now, d.to);
                }
            }
            continue;
        }
        if let Some(i) = world.nodes.iter().position(|s| s.as_ref().and_then(Stack::poll_timeout).is_some_and(|d| d <= now)) {
            if let Some(stack) = world.nodes[i].as_mut() {
                stack.handle_timeout(now);
            }
            world.logs[i].backpressured += casters[i].wake(now);
            world.drain(now, i);
            continue;
        }
        if let Some(i) = casters.iter().position(|c| c.due().is_some_and(|d| d <= now)) {
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
        if !out_of_steps {
            // The attempts a parked caster skipped up to the end.
            world.logs[i].backpressured += casters[i].parked_attempts_until(now);
        }
    }
    Ok(Outcome { scenario: scenario.clone(), members: world.logs, net: world.net.stats, quiet_from, end: now, steps, digest: world.digest.0, truncated })
}

fn cast(world: &mut World, caster: &mut workload::Caster, now: Instant, i: usize) {
    let Some(stack) = world.nodes[i].as_mut() else {
        caster.stop(now);
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
