//! SAFE against TOTAL: 3 real `Stack`s (`FRAG:NAK:VSYNC:<top>`) on an
//! in-process, lossless, zero-latency network with a virtual clock, no tokio.
//!
//! Four stacks: `TOTAL`; `SAFE` in memory only; `SAFE` with a log file per
//! member but no fsync; `SAFE` with a log file and fsync (the default). The
//! logs live in fresh directories under `std::env::temp_dir()`, so the fsync
//! figures depend on that disk.
//!
//! - `throughput`: wall time to cast a burst of 1000 messages of 64 bytes
//!   (round-robin over the members, the virtual clock advancing 100 µs per
//!   10 casts so batching timers fire) until every member delivered all of
//!   them. Reported as messages per second.
//! - `latency`: wall time for one cast, in an idle group, to be delivered at
//!   every member. The virtual time this took (batching timers) is printed.
//!
//! Forming the group happens outside the timed part. The application calls
//! `done` for every SAFE delivery at once, so the logs are garbage-collected.
//!
//! `cargo bench --bench safe -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::{AppEvent, Delivery, Dest, FsStorage, Instant, MemberId, Stack, StackConfig};

const MEMBERS: usize = 3;
const BURST: usize = 1000;
const SIZE: usize = 64;
/// Casts between two advances of the virtual clock in a burst.
const CASTS_PER_TICK: usize = 10;
const TICK: Duration = Duration::from_micros(100);
/// Virtual time after which a burst or a cast that is still undelivered is a bug.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i as u8 + 1)), 7000)
}

/// How a benchmarked stack is configured.
struct Variant {
    label: &'static str,
    top: &'static str,
    /// SAFE parameters besides `log_dir`; `None` = no log directory.
    log: Option<&'static str>,
}

const VARIANTS: [Variant; 4] = [
    Variant { label: "TOTAL", top: "TOTAL", log: None },
    Variant { label: "SAFE-memory", top: "SAFE", log: None },
    Variant { label: "SAFE-log-nofsync", top: "SAFE", log: Some("fsync=false,") },
    Variant { label: "SAFE-log-fsync", top: "SAFE", log: Some("") },
];

/// Members on one lossless, zero-latency network with a virtual clock.
struct Net {
    now: Instant,
    nodes: Vec<Stack>,
    /// Application deliveries (casts and SAFE deliveries) per member.
    delivered: Vec<u64>,
    safe: bool,
    /// Log directories to remove when done.
    dirs: Vec<PathBuf>,
}

impl Net {
    /// Starts the members 50 ms apart and waits until every one has a view of
    /// all (and, with SAFE, SAFE is live).
    fn form(v: &Variant) -> Net {
        let mut net = Net { now: Instant::ZERO, nodes: Vec::new(), delivered: vec![0; MEMBERS], safe: v.top == "SAFE", dirs: Vec::new() };
        let registry = strata_layers::builtin();
        for i in 0..MEMBERS {
            let spec = match v.log {
                None => format!("FRAG:NAK:VSYNC:{}", v.top),
                Some(params) => {
                    let dir = std::env::temp_dir().join(format!("strata-safebench-{}-{}-m{i}", std::process::id(), v.label));
                    let _ = std::fs::remove_dir_all(&dir);
                    let spec = format!("FRAG:NAK:VSYNC:SAFE({params}log_dir={})", dir.display());
                    net.dirs.push(dir);
                    spec
                }
            };
            let local = MemberId::new(addr(i), 1);
            let seeds = (0..MEMBERS).filter(|j| *j != i).map(|j| MemberId::new(addr(j), 0)).collect();
            let mut cfg = StackConfig::new("bench", local, seeds);
            cfg.seed = i as u64;
            cfg.storage = Arc::new(FsStorage);
            let stack = Stack::new(&registry, &spec, cfg, net.now).unwrap_or_else(|e| panic!("{spec} builds: {e}"));
            net.nodes.push(stack);
            net.settle();
            net.run_for(Duration::from_millis(50));
        }
        for _ in 0..100 {
            if (0..MEMBERS).all(|i| net.nodes[i].view().len() == MEMBERS && (!net.safe || net.safe_counter(i, "live") == 1)) {
                return net;
            }
            net.run_for(Duration::from_millis(100));
        }
        panic!("{}: no view of all {MEMBERS} members formed", v.label);
    }

    fn safe_counter(&self, i: usize, name: &str) -> u64 {
        let stats = self.nodes[i].stats();
        stats.iter().find(|l| l.name == "SAFE").and_then(|l| l.counters.get(name)).unwrap_or(0)
    }

    /// Moves every datagram and event until nothing moves at this instant.
    fn settle(&mut self) {
        let now = self.now;
        let mut out = Vec::new();
        let mut dones = Vec::new();
        let mut states = Vec::new();
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let stack = &mut self.nodes[i];
                while let Some(t) = stack.poll_transmit() {
                    out.push(t);
                }
                while let Some(ev) = stack.poll_event() {
                    match ev {
                        AppEvent::Deliver { kind, .. } => {
                            self.delivered[i] += 1;
                            if let Delivery::Safe { tag, .. } = kind {
                                dones.push(tag);
                            }
                        }
                        AppEvent::StateRequest { token, .. } => states.push(token),
                        _ => {}
                    }
                }
                for token in states.drain(..) {
                    // The application's state is empty; SAFE adds its own part.
                    stack.provide_state(now, token, None).expect("the end of a state is never refused");
                    moved = true;
                }
                for tag in dones.drain(..) {
                    stack.done(now, tag).expect("SAFE is in the stack");
                    moved = true;
                }
                for t in out.drain(..) {
                    moved = true;
                    let data = t.msg.to_bytes();
                    for j in 0..self.nodes.len() {
                        let to_j = match t.dest {
                            Dest::Group => j != i,
                            Dest::Member(m) => m.addr() == addr(j),
                        };
                        if to_j {
                            self.nodes[j].handle_datagram(now, data.clone());
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Fires the earliest due timers, moving the clock to them, if one is due by `limit`.
    fn fire_next_timer(&mut self, limit: Instant) -> bool {
        match self.nodes.iter().filter_map(|s| s.poll_timeout()).min() {
            Some(d) if d <= limit => {
                self.now = self.now.max(d);
                for s in &mut self.nodes {
                    if s.poll_timeout().is_some_and(|d| d <= self.now) {
                        s.handle_timeout(self.now);
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Runs until `t`, firing timers in order.
    fn run_until(&mut self, t: Instant) {
        loop {
            self.settle();
            if !self.fire_next_timer(t) {
                break;
            }
        }
        self.now = self.now.max(t);
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Casts `body` at member `i`, letting the network run while its send window is closed.
    fn cast(&mut self, i: usize, body: Bytes) {
        for _ in 0..10_000 {
            if self.nodes[i].cast(self.now, body.clone()).is_ok() {
                return;
            }
            self.run_for(TICK);
        }
        panic!("member {i} refused casts for 1 s of virtual time");
    }

    /// Runs, timer by timer, until every member delivered `target` messages.
    fn run_until_delivered(&mut self, target: u64) {
        let limit = self.now + DELIVERY_LIMIT;
        loop {
            self.settle();
            if self.delivered.iter().all(|d| *d >= target) {
                return;
            }
            assert!(self.fire_next_timer(limit), "undelivered after {DELIVERY_LIMIT:?} of virtual time: {:?} of {target}", self.delivered);
        }
    }

    /// One burst of `BURST` casts, round-robin, until all are delivered everywhere.
    fn burst(&mut self, body: &Bytes) {
        let target = self.delivered[0] + BURST as u64;
        for k in 0..BURST {
            self.cast(k % MEMBERS, body.clone());
            if (k + 1) % CASTS_PER_TICK == 0 {
                self.run_for(TICK);
            }
        }
        self.run_until_delivered(target);
        assert!(self.delivered.iter().all(|d| *d == target), "each cast delivered once: {:?}, wanted {target}", self.delivered);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.nodes.clear();
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn safe_vs_total(c: &mut Criterion) {
    let body = Bytes::from(vec![0x5a; SIZE]);
    let mut nets: Vec<(&Variant, Net)> = VARIANTS.iter().map(|v| (v, Net::form(v))).collect();

    let mut g = c.benchmark_group("safe/throughput");
    g.throughput(Throughput::Elements(BURST as u64)).sample_size(10);
    for (v, net) in &mut nets {
        let virtual_start = net.now;
        let mut bursts = 0u32;
        g.bench_function(BenchmarkId::from_parameter(v.label), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    net.burst(&body);
                }
                bursts += iters as u32;
                start.elapsed()
            })
        });
        if bursts > 0 {
            println!("{}: {:?} of virtual time per burst of {BURST}", v.label, net.now.saturating_since(virtual_start) / bursts);
        }
    }
    g.finish();

    let mut g = c.benchmark_group("safe/latency");
    for (v, net) in &mut nets {
        let (mut virtual_total, mut casts) = (Duration::ZERO, 0u32);
        let mut sender = 0;
        g.bench_function(BenchmarkId::from_parameter(v.label), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    // Idle: acknowledgements and GC of the previous cast are exchanged.
                    net.run_for(Duration::from_millis(5));
                    let target = net.delivered[0] + 1;
                    let cast_at = net.now;
                    let start = std::time::Instant::now();
                    net.cast(sender, body.clone());
                    net.run_until_delivered(target);
                    spent += start.elapsed();
                    virtual_total += net.now.saturating_since(cast_at);
                    casts += 1;
                    sender = (sender + 1) % MEMBERS;
                }
                spent
            })
        });
        if casts > 0 {
            println!("{}: {:?} of virtual time per cast until delivered everywhere", v.label, virtual_total / casts);
        }
    }
    g.finish();
}

criterion_group!(benches, safe_vs_total);
criterion_main!(benches);
