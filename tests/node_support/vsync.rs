//! Running `strata node` with a membership layer (VSYNC) and checking its
//! logs: each log on its own (docs/strata-node.md, "With a membership
//! layer"), and the logs of one run against each other (agreed views,
//! virtual synchrony).

use super::{read_log, strata};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use strata::codec::fnv1a64;
use strata::transport::payload;

/// The host's `CLOCK_MONOTONIC` in nanoseconds: the clock of the logs' `t`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One `strata node` process of a test.
pub struct Node {
    /// Its address (member id).
    pub addr: String,
    /// Its log.
    pub log: PathBuf,
    /// The process (taken when it is reaped).
    pub child: Option<Child>,
}

impl Node {
    /// Starts `strata node --group GROUP --stack STACK --bind ADDR [--peers SEEDS] --log DIR/NAME.jsonl EXTRA...`.
    pub fn start(dir: &Path, name: &str, group: &str, stack: &str, addr: &str, seeds: &[&str], extra: &[&str]) -> Node {
        let log = dir.join(format!("{name}.jsonl"));
        let mut args = vec!["node", "--group", group, "--stack", stack, "--transport", "udp", "--bind", addr];
        let seeds = seeds.join(",");
        if !seeds.is_empty() {
            args.extend(["--peers", &seeds]);
        }
        args.extend(["--log", log.to_str().expect("utf-8 path")]);
        args.extend(extra);
        let child = strata().args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start a node");
        Node { addr: addr.to_string(), log, child: Some(child) }
    }

    /// The log's complete lines so far (a line being written is left out).
    pub fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end + 1],
            None => "",
        };
        complete.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits until `cond` holds for the log's lines, polling; panics with
    /// the log's tail after `limit`, or if the node exits first.
    pub fn wait_for(&mut self, what: &str, limit: Duration, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.lines();
            if cond(&lines) {
                return lines;
            }
            let exited = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                let tail: Vec<String> = lines.iter().rev().take(8).rev().map(Value::to_string).collect();
                let how = if exited { "exited" } else { "timed out" };
                panic!("{}: {how} waiting for {what}; last lines:\n{}", self.addr, tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL; returns `CLOCK_MONOTONIC` just before the signal went out.
    pub fn kill9(&mut self) -> u64 {
        let mut child = self.child.take().expect("a running node");
        let t = monotonic_ns();
        // SAFETY: kill(2) of our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) }, 0);
        let _ = child.wait();
        t
    }
}

/// Waits for every node still running (killing all of them if `limit`
/// passes first); returns (address, output) of each.
pub fn finish(nodes: &mut [Node], limit: Duration) -> Result<Vec<(String, std::process::Output)>, String> {
    let (addrs, children): (Vec<String>, Vec<Child>) = nodes.iter_mut().filter_map(|n| n.child.take().map(|c| (n.addr.clone(), c))).unzip();
    let outputs = super::wait_all(children, limit)?;
    Ok(addrs.into_iter().zip(outputs).collect())
}

/// The view lines of a log: (id, members) of each `view` line.
pub fn views_in(lines: &[Value]) -> Vec<(String, Vec<String>)> {
    lines
        .iter()
        .filter(|l| l["ev"] == "view")
        .map(|l| {
            let members = l["members"].as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
            (l["view"].as_str().unwrap_or("").to_string(), members)
        })
        .collect()
}

/// Whether the log has a view line whose members are exactly `members` (any order).
pub fn has_view_of(lines: &[Value], members: &[&str]) -> bool {
    let want: BTreeSet<&str> = members.iter().copied().collect();
    views_in(lines).iter().any(|(_, m)| m.iter().map(String::as_str).collect::<BTreeSet<_>>() == want)
}

/// How many lines of kind `ev` the log has.
pub fn count(lines: &[Value], ev: &str) -> usize {
    lines.iter().filter(|l| l["ev"] == ev).count()
}

/// A view line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewLine {
    pub t: u64,
    pub id: String,
    pub members: Vec<String>,
    pub primary: bool,
}

/// What one node's log says, once checked.
#[derive(Debug)]
pub struct NodeLog {
    pub me: String,
    pub views: Vec<ViewLine>,
    /// For each view in `views` (same index): the ids delivered in it, in order.
    pub delivered_in: Vec<Vec<String>>,
    /// Every delivered id.
    pub delivered: Vec<String>,
    /// The `state` lines' counts, in order.
    pub states: Vec<BTreeMap<String, u64>>,
    /// Sends logged.
    pub sends: u64,
    /// The stop reason (`None` for a killed node).
    pub reason: Option<String>,
    /// `t` of the last line.
    pub last_t: u64,
}

impl NodeLog {
    /// The index of view `id` in `views`.
    pub fn view_index(&self, id: &str) -> Option<usize> {
        self.views.iter().position(|v| v.id == id)
    }
}

/// Field `key` of a log line, as text.
pub fn s<'a>(l: &'a Value, key: &str) -> Result<&'a str, String> {
    l[key].as_str().ok_or_else(|| format!("`{key}` is not a string in {l}"))
}

/// Field `key` of a log line, as an integer.
pub fn n(l: &Value, key: &str) -> Result<u64, String> {
    l[key].as_u64().ok_or_else(|| format!("`{key}` is not an integer in {l}"))
}

/// Reads and checks the log of `node`. `killed`: the node was killed, so
/// its log may end anywhere (no stats or stop).
pub fn check_node(node: &Node, casts: u64, size: usize, killed: bool) -> Result<NodeLog, String> {
    let lines = if killed { Ok(node.lines()) } else { read_log(&node.log) };
    let lines = lines?;
    check_lines(&node.addr, &lines, casts, size, killed).map_err(|e| format!("log of {} ({}): {e}", node.addr, node.log.display()))
}

/// The lines every membership log has, read in order: `start` first,
/// `stats` and `stop` last (unless `killed`), `t` in order; views that
/// hold this node, each change that keeps it announced by a `block` line
/// naming the old view; `block` and `state` lines naming the current view;
/// own `send` lines in order; `problem` lines. What a checker adds
/// (deliveries, SAFE's replay) it reads in `other`, which is given every
/// other line and must record each delivery in `delivered_in`.
#[derive(Debug, Default)]
pub struct Walk {
    pub me: String,
    pub views: Vec<ViewLine>,
    /// For each view in `views` (same index): the ids delivered in it, in order.
    pub delivered_in: Vec<Vec<String>>,
    /// The `state` lines' counts, in order.
    pub states: Vec<BTreeMap<String, u64>>,
    /// Per sender, the next cast expected (where a loaded state ends, then
    /// one past the last delivered).
    pub next_from: BTreeMap<String, u64>,
    /// Own cast ids with a `send` line so far.
    pub sent: BTreeSet<String>,
    pub sends: u64,
    /// The stop reason (`None` for a killed node).
    pub reason: Option<String>,
    /// `t` of the last line.
    pub last_t: u64,
}

impl Walk {
    /// The id of the current view.
    pub fn current(&self) -> Option<&str> {
        self.views.last().map(|v| v.id.as_str())
    }

    /// Checks that a delivery line names the current view.
    pub fn check_view_of(&self, l: &Value) -> Result<(), String> {
        let v = s(l, "view")?;
        let Some(cur) = self.current() else { return Err(format!("a delivery before any view: {l}")) };
        if v != cur {
            return Err(format!("delivery names view {v}, the current view is {cur}: {l}"));
        }
        Ok(())
    }

    /// Checks that a cast of `from` numbered `k` continues its sender's
    /// sequence (FIFO, no loss, no duplicate, continuing the state), is one
    /// of its `casts`, and, if it is this node's own, was sent first.
    pub fn check_next_cast(&mut self, from: &str, k: u64, casts: u64, l: &Value) -> Result<(), String> {
        let expected = self.next_from.entry(from.to_string()).or_insert(0);
        if k != *expected {
            return Err(format!("from {from}: expected k={expected} (FIFO, no loss, no duplicate, continuing the state), got {l}"));
        }
        *expected += 1;
        if k >= casts {
            return Err(format!("more than {casts} casts from {from}: {l}"));
        }
        if from == self.me && !self.sent.contains(&format!("{from}:{k}")) {
            return Err(format!("own cast delivered before its send line: {l}"));
        }
        Ok(())
    }

    /// Reads `lines`; see the type's docs.
    pub fn run(me: &str, lines: &[Value], killed: bool, mut other: impl FnMut(&mut Walk, usize, &Value) -> Result<(), String>) -> Result<Walk, String> {
        let ev = |l: &Value| l["ev"].as_str().unwrap_or("").to_string();
        let first = lines.first().ok_or("an empty log")?;
        if ev(first) != "start" || s(first, "member")? != me {
            return Err(format!("bad first line {first}"));
        }
        let mut w = Walk { me: me.to_string(), ..Walk::default() };
        let mut blocked_in: Option<String> = None;
        let mut stats_seen = false;
        for (i, l) in lines.iter().enumerate() {
            let t = n(l, "t")?;
            if t < w.last_t {
                return Err(format!("t goes back at {l}"));
            }
            w.last_t = t;
            if w.reason.is_some() {
                return Err(format!("a line after stop: {l}"));
            }
            if stats_seen && ev(l) != "stop" {
                return Err(format!("a line between stats and stop: {l}"));
            }
            let current = w.current().map(str::to_string);
            match ev(l).as_str() {
                "start" if i == 0 => {}
                "view" => {
                    let list = l["members"].as_array().ok_or_else(|| format!("`members` is not a list in {l}"))?;
                    let members = list
                        .iter()
                        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("`members` holds a non-string in {l}")))
                        .collect::<Result<Vec<_>, _>>()?;
                    if !members.iter().any(|m| m == me) {
                        return Err(format!("a view without this node: {l}"));
                    }
                    let primary = l["primary"].as_bool().ok_or_else(|| format!("no boolean `primary`: {l}"))?;
                    let id = s(l, "view")?.to_string();
                    if w.views.iter().any(|v| v.id == id) {
                        return Err(format!("view {id} installed twice: {l}"));
                    }
                    // A change that keeps this node was announced by a block.
                    if let Some(old) = &current {
                        if blocked_in.as_deref() != Some(old.as_str()) {
                            return Err(format!("view {id} follows {old} without a block line naming {old}"));
                        }
                    }
                    blocked_in = None;
                    w.views.push(ViewLine { t, id, members, primary });
                    w.delivered_in.push(Vec::new());
                }
                "block" => {
                    let v = s(l, "view")?;
                    if current.as_deref() != Some(v) {
                        return Err(format!("block names {v}, the current view is {current:?}: {l}"));
                    }
                    blocked_in = Some(v.to_string());
                }
                "state" => {
                    let v = s(l, "view")?;
                    if current.as_deref() != Some(v) {
                        return Err(format!("state names {v}, the current view is {current:?}: {l}"));
                    }
                    let counts: BTreeMap<String, u64> = serde_json::from_value(l["counts"].clone()).map_err(|e| format!("bad counts ({e}): {l}"))?;
                    for (m, c) in &counts {
                        let next = w.next_from.entry(m.clone()).or_insert(0);
                        *next = (*next).max(*c);
                    }
                    w.states.push(counts);
                }
                "send" => {
                    let id = s(l, "id")?;
                    if id != format!("{me}:{}", w.sends) {
                        return Err(format!("send {} expected, found {l}", w.sends));
                    }
                    w.sent.insert(id.to_string());
                    w.sends += 1;
                }
                "stats" if !killed => stats_seen = true,
                "stop" if !killed && stats_seen => {
                    let delivered: usize = w.delivered_in.iter().map(Vec::len).sum();
                    if n(l, "delivered")? != delivered as u64 {
                        return Err(format!("stop says {} delivered, the log has {delivered}", n(l, "delivered")?));
                    }
                    w.reason = Some(s(l, "reason")?.to_string());
                }
                // A layer's problem (ENCRYPT's refused join, SAFE's damaged log).
                "problem" => {
                    s(l, "layer")?;
                    s(l, "what")?;
                }
                "deliver" if w.views.is_empty() => return Err(format!("a delivery before any view: {l}")),
                _ => other(&mut w, i, l)?,
            }
        }
        if !killed && w.reason.is_none() {
            return Err("no stats and stop at the end".into());
        }
        Ok(w)
    }
}

/// Checks one node's lines against docs/strata-node.md for a membership
/// stack: the lines every membership log has ([`Walk`]), and deliveries
/// that name the current view and a sender in it, carry an intact payload,
/// and continue each sender's casts exactly where the loaded state (if
/// any) ends, without a gap or duplicate (per-sender FIFO, no loss,
/// exactly once), own casts after their send line.
pub fn check_lines(me: &str, lines: &[Value], casts: u64, size: usize, killed: bool) -> Result<NodeLog, String> {
    let mut delivered = Vec::new();
    let w = Walk::run(me, lines, killed, |w, i, l| {
        if l["ev"].as_str() != Some("deliver") {
            return Err(format!("unexpected line `{}` at {}: {l}", l["ev"], i + 1));
        }
        let id = s(l, "id")?.to_string();
        let from = s(l, "from")?;
        let (member, k) = payload::split_id(&id).ok_or_else(|| format!("id does not parse: {l}"))?;
        if member != from {
            return Err(format!("id names another sender than `from`: {l}"));
        }
        w.check_view_of(l)?;
        if !w.views.last().is_some_and(|v| v.members.iter().any(|m| m == from)) {
            return Err(format!("a delivery from a member of another view: {l}"));
        }
        w.check_next_cast(from, k, casts, l)?;
        let body = payload::make(member, k, size);
        if n(l, "len")? != body.len() as u64 || s(l, "fnv")? != format!("{:016x}", fnv1a64(&body)) {
            return Err(format!("len or fnv does not match the payload: {l}"));
        }
        w.delivered_in.last_mut().expect("a view").push(id.clone());
        delivered.push(id);
        Ok(())
    })?;
    Ok(NodeLog { me: w.me, views: w.views, delivered_in: w.delivered_in, delivered, states: w.states, sends: w.sends, reason: w.reason, last_t: w.last_t })
}

/// Views with the same id have the same members (in the same rank order)
/// and primary flag at every node.
pub fn check_views_agree(logs: &[&NodeLog]) -> Result<(), String> {
    let mut seen: BTreeMap<&str, (&ViewLine, &str)> = BTreeMap::new();
    for log in logs {
        for v in &log.views {
            match seen.get(v.id.as_str()) {
                Some((w, at)) if (&w.members, w.primary) != (&v.members, v.primary) => {
                    return Err(format!(
                        "view {}: {:?} (primary {}) at {}, {:?} (primary {}) at {}",
                        v.id, w.members, w.primary, at, v.members, v.primary, log.me
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(&v.id, (v, &log.me));
                }
            }
        }
    }
    Ok(())
}

/// Virtual synchrony: two nodes that both installed view V and then both
/// installed the same next view delivered the same messages in V.
pub fn check_virtual_synchrony(logs: &[&NodeLog]) -> Result<usize, String> {
    let mut compared = 0;
    for (i, a) in logs.iter().enumerate() {
        for b in &logs[i + 1..] {
            for (ia, v) in a.views.iter().enumerate() {
                let Some(ib) = b.view_index(&v.id) else { continue };
                let (Some(na), Some(nb)) = (a.views.get(ia + 1), b.views.get(ib + 1)) else { continue };
                if na.id != nb.id {
                    continue;
                }
                let sa: BTreeSet<&String> = a.delivered_in[ia].iter().collect();
                let sb: BTreeSet<&String> = b.delivered_in[ib].iter().collect();
                if sa != sb {
                    let only_a: Vec<_> = sa.difference(&sb).take(5).collect();
                    let only_b: Vec<_> = sb.difference(&sa).take(5).collect();
                    return Err(format!(
                        "{} and {} both went from view {} to {} but delivered different messages in {}: {} vs {} ({only_a:?} only at the first, {only_b:?} only at the second)",
                        a.me,
                        b.me,
                        v.id,
                        na.id,
                        v.id,
                        sa.len(),
                        sb.len()
                    ));
                }
                compared += 1;
            }
        }
    }
    Ok(compared)
}

/// While two nodes are both members, they install the same views: for each
/// pair, the views between the first and the last one both installed are
/// the same sequence at both.
pub fn check_same_view_sequences(logs: &[&NodeLog]) -> Result<(), String> {
    for (i, a) in logs.iter().enumerate() {
        for b in &logs[i + 1..] {
            let common: Vec<&str> = a.views.iter().map(|v| v.id.as_str()).filter(|id| b.view_index(id).is_some()).collect();
            let (Some(first), Some(last)) = (common.first(), common.last()) else { continue };
            let span = |log: &NodeLog| -> Vec<String> {
                let (f, l) = (log.view_index(first).unwrap(), log.view_index(last).unwrap());
                log.views[f..=l].iter().map(|v| v.id.clone()).collect()
            };
            if span(a) != span(b) {
                return Err(format!("{} installed {:?} but {} installed {:?} over the same span", a.me, span(a), b.me, span(b)));
            }
        }
    }
    Ok(())
}
