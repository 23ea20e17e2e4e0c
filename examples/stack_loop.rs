//! Casts bursts of 64-byte messages through one stack, 3 members in this
//! process on the in-process `LoopNet` (the `stacks` bench's setup, without
//! criterion), and prints messages delivered per second at each member. A
//! plain loop to run under a profiler:
//!
//! ```sh
//! cargo build --release --example stack_loop
//! target/release/examples/stack_loop 'FRAG:NAK:CAUSAL:VSYNC:TOTAL' 300
//! valgrind --tool=callgrind target/release/examples/stack_loop 'FRAG:NAK:CAUSAL:VSYNC:TOTAL' 30
//! ```
//!
//! Arguments: the stack string (default the full ordering stack) and the
//! number of timed bursts of 1000 casts (default 200), after 20 untimed ones.

#[path = "../benches/support/loop_group.rs"]
#[allow(dead_code)]
mod loop_group;

use bytes::Bytes;

const BURST: usize = 1000;
const WARM_UP_BURSTS: usize = 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "FRAG:NAK:CAUSAL:VSYNC:TOTAL".into());
    let bursts: usize = match args.next().map(|s| s.parse()) {
        None => 200,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("stack_loop: the number of bursts: {e}");
            std::process::exit(2);
        }
    };
    let mut group = loop_group::LoopGroup::form(&spec, 3, |_| spec.clone(), |_| true);
    let body = Bytes::from(vec![0x5a; 64]);
    for _ in 0..WARM_UP_BURSTS {
        group.burst(&body, BURST);
    }
    let start = std::time::Instant::now();
    for _ in 0..bursts {
        group.burst(&body, BURST);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{spec}: {:.0} messages/s delivered at each member ({bursts} bursts of {BURST})", (bursts * BURST) as f64 / secs);
}
