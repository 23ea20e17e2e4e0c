//! A group of real `Stack`s on `LoopNet` (in-process, lossless, zero
//! latency, virtual clock, no tokio) for the whole-stack benches: forming
//! it, casting bursts round-robin, and waiting until every member delivered.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strata_stack::harness::net::LoopNet;
use strata_stack::{FsStorage, MemberId, Props, Registry, Stack, StackConfig};

/// Casts between two advances of the virtual clock in a burst (so that
/// batching and status timers fire as they would in real time).
pub const CASTS_PER_TICK: usize = 10;
/// The virtual time a tick advances.
pub const TICK: Duration = Duration::from_micros(100);
/// Virtual time after which a burst or a cast that is still undelivered is a bug.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i as u8 + 1)), 7000)
}

/// `members` stacks built from `spec_of(i)`, formed into one view.
pub struct LoopGroup {
    pub net: LoopNet,
    members: usize,
    /// Directories to remove when done (durable logs).
    pub dirs: Vec<PathBuf>,
}

impl LoopGroup {
    /// Builds the members (50 ms of virtual time apart) and runs until every
    /// one has a view of all of them and `ready` holds for each. With a
    /// membership layer the others are seeds; without, the fixed membership.
    pub fn form(label: &str, members: usize, spec_of: impl Fn(usize) -> String, ready: impl Fn(&Stack) -> bool) -> LoopGroup {
        let mut net = LoopNet::new();
        net.record = false;
        let mut this = LoopGroup { net, members, dirs: Vec::new() };
        let registry: Registry = strata_layers::builtin();
        for i in 0..members {
            let spec = spec_of(i);
            let membership = registry.resolve(&spec).is_ok_and(|r| r.layers.iter().any(|(d, _)| d.provides.contains(Props::MEMBERSHIP)));
            let incarnation = u64::from(membership);
            let local = MemberId::new(addr(i), incarnation);
            let others = (0..members).filter(|j| *j != i || !membership).map(|j| MemberId::new(addr(j), if j == i { incarnation } else { 0 }));
            let mut cfg = StackConfig::new("bench", local, others.collect());
            cfg.seed = i as u64;
            cfg.storage = Arc::new(FsStorage);
            let stack = Stack::new(&registry, &spec, cfg, this.net.now()).unwrap_or_else(|e| panic!("{spec} builds: {e}"));
            this.net.push(stack);
            this.net.run_for(Duration::from_millis(50));
        }
        for _ in 0..100 {
            if (0..members).all(|i| this.stack(i).view().len() == members && ready(this.stack(i))) {
                return this;
            }
            this.net.run_for(Duration::from_millis(100));
        }
        panic!("{label}: no view of all {members} members formed");
    }

    pub fn stack(&self, i: usize) -> &Stack {
        self.net.stack(i).expect("no member crashes in the bench")
    }

    pub fn delivered(&self) -> Vec<u64> {
        (0..self.members).map(|i| self.net.delivered(i)).collect()
    }

    /// Casts `body` at member `i`, letting the network run while its send window is closed.
    pub fn cast(&mut self, i: usize, body: Bytes) {
        if let Err(e) = self.net.cast_when_open(i, body, TICK, 10_000) {
            panic!("member {i} refused casts for 1 s of virtual time: {e}");
        }
    }

    /// Runs, timer by timer, until every member delivered `target` messages.
    pub fn run_until_delivered(&mut self, target: u64) {
        let limit = self.net.now() + DELIVERY_LIMIT;
        loop {
            self.net.settle();
            if self.delivered().iter().all(|d| *d >= target) {
                return;
            }
            assert!(self.net.fire_next_timer(limit), "undelivered after {DELIVERY_LIMIT:?} of virtual time: {:?} of {target}", self.delivered());
        }
    }

    /// One burst of `n` casts, round-robin over the members, until every
    /// member delivered all of them (each exactly once).
    pub fn burst(&mut self, body: &Bytes, n: usize) {
        let target = self.net.delivered(0) + n as u64;
        for k in 0..n {
            self.cast(k % self.members, body.clone());
            if (k + 1) % CASTS_PER_TICK == 0 {
                self.net.run_for(TICK);
            }
        }
        self.run_until_delivered(target);
        assert!(self.delivered().iter().all(|d| *d == target), "each cast delivered once: {:?}, wanted {target}", self.delivered());
    }

    /// One cast from `sender` in an idle group until every member delivered
    /// it: (wall time, virtual time).
    pub fn one_cast(&mut self, sender: usize, body: &Bytes) -> (Duration, Duration) {
        // Idle: acknowledgements of the previous cast are exchanged.
        self.net.run_for(Duration::from_millis(5));
        let target = self.net.delivered(0) + 1;
        let cast_at = self.net.now();
        let start = std::time::Instant::now();
        self.cast(sender, body.clone());
        self.run_until_delivered(target);
        (start.elapsed(), self.net.now().saturating_since(cast_at))
    }
}

impl Drop for LoopGroup {
    fn drop(&mut self) {
        for i in 0..self.members {
            self.net.set(i, None);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Benchmark group `name`: for each labelled group, the wall time for one
/// cast in an idle group (senders in turn) to be delivered at every member;
/// prints the virtual time that took (batching timers).
pub fn bench_latency<'a>(c: &mut Criterion, name: &str, groups: impl IntoIterator<Item = (&'a str, &'a mut LoopGroup)>, body: &Bytes) {
    let mut g = c.benchmark_group(name);
    for (label, group) in groups {
        let (mut virtual_total, mut casts, mut sender) = (Duration::ZERO, 0u32, 0);
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let (wall, virt) = group.one_cast(sender, body);
                    spent += wall;
                    virtual_total += virt;
                    casts += 1;
                    sender = (sender + 1) % group.members;
                }
                spent
            })
        });
        if casts > 0 {
            println!("{label}: {:?} of virtual time per cast until delivered everywhere", virtual_total / casts);
        }
    }
    g.finish();
}
