//! Harness tests of QUERY at one member (the querier, or a member asked),
//! with its casts looped back by hand, and the layer in a real stack through
//! the engine's `Stack::query` and `Stack::reply`.

use super::*;
use quickcheck::quickcheck;
use strata_stack::harness::{LayerHarness, Out};
use strata_stack::{AppEvent, Refused, Stack, StackConfig};

fn member(n: u16) -> MemberId {
    MemberId::sim(n)
}

fn view(counter: u64, members: &[u16]) -> Arc<View> {
    View::new(ViewId { counter, creator: member(members[0]) }, members.iter().map(|&n| member(n)).collect()).unwrap()
}

fn harness_with(local: u16, view: Arc<View>, reply_cache: u64) -> LayerHarness {
    let mut p = Params::defaults(QUERY.params).unwrap();
    p.set("reply_cache", strata_stack::ParamValue::U64(reply_cache));
    LayerHarness::boxed("QUERY", (QUERY.build)(&p).unwrap(), member(local), view, 65_000)
}

fn harness(local: u16, view: Arc<View>) -> LayerHarness {
    harness_with(local, view, 64)
}

/// A message as it travels below QUERY: `header` bytes, then `body`.
fn wire(header: &[u8], body: &'static [u8]) -> Msg {
    let mut m = Msg::new(Bytes::from_static(body));
    m.push(header);
    m
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn query(h: &mut LayerHarness, id: u64, want: Want, timeout: Duration) -> Vec<Out> {
    h.down(Down::Query { id, msg: Msg::new(Bytes::from_static(b"q?")), want, timeout })
}

/// Casts query `id` and loops its cast back up, as the bottom of a stack
/// would; returns what the loop-back emitted.
fn query_delivered(h: &mut LayerHarness, id: u64, want: Want, timeout: Duration) -> Vec<Out> {
    let out = query(h, id, want, timeout);
    let [Out::Down(Down::Cast(msg))] = &out[..] else { panic!("expected the query's cast, got {out:?}") };
    let me = member(0);
    h.up(Up::Cast { from: me, msg: msg.clone() })
}

fn reply_from(h: &mut LayerHarness, from: u16, id: u64, body: &'static [u8]) -> Vec<Out> {
    let mut w = strata_stack::Writer::new();
    w.u8(kind::REPLY).varint(id);
    h.up(Up::Send { from: member(from), msg: wire(w.as_slice(), body) })
}

fn done(out: &[Out]) -> &QueryResult {
    match out {
        [.., Out::Up(Up::QueryDone(r))] => r,
        other => panic!("expected QueryDone last, got {other:?}"),
    }
}

fn replies(pairs: &[(u16, &'static [u8])]) -> Vec<(MemberId, Bytes)> {
    pairs.iter().map(|&(m, b)| (member(m), Bytes::from_static(b))).collect()
}

#[test]
fn ordinary_casts_and_sends_carry_one_data_byte() {
    let mut h = harness(0, view(1, &[0, 1]));
    let out = h.down(Down::Cast(Msg::new(Bytes::from_static(b"hi"))));
    assert_eq!(out, vec![Out::Down(Down::Cast(wire(&[kind::DATA], b"hi")))]);
    let out = h.down(Down::Send { to: member(1), msg: Msg::new(Bytes::from_static(b"yo")) });
    assert_eq!(out, vec![Out::Down(Down::Send { to: member(1), msg: wire(&[kind::DATA], b"yo") })]);
    let out = h.up(Up::Cast { from: member(1), msg: wire(&[kind::DATA], b"hi") });
    assert_eq!(out, vec![Out::Up(Up::Cast { from: member(1), msg: Msg::new(Bytes::from_static(b"hi")) })]);
    let out = h.up(Up::Send { from: member(1), msg: wire(&[kind::DATA], b"yo") });
    assert_eq!(out, vec![Out::Up(Up::Send { from: member(1), msg: Msg::new(Bytes::from_static(b"yo")) })]);
}

#[test]
fn a_query_is_a_cast_with_its_id_and_every_member_delivers_it_as_a_query() {
    let v = view(1, &[0, 1, 2]);
    let mut h = harness(0, v.clone());
    let out = query(&mut h, 300, Want::All, ms(1000));
    // 300 is a two-byte varint.
    assert_eq!(out, vec![Out::Down(Down::Cast(wire(&[kind::REQUEST, 0xac, 0x02], b"q?")))]);
    assert_eq!(h.next_timer(), Some(Instant::ZERO + ms(1000)));
    // At a member asked: the request goes up as a query; the answer goes to the querier.
    let mut other = harness(1, v);
    let out = other.up(Up::Cast { from: member(0), msg: wire(&[kind::REQUEST, 0xac, 0x02], b"q?") });
    assert_eq!(out, vec![Out::Up(Up::Query { from: member(0), id: 300, msg: Msg::new(Bytes::from_static(b"q?")) })]);
    let out = other.down(Down::Reply { to: member(0), id: 300, msg: Msg::new(Bytes::from_static(b"a1")) });
    assert_eq!(out, vec![Out::Down(Down::Send { to: member(0), msg: wire(&[kind::REPLY, 0xac, 0x02], b"a1") })]);
    assert_eq!(other.stats().get("replies_sent"), Some(1));
}

#[test]
fn want_all_completes_once_every_member_replied_the_querier_included() {
    let v = view(1, &[0, 1, 2]);
    let mut h = harness(0, v.clone());
    let out = query_delivered(&mut h, 7, Want::All, ms(1000));
    assert_eq!(out, vec![Out::Up(Up::Query { from: member(0), id: 7, msg: Msg::new(Bytes::from_static(b"q?")) })]);
    assert!(reply_from(&mut h, 2, 7, b"two").is_empty());
    assert!(reply_from(&mut h, 0, 7, b"zero").is_empty());
    let out = reply_from(&mut h, 1, 7, b"one");
    let expected =
        QueryResult { id: 7, replies: replies(&[(2, b"two"), (0, b"zero"), (1, b"one")]), view: v, missing: vec![], outcome: QueryOutcome::Complete };
    assert_eq!(out, vec![Out::Up(Up::QueryDone(expected))]);
    assert_eq!(h.next_timer(), None, "no query open, no timer");
    assert_eq!((h.stats().get("complete"), h.stats().get("pending")), (Some(1), Some(0)));
}

#[test]
fn want_count_completes_at_k_replies_and_later_replies_are_late() {
    let v = view(1, &[0, 1, 2, 3]);
    let mut h = harness(0, v.clone());
    query_delivered(&mut h, 1, Want::Count(2), ms(1000));
    assert!(reply_from(&mut h, 3, 1, b"3").is_empty());
    let out = reply_from(&mut h, 1, 1, b"1");
    let r = done(&out);
    assert_eq!((r.outcome, &r.replies), (QueryOutcome::Complete, &replies(&[(3, b"3"), (1, b"1")])));
    assert_eq!(r.missing, vec![member(0), member(2)], "members without a reply, in rank order");
    assert!(reply_from(&mut h, 2, 1, b"2").is_empty());
    assert_eq!(h.dropped("late_reply"), 1);
}

#[test]
fn want_count_zero_completes_at_once_and_the_query_still_goes_out() {
    let mut h = harness(0, view(1, &[0, 1]));
    let out = query(&mut h, 4, Want::Count(0), ms(1000));
    assert!(matches!(&out[0], Out::Down(Down::Cast(_))));
    let r = done(&out);
    assert_eq!((r.outcome, r.replies.len(), out.len()), (QueryOutcome::Complete, 0, 2));
    assert_eq!(h.next_timer(), None);
}

#[test]
fn want_majority_needs_more_than_half_of_the_view() {
    let v = view(1, &[0, 1, 2, 3, 4]);
    let mut h = harness(0, v);
    query_delivered(&mut h, 9, Want::Majority, ms(1000));
    assert!(reply_from(&mut h, 0, 9, b"0").is_empty());
    assert!(reply_from(&mut h, 4, 9, b"4").is_empty(), "2 of 5 is no majority");
    let out = reply_from(&mut h, 2, 9, b"2");
    let r = done(&out);
    assert_eq!(r.outcome, QueryOutcome::Complete);
    assert_eq!(r.missing, vec![member(1), member(3)]);
}

#[test]
fn half_of_an_even_view_is_no_majority() {
    let mut h = harness(0, view(1, &[0, 1, 2, 3]));
    query_delivered(&mut h, 9, Want::Majority, ms(1000));
    assert!(reply_from(&mut h, 1, 9, b"1").is_empty());
    assert!(reply_from(&mut h, 2, 9, b"2").is_empty(), "2 of 4 is no majority");
    assert_eq!(done(&reply_from(&mut h, 3, 9, b"3")).outcome, QueryOutcome::Complete);
}

#[test]
fn a_majority_is_of_the_view_when_the_query_completes() {
    let mut h = harness(0, view(1, &[0, 1, 2, 3, 4]));
    query_delivered(&mut h, 9, Want::Majority, ms(1000));
    reply_from(&mut h, 1, 9, b"1");
    reply_from(&mut h, 2, 9, b"2");
    // 3 and 4 crash: 2 of the 3 left is a majority.
    let smaller = view(2, &[0, 1, 2]);
    let out = h.up(Up::View(smaller.clone()));
    assert_eq!(out[0], Out::Up(Up::View(smaller)), "the view first, then what it decided");
    let r = done(&out);
    assert_eq!(out.len(), 2, "a query that ends sends no re-asks");
    assert_eq!(r.outcome, QueryOutcome::Complete);
    assert_eq!(r.view, view(1, &[0, 1, 2, 3, 4]), "the view the members were asked in");
    assert_eq!(r.missing, vec![member(0), member(3), member(4)]);
}

#[test]
fn replies_of_departed_members_do_not_count_towards_a_majority() {
    let mut h = harness(0, view(1, &[0, 1, 2, 3, 4]));
    query_delivered(&mut h, 9, Want::Majority, ms(1000));
    reply_from(&mut h, 3, 9, b"3");
    reply_from(&mut h, 4, 9, b"4");
    let out = h.up(Up::View(view(2, &[0, 1, 2])));
    assert!(!out.iter().any(|o| matches!(o, Out::Up(Up::QueryDone(_)))), "0 of the 3 left replied");
    reply_from(&mut h, 0, 9, b"0");
    let out = reply_from(&mut h, 1, 9, b"1");
    let r = done(&out);
    assert_eq!(r.outcome, QueryOutcome::Complete);
    assert_eq!(r.replies.len(), 4, "the departed members' replies are still reported");
}

#[test]
fn a_member_leaving_the_view_completes_want_all_without_it() {
    let v = view(1, &[0, 1, 2]);
    let mut h = harness(0, v.clone());
    query_delivered(&mut h, 5, Want::All, ms(1000));
    reply_from(&mut h, 0, 5, b"0");
    reply_from(&mut h, 1, 5, b"1");
    let w = view(2, &[0, 1]);
    let out = h.up(Up::View(w.clone()));
    let expected = QueryResult { id: 5, replies: replies(&[(0, b"0"), (1, b"1")]), view: v, missing: vec![member(2)], outcome: QueryOutcome::Complete };
    assert_eq!(out, vec![Out::Up(Up::View(w)), Out::Up(Up::QueryDone(expected))]);
    assert_eq!(h.next_timer(), None);
}

#[test]
fn want_all_waits_for_the_members_left_and_re_asks_them() {
    let mut h = harness(0, view(1, &[0, 1, 2, 3]));
    query_delivered(&mut h, 5, Want::All, ms(1000));
    reply_from(&mut h, 0, 5, b"0");
    reply_from(&mut h, 1, 5, b"1");
    let w = view(2, &[0, 1, 2]);
    let out = h.up(Up::View(w.clone()));
    // 2's reply may have been lost with the old view: ask it again.
    assert_eq!(out, vec![Out::Up(Up::View(w)), Out::Down(Down::Send { to: member(2), msg: wire(&[kind::REASK, 5], b"") })]);
    let out = reply_from(&mut h, 2, 5, b"2");
    let r = done(&out);
    assert_eq!((r.outcome, r.missing.clone()), (QueryOutcome::Complete, vec![member(3)]));
}

#[test]
fn want_count_above_the_members_left_is_impossible_once_they_all_answered() {
    let mut h = harness(0, view(1, &[0, 1, 2]));
    query_delivered(&mut h, 2, Want::Count(3), ms(1000));
    let out = h.up(Up::View(view(2, &[0, 1])));
    assert!(!out.iter().any(|o| matches!(o, Out::Up(Up::QueryDone(_)))), "0 and 1 may still answer");
    assert!(reply_from(&mut h, 1, 2, b"1").is_empty());
    let out = reply_from(&mut h, 0, 2, b"0");
    let r = done(&out);
    assert_eq!(r.outcome, QueryOutcome::Impossible);
    assert_eq!((r.replies.len(), r.missing.clone()), (2, vec![member(2)]));
    assert_eq!(h.stats().get("impossible"), Some(1));
}

#[test]
fn a_reply_then_departure_still_counts_for_want_count() {
    let mut h = harness(0, view(1, &[0, 1, 2]));
    query_delivered(&mut h, 2, Want::Count(2), ms(1000));
    reply_from(&mut h, 2, 2, b"2");
    h.up(Up::View(view(2, &[0, 1])));
    let out = reply_from(&mut h, 0, 2, b"0");
    let r = done(&out);
    assert_eq!(r.outcome, QueryOutcome::Complete);
    assert_eq!(r.missing, vec![member(1)]);
}

#[test]
fn the_timeout_ends_a_query_with_the_replies_so_far() {
    let v = view(1, &[0, 1, 2]);
    let mut h = harness(0, v.clone());
    query_delivered(&mut h, 1, Want::All, ms(100));
    h.advance(Instant::ZERO + ms(10));
    query_delivered(&mut h, 2, Want::All, ms(50)); // due at 60 ms: earlier than the first
    assert_eq!(h.next_timer(), Some(Instant::ZERO + ms(60)));
    reply_from(&mut h, 1, 1, b"1");
    let out = h.advance(Instant::ZERO + ms(60));
    assert_eq!(done(&out).id, 2);
    assert_eq!(done(&out).outcome, QueryOutcome::TimedOut);
    assert_eq!(h.next_timer(), Some(Instant::ZERO + ms(100)), "re-armed for the next deadline");
    assert!(h.advance(Instant::ZERO + ms(99)).is_empty());
    let out = h.advance(Instant::ZERO + ms(100));
    let expected = QueryResult { id: 1, replies: replies(&[(1, b"1")]), view: v, missing: vec![member(0), member(2)], outcome: QueryOutcome::TimedOut };
    assert_eq!(out, vec![Out::Up(Up::QueryDone(expected))]);
    assert_eq!(h.next_timer(), None);
    assert_eq!(h.stats().get("timed_out"), Some(2));
    assert!(reply_from(&mut h, 2, 1, b"2").is_empty());
    assert_eq!(h.dropped("late_reply"), 1);
}

#[test]
fn a_query_never_delivered_times_out_against_the_current_view() {
    let v = view(1, &[0, 1]);
    let mut h = harness(0, v.clone());
    query(&mut h, 3, Want::All, ms(10));
    let out = h.advance(Instant::ZERO + ms(10));
    let expected = QueryResult { id: 3, replies: vec![], view: v, missing: vec![member(0), member(1)], outcome: QueryOutcome::TimedOut };
    assert_eq!(out, vec![Out::Up(Up::QueryDone(expected))]);
}

#[test]
fn replies_before_the_querier_delivers_its_own_query_are_kept() {
    // With TOTAL below, others may deliver (and answer) first.
    let mut h = harness(0, view(1, &[0, 1, 2]));
    let out = query(&mut h, 8, Want::All, ms(1000));
    let [Out::Down(Down::Cast(cast))] = &out[..] else { panic!("{out:?}") };
    assert!(reply_from(&mut h, 1, 8, b"1").is_empty());
    assert!(reply_from(&mut h, 9, 8, b"stranger").is_empty());
    assert_eq!(h.dropped("reply_not_member"), 1);
    assert!(reply_from(&mut h, 1, 8, b"again").is_empty());
    assert_eq!(h.dropped("duplicate_reply"), 1);
    h.up(Up::Cast { from: member(0), msg: cast.clone() });
    reply_from(&mut h, 0, 8, b"0");
    let out = reply_from(&mut h, 2, 8, b"2");
    assert_eq!(done(&out).replies, replies(&[(1, b"1"), (0, b"0"), (2, b"2")]));
}

#[test]
fn members_that_join_after_the_query_are_not_asked() {
    let mut h = harness(0, view(1, &[0, 1]));
    query_delivered(&mut h, 6, Want::All, ms(1000));
    let out = h.up(Up::View(view(2, &[0, 1, 3])));
    assert_eq!(out.iter().filter(|o| matches!(o, Out::Down(Down::Send { to, .. }) if *to == member(3))).count(), 0, "the joiner is not re-asked");
    assert!(reply_from(&mut h, 3, 6, b"3").is_empty());
    assert_eq!(h.dropped("reply_not_asked"), 1);
    reply_from(&mut h, 0, 6, b"0");
    let out = reply_from(&mut h, 1, 6, b"1");
    let r = done(&out);
    assert_eq!((r.outcome, r.view.members()), (QueryOutcome::Complete, &[member(0), member(1)][..]));
}

#[test]
fn duplicate_unsolicited_and_misdirected_traffic_is_dropped_and_counted() {
    let mut h = harness(0, view(1, &[0, 1, 2]));
    query_delivered(&mut h, 1, Want::All, ms(1000));
    reply_from(&mut h, 1, 1, b"1");
    assert!(reply_from(&mut h, 1, 1, b"1 again").is_empty());
    assert!(reply_from(&mut h, 1, 99, b"what query?").is_empty());
    // A reply cast to everyone, a request sent to one member, a re-ask cast.
    assert!(h.up(Up::Cast { from: member(1), msg: wire(&[kind::REPLY, 1], b"x") }).is_empty());
    assert!(h.up(Up::Send { from: member(1), msg: wire(&[kind::REQUEST, 1], b"x") }).is_empty());
    assert!(h.up(Up::Cast { from: member(1), msg: wire(&[kind::REASK, 1], b"") }).is_empty());
    assert!(h.up(Up::Send { from: member(1), msg: wire(&[kind::REASK, 1], b"junk") }).is_empty());
    assert!(h.up(Up::Cast { from: member(1), msg: wire(&[9], b"x") }).is_empty());
    assert!(h.up(Up::Cast { from: member(1), msg: wire(&[], b"") }).is_empty());
    assert!(h.up(Up::Cast { from: member(1), msg: wire(&[kind::REQUEST, 0x80], b"") }).is_empty());
    for (reason, n) in [
        ("duplicate_reply", 1),
        ("unknown_query", 1),
        ("reply_as_cast", 1),
        ("request_as_send", 1),
        ("reask_as_cast", 1),
        ("reask_trailing_bytes", 1),
        ("unknown_kind", 1),
        ("truncated", 2),
    ] {
        assert_eq!(h.dropped(reason), n, "{reason}: {:?}", h.drops());
    }
    assert_eq!(h.stats().get("replies_received"), Some(1));
    assert_eq!(h.stats().get("pending"), Some(1), "the query is still open");
}

#[test]
fn a_query_id_already_in_flight_is_refused_with_a_problem() {
    let mut h = harness(0, view(1, &[0, 1]));
    query(&mut h, 1, Want::All, ms(1000));
    let out = query(&mut h, 1, Want::All, ms(1000));
    assert!(matches!(&out[..], [Out::Up(Up::Problem(p))] if p.layer == "QUERY"), "{out:?}");
    assert_eq!(h.dropped("duplicate_query_id"), 1);
    assert_eq!(h.stats().get("queries_sent"), Some(1));
}

#[test]
fn leaving_ends_every_open_query_as_impossible_before_left() {
    let mut h = harness(0, view(1, &[0, 1]));
    query_delivered(&mut h, 1, Want::All, ms(1000));
    query(&mut h, 2, Want::All, ms(1000));
    let out = h.up(Up::Left);
    assert_eq!(out.len(), 3);
    assert!(matches!(&out[0], Out::Up(Up::QueryDone(r)) if r.id == 1 && r.outcome == QueryOutcome::Impossible));
    assert!(matches!(&out[1], Out::Up(Up::QueryDone(r)) if r.id == 2 && r.outcome == QueryOutcome::Impossible));
    assert_eq!(out[2], Out::Up(Up::Left));
    assert_eq!(h.next_timer(), None);
    // After leaving a query ends at once, uncast.
    let out = query(&mut h, 3, Want::All, ms(1000));
    assert!(matches!(&out[..], [Out::Up(Up::QueryDone(r))] if r.outcome == QueryOutcome::Impossible));
}

#[test]
fn a_re_ask_is_answered_from_the_cache_only_for_replies_of_an_earlier_view() {
    let v1 = view(1, &[0, 1]);
    let mut h = harness(1, v1);
    h.down(Down::Reply { to: member(0), id: 4, msg: Msg::new(Bytes::from_static(b"answer")) });
    let reask = || wire(&[kind::REASK, 4], b"");
    // Sent in this view: NAK delivers it; nothing to do.
    assert!(h.up(Up::Send { from: member(0), msg: reask() }).is_empty());
    h.up(Up::View(view(2, &[0, 1])));
    let out = h.up(Up::Send { from: member(0), msg: reask() });
    assert_eq!(out, vec![Out::Down(Down::Send { to: member(0), msg: wire(&[kind::REPLY, 4], b"answer") })]);
    // Not answered yet (the application's reply will come), or for another querier.
    assert!(h.up(Up::Send { from: member(0), msg: wire(&[kind::REASK, 5], b"") }).is_empty());
    assert!(h.up(Up::Send { from: member(2), msg: reask() }).is_empty());
    let s = h.stats();
    assert_eq!((s.get("replies_resent"), s.get("reasks_unanswered")), (Some(1), Some(2)));
}

#[test]
fn the_reply_cache_is_bounded_and_can_be_off() {
    let mut h = harness_with(1, view(1, &[0, 1]), 2);
    for id in 0..5 {
        h.down(Down::Reply { to: member(0), id, msg: Msg::new(Bytes::from_static(b"a")) });
    }
    assert_eq!(h.stats().get("reply_cache"), Some(2));
    h.up(Up::View(view(2, &[0, 1])));
    assert!(h.up(Up::Send { from: member(0), msg: wire(&[kind::REASK, 2], b"") }).is_empty(), "evicted");
    assert_eq!(h.up(Up::Send { from: member(0), msg: wire(&[kind::REASK, 4], b"") }).len(), 1);
    let mut off = harness_with(1, view(1, &[0, 1]), 0);
    off.down(Down::Reply { to: member(0), id: 0, msg: Msg::new(Bytes::from_static(b"a")) });
    assert_eq!(off.stats().get("reply_cache"), Some(0));
}

// ---- through the engine ---------------------------------------------------------

fn solo_stack(spec: &str) -> Stack {
    let me = member(0);
    Stack::new(&crate::builtin(), spec, StackConfig::new("g", me, vec![me]), Instant::ZERO).unwrap()
}

#[test]
fn a_stack_answers_its_own_query_through_the_application() {
    let mut s = solo_stack("FRAG:NAK:QUERY");
    let id = s.query(Instant::ZERO, Bytes::from_static(b"2+2?"), Want::All, ms(1000)).unwrap();
    assert_eq!(s.query(Instant::ZERO, Bytes::from_static(b"again"), Want::Count(0), ms(1000)), Ok(id + 1), "ids are fresh");
    let mut asked = Vec::new();
    while let Some(ev) = s.poll_event() {
        match ev {
            AppEvent::Query { from, id, body } => asked.push((from, id, body)),
            AppEvent::QueryDone(r) => assert_eq!((r.id, r.outcome), (id + 1, QueryOutcome::Complete)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(asked, vec![(member(0), id, Bytes::from_static(b"2+2?")), (member(0), id + 1, Bytes::from_static(b"again"))]);
    s.reply(Instant::ZERO, member(0), id, Bytes::from_static(b"4")).unwrap();
    let Some(AppEvent::QueryDone(r)) = s.poll_event() else { panic!("no result") };
    assert_eq!((r.id, r.replies, r.outcome), (id, replies(&[(0, b"4")]), QueryOutcome::Complete));
    assert_eq!(s.poll_timeout(), None, "the deadline is disarmed");
}

#[test]
fn a_stack_without_query_refuses_queries_and_replies() {
    let mut s = solo_stack("FRAG:NAK");
    assert_eq!(s.query(Instant::ZERO, Bytes::new(), Want::All, ms(1)), Err(Refused::QueryUnavailable));
    assert_eq!(s.reply(Instant::ZERO, member(0), 0, Bytes::new()), Err(Refused::QueryUnavailable));
    // Passed in raw, one reaching the bottom is counted and reported.
    s.input(Instant::ZERO, Down::Reply { to: member(0), id: 0, msg: Msg::empty() }).unwrap();
    assert!(matches!(s.poll_event(), Some(AppEvent::Problem(p)) if p.layer == "engine"));
    assert_eq!(s.engine_stats().dropped, vec![("query_without_query_layer", 1)]);
}

#[test]
fn the_query_header_counts_against_the_message_limit() {
    let s = solo_stack("NAK:QUERY");
    let q = solo_stack("NAK");
    assert_eq!(q.max_message() - s.max_message(), 1 + MAX_VARINT_LEN);
    let mut s = s;
    let max = s.max_message();
    assert_eq!(s.query(Instant::ZERO, Bytes::from(vec![0u8; max + 1]), Want::All, ms(1)), Err(Refused::TooLarge { len: max + 1, max }));
}

quickcheck! {
    fn random_bytes_never_panic(data: Vec<u8>, cast: bool, from: u8) -> bool {
        let mut h = harness(0, view(1, &[0, 1, 2]));
        query_delivered(&mut h, 1, Want::All, ms(1000));
        query(&mut h, 2, Want::Majority, ms(1000));
        let from = member(u16::from(from % 4));
        let msg = Msg::new(Bytes::from(data));
        if cast {
            h.up(Up::Cast { from, msg });
        } else {
            h.up(Up::Send { from, msg });
        }
        h.advance(Instant::ZERO + ms(2000));
        h.stats().get("pending") == Some(0)
    }

    fn random_replies_end_every_query_exactly_once(events: Vec<(u8, u8, bool)>) -> bool {
        // (member, query, is a view change to members 0..=member)
        let mut h = harness(0, view(1, &[0, 1, 2, 3]));
        let mut ended = Vec::new();
        let mut record = |out: Vec<Out>| {
            for o in out {
                if let Out::Up(Up::QueryDone(r)) = o {
                    ended.push(r.id);
                }
            }
        };
        for id in 0..3u64 {
            let want = [Want::All, Want::Count(2), Want::Majority][id as usize];
            record(query_delivered(&mut h, id, want, ms(1000)));
        }
        let mut counter = 1;
        for (m, q, change) in events {
            let m = u16::from(m % 4);
            if change {
                counter += 1;
                let members: Vec<u16> = (0..=m).collect();
                record(h.up(Up::View(view(counter, &members))));
            } else {
                record(reply_from(&mut h, m, u64::from(q % 4), b"r"));
            }
        }
        record(h.advance(Instant::ZERO + ms(1000)));
        ended.sort();
        ended == vec![0, 1, 2]
    }
}
