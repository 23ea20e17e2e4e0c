//! TOTAL at one member, by its exact output through `LayerHarness`: the
//! sequencer's own casts, delivery by announcement, piggybacking, batching,
//! the view change (leftovers, stale orders, takeover), per-cast order,
//! flow control and hostile input. Many members together: `model.rs`.

use super::wire::{self, kind, Run};
use super::*;
use bytes::Bytes;
use quickcheck::{QuickCheck, TestResult};
use strata_stack::harness::{LayerHarness, Out};
use strata_stack::{Instant, ParamValue, ViewId};

const A: u16 = 0;
const B: u16 = 1;
const C: u16 = 2;

fn m(n: u16) -> MemberId {
    MemberId::sim(n)
}

/// The first view of A, B, C (A is rank 0, the sequencer).
fn view3() -> Arc<View> {
    View::initial(vec![m(A), m(B), m(C)]).unwrap()
}

/// A later view with `members` in that rank order, made by the first.
fn view(counter: u64, members: &[u16]) -> Arc<View> {
    View::new(ViewId { counter, creator: m(members[0]) }, members.iter().map(|&n| m(n)).collect()).unwrap()
}

fn tag0() -> u32 {
    view_tag(view3().id())
}

fn params(pairs: &[(&'static str, u64)]) -> Params {
    let mut p = Params::defaults(TOTAL.params).unwrap();
    for (name, value) in pairs {
        p.set(name, ParamValue::U64(*value));
    }
    p
}

fn harness_with(local: u16, pairs: &[(&'static str, u64)]) -> LayerHarness {
    LayerHarness::boxed("TOTAL", (TOTAL.build)(&params(pairs)).unwrap(), m(local), view3(), 65_000)
}

fn harness(local: u16) -> LayerHarness {
    harness_with(local, &[])
}

fn body(text: &str) -> Msg {
    Msg::new(Bytes::copy_from_slice(text.as_bytes()))
}

fn fifo(text: &str) -> Msg {
    let mut msg = body(text);
    msg.flags_mut().set_order(Some(Order::Fifo));
    msg
}

/// What arrives from the network: the message's bytes, no local flags.
fn wire_copy(msg: &Msg) -> Msg {
    Msg::new(msg.to_bytes())
}

/// The casts a harness passed down, as the network carries them.
fn casts(out: &[Out]) -> Vec<Msg> {
    out.iter()
        .filter_map(|o| match o {
            Out::Down(Down::Cast(msg)) => Some(wire_copy(msg)),
            _ => None,
        })
        .collect()
}

/// The casts a harness passed up: sender and payload.
fn delivered(out: &[Out]) -> Vec<(MemberId, String)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Up(Up::Cast { from, msg }) => Some((*from, String::from_utf8_lossy(&msg.to_bytes()).into_owned())),
            _ => None,
        })
        .collect()
}

fn d(from: u16, text: &str) -> (MemberId, String) {
    (m(from), text.to_string())
}

/// A data cast as it comes up: header then payload.
fn data(ts: u64, ordered: bool, text: &str) -> Msg {
    let mut msg = body(text);
    msg.push_with(|w| wire::encode_data(w, ts, ordered));
    wire_copy(&msg)
}

fn sequenced(ts: u64, tag: u32, runs: &[Run], text: &str) -> Msg {
    let mut msg = body(text);
    msg.push_with(|w| wire::encode_sequenced(w, ts, tag, runs.iter()));
    wire_copy(&msg)
}

fn order(tag: u32, runs: &[Run]) -> Msg {
    let mut msg = Msg::empty();
    msg.push_with(|w| wire::encode_order(w, tag, runs.iter()));
    wire_copy(&msg)
}

fn run(rank: u32, count: u32) -> Run {
    Run { rank, count }
}

fn from(h: &mut LayerHarness, sender: u16, msg: Msg) -> Vec<Out> {
    h.up(Up::Cast { from: m(sender), msg })
}

#[test]
fn the_sequencer_delivers_its_own_cast_as_soon_as_it_comes_back() {
    let mut a = harness(A);
    let out = a.down(Down::Cast(body("a1")));
    let mut header = vec![kind::SEQUENCED, 1];
    header.extend_from_slice(&tag0().to_be_bytes());
    header.push(0);
    let mut expected = body("a1");
    expected.push(&header);
    assert_eq!(out, vec![Out::Down(Down::Cast(expected.clone()))], "kind, ts 1, the view's tag, no runs: 7 bytes");
    let out = from(&mut a, A, wire_copy(&expected));
    assert_eq!(out, vec![Out::Up(Up::Cast { from: m(A), msg: body("a1") })]);
    // Every other member delivers it at once too.
    let mut c = harness(C);
    assert_eq!(delivered(&from(&mut c, A, wire_copy(&expected))), vec![d(A, "a1")]);
    assert_eq!(a.next_timer(), None, "nothing left to announce");
    assert_eq!(a.stats().get("announcements_sent"), Some(0));
}

#[test]
fn a_member_delivers_ordered_casts_only_as_announced() {
    let mut b = harness(B);
    let out = b.down(Down::Cast(body("b1")));
    let [Out::Down(Down::Cast(own))] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(own.head(), &[kind::ORDERED, 1], "a member's ordered cast: kind and ts, 2 bytes");
    assert!(from(&mut b, C, data(1, true, "c1")).is_empty());
    assert!(from(&mut b, B, wire_copy(own)).is_empty(), "not even its own cast goes up before its order");
    assert_eq!(b.stats().get("pending"), Some(2));
    let out = from(&mut b, A, order(tag0(), &[run(2, 1), run(1, 1)]));
    assert_eq!(out, vec![Out::Up(Up::Cast { from: m(C), msg: body("c1") }), Out::Up(Up::Cast { from: m(B), msg: body("b1") })]);
    // An order may arrive before the cast it names: it waits for it.
    assert!(from(&mut b, A, order(tag0(), &[run(2, 2)])).is_empty());
    assert_eq!(delivered(&from(&mut b, C, data(3, true, "c2"))), vec![d(C, "c2")]);
    assert_eq!(delivered(&from(&mut b, C, data(4, true, "c3"))), vec![d(C, "c3")]);
    assert!(from(&mut b, C, data(5, true, "c4")).is_empty(), "the run is used up");
    assert_eq!(b.stats().get("ordered_delivered"), Some(4));
    assert_eq!(b.stats().get("pending"), Some(1));
    assert_eq!(b.next_timer(), None, "only the sequencer keeps a timer");
}

#[test]
fn the_sequencer_orders_in_receive_order_and_piggybacks_pending_runs_on_its_own_cast() {
    let mut a = harness(A);
    let arrivals = [(B, data(1, true, "b1")), (C, data(1, true, "c1")), (B, data(2, true, "b2")), (B, data(3, true, "b3"))];
    for (who, msg) in &arrivals {
        assert!(from(&mut a, *who, msg.clone()).is_empty(), "the sequencer too waits for the order");
    }
    assert_eq!(a.stats().get("ordered"), Some(4));
    let out = a.down(Down::Cast(body("a1")));
    let sent = casts(&out);
    assert_eq!(sent.len(), 1, "no separate announcement: {out:?}");
    assert_eq!(sent[0], sequenced(4, tag0(), &[run(1, 1), run(2, 1), run(1, 2)], "a1"), "ts is past every receipt; consecutive casts of B share a run");
    assert_eq!(a.next_timer(), None, "the piggyback took the pending runs");
    let expected = vec![d(B, "b1"), d(C, "c1"), d(B, "b2"), d(B, "b3"), d(A, "a1")];
    assert_eq!(delivered(&from(&mut a, A, sent[0].clone())), expected);
    // Another member, given the same casts, delivers the same sequence.
    let mut c = harness(C);
    for (who, msg) in arrivals {
        from(&mut c, who, msg);
    }
    assert_eq!(delivered(&from(&mut c, A, sent[0].clone())), expected);
    let s = a.stats();
    assert_eq!((s.get("piggybacked"), s.get("runs_announced"), s.get("announcements_sent")), (Some(1), Some(3), Some(0)));
}

#[test]
fn announcements_wait_for_the_timer_or_a_full_batch() {
    let mut a = harness_with(A, &[("batch_msgs", 4), ("batch_us", 500)]);
    let mut out = Vec::new();
    for (i, who) in [B, B, C].into_iter().enumerate() {
        out.extend(from(&mut a, who, data(i as u64 + 1, true, "x")));
    }
    assert!(out.is_empty());
    assert_eq!(a.next_timer(), Some(Instant::from_nanos(500_000)), "armed at the first cast, not pushed back by later ones");
    assert!(a.advance(Instant::from_nanos(499_999)).is_empty());
    let out = a.advance(Instant::from_nanos(500_000));
    assert_eq!(casts(&out), vec![order(tag0(), &[run(1, 2), run(2, 1)])], "three casts, one announcement");
    // A full batch goes at once, whatever the timer.
    let mut out = Vec::new();
    for i in 0..4 {
        out.extend(from(&mut a, C, data(10 + i, true, "y")));
    }
    assert_eq!(casts(&out), vec![order(tag0(), &[run(2, 4)])]);
    assert_eq!(a.next_timer(), None);
    let s = a.stats();
    assert_eq!((s.get("ordered"), s.get("announcements_sent"), s.get("runs_announced")), (Some(7), Some(2), Some(3)));
}

#[test]
fn by_default_casts_that_arrive_together_share_one_announcement_at_once() {
    // The default batch_us is 0: the timer is due at the current instant,
    // so the driver fires it once the round's inputs are handled.
    let mut a = harness(A);
    assert!(from(&mut a, B, data(1, true, "b1")).is_empty());
    assert!(from(&mut a, C, data(2, true, "c1")).is_empty());
    assert_eq!(a.next_timer(), Some(Instant::ZERO));
    assert_eq!(casts(&a.advance(Instant::ZERO)), vec![order(tag0(), &[run(1, 1), run(2, 1)])]);
    assert_eq!(a.stats().get("announcements_sent"), Some(1));
}

#[test]
fn leftovers_are_delivered_before_the_next_view_by_timestamp_then_rank() {
    let mut b = harness(B);
    let own = casts(&b.down(Down::Cast(body("b1"))));
    for (who, msg) in [(C, data(2, true, "c1")), (C, data(3, false, "c2 fifo")), (A, data(4, true, "a1")), (B, own[0].clone()), (C, data(6, true, "c3"))] {
        assert!(from(&mut b, who, msg).is_empty());
    }
    // c1 is ordered: the rest of C's casts wait behind it.
    assert_eq!(b.up(Up::Block), vec![Out::Up(Up::Block)]);
    let next = view(1, &[B, C]);
    let out = b.up(Up::View(next.clone()));
    let in_order = vec![d(B, "b1"), d(C, "c1"), d(C, "c2 fifo"), d(A, "a1"), d(C, "c3")];
    assert_eq!(delivered(&out), in_order, "(1,B) (2,C) (3,C) (4,A) (6,C)");
    assert_eq!(out.last(), Some(&Out::Up(Up::View(next))), "the view comes after its leftovers");
    let s = b.stats();
    assert_eq!((s.get("leftovers_delivered"), s.get("pending")), (Some(5), Some(0)));
}

#[test]
fn a_member_cut_off_from_the_primary_partition_discards_its_leftovers() {
    let mut c = harness(C);
    from(&mut c, A, data(1, true, "a1"));
    from(&mut c, B, data(2, true, "b1"));
    let minority = View::with_primary(ViewId { counter: 1, creator: m(C) }, vec![m(C)], false).unwrap();
    let out = c.up(Up::View(minority.clone()));
    assert_eq!(out, vec![Out::Up(Up::View(minority.clone()))], "the primary side orders a1 and b1; C will take its state");
    let s = c.stats();
    assert_eq!((s.get("leftovers_discarded"), s.get("leftovers_delivered"), s.get("pending")), (Some(2), Some(0), Some(0)));
    // Within non-primary views (merge=true keeps them working) leftovers are delivered.
    from(&mut c, C, data(3, true, "c1"));
    let next = View::with_primary(ViewId { counter: 2, creator: m(C) }, vec![m(C)], false).unwrap();
    assert_eq!(delivered(&c.up(Up::View(next))), vec![d(C, "c1")]);
}

#[test]
fn equal_timestamps_go_by_rank_and_a_sender_keeps_its_own_order() {
    let mut c = harness(C);
    // A hostile or confused sender whose timestamps go down: its order stands.
    for (who, msg) in [(C, data(5, true, "c1")), (B, data(5, true, "b1")), (A, data(9, true, "a1")), (A, data(1, true, "a2"))] {
        from(&mut c, who, msg);
    }
    let out = c.up(Up::View(view(1, &[A, B, C])));
    assert_eq!(delivered(&out), vec![d(B, "b1"), d(C, "c1"), d(A, "a1"), d(A, "a2")]);
}

#[test]
fn orders_made_in_another_view_are_ignored() {
    let mut b = harness(B);
    let other = view_tag(view(7, &[A, B, C]).id());
    from(&mut b, C, data(1, true, "c1"));
    assert!(from(&mut b, A, order(other, &[run(2, 1)])).is_empty());
    assert_eq!((b.stats().get("stale_order"), b.dropped("stale_order")), (Some(1), 1));
    // A stale piggyback: the order is ignored, the cast is an ordinary ordered one.
    assert!(from(&mut b, A, sequenced(2, other, &[run(2, 1)], "a1")).is_empty());
    assert_eq!(b.stats().get("stale_order"), Some(2));
    assert_eq!(b.dropped("stale_order"), 1, "the cast itself is kept");
    let out = from(&mut b, A, order(tag0(), &[run(0, 1), run(2, 1)]));
    assert_eq!(delivered(&out), vec![d(A, "a1"), d(C, "c1")]);
}

#[test]
fn an_order_held_across_a_view_change_is_stale_in_the_next_view() {
    let mut a = harness(A);
    from(&mut a, B, data(1, true, "b1"));
    let ann = casts(&a.advance(Instant::from_millis(1)));
    assert_eq!(ann.len(), 1);
    // VSYNC held the announcement (the view change had begun) and sends it in
    // the next view: b1 was a leftover of the old one, the order names nothing now.
    let out = a.up(Up::View(view(1, &[A, B])));
    assert_eq!(delivered(&out), vec![d(B, "b1")]);
    from(&mut a, B, data(2, true, "b2"));
    assert!(from(&mut a, A, ann[0].clone()).is_empty(), "b2 is not what the old order named");
    assert_eq!(a.stats().get("stale_order"), Some(1));
}

#[test]
fn after_block_the_sequencer_announces_nothing_and_its_casts_carry_no_order() {
    let mut a = harness(A);
    from(&mut a, B, data(1, true, "b1"));
    assert!(a.next_timer().is_some());
    assert_eq!(a.up(Up::Block), vec![Out::Up(Up::Block)]);
    assert_eq!(a.next_timer(), None);
    assert!(a.advance(Instant::from_millis(10)).is_empty());
    let sent = casts(&a.down(Down::Cast(body("a1"))));
    assert_eq!(sent, vec![data(2, true, "a1")], "held by VSYNC, it will be ordered in the next view");
    // Orders sent before the block still apply to this view.
    assert!(from(&mut a, B, data(2, true, "b2")).is_empty());
    assert_eq!(a.stats().get("ordered"), Some(1), "nothing is ordered after the block");
    assert_eq!(delivered(&from(&mut a, A, order(tag0(), &[run(1, 1)]))), vec![d(B, "b1")]);
}

#[test]
fn the_new_coordinator_takes_over_as_sequencer() {
    let mut b = harness(B);
    assert_eq!(delivered(&b.up(Up::View(view(1, &[B, C])))), vec![]);
    let w = view_tag(view(1, &[B, C]).id());
    assert!(from(&mut b, C, data(1, true, "c1")).is_empty());
    let out = b.advance(Instant::from_millis(1));
    assert_eq!(casts(&out), vec![order(w, &[run(1, 1)])], "C is rank 1 now");
    assert_eq!(delivered(&from(&mut b, B, order(w, &[run(1, 1)]))), vec![d(C, "c1")]);
    let sent = casts(&b.down(Down::Cast(body("b1"))));
    assert_eq!(sent, vec![sequenced(2, w, &[], "b1")]);
    assert_eq!(delivered(&from(&mut b, B, sent[0].clone())), vec![d(B, "b1")]);
    // The old sequencer, still a member but no longer rank 0, orders nothing.
    let mut a = harness(A);
    a.up(Up::View(view(1, &[B, A])));
    from(&mut a, B, data(1, true, "b1"));
    assert_eq!((a.next_timer(), a.stats().get("ordered")), (None, Some(0)));
    let own = casts(&a.down(Down::Cast(body("a1"))));
    assert_eq!(own[0].front()[0], kind::ORDERED);
}

#[test]
fn the_sequencer_orders_its_own_casts_that_come_without_a_valid_piggyback() {
    let mut a = harness(A);
    // Cast while blocked in an earlier view, sent in this one.
    from(&mut a, A, data(3, true, "a0"));
    let own = casts(&a.down(Down::Cast(body("a1"))));
    assert_eq!(own, vec![sequenced(4, tag0(), &[run(0, 1)], "a1")]);
    assert_eq!(delivered(&from(&mut a, A, own[0].clone())), vec![d(A, "a0"), d(A, "a1")]);
}

#[test]
fn a_state_request_waits_for_its_view_and_comes_after_the_leftovers() {
    let mut b = harness(B);
    from(&mut b, C, data(1, true, "c1"));
    let request = Up::StateRequest { token: 3, joiners: vec![m(9)] };
    assert!(b.up(request.clone()).is_empty(), "held until the view says whether leftovers are delivered");
    let next = view(1, &[A, B, C, 9]);
    let out = b.up(Up::View(next.clone()));
    assert_eq!(out, vec![Out::Up(Up::Cast { from: m(C), msg: body("c1") }), Out::Up(request.clone()), Out::Up(Up::View(next))]);
    // Into a non-primary view the leftovers are discarded: the state goes without them.
    from(&mut b, C, data(2, true, "c2"));
    b.up(request.clone());
    let minority = View::with_primary(ViewId { counter: 2, creator: m(B) }, vec![m(B), m(9)], false).unwrap();
    assert_eq!(b.up(Up::View(minority.clone())), vec![Out::Up(request.clone()), Out::Up(Up::View(minority))]);
    // Anything else first releases it, after the leftovers.
    from(&mut b, B, data(3, true, "b1"));
    b.up(request.clone());
    let out = b.up(Up::Suspect(m(9)));
    assert_eq!(out, vec![Out::Up(Up::Cast { from: m(B), msg: body("b1") }), Out::Up(request), Out::Up(Up::Suspect(m(9)))]);
}

#[test]
fn a_leaving_member_delivers_its_leftovers_before_it_goes() {
    let mut b = harness(B);
    from(&mut b, C, data(2, true, "c2"));
    from(&mut b, A, data(1, true, "a1"));
    let out = b.up(Up::Left);
    assert_eq!(out, vec![Out::Up(Up::Cast { from: m(A), msg: body("a1") }), Out::Up(Up::Cast { from: m(C), msg: body("c2") }), Out::Up(Up::Left)]);
}

#[test]
fn fifo_casts_skip_the_order_but_keep_their_senders_order() {
    let mut c = harness(C);
    let sent = casts(&c.down(Down::Cast(fifo("c1"))));
    assert_eq!(sent[0].front()[..2], [kind::UNORDERED, 1]);
    let mut a = harness(A);
    assert_eq!(delivered(&from(&mut a, C, sent[0].clone())), vec![d(C, "c1")], "at once");
    assert_eq!(a.next_timer(), None, "the sequencer does not order it");
    // Behind an ordered cast of the same sender it waits, then follows it.
    assert!(from(&mut a, C, data(2, true, "c2")).is_empty());
    assert!(from(&mut a, C, data(3, false, "c3")).is_empty());
    assert!(from(&mut a, C, data(4, false, "c4")).is_empty());
    assert_eq!(delivered(&from(&mut a, B, data(1, false, "b1"))), vec![d(B, "b1")], "other senders' are not held up");
    let ann = casts(&a.advance(Instant::from_millis(1)));
    assert_eq!(ann, vec![order(tag0(), &[run(2, 1)])], "one ordered cast");
    assert_eq!(delivered(&from(&mut a, A, ann[0].clone())), vec![d(C, "c2"), d(C, "c3"), d(C, "c4")]);
    let s = a.stats();
    assert_eq!((s.get("ordered_delivered"), s.get("unordered_delivered")), (Some(1), Some(4)));
}

#[test]
fn causal_and_total_requests_are_ordered() {
    let mut b = harness(B);
    for o in [Order::Causal, Order::Total] {
        let mut msg = body("x");
        msg.flags_mut().set_order(Some(o));
        let sent = casts(&b.down(Down::Cast(msg)));
        assert_eq!(sent[0].front()[0], kind::ORDERED, "{o:?}");
    }
}

#[test]
fn sends_and_out_of_band_casts_pass_at_once() {
    let mut b = harness(B);
    let out = b.down(Down::Send { to: m(C), msg: body("p") });
    let [Out::Down(Down::Send { to, msg })] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!((*to, msg.head()), (m(C), &[kind::PLAIN][..]));
    let mut oob = body("hb");
    oob.flags_mut().insert(MsgFlags::OOB);
    let out = b.down(Down::Cast(oob));
    let sent = casts(&out);
    assert_eq!(sent[0].front(), &[kind::PLAIN, b'h', b'b']);
    // Even from outside the view: the layers below vouched for it.
    let out = b.up(Up::Cast { from: m(9), msg: sent[0].clone() });
    assert_eq!(delivered(&out), vec![(m(9), "hb".to_string())]);
    let out = b.up(Up::Send { from: m(C), msg: wire_copy(msg) });
    assert_eq!(out, vec![Out::Up(Up::Send { from: m(C), msg: body("p") })]);
    assert!(b.up(Up::Send { from: m(C), msg: data(1, true, "x") }).is_empty());
    assert_eq!(b.dropped("unknown_kind"), 1);
    // Other events pass through untouched.
    for ev in [Up::Suspect(m(C)), Up::Stable { from: m(C), count: 2 }, Up::Flushed { token: 1 }, Up::StateDone] {
        assert_eq!(b.up(ev.clone()), vec![Out::Up(ev)]);
    }
    assert_eq!(b.down(Down::Flush { token: 4 }), vec![Out::Down(Down::Flush { token: 4 })]);
}

#[test]
fn the_send_window_closes_while_too_many_casts_wait_for_their_order() {
    let mut b = harness_with(B, &[("max_pending", 8)]);
    for i in 0..7 {
        from(&mut b, C, data(i + 1, true, "c"));
    }
    assert!(!b.backpressure());
    from(&mut b, C, data(8, true, "c"));
    assert!(b.backpressure(), "8 casts wait");
    from(&mut b, A, order(tag0(), &[run(2, 1)]));
    assert!(b.backpressure(), "7 still wait: the window reopens at three quarters");
    from(&mut b, A, order(tag0(), &[run(2, 1)]));
    assert!(!b.backpressure());
    assert_eq!(b.stats().get("pending_max"), Some(8));
    // A view change delivers the rest and leaves the window open.
    for i in 0..8 {
        from(&mut b, C, data(10 + i, true, "c"));
    }
    assert!(b.backpressure());
    b.up(Up::View(view(1, &[A, B, C])));
    assert!(!b.backpressure());
}

#[test]
fn hostile_headers_are_dropped_and_counted() {
    let mut b = harness_with(B, &[("batch_msgs", 4)]);
    let t = tag0().to_be_bytes();
    let with_tag = |k: u8, rest: &[u8]| {
        let mut v = vec![k];
        v.extend_from_slice(&t);
        v.extend_from_slice(rest);
        v
    };
    let cases: Vec<(u16, Vec<u8>, &str)> = vec![
        (C, vec![], "empty"),
        (C, vec![0], "unknown_kind"),
        (C, vec![99, 1], "unknown_kind"),
        (C, vec![kind::ORDERED], "truncated"),
        (C, vec![kind::ORDERED, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], "varint_overflow"),
        (C, vec![kind::SEQUENCED, 1, 0, 0], "truncated"),
        (C, vec![kind::ORDER, 1, 2], "truncated"),
        (A, with_tag(kind::ORDER, &[5]), "too_many_runs"),
        (A, with_tag(kind::ORDER, &[1, 0, 5]), "run_too_long"),
        (A, with_tag(kind::ORDER, &[2, 0, 3, 1, 2]), "run_too_long"),
        (A, with_tag(kind::ORDER, &[1, 0, 0]), "empty_run"),
        (A, with_tag(kind::ORDER, &[1, 0, 1, 0]), "trailing_bytes"),
        (A, with_tag(kind::ORDER, &[1, 0xff, 0xff, 0xff, 0xff, 0x7f, 1]), "bad_rank"),
        (A, with_tag(kind::ORDER, &[1, 3, 1]), "bad_rank"),
        (C, with_tag(kind::ORDER, &[1, 2, 1]), "order_not_sequencer"),
        (9, vec![kind::ORDERED, 1, b'x'], "not_member"),
    ];
    for (who, bytes, reason) in cases {
        let before = b.dropped(reason);
        let out = from(&mut b, who, Msg::new(Bytes::from(bytes.clone())));
        assert!(out.is_empty(), "{bytes:?}: {out:?}");
        assert_eq!(b.dropped(reason), before + 1, "{bytes:?} should be dropped as {reason}; drops: {:?}", b.drops());
    }
    assert_eq!(b.stats().get("queued_runs"), Some(0), "no refused order was queued");
    // A piggyback from a member that is not the sequencer: the cast stays, its order goes.
    assert!(from(&mut b, C, sequenced(1, tag0(), &[run(1, 1)], "c1")).is_empty());
    assert_eq!(b.dropped("order_not_sequencer"), 2);
    assert_eq!(delivered(&from(&mut b, A, order(tag0(), &[run(2, 1)]))), vec![d(C, "c1")]);
}

#[test]
fn a_run_past_the_casts_that_arrived_costs_one_entry() {
    let mut b = harness(B);
    for _ in 0..100 {
        from(&mut b, A, order(tag0(), &[run(2, 32)]));
    }
    assert_eq!(b.stats().get("queued_runs"), Some(1), "consecutive runs of one sender merge");
    assert_eq!(delivered(&from(&mut b, C, data(1, true, "c1"))), vec![d(C, "c1")]);
}

#[test]
fn the_layer_builds_in_the_canonical_stacks_and_is_refused_without_membership() {
    let reg = crate::builtin();
    let (a, b) = (m(A), m(B));
    for spec in ["FRAG:NAK:CAUSAL:VSYNC:TOTAL", "FRAG:NAK:VSYNC:TOTAL", "FRAG:NAK:VSYNC:TOTAL(batch_msgs=8,batch_us=0)"] {
        reg.resolve(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        strata_stack::Stack::new(&reg, spec, strata_stack::StackConfig::new("g", a, vec![a, b]), Instant::ZERO).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
    let err = reg.resolve("FRAG:NAK:TOTAL").unwrap_err().to_string();
    assert!(err.contains("TOTAL") && err.contains("membership"), "{err}");
    let p = Params::defaults(TOTAL.params).unwrap();
    assert_eq!((TOTAL.max_header_len)(&p), 144, "15 + 1 + 32 runs of 4 bytes");
}

#[test]
fn random_bytes_never_panic() {
    fn prop(bytes: Vec<u8>, sender: u8, at_sequencer: bool, cast: bool) -> TestResult {
        let local = if at_sequencer { A } else { B };
        let mut h = harness_with(local, &[("batch_msgs", 4)]);
        let who = [A, B, C, 9][sender as usize % 4];
        let msg = Msg::new(Bytes::from(bytes.clone()));
        let out = if cast { h.up(Up::Cast { from: m(who), msg: msg.clone() }) } else { h.up(Up::Send { from: m(who), msg: msg.clone() }) };
        // Twice, then a timer and a view change: whatever was kept is flushed.
        h.up(Up::Cast { from: m(who), msg });
        h.advance(Instant::from_millis(5));
        h.up(Up::View(view(1, &[B, A])));
        let s = h.stats();
        // At most one delivery, and only of something that said it was data.
        let n = delivered(&out).len() + usize::from(matches!(out.as_slice(), [Out::Up(Up::Send { .. })]));
        let data_kind = bytes.first().is_some_and(|k| [kind::UNORDERED, kind::PLAIN, kind::SEQUENCED].contains(k));
        TestResult::from_bool(n <= 1 && (n == 0 || data_kind) && s.get("pending") == Some(0) && s.get("queued_runs") == Some(0))
    }
    QuickCheck::new().tests(3000).quickcheck(prop as fn(Vec<u8>, u8, bool, bool) -> TestResult);
}
