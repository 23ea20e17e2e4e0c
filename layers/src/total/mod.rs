//! # TOTAL: sequencer-based total order (ABCAST) above virtual synchrony
//!
//! Every member delivers the ordered casts of a view in one and the same
//! order, consistent with each sender's FIFO order and, when CAUSAL is
//! below, with causality. It is the fixed-sequencer protocol of Isis's
//! ABCAST and Horus's `SEQUENCER`/`TOTAL`, run *above* the membership
//! layer so that virtual synchrony does the hard part: every survivor of a
//! view has received the same casts of that view, the sequencer's order
//! announcements included.
//!
//! * **The sequencer** is the view's coordinator (rank 0). It orders each
//!   ordered cast at the moment VSYNC delivers it to the sequencer's TOTAL,
//!   so its order is its receive order (causal when CAUSAL is below). It
//!   records the order as *runs*: `(rank, count)`, "the next `count`
//!   ordered casts of the member of rank `rank`", merging consecutive casts
//!   of one sender into one run.
//! * **Announcements.** The sequencer casts its runs, tagged with its view,
//!   through VSYNC like any cast. Every member, the sequencer included,
//!   keeps a FIFO queue of received casts per sender and a queue of
//!   announced runs, and delivers by consuming runs in order: deliver the
//!   head of the named sender's queue, `count` times. A run that arrives
//!   before its data (possible without CAUSAL below) waits.
//!
//!   ```text
//!    B ──── m1 (ordered, ts) ─────────►  every member: queue[B] = [m1]
//!    C ──── m2 ──────────────────────►                queue[C] = [m2]
//!    A (sequencer) receives m1, m2: runs (B,1) (C,1), pending
//!    A ──── ORDER [(B,1),(C,1)] ─────►  every member: deliver m1, then m2
//!    A ──── a1 SEQUENCED [runs…] ────►  every member: deliver runs…, then a1
//!   ```
//! * **Batching and piggybacking.** The sequencer announces when
//!   `batch_msgs` casts await an order, or `batch_us` after the first of
//!   them arrived, whichever comes first. Its own ordered casts are never
//!   delayed: each carries every pending run and then "this message", so it
//!   is delivered everywhere, the sequencer included, as soon as it comes
//!   back up, and under load the announcements ride on the sequencer's
//!   traffic. `announcements_sent`, `piggybacked` and `ordered` in the
//!   stats give the cost: announcements per ordered cast.
//! * **View changes.** On [`Up::Block`] the sequencer stops announcing
//!   (anything it sent now would be held by VSYNC and travel in the next
//!   view). An announcement is used only in the view whose tag it carries;
//!   one that comes up in another view (VSYNC held it across the change) is
//!   ignored (`stale_order`); a stale piggyback is ignored too and its cast
//!   is ordered like any other. When the next view arrives, every cast of
//!   the old view still undelivered is delivered, in order of (Lamport
//!   timestamp, sender rank in the old view): the same set at every member
//!   that moves to the new view (virtual synchrony), and the same runs
//!   consumed before it, hence the same sequence. Timestamps grow along
//!   every sender's casts and along causality (each cast takes
//!   `++clock`, each receipt sets `clock = max(clock, ts)`), so the rule
//!   keeps FIFO and causal order (and a sender's casts keep their order
//!   whatever their timestamps claim). Then the per-view state restarts, and the
//!   new view's coordinator is the sequencer (takeover). VSYNC asks for the
//!   joiners' state ([`Up::StateRequest`]) just before it passes the new
//!   view up; TOTAL holds the request until that view arrives and passes
//!   it up after the leftovers, so the state includes them. A leaving
//!   member delivers its leftovers before [`Up::Left`]. Joiners start with
//!   their first view.
//! * **Per-cast order.** A cast that asks for [`Order::Fifo`] is
//!   *unordered*: it is delivered as soon as every earlier cast of its
//!   sender (of any kind) has been, and no run names it. [`Order::Causal`]
//!   is delivered in total order: delivered on arrival, a causal cast could
//!   overtake a total cast it causally follows that still awaits its order,
//!   breaking causality; holding it for exactly its causal predecessors
//!   would need CAUSAL's dependencies, which TOTAL does not see.
//!   `Order::Total` and no request are total. Sends and [`MsgFlags::OOB`]
//!   casts pass at once, unordered.
//!
//! What holds, precisely: members that go from view V to the same next view
//! deliver the same ordered casts of V in the same order, so members that
//! neither crash nor leave the primary partition deliver their common
//! ordered casts in one order. A member whose next view is *non-primary* (cut off from the
//! primary partition) discards V's leftovers rather than deliver them in an
//! order the primary partition may not share (`leftovers_discarded`); it
//! takes the group's state when it rejoins. The order is not uniform, as in
//! Isis: a member that crashes may have delivered, through its own
//! loopback, casts in an order that died with it (the sequencer's last
//! announcement that nobody else received), and a member removed without
//! taking part in the flush (falsely suspected) delivers its leftovers from
//! what it alone received. Uniform order would need delivery after
//! stability (a SAFE layer), at the cost of latency.
//!
//! ## What it needs below
//! Membership with virtual synchrony (VSYNC), itself over reliable FIFO
//! (NAK): `FRAG:NAK:VSYNC:TOTAL`, or `FRAG:NAK:CAUSAL:VSYNC:TOTAL` for an
//! order consistent with causality.
//!
//! ## Header
//! ```text
//!  unordered:  | 1 u8 | ts varint | payload ...                                 2 B for ts < 128
//!  ordered:    | 2 u8 | ts varint | payload ...                                 2 B for ts < 128
//!  sequenced:  | 3 u8 | ts varint | view u32 | runs varint | (rank, count)* | payload   7 B + 2 B per run
//!  order:      | 4 u8 | view u32 | runs varint | (rank varint, count varint)* |         6 B + 2 B per run
//!  plain:      | 5 u8 | payload ...                                           1 B (sends, OOB casts)
//! ```
//! `ts` is the Lamport timestamp; `view` the tag of the view the sequencer
//! made the runs in ([`crate::nak::view_tag`]). A header names at most
//! `batch_msgs` casts in at most `batch_msgs` runs, so it is at most
//! `15 + varint(batch_msgs) + batch_msgs × (3 + varint(batch_msgs))` bytes
//! (144 with the default), the bound the builder sees; ranks of up to three
//! varint bytes (views below 2^21 members) always fit it, and the sequencer
//! splits what would not.
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `batch_msgs` | 32 | casts awaiting an order that make the sequencer announce at once; the most one header names (wire) |
//! | `batch_us` | 0 | most time an ordered cast waits at the sequencer before an announcement (0: until the driver next fires timers, at the end of the current round of input) |
//! | `max_pending` | 10000 | undelivered casts held before this member's send window closes (reopens at ¾) |
//!
//! ## Bad input
//! Headers are decoded into typed values or dropped and counted by reason:
//! unknown kinds, truncated varints, more runs or more casts than
//! `batch_msgs`, empty runs, trailing bytes after an announcement, data
//! from non-members, orders of another view (`stale_order`, expected
//! around view changes). An announcement from a member other than the
//! sequencer, or naming a rank outside the view, is dropped whole (every
//! member decides alike, so they stay in agreement); a piggyback that is
//! not the sequencer's is ignored and its cast ordered normally. Memory is
//! bounded: queued runs by [`MAX_QUEUED_RUNS`] (beyond it an announcement
//! is dropped and a [`Problem`] reported, since agreement is then lost),
//! held casts by what VSYNC delivers, with `max_pending` closing the local
//! send window so that correct members stop adding to it.

mod wire;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use crate::nak::view_tag;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::codec::Writer;
use strata_stack::{
    Context, Down, Layer, LayerDescriptor, MemberId, Msg, MsgFlags, Order, ParamKind, ParamSpec, Params, Problem, Props, SendWindow, Stats, TimerKey, Up, View,
    ViewId,
};
use wire::{kind, Header, Run};

/// The `TOTAL` descriptor.
pub const TOTAL: LayerDescriptor = LayerDescriptor {
    name: "TOTAL",
    summary: "total order by a sequencer (the view's coordinator) above virtual synchrony; causal when CAUSAL is below",
    requires: Props::RELIABLE.union(Props::FIFO).union(Props::MEMBERSHIP),
    provides: Props::TOTAL.union(Props::FIFO),
    params: &[
        ParamSpec {
            name: "batch_msgs",
            kind: ParamKind::U64 { min: 1, max: 1024 },
            default: "32",
            doc: "casts awaiting an order that make the sequencer announce at once; the most one header names",
            wire: true,
        },
        ParamSpec {
            name: "batch_us",
            kind: ParamKind::U64 { min: 0, max: 1_000_000 },
            default: "0",
            doc: "most time an ordered cast waits at the sequencer before an announcement (0: until the driver next fires timers, at the end of the current round of input)",
            wire: false,
        },
        strata_stack::window::MAX_PENDING,
    ],
    max_header_len: |p| wire::max_header_len(p.u64("batch_msgs") as u32),
    build: |p| Ok(Box::new(Total::new(p))),
};

/// Most announced runs a member queues while their casts have not arrived.
/// A correct sequencer only names casts it received, which every member
/// receives too; this bounds what a faulty one can make a member hold.
pub const MAX_QUEUED_RUNS: usize = 1 << 20;

const TIMER_ANNOUNCE: TimerKey = 0;

/// A received cast not yet delivered.
#[derive(Debug)]
struct Held {
    ts: u64,
    /// Waits for a run (else only for its sender's earlier casts).
    ordered: bool,
    msg: Msg,
}

/// One member of the view, as a sender.
#[derive(Debug)]
struct Sender {
    id: MemberId,
    /// Its received, undelivered casts, in its order. The front is always
    /// an ordered cast: unordered ones are delivered as soon as they reach
    /// the front.
    held: VecDeque<Held>,
}

/// An announced run being consumed; `count` is what is left of it.
#[derive(Copy, Clone, Debug)]
struct QueuedRun {
    rank: usize,
    count: u64,
}

/// The total-order layer.
#[derive(Debug)]
pub struct Total {
    batch: u32,
    batch_delay: Duration,

    local: MemberId,
    view: Arc<View>,
    /// `view_tag(view.id())`, carried by and compared with every order.
    tag: u32,
    /// Whether this member is rank 0 of `view`.
    sequencer: bool,
    /// A view change has started: the sequencer announces nothing more.
    blocked: bool,
    /// Lamport clock.
    clock: u64,
    /// Per rank of `view`.
    senders: Vec<Sender>,
    /// Announced runs, in order; the front is being consumed.
    runs: VecDeque<QueuedRun>,
    /// The sequencer's runs not yet sent, and the casts they name.
    unannounced: VecDeque<Run>,
    unannounced_msgs: u32,
    /// Bytes the unannounced runs take on the wire ([`wire::run_len`]),
    /// kept as they change so that a sequencer's cast need not add them up.
    unannounced_bytes: usize,
    /// Casts in `senders`.
    held: usize,
    window: SendWindow,
    overflow_reported: bool,
    /// An [`Up::StateRequest`] held until the view that follows it.
    state_request: Option<Up>,
    /// The runs of the header being decoded: reused, with room for the
    /// most a header names (`batch_msgs`), so decoding never allocates.
    decoded_runs: Vec<Run>,
    /// Encodes headers: reused, so that a long announcement allocates once
    /// in the layer's life rather than once per announcement.
    writer: Writer,

    ordered: u64,
    ordered_delivered: u64,
    unordered_delivered: u64,
    announcements_sent: u64,
    runs_announced: u64,
    piggybacked: u64,
    leftovers_delivered: u64,
    leftovers_discarded: u64,
    stale_order: u64,
    pending_max: u64,
}

impl Total {
    /// A layer with the given parameters.
    pub fn new(p: &Params) -> Self {
        let placeholder = MemberId::sim(0);
        let view = View::new(ViewId { counter: 0, creator: placeholder }, vec![placeholder]).expect("one member");
        Total {
            batch: p.u64("batch_msgs") as u32,
            batch_delay: Duration::from_micros(p.u64("batch_us")),
            local: placeholder,
            tag: view_tag(view.id()),
            view,
            sequencer: false,
            blocked: false,
            clock: 0,
            senders: Vec::new(),
            runs: VecDeque::new(),
            unannounced: VecDeque::new(),
            unannounced_msgs: 0,
            unannounced_bytes: 0,
            held: 0,
            window: SendWindow::reopening_at_three_quarters(p.u64("max_pending") as usize),
            overflow_reported: false,
            state_request: None,
            decoded_runs: Vec::with_capacity(p.u64("batch_msgs") as usize),
            writer: Writer::new(),
            ordered: 0,
            ordered_delivered: 0,
            unordered_delivered: 0,
            announcements_sent: 0,
            runs_announced: 0,
            piggybacked: 0,
            leftovers_delivered: 0,
            leftovers_discarded: 0,
            stale_order: 0,
            pending_max: 0,
        }
    }

    /// Starts the per-view state of `view` (nothing of the old one is left).
    fn install(&mut self, cx: &mut Context<'_>, view: Arc<View>) {
        debug_assert_eq!(self.held, 0, "leftovers are delivered before a view is installed");
        self.tag = view_tag(view.id());
        self.sequencer = view.coordinator() == self.local;
        self.blocked = false;
        self.senders = view.members().iter().map(|&id| Sender { id, held: VecDeque::new() }).collect();
        self.runs.clear();
        self.clear_unannounced();
        self.held = 0;
        self.overflow_reported = false;
        self.view = view;
        cx.cancel_timer(TIMER_ANNOUNCE);
        self.update_window(cx);
    }

    fn update_window(&mut self, cx: &mut Context<'_>) {
        self.window.update(cx, self.held);
    }

    // ---- sending ------------------------------------------------------------

    fn cast(&mut self, cx: &mut Context<'_>, mut msg: Msg) {
        if msg.flags().contains(MsgFlags::OOB) {
            msg.push(&[kind::PLAIN]);
            return cx.down(Down::Cast(msg));
        }
        // FIFO is the one request TOTAL can honour more cheaply; see the essay for Causal.
        let ordered = msg.order() != Some(Order::Fifo);
        self.clock = self.clock.saturating_add(1);
        let ts = self.clock;
        if ordered && self.sequencer && !self.blocked {
            if !self.unannounced_fit() {
                self.announce(cx);
            }
            self.writer.clear();
            wire::encode_sequenced(&mut self.writer, ts, self.tag, self.unannounced.iter());
            msg.push(self.writer.as_slice());
            if !self.unannounced.is_empty() {
                self.piggybacked += 1;
                self.runs_announced += self.unannounced.len() as u64;
                self.clear_unannounced();
                cx.cancel_timer(TIMER_ANNOUNCE);
            }
        } else {
            msg.push_with(|w| wire::encode_data(w, ts, ordered));
        }
        cx.down(Down::Cast(msg));
    }

    /// Whether every unannounced run fits one header.
    fn unannounced_fit(&self) -> bool {
        debug_assert_eq!(self.unannounced_bytes, self.unannounced.iter().map(|r| wire::run_len(*r)).sum::<usize>(), "the count follows the runs");
        wire::fits(self.unannounced.len(), self.unannounced_bytes, self.batch)
    }

    /// Forgets every unannounced run.
    fn clear_unannounced(&mut self) {
        self.unannounced.clear();
        self.unannounced_msgs = 0;
        self.unannounced_bytes = 0;
    }

    /// The sequencer orders the next ordered cast of `rank`.
    fn order(&mut self, cx: &mut Context<'_>, rank: usize) {
        let rank = rank as u32;
        match self.unannounced.back_mut() {
            Some(last) if last.rank == rank => {
                self.unannounced_bytes -= wire::run_len(*last);
                last.count += 1;
                self.unannounced_bytes += wire::run_len(*last);
            }
            _ => {
                let run = Run { rank, count: 1 };
                self.unannounced_bytes += wire::run_len(run);
                self.unannounced.push_back(run);
            }
        }
        self.unannounced_msgs += 1;
        self.ordered += 1;
        if self.unannounced_msgs >= self.batch {
            self.announce(cx);
        } else if self.unannounced_msgs == 1 {
            cx.set_timer(TIMER_ANNOUNCE, cx.now() + self.batch_delay);
        }
    }

    /// Casts every unannounced run, in as few announcements as fit.
    fn announce(&mut self, cx: &mut Context<'_>) {
        cx.cancel_timer(TIMER_ANNOUNCE);
        while !self.unannounced.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            for r in &self.unannounced {
                let b = wire::run_len(*r);
                if !wire::fits(n + 1, bytes + b, self.batch) {
                    break;
                }
                n += 1;
                bytes += b;
            }
            // One run always goes, so that the loop ends; it fits whenever
            // ranks stay below 2^21 (see wire::MAX_RANK_LEN).
            let n = n.max(1);
            let mut msg = Msg::empty();
            self.writer.clear();
            wire::encode_order(&mut self.writer, self.tag, self.unannounced.range(..n));
            msg.push(self.writer.as_slice());
            let sent: usize = self.unannounced.drain(..n).map(wire::run_len).sum();
            self.unannounced_bytes -= sent;
            self.announcements_sent += 1;
            self.runs_announced += n as u64;
            cx.down(Down::Cast(msg));
        }
        self.unannounced_msgs = 0;
    }

    // ---- receiving ----------------------------------------------------------

    fn on_cast(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg) {
        let batch = self.batch;
        let mut runs = std::mem::take(&mut self.decoded_runs);
        match msg.pop_with(|r| Header::decode(r, batch, &mut runs)) {
            Ok(header) => self.on_header(cx, from, header, &runs, msg),
            Err(e) => cx.drop_malformed(e.0),
        }
        self.decoded_runs = runs;
    }

    /// A cast whose header is decoded (`runs` holds its runs, if it has any).
    fn on_header(&mut self, cx: &mut Context<'_>, from: MemberId, header: Header, runs: &[Run], msg: Msg) {
        match (header, self.view.rank_of(&from)) {
            // The layers below vouched for it (VSYNC lets OOB casts of non-members through).
            (Header::Plain, _) => cx.up(Up::Cast { from, msg }),
            (_, None) => cx.drop_malformed("not_member"),
            (Header::Data { ts, ordered }, Some(rank)) => self.receive(cx, rank, ts, ordered, msg, true),
            (Header::Sequenced { ts, view }, Some(rank)) => {
                let sequenced = self.accept_order(cx, rank, view, runs, false);
                if sequenced {
                    self.queue_runs(runs);
                    self.queue_runs(&[Run { rank: 0, count: 1 }]);
                }
                self.receive(cx, rank, ts, true, msg, !sequenced);
            }
            (Header::Order { view }, Some(rank)) => {
                if self.accept_order(cx, rank, view, runs, true) {
                    self.queue_runs(runs);
                    self.deliver(cx);
                }
            }
        }
    }

    /// Whether the runs of an order from `rank`, made in the view tagged
    /// `view`, apply here. Every member decides alike from the same input,
    /// so an order refused here is refused everywhere. `whole` tells an
    /// announcement (dropped whole when refused) from a piggyback (only its
    /// order is ignored).
    fn accept_order(&mut self, cx: &mut Context<'_>, rank: usize, view: u32, runs: &[Run], whole: bool) -> bool {
        if view != self.tag {
            self.stale_order += 1;
            if whole {
                cx.drop_malformed("stale_order");
            }
            return false;
        }
        if rank != 0 {
            cx.drop_malformed("order_not_sequencer");
            return false;
        }
        if runs.iter().any(|r| r.rank as usize >= self.senders.len()) {
            cx.drop_malformed("bad_rank");
            return false;
        }
        if self.runs.len() + runs.len() + 1 > MAX_QUEUED_RUNS {
            cx.drop_malformed("runs_overflow");
            if !self.overflow_reported {
                self.overflow_reported = true;
                let what = format!("more than {MAX_QUEUED_RUNS} announced runs wait for casts that have not arrived; order announcements are being dropped and members may now deliver in different orders");
                cx.up(Up::Problem(Problem { layer: "TOTAL", what }));
            }
            return false;
        }
        true
    }

    fn queue_runs(&mut self, runs: &[Run]) {
        for r in runs {
            let rank = r.rank as usize;
            match self.runs.back_mut() {
                Some(last) if last.rank == rank => last.count += u64::from(r.count),
                _ => self.runs.push_back(QueuedRun { rank, count: u64::from(r.count) }),
            }
        }
    }

    /// A data cast of the member of rank `rank`. `to_order`: the sequencer
    /// must order it (it is not its own piggybacked cast).
    fn receive(&mut self, cx: &mut Context<'_>, rank: usize, ts: u64, ordered: bool, msg: Msg, to_order: bool) {
        self.clock = self.clock.max(ts);
        if ordered && to_order && self.sequencer && !self.blocked {
            self.order(cx, rank);
        }
        let s = &mut self.senders[rank];
        if !ordered && s.held.is_empty() {
            self.unordered_delivered += 1;
            return cx.up(Up::Cast { from: s.id, msg });
        }
        s.held.push_back(Held { ts, ordered, msg });
        self.held += 1;
        self.pending_max = self.pending_max.max(self.held as u64);
        self.deliver(cx);
    }

    /// Consumes announced runs while their casts are here.
    fn deliver(&mut self, cx: &mut Context<'_>) {
        while let Some(run) = self.runs.front_mut() {
            let s = &mut self.senders[run.rank];
            let Some(h) = s.held.pop_front() else { break };
            debug_assert!(h.ordered, "an unordered cast never waits at the front");
            cx.up(Up::Cast { from: s.id, msg: h.msg });
            self.ordered_delivered += 1;
            self.held -= 1;
            // Unordered casts that waited for this one follow it.
            while s.held.front().is_some_and(|h| !h.ordered) {
                let Some(h) = s.held.pop_front() else { break };
                cx.up(Up::Cast { from: s.id, msg: h.msg });
                self.unordered_delivered += 1;
                self.held -= 1;
            }
            run.count -= 1;
            if run.count == 0 {
                self.runs.pop_front();
            }
        }
        self.update_window(cx);
    }

    /// Delivers every cast of the view still held, by (timestamp, rank);
    /// within a sender its own order, whatever its timestamps say.
    fn deliver_leftovers(&mut self, cx: &mut Context<'_>) {
        while self.held > 0 {
            let next = self.senders.iter().enumerate().filter_map(|(r, s)| s.held.front().map(|h| (h.ts, r))).min();
            let Some((_, r)) = next else { break };
            let s = &mut self.senders[r];
            let Some(h) = s.held.pop_front() else { break };
            cx.up(Up::Cast { from: s.id, msg: h.msg });
            self.held -= 1;
            self.leftovers_delivered += 1;
        }
        debug_assert_eq!(self.held, 0, "the held count matches the queues");
        self.forget_view(cx);
    }

    /// Drops every cast of the view still held: this member is cut off from
    /// the primary partition, which orders them in its own way.
    fn discard_leftovers(&mut self, cx: &mut Context<'_>) {
        for s in &mut self.senders {
            self.leftovers_discarded += s.held.len() as u64;
            s.held.clear();
        }
        self.forget_view(cx);
    }

    /// Passes up a state request held for the view that should have
    /// followed it, after the leftovers (something else came first).
    fn release_state_request(&mut self, cx: &mut Context<'_>) {
        if let Some(request) = self.state_request.take() {
            self.deliver_leftovers(cx);
            cx.up(request);
        }
    }

    fn forget_view(&mut self, cx: &mut Context<'_>) {
        self.held = 0;
        self.runs.clear();
        self.clear_unannounced();
        cx.cancel_timer(TIMER_ANNOUNCE);
        self.update_window(cx);
    }
}

impl Layer for Total {
    fn init(&mut self, cx: &mut Context<'_>) {
        self.local = cx.local();
        let view = cx.view().clone();
        self.install(cx, view);
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(msg) => self.cast(cx, msg),
            Down::Send { to, mut msg } => {
                msg.push(&[kind::PLAIN]);
                cx.down(Down::Send { to, msg });
            }
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        if !matches!(ev, Up::View(_)) {
            self.release_state_request(cx);
        }
        match ev {
            Up::Cast { from, msg } => self.on_cast(cx, from, msg),
            Up::Send { from, mut msg } => match msg.pop_with(|r| r.u8()) {
                Ok(kind::PLAIN) => cx.up(Up::Send { from, msg }),
                Ok(_) => cx.drop_malformed("unknown_kind"),
                Err(_) => cx.drop_malformed("empty"),
            },
            Up::Block => {
                self.blocked = true;
                cx.cancel_timer(TIMER_ANNOUNCE);
                cx.up(Up::Block);
            }
            Up::View(v) => {
                if self.view.is_primary() && !v.is_primary() {
                    self.discard_leftovers(cx);
                } else {
                    self.deliver_leftovers(cx);
                }
                // The state handed to joiners includes the leftovers (or not).
                if let Some(request) = self.state_request.take() {
                    cx.up(request);
                }
                self.install(cx, v.clone());
                cx.up(Up::View(v));
            }
            // VSYNC asks for the state just before it passes the new view
            // up; whether the leftovers are delivered depends on that view.
            ev @ Up::StateRequest { .. } => self.state_request = Some(ev),
            // A leaving member flushed like the others: it delivers the
            // same leftovers, in the same order.
            Up::Left => {
                self.deliver_leftovers(cx);
                cx.up(Up::Left);
            }
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        if key == TIMER_ANNOUNCE && self.sequencer && !self.blocked {
            self.announce(cx);
        }
    }

    fn stats(&self, out: &mut Stats) {
        out.add("ordered", self.ordered)
            .add("ordered_delivered", self.ordered_delivered)
            .add("unordered_delivered", self.unordered_delivered)
            .add("announcements_sent", self.announcements_sent)
            .add("runs_announced", self.runs_announced)
            .add("piggybacked", self.piggybacked)
            .add("leftovers_delivered", self.leftovers_delivered)
            .add("leftovers_discarded", self.leftovers_discarded)
            .add("stale_order", self.stale_order)
            .add("pending", self.held as u64)
            .add("pending_max", self.pending_max)
            .add("queued_runs", self.runs.len() as u64)
            .add("backpressure", u64::from(self.window.is_closed()));
    }
}
