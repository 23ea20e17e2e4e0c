//! # CAUSAL: causal multicast (CBCAST)
//!
//! If a member delivered a cast `m`, or cast it, before it cast `m'`, then
//! every member delivers `m` before `m'`. Casts that are not so related
//! (concurrent casts) may be delivered in different orders at different
//! members. This is the CBCAST protocol of Birman, Schiper and Stephenson
//! ("Lightweight causal and atomic group multicast", TOCS 1991), as Isis and
//! Horus ran it, with its timestamps compressed.
//!
//! * **Vector timestamps.** Every member counts, per member of the view (by
//!   rank), the casts of that member it delivered. A cast carries its
//!   sender's counts at the moment it was cast: its *dependencies*. A
//!   receiver delivers a cast from `s` once it delivered every earlier cast
//!   of `s` and, for every other member `j`, at least as many casts of `j`
//!   as the cast's entry for `j` says. Until then the cast waits in a
//!   per-sender queue; after every delivery the heads of the queues are
//!   checked again. A cast waits only if it arrives before one it depends
//!   on; a member's own cast, coming back through the loopback, never waits
//!   (everything it depends on was delivered before it was cast).
//! * **Small headers.** NAK below delivers each sender's casts in order, so
//!   a receiver can rebuild a sender's whole timestamp from the previous one
//!   and the entries that changed. A cast therefore carries only the entries
//!   that changed since its sender's previous causal cast, each as how much
//!   it grew, and never the sender's own entry: a cast is its sender's k-th
//!   in the view because it is the k-th to arrive. The unchanged entries
//!   were already satisfied when the previous cast was delivered (counts
//!   only grow), so only the changed ones are checked. With nothing held,
//!   a delivery decodes and checks a handful of bytes and allocates nothing.
//! * **Views.** Timestamps are indexed by rank and start from zero in every
//!   view. Below a membership layer (`FRAG:NAK:CAUSAL:VSYNC`) the view comes
//!   down as [`Down::View`], sent by VSYNC after every delivery of the old
//!   view; above it (`FRAG:NAK:VSYNC:CAUSAL`) it comes up as [`Up::View`];
//!   without one (`FRAG:NAK:CAUSAL`) the initial view is the only one.
//!   A cast still waiting when the view changes belongs to the old view and
//!   can never be delivered in it: it is discarded and counted
//!   (`discarded_at_view`). Above VSYNC, casts passed down between
//!   [`Up::Block`] and the next [`Up::View`] wait here and are stamped in
//!   the new view, where VSYNC sends them.
//! * **Crashed senders.** During a view change VSYNC asks NAK (with
//!   [`Down::Recover`], passed down untouched) for a departed sender's casts
//!   this member lacks; NAK hands them up as that sender's, in order, with
//!   this layer's header intact, and the delivery rule orders them like any
//!   other cast.
//! * **Flow control.** Casts that wait here were acknowledged by NAK below
//!   when they arrived, so nothing would stop their senders from piling
//!   more on, while the cast they wait for, lost once, is lost again in the
//!   flood (a receiver that cannot keep up). So the layer tells NAK how many
//!   casts of each sender wait ([`Down::Holding`], in steps of
//!   `max_held / 64`, at most 256, so that the usual short waits report
//!   nothing) and NAK acknowledges only the rest: a sender with many casts
//!   waiting here runs out of send window, the flood stops, and the missing
//!   cast gets through. What is held stays near NAK's `max_unstable`, far
//!   below `max_held`.
//! * **FIFO casts.** A cast that asks for [`Order::Fifo`] carries no
//!   dependencies and is delivered as soon as its sender's earlier casts
//!   are. It still counts in its sender's entry, so a later causal cast that
//!   depends on it waits for it. It does not make its own past precede it:
//!   a causal chain passing through a FIFO cast is not ordered end to end.
//! * **Not ordered.** Point-to-point messages ([`Down::Send`]) and
//!   out-of-band casts and sends ([`MsgFlags::OOB`]: heartbeats, joins) pass
//!   at once, in both directions, behind one kind byte, and out-of-band
//!   casts do not count in any entry.
//!
//! ## What it needs below
//! Reliable FIFO casts within a view (NAK): the header compression relies on
//! every causal cast of a sender arriving, in order.
//!
//! ## Header
//! ```text
//!  causal, nothing changed:  | 0x01 |
//!  fifo cast:                | 0x02 |
//!  send:                     | 0x03 |
//!  oob cast / oob send:      | 0x04 | / | 0x05 |
//!  causal, with entries:     | 0x10 + ranks form + growths form | ranks | growths |
//!    ranks, list   (+0x00):  count varint | rank gap varint * count
//!    ranks, bitmap (+0x04):  ceil(n/8) bytes: bit r%8 of byte r/8 marks rank r
//!    growths, each   (+0):   growth varint * count, in rank order
//!    growths, one    (+1):   growth varint (every entry grew by it)
//!    growths, packed (+2):   ceil(count/4) bytes of 2-bit codes, in rank order
//!                            (code 3: the growth is a varint after the codes)
//! ```
//! `n` is the view's size; an entry's *growth* is how much the member's
//! count grew since the sender's previous causal cast, minus one. The list
//! gives the first rank as is and each later one as the gap after the
//! previous. The sender writes the shortest ranks form and the shortest
//! growths form. In views of up to 8 members: 3 bytes after one other
//! member cast (up to 128 times), or after several cast equally often (members
//! casting in turn); `2 + ceil(k/4)` after `k` members cast 1 to 3 times
//! each. In a view of 64: 10 bytes after every other member cast once,
//! `1 + 8 + 16` after they cast 1 to 3 times each. After a few members of
//! a large view cast, about one byte per entry plus two. A sender that
//! keeps casting while the others are silent sends 1 byte.
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `max_members` | 256 | largest view in which casts are causally ordered; bounds the header at `1 + ceil(max_members/8) + 10 (max_members - 1)` bytes (2583). Wire parameter |
//! | `max_held` | 100000 | per sender: casts waiting for dependencies before the layer gives up on that sender for the rest of the view |
//!
//! In a view larger than `max_members` the layer reports a
//! [`Problem`] and every cast in that view is sent and delivered in FIFO
//! order only (all members share `max_members`, so all of them do so).
//!
//! ## Bad input
//! Every header is decoded fully before anything changes, or dropped and
//! counted by reason: an unknown kind, a send's kind on a cast or a cast's
//! on a send, truncated varints, more entries than the view has members,
//! ranks outside the view, the sender's own entry, counts that overflow.
//! Casts from non-members are dropped (`not_member`). A dependency far in
//! the future just waits, and waiting is bounded: past `max_held` casts
//! held for one sender, the layer discards them, reports them
//! [`Up::Lost`] and a [`Problem`], and drops that sender's casts until the
//! next view (`sender_given_up`).

mod wire;

#[cfg(test)]
mod tests;

use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;
use strata_stack::codec::{Malformed, Writer};
use strata_stack::{Context, Down, Layer, LayerDescriptor, MemberId, Msg, MsgFlags, Order, ParamKind, ParamSpec, Params, Problem, Props, Stats, Up, View};
use wire::{kind, Entry};

pub use wire::max_len as header_bound;

/// The most casts of one sender held here but not yet reported below (see
/// [`Down::Holding`]).
const HOLDING_QUANTUM_MAX: usize = 256;

/// The `CAUSAL` descriptor.
pub const CAUSAL: LayerDescriptor = LayerDescriptor {
    name: "CAUSAL",
    summary: "causal multicast (CBCAST): vector timestamps sending only changed entries, per-cast FIFO option",
    requires: Props::RELIABLE.union(Props::FIFO),
    provides: Props::CAUSAL.union(Props::FIFO),
    params: &[
        ParamSpec {
            name: "max_members",
            kind: ParamKind::U64 { min: 1, max: 1024 },
            default: "256",
            doc: "largest view in which casts are causally ordered (bounds the header); larger views get FIFO order and a Problem",
            wire: true,
        },
        ParamSpec {
            name: "max_held",
            kind: ParamKind::U64 { min: 1, max: 10_000_000 },
            default: "100000",
            doc: "per sender: casts waiting for dependencies before the sender is given up on for the rest of the view",
            wire: false,
        },
    ],
    max_header_len: |p| wire::max_len(p.u64("max_members") as usize),
    build: |p| Ok(Box::new(Causal::new(p))),
};

/// A cast waiting for its dependencies.
#[derive(Debug)]
struct Held {
    msg: Msg,
    /// Its dependencies not yet met when it arrived: (rank, least delivered count).
    deps: SmallVec<[Entry; 4]>,
}

/// What this member knows of one member of the view, as a sender.
#[derive(Debug)]
struct Sender {
    id: MemberId,
    /// The entries of its last causal cast's timestamp, by rank (its own
    /// entry unused); empty until a cast of it changes one.
    row: Vec<u64>,
    /// Its casts that wait, in its order: only the head can be next.
    held: VecDeque<Held>,
    /// Its held casts overflowed `max_held`: its casts are dropped until the next view.
    given_up: bool,
    /// The count of its held casts last reported to the reliability layer
    /// ([`Down::Holding`]).
    reported_held: u64,
}

impl Sender {
    fn new(id: MemberId) -> Self {
        Sender { id, row: Vec::new(), held: VecDeque::new(), given_up: false, reported_held: 0 }
    }
}

/// The causal-order layer.
#[derive(Debug)]
pub struct Causal {
    max_members: usize,
    max_held: usize,
    /// Held casts are reported to the reliability layer in multiples of
    /// this, so that the usual short waits report nothing.
    holding_quantum: usize,

    /// The view timestamps index (`None` before `init`).
    view: Option<Arc<View>>,
    /// This member's rank, if it is in the view.
    me: Option<usize>,
    /// Whether the view is small enough for causal headers (`max_members`).
    ordered: bool,
    /// Casts delivered here in this view, per sender rank (causal and FIFO).
    delivered: Vec<u64>,
    /// The counts this member's previous causal cast carried (what the
    /// others hold as its row).
    last_stamp: Vec<u64>,
    senders: Vec<Sender>,
    /// Casts held, all senders together.
    held: usize,
    /// Between `Up::Block` and `Up::View` (above a membership layer): casts
    /// from above wait for the next view.
    blocked: bool,
    /// Events from above waiting for the next view, in order.
    waiting: VecDeque<Down>,
    /// Reused for encoding headers and decoding entries: no allocation per message.
    writer: Writer,
    entries: Vec<Entry>,

    sent: u64,
    fifo_casts: u64,
    header_bytes: u64,
    delivered_total: u64,
    delayed: u64,
    held_max: u64,
    discarded_at_view: u64,
    given_up: u64,
    holding_reports: u64,
}

impl Causal {
    /// A layer with the given parameters.
    pub fn new(p: &Params) -> Self {
        Causal {
            max_members: p.u64("max_members") as usize,
            max_held: p.u64("max_held") as usize,
            holding_quantum: (p.u64("max_held") as usize / 64).clamp(1, HOLDING_QUANTUM_MAX),
            view: None,
            me: None,
            ordered: true,
            delivered: Vec::new(),
            last_stamp: Vec::new(),
            senders: Vec::new(),
            held: 0,
            blocked: false,
            waiting: VecDeque::new(),
            writer: Writer::new(),
            entries: Vec::new(),
            sent: 0,
            fifo_casts: 0,
            header_bytes: 0,
            delivered_total: 0,
            delayed: 0,
            held_max: 0,
            discarded_at_view: 0,
            given_up: 0,
            holding_reports: 0,
        }
    }

    /// Starts `view`: every count back to zero, held casts discarded. The
    /// same view again (same id and members) changes nothing.
    fn install(&mut self, cx: &mut Context<'_>, view: &Arc<View>) {
        if self.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, view) || (v.id() == view.id() && v.members() == view.members())) {
            return;
        }
        self.discarded_at_view += self.held as u64;
        self.held = 0;
        // The held casts are gone: a report of them must not outlive them.
        for s in &self.senders {
            if s.reported_held > 0 {
                cx.down(Down::Holding { from: s.id, count: 0 });
            }
        }
        let n = view.len();
        self.ordered = n <= self.max_members;
        self.me = view.rank_of(&cx.local());
        self.delivered.clear();
        self.delivered.resize(n, 0);
        self.last_stamp.clear();
        self.last_stamp.resize(n, 0);
        self.senders = view.members().iter().map(|&m| Sender::new(m)).collect();
        self.view = Some(view.clone());
        if !self.ordered {
            let what = format!(
                "view {} has {n} members, more than max_members={}: casts in it are delivered in FIFO order only (raise CAUSAL's max_members, the same at every member)",
                view.id(),
                self.max_members
            );
            cx.up(Up::Problem(Problem { layer: "CAUSAL", what }));
        }
    }

    /// Passes on what waited for the view, now that it is installed.
    fn release(&mut self, cx: &mut Context<'_>) {
        self.blocked = false;
        while let Some(ev) = self.waiting.pop_front() {
            self.down(cx, ev);
        }
    }

    fn cast(&mut self, cx: &mut Context<'_>, mut msg: Msg) {
        self.writer.clear();
        match self.me {
            Some(me) if self.ordered && msg.order() != Some(Order::Fifo) => {
                wire::encode_causal(&mut self.writer, &mut self.entries, me, &self.delivered, &self.last_stamp);
                self.last_stamp.copy_from_slice(&self.delivered);
            }
            // FIFO asked for, a view too large to order, or a view without
            // this member (nothing below will carry it anyway).
            _ => {
                self.writer.u8(kind::FIFO);
                self.fifo_casts += 1;
            }
        }
        msg.push(self.writer.as_slice());
        self.sent += 1;
        self.header_bytes += self.writer.len() as u64;
        cx.down(Down::Cast(msg));
    }

    fn on_cast(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg) {
        let Some(&k) = msg.front().first() else { return cx.drop_malformed("empty") };
        match k {
            kind::OOB_CAST => {
                let popped = msg.advance(1);
                debug_assert!(popped.is_ok(), "the front holds the kind byte just read");
                msg.flags_mut().insert(MsgFlags::OOB);
                return cx.up(Up::Cast { from, msg });
            }
            k if kind::is_counted_cast(k) => {}
            kind::SEND | kind::OOB_SEND => return cx.drop_malformed("send_kind_in_cast"),
            _ => return cx.drop_malformed("unknown_kind"),
        }
        let Some(s) = self.view.as_ref().and_then(|v| v.rank_of(&from)) else { return cx.drop_malformed("not_member") };
        if self.senders[s].given_up {
            return cx.drop_malformed("sender_given_up");
        }
        if k != kind::FIFO && !self.ordered {
            return cx.drop_malformed("causal_in_large_view");
        }
        let mut entries = std::mem::take(&mut self.entries);
        entries.clear();
        let with_entries = kind::has_entries(k);
        let row = &mut self.senders[s].row;
        if with_entries && row.is_empty() {
            // Its first cast with changes in this view: until now its
            // timestamp was all zeros.
            row.resize(self.delivered.len(), 0);
        }
        let decoded = msg.pop_with(|r| {
            r.u8()?;
            if with_entries {
                wire::decode_entries(r, k, s, row, &mut entries)?;
            }
            Ok(())
        });
        if let Err(Malformed(reason)) = decoded {
            self.entries = entries;
            return cx.drop_malformed(reason);
        }
        for &(j, v) in &entries {
            row[j as usize] = v;
        }
        if self.senders[s].held.is_empty() && satisfied(&entries, &self.delivered) {
            self.deliver(cx, s, msg);
            if self.held > 0 {
                self.drain(cx);
            }
        } else if self.senders[s].held.len() >= self.max_held {
            self.give_up(cx, s);
        } else {
            // Dependencies met now stay met (counts only grow): keep the
            // others, usually one or two, so holding allocates nothing.
            let deps = entries.iter().copied().filter(|&(j, v)| self.delivered[j as usize] < v).collect();
            self.senders[s].held.push_back(Held { msg, deps });
            self.held += 1;
            self.delayed += 1;
            self.held_max = self.held_max.max(self.held as u64);
            self.report_held(cx, s);
        }
        self.entries = entries;
    }

    fn deliver(&mut self, cx: &mut Context<'_>, s: usize, msg: Msg) {
        self.delivered[s] += 1;
        self.delivered_total += 1;
        cx.up(Up::Cast { from: self.senders[s].id, msg });
    }

    /// Delivers every held cast whose dependencies are now met, until none is.
    fn drain(&mut self, cx: &mut Context<'_>) {
        loop {
            let mut progress = false;
            for s in 0..self.senders.len() {
                while self.senders[s].held.front().is_some_and(|h| satisfied(&h.deps, &self.delivered)) {
                    let h = self.senders[s].held.pop_front().expect("checked");
                    self.held -= 1;
                    self.deliver(cx, s, h.msg);
                    progress = true;
                }
            }
            if !progress || self.held == 0 {
                break;
            }
        }
        for s in 0..self.senders.len() {
            if self.senders[s].reported_held > 0 {
                self.report_held(cx, s);
            }
        }
    }

    /// Tells the reliability layer below how many casts of sender `s` wait
    /// here, rounded down to `holding_quantum`, when that changed: it
    /// acknowledges only the others, so a sender whose casts pile up here
    /// (their predecessor lost, and lost again under the flood) runs out of
    /// send window before this layer runs out of `max_held`.
    fn report_held(&mut self, cx: &mut Context<'_>, s: usize) {
        let sender = &mut self.senders[s];
        let count = (sender.held.len() / self.holding_quantum * self.holding_quantum) as u64;
        if count != sender.reported_held {
            sender.reported_held = count;
            self.holding_reports += 1;
            cx.down(Down::Holding { from: sender.id, count });
        }
    }

    /// Sender `s` has more casts waiting than `max_held`: garbage, or a
    /// dependency that will not come. Its held casts are discarded and its
    /// casts dropped until the next view, so memory stays bounded.
    fn give_up(&mut self, cx: &mut Context<'_>, s: usize) {
        let sender = &mut self.senders[s];
        let count = sender.held.len() as u64 + 1;
        self.held -= sender.held.len();
        sender.held = VecDeque::new();
        sender.given_up = true;
        self.given_up += 1;
        let from = sender.id;
        self.report_held(cx, s);
        cx.drop_malformed("held_overflow");
        cx.up(Up::Lost { from, count });
        let what = format!("{count} casts of {from} waited for dependencies, more than max_held={}: its casts are dropped until the next view", self.max_held);
        cx.up(Up::Problem(Problem { layer: "CAUSAL", what }));
    }
}

/// Whether every dependency in `deps` is delivered.
fn satisfied(deps: &[Entry], delivered: &[u64]) -> bool {
    deps.iter().all(|&(j, v)| delivered[j as usize] >= v)
}

impl Layer for Causal {
    fn init(&mut self, cx: &mut Context<'_>) {
        let view = cx.view().clone();
        self.install(cx, &view);
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(mut msg) if msg.flags().contains(MsgFlags::OOB) => {
                msg.push(&[kind::OOB_CAST]);
                cx.down(Down::Cast(msg));
            }
            Down::Send { to, mut msg } if msg.flags().contains(MsgFlags::OOB) => {
                msg.push(&[kind::OOB_SEND]);
                cx.down(Down::Send { to, msg });
            }
            // Keep the application's order behind a waiting cast.
            ev @ (Down::Cast(_) | Down::Send { .. } | Down::Flush { .. }) if self.blocked && (matches!(ev, Down::Cast(_)) || !self.waiting.is_empty()) => {
                self.waiting.push_back(ev);
            }
            Down::Cast(msg) => self.cast(cx, msg),
            Down::Send { to, mut msg } => {
                msg.push(&[kind::SEND]);
                cx.down(Down::Send { to, msg });
            }
            Down::View(v) => {
                self.install(cx, &v);
                cx.down(Down::View(v));
                self.release(cx);
            }
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } => self.on_cast(cx, from, msg),
            Up::Send { from, mut msg } => match msg.pop_with(|r| r.u8()) {
                Ok(kind::SEND) => cx.up(Up::Send { from, msg }),
                Ok(kind::OOB_SEND) => {
                    msg.flags_mut().insert(MsgFlags::OOB);
                    cx.up(Up::Send { from, msg });
                }
                Ok(k) if kind::is_counted_cast(k) || k == kind::OOB_CAST => cx.drop_malformed("cast_kind_in_send"),
                Ok(_) => cx.drop_malformed("unknown_kind"),
                Err(_) => cx.drop_malformed("empty"),
            },
            Up::Block => {
                self.blocked = true;
                cx.up(Up::Block);
            }
            Up::View(v) => {
                self.install(cx, &v);
                cx.up(Up::View(v));
                self.release(cx);
            }
            Up::Left => {
                for _ in self.waiting.drain(..) {
                    cx.drop_malformed("waiting_at_leave");
                }
                cx.up(Up::Left);
            }
            other => cx.up(other),
        }
    }

    fn stats(&self, out: &mut Stats) {
        out.add("sent", self.sent)
            .add("fifo_casts", self.fifo_casts)
            .add("header_bytes", self.header_bytes)
            .add("delivered", self.delivered_total)
            .add("delayed", self.delayed)
            .add("held", self.held as u64)
            .add("held_max", self.held_max)
            .add("discarded_at_view", self.discarded_at_view)
            .add("given_up", self.given_up)
            .add("holding_reports", self.holding_reports);
    }
}
