//! TOKEN's unit tests: exact outputs through `LayerHarness` for stamping,
//! wanting, passing, parking, bursts, delivery order, view changes, stale
//! and hostile input. The multi-member model is in `model.rs`.

use super::wire::{kind, Header, Pass};
use super::*;
use bytes::Bytes;
use quickcheck::{QuickCheck, TestResult};
use strata_stack::codec::Writer;
use strata_stack::harness::{LayerHarness, Out};
use strata_stack::{ParamValue, ViewId};

const A: u16 = 0;
const B: u16 = 1;
const C: u16 = 2;

fn m(n: u16) -> MemberId {
    MemberId::sim(n)
}

/// The initial view of members `0..n` (rank = index, tag = [`tag0`]).
fn view(n: u16) -> Arc<View> {
    View::initial((0..n).map(m).collect()).unwrap()
}

fn tag0() -> u32 {
    view_tag(view(1).id())
}

/// View 1 over `members`, in that rank order.
fn view1(members: &[u16]) -> Arc<View> {
    View::new(ViewId { counter: 1, creator: m(members[0]) }, members.iter().map(|&i| m(i)).collect()).unwrap()
}

fn harness_with(at: u16, members: u16, set: &[(&'static str, u64)]) -> LayerHarness {
    let mut p = Params::defaults(TOKEN.params).unwrap();
    for (name, v) in set {
        p.set(name, ParamValue::U64(*v));
    }
    LayerHarness::boxed("TOKEN", (TOKEN.build)(&p).unwrap(), m(at), view(members), 65_000)
}

fn harness(at: u16) -> LayerHarness {
    harness_with(at, 3, &[])
}

fn body(text: &'static str) -> Msg {
    Msg::new(Bytes::from_static(text.as_bytes()))
}

fn ordered(text: &'static str, order: Option<Order>) -> Msg {
    let mut msg = body(text);
    msg.flags_mut().set_order(order);
    msg
}

/// A message as the wire carries it: header `h`, then `payload`.
fn framed(h: Header, payload: &[u8]) -> Msg {
    let mut w = Writer::new();
    h.encode(&mut w);
    w.bytes(payload);
    Msg::new(Bytes::copy_from_slice(w.as_slice()))
}

fn data(seq: u64, text: &str) -> Msg {
    framed(Header::Data { tag: tag0(), seq }, text.as_bytes())
}

fn unordered(text: &str) -> Msg {
    framed(Header::Unordered { tag: tag0() }, text.as_bytes())
}

fn pass(round: u64, to: u64, next: u64, still_wants: bool) -> Msg {
    framed(Header::Pass { tag: tag0(), pass: Pass { round, to, next, still_wants } }, &[])
}

fn want(seen: u64) -> Msg {
    framed(Header::Want { tag: tag0(), seen }, &[])
}

/// `msg` with the order request its sender's cast carried (a local flag
/// that messages compare by).
fn asked(mut msg: Msg, order: Order) -> Msg {
    msg.flags_mut().set_order(Some(order));
    msg
}

fn cast_down(msg: Msg) -> Out {
    Out::Down(Down::Cast(msg))
}

fn delivery(from: u16, text: &'static str) -> Out {
    Out::Up(Up::Cast { from: m(from), msg: body(text) })
}

fn cast_from(from: u16, msg: Msg) -> Up {
    Up::Cast { from: m(from), msg }
}

/// The casts a harness passed down, as they arrive elsewhere (and through the loopback).
fn wire(out: &[Out]) -> Vec<Msg> {
    out.iter()
        .filter_map(|o| match o {
            Out::Down(Down::Cast(msg)) => Some(Msg::new(msg.to_bytes())),
            _ => None,
        })
        .collect()
}

/// Feeds a member's own casts back to it, as the loopback does; returns what that emitted.
fn loop_back(h: &mut LayerHarness, at: u16, out: &[Out]) -> Vec<Out> {
    wire(out).into_iter().flat_map(|msg| h.up(cast_from(at, msg))).collect()
}

#[test]
fn the_coordinator_holds_the_token_and_stamps_at_once() {
    let mut a = harness(A);
    assert!(a.init_output().is_empty());
    let out = a.down(Down::Cast(body("x")));
    assert_eq!(out, vec![cast_down(data(0, "x"))]);
    assert_eq!(wire(&out)[0].len() - "x".len(), 6, "6 header bytes");
    let out = a.down(Down::Cast(body("y")));
    assert_eq!(out, vec![cast_down(data(1, "y"))]);
    assert_eq!(a.stats().get("in_flight"), Some(2));
    // Its casts come back through the loopback and are delivered in order.
    assert_eq!(a.up(cast_from(A, data(0, "x"))), vec![delivery(A, "x")]);
    assert_eq!(a.up(cast_from(A, data(1, "y"))), vec![delivery(A, "y")]);
    assert_eq!((a.stats().get("stamped"), a.stats().get("ordered_delivered"), a.stats().get("in_flight")), (Some(2), Some(2), Some(0)));
    assert_eq!(a.stats().get("tokens_passed"), Some(0), "nobody wants the token: it stays parked");
}

#[test]
fn a_member_without_the_token_queues_wants_once_and_sends_when_the_token_comes() {
    let mut b = harness(B);
    assert_eq!(b.down(Down::Cast(body("b0"))), vec![cast_down(want(0))]);
    assert!(b.down(Down::Cast(body("b1"))).is_empty(), "one WANT per wish");
    assert_eq!((b.stats().get("queued"), b.stats().get("wants_sent")), (Some(2), Some(1)));
    // The coordinator, parked, passes the token as soon as the WANT arrives.
    let mut a = harness(A);
    let out = a.up(cast_from(B, want(0)));
    assert_eq!(out, vec![cast_down(pass(0, 1, 0, false))]);
    assert_eq!(a.stats().get("holding"), Some(0));
    // B gets the pass: it stamps its queue from the pass's next number and keeps the token.
    let out = b.up(cast_from(A, pass(0, 1, 0, false)));
    assert_eq!(out, vec![cast_down(data(0, "b0")), cast_down(data(1, "b1"))]);
    assert_eq!((b.stats().get("holding"), b.stats().get("queued"), b.stats().get("tokens_received")), (Some(1), Some(0), Some(1)));
    // A processes the same pass: its record of B's want is cleared, so a
    // later cast of A makes A ask for the token back.
    assert!(a.up(cast_from(A, pass(0, 1, 0, false))).is_empty());
    assert_eq!(a.down(Down::Cast(body("a0"))), vec![cast_down(want(1))]);
    // B, parked, hands it over at A's WANT, with the number after its casts.
    b.up(cast_from(B, data(0, "b0")));
    b.up(cast_from(B, data(1, "b1")));
    assert_eq!(b.up(cast_from(A, want(1))), vec![cast_down(pass(1, 0, 2, false))]);
}

#[test]
fn stamped_casts_are_delivered_in_sequence_order_and_early_ones_wait() {
    let mut c = harness(C);
    // B's casts (numbered after A's) overtake A's: they wait.
    assert!(c.up(cast_from(B, data(2, "b2"))).is_empty());
    assert!(c.up(cast_from(B, data(3, "b3"))).is_empty());
    assert_eq!(c.stats().get("pending"), Some(2));
    assert_eq!(c.up(cast_from(A, data(0, "a0"))), vec![delivery(A, "a0")]);
    assert_eq!(c.up(cast_from(A, data(1, "a1"))), vec![delivery(A, "a1"), delivery(B, "b2"), delivery(B, "b3")]);
    assert_eq!((c.stats().get("pending"), c.stats().get("pending_max"), c.stats().get("ordered_delivered")), (Some(0), Some(2), Some(4)));
}

#[test]
fn passes_are_processed_in_round_order_even_when_one_overtakes_another() {
    let mut c = harness(C);
    c.down(Down::Cast(body("c0")));
    // Round 1 (B to C) arrives before round 0 (A to B): it waits.
    assert!(c.up(cast_from(B, data(1, "b1"))).is_empty());
    assert!(c.up(cast_from(B, pass(1, 2, 2, false))).is_empty());
    assert_eq!(c.stats().get("round"), Some(0));
    assert_eq!(c.up(cast_from(A, data(0, "a0"))), vec![delivery(A, "a0"), delivery(B, "b1")]);
    // Round 0 makes round 1 valid: C holds the token and stamps from 2.
    assert_eq!(c.up(cast_from(A, pass(0, 1, 1, false))), vec![cast_down(data(2, "c0"))]);
    assert_eq!((c.stats().get("round"), c.stats().get("holding")), (Some(2), Some(1)));
}

#[test]
fn a_holder_sends_at_most_max_burst_then_passes_and_gets_the_token_back_in_turn() {
    let set = [("max_burst", 2)];
    let mut b = harness_with(B, 3, &set);
    for t in ["b0", "b1", "b2", "b3", "b4"] {
        b.down(Down::Cast(body(t)));
    }
    b.up(cast_from(C, want(0)));
    // B gets the token while C wants it: two casts, then a pass marked "still wanting".
    let out = b.up(cast_from(A, pass(0, 1, 0, false)));
    assert_eq!(out, vec![cast_down(data(0, "b0")), cast_down(data(1, "b1")), cast_down(pass(1, 2, 2, true))]);
    assert_eq!((b.stats().get("queued"), b.stats().get("wants_sent")), (Some(3), Some(1)), "the pass carries the wish: no WANT");
    loop_back(&mut b, B, &out);
    // C gets B's casts and pass before A's pass (round 0): the pass waits for
    // it. Then C sends its cast and, remembering B's wish, passes the token back.
    let mut c = harness_with(C, 3, &set);
    c.down(Down::Cast(body("c0")));
    let from_b: Vec<Out> = wire(&out).into_iter().flat_map(|msg| c.up(cast_from(B, msg))).collect();
    assert_eq!(from_b, vec![delivery(B, "b0"), delivery(B, "b1")]);
    let out = c.up(cast_from(A, pass(0, 1, 0, false)));
    assert_eq!(out, vec![cast_down(data(2, "c0")), cast_down(pass(2, 1, 3, false))]);
    // B, with nobody else wanting, stamps past its burst and parks.
    b.up(cast_from(C, data(2, "c0")));
    let out = b.up(cast_from(C, pass(2, 1, 3, false)));
    assert_eq!(out, vec![cast_down(data(3, "b2")), cast_down(data(4, "b3")), cast_down(data(5, "b4"))]);
    assert_eq!((b.stats().get("holding"), b.stats().get("queued")), (Some(1), Some(0)));
}

#[test]
fn the_holder_passes_to_the_next_wanting_member_in_cyclic_rank_order() {
    // Four members; B (rank 1) gets the token with nothing to send. A (rank
    // 0) and rank 3 want it: rank 3 comes first after B; alone, A does.
    let mut b = harness_with(B, 4, &[]);
    b.up(cast_from(A, want(0)));
    b.up(Up::Cast { from: m(3), msg: want(0) });
    assert_eq!(b.up(cast_from(A, pass(0, 1, 0, false))), vec![cast_down(pass(1, 3, 0, false))], "rank 3 follows rank 1");
    let mut b = harness_with(B, 4, &[]);
    b.up(cast_from(A, want(0)));
    assert_eq!(b.up(cast_from(A, pass(0, 1, 0, false))), vec![cast_down(pass(1, 0, 0, false))], "wrapping around to rank 0");
}

#[test]
fn a_want_that_arrives_after_the_pass_that_answered_it_is_ignored() {
    // C asked with seen 0; A's pass to C (round 0) answers it. B sees the pass first.
    let mut b = harness(B);
    b.up(cast_from(A, pass(0, 2, 0, false)));
    b.up(cast_from(C, want(0)));
    // C passes the token to B's want later: B gets it, parks, and does not
    // think C still wants it.
    b.down(Down::Cast(body("b0")));
    let out = b.up(cast_from(C, pass(1, 1, 0, false)));
    assert_eq!(out, vec![cast_down(data(0, "b0"))], "C's old WANT is answered: no pass back");
    // A WANT made after the pass (seen 1) is a new wish.
    assert_eq!(b.up(cast_from(C, want(2))), vec![cast_down(pass(2, 2, 1, false))]);
}

#[test]
fn fifo_casts_go_unordered_behind_their_senders_earlier_casts() {
    let mut b = harness(B);
    // At the head of the queue a FIFO cast goes at once, without the token.
    assert_eq!(b.down(Down::Cast(ordered("u0", Some(Order::Fifo)))), vec![cast_down(asked(unordered("u0"), Order::Fifo))]);
    // Behind an ordered cast it waits for it.
    assert_eq!(b.down(Down::Cast(ordered("o1", Some(Order::Total)))), vec![cast_down(want(0))]);
    assert!(b.down(Down::Cast(ordered("u2", Some(Order::Fifo)))).is_empty());
    assert!(b.down(Down::Cast(ordered("o3", Some(Order::Causal)))).is_empty());
    let out = b.up(cast_from(A, pass(0, 1, 0, false)));
    assert_eq!(
        out,
        vec![cast_down(asked(data(0, "o1"), Order::Total)), cast_down(asked(unordered("u2"), Order::Fifo)), cast_down(asked(data(1, "o3"), Order::Causal))]
    );
    // A receiver delivers an unordered cast once its sender's earlier stamped casts are.
    let mut c = harness(C);
    assert!(c.up(cast_from(B, data(1, "b1"))).is_empty());
    assert!(c.up(cast_from(B, unordered("u"))).is_empty(), "waits for b1");
    assert_eq!(c.up(cast_from(A, unordered("from A"))), vec![delivery(A, "from A")], "A has nothing undelivered");
    assert_eq!(c.up(cast_from(A, data(0, "a0"))), vec![delivery(A, "a0"), delivery(B, "b1"), delivery(B, "u")]);
    assert_eq!((c.stats().get("ordered_delivered"), c.stats().get("unordered_delivered")), (Some(2), Some(2)));
}

#[test]
fn sends_and_out_of_band_casts_pass_at_once_with_one_byte() {
    let mut b = harness(B);
    b.up(Up::Block);
    let out = b.down(Down::Send { to: m(C), msg: body("p2p") });
    assert_eq!(out, vec![Out::Down(Down::Send { to: m(C), msg: framed(Header::Send, b"p2p") })]);
    let mut oob = body("hb");
    oob.flags_mut().insert(MsgFlags::OOB);
    let out = b.down(Down::Cast(oob));
    let [Out::Down(Down::Cast(sent))] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(sent.head(), &[kind::OOB]);
    let stranger = MemberId::sim(40);
    assert_eq!(b.up(Up::Cast { from: stranger, msg: framed(Header::Oob, b"join") }), vec![Out::Up(Up::Cast { from: stranger, msg: body("join") })]);
    assert_eq!(b.up(Up::Send { from: m(A), msg: framed(Header::Send, b"p2p") }), vec![Out::Up(Up::Send { from: m(A), msg: body("p2p") })]);
    assert_eq!(b.stats().get("other_delivered"), Some(2));
}

#[test]
fn a_flush_waits_behind_the_casts_before_it() {
    let mut b = harness(B);
    assert_eq!(b.down(Down::Flush { token: 1 }), vec![Out::Down(Down::Flush { token: 1 })], "nothing queued: at once");
    b.down(Down::Cast(body("b0")));
    assert!(b.down(Down::Flush { token: 2 }).is_empty());
    let out = b.up(cast_from(A, pass(0, 1, 0, false)));
    assert_eq!(out, vec![cast_down(data(0, "b0")), Out::Down(Down::Flush { token: 2 })]);
}

#[test]
fn the_send_window_closes_at_max_queued_and_reopens_at_half() {
    let mut b = harness_with(B, 3, &[("max_queued", 4)]);
    for _ in 0..3 {
        b.down(Down::Cast(body("q")));
        assert!(!b.backpressure());
    }
    b.down(Down::Cast(body("q")));
    assert!(b.backpressure());
    // B gets the token but C wants it: a burst of 1 leaves 3 (still closed).
    let mut b2 = harness_with(B, 3, &[("max_queued", 4), ("max_burst", 1)]);
    for _ in 0..4 {
        b2.down(Down::Cast(body("q")));
    }
    b2.up(cast_from(C, want(0)));
    b2.up(cast_from(A, pass(0, 1, 0, false)));
    assert_eq!(b2.stats().get("queued"), Some(3));
    assert!(b2.backpressure(), "3 > 4 / 2");
    // The whole queue goes: open.
    b.up(cast_from(A, pass(0, 1, 0, false)));
    assert!(!b.backpressure());
    assert_eq!((b.stats().get("queued"), b.stats().get("queued_max"), b.stats().get("backpressure")), (Some(0), Some(4), Some(0)));
}

#[test]
fn after_block_nothing_is_stamped_or_passed_until_the_next_view() {
    let mut a = harness(A);
    assert_eq!(a.up(Up::Block), vec![Out::Up(Up::Block)]);
    assert!(a.down(Down::Cast(body("late"))).is_empty(), "the holder keeps it for the next view");
    assert!(a.up(cast_from(B, want(0))).is_empty(), "no pass while blocked");
    assert!(a.down(Down::Cast(body("later"))).is_empty());
    // Old-view deliveries still go up in order.
    assert_eq!(a.up(cast_from(B, data(0, "old"))), vec![delivery(B, "old")]);
    // A stays coordinator of the next view: token, sequence 0, new tag.
    let v1 = view1(&[A, B, C]);
    let tag1 = view_tag(v1.id());
    assert_eq!(a.up(Up::View(v1.clone())), vec![Out::Up(Up::View(v1))]);
    // It sends once the input that brought the view is over (a state load
    // could follow the view).
    assert_eq!(a.next_timer(), Some(a.now()));
    assert_eq!(
        a.advance(a.now()),
        vec![cast_down(framed(Header::Data { tag: tag1, seq: 0 }, b"late")), cast_down(framed(Header::Data { tag: tag1, seq: 1 }, b"later"))]
    );
}

#[test]
fn a_view_change_delivers_the_leftovers_in_order_skipping_holes_then_resets() {
    let mut c = harness(C);
    c.down(Down::Cast(body("c0")));
    // Seq 0 and 2 of a crashed holder never came; 1 and 3 did.
    c.up(cast_from(B, data(1, "b1")));
    c.up(cast_from(A, data(3, "a3")));
    c.up(cast_from(A, unordered("a-u")));
    c.up(Up::Block);
    // The new view: C is now coordinator and holds the token.
    let v1 = view1(&[C, B]);
    let tag1 = view_tag(v1.id());
    let out = c.up(Up::View(v1.clone()));
    assert_eq!(out, vec![delivery(B, "b1"), delivery(A, "a3"), delivery(A, "a-u"), Out::Up(Up::View(v1))]);
    assert_eq!(c.advance(c.now()), vec![cast_down(framed(Header::Data { tag: tag1, seq: 0 }, b"c0"))]);
    assert_eq!((c.stats().get("leftovers_delivered"), c.stats().get("pending"), c.stats().get("round")), (Some(3), Some(0), Some(0)));
    // A non-coordinator of the new view with casts queued asks at once.
    let mut b = harness(B);
    b.down(Down::Cast(body("b0")));
    b.up(Up::View(view1(&[C, B])));
    assert_eq!(b.advance(b.now()), vec![cast_down(framed(Header::Want { tag: tag1, seen: 0 }, &[]))]);
}

#[test]
fn a_state_request_and_a_leave_get_the_leftovers_first() {
    let mut a = harness(A);
    a.up(cast_from(B, data(1, "b1")));
    a.up(Up::Block);
    let out = a.up(Up::StateRequest { token: 4, joiners: vec![m(9)] });
    assert_eq!(out, vec![delivery(B, "b1"), Out::Up(Up::StateRequest { token: 4, joiners: vec![m(9)] })]);
    let v1 = view1(&[A, B, C]);
    assert_eq!(a.up(Up::View(v1.clone())), vec![Out::Up(Up::View(v1))]);
    assert!(a.advance(a.now()).is_empty());
    // A member that leaves delivers them before it goes, as the survivors do at their next view.
    let mut b = harness(B);
    b.up(cast_from(A, data(1, "a1")));
    b.up(Up::Block);
    assert_eq!(b.up(Up::Left), vec![delivery(A, "a1"), Out::Up(Up::Left)]);
}

#[test]
fn own_casts_caught_by_a_view_change_are_sent_again_and_their_old_copies_ignored() {
    let mut a = harness(A);
    // x comes back in view 0; y and u were held by VSYNC (A had not seen Block yet).
    let out: Vec<Out> = [body("x"), body("y"), ordered("u", Some(Order::Fifo))].into_iter().flat_map(|msg| a.down(Down::Cast(msg))).collect();
    let sent = wire(&out);
    assert_eq!(a.up(cast_from(A, sent[0].clone())), vec![delivery(A, "x")]);
    a.up(Up::Block);
    a.down(Down::Cast(body("z")));
    let v1 = view1(&[B, A]);
    let tag1 = view_tag(v1.id());
    // A is rank 1 now: y, u and z wait for the token, in that order (u
    // behind y, which needs the token).
    assert_eq!(a.up(Up::View(v1.clone())), vec![Out::Up(Up::View(v1))]);
    assert_eq!(a.advance(a.now()), vec![cast_down(framed(Header::Want { tag: tag1, seen: 0 }, &[]))]);
    assert_eq!((a.stats().get("requeued"), a.stats().get("queued")), (Some(2), Some(3)));
    // VSYNC now sends the old copies in view 1: nobody delivers them, A included.
    for msg in &sent[1..] {
        assert!(a.up(cast_from(A, msg.clone())).is_empty());
    }
    assert_eq!(a.stats().get("stale"), Some(2));
    let out = a.up(cast_from(B, framed(Header::Pass { tag: tag1, pass: Pass { round: 0, to: 1, next: 0, still_wants: false } }, &[])));
    assert_eq!(
        out,
        vec![
            cast_down(framed(Header::Data { tag: tag1, seq: 0 }, b"y")),
            cast_down(asked(framed(Header::Unordered { tag: tag1 }, b"u"), Order::Fifo)),
            cast_down(framed(Header::Data { tag: tag1, seq: 1 }, b"z"))
        ]
    );
}

#[test]
fn a_member_loading_the_state_sends_nothing_until_it_is_loaded() {
    // B, with casts queued, becomes coordinator of view 1 while it loads the
    // group's state: VSYNC holds the view's deliveries back, its own casts
    // included, so it must not send.
    let mut b = harness(B);
    b.down(Down::Cast(body("b0")));
    b.up(Up::View(view1(&[B, C])));
    assert_eq!(b.up(Up::StateBegin), vec![Out::Up(Up::StateBegin)]);
    assert!(b.advance(b.now()).is_empty());
    assert!(b.down(Down::Cast(body("b1"))).is_empty());
    assert_eq!(b.stats().get("in_flight"), Some(0));
    // The view changes before the state is loaded: VSYNC drops view 1's
    // deliveries; nothing of B's was in them.
    let v2 = View::new(ViewId { counter: 2, creator: m(B) }, vec![m(B), m(C)]).unwrap();
    let tag2 = view_tag(v2.id());
    b.up(Up::View(v2));
    b.up(Up::StateBegin);
    assert!(b.advance(b.now()).is_empty());
    // Loaded: the view's held deliveries follow (none here), then B sends.
    assert_eq!(b.up(Up::StateDone), vec![Out::Up(Up::StateDone)]);
    assert_eq!(
        b.advance(b.now()),
        vec![cast_down(framed(Header::Data { tag: tag2, seq: 0 }, b"b0")), cast_down(framed(Header::Data { tag: tag2, seq: 1 }, b"b1"))]
    );
    assert_eq!(b.stats().get("requeued"), Some(0));
}

#[test]
fn traffic_of_another_view_is_ignored_and_counted_stale() {
    let mut b = harness(B);
    let other = view_tag(view1(&[A, B, C]).id());
    let stale = [
        framed(Header::Data { tag: other, seq: 0 }, b"old"),
        framed(Header::Unordered { tag: other }, b"old"),
        framed(Header::Pass { tag: other, pass: Pass { round: 0, to: 1, next: 0, still_wants: false } }, &[]),
        framed(Header::Want { tag: other, seen: 0 }, &[]),
    ];
    for msg in stale {
        assert!(b.up(cast_from(A, msg)).is_empty());
    }
    assert_eq!((b.stats().get("stale"), b.stats().get("holding"), b.stats().get("round")), (Some(4), Some(0), Some(0)));
    assert!(b.drops().is_empty(), "stale is not malformed: {:?}", b.drops());
}

#[test]
fn hostile_input_is_dropped_and_counted() {
    let t = tag0();
    let raw = |bytes: Vec<u8>| Msg::new(Bytes::from(bytes));
    let cases: Vec<(u16, Msg, &str)> = vec![
        (A, raw(vec![]), "empty"),
        (A, raw(vec![99]), "unknown_kind"),
        (A, raw(vec![kind::DATA, 1, 2]), "truncated"),
        (A, raw(vec![kind::DATA, 0, 0, 0, 0, 0xff]), "truncated"),
        (A, raw([&[kind::WANT][..], &t.to_be_bytes(), &[0xff; 11]].concat()), "varint_overflow"),
        (A, pass(0, 3, 0, false), "rank_outside_view"),
        (A, framed(Header::Pass { tag: t, pass: Pass { round: 0, to: 1, next: 0, still_wants: false } }, b"x"), "trailing_bytes"),
        (A, framed(Header::Want { tag: t, seen: 0 }, b"x"), "trailing_bytes"),
        (9, data(0, "x"), "not_member"),
        (A, framed(Header::Send, b"x"), "send_in_cast"),
        (A, data(10_000, "far"), "seq_beyond_window"),
        (A, data(u64::MAX, "far"), "seq_beyond_window"),
        (A, pass(10_000, 1, 0, false), "round_beyond_window"),
        (A, want(u64::MAX), "want_beyond_window"),
        (B, pass(0, 1, 0, false), "pass_not_from_holder"),
        (A, pass(0, 0, 0, false), "pass_to_self"),
        (A, pass(0, 1, 1, false), "pass_bad_next"),
        (A, pass(0, 1, u64::MAX, false), "pass_bad_next"),
    ];
    for (from, msg, reason) in cases {
        let mut c = harness(C);
        let before = format!("{msg:?}");
        let out = c.up(Up::Cast { from: m(from), msg });
        assert!(out.is_empty(), "{before} emitted {out:?}");
        assert_eq!(c.dropped(reason), 1, "{before} should be dropped as {reason}; drops: {:?}", c.drops());
        assert_eq!(c.stats().get("round"), Some(0));
    }
    // Replays of what was delivered or processed.
    let mut c = harness(C);
    c.up(cast_from(A, data(0, "a0")));
    c.up(cast_from(A, data(2, "a2")));
    assert!(c.up(cast_from(A, data(0, "again"))).is_empty());
    assert!(c.up(cast_from(A, data(2, "again"))).is_empty());
    assert_eq!((c.dropped("seq_delivered"), c.dropped("seq_duplicate")), (1, 1));
    c.up(cast_from(A, data(1, "a1")));
    c.up(cast_from(A, pass(0, 1, 3, false)));
    assert!(c.up(cast_from(A, pass(0, 1, 3, false))).is_empty());
    assert_eq!(c.dropped("old_round"), 1);
    c.up(cast_from(C, pass(2, 0, 3, false)));
    assert!(c.up(cast_from(C, pass(2, 0, 3, false))).is_empty());
    assert_eq!(c.dropped("round_duplicate"), 1);
    // Point-to-point with another kind, and ordered traffic outside the view.
    let mut c = harness(C);
    assert!(c.up(Up::Send { from: m(A), msg: data(0, "x") }).is_empty());
    assert_eq!(c.dropped("cast_in_send"), 1);
    c.up(Up::View(view1(&[A, B])));
    assert!(c.up(cast_from(A, framed(Header::Data { tag: view_tag(view1(&[A, B]).id()), seq: 0 }, b"x"))).is_empty());
    assert_eq!(c.dropped("not_in_view"), 1);
    assert!(c.down(Down::Cast(body("kept"))).is_empty(), "outside the view a cast waits");
    assert_eq!(c.stats().get("queued"), Some(1));
}

#[test]
fn a_refused_pass_leaves_its_round_open_for_the_real_one() {
    let mut c = harness(C);
    c.down(Down::Cast(body("c0")));
    // A forged round 0 from B (not the holder) is refused...
    assert!(c.up(cast_from(B, pass(0, 2, 0, false))).is_empty());
    assert_eq!(c.dropped("pass_not_from_holder"), 1);
    // ...and A's real one still counts.
    assert_eq!(c.up(cast_from(A, pass(0, 2, 0, false))), vec![cast_down(data(0, "c0"))]);
}

#[test]
fn unordered_casts_waiting_are_bounded() {
    let mut c = harness_with(C, 3, &[("max_pending", 2)]);
    c.up(cast_from(B, data(1, "b1")));
    c.up(cast_from(B, unordered("u0")));
    c.up(cast_from(B, unordered("u1")));
    assert!(c.up(cast_from(B, unordered("u2"))).is_empty());
    assert_eq!(c.dropped("unordered_beyond_window"), 1);
    assert_eq!(c.stats().get("pending"), Some(3));
}

#[test]
fn random_bytes_never_panic_and_deliver_only_what_a_header_allows() {
    fn prop(bytes: Vec<u8>, from: u8, send: bool, prefix: bool) -> TestResult {
        let mut h = harness(C);
        // Sometimes put a valid-looking kind and tag in front, to get past the first checks.
        let mut bytes = bytes;
        if prefix && !bytes.is_empty() {
            let k = bytes[0] % 8;
            bytes.splice(0..1, [&[k][..], &tag0().to_be_bytes()].concat());
        }
        let msg = Msg::new(Bytes::from(bytes.clone()));
        let from = m(u16::from(from % 5));
        let out = if send { h.up(Up::Send { from, msg }) } else { h.up(Up::Cast { from, msg }) };
        let delivered = out.iter().filter(|o| matches!(o, Out::Up(Up::Cast { .. } | Up::Send { .. }))).count();
        let k = bytes.first().copied().unwrap_or(0);
        let allowed = [kind::DATA, kind::UNORDERED, kind::SEND, kind::OOB].contains(&k);
        TestResult::from_bool(delivered <= 1 && (delivered == 0 || allowed) && h.stats().get("pending").unwrap() <= 1)
    }
    QuickCheck::new().tests(3000).quickcheck(prop as fn(Vec<u8>, u8, bool, bool) -> TestResult);
}

#[test]
fn the_descriptor_declares_what_the_layer_needs_and_gives() {
    assert_eq!(TOKEN.name, "TOKEN");
    assert!(TOKEN.requires.contains(Props::RELIABLE.union(Props::FIFO).union(Props::MEMBERSHIP)));
    assert_eq!(TOKEN.provides, Props::TOTAL.union(Props::FIFO));
    let p = Params::defaults(TOKEN.params).unwrap();
    assert_eq!((TOKEN.max_header_len)(&p), 15);
    assert_eq!((p.u64("max_burst"), p.u64("max_queued"), p.u64("max_pending")), (64, 4096, 10_000));
}
