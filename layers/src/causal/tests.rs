//! Harness tests of CAUSAL at one member (exact output for each rule), a
//! model of several members exchanging casts in random order (causal order
//! and completeness), hostile input, and whole stacks over a small
//! simulated network in the three places CAUSAL can sit.

use super::wire::kind;
use super::*;
use bytes::Bytes;
use hashbrown::HashMap;
use quickcheck::{QuickCheck, TestResult};
use strata_stack::harness::{LayerHarness, Out};
use strata_stack::{ParamValue, Rng, ViewId};

const A: u16 = 0;
const B: u16 = 1;
const C: u16 = 2;
const D: u16 = 3;

fn m(n: u16) -> MemberId {
    MemberId::sim(n)
}

fn view(n: u16) -> Arc<View> {
    View::initial((0..n).map(m).collect()).unwrap()
}

/// A later view with the given members (in this rank order).
fn next_view(counter: u64, members: &[u16]) -> Arc<View> {
    View::new(ViewId { counter, creator: m(members[0]) }, members.iter().map(|&i| m(i)).collect()).unwrap()
}

fn harness_with(at: u16, members: u16, set: &[(&'static str, u64)]) -> LayerHarness {
    let mut p = Params::defaults(CAUSAL.params).unwrap();
    for (name, v) in set {
        p.set(name, ParamValue::U64(*v));
    }
    LayerHarness::boxed("CAUSAL", (CAUSAL.build)(&p).unwrap(), m(at), view(members), 65_000)
}

fn harness(at: u16, members: u16) -> LayerHarness {
    harness_with(at, members, &[])
}

fn body(text: &'static str) -> Msg {
    Msg::new(Bytes::from_static(text.as_bytes()))
}

fn oob(mut msg: Msg) -> Msg {
    msg.flags_mut().insert(MsgFlags::OOB);
    msg
}

/// A message as it arrives from the network: `header` then `text`.
fn wire(header: &[u8], text: &'static str) -> Msg {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(text.as_bytes());
    Msg::new(Bytes::from(bytes))
}

/// Casts `text` at `h` (asking for `order`); returns the header it carried
/// and the message as the others receive it.
fn cast_ordered(h: &mut LayerHarness, text: &'static str, order: Option<Order>) -> (Vec<u8>, Msg) {
    let mut msg = body(text);
    msg.flags_mut().set_order(order);
    let out = h.down(Down::Cast(msg));
    let [Out::Down(Down::Cast(sent))] = out.as_slice() else { panic!("one cast passed down, got {out:?}") };
    assert_eq!(sent.body().as_ref(), text.as_bytes(), "the payload is untouched");
    (sent.head().to_vec(), Msg::new(sent.to_bytes()))
}

fn cast(h: &mut LayerHarness, text: &'static str) -> (Vec<u8>, Msg) {
    cast_ordered(h, text, None)
}

fn arrive(h: &mut LayerHarness, from: u16, msg: &Msg) -> Vec<Out> {
    h.up(Up::Cast { from: m(from), msg: msg.clone() })
}

/// The casts in `out`, as (sender, payload).
fn delivered(out: &[Out]) -> Vec<(MemberId, String)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Up(Up::Cast { from, msg }) => Some((*from, String::from_utf8_lossy(&msg.clone().into_body()).into_owned())),
            _ => None,
        })
        .collect()
}

fn ups(list: &[(u16, &'static str)]) -> Vec<Out> {
    list.iter().map(|&(from, text)| Out::Up(Up::Cast { from: m(from), msg: body(text) })).collect()
}

fn stat(h: &LayerHarness, name: &str) -> u64 {
    h.stats().get(name).unwrap_or_else(|| panic!("no stat {name}"))
}

#[test]
fn the_descriptor_declares_what_it_needs_and_gives() {
    assert_eq!(CAUSAL.requires, Props::RELIABLE.union(Props::FIFO));
    assert_eq!(CAUSAL.provides, Props::CAUSAL.union(Props::FIFO));
    let p = Params::defaults(CAUSAL.params).unwrap();
    assert_eq!((CAUSAL.max_header_len)(&p), 1 + 32 + 255 * 10);
    assert_eq!(header_bound(1), 2);
}

#[test]
fn an_own_cast_comes_back_and_is_delivered_at_once() {
    let (mut a, mut b) = (harness(A, 3), harness(B, 3));
    let (head, b1) = cast(&mut b, "b1");
    assert_eq!(head, vec![kind::SAME]);
    assert_eq!(arrive(&mut a, B, &b1), ups(&[(B, "b1")]));
    // A's cast depends on b1, which A delivered: it does not wait at A.
    let (head, a1) = cast(&mut a, "a1");
    assert_eq!(head, vec![kind::MAP, 0b010, 0]);
    assert_eq!(arrive(&mut a, A, &a1), ups(&[(A, "a1")]));
    assert_eq!((stat(&a, "delayed"), stat(&a, "held"), stat(&a, "delivered")), (0, 0, 2));
}

#[test]
fn a_cast_that_arrives_before_its_dependency_waits_and_follows_it() {
    let (mut a, mut b, mut c) = (harness(A, 3), harness(B, 3), harness(C, 3));
    let (_, a1) = cast(&mut a, "a1");
    arrive(&mut b, A, &a1);
    let (head, b1) = cast(&mut b, "b1");
    assert_eq!(head, vec![kind::MAP, 0b001, 0], "b1 depends on A's first cast");
    assert_eq!(arrive(&mut c, B, &b1), vec![]);
    assert_eq!((stat(&c, "held"), stat(&c, "delayed")), (1, 1));
    assert_eq!(arrive(&mut c, A, &a1), ups(&[(A, "a1"), (B, "b1")]));
    assert_eq!((stat(&c, "held"), stat(&c, "held_max"), stat(&c, "delivered")), (0, 1, 2));
}

#[test]
fn a_chain_across_three_senders_is_delivered_in_order_wherever_it_starts() {
    let mut hs: Vec<LayerHarness> = (0..4).map(|i| harness(i, 4)).collect();
    let (_, a1) = cast(&mut hs[A as usize], "a1");
    // C delivers a1 and casts c0; B delivers a1 and casts b1; C delivers b1
    // and casts c1, whose header carries B's entry only: A's is unchanged
    // since c0, and was checked when c0 was delivered.
    arrive(&mut hs[C as usize], A, &a1);
    let (_, c0) = cast(&mut hs[C as usize], "c0");
    arrive(&mut hs[B as usize], A, &a1);
    let (_, b1) = cast(&mut hs[B as usize], "b1");
    arrive(&mut hs[C as usize], B, &b1);
    let (head, c1) = cast(&mut hs[C as usize], "c1");
    assert_eq!(head, vec![kind::MAP, 0b0010, 0]);
    // D gets the chain backwards (each sender's casts still in order, as
    // NAK delivers them).
    let d = &mut hs[D as usize];
    assert_eq!(arrive(d, C, &c0), vec![]);
    assert_eq!(arrive(d, C, &c1), vec![]);
    assert_eq!(arrive(d, B, &b1), vec![]);
    assert_eq!(stat(d, "held"), 3);
    assert_eq!(arrive(d, A, &a1), ups(&[(A, "a1"), (B, "b1"), (C, "c0"), (C, "c1")]));
    assert_eq!(stat(d, "held"), 0);
    // Another D gets c0 and a1 first: c0 goes, c1 then waits for b1 only.
    let mut d = harness(D, 4);
    assert_eq!(arrive(&mut d, C, &c0), vec![]);
    assert_eq!(arrive(&mut d, A, &a1), ups(&[(A, "a1"), (C, "c0")]));
    assert_eq!(arrive(&mut d, C, &c1), vec![]);
    assert_eq!(arrive(&mut d, B, &b1), ups(&[(B, "b1"), (C, "c1")]));
}

#[test]
fn fifo_casts_skip_dependencies_but_keep_their_senders_order_and_count() {
    let mut hs: Vec<LayerHarness> = (0..4).map(|i| harness(i, 4)).collect();
    let (_, a1) = cast(&mut hs[A as usize], "a1");
    let b = &mut hs[B as usize];
    arrive(b, A, &a1);
    let (head, f1) = cast_ordered(b, "f1", Some(Order::Fifo));
    assert_eq!(head, vec![kind::FIFO]);
    let (head, b2) = cast_ordered(b, "b2", Some(Order::Causal));
    assert_eq!(head, vec![kind::MAP, 0b0001, 0], "the FIFO cast did not take A's entry with it");
    let (_, f3) = cast_ordered(b, "f3", Some(Order::Fifo));
    assert_eq!((stat(b, "fifo_casts"), stat(b, "sent"), stat(b, "header_bytes")), (2, 3, 5));
    // D delivers f1 and casts d1, which depends on it.
    let d = &mut hs[D as usize];
    arrive(d, B, &f1);
    let (head, d1) = cast(d, "d1");
    assert_eq!(head, vec![kind::MAP, 0b0010, 0]);

    let c = &mut hs[C as usize];
    assert_eq!(arrive(c, D, &d1), vec![], "d1 waits for f1");
    assert_eq!(arrive(c, B, &f1), ups(&[(B, "f1"), (D, "d1")]), "f1 does not wait for a1, which B delivered before it");
    assert_eq!(arrive(c, B, &b2), vec![]);
    assert_eq!(arrive(c, B, &f3), vec![], "f3 waits behind b2: FIFO per sender");
    assert_eq!(arrive(c, A, &a1), ups(&[(A, "a1"), (B, "b2"), (B, "f3")]));
}

#[test]
fn headers_carry_only_the_entries_that_changed() {
    let mut a = harness(A, 3);
    let from = |h: &mut LayerHarness, sender: u16, text: &'static str| assert_eq!(delivered(&arrive(h, sender, &wire(&[kind::SAME], text))).len(), 1);
    assert_eq!(cast(&mut a, "a1").0, vec![kind::SAME]);
    from(&mut a, B, "b1");
    from(&mut a, C, "c1");
    assert_eq!(cast(&mut a, "a2").0, vec![kind::MAP_ONE, 0b110, 0], "both grew by one");
    from(&mut a, B, "b2");
    assert_eq!(cast(&mut a, "a3").0, vec![kind::MAP, 0b010, 0]);
    assert_eq!(cast(&mut a, "a4").0, vec![kind::SAME], "nothing new since a3");
    for _ in 0..200 {
        from(&mut a, C, "c");
    }
    assert_eq!(cast(&mut a, "a5").0, vec![kind::MAP, 0b100, 0xc7, 0x01], "C's entry grew by 200");
    assert_eq!((stat(&a, "sent"), stat(&a, "header_bytes")), (5, 1 + 3 + 3 + 1 + 4));

    // In a view of 20 a few changes travel as a list: rank, then gaps.
    let mut a = harness(A, 20);
    for _ in 0..3 {
        from(&mut a, 17, "x");
    }
    assert_eq!(cast(&mut a, "a1").0, vec![kind::LIST, 1, 17, 2]);
    from(&mut a, 5, "y");
    from(&mut a, 9, "z");
    assert_eq!(cast(&mut a, "a2").0, vec![kind::LIST_ONE, 2, 5, 3, 0]);
    from(&mut a, 5, "y");
    from(&mut a, 9, "z");
    from(&mut a, 9, "z");
    assert_eq!(cast(&mut a, "a3").0, vec![kind::LIST_PACKED, 2, 5, 3, 0b0100], "grew by 1 and 2: two bits each");
}

#[test]
fn a_view_change_from_above_discards_what_waits_and_starts_from_zero() {
    let (mut a, mut b, mut c) = (harness(A, 3), harness(B, 3), harness(C, 3));
    let (_, a1) = cast(&mut a, "a1");
    arrive(&mut b, A, &a1);
    let (_, b1) = cast(&mut b, "b1");
    assert_eq!(arrive(&mut c, B, &b1), vec![]);
    // VSYNC above installs a view without A.
    let w = next_view(1, &[B, C]);
    assert_eq!(c.down(Down::View(w.clone())), vec![Out::Down(Down::View(w.clone()))]);
    assert_eq!((stat(&c, "discarded_at_view"), stat(&c, "held")), (1, 0));
    b.down(Down::View(w.clone()));
    // B delivered a1 in the old view: nothing of it in the new timestamps.
    let (head, b2) = cast(&mut b, "b2");
    assert_eq!(head, vec![kind::SAME]);
    assert_eq!(arrive(&mut c, B, &b2), ups(&[(B, "b2")]));
    assert_eq!(arrive(&mut c, A, &wire(&[kind::SAME], "late")), vec![]);
    assert_eq!(c.dropped("not_member"), 1);
    // The same view again changes nothing.
    let (_, b3) = cast(&mut b, "b3");
    c.down(Down::View(w.clone()));
    assert_eq!(arrive(&mut c, B, &b3), ups(&[(B, "b3")]));
}

#[test]
fn a_view_change_from_below_discards_what_waits_and_starts_from_zero() {
    let (mut a, mut b, mut c) = (harness(A, 3), harness(B, 3), harness(C, 3));
    let (_, a1) = cast(&mut a, "a1");
    arrive(&mut b, A, &a1);
    let (_, b1) = cast(&mut b, "b1");
    arrive(&mut c, B, &b1);
    // VSYNC below delivers a new view with the ranks shuffled.
    let w = next_view(1, &[C, B, A]);
    assert_eq!(c.up(Up::View(w.clone())), vec![Out::Up(Up::View(w.clone()))]);
    assert_eq!(stat(&c, "discarded_at_view"), 1);
    a.up(Up::View(w.clone()));
    let (head, a2) = cast(&mut a, "a2");
    assert_eq!(head, vec![kind::SAME]);
    assert_eq!(arrive(&mut c, A, &a2), ups(&[(A, "a2")]));
    // Ranks follow the new view: C is rank 0, and A's entry is now bit 2.
    let (head, _) = cast(&mut c, "c1");
    assert_eq!(head, vec![kind::MAP, 0b100, 0]);
}

#[test]
fn above_a_membership_layer_casts_made_while_blocked_are_stamped_in_the_next_view() {
    let (mut b, mut c) = (harness(B, 3), harness(C, 3));
    let (_, b1) = cast(&mut b, "b1");
    arrive(&mut c, B, &b1);
    assert_eq!(c.up(Up::Block), vec![Out::Up(Up::Block)]);
    assert_eq!(c.down(Down::Cast(body("later"))), vec![]);
    assert_eq!(c.down(Down::Send { to: m(B), msg: body("p2p") }), vec![], "kept behind the waiting cast");
    let out = c.down(Down::Cast(oob(body("beat"))));
    assert!(matches!(&out[..], [Out::Down(Down::Cast(msg))] if msg.head() == [kind::OOB_CAST]), "out of band passes: {out:?}");
    let w = next_view(1, &[A, B, C]);
    let out = c.up(Up::View(w.clone()));
    let mut later = body("later");
    later.push(&[kind::SAME]);
    let mut p2p = body("p2p");
    p2p.push(&[kind::SEND]);
    assert_eq!(out, vec![Out::Up(Up::View(w)), Out::Down(Down::Cast(later)), Out::Down(Down::Send { to: m(B), msg: p2p })]);
    assert_eq!(c.down(Down::Cast(body("now"))).len(), 1, "unblocked");
}

#[test]
fn casts_still_waiting_for_a_view_when_the_member_leaves_are_counted() {
    let mut c = harness(C, 3);
    c.up(Up::Block);
    assert_eq!(c.down(Down::Cast(body("never"))), vec![]);
    assert_eq!(c.up(Up::Left), vec![Out::Up(Up::Left)]);
    assert_eq!(c.dropped("waiting_at_leave"), 1);
}

#[test]
fn a_departed_senders_cast_recovered_below_releases_what_waits_for_it() {
    let (mut a, mut b, mut c) = (harness(A, 3), harness(B, 3), harness(C, 3));
    // C casts and crashes; only A got c1, and A's a1 depends on it.
    let (_, c1) = cast(&mut c, "c1");
    arrive(&mut a, C, &c1);
    let (_, a1) = cast(&mut a, "a1");
    assert_eq!(arrive(&mut b, A, &a1), vec![]);
    // VSYNC asks NAK for C's casts held by A; CAUSAL passes the request on.
    let recover = Down::Recover { sender: m(C), upto: 1, holder: m(A) };
    assert_eq!(b.down(recover.clone()), vec![Out::Down(recover)]);
    // NAK hands c1 up as C's, header intact.
    assert_eq!(arrive(&mut b, C, &c1), ups(&[(C, "c1"), (A, "a1")]));
}

#[test]
fn sends_and_out_of_band_traffic_pass_at_once_and_do_not_count() {
    let mut a = harness(A, 3);
    let out = a.down(Down::Send { to: m(B), msg: body("p") });
    assert!(matches!(&out[..], [Out::Down(Down::Send { to, msg })] if *to == m(B) && msg.head() == [kind::SEND]));
    let out = a.down(Down::Send { to: m(9), msg: oob(body("j")) });
    assert!(matches!(&out[..], [Out::Down(Down::Send { msg, .. })] if msg.head() == [kind::OOB_SEND]));
    // From anyone, member or not.
    assert_eq!(a.up(Up::Send { from: m(9), msg: wire(&[kind::SEND], "p") }), vec![Out::Up(Up::Send { from: m(9), msg: body("p") })]);
    assert_eq!(a.up(Up::Send { from: m(9), msg: wire(&[kind::OOB_SEND], "j") }), vec![Out::Up(Up::Send { from: m(9), msg: oob(body("j")) })]);
    assert_eq!(arrive(&mut a, 9, &wire(&[kind::OOB_CAST], "beat")), vec![Out::Up(Up::Cast { from: m(9), msg: oob(body("beat")) })]);
    assert_eq!(arrive(&mut a, B, &wire(&[kind::OOB_CAST], "beat")).len(), 1);
    assert_eq!(cast(&mut a, "a1").0, vec![kind::SAME], "out-of-band casts are in no entry");
    assert_eq!((stat(&a, "sent"), stat(&a, "delivered")), (1, 0));
}

#[test]
fn hostile_headers_are_dropped_and_counted_and_change_nothing() {
    let mut a = harness(A, 3);
    let cases: &[(&[u8], &str)] = &[
        (&[], "empty"),
        (&[0x0a], "unknown_kind"),
        (&[0xff], "unknown_kind"),
        (&[kind::SEND], "send_kind_in_cast"),
        (&[kind::LIST, 3, 0, 0, 2, 0, 0, 0], "too_many_entries"),
        (&[kind::LIST, 1, 5, 0], "rank_out_of_view"),
        (&[kind::LIST, 1, 1, 0], "own_entry"),
        (&[kind::LIST, 1, 0], "truncated"),
        (&[kind::LIST, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "varint_overflow"),
        (&[kind::MAP], "truncated"),
        (&[kind::MAP, 0b1000, 0], "rank_out_of_view"),
        (&[kind::MAP_ONE, 0b101], "truncated"),
        (&[kind::LIST_ONE, 2, 0, 5, 0], "rank_out_of_view"),
        (&[kind::LIST_ONE, 2, 0, 0, 0], "own_entry"),
    ];
    for (header, reason) in cases {
        let before = a.dropped(reason);
        assert_eq!(arrive(&mut a, B, &wire(header, "")), vec![], "{header:?}");
        assert_eq!(a.dropped(reason), before + 1, "{header:?} counts as {reason}: {:?}", a.drops());
    }
    assert_eq!(a.up(Up::Send { from: m(B), msg: wire(&[kind::MAP], "") }), vec![]);
    assert_eq!(a.up(Up::Send { from: m(B), msg: wire(&[], "") }), vec![]);
    assert_eq!(arrive(&mut a, 9, &wire(&[kind::SAME], "stranger")), vec![]);
    assert_eq!((a.dropped("cast_kind_in_send"), a.dropped("empty"), a.dropped("not_member")), (1, 2, 1));
    // Nothing counted: B's first real cast is its first, with no dependencies.
    assert_eq!(arrive(&mut a, B, &wire(&[kind::MAP, 0b100, 0], "b1")), vec![]);
    assert_eq!(arrive(&mut a, C, &wire(&[kind::SAME], "c1")), ups(&[(C, "c1"), (B, "b1")]));
    assert_eq!(stat(&a, "delivered"), 2);
}

#[test]
fn a_dependency_far_in_the_future_waits_and_cannot_overflow() {
    let mut a = harness(A, 3);
    // B claims to have delivered u64::MAX casts of C.
    let mut far = vec![kind::LIST, 1, 2];
    far.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(arrive(&mut a, B, &wire(&far, "far")), vec![]);
    assert_eq!(stat(&a, "held"), 1);
    assert_eq!(arrive(&mut a, B, &wire(&[kind::LIST, 1, 2, 0], "more")), vec![]);
    assert_eq!(a.dropped("entry_overflow"), 1);
    assert_eq!(arrive(&mut a, C, &wire(&[kind::SAME], "c1")), ups(&[(C, "c1")]));
    assert_eq!(stat(&a, "held"), 1);
}

#[test]
fn a_sender_that_fills_its_queue_is_given_up_on_until_the_next_view() {
    let mut c = harness_with(C, 3, &[("max_held", 2)]);
    let dep = [kind::MAP, 0b001, 0];
    // Each held cast is reported below (max_held / 64 rounds up to 1).
    assert_eq!(arrive(&mut c, B, &wire(&dep, "b1")), vec![holding(B, 1)]);
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b2")), vec![holding(B, 2)]);
    let out = arrive(&mut c, B, &wire(&[kind::SAME], "b3"));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0], holding(B, 0), "the discarded casts are no longer held");
    assert_eq!(out[1], Out::Up(Up::Lost { from: m(B), count: 3 }));
    assert!(matches!(&out[2], Out::Up(Up::Problem(p)) if p.layer == "CAUSAL" && p.what.contains("max_held=2")));
    assert_eq!((stat(&c, "held"), stat(&c, "given_up"), c.dropped("held_overflow")), (0, 1, 1));
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b4")), vec![]);
    assert_eq!(c.dropped("sender_given_up"), 1);
    assert_eq!(arrive(&mut c, A, &wire(&[kind::SAME], "a1")), ups(&[(A, "a1")]), "other senders go on");
    c.up(Up::View(next_view(1, &[A, B, C])));
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b1")), ups(&[(B, "b1")]));
}

fn holding(from: u16, count: u64) -> Out {
    Out::Down(Down::Holding { from: m(from), count })
}

#[test]
fn held_casts_are_reported_below_in_steps_and_released_when_delivered() {
    // max_held 128: steps of 2.
    let mut c = harness_with(C, 3, &[("max_held", 128)]);
    let dep = [kind::MAP, 0b001, 0];
    assert_eq!(arrive(&mut c, B, &wire(&dep, "b1")), vec![], "one held cast is below a step: a short wait reports nothing");
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b2")), vec![holding(B, 2)]);
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b3")), vec![]);
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b4")), vec![holding(B, 4)]);
    // A's cast, which they all wait for, releases them and the report.
    let mut out = arrive(&mut c, A, &wire(&[kind::SAME], "a1"));
    assert_eq!(out.pop(), Some(holding(B, 0)), "the release is reported after the deliveries");
    assert_eq!(delivered(&out), [(m(A), "a1"), (m(B), "b1"), (m(B), "b2"), (m(B), "b3"), (m(B), "b4")].map(|(f, t)| (f, t.to_string())));
    assert_eq!(stat(&c, "held"), 0);
    assert_eq!(stat(&c, "given_up"), 0);
    assert_eq!(stat(&c, "holding_reports"), 3, "2, 4, then 0");

    // Casts still held at a view change are discarded, and so is the report.
    assert_eq!(arrive(&mut c, B, &wire(&dep, "b5")), vec![]);
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b6")), vec![holding(B, 2)]);
    let out = c.down(Down::View(next_view(1, &[A, B, C])));
    assert_eq!(out[0], holding(B, 0), "{out:?}");
    assert_eq!(stat(&c, "discarded_at_view"), 2);
}

#[test]
fn with_the_default_max_held_reports_come_in_steps_of_256() {
    let mut c = harness(C, 3);
    let dep = [kind::MAP, 0b001, 0];
    assert_eq!(arrive(&mut c, B, &wire(&dep, "b")), vec![]);
    for i in 2..256 {
        assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b")), vec![], "{i} held");
    }
    assert_eq!(arrive(&mut c, B, &wire(&[kind::SAME], "b")), vec![holding(B, 256)]);
}

#[test]
fn a_view_larger_than_max_members_is_fifo_only_and_says_so() {
    let mut a = harness_with(A, 3, &[("max_members", 2)]);
    assert!(matches!(a.init_output(), [Out::Up(Up::Problem(p))] if p.layer == "CAUSAL" && p.what.contains("max_members=2")));
    assert_eq!(cast(&mut a, "a1").0, vec![kind::FIFO]);
    assert_eq!(arrive(&mut a, B, &wire(&[kind::SAME], "b1")), vec![]);
    assert_eq!(a.dropped("causal_in_large_view"), 1);
    assert_eq!(arrive(&mut a, B, &wire(&[kind::FIFO], "b1")), ups(&[(B, "b1")]));
    // Back to a small view: causal again, no new problem.
    let w = next_view(1, &[A, B]);
    assert_eq!(a.up(Up::View(w.clone())), vec![Out::Up(Up::View(w))]);
    assert_eq!(cast(&mut a, "a2").0, vec![kind::SAME]);
}

#[test]
fn random_bytes_never_panic() {
    fn prop(packets: Vec<(u8, bool, Vec<u8>)>) -> bool {
        let mut a = harness(A, 4);
        for (sender, as_cast, bytes) in packets {
            let from = m(u16::from(sender % 6));
            let msg = Msg::new(Bytes::from(bytes));
            let _ = if as_cast { a.up(Up::Cast { from, msg }) } else { a.up(Up::Send { from, msg }) };
        }
        let _ = cast(&mut a, "still works");
        stat(&a, "held") <= stat(&a, "held_max")
    }
    QuickCheck::new().tests(2000).quickcheck(prop as fn(Vec<(u8, bool, Vec<u8>)>) -> bool);
}

/// Several members, each a CAUSAL layer in a harness, linked by FIFO
/// channels (NAK's guarantee) that a seeded rng interleaves at random.
struct Model {
    members: Vec<LayerHarness>,
    /// `links[from][to]`: casts in flight, in order; `links[i][i]` is the loopback.
    links: Vec<Vec<VecDeque<Msg>>>,
    /// Per member, the casts it delivered, in order.
    logs: Vec<Vec<(u16, u32)>>,
    /// Per cast: what must be delivered before it anywhere.
    past: HashMap<(u16, u32), Vec<(u16, u32)>>,
    next: Vec<u32>,
}

impl Model {
    fn new(n: u16) -> Self {
        let n_us = usize::from(n);
        Model {
            members: (0..n).map(|i| harness(i, n)).collect(),
            links: vec![vec![VecDeque::new(); n_us]; n_us],
            logs: vec![Vec::new(); n_us],
            past: HashMap::new(),
            next: vec![0; n_us],
        }
    }

    fn cast(&mut self, i: usize, fifo: bool) {
        let id = (i as u16, self.next[i]);
        self.next[i] += 1;
        // A causal cast follows everything its sender delivered; any cast
        // follows its sender's earlier casts.
        let mut past: Vec<(u16, u32)> = if fifo { Vec::new() } else { self.logs[i].clone() };
        past.extend((0..id.1).map(|k| (id.0, k)));
        self.past.insert(id, past);
        let mut payload = vec![id.0 as u8];
        payload.extend_from_slice(&id.1.to_be_bytes());
        let mut msg = Msg::new(Bytes::from(payload));
        msg.flags_mut().set_order(if fifo { Some(Order::Fifo) } else { None });
        let out = self.members[i].down(Down::Cast(msg));
        let [Out::Down(Down::Cast(sent))] = out.as_slice() else { panic!("{out:?}") };
        for link in &mut self.links[i] {
            link.push_back(Msg::new(sent.to_bytes()));
        }
    }

    fn step(&mut self, from: usize, to: usize) {
        let msg = self.links[from][to].pop_front().expect("a nonempty link");
        for o in self.members[to].up(Up::Cast { from: m(from as u16), msg }) {
            let Out::Up(Up::Cast { from, msg }) = o else { panic!("unexpected {o:?}") };
            let b = msg.into_body();
            let id = (u16::from(b[0]), u32::from_be_bytes([b[1], b[2], b[3], b[4]]));
            assert_eq!(m(id.0), from, "delivered as its sender's");
            self.logs[to].push(id);
        }
    }

    fn busy_links(&self) -> Vec<(usize, usize)> {
        let n = self.members.len();
        (0..n).flat_map(|f| (0..n).map(move |t| (f, t))).filter(|&(f, t)| !self.links[f][t].is_empty()).collect()
    }

    /// Every member delivered every cast once, each after its past.
    fn check(&self) -> Result<(), String> {
        for (i, log) in self.logs.iter().enumerate() {
            if log.len() != self.past.len() {
                return Err(format!("member {i} delivered {} of {} casts", log.len(), self.past.len()));
            }
            let pos: HashMap<(u16, u32), usize> = log.iter().enumerate().map(|(p, id)| (*id, p)).collect();
            if pos.len() != log.len() {
                return Err(format!("member {i} delivered a cast twice"));
            }
            for (id, p) in &pos {
                for before in &self.past[id] {
                    if pos[before] > *p {
                        return Err(format!("member {i} delivered {before:?} after {id:?}, which depends on it"));
                    }
                }
            }
            if self.members[i].stats().get("held") != Some(0) {
                return Err(format!("member {i} still holds casts"));
            }
        }
        Ok(())
    }
}

#[test]
fn random_interleavings_deliver_everything_in_causal_order() {
    fn prop(seed: u64, members: u8, steps: u16) -> TestResult {
        let mut rng = Rng::new(seed);
        let mut model = Model::new(2 + u16::from(members % 4));
        let n = model.members.len();
        for _ in 0..(steps % 400) {
            let busy = model.busy_links();
            if busy.is_empty() || rng.chance(0.3) {
                model.cast(rng.below(n as u64) as usize, rng.chance(0.2));
            } else {
                let (f, t) = busy[rng.below(busy.len() as u64) as usize];
                model.step(f, t);
            }
        }
        loop {
            let busy = model.busy_links();
            if busy.is_empty() {
                break;
            }
            let (f, t) = busy[rng.below(busy.len() as u64) as usize];
            model.step(f, t);
        }
        match model.check() {
            Ok(()) => TestResult::passed(),
            Err(e) => TestResult::error(format!("seed {seed}, {n} members: {e}")),
        }
    }
    QuickCheck::new().tests(300).quickcheck(prop as fn(u64, u8, u16) -> TestResult);
}

#[test]
fn the_steady_state_holds_nothing_and_headers_stay_small() {
    // Four members casting round-robin, each delivering everything before
    // its next cast: nothing waits, and each header is the kind, the
    // bitmap byte and one growth for the three others.
    let mut model = Model::new(4);
    for _ in 0..50 {
        for i in 0..4 {
            model.cast(i, false);
            for f in 0..4 {
                for t in 0..4 {
                    while !model.links[f][t].is_empty() {
                        model.step(f, t);
                    }
                }
            }
        }
    }
    model.check().unwrap();
    for (i, h) in model.members.iter().enumerate() {
        assert_eq!((stat(h, "delayed"), stat(h, "held_max")), (0, 0));
        // First casts: 1 byte for member 0 (nothing delivered yet), 3 for
        // the others; then always 3.
        assert_eq!(stat(h, "header_bytes"), [1, 3, 3, 3][i] + 49 * 3);
    }
}

/// Whole stacks over a small simulated network: random delays (so
/// datagrams overtake each other), some loss, members casting as they
/// deliver (so casts depend on each other). The application checks causal
/// order from its own logs.
mod stacks {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::time::Duration;
    use strata_stack::{AppEvent, Dest, Instant, Stack, StackConfig};

    type Id = (usize, u32);
    /// A datagram in flight: (arrival, order sent, destination, bytes).
    type InFlight = Reverse<(Instant, u64, usize, Vec<u8>)>;

    struct Net {
        stacks: Vec<Stack>,
        ids: Vec<MemberId>,
        rng: Rng,
        now: Instant,
        flight: BinaryHeap<InFlight>,
        sent: u64,
        loss: f64,
        logs: Vec<Vec<Id>>,
        views: Vec<usize>,
        past: HashMap<Id, Vec<Id>>,
        next: Vec<u32>,
        to_cast: Vec<u32>,
        problems: Vec<String>,
        /// Crashed members: they take no input and send nothing.
        crashed: Vec<bool>,
        crash_at: Option<(Instant, usize)>,
    }

    impl Net {
        fn new(spec: &str, n: u16, seed: u64, loss: f64) -> Net {
            let ids: Vec<MemberId> = (0..n).map(m).collect();
            let stacks = ids
                .iter()
                .map(|&me| {
                    let mut config = StackConfig::new("causal", me, ids.clone());
                    config.seed = seed;
                    Stack::new(&crate::builtin(), spec, config, Instant::ZERO).unwrap()
                })
                .collect();
            let n = usize::from(n);
            let mut net = Net {
                stacks,
                ids,
                rng: Rng::new(seed),
                now: Instant::ZERO,
                flight: BinaryHeap::new(),
                sent: 0,
                loss,
                logs: vec![Vec::new(); n],
                views: vec![0; n],
                past: HashMap::new(),
                next: vec![0; n],
                to_cast: vec![0; n],
                problems: Vec::new(),
                crashed: vec![false; n],
                crash_at: None,
            };
            for i in 0..n {
                net.pump(i);
            }
            net
        }

        fn pump(&mut self, i: usize) {
            while let Some(t) = self.stacks[i].poll_transmit() {
                if self.crashed[i] {
                    continue;
                }
                let dests: Vec<usize> = match t.dest {
                    Dest::Group => self.stacks[i].view().members().iter().filter_map(|d| self.ids.iter().position(|x| x == d)).filter(|&d| d != i).collect(),
                    Dest::Member(d) => self.ids.iter().position(|x| *x == d).into_iter().collect(),
                };
                let bytes = t.msg.to_bytes().to_vec();
                for d in dests {
                    if self.rng.chance(self.loss) {
                        continue;
                    }
                    let at = self.now + Duration::from_micros(100 + self.rng.below(3000));
                    self.sent += 1;
                    self.flight.push(Reverse((at, self.sent, d, bytes.clone())));
                }
            }
            let mut reply = false;
            let mut pending_state = false;
            while let Some(ev) = self.stacks[i].poll_event() {
                match ev {
                    AppEvent::Deliver { kind: strata_stack::Delivery::Cast, body, .. } => {
                        let id = (usize::from(body[0]), u32::from_be_bytes([body[1], body[2], body[3], body[4]]));
                        self.logs[i].push(id);
                        reply |= self.rng.chance(0.5);
                    }
                    AppEvent::View(v) => self.views[i] = v.len(),
                    // Joiners load an empty state: casts start after the group formed.
                    AppEvent::StateRequest { token, .. } => {
                        let _ = self.stacks[i].provide_state(self.now, token, None);
                        pending_state = true;
                    }
                    AppEvent::Problem(p) => self.problems.push(format!("member {i}: {p:?}")),
                    _ => {}
                }
            }
            if pending_state {
                self.pump(i);
            }
            if reply && self.to_cast[i] > 0 {
                self.cast(i);
            }
        }

        /// Casts the member's next message if the stack takes it; every
        /// fifth asks for FIFO order only.
        fn cast(&mut self, i: usize) {
            let id = (i, self.next[i]);
            let fifo = id.1 % 5 == 4;
            let mut payload = vec![i as u8];
            payload.extend_from_slice(&id.1.to_be_bytes());
            payload.resize(5 + self.rng.below(3000) as usize, 0xab);
            let body = Bytes::from(payload);
            let accepted = if fifo { self.stacks[i].cast_ordered(self.now, body, Order::Fifo) } else { self.stacks[i].cast(self.now, body) };
            if accepted.is_ok() {
                let mut past: Vec<Id> = if fifo { Vec::new() } else { self.logs[i].clone() };
                past.extend((0..id.1).map(|k| (i, k)));
                self.past.insert(id, past);
                self.next[i] += 1;
                self.to_cast[i] -= 1;
            }
            self.pump(i);
        }

        /// Runs until `until`: datagrams, timers, and a cast by a random
        /// member every `every` while some are left to cast.
        fn run(&mut self, until: Instant, every: Duration) {
            let mut next_cast = self.now + every;
            loop {
                let datagram = self.flight.peek().map(|Reverse((at, ..))| *at).unwrap_or(Instant::FAR_FUTURE);
                let (timer, who) = (0..self.stacks.len())
                    .filter(|&i| !self.crashed[i])
                    .filter_map(|i| self.stacks[i].poll_timeout().map(|t| (t, i)))
                    .min()
                    .unwrap_or((Instant::FAR_FUTURE, 0));
                if let Some((when, victim)) = self.crash_at.filter(|(when, _)| *when <= datagram.min(timer)) {
                    self.now = self.now.max(when);
                    self.crashed[victim] = true;
                    self.to_cast[victim] = 0;
                    self.crash_at = None;
                    continue;
                }
                let casting = self.to_cast.iter().any(|&k| k > 0);
                let cast_at = if casting { next_cast } else { Instant::FAR_FUTURE };
                let at = datagram.min(timer).min(cast_at);
                if at > until {
                    self.now = until;
                    return;
                }
                self.now = self.now.max(at);
                if at == datagram {
                    let Reverse((_, _, to, bytes)) = self.flight.pop().expect("peeked");
                    if !self.crashed[to] {
                        self.stacks[to].handle_datagram(self.now, Bytes::from(bytes));
                        self.pump(to);
                    }
                } else if at == timer {
                    self.stacks[who].handle_timeout(self.now);
                    self.pump(who);
                } else {
                    next_cast = self.now + every;
                    let i = self.rng.below(self.stacks.len() as u64) as usize;
                    if self.to_cast[i] > 0 {
                        self.cast(i);
                    }
                }
            }
        }

        /// Every live member delivered every live member's casts and the
        /// same casts of a crashed one, each after everything its sender
        /// delivered before casting it.
        fn check(&self) -> Result<(), String> {
            if !self.problems.is_empty() {
                return Err(format!("problems: {:?}", self.problems));
            }
            let live: Vec<usize> = (0..self.logs.len()).filter(|&i| !self.crashed[i]).collect();
            let mut crashed_casts: Option<Vec<Id>> = None;
            for &i in &live {
                let log = &self.logs[i];
                let pos: HashMap<Id, usize> = log.iter().enumerate().map(|(p, id)| (*id, p)).collect();
                if pos.len() != log.len() {
                    return Err(format!("member {i} delivered a cast twice"));
                }
                let live_casts = self.past.keys().filter(|id| !self.crashed[id.0]).count();
                if log.iter().filter(|id| !self.crashed[id.0]).count() != live_casts {
                    return Err(format!("member {i} delivered {} casts of {live_casts} by live members", log.len()));
                }
                let mut of_crashed: Vec<Id> = log.iter().filter(|id| self.crashed[id.0]).copied().collect();
                of_crashed.sort();
                if crashed_casts.get_or_insert_with(|| of_crashed.clone()) != &of_crashed {
                    return Err(format!("member {i} delivered other casts of the crashed member than member {}", live[0]));
                }
                for (id, p) in &pos {
                    for before in &self.past[id] {
                        if pos.get(before).is_none_or(|b| b > p) {
                            return Err(format!("member {i} delivered {id:?} before {before:?}, which it depends on"));
                        }
                    }
                }
            }
            Ok(())
        }

        fn causal_stats(&self, i: usize, name: &str) -> u64 {
            let s = self.stacks[i].stats().into_iter().find(|l| l.name == "CAUSAL").expect("CAUSAL in the stack");
            s.counters.get(name).expect("the counter")
        }
    }

    fn run(spec: &str, seed: u64) -> Net {
        let n = 4;
        let mut net = Net::new(spec, n, seed, 0.05);
        if spec.contains("VSYNC") {
            // Let the group form before casting: members found and join.
            net.run(Instant::from_millis(5000), Duration::from_millis(1));
            assert!(net.views.iter().all(|&v| v == usize::from(n)), "{spec}: the group formed: {:?}", net.views);
        }
        let start = net.now;
        net.to_cast = vec![60; usize::from(n)];
        net.run(start + Duration::from_secs(10), Duration::from_micros(500));
        net
    }

    #[test]
    fn causal_order_survives_a_crash_below_and_above_membership() {
        for spec in ["FRAG:NAK:CAUSAL:VSYNC", "FRAG:NAK:VSYNC:CAUSAL"] {
            for seed in 1..=4 {
                let n = 4;
                let mut net = Net::new(spec, n, seed, 0.05);
                net.run(Instant::from_millis(5000), Duration::from_millis(1));
                assert!(net.views.iter().all(|&v| v == usize::from(n)), "{spec}: the group formed: {:?}", net.views);
                let start = net.now;
                // A member other than the coordinator crashes in the middle of the traffic.
                net.crash_at = Some((start + Duration::from_millis(20), 1 + (seed as usize % 3)));
                net.to_cast = vec![60; usize::from(n)];
                net.run(start + Duration::from_secs(10), Duration::from_micros(500));
                let live: Vec<usize> = (0..4).filter(|&i| !net.crashed[i]).collect();
                assert_eq!(live.len(), 3);
                assert!(live.iter().all(|&i| net.views[i] == 3), "{spec}, seed {seed}: the crashed member was removed: {:?}", net.views);
                net.check().unwrap_or_else(|e| panic!("{spec}, seed {seed}: {e}"));
                let crashed = (0..4).find(|&i| net.crashed[i]).unwrap();
                let of_crashed = net.logs[live[0]].iter().filter(|id| id.0 == crashed).count();
                let discarded: u64 = live.iter().map(|&i| net.causal_stats(i, "discarded_at_view")).sum();
                let recovered: u64 = live.iter().filter_map(|&i| net.stacks[i].stats().into_iter().find(|l| l.name == "NAK")?.counters.get("recovered")).sum();
                eprintln!(
                    "{spec} seed {seed}: {of_crashed} of {} casts of the crashed member delivered, {recovered} recovered through NAK; {discarded} discarded at the view change",
                    net.next[crashed]
                );
            }
        }
    }

    #[test]
    fn causal_order_holds_in_every_position_of_the_stack() {
        for spec in ["FRAG:NAK:CAUSAL", "FRAG(frag_size=1000):NAK:CAUSAL:VSYNC", "FRAG:NAK:VSYNC:CAUSAL"] {
            for seed in 1..=3 {
                let net = run(spec, seed);
                assert_eq!(net.past.len(), 240, "{spec}: every cast accepted");
                net.check().unwrap_or_else(|e| {
                    panic!(
                        "{spec}, seed {seed}: {e}; delivered {:?}; views {:?}; stats {:#?}",
                        net.logs.iter().map(|l| l.len()).collect::<Vec<_>>(),
                        net.views,
                        net.stacks[1].stats()
                    )
                });
                let delayed: u64 = (0..4).map(|i| net.causal_stats(i, "delayed")).sum();
                let held: u64 = (0..4).map(|i| net.causal_stats(i, "held")).sum();
                assert_eq!(held, 0, "{spec}: nothing left waiting");
                assert!(delayed > 0, "{spec}: the network reordered enough for casts to wait");
                let (bytes, sent) = (0..4).fold((0, 0), |(b, s), i| (b + net.causal_stats(i, "header_bytes"), s + net.causal_stats(i, "sent")));
                eprintln!("{spec} seed {seed}: {delayed} casts waited; {:.2} header bytes per cast", bytes as f64 / sent as f64);
                assert!(bytes <= sent * 5, "at most 5 bytes a cast among 4 members");
            }
        }
    }
}
