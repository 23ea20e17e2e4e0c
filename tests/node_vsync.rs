//! `strata node` with membership (stack `FRAG:NAK:VSYNC`) over UDP on
//! loopback: a crash, late joiners with state transfer, and a clean leave,
//! each checked from the nodes' logs (tests/node_support/vsync.rs checks
//! every log on its own, then the logs against each other: agreed views,
//! virtual synchrony). Tests wait for log lines, never for a fixed time.

mod node_support;

use node_support::vsync::*;
use node_support::{free_addrs, read_log, scratch_dir};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const STACK: &str = "FRAG:NAK:VSYNC";
/// How long a test waits for any one step (far above what it needs).
const STEP: Duration = Duration::from_secs(30);

/// Every node's stderr, for a failure message.
fn stderrs(outputs: &[(String, std::process::Output)]) -> String {
    outputs.iter().map(|(a, o)| format!("{a} ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())).collect::<Vec<_>>().join("\n")
}

/// Fails with `what`, the logs' directory (kept for a post-mortem) and the nodes' stderr.
fn fail(dir: &Path, outputs: &[(String, std::process::Output)], what: String) -> ! {
    panic!("{what}\nlogs in {}\n{}", dir.display(), stderrs(outputs));
}

#[test]
fn a_killed_member_is_removed_and_survivors_agree_on_what_they_delivered() {
    // Not the lowest address, which founded the group and coordinates it.
    kill_one_of_four("vsync-kill", 2, true);
}

#[test]
fn a_killed_coordinator_is_removed_and_survivors_agree_on_what_they_delivered() {
    kill_one_of_four("vsync-kill-coord", 0, true);
}

/// The founder, which provides the state to the members it admits, killed
/// right after it installed the first view of four: most likely before any
/// joiner has loaded the state, so no survivor holds it.
#[test]
fn a_state_provider_killed_before_the_joiners_loaded_the_state() {
    kill_one_of_four("vsync-kill-provider", 0, false);
}

/// Four nodes started together, each naming the others as seeds, cast at a
/// fixed rate; the one with the `victim`-th lowest address (0: the founder
/// and coordinator) is killed with SIGKILL mid-stream: once every node
/// delivered 100 casts if `steady` (the joiners have loaded the state), else
/// as soon as the victim installed the view of all four.
fn kill_one_of_four(name: &str, victim_rank: usize, steady: bool) {
    let dir = scratch_dir(name);
    let addrs = free_addrs(4);
    let (casts, size) = (300u64, 1000usize);
    // Three seconds of casting at 100 per second: the kill comes mid-stream.
    let extra = ["--casts", "300", "--size", "1000", "--rate", "100", "--linger", "10"];
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let seeds: Vec<&str> = addrs.iter().filter(|b| *b != a).map(String::as_str).collect();
            Node::start(&dir, &format!("node{i}"), name, STACK, a, &seeds, &extra)
        })
        .collect();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for node in nodes.iter_mut() {
        node.wait_for("a view of all four", STEP, |l| has_view_of(l, &all));
    }
    let mut sorted = addrs.clone();
    sorted.sort_by_key(|a| a.parse::<std::net::SocketAddr>().unwrap());
    let victim = addrs.iter().position(|a| *a == sorted[victim_rank]).unwrap();
    if steady {
        for node in nodes.iter_mut() {
            node.wait_for("100 deliveries", STEP, |l| count(l, "deliver") >= 100);
        }
    }
    let killed_at = nodes[victim].kill9();
    let outputs = finish(&mut nodes, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a survivor failed".into());
    }

    let killed = check_node(&nodes[victim], casts, size, true).unwrap_or_else(|e| fail(&dir, &outputs, e));
    let survivors: Vec<NodeLog> =
        (0..4).filter(|i| *i != victim).map(|i| check_node(&nodes[i], casts, size, false).unwrap_or_else(|e| fail(&dir, &outputs, e))).collect();
    let mut logs: Vec<&NodeLog> = survivors.iter().collect();
    logs.push(&killed);
    let victim_addr = &addrs[victim];
    assert!(killed.sends < casts, "the kill came after the victim's last cast ({} sent)", killed.sends);

    // One group: every node installed a view of all four (each its own check
    // above), and views agree everywhere.
    check_views_agree(&logs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    for log in &logs {
        assert!(log.views.iter().all(|v| v.primary), "{}: a non-primary view: {:?}", log.me, log.views);
    }
    // Each survivor installs a view without the victim within 3 s of the
    // kill, and ends done.
    for log in &survivors {
        let removed = log.views.iter().find(|v| v.t > killed_at && !v.members.contains(victim_addr));
        let Some(removed) = removed else { fail(&dir, &outputs, format!("{} never installed a view without {victim_addr}", log.me)) };
        let after = Duration::from_nanos(removed.t - killed_at);
        assert!(after <= Duration::from_secs(3), "{} removed {victim_addr} {after:?} after the kill", log.me);
        assert_eq!(log.reason.as_deref(), Some("done"), "{} stopped early", log.me);
    }
    // Virtual synchrony (FIFO, no loss and no duplicates were checked per log).
    let compared = check_virtual_synchrony(&logs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    assert!(compared >= 3, "too few views shared to compare ({compared})");
    // In particular for the view the victim died in.
    let last_with_victim: Vec<&str> =
        survivors.iter().map(|l| l.views.iter().rev().find(|v| v.members.contains(victim_addr)).map(|v| v.id.as_str()).unwrap_or("")).collect();
    assert!(last_with_victim.iter().all(|v| *v == last_with_victim[0]), "survivors left different views with the victim: {last_with_victim:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn members_joining_later_load_the_state_and_install_the_same_views() {
    let dir = scratch_dir("vsync-join");
    let addrs = free_addrs(3);
    let (casts, size) = (100u64, 200usize);
    // Two seconds of casting at 50 per second: the others join meanwhile.
    let extra = ["--casts", "100", "--size", "200", "--rate", "50", "--linger", "10"];
    let mut nodes = vec![Node::start(&dir, "node0", "vsync-join", STACK, &addrs[0], &[], &extra)];
    nodes[0].wait_for("the founding view", STEP, |l| has_view_of(l, &[&addrs[0]]));
    nodes.push(Node::start(&dir, "node1", "vsync-join", STACK, &addrs[1], &[&addrs[0]], &extra));
    nodes[1].wait_for("a loaded state", STEP, |l| count(l, "state") >= 1);
    nodes.push(Node::start(&dir, "node2", "vsync-join", STACK, &addrs[2], &[&addrs[0]], &extra));
    let outputs = finish(&mut nodes, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a node failed".into());
    }
    let logs: Vec<NodeLog> = nodes.iter().map(|n| check_node(n, casts, size, false).unwrap_or_else(|e| fail(&dir, &outputs, e))).collect();
    let refs: Vec<&NodeLog> = logs.iter().collect();
    check_views_agree(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    check_same_view_sequences(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    check_virtual_synchrony(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    for log in &logs {
        assert_eq!(log.reason.as_deref(), Some("done"), "{} stopped early", log.me);
    }
    // The founder's first view is its own; each joiner's first view holds
    // the members before it and itself; the joiners loaded a state, which
    // told them of the founder's earlier casts (the founder cast alone first).
    assert_eq!(logs[0].views[0].members, vec![addrs[0].clone()]);
    assert!(logs[0].states.is_empty(), "the founder loaded a state");
    for (i, log) in logs.iter().enumerate().skip(1) {
        let first: std::collections::BTreeSet<&String> = log.views[0].members.iter().collect();
        assert!(addrs[..=i].iter().all(|a| first.contains(a)), "{}'s first view {:?}", log.me, log.views[0]);
        assert_eq!(log.states.len(), 1, "{} should load one state", log.me);
        // Every member was in one view together.
        assert!(log.views.iter().any(|v| v.members.len() == 3), "{} never saw all three", log.me);
    }
    assert!(logs[1].states[0].get(&addrs[0]).copied().unwrap_or(0) > 0, "node1's state should count the founder's casts: {:?}", logs[1].states);
    // A joiner's first view line comes before its state line and the state
    // before any delivery (each log's own check ties deliveries to the state).
    for node in &nodes[1..] {
        let lines = node.lines();
        let pos = |ev: &str| lines.iter().position(|l| l["ev"] == ev);
        let (view, state, deliver) = (pos("view"), pos("state"), pos("deliver"));
        assert!(view < state && state < deliver.or(Some(usize::MAX)), "{}: view {view:?}, state {state:?}, deliver {deliver:?}", node.addr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn leave_after_removes_the_member_cleanly() {
    let dir = scratch_dir("vsync-leave");
    let addrs = free_addrs(3);
    let (casts, size) = (200u64, 200usize);
    // Four seconds of casting at 50 per second; the leaver leaves after 1.5.
    let extra = ["--casts", "200", "--size", "200", "--rate", "50", "--linger", "10"];
    let mut nodes = vec![
        Node::start(&dir, "node0", "vsync-leave", STACK, &addrs[0], &[&addrs[1]], &extra),
        Node::start(&dir, "node1", "vsync-leave", STACK, &addrs[1], &[&addrs[0]], &extra),
    ];
    for node in nodes.iter_mut() {
        node.wait_for("a view of both", STEP, |l| has_view_of(l, &[&addrs[0], &addrs[1]]));
    }
    let mut leaver_args = extra.to_vec();
    leaver_args.extend(["--leave-after", "1.5"]);
    nodes.push(Node::start(&dir, "leaver", "vsync-leave", STACK, &addrs[2], &[&addrs[0], &addrs[1]], &leaver_args));
    let outputs = finish(&mut nodes, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a node failed".into());
    }
    let logs: Vec<NodeLog> = nodes.iter().map(|n| check_node(n, casts, size, false).unwrap_or_else(|e| fail(&dir, &outputs, e))).collect();
    let refs: Vec<&NodeLog> = logs.iter().collect();
    check_views_agree(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    check_same_view_sequences(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    check_virtual_synchrony(&refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    let leaver = &logs[2];
    assert_eq!(leaver.reason.as_deref(), Some("left"), "the leaver's stop reason");
    assert!(leaver.sends > 0 && leaver.sends < casts, "the leaver should stop casting early, sent {}", leaver.sends);
    let last = leaver.views.last().expect("the leaver was in a view");
    assert!(last.members.contains(&addrs[2]));
    for log in &logs[..2] {
        assert_eq!(log.reason.as_deref(), Some("done"), "{} stopped early", log.me);
        // The others went from the leaver's last view to one without it...
        let i = log.view_index(&last.id).unwrap_or_else(|| fail(&dir, &outputs, format!("{} never installed {}", log.me, last.id)));
        let next = log.views.get(i + 1).unwrap_or_else(|| fail(&dir, &outputs, format!("{} installed nothing after {}", log.me, last.id)));
        assert!(!next.members.contains(&addrs[2]), "{}: the view after {} still holds the leaver", log.me, last.id);
        // ...having delivered in it everything the leaver delivered there,
        // its own last casts included.
        let theirs: std::collections::BTreeSet<&String> = log.delivered_in[i].iter().collect();
        let missing: Vec<&String> = leaver.delivered_in.last().unwrap().iter().filter(|id| !theirs.contains(id)).take(5).collect();
        assert!(missing.is_empty(), "{} did not deliver {missing:?}, which the leaver delivered in {}", log.me, last.id);
        let own: Vec<&String> = leaver.delivered.iter().filter(|id| id.starts_with(&format!("{}:", addrs[2]))).collect();
        assert!(own.iter().all(|id| log.delivered.contains(id)), "{} lacks some of the leaver's casts", log.me);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_without_seeds_founds_the_group_and_finishes() {
    let dir = scratch_dir("vsync-solo");
    // Port 0: with a membership layer nobody needs to know the address in advance.
    let mut node = Node::start(&dir, "solo", "vsync-solo", STACK, "127.0.0.1:0", &[], &["--casts", "20", "--size", "50", "--linger", "10"]);
    let outputs = finish(std::slice::from_mut(&mut node), Duration::from_secs(30)).unwrap();
    assert!(outputs[0].1.status.success(), "{}", stderrs(&outputs));
    let lines = read_log(&node.log).unwrap();
    let me = lines[0]["member"].as_str().unwrap().to_string();
    assert!(lines[0]["incarnation"].as_u64().unwrap() > 0, "a membership stack's incarnation is the start time");
    let log = check_lines(&me, &lines, 20, 50, false).unwrap_or_else(|e| fail(&dir, &outputs, e));
    assert_eq!(log.views.len(), 1);
    assert_eq!((log.views[0].members.clone(), log.views[0].primary), (vec![me.clone()], true));
    assert!(log.views[0].id.ends_with(&format!("@{me}")), "the founder creates the first view: {:?}", log.views[0]);
    assert!(log.states.is_empty());
    assert_eq!(log.delivered.len(), 20);
    assert_eq!(log.reason.as_deref(), Some("done"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checker itself catches what the tests rely on it for.
#[test]
fn the_vsync_log_checker_catches_broken_logs() {
    use serde_json::json;
    use strata::codec::fnv1a64;
    use strata::transport::payload;
    let (a, b) = ("127.0.0.1:7001", "127.0.0.1:7002");
    let deliver = |t: u64, view: &str, from: &str, k: u64| {
        let body = payload::make(from, k, 20);
        json!({"ev": "deliver", "t": t, "view": view, "from": from, "id": format!("{from}:{k}"), "len": body.len(), "fnv": format!("{:016x}", fnv1a64(&body))})
    };
    let (v1, v2) = ("1@127.0.0.1:7002", "2@127.0.0.1:7002");
    let good: Vec<Value> = vec![
        json!({"ev": "start", "t": 1, "member": a, "incarnation": 9, "stack": STACK, "transport": "udp"}),
        json!({"ev": "send", "t": 2, "id": format!("{a}:0"), "after": 0}),
        json!({"ev": "view", "t": 3, "view": v1, "members": [b, a], "primary": true}),
        json!({"ev": "state", "t": 4, "view": v1, "counts": {b: 2}}),
        deliver(5, v1, b, 2),
        deliver(6, v1, a, 0),
        json!({"ev": "block", "t": 7, "view": v1}),
        json!({"ev": "view", "t": 8, "view": v2, "members": [a], "primary": true}),
        json!({"ev": "stats", "t": 9, "layers": {}}),
        json!({"ev": "stop", "t": 10, "delivered": 2, "reason": "done"}),
    ];
    let log = check_lines(a, &good, 5, 20, false).unwrap();
    assert_eq!(log.delivered_in, vec![vec![format!("{b}:2"), format!("{a}:0")], vec![]]);
    let broken = |what: &str, edit: &dyn Fn(&mut Vec<Value>)| {
        let mut lines = good.clone();
        edit(&mut lines);
        assert!(check_lines(a, &lines, 5, 20, false).is_err(), "the checker missed: {what}");
    };
    broken("a delivery the state covered", &|l| l[4] = deliver(5, v1, b, 1));
    broken("a gap", &|l| l[4] = deliver(5, v1, b, 3));
    broken("no state", &|l| {
        l.remove(3);
    });
    broken("a wrong view", &|l| l[5] = deliver(6, v2, a, 0));
    broken("no block", &|l| {
        l.remove(6);
    });
    broken("a view without this member", &|l| l[7]["members"] = json!([b]));
    broken("no primary flag", &|l| l[2].as_object_mut().unwrap().remove("primary").map(|_| ()).unwrap());
    broken("a corrupt payload", &|l| l[5]["fnv"] = json!("0000000000000000"));
    broken("a wrong stop count", &|l| l[9]["delivered"] = json!(3));

    // Across logs: different members under one id; different deliveries in
    // a view both left for the same next view.
    let other_lines: Vec<Value> = vec![
        json!({"ev": "start", "t": 1, "member": b, "incarnation": 9}),
        json!({"ev": "send", "t": 2, "id": format!("{b}:0"), "after": 0}),
        json!({"ev": "view", "t": 3, "view": v1, "members": [b, a], "primary": true}),
        deliver(5, v1, b, 0),
        json!({"ev": "block", "t": 7, "view": v1}),
        json!({"ev": "view", "t": 8, "view": v2, "members": [a, b], "primary": true}),
    ];
    let other = check_lines(b, &other_lines, 5, 20, true).unwrap();
    assert!(check_views_agree(&[&log, &other]).is_err());
    assert!(check_virtual_synchrony(&[&log, &other]).is_err());
    assert_eq!(check_virtual_synchrony(&[&log, &log]), Ok(1));
}
