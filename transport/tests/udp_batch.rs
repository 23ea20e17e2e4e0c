//! Batched system calls of the UDP transport on loopback: batched, many
//! datagrams go per `sendmmsg`/`recvmmsg`; unbatched, exactly one per
//! system call; datagrams longer than a batched receive's first slot (2 KiB)
//! still arrive whole, and the slot grows so that it happens once.

mod runtime_support;

use runtime_support::*;
use std::sync::Arc;
use strata_stack::runtime::{Endpoint, Events, Group, JoinConfig};
use strata_stack::{LayerStats, MemberId};
use strata_transport::udp::{UdpConfig, UdpTransport};

async fn udp_group(n: usize, stack: &str, batch: bool) -> (Vec<Endpoint>, Vec<(Group, Events)>) {
    let registry = Arc::new(strata_layers::builtin());
    let mut endpoints = Vec::new();
    for _ in 0..n {
        // Bundling off: these tests count a datagram per frame (bundling has its own, tests/bundle.rs).
        let udp = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), UdpConfig { batch, bundle: 0 }).await.expect("bind on loopback");
        endpoints.push(Endpoint::new(udp, registry.clone()));
    }
    let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut joined = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut cfg = JoinConfig::new("udp-batch", stack);
        cfg.members = members.clone();
        cfg.seed = i as u64;
        joined.push(ep.join(cfg).await.expect("join"));
    }
    (endpoints, joined)
}

/// Every member casts `k` payloads of `size` bytes; each checks it got all, in order.
async fn cast_and_check(endpoints: &[Endpoint], joined: &mut [(Group, Events)], k: u64, size: usize) -> Vec<LayerStats> {
    let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let casters: Vec<_> = joined.iter().map(|(g, _)| g.clone()).map(|g| tokio::spawn(async move { cast_payloads(&g, k, size).await })).collect();
    for (group, events) in joined.iter_mut() {
        let got = deliveries(events, members.len() * k as usize).await;
        check_fifo(&got, &members, k);
        group.flush().await.expect("own casts become stable");
    }
    for c in casters {
        c.await.unwrap();
    }
    let mut stats = Vec::new();
    for ep in endpoints {
        stats.push(ep.stats().await.unwrap());
    }
    stats
}

fn counter(stats: &LayerStats, name: &str) -> u64 {
    stats.counters.get(name).unwrap_or_else(|| panic!("no counter {name} in {stats:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_udp_sends_several_datagrams_per_system_call() {
    let (endpoints, mut joined) = udp_group(3, "FRAG:NAK", true).await;
    let stats = cast_and_check(&endpoints, &mut joined, 300, 100).await;
    let (mut received, mut recv_calls) = (0, 0);
    for s in &stats {
        let sent = counter(s, "datagrams_sent") + counter(s, "send_drops");
        // A cast alone is two datagrams (two peers) in one sendmmsg.
        assert!(sent >= 600 && counter(s, "send_syscalls") < sent / 2 + 1, "{s:?}");
        received += counter(s, "datagrams_received");
        recv_calls += counter(s, "recv_syscalls");
    }
    assert!(recv_calls < received, "bursts are read several datagrams per recvmmsg: {recv_calls} calls for {received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbatched_udp_makes_one_system_call_per_datagram() {
    let (endpoints, mut joined) = udp_group(3, "FRAG:NAK", false).await;
    let stats = cast_and_check(&endpoints, &mut joined, 100, 100).await;
    for s in &stats {
        let sent = counter(s, "datagrams_sent")
            + counter(s, "send_drops")
            + s.counters.entries.iter().filter(|(n, _)| *n == "send_errors").map(|(_, v)| v).sum::<u64>();
        assert_eq!(counter(s, "send_syscalls"), sent, "{s:?}");
        assert_eq!(counter(s, "recv_syscalls"), counter(s, "datagrams_received"), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_longer_than_a_receive_slot_arrive_whole() {
    let (endpoints, mut joined) = udp_group(3, "FRAG(frag_size=9000):NAK", true).await;
    let stats = cast_and_check(&endpoints, &mut joined, 60, 20_000).await;
    for s in &stats {
        let oversized = counter(s, "recv_oversized");
        assert!(oversized >= 1, "9000-byte datagrams exceed the first 2 KiB slot: {s:?}");
        // The slot grows past 9000 bytes at the first one; a few more may
        // come in the same recvmmsg.
        assert!(oversized <= 64, "the slot did not grow: {s:?}");
        assert!(counter(s, "datagrams_received") > 100);
    }
}
