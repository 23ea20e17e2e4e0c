//! The runtime (Endpoint, Group, Events) over the in-process network: delivery,
//! backpressure, demultiplexing, bad input, leave and shutdown.

mod runtime_support;

use bytes::Bytes;
use runtime_support::*;
use std::pin::pin;
use std::sync::Arc;
use strata_stack::engine::{group_id, FRAME_MAGIC};
use strata_stack::runtime::{Endpoint, Events, Group, GroupError, JoinConfig, JoinError, CAST_QUEUE};
use strata_stack::{AppEvent, BuildError, Delivery, MemberId, Registry};
use strata_transport::mem::MemNetwork;

fn endpoints(net: &MemNetwork, n: usize, registry: &Arc<Registry>) -> Vec<Endpoint> {
    (0..n).map(|_| Endpoint::new(net.bind("127.0.0.1:0".parse().unwrap()), registry.clone())).collect()
}

fn members(eps: &[Endpoint]) -> Vec<MemberId> {
    eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect()
}

async fn join_all(eps: &[Endpoint], group: &str, stack: &str, event_capacity: usize) -> Vec<(Group, Events)> {
    let all = members(eps);
    let mut out = Vec::new();
    for ep in eps {
        let mut cfg = JoinConfig::new(group, stack);
        cfg.members = all.clone();
        cfg.event_capacity = event_capacity;
        out.push(ep.join(cfg).await.expect("join"));
    }
    out
}

async fn counter(ep: &Endpoint, name: &str) -> u64 {
    let s = ep.stats().await.expect("endpoint stats");
    s.counters.get(name).or_else(|| s.dropped.iter().find(|(r, _)| *r == name).map(|(_, n)| *n)).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_deliver_every_cast_in_sender_order() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 3, &test_registry());
    let mut joined = join_all(&eps, "g", "PASS", 1024).await;
    let k = 300;
    let casters: Vec<_> = joined.iter().map(|(g, _)| g.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, k, 100).await })).collect();
    let all = members(&eps);
    for (group, events) in &mut joined {
        let got = deliveries(events, 3 * k as usize).await;
        check_fifo(&got, &all, k);
        let view = group.view().await.unwrap();
        assert_eq!(view.members(), &all[..], "static view, sorted by address");
    }
    for c in casters {
        c.await.unwrap();
    }
    let stats = joined[0].0.stats().await.unwrap();
    assert_eq!(stats.last().unwrap().name, "engine");
    assert_eq!(stats.last().unwrap().counters.get("datagrams_in"), Some(2 * k));
    for ep in &eps {
        ep.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_to_point_sends_reach_only_their_target() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 3, &test_registry());
    let mut joined = join_all(&eps, "g", "PASS", 1024).await;
    let target = joined[2].0.local();
    joined[0].0.send(target, Bytes::from_static(b"just for you")).await.unwrap();
    joined[0].0.cast(Bytes::from_static(b"for all")).await.unwrap();
    // Member 1 sees only the cast; member 2 the send first (same sender, FIFO).
    match next_event(&mut joined[1].1).await {
        Some(AppEvent::Deliver { kind: Delivery::Cast, body, .. }) => assert_eq!(&body[..], b"for all"),
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut joined[2].1).await {
        Some(AppEvent::Deliver { from, kind: Delivery::Send, body }) => {
            assert_eq!(from, joined[0].0.local());
            assert_eq!(&body[..], b"just for you");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_makes_cast_wait_until_it_reopens() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 2, &test_registry());
    let mut joined = join_all(&eps, "g", "GATE", 1024).await;
    let (a, _a_events) = &joined[0];
    let a = a.clone();
    a.cast(Bytes::from_static(b"close")).await.unwrap();
    // The driver takes one more cast and parks it; CAST_QUEUE more fill the
    // queue. Those all return, because the queue has room for them.
    for i in 0..=CAST_QUEUE {
        a.cast(Bytes::from(format!("m{i}"))).await.unwrap();
    }
    // The driver has now taken `close` and parked m0 (else the queue could not
    // have held the rest): the next cast must wait.
    let mut blocked = pin!(a.cast(Bytes::from(format!("m{}", CAST_QUEUE + 1))));
    assert!(is_pending(&mut blocked).await, "cast returned while the window was closed");
    // B delivers `close` and nothing after it while the window is closed.
    let (b, b_events) = &mut joined[1];
    match next_event(b_events).await {
        Some(AppEvent::Deliver { body, .. }) => assert_eq!(&body[..], b"close"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(is_pending(&mut blocked).await, "cast returned while the window was closed");
    assert!(b_events.try_next().is_none(), "a cast passed the closed window");
    // B's `open` reopens A's window: everything flows, in order.
    b.cast(Bytes::from_static(b"open")).await.unwrap();
    blocked.await.unwrap();
    let mut expected = 0;
    while expected <= CAST_QUEUE + 1 {
        match next_event(b_events).await {
            Some(AppEvent::Deliver { from, body, .. }) if from == a.local() => {
                assert_eq!(body, Bytes::from(format!("m{expected}")));
                expected += 1;
            }
            Some(AppEvent::Deliver { .. }) => {} // B's own `open`
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_from_a_timer_paces_casts_without_loss() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 2, &test_registry());
    let mut joined = join_all(&eps, "g", "PACE(pause_ms=1)", 1024).await;
    let a = joined[0].0.clone();
    let k = 40;
    let caster = tokio::spawn(async move { cast_payloads(&a, k, 10).await });
    let got = deliveries(&mut joined[1].1, k as usize).await;
    check_fifo(&got, &[joined[0].0.local()], k);
    caster.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_one_endpoint_do_not_cross_talk() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 2, &test_registry());
    let mut g1 = join_all(&eps, "one", "PASS", 1024).await;
    let mut g2 = join_all(&eps, "two", "PASS", 1024).await;
    let k = 50;
    for i in 0..k {
        g1[0].0.cast(Bytes::from(format!("one:{i}"))).await.unwrap();
        g2[0].0.cast(Bytes::from(format!("two:{i}"))).await.unwrap();
        g2[1].0.cast(Bytes::from(format!("two-b:{i}"))).await.unwrap();
    }
    // Each side's streams hold only their group's messages.
    for (groups, prefixes) in [(&mut g1, &["one:"][..]), (&mut g2, &["two:", "two-b:"][..])] {
        for (_, events) in groups.iter_mut() {
            let got = deliveries(events, k * prefixes.len()).await;
            for (_, body) in &got {
                let text = std::str::from_utf8(body).unwrap();
                assert!(prefixes.iter().any(|p| text.starts_with(p)), "{text} crossed into the wrong group");
            }
        }
    }
    // A cast to `one` now is the next event of `one`'s stream and no other.
    g1[1].0.cast(Bytes::from_static(b"one:last")).await.unwrap();
    match next_event(&mut g1[0].1).await {
        Some(AppEvent::Deliver { body, .. }) => assert_eq!(&body[..], b"one:last"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(g2[0].1.try_next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_frames_for_unknown_groups_are_dropped_and_counted() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 2, &test_registry());
    let mut joined = join_all(&eps, "g", "PASS", 1024).await;
    let (a, b) = (eps[0].local_addr(), eps[1].local_addr());
    let stranger = "127.0.0.1:9".parse().unwrap();
    let mut unknown = vec![FRAME_MAGIC, 1];
    unknown.extend_from_slice(&group_id("nobody-joined-this").to_be_bytes());
    unknown.extend_from_slice(&[0; 40]);
    let fingerprint = test_registry().resolve("PASS").unwrap().fingerprint();
    let mut wrong_stack = vec![FRAME_MAGIC, 1];
    wrong_stack.extend_from_slice(&group_id("g").to_be_bytes());
    wrong_stack.extend_from_slice(&fingerprint.wrapping_add(1).to_be_bytes());
    wrong_stack.extend_from_slice(&[4, 127, 0, 0, 1, 0, 9, 0]);
    let mut bad_sender = vec![FRAME_MAGIC, 1];
    bad_sender.extend_from_slice(&group_id("g").to_be_bytes());
    bad_sender.extend_from_slice(&fingerprint.to_be_bytes());
    bad_sender.extend_from_slice(&[0xff; 7]);
    let garbage: [&[u8]; 6] = [b"", b"\xa1", b"hello, world", &unknown, &wrong_stack, &bad_sender];
    for g in garbage {
        assert!(net.inject(stranger, a, Bytes::copy_from_slice(g)));
    }
    // The queue into A is FIFO: once B's cast is delivered, the garbage before
    // it has been handled too.
    joined[1].0.cast(Bytes::from_static(b"still alive")).await.unwrap();
    match next_event(&mut joined[0].1).await {
        Some(AppEvent::Deliver { from, body, .. }) => {
            assert_eq!(from.addr(), b);
            assert_eq!(&body[..], b"still alive");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(counter(&eps[0], "not_a_frame").await, 3);
    assert_eq!(counter(&eps[0], "unknown_group").await, 1);
    assert_eq!(counter(&eps[0], "datagrams_in").await, 7);
    // Frames of another stack and with a bad sender reached the group's stack
    // and were dropped there.
    let stats = joined[0].0.stats().await.unwrap();
    let engine = stats.last().unwrap();
    for reason in ["wrong_stack", "bad_sender"] {
        assert!(engine.dropped.iter().any(|(r, n)| *r == reason && *n == 1), "no {reason} in {engine:?}");
    }
    // And the endpoint still sends.
    joined[0].0.cast(Bytes::from_static(b"me too")).await.unwrap();
    match next_event(&mut joined[1].1).await {
        Some(AppEvent::Deliver { .. }) => {} // its own cast, looped back
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut joined[1].1).await {
        Some(AppEvent::Deliver { body, .. }) => assert_eq!(&body[..], b"me too"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_stack_limit_is_refused_and_the_group_goes_on() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 1, &test_registry());
    let (group, mut events) = eps[0].join(JoinConfig::new("g", "PASS")).await.unwrap();
    let max = group.max_message();
    assert!(max > 60_000 && max < 65_507, "a datagram minus the frame header: {max}");
    let refused = group.cast(Bytes::from(vec![1u8; max + 1])).await;
    assert_eq!(refused, Err(GroupError::TooLarge { len: max + 1, max }));
    assert_eq!(group.send(group.local(), Bytes::from(vec![1u8; max + 1])).await, Err(GroupError::TooLarge { len: max + 1, max }));
    group.cast(Bytes::from(vec![2u8; max])).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Some(AppEvent::Deliver { body, .. }) if body.len() == max));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stack_string_fails_join_with_the_spec_error() {
    let net = MemNetwork::new();
    let registry = test_registry();
    let ep = Endpoint::new(net.bind("127.0.0.1:0".parse().unwrap()), registry.clone());
    let err = ep.join(JoinConfig::new("g", "PASS:GATW")).await.unwrap_err();
    let spec = registry.resolve("PASS:GATW").unwrap_err();
    match &err {
        JoinError::Build(BuildError::Spec(e)) => assert_eq!(e, &spec),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.to_string(), spec.to_string());
    assert!(err.to_string().contains("did you mean GATE?"), "{err}");
    // The endpoint is unharmed, and a group name can be joined once.
    let (_g, _events) = ep.join(JoinConfig::new("g", "PASS")).await.unwrap();
    assert!(matches!(ep.join(JoinConfig::new("g", "PASS")).await, Err(JoinError::DuplicateGroup(name)) if name == "g"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_delivers_left_then_calls_fail_and_the_name_can_be_joined_again() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 1, &test_registry());
    let (group, mut events) = eps[0].join(JoinConfig::new("g", "PASS")).await.unwrap();
    group.cast(Bytes::from_static(b"before")).await.unwrap();
    group.flush().await.unwrap();
    let clone = group.clone();
    group.leave().await.unwrap();
    assert_eq!(clone.cast(Bytes::from_static(b"after")).await, Err(GroupError::Left));
    assert_eq!(clone.flush().await, Err(GroupError::Left));
    assert_eq!(clone.view().await.unwrap_err(), GroupError::Left);
    assert_eq!(clone.stats().await.unwrap_err(), GroupError::Left);
    assert_eq!(clone.leave().await, Err(GroupError::Left));
    // The stream: the cast (flushes are answered, not forwarded), Left, end.
    assert!(matches!(next_event(&mut events).await, Some(AppEvent::Deliver { body, .. }) if &body[..] == b"before"));
    assert_eq!(next_event(&mut events).await, Some(AppEvent::Left));
    assert_eq!(next_event(&mut events).await, None);
    assert_eq!(counter(&eps[0], "groups").await, 0);
    let (again, mut events) = eps[0].join(JoinConfig::new("g", "PASS")).await.unwrap();
    again.cast(Bytes::from_static(b"new")).await.unwrap();
    assert!(matches!(next_event(&mut events).await, Some(AppEvent::Deliver { body, .. }) if &body[..] == b"new"));
    assert_eq!(clone.cast(Bytes::from_static(b"old handle")).await, Err(GroupError::Left));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_taken_in_batches_in_order_and_the_stream_ends_after_left() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 1, &test_registry());
    let mut joined = join_all(&eps, "g", "PASS", 1024).await;
    let (group, events) = &mut joined[0];
    let k = 300;
    cast_payloads(group, k, 40).await;
    let mut batch = Vec::new();
    assert_eq!(events.next_many(&mut batch, 0).await, 0, "a limit of 0 takes nothing");
    let mut got = Vec::new();
    let mut calls = 0;
    while got.len() < k as usize {
        let n = tokio::time::timeout(PATIENCE, events.next_many(&mut batch, 64)).await.expect("events within the patience");
        assert!((1..=64).contains(&n) && batch.len() == n, "{n} events appended, within the limit");
        calls += 1;
        for ev in batch.drain(..) {
            match ev {
                AppEvent::Deliver { from, kind: Delivery::Cast, body } => got.push((from, body)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    check_fifo(&got, &members(&eps), k);
    assert!(calls >= k.div_ceil(64), "{calls} calls");
    group.leave().await.unwrap();
    assert_eq!(events.next_many(&mut batch, 64).await, 1);
    assert_eq!(batch, [AppEvent::Left]);
    assert_eq!(events.next_many(&mut batch, 64).await, 0, "then the stream ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_group() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 1, &test_registry());
    let (group, mut events) = eps[0].join(JoinConfig::new("g", "PASS")).await.unwrap();
    eps[0].shutdown().await;
    assert_eq!(group.cast(Bytes::from_static(b"x")).await, Err(GroupError::Closed));
    assert_eq!(group.view().await.unwrap_err(), GroupError::Closed);
    assert_eq!(next_event(&mut events).await, None);
    assert!(matches!(eps[0].join(JoinConfig::new("h", "PASS")).await, Err(JoinError::Closed)));
    eps[0].shutdown().await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_application_stops_input_instead_of_buffering_it() {
    // Receive queues of 16 datagrams stand in for a socket buffer.
    let queue = 16;
    // Unbundled: every cast is a datagram of its own in the queue.
    let net = MemNetwork::with_limits(queue, 65_507).with_bundle(0);
    let eps = endpoints(&net, 2, &test_registry());
    let capacity = 4;
    let all = members(&eps);
    let mut joined = Vec::new();
    // A reads slowly (a small events channel); B keeps up with its own loopback.
    for (ep, events) in eps.iter().zip([capacity, 1024]) {
        let mut cfg = JoinConfig::new("g", "PASS");
        cfg.members = all.clone();
        cfg.event_capacity = events;
        joined.push(ep.join(cfg).await.expect("join"));
    }
    let k = 200u64;
    // A does not read while B casts everything.
    cast_payloads(&joined[1].0, k, 20).await;
    while counter(&eps[1], "datagrams_sent").await + counter(&eps[1], "send_drops").await < k {
        tokio::task::yield_now().await;
    }
    // A's driver stopped reading once its application fell behind, so the
    // network dropped what A could not hold: A buffered at most the events
    // channel, one pending event, one receive batch (64) and the queue.
    let dropped = counter(&eps[1], "send_drops").await;
    let most_held = (capacity + 1 + 64 + queue) as u64;
    assert!(dropped >= k - most_held, "A took {} of {k} datagrams for an application that did not read", k - dropped);
    // Reading resumes the group: everything the network did not drop is
    // delivered, in order (nothing is dropped inside the runtime), and a new
    // cast gets through.
    let mut last = None;
    for _ in 0..k - dropped {
        match next_event(&mut joined[0].1).await {
            Some(AppEvent::Deliver { body, .. }) => {
                let (_, i) = strata_transport::payload::split_id(strata_transport::payload::id(&body).unwrap()).unwrap();
                assert!(last.is_none_or(|l| i > l), "out of order after {last:?}: {i}");
                last = Some(i);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(counter(&eps[0], "app_slow").await, 0);
    joined[1].0.cast(Bytes::from_static(b"resumed")).await.unwrap();
    match next_event(&mut joined[0].1).await {
        Some(AppEvent::Deliver { body, .. }) => assert_eq!(&body[..], b"resumed"),
        other => panic!("unexpected {other:?}"),
    }
}

/// The first view of `n` members an application sees, reading every event before it.
async fn view_of(events: &mut Events, n: usize) {
    loop {
        match next_event(events).await {
            Some(AppEvent::View(v)) if v.len() == n => return,
            Some(_) => {}
            None => panic!("the events ended before a view of {n}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_that_falls_behind_does_not_make_its_member_suspect_the_others() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 2, &Arc::new(strata_layers::builtin()));
    let stack = "FRAG:NAK:VSYNC(heartbeat_ms=20,suspect_ms=200)";
    let config = |seeds: Vec<MemberId>, events: usize| {
        let mut cfg = JoinConfig::new("g", stack);
        cfg.incarnation = 1;
        cfg.members = seeds;
        cfg.event_capacity = events;
        cfg
    };
    // B founds the group; A joins through it with room for 2 events.
    let (b, mut b_events) = eps[1].join(config(vec![], 1024)).await.expect("join");
    let (a, mut a_events) = eps[0].join(config(vec![MemberId::new(eps[1].local_addr(), 0)], 2)).await.expect("join");
    view_of(&mut a_events, 2).await;
    view_of(&mut b_events, 2).await;
    let k = 200u64;
    cast_payloads(&b, k, 100).await;
    // A's application reads nothing for five suspicion periods, so its
    // runtime reads nothing for the group either; B keeps reading.
    let b_reader = tokio::spawn(async move {
        let mut changes = 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, b_events.next()).await {
            changes += u32::from(matches!(ev, AppEvent::View(_) | AppEvent::Block | AppEvent::Suspect(_)));
        }
        changes
    });
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    // Then A takes all of B's casts, and nothing else came first: no
    // suspicion of B, no view change.
    let mut delivered = 0;
    while delivered < k {
        match next_event(&mut a_events).await {
            Some(AppEvent::Deliver { .. }) => delivered += 1,
            other => panic!("after {delivered} deliveries, {other:?}"),
        }
    }
    assert_eq!(b_reader.await.unwrap(), 0, "B saw no view change either");
    let stats = a.stats().await.unwrap();
    let vsync = stats.iter().find(|l| l.name == "VSYNC").unwrap();
    assert!(vsync.counters.get("checks_while_app_behind").unwrap_or(0) > 0, "{vsync:?}");
    assert_eq!(vsync.counters.get("suspicions"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaced_causal_senders_overrunning_small_queues_get_everything_through() {
    // Every cast a datagram of its own into queues of 256: the queues
    // overflow again and again and NAK repairs. CAUSAL at a lagging member
    // holds the casts that wait for a lost one; unless NAK stops
    // acknowledging those, their senders flood on, the repair is lost in the
    // flood, and CAUSAL gives up past max_held (the group then stalled).
    let net = MemNetwork::with_limits(256, 65_507).with_bundle(0);
    let eps = endpoints(&net, 3, &Arc::new(strata_layers::builtin()));
    let joined = join_all(&eps, "g", "FRAG:NAK(max_unstable=500):CAUSAL(max_held=2000)", 1024).await;
    let k = 10_000;
    let casters: Vec<_> = joined.iter().map(|(g, _)| g.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, k, 64).await })).collect();
    // Every member's application reads all along: one that did not would
    // stop its member's input, and so the group (flow control).
    let readers: Vec<_> = joined
        .into_iter()
        .map(|(group, mut events)| {
            tokio::spawn(async move {
                // Fails on a Problem (CAUSAL reports giving up so) and after
                // PATIENCE without an event.
                let got = deliveries(&mut events, 3 * k as usize).await;
                (group, got)
            })
        })
        .collect();
    let all = members(&eps);
    let mut groups = Vec::new();
    for r in readers {
        let (group, got) = r.await.unwrap();
        check_fifo(&got, &all, k);
        groups.push(group);
    }
    for c in casters {
        c.await.unwrap();
    }
    let mut dropped = 0;
    for (ep, group) in eps.iter().zip(&groups) {
        dropped += counter(ep, "send_drops").await;
        let causal = group.stats().await.unwrap().into_iter().find(|l| l.name == "CAUSAL").unwrap();
        assert_eq!(causal.counters.get("given_up"), Some(0));
        assert!(causal.counters.get("held_max").unwrap() < 2000);
    }
    assert!(dropped > 0, "the queues overflowed (else the test shows nothing)");
}
