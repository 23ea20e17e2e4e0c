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

#[path = "support/loop_group.rs"]
mod loop_group;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loop_group::LoopGroup;

const MEMBERS: usize = 3;
const BURST: usize = 1000;
const SIZE: usize = 64;

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

/// Forms the variant's group: every member in a view of all and, with
/// SAFE, SAFE live. Each member with a log gets a fresh directory.
fn form(v: &Variant) -> LoopGroup {
    let dir = |i: usize| std::env::temp_dir().join(format!("strata-safebench-{}-{}-m{i}", std::process::id(), v.label));
    let spec = |i: usize| match v.log {
        None => format!("FRAG:NAK:VSYNC:{}", v.top),
        Some(params) => {
            let _ = std::fs::remove_dir_all(dir(i));
            format!("FRAG:NAK:VSYNC:SAFE({params}log_dir={})", dir(i).display())
        }
    };
    let safe = v.top == "SAFE";
    let live = |s: &strata_stack::Stack| !safe || s.stats().iter().find(|l| l.name == "SAFE").and_then(|l| l.counters.get("live")) == Some(1);
    let mut group = LoopGroup::form(v.label, MEMBERS, spec, live);
    if v.log.is_some() {
        group.dirs = (0..MEMBERS).map(dir).collect();
    }
    group
}

fn safe_vs_total(c: &mut Criterion) {
    let body = Bytes::from(vec![0x5a; SIZE]);
    let mut nets: Vec<(&Variant, LoopGroup)> = VARIANTS.iter().map(|v| (v, form(v))).collect();

    let mut g = c.benchmark_group("safe/throughput");
    g.throughput(Throughput::Elements(BURST as u64)).sample_size(10);
    for (v, net) in &mut nets {
        let virtual_start = net.net.now();
        let mut bursts = 0u32;
        g.bench_function(BenchmarkId::from_parameter(v.label), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    net.burst(&body, BURST);
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

    loop_group::bench_latency(c, "safe/latency", nets.iter_mut().map(|(v, g)| (v.label, g)), &body);
}

criterion_group!(benches, safe_vs_total);
criterion_main!(benches);
