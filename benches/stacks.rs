//! Whole stacks: the canonical stacks, 3 members each, on an in-process,
//! lossless, zero-latency network with a virtual clock (`LoopNet`: no
//! tokio, no sockets), so what is measured is the layers and the engine.
//!
//! - `stacks/throughput/<stack>`: wall time to cast a burst of 1000
//!   messages of 64 bytes (round-robin over the members, the virtual clock
//!   advancing 100 µs per 10 casts so timers fire) until every member
//!   delivered all of them. Criterion's elements/s is then messages
//!   delivered per second at each member.
//! - `stacks/latency/<stack>`: wall time for one cast in an idle group to be
//!   delivered at every member (the virtual time it took, which batching
//!   timers add, is printed).
//!
//! Forming the group happens outside the timed part.
//!
//! `cargo bench --bench stacks -- --warm-up-time 1 --measurement-time 3`

#[path = "support/loop_group.rs"]
mod loop_group;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loop_group::LoopGroup;

const MEMBERS: usize = 3;
const BURST: usize = 1000;
const SIZE: usize = 64;

/// The stacks measured; `{key}` is replaced by a fresh key file's path.
const STACKS: [&str; 5] =
    ["FRAG:NAK", "FRAG:NAK:CAUSAL:VSYNC", "FRAG:NAK:CAUSAL:VSYNC:TOTAL", "FRAG:NAK:VSYNC:SAFE", "ENCRYPT(key_file={key}):FRAG:NAK:CAUSAL:VSYNC:TOTAL"];

fn stacks(c: &mut Criterion) {
    let key = std::env::temp_dir().join(format!("strata-stacksbench-{}.key", std::process::id()));
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).expect("write a key file");
    let body = Bytes::from(vec![0x5a; SIZE]);
    let live = |s: &strata_stack::Stack| s.stats().iter().find(|l| l.name == "SAFE").is_none_or(|l| l.counters.get("live") == Some(1));
    let mut groups: Vec<(String, LoopGroup)> = STACKS
        .iter()
        .map(|spec| {
            let spec = spec.replace("{key}", &key.display().to_string());
            let label = spec.split('(').next().unwrap_or(&spec).to_string() + if spec.starts_with("ENCRYPT") { ":FRAG:NAK:CAUSAL:VSYNC:TOTAL" } else { "" };
            let group = LoopGroup::form(&label, MEMBERS, |_| spec.clone(), live);
            (label, group)
        })
        .collect();

    let mut g = c.benchmark_group("stacks/throughput");
    g.throughput(Throughput::Elements(BURST as u64)).sample_size(10);
    for (label, group) in &mut groups {
        g.bench_function(BenchmarkId::from_parameter(&*label), |b| {
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

    loop_group::bench_latency(c, "stacks/latency", groups.iter_mut().map(|(l, g)| (l.as_str(), g)), &body);
    drop(groups);
    let _ = std::fs::remove_file(&key);
}

criterion_group!(benches, stacks);
criterion_main!(benches);
