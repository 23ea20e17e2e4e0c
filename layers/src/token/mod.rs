//! # TOKEN: total order by a rotating token
//!
//! Every member delivers the ordered casts of a view in one and the same
//! order, and each member's casts in the order it cast them. The order is
//! decided by a token that moves among the members, as in the token-based
//! ABCAST of ISIS (Birman and Joseph, 1987) and the moving sequencer of
//! Chang and Maxemchuk (1984): only the holder of the token numbers casts,
//! and every member sends its own casts itself, so no single member stamps
//! or relays everyone's traffic (the bottleneck of a fixed sequencer, TOTAL).
//! A sequence number names one cast of a view and every member delivers a
//! view's casts in increasing number, so any two members deliver the
//! ordered casts they both deliver in the same order, even if one of them
//! crashed or was cut off (the order is uniform; delivery is not: a member
//! may deliver a cast and crash before anyone else received it).
//!
//! * **Stamping.** The token carries the next global sequence number of the
//!   view (from 0). Its holder casts its queued casts, each stamped with the
//!   next number, up to `max_burst` of them, then passes the token on. A
//!   member that does not hold the token keeps its casts in a local queue.
//! * **Passing.** A pass is itself a cast, so every member sees every pass and
//!   knows where the token is. It names its round (how many passes the view
//!   saw before it), the new holder's rank and the next sequence number. A
//!   member that has casts queued and does not hold the token casts a WANT,
//!   once per wish. After its burst the holder passes the token to the next
//!   member in cyclic rank order with an outstanding want; with none it keeps
//!   the token (parked) and passes it as soon as a WANT arrives, so a group
//!   with nothing to send is silent. A holder with casts still queued after
//!   its burst marks its pass *still wanting*, which counts as its want: the
//!   token comes back to it after the members that wanted it before.
//! * **Delivery.** Every member, the holder too (its casts come back through
//!   the loopback), delivers stamped casts strictly in sequence order and
//!   holds early arrivals. It processes passes strictly in round order as well
//!   (a pass can overtake the previous one when their senders differ), and a
//!   pass counts only if it comes from the member the previous one named.
//!   Since a holder's stamped casts precede its pass in its FIFO stream, every
//!   number below a pass's `next` has arrived, and been delivered, by the time
//!   the pass is processed; a pass claiming more is refused.
//! * **Wants do not depend on arrival order.** A WANT carries `seen`, the
//!   number of passes its sender had processed when it asked; a pass to that
//!   member at round `r` satisfies its wants with `seen <= r`, and a WANT that
//!   arrives after the pass that satisfied it is ignored. Every member thus
//!   derives the same wants from the same passes and WANTs, in whatever order
//!   the senders' streams interleave.
//! * **Per-cast order.** A cast that asks for [`Order::Fifo`] is not stamped:
//!   it waits in the queue behind its sender's earlier casts, goes down as
//!   UNORDERED without waiting for the token, and is delivered once every
//!   earlier stamped cast of its sender has been. [`Order::Causal`],
//!   [`Order::Total`] and no request are stamped (a stamped cast follows
//!   everything its sender had delivered, so total order here is causal too).
//!   Sends and [`MsgFlags::OOB`] casts pass at once, unordered, with a kind
//!   byte.
//! * **View changes.** On [`Up::Block`] the layer stops stamping and passing
//!   (anything it cast now would travel in the next view) and queues new
//!   casts; VSYNC then delivers the rest of the old view. On [`Up::View`] it
//!   delivers every stamped cast of the old view it still holds, in sequence
//!   order (virtual synchrony gives every survivor the same set; if crashed
//!   holders left a hole, every survivor skips the same hole), then resets
//!   (token at the new coordinator, sequence 0, round 0), passes the view up,
//!   and, once the input that brought the view is over (a timer armed for
//!   "now": VSYNC may follow the view with `Up::StateBegin`), stamps or asks
//!   for the token if its queue holds casts. Casts queued but never stamped
//!   are sent in the new view. At [`Up::StateRequest`], which VSYNC emits
//!   after the old view's last delivery and before the view, it delivers
//!   those leftovers first, so that the state sent to joiners contains them;
//!   a leaving member delivers them before [`Up::Left`]. Joiners start with
//!   their first view.
//! * **Casts caught by a view change.** A cast this layer passed down just
//!   before it saw `Up::Block` (the event was still queued) is held by VSYNC
//!   and sent in the next view. Stamped and unordered casts, passes and WANTs
//!   carry a view tag and are ignored, counted `stale`, in any other view. The
//!   layer keeps a copy of each of its own casts until it comes back through
//!   the loopback; those that have not come back when the next view arrives
//!   were not carried in the old one, and go back to the head of the queue,
//!   in order, to be sent again in the new view.
//! * **State transfer.** Between [`Up::StateBegin`] and [`Up::StateDone`]
//!   VSYNC holds the view's deliveries back, this member's own casts
//!   included, and drops them if the view changes before the state is loaded
//!   (the state holds them). The layer sends nothing meanwhile, so that an
//!   own cast that has not come back at a view change is always one the old
//!   view did not carry. The held deliveries follow `Up::StateDone`; it sends
//!   after them.
//! * **Flow control.** When the queue holds `max_queued` entries the layer
//!   closes the send window; it reopens once the queue is down to half.
//!
//! A holder that crashes takes the token with it; the view stalls until VSYNC
//! removes the member, and the next view starts with the token at its
//! coordinator. A [`Down::Flush`] waits in the queue behind the casts before
//! it, so it completes once they are stable. A [`Down::Leave`] goes down at
//! once: casts still queued then are not sent (flush first to keep them).
//!
//! ## What it needs below
//! Reliable FIFO casts within a view and membership with virtual synchrony:
//! `FRAG:NAK:VSYNC:TOKEN` or `FRAG:NAK:CAUSAL:VSYNC:TOKEN`.
//!
//! ## Header
//! ```text
//!  data:       | kind u8 | view u32 | seq varint | payload ...                  6 bytes below seq 128, 7 below 16384
//!  unordered:  | kind u8 | view u32 | payload ...                                 5 bytes
//!  pass:       | kind u8 | view u32 | round varint | to varint | next varint |     8 bytes and up, no payload
//!  want:       | kind u8 | view u32 | seen varint |                               6 bytes and up, no payload
//!  send, oob:  | kind u8 | payload ...                                           1 byte
//! ```
//! `view` is [`crate::nak::view_tag`] of the view's id. A pass whose sender
//! still wants the token has its own kind (`PASS_WANTING`).
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `max_burst` | 64 | casts a holder stamps before it passes the token to a member that wants it |
//! | `max_queued` | 4096 | queued casts at which the send window closes (reopens at half) |
//! | `max_pending` | 10000 | how far ahead of the next expected sequence number (or round) an arrival is kept; also bounds unordered casts waiting for their sender's stamped ones |
//!
//! ## Bad input
//! Every header is decoded into a typed value or dropped and counted
//! (`dropped` in the stats, by reason): empty or truncated headers, unknown
//! kinds, a send's kind in a cast or the reverse, bytes after a pass or a
//! WANT. Ordered traffic from non-members, or while this member is outside
//! the view, is dropped; of the current view's traffic, a pass naming a rank
//! outside the view. A stamped number already delivered or held, or
//! `max_pending` or more beyond the next expected one, is dropped, and so is
//! a pass of a round already processed or that far ahead, a pass from a
//! member that does not hold the token, to itself, or whose `next` is below
//! the token's or beyond what was delivered, and a WANT claiming passes that
//! far ahead. Memory is bounded by `max_pending` (held casts and passes) and
//! `max_queued` (own casts). Members are trusted not to forge stamps: a
//! member can disturb the order of a view, never make another panic or
//! allocate without bound.

mod wire;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use crate::nak::view_tag;
use std::collections::VecDeque;
use std::sync::Arc;
use strata_stack::codec::Malformed;
use strata_stack::{
    Context, Down, Layer, LayerDescriptor, MemberId, Msg, MsgFlags, Order, ParamKind, ParamSpec, Params, Props, SendWindow, Stats, TimerKey, Up, View,
};
use wire::{Header, Pass};

/// The `TOKEN` descriptor.
pub const TOKEN: LayerDescriptor = LayerDescriptor {
    name: "TOKEN",
    summary: "total order by a rotating token: its holder stamps casts with a global sequence number, then passes it to a member that wants it",
    requires: Props::RELIABLE.union(Props::FIFO).union(Props::MEMBERSHIP),
    provides: Props::TOTAL.union(Props::FIFO),
    params: &[
        ParamSpec {
            name: "max_burst",
            kind: ParamKind::U64 { min: 1, max: 1_000_000 },
            default: "64",
            doc: "casts a holder stamps before it passes the token to a member that wants it",
            wire: false,
        },
        ParamSpec {
            name: "max_queued",
            kind: ParamKind::U64 { min: 2, max: 10_000_000 },
            default: "4096",
            doc: "queued casts (waiting for the token) at which the send window closes; it reopens at half",
            wire: false,
        },
        ParamSpec {
            name: "max_pending",
            kind: ParamKind::U64 { min: 1, max: 10_000_000 },
            default: "10000",
            doc: "how far ahead of the next expected sequence number or round an arrival is kept (and most unordered casts held)",
            wire: false,
        },
    ],
    max_header_len: |_| wire::MAX_DATA_HEADER,
    build: |p| Ok(Box::new(Token::new(p))),
};

/// Sends what may go, once the events of the current input have been seen
/// (armed for "now" after a view and after a state load).
const TIMER_SEND: TimerKey = 0;

/// Something of this member's waiting for its turn to go down.
#[derive(Debug, Clone, PartialEq)]
enum Outgoing {
    /// A cast the token holder stamps.
    Ordered(Msg),
    /// A cast that asked for FIFO order only.
    Unordered(Msg),
    /// A flush request: goes down once every cast before it has.
    Flush(u64),
}

/// What this member knows of one sender's casts in the current view.
#[derive(Debug, Default)]
struct Sender {
    /// Its stamped casts accepted so far (in its FIFO order).
    stamped_received: u64,
    /// How many of them were delivered.
    stamped_delivered: u64,
    /// Its unordered casts waiting for its earlier stamped ones: how many of
    /// those must be delivered first, and the cast.
    waiting: VecDeque<(u64, Msg)>,
}

/// The token layer.
#[derive(Debug)]
pub struct Token {
    max_burst: u64,
    max_pending: u64,

    /// The current view.
    view: Arc<View>,
    /// Its tag, carried in every ordered-protocol header.
    epoch: u32,
    /// This member's rank, `None` outside the view.
    me: Option<usize>,
    /// Between `Up::Block` and the next view: nothing is stamped or passed.
    blocked: bool,
    /// Between `Up::StateBegin` and `Up::StateDone`: VSYNC holds the view's
    /// deliveries back until the state is loaded, and drops them if the view
    /// changes first, so this member's own casts might never come back
    /// through the loopback. It sends nothing meanwhile.
    loading: bool,

    // The token's path, as every member derives it from the passes.
    /// Passes processed (the round the next pass must carry).
    round: u64,
    /// The rank the last processed pass named (the coordinator at first).
    holder: usize,
    /// The sequence number the holder got the token with.
    holder_seq: u64,
    /// Passes that overtook an earlier one: slot `i` holds round `round + i`.
    early_passes: VecDeque<Option<(usize, usize, Pass)>>,
    /// Per rank: the `seen` of its outstanding want.
    wants: Vec<Option<u64>>,
    /// Per rank: the round of the last processed pass to it.
    last_pass_to: Vec<Option<u64>>,

    // This member as holder.
    /// Whether it holds the token now (false again as soon as it passes it).
    holding: bool,
    /// The next sequence number it stamps.
    stamp_next: u64,
    /// Casts stamped since it got the token.
    burst: u64,

    // Delivery.
    /// The next sequence number to deliver.
    next_deliver: u64,
    /// Stamped casts that arrived early: slot `i` holds sequence number
    /// `next_deliver + i`, with its sender's rank.
    pending: VecDeque<Option<(usize, Msg)>>,
    pending_count: usize,
    /// Per rank.
    senders: Vec<Sender>,
    /// Unordered casts waiting, over all senders.
    waiting_count: usize,

    // Sending.
    /// Own casts and flushes waiting for their turn.
    queue: VecDeque<Outgoing>,
    /// Own casts passed down and not yet back through the loopback.
    in_flight: VecDeque<Outgoing>,
    window: SendWindow,

    ordered_delivered: u64,
    unordered_delivered: u64,
    other_delivered: u64,
    tokens_passed: u64,
    tokens_received: u64,
    wants_sent: u64,
    stamped: u64,
    queued_max: u64,
    pending_max: u64,
    stale: u64,
    leftovers_delivered: u64,
    requeued: u64,
}

impl Token {
    /// A layer with the given parameters.
    pub fn new(p: &Params) -> Self {
        let placeholder = MemberId::sim(0);
        Token {
            max_burst: p.u64("max_burst"),
            max_pending: p.u64("max_pending"),
            view: View::initial(vec![placeholder]).expect("one member"),
            epoch: 0,
            me: None,
            blocked: false,
            loading: false,
            round: 0,
            holder: 0,
            holder_seq: 0,
            early_passes: VecDeque::new(),
            wants: Vec::new(),
            last_pass_to: Vec::new(),
            holding: false,
            stamp_next: 0,
            burst: 0,
            next_deliver: 0,
            pending: VecDeque::new(),
            pending_count: 0,
            senders: Vec::new(),
            waiting_count: 0,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            window: SendWindow::new(p.u64("max_queued") as usize, p.u64("max_queued") as usize / 2),
            ordered_delivered: 0,
            unordered_delivered: 0,
            other_delivered: 0,
            tokens_passed: 0,
            tokens_received: 0,
            wants_sent: 0,
            stamped: 0,
            queued_max: 0,
            pending_max: 0,
            stale: 0,
            leftovers_delivered: 0,
            requeued: 0,
        }
    }

    /// Starts a view: the token at its coordinator, sequence 0, round 0.
    fn install(&mut self, cx: &Context<'_>, view: &Arc<View>) {
        let n = view.len();
        self.view = view.clone();
        self.epoch = view_tag(view.id());
        self.me = view.rank_of(&cx.local());
        self.blocked = false;
        self.loading = false;
        self.round = 0;
        self.holder = 0;
        self.holder_seq = 0;
        self.early_passes.clear();
        self.wants = vec![None; n];
        self.last_pass_to = vec![None; n];
        self.holding = self.me == Some(0);
        self.stamp_next = 0;
        self.burst = 0;
        self.next_deliver = 0;
        self.pending.clear();
        self.pending_count = 0;
        self.senders = (0..n).map(|_| Sender::default()).collect();
        self.waiting_count = 0;
    }

    fn update_window(&mut self, cx: &mut Context<'_>) {
        let queued = self.queue.len();
        self.queued_max = self.queued_max.max(queued as u64);
        // Reopens at half.
        self.window.update(cx, queued);
    }

    // ---- sending -----------------------------------------------------------

    /// Sends whatever may go now, in queue order: unordered casts and flushes
    /// whenever they reach the head, ordered casts while this member holds
    /// the token (up to a burst when others want it); then passes the token
    /// or asks for it, and sets the send window.
    fn pump(&mut self, cx: &mut Context<'_>) {
        self.send_ready(cx);
        self.update_window(cx);
    }

    fn send_ready(&mut self, cx: &mut Context<'_>) {
        let Some(me) = self.me else { return };
        if self.blocked || self.loading {
            return;
        }
        loop {
            match self.queue.front() {
                None => break,
                Some(Outgoing::Ordered(_)) => {
                    if !self.holding || (self.burst >= self.max_burst && self.next_wanting().is_some()) {
                        break;
                    }
                    let Some(Outgoing::Ordered(msg)) = self.queue.pop_front() else { break };
                    self.stamp(cx, msg);
                }
                Some(Outgoing::Unordered(_)) => {
                    let Some(Outgoing::Unordered(mut msg)) = self.queue.pop_front() else { break };
                    self.in_flight.push_back(Outgoing::Unordered(msg.clone()));
                    msg.push_with(|w| Header::Unordered { tag: self.epoch }.encode(w));
                    cx.down(Down::Cast(msg));
                }
                Some(Outgoing::Flush(_)) => {
                    let Some(Outgoing::Flush(token)) = self.queue.pop_front() else { break };
                    cx.down(Down::Flush { token });
                }
            }
        }
        if self.holding {
            if let Some(to) = self.next_wanting() {
                let still_wants = !self.queue.is_empty();
                self.pass(cx, me, to, still_wants);
            }
        } else if matches!(self.queue.front(), Some(Outgoing::Ordered(_))) && self.wants[me].is_none() {
            self.want(cx, me);
        }
    }

    fn stamp(&mut self, cx: &mut Context<'_>, mut msg: Msg) {
        let seq = self.stamp_next;
        self.stamp_next += 1;
        self.burst += 1;
        self.stamped += 1;
        // Kept until it comes back: VSYNC may carry it in the next view instead.
        self.in_flight.push_back(Outgoing::Ordered(msg.clone()));
        msg.push_with(|w| Header::Data { tag: self.epoch, seq }.encode(w));
        cx.down(Down::Cast(msg));
    }

    /// The next rank after this member's, cyclically, with an outstanding want.
    fn next_wanting(&self) -> Option<usize> {
        let me = self.me?;
        (me + 1..self.wants.len()).chain(0..me).find(|&r| self.wants[r].is_some())
    }

    fn pass(&mut self, cx: &mut Context<'_>, me: usize, to: usize, still_wants: bool) {
        debug_assert!(self.holding && self.holder == me, "only the holder passes, and nobody passed since it got the token");
        let pass = Pass { round: self.round, to: to as u64, next: self.stamp_next, still_wants };
        self.holding = false;
        if still_wants {
            // What everyone records when the pass comes back; recorded now so
            // that this member does not ask again meanwhile.
            self.note_want(me, self.round + 1);
        }
        self.tokens_passed += 1;
        cx.down(Down::Cast(control(Header::Pass { tag: self.epoch, pass })));
    }

    fn want(&mut self, cx: &mut Context<'_>, me: usize) {
        let seen = self.round;
        self.note_want(me, seen);
        self.wants_sent += 1;
        cx.down(Down::Cast(control(Header::Want { tag: self.epoch, seen })));
    }

    /// Records that `r` asked for the token after processing `seen` passes,
    /// unless a pass already processed answered that request.
    fn note_want(&mut self, r: usize, seen: u64) {
        if self.last_pass_to[r].is_some_and(|round| round >= seen) {
            return;
        }
        self.wants[r] = Some(self.wants[r].map_or(seen, |w| w.max(seen)));
    }

    // ---- receiving ---------------------------------------------------------

    fn receive_cast(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg) {
        let header = match msg.pop_with(Header::decode) {
            Ok(h) => h,
            Err(Malformed(reason)) => return cx.drop_malformed(reason),
        };
        let tag = match header {
            Header::Oob => {
                self.other_delivered += 1;
                return cx.up(Up::Cast { from, msg });
            }
            Header::Send => return cx.drop_malformed("send_in_cast"),
            Header::Data { tag, .. } | Header::Unordered { tag } | Header::Pass { tag, .. } | Header::Want { tag, .. } => tag,
        };
        let Some(r) = self.view.rank_of(&from) else { return cx.drop_malformed("not_member") };
        if self.me.is_none() {
            return cx.drop_malformed("not_in_view");
        }
        if tag != self.epoch {
            // Sent in another view (VSYNC carried it past a view change):
            // nobody in this view delivers it.
            self.stale += 1;
            return;
        }
        match header {
            Header::Data { seq, .. } => {
                self.came_back(r);
                self.on_data(cx, r, seq, msg);
            }
            Header::Unordered { .. } => {
                self.came_back(r);
                self.on_unordered(cx, r, msg);
            }
            Header::Pass { .. } | Header::Want { .. } if !msg.is_empty() => cx.drop_malformed("trailing_bytes"),
            Header::Pass { pass, .. } => match usize::try_from(pass.to) {
                Ok(to) if to < self.view.len() => self.on_pass(cx, r, to, pass),
                _ => cx.drop_malformed("rank_outside_view"),
            },
            Header::Want { seen, .. } => self.on_want(cx, r, seen),
            Header::Send | Header::Oob => {} // handled above
        }
    }

    /// One of this member's casts came back through the loopback: the view
    /// carried it.
    fn came_back(&mut self, r: usize) {
        if Some(r) == self.me {
            self.in_flight.pop_front();
        }
    }

    fn on_data(&mut self, cx: &mut Context<'_>, r: usize, seq: u64, msg: Msg) {
        let Some(offset) = seq.checked_sub(self.next_deliver) else { return cx.drop_malformed("seq_delivered") };
        if offset >= self.max_pending {
            return cx.drop_malformed("seq_beyond_window");
        }
        if offset == 0 && self.pending.is_empty() {
            // The common case: the next one, nothing held.
            self.senders[r].stamped_received += 1;
            self.next_deliver += 1;
            return self.deliver_stamped(cx, r, msg);
        }
        let i = offset as usize;
        if self.pending.len() <= i {
            self.pending.resize_with(i + 1, || None);
        }
        if self.pending[i].is_some() {
            return cx.drop_malformed("seq_duplicate");
        }
        self.pending[i] = Some((r, msg));
        self.pending_count += 1;
        self.senders[r].stamped_received += 1;
        while matches!(self.pending.front(), Some(Some(_))) {
            let Some(Some((r, msg))) = self.pending.pop_front() else { break };
            self.pending_count -= 1;
            self.next_deliver += 1;
            self.deliver_stamped(cx, r, msg);
        }
        self.pending_max = self.pending_max.max(self.pending_count as u64);
    }

    fn deliver_stamped(&mut self, cx: &mut Context<'_>, r: usize, msg: Msg) {
        self.ordered_delivered += 1;
        cx.up(Up::Cast { from: self.view.members()[r], msg });
        let s = &mut self.senders[r];
        s.stamped_delivered += 1;
        while s.waiting.front().is_some_and(|(after, _)| *after <= s.stamped_delivered) {
            let Some((_, msg)) = s.waiting.pop_front() else { break };
            self.waiting_count -= 1;
            self.unordered_delivered += 1;
            cx.up(Up::Cast { from: self.view.members()[r], msg });
        }
    }

    fn on_unordered(&mut self, cx: &mut Context<'_>, r: usize, msg: Msg) {
        let s = &mut self.senders[r];
        let after = s.stamped_received;
        if s.waiting.is_empty() && s.stamped_delivered >= after {
            self.unordered_delivered += 1;
            return cx.up(Up::Cast { from: self.view.members()[r], msg });
        }
        if self.waiting_count as u64 >= self.max_pending {
            return cx.drop_malformed("unordered_beyond_window");
        }
        s.waiting.push_back((after, msg));
        self.waiting_count += 1;
    }

    fn on_want(&mut self, cx: &mut Context<'_>, r: usize, seen: u64) {
        if seen.saturating_sub(self.round) >= self.max_pending {
            return cx.drop_malformed("want_beyond_window");
        }
        self.note_want(r, seen);
        self.pump(cx);
    }

    fn on_pass(&mut self, cx: &mut Context<'_>, from: usize, to: usize, pass: Pass) {
        let Some(offset) = pass.round.checked_sub(self.round) else { return cx.drop_malformed("old_round") };
        if offset >= self.max_pending {
            return cx.drop_malformed("round_beyond_window");
        }
        let i = offset as usize;
        if self.early_passes.len() <= i {
            self.early_passes.resize(i + 1, None);
        }
        if self.early_passes[i].is_some() {
            return cx.drop_malformed("round_duplicate");
        }
        self.early_passes[i] = Some((from, to, pass));
        // Process passes in round order; a refused one leaves its round open.
        while let Some(slot) = self.early_passes.front_mut() {
            let Some((from, to, pass)) = slot.take() else { break };
            if let Err(Malformed(reason)) = self.apply_pass(from, to, pass) {
                cx.drop_malformed(reason);
                break;
            }
            self.early_passes.pop_front();
        }
        self.pump(cx);
    }

    /// Applies the pass of the current round, if it is valid.
    fn apply_pass(&mut self, from: usize, to: usize, pass: Pass) -> Result<(), Malformed> {
        if from != self.holder {
            return Err(Malformed("pass_not_from_holder"));
        }
        if to == from {
            return Err(Malformed("pass_to_self"));
        }
        // The holder's casts precede its pass: everything below `next` has
        // arrived and so has been delivered.
        if pass.next < self.holder_seq || pass.next > self.next_deliver {
            return Err(Malformed("pass_bad_next"));
        }
        let round = self.round;
        self.round += 1;
        if pass.still_wants {
            self.note_want(from, self.round);
        }
        self.last_pass_to[to] = Some(round);
        if self.wants[to].is_some_and(|seen| seen <= round) {
            self.wants[to] = None;
        }
        self.holder = to;
        self.holder_seq = pass.next;
        if Some(to) == self.me {
            self.holding = true;
            self.stamp_next = pass.next;
            self.burst = 0;
            self.tokens_received += 1;
        }
        Ok(())
    }

    fn receive_send(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg) {
        match msg.pop_with(Header::decode) {
            Ok(Header::Send) => {
                self.other_delivered += 1;
                cx.up(Up::Send { from, msg });
            }
            Ok(_) => cx.drop_malformed("cast_in_send"),
            Err(Malformed(reason)) => cx.drop_malformed(reason),
        }
    }

    // ---- view changes ------------------------------------------------------

    /// Delivers what the view leaves: every stamped cast still held, in
    /// sequence order (skipping holes, as every survivor does), and unordered
    /// casts still waiting for a stamped one that never came.
    fn deliver_leftovers(&mut self, cx: &mut Context<'_>) {
        let before = self.ordered_delivered + self.unordered_delivered;
        while let Some(slot) = self.pending.pop_front() {
            self.next_deliver += 1;
            if let Some((r, msg)) = slot {
                self.pending_count -= 1;
                self.deliver_stamped(cx, r, msg);
            }
        }
        for r in 0..self.senders.len() {
            while let Some((_, msg)) = self.senders[r].waiting.pop_front() {
                self.waiting_count -= 1;
                self.unordered_delivered += 1;
                cx.up(Up::Cast { from: self.view.members()[r], msg });
            }
        }
        self.leftovers_delivered += self.ordered_delivered + self.unordered_delivered - before;
    }

    fn on_view(&mut self, cx: &mut Context<'_>, view: Arc<View>) {
        self.deliver_leftovers(cx);
        // Own casts the old view did not carry go first in the new one. (A
        // member that was loading state sent nothing, so whether its casts
        // came back cannot matter.)
        debug_assert!(!self.loading || self.in_flight.is_empty(), "nothing is sent while the state loads");
        while let Some(o) = self.in_flight.pop_back() {
            self.queue.push_front(o);
            self.requeued += 1;
        }
        self.install(cx, &view);
        cx.up(Up::View(view));
        // Not now: if this member is to load the state, VSYNC says so right
        // after the view (Up::StateBegin), and it must not send before that.
        cx.set_timer(TIMER_SEND, cx.now());
        self.update_window(cx);
    }
}

/// A control message (a pass or a want): a header and no payload.
fn control(h: Header) -> Msg {
    let mut msg = Msg::empty();
    msg.push_with(|w| h.encode(w));
    msg
}

impl Layer for Token {
    fn init(&mut self, cx: &mut Context<'_>) {
        let view = cx.view().clone();
        self.install(cx, &view);
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(mut msg) if msg.flags().contains(MsgFlags::OOB) => {
                msg.push_with(|w| Header::Oob.encode(w));
                cx.down(Down::Cast(msg));
            }
            Down::Cast(msg) => {
                let o = if msg.order() == Some(Order::Fifo) { Outgoing::Unordered(msg) } else { Outgoing::Ordered(msg) };
                self.queue.push_back(o);
                self.pump(cx);
            }
            Down::Send { to, mut msg } => {
                msg.push_with(|w| Header::Send.encode(w));
                cx.down(Down::Send { to, msg });
            }
            Down::Flush { token } => {
                self.queue.push_back(Outgoing::Flush(token));
                self.pump(cx);
            }
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } => self.receive_cast(cx, from, msg),
            Up::Send { from, msg } => self.receive_send(cx, from, msg),
            Up::Block => {
                self.blocked = true;
                cx.up(Up::Block);
            }
            Up::StateRequest { token, joiners } => {
                // The state is taken here: it must contain the old view's leftovers.
                self.deliver_leftovers(cx);
                cx.up(Up::StateRequest { token, joiners });
            }
            Up::View(v) => self.on_view(cx, v),
            Up::Left => {
                // A leaving member took part in the last flush: it delivers
                // the leftovers the survivors deliver at their next view.
                self.deliver_leftovers(cx);
                cx.up(Up::Left);
            }
            Up::StateBegin => {
                self.loading = true;
                cx.up(Up::StateBegin);
            }
            Up::StateDone => {
                // The view's held deliveries follow at once; send after them.
                self.loading = false;
                cx.up(Up::StateDone);
                cx.set_timer(TIMER_SEND, cx.now());
            }
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        if key == TIMER_SEND {
            self.pump(cx);
        }
    }

    fn stats(&self, out: &mut Stats) {
        out.add("ordered_delivered", self.ordered_delivered)
            .add("unordered_delivered", self.unordered_delivered)
            .add("other_delivered", self.other_delivered)
            .add("stamped", self.stamped)
            .add("tokens_passed", self.tokens_passed)
            .add("tokens_received", self.tokens_received)
            .add("wants_sent", self.wants_sent)
            .add("holding", u64::from(self.holding))
            .add("round", self.round)
            .add("queued", self.queue.len() as u64)
            .add("queued_max", self.queued_max)
            .add("in_flight", self.in_flight.len() as u64)
            .add("requeued", self.requeued)
            .add("pending", (self.pending_count + self.waiting_count) as u64)
            .add("pending_max", self.pending_max)
            .add("stale", self.stale)
            .add("leftovers_delivered", self.leftovers_delivered)
            .add("backpressure", u64::from(self.window.is_closed()));
    }
}
