//! The runtime over IP multicast on loopback (`IP_MULTICAST_IF` 127.0.0.1):
//! casts leave as one datagram each and arrive in order; members with no
//! seeds find each other by multicast discovery; groups sharing a
//! transport (and even a multicast address) never hear each other; junk
//! sent to a group's address is counted and dropped.
//!
//! Each test uses its own multicast addresses (tests run in parallel).

mod runtime_support;

use bytes::Bytes;
use runtime_support::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use strata_stack::engine::group_id;
use strata_stack::runtime::{Endpoint, Events, Group, JoinConfig};
use strata_stack::{AppEvent, LayerStats, MemberId};
use strata_transport::ipmc::{IpmcConfig, IpmcTransport, DISCOVERY_MAGIC};

fn mcast(c: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(239, 77, 3, c), port)
}

/// `n` endpoints on loopback, each group name mapped to its address.
async fn endpoints(n: usize, addresses: &[(&str, SocketAddrV4)]) -> Vec<Endpoint> {
    endpoints_bundling(n, addresses, IpmcConfig::default().bundle).await
}

/// As [`endpoints`], bundling up to `bundle` bytes (0: off).
async fn endpoints_bundling(n: usize, addresses: &[(&str, SocketAddrV4)], bundle: usize) -> Vec<Endpoint> {
    let registry = Arc::new(strata_layers::builtin());
    let addresses = addresses.iter().map(|(name, a)| (name.to_string(), *a)).collect::<BTreeMap<_, _>>();
    let config = IpmcConfig { addresses, bundle, ..IpmcConfig::default() };
    let mut out = Vec::new();
    for _ in 0..n {
        let t = IpmcTransport::bind("127.0.0.1:0".parse().unwrap(), config.clone()).await.expect("bind on loopback");
        assert_eq!(t.interface(), Some(Ipv4Addr::LOCALHOST), "the interface defaults to the bind address");
        out.push(Endpoint::new(t, registry.clone()));
    }
    out
}

/// Joins `group` on `eps` with the fixed membership of all of them.
async fn join_static(eps: &[&Endpoint], group: &str, stack: &str) -> Vec<(Group, Events)> {
    let members: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut joined = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let mut cfg = JoinConfig::new(group, stack);
        cfg.members = members.clone();
        cfg.seed = i as u64;
        joined.push(ep.join(cfg).await.expect("join"));
    }
    joined
}

fn counter(stats: &LayerStats, name: &str) -> u64 {
    stats.counters.get(name).unwrap_or_else(|| panic!("no counter {name} in {stats:?}"))
}

fn dropped(stats: &LayerStats, reason: &str) -> u64 {
    stats.dropped.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frag_nak_casts_arrive_in_order_and_leave_as_one_datagram_each() {
    let k = 200;
    // Bundling off: this test counts one datagram per cast (tests/bundle.rs
    // has bundling's own counts).
    let eps = endpoints_bundling(3, &[("ipmc-fifo", mcast(1, 24101))], 0).await;
    let members: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut joined = join_static(&eps.iter().collect::<Vec<_>>(), "ipmc-fifo", "FRAG:NAK").await;
    let casters: Vec<_> = joined.iter().map(|(g, _)| g.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, k, 300).await })).collect();
    for (group, events) in &mut joined {
        let got = deliveries(events, 3 * k as usize).await;
        check_fifo(&got, &members, k);
        group.flush().await.expect("own casts become stable");
    }
    for c in casters {
        c.await.unwrap();
    }
    for ep in &eps {
        let s = ep.stats().await.unwrap();
        let casts = counter(&s, "cast_calls");
        assert!(casts >= k, "{k} casts, {casts} handed to the transport");
        // One datagram per cast whatever the number of peers (UDP would send two).
        assert_eq!(counter(&s, "casts_multicast"), casts);
        let accounted = counter(&s, "datagrams_sent") + counter(&s, "send_drops");
        let expected = casts + counter(&s, "unicast_datagrams") + counter(&s, "discovery_probes_sent") + counter(&s, "discovery_answers_sent");
        assert_eq!(accounted, expected, "every datagram sent is a multicast cast, a unicast send or discovery: {s:?}");
        assert!(counter(&s, "own_multicast") >= k, "own looped-back casts are skipped: {s:?}");
        assert_eq!(counter(&s, "multicast_sockets"), 1);
        assert_eq!(dropped(&s, "not_a_frame"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_seeds_discover_each_other_and_form_one_view() {
    let group = "ipmc-discovery";
    let eps = endpoints(3, &[(group, mcast(2, 24102))]).await;
    let joins: Vec<_> = eps
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut cfg = JoinConfig::new(group, "FRAG:NAK:VSYNC");
                cfg.seed = i as u64;
                assert!(cfg.members.is_empty());
                ep.join(cfg).await.expect("join")
            })
        })
        .collect();
    let mut joined = Vec::new();
    for j in joins {
        joined.push(j.await.unwrap());
    }
    let mut views = Vec::new();
    for (_, events) in &mut joined {
        loop {
            match next_event(events).await {
                Some(AppEvent::View(v)) if v.len() == 3 => {
                    views.push(v);
                    break;
                }
                Some(AppEvent::Problem(p)) => panic!("problem from {}: {}", p.layer, p.what),
                Some(_) => {}
                None => panic!("events ended before a view of 3"),
            }
        }
    }
    let expected: Vec<MemberId> = views[0].members().to_vec();
    for v in &views {
        assert_eq!(v.id(), views[0].id(), "one view");
        assert_eq!(v.members(), &expected[..]);
    }
    for ep in &eps {
        assert!(views[0].members().iter().any(|m| m.addr() == ep.local_addr()));
    }
    // The view carries casts.
    joined[0].0.cast(Bytes::from_static(b"hello")).await.unwrap();
    for (_, events) in &mut joined {
        let got = deliveries(events, 1).await;
        assert_eq!(&got[0].1[..], b"hello");
    }
    let mut answers = 0;
    for ep in &eps {
        let s = ep.stats().await.unwrap();
        assert!(counter(&s, "discovery_probes_sent") > 0);
        answers += counter(&s, "discovery_answers_received");
    }
    assert!(answers > 0, "probes were answered");
}

/// The body of cast `i` of `member` in `group`.
fn tagged(group: &str, member: &MemberId, i: u64) -> Bytes {
    Bytes::from(format!("{group}|{member}|{i}"))
}

/// Checks that `got` is exactly casts `0..k` of each of `senders` in
/// `group`, each sender's in order.
fn check_tagged(group: &str, got: &[(MemberId, Bytes)], senders: &[MemberId], k: u64) {
    let mut next: BTreeMap<MemberId, u64> = senders.iter().map(|m| (*m, 0)).collect();
    for (from, body) in got {
        let text = std::str::from_utf8(body).expect("utf-8 body");
        let mut parts = text.split('|');
        assert_eq!(parts.next(), Some(group), "a cast of another group reached {group}: {text}");
        assert_eq!(parts.next(), Some(from.to_string().as_str()), "{text}");
        let i: u64 = parts.next().unwrap().parse().unwrap();
        let n = next.get_mut(from).unwrap_or_else(|| panic!("{text} from a non-member"));
        assert_eq!(i, *n, "order of {from} in {group}");
        *n += 1;
    }
    assert!(next.values().all(|n| *n == k), "{group}: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_over_one_transport_never_hear_each_other() {
    let shared = mcast(3, 24103);
    let own = mcast(4, 24104);
    // alpha, beta and delta share one address; gamma has its own. delta has
    // two members only: the third endpoint hears its casts on the shared
    // socket and drops them as unknown_group.
    let eps = endpoints(3, &[("alpha", shared), ("beta", shared), ("gamma", own), ("delta", shared)]).await;
    let all: Vec<&Endpoint> = eps.iter().collect();
    let k = 40;
    let mut groups = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        groups.push((name, join_static(&all, name, "FRAG:NAK").await, 3));
    }
    groups.push(("delta", join_static(&all[..2], "delta", "FRAG:NAK").await, 2));
    let mut casters = Vec::new();
    for (name, joined, _) in &groups {
        for (g, _) in joined {
            let (g, name) = (g.clone(), name.to_string());
            casters.push(tokio::spawn(async move {
                for i in 0..k {
                    g.cast(tagged(&name, &g.local(), i)).await.unwrap();
                }
            }));
        }
    }
    for (name, joined, n) in &mut groups {
        let senders: Vec<MemberId> = joined.iter().map(|(g, _)| g.local()).collect();
        for (g, events) in joined.iter_mut() {
            let got = deliveries(events, *n * k as usize).await;
            check_tagged(name, &got, &senders, k);
            g.flush().await.unwrap();
        }
    }
    for c in casters {
        c.await.unwrap();
    }
    let third = eps[2].stats().await.unwrap();
    assert!(dropped(&third, "unknown_group") > 0, "delta's casts reach the shared socket of the third endpoint: {third:?}");
    assert_eq!(counter(&third, "multicast_sockets"), 2);
    for ep in &eps[..2] {
        let s = ep.stats().await.unwrap();
        assert_eq!(counter(&s, "multicast_sockets"), 2, "alpha, beta and delta share a socket");
        assert_eq!(dropped(&s, "unknown_group"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_at_the_group_address_is_counted_and_dropped_and_probes_are_answered() {
    let name = "ipmc-junk";
    let addr = mcast(5, 24105);
    let eps = endpoints(2, &[(name, addr)]).await;
    let mut joined = join_static(&eps.iter().collect::<Vec<_>>(), name, "FRAG:NAK").await;

    let prober = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    prober.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    prober.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
    prober.set_nonblocking(true).unwrap();
    let prober = tokio::net::UdpSocket::from_std(prober.into()).unwrap();
    let gid = group_id(name).to_be_bytes();
    let junk: [&[u8]; 6] = [
        b"not a frame at all",
        &[DISCOVERY_MAGIC],
        &[DISCOVERY_MAGIC, 1, 0, 0],
        &[DISCOVERY_MAGIC, 9, gid[0], gid[1], gid[2], gid[3]],
        &[DISCOVERY_MAGIC, 1, gid[0], gid[1], gid[2], gid[3], 0],
        // A frame of a group nobody here joined.
        &[0xA1, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0],
    ];
    for j in junk {
        prober.send_to(j, addr).await.unwrap();
    }
    // A well-formed probe for the group: both members answer it, unicast.
    prober.send_to(&[DISCOVERY_MAGIC, 1, gid[0], gid[1], gid[2], gid[3]], addr).await.unwrap();
    let mut answered_by = Vec::new();
    let mut buf = [0u8; 64];
    while answered_by.len() < 2 {
        let (n, from) = tokio::time::timeout(PATIENCE, prober.recv_from(&mut buf)).await.expect("an answer").unwrap();
        assert_eq!(&buf[..n], &[DISCOVERY_MAGIC, 2, gid[0], gid[1], gid[2], gid[3]]);
        answered_by.push(from);
    }
    answered_by.sort();
    let mut locals: Vec<SocketAddr> = eps.iter().map(Endpoint::local_addr).collect();
    locals.sort();
    assert_eq!(answered_by, locals);

    // The group still works; the junk, sent before this cast to the same
    // socket, has been read by the time the cast is delivered.
    joined[1].0.cast(Bytes::from_static(b"after the junk")).await.unwrap();
    for (_, events) in &mut joined {
        let got = deliveries(events, 1).await;
        assert_eq!(&got[0].1[..], b"after the junk");
    }
    let s = eps[0].stats().await.unwrap();
    assert_eq!(counter(&s, "malformed_discovery"), 4, "{s:?}");
    assert_eq!(dropped(&s, "not_a_frame"), 1, "{s:?}");
    assert_eq!(dropped(&s, "unknown_group"), 1, "{s:?}");
    assert_eq!(counter(&s, "discovery_probes_received"), 1);
    assert_eq!(counter(&s, "discovery_answers_sent"), 1);
}
