//! A user-defined layer in a stack string next to the built-in ones.
//!
//! `RATE` is a sender-side rate limiter (a token bucket): casts and sends pass
//! at most `msgs_per_sec` per second on average, with bursts of up to `burst`
//! messages; what exceeds the rate waits in a bounded queue, and when the queue
//! is full the layer closes the send window so the application's `cast().await`
//! waits instead of memory growing. It shows the whole contract: a descriptor
//! with parameters, timers on the virtual clock, backpressure, and stats.
//!
//! Run it: `cargo run --example custom_layer`. It builds three members on the
//! in-process transport with the stack `FRAG:NAK:RATE(msgs_per_sec=2000,burst=20)`
//! and checks that every member delivers every message in order.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use strata::runtime::{Endpoint, JoinConfig};
use strata::transport::mem::MemNetwork;
use strata::{AppEvent, Context, Down, Instant, Layer, LayerDescriptor, MemberId, ParamKind, ParamSpec, Params, Props, Stats};

/// The descriptor a registry stores: what `RATE` is called, what it needs and how to build it.
pub const RATE: LayerDescriptor = LayerDescriptor {
    name: "RATE",
    summary: "sender-side token-bucket rate limiter with a bounded queue and backpressure",
    requires: Props::NONE,
    provides: Props::NONE,
    params: &[
        ParamSpec { name: "msgs_per_sec", kind: ParamKind::U64 { min: 1, max: 10_000_000 }, default: "10000", doc: "average rate", wire: false },
        ParamSpec { name: "burst", kind: ParamKind::U64 { min: 1, max: 1_000_000 }, default: "100", doc: "messages that may pass back to back", wire: false },
        ParamSpec {
            name: "max_queue",
            kind: ParamKind::U64 { min: 1, max: 1_000_000 },
            default: "1000",
            doc: "held messages before backpressure",
            wire: false,
        },
    ],
    // RATE adds no header.
    max_header_len: |_| 0,
    build: |p| Ok(Box::new(Rate::new(p))),
};

const RELEASE: u32 = 0;

/// The running layer.
pub struct Rate {
    /// Nanoseconds of credit one message costs.
    cost_ns: u64,
    /// Credit cap: `burst` messages' worth.
    cap_ns: u64,
    /// Credit available at `last`.
    credit_ns: u64,
    /// When credit was last topped up.
    last: Instant,
    /// Messages waiting for credit, oldest first.
    held: VecDeque<Down>,
    max_queue: usize,
    passed: u64,
    delayed: u64,
    held_max: u64,
}

impl Rate {
    fn new(p: &Params) -> Self {
        let cost_ns = 1_000_000_000 / p.u64("msgs_per_sec");
        let cap_ns = cost_ns.saturating_mul(p.u64("burst"));
        Rate {
            cost_ns,
            cap_ns,
            credit_ns: cap_ns,
            last: Instant::ZERO,
            held: VecDeque::new(),
            max_queue: p.u64("max_queue") as usize,
            passed: 0,
            delayed: 0,
            held_max: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_since(self.last).as_nanos() as u64;
        self.credit_ns = self.credit_ns.saturating_add(earned).min(self.cap_ns);
        self.last = now;
    }

    /// Passes held messages while credit lasts; re-arms for the next one.
    fn release(&mut self, cx: &mut Context<'_>) {
        self.refill(cx.now());
        while self.credit_ns >= self.cost_ns {
            let Some(ev) = self.held.pop_front() else { break };
            self.credit_ns -= self.cost_ns;
            self.passed += 1;
            cx.down(ev);
        }
        if !self.held.is_empty() {
            let wait = Duration::from_nanos(self.cost_ns - self.credit_ns);
            cx.set_timer(RELEASE, cx.now() + wait);
        }
        cx.set_backpressure(self.held.len() >= self.max_queue);
    }
}

impl Layer for Rate {
    fn init(&mut self, cx: &mut Context<'_>) {
        self.last = cx.now();
    }

    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(_) | Down::Send { .. } => {
                if !self.held.is_empty() {
                    self.delayed += 1;
                }
                self.held.push_back(ev);
                self.held_max = self.held_max.max(self.held.len() as u64);
                if self.held.len() == 1 {
                    let before = self.passed;
                    self.release(cx);
                    self.delayed += u64::from(self.passed == before);
                } else {
                    cx.set_backpressure(self.held.len() >= self.max_queue);
                }
            }
            ev => cx.down(ev),
        }
    }

    fn timeout(&mut self, cx: &mut Context<'_>, _key: u32) {
        self.release(cx);
    }

    fn stats(&self, out: &mut Stats) {
        out.add("passed", self.passed).add("delayed", self.delayed).add("held", self.held.len() as u64).add("held_max", self.held_max);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut registry = strata::builtin_registry();
    registry.register(RATE).expect("RATE is a new name");
    let registry = Arc::new(registry);
    let stack = "FRAG:NAK:RATE(msgs_per_sec=2000,burst=20)";
    let casts = 100u64;

    let net = MemNetwork::new();
    let addrs: Vec<_> = (1..=3).map(|i| format!("10.0.0.{i}:7000").parse().unwrap()).collect();
    let members: Vec<MemberId> = addrs.iter().map(|a| MemberId::new(*a, 0)).collect();
    let mut groups = Vec::new();
    for addr in &addrs {
        let endpoint = Endpoint::new(net.bind(*addr), registry.clone());
        let mut cfg = JoinConfig::new("rate-demo", stack);
        cfg.members = members.clone();
        groups.push(endpoint.join(cfg).await.expect("the stack string is valid"));
    }

    let mut tasks = Vec::new();
    for (group, mut events) in groups {
        tasks.push(tokio::spawn(async move {
            let me = group.local().to_string();
            for k in 0..casts {
                group.cast(Bytes::from(format!("{me}:{k}"))).await.expect("group is open");
            }
            // Deliveries in per-sender order: sender -> next expected k.
            let mut next = std::collections::BTreeMap::<String, u64>::new();
            let mut delivered = 0;
            while delivered < 3 * casts {
                match events.next().await {
                    Some(AppEvent::Deliver { body, .. }) => {
                        let text = String::from_utf8(body.to_vec()).unwrap();
                        let (from, k) = text.rsplit_once(':').unwrap();
                        let expected = next.entry(from.to_string()).or_default();
                        assert_eq!(k.parse::<u64>().unwrap(), *expected, "FIFO from {from}");
                        *expected += 1;
                        delivered += 1;
                    }
                    Some(_) => {}
                    None => panic!("events ended early"),
                }
            }
            let stats = group.stats().await.unwrap();
            let rate = stats.iter().find(|s| s.name == "RATE").unwrap();
            println!("{me}: delivered {delivered} in order; RATE {:?}", rate.counters.entries);
            group.flush().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.expect("member task");
    }
}

#[test]
fn example_runs() {
    main();
}
