//! Many TOTAL layers over a small model of VSYNC, checked for one order.
//!
//! The model gives each member a `LayerHarness` and plays VSYNC's part:
//! every cast reaches every member of the view, itself included, in FIFO
//! order per sender and in a random interleaving across senders. A view
//! change goes as VSYNC runs it: casts from above are held from the moment
//! it starts, each member gets `Block` at its own random moment (so the
//! sequencer may cast or announce after VSYNC blocked: those travel in the
//! next view, stale), a crashed member's casts are cut at the most any
//! survivor received (the others get the rest, as NAK's recovery gives
//! them), every remaining cast of the old view is delivered, then the new
//! view, then the held casts. Members may crash (the sequencer too), leave
//! (delivering the old view's casts like the survivors) and join.
//!
//! With `causal`, the model also plays CAUSAL below VSYNC: a cast reaches a
//! member only after every cast its sender had received before casting it
//! (FIFO-only casts wait for nothing but their sender's earlier casts).
//!
//! Checked over the delivery logs: members that complete a view deliver the
//! same set in it and its ordered casts in the same sequence; any two
//! members that did not crash deliver their common ordered casts in the
//! same relative order; every member delivers each sender's casts in FIFO
//! order, each at most once, as cast; a surviving member delivers all its
//! own casts; nothing stays held. With `causal`: no member delivers an
//! ordered cast before one its sender had delivered before casting it.

use super::*;
use bytes::Bytes;
use quickcheck::{QuickCheck, TestResult};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use strata_stack::harness::{LayerHarness, Out};
use strata_stack::{Instant, ParamValue, Rng, ViewId};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Deliver { from: MemberId, body: Bytes },
    View(ViewId),
    Left,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fate {
    Member,
    Crashed,
    Left,
}

struct Node {
    id: MemberId,
    h: LayerHarness,
    fate: Fate,
    /// Got `Block` in the view change under way.
    blocked: bool,
    log: Vec<Entry>,
    /// Payloads this member cast, each with how long its log was then.
    cast: Vec<(Bytes, usize)>,
    /// Casts received from each node in this view (what CAUSAL has seen).
    received: BTreeMap<usize, usize>,
}

/// A cast in flight, with the casts (per sender: how many) that CAUSAL
/// makes it wait for.
struct InFlight {
    msg: Msg,
    deps: BTreeMap<usize, usize>,
}

struct Model {
    rng: Rng,
    params: Params,
    nodes: Vec<Node>,
    view: Arc<View>,
    /// (sender, receiver) node indices -> casts in flight, in order.
    chans: BTreeMap<(usize, usize), VecDeque<InFlight>>,
    /// Deliver causally (CAUSAL below VSYNC).
    causal: bool,
    /// VSYNC has begun a view change: casts from above wait in `held`.
    blocking: bool,
    held: Vec<(usize, Msg)>,
    now: Instant,
    changes_left: u32,
    fifo_share: u64,
}

fn params(pairs: &[(&'static str, u64)]) -> Params {
    let mut p = Params::defaults(TOTAL.params).unwrap();
    for (name, value) in pairs {
        p.set(name, ParamValue::U64(*value));
    }
    p
}

impl Model {
    fn new(seed: u64, members: usize, params: Params, changes: u32, fifo_share: u64, causal: bool) -> Model {
        let ids: Vec<MemberId> = (0..members).map(|i| MemberId::sim(i as u16)).collect();
        let view = View::initial(ids.clone()).unwrap();
        let mut model = Model {
            rng: Rng::new(seed),
            params,
            nodes: Vec::new(),
            view: view.clone(),
            chans: BTreeMap::new(),
            causal,
            blocking: false,
            held: Vec::new(),
            now: Instant::ZERO,
            changes_left: changes,
            fifo_share,
        };
        for id in ids {
            model.add_node(id, view.clone());
        }
        model
    }

    fn add_node(&mut self, id: MemberId, view: Arc<View>) {
        let mut h = LayerHarness::boxed("TOTAL", (TOTAL.build)(&self.params).unwrap(), id, view.clone(), 65_000);
        assert!(h.init_output().is_empty());
        h.advance(self.now);
        self.nodes.push(Node { id, h, fate: Fate::Member, blocked: false, log: vec![Entry::View(view.id())], cast: Vec::new(), received: BTreeMap::new() });
    }

    fn index(&self, id: &MemberId) -> usize {
        self.nodes.iter().position(|n| n.id == *id).expect("a node of the model")
    }

    /// Node indices of the current view's members that have not crashed.
    fn live_members(&self) -> Vec<usize> {
        self.view.members().iter().map(|m| self.index(m)).filter(|&i| self.nodes[i].fate != Fate::Crashed).collect()
    }

    fn process(&mut self, i: usize, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Down(Down::Cast(msg)) => {
                    // The network carries bytes; local flags stay behind.
                    let msg = Msg::new(msg.to_bytes());
                    if self.blocking {
                        self.held.push((i, msg));
                    } else {
                        self.multicast(i, msg);
                    }
                }
                Out::Up(Up::Cast { from, msg }) => self.nodes[i].log.push(Entry::Deliver { from, body: msg.into_body() }),
                Out::Up(Up::View(v)) => self.nodes[i].log.push(Entry::View(v.id())),
                Out::Up(Up::Left) => self.nodes[i].log.push(Entry::Left),
                Out::Up(Up::Block) => {}
                other => panic!("node {i} emitted {other:?}"),
            }
        }
    }

    fn multicast(&mut self, from: usize, msg: Msg) {
        // What the sender has received, bar its own casts (FIFO covers
        // those); a FIFO-only cast depends on nothing else.
        let unordered = msg.front().first() == Some(&wire::kind::UNORDERED);
        let deps: BTreeMap<usize, usize> = if self.causal && !unordered {
            self.nodes[from].received.iter().filter(|(s, _)| **s != from).map(|(s, n)| (*s, *n)).collect()
        } else {
            BTreeMap::new()
        };
        for to in self.live_members() {
            self.chans.entry((from, to)).or_default().push_back(InFlight { msg: msg.clone(), deps: deps.clone() });
        }
    }

    fn app_cast(&mut self) {
        let members = self.live_members();
        let i = members[self.rng.below(members.len() as u64) as usize];
        let fifo = self.rng.below(100) < self.fifo_share;
        let text = format!("{}{}:{}", if fifo { 'f' } else { 'o' }, i, self.nodes[i].cast.len());
        let body = Bytes::from(text);
        let delivered_before = self.nodes[i].log.len();
        self.nodes[i].cast.push((body.clone(), delivered_before));
        let mut msg = Msg::new(body);
        if fifo {
            msg.flags_mut().set_order(Some(Order::Fifo));
        }
        let out = self.nodes[i].h.down(Down::Cast(msg));
        self.process(i, out);
    }

    /// Delivers the next cast of one random channel whose next cast may go;
    /// false if none has anything.
    fn deliver_one(&mut self) -> bool {
        let ready: Vec<(usize, usize)> = self
            .chans
            .iter()
            .filter(|((_, to), q)| q.front().is_some_and(|f| f.deps.iter().all(|(s, n)| self.nodes[*to].received.get(s).copied().unwrap_or(0) >= *n)))
            .map(|(k, _)| *k)
            .collect();
        if ready.is_empty() {
            assert!(self.chans.values().all(|q| q.is_empty()), "casts in flight wait for each other");
            return false;
        }
        let (from, to) = ready[self.rng.below(ready.len() as u64) as usize];
        let msg = self.chans.get_mut(&(from, to)).and_then(|q| q.pop_front()).expect("non-empty").msg;
        *self.nodes[to].received.entry(from).or_default() += 1;
        let sender = self.nodes[from].id;
        let out = self.nodes[to].h.up(Up::Cast { from: sender, msg });
        self.process(to, out);
        true
    }

    fn tick(&mut self, to: Instant) {
        self.now = self.now.max(to);
        for i in self.live_members() {
            let out = self.nodes[i].h.advance(self.now);
            self.process(i, out);
        }
    }

    fn tick_random(&mut self) {
        let step = Duration::from_micros(self.rng.below(1500));
        self.tick(self.now + step);
    }

    fn next_timer(&self) -> Option<Instant> {
        self.live_members().into_iter().filter_map(|i| self.nodes[i].h.next_timer()).min()
    }

    fn block_one(&mut self) {
        let waiting: Vec<usize> = self.live_members().into_iter().filter(|&i| !self.nodes[i].blocked).collect();
        if let Some(&i) = waiting.get(self.rng.below(waiting.len() as u64) as usize) {
            self.nodes[i].blocked = true;
            let out = self.nodes[i].h.up(Up::Block);
            self.process(i, out);
        }
    }

    fn all_blocked(&self) -> bool {
        self.live_members().iter().all(|&i| self.nodes[i].blocked)
    }

    /// Ends the view change under way: crash, leave, flush, install, release.
    fn finish_change(&mut self) {
        let members = self.live_members();
        let mut survivors = members.clone();
        if survivors.len() > 1 && self.rng.chance(0.6) {
            // Half of the crashes hit the sequencer.
            let victim = if self.rng.chance(0.5) { survivors[0] } else { survivors[self.rng.below(survivors.len() as u64) as usize] };
            self.crash(victim, &members);
            survivors.retain(|&i| i != victim);
        }
        let leaver = if survivors.len() > 1 && self.rng.chance(0.25) { Some(survivors[self.rng.below(survivors.len() as u64) as usize]) } else { None };
        while self.deliver_one() {}
        if let Some(l) = leaver {
            let out = self.nodes[l].h.up(Up::Left);
            self.process(l, out);
            self.nodes[l].fate = Fate::Left;
            survivors.retain(|&i| i != l);
        }
        let mut ids: Vec<MemberId> = survivors.iter().map(|&i| self.nodes[i].id).collect();
        let joiner = self.rng.chance(0.3).then(|| MemberId::sim(self.nodes.len() as u16));
        ids.extend(joiner);
        let next = View::new(ViewId { counter: self.view.id().counter + 1, creator: ids[0] }, ids).unwrap();
        for &i in &survivors {
            self.nodes[i].blocked = false;
            let out = self.nodes[i].h.up(Up::View(next.clone()));
            self.process(i, out);
        }
        if let Some(j) = joiner {
            self.add_node(j, next.clone());
        }
        self.view = next;
        for n in &mut self.nodes {
            n.received.clear();
        }
        self.blocking = false;
        for (i, msg) in std::mem::take(&mut self.held) {
            if self.nodes[i].fate == Fate::Member {
                self.multicast(i, msg);
            }
        }
    }

    /// `victim` stops. Of its casts, the survivors deliver exactly the most
    /// any of them received (VSYNC's cut); its held casts are gone.
    fn crash(&mut self, victim: usize, members: &[usize]) {
        self.nodes[victim].fate = Fate::Crashed;
        let others: Vec<usize> = members.iter().copied().filter(|&i| i != victim).collect();
        let got = |m: &Model, to: usize| m.nodes[to].received.get(&victim).copied().unwrap_or(0);
        let cut = others.iter().map(|&to| got(self, to)).max().unwrap_or(0);
        for &to in &others {
            let keep = cut - got(self, to);
            if let Some(q) = self.chans.get_mut(&(victim, to)) {
                q.truncate(keep);
            }
        }
        self.chans.retain(|&(_, to), _| to != victim);
        self.held.retain(|(i, _)| *i != victim);
    }

    fn step(&mut self) {
        let r = self.rng.below(100);
        if self.blocking {
            match r {
                0..=14 => self.app_cast(),
                15..=59 => {
                    self.deliver_one();
                }
                60..=69 => self.tick_random(),
                70..=89 => self.block_one(),
                _ if self.all_blocked() => self.finish_change(),
                _ => self.block_one(),
            }
        } else {
            match r {
                0..=29 => self.app_cast(),
                30..=84 => {
                    self.deliver_one();
                }
                85..=96 => self.tick_random(),
                _ if self.changes_left > 0 => {
                    self.changes_left -= 1;
                    self.blocking = true;
                }
                _ => self.app_cast(),
            }
        }
    }

    /// Lets everything in flight arrive and every timer fire.
    fn quiesce(&mut self) {
        if self.blocking {
            while !self.all_blocked() {
                self.block_one();
            }
            self.finish_change();
        }
        loop {
            if self.deliver_one() {
                continue;
            }
            match self.next_timer() {
                Some(t) => self.tick(t),
                None => break,
            }
        }
    }

    fn total_stat(&self, name: &str) -> u64 {
        self.nodes.iter().map(|n| n.h.stats().get(name).unwrap_or(0)).sum()
    }
}

/// `who`'s deliveries per view, for the views it completed (left by a new
/// view or a leave, or the last view of a member alive at the end).
fn completed_views(node: &Node) -> Vec<(ViewId, Vec<Bytes>)> {
    let mut out = Vec::new();
    let mut current: Option<(ViewId, Vec<Bytes>)> = None;
    for e in &node.log {
        match e {
            Entry::View(v) => {
                out.extend(current.take());
                current = Some((*v, Vec::new()));
            }
            Entry::Deliver { body, .. } => current.as_mut().expect("a view first").1.push(body.clone()),
            Entry::Left => out.extend(current.take()),
        }
    }
    if node.fate == Fate::Member {
        out.extend(current);
    }
    out
}

fn is_ordered(body: &Bytes) -> bool {
    body.first() == Some(&b'o')
}

fn check(model: &Model) -> Result<(), String> {
    // Integrity, no duplication, FIFO per sender, at every member.
    for n in &model.nodes {
        let mut next_of: BTreeMap<MemberId, usize> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for e in &n.log {
            let Entry::Deliver { from, body } = e else { continue };
            let sender = &model.nodes[model.index(from)];
            let Some(k) = sender.cast.iter().position(|(b, _)| b == body) else { return Err(format!("{} delivered {body:?}, never cast by {from}", n.id)) };
            if !seen.insert(body.clone()) {
                return Err(format!("{} delivered {body:?} twice", n.id));
            }
            let next = next_of.entry(*from).or_insert(0);
            if k < *next {
                return Err(format!("{} delivered {body:?} after a later cast of {from}", n.id));
            }
            *next = k + 1;
        }
    }
    // One sequence per completed view.
    let mut per_view: BTreeMap<ViewId, (MemberId, Vec<Bytes>, BTreeSet<Bytes>)> = BTreeMap::new();
    for n in model.nodes.iter().filter(|n| n.fate != Fate::Crashed) {
        for (v, bodies) in completed_views(n) {
            let ordered: Vec<Bytes> = bodies.iter().filter(|b| is_ordered(b)).cloned().collect();
            let set: BTreeSet<Bytes> = bodies.into_iter().collect();
            match per_view.get(&v) {
                None => {
                    per_view.insert(v, (n.id, ordered, set));
                }
                Some((other, o, s)) if *o != ordered || *s != set => {
                    return Err(format!("in view {v}, {other} delivered {o:?} (all: {s:?}) but {} delivered {ordered:?} (all: {set:?})", n.id));
                }
                Some(_) => {}
            }
        }
    }
    // Pairwise: common ordered casts in the same relative order.
    let survivors: Vec<&Node> = model.nodes.iter().filter(|n| n.fate != Fate::Crashed).collect();
    let ordered_of = |n: &Node| -> Vec<Bytes> {
        n.log
            .iter()
            .filter_map(|e| match e {
                Entry::Deliver { body, .. } if is_ordered(body) => Some(body.clone()),
                _ => None,
            })
            .collect()
    };
    for (i, x) in survivors.iter().enumerate() {
        let xs = ordered_of(x);
        let pos: BTreeMap<&Bytes, usize> = xs.iter().enumerate().map(|(p, b)| (b, p)).collect();
        for y in &survivors[i + 1..] {
            let mut last: Option<(usize, Bytes)> = None;
            for b in ordered_of(y) {
                let Some(&p) = pos.get(&b) else { continue };
                if let Some((lp, lb)) = &last {
                    if p < *lp {
                        return Err(format!("{} delivered {lb:?} before {b:?}, {} the other way round", y.id, x.id));
                    }
                }
                last = Some((p, b));
            }
        }
    }
    // Liveness: a member alive at the end delivered everything it cast, and holds nothing.
    for n in model.nodes.iter().filter(|n| n.fate == Fate::Member) {
        let got: BTreeSet<&Bytes> = n.log.iter().filter_map(|e| if let Entry::Deliver { body, .. } = e { Some(body) } else { None }).collect();
        if let Some((missing, _)) = n.cast.iter().find(|(b, _)| !got.contains(b)) {
            return Err(format!("{} never delivered its own {missing:?}", n.id));
        }
        let s = n.h.stats();
        if s.get("pending") != Some(0) || s.get("queued_runs") != Some(0) {
            return Err(format!("{} still holds casts or runs: {s:?}", n.id));
        }
    }
    if model.causal {
        check_causal(model)?;
    }
    Ok(())
}

/// The bodies `n` delivered, in order.
fn deliveries(n: &Node) -> impl Iterator<Item = &Bytes> {
    n.log.iter().filter_map(|e| if let Entry::Deliver { body, .. } = e { Some(body) } else { None })
}

/// For each ordered cast, the ordered casts its sender had delivered before
/// casting it must come before it wherever both are delivered.
fn check_causal(model: &Model) -> Result<(), String> {
    let mut before: BTreeMap<&Bytes, Vec<&Bytes>> = BTreeMap::new();
    for n in &model.nodes {
        for (body, log_len) in n.cast.iter().filter(|(b, _)| is_ordered(b)) {
            let preds = n.log[..*log_len].iter().filter_map(|e| match e {
                Entry::Deliver { body, .. } if is_ordered(body) => Some(body),
                _ => None,
            });
            before.insert(body, preds.collect());
        }
    }
    for n in &model.nodes {
        let pos: BTreeMap<&Bytes, usize> = deliveries(n).enumerate().map(|(p, b)| (b, p)).collect();
        for (later, preds) in &before {
            let Some(&p) = pos.get(later) else { continue };
            if let Some(early) = preds.iter().find(|m| pos.get(*m).is_some_and(|&q| q > p)) {
                return Err(format!("{} delivered {later:?} before {early:?}, which its sender had delivered before casting it", n.id));
            }
        }
    }
    Ok(())
}

fn run(seed: u64, members: usize, pairs: &[(&'static str, u64)], steps: usize, changes: u32, fifo_share: u64, causal: bool) -> Result<Model, String> {
    let mut model = Model::new(seed, members, params(pairs), changes, fifo_share, causal);
    for _ in 0..steps {
        model.step();
    }
    model.quiesce();
    check(&model).map(|()| model)
}

#[test]
fn members_deliver_one_order_through_view_changes_crashes_joins_and_leaves() {
    fn prop(seed: u64) -> TestResult {
        let mut rng = Rng::new(seed);
        let members = rng.between(2, 5) as usize;
        let batch = [1, 2, 4, 32][rng.below(4) as usize];
        let delay = [0, 200, 1000][rng.below(3) as usize];
        let steps = rng.between(50, 300) as usize;
        let changes = rng.below(4) as u32;
        let causal = rng.chance(0.5);
        match run(seed, members, &[("batch_msgs", batch), ("batch_us", delay)], steps, changes, 20, causal) {
            Ok(_) => TestResult::passed(),
            Err(e) => TestResult::error(format!(
                "seed {seed}, {members} members, batch_msgs={batch} batch_us={delay}, {steps} steps, {changes} changes, causal={causal}: {e}"
            )),
        }
    }
    QuickCheck::new().tests(400).quickcheck(prop as fn(u64) -> TestResult);
}

#[test]
fn without_view_changes_every_member_delivers_everything_in_one_order() {
    for seed in 0..20 {
        let causal = seed % 2 == 0;
        let model = run(seed, 4, &[], 400, 0, 0, causal).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let all: usize = model.nodes.iter().map(|n| n.cast.len()).sum();
        for n in &model.nodes {
            assert_eq!(deliveries(n).count(), all, "seed {seed}: {} delivered {} of {all}", n.id, deliveries(n).count());
        }
        assert_eq!(model.total_stat("leftovers_delivered"), 0);
    }
}

#[test]
fn under_load_announcements_are_few_and_mostly_ride_on_the_sequencers_casts() {
    // Four members casting in bursts (the steps mix casts and arrivals):
    // one announcement per batch, not per cast.
    let model = run(7, 4, &[("batch_msgs", 32), ("batch_us", 1000)], 4000, 0, 0, true).unwrap();
    let ordered = model.total_stat("ordered");
    let announcements = model.total_stat("announcements_sent");
    let piggybacked = model.total_stat("piggybacked");
    let casts: usize = model.nodes.iter().map(|n| n.cast.len()).sum();
    // Without view changes the sequencer (node 0) sequences its own casts itself.
    assert_eq!(ordered as usize + model.nodes[0].cast.len(), casts, "every other member's cast is ordered once");
    assert!(announcements * 4 < ordered, "{announcements} announcements for {ordered} ordered casts");
    eprintln!("{casts} casts, {ordered} ordered by the sequencer, {announcements} announcements, {piggybacked} piggybacked");
}
