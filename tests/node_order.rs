//! `strata node` with the ordering stacks over UDP on loopback: three nodes
//! cast concurrently, and their logs are checked on their own
//! (tests/node_support: per-sender FIFO continuing any loaded state, no
//! loss, no duplicate, intact payloads, views), against each other (agreed
//! views, virtual synchrony) and, read into the simulator's `Outcome`
//! (tests/node_support/order.rs), by the simulator's order checks:
//!
//! * `FRAG:NAK:CAUSAL:VSYNC:TOTAL` and `FRAG:NAK:VSYNC:TOKEN`: total order,
//!   the same sequence at every node in every view all three installed, and
//!   causal order where CAUSAL is in the stack;
//! * `FRAG:NAK:CAUSAL:VSYNC` and `FRAG:NAK:CAUSAL` (fixed membership):
//!   causal order. A node's log has what that needs: its `send` lines sit
//!   among its `deliver` lines, so what it delivered before each cast is
//!   known (docs/strata-node.md).
//!
//! Each test takes a few seconds; tests wait for processes to exit, never
//! for a fixed time.

mod node_support;

use node_support::order::{outcome, same_sequence_in_shared_views};
use node_support::vsync::{check_node, check_same_view_sequences, check_views_agree, check_virtual_synchrony, finish, Node, NodeLog};
use node_support::{check_log, free_addrs, read_log, scratch_dir, Run};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use strata::transport::sim::{check, Outcome};

/// Casts per node, their size and rate: two seconds of concurrent casting.
const CASTS: u64 = 200;
const SIZE: usize = 1000;
const RATE: &str = "100";

/// Every node's stderr, for a failure message.
fn stderrs(outputs: &[(String, std::process::Output)]) -> String {
    outputs.iter().map(|(a, o)| format!("{a} ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())).collect::<Vec<_>>().join("\n")
}

/// Fails with `what`, the logs' directory (kept for a post-mortem) and the nodes' stderr.
fn fail(dir: &Path, outputs: &[(String, std::process::Output)], what: String) -> ! {
    panic!("{what}\nlogs in {}\n{}", dir.display(), stderrs(outputs));
}

/// What a run of three nodes left: their logs, read and checked one by one.
struct Three {
    name: String,
    stack: &'static str,
    dir: std::path::PathBuf,
    outputs: Vec<(String, std::process::Output)>,
    addrs: Vec<String>,
    lines: Vec<Vec<Value>>,
}

impl Three {
    fn fail(&self, what: String) -> ! {
        fail(&self.dir, &self.outputs, format!("{} ({}): {what}", self.name, self.stack))
    }

    /// The logs as the simulator's `Outcome`.
    fn outcome(&self) -> Outcome {
        let nodes: Vec<(&str, &[Value], bool)> = self.addrs.iter().zip(&self.lines).map(|(a, l)| (a.as_str(), l.as_slice(), false)).collect();
        outcome(self.stack, CASTS, SIZE, &nodes).unwrap_or_else(|e| self.fail(e))
    }

    /// Runs `checks` of the simulator on the logs.
    fn check(&self, o: &Outcome, checks: &[check::Check]) {
        if let Err(e) = check::run(o, checks) {
            self.fail(e);
        }
    }

    /// Every node knows (delivered, or loaded in a state) every cast of every node.
    fn check_complete(&self, o: &Outcome) {
        let all: BTreeSet<(String, u64)> = self.addrs.iter().flat_map(|a| (0..CASTS).map(move |k| (a.clone(), k))).collect();
        for m in &o.members {
            let known = m.knowledge();
            let missing: Vec<_> = all.difference(&known).take(5).collect();
            if !missing.is_empty() {
                self.fail(format!("{} never knew of {} casts, e.g. {missing:?}", m.name, all.difference(&known).count()));
            }
        }
    }

    /// Casts that followed a delivery from another node made since the
    /// node's previous cast: each adds a fresh causal dependency across
    /// nodes, the material the causal check works on. Requires them to be
    /// at least a quarter of the casts.
    fn check_causality_material(&self) {
        let mut fresh = 0;
        for (me, lines) in self.addrs.iter().zip(&self.lines) {
            let mut news = false;
            for l in lines {
                match l["ev"].as_str() {
                    Some("deliver") if l["from"].as_str() != Some(me) => news = true,
                    Some("send") => fresh += usize::from(std::mem::replace(&mut news, false)),
                    _ => {}
                }
            }
        }
        let all = 3 * CASTS as usize;
        if fresh * 4 < all {
            self.fail(format!("only {fresh} of {all} casts came after news from another node: too little causality to check"));
        }
        eprintln!("{}: {fresh} of {all} casts depend on a delivery from another node made since the previous cast", self.name);
    }

    fn done(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts three nodes of `stack` together, each naming the others as
/// peers, waits for all to exit, and checks each log on its own: with a
/// membership layer by `check_node` and the logs against each other,
/// without one by `check_log`. Every node must end `done`.
fn run_three(name: &str, stack: &'static str) -> Three {
    let started = Instant::now();
    let dir = scratch_dir(name);
    let addrs = free_addrs(3);
    let extra = ["--casts", &CASTS.to_string(), "--size", &SIZE.to_string(), "--rate", RATE, "--linger", "10"].map(String::from);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let peers: Vec<&str> = addrs.iter().filter(|b| *b != a).map(String::as_str).collect();
            Node::start(&dir, &format!("node{i}"), name, stack, a, &peers, &extra)
        })
        .collect();
    let outputs = finish(&mut nodes, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{name}: {e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, format!("{name}: a node failed"));
    }
    let membership = stack.contains("VSYNC");
    if membership {
        let logs: Vec<NodeLog> = nodes.iter().map(|n| check_node(n, CASTS, SIZE, false).unwrap_or_else(|e| fail(&dir, &outputs, e))).collect();
        let refs: Vec<&NodeLog> = logs.iter().collect();
        check_views_agree(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
        check_same_view_sequences(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
        check_virtual_synchrony(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
        for log in &logs {
            if log.reason.as_deref() != Some("done") {
                fail(&dir, &outputs, format!("{} stopped with {:?}", log.me, log.reason));
            }
        }
    }
    let lines: Vec<Vec<Value>> = nodes.iter().map(|n| read_log(&n.log).unwrap_or_else(|e| fail(&dir, &outputs, e))).collect();
    if !membership {
        let run = Run { members: addrs.clone(), casts: CASTS, size: SIZE, layers: vec!["FRAG", "NAK", "CAUSAL"] };
        for (a, l) in addrs.iter().zip(&lines) {
            check_log(&run, a, l).unwrap_or_else(|e| fail(&dir, &outputs, format!("log of {a}: {e}")));
            if l.last().map(|s| &s["reason"]) != Some(&Value::from("done")) {
                fail(&dir, &outputs, format!("{a} stopped early: {:?}", l.last()));
            }
        }
    }
    eprintln!("{name} ({stack}): three nodes ran and their logs were read in {:.2?}", started.elapsed());
    Three { name: name.to_string(), stack, dir, outputs, addrs, lines }
}

/// The simulator's checks that apply to a run whose nodes all leave at the
/// end (so no liveness: the logs end in different views), plus `extra`.
fn safety_and_views(extra: &[check::Check]) -> Vec<check::Check> {
    let mut checks = vec![check::INTEGRITY, check::NO_DUPLICATION, check::NO_CREATION, check::FIFO, check::VIEW_AGREEMENT, check::VIRTUAL_SYNCHRONY_CHECK];
    checks.extend_from_slice(extra);
    checks
}

/// A totally ordered stack: one order everywhere, the same sequence in
/// every view all three installed, which must hold most of the casts.
fn one_order(name: &str, stack: &'static str, extra: &[check::Check]) {
    let run = run_three(name, stack);
    let o = run.outcome();
    run.check(&o, &safety_and_views(extra));
    run.check_complete(&o);
    run.check_causality_material();
    let shared = same_sequence_in_shared_views(&o).unwrap_or_else(|e| run.fail(e));
    let all = 3 * CASTS as usize;
    if shared * 2 < all {
        run.fail(format!("only {shared} of the {all} casts were delivered in views all three installed: the sequences compared are too short"));
    }
    eprintln!("{name}: {shared} of {all} casts delivered in one sequence in the views all three shared");
    run.done();
}

#[test]
fn total_over_udp_delivers_one_sequence_at_every_node() {
    one_order("order-total", "FRAG:NAK:CAUSAL:VSYNC:TOTAL", &[check::TOTAL_ORDER, check::CAUSAL_ORDER]);
}

#[test]
fn token_over_udp_delivers_one_sequence_at_every_node() {
    one_order("order-token", "FRAG:NAK:VSYNC:TOKEN", &[check::TOTAL_ORDER]);
}

#[test]
fn causal_over_udp_with_membership_delivers_in_causal_order() {
    let run = run_three("order-causal", "FRAG:NAK:CAUSAL:VSYNC");
    let o = run.outcome();
    run.check(&o, &safety_and_views(&[check::CAUSAL_ORDER]));
    run.check_complete(&o);
    run.check_causality_material();
    run.done();
}

#[test]
fn causal_over_udp_with_fixed_membership_delivers_in_causal_order() {
    let run = run_three("order-causal-fixed", "FRAG:NAK:CAUSAL");
    let o = run.outcome();
    run.check(&o, check::RELIABLE_CAUSAL);
    run.check_causality_material();
    run.done();
}

/// The reading of logs into an `Outcome` keeps what the order checks need:
/// a delivery logged before a `send` line is a predecessor of that cast,
/// and a swapped pair of deliveries is out of order.
#[test]
fn the_order_checks_catch_broken_node_logs() {
    use serde_json::json;
    use strata::codec::fnv1a64;
    use strata::transport::payload;
    let (a, b, c) = ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003");
    let view = "1@127.0.0.1:7001";
    let deliver = |t: u64, from: &str, k: u64| {
        let body = payload::make(from, k, SIZE);
        json!({"ev": "deliver", "t": t, "view": view, "from": from, "id": format!("{from}:{k}"), "len": body.len(), "fnv": format!("{:016x}", fnv1a64(&body))})
    };
    let send = |t: u64, me: &str, after: u64| json!({"ev": "send", "t": t, "id": format!("{me}:0"), "after": after});
    let start = |me: &str| json!({"ev": "start", "t": 1, "member": me, "incarnation": 9});
    let view_line = json!({"ev": "view", "t": 2, "view": view, "members": [a, b, c], "primary": true});
    // a casts a0; b delivers it, then casts b0; c delivers b0 first.
    let log_a = vec![start(a), view_line.clone(), send(10, a, 0), deliver(11, a, 0), deliver(31, b, 0)];
    let log_b = vec![start(b), view_line.clone(), deliver(12, a, 0), send(20, b, 1), deliver(21, b, 0)];
    let mut log_c = vec![start(c), view_line.clone(), deliver(22, b, 0), deliver(23, a, 0)];
    let read = |c_log: &[Value]| {
        let nodes = [(a, log_a.as_slice(), false), (b, log_b.as_slice(), false), (c, c_log, false)];
        let o = outcome("FRAG:NAK:CAUSAL:VSYNC:TOTAL", 1, SIZE, &nodes).unwrap();
        check::run(&o, &safety_and_views(&[])).unwrap();
        o
    };
    let o = read(&log_c);
    let causal = check::causal_order::check(&o).unwrap_err();
    assert!(causal.contains("127.0.0.1:7003 delivered 127.0.0.1:7002:0") && causal.contains("127.0.0.1:7002 delivered 127.0.0.1:7001:0"), "{causal}");
    let total = check::total_order::check(&o).unwrap_err();
    assert!(total.contains("but 127.0.0.1:7003 delivered 127.0.0.1:7002:0"), "{total}");
    // In the order of the others, both pass, and so does the one-sequence check.
    log_c.swap(2, 3);
    let o = read(&log_c);
    check::causal_order::check(&o).unwrap();
    check::total_order::check(&o).unwrap();
    assert_eq!(same_sequence_in_shared_views(&o), Ok(2));
    // A delivery logged after the send line does not count as a predecessor.
    let mut o = read(&[start(c), view_line, deliver(22, b, 0), deliver(23, a, 0)]);
    let Some(strata::transport::sim::Entry::Deliver(d)) = o.members[1].log.get(1).cloned() else { panic!() };
    o.members[1].log[1] =
        strata::transport::sim::Entry::Deliver(strata::transport::sim::Delivered { at: o.members[1].casts[0].at + Duration::from_nanos(1), ..d });
    check::causal_order::check(&o).unwrap();
}
