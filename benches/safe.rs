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
use strata_stack::harness::net::LoopNet;
use strata_stack::{FsStorage, MemberId, Stack, StackConfig};

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

/// The benchmarked group: members on `LoopNet`, and their log directories.
struct Net {
    net: LoopNet,
    safe: bool,
    /// Log directories to remove when done.
    dirs: Vec<PathBuf>,
}

impl Net {
    /// Starts the members 50 ms apart and waits until every one has a view of
    /// all (and, with SAFE, SAFE is live).
    fn form(v: &Variant) -> Net {
        let mut net = LoopNet::new();
        net.record = false;
        let mut this = Net { net, safe: v.top == "SAFE", dirs: Vec::new() };
        let registry = strata_layers::builtin();
        for i in 0..MEMBERS {
            let spec = match v.log {
                None => format!("FRAG:NAK:VSYNC:{}", v.top),
                Some(params) => {
                    let dir = std::env::temp_dir().join(format!("strata-safebench-{}-{}-m{i}", std::process::id(), v.label));
                    let _ = std::fs::remove_dir_all(&dir);
                    let spec = format!("FRAG:NAK:VSYNC:SAFE({params}log_dir={})", dir.display());
                    this.dirs.push(dir);
                    spec
                }
            };
            let local = MemberId::new(addr(i), 1);
            let seeds = (0..MEMBERS).filter(|j| *j != i).map(|j| MemberId::new(addr(j), 0)).collect();
            let mut cfg = StackConfig::new("bench", local, seeds);
            cfg.seed = i as u64;
            cfg.storage = Arc::new(FsStorage);
            let stack = Stack::new(&registry, &spec, cfg, this.net.now()).unwrap_or_else(|e| panic!("{spec} builds: {e}"));
            this.net.push(stack);
            this.net.run_for(Duration::from_millis(50));
        }
        for _ in 0..100 {
            if (0..MEMBERS).all(|i| this.stack(i).view().len() == MEMBERS && (!this.safe || this.safe_counter(i, "live") == 1)) {
                return this;
            }
            this.net.run_for(Duration::from_millis(100));
        }
        panic!("{}: no view of all {MEMBERS} members formed", v.label);
    }

    fn stack(&self, i: usize) -> &Stack {
        self.net.stack(i).expect("no member crashes in the bench")
    }

    fn safe_counter(&self, i: usize, name: &str) -> u64 {
        let stats = self.stack(i).stats();
        stats.iter().find(|l| l.name == "SAFE").and_then(|l| l.counters.get(name)).unwrap_or(0)
    }

    fn delivered(&self) -> Vec<u64> {
        (0..MEMBERS).map(|i| self.net.delivered(i)).collect()
    }

    /// Casts `body` at member `i`, letting the network run while its send window is closed.
    fn cast(&mut self, i: usize, body: Bytes) {
        if let Err(e) = self.net.cast_when_open(i, body, TICK, 10_000) {
            panic!("member {i} refused casts for 1 s of virtual time: {e}");
        }
    }

    /// Runs, timer by timer, until every member delivered `target` messages.
    fn run_until_delivered(&mut self, target: u64) {
        let limit = self.net.now() + DELIVERY_LIMIT;
        loop {
            self.net.settle();
            if self.delivered().iter().all(|d| *d >= target) {
                return;
            }
            assert!(self.net.fire_next_timer(limit), "undelivered after {DELIVERY_LIMIT:?} of virtual time: {:?} of {target}", self.delivered());
        }
    }

    /// One burst of `BURST` casts, round-robin, until all are delivered everywhere.
    fn burst(&mut self, body: &Bytes) {
        let target = self.net.delivered(0) + BURST as u64;
        for k in 0..BURST {
            self.cast(k % MEMBERS, body.clone());
            if (k + 1) % CASTS_PER_TICK == 0 {
                self.net.run_for(TICK);
            }
        }
        self.run_until_delivered(target);
        assert!(self.delivered().iter().all(|d| *d == target), "each cast delivered once: {:?}, wanted {target}", self.delivered());
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..MEMBERS {
            self.net.set(i, None);
        }
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
        let virtual_start = net.net.now();
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
            println!("{}: {:?} of virtual time per burst of {BURST}", v.label, net.net.now().saturating_since(virtual_start) / bursts);
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
                    net.net.run_for(Duration::from_millis(5));
                    let target = net.net.delivered(0) + 1;
                    let cast_at = net.net.now();
                    let start = std::time::Instant::now();
                    net.cast(sender, body.clone());
                    net.run_until_delivered(target);
                    spent += start.elapsed();
                    virtual_total += net.net.now().saturating_since(cast_at);
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
