//! What the driver tells a transport and takes from it, with an
//! instrumented transport over the in-process network: groups opened and
//! closed, views in rank order, casts handed to `Transport::cast`, lost
//! peers turned into suspicions, and a seedless join that discovers its
//! seeds through the transport.

mod runtime_support;

use bytes::Bytes;
use runtime_support::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use strata_stack::engine::group_id;
use strata_stack::runtime::{Endpoint, JoinConfig, Transport};
use strata_stack::{AppEvent, MemberId, Stats};
use strata_transport::mem::{MemNetwork, MemTransport};

/// What the driver did to a [`Watched`] transport, and what the test wants
/// it to report.
#[derive(Default)]
struct Watch {
    opened: Vec<(u32, String)>,
    closed: Vec<u32>,
    views: Vec<(u32, Vec<SocketAddr>)>,
    casts: usize,
    sends: usize,
    flushes: usize,
    probes: Vec<u32>,
    /// Peers `poll_lost` reports next.
    lose: Vec<SocketAddr>,
    /// What `discovered` answers (`None`: the transport does not discover).
    found: Option<Vec<SocketAddr>>,
}

struct Watched {
    inner: MemTransport,
    watch: Arc<Mutex<Watch>>,
}

impl Watched {
    fn bind(net: &MemNetwork) -> (Watched, Arc<Mutex<Watch>>) {
        let watch = Arc::new(Mutex::new(Watch::default()));
        (Watched { inner: net.bind("127.0.0.1:0".parse().unwrap()), watch: watch.clone() }, watch)
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap()
    }
}

impl Transport for Watched {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
    fn max_datagram(&self) -> usize {
        self.inner.max_datagram()
    }
    fn poll_recv(&mut self, cx: &mut Context<'_>, out: &mut Vec<(SocketAddr, Bytes)>) -> Poll<std::io::Result<()>> {
        self.inner.poll_recv(cx, out)
    }
    fn send(&mut self, to: &[SocketAddr], frame: &[&[u8]]) -> std::io::Result<()> {
        self.watch().sends += 1;
        self.inner.send(to, frame)
    }
    fn cast(&mut self, _gid: u32, peers: &[SocketAddr], frame: &[&[u8]]) -> std::io::Result<()> {
        self.watch().casts += 1;
        self.inner.send(peers, frame)
    }
    fn open_group(&mut self, gid: u32, name: &str) -> std::io::Result<()> {
        self.watch().opened.push((gid, name.to_string()));
        Ok(())
    }
    fn close_group(&mut self, gid: u32) {
        self.watch().closed.push(gid);
    }
    fn set_view(&mut self, gid: u32, members: &[SocketAddr]) {
        self.watch().views.push((gid, members.to_vec()));
    }
    fn flush(&mut self) {
        self.watch().flushes += 1;
        // The inner transport bundles: what it queued leaves now.
        self.inner.flush();
    }
    fn poll_lost(&mut self, out: &mut Vec<SocketAddr>) {
        out.append(&mut self.watch().lose);
    }
    fn discovers(&self) -> bool {
        self.watch().found.is_some()
    }
    fn discover(&mut self, gid: u32) {
        self.watch().probes.push(gid);
    }
    fn discovered(&self, _gid: u32) -> Vec<SocketAddr> {
        self.watch().found.clone().unwrap_or_default()
    }
    fn stats(&self, out: &mut Stats) {
        self.inner.stats(out)
    }
}

fn registry() -> Arc<strata_stack::Registry> {
    Arc::new(strata_layers::builtin())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_learns_groups_views_and_casts_and_lost_peers_become_suspicions() {
    let net = MemNetwork::new();
    let (a_transport, watch) = Watched::bind(&net);
    let a = Endpoint::new(a_transport, test_registry());
    let b = Endpoint::new(net.bind("127.0.0.1:0".parse().unwrap()), test_registry());
    let all = vec![MemberId::new(a.local_addr(), 0), MemberId::new(b.local_addr(), 0)];
    let mut joined = Vec::new();
    for ep in [&a, &b] {
        let mut cfg = JoinConfig::new("routed", "PASS");
        cfg.members = all.clone();
        joined.push(ep.join(cfg).await.expect("join"));
    }
    let gid = group_id("routed");
    {
        let w = watch.lock().unwrap();
        assert_eq!(w.opened, vec![(gid, "routed".to_string())]);
        assert_eq!(w.views, vec![(gid, all.iter().map(MemberId::addr).collect::<Vec<_>>())], "the view, in rank order");
    }
    cast_payloads(&joined[0].0, 5, 10).await;
    let got = deliveries(&mut joined[1].1, 5).await;
    check_fifo(&got, &all[..1], 5);
    {
        let w = watch.lock().unwrap();
        assert_eq!(w.casts, 5, "each group cast goes through Transport::cast once");
        assert!(w.flushes > 0);
    }

    // A lost peer reaches the application (no membership layer here) as a suspicion.
    watch.lock().unwrap().lose.push(b.local_addr());
    // Any input makes the driver run a round; the cast is that input.
    joined[0].0.cast(Bytes::from_static(b"nudge")).await.unwrap();
    loop {
        match next_event(&mut joined[0].1).await {
            Some(AppEvent::Suspect(m)) => {
                assert_eq!(m, all[1]);
                break;
            }
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    assert_eq!(a.stats().await.unwrap().counters.get("peers_lost"), Some(1));

    joined[0].0.leave().await.unwrap();
    assert_eq!(watch.lock().unwrap().closed, vec![gid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_without_seeds_discovers_them_through_the_transport() {
    let net = MemNetwork::new();
    let registry = registry();
    let stack = "NAK:VSYNC(join_timeout_ms=400)";
    // The founder: nobody to discover.
    let (founder_transport, founder_watch) = Watched::bind(&net);
    founder_watch.lock().unwrap().found = Some(Vec::new());
    let founder = Endpoint::new(founder_transport, registry.clone());
    let (_g0, mut events0) = founder.join(JoinConfig::new("found", stack)).await.expect("join");
    assert!(!founder_watch.lock().unwrap().probes.is_empty(), "the founder looked for members first");
    let first = loop {
        if let Some(AppEvent::View(v)) = next_event(&mut events0).await {
            break v;
        }
    };
    assert_eq!(first.len(), 1);

    // The joiner's transport "discovers" the founder.
    let (joiner_transport, joiner_watch) = Watched::bind(&net);
    joiner_watch.lock().unwrap().found = Some(vec![founder.local_addr()]);
    let joiner = Endpoint::new(joiner_transport, registry.clone());
    let mut cfg = JoinConfig::new("found", stack);
    cfg.discovery = Duration::from_millis(250);
    let (_g1, mut events1) = joiner.join(cfg).await.expect("join");
    let probes = joiner_watch.lock().unwrap().probes.len();
    assert!((2..=4).contains(&probes), "a probe every 100 ms for 250 ms, got {probes}");
    let view = loop {
        if let Some(AppEvent::View(v)) = next_event(&mut events1).await {
            break v;
        }
    };
    assert_eq!(view.len(), 2, "joined the founder's group: {view:?}");

    // Discovery is skipped with seeds, and for stacks without membership.
    let (plain_transport, plain_watch) = Watched::bind(&net);
    plain_watch.lock().unwrap().found = Some(vec![founder.local_addr()]);
    let plain = Endpoint::new(plain_transport, registry);
    plain.join(JoinConfig::new("fixed", "NAK")).await.expect("join");
    assert!(plain_watch.lock().unwrap().probes.is_empty());
}
