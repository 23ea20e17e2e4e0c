//! Checking the logs of `strata node` runs on a SAFE stack
//! (docs/strata-node.md, "With SAFE"): each log on its own (every delivery
//! a durable one with its tag, replayed deliveries exactly as announced by
//! the `replay` line, per-sender FIFO for the casts of the run), and helpers
//! to compare the logs of a run (one tag per message, the first view all
//! installed, where two sequences differ; tests/node_safe.rs does the rest).

use super::vsync::{n, s, NodeLog, ViewLine, Walk};
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
    let mut deliveries: Vec<Delivered> = Vec::new();
    let mut replay: Option<ReplayLine> = None;
    let mut last_tag_id: BTreeMap<String, u64> = BTreeMap::new();
    let mut replayed = 0usize;
    let w = Walk::run(me, lines, killed, |w, i, l| match l["ev"].as_str().unwrap_or("") {
        "replay" => {
            if replay.is_some() {
                return Err(format!("a second replay line: {l}"));
            }
            if !deliveries.is_empty() {
                return Err(format!("the replay line comes after {} deliveries: {l}", deliveries.len()));
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
            replay = Some(ReplayLine { line: i, ids, tags });
            Ok(())
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
            w.check_view_of(l)?;
            let body = payload::make(member, k, size_of(member));
            if n(l, "len")? != body.len() as u64 || s(l, "fnv")? != format!("{:016x}", fnv1a64(&body)) {
                return Err(format!("len or fnv does not match the payload (a damaged message delivered?): {l}"));
            }
            if let Some(prev) = last_tag_id.insert(sender.to_string(), tag_id) {
                if tag_id <= prev {
                    return Err(format!("tag id {tag_id} of {sender} after {prev}: not FIFO: {l}"));
                }
            }
            let announced = replay.as_ref().map(|r| r.ids.len()).unwrap_or(0);
            if again {
                let Some(replay) = &replay else { return Err(format!("a replayed delivery without a replay line: {l}")) };
                if replayed >= replay.ids.len() {
                    return Err(format!("more replayed deliveries than the {} announced: {l}", replay.ids.len()));
                }
                if (&replay.ids[replayed], &replay.tags[replayed]) != (&id, &tag) {
                    return Err(format!("replayed delivery {replayed} should be {} {}: {l}", replay.ids[replayed], replay.tags[replayed]));
                }
                replayed += 1;
            } else {
                if replayed < announced {
                    return Err(format!("a new delivery while {} announced ones are not replayed yet: {l}", announced - replayed));
                }
                w.check_next_cast(from, k, casts, l)?;
            }
            let v = s(l, "view")?.to_string();
            w.delivered_in.last_mut().expect("a view").push(id.clone());
            deliveries.push(Delivered { line: i, t: n(l, "t")?, view: v, id, tag, replay: again });
            Ok(())
        }
        other => Err(format!("unexpected line `{other}` at {}: {l}", i + 1)),
    })?;
    let announced = replay.as_ref().map(|r| r.ids.len()).unwrap_or(0);
    if !killed && w.reason.as_deref() == Some("done") && replayed != announced {
        return Err(format!("done after {replayed} of the {announced} announced replayed deliveries"));
    }
    Ok(SafeLog {
        me: w.me,
        views: w.views,
        delivered_in: w.delivered_in,
        deliveries,
        replay,
        states: w.states,
        sends: w.sends,
        reason: w.reason,
        last_t: w.last_t,
    })
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
