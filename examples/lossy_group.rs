//! Demo: three members over UDP on loopback, with 20% of incoming datagrams
//! dropped by the LOSS layer, cast messages through `FRAG:NAK`. Every member
//! delivers every message of every member exactly once, in each sender's order,
//! and the printed counters show the loss that NAK repaired.
//!
//! `cargo run --release --example lossy_group [-- CASTS SIZE PERCENT]`

use std::collections::BTreeMap;
use std::sync::Arc;
use strata::runtime::{Endpoint, JoinConfig};
use strata::transport::payload;
use strata::transport::udp::UdpTransport;
use strata::{AppEvent, MemberId};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numeric arguments: CASTS SIZE PERCENT")).collect();
    let casts = args.first().copied().unwrap_or(300);
    let size = args.get(1).copied().unwrap_or(3000) as usize;
    let percent = args.get(2).copied().unwrap_or(20);
    let stack = format!("LOSS(percent={percent}):FRAG:NAK");
    println!("3 members on 127.0.0.1, stack {stack}, {casts} casts of {size} bytes each\n");

    let registry = Arc::new(strata::builtin_registry());
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let transport = UdpTransport::bind("127.0.0.1:0".parse()?).await?;
        endpoints.push(Endpoint::new(transport, registry.clone()));
    }
    let members: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();

    let mut tasks = Vec::new();
    for endpoint in &endpoints {
        let mut cfg = JoinConfig::new("demo", stack.clone());
        cfg.members = members.clone();
        let (group, mut events) = endpoint.join(cfg).await?;
        tasks.push(tokio::spawn(async move {
            let me = group.local().to_string();
            let sender = {
                let group = group.clone();
                let me = me.clone();
                tokio::spawn(async move {
                    for k in 0..casts {
                        group.cast(payload::make(&me, k, size)).await.expect("group open");
                    }
                })
            };
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            let (mut delivered, mut fifo_ok, mut intact) = (0u64, true, true);
            while delivered < 3 * casts {
                let Some(AppEvent::Deliver { body, .. }) = events.next().await else { continue };
                intact &= payload::is_intact(&body);
                let (from, k) = payload::id(&body).and_then(payload::split_id).map(|(m, k)| (m.to_string(), k)).unwrap_or_default();
                let expected = next.entry(from).or_default();
                fifo_ok &= k == *expected;
                *expected = k + 1;
                delivered += 1;
            }
            sender.await.expect("sender");
            group.flush().await.expect("flush");
            let stats = group.stats().await.expect("stats");
            (me, delivered, fifo_ok, intact, stats)
        }));
    }
    for t in tasks {
        let (me, delivered, fifo_ok, intact, stats) = t.await?;
        println!("{me}: delivered {delivered} messages, per-sender FIFO {}, payloads intact {}", ok(fifo_ok), ok(intact));
        for layer in stats.iter().filter(|s| s.name != "engine") {
            let counters: Vec<String> = layer.counters.entries.iter().filter(|(_, v)| *v > 0).map(|(n, v)| format!("{n}={v}")).collect();
            println!("    {:<5} {}", layer.name, counters.join(" "));
        }
    }
    Ok(())
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "VIOLATED"
    }
}
