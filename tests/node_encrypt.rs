//! `strata node` with ENCRYPT at the bottom of the stack, over UDP on
//! loopback, checked from the nodes' logs:
//!
//! * an attacker with a socket of its own, listed as a seed of every node
//!   so that it receives their (sealed) join traffic, throws replays,
//!   bit flips, truncations, rewritten senders, forgeries, broken sender ids,
//!   forged notices and a flood at the nodes while they cast; the group
//!   must finish as if nothing happened, and the drop counters of the
//!   `stats` lines must account for every datagram of the attack;
//! * a node with another key never gets in, and says why;
//! * a key that cannot be read stops `strata node` before it logs anything;
//! * rotation mode (identity and trust files) across a leave.
//!
//! Tests wait for log lines and process exits, never for a fixed time.

#[path = "node_support/encrypt.rs"]
mod attack;
mod node_support;

use attack::{Attacker, Frame, Rng};
use node_support::vsync::{check_lines, check_views_agree, check_virtual_synchrony, count, finish, has_view_of, Node, NodeLog};
use node_support::{read_log, run, scratch_dir};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use strata::layers::encrypt::{public_key, to_hex, write_key_file, Secret};
use strata::MemberId;

const STACK_TAIL: &str = "FRAG:NAK:VSYNC:TOTAL";
/// How long a test waits for any one step (far above what it needs).
const STEP: Duration = Duration::from_secs(15);
/// ENCRYPT's defaults the gauges are held to: packets and bytes held.
const MAX_HELD: u64 = 512;
const MAX_HELD_BYTES: u64 = 8 << 20;

/// Every node's stderr, for a failure message.
fn stderrs(outputs: &[(String, Output)]) -> String {
    outputs.iter().map(|(a, o)| format!("{a} ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())).collect::<Vec<_>>().join("\n")
}

/// Fails with `what`, the logs' directory (kept for a post-mortem) and the nodes' stderr.
fn fail(dir: &Path, outputs: &[(String, Output)], what: String) -> ! {
    panic!("{what}\nlogs in {}\n{}", dir.display(), stderrs(outputs));
}

/// A fresh random 32-byte key in a new file (mode 0600).
fn key_file(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let mut rng = Rng::new(seed ^ nanos());
    let key: [u8; 32] = rng.bytes(32).try_into().unwrap();
    write_key_file(&path, &key).expect("write a key file");
    path
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn encrypted(key: &Path) -> String {
    format!("ENCRYPT(key_file={}):{STACK_TAIL}", key.display())
}

/// A node's lines without its `problem` lines (which the membership
/// checker does not know), and those lines apart.
fn split_problems(lines: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    lines.into_iter().partition(|l| l["ev"] != "problem")
}

/// Reads a finished node's log, checks it (docs/strata-node.md, membership
/// stack) and returns it with its problem lines and its `stats` layers.
fn checked(node: &Node, casts: u64, size: usize, dir: &Path, outputs: &[(String, Output)]) -> (NodeLog, Vec<Value>, Value) {
    let lines = read_log(&node.log).unwrap_or_else(|e| fail(dir, outputs, e));
    let (lines, problems) = split_problems(lines);
    let log = check_lines(&node.addr, &lines, casts, size, false).unwrap_or_else(|e| fail(dir, outputs, format!("log of {}: {e}", node.addr)));
    let stats = lines.iter().find(|l| l["ev"] == "stats").map(|l| l["layers"].clone()).unwrap_or_default();
    (log, problems, stats)
}

/// A counter of a layer's stats (0 if absent).
fn counter(stats: &Value, layer: &str, name: &str) -> u64 {
    stats[layer][name].as_u64().unwrap_or(0)
}

/// One of a layer's `dropped` counts (0 if absent).
fn dropped(stats: &Value, layer: &str, reason: &str) -> u64 {
    stats[layer]["dropped"][reason].as_u64().unwrap_or(0)
}

/// All of a layer's drops.
fn dropped_all(stats: &Value, layer: &str) -> u64 {
    stats[layer]["dropped"].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0)
}

/// How many casts of each sender a node knows of at the end: from its
/// loaded state, continued by its deliveries (the log check made sure the
/// deliveries continue the state without a gap).
fn known(log: &NodeLog) -> BTreeMap<String, u64> {
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for counts in &log.states {
        for (m, c) in counts {
            let e = next.entry(m.clone()).or_insert(0);
            *e = (*e).max(*c);
        }
    }
    for id in &log.delivered {
        let (m, k) = strata::transport::payload::split_id(id).expect("checked ids parse");
        let e = next.entry(m.to_string()).or_insert(0);
        *e = (*e).max(k + 1);
    }
    next
}

/// One order for everybody: the longest delivery sequence holds `expected`
/// (every cast exactly once), and every other node's sequence is its end
/// (a node that joined later delivers what the group delivered from its
/// first view on: what came before was in the state it loaded). Returns
/// the length of the shortest sequence.
fn one_sequence(logs: &[&NodeLog], expected: &BTreeSet<String>) -> Result<usize, String> {
    let longest = logs.iter().max_by_key(|l| l.delivered.len()).ok_or("no logs")?;
    let set: BTreeSet<&String> = longest.delivered.iter().collect();
    if longest.delivered.len() != expected.len() || set.len() != expected.len() || !expected.iter().all(|id| set.contains(id)) {
        return Err(format!(
            "{} delivered {} casts ({} distinct), expected the {} the nodes made",
            longest.me,
            longest.delivered.len(),
            set.len(),
            expected.len()
        ));
    }
    for log in logs {
        let tail = &longest.delivered[longest.delivered.len() - log.delivered.len()..];
        if log.delivered != tail {
            let at = log.delivered.iter().zip(tail).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "{} delivered {} casts, not the last {} of {}'s sequence: they differ at position {at} ({} vs {})",
                log.me,
                log.delivered.len(),
                log.delivered.len(),
                longest.me,
                log.delivered[at],
                tail[at]
            ));
        }
    }
    Ok(logs.iter().map(|l| l.delivered.len()).min().unwrap_or(0))
}

/// The ids of `casts` casts of each of `senders`.
fn all_casts(senders: &[String], casts: u64) -> BTreeSet<String> {
    senders.iter().flat_map(|m| (0..casts).map(move |k| format!("{m}:{k}"))).collect()
}

// ----- 1. the attack ---------------------------------------------------------

/// What the attacker sent one node, by the counter that must show it.
#[derive(Default, Debug)]
struct Ledger {
    /// Every datagram sent but forged notices: each must be dropped
    /// (endpoint, engine or ENCRYPT), since none opens with the group's key.
    droppable: u64,
    /// Replays of the node's own frames: the engine's `own_frame`.
    own_replays: u64,
    /// Replays of other nodes' frames: ENCRYPT's `auth_failed` or
    /// `too_old` (they were sealed for the attacker's address).
    other_replays: u64,
    /// Forged group-sealed packets and the flood: ENCRYPT's `auth_failed`.
    forged: u64,
    /// Broken sender ids: the engine's `bad_sender`.
    broken_senders: u64,
    bit_flips: u64,
    truncations: u64,
    rewritten_senders: u64,
    random_bodies: u64,
    flood: u64,
    /// Forged notices: reported once, never dropped.
    notices: u64,
}

/// The attacker's view of the group: the captured frames of each real node.
struct Loot {
    frames: Vec<Frame>,
    key_id: [u8; 4],
}

fn loot(attacker: &Attacker, members: &[SocketAddr]) -> Loot {
    let frames: Vec<Frame> =
        attacker.captured().into_iter().filter_map(|(_, d)| Frame::parse(&d)).filter(|f| f.key_id().is_some() && members.contains(&f.sender.addr())).collect();
    let key_id = frames.first().and_then(Frame::key_id).expect("captured a sealed frame");
    Loot { frames, key_id }
}

/// Sends `packets` to `to` in bursts, waiting between bursts until the
/// node's socket has room, so that the kernel drops (almost) nothing and
/// the node's counters can account for the attack.
fn paced(attacker: &Attacker, to: SocketAddr, packets: &[Vec<u8>]) -> u64 {
    let mut sent = 0;
    for burst in packets.chunks(128) {
        attack::wait_for_room(to, 256 << 10, Duration::from_secs(2));
        sent += burst.iter().filter(|p| attacker.send(to, p)).count() as u64;
    }
    sent
}

/// Counts one datagram in its [`Ledger`] entry once it was sent.
type Tally = fn(&mut Ledger);

/// One round of the attack on node `target`: every captured frame
/// replayed, bit-flipped, truncated and re-sent under other senders, then
/// forgeries, broken sender ids and forged notices, shuffled.
fn round(attacker: &Attacker, loot: &Loot, members: &[SocketAddr], target: SocketAddr, rng: &mut Rng, ledger: &mut Ledger) {
    let mut packets: Vec<(Vec<u8>, Tally)> = Vec::new();
    for f in &loot.frames {
        let wire = f.encode();
        if f.sender.addr() == target {
            packets.push((wire.clone(), |l| l.own_replays += 1));
        } else {
            packets.push((wire.clone(), |l| l.other_replays += 1));
        }
        for _ in 0..4 {
            let bit = rng.below(wire.len() * 8);
            packets.push((attack::flip_bit(&wire, bit), |l| l.bit_flips += 1));
        }
        for _ in 0..2 {
            let len = rng.below(wire.len());
            packets.push((wire[..len].to_vec(), |l| l.truncations += 1));
        }
        // Another real member (the target itself included, with another
        // incarnation), and an address nobody uses.
        let other = members[rng.below(members.len())];
        let incarnation = if other == target { f.sender.incarnation() ^ 1 } else { f.sender.incarnation() };
        packets.push((f.encode_with(MemberId::new(other, incarnation), &f.body), |l| l.rewritten_senders += 1));
        let stranger = SocketAddr::from(([127, 0, 0, 1], 1 + rng.below(60000) as u16));
        packets.push((f.encode_with(MemberId::new(stranger, 7), &f.body), |l| l.rewritten_senders += 1));
    }
    let templates: Vec<&Frame> = loot.frames.iter().filter(|f| f.sender.addr() != target).collect();
    for i in 0..300 {
        let t = templates[i % templates.len()];
        let len = 1 + rng.below(400);
        packets.push((t.encode_with(t.sender, &attack::forged_sealed(loot.key_id, rng, len)), |l| l.forged += 1));
        let len = rng.below(200);
        packets.push((t.encode_with(t.sender, &attack::random_body(rng, len)), |l| l.random_bodies += 1));
        if i < 100 {
            packets.push((attack::broken_sender(t, i, rng), |l| l.broken_senders += 1));
        }
    }
    for i in 0..3 {
        let t = templates[i % templates.len()];
        packets.push((t.encode_with(t.sender, &attack::notice(loot.key_id)), |l| l.notices += 1));
    }
    // Shuffle (Fisher-Yates), so that no kind arrives as one block.
    for i in (1..packets.len()).rev() {
        packets.swap(i, rng.below(i + 1));
    }
    for burst in packets.chunks(128) {
        attack::wait_for_room(target, 256 << 10, Duration::from_secs(2));
        for (p, count) in burst {
            if attacker.send(target, p) {
                count(ledger);
            }
        }
    }
}

/// Three nodes on "ENCRYPT(key_file=K):FRAG:NAK:VSYNC:TOTAL" cast 2000
/// messages each at 400 a second while the attacker, one of their seeds,
/// attacks each of them with everything in [`round`] (three rounds) and a
/// flood of 20,000 forged packets. The group must finish as without it:
/// exit 0 and `done`, views of the three only, one delivery sequence of
/// exactly the casts made, intact payloads; the drop counters must cover
/// every attack datagram the kernel handed over, and ENCRYPT's session and
/// held gauges must show nothing of the attacker.
#[test]
fn an_attacker_with_replays_forgeries_and_a_flood_changes_nothing() {
    let started = Instant::now();
    let name = "enc-attack";
    let dir = scratch_dir(name);
    let key = key_file(&dir, "group.key", 1);
    let stack = encrypted(&key);
    let (casts, size) = (2000u64, 200usize);
    let seed = std::env::var("STRATA_ATTACK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(nanos);
    eprintln!("{name}: attack seed {seed} (replay with STRATA_ATTACK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let attacker = Attacker::bind();
    let addrs = node_support::free_addrs(3);
    let extra = ["--casts", "2000", "--size", "200", "--rate", "400", "--linger", "10"];
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut seeds: Vec<String> = addrs.iter().filter(|b| *b != a).cloned().collect();
            seeds.push(attacker.addr().to_string());
            let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
            Node::start(&dir, &format!("node{i}"), name, &stack, a, &seeds, &extra)
        })
        .collect();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for node in nodes.iter_mut() {
        node.wait_for("a view of all three and 100 deliveries", STEP, |l| has_view_of(l, &all) && count(l, "deliver") >= 100);
    }
    let members: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
    let attack_started = Instant::now();
    let mut ledgers: Vec<Ledger> = members.iter().map(|_| Ledger::default()).collect();
    for r in 0..3 {
        // What was captured so far (the coordinator keeps probing its seeds).
        let loot = loot(&attacker, &members);
        let senders: BTreeSet<SocketAddr> = loot.frames.iter().map(|f| f.sender.addr()).collect();
        assert!(senders.len() >= 2, "round {r}: the attacker captured sealed frames of {} nodes only", senders.len());
        for (i, m) in members.iter().enumerate() {
            round(&attacker, &loot, &members, *m, &mut rng, &mut ledgers[i]);
        }
        if r == 1 {
            // The flood, between two rounds: forged packets under the real key id.
            for (i, m) in members.iter().enumerate() {
                let templates: Vec<&Frame> = loot.frames.iter().filter(|f| f.sender.addr() != *m).collect();
                let flood: Vec<Vec<u8>> = (0..20_000)
                    .map(|j| {
                        let t = templates[j % templates.len()];
                        let len = 20 + rng.below(300);
                        t.encode_with(t.sender, &attack::forged_sealed(loot.key_id, &mut rng, len))
                    })
                    .collect();
                let sent = paced(&attacker, *m, &flood);
                ledgers[i].flood += sent;
            }
        }
    }
    for l in ledgers.iter_mut() {
        l.forged += l.flood;
        l.droppable = l.own_replays + l.other_replays + l.bit_flips + l.truncations + l.rewritten_senders + l.forged + l.random_bodies + l.broken_senders;
    }
    let attack_took = attack_started.elapsed();
    // What the kernel dropped at each node's socket (legitimate traffic
    // included): the attack datagrams the node can have seen are at least
    // those sent minus these.
    let kernel_drops: Vec<u64> = members.iter().map(|m| attack::socket_queue(*m).map(|(_, d)| d).unwrap_or(0)).collect();
    let captured = attacker.captured().len();
    // The counters are read when a node is done: the attack must be over by then.
    for node in &nodes {
        assert_eq!(count(&node.lines(), "stats"), 0, "{} finished before the attack ended ({attack_took:?}): the counters miss part of it", node.addr);
    }
    let outputs = finish(&mut nodes, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    drop(attacker);
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a node failed".into());
    }
    let results: Vec<(NodeLog, Vec<Value>, Value)> = nodes.iter().map(|n| checked(n, casts, size, &dir, &outputs)).collect();
    let logs: Vec<&NodeLog> = results.iter().map(|(l, _, _)| l).collect();
    check_views_agree(&logs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    check_virtual_synchrony(&logs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    let real: BTreeSet<&String> = addrs.iter().collect();
    for log in &logs {
        if log.reason.as_deref() != Some("done") {
            fail(&dir, &outputs, format!("{} stopped with {:?}", log.me, log.reason));
        }
        for v in &log.views {
            if !v.primary || v.members.iter().any(|m| !real.contains(m)) {
                fail(&dir, &outputs, format!("{}: view {} holds {:?} (primary {})", log.me, v.id, v.members, v.primary));
            }
        }
        let known = known(log);
        for a in &addrs {
            if known.get(a).copied() != Some(casts) {
                fail(&dir, &outputs, format!("{} knows {:?} casts of {a}, expected {casts}", log.me, known.get(a)));
            }
        }
    }
    let shortest = one_sequence(&logs, &all_casts(&addrs, casts)).unwrap_or_else(|e| fail(&dir, &outputs, e));

    for (i, (log, problems, stats)) in results.iter().enumerate() {
        let l = &ledgers[i];
        let lost = kernel_drops[i];
        let at_least = |n: u64| n.saturating_sub(lost);
        let (endpoint, engine, encrypt) = (dropped_all(stats, "endpoint"), dropped_all(stats, "engine"), dropped_all(stats, "ENCRYPT"));
        eprintln!(
            "{name}: {} got {l:?}; dropped endpoint {endpoint} engine {} ENCRYPT {}; kernel drops {lost}; problems {:?}",
            log.me,
            stats["engine"]["dropped"],
            stats["ENCRYPT"]["dropped"],
            problems.iter().map(|p| p["what"].as_str().unwrap_or("")).collect::<Vec<_>>()
        );
        let why = |what: &str| format!("{}: {what}\nstats: {stats}", log.me);
        // Nothing of the attack got through, and the counters say so: every
        // datagram but the notices was dropped below the layers above ENCRYPT.
        if endpoint + engine + encrypt < at_least(l.droppable) {
            fail(
                &dir,
                &outputs,
                why(&format!("{} datagrams dropped, the attack sent {} that must be ({lost} lost in the kernel)", endpoint + engine + encrypt, l.droppable)),
            );
        }
        if dropped(stats, "ENCRYPT", "auth_failed") < at_least(l.forged) {
            fail(&dir, &outputs, why(&format!("auth_failed is below the {} forged packets", l.forged)));
        }
        let stale = dropped(stats, "ENCRYPT", "auth_failed") + dropped(stats, "ENCRYPT", "too_old") + dropped(stats, "ENCRYPT", "replay");
        if stale < at_least(l.forged + l.other_replays) {
            fail(&dir, &outputs, why(&format!("auth_failed+too_old+replay below {} forged and {} replayed packets", l.forged, l.other_replays)));
        }
        if dropped(stats, "engine", "own_frame") < at_least(l.own_replays) {
            fail(&dir, &outputs, why(&format!("own_frame below the {} replays of the node's own frames", l.own_replays)));
        }
        if dropped(stats, "engine", "bad_sender") < at_least(l.broken_senders) {
            fail(&dir, &outputs, why(&format!("bad_sender below the {} broken sender ids", l.broken_senders)));
        }
        // The attacker opened no session and left nothing held: only the two
        // other nodes' sessions exist, and they answered their challenges.
        let sessions = counter(stats, "ENCRYPT", "sessions");
        if sessions > 2 || counter(stats, "ENCRYPT", "sessions_verified") > 2 {
            fail(&dir, &outputs, why(&format!("{sessions} sessions: the attacker got one")));
        }
        if counter(stats, "ENCRYPT", "held") > MAX_HELD || counter(stats, "ENCRYPT", "held_bytes") > MAX_HELD_BYTES {
            fail(&dir, &outputs, why("held beyond its bounds"));
        }
        // The only problems are ENCRYPT's key complaints the attack provoked
        // (a flipped key id looks like another key; notices are forgeable).
        if let Some(p) = problems.iter().find(|p| p["layer"] != "ENCRYPT" || !p["what"].as_str().unwrap_or("").contains("key")) {
            fail(&dir, &outputs, why(&format!("an unexpected problem: {p}")));
        }
    }
    eprintln!(
        "{name}: three nodes delivered one sequence ({shortest}..{} casts) despite the attack ({captured} datagrams captured, attack took {attack_took:?}); test took {:?}",
        3 * casts,
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- 2. another key --------------------------------------------------------

/// Two nodes with the group's key and a third with another, all naming
/// each other as seeds: the two form the group and finish; the third is
/// never in their views (it founds a group of its own), its log says that
/// its key differs, and the two count `wrong_key` drops.
#[test]
fn a_node_with_another_key_never_joins_and_is_told_why() {
    let started = Instant::now();
    let name = "enc-wrong-key";
    let dir = scratch_dir(name);
    let (good, bad) = (key_file(&dir, "good.key", 2), key_file(&dir, "bad.key", 3));
    let addrs = node_support::free_addrs(3);
    let (casts, size) = (200u64, 200usize);
    let extra = ["--casts", "200", "--size", "200", "--rate", "100", "--linger", "10"];
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let seeds: Vec<&str> = addrs.iter().filter(|b| *b != a).map(String::as_str).collect();
            let key = if i == 2 { &bad } else { &good };
            Node::start(&dir, &format!("node{i}"), name, &encrypted(key), a, &seeds, &extra)
        })
        .collect();
    let outputs = finish(&mut nodes, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a node failed".into());
    }
    let results: Vec<(NodeLog, Vec<Value>, Value)> = nodes.iter().map(|n| checked(n, casts, size, &dir, &outputs)).collect();
    let outsider = &addrs[2];
    for (log, _, stats) in &results[..2] {
        assert_eq!(log.reason.as_deref(), Some("done"), "{} stopped early", log.me);
        assert!(log.views.iter().all(|v| !v.members.contains(outsider)), "{} had {outsider} in a view: {:?}", log.me, log.views);
        assert!(has_view_of_members(log, &addrs[..2]), "{} never saw the view of the two: {:?}", log.me, log.views);
        let wrong_key = dropped(stats, "ENCRYPT", "wrong_key");
        assert!(wrong_key > 0, "{}: no wrong_key drops: {}", log.me, stats["ENCRYPT"]);
        assert!(counter(stats, "ENCRYPT", "notices_sent") > 0, "{} never told the outsider: {}", log.me, stats["ENCRYPT"]);
    }
    let logs: Vec<&NodeLog> = results[..2].iter().map(|(l, _, _)| l).collect();
    one_sequence(&logs, &all_casts(&addrs[..2], casts)).unwrap_or_else(|e| fail(&dir, &outputs, e));
    let (log, problems, stats) = &results[2];
    assert!(log.views.iter().all(|v| v.members == [outsider.clone()]), "the outsider's views: {:?}", log.views);
    // Told either way, whichever comes first (ENCRYPT reports one line per
    // address and reason): by a member's notice, or by seeing a member's
    // packets sealed with a key other than its own.
    let about_the_key = |w: &str| w.contains("cannot admit this member: it uses a different key") || w.contains("are sealed with another group key");
    assert!(
        problems.iter().any(|p| p["layer"] == "ENCRYPT" && p["what"].as_str().is_some_and(about_the_key)),
        "the outsider's log has no problem line about its key: {problems:?}"
    );
    assert!(dropped(stats, "ENCRYPT", "wrong_key") > 0, "the outsider counted no wrong_key drops: {}", stats["ENCRYPT"]);
    assert!(counter(stats, "ENCRYPT", "sessions") == 0, "the outsider opened a session: {}", stats["ENCRYPT"]);
    eprintln!("{name}: took {:?}; the outsider's problems: {problems:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

fn has_view_of_members(log: &NodeLog, members: &[String]) -> bool {
    let want: BTreeSet<&String> = members.iter().collect();
    log.views.iter().any(|v| v.members.iter().collect::<BTreeSet<_>>() == want)
}

// ----- 3. keys that cannot be read -------------------------------------------

/// Runs `strata node` with `stack`, which must fail at its start: exit 1
/// within a few seconds, one line on stderr naming `names`, and the log
/// `log` left as it was (absent, or with its old contents).
fn refused(dir: &Path, stack: &str, env: &[(&str, &str)], names: &str, log: &Path) {
    let before = std::fs::read(log).ok();
    let args = ["node", "--group", "enc-refused", "--stack", stack, "--bind", "127.0.0.1:0", "--casts", "1", "--size", "10", "--log", log.to_str().unwrap()];
    let started = Instant::now();
    let mut cmd = node_support::strata();
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env_remove("STRATA_TEST_UNSET_KEY");
    let out = cmd.output().expect("run the strata binary");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "exit status for {stack}; stderr: {stderr}; files in {}", dir.display());
    assert!(took < Duration::from_secs(3), "refusing {stack} took {took:?}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("strata node: ") && stderr.contains(names), "the reason should name {names}: {stderr}");
    for (_, value) in env {
        assert!(!stderr.contains(value), "the reason quotes the variable's value: {stderr}");
    }
    assert_eq!(std::fs::read(log).ok(), before, "the node log was touched ({stack})");
}

#[test]
fn a_key_that_cannot_be_read_stops_the_node_before_its_log_exists() {
    let dir = scratch_dir("enc-refused");
    let log = dir.join("node.jsonl");
    let missing = dir.join("missing.key");
    refused(&dir, &encrypted(&missing), &[], missing.to_str().unwrap(), &log);
    assert!(!log.exists(), "the node log was created");

    // A file that is not 64 hex digits, and one that is a directory; an
    // existing node log is left as it was.
    std::fs::write(&log, b"an earlier run\n").unwrap();
    let bad = dir.join("bad.key");
    std::fs::write(&bad, b"not a key\n").unwrap();
    refused(&dir, &encrypted(&bad), &[], bad.to_str().unwrap(), &log);
    let short = dir.join("short.key");
    std::fs::write(&short, format!("{}\n", "ab".repeat(31))).unwrap();
    refused(&dir, &encrypted(&short), &[], short.to_str().unwrap(), &log);
    refused(&dir, &encrypted(&dir), &[], dir.to_str().unwrap(), &log);

    // An unset variable, and one holding no key (its value is never quoted).
    let stack = format!("ENCRYPT(key_env=STRATA_TEST_UNSET_KEY):{STACK_TAIL}");
    refused(&dir, &stack, &[], "STRATA_TEST_UNSET_KEY", &log);
    let stack = format!("ENCRYPT(key_env=STRATA_TEST_BAD_KEY):{STACK_TAIL}");
    refused(&dir, &stack, &[("STRATA_TEST_BAD_KEY", "secret-ish")], "STRATA_TEST_BAD_KEY", &log);

    // Rotation mode: a missing trust file is named too.
    let key = key_file(&dir, "group.key", 4);
    let identity = key_file(&dir, "id.key", 5);
    let trust = dir.join("missing.trust");
    let stack = format!("ENCRYPT(key_file={},identity={},trust={}):{STACK_TAIL}", key.display(), identity.display(), trust.display());
    refused(&dir, &stack, &[], trust.to_str().unwrap(), &log);
    assert_eq!(std::fs::read(&log).unwrap(), b"an earlier run\n");

    // The same key file read fine makes a node that runs (the refusals
    // above are about the key, nothing else).
    let out = run(&[
        "node",
        "--group",
        "enc-refused",
        "--stack",
        &encrypted(&key),
        "--bind",
        "127.0.0.1:0",
        "--casts",
        "3",
        "--size",
        "10",
        "--log",
        log.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&read_log(&log).unwrap(), "deliver"), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- 4. rotation -----------------------------------------------------------

/// Three nodes in rotation mode (each its own identity, one trust file
/// listing all three); the one with the highest address leaves
/// mid-stream. The other two finish `done` with one sequence and agreed
/// views; each drew a sender key per view (rotations >= 2) and received
/// the others' keys.
#[test]
fn rotation_mode_over_udp_survives_a_leave() {
    let started = Instant::now();
    let name = "enc-rotation";
    let dir = scratch_dir(name);
    let key = key_file(&dir, "group.key", 6);
    let mut addrs = node_support::free_addrs(3);
    addrs.sort_by_key(|a| a.parse::<SocketAddr>().unwrap());
    let identities: Vec<PathBuf> = (0..3).map(|i| key_file(&dir, &format!("id{i}.key"), 10 + i)).collect();
    let trust = dir.join("trust");
    let lines: Vec<String> = identities
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let secret = strata::layers::encrypt::read_key_file(p).unwrap();
            format!("{} node{i}", to_hex(&public_key(&Secret::from_bytes(*secret.bytes()))))
        })
        .collect();
    std::fs::write(&trust, lines.join("\n") + "\n").unwrap();
    let (casts, size) = (300u64, 200usize);
    let extra = ["--casts", "300", "--size", "200", "--rate", "100", "--linger", "10"];
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let seeds: Vec<&str> = addrs.iter().filter(|b| *b != a).map(String::as_str).collect();
            let stack = format!("ENCRYPT(key_file={},identity={},trust={}):{STACK_TAIL}", key.display(), identities[i].display(), trust.display());
            let mut args = extra.to_vec();
            if i == 2 {
                args.extend(["--leave-after", "1.5"]);
            }
            Node::start(&dir, &format!("node{i}"), name, &stack, a, &seeds, &args)
        })
        .collect();
    let outputs = finish(&mut nodes, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a node failed".into());
    }
    let results: Vec<(NodeLog, Vec<Value>, Value)> = nodes.iter().map(|n| checked(n, casts, size, &dir, &outputs)).collect();
    let all: Vec<&NodeLog> = results.iter().map(|(l, _, _)| l).collect();
    check_views_agree(&all).unwrap_or_else(|e| fail(&dir, &outputs, e));
    check_virtual_synchrony(&all).unwrap_or_else(|e| fail(&dir, &outputs, e));
    let leaver = &results[2].0;
    assert_eq!(leaver.reason.as_deref(), Some("left"), "the leaver's stop reason");
    assert!(leaver.sends > 0 && leaver.sends < casts, "the leaver should stop casting early, sent {}", leaver.sends);
    assert!(leaver.views.iter().any(|v| v.members.len() == 3), "the leaver never was in the view of three: {:?}", leaver.views);
    for (log, problems, stats) in &results[..2] {
        assert_eq!(log.reason.as_deref(), Some("done"), "{} stopped early", log.me);
        assert!(problems.is_empty(), "{}: problems {problems:?}", log.me);
        let last = log.views.last().unwrap();
        assert!(!last.members.contains(&addrs[2]), "{}'s last view still holds the leaver: {last:?}", log.me);
        let (rotations, keys_received) = (counter(stats, "ENCRYPT", "rotations"), counter(stats, "ENCRYPT", "keys_received"));
        assert!(rotations >= 2 && keys_received > 0, "{}: rotations {rotations}, keys_received {keys_received}: {}", log.me, stats["ENCRYPT"]);
        assert_eq!(dropped(stats, "ENCRYPT", "untrusted") + dropped(stats, "ENCRYPT", "wrong_key"), 0, "{}: {}", log.me, stats["ENCRYPT"]);
        eprintln!("{name}: {} ENCRYPT {}", log.me, stats["ENCRYPT"]);
    }
    // The survivors: one sequence of their casts and of the leaver's casts
    // the leaver delivered (virtual synchrony: those of its last view
    // included; a cast held back by the leave's flush reaches nobody).
    let survivors: Vec<&NodeLog> = all[..2].to_vec();
    let mut made: BTreeSet<String> = all_casts(&addrs[..2], casts);
    made.extend(leaver.delivered.iter().filter(|id| id.starts_with(&format!("{}:", addrs[2]))).cloned());
    one_sequence(&survivors, &made).unwrap_or_else(|e| fail(&dir, &outputs, e));
    eprintln!("{name}: took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
