//! Whole stacks: the canonical stacks, 3 members each. The first two groups
//! run all members on one thread over an in-process, lossless, zero-latency
//! network with a virtual clock (`LoopNet`: no tokio, no sockets), so what
//! is measured is the layers and the engine; the third runs them as an
//! application would, on threads of their own.
//!
//! - `stacks/throughput/<stack>`: wall time to cast a burst of 1000
//!   messages of 64 bytes (round-robin over the members, the virtual clock
//!   advancing 100 µs per 10 casts so timers fire) until every member
//!   delivered all of them. Criterion's elements/s is then messages
//!   delivered per second at each member.
//! - `stacks/latency/<stack>`: wall time for one cast in an idle group to be
//!   delivered at every member (the virtual time it took, which batching
//!   timers add, is printed).
//! - `stacks/threaded/<stack>`: the same stacks but SAFE, on the real clock:
//!   each member on a thread of its own with a single-threaded tokio
//!   runtime, over the in-process transport (`MemNetwork`, default limits:
//!   bounded queues, frames bundled as over UDP) through the public runtime
//!   API (`Endpoint`, `Group::cast`, `Events::next_many`). Wall time from
//!   the start signal until the last member has delivered a burst in which
//!   every member casts 10 000 messages of 64 bytes (30 000 in all; each
//!   member delivers all of them, its own included). Criterion's elements/s
//!   is then messages delivered per second at each member. Between bursts
//!   the members stay joined and idle; the bench's thread starts each burst
//!   and hears back over channels (`support/mem_threads.rs`).
//!
//! Forming the groups happens outside the timed part.
//!
//! `cargo bench --bench stacks -- --warm-up-time 1 --measurement-time 3`

#[path = "support/loop_group.rs"]
mod loop_group;
#[path = "support/mem_threads.rs"]
mod mem_threads;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loop_group::LoopGroup;
use mem_threads::ThreadedGroup;
use strata::transport::mem::MemNetwork;

const MEMBERS: usize = 3;
const BURST: usize = 1000;
const SIZE: usize = 64;
/// Casts per member in a burst of `stacks/threaded` (3 × 10 000 deliveries
/// at each member: tens of milliseconds).
const THREADED_BURST: usize = 10_000;

/// The stacks measured; `{key}` is replaced by a fresh key file's path.
const STACKS: [&str; 5] =
    ["FRAG:NAK", "FRAG:NAK:CAUSAL:VSYNC", "FRAG:NAK:CAUSAL:VSYNC:TOTAL", "FRAG:NAK:VSYNC:SAFE", "ENCRYPT(key_file={key}):FRAG:NAK:CAUSAL:VSYNC:TOTAL"];

fn stacks(c: &mut Criterion) {
    let key = std::env::temp_dir().join(format!("strata-stacksbench-{}.key", std::process::id()));
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).expect("write a key file");
    let body = Bytes::from(vec![0x5a; SIZE]);
    let live = |s: &strata_stack::Stack| s.stats().iter().find(|l| l.name == "SAFE").is_none_or(|l| l.counters.get("live") == Some(1));
    // (label, stack string): the label leaves ENCRYPT's key file out.
    let specs: Vec<(String, String)> = STACKS
        .iter()
        .map(|spec| {
            let spec = spec.replace("{key}", &key.display().to_string());
            let label = spec.split('(').next().unwrap_or(&spec).to_string() + if spec.starts_with("ENCRYPT") { ":FRAG:NAK:CAUSAL:VSYNC:TOTAL" } else { "" };
            (label, spec)
        })
        .collect();
    let mut groups: Vec<(&str, LoopGroup)> =
        specs.iter().map(|(label, spec)| (label.as_str(), LoopGroup::form(label, MEMBERS, |_| spec.clone(), live))).collect();

    let mut g = c.benchmark_group("stacks/throughput");
    g.throughput(Throughput::Elements(BURST as u64)).sample_size(10);
    for (label, group) in &mut groups {
        g.bench_function(BenchmarkId::from_parameter(*label), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    group.burst(&body, BURST);
                }
                start.elapsed()
            })
        });
    }
    g.finish();

    loop_group::bench_latency(c, "stacks/latency", groups.iter_mut().map(|(l, g)| (*l, g)), &body);
    drop(groups);

    // SAFE is left out: its members are ready only once it reports itself live.
    let mut g = c.benchmark_group("stacks/threaded");
    g.throughput(Throughput::Elements((MEMBERS * THREADED_BURST) as u64)).sample_size(10);
    for (label, spec) in specs.iter().filter(|(label, _)| !label.contains("SAFE")) {
        // Formed on first use, so that a filter that skips it starts no threads.
        let mut group = None;
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            let group = group.get_or_insert_with(|| ThreadedGroup::form(label, spec, MEMBERS, &body, MemNetwork::new()).unwrap_or_else(|e| panic!("{e}")));
            // The burst takes as long as its slowest member.
            let burst = |group: &ThreadedGroup| group.burst(THREADED_BURST).unwrap_or_else(|e| panic!("{e}")).into_iter().max().unwrap_or_default();
            b.iter_custom(|iters| (0..iters).map(|_| burst(group)).sum())
        });
        if let Some(group) = group {
            group.shutdown();
        }
    }
    g.finish();
    let _ = std::fs::remove_file(&key);
}

criterion_group!(benches, stacks);
criterion_main!(benches);
