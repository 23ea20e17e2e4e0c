//! Transports compared on loopback: 3 endpoints in this process (a tokio
//! runtime with 2 worker threads), one `FRAG:NAK` group with fixed
//! membership, over UDP without batching, UDP with batched system calls
//! (`recvmmsg`/`sendmmsg`), IP multicast (batched) and the TCP tree (fanout
//! 2), the UDP and multicast rows without bundling; then UDP and IP
//! multicast with bundling (batched, their default), whose limit is
//! [`DEFAULT_BUNDLE_BYTES`] or `STRATA_BENCH_BUNDLE` bytes if that is set
//! (to compare limits).
//!
//! - `transports/<size>/<transport>`: the time it takes for every member to
//!   cast a burst of [`BURST`] messages of `size` bytes (64 B and 1 KiB) at
//!   once until every member has delivered all `3 × BURST` of them, reported
//!   as messages delivered per member per second. The time is this
//!   process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`: user and system time of
//!   all its threads, which on loopback includes the kernel's work of
//!   carrying each datagram to its receiver), not wall time, so that other
//!   work on a small shared machine does not count: it measures what a
//!   message costs, which is what batching saves.
//!
//! Afterwards the bench prints, per transport and size, the same rate by
//! CPU time and by wall time, and the transport's counters summed over the
//! three endpoints: datagrams sent and received per system call, drops
//! (full socket buffers) and NAK retransmissions, which explain the
//! differences. The group is formed and warmed up outside the
//! timed part; each variant gets fresh endpoints. Absolute figures depend on
//! the machine and on `net.core.rmem_max`/`wmem_max` (the sockets ask for 4
//! MiB); compare the rows with each other.
//!
//! `cargo bench --bench transports -- --warm-up-time 1 --measurement-time 5`
//!
//! (The `safe` and `encrypt` benches drive stacks on an in-process network
//! with a virtual clock; this one needs real sockets and the runtime, so it
//! shares none of their helpers.)

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_stack::runtime::{Endpoint, Events, Group, JoinConfig, Transport};
use strata_stack::{AppEvent, Delivery, MemberId};
use strata_transport::ipmc::{IpmcConfig, IpmcTransport};
use strata_transport::tcptree::{TcpTreeConfig, TcpTreeTransport};
use strata_transport::udp::{UdpConfig, UdpTransport, DEFAULT_BUNDLE_BYTES};

const MEMBERS: usize = 3;
/// Messages each member casts per burst.
const BURST: u64 = 2000;
const SIZES: [usize; 2] = [64, 1024];
const STACK: &str = "FRAG:NAK";
/// A burst not delivered by then is a bug.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Kind {
    UdpUnbatched,
    UdpBatched,
    Ipmc,
    TcpTree,
    UdpBundled,
    IpmcBundled,
}

const KINDS: [Kind; 6] = [Kind::UdpUnbatched, Kind::UdpBatched, Kind::Ipmc, Kind::TcpTree, Kind::UdpBundled, Kind::IpmcBundled];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::UdpUnbatched => "udp-unbatched",
            Kind::UdpBatched => "udp-batched",
            Kind::Ipmc => "ipmc",
            Kind::TcpTree => "tcptree",
            Kind::UdpBundled => "udp-bundled",
            Kind::IpmcBundled => "ipmc-bundled",
        }
    }
}

/// The bundle limit of the bundled cases.
fn bundle_limit() -> usize {
    std::env::var("STRATA_BENCH_BUNDLE").map_or(DEFAULT_BUNDLE_BYTES, |v| v.parse().expect("STRATA_BENCH_BUNDLE is a number of bytes"))
}

/// CPU time used so far by all threads of this process.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; this clock exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_PROCESS_CPUTIME_ID is readable");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One endpoint of `kind` on loopback, port chosen by the OS.
async fn endpoint(kind: Kind, group: &str, registry: &Arc<strata_stack::Registry>) -> Endpoint {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    fn spawn(t: impl Transport, registry: &Arc<strata_stack::Registry>) -> Endpoint {
        Endpoint::new(t, registry.clone())
    }
    match kind {
        Kind::UdpUnbatched => spawn(UdpTransport::bind_with(any, UdpConfig { batch: false, bundle: 0 }).await.unwrap(), registry),
        Kind::UdpBatched => spawn(UdpTransport::bind_with(any, UdpConfig { batch: true, bundle: 0 }).await.unwrap(), registry),
        Kind::UdpBundled => spawn(UdpTransport::bind_with(any, UdpConfig { batch: true, bundle: bundle_limit() }).await.unwrap(), registry),
        Kind::Ipmc | Kind::IpmcBundled => {
            let bundle = if matches!(kind, Kind::Ipmc) { 0 } else { bundle_limit() };
            let mut config = IpmcConfig { bundle, ..IpmcConfig::default() };
            // An address of the bench's own, away from other users of the host.
            config.addresses.insert(group.to_string(), SocketAddrV4::new(Ipv4Addr::new(239, 77, 9, 1), 24_901));
            spawn(IpmcTransport::bind(any, config).await.unwrap(), registry)
        }
        Kind::TcpTree => spawn(TcpTreeTransport::bind(any, TcpTreeConfig::default()).await.unwrap(), registry),
    }
}

/// The benchmarked group.
struct Net {
    endpoints: Vec<Endpoint>,
    groups: Vec<Group>,
    events: Vec<Events>,
}

impl Net {
    async fn form(kind: Kind) -> Net {
        let group = "transports-bench";
        let registry = Arc::new(strata_layers::builtin());
        let mut endpoints = Vec::new();
        for _ in 0..MEMBERS {
            endpoints.push(endpoint(kind, group, &registry).await);
        }
        let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
        let (mut groups, mut events) = (Vec::new(), Vec::new());
        for (i, ep) in endpoints.iter().enumerate() {
            let mut cfg = JoinConfig::new(group, STACK);
            cfg.members = members.clone();
            cfg.seed = i as u64;
            let (g, e) = ep.join(cfg).await.expect("join");
            groups.push(g);
            events.push(e);
        }
        Net { endpoints, groups, events }
    }

    /// Every member casts `BURST` copies of `body`; returns once every
    /// member has delivered all of them.
    async fn burst(&mut self, body: &Bytes) {
        let casters: Vec<_> = self
            .groups
            .iter()
            .cloned()
            .map(|g| {
                let body = body.clone();
                tokio::spawn(async move {
                    for _ in 0..BURST {
                        g.cast(body.clone()).await.expect("cast");
                    }
                })
            })
            .collect();
        let want = BURST * MEMBERS as u64;
        let [a, b, c] = &mut self.events[..] else { unreachable!("{MEMBERS} members") };
        let all = async { tokio::join!(count(a, want), count(b, want), count(c, want)) };
        tokio::time::timeout(PATIENCE, all).await.expect("a burst is delivered within a minute");
        for c in casters {
            c.await.unwrap();
        }
    }

    /// The transports' counters summed over the endpoints.
    async fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut sum: Vec<(&'static str, u64)> = Vec::new();
        for ep in &self.endpoints {
            let s = ep.stats().await.unwrap();
            for (name, v) in s.counters.entries.iter().chain(s.dropped.iter()) {
                match sum.iter_mut().find(|(n, _)| n == name) {
                    Some((_, total)) => *total += v,
                    None => sum.push((name, *v)),
                }
            }
        }
        for g in &self.groups {
            let stats = g.stats().await.unwrap();
            if let Some(v) = stats.iter().find(|l| l.name == "NAK").and_then(|l| l.counters.get("retransmitted")) {
                match sum.iter_mut().find(|(n, _)| *n == "nak_retransmitted") {
                    Some((_, total)) => *total += v,
                    None => sum.push(("nak_retransmitted", v)),
                }
            }
        }
        sum
    }

    async fn shutdown(self) {
        for ep in &self.endpoints {
            ep.shutdown().await;
        }
    }
}

/// Waits for `want` cast deliveries on `events`.
async fn count(events: &mut Events, want: u64) {
    let mut got = 0;
    while got < want {
        match events.next().await {
            Some(AppEvent::Deliver { kind: Delivery::Cast, .. }) => got += 1,
            Some(AppEvent::Problem(p)) => panic!("problem from {}: {}", p.layer, p.what),
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
}

fn transports(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut report = Vec::new();
    for size in SIZES {
        let body = Bytes::from(vec![0x5a; size]);
        let mut g = c.benchmark_group(format!("transports/{size}"));
        g.throughput(Throughput::Elements(BURST * MEMBERS as u64)).sample_size(10);
        for kind in KINDS {
            let mut net = rt.block_on(Net::form(kind));
            // Warm up: connections (TCP tree), buffers, NAK state.
            rt.block_on(net.burst(&body));
            let before = rt.block_on(net.counters());
            let mut bursts = 0u64;
            let (mut cpu, mut wall) = (Duration::ZERO, Duration::ZERO);
            g.bench_function(BenchmarkId::from_parameter(kind.label()), |b| {
                b.iter_custom(|iters| {
                    let (cpu_start, wall_start) = (process_cpu(), Instant::now());
                    for _ in 0..iters {
                        rt.block_on(net.burst(&body));
                    }
                    let used = process_cpu().saturating_sub(cpu_start);
                    bursts += iters;
                    cpu += used;
                    wall += wall_start.elapsed();
                    used
                })
            });
            let after = rt.block_on(net.counters());
            let delta = |name: &str| {
                let get = |v: &[(&str, u64)]| v.iter().find(|(n, _)| *n == name).map_or(0, |(_, x)| *x);
                get(&after) - get(&before)
            };
            let delivered = (bursts * BURST * MEMBERS as u64) as f64;
            let rate = |t: Duration| if t.is_zero() { 0.0 } else { delivered / t.as_secs_f64() };
            let per_call = |n: u64, calls: u64| if calls == 0 { f64::NAN } else { n as f64 / calls as f64 };
            report.push(format!(
                "{size:>5} B {:<14} {:>7.0} msg/s per member by CPU time, {:>7.0} by wall time | datagrams per send call {:>5.1}, per recv call {:>5.1} | frames per datagram sent {:>5.1} | send_drops {} | retransmitted {}",
                kind.label(),
                rate(cpu),
                rate(wall),
                per_call(delta("datagrams_sent"), delta("send_syscalls")),
                per_call(delta("datagrams_received"), delta("recv_syscalls")),
                // A datagram is a lone frame or a bundle of several.
                per_call(delta("datagrams_sent") + delta("send_drops") - delta("bundles_sent") + delta("frames_bundled"), delta("datagrams_sent") + delta("send_drops")),
                delta("send_drops"),
                delta("nak_retransmitted"),
            ));
            rt.block_on(net.shutdown());
        }
        g.finish();
    }
    println!(
        "\n{STACK}, {MEMBERS} members, bursts of {BURST} casts per member, bundled cases up to {} bytes (counters over the measured bursts):",
        bundle_limit()
    );
    for line in report {
        println!("{line}");
    }
}

criterion_group!(benches, transports);
criterion_main!(benches);
