//! `strata node` on SAFE stacks (`FRAG:NAK:VSYNC:SAFE`) over UDP on
//! loopback, checked from the nodes' logs (docs/strata-node.md, "With
//! SAFE"; tests/node_support/safe.rs checks each log on its own): uniform
//! agreement when the coordinator and another acceptor are killed,
//! replay from the on-disk logs after every member was killed, a corrupt
//! log, and the command line's refusals. Tests wait for log lines, never
//! for a fixed time.

mod node_support;

use node_support::safe::*;
use node_support::vsync::{check_views_agree, count, finish, has_view_of, views_in, Node};
use node_support::{free_addrs, read_log, run, scratch_dir};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// How long a test waits for any one step (far above what it needs).
const STEP: Duration = Duration::from_secs(20);
/// How long the nodes of a run may take to finish.
const FINISH: Duration = Duration::from_secs(40);

/// Every node's stderr, for a failure message.
fn stderrs(outputs: &[(String, Output)]) -> String {
    outputs.iter().map(|(a, o)| format!("{a} ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim())).collect::<Vec<_>>().join("\n")
}

/// Fails with `what`, the logs' directory (kept for a post-mortem) and the nodes' stderr.
fn fail(dir: &Path, outputs: &[(String, Output)], what: String) -> ! {
    panic!("{what}\nlogs in {}\n{}", dir.display(), stderrs(outputs));
}

/// The seeds of `addr`: every other address.
fn seeds_of<'a>(addrs: &'a [String], addr: &str) -> Vec<&'a str> {
    addrs.iter().filter(|a| *a != addr).map(String::as_str).collect()
}

/// The ids in a log's `deliver` lines so far.
fn delivered_ids(lines: &[Value]) -> BTreeSet<String> {
    lines.iter().filter(|l| l["ev"] == "deliver").filter_map(|l| l["id"].as_str().map(str::to_string)).collect()
}

#[test]
fn killing_the_coordinator_and_another_of_three_acceptors_loses_nothing_delivered() {
    kill_two_of_five("safe-kill-3", 3);
}

#[test]
fn killing_the_coordinator_and_another_of_five_acceptors_loses_nothing_delivered() {
    kill_two_of_five("safe-kill-5", 5);
}

/// Five nodes cast concurrently (300 casts each at 100 per second, node i
/// with payloads of 200 + 200 i bytes); once every node delivered 300, the
/// coordinator (rank 0: the founder, an acceptor) and the member of rank 1
/// (an acceptor too) are killed with SIGKILL. With `acceptors=3` two of the
/// three acceptors die: the survivors' copies must carry what was accepted.
fn kill_two_of_five(name: &str, acceptors: usize) {
    let dir = scratch_dir(name);
    let addrs = free_addrs(5);
    let stack = format!("FRAG:NAK:VSYNC:SAFE(acceptors={acceptors})");
    let casts = 300u64;
    let sizes: BTreeMap<String, usize> = addrs.iter().enumerate().map(|(i, a)| (a.clone(), 200 + 200 * i)).collect();
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let size = sizes[a].to_string();
            let extra = ["--casts", "300", "--size", &size, "--rate", "100", "--linger", "10"];
            Node::start(&dir, &format!("node{i}"), name, &stack, a, &seeds_of(&addrs, a), &extra)
        })
        .collect();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for node in nodes.iter_mut() {
        node.wait_for("a view of all five", STEP, |l| has_view_of(l, &all));
    }
    for node in nodes.iter_mut() {
        node.wait_for("300 deliveries", STEP, |l| count(l, "deliver") >= 300);
    }
    // The ranks of the view current at node 0 (views agree: checked below).
    let (view_id, ranks) = views_in(&nodes[0].lines()).pop().expect("a view");
    assert_eq!(ranks.len(), 5, "node 0's current view {view_id} is not of all five: {ranks:?}");
    let victims: Vec<usize> = ranks[..2].iter().map(|m| addrs.iter().position(|a| a == m).expect("a member of the run")).collect();
    let killed_at = nodes[victims[0]].kill9();
    nodes[victims[1]].kill9();
    let outputs = finish(&mut nodes, FINISH).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a survivor failed".into());
    }

    let size_of = |m: &str| sizes.get(m).copied().unwrap_or(0);
    let logs: Vec<SafeLog> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let killed = victims.contains(&i);
            let lines = if killed { Ok(node.lines()) } else { read_log(&node.log) };
            lines
                .and_then(|lines| check_safe_lines(&node.addr, &lines, casts, &size_of, killed))
                .unwrap_or_else(|e| fail(&dir, &outputs, format!("log of {} ({}): {e}", node.addr, node.log.display())))
        })
        .collect();
    let survivors: Vec<&SafeLog> = (0..5).filter(|i| !victims.contains(i)).map(|i| &logs[i]).collect();
    let everyone: Vec<&SafeLog> = logs.iter().collect();
    for &v in &victims {
        assert!(logs[v].sends < casts, "{} was killed after its last cast", logs[v].me);
    }
    for log in &logs {
        assert!(log.replay.is_none(), "{}: a replay line without a log_dir", log.me);
    }

    // One group, agreed views, one tag per message. (Not virtual synchrony
    // per view: SAFE delivers a durable cast once it is accepted, which may
    // be in the next view for a cast some member delivered in the previous
    // one; the sequence below is what it promises instead.)
    let node_logs: Vec<_> = logs.iter().map(SafeLog::as_node_log).collect();
    let node_refs: Vec<_> = node_logs.iter().collect();
    check_views_agree(&node_refs).unwrap_or_else(|e| fail(&dir, &outputs, e));
    for log in &logs {
        assert!(log.views.iter().all(|v| v.primary), "{}: a non-primary view: {:?}", log.me, log.views);
    }
    check_tags_agree(&everyone).unwrap_or_else(|e| fail(&dir, &outputs, e));

    // The survivors removed both victims and finished.
    let dead: Vec<&String> = victims.iter().map(|&v| &addrs[v]).collect();
    for log in &survivors {
        assert_eq!(log.reason.as_deref(), Some("done"), "{} stopped early", log.me);
        let removed = log.views.iter().any(|v| dead.iter().all(|d| !v.members.contains(d)));
        assert!(removed, "{} never installed a view without {dead:?}", log.me);
    }

    // One sequence of durable deliveries from the first view all survivors installed.
    let common = first_common_view(&survivors).unwrap_or_else(|| fail(&dir, &outputs, "the survivors share no view".into()));
    let reference = survivors[0].sequence_from(Some(&common));
    for log in &survivors[1..] {
        let seq = log.sequence_from(Some(&common));
        if seq != reference {
            let diff = first_difference(&reference, &seq);
            fail(&dir, &outputs, format!("{} and {} delivered different sequences from view {common}: {diff}", survivors[0].me, log.me));
        }
    }

    // Uniform agreement: whatever anyone delivered, the victims included
    // just before they died, every survivor delivered (or loaded in its state).
    let mut anywhere: BTreeMap<&str, &str> = BTreeMap::new();
    for log in &logs {
        for d in &log.deliveries {
            anywhere.entry(&d.id).or_insert(&log.me);
        }
    }
    for log in &survivors {
        let missing: Vec<(&str, &str)> = anywhere.iter().filter(|(id, _)| !log.has(id)).map(|(id, at)| (*id, *at)).take(5).collect();
        if !missing.is_empty() {
            fail(&dir, &outputs, format!("{} lacks messages delivered elsewhere (id, delivered at): {missing:?}", log.me));
        }
    }
    // For the record: how many of the victims' deliveries the survivors
    // made only after the kill (the uniformity that needed the survivors' copies).
    let late: BTreeSet<&str> = survivors.iter().flat_map(|l| l.deliveries.iter().filter(|d| d.t > killed_at).map(|d| d.id.as_str())).collect();
    let victims_late = victims.iter().flat_map(|&v| logs[v].deliveries.iter()).filter(|d| late.contains(d.id.as_str())).count();
    let done_after = survivors.iter().map(|l| Duration::from_nanos(l.last_t.saturating_sub(killed_at))).max().unwrap_or_default();
    eprintln!(
        "{name}: victims delivered {:?}, survivors {:?}; {victims_late} of the victims' deliveries were made by a survivor only after the kill; survivors stopped within {done_after:?} of it",
        victims.iter().map(|&v| logs[v].deliveries.len()).collect::<Vec<_>>(),
        survivors.iter().map(|l| l.deliveries.len()).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stack of node `i` of a run with logs: its own `log_dir` under `dir`.
fn logged_stack(dir: &Path, i: usize) -> String {
    format!("FRAG:NAK:VSYNC:SAFE(log_dir={})", log_dir(dir, i).display())
}

fn log_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("safe{i}"))
}

/// The SAFE log of node `i` of group `group`.
fn safe_log(dir: &Path, i: usize, group: &str) -> PathBuf {
    log_dir(dir, i).join(format!("{group}.safelog"))
}

/// What a crash-and-restart run leaves to check.
struct Restarted {
    dir: PathBuf,
    /// The logs of the first run (all killed).
    before: Vec<SafeLog>,
    /// The logs of the restarted nodes.
    after: Vec<SafeLog>,
    outputs: Vec<(String, Output)>,
}

const RESTART_SIZE: usize = 1000;

/// Who was killed first in [`crash_and_restart`], and who coordinated.
struct Roles {
    /// The index of the node killed first (rank 2: neither the
    /// coordinator, whose death would stop deliveries until the next view,
    /// nor needed for a majority of the acceptors).
    first: usize,
    /// The index of the coordinator (rank 0).
    coordinator: usize,
}

/// Three nodes with on-disk logs cast (300 each at 100 per second); once
/// each delivered 150, the one of rank 2 is killed, then, once the other
/// two each delivered 20 messages it had not (well before a view change
/// could remove it), they are killed too (all SIGKILL). `damage` runs on
/// the logs' directory (given the checked logs of the run) before the three
/// are restarted at the same addresses with the same logs and `--casts 0`.
fn crash_and_restart(name: &str, damage: impl FnOnce(&Path, &[SafeLog], &Roles)) -> Restarted {
    let dir = scratch_dir(name);
    let addrs = free_addrs(3);
    let size = RESTART_SIZE.to_string();
    let mut nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let extra = ["--casts", "300", "--size", &size, "--rate", "100", "--linger", "10"];
            Node::start(&dir, &format!("node{i}"), name, &logged_stack(&dir, i), a, &seeds_of(&addrs, a), &extra)
        })
        .collect();
    let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for node in nodes.iter_mut() {
        node.wait_for("a view of all three", STEP, |l| has_view_of(l, &all));
    }
    for node in nodes.iter_mut() {
        node.wait_for("150 deliveries", STEP, |l| count(l, "deliver") >= 150);
    }
    let (view_id, ranks) = views_in(&nodes[0].lines()).pop().expect("a view");
    assert_eq!(ranks.len(), 3, "node 0's current view {view_id} is not of all three: {ranks:?}");
    let index = |m: &String| addrs.iter().position(|a| a == m).expect("a member of the run");
    let roles = Roles { first: index(&ranks[2]), coordinator: index(&ranks[0]) };
    let others: Vec<usize> = (0..3).filter(|i| *i != roles.first).collect();
    nodes[roles.first].kill9();
    let first_dead = delivered_ids(&nodes[roles.first].lines());
    for &i in &others {
        nodes[i].wait_for("20 deliveries the killed node lacks", STEP, |l| delivered_ids(l).difference(&first_dead).count() >= 20);
    }
    for &i in &others {
        nodes[i].kill9();
    }
    // The scenario needs the first victim still a member when the others died.
    for &i in &others {
        let (id, members) = views_in(&nodes[i].lines()).pop().expect("a view");
        assert!(members.contains(&addrs[roles.first]), "{}: view {id} removed {} before the others were killed", addrs[i], addrs[roles.first]);
    }
    let size_of = |_: &str| RESTART_SIZE;
    let before: Vec<SafeLog> = nodes
        .iter()
        .map(|n| check_safe_lines(&n.addr, &n.lines(), 300, &size_of, true).unwrap_or_else(|e| panic!("log of {} before the crash: {e}", n.addr)))
        .collect();
    for log in &before {
        assert!(log.sends < 300, "{} was killed after its last cast", log.me);
    }

    damage(&dir, &before, &roles);
    let mut again: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let extra = ["--casts", "0", "--size", &size, "--linger", "10"];
            Node::start(&dir, &format!("node{i}-restarted"), name, &logged_stack(&dir, i), a, &seeds_of(&addrs, a), &extra)
        })
        .collect();
    let outputs = finish(&mut again, FINISH).unwrap_or_else(|e| panic!("{e}; logs in {}", dir.display()));
    if outputs.iter().any(|(_, o)| !o.status.success()) {
        fail(&dir, &outputs, "a restarted node failed".into());
    }
    let after: Vec<SafeLog> = again
        .iter()
        .map(|n| {
            read_log(&n.log)
                .and_then(|lines| check_safe_lines(&n.addr, &lines, 0, &size_of, false))
                .unwrap_or_else(|e| fail(&dir, &outputs, format!("log of {} after the restart ({}): {e}", n.addr, n.log.display())))
        })
        .collect();
    Restarted { dir, before, after, outputs }
}

impl Restarted {
    fn fail(&self, what: String) -> ! {
        fail(&self.dir, &self.outputs, what)
    }

    /// Checks docs/strata-node.md's promises for a restart after a total
    /// failure; returns the replayed ids.
    fn check(&self) -> Vec<String> {
        for log in &self.after {
            if log.reason.as_deref() != Some("done") {
                self.fail(format!("{} did not finish after the restart: stop reason {:?}", log.me, log.reason));
            }
        }
        // One announced list, the same everywhere, all of it redelivered
        // (check_safe_lines: in order, with these tags, before anything else).
        let replays: Vec<&ReplayLine> =
            self.after.iter().map(|l| l.replay.as_ref().unwrap_or_else(|| self.fail(format!("{} logged no replay line", l.me)))).collect();
        let list = &replays[0].ids;
        for (log, r) in self.after.iter().zip(&replays) {
            if (&r.ids, &r.tags) != (&replays[0].ids, &replays[0].tags) {
                let diff =
                    first_difference(&replays[0].ids.iter().map(String::as_str).collect::<Vec<_>>(), &r.ids.iter().map(String::as_str).collect::<Vec<_>>());
                self.fail(format!("{} and {} announced different replays: {diff}", self.after[0].me, log.me));
            }
            let replayed = log.deliveries.iter().filter(|d| d.replay).count();
            assert_eq!(replayed, r.ids.len(), "{} redelivered {replayed} of {}", log.me, r.ids.len());
        }
        assert!(!list.is_empty(), "an empty replay after a total failure mid-stream");
        // The original tags: the same as before the crash.
        let all: Vec<&SafeLog> = self.before.iter().chain(&self.after).collect();
        check_tags_agree(&all).unwrap_or_else(|e| self.fail(e));
        // The original order: what each node delivered of the list before
        // the crash is a prefix of the list, in the same order.
        let position: BTreeMap<&str, usize> = list.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        for log in &self.before {
            let seen: Vec<&str> = log.deliveries.iter().map(|d| d.id.as_str()).filter(|id| position.contains_key(id)).collect();
            let prefix: Vec<&str> = list[..seen.len()].iter().map(String::as_str).collect();
            if seen != prefix {
                self.fail(format!("{} delivered the replayed messages in another order before the crash: {}", log.me, first_difference(&prefix, &seen)));
            }
        }
        // Every message some node delivered and another had not (so it was
        // not finished everywhere) is replayed.
        let unfinished: BTreeSet<&str> =
            self.before.iter().flat_map(|l| l.deliveries.iter().map(|d| d.id.as_str())).filter(|id| self.before.iter().any(|l| !l.has(id))).collect();
        assert!(unfinished.len() >= 20, "only {} messages were delivered somewhere and not everywhere", unfinished.len());
        let missing: Vec<&&str> = unfinished.iter().filter(|id| !position.contains_key(*id)).take(5).collect();
        if !missing.is_empty() {
            self.fail(format!("unfinished messages not replayed: {missing:?} (of {} unfinished, {} replayed)", unfinished.len(), list.len()));
        }
        eprintln!(
            "replayed {} messages; {} delivered somewhere and not everywhere; deliveries before the crash: {:?}",
            list.len(),
            unfinished.len(),
            self.before.iter().map(|l| l.deliveries.len()).collect::<Vec<_>>()
        );
        list.clone()
    }
}

#[test]
fn after_every_member_was_killed_the_restarted_members_replay_their_logs() {
    let run = crash_and_restart("safe-restart", |_, _, _| {});
    run.check();
    let _ = std::fs::remove_dir_all(&run.dir);
}

#[test]
fn a_corrupt_log_is_reported_and_its_damaged_record_not_applied() {
    let group = "safe-corrupt";
    let mut flipped: Option<(usize, PathBuf, usize, String)> = None;
    let run = crash_and_restart(group, |dir, before, roles| {
        // A message the coordinator delivered and the node killed first did
        // not: not finished everywhere, so it must be replayed. Damage the
        // body of its last record in the coordinator's log, a record with
        // others after it.
        let (damaged, first) = (roles.coordinator, roles.first);
        let victim = before[damaged].deliveries.iter().map(|d| &d.id).find(|id| !before[first].has(id)).expect("the coordinator delivered more");
        let path = safe_log(dir, damaged, group);
        let mut data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = format!("{victim}|");
        let start = data.windows(text.len()).rposition(|w| w == text.as_bytes()).unwrap_or_else(|| panic!("{victim} is not in {}", path.display()));
        let at = start + RESTART_SIZE / 2;
        assert!(at + 10 * RESTART_SIZE < data.len(), "the record of {victim} is not followed by others in {}", path.display());
        data[at] ^= 0x5a;
        std::fs::write(&path, &data).unwrap();
        flipped = Some((damaged, path, at, victim.clone()));
    });
    let (damaged, path, at, victim) = flipped.expect("the log was damaged");
    // The damaged message is replayed, and delivered with its payload
    // intact everywhere, the damaged node included (check_safe_lines checks
    // every payload): it did not apply its damaged copy.
    let list = run.check();
    assert!(list.contains(&victim), "the damaged {victim} is not replayed");
    for log in &run.after {
        assert!(log.deliveries.iter().any(|d| d.id == victim && d.replay), "{} did not redeliver {victim}", log.me);
    }
    // The damaged node said which file is damaged; the others had nothing to report.
    let stderr = |i: usize| String::from_utf8_lossy(&run.outputs[i].1.stderr).into_owned();
    let file = path.display().to_string();
    assert!(stderr(damaged).contains(&file), "node {damaged} did not report its damaged log {file}; stderr: {}", stderr(damaged));
    for i in (0..3).filter(|i| *i != damaged) {
        assert!(!stderr(i).contains(".safelog"), "node {i} reported a log problem: {}", stderr(i));
    }
    eprintln!("damaged {victim} at byte {at} of {file}; node {damaged} reported: {}", stderr(damaged).trim());
    let _ = std::fs::remove_dir_all(&run.dir);
}

#[test]
fn a_fresh_log_announces_no_replay_and_a_restart_from_it_does() {
    let dir = scratch_dir("safe-solo");
    let stack = logged_stack(&dir, 0);
    // The log records its acceptors by address: the restart must use the same one.
    let addr = free_addrs(1).remove(0);
    let mut first = Node::start(&dir, "first", "safe-solo", &stack, &addr, &[], &["--casts", "20", "--size", "100", "--linger", "10"]);
    let outputs = finish(std::slice::from_mut(&mut first), FINISH).unwrap();
    assert!(outputs[0].1.status.success(), "{}", stderrs(&outputs));
    let lines = read_log(&first.log).unwrap();
    let me = lines[0]["member"].as_str().unwrap().to_string();
    let log = check_safe_lines(&me, &lines, 20, &|_| 100, false).unwrap_or_else(|e| fail(&dir, &outputs, e));
    assert!(log.replay.is_none(), "a fresh log announced a replay");
    assert_eq!((log.deliveries.len(), log.reason.as_deref()), (20, Some("done")));
    let written = std::fs::metadata(safe_log(&dir, 0, "safe-solo")).map(|m| m.len()).unwrap_or(0);
    assert!(written > 0, "the first run wrote nothing to its SAFE log");

    // Same log, new process: a restart, so the (possibly empty) replay is logged.
    let mut second = Node::start(&dir, "second", "safe-solo", &stack, &addr, &[], &["--casts", "0", "--size", "100", "--linger", "10"]);
    let outputs = finish(std::slice::from_mut(&mut second), FINISH).unwrap();
    assert!(outputs[0].1.status.success(), "{}", stderrs(&outputs));
    let lines = read_log(&second.log).unwrap();
    let me = lines[0]["member"].as_str().unwrap().to_string();
    let again = check_safe_lines(&me, &lines, 0, &|_| 100, false).unwrap_or_else(|e| fail(&dir, &outputs, e));
    let replay = again.replay.as_ref().unwrap_or_else(|| fail(&dir, &outputs, "a restart from a written log logged no replay line".into()));
    assert_eq!(again.reason.as_deref(), Some("done"));
    // Whatever is replayed was delivered by the first run, with the same tags.
    let first_tags: BTreeMap<&str, &str> = log.deliveries.iter().map(|d| (d.id.as_str(), d.tag.as_str())).collect();
    for (id, tag) in replay.ids.iter().zip(&replay.tags) {
        assert_eq!(first_tags.get(id.as_str()), Some(&tag.as_str()), "replayed {id} {tag} was not delivered so by the first run");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a node that must fail at its start; returns its stderr.
fn refused(dir: &Path, group: &str, log_dir: &str, log: &Path) -> String {
    let stack = format!("FRAG:NAK:VSYNC:SAFE(log_dir={log_dir})");
    let args = ["node", "--group", group, "--stack", &stack, "--bind", "127.0.0.1:0", "--casts", "1", "--size", "10", "--log", log.to_str().unwrap()];
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "exit status for log_dir {log_dir}; stderr: {stderr}; files in {}", dir.display());
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("strata node: "), "{stderr}");
    stderr
}

#[test]
fn a_log_dir_that_cannot_be_used_stops_the_node_before_its_log_exists() {
    let dir = scratch_dir("safe-cli");
    // A directory under a regular file cannot be created.
    let file = dir.join("a-file");
    std::fs::write(&file, b"not a directory\n").unwrap();
    let bad_dir = file.join("logs");
    let log = dir.join("node.jsonl");
    let stderr = refused(&dir, "safe-cli", bad_dir.to_str().unwrap(), &log);
    assert!(stderr.contains(bad_dir.to_str().unwrap()), "the reason should name {}: {stderr}", bad_dir.display());
    assert!(!log.exists(), "the node log was created");

    // A log locked by another process (this one); an existing node log is left as it was.
    let locked_dir = dir.join("locked");
    std::fs::create_dir_all(&locked_dir).unwrap();
    let locked = locked_dir.join("safe-cli.safelog");
    let holder = std::fs::OpenOptions::new().create(true).append(true).open(&locked).unwrap();
    holder.lock().unwrap();
    std::fs::write(&log, b"an earlier run\n").unwrap();
    let stderr = refused(&dir, "safe-cli", locked_dir.to_str().unwrap(), &log);
    assert!(stderr.contains(locked.to_str().unwrap()), "the reason should name {}: {stderr}", locked.display());
    assert_eq!(std::fs::read(&log).unwrap(), b"an earlier run\n", "the node log was touched");
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checker catches what the tests rely on it for.
#[test]
fn the_safe_log_checker_catches_broken_logs() {
    use serde_json::json;
    use strata::codec::fnv1a64;
    use strata::transport::payload;
    let (a, b) = ("127.0.0.1:7001", "127.0.0.1:7002");
    let deliver = |t: u64, from: &str, k: u64, tag: &str, replay: bool| {
        let body = payload::make(from, k, 20);
        let mut l = json!({"ev": "deliver", "t": t, "view": "1@127.0.0.1:7001", "from": from, "id": format!("{from}:{k}"), "len": body.len(), "fnv": format!("{:016x}", fnv1a64(&body)), "tag": tag});
        if replay {
            l["replay"] = json!(true);
        }
        l
    };
    let base = vec![
        json!({"ev": "start", "t": 1, "member": a, "incarnation": 9, "stack": "FRAG:NAK:VSYNC:SAFE", "transport": "udp"}),
        json!({"ev": "view", "t": 2, "view": "1@127.0.0.1:7001", "members": [a, b], "primary": true}),
        json!({"ev": "replay", "t": 3, "view": "1@127.0.0.1:7001", "ids": [format!("{b}:5"), format!("{b}:6")], "tags": [format!("{b}#3/4/6"), format!("{b}#3/4/7")]}),
        deliver(4, b, 5, &format!("{b}#3/4/6"), true),
        deliver(5, b, 6, &format!("{b}#3/4/7"), true),
        json!({"ev": "stats", "t": 6, "layers": {}}),
        json!({"ev": "stop", "t": 7, "delivered": 2, "reason": "done"}),
    ];
    let check = |lines: &[Value]| check_safe_lines(a, lines, 0, &|_| 20, false);
    let good = check(&base).expect("a good log");
    assert_eq!(good.replay.as_ref().map(|r| r.ids.len()), Some(2));
    let broken = |i: usize, line: Value| {
        let mut lines = base.clone();
        lines[i] = line;
        check(&lines).expect_err("a broken log passed")
    };
    // Replayed out of the announced order, or with another tag.
    broken(3, deliver(4, b, 6, &format!("{b}#3/4/7"), true));
    broken(3, deliver(4, b, 5, &format!("{b}#3/4/9"), true));
    // Not marked as a replay while the announced ones are outstanding.
    broken(3, deliver(4, b, 5, &format!("{b}#3/4/6"), false));
    // A damaged payload.
    let mut damaged = deliver(4, b, 5, &format!("{b}#3/4/6"), true);
    damaged["fnv"] = json!("0000000000000000");
    broken(3, damaged);
    // A delivery without a tag.
    let mut untagged = deliver(4, b, 5, &format!("{b}#3/4/6"), true);
    untagged.as_object_mut().unwrap().remove("tag");
    broken(3, untagged);
    // Done with a replayed delivery missing.
    let mut short = base.clone();
    short.remove(4);
    short[5]["delivered"] = json!(1);
    assert!(check(&short).is_err());
    // A second replay line.
    let mut twice = base.clone();
    twice.insert(3, base[2].clone());
    assert!(check(&twice).is_err());
    // Tags split into sender, address and id.
    assert_eq!(split_tag("127.0.0.1:7001#1700000/4/12"), Some(("127.0.0.1:7001#1700000", "127.0.0.1:7001", 12)));
    assert_eq!(split_tag("[::1]:7001#5/1/1"), Some(("[::1]:7001#5", "[::1]:7001", 1)));
    assert_eq!(split_tag("127.0.0.1:7001/4/12"), None);
    assert_eq!(split_tag("127.0.0.1:7001#1/4/12/9"), None);
    // Two logs that give one message two tags.
    let mut other = base.clone();
    other[2]["tags"][0] = json!(format!("{b}#3/4/1"));
    other[3] = deliver(4, b, 5, &format!("{b}#3/4/1"), true);
    let other = check(&other).expect("a good log on its own");
    assert!(check_tags_agree(&[&good, &other]).is_err());
}
