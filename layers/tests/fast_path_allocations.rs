//! The fast paths of FRAG (messages that need no split), NAK, CAUSAL,
//! TOTAL (at the sequencer too) and VSYNC (in a steady view) allocate
//! nothing per message.
//!
//! Each layer runs through the public bench harness
//! (`strata_stack::harness::bench`): 8 members casting 64-byte messages in
//! turn, recorded at one member, then replayed into a fresh copy of the
//! layer with a counting global allocator as the meter. What the harness
//! itself allocates on the same workload (the `BASELINE` layer, which
//! forwards everything) is subtracted. Growth of buffers that reach their
//! working size and stay there is amortized over the 20 000 messages, so the
//! bound is a small fraction of an allocation per message, not zero.
//!
//! Only this thread's allocations count (the test runner runs tests on
//! several threads at once).
//!
//! `STRATA_ALLOC_TRACE=1 cargo test -p strata-layers --test fast_path_allocations -- --nocapture --test-threads 1`
//! prints a backtrace of every allocation made while the replays are
//! metered (the BASELINE ones included), to find the culprit of a failure.

use bytes::Bytes;
use std::sync::OnceLock;
use std::time::Duration;
use strata_layers::{causal::CAUSAL, frag::FRAG, nak::NAK, total::TOTAL, vsync::VSYNC};
use strata_stack::harness::alloc::{thread_allocations, trace_allocations, CountingAllocator};
use strata_stack::harness::bench::{LayerBench, PerMessage, Recording, Senders, Workload};
use strata_stack::{Context, Down, Layer, LayerDescriptor, Msg, Params};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Whether `STRATA_ALLOC_TRACE` is set (read once).
fn tracing_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("STRATA_ALLOC_TRACE").is_some())
}

const MEMBERS: usize = 8;
const SIZE: usize = 64;
const CASTS: usize = 20_000;
/// Most allocations per message a fast path may make, growth of buffers to
/// their working size included.
const BOUND: f64 = 0.02;

fn bench_of(desc: LayerDescriptor) -> LayerBench {
    let params = Params::defaults(desc.params).expect("defaults are valid");
    LayerBench::new(desc.name, move || (desc.build)(&params).expect("builds with its defaults"))
}

fn workload(desc: LayerDescriptor, observer: usize) -> Workload {
    let w = Workload { observer, ..Workload::new(MEMBERS, SIZE, Senders::All, CASTS) };
    // VSYNC forms its group first (its join timeout, then a round).
    if desc.name == VSYNC.name {
        w.settled(Duration::from_secs(3))
    } else {
        w
    }
}

/// Allocations per message of one replay of `rec`.
fn allocations_per_message(bench: &LayerBench, rec: &Recording) -> PerMessage {
    let mut replay = bench.prepare(rec);
    trace_allocations(tracing_enabled());
    let metered = replay.run_metered(thread_allocations);
    trace_allocations(false);
    rec.per_message(metered)
}

/// The layer's allocations per message at the member of rank `observer`,
/// less the harness's own.
fn net_allocations(desc: LayerDescriptor, observer: usize) -> PerMessage {
    let bench = bench_of(desc);
    let rec = bench.record(&workload(desc, observer));
    assert!(rec.complete, "{} delivered every cast everywhere", desc.name);
    assert_eq!(rec.casts_down, (CASTS / MEMBERS) as u64);
    assert_eq!(rec.views, 0, "{} measured in a steady view", desc.name);
    let baseline = LayerBench::baseline();
    let base_rec = baseline.record(&workload(desc, observer));
    let base = allocations_per_message(&baseline, &base_rec);
    let layer = allocations_per_message(&bench, &rec);
    let net = layer.minus(base);
    eprintln!("{} at rank {observer}: {:.4} allocations per message down, {:.4} up (harness: {:.4}, {:.4})", desc.name, net.down, net.up, base.down, base.up);
    net
}

fn assert_allocation_free(desc: LayerDescriptor, observer: usize) {
    let net = net_allocations(desc, observer);
    assert!(net.down < BOUND, "{} at rank {observer} allocates {:.4} times per message passed down", desc.name, net.down);
    assert!(net.up < BOUND, "{} at rank {observer} allocates {:.4} times per message delivered", desc.name, net.up);
}

/// Copies every message it passes down: one allocation per cast.
struct Copying;

impl Layer for Copying {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(msg) => cx.down(Down::Cast(Msg::new(Bytes::copy_from_slice(msg.body())))),
            other => cx.down(other),
        }
    }
}

#[test]
fn the_meter_sees_a_layer_that_allocates_per_message() {
    let bench = LayerBench::new("COPYING", || Box::new(Copying));
    let w = Workload::new(MEMBERS, SIZE, Senders::All, CASTS);
    let net = allocations_per_message(&bench, &bench.record(&w)).minus(allocations_per_message(&LayerBench::baseline(), &LayerBench::baseline().record(&w)));
    assert!(net.down >= 1.0, "one copy per cast passed down: {net:?}");
}

#[test]
fn the_harness_itself_allocates_nothing_per_message() {
    let baseline = LayerBench::baseline();
    let rec = baseline.record(&Workload::new(MEMBERS, SIZE, Senders::All, CASTS));
    let base = allocations_per_message(&baseline, &rec);
    assert!(base.down < BOUND && base.up < BOUND, "the harness allocates {base:?} per message: the layers' figures would hide theirs");
}

#[test]
fn frag_allocates_nothing_per_message_that_fits_a_datagram() {
    assert_allocation_free(FRAG, 1);
}

#[test]
fn nak_allocates_nothing_per_message() {
    assert_allocation_free(NAK, 1);
}

#[test]
fn causal_allocates_nothing_per_message() {
    assert_allocation_free(CAUSAL, 1);
}

#[test]
fn total_allocates_nothing_per_message_at_a_member_that_is_not_the_sequencer() {
    assert_allocation_free(TOTAL, 1);
}

#[test]
fn total_allocates_nothing_per_message_at_the_sequencer() {
    assert_allocation_free(TOTAL, 0);
}

#[test]
fn vsync_allocates_nothing_per_message_in_a_steady_view() {
    assert_allocation_free(VSYNC, 1);
}
