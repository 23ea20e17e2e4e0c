//! # NAK: reliable FIFO multicast and reliable point-to-point
//!
//! Every cast of a member reaches every other live member of the view exactly
//! once and in the order it was cast; every send reaches its destination
//! exactly once, in order. Nothing is invented: a message is delivered only if
//! its sender passed it down. This is the negative-acknowledgement scheme of
//! the Horus/Ensemble `MNAK` and `PT2PT` layers and of JGroups' `NAKACK`, with
//! one status mechanism doing three jobs.
//!
//! * **Sequence numbers.** Each member numbers its casts 0, 1, 2, ... and,
//!   separately, its sends to each destination. A receiver delivers sequence
//!   number `n` of a sender only after `0..n`, holds early arrivals in a
//!   bounded out-of-order window, and drops what it already delivered
//!   (duplicates).
//! * **Negative acknowledgements.** A receiver that sees a gap asks the sender,
//!   point-to-point, for the missing ranges, at most once per `retransmit_ms`
//!   per channel, until they arrive. The sender answers from its
//!   retransmission buffer, point-to-point, with the *identical* message (same
//!   header bytes and the same [`Msg::tag`]), so that FRAG below can merge the
//!   fragments of several retransmissions of a large message.
//! * **Status.** While anything is unacknowledged, every `status_ms` a member
//!   multicasts a status: how many casts it has sent, how many of them are
//!   stable, and for each member of the view what it received from that member
//!   (cast and point-to-point) and how many sends it made to it. A status
//!   tells a receiver that it missed the *last* message of a sender (trailing
//!   loss, which no gap reveals), acknowledges what arrived, and lets a sender
//!   learn that a message is **stable** (received by every member) and drop it
//!   from its buffer; the sender's next status passes that news on. A member also sends a status early after
//!   `max_unstable / 4` deliveries (or `max_unstable_bytes / 4` bytes), so a
//!   fast sender's buffer drains before it fills. A member whose
//!   acknowledgement was lost learns it from the
//!   sender's next status (the sender's stable count is behind what it has
//!   received) and answers again. When everything is stable the group falls
//!   silent.
//! * **Stability.** The retransmission buffer holds exactly the unstable
//!   messages. Stability is reported upwards as [`Up::Stable`], and a
//!   [`Down::Flush`] is answered with [`Up::Flushed`] once every cast made
//!   before it is stable.
//! * **Flow control.** A credit scheme in messages and in bytes: when the
//!   unstable messages (casts and sends together) reach `max_unstable`, or
//!   their bytes reach `max_unstable_bytes`, the layer closes the send window
//!   (backpressure: the application's `cast().await` waits); it reopens once
//!   both have fallen to three quarters of their bound, so it does not flap
//!   per message. A message larger than the byte bound is still sent (the
//!   window closes behind it). Since a message is stable only once *every*
//!   member acknowledged it, a member that falls behind (slow to deliver,
//!   or cut off) stops acknowledging, the others' windows close, and their
//!   memory stays bounded: about `max_unstable_bytes` per member of
//!   retransmission buffer, and the same again of the others' casts kept for
//!   relaying. Casts that a layer above holds back ([`Down::Holding`]:
//!   CAUSAL, waiting for a cast they depend on) count as not received until
//!   it lets them go, so a sender cannot flood a member whose upper layers
//!   wait for a retransmission. On the receiving side, early arrivals wait in an
//!   out-of-order store bounded per channel by `max_out_of_order` messages
//!   and, all channels together, by `max_out_of_order_bytes` bytes. An
//!   arrival that does not fit is dropped (`out_of_order_full`) and asked for
//!   again with the gap before it (requests reach up to the highest number
//!   heard of); the next expected message of a
//!   channel always goes through, and an empty store takes any one message,
//!   so a full store never stops delivery.
//!
//! * **Relaying.** Each member keeps the others' casts it received until they
//!   are stable. When a sender departs, the membership layer names a member
//!   that holds its casts ([`Down::Recover`]); requests for what is missing
//!   then go to that holder, which answers with the casts exactly as the
//!   sender's NAK passed them up, headers of the layers above included, and
//!   the receiver delivers them as the sender's.
//!
//! A leaving member sends its status three times, `retransmit_ms` apart,
//! before it passes the leave down, so that the others learn what it received
//! even if a datagram is lost.
//!
//! Messages flagged [`MsgFlags::OOB`] bypass sequencing: delivered at once,
//! unordered and unreliable (for layers above that do their own retries, such
//! as heartbeats). A send to oneself is delivered locally, in order.
//!
//! ## What it needs below
//! Nothing: datagrams may be lost, duplicated and reordered. Put FRAG below it
//! for messages larger than a datagram.
//!
//! ## Header
//! ```text
//!  data:    | kind u8 | view u32 | seq varint | payload ...
//!  relay:   | kind u8 | view u32 | sender rank varint | seq varint | payload ...
//!  oob:     | kind u8 | payload ...
//!  nak:     | kind u8 | view u32 | channel u8 | [sender rank varint] | ranges varint | (first varint, count varint)* |
//!  status:  | kind u8 | view u32 | sent varint | stable varint | entries varint |
//!           |   (cast_received, sends_received, sends_made, sends_stable) varint* per member in rank order |
//! ```
//! `view` names the view the message belongs to: a 32-bit hash of its whole
//! id (counter and creator), since two views with the same counter can exist
//! at once (two sides of a partition, two groups founded concurrently) and
//! may share a member. Traffic of another view is dropped (an older view's
//! is stale; a newer view's is retransmitted once this member installs it).
//! A data header is 6 bytes for the first 128 messages of a view and at most
//! 15; a relayed cast's at most 25. A request's channel is 0 (casts), 1
//! (sends) or 2 (another member's casts, relayed; the sender's rank follows).
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `retransmit_ms` | 20 | least time between two requests for the same missing messages |
//! | `status_ms` | 100 | period of the status while anything is unacknowledged |
//! | `max_unstable` | 10000 | unstable messages (casts and sends) held before the send window closes |
//! | `max_unstable_bytes` | 4194304 | bytes of unstable messages held before the send window closes |
//! | `max_out_of_order` | 10000 | per channel: how far ahead of the next expected message an arrival is kept |
//! | `max_out_of_order_bytes` | 67108864 | bytes of early arrivals held, all channels together (one message is always kept when none is) |
//! | `max_xmit_per_nak` | 256 | most messages retransmitted for one request |
//! | `max_xmit_bytes` | 1048576 | most bytes retransmitted for one request (at least one message is) |
//!
//! ## Bad input
//! Every header is decoded into a typed value or dropped and counted
//! (`dropped` in the stats, by reason): unknown kinds, truncated varints, a
//! status with more entries than the view has members, a request with more
//! than 64 ranges. Traffic from non-members and from other views is dropped
//! and counted. A request never triggers more than `max_xmit_per_nak`
//! messages or `max_xmit_bytes` bytes, and a claimed sequence number far ahead
//! only costs a bounded request, never memory: the out-of-order store is
//! bounded by `max_out_of_order` per channel and `max_out_of_order_bytes` in
//! all.
//!
//! ## Cost
//! Per message, on the fast path: a header push or a single-pass decode, a
//! rank lookup in the index every view carries ([`View::rank_of`]), counters kept
//! incrementally (no scan of the view), and no heap allocation (growth of
//! the buffers to their working size aside). The retransmission buffer
//! keeps each message as passed down, without NAK's header, which a
//! retransmission pushes again byte for byte; the copy shares the payload
//! (a payload built from a `Vec` is moved to shared storage by that first
//! clone, one allocation, unless the application passes shared `Bytes`).
//! `cargo bench --bench layers -- NAK` measures the layer alone;
//! `layers/tests/fast_path_allocations.rs` counts its allocations.

use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::codec::{put_varint, DecodeResult, Malformed, Reader, Writer, MAX_VARINT_LEN};
use strata_stack::{
    Context, Down, Instant, Layer, LayerDescriptor, MemberId, Msg, MsgFlags, ParamKind, ParamSpec, Params, Props, Stats, TimerKey, Up, View, ViewId,
};

/// The `NAK` descriptor.
pub const NAK: LayerDescriptor = LayerDescriptor {
    name: "NAK",
    summary: "reliable FIFO multicast and point-to-point: sequence numbers, negative acks, retransmission, stability, backpressure",
    requires: Props::NONE,
    provides: Props::RELIABLE.union(Props::FIFO),
    params: &[
        ParamSpec {
            name: "retransmit_ms",
            kind: ParamKind::U64 { min: 1, max: 60_000 },
            default: "20",
            doc: "least time between two requests for the same missing messages",
            wire: false,
        },
        ParamSpec {
            name: "status_ms",
            kind: ParamKind::U64 { min: 1, max: 60_000 },
            default: "100",
            doc: "period of the status (acks, trailing-loss detection) while anything is unacknowledged",
            wire: false,
        },
        ParamSpec {
            name: "max_unstable",
            kind: ParamKind::U64 { min: 1, max: 10_000_000 },
            default: "10000",
            doc: "unstable messages held for retransmission before the send window closes",
            wire: false,
        },
        ParamSpec {
            name: "max_unstable_bytes",
            kind: ParamKind::U64 { min: 1, max: 1 << 40 },
            default: "4194304",
            doc: "bytes of unstable messages (casts and sends) held before the send window closes",
            wire: false,
        },
        ParamSpec {
            name: "max_out_of_order",
            kind: ParamKind::U64 { min: 1, max: 10_000_000 },
            default: "10000",
            doc: "per channel: how far ahead of the next expected message an arrival is kept",
            wire: false,
        },
        ParamSpec {
            name: "max_out_of_order_bytes",
            kind: ParamKind::U64 { min: 1, max: 1 << 40 },
            default: "67108864",
            doc: "bytes of early arrivals held, all channels together (one is always kept when none is)",
            wire: false,
        },
        ParamSpec {
            name: "max_xmit_per_nak",
            kind: ParamKind::U64 { min: 1, max: 1_000_000 },
            default: "256",
            doc: "most messages retransmitted for one request",
            wire: false,
        },
        ParamSpec {
            name: "max_xmit_bytes",
            kind: ParamKind::U64 { min: 1, max: 1 << 30 },
            default: "1048576",
            doc: "most bytes retransmitted for one request (at least one message is)",
            wire: false,
        },
    ],
    // The largest header is a relayed cast's: kind, view, sender rank, seq.
    max_header_len: |_| 1 + 4 + 2 * MAX_VARINT_LEN,
    build: |p| Ok(Box::new(Nak::new(p))),
};

/// Message kinds (the first header byte).
mod kind {
    pub const CAST: u8 = 1;
    pub const SEND: u8 = 2;
    pub const OOB_CAST: u8 = 3;
    pub const OOB_SEND: u8 = 4;
    pub const NAK: u8 = 5;
    pub const STATUS: u8 = 6;
    pub const RELAY: u8 = 7;
}

/// Channels a request can name.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Channel {
    Cast = 0,
    Send = 1,
    /// Another member's casts, relayed by a member that holds them.
    Relay = 2,
}

/// Most ranges in one request.
const MAX_RANGES: usize = 64;

const TIMER_STATUS: TimerKey = 0;
const TIMER_NAK: TimerKey = 1;
const TIMER_LEAVE: TimerKey = 2;

/// How many copies of its last status a leaving member sends, `retransmit_ms`
/// apart, before it goes: the others need its acknowledgements to call their
/// casts stable, and one datagram may be lost.
const FINAL_STATUS_COPIES: u8 = 3;

/// Why an arrival was not kept.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum NotKept {
    /// Delivered or held already.
    Duplicate,
    /// Too far ahead of the next expected message; it will be retransmitted.
    BeyondWindow,
    /// Early, and the out-of-order store is full in bytes
    /// (`max_out_of_order_bytes`); it will be retransmitted.
    NoRoom,
}

/// What an arrival did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kept {
    /// It (and maybe held successors) went up.
    Delivered,
    /// It waits in the out-of-order window.
    Held,
}

/// What one member receives on one channel from one sender.
#[derive(Debug, Default)]
struct Inbound {
    /// The next sequence number to deliver.
    next: u64,
    /// One past the highest sequence number known to exist (from data or status).
    known: u64,
    /// Arrivals after `next`: slot `i` holds sequence number `next + 1 + i`.
    early: VecDeque<Option<Msg>>,
    /// How many slots of `early` are filled.
    held: usize,
    /// Bytes of the messages in `early`.
    held_bytes: usize,
    /// When missing messages were last requested.
    last_request: Option<Instant>,
}

impl Inbound {
    fn has_gap(&self) -> bool {
        self.known > self.next
    }

    /// Stores an arrival and hands `deliver` whatever became deliverable, in
    /// order. An early arrival is held only if its bytes fit `room`; the
    /// next expected message always goes through, so a full store never
    /// stops progress.
    #[inline]
    fn accept(&mut self, seq: u64, msg: Msg, window: u64, room: usize, mut deliver: impl FnMut(Msg)) -> Result<Kept, NotKept> {
        if seq < self.next {
            return Err(NotKept::Duplicate);
        }
        if seq - self.next >= window {
            return Err(NotKept::BeyondWindow);
        }
        self.known = self.known.max(seq + 1);
        if seq > self.next {
            let i = (seq - self.next - 1) as usize;
            if self.early.get(i).is_some_and(Option::is_some) {
                return Err(NotKept::Duplicate);
            }
            let len = msg.len();
            if len > room {
                return Err(NotKept::NoRoom);
            }
            if self.early.len() <= i {
                self.early.resize(i + 1, None);
            }
            self.early[i] = Some(msg);
            self.held += 1;
            self.held_bytes += len;
            return Ok(Kept::Held);
        }
        deliver(msg);
        self.next += 1;
        // Slot 0 stood for the sequence number now expected: deliver it if it
        // is there; if it is a hole, dropping it restores the slot numbering.
        while let Some(slot) = self.early.pop_front() {
            let Some(m) = slot else { break };
            self.held -= 1;
            self.held_bytes -= m.len();
            deliver(m);
            self.next += 1;
        }
        Ok(Kept::Delivered)
    }

    /// The missing ranges as `(first, count)`, at most `MAX_RANGES` ranges and
    /// `max_msgs` messages in all.
    fn missing(&self, max_msgs: u64) -> SmallVec<[(u64, u64); 8]> {
        let mut out: SmallVec<[(u64, u64); 8]> = SmallVec::new();
        if !self.has_gap() {
            return out;
        }
        let mut budget = max_msgs;
        let mut add = |first: u64, count: u64, out: &mut SmallVec<[(u64, u64); 8]>| {
            let count = count.min(budget);
            if count > 0 && out.len() < MAX_RANGES {
                out.push((first, count));
                budget -= count;
            }
        };
        // `next` is always missing when there is a gap; then the holes of
        // `early`; then everything known to exist beyond it.
        let (mut start, mut len) = (self.next, 1u64);
        for (i, slot) in self.early.iter().enumerate() {
            let seq = self.next + 1 + i as u64;
            match (slot, len) {
                (None, 0) => (start, len) = (seq, 1),
                (None, _) => len += 1,
                (Some(_), 0) => {}
                (Some(_), _) => {
                    add(start, len, &mut out);
                    len = 0;
                }
            }
        }
        let tail = self.next + 1 + self.early.len() as u64;
        if self.known > tail {
            if len == 0 {
                start = tail;
            }
            len += self.known - tail;
        }
        if len > 0 {
            add(start, len, &mut out);
        }
        out
    }
}

/// What one member sent on one channel and keeps until it is stable.
#[derive(Debug, Default)]
struct Outbound {
    /// Sequence number of `buffer[0]`: everything before it is stable.
    base: u64,
    /// Unstable messages, as passed down to NAK (its header is pushed
    /// again, identically, on retransmission).
    buffer: VecDeque<Msg>,
}

impl Outbound {
    fn next(&self) -> u64 {
        self.base + self.buffer.len() as u64
    }

    fn get(&self, seq: u64) -> Option<&Msg> {
        seq.checked_sub(self.base).and_then(|i| self.buffer.get(i as usize))
    }

    /// Drops everything before `upto`; returns how many messages and bytes
    /// were dropped.
    fn release(&mut self, upto: u64) -> (usize, usize) {
        let n = upto.saturating_sub(self.base).min(self.buffer.len() as u64) as usize;
        let bytes = self.buffer.drain(..n).map(|m| m.len()).sum();
        self.base += n as u64;
        (n, bytes)
    }
}

/// Everything this member knows about one member of the view.
#[derive(Debug)]
struct Peer {
    id: MemberId,
    /// Its casts, as received here.
    casts_in: Inbound,
    /// Its sends to this member.
    sends_in: Inbound,
    /// This member's sends to it.
    sends_out: Outbound,
    /// How many of this member's casts it has acknowledged.
    acked_casts: u64,
    /// How many of its casts passed up are held by a layer above
    /// ([`Down::Holding`]): not acknowledged yet.
    held_above: u64,
    /// How many of its casts are stable, as last reported to the layers above.
    reported_stable: u64,
    /// Its casts received here and not known stable, as passed up (NAK's
    /// header removed), from cast number `reported_stable`: what this member
    /// relays to members that lack them once the sender is gone.
    kept: VecDeque<Bytes>,
    /// The member asked for this member's missing casts instead of it (set by
    /// [`Down::Recover`] when it is leaving the view).
    relay: Option<usize>,
}

impl Peer {
    fn new(id: MemberId) -> Self {
        Peer {
            id,
            casts_in: Inbound::default(),
            sends_in: Inbound::default(),
            sends_out: Outbound::default(),
            acked_casts: 0,
            held_above: 0,
            reported_stable: 0,
            kept: VecDeque::new(),
            relay: None,
        }
    }

    /// How many of its casts this member acknowledges: those received and
    /// not held above.
    fn casts_consumed(&self) -> u64 {
        self.casts_in.next.saturating_sub(self.held_above)
    }

    /// Records that its casts up to `stable` are received everywhere.
    fn stable_to(&mut self, stable: u64) {
        let n = stable.saturating_sub(self.reported_stable).min(self.kept.len() as u64) as usize;
        self.kept.drain(..n);
        self.reported_stable = stable;
    }

    /// Its cast number `seq`, if kept here.
    fn kept_cast(&self, seq: u64) -> Option<&Bytes> {
        seq.checked_sub(self.reported_stable).and_then(|i| self.kept.get(i as usize))
    }
}

/// One member's entry in a status.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct StatusEntry {
    casts_received: u64,
    sends_received: u64,
    sends_made: u64,
    sends_stable: u64,
}

/// The reliability layer.
#[derive(Debug)]
pub struct Nak {
    retransmit: Duration,
    status_period: Duration,
    max_unstable: usize,
    max_unstable_bytes: usize,
    window: u64,
    max_out_of_order_bytes: usize,
    max_xmit_msgs: u64,
    max_xmit_bytes: usize,

    /// The current view's tag ([`view_tag`]), carried in every header.
    epoch: u32,
    /// Members in rank order.
    peers: Vec<Peer>,
    /// The current view: ranks of its members.
    view: Option<Arc<View>>,
    /// This member's rank.
    me: usize,
    casts_out: Outbound,
    /// Flush requests waiting for stability: (token, casts that must be stable).
    flushes: VecDeque<(u64, u64)>,
    /// What a status reports changed since the last one: a delivery (an
    /// acknowledgement to give) or own casts becoming stable (news for the
    /// others' `Up::Stable`).
    status_dirty: bool,
    /// Deliveries since the last status, and their bytes.
    unacked_deliveries: usize,
    unacked_bytes: usize,
    /// A peer is waiting for acknowledgements this member may hold.
    ack_requested: bool,
    /// Unstable messages held for retransmission (casts and sends), and
    /// their bytes: what the send window bounds.
    unstable: usize,
    unstable_bytes: usize,
    /// Early arrivals held, all channels together, and their bytes.
    held: usize,
    held_bytes: usize,
    /// Whether the send window is closed.
    window_closed: bool,
    /// Copies of the final status still to send before passing the leave on.
    leaving: u8,

    sent: u64,
    sent_p2p: u64,
    sent_oob: u64,
    delivered: u64,
    delivered_p2p: u64,
    delivered_oob: u64,
    duplicates: u64,
    beyond_window: u64,
    out_of_order_full: u64,
    naks_sent: u64,
    naks_received: u64,
    retransmitted: u64,
    relayed: u64,
    recovered: u64,
    status_sent: u64,
    status_received: u64,
    xmit_buffer_max: u64,
    xmit_buffer_bytes_max: u64,
    out_of_order_max: u64,
    out_of_order_bytes_max: u64,
}

impl Nak {
    /// A layer with the given parameters.
    pub fn new(p: &Params) -> Self {
        Nak {
            retransmit: Duration::from_millis(p.u64("retransmit_ms")),
            status_period: Duration::from_millis(p.u64("status_ms")),
            max_unstable: p.u64("max_unstable") as usize,
            max_unstable_bytes: usize::try_from(p.u64("max_unstable_bytes")).unwrap_or(usize::MAX),
            window: p.u64("max_out_of_order"),
            max_out_of_order_bytes: usize::try_from(p.u64("max_out_of_order_bytes")).unwrap_or(usize::MAX),
            max_xmit_msgs: p.u64("max_xmit_per_nak"),
            max_xmit_bytes: p.u64("max_xmit_bytes") as usize,
            epoch: 0,
            peers: Vec::new(),
            view: None,
            me: 0,
            casts_out: Outbound::default(),
            flushes: VecDeque::new(),
            status_dirty: false,
            unacked_deliveries: 0,
            unacked_bytes: 0,
            ack_requested: false,
            unstable: 0,
            unstable_bytes: 0,
            held: 0,
            held_bytes: 0,
            window_closed: false,
            leaving: 0,
            sent: 0,
            sent_p2p: 0,
            sent_oob: 0,
            delivered: 0,
            delivered_p2p: 0,
            delivered_oob: 0,
            duplicates: 0,
            beyond_window: 0,
            out_of_order_full: 0,
            naks_sent: 0,
            naks_received: 0,
            retransmitted: 0,
            relayed: 0,
            recovered: 0,
            status_sent: 0,
            status_received: 0,
            xmit_buffer_max: 0,
            xmit_buffer_bytes_max: 0,
            out_of_order_max: 0,
            out_of_order_bytes_max: 0,
        }
    }

    /// Starts a new view: every channel starts again from sequence number 0.
    /// The membership layer above flushes before it installs a view, so
    /// nothing unstable is forgotten.
    fn install(&mut self, cx: &mut Context<'_>, view: &Arc<View>) {
        self.epoch = view_tag(view.id());
        self.peers = view.members().iter().map(|&m| Peer::new(m)).collect();
        self.view = Some(view.clone());
        self.me = view.rank_of(&cx.local()).unwrap_or(usize::MAX);
        self.casts_out = Outbound::default();
        (self.unstable, self.unstable_bytes, self.held, self.held_bytes) = (0, 0, 0, 0);
        self.status_dirty = false;
        self.unacked_deliveries = 0;
        self.unacked_bytes = 0;
        self.ack_requested = false;
        cx.cancel_timer(TIMER_NAK);
        cx.cancel_timer(TIMER_STATUS);
        // Casts made before the view are stable by then: answer waiting flushes.
        for (token, _) in self.flushes.drain(..) {
            cx.up(Up::Flushed { token });
        }
        self.update_window(cx);
    }

    /// The rank of `m` in the current view.
    fn rank(&self, m: &MemberId) -> Option<usize> {
        self.view.as_ref()?.rank_of(m)
    }

    /// The retransmission identity FRAG merges fragments by: the view, the
    /// channel, and the message's number on it (for a relayed cast, a mix of
    /// its sender's rank and number; distinct per message in practice).
    fn tag(&self, channel: Channel, seq: u64) -> u64 {
        ((u64::from(self.epoch) & 0xff_ffff) << 40) | ((seq & ((1 << 38) - 1)) << 2) | channel as u64
    }

    fn relay_tag(&self, sender: usize, seq: u64) -> u64 {
        self.tag(Channel::Relay, (sender as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq)
    }

    /// Records a message kept for retransmission.
    fn keep_unstable(&mut self, cx: &mut Context<'_>, bytes: usize) {
        self.unstable += 1;
        self.unstable_bytes += bytes;
        self.update_window(cx);
    }

    /// Records messages that became stable, as [`Outbound::release`] counts them.
    fn released(&mut self, (msgs, bytes): (usize, usize)) {
        self.unstable -= msgs;
        self.unstable_bytes -= bytes;
    }

    /// Closes the send window when the unstable messages reach either
    /// bound, and reopens it once both are at three quarters of theirs (so
    /// it does not flap per message).
    fn update_window(&mut self, cx: &mut Context<'_>) {
        debug_assert_eq!(
            self.unstable,
            self.casts_out.buffer.len() + self.peers.iter().map(|p| p.sends_out.buffer.len()).sum::<usize>(),
            "the count follows the buffers"
        );
        let (msgs, bytes) = (self.unstable, self.unstable_bytes);
        self.xmit_buffer_max = self.xmit_buffer_max.max(msgs as u64);
        self.xmit_buffer_bytes_max = self.xmit_buffer_bytes_max.max(bytes as u64);
        let closed = if self.window_closed {
            msgs > self.max_unstable - self.max_unstable / 4 || bytes > self.max_unstable_bytes - self.max_unstable_bytes / 4
        } else {
            msgs >= self.max_unstable || bytes >= self.max_unstable_bytes
        };
        if closed != self.window_closed {
            self.window_closed = closed;
            cx.set_backpressure(closed);
        }
    }

    /// Bytes an early arrival may add to the out-of-order store: any one
    /// message when the store is empty, so that large messages get through.
    fn out_of_order_room(&self) -> usize {
        if self.held == 0 {
            usize::MAX
        } else {
            self.max_out_of_order_bytes.saturating_sub(self.held_bytes)
        }
    }

    /// Whether this member holds messages others have not acknowledged.
    fn has_unacked(&self) -> bool {
        self.unstable > 0
    }

    fn has_gap(&self) -> bool {
        self.peers.iter().any(|p| p.casts_in.has_gap() || p.sends_in.has_gap())
    }

    fn status_needed(&self) -> bool {
        // Alone (or outside the view) there is nobody to tell.
        self.peers.len() > 1 && self.me < self.peers.len() && (self.status_dirty || self.ack_requested || self.has_unacked() || self.has_gap())
    }

    fn arm_status(&mut self, cx: &mut Context<'_>) {
        if cx.timer(TIMER_STATUS).is_none() && self.status_needed() {
            cx.set_timer(TIMER_STATUS, cx.now() + self.status_period);
        }
    }

    /// Arms the request timer if any channel has a gap (a scan of them all).
    fn arm_nak(&mut self, cx: &mut Context<'_>) {
        let gap = self.has_gap();
        self.arm_nak_if(cx, gap);
    }

    /// Arms the request timer for a gap the caller found. The timer is armed
    /// whenever some channel has a gap (it re-arms itself while one does),
    /// so a handler only checks the channels it touched.
    fn arm_nak_if(&mut self, cx: &mut Context<'_>, gap: bool) {
        if gap && cx.timer(TIMER_NAK).is_none() {
            cx.set_timer(TIMER_NAK, cx.now() + self.retransmit);
        }
    }

    fn cast(&mut self, cx: &mut Context<'_>, mut msg: Msg) {
        if msg.flags().contains(MsgFlags::OOB) {
            msg.push(&[kind::OOB_CAST]);
            self.sent_oob += 1;
            return cx.down(Down::Cast(msg));
        }
        let seq = self.casts_out.next();
        let len = msg.len();
        // Kept without NAK's header, which a retransmission pushes again
        // (the same bytes): the copy shares the payload and costs no header.
        self.casts_out.buffer.push_back(msg.clone());
        push_data(&mut msg, kind::CAST, self.epoch, seq);
        msg.set_tag(Some(self.tag(Channel::Cast, seq)));
        self.sent += 1;
        self.keep_unstable(cx, len);
        self.arm_status(cx);
        cx.down(Down::Cast(msg));
    }

    fn send(&mut self, cx: &mut Context<'_>, to: MemberId, mut msg: Msg) {
        let oob = msg.flags().contains(MsgFlags::OOB);
        let rank = self.rank(&to);
        if oob || to == cx.local() || rank.is_none() {
            // Loopback is reliable and ordered; OOB asks for no guarantee; a
            // non-member has no channel (later layers address joiners so).
            msg.push(&[kind::OOB_SEND]);
            self.sent_oob += 1;
            return cx.down(Down::Send { to, msg });
        }
        let r = rank.expect("checked");
        let seq = self.peers[r].sends_out.next();
        let len = msg.len();
        self.peers[r].sends_out.buffer.push_back(msg.clone());
        push_data(&mut msg, kind::SEND, self.epoch, seq);
        msg.set_tag(Some(self.tag(Channel::Send, seq)));
        self.sent_p2p += 1;
        self.keep_unstable(cx, len);
        self.arm_status(cx);
        cx.down(Down::Send { to, msg });
    }

    fn flush(&mut self, cx: &mut Context<'_>, token: u64) {
        let target = self.casts_out.next();
        if self.casts_out.base >= target {
            cx.up(Up::Flushed { token });
        } else {
            self.flushes.push_back((token, target));
        }
    }

    fn receive(&mut self, cx: &mut Context<'_>, from: MemberId, mut msg: Msg) {
        // Kind, view and (for data) sequence number are read in one pass
        // over the front and removed at once: they were pushed as one header.
        let mut rd = Reader::new(msg.front());
        let Ok(k) = rd.u8() else { return cx.drop_malformed("empty") };
        match k {
            kind::OOB_CAST | kind::OOB_SEND => {
                let popped = msg.advance(1);
                debug_assert!(popped.is_ok(), "the front holds the kind byte just read");
                msg.flags_mut().insert(MsgFlags::OOB);
                self.delivered_oob += 1;
                if k == kind::OOB_CAST {
                    cx.up(Up::Cast { from, msg })
                } else {
                    cx.up(Up::Send { from, msg })
                }
            }
            kind::CAST | kind::SEND | kind::NAK | kind::STATUS | kind::RELAY => {
                let Some(r) = self.rank(&from) else { return cx.drop_malformed("not_member") };
                if self.me >= self.peers.len() {
                    // A view without this member: it takes no part in the group.
                    return cx.drop_malformed("not_in_view");
                }
                let Ok(epoch) = rd.u32() else { return cx.drop_malformed("truncated") };
                if epoch != self.epoch {
                    return cx.drop_malformed("other_view");
                }
                let seq = match k {
                    kind::CAST | kind::SEND => match rd.varint() {
                        Ok(seq) => seq,
                        Err(Malformed(reason)) => return cx.drop_malformed(reason),
                    },
                    _ => 0,
                };
                let popped = msg.advance(rd.consumed());
                debug_assert!(popped.is_ok(), "the front holds the bytes just read");
                let result = match k {
                    kind::SEND if r == self.me => Err(Malformed("send_to_self")),
                    kind::CAST | kind::SEND => {
                        self.accept(cx, r, k, seq, msg);
                        Ok(())
                    }
                    kind::RELAY => self.relayed(cx, msg),
                    kind::NAK => self.request(cx, r, &msg),
                    _ => self.status(cx, r, &msg),
                };
                if let Err(Malformed(reason)) = result {
                    cx.drop_malformed(reason);
                }
            }
            _ => cx.drop_malformed("unknown_kind"),
        }
    }

    /// A cast of another member, relayed by a member that holds it.
    fn relayed(&mut self, cx: &mut Context<'_>, mut msg: Msg) -> DecodeResult<()> {
        let (sender, seq) = msg.pop_with(|r| Ok((r.varint()?, r.varint()?)))?;
        if sender >= self.peers.len() as u64 {
            return Err(Malformed("relay_sender_not_member"));
        }
        if sender as usize == self.me {
            return Err(Malformed("relay_of_own_cast"));
        }
        self.recovered += 1;
        self.accept(cx, sender as usize, kind::CAST, seq, msg);
        Ok(())
    }

    /// Takes message `seq` of member `r`'s casts (`k` CAST) or sends to this
    /// member (`k` SEND), and passes up whatever became deliverable.
    fn accept(&mut self, cx: &mut Context<'_>, r: usize, k: u8, seq: u64, msg: Msg) {
        let own = r == self.me;
        let room = self.out_of_order_room();
        let peer = &mut self.peers[r];
        let from = peer.id;
        let window = self.window;
        let kept = &mut peer.kept;
        let channel = if k == kind::CAST { &mut peer.casts_in } else { &mut peer.sends_in };
        let held_bytes = channel.held_bytes;
        let (mut delivered, mut delivered_bytes) = (0u64, 0usize);
        let result = channel.accept(seq, msg, window, room, |m| {
            delivered += 1;
            delivered_bytes += m.len();
            if k == kind::CAST {
                // Received datagrams have no headroom: this clones a refcount.
                if !own {
                    kept.push_back(m.to_bytes());
                }
                cx.up(Up::Cast { from, msg: m });
            } else {
                cx.up(Up::Send { from, msg: m });
            }
        });
        let gap = channel.has_gap();
        // What the store held before, plus what arrived, less what left.
        self.held_bytes = self.held_bytes - held_bytes + channel.held_bytes;
        match result {
            Ok(Kept::Delivered) => self.held -= delivered as usize - 1,
            Ok(Kept::Held) => {
                self.held += 1;
                // Only a held arrival can raise the high-water marks.
                self.out_of_order_max = self.out_of_order_max.max(self.held as u64);
                self.out_of_order_bytes_max = self.out_of_order_bytes_max.max(self.held_bytes as u64);
            }
            Err(NotKept::Duplicate) => self.duplicates += 1,
            Err(NotKept::BeyondWindow) => self.beyond_window += 1,
            Err(NotKept::NoRoom) => self.out_of_order_full += 1,
        }
        debug_assert_eq!(self.held, self.peers.iter().map(|p| p.casts_in.held + p.sends_in.held).sum::<usize>(), "the count follows the channels");
        if k == kind::CAST {
            self.delivered += delivered;
        } else {
            self.delivered_p2p += delivered;
        }
        if delivered > 0 {
            self.status_dirty = true;
            self.unacked_deliveries += delivered as usize;
            self.unacked_bytes += delivered_bytes;
            if own {
                // Own casts come back through the loopback: this member's own
                // acknowledgement of them.
                self.ack_own(cx);
            }
            self.ack_early_if_due(cx);
        }
        self.arm_nak_if(cx, gap);
        self.arm_status(cx);
    }

    /// Answers a request for retransmission.
    fn request(&mut self, cx: &mut Context<'_>, r: usize, msg: &Msg) -> DecodeResult<()> {
        let mut rd = Reader::new(msg.front());
        let channel = match rd.u8()? {
            0 => Channel::Cast,
            1 => Channel::Send,
            2 => Channel::Relay,
            _ => return Err(Malformed("bad_channel")),
        };
        let relayed = match channel {
            Channel::Relay => {
                let sender = rd.varint()?;
                if sender >= self.peers.len() as u64 || sender as usize == self.me {
                    return Err(Malformed("relay_request_bad_sender"));
                }
                Some(sender as usize)
            }
            _ => None,
        };
        let n = rd.varint_max(MAX_RANGES as u64, "too_many_ranges")?;
        let mut ranges: SmallVec<[(u64, u64); 8]> = SmallVec::new();
        for _ in 0..n {
            ranges.push((rd.varint()?, rd.varint()?));
        }
        rd.finish()?;
        self.naks_received += 1;
        let to = self.peers[r].id;
        let (mut msgs, mut bytes) = (0u64, 0usize);
        'ranges: for (first, count) in ranges {
            for seq in first..first.saturating_add(count) {
                if msgs >= self.max_xmit_msgs || (msgs > 0 && bytes >= self.max_xmit_bytes) {
                    break 'ranges;
                }
                let msg = match relayed {
                    None => {
                        let buffer = if channel == Channel::Cast { &self.casts_out } else { &self.peers[r].sends_out };
                        let Some(m) = buffer.get(seq) else { break };
                        // The message exactly as first sent: header and tag.
                        let mut m = m.clone();
                        push_data(&mut m, if channel == Channel::Cast { kind::CAST } else { kind::SEND }, self.epoch, seq);
                        m.set_tag(Some(self.tag(channel, seq)));
                        m
                    }
                    Some(sender) => {
                        let Some(body) = self.peers[sender].kept_cast(seq) else { break };
                        let mut m = Msg::new(body.clone());
                        m.push_with(|w| {
                            w.u8(kind::RELAY).u32(self.epoch).varint(sender as u64).varint(seq);
                        });
                        m.set_tag(Some(self.relay_tag(sender, seq)));
                        m
                    }
                };
                msgs += 1;
                bytes += msg.len();
                cx.down(Down::Send { to, msg });
            }
        }
        match relayed {
            None => self.retransmitted += msgs,
            Some(_) => self.relayed += msgs,
        }
        Ok(())
    }

    /// Asks `holder` instead of `sender` for the casts of `sender` below `upto`.
    fn recover(&mut self, cx: &mut Context<'_>, sender: MemberId, upto: u64, holder: MemberId) {
        let (Some(s), Some(h)) = (self.rank(&sender), self.rank(&holder)) else { return cx.drop_malformed("recover_not_member") };
        if s == self.me || h == self.me || s == h || self.me >= self.peers.len() {
            return cx.drop_malformed("recover_bad_member");
        }
        let window = self.window;
        let peer = &mut self.peers[s];
        peer.relay = Some(h);
        peer.casts_in.known = peer.casts_in.known.max(upto.min(peer.casts_in.next.saturating_add(window)));
        // Ask at once: the flush waits for these.
        peer.casts_in.last_request = None;
        self.send_requests(cx);
        self.arm_nak(cx);
    }

    /// A layer above holds `count` of the casts of `from` passed up: they
    /// are not acknowledged until it lets them go, so that their sender's
    /// window closes. Acknowledgements already given are not taken back.
    fn holding(&mut self, cx: &mut Context<'_>, from: MemberId, count: u64) {
        // A report about a member of another view is stale.
        let Some(r) = self.rank(&from) else { return };
        if self.me >= self.peers.len() {
            return;
        }
        let peer = &mut self.peers[r];
        let before = peer.casts_consumed();
        peer.held_above = count;
        let after = peer.casts_consumed();
        if r == self.me {
            return self.ack_own(cx);
        }
        if after > before {
            // Acknowledgements to give, as if these casts arrived now; the
            // sender may be waiting for them with a closed window.
            self.status_dirty = true;
            self.unacked_deliveries += (after - before) as usize;
            self.ack_early_if_due(cx);
            self.arm_status(cx);
        }
    }

    /// Acknowledges this member's own casts up to what it consumed (never
    /// taking an acknowledgement back), and frees what became stable.
    fn ack_own(&mut self, cx: &mut Context<'_>) {
        let own = &mut self.peers[self.me];
        own.acked_casts = own.acked_casts.max(own.casts_consumed());
        self.advance_stability(cx);
    }

    /// Acknowledges at once, without waiting for the status period, when a
    /// quarter of a sender's window (in messages or bytes) is waiting for
    /// acknowledgement here, so that a fast sender's buffer drains before
    /// it fills.
    fn ack_early_if_due(&mut self, cx: &mut Context<'_>) {
        let due = self.unacked_deliveries >= (self.max_unstable / 4).max(1) || self.unacked_bytes >= (self.max_unstable_bytes / 4).max(1);
        if due && self.peers.len() > 1 {
            self.send_status(cx);
        }
    }

    fn status(&mut self, cx: &mut Context<'_>, r: usize, msg: &Msg) -> DecodeResult<()> {
        if r == self.me {
            return Ok(()); // the loopback of this member's own status
        }
        let mut rd = Reader::new(msg.front());
        let sent = rd.varint()?;
        let stable = rd.varint()?;
        let n = rd.varint_max(self.peers.len() as u64, "status_too_long")? as usize;
        if n != self.peers.len() {
            return Err(Malformed("status_wrong_size"));
        }
        // Decode fully before acting, so a truncated status changes nothing.
        let mut mine = None;
        for i in 0..n {
            let e = StatusEntry { casts_received: rd.varint()?, sends_received: rd.varint()?, sends_made: rd.varint()?, sends_stable: rd.varint()? };
            if i == self.me {
                mine = Some(e);
            }
        }
        rd.finish()?;
        self.status_received += 1;
        let e = mine.expect("n equals the view size, and receive() checked that the view holds this member");

        // Its casts: trailing loss, and whether it waits for our acks.
        let peer = &mut self.peers[r];
        peer.casts_in.known = peer.casts_in.known.max(sent.min(peer.casts_in.next.saturating_add(self.window)));
        if stable < peer.casts_consumed() {
            self.ack_requested = true;
        }
        if stable > peer.reported_stable && stable <= peer.casts_in.next {
            peer.stable_to(stable);
            cx.up(Up::Stable { from: peer.id, count: stable });
        }
        // Its sends to this member.
        peer.sends_in.known = peer.sends_in.known.max(e.sends_made.min(peer.sends_in.next.saturating_add(self.window)));
        if e.sends_stable < peer.sends_in.next {
            self.ack_requested = true;
        }
        // Its acknowledgements of this member's casts and sends.
        peer.acked_casts = peer.acked_casts.max(e.casts_received.min(self.casts_out.next()));
        let freed = peer.sends_out.release(e.sends_received);
        let gap = peer.casts_in.has_gap() || peer.sends_in.has_gap();
        self.released(freed);
        self.advance_stability(cx);
        self.arm_nak_if(cx, gap);
        self.arm_status(cx);
        Ok(())
    }

    /// Frees own casts every member has acknowledged, and answers flushes.
    fn advance_stability(&mut self, cx: &mut Context<'_>) {
        let stable = self.peers.iter().map(|p| p.acked_casts).min().unwrap_or(0);
        if stable > self.casts_out.base {
            let freed = self.casts_out.release(stable);
            self.released(freed);
            self.status_dirty = true;
            if self.me < self.peers.len() {
                self.peers[self.me].reported_stable = stable;
                cx.up(Up::Stable { from: cx.local(), count: stable });
            }
            while let Some(&(token, target)) = self.flushes.front() {
                if target > stable {
                    break;
                }
                self.flushes.pop_front();
                cx.up(Up::Flushed { token });
            }
        }
        self.update_window(cx);
    }

    fn send_status(&mut self, cx: &mut Context<'_>) {
        if self.me >= self.peers.len() {
            return;
        }
        let mut w = Writer::new();
        w.varint(self.casts_out.next()).varint(self.casts_out.base).varint(self.peers.len() as u64);
        for p in &self.peers {
            w.varint(p.casts_consumed()).varint(p.sends_in.next).varint(p.sends_out.next()).varint(p.sends_out.base);
        }
        let mut msg = Msg::new(bytes::Bytes::copy_from_slice(w.as_slice()));
        push_control(&mut msg, kind::STATUS, self.epoch);
        self.status_sent += 1;
        self.status_dirty = false;
        self.ack_requested = false;
        self.unacked_deliveries = 0;
        self.unacked_bytes = 0;
        cx.down(Down::Cast(msg));
    }

    fn send_requests(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        for r in 0..self.peers.len() {
            let relay_to = self.peers[r].relay.map(|h| self.peers[h].id);
            for channel in [Channel::Cast, Channel::Send] {
                let peer = &mut self.peers[r];
                let inbound = if channel == Channel::Cast { &mut peer.casts_in } else { &mut peer.sends_in };
                if !inbound.has_gap() || inbound.last_request.is_some_and(|t| now < t + self.retransmit) {
                    continue;
                }
                let ranges = inbound.missing(self.max_xmit_msgs);
                if ranges.is_empty() {
                    continue;
                }
                inbound.last_request = Some(now);
                let mut w = Writer::new();
                // A departing sender's casts are asked of the member that holds them.
                let to = match (channel, relay_to) {
                    (Channel::Cast, Some(holder)) => {
                        w.u8(Channel::Relay as u8).varint(r as u64);
                        holder
                    }
                    _ => {
                        w.u8(channel as u8);
                        peer.id
                    }
                };
                w.varint(ranges.len() as u64);
                for (first, count) in &ranges {
                    w.varint(*first).varint(*count);
                }
                let mut msg = Msg::new(bytes::Bytes::copy_from_slice(w.as_slice()));
                push_control(&mut msg, kind::NAK, self.epoch);
                self.naks_sent += 1;
                cx.down(Down::Send { to, msg });
            }
        }
    }
}

/// The tag of a view in NAK's headers: a 32-bit hash of its whole id.
pub fn view_tag(id: ViewId) -> u32 {
    let mut w = Writer::new();
    w.varint(id.counter);
    id.creator.encode(&mut w);
    let h = strata_stack::codec::fnv1a64(w.as_slice());
    (h ^ (h >> 32)) as u32
}

/// Pushes a data header: kind, view tag, sequence number.
fn push_data(msg: &mut Msg, k: u8, epoch: u32, seq: u64) {
    let mut h = [0u8; 5 + MAX_VARINT_LEN];
    h[0] = k;
    h[1..5].copy_from_slice(&epoch.to_be_bytes());
    let n = 5 + put_varint(&mut h[5..], seq);
    msg.push(&h[..n]);
}

fn push_control(msg: &mut Msg, k: u8, epoch: u32) {
    let mut h = [k, 0, 0, 0, 0];
    h[1..].copy_from_slice(&epoch.to_be_bytes());
    msg.push(&h);
}

impl Layer for Nak {
    fn init(&mut self, cx: &mut Context<'_>) {
        let view = cx.view().clone();
        self.install(cx, &view);
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(msg) => self.cast(cx, msg),
            Down::Send { to, msg } => self.send(cx, to, msg),
            Down::Flush { token } => self.flush(cx, token),
            Down::Recover { sender, upto, holder } => self.recover(cx, sender, upto, holder),
            Down::Holding { from, count } => self.holding(cx, from, count),
            Down::View(v) => {
                self.install(cx, &v);
                cx.down(Down::View(v));
            }
            Down::Leave if self.leaving == 0 => {
                // Last statuses, so that nobody waits on acknowledgements
                // this member would otherwise have sent later.
                if self.peers.len() > 1 && self.me < self.peers.len() {
                    self.send_status(cx);
                    self.leaving = FINAL_STATUS_COPIES - 1;
                    cx.set_timer(TIMER_LEAVE, cx.now() + self.retransmit);
                } else {
                    cx.down(Down::Leave);
                }
            }
            Down::Leave => {} // already leaving
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } | Up::Send { from, msg } => self.receive(cx, from, msg),
            Up::View(v) => {
                self.install(cx, &v);
                cx.up(Up::View(v));
            }
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        match key {
            TIMER_NAK => {
                self.send_requests(cx);
                self.arm_nak(cx);
            }
            TIMER_LEAVE => {
                self.send_status(cx);
                self.leaving -= 1;
                if self.leaving == 0 {
                    cx.down(Down::Leave);
                } else {
                    cx.set_timer(TIMER_LEAVE, cx.now() + self.retransmit);
                }
            }
            TIMER_STATUS => {
                if self.status_needed() {
                    self.send_status(cx);
                }
                // Keep the period while anything is outstanding.
                if self.has_unacked() {
                    cx.set_timer(TIMER_STATUS, cx.now() + self.status_period);
                } else {
                    self.arm_status(cx);
                }
            }
            _ => {}
        }
    }

    fn stats(&self, out: &mut Stats) {
        out.add("sent", self.sent)
            .add("sent_p2p", self.sent_p2p)
            .add("sent_oob", self.sent_oob)
            .add("delivered", self.delivered)
            .add("delivered_p2p", self.delivered_p2p)
            .add("delivered_oob", self.delivered_oob)
            .add("retransmitted", self.retransmitted)
            .add("relayed", self.relayed)
            .add("recovered", self.recovered)
            .add("kept", self.peers.iter().map(|p| p.kept.len() as u64).sum())
            .add("naks_sent", self.naks_sent)
            .add("naks_received", self.naks_received)
            .add("status_sent", self.status_sent)
            .add("status_received", self.status_received)
            .add("duplicates", self.duplicates)
            .add("beyond_window", self.beyond_window)
            .add("out_of_order_full", self.out_of_order_full)
            .add("xmit_buffer", self.unstable as u64)
            .add("xmit_buffer_max", self.xmit_buffer_max)
            .add("xmit_buffer_bytes", self.unstable_bytes as u64)
            .add("xmit_buffer_bytes_max", self.xmit_buffer_bytes_max)
            .add("out_of_order", self.held as u64)
            .add("out_of_order_max", self.out_of_order_max)
            .add("out_of_order_bytes", self.held_bytes as u64)
            .add("out_of_order_bytes_max", self.out_of_order_bytes_max)
            .add("stable", self.casts_out.base)
            .add("backpressure", u64::from(self.window_closed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quickcheck::{QuickCheck, TestResult};
    use strata_stack::harness::{LayerHarness, Out};
    use strata_stack::ParamValue;

    const A: u16 = 0;
    const B: u16 = 1;
    const C: u16 = 2;

    fn m(n: u16) -> MemberId {
        MemberId::sim(n)
    }

    fn view(n: u16) -> Arc<View> {
        View::initial((0..n).map(m).collect()).unwrap()
    }

    /// The tag of the harnesses' initial view (counter 0, created by m(0)).
    fn tag0() -> u32 {
        view_tag(view(1).id())
    }

    /// A header of kind `k` in the initial view, then `rest`.
    fn hdr(k: u8, rest: &[u8]) -> Vec<u8> {
        let mut v = vec![k];
        v.extend_from_slice(&tag0().to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    fn harness_with(at: u16, members: u16, set: &[(&'static str, u64)]) -> LayerHarness {
        let mut p = Params::defaults(NAK.params).unwrap();
        for (name, v) in set {
            p.set(name, ParamValue::U64(*v));
        }
        LayerHarness::boxed("NAK", (NAK.build)(&p).unwrap(), m(at), view(members), 1400)
    }

    fn harness(at: u16, members: u16) -> LayerHarness {
        harness_with(at, members, &[])
    }

    fn body(text: &'static str) -> Msg {
        Msg::new(Bytes::from_static(text.as_bytes()))
    }

    /// The messages a harness passed down, as they would arrive elsewhere.
    fn wire(out: &[Out]) -> Vec<(Option<MemberId>, Msg)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Down(Down::Cast(msg)) => Some((None, Msg::new(msg.to_bytes()))),
                Out::Down(Down::Send { to, msg }) => Some((Some(*to), Msg::new(msg.to_bytes()))),
                _ => None,
            })
            .collect()
    }

    fn delivered(out: &[Out]) -> Vec<(MemberId, Bytes)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Up(Up::Cast { from, msg }) | Out::Up(Up::Send { from, msg }) => Some((*from, msg.clone().into_body())),
                _ => None,
            })
            .collect()
    }

    /// Casts `msg` at member A's harness, passes it back up as the engine's
    /// loopback does, and returns it as the other members receive it.
    fn cast_at_a(a: &mut LayerHarness, msg: Msg) -> Msg {
        let out = a.down(Down::Cast(msg));
        let [Out::Down(Down::Cast(sent))] = out.as_slice() else { panic!("one cast passed down, got {out:?}") };
        let sent = sent.clone();
        a.up(Up::Cast { from: m(A), msg: sent.clone() });
        Msg::new(sent.to_bytes())
    }

    fn statuses(out: &[Out]) -> Vec<Msg> {
        wire(out).into_iter().filter(|(to, msg)| to.is_none() && msg.front().first() == Some(&kind::STATUS)).map(|(_, msg)| msg).collect()
    }

    #[test]
    fn a_cast_carries_a_small_header_and_a_tag_and_comes_back_in_order() {
        let mut a = harness(A, 2);
        let out = a.down(Down::Cast(body("hello")));
        let [Out::Down(Down::Cast(sent))] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(sent.head(), &hdr(kind::CAST, &[0])[..]);
        assert_eq!(sent.tag(), Some(a_tag(0)));
        assert_eq!(sent.body().as_ref(), b"hello");
        let out = a.up(Up::Cast { from: m(A), msg: sent.clone() });
        assert_eq!(delivered(&out), vec![(m(A), Bytes::from_static(b"hello"))]);
        assert_eq!(a.stats().get("xmit_buffer"), Some(1), "B has not acknowledged it yet");
    }

    fn a_tag(seq: u64) -> u64 {
        ((u64::from(tag0()) & 0xff_ffff) << 40) | seq << 2
    }

    #[test]
    fn a_departed_senders_casts_are_relayed_by_a_holder_with_their_headers() {
        // C cast c0, c1, c2; B got all three, A only c0. C is gone.
        let mut a = harness(A, 3);
        let mut b = harness(B, 3);
        let mut c = harness(C, 3);
        let sent: Vec<Out> = ["c0", "c1", "c2"].iter().flat_map(|t| c.down(Down::Cast(body(t)))).collect();
        let datagrams = wire(&sent);
        for (_, d) in &datagrams {
            b.up(Up::Cast { from: m(C), msg: d.clone() });
        }
        assert_eq!(delivered(&a.up(Up::Cast { from: m(C), msg: datagrams[0].1.clone() })).len(), 1);
        assert_eq!(b.stats().get("kept"), Some(3), "B keeps what it received until it is stable");
        // VSYNC's cut says C's casts up to 3, held by B: A asks B at once.
        let out = a.down(Down::Recover { sender: m(C), upto: 3, holder: m(B) });
        let requests: Vec<_> = wire(&out).into_iter().filter(|(to, _)| *to == Some(m(B))).collect();
        assert_eq!(requests.len(), 1, "{out:?}");
        // kind, view, channel 2 (relay), sender rank 2, one range: (1, 2).
        assert_eq!(requests[0].1.front(), &hdr(kind::NAK, &[2, 2, 1, 1, 2])[..]);
        let answer = b.up(Up::Send { from: m(A), msg: requests[0].1.clone() });
        let relays = wire(&answer);
        assert_eq!(relays.len(), 2);
        assert!(relays.iter().all(|(to, _)| *to == Some(m(A))));
        assert_eq!(b.stats().get("relayed"), Some(2));
        let tags: Vec<_> = answer.iter().filter_map(|o| if let Out::Down(Down::Send { msg, .. }) = o { msg.tag() } else { None }).collect();
        assert_eq!(tags.len(), 2, "relays are tagged, so FRAG merges their retransmissions");
        assert_ne!(tags[0], tags[1]);
        assert!(!tags.contains(&a_tag(1)) && !tags.contains(&a_tag(2)));
        // They arrive from B but are delivered as C's casts, in order.
        let mut got = Vec::new();
        for (_, r) in relays.iter().rev() {
            got.extend(delivered(&a.up(Up::Send { from: m(B), msg: r.clone() })));
        }
        assert_eq!(got, vec![(m(C), Bytes::from_static(b"c1")), (m(C), Bytes::from_static(b"c2"))]);
        assert_eq!(a.stats().get("recovered"), Some(2));
        // A's NAK has no gap left: no more requests.
        assert!(wire(&a.advance(Instant::from_millis(100))).iter().all(|(to, _)| to.is_none()));
    }

    #[test]
    fn a_lost_relay_is_asked_for_again_and_kept_casts_are_freed_when_stable() {
        let mut a = harness(A, 3);
        let mut b = harness(B, 3);
        let mut c = harness(C, 3);
        let datagrams = wire(&c.down(Down::Cast(body("c0"))));
        b.up(Up::Cast { from: m(C), msg: datagrams[0].1.clone() });
        let first = a.down(Down::Recover { sender: m(C), upto: 1, holder: m(B) });
        assert_eq!(wire(&first).iter().filter(|(to, _)| *to == Some(m(B))).count(), 1);
        // The answer is lost; A asks again after retransmit_ms, still of B.
        let again = a.advance(Instant::from_millis(20));
        let requests: Vec<_> = wire(&again).into_iter().filter(|(to, _)| *to == Some(m(B))).collect();
        assert_eq!(requests.len(), 1, "{again:?}");
        let relays = wire(&b.up(Up::Send { from: m(A), msg: requests[0].1.clone() }));
        assert_eq!(delivered(&a.up(Up::Send { from: m(B), msg: relays[0].1.clone() })), vec![(m(C), Bytes::from_static(b"c0"))]);
        // C's status saying c0 is stable frees B's copy.
        let mut st = Writer::new();
        st.varint(1).varint(1).varint(3);
        for _ in 0..3 {
            st.varint(1).varint(0).varint(0).varint(0);
        }
        let mut status = Msg::new(Bytes::copy_from_slice(st.as_slice()));
        push_control(&mut status, kind::STATUS, tag0());
        b.up(Up::Cast { from: m(C), msg: status });
        assert_eq!(b.stats().get("kept"), Some(0));
    }

    #[test]
    fn hostile_relays_and_recover_requests_are_dropped() {
        let mut a = harness(A, 3);
        // A relay of A's own casts, and of a rank outside the view.
        let mut own = Msg::new(Bytes::from_static(b"x"));
        own.push_with(|w| {
            w.u8(kind::RELAY).u32(tag0()).varint(0).varint(0);
        });
        assert!(delivered(&a.up(Up::Send { from: m(B), msg: own })).is_empty());
        assert_eq!(a.dropped("relay_of_own_cast"), 1);
        let mut outside = Msg::new(Bytes::from_static(b"x"));
        outside.push_with(|w| {
            w.u8(kind::RELAY).u32(tag0()).varint(9).varint(0);
        });
        assert!(delivered(&a.up(Up::Send { from: m(B), msg: outside })).is_empty());
        assert_eq!(a.dropped("relay_sender_not_member"), 1);
        // A request to relay B's casts to B itself, or this member's own.
        let mut req = Msg::new(Bytes::from_static(&[2, 0, 1, 0, 1]));
        push_control(&mut req, kind::NAK, tag0());
        assert!(wire(&a.up(Up::Send { from: m(B), msg: req })).is_empty());
        assert_eq!(a.dropped("relay_request_bad_sender"), 1);
        // Recover naming non-members or this member.
        assert!(a.down(Down::Recover { sender: m(7), upto: 3, holder: m(B) }).is_empty());
        assert!(a.down(Down::Recover { sender: m(A), upto: 3, holder: m(B) }).is_empty());
        assert_eq!(a.dropped("recover_not_member") + a.dropped("recover_bad_member"), 2);
    }

    #[test]
    fn a_gap_is_requested_after_retransmit_ms_and_repaired_with_the_identical_message() {
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        let sent: Vec<Out> = ["m0", "m1", "m2"].iter().flat_map(|t| a.down(Down::Cast(body(t)))).collect();
        let datagrams = wire(&sent);
        // m0 is lost; m1 and m2 arrive and wait.
        assert!(delivered(&b.up(Up::Cast { from: m(A), msg: datagrams[1].1.clone() })).is_empty());
        assert!(delivered(&b.up(Up::Cast { from: m(A), msg: datagrams[2].1.clone() })).is_empty());
        assert_eq!(b.stats().get("out_of_order"), Some(2));
        assert!(wire(&b.advance(Instant::from_millis(19))).iter().all(|(to, _)| to.is_none()), "no request before retransmit_ms");
        let out = b.advance(Instant::from_millis(20));
        let requests: Vec<_> = wire(&out).into_iter().filter(|(to, _)| *to == Some(m(A))).collect();
        assert_eq!(requests.len(), 1, "{out:?}");
        // kind, view, channel 0, one range: (0, 1).
        assert_eq!(requests[0].1.front(), &hdr(kind::NAK, &[0, 1, 0, 1])[..]);
        let answer = a.up(Up::Send { from: m(B), msg: requests[0].1.clone() });
        let resent = wire(&answer);
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].0, Some(m(B)));
        assert_eq!(resent[0].1, datagrams[0].1, "a retransmission is byte-identical");
        let [Out::Down(Down::Send { msg, .. })] = answer.as_slice() else { panic!() };
        assert_eq!(msg.tag(), Some(a_tag(0)), "and keeps its tag, for FRAG");
        // The repair arrives as a point-to-point message but is delivered as the cast it is.
        let out = b.up(Up::Send { from: m(A), msg: resent[0].1.clone() });
        assert_eq!(out.iter().filter(|o| matches!(o, Out::Up(Up::Cast { .. }))).count(), 3);
        assert_eq!(delivered(&out).iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(), ["m0", "m1", "m2"].map(|t| Bytes::from_static(t.as_bytes())));
        assert_eq!(b.stats().get("out_of_order"), Some(0));
        assert_eq!(a.stats().get("retransmitted"), Some(1));
    }

    #[test]
    fn duplicates_are_delivered_once_and_counted() {
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        let d = wire(&a.down(Down::Cast(body("once"))));
        assert_eq!(delivered(&b.up(Up::Cast { from: m(A), msg: d[0].1.clone() })).len(), 1);
        assert!(delivered(&b.up(Up::Cast { from: m(A), msg: d[0].1.clone() })).is_empty());
        assert_eq!(b.stats().get("duplicates"), Some(1));
    }

    #[test]
    fn a_status_reveals_a_lost_last_message_and_acks_free_the_buffer() {
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        cast_at_a(&mut a, body("last"));
        // The datagram to B is lost. A's status, due in status_ms, tells B.
        let out = a.advance(Instant::from_millis(100));
        let st = statuses(&out);
        assert_eq!(st.len(), 1, "{out:?}");
        b.advance(Instant::from_millis(100));
        b.up(Up::Cast { from: m(A), msg: st[0].clone() });
        let out = b.advance(Instant::from_millis(120));
        let req: Vec<_> = wire(&out).into_iter().filter(|(to, _)| *to == Some(m(A))).collect();
        assert_eq!(req.len(), 1, "B asks for the message it never saw: {out:?}");
        let resent = wire(&a.up(Up::Send { from: m(B), msg: req[0].1.clone() }));
        assert_eq!(delivered(&b.up(Up::Send { from: m(A), msg: resent[0].1.clone() })), vec![(m(A), Bytes::from_static(b"last"))]);
        // B acknowledges in its next status; A frees the message, reports it
        // stable, and answers a flush at once.
        let st = statuses(&b.advance(Instant::from_millis(300)));
        assert!(!st.is_empty());
        let out = a.up(Up::Cast { from: m(B), msg: st.last().unwrap().clone() });
        assert!(out.contains(&Out::Up(Up::Stable { from: m(A), count: 1 })), "{out:?}");
        assert_eq!(a.stats().get("xmit_buffer"), Some(0));
        assert_eq!(a.down(Down::Flush { token: 7 }), vec![Out::Up(Up::Flushed { token: 7 })]);
        // Once everything is stable the group falls silent.
        let later = a.advance(Instant::from_millis(10_000));
        assert!(statuses(&later).len() <= 1, "{later:?}");
        assert_eq!(a.next_timer(), None);
    }

    #[test]
    fn a_lost_ack_is_sent_again_when_the_sender_still_waits_and_others_learn_stability() {
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        let sent = cast_at_a(&mut a, body("m"));
        assert!(a.down(Down::Flush { token: 0 }).is_empty(), "B has not acknowledged yet");
        b.up(Up::Cast { from: m(A), msg: sent });
        // B's first status (its ack) is lost, and B has nothing new to say.
        assert_eq!(statuses(&b.advance(Instant::from_millis(100))).len(), 1);
        assert!(statuses(&b.advance(Instant::from_millis(1_000))).is_empty());
        // A still waits: its status shows 0 stable casts while B has 1.
        let st = statuses(&a.advance(Instant::from_millis(1_000)));
        assert!(!st.is_empty());
        b.up(Up::Cast { from: m(A), msg: st.last().unwrap().clone() });
        let again = statuses(&b.advance(Instant::from_millis(1_100)));
        assert_eq!(again.len(), 1, "B answers the sender that still waits");
        let out = a.up(Up::Cast { from: m(B), msg: again[0].clone() });
        assert!(out.contains(&Out::Up(Up::Flushed { token: 0 })), "{out:?}");
        // A's next status tells B that the cast is stable everywhere.
        let out: Vec<Out> = statuses(&a.advance(Instant::from_millis(1_200))).into_iter().flat_map(|s| b.up(Up::Cast { from: m(A), msg: s })).collect();
        assert!(out.contains(&Out::Up(Up::Stable { from: m(A), count: 1 })), "{out:?}");
    }

    #[test]
    fn a_member_alone_keeps_no_timer() {
        let mut a = harness(A, 1);
        let d = wire(&a.down(Down::Cast(body("solo"))));
        assert_eq!(delivered(&a.up(Up::Cast { from: m(A), msg: d[0].1.clone() })).len(), 1);
        assert_eq!(a.stats().get("xmit_buffer"), Some(0), "stable at once");
        assert!(a.advance(Instant::from_millis(1_000)).is_empty());
        assert_eq!(a.next_timer(), None);
    }

    #[test]
    fn missing_messages_are_requested_at_most_once_per_retransmit_ms() {
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        let d: Vec<_> = (0..2).flat_map(|_| wire(&a.down(Down::Cast(body("r"))))).collect();
        b.up(Up::Cast { from: m(A), msg: d[1].1.clone() });
        let requests = |out: Vec<Out>| wire(&out).into_iter().filter(|(to, _)| *to == Some(m(A))).count();
        assert_eq!(requests(b.advance(Instant::from_millis(20))), 1);
        assert_eq!(requests(b.advance(Instant::from_millis(39))), 0);
        assert_eq!(requests(b.advance(Instant::from_millis(40))), 1, "asked again while the gap lasts");
        b.up(Up::Cast { from: m(A), msg: d[0].1.clone() });
        assert_eq!(requests(b.advance(Instant::from_millis(1_000))), 0, "no request once repaired");
    }

    #[test]
    fn a_view_without_this_member_makes_it_drop_group_traffic() {
        let mut a = harness(A, 2);
        let mut c = harness(C, 3);
        let st = statuses(&{
            let d = wire(&a.down(Down::Cast(body("x"))));
            a.up(Up::Cast { from: m(A), msg: d[0].1.clone() });
            a.advance(Instant::from_millis(100))
        });
        let without_c = View::new(strata_stack::ViewId { counter: 0, creator: m(A) }, vec![m(A), m(B)]).unwrap();
        c.down(Down::View(without_c));
        let out = c.up(Up::Cast { from: m(A), msg: st[0].clone() });
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(c.dropped("not_in_view"), 1);
    }

    #[test]
    fn a_flush_waits_for_every_member() {
        let mut a = harness(A, 3);
        let sent = cast_at_a(&mut a, body("x"));
        assert!(a.down(Down::Flush { token: 1 }).is_empty());
        for (who, expect_flushed) in [(B, false), (C, true)] {
            let mut h = harness(who, 3);
            h.up(Up::Cast { from: m(A), msg: sent.clone() });
            let st = statuses(&h.advance(Instant::from_millis(100)));
            let out = a.up(Up::Cast { from: m(who), msg: st[0].clone() });
            assert_eq!(out.contains(&Out::Up(Up::Flushed { token: 1 })), expect_flushed, "after {who}'s ack: {out:?}");
        }
    }

    #[test]
    fn the_send_window_closes_at_max_unstable_and_reopens_when_acks_arrive() {
        let mut a = harness_with(A, 2, &[("max_unstable", 8)]);
        let mut b = harness_with(B, 2, &[("max_unstable", 8)]);
        let mut datagrams = Vec::new();
        for _ in 0..8 {
            assert!(!a.backpressure());
            datagrams.push(cast_at_a(&mut a, body("p")));
        }
        assert!(a.backpressure(), "8 unstable messages close the window");
        // B acknowledges early, after max_unstable/4 deliveries.
        let mut acks = Vec::new();
        for d in datagrams {
            acks.extend(statuses(&b.up(Up::Cast { from: m(A), msg: d })));
        }
        assert_eq!(acks.len(), 4, "one status per 2 deliveries");
        for st in acks {
            a.up(Up::Cast { from: m(B), msg: st });
        }
        assert!(!a.backpressure());
        assert_eq!(a.stats().get("xmit_buffer"), Some(0));
        assert_eq!(a.stats().get("xmit_buffer_max"), Some(8));
    }

    fn sized(len: usize) -> Msg {
        Msg::new(Bytes::from(vec![7u8; len]))
    }

    #[test]
    fn casts_held_above_are_acknowledged_only_once_released_so_their_senders_window_stays_closed() {
        let mut a = harness_with(A, 2, &[("max_unstable", 8)]);
        let mut b = harness_with(B, 2, &[("max_unstable", 8)]);
        let datagrams: Vec<Msg> = (0..8).map(|_| cast_at_a(&mut a, body("p"))).collect();
        assert!(a.backpressure());
        // The layer above B's NAK holds 7 of A's casts (waiting for a cast
        // of another member): B acknowledges only the eighth.
        assert!(b.down(Down::Holding { from: m(A), count: 7 }).is_empty(), "NAK takes the report; nothing goes further down");
        let mut acks = Vec::new();
        for d in datagrams {
            let out = b.up(Up::Cast { from: m(A), msg: d });
            assert_eq!(delivered(&out).len(), 1, "holding above does not stop delivery up");
            acks.extend(statuses(&out));
        }
        assert!(!acks.is_empty());
        for st in acks {
            a.up(Up::Cast { from: m(B), msg: st });
        }
        assert!(a.backpressure(), "7 casts unacknowledged keep A's window closed");
        assert_eq!(a.stats().get("xmit_buffer"), Some(7));
        // A's status shows 1 stable; B, which acknowledges 1, does not answer it.
        let st = statuses(&a.advance(Instant::from_millis(100)));
        assert_eq!(st.len(), 1);
        b.advance(Instant::from_millis(100));
        b.up(Up::Cast { from: m(A), msg: st[0].clone() });
        assert!(statuses(&b.advance(Instant::from_millis(250))).is_empty(), "no answer to a sender that has every acknowledgement B gives");
        // Released: B acknowledges all 8 at once, and A's window reopens.
        let out = b.down(Down::Holding { from: m(A), count: 0 });
        let st = statuses(&out);
        assert_eq!(st.len(), 1, "{out:?}");
        let out = a.up(Up::Cast { from: m(B), msg: st[0].clone() });
        assert!(out.contains(&Out::Up(Up::Stable { from: m(A), count: 8 })), "{out:?}");
        assert!(!a.backpressure());
        assert_eq!(a.stats().get("xmit_buffer"), Some(0));
        // A report about a member of no view here is ignored.
        assert!(b.down(Down::Holding { from: m(9), count: 3 }).is_empty());
    }

    #[test]
    fn own_casts_held_above_are_not_stable_until_released() {
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        assert!(a.down(Down::Holding { from: m(A), count: 1 }).is_empty());
        let sent = cast_at_a(&mut a, body("mine"));
        assert!(a.down(Down::Flush { token: 3 }).is_empty());
        b.up(Up::Cast { from: m(A), msg: sent });
        let st = statuses(&b.advance(Instant::from_millis(100)));
        let out = a.up(Up::Cast { from: m(B), msg: st[0].clone() });
        assert!(!out.contains(&Out::Up(Up::Flushed { token: 3 })), "B has it, but A's own layers above still hold it: {out:?}");
        let out = a.down(Down::Holding { from: m(A), count: 0 });
        assert!(out.contains(&Out::Up(Up::Flushed { token: 3 })), "{out:?}");
        assert!(out.contains(&Out::Up(Up::Stable { from: m(A), count: 1 })), "{out:?}");
    }

    #[test]
    fn the_send_window_closes_on_unstable_bytes_and_reopens_at_three_quarters_as_acks_arrive() {
        // 1000-byte casts against a 3500-byte bound: the fourth closes the
        // window (4000 bytes held); it reopens at or below 2625 bytes.
        let set = [("max_unstable_bytes", 3500)];
        let mut a = harness_with(A, 2, &set);
        let mut b = harness_with(B, 2, &set);
        let mut datagrams = Vec::new();
        for i in 0..4 {
            assert!(!a.backpressure(), "open before cast {i}");
            datagrams.push(cast_at_a(&mut a, sized(1000)));
        }
        assert!(a.backpressure(), "4000 unstable bytes close the window, far below max_unstable messages");
        assert_eq!((a.stats().get("xmit_buffer"), a.stats().get("xmit_buffer_bytes")), (Some(4), Some(4000)));
        // B acknowledges once a quarter of the byte bound arrived: after every cast here.
        let mut acks = Vec::new();
        for d in datagrams {
            let st = statuses(&b.up(Up::Cast { from: m(A), msg: d }));
            assert_eq!(st.len(), 1, "an early status per 875 bytes delivered");
            acks.extend(st);
        }
        a.up(Up::Cast { from: m(B), msg: acks[0].clone() });
        assert_eq!(a.stats().get("xmit_buffer_bytes"), Some(3000));
        assert!(a.backpressure(), "3000 bytes are above three quarters of the bound: still closed");
        a.up(Up::Cast { from: m(B), msg: acks[1].clone() });
        assert_eq!(a.stats().get("xmit_buffer_bytes"), Some(2000));
        assert!(!a.backpressure(), "reopened once at most three quarters are held");
        for st in &acks[2..] {
            a.up(Up::Cast { from: m(B), msg: st.clone() });
        }
        assert_eq!((a.stats().get("xmit_buffer"), a.stats().get("xmit_buffer_bytes")), (Some(0), Some(0)));
        assert_eq!(a.stats().get("xmit_buffer_bytes_max"), Some(4000));
    }

    #[test]
    fn a_message_larger_than_the_byte_bound_is_sent_and_closes_the_window_until_stable() {
        let mut a = harness_with(A, 2, &[("max_unstable_bytes", 1000)]);
        let mut b = harness_with(B, 2, &[("max_unstable_bytes", 1000)]);
        let out = a.down(Down::Cast(sized(5000)));
        let [Out::Down(Down::Cast(sent))] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(sent.body().len(), 5000, "sent whole");
        assert!(a.backpressure());
        a.up(Up::Cast { from: m(A), msg: sent.clone() });
        let acks = statuses(&b.up(Up::Cast { from: m(A), msg: Msg::new(sent.to_bytes()) }));
        a.up(Up::Cast { from: m(B), msg: acks[0].clone() });
        assert!(!a.backpressure());
    }

    #[test]
    fn sends_count_towards_the_byte_bound_too() {
        let mut a = harness_with(A, 3, &[("max_unstable_bytes", 2000)]);
        a.down(Down::Send { to: m(B), msg: sized(1000) });
        assert!(!a.backpressure());
        a.down(Down::Send { to: m(C), msg: sized(1000) });
        assert!(a.backpressure(), "1000 bytes to each of two members");
        assert_eq!(a.stats().get("xmit_buffer_bytes"), Some(2000));
    }

    #[test]
    fn early_arrivals_are_bounded_in_bytes_and_recovered_once_the_gap_fills() {
        let mut a = harness(A, 2);
        let mut b = harness_with(B, 2, &[("max_out_of_order_bytes", 2500)]);
        let d: Vec<_> = (0..4).flat_map(|_| wire(&a.down(Down::Cast(sized(1000))))).collect();
        // Cast 0 is late; 1 and 2 are held (2000 bytes); 3 would make 3000.
        for (_, msg) in &d[1..] {
            assert!(delivered(&b.up(Up::Cast { from: m(A), msg: msg.clone() })).is_empty());
        }
        assert_eq!((b.stats().get("out_of_order"), b.stats().get("out_of_order_bytes")), (Some(2), Some(2000)));
        assert_eq!(b.stats().get("out_of_order_full"), Some(1));
        // Meanwhile the dropped cast is asked for with the gap before it:
        // casts 0 and 3, not the held 1 and 2.
        let early: Vec<_> = wire(&b.advance(Instant::from_millis(20))).into_iter().filter(|(to, _)| *to == Some(m(A))).collect();
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].1.front(), &hdr(kind::NAK, &[0, 2, 0, 1, 3, 1])[..], "casts 0 and 3 asked for");
        // Cast 0 arrives: 0, 1 and 2 go up; 3 is known missing and requested.
        assert_eq!(delivered(&b.up(Up::Cast { from: m(A), msg: d[0].1.clone() })).len(), 3);
        assert_eq!(b.stats().get("out_of_order_bytes"), Some(0));
        let requests: Vec<_> = wire(&b.advance(Instant::from_millis(40))).into_iter().filter(|(to, _)| *to == Some(m(A))).collect();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].1.front(), &hdr(kind::NAK, &[0, 1, 3, 1])[..], "cast 3 asked for");
        let resent = wire(&a.up(Up::Send { from: m(B), msg: requests[0].1.clone() }));
        assert_eq!(resent[0].1, d[3].1, "the identical message");
        assert_eq!(delivered(&b.up(Up::Send { from: m(A), msg: resent[0].1.clone() })).len(), 1);
        assert_eq!(b.stats().get("out_of_order_bytes_max"), Some(2000));
    }

    #[test]
    fn one_early_arrival_is_kept_whatever_its_size() {
        let mut a = harness(A, 2);
        let mut b = harness_with(B, 2, &[("max_out_of_order_bytes", 100)]);
        let d: Vec<_> = (0..2).flat_map(|_| wire(&a.down(Down::Cast(sized(1000))))).collect();
        b.up(Up::Cast { from: m(A), msg: d[1].1.clone() });
        assert_eq!(b.stats().get("out_of_order_bytes"), Some(1000), "an empty store takes any one message");
        assert_eq!(delivered(&b.up(Up::Cast { from: m(A), msg: d[0].1.clone() })).len(), 2);
    }

    #[test]
    fn point_to_point_is_reliable_and_in_order_too() {
        let mut a = harness(A, 3);
        let mut b = harness(B, 3);
        let out: Vec<Out> = ["s0", "s1"].iter().flat_map(|t| a.down(Down::Send { to: m(B), msg: body(t) })).collect();
        let d = wire(&out);
        assert!(d.iter().all(|(to, _)| *to == Some(m(B))));
        assert_eq!(d[0].1.front()[..6], hdr(kind::SEND, &[0])[..]);
        // s0 lost, and the trailing one too: B learns of both from A's status.
        let st = statuses(&a.advance(Instant::from_millis(100)));
        b.up(Up::Cast { from: m(A), msg: st[0].clone() });
        let req: Vec<_> = wire(&b.advance(Instant::from_millis(120))).into_iter().filter(|(to, _)| *to == Some(m(A))).collect();
        assert_eq!(req[0].1.front(), &hdr(kind::NAK, &[1, 1, 0, 2])[..], "channel 1, range (0, 2)");
        let resent = wire(&a.up(Up::Send { from: m(B), msg: req[0].1.clone() }));
        assert_eq!(resent.len(), 2);
        let got: Vec<_> = resent.into_iter().flat_map(|(_, msg)| delivered(&b.up(Up::Send { from: m(A), msg }))).collect();
        assert_eq!(got, vec![(m(A), Bytes::from_static(b"s0")), (m(A), Bytes::from_static(b"s1"))]);
        assert_eq!(b.stats().get("delivered_p2p"), Some(2));
        // A send to oneself or flagged OOB needs no sequence number.
        let out = a.down(Down::Send { to: m(A), msg: body("me") });
        let [Out::Down(Down::Send { msg, .. })] = out.as_slice() else { panic!() };
        assert_eq!(msg.head(), &[kind::OOB_SEND]);
    }

    #[test]
    fn a_leaving_member_repeats_its_last_status_then_leaves() {
        let mut b = harness(B, 2);
        let out = b.down(Down::Leave);
        assert_eq!(statuses(&out).len(), 1);
        assert!(!out.contains(&Out::Down(Down::Leave)));
        assert!(b.down(Down::Leave).is_empty(), "a second leave changes nothing");
        let out = b.advance(Instant::from_millis(20));
        assert_eq!((statuses(&out).len(), out.contains(&Out::Down(Down::Leave))), (1, false));
        let out = b.advance(Instant::from_millis(40));
        assert_eq!((statuses(&out).len(), out.last()), (1, Some(&Out::Down(Down::Leave))));
        // Alone, there is nobody to tell.
        let mut solo = harness(A, 1);
        assert_eq!(solo.down(Down::Leave), vec![Out::Down(Down::Leave)]);
    }

    #[test]
    fn oob_messages_bypass_ordering() {
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        let mut msg = body("urgent");
        msg.flags_mut().insert(MsgFlags::OOB);
        let d = wire(&a.down(Down::Cast(msg)));
        assert_eq!(d[0].1.front()[0], kind::OOB_CAST);
        let out = b.up(Up::Cast { from: m(A), msg: d[0].1.clone() });
        let [Out::Up(Up::Cast { msg, .. })] = out.as_slice() else { panic!("{out:?}") };
        assert!(msg.flags().contains(MsgFlags::OOB));
        assert_eq!(a.stats().get("xmit_buffer"), Some(0), "not kept for retransmission");
    }

    #[test]
    fn arrivals_beyond_the_window_are_dropped_and_recovered_later() {
        let mut a = harness(A, 2);
        let mut b = harness_with(B, 2, &[("max_out_of_order", 4)]);
        let d: Vec<_> = (0..6).flat_map(|_| wire(&a.down(Down::Cast(body("w"))))).collect();
        for (_, msg) in &d[1..] {
            b.up(Up::Cast { from: m(A), msg: msg.clone() });
        }
        assert_eq!(b.stats().get("out_of_order"), Some(3), "seqs 1..=3 kept, 4 and 5 beyond the window");
        assert_eq!(b.stats().get("beyond_window"), Some(2));
        let got: Vec<_> = delivered(&b.up(Up::Cast { from: m(A), msg: d[0].1.clone() }));
        assert_eq!(got.len(), 4);
        for (_, msg) in &d[4..] {
            assert_eq!(delivered(&b.up(Up::Cast { from: m(A), msg: msg.clone() })).len(), 1);
        }
    }

    #[test]
    fn requests_are_bounded_by_count_and_bytes() {
        let mut a = harness_with(A, 2, &[("max_xmit_per_nak", 3)]);
        for _ in 0..10 {
            a.down(Down::Cast(body("x")));
        }
        let mut req = Msg::new(Bytes::from_static(&[0, 1, 0, 10]));
        push_control(&mut req, kind::NAK, tag0());
        assert_eq!(wire(&a.up(Up::Send { from: m(B), msg: req.clone() })).len(), 3);
        let mut a = harness_with(A, 2, &[("max_xmit_bytes", 1)]);
        for _ in 0..10 {
            a.down(Down::Cast(body("x")));
        }
        assert_eq!(wire(&a.up(Up::Send { from: m(B), msg: req })).len(), 1, "at least one message, then the byte cap");
    }

    #[test]
    fn hostile_headers_are_dropped_and_counted() {
        let mut b = harness(B, 3);
        let cases: Vec<(MemberId, Vec<u8>, &str)> = vec![
            (m(A), vec![], "empty"),
            (m(A), vec![99], "unknown_kind"),
            (m(A), vec![kind::CAST], "truncated"),
            (m(A), vec![kind::CAST, 0], "truncated"),
            (m(A), hdr(kind::CAST, &[0xff; 11]), "varint_overflow"),
            (m(9), hdr(kind::CAST, &[0]), "not_member"),
            (m(A), vec![kind::CAST, 5, 5, 5, 5, 0], "other_view"),
            (m(A), hdr(kind::NAK, &[7, 0]), "bad_channel"),
            (m(A), hdr(kind::NAK, &[0, 65]), "too_many_ranges"),
            (m(A), hdr(kind::NAK, &[0, 2, 0, 1]), "truncated"),
            (m(A), hdr(kind::STATUS, &[0, 0, 100]), "status_too_long"),
            (m(A), hdr(kind::STATUS, &[0, 0, 2]), "status_wrong_size"),
            (m(A), hdr(kind::STATUS, &[0, 0, 3, 0, 0]), "truncated"),
            (m(B), hdr(kind::SEND, &[0]), "send_to_self"),
        ];
        for (from, bytes, reason) in cases {
            let before = b.dropped(reason);
            let out = b.up(Up::Cast { from, msg: Msg::new(Bytes::from(bytes.clone())) });
            assert!(delivered(&out).is_empty(), "{bytes:?} delivered something");
            assert_eq!(b.dropped(reason), before + 1, "{bytes:?} should be dropped as {reason}; drops: {:?}", b.drops());
        }
    }

    #[test]
    fn a_status_claiming_huge_numbers_costs_only_a_bounded_request() {
        let mut b = harness_with(B, 2, &[("max_xmit_per_nak", 50)]);
        let mut w = Writer::new();
        w.varint(u64::MAX).varint(0).varint(2);
        for _ in 0..2 {
            w.varint(0).varint(0).varint(u64::MAX).varint(0);
        }
        let mut st = Msg::new(Bytes::copy_from_slice(w.as_slice()));
        push_control(&mut st, kind::STATUS, tag0());
        b.up(Up::Cast { from: m(A), msg: st });
        let out = b.advance(Instant::from_millis(20));
        let reqs = wire(&out);
        assert_eq!(reqs.len(), 2, "one request per channel: {out:?}");
        for (_, r) in reqs {
            let mut rd = Reader::new(&r.front()[5..]);
            let _channel = rd.u8().unwrap();
            assert_eq!(rd.varint().unwrap(), 1);
            assert_eq!((rd.varint().unwrap(), rd.varint().unwrap()), (0, 50));
        }
    }

    #[test]
    fn random_input_never_panics_and_never_delivers_without_a_sender() {
        fn prop(bytes: Vec<u8>, from_b: bool) -> TestResult {
            let mut h = harness(A, 3);
            let from = if from_b { m(B) } else { m(C) };
            let out = h.up(Up::Cast { from, msg: Msg::new(Bytes::from(bytes.clone())) });
            h.advance(Instant::from_millis(1000));
            // Whatever is delivered came with a data header naming seq 0 of view 0.
            let n = delivered(&out).len();
            TestResult::from_bool(n == 0 || bytes.first().is_some_and(|k| [kind::CAST, kind::SEND, kind::OOB_CAST, kind::OOB_SEND].contains(k)))
        }
        QuickCheck::new().tests(2000).quickcheck(prop as fn(Vec<u8>, bool) -> TestResult);
    }

    #[test]
    fn views_with_the_same_counter_but_another_creator_do_not_mix() {
        // Two sides of a partition may both install a view numbered 1 and
        // share a member: traffic of one is not the other's.
        let ours = View::new(strata_stack::ViewId { counter: 1, creator: m(A) }, vec![m(A), m(B)]).unwrap();
        let theirs = View::new(strata_stack::ViewId { counter: 1, creator: m(B) }, vec![m(B), m(A)]).unwrap();
        let mut a = harness(A, 2);
        let mut b = harness(B, 2);
        a.down(Down::View(ours));
        b.down(Down::View(theirs));
        let sent = wire(&b.down(Down::Cast(body("other side"))));
        let out = a.up(Up::Cast { from: m(B), msg: sent[0].1.clone() });
        assert!(delivered(&out).is_empty());
        assert_eq!(a.dropped("other_view"), 1);
    }

    #[test]
    fn a_new_view_restarts_sequence_numbers_and_drops_old_traffic() {
        let mut a = harness(A, 2);
        let old = wire(&a.down(Down::Cast(body("old"))));
        let v1 = View::new(strata_stack::ViewId { counter: 1, creator: m(A) }, vec![m(A), m(B)]).unwrap();
        let mut b = harness(B, 2);
        b.down(Down::View(v1.clone()));
        a.down(Down::View(v1));
        b.up(Up::Cast { from: m(A), msg: old[0].1.clone() });
        assert_eq!(b.dropped("other_view"), 1);
        let out = a.down(Down::Cast(body("new")));
        let [Out::Down(Down::Cast(sent))] = out.as_slice() else { panic!() };
        let mut expected = vec![kind::CAST];
        expected.extend_from_slice(&view_tag(strata_stack::ViewId { counter: 1, creator: m(A) }).to_be_bytes());
        expected.push(0);
        assert_eq!(sent.head(), &expected[..]);
        assert_eq!(a.stats().get("xmit_buffer"), Some(1));
    }
}
