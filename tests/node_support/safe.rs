//! Checking the logs of `strata node` runs on a SAFE stack
//! (docs/strata-node.md, "With SAFE"): each log on its own (every delivery
//! a durable one with its tag, replayed deliveries exactly as announced by
//! the `replay` line, per-sender FIFO for the casts of the run), and helpers
//! to compare the logs of a run (one tag per message, the first view all
//! installed, where two sequences differ; tests/node_safe.rs does the rest).

use super::vsync::{n, s, NodeLog, ViewLine};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use strata::codec::fnv1a64;
use strata::transport::payload;

/// One `deliver` line of a SAFE run.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// Its index among the log's lines.
    pub line: usize,
    pub t: u64,
    pub view: String,
    pub id: String,
    pub tag: String,
    pub replay: bool,
}

/// The `replay` line.
#[derive(Clone, Debug)]
pub struct ReplayLine {
    /// Its index among the log's lines.
    pub line: usize,
    pub ids: Vec<String>,
    pub tags: Vec<String>,
}

/// What one node's log of a SAFE run says, once checked.
#[derive(Debug)]
pub struct SafeLog {
    pub me: String,
    pub views: Vec<ViewLine>,
    /// For each view in `views` (same index): the ids delivered in it, in order.
    pub delivered_in: Vec<Vec<String>>,
    pub deliveries: Vec<Delivered>,
    pub replay: Option<ReplayLine>,
    /// The `state` lines' counts, in order.
    pub states: Vec<BTreeMap<String, u64>>,
    pub sends: u64,
    /// The stop reason (`None` for a killed node).
    pub reason: Option<String>,
    pub last_t: u64,
}

impl SafeLog {
    /// The same log as the membership checks of tests/node_support/vsync.rs take it.
    pub fn as_node_log(&self) -> NodeLog {
        NodeLog {
            me: self.me.clone(),
            views: self.views.clone(),
            delivered_in: self.delivered_in.clone(),
            delivered: self.deliveries.iter().map(|d| d.id.clone()).collect(),
            states: self.states.clone(),
            sends: self.sends,
            reason: self.reason.clone(),
            last_t: self.last_t,
        }
    }

    /// The ids delivered from the `view` line of `view` on (all of them if
    /// `view` is `None`), in order.
    pub fn sequence_from(&self, view: Option<&str>) -> Vec<&str> {
        let from = match view {
            Some(id) => match self.views.iter().position(|v| v.id == id) {
                Some(i) => i,
                None => return Vec::new(),
            },
            None => 0,
        };
        self.delivered_in[from.min(self.delivered_in.len())..].iter().flatten().map(String::as_str).collect()
    }

    /// Whether this node has message `id` of the run: delivered it, or
    /// loaded a state that counts it (it was delivered before the node joined).
    pub fn has(&self, id: &str) -> bool {
        if self.deliveries.iter().any(|d| d.id == id && !d.replay) {
            return true;
        }
        let Some((member, k)) = payload::split_id(id) else { return false };
        self.states.iter().any(|s| s.get(member).is_some_and(|n| k < *n))
    }
}

fn strings(l: &Value, key: &str) -> Result<Vec<String>, String> {
    let list = l[key].as_array().ok_or_else(|| format!("`{key}` is not a list in {l}"))?;
    list.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("`{key}` holds a non-string in {l}"))).collect()
}

/// Splits a tag `addr#incarnation/view/id` into (sender `addr#incarnation`, address, id).
pub fn split_tag(tag: &str) -> Option<(&str, &str, u64)> {
    let hash = tag.rfind('#')?;
    let mut parts = tag[hash + 1..].split('/');
    let incarnation = parts.next()?;
    incarnation.parse::<u64>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    let id = parts.next()?.parse::<u64>().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((&tag[..hash + 1 + incarnation.len()], &tag[..hash], id))
}

/// Checks one node's lines of a SAFE run: `start` first, `stats` and
/// `stop` last (unless `killed`), `t` in order; views hold this node and a
/// change that keeps it is announced by `block`; every delivery names the
/// current view, carries a tag whose sender is its `from`, and an intact
/// payload (`size_of(sender)` bytes); per tag sender, tag ids increase. At
/// most one `replay` line, before every delivery; the deliveries marked
/// `replay` are its messages, in its order, with its tags, and come before
/// any other delivery. The other deliveries are the casts of this run: from
/// each sender, exactly once and in order, continuing where a loaded state
/// ends, fewer than `casts`, own casts after their `send` line. (Not: from
/// a member of the current view. A durable cast of a member that died is
/// delivered after the view without it, and not necessarily in the view it
/// was cast in, so there is no per-view check either.)
pub fn check_safe_lines(me: &str, lines: &[Value], casts: u64, size_of: &dyn Fn(&str) -> usize, killed: bool) -> Result<SafeLog, String> {
    let ev = |l: &Value| l["ev"].as_str().unwrap_or("").to_string();
    let first = lines.first().ok_or("an empty log")?;
    if ev(first) != "start" || s(first, "member")? != me {
        return Err(format!("bad first line {first}"));
    }
    let mut log = SafeLog {
        me: me.to_string(),
        views: Vec::new(),
        delivered_in: Vec::new(),
        deliveries: Vec::new(),
        replay: None,
        states: Vec::new(),
        sends: 0,
        reason: None,
        last_t: 0,
    };
    let mut t_prev = 0;
    let mut next_from: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_tag_id: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent: BTreeSet<String> = BTreeSet::new();
    let mut replayed_ids: BTreeSet<String> = BTreeSet::new();
    let mut replayed = 0usize;
    let mut blocked_in: Option<String> = None;
    let mut stats_seen = false;
    for (i, l) in lines.iter().enumerate() {
        let t = n(l, "t")?;
        if t < t_prev {
            return Err(format!("t goes back at {l}"));
        }
        t_prev = t;
        if log.reason.is_some() {
            return Err(format!("a line after stop: {l}"));
        }
        if stats_seen && ev(l) != "stop" {
            return Err(format!("a line between stats and stop: {l}"));
        }
        let current = log.views.last().map(|v| v.id.clone());
        match ev(l).as_str() {
            "start" if i == 0 => {}
            "view" => {
                let members = strings(l, "members")?;
                if !members.iter().any(|m| m == me) {
                    return Err(format!("a view without this node: {l}"));
                }
                let primary = l["primary"].as_bool().ok_or_else(|| format!("no boolean `primary`: {l}"))?;
                let id = s(l, "view")?.to_string();
                if log.views.iter().any(|v| v.id == id) {
                    return Err(format!("view {id} installed twice: {l}"));
                }
                if let Some(old) = &current {
                    if blocked_in.as_deref() != Some(old.as_str()) {
                        return Err(format!("view {id} follows {old} without a block line naming {old}"));
                    }
                }
                blocked_in = None;
                log.views.push(ViewLine { t, id, members, primary });
                log.delivered_in.push(Vec::new());
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
                    let next = next_from.entry(m.clone()).or_insert(0);
                    *next = (*next).max(*c);
                }
                log.states.push(counts);
            }
            "send" => {
                let id = s(l, "id")?;
                if id != format!("{me}:{}", log.sends) {
                    return Err(format!("send {} expected, found {l}", log.sends));
                }
                sent.insert(id.to_string());
                log.sends += 1;
            }
            "replay" => {
                if log.replay.is_some() {
                    return Err(format!("a second replay line: {l}"));
                }
                if !log.deliveries.is_empty() {
                    return Err(format!("the replay line comes after {} deliveries: {l}", log.deliveries.len()));
                }
                let (ids, tags) = (strings(l, "ids")?, strings(l, "tags")?);
                if ids.len() != tags.len() {
                    return Err(format!("{} ids but {} tags: {l}", ids.len(), tags.len()));
                }
                for (id, tag) in ids.iter().zip(&tags) {
                    let (member, _) = payload::split_id(id).ok_or_else(|| format!("replayed id {id} does not parse: {l}"))?;
                    let (_, addr, _) = split_tag(tag).ok_or_else(|| format!("tag {tag} does not parse: {l}"))?;
                    if addr != member {
                        return Err(format!("replayed {id} has the tag {tag} of another sender: {l}"));
                    }
                }
                let unique: BTreeSet<&String> = ids.iter().collect();
                if unique.len() != ids.len() {
                    return Err(format!("the replay names a message twice: {l}"));
                }
                log.replay = Some(ReplayLine { line: i, ids, tags });
            }
            "deliver" => {
                let id = s(l, "id")?.to_string();
                let from = s(l, "from")?;
                let tag = s(l, "tag").map_err(|_| format!("a delivery without a tag (not a SAFE delivery): {l}"))?.to_string();
                let again = match l.get("replay") {
                    None => false,
                    Some(Value::Bool(true)) => true,
                    Some(other) => return Err(format!("`replay` is {other}, expected true or absent: {l}")),
                };
                let (member, k) = payload::split_id(&id).ok_or_else(|| format!("id does not parse: {l}"))?;
                if member != from {
                    return Err(format!("id names another sender than `from`: {l}"));
                }
                let (sender, tag_addr, tag_id) = split_tag(&tag).ok_or_else(|| format!("tag does not parse: {l}"))?;
                if tag_addr != from {
                    return Err(format!("the tag names another sender than `from`: {l}"));
                }
                let v = s(l, "view")?;
                let Some(cur) = &current else { return Err(format!("a delivery before any view: {l}")) };
                if v != cur {
                    return Err(format!("delivery names view {v}, the current view is {cur}: {l}"));
                }
                let body = payload::make(member, k, size_of(member));
                if n(l, "len")? != body.len() as u64 || s(l, "fnv")? != format!("{:016x}", fnv1a64(&body)) {
                    return Err(format!("len or fnv does not match the payload (a damaged message delivered?): {l}"));
                }
                if let Some(prev) = last_tag_id.insert(sender.to_string(), tag_id) {
                    if tag_id <= prev {
                        return Err(format!("tag id {tag_id} of {sender} after {prev}: not FIFO: {l}"));
                    }
                }
                let announced = log.replay.as_ref().map(|r| r.ids.len()).unwrap_or(0);
                if again {
                    let Some(replay) = &log.replay else { return Err(format!("a replayed delivery without a replay line: {l}")) };
                    if replayed >= replay.ids.len() {
                        return Err(format!("more replayed deliveries than the {} announced: {l}", replay.ids.len()));
                    }
                    if (&replay.ids[replayed], &replay.tags[replayed]) != (&id, &tag) {
                        return Err(format!("replayed delivery {replayed} should be {} {}: {l}", replay.ids[replayed], replay.tags[replayed]));
                    }
                    replayed += 1;
                    replayed_ids.insert(id.clone());
                } else {
                    if replayed < announced {
                        return Err(format!("a new delivery while {} announced ones are not replayed yet: {l}", announced - replayed));
                    }
                    let expected = next_from.entry(from.to_string()).or_insert(0);
                    if k != *expected {
                        return Err(format!("from {from}: expected k={expected} (FIFO, no loss, no duplicate, continuing the state), got {l}"));
                    }
                    *expected += 1;
                    if k >= casts {
                        return Err(format!("more than {casts} casts from {from}: {l}"));
                    }
                    if member == me && !sent.contains(&id) {
                        return Err(format!("own cast delivered before its send line: {l}"));
                    }
                }
                log.delivered_in.last_mut().expect("a view").push(id.clone());
                log.deliveries.push(Delivered { line: i, t, view: v.to_string(), id, tag, replay: again });
            }
            "stats" if !killed => stats_seen = true,
            "stop" if !killed && stats_seen => {
                if n(l, "delivered")? != log.deliveries.len() as u64 {
                    return Err(format!("stop says {} delivered, the log has {}", n(l, "delivered")?, log.deliveries.len()));
                }
                log.reason = Some(s(l, "reason")?.to_string());
            }
            // A layer's problem (ENCRYPT's refused join, SAFE's damaged log).
            "problem" => {
                s(l, "layer")?;
                s(l, "what")?;
            }
            other => return Err(format!("unexpected line `{other}` at {}: {l}", i + 1)),
        }
    }
    if !killed {
        if log.reason.is_none() {
            return Err("no stats and stop at the end".into());
        }
        let announced = log.replay.as_ref().map(|r| r.ids.len()).unwrap_or(0);
        if log.reason.as_deref() == Some("done") && replayed != announced {
            return Err(format!("done after {replayed} of the {announced} announced replayed deliveries"));
        }
    }
    log.last_t = t_prev;
    Ok(log)
}

/// One message, one tag: every log that delivered or replayed `id` gives it
/// the same tag. Returns the tag of each id.
pub fn check_tags_agree(logs: &[&SafeLog]) -> Result<BTreeMap<String, String>, String> {
    let mut tags: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut note = |id: &str, tag: &str, who: &str| -> Result<(), String> {
        match tags.get(id) {
            Some((t, at)) if t != tag => Err(format!("{id} has tag {t} at {at} but {tag} at {who}")),
            Some(_) => Ok(()),
            None => {
                tags.insert(id.to_string(), (tag.to_string(), who.to_string()));
                Ok(())
            }
        }
    };
    for log in logs {
        for d in &log.deliveries {
            note(&d.id, &d.tag, &log.me)?;
        }
        if let Some(r) = &log.replay {
            for (id, tag) in r.ids.iter().zip(&r.tags) {
                note(id, tag, &log.me)?;
            }
        }
    }
    Ok(tags.into_iter().map(|(id, (tag, _))| (id, tag)).collect())
}

/// The first view (in the first log's order) that every log installed.
pub fn first_common_view(logs: &[&SafeLog]) -> Option<String> {
    let first = logs.first()?;
    first.views.iter().map(|v| v.id.clone()).find(|id| logs.iter().all(|l| l.views.iter().any(|v| &v.id == id)))
}

/// Where two delivery sequences first differ, for a failure message.
pub fn first_difference(a: &[&str], b: &[&str]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "at position {i}: {} vs {} (context {:?} vs {:?})",
            a[i],
            b[i],
            &a[i.saturating_sub(2)..(i + 3).min(a.len())],
            &b[i.saturating_sub(2)..(i + 3).min(b.len())]
        ),
        None => format!("one is a prefix of the other ({} vs {} deliveries)", a.len(), b.len()),
    }
}
