//! Queries on `FRAG:NAK:VSYNC:QUERY` over the in-process transport: a member
//! asks the group and collects replies from all members, or a majority,
//! while a member stops answering and then crashes.
//!
//! Run it: `cargo run --example query`. Three replicas start; each answers a
//! query with its name and the request in capitals. Then:
//! 1. A asks everyone (`Want::All`) and gets three replies.
//! 2. C stops answering; A asks a majority and gets two replies at once.
//! 3. A asks everyone with a 30 s timeout; C crashes after receiving the
//!    query. VSYNC removes C from the view within about `suspect_ms`, and the
//!    query completes without it, long before the timeout: `missing` names C.
//!
//! The program checks each result and exits with an error if one is wrong.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata::event::{QueryOutcome, QueryResult, Want};
use strata::runtime::{Endpoint, Events, Group, JoinConfig};
use strata::transport::mem::MemNetwork;
use strata::{AppEvent, MemberId};
use tokio::sync::watch;

const STACK: &str = "FRAG:NAK:VSYNC(heartbeat_ms=50,suspect_ms=500):QUERY";

/// One replica: its handle, whether its application answers, and the
/// sizes of the views it installed and the queries it was asked, as they
/// change.
struct Replica {
    group: Group,
    answering: Arc<AtomicBool>,
    view_len: watch::Receiver<usize>,
    asked: watch::Receiver<u64>,
}

impl Replica {
    async fn start(endpoint: &Endpoint, seeds: Vec<MemberId>) -> Result<Replica, Box<dyn std::error::Error>> {
        let mut cfg = JoinConfig::new("query-demo", STACK);
        cfg.members = seeds;
        let (group, events) = endpoint.join(cfg).await?;
        let answering = Arc::new(AtomicBool::new(true));
        let (view_tx, view_len) = watch::channel(0);
        let (asked_tx, asked) = watch::channel(0);
        tokio::spawn(application(group.clone(), events, answering.clone(), view_tx, asked_tx));
        Ok(Replica { group, answering, view_len, asked })
    }

    async fn wait_view_of(&mut self, n: usize) {
        let _ = self.view_len.wait_for(|len| *len == n).await;
    }

    async fn wait_asked(&mut self, n: u64) {
        let _ = self.asked.wait_for(|k| *k >= n).await;
    }
}

/// The application: answers every query (while `answering`) and reports views.
async fn application(group: Group, mut events: Events, answering: Arc<AtomicBool>, view_len: watch::Sender<usize>, asked: watch::Sender<u64>) {
    while let Some(ev) = events.next().await {
        match ev {
            AppEvent::Query { from, id, body } => {
                if answering.load(Ordering::SeqCst) {
                    let answer = format!("{} says {}", group.local(), String::from_utf8_lossy(&body).to_uppercase());
                    // From another task, so that this one keeps reading events.
                    let g = group.clone();
                    tokio::spawn(async move { g.reply(from, id, Bytes::from(answer)).await });
                }
                asked.send_modify(|k| *k += 1);
            }
            AppEvent::View(v) => {
                let _ = view_len.send(v.len());
            }
            AppEvent::Problem(p) => eprintln!("{}: problem in {}: {}", group.local(), p.layer, p.what),
            _ => {}
        }
    }
}

fn show(what: &str, r: &QueryResult, elapsed: Duration) {
    println!("{what}: {:?} after {elapsed:.1?}", r.outcome);
    for (m, body) in &r.replies {
        println!("  {m}: {}", String::from_utf8_lossy(body));
    }
    if !r.missing.is_empty() {
        println!("  missing: {:?}", r.missing);
    }
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = MemNetwork::new();
    let registry = Arc::new(strata::builtin_registry());
    let endpoints: Vec<Endpoint> = (0..3).map(|_| Endpoint::new(net.bind("127.0.0.1:0".parse().unwrap()), registry.clone())).collect();
    let founder = MemberId::new(endpoints[0].local_addr(), 0);
    let mut replicas = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut r = Replica::start(ep, if i == 0 { vec![] } else { vec![founder] }).await?;
        if i == 0 {
            r.wait_view_of(1).await;
        }
        replicas.push(r);
    }
    for r in &mut replicas {
        r.wait_view_of(3).await;
    }
    let (a, c) = (replicas[0].group.clone(), replicas[2].group.local());
    println!("three replicas in one view; A is {}, C is {c}", a.local());

    // 1. Everyone.
    let t = Instant::now();
    let r = a.query(Bytes::from_static(b"hello"), Want::All, Duration::from_secs(30)).await?;
    show("all", &r, t.elapsed());
    check(r.outcome == QueryOutcome::Complete && r.replies.len() == 3, "three replies")?;

    // 2. C stops answering: a majority does without it.
    replicas[2].answering.store(false, Ordering::SeqCst);
    let t = Instant::now();
    let r = a.query(Bytes::from_static(b"majority?"), Want::Majority, Duration::from_secs(30)).await?;
    show("majority", &r, t.elapsed());
    check(r.outcome == QueryOutcome::Complete && r.replies.len() == 2 && r.missing == vec![c], "a majority without C")?;

    // 3. C crashes once it has the query: it is not waited for.
    let t = Instant::now();
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.query(Bytes::from_static(b"anyone left?"), Want::All, Duration::from_secs(30)).await })
    };
    replicas[2].wait_asked(3).await;
    endpoints[2].shutdown().await;
    let r = waiting.await??;
    show("all, C crashed", &r, t.elapsed());
    check(r.outcome == QueryOutcome::Complete && r.missing == vec![c] && t.elapsed() < Duration::from_secs(10), "completed without C")?;
    replicas[0].wait_view_of(2).await;
    println!("A's view now has 2 members");

    for ep in &endpoints[..2] {
        ep.shutdown().await;
    }
    Ok(())
}
