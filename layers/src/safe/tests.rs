//! SAFE over real stacks (`FRAG:NAK:VSYNC:SAFE`) on a tiny lossless network
//! with a virtual clock, plus decoder and harness tests. The simulator's
//! property tests (transport/tests/sim_safe.rs) add loss, random faults and
//! many more runs.

use super::*;
use crate::builtin;
use quickcheck::quickcheck;
use std::net::{IpAddr, Ipv4Addr};
use strata_stack::harness::net::LoopNet;
use strata_stack::harness::LayerHarness;
use strata_stack::{AppEvent, CrashTail, Delivery, Instant, MemStorage, Stack, StackConfig};

const LOG_DIR: &str = "/safe";

/// Members on one lossless, zero-latency network (`LoopNet`). Each has a
/// disk that outlives its crashes.
struct Net {
    spec: String,
    net: LoopNet,
    incarnations: Vec<u64>,
    disks: Vec<MemStorage>,
    /// Per member: the application events of its earlier incarnations.
    history: Vec<Vec<Vec<AppEvent>>>,
}

fn addr(i: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i as u8 + 1)), 7000)
}

impl Net {
    fn new(spec: &str, n: usize) -> Net {
        Net {
            spec: spec.into(),
            net: LoopNet::new(),
            incarnations: vec![0; n],
            disks: (0..n).map(|_| MemStorage::new()).collect(),
            history: vec![Vec::new(); n],
        }
    }

    fn stack(&self, i: usize) -> Stack {
        let local = MemberId::new(addr(i), self.incarnations[i]);
        let seeds = (0..self.incarnations.len()).filter(|j| *j != i).map(|j| MemberId::new(addr(j), 0)).collect();
        let mut cfg = StackConfig::new("g", local, seeds);
        cfg.seed = i as u64;
        cfg.storage = Arc::new(self.disks[i].clone());
        Stack::new(&builtin(), &self.spec, cfg, self.net.now()).expect("stack builds")
    }

    fn start(&mut self, i: usize) {
        self.incarnations[i] += 1;
        let stack = self.stack(i);
        if i < self.net.len() {
            // Restarted after `crash`, which filed what it saw.
            self.net.set(i, Some(stack));
        } else {
            assert_eq!(self.net.push(stack), i, "members start in order the first time");
        }
    }

    fn crash(&mut self, i: usize, tail: CrashTail) {
        let seen = self.net.set(i, None);
        self.history[i].push(seen);
        self.disks[i].crash(tail);
    }

    fn id(&self, i: usize) -> MemberId {
        MemberId::new(addr(i), self.incarnations[i])
    }

    fn run_for(&mut self, d: Duration) {
        self.net.run_for(d);
    }

    fn set_auto_done(&mut self, on: bool) {
        self.net.auto_done = on;
    }

    /// What member `i`'s application saw in incarnation `n` (from 0).
    fn events(&self, i: usize, n: usize) -> &[AppEvent] {
        self.history[i].get(n).map_or_else(|| self.net.events(i), |e| e.as_slice())
    }

    fn cast(&mut self, i: usize, body: &str) {
        let now = self.net.now();
        self.net.stack_mut(i).expect("alive").cast(now, Bytes::copy_from_slice(body.as_bytes())).expect("cast accepted");
    }

    /// Durable deliveries of member `i`'s current incarnation: (tag, body, replayed).
    fn durable(&self, i: usize) -> Vec<(SafeTag, String, bool)> {
        self.durable_of(i, self.history[i].len())
    }

    fn durable_of(&self, i: usize, incarnation: usize) -> Vec<(SafeTag, String, bool)> {
        self.events(i, incarnation)
            .iter()
            .filter_map(|e| match e {
                AppEvent::Deliver { kind: Delivery::Safe { tag, replayed }, body, .. } => Some((*tag, String::from_utf8_lossy(body).into_owned(), *replayed)),
                _ => None,
            })
            .collect()
    }

    fn replays(&self, i: usize) -> Vec<Vec<String>> {
        self.net
            .events(i)
            .iter()
            .filter_map(|e| match e {
                AppEvent::Replay { messages } => Some(messages.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect()),
                _ => None,
            })
            .collect()
    }

    fn view_len(&self, i: usize) -> usize {
        self.net.stack(i).map_or(0, |s| s.view().len())
    }

    fn counter(&self, i: usize, name: &str) -> u64 {
        let stats = self.net.stack(i).expect("alive").stats();
        stats.iter().find(|l| l.name == "SAFE").and_then(|l| l.counters.get(name)).unwrap_or(0)
    }

    fn problems(&self, i: usize) -> Vec<String> {
        self.net.events(i).iter().filter_map(|e| if let AppEvent::Problem(p) = e { Some(p.what.clone()) } else { None }).collect()
    }

    /// Starts members one after another and waits for one view of all.
    fn form(&mut self) {
        for i in 0..self.incarnations.len() {
            self.start(i);
            self.run_for(Duration::from_millis(50));
        }
        for _ in 0..100 {
            let n = self.incarnations.len();
            if (0..n).all(|i| self.view_len(i) == n && self.counter(i, "live") == 1) {
                return;
            }
            self.run_for(Duration::from_millis(100));
        }
        panic!("no view of all {} members formed", self.incarnations.len());
    }
}

fn bodies(d: &[(SafeTag, String, bool)]) -> Vec<String> {
    d.iter().map(|x| x.1.clone()).collect()
}

#[test]
fn three_members_deliver_every_cast_in_one_order_with_tags() {
    let mut net = Net::new("FRAG:NAK:VSYNC:SAFE", 3);
    net.form();
    for k in 0..20 {
        for i in 0..3 {
            net.cast(i, &format!("{i}:{k}"));
        }
        net.run_for(Duration::from_micros(300));
    }
    net.run_for(Duration::from_secs(1));
    let first = net.durable(0);
    assert_eq!(first.len(), 60, "every cast delivered once");
    for i in 1..3 {
        assert_eq!(bodies(&net.durable(i)), bodies(&first), "member {i} delivers the same sequence");
        assert_eq!(net.durable(i).iter().map(|d| d.0).collect::<Vec<_>>(), first.iter().map(|d| d.0).collect::<Vec<_>>(), "same tags");
    }
    for i in 0..3 {
        let ids: Vec<u64> = first.iter().filter(|d| d.0.sender == net.id(i)).map(|d| d.0.id).collect();
        assert_eq!(ids, (1..=20).collect::<Vec<_>>(), "FIFO per sender, ids from 1");
    }
    assert!(first.iter().all(|d| !d.2), "nothing is a replay");
    // Everyone called done: the leader garbage-collected everything.
    assert_eq!(net.counter(0, "gc_slot"), 60);
    assert_eq!(net.counter(1, "slots"), 0);
}

#[test]
fn leader_and_a_majority_of_acceptors_crash_mid_stream_and_nothing_delivered_is_lost() {
    let mut net = Net::new("FRAG:NAK:VSYNC:SAFE(acceptors=3)", 5);
    net.form();
    for k in 0..30 {
        for i in 0..5 {
            if net.net.stack(i).is_some() {
                net.cast(i, &format!("{i}:{k}"));
            }
        }
        if k == 15 {
            // Ranks 0 and 1 (leader and a second acceptor) die together.
            net.crash(0, CrashTail::Lost);
            net.crash(1, CrashTail::Lost);
        }
        net.run_for(Duration::from_micros(200));
    }
    net.run_for(Duration::from_secs(5));
    let survivors = [2, 3, 4];
    for &i in &survivors {
        assert_eq!(net.view_len(i), 3, "member {i} is in the survivors' view");
    }
    let seq = bodies(&net.durable(2));
    for &i in &survivors[1..] {
        assert_eq!(bodies(&net.durable(i)), seq, "survivor {i} agrees");
    }
    for dead in [0, 1] {
        let theirs = bodies(&net.durable_of(dead, 0));
        assert!(!theirs.is_empty());
        assert_eq!(&seq[..theirs.len()], &theirs[..], "member {dead}'s deliveries are a prefix of the survivors'");
    }
    for &i in &survivors {
        for k in 0..30 {
            assert!(seq.contains(&format!("{i}:{k}")), "survivor {i}'s cast {k} delivered");
        }
    }
}

#[test]
fn after_a_total_failure_the_restarted_group_replays_what_was_not_finished() {
    let spec = format!("FRAG:NAK:VSYNC:SAFE(log_dir={LOG_DIR})");
    let mut net = Net::new(&spec, 3);
    net.form();
    for i in 0..3 {
        assert_eq!(net.replays(i), vec![Vec::<String>::new()], "one empty replay on a fresh log");
    }
    for k in 0..10 {
        net.cast(k % 3, &format!("early{k}"));
    }
    net.run_for(Duration::from_secs(1));
    // From now on member 2's application never finishes anything.
    net.set_auto_done(false);
    for k in 0..10 {
        net.cast(k % 3, &format!("late{k}"));
    }
    net.run_for(Duration::from_secs(1));
    let before = bodies(&net.durable(0));
    assert_eq!(before.len(), 20);
    for i in 0..3 {
        net.crash(i, CrashTail::Torn(7));
    }
    net.set_auto_done(true);
    for i in 0..3 {
        net.start(i);
        net.run_for(Duration::from_millis(20));
    }
    net.run_for(Duration::from_secs(3));
    let replay = net.replays(0);
    assert_eq!(replay.len(), 1, "exactly one replay");
    let list = &replay[0];
    let late: Vec<String> = before.iter().filter(|b| b.starts_with("late")).cloned().collect();
    assert_eq!(list, &late, "the unfinished messages, in the original order, and nothing finished");
    for i in 0..3 {
        assert_eq!(&net.replays(i), &replay, "member {i} replays the same");
        let again = net.durable(i);
        assert_eq!(bodies(&again), late);
        assert!(again.iter().all(|d| d.2), "marked replayed");
    }
    let old_tags: Vec<SafeTag> = net.durable_of(0, 0).iter().skip(10).map(|d| d.0).collect();
    assert_eq!(net.durable(1).iter().map(|d| d.0).collect::<Vec<_>>(), old_tags, "original tags");
    // The group goes on.
    net.cast(1, "new");
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.durable(2).last().map(|d| d.1.as_str()), Some("new"));
}

#[test]
fn recovery_waits_for_a_majority_of_the_acceptors() {
    let spec = format!("FRAG:NAK:VSYNC:SAFE(log_dir={LOG_DIR},recover_ms=100)");
    let mut net = Net::new(&spec, 3);
    net.form();
    net.set_auto_done(false);
    net.cast(0, "m");
    net.run_for(Duration::from_secs(1));
    for i in 0..3 {
        net.crash(i, CrashTail::Lost);
    }
    net.start(2);
    net.run_for(Duration::from_secs(3));
    assert!(net.replays(2).is_empty(), "one acceptor of three cannot recover");
    assert!(net.problems(2).iter().any(|p| p.contains("majority of the acceptors")), "{:?}", net.problems(2));
    net.start(1);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.replays(2), vec![vec!["m".to_string()]]);
    assert_eq!(net.replays(1), vec![vec!["m".to_string()]]);
    // The third comes back later and joins the live group: its log is superseded.
    net.start(0);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.replays(0), vec![Vec::<String>::new()]);
}

#[test]
fn a_corrupt_log_is_reported_not_applied_and_not_counted() {
    let spec = format!("FRAG:NAK:VSYNC:SAFE(log_dir={LOG_DIR})");
    let mut net = Net::new(&spec, 3);
    net.form();
    net.set_auto_done(false);
    for k in 0..5 {
        net.cast(k % 3, &format!("m{k}"));
    }
    net.run_for(Duration::from_secs(1));
    let before = bodies(&net.durable(0));
    for i in 0..3 {
        net.crash(i, CrashTail::Lost);
    }
    let name = log_file_name("g");
    let mut bytes = net.disks[0].durable(LOG_DIR, &name).expect("log written");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    net.disks[0].set(LOG_DIR, &name, bytes);
    // Alone with its damaged log, member 0 cannot know what it lost.
    net.start(0);
    net.run_for(Duration::from_secs(2));
    assert!(net.problems(0).iter().any(|p| p.contains("corrupt")), "{:?}", net.problems(0));
    assert_eq!(net.counter(0, "log_damage"), 1);
    assert!(net.replays(0).is_empty(), "a damaged log does not count towards the majority");
    // With the two intact logs the group recovers everything.
    net.start(1);
    net.start(2);
    net.run_for(Duration::from_secs(3));
    for i in 0..3 {
        assert_eq!(net.replays(i), vec![before.clone()], "member {i}");
    }
}

#[test]
fn fifo_casts_through_safe_are_plain_and_keep_their_senders_order() {
    let mut net = Net::new("FRAG:NAK:VSYNC:SAFE", 2);
    net.form();
    let now = net.net.now();
    let s = net.net.stack_mut(1).unwrap();
    s.cast(now, Bytes::from_static(b"safe")).unwrap();
    s.cast_ordered(now, Bytes::from_static(b"fifo"), Order::Fifo).unwrap();
    net.run_for(Duration::from_secs(1));
    for i in 0..2 {
        let seen: Vec<(String, bool)> = net
            .net
            .events(i)
            .iter()
            .filter_map(|e| match e {
                AppEvent::Deliver { kind, body, .. } => Some((String::from_utf8_lossy(body).into_owned(), matches!(kind, Delivery::Safe { .. }))),
                _ => None,
            })
            .collect();
        assert_eq!(seen, vec![("safe".into(), true), ("fifo".into(), false)], "member {i}");
    }
}

#[test]
fn a_log_that_cannot_be_opened_fails_the_build_naming_the_file() {
    let file = std::env::temp_dir().join(format!("strata-safe-notadir-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let spec = format!("FRAG:NAK:VSYNC:SAFE(log_dir={}/sub)", file.display());
    let cfg = StackConfig::new("g", MemberId::sim(0), vec![]);
    let err = Stack::new(&builtin(), &spec, cfg, Instant::ZERO).expect_err("cannot create a directory under a file");
    let text = err.to_string();
    assert!(text.starts_with("SAFE: cannot open the log") && text.contains("sub/g.safelog"), "{text}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn done_without_safe_is_refused() {
    let cfg = StackConfig::new("g", MemberId::sim(0), vec![]);
    let mut s = Stack::new(&builtin(), "FRAG:NAK:VSYNC:TOTAL", cfg, Instant::ZERO).unwrap();
    let tag = SafeTag { sender: MemberId::sim(0), view: 1, id: 1 };
    assert_eq!(s.done(Instant::ZERO, tag), Err(strata_stack::Refused::DoneUnavailable));
}

fn harness() -> LayerHarness {
    let p = Params::defaults(SAFE.params).unwrap();
    let view = View::new(ViewId { counter: 3, creator: MemberId::sim(0) }, vec![MemberId::sim(0), MemberId::sim(1)]).unwrap();
    let mut h = LayerHarness::boxed("SAFE", (SAFE.build)(&p).unwrap(), MemberId::sim(1), view.clone(), 65_000);
    h.up(Up::View(view));
    h
}

quickcheck! {
    fn hostile_casts_never_panic(data: Vec<u8>, from_leader: bool) -> bool {
        let mut h = harness();
        let from = MemberId::sim(u16::from(!from_leader));
        h.up(Up::Cast { from, msg: Msg::new(Bytes::from(data.clone())) });
        h.up(Up::Send { from, msg: Msg::new(Bytes::from(data.clone())) });
        h.up(Up::StateBegin);
        h.up(Up::StateChunk(Bytes::from(data)));
        true
    }
}

#[test]
fn proposals_from_a_non_leader_or_of_another_ballot_are_dropped() {
    let mut h = harness();
    let mut propose = |from: u16, ballot: u64| {
        let mut m = Msg::empty();
        let refs: Refs = [Ref { rank: 0, view: 3, id: 1 }].into_iter().collect();
        m.push_with(|w| Header::Propose { ballot, first: 1, refs }.encode(w));
        h.up(Up::Cast { from: MemberId::sim(from), msg: m })
    };
    assert!(propose(1, 3).is_empty());
    assert!(propose(0, 2).is_empty());
    assert_eq!(h.dropped("proposal_not_leader"), 1);
    assert_eq!(h.dropped("stale"), 1);
}

#[test]
fn casts_held_while_recovering_close_the_send_window_at_max_pending() {
    let mut p = Params::defaults(SAFE.params).unwrap();
    p.set("max_pending", strata_stack::ParamValue::U64(4));
    let view = View::new(ViewId { counter: 3, creator: MemberId::sim(0) }, vec![MemberId::sim(0), MemberId::sim(1)]).unwrap();
    let mut h = LayerHarness::boxed("SAFE", (SAFE.build)(&p).unwrap(), MemberId::sim(1), view, 65_000);
    for k in 0..4 {
        assert!(!h.backpressure(), "open with {k} held");
        assert!(h.down(Down::Cast(Msg::new(Bytes::from_static(b"m")))).is_empty(), "held in the outbox: not live yet");
    }
    assert!(h.backpressure(), "closed at max_pending");
    assert_eq!(h.stats().get("pending"), Some(4));
}

#[test]
fn a_newview_announcing_more_entries_than_allowed_is_dropped() {
    let mut h = harness();
    let mut m = Msg::empty();
    m.push_with(|w| Header::NewView { ballot: 3, count: MAX_ANNOUNCED + 1, replay: false, base: 0 }.encode(w));
    assert!(h.up(Up::Cast { from: MemberId::sim(0), msg: m }).is_empty());
    assert_eq!(h.dropped("bad_newview"), 1);
}
