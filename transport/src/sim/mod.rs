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
//! fault, an arriving datagram or (with `tree=K`) transport event, a
//! lost-connection notice or a stall check (earliest sent first), a due
//! timer (lowest member first), a due cast (lowest member first). A
//! forwarding member forwards a tree cast before its stack handles it. After every input it
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
//! On a stack with a durable layer (SAFE) the application also finishes
//! what it is given: for each `Delivery::Safe` it calls [`Stack::done`]
//! with the message's tag after a random delay (a quarter of the time at
//! once, else up to [`MAX_DONE_DELAY`] of virtual time, drawn from a random
//! stream of its own), logging [`Entry::Done`]; a crash forgets the calls
//! still pending. `AppEvent::Replay` is logged as [`Entry::Replay`].
//!
//! ## Disks, crashes and restarts
//! Each member owns a disk, a [`MemStorage`] that outlives its stacks
//! (`StackConfig::storage`). A crash is a power failure: the disk keeps
//! what was synced plus, as the scenario's `crash_tail` decides (drawn from
//! a random stream of its own), nothing or a torn prefix of the unsynced
//! tail; then the stack is dropped. A `restart(i)@T` builds member `i`
//! again with the next incarnation (`MemberId::new(addr, inc + 1)`), the
//! same disk, and the current ids of the others as seeds; its application
//! starts empty (knowledge, state, pending calls) and its log goes on after
//! an [`Entry::Restarted`]. [`MemberLog::lives`] splits a member's log by
//! incarnation, and [`Outcome::eras`] splits the run at its *total
//! failures*, the moments when no member is up.
//!
//! ## The attacker
//! With `attack=RATE` an eavesdropper on the wire injects replayed,
//! damaged and forged datagrams at random running members, and with
//! `keep_left=true` a member that left keeps running and is fed every later
//! datagram; [`NetStats::attack`] counts what became of them. See
//! [`attack`].
//!
//! ## Tree routing
//! With `tree=K` group casts travel along the `K`-ary tree of the
//! sender's view, as over the TCP tree transport: each member's simulated
//! transport forwards the copies it receives to its own tree neighbours
//! when the cast's view tag is its own view's. Each member's transport
//! marks members unreachable (a crash noticed one network delay later, a
//! refused connect, a connection stalled by a partition for `stall_ms`),
//! routes copies around them ([`crate::tree::next_hops`]) and reports each
//! new mark as a suspicion ([`Stack::suspect`]); a mark older than
//! `retry_ms` is tried again. See [`route`].
//!
//! ## Stack strings per member
//! The text `{i}` in the scenario's stack string is replaced by the
//! member's index when its stack is built (`identity=/keys/id{i}` gives
//! each member a file of its own); every member still runs the same layers.
//!
//! See `docs/simulator.md` for the scenario line and the environment variables.

pub mod attack;
pub mod check;
pub mod net;
pub mod route;
pub mod scenario;
pub mod workload;

/// The payload format (shared with `strata node`).
pub use crate::payload;
pub use attack::{AttackKind, AttackKinds, AttackStats};
pub use check::Check;
pub use net::NetStats;
pub use scenario::{CrashTailMode, Fault, FaultKind, Ranges, Scenario, ScenarioError, DEFAULT_RETRY_MS, DEFAULT_STALL_MS};

use bytes::Bytes;
use net::Carried;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::codec::fnv1a64;
use strata_stack::{
    AppEvent, BuildError, Delivery, Dest, Instant, LayerStats, MemStorage, MemberId, Refused, Registry, Rng, SafeTag, Stack, StackConfig, View,
};

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

/// The longest an application takes to call [`Stack::done`] for a durable
/// delivery (see the module doc).
pub const MAX_DONE_DELAY: Duration = Duration::from_millis(50);

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
    /// The durable layer announced the messages it is about to deliver
    /// again (`AppEvent::Replay`).
    Replay {
        /// When.
        at: Instant,
        /// The messages, in order.
        messages: Vec<Replayed>,
    },
    /// The application called [`Stack::done`] for a durable delivery and
    /// the stack took it.
    Done {
        /// When.
        at: Instant,
        /// The message.
        tag: SafeTag,
    },
    /// The member crashed earlier and starts again here, as a new
    /// incarnation (`restart(i)@T`): what follows is that incarnation's log.
    Restarted {
        /// When.
        at: Instant,
        /// The new incarnation.
        id: MemberId,
        /// When the previous incarnation crashed.
        crashed_at: Instant,
    },
}

/// One message of an `AppEvent::Replay` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Its tag.
    pub tag: SafeTag,
    /// The id `(member text, k)` its payload claims, if it has one.
    pub id: Option<MsgId>,
    /// Payload length.
    pub len: usize,
    /// `fnv1a64` of the payload.
    pub hash: u64,
    /// Whether the payload's filler is what its claimed id prescribes.
    pub intact: bool,
}

impl Replayed {
    fn of(tag: SafeTag, body: &[u8]) -> Replayed {
        let (id, intact) = workload::inspect(body);
        Replayed { tag, id, len: body.len(), hash: fnv1a64(body), intact }
    }
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
            | Entry::Other { at, .. }
            | Entry::Replay { at, .. }
            | Entry::Done { at, .. }
            | Entry::Restarted { at, .. } => *at,
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

/// What one member did during a run: all its incarnations, one after the
/// other (see [`MemberLog::lives`]).
#[derive(Clone, Debug)]
pub struct MemberLog {
    /// The member: its last incarnation.
    pub id: MemberId,
    /// Its display form, as payload ids spell it.
    pub name: String,
    /// When its stack was first built: at 0, at its `join(i)@T`, or never (`None`).
    pub started_at: Option<Instant>,
    /// When it crashed, if it did and did not restart after it.
    pub crashed_at: Option<Instant>,
    /// When its stack reported `Left` (after a `leave(i)@T`), if it did.
    pub left_at: Option<Instant>,
    /// The casts its stacks accepted, in order (`casts[k].k == k`; a
    /// restarted member numbers on).
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

/// The message ids a member knows at the end of `log`: every one it
/// delivered, where a completed state load replaces what came before.
fn knowledge(log: &[Entry]) -> BTreeSet<MsgId> {
    let mut known = BTreeSet::new();
    for e in log {
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

impl MemberLog {
    /// The log of member `id` before it starts.
    pub fn new(id: MemberId) -> MemberLog {
        MemberLog {
            id,
            name: id.to_string(),
            started_at: None,
            crashed_at: None,
            left_at: None,
            casts: Vec::new(),
            backpressured: 0,
            log: Vec::new(),
            stats: Vec::new(),
            engine: LayerStats { name: "engine", counters: Default::default(), dropped: Vec::new() },
        }
    }

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
        knowledge(&self.log)
    }

    /// Counter `counter` of the layer named `layer`, if both exist.
    pub fn counter(&self, layer: &str, counter: &str) -> Option<u64> {
        self.stats.iter().find(|s| s.name == layer)?.counters.get(counter)
    }

    /// Its incarnations in order: the log split at each
    /// [`Entry::Restarted`]. The simulator starts every member in
    /// incarnation 0 and restarts it in the next one. Empty if it never started.
    pub fn lives(&self) -> Vec<Life<'_>> {
        let Some(started_at) = self.started_at else { return Vec::new() };
        let mut out = Vec::new();
        let (mut id, mut from, mut start) = (MemberId::new(self.id.addr(), 0), 0, started_at);
        for (n, e) in self.log.iter().enumerate() {
            if let Entry::Restarted { at, id: next, crashed_at } = e {
                out.push(Life { id, started_at: start, crashed_at: Some(*crashed_at), left_at: None, log: &self.log[from..n], log_from: from });
                (id, from, start) = (*next, n + 1, *at);
            }
        }
        out.push(Life { id, started_at: start, crashed_at: self.crashed_at, left_at: self.left_at, log: &self.log[from..], log_from: from });
        out
    }
}

/// One incarnation of a member (see [`MemberLog::lives`]).
#[derive(Clone, Debug)]
pub struct Life<'a> {
    /// The incarnation.
    pub id: MemberId,
    /// When its stack was built.
    pub started_at: Instant,
    /// When it crashed, if it did.
    pub crashed_at: Option<Instant>,
    /// When its stack reported `Left`, if it did.
    pub left_at: Option<Instant>,
    /// Its part of the member's log (without the `Restarted` entry).
    pub log: &'a [Entry],
    /// Where that part starts in the member's log.
    pub log_from: usize,
}

impl<'a> Life<'a> {
    /// Whether it was running at the end of the run.
    pub fn alive(&self) -> bool {
        self.crashed_at.is_none() && self.left_at.is_none()
    }

    /// When it stopped (crashed or left), if it did.
    pub fn ended_at(&self) -> Option<Instant> {
        self.crashed_at.or(self.left_at)
    }

    /// The durable deliveries, in order: the delivery, its tag, whether replayed.
    pub fn safe_deliveries(&self) -> impl Iterator<Item = (&'a Delivered, SafeTag, bool)> + 'a {
        self.log.iter().filter_map(|e| match e {
            Entry::Deliver(d) => match d.kind {
                Delivery::Safe { tag, replayed } => Some((d, tag, replayed)),
                _ => None,
            },
            _ => None,
        })
    }

    /// Its knowledge at the end (see [`MemberLog::knowledge`]): a
    /// restarted application starts with none.
    pub fn knowledge(&self) -> BTreeSet<MsgId> {
        knowledge(self.log)
    }

    /// Whether it was still loading state at its end (a `StateBegin`
    /// without a `StateDone` after it).
    pub fn loading(&self) -> bool {
        let begin = self.log.iter().rposition(|e| matches!(e, Entry::StateBegin { .. }));
        let done = self.log.iter().rposition(|e| matches!(e, Entry::StateLoaded { .. }));
        begin.is_some_and(|b| done.is_none_or(|d| d < b))
    }

    /// The last view it installed.
    pub fn last_view(&self) -> Option<&Arc<View>> {
        self.log.iter().rev().find_map(|e| if let Entry::View { view, .. } = e { Some(view) } else { None })
    }
}

/// A stretch of a run between total failures (see [`Outcome::eras`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Era {
    /// When it began: 0, or the total failure that ended the previous one.
    pub from: Instant,
    /// The total failure that ended it: the moment the last member up
    /// went down; `None` if it lasts to the end of the run.
    pub failed_at: Option<Instant>,
    /// Its incarnations: (member index, index in [`MemberLog::lives`]).
    pub lives: Vec<(usize, usize)>,
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

    /// The member with id `id`, in any incarnation (members differ by address).
    pub fn index_of_id(&self, id: &MemberId) -> Option<usize> {
        self.members.iter().position(|m| m.id.addr() == id.addr())
    }

    /// The run split at its total failures: a total failure is a moment
    /// when every member that had started is down (crashed, or left), the
    /// last of them having just crashed; an incarnation belongs to the era
    /// it starts in. A run without restarts (or without a total failure) is
    /// one era.
    pub fn eras(&self) -> Vec<Era> {
        // Starts and ends of incarnations, in the order the run applied them:
        // by time, then faults in their (stable) time order, then leaves
        // (reported while a stack is drained, after that instant's faults).
        enum Step {
            Start(usize, usize),
            End,
        }
        let faults = self.scenario.faults_in_order();
        let rank = |at: Instant, i: usize, start: bool| {
            let pos = faults.iter().position(|f| {
                Instant::ZERO + f.at == at
                    && match f.kind {
                        FaultKind::Crash(j) => !start && usize::from(j) == i,
                        FaultKind::Join(j) | FaultKind::Restart(j) => start && usize::from(j) == i,
                        _ => false,
                    }
            });
            // Founders start before any fault; a leave ends after that instant's faults.
            (at, pos.map_or(if start && at == Instant::ZERO { 0 } else { usize::MAX }, |p| p + 1))
        };
        let mut steps: Vec<((Instant, usize), Step)> = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            for (l, life) in m.lives().iter().enumerate() {
                steps.push((rank(life.started_at, i, true), Step::Start(i, l)));
                if let Some(end) = life.ended_at() {
                    steps.push((rank(end, i, false), Step::End));
                }
            }
        }
        steps.sort_by_key(|(k, _)| *k);
        let mut eras = vec![Era { from: Instant::ZERO, failed_at: None, lives: Vec::new() }];
        let mut up = 0usize;
        for ((at, _), step) in steps {
            match step {
                Step::Start(i, l) => {
                    up += 1;
                    eras.last_mut().expect("one era at least").lives.push((i, l));
                }
                Step::End => {
                    up = up.saturating_sub(1);
                    if up == 0 {
                        eras.last_mut().expect("one era at least").failed_at = Some(at);
                        eras.push(Era { from: at, failed_at: None, lives: Vec::new() });
                    }
                }
            }
        }
        // Everyone down at the end and nobody after: no era follows (the
        // last one keeps its failure).
        if eras.len() > 1 && eras.last().is_some_and(|e| e.lives.is_empty()) {
            eras.pop();
        }
        eras
    }

    /// Era `k` of the run (see [`Outcome::eras`]) as a run of its own, for
    /// the checks written for runs without restarts. Member `i` (still at
    /// index `i`) is its last incarnation of the era: its log, id, start,
    /// crash and leave; its earlier incarnations of the era follow the
    /// members as members of their own, named `address#incarnation`, with
    /// no casts (so that a restart reads as what it is, a new member
    /// joining, not the old one moving on). The log of a restarted
    /// incarnation begins with an empty state load at its start: its
    /// application starts empty, and what the member cast before is excused
    /// from liveness, as for a member that joined anew (see
    /// `check::vsync_liveness`). Casts (all on the last incarnation), stats
    /// and the rest are the whole run's.
    pub fn era_outcome(&self, k: usize) -> Outcome {
        let eras = self.eras();
        let era = &eras[k];
        let mut o = self.clone();
        let mut earlier = Vec::new();
        for (i, m) in o.members.iter_mut().enumerate() {
            let lives = self.members[i].lives();
            let mine: Vec<usize> = era.lives.iter().filter(|(j, _)| *j == i).map(|&(_, l)| l).collect();
            let Some(&last) = mine.last() else {
                m.log.clear();
                (m.started_at, m.crashed_at, m.left_at) = (None, None, None);
                continue;
            };
            let slice = |l: usize| {
                let life = &lives[l];
                let mut log = Vec::with_capacity(life.log.len() + 2);
                if l > 0 {
                    log.push(Entry::StateBegin { at: life.started_at });
                    log.push(Entry::StateLoaded { at: life.started_at, chunks: 0, bytes: 0, known: Arc::new(BTreeSet::new()) });
                }
                log.extend_from_slice(life.log);
                log
            };
            for &l in &mine[..mine.len() - 1] {
                let life = &lives[l];
                earlier.push(MemberLog {
                    id: life.id,
                    name: format!("{}#{}", m.name, life.id.incarnation()),
                    started_at: Some(life.started_at),
                    crashed_at: life.crashed_at,
                    left_at: life.left_at,
                    casts: Vec::new(),
                    backpressured: 0,
                    log: slice(l),
                    stats: Vec::new(),
                    engine: m.engine.clone(),
                });
            }
            m.log = slice(last);
            m.id = lives[last].id;
            m.started_at = Some(lives[last].started_at);
            m.crashed_at = lives[last].crashed_at;
            m.left_at = lives[last].left_at;
        }
        o.members.extend(earlier);
        o
    }

    /// One line: casts, deliveries, network counters, virtual duration.
    pub fn summary(&self) -> String {
        let casts: usize = self.members.iter().map(|m| m.casts.len()).sum();
        let delivered: usize = self.members.iter().map(|m| m.deliveries().count()).sum();
        let n = &self.net;
        let tree = if self.scenario.tree > 0 {
            format!(
                " forwarded={} not_forwarded={} routed_around={} unreachable={} reconnected={} suspicions={}",
                n.forwarded, n.not_forwarded, n.routed_around, n.unreachable, n.reconnected, n.suspicions
            )
        } else {
            String::new()
        };
        format!(
            "casts={casts} delivered={delivered} transmits={} copies={} lost={} dup={} delayed={} cut={}{tree} end={:?} steps={} digest={:016x}{}",
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
                        let id = d.id.as_ref().map(|(s, k)| format!("{s}:{k}")).unwrap_or_else(|| "?".into());
                        run.push(match d.kind {
                            Delivery::Safe { tag, replayed } => format!("{id}={tag}{}", if replayed { "(replayed)" } else { "" }),
                            _ => id,
                        });
                        continue;
                    }
                    Entry::View { view, .. } => format!("view {view:?}"),
                    Entry::Block { .. } => "block".into(),
                    Entry::StateRequest { token, joiners, known, .. } => format!("state request {token} for {joiners:?}: {known} ids"),
                    Entry::StateBegin { .. } => "state begin".into(),
                    Entry::StateLoaded { chunks, bytes, known, .. } => format!("state loaded: {} ids in {chunks} chunks ({bytes} bytes)", known.len()),
                    Entry::Left { .. } => "left".into(),
                    Entry::Other { what, .. } => what.clone(),
                    Entry::Replay { messages, .. } => {
                        let shown: Vec<String> = messages.iter().take(20).map(|r| format!("{} ({})", r.tag, check::id_text(&r.id))).collect();
                        format!("replay of {} messages: {}{}", messages.len(), shown.join(" "), if messages.len() > 20 { " ..." } else { "" })
                    }
                    Entry::Done { tag, .. } => {
                        // Listed with the deliveries, as the deliveries are.
                        if deliveries {
                            run.push(format!("done({tag})"));
                        }
                        continue;
                    }
                    Entry::Restarted { id, crashed_at, .. } => format!("restarted as {id:?} (crashed at {crashed_at:?})"),
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
    /// `Stack::done` calls it will make: (when, order of scheduling) -> tag.
    pending_done: BTreeMap<(Instant, u64), SafeTag>,
    /// Calls scheduled so far (ties at one instant go in this order).
    done_seq: u64,
}

/// The state [`run`] shares between its steps, split so that one member's
/// stack and the network can be borrowed at once.
struct World {
    nodes: Vec<Option<Stack>>,
    apps: Vec<App>,
    logs: Vec<MemberLog>,
    /// Member index by address (every incarnation of a member has its address).
    index: BTreeMap<SocketAddr, usize>,
    net: net::Net,
    digest: Digest,
    /// Each member's disk.
    disks: Vec<MemStorage>,
    /// Decides what a crash leaves of unsynced log tails.
    crash_rng: Rng,
    /// Decides when the applications call `done`.
    done_rng: Rng,
    /// The eavesdropper, with `attack=` or `keep_left=`.
    attacker: Option<attack::Attacker>,
    /// Whether a member that left keeps running (`keep_left=true`).
    keep_left: bool,
    /// Each member's tree route, with `tree=K`.
    router: Option<route::Router>,
    /// With `tree=K`, each member's transport's unreachable marks: member
    /// index -> when it was marked (or the mark renewed by a failed
    /// reconnect). A mark younger than `retry` routes copies around the
    /// member; an older one lets the next copy try it directly.
    marks: Vec<BTreeMap<usize, Instant>>,
    /// With `tree=K`: the pairs of members (lower index first) with a
    /// connection between them: a tree copy went from one to the other.
    links: BTreeSet<(usize, usize)>,
    /// With `tree=K`: (member, crashed member) whose broken connection the
    /// member will be told of; copies it sends meanwhile go into the broken
    /// connection and are lost.
    pending_lost: BTreeSet<(usize, usize)>,
    /// With `tree=K`: (member, peer) edges whose tree copies a partition
    /// cuts, with when the first was cut; a [`Carried::Stall`] is due
    /// `stall` later.
    stalls: BTreeMap<(usize, usize), Instant>,
    /// How long copies may go unacknowledged before a connection times out (`stall_ms`).
    stall: Duration,
    /// How old a mark is before the next copy tries the member directly (`retry_ms`).
    retry: Duration,
    /// Scratch space for the next hops of one tree copy.
    hops: Vec<(Option<usize>, usize)>,
    hop_ranks: Vec<(usize, usize)>,
}

/// A pair of members as [`World::links`] keys it.
fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
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
            let took = self.provide_state(now, i, &mut stack);
            if !self.call_done(now, i, &mut stack) && !took {
                break;
            }
        }
        match self.logs[i].left_at {
            Some(left_at) if self.keep_left => {
                if let Some(a) = self.attacker.as_mut().filter(|a| !a.lingering.contains_key(&i)) {
                    a.lingering.insert(i, a.stats.lingered.len());
                    let fed = attack::Effects::default();
                    a.stats.lingered.push(attack::Lingered { member: i, left_at, stats_at_left: stack.stats(), fed: fed.clone(), after_view: fed });
                    self.digest.u64(0x1_0200 + i as u64);
                }
                self.nodes[i] = Some(stack);
            }
            Some(_) => {
                self.forget_transport(i);
                self.logs[i].stats = stack.stats();
                self.logs[i].engine = stack.engine_stats();
                self.digest.u64(0x1_0200 + i as u64);
            }
            None => self.nodes[i] = Some(stack),
        }
    }

    fn transmits(&mut self, now: Instant, i: usize, stack: &mut Stack) {
        while let Some(tx) = stack.poll_transmit() {
            let data = tx.msg.to_bytes();
            if let Some(a) = self.attacker.as_mut() {
                let logs = &self.logs;
                // Point-to-point datagrams to the lingering member itself are meant for it.
                let to = match tx.dest {
                    Dest::Member(m) => Some(m.addr()),
                    Dest::Group => None,
                };
                a.capture(i, &data, |j| {
                    let addr = logs[j].id.addr();
                    to != Some(addr) && logs[i].last_view().is_some_and(|v| !v.members().iter().any(|m| m.addr() == addr))
                });
            }
            self.net.stats.transmits += 1;
            self.digest.u64(0xD0 + i as u64);
            self.digest.u64(now.as_nanos());
            self.digest.u64(fnv1a64(&data));
            match tx.dest {
                Dest::Group => {
                    if self.tree_send(now, i, stack, None, &data) {
                        continue;
                    }
                    for m in stack.view().members() {
                        if *m == stack.local() {
                            continue;
                        }
                        match self.index.get(&m.addr()) {
                            Some(&to) => {
                                self.net.send(now, i, to, &data, None);
                            }
                            None => self.net.stats.unroutable += 1,
                        }
                    }
                }
                Dest::Member(m) => match self.index.get(&m.addr()) {
                    Some(&to) => {
                        self.net.send(now, i, to, &data, None);
                    }
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
                if let Delivery::Safe { tag, .. } = kind {
                    // A quarter at once (the drain calls it before it returns), the rest within MAX_DONE_DELAY.
                    let delay = match self.done_rng.below(4) {
                        0 => Duration::ZERO,
                        _ => Duration::from_micros(self.done_rng.below(MAX_DONE_DELAY.as_micros() as u64 + 1)),
                    };
                    app.done_seq += 1;
                    app.pending_done.insert((now + delay, app.done_seq), tag);
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
                app.pending_done.clear();
                Entry::Left { at: now }
            }
            AppEvent::Replay { messages } => {
                self.digest.bytes(b"Replay");
                let messages: Vec<Replayed> = messages
                    .iter()
                    .map(|(tag, body)| {
                        self.digest.bytes(tag.to_string().as_bytes());
                        self.digest.u64(fnv1a64(body));
                        Replayed::of(*tag, body)
                    })
                    .collect();
                Entry::Replay { at: now, messages }
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

    /// Member `i`'s application makes the `done` calls due by `now`;
    /// whether it made any.
    fn call_done(&mut self, now: Instant, i: usize, stack: &mut Stack) -> bool {
        let mut called = false;
        while let Some(entry) = self.apps[i].pending_done.first_entry().filter(|e| e.key().0 <= now) {
            let tag = entry.remove();
            called = true;
            self.digest.u64(0x1_0500 + i as u64);
            self.digest.bytes(tag.to_string().as_bytes());
            let entry = match stack.done(now, tag) {
                Ok(()) => Entry::Done { at: now, tag },
                Err(e) => Entry::Other { at: now, what: format!("the stack refused done({tag}): {e}") },
            };
            self.logs[i].log.push(entry);
        }
        called
    }

    /// When the next `done` call of any member is due.
    fn next_done(&self) -> Option<Instant> {
        self.apps.iter().filter_map(|a| a.pending_done.first_key_value().map(|((at, _), _)| *at)).min()
    }

    /// Member `at`'s transport forwards a tree copy that came from member
    /// `from`, if its tag is its own view's and it logically came from one
    /// of its tree neighbours there (see [`route`]).
    fn forward(&mut self, now: Instant, from: usize, at: usize, copy: net::TreeCopy, data: &Bytes) {
        if self.router.is_none() {
            return;
        }
        let Some(mut stack) = self.nodes[at].take() else { return };
        // The sender got through: a connection between them is up (the
        // real transport clears its mark when a peer connects to it).
        if self.nodes[from].is_some() {
            self.links.insert(link(from, at));
            if self.marks[at].remove(&from).is_some() {
                self.net.stats.reconnected += 1;
            }
        }
        let route = self.router.as_mut().expect("checked above").route(at, &stack, &self.index);
        if route.tag == copy.tag && route.forwards_from(copy.as_from) {
            self.tree_send(now, at, &mut stack, Some(copy.as_from), data);
        } else {
            self.net.stats.not_forwarded += 1;
        }
        self.nodes[at] = Some(stack);
    }

    /// Member `i`'s transport sends a tree copy on to its next hops: as
    /// its sender (`came` is `None`) or forwarding a copy that logically
    /// came from rank `came`. Each member it has a fresh mark for is
    /// routed around; one it tries and cannot reach (a refused connect, a
    /// reconnect across a partition) is marked, and the copy routed around
    /// it too. Returns whether `i` routes by the tree at all (it is in its
    /// view; else the caller sends directly).
    fn tree_send(&mut self, now: Instant, i: usize, stack: &mut Stack, came: Option<usize>, data: &Bytes) -> bool {
        let mut hops = std::mem::take(&mut self.hops);
        let mut scratch = std::mem::take(&mut self.hop_ranks);
        let mut routed = None;
        loop {
            hops.clear();
            let Some(router) = self.router.as_mut() else { break };
            let route = router.route(i, stack, &self.index);
            let Some(rank) = route.rank else { break };
            routed = Some((route.tag, rank));
            let (marks, retry) = (&self.marks[i], self.retry);
            route.hops(came, |m| marks.get(&m).is_some_and(|since| now < *since + retry), &mut scratch, &mut hops);
            let mut marked = false;
            for &(to, _) in &hops {
                if let Some(to) = to {
                    marked |= !self.try_reach(now, i, stack, to);
                }
            }
            if !marked {
                break;
            }
        }
        if let Some((tag, rank)) = routed {
            for (to, as_from) in hops.drain(..) {
                let Some(to) = to else {
                    self.net.stats.unroutable += 1;
                    continue;
                };
                self.net.stats.forwarded += u64::from(came.is_some());
                self.net.stats.routed_around += u64::from(as_from != rank);
                if self.net.send(now, i, to, data, Some(net::TreeCopy { tag, as_from })) {
                    // Unacknowledged from now on: the connection times out
                    // `stall` after the first cut copy if the cut holds.
                    if let std::collections::btree_map::Entry::Vacant(e) = self.stalls.entry((i, to)) {
                        e.insert(now);
                        self.net.schedule_stall(now + self.stall, i, Carried::Stall { watcher: stack.local(), peer: to, since: now });
                    }
                } else if self.nodes[to].is_some() {
                    self.links.insert(link(i, to));
                }
            }
        }
        self.hops = hops;
        self.hop_ranks = scratch;
        routed.is_some()
    }

    /// Member `i`'s transport is about to send a tree copy to member `to`,
    /// for which it has no fresh mark: whether the copy can go. A member
    /// that is down and whose connection is not known broken yet (no
    /// notice on its way) refuses the connect; a member marked earlier is
    /// tried again, which fails across a partition (the mark is renewed)
    /// and otherwise clears the mark. A failure marks `to`.
    fn try_reach(&mut self, now: Instant, i: usize, stack: &mut Stack, to: usize) -> bool {
        let marked = self.marks[i].contains_key(&to);
        let reachable = if self.net.cuts(i, to) {
            // A first copy across the cut goes (and is cut): the stall timer decides.
            !marked
        } else {
            // Copies written into a connection broken by a crash, before the notice, are lost.
            self.nodes[to].is_some() || self.pending_lost.contains(&(i, to))
        };
        if !reachable {
            self.mark(now, i, stack, to);
        } else if marked && self.nodes[to].is_some() && !self.net.cuts(i, to) {
            self.marks[i].remove(&to);
            self.net.stats.reconnected += 1;
        }
        reachable
    }

    /// Member `i`'s transport marks member `to` unreachable at `now` (or
    /// renews its mark). A new mark is reported as the real transport's
    /// `poll_lost` reports it: the driver passes `Stack::suspect` of the
    /// member of `i`'s view at that address, if it has one.
    fn mark(&mut self, now: Instant, i: usize, stack: &mut Stack, to: usize) {
        self.digest.u64(0x1_0900 + i as u64);
        self.digest.u64(to as u64);
        self.links.remove(&link(i, to));
        if self.marks[i].insert(to, now).is_some() {
            return;
        }
        self.net.stats.unreachable += 1;
        let addr = self.logs[to].id.addr();
        let Some(&suspect) = stack.view().members().iter().find(|m| m.addr() == addr) else { return };
        self.net.stats.suspicions += 1;
        self.digest.u64(0x1_0800 + i as u64);
        self.digest.bytes(suspect.to_string().as_bytes());
        stack.suspect(now, suspect);
    }

    /// Member `at`'s transport handles one of its own events that the
    /// network carried from member `from`: a broken connection to `from`
    /// (`Lost`), or a stall check (`Stall`); whether it marked a member (so
    /// its stack must be drained).
    fn transport_event(&mut self, now: Instant, at: usize, from: usize, what: Carried) -> bool {
        let (watcher, about, fails) = match what {
            Carried::Lost { watcher } => {
                self.pending_lost.remove(&(at, from));
                (watcher, from, true)
            }
            Carried::Stall { watcher, peer, since } => {
                if self.stalls.get(&(at, peer)) != Some(&since) {
                    return false;
                }
                self.stalls.remove(&(at, peer));
                (watcher, peer, self.net.cuts(at, peer))
            }
            Carried::Datagram { .. } => return false,
        };
        let Some(mut stack) = self.nodes[at].take() else { return false };
        let mine = stack.local() == watcher;
        if mine && fails {
            self.mark(now, at, &mut stack, about);
        }
        self.nodes[at] = Some(stack);
        mine && fails
    }

    /// With `tree=K`: member `i` crashed, so every running member with a
    /// connection to it (a tree neighbour in its own view, or a link) is
    /// told after one network delay; `i`'s transport state is gone.
    fn connections_lost(&mut self, now: Instant, i: usize) {
        let Some(router) = self.router.as_mut() else { return };
        for (j, node) in self.nodes.iter().enumerate() {
            if let Some(stack) = node.as_ref().filter(|_| j != i) {
                if (router.route(j, stack, &self.index).has_neighbour(i) || self.links.contains(&link(i, j))) && self.pending_lost.insert((j, i)) {
                    self.net.notify_lost(now, j, stack.local(), i);
                }
            }
        }
        self.forget_transport(i);
    }

    /// Member `i`'s transport is gone (a crash, or a leave that closed its
    /// connections with a goodbye): its links, marks and stall timers.
    fn forget_transport(&mut self, i: usize) {
        self.links.retain(|&(a, b)| a != i && b != i);
        if let Some(m) = self.marks.get_mut(i) {
            m.clear();
        }
        self.stalls.retain(|&(a, _), _| a != i);
        self.pending_lost.retain(|&(w, _)| w != i);
    }

    /// A power failure at member `i`: its disk keeps what the scenario's
    /// `crash_tail` says, its stack and its application's plans are dropped.
    fn crash(&mut self, now: Instant, i: usize, tail: CrashTailMode) {
        if let Some(stack) = self.nodes[i].take() {
            self.connections_lost(now, i);
            // The disk first: the stack's unsynced writes die with it.
            self.disks[i].crash(tail.draw(&mut self.crash_rng));
            self.logs[i].stats = stack.stats();
            self.logs[i].engine = stack.engine_stats();
            self.logs[i].crashed_at = Some(now);
            self.apps[i].outbox.clear();
            self.apps[i].pending_done.clear();
            self.digest.u64(0xC0 + i as u64);
        }
    }

    /// Builds member `i` again at `now`, as its next incarnation, on the
    /// same disk, with a fresh application.
    fn restart(&mut self, registry: &Registry, scenario: &Scenario, i: usize, now: Instant) -> Result<(), SimError> {
        let Some(crashed_at) = self.logs[i].crashed_at else { return Ok(()) };
        let old = self.logs[i].id;
        let id = MemberId::new(old.addr(), old.incarnation() + 1);
        self.apps[i] = App::default();
        self.logs[i].id = id;
        self.logs[i].crashed_at = None;
        self.logs[i].log.push(Entry::Restarted { at: now, id, crashed_at });
        self.digest.u64(0x1_0600 + i as u64);
        self.build(registry, scenario, i, now)
    }

    /// Builds member `i`'s stack at `now`.
    fn start(&mut self, registry: &Registry, scenario: &Scenario, i: usize, now: Instant) -> Result<(), SimError> {
        self.build(registry, scenario, i, now)?;
        self.logs[i].started_at = Some(now);
        if now > Instant::ZERO {
            self.digest.u64(0x1_0100 + i as u64);
        }
        Ok(())
    }

    /// Builds the stack of member `i`'s current incarnation, its seeds the
    /// current incarnations of all members.
    fn build(&mut self, registry: &Registry, scenario: &Scenario, i: usize, now: Instant) -> Result<(), SimError> {
        let ids: Vec<MemberId> = self.logs.iter().map(|l| l.id).collect();
        let id = ids[i];
        let mut config = StackConfig::new(GROUP, id, ids);
        config.seed = scenario.seed;
        config.storage = Arc::new(self.disks[i].clone());
        let spec = scenario.stack.replace("{i}", &i.to_string());
        let stack = Stack::new(registry, &spec, config, now).map_err(|error| SimError::Build { member: id, stack: spec.clone(), error: Box::new(error) })?;
        self.nodes[i] = Some(stack);
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
    // Forked after the others, so that they draw as they did before these existed.
    let crash_rng = master.fork();
    let done_rng = master.fork();
    let attack_rng = master.fork();
    let attacker = (scenario.attack > 0.0 || scenario.keep_left).then(|| attack::Attacker::new(attack_rng, scenario.attack, scenario.attack_kinds));
    let mut world = World {
        nodes: Vec::with_capacity(n),
        apps: Vec::with_capacity(n),
        logs: Vec::with_capacity(n),
        index: ids.iter().enumerate().map(|(i, m)| (m.addr(), i)).collect(),
        net: net::Net::new(scenario, net_rng),
        digest: Digest(0xcbf2_9ce4_8422_2325),
        disks: (0..n).map(|_| MemStorage::new()).collect(),
        crash_rng,
        done_rng,
        attacker,
        keep_left: scenario.keep_left,
        router: (scenario.tree > 0).then(|| route::Router::new(n, scenario.tree)),
        marks: vec![BTreeMap::new(); n],
        links: BTreeSet::new(),
        pending_lost: BTreeSet::new(),
        stalls: BTreeMap::new(),
        stall: Duration::from_millis(scenario.stall_ms),
        retry: Duration::from_millis(scenario.retry_ms),
        hops: Vec::new(),
        hop_ranks: Vec::new(),
    };
    let mut casters = Vec::with_capacity(n);
    for (i, &id) in ids.iter().enumerate() {
        world.logs.push(MemberLog::new(id));
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
            world.next_done(),
            world.attacker.as_ref().and_then(|a| a.next_due(now)),
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
                    world.crash(now, usize::from(*i), scenario.crash_tail);
                    world.logs[usize::from(*i)].backpressured += casters[usize::from(*i)].stop(now);
                }
                FaultKind::Restart(i) => {
                    let i = usize::from(*i);
                    if world.nodes[i].is_none() && world.logs[i].crashed_at.is_some() {
                        world.restart(registry, scenario, i, now)?;
                        world.drain(now, i);
                        if casters[i].resume(now) {
                            // The workload is not over after all.
                            quiet_from = None;
                        }
                    }
                }
                FaultKind::Partition(sets) => world.net.partition(n, sets),
                FaultKind::Cut { from, to } => world.net.cut(usize::from(*from), usize::from(*to)),
                FaultKind::Heal => {
                    world.net.heal();
                    // Retransmissions get through: no connection times out.
                    world.stalls.clear();
                }
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
            match d.what {
                Carried::Datagram { .. } if world.nodes[d.to].is_none() => world.net.stats.to_crashed += 1,
                Carried::Datagram { data, tree } => {
                    if let Some(copy) = tree {
                        world.forward(now, d.from, d.to, copy, &data);
                    }
                    world.net.stats.arrived += 1;
                    if let Some(stack) = world.nodes[d.to].as_mut() {
                        stack.handle_datagram(now, data);
                    }
                    world.logs[d.to].backpressured += casters[d.to].wake(now);
                    world.drain(now, d.to);
                }
                what => {
                    if world.transport_event(now, d.to, d.from, what) {
                        world.logs[d.to].backpressured += casters[d.to].wake(now);
                        world.drain(now, d.to);
                    }
                }
            }
            continue;
        }
        if world.attacker.as_ref().and_then(|a| a.next_due(now)).is_some_and(|t| t <= now) {
            attack_step(&mut world, &mut casters, now);
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
        if let Some(i) = world.apps.iter().position(|a| a.pending_done.first_key_value().is_some_and(|((at, _), _)| *at <= now)) {
            // `drain` makes the due calls.
            world.drain(now, i);
            world.logs[i].backpressured += casters[i].wake(now);
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
    let mut net = world.net.stats;
    if let Some(a) = world.attacker {
        net.attack = a.stats;
    }
    Ok(Outcome { scenario: scenario.clone(), members: world.logs, net, quiet_from, end: now, steps, digest: world.digest.0, truncated })
}

/// The attacker acts at `now`: hands a waiting copy to a lingering member,
/// or makes the injection due.
fn attack_step(world: &mut World, casters: &mut [workload::Caster], now: Instant) {
    let Some(mut attacker) = world.attacker.take() else { return };
    if let Some(feed) = attacker.feeds.pop_front() {
        world.attacker = Some(attacker);
        if let Some(effect) = handle_foreign(world, casters, now, feed.to, feed.data) {
            let a = world.attacker.as_mut().expect("put back above");
            if let Some(l) = a.lingering.get(&feed.to).map(|&n| &mut a.stats.lingered[n]) {
                l.fed.count(effect);
                if feed.after_view {
                    l.after_view.count(effect);
                }
            }
        }
        return;
    }
    let running: Vec<usize> = (0..world.nodes.len()).filter(|&i| world.nodes[i].is_some()).collect();
    let injection = attacker.inject(now, &running, &world.logs);
    world.attacker = Some(attacker);
    let Some(Some(inj)) = injection else { return };
    world.digest.u64(0x1_0700 + inj.to as u64);
    world.digest.u64(fnv1a64(&inj.data));
    let effect = handle_foreign(world, casters, now, inj.to, inj.data);
    let a = world.attacker.as_mut().expect("put back above");
    if let Some(effect) = effect {
        a.stats.kinds[inj.kind as usize].effects.count(effect);
    }
    if let Some(stack) = world.nodes[inj.to].as_ref() {
        attack::record_peaks(&mut a.stats.peaks, &stack.stats());
    }
}

/// Hands `data` (not from the network) to member `to`'s stack and drains
/// it; what the stack did with it, if it is running.
fn handle_foreign(world: &mut World, casters: &mut [workload::Caster], now: Instant, to: usize, data: Bytes) -> Option<attack::Effect> {
    let stack = world.nodes[to].as_mut()?;
    let before = attack::Gauges::of(stack);
    stack.handle_datagram(now, data);
    // Judged before the drain: what the datagram itself did, not the
    // application's reaction to it.
    let after = attack::Gauges::of(stack);
    world.logs[to].backpressured += casters[to].wake(now);
    world.drain(now, to);
    Some(before.effect(after))
}

fn cast(world: &mut World, caster: &mut workload::Caster, now: Instant, i: usize) {
    let Some(stack) = world.nodes[i].as_mut() else {
        caster.stop(now);
        return;
    };
    let (payload, order) = caster.next_cast();
    let (len, hash) = (payload.len(), fnv1a64(&payload));
    let result = match order {
        None => stack.cast(now, payload),
        Some(order) => stack.cast_ordered(now, payload, order),
    };
    match result {
        Ok(()) => {
            let k = caster.next_k;
            world.logs[i].casts.push(CastRecord { k, at: now, len, hash });
            world.digest.u64(0xA0 + i as u64);
            world.digest.u64(k);
            world.digest.u64(hash);
            if order.is_some() {
                world.digest.u64(0xF1F0);
            }
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
