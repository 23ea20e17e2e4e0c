//! The runtime over real UDP sockets on loopback, with the built-in layers:
//! `FRAG:NAK` under injected loss delivers every cast of every member once,
//! in order, intact; point-to-point sends are reliable too; flush completes
//! once every member has everything.

mod runtime_support;

use bytes::Bytes;
use runtime_support::*;
use std::sync::Arc;
use strata_stack::runtime::{Endpoint, Events, Group, JoinConfig};
use strata_stack::{AppEvent, Delivery, MemberId};
use strata_transport::payload;
use strata_transport::udp::UdpTransport;

async fn udp_group(n: usize, stack: &str) -> (Vec<Endpoint>, Vec<(Group, Events)>) {
    let registry = Arc::new(strata_layers::builtin());
    let mut endpoints = Vec::new();
    for _ in 0..n {
        let udp = UdpTransport::bind("127.0.0.1:0".parse().unwrap()).await.expect("bind on loopback");
        endpoints.push(Endpoint::new(udp, registry.clone()));
    }
    let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut joined = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut cfg = JoinConfig::new("udp-test", stack);
        cfg.members = members.clone();
        cfg.seed = i as u64;
        joined.push(ep.join(cfg).await.expect("join"));
    }
    (endpoints, joined)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frag_nak_over_lossy_udp_delivers_every_cast_once_in_order() {
    let k = 150;
    let (endpoints, mut joined) = udp_group(3, "LOSS(percent=20,duplicate_percent=5):FRAG(frag_size=1200):NAK").await;
    let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let casters: Vec<_> = joined.iter().map(|(g, _)| g.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, k, 4000).await })).collect();
    let mut retransmitted = 0;
    for (group, events) in &mut joined {
        let got = deliveries(events, 3 * k as usize).await;
        check_fifo(&got, &members, k);
        group.flush().await.expect("own casts become stable");
        let stats = group.stats().await.unwrap();
        let nak = stats.iter().find(|s| s.name == "NAK").unwrap();
        retransmitted += nak.counters.get("retransmitted").unwrap();
        assert_eq!(nak.counters.get("delivered"), Some(3 * k));
    }
    for c in casters {
        c.await.unwrap();
    }
    assert!(retransmitted > 0, "20% loss and nothing was retransmitted?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_to_point_over_lossy_udp_is_reliable_and_ordered() {
    let (endpoints, mut joined) = udp_group(2, "LOSS(percent=25):FRAG:NAK").await;
    let to = MemberId::new(endpoints[1].local_addr(), 0);
    let me = joined[0].0.local().to_string();
    let n = 200u64;
    for i in 0..n {
        joined[0].0.send(to, payload::make(&me, i, 2000)).await.unwrap();
    }
    let mut next = 0;
    while next < n {
        match next_event(&mut joined[1].1).await {
            Some(AppEvent::Deliver { kind: Delivery::Send, body, .. }) => {
                assert!(payload::is_intact(&body));
                let (_, i) = payload::split_id(payload::id(&body).unwrap()).unwrap();
                assert_eq!(i, next, "point-to-point order");
                next += 1;
            }
            Some(AppEvent::Problem(p)) => panic!("{p:?}"),
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    // Nothing more arrives: no duplicates.
    joined[0].0.cast(Bytes::from_static(b"end")).await.unwrap();
    loop {
        match next_event(&mut joined[1].1).await {
            Some(AppEvent::Deliver { kind: Delivery::Cast, body, .. }) => {
                assert_eq!(&body[..], b"end");
                break;
            }
            Some(AppEvent::Deliver { kind: Delivery::Send, .. }) => panic!("a duplicate send"),
            _ => {}
        }
    }
}
