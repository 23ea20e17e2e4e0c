//! Tests of the simulator itself, with trivial test layers (not FRAG/NAK):
//! a lossless network delivers everything, crashes stop members, partitions
//! cut traffic until healed, a seed replays the same run, backpressure is
//! retried, and each checker catches the violation it exists for.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use strata_stack::harness::Tag;
use strata_stack::{Context, Down, Instant, Layer, LayerDescriptor, MemberId, Msg, Props, Registry, Up};
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
