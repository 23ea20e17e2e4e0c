//! The TCP tree transport on loopback, through the runtime: casts reach every
//! member along a 2-ary tree in FIFO order, inner members forward and leaves
//! connect only to their parent; with a fixed membership, the survivors of
//! a killed inner member route around it and keep reaching each other; a
//! killed inner member is reported as a suspicion, VSYNC installs a view
//! without it and casts reach all survivors along the rebuilt tree; two
//! groups share the transports without cross-talk; hostile connections are
//! counted and closed while the endpoints keep working. A last test
//! measures throughput.

mod runtime_support;

use bytes::Bytes;
use runtime_support::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_stack::engine::group_id;
use strata_stack::runtime::{Endpoint, Events, Group, JoinConfig};
use strata_stack::{AppEvent, Delivery, LayerStats, MemberId, Registry, View};
use strata_transport::payload;
use strata_transport::tcptree::{tree_info, wire_tag, TcpTreeConfig, TcpTreeTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FANOUT: usize = 2;

async fn endpoints(n: usize, registry: &Arc<Registry>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for _ in 0..n {
        let config = TcpTreeConfig { fanout: FANOUT, ..TcpTreeConfig::default() };
        let t = TcpTreeTransport::bind("127.0.0.1:0".parse().unwrap(), config).await.expect("listen on loopback");
        out.push(Endpoint::new(t, registry.clone()));
    }
    out
}

/// Joins `group` on every endpoint with a fixed membership of all of them.
async fn join_fixed(endpoints: &[Endpoint], group: &str, stack: &str) -> Vec<(Group, Events)> {
    let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut joined = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut cfg = JoinConfig::new(group, stack);
        cfg.members = members.clone();
        cfg.seed = i as u64;
        joined.push(ep.join(cfg).await.expect("join"));
    }
    joined
}

fn addrs(view: &View) -> Vec<SocketAddr> {
    view.members().iter().map(MemberId::addr).collect()
}

async fn counters(ep: &Endpoint) -> LayerStats {
    ep.stats().await.expect("endpoint alive")
}

fn get(s: &LayerStats, name: &str) -> u64 {
    s.counters.get(name).unwrap_or_else(|| panic!("no counter {name} in {s:?}"))
}

/// Waits (polling the endpoint's counters) until `check` holds.
async fn until_stats(ep: &Endpoint, what: &str, check: impl Fn(&LayerStats) -> bool) -> LayerStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = counters(ep).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_members_cast_along_a_binary_tree_in_fifo_order() {
    let k = 200;
    let registry = Arc::new(strata_layers::builtin());
    let eps = endpoints(6, &registry).await;
    let joined = join_fixed(&eps, "tree6", "FRAG:NAK").await;
    let joined = all_cast_and_deliver(joined, 0..k, 1000).await;
    for (group, _) in &joined {
        group.flush().await.expect("own casts become stable");
    }

    let view = joined[0].0.view().await.unwrap();
    let order = addrs(&view);
    let mut sends = 0;
    let mut stats = BTreeMap::new();
    for ep in &eps {
        let s = counters(ep).await;
        sends += get(&s, "sends");
        stats.insert(ep.local_addr(), s);
    }
    for ep in &eps {
        let me = ep.local_addr();
        let s = &stats[&me];
        let info = tree_info(&order, me, FANOUT).expect("a member");
        assert_eq!(info.depth, 2);
        let neighbours = usize::from(info.parent.is_some()) + info.children.len();
        if !info.children.is_empty() && info.parent.is_some() {
            assert!(get(s, "casts_forwarded") > 0, "inner member {me} forwarded nothing: {s:?}");
        }
        if info.children.is_empty() {
            assert_eq!(neighbours, 1);
        }
        assert_eq!(get(s, "not_forwarded_other_view"), 0);
        // No connection off the tree unless a point-to-point send (a NAK) needed one.
        if sends == 0 {
            assert_eq!(get(s, "connects_off_tree"), 0, "{me}: {s:?}");
            assert!(get(s, "peers_connected") as usize <= neighbours, "{me} talks to more than its {neighbours} neighbours: {s:?}");
        } else {
            assert!(get(s, "peers_connected") as usize <= neighbours + sends as usize, "{me}: {s:?}");
        }
        assert!(get(s, "connections_open") as usize <= 2 * neighbours + sends as usize, "{me}: {s:?}");
        assert_eq!(get(s, "connections_lost"), 0);
    }
    let forwarded: u64 = stats.values().map(|s| get(s, "casts_forwarded")).sum();
    let cast: u64 = stats.values().map(|s| get(s, "casts_sent")).sum();
    assert!(cast >= 6 * k, "every payload went out as a tree cast");
    // A cast from rank r leaves on deg(r) edges and is forwarded over the
    // remaining 5 - deg(r): in total 5 edge crossings per cast.
    let first_hops: u64 = order
        .iter()
        .map(|a| {
            let info = tree_info(&order, *a, FANOUT).unwrap();
            get(&stats[a], "casts_sent") * (usize::from(info.parent.is_some()) + info.children.len()) as u64
        })
        .sum();
    assert_eq!(first_hops + forwarded, 5 * cast, "each cast crosses each tree edge exactly once");
}

/// Every member casts payloads `range` of `size` bytes while every
/// application reads at once (a member that stops reading stops forwarding
/// to its subtree; see the docs); each delivers exactly `range` of every
/// member, in order. Returns the handles.
async fn all_cast_and_deliver(joined: Vec<(Group, Events)>, range: Range<u64>, size: usize) -> Vec<(Group, Events)> {
    let everyone: Vec<MemberId> = joined.iter().map(|(g, _)| g.local()).collect();
    let casters: Vec<_> = joined
        .iter()
        .map(|(g, _)| g.clone())
        .map(|g| {
            let range = range.clone();
            tokio::spawn(async move { cast_range(&g, range, size).await })
        })
        .collect();
    let readers: Vec<_> = joined
        .into_iter()
        .map(|(group, mut events)| {
            let (everyone, range) = (everyone.clone(), range.clone());
            tokio::spawn(async move {
                let got = deliveries(&mut events, everyone.len() * (range.end - range.start) as usize).await;
                check_range(&got, &everyone, range);
                (group, events)
            })
        })
        .collect();
    for c in casters {
        c.await.unwrap();
    }
    let mut joined = Vec::new();
    for r in readers {
        joined.push(r.await.unwrap());
    }
    joined
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_route_around_a_lost_inner_member() {
    // No membership layer: the view stays the six members, the tree is never
    // rebuilt, and only routing around the lost member joins its subtree
    // (ranks 3 and 4) to the rest.
    let (before, during, after) = (100u64, 200u64, 100u64);
    let registry = Arc::new(strata_layers::builtin());
    let eps = endpoints(6, &registry).await;
    let joined = join_fixed(&eps, "around", "FRAG:NAK").await;
    let order = addrs(&joined[0].0.view().await.unwrap());
    let index_of = |a: SocketAddr| eps.iter().position(|e| e.local_addr() == a).unwrap();
    let victim = index_of(order[1]);
    let victim_info = tree_info(&order, order[1], FANOUT).unwrap();
    assert_eq!(victim_info.children, vec![order[3], order[4]]);
    let survivors: Vec<usize> = (0..6).filter(|i| *i != victim).collect();
    let surviving: Vec<MemberId> = survivors.iter().map(|&i| joined[i].0.local()).collect();

    // Everyone casts and delivers everything along the whole tree.
    let mut joined = all_cast_and_deliver(joined, 0..before, 500).await;
    for ep in &eps {
        assert_eq!(get(&counters(ep).await, "casts_rerouted"), 0, "nothing to route around yet");
    }

    // The survivors keep casting while the inner member at rank 1 dies.
    let groups: Vec<Group> = survivors.iter().map(|&i| joined[i].0.clone()).collect();
    let mut readers = Vec::new();
    for (i, (group, mut events)) in joined.drain(..).enumerate() {
        if i == victim {
            continue;
        }
        let surviving = surviving.clone();
        readers.push(tokio::spawn(async move {
            let got = deliveries(&mut events, 5 * (during + after) as usize).await;
            check_range(&got, &surviving, before..before + during + after);
            (group, events)
        }));
    }
    let casters: Vec<_> = groups.iter().cloned().map(|g| tokio::spawn(async move { cast_range(&g, before..before + during, 500).await })).collect();
    eps[victim].shutdown().await;
    // Its parent and its children mark it unreachable (their connections to
    // it ended without a goodbye) and route around it from then on.
    for &a in [order[0], order[3], order[4]].iter() {
        let s = until_stats(&eps[index_of(a)], "the lost member marked", |s| get(s, "peers_unreachable") >= 1).await;
        assert_eq!(get(&s, "connections_lost"), 1, "{a}: one report per lost peer: {s:?}");
    }
    for c in casters {
        c.await.unwrap();
    }
    // And keep casting once the loss is known where it matters.
    let casters: Vec<_> =
        groups.iter().cloned().map(|g| tokio::spawn(async move { cast_range(&g, before + during..before + during + after, 500).await })).collect();
    for c in casters {
        c.await.unwrap();
    }
    // Every survivor delivers every other survivor's casts, in order.
    for r in readers {
        r.await.unwrap();
    }

    let mut unsent = 0;
    for &i in &survivors {
        let me = eps[i].local_addr();
        let s = counters(&eps[i]).await;
        unsent += get(&s, "unsent_dropped");
        assert_eq!(get(&s, "not_forwarded_other_view"), 0, "{me}: {s:?}");
        assert_eq!(get(&s, "not_forwarded_bad_from"), 0, "{me}: {s:?}");
        assert!(get(&s, "peers_unreachable") <= 1, "{me}: only the dead member is unreachable: {s:?}");
        if [order[0], order[3], order[4]].contains(&me) {
            // Its own casts after the loss went around rank 1: rank 0's to
            // 3 and 4 as if from 1, 3's and 4's to 0 and to each other.
            assert!(get(&s, "casts_rerouted") >= after, "{me} did not route around the lost member: {s:?}");
        }
    }
    println!("frames dropped with the lost connections: {unsent}");
}

/// What a member saw after the view it waited for.
async fn wait_view(events: &mut Events, n: usize) -> Arc<View> {
    loop {
        match next_event(events).await {
            Some(AppEvent::View(v)) if v.members().len() == n => return v,
            Some(AppEvent::Problem(p)) => panic!("problem from {}: {}", p.layer, p.what),
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_inner_member_is_suspected_and_the_tree_rebuilt() {
    // Heartbeats alone would take ten minutes to suspect anyone: only the
    // transport's report of the lost connections can remove the member in time.
    let stack = "FRAG:NAK:VSYNC(suspect_ms=600000)";
    let registry = Arc::new(strata_layers::builtin());
    let eps = endpoints(6, &registry).await;
    let ids: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut joined = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let mut cfg = JoinConfig::new("kill", stack);
        cfg.members = ids.clone();
        cfg.seed = i as u64;
        joined.push(ep.join(cfg).await.expect("join"));
    }
    let mut view = None;
    for (_, events) in &mut joined {
        view = Some(wait_view(events, 6).await);
    }
    let view = view.unwrap();
    let order = addrs(&view);
    // Rank 1: an inner member with children 3 and 4, not the coordinator.
    let victim = order[1];
    let victim_info = tree_info(&order, victim, FANOUT).unwrap();
    assert_eq!(victim_info.children.len(), 2);
    let vi = eps.iter().position(|e| e.local_addr() == victim).unwrap();
    eps[vi].shutdown().await;
    let started = Instant::now();

    let survivors: Vec<usize> = (0..6).filter(|i| *i != vi).collect();
    let mut new_view = None;
    for &i in &survivors {
        let v = wait_view(&mut joined[i].1, 5).await;
        assert!(!v.members().iter().any(|m| m.addr() == victim));
        new_view = Some(v);
    }
    assert!(started.elapsed() < Duration::from_secs(60), "removal must come from the transport's suspicion");
    // The victim's tree neighbours all lose their connections to it (some
    // maybe only after the others' suspicions installed the new view, when
    // their driver no longer has a view with it to pass the suspicion to).
    let mut suspicions = 0;
    for n in victim_info.children.iter().chain(victim_info.parent.iter()) {
        let ep = &eps[eps.iter().position(|e| e.local_addr() == *n).unwrap()];
        let s = until_stats(ep, "the lost connection reported", |s| get(s, "connections_lost") >= 1).await;
        suspicions += get(&s, "peers_lost");
    }
    assert!(suspicions >= 1, "no neighbour passed a suspicion up");

    // Casts in the new view reach every survivor, along the new tree.
    let new_order = addrs(&new_view.unwrap());
    let k = 50;
    let forwarded_before: u64 = {
        let mut sum = 0;
        for &i in &survivors {
            sum += get(&counters(&eps[i]).await, "casts_forwarded");
        }
        sum
    };
    let senders: Vec<MemberId> = survivors.iter().map(|&i| joined[i].0.local()).collect();
    let casters: Vec<_> = survivors.iter().map(|&i| joined[i].0.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, k, 500).await })).collect();
    for &i in &survivors {
        let got = deliveries(&mut joined[i].1, 5 * k as usize).await;
        check_fifo(&got, &senders, k);
    }
    for c in casters {
        c.await.unwrap();
    }
    let mut forwarded_after = 0;
    for &i in &survivors {
        let s = counters(&eps[i]).await;
        forwarded_after += get(&s, "casts_forwarded");
        assert!(tree_info(&new_order, eps[i].local_addr(), FANOUT).is_some());
        assert!(get(&s, "connections_lost") <= 1, "one report per lost peer: {s:?}");
    }
    assert!(forwarded_after > forwarded_before, "the new tree forwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_share_the_transports_without_cross_talk() {
    let k = 60;
    let registry = Arc::new(strata_layers::builtin());
    let eps = endpoints(4, &registry).await;
    let mut a = join_fixed(&eps, "group-a", "FRAG:NAK").await;
    let mut b = join_fixed(&eps[1..], "group-b", "FRAG:NAK").await;
    let cast_all = |joined: &[(Group, Events)], tag: &'static str| -> Vec<tokio::task::JoinHandle<()>> {
        joined
            .iter()
            .map(|(g, _)| g.clone())
            .map(|g| {
                tokio::spawn(async move {
                    let me = format!("{tag}/{}", g.local());
                    for i in 0..k {
                        g.cast(payload::make(&me, i, 300)).await.expect("cast");
                    }
                })
            })
            .collect()
    };
    let mut tasks = cast_all(&a, "a");
    tasks.extend(cast_all(&b, "b"));
    for (joined, tag, n) in [(&mut a, "a/", 4usize), (&mut b, "b/", 3)] {
        for (_, events) in joined.iter_mut() {
            let got = deliveries(events, n * k as usize).await;
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            for (from, body) in &got {
                let (member, i) = payload::split_id(payload::id(body).expect("a payload")).unwrap();
                assert_eq!(member, format!("{tag}{from}"), "a cast of another group delivered");
                let expected = next.entry(member.to_string()).or_default();
                assert_eq!(i, *expected);
                *expected += 1;
            }
            assert_eq!(next.len(), n);
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Nothing else arrives.
    for (g, events) in a.iter_mut().chain(b.iter_mut()) {
        g.flush().await.unwrap();
        while let Some(ev) = events.try_next() {
            assert!(!matches!(ev, AppEvent::Deliver { kind: Delivery::Cast, .. }), "extra delivery {ev:?}");
        }
    }
    assert_eq!(counters(&eps[0]).await.dropped.iter().find(|(r, _)| *r == "unknown_group"), None, "endpoint 0 is in no tree of group b");
}

/// A hello announcing `addr`, as the transport writes it.
fn hello(addr: SocketAddr) -> Vec<u8> {
    let mut h = b"STTR\x01".to_vec();
    match addr {
        SocketAddr::V4(a) => {
            h.push(4);
            h.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            h.push(6);
            h.extend_from_slice(&a.ip().octets());
        }
    }
    h.extend_from_slice(&addr.port().to_be_bytes());
    h
}

/// Sends `bytes` on a fresh connection and expects the transport to close
/// it: the read ends (end of stream) without anything sent to us.
async fn closed_after(to: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(to).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("the transport closes the connection");
    assert!(matches!(n, Ok(0)), "expected the end of stream, got {n:?}");
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_counted_and_its_connection_closed() {
    let registry = Arc::new(strata_layers::builtin());
    let eps = endpoints(2, &registry).await;
    let mut joined = join_fixed(&eps, "hostile", "FRAG:NAK").await;
    let target = eps[0].local_addr();
    let liar: SocketAddr = "127.0.0.1:9".parse().unwrap();

    // Not a hello at all.
    closed_after(target, b"GET / HTTP/1.0\r\n\r\n").await;
    // A hello naming an address no member can have.
    closed_after(target, &hello("0.0.0.0:7000".parse().unwrap())).await;
    // A length over the maximum.
    let mut too_long = hello(liar);
    too_long.extend_from_slice(&(70_000u32).to_be_bytes());
    too_long.extend_from_slice(&[b'P'; 32]);
    closed_after(target, &too_long).await;
    // An unknown kind.
    let mut bad_kind = hello(liar);
    bad_kind.extend(frame(b'Z', b"whatever"));
    closed_after(target, &bad_kind).await;
    // A point-to-point frame that is not a stack frame.
    let mut not_frame = hello(liar);
    not_frame.extend(frame(b'P', b"\x00\x01\x02\x03\x04\x05\x06"));
    closed_after(target, &not_frame).await;
    // A frame for a group not carried here: handed up, counted by the
    // driver, the connection stays; then garbage on it closes it.
    let mut s = TcpStream::connect(target).await.unwrap();
    let mut unknown = hello(liar);
    unknown.extend(frame(b'P', &[0xA1, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]));
    unknown.extend(frame(b'C', &[[0u8; 12].as_slice(), &[0xA1, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0]].concat()));
    // Casts of the group, with this view's tag but from a rank that cannot
    // have sent them here (none, or the receiver's own), or with another
    // view's tag: handed up (the stack drops them) and not forwarded.
    let order = addrs(&joined[0].0.view().await.unwrap());
    let tag = wire_tag(&order, FANOUT);
    let own_rank = order.iter().position(|a| *a == target).unwrap() as u32;
    let stack_frame = [&[0xA1, 0][..], &group_id("hostile").to_be_bytes(), &[0, 0, 0, 0]].concat();
    for (tag, from_rank) in [(tag, 2u32), (tag, u32::MAX), (tag, own_rank), (!tag, 1 - own_rank)] {
        unknown.extend(frame(b'C', &[&tag.to_be_bytes()[..], &from_rank.to_be_bytes(), &stack_frame].concat()));
    }
    s.write_all(&unknown).await.unwrap();
    until_stats(&eps[0], "unknown group counted", |s| s.dropped.iter().any(|(r, n)| *r == "unknown_group" && *n >= 2)).await;
    let c = until_stats(&eps[0], "bad casts counted", |s| get(s, "not_forwarded_bad_from") >= 3 && get(s, "not_forwarded_other_view") >= 1).await;
    assert_eq!((get(&c, "not_forwarded_bad_from"), get(&c, "not_forwarded_other_view"), get(&c, "casts_forwarded")), (3, 1, 0), "{c:?}");
    s.write_all(&frame(b'Z', b"")).await.unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("closed"), Ok(0)));

    let s = until_stats(&eps[0], "drops counted", |s| get(s, "bad_kind") >= 2).await;
    assert_eq!(get(&s, "bad_hello"), 2, "{s:?}");
    assert_eq!(get(&s, "frame_too_long"), 1, "{s:?}");
    assert_eq!(get(&s, "not_a_frame"), 1, "{s:?}");
    assert_eq!(get(&s, "connections_lost"), 0, "a protocol error is not a lost peer");

    // The endpoints still work, both ways.
    for from in 0..2 {
        joined[from].0.cast(Bytes::from_static(b"still here")).await.unwrap();
        for (_, events) in &mut joined {
            let got = deliveries(events, 1).await;
            assert_eq!(&got[0].1[..], b"still here");
        }
    }
}

/// Loopback throughput (FRAG:NAK, every member casting): messages delivered
/// per member per second. Small by default; set STRATA_TCPTREE_MSGS for a
/// measurement (docs/transports/tcptree.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_throughput() {
    let per_member: u64 = std::env::var("STRATA_TCPTREE_MSGS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let registry = Arc::new(strata_layers::builtin());
    for n in [3usize, 6] {
        for size in [64usize, 1024] {
            let eps = endpoints(n, &registry).await;
            let mut joined = join_fixed(&eps, &format!("perf-{n}-{size}"), "FRAG:NAK").await;
            let members: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
            let start = Instant::now();
            let casters: Vec<_> =
                joined.iter().map(|(g, _)| g.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, per_member, size).await })).collect();
            let mut readers = Vec::new();
            for (_, mut events) in joined.drain(..) {
                let members = members.clone();
                readers.push(tokio::spawn(async move {
                    let got = deliveries(&mut events, n * per_member as usize).await;
                    check_fifo(&got, &members, per_member);
                }));
            }
            for t in casters.into_iter().chain(readers) {
                t.await.unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            let delivered = (n as u64 * per_member) as f64;
            println!("tcptree n={n} size={size}B: {:.0} msgs/s delivered per member ({:.1} MB/s)", delivered / secs, delivered * size as f64 / secs / 1e6);
            for ep in &eps {
                ep.shutdown().await;
            }
        }
    }
}
