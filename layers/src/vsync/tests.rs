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

#[test]
fn silence_while_the_application_is_behind_is_not_a_failure() {
    let me = MemberId::sim(0);
    let joiner = MemberId::sim(5);
    let mut h = harness(me, &[]);
    let out = control_from(&mut h, joiner, &Control::Join { joiner, last_counter: 0 }, false);
    let rest = loop_back(&mut h, me, out);
    assert!(views(&rest).iter().any(|v| v.members() == [me, joiner]));
    let suspected = |out: &[Out]| out.iter().any(|o| matches!(o, Out::Up(Up::Suspect(m)) if *m == joiner));
    // Ten seconds without a word from the joiner (suspect_ms is 1.5 s), but
    // the runtime read nothing: the application was behind.
    h.set_app_behind(true);
    let out = h.advance(h.now() + Duration::from_secs(10));
    assert!(!suspected(&out), "{out:?}");
    // Input resumes and the joiner stays silent: it gets a fresh period
    // (suspect_ms, 1.5 s) from the last check, and is suspected after it.
    h.set_app_behind(false);
    let out = h.advance(h.now() + Duration::from_millis(1000));
    assert!(!suspected(&out), "{out:?}");
    let out = h.advance(h.now() + Duration::from_millis(1000));
    assert!(suspected(&out), "{out:?}");
}

/// Member 2 of view [0, 1, 2], installed by a view from coordinator 0:
/// the harness and the view's id.
fn participant_of_three() -> (LayerHarness, ViewId) {
    let (me, coordinator) = (MemberId::sim(2), MemberId::sim(0));
    let mut h = harness(me, &[coordinator]);
    let id = ViewId { counter: 2, creator: coordinator };
    let members = vec![coordinator, MemberId::sim(1), me];
    let outcome = Outcome::Install { id, members: members.clone(), primary: true, state_to: vec![], provider: Some(coordinator) };
    let ballot = Ballot { number: 1, coordinator };
    let from = ViewId { counter: 1, creator: coordinator };
    let out = control_from(&mut h, coordinator, &Control::View { from, ballot, outcome }, false);
    assert!(views(&out).iter().any(|v| v.members() == members), "{out:?}");
    (h, id)
}

fn data_cast(h: &mut LayerHarness, from: MemberId, body: &'static [u8]) -> Vec<Out> {
    let mut msg = Msg::new(Bytes::from_static(body));
    msg.push(&[wire::kind::CAST]);
    h.up(Up::Cast { from, msg })
}

/// The bodies of the casts delivered upwards, in order.
fn delivered(out: &[Out]) -> Vec<Bytes> {
    out.iter()
        .filter_map(|o| match o {
            Out::Up(Up::Cast { msg, .. }) => Some(msg.to_bytes()),
            _ => None,
        })
        .collect()
}

/// The control messages sent to `to`, decoded.
fn controls_to(out: &[Out], to: MemberId) -> Vec<Control> {
    out.iter()
        .filter_map(|o| match o {
            Out::Down(Down::Send { to: t, msg }) if *t == to => {
                let mut msg = msg.clone();
                (msg.pop_with(|r| r.u8()) == Ok(wire::kind::CONTROL)).then(|| wire::decode(&msg).expect("a well-formed control"))
            }
            _ => None,
        })
        .collect()
}

/// The round that removes member 1 (cut: two casts of 0, `departed_cut` of 1).
fn round_removing_1(view: ViewId, departed_cut: u64) -> (Control, Control) {
    let (c0, c2) = (MemberId::sim(0), MemberId::sim(2));
    let ballot = Ballot { number: 2, coordinator: c0 };
    let flush = Control::Flush { ballot, view, participants: vec![c0, c2] };
    let outcome = Outcome::Install { id: ViewId { counter: 3, creator: c0 }, members: vec![c0, c2], primary: true, state_to: vec![], provider: Some(c0) };
    let accepted = Accepted { ballot, outcome, cut: vec![2, departed_cut, 0], flushed: vec![c0, c2] };
    let cut = Control::Cut { ballot, accepted, holders: vec![Some(c0), Some(c0), Some(c2)] };
    (flush, cut)
}

/// The event order of the replay `seed=3776592447091755844 ... crash(1)@1205ms
/// tree=1` (sim_order's `a_departing_senders_cast_keeps_its_place_before_casts_that_depend_on_it`):
/// member 1 crashes right after casting `d`; member 0 delivers `d` and casts
/// `b`; this member learns of the round (a fast suspicion from the transport)
/// before `d` comes up, and CAUSAL below passes `d` up before `b`, which
/// depends on it. `d` waits for the cut; `b` must wait behind it, or the
/// application sees `b` before `d`.
#[test]
fn a_cast_after_a_departing_senders_held_cast_waits_behind_it() {
    let (c0, c1) = (MemberId::sim(0), MemberId::sim(1));
    let (mut h, view) = participant_of_three();
    assert_eq!(delivered(&data_cast(&mut h, c0, b"a")), [&b"a"[..]]);
    let (flush, cut) = round_removing_1(view, 1);
    let out = control_from(&mut h, c0, &flush, false);
    assert!(out.iter().any(|o| matches!(o, Out::Up(Up::Block))), "{out:?}");
    let reports = controls_to(&out, c0);
    assert!(matches!(&reports[..], [Control::FlushState { sent: 0, available, .. }] if available == &[1, 0, 0]), "{reports:?}");

    let out = data_cast(&mut h, c1, b"d");
    assert!(delivered(&out).is_empty(), "a departing sender's cast waits for the cut: {out:?}");
    let out = data_cast(&mut h, c0, b"b");
    assert!(delivered(&out).is_empty(), "a cast that came up after a held one waits behind it: {out:?}");
    assert_eq!(h.stats().get("held"), Some(2));

    let out = control_from(&mut h, c0, &cut, false);
    assert_eq!(delivered(&out), [&b"d"[..], &b"b"[..]], "{out:?}");
    assert!(matches!(&controls_to(&out, c0)[..], [Control::FlushOk { .. }]), "flushed to the cut: {out:?}");
    assert_eq!(h.stats().get("held"), Some(0));
}

/// A departing sender's cast past the cut holds nothing back: a cast that
/// depended on it would have brought it into the cut, so those behind it
/// are concurrent with it and are delivered; it is not.
#[test]
fn a_held_cast_beyond_the_cut_holds_back_nothing_behind_it() {
    let (c0, c1) = (MemberId::sim(0), MemberId::sim(1));
    let (mut h, view) = participant_of_three();
    data_cast(&mut h, c0, b"a");
    let (flush, cut) = round_removing_1(view, 1);
    control_from(&mut h, c0, &flush, false);
    for body in [&b"d1"[..], b"d2"] {
        let mut msg = Msg::new(Bytes::copy_from_slice(body));
        msg.push(&[wire::kind::CAST]);
        assert!(delivered(&h.up(Up::Cast { from: c1, msg })).is_empty());
    }
    assert!(delivered(&data_cast(&mut h, c0, b"b")).is_empty());

    let out = control_from(&mut h, c0, &cut, false);
    assert_eq!(delivered(&out), [&b"d1"[..], &b"b"[..]], "{out:?}");
    assert!(matches!(&controls_to(&out, c0)[..], [Control::FlushOk { .. }]), "flushed to the cut: {out:?}");
    assert_eq!(h.stats().get("held"), Some(1), "d2 stays held, past the cut");
    let outcome = match &cut {
        Control::Cut { accepted, .. } => accepted.outcome.clone(),
        _ => unreachable!(),
    };
    let out = control_from(&mut h, c0, &Control::View { from: view, ballot: Ballot { number: 2, coordinator: c0 }, outcome }, false);
    assert!(views(&out).iter().any(|v| v.members() == [c0, MemberId::sim(2)]), "{out:?}");
    assert!(delivered(&out).is_empty(), "{out:?}");
    assert_eq!((h.stats().get("held"), h.stats().get("beyond_cut")), (Some(0), Some(1)));
}
