//! Members of one group in this process, each on a thread of its own with
//! a single-threaded tokio runtime, talking over the in-process transport
//! (`MemNetwork`) through the public runtime API (`Endpoint`, `Group`,
//! `Events`), exactly as an application would. Every member casts its share
//! of 64-byte messages as fast as the stack takes them, and takes its
//! events in batches (`Events::next_many`); the example prints the messages
//! delivered per second at each member.
//!
//! ```sh
//! cargo run --release --example mem_group -- 'FRAG:NAK:CAUSAL:VSYNC:TOTAL' 300000 3
//! ```
//!
//! Arguments: the stack string (default the full ordering stack), the casts
//! per member (default 200 000), the members (default 3), each member's
//! receive queue in datagrams (default `MemNetwork`'s, 4096) and the
//! largest bundle in bytes (default 8192, as over UDP; 0 sends every frame
//! as a datagram of its own). Where the
//! `stacks` bench runs every member on one thread on a virtual clock, this
//! spreads them over the machine's cores on the real clock.

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata::runtime::{Endpoint, JoinConfig};
use strata::transport::bundle::DEFAULT_BUNDLE_BYTES;
use strata::transport::mem::{MemNetwork, DEFAULT_QUEUE_DATAGRAMS};
use strata::{AppEvent, MemberId, Props};
use tokio::sync::Barrier;

const BODY_BYTES: usize = 64;
/// Events taken from the group at a time.
const EVENT_BATCH: usize = 256;
/// How long a member waits for the group to form, or for a delivery.
const PATIENCE: Duration = Duration::from_secs(10);

/// What every member shares.
struct Run {
    spec: String,
    casts: u64,
    members: usize,
    net: MemNetwork,
    registry: Arc<strata::Registry>,
    /// With a membership layer, member 0 founds the group and the others
    /// join through it once it has; without one, every member starts in
    /// the view of all of them.
    founder: MemberId,
    membership: bool,
    /// Meeting points of all members: the founder has founded; the view
    /// is whole; every member is done.
    meet: Barrier,
}

impl Run {
    /// Waits for every member at the next meeting point; an error if one
    /// does not come (it gave up) within [`PATIENCE`].
    async fn meet(&self, index: usize, what: &str) -> Result<(), String> {
        tokio::time::timeout(PATIENCE, self.meet.wait()).await.map(drop).map_err(|_| format!("member {index}: the others did not {what} within {PATIENCE:?}"))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "FRAG:NAK:CAUSAL:VSYNC:TOTAL".into());
    let casts: u64 = number(args.next(), 200_000, "casts per member");
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
    let registry = strata::layers::builtin();
    let resolved = registry.resolve(&spec).unwrap_or_else(|e| {
        eprintln!("mem_group: {e}");
        std::process::exit(2);
    });
    let run = Arc::new(Run {
        spec,
        casts,
        members,
        net: MemNetwork::with_limits(queue, strata::transport::udp::MAX_DATAGRAM).with_bundle(bundle),
        registry: Arc::new(registry),
        founder: member_id(0),
        membership: resolved.layers.iter().any(|(d, _)| d.provides.contains(Props::MEMBERSHIP)),
        meet: Barrier::new(members),
    });
    let threads: Vec<_> = (0..members)
        .map(|i| {
            let run = run.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
                rt.block_on(member(i, &run))
            })
        })
        .collect();
    let mut rates = Vec::new();
    for t in threads {
        match t.join().expect("a member thread") {
            Ok(rate) => rates.push(rate),
            Err(e) => {
                eprintln!("mem_group: {e}");
                std::process::exit(1);
            }
        }
    }
    let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!("{}: {members} members, {casts} casts each: {} deliveries/s per member (min {min:.0})", run.spec, shown.join(" / "));
}

fn addr(index: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + index as u16))
}

fn member_id(index: usize) -> MemberId {
    MemberId::new(addr(index), 1)
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

/// One member: joins, waits for the whole group, casts `run.casts` messages
/// from a task of its own and takes deliveries until it has every member's.
/// Returns its deliveries per second.
async fn member(index: usize, run: &Run) -> Result<f64, String> {
    let (members, casts) = (run.members, run.casts);
    let endpoint = Endpoint::new(run.net.bind(addr(index)), run.registry.clone());
    let mut cfg = JoinConfig::new("mem_group", run.spec.clone());
    cfg.incarnation = 1;
    cfg.seed = index as u64;
    cfg.event_capacity = 8192;
    if !run.membership {
        cfg.members = (0..members).map(member_id).collect();
    } else if index > 0 {
        cfg.members = vec![run.founder];
        run.meet(index, "found the group").await?;
    }
    let joined = endpoint.join(cfg).await.map_err(|e| format!("member {index} could not join: {e}"));
    if index == 0 && run.membership {
        run.meet(index, "start").await?;
    }
    let (group, mut events) = joined?;
    // Without a membership layer the view is whole from the start.
    if run.membership {
        let whole = async {
            while let Some(ev) = events.next().await {
                if let AppEvent::View(v) = ev {
                    if v.len() == members {
                        return Ok(());
                    }
                }
            }
            Err(format!("member {index}: the group closed before it formed"))
        };
        tokio::time::timeout(PATIENCE, whole).await.map_err(|_| format!("member {index}: no view of {members} members within {PATIENCE:?}"))??;
    }
    run.meet(index, "see the whole group").await?;

    let start = Instant::now();
    let caster = {
        let group = group.clone();
        tokio::spawn(async move {
            let buffer = Bytes::from(vec![0x5a; BODY_BYTES * 1024]);
            for k in 0..casts {
                let at = (k as usize % 1024) * BODY_BYTES;
                group.cast(buffer.slice(at..at + BODY_BYTES)).await.map_err(|e| format!("member {index}: cast {k}: {e}"))?;
            }
            Ok::<(), String>(())
        })
    };
    let wanted = casts * members as u64;
    let mut delivered = 0u64;
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    while delivered < wanted {
        match tokio::time::timeout(PATIENCE, events.next_many(&mut batch, EVENT_BATCH)).await {
            Ok(0) => return Err(format!("member {index}: the group closed after {delivered} of {wanted} deliveries")),
            Ok(_) => {
                for ev in batch.drain(..) {
                    match ev {
                        AppEvent::Deliver { .. } => delivered += 1,
                        AppEvent::Problem(p) => eprintln!("member {index}: {}: {}", p.layer, p.what),
                        _ => {}
                    }
                }
            }
            Err(_) => {
                let stats = group.stats().await.map(|s| format!("{s:#?}")).unwrap_or_default();
                let ep = endpoint.stats().await.map(|s| format!("{s:#?}")).unwrap_or_default();
                return Err(format!("member {index}: no delivery for {PATIENCE:?} after {delivered} of {wanted}\n{stats}\n{ep}"));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    caster.await.map_err(|e| format!("member {index}: the caster: {e}"))??;
    // Every member stays until every member is done: a member that left
    // early would be a view change for the others.
    run.meet(index, "finish").await?;
    endpoint.shutdown().await;
    Ok(delivered as f64 / secs)
}
