//! Members of one group in this process, each on a thread of its own with
//! a single-threaded tokio runtime, talking over the in-process transport
//! (`MemNetwork`) through the public runtime API (`Endpoint`, `Group`,
//! `Events`), exactly as an application would. Every member casts its share
//! of 64-byte messages as fast as the stack takes them, and takes its
//! events in batches (`Events::next_many`); the example prints the messages
//! delivered per second at each member. The member threads are the
//! `stacks/threaded` bench's (`benches/support/mem_threads.rs`), run for
//! one long burst.
//!
//! ```sh
//! cargo run --release --example mem_group -- 'FRAG:NAK:CAUSAL:VSYNC:TOTAL' 300000 3
//! ```
//!
//! Arguments: the stack string (default the full ordering stack), the casts
//! per member (default 200 000), the members (default 3), each member's
//! receive queue in datagrams (default `MemNetwork`'s, 4096) and the
//! largest bundle in bytes (default 8192, as over UDP; 0 sends every frame
//! as a datagram of its own). Where `examples/stack_loop.rs` runs every
//! member on one thread on a virtual clock, this spreads them over the
//! machine's cores on the real clock. A member that sees no delivery for
//! 10 s makes the example exit 1 with its statistics.

#[path = "../benches/support/mem_threads.rs"]
mod mem_threads;

use bytes::Bytes;
use mem_threads::ThreadedGroup;
use strata::transport::bundle::DEFAULT_BUNDLE_BYTES;
use strata::transport::mem::{MemNetwork, DEFAULT_QUEUE_DATAGRAMS};

const BODY_BYTES: usize = 64;

fn main() {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "FRAG:NAK:CAUSAL:VSYNC:TOTAL".into());
    let casts: usize = number(args.next(), 200_000, "casts per member");
    let members: usize = number(args.next(), 3, "members");
    if members == 0 {
        eprintln!("mem_group: at least one member");
        std::process::exit(2);
    }
    // Without bundling every cast is a datagram, and a queue of 4096
    // overflows again and again: the group gets through, retransmitting, at
    // about a seventh of the speed (docs/performance.md, "Fixed").
    let queue: usize = number(args.next(), DEFAULT_QUEUE_DATAGRAMS, "queue datagrams");
    let bundle: usize = number(args.next(), DEFAULT_BUNDLE_BYTES, "bundle bytes");
    if let Err(e) = strata::layers::builtin().resolve(&spec) {
        eprintln!("mem_group: {e}");
        std::process::exit(2);
    }
    let net = MemNetwork::with_limits(queue, strata::transport::udp::MAX_DATAGRAM).with_bundle(bundle);
    let body = Bytes::from(vec![0x5a; BODY_BYTES]);
    let took = ThreadedGroup::form(&spec, &spec, members, &body, net).and_then(|group| {
        let took = group.burst(casts)?;
        group.shutdown();
        Ok(took)
    });
    let took = took.unwrap_or_else(|e| {
        eprintln!("mem_group: {e}");
        std::process::exit(1);
    });
    let rates: Vec<f64> = took.iter().map(|t| (casts * members) as f64 / t.as_secs_f64()).collect();
    let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!("{spec}: {members} members, {casts} casts each: {} deliveries/s per member (min {min:.0})", shown.join(" / "));
}

fn number<T: std::str::FromStr>(arg: Option<String>, default: T, what: &str) -> T
where
    T::Err: std::fmt::Display,
{
    match arg.map(|s| s.parse::<T>()) {
        None => default,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("mem_group: {what}: {e}");
            std::process::exit(2);
        }
    }
}
