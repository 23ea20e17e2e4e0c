//! # SAFE: uniform, durable total order (Paxos-style SafeSend)
//!
//! Isis2's SafeSend: "ordered and also durable: if anyone receives such a
//! message, everyone will". Every SAFE cast is delivered in one total order
//! at every member, **uniformly** (if any member delivers m, even one that
//! crashes right after, every member that does not crash delivers m, at the
//! same position), and only once it is **durable**: accepted by a majority of
//! the *acceptors* (the first `acceptors` members of the view) and, with a
//! `log_dir`, written to their disks with `fsync`. After every member has
//! crashed, restarted members replay from their logs every message accepted
//! and not yet finished, with its original identity ([`SafeTag`]).
//!
//! It is Paxos (multi-decree, one instance per *slot* of the sequence) run
//! above the membership layer, with VSYNC's views as ballots:
//!
//! * **Ballots and the leader.** The ballot of a view is its counter; the
//!   leader is the view's coordinator (rank 0). VSYNC makes primary views a
//!   chain, so ballots only grow.
//! * **Steady state.** A member casts its message as DATA (through VSYNC, so
//!   every member receives it). The leader gives each DATA it receives the
//!   next slot and casts PROPOSE naming the casts by (rank, view, id), in
//!   batches (`batch_msgs`, `batch_us`). Every member, once it holds the
//!   bodies of every proposed slot up to s, casts ACK(s); an acceptor first
//!   writes the entries to its log (one `fsync` per batch: group commit).
//!   A member delivers slot s when every earlier slot is delivered and it has
//!   seen ACK(≥ s) of this ballot from a majority of the acceptors **and** a
//!   majority of the view's members.
//!
//!   ```text
//!    B ── DATA(b1) ──────────────► all       hold b1
//!    A (leader) ── PROPOSE(7 = B:b1) ──► all
//!    every member ── ACK(upto 7) ──► all     (acceptors: logged + fsync first)
//!    each member, on ACKs from a majority of acceptors and of members: deliver slot 7
//!   ```
//! * **View change (Paxos phase 1, through virtual synchrony).** The members
//!   that move from view V to W received the same casts of V (PROPOSEs, DATA,
//!   ACKs), so between them they know every proposal that anyone may have
//!   delivered: a delivered slot was held by a majority of V's members, and a
//!   primary W contains a majority of V. W's leader casts NEWVIEW: every slot
//!   it knows that is not garbage-collected, bodies included (joiners and new
//!   acceptors lack them), then the casts nobody proposed yet. Every member
//!   replaces its undelivered slots by these, acceptors rewrite their logs as
//!   exactly this sequence plus a VIEW record, and it is acknowledged and
//!   delivered like a proposal of ballot W. A slot decided in V keeps its
//!   value because W's leader proposes exactly what V's leader proposed.
//!   Proposals and ACKs of an older ballot that arrive late are ignored.
//! * **Joining.** A member joining a live group gets SAFE's part of the state
//!   transfer ahead of the application's own chunks: the last slot in the
//!   application state, the GC point, and every slot and cast the provider
//!   knows but has not delivered (the joiner may lead the next view). It
//!   adopts them when the transfer completes and delivers from there; a
//!   joiner that finds itself leading sends the view's NEWVIEW then.
//! * **Recovery from total failure.** A member starts *recovering*. When a
//!   view forms in which nobody is live (the group restarted), each member
//!   casts SYNC: its log's latest VIEW record (ballot and members; every
//!   member with a log keeps one, acceptors also the entries), GC point, and
//!   the entries of that ballot. The leader waits for the SYNC of every
//!   member, then for logs of a majority of the acceptors of the latest
//!   ballot any log records (a message delivered in that ballot was accepted
//!   by a majority of them, so at least one of them has it) and of a
//!   majority of its members (a group that went on without them kept a
//!   majority of that view, so a member restarted into a partition does not
//!   re-found the group alone), and for `recover_ms` more if some of those
//!   members are still missing. It then
//!   casts NEWVIEW with the union of those entries above the highest GC
//!   point, marked *replay*. Every member announces the list with
//!   [`Up::Replay`] and redelivers it (`replayed: true`) before anything new.
//!   A state transfer replaces the application's state, so for SAFE it
//!   starts a new application life: a member whose group is absorbed, or
//!   re-formed around a restarted member, gets its own Replay again (a live
//!   member absorbed into a recovering group brings what it holds).
//! * **Garbage collection.** The application calls `done(tag)` when it has
//!   applied a message ([`Down::Done`]). Each member's ACKs carry the last
//!   slot up to which it is done; the leader casts GC(s) once every member of
//!   the view is done up to s, and every member forgets those slots (and
//!   writes a GC record, compacting the log when it has grown). Without a
//!   `log_dir` a delivery counts as done at once (nothing to replay).
//! * **Per-cast order.** [`Order::Fifo`] casts, sends and out-of-band casts
//!   travel PLAIN: delivered on arrival, after the sender's earlier SAFE
//!   casts that this member holds. Other requests are SAFE.
//!
//! ## What holds, and what does not
//! Uniform agreement and one order hold while every view change keeps a
//! majority of the previous view (VSYNC's primary partition): any minority
//! of the members may crash at any step, the leader and a majority of the
//! acceptors included (the members' copies carry the proposals across). A
//! member never delivers in a non-primary view; cut off, it drops its
//! undelivered state and takes the group's state when it returns. Durability
//! across a total failure needs the logs of a majority of the acceptors of
//! the latest view: if a majority of those acceptors had failed *earlier*
//! and the group went on with new acceptors, restart those too (their logs
//! hold the later messages; SAFE cannot tell from the old logs that the
//! group went on). A member that joins after the recovery completed takes
//! the group's state instead of replaying (its [`Up::Replay`] is empty).
//!
//! ## What it needs below
//! VSYNC over reliable FIFO: `FRAG:NAK:VSYNC:SAFE` or
//! `FRAG:NAK:CAUSAL:VSYNC:SAFE`.
//!
//! ## Header
//! ```text
//!  DATA        | 1 | view varint | id varint | body                     3+ B
//!  PLAIN       | 2 | after varint | body                                2+ B (Fifo casts, sends, OOB)
//!  PROPOSE     | 3 | ballot | first slot | n | (rank, view, id) * n     no body
//!  ACK         | 4 | ballot | upto slot | done slot                     no body
//!  GC          | 5 | ballot | slot                                      no body
//!  NEWVIEW     | 6 | ballot | n | replay u8 | base slot                 then n ENTRY casts
//!  ENTRY       | 7 | ballot | slot | tag | body
//!  SYNC        | 8 | ballot | last view | n | member addr * n | gc | n | complete u8,  then n SYNC_ENTRY
//!  SYNC_ENTRY  | 9 | ballot | slot | entry ballot | tag | body
//!  STATE       | 10 | live u8 | delivered slot | gc slot | n          (state transfer chunk, then n ENTRY chunks, slot 0: not yet proposed)
//! ```
//! Integers are varints; a tag is the sender (address, port, incarnation),
//! the view counter and the id. The log's format is in docs/safe-log.md.
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `acceptors` | 3 | how many of the first members of a view accept (capped at the view size) (wire) |
//! | `log_dir` | unset | directory of the durable log `<group>.safelog`; unset: acceptance in memory only |
//! | `fsync` | true | `fsync` the log before acknowledging (false only for benchmarks) |
//! | `batch_msgs` | 32 | casts the leader names in one PROPOSE at most (wire) |
//! | `batch_us` | 200 | most time a cast waits at the leader before it is proposed |
//! | `max_pending` | 10000 | undelivered casts held before this member's send window closes |
//! | `recover_ms` | 1000 | after a total failure, how long the leader waits for missing members once a majority is back |
//!
//! ## Bad input
//! Headers are decoded into typed values or dropped and counted: unknown
//! kinds, truncated varints, proposals from anyone but the leader, of
//! another ballot (`stale`), out of sequence, naming ranks outside the view;
//! entries beyond their NEWVIEW's count. A log that fails its checksums is
//! reported ([`Up::Problem`]) and read only up to the damage; a log with
//! damage before its end does not count towards the recovery majority.

mod log;
mod wire;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use log::{Damage, DurableLog, Entry, Record};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::{
    Context, Down, Layer, LayerDescriptor, MemberId, Msg, MsgFlags, Order, ParamKind, ParamSpec, Params, Problem, Props, SafeTag, SendWindow, Stats, TimerKey,
    Up, View, ViewId,
};
use wire::{Header, Ref, Refs};

/// The `SAFE` descriptor.
pub const SAFE: LayerDescriptor = LayerDescriptor {
    name: "SAFE",
    summary: "uniform, durable total order (Paxos SafeSend): delivered once a majority of acceptors logged it; replay after total failure",
    requires: Props::RELIABLE.union(Props::FIFO).union(Props::MEMBERSHIP),
    provides: Props::TOTAL.union(Props::FIFO).union(Props::UNIFORM),
    params: &[
        ParamSpec {
            name: "acceptors",
            kind: ParamKind::U64 { min: 1, max: wire::MAX_ACCEPTORS as u64 },
            default: "3",
            doc: "how many of the first members of a view accept and log (capped at the view size)",
            wire: true,
        },
        ParamSpec { name: "log_dir", kind: ParamKind::Str, default: "", doc: "directory of the durable log <group>.safelog (unset: memory only)", wire: false },
        ParamSpec { name: "fsync", kind: ParamKind::Bool, default: "true", doc: "fsync the log before acknowledging (false only for benchmarks)", wire: false },
        ParamSpec {
            name: "batch_msgs",
            kind: ParamKind::U64 { min: 1, max: 1024 },
            default: "32",
            doc: "casts the leader names in one proposal at most",
            wire: true,
        },
        ParamSpec {
            name: "batch_us",
            kind: ParamKind::U64 { min: 0, max: 1_000_000 },
            default: "200",
            doc: "most time a cast waits at the leader before it is proposed",
            wire: false,
        },
        strata_stack::window::MAX_PENDING,
        ParamSpec {
            name: "recover_ms",
            kind: ParamKind::U64 { min: 0, max: 600_000 },
            default: "1000",
            doc: "after a total failure, how long to wait for missing members once a majority is back",
            wire: false,
        },
    ],
    max_header_len: |_| wire::MAX_BODY_HEADER,
    build: |p| Ok(Box::new(Safe::new(p))),
};

const TIMER_PROPOSE: TimerKey = 0;
const TIMER_SYNC: TimerKey = 1;
const TIMER_RECOVER: TimerKey = 2;
const TIMER_ACK: TimerKey = 3;

/// Most entries a SYNC or NEWVIEW may announce (bounds what a member buffers).
const MAX_ANNOUNCED: u64 = 1 << 24;

/// Log records written since the last rewrite, beyond twice the live ones,
/// that make a GC compact the log.
const COMPACT_SLACK: u64 = 1024;

/// The log file's name for a group.
pub fn log_file_name(group: &str) -> String {
    let safe: String = group.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    format!("{safe}.safelog")
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// No authoritative state yet (just started, or cut off): waits for a
    /// recovery or a state transfer.
    Recovering,
    /// Holds the group's sequence.
    Live,
}

/// One position of the sequence above the GC point.
#[derive(Debug)]
struct Slot {
    tag: SafeTag,
    body: Option<Bytes>,
    delivered: bool,
    done: bool,
    replayed: bool,
}

/// A received DATA not yet in a slot.
#[derive(Debug)]
struct Data {
    tag: SafeTag,
    body: Bytes,
    /// The ballot it arrived in.
    arrived: u64,
}

/// What this member brings to a recovery: its log (or, when cut off from a
/// live group, its memory).
#[derive(Debug, Default, Clone)]
struct Recovery {
    last_view: u64,
    /// The members of `last_view`, in rank order.
    members: Vec<SocketAddr>,
    gc: u64,
    entries: BTreeMap<u64, (u64, SafeTag, Bytes)>,
    complete: bool,
}

/// A SYNC being received.
#[derive(Debug)]
struct IncomingSync {
    info: Recovery,
    expected: u64,
}

/// A NEWVIEW being received.
#[derive(Debug)]
struct IncomingNewView {
    ballot: u64,
    replay: bool,
    base: u64,
    expected: u64,
    entries: Vec<Known>,
}

/// The SAFE layer.
pub struct Safe {
    acceptors_wanted: usize,
    log_dir: String,
    fsync: bool,
    batch: usize,
    batch_delay: Duration,
    recover_wait: Duration,

    local: MemberId,
    view: Arc<View>,
    ballot: u64,
    phase: Phase,
    leader: bool,
    acceptor: bool,
    n_acceptors: usize,
    blocked: bool,
    /// This ballot's NEWVIEW has been processed here.
    installed: bool,
    view_started: strata_stack::Instant,

    next_id: u64,
    /// Own casts made while not live, sent when live.
    outbox: VecDeque<Msg>,

    slots: BTreeMap<u64, Slot>,
    slot_of: HashMap<SafeTag, u64>,
    delivered: u64,
    gc: u64,
    done_upto: u64,
    next_slot: u64,
    /// Every slot up to here is held (and logged, by an acceptor) and acknowledged.
    acked: u64,
    acked_done: u64,
    /// Per rank: the highest ACK of this ballot (upto, done).
    acks: Vec<(u64, u64)>,
    gc_sent: u64,

    data: HashMap<(MemberId, u64), Data>,
    data_order: VecDeque<(MemberId, u64)>,
    /// Slots proposed before their DATA arrived.
    awaiting: HashMap<(MemberId, u64), u64>,
    /// Per sender: ids of its SAFE casts held here, undelivered.
    pending_ids: HashMap<MemberId, HeldIds>,
    /// Per sender: PLAIN casts waiting for its earlier SAFE casts.
    plain_held: HashMap<MemberId, VecDeque<(u64, Msg)>>,
    /// Per sender: the highest id delivered (duplicate guard).
    delivered_id: HashMap<MemberId, u64>,

    /// Leader: casts proposed since the last PROPOSE went out.
    to_propose: Refs,
    to_propose_first: u64,

    incoming_newview: Option<IncomingNewView>,
    syncs: HashMap<MemberId, IncomingSync>,
    sync_due: bool,
    /// StateBegin seen: SAFE's state chunk is awaited.
    awaiting_state: bool,
    /// SAFE's part of a state transfer being received, adopted when the
    /// transfer completes (a view change before that restarts it).
    transfer: Option<Transfer>,
    /// The last ballot this member sent a NEWVIEW for.
    newview_sent: u64,
    /// The ballot (and its members) whose NEWVIEW this member last
    /// installed: what its sequence belongs to.
    installed_ballot: u64,
    installed_members: Vec<SocketAddr>,
    joining: bool,
    recovery: Recovery,
    waiting_reported: bool,

    log: Option<DurableLog>,
    log_records: u64,
    log_failed: bool,
    replay_announced: bool,
    window: SendWindow,

    stats: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    cast: u64,
    delivered: u64,
    replayed: u64,
    plain_delivered: u64,
    proposed: u64,
    proposals_sent: u64,
    acks_sent: u64,
    newviews: u64,
    recoveries: u64,
    gc_rounds: u64,
    log_damage: u64,
    duplicates: u64,
    stale_data_dropped: u64,
}

impl std::fmt::Debug for Safe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Safe").field("local", &self.local).field("ballot", &self.ballot).field("phase", &self.phase).finish_non_exhaustive()
    }
}

fn majority(of: usize) -> usize {
    of / 2 + 1
}

/// A position of the sequence with its message: (slot, tag, body).
type Known = (u64, SafeTag, Bytes);

/// SAFE's part of a state transfer: the last slot the application state
/// holds, the GC point, and the provider's undelivered slots and casts
/// (slot 0: not yet proposed).
#[derive(Debug)]
struct Transfer {
    delivered: u64,
    gc: u64,
    expected: u64,
    undelivered: Vec<Known>,
}

impl Transfer {
    fn complete(&self) -> bool {
        self.undelivered.len() as u64 == self.expected
    }
}

/// A header, in front of `body` if there is one.
fn encoded(h: Header, body: Option<&Bytes>) -> Msg {
    let mut msg = body.map_or_else(Msg::empty, |b| Msg::new(b.clone()));
    msg.push_with(|w| h.encode(w));
    msg
}

/// The ids of one sender's SAFE casts held here undelivered. A sender's
/// casts arrive and are delivered in id order, so they are one range.
#[derive(Debug, Default)]
struct HeldIds {
    lo: u64,
    hi: u64,
}

impl HeldIds {
    fn hold(&mut self, id: u64) {
        if self.lo > self.hi || self.lo == 0 {
            (self.lo, self.hi) = (id, id);
        } else {
            (self.lo, self.hi) = (self.lo.min(id), self.hi.max(id));
        }
    }

    fn delivered(&mut self, id: u64) {
        if id >= self.lo {
            self.lo = id + 1;
        }
    }

    /// The lowest id held, if any.
    fn first(&self) -> Option<u64> {
        (self.lo != 0 && self.lo <= self.hi).then_some(self.lo)
    }
}

impl Safe {
    /// A layer with the given parameters.
    pub fn new(p: &Params) -> Self {
        let placeholder = MemberId::sim(0);
        let view = View::new(ViewId { counter: 0, creator: placeholder }, vec![placeholder]).expect("one member");
        Safe {
            acceptors_wanted: p.u64("acceptors") as usize,
            log_dir: p.str("log_dir").to_string(),
            fsync: p.bool("fsync"),
            batch: p.u64("batch_msgs") as usize,
            batch_delay: Duration::from_micros(p.u64("batch_us")),
            recover_wait: Duration::from_millis(p.u64("recover_ms")),
            local: placeholder,
            view,
            ballot: 0,
            phase: Phase::Recovering,
            leader: false,
            acceptor: false,
            n_acceptors: 1,
            blocked: false,
            installed: false,
            view_started: strata_stack::Instant::ZERO,
            next_id: 1,
            outbox: VecDeque::new(),
            slots: BTreeMap::new(),
            slot_of: HashMap::new(),
            delivered: 0,
            gc: 0,
            done_upto: 0,
            next_slot: 1,
            acked: 0,
            acked_done: 0,
            acks: Vec::new(),
            gc_sent: 0,
            data: HashMap::new(),
            data_order: VecDeque::new(),
            awaiting: HashMap::new(),
            pending_ids: HashMap::new(),
            plain_held: HashMap::new(),
            delivered_id: HashMap::new(),
            to_propose: Refs::new(),
            to_propose_first: 0,
            incoming_newview: None,
            syncs: HashMap::new(),
            sync_due: false,
            awaiting_state: false,
            transfer: None,
            newview_sent: 0,
            installed_ballot: 0,
            installed_members: Vec::new(),
            joining: false,
            recovery: Recovery { complete: true, ..Recovery::default() },
            waiting_reported: false,
            log: None,
            log_records: 0,
            log_failed: false,
            replay_announced: false,
            window: SendWindow::reopening_at_three_quarters(p.u64("max_pending") as usize),
            stats: Counters::default(),
        }
    }

    fn durable(&self) -> bool {
        !self.log_dir.is_empty()
    }

    // ---- the log --------------------------------------------------------------

    fn open_log(&mut self, cx: &mut Context<'_>) {
        let name = log_file_name(cx.group());
        let file = match cx.open_log(&self.log_dir, &name) {
            Ok(f) => f,
            Err(e) => return cx.refuse(format!("cannot open the log {}/{name}: {e}", self.log_dir.trim_end_matches('/'))),
        };
        let (log, scan) = match DurableLog::open(file) {
            Ok(opened) => opened,
            Err(e) => return cx.refuse(format!("cannot use the log {}/{name}: {e}", self.log_dir.trim_end_matches('/'))),
        };
        if let Some(damage) = &scan.damage {
            self.stats.log_damage += 1;
            let what = match damage {
                Damage::TornTail { offset, bytes } => {
                    format!("log {}: a record cut short by a crash at byte {offset} ({bytes} bytes) was discarded (it was never acknowledged)", log.describe())
                }
                Damage::Corrupt { offset, ignored_bytes, reason } => {
                    self.recovery.complete = false;
                    format!(
                        "log {}: corrupt record at byte {offset} ({reason}); the {ignored_bytes} bytes from there were not applied, and this log does not count towards a recovery majority",
                        log.describe()
                    )
                }
            };
            cx.up(Up::Problem(Problem { layer: "SAFE", what }));
        }
        let mut views: Vec<(u64, Vec<SocketAddr>)> = Vec::new();
        let mut gc = 0;
        for rec in &scan.records {
            match rec {
                Record::View { ballot, members } => views.push((*ballot, members.clone())),
                Record::Gc { slot } => gc = gc.max(*slot),
                Record::Entry(_) => {}
            }
        }
        let last = views.into_iter().max_by_key(|(b, _)| *b);
        if let Some((last_view, members)) = last {
            self.recovery.last_view = last_view;
            self.recovery.members = members;
        }
        self.recovery.gc = gc;
        for rec in scan.records {
            if let Record::Entry(e) = rec {
                if e.ballot == self.recovery.last_view && self.recovery.last_view > 0 && e.slot > gc {
                    self.recovery.entries.insert(e.slot, (e.ballot, e.tag, e.body));
                }
            }
        }
        self.log = Some(log);
    }

    /// Writes `records` to the log (all or nothing for this call), fsyncing.
    fn log_write(&mut self, cx: &mut Context<'_>, records: &[Record], rewrite: bool) {
        let fsync = self.fsync;
        let Some(log) = self.log.as_mut() else { return };
        let result = if rewrite {
            self.log_records = records.len() as u64;
            log.rewrite(records.iter())
        } else {
            self.log_records += records.len() as u64;
            for r in records {
                log.push(r);
            }
            log.commit(fsync)
        };
        if let Err(e) = result {
            if !self.log_failed {
                self.log_failed = true;
                let what = format!("log {}: write failed ({e}); this member stops acknowledging", log.describe());
                cx.up(Up::Problem(Problem { layer: "SAFE", what }));
            }
        }
    }

    /// The whole durable state of this ballot, as an acceptor logs it.
    fn snapshot_records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .held_slots(0)
            .take_while(|(s, ..)| *s <= self.acked)
            .map(|(slot, tag, body)| Record::Entry(Entry { slot, ballot: self.ballot, tag, body }))
            .collect();
        out.push(Record::View { ballot: self.ballot, members: self.member_addrs() });
        out.push(Record::Gc { slot: self.gc });
        out
    }

    fn member_addrs(&self) -> Vec<SocketAddr> {
        self.view.members().iter().map(|m| m.addr()).collect()
    }

    // ---- sending ----------------------------------------------------------------

    fn cast(&mut self, cx: &mut Context<'_>, mut msg: Msg) {
        if msg.flags().contains(MsgFlags::OOB) {
            msg.push_with(|w| Header::Plain { after: 0 }.encode(w));
            return cx.down(Down::Cast(msg));
        }
        if msg.order() == Some(Order::Fifo) {
            // After this member's last SAFE cast.
            let after = self.next_id - 1;
            msg.push_with(|w| Header::Plain { after }.encode(w));
        } else {
            let id = self.next_id;
            self.next_id += 1;
            self.stats.cast += 1;
            let view = self.ballot;
            msg.push_with(|w| Header::Data { view, id }.encode(w));
        }
        if self.phase == Phase::Live {
            cx.down(Down::Cast(msg));
        } else {
            self.outbox.push_back(msg);
            self.update_window(cx);
        }
    }

    fn cast_header(cx: &mut Context<'_>, h: Header, body: Option<&Bytes>) {
        cx.down(Down::Cast(encoded(h, body)));
    }

    /// Casts held here undelivered: loose, in slots, or waiting to be sent.
    fn pending(&self) -> usize {
        self.data.len() + self.outbox.len() + self.next_slot.saturating_sub(self.delivered + 1) as usize
    }

    fn update_window(&mut self, cx: &mut Context<'_>) {
        let pending = self.pending();
        self.window.update(cx, pending);
    }

    /// The slots from `from` on whose bodies are here: `(slot, tag, body)`.
    fn held_slots(&self, from: u64) -> impl Iterator<Item = Known> + '_ {
        self.slots.range(from..).filter_map(|(s, slot)| slot.body.clone().map(|b| (*s, slot.tag, b)))
    }

    // ---- views ------------------------------------------------------------------

    fn on_view(&mut self, cx: &mut Context<'_>, v: Arc<View>) {
        if self.phase == Phase::Live && !v.is_primary() {
            self.become_stale();
        }
        self.view = v.clone();
        self.ballot = v.id().counter;
        self.n_acceptors = self.acceptors_wanted.min(v.len()).max(1);
        let rank = v.rank_of(&self.local);
        self.leader = rank == Some(0);
        self.acceptor = rank.is_some_and(|r| r < self.n_acceptors);
        self.blocked = false;
        self.installed = false;
        self.view_started = cx.now();
        self.acks = vec![(0, 0); v.len()];
        self.acked = 0;
        self.to_propose.clear();
        self.incoming_newview = None;
        self.syncs.clear();
        self.sync_due = false;
        self.joining = false;
        self.awaiting_state = false;
        self.transfer = None;
        self.waiting_reported = false;
        for t in [TIMER_PROPOSE, TIMER_SYNC, TIMER_RECOVER] {
            cx.cancel_timer(t);
        }
        if !v.is_primary() || rank.is_none() {
            return;
        }
        match self.phase {
            Phase::Live if self.leader => self.send_newview(cx, false, self.gc, None),
            Phase::Live => {}
            Phase::Recovering => {
                // Decided once the events of this install are in: a
                // StateBegin right after the view means a state transfer.
                self.sync_due = true;
                cx.set_timer(TIMER_SYNC, cx.now());
            }
        }
    }

    /// Cut off from the primary partition: what this member holds (the
    /// sequence of its last ballot) becomes its contribution to a recovery;
    /// it takes the group's state if it returns to a live group.
    fn become_stale(&mut self) {
        self.phase = Phase::Recovering;
        let ballot = self.installed_ballot;
        let entries = self.held_slots(0).map(|(s, tag, b)| (s, (ballot, tag, b))).collect();
        self.recovery = Recovery { last_view: ballot, members: self.installed_members.clone(), gc: self.gc, entries, complete: true };
        self.installed = false;
    }

    /// SAFE's part of a state transfer: where the application state stands,
    /// and everything this member knows that is not delivered yet (a joiner
    /// may lead the next view, and must then know what this view proposed).
    fn provide_state(&mut self, cx: &mut Context<'_>, token: u64) {
        let live = self.phase == Phase::Live;
        let undelivered: Vec<Known> = if live {
            let slots = self.held_slots(self.delivered + 1);
            let loose = self.data_order.iter().filter_map(|k| self.data.get(k)).map(|d| (0, d.tag, d.body.clone()));
            slots.chain(loose).collect()
        } else {
            Vec::new()
        };
        let chunk = |h: Header, body: Option<&Bytes>| encoded(h, body).to_bytes();
        let head = Header::State { live, delivered: self.delivered, gc: self.gc, count: undelivered.len() as u64 };
        cx.down(Down::StateChunk { token, data: chunk(head, None) });
        for (slot, tag, body) in &undelivered {
            cx.down(Down::StateChunk { token, data: chunk(Header::Entry { ballot: 0, slot: *slot, tag: *tag }, Some(body)) });
        }
    }

    fn on_state_chunk(&mut self, cx: &mut Context<'_>, data: Bytes) {
        let mut msg = Msg::new(data);
        let header = match msg.pop_with(|r| Header::decode(r, 0)) {
            Ok(h) => h,
            Err(e) => {
                self.awaiting_state = false;
                return cx.drop_malformed(e.0);
            }
        };
        match (header, self.transfer.as_mut()) {
            (Header::State { live: true, delivered, gc, count }, None) if count <= MAX_ANNOUNCED => {
                self.transfer = Some(Transfer { delivered, gc, expected: count, undelivered: Vec::new() });
            }
            (Header::State { live: false, .. }, None) => {
                self.awaiting_state = false;
                return self.joined_recovering(cx);
            }
            (Header::Entry { slot, tag, .. }, Some(t)) if !t.complete() => t.undelivered.push((slot, tag, msg.to_bytes())),
            _ => {
                self.awaiting_state = false;
                self.transfer = None;
                return cx.drop_malformed("bad_state");
            }
        }
        // Whole: the application's chunks follow, then StateDone.
        self.awaiting_state = !self.transfer.as_ref().is_some_and(Transfer::complete);
    }

    /// A joiner got SAFE's state from a live member: it delivers from
    /// there, knowing what the provider knew of the undelivered rest.
    fn adopt_state(&mut self, cx: &mut Context<'_>, Transfer { delivered, gc, undelivered, .. }: Transfer) {
        // A restarted transfer re-adopts: nothing was delivered meanwhile
        // (VSYNC holds deliveries while the state loads).
        self.phase = Phase::Recovering;
        self.joining = false;
        self.sync_due = false;
        self.delivered = delivered;
        self.gc = gc.min(delivered);
        self.done_upto = delivered;
        self.slots.clear();
        self.slot_of.clear();
        // What it held from before it (re)joined is superseded by the
        // provider's knowledge, which includes it if it still matters.
        self.data.clear();
        self.data_order.clear();
        self.awaiting.clear();
        self.pending_ids.clear();
        self.next_slot = delivered + 1;
        for (slot, tag, body) in undelivered {
            if self.slot_of.contains_key(&tag) || self.data.contains_key(&(tag.sender, tag.id)) {
                continue;
            }
            self.pending_ids.entry(tag.sender).or_default().hold(tag.id);
            if slot > delivered {
                self.slot_of.insert(tag, slot);
                self.slots.insert(slot, Slot { tag, body: Some(body), delivered: false, done: false, replayed: false });
                self.next_slot = self.next_slot.max(slot + 1);
            } else if slot == 0 {
                self.data.insert((tag.sender, tag.id), Data { tag, body, arrived: self.ballot });
                self.data_order.push_back((tag.sender, tag.id));
            }
        }
        if self.log.is_some() {
            // Its old log is superseded by the group's sequence.
            self.log_write(cx, &[], true);
        }
        self.go_live(cx, Vec::new());
        // A joiner that leads this view (the members before it are gone)
        // owes the view its NEWVIEW, which it could not send while loading.
        if self.leader && self.view.is_primary() && !self.installed {
            self.send_newview(cx, false, self.gc, None);
        }
    }

    /// A joiner whose state provider is not live either: the group is
    /// recovering, and this member's log is part of it.
    fn joined_recovering(&mut self, cx: &mut Context<'_>) {
        if self.phase == Phase::Live {
            // Its group was absorbed into one that is recovering: it takes
            // part with what it holds.
            self.become_stale();
        }
        self.joining = false;
        self.sync_due = false;
        if self.leader {
            self.try_recover(cx, false);
        } else {
            self.send_sync(cx);
        }
    }

    fn on_cast(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg) {
        let batch = self.batch;
        let header = match msg.pop_with(|r| Header::decode(r, batch)) {
            Ok(h) => h,
            Err(e) => return cx.drop_malformed(e.0),
        };
        if let Header::Plain { after } = header {
            return self.on_plain(cx, from, after, msg);
        }
        let Some(rank) = self.view.rank_of(&from) else { return cx.drop_malformed("not_member") };
        let current = |ballot: u64, this: &mut Self, cx: &mut Context<'_>| {
            if ballot != this.ballot {
                cx.drop_malformed("stale");
                return false;
            }
            true
        };
        match header {
            Header::Plain { .. } => unreachable!("handled above"),
            Header::Data { view, id } => self.on_data(cx, from, view, id, msg.to_bytes()),
            Header::Propose { ballot, first, refs } => {
                if current(ballot, self, cx) {
                    if rank != 0 || !self.installed {
                        return cx.drop_malformed("proposal_not_leader");
                    }
                    self.on_propose(cx, first, refs);
                }
            }
            Header::Ack { ballot, upto, done } => {
                if current(ballot, self, cx) {
                    self.on_ack(cx, rank, upto, done);
                }
            }
            Header::Gc { ballot, slot } => {
                if current(ballot, self, cx) && rank == 0 && self.installed {
                    self.on_gc(cx, slot);
                }
            }
            Header::NewView { ballot, count, replay, base } => {
                if !current(ballot, self, cx) {
                    return;
                }
                if rank != 0 || count > MAX_ANNOUNCED {
                    return cx.drop_malformed("bad_newview");
                }
                let nv = IncomingNewView { ballot, replay, base, expected: count, entries: Vec::new() };
                if count == 0 {
                    self.process_newview(cx, nv);
                } else {
                    self.incoming_newview = Some(nv);
                }
            }
            Header::Entry { ballot, slot, tag } => {
                if !current(ballot, self, cx) {
                    return;
                }
                let Some(nv) = self.incoming_newview.as_mut().filter(|nv| rank == 0 && nv.ballot == ballot) else {
                    return cx.drop_malformed("entry_without_newview");
                };
                nv.entries.push((slot, tag, msg.to_bytes()));
                if nv.entries.len() as u64 == nv.expected {
                    let nv = self.incoming_newview.take().expect("just used");
                    self.process_newview(cx, nv);
                }
            }
            Header::Sync { ballot, last_view, members, gc, count, complete } => {
                if !current(ballot, self, cx) {
                    return;
                }
                if count > MAX_ANNOUNCED {
                    return cx.drop_malformed("bad_sync");
                }
                let info = Recovery { last_view, members, gc, entries: BTreeMap::new(), complete };
                self.syncs.insert(from, IncomingSync { info, expected: count });
                self.try_recover(cx, false);
            }
            Header::SyncEntry { ballot, slot, entry_ballot, tag } => {
                if !current(ballot, self, cx) {
                    return;
                }
                let Some(s) = self.syncs.get_mut(&from).filter(|s| (s.info.entries.len() as u64) < s.expected) else {
                    return cx.drop_malformed("entry_without_sync");
                };
                s.info.entries.insert(slot, (entry_ballot, tag, msg.to_bytes()));
                if s.info.entries.len() as u64 == s.expected {
                    self.try_recover(cx, false);
                }
            }
            Header::State { .. } => cx.drop_malformed("state_in_cast"),
        }
    }

    // ---- recovery ---------------------------------------------------------------

    fn on_sync_timer(&mut self, cx: &mut Context<'_>) {
        if !self.sync_due || self.joining {
            return;
        }
        self.sync_due = false;
        if self.leader {
            self.try_recover(cx, false);
        } else {
            self.send_sync(cx);
        }
    }

    fn send_sync(&mut self, cx: &mut Context<'_>) {
        let r = &self.recovery;
        let h = Header::Sync {
            ballot: self.ballot,
            last_view: r.last_view,
            members: r.members.clone(),
            gc: r.gc,
            count: r.entries.len() as u64,
            complete: r.complete,
        };
        Self::cast_header(cx, h, None);
        for (slot, (entry_ballot, tag, body)) in &self.recovery.entries {
            Self::cast_header(cx, Header::SyncEntry { ballot: self.ballot, slot: *slot, entry_ballot: *entry_ballot, tag: *tag }, Some(body));
        }
    }

    /// The leader of a group where nobody is live: once every member's log
    /// is in and the recovery majority is met, replays.
    fn try_recover(&mut self, cx: &mut Context<'_>, waited: bool) {
        if self.phase != Phase::Recovering || !self.leader || self.blocked || self.sync_due {
            return;
        }
        let mut infos: Vec<(MemberId, &Recovery)> = vec![(self.local, &self.recovery)];
        for m in self.view.members() {
            if *m == self.local {
                continue;
            }
            match self.syncs.get(m) {
                Some(s) if s.info.entries.len() as u64 == s.expected => infos.push((*m, &s.info)),
                _ => return,
            }
        }
        let last_view = infos.iter().map(|(_, r)| r.last_view).max().unwrap_or(0);
        let members: Vec<SocketAddr> = infos.iter().find(|(_, r)| r.last_view == last_view).map(|(_, r)| r.members.clone()).unwrap_or_default();
        let acceptors = &members[..self.acceptors_wanted.min(members.len())];
        let present: HashSet<SocketAddr> = infos.iter().filter(|(_, r)| r.complete).map(|(m, _)| m.addr()).collect();
        let have = acceptors.iter().filter(|a| present.contains(*a)).count();
        let have_members = members.iter().filter(|a| present.contains(*a)).count();
        // A majority of the acceptors: one of them has every message
        // delivered in that view. A majority of the members: a group that
        // went on without them (a member restarted into a partition) must
        // have kept a majority of that view, so it is not this one.
        if last_view > 0 && (have < majority(acceptors.len()) || have_members < majority(members.len())) {
            if !self.waiting_reported {
                self.waiting_reported = true;
                let missing: Vec<String> = members.iter().filter(|a| !present.contains(*a)).map(|a| a.to_string()).collect();
                let what = format!(
                    "recovery waits for the logs of a majority of the acceptors and of the members of view {last_view}: {have} of {} acceptors and {have_members} of {} members present (missing {}); SAFE casts are held",
                    acceptors.len(),
                    members.len(),
                    missing.join(", ")
                );
                cx.up(Up::Problem(Problem { layer: "SAFE", what }));
            }
            return;
        }
        if last_view > 0 && have_members < members.len() && !waited {
            let deadline = self.view_started + self.recover_wait;
            if cx.now() < deadline {
                cx.set_timer(TIMER_RECOVER, deadline);
                return;
            }
        }
        let gc = infos.iter().map(|(_, r)| r.gc).max().unwrap_or(0);
        let mut merged: BTreeMap<u64, (SafeTag, Bytes)> = BTreeMap::new();
        for (_, r) in infos.iter().filter(|(_, r)| r.last_view == last_view) {
            for (slot, (_, tag, body)) in r.entries.range(gc + 1..) {
                merged.entry(*slot).or_insert_with(|| (*tag, body.clone()));
            }
        }
        let mut seen = HashSet::new();
        let entries: Vec<Known> = merged.into_iter().filter(|(_, (tag, _))| seen.insert(*tag)).map(|(s, (t, b))| (s, t, b)).collect();
        self.stats.recoveries += 1;
        self.send_newview(cx, true, gc, Some(entries));
    }

    // ---- NEWVIEW ------------------------------------------------------------------

    /// The leader's sequence for this ballot: `entries` (a recovery), or
    /// every slot it knows above the GC point and then every cast nobody
    /// proposed yet.
    fn send_newview(&mut self, cx: &mut Context<'_>, replay: bool, base: u64, entries: Option<Vec<Known>>) {
        if self.newview_sent == self.ballot {
            return;
        }
        self.newview_sent = self.ballot;
        let entries = entries.unwrap_or_else(|| {
            let mut out: Vec<Known> = self.held_slots(0).collect();
            let mut next = out.last().map_or(self.delivered.max(self.gc), |e| e.0).max(self.delivered) + 1;
            for key in &self.data_order {
                if let Some(d) = self.data.get(key) {
                    out.push((next, d.tag, d.body.clone()));
                    next += 1;
                }
            }
            out
        });
        self.stats.newviews += 1;
        Self::cast_header(cx, Header::NewView { ballot: self.ballot, count: entries.len() as u64, replay, base }, None);
        for (slot, tag, body) in &entries {
            Self::cast_header(cx, Header::Entry { ballot: self.ballot, slot: *slot, tag: *tag }, Some(body));
        }
    }

    fn process_newview(&mut self, cx: &mut Context<'_>, nv: IncomingNewView) {
        let recovering = self.phase == Phase::Recovering;
        // A member that was live earlier in this incarnation (then cut off)
        // replays nothing: what it delivered then it does not deliver again.
        let fresh = recovering && !self.replay_announced && self.delivered_id.is_empty();
        if recovering && !nv.replay {
            // A live group's sequence reaches a member without its state
            // (the transfer was lost): it cannot know what it has applied.
            return cx.drop_malformed("newview_without_state");
        }
        if recovering {
            self.phase = Phase::Live;
            self.delivered = nv.base;
            self.gc = nv.base;
            self.done_upto = nv.base;
            self.slots.clear();
            self.slot_of.clear();
        }
        if !recovering && nv.base > self.gc && nv.base <= self.delivered {
            self.gc = nv.base;
            self.done_upto = self.done_upto.max(nv.base);
        }
        let old = std::mem::take(&mut self.slots);
        self.slot_of.clear();
        let mut replay_list = Vec::new();
        for (slot, tag, body) in nv.entries {
            if slot <= self.gc {
                continue;
            }
            let before = old.get(&slot);
            let seen_before = recovering && self.delivered_id.get(&tag.sender).is_some_and(|d| *d >= tag.id);
            let delivered = slot <= self.delivered || seen_before;
            let done = before.is_some_and(|b| b.done) || seen_before;
            if fresh {
                replay_list.push((tag, body.clone()));
            }
            self.data.remove(&(tag.sender, tag.id));
            self.slot_of.insert(tag, slot);
            self.slots.insert(slot, Slot { tag, body: Some(body), delivered, done, replayed: fresh });
        }
        self.next_slot = self.slots.keys().next_back().map_or(self.delivered, |s| *s).max(self.delivered) + 1;
        // Casts now in a slot are no longer loose; loose ones of older
        // ballots that the leader did not have cannot exist (virtual
        // synchrony), and are dropped if they do.
        let slot_of = &self.slot_of;
        let ballot = self.ballot;
        let mut stale = 0;
        self.data.retain(|_, d| {
            let keep = !slot_of.contains_key(&d.tag) && d.arrived == ballot;
            stale += u64::from(!keep && !slot_of.contains_key(&d.tag));
            keep
        });
        self.stats.stale_data_dropped += stale;
        self.data_order.retain(|k| self.data.contains_key(k));
        self.awaiting.clear();
        self.installed = true;
        self.installed_ballot = self.ballot;
        self.installed_members = self.member_addrs();
        // The log becomes exactly this ballot's sequence.
        self.acked = self.slots.keys().next_back().copied().unwrap_or(self.delivered).max(self.delivered);
        if self.log.is_some() {
            // A non-acceptor keeps only the VIEW record: restarted, it then
            // knows whose logs a recovery needs.
            let records = if self.acceptor { self.snapshot_records() } else { vec![Record::View { ballot: self.ballot, members: self.member_addrs() }] };
            self.log_write(cx, &records, true);
        }
        if recovering {
            self.stats.recoveries += u64::from(!self.leader);
            self.go_live(cx, replay_list);
        }
        self.send_ack(cx);
        // The leader proposes what arrived in this view before its NEWVIEW came back.
        if self.leader && !self.blocked {
            let keys: Vec<(MemberId, u64)> = self.data_order.iter().copied().collect();
            for key in keys {
                self.propose_data(cx, key);
            }
        }
        self.try_deliver(cx);
        self.update_window(cx);
    }

    fn go_live(&mut self, cx: &mut Context<'_>, replay: Vec<(SafeTag, Bytes)>) {
        self.phase = Phase::Live;
        self.recovery = Recovery { complete: true, ..Recovery::default() };
        if self.durable() && !self.replay_announced {
            self.replay_announced = true;
            self.stats.replayed += replay.len() as u64;
            cx.up(Up::Replay(replay));
        }
        while let Some(msg) = self.outbox.pop_front() {
            cx.down(Down::Cast(msg));
        }
    }

    // ---- proposals ------------------------------------------------------------------

    /// Leader: puts the loose cast `key` in the next slot.
    fn propose_data(&mut self, cx: &mut Context<'_>, key: (MemberId, u64)) {
        let Some(d) = self.data.remove(&key) else { return };
        let Some(rank) = self.view.rank_of(&key.0) else {
            // A departed sender's cast waits for the next NEWVIEW, which carries bodies.
            self.data.insert(key, d);
            return;
        };
        let slot = self.next_slot;
        self.next_slot += 1;
        if self.to_propose.is_empty() {
            self.to_propose_first = slot;
            cx.set_timer(TIMER_PROPOSE, cx.now() + self.batch_delay);
        }
        self.to_propose.push(Ref { rank: rank as u32, view: d.tag.view, id: d.tag.id });
        self.slot_of.insert(d.tag, slot);
        self.slots.insert(slot, Slot { tag: d.tag, body: Some(d.body), delivered: false, done: false, replayed: false });
        self.stats.proposed += 1;
        if self.to_propose.len() >= self.batch {
            self.flush_proposals(cx);
        }
    }

    fn flush_proposals(&mut self, cx: &mut Context<'_>) {
        cx.cancel_timer(TIMER_PROPOSE);
        if self.to_propose.is_empty() {
            return;
        }
        let refs = std::mem::take(&mut self.to_propose);
        self.stats.proposals_sent += 1;
        Self::cast_header(cx, Header::Propose { ballot: self.ballot, first: self.to_propose_first, refs }, None);
    }

    fn on_propose(&mut self, cx: &mut Context<'_>, first: u64, refs: Refs) {
        if self.leader {
            // Its own proposal, already in its slots.
            self.advance_acks(cx);
            return self.try_deliver(cx);
        }
        if first != self.next_slot {
            return cx.drop_malformed("proposal_out_of_sequence");
        }
        if refs.iter().any(|r| r.rank as usize >= self.view.len()) {
            return cx.drop_malformed("bad_rank");
        }
        for (i, r) in refs.iter().enumerate() {
            let slot = first + i as u64;
            let sender = self.view.members()[r.rank as usize];
            let tag = SafeTag { sender, view: r.view, id: r.id };
            let body = match self.data.remove(&(sender, r.id)) {
                Some(d) => Some(d.body),
                None => {
                    self.awaiting.insert((sender, r.id), slot);
                    None
                }
            };
            self.slot_of.insert(tag, slot);
            self.slots.insert(slot, Slot { tag, body, delivered: false, done: false, replayed: false });
        }
        self.next_slot = first + refs.len() as u64;
        self.data_order.retain(|k| self.data.contains_key(k));
        self.advance_acks(cx);
        self.try_deliver(cx);
    }

    fn on_data(&mut self, cx: &mut Context<'_>, from: MemberId, view: u64, id: u64, body: Bytes) {
        let tag = SafeTag { sender: from, view, id };
        if self.delivered_id.get(&from).is_some_and(|d| *d >= id)
            || self.slot_of.get(&tag).is_some_and(|s| self.slots.get(s).is_some_and(|sl| sl.body.is_some()))
        {
            self.stats.duplicates += 1;
            return;
        }
        self.pending_ids.entry(from).or_default().hold(id);
        if let Some(slot) = self.awaiting.remove(&(from, id)) {
            if let Some(s) = self.slots.get_mut(&slot) {
                s.body = Some(body);
            }
            self.advance_acks(cx);
            return self.try_deliver(cx);
        }
        self.data.insert((from, id), Data { tag, body, arrived: self.ballot });
        self.data_order.push_back((from, id));
        if self.leader && self.installed && self.phase == Phase::Live && !self.blocked {
            self.propose_data(cx, (from, id));
        }
        self.update_window(cx);
    }

    // ---- acknowledgements and delivery ------------------------------------------------

    /// Logs (as an acceptor) and acknowledges every newly held slot.
    fn advance_acks(&mut self, cx: &mut Context<'_>) {
        if !self.installed || self.log_failed {
            return;
        }
        let mut upto = self.acked;
        let mut records = Vec::new();
        for (s, slot) in self.slots.range(self.acked + 1..) {
            let Some(body) = &slot.body else { break };
            if *s != upto + 1 {
                break;
            }
            if self.acceptor && self.log.is_some() {
                records.push(Record::Entry(Entry { slot: *s, ballot: self.ballot, tag: slot.tag, body: body.clone() }));
            }
            upto = *s;
        }
        if upto == self.acked {
            return;
        }
        if !records.is_empty() {
            self.log_write(cx, &records, false);
            if self.log_failed {
                return;
            }
        }
        self.acked = upto;
        self.send_ack(cx);
    }

    fn send_ack(&mut self, cx: &mut Context<'_>) {
        if self.log_failed {
            return;
        }
        cx.cancel_timer(TIMER_ACK);
        self.acked_done = self.done_upto;
        self.stats.acks_sent += 1;
        Self::cast_header(cx, Header::Ack { ballot: self.ballot, upto: self.acked, done: self.done_upto }, None);
    }

    fn on_ack(&mut self, cx: &mut Context<'_>, rank: usize, upto: u64, done: u64) {
        let a = &mut self.acks[rank];
        a.0 = a.0.max(upto);
        a.1 = a.1.max(done);
        self.try_deliver(cx);
        self.maybe_gc(cx);
    }

    fn chosen(&self, slot: u64) -> bool {
        let acceptors = self.acks[..self.n_acceptors].iter().filter(|a| a.0 >= slot).count();
        let members = self.acks.iter().filter(|a| a.0 >= slot).count();
        acceptors >= majority(self.n_acceptors) && members >= majority(self.acks.len())
    }

    fn try_deliver(&mut self, cx: &mut Context<'_>) {
        if self.phase != Phase::Live || !self.installed {
            return;
        }
        let auto_done = !self.durable();
        while let Some((&s, slot)) = self.slots.range(self.delivered + 1..).next() {
            if slot.delivered {
                // Delivered before this member was cut off (see process_newview).
                self.delivered = s;
                continue;
            }
            if slot.body.is_none() || !self.chosen(s) {
                break;
            }
            let slot = self.slots.get_mut(&s).expect("just seen");
            slot.delivered = true;
            self.delivered = s;
            let tag = slot.tag;
            let body = slot.body.clone().expect("checked");
            let replayed = slot.replayed;
            slot.done |= auto_done;
            if self.delivered_id.get(&tag.sender).is_some_and(|d| *d >= tag.id) && !replayed {
                self.stats.duplicates += 1;
                continue;
            }
            self.delivered_id.insert(tag.sender, tag.id);
            if let Some(p) = self.pending_ids.get_mut(&tag.sender) {
                p.delivered(tag.id);
            }
            self.stats.delivered += 1;
            cx.up(Up::Durable { tag, msg: Msg::new(body), replayed });
            self.release_plain(cx, tag.sender);
        }
        self.advance_done(cx);
        self.update_window(cx);
    }

    // ---- plain casts ----------------------------------------------------------------

    fn on_plain(&mut self, cx: &mut Context<'_>, from: MemberId, after: u64, msg: Msg) {
        let waits = self.pending_ids.get(&from).and_then(HeldIds::first).is_some_and(|first| first <= after);
        let queue = self.plain_held.entry(from).or_default();
        if waits || !queue.is_empty() {
            queue.push_back((after, msg));
            return;
        }
        self.stats.plain_delivered += 1;
        cx.up(Up::Cast { from, msg });
    }

    fn release_plain(&mut self, cx: &mut Context<'_>, from: MemberId) {
        let first = self.pending_ids.get(&from).and_then(HeldIds::first);
        let Some(queue) = self.plain_held.get_mut(&from) else { return };
        while let Some((after, _)) = queue.front() {
            if first.is_some_and(|f| f <= *after) {
                break;
            }
            let (_, msg) = queue.pop_front().expect("front exists");
            self.stats.plain_delivered += 1;
            cx.up(Up::Cast { from, msg });
        }
    }

    /// At a view change, plain casts still waiting for their senders'
    /// SAFE casts are delivered in their own view (virtual synchrony wins
    /// over their FIFO order with the SAFE casts, which the new view
    /// re-proposes): held longer, a joiner would never see them.
    fn release_all_plain(&mut self, cx: &mut Context<'_>) {
        for (from, queue) in self.plain_held.iter_mut() {
            while let Some((_, msg)) = queue.pop_front() {
                self.stats.plain_delivered += 1;
                cx.up(Up::Cast { from: *from, msg });
            }
        }
    }

    // ---- done and GC ----------------------------------------------------------------

    fn on_done(&mut self, cx: &mut Context<'_>, tag: SafeTag) {
        let Some(slot) = self.slot_of.get(&tag).and_then(|s| self.slots.get_mut(s)) else { return };
        if slot.delivered {
            slot.done = true;
        }
        self.advance_done(cx);
    }

    fn advance_done(&mut self, cx: &mut Context<'_>) {
        let before = self.done_upto;
        for (s, slot) in self.slots.range(self.done_upto + 1..) {
            if !(slot.delivered && slot.done) {
                break;
            }
            self.done_upto = *s;
        }
        if self.done_upto != before && self.installed && cx.timer(TIMER_ACK).is_none() {
            cx.set_timer(TIMER_ACK, cx.now() + self.batch_delay.max(Duration::from_millis(1)));
        }
    }

    fn maybe_gc(&mut self, cx: &mut Context<'_>) {
        if !self.leader || self.blocked || !self.installed {
            return;
        }
        let all_done = self.acks.iter().map(|a| a.1).min().unwrap_or(0).min(self.delivered);
        if all_done > self.gc_sent.max(self.gc) {
            self.gc_sent = all_done;
            Self::cast_header(cx, Header::Gc { ballot: self.ballot, slot: all_done }, None);
        }
    }

    fn on_gc(&mut self, cx: &mut Context<'_>, slot: u64) {
        if slot <= self.gc || slot > self.delivered {
            return;
        }
        self.gc = slot;
        self.stats.gc_rounds += 1;
        let keep = self.slots.split_off(&(slot + 1));
        for (_, s) in std::mem::replace(&mut self.slots, keep) {
            self.slot_of.remove(&s.tag);
        }
        if self.log.is_some() && self.acceptor {
            if self.log_records > 2 * self.slots.len() as u64 + COMPACT_SLACK {
                let records = self.snapshot_records();
                self.log_write(cx, &records, true);
            } else {
                self.log_write(cx, &[Record::Gc { slot }], false);
            }
        }
    }
}

impl Layer for Safe {
    fn init(&mut self, cx: &mut Context<'_>) {
        self.local = cx.local();
        if self.durable() {
            self.open_log(cx);
        }
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(msg) => self.cast(cx, msg),
            Down::Send { to, mut msg } => {
                msg.push_with(|w| Header::Plain { after: 0 }.encode(w));
                cx.down(Down::Send { to, msg });
            }
            Down::Done(tag) => self.on_done(cx, tag),
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } => self.on_cast(cx, from, msg),
            Up::Send { from, mut msg } => match msg.pop_with(|r| Header::decode(r, 0)) {
                Ok(Header::Plain { .. }) => cx.up(Up::Send { from, msg }),
                Ok(_) => cx.drop_malformed("unexpected_kind"),
                Err(e) => cx.drop_malformed(e.0),
            },
            Up::Block => {
                self.blocked = true;
                cx.cancel_timer(TIMER_PROPOSE);
                self.to_propose.clear();
                cx.up(Up::Block);
            }
            Up::View(v) => {
                self.release_all_plain(cx);
                self.on_view(cx, v.clone());
                cx.up(Up::View(v));
            }
            Up::StateRequest { token, joiners } => {
                self.release_all_plain(cx);
                self.provide_state(cx, token);
                cx.up(Up::StateRequest { token, joiners });
            }
            // Every transfer (a restarted one too) opens with SAFE's chunk:
            // the provider's SAFE sends it ahead of the application's.
            Up::StateBegin => {
                // The application's state is replaced: for it, this is a
                // new start (a group absorbed, or re-formed around another
                // member), with its own Replay and deliveries.
                self.replay_announced = false;
                self.delivered_id.clear();
                self.transfer = None;
                self.joining = true;
                self.awaiting_state = true;
                cx.up(Up::StateBegin);
            }
            Up::StateChunk(data) if self.awaiting_state => self.on_state_chunk(cx, data),
            Up::StateDone => {
                match self.transfer.take() {
                    Some(t) if t.complete() => self.adopt_state(cx, t),
                    // The state was lost (VSYNC begins and ends it empty).
                    _ if self.awaiting_state => {
                        self.awaiting_state = false;
                        self.joined_recovering(cx);
                    }
                    _ => {}
                }
                cx.up(Up::StateDone);
            }
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        match key {
            TIMER_PROPOSE if self.leader && !self.blocked => self.flush_proposals(cx),
            TIMER_SYNC => self.on_sync_timer(cx),
            TIMER_RECOVER => self.try_recover(cx, true),
            TIMER_ACK if self.installed && !self.blocked && self.done_upto != self.acked_done => self.send_ack(cx),
            _ => {}
        }
    }

    fn stats(&self, out: &mut Stats) {
        let c = &self.stats;
        out.add("cast", c.cast)
            .add("delivered", c.delivered)
            .add("replayed", c.replayed)
            .add("plain_delivered", c.plain_delivered)
            .add("proposed", c.proposed)
            .add("proposals_sent", c.proposals_sent)
            .add("acks_sent", c.acks_sent)
            .add("newviews", c.newviews)
            .add("recoveries", c.recoveries)
            .add("gc_rounds", c.gc_rounds)
            .add("gc_slot", self.gc)
            .add("delivered_slot", self.delivered)
            .add("slots", self.slots.len() as u64)
            .add("pending", self.pending() as u64)
            .add("live", u64::from(self.phase == Phase::Live))
            .add("acceptor", u64::from(self.acceptor))
            .add("log_records", self.log_records)
            .add("log_damage", c.log_damage)
            .add("log_failed", u64::from(self.log_failed))
            .add("duplicates", c.duplicates)
            .add("stale_data_dropped", c.stale_data_dropped)
            .add("backpressure", u64::from(self.window.is_closed()));
        if let Some(log) = &self.log {
            out.add("log_bytes", log.len());
            log.stats(out);
        }
    }
}
