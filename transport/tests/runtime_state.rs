//! State transfer through the runtime (`JoinConfig::state_transfer`,
//! `Group::provide_state`, `Group::state_done`) over the in-process network:
//! first with a test layer that plays the membership layer's part (what the
//! driver forwards, answers and parks), then end to end with VSYNC.

mod runtime_support;

use bytes::{Bytes, BytesMut};
use runtime_support::*;
use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_stack::runtime::{Endpoint, Events, Group, GroupError, JoinConfig, CAST_QUEUE};
use strata_stack::{AppEvent, Delivery, MemberId, Registry, View};
use strata_transport::mem::MemNetwork;
use strata_transport::payload;
use tokio::sync::watch;

fn endpoint(net: &MemNetwork, registry: &Arc<Registry>) -> Endpoint {
    Endpoint::new(net.bind("127.0.0.1:0".parse().unwrap()), registry.clone())
}

fn cfg(stack: &str, members: &[MemberId], state_transfer: bool) -> JoinConfig {
    let mut cfg = JoinConfig::new("g", stack);
    cfg.members = members.to_vec();
    cfg.state_transfer = state_transfer;
    cfg
}

/// The next event, which must be a delivery: its body.
async fn next_body(events: &mut Events) -> Bytes {
    match next_event(events).await {
        Some(AppEvent::Deliver { body, .. }) => body,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The driver's part, with the ASK test layer.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_transfer_the_driver_answers_and_forwards_nothing() {
    let net = MemNetwork::new();
    let registry = test_registry();
    let (ea, eb) = (endpoint(&net, &registry), endpoint(&net, &registry));
    let all = [MemberId::new(ea.local_addr(), 0), MemberId::new(eb.local_addr(), 0)];
    let (a, mut a_events) = ea.join(cfg("ASK", &all, false)).await.unwrap();
    let (b, mut b_events) = eb.join(cfg("ASK", &all, false)).await.unwrap();
    // A is asked for its state: the driver ends it at once (an empty state),
    // which ASK turns into a cast; A's application never sees the request.
    a.cast(Bytes::from_static(b"ask:5")).await.unwrap();
    assert_eq!(&next_body(&mut a_events).await[..], b"ask:5");
    assert_eq!(&next_body(&mut a_events).await[..], b"state-done:5");
    assert_eq!(&next_body(&mut b_events).await[..], b"ask:5");
    assert_eq!(&next_body(&mut b_events).await[..], b"state-done:5");
    // Loading a state: StateBegin, chunks and StateDone are not forwarded.
    b.cast(Bytes::from_static(b"load")).await.unwrap();
    b.cast(Bytes::from_static(b"after")).await.unwrap();
    for events in [&mut a_events, &mut b_events] {
        assert_eq!(&next_body(events).await[..], b"load");
        assert_eq!(&next_body(events).await[..], b"after");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_state_transfer_answers_go_in_order_and_wait_for_a_closed_window() {
    let net = MemNetwork::new();
    let registry = test_registry();
    let (ea, eb) = (endpoint(&net, &registry), endpoint(&net, &registry));
    let all = [MemberId::new(ea.local_addr(), 0), MemberId::new(eb.local_addr(), 0)];
    // ASK at the bottom: GATE above it sees the answers go down, as a
    // membership layer's window would.
    let (a, mut a_events) = ea.join(cfg("ASK:GATE", &all, true)).await.unwrap();
    let (b, mut b_events) = eb.join(cfg("ASK:GATE", &all, true)).await.unwrap();

    // Loading is forwarded, in order, after the delivery that caused it.
    b.cast(Bytes::from_static(b"load")).await.unwrap();
    for events in [&mut a_events, &mut b_events] {
        assert_eq!(&next_body(events).await[..], b"load");
        assert_eq!(next_event(events).await, Some(AppEvent::StateBegin));
        assert_eq!(next_event(events).await, Some(AppEvent::StateChunk(Bytes::from_static(b"s1"))));
        assert_eq!(next_event(events).await, Some(AppEvent::StateChunk(Bytes::from_static(b"s2"))));
        assert_eq!(next_event(events).await, Some(AppEvent::StateDone));
    }

    // The request is forwarded after the delivery before it.
    a.cast(Bytes::from_static(b"ask:9")).await.unwrap();
    assert_eq!(&next_body(&mut a_events).await[..], b"ask:9");
    assert_eq!(next_event(&mut a_events).await, Some(AppEvent::StateRequest { token: 9, joiners: vec![a.local()] }));
    let too_large = Bytes::from(vec![0u8; a.max_message() + 1]);
    assert_eq!(a.provide_state(9, too_large).await, Err(GroupError::TooLarge { len: a.max_message() + 1, max: a.max_message() }));

    // A closes its window, then answers: the first chunk is parked and the
    // queue fills behind it, exactly as casts would.
    a.cast(Bytes::from_static(b"close")).await.unwrap();
    for i in 0..=CAST_QUEUE {
        a.provide_state(9, Bytes::from(format!("c{i}"))).await.unwrap();
    }
    let mut blocked = pin!(a.state_done(9));
    assert!(is_pending(&mut blocked).await, "state_done returned while the window was closed and the queue full");
    assert_eq!(&next_body(&mut b_events).await[..], b"ask:9");
    assert_eq!(&next_body(&mut b_events).await[..], b"close");
    assert!(is_pending(&mut blocked).await);
    assert!(b_events.try_next().is_none(), "a state chunk passed the closed window");
    // B reopens A's window: every chunk, in order, then the end.
    b.cast(Bytes::from_static(b"open")).await.unwrap();
    blocked.await.unwrap();
    let mut expected = 0;
    loop {
        let body = next_body(&mut b_events).await;
        match &body[..] {
            b"open" => continue,
            b"state-done:9" => break,
            chunk => {
                assert_eq!(chunk, format!("chunk:9:c{expected}").as_bytes());
                expected += 1;
            }
        }
    }
    assert_eq!(expected, CAST_QUEUE + 1, "every chunk before the end");
}

// ---------------------------------------------------------------------------
// End to end with VSYNC.
// ---------------------------------------------------------------------------

const STACK: &str = "FRAG:NAK:VSYNC";
/// The state a provider sends besides its delivery counts.
const BLOB: usize = 3 << 20;
/// Chunk size: well below `max_message`, so the state takes many chunks.
const CHUNK: usize = 48 * 1024;

/// Byte `i` of the blob: position-dependent, so that a chunk out of place
/// or missing shows.
fn blob() -> Bytes {
    Bytes::from((0..BLOB).map(|i| ((i * 7) ^ (i >> 13)) as u8).collect::<Vec<u8>>())
}

/// What one member's application saw, in order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    View(Arc<View>),
    Block,
    Deliver(String, u64),
    Request(u64, Vec<MemberId>),
    Begin,
    Chunk(usize),
    /// The state is complete: the delivery counts per sender it held.
    Done(BTreeMap<String, u64>),
    Left,
}

/// A loaded state: the delivery counts per sender, and the blob.
type Loaded = (BTreeMap<String, u64>, Bytes);

/// One member: its group handle and what its application task recorded.
struct Member {
    group: Group,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Counts per sender, loaded from the state (after StateDone).
    loaded: Arc<Mutex<Option<Loaded>>>,
    changed: watch::Receiver<u64>,
}

impl Member {
    /// Joins with `seeds` and runs the application: it records every event,
    /// counts deliveries per sender, answers state requests with its counts
    /// and the blob (in chunks, from another task so that it keeps reading)
    /// and assembles a state it loads.
    async fn join(ep: &Endpoint, seeds: &[MemberId], state_transfer: bool) -> Member {
        let (group, mut events) = ep.join(cfg(STACK, seeds, state_transfer)).await.expect("join");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let loaded = Arc::new(Mutex::new(None));
        let (tx, changed) = watch::channel(0u64);
        let (s, l, g) = (seen.clone(), loaded.clone(), group.clone());
        tokio::spawn(async move {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut partial = BytesMut::new();
            let blob = blob();
            while let Some(ev) = events.next().await {
                let rec = match ev {
                    AppEvent::Deliver { from, kind: Delivery::Cast, body } => {
                        assert!(payload::is_intact(&body), "corrupt payload from {from}");
                        let (m, k) = payload::split_id(payload::id(&body).unwrap()).unwrap();
                        *counts.entry(m.to_string()).or_insert(0) += 1;
                        Seen::Deliver(m.to_string(), k)
                    }
                    AppEvent::View(v) => Seen::View(v),
                    AppEvent::Block => Seen::Block,
                    AppEvent::StateRequest { token, joiners } => {
                        // The state as of this point of the stream.
                        let mut state = counts.iter().map(|(m, n)| format!("{m}={n}")).collect::<Vec<_>>().join(";").into_bytes();
                        state.push(b'\n');
                        state.extend_from_slice(&blob);
                        let g = g.clone();
                        tokio::spawn(async move {
                            for chunk in state.chunks(CHUNK) {
                                if g.provide_state(token, Bytes::copy_from_slice(chunk)).await.is_err() {
                                    return;
                                }
                            }
                            let _ = g.state_done(token).await;
                        });
                        Seen::Request(token, joiners)
                    }
                    AppEvent::StateBegin => {
                        partial.clear();
                        Seen::Begin
                    }
                    AppEvent::StateChunk(c) => {
                        partial.extend_from_slice(&c);
                        Seen::Chunk(c.len())
                    }
                    AppEvent::StateDone => {
                        let state = std::mem::take(&mut partial).freeze();
                        let nl = state.iter().position(|b| *b == b'\n').expect("counts line");
                        let text = std::str::from_utf8(&state[..nl]).unwrap();
                        let from_state: BTreeMap<String, u64> = text
                            .split(';')
                            .filter(|p| !p.is_empty())
                            .map(|p| {
                                let (m, n) = p.rsplit_once('=').unwrap();
                                (m.to_string(), n.parse().unwrap())
                            })
                            .collect();
                        counts = from_state.clone();
                        *l.lock().unwrap() = Some((from_state.clone(), state.slice(nl + 1..)));
                        Seen::Done(from_state)
                    }
                    AppEvent::Left => Seen::Left,
                    AppEvent::Problem(p) => panic!("problem from {}: {}", p.layer, p.what),
                    _ => continue,
                };
                s.lock().unwrap().push(rec);
                tx.send_modify(|n| *n += 1);
            }
        });
        Member { group, seen, loaded, changed }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last view installed.
    fn view(&self) -> Option<Arc<View>> {
        self.seen().iter().rev().find_map(|s| match s {
            Seen::View(v) => Some(v.clone()),
            _ => None,
        })
    }

    /// Waits until `cond` holds for what the member saw.
    async fn wait_for(&mut self, what: &str, cond: impl Fn(&[Seen]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if cond(&self.seen()) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    assert!(cond(&self.seen()), "{}: the application task ended before {what}: {:?}", self.group.local(), summary(&self.seen()));
                    return;
                }
                Err(_) => panic!("{}: no {what} within {PATIENCE:?}; saw {:?}", self.group.local(), summary(&self.seen())),
            }
        }
    }

    /// Waits for a view whose members are exactly `members` (any order).
    async fn wait_view(&mut self, members: &[MemberId]) -> Arc<View> {
        let mut want = members.to_vec();
        want.sort();
        let matches = move |v: &View| {
            let mut m = v.members().to_vec();
            m.sort();
            m == want
        };
        let m2 = matches.clone();
        self.wait_for("view", move |seen| seen.iter().rev().find_map(|s| if let Seen::View(v) = s { Some(m2(v)) } else { None }) == Some(true)).await;
        let v = self.view().unwrap();
        assert!(matches(&v));
        v
    }
}

/// What a member saw, with deliveries and chunks counted instead of listed.
fn summary(seen: &[Seen]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut run = (String::new(), 0);
    for s in seen {
        let kind = match s {
            Seen::Deliver(..) => "deliveries",
            Seen::Chunk(_) => "chunks",
            other => {
                if run.1 > 0 {
                    out.push(format!("{} {}", run.1, run.0));
                    run = (String::new(), 0);
                }
                out.push(format!("{other:?}"));
                continue;
            }
        };
        if run.0 != kind && run.1 > 0 {
            out.push(format!("{} {}", run.1, run.0));
            run.1 = 0;
        }
        run = (kind.to_string(), run.1 + 1);
    }
    if run.1 > 0 {
        out.push(format!("{} {}", run.1, run.0));
    }
    out
}

fn delivered(seen: &[Seen], from: &str) -> u64 {
    seen.iter().filter(|s| matches!(s, Seen::Deliver(m, _) if m == from)).count() as u64
}

fn is_state_event(s: &Seen) -> bool {
    matches!(s, Seen::Request(..) | Seen::Begin | Seen::Chunk(_) | Seen::Done(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_loads_a_large_state_in_chunks_before_its_first_deliveries() {
    let net = MemNetwork::new();
    let registry = Arc::new(strata_layers::builtin());
    let eps: Vec<Endpoint> = (0..4).map(|_| endpoint(&net, &registry)).collect();
    let ids: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    // A founds the group; B and C join through it.
    let mut a = Member::join(&eps[0], &[], true).await;
    a.wait_view(&ids[..1]).await;
    let mut b = Member::join(&eps[1], &ids[..1], true).await;
    let mut c = Member::join(&eps[2], &ids[..1], true).await;
    for m in [&mut a, &mut b, &mut c] {
        m.wait_view(&ids[..3]).await;
    }
    // A and B cast while D joins.
    let k = 400u64;
    let casters: Vec<_> = [&a, &b]
        .iter()
        .map(|m| {
            let g = m.group.clone();
            tokio::spawn(async move {
                let me = g.local().to_string();
                for i in 0..k {
                    g.cast(payload::make(&me, i, 200)).await.expect("cast");
                    // About a second of casting: D joins while they flow.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let (an, bn) = (ids[0].to_string(), ids[1].to_string());
    a.wait_for("deliveries", |s| delivered(s, &an) >= 40).await;
    let mut d = Member::join(&eps[3], &ids[..1], true).await;
    for m in [&mut a, &mut b, &mut c, &mut d] {
        m.wait_view(&ids).await;
    }
    d.wait_for("every cast, counting those in the state", |s| {
        let Some(counts) = s.iter().rev().find_map(|x| if let Seen::Done(c) = x { Some(c) } else { None }) else { return false };
        [&an, &bn].iter().all(|m| counts.get(m.as_str()).copied().unwrap_or(0) + delivered(s, m) >= k)
    })
    .await;
    for c in casters {
        c.await.unwrap();
    }

    // D's stream: its first view, then the state, then deliveries; never a
    // delivery before the state is complete.
    let seen = d.seen();
    let first_view = seen.iter().position(|s| matches!(s, Seen::View(_))).expect("a view");
    assert!(seen[..first_view].is_empty(), "events before D's first view: {:?}", summary(&seen[..first_view]));
    let done = seen.iter().position(|s| matches!(s, Seen::Done(_))).expect("StateDone");
    let begin = seen[..done].iter().rposition(|s| *s == Seen::Begin).expect("StateBegin before StateDone");
    assert!(!seen[..done].iter().any(|s| matches!(s, Seen::Deliver(..))), "D delivered before its state was complete: {:?}", summary(&seen));
    let chunks: Vec<usize> = seen[begin + 1..done].iter().map(|s| if let Seen::Chunk(n) = s { *n } else { panic!("{s:?} inside the state") }).collect();
    assert!(chunks.len() > BLOB / CHUNK, "the state came in {} chunks", chunks.len());
    assert!(chunks.iter().all(|n| *n <= d.group.max_message()));
    // The chunks, in order, are the provider's state.
    let (counts, loaded_blob) = d.loaded.lock().unwrap().clone().expect("a loaded state");
    assert_eq!(loaded_blob.len(), BLOB);
    assert!(loaded_blob == blob(), "the state arrived altered or out of order");
    // Virtual synchrony: the state counts exactly the casts D does not
    // deliver, so each sender's deliveries at D continue where the state
    // ends, in order, without a gap or a duplicate.
    assert!(counts.values().sum::<u64>() > 0, "the state should count earlier casts: {counts:?}");
    for m in [&an, &bn] {
        let from_state = counts.get(m.as_str()).copied().unwrap_or(0);
        let ks: Vec<u64> = seen.iter().filter_map(|s| if let Seen::Deliver(x, k) = s { (x == m).then_some(*k) } else { None }).collect();
        assert_eq!(ks, (from_state..k).collect::<Vec<_>>(), "D's deliveries from {m} after a state counting {from_state}");
    }
    // An old member was asked (once per attempt at the view change), and
    // A, B, C delivered everything in order.
    let asked: usize = [&a, &b, &c].iter().map(|m| m.seen().iter().filter(|s| matches!(s, Seen::Request(_, j) if j.contains(&ids[3]))).count()).sum();
    assert!(asked >= 1, "no old member was asked for D's state");
    for m in [&mut a, &mut b, &mut c] {
        m.wait_for("every cast", |s| delivered(s, &an) >= k && delivered(s, &bn) >= k).await;
        let seen = m.seen();
        for x in [&an, &bn] {
            let ks: Vec<u64> = seen.iter().filter_map(|s| if let Seen::Deliver(y, k) = s { (y == x).then_some(*k) } else { None }).collect();
            assert_eq!(ks, (0..k).collect::<Vec<_>>(), "{} from {x}", m.group.local());
        }
    }
    for ep in &eps {
        ep.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_state_transfer_joins_complete_and_no_state_event_is_forwarded() {
    let net = MemNetwork::new();
    let registry = Arc::new(strata_layers::builtin());
    let eps: Vec<Endpoint> = (0..3).map(|_| endpoint(&net, &registry)).collect();
    let ids: Vec<MemberId> = eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect();
    let mut a = Member::join(&eps[0], &[], false).await;
    a.wait_view(&ids[..1]).await;
    // A has delivered casts before the others join: there is state to ask for.
    let me = ids[0].to_string();
    for i in 0..20 {
        a.group.cast(payload::make(&me, i, 100)).await.unwrap();
    }
    a.wait_for("own casts", |s| delivered(s, &me) == 20).await;
    let mut b = Member::join(&eps[1], &ids[..1], false).await;
    let mut c = Member::join(&eps[2], &ids[..2], false).await;
    let mut views = Vec::new();
    for m in [&mut a, &mut b, &mut c] {
        views.push(m.wait_view(&ids).await);
    }
    assert!(views.iter().all(|v| v.id() == views[0].id() && v.members() == views[0].members()), "{views:?}");
    // The group works: a cast after the joins reaches everyone.
    let bn = ids[1].to_string();
    b.group.cast(payload::make(&bn, 0, 100)).await.unwrap();
    for m in [&mut a, &mut b, &mut c] {
        m.wait_for("B's cast", |s| delivered(s, &bn) == 1).await;
        let seen = m.seen();
        assert!(!seen.iter().any(is_state_event), "{}: a state event was forwarded: {:?}", m.group.local(), summary(&seen));
    }
    // The joiners deliver none of A's casts from before they joined.
    for m in [&b, &c] {
        assert_eq!(delivered(&m.seen(), &me), 0);
    }
    for ep in &eps {
        ep.shutdown().await;
    }
}
