//! `strata node` processes over UDP on loopback: every log checked against
//! docs/strata-node.md (tests/node_support: start, view, send before its
//! delivery, every member's casts exactly once in FIFO order with the right
//! length and FNV, stats before stop, monotonic `t`).

mod node_support;

use node_support::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn lossy_frag_nak_group_delivers_every_cast_once_in_order() {
    // 10% of incoming datagrams lost; 3000-byte casts cut into 3 fragments.
    run_group("lossy", 3, "LOSS(percent=10):FRAG(frag_size=1200):NAK", 200, 3000, &[], &["LOSS", "FRAG", "NAK", "engine"]);
}

#[test]
fn frag_nak_group_carries_large_casts() {
    run_group("large", 3, "FRAG:NAK", 200, 5000, &[], &["FRAG", "NAK", "engine"]);
}

#[test]
fn frag_nak_group_at_a_fixed_rate() {
    run_group("rated", 3, "FRAG:NAK", 100, 100, &["--rate", "400"], &["FRAG", "NAK"]);
}

#[test]
fn a_group_of_one_delivers_its_own_casts() {
    // Size below the id text: the payload is the text alone.
    run_group("solo", 1, "LOSS", 50, 3, &[], &["LOSS", "engine"]);
}

/// A node whose peer never shows up stops waiting after `--linger` and still
/// ends its log properly, with exit status 0.
#[test]
fn linger_ends_a_run_whose_peer_never_answers() {
    let dir = scratch_dir("linger");
    let addrs = free_addrs(2);
    let log = dir.join("node.jsonl");
    let began = Instant::now();
    let out = run(&[
        "node",
        "--group",
        "g",
        "--stack",
        "LOSS",
        "--bind",
        &addrs[0],
        "--peers",
        &addrs[1],
        "--casts",
        "20",
        "--size",
        "64",
        "--log",
        log.to_str().unwrap(),
        "--linger",
        "0.5",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(began.elapsed() < Duration::from_secs(8), "took {:?} with --linger 0.5", began.elapsed());
    let lines = read_log(&log).unwrap();
    let evs: Vec<&str> = lines.iter().map(|l| l["ev"].as_str().unwrap()).collect();
    assert_eq!(evs[..2], ["start", "view"]);
    assert_eq!(evs[evs.len() - 2..], ["stats", "stop"]);
    assert_eq!(evs.iter().filter(|e| **e == "send").count(), 20);
    // Only its own casts were delivered (a cast loops back at once).
    assert_eq!(lines.last().unwrap()["delivered"], 20);
    assert_eq!(lines.last().unwrap()["reason"], "linger");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--leave-after` ends a run of fixed membership too: the node stops
/// casting and waiting at that time, leaves, and stops with reason `left`.
#[test]
fn leave_after_ends_a_run_of_fixed_membership() {
    let dir = scratch_dir("leave-after");
    let addrs = free_addrs(2);
    let log = dir.join("node.jsonl");
    let began = Instant::now();
    let out = run(&[
        "node",
        "--group",
        "g",
        "--stack",
        "LOSS",
        "--bind",
        &addrs[0],
        "--peers",
        &addrs[1],
        "--casts",
        "1000000",
        "--size",
        "64",
        "--rate",
        "100",
        "--log",
        log.to_str().unwrap(),
        "--linger",
        "60",
        "--leave-after",
        "0.5",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(began.elapsed() < Duration::from_secs(20), "took {:?} with --leave-after 0.5", began.elapsed());
    let lines = read_log(&log).unwrap();
    let stop = lines.last().unwrap();
    assert_eq!(stop["reason"], "left");
    let sends = lines.iter().filter(|l| l["ev"] == "send").count();
    assert!(sends > 0 && sends < 1000, "{sends} casts in half a second at 100 per second");
    assert_eq!(lines[lines.len() - 2]["ev"], "stats");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM ends a waiting node with stats and stop in its log.
#[test]
fn sigterm_writes_stats_and_stop() {
    let dir = scratch_dir("sigterm");
    let addrs = free_addrs(2);
    let log = dir.join("node.jsonl");
    let child = strata()
        .args(["node", "--group", "g", "--stack", "LOSS", "--bind", &addrs[0], "--peers", &addrs[1], "--casts", "5", "--size", "10"])
        .args(["--log", log.to_str().unwrap(), "--linger", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its own five deliveries mean it is now waiting for the silent peer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&log).map_or(0, |t| t.matches("\"ev\":\"deliver\"").count()) < 5 {
        assert!(Instant::now() < deadline, "the node never delivered its own casts");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let out = wait_all(vec![child], Duration::from_secs(30)).unwrap().remove(0);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{out:?}");
    let lines = read_log(&log).unwrap();
    let evs: Vec<&str> = lines.iter().map(|l| l["ev"].as_str().unwrap()).collect();
    assert_eq!(evs[evs.len() - 2..], ["stats", "stop"]);
    assert_eq!(lines.last().unwrap()["delivered"], 5);
    assert_eq!(lines.last().unwrap()["reason"], "signal");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checker itself: a well-formed log passes, and each kind of breakage
/// the tests rely on it to catch is caught.
#[test]
fn the_log_checker_catches_broken_logs() {
    use serde_json::{json, Value};
    use strata::codec::fnv1a64;
    use strata::transport::payload;
    let (a, b) = ("127.0.0.1:7001", "127.0.0.1:7002");
    let run = Run { members: vec![a.into(), b.into()], casts: 2, size: 20, layers: vec!["NAK"] };
    let deliver = |t: u64, from: &str, k: u64| {
        let body = payload::make(from, k, 20);
        json!({"ev": "deliver", "t": t, "view": "0@127.0.0.1:7001", "from": from, "id": format!("{from}:{k}"), "len": body.len(), "fnv": format!("{:016x}", fnv1a64(&body))})
    };
    let good: Vec<Value> = vec![
        json!({"ev": "start", "t": 1, "member": a, "incarnation": 0, "stack": "NAK", "transport": "udp"}),
        json!({"ev": "view", "t": 2, "view": "0@127.0.0.1:7001", "members": [a, b]}),
        json!({"ev": "send", "t": 3, "id": format!("{a}:0"), "after": 0}),
        deliver(4, a, 0),
        json!({"ev": "send", "t": 5, "id": format!("{a}:1"), "after": 1}),
        deliver(6, b, 0),
        deliver(7, a, 1),
        deliver(8, b, 1),
        json!({"ev": "stats", "t": 9, "layers": {"NAK": {"sent": 2, "dropped": {}}}}),
        json!({"ev": "stop", "t": 10, "delivered": 4}),
    ];
    check_log(&run, a, &good).unwrap();
    let broken = |what: &str, edit: &dyn Fn(&mut Vec<Value>)| {
        let mut log = good.clone();
        edit(&mut log);
        assert!(check_log(&run, a, &log).is_err(), "the checker missed: {what}");
    };
    broken("a lost delivery", &|l| {
        l.remove(7);
        l[8]["delivered"] = json!(3);
    });
    broken("a duplicate", &|l| l.insert(8, deliver(8, b, 1)));
    broken("FIFO order", &|l| l.swap(5, 7));
    broken("reordered own casts", &|l| l.swap(3, 6));
    broken("a corrupt payload", &|l| l[5]["fnv"] = json!("0000000000000000"));
    broken("a wrong length", &|l| l[5]["len"] = json!(21));
    broken("time going back", &|l| l[6]["t"] = json!(1));
    broken("delivery before send", &|l| l.swap(2, 3));
    broken("a wrong `after`", &|l| l[4]["after"] = json!(0));
    broken("no stop", &|l| {
        l.pop();
    });
    broken("no stats", &|l| {
        l.remove(8);
    });
    broken("stats without a layer", &|l| l[8]["layers"] = json!({"FRAG": {"dropped": {}}}));
    broken("a wrong stop count", &|l| l[9]["delivered"] = json!(5));
    broken("a wrong view", &|l| l[6]["view"] = json!("1@127.0.0.1:7002"));
    broken("a sender that is not `from`", &|l| l[5]["from"] = json!(a));
}
