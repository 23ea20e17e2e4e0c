//! Queries through the runtime (`Group::query`, `Group::reply`) over the
//! in-process network: every member's application answers with something
//! derived from the request, and the caller checks every reply; majority,
//! timeout and refusals; then with VSYNC, a member crashing or leaving while
//! a query waits for it.

mod runtime_support;

use bytes::Bytes;
use runtime_support::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_stack::event::{QueryOutcome, QueryResult, Want};
use strata_stack::runtime::{Endpoint, Events, Group, GroupError, JoinConfig};
use strata_stack::{AppEvent, MemberId, Registry};
use strata_transport::mem::MemNetwork;
use tokio::sync::watch;

/// Static membership: no VSYNC, the view never changes.
const STATIC: &str = "FRAG:NAK:QUERY";
/// With membership: a crashed member is out of the view in about 300 ms.
const VSYNC: &str = "FRAG:NAK:VSYNC(heartbeat_ms=30,suspect_ms=300):QUERY";
/// With a total order below: Isis2's OrderedQuery.
const ORDERED: &str = "FRAG:NAK:VSYNC(heartbeat_ms=30,suspect_ms=300):TOKEN:QUERY";
/// Long enough that a query that should complete never times out instead.
const LONG: Duration = Duration::from_secs(30);

/// What a member's application answers to `request`.
fn answer(me: MemberId, request: &[u8]) -> Bytes {
    Bytes::from(format!("{me} says {}", String::from_utf8_lossy(request).to_uppercase()))
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Policy {
    /// Answer every query.
    Answer,
    /// Ignore queries (a member that never replies).
    Ignore,
}

/// One member: its handle and what its application saw.
struct Member {
    group: Group,
    seen: Arc<Mutex<Vec<AppEvent>>>,
    changed: watch::Receiver<u64>,
}

impl Member {
    /// Runs the application: records every event and answers queries by `policy`.
    fn run(group: Group, mut events: Events, policy: Policy) -> Member {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, changed) = watch::channel(0u64);
        let (s, g) = (seen.clone(), group.clone());
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if let (AppEvent::Query { from, id, body }, Policy::Answer) = (&ev, policy) {
                    let (g, from, id, reply) = (g.clone(), *from, *id, answer(g.local(), body));
                    // From another task, so that this one keeps reading.
                    tokio::spawn(async move {
                        let _ = g.reply(from, id, reply).await;
                    });
                }
                s.lock().unwrap().push(ev);
                tx.send_modify(|n| *n += 1);
            }
        });
        Member { group, seen, changed }
    }

    fn seen(&self) -> Vec<AppEvent> {
        self.seen.lock().unwrap().clone()
    }

    /// The queries this member's application was asked: (asker, id, body).
    fn asked(&self) -> Vec<(MemberId, u64, Bytes)> {
        self.seen()
            .into_iter()
            .filter_map(|e| match e {
                AppEvent::Query { from, id, body } => Some((from, id, body)),
                _ => None,
            })
            .collect()
    }

    async fn wait_for(&mut self, what: &str, cond: impl Fn(&[AppEvent]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if cond(&self.seen()) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("{}: the application ended before {what}", self.group.local()),
                Err(_) => panic!("{}: no {what} within {PATIENCE:?}; saw {:?}", self.group.local(), self.seen()),
            }
        }
    }

    /// Waits for a view of exactly `members`.
    async fn wait_view(&mut self, members: &[MemberId]) {
        let mut want = members.to_vec();
        want.sort();
        self.wait_for("view", move |seen| {
            seen.iter().rev().find_map(|e| if let AppEvent::View(v) = e { Some(v) } else { None }).is_some_and(|v| {
                let mut m = v.members().to_vec();
                m.sort();
                m == want
            })
        })
        .await;
    }

    fn problems(&self) -> Vec<AppEvent> {
        self.seen().into_iter().filter(|e| matches!(e, AppEvent::Problem(_))).collect()
    }
}

fn endpoints(net: &MemNetwork, n: usize, registry: &Arc<Registry>) -> Vec<Endpoint> {
    (0..n).map(|_| Endpoint::new(net.bind("127.0.0.1:0".parse().unwrap()), registry.clone())).collect()
}

fn ids(eps: &[Endpoint]) -> Vec<MemberId> {
    eps.iter().map(|e| MemberId::new(e.local_addr(), 0)).collect()
}

/// Joins every endpoint with static membership and runs its application.
async fn join_static(eps: &[Endpoint], policies: &[Policy]) -> Vec<Member> {
    let all = ids(eps);
    let mut out = Vec::new();
    for (ep, policy) in eps.iter().zip(policies) {
        let mut cfg = JoinConfig::new("q", STATIC);
        cfg.members = all.clone();
        let (group, events) = ep.join(cfg).await.expect("join");
        out.push(Member::run(group, events, *policy));
    }
    out
}

/// Joins with VSYNC: the first founds the group, the others join through it;
/// returns once every member is in the view of all.
async fn join_vsync(eps: &[Endpoint], policies: &[Policy]) -> Vec<Member> {
    let all = ids(eps);
    let mut out: Vec<Member> = Vec::new();
    for (i, (ep, policy)) in eps.iter().zip(policies).enumerate() {
        let mut cfg = JoinConfig::new("q", VSYNC);
        cfg.members = if i == 0 { Vec::new() } else { vec![all[0]] };
        let (group, events) = ep.join(cfg).await.expect("join");
        let mut m = Member::run(group, events, *policy);
        if i == 0 {
            m.wait_view(&all[..1]).await;
        }
        out.push(m);
    }
    for m in &mut out {
        m.wait_view(&all).await;
    }
    out
}

async fn query(group: &Group, body: &'static [u8], want: Want, timeout: Duration) -> QueryResult {
    match tokio::time::timeout(PATIENCE, group.query(Bytes::from_static(body), want, timeout)).await {
        Ok(r) => r.expect("query"),
        Err(_) => panic!("no query result within {PATIENCE:?}"),
    }
}

/// The replies sorted by member.
fn sorted(r: &QueryResult) -> Vec<(MemberId, Bytes)> {
    let mut v = r.replies.clone();
    v.sort();
    v
}

fn answers(members: &[MemberId], request: &[u8]) -> Vec<(MemberId, Bytes)> {
    let mut v: Vec<_> = members.iter().map(|&m| (m, answer(m, request))).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_answers_and_the_caller_gets_every_reply() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 3, &Arc::new(strata_layers::builtin()));
    let all = ids(&eps);
    let members = join_static(&eps, &[Policy::Answer; 3]).await;

    let r = query(&members[0].group, b"hello", Want::All, LONG).await;
    assert_eq!(r.outcome, QueryOutcome::Complete);
    assert_eq!(sorted(&r), answers(&all, b"hello"), "one reply per member, the caller's own included");
    assert_eq!(r.view.members(), &all[..]);
    assert!(r.missing.is_empty());

    // Every member asks at once: each gets its own replies.
    let bodies: [&'static [u8]; 3] = [b"from a", b"from b", b"from c"];
    let tasks: Vec<_> = members
        .iter()
        .zip(bodies)
        .map(|(m, body)| {
            let g = m.group.clone();
            tokio::spawn(async move { (body, query(&g, body, Want::All, LONG).await) })
        })
        .collect();
    for t in tasks {
        let (body, r) = t.await.unwrap();
        assert_eq!((r.outcome, sorted(&r)), (QueryOutcome::Complete, answers(&all, body)));
    }

    // Each application was asked each query once, and saw no result: those
    // go to the caller alone.
    for m in &members {
        let mut asked: Vec<(MemberId, Bytes)> = m.asked().into_iter().map(|(from, _, body)| (from, body)).collect();
        asked.sort();
        let mut expected = vec![(all[0], Bytes::from_static(b"hello"))];
        expected.extend(all.iter().zip(bodies).map(|(&a, b)| (a, Bytes::from_static(b))));
        expected.sort();
        assert_eq!(asked, expected, "queries asked at {}", m.group.local());
        assert!(!m.seen().iter().any(|e| matches!(e, AppEvent::QueryDone(_))), "QueryDone forwarded to Events");
        assert!(m.problems().is_empty(), "{:?}", m.problems());
    }
    let stats = members[0].group.stats().await.unwrap();
    let q = stats.iter().find(|s| s.name == "QUERY").unwrap();
    assert_eq!((q.counters.get("complete"), q.counters.get("pending")), (Some(2), Some(0)));
    assert!(q.dropped.is_empty(), "{:?}", q.dropped);
    for ep in &eps {
        ep.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_does_without_a_silent_member_and_all_times_out() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 3, &Arc::new(strata_layers::builtin()));
    let all = ids(&eps);
    let members = join_static(&eps, &[Policy::Answer, Policy::Answer, Policy::Ignore]).await;

    let r = query(&members[1].group, b"vote", Want::Majority, LONG).await;
    assert_eq!(r.outcome, QueryOutcome::Complete);
    assert_eq!(sorted(&r), answers(&all[..2], b"vote"));
    assert_eq!(r.missing, vec![all[2]]);

    let started = tokio::time::Instant::now();
    let timeout = Duration::from_millis(300);
    let r = query(&members[1].group, b"all of you", Want::All, timeout).await;
    assert!(started.elapsed() >= timeout, "ended after {:?}", started.elapsed());
    assert_eq!(r.outcome, QueryOutcome::TimedOut);
    assert_eq!(sorted(&r), answers(&all[..2], b"all of you"), "the replies that came");
    assert_eq!(r.missing, vec![all[2]]);
    // The silent member was asked both times.
    assert_eq!(members[2].asked().len(), 2);
    for ep in &eps {
        ep.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_refused_without_a_query_layer_or_when_too_large() {
    let net = MemNetwork::new();
    let registry = Arc::new(strata_layers::builtin());
    let ep = endpoints(&net, 1, &registry).remove(0);
    let (plain, _events) = ep.join(JoinConfig::new("plain", "FRAG:NAK")).await.unwrap();
    assert_eq!(plain.query(Bytes::new(), Want::All, LONG).await, Err(GroupError::QueryUnavailable));
    assert_eq!(plain.reply(plain.local(), 0, Bytes::new()).await, Err(GroupError::QueryUnavailable));
    let (group, _events) = ep.join(JoinConfig::new("with-query", "NAK:QUERY")).await.unwrap();
    let max = group.max_message();
    let too_large = Bytes::from(vec![0u8; max + 1]);
    assert_eq!(group.query(too_large.clone(), Want::All, LONG).await, Err(GroupError::TooLarge { len: max + 1, max }));
    assert_eq!(group.reply(group.local(), 0, too_large).await, Err(GroupError::TooLarge { len: max + 1, max }));
    ep.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_ends_an_open_query_as_impossible() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 2, &Arc::new(strata_layers::builtin()));
    let members = join_static(&eps, &[Policy::Ignore, Policy::Ignore]).await;
    let g = members[0].group.clone();
    let waiting = tokio::spawn(async move { query(&g, b"anyone?", Want::All, LONG).await });
    let mut m0 = members.into_iter().next().unwrap();
    m0.wait_for("its own query", |seen| seen.iter().any(|e| matches!(e, AppEvent::Query { .. }))).await;
    m0.group.leave().await.unwrap();
    let r = waiting.await.unwrap();
    assert_eq!(r.outcome, QueryOutcome::Impossible);
    assert!(r.replies.is_empty());
    assert_eq!(r.missing, ids(&eps));
    assert_eq!(m0.group.query(Bytes::new(), Want::All, LONG).await, Err(GroupError::Left));
    for ep in &eps {
        ep.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_vsync_a_member_crashing_mid_query_is_not_waited_for() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 3, &Arc::new(strata_layers::builtin()));
    let all = ids(&eps);
    let mut members = join_vsync(&eps, &[Policy::Answer, Policy::Answer, Policy::Ignore]).await;
    let g = members[0].group.clone();
    let waiting = tokio::spawn(async move { query(&g, b"still there?", Want::All, LONG).await });
    // Everyone got the query; then the silent member crashes.
    for m in &mut members {
        m.wait_for("the query", |seen| seen.iter().any(|e| matches!(e, AppEvent::Query { .. }))).await;
    }
    eps[2].shutdown().await;
    let r = waiting.await.unwrap();
    assert_eq!(r.outcome, QueryOutcome::Complete, "complete without the crashed member, well before the timeout");
    assert_eq!(sorted(&r), answers(&all[..2], b"still there?"));
    assert_eq!(r.missing, vec![all[2]]);
    assert_eq!(r.view.len(), 3, "asked in the view of three");
    members[0].wait_view(&all[..2]).await;
    for ep in &eps[..2] {
        ep.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_vsync_a_member_leaving_mid_query_is_not_waited_for_and_joiners_are_not_asked() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 4, &Arc::new(strata_layers::builtin()));
    let all = ids(&eps);
    let mut members = join_vsync(&eps[..3], &[Policy::Answer, Policy::Answer, Policy::Ignore]).await;
    let g = members[1].group.clone();
    let waiting = tokio::spawn(async move { query(&g, b"count off", Want::All, LONG).await });
    for m in &mut members {
        m.wait_for("the query", |seen| seen.iter().any(|e| matches!(e, AppEvent::Query { .. }))).await;
    }
    // A fourth member joins while the query waits: it is not asked.
    let mut cfg = JoinConfig::new("q", VSYNC);
    cfg.members = vec![all[0]];
    let (group, events) = eps[3].join(cfg).await.unwrap();
    let mut joiner = Member::run(group, events, Policy::Answer);
    members[1].wait_view(&all).await;
    joiner.wait_view(&all).await;
    // Then the silent member leaves.
    members[2].group.leave().await.unwrap();
    let r = waiting.await.unwrap();
    assert_eq!(r.outcome, QueryOutcome::Complete);
    assert_eq!(sorted(&r), answers(&all[..2], b"count off"));
    assert_eq!(r.missing, vec![all[2]]);
    assert!(joiner.asked().is_empty(), "the joiner got the query: {:?}", joiner.asked());
    for ep in &eps {
        ep.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_total_order_below_every_member_is_asked_the_queries_in_one_order() {
    let net = MemNetwork::new();
    let eps = endpoints(&net, 3, &Arc::new(strata_layers::builtin()));
    let all = ids(&eps);
    let mut members = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let mut cfg = JoinConfig::new("q", ORDERED);
        cfg.members = if i == 0 { Vec::new() } else { vec![all[0]] };
        let (group, events) = ep.join(cfg).await.expect("join");
        let mut m = Member::run(group, events, Policy::Answer);
        if i == 0 {
            m.wait_view(&all[..1]).await;
        }
        members.push(m);
    }
    for m in &mut members {
        m.wait_view(&all).await;
    }
    // Every member asks several queries at once (an OrderedQuery each).
    let per_member = 5;
    let mut tasks = Vec::new();
    for m in &members {
        for _ in 0..per_member {
            let g = m.group.clone();
            tasks.push(tokio::spawn(async move { query(&g, b"in order?", Want::All, LONG).await }));
        }
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.outcome, sorted(&r)), (QueryOutcome::Complete, answers(&all, b"in order?")));
    }
    let orders: Vec<Vec<(MemberId, u64)>> = members.iter().map(|m| m.asked().into_iter().map(|(from, id, _)| (from, id)).collect()).collect();
    assert_eq!(orders[0].len(), 3 * per_member);
    assert!(orders.iter().all(|o| *o == orders[0]), "members were asked in different orders: {orders:?}");
    for ep in &eps {
        ep.shutdown().await;
    }
}
