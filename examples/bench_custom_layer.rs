//! Benchmarking a layer of your own with strata's per-layer harness.
//!
//! `SEQCHECK` is a small user-defined layer: it numbers each member's casts
//! (a varint header) and checks on arrival that every sender's casts come
//! in order, none missing, none twice, dropping and counting any that do
//! not, a checker in the manner of Ensemble's `chk_fifo`. Put it above a
//! reliability layer (`FRAG:NAK:SEQCHECK`) to watch that layer in a live
//! stack.
//!
//! The bench runs it alone, through the public harness
//! (`strata::harness::bench`), exactly as `cargo bench --bench layers` runs
//! the built-in layers: one copy of the layer per member of a view of 8 (and
//! of 64), every member casting 64-byte messages in turn over a model
//! network that delivers every cast to every member in FIFO order; the run
//! is recorded at one member and replayed into fresh copies of the layer
//! with a clock around each run of downward and upward events. The
//! harness's own cost (moving events, reading the clock) is measured on the
//! same workload with its pass-through `BASELINE` layer and subtracted.
//!
//! Run it:
//!
//! ```sh
//! cargo run --release --example bench_custom_layer
//! ```
//!
//! It prints, per view size, the nanoseconds per message on the way down
//! and up (with and without the harness's cost), the header bytes the layer
//! adds per message and the control messages it sends per message. A debug
//! build (`cargo test` runs this example) uses a short workload and checks
//! the results without trusting the timings.

use std::collections::HashMap;
use strata::harness::bench::{LayerBench, Senders, Workload};
use strata::{Context, Down, Layer, LayerDescriptor, MemberId, MsgFlags, Params, Props, Stats, Up, Writer};

/// The descriptor: how `SEQCHECK` is named in stack strings and built.
pub const SEQCHECK: LayerDescriptor = LayerDescriptor {
    name: "SEQCHECK",
    summary: "numbers each member's casts and drops any that arrive out of order, missing one or twice",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[],
    // A varint of a 64-bit number.
    max_header_len: |_| 10,
    build: |_| Ok(Box::new(SeqCheck::default())),
};

/// The running layer.
#[derive(Default)]
pub struct SeqCheck {
    /// Number of this member's next cast, plus one (0 marks an unchecked
    /// out-of-band cast on the wire).
    next: u64,
    /// Per sender: the number its next cast must carry.
    expected: HashMap<MemberId, u64>,
    checked: u64,
    out_of_order: u64,
}

impl Layer for SeqCheck {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(mut msg) => {
                let number = if msg.flags().contains(MsgFlags::OOB) {
                    0
                } else {
                    self.next += 1;
                    self.next
                };
                let mut w = Writer::new();
                w.varint(number);
                msg.push(w.as_slice());
                cx.down(Down::Cast(msg));
            }
            other => cx.down(other),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, mut msg } => {
                let Ok(number) = msg.pop_with(|r| r.varint()) else { return cx.drop_malformed("bad_header") };
                if number != 0 {
                    let expected = self.expected.entry(from).or_insert(1);
                    if number != *expected {
                        self.out_of_order += 1;
                        return cx.drop_malformed("out_of_order");
                    }
                    *expected += 1;
                    self.checked += 1;
                }
                cx.up(Up::Cast { from, msg });
            }
            other => cx.up(other),
        }
    }

    fn stats(&self, out: &mut Stats) {
        out.add("checked", self.checked).add("out_of_order", self.out_of_order);
    }
}

fn main() {
    // Short in debug builds: they run as a test and check results, not speed.
    let (casts, replays) = if cfg!(debug_assertions) { (2_000, 3) } else { (20_000, 31) };
    let params = Params::defaults(SEQCHECK.params).expect("SEQCHECK has no parameters");
    let bench = LayerBench::new(SEQCHECK.name, move || (SEQCHECK.build)(&params).expect("SEQCHECK builds"));
    let baseline = LayerBench::baseline();
    println!("| layer | members | ns/msg down | ns/msg up | down − BASELINE | up − BASELINE | header bytes/msg | control msgs/msg |");
    println!("|---|---|---|---|---|---|---|---|");
    for members in [8, 64] {
        // Every member casts in turn; recorded at rank 1.
        let workload = Workload::new(members, 64, Senders::All, casts);
        let rec = bench.record(&workload);
        assert!(rec.complete, "every member delivered every cast");
        assert!(rec.drops.is_empty(), "a FIFO network delivers in order: {:?}", rec.drops);
        assert_eq!(rec.stats.get("checked"), Some(casts as u64), "the observer checked every cast");
        let base_rec = baseline.record(&workload);
        let cost = bench.measure(&rec, replays);
        let base = baseline.measure(&base_rec, replays);
        let net = cost.minus(base);
        println!(
            "| SEQCHECK | {members} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.3} |",
            cost.down,
            cost.up,
            net.down,
            net.up,
            rec.header_bytes_per_cast(),
            rec.control_per_cast()
        );
        // A varint of at most the casts per member: one or two bytes.
        assert!((1.0..=2.0).contains(&rec.header_bytes_per_cast()));
        assert_eq!(rec.control_sent, 0);
    }
}

#[test]
fn example_runs() {
    main();
}
