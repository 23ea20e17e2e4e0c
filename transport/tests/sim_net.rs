//! Tests of the simulator itself, with trivial test layers (not FRAG/NAK):
//! a lossless network delivers everything, crashes stop members, partitions
//! cut traffic until healed, a seed replays the same run, backpressure is
//! retried, and each checker catches the violation it exists for; and
//! tree routing (`tree=K`): a cast reaches everyone once along the tree, a
//! view tag mismatch stops forwarding, a crashed inner member is routed
//! around once its tree neighbours are told of the crash, a refused
//! connect is routed around at once, a partition is routed around after
//! the connections stall and reconnected after the heal, and FIFO links
//! keep each sender's order.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use strata_stack::harness::Tag;
use strata_stack::{Context, Down, Instant, Layer, LayerDescriptor, MemberId, Msg, Props, Registry, Up, View, ViewId};
use strata_transport::sim::{self, check, FaultKind, Outcome, Scenario};

/// Flips one payload byte of every 5th message it passes up from another member.
struct Corrupt(u32);
impl Layer for Corrupt {
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, msg } if from != cx.local() => {
                self.0 += 1;
                let mut body = msg.to_bytes().to_vec();
                if self.0 == 5 {
                    self.0 = 0;
                    let last = body.len() - 1;
                    body[last] ^= 0x01;
                }
                cx.up(Up::Cast { from, msg: Msg::new(Bytes::from(body)) })
            }
            ev => cx.up(ev),
        }
    }
}

/// Delivers one invented message after the first one it passes up.
struct Forge(bool);
impl Layer for Forge {
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        if let Up::Cast { from, .. } = ev {
            let from = &from;
            if !self.0 {
                self.0 = true;
                let fake = strata_transport::payload::make(&from.to_string(), 999, 50);
                cx.up(ev);
                return cx.up(Up::Cast { from: *from, msg: Msg::new(fake) });
            }
        }
        cx.up(ev)
    }
}

/// Closes the send window after every cast and reopens it 2 ms later.
struct Window;
impl Layer for Window {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        if let Down::Cast(_) = &ev {
            cx.set_backpressure(true);
            let at = cx.now() + Duration::from_millis(2);
            cx.set_timer(1, at);
        }
        cx.down(ev)
    }
    fn timeout(&mut self, cx: &mut Context<'_>, _key: u32) {
        cx.set_backpressure(false);
    }
}

/// A minimal positive-acknowledgement layer (a control for the simulator,
/// not a protocol to copy): casts carry a per-sender sequence number, every
/// receiver acknowledges each one to its sender, delivers in order, and the
/// sender re-casts what some member has not acknowledged every 20 ms.
#[derive(Default)]
struct Rel {
    next_seq: u64,
    unacked: BTreeMap<u64, (Msg, BTreeSet<MemberId>)>,
    expected: BTreeMap<MemberId, u64>,
    held: BTreeMap<(MemberId, u64), Msg>,
}

const DATA: u8 = 0;
const ACK: u8 = 1;

impl Rel {
    fn arm(&self, cx: &mut Context<'_>) {
        if !self.unacked.is_empty() && cx.timer(0).is_none() {
            let at = cx.now() + Duration::from_millis(20);
            cx.set_timer(0, at);
        }
    }
}

impl Layer for Rel {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(msg) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let others = cx.view().members().iter().copied().filter(|m| *m != cx.local()).collect::<BTreeSet<_>>();
                if !others.is_empty() {
                    self.unacked.insert(seq, (msg.clone(), others));
                }
                let mut msg = msg;
                msg.push_with(|w| {
                    w.u8(DATA).u64(seq);
                });
                cx.down(Down::Cast(msg));
                self.arm(cx);
            }
            ev => cx.down(ev),
        }
    }
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, mut msg } => {
                let Ok((DATA, seq)) = msg.pop_with(|r| Ok((r.u8()?, r.u64()?))) else { return cx.drop_malformed("bad_header") };
                if from != cx.local() {
                    let mut ack = Msg::empty();
                    ack.push_with(|w| {
                        w.u8(ACK).u64(seq);
                    });
                    cx.down(Down::Send { to: from, msg: ack });
                }
                let next = self.expected.entry(from).or_insert(0);
                if seq >= *next {
                    self.held.insert((from, seq), msg);
                }
                while let Some(msg) = self.held.remove(&(from, *next)) {
                    *next += 1;
                    cx.up(Up::Cast { from, msg });
                }
            }
            Up::Send { from, mut msg } => {
                let Ok((ACK, seq)) = msg.pop_with(|r| Ok((r.u8()?, r.u64()?))) else { return cx.drop_malformed("bad_header") };
                if let Some((_, pending)) = self.unacked.get_mut(&seq) {
                    pending.remove(&from);
                    if pending.is_empty() {
                        self.unacked.remove(&seq);
                    }
                }
            }
            ev => cx.up(ev),
        }
    }
    fn timeout(&mut self, cx: &mut Context<'_>, _key: u32) {
        for (seq, (msg, _)) in &self.unacked {
            let mut msg = msg.clone();
            msg.push_with(|w| {
                w.u8(DATA).u64(*seq);
            });
            cx.down(Down::Cast(msg));
        }
        self.arm(cx);
    }
    fn stats(&self, out: &mut strata_stack::Stats) {
        out.add("unacked", self.unacked.len() as u64).add("held", self.held.len() as u64);
    }
}

/// Passes down, at member 1 only, a view without member 3 (as if member 1
/// alone had moved on): the bottom view routing tree casts.
struct SplitView;
impl Layer for SplitView {
    fn init(&mut self, cx: &mut Context<'_>) {
        if cx.local() == sim::member(1) {
            let members: Vec<MemberId> = cx.view().members().iter().copied().filter(|m| *m != sim::member(3)).collect();
            let view = View::new(ViewId { counter: 1, creator: members[0] }, members).expect("a valid view");
            cx.down(Down::View(view));
        }
    }
}

/// At 40 ms every member passes down a view without member 1: a stand-in
/// for the membership layer removing a crashed member.
struct Exclude;
const EXCLUDE_AT_MS: u64 = 40;
impl Layer for Exclude {
    fn init(&mut self, cx: &mut Context<'_>) {
        cx.set_timer(0, Instant::ZERO + Duration::from_millis(EXCLUDE_AT_MS));
    }
    fn timeout(&mut self, cx: &mut Context<'_>, _key: u32) {
        let members: Vec<MemberId> = cx.view().members().iter().copied().filter(|m| *m != sim::member(1)).collect();
        let view = View::new(ViewId { counter: 1, creator: members[0] }, members).expect("a valid view");
        cx.down(Down::View(view));
    }
}

fn desc(name: &'static str, build: fn(&strata_stack::Params) -> Result<Box<dyn Layer>, String>) -> LayerDescriptor {
    LayerDescriptor { name, summary: "test layer", requires: Props::NONE, provides: Props::NONE, params: &[], max_header_len: |_| 1, build }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(desc("TAG", |_| Ok(Box::new(Tag)))).unwrap();
    r.register(desc("CORRUPT", |_| Ok(Box::new(Corrupt(0))))).unwrap();
    r.register(desc("FORGE", |_| Ok(Box::new(Forge(false))))).unwrap();
    r.register(desc("WINDOW", |_| Ok(Box::new(Window)))).unwrap();
    r.register(LayerDescriptor { max_header_len: |_| 9, ..desc("REL", |_| Ok(Box::<Rel>::default())) }).unwrap();
    r.register(desc("SPLITVIEW", |_| Ok(Box::new(SplitView)))).unwrap();
    r.register(desc("EXCLUDE", |_| Ok(Box::new(Exclude)))).unwrap();
    r
}

fn scenario(line: &str) -> Scenario {
    line.parse().unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn run(line: &str) -> Outcome {
    sim::run(&registry(), &scenario(line)).unwrap()
}

/// Deliveries at member `to` of casts by member `from`, with the cast times.
fn delivered_casts(o: &Outcome, to: usize, from: usize) -> Vec<(u64, Instant)> {
    let name = &o.members[from].name;
    o.members[to].deliveries().filter_map(|d| d.id.as_ref().filter(|(s, _)| s == name).map(|(_, k)| (*k, o.members[from].casts[*k as usize].at))).collect()
}

#[test]
fn lossless_network_delivers_everything_once_and_intact() {
    let o = run("seed=1 members=4 stack=TAG delay_us=100..900 casts=25 size=1..3000 interval_us=700 quiet_ms=50");
    check::run(&o, &[check::INTEGRITY, check::NO_DUPLICATION, check::NO_CREATION, check::COMPLETENESS, check::BUFFERS]).unwrap();
    for m in &o.members {
        assert_eq!(m.casts.len(), 25);
        assert_eq!(m.deliveries().count(), 4 * 25, "{}", m.name);
    }
    assert_eq!(o.net.copies, 4 * 3 * 25);
    assert_eq!(o.net.arrived, o.net.copies);
    assert_eq!((o.net.lost, o.net.duplicated, o.net.cut), (0, 0, 0));
    // Payload sizes span the range (log-uniform draw).
    let sizes: Vec<usize> = o.members.iter().flat_map(|m| m.casts.iter().map(|c| c.len)).collect();
    assert!(sizes.iter().any(|&s| s < 100) && sizes.iter().any(|&s| s > 1000), "{sizes:?}");
    // The run stops quiet_ms after the last cast.
    let last_cast = o.members.iter().flat_map(|m| m.casts.iter().map(|c| c.at)).max().unwrap();
    assert_eq!(o.quiet_from, Some(last_cast));
    assert_eq!(o.end, last_cast + Duration::from_millis(50));
}

#[test]
fn equal_delays_keep_fifo_and_random_delays_break_it() {
    let fixed = run("seed=2 members=3 stack=TAG delay_us=300..300 casts=30 size=1..100 interval_us=50 quiet_ms=10");
    check::run(&fixed, check::RELIABLE_FIFO).unwrap();
    let reordered = run("seed=2 members=3 stack=TAG delay_us=300..300 reorder=0.5 casts=30 size=1..100 interval_us=50 quiet_ms=10");
    assert!(reordered.net.delayed > 0);
    let e = check::run(&reordered, &[check::FIFO]).unwrap_err();
    assert!(e.starts_with("fifo violated: ") && e.contains(" after "), "{e}");
}

#[test]
fn loss_and_duplication_are_caught_by_completeness_and_no_duplication() {
    let lossy = run("seed=3 members=3 stack=TAG loss=0.3 casts=20 size=1..100 quiet_ms=10");
    assert!(lossy.net.lost > 0);
    let e = check::run(&lossy, &[check::COMPLETENESS]).unwrap_err();
    assert!(e.contains("never delivered"), "{e}");
    let dup = run("seed=3 members=3 stack=TAG dup=0.3 casts=20 size=1..100 quiet_ms=10");
    assert!(dup.net.duplicated > 0);
    let e = check::run(&dup, &[check::NO_DUPLICATION]).unwrap_err();
    assert!(e.contains("twice"), "{e}");
    check::run(&dup, &[check::INTEGRITY, check::NO_CREATION, check::COMPLETENESS]).unwrap();
}

#[test]
fn corruption_and_forgery_are_caught_by_integrity_and_no_creation() {
    let o = run("seed=4 members=3 stack=TAG:CORRUPT casts=10 size=100..200 quiet_ms=10");
    let e = check::run(&o, check::SAFETY).unwrap_err();
    assert!(e.starts_with("integrity violated: ") && e.contains("corrupt"), "{e}");
    let o = run("seed=4 members=3 stack=TAG:FORGE casts=10 size=100..200 quiet_ms=10");
    let e = check::run(&o, check::SAFETY).unwrap_err();
    assert!(e.starts_with("no creation violated: ") && e.contains(":999") && e.contains("cast only 10"), "{e}");
}

#[test]
fn a_crashed_member_stops_sending_and_receiving() {
    let o = run("seed=5 members=3 stack=TAG delay_us=100..500 casts=50 size=1..100 interval_us=1000 quiet_ms=10 faults=crash(1)@20ms");
    let crashed = &o.members[1];
    let at = Instant::ZERO + Duration::from_millis(20);
    assert_eq!(crashed.crashed_at, Some(at));
    assert!(crashed.casts.len() < 25, "cast {} after crashing", crashed.casts.len());
    assert!(crashed.log.iter().all(|e| matches!(e, sim::Entry::Deliver(d) if d.at <= at)));
    assert!(o.net.to_crashed > 0);
    for to in [0, 2] {
        // Everything member 1 cast before crashing still arrives (it was on the wire) ...
        assert_eq!(delivered_casts(&o, to, 1).len(), crashed.casts.len());
        // ... and the survivors keep talking.
        assert_eq!(delivered_casts(&o, to, 2 - to).len(), 50);
    }
    check::run(&o, check::RELIABLE_FIFO).unwrap(); // completeness and buffers are not required with a crash
}

#[test]
fn a_partition_cuts_traffic_between_sets_until_healed() {
    let o = run("seed=6 members=4 stack=TAG delay_us=100..100 casts=100 size=1..50 interval_us=1000 quiet_ms=10 faults=partition(0.1|2.3)@20ms,heal@60ms");
    assert!(o.net.cut > 0);
    let (cut_from, cut_to) = (Instant::ZERO + Duration::from_millis(20), Instant::ZERO + Duration::from_millis(60));
    let during = |t: Instant| t >= cut_from && t < cut_to;
    for (from, to, same_side) in [(0, 1, true), (0, 2, false), (3, 1, false), (3, 2, true)] {
        let got = delivered_casts(&o, to, from);
        let expected: Vec<u64> = o.members[from].casts.iter().filter(|c| same_side || !during(c.at)).map(|c| c.k).collect();
        let got_ks: Vec<u64> = got.iter().map(|(k, _)| *k).collect();
        assert_eq!(got_ks, expected, "{from} -> {to}");
        assert!(got.iter().any(|(_, at)| *at >= cut_to), "traffic resumes after the heal");
    }
    check::run(&o, check::SAFETY).unwrap();
    assert!(!o.scenario.is_fault_free());
    assert!(matches!(o.scenario.faults[0].kind, FaultKind::Partition(_)));
}

#[test]
fn same_seed_same_run_byte_for_byte() {
    let line = "seed=7 members=5 stack=TAG loss=0.2 dup=0.1 reorder=0.2 delay_us=50..3000 casts=40 size=1..5000 interval_us=300 quiet_ms=20 \
                faults=partition(0.1|2.3.4)@5ms,heal@9ms,crash(3)@12ms";
    let a = run(line);
    let b = run(line);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.net, b.net);
    for (x, y) in a.members.iter().zip(&b.members) {
        assert_eq!(x.log, y.log);
        assert_eq!(x.casts, y.casts);
        assert_eq!(x.stats, y.stats);
    }
    let c = run(&line.replace("seed=7", "seed=8"));
    assert_ne!(a.digest, c.digest);
}

#[test]
fn backpressure_is_retried_and_no_cast_is_dropped() {
    let o = run("seed=9 members=3 stack=WINDOW:TAG casts=20 size=1..100 interval_us=100 quiet_ms=10");
    for m in &o.members {
        assert!(m.backpressured > 0, "{} never saw backpressure", m.name);
        assert_eq!(m.casts.len(), 20);
        assert!(m.casts.windows(2).all(|w| w[1].at >= w[0].at + Duration::from_millis(2)));
    }
    check::run(&o, &[check::INTEGRITY, check::NO_DUPLICATION, check::NO_CREATION, check::COMPLETENESS]).unwrap();
}

#[test]
fn failures_print_a_replay_line_that_parses_back() {
    let s = scenario("seed=10 members=2 stack=TAG loss=0.5 casts=20 size=1..10 quiet_ms=1");
    let e = sim::run_checked(&registry(), &s, check::RELIABLE_FIFO).unwrap_err();
    let first = e.lines().next().unwrap();
    let line = first.strip_prefix("STRATA_SIM_REPLAY='").and_then(|l| l.strip_suffix('\'')).unwrap();
    assert_eq!(line.parse::<Scenario>().unwrap(), s);
    assert!(e.contains("completeness violated"), "{e}");
    // A stack that cannot be built is a failure with the same replay line, not a panic.
    let bad = Scenario { stack: "NOPE".into(), ..s.clone() };
    let e = sim::run_checked(&registry(), &bad, check::SAFETY).unwrap_err();
    assert!(e.contains("unknown layer `NOPE`"), "{e}");
    assert_eq!(sim::replay_line(&Scenario { stack: "A(p=it's)".into(), ..s }).matches("'\\''").count(), 1);
}

#[test]
fn a_retransmitting_layer_completes_under_loss_duplication_and_reordering() {
    let o = run("seed=12 members=5 stack=REL loss=0.3 dup=0.1 reorder=0.2 delay_us=50..2000 casts=30 size=1..20000 interval_us=300 quiet_ms=500");
    assert!(o.net.lost > 100 && o.net.duplicated > 10 && o.net.delayed > 10, "{}", o.summary());
    check::run(&o, check::RELIABLE_FIFO).unwrap_or_else(|e| panic!("{e}\n{}", o.summary()));
    for m in &o.members {
        assert_eq!(m.counter("REL", "unacked"), Some(0), "{}", m.name);
        assert_eq!(m.counter("REL", "held"), Some(0), "{}", m.name);
    }
    // The same layer with too short a quiet period leaves work undone, and completeness says so.
    let cut = run("seed=12 members=5 stack=REL loss=0.3 dup=0.1 reorder=0.2 delay_us=50..2000 casts=30 size=1..20000 interval_us=300 quiet_ms=0");
    assert!(check::run(&cut, &[check::COMPLETENESS]).unwrap_err().contains("never delivered"));
}

/// Which members delivered each cast of member `from` accepted in `window`
/// (as a sorted list of member indices per cast), for the casts there are.
fn receivers(o: &Outcome, from: usize, window: std::ops::Range<u64>) -> Vec<Vec<usize>> {
    let at = |ms: u64| Instant::ZERO + Duration::from_millis(ms);
    o.members[from]
        .casts
        .iter()
        .filter(|c| c.at >= at(window.start) && c.at < at(window.end))
        .map(|c| (0..o.members.len()).filter(|&to| to != from && delivered_casts(o, to, from).iter().any(|(k, _)| *k == c.k)).collect::<Vec<usize>>())
        .collect()
}

#[test]
fn a_tree_cast_reaches_every_member_once_crossing_each_edge_once() {
    for members in 1..=8u16 {
        for k in 1..=3usize {
            let casts = 6u64;
            let o =
                run(&format!("seed={members}{k} members={members} stack=TAG delay_us=100..900 casts={casts} size=1..500 interval_us=700 quiet_ms=50 tree={k}"));
            check::run(&o, &[check::INTEGRITY, check::NO_DUPLICATION, check::NO_CREATION, check::COMPLETENESS])
                .unwrap_or_else(|e| panic!("n={members} k={k}: {e}"));
            let n = usize::from(members);
            // Each cast crosses each of the n-1 edges once; every hop but
            // the sender's own is a forward.
            let degrees: usize = (0..n).map(|r| strata_transport::tree::neighbours(r, n, k).count()).sum();
            assert_eq!(o.net.copies, casts * (n * (n - 1)) as u64, "n={members} k={k}: {}", o.summary());
            assert_eq!(o.net.forwarded, casts * (n * (n - 1) - degrees) as u64, "n={members} k={k}: {}", o.summary());
            assert_eq!((o.net.arrived, o.net.not_forwarded, o.net.suspicions), (o.net.copies, 0, 0), "n={members} k={k}");
        }
    }
    // The same run without the tree: the same deliveries, no forwarding.
    let direct = run("seed=1 members=7 stack=TAG delay_us=100..900 casts=6 size=1..500 interval_us=700 quiet_ms=50");
    assert_eq!((direct.net.copies, direct.net.forwarded), (7 * 6 * 6, 0));
}

#[test]
fn a_tree_cast_under_another_view_tag_is_delivered_but_not_forwarded() {
    // Members 0-1-2-3 form a chain (tree=1); member 1 alone routes by the
    // view [0, 1, 2] (chain 0-1-2), so its tag differs from the others'.
    let o = run("seed=3 members=4 stack=TAG:SPLITVIEW delay_us=100..900 casts=10 size=1..100 interval_us=1000 quiet_ms=50 tree=1");
    let got = |to: usize, from: usize| delivered_casts(&o, to, from).len();
    let matrix: Vec<Vec<usize>> = (0..4).map(|to| (0..4).map(|from| if to == from { 0 } else { got(to, from) }).collect()).collect();
    assert_eq!(
        matrix,
        vec![
            vec![0, 10, 0, 0],   // 0 hears only 1, its neighbour in 1's tree: 1 forwards nothing from the others
            vec![10, 0, 10, 10], // 1 hears everyone (3 through 2, whose tag is 3's), forwards nobody
            vec![0, 10, 0, 10],  // 2 hears 1 (mismatch: not forwarded on to 3) and 3
            vec![0, 0, 10, 0],   // 3 hears only 2
        ]
    );
    // Mismatches: 0's, 2's and 3's casts at 1; 1's casts at 0 and at 2.
    assert_eq!(o.net.not_forwarded, 5 * 10, "{}", o.summary());
    // Forwards: 2 passes 3's casts on to 1.
    assert_eq!(o.net.forwarded, 10, "{}", o.summary());
    assert_eq!(o.net.copies, (1 + 2 + 2 + 2) * 10, "{}", o.summary());
}

#[test]
fn a_crashed_inner_member_is_routed_around_once_its_neighbours_are_told() {
    // The binary tree of 7: 0 -> {1, 2}, 1 -> {3, 4}, 2 -> {5, 6}. Member 1
    // crashes at 20 ms; its parent and children are told at 21 ms and do
    // its forwarding from then on (0 <-> 3, 0 <-> 4, 3 <-> 4); at 40 ms
    // every member's view drops it, and the new tree (0 -> {2, 3},
    // 2 -> {4, 5}, 3 -> {6}) reaches everyone without going around.
    let o = run("seed=4 members=7 stack=TAG:EXCLUDE delay_us=1000..1000 casts=70 size=1..100 interval_us=1000 quiet_ms=50 tree=2 faults=crash(1)@20ms");
    check::run(&o, check::SAFETY).unwrap();
    let others = |from: usize| -> Vec<usize> { [0, 2, 3, 4, 5, 6].into_iter().filter(|m| *m != from).collect() };
    // Until the notice arrives the subtree is cut off: nobody hears member 3 (its only edge was to 1).
    assert!(receivers(&o, 3, 20..21).iter().all(Vec::is_empty), "{:?}", receivers(&o, 3, 20..21));
    // Then everyone hears everyone, before the view changes and after.
    for window in [21..EXCLUDE_AT_MS - 2, EXCLUDE_AT_MS..1000] {
        for from in [0, 2, 3, 4, 5, 6] {
            let heard = receivers(&o, from, window.clone());
            assert!(heard.len() >= 15 && heard.iter().all(|r| *r == others(from)), "{from} in {window:?}: {heard:?}");
        }
    }
    // Each cast while 1 is in the views and marked goes around it once per
    // member that routes it: 0 -> 3, 4 (as from 1), 3 -> 0, 4 and 4 -> 0, 3.
    assert!(o.net.routed_around > 0 && o.net.to_crashed > 0 && o.net.unreachable == 3, "{}", o.summary());
    // Exactly once each: completeness over the survivors' casts from the notice on.
    check::run(&o, &[check::NO_DUPLICATION]).unwrap();
}

#[test]
fn a_refused_connect_is_routed_around_at_once() {
    // A chain (tree=1): 0 - 1 - 2 - 3 - 4, no membership layer, so the
    // crashed members stay in every view. Member 3 crashes at 10 ms (2 and
    // 4 are told), member 2 at 20 ms (1 and 3... only 1 is running, told
    // at 21 ms). Member 1 then routes around 2 to 3, which refuses the
    // connect (1 never had one to it): 1 marks 3 at once and goes on to 4.
    let o = run("seed=5 members=5 stack=TAG delay_us=1000..1000 casts=60 size=1..100 interval_us=1000 quiet_ms=50 tree=1 faults=crash(3)@10ms,crash(2)@20ms");
    check::run(&o, check::SAFETY).unwrap();
    // Member 2, told of 3 at 11 ms, routes around it to 4.
    assert!(receivers(&o, 0, 12..18).iter().all(|r| *r == [1, 2, 4]), "{:?}", receivers(&o, 0, 12..18));
    // Until member 1 is told of 2, what it forwards goes into the broken connection.
    assert!(receivers(&o, 0, 19..20).iter().all(|r| *r == [1]), "{:?}", receivers(&o, 0, 19..20));
    // From the notice on, 0 and 1 reach 4 and 4 reaches them.
    assert!(receivers(&o, 0, 20..60).iter().all(|r| *r == [1, 4]), "{:?}", receivers(&o, 0, 21..60));
    assert!(receivers(&o, 4, 21..60).iter().all(|r| *r == [0, 1]), "{:?}", receivers(&o, 4, 21..60));
    let suspects = |i: usize| -> Vec<String> {
        o.members[i].log.iter().filter_map(|e| if let sim::Entry::Other { what, .. } = e { Some(what.clone()) } else { None }).collect()
    };
    // Member 1 suspects 2 (told) and 3 (refused), each once.
    let s1 = suspects(1);
    assert!(s1.len() == 2 && s1[0].contains(&sim::member(2).to_string()) && s1[1].contains(&sim::member(3).to_string()), "{s1:?}");
}

#[test]
fn a_partitioned_inner_member_is_routed_around_after_the_stall_and_reconnected_after_the_heal() {
    // The binary tree of 7; member 1 is cut off from 10 ms to 60 ms.
    // Copies over its edges are cut; 5 ms (stall_ms) after the first cut
    // copy on an edge its sender marks the other end, so 0, 3 and 4 route
    // around 1. A mark older than 20 ms (retry_ms) is tried again: cut
    // before the heal (renewed), through after it (cleared).
    let line = "seed=6 members=7 stack=TAG delay_us=1000..1000 casts=100 size=1..100 interval_us=1000 quiet_ms=50 tree=2 \
                faults=partition(1|0.2.3.4.5.6)@10ms,heal@60ms stall_ms=5 retry_ms=20";
    let o = run(line);
    check::run(&o, check::SAFETY).unwrap();
    let without = |from: usize, gone: &[usize]| -> Vec<usize> { (0..7).filter(|m| *m != from && !gone.contains(m)).collect() };
    // Stalled: 3's only edge is to 1, cut.
    assert!(receivers(&o, 3, 11..14).iter().all(Vec::is_empty), "{:?}", receivers(&o, 3, 11..14));
    // Routed around: everyone but 1 hears everyone but 1.
    for from in [0, 2, 3, 4, 5, 6] {
        let heard = receivers(&o, from, 17..59);
        assert!(heard.len() >= 40 && heard.iter().all(|r| *r == without(from, &[1])), "{from}: {heard:?}");
    }
    // Healed and reconnected: everyone hears everyone.
    for from in 0..7 {
        let heard = receivers(&o, from, 85..100);
        assert!(heard.len() >= 10 && heard.iter().all(|r| *r == without(from, &[])), "{from}: {heard:?}");
    }
    assert!(o.net.routed_around > 0 && o.net.unreachable >= 3 && o.net.reconnected >= 3 && o.net.suspicions == o.net.unreachable, "{}", o.summary());
    // Without routing around (the stall outlasts the partition), 3 and 4
    // hear nothing from the other side, and nothing is marked.
    let slow = run(&line.replace("stall_ms=5", "stall_ms=1000"));
    assert!(receivers(&slow, 0, 17..59).iter().all(|r| *r == [2, 5, 6]), "{:?}", receivers(&slow, 0, 17..59));
    assert_eq!((slow.net.unreachable, slow.net.routed_around, slow.net.suspicions), (0, 0, 0));
    // A partition healed within the stall marks nothing either.
    let brief = run(&line.replace("heal@60ms", "heal@13ms"));
    assert_eq!((brief.net.unreachable, brief.net.routed_around), (0, 0), "{}", brief.summary());
}

#[test]
fn a_crash_is_reported_to_its_tree_neighbours_one_delay_later() {
    let o = run("seed=4 members=7 stack=TAG:EXCLUDE delay_us=1000..1000 casts=70 size=1..100 interval_us=1000 quiet_ms=50 tree=2 faults=crash(1)@20ms");
    let suspected = |i: usize| -> Vec<Instant> {
        o.members[i]
            .log
            .iter()
            .filter(|e| matches!(e, sim::Entry::Other { what, .. } if what.contains("Suspect") && what.contains(&sim::member(1).to_string())))
            .map(sim::Entry::at)
            .collect()
    };
    // Member 1's parent and children, and only they, are told, once, 1 ms after the crash.
    for i in [0, 3, 4] {
        assert_eq!(suspected(i), vec![Instant::ZERO + Duration::from_millis(21)], "member {i}");
    }
    for i in [2, 5, 6] {
        assert!(suspected(i).is_empty(), "member {i} had no edge to member 1");
    }
    assert_eq!(o.net.suspicions, 3);
    // Without the tree (UDP), nobody is told.
    let direct = run("seed=4 members=7 stack=TAG:EXCLUDE delay_us=1000..1000 casts=70 size=1..100 interval_us=1000 quiet_ms=50 faults=crash(1)@20ms");
    assert_eq!(direct.net.suspicions, 0);
    assert!((0..7).all(|i| direct.members[i].log.iter().all(|e| !matches!(e, sim::Entry::Other { .. }))));
}

#[test]
fn fifo_links_keep_each_senders_order_over_the_tree_and_direct() {
    for tree in ["", " tree=2"] {
        let line = format!("seed=2 members=6 stack=TAG delay_us=300..300 reorder=0.5 casts=30 size=1..100 interval_us=50 quiet_ms=10{tree}");
        let reordered = run(&line);
        assert!(reordered.net.delayed > 0);
        assert!(check::run(&reordered, &[check::FIFO]).is_err(), "{line}");
        let fifo = run(&format!("{line} link_fifo=true"));
        assert!(fifo.net.delayed > 0);
        check::run(&fifo, &[check::INTEGRITY, check::NO_DUPLICATION, check::FIFO, check::COMPLETENESS]).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

#[test]
fn tree_runs_replay_byte_for_byte() {
    let line = "seed=7 members=7 stack=TAG loss=0.2 dup=0.1 reorder=0.2 delay_us=50..3000 casts=40 size=1..5000 interval_us=300 quiet_ms=20 \
                faults=partition(0.1|2.3.4.5.6)@5ms,heal@9ms,crash(1)@12ms tree=2 link_fifo=true";
    let (a, b) = (run(line), run(line));
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.net, b.net);
    assert!(a.net.forwarded > 0 && a.net.suspicions > 0 && a.net.cut > 0, "{}", a.summary());
    for (x, y) in a.members.iter().zip(&b.members) {
        assert_eq!(x.log, y.log);
    }
    assert_ne!(a.digest, run(&line.replace(" tree=2", "")).digest);
}
