//! Several groups with different transports in one process, and two groups
//! over each transport, all casting at once on loopback: every group
//! delivers exactly its own members' casts, each sender's in order.

mod runtime_support;

use runtime_support::*;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use strata_stack::runtime::{Endpoint, Events, Group, JoinConfig};
use strata_stack::{MemberId, Registry};
use strata_transport::ipmc::{IpmcConfig, IpmcTransport};
use strata_transport::tcptree::{TcpTreeConfig, TcpTreeTransport};
use strata_transport::udp::UdpTransport;

const MEMBERS: usize = 3;
const CASTS: u64 = 200;
const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

async fn endpoints(kind: &str, registry: &Arc<Registry>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for _ in 0..MEMBERS {
        let ep = match kind {
            "udp" => Endpoint::new(UdpTransport::bind(LOOPBACK).await.expect("bind udp"), registry.clone()),
            "ipmc" => {
                // Addresses of this test's own, so that parallel tests never share one.
                let mut config = IpmcConfig::default();
                config.addresses.insert("ipmc-a".into(), SocketAddrV4::new(Ipv4Addr::new(239, 77, 41, 1), 24101));
                config.addresses.insert("ipmc-b".into(), SocketAddrV4::new(Ipv4Addr::new(239, 77, 41, 2), 24102));
                Endpoint::new(IpmcTransport::bind(LOOPBACK, config).await.expect("bind ipmc"), registry.clone())
            }
            _ => Endpoint::new(TcpTreeTransport::bind(LOOPBACK, TcpTreeConfig::default()).await.expect("bind tcptree"), registry.clone()),
        };
        out.push(ep);
    }
    out
}

async fn join(eps: &[Endpoint], group: &str) -> Vec<(Group, Events)> {
    let all: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut out = Vec::new();
    for ep in eps {
        let mut cfg = JoinConfig::new(group, "FRAG:NAK");
        cfg.members = all.clone();
        out.push(ep.join(cfg).await.expect("join"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_over_different_transports_in_one_process_never_mix() {
    let registry = Arc::new(strata_layers::builtin());
    let mut groups = Vec::new();
    let mut all_endpoints = Vec::new();
    for kind in ["udp", "ipmc", "tcptree"] {
        let eps = endpoints(kind, &registry).await;
        for suffix in ["a", "b"] {
            let name = format!("{kind}-{suffix}");
            let members: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
            // Each group casts payloads of its own size: a payload of a group
            // on the same endpoints would show by its length (and its sender's
            // numbering would repeat).
            let size = 300 + groups.len();
            groups.push((name.clone(), members, size, join(&eps, &name).await));
        }
        all_endpoints.push(eps);
    }
    let mut casters = Vec::new();
    for (_, _, size, joined) in &groups {
        for (g, _) in joined {
            let (g, size) = (g.clone(), *size);
            casters.push(tokio::spawn(async move { cast_payloads(&g, CASTS, size).await }));
        }
    }
    for (name, members, size, joined) in &mut groups {
        for (_, events) in joined.iter_mut() {
            let got = deliveries(events, MEMBERS * CASTS as usize).await;
            check_fifo(&got, members, CASTS);
            assert!(got.iter().all(|(_, body)| body.len() == *size), "{name} delivered another group's payload");
        }
    }
    for c in casters {
        c.await.expect("caster");
    }
}
