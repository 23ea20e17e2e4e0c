//! # VSYNC: group membership and virtual synchrony
//!
//! VSYNC decides who is in the group and makes every change of membership a
//! clean cut through the message stream, in the manner of Isis's GMS and
//! flush, Horus's `VSYNC`/`GMP` and JGroups' `GMS` + `FLUSH`.
//!
//! * **Views.** Members install a sequence of views: an id (a counter that
//!   grows with every view, and the member that made it) and a member list
//!   whose order is rank; rank 0 is the coordinator. Every member that
//!   installs a view installs the same member list under that id, and in the
//!   primary partition each view has exactly one successor.
//! * **Joining.** A member starts outside any view and asks its *seeds*
//!   (`StackConfig::members`: any live members, not the whole group) to let
//!   it in, every `join_retry_ms`. A member that gets the request answers
//!   that a group exists and passes it to its coordinator, which admits the
//!   joiner in the next view. A member that hears of no group for
//!   `join_timeout_ms`, and of no lower-addressed member trying to join,
//!   founds the group alone; members started together thus form one group
//!   (the lowest founds, the others join it). Two groups founded
//!   concurrently (lost requests) find each other by probing and merge.
//! * **Failure detection.** Members cast a heartbeat every `heartbeat_ms`; a
//!   member not heard from for `suspect_ms` is suspected, reported to the
//!   coordinator, and removed by the next view change. The defaults give ten
//!   heartbeats per timeout, so that heavy loss (20%) almost never makes a
//!   live member look dead; a member removed by mistake rejoins. A crashed member is
//!   out of the view in about `suspect_ms` plus a few round trips. A
//!   member whose own application is behind (`Context::app_behind`: the
//!   runtime reads nothing for the group then) suspects nobody until it
//!   catches up, since the others' silence is its own. A
//!   suspicion passed up from below ([`Up::Suspect`]: a connection-based
//!   transport lost its connection to a member) counts at once.
//! * **The flush.** The coordinator (the lowest-ranked member it does not
//!   suspect) runs every change as a round:
//!
//!   ```text
//!   coordinator              participants (the old view's members not suspected)
//!       | --- Flush(ballot, participants) --->|  block: the application's casts wait;
//!       |                                     |  casts of departing members are held
//!       | <-- FlushState(sent, available) ----|  how many casts each one sent, and
//!       |                                     |  holds of each departing sender
//!       | --- Cut(outcome, cut, holders) ---->|  deliver exactly the cut: participants'
//!       |                                     |  casts arrive through NAK, departed
//!       |                                     |  senders' are relayed by a holder's NAK
//!       | <-- FlushOk ------------------------|
//!       | --- View(outcome) ----------------->|  install the new view (joiners too),
//!       |                                     |  release the held casts into it
//!   ```
//!
//!   The cut is, for each participant, every cast it sent in the old view,
//!   and for each departed sender, the most any participant received. So
//!   every member that moves from view V to view W delivered the same
//!   messages in V, each in V. A departing sender's casts held for the cut
//!   keep their place: every cast that comes up after one of them waits
//!   behind it, so the order of the layers below (CAUSAL's causal order)
//!   survives the hold. Casts past the cut hold nothing back: any cast that
//!   depends on one would have brought it into the cut.
//! * **Coordinator failure.** A round is identified by a ballot; a
//!   participant answers only the highest ballot it has seen and reports
//!   the outcome and cut it last flushed to. A new coordinator that learns of
//!   such an outcome must decide it again, with the same cut (Paxos's rule
//!   for a new leader), so a view that anyone may have installed is never
//!   replaced by a different one.
//! * **Partitions.** A round whose participants are a majority of the old
//!   view (or exactly half including its coordinator) decides a primary
//!   view; otherwise the view it installs is marked non-primary, and by
//!   default a non-primary view delivers nothing and accepts no casts (the
//!   application sees the view with `is_primary() == false`). Its
//!   coordinator probes the members it knew; when the network heals, the
//!   primary partition invites it and its members rejoin with state
//!   transfer. With `merge=true` non-primary views go on working, and any
//!   two views of the group that find each other merge: the smaller (or
//!   non-primary) one dissolves and its members join the other. What holds
//!   across a merge: virtual synchrony within each side; no message
//!   delivered on one side is delivered on the other; the absorbed side's
//!   members take the absorbing side's state (updates made on the absorbed
//!   side are not carried over unless the application reconciles them).
//! * **State transfer.** When members join, the new view's coordinator
//!   emits [`Up::StateRequest`] just before the new view, after every
//!   delivery of the old one; the application answers with state chunks
//!   ([`Down::StateChunk`], [`Down::StateDone`]), sent reliably and
//!   flow-controlled to the joiners. A joiner emits its view, then
//!   [`Up::StateBegin`], the chunks and [`Up::StateDone`], and only then the
//!   deliveries of its first view. If the view changes before the state is
//!   complete the transfer starts again from the new view's coordinator.
//! * **Leaving.** A leaving member asks its coordinator; the group installs
//!   a view without it at once (through the flush, so its last casts are
//!   delivered), and the member gets [`Up::Left`].
//!
//! [`Down::Flush`] is answered (by NAK) once this member's casts are
//! stable; while a change runs it waits behind the blocked casts.
//!
//! ## What it needs below
//! Reliable FIFO casts and sends within a view (NAK), able to obtain a
//! departed sender's casts from another member that holds them
//! ([`Down::Recover`]); the layers between NAK and VSYNC must pass casts up
//! one to one, since the cut counts casts in NAK's numbering. Its
//! control messages travel either through NAK's reliable point-to-point
//! channel within the old view (the flush) or out of band with their own
//! retries (heartbeats, joins, views).
//!
//! ## Header
//! One kind byte; see `wire.rs`. Application casts and sends carry just that
//! byte.
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `heartbeat_ms` | 150 | period of the heartbeat |
//! | `suspect_ms` | 1500 | silence after which a member is suspected |
//! | `join_retry_ms` | 200 | period of join requests, of view retransmissions and leave requests |
//! | `join_timeout_ms` | 1000 | silence after which a member that hears of no group founds one |
//! | `probe_ms` | 1000 | period at which a coordinator probes known members outside its view |
//! | `merge` | false | non-primary views keep working and merge when they meet |
//!
//! ## Bad input
//! Control payloads are decoded under a size limit into typed messages and
//! checked before use; traffic from non-members, from other views, from an
//! older round or for a stale state transfer is dropped and counted by
//! reason in the stats; nothing a packet says can make the layer panic.

mod wire;

#[cfg(test)]
mod tests;

use hashbrown::HashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use strata_stack::{
    Context, Down, Instant, Layer, LayerDescriptor, MemberId, Msg, MsgFlags, ParamKind, ParamSpec, Params, Problem, Props, Stats, TimerKey, Up, View, ViewId,
};
use wire::{kind, Accepted, Ballot, Control, Outcome};

/// The `VSYNC` descriptor.
pub const VSYNC: LayerDescriptor = LayerDescriptor {
    name: "VSYNC",
    summary: "membership with virtual synchrony: joins, leaves, heartbeat failure detection, flush, state transfer, primary partition",
    requires: Props::RELIABLE.union(Props::FIFO),
    provides: Props::MEMBERSHIP,
    params: &[
        ParamSpec { name: "heartbeat_ms", kind: ParamKind::U64 { min: 1, max: 600_000 }, default: "150", doc: "period of the heartbeat", wire: false },
        ParamSpec {
            name: "suspect_ms",
            kind: ParamKind::U64 { min: 2, max: 3_600_000 },
            default: "1500",
            doc: "silence after which a member is suspected and removed",
            wire: false,
        },
        ParamSpec {
            name: "join_retry_ms",
            kind: ParamKind::U64 { min: 1, max: 600_000 },
            default: "200",
            doc: "period of join requests, view retransmissions and leave requests",
            wire: false,
        },
        ParamSpec {
            name: "join_timeout_ms",
            kind: ParamKind::U64 { min: 1, max: 3_600_000 },
            default: "1000",
            doc: "silence after which a member that hears of no group founds one",
            wire: false,
        },
        ParamSpec {
            name: "probe_ms",
            kind: ParamKind::U64 { min: 1, max: 3_600_000 },
            default: "1000",
            doc: "period at which a coordinator probes known members outside its view (finds healed partitions)",
            wire: false,
        },
        ParamSpec {
            name: "merge",
            kind: ParamKind::Bool,
            default: "false",
            doc: "non-primary views keep working, and views that meet merge (default: only the primary partition runs)",
            wire: true,
        },
    ],
    max_header_len: |_| 1,
    build: |p| {
        if p.u64("suspect_ms") <= p.u64("heartbeat_ms") {
            return Err(format!("suspect_ms ({}) must exceed heartbeat_ms ({})", p.u64("suspect_ms"), p.u64("heartbeat_ms")));
        }
        Ok(Box::new(Vsync::new(p)))
    },
};

const TIMER_HEARTBEAT: TimerKey = 0;
const TIMER_JOIN: TimerKey = 1;
const TIMER_RETRY: TimerKey = 2;
const TIMER_PROBE: TimerKey = 3;
const TIMER_ROUND: TimerKey = 4;

/// Most addresses a coordinator probes per period.
const MAX_PROBES: usize = 64;
/// Most contacts (seeds, joiners heard of) remembered outside the view.
const MAX_CONTACTS: usize = 1024;
/// Most times a coordinator retransmits a view to a member that does not acknowledge it.
const VIEW_RETRIES: u32 = 10;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Outside any view, asking to get in.
    Joining,
    /// In `view`.
    Member,
    /// Gone for good.
    Left,
}

/// What this member knows of one sender's casts in the current view.
#[derive(Debug)]
struct Sender {
    id: MemberId,
    /// Casts delivered upwards.
    delivered: u64,
    /// Casts received but not delivered (they wait in `Vsync::held`).
    held: u64,
}

impl Sender {
    fn new(id: MemberId) -> Self {
        Sender { id, delivered: 0, held: 0 }
    }

    fn available(&self) -> u64 {
        self.delivered + self.held
    }
}

/// Whether a sender's next cast may be delivered now ([`Vsync::may_deliver`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Release {
    Now,
    /// Not before the round decides a cut: casts that came after it wait too.
    AwaitCut,
    /// Past the cut this member is bound to: not in this view, unless a
    /// later round decides otherwise.
    BeyondCut,
}

/// This member's part in the round it answered last.
#[derive(Debug)]
struct Participation {
    ballot: Ballot,
    participants: Vec<MemberId>,
    /// The decided outcome and cut, once known.
    decided: Option<Accepted>,
    flushed: bool,
}

/// What a participant reported to the coordinator.
#[derive(Debug)]
struct Report {
    sent: u64,
    loading: bool,
    available: Vec<u64>,
    accepted: Option<Accepted>,
}

/// A round this member coordinates.
#[derive(Debug)]
struct Round {
    ballot: Ballot,
    participants: Vec<MemberId>,
    reports: BTreeMap<MemberId, Report>,
    decided: Option<Accepted>,
    oks: BTreeSet<MemberId>,
}

/// The membership layer.
#[derive(Debug)]
pub struct Vsync {
    heartbeat: Duration,
    suspect: Duration,
    join_retry: Duration,
    join_timeout: Duration,
    probe: Duration,
    merge: bool,

    phase: Phase,
    local: MemberId,
    view: Arc<View>,
    /// Whether this member was ever in a view: a member that was may not
    /// found a new group (it could split the group it lost).
    ever_member: bool,
    /// Contacts outside the view: seeds, and members learned from probes.
    seeds: BTreeSet<MemberId>,
    /// Every member ever seen in a view here (probe targets once outside the view).
    known: BTreeSet<MemberId>,

    senders: Vec<Sender>,
    /// Casts received but not delivered, all senders together in the order
    /// they came up: a departing sender's casts during a round, and every
    /// cast that came after one of those. The order matters: a causal layer
    /// below (`FRAG:NAK:CAUSAL:VSYNC`) passed them up in causal order, and a
    /// participant's cast may depend on a departing sender's held one.
    held: VecDeque<(usize, Msg)>,
    /// Own casts sent in the current view.
    sent: u64,
    last_heard: Vec<Instant>,
    suspects: BTreeSet<MemberId>,
    /// A change is under way: the application's casts wait in `queued`.
    blocked: bool,
    queued: VecDeque<Down>,

    promised: Option<Ballot>,
    accepted: Option<Accepted>,
    participation: Option<Participation>,
    round: Option<Round>,
    max_ballot: u64,
    max_counter: u64,
    joiners: BTreeSet<MemberId>,
    leavers: BTreeSet<MemberId>,
    merge_into: Option<Vec<MemberId>>,
    /// The view message that installed the current view, for repairs.
    view_msg: Option<Control>,
    view_unacked: BTreeSet<MemberId>,
    view_retries: u32,
    /// The outcome that removes this coordinator, which it announced and
    /// acts on once every member acknowledged it (or the retries ran out).
    departing: Option<Outcome>,
    last_repair: HashMap<MemberId, Instant>,

    joining_since: Instant,
    group_seen: Option<Instant>,
    fellow_joiners: BTreeMap<MemberId, Instant>,
    leaving: bool,

    loading: bool,
    state_provider: Option<MemberId>,
    loading_queue: VecDeque<Up>,
    providing: BTreeMap<u64, Vec<MemberId>>,
    next_token: u64,

    views_installed: u64,
    rounds_started: u64,
    delivered: u64,
    /// Departed senders' casts asked of a holder, through NAK ([`Down::Recover`]).
    recoveries: u64,
    suspicions: u64,
    /// Failure checks made while the application was behind (no suspicion possible).
    checks_while_app_behind: u64,
    state_chunks_sent: u64,
    state_chunks_received: u64,
    beyond_cut: u64,
}

impl Vsync {
    /// A layer with the given parameters.
    pub fn new(p: &Params) -> Self {
        let placeholder = MemberId::sim(0);
        Vsync {
            heartbeat: Duration::from_millis(p.u64("heartbeat_ms")),
            suspect: Duration::from_millis(p.u64("suspect_ms")),
            join_retry: Duration::from_millis(p.u64("join_retry_ms")),
            join_timeout: Duration::from_millis(p.u64("join_timeout_ms")),
            probe: Duration::from_millis(p.u64("probe_ms")),
            merge: p.bool("merge"),
            phase: Phase::Joining,
            local: placeholder,
            view: View::new(ViewId { counter: 0, creator: placeholder }, vec![placeholder]).expect("one member"),
            ever_member: false,
            seeds: BTreeSet::new(),
            known: BTreeSet::new(),
            senders: Vec::new(),
            held: VecDeque::new(),
            sent: 0,
            last_heard: Vec::new(),
            suspects: BTreeSet::new(),
            blocked: false,
            queued: VecDeque::new(),
            promised: None,
            accepted: None,
            participation: None,
            round: None,
            max_ballot: 0,
            max_counter: 0,
            joiners: BTreeSet::new(),
            leavers: BTreeSet::new(),
            merge_into: None,
            view_msg: None,
            view_unacked: BTreeSet::new(),
            view_retries: 0,
            departing: None,
            last_repair: HashMap::new(),
            joining_since: Instant::ZERO,
            group_seen: None,
            fellow_joiners: BTreeMap::new(),
            leaving: false,
            loading: false,
            state_provider: None,
            loading_queue: VecDeque::new(),
            providing: BTreeMap::new(),
            next_token: 0,
            views_installed: 0,
            rounds_started: 0,
            delivered: 0,
            recoveries: 0,
            suspicions: 0,
            checks_while_app_behind: 0,
            state_chunks_sent: 0,
            state_chunks_received: 0,
            beyond_cut: 0,
        }
    }

    // ---- small helpers ----------------------------------------------------

    /// The rank of `m` in the view this member last installed; none before
    /// its first (the view then is only the seeds it was started with).
    fn rank_of(&self, m: &MemberId) -> Option<usize> {
        if self.ever_member {
            self.view.rank_of(m)
        } else {
            None
        }
    }

    fn is_member(&self, m: &MemberId) -> bool {
        self.phase == Phase::Member && self.rank_of(m).is_some()
    }

    /// The lowest-ranked member this member does not suspect.
    fn coordinator(&self) -> MemberId {
        self.view.members().iter().copied().find(|m| !self.suspects.contains(m)).unwrap_or(self.local)
    }

    fn is_coordinator(&self) -> bool {
        self.phase == Phase::Member && self.coordinator() == self.local
    }

    /// Whether the view delivers and accepts casts.
    fn active(&self) -> bool {
        self.phase == Phase::Member && (self.view.is_primary() || self.merge)
    }

    fn update_backpressure(&self, cx: &mut Context<'_>) {
        cx.set_backpressure(self.blocked || !self.active() || self.leaving);
    }

    fn send_control(&self, cx: &mut Context<'_>, to: MemberId, c: &Control, oob: bool) {
        cx.down(Down::Send { to, msg: wire::control(c, oob) });
    }

    /// Passes an event up, behind the state while it loads.
    fn emit(&mut self, cx: &mut Context<'_>, ev: Up) {
        if self.loading {
            self.loading_queue.push_back(ev);
        } else {
            cx.up(ev);
        }
    }

    fn block(&mut self, cx: &mut Context<'_>) {
        if !self.blocked {
            self.blocked = true;
            // Not behind a state being loaded: casts stop now.
            cx.up(Up::Block);
            self.update_backpressure(cx);
        }
    }

    /// Whether `participants` may decide a primary view after `self.view`:
    /// a majority of it, or exactly half with its coordinator.
    fn quorum(&self, participants: &[MemberId]) -> bool {
        let (p, n) = (participants.len() * 2, self.view.len());
        p > n || (p == n && participants.contains(&self.view.coordinator()))
    }

    /// A pre-view of this member alone, so that the layers below address
    /// nobody while it is outside any group.
    fn solo_below(&self, cx: &mut Context<'_>) {
        let counter = self.view.id().counter;
        let solo = View::new(ViewId { counter, creator: self.local }, vec![self.local]).expect("one member");
        cx.down(Down::View(solo));
    }

    // ---- joining ----------------------------------------------------------

    fn start_joining(&mut self, cx: &mut Context<'_>) {
        self.phase = Phase::Joining;
        self.joining_since = cx.now();
        self.participation = None;
        self.round = None;
        self.promised = None;
        self.accepted = None;
        self.loading = false;
        self.loading_queue.clear();
        self.providing.clear();
        self.fellow_joiners.clear();
        self.suspects.clear();
        self.merge_into = None;
        self.departing = None;
        cx.cancel_timer(TIMER_HEARTBEAT);
        cx.cancel_timer(TIMER_PROBE);
        cx.cancel_timer(TIMER_ROUND);
        self.update_backpressure(cx);
        self.send_joins(cx);
        cx.set_timer(TIMER_JOIN, cx.now() + self.join_retry);
    }

    fn send_joins(&mut self, cx: &mut Context<'_>) {
        let c = Control::Join { joiner: self.local, last_counter: self.max_counter };
        for &s in &self.seeds {
            self.send_control(cx, s, &c, true);
        }
    }

    /// Leaves a view this member was removed from (or that dissolved) and
    /// asks to join again through `contacts`.
    fn rejoin(&mut self, cx: &mut Context<'_>, contacts: &[MemberId]) {
        if self.leaving {
            return self.finish_leave(cx);
        }
        self.block(cx);
        self.add_seeds(contacts.iter().copied());
        self.group_seen = Some(cx.now());
        self.solo_below(cx);
        self.start_joining(cx);
    }

    /// Remembers contacts outside the view, up to [`MAX_CONTACTS`] (what a
    /// stranger claims must not grow memory without bound).
    fn add_seeds(&mut self, contacts: impl IntoIterator<Item = MemberId>) {
        for m in contacts {
            if self.seeds.len() >= MAX_CONTACTS {
                break;
            }
            if m != self.local {
                self.seeds.insert(m);
            }
        }
    }

    fn join_tick(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        self.fellow_joiners.retain(|_, heard| now.saturating_since(*heard) < self.join_timeout);
        let quiet_since = self.group_seen.unwrap_or(self.joining_since).max(self.joining_since);
        let lower_joiner = self.fellow_joiners.keys().any(|m| *m < self.local);
        if !self.ever_member && now.saturating_since(quiet_since) >= self.join_timeout && !lower_joiner {
            return self.found(cx);
        }
        self.send_joins(cx);
        cx.set_timer(TIMER_JOIN, now + self.join_retry);
    }

    /// Founds the group: no primary view answered. Members heard trying to
    /// join too are admitted by the first change, all at once.
    fn found(&mut self, cx: &mut Context<'_>) {
        self.joiners.extend(std::mem::take(&mut self.fellow_joiners).into_keys());
        let id = ViewId { counter: self.max_counter + 1, creator: self.local };
        let outcome = Outcome::Install { id, members: vec![self.local], primary: true, state_to: Vec::new(), provider: None };
        let msg = Control::View { from: self.view.id(), ballot: Ballot { number: 0, coordinator: self.local }, outcome: outcome.clone() };
        self.install(cx, &outcome, msg);
    }

    // ---- installing views -------------------------------------------------

    fn install(&mut self, cx: &mut Context<'_>, outcome: &Outcome, msg: Control) {
        let Outcome::Install { id, members, primary, state_to, provider } = outcome else { return };
        let Ok(view) = View::with_primary(*id, members.clone(), *primary) else { return cx.drop_malformed("bad_view") };
        // The state as of now: after every delivery of the old view.
        self.providing.clear();
        if *provider == Some(self.local) && !state_to.is_empty() {
            let token = self.next_token;
            self.next_token += 1;
            self.providing.insert(token, state_to.clone());
            cx.up(Up::StateRequest { token, joiners: state_to.clone() });
        }
        let now = cx.now();
        self.phase = Phase::Member;
        self.ever_member = true;
        self.view = view.clone();
        // Casts still held belonged to no cut: nobody delivers them.
        self.beyond_cut += self.held.len() as u64;
        self.held.clear();
        self.senders = members.iter().map(|&m| Sender::new(m)).collect();
        self.last_heard = vec![now; members.len()];
        self.sent = 0;
        // Members that flushed for this view are alive: only suspicions of
        // members that took no part carry over.
        let flushed: Vec<MemberId> = self.accepted.as_ref().map(|a| a.flushed.clone()).unwrap_or_default();
        self.suspects.retain(|m| view.contains(m) && !flushed.contains(m));
        self.joiners.retain(|m| !view.contains(m));
        self.leavers.retain(|m| view.contains(m));
        self.promised = None;
        self.accepted = None;
        self.participation = None;
        self.round = None;
        self.merge_into = None;
        self.max_counter = self.max_counter.max(id.counter);
        self.known.extend(members.iter().copied());
        self.seeds.retain(|m| !view.contains(m));
        self.view_msg = Some(msg);
        self.view_unacked.clear();
        self.views_installed += 1;
        cx.cancel_timer(TIMER_JOIN);
        cx.cancel_timer(TIMER_ROUND);

        let was_loading = self.loading;
        let needs_state = state_to.contains(&self.local);
        self.loading = needs_state && provider.is_some();
        if self.loading {
            // Whatever was held for the application is in the state to come.
            self.loading_queue.clear();
            self.state_provider = *provider;
        } else if was_loading {
            if needs_state {
                // Every member that had the state failed before any finished
                // loading it. The members left agree on the old view's
                // deliveries (the flush saw to it), so they go on from an
                // empty state plus those.
                let what = "the group's state was lost: every member holding it failed before it was transferred; continuing from an empty state".to_string();
                cx.up(Up::Problem(Problem { layer: "VSYNC", what }));
                // Begin again (drop any chunks received), then end: empty.
                cx.up(Up::StateBegin);
                cx.up(Up::StateDone);
            }
            self.flush_loading_queue(cx);
        }
        cx.down(Down::View(view.clone()));
        cx.up(Up::View(view));
        if self.loading {
            cx.up(Up::StateBegin);
        }
        self.blocked = false;
        if self.active() {
            while let Some(ev) = self.queued.pop_front() {
                self.down_now(cx, ev);
            }
        }
        self.update_backpressure(cx);
        cx.set_timer(TIMER_HEARTBEAT, now + self.heartbeat);
        if self.view.len() > 1 {
            self.send_heartbeat(cx);
        }
        cx.set_timer(TIMER_PROBE, now + self.probe);
        if self.leaving {
            self.request_leave(cx);
        }
        self.maybe_change(cx);
    }

    fn flush_loading_queue(&mut self, cx: &mut Context<'_>) {
        while let Some(ev) = self.loading_queue.pop_front() {
            cx.up(ev);
        }
    }

    /// Applies a decided outcome at a member that flushed for it.
    fn apply(&mut self, cx: &mut Context<'_>, outcome: &Outcome, msg: Control) {
        match outcome {
            Outcome::Install { members, .. } if members.contains(&self.local) => self.install(cx, outcome, msg),
            Outcome::Install { members, .. } => {
                let members = members.clone();
                self.rejoin(cx, &members)
            }
            Outcome::Dissolve { into } => {
                let mut contacts = into.clone();
                contacts.extend(self.view.members().iter().copied());
                self.rejoin(cx, &contacts)
            }
        }
    }

    // ---- leaving ----------------------------------------------------------

    fn request_leave(&mut self, cx: &mut Context<'_>) {
        if self.is_coordinator() {
            self.leavers.insert(self.local);
            self.maybe_change(cx);
        } else {
            let c = Control::Leave { member: self.local };
            self.send_control(cx, self.coordinator(), &c, true);
        }
        if cx.timer(TIMER_RETRY).is_none() {
            cx.set_timer(TIMER_RETRY, cx.now() + self.join_retry);
        }
    }

    fn finish_leave(&mut self, cx: &mut Context<'_>) {
        if self.phase == Phase::Left {
            return;
        }
        self.phase = Phase::Left;
        self.blocked = false;
        for t in [TIMER_HEARTBEAT, TIMER_JOIN, TIMER_RETRY, TIMER_PROBE, TIMER_ROUND] {
            cx.cancel_timer(t);
        }
        self.solo_below(cx);
        cx.down(Down::Leave);
    }

    // ---- the application's traffic -----------------------------------------

    /// Passes an application event down now (the view is active).
    fn down_now(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(mut msg) => {
                let oob = msg.flags().contains(MsgFlags::OOB);
                msg.push(&[kind::CAST]);
                if !oob {
                    self.sent += 1;
                }
                cx.down(Down::Cast(msg));
            }
            Down::Send { to, mut msg } => {
                msg.push(&[kind::SEND]);
                cx.down(Down::Send { to, msg });
            }
            other => cx.down(other),
        }
    }

    /// A cast from `from`, of rank `rank` in the view if it is a member.
    fn on_cast(&mut self, cx: &mut Context<'_>, from: MemberId, rank: Option<usize>, msg: Msg) {
        if msg.flags().contains(MsgFlags::OOB) {
            return self.emit(cx, Up::Cast { from, msg });
        }
        let Some(r) = rank.filter(|_| self.phase == Phase::Member) else { return cx.drop_malformed("cast_not_member") };
        if self.held.is_empty() && self.may_deliver(r) == Release::Now {
            self.deliver(cx, r, msg);
        } else {
            self.senders[r].held += 1;
            self.held.push_back((r, msg));
            self.release_held(cx);
        }
        self.check_flushed(cx);
    }

    /// Whether the next cast of sender `r` may be delivered now. During a
    /// round, a departing sender's casts wait for the cut (this member
    /// reported what it had); once a cut is decided, nothing past it is
    /// delivered; and a cut this member flushed to binds it until a later
    /// round decides otherwise. Casts that may not be delivered are held, in
    /// order behind `delivered`, so `available` is what this member can hand
    /// on.
    fn may_deliver(&self, r: usize) -> Release {
        let s = &self.senders[r];
        let within = |cut: &[u64]| if s.delivered < cut[r] { Release::Now } else { Release::BeyondCut };
        if let Some(p) = &self.participation {
            match &p.decided {
                Some(d) => return within(&d.cut),
                None if !p.participants.contains(&s.id) => return Release::AwaitCut,
                None => {}
            }
        }
        self.accepted.as_ref().map_or(Release::Now, |a| within(&a.cut))
    }

    /// Delivers the held casts that may now be, in the order they came up.
    /// A cast awaiting the cut holds back every cast after it, whatever its
    /// sender: delivering a participant's cast before a departing sender's
    /// cast that came up first could break causal order, since the
    /// participant may have delivered that cast before casting its own.
    /// A cast beyond the cut holds nothing back: whoever cast after
    /// delivering it reported it available, so the cut would include it;
    /// the casts behind it are therefore concurrent with it.
    fn release_held(&mut self, cx: &mut Context<'_>) {
        let mut i = 0;
        while let Some(&(r, _)) = self.held.get(i) {
            match self.may_deliver(r) {
                Release::Now => {
                    let Some((_, msg)) = self.held.remove(i) else { break };
                    self.senders[r].held -= 1;
                    self.deliver(cx, r, msg);
                }
                Release::AwaitCut => break,
                Release::BeyondCut => i += 1,
            }
        }
    }

    fn deliver(&mut self, cx: &mut Context<'_>, r: usize, msg: Msg) {
        let s = &mut self.senders[r];
        s.delivered += 1;
        let from = s.id;
        self.delivered += 1;
        self.emit(cx, Up::Cast { from, msg });
    }

    // ---- failure detection ---------------------------------------------------

    /// Records that `from` is alive; returns its rank if it is a member.
    fn heard(&mut self, cx: &Context<'_>, from: &MemberId) -> Option<usize> {
        let rank = self.rank_of(from);
        if let Some(r) = rank {
            self.last_heard[r] = cx.now();
        }
        rank
    }

    fn send_heartbeat(&mut self, cx: &mut Context<'_>) {
        cx.down(Down::Cast(wire::control(&Control::Heartbeat { view: self.view.id() }, true)));
    }

    fn heartbeat_tick(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        if self.view.len() > 1 {
            self.send_heartbeat(cx);
        }
        if cx.app_behind() {
            // Others' datagrams wait unread until the application catches
            // up: their silence means nothing. Give each a fresh period
            // from now, so that a failure still shows once input resumes.
            self.last_heard.iter_mut().for_each(|t| *t = now);
            self.checks_while_app_behind += 1;
        }
        let mut newly = Vec::new();
        for (r, m) in self.view.members().iter().enumerate() {
            if *m != self.local && now.saturating_since(self.last_heard[r]) > self.suspect && !self.suspects.contains(m) {
                newly.push(*m);
            }
        }
        for m in newly {
            self.suspect(cx, m);
        }
        if !self.suspects.is_empty() && !self.is_coordinator() {
            let c = Control::Suspect(self.suspects.iter().copied().collect());
            self.send_control(cx, self.coordinator(), &c, true);
        }
        self.maybe_change(cx);
        cx.set_timer(TIMER_HEARTBEAT, now + self.heartbeat);
    }

    fn suspect(&mut self, cx: &mut Context<'_>, m: MemberId) {
        if m != self.local && self.view.contains(&m) && self.suspects.insert(m) {
            self.suspicions += 1;
            tracing::debug!(member = %self.local, suspect = %m, "suspect");
            self.emit(cx, Up::Suspect(m));
        }
    }

    /// A suspicion from below (a lost TCP connection): suspected at once
    /// and reported to the coordinator, as if the heartbeat had timed out.
    fn transport_suspects(&mut self, cx: &mut Context<'_>, m: MemberId) {
        if self.phase != Phase::Member || m == self.local || !self.view.contains(&m) || self.suspects.contains(&m) {
            return;
        }
        self.suspect(cx, m);
        if !self.is_coordinator() {
            let c = Control::Suspect(self.suspects.iter().copied().collect());
            self.send_control(cx, self.coordinator(), &c, true);
        }
        self.maybe_change(cx);
    }

    /// Answers a lagging member with the message that installed this view
    /// (at most once per heartbeat period per member).
    fn repair(&mut self, cx: &mut Context<'_>, to: MemberId) {
        let now = cx.now();
        if self.last_repair.get(&to).is_some_and(|t| now.saturating_since(*t) < self.heartbeat) {
            return;
        }
        if self.last_repair.len() > 4096 {
            self.last_repair.clear();
        }
        self.last_repair.insert(to, now);
        if let Some(msg) = self.view_msg.clone() {
            self.send_control(cx, to, &msg, true);
        }
    }

    // ---- view changes: the coordinator's side ---------------------------------

    fn maybe_change(&mut self, cx: &mut Context<'_>) {
        if !self.is_coordinator() || self.departing.is_some() {
            return;
        }
        if let Some(round) = &self.round {
            if round.participants.iter().any(|m| self.suspects.contains(m)) {
                self.start_round(cx);
            }
            return;
        }
        let needed = self.view.members().iter().any(|m| self.suspects.contains(m))
            || !self.leavers.is_empty()
            || self.merge_into.is_some()
            || (!self.joiners.is_empty() && self.active());
        if needed {
            self.start_round(cx);
        }
    }

    fn start_round(&mut self, cx: &mut Context<'_>) {
        self.max_ballot += 1;
        let ballot = Ballot { number: self.max_ballot, coordinator: self.local };
        let participants: Vec<MemberId> = self.view.members().iter().copied().filter(|m| !self.suspects.contains(m)).collect();
        self.rounds_started += 1;
        tracing::debug!(member = %self.local, ballot = ballot.number, ?participants, "round");
        let c = Control::Flush { ballot, view: self.view.id(), participants: participants.clone() };
        for &p in &participants {
            self.send_control(cx, p, &c, false);
        }
        self.round = Some(Round { ballot, participants, reports: BTreeMap::new(), decided: None, oks: BTreeSet::new() });
        cx.set_timer(TIMER_ROUND, cx.now() + self.suspect * 2);
    }

    fn on_flush_state(&mut self, cx: &mut Context<'_>, from: MemberId, ballot: Ballot, report: Report) {
        let n = self.view.len();
        let Some(round) = self.round.as_mut().filter(|r| r.ballot == ballot && r.decided.is_none()) else { return cx.drop_malformed("stale_round") };
        if !round.participants.contains(&from) || report.available.len() != n {
            return cx.drop_malformed("bad_flush_state");
        }
        round.reports.insert(from, report);
        if round.reports.len() == round.participants.len() {
            self.decide(cx);
        }
    }

    /// Every participant reported: decide the outcome and the cut.
    fn decide(&mut self, cx: &mut Context<'_>) {
        let Some(round) = self.round.as_ref() else { return };
        let members = self.view.members().to_vec();
        let primary_round = self.view.is_primary() && self.quorum(&round.participants);
        // Paxos: an outcome some participant flushed for may be installed
        // somewhere; decide it again. A primary round considers only primary
        // outcomes (a minority's views never bind the majority), a
        // non-primary round only non-primary ones.
        let adopt = round
            .reports
            .values()
            .filter_map(|r| r.accepted.as_ref())
            .filter(|a| match &a.outcome {
                Outcome::Install { primary, .. } => *primary == primary_round,
                Outcome::Dissolve { .. } => primary_round,
            })
            .filter(|a| a.cut.len() == members.len())
            .max_by_key(|a| a.ballot)
            .cloned();
        let decided = match adopt {
            Some(a) => {
                let flushed: Vec<MemberId> = round.participants.iter().copied().filter(|m| a.flushed.contains(m)).collect();
                Accepted { ballot: round.ballot, outcome: a.outcome, cut: a.cut, flushed }
            }
            None => {
                // A participant that flushed for a primary outcome is bound to
                // it (it may have installed that view already): a
                // non-primary round counts it as gone, lest its view name
                // members that moved on to the primary one.
                let bound = |m: &MemberId| {
                    !primary_round
                        && *m != self.local
                        && round.reports.get(m).and_then(|r| r.accepted.as_ref()).is_some_and(|a| matches!(a.outcome, Outcome::Install { primary: true, .. }))
                };
                let reports = || round.reports.iter().filter(|(m, _)| !bound(m)).map(|(_, r)| r);
                let cut: Vec<u64> = members
                    .iter()
                    .enumerate()
                    .map(|(r, m)| match round.reports.get(m).filter(|_| !bound(m)) {
                        Some(rep) => rep.sent,
                        None => reports().map(|rep| rep.available[r]).max().unwrap_or(0),
                    })
                    .collect();
                let participants: Vec<MemberId> = round.participants.iter().copied().filter(|m| !bound(m)).collect();
                let survivors: Vec<MemberId> = participants.iter().copied().filter(|m| !self.leavers.contains(m)).collect();
                let outcome = match (&self.merge_into, survivors.is_empty()) {
                    (Some(into), _) => Outcome::Dissolve { into: into.clone() },
                    (None, true) => Outcome::Dissolve { into: Vec::new() },
                    (None, false) => {
                        let admit = primary_round || (self.merge && !self.view.is_primary());
                        let loading: Vec<MemberId> = survivors.iter().copied().filter(|m| round.reports.get(m).is_some_and(|r| r.loading)).collect();
                        let provider = survivors.iter().copied().find(|m| !loading.contains(m));
                        let joiners: Vec<MemberId> =
                            if admit && provider.is_some() { self.joiners.iter().copied().filter(|j| !members.contains(j)).collect() } else { Vec::new() };
                        let mut new_members = survivors.clone();
                        new_members.extend(joiners.iter().copied());
                        let mut state_to = joiners;
                        state_to.extend(loading);
                        let id = ViewId { counter: self.max_counter.max(self.view.id().counter) + 1, creator: self.local };
                        Outcome::Install { id, members: new_members, primary: primary_round, state_to, provider }
                    }
                };
                Accepted { ballot: round.ballot, outcome, cut, flushed: participants }
            }
        };
        let holders: Vec<Option<MemberId>> = (0..members.len())
            .map(|r| {
                decided
                    .flushed
                    .iter()
                    .filter_map(|m| round.reports.get(m).map(|rep| (rep.available[r], *m)))
                    .filter(|(avail, _)| *avail >= decided.cut[r])
                    .map(|(_, m)| m)
                    .next()
            })
            .collect();
        if let Outcome::Install { id, .. } = &decided.outcome {
            // A later round (a minority's, after this one is cut off) must not reuse the counter.
            self.max_counter = self.max_counter.max(id.counter);
        }
        tracing::debug!(member = %self.local, ballot = round.ballot.number, outcome = ?decided.outcome, cut = ?decided.cut, "decided");
        let c = Control::Cut { ballot: round.ballot, accepted: decided.clone(), holders };
        for &p in &decided.flushed {
            self.send_control(cx, p, &c, false);
        }
        if let Some(round) = self.round.as_mut() {
            round.decided = Some(decided);
        }
    }

    fn on_flush_ok(&mut self, cx: &mut Context<'_>, from: MemberId, ballot: Ballot) {
        let Some(round) = self.round.as_mut().filter(|r| r.ballot == ballot) else { return cx.drop_malformed("stale_round") };
        let Some(decided) = &round.decided else { return cx.drop_malformed("early_flush_ok") };
        if !decided.flushed.contains(&from) {
            return cx.drop_malformed("bad_flush_ok");
        }
        round.oks.insert(from);
        if round.oks.len() == decided.flushed.len() {
            self.finish_round(cx);
        }
    }

    /// Every participant flushed to the cut: announce the outcome.
    fn finish_round(&mut self, cx: &mut Context<'_>) {
        let Some(round) = self.round.take() else { return };
        let Some(decided) = round.decided else { return };
        cx.cancel_timer(TIMER_ROUND);
        let msg = Control::View { from: self.view.id(), ballot: round.ballot, outcome: decided.outcome.clone() };
        let mut to: BTreeSet<MemberId> = round.participants.iter().copied().collect();
        if let Outcome::Install { members, .. } = &decided.outcome {
            to.extend(members.iter().copied());
        }
        to.remove(&self.local);
        for &m in &to {
            self.send_control(cx, m, &msg, true);
        }
        // A coordinator that leaves stays to repeat the view to whoever
        // missed it; after a dissolve, members that missed it adopt it in
        // their own round once they miss this member.
        let removed = matches!(&decided.outcome, Outcome::Install { members, .. } if !members.contains(&self.local));
        if removed && !to.is_empty() {
            self.departing = Some(decided.outcome);
            self.view_msg = Some(msg);
        } else {
            self.apply(cx, &decided.outcome, msg);
        }
        self.view_unacked = to;
        self.view_retries = 0;
        if !self.view_unacked.is_empty() {
            cx.set_timer(TIMER_RETRY, cx.now() + self.join_retry);
        }
    }

    fn round_timeout(&mut self, cx: &mut Context<'_>) {
        let Some(round) = &self.round else { return };
        // Participants that did not answer in time are treated as failed.
        let silent: Vec<MemberId> = match &round.decided {
            None => round.participants.iter().copied().filter(|m| !round.reports.contains_key(m)).collect(),
            Some(d) => d.flushed.iter().copied().filter(|m| !round.oks.contains(m)).collect(),
        };
        for m in silent {
            self.suspect(cx, m);
        }
        self.start_round(cx);
    }

    // ---- view changes: the participant's side ----------------------------------

    fn on_flush(&mut self, cx: &mut Context<'_>, from: MemberId, ballot: Ballot, view: ViewId, participants: Vec<MemberId>) {
        if self.phase != Phase::Member || view != self.view.id() {
            return cx.drop_malformed("flush_other_view");
        }
        if from != ballot.coordinator || !participants.contains(&self.local) || participants.iter().any(|m| self.rank_of(m).is_none()) {
            return cx.drop_malformed("bad_flush");
        }
        if let Some(promised) = self.promised.filter(|p| *p >= ballot) {
            if promised > ballot {
                // Tell the new coordinator to retry above what was promised.
                self.send_control(cx, from, &Control::Reject { promised }, false);
            }
            return cx.drop_malformed("stale_ballot");
        }
        self.promised = Some(ballot);
        self.max_ballot = self.max_ballot.max(ballot.number);
        self.block(cx);
        self.participation = Some(Participation { ballot, participants, decided: None, flushed: false });
        // Senders held back by an earlier round that this one keeps.
        self.release_held(cx);
        let c = Control::FlushState {
            ballot,
            sent: self.sent,
            loading: self.loading,
            available: self.senders.iter().map(Sender::available).collect(),
            accepted: self.accepted.clone(),
        };
        self.send_control(cx, from, &c, false);
    }

    fn on_cut(&mut self, cx: &mut Context<'_>, from: MemberId, ballot: Ballot, decided: Accepted, holders: Vec<Option<MemberId>>) {
        let n = self.view.len();
        let Some(p) = self.participation.as_ref().filter(|p| p.ballot == ballot && from == ballot.coordinator) else {
            return cx.drop_malformed("stale_cut");
        };
        if decided.cut.len() != n || holders.len() != n {
            return cx.drop_malformed("bad_cut");
        }
        if !decided.flushed.contains(&self.local) {
            // Not among those the outcome waits for: the view will say what comes next.
            return;
        }
        if let Some(r) = (0..n).find(|&r| self.senders[r].delivered > decided.cut[r]) {
            let s = &self.senders[r];
            let what = format!("cut of round {} asks for {} casts of {}, but {} were delivered here", ballot.number, decided.cut[r], s.id, s.delivered);
            return cx.up(Up::Problem(Problem { layer: "VSYNC", what }));
        }
        let participants = p.participants.clone();
        if let Some(p) = self.participation.as_mut() {
            p.decided = Some(decided.clone());
        }
        self.release_held(cx);
        for (r, holder) in holders.into_iter().enumerate() {
            let s = &self.senders[r];
            if s.available() < decided.cut[r] && !participants.contains(&s.id) {
                match holder {
                    // Recovered below, by NAK, so that they arrive with every
                    // header of the layers between (CAUSAL orders them).
                    Some(h) if h != self.local => {
                        self.recoveries += 1;
                        cx.down(Down::Recover { sender: s.id, upto: decided.cut[r], holder: h });
                    }
                    _ => {
                        let what = format!("no member holds casts {}..{} of departed {}", s.delivered, decided.cut[r], s.id);
                        cx.up(Up::Problem(Problem { layer: "VSYNC", what }));
                    }
                }
            }
        }
        self.check_flushed(cx);
    }

    fn check_flushed(&mut self, cx: &mut Context<'_>) {
        let Some(p) = self.participation.as_mut() else { return };
        let Some(d) = &p.decided else { return };
        if p.flushed || self.senders.iter().zip(&d.cut).any(|(s, c)| s.delivered != *c) {
            return;
        }
        p.flushed = true;
        if let Outcome::Install { id, .. } = &d.outcome {
            self.max_counter = self.max_counter.max(id.counter);
        }
        self.accepted = Some(d.clone());
        let ballot = p.ballot;
        self.send_control(cx, ballot.coordinator, &Control::FlushOk { ballot }, false);
    }

    fn on_view(&mut self, cx: &mut Context<'_>, from: MemberId, msg: Control) {
        let Control::View { from: from_view, outcome, .. } = &msg else { return };
        if let Outcome::Install { id, .. } = outcome {
            self.max_counter = self.max_counter.max(id.counter);
        }
        match self.phase {
            Phase::Left => {}
            Phase::Joining => match outcome {
                Outcome::Install { id, .. } if id.counter <= self.view.id().counter => cx.drop_malformed("stale_view"),
                Outcome::Install { id, members, .. } if members.contains(&self.local) => {
                    let id = *id;
                    let outcome = outcome.clone();
                    self.install(cx, &outcome, msg);
                    self.send_control(cx, from, &Control::ViewAck { id }, true);
                }
                _ => cx.drop_malformed("view_without_joiner"),
            },
            Phase::Member => {
                if let Outcome::Install { id, .. } = outcome {
                    if *id == self.view.id() {
                        let id = *id;
                        return self.send_control(cx, from, &Control::ViewAck { id }, true);
                    }
                }
                if *from_view != self.view.id() {
                    return cx.drop_malformed("view_other_lineage");
                }
                let outcome = outcome.clone();
                let flushed_for_it = self.accepted.as_ref().is_some_and(|a| a.outcome == outcome);
                // Only the primary partition can remove this member; a
                // minority's view, or a dissolve this member took no part
                // in, says nothing about it.
                let excludes_me = matches!(&outcome, Outcome::Install { members, primary: true, .. } if !members.contains(&self.local));
                if flushed_for_it || excludes_me {
                    if let Outcome::Install { id, .. } = &outcome {
                        let id = *id;
                        self.send_control(cx, from, &Control::ViewAck { id }, true);
                    }
                    self.apply(cx, &outcome, msg);
                } else {
                    cx.drop_malformed("view_not_flushed");
                }
            }
        }
    }

    // ---- merging ------------------------------------------------------------

    /// Which of two views absorbs the other: primary first, then the larger,
    /// then the one whose coordinator has the lower id.
    fn absorbs(a_primary: bool, a_members: &[MemberId], b_primary: bool, b_members: &[MemberId]) -> bool {
        let key = |p: bool, m: &[MemberId]| (p, m.len(), std::cmp::Reverse(m.first().copied()));
        key(a_primary, a_members) > key(b_primary, b_members)
    }

    /// Whether two views of the group may merge under this configuration:
    /// always with `merge`, else only into a primary view.
    fn may_merge(&self, absorber_primary: bool) -> bool {
        self.merge || absorber_primary
    }

    fn probe_tick(&mut self, cx: &mut Context<'_>) {
        if self.is_coordinator() && self.departing.is_none() {
            let targets: Vec<MemberId> = self
                .seeds
                .iter()
                .chain(self.known.iter())
                .copied()
                .filter(|m| *m != self.local && !self.view.contains(m))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .take(MAX_PROBES)
                .collect();
            if !targets.is_empty() {
                let c = Control::Probe { view: self.view.id(), members: self.view.members().to_vec(), primary: self.view.is_primary() };
                for t in targets {
                    self.send_control(cx, t, &c, true);
                }
            }
        }
        cx.set_timer(TIMER_PROBE, cx.now() + self.probe);
    }

    fn on_probe(&mut self, cx: &mut Context<'_>, from: MemberId, view: ViewId, members: Vec<MemberId>, primary: bool) {
        self.max_counter = self.max_counter.max(view.counter);
        match self.phase {
            Phase::Joining => {
                self.add_seeds(members);
                if primary {
                    self.group_seen = Some(cx.now());
                }
            }
            // A member of this view has moved on to a newer primary view
            // without this member: it was removed (falsely suspected, or cut
            // off for a while), and joins again.
            // (A strictly higher counter: a view with the same counter is a
            // concurrent one, founded or decided elsewhere, which the merge
            // rules below handle.)
            Phase::Member if self.view.contains(&from) && view.counter > self.view.id().counter && primary && !members.contains(&self.local) => {
                self.rejoin(cx, &members);
            }
            Phase::Member if view != self.view.id() && !self.view.contains(&from) && !members.contains(&self.local) => {
                let mine = (self.view.is_primary(), self.view.members().to_vec());
                if Self::absorbs(mine.0, &mine.1, primary, &members) {
                    if self.may_merge(mine.0) {
                        let c = Control::Invite { members: mine.1, primary: mine.0 };
                        self.send_control(cx, from, &c, true);
                    }
                } else if self.may_merge(primary) && self.is_coordinator() && self.merge_into.is_none() && self.round.is_none() {
                    self.merge_into = Some(members);
                    self.maybe_change(cx);
                }
            }
            _ => {}
        }
    }

    fn on_invite(&mut self, cx: &mut Context<'_>, from: MemberId, members: Vec<MemberId>, primary: bool) {
        match self.phase {
            Phase::Joining => {
                self.add_seeds(members);
                if primary {
                    self.group_seen = Some(cx.now());
                }
            }
            Phase::Member if !self.view.contains(&from) && !members.contains(&self.local) => {
                let absorbed = Self::absorbs(primary, &members, self.view.is_primary(), self.view.members());
                if absorbed && self.may_merge(primary) && self.is_coordinator() && self.merge_into.is_none() && self.round.is_none() {
                    self.merge_into = Some(members);
                    self.maybe_change(cx);
                }
            }
            _ => {}
        }
    }

    // ---- dispatch -------------------------------------------------------------

    fn receive(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg, cast: bool) {
        if self.phase == Phase::Left {
            return cx.drop_malformed("after_leave");
        }
        let Ok(k) = msg.pop_with(|r| r.u8()) else { return cx.drop_malformed("empty") };
        // Sequenced traffic passed NAK's view check: proof of life in this
        // view. (Out-of-band control proves it only when it says so.)
        // (An out-of-band cast needs no rank: it is passed up whoever sent it.)
        let rank = if msg.flags().contains(MsgFlags::OOB) { None } else { self.heard(cx, &from) };
        match (k, cast) {
            (kind::CAST, true) => self.on_cast(cx, from, rank, msg),
            (kind::SEND, false) => {
                if msg.flags().contains(MsgFlags::OOB) || self.is_member(&from) {
                    self.emit(cx, Up::Send { from, msg });
                } else {
                    cx.drop_malformed("send_not_member");
                }
            }
            (kind::STATE_CHUNK, false) if self.is_member(&from) => {
                if self.loading && self.state_provider == Some(from) {
                    self.state_chunks_received += 1;
                    cx.up(Up::StateChunk(msg.into_body()));
                } else {
                    cx.drop_malformed("stale_state_chunk");
                }
            }
            (kind::CONTROL, _) => match wire::decode(&msg) {
                Ok(c) => self.on_control(cx, from, c),
                Err(e) => cx.drop_malformed(e.0),
            },
            (kind::STATE_CHUNK, false) => cx.drop_malformed("not_member"),
            _ => cx.drop_malformed("unknown_kind"),
        }
    }

    fn on_control(&mut self, cx: &mut Context<'_>, from: MemberId, c: Control) {
        if from == self.local {
            // Own out-of-band casts (heartbeats) loop back; the flush's
            // messages to oneself are handled like anyone's.
            if matches!(c, Control::Heartbeat { .. }) {
                return;
            }
        }
        let member = self.is_member(&from);
        match c {
            Control::Heartbeat { view } => {
                self.max_counter = self.max_counter.max(view.counter);
                if self.phase != Phase::Member {
                    return;
                }
                if view == self.view.id() {
                    self.heard(cx, &from);
                }
                if view > self.view.id() {
                    self.send_control(cx, from, &Control::ViewRequest, true);
                } else if view < self.view.id() {
                    self.repair(cx, from);
                }
            }
            Control::Join { joiner, last_counter } => {
                if joiner != from && !member {
                    return cx.drop_malformed("forged_join");
                }
                self.max_counter = self.max_counter.max(last_counter);
                match self.phase {
                    Phase::Joining => {
                        if self.fellow_joiners.len() < MAX_CONTACTS || self.fellow_joiners.contains_key(&joiner) {
                            self.fellow_joiners.insert(joiner, cx.now());
                        }
                    }
                    Phase::Member if self.view.contains(&joiner) => self.repair(cx, joiner),
                    Phase::Member => {
                        let coordinator = self.coordinator();
                        if joiner == from {
                            let primary = self.view.is_primary();
                            self.send_control(cx, joiner, &Control::JoinAck { coordinator, primary }, true);
                        }
                        if self.is_coordinator() {
                            if self.active() && !self.leaving {
                                self.joiners.insert(joiner);
                                self.maybe_change(cx);
                            }
                        } else if joiner == from {
                            self.send_control(cx, coordinator, &Control::Join { joiner, last_counter }, true);
                        }
                    }
                    Phase::Left => {}
                }
            }
            Control::JoinAck { coordinator, primary } => {
                if self.phase == Phase::Joining {
                    // Only a primary view holds a new member back from
                    // founding; a blocked minority cannot admit it.
                    if primary {
                        self.group_seen = Some(cx.now());
                    }
                    self.add_seeds([coordinator]);
                }
            }
            Control::Leave { member: leaver } => {
                if !member || !self.view.contains(&leaver) {
                    return cx.drop_malformed("leave_not_member");
                }
                if self.is_coordinator() {
                    self.leavers.insert(leaver);
                    self.maybe_change(cx);
                } else if leaver == from {
                    self.send_control(cx, self.coordinator(), &Control::Leave { member: leaver }, true);
                }
            }
            Control::Suspect(list) => {
                if !member || !self.is_coordinator() {
                    return cx.drop_malformed("suspect_not_for_me");
                }
                for m in list.into_iter().take(self.view.len()) {
                    self.suspect(cx, m);
                }
                self.maybe_change(cx);
            }
            Control::Flush { ballot, view, participants } if member => self.on_flush(cx, from, ballot, view, participants),
            Control::FlushState { ballot, sent, loading, available, accepted } if member => {
                self.on_flush_state(cx, from, ballot, Report { sent, loading, available, accepted })
            }
            Control::Cut { ballot, accepted, holders } if member => self.on_cut(cx, from, ballot, accepted, holders),
            Control::FlushOk { ballot } if member => self.on_flush_ok(cx, from, ballot),
            Control::Reject { promised } if member => {
                self.max_ballot = self.max_ballot.max(promised.number);
                if self.round.as_ref().is_some_and(|r| r.ballot < promised && r.decided.is_none()) {
                    self.start_round(cx);
                }
            }
            Control::View { .. } => self.on_view(cx, from, c),
            Control::ViewAck { id } => {
                if self.view_msg.as_ref().is_some_and(|m| matches!(m, Control::View { outcome: Outcome::Install { id: i, .. }, .. } if *i == id)) {
                    self.view_unacked.remove(&from);
                    if self.view_unacked.is_empty() {
                        self.finish_departure(cx);
                    }
                }
            }
            Control::ViewRequest => {
                if self.phase == Phase::Member {
                    self.repair(cx, from);
                }
            }
            Control::StateDone if member => {
                if self.loading && self.state_provider == Some(from) {
                    self.loading = false;
                    self.state_provider = None;
                    cx.up(Up::StateDone);
                    self.flush_loading_queue(cx);
                } else {
                    cx.drop_malformed("stale_state_done");
                }
            }
            Control::Probe { view, members, primary } => self.on_probe(cx, from, view, members, primary),
            Control::Invite { members, primary } => self.on_invite(cx, from, members, primary),
            _ => cx.drop_malformed("control_not_member"),
        }
    }

    /// A coordinator that removed itself has repeated its last view enough:
    /// it goes (leaves, or joins again if it was removed without asking).
    fn finish_departure(&mut self, cx: &mut Context<'_>) {
        self.view_unacked.clear();
        if let (Some(outcome), Some(msg)) = (self.departing.take(), self.view_msg.clone()) {
            self.apply(cx, &outcome, msg);
        }
    }

    fn retry_tick(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        if !self.view_unacked.is_empty() {
            self.view_retries += 1;
            if self.view_retries > VIEW_RETRIES {
                self.view_unacked.clear();
            } else if let Some(msg) = self.view_msg.clone() {
                for m in self.view_unacked.clone() {
                    self.send_control(cx, m, &msg, true);
                }
            }
        }
        if self.view_unacked.is_empty() && self.departing.is_some() {
            return self.finish_departure(cx);
        }
        if self.leaving && self.phase == Phase::Member {
            self.request_leave(cx);
        }
        if !self.view_unacked.is_empty() || (self.leaving && self.phase == Phase::Member) {
            cx.set_timer(TIMER_RETRY, now + self.join_retry);
        }
    }
}

impl Layer for Vsync {
    fn init(&mut self, cx: &mut Context<'_>) {
        self.local = cx.local();
        let initial = cx.view().clone();
        self.view = initial.clone();
        self.seeds = initial.members().iter().copied().filter(|m| *m != self.local).collect();
        self.joining_since = cx.now();
        if self.seeds.is_empty() {
            self.found(cx);
        } else {
            self.solo_below(cx);
            self.start_joining(cx);
        }
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(_) | Down::Send { .. } | Down::Flush { .. } => {
                if self.phase == Phase::Left {
                    return cx.drop_malformed("after_leave");
                }
                if self.blocked || !self.active() || !self.queued.is_empty() {
                    self.queued.push_back(ev);
                    self.update_backpressure(cx);
                } else {
                    self.down_now(cx, ev);
                }
            }
            Down::Leave => match self.phase {
                Phase::Left => {}
                Phase::Joining => self.finish_leave(cx),
                Phase::Member if self.view.len() == 1 => self.finish_leave(cx),
                Phase::Member => {
                    self.leaving = true;
                    self.update_backpressure(cx);
                    self.request_leave(cx);
                }
            },
            Down::StateChunk { token, data } => match self.providing.get(&token) {
                Some(to) => {
                    for &j in to {
                        let mut msg = Msg::new(data.clone());
                        msg.push(&[kind::STATE_CHUNK]);
                        cx.down(Down::Send { to: j, msg });
                    }
                    self.state_chunks_sent += 1;
                }
                None => cx.drop_malformed("stale_state_token"),
            },
            Down::StateDone { token } => match self.providing.remove(&token) {
                Some(to) => {
                    for j in to {
                        self.send_control(cx, j, &Control::StateDone, false);
                    }
                }
                None => cx.drop_malformed("stale_state_token"),
            },
            // VSYNC decides views; one from above is a misconfigured stack.
            Down::View(_) => cx.drop_malformed("view_from_above"),
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } => self.receive(cx, from, msg, true),
            Up::Send { from, msg } => self.receive(cx, from, msg, false),
            Up::Left => {
                self.phase = Phase::Left;
                cx.up(Up::Left);
            }
            // Views come from here, not from below.
            Up::View(_) => cx.drop_malformed("view_from_below"),
            // The transport lost its connection to a member: as good as the
            // heartbeat's silence, and sooner.
            Up::Suspect(m) => self.transport_suspects(cx, m),
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        match (key, self.phase) {
            (TIMER_JOIN, Phase::Joining) => self.join_tick(cx),
            (TIMER_HEARTBEAT, Phase::Member) => self.heartbeat_tick(cx),
            (TIMER_RETRY, Phase::Member) => self.retry_tick(cx),
            (TIMER_PROBE, Phase::Member) => self.probe_tick(cx),
            (TIMER_ROUND, Phase::Member) => self.round_timeout(cx),
            _ => {}
        }
    }

    fn stats(&self, out: &mut Stats) {
        out.add("view_counter", self.view.id().counter)
            .add("members", if self.phase == Phase::Member { self.view.len() as u64 } else { 0 })
            .add("primary", u64::from(self.phase == Phase::Member && self.view.is_primary()))
            .add("views_installed", self.views_installed)
            .add("rounds_started", self.rounds_started)
            .add("delivered", self.delivered)
            .add("recoveries", self.recoveries)
            .add("beyond_cut", self.beyond_cut)
            .add("suspicions", self.suspicions)
            .add("checks_while_app_behind", self.checks_while_app_behind)
            .add("held", self.held.len() as u64 + self.loading_queue.len() as u64)
            .add("queued", self.queued.len() as u64)
            .add("contacts", self.seeds.len() as u64)
            .add("state_chunks_sent", self.state_chunks_sent)
            .add("state_chunks_received", self.state_chunks_received)
            .add("blocked", u64::from(self.blocked));
    }
}
