//! # FRAG: fragmentation and reassembly
//!
//! Lets the layers above send messages larger than a datagram, up to
//! `max_msg_size` bytes. A message that fits one datagram goes down whole,
//! behind a one-byte header; a larger one is cut into fragments of one common
//! length (the last one shorter), each a zero-copy slice of the message behind
//! a small header, and the receiver puts the fragments back together. This is
//! the Horus/Ensemble `FRAG` layer and JGroups' `FRAG2`, with the receiver
//! treating every header as hostile, as smoltcp's reassembly buffer does.
//!
//! * **Guarantee.** A message is delivered only whole, with the bytes that
//!   were passed down, and only once all its fragments arrived. FRAG adds no
//!   reliability: a message with a lost fragment is not delivered (until a
//!   retransmission fills the gap, see below). Provides `large_messages`.
//! * **Needs below.** Nothing: datagrams may be lost, duplicated or reordered.
//!   Put it at the bottom, just above the transport (`"FRAG:NAK"`), so that it
//!   sizes fragments by what one datagram carries ([`Context::max_payload`]).
//! * **Retransmissions merge.** When a message carries a [`Msg::tag`] (NAK
//!   above tags each message and retransmits the identical bytes under the
//!   same tag), the tag is the fragment group's id, and cast and
//!   point-to-point fragments with one tag belong to one message: the
//!   fragments of a retransmission fill the holes of the original. Under 30%
//!   loss a 64 KiB message (48 fragments) would otherwise almost never arrive
//!   whole in one copy. Untagged messages are numbered by FRAG itself, in a
//!   separate id space, keyed apart for casts and sends.
//!
//! ## Header
//! ```text
//!  whole:     +------+--------------------------------------------+
//!             | 0x00 | the message (headers of the layers above ++ payload)
//!             +------+--------------------------------------------+
//!  fragment:  +------+--------+--------+--------+-----------+------------------------------+
//!             | kind |   id   | index  | count  | total_len | message bytes                |
//!             | 1 B  | varint | varint | varint |  varint   | [index*L, min(total,(index+1)*L))
//!             +------+--------+--------+--------+-----------+------------------------------+
//!  kind:  0x01 fragment, id is FRAG's counter;  0x03 fragment, id is the message's tag
//! ```
//! `L`, the payload length of every fragment but the last, is not sent: each
//! fragment implies it (`count = ceil(total_len / L)`), and the receiver checks
//! that every fragment of a message implies the same `L`. The whole-message
//! header is 1 byte; a fragment header of a 64 KiB untagged message is 7 bytes,
//! of a tagged one at most 16, and never more than `1 + 10 + 3 * 5` bytes.
//!
//! ## Parameters
//! | name | default | meaning |
//! |---|---|---|
//! | `frag_size` | 1400 | largest datagram FRAG emits, its header included (64..=65000; also capped by what the transport carries) |
//! | `max_msg_size` | 16777216 | largest message accepted, sent or reassembled (1024..=2^30) |
//! | `max_reassembly_bytes` | 67108864 | bytes held in partial messages, all senders together; at least twice `max_msg_size` |
//! | `max_partials_per_sender` | 1024 | partial messages held per sender (1..=65536) |
//! | `reassembly_timeout_ms` | 2000 | a partial that receives no new fragment for this long is discarded (10..=3600000) |
//!
//! `frag_size` and `max_msg_size` must agree between members (they enter the
//! stack fingerprint); the others are local. The timeout counts from a
//! partial's last new fragment, not from its first: a large message that keeps
//! receiving fragments (a slow link, retransmissions filling holes) is not cut
//! off. It is short because FRAG keeps no memory of completed messages: when
//! a reliability layer above sends a message twice (two requests for it
//! crossed), the first copy completes it and the surviving fragments of the
//! second start a partial that can never complete. FRAG cannot drop such an
//! echo on sight, since the layer above may really need a retransmission of a
//! message it discarded (one beyond its window), so echoes cost memory until
//! they expire. Two seconds without a new fragment is a hundred NAK
//! retransmission periods.
//!
//! ## Bad input
//! A header is decoded into a typed value, and every count and length is
//! checked against `max_msg_size` and against the fragment's own length before
//! anything is stored: unknown kinds, truncated varints, `count < 2`,
//! `count > total_len`, `index >= count`, `total_len > max_msg_size`, a
//! payload whose length does not fit its position, and a fragment whose shape
//! contradicts the partial it belongs to are dropped and counted (`dropped`,
//! by reason: `bad_header`, `bad_kind`, `bad_count`, `bad_index`,
//! `total_too_large`, `bad_length`, `conflicting_fragment`). A repeated
//! fragment is not malformed, only counted (`duplicate_fragments`); FRAG does
//! not suppress duplicate whole messages, which is the business of a
//! reliability layer above. Nothing is allocated from a declared length: a partial stores
//! only the fragments that arrived, and the message is assembled once, when
//! every fragment is there. Memory is bounded by `max_reassembly_bytes`
//! (payload bytes, at least 64 per fragment so that tiny fragments pay for
//! their bookkeeping), `max_partials_per_sender` and `reassembly_timeout_ms`;
//! when a bound is hit the oldest partial (of that sender, or overall) is
//! evicted. Partials of members that leave the view are dropped.
//!
//! On the way down, a message larger than `max_msg_size` (or too large for
//! even one fragment in what the transport carries) is not sent: FRAG reports
//! an [`Up::Problem`] and counts it (`too_large`). The engine normally
//! refuses such a message at the top of the stack already, since FRAG
//! declares `max_msg_size` through [`Layer::max_message_len`].
//!
//! ## Stats
//! `sent_whole`, `sent_fragments`, `fragmented` (messages cut), `delivered_whole`,
//! `reassembled`, `duplicate_fragments`, `evicted`, `expired`, `departed`
//! (partials dropped at a view change), `too_large` (messages refused),
//! `partials`, `partial_bytes`, `partial_bytes_max`.

mod header;
mod reassembly;
#[cfg(test)]
mod tests;

use header::{fragment_payload_len, max_fragment_header_len, FragHeader, Header, KIND_WHOLE, WHOLE_HEADER_LEN};
use reassembly::{GroupId, Reassembly, Shape};
use std::time::Duration;
use strata_stack::{Context, Down, Layer, LayerDescriptor, MemberId, Msg, ParamKind, ParamSpec, Params, Problem, Props, Stats, TimerKey, Up};

/// The `FRAG` descriptor.
pub const FRAG: LayerDescriptor = LayerDescriptor {
    name: "FRAG",
    summary: "fragmentation and reassembly: messages up to max_msg_size over datagrams of frag_size, with bounded reassembly memory",
    requires: Props::NONE,
    provides: Props::LARGE_MESSAGES,
    params: &[
        ParamSpec {
            name: "frag_size",
            kind: ParamKind::U64 { min: 64, max: 65_000 },
            default: "1400",
            doc: "largest datagram FRAG emits, its header included (also capped by what the transport carries)",
            wire: true,
        },
        ParamSpec {
            name: "max_msg_size",
            kind: ParamKind::U64 { min: 1024, max: 1 << 30 },
            default: "16777216",
            doc: "largest message accepted, sent or reassembled, in bytes",
            wire: true,
        },
        ParamSpec {
            name: "max_reassembly_bytes",
            kind: ParamKind::U64 { min: 2048, max: 1 << 40 },
            default: "67108864",
            doc: "bytes held in partly received messages, all senders together (at least twice max_msg_size)",
            wire: false,
        },
        ParamSpec {
            name: "max_partials_per_sender",
            kind: ParamKind::U64 { min: 1, max: 65_536 },
            default: "1024",
            doc: "partly received messages held per sender; the oldest is evicted beyond",
            wire: false,
        },
        ParamSpec {
            name: "reassembly_timeout_ms",
            kind: ParamKind::U64 { min: 10, max: 3_600_000 },
            default: "2000",
            doc: "a partly received message that gets no new fragment for this long is discarded",
            wire: false,
        },
    ],
    max_header_len: |p| max_fragment_header_len(p.u64("max_msg_size")).max(WHOLE_HEADER_LEN),
    build: |p| Frag::new(p).map(|f| Box::new(f) as Box<dyn Layer>),
};

/// The one timer: discards partials that stopped making progress.
const TIMER_SWEEP: TimerKey = 0;

/// Bytes a stored fragment is charged at least, for its bookkeeping.
const MIN_FRAGMENT_CHARGE: u64 = 64;

/// Fragments large messages on the way down and reassembles them on the way up.
#[derive(Debug)]
pub struct Frag {
    /// Largest datagram emitted, header included.
    frag_size: usize,
    /// Largest message sent or reassembled.
    max_msg_size: u64,
    /// Bound on [`Reassembly::bytes`].
    max_reassembly_bytes: u64,
    /// Bound on one sender's partials.
    max_partials_per_sender: usize,
    /// Idle time after which a partial is discarded.
    reassembly_timeout: Duration,
    /// Group id of the next untagged fragmented message.
    next_id: u64,
    /// Partly received messages.
    store: Reassembly,
    sent_whole: u64,
    sent_fragments: u64,
    fragmented: u64,
    delivered_whole: u64,
    reassembled: u64,
    duplicate_fragments: u64,
    evicted: u64,
    expired: u64,
    departed: u64,
    too_large: u64,
    partial_bytes_max: u64,
}

impl Frag {
    /// A layer with the given parameters, or why they do not go together.
    pub fn new(p: &Params) -> Result<Self, String> {
        let max_msg_size = p.u64("max_msg_size");
        let max_reassembly_bytes = p.u64("max_reassembly_bytes");
        if max_reassembly_bytes < max_msg_size.saturating_mul(2) {
            return Err(format!(
                "max_reassembly_bytes ({max_reassembly_bytes}) must be at least twice max_msg_size ({max_msg_size}), so that a message of the largest size always fits"
            ));
        }
        Ok(Frag {
            frag_size: p.u64("frag_size") as usize,
            max_msg_size,
            max_reassembly_bytes,
            max_partials_per_sender: p.u64("max_partials_per_sender") as usize,
            reassembly_timeout: Duration::from_millis(p.u64("reassembly_timeout_ms")),
            next_id: 0,
            store: Reassembly::default(),
            sent_whole: 0,
            sent_fragments: 0,
            fragmented: 0,
            delivered_whole: 0,
            reassembled: 0,
            duplicate_fragments: 0,
            evicted: 0,
            expired: 0,
            departed: 0,
            too_large: 0,
            partial_bytes_max: 0,
        })
    }

    /// Whether a message of `len` bytes goes down whole, behind the one-byte header.
    fn fits_whole(&self, cx: &Context<'_>, len: usize) -> bool {
        len as u64 <= self.max_msg_size && len + WHOLE_HEADER_LEN <= self.frag_size.min(cx.max_payload())
    }

    /// Sends `msg`, which does not fit one datagram (`down` sends those
    /// whole), in fragments; `to` is `None` for a cast.
    fn send_fragments(&mut self, cx: &mut Context<'_>, msg: Msg, to: Option<MemberId>) {
        let emit = |cx: &mut Context<'_>, m: Msg| match to {
            None => cx.down(Down::Cast(m)),
            Some(to) => cx.down(Down::Send { to, msg: m }),
        };
        let len = msg.len();
        let budget = self.frag_size.min(cx.max_payload());
        if len as u64 > self.max_msg_size {
            return self.refuse(cx, format!("a {len}-byte message exceeds max_msg_size ({} bytes); it was not sent", self.max_msg_size));
        }
        debug_assert!(len + WHOLE_HEADER_LEN > budget, "down() sends what fits whole");
        let (tagged, id) = match msg.tag() {
            Some(tag) => (true, tag),
            None => (false, self.next_id),
        };
        let Some(frag_len) = fragment_payload_len(budget, id, len) else {
            return self.refuse(cx, format!("a datagram of {budget} bytes is too small to carry a fragment; the {len}-byte message was not sent"));
        };
        if !tagged {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let count = len.div_ceil(frag_len);
        let flags = msg.flags();
        for index in 0..count {
            let start = index * frag_len;
            let mut fragment = msg.slice(start, (start + frag_len).min(len));
            *fragment.flags_mut() = flags;
            let header = FragHeader { tagged, id, index: index as u64, count: count as u64, total_len: len as u64 };
            fragment.push_with(|w| header.encode(w));
            debug_assert!(fragment.len() <= budget, "fragment_payload_len leaves room for the header");
            emit(cx, fragment);
        }
        self.fragmented += 1;
        self.sent_fragments += count as u64;
    }

    fn refuse(&mut self, cx: &mut Context<'_>, what: String) {
        self.too_large += 1;
        cx.up(Up::Problem(Problem { layer: cx.layer_name(), what }));
    }

    /// A datagram from `from` arrived that is not a whole message (`up`
    /// passes those on in place).
    fn receive(&mut self, cx: &mut Context<'_>, from: MemberId, send: bool, mut msg: Msg) {
        match msg.pop_with(|r| Header::decode(r, self.max_msg_size)) {
            Ok(Header::Whole) => unreachable!("up() passes on every datagram that starts with KIND_WHOLE"),
            Ok(Header::Fragment(h)) => self.fragment(cx, from, send, h, msg),
            Err(e) => cx.drop_malformed(e.0),
        }
    }

    /// Stores one fragment, and delivers its message if it was the last missing.
    fn fragment(&mut self, cx: &mut Context<'_>, from: MemberId, send: bool, h: FragHeader, payload: Msg) {
        let len = payload.len() as u64;
        let max_len = self.frag_size.saturating_sub(WHOLE_HEADER_LEN) as u64;
        let frag_len = match h.fragment_len(len, max_len) {
            Ok(l) => l,
            Err(e) => return cx.drop_malformed(e.0),
        };
        let shape = Shape { count: h.count, total_len: h.total_len, frag_len };
        let gid = if h.tagged { GroupId::Tagged(h.id) } else { GroupId::Untagged { send, id: h.id } };
        match self.store.get(&from, &gid) {
            Some(p) if p.shape != shape => return cx.drop_malformed("conflicting_fragment"),
            Some(p) if p.has(h.index) => {
                self.duplicate_fragments += 1;
                return;
            }
            Some(_) => {}
            None => {
                if self.store.partials_of(&from) >= self.max_partials_per_sender {
                    if let Some(old) = self.store.oldest_of(&from) {
                        self.store.remove(&from, &old);
                        self.evicted += 1;
                    }
                }
                self.store.start(from, gid, send, shape, cx.now());
                if cx.timer(TIMER_SWEEP).is_none() {
                    // Every other partial expires later than this deadline
                    // or is already covered by an armed one; the sweep
                    // re-arms for the earliest remaining partial.
                    cx.set_timer(TIMER_SWEEP, cx.now() + self.reassembly_timeout);
                }
            }
        }
        let charge = len.max(MIN_FRAGMENT_CHARGE);
        while self.store.bytes() + charge > self.max_reassembly_bytes {
            let Some((old_from, old_gid)) = self.store.oldest() else { break };
            self.store.remove(&old_from, &old_gid);
            self.evicted += 1;
            if (old_from, old_gid) == (from, gid) {
                // This fragment's own partial was the oldest: it goes too.
                return self.cancel_sweep_if_idle(cx);
            }
        }
        let complete = self.store.add(&from, &gid, h.index, payload.into_body(), charge, cx.now());
        self.partial_bytes_max = self.partial_bytes_max.max(self.store.bytes());
        if complete {
            let Some(p) = self.store.remove(&from, &gid) else { return };
            let send = p.send;
            let mut msg = Msg::new(p.assemble());
            if let GroupId::Tagged(tag) = gid {
                msg.set_tag(Some(tag));
            }
            self.reassembled += 1;
            self.cancel_sweep_if_idle(cx);
            cx.up(if send { Up::Send { from, msg } } else { Up::Cast { from, msg } });
        }
    }

    fn cancel_sweep_if_idle(&self, cx: &mut Context<'_>) {
        if self.store.len() == 0 {
            cx.cancel_timer(TIMER_SWEEP);
        }
    }

    fn view_changed(&mut self, cx: &mut Context<'_>, view: &strata_stack::View) {
        self.departed += self.store.retain_members(view);
        self.cancel_sweep_if_idle(cx);
    }
}

impl Layer for Frag {
    fn max_message_len(&self) -> Option<usize> {
        usize::try_from(self.max_msg_size).ok()
    }

    fn down(&mut self, cx: &mut Context<'_>, mut ev: Down) {
        // The common case, a message that fits a datagram, takes its header
        // in place and goes on in the same event (no unpacking and repacking).
        if let Down::Cast(msg) | Down::Send { msg, .. } = &mut ev {
            if self.fits_whole(cx, msg.len()) {
                msg.push(&[KIND_WHOLE]);
                self.sent_whole += 1;
                return cx.down(ev);
            }
        }
        match ev {
            Down::Cast(msg) => self.send_fragments(cx, msg, None),
            Down::Send { to, msg } => self.send_fragments(cx, msg, Some(to)),
            Down::View(v) => {
                self.view_changed(cx, &v);
                cx.down(Down::View(v));
            }
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, mut ev: Up) {
        // A whole message: pop its header in place and pass the event on.
        if let Up::Cast { msg, .. } | Up::Send { msg, .. } = &mut ev {
            if msg.front().first() == Some(&KIND_WHOLE) {
                let popped = msg.advance(WHOLE_HEADER_LEN);
                debug_assert!(popped.is_ok(), "the front holds the kind byte just read");
                self.delivered_whole += 1;
                return cx.up(ev);
            }
        }
        match ev {
            Up::Cast { from, msg } => self.receive(cx, from, false, msg),
            Up::Send { from, msg } => self.receive(cx, from, true, msg),
            Up::View(v) => {
                self.view_changed(cx, &v);
                cx.up(Up::View(v));
            }
            other => cx.up(other),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        if key != TIMER_SWEEP {
            return;
        }
        let (expired, next) = self.store.expire(cx.now(), self.reassembly_timeout);
        self.expired += expired;
        if let Some(deadline) = next {
            cx.set_timer(TIMER_SWEEP, deadline);
        }
    }

    fn stats(&self, out: &mut Stats) {
        out.add("sent_whole", self.sent_whole)
            .add("sent_fragments", self.sent_fragments)
            .add("fragmented", self.fragmented)
            .add("delivered_whole", self.delivered_whole)
            .add("reassembled", self.reassembled)
            .add("duplicate_fragments", self.duplicate_fragments)
            .add("evicted", self.evicted)
            .add("expired", self.expired)
            .add("departed", self.departed)
            .add("too_large", self.too_large)
            .add("partials", self.store.len() as u64)
            .add("partial_bytes", self.store.bytes())
            .add("partial_bytes_max", self.partial_bytes_max);
    }
}
