//! Bundling in the UDP and IP multicast transports, on loopback, and in the
//! in-process transport: the frames
//! of one driver round leave packed into as few datagrams as the limit
//! allows and arrive as the same frames in order; a frame over the limit
//! goes alone and plain; multicast casts of a round are one datagram per
//! group address; hostile bundles are counted and never panic; a whole
//! runtime (`FRAG:NAK`, 3 members) delivers everything in FIFO order with
//! fewer datagrams than frames; the send path allocates nothing per frame.
//!
//! The transports are driven by hand here (`send`/`cast`, then `flush`, as
//! the driver does in one round), so that the datagrams can be counted
//! exactly.

mod runtime_support;

use bytes::Bytes;
use runtime_support::{cast_payloads, check_fifo, deliveries, PATIENCE};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use strata_stack::engine::{peek_group, FRAME_MAGIC, FRAME_MIN};
use strata_stack::harness::alloc::{thread_allocations, CountingAllocator};
use strata_stack::runtime::{Endpoint, JoinConfig, Transport};
use strata_stack::{MemberId, Stats};
use strata_transport::bundle::{is_bundle, unbundle, BUNDLE_MAGIC, DEFAULT_BUNDLE_BYTES};
use strata_transport::ipmc::{IpmcConfig, IpmcTransport};
use strata_transport::mem::MemNetwork;
use strata_transport::udp::{UdpConfig, UdpTransport};

/// Counts each thread's allocations, so that tests running in parallel
/// do not see each other's.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A frame-like datagram of `len` bytes (at least 10): the frame magic,
/// a flags byte, the group id, the number `i`, then filler.
fn frame(gid: u32, i: u32, len: usize) -> Vec<u8> {
    assert!(len >= 10);
    let mut f = vec![FRAME_MAGIC, 0];
    f.extend_from_slice(&gid.to_be_bytes());
    f.extend_from_slice(&i.to_be_bytes());
    f.resize(len, (i % 251) as u8);
    f
}

fn number(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[6..10].try_into().unwrap())
}

async fn udp(batch: bool, bundle: usize) -> UdpTransport {
    UdpTransport::bind_with(LOOPBACK, UdpConfig { batch, bundle }).await.expect("bind on loopback")
}

fn stat(t: &impl Transport, name: &str) -> u64 {
    let mut s = Stats::default();
    t.stats(&mut s);
    s.get(name).unwrap_or_else(|| panic!("no counter {name} in {:?}", s.entries))
}

/// Receives until `n` datagrams (frames, once unbundled) have come.
async fn receive(t: &mut impl Transport, n: usize) -> Vec<(SocketAddr, Bytes)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let polled = tokio::time::timeout(PATIENCE, std::future::poll_fn(|cx| t.poll_recv(cx, &mut out))).await;
        polled.expect("datagrams within the patience").expect("receive");
    }
    out
}

/// A plain UDP socket that shows the raw datagrams.
fn raw_receiver() -> UdpSocket {
    let s = UdpSocket::bind(LOOPBACK).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

fn raw_recv(s: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0; 1 << 16];
    let n = s.recv(&mut buf).expect("a datagram within the patience");
    buf.truncate(n);
    buf
}

/// The frames a datagram carries, as a receiver sees them.
fn frames_of(datagram: &[u8]) -> Vec<Vec<u8>> {
    if !is_bundle(datagram) {
        return vec![datagram.to_vec()];
    }
    let mut out = Vec::new();
    let got = unbundle(&Bytes::copy_from_slice(datagram), |f| out.push(f.to_vec()));
    assert_eq!(got.fault, None, "a well-formed bundle");
    out
}

/// Sends 100 frames of 100 bytes to a UDP transport in one round; returns
/// the datagrams and send system calls it took, after checking that the
/// receiver got the same 100 frames in order.
async fn hundred_frames(batch: bool, bundle: usize) -> (u64, u64) {
    let mut a = udp(batch, bundle).await;
    let mut b = udp(true, DEFAULT_BUNDLE_BYTES).await;
    let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(7, i, 100)).collect();
    for f in &frames {
        a.send(&[b.local_addr()], &[&f[..4], &f[4..]]).unwrap();
    }
    a.flush();
    let got = receive(&mut b, 100).await;
    assert!(got.iter().all(|(from, _)| *from == a.local_addr()), "each frame comes from the bundle's source");
    assert_eq!(got.iter().map(|(_, f)| f.to_vec()).collect::<Vec<_>>(), frames, "the same frames, in order");
    let datagrams = stat(&a, "datagrams_sent");
    assert_eq!(stat(&b, "datagrams_received"), datagrams);
    assert_eq!(stat(&b, "bundles_received"), stat(&a, "bundles_sent"));
    assert_eq!(stat(&b, "frames_unbundled"), stat(&a, "frames_bundled"));
    assert_eq!(stat(&b, "bundles_malformed"), 0);
    (datagrams, stat(&a, "send_syscalls"))
}

#[tokio::test]
async fn a_round_of_small_frames_to_one_destination_leaves_in_few_datagrams() {
    // 100 frames of 100 bytes; an entry is a 1-byte length and the frame,
    // a bundle the marker and whole entries: 19 per 2000-byte bundle.
    let bundle = 2000;
    let per_bundle = (bundle - 1) / 101;
    let expected = 100usize.div_ceil(per_bundle) as u64;
    assert_eq!(expected, (100 * 101 + expected as usize).div_ceil(bundle) as u64, "ceil(total / bundle)");
    let (datagrams, calls) = hundred_frames(true, bundle).await;
    assert_eq!(datagrams, expected);
    assert_eq!(calls, 1, "the bundles of one flush leave in one sendmmsg");

    // Unbatched: the same bundles, one sendmsg each.
    let (datagrams, calls) = hundred_frames(false, bundle).await;
    assert_eq!((datagrams, calls), (expected, expected));

    // The default limit.
    let expected = 100usize.div_ceil((DEFAULT_BUNDLE_BYTES - 1) / 101) as u64;
    assert_eq!(hundred_frames(true, DEFAULT_BUNDLE_BYTES).await, (expected, 1));
}

#[tokio::test]
async fn without_bundling_every_frame_is_a_datagram() {
    let (datagrams, calls) = hundred_frames(true, 0).await;
    assert_eq!(datagrams, 100);
    assert_eq!(calls, 2, "two sendmmsg of 64 and 36");
    assert_eq!(hundred_frames(false, 0).await, (100, 100));
}

#[tokio::test]
async fn a_frame_over_the_limit_goes_alone_and_plain_and_order_is_kept_per_destination() {
    let limit = 1024;
    let mut a = udp(true, limit).await;
    let (r1, r2) = (raw_receiver(), raw_receiver());
    let sizes = [40, 40, 1500, 40, 1024, 40, 40, 600, 600, 30, 5000, 40];
    let mut sent: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    for (i, size) in sizes.into_iter().enumerate() {
        for (d, r) in [&r1, &r2].into_iter().enumerate() {
            let f = frame(1, (i * 2 + d) as u32, size);
            a.send(&[r.local_addr().unwrap()], &[&f]).unwrap();
            sent[d].push(f);
        }
    }
    a.flush();
    // 40+40 | 1500 alone | 40 | 1024 alone | 40+40+600 | 600+30 | 5000 alone | 40.
    let expected_datagrams = 8;
    for (d, r) in [&r1, &r2].into_iter().enumerate() {
        let mut got = Vec::new();
        for _ in 0..expected_datagrams {
            let datagram = raw_recv(r);
            let frames = frames_of(&datagram);
            if frames.len() == 1 {
                assert!(!is_bundle(&datagram), "a lone frame is sent plain");
            } else {
                assert!(datagram.len() <= limit, "a bundle of {} bytes", datagram.len());
            }
            if datagram.len() > limit {
                assert_eq!(datagram[0], FRAME_MAGIC, "a frame over the limit goes unwrapped");
            }
            got.extend(frames);
        }
        assert_eq!(got, sent[d], "destination {d} got its frames in order");
    }
    assert_eq!(stat(&a, "datagrams_sent"), 2 * expected_datagrams);
    assert_eq!(stat(&a, "bundles_sent"), 2 * 3);
    assert_eq!(stat(&a, "frames_bundled"), 2 * 7);
    assert_eq!(stat(&a, "send_syscalls"), 1);
}

fn mcast(c: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(239, 77, 88, c), 24_880 + u16::from(c))
}

async fn ipmc(groups: &[(&str, SocketAddrV4)]) -> IpmcTransport {
    let config = IpmcConfig { addresses: groups.iter().map(|(n, a)| (n.to_string(), *a)).collect(), ..IpmcConfig::default() };
    let mut t = IpmcTransport::bind(LOOPBACK, config).await.expect("bind on loopback");
    for (name, _) in groups {
        t.open_group(strata_stack::engine::group_id(name), name).expect("open the group");
    }
    t
}

#[tokio::test]
async fn ipmc_casts_of_a_round_leave_as_one_datagram_per_group_and_groups_stay_apart() {
    let (a_name, b_name) = ("bundle-ipmc-a", "bundle-ipmc-b");
    let (ga, gb) = (strata_stack::engine::group_id(a_name), strata_stack::engine::group_id(b_name));
    let both = [(a_name, mcast(1)), (b_name, mcast(2))];
    let mut sender = ipmc(&both).await;
    let mut hears_both = ipmc(&both).await;
    let mut hears_a = ipmc(&both[..1]).await;
    let peers = [hears_both.local_addr(), hears_a.local_addr()];
    for i in 0..100 {
        let (gid, f) = if i % 2 == 0 { (ga, frame(ga, i, 80)) } else { (gb, frame(gb, i, 120)) };
        sender.cast(gid, &peers, &[&f]).unwrap();
    }
    sender.flush();
    assert_eq!(stat(&sender, "casts_multicast"), 100);
    assert_eq!(stat(&sender, "datagrams_sent"), 2, "one bundle per group address");
    assert_eq!(stat(&sender, "bundles_sent"), 2);
    assert_eq!(stat(&sender, "frames_bundled"), 100);
    assert_eq!(stat(&sender, "send_syscalls"), 1);

    let got = receive(&mut hears_both, 100).await;
    for (gid, parity, len) in [(ga, 0, 80), (gb, 1, 120)] {
        let mine: Vec<u32> = got.iter().filter(|(_, f)| peek_group(f) == Some(gid)).map(|(_, f)| number(f)).collect();
        assert_eq!(mine, (0..100).filter(|i| i % 2 == parity).collect::<Vec<_>>(), "group {gid:x} in order");
        assert!(got.iter().filter(|(_, f)| peek_group(f) == Some(gid)).all(|(_, f)| f.len() == len));
    }
    assert!(got.iter().all(|(from, _)| *from == sender.local_addr()));
    assert_eq!(stat(&hears_both, "bundles_received"), 2);

    let got = receive(&mut hears_a, 50).await;
    assert!(got.iter().all(|(_, f)| peek_group(f) == Some(ga)), "a member of group a only hears group a's address");
    assert_eq!(got.iter().map(|(_, f)| number(f)).collect::<Vec<_>>(), (0..100).step_by(2).collect::<Vec<_>>());
    assert_eq!(stat(&hears_a, "frames_unbundled"), 50);
    // Nothing more came (group b's bundle went to another address).
    let mut more = Vec::new();
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(hears_a.poll_recv(cx, &mut more))).await;
    assert!(polled.is_pending() && more.is_empty(), "{more:?}");
}

/// Hostile bundles, each with the numbers of the frames before its fault
/// (which a receiver keeps), then a well-formed bundle of frames 7 and 8.
fn hostile_bundles() -> Vec<(&'static str, Vec<u8>, Vec<u32>)> {
    let good = |i: u32| frame(3, i, FRAME_MIN);
    let entry = |f: &[u8]| {
        let mut e = vec![f.len() as u8];
        e.extend_from_slice(f);
        e
    };
    let bundle = |parts: &[&[u8]]| {
        let mut d = vec![BUNDLE_MAGIC];
        for p in parts {
            d.extend_from_slice(p);
        }
        d
    };
    let nested = bundle(&[&entry(&good(90)), &entry(&good(91))]);
    vec![
        ("truncated length", bundle(&[&entry(&good(1)), &[0x80]]), vec![1]),
        ("zero-length entry", bundle(&[&entry(&good(2)), &[0], &entry(&good(99))]), vec![2]),
        ("length beyond the end", bundle(&[&entry(&good(3)), &entry(&good(4)), &[200], &good(99)]), vec![3, 4]),
        ("trailing junk", bundle(&[&entry(&good(5)), &[7, 1, 2]]), vec![5]),
        ("an entry shorter than any frame", bundle(&[&entry(&good(8)), &[2, FRAME_MAGIC, 0], &entry(&good(99))]), vec![8]),
        ("nested marker", bundle(&[&entry(&good(6)), &entry(&nested), &entry(&good(99))]), vec![6]),
        ("empty bundle", bundle(&[]), vec![]),
        ("oversized length", bundle(&[&[0xff; 11]]), vec![]),
        // A well-formed bundle after them still gets through.
        ("well-formed", bundle(&[&entry(&good(7)), &entry(&good(8))]), vec![7, 8]),
    ]
}

/// Receives what [`hostile_bundles`] sent to `t` and checks what was kept and counted.
async fn check_hostile_bundles_received(t: &mut impl Transport) {
    let hostile = hostile_bundles();
    let kept: Vec<u32> = hostile.iter().flat_map(|(_, _, survivors)| survivors.iter().copied()).collect();
    let got = receive(t, kept.len()).await;
    assert_eq!(got.iter().map(|(_, f)| number(f)).collect::<Vec<_>>(), kept, "the frames before each fault, in order");
    assert_eq!(stat(t, "bundles_malformed"), hostile.len() as u64 - 1, "one per hostile bundle");
    assert_eq!(stat(t, "bundles_received"), hostile.len() as u64);
    assert_eq!(stat(t, "frames_unbundled"), kept.len() as u64);
}

#[tokio::test]
async fn hostile_bundles_are_counted_and_the_frames_before_the_fault_kept() {
    let mut t = udp(true, DEFAULT_BUNDLE_BYTES).await;
    let attacker = UdpSocket::bind(LOOPBACK).unwrap();
    for (_, datagram, _) in hostile_bundles() {
        attacker.send_to(&datagram, t.local_addr()).unwrap();
    }
    check_hostile_bundles_received(&mut t).await;
}

#[tokio::test]
async fn the_in_process_transport_counts_hostile_bundles_too() {
    let net = MemNetwork::new();
    let mut t = net.bind(LOOPBACK);
    let attacker: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (_, datagram, _) in hostile_bundles() {
        assert!(net.inject(attacker, t.local_addr(), Bytes::from(datagram)));
    }
    check_hostile_bundles_received(&mut t).await;
}

#[tokio::test]
async fn the_in_process_transport_bundles_a_round_per_destination_like_udp() {
    for (bundle, per_destination) in
        [(DEFAULT_BUNDLE_BYTES, 100usize.div_ceil((DEFAULT_BUNDLE_BYTES - 1) / 101) as u64), (2000, 100usize.div_ceil(1999 / 101) as u64), (0, 100)]
    {
        let net = MemNetwork::new().with_bundle(bundle);
        let mut a = net.bind(LOOPBACK);
        let mut receivers = [net.bind(LOOPBACK), net.bind(LOOPBACK)];
        let to = receivers.each_ref().map(|r| r.local_addr());
        let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(7, i, 100)).collect();
        for f in &frames {
            a.send(&to, &[&f[..4], &f[4..]]).unwrap();
        }
        a.flush();
        for r in &mut receivers {
            let got = receive(r, 100).await;
            assert!(got.iter().all(|(from, _)| *from == a.local_addr()), "each frame comes from the bundle's source");
            assert_eq!(got.iter().map(|(_, f)| f.to_vec()).collect::<Vec<_>>(), frames, "bundle {bundle}: the same frames, in order");
            assert_eq!(stat(r, "datagrams_received"), per_destination, "bundle {bundle}");
            assert_eq!(stat(r, "bundles_malformed"), 0);
        }
        assert_eq!(stat(&a, "datagrams_sent"), 2 * per_destination, "bundle {bundle}");
        let bundled = if bundle == 0 { 0 } else { 200 };
        assert_eq!((stat(&a, "frames_bundled"), stat(&receivers[0], "frames_unbundled")), (bundled, bundled / 2), "bundle {bundle}");
    }
}

#[test]
fn random_bytes_never_panic_the_unbundler() {
    fn prop(body: Vec<u8>, marked: bool) -> bool {
        let mut d = body;
        if marked {
            d.insert(0, BUNDLE_MAGIC);
        }
        let datagram = Bytes::from(d);
        let mut total = 0;
        let mut frames = 0;
        let got = unbundle(&datagram, |f| {
            assert!(!f.is_empty() && f[0] != BUNDLE_MAGIC);
            total += f.len();
            frames += 1;
        });
        // Frames are disjoint slices of the datagram, after the marker and
        // at least a byte of length each.
        got.frames == frames && (frames == 0 || 1 + total + frames <= datagram.len()) && (got.fault.is_some() || datagram.len() > 1)
    }
    quickcheck::QuickCheck::new().tests(5000).quickcheck(prop as fn(Vec<u8>, bool) -> bool);
}

#[tokio::test]
async fn the_send_path_allocates_nothing_per_frame() {
    let mut a = udp(true, DEFAULT_BUNDLE_BYTES).await;
    let (r1, r2) = (raw_receiver(), raw_receiver());
    let to = [r1.local_addr().unwrap(), r2.local_addr().unwrap()];
    let frames: Vec<Vec<u8>> = (0..200).map(|i| frame(4, i, 60 + (i as usize % 7) * 50)).collect();
    let round = |a: &mut UdpTransport| {
        for f in &frames {
            a.send(&to, &[&f[..10], &f[10..]]).unwrap();
            a.cast(1, &to[..1], &[f]).unwrap();
        }
        a.flush();
    };
    // Each receiver is read after each round (outside the counted part),
    // so that its socket buffer never overflows.
    let read_round = |r: &UdpSocket, frames_per_round: usize| {
        let mut got = Vec::new();
        while got.len() < frames_per_round {
            got.extend(frames_of(&raw_recv(r)));
        }
        got
    };
    let twice: Vec<Vec<u8>> = frames.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
    // Warm-up: buffers, the destination map.
    round(&mut a);
    assert_eq!(read_round(&r1, 400), twice);
    assert_eq!(read_round(&r2, 200), frames);
    let mut during = 0;
    for _ in 0..3 {
        let before = thread_allocations();
        round(&mut a);
        during += thread_allocations() - before;
        // The first receiver gets each frame by send and by cast, in order.
        assert_eq!(read_round(&r1, 400), twice);
        assert_eq!(read_round(&r2, 200), frames);
    }
    assert_eq!(during, 0, "{during} allocations for 3 rounds of 600 frames each");
    assert!(stat(&a, "bundles_sent") >= 8);
    assert_eq!(stat(&a, "send_drops") + stat(&a, "send_errors"), 0);
}

#[tokio::test]
async fn the_receive_path_allocates_nothing_per_frame() {
    let mut a = udp(true, DEFAULT_BUNDLE_BYTES).await;
    let mut b = udp(true, DEFAULT_BUNDLE_BYTES).await;
    let send_round = |a: &mut UdpTransport, to: SocketAddr| {
        for i in 0..150 {
            a.send(&[to], &[&frame(5, i, 100)]).unwrap();
        }
        a.flush();
    };
    // Warm-up: the receive chunk, its slot grown to fit a bundle.
    send_round(&mut a, b.local_addr());
    let mut out = Vec::with_capacity(1024);
    while out.len() < 150 {
        std::future::poll_fn(|cx| b.poll_recv(cx, &mut out)).await.unwrap();
    }
    out.clear();
    send_round(&mut a, b.local_addr());
    let before = thread_allocations();
    while out.len() < 150 {
        std::future::poll_fn(|cx| b.poll_recv(cx, &mut out)).await.unwrap();
    }
    let during = thread_allocations() - before;
    assert!(during <= 4, "{during} allocations to receive 150 frames in {} bundles", stat(&b, "bundles_received"));
    assert_eq!(out.iter().map(|(_, f)| number(f)).collect::<Vec<_>>(), (0..150).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frag_nak_over_bundling_udp_delivers_everything_in_fifo_order_with_fewer_datagrams() {
    const MEMBERS: usize = 3;
    let casts: u64 = 5000;
    let registry = Arc::new(strata_layers::builtin());
    let mut endpoints = Vec::new();
    for _ in 0..MEMBERS {
        endpoints.push(Endpoint::new(UdpTransport::bind(LOOPBACK).await.expect("bind"), registry.clone()));
    }
    let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut joined = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut cfg = JoinConfig::new("bundle-runtime", "FRAG:NAK");
        cfg.members = members.clone();
        cfg.seed = i as u64;
        joined.push(ep.join(cfg).await.expect("join"));
    }
    let casters: Vec<_> = joined.iter().map(|(g, _)| g.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, casts, 32).await })).collect();
    // Every member's events are read at once: a member whose application
    // falls behind stops taking casts (backpressure), which would stall the rest.
    let readers: Vec<_> = joined
        .into_iter()
        .map(|(group, mut events)| {
            let members = members.clone();
            tokio::spawn(async move {
                let got = deliveries(&mut events, MEMBERS * casts as usize).await;
                check_fifo(&got, &members, casts);
                group.flush().await.expect("own casts become stable");
            })
        })
        .collect();
    for task in casters.into_iter().chain(readers) {
        task.await.unwrap();
    }
    let (mut datagrams, mut frames, mut bundles) = (0, 0, 0);
    for ep in &endpoints {
        let s = ep.stats().await.unwrap();
        let get = |n: &str| s.counters.get(n).unwrap_or_else(|| panic!("no {n} in {s:?}"));
        datagrams += get("datagrams_sent") + get("send_drops");
        // Each datagram is a lone frame or a bundle of several.
        frames += get("datagrams_sent") + get("send_drops") - get("bundles_sent") + get("frames_bundled");
        bundles += get("bundles_sent");
        assert_eq!(get("bundles_malformed"), 0);
    }
    // Unbundled, every cast alone is a datagram to each of the two peers.
    let unbundled = (MEMBERS as u64) * casts * (MEMBERS as u64 - 1);
    assert!(bundles > 0 && datagrams < frames, "{datagrams} datagrams for {frames} frames");
    assert!(datagrams < unbundled, "{datagrams} datagrams, {unbundled} casts to peers");
    for ep in endpoints {
        ep.shutdown().await;
    }
}
