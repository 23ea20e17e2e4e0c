//! Harness tests of VSYNC at one member: founding, the round a join starts
//! (run against this member alone, its messages to itself looped back),
//! ordering of the state request, and hostile input. The protocol among
//! many members is checked in the simulator (transport/tests/sim_vsync.rs).

use super::wire::{self, Ballot, Control, Outcome};
use super::*;
use bytes::Bytes;
use quickcheck::quickcheck;
use std::time::Duration;
use strata_stack::harness::{LayerHarness, Out};

fn params() -> Params {
    Params::defaults(VSYNC.params).unwrap()
}

fn harness(local: MemberId, seeds: &[MemberId]) -> LayerHarness {
    let mut members = vec![local];
    members.extend_from_slice(seeds);
    let view = View::initial(members).unwrap();
    LayerHarness::new(Vsync::new(&params()), local, view)
}

fn views(out: &[Out]) -> Vec<Arc<View>> {
    out.iter()
        .filter_map(|o| match o {
            Out::Up(Up::View(v)) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// Feeds the layer's messages to itself back in, until it is quiet; returns
/// everything else it emitted.
fn loop_back(h: &mut LayerHarness, me: MemberId, out: Vec<Out>) -> Vec<Out> {
    let mut pending: VecDeque<Out> = out.into();
    let mut rest = Vec::new();
    while let Some(o) = pending.pop_front() {
        match o {
            Out::Down(Down::Send { to, msg }) if to == me => pending.extend(h.up(Up::Send { from: me, msg })),
            other => rest.push(other),
        }
    }
    rest
}

fn control_from(h: &mut LayerHarness, from: MemberId, c: &Control, cast: bool) -> Vec<Out> {
    let mut msg = wire::control(c, false);
    msg.flags_mut().insert(MsgFlags::OOB);
    if cast {
        h.up(Up::Cast { from, msg })
    } else {
        h.up(Up::Send { from, msg })
    }
}

#[test]
fn a_member_without_seeds_founds_a_primary_group_at_once() {
    let me = MemberId::sim(0);
    let h = harness(me, &[]);
    let v = views(h.init_output());
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].members(), &[me]);
    assert!(v[0].is_primary());
    assert_eq!(v[0].id().counter, 1);
    assert!(!h.backpressure(), "a founded group takes casts");
}

#[test]
fn a_joiner_asks_its_seeds_refuses_casts_and_founds_when_nobody_answers() {
    let (me, seed) = (MemberId::sim(1), MemberId::sim(7));
    let mut h = harness(me, &[seed]);
    assert!(h.backpressure(), "outside a view the stack refuses casts");
    assert!(views(h.init_output()).is_empty());
    let joins = |out: &[Out]| out.iter().filter(|o| matches!(o, Out::Down(Down::Send { to, .. }) if *to == seed)).count();
    assert_eq!(joins(h.init_output()), 1);
    // A lower-addressed member trying to join too holds this one back.
    let lower = MemberId::sim(0);
    control_from(&mut h, lower, &Control::Join { joiner: lower, last_counter: 0 }, false);
    let mut out = h.advance(Instant::ZERO + Duration::from_millis(600));
    control_from(&mut h, lower, &Control::Join { joiner: lower, last_counter: 0 }, false);
    out.extend(h.advance(Instant::ZERO + Duration::from_millis(1500)));
    assert!(views(&out).is_empty(), "waits for the lower joiner to found");
    assert!(joins(&out) >= 6, "keeps asking every join_retry_ms");
    // Once that one has been silent for join_timeout_ms, it founds.
    let out = h.advance(Instant::ZERO + Duration::from_millis(2200));
    let v = views(&out);
    assert_eq!(v.len(), 1, "{out:?}");
    assert_eq!(v[0].members(), &[me]);
    assert!(!h.backpressure());
}

#[test]
fn a_join_runs_a_round_and_the_state_request_comes_after_old_deliveries_and_before_the_view() {
    let me = MemberId::sim(0);
    let joiner = MemberId::sim(5);
    let mut h = harness(me, &[]);
    // A cast of this member in view 1, looped back as the engine would.
    let out = h.down(Down::Cast(Msg::new(Bytes::from_static(b"m0"))));
    let Some(Out::Down(Down::Cast(sent))) = out.into_iter().next() else { panic!("cast passed down") };
    let delivered = h.up(Up::Cast { from: me, msg: sent });
    assert!(matches!(&delivered[..], [Out::Up(Up::Cast { .. })]));

    let out = control_from(&mut h, joiner, &Control::Join { joiner, last_counter: 0 }, false);
    let rest = loop_back(&mut h, me, out);
    let ups: Vec<&Up> = rest.iter().filter_map(|o| if let Out::Up(u) = o { Some(u) } else { None }).collect();
    let pos = |f: &dyn Fn(&Up) -> bool| ups.iter().position(|u| f(u)).unwrap_or_else(|| panic!("missing event in {ups:?}"));
    let block = pos(&|u| matches!(u, Up::Block));
    let request = pos(&|u| matches!(u, Up::StateRequest { joiners, .. } if joiners == &vec![joiner]));
    let view = pos(&|u| matches!(u, Up::View(v) if v.members() == [me, joiner]));
    assert!(block < request && request < view, "{ups:?}");
    // The new view goes to the joiner, and the layers below learn it.
    assert!(rest.iter().any(|o| matches!(o, Out::Down(Down::Send { to, .. }) if *to == joiner)));
    assert!(rest.iter().any(|o| matches!(o, Out::Down(Down::View(v)) if v.len() == 2)));
    // The state goes to the joiner, reliably (not out of band).
    let Some(Up::StateRequest { token, .. }) = ups.get(request) else { unreachable!() };
    let out = h.down(Down::StateChunk { token: *token, data: Bytes::from_static(b"state") });
    assert!(matches!(&out[..], [Out::Down(Down::Send { to, msg })] if *to == joiner && !msg.flags().contains(MsgFlags::OOB)));
    let out = h.down(Down::StateChunk { token: token + 1, data: Bytes::from_static(b"x") });
    assert!(out.is_empty());
    assert_eq!(h.dropped("stale_state_token"), 1);
}

#[test]
fn casts_made_during_a_change_wait_and_go_out_in_the_next_view() {
    let me = MemberId::sim(0);
    let joiner = MemberId::sim(5);
    let mut h = harness(me, &[]);
    let out = control_from(&mut h, joiner, &Control::Join { joiner, last_counter: 0 }, false);
    // Deliver only the flush to itself: the member blocks.
    let flush = out.into_iter().find_map(|o| match o {
        Out::Down(Down::Send { to, msg }) if to == me => Some(msg),
        _ => None,
    });
    let out = h.up(Up::Send { from: me, msg: flush.expect("a flush to itself") });
    assert!(out.iter().any(|o| matches!(o, Out::Up(Up::Block))));
    assert!(h.backpressure());
    let held = h.down(Down::Cast(Msg::new(Bytes::from_static(b"later"))));
    assert!(held.is_empty(), "held while blocked: {held:?}");
    let rest = loop_back(&mut h, me, out);
    let view_at = rest.iter().position(|o| matches!(o, Out::Up(Up::View(v)) if v.len() == 2)).expect("new view");
    let cast_at = rest.iter().position(|o| matches!(o, Out::Down(Down::Cast(m)) if !m.flags().contains(MsgFlags::OOB))).expect("held cast released");
    assert!(view_at < cast_at);
    assert!(!h.backpressure());
}

#[test]
fn forged_and_stale_control_is_dropped_and_counted() {
    let me = MemberId::sim(0);
    let stranger = MemberId::sim(9);
    let mut h = harness(me, &[]);
    let before = h.view().clone();
    let b = Ballot { number: 99, coordinator: stranger };
    control_from(&mut h, stranger, &Control::Flush { ballot: b, view: before.id(), participants: vec![me] }, false);
    assert_eq!(h.dropped("control_not_member"), 1);
    // A view for a lineage this member is not in.
    let other = ViewId { counter: 50, creator: stranger };
    let outcome = Outcome::Install { id: ViewId { counter: 51, creator: stranger }, members: vec![stranger], primary: true, state_to: vec![], provider: None };
    control_from(&mut h, stranger, &Control::View { from: other, ballot: b, outcome }, false);
    assert_eq!(h.dropped("view_other_lineage"), 1);
    // A join naming someone else, from a non-member.
    control_from(&mut h, stranger, &Control::Join { joiner: MemberId::sim(3), last_counter: 0 }, false);
    assert_eq!(h.dropped("forged_join"), 1);
    // A leave for a non-member, and suspicions from a non-member.
    control_from(&mut h, stranger, &Control::Leave { member: stranger }, false);
    control_from(&mut h, stranger, &Control::Suspect(vec![me]), false);
    assert_eq!(h.dropped("leave_not_member") + h.dropped("suspect_not_for_me"), 2);
    // Data from a non-member.
    let mut cast = Msg::new(Bytes::from_static(b"x"));
    cast.push(&[wire::kind::CAST]);
    h.up(Up::Cast { from: stranger, msg: cast });
    assert_eq!(h.dropped("cast_not_member"), 1);
    assert_eq!(h.view().id(), before.id(), "nothing changed the view");
}

#[test]
fn strangers_cannot_grow_the_contact_list_without_bound() {
    let me = MemberId::sim(0);
    let mut h = harness(me, &[MemberId::sim(1)]);
    for i in 0..3000u16 {
        let stranger = MemberId::sim(1000 + i);
        let members: Vec<MemberId> = (0..8).map(|j| MemberId::sim(10_000 + i * 8 + j)).collect();
        let view = ViewId { counter: 1, creator: stranger };
        control_from(&mut h, stranger, &Control::Probe { view, members, primary: false }, false);
        control_from(&mut h, stranger, &Control::Join { joiner: stranger, last_counter: 0 }, false);
    }
    let contacts = h.stats().get("contacts").unwrap();
    assert!(contacts <= MAX_CONTACTS as u64, "{contacts} contacts remembered");
    // Join requests go to the bounded contact list, not to every name heard.
    let out = h.advance(Instant::ZERO + Duration::from_millis(250));
    let sends = out.iter().filter(|o| matches!(o, Out::Down(Down::Send { .. }))).count();
    assert!(sends <= MAX_CONTACTS, "{sends} join requests in one round");
}

quickcheck! {
    fn random_packets_never_panic_or_change_the_view(packets: Vec<(u8, bool, Vec<u8>)>) -> bool {
        let me = MemberId::sim(0);
        let mut h = harness(me, &[]);
        let before = h.view().id();
        for (sender, cast, data) in packets {
            let from = MemberId::sim(u16::from(sender % 4));
            let msg = Msg::new(Bytes::from(data));
            let _ = if cast { h.up(Up::Cast { from, msg }) } else { h.up(Up::Send { from, msg }) };
        }
        h.view().id() == before || h.view().members().contains(&me)
    }

    fn random_control_payloads_never_panic(kind_byte: u8, body: Vec<u8>) -> bool {
        let me = MemberId::sim(0);
        let mut h = harness(me, &[MemberId::sim(1)]);
        let mut msg = Msg::new(Bytes::from(body));
        msg.push(&[kind_byte % 8]);
        let _ = h.up(Up::Send { from: MemberId::sim(1), msg });
        let _ = h.advance(Instant::ZERO + Duration::from_secs(5));
        true
    }
}

#[test]
fn a_suspicion_from_below_removes_a_member_at_once() {
    let me = MemberId::sim(0);
    let joiner = MemberId::sim(5);
    let stranger = MemberId::sim(9);
    let mut h = harness(me, &[]);
    let out = control_from(&mut h, joiner, &Control::Join { joiner, last_counter: 0 }, false);
    let rest = loop_back(&mut h, me, out);
    assert!(views(&rest).iter().any(|v| v.members() == [me, joiner]));
    // Long before `suspect_ms`, the transport reports the connection lost.
    h.advance(Instant::from_nanos(10_000_000));
    let out = h.up(Up::Suspect(joiner));
    let rest = loop_back(&mut h, me, out);
    assert!(rest.iter().any(|o| matches!(o, Out::Up(Up::Suspect(m)) if *m == joiner)), "{rest:?}");
    let after: Vec<_> = views(&rest);
    assert!(after.iter().any(|v| v.members() == [me]), "a view without the lost member: {rest:?}");
    // Suspicions of non-members (and of itself) change nothing.
    for m in [stranger, me] {
        let out = h.up(Up::Suspect(m));
        assert!(out.is_empty(), "{out:?}");
    }
}
