//! Per-layer micro-benchmarks: each built-in layer alone, in views of 8 and
//! 64 members, every member casting 64-byte messages in turn, measured at a
//! member of rank 1 (not the sequencer, not the first token holder).
//!
//! For each layer and view size it reports the time per message on the way
//! down (the application's casts) and on the way up (everything the model
//! network delivered, layer control messages included, per application
//! message), and prints the header bytes the layer adds per message and the
//! control messages it sends per message. `BASELINE`, a layer that forwards
//! everything, measures the harness's own cost per message (moving events
//! through the queue), which the other figures include.
//!
//! `cargo bench --bench layers`; `cargo bench --bench layers -- CAUSAL` for one layer.
//! The harness is `strata_stack::harness::bench`, usable for your own layers
//! (`LayerBench::new(name, || Box::new(MyLayer))`).

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use strata_layers::{causal::CAUSAL, frag::FRAG, nak::NAK, token::TOKEN, total::TOTAL};
use strata_stack::harness::bench::{LayerBench, Recording, Senders, Workload};
use strata_stack::{Layer, LayerDescriptor, Params, Props};

const SIZE: usize = 64;
const CASTS: usize = 20_000;

fn bench_of(desc: LayerDescriptor) -> LayerBench {
    let params = Params::defaults(desc.params).expect("defaults are valid");
    LayerBench::new(desc.name, move || (desc.build)(&params).expect("builds with its defaults"))
}

/// Times `iters` messages in one direction by replaying `rec` as often as needed.
fn per_message(bench: &LayerBench, rec: &Recording, iters: u64, down: bool) -> Duration {
    let per_replay = if down { rec.casts_down } else { rec.delivered }.max(1);
    let (mut spent, mut done) = (Duration::ZERO, 0u64);
    while done < iters {
        let t = bench.replay(rec);
        spent += if down { t.down } else { t.up };
        done += per_replay;
    }
    spent.mul_f64(iters as f64 / done as f64)
}

/// Forwards everything: what the harness itself costs per message, to
/// subtract from the layers' figures.
struct PassThrough;
impl Layer for PassThrough {}

const BASELINE: LayerDescriptor = LayerDescriptor {
    name: "BASELINE",
    summary: "forwards every event (the harness's own cost)",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    max_header_len: |_| 0,
    build: |_| Ok(Box::new(PassThrough)),
};

fn layers(c: &mut Criterion) {
    for desc in [BASELINE, FRAG, NAK, CAUSAL, TOTAL, TOKEN] {
        let bench = bench_of(desc);
        for members in [8usize, 64] {
            let rec = bench.record(&Workload::new(members, SIZE, Senders::All, CASTS));
            assert!(rec.complete, "{} with {members} members did not deliver every cast everywhere", desc.name);
            println!(
                "{} members={members}: {:.2} header bytes per message, {:.3} control messages per message",
                desc.name,
                rec.header_bytes_per_cast(),
                rec.control_per_cast()
            );
            let mut g = c.benchmark_group(format!("{}/{members}", desc.name));
            g.bench_function("down", |b| b.iter_custom(|iters| per_message(&bench, &rec, iters, true)));
            g.bench_function("up", |b| b.iter_custom(|iters| per_message(&bench, &rec, iters, false)));
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = layers
}
criterion_main!(benches);
