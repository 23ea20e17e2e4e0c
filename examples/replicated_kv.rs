//! A replicated key-value map on `FRAG:NAK:VSYNC`, over the in-process
//! transport: every replica casts updates and applies everyone's; a replica
//! that joins later gets the whole map by state transfer, in chunks, and from
//! then on applies the updates like the others.
//!
//! Run it: `cargo run --example replicated_kv`. Three replicas start and cast
//! updates; while the updates flow a fourth joins, loads the map (a few MB,
//! in 64 KiB chunks) and casts its own. At the end the program checks that
//! every replica holds the same map and prints a summary.
//!
//! What the stack gives, and what the application adds:
//! - VSYNC's state transfer: the map a joiner loads is the provider's map
//!   after every update of the old view and before any of the new view, and
//!   the joiner applies exactly the updates of the views it is a member of.
//!   State + later updates = what the old members have.
//! - NAK orders each replica's updates (FIFO), not updates of different
//!   replicas: two replicas writing one key concurrently may be applied in
//!   different orders at different replicas. Every update therefore carries a
//!   Lamport stamp, and a key keeps the write with the highest
//!   (stamp, writer): last writer wins, the same everywhere.

use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata::runtime::{Endpoint, Events, Group, JoinConfig};
use strata::transport::mem::MemNetwork;
use strata::{AppEvent, Delivery, MemberId, View};
use tokio::sync::watch;

const STACK: &str = "FRAG:NAK:VSYNC";
/// Updates each replica casts.
const UPDATES: u64 = 1500;
/// Distinct keys: replicas overwrite each other's writes often.
const KEYS: u64 = 2000;
/// Bytes per value: the map grows to a few MB.
const VALUE_LEN: usize = 1024;
/// State chunk size (far below what the stack carries: many chunks).
const CHUNK: usize = 64 * 1024;

/// A key's current value and the stamp of the write that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    stamp: (u64, String),
    value: String,
}

/// One replica's data: the map, its Lamport clock, and how many updates of
/// each writer it has applied (or loaded with the state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Store {
    map: BTreeMap<String, Entry>,
    clock: u64,
    applied: BTreeMap<String, u64>,
}

impl Store {
    fn apply(&mut self, writer: &str, update: &Update) {
        self.clock = self.clock.max(update.stamp);
        let stamp = (update.stamp, writer.to_string());
        match self.map.get(&update.key) {
            Some(e) if e.stamp >= stamp => {}
            _ => {
                self.map.insert(update.key.clone(), Entry { stamp, value: update.value.clone() });
            }
        }
        *self.applied.entry(writer.to_string()).or_insert(0) += 1;
    }

    /// The state sent to joiners (JSON; any encoding would do).
    fn encode(&self) -> Vec<u8> {
        let map: Vec<(&String, u64, &String, &String)> = self.map.iter().map(|(k, e)| (k, e.stamp.0, &e.stamp.1, &e.value)).collect();
        serde_json::to_vec(&serde_json::json!({ "clock": self.clock, "applied": self.applied, "map": map })).expect("a map encodes")
    }

    fn decode(bytes: &[u8]) -> Result<Store, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let clock = v["clock"].as_u64().ok_or("no clock")?;
        let applied: BTreeMap<String, u64> = serde_json::from_value(v["applied"].clone()).map_err(|e| e.to_string())?;
        let entries: Vec<(String, u64, String, String)> = serde_json::from_value(v["map"].clone()).map_err(|e| e.to_string())?;
        let map = entries.into_iter().map(|(k, stamp, writer, value)| (k, Entry { stamp: (stamp, writer), value })).collect();
        Ok(Store { map, clock, applied })
    }

    /// A short fingerprint of the map, to print.
    fn digest(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for (k, e) in &self.map {
            for b in k.bytes().chain(e.value.bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }
}

/// What a replica casts: set `key` to `value`, at Lamport time `stamp`.
struct Update {
    stamp: u64,
    key: String,
    value: String,
}

impl Update {
    fn encode(&self) -> Bytes {
        Bytes::from(format!("{} {} {}", self.stamp, self.key, self.value))
    }

    fn decode(body: &[u8]) -> Option<Update> {
        let text = std::str::from_utf8(body).ok()?;
        let mut parts = text.splitn(3, ' ');
        Some(Update { stamp: parts.next()?.parse().ok()?, key: parts.next()?.to_string(), value: parts.next()?.to_string() })
    }
}

/// What a replica's application task keeps: the store, and what it saw.
#[derive(Default)]
struct Status {
    store: Store,
    view: Option<Arc<View>>,
    /// State chunks loaded (of the transfer under way, or the last one).
    chunks: usize,
    /// A state was loaded.
    loaded: bool,
}

/// A running replica: the group handle and its application's status.
struct Replica {
    name: String,
    group: Group,
    status: Arc<Mutex<Status>>,
    /// Bumped after every event the replica handled.
    changed: watch::Receiver<u64>,
}

impl Replica {
    /// Joins through `seeds` (none: found the group) and starts applying.
    async fn start(name: &str, endpoint: &Endpoint, seeds: &[MemberId]) -> Result<Replica, Box<dyn std::error::Error>> {
        let mut cfg = JoinConfig::new("kv", STACK);
        cfg.members = seeds.to_vec();
        cfg.state_transfer = true;
        let (group, events) = endpoint.join(cfg).await?;
        let status = Arc::new(Mutex::new(Status::default()));
        let (tx, changed) = watch::channel(0);
        tokio::spawn(apply(group.clone(), events, status.clone(), tx));
        Ok(Replica { name: name.to_string(), group, status, changed })
    }

    fn store(&self) -> Store {
        self.status.lock().unwrap().store.clone()
    }

    /// Casts `UPDATES` updates of random keys, a little at a time.
    fn cast_updates(&self, seed: u64) -> tokio::task::JoinHandle<()> {
        let (group, status) = (self.group.clone(), self.status.clone());
        tokio::spawn(async move {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut last = 0;
            for i in 0..UPDATES {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = format!("key{:05}", rng % KEYS);
                let mut value = format!("{}#{i}:", group.local());
                value.extend(std::iter::repeat_n((b'a' + (rng % 26) as u8) as char, VALUE_LEN - value.len()));
                // The next Lamport time: after everything applied here, and
                // after this replica's earlier writes (not all applied yet).
                let stamp = status.lock().unwrap().store.clock.max(last) + 1;
                last = stamp;
                group.cast(Update { stamp, key, value }.encode()).await.expect("cast an update");
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    }

    /// Waits until `cond` holds for the replica's status.
    async fn wait_until(&mut self, what: &str, cond: impl Fn(&Status) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !cond(&self.status.lock().unwrap()) {
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("{}: {what} did not happen", self.name),
            }
        }
    }
}

/// A replica's application: applies deliveries, answers state requests,
/// loads the state it is sent.
async fn apply(group: Group, mut events: Events, status: Arc<Mutex<Status>>, tx: watch::Sender<u64>) {
    let mut loading = BytesMut::new();
    while let Some(ev) = events.next().await {
        match ev {
            AppEvent::Deliver { from, kind: Delivery::Cast, body } => match Update::decode(&body) {
                Some(update) => status.lock().unwrap().store.apply(&from.to_string(), &update),
                None => eprintln!("ignored a malformed update from {from}"),
            },
            AppEvent::View(view) => status.lock().unwrap().view = Some(view),
            AppEvent::StateRequest { token, .. } => {
                // The map as of this point of the event stream; sent from
                // another task so that this one keeps applying (the chunks
                // are flow controlled like casts).
                let state = Bytes::from(status.lock().unwrap().store.encode());
                let group = group.clone();
                tokio::spawn(async move {
                    for at in (0..state.len()).step_by(CHUNK) {
                        group.provide_state(token, state.slice(at..(at + CHUNK).min(state.len()))).await.expect("send a state chunk");
                    }
                    group.state_done(token).await.expect("end the state");
                });
            }
            AppEvent::StateBegin => {
                // A new view came before the last state was complete: start over.
                loading.clear();
                status.lock().unwrap().chunks = 0;
            }
            AppEvent::StateChunk(chunk) => {
                loading.extend_from_slice(&chunk);
                status.lock().unwrap().chunks += 1;
            }
            AppEvent::StateDone => {
                let mut st = status.lock().unwrap();
                st.store = Store::decode(&loading).expect("the state decodes");
                st.loaded = true;
                loading.clear();
            }
            AppEvent::Problem(p) => eprintln!("{}: {}", p.layer, p.what),
            _ => {}
        }
        tx.send_modify(|n| *n += 1);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let began = Instant::now();
    let net = MemNetwork::new();
    let registry = Arc::new(strata::builtin_registry());
    let endpoints: Vec<Endpoint> = (0..4).map(|_| Endpoint::new(net.bind("127.0.0.1:0".parse().unwrap()), registry.clone())).collect();
    let ids: Vec<MemberId> = endpoints.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();

    // Replica 0 founds the group; 1 and 2 join through it.
    let mut replicas = vec![Replica::start("r0", &endpoints[0], &[]).await?];
    for (i, endpoint) in endpoints.iter().enumerate().take(3).skip(1) {
        replicas.push(Replica::start(&format!("r{i}"), endpoint, &ids[..1]).await?);
    }
    for r in replicas.iter_mut() {
        r.wait_until("a view of three", |s| s.view.as_ref().is_some_and(|v| v.len() == 3)).await;
    }
    let mut casters: Vec<_> = replicas.iter().enumerate().map(|(i, r)| r.cast_updates(i as u64 + 1)).collect();

    // Once a third of the updates are in, the fourth replica joins.
    replicas[0].wait_until("a third of the updates", |s| s.store.applied.values().sum::<u64>() >= UPDATES).await;
    let joined_at = replicas[0].store().applied.values().sum::<u64>();
    // Through r1: any member is a seed.
    replicas.push(Replica::start("r3", &endpoints[3], &ids[1..2]).await?);
    replicas[3].wait_until("the state", |s| s.loaded).await;
    let loaded = replicas[3].store();
    casters.push(replicas[3].cast_updates(4));
    for c in casters {
        c.await?;
    }

    // Every replica applied (or loaded) every update of every writer.
    let writers: Vec<String> = ids.iter().map(|m| m.to_string()).collect();
    for r in replicas.iter_mut() {
        let w = writers.clone();
        r.wait_until("every update", move |s| w.iter().all(|m| s.store.applied.get(m).copied().unwrap_or(0) == UPDATES)).await;
    }
    let stores: Vec<Store> = replicas.iter().map(Replica::store).collect();
    let view = replicas[0].group.view().await?;
    let members: Vec<String> = view.members().iter().map(MemberId::to_string).collect();
    println!("replicated_kv: {} replicas on {STACK}, view {} [{}]", replicas.len(), view.id(), members.join(", "));
    for (r, s) in replicas.iter().zip(&stores) {
        let bytes: usize = s.map.iter().map(|(k, e)| k.len() + e.value.len()).sum();
        println!("  {} {}: {} keys, {:.1} MB, digest {:016x}", r.name, r.group.local(), s.map.len(), bytes as f64 / 1e6, s.digest());
    }
    let state_len = loaded.encode().len();
    println!(
        "  r3 joined after {joined_at} updates: loaded {} keys ({:.1} MB of state in {} chunks), then applied {} more updates",
        loaded.map.len(),
        state_len as f64 / 1e6,
        replicas[3].status.lock().unwrap().chunks,
        4 * UPDATES - loaded.applied.values().sum::<u64>()
    );
    for (r, s) in replicas.iter().zip(&stores).skip(1) {
        assert!(s.map == stores[0].map, "{} holds another map than r0", r.name);
    }
    assert!(replicas[3].status.lock().unwrap().chunks > 1, "the state should come in several chunks");
    assert!(loaded.applied.values().sum::<u64>() >= UPDATES, "r3 should join while updates flow");
    println!("every replica holds the same map ({:.2} s)", began.elapsed().as_secs_f64());
    for e in &endpoints {
        e.shutdown().await;
    }
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
